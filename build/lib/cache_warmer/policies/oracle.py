"""``oracle``: scores an upcoming play 1 when it will be played in full, else 0 (it peeks at the
future through the simulation's look-ahead column). The ceiling, not a real policy; its
"predictions" are not judged for accuracy."""
from __future__ import annotations

from dataclasses import dataclass

from .threshold import ThresholdPolicy

ORACLE = "oracle"


@dataclass(frozen=True)
class OraclePolicy(ThresholdPolicy):
    scorer: str | None = ORACLE
    fast_threshold: float = 1.1  # certainty earns medium, never fast

    kind = "oracle"
    scored = False
