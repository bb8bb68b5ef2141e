"""The mall and the pool over HTTP: public list and statement, redeem, my redemptions, merchant use,
operator creation; errors name the field."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from exchange import rewards_pool, wallets
from tests.behaviour.test_behaviour_api import bearer
from tests.rewards.mall import build_mall


def test_mall_over_http(client: Any, session: Session) -> None:
    mall = build_mall(session, residents=2, grant=500, stock=1, points_price=300, cash_value=15_00)
    op = bearer(session, mall.bw.operator.actor.user_id)
    member = bearer(session, mall.bw.uid(0))
    second = bearer(session, mall.bw.uid(1))
    counter = bearer(session, mall.merchant.actor.user_id)

    listed = client.get("/api/v1/rewards").json
    assert [(r["id"], r["stock"], r["points_price"], r["cash_value"]) for r in listed] == [
        (mall.reward_id, 1, 300, 15_00)]
    assert client.post(f"/api/v1/rewards/{mall.reward_id}/redeem").status_code == 401

    r = client.post(f"/api/v1/rewards/{mall.reward_id}/redeem", headers=member | {"Idempotency-Key": "r1"})
    assert r.status_code == 201, r.json
    code = r.json["code"]
    again = client.post(f"/api/v1/rewards/{mall.reward_id}/redeem", headers=member | {"Idempotency-Key": "r1"})
    assert again.json["code"] == code          # a retry: the first answer, nothing taken twice
    empty = client.post(f"/api/v1/rewards/{mall.reward_id}/redeem", headers=second)
    assert empty.status_code == 409
    assert (empty.json["error"]["code"], empty.json["error"]["field"]) == ("out_of_stock", "reward_id")
    assert client.get("/api/v1/me/points", headers=member).json["balance"] == 200
    assert client.get("/api/v1/me/points", headers=second).json["balance"] == 500
    mine = client.get("/api/v1/me/redemptions", headers=member).json
    assert [(x["code"], x["status"]) for x in mine] == [(code, "issued")]
    assert client.get("/api/v1/me/redemptions", headers=second).json == []

    # the pool is empty: the merchant's payment waits; a grant then pays it
    used = client.post("/api/v1/redemptions/use", json={"code": code}, headers=counter)
    assert used.status_code == 200, used.json
    assert used.json["status"] == "used" and used.json["payment"]["status"] == "waiting"
    twice = client.post("/api/v1/redemptions/use", json={"code": code}, headers=counter)
    assert (twice.status_code, twice.json["error"]["code"], twice.json["error"]["field"]) == (
        409, "already_used", "code")
    by_member = client.post("/api/v1/redemptions/use", json={"code": code}, headers=member)
    assert by_member.status_code == 403
    wallets.deposit(session, mall.bw.operator.actor, rewards_pool.pool_holder_id(session), 10_00,
                    external_ref="grant-1")
    session.commit()
    assert client.post("/api/v1/rewards-pool/settle", headers=op).json["paid"] == 0   # 15.00 > 10.00
    wallets.deposit(session, mall.bw.operator.actor, rewards_pool.pool_holder_id(session), 10_00,
                    external_ref="grant-2")
    session.commit()
    settled = client.post("/api/v1/rewards-pool/settle", headers=op).json
    assert (settled["paid"], settled["balance"]) == (15_00, 5_00)
    statement = client.get("/api/v1/rewards-pool").json
    assert statement["balance"] == 5_00
    assert statement["inflows"]["deposits_total"] == 20_00 and statement["outflows"]["paid_total"] == 15_00
    assert [(p["merchant"], p["amount"], p["status"]) for p in statement["outflows"]["payments"]] == [
        ("仙湖植物园", 15_00, "paid")]
    assert client.post("/api/v1/rewards-pool/settle", headers=member).status_code == 403


def test_operator_endpoints_and_field_errors(client: Any, session: Session) -> None:
    mall = build_mall(session, residents=1)
    op = bearer(session, mall.bw.operator.actor.user_id)
    member = bearer(session, mall.bw.uid(0))
    m = client.post("/api/v1/merchants", json={"name": "深圳博物馆", "city": "深圳市", "email": "desk@szmuseum.example"},
                    headers=op)
    assert m.status_code == 201 and m.json["kind"] == "merchant"
    body = {"merchant_id": m.json["id"], "kind": "museum_ticket", "title": "特展门票", "points_price": 500,
            "cash_value": 30_00, "stock": 10, "valid_from": "2026-01-01", "valid_until": "2099-12-31"}
    missing = client.post("/api/v1/rewards", json={k: v for k, v in body.items() if k != "points_price"}, headers=op)
    assert missing.status_code == 422 and missing.json["error"]["field"] == "points_price"
    bad_kind = client.post("/api/v1/rewards", json=body | {"kind": "cash"}, headers=op)
    assert bad_kind.json["error"]["field"] == "kind"
    order = client.post("/api/v1/rewards", json=body | {"valid_until": "2025-01-01"}, headers=op)
    assert (order.status_code, order.json["error"]["field"]) == (422, "valid_until")
    assert client.post("/api/v1/rewards", json=body, headers=member).status_code == 403
    created = client.post("/api/v1/rewards", json=body, headers=op)
    assert created.status_code == 201
    rid = created.json["id"]
    restock = client.post(f"/api/v1/rewards/{rid}/restock", json={"quantity": 5}, headers=op)
    assert restock.json["stock"] == 15
    zero = client.post(f"/api/v1/rewards/{rid}/restock", json={"quantity": 0}, headers=op)
    assert zero.json["error"]["field"] == "quantity"
    assert client.get(f"/api/v1/rewards/{rid}").json["title"] == "特展门票"
    assert client.get("/api/v1/rewards/999999").status_code == 404
    kinds = client.get("/api/v1/rewards?kind=museum_ticket").json
    assert [r["id"] for r in kinds] == [rid]
    assert client.get("/api/v1/rewards?kind=cash").json["error"]["field"] == "kind"
    unknown = client.post("/api/v1/redemptions/use", json={"code": "AAAA-BBBB-CCCC-DDDD"},
                          headers=bearer(session, mall.merchant.actor.user_id))
    assert (unknown.status_code, unknown.json["error"]["field"]) == (404, "code")
