"""Exchange errors; they extend the registry's so `web/` maps them the same way."""

from __future__ import annotations

from registry.errors import Conflict


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


class MarketClosed(Conflict):
    code = "market_closed"
