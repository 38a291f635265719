"""The acceptance numbers of the foundation, as tests on generated data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.artifacts import ArtifactError, load
from models.evaluation import build_table, evaluate
from models.replay import replay_order
from stream.cli import main
from stream.files import read_dataset
from stream.synthetic import generate


def _table(path):
    ds = read_dataset(path, progress=False)
    return build_table(replay_order(ds.events), ds.catalogue, progress=False)


def test_short_sessions_have_no_signal_and_no_model_invents_one(short_data):
    result = evaluate(_table(short_data), ["naive", "linear_svc", "random_forest", "mlp", "hist_gb"], 0.7, progress=False)
    for name, m in result["models"].items():
        assert m["accuracy"] <= result["majority_accuracy"] + 0.01, name
        assert abs(m["roc_auc"] - 0.5) < 0.05, name


def test_generator_is_deterministic(tmp_path):
    generate(tmp_path / "a", users=30, seed=4, profile="long", noise=0.05, progress=False)
    generate(tmp_path / "b", users=30, seed=4, profile="long", noise=0.05, progress=False)
    generate(tmp_path / "c", users=30, seed=5, profile="long", noise=0.05, progress=False)
    for name in ("sessions", "users", "artists", "tracks", "track_storage"):
        a = (tmp_path / "a" / f"{name}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    assert (tmp_path / "a" / "sessions.jsonl").read_bytes() != (tmp_path / "c" / "sessions.jsonl").read_bytes()


def test_generator_does_not_depend_on_the_string_hash_seed(tmp_path):
    code = ("import sys, pathlib; from stream.synthetic import generate; "
            "generate(pathlib.Path(sys.argv[1]), users=20, seed=4, profile='long', progress=False)")
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / seed)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parents[2])
    for name in ("sessions", "track_storage"):
        assert (tmp_path / "1" / f"{name}.jsonl").read_bytes() == (tmp_path / "2" / f"{name}.jsonl").read_bytes()


def test_train_saves_metadata_and_refuses_other_features(small_long_data, tmp_path, capsys):
    out = tmp_path / "m.joblib"
    assert main(["train", "--data", str(small_long_data), "--model", "linear_svc", "--out", str(out),
                 "--train-fraction", "0.6"]) == 0
    art = load(out)
    assert art.model == "linear_svc" and "genre_match" in art.feature_names
    assert art.train_window["end"] > art.train_window["start"]
    assert art.data_fingerprint and art.versions["scikit-learn"]
    assert 0.5 < art.metrics["test"]["roc_auc"] <= 1.0
    # without tracks.jsonl the engine gives fewer features: loading must say why it cannot fit
    with pytest.raises(ArtifactError, match="missing here"):
        load(out, feature_names=art.feature_names[:12])
    p = art.predict_full(np.zeros((3, len(art.feature_names))))
    assert p.shape == (3,) and ((0 <= p) & (p <= 1)).all()


def test_evaluate_cli_json_shape(small_long_data, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["evaluate", "--data", str(small_long_data), "--models", "naive,linear_svc",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["split"]) >= {"train_plays", "test_plays"}
    assert result["split"]["train_plays"] > result["split"]["test_plays"] > 0
    for name in ("naive", "linear_svc"):
        assert set(result["models"][name]) >= {"accuracy", "roc_auc", "precision", "recall", "f1", "brier"}
    assert "majority" in capsys.readouterr().out


def test_unknown_model_is_a_clear_error(small_long_data, capsys):
    from stream.cli.jobs import evaluate_models

    with pytest.raises(ValueError, match="unknown model"):
        evaluate_models(small_long_data, ["gpt"])
    assert main(["evaluate", "--data", str(small_long_data), "--models", "gpt"]) == 2
    assert "error: unknown model(s) ['gpt']" in capsys.readouterr().err


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no model file"):
        load(tmp_path / "nope.joblib")
    (tmp_path / "junk.joblib").write_bytes(b"not a model")
    with pytest.raises(ArtifactError):
        load(tmp_path / "junk.joblib")


def test_a_table_of_the_kept_rows_gives_the_whole_tables_figures(small_long_data, monkeypatch):
    """evaluate on a play table that holds only the test plays and the training plays the models
    sample (what `skipcache evaluate` builds) gives exactly the whole table's figures."""
    from models import estimators
    from models.columns import PLAY_CODE
    from models.evaluation import build_table, evaluate, kept_rows
    from stream.cli.jobs import load_replay

    monkeypatch.setitem(estimators.MAX_TRAIN_ROWS, "linear_svc", 3_000)  # both sample here
    monkeypatch.setitem(estimators.MAX_TRAIN_ROWS, "hist_gb", 5_000)
    ds, events = load_replay(small_long_data, progress=False)
    models = ["linear_svc", "hist_gb"]
    keep = kept_rows(events.ts[events.kind == PLAY_CODE], models, 0.7, seed=3)
    whole = build_table(events, ds.catalogue, progress=False)
    part = build_table(events, ds.catalogue, progress=False, consume=True, keep=keep)
    assert len(events) == 0 and len(part.X) == keep.sum() < len(whole.X) * 0.6
    assert (part.X == whole.X[keep]).all() and (part.y == whole.y).all()
    got, want = evaluate(part, models, 0.7, seed=3, progress=False), evaluate(whole, models, 0.7, seed=3, progress=False)
    for m in models:
        for key in ("accuracy", "roc_auc", "brier", "train_rows"):
            assert got["models"][m][key] == want["models"][m][key], (m, key)
    with pytest.raises(ValueError, match="kept_rows"):
        evaluate(part, ["logistic"], 0.7, seed=3, progress=False)  # a model whose rows were not kept
