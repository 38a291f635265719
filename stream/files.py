"""Read a Pozytywka export directory: five JSON-lines files, plain or xz/gz-compressed, streamed
line by line. Every line that cannot be read is counted by reason with its first example."""
from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from tqdm import tqdm

from models.columns import KIND_CODE, EventColumns
from models.events import BUY_PREMIUM, Catalogue
from models.parsing import parse_artist, parse_event, parse_storage, parse_track, parse_user
from models.rejections import Rejected, Rejections
from models.gc_pause import paused_gc

from .session_reader import read_session_file

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


CHUNK = 16 << 20


def digest_of_bytes():
    """The fingerprint's hash: SHA-256, hardware-accelerated here (1.5 GB/s against BLAKE2's
    0.66), so hashing is not what a read of a 2 GB export waits for."""
    return hashlib.sha256()


def iter_blocks(path: Path, desc: str | None = None, progress: bool = True, digest=None,
                size: int = CHUNK) -> Iterator[bytearray]:
    """The file as blocks of whole lines (no final line end), ~``size`` bytes each, read with a
    progress bar over the bytes of the file on disk. Blocks keep per-line overhead off the hot
    loop: hashing and progress happen once per block. Each block is a new buffer the file is
    read straight into (after the previous block's unfinished line): no 16 MB copies."""
    total = path.stat().st_size
    with open(path, "rb") as raw_fh, tqdm(total=total, desc=desc or path.name, unit="B", unit_scale=True,
                                          disable=None if progress else True, leave=False,
                                          mininterval=0.5) as bar:
        fh = raw_fh if not path.name.endswith((".xz", ".gz", ".bz2")) else open_binary(path)
        try:
            tail = b""
            last_pos = 0
            while True:
                buf = bytearray(len(tail) + size)
                buf[:len(tail)] = tail
                view = memoryview(buf)
                got = fh.readinto(view[len(tail):])
                view.release()
                if not got:
                    break
                if digest is not None:
                    digest.update(memoryview(buf)[len(tail):len(tail) + got])
                end = len(tail) + got
                cut = buf.rfind(b"\n", 0, end)
                pos = raw_fh.tell()
                bar.update(pos - last_pos)
                last_pos = pos
                if cut < 0:
                    tail = bytes(buf[:end])
                    continue
                tail = bytes(buf[cut + 1:end])
                del buf[cut:]
                yield buf
            if tail:
                yield bytearray(tail)
        finally:
            if fh is not raw_fh:
                fh.close()


def iter_chunks(path: Path, desc: str | None = None, progress: bool = True, digest=None) -> Iterator[list[bytes]]:
    """Lists of lines (bytes, no line ends; blank ones included)."""
    for block in iter_blocks(path, desc, progress, digest, 4 << 20):
        yield bytes(block).split(b"\n")


@dataclass
class Dataset:
    columns: EventColumns
    catalogue: Catalogue
    rejections: Rejections
    lines: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def events(self) -> EventColumns:
        """The events in file order (a sequence of ``Event`` made on the fly from the columns)."""
        return self.columns

    @property
    def missing(self) -> list[str]:
        return [name for name in FILES if name not in self.files]


def read_sessions(path: Path, rejections: Rejections, progress: bool = True) -> tuple[EventColumns, int, str]:
    """Events in file order, as columns (``session_reader.py``). Exact duplicate lines inside a
    session are rejected as ``sessions/duplicate_line`` (sessions are contiguous, so only the
    current one is remembered)."""
    digest = digest_of_bytes()
    columns, n = read_session_file(iter_blocks(path, "sessions", progress, digest), rejections)
    return columns, n, digest.hexdigest()


_interned: dict[str, str] = {}


def _intern(s: str) -> str:
    return _interned.setdefault(s, s)


def _read_records(path: Path, name: str, parse, rejections: Rejections, progress: bool):
    loads = orjson.loads
    n = 0
    digest = digest_of_bytes()
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
    ds = Dataset(EventColumns.empty(), Catalogue(), rejections)
    digests = []
    if with_sessions:
        sessions = find_file(directory, "sessions")
        if sessions is None:
            raise DataError(f"no sessions.jsonl(.xz|.gz) in {directory}")
        ds.columns, ds.lines["sessions"], d = read_sessions(sessions, rejections, progress)
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
    if with_sessions:
        buy = ds.columns.kind == KIND_CODE[BUY_PREMIUM]
        cat.buyers = frozenset(np.unique(ds.columns.user[buy]).tolist())
    else:
        sessions = find_file(directory, "sessions")
        if sessions is not None:  # a replay of an export: its buyers, without reading its plays
            cat.buyers = buyers_in(sessions)
    ds.fingerprint = hashlib.blake2b("".join(digests).encode(), digest_size=12).hexdigest()
    return ds


_BUY = re.compile(rb"(?i)buy_?premium")


def buyers_in(path: Path) -> frozenset[int]:
    """The users of every ``buy_premium`` event in a sessions file: only the lines that name the
    event are parsed (any spelling, either line form)."""
    users = set()
    for block in iter_blocks(path, progress=False):
        end = -1
        for m in _BUY.finditer(block):
            if m.start() < end:
                continue  # the line already read
            start = block.rfind(b"\n", 0, m.start()) + 1
            end = block.find(b"\n", m.end())
            end = len(block) if end < 0 else end
            try:
                e = parse_event(orjson.loads(bytes(block[start:end])))
            except (orjson.JSONDecodeError, Rejected):
                continue
            if e.kind == BUY_PREMIUM:
                users.add(e.user_id)
    return frozenset(users)
