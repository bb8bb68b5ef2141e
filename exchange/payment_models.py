"""Card payments through Stripe: the payment, its refunds, and the webhook events already processed.

Amounts are integer minor units (fen). A payment's state only moves forward (see `PaymentStatus.rank`),
so a late or repeated webhook can never take it back.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.db import Base, str_enum, utcnow


class PaymentStatus(enum.StrEnum):
    REQUIRES_PAYMENT = "requires_payment"      # PaymentIntent created; the browser has not paid yet
    FAILED = "failed"                          # the last attempt was declined; the browser may retry
    CANCELED = "canceled"                      # the PaymentIntent was canceled; nothing was taken
    SUCCEEDED = "succeeded"                    # Stripe's signed payment_intent.succeeded arrived
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"                      # everything paid was given back

    @property
    def rank(self) -> int:
        """How far along: a webhook may move a payment only to a higher rank (failed → failed
        updates the reason). Failed and canceled share a rank below succeeded, because the browser
        can retry a declined PaymentIntent and it may still succeed."""
        return _RANK[self]

    @property
    def has_succeeded(self) -> bool:
        return self.rank >= _RANK[PaymentStatus.SUCCEEDED]


_RANK = {PaymentStatus.REQUIRES_PAYMENT: 0, PaymentStatus.FAILED: 1, PaymentStatus.CANCELED: 1,
         PaymentStatus.SUCCEEDED: 2, PaymentStatus.PARTIALLY_REFUNDED: 3, PaymentStatus.REFUNDED: 4}


class Payment(Base):
    """One card payment for a purpose ("wallet_topup", "offset_order", ...) and its reference."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("refunded_amount >= 0 AND refunded_amount <= amount", name="refund_range"),
        CheckConstraint("(refunded_amount = 0 AND status NOT IN ('partially_refunded', 'refunded')) OR "
                        "(refunded_amount = amount AND status = 'refunded') OR "
                        "(refunded_amount > 0 AND refunded_amount < amount AND status = 'partially_refunded')",
                        name="refund_status"),
        CheckConstraint("refund_owed >= 0", name="refund_owed_nonnegative"),
        Index("ix_payments_holder", "holder_id", "id"),
        Index("ix_payments_purpose_reference", "purpose", "reference"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(64))       # the purpose's object, e.g. "12" for order 12
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    amount: Mapped[int] = mapped_column(BigInteger)          # minor units (fen)
    currency: Mapped[str] = mapped_column(String(3), default="CNY")
    status: Mapped[PaymentStatus] = mapped_column(str_enum(PaymentStatus, "payment_status"),
                                                  default=PaymentStatus.REQUIRES_PAYMENT)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    stripe_payment_intent_id: Mapped[str] = mapped_column(String(255), unique=True)
    client_secret: Mapped[str] = mapped_column(String(255))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    # The wallet deposit the payment's money went into (`payments.credit_wallet`); refunds take it back.
    deposit_id: Mapped[int | None] = mapped_column(ForeignKey("deposits.id"), unique=True)
    fulfilled_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    fulfilment_error: Mapped[str | None] = mapped_column(Text)   # why the purpose could not be fulfilled
    attention: Mapped[str | None] = mapped_column(Text)          # a discrepancy with Stripe for an operator
    # What refunds that failed in Stripe returned: held in the holder's wallet until an operator
    # retries the refund or credits it to the wallet (`payments.resolve_failed_refund`).
    refund_owed: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    succeeded_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    refunds: Mapped[list[PaymentRefund]] = relationship(back_populates="payment", order_by="PaymentRefund.id")

    @property
    def refundable(self) -> int:
        return self.amount - self.refunded_amount if self.status.has_succeeded else 0


class PaymentRefund(Base):
    """Money given back to the card. `origin` "tanhui": made by `payments.refund`; "stripe": seen
    only in a charge.refunded event (made in Stripe's dashboard), left for an operator to reconcile."""

    __tablename__ = "payment_refunds"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    stripe_refund_id: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(32))          # Stripe's: pending | succeeded | failed | canceled
    origin: Mapped[str] = mapped_column(String(16), default="tanhui")
    withdrawal_id: Mapped[int | None] = mapped_column(ForeignKey("withdrawals.id"))   # the wallet payout
    # A refund Stripe reports failed (e.g. expired_or_canceled_card): why, and the deposit that
    # brought its money back into the ledger (held for the holder); then how an operator resolved it.
    failure_reason: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    returned_deposit_id: Mapped[int | None] = mapped_column(ForeignKey("deposits.id"))
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    resolution: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    payment: Mapped[Payment] = relationship(back_populates="refunds")


class StripeEvent(Base):
    """A webhook event already applied: its unique id makes a redelivery a no-op."""

    __tablename__ = "stripe_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"), index=True)
    outcome: Mapped[str] = mapped_column(String(200))      # what it did, e.g. "succeeded", "stale: ..."
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
