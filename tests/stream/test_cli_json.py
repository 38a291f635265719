"""Every offline command's --json output is written and is valid JSON (the servers' commands,
status and ab-report, are checked against a live worker in tests/integration/test_api.py)."""
import orjson

from stream.cli import main


def test_every_offline_command_writes_its_json(small_long_data, tmp_path):
    model = tmp_path / "m.joblib"
    assert main(["train", "--data", str(small_long_data), "--out", str(model), "--train-fraction", "0.5"]) == 0
    commands = {
        "inspect": ["inspect", "--data", str(small_long_data)],
        "evaluate": ["evaluate", "--data", str(small_long_data), "--models", "naive,linear_svc"],
        "simulate": ["simulate", "--data", str(small_long_data), "--model", str(model), "--partitions", "2"],
        "sweep": ["sweep", "--data", str(small_long_data), "--model", str(model), "--thresholds", "0.3,0.6"],
    }
    for name, argv in commands.items():
        out = tmp_path / f"{name}.json"
        assert main([*argv, "--json", str(out)]) == 0, name
        assert isinstance(orjson.loads(out.read_bytes()), dict), name
    simulated = orjson.loads((tmp_path / "simulate.json").read_bytes())
    assert simulated["tiers"]["partitions"] == 2 and simulated["policies"]["model"]["predictions"] > 0


def test_commands_that_need_redis_say_so_when_it_is_away(monkeypatch, capsys):
    from stream.cli.services import free_port

    monkeypatch.setenv("SKIPCACHE_REDIS", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    for command in (["status"], ["ab-report"], ["threshold", "show"]):
        assert main(command) == 3, command
        assert "Redis is unreachable" in capsys.readouterr().err


def test_simulate_shards_the_warm_stage_as_a_worker_with_fewer_warm_partitions_does(small_long_data, tmp_path):
    """``--warm-partitions``: 2 sessions partitions and 1 warm partition are one cache, not two
    halves; the figures are those the worker is checked against (``simulate_as_worker``)."""
    from models.artifacts import load
    from stream.cli.jobs import simulate_as_worker
    from stream.cli.jobs import load_replay
    from stream.settings import Settings

    model = tmp_path / "m.joblib"
    assert main(["train", "--data", str(small_long_data), "--out", str(model), "--train-fraction", "0.5"]) == 0
    figures = {}
    for warm in ("1", "2"):
        out = tmp_path / f"w{warm}.json"
        assert main(["simulate", "--data", str(small_long_data), "--model", str(model), "--partitions", "2",
                     "--warm-partitions", warm, "--count", "all", "--json", str(out)]) == 0
        result = orjson.loads(out.read_bytes())
        assert result["tiers"]["partitions"] == 2 and result["tiers"]["warm_partitions"] == int(warm)
        figures[warm] = result["policies"]["model"]
    ds, events = load_replay(small_long_data)
    settings = Settings(partitions=2, warm_partitions=1)
    as_worker = simulate_as_worker(events, ds.catalogue, load(model), settings)
    assert figures["1"]["predictions"] == figures["2"]["predictions"] == as_worker["predictions"]
    assert {k: figures["1"][k] for k in ("promotions", "evictions", "full_play_hits")} == {
        k: as_worker[k] for k in ("promotions", "evictions", "full_play_hits")}
    assert figures["1"] != figures["2"]  # one cache is not two halves
