"""The offline figures do not move unless a change means them to: evaluate and simulate give
the figures recorded in tests/data/recorded_figures.json on a generated 1,000-user set and on the
shared 23Z export. Recorded first at d40540a (the per-event code, which the columnar reader,
replay and play table had to equal), again with issue 22's features (``recorded_at`` says which).
Counts compare exactly; a float to 12 significant digits: the same code gave a brier score
1.7e-16 apart on two machines of this kind (floating-point sums in another order), and every real
change moves a figure by far more."""
import json
import math
from pathlib import Path

from cache_warmer.simulation import simulate
from models.evaluation import build_table, evaluate, train_artifact
from models.features import EngineConfig
from stream.cli.jobs import CacheOptions, load_replay
from stream.kafka_io import partition_of, track_partition_of
from stream.synthetic import generate

RECORDED = json.loads((Path(__file__).parents[1] / "data" / "recorded_figures.json").read_text())


def _close(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) if a != a or b != b else math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return a == b


def _evaluate_fields(r):
    return {"split": r["split"], "majority_accuracy": r["majority_accuracy"],
            "models": {m: {k: v[k] for k in ("accuracy", "roc_auc", "precision", "recall", "f1", "brier", "train_rows")}
                       for m, v in r["models"].items()}}


def _simulate_fields(r, like):
    return {"events": r["events"], "plays": r["plays"], "counted_window": r["counted_window"],
            "policies": {p: {k: v[k] for k in like["policies"][p]} for p, v in r["policies"].items()},
            "daily_days": len(r["daily"]["model"])}


def _check(data: Path, recorded: dict, partitions: tuple[int, ...]):
    ds, events = load_replay(data, progress=False)
    table = build_table(events, ds.catalogue, EngineConfig(), progress=False)
    got = json.loads(json.dumps(_evaluate_fields(evaluate(table, ["linear_svc", "hist_gb"], 0.7, progress=False))))
    assert _close(got, recorded["evaluate"]), (got, recorded["evaluate"])
    artifact = train_artifact(table, "linear_svc", 0.7, ds.fingerprint, EngineConfig())
    del table
    cache = CacheOptions()
    for n in partitions:
        r = simulate(events, ds.catalogue, [artifact], cache.tiers(ds.catalogue, events), partitions=n,
                     user_partition=lambda u, n=n: partition_of(u, n), track_partition=lambda t, n=n: track_partition_of(t, n),
                     progress=False)
        want = recorded["simulate" if n == 1 else f"simulate_{n}_partitions"]
        got = json.loads(json.dumps(_simulate_fields(r, want)))
        assert _close(got, want), (n, got, want)


def test_generated_1000_users_give_the_recorded_figures(tmp_path_factory):
    data = tmp_path_factory.mktemp("g1k")
    generate(data, users=1000, seed=0, profile="long", progress=False)
    _check(data, RECORDED["generated_long_1000_seed0"], (1, 3))


def test_real_23Z_gives_the_recorded_figures(real_data):
    _check(real_data, RECORDED["real_23Z"], (1,))
