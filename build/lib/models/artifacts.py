"""A trained model on disk: the estimator plus what is needed to trust and reuse it."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import joblib
import numpy as np

from .fast_scoring import compile_scorer

FORMAT = "skipcache-model/1"


class ArtifactError(ValueError):
    """The file is not a usable skipcache model, or does not fit the data it is used on."""


@dataclass
class Artifact:
    estimator: object
    model: str
    feature_names: tuple[str, ...]
    engine_config: dict
    train_window: dict  # {"start": ts, "end": ts, "plays": n, "rows_used": n}
    data_fingerprint: str
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return f"{self.model}-{self.data_fingerprint[:8]}-{int(self.created_at)}"

    def predict_full(self, X: np.ndarray) -> np.ndarray:
        """P(played in full) for each row (the calibrated linear SVC compiled to one matrix
        product, see ``fast_scoring.py``; any other estimator through scikit-learn)."""
        if len(X) == 0:
            return np.empty(0)
        fast = self._fast_scorer
        return fast(X) if fast is not None else self.estimator.predict_proba(X)[:, 1]

    @cached_property
    def _fast_scorer(self):
        """Compiled once per loaded artifact (never saved: ``save`` skips private names)."""
        return compile_scorer(self.estimator, len(self.feature_names))

    def check_features(self, feature_names: tuple[str, ...]) -> None:
        if tuple(feature_names) != tuple(self.feature_names):
            missing = sorted(set(self.feature_names) - set(feature_names))
            extra = sorted(set(feature_names) - set(self.feature_names))
            raise ArtifactError(
                f"model {self.model!r} was trained on {len(self.feature_names)} features, this data "
                f"gives {len(feature_names)}: missing here {missing or 'none'}, extra here "
                f"{extra or 'none'}. Was a catalogue file (tracks.jsonl, users.jsonl, artists.jsonl) "
                "delivered for training and not now, or the other way round? Retrain on data like this.")


def library_versions() -> dict:
    import sklearn

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "joblib": joblib.__version__}


def save(artifact: Artifact, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **{k: v for k, v in artifact.__dict__.items() if not k.startswith("_")}}
    joblib.dump(payload, path, compress=3)
    return path


def load(path: str | Path, feature_names: tuple[str, ...] | None = None) -> Artifact:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"no model file at {path}: train one with `skipcache train`")
    try:
        payload = joblib.load(path)
    except Exception as exc:  # joblib raises many kinds for a foreign or truncated file
        raise ArtifactError(f"{path} is not a readable model file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a skipcache model (expected format {FORMAT})")
    payload.pop("format")
    artifact = Artifact(**payload)
    artifact.feature_names = tuple(artifact.feature_names)
    if feature_names is not None:
        artifact.check_features(tuple(feature_names))
    return artifact
