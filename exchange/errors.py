"""Exchange errors; they extend the registry's so `web/` maps them the same way."""

from __future__ import annotations

from registry.errors import Conflict, RegistryError


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


class MarketClosed(Conflict):
    code = "market_closed"


class EngineError(RegistryError):
    """The sequencer could not apply a command and set it aside (exchange.sequencer): our failure,
    not the request's. A place's order is rejected with its hold released; any other command changed
    nothing."""

    status = 500
    code = "engine_error"
