"""A suspended merchant: its rewards leave the mall and cannot be redeemed (409 naming reward_id);
the codes it issued before stay valid and can be marked used, but the pool's payment for them waits
(without holding up other merchants) until the suspension is lifted."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from exchange import rewards_pool, wallets
from exchange.rewards_pool import MerchantPayment
from registry import rewards
from registry.actors import Actor
from registry.models import User
from tests.behaviour.test_behaviour_api import bearer
from tests.rewards.mall import build_mall, make_reward


def test_a_suspended_merchant_leaves_the_mall_and_its_old_codes_wait_to_be_paid(client: Any, session: Session) -> None:
    mall = build_mall(session, residents=2, grant=1000, stock=5, points_price=300, cash_value=15_00)
    other = rewards.register_merchant(session, mall.bw.operator.actor, name="深圳博物馆", city="深圳市",
                                      email="counter@museum.example")
    museum = make_reward(session, mall.bw, other.id, points_price=200, cash_value=10_00, kind="museum_ticket")
    museum_user = session.scalars(select(User).where(User.holder_id == other.id)).one()
    session.commit()
    museum_id, other_id, park_merchant = museum.id, other.id, mall.merchant.holder.id   # plain ints: the
    # test's session reads nothing while the API writes (SQLite)
    op = bearer(session, mall.bw.operator.actor.user_id)
    member = bearer(session, mall.bw.uid(0))
    park_counter = bearer(session, mall.merchant.actor.user_id)
    museum_counter = bearer(session, Actor.of(museum_user).user_id)
    park = mall.reward_id
    before = client.post(f"/api/v1/rewards/{park}/redeem", headers=member)
    assert before.status_code == 201
    old_code = before.json["code"]
    assert [r["id"] for r in client.get("/api/v1/rewards").json] == [museum_id, park]      # by points price

    url = f"/api/v1/merchants/{park_merchant}"
    assert client.post(url + "/suspend", json={"reason": "x"}, headers=member).status_code == 403
    no_reason = client.post(url + "/suspend", json={}, headers=op)
    assert (no_reason.status_code, no_reason.json["error"]["field"]) == (422, "reason")
    s = client.post(url + "/suspend", json={"reason": "投诉调查"}, headers=op)
    assert s.status_code == 200 and s.json["suspended"] is True
    assert client.post(f"/api/v1/merchants/{mall.bw.uid(0)}/suspend", json={"reason": "x"},
                       headers=op).status_code == 404
    # out of the mall; its page says why; redeeming is refused and takes nothing
    assert [r["id"] for r in client.get("/api/v1/rewards").json] == [museum_id]
    page = client.get(f"/api/v1/rewards/{park}").json
    assert (page["available"], page["unavailable_reason"], page["stock"]) == (False, "merchant_suspended", 4)
    refused = client.post(f"/api/v1/rewards/{park}/redeem", headers=member)
    assert (refused.status_code, refused.json["error"]["code"], refused.json["error"]["field"]) == (
        409, "not_available", "reward_id")
    assert client.get("/api/v1/me/points", headers=member).json["balance"] == 700
    assert client.get(f"/api/v1/rewards/{park}").json["stock"] == 4
    # the code issued before stays valid: the counter marks it used; the payment is held
    wallets.deposit(session, mall.bw.operator.actor, rewards_pool.pool_holder_id(session), 100_00,
                    external_ref="grant-1")
    session.commit()
    used = client.post("/api/v1/redemptions/use", json={"code": old_code}, headers=park_counter)
    assert used.status_code == 200, used.json
    assert (used.json["status"], used.json["payment"]["status"]) == ("used", "waiting")
    # another merchant's later payment is not held up by it
    museum_code = client.post(f"/api/v1/rewards/{museum_id}/redeem", headers=member).json["code"]
    paid = client.post("/api/v1/redemptions/use", json={"code": museum_code}, headers=museum_counter)
    assert paid.json["payment"]["status"] == "paid"
    assert client.post("/api/v1/rewards-pool/settle", headers=op).json["paid"] == 0
    assert rewards_pool.pool_balance(session) == 90_00
    session.rollback()
    # reinstated: back in the mall, redeemable, and the held payment is paid by the next settlement
    assert client.post(url + "/reinstate", json={"reason": "调查结束"}, headers=op).json["suspended"] is False
    assert [r["id"] for r in client.get("/api/v1/rewards").json] == [museum_id, park]
    settled = client.post("/api/v1/rewards-pool/settle", headers=op).json
    assert (settled["paid"], settled["balance"]) == (15_00, 75_00)
    assert client.post(f"/api/v1/rewards/{park}/redeem", headers=member).status_code == 201
    statuses = session.execute(select(MerchantPayment.merchant_id, MerchantPayment.status)
                               .order_by(MerchantPayment.id)).all()
    assert [tuple(r) for r in statuses] == [(park_merchant, "paid"), (other_id, "paid")]
    session.rollback()


def test_unavailable_because_names_each_reason(session: Session) -> None:
    import datetime as dt
    mall = build_mall(session, residents=1, stock=1)
    r = rewards.get_reward(session, mall.reward_id)
    assert rewards.unavailable_because(session, r, dt.date(2026, 6, 1)) is None
    assert rewards.unavailable_because(session, r, dt.date(2025, 12, 31)) == "not_yet_valid"
    assert rewards.unavailable_because(session, r, dt.date(2100, 1, 1)) == "expired"
    r.stock = 0
    assert rewards.unavailable_because(session, r, dt.date(2026, 6, 1)) == "out_of_stock"
    r.active = False
    assert rewards.unavailable_because(session, r, dt.date(2026, 6, 1)) == "inactive"
    session.rollback()
