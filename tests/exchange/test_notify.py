"""Waking the sequencer and the waiting requests (exchange.notify) instead of polling."""

from __future__ import annotations

import threading
import time

import pytest

from exchange import instruments, notify, orders, wallets
from exchange.orders import OrderRequest
from exchange.sequencer import Sequencer
from tests.conftest import ON_PG
from tests.factories import world


def test_command_watch_wakes_the_waiter_of_an_applied_command():
    watch = notify.CommandWatch()
    state = {"done": False}
    results = []
    t = threading.Thread(target=lambda: results.append(watch.wait(7, lambda: state["done"], timeout=5, recheck=5)))
    started = time.monotonic()
    t.start()
    time.sleep(0.05)
    watch.applied([3, 4])            # another command: the waiter does not even look
    time.sleep(0.05)
    assert t.is_alive()
    watch.on_notify("1:5,7")         # named: trusted without reading the database again
    t.join(2)
    assert results == [True] and time.monotonic() - started < 1 and state["done"] is False
    # Gone from the registry after waiting; a lost notice still ends at the deadline, not done.
    assert watch.wait(8, lambda: False, timeout=0.05) is False
    assert watch._waiting == {}


def test_command_watch_rechecks_when_told_to_look_again():
    watch = notify.CommandWatch()
    calls = []

    def done() -> bool:
        calls.append(1)
        return len(calls) >= 2

    t = threading.Thread(target=lambda: watch.wait(1, done, timeout=5, recheck=5))
    t.start()
    time.sleep(0.05)
    watch.on_notify("9:*")
    t.join(2)
    assert not t.is_alive() and len(calls) == 2


@pytest.mark.postgres
@pytest.mark.skipif(not ON_PG, reason="needs PostgreSQL: set DATABASE_URL")
def test_order_entry_and_sequencer_notify_on_commit_only(session, session_factory, db_url):
    w = world(session)
    inst = instruments.create_instrument(
        session, w.operator.actor, symbol="NTFY", name_zh="通知", name_en="Notify", kind="pooled", vintage_from=2024,
        vintage_to=2024, sector="energy", reference_price=5000)
    wallets.deposit(session, w.operator.actor, w.buyer.holder.id, 1_000_000)
    session.commit()
    heard: list[tuple[str, str]] = []
    listener = notify.Listener(notify.dsn_of(db_url), [notify.QUEUED, notify.APPLIED],
                               lambda ch, payload: heard.append((ch, payload))).start()
    try:
        assert listener.ready.wait(5)
        _, cmd = orders.place_order(session, w.buyer.actor, OrderRequest(instrument="NTFY", side="buy", qty_kg=1000,
                                                                         price=5000))
        time.sleep(0.3)
        assert heard == []                      # not before the commit
        session.commit()
        seq = Sequencer(session_factory)
        woken = []
        seq.on_applied.append(woken.append)
        assert seq.run_once() == 1
        deadline = time.monotonic() + 5
        while len(heard) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert heard == [(notify.QUEUED, str(inst.id)), (notify.APPLIED, f"{inst.id}:{cmd.id}")]
        assert woken == [[cmd.id]]
    finally:
        listener.stop()


@pytest.mark.postgres
@pytest.mark.skipif(not ON_PG, reason="needs PostgreSQL: set DATABASE_URL")
def test_apps_share_one_listener_and_a_collected_subscriber_is_dropped(session, db_url):
    import gc

    from sqlalchemy import func, select

    class Sink:
        def __init__(self) -> None:
            self.got: list[str] = []

        def on_notify(self, payload: str) -> None:
            self.got.append(payload)

    a, b = Sink(), Sink()
    channel = "tanhui_test_channel"
    first = notify.subscribe(notify.dsn_of(db_url), channel, a.on_notify)
    assert notify.subscribe(notify.dsn_of(db_url), channel, b.on_notify) is first
    assert first.ready.wait(5)
    del b
    gc.collect()
    session.execute(select(func.pg_notify(channel, "hello")))
    session.commit()
    deadline = time.monotonic() + 5
    while not a.got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.got == ["hello"]
    assert len(notify._shared[(notify.dsn_of(db_url), channel)][1]) == 1
