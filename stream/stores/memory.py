"""In-memory StateStore: same semantics as Redis (fencing included), for unit tests and tools."""
from __future__ import annotations

import copy
import threading

from stream.store import BatchRead, Changes, CountsLog, TrackCounts, parts_needed, read_counts_as_of


class MemoryStore:
    def __init__(self, root: "MemoryStore | None" = None) -> None:
        """``root``: the store whose config, counters and track counts this one shares."""
        self._lock = root._lock if root is not None else threading.Lock()
        self.offsets: dict[int, int] = {}
        self.input_offsets: dict[tuple[int, str], int] = {}  # (partition, source) -> offset
        self.blobs: dict[int, bytes] = {}
        self.users: dict[tuple[int, int], list] = {}
        self.sessions: dict[tuple[int, int, int], list] = {}
        self.queues: dict[tuple[int, int], list] = {}
        self.tracks: dict[int, TrackCounts] = root.tracks if root is not None else {}
        """Predict partition -> its additions to the track counts (``stream/store.py``)."""
        self._config: dict[str, float] = root._config if root is not None else {}
        self._counters: dict[str, dict[str, float]] = root._counters if root is not None else {}
        self._stages: dict[str, MemoryStore] = root._stages if root is not None else {}
        self._root = root or self

    def stage(self, name: str) -> "MemoryStore":
        with self._lock:
            if name not in self._stages:
                self._stages[name] = MemoryStore(self._root)
            return self._stages[name]

    @classmethod
    def from_url(cls, url: str = "memory://", prefix: str = "sc", ttl_seconds: int = 0, **partitions) -> "MemoryStore":
        """One process's store (tests, tools): ``memory://``; prefix and TTL do not apply."""
        return cls()

    def ping(self) -> bool:
        return True

    def offset(self, partition: int) -> int:
        return self.offsets.get(partition, 0)

    def position(self, partition: int, source: str = "") -> int | None:
        return self.input_offsets.get((partition, source)) if source else self.offsets.get(partition)

    def init_offset(self, partition: int, offset: int, source: str = "") -> int:
        with self._lock:
            if source:
                return self.input_offsets.setdefault((partition, source), offset)
            return self.offsets.setdefault(partition, offset)

    def blob(self, partition: int) -> bytes | None:
        return self.blobs.get(partition)

    def queue(self, partition: int, source: int) -> list:
        with self._lock:
            return copy.deepcopy(self.queues.get((partition, source), []))

    def fetch(self, partition, users, sessions, tracks, epoch=None):
        counts = read_counts_as_of(self, tracks, epoch)
        with self._lock:
            return ({u: copy.deepcopy(self.users[(partition, u)]) for u in users if (partition, u) in self.users},
                    {k: copy.deepcopy(self.sessions[(partition, *k)]) for k in sessions if (partition, *k) in self.sessions},
                    counts)

    def read_batch(self, partition, users, sessions, tracks, epochs=None, skip=(), mirrors=None, mirror_limit=200_000):
        """A mirrored partition's news are its parts whole, every time (one process: nothing to save)."""
        got_u, got_s, _ = self.fetch(partition, users, sessions, [])
        mirrors = mirrors if tracks and mirrors else {}
        logs = {}
        with self._lock:
            for p in mirrors:
                part = self.tracks.get(p, TrackCounts())
                logs[p] = (CountsLog(0, None, full=copy.deepcopy(part)) if len(part.settled) <= mirror_limit
                           else CountsLog(0, None, too_big=True))
        return BatchRead(got_u, got_s, self.track_counts(tracks, epochs, {*skip, *mirrors}) if tracks else [],
                         self.position(partition), logs)

    def track_counts(self, tracks, epochs=None, skip=()):
        with self._lock:
            out = []
            for p, part in self.tracks.items():
                if p in skip:
                    out.append(None)
                    continue
                now, last = parts_needed(epochs, part.epoch)
                out.append(TrackCounts(part.epoch, *({t: list(d[t]) for t in tracks if t in d}
                                                     for d in (part.settled, part.now if now else {},
                                                               part.last if last else {}))))
            return out

    def stored_counts(self, partition, limit):
        with self._lock:
            part = self.tracks.get(partition)
            if part is None:
                return TrackCounts()
            return copy.deepcopy(part) if len(part.settled) <= limit else None

    def epoch_plays(self, partition):
        with self._lock:
            part = self.tracks.get(partition)
            return (part.epoch, copy.deepcopy(part.now)) if part is not None else (None, {})

    def commit(self, partition: int, expected_offset: int, new_offset: int, changes: Changes) -> bool:
        with self._lock:
            if self.offsets.get(partition, 0) != expected_offset or any(
                    self.input_offsets.get((partition, name), 0) != old for name, (old, _) in changes.inputs.items()):
                return False
            for u, rec in changes.users.items():
                self.users[(partition, u)] = copy.deepcopy(rec)
            for k, rec in changes.sessions.items():
                self.sessions[(partition, *k)] = copy.deepcopy(rec)
            for k in changes.deleted_sessions:
                self.sessions.pop((partition, *k), None)
            if changes.tracks is not None:
                self.tracks.setdefault(partition, TrackCounts()).add(changes.tracks)
            if changes.blob is not None:
                self.blobs[partition] = changes.blob
            for src, entries in changes.queue_push.items():
                self.queues.setdefault((partition, src), []).append(copy.deepcopy(entries))
            for src, n in changes.queue_drop.items():
                del self.queues.setdefault((partition, src), [])[:n]
            for name, fields in changes.counters.items():
                target = self._counters.setdefault(name, {})
                for f, v in fields.items():
                    target[f] = target.get(f, 0) + v
            self.offsets[partition] = new_offset
            for name, (_, new) in changes.inputs.items():
                self.input_offsets[(partition, name)] = new
            return True

    def config(self) -> dict[str, float]:
        return dict(self._config)

    def set_config(self, **values: float) -> None:
        self._config.update(values)

    def counters(self, name: str) -> dict[str, float]:
        return dict(self._counters.get(name, {}))

    def reset_counters(self, name: str) -> None:
        self._counters.pop(name, None)
