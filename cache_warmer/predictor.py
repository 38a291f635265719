"""The predict stage of one user shard (one sessions partition): features, scores, the A/B
variant, and the accuracy of every prediction once its outcome is known. Its output is the
entries the warm stage needs (``entries.py``); it never reads cache state, so predicting and
warming can run in separate partitions, processes or machines.

A batch is handled in passes: the engine observes every event in order and gathers each play's
row; the engine derives the batch's feature matrix from them and each scorer predicts all rows at
once (numpy calls per batch instead of per play); then the entries and the ledger follow event by
event. The result does not depend on the batch size.

Score columns come from ``scorers`` (features -> P(full)), from the A/B split of ``A`` and ``B``
(column ``ab``), or from ``lookahead`` (the simulation's oracle, which knows an upcoming play's
label and scores upcoming tracks only)."""
from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from models.events import Event
from models.features import FeatureEngine, Resolution
from models.labels import FULL

from .effects import Outcome
from .entries import PLAY, RESOLVED, UPCOMING
from .experiment import AB
from .figures import Figures, confusion_cell

T = TypeVar("T")

Scorer = Callable[[np.ndarray], np.ndarray]
"""Feature rows -> P(played in full)."""
Lookahead = Callable[[int, int, int], float]
"""(user, session, play number) -> the score of that upcoming play, known from the future."""
SWEEP_EVERY = 3600.0  # seconds of event time between sweeps for abandoned predictions
PENDING_HORIZON = 7 * 86400.0
"""A prediction whose session shows no outcome for this long (event time) is dropped as
abandoned: live traffic without session_end markers would otherwise keep it forever."""


def drop_abandoned(pending: dict, horizon: float) -> int:
    """Drop from ``pending`` what has waited since before ``horizon``; return how many. Both
    stages keep their pending plays in play order (a play first resolves its predecessor) with
    the play's time at index 3, so the abandoned are at the front."""
    dropped = 0
    while pending:
        key, entry = next(iter(pending.items()))
        if entry[3] >= horizon:
            break
        del pending[key]
        dropped += 1
    return dropped


_OUTCOMES: dict[tuple[str, str], Outcome] = {}
"""Outcomes are (variant, cell): a handful of distinct values, made once each."""


class PredictionLedger:
    """Predictions waiting for their outcome, and the accuracy of those resolved, per column."""

    def __init__(self, columns: Sequence[str], count_from: float = -math.inf, keep_scores: bool = False,
                 outcomes_of: str | None = None):
        """``outcomes_of``: the column whose resolved predictions are handed back as ``Outcome``s
        (the live worker's served model: its A/B counters and accuracy metrics)."""
        self.columns = tuple(columns)
        self.count_from = count_from
        self.keep_scores = keep_scores
        self.figures = {c: Figures() for c in self.columns}
        self._figures = list(self.figures.values())  # in column order
        self.pending: dict[tuple[int, int], tuple] = {}  # (user, session) -> scores, variant, counted, ts
        self.outcome_at = self.columns.index(outcomes_of) if outcomes_of in self.columns else -1
        self.outcomes: list[Outcome] = []
        self._next_sweep = -math.inf

    def open(self, user: int, session: int, scores: tuple, variant: str, ts: float) -> None:
        if ts >= self._next_sweep:
            self._sweep(ts)
        self.pending[(user, session)] = (scores, variant, ts > self.count_from, ts)

    def resolve(self, r: Resolution) -> None:
        entry = self.pending.pop((r.user_id, r.session_id), None)
        if entry is None:
            return
        scores, variant, counted, _ = entry
        if not counted:
            return
        full = r.label == FULL
        for i, (f, score) in enumerate(zip(self._figures, scores)):
            cell = confusion_cell(score >= 0.5, full)
            vars(f)[cell] += 1  # the cells are plain attributes: one increment, not getattr + setattr
            by = f.by_variant.get(variant)
            if by is None:
                by = f.by_variant[variant] = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
            by[cell] += 1
            if i == self.outcome_at:
                outcome = _OUTCOMES.get((variant, cell))
                if outcome is None:
                    outcome = _OUTCOMES[(variant, cell)] = Outcome(variant, cell)
                self.outcomes.append(outcome)
            if self.keep_scores:
                f.scores.append(score)
                f.labels.append(1 if full else 0)

    def _sweep(self, ts: float) -> None:
        """Hourly (event time): drop what waited longer than the horizon."""
        boundary = (ts // SWEEP_EVERY) * SWEEP_EVERY
        if self._next_sweep > -math.inf:
            dropped = drop_abandoned(self.pending, boundary - PENDING_HORIZON)
            for f in self.figures.values():
                f.abandoned_predictions += dropped
        self._next_sweep = boundary + SWEEP_EVERY

    @classmethod
    def from_state(cls, state: dict) -> "PredictionLedger":
        """A ledger as stored (its columns are those it stored)."""
        ledger = cls(list(state["figures"]))
        ledger.load_state(state)
        return ledger

    def take_outcomes(self) -> list[Outcome]:
        out, self.outcomes = self.outcomes, []
        return out

    def to_state(self) -> dict:
        """Pending predictions and counters as plain JSON-able data (no score lists)."""
        return {"pending": [[u, s, list(sc), v, c, ts] for (u, s), (sc, v, c, ts) in self.pending.items()],
                "figures": {col: {n: getattr(f, n) for n in Figures.ACCURACY} | {"by_variant": f.by_variant}
                            for col, f in self.figures.items()},
                "next_sweep": None if math.isinf(self._next_sweep) else self._next_sweep}

    def load_state(self, state: dict) -> None:
        self.pending = {(u, s): (tuple(sc), v, c, ts) for u, s, sc, v, c, ts in state["pending"]}
        for col, values in state["figures"].items():
            if col in self.figures:
                f = self.figures[col]
                for n in Figures.ACCURACY:
                    setattr(f, n, values[n])
                f.by_variant = values["by_variant"]
        self._next_sweep = -math.inf if state["next_sweep"] is None else state["next_sweep"]


@dataclass
class Predicted:
    """One batch of the predict stage."""

    events: int
    plays: int
    entries: list[tuple] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    """Resolved predictions of the ledger's ``outcomes_of`` column, with their confusion cell."""


def _by_row(columns: list, n: int) -> list[tuple]:
    """Each of ``n`` rows' values, one per column (None for a column without values)."""
    if not columns:
        return [()] * n
    return list(zip(*[c if c is not None else [None] * n for c in columns]))


def run_steps(steps: Generator[object, None, T]) -> T:
    """What a generator of steps (``Predictor.process_steps``) returns, run straight through."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value


class Predictor:
    def __init__(self, engine: FeatureEngine, scorers: dict[str, Scorer], columns: Sequence[str] | None = None,
                 lookahead: dict[str, Lookahead] | None = None, variant_of: Callable[[int], str] | None = None,
                 ledger: PredictionLedger | None = None):
        """``columns``: the score columns an upcoming entry carries, in order (default: every
        scorer, ``ab`` when ``variant_of`` is given, then the look-ahead ones). ``variant_of``:
        which of the scorers ``A`` and ``B`` serves a user (see experiment.variant_of)."""
        self.engine = engine
        self.scorers = scorers
        self.lookahead = lookahead or {}
        self.variant_of = variant_of if "A" in scorers and "B" in scorers else None
        if columns is None:
            columns = [*scorers, *([AB] if self.variant_of else []), *self.lookahead]
        self.columns = tuple(columns)
        self.ledger = ledger if ledger is not None else PredictionLedger(
            [c for c in self.columns if c not in self.lookahead])
        self._ledger_at = [self.columns.index(c) for c in self.ledger.columns]
        self._ahead_at = [self.columns.index(name) for name in self.lookahead]

    def process(self, events: Sequence[Event], seqs: Sequence[int]) -> Predicted:
        """``seqs``: each event's sequence number (its offset, or its index in the replay)."""
        return run_steps(self.process_steps(events, seqs))

    def process_steps(self, events: Sequence[Event], seqs: Sequence[int]) -> Generator[int, None, Predicted]:
        """``process``, pausing before the first event of each later epoch of the track counts
        (it yields the epoch): the worker's checkpoint resumes it once every partition of the
        checkpoint has applied its events of the epochs before (``stream/worker/checkpoint.py``)."""
        observe = self.engine.observe
        st = self.engine.state
        steps: list[tuple] = []
        rows: list[tuple] = []  # gathered (``FeatureEngine.gather``)
        up_rows: list[tuple] = []
        variant_of = self.variant_of
        variants: list[str] = []  # of each play (row), and of each upcoming row
        up_variants: list[str] = []
        lookahead = list(self.lookahead.values())
        ahead: list[list[float]] = []
        for e, seq in zip(events, seqs):
            if e.ts >= st.epoch_end:
                yield st.epoch_of(e.ts)
            resolved, row, up, play_no = observe(e)
            if row is not None:
                variant = variant_of(e.user_id) if variant_of is not None else "A"
                j = -1
                if up is not None:
                    j = len(up_rows)
                    up_rows.append(up)
                    up_variants.append(variant)
                    if lookahead:
                        ahead.append([future(e.user_id, e.session_id, play_no + 1) for future in lookahead])
                steps.append((seq, e, resolved, len(rows), j, play_no))
                rows.append(row)
                variants.append(variant)
            elif resolved:
                steps.append((seq, e, resolved, -1, -1, -1))
        X, X_up = self.engine.matrix(rows), self.engine.matrix(up_rows)
        # rounded: BLAS may give a row's score a different last bit depending on the batch's
        # shape, which must not flip a decision sitting on a threshold
        cur = {name: np.round(scorer(X), 9).tolist() for name, scorer in self.scorers.items()}
        up_s = {name: np.round(scorer(X_up), 9).tolist() for name, scorer in self.scorers.items()}
        columns = self.columns
        # each column's scores: a scorer's, the variant's (ab), or a look-ahead's (upcoming only);
        # then, by one zip, each play's and each upcoming row's scores in column order
        cur_cols = [cur.get(c) for c in columns]
        up_cols = [up_s.get(c) for c in columns]
        if AB in columns:
            at = columns.index(AB)
            cur_cols[at] = [cur[v][i] for i, v in enumerate(variants)]
            up_cols[at] = [up_s[v][j] for j, v in enumerate(up_variants)]
        for at, values in zip(self._ahead_at, zip(*ahead)):
            up_cols[at] = values
        cur_rows, up_rows_scored = _by_row(cur_cols, len(rows)), _by_row(up_cols, len(up_rows))
        ledger, ledger_at = self.ledger, self._ledger_at
        ledger_all = ledger_at == list(range(len(columns)))
        out = Predicted(len(events), len(rows))
        entries = out.entries
        append = entries.append
        resolve, open_ = ledger.resolve, ledger.open
        for seq, e, resolved, i, j, play_no in steps:
            own = None  # the play itself, resolved at once by a skip that came before it
            for r in resolved:
                if i >= 0 and r.play_no == play_no and r.session_id == e.session_id and r.user_id == e.user_id:
                    own = r
                    continue
                append((seq, RESOLVED, r.ts, r.user_id, r.session_id, r.play_no, r.track_id, r.label))
                resolve(r)
            if i < 0:
                continue
            variant, now = variants[i], cur_rows[i]
            append((seq, PLAY, e.ts, e.user_id, e.session_id, play_no, e.track_id, variant))
            open_(e.user_id, e.session_id, now if ledger_all else tuple([now[k] for k in ledger_at]), variant, e.ts)
            if j >= 0:
                append((seq, UPCOMING, e.ts, e.next_track_id, variant, up_rows_scored[j]))
            if own is not None:
                append((seq, RESOLVED, own.ts, own.user_id, own.session_id, own.play_no, own.track_id, own.label))
                resolve(own)
        out.outcomes = ledger.take_outcomes()
        return out

    def finish(self, ts: float, seq: int) -> Predicted:
        """The data ended: every open session ended with it."""
        out = Predicted(0, 0)
        for r in self.engine.flush(ts):
            out.entries.append((seq, RESOLVED, r.ts, r.user_id, r.session_id, r.play_no, r.track_id, r.label))
            self.ledger.resolve(r)
        out.outcomes = self.ledger.take_outcomes()
        return out
