"""What the worker knows of its own health, for /healthz, /readyz, /livez and the metrics.

Ready means: Redis and Kafka answer, and no partition has lag without advancing for
``stall_seconds``. Live means: the process is not stopping on a fatal error (an operator or
Kubernetes restarts it then). A dependency that goes away makes the worker unready, never dead:
it waits and retries by itself."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Dependency:
    name: str
    up: bool = False
    since: float = field(default_factory=time.monotonic)
    error: str = "not checked yet"
    failures: int = 0

    def ok(self) -> bool:
        """Record a success; True if it had been down."""
        was_down = not self.up
        if was_down:
            self.up, self.since, self.error, self.failures = True, time.monotonic(), "", 0
        return was_down

    def failed(self, exc: BaseException | str) -> bool:
        """Record a failure; True if it had been up."""
        was_up = self.up
        if was_up:
            self.up, self.since = False, time.monotonic()
        self.error = str(exc)[:300] or type(exc).__name__
        self.failures += 1
        return was_up

    def as_dict(self) -> dict:
        return {"up": self.up, "for_seconds": round(time.monotonic() - self.since, 1),
                **({} if self.up else {"error": self.error})}


class Health:
    def __init__(self, stall_seconds: float = 30.0):
        self.redis = Dependency("redis")
        self.kafka = Dependency("kafka")
        self.stall_seconds = stall_seconds
        self.fatal: str | None = None
        self.state_losses = 0
        self._progress: dict[int, tuple[int, float]] = {}  # partition -> (offset, when it last moved)

    def observe(self, offsets: dict[int, int], now: float | None = None) -> None:
        """Note each partition's next offset; forget partitions no longer owned."""
        now = time.monotonic() if now is None else now
        for p in list(self._progress):
            if p not in offsets:
                del self._progress[p]
        for p, offset in offsets.items():
            seen = self._progress.get(p)
            if seen is None or seen[0] != offset:
                self._progress[p] = (offset, now)

    def stalled(self, lags: dict[int, int], now: float | None = None) -> dict[int, float]:
        """Partitions with lag whose offset has not moved for ``stall_seconds``: seconds stuck."""
        now = time.monotonic() if now is None else now
        out = {}
        for p, lag in lags.items():
            seen = self._progress.get(p)
            if lag > 0 and seen is not None and now - seen[1] >= self.stall_seconds:
                out[p] = now - seen[1]
        return out

    def report(self, lags: dict[int, int]) -> tuple[bool, dict]:
        stalled = self.stalled(lags)
        ready = self.fatal is None and self.redis.up and self.kafka.up and not stalled
        body = {"status": "ok" if ready else "unhealthy", "live": self.fatal is None,
                "dependencies": {"redis": self.redis.as_dict(), "kafka": self.kafka.as_dict()},
                "lag": {str(p): n for p, n in sorted(lags.items())},
                "stalled_partitions": {str(p): round(s, 1) for p, s in sorted(stalled.items())},
                "state_losses": self.state_losses}
        if self.fatal:
            body["fatal"] = self.fatal
        return ready, body
