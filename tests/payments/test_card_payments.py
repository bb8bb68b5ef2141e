"""Card payments with the real Stripe SDK against localstripe, webhooks signed by localstripe.

The browser's part (Stripe.js confirming the card) is played by the SDK: a PaymentMethod with the
test card is attached to the PaymentIntent and confirmed. localstripe declines a charge with
4000000000000341 (its "charge customer fail" card); 4000000000000002 is declined by real Stripe but
only on attaching to a customer by localstripe, so the decline cases use 0341.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import stripe
from sqlalchemy import func, select

from exchange import payments, wallets
from exchange.models import Deposit, Withdrawal, WithdrawalStatus
from exchange.payment_models import Payment, StripeEvent
from registry import holders
from registry.errors import Conflict, RegistryError
from registry.models import HolderKind, User
from tests.factories import party
from tests.payments.conftest import API_KEY, WEBHOOK_SECRET, Delivery

VISA = "4242424242424242"
DECLINED = "4000000000000341"
WEBHOOK = "/api/v1/payments/stripe/webhook"


@pytest.fixture
def gw(localstripe):
    return payments.StripeGateway(API_KEY, api_base=localstripe.api_base, webhook_secret=WEBHOOK_SECRET)


@pytest.fixture
def people(session):
    buyer = party(session, HolderKind.INDIVIDUAL, "李明")
    op = party(session, HolderKind.OPERATOR, "运营方")
    for p in (buyer, op):
        p.token = holders.create_token(session, session.get(User, p.actor.user_id))[1]
    session.commit()
    return buyer, op


def auth(p, key=None):
    out = {"Authorization": f"Bearer {p.token}"}
    if key:
        out["Idempotency-Key"] = key
    return out


def browser_pays(gw, payment_intent: str, card: str) -> str | None:
    """What Stripe.js does with the client_secret; returns the decline code, or None when paid."""
    pm = gw.client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123"}})
    gw.client.v1.payment_intents.update(payment_intent, params={"payment_method": pm.id})
    try:
        gw.client.v1.payment_intents.confirm(payment_intent)
    except stripe.CardError as err:
        return err.code
    return None


def deliver(client, d: Delivery):
    return client.post(WEBHOOK, data=d.body, headers={"Stripe-Signature": d.signature,
                                                       "Content-Type": "application/json; charset=utf-8"})


def signed(event: dict[str, Any]) -> Delivery:
    """An event signed with the endpoint secret as Stripe (and localstripe) sign them."""
    body = json.dumps(event, sort_keys=True)
    return Delivery(body.encode(), stripe.WebhookSignature.generate_signature_header(body, WEBHOOK_SECRET))


def retargeted(d: Delivery, payment_intent: str, event_id: str) -> Delivery:
    """A copy of a real localstripe event about another PaymentIntent, signed with the endpoint
    secret. localstripe cannot retry a declined PaymentIntent (Stripe can), so a decline followed by
    a success on one PaymentIntent is made from a real decline of another one."""
    event = json.loads(d.body)
    event["id"] = event_id
    event["data"]["object"]["id"] = payment_intent
    return signed(event)


def topup(client, buyer, amount: int, key: str | None = None) -> dict[str, Any]:
    r = client.post("/api/v1/wallet/topups", headers=auth(buyer, key), json={"amount": amount})
    assert r.status_code == 201, r.json
    return r.json


def available(session, holder_id: int) -> int:
    """Read in a transaction of its own (on SQLite every transaction holds the write lock)."""
    session.rollback()
    try:
        return wallets.balance(session, holder_id).available
    finally:
        session.rollback()


def scalar(session, stmt: Any) -> Any:
    session.rollback()
    try:
        return session.scalar(stmt)
    finally:
        session.rollback()


def test_card_topup_credits_the_wallet_only_on_the_signed_webhook(client, session, people, gw, localstripe):
    buyer, _ = people
    p = topup(client, buyer, 12_345, key="t1")
    pi = p["stripe_payment_intent_id"]
    assert (p["status"], p["amount"], p["currency"], p["purpose"]) == ("requires_payment", 12_345, "CNY", "wallet_topup")
    assert p["client_secret"].startswith(pi + "_secret_") and p["publishable_key"] == "pk_test_tanhui"
    intent = gw.client.v1.payment_intents.retrieve(pi)
    assert (intent.amount, intent.currency, intent.metadata["purpose"]) == (12_345, "cny", "wallet_topup")
    # The same Idempotency-Key answers the same payment, with no second PaymentIntent.
    again = client.post("/api/v1/wallet/topups", headers=auth(buyer, "t1"), json={"amount": 12_345})
    assert again.json == p and again.headers["Idempotent-Replayed"] == "true"

    assert browser_pays(gw, pi, VISA) is None
    # The browser says it paid; nothing is credited before Stripe's signed event.
    assert client.get(f"/api/v1/payments/{p['id']}", headers=auth(buyer)).json["status"] == "requires_payment"
    assert available(session, buyer.holder.id) == 0

    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")
    r = deliver(client, ok)
    assert r.status_code == 200 and r.json["outcome"] == "succeeded" and r.json["duplicate"] is False
    got = client.get(f"/api/v1/payments/{p['id']}", headers=auth(buyer)).json
    assert (got["status"], got["credited_to_wallet"], got["client_secret"], got["refundable"]) == (
        "succeeded", True, None, 12_345)
    assert available(session, buyer.holder.id) == 12_345
    assert scalar(session, select(Deposit.amount).where(Deposit.external_ref == pi)) == 12_345


def test_a_declined_card_credits_nothing(client, session, people, gw, localstripe):
    buyer, _ = people
    p = topup(client, buyer, 5_000)
    pi = p["stripe_payment_intent_id"]
    assert browser_pays(gw, pi, DECLINED) == "card_declined"
    (failed,) = localstripe.inbox.wait_for(pi, "payment_intent.payment_failed")
    outcomes = [deliver(client, failed).json for _ in range(3)]
    assert [(o["outcome"], o["duplicate"]) for o in outcomes] == [("failed", False), ("failed", True), ("failed", True)]
    got = client.get(f"/api/v1/payments/{p['id']}", headers=auth(buyer)).json
    assert (got["status"], got["failure_code"], got["failure_reason"]) == ("failed", "card_declined",
                                                                         "Your card was declined.")
    assert got["client_secret"] == p["client_secret"]   # the browser may try another card
    assert got["refundable"] == 0
    assert available(session, buyer.holder.id) == 0


def test_webhooks_repeated_and_out_of_order_change_nothing_twice(client, session, people, gw, localstripe):
    buyer, op = people
    p = topup(client, buyer, 20_000)
    pi = p["stripe_payment_intent_id"]
    declined = topup(client, buyer, 20_000)["stripe_payment_intent_id"]
    assert browser_pays(gw, declined, DECLINED) == "card_declined"
    assert browser_pays(gw, pi, VISA) is None
    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")
    (decline,) = localstripe.inbox.wait_for(declined, "payment_intent.payment_failed")
    failed_1 = retargeted(decline, pi, "evt_first_attempt_declined")
    failed_2 = retargeted(decline, pi, "evt_second_attempt_declined")

    # A first attempt declined, then the success three times, then the first decline again and a
    # second decline that Stripe sent late.
    outcomes = [deliver(client, d).json for d in (failed_1, ok, ok, ok, failed_1, failed_2)]
    assert [(o["outcome"], o["duplicate"]) for o in outcomes] == [
        ("failed", False), ("succeeded", False), ("succeeded", True), ("succeeded", True),
        ("failed", True), ("stale: payment is already succeeded", False)]
    got = client.get(f"/api/v1/payments/{p['id']}", headers=auth(buyer)).json
    assert (got["status"], got["failure_code"], got["amount"]) == ("succeeded", None, 20_000)
    assert available(session, buyer.holder.id) == 20_000
    assert scalar(session, select(func.count()).select_from(Deposit)) == 1

    # A refund, then its charge.refunded, then a success event again (a different event id, e.g. a
    # late duplicate from Stripe's side): the payment stays refunded and is not credited again.
    r = client.post(f"/api/v1/payments/{p['id']}/refund", headers=auth(op), json={"reason": "customer asked"})
    assert r.status_code == 200 and r.json["status"] == "refunded", r.json
    latest = gw.client.v1.payment_intents.retrieve(pi).latest_charge   # localstripe expands it
    charge = gw.client.v1.charges.retrieve(latest if isinstance(latest, str) else latest.id)
    assert (charge.amount_refunded, charge.refunded) == (20_000, True)
    refunded = signed({"id": "evt_charge_refunded_1", "object": "event", "type": "charge.refunded",
                       "created": int(time.time()), "data": {"object": charge.to_dict()}})
    assert deliver(client, refunded).json["outcome"] == "refunds confirmed"
    late = dict(ok.event, id=ok.event["id"] + "_late")
    outcomes = [deliver(client, d).json for d in (signed(late), ok, failed_2)]
    assert [(o["outcome"], o["duplicate"]) for o in outcomes] == [
        ("stale: payment is already refunded", False), ("succeeded", True),
        ("stale: payment is already succeeded", True)]
    got = client.get(f"/api/v1/payments/{p['id']}", headers=auth(buyer)).json
    assert (got["status"], got["refunded_amount"], got["attention"]) == ("refunded", 20_000, None)
    assert available(session, buyer.holder.id) == 0
    # failed_1, ok, failed_2, charge.refunded, the late success; and the real decline was never delivered
    assert scalar(session, select(func.count()).select_from(StripeEvent)) == 5


def test_a_bad_signature_is_refused_and_changes_nothing(client, session, people, gw, localstripe):
    buyer, _ = people
    p = topup(client, buyer, 3_000)
    pi = p["stripe_payment_intent_id"]
    assert browser_pays(gw, pi, VISA) is None
    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")
    tampered = Delivery(ok.body.replace(b'"amount": 3000', b'"amount": 300000'), ok.signature)
    assert tampered.body != ok.body
    other_secret = Delivery(ok.body, stripe.WebhookSignature.generate_signature_header(ok.body.decode(), "whsec_x"))
    for bad in (tampered, other_secret, Delivery(ok.body, "")):
        r = deliver(client, bad)
        assert r.status_code == 400 and r.json["error"]["code"] == "bad_signature", r.json
        assert r.json["error"]["field"] == "Stripe-Signature"
    assert client.post(WEBHOOK, data=ok.body).status_code == 400   # no header at all
    assert scalar(session, select(Payment.status).where(Payment.id == p["id"])).value == "requires_payment"
    assert scalar(session, select(func.count()).select_from(StripeEvent)) == 0
    assert available(session, buyer.holder.id) == 0
    assert deliver(client, ok).json["outcome"] == "succeeded"


def test_operator_refunds_part_then_the_rest_from_the_wallet(client, session, people, gw, localstripe):
    buyer, op = people
    p = topup(client, buyer, 10_000)
    pi = p["stripe_payment_intent_id"]
    early = client.post(f"/api/v1/payments/{p['id']}/refund", headers=auth(op), json={"reason": "x"})
    assert early.status_code == 409 and early.json["error"]["code"] == "wrong_status"
    assert browser_pays(gw, pi, VISA) is None
    deliver(client, localstripe.inbox.wait_for(pi, "payment_intent.succeeded")[0])

    r = client.post(f"/api/v1/payments/{p['id']}/refund", headers=auth(buyer), json={"reason": "mine"})
    assert r.status_code == 403
    r = client.post(f"/api/v1/payments/{p['id']}/refund", headers=auth(op), json={"amount": 10_001, "reason": "x"})
    assert r.status_code == 422 and r.json["error"]["field"] == "amount"
    r = client.post(f"/api/v1/payments/{p['id']}/refund", headers=auth(op), json={"amount": 2_500})
    assert r.status_code == 422 and r.json["error"]["field"] == "reason"

    r = client.post(f"/api/v1/payments/{p['id']}/refund", headers=auth(op, "rf1"),
                    json={"amount": 2_500, "reason": "duplicate top-up"})
    assert r.status_code == 200, r.json
    assert (r.json["status"], r.json["refunded_amount"], r.json["refundable"]) == ("partially_refunded", 2_500, 7_500)
    (ref,) = r.json["refunds"]
    assert (ref["amount"], ref["status"], ref["origin"], ref["from_wallet"]) == (2_500, "succeeded", "tanhui", True)
    assert gw.client.v1.refunds.retrieve(ref["stripe_refund_id"]).amount == 2_500
    again = client.post(f"/api/v1/payments/{p['id']}/refund", headers=auth(op, "rf1"),
                         json={"amount": 2_500, "reason": "duplicate top-up"})
    assert again.json == r.json and again.headers["Idempotent-Replayed"] == "true"
    assert available(session, buyer.holder.id) == 7_500

    # The buyer moves 6,000 away (a withdrawal request holds it): the rest cannot be taken back.
    wallets.request_withdrawal(session, buyer.actor, 6_000)
    session.commit()
    r = client.post(f"/api/v1/payments/{p['id']}/refund", headers=auth(op), json={"reason": "the rest"})
    assert r.status_code == 409 and r.json["error"]["code"] == "insufficient_funds", r.json
    assert len(gw.client.v1.refunds.list(params={"payment_intent": pi}).data) == 1   # Stripe was not asked
    got = client.get(f"/api/v1/payments/{p['id']}", headers=auth(op)).json
    assert (got["status"], got["refunded_amount"]) == ("partially_refunded", 2_500)

    r = client.post(f"/api/v1/payments/{p['id']}/refund", headers=auth(op), json={"amount": 1_500, "reason": "the rest"})
    assert r.status_code == 200 and r.json["refundable"] == 6_000
    assert available(session, buyer.holder.id) == 0
    session.rollback()
    paid_out = session.execute(select(Withdrawal.amount, Withdrawal.bank_reference)
                               .where(Withdrawal.status == WithdrawalStatus.PAID).order_by(Withdrawal.id)).all()
    session.rollback()
    assert [tuple(w) for w in paid_out] == [(2_500, f"card refund {pi}"),
                                                               (1_500, f"card refund {pi}")]


def test_others_cannot_see_a_payment(client, session, people, gw):
    buyer, op = people
    p = topup(client, buyer, 1_000)
    other = party(session, HolderKind.INDIVIDUAL, "王芳")
    other.token = holders.create_token(session, session.get(User, other.actor.user_id))[1]
    session.commit()
    assert client.get(f"/api/v1/payments/{p['id']}", headers=auth(other)).status_code == 404
    seen = client.get(f"/api/v1/payments/{p['id']}", headers=auth(op)).json
    assert seen["amount"] == 1_000 and seen["client_secret"] is None   # only the payer gets the secret
    r = client.post("/api/v1/wallet/topups", headers=auth(buyer), json={"amount": 0})
    assert r.status_code == 422 and r.json["error"]["field"] == "amount"


@pytest.fixture
def order_purpose(monkeypatch):
    """A purpose like an offset order: it spends the money from the wallet, and may be sold out."""
    calls: list[tuple[str, int]] = []
    state = {"sold_out": False}

    def succeeded(session, payment):
        payments.credit_wallet(session, payment)
        calls.append(("succeeded", payment.id))
        if state["sold_out"]:
            raise Conflict("the instrument sold out before the fill", field="quantity_kg", code="sold_out")

    def failed(session, payment):
        calls.append((payment.status.value, payment.id))

    monkeypatch.setitem(payments.purposes.succeeded, "test_order", succeeded)
    monkeypatch.setitem(payments.purposes.failed, "test_order", failed)
    return calls, state


def test_a_fulfilment_that_fails_is_refunded_and_says_why(client, session, people, gw, localstripe, order_purpose):
    buyer, _ = people
    calls, state = order_purpose
    state["sold_out"] = True
    p = payments.start_payment(session, buyer.actor, purpose="test_order", reference="42", holder_id=buyer.holder.id,
                               amount=8_800, idempotency_key="order-42", gateway=gw)
    same = payments.start_payment(session, buyer.actor, purpose="test_order", reference="42",
                                  holder_id=buyer.holder.id, amount=8_800, idempotency_key="order-42", gateway=gw)
    assert same.id == p.id
    with pytest.raises(Conflict) as err:
        payments.start_payment(session, buyer.actor, purpose="test_order", reference="42", holder_id=buyer.holder.id,
                               amount=9_900, idempotency_key="order-42", gateway=gw)
    assert err.value.code == "idempotency_key_reused"
    session.commit()
    pid, pi = p.id, p.stripe_payment_intent_id

    assert browser_pays(gw, pi, VISA) is None
    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")
    r = deliver(client, ok)
    assert r.status_code == 200 and r.json["outcome"] == "succeeded; fulfilment failed and was refunded"
    assert calls == [("succeeded", pid)]
    got = client.get(f"/api/v1/payments/{pid}", headers=auth(buyer)).json
    assert (got["status"], got["refunded_amount"], got["credited_to_wallet"]) == ("refunded", 8_800, False)
    assert got["fulfilment_error"] == "sold_out: the instrument sold out before the fill"
    (ref,) = got["refunds"]
    assert (ref["amount"], ref["reason"], ref["from_wallet"]) == (
        8_800, "fulfilment failed: sold_out: the instrument sold out before the fill", False)
    assert [x.amount for x in gw.client.v1.refunds.list(params={"payment_intent": pi}).data] == [8_800]
    # The wallet credit made inside the failed fulfilment was rolled back with it.
    assert available(session, buyer.holder.id) == 0
    assert scalar(session, select(func.count()).select_from(Deposit)) == 0
    assert deliver(client, ok).json["duplicate"] is True
    assert calls == [("succeeded", pid)]

    # A declined order payment tells its purpose (an offset order would go back to awaiting payment).
    q = payments.start_payment(session, buyer.actor, purpose="test_order", reference="43", holder_id=buyer.holder.id,
                               amount=100, idempotency_key="order-43", gateway=gw)
    session.commit()
    qid, qpi = q.id, q.stripe_payment_intent_id
    assert browser_pays(gw, qpi, DECLINED) == "card_declined"
    deliver(client, localstripe.inbox.wait_for(qpi, "payment_intent.payment_failed")[0])
    assert calls == [("succeeded", pid), ("failed", qid)]


def test_unknown_purpose_and_unconfigured_stripe(session, people, gw, app):
    buyer, _ = people
    with pytest.raises(RegistryError) as err:
        payments.start_payment(session, buyer.actor, purpose="nope", reference="1", holder_id=buyer.holder.id,
                               amount=100, idempotency_key="k", gateway=gw)
    assert err.value.field == "purpose"
    app.config["STRIPE_API_KEY"] = None
    r = app.test_client().post("/api/v1/wallet/topups", headers=auth(buyer), json={"amount": 100})
    assert r.status_code == 503 and r.json["error"]["code"] == "payments_unavailable"


def test_a_fill_that_fails_later_is_refunded_from_the_wallet(client, session, people, gw, localstripe, order_purpose):
    buyer, _ = people
    calls, _ = order_purpose
    p = payments.start_payment(session, buyer.actor, purpose="test_order", reference="44", holder_id=buyer.holder.id,
                               amount=6_600, idempotency_key="order-44", gateway=gw)
    session.commit()
    pid, pi = p.id, p.stripe_payment_intent_id
    assert browser_pays(gw, pi, VISA) is None
    assert deliver(client, localstripe.inbox.wait_for(pi, "payment_intent.succeeded")[0]).json["outcome"] == "succeeded"
    assert calls == [("succeeded", pid)] and available(session, buyer.holder.id) == 6_600

    assert [x.id for x in payments.find_payments(session, "test_order", "44")] == [pid]
    rec = payments.refund_unfulfilled(session, pid, "no seller left at the quoted price", gateway=gw)
    session.commit()
    assert (rec.amount, rec.reason) == (6_600, "fulfilment failed: no seller left at the quoted price")
    assert rec.withdrawal_id is not None
    got = client.get(f"/api/v1/payments/{pid}", headers=auth(buyer)).json
    assert (got["status"], got["fulfilment_error"], got["refundable"]) == (
        "refunded", "no seller left at the quoted price", 0)
    assert available(session, buyer.holder.id) == 0
    assert [x.amount for x in gw.client.v1.refunds.list(params={"payment_intent": pi}).data] == [6_600]


def test_what_stripe_says_that_tanhui_did_not_do_is_flagged(client, session, people, gw, localstripe):
    buyer, op = people
    p = topup(client, buyer, 9_000)
    pi = p["stripe_payment_intent_id"]
    assert browser_pays(gw, pi, VISA) is None
    (ok,) = localstripe.inbox.wait_for(pi, "payment_intent.succeeded")
    wrong = json.loads(ok.body)
    wrong["id"] = "evt_amount_differs"
    wrong["data"]["object"]["amount"] = 900
    r = deliver(client, signed(wrong)).json
    assert r["outcome"] == "ignored: amount or currency differs"
    got = client.get(f"/api/v1/payments/{p['id']}", headers=auth(op)).json
    assert (got["status"], got["attention"]) == ("requires_payment", "Stripe reports 900 cny received for a payment of 9000 fen")
    assert deliver(client, ok).json["outcome"] == "succeeded"

    # Someone refunds 3,000 in Stripe's dashboard: recorded and flagged; the wallet is not touched.
    outside = gw.client.v1.refunds.create(params={"payment_intent": pi, "amount": 3_000})
    latest = gw.client.v1.payment_intents.retrieve(pi).latest_charge
    charge = gw.client.v1.charges.retrieve(latest if isinstance(latest, str) else latest.id)
    r = deliver(client, signed({"id": "evt_outside_refund", "object": "event", "type": "charge.refunded",
                                "created": int(time.time()), "data": {"object": charge.to_dict()}})).json
    assert r["outcome"] == "refund outside Tanhui recorded"
    got = client.get(f"/api/v1/payments/{p['id']}", headers=auth(op)).json
    assert (got["status"], got["refunded_amount"], got["refundable"]) == ("partially_refunded", 3_000, 6_000)
    assert got["attention"].startswith("Stripe reports 3000 fen refunded, some of it outside Tanhui")
    assert [(x["stripe_refund_id"], x["origin"], x["from_wallet"]) for x in got["refunds"]] == [
        (outside.id, "stripe", False)]
    assert available(session, buyer.holder.id) == 9_000


def refund_event(gw, refund_id: str, payment_intent: str, event_id: str, event_type: str = "charge.refund.updated",
                 **changes: Any) -> Delivery:
    """A signed event about one of our refunds as Stripe sends it when the refund's status changes
    (localstripe never fails a refund): the refund object as localstripe returns it, with `changes`."""
    refund = gw.client.v1.refunds.retrieve(refund_id).to_dict()
    refund.setdefault("payment_intent", payment_intent)   # Stripe's refunds name their PaymentIntent
    refund.update(changes)
    return signed({"id": event_id, "object": "event", "type": event_type, "created": int(time.time()),
                   "data": {"object": refund}})


def audit_payloads(session, action: str, payment_id: int) -> list[dict[str, Any]]:
    from registry.models import AuditRecord
    session.rollback()
    try:
        return [json.loads(x) for x in session.scalars(select(AuditRecord.payload).where(
            AuditRecord.action == action, AuditRecord.entity_type == "payment",
            AuditRecord.entity_id == str(payment_id)).order_by(AuditRecord.id))]
    finally:
        session.rollback()


def balance(session, holder_id: int) -> wallets.Balance:
    session.rollback()
    try:
        return wallets.balance(session, holder_id)
    finally:
        session.rollback()


def test_a_refund_that_fails_in_stripe_is_held_for_the_holder_until_an_operator_resolves_it(
        client, runner, session, people, gw, localstripe):
    buyer, op = people
    p = topup(client, buyer, 20_000)
    pid, pi = p["id"], p["stripe_payment_intent_id"]
    assert browser_pays(gw, pi, VISA) is None
    deliver(client, localstripe.inbox.wait_for(pi, "payment_intent.succeeded")[0])
    r = client.post(f"/api/v1/payments/{pid}/refund", headers=auth(op), json={"amount": 5_000, "reason": "too much"})
    assert r.status_code == 200 and r.json["status"] == "partially_refunded", r.json
    (first,) = r.json["refunds"]
    assert balance(session, buyer.holder.id) == wallets.Balance(15_000, 0)

    # Stripe: the card was cancelled, the refund failed and its money is back in the Stripe balance.
    failed = refund_event(gw, first["stripe_refund_id"], pi, "evt_refund_failed_1", status="failed",
                          failure_reason="expired_or_canceled_card")
    outcome = deliver(client, failed).json
    assert outcome["outcome"] == "refund failed; its money is held for the holder", outcome
    got = client.get(f"/api/v1/payments/{pid}", headers=auth(op)).json
    assert (got["status"], got["refunded_amount"], got["refundable"], got["refund_owed"]) == (
        "succeeded", 0, 20_000, 5_000)
    assert got["attention"] == "5000 fen of failed refunds are held for the holder: retry the refund or credit it " \
                               "to the wallet"
    (ref,) = got["refunds"]
    assert (ref["status"], ref["failure_reason"], ref["resolution"]) == ("failed", "expired_or_canceled_card", None)
    assert balance(session, buyer.holder.id) == wallets.Balance(15_000, 5_000)   # back in, held
    (rec,) = audit_payloads(session, "payment.refund_failed", pid)
    assert (rec["refund_id"], rec["amount"], rec["failure_reason"], rec["refund_owed"]) == (
        first["id"], 5_000, "expired_or_canceled_card", 5_000)

    # Again, out of order and stale: nothing moves twice.
    stale_ok = refund_event(gw, first["stripe_refund_id"], pi, "evt_refund_updated_earlier", "refund.updated",
                            status="succeeded")
    latest = gw.client.v1.payment_intents.retrieve(pi).latest_charge
    charge = gw.client.v1.charges.retrieve(latest if isinstance(latest, str) else latest.id)
    stale_charge = signed({"id": "evt_charge_refunded_before_failure", "object": "event", "type": "charge.refunded",
                           "created": int(time.time()), "data": {"object": charge.to_dict()}})
    outcomes = [deliver(client, d).json for d in (failed, stale_ok, stale_charge)]
    assert [(o["outcome"], o["duplicate"]) for o in outcomes] == [
        ("refund failed; its money is held for the holder", True), ("stale: refund is already failed", False),
        ("refunds confirmed", False)]
    got = client.get(f"/api/v1/payments/{pid}", headers=auth(op)).json
    assert (got["status"], got["refunded_amount"], got["refund_owed"], got["refunds"][0]["status"]) == (
        "succeeded", 0, 5_000, "failed")
    assert balance(session, buyer.holder.id) == wallets.Balance(15_000, 5_000)

    # Its money is not refunded a second way while it is held.
    r = client.post(f"/api/v1/payments/{pid}/refund", headers=auth(op), json={"reason": "all of it"})
    assert r.status_code == 409 and r.json["error"]["code"] == "failed_refund_pending", r.json
    r = client.post(f"/api/v1/payments/{pid}/refund", headers=auth(op), json={"amount": 15_001, "reason": "x"})
    assert r.status_code == 409 and r.json["error"]["field"] == "amount", r.json

    # The operator sees it and retries it to the card.
    assert client.get("/api/v1/payments/refund-failures", headers=auth(buyer)).status_code == 403
    listed = client.get("/api/v1/payments/refund-failures", headers=auth(op)).json
    assert [(x["id"], x["payment_id"], x["amount"], x["failure_reason"]) for x in listed] == [
        (first["id"], pid, 5_000, "expired_or_canceled_card")]
    r = client.post(f"/api/v1/payments/refunds/{first['id']}/resolve", headers=auth(op), json={"action": "resend"})
    assert r.status_code == 422 and r.json["error"]["field"] == "action"
    r = client.post(f"/api/v1/payments/refunds/{first['id']}/resolve", headers=auth(op), json={"action": "retry"})
    assert r.status_code == 200, r.json
    second = r.json
    assert (second["amount"], second["status"], second["reason"]) == (5_000, "succeeded",
                                                                       f"retry of refund {first['id']}: too much")
    assert [x.amount for x in gw.client.v1.refunds.list(params={"payment_intent": pi}).data] == [5_000, 5_000]
    got = client.get(f"/api/v1/payments/{pid}", headers=auth(op)).json
    assert (got["status"], got["refunded_amount"], got["refund_owed"], got["attention"]) == (
        "partially_refunded", 5_000, 0, None)
    assert got["refunds"][0]["resolution"] == f"retried as refund {second['id']} ({second['stripe_refund_id']})"
    assert balance(session, buyer.holder.id) == wallets.Balance(15_000, 0)
    again = client.post(f"/api/v1/payments/refunds/{first['id']}/resolve", headers=auth(op), json={"action": "retry"})
    assert again.status_code == 409 and again.json["error"]["code"] == "already_resolved"
    assert client.get("/api/v1/payments/refund-failures", headers=auth(op)).json == []

    # The retry fails too (the card is gone): the operator credits it to the wallet from the CLI.
    deliver(client, refund_event(gw, second["stripe_refund_id"], pi, "evt_refund_failed_2", status="failed",
                                 failure_reason="lost_or_stolen_card"))
    assert balance(session, buyer.holder.id) == wallets.Balance(15_000, 5_000)
    email = scalar(session, select(User.email).where(User.id == op.actor.user_id))
    out = runner.invoke(args=["payments", "refund-failures", "--operator", email])
    assert out.exit_code == 0 and out.output.splitlines()[-1] == "1 failed refund(s) to resolve", out.output
    assert out.output.startswith(f"refund {second['id']}: payment {pid}, 5000 fen, failed ")
    out = runner.invoke(args=["payments", "resolve-refund", str(second["id"]), "--action", "wallet",
                              "--operator", email])
    assert out.exit_code == 0 and out.output == f"refund {second['id']}: 5000 fen credited to the holder's wallet\n", \
        out.output
    assert balance(session, buyer.holder.id) == wallets.Balance(20_000, 0)
    got = client.get(f"/api/v1/payments/{pid}", headers=auth(op)).json
    assert (got["status"], got["refunded_amount"], got["refundable"], got["refund_owed"]) == (
        "succeeded", 0, 20_000, 0)
    assert [(x["status"], x["resolution"]) for x in got["refunds"]] == [
        ("failed", f"retried as refund {second['id']} ({second['stripe_refund_id']})"),
        ("failed", "credited to the holder's wallet")]
    assert [x["action"] for x in audit_payloads(session, "payment.refund_failure_resolved", pid)] == ["retry", "wallet"]
