"""The demo seed (`flask demo seed`): on a fresh database it fills every capability through the use
cases, every ledger check passes, and seeding again changes nothing.

`now` is fixed at 12:00 China time on Friday 20 Nov 2026, so the behaviour rows (dated back from it)
and the closed period are known by hand: the 29 days back from it run from Thu 22 Oct to Thu 19 Nov,
21 weekdays, 4 Saturdays (24 Oct, 31 Oct, 7 Nov, 14 Nov), 4 Sundays (25 Oct, 1, 8, 15 Nov).
"""

from __future__ import annotations

import datetime as dt

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from exchange import neutrality, offsets, rewards_pool, wallets
from exchange.offset_models import Footprint, FootprintKind, OffsetListing, OffsetOrder, OffsetStatus
from registry import audit, behaviour, certificates, invariants, programme_periods, recognition, rewards
from registry.models import AuditRecord, Batch, MonitoringReport, Project, Retirement, User
from registry.partners import Member, Partner
from registry.points import PointsEntry
from web.demo import seed_demo
from web.demo_inclusion import RESIDENTS
from web.demo_offsetting import CONFERENCE_NAME

NOW = dt.datetime(2026, 11, 20, 4, 0)   # naive UTC


def _checks(session) -> list[str]:  # type: ignore[no-untyped-def]
    return ([str(v) for v in invariants.check(session)] + wallets.check(session) + offsets.check(session)
            + behaviour.check_ledger(session) + rewards.check(session) + rewards_pool.check(session)
            + programme_periods.check(session) + recognition.check(session))


def _counts(session) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {t.__name__: int(session.scalar(select(func.count()).select_from(t)) or 0)
            for t in (AuditRecord, User, Footprint, OffsetOrder, OffsetListing, Partner, Member,
                      behaviour.BehaviourBatch, behaviour.BehaviourEvent, PointsEntry, rewards.Reward,
                      rewards.Redemption, programme_periods.ProgrammePeriod, Batch, Retirement)}


def test_seed_twice_fills_every_capability_once(app: Flask) -> None:
    from web.extensions import db

    first = seed_demo(db.session, now=NOW)
    assert "Offsetting" in first.summary and "Carbon inclusion" in first.summary
    factory = sessionmaker(bind=db.engine, expire_on_commit=False)
    audit.seal_all(factory)
    with factory() as s:
        before = _counts(s)
        assert _checks(s) == []

    again = seed_demo(db.session, now=NOW)
    assert again.summary == "demo data already present; nothing changed"
    with factory() as s:
        assert _counts(s) == before

        # Offsetting: the worked conference (77,095 kg), offset from the Nanshan PV listing at ¥68/t.
        (fp,) = s.scalars(select(Footprint).where(Footprint.name == CONFERENCE_NAME)).all()
        assert (fp.kind, fp.total_kg, fp.exact_kg) == (FootprintKind.EVENT, 77_095, "77095")
        assert {f.kind for f in s.scalars(select(Footprint))} == {FootprintKind.EVENT, FootprintKind.ORGANISATION,
                                                                  FootprintKind.PERSONAL}
        (order,) = s.scalars(select(OffsetOrder).where(OffsetOrder.footprint_id == fp.id)).all()
        # notional 68_00 × 77,095 / 1000 = 524,246 fen; fee 50 bp = 2,621.23 → 2,621
        assert (order.status, order.payment, order.filled_kg) == (OffsetStatus.RETIRED, "wallet", 77_095)
        assert (order.price, order.notional, order.fee, order.total, order.paid_amount) == (
            68_00, 524_246, 2_621, 526_867, 526_867)
        statement = neutrality.statement(s, fp.id)
        assert (statement["neutral"], statement["retired_kg"], statement["uncovered_kg"]) == (True, 77_095, 0)
        assert len(statement["reductions"]) == 3
        retirement = s.get(Retirement, order.retirement_id)
        assert retirement is not None and retirement.certificate_number == order.certificate_number
        assert retirement.footprint_ref == fp.ref and retirement.quantity_kg == 77_095
        key = certificates.SigningKey.generate()
        doc = certificates.issue_document(s, retirement, key, "http://127.0.0.1:5000")
        assert certificates.verify_document(doc, key.public_key_pem()).ok
        (cancelled,) = s.scalars(select(OffsetOrder).where(OffsetOrder.status == OffsetStatus.CANCELLED)).all()
        assert cancelled.reason.startswith("预算待董事会审批") and cancelled.paid_amount == 0
        assert cancelled.reserved_kg == 0 and s.get(OffsetListing, cancelled.listing_id).available_kg == 60_000

        # Carbon inclusion: partners, members and the metro CSV batch.
        assert set(s.scalars(select(Partner.code))) == {"sz-metro", "sz-bike", "sk-sorting"}
        batches = {b.partner_id: b for b in s.scalars(select(behaviour.BehaviourBatch))}
        code_of = dict(s.execute(select(Partner.id, Partner.code)).tuples().all())
        by_code = {code_of[pid]: b for pid, b in batches.items()}
        metro = by_code["sz-metro"]
        # 21 weekdays × 7 residents × 2 trips + 4 Saturdays × 4 residents' check-ins = 310; 6 faults
        assert (metro.source, metro.status, metro.accepted, metro.rejected) == ("csv", "complete", 310, 6)
        assert behaviour.reasons_of(s, metro.id) == {
            "duplicate": 1, "implausible": 1, "invalid": 1, "outside_claim_window": 1, "over_daily_cap": 1,
            "unknown_user": 1}
        # bikes: 8 weekdays in the 10 days back × 4 riders; sorting: 4 Sundays × 4 residents × 3 rows + 1 bad
        assert (by_code["sz-bike"].accepted, by_code["sz-bike"].rejected) == (32, 0)
        assert (by_code["sk-sorting"].accepted, by_code["sk-sorting"].rejected) == (48, 1)
        kinds = set(s.scalars(select(PointsEntry.kind)))
        assert {"earn", "adjust", "redeem"} <= kinds
        assert s.scalar(select(func.count()).select_from(Member)) == len(RESIDENTS) + 4   # 4 also sort waste

        # The closed period: October's 7 weekdays (22, 23, 26-30) × 2 trips of every resident; per trip
        # km × 46.7 g rounded half up: 15.2 → 710, 8.4 → 392, 21.5 → 1,004, 12.6 → 588, 6.3 → 294,
        # 24.9 → 1,163, 10.7 → 500; 4,651 g × 14 = 65,114 g = 65 kg + 114 g carried.
        transit = s.scalar(select(Project.id).where(Project.title == "深圳市民公共交通低碳出行计划"))
        (period,) = programme_periods.periods_of(s, transit)
        assert (period.period, period.counted_g, period.kg, period.carried_out_g) == ("2026-10", 65_114, 65, 114)
        report = s.get(MonitoringReport, period.report_id)
        assert report is not None and report.status.value == "issued" and report.approved_kg == 65
        assert s.scalar(select(Batch.quantity_kg).where(Batch.report_id == report.id)) == 65

        # The mall, the pool (funded by the programme's two trades: 30,000 and 1,000 kg at ¥59/t =
        # 177,000 + 5,900 fen) and the used park ticket paid from it (15_00).
        assert s.scalar(select(func.count()).select_from(rewards.Reward)) == 4
        used = s.scalars(select(rewards.Redemption).where(rewards.Redemption.status == "used")).all()
        assert len(used) == 1 and s.scalar(select(func.count()).select_from(rewards.Redemption)) == 2
        assert rewards_pool.pool_balance(s) == 177_000 + 5_900 - 15_00
        pool = rewards_pool.statement(s)
        assert pool["inflows"]["trades_total"] == 182_900 and pool["outflows"]["paid_total"] == 15_00
        board = recognition.leaderboard(s, 2026, city="深圳市")
        assert len(board["entries"]) == len(RESIDENTS)
        liming = s.scalar(select(User.id).where(User.email == "liming@example.demo"))
        assert "first_ride" in {b["code"] for b in recognition.badges_of(s, liming)}


def test_seeded_demo_over_http(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    """What a newcomer opens first answers from the seeded data."""
    from web.extensions import db

    seed_demo(db.session, now=NOW)
    fid = db.session.scalar(select(Footprint.id).where(Footprint.name == CONFERENCE_NAME))
    db.session.rollback()
    r = client.get(f"/api/v1/footprints/{fid}/neutrality")
    assert r.status_code == 200 and r.json["neutral"] is True and len(r.json["retirements"]) == 1
    number = r.json["retirements"][0]["certificate_number"]
    assert client.get(f"/footprints/{fid}/neutrality").status_code == 200
    cert = client.get(f"/api/v1/retirements/{number}/certificate.json")
    assert cert.status_code == 200 and cert.json["certificate"]["quantity_kg"] == 77_095
    assert client.get("/api/v1/rewards-pool").json["balance"] == 177_000 + 5_900 - 15_00
    assert len(client.get("/api/v1/rewards").json) == 4   # a plain list (not paginated)
    board = client.get("/api/v1/leaderboards?year=2026&city=深圳市").json
    assert len(board["entries"]) == len(RESIDENTS)
    token = client.post("/api/v1/auth/login", json={"email": "liming@example.demo",
                                                   "password": "tanhui-demo"}).json["token"]
    me = client.get("/api/v1/me/points", headers={"Authorization": f"Bearer {token}"}).json
    assert me["balance"] == sum(e["points"] for e in me["entries"]) and me["balance"] > 0


def test_a_demo_seeded_before_offsetting_gets_the_new_stages(app: Flask, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A database seeded by the older seed (registry and market only) gets offsetting and carbon
    inclusion on the next `flask demo seed`, and only once."""
    from web import demo_inclusion, demo_offsetting
    from web.extensions import db

    with monkeypatch.context() as m:
        m.setattr(demo_offsetting, "seeded", lambda s: True)
        m.setattr(demo_inclusion, "complete", lambda s: True)
        old = seed_demo(db.session, now=NOW)
    assert "Market" in old.summary and "Offsetting" not in old.summary
    assert db.session.scalar(select(func.count()).select_from(Footprint)) == 0
    db.session.rollback()
    upgrade = seed_demo(db.session, now=NOW)
    assert upgrade.summary.startswith("Offsetting") and "Carbon inclusion" in upgrade.summary
    assert "demo seeded" not in upgrade.summary and "Market" not in upgrade.summary
    assert seed_demo(db.session, now=NOW).summary == "demo data already present; nothing changed"
    factory = sessionmaker(bind=db.engine)
    audit.seal_all(factory)
    with factory() as s:
        assert _checks(s) == []
        assert s.scalar(select(func.count()).select_from(Footprint)) == 3
        assert s.scalar(select(func.count()).select_from(behaviour.BehaviourBatch)) == 3
