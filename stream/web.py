"""The worker's HTTP API on Faust's web server (bound to 127.0.0.1 by default).

GET /healthz, POST /predict, GET /threshold, PUT /threshold and DELETE /ab/results (token; 403
when the worker has none). Malformed requests get a
4xx with a message; nothing here can crash the worker."""
from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable

import faust
import orjson

from models.parsing import TRACK_ID_LEN

from .settings import Settings

log = logging.getLogger(__name__)


NO_TOKEN = ("no API token is configured, so changes are refused: start the worker with SKIPCACHE_API_TOKEN set "
            "to a secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`) and send it as "
            "`Authorization: Bearer TOKEN`")


def refusal(request, settings: Settings) -> tuple[dict, int] | None:
    """None if the request may change things; else the error body and status: 403 when the
    worker has no token (nobody may), 401 when the caller's does not match. The comparison takes
    constant time and the token is never logged."""
    if not settings.api_token:
        return {"error": NO_TOKEN}, 403
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else request.headers.get("X-Skipcache-Token", "")
    if not (token and hmac.compare_digest(token.encode(), settings.api_token.encode())):
        return {"error": "a valid token is needed (Authorization: Bearer TOKEN)"}, 401
    return None


def parse_thresholds(body: bytes, current: dict) -> dict:
    """Validate a PUT /threshold body; raises ValueError with the message for a 400."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("body must be JSON like {\"threshold\": 0.6}") from None
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        obj = {"threshold": obj}
    if not isinstance(obj, dict) or not ({"threshold", "fast_threshold"} & obj.keys()):
        raise ValueError("give threshold and/or fast_threshold")
    out = {}
    for key in ("threshold", "fast_threshold"):
        if key in obj:
            v = obj[key]
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


def register_views(app: faust.App, settings: Settings, worker: Callable, metrics=None) -> None:
    @app.page("/metrics")
    class Metrics(faust.web.View):
        async def get(self, request):
            return self.bytes(metrics.render() if metrics is not None else b"",
                              content_type="text/plain; version=0.0.4")

    @app.page("/ab/results")
    class ABResults(faust.web.View):
        async def get(self, request):
            w = worker()
            out = ab_results(w.store)
            out["models"] = {v: {"model": a.model, "version": a.version} for v, a in w.variants.items()}
            out["share_b"] = settings.ab_share_b if w.artifact_b is not None else 0.0
            return self.bytes(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json")

        async def delete(self, request):
            refused = refusal(request, settings)
            if refused is not None:
                return self.json(refused[0], status=refused[1])
            w = worker()
            for name in ("ab:A", "ab:B"):
                w.store.reset_counters(name)
            w.store.set_config(ab_started_at=time.time())
            return self.json({"status": "new experiment started"})

    @app.page("/healthz")
    class Health(faust.web.View):
        async def get(self, request):
            try:
                w = worker()
                w.store.ping()
            except Exception as exc:  # report, don't crash
                return self.json({"status": "unhealthy", "error": str(exc)}, status=503)
            return self.json({"status": "ok", "partitions": sorted(w.runtimes), "model": w.artifact.model,
                              "model_version": w.artifact.version,
                              "thresholds_in_use": {str(p): [rt.policy.threshold, rt.policy.fast_threshold]
                                                    for p, rt in w.runtimes.items()}})

    @app.page("/threshold")
    class Threshold(faust.web.View):
        async def get(self, request):
            p = worker().policy
            return self.json({"threshold": p.threshold, "fast_threshold": p.fast_threshold})

        async def put(self, request):
            refused = refusal(request, settings)
            if refused is not None:
                return self.json(refused[0], status=refused[1])
            w = worker()
            p = w.policy
            try:
                values = parse_thresholds(await self.read_request_content(request),
                                          {"threshold": p.threshold, "fast_threshold": p.fast_threshold})
            except ValueError as exc:
                return self.json({"error": str(exc)}, status=400)
            w.store.set_config(**values)
            w.refresh_thresholds()
            p = w.policy
            log.info("thresholds set to %.3f / %.3f over HTTP", p.threshold, p.fast_threshold)
            return self.json({"threshold": p.threshold, "fast_threshold": p.fast_threshold})

    @app.page("/predict")
    class Predict(faust.web.View):
        async def post(self, request):
            try:
                obj = orjson.loads(await self.read_request_content(request))
            except orjson.JSONDecodeError:
                return self.json({"error": "body must be JSON: {\"user_id\": int, \"track_id\": str}"}, status=400)
            if not isinstance(obj, dict):
                return self.json({"error": "body must be a JSON object"}, status=400)
            user, track = obj.get("user_id"), obj.get("track_id")
            if isinstance(user, bool) or not isinstance(user, int) or user < 0:
                return self.json({"error": "user_id must be a non-negative integer"}, status=400)
            if not isinstance(track, str) or len(track) != TRACK_ID_LEN or not track.isalnum():
                return self.json({"error": f"track_id must be a {TRACK_ID_LEN}-character id"}, status=400)
            return self.json(worker().predict(user, track))
