"""API v1 of card payments: wallet top-ups by card, a payment's state, operator refunds, and the
Stripe webhook. The use cases are in exchange.payments; this module builds the Stripe gateway from
the app's config (STRIPE_*) and translates."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app, request
from sqlalchemy.orm import Session

from exchange import payments
from exchange.payment_models import Payment, PaymentRefund, PaymentStatus
from registry.actors import Actor
from web.api import payment_schemas as ps
from web.api.blueprint import bp
from web.api.core import endpoint


def stripe_gateway() -> payments.StripeGateway | None:
    """The app's gateway, built once per settings (None when STRIPE_API_KEY is not set)."""
    cfg = current_app.config
    if not cfg.get("STRIPE_API_KEY"):
        return None
    settings = tuple(cfg.get(k) for k in ("STRIPE_API_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET",
                                          "STRIPE_PUBLISHABLE_KEY"))
    cached = current_app.extensions.get("stripe_gateway")
    if cached is None or cached[0] != settings:
        key, base, secret, publishable = settings
        cached = (settings, payments.StripeGateway(key, api_base=base, webhook_secret=secret,
                                                   publishable_key=publishable))
        current_app.extensions["stripe_gateway"] = cached
    gw: payments.StripeGateway = cached[1]
    return gw


@bp.before_app_request
def _configure_payments() -> None:
    # Use cases called without a gateway (another module's, e.g. offset orders) use this app's.
    payments.configure(stripe_gateway())


def refund_view(r: PaymentRefund) -> dict[str, Any]:
    return {c: getattr(r, c) for c in (
        "id", "payment_id", "amount", "reason", "status", "origin", "stripe_refund_id", "created_at",
        "failure_reason", "failed_at", "resolution", "resolved_at")} | {"from_wallet": r.withdrawal_id is not None}


def payment_view(p: Payment, actor: Actor) -> dict[str, Any]:
    payable = p.status in (PaymentStatus.REQUIRES_PAYMENT, PaymentStatus.FAILED) and actor.holder_id == p.holder_id
    gw = stripe_gateway()
    refunds = [refund_view(r) for r in p.refunds]
    return {c: getattr(p, c) for c in (
        "id", "purpose", "reference", "holder_id", "amount", "currency", "stripe_payment_intent_id",
        "failure_code", "failure_reason", "refunded_amount", "refundable", "fulfilled_at", "fulfilment_error",
        "attention", "refund_owed", "created_at", "succeeded_at")} | {
        "status": p.status.value, "client_secret": p.client_secret if payable else None,
        "publishable_key": gw.publishable_key if gw and payable else None,
        "credited_to_wallet": p.deposit_id is not None, "refunds": refunds}


@endpoint(bp, "/wallet/topups", "POST", summary="Top up my wallet by card: a payment with its client_secret "
          "for Stripe.js; the wallet is credited when Stripe confirms", tags=("wallet",), auth=True,
          body=ps.TopupCreate, response=ps.PaymentOut, status=201)
def create_topup(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    key = request.headers.get("Idempotency-Key")
    p = payments.start_payment(session, actor, purpose=payments.WALLET_TOPUP, reference=f"holder:{actor.holder_id}",
                               holder_id=actor.holder_id, amount=body["amount"],
                               idempotency_key=f"topup:{actor.user_id}:{key}" if key else f"topup:{uuid.uuid4()}",
                               gateway=stripe_gateway())
    return payment_view(p, actor)


@endpoint(bp, "/payments/<int:payment_id>", summary="One of my card payments (operators: any)",
          tags=("payments",), auth=True, response=ps.PaymentOut)
def get_payment(session: Session, actor: Actor, payment_id: int) -> Any:
    return payment_view(payments.get_payment(session, actor, payment_id), actor)


@endpoint(bp, "/payments/<int:payment_id>/refund", "POST", summary="Operator refunds a card payment "
          "(from the wallet first when the money went there)", tags=("operator",), auth=True,
          body=ps.RefundCreate, response=ps.PaymentOut)
def refund_payment(session: Session, actor: Actor, payment_id: int, *, body: dict[str, Any]) -> Any:
    payments.refund(session, actor, payment_id, body.get("amount"), body["reason"], gateway=stripe_gateway())
    return payment_view(payments.get_payment(session, actor, payment_id), actor)


@endpoint(bp, "/payments/refund-failures", summary="Operators: card refunds that failed in Stripe (an expired or "
          "lost card), their money held for the holder until resolved", tags=("operator",), auth=True,
          response=ps.RefundOut, many=True)
def list_refund_failures(session: Session, actor: Actor) -> Any:
    return [refund_view(r) for r in payments.failed_refunds(session, actor)]


@endpoint(bp, "/payments/refunds/<int:refund_id>/resolve", "POST", summary="Operator resolves a failed card "
          "refund: retry it to the card, or credit the held money to the holder's wallet", tags=("operator",),
          auth=True, body=ps.RefundResolve, response=ps.RefundOut)
def resolve_refund(session: Session, actor: Actor, refund_id: int, *, body: dict[str, Any]) -> Any:
    return refund_view(payments.resolve_failed_refund(session, actor, refund_id, body["action"],
                                                      gateway=stripe_gateway()))


@endpoint(bp, "/payments/stripe/webhook", "POST", summary="Stripe's webhook (signed with the endpoint secret); "
          "each event is applied once", tags=("payments",), response=ps.WebhookOut)
def stripe_webhook(session: Session, actor: Actor | None) -> Any:
    r = payments.handle_webhook(session, request.get_data(), request.headers.get("Stripe-Signature"),
                                gateway=stripe_gateway())
    return {"received": True, "event_id": r.event_id, "type": r.type, "payment_id": r.payment_id,
            "outcome": r.outcome, "duplicate": r.duplicate}
