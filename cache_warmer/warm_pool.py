"""The simulation's warm stage on two cores: this process predicts while a forked helper warms
the policies (``remote``; ``local`` ones stay here), applying the same entries, batch by batch,
in the same order.

Each policy's warmers depend only on the entries the predict stage hands them, never on another
policy, so where a policy is warmed changes no figure (a test runs both ways and compares). The
helper is given each batch's entries (pickling them: ~1.3 µs an event, against ~26 µs of
warming, measured on 393k events) and hands its warmers back at the end."""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable

from .entries import by_seq, route
from .warmer import CacheWarmer

FINISH = "finish"


class WarmStage:
    """``warm[q][i]``: policy ``i``'s warmer of track shard ``q``. ``apply`` routes a batch's
    entries to every shard of every policy; ``finish`` ends them at the last event's time and
    returns every warmer (the helper's, as it left them) and every shard's storage trace."""

    def __init__(self, warm: list[list[CacheWarmer]], track_partition: Callable[[str], int],
                 audit: bool, processes: int = 1, merged: bool = False):
        """``merged``: a batch's entries come shard after shard of the predict stage, to be put
        back in replay order."""
        self.warm = warm
        self.shards = len(warm)
        self.merged = merged
        self.track_partition = track_partition
        self.audit = audit
        n_policies = len(warm[0]) if warm else 0
        self.traces: dict[str, list[list]] = {w.policy.name: [[] for _ in range(self.shards)] for w in warm[0]} if warm else {}
        self.remote: list[int] = []
        self._conn = None
        self._proc = None
        if processes > 1 and n_policies >= 1 and _can_fork():
            # the helper warms every policy: this process predicts, which costs about as much
            # (measured on 15M events: predicting alone kept this process the busier one)
            self.remote = list(range(n_policies))
            ctx = multiprocessing.get_context("fork")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=self._serve, args=(child,), name="skipcache-warm", daemon=True)
            self._proc.start()
            child.close()
        self.local = [i for i in range(n_policies) if i not in self.remote]

    def apply(self, entries: list[tuple]) -> None:
        if self._conn is not None:
            self._conn.send(entries)
        self._apply(entries, self.local)

    def _apply(self, entries: list[tuple], policies: list[int]) -> None:
        for q, mine in enumerate(route(entries, self.track_partition, self.shards)):
            if self.merged:
                mine.sort(key=by_seq)  # the replay's order; stable: one event's entries keep theirs
            for i in policies:
                w = self.warm[q][i]
                w.apply(mine)
                effects = w.end()
                if self.audit:
                    self.traces[w.policy.name][q] += effects.trace

    def finish(self, last: float | None, entries: list[tuple]) -> None:
        """The final entries (sessions the data's end closed), then every shard's storage cost
        run to ``last``."""
        if self._conn is not None:
            self._conn.send((FINISH, last, entries))
        self._finish(last, entries, self.local)
        if self._conn is not None:
            remote_warm, traces = self._conn.recv()
            for q in range(self.shards):
                for i in self.remote:
                    self.warm[q][i] = remote_warm[q][i]
            for name, shards in traces.items():
                self.traces[name] = shards
            self.close()

    def _finish(self, last: float | None, entries: list[tuple], policies: list[int]) -> None:
        self._apply(entries, policies)
        if last is not None:
            for ws in self.warm:
                for i in policies:
                    ws[i].advance(last)

    def close(self) -> None:
        if self._proc is not None:
            self._conn.close()
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            self._proc = self._conn = None

    def _serve(self, conn) -> None:
        """The helper: the remote policies' half of every batch, until told to finish."""
        try:
            while True:
                msg = conn.recv()
                if type(msg) is tuple and len(msg) == 3 and msg[0] == FINISH:
                    self._finish(msg[1], msg[2], self.remote)
                    names = {self.warm[0][i].policy.name for i in self.remote}
                    conn.send(({q: {i: self.warm[q][i] for i in self.remote} for q in range(self.shards)},
                               {n: t for n, t in self.traces.items() if n in names}))
                    return
                self._apply(msg, self.remote)
        except (EOFError, BrokenPipeError, KeyboardInterrupt):
            return
        finally:
            conn.close()
            os._exit(0)  # no atexit hooks, no flushing of the parent's inherited buffers


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()
