"""A CSV file's rows read, parsed and prepared in a child process, a chunk at a time.

The importer's own process then only records (`registry.behaviour.import_rows`): Python runs under one
interpreter lock per process, and parsing and preparing (`RowPreparer`) are about half of the import's
Python work, so a second process lets it use a second core. The child gets the `RowPreparer` (rules,
receipt time, factor snapshot: all it needs, no database) and sends back each chunk of prepared
`Row`s pickled (`Row.__reduce__`), framed by its length, on its standard output. At most the chunk
being sent and the one being prepared are in the child; the pipe blocks it while the importer is
behind, so memory stays bounded whatever the file's size.

The child runs as ``python -m registry.behaviour_prepare`` (the interpreter of the importer), so
nothing of the parent (threads, connections, the Flask app) is copied into it.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from typing import IO, Any

from registry.behaviour_impl import fast
from registry.behaviour_rules import Row, RowPreparer, Rules, fewer_collections

_FRAME = struct.Struct("<Q")
# The peak resident memory (kB) the last preparing process reported of itself (for the benchmark).
PEAK_KB: dict[str, int] = {"last": 0}

# PostgreSQL's binary COPY format (https://www.postgresql.org/docs/current/sql-copy.html): a header, per
# row a 16-bit field count then per field a 32-bit length (-1: NULL) and the value (big-endian
# integers; timestamp: microseconds since 2000-01-01; date: days since then), and a -1 trailer.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
NULL = struct.pack(">i", -1)
_INT4 = struct.Struct(">ii")
_INT8 = struct.Struct(">iq")
_LEN = struct.Struct(">i")
_TS2 = struct.Struct(">iqiq")
_EPOCH = dt.datetime(2000, 1, 1)
_EPOCH_DAY = _EPOCH.date()
_US = dt.timedelta(microseconds=1)

# The columns packed here, in the order of the COPY column lists of `registry.behaviour` (the
# database-dependent ones follow them there).
EVENT_PACKED = ("line_no", "event_id", "user_ref", "code", "started_at", "ended_at", "day", "variant", "quantity",
                "factors")
STAGE_PACKED = ("line_no", "event_id", "user_ref", "user_id", "code", "started_at", "ended_at", "day_lo", "day_hi",
                "scan_lo", "scan_hi")


def int4(v: int | None) -> bytes:
    return NULL if v is None else _INT4.pack(4, v)


def int8(v: int | None) -> bytes:
    return NULL if v is None else _INT8.pack(8, v)


def text(v: str | None) -> bytes:
    if v is None:
        return NULL
    b = v.encode()
    return _LEN.pack(len(b)) + b


def timestamp(v: dt.datetime | None) -> bytes:
    return NULL if v is None else _INT8.pack(8, (v - _EPOCH) // _US)


class Packer:
    """Packs prepared rows' database-independent fields (`EVENT_PACKED`, and for the rows still
    pending `STAGE_PACKED`, with the day bounds `registry.behaviour._stage` computes), memoising the
    few distinct values (types, days, quantities, factors)."""

    def __init__(self, rules: Rules) -> None:
        self.offset = dt.timedelta(hours=rules.day_utc_offset_h)
        self.longest_us = rules.max_duration_h * 3_600_000_000
        self._texts: dict[str | None, bytes] = {None: NULL}
        self._days: dict[dt.date, tuple[bytes, int, bytes]] = {}
        self.stage_head = struct.pack(">h", len(STAGE_PACKED) + 1)   # + the user id

    @staticmethod
    def event_head_for() -> bytes:
        """An event row's field count: batch, partner, programme, `EVENT_PACKED`, then user id,
        reduction, points, status, reason, detail (`registry.behaviour._insert_packed`)."""
        return struct.pack(">h", 3 + len(EVENT_PACKED) + 6)

    def _text(self, v: str | None) -> bytes:
        b = self._texts.get(v)
        if b is None:
            b = self._texts[v] = text(v)
        return b

    def _day(self, day: dt.date) -> tuple[bytes, int, bytes]:
        """The day's packed date, the microseconds of its end and its packed UTC bounds."""
        got = self._days.get(day)
        if got is None:
            lo = (dt.datetime.combine(day, dt.time()) - self.offset - _EPOCH) // _US
            hi = lo + 86_400_000_000
            got = self._days[day] = (_INT4.pack(4, (day - _EPOCH_DAY).days), hi, _TS2.pack(8, lo, 8, hi))
        return got

    def pack(self, r: Row) -> None:
        texts = self._texts
        b = r.event_id.encode()
        ident = _INT4.pack(4, r.line_no) + _LEN.pack(len(b)) + b
        if r.user_ref is None:
            ident += NULL
        else:
            b = r.user_ref.encode()
            ident += _LEN.pack(len(b)) + b
        code = texts.get(r.code) or self._text(r.code)
        if r.started_at is None or r.ended_at is None or r.day is None:   # rejected before its times were read
            r.packed_event = b"".join((ident, code, NULL, NULL, NULL if r.day is None else self._day(r.day)[0],
                                       self._text(r.variant), self._text(r.quantity), self._text(r.factors)))
            return
        start, end = (r.started_at - _EPOCH) // _US, (r.ended_at - _EPOCH) // _US
        times = _TS2.pack(8, start, 8, end)
        day, day_hi, bounds = self._days.get(r.day) or self._day(r.day)
        r.packed_event = b"".join((ident, code, times, day, texts.get(r.variant) or self._text(r.variant),
                                   texts.get(r.quantity) or self._text(r.quantity),
                                   texts.get(r.factors) or self._text(r.factors)))
        if r.status is None:
            r.packed_stage = b"".join((self.stage_head, ident, NULL if r.user_id is None else _INT8.pack(8, r.user_id),
                                       code, times, bounds,
                                       _TS2.pack(8, start - self.longest_us, 8, max(day_hi, end))))


def start() -> subprocess.Popen[bytes]:
    """A preparing process, started (its interpreter and imports: ~0.4 s) before it is given its work
    by `prepared_chunks`. Until then it waits on its standard input; closing that ends it."""
    # The child imports this very `registry` package, wherever the parent found it.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    return subprocess.Popen([sys.executable, "-m", "registry.behaviour_prepare"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a preparing process `prepared_chunks` was not given (or has finished with)."""
    for f in (proc.stdin, proc.stdout):
        if f is not None and not f.closed:
            f.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def prepared_chunks(path: str, preparer: RowPreparer, skip: int, chunk_size: int,
                    on_bytes: Callable[[int], None] | None = None, packed: bool = False,
                    started: subprocess.Popen[bytes] | None = None) -> Iterator[list[Row]]:
    """The prepared rows of the CSV file `path` after line `skip`, `chunk_size` at a time, in line
    order, as `RowPreparer.prepare` would make them here (line numbers count the data rows from 1).
    `packed` (for PostgreSQL): the rows carry only what recording them needs, the rest is packed
    for COPY (`Packer`): `started_at`, `ended_at`, `variant`, `quantity` and `factors` are None.
    `on_bytes(n)` hears of the bytes read once per chunk. An error of the child (an unreadable file, a
    bad header: `InvalidInput`) is raised here; closing the iterator stops the child. `started`: a
    child from `start` to use (else one is started now). The child is given its work at once."""
    proc = started if started is not None else start()
    assert proc.stdin is not None and proc.stdout is not None
    try:
        # Given its work at once, so that it prepares the first chunk while the caller gets ready.
        pickle.dump((path, preparer, skip, chunk_size, packed), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.close()
    except BaseException:
        stop(proc)
        raise
    return _Received(proc, path, on_bytes)


class _Received:
    """The chunks a preparing process sends (`prepared_chunks`); `close` stops it, read to the end
    or not."""

    def __init__(self, proc: subprocess.Popen[bytes], path: str, on_bytes: Callable[[int], None] | None) -> None:
        self.proc, self.path, self.on_bytes = proc, path, on_bytes
        self.chunks = self._chunks()

    def __iter__(self) -> Iterator[list[Row]]:
        return self

    def __next__(self) -> list[Row]:
        return next(self.chunks)

    def close(self) -> None:
        self.chunks.close()
        stop(self.proc)

    def _chunks(self) -> Generator[list[Row], None, None]:
        proc, on_bytes, rows_of = self.proc, self.on_bytes, fast("rows_of")
        assert proc.stdout is not None
        read = proc.stdout.read
        try:
            while True:
                head = read(_FRAME.size)
                if len(head) < _FRAME.size:
                    raise RuntimeError(f"the process preparing {self.path} ended early (exit status {proc.wait()})")
                kind, n, payload = pickle.loads(read(_FRAME.unpack(head)[0]))
                if n and on_bytes is not None:
                    on_bytes(n)
                if kind == "rows":
                    yield payload
                elif kind == "packed":
                    yield rows_of(payload)
                elif kind == "error":
                    raise payload
                else:
                    PEAK_KB["last"] = payload
                    return
        finally:
            stop(proc)


def _send(out: IO[bytes], message: tuple[str, int, Any]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_FRAME.pack(len(data)))
    out.write(data)
    out.flush()


def _peak_kb() -> int:
    """This process's peak resident set since it started this program (`VmHWM`: unlike `getrusage`,
    not the size of the parent it was forked from)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def chunk_packer() -> type[Any]:
    """`ChunkPacker`, compiled or of the source (see `fast`)."""
    return fast("ChunkPacker")   # type: ignore[no-any-return]


# Chunks of at least this many rows are sent smaller at the start and at the end of a file (`Sizes`).
RAMP_FROM = 4000


class Sizes:
    """The sizes of the chunks sent for a file of `total` bytes (None: unknown) with `chunk_size` rows
    a chunk: the first three are an eighth, a quarter and a half of it, so that the importer starts
    recording while this process still computes the file's first distinct activities (the slowest
    rows: ~0.9 s for the first 20,000 of the benchmark, 0.3 s for the next), and once fewer than
    `chunk_size` rows seem to be left (by the bytes read so far) a quarter, so that the last one
    takes less time to record after it is sent. Chunks smaller than `RAMP_FROM` rows are sent as
    they are. Every chunk is a transaction of its own either way.

    (Small first chunks once cost 10-15 s in a third of the runs: with `behaviour_events` nearly
    empty after a TRUNCATE and its statistics saying empty, the lookup's duplicate probe was planned
    as a whole scan of the span index per row. That index's predicate now excludes it: migration
    0014, `test_the_lookup_probes_the_events_by_index_after_a_truncate`.)"""

    def __init__(self, chunk_size: int, total: int | None) -> None:
        self.full, self.total = chunk_size, total
        self.ramp = chunk_size >= RAMP_FROM
        self.sent = 0
        self.read = 0        # bytes read so far (`on_bytes`)
        self.rows = 0        # rows read so far

    def next(self) -> int:
        """The size of the next chunk."""
        if not self.ramp:
            return self.full
        self.sent += 1
        if self.sent <= 3:
            return self.full >> (4 - self.sent)
        if self.total is not None and self.read and self.rows:
            left = (self.total - self.read) * self.rows // self.read
            if left < self.full:
                return self.full // 4
        return self.full


def _send_packed(fp: IO[bytes], on_bytes: Callable[[int], None], preparer: RowPreparer, packer: Packer, skip: int,
                 chunk_size: int, send: Callable[[tuple[Any, ...]], None]) -> None:
    """Read, prepare and pack the records after line `skip` (`behaviour_fast.ChunkPacker`), and
    `send` the columns of each chunk of at most `chunk_size` (see `Sizes`)."""
    from registry.behaviour_io import csv_records

    try:
        total: int | None = os.fstat(fp.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        total = None
    sizes = Sizes(chunk_size, total)

    def counted(n: int) -> None:
        sizes.read += n
        on_bytes(n)

    got = csv_records(fp, counted)
    if got is None:
        return
    names, records = got
    chunker = chunk_packer()(preparer, packer, names)
    chunk: list[list[str]] = []
    lo = skip + 1
    size = sizes.next()
    for line_no, rec in enumerate(records, start=1):
        sizes.rows = line_no
        if line_no <= skip:
            continue
        chunk.append(rec)
        if len(chunk) >= size:
            send(chunker.pack_chunk(lo, chunk))
            lo += len(chunk)
            chunk = []
            size = sizes.next()
    if chunk:
        send(chunker.pack_chunk(lo, chunk))


def _main() -> None:
    from registry.behaviour_io import csv_rows

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)   # anything printed goes to standard error, not into the frames
    try:
        path, preparer, skip, chunk_size, packed = pickle.load(sys.stdin.buffer)
    except EOFError:
        return   # started ahead (`start`) and not needed after all
    packer = Packer(preparer.rules) if packed else None

    def send(chunk: list[Row]) -> None:
        _send(out, ("rows", sent(), chunk))

    read = 0

    def on_bytes(n: int) -> None:
        nonlocal read
        read += n

    def sent() -> int:
        nonlocal read
        n, read = read, 0
        return n

    try:
        with fewer_collections(), open(path, "rb") as fp:
            if packer is not None:
                _send_packed(fp, on_bytes, preparer, packer, skip, chunk_size, lambda cols: _send(
                    out, ("packed", sent(), cols)))
            else:
                chunk: list[Row] = []
                prepare = preparer.prepare
                for line_no, raw in enumerate(csv_rows(fp, on_bytes), start=1):
                    if line_no <= skip:
                        continue
                    chunk.append(prepare(line_no, raw))
                    if len(chunk) >= chunk_size:
                        send(chunk)
                        chunk = []
                if chunk:
                    send(chunk)
        _send(out, ("end", sent(), _peak_kb()))
    except BrokenPipeError:
        pass   # the importer stopped reading (it failed or was interrupted)
    except Exception as e:   # noqa: BLE001 - every error is the importer's to raise
        try:
            pickle.dumps(e)
        except Exception:   # noqa: BLE001
            e = RuntimeError(f"{type(e).__name__}: {e}")
        try:
            _send(out, ("error", sent(), e))
        except BrokenPipeError:
            pass


if __name__ == "__main__":
    _main()
