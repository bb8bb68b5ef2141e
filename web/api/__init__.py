"""JSON API v1 under /api/v1 with its OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Response
from werkzeug.exceptions import HTTPException

from web.api import (  # noqa: F401  (registers the operations)
    behaviour_routes,
    carbon_routes,
    exchange_routes,
    offset_routes,
    payment_routes,
    rewards_routes,
    routes,
)
from web.api.blueprint import bp
from web.api.core import error_response


@bp.errorhandler(HTTPException)
def _http_error(err: HTTPException) -> Response:
    return error_response(err.code or 500, (err.name or "error").lower().replace(" ", "_"),
                          err.description or "")


@bp.app_errorhandler(404)
def _not_found(err: Any) -> Any:
    from flask import request
    if request.path.startswith("/api/"):
        return error_response(404, "not_found", "no such endpoint or object")
    return err


@bp.app_errorhandler(405)
def _method_not_allowed(err: Any) -> Any:
    from flask import request
    if request.path.startswith("/api/"):
        return error_response(405, "method_not_allowed", "this method is not allowed here")
    return err


__all__ = ["bp"]
