"""Public HTML page of an event's carbon-neutrality statement (on the pages blueprint)."""

from __future__ import annotations

from flask import abort, render_template

from exchange import neutrality
from registry.errors import NotFound
from web.extensions import db
from web.pages import bp


@bp.get("/footprints/<int:footprint_id>/neutrality")
def neutrality_page(footprint_id: int) -> str:
    try:
        s = neutrality.statement(db.session, footprint_id)
    except NotFound:
        abort(404)
    finally:
        db.session.rollback()
    return render_template("neutrality.html", s=s)
