"""``static``: no warming. The starting placement stays and nothing is demoted: the baseline."""
from __future__ import annotations

from dataclasses import dataclass

from .cache_policy import CachePolicy


@dataclass(frozen=True)
class StaticPolicy(CachePolicy):
    kind = "static"
    manages = False
