"""Offset orders paid by card: offset orders (`exchange.offsets`) on Stripe card payments
(`exchange.payments`, purpose "offset_order", reference the order's id).

The money moves through the ledger once, and Stripe is asked once per movement:
- Confirming a card order (`confirm_by_card`) starts one PaymentIntent for the order's total, with an
  idempotency key derived from the order: confirming again returns the same payment (and its
  client_secret, so the browser may retry a declined card).
- Stripe's signed `payment_intent.succeeded` runs `_succeeded` in the webhook's transaction:
  `offsets.mark_paid` credits the buyer's wallet with ONE deposit ("card:<payment intent>") and holds
  it for the order; the Payment points at that deposit (`deposit_id`, so an operator's refund of it
  takes the money back out of the wallet, as for a top-up). Then `offsets.fulfil`: a listing order is
  delivered, retired and certified in the same transaction; an exchange order's IOC buy is placed,
  and once the engine has matched it the resume job (`offsets.resume_paid`, every 30 s, or
  `flask offsets resume`) retires what it bought.
- Whatever offsets gives back to the card (a fill that failed, a payment that arrived after the
  quote expired, what an exchange buy did not spend) it has already moved out of the wallet as a
  paid withdrawal; the card refunder registered here only asks Stripe for exactly that amount and
  records it on the Payment (`payments.refund_external`): no second wallet movement.
- A refund Stripe reports failed (`charge.refund.updated`, status failed: an expired or lost card)
  comes back held for the buyer (`payments`); the order no longer counts it as refunded (a
  refunded order becomes refund_failed, the reason says why) until an operator retries it or
  credits it to the wallet (`payments.resolve_failed_refund`).
- A declined attempt (`payment_intent.payment_failed`) or a canceled PaymentIntent changes nothing:
  the order stays awaiting_payment until its time runs out, then the expiry job cancels it.
- When the order is cancelled (by the buyer, or its time ran out) its open PaymentIntent is
  canceled in Stripe (`cancel_open_payments`), so the browser can no longer pay it; if Stripe
  refuses because the buyer paid a moment before, the late `payment_intent.succeeded` is refunded
  to the card at once (`offsets.mark_paid`) and the order says why.

Lock order (`payments`, "Lock order"): the order, then its payment, then the payment's refunds,
then cash accounts. Every webhook and operator use case on an offset order's payment locks the
order first (`_lock_order`, registered with `payments.on_lock`); a refund to the card locks the
payment before the money moves (`lock_card_payment`, registered with `offsets.set_card_locker`).

Refunds outside a web request (the resume job) use `payments`' default gateway: the app configures
it from its STRIPE_* settings at start-up (`web.payments_setup`). Without one the refund raises
PaymentsUnavailable and the order's transaction rolls back: the money stays held and the job tries
again.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from exchange import offsets, payments
from exchange.models import Deposit, Withdrawal
from exchange.offset_models import OffsetOrder, OffsetStatus
from exchange.payment_models import Payment, PaymentRefund, PaymentStatus
from registry import audit
from registry.actors import Actor
from registry.errors import Conflict, InvalidInput

PURPOSE = "offset_order"


def idempotency_key(order: OffsetOrder) -> str:
    """One PaymentIntent per order, whoever confirms it and however often. The quote's time is in it
    so that another database's order of the same id (a fresh test or staging database on the same
    Stripe account) never gets this one's PaymentIntent back."""
    return f"offset-order:{order.id}:{order.created_at:%Y%m%dT%H%M%S%f}"


def confirm_by_card(session: Session, actor: Actor, order_id: int, *,
                    gateway: payments.StripeGateway | None = None) -> tuple[OffsetOrder, Payment]:
    """Accept a card order's quote (status awaiting_payment) and start its PaymentIntent for the
    order's total (fen); the caller hands `payment.client_secret` to Stripe.js. Idempotent: an order
    already awaiting payment gets its payment back. Raises like `offsets.confirm_offset`, InvalidInput
    (field payment) for a wallet order, PaymentsUnavailable / PaymentProviderError when Stripe is not
    configured or refuses (nothing changes then: the caller rolls back)."""
    order = offsets.confirm_offset(session, actor, order_id)
    if order.payment != "card":
        raise InvalidInput(f"offset order {order_id} is paid from the wallet", field="payment")
    payment = payments.start_payment(session, actor, purpose=PURPOSE, reference=str(order.id),
                                     holder_id=order.holder_id, amount=order.total,
                                     idempotency_key=idempotency_key(order), gateway=gateway)
    return order, payment


def payment_of(session: Session, order: OffsetOrder) -> Payment | None:
    """The order's card payment: the one that paid it, else the latest started."""
    found = payments.find_payments(session, PURPOSE, str(order.id))
    paid = [p for p in found if p.stripe_payment_intent_id == order.payment_ref]
    chosen = paid or found
    return chosen[-1] if chosen else None


# ---- lock order -------------------------------------------------------------------------------


@payments.on_lock(PURPOSE)
def _lock_order(session: Session, reference: str) -> None:
    """Before a webhook or an operator locks an offset order's payment: the order first."""
    session.get(OffsetOrder, int(reference), with_for_update={"key_share": True})


def lock_card_payment(session: Session, order: OffsetOrder) -> None:
    """The card locker of offset orders (`offsets.set_card_locker`): lock the payment that paid
    `order` (locked by the caller) before a refund moves money, as `refund_to_card` will."""
    payments.lock_payment(session, Payment.purpose == PURPOSE, Payment.stripe_payment_intent_id == order.payment_ref)


# ---- what Stripe's webhook does ---------------------------------------------------------------


@payments.on_succeeded(PURPOSE)
def _succeeded(session: Session, payment: Payment) -> None:
    order = offsets.mark_paid(session, int(payment.reference), payment_ref=payment.stripe_payment_intent_id,
                              amount=payment.amount)
    payment.deposit_id = session.scalar(select(Deposit.id).where(
        Deposit.external_ref == f"card:{payment.stripe_payment_intent_id}"[:100]))
    if order.status is OffsetStatus.PAID:
        offsets.fulfil(session, order.id)


@payments.on_failed(PURPOSE)
def _failed(session: Session, payment: Payment) -> None:
    # The browser may try another card on the same PaymentIntent; the quote's time still runs.
    audit.record(session, None, "offset.card_payment_failed", "offset_order", int(payment.reference),
                 {"payment_id": payment.id, "status": payment.status.value, "code": payment.failure_code,
                  "reason": payment.failure_reason})


@payments.on_refund_failed(PURPOSE)
def _refund_failed(session: Session, payment: Payment, rec: PaymentRefund, _: PaymentRefund | None) -> None:
    order = session.get(OffsetOrder, int(payment.reference))
    if order is not None and order.payment_ref == payment.stripe_payment_intent_id:
        offsets.card_refund_failed(session, order.id, rec.amount, rec.failure_reason or "unknown")


@payments.on_refund_resolved(PURPOSE)
def _refund_resolved(session: Session, payment: Payment, rec: PaymentRefund, new: PaymentRefund | None) -> None:
    order = session.get(OffsetOrder, int(payment.reference))
    if order is not None and order.payment_ref == payment.stripe_payment_intent_id:
        offsets.card_refund_resolved(session, order.id, rec.amount, rec.failure_reason or "unknown",
                                     new.stripe_refund_id if new else None)


# ---- refunds to the card ----------------------------------------------------------------------


def _why(order: OffsetOrder, amount: int) -> str:
    if order.reason:
        return order.reason
    if order.exchange_order_id is not None:
        return f"the buy on the exchange did not spend {amount} of the {order.paid_amount} paid"
    return f"offset order {order.id} refunded"


def refund_to_card(session: Session, order: OffsetOrder, amount: int) -> str:
    """The card refunder of offset orders (`offsets.set_card_refunder`): Stripe refunds exactly
    `amount` fen of the payment that paid `order` (idempotency key per payment and refund count) and
    the Payment records it, pointing at the paid withdrawal offsets has just posted; the wallet is
    not touched again. Returns the Stripe refund id. Raises Conflict if no card payment paid the order,
    PaymentsUnavailable / PaymentProviderError (the caller's transaction must roll back)."""
    payment = payments.lock_payment(session, Payment.purpose == PURPOSE,
                                    Payment.stripe_payment_intent_id == order.payment_ref)
    if payment is None:
        raise Conflict(f"offset order {order.id} was not paid by a card payment of this registry",
                       field="order_id", code="no_card_payment")
    withdrawal_id = session.scalar(select(Withdrawal.id).where(
        Withdrawal.holder_id == order.holder_id, Withdrawal.amount == amount,
        Withdrawal.bank_reference == f"card-refund:{order.payment_ref}"[:100]).order_by(Withdrawal.id.desc()).limit(1))
    rec = payments.refund_external(session, payment.id, amount, _why(order, amount), withdrawal_id=withdrawal_id,
                                   unfulfilled=amount == payment.refundable)
    return rec.stripe_refund_id


# ---- stopping the payment of an order that ended -----------------------------------------------


def cancel_open_payments(session: Session, order: OffsetOrder) -> None:
    """The card canceller of offset orders (`offsets.set_card_canceller`): the order was cancelled
    or its quote expired, so its PaymentIntents still open are canceled in Stripe
    (`payments.cancel_payment`, idempotency key per payment) and the browser can no longer pay.
    If Stripe refuses (paid a moment ago) or is not reachable, the payment says so (`attention`)
    and `cancel_abandoned` tries again; a payment that still succeeds is refunded by `offsets.mark_paid`."""
    why = f"offset order {order.id} {order.reason or order.status.value}"
    for p in payments.find_payments(session, PURPOSE, str(order.id)):
        if p.status in payments.OPEN:
            payments.cancel_payment(session, p.id, why[:500])


def cancel_abandoned(session: Session, limit: int = 100) -> list[int]:
    """The expiry job's retry: cancel the open payments of orders that are no longer waiting for
    one (a cancellation that Stripe did not take the first time). Returns the payments canceled.
    The caller commits."""
    open_payments = list(session.scalars(select(Payment).where(
        Payment.purpose == PURPOSE, Payment.status.in_(payments.OPEN)).order_by(Payment.id).limit(limit)))
    done = []
    for p in open_payments:
        order = session.get(OffsetOrder, int(p.reference))
        if order is not None and order.status not in (OffsetStatus.DRAFT, OffsetStatus.AWAITING_PAYMENT):
            if payments.cancel_payment(session, p.id, f"offset order {order.id} {order.reason or order.status.value}"
                                       [:500]).status is PaymentStatus.CANCELED:
                done.append(p.id)
    return done


def install() -> None:
    """Register the card refunder, canceller and locker with offsets (done on import; tests that
    swap them call this after)."""
    offsets.set_card_refunder(refund_to_card)
    offsets.set_card_canceller(cancel_open_payments)
    offsets.set_card_locker(lock_card_payment)


install()
