"""A command that fails every time must not stall its instrument (exchange.sequencer).

The failure is injected into one order's settlement (`ListedUnits.deliver`, which every trade
calls): the commands around it settle, the failing one is set aside (its order rejected with reason
engine_error and its hold released), money and units are conserved, and the sequencer's book is the
one the database rebuilds. A failure that does not repeat, or one of the environment, sets nothing
aside; a command that cannot even be set aside halts the instrument.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from exchange import instruments, orders, wallets
from exchange import sequencer as seqmod
from exchange.models import (
    CommandStatus,
    Instrument,
    InstrumentStatus,
    Order,
    OrderCommand,
    OrderStatus,
    Trade,
)
from exchange.orders import OrderRequest
from exchange.pricing import buy_hold, fee, notional
from exchange.sequencer import Sequencer
from registry import invariants, units
from registry.models import AuditRecord, Block, BlockStatus, HolderKind
from tests.exchange.test_exchange_properties import books_match, exchange_problems, money_and_units
from tests.factories import Party, World, issued_batch, party, registered_project, world

SYMBOL = "CI-PV-2024"
PRICE = 60_00
TAKER_BP, MAKER_BP = 50, 10


@dataclass
class Market:
    w: World
    other: Party          # a second buyer, with 300,000 of its own
    inst_id: int
    seq: Sequencer


@pytest.fixture
def m(session, session_factory):
    w = world(session)
    p = registered_project(session, w)
    issued_batch(session, w, p, 50_000, year=2024)
    inst = instruments.create_instrument(
        session, w.operator.actor, symbol=SYMBOL, name_zh="光伏2024", name_en="PV 2024", kind="pooled",
        vintage_from=2024, vintage_to=2024, sector="energy", reference_price=PRICE, maker_fee_bp=MAKER_BP,
        taker_fee_bp=TAKER_BP)
    other = party(session, HolderKind.ENTERPRISE, "另一买方")
    wallets.deposit(session, w.operator.actor, w.buyer.holder.id, 1_000_000)
    wallets.deposit(session, w.operator.actor, other.holder.id, 300_000)
    session.commit()
    return Market(w, other, inst.id, Sequencer(session_factory))


def _place(session, p, side, qty_kg=1_000, price=PRICE):
    order, _ = orders.place_order(session, p.actor, OrderRequest(instrument=SYMBOL, side=side, qty_kg=qty_kg,
                                                                 price=price))
    session.commit()
    return order.id


def _fail_delivery(monkeypatch, when, times=None, error=lambda: RuntimeError("check constraint violated")):
    """Make `ListedUnits.deliver` raise when `when(ref, to_holder_id)` holds (`times` times at most);
    returns the list of calls that raised."""
    real = units.ListedUnits.deliver
    raised: list[str] = []

    def deliver(self, ref, quantity, to_holder_id, *, memo):
        if when(ref, to_holder_id) and (times is None or len(raised) < times):
            raised.append(ref)
            raise error()
        return real(self, ref, quantity, to_holder_id, memo=memo)

    monkeypatch.setattr(units.ListedUnits, "deliver", deliver)
    return raised


def _consistent(session, m, deposits):
    """The invariant checks of the stateful property test, and the book rebuilt from the database."""
    session.expire_all()
    problems = [str(v) for v in invariants.check(session, include_audit=False)] + wallets.check(session)
    problems += exchange_problems(session) + books_match(session, m.seq)
    inside, deposited, kg = money_and_units(session)
    assert (inside, deposited) == (deposits, deposits)
    assert sum(kg.values()) == 50_000
    assert problems == []
    session.rollback()


def _command(session, order_id, kind="place"):
    session.expire_all()
    return session.scalar(select(OrderCommand).where(OrderCommand.order_id == order_id, OrderCommand.kind == kind))


def _cost(qty_kg, price=PRICE, bp=TAKER_BP):
    return notional(price, qty_kg) + fee(notional(price, qty_kg), bp)


def test_a_sell_that_always_fails_is_set_aside_and_its_units_unlocked(session, m, monkeypatch):
    w = m.w
    bids = [_place(session, w.buyer, "buy") for _ in range(3)]
    assert m.seq.run_once() == 3
    s1, poison, s3 = (_place(session, w.owner, "sell") for _ in range(3))
    raised = _fail_delivery(monkeypatch, lambda ref, _to: ref == f"order:{poison}")
    assert m.seq.run_once() == 3

    # the batch of 3 fails; bisecting, [s1] applies, [poison] fails alone twice and is set aside,
    # then [s3] applies
    assert raised == [f"order:{poison}"] * 3
    o = session.get(Order, poison)
    assert (o.status, o.reason, o.filled_kg, o.remaining_kg) == (OrderStatus.REJECTED, "engine_error", 0, 0)
    cmd = _command(session, poison)
    assert cmd.status is CommandStatus.FAILED and cmd.processed_at is not None
    assert cmd.result == [{"kind": "failed", "reason": "engine_error", "order_id": poison, "order_rejected": True,
                           "error": "RuntimeError: check constraint violated"}]
    rec = session.scalar(select(AuditRecord).where(AuditRecord.action == "order_command.failed"))
    payload = json.loads(rec.payload)
    assert (rec.entity_id, payload["kind"], payload["order_id"]) == (str(cmd.id), "place", poison)
    assert session.scalar(select(func.count()).select_from(AuditRecord).where(
        AuditRecord.action == "order.rejected", AuditRecord.entity_id == str(poison))) == 1
    # the others settled in sequence order: s1 with the first bid, s3 with the second
    trades = session.execute(select(Trade.sell_order_id, Trade.buy_order_id).order_by(Trade.id)).all()
    assert [tuple(t) for t in trades] == [(s1, bids[0]), (s3, bids[1])]
    assert [session.get(Order, i).status for i in (s1, s3, *bids)] == [
        OrderStatus.FILLED, OrderStatus.FILLED, OrderStatus.FILLED, OrderStatus.FILLED, OrderStatus.OPEN]
    # the poison sell's 1,000 kg are held again, not listed: the owner has 50,000 - 2,000, nothing locked
    assert session.scalar(select(func.count()).select_from(Block).where(Block.hold_ref == f"order:{poison}")) == 0
    listed = select(func.sum(Block.quantity)).where(Block.status == BlockStatus.LISTED)
    assert session.scalar(listed) is None
    seller = wallets.balance(session, w.owner.holder.id)
    assert seller == wallets.Balance(2 * (notional(PRICE, 1_000) - fee(notional(PRICE, 1_000), TAKER_BP)), 0)
    session.rollback()
    _consistent(session, m, 1_300_000)
    # the instrument goes on: the next sell takes the last bid
    monkeypatch.undo()
    s4 = _place(session, w.owner, "sell")
    assert m.seq.run_once() == 1
    assert session.get(Order, s4).status is OrderStatus.FILLED
    _consistent(session, m, 1_300_000)


def test_a_buy_that_always_fails_is_rejected_and_its_cash_released(session, m, monkeypatch):
    w = m.w
    asks = [_place(session, w.owner, "sell") for _ in range(2)]
    assert m.seq.run_once() == 2
    b1 = _place(session, w.buyer, "buy")
    poison = _place(session, m.other, "buy", qty_kg=2_000)
    held = buy_hold(PRICE, 2_000, 1_000, TAKER_BP)
    assert wallets.balance(session, m.other.holder.id) == wallets.Balance(300_000 - held, held)
    b3 = _place(session, w.buyer, "buy")
    session.rollback()
    _fail_delivery(monkeypatch, lambda _ref, to: to == m.other.holder.id)
    assert m.seq.run_once() == 3

    o = session.get(Order, poison)
    assert (o.status, o.reason, o.cash_held, o.filled_kg) == (OrderStatus.REJECTED, "engine_error", 0, 0)
    assert wallets.balance(session, m.other.holder.id) == wallets.Balance(300_000, 0)
    assert _command(session, poison).status is CommandStatus.FAILED
    trades = session.execute(select(Trade.buy_order_id, Trade.sell_order_id).order_by(Trade.id)).all()
    assert [tuple(t) for t in trades] == [(b1, asks[0]), (b3, asks[1])]
    assert wallets.balance(session, w.buyer.holder.id) == wallets.Balance(1_000_000 - 2 * _cost(1_000), 0)
    session.rollback()
    _consistent(session, m, 1_300_000)


def test_a_cancel_that_always_fails_leaves_the_order_as_it_was(session, m, monkeypatch):
    w = m.w
    bid = _place(session, w.buyer, "buy")
    assert m.seq.run_once() == 1
    orders.cancel_order(session, w.buyer.actor, bid)
    session.commit()
    ask = _place(session, w.owner, "sell", qty_kg=2_000)
    real = seqmod._Batch.finish

    def finish(self, o):
        if o.id == bid and o.status is OrderStatus.CANCELLED:
            raise ValueError("bad cancel")
        return real(self, o)

    monkeypatch.setattr(seqmod._Batch, "finish", finish)
    assert m.seq.run_once() == 2
    cmd = _command(session, bid, "cancel")
    assert (cmd.status, cmd.result[0]["order_rejected"]) == (CommandStatus.FAILED, False)
    # the cancel did not happen: the bid stayed on the book and the sell behind it took it
    b = session.get(Order, bid)
    assert (b.status, b.filled_kg, b.cash_held) == (OrderStatus.FILLED, 1_000, 0)
    a = session.get(Order, ask)
    assert (a.status, a.remaining_kg) == (OrderStatus.OPEN, 1_000)
    session.rollback()
    _consistent(session, m, 1_300_000)


def test_a_failure_that_does_not_repeat_applies_normally(session, m, monkeypatch):
    w = m.w
    [_place(session, w.buyer, "buy") for _ in range(3)]
    assert m.seq.run_once() == 3
    sells = [_place(session, w.owner, "sell") for _ in range(3)]
    raised = _fail_delivery(monkeypatch, lambda ref, _to: ref == f"order:{sells[1]}", times=1)
    assert m.seq.run_once() == 3
    assert raised == [f"order:{sells[1]}"]
    session.expire_all()
    assert [session.get(Order, i).status for i in sells] == [OrderStatus.FILLED] * 3
    assert session.scalar(select(func.count()).select_from(OrderCommand).where(
        OrderCommand.status != CommandStatus.DONE)) == 0
    assert session.scalar(select(func.count()).select_from(Trade)) == 3
    session.rollback()
    _consistent(session, m, 1_300_000)


def test_a_transient_failure_never_sets_a_command_aside(session, m, monkeypatch):
    w = m.w
    [_place(session, w.buyer, "buy") for _ in range(2)]
    assert m.seq.run_once() == 2
    sells = [_place(session, w.owner, "sell") for _ in range(2)]
    lost = _fail_delivery(monkeypatch, lambda ref, _to: ref == f"order:{sells[1]}",
                          error=lambda: OperationalError("UPDATE", {}, Exception("server closed the connection")))
    for _ in range(3):
        with pytest.raises(OperationalError):
            m.seq.run_once()
    assert len(lost) == 3   # tried as the whole batch each time; nothing isolated, nothing set aside
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(OrderCommand).where(
        OrderCommand.status == CommandStatus.PENDING)) == 2
    assert session.scalar(select(func.count()).select_from(Trade)) == 0
    session.rollback()
    monkeypatch.undo()
    assert m.seq.run_once() == 2
    assert [session.get(Order, i).status for i in sells] == [OrderStatus.FILLED] * 2
    session.rollback()
    _consistent(session, m, 1_300_000)


def test_transient_tells_the_environment_from_the_command():
    import sqlite3

    import psycopg.errors as pg

    def sqlite(name, message):
        e = sqlite3.OperationalError(message)
        e.sqlite_errorname = name
        return OperationalError("UPDATE", {}, e)

    assert seqmod.transient(OperationalError("SELECT", {}, pg.SerializationFailure("could not serialize access")))
    assert seqmod.transient(OperationalError("SELECT", {}, pg.DeadlockDetected("deadlock detected")))
    assert seqmod.transient(OperationalError("SELECT", {}, pg.AdminShutdown("terminating connection")))
    assert seqmod.transient(sqlite("SQLITE_BUSY", "database is locked"))
    assert seqmod.transient(sqlite("SQLITE_IOERR_WRITE", "disk I/O error"))
    assert seqmod.transient(OperationalError("SELECT", {}, Exception("server closed the connection")))
    assert seqmod.transient(ConnectionResetError())
    # the same failure every time, whatever the moment: the commands' own
    assert not seqmod.transient(IntegrityError("INSERT", {}, pg.CheckViolation("violates check constraint")))
    assert not seqmod.transient(OperationalError("INSERT", {}, pg.ProgramLimitExceeded("too many parameters")))
    assert not seqmod.transient(sqlite("SQLITE_ERROR", "too many SQL variables"))
    assert not seqmod.transient(RuntimeError("order 7 holds 10, trade needs 20"))
    assert not seqmod.transient(KeyError("by_kg"))


def test_a_command_that_cannot_be_set_aside_halts_the_instrument(session, m, monkeypatch):
    w = m.w
    bid = _place(session, w.buyer, "buy", qty_kg=2_000)
    assert m.seq.run_once() == 1
    s1, poison, s3 = (_place(session, w.owner, "sell") for _ in range(3))
    _fail_delivery(monkeypatch, lambda ref, _to: ref == f"order:{poison}")
    real = seqmod._Batch.finish

    def finish(self, o):
        if o.id == poison:
            raise RuntimeError("cannot release")
        return real(self, o)

    monkeypatch.setattr(seqmod._Batch, "finish", finish)
    assert m.seq.run_once() == 1          # s1 applied; the poison halts the instrument
    inst = session.get(Instrument, m.inst_id)
    assert inst.status is InstrumentStatus.HALTED
    assert inst.status_reason.startswith(f"sequencer: command #{_command(session, poison).id} fails (RuntimeError")
    rec = session.scalar(select(AuditRecord).where(AuditRecord.action == "instrument.halted"))
    payload = json.loads(rec.payload)
    assert payload["from"] == "active" and payload["reason"] == inst.status_reason
    assert [session.get(Order, i).status for i in (s1, poison, s3)] == [
        OrderStatus.FILLED, OrderStatus.PENDING, OrderStatus.PENDING]
    assert _command(session, poison).status is CommandStatus.PENDING
    session.rollback()
    assert m.seq.run_once() == 0          # left alone while halted: no retry loop
    with pytest.raises(Exception, match="halted"):
        _place(session, w.owner, "sell")
    session.rollback()
    _consistent(session, m, 1_300_000)
    # the operators resume it once the cause is fixed; the queue goes on in order
    monkeypatch.undo()
    instruments.set_status(session, w.operator.actor, m.inst_id, "active", "fixed")
    session.commit()
    assert m.seq.run_once() == 2
    assert [session.get(Order, i).status for i in (bid, poison, s3)] == [
        OrderStatus.FILLED, OrderStatus.FILLED, OrderStatus.OPEN]
    session.rollback()
    _consistent(session, m, 1_300_000)
