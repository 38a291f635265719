"""A partition of one stage at work in the live worker: what both stages share.

Per batch: drop what was already applied (offset below the stored one), refuse a hole, let the
stage apply the unbroken run (``predict_runtime.py``, ``warm_runtime.py``), and hand back what to
publish and the changes to commit. ``stream/worker/checkpoint.py`` publishes and flushes first, then
commits state and offset together: at-least-once records, exactly-once state."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from cache_warmer.effects import BatchEffects, Outcome

from stream.store import Changes, PartitionStore

log = logging.getLogger(__name__)


@dataclass
class BatchOutput:
    stage: str
    partition: int
    start_offset: int
    next_offset: int
    events: int = 0
    """Records of the input applied (events for predict, entries for warm)."""
    skipped_duplicates: int = 0
    late_entries: int = 0
    """Warm: entries applied behind event time already applied (a source taken for idle)."""
    publish: list[tuple[str, bytes | None, bytes, int | None]] = field(default_factory=list)
    """(sink, key, value, partition) to publish before the commit."""
    dead_letters: list[tuple[int, str, bytes]] = field(default_factory=list)  # offset, reason, raw
    effects: BatchEffects | None = None  # warm: counters and decisions of the batch
    storage_cost: float = 0.0
    """Warm: storage cost the live placement accrued in the batch (event time)."""
    shadows: dict[float, tuple[BatchEffects, float]] = field(default_factory=dict)
    """Warm: each shadow placement's batch (its counters, the storage cost it accrued), by threshold."""
    outcomes: list[Outcome] = field(default_factory=list)  # predict: resolved predictions
    kinds: dict[str, int] = field(default_factory=dict)
    timestamps: list[float] = field(default_factory=list)  # Kafka timestamps (s) of the input records
    changes: Changes | None = None
    errors: dict[int, str] = field(default_factory=dict)
    """Offset -> what was wrong with a dead-lettered record, for its dead letter."""

    def reject(self, offset: int, reason: str, raw: bytes | None, detail: str = "") -> None:
        """Dead-letter the record at ``offset``, saying why (``detail``: what exactly is wrong)."""
        self.dead_letters.append((offset, reason, raw or b""))
        if detail:
            self.errors[offset] = detail


class OffsetGap(Exception):
    """The consumer delivered records after a hole: seek back to ``expected``."""

    def __init__(self, partition: int, expected: int, got: int):
        super().__init__(f"partition {partition}: expected offset {expected}, got {got}")
        self.partition, self.expected, self.got = partition, expected, got


def fence_cause(stored: int | None, expected: int) -> str:
    """Why a commit was fenced, from the offset the store holds now."""
    if stored is None:
        return "no offset (Redis lost this partition's state: restarted empty, or the keys were deleted)"
    if stored > expected:
        return f"offset {stored} (another worker applied past this batch)"
    return f"offset {stored}, behind the batch (Redis rolled back: restarted from an older snapshot)"


class PartitionRuntime:
    stage = ""
    rejected_prefix = ""
    """Before a rejection reason in the ``rejected`` counters (``entries_`` for the warm stage)."""

    def __init__(self, partition: int, store: PartitionStore):
        self.partition = partition
        self.store = store
        self.load()

    def rejected_counts(self, out: BatchOutput) -> dict[str, int]:
        """The batch's dead letters by reason, as the ``rejected`` counters (and metrics) name them."""
        return dict(Counter(self.rejected_prefix + reason for _, reason, _ in out.dead_letters))

    def load(self) -> None:
        """(Re)build everything from the store: on assignment, and after being fenced."""
        self.stored = self.store.position(self.partition)
        """The offset the store held when loaded; None: it held none (new partition, or lost)."""
        self.next_offset = self.stored or 0
        self.load_state(self.store.blob(self.partition))

    def load_state(self, blob: bytes | None) -> None:
        raise NotImplementedError

    def start_at(self, offset: int) -> None:
        """Where a partition the store held nothing for starts (see stream/worker/positions.py); a
        rolled-back one keeps the store's offset."""
        self.next_offset = self.store.init_offset(self.partition, offset)

    def process(self, records: list[tuple]) -> BatchOutput:
        """``records``: (offset, value[, Kafka timestamp in s]) of this partition, in offset order."""
        out = BatchOutput(self.stage, self.partition, self.next_offset, self.next_offset)
        fresh = self.take_fresh(records, out)
        if fresh:
            self.apply(fresh, out)
        return out

    def take_fresh(self, records: list[tuple], out: BatchOutput) -> list[tuple]:
        """The records from the partition's next offset on (those below it were applied: counted
        as duplicates), refusing a hole; ``out`` moves to the offset after them."""
        fresh = [r for r in records if r[0] >= self.next_offset]
        out.skipped_duplicates = len(records) - len(fresh)
        if fresh:
            if fresh[0][0] != self.next_offset:
                raise OffsetGap(self.partition, self.next_offset, fresh[0][0])
            out.next_offset = fresh[-1][0] + 1
            out.timestamps = [r[2] for r in fresh if r[2]] if len(fresh[0]) > 2 else []
        return fresh

    def apply(self, records: list[tuple], out: BatchOutput) -> None:
        """Apply the unbroken run ``records`` and fill ``out`` (including ``out.changes``)."""
        raise NotImplementedError

    def commit(self, out: BatchOutput) -> bool:
        """Write the batch's changes and offset atomically; on a fence, reload from the store."""
        if out.changes is None and out.next_offset == out.start_offset:
            return True
        ok = self.store.commit(self.partition, out.start_offset, out.next_offset, out.changes or Changes())
        self.committed(ok)
        if ok:
            self.next_offset = out.next_offset
        else:
            self.load()
            log.warning("%s partition %d: not committed: the batch began at offset %d and Redis holds %s; "
                        "re-reading the partition", self.stage, self.partition, out.start_offset, fence_cause(self.stored, out.start_offset))
        return ok

    def committed(self, ok: bool) -> None:
        """After the commit (``ok``: it was applied): drop what was only the batch's."""
