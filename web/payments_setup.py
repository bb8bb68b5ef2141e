"""Card payments outside a web request: the scheduler's jobs and `flask` commands refund cards too
(an offset order whose fill failed in the resume job, or whose exchange buy did not spend it all).
Requests configure `exchange.payments`' default gateway themselves (payment_routes); this does it
from the app's STRIPE_* settings for everything else: at start-up (`create_app`) and when a command
that may refund starts (the app's config may have changed since)."""

from __future__ import annotations

from flask import Flask

from exchange import payments


def configure_payments(app: Flask) -> None:
    """Point `payments`' default gateway at this app's Stripe (none without STRIPE_API_KEY: a card
    refund then raises PaymentsUnavailable and its transaction rolls back, to be retried)."""
    from web.api.payment_routes import stripe_gateway

    with app.app_context():
        payments.configure(stripe_gateway())
