"""Projects and programmes: lifecycle, monitoring, verification, issuance."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from registry import issuance, projects
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound, Suspended
from registry.models import (
    Batch,
    Block,
    BlockStatus,
    HolderKind,
    ProjectStatus,
    ReportStatus,
)
from tests.factories import issued_batch, party, registered_project, world


def _draft(session, w, **kw):
    args = dict(title="屋顶光伏", methodology_id=w.methodology.id, province="广东省", city="深圳市") | kw
    return projects.create_project(session, w.owner.actor, **args)


def test_project_goes_draft_submitted_validated_registered(session):
    w = world(session)
    p = _draft(session, w, documents=[{"name": "PDD.pdf", "kind": "PDD"}])
    assert p.status is ProjectStatus.DRAFT and p.documents == [{"name": "PDD.pdf", "kind": "PDD"}]
    projects.submit_project(session, w.owner.actor, p.id)
    assert p.status is ProjectStatus.SUBMITTED
    projects.validate_project(session, w.verifier.actor, p.id, note="site visit ok")
    assert p.status is ProjectStatus.VALIDATED and p.validated_by_id == w.verifier.holder.id
    projects.register_project(session, w.operator.actor, p.id)
    assert p.status is ProjectStatus.REGISTERED
    session.commit()


def test_transitions_out_of_order_are_refused(session):
    w = world(session)
    p = _draft(session, w)
    with pytest.raises(Conflict) as e:
        projects.validate_project(session, w.verifier.actor, p.id)
    assert e.value.code == "wrong_status"
    with pytest.raises(Conflict):
        projects.register_project(session, w.operator.actor, p.id)
    projects.submit_project(session, w.owner.actor, p.id)
    with pytest.raises(Conflict):
        projects.submit_project(session, w.owner.actor, p.id)


def test_only_the_right_roles_act(session):
    w = world(session)
    p = _draft(session, w)
    projects.submit_project(session, w.owner.actor, p.id)
    with pytest.raises(Forbidden):
        projects.validate_project(session, w.owner.actor, p.id)      # owner is no verifier
    with pytest.raises(Forbidden):
        projects.register_project(session, w.verifier.actor, p.id)   # verifier is no operator
    other = party(session, HolderKind.ENTERPRISE)
    with pytest.raises(Forbidden):
        projects.submit_report(session, other.actor, p.id, period_start=dt.date(2024, 1, 1),
                               period_end=dt.date(2024, 2, 1), claimed_kg=10)


def test_another_holders_draft_is_not_found(session):
    w = world(session)
    p = _draft(session, w)
    other = party(session, HolderKind.ENTERPRISE)
    with pytest.raises(NotFound):
        projects.submit_project(session, other.actor, p.id)


def test_viewer_cannot_create(session):
    w = world(session)
    viewer = party(session, HolderKind.ENTERPRISE, role="viewer")
    with pytest.raises(Forbidden):
        projects.create_project(session, viewer.actor, title="x", methodology_id=w.methodology.id,
                                province="广东省", city="深圳市")


def test_programmes_belong_to_agencies_or_the_operator(session):
    w = world(session)
    with pytest.raises(Forbidden):
        _draft(session, w, kind="programme")
    agency = party(session, HolderKind.AGENCY)
    p = projects.create_project(session, agency.actor, kind="programme", title="公交出行",
                                methodology_id=w.methodology.id, province="广东省", city="深圳市")
    assert p.kind.value == "programme"


def test_rejection_carries_reasons_and_the_owner_may_revise(session):
    w = world(session)
    p = _draft(session, w)
    projects.submit_project(session, w.owner.actor, p.id)
    with pytest.raises(InvalidInput) as e:
        projects.reject_project(session, w.verifier.actor, p.id, [])
    assert e.value.field == "reasons"
    projects.reject_project(session, w.verifier.actor, p.id, ["基准线数据不足", "missing grid contract"])
    assert p.status is ProjectStatus.REJECTED
    assert p.status_reason == "基准线数据不足; missing grid contract"
    projects.revise_project(session, w.owner.actor, p.id)
    assert p.status is ProjectStatus.DRAFT


def test_verifier_cannot_validate_its_own_project(session):
    w = world(session)
    p = projects.create_project(session, w.operator.actor, title="x", methodology_id=w.methodology.id,
                                province="广东省", city="深圳市")
    # An operator-owned project; the operator is not a verifier, so use a verifier-owned path instead:
    assert p.owner_id == w.operator.holder.id
    with pytest.raises(Forbidden):
        projects.create_project(session, w.verifier.actor, title="mine", methodology_id=w.methodology.id,
                                province="广东省", city="深圳市")


def test_bad_project_input_names_the_field(session):
    w = world(session)
    for kw, field in [({"title": " "}, "title"), ({"city": ""}, "city"), ({"methodology_id": 9999}, "methodology_id"),
                      ({"kind": "nonsense"}, "kind"), ({"estimated_annual_kg": 0}, "estimated_annual_kg"),
                      ({"documents": [{"kind": "x"}]}, "documents.0.name")]:
        with pytest.raises(InvalidInput) as e:
            _draft(session, w, **kw)
        assert e.value.field == field


def test_external_reference_is_unique(session):
    w = world(session)
    _draft(session, w, external_ref="VCS-1234")
    with pytest.raises(Conflict) as e:
        _draft(session, w, external_ref="VCS-1234")
    assert e.value.field == "external_ref"


def test_monitoring_periods_never_overlap(session):
    w = world(session)
    p = registered_project(session, w)
    projects.submit_report(session, w.owner.actor, p.id, period_start=dt.date(2024, 1, 1),
                           period_end=dt.date(2024, 6, 30), claimed_kg=100)
    with pytest.raises(Conflict) as e:
        projects.submit_report(session, w.owner.actor, p.id, period_start=dt.date(2024, 6, 30),
                               period_end=dt.date(2024, 12, 31), claimed_kg=100)
    assert e.value.code == "overlapping_period"
    projects.submit_report(session, w.owner.actor, p.id, period_start=dt.date(2024, 7, 1),
                           period_end=dt.date(2024, 12, 31), claimed_kg=100)


def test_report_input_is_checked(session):
    w = world(session)
    p = registered_project(session, w)
    cases = [
        (dict(period_start=dt.date(2024, 2, 1), period_end=dt.date(2024, 1, 1), claimed_kg=1), "period_end"),
        (dict(period_start=dt.date(2024, 1, 1), period_end=dt.date(2024, 1, 2), claimed_kg=0), "claimed_kg"),
        (dict(period_start=dt.date(2024, 1, 1), period_end=dt.date(2024, 1, 2), claimed_kg=-5), "claimed_kg"),
        (dict(period_start=dt.date.today(), period_end=dt.date.today() + dt.timedelta(days=3), claimed_kg=1),
         "period_end"),
    ]
    for kw, field in cases:
        with pytest.raises(InvalidInput) as e:
            projects.submit_report(session, w.owner.actor, p.id, **kw)
        assert e.value.field == field


def test_reports_need_a_registered_project(session):
    w = world(session)
    p = _draft(session, w)
    with pytest.raises(Conflict):
        projects.submit_report(session, w.owner.actor, p.id, period_start=dt.date(2024, 1, 1),
                               period_end=dt.date(2024, 1, 2), claimed_kg=5)


def test_verifier_may_approve_less_than_claimed_never_more(session):
    w = world(session)
    p = registered_project(session, w)
    r = projects.submit_report(session, w.owner.actor, p.id, period_start=dt.date(2024, 1, 1),
                               period_end=dt.date(2024, 12, 31), claimed_kg=10_000)
    with pytest.raises(InvalidInput) as e:
        projects.verify_report(session, w.verifier.actor, r.id, approved_kg=10_001)
    assert e.value.code == "exceeds_claim"
    projects.verify_report(session, w.verifier.actor, r.id, approved_kg=9_200, note="meter drift")
    assert r.status is ReportStatus.VERIFIED and r.approved_kg == 9_200
    b = issuance.issue(session, w.operator.actor, r.id)
    assert b.quantity_kg == 9_200 and b.vintage == 2024 and b.number == 1
    assert b.serial(1, 9_200) == f"THR-{p.id:05d}-2024-1-1-9200"
    block = session.scalar(select(Block).where(Block.batch_id == b.id))
    assert (block.start, block.end, block.quantity, block.status) == (1, 9_200, 9_200, BlockStatus.HELD)
    assert block.account_id == session.scalar(select(Block.account_id).where(Block.id == block.id))
    session.commit()


def test_rejected_report_is_never_issued(session):
    w = world(session)
    p = registered_project(session, w)
    r = projects.submit_report(session, w.owner.actor, p.id, period_start=dt.date(2024, 1, 1),
                               period_end=dt.date(2024, 12, 31), claimed_kg=500)
    projects.reject_report(session, w.verifier.actor, r.id, ["no meter readings"])
    with pytest.raises(Conflict):
        issuance.issue(session, w.operator.actor, r.id)
    # The period is free again for a corrected report.
    projects.submit_report(session, w.owner.actor, p.id, period_start=dt.date(2024, 1, 1),
                           period_end=dt.date(2024, 12, 31), claimed_kg=450)


def test_no_double_issuance(session):
    w = world(session)
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 700)
    with pytest.raises(Conflict) as e:
        issuance.issue(session, w.operator.actor, b.report_id)
    assert e.value.code == "already_issued"
    assert session.scalar(select(func.count()).select_from(Batch)) == 1
    session.commit()


def test_issuance_external_reference_is_unique(session):
    w = world(session)
    p = registered_project(session, w)
    r1 = projects.submit_report(session, w.owner.actor, p.id, period_start=dt.date(2024, 1, 1),
                                period_end=dt.date(2024, 1, 31), claimed_kg=10)
    r2 = projects.submit_report(session, w.owner.actor, p.id, period_start=dt.date(2024, 2, 1),
                                period_end=dt.date(2024, 2, 28), claimed_kg=10)
    for r in (r1, r2):
        projects.verify_report(session, w.verifier.actor, r.id, approved_kg=10)
    issuance.issue(session, w.operator.actor, r1.id, external_ref="partner-batch-77")
    with pytest.raises(Conflict) as e:
        issuance.issue(session, w.operator.actor, r2.id, external_ref="partner-batch-77")
    assert e.value.field == "external_ref"
    b2 = issuance.issue(session, w.operator.actor, r2.id)
    assert b2.number == 2
    session.commit()


def test_only_the_operator_issues_and_not_while_suspended(session):
    w = world(session)
    p = registered_project(session, w)
    r = projects.submit_report(session, w.owner.actor, p.id, period_start=dt.date(2024, 1, 1),
                               period_end=dt.date(2024, 1, 31), claimed_kg=10)
    projects.verify_report(session, w.verifier.actor, r.id, approved_kg=10)
    with pytest.raises(Forbidden):
        issuance.issue(session, w.verifier.actor, r.id)
    projects.set_project_suspension(session, w.operator.actor, p.id, True, "fraud investigation")
    with pytest.raises(Suspended):
        issuance.issue(session, w.operator.actor, r.id)
    projects.set_project_suspension(session, w.operator.actor, p.id, False, "cleared")
    issuance.issue(session, w.operator.actor, r.id)
    session.commit()


def test_suspension_needs_a_reason_and_a_change(session):
    w = world(session)
    p = registered_project(session, w)
    with pytest.raises(InvalidInput):
        projects.set_project_suspension(session, w.operator.actor, p.id, True, " ")
    with pytest.raises(Conflict):
        projects.set_project_suspension(session, w.operator.actor, p.id, False, "not suspended")
    with pytest.raises(Forbidden):
        projects.set_project_suspension(session, w.owner.actor, p.id, True, "self")
