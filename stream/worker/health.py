"""What the worker knows of its own health, for /healthz, /readyz, /livez and the metrics.

Ready means: Redis and Kafka answer, and no partition has lag without advancing for
``stall_seconds``. Live means: the process is not stopping on a fatal error, no partition was
stopped (its records fail whatever is done with them, or its state cannot be loaded) and no agent
keeps crashing; an orchestrator restarts it (or pages) when it is not. A dependency that goes away
makes the worker unready, never dead: it waits and retries by itself."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Dependency:
    name: str
    up: bool = False
    since: float = field(default_factory=time.monotonic)
    error: str = "not checked yet"
    failures: int = 0
    unreachable: list[str] = field(default_factory=list)
    """Its nodes that do not answer (a cluster's), as last found while it was away."""

    def ok(self) -> bool:
        """Record a success; True if it had been down."""
        was_down = not self.up
        if was_down:
            self.up, self.since, self.error, self.failures, self.unreachable = True, time.monotonic(), "", 0, []
        return was_down

    def failed(self, exc: BaseException | str) -> bool:
        """Record a failure; True if it had been up (or was never checked: away from the start)."""
        was_up = self.up or self.failures == 0  # no failure yet and not up: never answered
        if self.up:
            self.up, self.since = False, time.monotonic()
        self.error = str(exc)[:300] or type(exc).__name__
        self.failures += 1
        return was_up

    def as_dict(self) -> dict:
        return {"up": self.up, "for_seconds": round(time.monotonic() - self.since, 1),
                **({} if self.up else {"error": self.error}),
                **({"unreachable": self.unreachable} if self.unreachable and not self.up else {})}


LATE_WINDOW = 60.0
CRASH_LOOP = 2
"""Crashes of one agent with no batch committed in between: it keeps crashing (faust restarts an
agent each time, and after a few gives up on it, silently)."""


class Health:
    def __init__(self, stall_seconds: float = 30.0, late_alert: int = 100):
        self.redis = Dependency("redis")
        self.kafka = Dependency("kafka")
        self.stall_seconds = stall_seconds
        self.fatal: str | None = None
        self.state_losses = 0
        self.stopped: dict[str, str] = {}
        """``stage/partition`` -> why it was stopped (with the offset)."""
        self.crashes: dict[str, tuple[int, str]] = {}
        """Agent (stage) -> (crashes since its last committed batch, the last error)."""
        self.unowned: dict[str, int] = {}
        """``stage/partition`` -> lag, of partitions with lag that no consumer in the group moves."""
        self.late_entries: deque[tuple[float, int]] = deque()
        """(when, how many) of entries the warm stage applied late in the last ``LATE_WINDOW`` s."""
        self.late_alert = late_alert
        self.misrouted: deque[tuple[float, int]] = deque()
        """(when, how many) of events that arrived on another user's partition, last ``LATE_WINDOW`` s."""
        self._progress: dict[str, tuple[int, float]] = {}  # stage/partition -> (offset, when it last moved)

    def entries_late(self, n: int, now: float | None = None) -> None:
        self.late_entries.append((time.monotonic() if now is None else now, n))

    def events_misrouted(self, n: int, now: float | None = None) -> None:
        self.misrouted.append((time.monotonic() if now is None else now, n))

    def misrouted_recently(self, now: float | None = None) -> int:
        """Events of users whose partition is another, in the last ``LATE_WINDOW`` seconds: their
        users' history is split, so the figures are wrong while it lasts."""
        return _in_window(self.misrouted, now)

    def late_recently(self, now: float | None = None) -> int:
        """Entries applied late in the last ``LATE_WINDOW`` seconds."""
        return _in_window(self.late_entries, now)

    def agent_crashed(self, stage: str, error: BaseException, where: tuple[int, int] | None = None) -> None:
        """``where``: (partition, offset) the agent was working on."""
        n = self.crashes.get(stage, (0, ""))[0] + 1
        at = f"partition {where[0]} offset {where[1]}: " if where else ""
        self.crashes[stage] = (n, f"{at}{type(error).__name__}: {error}"[:300])

    def progressed(self, stage: str) -> None:
        self.crashes.pop(stage, None)

    @property
    def live(self) -> bool:
        return self.fatal is None and not self.stopped and all(n < CRASH_LOOP for n, _ in self.crashes.values())

    def liveness(self) -> dict:
        """Why the worker is (not) live: what /livez answers."""
        body: dict = {"live": self.live}
        if self.fatal:
            body["fatal"] = self.fatal
        if self.stopped:
            body["stopped_partitions"] = dict(sorted(self.stopped.items()))
        if self.crashes:
            body["agent_crashes"] = {s: {"crashes": n, "error": e} for s, (n, e) in sorted(self.crashes.items())}
        return body

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
        ready = self.live and self.redis.up and self.kafka.up and not stalled and not self.unowned
        late = self.late_recently()
        misrouted = self.misrouted_recently()
        status = "unhealthy" if not ready else "degraded" if late > self.late_alert or misrouted else "ok"
        body = {"status": status, **self.liveness(),
                "dependencies": {"redis": self.redis.as_dict(), "kafka": self.kafka.as_dict()},
                "lag": {str(p): n for p, n in sorted(lags.items())},
                "stalled_partitions": {str(p): round(s, 1) for p, s in sorted(stalled.items())},
                "unowned_partitions": dict(sorted(self.unowned.items())),
                "late_entries_last_minute": late,
                "misrouted_events_last_minute": misrouted,
                "state_losses": self.state_losses}
        return ready, body


def _in_window(seen: deque, now: float | None) -> int:
    """The sum of the ``(when, how many)`` of the last ``LATE_WINDOW`` seconds (older ones dropped)."""
    now = time.monotonic() if now is None else now
    while seen and now - seen[0][0] > LATE_WINDOW:
        seen.popleft()
    return sum(n for _, n in seen)
