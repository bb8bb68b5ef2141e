"""The OpenAPI 3 document, built by apispec from the marshmallow schemas of every operation."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from web.api.core import OPERATIONS

_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string", "nullable": True},
    "fields": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}}}}}


@lru_cache(maxsize=1)
def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="Tanhui 碳惠 registry API", version="1.0.0", openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Carbon-inclusion registry: projects, issuance into serial blocks, "
                             "transfer, retirement, cancellation. Quantities are integer kg of CO2e."},
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", ERROR)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path = "/api/v1" + _PARAM.sub(lambda m: "{" + m.group(2) + "}", op.rule)
        params: list[dict[str, Any]] = [
            {"name": m.group(2), "in": "path", "required": True,
             "schema": {"type": "integer" if m.group(1) == "int" else "string"}}
            for m in _PARAM.finditer(op.rule)]
        operation: dict[str, Any] = {"operationId": op.name, "summary": op.summary, "tags": list(op.tags),
                                     "responses": {}}
        if op.query is not None:
            params.append({"in": "query", "schema": op.query})
        if op.method != "GET":
            params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "maxLength": 255},
                           "description": "a retried request with the same key returns the first result"})
        if params:
            operation["parameters"] = params
        if op.body is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": op.body}}}
        if op.auth:
            operation["security"] = [{"bearer": []}]
        ok: dict[str, Any] = {"description": "OK"}
        if op.response is not None:
            schema: Any = op.response
            if op.paginated:
                schema = {"type": "object", "properties": {
                    "items": {"type": "array", "items": op.response}, "page": {"type": "integer"},
                    "per_page": {"type": "integer"}, "total": {"type": "integer"}}}
            elif op.many:
                schema = {"type": "array", "items": op.response}
            ok["content"] = {"application/json": {"schema": schema}}
        operation["responses"][str(op.status)] = ok
        usual = ("401", "403", "404", "409", "422") if op.auth else ("404", "422")
        for code in sorted(set(usual) | set(op.errors)):
            operation["responses"][code] = {"description": "error", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        paths.setdefault(path, {})[op.method.lower()] = operation
    for path, ops in paths.items():
        spec.path(path=path, operations=ops)
    return spec.to_dict()
