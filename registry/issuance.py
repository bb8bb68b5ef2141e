"""Issuance: one batch per verified monitoring report, one serial block [1, quantity] into the
owner's holding account."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry import audit
from registry.actors import Actor
from registry.db import utcnow
from registry.errors import Conflict, InvalidInput, Suspended
from registry.holders import account_of
from registry.models import (
    Batch,
    Block,
    BlockStatus,
    HolderKind,
    MonitoringReport,
    Movement,
    MovementKind,
    ProjectStatus,
    ReportStatus,
)
from registry.projects import get_project, get_report


def issue(session: Session, actor: Actor, report_id: int, *, external_ref: str | None = None) -> Batch:
    """Operator issues the approved quantity of a verified report. Refuses a second issuance of the
    same report, an issuance that would take the project's total past what was verified, a duplicate
    external reference, a suspended or unregistered project."""
    actor.require_kind(HolderKind.OPERATOR)
    report = get_report(session, report_id, lock=True)
    project = get_project(session, report.project_id, lock=True)
    if report.status is ReportStatus.ISSUED:
        raise Conflict("this monitoring report was already issued", field="report_id", code="already_issued")
    if report.status is not ReportStatus.VERIFIED or report.approved_kg is None:
        raise Conflict(f"report is {report.status.value}; only a verified report is issued",
                       field="report_id", code="wrong_status")
    if project.status is not ProjectStatus.REGISTERED:
        raise Conflict("the project is not registered", field="report_id", code="wrong_status")
    if project.suspended:
        raise Suspended(f"project {project.id} is suspended", field="report_id")
    if external_ref is not None:
        external_ref = external_ref.strip()
        if not external_ref:
            raise InvalidInput("external_ref is empty", field="external_ref")
        if session.scalar(select(Batch.id).where(Batch.external_ref == external_ref)):
            raise Conflict("an issuance with this external reference exists", field="external_ref",
                           code="duplicate")
    issued = session.scalar(select(func.coalesce(func.sum(Batch.quantity_kg), 0))
                            .where(Batch.project_id == project.id)) or 0
    verified = session.scalar(select(func.coalesce(func.sum(MonitoringReport.approved_kg), 0)).where(
        MonitoringReport.project_id == project.id,
        MonitoringReport.status.in_([ReportStatus.VERIFIED, ReportStatus.ISSUED]))) or 0
    if issued + report.approved_kg > verified:
        raise Conflict(f"issuing {report.approved_kg} kg would exceed the {verified} kg verified "
                       f"({issued} kg already issued)", field="report_id", code="exceeds_verified")
    number = (session.scalar(select(func.max(Batch.number)).where(Batch.project_id == project.id)) or 0) + 1
    qty = report.approved_kg
    batch = Batch(project_id=project.id, number=number, report_id=report.id,
                  methodology_id=project.methodology_id, vintage=report.vintage, quantity_kg=qty,
                  external_ref=external_ref, issued_at=utcnow(), issued_by_id=actor.user_id)
    session.add(batch)
    session.flush()
    account = account_of(session, project.owner_id)
    session.add(Block(batch_id=batch.id, project_id=project.id, vintage=batch.vintage, start=1, end=qty,
                      quantity=qty, account_id=account.id, status=BlockStatus.HELD))
    session.add(Movement(kind=MovementKind.ISSUANCE, batch_id=batch.id, start=1, end=qty,
                         from_account_id=None, to_account_id=account.id, at=batch.issued_at))
    report.status = ReportStatus.ISSUED
    audit.record(session, actor, "units.issued", "batch", batch.id,
                 {"project_id": project.id, "report_id": report.id, "vintage": batch.vintage,
                  "quantity_kg": qty, "serial": batch.serial(1, qty), "account": account.number,
                  "external_ref": external_ref})
    return batch
