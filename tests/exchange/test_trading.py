"""Order entry, the sequencer and delivery-versus-payment settlement."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from exchange import instruments, orders, wallets
from exchange.errors import InsufficientFunds
from exchange.models import CashAccountKind, Order, OrderStatus, Trade
from exchange.orders import OrderRequest
from exchange.pricing import buy_hold, notional
from exchange.sequencer import Sequencer, build_book
from registry import queries
from registry.errors import Conflict, InsufficientUnits, InvalidInput, NotFound
from registry.models import HolderKind
from tests.factories import World, issued_batch, party, registered_project, world


@dataclass
class Market:
    w: World
    inst_id: int
    seq: Sequencer


@pytest.fixture
def m(session, session_factory):
    w = world(session)
    p = registered_project(session, w)
    issued_batch(session, w, p, 50_000, year=2024)
    inst = instruments.create_instrument(
        session, w.operator.actor, symbol="CI-PV-2024", name_zh="光伏2024", name_en="PV 2024", kind="pooled",
        vintage_from=2024, vintage_to=2024, sector="energy", reference_price=60_00, maker_fee_bp=10, taker_fee_bp=50)
    wallets.deposit(session, w.operator.actor, w.buyer.holder.id, 1_000_000)
    session.commit()
    return Market(w, inst.id, Sequencer(session_factory))


def _place(session, p, **kw):
    order, _ = orders.place_order(session, p.actor, OrderRequest(instrument="CI-PV-2024", **kw))
    session.commit()
    return order.id


def _order(session, oid):
    session.expire_all()
    return session.get(Order, oid)


def _hash_matches_db(session, m):
    from exchange.models import Instrument
    session.expire_all()
    inst = session.get(Instrument, m.inst_id)
    assert build_book(session, inst).state_hash() == m.seq.books[m.inst_id].state_hash()
    session.rollback()


def test_buy_meets_sell_delivery_versus_payment(session, m):
    w = m.w
    sell = _place(session, w.owner, side="sell", qty_kg=10_000, price=60_00)
    assert _order(session, sell).status is OrderStatus.PENDING
    held = queries.holdings(session, w.owner.holder.id)
    assert held[0]["listed_kg"] == 10_000 and held[0]["held_kg"] == 40_000
    session.rollback()
    buy = _place(session, w.buyer, side="buy", qty_kg=4_000, price=61_00)
    hold = buy_hold(61_00, 4_000, 1000, 50)
    assert wallets.balance(session, w.buyer.holder.id) == wallets.Balance(1_000_000 - hold, hold)
    session.rollback()
    assert m.seq.run_once() == 2

    s, b = _order(session, sell), _order(session, buy)
    assert (s.status, s.filled_kg, s.remaining_kg) == (OrderStatus.OPEN, 4_000, 6_000)
    assert (b.status, b.filled_kg, b.remaining_kg, b.cash_held) == (OrderStatus.FILLED, 4_000, 0, 0)
    trade = session.scalar(select(Trade))
    amount = notional(60_00, 4_000)          # the maker's price: ¥60/t × 4 t = ¥240
    assert (trade.price, trade.qty_kg, trade.notional) == (60_00, 4_000, 240_00)
    assert (trade.buyer_fee, trade.seller_fee) == (120, 24)      # taker 50 bp, maker 10 bp
    assert wallets.balance(session, w.buyer.holder.id) == wallets.Balance(1_000_000 - amount - 120, 0)
    assert wallets.balance(session, w.owner.holder.id) == wallets.Balance(amount - 24, 0)
    assert wallets.system_account(session, CashAccountKind.FEES).balance == 144
    bought = queries.holdings(session, w.buyer.holder.id)
    assert bought[0]["held_kg"] == 4_000
    # Every movement of money and units is in the audit log.
    from registry.models import AuditRecord
    actions = {a for (a,) in session.execute(select(AuditRecord.action))}
    assert {"order.placed", "trade.settled", "units.delivered", "order.filled"} <= actions
    settled = session.scalar(select(AuditRecord).where(AuditRecord.action == "trade.settled"))
    assert '"notional":24000' in settled.payload and '"buyer_fee":120' in settled.payload
    session.rollback()
    _hash_matches_db(session, m)


def test_entry_rejections_hold_nothing(session, m):
    w = m.w
    cases = [
        (dict(side="buy", qty_kg=1_000, price=66_01), "price"),       # above the ±10% band
        (dict(side="buy", qty_kg=1_000, price=53_99), "price"),
        (dict(side="buy", qty_kg=1_500, price=60_00), "qty_kg"),      # off the lot
        (dict(side="buy", qty_kg=0, price=60_00), "qty_kg"),
        (dict(side="buy", qty_kg=1_000), "price"),                    # limit without price
        (dict(side="hold", qty_kg=1_000, price=60_00), "side"),
        (dict(side="buy", qty_kg=1_000, price=60_00, tif="GTD"), "expire_at"),
        (dict(side="buy", qty_kg=1_000, order_type="market", price=60_00), "price"),
        (dict(side="buy", qty_kg=1_000, order_type="market", tif="GTC"), "tif"),
        (dict(side="buy", qty_kg=1_000, price=60_00, tif="IOC", post_only=True), "post_only"),
    ]
    for kw, field in cases:
        with pytest.raises(InvalidInput) as e:
            orders.place_order(session, w.buyer.actor, OrderRequest(instrument="CI-PV-2024", **kw))
        assert e.value.field == field, kw
        session.rollback()
    with pytest.raises(InsufficientFunds) as e:
        orders.place_order(session, w.buyer.actor, OrderRequest(instrument="CI-PV-2024", side="buy",
                                                                qty_kg=200_000, price=60_00))
    assert e.value.field == "qty_kg"
    session.rollback()
    with pytest.raises(InsufficientUnits) as e:
        orders.place_order(session, w.owner.actor, OrderRequest(instrument="CI-PV-2024", side="sell",
                                                                qty_kg=51_000, price=60_00))
    assert e.value.field == "qty_kg"
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Order)) == 0
    assert wallets.balance(session, w.buyer.holder.id) == wallets.Balance(1_000_000, 0)


def test_halted_instrument_takes_no_orders(session, m):
    instruments.set_status(session, m.w.operator.actor, m.inst_id, "halted", "circuit breaker")
    session.commit()
    with pytest.raises(Conflict) as e:
        _place(session, m.w.buyer, side="buy", qty_kg=1_000, price=60_00)
    assert e.value.field == "instrument"


def test_undeliverable_units_cannot_be_sold(session, m):
    w = m.w
    p2 = registered_project(session, w, title="老项目")
    issued_batch(session, w, p2, 5_000, year=2019)     # wrong vintage for CI-PV-2024
    session.commit()
    _place(session, w.owner, side="sell", qty_kg=50_000, price=60_00)
    with pytest.raises(InsufficientUnits):
        _place(session, w.owner, side="sell", qty_kg=1_000, price=60_00)


def test_cancel_releases_units_and_cash(session, m):
    w = m.w
    sell = _place(session, w.owner, side="sell", qty_kg=5_000, price=62_00)
    buy = _place(session, w.buyer, side="buy", qty_kg=2_000, price=59_00)
    m.seq.run_once()
    orders.cancel_order(session, w.owner.actor, sell)
    orders.cancel_order(session, w.buyer.actor, buy)
    session.commit()
    m.seq.run_once()
    assert _order(session, sell).status is OrderStatus.CANCELLED and _order(session, buy).status is OrderStatus.CANCELLED
    assert queries.holdings(session, w.owner.holder.id)[0] == {
        "project_id": queries.holdings(session, w.owner.holder.id)[0]["project_id"],
        "project_title": "屋顶光伏", "vintage": 2024, "held_kg": 50_000, "listed_kg": 0}
    assert wallets.balance(session, w.buyer.holder.id) == wallets.Balance(1_000_000, 0)
    session.rollback()
    with pytest.raises(Conflict):
        orders.cancel_order(session, w.buyer.actor, buy)
    with pytest.raises(NotFound):
        orders.cancel_order(session, w.owner.actor, buy)       # another holder's order


def test_ioc_remainder_is_cancelled_and_released(session, m):
    w = m.w
    _place(session, w.owner, side="sell", qty_kg=3_000, price=60_00)
    buy = _place(session, w.buyer, side="buy", qty_kg=5_000, price=60_00, tif="IOC")
    m.seq.run_once()
    b = _order(session, buy)
    assert (b.status, b.filled_kg, b.reason, b.cash_held) == (OrderStatus.CANCELLED, 3_000, "ioc_remainder", 0)
    paid = notional(60_00, 3_000) + 90
    assert wallets.balance(session, w.buyer.holder.id) == wallets.Balance(1_000_000 - paid, 0)


def test_market_order_trades_within_the_collar(session, m):
    w = m.w
    _place(session, w.owner, side="sell", qty_kg=2_000, price=60_00)
    _place(session, w.owner, side="sell", qty_kg=2_000, price=66_00)
    buy = _place(session, w.buyer, side="buy", qty_kg=5_000, order_type="market")
    m.seq.run_once()
    b = _order(session, buy)
    assert (b.status, b.filled_kg) == (OrderStatus.CANCELLED, 4_000)
    assert b.notional_paid == notional(60_00, 2_000) + notional(66_00, 2_000)


def test_reduce_keeps_priority_replace_loses_it(session, m):
    w = m.w
    other = party(session, HolderKind.ENTERPRISE)
    session.commit()
    first = _place(session, w.owner, side="sell", qty_kg=5_000, price=61_00)
    m.seq.run_once()
    wallets.deposit(session, w.operator.actor, other.holder.id, 10)   # opens its wallet
    session.commit()
    orders.reduce_order(session, w.owner.actor, first, 2_000)
    session.commit()
    m.seq.run_once()
    o = _order(session, first)
    assert o.remaining_kg == 3_000 and o.status is OrderStatus.OPEN
    assert queries.holdings(session, w.owner.holder.id)[0]["listed_kg"] == 3_000
    session.rollback()
    orders.replace_order(session, w.owner.actor, first, 60_50)
    session.commit()
    m.seq.run_once()
    o = _order(session, first)
    assert o.price == 60_50
    session.rollback()
    _hash_matches_db(session, m)
    with pytest.raises(InvalidInput):
        orders.reduce_order(session, w.owner.actor, first, 500)


def test_restart_rebuilds_the_same_book(session, session_factory, m):
    w = m.w
    for price in (61_00, 62_00, 61_00, 63_00):
        _place(session, w.owner, side="sell", qty_kg=2_000, price=price)
    for price in (59_00, 58_00, 59_00):
        _place(session, w.buyer, side="buy", qty_kg=1_000, price=price)
    _place(session, w.buyer, side="buy", qty_kg=3_000, price=61_00)     # trades, partly
    m.seq.run_once()
    live = m.seq.books[m.inst_id]
    again = Sequencer(session_factory)
    assert again.run_once() == 0
    with session_factory() as s:
        from exchange.models import Instrument
        rebuilt = build_book(s, s.get(Instrument, m.inst_id))
    assert rebuilt.state_hash() == live.state_hash() and rebuilt.validate() == []


def test_a_failed_batch_settles_nothing_and_is_replayed(session, session_factory, m, monkeypatch):
    w = m.w
    _place(session, w.owner, side="sell", qty_kg=2_000, price=60_00)
    _place(session, w.buyer, side="buy", qty_kg=2_000, price=60_00)
    from exchange import sequencer as seqmod
    real = seqmod._Batch.settle
    monkeypatch.setattr(seqmod._Batch, "settle", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        m.seq.run_once()
    assert session.scalar(select(func.count()).select_from(Trade)) == 0
    session.rollback()
    monkeypatch.setattr(seqmod._Batch, "settle", real)
    assert m.seq.run_once() == 2
    assert session.scalar(select(func.count()).select_from(Trade)) == 1
    session.rollback()
    _hash_matches_db(session, m)


def test_gtd_orders_expire(session, m):
    w = m.w
    soon = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=1)
    oid = _place(session, w.buyer, side="buy", qty_kg=1_000, price=60_00, tif="GTD", expire_at=soon)
    m.seq.run_once()
    from exchange.models import OrderCommand
    session.add(OrderCommand(instrument_id=m.inst_id, kind="expire",
                             args={"now": orders.epoch(soon + dt.timedelta(seconds=1))}))
    session.commit()
    m.seq.run_once()
    o = _order(session, oid)
    assert (o.status, o.reason, o.cash_held) == (OrderStatus.EXPIRED, "gtd", 0)
    _hash_matches_db(session, m)


def test_a_reduce_queued_before_a_replace_up_keeps_the_replace_top_up(session, m):
    """A buy is reduced and then moved to a higher price before the sequencer runs: the replace's
    top-up is already held when the reduce is applied at the old price. The reduce must not give it
    back, or the trade at the new price would need more than the order holds (the sequencer then
    failed the batch on every retry)."""
    w = m.w
    buy = _place(session, w.buyer, side="buy", qty_kg=4_000, price=58_00)
    assert m.seq.run_once() == 1
    orders.reduce_order(session, w.buyer.actor, buy, 1_000)
    orders.replace_order(session, w.buyer.actor, buy, 62_00)
    session.commit()
    _place(session, w.owner, side="sell", qty_kg=3_000, price=62_00)
    assert m.seq.run_once() == 3
    b = _order(session, buy)
    assert (b.status, b.filled_kg, b.price) == (OrderStatus.FILLED, 3_000, 62_00)
    assert b.notional_paid == notional(62_00, 3_000)
    assert wallets.balance(session, w.buyer.holder.id) == wallets.Balance(
        1_000_000 - notional(62_00, 3_000) - b.fees_paid, 0)
    session.rollback()
    _hash_matches_db(session, m)
