"""Read ``sessions.jsonl`` into columns, a chunk of lines at a time.

Most lines of every release are plain JSON objects in one of two timestamp forms (naive ISO or
epoch milliseconds). Those are parsed in batches by Arrow's JSON reader (C++, both cores) and
checked with array operations; every line that does not pass those checks exactly, and every
chunk Arrow cannot read at all (positional arrays, a type that changes, bad JSON), goes through
the one per-line parser (``models.parsing.decode_event``), which names the reason of a rejection.
The vectorised checks accept only what that parser accepts, with the same values: a test reads
every variant and every kind of noise both ways and compares."""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, Full, Queue
from threading import Event, Thread

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from models.columns import DTYPES, KIND_CODE, EventColumns
from models.events import TRACK_EVENTS
from models.gc_pause import release_free_memory
from models.contract import is_track_id
from models.parsing import _EXACT, MAX_ID, TimeWindow, decode_event, event_kind
from models.rejections import Rejected, Rejections

ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?$"
"""The naive ISO form the fast path takes (``2023-06-17T10:09:50.547000``); any other string
(an offset, a space, seven digits of fraction) is left to the per-line parser."""
TRACK_KINDS = np.array([k in TRACK_EVENTS for k in KIND_CODE], bool)
_NONE, _BAD, _EMPTY = -1, -2, -3
_IS_SPACE = np.zeros(256, bool)
_IS_SPACE[list(b" \t\n\r\x0b\x0c")] = True  # what bytes.isspace() calls whitespace


class _Lines:
    """The lines of a block, sliced out only when asked for (the batch path never asks)."""

    __slots__ = ("block", "starts", "stops")

    def __init__(self, block: bytes | bytearray, starts: np.ndarray, stops: np.ndarray):
        self.block, self.starts, self.stops = memoryview(block), starts, stops

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> bytes:
        return bytes(self.block[int(self.starts[i]):int(self.stops[i])])


class _Subset:
    __slots__ = ("lines", "rows")

    def __init__(self, lines, rows: np.ndarray):
        self.lines, self.rows = lines, rows.tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> bytes:
        return self.lines[self.rows[i]]


def _lines_of(block: bytes | bytearray) -> "_Lines | list[bytes]":
    """The block's lines found by one vectorised scan for line ends; a list without the blank
    lines when there are any (a blank line is empty or starts with whitespace)."""
    if not block:
        return []
    b = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(b == 10)
    starts = np.empty(len(ends) + 1, np.int64)
    starts[0] = 0
    starts[1:] = ends + 1
    stops = np.append(ends, len(b))
    first = b[np.minimum(starts, len(b) - 1)]
    if np.any((stops == starts) | _IS_SPACE[first]):
        return [raw for raw in bytes(block).split(b"\n") if raw and not raw.isspace()]
    return _Lines(block, starts, stops)


def _schema(ts_type: pa.DataType) -> pa.Schema:
    return pa.schema([("session_id", pa.int64()), ("timestamp", ts_type), ("user_id", pa.int64()),
                      ("track_id", pa.string()), ("event_type", pa.string()), ("next_track_id", pa.string())])


class SessionReader:
    """Accumulates the events of one file, chunk by chunk, in file order."""

    def __init__(self, rejections: Rejections, now: float | None = None):
        self.rejections = rejections
        self.window = TimeWindow()  # an export holds no event from before the era or the future
        self.now = time.time() if now is None else now
        self.tracks: list[str] = []
        self._index: dict[str, int] = {}
        self._parts: list[EventColumns] = []
        self._session: int | None = None  # the session of the last line taken
        self._seen: set[bytes] = set()  # its lines, for the duplicate check across chunks
        self._kind_codes: dict[str, int] = {}
        self._track_codes: dict[str, int] = {}
        self._schema: pa.Schema | None = None
        self._fast = True
        self.lines = 0
        self.fast_lines = 0

    # ---- the per-chunk work -----------------------------------------------------------------
    def add(self, block: bytes | bytearray | list[bytes]) -> None:
        """A block of whole lines (or its lines; blank ones included, as read)."""
        self.take(self.decode(block))

    def decode(self, block: bytes | bytearray | list[bytes]) -> "Decoded":
        """The Arrow half of a block's work: touches no state but the schema (chosen on the
        first block), and releases the GIL, so two blocks decode at once on two threads."""
        lines = (_lines_of(block) if isinstance(block, (bytes, bytearray))
                 else [raw for raw in block if raw and not raw.isspace()])
        if isinstance(lines, list):
            block = None
        out = Decoded(lines)
        if not len(lines) or not self._fast:
            return out
        if self._schema is None:
            try:
                first = orjson.loads(lines[0])
            except orjson.JSONDecodeError:
                return out
            if type(first) is not dict:
                if type(first) is list:
                    self._fast = False  # the positional release: every line goes the exact way
                return out
            self._schema = _schema(pa.int64() if type(first.get("timestamp")) is int else pa.string())
        try:
            data = pa.py_buffer(block) if block is not None else pa.py_buffer(b"\n".join(lines))
            # one Arrow block per call, single-threaded: two calls run at once on the two cores,
            # where Arrow's own threads over 2 MB blocks scaled to 1.4x (a chunk per column, too)
            table = pj.read_json(pa.BufferReader(data),
                                 read_options=pj.ReadOptions(block_size=max(1 << 20, data.size + 1), use_threads=False),
                                 parse_options=pj.ParseOptions(explicit_schema=self._schema,
                                                               unexpected_field_behavior="ignore"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return out
        if table.num_rows != len(lines):
            return out
        ids = {name: table.column(name).combine_chunks().fill_null(-1).to_numpy(zero_copy_only=False)
               for name in ("user_id", "session_id")}
        arr = table.column("timestamp").combine_chunks()
        valid = ~arr.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_integer(arr.type):
            stamp = arr.fill_null(-1).to_numpy(zero_copy_only=False)
        else:
            valid &= pc.match_substring_regex(arr, ISO).fill_null(False).to_numpy(zero_copy_only=False)
            try:
                stamp = pc.cast(pc.if_else(pa.array(valid), arr, pa.scalar(None, pa.string())),
                                pa.timestamp("us")).cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return out  # an impossible date (2023-02-30): the per-line parser names it
        out.arrays = (ids["user_id"], ids["session_id"], pa.types.is_integer(arr.type), stamp, valid,
                      *(pc.dictionary_encode(table.column(name)).combine_chunks()
                        for name in ("event_type", "track_id", "next_track_id")))
        return out

    def take(self, decoded: "Decoded") -> None:
        """The in-order half: codes, checks, the per-line parser for what the checks refused,
        duplicates. Blocks must be taken in file order."""
        lines = decoded.lines
        n = len(lines)
        if not n:
            return
        self.lines += n
        cols = [np.empty(n, d) for d in DTYPES]
        ok = self._check(decoded.arrays, cols) if decoded.arrays is not None else None
        taken = np.zeros(n, bool) if ok is None else ok
        self.fast_lines += int(np.count_nonzero(taken))
        rest = np.flatnonzero(~taken)
        if len(rest):
            self._parse_exact(lines, rest, cols, taken)
        keep = np.flatnonzero(taken)
        part = EventColumns(*(c[keep] for c in cols), self.tracks)
        dup = self._duplicates(part, lines if len(keep) == n else _Subset(lines, keep))
        if dup is not None:
            part = part.take(np.flatnonzero(~dup))
        self._parts.append(part)

    def columns(self) -> EventColumns:
        out = EventColumns.concat(self._parts, self.tracks)
        self._parts = []
        return out

    # ---- the batch path ---------------------------------------------------------------------
    def _check(self, arrays: tuple, cols: list[np.ndarray]) -> np.ndarray:
        """Fill ``cols`` from Arrow's arrays; the mask of the rows the checks vouch for."""
        user, session, epoch_ms, stamp, valid, kinds, tracks, nexts = arrays
        ts_col, hour_col, user_col, session_col, kind_col, track_col, next_col = cols
        ok = valid.copy()
        for values, out in ((user, user_col), (session, session_col)):
            ok &= (values >= 0) & (values <= MAX_ID)
            out[:] = values
        if epoch_ms:
            # parse_timestamp: ms / 1000.0, the hour of that UTC time
            ok &= (stamp >= 0) & (stamp < 10**14)
            ts_col[:] = np.where(ok, stamp, 0) / 1000.0
            hour_col[:] = np.floor_divide(ts_col, 3600.0) % 24
        else:
            # the minute, exact, plus the seconds as written (float("50.547") is the quotient of
            # two exact integers, correctly rounded alike), and the hour as written
            minute = stamp // 60_000_000
            ts_col[:] = (minute * 60).astype(np.float64) + (stamp - minute * 60_000_000) / 1e6
            hour_col[:] = (stamp // 3_600_000_000) % 24
        ok &= (ts_col >= self.window.earliest) & (ts_col <= self.now + self.window.max_ahead)
        kind = _codes(kinds, self._kind_codes, self._kind_code)
        ok &= kind >= 0
        kind_col[:] = np.maximum(kind, 0)
        needs_track = TRACK_KINDS[kind_col]
        for enc, out, required in ((tracks, track_col, needs_track), (nexts, next_col, None)):
            ix = _codes(enc, self._track_codes, self._track_code, null=_NONE)
            ok &= ix != _BAD
            if required is not None:
                ok &= ~required | (ix >= 0)
            out[:] = np.where(ix >= 0, ix, _NONE)
        return ok

    def _kind_code(self, value: str) -> int:
        kind = _EXACT.get(value)
        if kind is None:
            try:
                kind = event_kind(value)
            except Rejected:
                return _BAD
        return KIND_CODE[kind]

    def _track_code(self, value: str) -> int:
        if value == "":
            return _EMPTY  # None where a track may be absent, missing where it may not
        if not is_track_id(value):
            return _BAD
        return self._intern(value)

    def _intern(self, track: str) -> int:
        i = self._index.get(track)
        if i is None:
            i = self._index[track] = len(self.tracks)
            self.tracks.append(track)
        return i

    # ---- the exact path ---------------------------------------------------------------------
    def _parse_exact(self, lines: list[bytes], rows: np.ndarray, cols: list[np.ndarray], taken: np.ndarray) -> None:
        ts_col, hour_col, user_col, session_col, kind_col, track_col, next_col = cols
        check, now, reject = self.window.check, self.now, self.rejections.add
        for i in rows.tolist():
            raw = lines[i]
            try:
                e = check(decode_event(raw), now)
            except Rejected as r:
                reject("sessions/" + r.reason, raw)
                continue
            ts_col[i], hour_col[i], user_col[i], session_col[i] = e.ts, e.hour, e.user_id, e.session_id
            kind_col[i] = KIND_CODE[e.kind]
            track_col[i] = _NONE if e.track_id is None else self._intern(e.track_id)
            next_col[i] = _NONE if e.next_track_id is None else self._intern(e.next_track_id)
            taken[i] = True

    # ---- duplicate lines --------------------------------------------------------------------
    def _duplicates(self, part: EventColumns, raws: list[bytes]) -> np.ndarray | None:
        """Exact repeats of a line within its session (a session is a run of one session id,
        as the per-line reader always had it). Only lines whose every field repeats an earlier
        line of the run can repeat it byte for byte: those few are compared as bytes."""
        n = len(part)
        if n == 0:
            return None
        session = part.session
        run = np.zeros(n, np.int64)
        run[1:] = np.cumsum(session[1:] != session[:-1])
        continues = self._session is not None and int(session[0]) == self._session
        dup = np.zeros(n, bool)
        # a repeated line repeats every field in its run: rows whose hash of those repeats are
        # the only candidates (usually none), compared as bytes below
        h = part.ts.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for k, mult in ((run, 0xC2B2AE3D27D4EB4F), (part.user, 0x165667B19E3779F9), (part.kind, 0x27D4EB2F165667C5),
                        (part.track, 0x85EBCA77C2B2AE63), (part.next_track, 0xFF51AFD7ED558CCD)):
            h ^= k.astype(np.uint64) * np.uint64(mult)
            h = (h << np.uint64(13)) | (h >> np.uint64(51))
        hs = np.sort(h)
        repeated = hs[1:][hs[1:] == hs[:-1]]
        candidates = np.flatnonzero(np.isin(h, repeated)).tolist() if len(repeated) else []
        first_run_end = int(np.searchsorted(run, 1)) if continues else 0
        seen_before = self._seen if continues else set()
        # rows of the run that continues the previous chunk: compared with that chunk's lines
        for i in range(first_run_end):
            raw = raws[i]
            if raw in seen_before:
                dup[i] = True
            else:
                seen_before.add(raw)
        groups: dict[tuple, set[bytes]] = {}
        for i in candidates:
            if i < first_run_end:
                continue
            key = (int(run[i]), float(part.ts[i]), int(part.kind[i]), int(part.track[i]), int(part.next_track[i]),
                   int(part.user[i]))
            bucket = groups.setdefault(key, set())
            if raws[i] in bucket:
                dup[i] = True
            else:
                bucket.add(raws[i])
        last_run = int(run[-1])
        start = int(np.searchsorted(run, last_run))
        if continues and last_run == 0:
            self._seen = seen_before
        else:
            self._seen = {raws[i] for i in range(start, n) if not dup[i]}
        self._session = int(session[-1])
        for i in np.flatnonzero(dup).tolist():
            self.rejections.add("sessions/duplicate_line", raws[i])
        return dup if dup.any() else None


def _codes(enc: pa.DictionaryArray, known: dict[str, int], code_of, null: int = _BAD) -> np.ndarray:
    """Each row's code: ``code_of`` applied once per distinct value (remembered in ``known``),
    ``null`` for a null."""
    get = known.get
    lut = []
    for v in enc.dictionary.to_pylist():
        code = get(v)
        if code is None:
            code = known[v] = code_of(v)
        lut.append(code)
    lut.append(null)
    lut = np.array(lut, np.int64)
    idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return lut[idx]


def _prefetched(blocks, depth: int = 2):
    """``blocks`` read (and hashed, decompressed) on a thread of their own, ``depth`` ahead."""
    q: Queue = Queue(depth)
    done = object()
    failure: list[BaseException] = []
    stop = Event()

    def produce() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        q.put(block, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            failure.append(exc)
        finally:
            q.put(done)

    thread = Thread(target=produce, name="sessions-read", daemon=True)
    thread.start()
    try:
        while True:
            block = q.get()
            if block is done:
                break
            yield block
        if failure:
            raise failure[0]
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except Empty:
                thread.join(0.05)


class Decoded:
    __slots__ = ("lines", "arrays")

    def __init__(self, lines):
        self.lines = lines
        self.arrays: tuple | None = None  # None: the per-line parser reads every line


def read_session_file(blocks, rejections: Rejections) -> tuple[EventColumns, int]:
    """Events in file order from ``blocks`` (of whole lines) and the lines read: two blocks
    decode on two threads while the main thread takes the one before them in order."""
    reader = SessionReader(rejections)
    it = _prefetched(blocks)
    first = next(it, None)
    if first is None:
        return reader.columns(), 0
    reader.take(reader.decode(first))  # the first block chooses the schema
    with ThreadPoolExecutor(2, thread_name_prefix="sessions") as pool:
        ahead: deque = deque()
        for block in it:
            ahead.append(pool.submit(reader.decode, block))
            if len(ahead) > 2:
                reader.take(ahead.popleft().result())
        while ahead:
            reader.take(ahead.popleft().result())
    columns, lines = reader.columns(), reader.lines
    del reader
    # the blocks' parsed tables are gone: Arrow's pool and the C heap keep their pages (0.57 GiB
    # after a 15M-event file, measured) unless told to give them back
    pa.default_memory_pool().release_unused()
    release_free_memory()
    return columns, lines
