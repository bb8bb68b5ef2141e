"""Public market data: depth, trades, daily history, reference history, the ticker."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from exchange import instruments, market_data, orders, reference, wallets
from exchange.models import Instrument, Trade
from exchange.orders import OrderRequest
from exchange.sequencer import Sequencer
from registry.db import utcnow
from tests.factories import issued_batch, registered_project, world

SYMBOL = "CI-PV-2024"
DAY = dt.date(2026, 3, 2)


@pytest.fixture
def m(session, session_factory):
    w = world(session)
    p = registered_project(session, w)
    issued_batch(session, w, p, 50_000, year=2024)
    inst = instruments.create_instrument(
        session, w.operator.actor, symbol=SYMBOL, name_zh="光伏2024", name_en="PV 2024", kind="pooled",
        vintage_from=2024, vintage_to=2024, sector="energy", reference_price=60_00)
    wallets.deposit(session, w.operator.actor, w.buyer.holder.id, 1_000_000)
    session.commit()
    return w, inst.id, Sequencer(session_factory)


def _place(session, p, **kw):
    order, _ = orders.place_order(session, p.actor, OrderRequest(instrument=SYMBOL, **kw))
    session.commit()
    return order.id


def test_depth_is_aggregated_per_price_best_first(session, m):
    w, inst_id, seq = m
    for side, price, kg, who in [("buy", 59_00, 1_000, w.buyer), ("buy", 59_00, 2_000, w.buyer),
                                 ("buy", 58_00, 1_000, w.buyer), ("buy", 59_50, 1_000, w.buyer),
                                 ("sell", 62_00, 1_000, w.owner), ("sell", 61_00, 3_000, w.owner),
                                 ("sell", 62_00, 1_000, w.owner)]:
        _place(session, who, side=side, qty_kg=kg, price=price)
    assert market_data.depth(session, inst_id) == {"bids": [], "asks": []}    # still pending
    session.rollback()         # SQLite: every transaction holds the write lock; let the sequencer in
    seq.run_once()
    d = market_data.depth(session, inst_id)
    assert d == {"bids": [(59_50, 1_000, 1), (59_00, 3_000, 2), (58_00, 1_000, 1)],
                 "asks": [(61_00, 3_000, 1), (62_00, 2_000, 2)]}
    bids, asks = seq.books[inst_id].depth(10)
    assert (d["bids"], d["asks"]) == (bids, asks)           # the database agrees with the engine
    assert market_data.depth(session, inst_id, levels=1) == {"bids": [(59_50, 1_000, 1)], "asks": [(61_00, 3_000, 1)]}
    session.rollback()
    # A partly filled order shows what rests.
    _place(session, w.buyer, side="buy", qty_kg=1_000, price=61_00)
    seq.run_once()
    assert market_data.depth(session, inst_id)["asks"][0] == (61_00, 2_000, 1)


def test_recent_trades_newest_first_with_the_takers_side(session, m):
    w, inst_id, seq = m
    _place(session, w.owner, side="sell", qty_kg=2_000, price=60_00)
    _place(session, w.buyer, side="buy", qty_kg=1_000, price=60_00)     # buyer takes
    seq.run_once()
    _place(session, w.buyer, side="buy", qty_kg=1_000, price=59_00)
    _place(session, w.owner, side="sell", qty_kg=1_000, price=59_00)    # seller takes
    seq.run_once()
    got = market_data.recent_trades(session, inst_id)
    assert [(t["price"], t["qty_kg"], t["notional"], t["side"]) for t in got] == [
        (59_00, 1_000, 59_00, "sell"), (60_00, 1_000, 60_00, "buy")]
    assert got[0]["executed_at"].endswith("Z") and got[0]["seq"] > got[1]["seq"]
    assert set(got[0]) == {"id", "seq", "price", "qty_kg", "notional", "side", "executed_at"}
    assert len(market_data.recent_trades(session, inst_id, limit=1)) == 1


def test_daily_and_reference_history(session, m):
    w, inst_id, seq = m
    _place(session, w.owner, side="sell", qty_kg=3_000, price=61_00)
    _place(session, w.buyer, side="buy", qty_kg=3_000, price=61_00)
    seq.run_once()
    for t in session.scalars(select(Trade)):
        t.executed_at = dt.datetime(2026, 3, 2, 2, 0)        # 10:00 CST
    reference.set_external_index(session, w.operator.actor, "CEA", DAY, 95_96, "SEEE")
    session.commit()
    reference.close_day(session, inst_id, DAY)
    reference.set_blend(session, w.operator.actor, inst_id, {"vwap": 8000, "CEA": 2000})
    session.commit()
    reference.close_day(session, inst_id, DAY + dt.timedelta(days=1))
    session.commit()

    hist = market_data.daily_history(session, inst_id)
    assert [h["trading_day"] for h in hist] == ["2026-03-02", "2026-03-03"]
    assert hist[0] == {"trading_day": "2026-03-02", "open": 61_00, "high": 61_00, "low": 61_00, "close": 61_00,
                       "vwap": 61_00, "volume_kg": 3_000, "turnover": 183_00, "trade_count": 1,
                       "reference_price": 61_00, "previous_reference": 60_00, "change": 1_00, "change_bp": 167,
                       "band_low": 54_90, "band_high": 67_10, "method": "vwap"}
    # Day 2: nothing traded, close carried (6100), blended with CEA: (6100×8000 + 9596×2000)/10000 = 6799.2
    assert (hist[1]["method"], hist[1]["close"], hist[1]["vwap"], hist[1]["reference_price"]) == (
        "blend", 61_00, None, 67_99)
    assert market_data.daily_history(session, inst_id, days=1)[0]["trading_day"] == "2026-03-03"

    refs = market_data.reference_history(session, inst_id)
    assert [(r["reference_price"], r["method"], r["weights"]) for r in refs] == [
        (61_00, "vwap", None), (67_99, "blend", {"vwap": 8000, "CEA": 2000})]
    assert refs[1]["inputs"]["indices"]["CEA"]["price"] == 95_96
    assert refs[1]["inputs"]["indices"]["CEA"]["source"] == "SEEE"
    assert refs[1]["inputs"]["formula"].startswith("reference = ")
    assert refs[1]["computed_at"].endswith("Z")


def test_summary_and_instrument_list(session, m):
    w, inst_id, seq = m
    _place(session, w.owner, side="sell", qty_kg=2_000, price=63_00)
    _place(session, w.buyer, side="buy", qty_kg=1_000, price=63_00)
    _place(session, w.buyer, side="buy", qty_kg=1_000, price=58_00)
    seq.run_once()
    now = utcnow()
    for t in session.scalars(select(Trade)):
        t.executed_at = now
    session.commit()
    inst = session.get(Instrument, inst_id)
    s = market_data.summary(session, inst)
    assert (s["symbol"], s["status"], s["reference_price"], s["band_low"], s["band_high"]) == (
        SYMBOL, "active", 60_00, 54_00, 66_00)
    assert (s["last_price"], s["change"], s["change_bp"]) == (63_00, 3_00, 500)
    assert (s["best_bid"], s["best_ask"]) == (58_00, 63_00)
    assert s["today"]["trading_day"] == reference.china_today().isoformat()
    assert (s["today"]["volume_kg"], s["today"]["turnover"], s["today"]["trade_count"]) == (1_000, 63_00, 1)
    assert s["reference_day"] is None and s["blend_weights"] is None
    listed = market_data.instruments(session)
    assert [i["symbol"] for i in listed] == [SYMBOL]
    instruments.set_status(session, w.operator.actor, inst_id, "delisted", "gone")
    session.commit()
    assert market_data.instruments(session) == []
    assert len(market_data.instruments(session, include_delisted=True)) == 1


def test_summary_of_a_quiet_market(session, m):
    _, inst_id, _ = m
    s = market_data.summary(session, session.get(Instrument, inst_id))
    assert (s["last_price"], s["change"], s["best_bid"], s["best_ask"]) == (None, None, None, None)
    assert s["today"]["volume_kg"] == 0 and s["today"]["vwap"] is None


def test_change_bp_rounds_half_away_from_zero():
    assert market_data._change_bp(1, 2) == 5000
    assert market_data._change_bp(-1_00, 60_00) == -167
    assert market_data._change_bp(1, 20_000) == 1          # 0.5 bp → 1
    assert market_data._change_bp(-1, 20_000) == -1
    assert market_data._change_bp(5, 0) == 0
