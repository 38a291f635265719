"""Threshold advice from shadow placements: over a window of event time, which threshold earned
the most net value, by how much more than the live placement, and whether that difference is
larger than its noise. It advises; it never changes anything.

Net value of an hour = hit_value x full-play hits - transfer_cost x promotions - storage cost
accrued (``Objective`` in ``simulation.py`` subtracts the static policy's storage instead of all
of it: a constant for every threshold, so the ranking and the differences are the same).

Noise: the difference to the live placement is summed per hour and resampled by a moving-block
bootstrap over hours (a placement carries over from one hour to the next, so hours are not
independent draws; blocks of about the cube root of the window keep that). The difference is
called real when the 95% interval of its resampled sums excludes zero."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

MIN_HOURS = 6
"""Fewer hours of event time than this in the window: no verdict, only figures."""
RESAMPLES = 2000


def net_by_hour(hours: Mapping[int, list], span: range, hit_value: float, transfer_cost: float) -> np.ndarray:
    """Net value of each hour of ``span`` (an hour with no row earned and cost nothing)."""
    out = np.zeros(len(span))
    for i, h in enumerate(span):
        row = hours.get(h)
        if row is not None:
            out[i] = hit_value * row[0] - transfer_cost * row[1] - row[2]
    return out


def block_bootstrap(diff: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% interval of ``diff.sum()`` under a moving-block bootstrap of its entries."""
    n = len(diff)
    block = max(1, round(n ** (1 / 3)))
    starts = n - block + 1
    rng = np.random.default_rng(seed)
    blocks_needed = math.ceil(n / block)
    sums = np.lib.stride_tricks.sliding_window_view(diff, block).sum(axis=1)  # each block's sum
    draws = rng.integers(0, starts, size=(resamples, blocks_needed))
    totals = sums[draws].sum(axis=1) * (n / (blocks_needed * block))  # scaled to n hours
    lo, hi = np.percentile(totals, [2.5, 97.5])
    return float(lo), float(hi)


def advise(live: Mapping[int, list], shadows: Mapping[float, Mapping[int, list]], live_threshold: float,
           hit_value: float, transfer_cost: float, window_hours: int = 24, seed: int = 0) -> dict:
    """``live`` and each of ``shadows`` (by threshold): hour -> [full-play hits, promotions,
    storage cost], summed over the warm partitions. The window is the last ``window_hours``
    hours of event time up to the newest hour any placement has counted."""
    newest = max((h for hours in (live, *shadows.values()) for h in hours), default=None)
    base = {"threshold_in_force": live_threshold, "window_hours": window_hours, "hit_value": hit_value,
            "transfer_cost": transfer_cost, "shadows": sorted(shadows)}
    if newest is None or not shadows:
        return {**base, "verdict": "no_evidence", "advice": "no shadow figures yet: set SKIPCACHE_SHADOW_THRESHOLDS "
                "and let the worker run" if not shadows else "no shadow figures yet: no play counted"}
    span = range(newest - window_hours + 1, newest + 1)
    counted = sorted({h for hours in (live, *shadows.values()) for h in hours if h in span})
    live_net = net_by_hour(live, span, hit_value, transfer_cost)
    rows = []
    for t in sorted(shadows):
        net = net_by_hour(shadows[t], span, hit_value, transfer_cost)
        diff = net - live_net
        row = {"threshold": t, "net_value": float(net.sum()), "over_live": float(diff.sum()),
               "full_play_hits": int(sum(shadows[t].get(h, (0,))[0] for h in span)),
               "promotions": int(sum(shadows[t].get(h, (0, 0))[1] for h in span))}
        if len(counted) >= MIN_HOURS:
            lo, hi = block_bootstrap(diff, seed=seed)
            row.update(interval_95=[lo, hi], real=bool(lo > 0 or hi < 0))
        rows.append(row)
    out = {**base, "window": {"from_hour": span.start, "to_hour": newest, "hours_counted": len(counted),
                              "from": span.start * 3600.0, "to": (newest + 1) * 3600.0},
           "live": {"net_value": float(live_net.sum()),
                    "full_play_hits": int(sum(live.get(h, (0,))[0] for h in span)),
                    "promotions": int(sum(live.get(h, (0, 0))[1] for h in span))},
           "thresholds": rows}
    best = max(rows, key=lambda r: r["net_value"])
    out["best"] = best["threshold"] if best["over_live"] > 0 else live_threshold
    if len(counted) < MIN_HOURS:
        out.update(verdict="too_little_time", advice=f"only {len(counted)} hour(s) of event time counted (a verdict "
                   f"needs {MIN_HOURS}): keep {live_threshold:g}")
    elif best["over_live"] > 0 and best["real"]:
        lo, hi = best["interval_95"]
        out.update(verdict="change", advice=f"threshold {best['threshold']:g} earned {best['over_live']:.4g} more "
                   f"than {live_threshold:g} over {len(counted)} h (95% interval {lo:.4g} .. {hi:.4g}): "
                   f"`skipcache threshold set {best['threshold']:g}`")
    elif best["over_live"] > 0:
        lo, hi = best["interval_95"]
        out.update(verdict="keep", advice=f"threshold {best['threshold']:g} earned {best['over_live']:.4g} more than "
                   f"{live_threshold:g}, within its noise (95% interval {lo:.4g} .. {hi:.4g}): keep {live_threshold:g}")
    else:
        out.update(verdict="keep", advice=f"no shadow earned more than the live threshold {live_threshold:g} "
                   f"over {len(counted)} h: keep it")
    return out
