"""Public HTML pages: the landing page, the API docs, a retirement's permalink."""

from __future__ import annotations

from flask import Blueprint, Response, abort, render_template
from sqlalchemy import func, select

from registry.errors import NotFound
from registry.models import Batch, Project, ProjectStatus, Retirement
from registry.queries import retirement_by_certificate
from web.extensions import db

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    s = db.session
    stats = {
        "projects": s.scalar(select(func.count()).select_from(Project)
                             .where(Project.status == ProjectStatus.REGISTERED)) or 0,
        "issued_kg": s.scalar(select(func.coalesce(func.sum(Batch.quantity_kg), 0))) or 0,
        "retired_kg": s.scalar(select(func.coalesce(func.sum(Retirement.quantity_kg), 0))) or 0,
    }
    recent = s.scalars(select(Retirement).order_by(Retirement.id.desc()).limit(10)).all()
    projects = s.scalars(select(Project).where(Project.status == ProjectStatus.REGISTERED)
                         .order_by(Project.id).limit(20)).all()
    return render_template("index.html", stats=stats, recent=recent, projects=projects)


@bp.get("/api/docs")
def api_docs() -> str:
    from web.api.openapi import build_spec

    return render_template("api_docs.html", spec=build_spec())


@bp.get("/retirements/<number>")
def retirement_page(number: str) -> str:
    try:
        r, blocks = retirement_by_certificate(db.session, number)
    except NotFound:
        abort(404)
    return render_template("retirement.html", r=r, blocks=blocks)


@bp.get("/.well-known/tanhui-registry-key.pem")
def registry_public_key() -> Response:
    """The public key that verifies every certificate (registry.certificates.PUBLIC_KEY_PATH)."""
    from web.signing import signing_key

    key = signing_key()
    return Response(key.public_key_pem(), mimetype="application/x-pem-file",
                    headers={"X-Key-Id": key.key_id, "Cache-Control": "public, max-age=3600",
                             "Access-Control-Allow-Origin": "*"})
