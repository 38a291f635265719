"""The worker's HTTP API on Faust's web server (bound to 127.0.0.1 by default). GET /healthz
(= /readyz) and /livez, GET /metrics.

GET /healthz, POST /predict, GET /threshold, GET /threshold/advice, PUT /threshold and DELETE /ab/results (token; 403
when the worker has none). Malformed requests get a
4xx with a message; nothing here can crash the worker."""
from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Callable

import faust
import orjson
import redis

from models.contract import TRACK_ID_LEN

from stream.settings import Settings
from stream.worker.advice import threshold_advice
from stream.worker.checkpoint import TRANSIENT
from stream.worker.predictions import PredictBatcher

log = logging.getLogger(__name__)


NO_TOKEN = ("no API token is configured, so changes are refused: start the worker with SKIPCACHE_API_TOKEN set "
            "to a secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`) and send it as "
            "`Authorization: Bearer TOKEN`")


class AuthThrottle:
    """Failed token attempts per client address: each logged (never the token), at most once a
    minute per client with the count; past ``limit`` in a minute the client gets 429 without its
    token being compared, until the minute is over."""

    def __init__(self, limit: int = 10, window: float = 60.0):
        self.limit, self.window = limit, window
        self.failures: dict[str, list[float]] = {}
        self._logged: dict[str, float] = {}

    def recent(self, client: str, now: float) -> list[float]:
        times = self.failures.get(client)
        if times is None:
            return []
        times[:] = [t for t in times if now - t < self.window]
        if not times:
            del self.failures[client]
        return times

    def blocked(self, client: str, now: float | None = None) -> bool:
        return len(self.recent(client, time.monotonic() if now is None else now)) >= self.limit

    def failed(self, client: str, what: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        times = self.recent(client, now)
        times.append(now)
        self.failures[client] = times
        if now - self._logged.get(client, -math.inf) >= self.window:
            self._logged[client] = now
            log.warning("refused %s from %s: no valid token (%d failed attempts from it in the last %.0f s%s)",
                        what, client, len(times), self.window,
                        "; further attempts get 429 for now" if len(times) >= self.limit else "")
        if len(self._logged) > 10_000:  # many clients: keep memory bounded
            self._logged.clear()
        if len(self.failures) > 10_000:
            self.failures.clear()


def refusal(request, settings: Settings, throttle: AuthThrottle | None = None) -> tuple[dict, int] | None:
    """None if the request may change things; else the error body and status: 403 when the
    worker has no token (nobody may), 401 when the caller's does not match, 429 for a client
    with too many failed attempts. The comparison takes constant time and the token is never logged."""
    if not settings.api_token:
        return {"error": NO_TOKEN}, 403
    client = getattr(request, "remote", None) or "unknown"
    if throttle is not None and throttle.blocked(client):
        return {"error": "too many failed token attempts from this address; try again in a minute"}, 429
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else request.headers.get("X-Skipcache-Token", "")
    if not (token and hmac.compare_digest(token.encode(), settings.api_token.encode())):
        if throttle is not None:
            throttle.failed(client, f"{request.method} {request.path}")
        return {"error": "a valid token is needed (Authorization: Bearer TOKEN)"}, 401
    return None


def parse_threshold_body(body: bytes, current: dict) -> dict:
    """Validate a PUT /threshold body; raises ValueError with the message for a 400."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("body must be JSON like {\"threshold\": 0.6}") from None
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        obj = {"threshold": obj}
    if not isinstance(obj, dict):
        raise ValueError("give threshold and/or fast_threshold")
    return check_thresholds(obj, current)


def check_thresholds(values: dict, current: dict) -> dict:
    """The thresholds to set from ``values``, each in [0, 1], fast not below medium once merged
    with ``current``; raises ValueError saying what is wrong."""
    if not ({"threshold", "fast_threshold"} & values.keys()):
        raise ValueError("give threshold and/or fast_threshold")
    out = {}
    for key in ("threshold", "fast_threshold"):
        if key in values:
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{key} must be a number within [0, 1], got {v!r}")
            out[key] = float(v)
    merged = {**current, **out}
    if merged.get("fast_threshold", 1.0) < merged.get("threshold", 0.0):
        raise ValueError("fast_threshold must not be below threshold")
    return out


def ab_results(store) -> dict:
    """The running experiment's per-variant accuracy and the comparison, from Redis counters."""
    from cache_warmer.experiment import compare

    result = compare(store.counters("ab:A"), store.counters("ab:B"))
    result["started_at"] = store.config().get("ab_started_at")
    return result


MAX_BODY = 16_384
"""Bytes a request body may have: the API's bodies are a few dozen. Larger ones get 413 unread."""


class BodyTooLarge(Exception):
    pass


async def read_body(request, limit: int = MAX_BODY) -> bytes:
    """The body, refused by its Content-Length before reading, or as soon as it passes ``limit``
    (chunked uploads): memory does not grow with what a client sends."""
    if request.content_length is not None:
        if request.content_length > limit:
            raise BodyTooLarge
        return await request.content.readexactly(request.content_length) if request.content_length else b""
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def register_views(app: faust.App, settings: Settings, worker: Callable, metrics, readiness: Callable,
                   redis_call: Callable, liveness: Callable) -> None:
    """``worker()``: the built Worker or None (still starting); ``readiness()``: (ready, body);
    ``liveness()``: the /livez body;
    ``redis_call(fn, *args)``: a blocking store call off the event loop."""

    throttle = AuthThrottle()
    predictions = PredictBatcher(lambda requests: worker().predict_many(requests))

    class JSONView(faust.web.View):
        def fail(self, status: int, message: str):
            return self.json({"error": message}, status=status)

        async def body(self, request) -> bytes:
            return await read_body(request)

        async def dispatch(self, request):
            try:
                return await super().dispatch(request)
            except BodyTooLarge:
                return self.fail(413, f"request bodies are limited to {MAX_BODY:,} bytes")
            except asyncio.IncompleteReadError:
                return self.fail(400, "the body ended before its Content-Length")
            except TRANSIENT as exc:
                return self.fail(503, f"Redis is unreachable ({exc}); the worker retries by itself")

        def ready_worker(self):
            w = worker()
            if w is None:
                raise redis.ConnectionError("the worker is still starting (waiting for Redis)")
            return w

    @app.page("/metrics")
    class Metrics(faust.web.View):
        async def get(self, request):
            readiness()  # refresh the health gauges
            return self.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/ab/results")
    class ABResults(JSONView):
        async def get(self, request):
            w = self.ready_worker()
            out = await redis_call(ab_results, w.store)
            out["models"] = {v: {"model": a.model, "version": a.version} for v, a in w.variants.items()}
            out["share_b"] = settings.ab_share_b if w.artifact_b is not None else 0.0
            return self.bytes(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json")

        async def delete(self, request):
            refused = refusal(request, settings, throttle)
            if refused is not None:
                return self.json(refused[0], status=refused[1])
            w = self.ready_worker()

            def restart() -> None:
                for name in ("ab:A", "ab:B"):
                    w.store.reset_counters(name)
                w.store.set_config(ab_started_at=time.time())

            await redis_call(restart)
            return self.json({"status": "new experiment started"})

    @app.page("/healthz")
    class Health(faust.web.View):
        """Ready: Redis and Kafka answer, no partition stuck with lag (503 otherwise, with why)."""

        async def get(self, request):
            ready, body = readiness()
            return self.json(body, status=200 if ready else 503)

    @app.page("/readyz")
    class Ready(Health):
        pass

    @app.page("/livez")
    class Live(faust.web.View):
        """Alive unless stopping on a fatal error, a partition stopped or an agent crashing again
        and again (each named, with its offset and error): a dependency away is waited for, not fatal."""

        async def get(self, request):
            body = liveness()
            return self.json(body, status=200 if body["live"] else 503)

    @app.page("/threshold")
    class Threshold(JSONView):
        async def get(self, request):
            p = self.ready_worker().policy  # the thresholds in force, refreshed from Redis twice a second
            return self.json({"threshold": p.threshold, "fast_threshold": p.fast_threshold})

        async def put(self, request):
            refused = refusal(request, settings, throttle)
            if refused is not None:
                return self.json(refused[0], status=refused[1])
            w = self.ready_worker()
            p = w.policy
            try:
                values = parse_threshold_body(await self.body(request),
                                          {"threshold": p.threshold, "fast_threshold": p.fast_threshold})
            except ValueError as exc:
                return self.fail(400, str(exc))

            def apply() -> None:
                w.store.set_config(**values)
                w.refresh_thresholds()

            await redis_call(apply)
            p = w.policy
            log.info("thresholds set to %.3f / %.3f over HTTP", p.threshold, p.fast_threshold)
            return self.json({"threshold": p.threshold, "fast_threshold": p.fast_threshold})

    @app.page("/threshold/advice")
    class ThresholdAdvice(JSONView):
        """What ``skipcache threshold advise`` says (``?window_hours=24``): it changes nothing."""

        async def get(self, request):
            try:
                hours = int(request.query.get("window_hours", 24))
                if hours < 1:
                    raise ValueError
            except ValueError:
                return self.fail(400, "window_hours must be a whole number of hours, at least 1")
            w = self.ready_worker()
            out = await redis_call(threshold_advice, settings, w.store, hours)
            return self.bytes(orjson.dumps(out), content_type="application/json")

    @app.page("/predict")
    class Predict(JSONView):
        async def post(self, request):
            try:
                obj = orjson.loads(await self.body(request))
            except orjson.JSONDecodeError:
                return self.fail(400, "body must be JSON: {\"user_id\": int, \"track_id\": str}")
            if not isinstance(obj, dict):
                return self.fail(400, "body must be a JSON object")
            user, track = obj.get("user_id"), obj.get("track_id")
            if isinstance(user, bool) or not isinstance(user, int) or user < 0:
                return self.fail(400, "user_id must be a non-negative integer")
            if not isinstance(track, str) or len(track) != TRACK_ID_LEN or not track.isalnum():
                return self.fail(400, f"track_id must be a {TRACK_ID_LEN}-character id")
            self.ready_worker()
            return self.bytes(orjson.dumps(await predictions.predict(user, track)), content_type="application/json")
