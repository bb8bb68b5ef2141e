"""API v1 operations. Each one parses, calls one use case and shapes the answer; nothing more."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Response, current_app, g, jsonify
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import certificates, holders, issuance, methodologies, projects, queries, units
from registry.actors import Actor
from registry.certificate_pdf import render_pdf
from registry.errors import NotFound
from registry.models import (
    ApiToken,
    Holder,
    Methodology,
    MonitoringReport,
    Project,
    ProjectStatus,
    Transfer,
)
from web.api import presenters
from web.api import schemas as s
from web.api.blueprint import bp
from web.api.core import endpoint, paginate
from web.signing import signing_key

# ---- public -----------------------------------------------------------------------------------


@endpoint(bp, "/methodologies", summary="List methodologies", tags=("public",),
          response=s.MethodologyOut, many=True)
def list_methodologies(session: Session, actor: Actor | None) -> Any:
    return session.scalars(select(Methodology).order_by(Methodology.code, Methodology.version)).all()


@endpoint(bp, "/projects", summary="List projects and programmes (drafts excluded)", tags=("public",),
          query=s.ProjectsQuery, response=s.ProjectOut, paginated=True)
def list_projects(session: Session, actor: Actor | None, *, query: dict[str, Any]) -> Any:
    page, per_page = query.pop("page"), query.pop("per_page")
    items, total = paginate(session, queries.projects_query(**query), page, per_page)
    return items, total, page, per_page


def _visible_project(session: Session, actor: Actor | None, project_id: int) -> Project:
    project = projects.get_project(session, project_id)
    if project.status is ProjectStatus.DRAFT and not (
            actor and (actor.holder_id == project.owner_id or actor.is_operator)):
        raise NotFound(f"no project {project_id}", field="project_id")
    return project


@endpoint(bp, "/projects/<int:project_id>", summary="A project with its issuances and their supply",
          tags=("public",), response=s.ProjectDetailOut)
def get_project(session: Session, actor: Actor | None, project_id: int) -> Any:
    project = _visible_project(session, actor, project_id)
    project.issuances = queries.project_batches(session, project.id)  # type: ignore[attr-defined]
    return project


@endpoint(bp, "/projects/<int:project_id>/reports", summary="A project's monitoring reports",
          tags=("public",), response=s.ReportOut, many=True)
def list_reports(session: Session, actor: Actor | None, project_id: int) -> Any:
    project = _visible_project(session, actor, project_id)
    return session.scalars(select(MonitoringReport).where(MonitoringReport.project_id == project.id)
                           .order_by(MonitoringReport.period_start)).all()


@endpoint(bp, "/serials/<serial>", summary="Who holds a serial (or range) now, and its full history",
          tags=("public",), response=s.SerialOut)
def get_serial(session: Session, actor: Actor | None, serial: str) -> Any:
    return presenters.serial(session, queries.serial_history(session, serial))


@endpoint(bp, "/retirements", summary="The public retirement ledger", tags=("public",),
          query=s.RetirementsQuery, response=s.RetirementOut, paginated=True)
def list_retirements(session: Session, actor: Actor | None, *, query: dict[str, Any]) -> Any:
    page, per_page = query.pop("page"), query.pop("per_page")
    items, total = paginate(session, queries.retirements_query(**query), page, per_page)
    return [presenters.retirement(session, r) for r in items], total, page, per_page


@endpoint(bp, "/retirements/<number>", summary="A retirement by its certificate number",
          tags=("public",), response=s.RetirementOut)
def get_retirement(session: Session, actor: Actor | None, number: str) -> Any:
    r, blocks = queries.retirement_by_certificate(session, number)
    return presenters.retirement(session, r, blocks)


# ---- auth ---------------------------------------------------------------------------------------


@endpoint(bp, "/auth/login", "POST", summary="Exchange email and password for a bearer token",
          tags=("auth",), body=s.LoginRequest, response=s.LoginOut, status=201)
def login(session: Session, actor: Actor | None, *, body: dict[str, Any]) -> Any:
    hours = body.get("ttl_hours") or current_app.config["API_TOKEN_TTL_HOURS"]
    user, token = holders.login(session, body["email"], body["password"], dt.timedelta(hours=hours))
    return {"token": token, "user": user}


@endpoint(bp, "/auth/logout", "POST", summary="Revoke the token used for this request", tags=("auth",),
          auth=True, response=s.TokenOut)
def logout(session: Session, actor: Actor) -> Any:
    return holders.revoke_token(session, actor, g.token.id)


@endpoint(bp, "/auth/tokens", summary="My tokens (never their secret)", tags=("auth",), auth=True,
          response=s.TokenOut, many=True)
def list_tokens(session: Session, actor: Actor) -> Any:
    return session.scalars(select(ApiToken).where(ApiToken.user_id == actor.user_id)
                           .order_by(ApiToken.id)).all()


@endpoint(bp, "/auth/tokens/<int:token_id>/revoke", "POST", summary="Revoke a token", tags=("auth",),
          auth=True, response=s.TokenOut)
def revoke_token(session: Session, actor: Actor, token_id: int) -> Any:
    return holders.revoke_token(session, actor, token_id)


@endpoint(bp, "/me", summary="The authenticated user and holder", tags=("auth",), auth=True,
          response=s.UserOut)
def me(session: Session, actor: Actor) -> Any:
    return g.user


# ---- holdings and unit movements --------------------------------------------------------------


@endpoint(bp, "/holdings", summary="My units by project and vintage (kg)", tags=("units",), auth=True,
          response=s.HoldingOut, many=True)
def my_holdings(session: Session, actor: Actor) -> Any:
    return queries.holdings(session, actor.holder_id)


@endpoint(bp, "/blocks", summary="My serial blocks", tags=("units",), auth=True, query=s.PageQuery,
          response=s.BlockOut, paginated=True)
def my_blocks(session: Session, actor: Actor, *, query: dict[str, Any]) -> Any:
    from registry.holders import account_of
    from registry.models import Block
    acc = account_of(session, actor.holder_id)
    stmt = select(Block).where(Block.account_id == acc.id).order_by(Block.vintage, Block.batch_id, Block.start)
    items, total = paginate(session, stmt, query["page"], query["per_page"])
    return items, total, query["page"], query["per_page"]


def _selection(body: dict[str, Any]) -> units.Selection:
    return units.Selection(quantity_kg=body.get("quantity_kg"), serials=body.get("serials"),
                           project_id=body.get("project_id"), vintage=body.get("vintage"))


@endpoint(bp, "/transfers", "POST", summary="Transfer units to another holding account", tags=("units",),
          auth=True, body=s.TransferCreate, response=s.TransferOut, status=201)
def create_transfer(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    t = units.transfer(session, actor, to_account=body["to_account"], selection=_selection(body),
                       memo=body.get("memo"))
    session.flush()
    return presenters.transfer(session, t)


def _my_transfers_stmt(session: Session, actor: Actor) -> Any:
    from registry.models import Account
    mine = select(Account.id).where(Account.holder_id == actor.holder_id)
    return select(Transfer).where(Transfer.from_account_id.in_(mine) | Transfer.to_account_id.in_(mine))


@endpoint(bp, "/transfers", summary="Transfers from or to my accounts", tags=("units",), auth=True,
          query=s.PageQuery, response=s.TransferOut, paginated=True)
def list_transfers(session: Session, actor: Actor, *, query: dict[str, Any]) -> Any:
    stmt = _my_transfers_stmt(session, actor).order_by(Transfer.id.desc())
    items, total = paginate(session, stmt, query["page"], query["per_page"])
    return [presenters.transfer(session, t) for t in items], total, query["page"], query["per_page"]


@endpoint(bp, "/transfers/<int:transfer_id>", summary="One of my transfers", tags=("units",), auth=True,
          response=s.TransferOut)
def get_transfer(session: Session, actor: Actor, transfer_id: int) -> Any:
    t = session.scalar(_my_transfers_stmt(session, actor).where(Transfer.id == transfer_id))
    if t is None:
        raise NotFound(f"no transfer {transfer_id}", field="transfer_id")
    return presenters.transfer(session, t)


@endpoint(bp, "/me/retirements", summary="Retirements made by my holder", tags=("units",), auth=True,
          query=s.PageQuery, response=s.RetirementOut, paginated=True)
def my_retirements(session: Session, actor: Actor, *, query: dict[str, Any]) -> Any:
    stmt = queries.retirements_query(holder_id=actor.holder_id)
    items, total = paginate(session, stmt, query["page"], query["per_page"])
    return [presenters.retirement(session, r) for r in items], total, query["page"], query["per_page"]


@endpoint(bp, "/retirements", "POST", summary="Retire units for a beneficiary (final)", tags=("units",),
          auth=True, body=s.RetirementCreate, response=s.RetirementOut, status=201)
def create_retirement(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    r = units.retire(session, actor, selection=_selection(body), beneficiary=body["beneficiary"],
                     jurisdiction=body["jurisdiction"], purpose=body["purpose"],
                     footprint_ref=body.get("footprint_ref"), message=body.get("message"))
    session.flush()
    return presenters.retirement(session, r)


@endpoint(bp, "/cancellations", "POST", summary="Cancel units (operator, with a reason)", tags=("operator",),
          auth=True, body=s.CancellationCreate, response=s.CancellationOut, status=201)
def create_cancellation(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    c = units.cancel(session, actor, from_account=body["from_account"], selection=_selection(body),
                     reason=body["reason"])
    session.flush()
    return presenters.cancellation(session, c)


# ---- project lifecycle ------------------------------------------------------------------------


@endpoint(bp, "/projects", "POST", summary="Create a draft project or programme", tags=("projects",),
          auth=True, body=s.ProjectCreate, response=s.ProjectOut, status=201)
def create_project(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    return projects.create_project(session, actor, **body)


def _lifecycle(name: str, fn: Any, summary: str, schema: Any = None, arg: str | None = None) -> None:
    def op(session: Session, actor: Actor, project_id: int, **kw: Any) -> Any:
        if arg is None:
            return fn(session, actor, project_id)
        return fn(session, actor, project_id, kw["body"].get(arg) if arg != "reasons" else kw["body"]["reasons"])
    op.__name__ = f"project_{name}"
    endpoint(bp, f"/projects/<int:project_id>/{name}", "POST", summary=summary, tags=("projects",),
             auth=True, body=schema, response=s.ProjectOut)(op)


_lifecycle("submit", projects.submit_project, "Owner submits a draft for validation")
_lifecycle("revise", projects.revise_project, "Owner takes a rejected project back to draft")
_lifecycle("validate", projects.validate_project, "A verifier validates a submitted project",
           s.NoteRequest, "note")
_lifecycle("register", projects.register_project, "The operator registers a validated project")
_lifecycle("reject", projects.reject_project, "A verifier or the operator rejects, with reasons",
           s.ReasonsRequest, "reasons")


@endpoint(bp, "/projects/<int:project_id>/suspend", "POST", summary="Operator suspends a project",
          tags=("operator",), auth=True, body=s.ReasonRequest, response=s.ProjectOut)
def suspend_project(session: Session, actor: Actor, project_id: int, *, body: dict[str, Any]) -> Any:
    return projects.set_project_suspension(session, actor, project_id, True, body["reason"])


@endpoint(bp, "/projects/<int:project_id>/reinstate", "POST", summary="Operator lifts a project's suspension",
          tags=("operator",), auth=True, body=s.ReasonRequest, response=s.ProjectOut)
def reinstate_project(session: Session, actor: Actor, project_id: int, *, body: dict[str, Any]) -> Any:
    return projects.set_project_suspension(session, actor, project_id, False, body["reason"])


@endpoint(bp, "/projects/<int:project_id>/reports", "POST", summary="Owner submits a monitoring report",
          tags=("projects",), auth=True, body=s.ReportCreate, response=s.ReportOut, status=201)
def create_report(session: Session, actor: Actor, project_id: int, *, body: dict[str, Any]) -> Any:
    return projects.submit_report(session, actor, project_id, **body)


@endpoint(bp, "/reports/<int:report_id>/verify", "POST", summary="A verifier approves a quantity",
          tags=("projects",), auth=True, body=s.VerifyRequest, response=s.ReportOut)
def verify_report(session: Session, actor: Actor, report_id: int, *, body: dict[str, Any]) -> Any:
    return projects.verify_report(session, actor, report_id, approved_kg=body["approved_kg"],
                                  note=body.get("note"))


@endpoint(bp, "/reports/<int:report_id>/reject", "POST", summary="A verifier rejects a report, with reasons",
          tags=("projects",), auth=True, body=s.ReasonsRequest, response=s.ReportOut)
def reject_report(session: Session, actor: Actor, report_id: int, *, body: dict[str, Any]) -> Any:
    return projects.reject_report(session, actor, report_id, body["reasons"])


@endpoint(bp, "/reports/<int:report_id>/issue", "POST", summary="The operator issues a verified report",
          tags=("operator",), auth=True, body=s.IssueRequest, response=s.IssuanceOut, status=201)
def issue_report(session: Session, actor: Actor, report_id: int, *, body: dict[str, Any]) -> Any:
    return issuance.issue(session, actor, report_id, external_ref=body.get("external_ref"))


# ---- holders, users, methodologies (operator) ------------------------------------------------


@endpoint(bp, "/holders", "POST", summary="Operator opens a holder with its accounts", tags=("operator",),
          auth=True, body=s.HolderCreate, response=s.HolderOut, status=201)
def create_holder(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    return holders.create_holder(session, actor, **body)


@endpoint(bp, "/holders/<int:holder_id>", summary="A holder (itself, or any for the operator)",
          tags=("operator",), auth=True, response=s.HolderOut)
def get_holder(session: Session, actor: Actor, holder_id: int) -> Any:
    holder = session.get(Holder, holder_id)
    if holder is None or (holder.id != actor.holder_id and not actor.is_operator):
        raise NotFound(f"no holder {holder_id}", field="holder_id")
    return holder


@endpoint(bp, "/holders/<int:holder_id>/users", "POST", summary="Add a user to a holder",
          tags=("operator",), auth=True, body=s.UserCreate, response=s.UserOut, status=201)
def create_user(session: Session, actor: Actor, holder_id: int, *, body: dict[str, Any]) -> Any:
    return holders.create_user(session, holder_id=holder_id, actor=actor, **body)


@endpoint(bp, "/holders/<int:holder_id>/suspend", "POST", summary="Operator suspends a holder",
          tags=("operator",), auth=True, body=s.ReasonRequest, response=s.HolderOut)
def suspend_holder(session: Session, actor: Actor, holder_id: int, *, body: dict[str, Any]) -> Any:
    return holders.set_holder_suspension(session, actor, holder_id, True, body["reason"])


@endpoint(bp, "/holders/<int:holder_id>/reinstate", "POST", summary="Operator lifts a holder's suspension",
          tags=("operator",), auth=True, body=s.ReasonRequest, response=s.HolderOut)
def reinstate_holder(session: Session, actor: Actor, holder_id: int, *, body: dict[str, Any]) -> Any:
    return holders.set_holder_suspension(session, actor, holder_id, False, body["reason"])


@endpoint(bp, "/methodologies", "POST", summary="Operator adds a methodology version", tags=("operator",),
          auth=True, body=s.MethodologyCreate, response=s.MethodologyOut, status=201)
def create_methodology(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    return methodologies.create_methodology(session, actor, **body)


# ---- certificates -------------------------------------------------------------------------------


def _certificate(session: Session, number: str) -> dict[str, Any]:
    r, _ = queries.retirement_by_certificate(session, number)
    return certificates.issue_document(session, r, signing_key(), current_app.config["PUBLIC_BASE_URL"])


@endpoint(bp, "/retirements/<number>/certificate.json", tags=("public",),
          summary="A retirement's signed certificate (Ed25519 over the canonical JSON; verify offline)")
def get_certificate_json(session: Session, actor: Actor | None, number: str) -> Any:
    body = certificates.document_bytes(_certificate(session, number))
    return Response(body, mimetype="application/json",
                    headers={"Content-Disposition": f'inline; filename="{number}.json"',
                             "Cache-Control": "public, max-age=300"})


@endpoint(bp, "/retirements/<number>/certificate.pdf", tags=("public",),
          summary="A retirement's certificate as a bilingual A4 PDF with a QR code to its page")
def get_certificate_pdf(session: Session, actor: Actor | None, number: str) -> Any:
    data = render_pdf(_certificate(session, number), current_app.config.get("CERTIFICATE_FONT_FILE"))
    return Response(data, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{number}.pdf"',
                             "Cache-Control": "public, max-age=300"})


@bp.get("/openapi.json")
def openapi_json() -> Any:
    from web.api.openapi import build_spec
    return jsonify(build_spec())


