"""Honest numbers: features replayed in time order through the one engine, a split by time, and
the majority-class accuracy printed beside every accuracy."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from sklearn.metrics import (accuracy_score, brier_score_loss, f1_score, precision_score,
                             recall_score, roc_auc_score)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from .artifacts import Artifact, library_versions
from .estimators import fit_estimator, sample_index
from .columns import PLAY_CODE, EventColumns
from .events import Catalogue, Event
from .features import EngineConfig, FeatureEngine
from .rejections import Rejections
from .gc_pause import paused_gc, release_free_memory


@dataclass
class PlayTable:
    """One row per play, in time order: the features it had when it started, and its label."""

    X: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    feature_names: tuple[str, ...]
    rejections: Rejections
    rows: np.ndarray | None = None
    """The plays (indices into ``y`` and ``ts``) whose features ``X`` holds, in order; None: all
    (``kept_rows``)."""


FEATURE_DTYPE = np.float64
"""The play table's cells. float32 would halve the table (an 18M-event export's is ~2.3 GB in
float64), but the models here do not allow it without changing their figures: liblinear and
scikit-learn's gradient boosting compute in float64, and the boosting's bins, found on
float32-rounded values, move (measured: hist_gb accuracy 0.7684 -> 0.7691 on the same plays).
The table's size is bounded instead by training on at most ``MAX_TRAIN_ROWS`` rows."""
ROWS_PER_COPY = 8192


def build_table(events: "Sequence[Event] | EventColumns", catalogue: Catalogue, config: EngineConfig | None = None,
                progress: bool = True, consume: bool = False, keep: np.ndarray | None = None) -> PlayTable:
    """Replay ``events`` (already in replay order) through a fresh engine, writing each play's
    features into a matrix allocated once (one row per play). ``consume``: the caller is done
    with the columns after this; they are given back as the replay passes them
    (``EventColumns.drain``), and the object is left empty. ``keep`` (a flag per play): only
    those plays' features are stored (``kept_rows``); every play's label and time are."""
    with paused_gc():
        table = _build_table(events, catalogue, config, progress, consume, keep)
    release_free_memory()  # the engine's state, freed on return
    return table


def _build_table(events, catalogue: Catalogue, config: EngineConfig | None, progress: bool,
                 consume: bool, keep: np.ndarray | None) -> PlayTable:
    events = EventColumns.of(events)
    n_events = len(events)
    end_ts = float(events.ts[-1]) if n_events else 0.0
    engine = FeatureEngine(catalogue, config)
    names = engine.feature_names
    n_plays = events.plays
    if keep is not None and len(keep) != n_plays:
        raise ValueError(f"keep has {len(keep)} flags for {n_plays} plays")
    X = np.empty((n_plays if keep is None else int(keep.sum()), len(names)), FEATURE_DTYPE)
    ts = np.empty(n_plays, np.float64)
    labels = np.full(n_plays, -1, np.int8)
    index: dict[tuple[int, int, int], int] = {}
    rows: list[tuple] = []  # gathered (FeatureEngine.gather), derived a copy at a time
    done = 0  # rows copied into X
    play = 0  # plays seen
    observe = engine.observe
    for e in tqdm(events.drain() if consume else events, desc="features", unit=" events", unit_scale=True,
                  disable=None if progress else True, leave=False, mininterval=0.5, total=n_events):
        resolved, row, _, play_no = observe(e)
        for r in resolved:
            labels[index.pop((r.user_id, r.session_id, r.play_no))] = r.label
        if row is not None:
            index[(e.user_id, e.session_id, play_no)] = play
            ts[play] = e.ts
            play += 1
            if keep is not None and not keep[play - 1]:
                continue
            rows.append(row)
            if len(rows) == ROWS_PER_COPY:
                X[done:done + len(rows)] = engine.matrix(rows)
                done += len(rows)
                rows.clear()
    if rows:
        X[done:done + len(rows)] = engine.matrix(rows)
        done += len(rows)
    for r in engine.flush(end_ts):
        labels[index.pop((r.user_id, r.session_id, r.play_no))] = r.label
    assert play == n_plays and done == len(X), (play, n_plays, done, len(X))
    return PlayTable(X, labels, ts, names, engine.rejections, None if keep is None else np.flatnonzero(keep))


def time_split(ts: np.ndarray, fraction: float) -> tuple[int, float]:
    """Index of the first test play and the training window's last timestamp. Plays sharing the
    cut-off timestamp all go to training, so 'after the window' means strictly later."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError("train fraction must be in (0, 1]")
    n = len(ts)
    if n == 0:
        raise ValueError("no plays to train on")
    k = max(1, min(n, int(round(fraction * n))))
    cutoff = float(ts[k - 1])
    k = int(np.searchsorted(ts, cutoff, side="right"))
    return k, cutoff


HALF_LIVES: tuple[float | None, ...] = (14.0, 60.0, None)
"""User memory candidates, in days (None: no decay): exports span a year with months between a
user's sessions, where a short memory forgets the user it knew."""
CHOICE_EVENTS = 400_000
"""Most events the half-life choice replays per candidate: past it, a seeded share of the users
(each with their whole history, as the choice is about history)."""


def choose_half_life(events: "Sequence[Event] | EventColumns", catalogue: Catalogue, fraction: float,
                     config: EngineConfig = EngineConfig(), candidates: Sequence[float | None] = HALF_LIVES,
                     seed: int = 0, budget: int = CHOICE_EVENTS) -> tuple[EngineConfig, dict]:
    """The user half-life with the best validation ROC AUC inside the training window: the
    window's events (up to ``budget``, by a sample of users) are split by time again, a scaled
    logistic regression (the linear family of the default model, a second to fit; ROC AUC needs
    no calibration) is fit on the earlier 70% of their plays and scored on the rest, once per
    candidate.
    Nothing after the training window is read, so the test figures stay honest. Returns the config
    with the chosen half-life and the scores (``str(candidate) -> AUC``)."""
    cols = EventColumns.of(events)
    plays_ts = cols.ts[cols.kind == PLAY_CODE]
    if len(plays_ts) == 0:
        return config, {}
    _, cutoff = time_split(plays_ts, fraction)
    window = cols.take(slice(0, int(np.searchsorted(cols.ts, cutoff, side="right"))))  # views, no copy
    if len(window) > budget:
        keep = max(1, int(round(1000 * budget / len(window))))
        rng = np.random.default_rng(seed)
        users = np.unique(window.user)
        chosen = users[rng.random(len(users)) * 1000 < keep]
        window = window.take(np.flatnonzero(np.isin(window.user, chosen)))
    scores: dict[str, float] = {}
    best, best_auc = config.user_half_life_days, -1.0
    for hl in candidates:
        cand = replace(config, user_half_life_days=hl)
        table = build_table(window, catalogue, cand, progress=False)
        k, _ = time_split(table.ts, 0.7)
        if k >= len(table.y) or len(np.unique(table.y[k:])) < 2 or len(np.unique(table.y[:k])) < 2:
            return config, {}  # too little to choose on: keep the default
        ranker = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
        ranker.fit(table.X[:k], table.y[:k])
        auc = float(roc_auc_score(table.y[k:], ranker.decision_function(table.X[k:])))
        scores[str(hl)] = round(auc, 5)
        if auc > best_auc + 1e-9:
            best, best_auc = hl, auc
    return replace(config, user_half_life_days=best), scores


def majority_accuracy(y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    p = float(np.mean(y))
    return max(p, 1.0 - p)


def classification_metrics(y: np.ndarray, p_full: np.ndarray, threshold: float = 0.5) -> dict:
    """Metrics of the 'played in full' class (label 1) from P(full)."""
    pred = (p_full >= threshold).astype(np.int8)
    both = len(np.unique(y)) == 2
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "roc_auc": float(roc_auc_score(y, p_full)) if both else float("nan"),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "brier": float(brier_score_loss(y, p_full)) if len(y) else float("nan"),
    }


PREDICT_ROWS = 262_144


def predict_full(est, X: np.ndarray) -> np.ndarray:
    """P(full) of every row, a slice at a time: scikit-learn's pipelines copy what they score
    (scaled, binned), and 2.5M rows of 32 features are 650 MB a copy. Rows are independent, and
    a table up to this size is scored in one call, as before."""
    if len(X) <= PREDICT_ROWS:
        return est.predict_proba(X)[:, 1]
    out = np.empty(len(X))
    for start in range(0, len(X), PREDICT_ROWS):
        out[start:start + PREDICT_ROWS] = est.predict_proba(X[start:start + PREDICT_ROWS])[:, 1]
    return out


def train_artifact(table: PlayTable, model: str, fraction: float, fingerprint: str,
                   config: EngineConfig, seed: int = 0) -> Artifact:
    """Fit on the earliest ``fraction`` of plays; score the rest (if any) into the metadata."""
    k, cutoff = time_split(table.ts, fraction)
    started = time.perf_counter()
    est, used = fit_estimator(model, table.feature_names, table.X[:k], table.y[:k], seed)
    fit_seconds = time.perf_counter() - started
    metrics: dict = {"fit_seconds": round(fit_seconds, 3), "train": classification_metrics(
        table.y[:k], predict_full(est, table.X[:k]))}
    if k < len(table.y):
        y_test = table.y[k:]
        metrics["test"] = classification_metrics(y_test, predict_full(est, table.X[k:]))
        metrics["test"]["majority_accuracy"] = majority_accuracy(y_test)
        metrics["test"]["plays"] = int(len(y_test))
    return Artifact(estimator=est, model=model, feature_names=table.feature_names,
                    engine_config=config.as_dict(),
                    train_window={"start": float(table.ts[0]), "end": cutoff, "plays": k, "rows_used": used},
                    data_fingerprint=fingerprint, metrics=metrics, versions=library_versions())


def kept_rows(play_ts: np.ndarray, models: list[str], fraction: float = 0.7, seed: int = 0) -> np.ndarray:
    """Which plays ``evaluate`` reads the features of: every test play, and the training plays
    some model fits on (past ``MAX_TRAIN_ROWS`` a model reads a seeded sample, which the number
    of training plays decides). On 15M events that is 4M of 8.6M rows of the play table."""
    k, _ = time_split(play_ts, fraction)
    keep = np.zeros(len(play_ts), bool)
    keep[k:] = True
    for name in models:
        idx = sample_index(name, k, seed)
        keep[:k][slice(None) if idx is None else idx] = True
    return keep


def evaluate(table: PlayTable, models: list[str], fraction: float = 0.7, seed: int = 0,
             progress: bool = True) -> dict:
    """The JSON that ``skipcache evaluate`` writes. A table of ``kept_rows`` gives the figures of
    the whole table: each model fits on the same rows."""
    k, cutoff = time_split(table.ts, fraction)
    if k >= len(table.y):
        raise ValueError("the split leaves no test plays: lower --train-fraction")
    y_train, y_test = table.y[:k], table.y[k:]
    n_test = len(y_test)
    X_train, X_test = (table.X[:k], table.X[k:]) if table.rows is None else (None, table.X[len(table.X) - n_test:])
    if table.rows is not None and not np.array_equal(table.rows[len(table.rows) - n_test:], np.arange(k, len(table.y))):
        raise ValueError("the play table does not hold every test play (build it with kept_rows for this split)")
    out = {"split": {"train_plays": int(k), "test_plays": int(len(y_test)), "train_fraction": fraction,
                     "train_end": cutoff, "test_start": float(table.ts[k]), "test_end": float(table.ts[-1])},
           "majority_accuracy": majority_accuracy(y_test),
           "test_full_play_rate": float(np.mean(y_test)),
           "features": list(table.feature_names),
           "models": {}}
    for name in tqdm(models, desc="models", disable=None if progress else True, leave=False):
        started = time.perf_counter()
        if X_train is not None:
            est, used = fit_estimator(name, table.feature_names, X_train, y_train, seed)
        else:  # the rows the model samples, as fit_estimator would on the whole table
            idx = sample_index(name, k, seed)
            idx = np.arange(k) if idx is None else idx
            at = np.searchsorted(table.rows, idx)
            if not np.array_equal(table.rows[np.minimum(at, len(table.rows) - 1)], idx):
                raise ValueError(f"the play table lacks training rows {name} fits on (build it with kept_rows)")
            est, used = fit_estimator(name, table.feature_names, table.X[at], y_train[idx], seed)
        fit_s = time.perf_counter() - started
        p = predict_full(est, X_test)
        m = classification_metrics(y_test, p)
        m.update(fit_seconds=round(fit_s, 3), train_rows=used)
        out["models"][name] = m
    return out
