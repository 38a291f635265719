import gzip
import lzma

import orjson
import pytest

from models.events import AD, BUY_PREMIUM, LIKE, PLAY, SKIP
from models.parsing import decode_event, event_kind, parse_event, parse_storage, parse_timestamp, parse_track, parse_user
from models.rejections import Rejected
from stream.files import read_dataset

TRACK = "4YPgTCGJWAlHQ5g6eWoM8r"


@pytest.mark.parametrize("spelling,kind", [
    ("play", PLAY), ("PLAY", PLAY), ("Play", PLAY), ("skip", SKIP), ("SKIP", SKIP), ("Skip", SKIP),
    ("like", LIKE), ("LIKE", LIKE), ("advertisment", AD), ("ADVERTISEMENT", AD), ("Advertisement", AD),
    ("advertisement", AD), ("BUY_PREMIUM", BUY_PREMIUM), ("buy_premium", BUY_PREMIUM), ("BuyPremium", BUY_PREMIUM),
])
def test_every_event_type_spelling(spelling, kind):
    assert event_kind(spelling) == kind


def test_three_timestamp_formats_agree():
    naive = parse_timestamp("2024-02-08T07:50:00")
    offset = parse_timestamp("2024-02-08 09:50:00.0 +02:00:00")
    millis = parse_timestamp(1707378600000)
    assert naive[0] == offset[0] == millis[0] == 1707378600.0
    assert offset[1] == 9 and naive[1] == 7  # the local hour as written
    assert parse_timestamp("2023-06-17T10:09:50.547000")[0] == pytest.approx(1686996590.547)


@pytest.mark.parametrize("raw", ["2023-13-01T00:00:00", "yesterday", "2023-06-17T25:00:00", "", 1.5, True, -5, [1]])
def test_bad_timestamps_are_rejected(raw):
    with pytest.raises(Rejected) as exc:
        parse_timestamp(raw)
    assert "timestamp" in exc.value.reason


def test_key_order_and_positional_arrays_give_the_same_event():
    a = parse_event({"session_id": 3, "timestamp": "2023-01-01T00:00:01", "user_id": 5, "track_id": TRACK, "event_type": "play"})
    b = parse_event({"event_type": "PLAY", "track_id": TRACK, "user_id": 5, "timestamp": "2023-01-01T00:00:01", "session_id": 3})
    c = parse_event(["2023-01-01T00:00:01", 5, TRACK, "Play", 3])
    assert a == b == c


@pytest.mark.parametrize("obj,reason", [
    ({"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": None, "track_id": TRACK, "event_type": "play"}, "missing_user_id"),
    ({"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": 1, "track_id": TRACK, "event_type": None}, "missing_event_type"),
    ({"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": 1, "track_id": "", "event_type": "play"}, "missing_track_id"),
    ({"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": 1, "track_id": None, "event_type": "skip"}, "missing_track_id"),
    ({"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": 1, "track_id": TRACK, "event_type": "dance"}, "unknown_event_type"),
    ({"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": "x" * 10**6, "track_id": TRACK, "event_type": "play"}, "bad_user_id"),
    ({"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": 1, "track_id": "y" * 10**6, "event_type": "play"}, "bad_track_id"),
    ({"session_id": [], "timestamp": "2023-01-01T00:00:00", "user_id": 1, "track_id": TRACK, "event_type": "play"}, "bad_session_id"),
    ({"session_id": 1, "user_id": 1, "track_id": TRACK, "event_type": "play"}, "missing_timestamp"),
    ([1, 2, 3], "not_an_event"),
    ("play", "not_an_event"),
])
def test_bad_events_are_rejected_with_a_reason(obj, reason):
    with pytest.raises(Rejected) as exc:
        parse_event(obj)
    assert exc.value.reason == reason


def test_ads_may_have_no_track():
    e = parse_event({"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": 1, "track_id": None, "event_type": "advertisment"})
    assert e.kind == AD and e.track_id is None


def test_catalogue_variants():
    u = parse_user([7, "A", "B", "C", ["rock", "pop", "jazz"], True])
    assert u.user_id == 7 and u.premium is True and u.favourite_genres == {"rock", "pop", "jazz"}
    noisy = parse_user({"user_id": 8, "favourite_genres": None, "premium_user": None, "id": -1})
    assert noisy.favourite_genres is None and noisy.premium is None
    assert parse_storage({"track_id": TRACK, "storage_class": "MEDIUM", "daily_cost": 0.02})[1].storage_class == "medium"
    t = parse_track({"id": TRACK, "popularity": 55, "duration_ms": 201467, "release_date": "1929-05"})
    assert t.release_year == 1929.0 and t.popularity == 55.0


def _write(path, lines, opener=open):
    with opener(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else orjson.dumps(line))
            fh.write(b"\n")


@pytest.mark.parametrize("suffix,opener", [(".jsonl", open), (".jsonl.xz", lzma.open), (".jsonl.gz", gzip.open)])
def test_reader_handles_compression_and_counts_every_bad_line(tmp_path, suffix, opener):
    good = {"session_id": 1, "timestamp": "2023-01-01T00:00:00", "user_id": 1, "track_id": TRACK, "event_type": "play"}
    lines = [good, good, b"{not json", b"[]", {**good, "event_type": None},
             ["2023-01-01T00:00:05", 1, TRACK, "SKIP", 1], b"", {**good, "timestamp": 1672531210000, "event_type": "like"}]
    _write(tmp_path / f"sessions{suffix}", lines, opener)
    ds = read_dataset(tmp_path, progress=False)
    assert [e.kind for e in ds.events] == [PLAY, SKIP, LIKE]
    assert ds.rejections.counts == {"sessions/duplicate_line": 1, "sessions/bad_json": 1,
                                    "sessions/not_an_event": 1, "sessions/missing_event_type": 1}
    assert ds.rejections.examples["sessions/bad_json"] == "{not json"
    assert ds.missing == ["users", "artists", "tracks", "track_storage"]


@pytest.mark.parametrize("raw", ["2023-06-17T10:09:50.547000", "2023-06-17T00:00:00", "2023-06-17T23:59:59.999999",
                                 "2024-02-29T12:30:05", "2023-12-31T23:59:59", "2016-12-31T23:59:60.5"])
def test_an_events_stamp_reads_as_the_general_parser_reads_it(raw):
    """``parse_event``'s fast path (an hour's start, cached, and the minute by lookup) gives what
    ``parse_timestamp`` gives, twice over (the second time from the cache); a leap second, which
    both take, as the next minute's first second, in the hour it is stamped with."""
    for _ in range(2):
        e = parse_event({"timestamp": raw, "user_id": 5, "session_id": 3, "track_id": TRACK, "event_type": "play"})
        assert (e.ts, e.hour) == pytest.approx(parse_timestamp(raw))


@pytest.mark.parametrize("raw", ["2023-06-17T10:60:00", "2023-06-17T24:00:00", "2023-02-30T10:00:00",
                                 "2023-06-17T1a:00:00", "2023-06-17T10:0\u0663:00", "2023-06-17T10-09:00",
                                 "2023-06-17T10:09:61", "2023-06-17T10:9:00.5"])
def test_an_events_bad_stamp_is_rejected_by_the_fast_path_too(raw):
    with pytest.raises(Rejected) as exc:
        parse_event({"timestamp": raw, "user_id": 5, "session_id": 3, "track_id": TRACK, "event_type": "play"})
    assert exc.value.reason == "bad_timestamp"


def _outcome(read, raw: bytes):
    try:
        return read(raw)
    except Rejected as r:
        return ("rejected", r.reason, r.detail)


def _by_orjson(raw: bytes):
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Rejected("bad_json") from None
    return parse_event(obj)


_VALID = [
    {"session_id": 3, "timestamp": "2023-06-17T10:09:50.547000", "user_id": 5, "track_id": TRACK, "event_type": "play",
     "next_track_id": TRACK[::-1]},
    {"event_type": "Skip", "track_id": TRACK, "user_id": 0, "timestamp": 1707378600000, "session_id": 2**40},
    {"session_id": 1, "timestamp": "2024-02-08 09:50:00.0 +02:00:00", "user_id": 7, "track_id": None,
     "event_type": "ADVERTISEMENT", "extra": {"nested": [1, 2]}},
    ["2023-01-01T00:00:01", 5, TRACK, "Play", 3],
    ["2023-01-01T00:00:01", 5, None, "buy_premium", 3],
]
_ODD = [b"", b" ", b"null", b"[]", b"{}", b"\xff\xfe", b'{"a":1} x', b' ["2023-01-01T00:00:01", 5, "%s", "play", 3]' % TRACK.encode(),
        b'["2023-01-01T00:00:01", 5, "%s", "play"]' % TRACK.encode(),
        b'["2023-01-01T00:00:01", 5, "%s", "play", 3, 4]' % TRACK.encode(),
        b'{"session_id":1,"session_id":true,"timestamp":"2023-01-01T00:00:00","user_id":1,"event_type":"like"}',
        b'{"session_id":1.0,"timestamp":1.7e12,"user_id":1e2,"event_type":"like","track_id":"%s"}' % TRACK.encode(),
        b'{"session_id":1,"timestamp":"2023-01-01T00:00:00","user_id":123456789012345678901234567890,"event_type":"ad"}',
        b'{"session_id":-1,"timestamp":"2023-01-01T00:00:00","user_id":1,"event_type":"ad"}',
        b'{"session_id":1,"timestamp":"2023-01-01T00:00:00","user_id":1,"event_type":"play","track_id":"\\ud800"}',
        b'{"session_id":1,"timestamp":"2023-01-01T00:00:00","user_id":1,"event_type":"  Play ","track_id":"%s"}' % TRACK.encode()]


def test_an_events_bytes_read_as_parse_event_reads_their_json():
    """``decode_event`` (typed fields decoded in C, else orjson) gives exactly what
    ``parse_event(orjson.loads(...))`` gives: the same event, or the same reason and detail,
    for the forms of every release, odd documents, and thousands of random damages to them."""
    import random

    rnd = random.Random(7)
    raws = [orjson.dumps(v) for v in _VALID] + _ODD
    for obj in [o for o, _ in test_bad_events_are_rejected_with_a_reason.pytestmark[0].args[1]]:
        raws.append(orjson.dumps(obj))
    alphabet = b'0123456789-:.T "[]{},etrunlf\\x\xff'
    for raw in list(raws[:len(_VALID)]):
        for _ in range(1500):
            b = bytearray(raw)
            for _ in range(rnd.randint(1, 3)):
                at = rnd.randrange(len(b))
                how = rnd.random()
                if how < 0.4:
                    b[at] = rnd.choice(alphabet)
                elif how < 0.7:
                    del b[at]
                else:
                    b.insert(at, rnd.choice(alphabet))
            raws.append(bytes(b))
    decoded = rejected = 0
    for raw in raws:
        got, want = _outcome(decode_event, raw), _outcome(_by_orjson, raw)
        assert got == want, raw
        decoded += not isinstance(got, tuple)
        rejected += isinstance(got, tuple)
    assert decoded > 100 and rejected > 1000  # both sides of the parser were exercised
