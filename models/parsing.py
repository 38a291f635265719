"""Turn one JSON line of any Pozytywka release into a domain record, or raise Rejected.

Pure functions over decoded JSON (and ``decode_event`` over an event's bytes), shared by the file
reader and the live worker so a line means the same thing everywhere."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date
from typing import Annotated

import msgspec
import orjson

from .events import (AD, AUDIO_FIELDS, BUY_PREMIUM, EVENT_TYPES, LIKE, PLAY, SKIP, TRACK_EVENTS, Event, Storage,
                     Track, User, iso_utc)
from .contract import (EVENT_TYPE_WHITESPACE, ISO_TIMESTAMP_RE, KIND_ALIASES, MAX_EPOCH_MS, MAX_EVENT_TYPE_LEN,
                       MAX_ID, MAX_TIMESTAMP_LEN, is_track_id)
from .rejections import Rejected

EVENT_ALIASES = {alias: kind for kind, spellings in KIND_ALIASES.items() for alias in spellings}
"""Every spelling of every event type (``session_event.schema.json``), lower case."""
_EXACT = {k: v for k, v in EVENT_ALIASES.items()}
_EXACT.update({k.upper(): v for k, v in EVENT_ALIASES.items()})
_EXACT.update({"Play": PLAY, "Skip": SKIP, "Like": LIKE, "Advertisement": AD, "Advertisment": AD,
               "BuyPremium": BUY_PREMIUM, "Buy_Premium": BUY_PREMIUM})
assert set(EVENT_ALIASES.values()) == set(EVENT_TYPES), "the contract's event types are the domain's"

_midnights: dict[str, float] = {}


def event_kind(raw: object) -> str:
    """Map any spelling of an event type to its canonical name."""
    if raw is None:
        raise Rejected("missing_event_type")
    if not isinstance(raw, str):
        raise Rejected("bad_event_type", repr(raw)[:40])
    kind = _EXACT.get(raw)
    if kind is None:
        kind = (EVENT_ALIASES.get(raw.strip(EVENT_TYPE_WHITESPACE).lower().replace(" ", "_"))
                if len(raw) <= MAX_EVENT_TYPE_LEN and raw.isascii() else None)
        if kind is None:
            raise Rejected("unknown_event_type", raw[:40])
    return kind


def _midnight(day: str) -> float:
    value = _midnights.get(day)
    if value is None:
        d = date.fromisoformat(day)
        value = float((d.toordinal() - 719163) * 86400)  # 719163 = date(1970, 1, 1).toordinal()
        if len(_midnights) < 100_000:
            _midnights[day] = value
    return value


def parse_timestamp(raw: object) -> tuple[float, int]:
    """Return (epoch seconds, local hour) for the three timestamp formats of the releases:
    naive ISO (``2023-06-17T10:09:50.547000``), ISO with a spaced offset
    (``2024-02-08 09:50:00.0 +02:00:00``) and integer epoch milliseconds."""
    if isinstance(raw, str):
        try:
            if len(raw) > MAX_TIMESTAMP_LEN or not ISO_TIMESTAMP_RE.fullmatch(raw):
                raise ValueError
            offset = 0.0
            rest = raw[17:]
            for sign_pos in (rest.find(" +"), rest.find(" -"), rest.find("+"), rest.find("Z")):
                if sign_pos >= 0:
                    tz = rest[sign_pos:].strip()
                    rest = rest[:sign_pos]
                    if tz != "Z":
                        parts = tz[1:].split(":")
                        offset = (int(parts[0]) * 3600 + (int(parts[1]) * 60 if len(parts) > 1 else 0)
                                  + (int(parts[2]) if len(parts) > 2 else 0))
                        offset = -offset if tz[0] == "-" else offset
                    break
            hour = int(raw[11:13])
            minute = int(raw[14:16])
            sec = float(rest)
            if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= sec < 61):
                raise ValueError
            return _midnight(raw[:10]) + hour * 3600 + minute * 60 + sec - offset, hour
        except (ValueError, IndexError):
            raise Rejected("bad_timestamp", raw[:40]) from None
    if type(raw) is float and raw.is_integer():
        raw = int(raw)  # a JSON number with no fraction is an integer (JSON Schema agrees)
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 <= raw <= MAX_EPOCH_MS:
            raise Rejected("bad_timestamp", str(raw))
        ts = raw / 1000.0
        return ts, int(ts // 3600) % 24
    if raw is None:
        raise Rejected("missing_timestamp")
    raise Rejected("bad_timestamp", repr(raw)[:40])


def _int_id(raw: object, name: str) -> int:
    """Ids are JSON integers in every release; a numeric string is another producer's bug."""
    if raw is None:
        raise Rejected(f"missing_{name}")
    if type(raw) is float and raw.is_integer():
        raw = int(raw)  # a JSON number with no fraction is an integer (JSON Schema agrees)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise Rejected(f"bad_{name}", repr(raw)[:40])
    if not 0 <= raw <= MAX_ID:
        raise Rejected(f"bad_{name}", str(raw)[:40])
    return raw


def _track_id(raw: object, required: bool, name: str = "track_id") -> str | None:
    if raw is None or raw == "":
        if required:
            raise Rejected(f"missing_{name}")
        return None
    if not is_track_id(raw):
        raise Rejected(f"bad_{name}", repr(raw)[:40])
    return raw


ERA_START = "2000-01-01"


@dataclass(frozen=True)
class TimeWindow:
    """The event times a reader believes: none before the export family's era, none more than
    ``max_ahead`` seconds past a reference clock (the broker's timestamp of the record, else the
    wall clock). A parseable but impossible time (year 9999, epoch 0) would otherwise move the
    engine's and the warmer's clocks, which only go forward, for good."""

    earliest: float = 946_684_800.0  # ERA_START, 2000-01-01T00:00:00 UTC
    max_ahead: float = 300.0

    @classmethod
    def from_date(cls, earliest: str = ERA_START, max_ahead: float = 300.0) -> "TimeWindow":
        try:
            return cls(_midnight(earliest), max_ahead)
        except ValueError:
            raise ValueError(f"{earliest!r} is not a date like {ERA_START}") from None

    def check(self, e: Event, reference: float) -> Event:
        if e.ts < self.earliest:
            raise Rejected("timestamp_before_era", f"{iso_utc(e.ts)} is before {iso_utc(self.earliest)}")
        if e.ts > reference + self.max_ahead:
            raise Rejected("timestamp_in_future", f"{iso_utc(e.ts)} is {e.ts - reference:,.0f} s ahead of "
                           f"{iso_utc(reference)}")
        return e


def parse_event(obj: object) -> Event:
    """An event from a JSON object (any key order) or a positional array
    ``[timestamp, user_id, track_id, event_type, session_id]``.

    The common, valid case takes inlined fast paths (this runs for every line of 370 MB files);
    anything unusual falls through to the checking helpers, which name the reason."""
    if type(obj) is dict:
        kind = _EXACT.get(obj.get("event_type"))  # type: ignore[arg-type]
        if kind is None:
            kind = event_kind(obj.get("event_type"))
        return _event(kind, obj.get("timestamp"), obj.get("user_id"), obj.get("session_id"), obj.get("track_id"),
                      obj.get("next_track_id"))
    if type(obj) is list and len(obj) == 5:
        ts_raw, user_id, track, kind_raw, session_id = obj
        return _event(event_kind(kind_raw), ts_raw, user_id, session_id, track, None)
    raise Rejected("not_an_event", type(obj).__name__)


_Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
"""An id in range, checked by the decoder: one out of it goes to orjson, which reads one past 64
bits as a float, as the rejection's detail then shows."""


class _EventObject(msgspec.Struct, forbid_unknown_fields=True):
    """An event object whose fields have the contract's types (the common case), decoded in C;
    one with other keys goes to orjson (msgspec would skip their values unchecked: bad UTF-8)."""

    timestamp: str | int | float
    user_id: _Id
    session_id: _Id
    event_type: str
    track_id: str | None = None
    next_track_id: str | None = None


class _EventArray(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """The positional form, likewise (exactly five values, as ``parse_event`` takes)."""

    timestamp: str | int | float
    user_id: _Id
    track_id: str | None
    event_type: str
    session_id: _Id


_decode_object = msgspec.json.Decoder(_EventObject).decode
_decode_array = msgspec.json.Decoder(_EventArray).decode


def decode_event(raw: bytes) -> Event:
    """``parse_event(orjson.loads(raw))``, the same event or the same rejection (``bad_json`` for
    what is not JSON), faster: a document of the common form is decoded straight into its fields
    (no dict; the ids' and names' types checked in C); any other goes through orjson and
    ``parse_event``, which name the reason."""
    try:
        d = _decode_array(raw) if raw[:1] == b"[" else _decode_object(raw)
    except msgspec.DecodeError:
        d = None
    if d is None:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Rejected("bad_json") from None
        return parse_event(obj)
    return _event(_EXACT.get(d.event_type) or event_kind(d.event_type), d.timestamp, d.user_id, d.session_id,
                  d.track_id, None if type(d) is _EventArray else d.next_track_id)


def _event(kind: str, ts_raw: object, user_id: object, session_id: object, track: object, nxt: object) -> Event:
    """An event from its fields as JSON gave them, checked."""
    if type(user_id) is not int or not 0 <= user_id <= MAX_ID:
        user_id = _int_id(user_id, "user_id")
    if type(session_id) is not int or not 0 <= session_id <= MAX_ID:
        session_id = _int_id(session_id, "session_id")
    # fast path for the naive ISO stamps of most releases: one cache hit per hour of data, the minute by lookup
    if (type(ts_raw) is str and 19 <= len(ts_raw) <= 26 and ts_raw[10] == "T" and ts_raw[16] == ":"
            and (s := ts_raw[17:]).isascii() and s[:2].isdigit()
            and (len(s) == 2 or (s[2] == "." and len(s) > 3 and s[3:].isdigit()))):  # ":SS" or ":SS.f..."
        start = _hours.get(ts_raw[:13])
        if start is None:
            start = _hour_start(ts_raw)
        minute = _MINUTE_SECONDS.get(ts_raw[13:16])
        if minute is None:
            raise Rejected("bad_timestamp", ts_raw[:40])
        sec = float(s)
        if not sec < 61.0:
            raise Rejected("bad_timestamp", ts_raw)
        ts, hour = start[0] + minute + sec, start[1]
    else:
        ts, hour = parse_timestamp(ts_raw)
    if kind in TRACK_EVENTS:
        if not is_track_id(track):
            track = _track_id(track, True)
    elif track is not None:
        track = _track_id(track, False)
    if nxt is not None and not is_track_id(nxt):
        nxt = _track_id(nxt, False, "next_track_id")
    return Event(ts, hour, user_id, session_id, kind, track, nxt)


_hours: dict[str, tuple[float, int]] = {}
_MINUTE_SECONDS = {f":{m:02d}": 60.0 * m for m in range(60)}
"""``:MM`` -> its seconds: checks and converts a stamp's minute in one lookup."""


_HOUR_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}")


def _hour_start(raw: str) -> tuple[float, int]:
    """Epoch seconds and hour of ``YYYY-MM-DDTHH``, validated once per hour of data and cached
    (a sparse export has few events per minute, but many per hour)."""
    try:
        if not _HOUR_RE.fullmatch(raw, 0, 13):
            raise ValueError
        hour = int(raw[11:13])
        if not 0 <= hour < 24:
            raise ValueError
        value = (_midnight(raw[:10]) + hour * 3600, hour)
    except ValueError:
        raise Rejected("bad_timestamp", raw[:40]) from None
    if len(_hours) > 1_000_000:
        _hours.clear()
    _hours[raw[:13]] = value
    return value


def _opt_float(obj: dict, key: str, default: float = math.nan) -> float:
    value = obj.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


USER_FIELDS = ("user_id", "name", "city", "street", "favourite_genres", "premium_user")


def parse_user(obj: object) -> User:
    if type(obj) is list and len(obj) == len(USER_FIELDS):
        obj = dict(zip(USER_FIELDS, obj))
    if type(obj) is not dict:
        raise Rejected("not_a_user", type(obj).__name__)
    user_id = _int_id(obj.get("user_id"), "user_id")
    genres = obj.get("favourite_genres")
    favs = frozenset(g for g in genres if isinstance(g, str)) if isinstance(genres, list) else None
    premium = obj.get("premium_user")
    return User(user_id, favs or None, premium if isinstance(premium, bool) else None)


def parse_artist(obj: object) -> tuple[str, frozenset[str]]:
    if type(obj) is list and len(obj) == 3:
        obj = dict(zip(("id", "name", "genres"), obj))
    if type(obj) is not dict:
        raise Rejected("not_an_artist", type(obj).__name__)
    artist_id = obj.get("id")
    if not isinstance(artist_id, str) or not artist_id:
        raise Rejected("bad_artist_id", repr(artist_id)[:40])
    genres = obj.get("genres")
    return artist_id, frozenset(g for g in genres if isinstance(g, str)) if isinstance(genres, list) else frozenset()


TRACK_FIELDS = ("id", "name", "popularity", "duration_ms", "explicit", "id_artist", "release_date") + AUDIO_FIELDS


def parse_track(obj: object) -> Track:
    if type(obj) is list and len(obj) == len(TRACK_FIELDS):
        obj = dict(zip(TRACK_FIELDS, obj))
    if type(obj) is not dict:
        raise Rejected("not_a_track", type(obj).__name__)
    track_id = _track_id(obj.get("id"), True, "track_id")
    release = obj.get("release_date")
    year = math.nan
    if isinstance(release, str) and release[:4].isdigit():
        year = float(release[:4])
    artist = obj.get("id_artist")
    return Track(track_id, artist if isinstance(artist, str) else None,
                 _opt_float(obj, "popularity"), _opt_float(obj, "duration_ms"),
                 _opt_float(obj, "explicit"), year,
                 tuple(_opt_float(obj, f) for f in AUDIO_FIELDS))


STORAGE_CLASSES = ("slow", "medium", "fast")


def parse_storage(obj: object) -> tuple[str, Storage]:
    if type(obj) is list and len(obj) == 3:
        obj = dict(zip(("track_id", "storage_class", "daily_cost"), obj))
    if type(obj) is not dict:
        raise Rejected("not_a_storage_record", type(obj).__name__)
    track_id = _track_id(obj.get("track_id"), True)
    cls = obj.get("storage_class")
    cls = cls.lower() if isinstance(cls, str) else None
    if cls not in STORAGE_CLASSES:
        raise Rejected("bad_storage_class", repr(obj.get("storage_class"))[:40])
    cost = _opt_float(obj, "daily_cost")
    if math.isnan(cost) or cost < 0:
        raise Rejected("bad_daily_cost", repr(obj.get("daily_cost"))[:40])
    return track_id, Storage(cls, cost)
