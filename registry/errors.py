"""Domain errors, named in the registry's words. `web/` maps each kind to an HTTP status."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class. `field` names the offending input, `code` is a stable machine-readable reason."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class InvalidInput(RegistryError):
    status = 422
    code = "invalid"


class NotFound(RegistryError):
    """Also raised for another holder's private objects: their existence is not disclosed."""

    status = 404
    code = "not_found"


class Forbidden(RegistryError):
    status = 403
    code = "forbidden"


class Unauthenticated(RegistryError):
    status = 401
    code = "unauthenticated"


class Conflict(RegistryError):
    """The request is well formed but the state does not allow it (wrong status, duplicate...)."""

    status = 409
    code = "conflict"


class InsufficientUnits(RegistryError):
    status = 409
    code = "insufficient_units"


class Suspended(RegistryError):
    status = 409
    code = "suspended"
