"""localstripe, a Stripe API fake, for the card-payment tests: the real `stripe` SDK talks to it.

A session fixture starts localstripe on 127.0.0.1 on a free port (a subprocess; killed at the end)
and registers a webhook endpoint with it, exactly as a Stripe account has one: localstripe then
POSTs every event, signed with the endpoint secret (HMAC-SHA256 over "<created>.<body>", header
`Stripe-Signature: t=<created>,v1=<hex>`, see localstripe/webhooks.py), to a small capturing HTTP
server here. The tests hand those signed deliveries to the app through the Flask test client in the
order (and as often) they choose.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask

WEBHOOK_SECRET = "whsec_tanhui_test_endpoint"
API_KEY = "sk_test_tanhui"
PUBLISHABLE_KEY = "pk_test_tanhui"

# localstripe's own entry point binds every interface and pickles its store to /tmp on each write;
# this binds 127.0.0.1 only and keeps the store in memory.
_LAUNCH = """
import sys
from aiohttp import web
from localstripe import resources, server
resources.store.dump_to_disk = lambda: None
web.run_app(server.app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Delivery:
    body: bytes
    signature: str

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class Inbox:
    """Webhook deliveries received from localstripe, in arrival order."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()

    def add(self, d: Delivery) -> None:
        with self.lock:
            self.deliveries.append(d)

    def wait_for(self, payment_intent: str, event_type: str, count: int = 1, timeout: float = 15.0) -> list[Delivery]:
        """The first `count` deliveries of `event_type` about `payment_intent` (localstripe sends
        them about a second after the API call)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [d for d in self.deliveries if d.event["type"] == event_type
                         and d.event["data"]["object"].get("id") == payment_intent]
            if len(found) >= count:
                return found[:count]
            if time.monotonic() > deadline:
                raise AssertionError(f"localstripe sent {len(found)} {event_type} for {payment_intent}, "
                                     f"expected {count}")
            time.sleep(0.05)


@dataclass
class LocalStripe:
    api_base: str
    inbox: Inbox


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    pytest.importorskip("localstripe", reason="localstripe is not installed (pip install -e '.[test]')")
    inbox = Inbox()

    class Capture(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            inbox.add(Delivery(body, self.headers["Stripe-Signature"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    capture = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/js.stripe.com/v3/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
                    raise RuntimeError(f"localstripe did not start on {base}: {err}") from None
                time.sleep(0.1)
        data = (f"url=http://127.0.0.1:{capture.server_port}/stripe&secret={WEBHOOK_SECRET}").encode()
        urllib.request.urlopen(urllib.request.Request(base + "/_config/webhooks/tanhui", data=data), timeout=5)
        yield LocalStripe(base, inbox)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        capture.shutdown()
        capture.server_close()


@pytest.fixture
def app(app: Flask, localstripe: LocalStripe) -> Flask:
    """The suite's app, pointed at localstripe."""
    app.config.update(STRIPE_API_KEY=API_KEY, STRIPE_PUBLISHABLE_KEY=PUBLISHABLE_KEY,
                      STRIPE_API_BASE=localstripe.api_base, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    return app
