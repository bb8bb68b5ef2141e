"""Recognition: badges and the annual leaderboards, over the accepted behaviour and the points ledger.

**Badges** are rules over what a member has done (`BADGES`). `award_badges` finds every user who
meets a rule and has not got its badge, and awards it with the time (one INSERT .. ON CONFLICT DO
NOTHING per award, unique per user and badge): awarded once, whatever runs it and however often.
`achieved_at` is when the rule was first met where the events say so (the first ride's start).

**Leaderboards** rank members by the grams of their accepted reductions in a calendar year (the
programme's day, China time), within a city, a district of it or a community of that district (the
member's enrolment). Ties share a rank (1, 2, 2, 4: standard competition ranking) and are listed by
user id, so the same data always gives the same board.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import DateTime, ForeignKey, String, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from registry import audit
from registry.behaviour import BehaviourEvent
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


def _qualifying(session: Session) -> list[tuple[str, int, dt.datetime | None]]:
    """(badge code, user id, achieved at) of every rule met."""
    accepted = BehaviourEvent.status == "accepted"
    out: list[tuple[str, int, dt.datetime | None]] = []
    for code, types in _FIRST.items():
        out += [(code, int(u), at) for u, at in session.execute(
            select(BehaviourEvent.user_id, func.min(BehaviourEvent.started_at))
            .where(accepted, BehaviourEvent.code.in_(types)).group_by(BehaviourEvent.user_id))]
    for code, grams in _SAVED_G.items():
        out += [(code, int(u), None) for (u,) in session.execute(
            select(BehaviourEvent.user_id).where(accepted).group_by(BehaviourEvent.user_id)
            .having(func.sum(BehaviourEvent.reduction_g) >= grams))]
    for code, pts in _EARNED.items():
        out += [(code, int(u), None) for (u,) in session.execute(
            select(PointsEntry.user_id).where(PointsEntry.kind == "earn").group_by(PointsEntry.user_id)
            .having(func.sum(PointsEntry.points) >= pts))]
    return out


def award_badges(session: Session, now: dt.datetime | None = None) -> list[tuple[int, str]]:
    """Award every badge earned and not yet awarded; returns (user id, badge code) of the new
    awards, in user then badge order. Idempotent (see the module docstring). The caller commits."""
    now = now or utcnow()
    have = set(session.execute(select(UserBadge.user_id, UserBadge.code)).tuples())
    new = sorted((u, c, at) for c, u, at in _qualifying(session) if (u, c) not in have)
    for user_id, code, achieved_at in new:
        insert_ignore(session, UserBadge, user_id=user_id, code=code, achieved_at=achieved_at, awarded_at=now)
    if new:
        audit.record(session, None, "badges.awarded", "badges", now.isoformat(),
                     {"awards": [[u, c] for u, c, _ in new]})
    return [(u, c) for u, c, _ in new]


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
    total = func.sum(BehaviourEvent.reduction_g)
    stmt = (select(BehaviourEvent.user_id, total.label("g"))
            .join(Member, (Member.programme_id == BehaviourEvent.programme_id)
                  & (Member.user_id == BehaviourEvent.user_id))
            .where(BehaviourEvent.status == "accepted", BehaviourEvent.day >= dt.date(year, 1, 1),
                   BehaviourEvent.day < dt.date(year + 1, 1, 1))
            .group_by(BehaviourEvent.user_id).having(total > 0)
            .order_by(total.desc(), BehaviourEvent.user_id).limit(limit))
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
