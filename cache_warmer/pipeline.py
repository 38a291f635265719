"""One batch of events of one shard (one Kafka partition) through features, scores and cache
decisions: the code path shared by the offline simulation and the live worker.

Features depend only on events (never on scores or cache state), so a batch is handled in three
passes: the engine observes every event in order and collects feature rows; each scorer predicts
all rows at once (one numpy call instead of one per play); then the warmers apply their policies
event by event, in order. The result does not depend on the batch size.

A policy reads one score column by name (``policy.scorer``). Columns come from ``scorers``
(features -> P(full)), from the A/B split of ``A`` and ``B``, or from ``lookahead`` (the
simulation's oracle, which knows the upcoming play's label); the pipeline treats them alike.
``process`` returns each policy's ``BatchEffects``: counters, decisions and resolved outcomes."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.events import Event
from models.features import FeatureEngine, Resolution

from .effects import BatchEffects
from .experiment import AB
from .warmer import CacheWarmer

Scorer = Callable[[np.ndarray], np.ndarray]
"""Feature rows -> P(played in full)."""
Lookahead = Callable[[int, int, int], float]
"""(user, session, play number) -> the score of that upcoming play, known from the future."""


@dataclass
class BatchResult:
    events: int
    plays: int
    resolutions: list[Resolution]
    scores: dict[str, np.ndarray]  # scorer -> P(full) of each play in the batch
    effects: dict[str, BatchEffects]  # policy name -> what the batch did under it


class Pipeline:
    def __init__(self, engine: FeatureEngine, scorers: dict[str, Scorer], warmers: Sequence[CacheWarmer],
                 lookahead: dict[str, Lookahead] | None = None,
                 variant_of: Callable[[int], str] | None = None):
        """``variant_of``: for a policy whose scorer is ``ab``, which of the scorers ``A`` and
        ``B`` serves a user (see experiment.variant_of)."""
        self.engine = engine
        self.scorers = scorers
        self.warmers = list(warmers)
        self.lookahead = lookahead or {}
        self.variant_of = variant_of

    def process(self, events: Sequence[Event]) -> BatchResult:
        observe = self.engine.observe
        steps: list[tuple] = []
        rows: list[list[float]] = []
        up_rows: list[list[float]] = []
        all_resolved: list[Resolution] = []
        ahead: dict[str, list[float]] = {name: [] for name in self.lookahead}
        for e in events:
            resolved, row, up, play_no = observe(e)
            if resolved:
                all_resolved.extend(resolved)
            if row is not None:
                up_index = -1
                if up is not None:
                    up_index = len(up_rows)
                    up_rows.append(up)
                    for name, future in self.lookahead.items():
                        ahead[name].append(future(e.user_id, e.session_id, play_no + 1))
                steps.append((e, resolved, len(rows), up_index, play_no))
                rows.append(row)
            elif resolved:
                steps.append((e, resolved, -1, -1, -1))
        width = len(self.engine.feature_names)
        X = np.array(rows, dtype=np.float64) if rows else np.empty((0, width))
        X_up = np.array(up_rows, dtype=np.float64) if up_rows else np.empty((0, width))
        # rounded: BLAS may give a row's score a different last bit depending on the batch's
        # shape, which must not flip a decision sitting on a threshold
        scores = {name: np.round(scorer(X), 9) for name, scorer in self.scorers.items()}
        up_scores = {name: np.round(scorer(X_up), 9) for name, scorer in self.scorers.items()}
        # plain lists: indexing numpy scalars one by one is slow in the loop below
        cur_l = {k: v.tolist() for k, v in scores.items()}
        up_l = {k: v.tolist() for k, v in up_scores.items()}
        variants: list[str] = []
        if self.variant_of is not None and "A" in cur_l and "B" in cur_l:
            variant_of = self.variant_of
            cur_ab, up_ab = [0.0] * len(rows), [0.0] * len(up_rows)
            for e, _, i, j, _ in steps:
                if i >= 0:
                    v = variant_of(e.user_id)
                    variants.append(v)
                    cur_ab[i] = cur_l[v][i]
                    if j >= 0:
                        up_ab[j] = up_l[v][j]
            cur_l[AB], up_l[AB] = cur_ab, up_ab
        up_l.update(ahead)  # a look-ahead column scores upcoming plays only
        plan = [(w, cur_l.get(w.policy.scorer), up_l.get(w.policy.scorer)) for w in self.warmers]
        for w in self.warmers:
            w.begin()
        for e, resolved, i, j, _ in steps:
            ts = e.ts
            for w, _, _ in plan:
                w.advance(ts)
                for r in resolved:
                    w.on_resolution(r)
            if i < 0:
                continue
            variant = variants[i] if variants else "A"
            for w, cur, up in plan:
                w.on_play(e.user_id, e.session_id, e.track_id, e.next_track_id, ts,
                          cur[i] if cur is not None else None,
                          up[j] if (up is not None and j >= 0) else None, variant)
        return BatchResult(len(events), len(rows), all_resolved, scores, self._end())

    def finish(self, ts: float) -> BatchResult:
        """The data ended: every open session ended with it."""
        resolved = self.engine.flush(ts)
        for w in self.warmers:
            w.begin()
            w.advance(ts)
            for r in resolved:
                w.on_resolution(r)
        return BatchResult(0, 0, resolved, {}, self._end())

    def _end(self) -> dict[str, BatchEffects]:
        return {w.policy.name: w.end() for w in self.warmers}
