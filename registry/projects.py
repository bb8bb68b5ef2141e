"""Projects and programmes: draft → submitted → validated → registered, or rejected with reasons;
monitoring reports and their verification; suspension by the operator."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import audit
from registry.actors import Actor
from registry.db import utcnow
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound
from registry.models import (
    HolderKind,
    Methodology,
    MonitoringReport,
    Project,
    ProjectKind,
    ProjectStatus,
    ReportStatus,
)

_OWNER_KINDS = (HolderKind.ENTERPRISE, HolderKind.AGENCY, HolderKind.OPERATOR,
                HolderKind.EVENT_ORGANISER, HolderKind.MERCHANT)


def _documents(docs: Any) -> list[dict[str, Any]]:
    if docs is None:
        return []
    if not isinstance(docs, list):
        raise InvalidInput("documents must be a list", field="documents")
    out = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or not d.get("name"):
            raise InvalidInput("each document needs a name", field=f"documents.{i}.name")
        out.append({k: d[k] for k in ("name", "kind", "sha256", "url", "size") if k in d})
    return out


def get_project(session: Session, project_id: int, *, lock: bool = False) -> Project:
    project = session.get(Project, project_id, with_for_update={"key_share": True} if lock else None)
    if project is None:
        raise NotFound(f"no project {project_id}", field="project_id")
    return project


def _own(project: Project, actor: Actor) -> None:
    if project.owner_id != actor.holder_id and not actor.is_operator:
        # Drafts are private: another holder learns nothing about them.
        if project.status is ProjectStatus.DRAFT:
            raise NotFound(f"no project {project.id}", field="project_id")
        raise Forbidden("only the project's owner may do this", code="not_owner")


def create_project(session: Session, actor: Actor, *, kind: str = "project", title: str,
                   methodology_id: int, province: str, city: str, district: str | None = None,
                   title_en: str | None = None, description: str | None = None,
                   estimated_annual_kg: int | None = None, documents: Any = None,
                   external_ref: str | None = None) -> Project:
    """A draft owned by the actor's holder. Programmes (public behaviour) belong to an agency or
    the operator. `external_ref` (another registry's id) is unique: no project registered twice."""
    actor.require_kind(*_OWNER_KINDS)
    actor.require_can_move_units()
    try:
        pkind = ProjectKind(kind)
    except ValueError:
        raise InvalidInput(f"unknown kind {kind!r}", field="kind") from None
    if pkind is ProjectKind.PROGRAMME:
        actor.require_kind(HolderKind.AGENCY, HolderKind.OPERATOR)
    if not title or not title.strip():
        raise InvalidInput("title is required", field="title")
    for field, value in (("province", province), ("city", city)):
        if not value or not value.strip():
            raise InvalidInput(f"{field} is required", field=field)
    methodology = session.get(Methodology, methodology_id)
    if methodology is None or methodology.status != "active":
        raise InvalidInput(f"no active methodology {methodology_id}", field="methodology_id")
    if estimated_annual_kg is not None and estimated_annual_kg <= 0:
        raise InvalidInput("must be positive", field="estimated_annual_kg")
    if external_ref and session.scalar(select(Project.id).where(Project.external_ref == external_ref)):
        raise Conflict("a project with this external reference exists", field="external_ref",
                       code="duplicate")
    project = Project(kind=pkind, title=title.strip(), title_en=title_en, description=description,
                      methodology_id=methodology.id, owner_id=actor.holder_id, province=province,
                      city=city, district=district, estimated_annual_kg=estimated_annual_kg,
                      documents=_documents(documents), external_ref=external_ref or None,
                      status=ProjectStatus.DRAFT, suspended=False)
    session.add(project)
    session.flush()
    audit.record(session, actor, "project.created", "project", project.id,
                 {"kind": pkind.value, "title": project.title, "methodology": methodology.code,
                  "city": city, "external_ref": external_ref})
    return project


def _transition(session: Session, actor: Actor, project: Project, to: ProjectStatus,
                allowed_from: tuple[ProjectStatus, ...], reason: str | None = None) -> Project:
    if project.status not in allowed_from:
        raise Conflict(f"project is {project.status.value}; cannot become {to.value}",
                       field="status", code="wrong_status")
    before = project.status
    project.status = to
    project.status_reason = reason
    audit.record(session, actor, f"project.{to.value}", "project", project.id,
                 {"from": before.value, "to": to.value, "reason": reason})
    return project


def submit_project(session: Session, actor: Actor, project_id: int) -> Project:
    project = get_project(session, project_id, lock=True)
    _own(project, actor)
    actor.require_can_move_units()
    return _transition(session, actor, project, ProjectStatus.SUBMITTED, (ProjectStatus.DRAFT,))


def revise_project(session: Session, actor: Actor, project_id: int) -> Project:
    """Owner takes a rejected project back to draft to correct and resubmit it."""
    project = get_project(session, project_id, lock=True)
    _own(project, actor)
    return _transition(session, actor, project, ProjectStatus.DRAFT, (ProjectStatus.REJECTED,))


def validate_project(session: Session, actor: Actor, project_id: int, note: str | None = None) -> Project:
    """A third-party verifier validates a submitted project; it may not validate its own."""
    actor.require_kind(HolderKind.VERIFIER)
    project = get_project(session, project_id, lock=True)
    if project.owner_id == actor.holder_id:
        raise Forbidden("a verifier cannot validate its own project", code="conflict_of_interest")
    _transition(session, actor, project, ProjectStatus.VALIDATED, (ProjectStatus.SUBMITTED,), note)
    project.validated_by_id = actor.holder_id
    return project


def register_project(session: Session, actor: Actor, project_id: int) -> Project:
    actor.require_kind(HolderKind.OPERATOR)
    project = get_project(session, project_id, lock=True)
    return _transition(session, actor, project, ProjectStatus.REGISTERED, (ProjectStatus.VALIDATED,))


def reject_project(session: Session, actor: Actor, project_id: int, reasons: list[str] | str) -> Project:
    """A verifier rejects a submitted project, or the operator a submitted or validated one."""
    actor.require_kind(HolderKind.VERIFIER, HolderKind.OPERATOR)
    text = _reasons(reasons)
    project = get_project(session, project_id, lock=True)
    allowed = ((ProjectStatus.SUBMITTED, ProjectStatus.VALIDATED) if actor.is_operator
               else (ProjectStatus.SUBMITTED,))
    return _transition(session, actor, project, ProjectStatus.REJECTED, allowed, text)


def _reasons(reasons: list[str] | str) -> str:
    items = [reasons] if isinstance(reasons, str) else list(reasons or [])
    items = [r.strip() for r in items if isinstance(r, str) and r.strip()]
    if not items:
        raise InvalidInput("at least one reason is required", field="reasons")
    return "; ".join(items)


def set_project_suspension(session: Session, actor: Actor, project_id: int, suspended: bool,
                           reason: str) -> Project:
    """Operator only. A suspended project's units cannot move and it cannot be issued."""
    actor.require_kind(HolderKind.OPERATOR)
    if not reason or not reason.strip():
        raise InvalidInput("a reason is required", field="reason")
    project = get_project(session, project_id, lock=True)
    if project.suspended == suspended:
        raise Conflict("project is already " + ("suspended" if suspended else "active"),
                       field="project_id", code="no_change")
    project.suspended = suspended
    project.suspension_reason = reason.strip() if suspended else None
    audit.record(session, actor, "project.suspended" if suspended else "project.reinstated", "project",
                 project.id, {"reason": reason.strip()})
    return project


def submit_report(session: Session, actor: Actor, project_id: int, *, period_start: dt.date,
                  period_end: dt.date, claimed_kg: int, external_ref: str | None = None,
                  documents: Any = None) -> MonitoringReport:
    """The owner reports a monitoring period of a registered project. Periods of one project never
    overlap (rejected reports excepted), so nothing is claimed twice."""
    project = get_project(session, project_id, lock=True)
    _own(project, actor)
    actor.require_can_move_units()
    if project.status is not ProjectStatus.REGISTERED:
        raise Conflict("monitoring reports need a registered project", field="project_id",
                       code="wrong_status")
    if not isinstance(claimed_kg, int) or isinstance(claimed_kg, bool) or claimed_kg <= 0:
        raise InvalidInput("claimed_kg must be a positive integer (kg)", field="claimed_kg")
    if period_end < period_start:
        raise InvalidInput("period_end is before period_start", field="period_end")
    if period_end > utcnow().date():
        raise InvalidInput("a period cannot end in the future", field="period_end")
    overlap = session.scalar(select(MonitoringReport.id).where(
        MonitoringReport.project_id == project.id,
        MonitoringReport.status != ReportStatus.REJECTED,
        MonitoringReport.period_start <= period_end,
        MonitoringReport.period_end >= period_start))
    if overlap:
        raise Conflict(f"the period overlaps monitoring report {overlap}", field="period_start",
                       code="overlapping_period")
    if external_ref and session.scalar(select(MonitoringReport.id).where(
            MonitoringReport.external_ref == external_ref)):
        raise Conflict("a report with this external reference exists", field="external_ref",
                       code="duplicate")
    report = MonitoringReport(project_id=project.id, period_start=period_start, period_end=period_end,
                              claimed_kg=claimed_kg, status=ReportStatus.SUBMITTED,
                              external_ref=external_ref or None, documents=_documents(documents))
    session.add(report)
    session.flush()
    audit.record(session, actor, "report.submitted", "monitoring_report", report.id,
                 {"project_id": project.id, "period": [period_start.isoformat(), period_end.isoformat()],
                  "claimed_kg": claimed_kg, "external_ref": external_ref})
    return report


def get_report(session: Session, report_id: int, *, lock: bool = False) -> MonitoringReport:
    report = session.get(MonitoringReport, report_id, with_for_update={"key_share": True} if lock else None)
    if report is None:
        raise NotFound(f"no monitoring report {report_id}", field="report_id")
    return report


def verify_report(session: Session, actor: Actor, report_id: int, *, approved_kg: int,
                  note: str | None = None) -> MonitoringReport:
    """A verifier approves a quantity, at most what was claimed."""
    actor.require_kind(HolderKind.VERIFIER)
    report = get_report(session, report_id, lock=True)
    if report.project.owner_id == actor.holder_id:
        raise Forbidden("a verifier cannot verify its own project", code="conflict_of_interest")
    if report.status is not ReportStatus.SUBMITTED:
        raise Conflict(f"report is {report.status.value}", field="status", code="wrong_status")
    if not isinstance(approved_kg, int) or isinstance(approved_kg, bool) or approved_kg <= 0:
        raise InvalidInput("approved_kg must be a positive integer (kg)", field="approved_kg")
    if approved_kg > report.claimed_kg:
        raise InvalidInput(f"approved_kg exceeds the claimed {report.claimed_kg} kg", field="approved_kg",
                           code="exceeds_claim")
    report.status = ReportStatus.VERIFIED
    report.approved_kg = approved_kg
    report.verifier_id = actor.holder_id
    report.verified_at = utcnow()
    report.status_reason = note
    audit.record(session, actor, "report.verified", "monitoring_report", report.id,
                 {"claimed_kg": report.claimed_kg, "approved_kg": approved_kg, "note": note})
    return report


def reject_report(session: Session, actor: Actor, report_id: int, reasons: list[str] | str) -> MonitoringReport:
    actor.require_kind(HolderKind.VERIFIER, HolderKind.OPERATOR)
    text = _reasons(reasons)
    report = get_report(session, report_id, lock=True)
    allowed = (ReportStatus.SUBMITTED, ReportStatus.VERIFIED) if actor.is_operator else (ReportStatus.SUBMITTED,)
    if report.status not in allowed:
        raise Conflict(f"report is {report.status.value}", field="status", code="wrong_status")
    report.status = ReportStatus.REJECTED
    report.status_reason = text
    audit.record(session, actor, "report.rejected", "monitoring_report", report.id, {"reasons": text})
    return report
