"""API v1 of offsetting: footprints, fixed-price listings, offset orders and neutrality statements."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from exchange import footprints
from registry.actors import Actor
from registry.errors import InvalidInput
from web.api import offset_schemas as o
from web.api.blueprint import bp
from web.api.core import endpoint

# ---- footprints -------------------------------------------------------------------------------


@endpoint(bp, "/footprints", "POST", summary="Calculate and keep a footprint (event, organisation, personal)",
          tags=("offsets",), auth=True, body=o.FootprintCreate, response=o.FootprintOut, status=201)
def create_footprint(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    try:
        fp = footprints.create_footprint(session, actor, body["kind"], body["inputs"],
                                         reductions=body.get("reductions"))
    except InvalidInput as e:
        field = e.field if e.field in ("kind", "reductions") else f"inputs.{e.field}" if e.field else "inputs"
        raise InvalidInput(e.message, field=field, code=e.code) from None
    return footprints.as_dict(fp)


@endpoint(bp, "/footprints", summary="My footprints, newest first", tags=("offsets",), auth=True,
          response=o.FootprintOut, many=True)
def list_footprints(session: Session, actor: Actor) -> Any:
    return [footprints.as_dict(fp) for fp in footprints.footprints_of(session, actor.holder_id)]


@endpoint(bp, "/footprints/<int:footprint_id>", summary="One of my footprints, line by line", tags=("offsets",),
          auth=True, response=o.FootprintOut)
def get_footprint(session: Session, actor: Actor, footprint_id: int) -> Any:
    return footprints.as_dict(footprints.get_footprint(session, actor, footprint_id))


@endpoint(bp, "/footprints/<int:footprint_id>/reductions", "POST",
          summary="Record the reductions made before offsetting (organiser's notes)", tags=("offsets",),
          auth=True, body=o.ReductionsIn, response=o.FootprintOut)
def set_reductions(session: Session, actor: Actor, footprint_id: int, *, body: dict[str, Any]) -> Any:
    return footprints.as_dict(footprints.set_reductions(session, actor, footprint_id, body["reductions"]))
