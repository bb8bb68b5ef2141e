"""Programme periods: accepted behaviour grams become a monitoring report in whole kg, the remainder
carried to the next period; verified and issued through the registry's own flow."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry import behaviour, issuance, programme_periods, projects
from registry.errors import Conflict, InvalidInput
from registry.models import MonitoringReport
from tests.behaviour.world import BWorld, build, row


def register(session: Session, bw: BWorld, verifier: Any) -> None:
    projects.submit_project(session, bw.operator.actor, bw.programme_id)
    projects.validate_project(session, verifier.actor, bw.programme_id)
    projects.register_project(session, bw.operator.actor, bw.programme_id)
    session.commit()


def test_periods_carry_grams_and_issue_kilograms(session: Session, session_factory: sessionmaker[Session],
                                                 runner: Any) -> None:
    from registry.models import HolderKind
    from tests.factories import party

    bw = build(session)
    verifier = party(session, HolderKind.VERIFIER, "核查机构")
    register(session, bw, verifier)
    day1 = dt.datetime(2026, 11, 2, 12)
    u0, u1 = {"user_id": str(bw.uid(0))}, {"user_id": str(bw.uid(1))}
    recycle = [row(f"w{i}", None, "CI-WASTE", day1 + dt.timedelta(minutes=i), minutes=0,
                   category="recyclables", weight_kg="0.5") | u0 for i in range(3)]     # 670 g each
    behaviour.import_rows(session_factory, "sz-metro", "no-waste", "api", recycle[:1],
                          received_at=day1)                                             # not allowed: 0 g
    behaviour.import_rows(session_factory, "sz-sort", "nov-2", "api", recycle, received_at=day1)
    behaviour.import_rows(session_factory, "sz-sort", "nov-3", "api", [
        row("w9", None, "CI-WASTE", day1, minutes=0, category="recyclables", weight_kg="0.25") | u1],
        received_at=day1 + dt.timedelta(days=1))                                        # 335 g, next day
    owner = programme_periods.owner_actor(session, bw.programme_id)
    with pytest.raises(InvalidInput):
        programme_periods.close_period(session, owner, bw.programme_id, dt.date.today())
    # 2 Nov: 3 × 670 = 2010 g → 2 kg in a report, 10 g carried
    first = programme_periods.close_period(session, owner, bw.programme_id, dt.date(2026, 11, 2))
    assert (first.period_start, first.batches, first.reduction_g, first.quantity_kg, first.carry_out_g) == (
        dt.date(2026, 11, 2), 2, 2010, 2, 10)
    report = session.get(MonitoringReport, first.report_id)
    assert report is not None and (report.claimed_kg, report.period_start, report.period_end) == (
        2, dt.date(2026, 11, 2), dt.date(2026, 11, 2))
    # 3 Nov: 335 g + 10 g carried: under a kilogram, no report, 345 g carried on
    second = programme_periods.close_period(session, owner, bw.programme_id, dt.date(2026, 11, 3))
    assert (second.period_start, second.reduction_g, second.carry_in_g, second.quantity_kg,
            second.carry_out_g, second.report_id) == (dt.date(2026, 11, 3), 335, 10, 0, 345, None)
    with pytest.raises(Conflict):
        programme_periods.close_period(session, owner, bw.programme_id, dt.date(2026, 11, 3))
    projects.verify_report(session, verifier.actor, first.report_id, approved_kg=2)
    batch = issuance.issue(session, bw.operator.actor, first.report_id)
    assert batch.quantity_kg == 2 and batch.vintage == 2026
    session.commit()
    # a later batch goes to the next period; the CLI closes it
    behaviour.import_rows(session_factory, "sz-sort", "nov-4", "api", [
        row("w10", None, "CI-WASTE", day1 + dt.timedelta(hours=1), minutes=0, category="recyclables",
            weight_kg="0.5") | u1],
        received_at=dt.datetime(2026, 11, 4, 9))
    r = runner.invoke(args=["registry", "close-programme-period", str(bw.programme_id), "--end", "2026-11-04"])
    assert r.exit_code == 0, r.output
    # 670 + 345 = 1015 g → 1 kg, 15 g carried
    assert "1 batches, 670 g + 345 g carried = 1 kg in monitoring report" in r.output
    assert r.output.strip().endswith("15 g carried forward")
