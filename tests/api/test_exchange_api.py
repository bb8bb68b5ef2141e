"""The exchange over HTTP with the sequencer running as a thread, as in the embedded default."""

from __future__ import annotations

import pytest

from exchange import wallets
from exchange.sequencer import Sequencer
from registry import holders
from registry.models import User
from tests.factories import issued_batch, registered_project, world


@pytest.fixture
def mkt(app, session, session_factory):
    w = world(session)
    p = registered_project(session, w)
    issued_batch(session, w, p, 20_000, year=2025)
    for party in (w.operator, w.owner, w.buyer, w.verifier):
        party.token = holders.create_token(session, session.get(User, party.actor.user_id))[1]
    wallets.deposit(session, w.operator.actor, w.buyer.holder.id, 500_000)
    session.commit()
    seq = Sequencer(session_factory)
    app.extensions["sequencer"] = seq
    seq.start(idle_s=0.05)
    yield w
    seq.stop()


def h(p, key=None):
    out = {"Authorization": f"Bearer {p.token}"}
    if key:
        out["Idempotency-Key"] = key
    return out


def test_list_trade_and_see_the_book(client, mkt):
    w = mkt
    r = client.post("/api/v1/instruments", headers=h(w.operator), json={
        "symbol": "CI-PV-2025", "name_zh": "光伏2025", "name_en": "PV 2025", "kind": "pooled",
        "vintage_from": 2025, "vintage_to": 2025, "sector": "energy", "reference_price": 5000,
        "taker_fee_bp": 50, "maker_fee_bp": 0})
    assert r.status_code == 201, r.json
    assert (r.json["band_low"], r.json["band_high"]) == (4500, 5500)
    assert client.post("/api/v1/instruments", headers=h(w.owner), json={}).status_code == 422

    sell = client.post("/api/v1/orders", headers=h(w.owner, "s1"), json={
        "instrument": "CI-PV-2025", "side": "sell", "qty_kg": 5000, "price": 5100})
    assert sell.status_code == 201, sell.json
    assert sell.json["status"] == "open" and sell.json["remaining_kg"] == 5000 and sell.json["pending_commands"] == 0
    depth = client.get("/api/v1/instruments/CI-PV-2025/depth").json
    assert depth["asks"] == [{"price": 5100, "qty_kg": 5000, "orders": 1}] and depth["bids"] == []

    buy = client.post("/api/v1/orders", headers=h(w.buyer, "b1"), json={
        "instrument": "CI-PV-2025", "side": "buy", "qty_kg": 2000, "price": 5200})
    assert buy.status_code == 201, buy.json
    assert buy.json["status"] == "filled" and buy.json["cash_held"] == 0
    assert buy.json["fills"] == [{"id": buy.json["fills"][0]["id"], "price": 5100, "qty_kg": 2000, "notional": 10200,
                                  "executed_at": buy.json["fills"][0]["executed_at"], "side": "buy", "role": "taker",
                                  "fee": 51}]
    again = client.post("/api/v1/orders", headers=h(w.buyer, "b1"), json={
        "instrument": "CI-PV-2025", "side": "buy", "qty_kg": 2000, "price": 5200})
    assert again.json == buy.json and again.headers["Idempotent-Replayed"] == "true"

    trades = client.get("/api/v1/instruments/CI-PV-2025/trades").json
    assert trades["total"] == 1 and trades["items"][0]["price"] == 5100
    wallet = client.get("/api/v1/wallet", headers=h(w.buyer)).json
    assert (wallet["available"], wallet["held"]) == (500_000 - 10200 - 51, 0)
    hold = client.get("/api/v1/holdings", headers=h(w.buyer)).json
    assert hold[0]["held_kg"] == 2000
    mine = client.get("/api/v1/orders?status=active", headers=h(w.owner)).json
    assert mine["total"] == 1 and mine["items"][0]["filled_kg"] == 2000

    oid = sell.json["id"]
    r = client.post(f"/api/v1/orders/{oid}/reduce", headers=h(w.owner), json={"by_kg": 1000})
    assert r.status_code == 200 and r.json["remaining_kg"] == 2000
    r = client.post(f"/api/v1/orders/{oid}/replace", headers=h(w.owner), json={"price": 5050})
    assert r.status_code == 200 and r.json["price"] == 5050
    assert client.get(f"/api/v1/orders/{oid}", headers=h(w.buyer)).status_code == 404
    r = client.post(f"/api/v1/orders/{oid}/cancel", headers=h(w.owner))
    assert r.status_code == 200 and r.json["status"] == "cancelled"
    assert client.post(f"/api/v1/orders/{oid}/cancel", headers=h(w.owner)).status_code == 409
    assert client.get("/api/v1/holdings", headers=h(w.owner)).json[0]["listed_kg"] == 0


def test_order_errors_name_the_field(client, mkt):
    w = mkt
    client.post("/api/v1/instruments", headers=h(w.operator), json={
        "symbol": "CI-PV-2025", "name_zh": "光伏", "name_en": "PV", "kind": "pooled", "vintage_from": 2025,
        "vintage_to": 2025, "reference_price": 5000})
    for body, field, status in [
        ({"side": "buy", "qty_kg": 1000, "price": 5000}, "instrument", 422),
        ({"instrument": "NOPE", "side": "buy", "qty_kg": 1000, "price": 5000}, "instrument", 404),
        ({"instrument": "CI-PV-2025", "side": "buy", "qty_kg": 1000, "price": 9000}, "price", 422),
        ({"instrument": "CI-PV-2025", "side": "buy", "qty_kg": 1001, "price": 5000}, "qty_kg", 422),
        ({"instrument": "CI-PV-2025", "side": "buy", "qty_kg": 1000, "price": 50.5}, "price", 422),
        ({"instrument": "CI-PV-2025", "side": "buy", "qty_kg": 10_000_000, "price": 5000}, "qty_kg", 409),
        ({"instrument": "CI-PV-2025", "side": "sell", "qty_kg": 30_000, "price": 5000}, "qty_kg", 409),
    ]:
        who = w.owner if body.get("side") == "sell" else w.buyer
        r = client.post("/api/v1/orders", headers=h(who), json=body)
        assert r.status_code == status and r.json["error"]["field"] == field, (body, r.json)
    assert client.get("/api/v1/wallet", headers=h(w.buyer)).json["held"] == 0
    r = client.post("/api/v1/instruments/CI-PV-2025/halt", headers=h(w.operator), json={"reason": "test"})
    assert r.status_code == 200 and r.json["status"] == "halted"
    r = client.post("/api/v1/orders", headers=h(w.buyer), json={
        "instrument": "CI-PV-2025", "side": "buy", "qty_kg": 1000, "price": 5000})
    assert r.status_code == 409 and r.json["error"]["code"] == "instrument_not_active"


def test_withdrawal_flow(client, mkt):
    w = mkt
    r = client.post("/api/v1/wallet/withdrawals", headers=h(w.buyer), json={"amount": 100_000})
    assert r.status_code == 201 and r.json["status"] == "requested"
    assert client.get("/api/v1/wallet", headers=h(w.buyer)).json["held"] == 100_000
    wid = r.json["id"]
    assert client.post(f"/api/v1/withdrawals/{wid}/approve", headers=h(w.buyer)).status_code == 403
    r = client.post(f"/api/v1/withdrawals/{wid}/approve", headers=h(w.operator))
    assert r.status_code == 200 and r.json["status"] == "paid"
    wallet = client.get("/api/v1/wallet", headers=h(w.buyer)).json
    assert (wallet["available"], wallet["held"]) == (400_000, 0)
    r = client.post("/api/v1/deposits", headers=h(w.operator), json={"holder_id": w.buyer.holder.id, "amount": 5,
                                                                     "external_ref": "slip-1"})
    assert r.status_code == 201
    r = client.post("/api/v1/deposits", headers=h(w.operator), json={"holder_id": w.buyer.holder.id, "amount": 5,
                                                                     "external_ref": "slip-1"})
    assert r.status_code == 409 and r.json["error"]["field"] == "external_ref"


def test_close_day_history_and_blend(client, runner, mkt):
    from exchange.reference import china_today

    w = mkt
    client.post("/api/v1/instruments", headers=h(w.operator), json={
        "symbol": "CI-PV-2025", "name_zh": "光伏2025", "name_en": "PV 2025", "kind": "pooled",
        "vintage_from": 2025, "vintage_to": 2025, "reference_price": 5000})
    client.post("/api/v1/orders", headers=h(w.owner), json={
        "instrument": "CI-PV-2025", "side": "sell", "qty_kg": 3000, "price": 5200})
    client.post("/api/v1/orders", headers=h(w.owner), json={
        "instrument": "CI-PV-2025", "side": "sell", "qty_kg": 1000, "price": 5400})
    r = client.post("/api/v1/orders", headers=h(w.buyer), json={
        "instrument": "CI-PV-2025", "side": "buy", "qty_kg": 4000, "price": 5500})
    assert r.json["status"] == "filled"
    tick = client.get("/api/v1/instruments/CI-PV-2025").json
    assert tick["last_price"] == 5400 and tick["today"]["volume_kg"] == 4000 and tick["today"]["vwap"] == 5250

    today = china_today().isoformat()
    result = runner.invoke(args=["exchange", "close-day", "--day", today])
    assert result.exit_code == 0, result.output
    assert '"reference_price": 5250' in result.output
    hist = client.get("/api/v1/instruments/CI-PV-2025/history").json
    assert hist[-1]["close"] == 5250 and hist[-1]["volume_kg"] == 4000 and hist[-1]["method"] == "vwap"
    assert (hist[-1]["band_low"], hist[-1]["band_high"]) == (4725, 5775)
    ref = client.get("/api/v1/instruments/CI-PV-2025/reference-prices").json
    assert ref[-1]["reference_price"] == 5250 and ref[-1]["inputs"]

    r = client.post("/api/v1/external-indices", headers=h(w.operator), json={
        "code": "CEA", "trading_day": today, "price": 9_000, "source": "上海环境能源交易所收盘价"})
    assert r.status_code == 201, r.json
    assert client.post("/api/v1/external-indices", headers=h(w.owner), json={
        "code": "CEA", "trading_day": today, "price": 9_000, "source": "x"}).status_code == 403
    r = client.post("/api/v1/instruments/CI-PV-2025/blend", headers=h(w.operator),
                    json={"weights": {"vwap": 8000, "CEA": 1000}})
    assert r.status_code == 422 and r.json["error"]["field"] == "weights"
    r = client.post("/api/v1/instruments/CI-PV-2025/blend", headers=h(w.operator),
                    json={"weights": {"vwap": 8000, "CEA": 2000}})
    assert r.status_code == 200 and r.json["blend_weights"] == {"vwap": 8000, "CEA": 2000}
    assert client.get("/api/v1/external-indices?code=CEA").json[0]["price"] == 9_000


def test_an_order_the_sequencer_sets_aside_answers_an_error(client, mkt, monkeypatch):
    """The buy's settlement fails every time (injected): the sequencer sets its command aside, and
    the waiting POST answers 500 engine_error instead of waiting; the order is rejected and the
    buyer's cash is all available again. A retry with the same key gets the same answer."""
    from registry import units

    w = mkt
    r = client.post("/api/v1/instruments", headers=h(w.operator), json={
        "symbol": "CI-PV-2025", "name_zh": "光伏2025", "name_en": "PV 2025", "kind": "pooled",
        "vintage_from": 2025, "vintage_to": 2025, "sector": "energy", "reference_price": 5000})
    assert r.status_code == 201, r.json
    sell = client.post("/api/v1/orders", headers=h(w.owner), json={
        "instrument": "CI-PV-2025", "side": "sell", "qty_kg": 1000, "price": 5000})
    assert sell.status_code == 201 and sell.json["status"] == "open", sell.json
    real = units.ListedUnits.deliver

    def deliver(self, ref, quantity, to_holder_id, *, memo):
        if to_holder_id == w.buyer.holder.id:
            raise RuntimeError("settlement bug")
        return real(self, ref, quantity, to_holder_id, memo=memo)

    monkeypatch.setattr(units.ListedUnits, "deliver", deliver)
    body = {"instrument": "CI-PV-2025", "side": "buy", "qty_kg": 1000, "price": 5000}
    buy = client.post("/api/v1/orders", headers=h(w.buyer, "poison"), json=body)
    assert buy.status_code == 500, buy.json
    err = buy.json["error"]
    assert (err["code"], err["field"]) == ("engine_error", "order_id")
    assert "rejected (reason engine_error) and its hold released" in err["message"]
    again = client.post("/api/v1/orders", headers=h(w.buyer, "poison"), json=body)
    assert again.status_code == 500 and again.json == buy.json and again.headers["Idempotent-Replayed"] == "true"
    mine = client.get("/api/v1/orders", headers=h(w.buyer)).json
    assert mine["total"] == 1
    o = mine["items"][0]
    assert (o["status"], o["reason"], o["cash_held"], o["fills"]) == ("rejected", "engine_error", 0, [])
    wallet = client.get("/api/v1/wallet", headers=h(w.buyer)).json
    assert (wallet["available"], wallet["held"]) == (500_000, 0)
    depth = client.get("/api/v1/instruments/CI-PV-2025/depth").json
    assert depth["asks"] == [{"price": 5000, "qty_kg": 1000, "orders": 1}] and depth["bids"] == []
