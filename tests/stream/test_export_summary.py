import json

from stream.cli import main


def test_inspect_real_export(real_data, tmp_path):
    out = tmp_path / "i.json"
    assert main(["inspect", "--data", str(real_data), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["lines"]["sessions"] == 26347
    assert s["rejected_by_reason"] == {"sessions/duplicate_line": s["rejected_by_reason"]["sessions/duplicate_line"]}
    assert s["rejected"] == 1
    assert abs(s["plays"] - 14456) <= 10
    assert abs(s["skip_rate"] - 0.316) < 0.002


def test_inspect_reports_noise_by_reason(noisy_data, tmp_path, capsys):
    out = tmp_path / "i.json"
    assert main(["inspect", "--data", str(noisy_data), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    reasons = s["rejected_by_reason"]
    for reason in ("sessions/missing_user_id", "sessions/missing_event_type", "sessions/missing_track_id",
                   "sessions/duplicate_line", "sessions/orphan_skip"):
        assert reasons[reason]["count"] > 0 and reasons[reason]["example"], reason
    assert s["rejected"] == sum(r["count"] for r in reasons.values())
    assert "sessions/missing_user_id" in capsys.readouterr().out


def test_missing_optional_files_still_run(small_long_data, tmp_path, capsys):
    for name in ("sessions", "users"):
        (tmp_path / f"{name}.jsonl").write_bytes((small_long_data / f"{name}.jsonl").read_bytes())
    assert main(["inspect", "--data", str(tmp_path)]) == 0
    assert "missing files   artists, tracks, track_storage" in capsys.readouterr().out
    assert main(["evaluate", "--data", str(tmp_path), "--models", "naive,linear_svc"]) == 0


def test_missing_sessions_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", "--data", str(tmp_path)]) == 2
    assert "no sessions.jsonl" in capsys.readouterr().err
