"""Partners deactivated and reactivated by the operator (API and CLI, audited), secret rotation, and
the signed batch API's size limits (413 naming the limit; the CSV command has none)."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.behaviour import BehaviourBatch, BehaviourEvent
from registry.db import utcnow
from registry.models import AuditRecord, User
from registry.partners import Partner, sign
from tests.behaviour.test_behaviour_api import bearer, count, post
from tests.behaviour.world import BWorld, build, row


def body_of(n: int, prefix: str = "r", pad: int = 0) -> bytes:
    start = utcnow().replace(microsecond=0) - dt.timedelta(hours=5)
    return json.dumps({"rows": [row(f"{prefix}{i}", f"card-{i % 3}", "CI-TRANSIT", start + dt.timedelta(minutes=30 * i),
                                    mode="metro", distance_km="2") | ({"note": "x" * pad} if pad else {})
                                for i in range(n)]}).encode()


def actions(session: Session, partner_id: int) -> list[tuple[str, dict[str, Any]]]:
    got = [(a.action, json.loads(a.payload) if isinstance(a.payload, str) else a.payload) for a in session.scalars(
        select(AuditRecord).where(AuditRecord.entity_type == "behaviour_partner",
                                  AuditRecord.entity_id == str(partner_id)).order_by(AuditRecord.id))]
    session.rollback()
    return got


def metro(session: Session) -> Partner:
    p = session.scalar(select(Partner).where(Partner.code == "sz-metro"))
    assert p is not None
    session.rollback()
    return p


def test_a_deactivated_partner_is_refused_until_reactivated_with_a_new_secret(
        client: Any, session: Session, runner: Any, tmp_path: Path) -> None:
    bw = build(session)
    pid = metro(session).id
    op, resident = bearer(session, bw.operator.actor.user_id), bearer(session, bw.uid(0))
    url = f"/api/v1/behaviour/partners/{pid}"
    assert client.post(url + "/deactivate", json={"reason": "x"}, headers=resident).status_code == 403
    no_reason = client.post(url + "/deactivate", json={}, headers=op)
    assert (no_reason.status_code, no_reason.json["error"]["field"]) == (422, "reason")
    off = client.post(url + "/deactivate", json={"reason": "密钥泄露调查"}, headers=op)
    assert off.status_code == 200 and off.json["active"] is False and "secret" not in off.json
    again = client.post(url + "/deactivate", json={"reason": "x"}, headers=op)
    assert (again.status_code, again.json["error"]["code"], again.json["error"]["field"]) == (
        409, "no_change", "partner_id")
    # its correctly signed batch is refused before the body is read; nothing is recorded
    refused = post(client, bw, "sz-metro", body_of(2))
    assert (refused.status_code, refused.json["error"]["code"], refused.json["error"]["field"]) == (
        403, "partner_inactive", "X-Tanhui-Partner")
    assert count(session, BehaviourBatch) == 0
    csv = tmp_path / "m.csv"
    csv.write_text("event_id,user,type,started_at,ended_at,mode,distance_km\n"
                   f"c1,card-0,CI-TRANSIT,{(utcnow() - dt.timedelta(hours=2)).isoformat()},"
                   f"{(utcnow() - dt.timedelta(hours=1, minutes=40)).isoformat()},metro,2\n")
    by_file = runner.invoke(args=["registry", "import-behaviour", str(csv), "--partner", "sz-metro"])
    assert by_file.exit_code != 0 and "not active" in by_file.output
    assert count(session, BehaviourBatch) == 0
    listed = client.get("/api/v1/behaviour/partners", headers=op).json
    assert [(p["code"], p["active"]) for p in listed if p["code"].startswith("sz-m")] == [("sz-metro", False)]
    assert all("secret" not in p for p in listed)
    assert client.get("/api/v1/behaviour/partners", headers=resident).status_code == 403
    # reactivated with a new secret: the old one no longer verifies, the new one does
    on = client.post(url + "/reactivate", json={"rotate_secret": True, "reason": "调查结束"}, headers=op)
    assert on.status_code == 200 and on.json["active"] is True
    new_secret = on.json["secret"]
    assert len(new_secret) == 64 and new_secret != bw.secrets["sz-metro"]
    old = post(client, bw, "sz-metro", body_of(2))
    assert (old.status_code, old.json["error"]["code"]) == (401, "bad_signature")
    ok = post(client, bw, "sz-metro", body_of(2), secret=new_secret)
    assert ok.status_code == 201 and ok.json["batch"]["accepted"] == 2
    twice = client.post(url + "/reactivate", json={}, headers=op)
    assert (twice.status_code, twice.json["error"]["code"]) == (409, "no_change")
    assert client.post("/api/v1/behaviour/partners/999999/deactivate", json={"reason": "x"},
                       headers=op).status_code == 404
    assert [(a, p.get("reason"), p.get("secret_rotated")) for a, p in actions(session, pid)] == [
        ("behaviour.partner_registered", None, None), ("behaviour.partner_deactivated", "密钥泄露调查", None),
        ("behaviour.partner_reactivated", "调查结束", True)]


def test_partner_commands_deactivate_reactivate_and_rotate(runner: Any, session: Session, client: Any) -> None:
    bw = build(session)
    pid = metro(session).id
    email = session.get(User, bw.operator.actor.user_id).email    # type: ignore[union-attr]
    resident_email = session.get(User, bw.uid(0)).email               # type: ignore[union-attr]
    session.rollback()
    off = runner.invoke(args=["registry", "partner-deactivate", "sz-metro", "--reason", "合同到期",
                              "--operator", email])
    assert off.exit_code == 0 and "partner sz-metro deactivated" in off.output, off.output
    assert post(client, bw, "sz-metro", body_of(1)).status_code == 403
    denied = runner.invoke(args=["registry", "partner-reactivate", "sz-metro", "--operator", resident_email])
    assert denied.exit_code != 0
    on = runner.invoke(args=["registry", "partner-reactivate", "sz-metro", "--operator", email])
    assert on.exit_code == 0 and "reactivated" in on.output and "secret" not in on.output
    assert post(client, bw, "sz-metro", body_of(1)).status_code == 201   # the same secret still works
    rotated = runner.invoke(args=["registry", "partner-rotate-secret", "sz-metro", "--operator", email])
    assert rotated.exit_code == 0, rotated.output
    secret = rotated.output.strip().rsplit(" ", 1)[-1]
    assert len(secret) == 64
    assert post(client, bw, "sz-metro", body_of(1, "n")).status_code == 401
    assert post(client, bw, "sz-metro", body_of(1, "n"), secret=secret).status_code == 201
    unknown = runner.invoke(args=["registry", "partner-deactivate", "nope", "--reason", "x", "--operator", email])
    assert unknown.exit_code != 0 and "partner" in unknown.output
    assert [a for a, _ in actions(session, pid)] == [
        "behaviour.partner_registered", "behaviour.partner_deactivated", "behaviour.partner_reactivated",
        "behaviour.partner_secret_rotated"]


def test_a_batch_over_the_row_or_byte_limit_answers_413_naming_it(app: Flask, client: Any, session: Session,
                                                                  runner: Any, tmp_path: Path) -> None:
    bw: BWorld = build(session)
    assert (app.config["BEHAVIOUR_MAX_BATCH_ROWS"], app.config["BEHAVIOUR_MAX_BATCH_BYTES"]) == (
        50_000, 32 * 1024 * 1024)
    app.config["BEHAVIOUR_MAX_BATCH_ROWS"] = 3
    too_many = post(client, bw, "sz-metro", body_of(4))
    assert too_many.status_code == 413
    err = too_many.json["error"]
    assert (err["code"], err["field"], err["limit"]) == (
        "batch_too_large", "rows", {"name": "BEHAVIOUR_MAX_BATCH_ROWS", "unit": "rows", "max": 3})
    assert count(session, BehaviourBatch) == 0 and count(session, BehaviourEvent) == 0
    assert post(client, bw, "sz-metro", body_of(3)).status_code == 201
    app.config["BEHAVIOUR_MAX_BATCH_ROWS"] = 50_000
    big = body_of(2, "b", pad=400)
    app.config["BEHAVIOUR_MAX_BATCH_BYTES"] = len(big) - 1
    by_length = post(client, bw, "sz-metro", big)
    assert by_length.status_code == 413
    assert by_length.json["error"]["field"] == "_body"
    assert by_length.json["error"]["limit"] == {"name": "BEHAVIOUR_MAX_BATCH_BYTES", "unit": "bytes",
                                                "max": len(big) - 1}
    # sent without a Content-Length (chunked): refused once the stream passes the limit
    t = int(time.time())
    chunked = client.post("/api/v1/behaviour/batches", input_stream=io.BytesIO(big), headers={
        "Content-Type": "application/json", "Transfer-Encoding": "chunked", "X-Tanhui-Partner": "sz-metro",
        "X-Tanhui-Signature": sign(bw.secrets["sz-metro"], t, big)}, environ_overrides={"wsgi.input_terminated": True})
    assert chunked.status_code == 413 and chunked.json["error"]["limit"]["unit"] == "bytes"
    app.config["BEHAVIOUR_MAX_BATCH_BYTES"] = len(big)
    assert post(client, bw, "sz-metro", big).status_code == 201
    assert count(session, BehaviourBatch) == 2
    # the CSV command streams and has no limit
    app.config["BEHAVIOUR_MAX_BATCH_ROWS"] = 1
    start = utcnow().replace(microsecond=0) - dt.timedelta(days=2)
    lines = ["event_id,user_id,type,started_at,ended_at,mode,distance_km"] + [
        f"f{i},{bw.uid(1)},CI-TRANSIT,{(start + dt.timedelta(hours=i)).isoformat()},"
        f"{(start + dt.timedelta(hours=i, minutes=20)).isoformat()},bus,10" for i in range(4)]
    path = tmp_path / "bus.csv"
    path.write_text("\n".join(lines) + "\n")
    r = runner.invoke(args=["registry", "import-behaviour", str(path), "--partner", "sz-bus"])
    assert r.exit_code == 0 and "rows 4: accepted 4" in r.output, r.output
