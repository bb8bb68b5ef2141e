"""Offset orders filled on the order book: an IOC limit buy at the quote, never above it."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

import matching
from exchange import offsets, orders, wallets
from exchange.offset_models import OffsetStatus
from exchange.orders import OrderRequest
from registry import invariants
from registry.errors import InsufficientUnits, InvalidInput
from registry.models import Block, HolderKind, Retirement
from tests.factories import party
from tests.offsets.conftest import CASH, SYMBOL, make_book

EXCHANGE = {"instrument": SYMBOL, "source": "exchange"}


@pytest.fixture
def book(session, session_factory, market):  # type: ignore[no-untyped-def]
    return make_book(session, session_factory, market)


def _problems(session) -> list[str]:
    return [str(v) for v in invariants.check(session, include_audit=False)] + wallets.check(session) + \
        offsets.check(session)


def test_buy_on_the_book_at_the_quote(session, session_factory, market, book) -> None:
    m = market
    o = offsets.create_offset(session, m.buyer.actor, quantity_kg=6_000, beneficiary="交易所买入", preference=EXCHANGE)
    # Walks the asks: 5 t at ¥59 and 1 t of the 3 t at ¥61, so the limit is ¥61. The quote reserves
    # what a buy at ¥61 holds: 36,600 notional + 183 (50 bp, rounded up) + 6 (1 per lot) = 36,789.
    assert (o.source, o.price, o.notional, o.fee, o.total, o.reserved_kg) == ("exchange", 61_00, 36_600, 189,
                                                                              36_789, 0)
    offsets.confirm_offset(session, m.buyer.actor, o.id)
    session.commit()
    offsets.fulfil(session, o.id)
    session.commit()
    assert o.status is OffsetStatus.PAID and o.exchange_order_id is not None
    assert offsets.fulfil(session, o.id).status is OffsetStatus.PAID       # the engine has not answered yet
    session.commit()
    book.run_once()
    session.expire_all()
    offsets.fulfil(session, o.id)
    session.commit()
    # Trades: 5,000 kg at ¥59 = 29,500 + fee 148 (147.5 half up); 1,000 kg at ¥61 = 6,100 + fee 31 (30.5).
    spent = 29_500 + 148 + 6_100 + 31
    assert (o.status, o.filled_kg, o.refunded_amount) == (OffsetStatus.RETIRED, 6_000, 36_789 - spent)
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH - spent, 0)
    r = session.get(Retirement, o.retirement_id)
    assert r.quantity_kg == 6_000 and r.beneficiary == "交易所买入"
    assert session.scalar(select(func.sum(Block.quantity)).where(Block.retirement_id == r.id)) == 6_000
    session.rollback()
    assert offsets.resume_paid(session_factory) == []
    assert _problems(session) == []


def test_partial_and_empty_fills_refund_the_rest(session, session_factory, market, book) -> None:
    m = market
    a = offsets.create_offset(session, m.buyer.actor, quantity_kg=8_000, beneficiary="a", preference=EXCHANGE)
    rival = party(session, HolderKind.ENTERPRISE, "抢先者")
    wallets.deposit(session, m.w.operator.actor, rival.holder.id, CASH)
    session.commit()
    assert a.price == 61_00
    # Before the offset's buy reaches the book, a rival takes 6 t of the 8 t.
    orders.place_order(session, rival.actor, OrderRequest(instrument=SYMBOL, side=matching.BUY, qty_kg=6_000,
                                                          price=61_00, tif="IOC"))
    offsets.confirm_offset(session, m.buyer.actor, a.id)
    session.commit()
    book.run_once()
    offsets.fulfil(session, a.id)
    session.commit()
    book.run_once()
    session.rollback()
    offsets.resume_paid(session_factory)
    session.expire_all()
    a = offsets.get_offset(session, m.buyer.actor, a.id)
    # The rival got 5 t at ¥59 and 1 t at ¥61; the offset the last 2 t at ¥61: 12,200 + fee 61.
    assert (a.status, a.filled_kg) == (OffsetStatus.RETIRED, 2_000)
    assert a.reason == f"partly filled: 2000 of 8000 kg; {a.total - 12_261} refunded"
    assert a.refunded_amount == a.total - 12_261
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH - 12_261, 0)

    with pytest.raises(InsufficientUnits):      # the book is empty now
        offsets.create_offset(session, m.buyer.actor, quantity_kg=1_000, beneficiary="b", preference=EXCHANGE)
    with pytest.raises(InvalidInput) as e:
        offsets.create_offset(session, m.buyer.actor, quantity_kg=1_500, beneficiary="b", preference=EXCHANGE)
    assert e.value.field == "quantity_kg"
    session.rollback()
    assert _problems(session) == []


def test_nothing_left_at_the_quote_refunds_everything(session, session_factory, market, book) -> None:
    m = market
    o = offsets.create_offset(session, m.buyer.actor, quantity_kg=3_000, beneficiary="late", preference=EXCHANGE)
    assert o.price == 59_00
    offsets.confirm_offset(session, m.buyer.actor, o.id)
    rival = party(session, HolderKind.ENTERPRISE, "抢先者")
    wallets.deposit(session, m.w.operator.actor, rival.holder.id, CASH)
    orders.place_order(session, rival.actor, OrderRequest(instrument=SYMBOL, side=matching.BUY, qty_kg=5_000,
                                                          price=59_00, tif="IOC"))
    session.commit()
    book.run_once()            # the rival empties the ¥59 level first
    offsets.fulfil(session, o.id)
    session.commit()
    book.run_once()            # the offset's IOC at ¥59 finds only ¥61 asks: nothing above the quote
    session.rollback()
    offsets.resume_paid(session_factory)
    session.expire_all()
    o = offsets.get_offset(session, m.buyer.actor, o.id)
    assert (o.status, o.filled_kg, o.refunded_amount) == (OffsetStatus.REFUNDED, 0, o.total)
    assert o.reason == "nothing was offered at or below the quoted price"
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH, 0)
    assert session.scalar(select(func.count()).select_from(Retirement)) == 0
    assert _problems(session) == []


def test_exchange_offset_over_http(app, client, session, market, book) -> None:
    from registry import holders
    from registry.models import User
    m = market
    h = {"Authorization": f"Bearer {holders.create_token(session, session.get(User, m.buyer.actor.user_id))[1]}"}
    session.commit()
    q = client.post("/api/v1/offsets", headers=h, json={"quantity_kg": 2_000, "beneficiary": "API",
                                                        "preference": EXCHANGE})
    assert q.status_code == 201, q.json
    assert q.json["source"] == "exchange" and q.json["instrument"] == SYMBOL
    assert q.json["quote"]["fee_note"].startswith("the most the fee can be")
    app.extensions["sequencer"] = book
    book.start(idle_s=0.01)
    try:
        c = client.post(f"/api/v1/offsets/{q.json['id']}/confirm", headers=h)
    finally:
        book.stop()
        app.extensions.pop("sequencer")
    assert c.status_code == 200, c.json
    # 2,000 kg at ¥59: 11,800 + fee 59 (50 bp).
    assert (c.json["status"], c.json["filled_kg"]) == ("retired", 2_000)
    assert c.json["paid_amount"] - c.json["refunded_amount"] == 11_859
    assert c.json["certificate"]["number"] == c.json["certificate_number"]


def test_card_paid_exchange_buy_refunds_the_unspent_to_the_card(session, session_factory, market, book) -> None:
    from exchange.models import Withdrawal
    m = market
    refunds: list[int] = []
    previous = offsets.set_card_refunder(lambda s, o, amount: refunds.append(amount) or "re_1")
    try:
        o = offsets.create_offset(session, m.buyer.actor, quantity_kg=6_000, beneficiary="card", payment="card",
                                  preference=EXCHANGE)
        offsets.confirm_offset(session, m.buyer.actor, o.id)
        offsets.mark_paid(session, o.id, payment_ref="pi_x")
        offsets.fulfil(session, o.id)
        session.commit()
        book.run_once()
        session.rollback()
        assert offsets.resume_paid(session_factory) == [o.id]
        session.expire_all()
        o = offsets.get_offset(session, m.buyer.actor, o.id)
        spent = 29_500 + 148 + 6_100 + 31            # as in test_buy_on_the_book_at_the_quote
        assert (o.status, o.refunded_amount, o.refund_ref) == (OffsetStatus.RETIRED, o.total - spent, "re_1")
        assert refunds == [o.total - spent]
        assert session.scalars(select(Withdrawal.amount)).all() == [o.total - spent]
        assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH, 0)   # the card paid it all
    finally:
        offsets.set_card_refunder(previous)
    assert _problems(session) == []
