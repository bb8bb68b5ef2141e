"""The points ledger (碳积分): earn, redeem, expire, adjust. The balance is derived from it.

Every change is an entry with signed integer points: earn > 0 (behaviour imports, one entry per
member per chunk, see `registry.behaviour`), redeem < 0, expire < 0, adjust ≠ 0 (operator, with a
reason). A user's balance is the sum of their entries; no balance is cached.

Writers that take points away (redeem, expire, a negative adjust) lock the user's `points_accounts`
row first, then read the sum: two concurrent redemptions are serialised and the second sees the
first, so the balance never goes below zero. Earning only adds, so it needs no lock.

Expiry is first-in, first-out: every debit consumes the earliest-expiring points. Positive entries
expire at the end of their `expires_on` day; on a later day the points that expired and were not
consumed are due = (positive points with expires_on before today) − (all debits so far), when that
is positive. An `expire` entry of that amount is written, so re-running the job changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from registry import audit
from registry.actors import Actor
from registry.behaviour_rules import Rules
from registry.db import Base, BigKey, utcnow
from registry.errors import Conflict, InvalidInput, NotFound
from registry.models import HolderKind, User

KINDS = ("earn", "redeem", "expire", "adjust")


class PointsAccount(Base):
    """One per user holding points: the row that debits lock."""

    __tablename__ = "points_accounts"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True, autoincrement=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class PointsEntry(Base):
    __tablename__ = "points_entries"
    __table_args__ = (
        CheckConstraint(
            "(kind = 'earn' AND points > 0 AND expires_on IS NOT NULL)"
            " OR (kind IN ('redeem', 'expire') AND points < 0)"
            " OR (kind = 'adjust' AND points <> 0 AND (points < 0 OR expires_on IS NOT NULL))",
            name="kind_sign"),
        Index("ix_points_entries_user_id", "user_id", "id"),
        # A redemption reference (the mall's order) is used once.
        Index("uq_points_entries_redeem_ref", "ref", unique=True,
              sqlite_where=text("kind = 'redeem'"), postgresql_where=text("kind = 'redeem'")),
    )

    # No foreign keys on `user_id` (→ points_accounts) and `batch_id` (→ behaviour_batches): a behaviour
    # import writes an entry per member in one COPY, and each row's key checks probed and share-locked
    # its account and the batch (locked already), tripling the cost of the write. The writers name only
    # users with an account (members get one when they join, `_lock` makes one for a debit) and the
    # batch they hold locked (`registry.behaviour.complete_batch`); `check` proves both.
    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))
    points: Mapped[int] = mapped_column(BigInteger)
    expires_on: Mapped[dt.date | None] = mapped_column(Date)
    batch_id: Mapped[int | None] = mapped_column(Integer, index=True)
    ref: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


def insert_ignore(session: Session, table: type[Base], **values: object) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on either database."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        session.execute(pg_insert(table).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        session.execute(sqlite_insert(table).values(**values).on_conflict_do_nothing())


def ensure_account(session: Session, user_id: int) -> None:
    insert_ignore(session, PointsAccount, user_id=user_id, created_at=utcnow())


def _lock(session: Session, user_id: int) -> None:
    if session.get(User, user_id) is None:
        raise NotFound(f"no user {user_id}", field="user_id")
    ensure_account(session, user_id)
    session.execute(select(PointsAccount.user_id).where(PointsAccount.user_id == user_id).with_for_update())


def balance(session: Session, user_id: int) -> int:
    """The user's points: the sum of their ledger entries."""
    return int(session.scalar(select(func.coalesce(func.sum(PointsEntry.points), 0))
                              .where(PointsEntry.user_id == user_id)) or 0)


def _amount(points: object) -> int:
    if isinstance(points, bool) or not isinstance(points, int):
        raise InvalidInput("points must be a whole number", field="points")
    return points


def redeem_points(session: Session, actor: Actor, user_id: int, points: int, ref: str) -> PointsEntry:
    """Take `points` (> 0) from the user's balance for `ref` (the redemption's reference, used once).
    The user themself or the operator may redeem. Raises Conflict `insufficient_points` if the
    balance is lower (under concurrency too: see the module docstring), Conflict `duplicate` for a
    reference already redeemed."""
    points = _amount(points)
    if points <= 0:
        raise InvalidInput("points to redeem must be positive", field="points")
    if actor.user_id != user_id and not actor.is_operator:
        raise NotFound(f"no user {user_id}", field="user_id")
    ref = (ref or "").strip()
    if not ref or len(ref) > 100:
        raise InvalidInput("ref is 1-100 characters", field="ref")
    _lock(session, user_id)
    if session.scalar(select(PointsEntry.id).where(PointsEntry.kind == "redeem", PointsEntry.ref == ref)):
        raise Conflict(f"redemption {ref!r} was already made", field="ref", code="duplicate")
    have = balance(session, user_id)
    if have < points:
        raise Conflict(f"balance is {have} points, {points} asked", field="points", code="insufficient_points")
    entry = PointsEntry(user_id=user_id, kind="redeem", points=-points, ref=ref, actor_user_id=actor.user_id,
                        created_at=utcnow())
    session.add(entry)
    session.flush()
    audit.record(session, actor, "points.redeemed", "user", user_id,
                 {"points": points, "ref": ref, "entry_id": entry.id, "balance": have - points})
    return entry


def adjust_points(session: Session, actor: Actor, user_id: int, points: int, reason: str,
                  rules: Rules | None = None) -> PointsEntry:
    """Operator only: add (> 0; expires like earned points) or remove (< 0; never below a zero
    balance) points, with a reason."""
    actor.require_kind(HolderKind.OPERATOR)
    points = _amount(points)
    if points == 0:
        raise InvalidInput("an adjustment is not zero", field="points")
    if not reason or not reason.strip():
        raise InvalidInput("a reason is required", field="reason")
    _lock(session, user_id)
    have = balance(session, user_id)
    if have + points < 0:
        raise Conflict(f"balance is {have} points; cannot remove {-points}", field="points",
                       code="insufficient_points")
    now = utcnow()
    entry = PointsEntry(user_id=user_id, kind="adjust", points=points, reason=reason.strip(),
                        actor_user_id=actor.user_id, created_at=now,
                        expires_on=(rules or Rules()).expires_on(now) if points > 0 else None)
    session.add(entry)
    session.flush()
    audit.record(session, actor, "points.adjusted", "user", user_id,
                 {"points": points, "reason": reason.strip(), "entry_id": entry.id, "balance": have + points})
    return entry


_DUE = ("SUM(CASE WHEN points > 0 AND expires_on < :today THEN points ELSE 0 END)"
        " + SUM(CASE WHEN points < 0 THEN points ELSE 0 END)")


def expire_points(session: Session, today: dt.date, actor: Actor | None = None, chunk: int = 1000) -> int:
    """The expiry job: write an `expire` entry for every user with points that expired before `today`
    and were not consumed (FIFO, see the module docstring). Returns the points expired. Idempotent."""
    candidates = [r[0] for r in session.execute(text(
        f"SELECT user_id FROM points_entries GROUP BY user_id HAVING {_DUE} > 0 ORDER BY user_id"),
        {"today": today})]
    total = 0
    for i in range(0, len(candidates), chunk):
        users = candidates[i:i + chunk]
        # Lock in user order (as every debit locks one row), then recompute under the locks.
        session.execute(select(PointsAccount.user_id).where(PointsAccount.user_id.in_(users))
                        .order_by(PointsAccount.user_id).with_for_update())
        due = session.execute(
            select(PointsEntry.user_id, text(_DUE)).where(PointsEntry.user_id.in_(users))
            .group_by(PointsEntry.user_id).having(text(f"{_DUE} > 0")), {"today": today}).all()
        now = utcnow()
        session.add_all(PointsEntry(user_id=u, kind="expire", points=-int(p), ref=f"expiry:{today}",
                                    created_at=now) for u, p in due)
        session.flush()
        expired = sum(int(p) for _, p in due)
        total += expired
        if due:
            audit.record(session, actor, "points.expired", "points_ledger", f"expiry:{today}",
                         {"through": str(today - dt.timedelta(days=1)), "users": len(due), "points": expired,
                          "first_user_id": due[0][0], "last_user_id": due[-1][0]})
    return total


@dataclass(frozen=True, slots=True)
class EntryView:
    id: int
    kind: str
    points: int
    expires_on: dt.date | None
    ref: str | None
    reason: str | None
    batch_id: int | None
    created_at: dt.datetime


def entries(session: Session, user_id: int, limit: int = 50, before_id: int | None = None) -> list[EntryView]:
    """The user's newest entries first; page with `before_id`."""
    stmt = select(PointsEntry).where(PointsEntry.user_id == user_id)
    if before_id is not None:
        stmt = stmt.where(PointsEntry.id < before_id)
    rows: Sequence[PointsEntry] = session.scalars(stmt.order_by(PointsEntry.id.desc()).limit(limit)).all()
    return [EntryView(e.id, e.kind, e.points, e.expires_on, e.ref, e.reason, e.batch_id, e.created_at)
            for e in rows]


def check(session: Session) -> list[str]:
    """Ledger checks: every entry names a user with a points account and, when it names a behaviour
    batch, one that exists (the references the table's schema does not hold, see `PointsEntry`); no
    negative balance, and FIFO expiry never took more than had expired (every user's debits ≤
    credits)."""
    found = []
    for user_id, n in session.execute(text(
            "SELECT e.user_id, COUNT(*) FROM points_entries e WHERE NOT EXISTS "
            "(SELECT 1 FROM points_accounts a WHERE a.user_id = e.user_id) GROUP BY e.user_id ORDER BY e.user_id")):
        found.append(f"{n} points entries of user {user_id}, who has no points account")
    for batch_id, n in session.execute(text(
            "SELECT e.batch_id, COUNT(*) FROM points_entries e WHERE e.batch_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM behaviour_batches b WHERE b.id = e.batch_id) GROUP BY e.batch_id ORDER BY e.batch_id")):
        found.append(f"{n} points entries name behaviour batch {batch_id}, which does not exist")
    for user_id, total in session.execute(
            select(PointsEntry.user_id, func.sum(PointsEntry.points)).group_by(PointsEntry.user_id)
            .having(func.sum(PointsEntry.points) < 0)):
        found.append(f"user {user_id}: negative points balance {total}")
    return found
