"""The HTTP API end to end: auth, the project lifecycle, units, public views, errors, idempotency."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from registry import holders
from registry.models import HolderKind, IdempotencyRecord, Retirement
from tests.factories import issued_batch, party, registered_project, world


@pytest.fixture
def w(app, session):
    w = world(session)
    for p in (w.operator, w.verifier, w.owner, w.buyer):
        _, tok = holders.create_token(session, _user(session, p))
        p.token = tok  # type: ignore[attr-defined]
    session.commit()
    return w


def _user(session, p):
    from registry.models import User
    return session.get(User, p.actor.user_id)


def auth(p, key=None):
    h = {"Authorization": f"Bearer {p.token}"}
    if key:
        h["Idempotency-Key"] = key
    return h


def test_login_me_logout(client, session):
    p = party(session, HolderKind.INDIVIDUAL, "李明", password="correct horse")
    session.commit()
    bad = client.post("/api/v1/auth/login", json={"email": p.email, "password": "wrong"})
    assert bad.status_code == 401 and bad.json["error"]["field"] == "password"
    r = client.post("/api/v1/auth/login", json={"email": p.email, "password": "correct horse"})
    assert r.status_code == 201
    token = r.json["token"]
    assert token.startswith("thk_") and r.json["user"]["holder"]["name"] == "李明"
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json["email"] == p.email
    assert [a["kind"] for a in me.json["holder"]["accounts"]] == ["holding", "retirement"]
    out = client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert out.status_code == 200 and out.json["revoked_at"]
    again = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 401


def test_tokens_are_hashed_at_rest(client, session, w):
    from registry.models import ApiToken
    stored = session.scalars(select(ApiToken.token_hash)).all()
    session.rollback()
    assert w.buyer.token not in stored and all(len(h) == 64 for h in stored)


def test_authentication_is_required_and_checked(client, w):
    assert client.get("/api/v1/holdings").status_code == 401
    r = client.get("/api/v1/holdings", headers={"Authorization": "Bearer thk_nope"})
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthenticated"
    r = client.get("/api/v1/holdings", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and r.json["error"]["field"] == "Authorization"


def test_cli_creates_a_token(runner, client, session):
    p = party(session, HolderKind.ENTERPRISE)
    session.commit()
    result = runner.invoke(args=["users", "create-token", p.email])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert runner.invoke(args=["users", "create-token", "nobody@x.example"]).exit_code != 0


def _lifecycle(client, w):
    m = w.methodology.id
    r = client.post("/api/v1/projects", headers=auth(w.owner), json={
        "title": "南山屋顶光伏", "title_en": "Nanshan rooftop PV", "methodology_id": m, "province": "广东省",
        "city": "深圳市", "district": "南山区", "documents": [{"name": "PDD.pdf", "kind": "PDD"}]})
    assert r.status_code == 201, r.json
    pid = r.json["id"]
    assert r.json["status"] == "draft" and r.json["code"] == f"{pid:05d}"
    for who, action, body in [(w.owner, "submit", None), (w.verifier, "validate", {"note": "ok"}),
                              (w.operator, "register", None)]:
        r = client.post(f"/api/v1/projects/{pid}/{action}", headers=auth(who), json=body or {})
        assert r.status_code == 200, r.json
    assert r.json["status"] == "registered"
    r = client.post(f"/api/v1/projects/{pid}/reports", headers=auth(w.owner), json={
        "period_start": "2025-01-01", "period_end": "2025-12-31", "claimed_kg": 5000})
    assert r.status_code == 201, r.json
    rid = r.json["id"]
    r = client.post(f"/api/v1/reports/{rid}/verify", headers=auth(w.verifier), json={"approved_kg": 4800})
    assert r.status_code == 200 and r.json["approved_kg"] == 4800
    r = client.post(f"/api/v1/reports/{rid}/issue", headers=auth(w.operator), json={"external_ref": "MR-1"})
    assert r.status_code == 201, r.json
    assert r.json["serial"] == f"THR-{pid:05d}-2025-1-1-4800"
    return pid, rid, r.json


def test_full_lifecycle_over_http(client, w):
    pid, rid, batch = _lifecycle(client, w)
    again = client.post(f"/api/v1/reports/{rid}/issue", headers=auth(w.operator), json={})
    assert again.status_code == 409 and again.json["error"]["code"] == "already_issued"
    detail = client.get(f"/api/v1/projects/{pid}").json
    assert detail["issuances"][0]["quantity_kg"] == 4800 and detail["issuances"][0]["held_kg"] == 4800
    reports = client.get(f"/api/v1/projects/{pid}/reports").json
    assert [r["status"] for r in reports] == ["issued"]


def test_wrong_role_is_403_and_wrong_state_409(client, w):
    m = w.methodology.id
    pid = client.post("/api/v1/projects", headers=auth(w.owner), json={
        "title": "x", "methodology_id": m, "province": "广东省", "city": "深圳市"}).json["id"]
    r = client.post(f"/api/v1/projects/{pid}/register", headers=auth(w.owner), json={})
    assert r.status_code == 403 and r.json["error"]["code"] == "wrong_role"
    r = client.post(f"/api/v1/projects/{pid}/register", headers=auth(w.operator), json={})
    assert r.status_code == 409 and r.json["error"]["code"] == "wrong_status"
    r = client.post(f"/api/v1/projects/{pid}/reject", headers=auth(w.verifier), json={"reasons": []})
    assert r.status_code == 422 and r.json["error"]["field"] == "reasons"


def test_drafts_are_private(client, w):
    pid = client.post("/api/v1/projects", headers=auth(w.owner), json={
        "title": "secret", "methodology_id": w.methodology.id, "province": "广东省", "city": "深圳市"}).json["id"]
    assert client.get(f"/api/v1/projects/{pid}").status_code == 404
    assert client.get(f"/api/v1/projects/{pid}", headers=auth(w.buyer)).status_code == 404
    assert client.get(f"/api/v1/projects/{pid}", headers=auth(w.owner)).status_code == 200
    assert client.post(f"/api/v1/projects/{pid}/submit", headers=auth(w.buyer), json={}).status_code == 404
    assert client.get("/api/v1/projects").json["total"] == 0


def test_bad_input_names_the_field_and_changes_nothing(client, session, w):
    cases = [
        ({"to_account": w.buyer.account, "quantity_kg": "ten"}, "quantity_kg"),
        ({"to_account": w.buyer.account, "quantity_kg": 0}, "quantity_kg"),
        ({"to_account": w.buyer.account, "quantity_kg": -5}, "quantity_kg"),
        ({"to_account": w.buyer.account, "quantity_kg": 1.5}, "quantity_kg"),
        ({"to_account": w.buyer.account}, "quantity_kg"),
        ({"quantity_kg": 5}, "to_account"),
        ({"to_account": w.buyer.account, "quantity_kg": 5, "colour": "green"}, "colour"),
        ({"to_account": w.buyer.account, "serials": ["nonsense"]}, "serials.0"),
        ({"to_account": w.buyer.account, "quantity_kg": 10**9}, "quantity_kg"),
        ({"to_account": "TH-H-999999", "quantity_kg": 5}, "to_account"),
    ]
    for body, field in cases:
        r = client.post("/api/v1/transfers", headers=auth(w.owner), json=body)
        assert 400 <= r.status_code < 500, (body, r.json)
        assert r.json["error"]["field"] == field, (body, r.json)
        assert field in r.json["error"]["fields"]
    r = client.post("/api/v1/transfers", headers=auth(w.owner), data="{not json", content_type="application/json")
    assert r.status_code == 422 and r.json["error"]["code"] == "bad_json"
    r = client.post("/api/v1/transfers", headers=auth(w.owner), json=[1, 2])
    assert r.status_code == 422
    assert session.scalar(select(func.count()).select_from(Retirement)) == 0
    session.rollback()


def test_transfer_retire_and_public_views(client, session, w):
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 1000, year=2025)
    session.commit()
    r = client.post("/api/v1/transfers", headers=auth(w.owner), json={
        "to_account": w.buyer.account, "serials": [b.serial(1, 300)], "memo": "论坛采购"})
    assert r.status_code == 201, r.json
    assert r.json["serials"][0]["serial"] == b.serial(1, 300) and r.json["quantity_kg"] == 300
    tid = r.json["id"]
    assert client.get(f"/api/v1/transfers/{tid}", headers=auth(w.buyer)).status_code == 200
    assert client.get(f"/api/v1/transfers/{tid}", headers=auth(w.verifier)).status_code == 404
    assert client.get("/api/v1/transfers", headers=auth(w.buyer)).json["total"] == 1
    hold = client.get("/api/v1/holdings", headers=auth(w.buyer)).json
    assert hold == [{"project_id": p.id, "project_title": p.title, "vintage": 2025, "held_kg": 300, "listed_kg": 0}]
    blocks = client.get("/api/v1/blocks", headers=auth(w.buyer)).json
    assert blocks["total"] == 1 and blocks["items"][0]["account"] == w.buyer.account

    r = client.post("/api/v1/retirements", headers=auth(w.buyer), json={
        "quantity_kg": 120, "beneficiary": "2026大湾区低碳论坛", "jurisdiction": "广东省深圳市福田区",
        "purpose": "event_offset", "message": "论坛碳中和", "footprint_ref": "FP-9"})
    assert r.status_code == 201, r.json
    cert = r.json["certificate_number"]
    assert r.json["permalink"].endswith(f"/retirements/{cert}")
    assert r.json["serials"] == [{"serial": b.serial(1, 120), "project_id": p.id, "project_title": p.title,
                                  "vintage": 2025, "methodology": f"{w.methodology.code} v1.0",
                                  "quantity_kg": 120}]

    mine = client.get("/api/v1/me/retirements", headers=auth(w.buyer)).json
    assert mine["total"] == 1 and mine["items"][0]["certificate_number"] == cert
    assert client.get("/api/v1/me/retirements", headers=auth(w.owner)).json["total"] == 0
    public = client.get(f"/api/v1/retirements/{cert}").json
    assert public["beneficiary"] == "2026大湾区低碳论坛" and public["quantity_kg"] == 120
    ledger = client.get("/api/v1/retirements?beneficiary=大湾区").json
    assert ledger["total"] == 1 and ledger["items"][0]["certificate_number"] == cert
    assert client.get(f"/api/v1/retirements?project_id={p.id}").json["total"] == 1
    page = client.get(f"/retirements/{cert}")
    assert page.status_code == 200 and "2026大湾区低碳论坛" in page.text and b.serial(1, 120) in page.text

    hist = client.get(f"/api/v1/serials/{b.serial(50, 50)}").json
    assert [h["kind"] for h in hist["history"]] == ["issuance", "transfer", "retirement"]
    assert hist["history"][-1]["certificate_number"] == cert
    assert hist["blocks"][0]["status"] == "retired"
    assert client.get(f"/api/v1/serials/{b.serial(5000, 5000)}").status_code == 404
    bad = client.get("/api/v1/serials/garbage")
    assert bad.status_code == 422 and bad.json["error"]["field"] == "serial"


def test_project_listing_filters_and_pages(client, session, w):
    p1 = registered_project(session, w, city="深圳市")
    p2 = registered_project(session, w, city="成都市", province="四川省")
    issued_batch(session, w, p2, 10, year=2023)
    session.commit()
    assert client.get("/api/v1/projects").json["total"] == 2
    assert [p["id"] for p in client.get("/api/v1/projects?city=成都市").json["items"]] == [p2.id]
    assert [p["id"] for p in client.get("/api/v1/projects?vintage=2023").json["items"]] == [p2.id]
    assert client.get(f"/api/v1/projects?methodology={w.methodology.code}").json["total"] == 2
    page = client.get("/api/v1/projects?per_page=1&page=2").json
    assert page["total"] == 2 and [p["id"] for p in page["items"]] == [p2.id] and page["page"] == 2
    r = client.get("/api/v1/projects?per_page=1000")
    assert r.status_code == 422 and r.json["error"]["field"] == "per_page"
    r = client.get("/api/v1/projects?status=flying")
    assert r.status_code == 422 and r.json["error"]["field"] == "status"
    assert p1.id != p2.id


def test_idempotency_key_replays_the_first_result(client, session, w):
    p = registered_project(session, w)
    issued_batch(session, w, p, 100)
    session.commit()
    body = {"quantity_kg": 10, "beneficiary": "x", "jurisdiction": "深圳市", "purpose": "other"}
    first = client.post("/api/v1/retirements", headers=auth(w.owner, "retire-1"), json=body)
    second = client.post("/api/v1/retirements", headers=auth(w.owner, "retire-1"), json=body)
    assert first.status_code == second.status_code == 201
    assert first.json == second.json and second.headers["Idempotent-Replayed"] == "true"
    assert session.scalar(select(func.count()).select_from(Retirement)) == 1
    session.rollback()  # end the read (SQLite: every transaction holds the write lock)
    other = client.post("/api/v1/retirements", headers=auth(w.owner, "retire-1"), json=body | {"quantity_kg": 11})
    assert other.status_code == 422 and other.json["error"]["field"] == "Idempotency-Key"
    # Keys are per user: the same key from someone else is a new request.
    assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 1
    session.rollback()
    # A failed request is not stored: fixing it and retrying with the same key works.
    bad = client.post("/api/v1/retirements", headers=auth(w.owner, "retire-2"), json=body | {"quantity_kg": 1000})
    assert bad.status_code == 409
    ok = client.post("/api/v1/retirements", headers=auth(w.owner, "retire-2"), json=body | {"quantity_kg": 50})
    assert ok.status_code == 201
    assert session.scalar(select(func.count()).select_from(Retirement)) == 2


def test_operator_actions(client, session, w):
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 100)
    session.commit()
    r = client.post("/api/v1/holders", headers=auth(w.operator), json={"kind": "merchant", "name": "绿色咖啡"})
    assert r.status_code == 201 and r.json["accounts"][0]["number"].startswith("TH-H-")
    assert client.post("/api/v1/holders", headers=auth(w.owner), json={"kind": "merchant", "name": "x"}).status_code == 403
    r = client.post(f"/api/v1/holders/{r.json['id']}/users", headers=auth(w.operator),
                    json={"email": "cafe@x.example", "name": "店长", "role": "admin", "password": "longenough"})
    assert r.status_code == 201
    r = client.post(f"/api/v1/holders/{w.owner.holder.id}/suspend", headers=auth(w.operator), json={"reason": "KYC"})
    assert r.status_code == 200 and r.json["suspended"] is True
    r = client.post("/api/v1/transfers", headers=auth(w.owner), json={"to_account": w.buyer.account, "quantity_kg": 1})
    assert r.status_code == 409 and r.json["error"]["code"] == "suspended"
    r = client.post(f"/api/v1/holders/{w.owner.holder.id}/reinstate", headers=auth(w.operator), json={})
    assert r.status_code == 422 and r.json["error"]["field"] == "reason"
    client.post(f"/api/v1/holders/{w.owner.holder.id}/reinstate", headers=auth(w.operator), json={"reason": "ok"})
    r = client.post("/api/v1/cancellations", headers=auth(w.operator), json={
        "from_account": w.owner.account, "serials": [b.serial(1, 5)], "reason": "double counting correction"})
    assert r.status_code == 201 and r.json["quantity_kg"] == 5
    assert client.get(f"/api/v1/holders/{w.operator.holder.id}", headers=auth(w.owner)).status_code == 404
    r = client.post(f"/api/v1/holders/{w.buyer.holder.id}/users", headers=auth(w.owner),
                    json={"email": "intruder@x.example", "name": "x"})
    assert r.status_code == 404                       # another holder's: not disclosed
    r = client.post(f"/api/v1/holders/{w.owner.holder.id}/users", headers=auth(w.owner),
                    json={"email": "colleague@x.example", "name": "同事", "role": "trader"})
    assert r.status_code == 201 and r.json["role"] == "trader"
    r = client.post("/api/v1/methodologies", headers=auth(w.operator), json={
        "code": "CI-WASTE", "version": "1.0", "title_zh": "垃圾分类", "title_en": "Waste sorting",
        "sector": "waste", "activity_unit": "kg"})
    assert r.status_code == 201
    assert any(m["code"] == "CI-WASTE" for m in client.get("/api/v1/methodologies").json)


def test_openapi_document_and_docs_page(client):
    spec = client.get("/api/v1/openapi.json").json
    assert spec["openapi"].startswith("3.")
    # a partner's signed batch: a bad signature, an inactive partner, a batch over the limits
    assert {"201", "401", "403", "404", "413", "422"} <= set(spec["paths"]["/api/v1/behaviour/batches"]["post"]["responses"])
    # an order command the sequencer set aside answers 500 engine_error
    assert "500" in spec["paths"]["/api/v1/orders"]["post"]["responses"]
    assert "/api/v1/retirements" in spec["paths"] and "post" in spec["paths"]["/api/v1/retirements"]
    post = spec["paths"]["/api/v1/retirements"]["post"]
    assert post["security"] == [{"bearer": []}]
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])
    assert "RetirementCreate" in spec["components"]["schemas"]
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "/api/v1/serials/{serial}" in docs.text
    assert client.get("/").status_code == 200


def test_unknown_endpoint_is_json_404(client):
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    r = client.delete("/api/v1/projects")
    assert r.status_code == 405
