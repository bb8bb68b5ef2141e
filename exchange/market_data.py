"""Public market data: read-only queries returning plain dicts and lists (integers for money, kg).

Prices are minor units per tonne, quantities kg, amounts minor units, times ISO 8601 UTC ("...Z"),
trading days China dates. Nothing here names a buyer or a seller.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import matching
from exchange.models import Instrument, InstrumentStatus, Order, OrderStatus, ReferencePrice, Trade
from exchange.reference import china_today, day_trades

Level = tuple[int, int, int]   # (price, qty_kg, order_count)


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat() + "Z"


def _change_bp(change: int, base: int) -> int:
    """change / base in basis points, rounded half away from zero, integers only."""
    if base <= 0:
        return 0
    q = (2 * abs(change) * 10_000 + base) // (2 * base)
    return q if change >= 0 else -q


def _levels(session: Session, instrument_id: int, side: str, levels: int) -> list[Level]:
    price_order = Order.price.desc() if side == matching.BUY else Order.price.asc()
    stmt = (select(Order.price, func.sum(Order.remaining_kg), func.count(Order.id))
            .where(Order.instrument_id == instrument_id, Order.status == OrderStatus.OPEN, Order.side == side,
                   Order.remaining_kg > 0, Order.price.is_not(None))
            .group_by(Order.price).order_by(price_order).limit(levels))
    return [(int(p), int(q), int(n)) for p, q, n in session.execute(stmt)]


def depth(session: Session, instrument_id: int, levels: int = 10) -> dict[str, list[Level]]:
    """The book aggregated per price from the orders the sequencer has committed:
    {"bids": [(price, qty_kg, order_count)] best (highest) first, "asks": [...] best (lowest) first}."""
    levels = max(1, min(int(levels), 100))
    return {"bids": _levels(session, instrument_id, matching.BUY, levels),
            "asks": _levels(session, instrument_id, matching.SELL, levels)}


def recent_trades(session: Session, instrument_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """The latest trades, newest first. `side` is the taker's (aggressor's) side."""
    limit = max(1, min(int(limit), 500))
    stmt = (select(Trade).where(Trade.instrument_id == instrument_id)
            .order_by(Trade.executed_at.desc(), Trade.engine_seq.desc()).limit(limit))
    return [{"id": t.id, "seq": t.engine_seq, "price": t.price, "qty_kg": t.qty_kg, "notional": t.notional,
             "side": matching.SELL if t.maker_order_id == t.buy_order_id else matching.BUY,
             "executed_at": _iso(t.executed_at)} for t in session.scalars(stmt)]


def _rows(session: Session, instrument_id: int, days: int) -> list[ReferencePrice]:
    days = max(1, min(int(days), 3660))
    stmt = (select(ReferencePrice).where(ReferencePrice.instrument_id == instrument_id)
            .order_by(ReferencePrice.trading_day.desc()).limit(days))
    return list(reversed(list(session.scalars(stmt))))


def daily_history(session: Session, instrument_id: int, days: int = 90) -> list[dict[str, Any]]:
    """The latest `days` closed trading days, oldest first: OHLC (close = VWAP or carried forward),
    VWAP, volume, turnover, trade count, the reference price, the next day's band and the method."""
    return [{"trading_day": r.trading_day.isoformat(), "open": r.open, "high": r.high, "low": r.low,
             "close": r.close, "vwap": r.vwap, "volume_kg": r.volume_kg, "turnover": r.turnover,
             "trade_count": r.trade_count, "reference_price": r.reference_price,
             "previous_reference": r.previous_reference,
             "change": r.reference_price - r.previous_reference,
             "change_bp": _change_bp(r.reference_price - r.previous_reference, r.previous_reference),
             "band_low": r.band_low, "band_high": r.band_high, "method": r.method}
            for r in _rows(session, instrument_id, days)]


def reference_history(session: Session, instrument_id: int, days: int = 90) -> list[dict[str, Any]]:
    """The published reference prices, oldest first, each with every input it was computed from
    (trades summary, external indices with price, day, source and weight, the formula)."""
    return [{"trading_day": r.trading_day.isoformat(), "reference_price": r.reference_price, "method": r.method,
             "close": r.close, "vwap": r.vwap, "previous_reference": r.previous_reference,
             "band_low": r.band_low, "band_high": r.band_high, "weights": (r.inputs or {}).get("weights"),
             "inputs": r.inputs, "computed_at": _iso(r.computed_at)}
            for r in _rows(session, instrument_id, days)]


def summary(session: Session, instrument: Instrument) -> dict[str, Any]:
    """One instrument's ticker: last trade, change against the reference price in force (the last
    published one), today's (China date) volume, best bid and ask, reference price and band."""
    last = session.execute(select(Trade.price, Trade.executed_at).where(Trade.instrument_id == instrument.id)
                           .order_by(Trade.executed_at.desc(), Trade.engine_seq.desc()).limit(1)).first()
    today = day_trades(session, instrument.id, china_today())
    book = depth(session, instrument.id, levels=1)
    last_price = int(last[0]) if last else None
    ref = instrument.reference_price
    last_day = session.scalar(select(func.max(ReferencePrice.trading_day))
                              .where(ReferencePrice.instrument_id == instrument.id))
    return {
        "id": instrument.id, "symbol": instrument.symbol, "name_zh": instrument.name_zh,
        "name_en": instrument.name_en, "kind": instrument.kind.value, "status": instrument.status.value,
        "currency": instrument.currency, "vintage_from": instrument.vintage_from, "vintage_to": instrument.vintage_to,
        "tick_size": instrument.tick_size, "lot_size_kg": instrument.lot_size_kg,
        "min_qty_kg": instrument.min_qty_kg, "max_qty_kg": instrument.max_qty_kg,
        "fees_bp": {"maker": instrument.maker_fee_bp, "taker": instrument.taker_fee_bp},
        "reference_price": ref, "reference_day": last_day.isoformat() if last_day else None,
        "band_low": instrument.band_low, "band_high": instrument.band_high, "band_bp": instrument.band_bp,
        "blend_weights": instrument.blend_weights,
        "last_price": last_price, "last_trade_at": _iso(last[1]) if last else None,
        "change": last_price - ref if last_price is not None else None,
        "change_bp": _change_bp(last_price - ref, ref) if last_price is not None else None,
        "today": {"trading_day": china_today().isoformat(), "volume_kg": today.volume_kg,
                  "turnover": today.turnover, "trade_count": today.trade_count, "open": today.open,
                  "high": today.high, "low": today.low, "vwap": today.vwap},
        "best_bid": book["bids"][0][0] if book["bids"] else None,
        "best_ask": book["asks"][0][0] if book["asks"] else None,
    }


def instruments(session: Session, *, include_delisted: bool = False) -> list[dict[str, Any]]:
    """Every listed instrument's summary, by symbol."""
    stmt = select(Instrument).order_by(Instrument.symbol)
    if not include_delisted:
        stmt = stmt.where(Instrument.status != InstrumentStatus.DELISTED)
    return [summary(session, i) for i in session.scalars(stmt)]
