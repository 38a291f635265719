"""What one batch did, handed back to whoever commits it: under one policy, the counters it moved
and the decisions to publish (warm stage); each resolved prediction with its confusion cell,
computed once where the prediction is resolved (predict stage). Sensors (Prometheus, the A/B
counters) read these; nobody diffs figures or reads a stage's insides."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .decisions import Decision
from .figures import Figures


class Outcome(NamedTuple):
    variant: str
    cell: str  # tp | fp | tn | fn of the 'played in full' class

    @property
    def correct(self) -> bool:
        return self.cell in ("tp", "tn")


@dataclass
class BatchEffects:
    policy: str
    figures: Figures = field(default_factory=Figures)
    """Counters of this batch only (storage cost and the window stay on the warmer's totals)."""
    decisions: list[Decision] = field(default_factory=list)
    trace: list = field(default_factory=list)
    """With tracing on: plays, as (time, track, believed tier, counted), and decisions, in order."""
