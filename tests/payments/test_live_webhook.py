"""localstripe delivers its signed webhooks itself to the app served over HTTP, and concurrent
deliveries of one event apply it once."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select
from werkzeug.serving import make_server

from exchange import payments, wallets
from exchange.models import Deposit
from exchange.payment_models import StripeEvent
from registry.models import HolderKind
from tests.factories import party
from tests.payments.conftest import API_KEY, WEBHOOK_SECRET
from tests.payments.test_card_payments import VISA, browser_pays, scalar


@pytest.fixture
def live(app, localstripe):
    """The app on a free port, registered with localstripe as a second webhook endpoint; afterwards
    the endpoint points at a closed port so later tests' events do not reach this test's database."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"

    def register(target: str) -> None:
        data = f"url={target}&secret={WEBHOOK_SECRET}".encode()
        urllib.request.urlopen(urllib.request.Request(localstripe.api_base + "/_config/webhooks/live", data=data),
                               timeout=5)

    register(url + "/api/v1/payments/stripe/webhook")
    yield url, lambda: register("http://127.0.0.1:9/closed")
    register("http://127.0.0.1:9/closed")
    server.shutdown()


def _wait(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_localstripe_delivers_to_the_running_app(live, session, localstripe):
    url, unregister = live
    buyer = party(session, HolderKind.INDIVIDUAL, "张伟")
    session.commit()
    gw = payments.StripeGateway(API_KEY, api_base=localstripe.api_base, webhook_secret=WEBHOOK_SECRET)

    def pay(amount: int, key: str) -> str:
        p = payments.start_payment(session, buyer.actor, purpose=payments.WALLET_TOPUP, reference="live",
                                   holder_id=buyer.holder.id, amount=amount, idempotency_key=key, gateway=gw)
        session.commit()
        assert browser_pays(gw, p.stripe_payment_intent_id, VISA) is None
        return p.stripe_payment_intent_id

    def balance() -> int:
        session.rollback()
        try:
            return wallets.balance(session, buyer.holder.id).available
        finally:
            session.rollback()

    first = pay(4_321, "live-1")
    _wait(lambda: balance() == 4_321)   # localstripe POSTed payment_intent.succeeded to the app itself
    localstripe.inbox.wait_for(first, "payment_intent.succeeded")

    # Now only the test sees the events: one signed success, posted eight times at once.
    unregister()
    second = pay(1_000, "live-2")
    (ok,) = localstripe.inbox.wait_for(second, "payment_intent.succeeded")
    assert balance() == 4_321

    def post(_: int) -> tuple[int, bytes]:
        req = urllib.request.Request(url + "/api/v1/payments/stripe/webhook", data=ok.body,
                                     headers={"Stripe-Signature": ok.signature, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert [status for status, _ in answers] == [200] * 8
    assert sorted(b'"duplicate": true' in body for _, body in answers) == [False] + [True] * 7
    assert balance() == 5_321
    assert scalar(session, select(func.count()).select_from(Deposit)) == 2
    assert scalar(session, select(StripeEvent.outcome).where(StripeEvent.event_id == ok.event["id"])) == "succeeded"
