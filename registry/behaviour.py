"""Behaviour events: partner batches in, each row accepted or rejected with a reason, both kept.

A batch (signed JSON or a CSV file) is identified per partner by a reference (the SHA-256 of its body
unless the caller names it): re-sending a batch answers with the stored outcomes and changes nothing.
Rows stream through in chunks (`chunk_size`); each chunk is one transaction through `ingest_chunk`:

1. Python (`registry.behaviour_rules.RowPreparer`): fields, type allowed for the partner, claim window,
   plausibility, the reduction in grams from the calculators (memoised per distinct activity). For a
   large CSV file this is done in a child process (`registry.behaviour_prepare`), which on PostgreSQL
   also packs each row's database-independent fields for binary COPY (`Row.packed_event`,
   `Row.packed_stage`), so that this process only records.
2. The rows that passed go into a per-connection scratch table (binary COPY on PostgreSQL,
   executemany on SQLite), and ONE query joins them with the members and external ids (unknown
   user; only for members the import has not met yet: `MemberMemo`) and the accepted events:
   duplicate partner + event id; the user's events of the type that day (the daily cap); the same
   user, type and time span accepted from another partner. A large import reads the members behind
   the partner's external ids into the memo once at its start (`MemberMemo.preload`). On PostgreSQL
   this probe is made ahead, on a second connection while the chunk before is being recorded
   (`Probe`), and used only if nobody else recorded in the programme since its snapshot.
3. Python classifies in row order (a duplicate or over-cap row inside the chunk sees the earlier ones)
   and computes each accepted row's points with the member's carry (see `Rules`).
4. Every row of the chunk goes into `behaviour_events` (COPY / executemany); then set-based: the
   programme's day totals (`ProgrammeDay`), the batch counters, the programme's chunk count
   (`ProgrammeHead`), one audit record. Not the members' reduction records: the import's memo
   carries them on (see `MemberMemo`), and they are settled once per batch (`settle`,
   `settle_batch`), or before anyone else reads them.
5. When every row is recorded, `complete_batch` credits the batch's points: one `earn` entry per
   user, from the counts made while recording (or, after a resumed import, one INSERT..SELECT over
   the batch's accepted rows), while `settle_batch` adds the batch's grams to its members' records
   on another connection. Until then the points are on the rows but not in the balance; an
   interrupted import resumes and completes.

Chunks of one programme are recorded one at a time (a PostgreSQL advisory lock per chunk
transaction; SQLite has one writer), so the cap and cross-channel checks see every earlier commit.
`batch.rows_done` advances with each chunk in the same transaction: an interrupted import resumes
after the last committed chunk. `import_rows` prepares (or receives, from the preparing process) the
next chunk in the calling thread while a second thread records the previous one (and a third probes
the one between, and on PostgreSQL a fourth decides its rows from that probe while the one before
is still being written: `decide_ahead`); at most three chunks are in memory here, and two in the
preparing process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
    func,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from registry import audit, partners, points
from registry import behaviour_prepare as packing
from registry.behaviour_impl import fast
from registry.behaviour_rules import (
    Row,
    RowPreparer,
    Rules,
    fewer_collections,
)
from registry.db import Base, utcnow
from registry.errors import Conflict
from registry.factors import FactorSource, FactorTable, shipped_table

if TYPE_CHECKING:
    from registry.behaviour_fast import ChunkCount, Classifier

# Compiled loops (`behaviour_fast`) hold the interpreter lock until they return: they are called a
# slice of a chunk's rows at a time, so that the thread recording (waiting on PostgreSQL, then needing
# the lock for a moment) is not kept waiting for a whole chunk's classification (~0.1 s).
SLICE = 2000
_LOCK_CLASS = 0x6268  # pg_advisory_xact_lock(class, programme_id): one importer per programme

# Seconds spent per phase of the import since the process started (for the benchmark's breakdown).
PHASES: dict[str, float] = {}
# Chunks whose database checks were made ahead ("ahead") or made again under the lock ("again").
PROBES: dict[str, int] = {"ahead": 0, "again": 0, "decided ahead": 0, "decided again": 0}


# When the import's steps happened (time.perf_counter()): the first and the last time of each (for
# the benchmark's timeline: what does not overlap).
MARKS: dict[str, list[float]] = {}


def _mark(name: str) -> None:
    t = time.perf_counter()
    got = MARKS.get(name)
    if got is None:
        MARKS[name] = [t, t]
    else:
        got[1] = t


@contextmanager
def _phase(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        PHASES[name] = PHASES.get(name, 0.0) + time.perf_counter() - t0


class BehaviourBatch(Base):
    __tablename__ = "behaviour_batches"
    __table_args__ = (
        UniqueConstraint("partner_id", "ref"),
        CheckConstraint("status IN ('open', 'complete')", name="status"),
        CheckConstraint("source IN ('api', 'csv')", name="source"),
        CheckConstraint("members_upto >= 0 AND members_upto <= rows_done", name="members_settled"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("behaviour_partners.id"))
    ref: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(10), default="open")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime)
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    reduction_g: Mapped[int] = mapped_column(BigInteger, default=0)
    points: Mapped[int] = mapped_column(BigInteger, default=0)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # Lines 1..members_upto have their accepted grams in their members' records (`settle`).
    members_upto: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class BehaviourEvent(Base):
    """Every row received, accepted or rejected (with its reason), keyed by batch and line."""

    __tablename__ = "behaviour_events"
    __table_args__ = (
        PrimaryKeyConstraint("batch_id", "line_no"),
        CheckConstraint("status IN ('accepted', 'rejected')", name="status"),
        CheckConstraint("(status = 'accepted') = (reason IS NULL)", name="reason_iff_rejected"),
        CheckConstraint("status = 'rejected' OR (user_id IS NOT NULL AND started_at IS NOT NULL)",
                        name="accepted_complete"),
        CheckConstraint("reduction_g >= 0 AND points >= 0", name="nonnegative"),
        # Nothing counts twice: a partner's event id is accepted at most once.
        Index("uq_behaviour_events_accepted", "partner_id", "event_id", unique=True,
              sqlite_where=text("status = 'accepted'"), postgresql_where=text("status = 'accepted'")),
        # `user_id IS NOT NULL` (true of every accepted event) is implied by the lookup's span probe
        # and not by its duplicate probe, which therefore cannot be planned as a scan of this index.
        Index("ix_behaviour_events_user_span", "user_id", "code", "started_at",
              sqlite_where=text("status = 'accepted' AND user_id IS NOT NULL"),
              postgresql_where=text("status = 'accepted' AND user_id IS NOT NULL")),
    )

    # No foreign keys: a million rows would make millions of key checks of the same few rows. The
    # batch, its partner and the partner's programme are written only by `ingest_chunk` from the
    # batch it holds locked, and `check_ledger` proves every event's batch and partner.
    batch_id: Mapped[int] = mapped_column(Integer)
    line_no: Mapped[int] = mapped_column(Integer)
    partner_id: Mapped[int] = mapped_column(Integer)
    programme_id: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[str] = mapped_column(String(64))
    user_ref: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    code: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    day: Mapped[dt.date | None] = mapped_column(Date)
    variant: Mapped[str | None] = mapped_column(String(32))
    quantity: Mapped[str | None] = mapped_column(String(24))
    reduction_g: Mapped[int] = mapped_column(BigInteger, default=0)
    points: Mapped[int] = mapped_column(Integer, default=0)
    factors: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(String(300))


class ProgrammeHead(Base):
    """One row per programme that has recorded behaviour: `chunks` counts the chunks ever recorded in
    it. Every chunk adds one under the programme's lock, so an importer that finds the count where its
    own previous chunk left it knows that nobody changed the members' records in between, and that
    what it remembers of them (`MemberMemo`) still holds. Anything else that changes a member's
    `reduction_g` or re-points an external id must add one too (today nothing does: members and
    external ids are only added; `settle` moves grams that were waiting into the records, which
    leaves a member's whole record, settled or waiting, as it was)."""

    __tablename__ = "behaviour_programme_heads"

    programme_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    chunks: Mapped[int] = mapped_column(BigInteger, default=0)


class ProgrammeDay(Base):
    """The accepted grams of a programme's calendar day (the events' `day`), kept by `ingest_chunk`
    in the transaction that records the events (a few rows a chunk: a feed spans a few days). Closing
    a period reads a range of these instead of the events (`registry.programme_periods`);
    `check_ledger` proves them against the events."""

    __tablename__ = "behaviour_programme_days"

    programme_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    reduction_g: Mapped[int] = mapped_column(BigInteger, default=0)


EVENT_COLUMNS = ("batch_id", "line_no", "partner_id", "programme_id", "event_id", "user_ref", "user_id",
                 "code", "started_at", "ended_at", "day", "variant", "quantity", "reduction_g", "points",
                 "factors", "status", "reason", "detail")
_EVENT_TYPES = ("int4", "int4", "int4", "int4", "varchar", "varchar", "int8", "varchar", "timestamp", "timestamp",
                "date", "varchar", "varchar", "int8", "int4", "varchar", "varchar", "varchar", "varchar")
_STAGE_COLUMNS = ("line_no", "event_id", "user_ref", "user_id", "uid", "code", "started_at", "ended_at",
                  "day_lo", "day_hi", "scan_lo", "scan_hi")
_STAGE_TYPES = ("int4", "varchar", "varchar", "int8", "int8", "varchar") + ("timestamp",) * 6
_STAGE_DDL = ("CREATE TEMP TABLE IF NOT EXISTS behaviour_stage (line_no INTEGER, event_id VARCHAR(64), "
              "user_ref VARCHAR(64), user_id BIGINT, uid BIGINT, code VARCHAR(16), started_at TIMESTAMP, "
              "ended_at TIMESTAMP, day_lo TIMESTAMP, day_hi TIMESTAMP, scan_lo TIMESTAMP, scan_hi TIMESTAMP)")
_GAIN_DDL = "CREATE TEMP TABLE IF NOT EXISTS behaviour_member_gain (id BIGINT, g BIGINT)"

# One query for every database check of a chunk, answering only where there is something to say:
# kind 0, for each staged row whose member the import has not met yet (`uid` is null: see
# `MemberMemo`), its member (by external id or user id), user id and running record (nulls: no such
# member); kind 1, each row whose event id the partner already has accepted; kind 2, each row of a
# member with accepted events of the type near its time span, `seen` = 2 × those that started in the
# row's day [day_lo, day_hi) (the UTC bounds of the programme's calendar day) + 1 if one of them
# from another partner overlaps the row's span. One range [scan_lo, scan_hi) of the span index
# covers both, because no event lasts more than `Rules.max_duration_h` (24 h). Rows of members the
# memo knows and with nothing found are not in the answer at all (most rows of a large import).
# Each probes an index per staged row, never a hash of a whole table, and walks the rows in the order
# of the index it probes, so that consecutive probes share index pages (at a million events the
# indexes no longer fit in shared buffers). The probes are LATERAL subqueries that cannot be pulled
# up (OFFSET 0): as plain joins the planner may put the events outside, and does after a TRUNCATE
# (its statistics then say the table is empty), scanning every event for every staged row. With such
# statistics it may still probe for duplicates by a whole scan of the span index while the table is
# small (it did for chunks of 5,000 rows against 2,500 events: see `behaviour_prepare.Sizes`).
# The events of this batch from line `from_line` on are left out: a probe made ahead (see `Probe`)
# must not depend on whether the chunk before it has committed yet.
# `status = 'accepted'` is a literal so that PostgreSQL uses the partial indexes.
_LOOKUP = """
WITH x AS MATERIALIZED (
  SELECT s.*, COALESCE(e.member_id,
         (SELECT mu.id FROM behaviour_members mu WHERE mu.programme_id = :programme AND mu.user_id = s.user_id))
         AS member_id
  FROM (SELECT * FROM behaviour_stage WHERE uid IS NULL ORDER BY user_ref, user_id) s
  LEFT JOIN behaviour_external_ids e ON e.partner_id = :partner AND e.external_id = s.user_ref
), m AS MATERIALIZED (
  SELECT x.line_no, x.event_id, x.code, x.started_at, x.ended_at, x.day_lo, x.day_hi, x.scan_lo, x.scan_hi,
         mm.user_id AS uid, x.member_id, mm.reduction_g AS before_g
  FROM (SELECT * FROM x ORDER BY member_id) x LEFT JOIN behaviour_members mm ON mm.id = x.member_id
), u AS MATERIALIZED (
  SELECT line_no, event_id, code, started_at, ended_at, day_lo, day_hi, scan_lo, scan_hi, uid
  FROM behaviour_stage WHERE uid IS NOT NULL
  UNION ALL
  SELECT line_no, event_id, code, started_at, ended_at, day_lo, day_hi, scan_lo, scan_hi, uid FROM m
  WHERE uid IS NOT NULL
)
SELECT 0 AS kind, line_no, CAST(member_id AS BIGINT) AS a, CAST(uid AS BIGINT) AS b, CAST(before_g AS BIGINT) AS c
FROM m
UNION ALL
SELECT 1, u.line_no, NULL, NULL, NULL
FROM (SELECT line_no, event_id FROM u ORDER BY event_id) u
CROSS JOIN LATERAL (SELECT 1 FROM behaviour_events e WHERE e.partner_id = :partner AND e.event_id = u.event_id
  AND e.status = 'accepted' AND NOT (e.batch_id = :b AND e.line_no >= :from_line) OFFSET 0) e
UNION ALL
SELECT 2, u.line_no,
  SUM(CASE WHEN e.started_at >= u.day_lo AND e.started_at < u.day_hi THEN 2 ELSE 0 END)
  + MAX(CASE WHEN e.partner_id <> :partner
              AND ((e.started_at < u.ended_at AND e.ended_at > u.started_at)
                   OR (e.started_at = u.started_at AND e.ended_at = u.ended_at)) THEN 1 ELSE 0 END), NULL, NULL
FROM (SELECT * FROM u ORDER BY uid, code, started_at) u
CROSS JOIN LATERAL (SELECT e.partner_id, e.started_at, e.ended_at FROM behaviour_events e
  WHERE e.user_id = u.uid AND e.code = u.code AND e.status = 'accepted' AND e.started_at >= u.scan_lo
  AND e.started_at < u.scan_hi AND NOT (e.batch_id = :b AND e.line_no >= :from_line) OFFSET 0) e
GROUP BY u.line_no
"""
# The members behind a partner's external ids, as the lookup joins them (`MemberMemo.preload`).
_PRELOAD = ("SELECT e.external_id, m.id, m.user_id, m.reduction_g FROM behaviour_external_ids e "
            "JOIN behaviour_members m ON m.id = e.member_id WHERE e.partner_id = :p")
_LOOKUP_PG = re.sub(r":(\w+)", r"%(\1)s", _LOOKUP)   # psycopg's parameter style (SQLite takes :name)
# SQLite has no LATERAL; its CROSS JOIN keeps the left side as the outer loop, the same probes.
_LOOKUP_SQLITE = re.sub(r"CROSS JOIN LATERAL \(SELECT [\w., ]+ FROM behaviour_events e\s+WHERE (.*?) OFFSET 0\) e",
                        r"CROSS JOIN behaviour_events e WHERE \1", _LOOKUP, flags=re.S)
_PRELOAD_PG = re.sub(r":(\w+)", r"%(\1)s", _PRELOAD)


@dataclass
class ChunkResult:
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    reduction_g: int = 0
    points: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    # Points of this chunk's accepted rows per user, and what it accepted (not summed by `add`).
    points_by_user: dict[int, int] = field(default_factory=dict)
    accepted_rows: Accepted | None = None

    def add(self, other: ChunkResult) -> None:
        self.rows += other.rows
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.reduction_g += other.reduction_g
        self.points += other.points
        for k, v in other.reasons.items():
            self.reasons[k] = self.reasons.get(k, 0) + v


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _copy_rows(session: Session, table: str, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]],
               types: tuple[str, ...] | None = None) -> None:
    """Bulk insert: COPY on PostgreSQL (psycopg 3; binary when the PostgreSQL `types` of the columns
    are given, which is ~5x cheaper per row than text), executemany on SQLite."""
    conn = session.connection()
    if _is_pg(session):
        raw = conn.connection.driver_connection
        assert raw is not None
        binary = " (FORMAT BINARY)" if types else ""
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN{binary}") as cp:
            if types:
                cp.set_types(list(types))
            for r in rows:
                cp.write_row(r)
    else:
        marks = ", ".join("?" for _ in columns)
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                        [tuple(_sqlite_value(v) for v in r) for r in rows])


def _sqlite_value(v: Any) -> Any:
    # Store times as SQLAlchemy does on SQLite, so the ORM reads them back.
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ", timespec="microseconds")
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


class MemberMemo:
    """What one import remembers of the programme's members between its chunks: the member (id, user
    id, running reduction record) behind each partner external id and user id it has met. A row whose
    member it knows is staged with its user id, and the lookup probes the database for it only for the
    event id and the user's events: two index probes a row fewer, most rows of a large import after
    its first chunks. The points carry starts from the remembered record.

    It is right only while nobody else changes the members' records: `ingest_chunk` keeps it when the
    programme's chunk count (`ProgrammeHead`) is where this import's previous chunk left it and forgets
    it otherwise; `import_rows` forgets it when a chunk's transaction fails. It holds at most `limit`
    members (~250 bytes each) at the start of a chunk, else it starts again, so memory stays bounded whatever the programme.

    The members' records in the database lag behind it: a chunk does not update them (see `settle`).
    Each member it knows is [user id, record, settled record]: the record with this import's accepted
    grams, and the database's when the memo met it; the difference is what completing the batch adds
    (`pending`). Whenever it forgets, the next chunk first settles every batch of the programme
    (`fresh_head` None until then), so that a member it has not met has no grams waiting anywhere and
    the database's record, read by the lookup, is the member's whole record."""

    def __init__(self, limit: int = 400_000) -> None:
        self.limit = limit
        self.head: int | None = None                 # the programme's chunk count after our last chunk
        self.generation = 0                          # how many times it forgot everything
        self.by_ref: dict[str, int] = {}             # the partner's external id -> member id
        self.by_user: dict[int, int] = {}            # registry user id -> member id
        self.members: dict[int, list[int]] = {}      # member id -> [user id, reduction_g, settled]
        # The chunk count once every batch of the programme was settled for this memo: a probe whose
        # snapshot's count is below it may have read records with grams still waiting (None: not yet).
        self.fresh_head: int | None = None
        self.settled_upto: int | None = None         # this import's batch's `members_upto` then
        # Held by whoever decides rows with it or forgets it while another thread may be deciding
        # the next chunk ahead (`decide_ahead`, `ingest_chunk`).
        self.lock = threading.Lock()

    def __deepcopy__(self, memo_of_copy: dict[int, Any]) -> MemberMemo:
        import copy
        other = MemberMemo.__new__(MemberMemo)
        for name, value in vars(self).items():
            setattr(other, name, threading.Lock() if name == "lock" else copy.deepcopy(value, memo_of_copy))
        return other

    def clear(self) -> None:
        self.head = None
        self.fresh_head = self.settled_upto = None
        self.generation += 1
        self.by_ref.clear()
        self.by_user.clear()
        self.members.clear()

    def preload(self, session: Session, partner_id: int, programme_id: int, max_members: int) -> bool:
        """Remember every member behind the partner's external ids at once (one query instead of
        two index probes per row the first time each member is met), if there are at most
        `max_members` of them (and at most half the memo's `limit`). Returns whether it did. The
        programme's chunk count is read first, so a chunk recorded meanwhile makes the first chunk of
        this import forget it all again (see `_count_chunk`), as it would forget what it had met."""
        if self.members:
            return False
        args = {"p": partner_id, "programme": programme_id}
        count = session.scalar(text("SELECT COUNT(*) FROM behaviour_external_ids WHERE partner_id = :p"), args)
        if int(count or 0) > min(max_members, self.limit // 2):
            return False
        head = programme_head(session, programme_id)
        raw = session.connection().connection.driver_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            cur.execute(_PRELOAD_PG if _is_pg(session) else _PRELOAD, args)
            by_ref, members = self.by_ref, self.members
            for external_id, member_id, user_id, reduction_g in cur.fetchall():
                by_ref[external_id] = member_id
                members[member_id] = [user_id, reduction_g, reduction_g]
        finally:
            cur.close()
        self.head = head
        return True

    def start(self, session: Session, batch: BehaviourBatch, programme_id: int, max_members: int = 0) -> None:
        """At the start of an import of `batch` (in a transaction of its own, which the caller
        commits): under the programme's lock, settle every batch of the programme, remember the
        programme's chunk count, and preload the members if asked (`max_members`, see `preload`), so
        that nobody records between the three."""
        _lock_programme(session, programme_id)
        settle(session, programme_id)
        head = programme_head(session, programme_id)
        if max_members:
            with _phase("preload"):
                self.preload(session, batch.partner_id, programme_id, max_members)
        self.head = self.fresh_head = head
        self.settled_upto = batch.members_upto

    def probe_holds(self, probe: Probe) -> bool:
        """Whether a probe's member records can serve this memo: staged since it last forgot, in a
        snapshot where the programme was settled for it."""
        return (probe.generation == self.generation and self.fresh_head is not None
                and probe.head >= self.fresh_head)

    def pending(self) -> dict[int, int]:
        """Member id -> the grams this import accepted since the memo met the member (or since it
        was settled), not yet in the member's record in the database."""
        return self.grown(self.members)

    @staticmethod
    def grown(members: dict[int, list[int]]) -> dict[int, int]:
        return {member_id: known[1] - known[2] for member_id, known in members.items() if known[1] != known[2]}

    def member_of(self, r: Row) -> int | None:
        return self.by_ref.get(r.user_ref) if r.user_ref is not None else self.by_user.get(r.user_id or 0)

    def learn(self, r: Row, member_id: int, uid: int, reduction_g: int) -> None:
        if r.user_ref is not None:
            self.by_ref[r.user_ref] = member_id
        else:
            self.by_user[uid] = member_id
        if member_id not in self.members:   # as the database has it, settled
            self.members[member_id] = [uid, reduction_g, reduction_g]


def _stage(session: Session, rows: list[Row], rules: Rules, memo: MemberMemo) -> None:
    """Per-connection scratch table (not part of the schema). PostgreSQL empties it at every commit;
    SQLite has no ON COMMIT clause, so it is emptied before use."""
    if _is_pg(session):
        session.execute(text(_STAGE_DDL + " ON COMMIT DELETE ROWS"))
    else:
        session.execute(text(_STAGE_DDL))
        session.execute(text("DELETE FROM behaviour_stage"))
    offset, one_day = dt.timedelta(hours=rules.day_utc_offset_h), dt.timedelta(days=1)
    longest = dt.timedelta(hours=rules.max_duration_h)
    bounds: dict[dt.date, tuple[dt.datetime, dt.datetime]] = {}
    for r in rows:
        assert r.day is not None
        if r.day not in bounds:
            lo = dt.datetime.combine(r.day, dt.time()) - offset
            bounds[r.day] = (lo, lo + one_day)
    known, by_ref, by_user = memo.members, memo.by_ref, memo.by_user
    if rows and rows[0].packed_stage is not None and _is_pg(session):
        # Packed by the preparing process: only the user id (from the memo) is added here.
        _copy_packed(session, "behaviour_stage", packing.STAGE_PACKED + ("uid",),
                     [packing.COPY_HEADER] + [fast("pack_stage")(b"", rows[i:i + SLICE], by_ref, by_user, known)
                                              for i in range(0, len(rows), SLICE)] + [packing.COPY_TRAILER])
        return

    def staged(r: Row) -> tuple[Any, ...]:
        assert r.day is not None and r.started_at is not None and r.ended_at is not None
        day_lo, day_hi = bounds[r.day]
        member_id = by_ref.get(r.user_ref) if r.user_ref is not None else by_user.get(r.user_id or 0)
        r.member = known[member_id] if member_id is not None else None
        uid = r.member[0] if r.member is not None else None
        return (r.line_no, r.event_id, r.user_ref, r.user_id, uid, r.code, r.started_at, r.ended_at, day_lo,
                day_hi, r.started_at - longest, max(day_hi, r.ended_at))

    _copy_rows(session, "behaviour_stage", _STAGE_COLUMNS, (staged(r) for r in rows), _STAGE_TYPES)


def _classifier(found: Found, rules: Rules, memo: MemberMemo, left_out: Accepted | None,
                accepted: Accepted) -> Classifier:
    """The `behaviour_fast.Classifier` (compiled when built) of a chunk's pending rows with the
    import's `memo`; what it accepts goes into `accepted`."""
    classifier: Classifier = fast("Classifier")(
        found.members, found.duplicates, found.seen, rules.grams_per_point, rules.cap, memo.members, memo.by_ref, memo.by_user, accepted.event_ids,
        accepted.per_day, left_out.event_ids if left_out is not None else frozenset(),
        left_out.per_day if left_out is not None else {})
    return classifier


@dataclass
class Found:
    """The database's answers for a chunk's staged rows (`_lookup`): for each row staged without its
    member, line -> (member id, user id, member's record), all None for nobody; the lines whose
    event id the partner already has accepted; line -> `seen` (see `_LOOKUP`) where it is not 0."""

    members: dict[int, tuple[int | None, int | None, int | None]]
    duplicates: set[int]
    seen: dict[int, int]


def _lookup(session: Session, partner: partners.Partner, batch_id: int, from_line: int) -> Found:
    pg = _is_pg(session)
    if pg:
        # Index probes per staged row, never a hash of a whole table (members, daily records and
        # events grow; a chunk does not); no cache of probes (each row's are its own).
        session.execute(text("SET LOCAL enable_hashjoin = off"))
        session.execute(text("SET LOCAL enable_mergejoin = off"))
        session.execute(text("SET LOCAL enable_memoize = off"))
    # The driver's cursor, not a SQLAlchemy result: plain tuples for the 20,000 rows of a chunk.
    args = {"partner": partner.id, "programme": partner.programme_id, "b": batch_id, "from_line": from_line}
    raw = session.connection().connection.driver_connection
    assert raw is not None
    cur = raw.cursor()
    try:
        if pg:   # planned for each chunk (psycopg would prepare it after five): the tables grow under it
            cur.execute(_LOOKUP_PG, args, prepare=False)
        else:
            cur.execute(_LOOKUP_SQLITE, args)
        found = Found({}, set(), {})
        members, duplicates, seen = found.members, found.duplicates, found.seen
        for kind, line_no, a, b, c in cur.fetchall():
            if kind == 0:
                members[line_no] = (a, b, c)
            elif kind == 1:
                duplicates.add(line_no)
            else:
                seen[line_no] = int(a)
    finally:
        cur.close()
    if pg:
        session.execute(text("RESET enable_hashjoin"))
        session.execute(text("RESET enable_mergejoin"))
        session.execute(text("RESET enable_memoize"))
    return found


@dataclass
class Accepted:
    """What a recorded chunk accepted, for a probe of the next chunk that left it out: its lines, its
    event ids and its rows per (user, type, day)."""

    lo: int
    hi: int
    event_ids: set[str]
    per_day: dict[tuple[int, str, dt.date], int]


@dataclass
class Probe:
    """A chunk's database checks made ahead, on a connection of its own while the previous chunk is
    still being recorded (PostgreSQL): `found` as `_lookup` returns it, leaving out this batch's
    events from `from_line` on (the previous chunk, committed or not: its `Accepted` rows are added
    in Python). `head` is the programme's chunk count in the probe's snapshot, `generation` the
    memo's when it staged the rows; `ingest_chunk` uses the probe only if nobody but this import
    recorded since that snapshot and the memo has not forgotten anything since (else it probes again
    under the programme's lock)."""

    head: int
    generation: int
    from_line: int
    found: Found


def probe_chunk(session: Session, batch_id: int, rows: list[Row], rules: Rules, memo: MemberMemo,
                from_line: int) -> Probe:
    """Stage the chunk's pending rows and look them up in one REPEATABLE READ snapshot (the caller
    begins the transaction with that isolation level). Reads only; the caller rolls back."""
    batch = session.get(BehaviourBatch, batch_id)
    assert batch is not None
    partner = session.get(partners.Partner, batch.partner_id)
    assert partner is not None
    session.execute(text("SET LOCAL jit = off"))
    head = programme_head(session, partner.programme_id)
    generation = memo.generation
    pending = [r for r in rows if r.status is None]
    with _phase("stage"):
        _stage(session, pending, rules, memo)
    with _phase("lookup"):
        found = _lookup(session, partner, batch_id, from_line)
    return Probe(head, generation, from_line, found)


@dataclass
class Decided:
    """A chunk's rows decided ahead (`decide_ahead`), before the chunk before it has committed, from
    its probe made ahead and what that chunk's decisions accepted: the rows carry their outcomes
    already. `ingest_chunk` records them as they are if, under the programme's lock, it finds what
    they assumed (the chunk's lines come next, the memo has forgotten nothing since, the probe is
    recent enough: what it checks of a probe); otherwise it puts the rows back as they were
    (`undo`), forgets the memo and decides them again itself (`abandoned`)."""

    lo: int
    rows: int
    generation: int
    probe_head: int
    accepted: Accepted
    undo: list[tuple[Row, int | None, int, str | None, str | None]]
    abandoned: bool = False

    def holds(self, memo: MemberMemo, chunks: int, rows: list[Row]) -> bool:
        return (self.lo == rows[0].line_no and self.rows == len(rows) and memo.generation == self.generation
                and self.probe_head >= chunks - 2)

    def abandon(self, memo: MemberMemo, chunks: int | None) -> None:
        """Put the rows back as they were before they were decided and forget the memo, which
        learned from them (the caller holds `memo.lock`)."""
        for r, user_id, pts, reason, detail in self.undo:
            r.status, r.reason, r.detail, r.user_id, r.points = None, reason, detail, user_id, pts
        self.abandoned = True
        memo.clear()
        memo.head = chunks


def decide_ahead(rows: list[Row], rules: Rules, memo: MemberMemo, probe: Probe,
                 before: Accepted | None) -> Decided | None:
    """Decide a chunk's pending rows from its probe made ahead and `before` (what the chunk before
    accepted, decided but perhaps not yet committed), as `ingest_chunk` would decide them once that
    chunk committed; None if the probe cannot serve (see `ingest_chunk`). The caller holds
    `memo.lock`. Nothing is written: `ingest_chunk` records the decisions (`Decided`)."""
    lo, hi = rows[0].line_no, rows[-1].line_no
    if not (memo.probe_holds(probe)
            and (probe.from_line == lo or (before is not None and probe.from_line == before.lo
                                           and before.hi == lo - 1))):
        return None
    pending = [r for r in rows if r.status is None]
    undo = [(r, r.user_id, r.points, r.reason, r.detail) for r in pending]
    accepted = Accepted(lo, hi, set(), {})
    with _phase("classify"):
        classifier = _classifier(probe.found, rules, memo, before if probe.from_line < lo else None, accepted)
        for i in range(0, len(pending), SLICE):
            classifier.classify(pending[i:i + SLICE])
    return Decided(lo, len(rows), memo.generation, probe.head, accepted, undo)


def programme_head(session: Session, programme_id: int) -> int:
    """The programme's chunk count (`ProgrammeHead`; 0 before its first chunk)."""
    return session.scalar(text("SELECT chunks FROM behaviour_programme_heads WHERE programme_id = :p"),
                          {"p": programme_id}) or 0


def _lock_programme(session: Session, programme_id: int) -> None:
    """The programme's lock, held to the end of the transaction: its chunks are recorded, and its
    members' records changed, one transaction at a time (SQLite: one writer at all)."""
    if _is_pg(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:c, :p)"), {"c": _LOCK_CLASS, "p": programme_id})


# The accepted grams per member of a batch's lines (lo, hi], added to the members' records.
_SETTLE = (
    "UPDATE behaviour_members SET reduction_g = behaviour_members.reduction_g + s.g "
    "FROM (SELECT user_id, SUM(reduction_g) AS g FROM behaviour_events WHERE batch_id = :b AND line_no > :lo "
    "AND line_no <= :hi AND status = 'accepted' GROUP BY user_id) s "
    "WHERE behaviour_members.programme_id = :p AND behaviour_members.user_id = s.user_id AND s.g <> 0")


def settle(session: Session, programme_id: int) -> int:
    """The use case that brings the members' records of a programme up to date: for every batch of
    it recorded past its `members_upto`, the accepted grams of those lines are added to their
    members' records (summed from the events: one UPDATE per batch) and `members_upto` advances.
    Chunks do not update the records themselves (a member update per accepted row); an import adds
    its grams when it completes its batch (`complete_batch`), and `ingest_chunk` settles whenever
    its import's memo forgets, before it reads a record. The caller holds the programme's lock
    (`_lock_programme`) and commits. Returns how many batches it settled."""
    batches = session.scalars(
        select(BehaviourBatch).join(partners.Partner, partners.Partner.id == BehaviourBatch.partner_id)
        .where(partners.Partner.programme_id == programme_id, BehaviourBatch.members_upto < BehaviourBatch.rows_done)
        .order_by(BehaviourBatch.id).with_for_update(of=BehaviourBatch)).all()
    for b in batches:
        lo, hi = b.members_upto, b.rows_done
        session.execute(text(_SETTLE), {"b": b.id, "lo": lo, "hi": hi, "p": programme_id})
        b.members_upto = hi
        audit.record(session, None, "behaviour.members_settled", "behaviour_batch", b.id, {"lines": [lo + 1, hi]})
    if batches:
        session.flush()
    return len(batches)


def settle_batch(session: Session, batch_id: int, memo: MemberMemo | None = None) -> None:
    """The use case that settles a batch whose rows are all recorded, and anything else waiting in its
    programme (`settle`): from what the `memo` of the import that recorded it says is waiting
    (`MemberMemo.pending`: one UPDATE of ~200,000 members for a million rows instead of summing the
    events), if that still holds under the programme's lock: the memo has not forgotten since it was
    last settled, nobody has recorded since its last chunk and nobody has settled the batch since.
    It may run while the batch is being completed (`complete_batch` with `settle_members` false), on
    another connection: they share only the batch's row, which this one locks last. The caller
    commits."""
    batch = session.get(BehaviourBatch, batch_id)
    assert batch is not None
    partner = session.get(partners.Partner, batch.partner_id)
    assert partner is not None
    _lock_programme(session, partner.programme_id)
    session.refresh(batch)   # `members_upto` changes only under the programme's lock
    head = programme_head(session, partner.programme_id)
    if (memo is not None and memo.fresh_head is not None and memo.head == head
            and memo.settled_upto == batch.members_upto and batch.members_upto < batch.rows_done):
        lo, hi = batch.members_upto, batch.rows_done
        _add_to_members(session, memo.members)
        moved = session.scalar(text("UPDATE behaviour_batches SET members_upto = :hi WHERE id = :b AND members_upto = :lo "
                                    "RETURNING id"), {"b": batch.id, "lo": lo, "hi": hi})
        if moved is None:
            raise RuntimeError(f"batch {batch.id} was settled by someone else under the programme's lock")
        audit.record(session, None, "behaviour.members_settled", "behaviour_batch", batch.id, {"lines": [lo + 1, hi]})
        session.expire(batch)
    settle(session, partner.programme_id)


def _settle_for(session: Session, programme_id: int, batch: BehaviourBatch, memo: MemberMemo, chunks: int) -> None:
    """Settle the programme for a memo that forgot (the caller holds the programme's lock): probes
    staged from now on and whose snapshot has this chunk committed (`chunks`) may serve it."""
    with _phase("settle"):
        settle(session, programme_id)
    memo.fresh_head, memo.settled_upto = chunks, batch.members_upto


def _count_chunk(session: Session, programme_id: int, memo: MemberMemo) -> int:
    """Count this chunk in the programme's head (the caller holds the programme's lock) and forget
    the memo if another chunk was recorded since this import's previous one."""
    args = {"p": programme_id}
    chunks = session.scalar(text("UPDATE behaviour_programme_heads SET chunks = chunks + 1 "
                                 "WHERE programme_id = :p RETURNING chunks"), args)
    if chunks is None:
        session.execute(text("INSERT INTO behaviour_programme_heads (programme_id, chunks) VALUES (:p, 1)"), args)
        chunks = 1
    # An empty memo (the import's first chunk) has nothing to forget. Never in the middle of a chunk.
    if (memo.head is not None and memo.head != chunks - 1) or len(memo.members) > memo.limit:
        with memo.lock:
            memo.clear()
    memo.head = chunks
    return chunks


def ingest_chunk(session: Session, batch_id: int, rows: list[Row], rules: Rules,
                 memo: MemberMemo | None = None, probe: Probe | None = None,
                 before: Accepted | None = None, decided: Decided | None = None) -> ChunkResult:
    """The use case that records one chunk of prepared rows (consecutive lines, in order) of an open
    batch: outcomes, points per row, the members' reduction records, counters, audit. The caller
    commits; if the commit fails, it must `clear()` the `memo` it passed (see `MemberMemo`). A `probe`
    made ahead is used when still right (see `Probe`; `before` = what the chunk before accepted),
    else the checks are made here; the result's `accepted` says what this chunk accepted. Rows
    `decided` ahead (`decide_ahead`) are recorded as decided if what the decisions assumed holds,
    else put back and decided here.
    Lines already recorded (a concurrent or repeated import) are skipped; a chunk that would leave a
    gap after the recorded lines raises Conflict `batch_in_progress`."""
    if not rows:
        return ChunkResult()
    memo = memo if memo is not None else MemberMemo()
    batch = session.get(BehaviourBatch, batch_id)
    assert batch is not None
    partner = session.get(partners.Partner, batch.partner_id)
    assert partner is not None
    _lock_programme(session, partner.programme_id)
    if _is_pg(session):
        # Short statements on small sets: compiling them (JIT) costs more than it saves.
        session.execute(text("SET LOCAL jit = off"))
        # A chunk's commit does not wait for its WAL to reach the disk: if the server crashes first,
        # the chunk is lost whole (its rows, counters and `rows_done` are one transaction) and the
        # resumed import records it again. Nothing is reported done before `complete_batch`, whose
        # commit waits, and a commit's flush flushes every earlier one with it.
        session.execute(text("SET LOCAL synchronous_commit = off"))
    session.refresh(batch, with_for_update=True)
    if batch.status != "open" or rows[-1].line_no <= batch.rows_done:
        if decided is not None:
            with memo.lock:
                decided.abandon(memo, None)
        return ChunkResult()
    rows = [r for r in rows if r.line_no > batch.rows_done]
    lo = rows[0].line_no
    if lo != batch.rows_done + 1:
        if decided is not None:
            with memo.lock:
                decided.abandon(memo, None)
        raise Conflict(f"batch {batch.id} has {batch.rows_done} lines recorded; line {lo} cannot come next "
                       "(another import of this batch is running)", field="batch_ref", code="batch_in_progress")
    chunks = _count_chunk(session, partner.programme_id, memo)
    if decided is not None and decided.holds(memo, chunks, rows):
        PROBES["decided ahead"] += 1
        PROBES["ahead"] += 1
        return _record_chunk(session, batch, partner, rows, decided.accepted)
    if decided is not None:
        PROBES["decided again"] += 1
        # The thread deciding the next chunk ahead waits for this one (`decided.abandoned`).
        with memo.lock:
            decided.abandon(memo, chunks)
            _settle_for(session, partner.programme_id, batch, memo, chunks)
            return _decide_and_record(session, batch, partner, rows, rules, memo, probe, before, chunks)
    if memo.fresh_head is None:
        with memo.lock:
            _settle_for(session, partner.programme_id, batch, memo, chunks)
    return _decide_and_record(session, batch, partner, rows, rules, memo, probe, before, chunks)


def _decide_and_record(session: Session, batch: BehaviourBatch, partner: partners.Partner, rows: list[Row],
                       rules: Rules, memo: MemberMemo, probe: Probe | None, before: Accepted | None,
                       chunks: int) -> ChunkResult:
    lo, hi = rows[0].line_no, rows[-1].line_no
    pending = [r for r in rows if r.status is None]
    accepted = Accepted(lo, hi, set(), {})
    if pending:
        left_out: Accepted | None = None
        if (probe is not None and memo.probe_holds(probe) and probe.head >= chunks - 2
                and (probe.from_line == lo or (before is not None and probe.from_line == before.lo
                                               and before.hi == lo - 1))):
            found, left_out = probe.found, before if probe.from_line < lo else None
            PROBES["ahead"] += 1
        else:
            PROBES["again"] += probe is not None
            with _phase("stage"):
                _stage(session, pending, rules, memo)
            with _phase("lookup"):
                found = _lookup(session, partner, batch.id, lo)
        with _phase("classify"):
            classifier = _classifier(found, rules, memo, left_out, accepted)
            for i in range(0, len(pending), SLICE):
                classifier.classify(pending[i:i + SLICE])
    return _record_chunk(session, batch, partner, rows, accepted)


def _record_chunk(session: Session, batch: BehaviourBatch, partner: partners.Partner, rows: list[Row],
                  accepted: Accepted) -> ChunkResult:
    lo, hi = rows[0].line_no, rows[-1].line_no
    with _phase("insert_events"):
        _insert_events(session, batch, partner, rows)
    counted: ChunkCount = fast("count_chunk")(rows)
    result = ChunkResult(rows=len(rows), accepted=counted.accepted, rejected=counted.rejected,
                         reduction_g=counted.reduction_g, points=counted.points, reasons=counted.reasons,
                         points_by_user=counted.points_by_user, accepted_rows=accepted)
    with _phase("apply_days"):
        _add_to_days(session, partner.programme_id, counted.grams_by_day)
    batch.rows_done = hi
    batch.accepted += result.accepted
    batch.rejected += result.rejected
    batch.reduction_g += result.reduction_g
    batch.points += result.points
    audit.record(session, None, "behaviour.rows_recorded", "behaviour_batch", batch.id,
                 {"partner": partner.code, "lines": [lo, hi], "accepted": result.accepted,
                  "rejected": result.rejected, "reduction_g": result.reduction_g, "points": result.points,
                  "reasons": result.reasons})
    session.flush()
    return result


def _copy_packed(session: Session, table: str, columns: tuple[str, ...], parts: list[bytes]) -> None:
    """COPY rows already in the binary format (header, rows, trailer) into `table` (PostgreSQL)."""
    raw = session.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as cp:
        for i in range(0, len(parts), 8192):
            cp.write(b"".join(parts[i:i + 8192]))


def _insert_packed(session: Session, batch_id: int, partner_id: int, programme_id: int, rows: list[Row]) -> None:
    head = packing.Packer.event_head_for() + packing.int4(batch_id) + packing.int4(partner_id) + packing.int4(programme_id)
    _copy_packed(session, "behaviour_events", ("batch_id", "partner_id", "programme_id") + packing.EVENT_PACKED
                 + ("user_id", "reduction_g", "points", "status", "reason", "detail"),
                 [packing.COPY_HEADER, fast("pack_events")(head, rows), packing.COPY_TRAILER])


def _insert_events(session: Session, batch: BehaviourBatch, partner: partners.Partner, rows: list[Row]) -> None:
    batch_id, partner_id, programme_id = batch.id, partner.id, partner.programme_id   # not ORM reads per row
    if rows and rows[0].packed_event is not None and _is_pg(session):
        _insert_packed(session, batch_id, partner_id, programme_id, rows)
        return
    _copy_rows(session, "behaviour_events", EVENT_COLUMNS, (
        (batch_id, r.line_no, partner_id, programme_id, r.event_id, r.user_ref, r.user_id, r.code,
         r.started_at, r.ended_at, r.day, r.variant, r.quantity,
         r.reduction_g if r.status == "accepted" else 0, r.points if r.status == "accepted" else 0,
         r.factors, r.status, r.reason, r.detail) for r in rows), _EVENT_TYPES)


def _add_to_members(session: Session, members: dict[int, list[int]]) -> None:
    """Add to each member's record what an import's memo says is waiting (`MemberMemo.members`): on
    PostgreSQL COPY (id, g) into a scratch table and one UPDATE .. FROM (HOT updates, see `Member`);
    executemany on SQLite."""
    if _is_pg(session):
        # Few: a probe of the primary key per gain, in key order (left to itself the planner
        # merge-joins with a scan of the whole members' key); else a hash of them and one pass over
        # the members' heap (~200,000 of them for a million rows).
        packed, n = fast("pack_pending")(members, len(members) < 50_000)
        if not n:
            return
        few = n < 50_000
        session.execute(text(_GAIN_DDL + " ON COMMIT DELETE ROWS"))
        _copy_packed(session, "behaviour_member_gain", ("id", "g"), [packing.COPY_HEADER, packed, packing.COPY_TRAILER])
        if few:
            session.execute(text("SET LOCAL enable_hashjoin = off"))
            session.execute(text("SET LOCAL enable_mergejoin = off"))
        session.execute(text("UPDATE behaviour_members SET reduction_g = behaviour_members.reduction_g + d.g "
                             "FROM behaviour_member_gain d WHERE behaviour_members.id = d.id"))
        if few:
            session.execute(text("RESET enable_hashjoin"))
            session.execute(text("RESET enable_mergejoin"))
        session.execute(text("TRUNCATE behaviour_member_gain"))
    else:
        raw = session.connection().connection.driver_connection
        assert raw is not None
        raw.executemany("UPDATE behaviour_members SET reduction_g = reduction_g + ? WHERE id = ?",
                        [(g, member_id) for member_id, g in sorted(MemberMemo.grown(members).items())])


def _add_to_days(session: Session, programme_id: int, days: Mapping[dt.date, int]) -> None:
    """Add the accepted grams of each day of the chunk (`days`) to the programme's day totals (an
    upsert per day, on either database)."""
    if days:
        session.execute(text(
            "INSERT INTO behaviour_programme_days (programme_id, day, reduction_g) VALUES (:p, :day, :g) "
            "ON CONFLICT (programme_id, day) DO UPDATE "
            "SET reduction_g = behaviour_programme_days.reduction_g + excluded.reduction_g"),
            [{"p": programme_id, "day": d, "g": g} for d, g in sorted(days.items())])


_EARN_COLUMNS = ("user_id", "kind", "points", "expires_on", "batch_id", "ref", "created_at")


def _packed_earnings(earned: Mapping[int, int], expires: dt.date, batch_id: int, ref: str,
                     now: dt.datetime) -> list[bytes]:
    """The `earn` entries (user id -> points, those above 0, in user order) in PostgreSQL's binary
    COPY format for `_EARN_COLUMNS` (int4, varchar, int8, date, int4, varchar, timestamp): only the
    user and the points differ from entry to entry."""
    kind = packing.text("earn")
    rest = (struct.pack(">ii", 4, (expires - dt.date(2000, 1, 1)).days) + packing.int4(batch_id) + packing.text(ref)
            + packing.timestamp(now))
    return [packing.COPY_HEADER, fast("pack_earnings")(earned, kind, rest), packing.COPY_TRAILER]


def complete_batch(session: Session, batch_id: int, rules: Rules,
                   earned: Mapping[int, int] | None = None, settle_members: bool = True) -> BehaviourBatch:
    """The use case that closes a batch once all its rows are recorded: it credits the points of its
    accepted rows, one `earn` entry per user, marks it complete and (unless `settle_members` is
    false: the caller settles them in a transaction of its own, `settle_batch`) adds their accepted
    grams to the members' records (`settle`). `earned` (user id -> points) is what the caller counted
    while it recorded EVERY line of the batch itself; otherwise (None) the entries are summed from
    the batch's events (one INSERT..SELECT). Idempotent: a complete batch is returned unchanged. The
    caller commits."""
    found = session.get(BehaviourBatch, batch_id)
    assert found is not None
    partner = session.get(partners.Partner, found.partner_id)
    assert partner is not None
    if settle_members:
        _lock_programme(session, partner.programme_id)    # before the batch, as a chunk takes them
    session.refresh(found, with_for_update=True)
    batch = found
    if batch.status != "open":
        return batch
    if settle_members:
        with _phase("settle"):
            settle(session, partner.programme_id)
    expires, ref, now = rules.expires_on(batch.received_at), f"behaviour:{batch.id}", utcnow()
    with _phase("credit_points"):
        if earned is None:
            session.execute(text(
                "INSERT INTO points_entries (user_id, kind, points, expires_on, batch_id, ref, created_at) "
                "SELECT user_id, 'earn', SUM(points), :expires, :b, :ref, :now FROM behaviour_events "
                "WHERE batch_id = :b AND status = 'accepted' GROUP BY user_id HAVING SUM(points) > 0"),
                {"b": batch.id, "expires": expires, "ref": ref, "now": now})
        elif _is_pg(session):
            _copy_packed(session, "points_entries", _EARN_COLUMNS, _packed_earnings(earned, expires, batch.id, ref, now))
        else:
            _copy_rows(session, "points_entries", _EARN_COLUMNS,
                       ((u, "earn", p, expires, batch.id, ref, now) for u, p in sorted(earned.items()) if p > 0))
    batch.status, batch.completed_at = "complete", now
    audit.record(session, None, "behaviour.batch_completed", "behaviour_batch", batch.id,
                 {"partner": partner.code, "rows": batch.rows_done, "accepted": batch.accepted,
                  "rejected": batch.rejected, "reduction_g": batch.reduction_g, "points": batch.points})
    return batch


# -- batches -------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    batch_id: int
    ref: str
    partner: str
    replayed: bool
    rows: int
    accepted: int
    rejected: int
    reduction_g: int
    points: int
    reasons: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "ref": self.ref, "partner": self.partner,
                "replayed": self.replayed, "rows": self.rows, "accepted": self.accepted,
                "rejected": self.rejected, "reduction_g": self.reduction_g, "points": self.points,
                "reasons": self.reasons}


def open_batch(session: Session, partner: partners.Partner, ref: str, source: str,
               received_at: dt.datetime | None = None) -> BehaviourBatch:
    """The partner's batch `ref`, created now if new. The caller commits."""
    ref = (ref or "").strip()
    if not ref or len(ref) > 100:
        from registry.errors import InvalidInput
        raise InvalidInput("a batch reference is 1-100 characters", field="batch_ref")
    if not partner.active:
        raise Conflict(f"partner {partner.code} is not active", field="partner", code="inactive")
    batch = session.scalar(select(BehaviourBatch).where(BehaviourBatch.partner_id == partner.id,
                                                        BehaviourBatch.ref == ref))
    if batch is None:
        batch = BehaviourBatch(partner_id=partner.id, ref=ref, source=source, status="open",
                               received_at=received_at or utcnow(), rows_done=0, accepted=0, rejected=0,
                               reduction_g=0, points=0)
        session.add(batch)
        session.flush()
        audit.record(session, None, "behaviour.batch_received", "behaviour_batch", batch.id,
                     {"partner": partner.code, "ref": ref, "source": source})
    return batch


def reasons_of(session: Session, batch_id: int) -> dict[str, int]:
    return {r: int(n) for r, n in session.execute(
        select(BehaviourEvent.reason, func.count()).where(BehaviourEvent.batch_id == batch_id,
                                                          BehaviourEvent.reason.is_not(None))
        .group_by(BehaviourEvent.reason).order_by(BehaviourEvent.reason))}


def batch_result(session: Session, batch: BehaviourBatch, partner_code: str, replayed: bool,
                 reasons: Mapping[str, int] | None = None) -> BatchResult:
    """The batch's outcome; `reasons` (rows rejected per reason) if the caller counted every line of
    the batch itself, else counted from its events."""
    return BatchResult(batch.id, batch.ref, partner_code, replayed, batch.rows_done, batch.accepted,
                       batch.rejected, batch.reduction_g, batch.points,
                       reasons_of(session, batch.id) if reasons is None else
                       {r: n for r, n in sorted(reasons.items()) if n})


def factor_snapshot(session: Session) -> FactorSource:
    table = FactorTable.from_session(session)
    return table if table.rows else shipped_table()


def import_rows(factory: sessionmaker[Session], partner_code: str, ref: str, source: str,
                rows: Iterable[Mapping[str, Any]], *, rules: Rules | None = None, chunk_size: int = 20_000,
                received_at: dt.datetime | None = None,
                on_chunk: Callable[[ChunkResult], None] | None = None, pipeline: bool = True,
                probe_ahead: bool = True, preload_members: int = 0,
                prepared: Callable[[RowPreparer, int, int], Iterator[list[Row]]] | None = None) -> BatchResult:
    """Import a stream of rows (dicts of text/JSON values) for a partner as batch `ref`, one
    transaction per chunk; only one chunk is ever in memory. A complete batch is not imported again
    (`replayed` is true and nothing changes); an interrupted one resumes after its last chunk.
    `preload_members` > 0: if the partner has at most that many external ids, their members are
    read once at the start (`MemberMemo.preload`; worth it when the batch has more rows than that).
    `prepared(preparer, skip, chunk_size)`, if given, replaces `rows`: it yields the batch's rows after
    line `skip` already prepared by `preparer` (a copy of it), in chunks of `chunk_size`
    (`registry.behaviour_prepare`)."""
    with fewer_collections():
        return _import_rows(factory, partner_code, ref, source, rows, rules=rules or Rules(), chunk_size=chunk_size,
                            received_at=received_at, on_chunk=on_chunk, pipeline=pipeline,
                            probe_ahead=probe_ahead, preload_members=preload_members, prepared=prepared)


def _import_rows(factory: sessionmaker[Session], partner_code: str, ref: str, source: str,
                 rows: Iterable[Mapping[str, Any]], *, rules: Rules, chunk_size: int,
                 received_at: dt.datetime | None, on_chunk: Callable[[ChunkResult], None] | None,
                 pipeline: bool, probe_ahead: bool, preload_members: int,
                 prepared: Callable[[RowPreparer, int, int], Iterator[list[Row]]] | None) -> BatchResult:
    for attempt in (1, 2):
        try:
            with factory() as session, session.begin():
                partner = partners.partner_by_code(session, partner_code)
                batch = open_batch(session, partner, ref, source, received_at)
                batch_id, done, status = batch.id, batch.rows_done, batch.status
                preparer = RowPreparer(rules, region=partner.region,
                                       allowed=partners.allowed_types(session, partner.id),
                                       received_at=batch.received_at, factors=factor_snapshot(session))
                code, programme_id = partner.code, partner.programme_id
            break
        except IntegrityError:
            if attempt == 2:   # the same batch opened concurrently: the second try finds it
                raise
    if status == "complete":
        with factory() as session, session.begin():
            b = session.get(BehaviourBatch, batch_id)
            assert b is not None
            if b.members_upto < b.rows_done:   # completed by an import that failed to settle it
                settle_batch(session, batch_id)
            return batch_result(session, b, code, replayed=True)
    # Pipelined: while one thread records chunk n, another (PostgreSQL) makes the database checks of
    # chunk n + 1 on a connection of its own and this one reads and prepares chunk n + 2 (the
    # database works on two cores while Python parses); a fourth decides chunk n + 1's rows from that
    # probe while chunk n is written (`decide_ahead`). Chunks still commit one at a time, in order.
    _mark("batch opened")
    recorder = _Recorder(factory, batch_id, rules, on_chunk)
    # Read and prepared elsewhere (another process): its work starts now, while the members are read.
    chunks = prepared(preparer, done, chunk_size) if prepared is not None else None
    try:
        with factory() as session, session.begin():
            probing = pipeline and probe_ahead and _is_pg(session)
            start = session.get(BehaviourBatch, batch_id)
            assert start is not None
            recorder.memo.start(session, start, programme_id, preload_members)
        _mark("members read")
        _pipeline(recorder, preparer, rows, done, chunk_size, pipeline, probing, chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    _mark("chunks recorded")
    # The members' records are settled on a connection of their own (PostgreSQL) while the points
    # are credited: two tables, two cores, ~1 s each for a million rows.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="behaviour-settle") as settling:
        settled = settling.submit(_settle_after, factory, batch_id, recorder.memo) if probing else None
        with factory() as session, session.begin():
            b = session.get(BehaviourBatch, batch_id)
            assert b is not None
            # The points counted while recording serve only if this import recorded every line itself.
            whole = done == 0 and recorder.rows == b.rows_done
            b = complete_batch(session, batch_id, rules, recorder.earned if whole else None,
                               settle_members=settled is None)
            _mark("points credited")
            result = batch_result(session, b, code, replayed=False, reasons=recorder.reasons if whole else None)
        if settled is not None:
            settled.result()
    _mark("batch completed")
    return result


def _settle_after(factory: sessionmaker[Session], batch_id: int, memo: MemberMemo) -> None:
    with factory() as session, session.begin():
        settle_batch(session, batch_id, memo)
    _mark("members settled")


def _pipeline(recorder: _Recorder, preparer: RowPreparer, rows: Iterable[Mapping[str, Any]], done: int,
              chunk_size: int, pipeline: bool, probing: bool, chunks: Iterator[list[Row]] | None) -> None:
    """Record the rows after line `done` (`rows`, prepared here, or the `chunks` prepared elsewhere)
    a chunk at a time through `recorder`, pipelined (see `_import_rows`)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="behaviour-record") as records, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="behaviour-probe") as probes, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="behaviour-decide") as decisions:
        pending: Future[None] | None = None
        previous_lo: int | None = None

        def submit(chunk: list[Row]) -> None:
            nonlocal pending, previous_lo
            if not chunk:
                return
            # The probe starts once the chunk before the previous one has committed (waited for
            # below), and leaves out the previous one, committed or not (see `Probe`).
            from_line = previous_lo if previous_lo is not None else chunk[0].line_no
            probe = probes.submit(recorder.probe, chunk, from_line) if probing else None
            # Its rows are decided as soon as the probe and the chunk before's decisions are in,
            # while the chunk before is still being written (see `decide_ahead`).
            decided = decisions.submit(recorder.decide, chunk, probe, pending) if probe is not None else None
            if pending is not None:
                pending.result()
            if pipeline:
                pending = records.submit(recorder.record, chunk, probe, decided)
            else:
                recorder.record(chunk, probe)
            previous_lo = chunk[0].line_no

        chunk: list[Row] = []
        if chunks is not None:   # here they are only received
            while True:
                t0 = time.perf_counter()
                chunk = next(chunks, [])
                PHASES["prepare"] = PHASES.get("prepare", 0.0) + time.perf_counter() - t0
                if not chunk:
                    break
                _mark("chunk received")
                submit(chunk)
        else:
            for line_no, raw in enumerate(rows, start=1):
                if line_no <= done:
                    continue
                t0 = time.perf_counter()
                chunk.append(preparer.prepare(line_no, raw))
                PHASES["prepare"] = PHASES.get("prepare", 0.0) + time.perf_counter() - t0
                if len(chunk) >= chunk_size:
                    submit(chunk)
                    chunk = []
            submit(chunk)
        if pending is not None:
            pending.result()


class _Recorder:
    """Records the chunks of one import in order (`ingest_chunk`, one transaction each) with the
    import's `MemberMemo` and the probes made ahead, and counts the points earned per user on the
    way (up to `max_users` users; beyond that `complete_batch` sums them from the events instead)."""

    def __init__(self, factory: sessionmaker[Session], batch_id: int, rules: Rules,
                 on_chunk: Callable[[ChunkResult], None] | None, max_users: int = 1_000_000) -> None:
        self.factory, self.batch_id, self.rules, self.on_chunk = factory, batch_id, rules, on_chunk
        self.memo = MemberMemo()
        self.max_users = max_users
        self.earned: dict[int, int] | None = {}
        self.rows = 0
        self.reasons: dict[str, int] = {}     # the rows it rejected, per reason
        self.last: Accepted | None = None     # what the last chunk recorded accepted
        self.decided: Decided | None = None   # the last chunk decided ahead (`decide`)

    def probe(self, chunk: list[Row], from_line: int) -> Probe:
        with self.factory() as session:
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            try:
                return probe_chunk(session, self.batch_id, chunk, self.rules, self.memo, from_line)
            finally:
                session.rollback()
                _mark("probed")

    def decide(self, chunk: list[Row], probe: Future[Probe], previous: Future[None] | None) -> Decided | None:
        """Decide the chunk ahead (`decide_ahead`) from its probe and the chunk before's decisions,
        made ahead too, or, when those were not or were abandoned, from what the chunk before
        recorded once it has (`previous`)."""
        ahead = probe.result()
        memo, before = self.memo, self.decided
        with memo.lock:
            if before is not None and not before.abandoned:
                self.decided = decide_ahead(chunk, self.rules, memo, ahead, before.accepted)
                return self.decided
        if previous is not None:
            previous.result()
        with memo.lock:
            self.decided = decide_ahead(chunk, self.rules, memo, ahead, self.last if previous is not None else None)
            return self.decided

    def record(self, chunk: list[Row], probe: Future[Probe] | None = None,
               decided: Future[Decided | None] | None = None) -> None:
        if not chunk:
            return
        ahead = probe.result() if probe is not None else None
        rows_decided = decided.result() if decided is not None else None
        try:
            with self.factory() as session, session.begin():
                result = ingest_chunk(session, self.batch_id, chunk, self.rules, self.memo, ahead, self.last,
                                      rows_decided)
        except BaseException:
            with self.memo.lock:
                if rows_decided is not None:
                    rows_decided.abandoned = True
                self.memo.clear()   # what the failed chunk taught it did not happen
            raise
        _mark("recorded")
        self.last = result.accepted_rows
        self.rows += result.rows
        for reason, n in result.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        if self.earned is not None:
            for user_id, p in result.points_by_user.items():
                self.earned[user_id] = self.earned.get(user_id, 0) + p
            if len(self.earned) > self.max_users:
                self.earned = None
        if self.on_chunk is not None:
            self.on_chunk(result)


def body_ref(digest: hashlib._Hash) -> str:
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Outcome:
    line: int
    event_id: str
    status: str
    reason: str | None
    detail: str | None
    reduction_g: int
    points: int


def outcomes(session: Session, batch_id: int) -> Iterator[Outcome]:
    """Every row's outcome in line order, streamed from the database."""
    stmt = (select(BehaviourEvent.line_no, BehaviourEvent.event_id, BehaviourEvent.status,
                   BehaviourEvent.reason, BehaviourEvent.detail, BehaviourEvent.reduction_g,
                   BehaviourEvent.points)
            .where(BehaviourEvent.batch_id == batch_id).order_by(BehaviourEvent.line_no)
            .execution_options(yield_per=5000))
    for r in session.execute(stmt):
        yield Outcome(*r)


# -- the member's record ------------------------------------------------------------------------


def personal_summary(session: Session, user_id: int, period: str = "month") -> dict[str, Any]:
    """The user's accepted reductions (g), events and points by behaviour type, per month (`period`
    "month") or per day ("day", the programme's calendar day); plus the totals per type."""
    if period not in ("month", "day"):
        from registry.errors import InvalidInput
        raise InvalidInput("period is month or day", field="period")
    by: dict[tuple[str, str], list[int]] = {}
    totals: dict[str, list[int]] = {}
    for code, day, events, g, pts in session.execute(
            select(BehaviourEvent.code, BehaviourEvent.day, func.count(), func.sum(BehaviourEvent.reduction_g),
                   func.sum(BehaviourEvent.points))
            .where(BehaviourEvent.user_id == user_id, BehaviourEvent.status == "accepted")
            .group_by(BehaviourEvent.code, BehaviourEvent.day).order_by(BehaviourEvent.day)):
        day_text = day if isinstance(day, str) else day.isoformat()   # SQLite returns the text
        key = (day_text[:7] if period == "month" else day_text, code)
        for acc in (by.setdefault(key, [0, 0, 0]), totals.setdefault(code, [0, 0, 0])):
            acc[0] += int(events)
            acc[1] += int(g)
            acc[2] += int(pts)
    return {
        "user_id": user_id, "period": period,
        "series": [{"period": p, "type": c, "events": v[0], "reduction_g": v[1], "points": v[2]}
                   for (p, c), v in sorted(by.items())],
        "totals": [{"type": c, "events": v[0], "reduction_g": v[1], "points": v[2]}
                   for c, v in sorted(totals.items())],
        "reduction_g": sum(v[1] for v in totals.values()),
    }


def check_ledger(session: Session) -> list[str]:
    """The behaviour and points ledger checks; returns the violations found (empty when sound):
    1. every member's reduction record equals the sum of its accepted events settled so far (each
       batch's lines up to its `members_upto`: see `settle`), and every programme day's total the
       sum of the day's;
    2. every event belongs to a batch of its partner (the event table has no foreign key: see it);
    3. every complete batch's earned points equal, per user, the points of its accepted events;
    4. every batch's counters equal its events, whose lines are 1..rows_done without a gap;
    5. no points balance is negative (`registry.points.check`)."""
    found: list[str] = []
    # Each check compares two sets of rows with EXCEPT both ways (hash or sort, on both databases).
    for side, programme_id, user_id, g in _differ(
            session,
            "SELECT programme_id, user_id, reduction_g FROM behaviour_members WHERE reduction_g <> 0",
            "SELECT e.programme_id, e.user_id, SUM(e.reduction_g) FROM behaviour_events e "
            "JOIN behaviour_batches b ON b.id = e.batch_id WHERE e.status = 'accepted' AND e.line_no <= b.members_upto "
            "GROUP BY e.programme_id, e.user_id HAVING SUM(e.reduction_g) <> 0"):
        found.append(f"member of programme {programme_id} user {user_id}: {side} {g} g")
    for side, programme_id, day, g in _differ(
            session, "SELECT programme_id, day, reduction_g FROM behaviour_programme_days WHERE reduction_g <> 0",
            "SELECT programme_id, day, SUM(reduction_g) FROM behaviour_events WHERE status = 'accepted' "
            "GROUP BY programme_id, day HAVING SUM(reduction_g) <> 0"):
        found.append(f"programme {programme_id} day {day}: {side} {g} g")
    for batch_id, n in session.execute(text(
            "SELECT e.batch_id, COUNT(*) FROM behaviour_events e LEFT JOIN behaviour_batches b "
            "ON b.id = e.batch_id AND b.partner_id = e.partner_id WHERE b.id IS NULL GROUP BY e.batch_id")):
        found.append(f"{n} events of batch {batch_id} name no batch of their partner")
    for side, batch_id, user_id, pts in _differ(
            session, "SELECT batch_id, user_id, SUM(points) FROM points_entries WHERE kind = 'earn' "
            "AND batch_id IS NOT NULL GROUP BY batch_id, user_id",
            "SELECT batch_id, user_id, SUM(points) FROM behaviour_events WHERE status = 'accepted' "
            "AND batch_id IN (SELECT id FROM behaviour_batches WHERE status = 'complete') "
            "GROUP BY batch_id, user_id HAVING SUM(points) > 0"):
        found.append(f"batch {batch_id} user {user_id}: {side} {pts} points")
    for side, batch_id, *_ in _differ(
            session, "SELECT id, accepted + rejected, accepted, reduction_g, points, rows_done, rows_done "
            "FROM behaviour_batches WHERE rows_done > 0",
            "SELECT batch_id, COUNT(*), SUM(CASE WHEN status = 'accepted' THEN 1 ELSE 0 END), "
            "SUM(reduction_g), SUM(points), MAX(line_no), COUNT(*) FROM behaviour_events GROUP BY batch_id"):
        found.append(f"batch {batch_id}: counters differ from its events ({side})")
    return found + points.check(session)


def _differ(session: Session, record: str, events: str) -> list[tuple[Any, ...]]:
    """Rows of `record` not in `events` (tagged "the record says") and of `events` not in `record`
    ("the events say")."""
    out: list[tuple[Any, ...]] = []
    for side, a, b in (("the record says", record, events), ("the events say", events, record)):
        out += [(side, *r) for r in session.execute(text(f"SELECT * FROM ({a} EXCEPT {b}) d"))]
    return out
