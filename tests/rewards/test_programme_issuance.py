"""Programme issuance: a month's accepted reductions (g) become a monitoring report in kg with the
remainder carried, through three periods by hand; verification and issuance through the registry's
flow; the issued credits offered for sale at the reference price; the sale funds the rewards pool.

Grams by hand (Shenzhen factors): recyclables 1.34 kg/kg (1 kg → 1,340 g, 2 kg → 2,680 g); metro
46.7 g/pkm (10 km → 467 g, 2 km → 93.4 → 93 g); bus 26.9 g/pkm (10 km → 269 g).

    period   carried in   counted                          total   kg   carried out
    2026-08       0       1,340 + 467 = 1,807              1,807    1      807
    2026-09     807       467 + 269 + 93 (late, 25 Aug)  = 829      1,636    1      636
    2026-10     636       2,680                            3,316    3      316
    all: 1,807 + 829 + 2,680 = 5,316 g = 5 kg issued + 316 g carried: nothing lost, nothing twice.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from exchange import instruments, orders, programme_issuance, rewards_pool, wallets
from exchange.models import Order, OrderStatus
from exchange.orders import OrderRequest
from exchange.sequencer import Sequencer
from registry import behaviour, issuance, programme_periods, projects
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound
from registry.models import HolderKind, MonitoringReport, ReportStatus
from registry.programme_periods import ProgrammePeriod
from tests.behaviour.test_behaviour_api import bearer
from tests.behaviour.world import BWorld, build, row
from tests.factories import Party, party

TODAY = dt.date(2026, 11, 23)


def registered(session: Session) -> tuple[BWorld, Party]:
    bw = build(session, residents=2)
    verifier = party(session, HolderKind.VERIFIER, "第三方核查")
    projects.submit_project(session, bw.operator.actor, bw.programme_id)
    projects.validate_project(session, verifier.actor, bw.programme_id)
    projects.register_project(session, bw.operator.actor, bw.programme_id)
    session.commit()
    return bw, verifier


def feed(factory: sessionmaker[Session], bw: BWorld, month: int) -> None:
    if month == 8:
        behaviour.import_rows(factory, "sz-sort", "aug", "api", [
            row("w1", None, "CI-WASTE", dt.datetime(2026, 8, 10, 2), minutes=5, category="recyclables",
                weight_kg="1", user_id=bw.uid(0))], received_at=dt.datetime(2026, 8, 31, 12))
        behaviour.import_rows(factory, "sz-metro", "aug", "api", [
            row("m1", "card-0", "CI-TRANSIT", dt.datetime(2026, 8, 11, 1), mode="metro", distance_km="10")],
            received_at=dt.datetime(2026, 8, 31, 12))
    elif month == 9:
        behaviour.import_rows(factory, "sz-metro", "sep", "api", [
            row("m2", "card-1", "CI-TRANSIT", dt.datetime(2026, 9, 5, 1), mode="metro", distance_km="10"),
            row("b2", "card-1", "CI-TRANSIT", dt.datetime(2026, 9, 6, 1), mode="bus", distance_km="10"),
            row("late", "card-0", "CI-TRANSIT", dt.datetime(2026, 8, 25, 1), mode="metro", distance_km="2"),
        ], received_at=dt.datetime(2026, 9, 20, 12))
    else:
        behaviour.import_rows(factory, "sz-sort", "oct", "api", [
            row("w3", None, "CI-WASTE", dt.datetime(2026, 10, 15, 2), minutes=5, category="recyclables",
                weight_kg="2", user_id=bw.uid(1))], received_at=dt.datetime(2026, 10, 31, 12))


def close(session: Session, bw: BWorld, period: str) -> tuple[ProgrammePeriod, bool]:
    got = programme_periods.close_period(session, bw.operator.actor, bw.programme_id, period, today=TODAY)
    session.commit()
    return got


def shape(p: ProgrammePeriod) -> tuple[Any, ...]:
    return (p.period, p.carried_in_g, p.counted_g, p.kg, p.carried_out_g, p.period_start, p.period_end)


def test_grams_to_kg_with_the_remainder_carried_across_three_periods(
        session: Session, session_factory: sessionmaker[Session]) -> None:
    bw, verifier = registered(session)
    feed(session_factory, bw, 8)
    aug, new = close(session, bw, "2026-08")
    assert new and shape(aug) == ("2026-08", 0, 1_807, 1, 807, dt.date(2026, 8, 1), dt.date(2026, 8, 31))
    feed(session_factory, bw, 9)     # includes a row of 25 August that arrived after August closed
    sep, _ = close(session, bw, "2026-09")
    assert shape(sep) == ("2026-09", 807, 829, 1, 636, dt.date(2026, 9, 1), dt.date(2026, 9, 30))
    feed(session_factory, bw, 10)
    oct_, _ = close(session, bw, "2026-10")
    assert shape(oct_) == ("2026-10", 636, 2_680, 3, 316, dt.date(2026, 10, 1), dt.date(2026, 10, 31))
    # re-running a closed period changes nothing
    again, new = close(session, bw, "2026-08")
    assert not new and again.id == aug.id and shape(again) == shape(aug)
    reports = session.scalars(select(MonitoringReport).where(MonitoringReport.project_id == bw.programme_id)
                              .order_by(MonitoringReport.period_start)).all()
    assert [(r.claimed_kg, r.status, r.external_ref) for r in reports] == [
        (1, ReportStatus.SUBMITTED, f"programme:{bw.programme_id}:2026-08"),
        (1, ReportStatus.SUBMITTED, f"programme:{bw.programme_id}:2026-09"),
        (3, ReportStatus.SUBMITTED, f"programme:{bw.programme_id}:2026-10")]
    # the registry's flow: a verifier approves, the operator issues
    for r in reports:
        projects.verify_report(session, verifier.actor, r.id, approved_kg=r.claimed_kg)
        issuance.issue(session, bw.operator.actor, r.id)
    session.commit()
    assert sum(r.claimed_kg for r in reports) == 5
    assert programme_periods.check(session) == []
    # a tampered carry is named by the check
    session.execute(ProgrammePeriod.__table__.update().where(ProgrammePeriod.id == sep.id)
                    .values(carried_in_g=806, counted_g=830))
    assert programme_periods.check(session) == [
        f"programme {bw.programme_id} 2026-09: carried in 806 g, the period before carried out 807 g",
        f"programme {bw.programme_id}: 5317 g counted but 5316 g accepted through 2026-10-31"]
    session.rollback()


def test_periods_close_in_order_once_ended_by_the_owner_or_operator(
        session: Session, session_factory: sessionmaker[Session]) -> None:
    bw, _ = registered(session)
    feed(session_factory, bw, 8)
    close(session, bw, "2026-08")
    with pytest.raises(Conflict) as before:
        programme_periods.close_period(session, None, bw.programme_id, "2026-07", today=TODAY)
    assert (before.value.code, before.value.field) == ("before_last_closed", "period")
    with pytest.raises(Conflict) as running:
        programme_periods.close_period(session, None, bw.programme_id, "2026-11", today=TODAY)
    assert running.value.code == "period_not_ended"
    with pytest.raises(InvalidInput) as bad:
        programme_periods.close_period(session, None, bw.programme_id, "2026-13", today=TODAY)
    assert bad.value.field == "period"
    resident = party(session, HolderKind.INDIVIDUAL, "居民")
    with pytest.raises(Forbidden):
        programme_periods.close_period(session, resident.actor, bw.programme_id, "2026-09", today=TODAY)
    with pytest.raises(NotFound):
        programme_periods.close_period(session, None, 999_999, "2026-09", today=TODAY)
    session.rollback()
    # a month with nothing to issue closes with no report, and its grams carry on
    sep, _ = close(session, bw, "2026-09")
    assert (sep.counted_g, sep.kg, sep.carried_in_g, sep.carried_out_g, sep.report_id) == (0, 0, 807, 807, None)


def offered_market(session: Session, session_factory: sessionmaker[Session]) -> tuple[BWorld, Party, int]:
    bw, verifier = registered(session)
    feed(session_factory, bw, 10)
    instruments.create_instrument(
        session, bw.operator.actor, symbol="SZ-CI-2026", name_zh="深圳碳普惠2026", name_en="Shenzhen CI 2026",
        kind="pooled", vintage_from=2026, vintage_to=2026, project_kind="programme", reference_price=100_000,
        lot_size_kg=1, min_qty_kg=1, maker_fee_bp=0, taker_fee_bp=50)
    session.commit()
    return bw, verifier, bw.programme_id


def test_the_job_closes_last_month_and_offers_the_issuance_for_sale(
        session: Session, session_factory: sessionmaker[Session]) -> None:
    bw, verifier, pid = offered_market(session, session_factory)
    run = programme_issuance.run_programme_issuance(session_factory, dt.date(2026, 11, 5))
    assert run is not None and run.closed == [(pid, "2026-10", 2)] and run.offered == []   # 2,680 g → 2 kg
    again = programme_issuance.run_programme_issuance(session_factory, dt.date(2026, 11, 6))
    assert again is not None and again.closed == [] and again.failed == []
    period = session.scalars(select(ProgrammePeriod)).one()
    assert period.report_id is not None
    projects.verify_report(session, verifier.actor, period.report_id, approved_kg=2)
    issuance.issue(session, bw.operator.actor, period.report_id)
    session.commit()
    offered = programme_issuance.run_programme_issuance(session_factory, dt.date(2026, 11, 7))
    assert offered is not None and len(offered.offered) == 1
    order = session.get(Order, offered.offered[0])
    assert order is not None
    assert (order.side, order.qty_kg, order.price, order.holder_id, order.status) == (
        "sell", 2, 100_000, bw.operator.holder.id, OrderStatus.PENDING)
    session.rollback()   # SQLite: the test's reading session must not hold the write lock
    assert programme_issuance.run_programme_issuance(session_factory, dt.date(2026, 11, 8)).offered == []  # type: ignore[union-attr]
    # a buyer takes it; the settlement run moves the proceeds into the rewards pool
    buyer = party(session, HolderKind.EVENT_ORGANISER, "会务方")
    wallets.deposit(session, bw.operator.actor, buyer.holder.id, 10_000)
    session.commit()
    seq = Sequencer(session_factory)
    seq.run_once()
    orders.place_order(session, buyer.actor, OrderRequest(instrument="SZ-CI-2026", side="buy", qty_kg=2,
                                                          price=100_000))
    session.commit()
    seq.run_once()
    session.rollback()
    # notional ¥1,000/t × 2 kg = 200 fen; the maker (the offer) pays no fee
    funded = programme_issuance.run_programme_issuance(session_factory, dt.date(2026, 11, 9))
    assert funded is not None and funded.funded == 200
    assert rewards_pool.pool_balance(session) == 200
    session.rollback()


def test_close_period_over_the_cli_and_the_api(runner: Any, client: Any, session: Session,
                                               session_factory: sessionmaker[Session]) -> None:
    bw, _ = registered(session)
    feed(session_factory, bw, 8)
    pid = bw.programme_id
    out = runner.invoke(args=["registry", "close-period", str(pid), "--period", "2026-08"])
    assert out.exit_code == 0, out.output
    assert "0 g carried in + 1807 g counted = 1 kg + 807 g carried out" in out.output
    again = runner.invoke(args=["registry", "close-period", str(pid), "--period", "2026-08"])
    assert "was already closed" in again.output
    bad = runner.invoke(args=["registry", "close-period", str(pid), "--period", "2026-13"])
    assert bad.exit_code != 0 and "period" in bad.output
    op = bearer(session, bw.operator.actor.user_id)
    r = client.post(f"/api/v1/programmes/{pid}/periods", json={"period": "2026-09"}, headers=op)
    assert r.status_code == 201, r.json
    assert (r.json["carried_in_g"], r.json["counted_g"], r.json["kg"], r.json["report_id"]) == (807, 0, 0, None)
    wrong = client.post(f"/api/v1/programmes/{pid}/periods", json={"period": "Sept"}, headers=op)
    assert (wrong.status_code, wrong.json["error"]["field"]) == (422, "period")
    resident = bearer(session, bw.uid(0))
    assert client.post(f"/api/v1/programmes/{pid}/periods", json={"period": "2026-10"},
                       headers=resident).status_code == 403
    listed = client.get(f"/api/v1/programmes/{pid}/periods").json
    assert [(p["period"], p["kg"], p["carried_out_g"]) for p in listed] == [("2026-08", 1, 807), ("2026-09", 0, 807)]
    assert client.get("/api/v1/programmes/999999/periods").status_code == 404
    checked = runner.invoke(args=["registry", "check-rewards"])
    assert checked.exit_code == 0 and "sound" in checked.output


def test_the_scheduler_runs_the_loop_jobs_with_their_locks(session_factory: sessionmaker[Session]) -> None:
    from exchange import jobs, rewards_jobs
    sched = jobs.build_scheduler(session_factory)
    rewards_jobs.add_jobs(sched, session_factory, sched.timezone)
    by_id = {j.id: j for j in sched.get_jobs()}
    issuance_job = by_id["carbon_inclusion.programme_issuance"].trigger
    fields = {f.name: str(f) for f in issuance_job.fields}
    assert (fields["hour"], fields["minute"], str(issuance_job.timezone)) == ("1", "30", "Asia/Shanghai")
    assert by_id["carbon_inclusion.rewards_settlement"].trigger.interval == dt.timedelta(minutes=10)
    assert by_id["carbon_inclusion.badges"].trigger.interval == dt.timedelta(minutes=10)
    assert rewards_jobs.run_rewards_settlement(session_factory) == (0, 0)
    assert rewards_jobs.run_badges(session_factory) == []


def test_the_offer_price_is_the_reference_on_the_tick_within_the_band() -> None:
    from exchange.models import Instrument
    inst = Instrument(reference_price=60_05, tick_size=10, band_high=66_05)
    assert programme_issuance.offer_price(inst) == 60_10
    inst = Instrument(reference_price=60_00, tick_size=10, band_high=66_00)
    assert programme_issuance.offer_price(inst) == 60_00
    inst = Instrument(reference_price=66_01, tick_size=10, band_high=66_05)   # rounding up would leave the band
    assert programme_issuance.offer_price(inst) == 66_00
