"""Counted, explained rejections: bad input never crashes anything and is never silently lost."""
from __future__ import annotations

from collections import Counter


class Rejected(ValueError):
    """Raised by parsers with a short machine-readable reason (``null_user_id``, ...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Rejections:
    """Counts rejected inputs by ``source/reason`` and keeps the first example of each."""

    MAX_EXAMPLE = 200

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, reason: str, example: object = "") -> None:
        self.counts[reason] += 1
        if reason not in self.examples:
            text = example.decode("utf-8", "replace") if isinstance(example, bytes) else str(example)
            text = text.strip()
            self.examples[reason] = text if len(text) <= self.MAX_EXAMPLE else text[: self.MAX_EXAMPLE] + "…"

    def merge(self, other: "Rejections") -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            self.examples.setdefault(reason, other.examples.get(reason, ""))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {r: {"count": n, "example": self.examples.get(r, "")} for r, n in sorted(self.counts.items())}
