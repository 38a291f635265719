"""The offline simulation: a replayed export through the same stages as the live worker (the
predict stage keyed by user, the warm stage keyed by track), in memory, comparing policies under
the same capacities.

By default only events after the models' training window are counted (the state still warms up
on the earlier ones), so a model is never scored on plays it was trained on."""
from __future__ import annotations

import math
import os
import time
import zlib
from functools import cache, partial
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from models.artifacts import Artifact
from models.estimators import NaiveRule
from models.events import Catalogue, Event
from models.features import EngineConfig, FeatureEngine
from models.columns import PLAY_CODE, EventColumns, session_labels
from models.gc_pause import paused_gc
from models.replay import epoch_rounds
from models.state import add_counts

from .experiment import AB, variant_of
from .warm_pool import WarmStage
from .predictor import PredictionLedger, Predictor
from .policies import ORACLE, CachePolicy, ThresholdPolicy, StaticPolicy, standard_policies
from .storage_audit import StorageAudit
from .tiers import TIER_NAMES, TierConfig, TierState
from .warmer import CacheWarmer, policy_figures


@dataclass(frozen=True)
class Objective:
    """Net value = hit_value x full-play hits - transfer cost - extra storage cost over static
    (cost/day above the static policy's, times the counted days). Money in track_storage's unit."""

    hit_value: float = 0.002

    def net_value(self, fig: dict, static: dict | None) -> float:
        extra_storage = 0.0
        if static is not None and fig["window_days"] > 0:
            extra_storage = (fig["storage_cost_per_day"] - static["storage_cost_per_day"]) * fig["window_days"]
        return self.hit_value * fig["full_play_hits"] - fig["transfer_cost"] - extra_storage


HELPER_FROM_EVENTS = 100_000


def oracle_labels(events: "Sequence[Event] | EventColumns") -> Callable[[int, int, int], float]:
    """1.0 for a play (by user, session, play number) that will be played in full, else 0.0:
    the oracle's (and only its) peek at the future. Each session's events, gathered in replay
    order by one stable sort, are labelled as ``label_session`` labels them."""
    cols = EventColumns.of(events)
    by_session = cols.take(np.lexsort((cols.session, cols.user)))  # stable: replay order within
    labels, run, _ = session_labels(by_session)
    plays = by_session.kind == PLAY_CODE
    users, sessions = by_session.user[plays], by_session.session[plays]
    starts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]]) if len(run) else np.empty(0, np.int64)
    ends = np.r_[starts[1:], len(run)]
    where = {(u, s): (a, b) for u, s, a, b in zip(users[starts].tolist(), sessions[starts].tolist(),
                                                   starts.tolist(), ends.tolist())}
    full = labels.astype(np.float64).tolist()

    def lookup(user_id: int, session_id: int, play_no: int) -> float:
        span = where.get((user_id, session_id))
        return full[span[0] + play_no] if span is not None and span[0] + play_no < span[1] else 0.0

    return lookup


def model_policy_names(artifacts: Sequence[Artifact]) -> list[str]:
    return ["model"] + [f"model_{i + 2}" for i in range(len(artifacts) - 1)]


def simulate(events: "Sequence[Event] | EventColumns", catalogue: Catalogue, artifacts: Sequence[Artifact],
             tier_config: TierConfig | None = None, policies: Sequence[CachePolicy] | None = None,
             threshold: float = 0.5, fast_threshold: float = 0.95, count_from: float | None = None,
             partitions: int = 1, user_partition: Callable[[int], int] | None = None,
             track_partition: Callable[[str], int] | None = None, batch_size: int = 20_000,
             objective: Objective = Objective(), progress: bool = True, ab_share: float | None = None,
             audit_storage: bool = False, processes: int | None = None, session_gap: float | None = None,
             end_sessions: bool = True, warm_partitions: int | None = None) -> dict:
    """Replay ``events`` (in replay order) through the worker's topology and return the figures
    of every policy: ``partitions`` predict shards keyed by user (``user_partition``), whose
    entries go to ``warm_partitions`` warm shards (default: as many) keyed by track
    (``track_partition``), each warm shard taking them in replay order. Track statistics follow
    the worker's rule: a play reads every shard's counts as of the start of its epoch
    (``EngineConfig.track_epoch_seconds``), so
    rounds (``batch_size`` events of the replay) never span two epochs. With ``ab_share`` and two
    artifacts, an ``ab`` policy serves the first (A) or the second (B) by user, as an A/B-testing
    worker does. With ``audit_storage``,
    each policy's figures add a ``storage_audit``: its shards' commands applied to one placement
    (``storage_audit.py``). ``processes``: 2 splits the policies' warming with a forked helper
    (``warm_pool.py``; the figures are the same); default: 2 where there are two cores and at
    least ``HELPER_FROM_EVENTS`` events. ``session_gap``: the engine's session-gap rule in
    seconds, as the worker's ``SKIPCACHE_SESSION_GAP`` (default: the model's). ``end_sessions``:
    the data's end ends every open session, so each play is counted (an export is whole); False:
    plays still open stay unresolved, as on a live stream that has stopped for now."""
    if not artifacts:
        raise ValueError("simulate needs at least one model artifact")
    events = EventColumns.of(events)
    config = EngineConfig(**artifacts[0].engine_config)
    if session_gap:
        config = replace(config, session_gap_seconds=session_gap)
    feature_names = FeatureEngine(catalogue, config).feature_names
    for art in artifacts:
        art.check_features(feature_names)
    names = model_policy_names(artifacts)
    scorers = {name: art.predict_full for name, art in zip(names, artifacts)}
    naive = NaiveRule(feature_names).fit(None)
    scorers["naive"] = lambda X: naive.predict_proba(X)[:, 1]
    variant = None
    if ab_share is not None:
        if len(artifacts) != 2:
            raise ValueError("an A/B simulation needs exactly two models")
        scorers["A"], scorers["B"] = artifacts[0].predict_full, artifacts[1].predict_full
        variant = partial(variant_of, share_b=ab_share)
    if policies is None:
        policies = standard_policies(names, threshold, fast_threshold)
        if ab_share is not None:
            policies.insert(-1, ThresholdPolicy("ab", AB, threshold, fast_threshold))
    if count_from is None:
        count_from = max(art.train_window["end"] for art in artifacts)
    tier_config = tier_config or TierConfig.for_catalogue(catalogue, n_tracks=events.distinct_tracks())
    lookahead = {ORACLE: oracle_labels(events)} if any(p.scorer == ORACLE for p in policies) else None
    n = max(1, partitions)
    # once per id: partitioners hash in Python
    user_partition = cache(user_partition or (lambda user_id: user_id % n))
    m = max(1, warm_partitions or n)
    track_partition = cache(track_partition or (lambda track: zlib.crc32(track.encode()) % m))
    columns = [*scorers, *([AB] if variant else []), *(lookahead or ())]
    predictors = [Predictor(FeatureEngine(catalogue, config), scorers, columns, lookahead, variant,
                            PredictionLedger([c for c in columns if c != ORACLE], count_from, keep_scores=True))
                  for _ in range(n)]
    shard_tiers = tier_config.split(m)
    warm: list[list[CacheWarmer]] = [
        [CacheWarmer(p, TierState(shard_tiers, catalogue, None if m == 1 else (lambda t, q=q: track_partition(t) == q)),
                     count_from, trace=audit_storage, columns=columns) for p in policies]
        for q in range(m)]
    shared: dict[str, list] | None = {} if n > 1 else None  # every shard's counts as of the epoch's start
    epoch_plays: dict[str, list] = {}  # and their additions since
    if processes is None:  # a helper pays off past its fork and the warmers' trip back
        processes = min(2, os.cpu_count() or 1) if len(events) >= HELPER_FROM_EVENTS else 1
    stage = WarmStage(warm, track_partition, audit_storage, processes, merged=n > 1)
    warm_up = stage.apply

    started = time.perf_counter()
    with paused_gc(), tqdm(total=len(events), desc="simulate", unit=" events", unit_scale=True,
                           disable=None if progress else True, leave=False) as bar:
        try:
            epochs = epoch_rounds(events.ts, config.track_epoch_seconds, batch_size) if n > 1 else (
                (start, min(start + batch_size, len(events)), False) for start in range(0, len(events), batch_size))
            for start, stop, turns in epochs:
                batch = events[start:stop]
                if n == 1:
                    work = [(batch, range(start, start + len(batch)))]
                else:
                    work = [([], []) for _ in range(n)]
                    for seq, e in enumerate(batch, start):
                        evs, seqs = work[user_partition(e.user_id)]
                        evs.append(e)
                        seqs.append(seq)
                entries: list[tuple] = []
                for predictor, (evs, seqs) in zip(predictors, work):
                    if shared is not None:
                        predictor.engine.state.begin_round(shared)
                    entries += predictor.process(evs, seqs).entries
                if shared is not None:  # the shards' additions, read from the next epoch on
                    for predictor in predictors:
                        st = predictor.engine.state
                        add_counts(epoch_plays, st.track_delta)
                        st.track_delta = {}
                    if turns:
                        add_counts(shared, epoch_plays)
                        epoch_plays = {}
                warm_up(entries)
                bar.update(len(batch))
            if len(events):
                last = float(events[-1].ts)
                # every shard's storage cost runs to the end
                ended = [e for p in predictors for e in p.finish(last, len(events)).entries] if end_sessions else []
                stage.finish(last, ended)
            else:
                stage.finish(None, [])
        finally:
            stage.close()
    traces = stage.traces
    seconds = time.perf_counter() - started
    figures = {}
    for i, p in enumerate(policies):
        accuracy = [pr.ledger.figures[p.scorer] for pr in predictors] if p.scored and p.scorer in columns else []
        figures[p.name] = policy_figures([ws[i] for ws in warm], accuracy)
    if audit_storage:
        for p in policies:
            figures[p.name]["storage_audit"] = StorageAudit(catalogue).replay(traces[p.name]).summary()
    static = figures.get("static")
    for name, fig in figures.items():
        fig["net_value"] = objective.net_value(fig, static)
    for name, art in zip(names, artifacts):
        if name in figures:
            figures[name].update(model=art.model, model_version=art.version)
    plays = events.plays
    return {
        "events": len(events),
        "plays": plays,
        "counted_window": {"from_exclusive": count_from if math.isfinite(count_from) else None,
                           "to": float(events[-1].ts) if len(events) else None,
                           "rule": "events strictly after the model's training window"
                           if math.isfinite(count_from) else "all events"},
        "tiers": {"fast_capacity": tier_config.fast_capacity, "medium_capacity": tier_config.medium_capacity,
                  "tier_cost_per_day": dict(zip(TIER_NAMES, tier_config.tier_cost)),
                  "transfer_cost": tier_config.transfer_cost, "cold_after_hours": tier_config.cold_after_hours,
                  "partitions": n, "warm_partitions": m},
        "objective": {"hit_value": objective.hit_value},
        "seconds": seconds,
        "events_per_second": len(events) / seconds if seconds else None,
        "policies": figures,
        "daily": {p.name: _daily([ws[i] for ws in warm]) for i, p in enumerate(policies)},
    }


def _daily(warmers: list[CacheWarmer]) -> dict:
    out: dict[str, list] = {}
    for w in warmers:
        for d, row in w.figures.daily.items():
            mine = out.setdefault(str(d), [0] * len(row))
            for i, v in enumerate(row):
                mine[i] += v
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def sweep(events: Sequence[Event], catalogue: Catalogue, artifact: Artifact, thresholds: Sequence[float],
          tier_config: TierConfig | None = None, fast_threshold: float = 0.95, objective: Objective = Objective(),
          count_from: float | None = None, progress: bool = True) -> dict:
    """One replay, one warmer per threshold (features and scores are computed once)."""
    policies = [StaticPolicy("static")] + [
        ThresholdPolicy(f"t={t:.3f}", "model", t, max(t, fast_threshold)) for t in thresholds]
    result = simulate(events, catalogue, [artifact], tier_config, policies, count_from=count_from,
                      objective=objective, progress=progress)
    rows = []
    for t, p in zip(thresholds, policies[1:]):
        fig = result["policies"][p.name]
        rows.append({"threshold": t, "hit_ratio": fig["hit_ratio"], "full_play_hit_ratio": fig["full_play_hit_ratio"],
                     "promotions": fig["promotions"], "wasted_promotions": fig["wasted_promotions"],
                     "promotion_precision": fig["promotion_precision"],
                     "storage_cost_per_day": fig["storage_cost_per_day"], "transfer_cost": fig["transfer_cost"],
                     "net_value": fig["net_value"]})
    best = max(rows, key=lambda r: r["net_value"])
    return {"model": artifact.model, "model_version": artifact.version, "fast_threshold": fast_threshold,
            "objective": {"hit_value": objective.hit_value,
                          "definition": "hit_value * full_play_hits - transfer_cost - extra storage cost over static"},
            "counted_window": result["counted_window"], "static": result["policies"]["static"],
            "thresholds": rows, "best": best, "events": result["events"]}


def parse_threshold_range(spec: str) -> list[float]:
    """``0.05:0.95:0.05`` (start:stop:step, inclusive) or ``0.3,0.5,0.7``."""
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0:
                raise ValueError
            values = list(np.round(np.arange(start, stop + step / 2, step), 6))
        else:
            values = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--thresholds {spec!r}: use start:stop:step or a comma list") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"--thresholds {spec!r}: every threshold must be within [0, 1]")
    return [float(v) for v in values]
