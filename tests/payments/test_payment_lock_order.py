"""The lock order of card-paid offset orders on PostgreSQL: offset order, then payment, then its
refunds, then cash accounts (the rule is written in `exchange.payments`, "Lock order").

The resume job, the fill and the refund to the card lock the order first and reach the payment
later (`offsets.refund` → `offset_payments.refund_to_card` → `payments.refund_external`). Stripe's
webhooks used to lock the payment first and the order second (`payment_intent.succeeded` →
`offsets.mark_paid`, a failed refund → `offsets.card_refund_failed`): the two could deadlock. Now a
webhook locks the payment's order before the payment.

The first tests make the interleaving that deadlocked deterministic: a transaction holds the order
(as the resume job does), the webhook is delivered and waits, then the transaction asks for the
payment (as the refund does). The last races real deliveries, the expiry job and the resume job on
one order many times.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from exchange import offset_jobs, offsets, payments, wallets
from exchange.offset_models import OffsetOrder, OffsetStatus
from exchange.payment_models import Payment
from registry import projects
from registry.db import utcnow
from tests.payments import test_offset_card_payments as cards
from tests.payments.test_card_payments import VISA, browser_pays, refund_event
from tests.payments.test_offset_card_payments import (
    QTY,
    TOTAL,
    card_deposits,
    card_order,
    problems,
    read,
    stripe_refunds,
)

pytestmark = [pytest.mark.postgres]

# The card-order tests' fixtures: the market with a listing, the gateway, the card refunder installed.
m, gw, card_refunder = cards.m, cards.gw, cards.card_refunder


def deadlocked(err: BaseException) -> bool:
    return isinstance(err, DBAPIError) and type(err.orig).__name__ == "DeadlockDetected"


def wait_until_blocked(session_factory, timeout: float = 10.0) -> None:
    """Until a backend of this database waits for a row lock (the webhook queued on the order)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_factory() as s:
            n = s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                              "AND wait_event_type = 'Lock'"))
        if n:
            return
        time.sleep(0.02)
    raise AssertionError("the webhook never waited for the order's lock")


def deliver_in_thread(session_factory, gw, d, errors: list[BaseException], out: dict[str, Any]) -> threading.Thread:
    """Apply a signed delivery in its own transaction, as the webhook endpoint does."""
    def run() -> None:
        try:
            with session_factory() as s, s.begin():
                out["result"] = payments.handle_webhook(s, d.body, d.signature, gateway=gw)
        except BaseException as err:  # noqa: BLE001 - the test reports it
            errors.append(err)
    t = threading.Thread(target=run, name="webhook")
    t.start()
    return t


def hold_the_order_then_ask_for_the_payment(session_factory, gw, order_id: int, payment_id: int, d) -> tuple[
        list[BaseException], dict[str, Any]]:
    """The resume job's interleaving: it holds the order, the webhook comes and waits, then the
    refund to the card asks for the payment's row (as `payments.refund_external` locks it). Returns
    the errors of both sides and the webhook's result."""
    errors: list[BaseException] = []
    out: dict[str, Any] = {}
    t = None
    try:
        with session_factory() as s, s.begin():
            s.execute(text("SET LOCAL lock_timeout = '10s'"))
            offsets._lock(s, order_id)                         # the resume job / fill / refund: the order first
            t = deliver_in_thread(session_factory, gw, d, errors, out)
            wait_until_blocked(session_factory)
            time.sleep(0.2)    # the webhook has taken whatever it takes before the order
            s.get(Payment, payment_id, with_for_update={"key_share": True})   # then the payment
    except DBAPIError as err:
        errors.append(err)
    finally:
        if t is not None:
            t.join(timeout=30)
            assert not t.is_alive(), "the webhook hung"
    return errors, out


def test_a_succeeded_webhook_waits_for_the_order_the_resume_job_holds(client, session, session_factory, m, gw,
                                                                     localstripe):
    o = card_order(client, m)
    oid, cp = o["id"], o["card_payment"]
    pi = cp["stripe_payment_intent_id"]
    assert browser_pays(gw, pi, VISA) is None
    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")

    errors, out = hold_the_order_then_ask_for_the_payment(session_factory, gw, oid, cp["id"], ok)
    assert not [e for e in errors if deadlocked(e)], "deadlock: " + "; ".join(map(str, errors))
    assert not errors, errors
    assert out["result"].outcome == "succeeded"
    order = read(session, lambda: session.get(OffsetOrder, oid))
    assert (order.status, order.paid_amount, order.filled_kg) == (OffsetStatus.RETIRED, TOTAL, QTY)
    assert card_deposits(session) == [(TOTAL, f"card:{pi}")]
    assert problems(session) == []


def test_a_failed_refund_webhook_waits_for_the_order_the_resume_job_holds(client, session, session_factory, m, gw,
                                                                         localstripe):
    o = card_order(client, m)
    oid, cp = o["id"], o["card_payment"]
    pi = cp["stripe_payment_intent_id"]
    projects.set_project_suspension(session, m.w.operator.actor, m.project.id, True, "under review")
    session.commit()
    assert browser_pays(gw, pi, VISA) is None
    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")
    with session_factory() as s, s.begin():   # the fill fails: refunded to the card
        assert payments.handle_webhook(s, ok.body, ok.signature, gateway=gw).outcome == "succeeded; fulfilment failed and was refunded"
    (ref,) = read(session, lambda: [r.stripe_refund_id for r in session.get(Payment, cp["id"]).refunds])
    failed = refund_event(gw, ref, pi, "evt_lock_order_refund_failed", status="failed",
                          failure_reason="expired_or_canceled_card")

    errors, out = hold_the_order_then_ask_for_the_payment(session_factory, gw, oid, cp["id"], failed)
    assert not [e for e in errors if deadlocked(e)], "deadlock: " + "; ".join(map(str, errors))
    assert not errors, errors
    assert out["result"].outcome == "refund failed; its money is held for the holder"
    order = read(session, lambda: session.get(OffsetOrder, oid))
    assert (order.status, order.paid_amount, order.refunded_amount) == (OffsetStatus.REFUND_FAILED, TOTAL, 0)
    assert read(session, lambda: wallets.balance(session, m.buyer.holder.id)) == wallets.Balance(10_000_00, TOTAL)
    assert problems(session) == []


ROUNDS = 12


@pytest.mark.slow
def test_webhooks_and_jobs_racing_on_one_order_never_deadlock(client, session, session_factory, m, gw, localstripe):
    """Each round: a card order is paid in Stripe, then at once its succeeded webhook (twice, as
    Stripe may deliver it), the expiry job (the quote has run out), the resume job, a transaction
    that locks the order then the payment (as the resume job's refund does) and the fill of the
    same buyer's wallet order on the same listing run together. Whoever wins, the order ends
    retired (the payment came first) or cancelled with its late payment refunded to the card; then
    that refund's failure (twice) and a stale "pending" race the resume job and the order-first
    transaction, and the order ends refund_failed with the money held. The money went through the
    wallet once, every invariant holds, and nobody deadlocks."""
    outcomes: Counter = Counter()
    for rnd in range(ROUNDS):
        outcomes[race_one_order(client, session, session_factory, m, gw, localstripe, rnd)] += 1
    print(f"\n{ROUNDS} rounds: {dict(outcomes)}")
    assert len(card_deposits(session)) == ROUNDS


def race_one_order(client, session, session_factory, m, gw, localstripe, rnd: int) -> str:
    """One round of the race; returns the order's final status."""
    later = utcnow() + offsets.CARD_PAYMENT_TTL + dt.timedelta(minutes=1)
    o = card_order(client, m, qty=1_000)
    oid, cp, total = o["id"], o["card_payment"], o["quote"]["total"]
    pi = cp["stripe_payment_intent_id"]
    assert browser_pays(gw, pi, VISA) is None
    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")
    # The same buyer's wallet order on the same listing, paid, its fill about to run.
    w = offsets.create_offset(session, m.buyer.actor, quantity_kg=1_000, beneficiary="钱包")
    offsets.confirm_offset(session, m.buyer.actor, w.id)
    session.commit()
    woid = w.id

    def webhook(d=ok) -> None:
        with session_factory() as s, s.begin():
            payments.handle_webhook(s, d.body, d.signature, gateway=gw)

    def wallet_fill() -> None:
        with session_factory() as s, s.begin():
            offsets.fulfil(s, woid)

    def expiry() -> None:
        with session_factory() as s, s.begin():
            offsets.expire_due(s, later)

    def resume() -> None:
        offsets.resume_paid(session_factory)

    def order_then_payment() -> None:   # the resume job's refund: the order, then the payment
        with session_factory() as s, s.begin():
            offsets._lock(s, oid)
            time.sleep(0.01)
            s.get(Payment, cp["id"], with_for_update={"key_share": True})

    run_together(rnd, webhook, webhook, expiry, resume, order_then_payment, wallet_fill)
    offset_jobs.run_offset_expiry(session_factory)   # a cancellation Stripe did not take is retried
    order = read(session, lambda: session.get(OffsetOrder, oid))
    assert read(session, lambda: session.get(OffsetOrder, woid).status) is OffsetStatus.RETIRED
    if order.status is OffsetStatus.RETIRED:
        assert (order.paid_amount, order.refunded_amount, order.filled_kg) == (total, 0, 1_000)
        assert stripe_refunds(gw, pi) == []
    else:   # cancelled by the expiry first: the payment that came after went back to the card
        assert (order.status, order.paid_amount, order.refunded_amount) == (
            OffsetStatus.REFUNDED, total, total), order.reason
        (ref,) = read(session, lambda: [r.stripe_refund_id for r in session.get(Payment, cp["id"]).refunds])
        assert stripe_refunds(gw, pi) == [total]
        # Stripe then reports that refund failed (twice), and its earlier "pending" comes after.
        failed = refund_event(gw, ref, pi, f"evt_race_{rnd}_refund_failed", status="failed",
                              failure_reason="expired_or_canceled_card")
        pending = refund_event(gw, ref, pi, f"evt_race_{rnd}_refund_pending", status="pending")
        run_together(rnd, lambda: webhook(failed), lambda: webhook(failed), lambda: webhook(pending), resume,
                     order_then_payment)
        order = read(session, lambda: session.get(OffsetOrder, oid))
        assert (order.status, order.paid_amount, order.refunded_amount) == (OffsetStatus.REFUND_FAILED, total, 0)
        p = read(session, lambda: session.get(Payment, cp["id"]))
        assert (p.refunded_amount, p.refund_owed, [r.status for r in p.refunds]) == (0, total, ["failed"])
    assert read(session, lambda: session.scalar(select(Payment.status).where(Payment.id == cp["id"]))).has_succeeded
    assert problems(session) == []
    return order.status.value


def run_together(rnd: int, *fns: Callable[[], Any]) -> None:
    """Start every function at once (a barrier), each in its own thread; fail on any error."""
    start = threading.Barrier(len(fns))
    errors: list[str] = []

    def step(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            start.wait()
            try:
                fn()
            except DBAPIError as err:
                errors.append(f"{type(err.orig).__name__}: {err.orig}")
            except BaseException:  # noqa: BLE001 - reported below
                errors.append(traceback.format_exc())
        return run

    threads = [threading.Thread(target=step(fn), name=f"round{rnd}-{i}") for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), f"{t.name} hung"
    assert not errors, f"round {rnd}:\n" + "\n".join(errors)
