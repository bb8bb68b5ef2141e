"""Offset orders paid by card, end to end: the real Stripe SDK against localstripe, its signed
webhooks handed to the app, the order filled from a listing (in the webhook's transaction) or on the
exchange (the resume job finishes it), and every refund to the card made once, with one movement of
the wallet (`exchange.offset_payments`)."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
import stripe
from sqlalchemy import func, select

import matching
from exchange import offset_payments, offsets, orders, payments, wallets
from exchange.models import Deposit, Withdrawal, WithdrawalStatus
from exchange.offset_models import OffsetListing, OffsetOrder
from exchange.orders import OrderRequest
from exchange.payment_models import Payment, StripeEvent
from registry import holders, invariants, projects
from registry.db import utcnow
from registry.models import AuditRecord, HolderKind, Retirement, User
from tests.factories import party
from tests.offsets.conftest import CASH, PRICE, SYMBOL, Market, make_book, make_market
from tests.payments.conftest import API_KEY, WEBHOOK_SECRET
from tests.payments.test_card_payments import (
    DECLINED,
    VISA,
    auth,
    browser_pays,
    deliver,
    retargeted,
    signed,
)

QTY = 2_000
# 2,000 kg at ¥60.00/t: 6,000 × 2,000 / 1,000 = 12,000 fen; the platform fee 50 bp = 60; total 12,060.
TOTAL = 12_060


@pytest.fixture(autouse=True)
def card_refunder():
    # Tests elsewhere swap the refunder for a fake and then unset it.
    offset_payments.install()


@pytest.fixture
def gw(localstripe):
    return payments.StripeGateway(API_KEY, api_base=localstripe.api_base, webhook_secret=WEBHOOK_SECRET)


@pytest.fixture
def m(session) -> Market:
    m = make_market(session)
    for p in (m.buyer, m.seller):
        p.token = holders.create_token(session, session.get(User, p.actor.user_id))[1]
    offsets.create_listing(session, m.seller.actor, project_id=m.project.id, vintage=2024, quantity_kg=100_000,
                           price=PRICE)
    session.commit()
    return m


def read(session, fn) -> Any:
    """Read in a transaction of its own (on SQLite every transaction holds the write lock)."""
    session.rollback()
    try:
        return fn()
    finally:
        session.rollback()


def order_of(client, m: Market, oid: int) -> dict[str, Any]:
    r = client.get(f"/api/v1/offsets/{oid}", headers=auth(m.buyer))
    assert r.status_code == 200, r.json
    return r.json


def card_order(client, m: Market, qty: int = QTY, preference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quote and confirm a card order over HTTP: the order, awaiting payment, with its card payment."""
    body: dict[str, Any] = {"quantity_kg": qty, "beneficiary": "深圳马拉松 2026", "payment": "card"}
    if preference:
        body["preference"] = preference
    q = client.post("/api/v1/offsets", headers=auth(m.buyer), json=body)
    assert q.status_code == 201, q.json
    assert q.json["card_payment"] is None
    c = client.post(f"/api/v1/offsets/{q.json['id']}/confirm", headers=auth(m.buyer))
    assert c.status_code == 200, c.json
    assert c.json["status"] == "awaiting_payment"
    return c.json


def declined_event(gw, localstripe, pi: str, event_id: str):
    """A signed payment_failed about `pi`, from a real localstripe decline of another PaymentIntent
    (localstripe cannot retry a declined PaymentIntent; Stripe can)."""
    other = gw.client.v1.payment_intents.create(params={"amount": 500, "currency": "cny"})
    assert browser_pays(gw, other.id, DECLINED) == "card_declined"
    (decline,) = localstripe.inbox.wait_for(other.id, "payment_intent.payment_failed")
    return retargeted(decline, pi, event_id)


def card_deposits(session) -> list[tuple[int, str]]:
    return read(session, lambda: [tuple(x) for x in session.execute(
        select(Deposit.amount, Deposit.external_ref).where(Deposit.external_ref.like("card:%")))])


def paid_withdrawals(session) -> list[tuple[int, str]]:
    return read(session, lambda: [tuple(x) for x in session.execute(
        select(Withdrawal.amount, Withdrawal.bank_reference).where(Withdrawal.status == WithdrawalStatus.PAID)
        .order_by(Withdrawal.id))])


def stripe_refunds(gw, pi: str) -> list[int]:
    return [r.amount for r in gw.client.v1.refunds.list(params={"payment_intent": pi}).data]


def problems(session) -> list[str]:
    return read(session, lambda: [str(v) for v in invariants.check(session, include_audit=False)]
                + wallets.check(session) + offsets.check(session))


def test_card_order_is_paid_filled_and_retired_on_the_signed_webhook(client, session, m, gw, localstripe):
    o = card_order(client, m)
    oid, cp = o["id"], o["card_payment"]
    pi = cp["stripe_payment_intent_id"]
    assert o["quote"]["total"] == TOTAL
    assert (cp["purpose"], cp["reference"], cp["amount"], cp["currency"], cp["status"]) == (
        "offset_order", str(oid), TOTAL, "CNY", "requires_payment")
    assert cp["client_secret"].startswith(pi + "_secret_") and cp["publishable_key"] == "pk_test_tanhui"
    intent = gw.client.v1.payment_intents.retrieve(pi)
    assert (intent.amount, intent.currency, intent.metadata["purpose"]) == (TOTAL, "cny", "offset_order")
    # Confirming again (the browser reloaded) gives the same PaymentIntent back.
    again = client.post(f"/api/v1/offsets/{oid}/confirm", headers=auth(m.buyer)).json
    assert again["card_payment"]["id"] == cp["id"] and again["card_payment"]["client_secret"] == cp["client_secret"]

    assert browser_pays(gw, pi, VISA) is None
    assert order_of(client, m, oid)["status"] == "awaiting_payment"     # nothing before Stripe's signed event
    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")
    r = deliver(client, ok)
    assert r.status_code == 200 and r.json["outcome"] == "succeeded", r.json

    got = order_of(client, m, oid)
    assert (got["status"], got["paid_amount"], got["refunded_amount"], got["filled_kg"], got["reason"]) == (
        "retired", TOTAL, 0, QTY, None)
    no = got["certificate_number"]
    assert no and got["certificate"]["json"] == f"/api/v1/retirements/{no}/certificate.json"
    doc = client.get(got["certificate"]["json"]).json
    assert (doc["certificate"]["quantity_kg"], doc["certificate"]["beneficiary"]) == (QTY, "深圳马拉松 2026")
    cp = got["card_payment"]
    assert (cp["status"], cp["credited_to_wallet"], cp["client_secret"], cp["refunds"], cp["fulfilment_error"]) == (
        "succeeded", True, None, [], None)
    assert cp["fulfilled_at"] is not None
    # The card money went through the wallet once: one deposit, held, spent; the wallet is back where it was.
    assert card_deposits(session) == [(TOTAL, f"card:{pi}")]
    assert paid_withdrawals(session) == []
    assert read(session, lambda: wallets.balance(session, m.buyer.holder.id)) == wallets.Balance(CASH, 0)
    assert read(session, lambda: wallets.balance(session, m.seller.holder.id)) == wallets.Balance(12_000, 0)
    assert stripe_refunds(gw, pi) == []
    assert problems(session) == []


def test_a_declined_card_then_a_success(client, session, m, gw, localstripe):
    o = card_order(client, m)
    oid, pi = o["id"], o["card_payment"]["stripe_payment_intent_id"]
    declined = declined_event(gw, localstripe, pi, "evt_offset_first_card_declined")
    r = deliver(client, declined)
    assert r.json["outcome"] == "failed", r.json
    got = order_of(client, m, oid)
    assert (got["status"], got["paid_amount"]) == ("awaiting_payment", 0)
    cp = got["card_payment"]
    assert (cp["status"], cp["failure_code"], cp["failure_reason"]) == ("failed", "card_declined",
                                                                        "Your card was declined.")
    assert cp["client_secret"] == o["card_payment"]["client_secret"]    # the browser tries another card
    audited = read(session, lambda: session.scalar(select(AuditRecord.payload).where(
        AuditRecord.action == "offset.card_payment_failed", AuditRecord.entity_id == str(oid))))
    assert json.loads(audited)["code"] == "card_declined"
    assert read(session, lambda: wallets.balance(session, m.buyer.holder.id)) == wallets.Balance(CASH, 0)
    again = client.post(f"/api/v1/offsets/{oid}/confirm", headers=auth(m.buyer)).json
    assert (again["status"], again["card_payment"]["id"]) == ("awaiting_payment", cp["id"])

    assert browser_pays(gw, pi, VISA) is None
    assert deliver(client, localstripe.inbox.wait_for(pi, "payment_intent.succeeded")[0]).json["outcome"] == \
        "succeeded"
    got = order_of(client, m, oid)
    assert (got["status"], got["filled_kg"], got["card_payment"]["status"]) == ("retired", QTY, "succeeded")
    assert card_deposits(session) == [(TOTAL, f"card:{pi}")]
    assert problems(session) == []


def test_webhook_three_times_and_out_of_order_retires_once(client, session, m, gw, localstripe):
    o = card_order(client, m)
    oid, pi = o["id"], o["card_payment"]["stripe_payment_intent_id"]
    late_decline = declined_event(gw, localstripe, pi, "evt_offset_earlier_attempt_declined")
    assert browser_pays(gw, pi, VISA) is None
    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")
    # The success three times, and an earlier attempt's decline arriving after it.
    outcomes = [deliver(client, d).json for d in (ok, late_decline, ok, ok, late_decline)]
    assert [(x["outcome"], x["duplicate"]) for x in outcomes] == [
        ("succeeded", False), ("stale: payment is already succeeded", False), ("succeeded", True),
        ("succeeded", True), ("stale: payment is already succeeded", True)]
    got = order_of(client, m, oid)
    assert (got["status"], got["paid_amount"], got["filled_kg"]) == ("retired", TOTAL, QTY)
    assert read(session, lambda: session.scalar(select(func.count()).select_from(Retirement))) == 1
    assert read(session, lambda: session.scalar(select(func.count()).select_from(StripeEvent))) == 2
    assert card_deposits(session) == [(TOTAL, f"card:{pi}")]
    assert read(session, lambda: wallets.balance(session, m.buyer.holder.id)) == wallets.Balance(CASH, 0)
    assert problems(session) == []


def intent_status(gw, pi: str) -> str:
    return str(gw.client.v1.payment_intents.retrieve(pi).status)


def audited(session, action: str, entity: str, entity_id: int) -> list[dict[str, Any]]:
    return read(session, lambda: [json.loads(x) for x in session.scalars(select(AuditRecord.payload).where(
        AuditRecord.action == action, AuditRecord.entity_type == entity, AuditRecord.entity_id == str(entity_id))
        .order_by(AuditRecord.id))])


def test_an_expired_order_cancels_its_payment_intent_so_the_card_cannot_pay(client, session, session_factory, m,
                                                                            gw, localstripe):
    o = card_order(client, m)
    oid, cp = o["id"], o["card_payment"]
    pi = cp["stripe_payment_intent_id"]
    assert intent_status(gw, pi) == "requires_payment_method"
    later = utcnow() + offsets.CARD_PAYMENT_TTL + dt.timedelta(minutes=1)
    assert offsets.expire_due(session, later) == [oid]
    session.commit()
    got = order_of(client, m, oid)
    assert (got["status"], got["reason"]) == ("cancelled", "quote_expired")
    assert intent_status(gw, pi) == "canceled"
    why = f"offset order {oid} quote_expired"
    p = got["card_payment"]
    assert (p["status"], p["failure_reason"], p["attention"], p["client_secret"]) == ("canceled", why, None, None)
    assert audited(session, "payment.canceled", "payment", cp["id"]) == [
        {"reason": why, "payment_intent": pi, "by": "tanhui"}]
    # The browser still has the client_secret: Stripe refuses it now.
    with pytest.raises(stripe.InvalidRequestError):
        browser_pays(gw, pi, VISA)
    # Nothing is left for the expiry job to retry.
    from exchange import offset_jobs
    assert offset_jobs.run_offset_expiry(session_factory) == []
    assert card_deposits(session) == []
    assert problems(session) == []


def test_a_cancelled_order_cancels_its_payment_intent(client, session, m, gw, localstripe):
    o = card_order(client, m)
    oid, pi = o["id"], o["card_payment"]["stripe_payment_intent_id"]
    r = client.post(f"/api/v1/offsets/{oid}/cancel", headers=auth(m.buyer), json={"reason": "wrong event"})
    assert r.status_code == 200 and r.json["status"] == "cancelled", r.json
    assert intent_status(gw, pi) == "canceled"
    p = order_of(client, m, oid)["card_payment"]
    assert (p["status"], p["failure_reason"]) == ("canceled", f"offset order {oid} wrong event")
    with pytest.raises(stripe.InvalidRequestError):
        browser_pays(gw, pi, VISA)
    assert problems(session) == []


def test_stripe_unreachable_at_expiry_is_retried_by_the_job(client, session, session_factory, m, gw, localstripe):
    o = card_order(client, m)
    oid, cp = o["id"], o["card_payment"]
    pi = cp["stripe_payment_intent_id"]
    later = utcnow() + offsets.CARD_PAYMENT_TTL + dt.timedelta(minutes=1)
    payments.configure(None)     # Stripe not configured (or down): the quote expires all the same
    assert offsets.expire_due(session, later) == [oid]
    session.commit()
    p = read(session, lambda: session.get(Payment, cp["id"]))
    problem = "the PaymentIntent could not be canceled: card payments are not configured (STRIPE_API_KEY)"
    assert (p.status.value, p.attention) == ("requires_payment", problem)
    assert intent_status(gw, pi) == "requires_payment_method"
    assert audited(session, "payment.cancel_failed", "payment", cp["id"]) == [
        {"reason": f"offset order {oid} quote_expired", "problem": problem}]
    assert read(session, lambda: session.get(OffsetOrder, oid).status.value) == "cancelled"
    # The job runs again once Stripe answers: it cancels what the expiry could not.
    from exchange import offset_jobs
    payments.configure(gw)
    assert offset_jobs.run_offset_expiry(session_factory) == []
    assert intent_status(gw, pi) == "canceled"
    p = read(session, lambda: session.get(Payment, cp["id"]))
    assert (p.status.value, p.attention) == ("canceled", None)
    assert problems(session) == []


def test_a_payment_just_before_the_quote_expired_goes_back_to_the_card(client, session, m, gw, localstripe):
    o = card_order(client, m)
    oid, pi = o["id"], o["card_payment"]["stripe_payment_intent_id"]
    listing_id = o["listing_id"]
    # The buyer pays in the last second; Stripe's webhook is still on its way when the expiry job runs.
    assert browser_pays(gw, pi, VISA) is None
    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")
    later = utcnow() + offsets.CARD_PAYMENT_TTL + dt.timedelta(minutes=1)
    assert offsets.expire_due(session, later) == [oid]
    session.commit()
    got = order_of(client, m, oid)
    assert (got["status"], got["reason"]) == ("cancelled", "quote_expired")
    assert got["card_payment"]["attention"].startswith("the PaymentIntent could not be canceled: ")
    assert read(session, lambda: session.get(OffsetListing, listing_id).available_kg) == 100_000
    assert client.post(f"/api/v1/offsets/{oid}/confirm", headers=auth(m.buyer)).status_code == 409

    r = deliver(client, ok)
    assert r.json["outcome"] == "succeeded; fulfilment failed and was refunded", r.json
    got = order_of(client, m, oid)
    why = "the payment arrived after the order was cancelled"
    assert (got["status"], got["reason"], got["paid_amount"], got["refunded_amount"], got["filled_kg"]) == (
        "refunded", why, TOTAL, TOTAL, 0)
    cp = got["card_payment"]
    assert (cp["status"], cp["refunded_amount"], cp["fulfilment_error"], cp["fulfilled_at"]) == (
        "refunded", TOTAL, why, None)
    (ref,) = cp["refunds"]
    assert (ref["amount"], ref["reason"], ref["origin"], ref["from_wallet"]) == (TOTAL, why, "tanhui", True)
    assert stripe_refunds(gw, pi) == [TOTAL]
    assert read(session, lambda: session.get(OffsetOrder, oid).refund_ref) == ref["stripe_refund_id"]
    # In and out of the wallet once each.
    assert card_deposits(session) == [(TOTAL, f"card:{pi}")]
    assert paid_withdrawals(session) == [(TOTAL, f"card-refund:{pi}")]
    assert read(session, lambda: wallets.balance(session, m.buyer.holder.id)) == wallets.Balance(CASH, 0)

    # Stripe's charge.refunded confirms our refund; the success again changes nothing.
    latest = gw.client.v1.payment_intents.retrieve(pi).latest_charge   # localstripe expands it
    charge = gw.client.v1.charges.retrieve(latest if isinstance(latest, str) else latest.id)
    assert (charge.amount_refunded, charge.refunded) == (TOTAL, True)
    refunded = signed({"id": "evt_offset_charge_refunded", "object": "event", "type": "charge.refunded",
                       "created": int(time.time()), "data": {"object": charge.to_dict()}})
    assert deliver(client, refunded).json["outcome"] == "refunds confirmed"
    assert deliver(client, ok).json["duplicate"] is True
    assert stripe_refunds(gw, pi) == [TOTAL]
    assert read(session, lambda: session.scalar(select(func.count()).select_from(Retirement))) == 0
    assert problems(session) == []


def test_a_fill_that_fails_after_payment_is_refunded_to_the_card_with_the_reason(client, session, m, gw, localstripe):
    o = card_order(client, m)
    oid, pi = o["id"], o["card_payment"]["stripe_payment_intent_id"]
    # While the buyer types the card number, the project is suspended: its units cannot move.
    projects.set_project_suspension(session, m.w.operator.actor, m.project.id, True, "under review")
    session.commit()
    assert browser_pays(gw, pi, VISA) is None
    r = deliver(client, localstripe.inbox.wait_for(pi, "payment_intent.succeeded")[0])
    assert r.json["outcome"] == "succeeded; fulfilment failed and was refunded", r.json
    got = order_of(client, m, oid)
    assert (got["status"], got["refunded_amount"], got["filled_kg"]) == ("refunded", TOTAL, 0)
    assert got["reason"].startswith("the fill could not complete: ") and "suspended" in got["reason"]
    cp = got["card_payment"]
    assert (cp["status"], cp["fulfilment_error"]) == ("refunded", got["reason"])
    assert [(x["amount"], x["reason"]) for x in cp["refunds"]] == [(TOTAL, got["reason"])]
    assert stripe_refunds(gw, pi) == [TOTAL]
    assert paid_withdrawals(session) == [(TOTAL, f"card-refund:{pi}")]
    assert read(session, lambda: wallets.balance(session, m.buyer.holder.id)) == wallets.Balance(CASH, 0)
    assert read(session, lambda: wallets.balance(session, m.seller.holder.id)).total == 0
    assert read(session, lambda: session.get(OffsetListing, o["listing_id"]).available_kg) == 100_000
    assert read(session, lambda: session.scalar(select(func.count()).select_from(Retirement))) == 0
    assert problems(session) == []


def test_a_partial_exchange_fill_refunds_the_rest_to_the_card(client, runner, session, session_factory, m, gw,
                                                              localstripe):
    book = make_book(session, session_factory, m)
    o = card_order(client, m, 8_000, {"instrument": SYMBOL, "source": "exchange"})
    oid, pi = o["id"], o["card_payment"]["stripe_payment_intent_id"]
    # The limit is ¥61 (5 t at ¥59, then 3 t at ¥61): 48,800 notional + 244 (50 bp) + 8 (1 per lot) = 49,052.
    assert (o["quote"]["price_per_t"], o["quote"]["total"]) == (61_00, 49_052)
    rival = party(session, HolderKind.ENTERPRISE, "抢先者")
    wallets.deposit(session, m.w.operator.actor, rival.holder.id, CASH)
    orders.place_order(session, rival.actor, OrderRequest(instrument=SYMBOL, side=matching.BUY, qty_kg=6_000,
                                                          price=61_00, tif="IOC"))
    session.commit()

    assert browser_pays(gw, pi, VISA) is None
    assert deliver(client, localstripe.inbox.wait_for(pi, "payment_intent.succeeded")[0]).json["outcome"] == \
        "succeeded"
    got = order_of(client, m, oid)       # paid; the IOC buy is placed, behind the rival's
    assert (got["status"], got["paid_amount"]) == ("paid", 49_052) and got["exchange_order_id"] is not None
    assert book.run_once() == 2
    # The rival got 5 t at ¥59 and 1 t at ¥61; the offset the last 2 t at ¥61: 12,200 + fee 61 = 12,261.
    left = 49_052 - 12_261

    # The resume job needs a Stripe gateway to refund the card: without one nothing changes.
    payments.configure(None)
    failures: dict[int, str] = {}
    assert offsets.resume_paid(session_factory, failures=failures) == []
    why = "payments_unavailable: card payments are not configured (STRIPE_API_KEY)"
    assert failures == {oid: why}       # a 503: tried again next time, not refunded
    stuck = read(session, lambda: session.get(OffsetOrder, oid))
    assert (stuck.status.value, stuck.resume_attempts, stuck.resume_error) == ("paid", 1, why)
    assert stripe_refunds(gw, pi) == [] and paid_withdrawals(session) == []
    payments.configure(None)
    res = runner.invoke(args=["offsets", "resume"])      # configures it from the app's STRIPE_* settings
    assert res.exit_code == 0 and res.output == f"resumed 1 offset order(s): [{oid}]\n", res.output

    assert read(session, lambda: session.get(OffsetOrder, oid).resume_error) is None
    got = order_of(client, m, oid)
    why = f"partly filled: 2000 of 8000 kg; {left} refunded"
    assert (got["status"], got["filled_kg"], got["refunded_amount"], got["reason"]) == ("retired", 2_000, left, why)
    assert got["certificate_number"] is not None
    cp = got["card_payment"]
    assert (cp["status"], cp["refunded_amount"], cp["refundable"], cp["fulfilment_error"]) == (
        "partially_refunded", left, 12_261, None)
    assert [(x["amount"], x["reason"], x["from_wallet"]) for x in cp["refunds"]] == [
        (left, f"the buy on the exchange did not spend {left} of the 49052 paid", True)]
    assert stripe_refunds(gw, pi) == [left]
    assert card_deposits(session) == [(49_052, f"card:{pi}")]
    assert paid_withdrawals(session) == [(left, f"card-refund:{pi}")]
    assert read(session, lambda: wallets.balance(session, m.buyer.holder.id)) == wallets.Balance(CASH, 0)
    assert runner.invoke(args=["offsets", "resume"]).output == "resumed 0 offset order(s): []\n"
    assert stripe_refunds(gw, pi) == [left]
    assert problems(session) == []


def test_a_listing_closed_while_the_card_is_paid_still_delivers_the_reservation(client, session, m, gw, localstripe):
    o = card_order(client, m)
    oid, pi = o["id"], o["card_payment"]["stripe_payment_intent_id"]
    r = client.post(f"/api/v1/offset-listings/{o['listing_id']}/close", headers=auth(m.seller))
    assert r.status_code == 200 and r.json["available_kg"] == 0, r.json
    assert browser_pays(gw, pi, VISA) is None
    assert deliver(client, localstripe.inbox.wait_for(pi, "payment_intent.succeeded")[0]).json["outcome"] == \
        "succeeded"
    got = order_of(client, m, oid)
    assert (got["status"], got["filled_kg"], got["card_payment"]["refunds"]) == ("retired", QTY, [])
    assert read(session, lambda: wallets.balance(session, m.seller.holder.id)) == wallets.Balance(12_000, 0)
    assert stripe_refunds(gw, pi) == []
    assert problems(session) == []


def test_the_app_configures_stripe_for_jobs_and_commands(app, session, localstripe):
    """Outside a request (the scheduler's jobs, `flask` commands) `payments` uses the gateway the app
    configured from its STRIPE_* settings at start-up."""
    from web import create_app
    from web.extensions import db

    buyer = party(session, HolderKind.INDIVIDUAL, "王芳")
    session.commit()
    payments.configure(None)
    other = create_app(dict(app.config))
    p = payments.start_payment(session, buyer.actor, purpose=payments.WALLET_TOPUP, reference="job",
                               holder_id=buyer.holder.id, amount=4_321, idempotency_key="outside-a-request")
    session.commit()
    assert p.stripe_payment_intent_id.startswith("pi_")
    gw = payments.StripeGateway(API_KEY, api_base=localstripe.api_base)
    assert gw.client.v1.payment_intents.retrieve(p.stripe_payment_intent_id).amount == 4_321
    with other.app_context():
        db.engine.dispose()
    create_app(dict(app.config, STRIPE_API_KEY=None))
    with pytest.raises(payments.PaymentsUnavailable):
        payments.start_payment(session, buyer.actor, purpose=payments.WALLET_TOPUP, reference="job",
                               holder_id=buyer.holder.id, amount=1, idempotency_key="no-stripe")


def test_a_card_refund_that_fails_leaves_the_order_refund_failed_until_an_operator_credits_the_wallet(
        client, session, m, gw, localstripe):
    from tests.payments.test_card_payments import refund_event
    op = party(session, HolderKind.OPERATOR, "运营方")
    op.token = holders.create_token(session, session.get(User, op.actor.user_id))[1]
    session.commit()
    o = card_order(client, m)
    oid, pi = o["id"], o["card_payment"]["stripe_payment_intent_id"]
    projects.set_project_suspension(session, m.w.operator.actor, m.project.id, True, "under review")
    session.commit()
    assert browser_pays(gw, pi, VISA) is None
    deliver(client, localstripe.inbox.wait_for(pi, "payment_intent.succeeded")[0])
    got = order_of(client, m, oid)
    first_reason = got["reason"]
    (ref,) = got["card_payment"]["refunds"]
    assert (got["status"], got["refunded_amount"]) == ("refunded", TOTAL)

    r = deliver(client, refund_event(gw, ref["stripe_refund_id"], pi, "evt_offset_refund_failed",
                                     status="failed", failure_reason="expired_or_canceled_card"))
    assert r.json["outcome"] == "refund failed; its money is held for the holder", r.json
    got = order_of(client, m, oid)
    note = (f"the refund of {TOTAL} to the card failed (expired_or_canceled_card); the money is held until an "
            "operator retries it or credits it to the wallet")
    assert (got["status"], got["paid_amount"], got["refunded_amount"], got["reason"]) == (
        "refund_failed", TOTAL, 0, f"{first_reason}; {note}")
    cp = got["card_payment"]
    assert (cp["status"], cp["refunded_amount"], cp["refund_owed"]) == ("succeeded", 0, TOTAL)
    assert read(session, lambda: wallets.balance(session, m.buyer.holder.id)) == wallets.Balance(CASH, TOTAL)
    assert audited(session, "offset.refund_failed", "offset_order", oid) == [
        {"from": "refunded", "amount": TOTAL, "why": "expired_or_canceled_card", "refunded_amount": 0}]
    assert problems(session) == []

    r = client.post(f"/api/v1/payments/refunds/{ref['id']}/resolve", headers=auth(op), json={"action": "wallet"})
    assert r.status_code == 200 and r.json["resolution"] == "credited to the holder's wallet", r.json
    got = order_of(client, m, oid)
    assert (got["status"], got["refunded_amount"], got["reason"]) == (
        "refunded", TOTAL, f"{first_reason}; the card could not take {TOTAL}: credited to the wallet instead")
    assert got["card_payment"]["refund_owed"] == 0
    assert read(session, lambda: wallets.balance(session, m.buyer.holder.id)) == wallets.Balance(CASH + TOTAL, 0)
    assert problems(session) == []


def test_the_expiry_job_leaves_wallet_topups_payable(client, session, session_factory, m, gw, localstripe):
    """A top-up holds nothing and has no quote to expire: the job that cancels ended orders'
    PaymentIntents leaves it open, and a success that comes late credits the wallet once."""
    from exchange import offset_jobs
    from tests.payments.test_card_payments import topup
    t = topup(client, m.buyer, 7_000)
    o = card_order(client, m)
    later = utcnow() + offsets.CARD_PAYMENT_TTL + dt.timedelta(minutes=1)
    assert offsets.expire_due(session, later) == [o["id"]]
    session.commit()
    assert offset_jobs.run_offset_expiry(session_factory) == []
    assert intent_status(gw, o["card_payment"]["stripe_payment_intent_id"]) == "canceled"
    assert intent_status(gw, t["stripe_payment_intent_id"]) == "requires_payment_method"
    assert browser_pays(gw, t["stripe_payment_intent_id"], VISA) is None
    ok = localstripe.inbox.wait_for(t["stripe_payment_intent_id"], "payment_intent.succeeded")[0]
    assert [deliver(client, ok).json["outcome"] for _ in range(2)] == ["succeeded", "succeeded"]
    assert read(session, lambda: wallets.balance(session, m.buyer.holder.id)) == wallets.Balance(CASH + 7_000, 0)
    assert problems(session) == []


@pytest.mark.postgres
def test_expiry_skips_a_payment_a_webhook_is_applying_and_the_job_cancels_it_later(client, session, session_factory,
                                                                                  m, gw, localstripe):
    """Expiry locks the order, then the payment, with SKIP LOCKED: a payment row another transaction
    holds (the job's own retry waiting for Stripe; webhooks now wait for the order before they take
    the payment, `payments` "Lock order") is not waited for: it is left to the job."""
    o = card_order(client, m)
    oid, cp = o["id"], o["card_payment"]
    pi = cp["stripe_payment_intent_id"]
    later = utcnow() + offsets.CARD_PAYMENT_TTL + dt.timedelta(minutes=1)
    with session_factory() as webhook, webhook.begin():
        webhook.execute(select(Payment).where(Payment.id == cp["id"]).with_for_update(key_share=True))
        with session_factory() as expiry, expiry.begin():
            assert offsets.expire_due(expiry, later) == [oid]   # does not block on the locked payment
    assert read(session, lambda: session.get(Payment, cp["id"]).status.value) == "requires_payment"
    assert intent_status(gw, pi) == "requires_payment_method"
    from exchange import offset_jobs
    assert offset_jobs.run_offset_expiry(session_factory) == []
    assert intent_status(gw, pi) == "canceled"
    assert read(session, lambda: session.get(Payment, cp["id"]).status.value) == "canceled"
    assert problems(session) == []
