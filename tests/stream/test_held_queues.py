"""Held-back queues in the store (``stream/worker/stages/held.py``): one element per commit that
added to a source's queue, whole elements trimmed, the head element's applied part counted in the
blob; what a restart reads is always what the runtime held."""
import random

import orjson

from stream.store import Changes
from stream.stores.memory import MemoryStore
from stream.worker.stages.held import STATE_KEY, HeldQueues


class Partition:
    """A partition's queues, committed to a store as a runtime does (its blob holds the state)."""

    def __init__(self, store: MemoryStore, old_key: str = "queued"):
        self.store, self.offset = store, store.offset(0)
        self.held = HeldQueues()
        blob = store.blob(0)
        self.queues = self.held.load(store, 0, orjson.loads(blob), old_key) if blob else {}
        self.writes: list[tuple[dict, dict]] = []

    def take(self, src: int, entries: list) -> None:
        self.queues.setdefault(src, []).extend(entries)
        self.held.pushed.setdefault(src, []).extend(entries)

    def apply(self, src: int, n: int) -> list:
        queue = self.queues[src]
        out, queue[:n] = queue[:n], []
        self.held.dropped[src] = self.held.dropped.get(src, 0) + n
        return out

    def commit(self) -> None:
        push, drop, state = self.held.changes()
        self.writes.append((push, drop))
        ok = self.store.commit(0, self.offset, self.offset + 1, Changes(
            blob=orjson.dumps({STATE_KEY: state}), queue_push=push, queue_drop=drop))
        self.offset += 1
        self.held.committed(ok)

    def stored(self) -> dict[int, list]:
        return {s: q for s, q in Partition(self.store).queues.items() if q}


def test_each_commit_adds_one_element_and_a_held_entry_is_written_once():
    p = Partition(MemoryStore())
    p.take(0, [[1], [2], [3]])
    p.commit()
    p.take(0, [[4], [5]])
    p.apply(0, 1)  # out of the first element: it stays, one of it applied
    p.commit()
    assert p.store.queue(0, 0) == [[[1], [2], [3]], [[4], [5]]]
    assert p.stored() == {0: [[2], [3], [4], [5]]}
    p.apply(0, 2)  # the first element all applied: trimmed whole; nothing rewritten
    p.commit()
    assert p.writes[-1] == ({}, {0: 1})
    assert p.store.queue(0, 0) == [[[4], [5]]] and p.stored() == {0: [[4], [5]]}
    written = [e for push, _ in p.writes for entries in push.values() for e in entries]
    assert sorted(written) == [[1], [2], [3], [4], [5]]  # each once, however many commits it waited


def test_entries_taken_in_and_applied_in_one_batch_never_reach_the_store():
    p = Partition(MemoryStore())
    p.take(1, [[1], [2]])
    p.commit()
    p.take(1, [[3], [4]])
    p.apply(1, 3)
    p.commit()
    assert p.writes[-1] == ({1: [[4]]}, {1: 1}) and p.stored() == {1: [[4]]}


def test_a_commit_that_fails_changes_nothing_the_next_one_relies_on():
    store = MemoryStore()
    p = Partition(store)
    p.take(0, [[1], [2]])
    p.commit()
    store.offsets[0] = 99  # another worker moved on: the next commit is fenced
    p.take(0, [[3]])
    p.apply(0, 1)
    p.commit()
    assert store.queue(0, 0) == [[[1], [2]]] and Partition(store).queues == {0: [[1], [2]]}


def test_what_a_restart_reads_is_what_was_held_whatever_the_history():
    rng = random.Random(7)
    store = MemoryStore()
    p, n = Partition(store), 0
    for step in range(300):
        for src in (0, 1, 2):
            if rng.random() < 0.6:
                k = rng.randrange(0, 6)
                p.take(src, [[n + i, src] for i in range(k)])
                n += k
            if p.queues.get(src) and rng.random() < 0.5:
                p.apply(src, rng.randrange(0, len(p.queues[src]) + 1))
        p.commit()
        if step % 37 == 0:  # a restart from the store, and going on from there
            p = Partition(store)
            p.offset = store.offset(0)
        assert p.stored() == {s: q for s, q in p.queues.items() if q}
    assert max(len(store.queue(0, s)) for s in (0, 1, 2)) < 60  # elements, not entries, and trimmed


def test_the_layout_before_one_element_per_entry_is_read_and_moved_by_the_next_commit():
    store = MemoryStore()
    store.blobs[0] = orjson.dumps({"queued": [3]})
    store.queues[(0, 3)] = [[1, 0, 2.0], [2, 0, 3.0], [3, 0, 4.0]]
    p = Partition(store)
    assert p.queues == {3: [[1, 0, 2.0], [2, 0, 3.0], [3, 0, 4.0]]}
    p.apply(3, 1)
    p.commit()
    assert store.queue(0, 3) == [[[2, 0, 3.0], [3, 0, 4.0]]]
    assert p.stored() == {3: [[2, 0, 3.0], [3, 0, 4.0]]}
