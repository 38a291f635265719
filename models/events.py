"""The listening-session event and the catalogue records, normalised across Pozytywka releases."""
from __future__ import annotations

from dataclasses import dataclass, field

PLAY = "play"
SKIP = "skip"
LIKE = "like"
AD = "advertisement"
BUY_PREMIUM = "buy_premium"
SESSION_END = "session_end"
"""Not in the exports: the replay (and a client that knows it) marks the end of a session so the
last play's outcome (played in full) arrives without peeking at the future."""

EVENT_TYPES = (PLAY, SKIP, LIKE, AD, BUY_PREMIUM, SESSION_END)
TRACK_EVENTS = frozenset({PLAY, SKIP, LIKE})


@dataclass(slots=True)
class Event:
    """One listening event. ``ts`` is epoch seconds (UTC when the source had an offset, the
    naive wall clock otherwise); ``hour`` is the local hour of day as written in the source."""

    ts: float
    hour: int
    user_id: int
    session_id: int
    kind: str
    track_id: str | None = None
    next_track_id: str | None = None

    def to_json(self) -> dict:
        """The wire form used by the replay producer and accepted by the worker."""
        out = {"session_id": self.session_id, "timestamp": iso_utc(self.ts), "user_id": self.user_id,
               "track_id": self.track_id, "event_type": self.kind}
        if self.next_track_id is not None:
            out["next_track_id"] = self.next_track_id
        return out


def iso_utc(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).replace(tzinfo=None).isoformat()


@dataclass(slots=True)
class User:
    user_id: int
    favourite_genres: frozenset[str] | None
    premium: bool | None


@dataclass(slots=True)
class Track:
    track_id: str
    artist_id: str | None
    popularity: float
    duration_ms: float
    explicit: float
    release_year: float
    audio: tuple[float, ...]  # AUDIO_FIELDS, in order


AUDIO_FIELDS = ("danceability", "energy", "key", "loudness", "speechiness", "acousticness",
                "instrumentalness", "liveness", "valence", "tempo")


@dataclass(slots=True)
class Storage:
    storage_class: str  # slow | medium | fast
    daily_cost: float


@dataclass
class Catalogue:
    """What the optional catalogue files told us. Empty dicts mean the file was not delivered;
    features that need it are dropped (see FeatureEngine)."""

    users: dict[int, User] = field(default_factory=dict)
    tracks: dict[str, Track] = field(default_factory=dict)
    artist_genres: dict[str, frozenset[str]] = field(default_factory=dict)
    storage: dict[str, Storage] = field(default_factory=dict)
    buyers: frozenset[int] = frozenset()
    """Users with a ``buy_premium`` event in the export's sessions. ``premium_user`` in users.jsonl
    is the state at the export's end: for these users it says nothing about their plays before
    the purchase, so premium at a play comes from their event (``FeatureEngine.premium_at``);
    for a flagged user not among them, premium holds from the start."""

    def track_genres(self, track_id: str) -> frozenset[str] | None:
        track = self.tracks.get(track_id)
        if track is None or track.artist_id is None:
            return None
        return self.artist_genres.get(track.artist_id)

    @property
    def has_tracks(self) -> bool:
        return bool(self.tracks)

    @property
    def has_genres(self) -> bool:
        return bool(self.tracks) and bool(self.artist_genres) and any(
            u.favourite_genres for u in self.users.values())
