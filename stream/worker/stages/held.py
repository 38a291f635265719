"""A partition's held-back queues in the store: per source, what it took in and has not applied
yet (the warm stage's entries ahead of its watermark, the predict stage's forwarded events ahead
of its cut).

Stored as one list per source, **one element per commit that added to it** (that commit's
additions, as one value), and how many entries of the head element were applied since (``skip``,
in the partition's blob, written in the same commit). A commit appends at most one element per
source and trims whole elements off the head, so what is held is encoded and written once, in one
piece per commit, however many commits pass while it waits: in two worker processes about half of
the entries wait for the other process's clock, and one element per entry cost each of them an
encode, a list element and a trim.

The layout before (one element per entry, the sources listed in the blob under a key of the
stage's) is read, and the next commit moves it into the new one."""
from __future__ import annotations

import itertools

from stream.store import PartitionStore

STATE_KEY = "held_queues"
"""The blob's key: source -> entries of its stored head element already applied."""


class HeldQueues:
    def __init__(self) -> None:
        self.pushed: dict[int, list] = {}
        """This batch's additions, by source, in the form they are stored in."""
        self.dropped: dict[int, int] = {}
        """This batch's entries applied off the queues' heads, by source."""
        self._elements: dict[int, list[int]] = {}
        """Source -> the entries in each element the store holds, oldest first."""
        self._skip: dict[int, int] = {}
        self._old: dict[int, int] = {}
        """Sources stored in the layout before -> its elements (all dropped by the next commit)."""
        self._next: tuple[dict, dict] | None = None

    def load(self, store: PartitionStore, partition: int, state: dict, old_key: str) -> dict[int, list]:
        """Source -> the held entries, as stored (from the blob's ``state``). ``old_key``: where
        the layout before listed its sources; those are re-stored by the next commit."""
        out: dict[int, list] = {}
        if STATE_KEY in state:
            for src, skip in state[STATE_KEY].items():
                src = int(src)
                elements = store.queue(partition, src)
                self._elements[src] = [len(e) for e in elements]
                self._skip[src] = skip
                out[src] = list(itertools.chain.from_iterable(elements))[skip:]
        else:
            for src in state.get(old_key, ()):
                src = int(src)
                out[src] = store.queue(partition, src)
                self._old[src] = len(out[src])
                self.pushed[src] = list(out[src])
        return out

    def changes(self) -> tuple[dict[int, list], dict[int, int], dict[str, int]]:
        """``(queue_push, queue_drop, state)`` of this batch (``Changes``): per source the
        entries it took in and did not apply (one element), the stored elements it applied all of,
        and the blob's ``STATE_KEY`` after it."""
        push, drop = {}, {}
        elements, skips = dict(self._elements), dict(self._skip)
        for src in self.pushed.keys() | self.dropped.keys() | self._old.keys():
            n, stored, skip = self.dropped.get(src, 0), elements.get(src, []), skips.get(src, 0)
            trimmed = min(n, sum(stored) - skip)  # off what the store holds first; the rest off this batch's
            rest = self.pushed.get(src, [])[n - trimmed:]
            skip += trimmed
            k = 0
            while k < len(stored) and stored[k] <= skip:
                skip -= stored[k]
                k += 1
            if k or src in self._old:
                drop[src] = k + self._old.get(src, 0)
            if rest:
                push[src] = rest
            elements[src] = stored[k:] + ([len(rest)] if rest else [])
            skips[src] = skip
        elements = {src: e for src, e in elements.items() if e}
        self._next = elements, {src: skips[src] for src in elements}
        return push, drop, {str(src): skip for src, skip in sorted(self._next[1].items())}

    def committed(self, ok: bool) -> None:
        if ok and self._next is not None:
            self._elements, self._skip = self._next
            self._old = {}
        self._next = None
        self.pushed, self.dropped = {}, {}
