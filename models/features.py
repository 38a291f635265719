"""The one point-in-time feature engine.

Incremental: ``observe(event)`` updates the state with one event and returns what a scorer needs
at that instant. A play's features are read *before* the play is registered and use only outcomes
already resolved (a play's outcome is known when a skip of it, the next play, or the session's end
arrives), so nothing here can see the future. Training, evaluation, the simulation and the live
worker all call this class; the state behind it is in memory or loaded from Redis per batch.

What a play reads of the state is gathered per event (``gather``: counts, already decayed, and
their ``log1p``); the rates, smoothing and catalogue columns are derived from a batch of gathered
rows at once (``matrix``), the same arithmetic bit for bit, a column at a time.
"""
from __future__ import annotations

import math
import struct
from heapq import heapify, heappop, heappush
from dataclasses import asdict, dataclass

import numpy as np

from .events import AD, AUDIO_FIELDS, BUY_PREMIUM, LIKE, PLAY, SESSION_END, SKIP, Catalogue, Event
from .labels import FULL, SKIPPED
from .rejections import Rejections
from .state import (S_LAST, S_PENDING_BUCKET, S_PENDING_TRACK, S_PENDING_TS, S_PLAYS, S_SKIPS,
                    T_K, T_LIKES, T_N, U_ADS, U_BOUGHT, U_K, U_KM, U_KO, U_KP, U_LIKES, U_N, U_NM, U_NO,
                    U_AD, U_NP, U_SESSION, U_TRACKS, U_TS, UT_K, UT_LIKED, UT_N, State, new_session,
                    new_user, touch_track)

BASE_FEATURES = ("user_skip_rate", "user_log_plays", "user_like_rate", "track_skip_rate",
                 "track_log_plays", "track_like_rate", "sess_log_plays", "sess_skip_rate",
                 "sess_last_skipped", "sess_first_play", "hour_sin", "hour_cos",
                 "user_state_skip_rate", "ad_before", "user_ad_rate", "user_track_log_plays",
                 "user_track_skip_rate", "user_track_liked", "track_others_skip_rate")
"""What each uses (all of it known before the play; README "Features"): ``user_state_skip_rate``
is the user's skip rate among their plays in their premium state now (premium or not), smoothed
toward their overall rate, as buyers change how they listen; ``ad_before`` an ad heard since the user's
last play, ``user_ad_rate`` the user's decayed ads per play; ``user_track_*`` the user's
own resolved plays of this very track, their skip rate on it (smoothed toward the user's rate)
and whether they liked it (``USER_TRACK_MEMORY`` tracks a user); ``track_others_skip_rate`` the
track's skip rate among the other users (its counts less the user's own)."""
USER_FEATURES = ("premium", "premium_known")
GENRE_FEATURES = ("genre_match", "genre_known", "user_bucket_skip_rate")
TRACK_FEATURES = ("track_in_catalogue", "popularity", "duration_min", "explicit", "release_age") + AUDIO_FIELDS

_AUDIO_SCALE = {"key": 1 / 11, "loudness": 1 / 60, "tempo": 1 / 250}
_AUDIO_DEFAULT = {"key": 5.0, "loudness": -9.0, "tempo": 120.0}
MAX_OPEN_SESSIONS = 4
_DECAYED = (U_N, U_K, U_LIKES, U_NM, U_KM, U_NO, U_KO, U_NP, U_KP, U_ADS)
"""The user's counts that decay with time."""
_UNSEEN = object()
_HOUR_SIN_ARRAY = np.array([math.sin(2 * math.pi * h / 24) for h in range(24)])
_HOUR_COS_ARRAY = np.array([math.cos(2 * math.pi * h / 24) for h in range(24)])

# A gathered row (``FeatureEngine.gather``): the state a play's features are derived from, read at
# the play; ``matrix`` turns a batch of them into feature rows at once.
(G_HAS_USER, G_UN, G_LOG_UN, G_UK, G_ULIKES, G_UADS, G_SN, G_SK, G_AD_BEFORE, G_PREMIUM, G_PREMIUM_KNOWN,
 G_HAS_TRACK, G_TN, G_LOG_TN, G_TK, G_TLIKES,
 G_HAS_OWN, G_OWN_N, G_LOG_OWN_N, G_OWN_K, G_OWN_LIKED,
 G_HAS_SESSION, G_PLAYS, G_LOG_PLAYS, G_SKIPS, G_LAST_SKIPPED,
 G_HOUR, G_BUCKET, G_BN, G_BK, G_TRACK_ROW, G_WIDTH) = range(32)
_ROW = struct.Struct(f"={G_WIDTH}d")
"""A gathered row as the bytes of its float64 values: ``matrix`` joins a batch's and reads them as
one array, where converting a tuple of Python numbers a value at a time took 5% of the worker. The
user's values (``user_part``) are packed once for both rows of a play, the track's per row."""
_pack_user = struct.Struct(f"={G_HAS_TRACK}d").pack
_pack_track = struct.Struct(f"={G_WIDTH - G_HAS_TRACK}d").pack
_ZERO = struct.pack("=d", 0.0)
unpack_row = _ROW.unpack
"""A gathered row's values, indexed by ``G_*``."""


@dataclass(frozen=True)
class EngineConfig:
    """Smoothing and decay. Rates are (skips + m * prior) / (plays + m), so a new user or track
    starts at the prior and earns its own rate with evidence."""

    prior_skip_rate: float = 0.3
    user_smoothing: float = 5.0
    track_smoothing: float = 10.0
    session_smoothing: float = 2.0
    user_track_smoothing: float = 2.0
    user_half_life_days: float | None = 14.0
    """None: no decay (a user's whole history counts alike). Training chooses it on validation
    inside the training window (``models/evaluation.py``, ``HALF_LIVES``)."""
    session_idle_seconds: float = 7200.0
    """A session whose last play started this long before the user's event in another session
    has ended: no track is that long, so no skip of it can still come."""
    early_skip_seconds: float = 60.0
    """A skip that comes before its play (a client that buffered the play) is held this long,
    event time, for the play; a play of its track in its session stamped at or before it is then
    resolved as skipped. Past it, the skip is an orphan."""
    session_gap_seconds: float = 1800.0
    """A play with no event of its session after it for this long (event time, as far as its
    partition has come) was played in full, and its session has ended. Live traffic carries no
    session ends; in the exports no session pauses this long (longest: 1,412 s in 23Z v2)."""

    track_epoch_seconds: float = 86400.0
    """Track counts move in epochs of this much event time (``models/state.py``): a play reads
    every play resolved in earlier epochs. A day: track statistics change slowly, and a day is a
    point every partition of a live stream passes together, at one pause of its batches a day."""

    def __post_init__(self) -> None:
        """A model artifact carries these: one edited or damaged by hand is a clear error here,
        not NaN features (a smoothing of 0 divides 0 by 0 for a user or track not seen yet)."""
        def bad(name: str, what: str) -> ValueError:
            return ValueError(f"EngineConfig.{name} must be {what}, not {getattr(self, name)!r}")

        if not (isinstance(self.prior_skip_rate, (int, float)) and 0.0 <= self.prior_skip_rate <= 1.0):
            raise bad("prior_skip_rate", "a rate between 0 and 1")
        for name in ("user_smoothing", "track_smoothing", "session_smoothing", "user_track_smoothing",
                     "session_idle_seconds", "session_gap_seconds", "track_epoch_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise bad(name, "a positive number")
        if not (isinstance(self.early_skip_seconds, (int, float)) and 0 <= self.early_skip_seconds < math.inf):
            raise bad("early_skip_seconds", "a number of seconds, 0 or more")
        half_life = self.user_half_life_days
        if half_life is not None and not (isinstance(half_life, (int, float)) and half_life >= 0):
            raise bad("user_half_life_days", "a number of days or None (no decay)")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class Resolution:
    """A play whose outcome just became known."""

    user_id: int
    session_id: int
    play_no: int
    track_id: str
    label: int  # FULL or SKIPPED
    ts: float


class FeatureEngine:
    def __init__(self, catalogue: Catalogue | None = None, config: EngineConfig | None = None,
                 state: State | None = None, rejections: Rejections | None = None,
                 feature_names: tuple[str, ...] | None = None):
        self.catalogue = catalogue or Catalogue()
        self.config = config or EngineConfig()
        self.state = state if state is not None else State()
        self.state.epoch_seconds = self.config.track_epoch_seconds
        self.rejections = rejections if rejections is not None else Rejections()
        cat = self.catalogue
        self.use_users = bool(cat.users)
        self.use_genres = cat.has_genres
        self.use_tracks = cat.has_tracks
        names = list(BASE_FEATURES)
        if self.use_users:
            names += USER_FEATURES
        if self.use_genres:
            names += GENRE_FEATURES
        if self.use_tracks:
            names += TRACK_FEATURES
        self.feature_names: tuple[str, ...] = tuple(names)
        if feature_names is not None and tuple(feature_names) != self.feature_names:
            missing = sorted(set(feature_names) - set(self.feature_names))
            extra = sorted(set(self.feature_names) - set(feature_names))
            raise FeatureMismatch(
                "the model was trained on other features than this data gives: "
                f"missing here {missing or 'none'}, extra here {extra or 'none'} "
                "(was a catalogue file such as tracks.jsonl delivered for one and not the other, "
                "or was the model trained by an older skipcache? then train it again)")
        half_life = self.config.user_half_life_days
        self._decay_rate = 0.0 if not half_life or math.isinf(half_life) else math.log(2) / (half_life * 86400.0)
        self._gap = self.config.session_gap_seconds
        self._early_skip = self.config.early_skip_seconds
        self._gap_heap: list[tuple[float, int, int]] = []
        """(start, user, session): one entry per session with a pending play, at that play's
        start or an earlier one of the session (moved to the later one when it comes up), so the
        heap holds the open sessions, not every play of the last gap."""
        self._gap_keys: set[tuple[int, int]] = set()
        """The sessions in ``_gap_heap``."""
        self._held: dict[tuple[int, int, str], tuple[float, dict]] = {}
        """(user, session, track) -> (time, event) of skips waiting for their play."""
        self._held_heap: list[tuple[float, int, int, str]] = []
        self.repaired: dict[str, int] = {}
        """Events taken though they came out of order, by how (``skip_before_play``)."""
        self._track_at: dict[str, int] = {}
        """Track -> its row of catalogue columns in ``_track_matrix`` (``matrix`` takes them by index)."""
        self._track_matrix = np.empty((0, len(TRACK_FEATURES)))
        self._genre_cache: dict[str, frozenset[str] | None] = {}  # track -> its genres

    # ---- reading features -------------------------------------------------------------------
    def premium_at(self, user_id: int, u: list | None, ts: float) -> bool | None:
        """Premium at ``ts``: after the user's ``buy_premium`` (strictly: an event at the play's
        own instant is not before it); else users.jsonl's flag for a user who never buys in the
        export (premium from the start); else not. None: nothing is known of the user."""
        bought = u[U_BOUGHT] if u is not None else None
        if bought is not None:
            return ts > bought
        cat = self.catalogue
        user = cat.users.get(user_id)
        if user is None or user.premium is None:
            return None
        return user.premium and user_id not in cat.buyers

    def user_part(self, user_id: int, ts: float) -> tuple:
        """What a play's row takes from its user at ``ts``: (record, decay factor, the row's
        user values ``G_HAS_USER`` .. ``G_PREMIUM_KNOWN``, packed), once for the playing and the
        upcoming track of one play (the user's state is the same for both)."""
        u = self.state.users.get(user_id)
        premium_now = self.premium_at(user_id, u, ts)
        premium = (0.5, 0.0) if premium_now is None else ((1.0 if premium_now else 0.0), 1.0)
        if u is None:
            return None, 1.0, _pack_user(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, *premium)
        f = math.exp(-self._decay_rate * (ts - u[U_TS])) if ts > u[U_TS] else 1.0
        un = u[U_N] * f
        if premium_now:
            sn, sk = u[U_NP] * f, u[U_KP] * f
        else:
            sn, sk = (u[U_N] - u[U_NP]) * f, (u[U_K] - u[U_KP]) * f
        return u, f, _pack_user(1.0, un, math.log1p(un), u[U_K] * f, u[U_LIKES] * f, u[U_ADS] * f, sn, sk,
                                  1.0 if u[U_AD] is not None else 0.0, *premium)

    def gather(self, user_id: int, track_id: str, session: list | None, ts: float, hour: int,
               user_part: tuple | None = None, bucket: int | None = None) -> bytes:
        """The state a play's feature row is derived from, read now (``G_*``, packed as float64s;
        ``matrix`` derives the rows of a batch at once). ``bucket``: ``_bucket(user_id, track_id)``
        if the caller has it already."""
        st = self.state
        u, f, who = user_part or self.user_part(user_id, ts)
        t = st.tracks.get(track_id)
        if t is None and st.shared_tracks is not None:
            t = st.shared_tracks.get(track_id)
        own = u[U_TRACKS].get(track_id) if u is not None else None
        if own is not None:
            has_own, own_n, own_k, own_liked = 1.0, own[UT_N], own[UT_K], own[UT_LIKED]
            log_own_n = math.log1p(own_n)
        else:
            has_own = own_n = log_own_n = own_k = own_liked = 0.0
        if t is not None:
            has_t, tn, tk, tl = 1.0, t[T_N], t[T_K], t[T_LIKES]
            log_tn = math.log1p(tn)
        else:
            has_t = tn = log_tn = tk = tl = 0.0
        if session is not None:
            has_s, plays, skips = 1.0, session[S_PLAYS], session[S_SKIPS]
            log_plays, last = math.log1p(plays), 1.0 if session[S_LAST] == SKIPPED else 0.0
        else:
            has_s = plays = log_plays = skips = last = 0.0
        bn = bk = 0.0
        if self.use_genres:
            if bucket is None:
                bucket = self._bucket(user_id, track_id)
            if u is not None:
                if bucket == 1:
                    bn, bk = u[U_NM] * f, u[U_KM] * f
                else:
                    bn, bk = u[U_NO] * f, u[U_KO] * f
        return who + _pack_track(has_t, tn, log_tn, tk, tl, has_own, own_n, log_own_n, own_k, own_liked,
                                 has_s, plays, log_plays, skips, last, hour, -1 if bucket is None else bucket, bn,
                                 bk, self._track_index(track_id) if self.use_tracks else 0)

    def features(self, user_id: int, track_id: str, session: list | None, ts: float, hour: int,
                 user_part: tuple | None = None, bucket: int | None = None) -> list[float]:
        """One play's feature row (``feature_names``), as ``matrix`` derives it."""
        return self.matrix([self.gather(user_id, track_id, session, ts, hour, user_part, bucket)])[0].tolist()

    def matrix(self, rows: list[bytes]) -> np.ndarray:
        """The feature rows (``feature_names``) of gathered rows (``gather``, ``observe``), as one
        float64 matrix: the rates, smoothing and catalogue columns computed a column at a time. The
        same arithmetic, in the same order, as one row at a time, and ``log1p`` comes gathered
        (numpy's vectorised one differs from the C library's in the last bit, by position in the
        array)."""
        n = len(rows)
        G = np.frombuffer(b"".join(rows), np.float64, count=n * G_WIDTH).reshape(n, G_WIDTH).T
        cfg = self.config
        p = cfg.prior_skip_rate
        X = np.empty((n, len(self.feature_names)))
        has_u, un, ukf, ads, sn, sk = G[G_HAS_USER] > 0, G[G_UN], G[G_UK], G[G_UADS], G[G_SN], G[G_SK]
        m = cfg.user_smoothing
        X[:, 0] = user_rate = np.where(has_u, (ukf + m * p) / (un + m), p)
        X[:, 1] = G[G_LOG_UN]
        X[:, 2] = G[G_ULIKES] / (un + 1.0)
        has_t, tn, tk = G[G_HAS_TRACK] > 0, G[G_TN], G[G_TK]
        mt = cfg.track_smoothing
        X[:, 3] = np.where(has_t, (tk + mt * p) / (tn + mt), p)
        X[:, 4] = G[G_LOG_TN]
        X[:, 5] = G[G_TLIKES] / (tn + 1.0)
        has_s, plays = G[G_HAS_SESSION] > 0, G[G_PLAYS]
        ms = cfg.session_smoothing
        X[:, 6] = G[G_LOG_PLAYS]
        X[:, 7] = np.where(has_s, (G[G_SKIPS] + ms * p) / (plays + ms), p)
        X[:, 8] = G[G_LAST_SKIPPED]
        X[:, 9] = np.where(has_s, plays == 0, 1.0)
        hour = G[G_HOUR].astype(np.intp)
        X[:, 10] = _HOUR_SIN_ARRAY[hour]
        X[:, 11] = _HOUR_COS_ARRAY[hour]
        X[:, 12] = np.where(has_u, (sk + m * user_rate) / (sn + m), p)
        X[:, 13] = G[G_AD_BEFORE]
        X[:, 14] = ads / (un + 1.0)
        has_own, own_n, own_k = G[G_HAS_OWN] > 0, G[G_OWN_N], G[G_OWN_K]
        mu = cfg.user_track_smoothing
        X[:, 15] = G[G_LOG_OWN_N]
        X[:, 16] = np.where(has_own, (own_k + mu * user_rate) / (own_n + mu), user_rate)
        X[:, 17] = G[G_OWN_LIKED]
        X[:, 18] = np.where(has_t, (np.maximum(tk - own_k, 0.0) + mt * p) / (np.maximum(tn - own_n, 0.0) + mt), p)
        at = len(BASE_FEATURES)
        if self.use_users:
            X[:, at] = G[G_PREMIUM]
            X[:, at + 1] = G[G_PREMIUM_KNOWN]
            at += 2
        if self.use_genres:
            bucket = G[G_BUCKET]
            X[:, at] = bucket == 1
            X[:, at + 1] = bucket >= 0
            X[:, at + 2] = np.where(has_u, (G[G_BK] + m * user_rate) / (G[G_BN] + m), user_rate)
            at += 3
        if self.use_tracks:
            X[:, at:] = self._track_matrix[G[G_TRACK_ROW].astype(np.intp)]
        return X

    def _bucket(self, user_id: int, track_id: str) -> int:
        """1 if the track's genres meet the user's favourites, 0 if not, -1 if unknown. The
        track's genres are remembered per track (a catalogue's worth); the meeting of two small
        sets is cheaper than remembering every (user, track) pair, which an 18M-event replay
        has millions of."""
        genres = self._genre_cache.get(track_id, _UNSEEN)
        if genres is _UNSEEN:
            genres = self._genre_cache[track_id] = self.catalogue.track_genres(track_id)
        user = self.catalogue.users.get(user_id)
        if user is None or not user.favourite_genres or genres is None:
            return -1
        return 0 if user.favourite_genres.isdisjoint(genres) else 1

    def _track_index(self, track_id: str) -> int:
        """The track's row of catalogue columns in ``_track_matrix``, made on first sight (the
        matrix grows by doubling)."""
        at = self._track_at.get(track_id)
        if at is None:
            at = self._track_at[track_id] = len(self._track_at)
            if at == len(self._track_matrix):
                grown = np.empty((max(2 * at, 1024), len(TRACK_FEATURES)))
                grown[:at] = self._track_matrix
                self._track_matrix = grown
            self._track_matrix[at] = self._track_row(track_id)
        return at

    def _track_row(self, track_id: str) -> tuple:
        tr = self.catalogue.tracks.get(track_id)
        if tr is None:
            return (0.0, 0.5, 3.7, 0.0, 0.5) + tuple(
                _AUDIO_DEFAULT.get(n, 0.5) * _AUDIO_SCALE.get(n, 1.0) for n in AUDIO_FIELDS)

        def val(x: float, default: float) -> float:
            return default if math.isnan(x) else x
        return (1.0, val(tr.popularity, 50.0) / 100.0, val(tr.duration_ms, 221_000.0) / 60_000.0,
                val(tr.explicit, 0.0), (2024.0 - val(tr.release_year, 2000.0)) / 50.0) + tuple(
            val(x, _AUDIO_DEFAULT.get(n, 0.5)) * _AUDIO_SCALE.get(n, 1.0)
            for n, x in zip(AUDIO_FIELDS, tr.audio))

    # ---- updating state ---------------------------------------------------------------------
    def observe(self, e: Event) -> tuple[list[Resolution], tuple | None, tuple | None, int]:
        """Apply one event. Returns (resolutions, the gathered row of the playing track, that of
        the upcoming track, play number in session); the rows (``matrix`` derives their features)
        are None unless it is a play."""
        st = self.state
        ts = e.ts
        if ts >= st.epoch_end:  # the epoch turns before anything this event resolves
            st.advance(ts)
        resolved: list[Resolution] = []
        heap = self._gap_heap
        if heap and heap[0][0] < ts - self._gap:
            self._end_gapped(ts, resolved)
        if self._held_heap and self._held_heap[0][0] < ts - self._early_skip:
            self._expire_held(ts)
        kind = e.kind
        uid = e.user_id
        key = (uid, e.session_id)
        u = st.users.get(uid)
        if u is None:
            u = st.users[uid] = new_user(ts, e.session_id)
        else:
            open_sessions = u[U_SESSION]
            if e.session_id not in open_sessions:
                # the user is in another session now; an open one has ended if it went idle
                # (live traffic without session_end markers would otherwise never resolve it)
                for sid in list(open_sessions):
                    old = st.sessions.get((uid, sid))
                    if (old is None or ts - old[S_PENDING_TS] > self.config.session_idle_seconds
                            or len(open_sessions) >= MAX_OPEN_SESSIONS):
                        self._end_session((uid, sid), ts, resolved)
                        open_sessions.remove(sid)
                open_sessions.append(e.session_id)
        st.dirty_users.add(uid)
        if kind == PLAY:
            sess = st.sessions.get(key)
            if sess is None:
                sess = st.sessions[key] = new_session()
                st.deleted_sessions.discard(key)
            elif sess[S_PENDING_TRACK] is not None:
                self._resolve(key, sess, FULL, ts, resolved)
            track = e.track_id
            who = self.user_part(uid, ts)
            bucket = self._bucket(uid, track) if self.use_genres else -1
            row = self.gather(uid, track, sess, ts, e.hour, who, bucket)
            if u[U_AD] is not None:  # the ad was before this play; the upcoming track has not had one yet
                u[U_AD] = None
                at = 8 * G_AD_BEFORE  # its value's bytes in the packed user part: 0.0
                who = (who[0], who[1], who[2][:at] + _ZERO + who[2][at + 8:])
            play_no = sess[S_PLAYS]
            sess[S_PLAYS] = play_no + 1
            sess[S_PENDING_TRACK] = track
            sess[S_PENDING_BUCKET] = bucket
            sess[S_PENDING_TS] = ts
            st.dirty_sessions.add(key)
            if key not in self._gap_keys:
                self._gap_keys.add(key)
                heappush(heap, (ts, uid, e.session_id))
            upcoming = None
            if e.next_track_id is not None:
                upcoming = self.gather(uid, e.next_track_id, sess, ts, e.hour, who)
            if self._held:
                held = self._held.pop((uid, e.session_id, track), None)
                if held is not None:
                    if held[0] >= ts:  # its skip came first: the play resolves right after its scoring
                        self._resolve(key, sess, SKIPPED, held[0], resolved)
                        self.repaired["skip_before_play"] = self.repaired.get("skip_before_play", 0) + 1
                    else:
                        self.rejections.add("orphan_skip", held[1])
            return resolved, row, upcoming, play_no
        if kind == SKIP:
            sess = st.sessions.get(key)
            if sess is not None and sess[S_PENDING_TRACK] == e.track_id:
                self._resolve(key, sess, SKIPPED, ts, resolved)
                st.dirty_sessions.add(key)
            elif self.config.early_skip_seconds > 0:  # its play may still come (out of order)
                held_key = (uid, e.session_id, e.track_id)
                old = self._held.get(held_key)
                if old is not None:
                    self.rejections.add("orphan_skip", old[1])
                self._held[held_key] = (ts, e.to_json())
                heappush(self._held_heap, (ts, *held_key))
            else:
                self.rejections.add("orphan_skip", e.to_json())
        elif kind == LIKE:
            self._decay_to(u, ts)
            u[U_LIKES] += 1.0
            if e.track_id:
                touch_track(u, e.track_id)[UT_LIKED] = 1
            st.add_track(e.track_id, 0.0, 0.0, 1.0)
        elif kind == AD:
            self._decay_to(u, ts)
            u[U_ADS] += 1.0
            u[U_AD] = e.session_id  # heard since the user's last play: an ad is stamped with the play after it
        elif kind == BUY_PREMIUM:
            if u[U_BOUGHT] is None:
                u[U_BOUGHT] = ts
        elif kind == SESSION_END:
            self._end_session(key, ts, resolved)
            if e.session_id in u[U_SESSION]:
                u[U_SESSION].remove(e.session_id)
        return resolved, None, None, -1

    # ---- the session-gap rule -------------------------------------------------------------
    def _end_gapped(self, now: float, resolved: list[Resolution]) -> None:
        """End the sessions whose pending play started more than the gap before ``now``: the
        play resolves as played in full at its start plus the gap (the same moment whichever
        event, of whichever partition, comes first past it)."""
        st, heap, gap, keys = self.state, self._gap_heap, self._gap, self._gap_keys
        while heap and heap[0][0] < now - gap:
            ts, uid, sid = heappop(heap)
            key = (uid, sid)
            sess = st.sessions.get(key)
            if sess is None or sess[S_PENDING_TRACK] is None:
                keys.discard(key)  # resolved since
                continue
            if sess[S_PENDING_TS] != ts:  # a later play of the session is pending: wait for that one
                heappush(heap, (sess[S_PENDING_TS], uid, sid))
                continue
            keys.discard(key)
            self._end_session(key, ts + gap, resolved)
            u = st.users.get(uid)
            if u is not None and sid in u[U_SESSION]:
                u[U_SESSION].remove(sid)
                st.dirty_users.add(uid)

    def _expire_held(self, now: float) -> None:
        """Skips held past the window: their play did not come; orphans."""
        heap, limit = self._held_heap, now - self.config.early_skip_seconds
        while heap and heap[0][0] < limit:
            ts, uid, sid, track = heappop(heap)
            held = self._held.get((uid, sid, track))
            if held is not None and held[0] == ts:
                del self._held[(uid, sid, track)]
                self.rejections.add("orphan_skip", held[1])

    def held_state(self) -> list:
        """The skips waiting for their play, to store with the partition's state."""
        return [[uid, sid, track, ts, event] for (uid, sid, track), (ts, event) in self._held.items()]

    def load_held(self, held: list) -> None:
        self._held = {(uid, sid, track): (ts, event) for uid, sid, track, ts, event in held}
        self._held_heap = [(ts, uid, sid, track) for uid, sid, track, ts, _ in held]
        heapify(self._held_heap)

    def due(self, until: float) -> list[tuple[int, int]]:
        """(user, session) of the pending plays an event at ``until`` would end by the gap rule:
        the sessions a store-backed caller must have loaded before such an event."""
        limit, heap = until - self._gap, self._gap_heap
        out, todo = [], [0] if heap else []
        while todo:  # the heap's entries below the limit: a parent is never later than its children
            i = todo.pop()
            if i < len(heap) and heap[i][0] < limit:
                out.append(heap[i][1:])
                todo += (2 * i + 1, 2 * i + 2)
        return out

    def watch(self, pending: dict[tuple[int, int], tuple]) -> None:
        """After a restart: the plays still pending (``(user, session) -> (..., start)``, the
        prediction ledger's) come under the gap rule again."""
        self._gap_heap = [(entry[-1], uid, sid) for (uid, sid), entry in pending.items()]
        self._gap_keys = set(pending)
        heapify(self._gap_heap)

    def flush(self, ts: float) -> list[Resolution]:
        """End every open session (the data ended): their pending plays were played in full."""
        self._gap_heap.clear()
        self._gap_keys.clear()
        for _, event in self._held.values():
            self.rejections.add("orphan_skip", event)
        self._held.clear()
        self._held_heap.clear()
        resolved: list[Resolution] = []
        for key in list(self.state.sessions):
            self._end_session(key, ts, resolved)
        for u in self.state.users.values():
            u[U_SESSION].clear()
        return resolved

    def _end_session(self, key: tuple[int, int], ts: float, resolved: list[Resolution]) -> None:
        st = self.state
        sess = st.sessions.pop(key, None)
        st.dirty_sessions.discard(key)
        st.deleted_sessions.add(key)
        if sess is not None and sess[S_PENDING_TRACK] is not None:
            self._resolve(key, sess, FULL, ts, resolved)

    def _decay_to(self, u: list, ts: float) -> None:
        """Decay the user's counts to ``ts`` (if it is later than the user's last event)."""
        last = u[U_TS]
        if ts > last:
            if self._decay_rate:
                f = math.exp(-self._decay_rate * (ts - last))
                if f != 1.0:
                    for i in _DECAYED:
                        u[i] *= f
            u[U_TS] = ts

    def _resolve(self, key: tuple[int, int], sess: list, label: int, ts: float,
                 resolved: list[Resolution]) -> None:
        st = self.state
        track = sess[S_PENDING_TRACK]
        skipped = 1.0 if label == SKIPPED else 0.0
        uid = key[0]
        u = st.users.get(uid)
        if u is not None:
            self._decay_to(u, ts)
            u[U_N] += 1.0
            u[U_K] += skipped
            bucket = sess[S_PENDING_BUCKET]
            if bucket == 1:
                u[U_NM] += 1.0
                u[U_KM] += skipped
            elif bucket == 0:
                u[U_NO] += 1.0
                u[U_KO] += skipped
            if self.premium_at(uid, u, sess[S_PENDING_TS]):  # the state the play was played in
                u[U_NP] += 1.0
                u[U_KP] += skipped
            mine = touch_track(u, track)
            mine[UT_N] += 1
            mine[UT_K] += label == SKIPPED
            st.dirty_users.add(uid)
        st.add_track(track, 1.0, skipped, 0.0)
        sess[S_SKIPS] += skipped
        sess[S_LAST] = label
        sess[S_PENDING_TRACK] = None
        resolved.append(Resolution(uid, key[1], sess[S_PLAYS] - 1, track, label, ts))


class FeatureMismatch(ValueError):
    """A model artifact and the data disagree on the feature set."""
