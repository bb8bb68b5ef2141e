"""Behaviour events: partner batches in, each row accepted or rejected with a reason, both kept.

A batch (signed JSON or a CSV file) is identified per partner by a reference (the SHA-256 of its body
unless the caller names it): re-sending a batch answers with the stored outcomes and changes nothing.
Rows stream through in chunks (`chunk_size`); each chunk is one transaction through `ingest_chunk`:

1. Python (`registry.behaviour_rules.RowPreparer`): fields, type allowed for the partner, claim window,
   plausibility, the reduction in grams from the calculators (memoised per distinct activity).
2. The rows that passed go into a per-connection scratch table (COPY on PostgreSQL, executemany on
   SQLite), and ONE query joins them with the members and external ids (unknown user), the accepted
   events (duplicate partner + event id; the same user, type and time span accepted from another
   partner) and the daily record (events already counted against the cap).
3. Python classifies in row order (a duplicate or over-cap row inside the chunk sees the earlier ones)
   and computes each accepted row's points with the member's carry (see `Rules`).
4. Every row of the chunk goes into `behaviour_events` (COPY / executemany); then set-based: the daily
   record upsert, the members' reduction record, one `earn` points entry per member (INSERT..SELECT),
   the batch counters, one audit record.

Imports of one programme are serialised (a PostgreSQL advisory lock; SQLite has one writer), so the
cap and cross-channel checks see every earlier commit. `batch.rows_done` advances with each chunk in
the same transaction: an interrupted import resumes after the last committed chunk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

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
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from registry import audit, partners, points
from registry.behaviour_rules import (
    CLAIMED_ELSEWHERE,
    DUPLICATE,
    OVER_CAP,
    UNKNOWN_USER,
    Row,
    RowPreparer,
    Rules,
)
from registry.db import Base, BigKey, utcnow
from registry.errors import Conflict
from registry.factors import FactorSource, FactorTable, shipped_table

_LOCK_CLASS = 0x6268  # pg_advisory_xact_lock(class, programme_id): one importer per programme


class BehaviourBatch(Base):
    __tablename__ = "behaviour_batches"
    __table_args__ = (
        UniqueConstraint("partner_id", "ref"),
        CheckConstraint("status IN ('open', 'complete')", name="status"),
        CheckConstraint("source IN ('api', 'csv')", name="source"),
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


class BehaviourEvent(Base):
    """Every row received, accepted or rejected (with its reason)."""

    __tablename__ = "behaviour_events"
    __table_args__ = (
        UniqueConstraint("batch_id", "line_no"),
        CheckConstraint("status IN ('accepted', 'rejected')", name="status"),
        CheckConstraint("(status = 'accepted') = (reason IS NULL)", name="reason_iff_rejected"),
        CheckConstraint("status = 'rejected' OR (user_id IS NOT NULL AND started_at IS NOT NULL)",
                        name="accepted_complete"),
        CheckConstraint("reduction_g >= 0 AND points >= 0", name="nonnegative"),
        # Nothing counts twice: a partner's event id is accepted at most once.
        Index("uq_behaviour_events_accepted", "partner_id", "event_id", unique=True,
              sqlite_where=text("status = 'accepted'"), postgresql_where=text("status = 'accepted'")),
        Index("ix_behaviour_events_user_span", "user_id", "code", "started_at",
              sqlite_where=text("status = 'accepted'"), postgresql_where=text("status = 'accepted'")),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("behaviour_batches.id"))
    line_no: Mapped[int] = mapped_column(Integer)
    partner_id: Mapped[int] = mapped_column(ForeignKey("behaviour_partners.id"))
    programme_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
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


class BehaviourDaily(Base):
    """A user's accepted events per type per day: the daily caps and the personal summary read it."""

    __tablename__ = "behaviour_daily"
    __table_args__ = (PrimaryKeyConstraint("user_id", "code", "day"),)

    user_id: Mapped[int] = mapped_column(BigInteger)
    code: Mapped[str] = mapped_column(String(16))
    day: Mapped[dt.date] = mapped_column(Date)
    events: Mapped[int] = mapped_column(Integer)
    reduction_g: Mapped[int] = mapped_column(BigInteger)
    points: Mapped[int] = mapped_column(BigInteger)


EVENT_COLUMNS = ("batch_id", "line_no", "partner_id", "programme_id", "event_id", "user_ref", "user_id",
                 "code", "started_at", "ended_at", "day", "variant", "quantity", "reduction_g", "points",
                 "factors", "status", "reason", "detail")
_STAGE_COLUMNS = ("line_no", "event_id", "user_ref", "user_id", "code", "started_at", "ended_at", "day")
_STAGE_DDL = ("CREATE TEMP TABLE IF NOT EXISTS behaviour_stage (line_no INTEGER, event_id VARCHAR(64), "
              "user_ref VARCHAR(64), user_id BIGINT, code VARCHAR(16), started_at TIMESTAMP, "
              "ended_at TIMESTAMP, day DATE)")

# One query for every database check of a chunk. `status = 'accepted'` is a literal so that
# PostgreSQL uses the partial indexes.
_LOOKUP = """
WITH r AS (
  SELECT s.line_no, s.event_id, s.code, s.started_at, s.ended_at, s.day,
         COALESCE(mx.id, mu.id) AS member_id, COALESCE(mx.user_id, mu.user_id) AS uid,
         COALESCE(mx.reduction_g, mu.reduction_g) AS before_g
  FROM behaviour_stage s
  LEFT JOIN behaviour_external_ids x ON s.user_ref IS NOT NULL AND x.partner_id = :partner
       AND x.external_id = s.user_ref
  LEFT JOIN behaviour_members mx ON mx.id = x.member_id
  LEFT JOIN behaviour_members mu ON s.user_ref IS NULL AND mu.programme_id = :programme
       AND mu.user_id = s.user_id
)
SELECT r.line_no, r.member_id, r.uid, r.before_g,
  EXISTS (SELECT 1 FROM behaviour_events e WHERE e.partner_id = :partner AND e.event_id = r.event_id
          AND e.status = 'accepted') AS dup,
  EXISTS (SELECT 1 FROM behaviour_events e WHERE e.user_id = r.uid AND e.code = r.code
          AND e.status = 'accepted' AND e.partner_id <> :partner
          AND ((e.started_at < r.ended_at AND e.ended_at > r.started_at)
               OR (e.started_at = r.started_at AND e.ended_at = r.ended_at))) AS elsewhere,
  COALESCE(d.events, 0) AS counted
FROM r LEFT JOIN behaviour_daily d ON d.user_id = r.uid AND d.code = r.code AND d.day = r.day
"""

_ACCEPTED_IN_CHUNK = "FROM behaviour_events WHERE batch_id = :b AND line_no BETWEEN :lo AND :hi AND status = 'accepted'"


@dataclass
class ChunkResult:
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    reduction_g: int = 0
    points: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

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


def _copy_rows(session: Session, table: str, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> None:
    """Bulk insert: COPY on PostgreSQL (psycopg 3), executemany on SQLite."""
    conn = session.connection()
    if _is_pg(session):
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
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


def _stage(session: Session, rows: list[Row]) -> None:
    session.execute(text(_STAGE_DDL))
    session.execute(text("DELETE FROM behaviour_stage"))
    _copy_rows(session, "behaviour_stage", _STAGE_COLUMNS,
               ((r.line_no, r.event_id, r.user_ref, r.user_id, r.code, r.started_at, r.ended_at, r.day)
                for r in rows))


def _classify(rows: list[Row], found: Mapping[int, Any], rules: Rules) -> None:
    """Decide the database-dependent outcome of each pending row, in row order."""
    counts: dict[tuple[int, str, dt.date], int] = {}
    carry: dict[int, int] = {}
    accepted_ids: set[str] = set()
    per_point = rules.grams_per_point
    for r in rows:
        member_id, uid, before_g, dup, elsewhere, counted = found[r.line_no]
        if uid is None:
            r.reject(UNKNOWN_USER, "no member of the partner's programme with this user id")
            continue
        r.user_id = uid
        if dup or r.event_id in accepted_ids:
            r.reject(DUPLICATE, "this partner's event id was already accepted")
            continue
        if elsewhere:
            r.reject(CLAIMED_ELSEWHERE, "the same behaviour and time span was accepted from another partner")
            continue
        assert r.code is not None and r.day is not None
        key = (uid, r.code, r.day)
        n = counts.get(key, counted) + 1
        cap = rules.cap(r.code)
        if n > cap:
            r.reject(OVER_CAP, f"more than {cap} {r.code} a day")
            continue
        counts[key] = n
        before = carry.get(member_id, before_g)
        after = before + r.reduction_g
        r.points += after // per_point - before // per_point
        carry[member_id] = after
        accepted_ids.add(r.event_id)
        r.status = "accepted"


def _lookup(session: Session, partner: partners.Partner) -> dict[int, Any]:
    return {row[0]: tuple(row[1:]) for row in session.execute(
        text(_LOOKUP), {"partner": partner.id, "programme": partner.programme_id})}


def ingest_chunk(session: Session, batch_id: int, rows: list[Row], rules: Rules) -> ChunkResult:
    """The use case that records one chunk of prepared rows (consecutive lines, in order) of an open
    batch: outcomes, reductions, daily records, earned points, counters, audit. The caller commits.
    A chunk whose lines were already recorded (a concurrent or repeated import) is skipped."""
    if not rows:
        return ChunkResult()
    batch = session.get(BehaviourBatch, batch_id)
    assert batch is not None
    partner = session.get(partners.Partner, batch.partner_id)
    assert partner is not None
    if _is_pg(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:c, :p)"), {"c": _LOCK_CLASS, "p": partner.programme_id})
    session.refresh(batch, with_for_update=True)
    lo, hi = rows[0].line_no, rows[-1].line_no
    if batch.status != "open" or lo <= batch.rows_done:
        return ChunkResult()
    pending = [r for r in rows if r.status is None]
    if pending:
        _stage(session, pending)
        _classify(pending, _lookup(session, partner), rules)
        session.execute(text("DELETE FROM behaviour_stage"))
    _copy_rows(session, "behaviour_events", EVENT_COLUMNS, (
        (batch.id, r.line_no, partner.id, partner.programme_id, r.event_id, r.user_ref, r.user_id, r.code,
         r.started_at, r.ended_at, r.day, r.variant, r.quantity,
         r.reduction_g if r.status == "accepted" else 0, r.points if r.status == "accepted" else 0,
         r.factors, r.status, r.reason, r.detail) for r in rows))
    result = ChunkResult(rows=len(rows))
    for r in rows:
        if r.status == "accepted":
            result.accepted += 1
            result.reduction_g += r.reduction_g
            result.points += r.points
        else:
            result.rejected += 1
            assert r.reason is not None
            result.reasons[r.reason] = result.reasons.get(r.reason, 0) + 1
    if result.accepted:
        _apply_accepted(session, batch, partner, lo, hi, rules)
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


def _apply_accepted(session: Session, batch: BehaviourBatch, partner: partners.Partner, lo: int, hi: int,
                    rules: Rules) -> None:
    args = {"b": batch.id, "lo": lo, "hi": hi, "programme": partner.programme_id}
    session.execute(text(
        "INSERT INTO behaviour_daily (user_id, code, day, events, reduction_g, points) "
        f"SELECT user_id, code, day, COUNT(*), SUM(reduction_g), SUM(points) {_ACCEPTED_IN_CHUNK} "
        "GROUP BY user_id, code, day ON CONFLICT (user_id, code, day) DO UPDATE SET "
        "events = behaviour_daily.events + excluded.events, "
        "reduction_g = behaviour_daily.reduction_g + excluded.reduction_g, "
        "points = behaviour_daily.points + excluded.points"), args)
    session.execute(text(
        "UPDATE behaviour_members SET reduction_g = behaviour_members.reduction_g + a.g "
        f"FROM (SELECT user_id, SUM(reduction_g) AS g {_ACCEPTED_IN_CHUNK} GROUP BY user_id) a "
        "WHERE behaviour_members.programme_id = :programme AND behaviour_members.user_id = a.user_id "
        "AND a.g > 0"), args)
    session.execute(text(
        "INSERT INTO points_entries (user_id, kind, points, expires_on, batch_id, ref, created_at) "
        f"SELECT user_id, 'earn', SUM(points), :expires, :b, :ref, :now {_ACCEPTED_IN_CHUNK} "
        "GROUP BY user_id HAVING SUM(points) > 0"),
        args | {"expires": rules.expires_on(batch.received_at), "ref": f"behaviour:{batch.id}:{lo}-{hi}",
                "now": utcnow()})


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


def batch_result(session: Session, batch: BehaviourBatch, partner_code: str, replayed: bool) -> BatchResult:
    return BatchResult(batch.id, batch.ref, partner_code, replayed, batch.rows_done, batch.accepted,
                       batch.rejected, batch.reduction_g, batch.points, reasons_of(session, batch.id))


def factor_snapshot(session: Session) -> FactorSource:
    table = FactorTable.from_session(session)
    return table if table.rows else shipped_table()


def import_rows(factory: sessionmaker[Session], partner_code: str, ref: str, source: str,
                rows: Iterable[Mapping[str, Any]], *, rules: Rules | None = None, chunk_size: int = 20_000,
                received_at: dt.datetime | None = None,
                on_chunk: Callable[[ChunkResult], None] | None = None) -> BatchResult:
    """Import a stream of rows (dicts of text/JSON values) for a partner as batch `ref`, one
    transaction per chunk; only one chunk is ever in memory. A complete batch is not imported again
    (`replayed` is true and nothing changes); an interrupted one resumes after its last chunk."""
    rules = rules or Rules()
    with factory() as session, session.begin():
        partner = partners.partner_by_code(session, partner_code)
        batch = open_batch(session, partner, ref, source, received_at)
        batch_id, done, status = batch.id, batch.rows_done, batch.status
        preparer = RowPreparer(rules, region=partner.region, allowed=partners.allowed_types(session, partner.id),
                               received_at=batch.received_at, factors=factor_snapshot(session))
        code = partner.code
    if status == "complete":
        with factory() as session, session.begin():
            b = session.get(BehaviourBatch, batch_id)
            assert b is not None
            return batch_result(session, b, code, replayed=True)
    chunk: list[Row] = []
    for line_no, raw in enumerate(rows, start=1):
        if line_no <= done:
            continue
        chunk.append(preparer.prepare(line_no, raw))
        if len(chunk) >= chunk_size:
            _commit_chunk(factory, batch_id, chunk, rules, on_chunk)
            chunk = []
    _commit_chunk(factory, batch_id, chunk, rules, on_chunk)
    with factory() as session, session.begin():
        b = session.get(BehaviourBatch, batch_id, with_for_update=True)
        assert b is not None
        if b.status == "open":
            b.status, b.completed_at = "complete", utcnow()
            audit.record(session, None, "behaviour.batch_completed", "behaviour_batch", b.id,
                         {"partner": code, "rows": b.rows_done, "accepted": b.accepted, "rejected": b.rejected,
                          "reduction_g": b.reduction_g, "points": b.points})
        return batch_result(session, b, code, replayed=False)


def _commit_chunk(factory: sessionmaker[Session], batch_id: int, chunk: list[Row], rules: Rules,
                  on_chunk: Callable[[ChunkResult], None] | None) -> None:
    if not chunk:
        return
    with factory() as session, session.begin():
        result = ingest_chunk(session, batch_id, chunk, rules)
    if on_chunk is not None:
        on_chunk(result)


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
    "month") or per day ("day"), from the daily record; plus the totals per type."""
    if period not in ("month", "day"):
        from registry.errors import InvalidInput
        raise InvalidInput("period is month or day", field="period")
    by: dict[tuple[str, str], list[int]] = {}
    totals: dict[str, list[int]] = {}
    for code, day, events, g, pts in session.execute(
            select(BehaviourDaily.code, BehaviourDaily.day, BehaviourDaily.events, BehaviourDaily.reduction_g,
                   BehaviourDaily.points).where(BehaviourDaily.user_id == user_id).order_by(BehaviourDaily.day)):
        key = (day.isoformat()[:7] if period == "month" else day.isoformat(), code)
        for acc in (by.setdefault(key, [0, 0, 0]), totals.setdefault(code, [0, 0, 0])):
            acc[0] += events
            acc[1] += g
            acc[2] += pts
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
    1. every member's reduction record equals the sum of its accepted events;
    2. the daily record equals the accepted events per user, type and day;
    3. every batch's earned points equal, per user, the points of its accepted events;
    4. every batch's counters equal its events;
    5. no points balance is negative (`registry.points.check`)."""
    found: list[str] = []
    for programme_id, user_id, have, want in session.execute(text(
            "SELECT m.programme_id, m.user_id, m.reduction_g, COALESCE(e.g, 0) FROM behaviour_members m "
            "LEFT JOIN (SELECT programme_id, user_id, SUM(reduction_g) AS g FROM behaviour_events "
            "WHERE status = 'accepted' GROUP BY programme_id, user_id) e "
            "ON e.programme_id = m.programme_id AND e.user_id = m.user_id "
            "WHERE m.reduction_g <> COALESCE(e.g, 0)")):
        found.append(f"member of programme {programme_id} user {user_id}: record {have} g, events {want} g")
    for user_id, code, day in session.execute(text(
            "SELECT COALESCE(d.user_id, e.user_id), COALESCE(d.code, e.code), COALESCE(d.day, e.day) "
            "FROM behaviour_daily d FULL OUTER JOIN (SELECT user_id, code, day, COUNT(*) AS n, "
            "SUM(reduction_g) AS g, SUM(points) AS p FROM behaviour_events WHERE status = 'accepted' "
            "GROUP BY user_id, code, day) e ON e.user_id = d.user_id AND e.code = d.code AND e.day = d.day "
            "WHERE d.events IS NULL OR e.n IS NULL OR d.events <> e.n OR d.reduction_g <> e.g "
            "OR d.points <> e.p")):
        found.append(f"daily record of user {user_id} {code} {day} differs from its events")
    for batch_id, user_id, have, want in session.execute(text(
            "SELECT COALESCE(p.batch_id, e.batch_id), COALESCE(p.user_id, e.user_id), p.pts, e.pts FROM "
            "(SELECT batch_id, user_id, SUM(points) AS pts FROM points_entries WHERE kind = 'earn' "
            "AND batch_id IS NOT NULL GROUP BY batch_id, user_id) p FULL OUTER JOIN "
            "(SELECT batch_id, user_id, SUM(points) AS pts FROM behaviour_events WHERE status = 'accepted' "
            "GROUP BY batch_id, user_id HAVING SUM(points) > 0) e "
            "ON e.batch_id = p.batch_id AND e.user_id = p.user_id "
            "WHERE p.pts IS NULL OR e.pts IS NULL OR p.pts <> e.pts")):
        found.append(f"batch {batch_id} user {user_id}: earned {have} points, events give {want}")
    for batch_id, in session.execute(text(
            "SELECT b.id FROM behaviour_batches b LEFT JOIN (SELECT batch_id, COUNT(*) AS n, "
            "SUM(CASE WHEN status = 'accepted' THEN 1 ELSE 0 END) AS a, SUM(reduction_g) AS g, "
            "SUM(points) AS p, MAX(line_no) AS last FROM behaviour_events GROUP BY batch_id) e "
            "ON e.batch_id = b.id WHERE b.accepted + b.rejected <> COALESCE(e.n, 0) "
            "OR b.accepted <> COALESCE(e.a, 0) OR b.reduction_g <> COALESCE(e.g, 0) "
            "OR b.points <> COALESCE(e.p, 0) OR b.rows_done <> COALESCE(e.last, 0)")):
        found.append(f"batch {batch_id}: counters differ from its events")
    return found + points.check(session)
