"""The skip models. Every estimator predicts P(played in full) (class 1) from the engine's features.

``naive`` is the seed projects' rule (skipped unless the track's genres meet the user's
favourites); ``linear_svc`` is calibrated so a promotion threshold can be put on it; the forest and
the MLP are the other seed project's; ``hist_gb`` is what we found better on long sessions."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

MODEL_NAMES = ("naive", "linear_svc", "logistic", "random_forest", "mlp", "hist_gb")
DEFAULT_MODELS = ("naive", "linear_svc", "random_forest", "mlp", "hist_gb")
MAX_TRAIN_ROWS = {"random_forest": 250_000, "mlp": 250_000, "linear_svc": 500_000, "logistic": 500_000,
                  "hist_gb": 1_000_000}
"""Beyond these, a model trains on a seeded random sample of the (time-earlier) training rows;
the sample is reported (``rows_used``, ``train_rows``). Nothing from after the split can enter
it. The slow learners are sampled for time; the others only past half a million rows (the
linear models: each of the calibration's three folds copies its rows twice, scaled and as
liblinear's 16 bytes a cell) or a million (the boosting), where those copies would otherwise
outgrow a 4 GB machine beside an 18M-event play table. A 32-feature linear model gains nothing
measurable past ~100k rows."""


class NaiveRule(ClassifierMixin, BaseEstimator):
    """Played in full iff the track's genres meet the user's favourite genres; no learning.
    Without a catalogue (no genre_match feature) the rule predicts skipped for every play."""

    def __init__(self, feature_names: tuple[str, ...] = ()):
        self.feature_names = feature_names

    def fit(self, X, y=None):
        self.classes_ = np.array([0, 1])
        names = list(self.feature_names)
        self.column_ = names.index("genre_match") if "genre_match" in names else -1
        return self

    def predict_proba(self, X):
        X = np.asarray(X)
        match = X[:, self.column_] if self.column_ >= 0 else np.zeros(len(X))
        return np.column_stack([1.0 - match, match])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def build_estimator(name: str, feature_names: tuple[str, ...], seed: int = 0):
    if name == "naive":
        return NaiveRule(tuple(feature_names))
    if name == "linear_svc":
        svc = make_pipeline(StandardScaler(), LinearSVC(C=0.1, dual=False, random_state=seed))
        return CalibratedClassifierCV(svc, method="sigmoid", cv=3)
    if name == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=100, min_samples_leaf=20, max_features="sqrt",
                                      n_jobs=-1, random_state=seed)
    if name == "mlp":
        return make_pipeline(StandardScaler(), MLPClassifier(
            hidden_layer_sizes=(111, 41), activation="relu", early_stopping=True, max_iter=40,
            batch_size=512, random_state=seed))
    if name == "hist_gb":
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, early_stopping=True,
                                              random_state=seed)
    raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODEL_NAMES)}")


def sample_index(name: str, n: int, seed: int = 0) -> np.ndarray | None:
    """The training rows (sorted) ``name`` fits on out of ``n``; None: all of them. Known from
    ``n`` alone, so a play table can hold only the rows some model will read."""
    limit = MAX_TRAIN_ROWS.get(name)
    if limit is None or n <= limit:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def fit_estimator(name: str, feature_names: tuple[str, ...], X: np.ndarray, y: np.ndarray,
                  seed: int = 0) -> tuple[object, int]:
    """Fit, sampling the training rows for the slow learners. Returns (estimator, rows used)."""
    est = build_estimator(name, feature_names, seed)
    idx = sample_index(name, len(X), seed)
    if idx is not None:
        X, y = X[idx], y[idx]
    if len(np.unique(y)) < 2 and name != "naive":
        raise ValueError("the training plays hold only one class: need both skips and full plays")
    est.fit(X, y)
    return est, len(X)
