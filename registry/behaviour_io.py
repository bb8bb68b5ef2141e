"""Streaming readers for behaviour batches: CSV files and JSON bodies, one row at a time.

Neither ever holds more than one row (and a read buffer) in memory, whatever the size of the input.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import IO, Any

from registry import behaviour
from registry.behaviour_rules import Row, RowPreparer, Rules
from registry.errors import InvalidInput

CSV_COLUMNS = ("event_id", "user", "user_id", "type", "started_at", "ended_at", "mode", "distance_km",
               "category", "weight_kg")
MAX_JSON_ROW = 64 * 1024
_READ = 64 * 1024
PREPARE_APART_BYTES = 4 << 20   # ~40,000 rows


class _Counted(io.RawIOBase):
    """A binary stream that tells `on_bytes(n)` how many bytes each read took (the progress bar)."""

    def __init__(self, fp: IO[bytes], on_bytes: Callable[[int], None] | None) -> None:
        self.fp, self.on_bytes = fp, on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.fp.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if self.on_bytes is not None and n:
            self.on_bytes(n)
        return n


def csv_rows(fp: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> Iterator[dict[str, str]]:
    """Rows of a UTF-8 CSV file with a header line (columns: see `CSV_COLUMNS`; `user` or `user_id`;
    unknown columns are ignored). `on_bytes(n)` is told of every block of `_READ` bytes read (progress).
    The file is decoded a block at a time (not a line at a time: a quarter of the cost of a million
    rows)."""
    got = csv_records(fp, on_bytes)
    if got is None:
        return
    names, records = got
    for rec in records:
        yield dict(zip(names, rec, strict=False))


def csv_records(fp: IO[bytes], on_bytes: Callable[[int], None] | None = None
                ) -> tuple[list[str], Iterator[list[str]]] | None:
    """The header's names (stripped) and the non-empty records of a CSV file as `csv_rows` reads it
    (`csv_rows` yields ``dict(zip(names, record))``); None for an empty file. Reads the header now:
    raises InvalidInput if it lacks event_id or type."""
    text = io.TextIOWrapper(io.BufferedReader(_Counted(fp, on_bytes), _READ), encoding="utf-8-sig",
                            newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        return None
    names = [h.strip() for h in header]
    if "event_id" not in names or "type" not in names:
        raise InvalidInput("the CSV header must name at least event_id and type", field="file")
    return names, filter(None, reader)   # not the blank lines (empty records)


class _JsonStream:
    def __init__(self, fp: IO[bytes]) -> None:
        self.fp = fp
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.pos = 0
        self.eof = False
        # Numbers as Decimal: a distance never passes through a binary float.
        self.json = json.JSONDecoder(parse_float=Decimal)

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.fp.read(_READ)
        self.buf = self.buf[self.pos:] + self.decoder.decode(data, final=not data)
        self.pos = 0
        if not data:
            self.eof = True
        return True

    def peek(self) -> str:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise InvalidInput(f"the body is not the expected JSON: {ch!r} expected", field="_body",
                               code="bad_json")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = self.json.raw_decode(self.buf, self.pos)
                # A number that ends the buffer may continue in the next read.
                if end < len(self.buf) or self.eof:
                    self.pos = end
                    return obj
            except json.JSONDecodeError:
                if self.eof:
                    raise InvalidInput("the body is not valid JSON", field="_body", code="bad_json") from None
            if len(self.buf) - self.pos > MAX_JSON_ROW:
                raise InvalidInput(f"a JSON value is larger than {MAX_JSON_ROW} bytes", field="_body",
                                   code="bad_json")
            self._fill()


def json_rows(fp: IO[bytes]) -> Iterator[dict[str, Any]]:
    """The objects of `{"rows": [{...}, ...]}` (other top-level keys are read and ignored), one at a
    time. Raises InvalidInput (`bad_json`) for a body of another shape."""
    s = _JsonStream(fp)
    s.expect("{")
    seen_rows = False
    if s.peek() == "}":
        s.pos += 1
    else:
        while True:
            key = s.value()
            if not isinstance(key, str):
                raise InvalidInput("the body is not valid JSON", field="_body", code="bad_json")
            s.expect(":")
            if key == "rows":
                seen_rows = True
                s.expect("[")
                if s.peek() == "]":
                    s.pos += 1
                else:
                    i = 0
                    while True:
                        row = s.value()
                        if not isinstance(row, dict):
                            raise InvalidInput(f"rows[{i}] is not an object", field=f"rows[{i}]", code="bad_json")
                        yield row
                        i += 1
                        if s.peek() == ",":
                            s.pos += 1
                            continue
                        s.expect("]")
                        break
            else:
                s.value()
            if s.peek() == ",":
                s.pos += 1
                continue
            s.expect("}")
            break
    if s.peek() != "":
        raise InvalidInput("the body has data after its JSON object", field="_body", code="bad_json")
    if not seen_rows:
        raise InvalidInput("the body needs a rows array", field="rows", code="bad_json")


def file_ref(path: str) -> str:
    """A CSV batch's default reference: the SHA-256 of the file (read in pieces)."""
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        while piece := fp.read(1 << 20):
            h.update(piece)
    return "sha256:" + h.hexdigest()


def import_csv(factory: Any, path: str, partner_code: str, *, rules: Rules | None = None,
               ref: str | None = None, chunk_size: int = 20_000,
               on_bytes: Callable[[int], None] | None = None,
               on_chunk: Callable[[behaviour.ChunkResult], None] | None = None,
               pipeline: bool = True, probe_ahead: bool = True,
               prepare_apart: bool | None = None) -> behaviour.BatchResult:
    """`flask registry import-behaviour`: stream a partner's CSV file into `registry.behaviour`
    (batch reference: `ref`, default the file's SHA-256, so importing the same file again changes
    nothing). `factory` is a SQLAlchemy sessionmaker. `prepare_apart`: read and prepare the rows in
    a child process (`registry.behaviour_prepare`) while this one records them; by default (None)
    for files of `PREPARE_APART_BYTES` or more (a child costs a fraction of a second to start).
    `on_bytes` then hears of the bytes read a chunk at a time."""
    size = os.path.getsize(path)
    # A file of more rows than the partner has external ids reads their members once (~100 bytes a row).
    preload = size // 100
    if prepare_apart is None:
        prepare_apart = pipeline and size >= PREPARE_APART_BYTES
    if prepare_apart:
        from registry import behaviour_prepare

        # Started first: its interpreter starts while this one hashes the file, opens the batch and
        # reads the members.
        child = behaviour_prepare.start()
        try:
            ref = ref or file_ref(path)
            with factory() as session:   # PostgreSQL records rows packed for COPY by the child
                packed = session.get_bind().dialect.name == "postgresql"

            def prepared(preparer: RowPreparer, skip: int, size: int) -> Iterator[list[Row]]:
                return behaviour_prepare.prepared_chunks(path, preparer, skip, size, on_bytes, packed=packed,
                                                         started=child)

            return behaviour.import_rows(factory, partner_code, ref, "csv", (), rules=rules, chunk_size=chunk_size,
                                         on_chunk=on_chunk, pipeline=pipeline, probe_ahead=probe_ahead,
                                         preload_members=preload, prepared=prepared)
        finally:
            behaviour_prepare.stop(child)   # if it was not given the file (a replay), or failed
    ref = ref or file_ref(path)
    with open(path, "rb") as fp:
        return behaviour.import_rows(factory, partner_code, ref, "csv", csv_rows(fp, on_bytes), rules=rules,
                                     chunk_size=chunk_size, on_chunk=on_chunk, pipeline=pipeline,
                                     probe_ahead=probe_ahead, preload_members=preload)
