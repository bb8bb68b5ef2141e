"""API v1 of the rewards mall, the rewards pool, recognition and programme issuance."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate
from sqlalchemy import select
from sqlalchemy.orm import Session

from exchange import programme_issuance, rewards_pool
from registry import holders, programme_periods, recognition, rewards
from registry.actors import Actor
from registry.errors import NotFound
from registry.models import Holder, HolderKind, MonitoringReport, Project, ProjectKind
from web.api.blueprint import bp
from web.api.core import endpoint


class MerchantCreate(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    city = fields.String(validate=validate.Length(max=64))
    province = fields.String(validate=validate.Length(max=64))
    credit_code = fields.String(validate=validate.Length(max=32))
    email = fields.Email(metadata={"description": "an admin user of the merchant, who marks codes used"})


class RewardCreate(Schema):
    merchant_id = fields.Integer(strict=True, required=True)
    kind = fields.String(required=True, validate=validate.OneOf(rewards.REWARD_KINDS))
    title = fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = fields.String(validate=validate.Length(max=2000))
    city = fields.String(validate=validate.Length(max=64))
    points_price = fields.Integer(strict=True, required=True, validate=validate.Range(min=1))
    cash_value = fields.Integer(strict=True, required=True, validate=validate.Range(min=0),
                                metadata={"description": "fen paid by the rewards pool to the merchant per used code"})
    stock = fields.Integer(strict=True, required=True, validate=validate.Range(min=0))
    valid_from = fields.Date(required=True)
    valid_until = fields.Date(required=True)


class RewardOut(Schema):
    id = fields.Integer()
    merchant_id = fields.Integer()
    kind = fields.String()
    title = fields.String()
    description = fields.String(allow_none=True)
    city = fields.String(allow_none=True)
    points_price = fields.Integer()
    cash_value = fields.Integer()
    stock = fields.Integer()
    valid_from = fields.Date()
    valid_until = fields.Date()
    active = fields.Boolean()
    available = fields.Boolean(metadata={"description": "redeemable today (one reward's page only)"})
    unavailable_reason = fields.String(allow_none=True, metadata={
        "description": "inactive, not_yet_valid, expired, merchant_suspended or out_of_stock"})


class RewardsQuery(Schema):
    city = fields.String()
    kind = fields.String(validate=validate.OneOf(rewards.REWARD_KINDS))


class Restock(Schema):
    quantity = fields.Integer(strict=True, required=True, validate=validate.Range(min=1))


class RedemptionOut(Schema):
    id = fields.Integer()
    code = fields.String()
    reward_id = fields.Integer()
    merchant_id = fields.Integer()
    points = fields.Integer()
    status = fields.String()
    valid_until = fields.Date()
    created_at = fields.DateTime()
    used_at = fields.DateTime(allow_none=True)


class UseCode(Schema):
    code = fields.String(required=True, validate=validate.Length(min=1, max=24))


class StatementQuery(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class LeaderboardQuery(Schema):
    year = fields.Integer(required=True, validate=validate.Range(min=2000, max=2200))
    city = fields.String(validate=validate.Length(min=1, max=64))
    district = fields.String(validate=validate.Length(min=1, max=64))
    community = fields.String(validate=validate.Length(min=1, max=100))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class ClosePeriod(Schema):
    period = fields.String(required=True, validate=validate.Regexp(r"^\d{4}-(0[1-9]|1[0-2])$",
                                                                    error="period is YYYY-MM"))


class PeriodOut(Schema):
    id = fields.Integer()
    programme_id = fields.Integer()
    period = fields.String()
    period_start = fields.Date()
    period_end = fields.Date()
    counted_g = fields.Integer()
    carried_in_g = fields.Integer()
    kg = fields.Integer()
    carried_out_g = fields.Integer()
    report_id = fields.Integer(allow_none=True)
    report_status = fields.String(allow_none=True, metadata={
        "description": "the status of the period's live report: submitted, verified, rejected, issued"})
    reports = fields.List(fields.Dict(), metadata={
        "description": "every report submitted for the period, rejected ones included (resubmission only)"})
    closed_at = fields.DateTime()


class ResubmitPeriod(Schema):
    note = fields.String(validate=validate.Length(max=2000), metadata={"description": "what was corrected"})
    documents = fields.List(fields.Dict(), metadata={"description": "{name, kind, sha256, url, size}"})


# -- the mall ----------------------------------------------------------------------------------


@endpoint(bp, "/merchants", "POST", summary="Operator registers a merchant of the rewards mall",
          tags=("operator",), auth=True, body=MerchantCreate, status=201)
def create_merchant(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    m = rewards.register_merchant(session, actor, **body)
    return {"id": m.id, "name": m.name, "kind": m.kind.value, "city": m.city}


class MerchantSuspend(Schema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=1000))


def _merchant_status(session: Session, actor: Actor, merchant_id: int, suspended: bool, reason: str) -> Any:
    actor.require_kind(HolderKind.OPERATOR)
    holder = session.get(Holder, merchant_id)
    if holder is None or holder.kind is not HolderKind.MERCHANT:
        raise NotFound(f"no merchant {merchant_id}", field="merchant_id")
    m = holders.set_holder_suspension(session, actor, merchant_id, suspended, reason)
    return {"id": m.id, "name": m.name, "suspended": m.suspended, "suspension_reason": m.suspension_reason}


@endpoint(bp, "/merchants/<int:merchant_id>/suspend", "POST",
          summary="Operator suspends a merchant: its rewards leave the mall and cannot be redeemed; codes "
                  "already issued stay valid, their payments wait", tags=("operator",), auth=True,
          body=MerchantSuspend)
def suspend_merchant(session: Session, actor: Actor, merchant_id: int, *, body: dict[str, Any]) -> Any:
    return _merchant_status(session, actor, merchant_id, True, body["reason"])


@endpoint(bp, "/merchants/<int:merchant_id>/reinstate", "POST",
          summary="Operator lifts a merchant's suspension (its held payments are paid by the next settlement)",
          tags=("operator",), auth=True, body=MerchantSuspend)
def reinstate_merchant(session: Session, actor: Actor, merchant_id: int, *, body: dict[str, Any]) -> Any:
    return _merchant_status(session, actor, merchant_id, False, body["reason"])


@endpoint(bp, "/rewards", summary="Rewards on offer today (public)", tags=("rewards",), query=RewardsQuery,
          response=RewardOut, many=True)
def list_rewards(session: Session, actor: Actor | None, *, query: dict[str, Any]) -> Any:
    return rewards.list_rewards(session, city=query.get("city"), kind=query.get("kind"))


@endpoint(bp, "/rewards/<int:reward_id>", summary="One reward (public)", tags=("rewards",), response=RewardOut)
def get_reward(session: Session, actor: Actor | None, reward_id: int) -> Any:
    reward = rewards.get_reward(session, reward_id)
    why = rewards.unavailable_because(session, reward)
    return {c.key: getattr(reward, c.key) for c in rewards.Reward.__table__.columns} | {
        "available": why is None, "unavailable_reason": why}


@endpoint(bp, "/rewards", "POST", summary="Operator creates a reward", tags=("operator",), auth=True,
          body=RewardCreate, response=RewardOut, status=201)
def create_reward(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    return rewards.create_reward(session, actor, **body)


@endpoint(bp, "/rewards/<int:reward_id>/restock", "POST", summary="Operator adds stock", tags=("operator",),
          auth=True, body=Restock, response=RewardOut)
def restock_reward(session: Session, actor: Actor, reward_id: int, *, body: dict[str, Any]) -> Any:
    return rewards.restock(session, actor, reward_id, body["quantity"])


@endpoint(bp, "/rewards/<int:reward_id>/redeem", "POST",
          summary="A member redeems points for one unit of a reward: the answer has the code",
          tags=("rewards",), auth=True, response=RedemptionOut, status=201)
def redeem_reward(session: Session, actor: Actor, reward_id: int) -> Any:
    return rewards.redeem(session, actor, reward_id)


@endpoint(bp, "/me/redemptions", summary="My redemptions and their codes, newest first", tags=("rewards",),
          auth=True, response=RedemptionOut, many=True)
def my_redemptions(session: Session, actor: Actor) -> Any:
    assert actor.user_id is not None
    return rewards.redemptions_of(session, actor.user_id)


@endpoint(bp, "/redemptions/use", "POST",
          summary="The merchant marks a code used; the rewards pool pays its cash value (or it waits)",
          tags=("rewards",), auth=True, body=UseCode)
def use_code(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    used = rewards_pool.use_code(session, actor, body["code"])
    r, p = used.redemption, used.payment
    return {"redemption_id": r.id, "reward_id": r.reward_id, "status": r.status,
            "used_at": r.used_at.isoformat() + "Z" if r.used_at else None,
            "payment": None if p is None else {"id": p.id, "amount": p.amount, "status": p.status}}


# -- the pool ----------------------------------------------------------------------------------


@endpoint(bp, "/rewards-pool", summary="The rewards pool's public statement (fen)", tags=("rewards",),
          query=StatementQuery)
def pool_statement(session: Session, actor: Actor | None, *, query: dict[str, Any]) -> Any:
    return rewards_pool.statement(session, query["limit"])


@endpoint(bp, "/rewards-pool/settle", "POST",
          summary="Operator runs the settlement now: programme trade proceeds in, waiting payments out",
          tags=("operator",), auth=True)
def pool_settle(session: Session, actor: Actor) -> Any:
    funded, paid = rewards_pool.settle(session, actor)
    return {"funded_trades": [i.trade_id for i in funded.funded], "funded": funded.amount,
            "unfunded_trades": funded.unfunded_trade_ids, "paid_payments": [p.id for p in paid],
            "paid": sum(p.amount for p in paid), "balance": rewards_pool.pool_balance(session)}


# -- recognition -------------------------------------------------------------------------------


@endpoint(bp, "/me/badges", summary="My badges, with when they were achieved and awarded", tags=("behaviour",),
          auth=True)
def my_badges(session: Session, actor: Actor) -> Any:
    assert actor.user_id is not None
    return {"user_id": actor.user_id, "badges": recognition.badges_of(session, actor.user_id)}


@endpoint(bp, "/badges", summary="The badges and their rules (public)", tags=("behaviour",))
def list_badges(session: Session, actor: Actor | None) -> Any:
    return [{"code": b.code, "name_zh": b.name_zh, "name_en": b.name_en, "description": b.description}
            for b in recognition.BADGES.values()]


@endpoint(bp, "/leaderboards", summary="The annual leaderboard of a city, district or community (public)",
          tags=("behaviour",), query=LeaderboardQuery)
def leaderboard(session: Session, actor: Actor | None, *, query: dict[str, Any]) -> Any:
    board = recognition.leaderboard(session, query["year"], city=query.get("city"),
                                    district=query.get("district"), community=query.get("community"),
                                    limit=query["limit"])
    me = actor.user_id if actor else None
    board["entries"] = [{k: v for k, v in e.items() if k != "user_id"} | {"me": e["user_id"] == me}
                        for e in board["entries"]]
    return board


# -- programme issuance ------------------------------------------------------------------------


@endpoint(bp, "/programmes/<int:programme_id>/periods", summary="A programme's closed periods (public)",
          tags=("projects",), response=PeriodOut, many=True)
def programme_periods_list(session: Session, actor: Actor | None, programme_id: int) -> Any:
    p = session.get(Project, programme_id)
    if p is None or p.kind is not ProjectKind.PROGRAMME:
        raise NotFound(f"no programme {programme_id}", field="programme_id")
    return [_period_out(session, p) for p in programme_periods.periods_of(session, programme_id)]


@endpoint(bp, "/programmes/<int:programme_id>/periods", "POST",
          summary="Close a programme's month into a monitoring report (operator or owner; idempotent)",
          tags=("projects",), auth=True, body=ClosePeriod, response=PeriodOut, status=201)
def close_programme_period(session: Session, actor: Actor, programme_id: int, *, body: dict[str, Any]) -> Any:
    row, _ = programme_periods.close_period(session, actor, programme_id, body["period"])
    return _period_out(session, row)


def _period_out(session: Session, row: programme_periods.ProgrammePeriod, *,
                history: bool = False) -> dict[str, Any]:
    report = session.get(MonitoringReport, row.report_id) if row.report_id is not None else None
    out = {c: getattr(row, c) for c in ("id", "programme_id", "period", "period_start", "period_end", "counted_g",
                                        "carried_in_g", "kg", "carried_out_g", "report_id", "closed_at")}
    out["report_status"] = report.status.value if report is not None else None
    if history:
        out["reports"] = [{"id": r.id, "status": r.status.value, "claimed_kg": r.claimed_kg,
                           "approved_kg": r.approved_kg, "reason": r.status_reason, "external_ref": r.external_ref}
                          for r in programme_periods.report_history(session, row.programme_id, row.period)]
    return out


@endpoint(bp, "/programmes/<int:programme_id>/periods/<period>/resubmit", "POST",
          summary="Resubmit a closed period whose report was rejected: a corrected report, same period and kg "
                  "(operator or owner)", tags=("projects",), auth=True, body=ResubmitPeriod, response=PeriodOut,
          status=201)
def resubmit_programme_period(session: Session, actor: Actor, programme_id: int, period: str, *,
                              body: dict[str, Any]) -> Any:
    row = programme_periods.resubmit_period(session, actor, programme_id, period, note=body.get("note"),
                                            documents=body.get("documents"))
    return _period_out(session, row, history=True)


@endpoint(bp, "/programmes/<int:programme_id>/periods/<period>/offer", "POST",
          summary="Operator offers a closed, issued period for sale now (else the daily job does)",
          tags=("operator",), auth=True)
def offer_programme_period(session: Session, actor: Actor, programme_id: int, period: str) -> Any:
    actor.require_kind(HolderKind.OPERATOR)
    row = session.scalar(select(programme_periods.ProgrammePeriod).where(
        programme_periods.ProgrammePeriod.programme_id == programme_id,
        programme_periods.ProgrammePeriod.period == period))
    if row is None:
        raise NotFound(f"programme {programme_id} has no closed period {period}", field="period")
    offer = programme_issuance.offer_period(session, row)
    return {"offered": offer is not None, "order_id": offer.order_id if offer else None,
            "qty_kg": offer.qty_kg if offer else 0, "price": offer.price if offer else None}
