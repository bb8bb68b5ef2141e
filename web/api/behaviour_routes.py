"""API v1 of public behaviour: partners, members, signed batches, the points ledger."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, request
from marshmallow import Schema, fields, validate
from sqlalchemy.orm import Session, sessionmaker

from registry import behaviour, partners, points
from registry.actors import Actor
from registry.behaviour_io import json_rows
from registry.behaviour_rules import BEHAVIOUR_TYPES, Rules
from registry.errors import Forbidden, NotFound, RegistryError, Unauthenticated
from registry.models import HolderKind
from web.api.blueprint import bp
from web.api.core import OPERATIONS, Operation, endpoint, error_response
from web.extensions import db

_SPOOL_IN_MEMORY = 1 << 20   # bodies above 1 MiB are spooled to a temporary file


def rules() -> Rules:
    return Rules.from_mapping(current_app.config.get("BEHAVIOUR_RULES"))


class PartnerCreate(Schema):
    code = fields.String(required=True, validate=validate.Length(min=2, max=40))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    kind = fields.String(required=True, validate=validate.OneOf(partners.PARTNER_KINDS))
    programme_id = fields.Integer(strict=True, required=True)
    region = fields.String(required=True, validate=validate.Length(min=2, max=32))
    behaviour_types = fields.List(fields.String(validate=validate.OneOf(list(BEHAVIOUR_TYPES))),
                                  required=True, validate=validate.Length(min=1))


class PartnerOut(Schema):
    id = fields.Integer()
    code = fields.String()
    name = fields.String()
    kind = fields.String()
    programme_id = fields.Integer()
    region = fields.String()
    behaviour_types = fields.List(fields.String())
    secret = fields.String(metadata={"description": "the HMAC secret, shown only in this response"})
    active = fields.Boolean()


class PartnerDeactivate(Schema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=1000))


class PartnerReactivate(Schema):
    rotate_secret = fields.Boolean(load_default=False, metadata={
        "description": "replace the HMAC secret too (the new one is shown only in this response)"})
    reason = fields.String(validate=validate.Length(max=1000))


class PartnersQuery(Schema):
    programme_id = fields.Integer()


class MemberCreate(Schema):
    programme_id = fields.Integer(strict=True, required=True)
    user_id = fields.Integer(strict=True, required=True)
    city = fields.String(required=True, validate=validate.Length(min=1, max=64))
    district = fields.String(validate=validate.Length(max=64))
    community = fields.String(validate=validate.Length(max=100))
    external_ids = fields.Dict(keys=fields.String(), values=fields.String(),
                               metadata={"description": "partner code → the partner's id of this user"})


class MemberOut(Schema):
    id = fields.Integer()
    programme_id = fields.Integer()
    user_id = fields.Integer()
    city = fields.String()
    district = fields.String(allow_none=True)
    community = fields.String(allow_none=True)
    reduction_g = fields.Integer()


class PointsQuery(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    before_id = fields.Integer()


class SummaryQuery(Schema):
    period = fields.String(load_default="month", validate=validate.OneOf(["month", "day"]))


class AdjustCreate(Schema):
    user_id = fields.Integer(strict=True, required=True)
    points = fields.Integer(strict=True, required=True)
    reason = fields.String(required=True, validate=validate.Length(min=1, max=1000))


class BatchIn(Schema):
    rows = fields.List(fields.Dict(), required=True, metadata={"description": (
        "rows: event_id, user (the partner's user id) or user_id, type (a behaviour type the partner "
        "may report), started_at, ended_at (ISO 8601), mode, distance_km, category, weight_kg, "
        "activity (extra calculator inputs)")})


@endpoint(bp, "/behaviour/partners", "POST", summary="Operator registers a behaviour partner (secret shown once)",
          tags=("operator",), auth=True, body=PartnerCreate, response=PartnerOut, status=201)
def create_partner(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    partner, secret = partners.register_partner(session, actor, **body)
    return {"id": partner.id, "code": partner.code, "name": partner.name, "kind": partner.kind,
            "programme_id": partner.programme_id, "region": partner.region,
            "behaviour_types": sorted(body["behaviour_types"]), "secret": secret, "active": partner.active}


@endpoint(bp, "/behaviour/partners/<int:partner_id>/rotate-secret", "POST",
          summary="Operator replaces a partner's HMAC secret (shown once)", tags=("operator",), auth=True)
def rotate_partner_secret(session: Session, actor: Actor, partner_id: int) -> Any:
    return {"partner_id": partner_id, "secret": partners.rotate_secret(session, actor, partner_id)}


def _partner_out(session: Session, p: partners.Partner, secret: str | None = None) -> dict[str, Any]:
    out = {"id": p.id, "code": p.code, "name": p.name, "kind": p.kind, "programme_id": p.programme_id,
           "region": p.region, "behaviour_types": sorted(partners.allowed_types(session, p.id)), "active": p.active}
    return out | ({"secret": secret} if secret else {})


@endpoint(bp, "/behaviour/partners", summary="Operator lists the behaviour partners (never their secrets)",
          tags=("operator",), auth=True, query=PartnersQuery, response=PartnerOut, many=True)
def list_partners(session: Session, actor: Actor, *, query: dict[str, Any]) -> Any:
    actor.require_kind(HolderKind.OPERATOR)
    return [_partner_out(session, p) for p in partners.list_partners(session, query.get("programme_id"))]


@endpoint(bp, "/behaviour/partners/<int:partner_id>/deactivate", "POST",
          summary="Operator deactivates a partner: its batches are refused (403 partner_inactive)",
          tags=("operator",), auth=True, body=PartnerDeactivate, response=PartnerOut)
def deactivate_partner(session: Session, actor: Actor, partner_id: int, *, body: dict[str, Any]) -> Any:
    return _partner_out(session, partners.deactivate_partner(session, actor, partner_id, body["reason"]))


@endpoint(bp, "/behaviour/partners/<int:partner_id>/reactivate", "POST",
          summary="Operator reactivates a partner, optionally with a new secret (shown once)",
          tags=("operator",), auth=True, body=PartnerReactivate, response=PartnerOut)
def reactivate_partner(session: Session, actor: Actor, partner_id: int, *, body: dict[str, Any]) -> Any:
    p, secret = partners.reactivate_partner(session, actor, partner_id, rotate=body["rotate_secret"],
                                            reason=body.get("reason"))
    return _partner_out(session, p, secret)


@endpoint(bp, "/behaviour/members", "POST", summary="Enrol a resident in a programme",
          tags=("behaviour",), auth=True, body=MemberCreate, response=MemberOut, status=201)
def create_member(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    return partners.enrol_member(session, actor, **body)


@endpoint(bp, "/me/points", summary="My points: balance (the sum of the ledger) and entries, newest first",
          tags=("behaviour",), auth=True, query=PointsQuery)
def my_points(session: Session, actor: Actor, *, query: dict[str, Any]) -> Any:
    assert actor.user_id is not None
    items = points.entries(session, actor.user_id, query["limit"], query.get("before_id"))
    return {"user_id": actor.user_id, "balance": points.balance(session, actor.user_id),
            "entries": [{"id": e.id, "kind": e.kind, "points": e.points,
                         "expires_on": e.expires_on.isoformat() if e.expires_on else None,
                         "ref": e.ref, "reason": e.reason, "batch_id": e.batch_id,
                         "created_at": e.created_at.isoformat() + "Z"} for e in items]}


@endpoint(bp, "/me/behaviour/summary", summary="My accepted reductions by behaviour type over time",
          tags=("behaviour",), auth=True, query=SummaryQuery)
def my_summary(session: Session, actor: Actor, *, query: dict[str, Any]) -> Any:
    assert actor.user_id is not None
    return behaviour.personal_summary(session, actor.user_id, query["period"])


@endpoint(bp, "/points/adjustments", "POST", summary="Operator adjusts a user's points, with a reason",
          tags=("operator",), auth=True, body=AdjustCreate, status=201)
def adjust(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    e = points.adjust_points(session, actor, body["user_id"], body["points"], body["reason"], rules())
    return {"id": e.id, "user_id": e.user_id, "kind": e.kind, "points": e.points,
            "balance": points.balance(session, e.user_id)}


def _spool(check: partners.SignatureCheck, max_bytes: int) -> tuple[Any, str]:
    """Copy the request body into a spooled file while computing its MAC and SHA-256; a body longer
    than `max_bytes` (sent without a Content-Length) is refused as soon as it passes the limit."""
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
    digest = hashlib.sha256()
    size = 0
    while piece := request.stream.read(64 * 1024):
        size += len(piece)
        if size > max_bytes:
            spool.close()
            raise BatchTooLarge("bytes", max_bytes)
        check.update(piece)
        digest.update(piece)
        spool.write(piece)
    check.verify()
    spool.seek(0)
    return spool, behaviour.body_ref(digest)


# The signed batch API's limits (the CSV command streams any size). Config keys, environment too.
MAX_BATCH_ROWS = 50_000
MAX_BATCH_BYTES = 32 * 1024 * 1024


class BatchTooLarge(Exception):
    def __init__(self, unit: str, limit: int) -> None:
        self.unit, self.limit = unit, limit

    def response(self) -> Response:
        key = "BEHAVIOUR_MAX_BATCH_ROWS" if self.unit == "rows" else "BEHAVIOUR_MAX_BATCH_BYTES"
        field = "rows" if self.unit == "rows" else "_body"
        message = (f"a batch has at most {self.limit:,} rows: split it, or import a CSV file" if self.unit == "rows"
                   else f"a batch body has at most {self.limit:,} bytes: split it, or import a CSV file")
        resp = error_response(413, "batch_too_large", message, field)
        body = resp.get_json()
        body["error"]["limit"] = {"name": key, "unit": self.unit, "max": self.limit}
        resp.set_data(json.dumps(body, ensure_ascii=False))
        return resp


def _limits() -> tuple[int, int]:
    cfg = current_app.config
    return (int(cfg.get("BEHAVIOUR_MAX_BATCH_ROWS") or MAX_BATCH_ROWS),
            int(cfg.get("BEHAVIOUR_MAX_BATCH_BYTES") or MAX_BATCH_BYTES))


def _answer(factory: sessionmaker[Session], result: behaviour.BatchResult) -> Iterator[str]:
    yield '{"batch": ' + json.dumps(result.as_dict(), ensure_ascii=False) + ', "rows": ['
    with factory() as session:
        for i, o in enumerate(behaviour.outcomes(session, result.batch_id)):
            yield ("," if i else "") + json.dumps(
                {"line": o.line, "event_id": o.event_id, "status": o.status, "reason": o.reason,
                 "detail": o.detail, "reduction_g": o.reduction_g, "points": o.points}, ensure_ascii=False)
    yield "]}"


def post_batch() -> Response:
    """A partner's signed batch. Headers: `X-Tanhui-Partner: <code>`, `X-Tanhui-Signature:
    t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>` (±300 s). The body streams to a
    spool file while its MAC is checked, is then read once to check its shape and once to import it,
    chunk by chunk. The answer (streamed) has the batch summary and every row's outcome in order; the
    same body again (its SHA-256 is the batch reference) answers the stored outcomes, changing nothing.
    A deactivated partner is refused (403 `partner_inactive`) before its body is read; a body over
    BEHAVIOUR_MAX_BATCH_BYTES (by its Content-Length at once, else when the stream passes it) or
    with more than BEHAVIOUR_MAX_BATCH_ROWS rows answers 413 `batch_too_large` naming the limit,
    and nothing is recorded."""
    factory = sessionmaker(bind=db.engine)
    max_rows, max_bytes = _limits()
    try:
        with factory() as session:
            try:
                partner = partners.partner_by_code(session, request.headers.get("X-Tanhui-Partner", ""))
            except NotFound:
                raise Unauthenticated("unknown partner", field="X-Tanhui-Partner", code="bad_signature") from None
            code, secret, active = partner.code, partner.secret, partner.active
        if not active:
            raise Forbidden(f"partner {code} is deactivated: its batches are refused", field="X-Tanhui-Partner",
                            code="partner_inactive")
        if request.content_length is not None and request.content_length > max_bytes:
            raise BatchTooLarge("bytes", max_bytes)
        check = partners.SignatureCheck(secret, request.headers.get("X-Tanhui-Signature"), time.time())
        spool, ref = _spool(check, max_bytes)
        with spool:
            for n, _ in enumerate(json_rows(spool), start=1):
                if n > max_rows:
                    raise BatchTooLarge("rows", max_rows)
            spool.seek(0)
            result = behaviour.import_rows(factory, code, ref, "api", json_rows(spool), rules=rules())
    except BatchTooLarge as err:
        return err.response()
    except RegistryError as err:
        return error_response(err.status, err.code, err.message, err.field)
    return Response(_answer(factory, result), status=200 if result.replayed else 201,
                    mimetype="application/json")


bp.add_url_rule("/behaviour/batches", endpoint="post_behaviour_batch", view_func=post_batch, methods=["POST"])
OPERATIONS.append(Operation(
    "/behaviour/batches", "POST", "post_behaviour_batch",
    "Partner pushes a signed batch (HMAC headers X-Tanhui-Partner, X-Tanhui-Signature); per-row outcomes",
    ("behaviour",), False, None, BatchIn, None, 201, False, False,
    errors=("401", "403", "413")))   # bad signature, partner inactive, batch over the limits
