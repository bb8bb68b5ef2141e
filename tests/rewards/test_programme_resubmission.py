"""A rejected programme report is corrected and resubmitted for the same monitoring period; closing
reads the accepted grams through an index range.

Grams by hand (the feeds of test_programme_issuance): August 1,340 + 467 = 1,807 g; September
467 + 269 = 736 g plus a late metro row of 25 August (93 g); October 2,680 g.

    period   carried in   counted   total   kg   carried out
    2026-08       0        1,807    1,807    1      807     ← rejected, then resubmitted (1 kg)
    2026-09     807          829    1,636    1      636
    2026-10     636        2,680    3,316    3      316
    issued: 1 + 1 + 3 = 5 kg = ⌊5,316 / 1000⌋, 316 g carried: the rejection lost nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from registry import issuance, programme_periods, projects
from registry.errors import Conflict, Forbidden, NotFound
from registry.models import Batch, HolderKind, MonitoringReport, ReportStatus
from tests.behaviour.test_behaviour_api import bearer
from tests.factories import party
from tests.rewards.test_programme_issuance import close, feed, registered, shape


def issued_kg(session: Session, programme_id: int) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(Batch.quantity_kg), 0))
                              .where(Batch.project_id == programme_id)) or 0)


def test_a_rejected_period_is_resubmitted_and_its_grams_issued_once(
        session: Session, session_factory: sessionmaker[Session]) -> None:
    bw, verifier = registered(session)
    pid = bw.programme_id
    feed(session_factory, bw, 8)
    aug, _ = close(session, bw, "2026-08")
    first = aug.report_id
    assert first is not None
    projects.reject_report(session, verifier.actor, first, ["电表读数缺少来源"])
    session.commit()
    for month, period in ((9, "2026-09"), (10, "2026-10")):
        feed(session_factory, bw, month)
        close(session, bw, period)
    periods = programme_periods.periods_of(session, pid)
    assert [shape(p)[:5] for p in periods] == [("2026-08", 0, 1_807, 1, 807), ("2026-09", 807, 829, 1, 636),
                                               ("2026-10", 636, 2_680, 3, 316)]
    # a report that is not rejected is not resubmitted; a stranger cannot
    with pytest.raises(Conflict) as live:
        programme_periods.resubmit_period(session, bw.operator.actor, pid, "2026-09")
    assert (live.value.code, live.value.field) == ("not_rejected", "period")
    with pytest.raises(Forbidden):
        programme_periods.resubmit_period(session, party(session, HolderKind.INDIVIDUAL, "路人").actor, pid,
                                          "2026-08")
    with pytest.raises(NotFound) as none:
        programme_periods.resubmit_period(session, bw.operator.actor, pid, "2026-07")
    assert none.value.field == "period"
    session.rollback()
    # corrected and resubmitted: same period, same kg; rejected again, resubmitted again
    again = programme_periods.resubmit_period(session, bw.operator.actor, pid, "2026-08", note="补充电表来源")
    session.commit()
    second = again.report_id
    assert second is not None and second != first
    projects.reject_report(session, verifier.actor, second, "仍缺少抽样记录")
    session.commit()
    third = programme_periods.resubmit_period(session, None, pid, "2026-08", note="抽样记录").report_id
    session.commit()
    history = programme_periods.report_history(session, pid, "2026-08")
    assert [(r.id, r.status, r.claimed_kg, r.period_start, r.period_end, r.external_ref) for r in history] == [
        (first, ReportStatus.REJECTED, 1, dt.date(2026, 8, 1), dt.date(2026, 8, 31), f"programme:{pid}:2026-08"),
        (second, ReportStatus.REJECTED, 1, dt.date(2026, 8, 1), dt.date(2026, 8, 31), f"programme:{pid}:2026-08:2"),
        (third, ReportStatus.SUBMITTED, 1, dt.date(2026, 8, 1), dt.date(2026, 8, 31), f"programme:{pid}:2026-08:3")]
    assert "仍缺少抽样记录" in history[2].documents[1]["name"]
    # the carry chain did not move
    assert [shape(p)[:5] for p in programme_periods.periods_of(session, pid)][0] == ("2026-08", 0, 1_807, 1, 807)
    # every period's live report verified and issued: 5 kg, the rejected ones can never be issued
    for p in programme_periods.periods_of(session, pid):
        assert p.report_id is not None
        projects.verify_report(session, verifier.actor, p.report_id, approved_kg=p.kg)
        issuance.issue(session, bw.operator.actor, p.report_id)
    session.commit()
    assert issued_kg(session, pid) == 5 == (1_807 + 829 + 2_680) // 1000
    assert programme_periods.periods_of(session, pid)[-1].carried_out_g == 316
    for rejected in (first, second):
        with pytest.raises(Conflict):
            issuance.issue(session, bw.operator.actor, rejected)
        session.rollback()
    # August's grams are in exactly one approved issuance: the batch of its third report
    aug_batches = session.scalars(select(Batch).join(MonitoringReport, MonitoringReport.id == Batch.report_id)
                                  .where(MonitoringReport.period_end == dt.date(2026, 8, 31))).all()
    assert [(b.report_id, b.quantity_kg) for b in aug_batches] == [(third, 1)]
    with pytest.raises(Conflict) as issued:
        programme_periods.resubmit_period(session, bw.operator.actor, pid, "2026-08")
    assert issued.value.code == "not_rejected"
    session.rollback()
    assert programme_periods.check(session) == []


def test_resubmit_over_the_api_and_the_cli(runner: Any, client: Any, session: Session,
                                           session_factory: sessionmaker[Session]) -> None:
    bw, verifier = registered(session)
    pid = bw.programme_id
    feed(session_factory, bw, 8)
    aug, _ = close(session, bw, "2026-08")
    assert aug.report_id is not None
    projects.reject_report(session, verifier.actor, aug.report_id, "样本不足")
    session.commit()
    listed = client.get(f"/api/v1/programmes/{pid}/periods").json
    assert [(p["period"], p["kg"], p["report_status"]) for p in listed] == [("2026-08", 1, "rejected")]
    op = bearer(session, bw.operator.actor.user_id)
    resident = bearer(session, bw.uid(0))
    url = f"/api/v1/programmes/{pid}/periods/2026-08/resubmit"
    assert client.post(url, json={"note": "x"}, headers=resident).status_code == 403
    r = client.post(url, json={"note": "补充样本"}, headers=op)
    assert r.status_code == 201, r.json
    assert (r.json["period"], r.json["kg"], r.json["report_status"]) == ("2026-08", 1, "submitted")
    assert [h["status"] for h in r.json["reports"]] == ["rejected", "submitted"]
    twice = client.post(url, json={}, headers=op)
    assert (twice.status_code, twice.json["error"]["code"], twice.json["error"]["field"]) == (
        409, "not_rejected", "period")
    new_report = r.json["report_id"]
    projects.reject_report(session, verifier.actor, new_report, "仍不足")
    session.commit()
    out = runner.invoke(args=["registry", "resubmit-period", str(pid), "--period", "2026-08", "--note", "全量"])
    assert out.exit_code == 0, out.output
    assert "resubmitted as report" in out.output and "1 kg" in out.output
    bad = runner.invoke(args=["registry", "resubmit-period", str(pid), "--period", "2026-08"])
    assert bad.exit_code != 0 and "period" in bad.output


def test_a_period_counts_late_rows_and_leaves_the_days_after_it(
        session: Session, session_factory: sessionmaker[Session]) -> None:
    """September's rows (and the late 25 August row) are in when August closes: August counts its own
    days only, late row included (1,807 + 93 = 1,900 g); September the rest (900 + 736 = 1,636)."""
    bw, _ = registered(session)
    feed(session_factory, bw, 8)
    feed(session_factory, bw, 9)
    aug, _ = close(session, bw, "2026-08")
    assert shape(aug)[:5] == ("2026-08", 0, 1_900, 1, 900)
    assert programme_periods.accepted_grams(session, bw.programme_id) == 1_807 + 829
    assert programme_periods.accepted_grams_after(session, bw.programme_id, dt.date(2026, 8, 31)) == 736
    sep, _ = close(session, bw, "2026-09")
    assert shape(sep)[:5] == ("2026-09", 900, 736, 1, 636)


def test_closing_reads_the_day_totals_not_the_events(
        session: Session, session_factory: sessionmaker[Session]) -> None:
    """The grams after a period's end come from the programme's day totals (one row a day, kept by the
    import with the events), never from the events; the ledger check proves the totals against the
    events and names a day that differs."""
    from registry import behaviour
    from registry.behaviour import ProgrammeDay

    bw, _ = registered(session)
    feed(session_factory, bw, 8)
    feed(session_factory, bw, 9)
    days = {d: g for d, g in session.execute(select(ProgrammeDay.day, ProgrammeDay.reduction_g)
                                                 .where(ProgrammeDay.programme_id == bw.programme_id))}
    assert sum(days.values()) == 1_807 + 829 and all(g > 0 for g in days.values())
    after = sum(g for d, g in days.items() if d > dt.date(2026, 8, 31))
    assert after == 736 == programme_periods.accepted_grams_after(session, bw.programme_id, dt.date(2026, 8, 31))
    sql = str(programme_periods.accepted_grams_after_stmt(bw.programme_id, dt.date(2026, 8, 31))
              .compile(session.get_bind()))
    assert "behaviour_programme_days" in sql and "behaviour_events" not in sql
    assert behaviour.check_ledger(session) == []
    first = min(days)
    session.execute(text("UPDATE behaviour_programme_days SET reduction_g = reduction_g + 5 WHERE day = :d"),
                    {"d": first})
    found = behaviour.check_ledger(session)
    assert f"programme {bw.programme_id} day {first}: the record says {days[first] + 5} g" in found, found
    session.rollback()
