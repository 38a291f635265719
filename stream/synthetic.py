"""Write a synthetic Pozytywka export in the real format.

``long`` carries learnable signal like the 2023 long-session releases (per-user propensity, a
premium effect, skips clustering within sessions, concentrated popularity, genre affinity, track
quality visible in audio features); ``short`` carries none, like 23Z v2. ``noise`` injects the v1
noise kinds. Same arguments, same bytes: every draw comes from one seeded ``random.Random``."""
from __future__ import annotations

import bisect
import itertools
import math
import random
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import orjson
from tqdm import tqdm

GENRES = ("pop", "dance pop", "rock", "hard rock", "modern rock", "art rock", "indie", "indie pop",
          "rap", "hip hop", "pop rap", "trap", "latin", "reggaeton", "latin pop", "edm", "house",
          "techno", "trance", "drum and bass", "jazz", "smooth jazz", "blues", "soul", "r&b", "funk",
          "disco", "country", "folk", "singer-songwriter", "classical", "opera", "metal",
          "death metal", "punk", "grunge", "k-pop", "j-pop", "polish hip hop", "polish rock",
          "ambient", "lo-fi", "reggae", "ska", "gospel", "soundtrack", "chanson", "bossa nova")
START = datetime(2023, 1, 1)
YEAR_SECONDS = 364 * 86400
NOISE_KINDS = ("null_user_id", "null_event_type", "missing_track_id", "orphan_skip", "duplicate_line")
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Profile:
    plays_mean: float
    sessions_min: int
    sessions_max: int
    signal: bool


PROFILES = {
    "long": Profile(plays_mean=17.0, sessions_min=6, sessions_max=18, signal=True),
    "short": Profile(plays_mean=2.0, sessions_min=90, sessions_max=550, signal=False),
}


EVENTS_PER_USER = {"long": 381.0, "short": 1600.0}
"""Measured means (long: seed 1, 39,000 users, with its purchases midway; short: seed 0, 1,000
users): what ``--events`` divides by."""


def users_for_events(events: int, profile: str) -> int:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {sorted(PROFILES)}")
    if events < 1:
        raise ValueError("events must be at least 1")
    return max(1, round(events / EVENTS_PER_USER[profile]))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def generate(out: str | Path, users: int = 1000, seed: int = 0, profile: str = "long",
             noise: float = 0.0, tracks: int | None = None, progress: bool = True) -> dict:
    """Write the five files into ``out``; returns counts of what was written.

    In the long profile most premium users buy premium midway, at the start of one of their
    middle sessions (``users.jsonl`` keeps the state at the end), and skip more after, as in the
    long-session releases."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {sorted(PROFILES)}")
    if not 0.0 <= noise <= 0.5:
        raise ValueError("noise must be a fraction between 0 and 0.5")
    if users < 1:
        raise ValueError("users must be at least 1")
    prof = PROFILES[profile]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    n_tracks = tracks or max(2000, min(30000, users * 6))
    n_artists = max(100, n_tracks // 8)

    def new_id() -> str:
        return "".join(rnd.choices(_ALPHABET, k=22))

    # ---- catalogue --------------------------------------------------------------------------
    artists = []
    for _ in range(n_artists):
        k = min(len(GENRES), 1 + int(rnd.expovariate(0.7)))
        artists.append((new_id(), f"Artist {len(artists)}", sorted(rnd.sample(GENRES, k))))
    genre_tracks: dict[str, list[int]] = {g: [] for g in GENRES}
    track_rows, quality, durations = [], [], []
    for i in range(n_tracks):
        a = rnd.randrange(n_artists)
        energy, dance, valence = rnd.random(), rnd.random(), rnd.random()
        # track quality: the part of the skip propensity a track carries, half visible in audio
        q = rnd.gauss(0, 0.45) + 0.9 * (energy - 0.5) + 0.6 * (dance - 0.5)
        quality.append(q)
        dur = int(min(900_000, max(45_000, rnd.lognormvariate(math.log(221_000), 0.3))))
        durations.append(dur)
        track_rows.append({"id": new_id(), "name": f"Track {i}", "popularity": 0, "duration_ms": dur,
                           "explicit": int(rnd.random() < 0.15), "id_artist": artists[a][0],
                           "release_date": f"{rnd.randint(1960, 2023)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
                           "danceability": round(dance, 3), "energy": round(energy, 3),
                           "key": rnd.randrange(12), "loudness": round(rnd.uniform(-25, -2), 3),
                           "speechiness": round(rnd.random() * 0.3, 4), "acousticness": round(rnd.random(), 4),
                           "instrumentalness": round(rnd.random() ** 4, 6), "liveness": round(rnd.random() * 0.5, 4),
                           "valence": round(valence, 3), "tempo": round(rnd.uniform(60, 200), 3)})
        for g in artists[a][2]:
            genre_tracks[g].append(i)
    # popularity: Zipf over a random permutation, so that plays concentrate on few tracks
    order = list(range(n_tracks))
    rnd.shuffle(order)
    weight = [0.0] * n_tracks
    for rank, i in enumerate(order):
        weight[i] = 1.0 / (rank + 1) ** 0.9
    top = weight[order[0]]
    for i in range(n_tracks):
        track_rows[i]["popularity"] = int(max(0, min(100, 100 + 12 * math.log(weight[i] / top))))
    cum = list(itertools.accumulate(weight))
    genre_cum = {g: (ids, list(itertools.accumulate(weight[i] for i in ids))) for g, ids in genre_tracks.items() if ids}
    artist_of = {a[0]: set(a[2]) for a in artists}

    # ---- users ------------------------------------------------------------------------------
    user_rows, user_base, user_premium, user_favs, user_buys = [], [], [], [], []
    midway = prof.signal  # purchases that change how the buyer listens
    for u in range(users):
        favs = rnd.sample([g for g in GENRES if g in genre_cum], 3)
        premium = rnd.random() < 0.35
        buys = midway and premium and rnd.random() < 0.7
        user_buys.append(buys)
        user_rows.append({"user_id": 100 + u, "name": f"User {u}", "city": rnd.choice(("Warszawa", "Kraków", "Gdańsk", "Poznań", "Wrocław")),
                          "street": f"ul. Krótka {rnd.randint(1, 999)}", "favourite_genres": favs, "premium_user": premium})
        user_base.append(rnd.gauss(_logit(0.27), 1.25) if prof.signal else 0.0)
        user_premium.append(premium and not buys)  # premium from the start
        user_favs.append(set(favs))

    # ---- sessions ---------------------------------------------------------------------------
    session_counter = itertools.count(rnd.randrange(1, 1000))
    written = {"events": 0, "plays": 0, "skips": 0, "noise": 0}
    ts_fmt = "%Y-%m-%dT%H:%M:%S.%f"
    noisy_users = set(rnd.sample(range(users), int(users * noise * 0.5))) if noise else set()
    with open(out / "sessions.jsonl", "wb") as fh:
        write = fh.write
        bar = tqdm(total=round(users * EVENTS_PER_USER[profile]), desc="generate", unit=" events", unit_scale=True,
                   disable=None if progress else True, leave=False, mininterval=0.5)
        for u in range(users):
            bar.update(written["events"] - bar.n)
            uid = 100 + u
            n_sessions = rnd.randint(prof.sessions_min, prof.sessions_max)
            sids = sorted(next(session_counter) for _ in range(n_sessions))
            # sessions of one user do not overlap: each gets its own slot of the year
            slot = YEAR_SECONDS / n_sessions
            starts = [k * slot + rnd.random() * slot * 0.5 for k in range(n_sessions)]
            # a buyer buys at the start of one of their middle sessions (in time), at the instant
            # of its first play: that play is not yet premium, the ones after are
            bought_at = starts[rnd.randint(1, n_sessions - 2)] if user_buys[u] and n_sessions > 2 else None
            rnd.shuffle(starts)  # session ids are not chronological within a user
            for sid, start in zip(sids, starts):
                t = start
                buy_here = bought_at == start
                n_plays = 1 + _poisson(rnd, prof.plays_mean)
                prev_skipped = False
                for _ in range(n_plays):
                    if prof.signal and rnd.random() < 0.65:
                        # from the list: a set's order follows the string hash seed, so one seed
                        # would not give one data set
                        ids, gcum = genre_cum[rnd.choice(user_rows[u]["favourite_genres"])]
                        i = ids[bisect.bisect_left(gcum, rnd.random() * gcum[-1])]
                    else:
                        i = bisect.bisect_left(cum, rnd.random() * cum[-1])
                    i = min(i, n_tracks - 1)
                    track = track_rows[i]["id"]
                    premium_now = user_premium[u] or (bought_at is not None and t > bought_at)
                    if prof.signal:
                        match = bool(user_favs[u] & artist_of[track_rows[i]["id_artist"]])
                        x = (user_base[u] + ((1.0 if premium_now else 0.0) if midway else (0.75 if premium_now else 0.0)) - (0.9 if match else 0.0)
                             + (1.2 if prev_skipped else 0.0) + quality[i] - 0.25 * math.log(weight[i] / top + 1e-9) / 4)
                        skipped = rnd.random() < _sigmoid(x)
                    else:
                        skipped = rnd.random() < 0.31
                    prev_skipped = skipped
                    stamp = (START + timedelta(seconds=t)).strftime(ts_fmt)
                    events = []
                    if buy_here:
                        events.append((stamp, None, "buy_premium"))
                        buy_here = False
                    if not premium_now and rnd.random() < 0.25:
                        events.append((stamp, None, "advertisement"))
                    events.append((stamp, track, "play"))
                    dur = durations[i] / 1000.0
                    if rnd.random() < (0.07 if skipped else 0.3):
                        t_like = t + dur * rnd.uniform(0.05, 0.5)
                        events.append(((START + timedelta(seconds=t_like)).strftime(ts_fmt), track, "like"))
                    if skipped:
                        t += dur * min(0.98, max(0.02, rnd.betavariate(5.7, 4.3)))
                        events.append(((START + timedelta(seconds=t)).strftime(ts_fmt), track, "skip"))
                        t += 5.0
                        written["skips"] += 1
                    else:
                        t += dur * rnd.uniform(0.99, 1.01)
                    if not midway and rnd.random() < 0.002:  # purchases with no effect
                        events.append(((START + timedelta(seconds=t)).strftime(ts_fmt), None, "buy_premium"))
                    written["plays"] += 1
                    for stamp_e, track_e, kind in events:
                        record = {"session_id": sid, "timestamp": stamp_e, "user_id": uid, "track_id": track_e, "event_type": kind}
                        if noise and rnd.random() < noise:
                            written["noise"] += 1
                            how = rnd.choice(NOISE_KINDS)
                            if how == "null_user_id":
                                record["user_id"] = None
                            elif how == "null_event_type":
                                record["event_type"] = None
                            elif how == "missing_track_id" and kind == "play":
                                record["track_id"] = rnd.choice((None, ""))
                            elif how == "orphan_skip":
                                write(orjson.dumps({**record, "track_id": track_rows[rnd.randrange(n_tracks)]["id"], "event_type": "skip"}) + b"\n")
                                written["events"] += 1
                            elif how == "duplicate_line":
                                write(orjson.dumps(record) + b"\n")
                                written["events"] += 1
                        write(orjson.dumps(record) + b"\n")
                        written["events"] += 1

        bar.close()

    # ---- catalogue files --------------------------------------------------------------------
    with open(out / "users.jsonl", "wb") as fh:
        for u, row in enumerate(user_rows):
            if u in noisy_users:
                if rnd.random() < 0.5:
                    continue  # referenced in sessions, missing from users.jsonl
                row = {**row, "favourite_genres": None, "premium_user": None, "id": -1}
            fh.write(orjson.dumps(row) + b"\n")
    with open(out / "artists.jsonl", "wb") as fh:
        for artist_id, name, genres in artists:
            if noise and rnd.random() < noise * 0.2:
                fh.write(orjson.dumps({"id": rnd.choice((-1, None)), "name": name, "genres": None}) + b"\n")
            else:
                fh.write(orjson.dumps({"id": artist_id, "name": name, "genres": genres}) + b"\n")
    with open(out / "tracks.jsonl", "wb") as fh:
        for row in track_rows:
            fh.write(orjson.dumps(row) + b"\n")
    with open(out / "track_storage.jsonl", "wb") as fh:
        for row in track_rows:
            r = rnd.random()
            cls, median = ("fast", 0.087) if r < 0.001 else ("medium", 0.021) if r < 0.15 else ("slow", 0.011)
            cost = median * rnd.lognormvariate(0, 0.05)
            fh.write(orjson.dumps({"track_id": row["id"], "storage_class": cls, "daily_cost": round(cost, 8)}) + b"\n")
    written.update(users=users, tracks=n_tracks, artists=n_artists)
    return written


def _poisson(rnd: random.Random, lam: float) -> int:
    """Knuth's method for small lambda; deterministic with the seeded generator."""
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rnd.random()
        if p <= limit:
            return k
        k += 1
