"""The rewards mall (积分商城): merchants, rewards with stock, redemptions with unguessable codes.

A **merchant** is a holder of kind merchant, registered by the operator. A **reward** (a voucher, a
park or museum ticket, a transit coupon) belongs to one merchant and has a stock, a price in points,
a cash value in fen (what the rewards pool pays the merchant when a code is used, see
`exchange.rewards_pool`) and a validity window: it can be redeemed, and its codes used, from
`valid_from` through `valid_until` (China dates).

A **redemption** is one use case in one transaction: the member's points are taken through
`registry.points.redeem_points` (which serialises the member's debits and refuses an overdraft),
then the stock is decremented by a conditional UPDATE (`stock >= 1`; the schema's CHECK refuses a
negative stock as a second guard), then a code is issued. Any refusal raises before the caller
commits, so nobody loses points without a code and nobody gets a code without points. The code is
80 random bits (`secrets`), shown to its member; the merchant marks it used, once.
"""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from registry import audit, holders, points
from registry.actors import Actor
from registry.db import Base, BigKey, utcnow
from registry.errors import Conflict, InvalidInput, NotFound
from registry.models import Holder, HolderKind

REWARD_KINDS = ("voucher", "park_ticket", "museum_ticket", "transit_coupon")
CHINA_OFFSET = dt.timedelta(hours=8)
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"   # no 0/O, 1/I: read aloud at a counter


class Reward(Base):
    __tablename__ = "rewards"
    __table_args__ = (
        CheckConstraint("stock >= 0", name="stock_nonnegative"),
        CheckConstraint("points_price > 0", name="points_positive"),
        CheckConstraint("cash_value >= 0", name="cash_nonnegative"),
        CheckConstraint("valid_from <= valid_until", name="validity_order"),
        CheckConstraint("kind IN ('voucher', 'park_ticket', 'museum_ticket', 'transit_coupon')", name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    city: Mapped[str | None] = mapped_column(String(64))
    points_price: Mapped[int] = mapped_column(BigInteger)
    cash_value: Mapped[int] = mapped_column(BigInteger)       # fen paid to the merchant per used code
    stock: Mapped[int] = mapped_column(BigInteger)
    valid_from: Mapped[dt.date] = mapped_column(Date)
    valid_until: Mapped[dt.date] = mapped_column(Date)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Redemption(Base):
    __tablename__ = "reward_redemptions"
    __table_args__ = (
        CheckConstraint("status IN ('issued', 'used')", name="status"),
        CheckConstraint("(status = 'used') = (used_at IS NOT NULL)", name="used_at_iff_used"),
        Index("ix_reward_redemptions_user", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    code: Mapped[str] = mapped_column(String(24), unique=True)
    reward_id: Mapped[int] = mapped_column(ForeignKey("rewards.id"), index=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    points: Mapped[int] = mapped_column(BigInteger)
    cash_value: Mapped[int] = mapped_column(BigInteger)
    points_entry_id: Mapped[int] = mapped_column(ForeignKey("points_entries.id"), unique=True)
    valid_until: Mapped[dt.date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(8), default="issued")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    used_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


def china_today(now: dt.datetime | None = None) -> dt.date:
    return ((now or utcnow()) + CHINA_OFFSET).date()


def _positive_int(value: object, field: str, *, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise InvalidInput(f"{field} must be a {'non-negative' if zero else 'positive'} integer", field=field)
    return value


def register_merchant(session: Session, actor: Actor, *, name: str, city: str | None = None,
                      province: str | None = None, credit_code: str | None = None,
                      email: str | None = None) -> Holder:
    """Operator only: a holder of kind merchant, with an admin user `email` if given (who marks the
    merchant's codes used)."""
    actor.require_kind(HolderKind.OPERATOR)
    merchant = holders.create_holder(session, actor, kind=HolderKind.MERCHANT, name=name, city=city,
                                     province=province, credit_code=credit_code)
    if email:
        holders.create_user(session, holder_id=merchant.id, email=email, name=name, role="admin", actor=actor)
    return merchant


def _merchant(session: Session, merchant_id: int) -> Holder:
    holder = session.get(Holder, merchant_id)
    if holder is None or holder.kind is not HolderKind.MERCHANT:
        raise NotFound(f"no merchant {merchant_id}", field="merchant_id")
    return holder


def create_reward(session: Session, actor: Actor, *, merchant_id: int, kind: str, title: str,
                  points_price: int, cash_value: int, stock: int, valid_from: dt.date, valid_until: dt.date,
                  description: str | None = None, city: str | None = None) -> Reward:
    """Operator only. `cash_value` in fen (what the pool pays the merchant per used code)."""
    actor.require_kind(HolderKind.OPERATOR)
    merchant = _merchant(session, merchant_id)
    if kind not in REWARD_KINDS:
        raise InvalidInput(f"kind is one of {', '.join(REWARD_KINDS)}", field="kind")
    if not title or not title.strip():
        raise InvalidInput("title is required", field="title")
    points_price = _positive_int(points_price, "points_price")
    cash_value = _positive_int(cash_value, "cash_value", zero=True)
    stock = _positive_int(stock, "stock", zero=True)
    if valid_until < valid_from:
        raise InvalidInput("valid_until is before valid_from", field="valid_until")
    reward = Reward(merchant_id=merchant.id, kind=kind, title=title.strip(), description=description,
                    city=city or merchant.city, points_price=points_price, cash_value=cash_value, stock=stock,
                    valid_from=valid_from, valid_until=valid_until, active=True, created_at=utcnow())
    session.add(reward)
    session.flush()
    audit.record(session, actor, "reward.created", "reward", reward.id,
                 {"merchant_id": merchant.id, "kind": kind, "title": reward.title, "points_price": points_price,
                  "cash_value": cash_value, "stock": stock,
                  "valid": [valid_from.isoformat(), valid_until.isoformat()]})
    return reward


def get_reward(session: Session, reward_id: int) -> Reward:
    reward = session.get(Reward, reward_id)
    if reward is None:
        raise NotFound(f"no reward {reward_id}", field="reward_id")
    return reward


def restock(session: Session, actor: Actor, reward_id: int, quantity: int) -> Reward:
    """Operator only: add `quantity` (> 0) to the stock (one atomic UPDATE, safe beside redemptions)."""
    actor.require_kind(HolderKind.OPERATOR)
    quantity = _positive_int(quantity, "quantity")
    get_reward(session, reward_id)
    session.execute(update(Reward).where(Reward.id == reward_id).values(stock=Reward.stock + quantity)
                    .execution_options(synchronize_session=False))
    reward = session.get(Reward, reward_id, populate_existing=True)
    assert reward is not None
    audit.record(session, actor, "reward.restocked", "reward", reward_id,
                 {"quantity": quantity, "stock": reward.stock})
    return reward


def list_rewards(session: Session, *, today: dt.date | None = None, city: str | None = None,
                 kind: str | None = None, include_unavailable: bool = False) -> list[Reward]:
    """Rewards on offer today (active, within validity, with stock, and of a merchant that is not
    suspended; all of them with `include_unavailable`)."""
    today = today or china_today()
    stmt = select(Reward).order_by(Reward.points_price, Reward.id)
    if not include_unavailable:
        stmt = stmt.where(Reward.active.is_(True), Reward.valid_from <= today, Reward.valid_until >= today,
                          Reward.stock > 0,
                          Reward.merchant_id.in_(select(Holder.id).where(Holder.suspended.is_(False))))
    if city:
        stmt = stmt.where(Reward.city == city)
    if kind:
        stmt = stmt.where(Reward.kind == kind)
    return list(session.scalars(stmt))


def new_code() -> str:
    """16 characters of a 32-letter alphabet (80 random bits), grouped XXXX-XXXX-XXXX-XXXX."""
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(16))
    return "-".join(raw[i:i + 4] for i in range(0, 16, 4))


def redeem(session: Session, actor: Actor, reward_id: int, *, now: dt.datetime | None = None) -> Redemption:
    """The member (the actor's user) redeems one unit of a reward: points, stock and code together
    (see the module docstring). Raises NotFound (reward_id), Conflict `not_available` (inactive or
    outside its window), `out_of_stock` (field reward_id), `insufficient_points` (field points).
    The caller commits; on any error it must roll back (nothing is then changed)."""
    if actor.user_id is None:
        raise InvalidInput("a member redeems for themself", field="user_id")
    reward = get_reward(session, reward_id)
    today = china_today(now)
    if not reward.active or not reward.valid_from <= today <= reward.valid_until:
        raise Conflict(f"reward {reward_id} is not on offer today", field="reward_id", code="not_available")
    if unavailable_because(session, reward, today) == "merchant_suspended":
        raise Conflict(f"reward {reward_id}'s merchant is suspended", field="reward_id", code="not_available")
    # The ledger's reference is not the code: the ledger and the audit log never show a usable code.
    entry = points.redeem_points(session, actor, actor.user_id, reward.points_price,
                                 f"reward:{reward.id}:{secrets.token_hex(8)}")
    # The hot row is locked last and only for the rest of this short transaction.
    taken = session.execute(update(Reward).where(Reward.id == reward_id, Reward.stock >= 1)
                            .values(stock=Reward.stock - 1).execution_options(synchronize_session=False))
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"reward {reward_id} is out of stock", field="reward_id", code="out_of_stock")
    r = Redemption(code=new_code(), reward_id=reward.id, merchant_id=reward.merchant_id, user_id=actor.user_id,
                   points=reward.points_price, cash_value=reward.cash_value, points_entry_id=entry.id,
                   valid_until=reward.valid_until, status="issued", created_at=utcnow())
    session.add(r)
    session.flush()
    audit.record(session, actor, "reward.redeemed", "redemption", r.id,
                 {"reward_id": reward.id, "user_id": actor.user_id, "points": reward.points_price,
                  "points_entry_id": entry.id, "merchant_id": reward.merchant_id})
    return r


def redemptions_of(session: Session, user_id: int, limit: int = 100) -> list[Redemption]:
    return list(session.scalars(select(Redemption).where(Redemption.user_id == user_id)
                                .order_by(Redemption.id.desc()).limit(limit)))


def mark_used(session: Session, actor: Actor, code: str, *, now: dt.datetime | None = None) -> Redemption:
    """The merchant marks a code used, once. Another merchant's (or an unknown) code is NotFound
    (field code); Conflict `already_used`, or `expired` after the reward's `valid_until`. Paying the
    merchant is `exchange.rewards_pool.use_code`'s part. The caller commits."""
    actor.require_kind(HolderKind.MERCHANT)
    code = (code or "").strip().upper()
    r = session.scalar(select(Redemption).where(Redemption.code == code).with_for_update())
    if r is None or r.merchant_id != actor.holder_id:
        raise NotFound("no such code for this merchant", field="code")
    if r.status == "used":
        raise Conflict(f"code was already used at {r.used_at:%Y-%m-%d %H:%M} UTC", field="code",
                       code="already_used")
    if china_today(now) > r.valid_until:
        raise Conflict(f"code expired after {r.valid_until}", field="code", code="expired")
    r.status, r.used_at, r.used_by_id = "used", now or utcnow(), actor.user_id
    audit.record(session, actor, "reward.code_used", "redemption", r.id,
                 {"merchant_id": r.merchant_id, "reward_id": r.reward_id, "cash_value": r.cash_value})
    return r


def check(session: Session) -> list[str]:
    """Every redemption took its points (its ledger entry is a redeem of that many points), and no
    stock is negative."""
    found = []
    for rid, pts, entry_pts, kind in session.execute(
            select(Redemption.id, Redemption.points, points.PointsEntry.points, points.PointsEntry.kind)
            .join(points.PointsEntry, points.PointsEntry.id == Redemption.points_entry_id)
            .where((points.PointsEntry.points != -Redemption.points) | (points.PointsEntry.kind != "redeem"))):
        found.append(f"redemption {rid} of {pts} points has ledger entry {kind} {entry_pts}")
    for rid, stock in session.execute(select(Reward.id, Reward.stock).where(Reward.stock < 0)):
        found.append(f"reward {rid} has negative stock {stock}")
    return found


def unavailable_because(session: Session, reward: Reward, today: dt.date | None = None) -> str | None:
    """Why the reward cannot be redeemed today (`inactive`, `not_yet_valid`, `expired`,
    `merchant_suspended`, `out_of_stock`), or None when it can.

    A suspended merchant's rewards leave the mall and cannot be redeemed. The codes it issued before
    stay valid (the residents paid for them in points): the merchant may still mark them used, and
    the pool's payment for them waits until the suspension is lifted (`exchange.rewards_pool`)."""
    today = today or china_today()
    if not reward.active:
        return "inactive"
    if today < reward.valid_from:
        return "not_yet_valid"
    if today > reward.valid_until:
        return "expired"
    merchant = session.get(Holder, reward.merchant_id)
    if merchant is None or merchant.suspended:
        return "merchant_suspended"
    if reward.stock <= 0:
        return "out_of_stock"
    return None
