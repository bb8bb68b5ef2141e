"""Behaviour over HTTP: partner registration, signed batches (replays, bad signatures), points."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry import holders
from registry.behaviour import BehaviourBatch, BehaviourEvent
from registry.db import utcnow
from registry.models import User
from registry.partners import sign
from tests.behaviour.world import BWorld, build, row


def bearer(session: Session, user_id: int | None) -> dict[str, str]:
    token = holders.create_token(session, session.get(User, user_id))[1]
    session.commit()
    return {"Authorization": f"Bearer {token}"}


def post(client: Any, bw: BWorld, partner: str, body: bytes, *, secret: str | None = None,
         t: int | None = None) -> Any:
    t = int(time.time()) if t is None else t
    return client.post("/api/v1/behaviour/batches", data=body, content_type="application/json", headers={
        "X-Tanhui-Partner": partner, "X-Tanhui-Signature": sign(secret or bw.secrets[partner], t, body)})


def count(session: Session, model: Any) -> int:
    n = session.scalar(select(func.count()).select_from(model)) or 0
    session.rollback()   # SQLite: do not keep the write lock
    return n


def test_signed_batch_row_outcomes_replay_and_bad_signatures(client: Any, session: Session) -> None:
    bw = build(session)
    now = utcnow().replace(microsecond=0)
    start = now - dt.timedelta(hours=3)
    body = json.dumps({"rows": [
        row("a1", "card-0", "CI-TRANSIT", start, mode="metro", distance_km="10"),
        row("a2", "card-0", "CI-TRANSIT", start + dt.timedelta(hours=1)) | {"mode": "metro", "distance_km": 2.5},
        row("a1", "card-0", "CI-TRANSIT", start, mode="metro", distance_km="10"),
        row("a4", "nobody", "ENG-CHECKIN", start, minutes=0),
    ]}).encode()
    r = post(client, bw, "sz-metro", body)
    assert r.status_code == 201, r.data
    first = r.json
    assert first["batch"]["accepted"] == 2 and first["batch"]["rejected"] == 2
    # 467 g → 46 points; 2.5 km (a JSON number, read as the decimal 2.5) × 46.7 = 116.75 → 117 g: 584 → 58
    assert [(x["line"], x["status"], x["reason"], x["reduction_g"], x["points"]) for x in first["rows"]] == [
        (1, "accepted", None, 467, 46), (2, "accepted", None, 117, 12), (3, "rejected", "duplicate", 0, 0),
        (4, "rejected", "unknown_user", 0, 0)]
    events = count(session, BehaviourEvent)
    # the same body again (even signed anew later): the stored outcomes, nothing changes
    again = post(client, bw, "sz-metro", body, t=int(time.time()) + 5)
    assert again.status_code == 200
    assert again.json["rows"] == first["rows"] and again.json["batch"]["replayed"] is True
    assert count(session, BehaviourEvent) == events and count(session, BehaviourBatch) == 1

    other = json.dumps({"rows": [row("z1", "card-1", "ENG-CHECKIN", start, minutes=0)]}).encode()
    bad_mac = post(client, bw, "sz-metro", other, secret="0" * 64)
    assert bad_mac.status_code == 401 and bad_mac.json["error"]["code"] == "bad_signature"
    stale = post(client, bw, "sz-metro", other, t=int(time.time()) - 301)
    assert stale.status_code == 401 and stale.json["error"]["code"] == "stale_signature"
    wrong_partner = post(client, bw, "sz-bike", other, secret=bw.secrets["sz-metro"])
    assert wrong_partner.status_code == 401
    unknown = post(client, bw, "nope", other, secret="x")
    assert unknown.status_code == 401 and unknown.json["error"]["field"] == "X-Tanhui-Partner"
    t = int(time.time())
    tampered = client.post("/api/v1/behaviour/batches", data=other.replace(b"z1", b"z2"),
                           content_type="application/json", headers={
                               "X-Tanhui-Partner": "sz-metro", "X-Tanhui-Signature": sign(bw.secrets["sz-metro"], t, other)})
    assert tampered.status_code == 401
    no_header = client.post("/api/v1/behaviour/batches", data=other, headers={"X-Tanhui-Partner": "sz-metro"})
    assert no_header.status_code == 401
    malformed = post(client, bw, "sz-metro", b'{"rows": [{"event_id": "q1"}, 7]}')
    assert malformed.status_code == 422 and malformed.json["error"]["field"] == "rows[1]"
    truncated = post(client, bw, "sz-metro", b'{"rows": [{"event_id": "q1"}')
    assert truncated.status_code == 422
    assert count(session, BehaviourEvent) == events and count(session, BehaviourBatch) == 1

    me = bearer(session, bw.uid(0))
    pts = client.get("/api/v1/me/points", headers=me)
    assert pts.status_code == 200 and pts.json["balance"] == 58
    assert [(e["kind"], e["points"], e["expires_on"]) for e in pts.json["entries"]] == [
        ("earn", 58, f"{now.year + 1}-12-31")]
    summary = client.get("/api/v1/me/behaviour/summary?period=day", headers=me).json
    assert summary["reduction_g"] == 584
    assert summary["totals"] == [{"type": "CI-TRANSIT", "events": 2, "reduction_g": 584, "points": 58}]


def test_operator_registers_partner_and_adjusts_points(client: Any, session: Session) -> None:
    bw = build(session, residents=1)
    op = bearer(session, bw.operator.actor.user_id)
    r = client.post("/api/v1/behaviour/partners", headers=op, json={
        "code": "sz-water", "name": "深圳水务", "kind": "utility", "programme_id": bw.programme_id,
        "region": "CN-GD-SZ", "behaviour_types": ["CI-HOME"]})
    assert r.status_code == 201, r.json
    assert len(r.json["secret"]) == 64 and r.json["behaviour_types"] == ["CI-HOME"]
    dup = client.post("/api/v1/behaviour/partners", headers=op, json={
        "code": "sz-water", "name": "x", "kind": "utility", "programme_id": bw.programme_id,
        "region": "CN-GD-SZ", "behaviour_types": ["CI-HOME"]})
    assert dup.status_code == 409 and dup.json["error"]["field"] == "code"
    resident = bearer(session, bw.uid(0))
    forbidden = client.post("/api/v1/behaviour/partners", headers=resident, json={
        "code": "mine", "name": "x", "kind": "utility", "programme_id": bw.programme_id,
        "region": "CN-GD-SZ", "behaviour_types": ["CI-HOME"]})
    assert forbidden.status_code == 403
    adj = client.post("/api/v1/points/adjustments", headers=op,
                      json={"user_id": bw.uid(0), "points": 30, "reason": "补发: 站点故障"})
    assert adj.status_code == 201 and adj.json["balance"] == 30
    over = client.post("/api/v1/points/adjustments", headers=op,
                       json={"user_id": bw.uid(0), "points": -31, "reason": "纠错"})
    assert over.status_code == 409 and over.json["error"]["code"] == "insufficient_points"
    no_reason = client.post("/api/v1/points/adjustments", headers=op, json={"user_id": bw.uid(0), "points": 5})
    assert no_reason.status_code == 422 and no_reason.json["error"]["field"] == "reason"
    by_resident = client.post("/api/v1/points/adjustments", headers=resident,
                              json={"user_id": bw.uid(0), "points": 5, "reason": "me"})
    assert by_resident.status_code == 403
    assert client.get("/api/v1/me/points", headers=resident).json["balance"] == 30


def test_a_batch_larger_than_the_memory_spool_streams_through(client: Any, session: Session) -> None:
    bw = build(session)
    start = utcnow().replace(microsecond=0) - dt.timedelta(days=29, hours=12)   # all within the 30-day window
    rows = [row(f"big-{i}", f"card-{i % 3}", "CI-TRANSIT", start + dt.timedelta(minutes=7 * i),
                mode="metro", distance_km="3.5") | {"note": "x" * 80} for i in range(6000)]
    body = json.dumps({"rows": rows}).encode()
    assert len(body) > (1 << 20)          # beyond the in-memory spool: the body goes to a temporary file
    r = post(client, bw, "sz-metro", body)
    assert r.status_code == 201, r.data[:300]
    batch, outcomes = r.json["batch"], r.json["rows"]
    assert batch["rows"] == 6000 == len(outcomes) and [o["line"] for o in outcomes] == list(range(1, 6001))
    # 7-minute spacing: 206 trips a China day spread over 3 users, 10 a day each are accepted
    accepted = [o for o in outcomes if o["status"] == "accepted"]
    assert batch["accepted"] == len(accepted) and {o["reduction_g"] for o in accepted} == {163}   # 163.45 g
    assert batch["rejected"] == batch["reasons"]["over_daily_cap"]
    assert count(session, BehaviourEvent) == 6000
