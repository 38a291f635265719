"""Adding a cache policy is one class and one registry line: here a tiny one, defined and
registered in the test, runs through ``simulate`` beside the standard ones."""
from dataclasses import dataclass

import pytest

from cache_warmer.policies import POLICIES, CachePolicy, Want, make_policy, register_policy, standard_policies
from cache_warmer.simulation import simulate
from cache_warmer.tiers import FAST, TierConfig
from models.artifacts import load
from stream.jobs import load_replay, train_model


@dataclass(frozen=True)
class FastOnSecondPlay(CachePolicy):
    """Whatever is played while already warm goes to fast (a made-up rule, for the test)."""

    kind = "fast_on_second_play"

    def want(self, track, next_track, tier, next_score):
        return Want(track, FAST, "replayed") if tier != 0 else None


@pytest.fixture
def registered():
    register_policy(FastOnSecondPlay)
    yield
    del POLICIES[FastOnSecondPlay.kind]


def test_a_policy_registered_in_the_test_runs_through_simulate(registered, small_long_data, tmp_path):
    train_model(small_long_data, tmp_path / "m.joblib", train_fraction=0.5)
    ds, events = load_replay(small_long_data, progress=False)
    policies = standard_policies(["model"]) + [make_policy("fast_on_second_play", "tiny")]
    tiers = TierConfig.for_catalogue(ds.catalogue)
    result = simulate(events, ds.catalogue, [load(tmp_path / "m.joblib")], tiers, policies,
                      count_from=float("-inf"), progress=False)["policies"]
    tiny, lru = result["tiny"], result["lru"]
    # it promotes only tracks already warm (the export's starting placement or its own earlier moves)
    assert tiny["promotions"] == tiny["promotions_to_fast"] > 0
    assert tiny["plays"] == lru["plays"] and "accuracy" not in tiny  # not a scored policy
    assert tiny["hits_by_tier"] != result["static"]["hits_by_tier"]


def test_the_registry_refuses_a_taken_kind_and_names_the_known_ones():
    @dataclass(frozen=True)
    class Impostor(CachePolicy):
        kind = "lru"

    with pytest.raises(ValueError, match="taken"):
        register_policy(Impostor)
    with pytest.raises(ValueError, match="known: .*lru"):
        make_policy("nonesuch")
