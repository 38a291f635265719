"""The event contract (``models/session_event.schema.json``) and the parser accept the same
events: a JSON Schema validator and ``parse_event`` are run over the same values of every field,
and may differ only where the schema cannot look (a well-formed time that is not a real one)."""
import itertools
from pathlib import Path

import jsonschema
import pytest

from models.contract import KIND_ALIASES, SCHEMA, event_type_pattern, markdown_table
from models.parsing import parse_event
from models.rejections import Rejected

VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
TRACK = "m92ShLjHYUKj2mUeydGsdp"
BASE = {"session_id": 7, "timestamp": "2023-06-17T10:09:50.547000", "user_id": 3, "track_id": TRACK,
        "event_type": "play", "next_track_id": "Rh1XQPU9JNI5V4uzQTgAwZ"}
ABSENT = object()
IDS = [0, 1, 7.0, 7.5, -1, 2**63 - 1, 2**63, "7", True, None, [], {}, 1e300, ABSENT]
TIMESTAMPS = ["2023-06-17T10:09:50.547000", "2023-07-10T19:34:04", "2024-02-08 09:50:00.0 +02:00:00",
              "2023-06-17T10:09:50Z", "2023-06-17T10:09:50+02:00", "2023-06-17 10:09:50", "2023-06-17T10:09",
              "2023-06-17T10:09:5", "2023-06-17T10:09:50.", "2023-06-17T10:09:4_2", "2023-06-17T10:09:50.5470001234",
              "2023-02-30T10:00:00", "2023-06-17T24:00:00", "2023-06-17T10:60:00", "2023-06-17T10:09:60.5",
              "2023-06-17T10:09:61", "\u0662\u0660\u0662\u0663-06-17T10:09:50", "2023-W24-6T10:00:00",
              "2023-06-17T10:09:50\n", " 2023-06-17T10:09:50", "2023-06-17T10:09:50 -05", "2023-06-17T10:09:+5",
              1686996590547, 1686996590547.0, 1686996590547.5, -1, 10**14, True, None, "", "x" * 50, ABSENT]
TRACKS = [TRACK, "", None, "short", "\u00e9" * 22, TRACK[:-1] + "!", 5, ABSENT]
KINDS = ([s for spellings in KIND_ALIASES.values() for a in spellings for s in (a, a.upper(), a.title())]
         + [" play ", "PLAY\t", "buy premium", "Buy Premium", "pl ay", "playing", "", None, 5, "P" * 50,
            "\uff30\uff2c\uff21\uff39", "\x1cplay", "play\x1c", " " * 38 + "ad", ABSENT])


def _with(base: dict, **fields) -> dict:
    out = dict(base)
    for k, v in fields.items():
        if v is ABSENT:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _cases():
    for name, values in (("session_id", IDS), ("user_id", IDS), ("timestamp", TIMESTAMPS),
                         ("next_track_id", TRACKS)):
        for v in values:
            yield _with(BASE, **{name: v})
    for kind, track in itertools.product(KINDS, TRACKS):
        yield _with(BASE, event_type=kind, track_id=track)
    yield {**BASE, "extra": [1, {"x": None}]}
    for ts, kind, track in itertools.product(TIMESTAMPS[:4] + [1686996590547, "bad"], ["PLAY", "advertisment", 5],
                                             [TRACK, None, "bad"]):
        if ts is not ABSENT:
            yield [ts, 3, track, kind, 7]
    yield from (5, "play", None, [], [1, 2, 3, 4], [BASE["timestamp"], 3, TRACK, "play", 7, 8], True)


CASES = list(_cases())


def test_the_schema_is_valid_json_schema_and_its_spellings_are_the_parsers():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$defs"]["event_type"]["pattern"] == event_type_pattern(KIND_ALIASES)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_the_parser_and_the_schema_agree(i):
    obj = CASES[i]
    valid = VALIDATOR.is_valid(obj)
    try:
        parse_event(obj)
        accepted, reason = True, None
    except Rejected as r:
        accepted, reason = False, r.reason
    if accepted:
        assert valid, f"the parser takes what the schema refuses: {obj!r}"
    elif valid:
        # the one thing a pattern cannot check: a well-formed time that is no real time
        ts = obj["timestamp"] if isinstance(obj, dict) else obj[0]
        assert reason == "bad_timestamp" and isinstance(ts, str), f"{reason}: {obj!r}"


def test_the_corpus_exercises_both_answers():
    answers = {VALIDATOR.is_valid(obj) for obj in CASES}
    assert answers == {True, False} and len(CASES) > 300


def test_the_readme_table_is_the_schemas():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert markdown_table() in readme
