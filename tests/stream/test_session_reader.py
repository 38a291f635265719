"""The columnar session reader takes exactly the lines, values and rejections the per-line
parser gives, whatever the variant, the noise, or where the chunks break."""
import random
import time

import orjson
import pytest

from models.parsing import TimeWindow, parse_event
from models.rejections import Rejected, Rejections
from stream.session_reader import SessionReader
from stream.synthetic import generate


def reference(lines: list[bytes], now: float) -> tuple[list[tuple], Rejections]:
    """The per-line reader as it was before the columns: every line through parse_event."""
    rejections, out, seen, current = Rejections(), [], set(), None
    check = TimeWindow().check
    for raw in lines:
        if not raw or raw.isspace():
            continue
        try:
            e = check(parse_event(orjson.loads(raw)), now)
        except orjson.JSONDecodeError:
            rejections.add("sessions/bad_json", raw)
            continue
        except Rejected as r:
            rejections.add("sessions/" + r.reason, raw)
            continue
        if e.session_id != current:
            current = e.session_id
            seen.clear()
        elif raw in seen:
            rejections.add("sessions/duplicate_line", raw)
            continue
        seen.add(raw)
        out.append((e.ts, e.hour, e.user_id, e.session_id, e.kind, e.track_id, e.next_track_id))
    return out, rejections


def columnar(lines: list[bytes], now: float, cuts: list[int]) -> tuple[list[tuple], Rejections, SessionReader]:
    rejections = Rejections()
    reader = SessionReader(rejections, now)
    for a, b in zip([0, *cuts], [*cuts, len(lines)]):
        reader.add(lines[a:b])
    cols = reader.columns()
    return [(e.ts, e.hour, e.user_id, e.session_id, e.kind, e.track_id, e.next_track_id) for e in cols], rejections, reader


def _same(lines: list[bytes], seed: int = 0, chunks: int = 5) -> SessionReader:
    now = time.time()
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(lines)), min(chunks, len(lines) - 1))) if len(lines) > 1 else []
    expected, exp_rej = reference(lines, now)
    got, rej, reader = columnar(lines, now, cuts)
    assert got == expected
    assert rej.as_dict() == exp_rej.as_dict()
    return reader


T = "4uLU6hMCjMI75M1A2tKUQC"
U = "1AbcdefghijklmnopqrstU"


def line(**fields) -> bytes:
    base = {"session_id": 7, "timestamp": "2023-06-17T10:09:50.547000", "user_id": 3, "track_id": T,
            "event_type": "play"}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


@pytest.mark.parametrize("noise", [0.0, 0.08])
def test_generated_exports_read_the_same(tmp_path, noise):
    generate(tmp_path, users=40, seed=3, noise=noise, progress=False)
    lines = (tmp_path / "sessions.jsonl").read_bytes().split(b"\n")
    reader = _same(lines, chunks=7)
    assert reader.fast_lines > 0.8 * reader.lines  # the batch path did the work


def test_every_odd_line_reads_the_same():
    lines = [
        line(), line(), line(timestamp="2023-06-17T10:09:51"), line(timestamp="2023-06-17T10:09:51.5"),
        line(timestamp="2023-06-17T10:09:52."), line(timestamp="2023-06-17 10:09:52.0 +02:00:00"),
        line(timestamp="2023-06-17T10:09:52Z"), line(timestamp="2023-06-17T10:09:52.1234567"),
        line(timestamp="2023-06-17T25:09:52"), line(timestamp="2023-02-30T10:00:00"),
        line(timestamp="1999-12-31T23:59:59"), line(timestamp="2999-01-01T00:00:00"), line(timestamp=None),
        line(timestamp=...), line(user_id=None), line(user_id=-1), line(session_id=...),
        line(event_type="Play"), line(event_type="ADVERTISMENT", track_id=None), line(event_type="Buy Premium"),
        line(event_type="bogus"), line(event_type=None), line(event_type="skip", track_id=""),
        line(event_type="like", track_id="short"), line(event_type="advertisement", track_id=""),
        line(event_type="advertisement", track_id="not-a-track-id-at-all!"), line(next_track_id=U),
        line(next_track_id=""), line(next_track_id="bad"), line(session_id=8), line(session_id=8),
        line(extra={"nested": [1, 2]}), b"   ", b"", line(session_id=7), line(session_id=7),
    ]
    _same(lines, chunks=6)


def test_chunks_arrow_cannot_read_fall_back_line_by_line():
    lines = [line(), b"{not json", line(user_id="3"), line(user_id=1.0), line(user_id=True),
             line(user_id=2**62).replace(b'4611686018427387904', b'18446744073709551616'), line(user_id=2**63 - 1), b"[1, 2]", b"42", line(track_id=12), line(), line(session_id=9)]
    for seed in range(5):
        _same(lines, seed=seed, chunks=3)


def test_epoch_milliseconds_and_positional_arrays():
    ms = [line(timestamp=1686996590547 + i * 1000, session_id=i // 4) for i in range(40)]
    ms += [line(timestamp=-5), line(timestamp=10**15), line(timestamp="2023-06-17T10:09:50")]
    _same(ms, chunks=4)
    positional = [orjson.dumps(["2023-06-17T10:09:50.547000", 3, T, "play", i // 3]) for i in range(30)]
    positional.insert(5, orjson.dumps(["2023-06-17T10:09:50.547000", 3, None, "play", 1]))
    reader = _same(positional, chunks=4)
    assert reader.fast_lines == 0


def test_duplicates_are_found_across_chunk_breaks():
    session = [line(timestamp=f"2023-06-17T10:{m:02d}:00") for m in range(6)]
    lines = session + session[2:4] + [line(session_id=8)] + session[:1]
    for seed in range(10):
        _same(lines, seed=seed, chunks=4)
