"""Offsetting over HTTP: a listing, a footprint, a quote, payment, the certificate, errors."""

from __future__ import annotations

from sqlalchemy import func, select

from exchange import offsets, wallets
from registry import certificates, holders
from registry.models import HolderKind, Retirement, User
from tests.factories import party
from tests.offsets.conftest import CASH
from tests.offsets.test_footprints import CONFERENCE


def _h(session, p) -> dict[str, str]:
    return {"Authorization": f"Bearer {holders.create_token(session, session.get(User, p.actor.user_id))[1]}"}


def test_offset_over_http(client, session, market) -> None:
    m = market
    seller, buyer = _h(session, m.seller), _h(session, m.buyer)
    session.commit()
    r = client.post("/api/v1/offset-listings", headers=seller, json={
        "project_id": m.project.id, "vintage": 2024, "quantity_kg": 100_000, "price": 60_00})
    assert r.status_code == 201, r.json
    listing_id = r.json["id"]
    assert client.get("/api/v1/offset-listings").json[0]["available_kg"] == 100_000

    fp = client.post("/api/v1/footprints", headers=buyer, json={"kind": "event", "inputs": CONFERENCE}).json
    q = client.post("/api/v1/offsets", headers=buyer, json={
        "footprint_id": fp["id"], "beneficiary": "大湾区低碳论坛 2026", "message": "碳中和"})
    assert q.status_code == 201, q.json
    assert q.json["status"] == "draft" and q.json["quantity_kg"] == 77_095
    assert q.json["quote"] | {} == {"price_per_t": 60_00, "notional": 462_570, "fee": 2_313, "total": 464_883,
                                    "currency": "CNY", "fee_note": "platform fee"}
    oid = q.json["id"]
    c = client.post(f"/api/v1/offsets/{oid}/confirm", headers=buyer | {"Idempotency-Key": "pay-1"})
    assert c.status_code == 200, c.json
    assert c.json["status"] == "retired" and c.json["paid_amount"] == 464_883 and c.json["filled_kg"] == 77_095
    no = c.json["certificate_number"]
    assert c.json["certificate"]["pdf"] == f"/api/v1/retirements/{no}/certificate.pdf"
    again = client.post(f"/api/v1/offsets/{oid}/confirm", headers=buyer | {"Idempotency-Key": "pay-1"})
    assert again.json == c.json and again.headers.get("Idempotent-Replayed") == "true"
    assert client.post(f"/api/v1/offsets/{oid}/confirm", headers=buyer).status_code == 409

    doc = client.get(f"/api/v1/retirements/{no}/certificate.json").json
    pem = client.get(certificates.PUBLIC_KEY_PATH).data
    assert certificates.verify_document(doc, pem).ok
    assert doc["certificate"]["footprint_ref"] == f"footprint:{fp['id']} 大湾区低碳论坛 2026"
    pdf = client.get(f"/api/v1/retirements/{no}/certificate.pdf")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")

    got = client.get(f"/api/v1/offsets/{oid}", headers=buyer).json
    assert got["status"] == "retired" and got["retired_at"] is not None
    listed = client.get("/api/v1/offsets?status=retired", headers=buyer).json
    assert [x["id"] for x in listed["items"]] == [oid] and listed["total"] == 1
    assert client.get(f"/api/v1/offsets/{oid}", headers=seller).status_code == 404

    # A quote cancelled by the buyer; bad requests name the field and change nothing.
    d = client.post("/api/v1/offsets", headers=buyer, json={"quantity_kg": 1_000, "beneficiary": "x"}).json
    x = client.post(f"/api/v1/offsets/{d['id']}/cancel", headers=buyer, json={"reason": "too early"})
    assert x.status_code == 200 and x.json["status"] == "cancelled" and x.json["reason"] == "too early"
    bad = client.post("/api/v1/offsets", headers=buyer, json={"footprint_id": fp["id"], "beneficiary": "x"})
    assert bad.status_code == 409 and bad.json["error"]["field"] == "footprint_id"      # already covered
    bad = client.post("/api/v1/offsets", headers=buyer, json={"beneficiary": "x"})
    assert bad.status_code == 422 and bad.json["error"]["field"] == "quantity_kg"
    bad = client.post("/api/v1/offsets", headers=buyer, json={"quantity_kg": 1_000})
    assert bad.status_code == 422 and bad.json["error"]["field"] == "beneficiary"
    bad = client.post("/api/v1/offsets", headers=buyer, json={"quantity_kg": 50_000, "beneficiary": "x"})
    assert bad.status_code == 409 and bad.json["error"]["field"] == "quantity_kg"
    bad = client.post("/api/v1/offsets", headers=buyer, json={"quantity_kg": 1_000, "beneficiary": "x",
                                                              "payment": "cash"})
    assert bad.status_code == 422 and bad.json["error"]["field"] == "payment"
    broke = _h(session, party(session, HolderKind.INDIVIDUAL, "没钱的人"))
    session.commit()
    q = client.post("/api/v1/offsets", headers=broke, json={"quantity_kg": 1_000, "beneficiary": "x"}).json
    poor = client.post(f"/api/v1/offsets/{q['id']}/confirm", headers=broke)
    assert poor.status_code == 409 and poor.json["error"]["field"] == "payment", poor.json
    assert client.get(f"/api/v1/offsets/{q['id']}", headers=broke).json["status"] == "draft"

    closed = client.post(f"/api/v1/offset-listings/{listing_id}/close", headers=seller)
    assert closed.status_code == 200 and closed.json["status"] == "closed"
    assert session.scalar(select(func.count()).select_from(Retirement)) == 1
    session.expire_all()
    assert wallets.balance(session, m.buyer.holder.id).total == CASH - 464_883
    assert offsets.check(session) == []


def test_neutrality_statement(client, session, market) -> None:
    m = market
    offsets.create_listing(session, m.seller.actor, project_id=m.project.id, vintage=2024, quantity_kg=100_000,
                           price=60_00)
    buyer = _h(session, m.buyer)
    session.commit()
    fp = client.post("/api/v1/footprints", headers=buyer, json={
        "kind": "event", "inputs": CONFERENCE, "reductions": ["会场使用绿电照明 LED lighting", "无纸化 paperless"]}).json
    before = client.get(f"/api/v1/footprints/{fp['id']}/neutrality")
    assert before.status_code == 200, before.json
    assert (before.json["neutral"], before.json["uncovered_kg"], before.json["retired_kg"]) == (False, 77_095, 0)
    assert "77.095 t (77095 kg) still uncovered" in before.json["statement"]
    page = client.get(f"/footprints/{fp['id']}/neutrality")
    assert page.status_code == 200 and "77095 kg) still uncovered" in page.get_data(as_text=True)

    # Two orders: 40,000 kg first, then the footprint's uncovered rest (37,095 kg).
    done = []
    for body in ({"quantity_kg": 40_000, "footprint_id": fp["id"]}, {"footprint_id": fp["id"]}):
        q = client.post("/api/v1/offsets", headers=buyer, json=body | {"beneficiary": "大湾区低碳论坛 2026"}).json
        assert q["quantity_kg"] == body.get("quantity_kg", 77_095 - 40_000), q
        oid = q["id"]
        r = client.post(f"/api/v1/offsets/{oid}/confirm", headers=buyer)
        assert r.json["status"] == "retired", r.json
        done.append(r.json["certificate_number"])
        mid = client.get(f"/api/v1/footprints/{fp['id']}/neutrality").json
        if len(done) == 1:
            assert (mid["neutral"], mid["uncovered_kg"]) == (False, 37_095)
    after = client.get(f"/api/v1/footprints/{fp['id']}/neutrality").json
    assert (after["neutral"], after["retired_kg"], after["uncovered_kg"]) == (True, 77_095, 0)
    assert [r["certificate_number"] for r in after["retirements"]] == done
    assert after["reductions"] == ["会场使用绿电照明 LED lighting", "无纸化 paperless"]
    assert sum(b["quantity_kg"] for r in after["retirements"] for b in r["serials"]) == 77_095
    html = client.get(f"/footprints/{fp['id']}/neutrality").get_data(as_text=True)
    assert "Carbon neutral" in html and done[0] in html and done[1] in html and "paperless" in html
    # Personal and organisation footprints have no public statement.
    me = client.post("/api/v1/footprints", headers=buyer, json={"kind": "personal", "inputs": {
        "name": "me", "region": "CN-GD", "electricity_kwh": 100}}).json
    assert client.get(f"/api/v1/footprints/{me['id']}/neutrality").status_code == 404
    assert client.get(f"/footprints/{me['id']}/neutrality").status_code == 404


def test_offset_at_once_over_http(client, session, market) -> None:
    """confirm: true quotes, pays from the wallet, fills and retires in one request (201, retired,
    with the certificate's links); with a card, or a wallet that cannot pay, it is refused naming
    the field and nothing is written."""
    m = market
    offsets.create_listing(session, m.seller.actor, project_id=m.project.id, vintage=2024, quantity_kg=200_000,
                           price=60_00)
    buyer = _h(session, m.buyer)
    session.commit()
    fp = client.post("/api/v1/footprints", headers=buyer, json={"kind": "event", "inputs": CONFERENCE}).json
    r = client.post("/api/v1/offsets", headers=buyer | {"Idempotency-Key": "now-1"}, json={
        "footprint_id": fp["id"], "beneficiary": "大湾区低碳论坛 2026", "message": "碳中和", "confirm": True})
    assert r.status_code == 201, r.json
    assert (r.json["status"], r.json["paid_amount"], r.json["filled_kg"], r.json["refunded_amount"]) == (
        "retired", 464_883, 77_095, 0)
    assert r.json["quote"]["total"] == 464_883 and r.json["reason"] is None and r.json["retired_at"] is not None
    no = r.json["certificate_number"]
    assert no and r.json["certificate"] == {
        "number": no, "json": f"/api/v1/retirements/{no}/certificate.json",
        "pdf": f"/api/v1/retirements/{no}/certificate.pdf", "page": f"/retirements/{no}"}
    again = client.post("/api/v1/offsets", headers=buyer | {"Idempotency-Key": "now-1"}, json={
        "footprint_id": fp["id"], "beneficiary": "大湾区低碳论坛 2026", "message": "碳中和", "confirm": True})
    assert again.status_code == 201 and again.json == r.json and again.headers.get("Idempotent-Replayed") == "true"
    doc = client.get(r.json["certificate"]["json"]).json
    assert certificates.verify_document(doc, client.get(certificates.PUBLIC_KEY_PATH).data).ok
    assert doc["certificate"]["footprint_ref"] == f"footprint:{fp['id']} 大湾区低碳论坛 2026"
    pdf = client.get(r.json["certificate"]["pdf"])
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")
    assert client.get(f"/api/v1/offsets/{r.json['id']}", headers=buyer).json["status"] == "retired"
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH - 464_883, 0)
    session.rollback()

    def orders() -> int:
        return client.get("/api/v1/offsets", headers=buyer).json["total"]
    # without confirm (or with false): a draft, as before
    d = client.post("/api/v1/offsets", headers=buyer, json={"quantity_kg": 1_000, "beneficiary": "x", "confirm": False})
    assert d.status_code == 201 and d.json["status"] == "draft" and d.json["paid_amount"] == 0
    n = orders()
    card = client.post("/api/v1/offsets", headers=buyer, json={"quantity_kg": 1_000, "beneficiary": "x",
                                                               "payment": "card", "confirm": True})
    assert card.status_code == 422 and card.json["error"]["field"] == "confirm", card.json
    assert card.json["error"]["code"] == "confirm_needs_wallet"
    bad = client.post("/api/v1/offsets", headers=buyer, json={"quantity_kg": 1_000, "beneficiary": "x", "confirm": "yes"})
    assert bad.status_code == 422 and bad.json["error"]["field"] == "confirm", bad.json
    bad = client.post("/api/v1/offsets", headers=buyer, json={"quantity_kg": 0, "beneficiary": "x", "confirm": True})
    assert bad.status_code == 422 and bad.json["error"]["field"] == "quantity_kg", bad.json
    poor = client.post("/api/v1/offsets", headers=buyer, json={"quantity_kg": 100_000, "beneficiary": "x",
                                                               "confirm": True})
    assert poor.status_code == 409 and poor.json["error"]["field"] == "payment", poor.json
    assert poor.json["error"]["message"].startswith("the wallet cannot pay 603000: available balance 535117 is less than 603000")
    assert orders() == n and client.get("/api/v1/offset-listings").json[0]["available_kg"] == 200_000 - 77_095 - 1_000
    session.expire_all()
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH - 464_883, 0)
    assert offsets.check(session) == [] and wallets.check(session) == []

    spec = client.get("/api/v1/openapi.json").json
    confirm = spec["components"]["schemas"]["OffsetCreate"]["properties"]["confirm"]
    assert confirm["type"] == "boolean" and confirm["default"] is False and "wallet" in confirm["description"]
