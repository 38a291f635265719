"""The calibrated linear SVC as one matrix product: the same probabilities as scikit-learn's
``predict_proba`` at a fraction of its cost per call.

``CalibratedClassifierCV(Pipeline(StandardScaler, LinearSVC), method="sigmoid")`` scores a row as
the mean over its folds of ``expit(-(a_k * (((x - mean_k) / scale_k) . w_k + c_k) + b_k))``.
Folding each fold's scaler and sigmoid into its weights gives ``expit(-(x . W_k + d_k))``: one
``X @ W`` for every fold at once. scikit-learn's path validates its input and walks the pipeline
for every fold and call (~13 ms per batch of 2,500 rows here; this takes ~0.3 ms). The compiled
scorer is checked against scikit-learn's on probe rows before it is used; anything it does not
recognise keeps scikit-learn's own ``predict_proba``."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import expit

Scorer = Callable[[np.ndarray], np.ndarray]
TOLERANCE = 1e-12


def compile_scorer(estimator: object, width: int) -> Scorer | None:
    """P(class 1) as a fast function of the feature rows, or None if ``estimator`` is not a
    sigmoid-calibrated standardised linear model (or the compiled one disagrees with it)."""
    try:
        weights, offsets = _folds(estimator)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    if weights.shape[0] != width:
        return None
    n = weights.shape[1]

    def score(X: np.ndarray) -> np.ndarray:
        u = X @ weights
        u += offsets
        return expit(-u).sum(axis=1) / n

    probe = np.random.default_rng(0).normal(size=(64, width)) * 3
    expected = estimator.predict_proba(probe)[:, 1]
    if not np.allclose(score(probe), expected, rtol=0, atol=TOLERANCE):
        return None
    return score


def _folds(estimator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if not isinstance(estimator, CalibratedClassifierCV) or estimator.method != "sigmoid":
        raise TypeError
    if list(estimator.classes_) != [0, 1]:
        raise ValueError
    columns, offsets = [], []
    for fold in estimator.calibrated_classifiers_:
        pipe = fold.estimator
        if not isinstance(pipe, Pipeline) or len(pipe.steps) != 2:
            raise TypeError
        scaler, svc = pipe.steps[0][1], pipe.steps[1][1]
        if not isinstance(scaler, StandardScaler) or not isinstance(svc, LinearSVC) or list(svc.classes_) != [0, 1]:
            raise TypeError
        (calibrator,) = fold.calibrators
        a, b = float(calibrator.a_), float(calibrator.b_)
        mean = scaler.mean_ if scaler.with_mean else 0.0
        scale = scaler.scale_ if scaler.with_std else 1.0
        w = svc.coef_.ravel() / scale
        c = float(svc.intercept_[0]) - float(np.sum(mean * w))
        columns.append(a * w)
        offsets.append(a * c + b)
    return np.column_stack(columns), np.array(offsets)
