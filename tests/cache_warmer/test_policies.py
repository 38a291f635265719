"""Adding a cache policy is one class and one registry line: here a tiny one, defined and
registered in the test, runs through ``simulate`` beside the standard ones."""
from dataclasses import dataclass

import pytest

from cache_warmer.policies import POLICIES, CachePolicy, Want, make_policy, register_policy, standard_policies
from cache_warmer.simulation import simulate
from cache_warmer.tiers import FAST, TierConfig
from models.artifacts import load
from stream.cli.jobs import load_replay, train_model


@dataclass(frozen=True)
class FastLaneLru(CachePolicy):
    """LRU with a fast lane (a made-up rule, for the test): a played track goes up one tier."""

    kind = "fast_lane_lru"

    def played(self, track, tier):
        return Want(track, tier + 1, "played") if tier != FAST else None


@pytest.fixture
def registered():
    register_policy(FastLaneLru)
    yield
    del POLICIES[FastLaneLru.kind]


def test_a_policy_registered_in_the_test_runs_through_simulate(registered, small_long_data, tmp_path):
    train_model(small_long_data, tmp_path / "m.joblib", train_fraction=0.5)
    ds, events = load_replay(small_long_data, progress=False)
    policies = standard_policies(["model"]) + [make_policy("fast_lane_lru", "tiny")]
    tiers = TierConfig.for_catalogue(ds.catalogue)
    result = simulate(events, ds.catalogue, [load(tmp_path / "m.joblib")], tiers, policies,
                      count_from=float("-inf"), progress=False)["policies"]
    tiny, lru = result["tiny"], result["lru"]
    assert tiny["plays"] == lru["plays"] and "accuracy" not in tiny  # not a scored policy
    # like lru it promotes what is played from slow storage, and besides what is played from medium
    assert tiny["promotions"] > tiny["promotions_to_fast"] > 0 == lru["promotions_to_fast"]
    assert tiny["hits_by_tier"]["fast"] > lru["hits_by_tier"]["fast"]


def test_the_registry_refuses_a_taken_kind_and_names_the_known_ones():
    @dataclass(frozen=True)
    class Impostor(CachePolicy):
        kind = "lru"

    with pytest.raises(ValueError, match="taken"):
        register_policy(Impostor)
    with pytest.raises(ValueError, match="known: .*lru"):
        make_policy("nonesuch")
