"""Card payments through Stripe: PaymentIntents, the signed webhook, refunds, and purpose handlers.

The flow: `start_payment` creates a PaymentIntent server-side (Stripe's idempotency key, so a retry
never charges twice) and returns the Payment with its `client_secret` for Stripe.js; the browser
confirms the card. Only Stripe's signed `payment_intent.succeeded` webhook makes a payment succeeded;
then the handler registered for its purpose (`on_succeeded`) fulfils it in the same transaction. If
that handler raises a domain error the payment is refunded and says why (`fulfilment_error`).

Webhooks are applied once per event id (`stripe_events`), under the payment's row lock (taken
after its purpose's own row: see "Lock order" below), and move a payment only forward
(`PaymentStatus.rank`): a repeated or late event is recorded and changes nothing. Amounts are
integer minor units (fen); the currency is CNY.

Nothing here imports Flask: `web/` passes the gateway it built from its config (or calls `configure`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session

from exchange import wallets
from exchange.models import Deposit
from exchange.payment_models import Payment, PaymentRefund, PaymentStatus, StripeEvent
from registry import audit
from registry.actors import Actor
from registry.db import utcnow
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound, RegistryError, Suspended
from registry.models import Holder, HolderKind

CURRENCY = "CNY"
WALLET_TOPUP = "wallet_topup"


class PaymentProviderError(RegistryError):
    """Stripe refused or could not be reached; nothing was changed here."""

    status = 502
    code = "payment_provider_error"


class PaymentsUnavailable(RegistryError):
    status = 503
    code = "payments_unavailable"


class BadSignature(RegistryError):
    """The webhook's Stripe-Signature does not verify (or the body is not an event)."""

    status = 400
    code = "bad_signature"


# ---- the Stripe gateway -----------------------------------------------------------------------


class StripeGateway:
    """The real Stripe SDK, pointed at `api_base` (Stripe itself by default; localstripe in tests)."""

    def __init__(self, api_key: str, *, api_base: str | None = None, webhook_secret: str | None = None,
                 publishable_key: str | None = None) -> None:
        self.client = stripe.StripeClient(api_key, base_addresses={"api": api_base} if api_base else None,
                                          max_network_retries=2)
        self.webhook_secret = webhook_secret
        self.publishable_key = publishable_key

    def create_payment_intent(self, amount: int, currency: str, metadata: dict[str, str],
                              idempotency_key: str) -> stripe.PaymentIntent:
        return self.client.v1.payment_intents.create(
            params={"amount": amount, "currency": currency.lower(), "metadata": metadata},
            options={"idempotency_key": idempotency_key})

    def cancel_payment_intent(self, payment_intent_id: str, idempotency_key: str) -> stripe.PaymentIntent:
        return self.client.v1.payment_intents.cancel(payment_intent_id, options={"idempotency_key": idempotency_key})

    def create_refund(self, payment_intent_id: str, amount: int, metadata: dict[str, str],
                      idempotency_key: str) -> stripe.Refund:
        return self.client.v1.refunds.create(
            params={"payment_intent": payment_intent_id, "amount": amount, "metadata": metadata},
            options={"idempotency_key": idempotency_key})

    def verify(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """The event as a plain dict, once its signature verifies with the endpoint secret."""
        if not self.webhook_secret:
            raise PaymentsUnavailable("no Stripe webhook secret is configured", field="Stripe-Signature")
        try:
            event = stripe.Webhook.construct_event(payload, signature, self.webhook_secret)
        except (stripe.SignatureVerificationError, ValueError) as err:
            raise BadSignature(f"the webhook signature does not verify: {err}", field="Stripe-Signature") from err
        data: dict[str, Any] = event.to_dict()
        return data


_default: StripeGateway | None = None


def configure(gateway: StripeGateway | None) -> None:
    """Set the gateway used when a caller passes none (the web app does, from its config)."""
    global _default
    _default = gateway


def _gw(gateway: StripeGateway | None) -> StripeGateway:
    gw = gateway or _default
    if gw is None:
        raise PaymentsUnavailable("card payments are not configured (STRIPE_API_KEY)", field="payment")
    return gw


# ---- what a paid purpose does -----------------------------------------------------------------

Handler = Callable[[Session, Payment], None]
# (session, payment, the failed refund, the refund that retried it or None: credited to the wallet)
RefundHandler = Callable[[Session, Payment, PaymentRefund, PaymentRefund | None], None]
# (session, the payment's reference): locks the purpose's own row (an offset order), if there is one
OwnerLock = Callable[[Session, str], None]


@dataclass
class PurposeRegistry:
    """Handlers by purpose. A succeeded handler runs in the webhook's transaction, inside a savepoint,
    once per payment: it raises a domain error (RegistryError) to refuse, and the payment is then
    refunded. A failed handler runs when an attempt is declined or the PaymentIntent is canceled
    (possibly more than once: the browser may retry a declined card). A refund_failed handler runs
    once when Stripe reports one of the payment's refunds failed (its fourth argument is None), a
    refund_resolved handler when an operator resolved that failure (`resolve_failed_refund`). A
    purpose whose handlers lock its own row registers how (`on_lock`): that row is locked before the
    payment's (see "Lock order")."""

    succeeded: dict[str, Handler] = field(default_factory=dict)
    failed: dict[str, Handler] = field(default_factory=dict)
    refund_failed: dict[str, RefundHandler] = field(default_factory=dict)
    refund_resolved: dict[str, RefundHandler] = field(default_factory=dict)
    owner_lock: dict[str, OwnerLock] = field(default_factory=dict)


purposes = PurposeRegistry()


def on_succeeded(purpose: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        purposes.succeeded[purpose] = fn
        return fn
    return register


def on_failed(purpose: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        purposes.failed[purpose] = fn
        return fn
    return register


def on_refund_failed(purpose: str) -> Callable[[RefundHandler], RefundHandler]:
    def register(fn: RefundHandler) -> RefundHandler:
        purposes.refund_failed[purpose] = fn
        return fn
    return register


def on_refund_resolved(purpose: str) -> Callable[[RefundHandler], RefundHandler]:
    def register(fn: RefundHandler) -> RefundHandler:
        purposes.refund_resolved[purpose] = fn
        return fn
    return register


def on_lock(purpose: str) -> Callable[[OwnerLock], OwnerLock]:
    def register(fn: OwnerLock) -> OwnerLock:
        purposes.owner_lock[purpose] = fn
        return fn
    return register


# ---- lock order -------------------------------------------------------------------------------
#
# One global order for the rows that card payments and their purposes lock, so that two
# transactions never wait for each other (PostgreSQL aborts one with "deadlock detected"):
#
#   purpose's row (offset order) → payment → its refunds → offset listing (its blocks are locked
#   only under it) → cash accounts, by id within each journal (`wallets.post`, the sequencer)
#
# Before, webhooks took the payment first and the order second, while the resume job, the fill and
# the refund to the card took the order first and the payment second. The paths, as they are now:
# - webhooks (`apply_event`, every type): `lock_payment` (order → payment; purpose and reference
#   are read first without a lock: they never change), then
#   succeeded → `offsets.mark_paid`: listing → cash (deposit, hold) → the fill: blocks → cash;
#     a fill that fails → `offsets.refund` (below) or `refund_unfulfilled`;
#   a refund that failed (`_record_refund_failure`) → refund row → cash (deposit, hold) →
#     `offsets.card_refund_failed` (the order, already held).
# - the resume job, `offsets.fulfil`, `_resume_failed`, a late payment: order → the fill in a
#   savepoint (listing → blocks → cash; rolled back if it fails) → `offsets.refund`: payment
#   (`offset_payments.lock_card_payment`) → listing → cash (release, paid withdrawal) → refund row
#   (`refund_external`); `offset_fill._finish`: order → payment (`offsets.refund_card`) → cash.
# - operators: `refund`, `resolve_failed_refund`: `lock_payment` (order → payment) → refund row →
#   cash → the purpose's handler (the order, already held).
# - expiry and cancellation: order → listing → payment with SKIP LOCKED (`cancel_payment`): it
#   never waits for the payment, so it cannot close a cycle; neither can `cancel_abandoned` (the
#   expiry job's retry: payment, SKIP LOCKED, without the order, then only its audit record).
# Taking a row the transaction already holds again never waits. A purpose without a row of its
# own (a wallet top-up) starts at the payment. Not covered: within one transaction the cash
# accounts of several journals (a webhook's deposit, hold and settlement) are not one id-ordered set.


def lock_payment(session: Session, *where: Any, populate_existing: bool = False) -> Payment | None:
    """The payment matching `where`, locked after its purpose's own row (the lock order above);
    None if there is none. Its purpose and reference never change, so they are read first without
    a lock."""
    found = session.execute(select(Payment.id, Payment.purpose, Payment.reference).where(*where)).first()
    if found is None:
        return None
    owner_lock = purposes.owner_lock.get(found.purpose)
    if owner_lock is not None:
        owner_lock(session, found.reference)
    return session.get(Payment, found.id, with_for_update={"key_share": True}, populate_existing=populate_existing)


def credit_wallet(session: Session, payment: Payment) -> Deposit:
    """Credit the payment's money to its holder's cash wallet, once (the deposit's external ref is
    the PaymentIntent id, unique). A purpose that spends from the wallet calls this first; refunds
    of such a payment then take the money back out of the wallet."""
    if payment.deposit_id is not None:
        existing = session.get(Deposit, payment.deposit_id)
        assert existing is not None
        return existing
    d = wallets.record_deposit(session, None, payment.holder_id, payment.amount,
                               external_ref=payment.stripe_payment_intent_id,
                               memo=f"card payment {payment.id} ({payment.purpose})")
    payment.deposit_id = d.id
    return d


@on_succeeded(WALLET_TOPUP)
def _wallet_topup_succeeded(session: Session, payment: Payment) -> None:
    credit_wallet(session, payment)


# ---- use cases --------------------------------------------------------------------------------


def _positive(amount: object, name: str = "amount") -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidInput(f"{name} must be a positive integer in minor units (fen)", field=name)
    return amount


def start_payment(session: Session, actor: Actor, *, purpose: str, reference: str, holder_id: int,
                  amount: int, idempotency_key: str, gateway: StripeGateway | None = None) -> Payment:
    """Create the PaymentIntent (amount in fen, CNY) and its Payment, status requires_payment; the
    caller returns `payment.client_secret` to the browser. The same `idempotency_key` with the same
    request returns the same Payment (and Stripe returns the same PaymentIntent); with a different
    request it raises Conflict (code "idempotency_key_reused"). The actor pays for its own holder
    (an operator may start one for anyone). Raises InvalidInput for an unknown purpose or a bad
    amount, PaymentProviderError when Stripe refuses; nothing is written then."""
    if actor.holder_id != holder_id and not actor.is_operator:
        raise Forbidden("you can only pay for your own holder", field="holder_id")
    actor.require_can_move_units()
    if purpose not in purposes.succeeded:
        raise InvalidInput(f"no handler is registered for purpose {purpose!r}", field="purpose")
    amount = _positive(amount)
    if not idempotency_key or len(idempotency_key) > 200:
        raise InvalidInput("idempotency_key must be 1-200 characters", field="idempotency_key")
    prior = session.scalar(select(Payment).where(Payment.idempotency_key == idempotency_key))
    if prior is not None:
        if (prior.purpose, prior.reference, prior.holder_id, prior.amount) != (purpose, reference, holder_id, amount):
            raise Conflict("this idempotency key was used for a different payment", field="idempotency_key",
                           code="idempotency_key_reused")
        return prior
    holder = session.get(Holder, holder_id)
    if holder is None:
        raise NotFound(f"no holder {holder_id}", field="holder_id")
    if holder.suspended:
        raise Suspended("a suspended holder cannot pay", field="holder_id")
    gw = _gw(gateway)
    try:
        pi = gw.create_payment_intent(amount, CURRENCY, {"purpose": purpose, "reference": reference,
                                                         "holder_id": str(holder_id)},
                                      idempotency_key=f"tanhui-payment-{idempotency_key}")
    except stripe.StripeError as err:
        raise PaymentProviderError(f"Stripe did not create the payment: {err.user_message or err}",
                                   field="payment") from err
    payment = Payment(purpose=purpose, reference=reference, holder_id=holder_id, created_by_id=actor.user_id,
                      amount=amount, currency=CURRENCY, status=PaymentStatus.REQUIRES_PAYMENT,
                      idempotency_key=idempotency_key, stripe_payment_intent_id=pi.id,
                      client_secret=pi.client_secret or "")
    session.add(payment)
    session.flush()
    audit.record(session, actor, "payment.started", "payment", payment.id,
                 {"purpose": purpose, "reference": reference, "holder_id": holder_id, "amount": amount,
                  "payment_intent": pi.id})
    return payment


def get_payment(session: Session, actor: Actor, payment_id: int) -> Payment:
    """The holder's own payment, or any for an operator; others' answer NotFound."""
    p = session.get(Payment, payment_id)
    if p is None or (p.holder_id != actor.holder_id and not actor.is_operator):
        raise NotFound(f"no payment {payment_id}", field="payment_id")
    return p


def refund(session: Session, actor: Actor, payment_id: int, amount: int | None, reason: str, *,
           gateway: StripeGateway | None = None) -> PaymentRefund:
    """Operator refunds `amount` fen (None: all that is left) of a succeeded payment to the card,
    with Stripe's idempotency key. If the money went into the holder's wallet it is taken back out
    of the available balance first: InsufficientFunds (field "amount") if it is no longer all there.
    Raises Conflict (wrong_status) before success, InvalidInput above the refundable amount, Conflict
    (failed_refund_pending) for the money of failed refunds still held (`resolve_failed_refund`
    gives it back), PaymentProviderError if Stripe refuses; nothing changes then."""
    actor.require_kind(HolderKind.OPERATOR)
    if not (reason and reason.strip()):
        raise InvalidInput("a refund needs a reason", field="reason")
    p = lock_payment(session, Payment.id == payment_id)
    if p is None:
        raise NotFound(f"no payment {payment_id}", field="payment_id")
    left = p.refundable - p.refund_owed    # failed refunds' money is resolved by resolve_failed_refund
    if p.refund_owed and (amount is None or amount > left):
        raise Conflict(f"{p.refund_owed} fen of this payment's failed refunds are held: resolve those "
                       f"(at most {left} fen can be refunded here)", field="amount", code="failed_refund_pending")
    return _refund(session, actor, p, p.refundable if amount is None else amount, reason.strip(), _gw(gateway))


def refund_unfulfilled(session: Session, payment_id: int, error: str, *,
                       gateway: StripeGateway | None = None) -> PaymentRefund:
    """The system refunds what is left of a succeeded payment whose purpose could not be fulfilled
    after all (e.g. an offset order's fill failed in a later job), and the payment says why
    (`fulfilment_error`). No actor: call it only from the purpose's own use cases. If the money went
    into the wallet, release what the purpose holds first: the refund takes it from `available`
    (InsufficientFunds otherwise). Raises like `refund`."""
    if not (error and error.strip()):
        raise InvalidInput("say why the payment could not be fulfilled", field="error")
    p = lock_payment(session, Payment.id == payment_id)
    if p is None:
        raise NotFound(f"no payment {payment_id}", field="payment_id")
    p.fulfilment_error = error.strip()
    audit.record(session, None, "payment.fulfilment_failed", "payment", p.id,
                 {"purpose": p.purpose, "reference": p.reference, "error": p.fulfilment_error})
    return _refund(session, None, p, p.refundable, f"fulfilment failed: {p.fulfilment_error}", _gw(gateway))


def refund_external(session: Session, payment_id: int, amount: int, reason: str, *,
                    withdrawal_id: int | None = None, unfulfilled: bool = False,
                    gateway: StripeGateway | None = None) -> PaymentRefund:
    """The system refunds `amount` fen of a succeeded payment to the card when the purpose has
    ALREADY moved that money out of the holder's wallet itself (e.g. an offset order: `offsets.refund_card`
    posts the paid withdrawal, then calls its card refunder). So there is NO wallet pay_out here, even
    if the payment credited the wallet: a second one would take the money out of the ledger twice.
    `withdrawal_id` names the purpose's payout on the refund record. With `unfulfilled` the payment
    also says why it was not fulfilled (`fulfilment_error` = `reason`). No actor: call it only from
    the purpose's own use cases. Raises Conflict (wrong_status) before success, InvalidInput above
    the refundable amount, PaymentProviderError if Stripe refuses (the caller's transaction must
    then roll back the purpose's payout too)."""
    if not (reason and reason.strip()):
        raise InvalidInput("a refund needs a reason", field="reason")
    p = lock_payment(session, Payment.id == payment_id)
    if p is None:
        raise NotFound(f"no payment {payment_id}", field="payment_id")
    rec = _refund(session, None, p, amount, reason.strip(), _gw(gateway), pay_out=False,
                  withdrawal_id=withdrawal_id)
    if unfulfilled:
        p.fulfilment_error = reason.strip()
    return rec


OPEN = (PaymentStatus.REQUIRES_PAYMENT, PaymentStatus.FAILED)


def cancel_payment(session: Session, payment_id: int, reason: str, *,
                   gateway: StripeGateway | None = None) -> Payment:
    """The system cancels the PaymentIntent of a payment its purpose no longer wants (an offset
    order that expired or was cancelled), with Stripe's idempotency key, so the browser can no
    longer pay it: status canceled, `failure_reason` = `reason`. Does nothing to a payment that is
    not open (requires_payment or failed). Never raises for Stripe: if Stripe refuses (the buyer
    paid a moment ago: its payment_intent.succeeded is on its way, and the purpose refunds a payment
    it no longer wants) or cannot be reached, the payment stays open, `attention` says why and an
    audit record is left; the purpose's own change goes on, and a job may call this again. No
    actor: call it only from the purpose's own use cases.

    The purpose holds its own row's lock here (the lock order above: a webhook or a refund waits
    for that row before it takes the payment's). A payment locked anyway (the job's own retry,
    `cancel_abandoned`, is calling Stripe) is skipped (SKIP LOCKED: nobody waits for Stripe's
    answer), for the job's retry to look at again."""
    p = session.scalar(select(Payment).where(Payment.id == payment_id)
                       .with_for_update(key_share=True, skip_locked=True))
    if p is None:
        busy = session.get(Payment, payment_id)
        if busy is None:
            raise NotFound(f"no payment {payment_id}", field="payment_id")
        return busy
    if p.status not in OPEN:
        return p
    try:
        pi = _gw(gateway).cancel_payment_intent(p.stripe_payment_intent_id,
                                                idempotency_key=f"tanhui-cancel-{p.id}")
        status = pi.status
    except (PaymentsUnavailable, stripe.StripeError) as err:
        status = None
        problem = f"the PaymentIntent could not be canceled: {getattr(err, 'user_message', None) or err}"
    if status == "canceled":
        p.status, p.failure_reason, p.attention = PaymentStatus.CANCELED, reason, None
        audit.record(session, None, "payment.canceled", "payment", p.id,
                     {"reason": reason, "payment_intent": p.stripe_payment_intent_id, "by": "tanhui"})
        return p
    if status is not None:
        problem = f"Stripe did not cancel the PaymentIntent: it is {status}"
    if p.attention != problem[:2000]:   # a job retrying every 30 s audits a new problem, not each try
        p.attention = problem[:2000]
        audit.record(session, None, "payment.cancel_failed", "payment", p.id,
                     {"reason": reason, "problem": p.attention})
    return p


def find_payments(session: Session, purpose: str, reference: str) -> list[Payment]:
    """The payments started for one purpose's object, oldest first."""
    return list(session.scalars(select(Payment).where(Payment.purpose == purpose, Payment.reference == reference)
                                .order_by(Payment.id)))


def _refund(session: Session, actor: Actor | None, p: Payment, amount: int, reason: str,
            gw: StripeGateway, *, pay_out: bool = True, withdrawal_id: int | None = None,
            from_wallet: bool = False) -> PaymentRefund:
    if not p.status.has_succeeded:
        raise Conflict(f"payment is {p.status.value}: only a succeeded payment can be refunded",
                       field="payment_id", code="wrong_status")
    amount = _positive(amount)
    if amount > p.refundable:
        raise InvalidInput(f"at most {p.refundable} fen of this payment can still be refunded", field="amount")
    if pay_out and (p.deposit_id is not None or from_wallet):
        withdrawal_id = wallets.pay_out(session, actor, p.holder_id, amount, ref=f"payment:{p.id}",
                                        bank_reference=f"card refund {p.stripe_payment_intent_id}",
                                        reason=reason).id
    # The n-th refund of a payment always has the same key: a retry after a lost answer or a rolled-back
    # transaction gets the same Stripe refund back instead of a second one.
    nth = len(p.refunds) + 1
    try:
        r = gw.create_refund(p.stripe_payment_intent_id, amount, {"payment_id": str(p.id), "reason": reason[:450]},
                             idempotency_key=f"tanhui-refund-{p.id}-{nth}")
    except stripe.StripeError as err:
        raise PaymentProviderError(f"Stripe did not refund: {err.user_message or err}", field="payment_id") from err
    rec = PaymentRefund(payment_id=p.id, amount=amount, reason=reason, stripe_refund_id=r.id,
                        status=r.status or "pending", origin="tanhui", withdrawal_id=withdrawal_id,
                        created_by_id=actor.user_id if actor else None)
    session.add(rec)
    p.refunds.append(rec)
    p.refunded_amount += amount
    p.status = _refund_status(p)
    session.flush()
    audit.record(session, actor, "payment.refunded", "payment", p.id,
                 {"amount": amount, "reason": reason, "refund": r.id, "from_wallet": withdrawal_id is not None,
                  "refunded_amount": p.refunded_amount})
    return rec


def _refund_status(p: Payment) -> PaymentStatus:
    if p.refunded_amount == 0:
        return PaymentStatus.SUCCEEDED
    return PaymentStatus.REFUNDED if p.refunded_amount == p.amount else PaymentStatus.PARTIALLY_REFUNDED


# ---- refunds that failed ----------------------------------------------------------------------
#
# Stripe reports a refund that could not reach the card (expired_or_canceled_card,
# lost_or_stolen_card, unknown) with the refund's status "failed" in `charge.refund.updated` (and
# `refund.updated` / `refund.failed`, `charge.refunded`'s list); the money is back in the platform's
# Stripe balance. It comes back into the ledger as a deposit held for the holder (ref
# "payment:<id>"), the payment owes it (`refund_owed`) until an operator retries the refund or
# credits it to the wallet, and the purpose is told (an offset order becomes refund_failed).

RESOLUTIONS = ("retry", "wallet")


def _record_refund_failure(session: Session, p: Payment, rec: PaymentRefund, reason: str) -> str:
    if rec.status == "failed":
        return "stale: refund already failed"
    rec.status, rec.failure_reason, rec.failed_at = "failed", reason[:500], utcnow()
    p.refunded_amount -= rec.amount
    p.status = _refund_status(p)
    if rec.origin != "tanhui":   # made in Stripe's dashboard: it never took money out of the ledger
        p.attention = (f"a refund of {rec.amount} fen made in Stripe ({rec.stripe_refund_id}) failed: "
                       f"{rec.failure_reason}; reconcile")
        audit.record(session, None, "payment.refund_failed", "payment", p.id,
                     {"refund_id": rec.id, "stripe_refund": rec.stripe_refund_id, "amount": rec.amount,
                      "failure_reason": rec.failure_reason, "origin": rec.origin})
        return "refund made in Stripe failed"
    d = wallets.record_deposit(session, None, p.holder_id, rec.amount,
                               external_ref=f"refund-failed:{rec.stripe_refund_id}"[:100],
                               memo=f"refund {rec.id} of card payment {p.id} failed: {rec.failure_reason}"[:200])
    wallets.hold(session, p.holder_id, rec.amount, ref=f"payment:{p.id}")
    rec.returned_deposit_id = d.id
    p.refund_owed += rec.amount
    p.attention = (f"{p.refund_owed} fen of failed refunds are held for the holder: retry the refund "
                   "or credit it to the wallet")
    session.flush()
    audit.record(session, None, "payment.refund_failed", "payment", p.id,
                 {"refund_id": rec.id, "stripe_refund": rec.stripe_refund_id, "amount": rec.amount,
                  "failure_reason": rec.failure_reason, "deposit_id": d.id, "refund_owed": p.refund_owed})
    handler = purposes.refund_failed.get(p.purpose)
    if handler is not None:
        handler(session, p, rec, None)
    return "refund failed; its money is held for the holder"


def failed_refunds(session: Session, actor: Actor, limit: int = 200) -> list[PaymentRefund]:
    """Operators: refunds that failed in Stripe and wait for a decision, oldest first."""
    actor.require_kind(HolderKind.OPERATOR)
    return list(session.scalars(select(PaymentRefund).where(
        PaymentRefund.status == "failed", PaymentRefund.resolved_at.is_(None),
        PaymentRefund.returned_deposit_id.is_not(None)).order_by(PaymentRefund.id).limit(limit)))


def resolve_failed_refund(session: Session, actor: Actor, refund_id: int, action: str, *,
                          gateway: StripeGateway | None = None) -> PaymentRefund:
    """An operator resolves a refund that failed in Stripe: "retry" asks Stripe again for the same
    amount (the money leaves the wallet again as a paid withdrawal; a new refund, its own
    idempotency key), "wallet" releases the held money to the holder's available balance (the card
    cannot take it: an expired or lost card). Returns the new refund (retry) or the failed one
    (wallet). Raises NotFound, Conflict (not a failed refund, or already resolved), InvalidInput
    (action), PaymentProviderError (nothing changes then)."""
    actor.require_kind(HolderKind.OPERATOR)
    if action not in RESOLUTIONS:
        raise InvalidInput("action must be retry or wallet", field="action")
    rec = session.get(PaymentRefund, refund_id)
    if rec is None:
        raise NotFound(f"no refund {refund_id}", field="refund_id")
    p = lock_payment(session, Payment.id == rec.payment_id, populate_existing=True)
    assert p is not None
    session.refresh(rec)
    if rec.status != "failed" or rec.returned_deposit_id is None:
        raise Conflict(f"refund {refund_id} is {rec.status}: only a failed refund held here can be resolved",
                       field="refund_id", code="wrong_status")
    if rec.resolved_at is not None:
        raise Conflict(f"refund {refund_id} was already resolved: {rec.resolution}", field="refund_id",
                       code="already_resolved")
    wallets.release(session, p.holder_id, rec.amount, ref=f"payment:{p.id}")
    p.refund_owed -= rec.amount
    new = None
    if action == "retry":
        new = _refund(session, actor, p, rec.amount, f"retry of refund {rec.id}: {rec.reason}"[:1000], _gw(gateway),
                      from_wallet=True)
        rec.resolution = f"retried as refund {new.id} ({new.stripe_refund_id})"
    else:
        rec.resolution = "credited to the holder's wallet"
    rec.resolved_at = utcnow()
    if p.refund_owed == 0:
        p.attention = None
    audit.record(session, actor, "payment.refund_failure_resolved", "payment", p.id,
                 {"refund_id": rec.id, "action": action, "amount": rec.amount,
                  "new_refund": new.stripe_refund_id if new else None, "refund_owed": p.refund_owed})
    handler = purposes.refund_resolved.get(p.purpose)
    if handler is not None:
        handler(session, p, rec, new)
    return new or rec


# ---- the webhook ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookResult:
    event_id: str
    type: str
    payment_id: int | None
    outcome: str
    duplicate: bool = False


def handle_webhook(session: Session, payload: bytes, signature: str | None, *,
                   gateway: StripeGateway | None = None) -> WebhookResult:
    """Verify a Stripe webhook (BadSignature: nothing changes) and apply it once. The caller commits.
    Other exceptions mean "try again later": Stripe redelivers until it gets a 2xx."""
    gw = _gw(gateway)
    return apply_event(session, gw.verify(payload, signature), gw)


def _payment_intent_of(obj: dict[str, Any]) -> str | None:
    if obj.get("object") == "payment_intent":
        return str(obj["id"])
    pi = obj.get("payment_intent")
    return pi if isinstance(pi, str) else None


def apply_event(session: Session, event: dict[str, Any], gw: StripeGateway) -> WebhookResult:
    """Apply a verified event once, under the payment's row lock (concurrent deliveries queue),
    taken after its purpose's row (an offset order: `lock_payment`)."""
    etype = str(event.get("type", ""))
    obj = (event.get("data") or {}).get("object") or {}
    pi_id = _payment_intent_of(obj)
    p = lock_payment(session, Payment.stripe_payment_intent_id == pi_id) if pi_id else None
    done = session.scalar(select(StripeEvent).where(StripeEvent.event_id == event["id"]))
    if done is not None:
        return WebhookResult(done.event_id, done.type, done.payment_id, done.outcome, duplicate=True)
    if p is None:
        outcome = "ignored: not a Tanhui payment"
    else:
        apply = _APPLY.get(etype)
        outcome = apply(session, p, obj, gw) if apply else f"ignored: {etype} is not used"
    session.add(StripeEvent(event_id=str(event["id"]), type=etype, payment_id=p.id if p else None,
                            outcome=outcome[:200]))
    session.flush()
    return WebhookResult(str(event["id"]), etype, p.id if p else None, outcome)


def _succeeded(session: Session, p: Payment, obj: dict[str, Any], gw: StripeGateway) -> str:
    if p.status.has_succeeded:
        return f"stale: payment is already {p.status.value}"
    received = obj.get("amount_received", obj.get("amount"))
    if received != p.amount or str(obj.get("currency", "")).upper() != p.currency:
        p.attention = f"Stripe reports {received} {obj.get('currency')} received for a payment of {p.amount} fen"
        return "ignored: amount or currency differs"
    p.status = PaymentStatus.SUCCEEDED
    p.succeeded_at = utcnow()
    p.failure_code = p.failure_reason = None
    audit.record(session, None, "payment.succeeded", "payment", p.id,
                 {"purpose": p.purpose, "reference": p.reference, "amount": p.amount,
                  "payment_intent": p.stripe_payment_intent_id})
    handler = purposes.succeeded.get(p.purpose)
    if handler is None:   # a deployment without the module: fail so Stripe redelivers after the fix
        raise RuntimeError(f"no succeeded handler for payment purpose {p.purpose!r}")
    session.flush()
    try:
        with session.begin_nested():
            handler(session, p)
    except RegistryError as err:
        session.expire(p)   # the savepoint's changes (a wallet credit, say) are gone
        refund_unfulfilled(session, p.id, f"{err.code}: {err.message}", gateway=gw)
        return "succeeded; fulfilment failed and was refunded"
    if p.fulfilment_error is not None:   # the handler refunded it itself (refund_external, unfulfilled)
        return "succeeded; fulfilment failed and was refunded"
    p.fulfilled_at = utcnow()
    return "succeeded"


def _failed(session: Session, p: Payment, obj: dict[str, Any], gw: StripeGateway) -> str:
    if p.status.rank > PaymentStatus.FAILED.rank or p.status is PaymentStatus.CANCELED:
        return f"stale: payment is already {p.status.value}"
    err = obj.get("last_payment_error") or {}
    p.status = PaymentStatus.FAILED
    p.failure_code = (err.get("decline_code") or err.get("code") or "declined")[:64]
    p.failure_reason = err.get("message") or "the payment was declined"
    audit.record(session, None, "payment.failed", "payment", p.id,
                 {"code": p.failure_code, "reason": p.failure_reason})
    _notify_failed(session, p)
    return "failed"


def _canceled(session: Session, p: Payment, obj: dict[str, Any], gw: StripeGateway) -> str:
    if p.status.rank > PaymentStatus.FAILED.rank or p.status is PaymentStatus.CANCELED:
        return f"stale: payment is already {p.status.value}"
    p.status = PaymentStatus.CANCELED
    p.failure_reason = obj.get("cancellation_reason") or "the payment was canceled"
    audit.record(session, None, "payment.canceled", "payment", p.id, {"reason": p.failure_reason})
    _notify_failed(session, p)
    return "canceled"


def _notify_failed(session: Session, p: Payment) -> None:
    handler = purposes.failed.get(p.purpose)
    if handler is not None:
        handler(session, p)


def _charge_refunded(session: Session, p: Payment, obj: dict[str, Any], gw: StripeGateway) -> str:
    """Confirms our refunds' status; a refund made outside Tanhui (Stripe's dashboard) is recorded
    and flagged for an operator, since it took no money out of the wallet."""
    listed = ((obj.get("refunds") or {}).get("data")) or []
    known = {r.stripe_refund_id: r for r in p.refunds}
    outside = 0
    failed = []
    for r in listed:
        if r["id"] in known:
            if r.get("status") == "failed":
                failed.append(_record_refund_failure(session, p, known[r["id"]], str(r.get("failure_reason") or
                                                                                     "unknown")))
            elif known[r["id"]].status not in ("failed", "canceled"):
                known[r["id"]].status = r.get("status") or known[r["id"]].status
        else:
            rec = PaymentRefund(payment_id=p.id, amount=int(r["amount"]), reason="refunded in Stripe",
                                stripe_refund_id=r["id"], status=r.get("status") or "succeeded", origin="stripe")
            session.add(rec)
            p.refunds.append(rec)
            outside += rec.amount
    stripe_total = int(obj.get("amount_refunded") or 0)
    # An event older than a refund's failure still counts it in Stripe's total.
    failed_before = sum(r.amount for r in p.refunds if r.status == "failed" and r.origin == "tanhui")
    total = max(p.refunded_amount + outside, min(stripe_total - failed_before, p.amount))
    if total == p.refunded_amount:
        return "; ".join(failed) or "refunds confirmed"
    p.refunded_amount = total
    p.status = PaymentStatus.REFUNDED if total == p.amount else PaymentStatus.PARTIALLY_REFUNDED
    p.attention = (f"Stripe reports {stripe_total} fen refunded, some of it outside Tanhui: "
                   "the wallet was not debited for it; reconcile")
    audit.record(session, None, "payment.refunded_outside", "payment", p.id,
                 {"stripe_amount_refunded": stripe_total, "refunded_amount": total})
    return "refund outside Tanhui recorded"


def _refund_updated(session: Session, p: Payment, obj: dict[str, Any], gw: StripeGateway) -> str:
    """A refund's status changed. "failed" is final (Stripe never moves a failed refund on), so a
    "succeeded" or "pending" that arrives after it changes nothing."""
    if obj.get("object") != "refund":
        return "ignored: not a refund"
    rec = next((r for r in p.refunds if r.stripe_refund_id == obj.get("id")), None)
    if rec is None:
        return "ignored: a refund Tanhui does not know (charge.refunded records those)"
    status = str(obj.get("status") or "")
    if status == "failed":
        return _record_refund_failure(session, p, rec, str(obj.get("failure_reason") or "unknown"))
    if rec.status in ("failed", "canceled"):
        return f"stale: refund is already {rec.status}"
    if status and status != rec.status:
        rec.status = status
        return f"refund {status}"
    return "refund unchanged"


_APPLY: dict[str, Callable[[Session, Payment, dict[str, Any], StripeGateway], str]] = {
    "payment_intent.succeeded": _succeeded,
    "payment_intent.payment_failed": _failed,
    "payment_intent.canceled": _canceled,
    "charge.refunded": _charge_refunded,
    "charge.refund.updated": _refund_updated,
    "refund.updated": _refund_updated,
    "refund.failed": _refund_updated,
}

