"""marshmallow schemas of the card-payment endpoints (amounts in minor units, fen)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from web.api.schemas import UtcDateTime


class TopupCreate(Schema):
    amount = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, max=100_000_000),
                            metadata={"description": "minor units (fen) to add to the wallet by card"})


class RefundCreate(Schema):
    amount = fields.Integer(strict=True, validate=validate.Range(min=1),
                            metadata={"description": "fen; default: all that is still refundable"})
    reason = fields.String(required=True, validate=validate.Length(min=1, max=1000))


class RefundResolve(Schema):
    action = fields.String(required=True, validate=validate.OneOf(["retry", "wallet"]), metadata={
        "description": "retry: refund to the card again; wallet: credit the held money to the holder's wallet"})


class RefundOut(Schema):
    id = fields.Integer()
    payment_id = fields.Integer()
    amount = fields.Integer()
    reason = fields.String()
    status = fields.String(metadata={"description": "Stripe's: pending, succeeded, failed or canceled"})
    origin = fields.String()
    stripe_refund_id = fields.String()
    from_wallet = fields.Boolean()
    created_at = UtcDateTime()
    failure_reason = fields.String(allow_none=True, metadata={
        "description": "why Stripe could not refund: expired_or_canceled_card, lost_or_stolen_card, unknown"})
    failed_at = UtcDateTime(allow_none=True)
    resolution = fields.String(allow_none=True)
    resolved_at = UtcDateTime(allow_none=True)


class PaymentOut(Schema):
    id = fields.Integer()
    purpose = fields.String()
    reference = fields.String()
    holder_id = fields.Integer()
    amount = fields.Integer()
    currency = fields.String()
    status = fields.String()
    stripe_payment_intent_id = fields.String()
    client_secret = fields.String(allow_none=True, metadata={
        "description": "for Stripe.js (stripe.confirmCardPayment); only to the payer while it can pay"})
    publishable_key = fields.String(allow_none=True)
    failure_code = fields.String(allow_none=True)
    failure_reason = fields.String(allow_none=True)
    refunded_amount = fields.Integer()
    refundable = fields.Integer()
    credited_to_wallet = fields.Boolean()
    fulfilled_at = UtcDateTime(allow_none=True)
    fulfilment_error = fields.String(allow_none=True)
    attention = fields.String(allow_none=True)
    refund_owed = fields.Integer(metadata={"description": "fen of failed refunds held for the holder"})
    refunds = fields.List(fields.Nested(RefundOut))
    created_at = UtcDateTime()
    succeeded_at = UtcDateTime(allow_none=True)


class WebhookOut(Schema):
    received = fields.Boolean()
    event_id = fields.String()
    type = fields.String()
    payment_id = fields.Integer(allow_none=True)
    outcome = fields.String()
    duplicate = fields.Boolean()
