"""Read a Pozytywka export directory: five JSON-lines files, plain or xz/gz-compressed, streamed
line by line. Every line that cannot be read is counted by reason with its first example."""
from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from tqdm import tqdm

from models.events import Catalogue, Event
from models.parsing import TimeWindow, parse_artist, parse_event, parse_storage, parse_track, parse_user
from models.rejections import Rejected, Rejections
from models.gc_pause import paused_gc

log = logging.getLogger(__name__)
FILES = ("sessions", "users", "artists", "tracks", "track_storage")
SUFFIXES = (".jsonl", ".jsonl.xz", ".jsonl.gz", ".json", ".jsonl.bz2")


class DataError(Exception):
    """The data directory cannot be used at all (as opposed to single bad lines)."""


def find_file(directory: Path, name: str) -> Path | None:
    for suffix in SUFFIXES:
        path = directory / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def open_binary(path: Path):
    if path.name.endswith(".xz"):
        return lzma.open(path, "rb")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".bz2"):
        import bz2
        return bz2.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


CHUNK = 4 << 20


def iter_chunks(path: Path, desc: str | None = None, progress: bool = True, digest=None) -> Iterator[list[bytes]]:
    """Lists of lines (bytes, no line ends; blank ones included) read in 4 MB chunks, with a
    progress bar over the bytes of the file on disk. Chunks keep per-line overhead off the hot
    loop: hashing and progress happen once per chunk."""
    size = path.stat().st_size
    with open(path, "rb") as raw_fh, tqdm(total=size, desc=desc or path.name, unit="B", unit_scale=True,
                                          disable=None if progress else True, leave=False,
                                          mininterval=0.5) as bar:
        fh = raw_fh if not path.name.endswith((".xz", ".gz", ".bz2")) else open_binary(path)
        try:
            tail = b""
            last_pos = 0
            while True:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                if digest is not None:
                    digest.update(chunk)
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                pos = raw_fh.tell()
                bar.update(pos - last_pos)
                last_pos = pos
                yield lines
            if tail:
                yield [tail]
        finally:
            if fh is not raw_fh:
                fh.close()


@dataclass
class Dataset:
    events: list[Event]
    catalogue: Catalogue
    rejections: Rejections
    lines: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def missing(self) -> list[str]:
        return [name for name in FILES if name not in self.files]


def read_sessions(path: Path, rejections: Rejections, progress: bool = True) -> tuple[list[Event], int, str]:
    """Events in file order. Exact duplicate lines inside a session are rejected as
    ``sessions/duplicate_line`` (sessions are contiguous, so only the current one is remembered)."""
    events: list[Event] = []
    append = events.append
    loads = orjson.loads
    seen: set[bytes] = set()
    current = None
    n = 0
    check, now = TimeWindow().check, time.time()  # an export holds no event from before the era or the future
    digest = hashlib.blake2b(digest_size=16)
    interned = _interned
    for lines in iter_chunks(path, "sessions", progress, digest):
        for raw in lines:
            if not raw or raw.isspace():
                continue
            n += 1
            try:
                e = check(parse_event(loads(raw)), now)
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
            track = e.track_id
            if track is not None:
                e.track_id = interned.get(track) or interned.setdefault(track, track)
            append(e)
    return events, n, digest.hexdigest()


_interned: dict[str, str] = {}


def _intern(s: str) -> str:
    return _interned.setdefault(s, s)


def _read_records(path: Path, name: str, parse, rejections: Rejections, progress: bool):
    loads = orjson.loads
    n = 0
    check, now = TimeWindow().check, time.time()  # an export holds no event from before the era or the future
    digest = hashlib.blake2b(digest_size=16)
    out = []
    for lines in iter_chunks(path, name, progress, digest):
        for raw in lines:
            if not raw or raw.isspace():
                continue
            n += 1
            try:
                out.append(parse(loads(raw)))
            except orjson.JSONDecodeError:
                rejections.add(f"{name}/bad_json", raw)
            except Rejected as r:
                rejections.add(f"{name}/{r.reason}", raw)
    return out, n, digest.hexdigest()


def read_dataset(directory: str | Path, progress: bool = True) -> Dataset:
    with paused_gc():
        return _read_dataset(Path(directory), progress)


def read_catalogue(directory: str | Path, progress: bool = False) -> Dataset:
    """Only the catalogue files (what the live worker needs); sessions are not read."""
    with paused_gc():
        return _read_dataset(Path(directory), progress, with_sessions=False)


def _read_dataset(directory: Path, progress: bool, with_sessions: bool = True) -> Dataset:
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory")
    rejections = Rejections()
    ds = Dataset([], Catalogue(), rejections)
    digests = []
    if with_sessions:
        sessions = find_file(directory, "sessions")
        if sessions is None:
            raise DataError(f"no sessions.jsonl(.xz|.gz) in {directory}")
        ds.events, ds.lines["sessions"], d = read_sessions(sessions, rejections, progress)
        ds.files["sessions"] = str(sessions)
        digests.append(d)
    cat = ds.catalogue
    for name, parse in (("users", parse_user), ("artists", parse_artist), ("tracks", parse_track),
                        ("track_storage", parse_storage)):
        path = find_file(directory, name)
        if path is None:
            if name in ("tracks", "track_storage"):
                log.warning("%s is missing in %s: %s", name, directory,
                            "track features are dropped" if name == "tracks"
                            else "every track starts in slow storage at the median slow cost")
            else:
                log.warning("%s is missing in %s: features that need it are dropped", name, directory)
            continue
        records, ds.lines[name], d = _read_records(path, name, parse, rejections, progress)
        ds.files[name] = str(path)
        digests.append(d)
        if name == "users":
            for u in records:
                if u.user_id in cat.users:
                    rejections.add("users/duplicate_user_id", u.user_id)
                cat.users[u.user_id] = u
        elif name == "artists":
            cat.artist_genres.update(records)
        elif name == "tracks":
            for t in records:
                t.track_id = _intern(t.track_id)
                cat.tracks[t.track_id] = t
        else:
            cat.storage.update(records)
    ds.fingerprint = hashlib.blake2b("".join(digests).encode(), digest_size=12).hexdigest()
    return ds
