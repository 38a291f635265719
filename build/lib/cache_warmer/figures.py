"""What a policy achieved: cache figures and, for scored policies, live prediction accuracy."""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

import numpy as np


DAY = 86400.0


def confusion_cell(predicted_full: bool, full: bool) -> str:
    """tp, fp, tn or fn of the 'played in full' class."""
    if predicted_full:
        return "tp" if full else "fp"
    return "fn" if full else "tn"


@dataclass
class Figures:
    plays: int = 0
    full_plays: int = 0
    hits_fast: int = 0
    hits_medium: int = 0
    full_play_hits: int = 0
    promotions: int = 0
    promotions_fast: int = 0
    evictions: int = 0
    demotions: int = 0
    useful_promotions: int = 0
    wasted_promotions: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    abandoned_predictions: int = 0
    abandoned_plays: int = 0
    cost_area: float = 0.0  # integral of cost/day over the counted window, in cost-days
    window_start: float = math.nan
    window_end: float = math.nan
    scores: array = field(default_factory=lambda: array("d"))  # 9 bytes a prediction, not ~40 as lists
    labels: array = field(default_factory=lambda: array("b"))
    daily: dict = field(default_factory=dict)  # day -> [plays, hits, full_plays, full_hits, promos, wasted]
    by_variant: dict = field(default_factory=dict)  # variant -> {tp, fp, tn, fn}

    COUNTERS = ("plays", "full_plays", "hits_fast", "hits_medium", "full_play_hits", "promotions",
                "promotions_fast", "evictions", "demotions", "useful_promotions", "wasted_promotions",
                "tp", "fp", "tn", "fn", "abandoned_predictions", "abandoned_plays")
    CACHE = COUNTERS[:11] + ("abandoned_plays",)
    """Kept by the warm stage (the storage's figures)."""
    ACCURACY = ("tp", "fp", "tn", "fn", "abandoned_predictions")
    """Kept by the predict stage (the model's figures)."""

    def merge(self, other: "Figures") -> None:
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_area += other.cost_area
        if not math.isnan(other.window_start):
            self.window_start = other.window_start if math.isnan(self.window_start) else min(self.window_start, other.window_start)
            self.window_end = other.window_end if math.isnan(self.window_end) else max(self.window_end, other.window_end)
        for v, cells in other.by_variant.items():
            mine = self.by_variant.setdefault(v, {"tp": 0, "fp": 0, "tn": 0, "fn": 0})
            for k, n in cells.items():
                mine[k] += n
        self.scores.extend(other.scores)
        self.labels.extend(other.labels)
        for d, row in other.daily.items():
            mine = self.daily.setdefault(d, [0] * len(row))
            for i, v in enumerate(row):
                mine[i] += v

    def day(self, ts: float) -> list:
        d = int(ts // DAY)
        row = self.daily.get(d)
        if row is None:
            row = self.daily[d] = [0, 0, 0, 0, 0, 0]
        return row

    def summary(self, transfer_cost: float, scored: bool) -> dict:
        hits = self.hits_fast + self.hits_medium
        resolved = self.useful_promotions + self.wasted_promotions
        days = (self.window_end - self.window_start) / DAY if self.plays else 0.0
        out = {
            "plays": self.plays,
            "full_plays": self.full_plays,
            "full_play_hits": self.full_play_hits,
            "hit_ratio": hits / self.plays if self.plays else math.nan,
            "full_play_hit_ratio": self.full_play_hits / self.full_plays if self.full_plays else math.nan,
            "hits_by_tier": {"fast": self.hits_fast, "medium": self.hits_medium},
            "misses": self.plays - hits,
            "promotions": self.promotions,
            "promotions_to_fast": self.promotions_fast,
            "evictions": self.evictions,
            "demotions_cold": self.demotions,
            "useful_promotions": self.useful_promotions,
            "wasted_promotions": self.wasted_promotions,
            "promotion_precision": self.useful_promotions / resolved if resolved else math.nan,
            "storage_cost_per_day": self.cost_area / days if days > 0 else math.nan,
            "transfer_cost": self.promotions * transfer_cost,
            "window_days": days,
            "abandoned_plays": self.abandoned_plays,
        }
        if scored:
            n = self.tp + self.fp + self.tn + self.fn
            y = np.frombuffer(self.labels, dtype=np.int8) if len(self.labels) else np.empty(0, np.int8)
            s = np.frombuffer(self.scores, dtype=np.float64) if len(self.scores) else np.empty(0)
            out.update(predictions=n, abandoned_predictions=self.abandoned_predictions, confusion={"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn},
                       accuracy=(self.tp + self.tn) / n if n else math.nan,
                       majority_accuracy=(max((self.tp + self.fn) / n, (self.tn + self.fp) / n) if n else math.nan),
                       roc_auc=_auc(y, s))
            if len(self.by_variant) > 1:
                out["variants"] = {v: {**cells, "predictions": sum(cells.values()),
                                       "accuracy": (cells["tp"] + cells["tn"]) / max(1, sum(cells.values()))}
                                   for v, cells in sorted(self.by_variant.items())}
        return out


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    if len(y) == 0 or y.min() == y.max():
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))
