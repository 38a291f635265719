"""The storage audit applies every shard's commands in time order to one placement. With one
shard the shard's beliefs and the storage agree at every play; with several shards (one per
user-keyed partition, today's worker) they drift apart: the measurement issue 11 starts from."""
import pytest

from cache_warmer.policies import ThresholdPolicy
from cache_warmer.simulation import simulate
from cache_warmer.tiers import TierConfig
from models.artifacts import load
from stream.jobs import load_replay, train_model
from stream.kafka_io import partition_of


@pytest.fixture(scope="module")
def run(long_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("audit") / "m.joblib"
    train_model(long_data, path, train_fraction=0.5)
    ds, events = load_replay(long_data, progress=False)
    art = load(path)
    tiers = TierConfig.for_catalogue(ds.catalogue)

    def audit(shards):
        return simulate(events, ds.catalogue, [art], tiers, [ThresholdPolicy("model", "model")], shards=shards,
                        shard_of=lambda u: partition_of(u, shards), progress=False,
                        audit_storage=True)["policies"]["model"]

    return audit


def test_one_shard_agrees_with_the_storage_at_every_play(run):
    fig = run(1)
    audit = fig["storage_audit"]
    assert audit["plays"] == fig["plays"] > 1000
    assert audit["wrong_belief_share"] == 0 and audit["contradicting_commands"] == 0
    assert audit["reported_hit_ratio"] == audit["storage_hit_ratio"] == pytest.approx(fig["hit_ratio"])
    assert audit["commands"] >= fig["promotions"] > 0


def test_several_user_keyed_shards_disagree_with_the_one_storage(run):
    audit = run(8)["storage_audit"]
    assert audit["wrong_belief_share"] > 0.005
    assert audit["contradicting_commands"] > 0
    assert audit["tracks_commanded_by_several_shards"] > 0.05
    assert audit["reported_hit_ratio"] != audit["storage_hit_ratio"]
