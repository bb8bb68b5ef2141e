"""The thin layer between HTTP and the use cases.

`endpoint(...)` wraps a view: it authenticates the bearer token, loads the query string and the JSON
body through marshmallow schemas, runs the use case in one transaction together with the request's
Idempotency-Key record, dumps the result through the response schema, and registers the operation
for the OpenAPI document. Domain errors become 4xx JSON naming the field.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from marshmallow import Schema, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry.actors import Actor
from registry.errors import InvalidInput, RegistryError, Unauthenticated
from registry.holders import authenticate
from registry.models import IdempotencyRecord
from web.extensions import db


@dataclass
class Operation:
    rule: str
    method: str
    name: str
    summary: str
    tags: tuple[str, ...]
    auth: bool
    query: type[Schema] | None
    body: type[Schema] | None
    response: type[Schema] | None
    status: int
    many: bool
    paginated: bool
    path_params: dict[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()   # error statuses beyond the usual ones (the OpenAPI document lists them)


OPERATIONS: list[Operation] = []


class AfterCommit:
    """Returned by a view whose answer is only known after its transaction committed (an order
    waits for the sequencer). The idempotency record is written with the effect, marked in
    progress, and completed with the final answer."""

    def __init__(self, produce: Callable[[], Any]) -> None:
        self.produce = produce


def error_response(status: int, code: str, message: str, field_name: str | None = None,
                   fields: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message, "field": field_name}
    if fields:
        body["fields"] = fields
    elif field_name:
        body["fields"] = {field_name: [message]}
    resp = current_app.json.response({"error": body})
    resp.status_code = status
    return resp


def _first_field(messages: Any, prefix: str = "") -> str | None:
    if isinstance(messages, dict):
        for k, v in messages.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                return _first_field(v, name)
            return name
    return prefix or None


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for k, v in messages.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(_flatten(v, name))
            else:
                out[name] = [str(m) for m in (v if isinstance(v, list) else [v])]
    else:
        out[prefix or "_body"] = [str(messages)]
    return out


def validation_error_response(err: ValidationError) -> Response:
    flat = _flatten(err.messages)
    first = _first_field(err.messages)
    message = f"{first}: {flat[first][0]}" if first and first in flat else "invalid request"
    return error_response(422, "validation_error", message, first, flat)


def _actor(session: Session, required: bool) -> Actor | None:
    header = request.headers.get("Authorization", "")
    if not header:
        if required:
            raise Unauthenticated("this endpoint needs 'Authorization: Bearer <token>'",
                                  field="Authorization")
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("use 'Authorization: Bearer <token>'", field="Authorization")
    user, tok = authenticate(session, token.strip())
    g.user, g.token = user, tok
    return Actor.of(user)


def _request_hash() -> str:
    h = hashlib.sha256()
    h.update(request.method.encode())
    h.update(request.path.encode())
    h.update(request.get_data() or b"")
    return h.hexdigest()


def _replay(rec: IdempotencyRecord, request_hash: str) -> Response:
    if rec.request_hash != request_hash or rec.path != request.path:
        return error_response(422, "idempotency_key_reused",
                              "this Idempotency-Key was used for a different request",
                              "Idempotency-Key")
    if rec.status_code == 0:
        return error_response(409, "request_in_progress",
                              "the first request with this Idempotency-Key is still being answered; retry",
                              "Idempotency-Key")
    resp = Response(rec.response_body, status=rec.status_code, mimetype="application/json")
    resp.headers["Idempotent-Replayed"] = "true"
    return resp


def _load_body(schema: type[Schema]) -> dict[str, Any]:
    data = request.get_json(silent=True)
    if data is None:
        if request.get_data():
            raise InvalidInput("the body is not valid JSON", field="_body", code="bad_json")
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", field="_body", code="bad_json")
    return dict(schema().load(data))


def paginate(session: Session, stmt: Any, page: int, per_page: int) -> tuple[list[Any], int]:
    from sqlalchemy import func
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    items = list(session.scalars(stmt.limit(per_page).offset((page - 1) * per_page)))
    return items, int(total)


def endpoint(bp: Blueprint, rule: str, method: str = "GET", *, summary: str, tags: tuple[str, ...] = (),
             auth: bool = False, query: type[Schema] | None = None, body: type[Schema] | None = None,
             response: type[Schema] | None = None, status: int = 200, many: bool = False,
             paginated: bool = False, errors: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(session, actor, *, query=..., body=..., **path)` as an API operation (`errors`:
    error statuses it may answer beyond the usual ones, for the OpenAPI document)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        op = Operation(rule, method, fn.__name__, summary, tags, auth, query, body, response, status,
                       many, paginated, errors=errors)
        OPERATIONS.append(op)

        @functools.wraps(fn)
        def view(**path: Any) -> Response:
            session = db.session
            idem_key = request.headers.get("Idempotency-Key") if method != "GET" else None
            try:
                actor = _actor(session, auth)
                kwargs: dict[str, Any] = dict(path)
                if query is not None:
                    kwargs["query"] = dict(query().load(request.args.to_dict()))
                if body is not None:
                    kwargs["body"] = _load_body(body)
                scope = f"user:{actor.user_id}" if actor else "anon"
                req_hash = _request_hash()
                if idem_key is not None:
                    if not idem_key.strip() or len(idem_key) > 255:
                        raise InvalidInput("Idempotency-Key must be 1-255 characters",
                                           field="Idempotency-Key")
                    prior = session.scalar(select(IdempotencyRecord).where(
                        IdempotencyRecord.scope == scope, IdempotencyRecord.key == idem_key))
                    if prior is not None:
                        resp = _replay(prior, req_hash)
                        session.rollback()
                        return resp
                result = fn(session, actor, **kwargs)
                if isinstance(result, AfterCommit):
                    return _after_commit(session, op, result, scope, idem_key, req_hash, method, status)
                if isinstance(result, Response):
                    session.commit() if method != "GET" else session.rollback()
                    return result
                payload = _dump(op, result)
                text = json.dumps(payload, ensure_ascii=False, default=str)
                if idem_key is not None:
                    session.add(IdempotencyRecord(scope=scope, key=idem_key, method=method,
                                                  path=request.path, request_hash=req_hash,
                                                  status_code=status, response_body=text))
                if method == "GET":
                    session.rollback()
                else:
                    session.commit()
                return Response(text, status=status, mimetype="application/json")
            except ValidationError as err:
                session.rollback()
                return validation_error_response(err)
            except RegistryError as err:
                session.rollback()
                return error_response(err.status, err.code, err.message, err.field)
            except IntegrityError:
                session.rollback()
                if idem_key is not None:
                    # A concurrent retry with the same key committed first: answer with its result.
                    prior = session.scalar(select(IdempotencyRecord).where(
                        IdempotencyRecord.scope == (f"user:{g.user.id}" if "user" in g else "anon"),
                        IdempotencyRecord.key == idem_key))
                    session.rollback()
                    if prior is not None:
                        return _replay(prior, _request_hash())
                return error_response(409, "conflict", "the request conflicts with a concurrent change; retry")

        bp.add_url_rule(rule, endpoint=fn.__name__, view_func=view, methods=[method])
        return view

    return deco


def _after_commit(session: Session, op: Operation, result: AfterCommit, scope: str, idem_key: str | None,
                  req_hash: str, method: str, status: int) -> Response:
    rec = None
    if idem_key is not None:
        rec = IdempotencyRecord(scope=scope, key=idem_key, method=method, path=request.path,
                                request_hash=req_hash, status_code=0, response_body="")
        session.add(rec)
    session.commit()
    try:
        text = json.dumps(_dump(op, result.produce()), ensure_ascii=False, default=str)
    except RegistryError as err:
        # The effect committed but its outcome is an error (the sequencer set the command aside):
        # answer it, and record it as the answer to a retry with the same key.
        session.rollback()
        resp = error_response(err.status, err.code, err.message, err.field)
        if rec is not None:
            rec.status_code, rec.response_body = resp.status_code, resp.get_data(as_text=True)
            session.commit()
        return resp
    session.rollback()
    if rec is not None:
        rec.status_code, rec.response_body = status, text
        session.commit()
    return Response(text, status=status, mimetype="application/json")


def _dump(op: Operation, result: Any) -> Any:
    if op.response is None:
        return result
    if op.paginated:
        items, total, page, per_page = result
        return {"items": op.response(many=True).dump(items), "page": page, "per_page": per_page,
                "total": total}
    return op.response(many=op.many).dump(result)
