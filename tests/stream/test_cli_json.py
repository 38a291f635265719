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
