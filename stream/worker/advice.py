"""Threshold advice from what the warm partitions committed: their live and shadow placements'
value by hour of event time, summed over partitions and weighed by ``cache_warmer/advice.py``.
Read from Redis, so any process gives the same answer: the worker's ``GET /threshold/advice``
and ``skipcache threshold advise``."""
from __future__ import annotations

import orjson

from cache_warmer.advice import advise

from stream.settings import Settings


def threshold_advice(settings: Settings, store, window_hours: int = 24) -> dict:
    """``advice.advise`` over the hourly value every warm partition's live and shadow placements
    committed to Redis: the same answer from any process, the worker's or the command line's."""
    if window_hours < 1:
        raise ValueError("the advice window must be at least one hour")
    warm_store = store.stage("warm")
    live: dict[int, list] = {}
    shadows: dict[float, dict[int, list]] = {}
    for q in range(settings.warm_partitions):
        blob = warm_store.blob(q)
        if not blob:
            continue
        state = orjson.loads(blob)
        _add_hours(live, state.get("hours", ()))
        for name, shadow_state in state.get("shadows", {}).items():
            _add_hours(shadows.setdefault(float(name), {}), shadow_state.get("hours", ()))
    in_force = {"threshold": settings.threshold, **store.config()}["threshold"]
    return advise(live, shadows, in_force, settings.hit_value, settings.transfer_cost, window_hours)


def _add_hours(into: dict[int, list], rows) -> None:
    for h, *values in rows:
        mine = into.setdefault(int(h), [0, 0, 0.0])
        for i, v in enumerate(values):
            mine[i] += v
