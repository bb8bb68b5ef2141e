"""Recognition: badges and the annual leaderboards, over the accepted behaviour and the points ledger.

`refresh` (the badge job, every 10 minutes) takes in each complete behaviour batch once (marked in
`recognised_batches`, in the same transaction): it adds the batch's accepted grams to the members'
year totals (`member_year_totals`, by programme, user and China-time year) and evaluates the badge
rules for the batch's users only, so a run costs what the new batches hold, not the history.

**Badges** are rules over what a member has done (`BADGES`). `award_badges` finds which of the given
users meet a rule and have not got its badge, and awards it with the time (INSERT .. ON CONFLICT DO
NOTHING, unique per user and badge): awarded once, whatever runs it and however often.
`achieved_at` is when the rule was first met where the events say so (the first ride's start).

**Leaderboards** rank members by the grams of their accepted reductions in a calendar year (the
programme's day, China time; from the year totals, so as of the last refresh), within a city, a
district of it or a community of that district (the member's enrolment). Ties share a rank (1, 2,
2, 4: standard competition ranking) and are listed by user id, so the same data gives the same board.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
    extract,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from registry import audit
from registry.behaviour import BehaviourBatch, BehaviourEvent
from registry.db import Base, utcnow
from registry.errors import InvalidInput
from registry.models import User
from registry.partners import Member
from registry.points import PointsEntry, insert_ignore


@dataclass(frozen=True, slots=True)
class Badge:
    code: str
    name_zh: str
    name_en: str
    description: str


BADGES: dict[str, Badge] = {b.code: b for b in (
    Badge("first_ride", "绿色出行第一步", "First ride", "a first accepted public-transit or shared-bike trip"),
    Badge("first_sorting", "垃圾分类新人", "First sorting", "a first accepted recycling drop-off"),
    Badge("saved_10kg", "减碳10千克", "10 kg saved", "10 kg (10,000 g) of accepted reductions"),
    Badge("saved_100kg", "减碳100千克", "100 kg saved", "100 kg (100,000 g) of accepted reductions"),
    Badge("points_1000", "千分达人", "1,000 points", "1,000 points earned (behaviour imports)"),
)}
_FIRST = {"first_ride": ("CI-TRANSIT", "CI-BIKE"), "first_sorting": ("CI-WASTE",)}
_SAVED_G = {"saved_10kg": 10_000, "saved_100kg": 100_000}
_EARNED = {"points_1000": 1000}


class UserBadge(Base):
    __tablename__ = "user_badges"
    __table_args__ = (UniqueConstraint("user_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    code: Mapped[str] = mapped_column(String(32))
    achieved_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    awarded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class RecognisedBatch(Base):
    """A complete behaviour batch whose accepted rows are in the totals and the badges: once each."""

    __tablename__ = "recognised_batches"

    batch_id: Mapped[int] = mapped_column(ForeignKey("behaviour_batches.id"), primary_key=True,
                                          autoincrement=False)
    processed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class MemberYearTotal(Base):
    """A member's accepted grams in a programme and a (China-time) calendar year: the leaderboards'
    source, kept up to date batch by batch (`refresh`)."""

    __tablename__ = "member_year_totals"
    __table_args__ = (
        PrimaryKeyConstraint("programme_id", "user_id", "year"),
        CheckConstraint("reduction_g >= 0", name="nonnegative"),
        Index("ix_member_year_totals_board", "year", "reduction_g"),
    )

    programme_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    year: Mapped[int] = mapped_column(Integer)
    reduction_g: Mapped[int] = mapped_column(BigInteger)


def _upsert_totals(session: Session, rows: list[dict[str, int]]) -> None:
    """Add grams to the members' year totals (INSERT .. ON CONFLICT DO UPDATE, either database)."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        stmt = pg_insert(MemberYearTotal)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        stmt = sqlite_insert(MemberYearTotal)  # type: ignore[assignment]
    session.execute(stmt.on_conflict_do_update(
        index_elements=["programme_id", "user_id", "year"],
        set_={"reduction_g": MemberYearTotal.reduction_g + stmt.excluded.reduction_g}), rows)


def _qualifying(session: Session, users: list[int]) -> list[tuple[str, int, dt.datetime | None]]:
    """(badge code, user id, achieved at) of every rule the `users` meet (index probes per user)."""
    out: list[tuple[str, int, dt.datetime | None]] = []
    for code, types in _FIRST.items():
        out += [(code, int(u), at) for u, at in session.execute(
            select(BehaviourEvent.user_id, func.min(BehaviourEvent.started_at))
            .where(BehaviourEvent.user_id.in_(users), BehaviourEvent.code.in_(types),
                   BehaviourEvent.status == "accepted").group_by(BehaviourEvent.user_id))]
    for code, grams in _SAVED_G.items():
        out += [(code, int(u), None) for (u,) in session.execute(
            select(MemberYearTotal.user_id).where(MemberYearTotal.user_id.in_(users))
            .group_by(MemberYearTotal.user_id).having(func.sum(MemberYearTotal.reduction_g) >= grams))]
    for code, pts in _EARNED.items():
        out += [(code, int(u), None) for (u,) in session.execute(
            select(PointsEntry.user_id).where(PointsEntry.user_id.in_(users), PointsEntry.kind == "earn")
            .group_by(PointsEntry.user_id).having(func.sum(PointsEntry.points) >= pts))]
    return out


def award_badges(session: Session, users: list[int], now: dt.datetime | None = None) -> list[tuple[int, str]]:
    """Award the `users` every badge they have earned and not yet got; returns (user id, badge code)
    of the new awards, in user then badge order. Idempotent. The caller commits."""
    now = now or utcnow()
    new: list[tuple[int, str, dt.datetime | None]] = []
    for i in range(0, len(users), 1000):
        chunk = users[i:i + 1000]
        have = set(session.execute(select(UserBadge.user_id, UserBadge.code)
                                   .where(UserBadge.user_id.in_(chunk))).tuples().all())
        new += [(u, c, at) for c, u, at in _qualifying(session, chunk) if (u, c) not in have]
    new.sort()
    for user_id, code, achieved_at in new:
        insert_ignore(session, UserBadge, user_id=user_id, code=code, achieved_at=achieved_at, awarded_at=now)
    if new:
        audit.record(session, None, "badges.awarded", "badges", now.isoformat(),
                     {"awards": [[u, c] for u, c, _ in new]})
    return [(u, c) for u, c, _ in new]


def refresh(session: Session, now: dt.datetime | None = None, max_batches: int = 200) -> list[tuple[int, str]]:
    """Take in the complete behaviour batches not yet recognised (oldest first, at most
    `max_batches`): add their accepted grams to the members' year totals and award badges to their
    users, marking each batch recognised, all in the caller's transaction, so each batch counts
    once. Reads only those batches' rows and the users' own rows, never the whole history.
    Returns the new awards."""
    batch_ids = list(session.scalars(
        select(BehaviourBatch.id).where(BehaviourBatch.status == "complete",
                                        ~BehaviourBatch.id.in_(select(RecognisedBatch.batch_id)))
        .order_by(BehaviourBatch.id).limit(max_batches)))
    if not batch_ids:
        return []
    year = extract("year", BehaviourEvent.day)
    in_batches = (BehaviourEvent.batch_id.in_(batch_ids), BehaviourEvent.status == "accepted")
    _upsert_totals(session, [
        {"programme_id": int(p), "user_id": int(u), "year": int(y), "reduction_g": int(g)}
        for p, u, y, g in session.execute(
            select(BehaviourEvent.programme_id, BehaviourEvent.user_id, year, func.sum(BehaviourEvent.reduction_g))
            .where(*in_batches, BehaviourEvent.reduction_g > 0)
            .group_by(BehaviourEvent.programme_id, BehaviourEvent.user_id, year))])
    users = sorted(int(u) for u in session.scalars(select(BehaviourEvent.user_id).where(*in_batches).distinct())
                   if u is not None)
    at = now or utcnow()
    session.add_all(RecognisedBatch(batch_id=b, processed_at=at) for b in batch_ids)
    session.flush()
    return award_badges(session, users, now=at)


def check(session: Session) -> list[str]:
    """The year totals equal the accepted grams of the recognised batches."""
    year = extract("year", BehaviourEvent.day)
    events = {(int(p), int(u), int(y)): int(g) for p, u, y, g in session.execute(
        select(BehaviourEvent.programme_id, BehaviourEvent.user_id, year, func.sum(BehaviourEvent.reduction_g))
        .where(BehaviourEvent.batch_id.in_(select(RecognisedBatch.batch_id)), BehaviourEvent.status == "accepted",
               BehaviourEvent.reduction_g > 0)
        .group_by(BehaviourEvent.programme_id, BehaviourEvent.user_id, year))}
    totals = {(t.programme_id, t.user_id, t.year): t.reduction_g for t in session.scalars(
        select(MemberYearTotal).execution_options(populate_existing=True))}
    return [f"programme {k[0]} user {k[1]} year {k[2]}: totals say {totals.get(k, 0)} g, events {events.get(k, 0)} g"
            for k in sorted(set(events) | set(totals)) if events.get(k, 0) != totals.get(k, 0)]


def badges_of(session: Session, user_id: int) -> list[dict[str, Any]]:
    return [{"code": b.code, "name_zh": BADGES[b.code].name_zh, "name_en": BADGES[b.code].name_en,
             "description": BADGES[b.code].description,
             "achieved_at": b.achieved_at.isoformat() + "Z" if b.achieved_at else None,
             "awarded_at": b.awarded_at.isoformat() + "Z"}
            for b in session.scalars(select(UserBadge).where(UserBadge.user_id == user_id)
                                     .order_by(UserBadge.awarded_at, UserBadge.code))]


def mask_name(name: str) -> str:
    """The public form of a member's name: its first character, then one * per other character."""
    name = (name or "").strip()
    return name[:1] + "*" * max(len(name) - 1, 1) if name else "*"


def leaderboard(session: Session, year: int, *, city: str | None = None, district: str | None = None,
                community: str | None = None, limit: int = 100) -> dict[str, Any]:
    """The year's board (see the module docstring) of the scope named by the most specific of
    `city`, `district`, `community` given (none: every member). Names are masked."""
    if isinstance(year, bool) or not isinstance(year, int) or not 2000 <= year <= 2200:
        raise InvalidInput("year is 2000-2200", field="year")
    if district and not city:
        raise InvalidInput("a district needs its city", field="city")
    if community and not district:
        raise InvalidInput("a community needs its district", field="district")
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit is 1-1000", field="limit")
    total = func.sum(MemberYearTotal.reduction_g)
    stmt = (select(MemberYearTotal.user_id, total.label("g"))
            .join(Member, (Member.programme_id == MemberYearTotal.programme_id)
                  & (Member.user_id == MemberYearTotal.user_id))
            .where(MemberYearTotal.year == year)
            .group_by(MemberYearTotal.user_id).having(total > 0)
            .order_by(total.desc(), MemberYearTotal.user_id).limit(limit))
    for column, value in ((Member.city, city), (Member.district, district), (Member.community, community)):
        if value:
            stmt = stmt.where(column == value)
    rows = session.execute(stmt).all()
    names = dict(session.execute(select(User.id, User.name).where(User.id.in_([r[0] for r in rows]))).tuples().all())
    board, rank, previous = [], 0, None
    for i, (user_id, grams) in enumerate(rows, start=1):
        if grams != previous:
            rank, previous = i, grams
        board.append({"rank": rank, "user_id": int(user_id), "name": mask_name(names.get(user_id, "")),
                      "reduction_g": int(grams)})
    scope = "community" if community else "district" if district else "city" if city else "all"
    return {"year": year, "scope": scope, "city": city, "district": district, "community": community,
            "entries": board}
