"""Unit tests of the order book: every order type, every rejection reason, the known traps."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from matching.engine import (
    BUY,
    DAY,
    FOK,
    GTD,
    IOC,
    MARKET,
    SELL,
    STP_CANCEL_BOTH,
    STP_CANCEL_OLDEST,
    STP_DECREMENT,
)

TICK, LOT, MIN, MAX = 10, 100, 100, 10_000
BAND = (500, 2000)


def new_book(eng: ModuleType, band: tuple[int, int] | None = BAND) -> Any:
    return eng.OrderBook(eng.InstrumentSpec(TICK, LOT, MIN, MAX), band, "TEST")


def kinds(evs: list[Any]) -> list[str]:
    return [e.kind for e in evs]


def brief(evs: list[Any]) -> list[tuple[Any, ...]]:
    """(kind, order_id, price, qty, remaining, reason, maker_id) of each event."""
    return [(e.kind, e.order_id, e.price, e.qty, e.remaining, e.reason, e.maker_id) for e in evs]


def check(book: Any) -> None:
    assert book.validate() == []


@pytest.fixture
def book(eng: ModuleType) -> Any:
    return new_book(eng)


# --- limit orders and priority ------------------------------------------------------------------


def test_limit_rests_then_trades_price_time(book: Any) -> None:
    assert kinds(book.place(1, 10, BUY, 300, 1000)) == ["accepted"]
    book.place(2, 11, BUY, 200, 1000)
    book.place(3, 12, BUY, 100, 1010)
    assert book.best_bid() == 1010 and book.best_ask() is None
    evs = book.place(4, 20, SELL, 500, 990)
    assert brief(evs) == [
        ("accepted", 4, 990, 500, 500, "limit", 0),
        ("trade", 4, 1010, 100, 400, "", 3),  # better price first, at the maker's price
        ("done", 3, 1010, 0, 0, "", 0),
        ("trade", 4, 1000, 300, 100, "", 1),  # then time priority inside the level
        ("done", 1, 1000, 0, 0, "", 0),
        ("trade", 4, 1000, 100, 0, "", 2),
        ("done", 4, 990, 0, 0, "", 0),
    ]
    t = evs[1]
    assert (t.maker_owner, t.taker_owner, t.taker_id, t.side, t.maker_remaining) == (12, 20, 4, SELL, 0)
    assert book.depth(5) == ([(1000, 100, 1)], [])
    assert [e.seq for e in evs] == list(range(evs[0].seq, evs[0].seq + len(evs)))
    check(book)


def test_partial_fill_rests_remainder(book: Any) -> None:
    book.place(1, 10, SELL, 200, 1000)
    evs = book.place(2, 20, BUY, 500, 1000)
    assert kinds(evs) == ["accepted", "trade", "done"]
    assert book.order(2).remaining == 300 and book.best_bid() == 1000 and book.best_ask() is None
    check(book)


def test_depth_aggregates_n_deep(book: Any) -> None:
    for i, p in enumerate([1000, 990, 980, 1000]):
        book.place(i + 1, 1, BUY, 100 * (i + 1), p)
    for i, p in enumerate([1100, 1050, 1100]):
        book.place(10 + i, 2, SELL, 100, p)
    bids, asks = book.depth(2)
    assert bids == [(1000, 500, 2), (990, 200, 1)]
    assert asks == [(1050, 100, 1), (1100, 200, 2)]
    assert book.depth(0) == ([], [])
    assert [o.order_id for o in book.orders_of(1)] == [1, 4, 2, 3]
    assert book.order(99) is None
    assert len(book) == 7


# --- rejections ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"price": 0}, "invalid_price"),  # the zero-price trap
        ({"price": -10}, "invalid_price"),
        ({"price": 1005}, "price_off_tick"),
        ({"qty": 0}, "invalid_quantity"),
        ({"qty": -100}, "invalid_quantity"),
        ({"qty": 150}, "quantity_off_lot"),
        ({"qty": MAX + LOT}, "quantity_above_maximum"),
        ({"price": 2010}, "price_outside_band"),
        ({"price": 490}, "price_outside_band"),
        ({"price": None}, "missing_price"),
        ({"side": "hold"}, "invalid_side"),
        ({"order_type": "stop"}, "invalid_order_type"),
        ({"tif": "GTX"}, "invalid_time_in_force"),
        ({"stp": "nope"}, "invalid_stp_mode"),
        ({"tif": GTD}, "missing_expiry"),
        ({"expire_at": 5}, "unexpected_expiry"),
        ({"order_type": MARKET, "price": 1000}, "unexpected_price"),
        ({"order_type": MARKET, "price": None, "tif": "GTC"}, "invalid_time_in_force"),
        ({"order_type": MARKET, "price": None, "post_only": True}, "invalid_post_only"),
        ({"tif": IOC, "post_only": True}, "invalid_post_only"),
        ({"order_id": -1}, "invalid_order_id"),
    ],
)
def test_rejections(book: Any, kwargs: dict[str, Any], reason: str) -> None:
    book.place(1, 10, SELL, 100, 1500)
    before = book.state_hash()
    args: dict[str, Any] = {"order_id": 7, "owner": 10, "side": BUY, "qty": 100, "price": 1000} | kwargs
    evs = book.place(**args)
    assert kinds(evs) == ["rejected"] and evs[0].reason == reason
    # the book is untouched, only the sequence counter moved
    assert book.depth(10) == ([], [(1500, 100, 1)])
    assert book.seq == evs[0].seq and before != book.state_hash()
    check(book)


def test_below_minimum(eng: ModuleType) -> None:
    b = eng.OrderBook(eng.InstrumentSpec(TICK, LOT, 500, MAX), BAND)
    assert b.place(1, 1, BUY, 400, 1000)[0].reason == "quantity_below_minimum"


def test_wrong_python_types_are_rejected_in_pure_build() -> None:
    from matching import engine

    b = new_book(engine)
    assert b.place(1, 1, BUY, 100, 1000.0)[0].reason == "invalid_price"  # type: ignore[arg-type]
    assert b.place(1, 1, BUY, 100.0, 1000)[0].reason == "invalid_quantity"  # type: ignore[arg-type]
    assert b.place("x", 1, BUY, 100, 1000)[0].reason == "invalid_order_id"  # type: ignore[arg-type]
    assert len(b) == 0


def test_duplicate_and_unknown_ids(book: Any) -> None:
    book.place(1, 10, BUY, 100, 1000)
    assert book.place(1, 11, SELL, 100, 1100)[0].reason == "duplicate_order_id"
    for evs in (book.cancel(2), book.reduce(2, 100), book.replace(2, 1000)):
        assert kinds(evs) == ["rejected"] and evs[0].reason == "unknown_order_id" and evs[0].order_id == 2
    check(book)


def test_market_without_band_is_rejected(eng: ModuleType) -> None:
    b = new_book(eng, band=None)
    b.place(1, 1, SELL, 100, 10_000)  # no band: limit orders are not band-checked
    assert b.place(2, 2, BUY, 100, None, MARKET)[0].reason == "no_price_band"
    assert b.set_band(500, 490)[0].reason == "invalid_band"
    assert b.set_band(505, 900)[0].reason == "invalid_band"
    assert b.set_band(500, 20_000) == []
    assert kinds(b.place(2, 2, BUY, 100, None, MARKET)) == ["accepted", "trade", "done", "done"]
    assert b.band == (500, 20_000)
    assert b.clear_band() == [] and b.band is None


def test_bad_spec_raises(eng: ModuleType) -> None:
    with pytest.raises(ValueError):
        eng.InstrumentSpec(0, 100, 100, 1000)
    with pytest.raises(ValueError):
        eng.InstrumentSpec(10, 100, 150, 1000)
    with pytest.raises(ValueError):
        eng.OrderBook(eng.InstrumentSpec(10, 100, 100, 1000), (0, 100))


# --- market orders and the collar ---------------------------------------------------------------


def test_market_trades_up_to_collar_and_cancels_rest(book: Any) -> None:
    book.place(1, 1, SELL, 100, 1000)
    book.place(2, 1, SELL, 100, 2000)
    book.set_band(500, 1500)  # ask 2 is now outside the band: a market buy must not reach it
    evs = book.place(3, 2, BUY, 300, None, MARKET)
    assert brief(evs) == [
        ("accepted", 3, 0, 300, 300, "market", 0),
        ("trade", 3, 1000, 100, 200, "", 1),
        ("done", 1, 1000, 0, 0, "", 0),
        ("cancelled", 3, 0, 200, 0, "market_remainder", 0),
    ]
    assert book.best_ask() == 2000 and book.order(3) is None
    check(book)


def test_market_sell_collar_is_band_low(book: Any) -> None:
    book.place(1, 1, BUY, 100, 600)
    book.set_band(700, 1500)
    evs = book.place(2, 2, SELL, 100, None, MARKET)
    assert kinds(evs) == ["accepted", "cancelled"] and book.best_bid() == 600


def test_market_fok(book: Any) -> None:
    book.place(1, 1, SELL, 100, 1000)
    assert kinds(book.place(2, 2, BUY, 200, None, MARKET, FOK)) == ["accepted", "cancelled"]
    assert kinds(book.place(3, 2, BUY, 100, None, MARKET, FOK)) == ["accepted", "trade", "done", "done"]


# --- IOC / FOK ----------------------------------------------------------------------------------


def test_ioc_remainder_cancelled(book: Any) -> None:
    book.place(1, 1, SELL, 100, 1000)
    book.place(2, 1, SELL, 100, 1020)
    evs = book.place(3, 2, BUY, 400, 1010, tif=IOC)
    assert brief(evs)[-1] == ("cancelled", 3, 1010, 300, 0, "ioc_remainder", 0)
    assert book.order(3) is None and book.best_ask() == 1020 and book.best_bid() is None
    evs = book.place(4, 2, BUY, 100, 900, tif=IOC)  # nothing to match: all cancelled
    assert kinds(evs) == ["accepted", "cancelled"]
    check(book)


def test_fok_across_levels(book: Any) -> None:
    book.place(1, 1, SELL, 100, 1000)
    book.place(2, 1, SELL, 100, 1010)
    book.place(3, 1, SELL, 100, 1020)
    h = book.state_hash()
    # needs more than the levels inside the limit hold: killed, book untouched
    evs = book.place(4, 2, BUY, 300, 1010, tif=FOK)
    assert brief(evs)[1] == ("cancelled", 4, 1010, 300, 0, "fok_unfillable", 0)
    assert book.depth(5)[1] == [(1000, 100, 1), (1010, 100, 1), (1020, 100, 1)]
    # more than exists at all
    assert kinds(book.place(5, 2, BUY, 400, 2000, tif=FOK))[-1] == "cancelled"
    assert book.depth(5)[1] == [(1000, 100, 1), (1010, 100, 1), (1020, 100, 1)]
    assert h != book.state_hash()  # only the seq moved
    # exactly all three levels: fills
    evs = book.place(6, 2, BUY, 300, 1020, tif=FOK)
    assert kinds(evs) == ["accepted", "trade", "done", "trade", "done", "trade", "done", "done"]
    assert book.depth(5) == ([], [])
    check(book)


def test_fok_stp_rule(book: Any) -> None:
    book.place(1, 1, SELL, 100, 1000)
    book.place(2, 2, SELL, 100, 1000)  # own order of the FOK's owner, behind owner 1's
    book.place(3, 1, SELL, 100, 1010)
    # cancel-newest: the walk stops at the own order, 100 < 200: killed
    assert brief(book.place(4, 2, BUY, 200, 1010, tif=FOK))[1][5] == "fok_unfillable"
    assert brief(book.place(5, 2, BUY, 200, 1010, tif=FOK, stp=STP_DECREMENT))[1][5] == "fok_unfillable"
    # stopping before the own order is fine
    evs = book.place(6, 2, BUY, 100, 1010, tif=FOK)
    assert kinds(evs) == ["accepted", "trade", "done", "done"]
    book.place(7, 1, SELL, 100, 1000)
    # cancel-oldest: the own order is skipped (and cancelled on execution)
    evs = book.place(8, 2, BUY, 200, 1010, tif=FOK, stp=STP_CANCEL_OLDEST)
    assert [(e.kind, e.order_id, e.reason) for e in evs] == [
        ("accepted", 8, "limit"),
        ("cancelled", 2, "self_trade"),
        ("trade", 8, ""),
        ("done", 7, ""),
        ("trade", 8, ""),
        ("done", 3, ""),
        ("done", 8, ""),
    ]
    check(book)


# --- post-only ----------------------------------------------------------------------------------


def test_post_only(book: Any) -> None:
    book.place(1, 1, SELL, 100, 1000)
    assert book.place(2, 2, BUY, 100, 1000, post_only=True)[0].reason == "post_only_would_cross"
    assert kinds(book.place(3, 2, BUY, 100, 990, post_only=True)) == ["accepted"]
    # a post-only order replaced to a crossing price is rejected and keeps its place
    book.place(4, 3, BUY, 100, 990)
    assert book.replace(3, 1000)[0].reason == "post_only_would_cross"
    assert [o.order_id for o in book.orders_of(2)] == [3]
    assert book.depth(1)[0] == [(990, 200, 2)]
    book.place(5, 9, SELL, 100, 990)
    assert book.order(3) is None and book.order(4) is not None  # 3 kept its time priority
    check(book)


# --- cancel, reduce, replace --------------------------------------------------------------------


def test_cancel(book: Any) -> None:
    book.place(1, 1, BUY, 300, 1000)
    evs = book.cancel(1)
    assert brief(evs) == [("cancelled", 1, 1000, 300, 0, "user", 0)]
    assert book.depth(5) == ([], []) and kinds(book.cancel(1)) == ["rejected"]
    check(book)


def test_reduce_keeps_priority_replace_loses_it(book: Any) -> None:
    book.place(1, 1, BUY, 300, 1000)
    book.place(2, 2, BUY, 300, 1000)
    assert brief(book.reduce(1, 100)) == [("reduced", 1, 1000, 100, 200, "", 0)]
    evs = book.place(3, 3, SELL, 100, 1000)
    assert evs[1].maker_id == 1  # reduce kept order 1 first in the queue
    # replace to another price and back: order 1 now queues behind order 2
    assert book.replace(1, 990)[0].reason == "priority_lost"
    assert book.replace(1, 1000)[0].reason == "priority_lost"
    evs = book.place(4, 3, SELL, 100, 1000)
    assert evs[1].maker_id == 2
    # same price, smaller quantity keeps priority; larger loses it
    assert brief(book.replace(2, 1000, 100)) == [("replaced", 2, 1000, 100, 100, "priority_kept", 0)]
    assert book.order(2).remaining == 100
    assert book.replace(2, 1000, 500)[0].reason == "priority_lost"
    assert book.place(5, 3, SELL, 100, 1000)[1].maker_id == 1
    check(book)


def test_reduce_rejections_and_to_zero(book: Any) -> None:
    book.place(1, 1, BUY, 300, 1000)
    assert book.reduce(1, 0)[0].reason == "invalid_quantity"
    assert book.reduce(1, 150)[0].reason == "quantity_off_lot"
    assert brief(book.reduce(1, 500)) == [("cancelled", 1, 1000, 300, 0, "reduced_to_zero", 0)]
    assert len(book) == 0
    check(book)


def test_replace_rejections(book: Any) -> None:
    book.place(1, 1, BUY, 300, 1000)
    for args, reason in [
        ((0,), "invalid_price"),
        ((1005,), "price_off_tick"),
        ((3000,), "price_outside_band"),
        ((1000, -100), "invalid_quantity"),
        ((1000, 150), "quantity_off_lot"),
        ((1000, MAX + LOT), "quantity_above_maximum"),
    ]:
        evs = book.replace(1, *args)
        assert kinds(evs) == ["rejected"] and evs[0].reason == reason, args
    assert book.order(1).price == 1000 and book.order(1).remaining == 300
    check(book)


def test_replace_to_crossing_price_trades(book: Any) -> None:
    book.place(1, 1, SELL, 100, 1000)
    book.place(2, 2, BUY, 300, 990)
    evs = book.replace(2, 1000)
    assert kinds(evs) == ["replaced", "trade", "done"]
    assert book.order(2).remaining == 200 and book.order(2).price == 1000
    evs = book.place(3, 3, SELL, 200, 1000)
    assert kinds(evs) == ["accepted", "trade", "done", "done"]
    check(book)


# --- self-trade prevention ----------------------------------------------------------------------


def test_stp_cancel_newest_residual_after_partial_fill(book: Any) -> None:
    """The trap: after a partial fill, the residual would cross the owner's own resting order."""
    book.place(1, 9, SELL, 100, 1000)  # someone else
    book.place(2, 5, SELL, 100, 1010)  # owner 5's own ask
    evs = book.place(3, 5, BUY, 300, 1020)
    assert brief(evs) == [
        ("accepted", 3, 1020, 300, 300, "limit", 0),
        ("trade", 3, 1000, 100, 200, "", 1),
        ("done", 1, 1000, 0, 0, "", 0),
        ("cancelled", 3, 1020, 200, 0, "self_trade", 0),
    ]
    # the residual did not rest crossed: bid side empty, own ask untouched
    assert book.best_bid() is None and book.order(2).remaining == 100
    check(book)


def test_stp_cancel_oldest(book: Any) -> None:
    book.place(1, 9, SELL, 100, 1000)
    book.place(2, 5, SELL, 100, 1010)
    book.place(4, 9, SELL, 100, 1010)
    evs = book.place(3, 5, BUY, 400, 1020, stp=STP_CANCEL_OLDEST)
    assert [(e.kind, e.order_id) for e in evs] == [
        ("accepted", 3),
        ("trade", 3),
        ("done", 1),
        ("cancelled", 2),
        ("trade", 3),
        ("done", 4),
    ]
    assert book.best_bid() == 1020 and book.order(3).remaining == 200 and book.best_ask() is None
    check(book)


def test_stp_cancel_both(book: Any) -> None:
    book.place(1, 9, SELL, 100, 1000)
    book.place(2, 5, SELL, 100, 1010)
    evs = book.place(3, 5, BUY, 300, 1020, stp=STP_CANCEL_BOTH)
    assert [(e.kind, e.order_id, e.reason) for e in evs][-2:] == [
        ("cancelled", 2, "self_trade"),
        ("cancelled", 3, "self_trade"),
    ]
    assert book.depth(5) == ([], [])
    check(book)


def test_stp_decrement(book: Any) -> None:
    book.place(1, 5, SELL, 300, 1000)
    evs = book.place(2, 5, BUY, 100, 1000, stp=STP_DECREMENT)
    assert brief(evs) == [
        ("accepted", 2, 1000, 100, 100, "limit", 0),
        ("reduced", 1, 1000, 100, 200, "self_trade", 0),
        ("cancelled", 2, 1000, 100, 0, "self_trade", 0),
    ]
    book.place(3, 9, SELL, 100, 1010)
    evs = book.place(4, 5, BUY, 400, 1010, stp=STP_DECREMENT)
    assert brief(evs) == [
        ("accepted", 4, 1010, 400, 400, "limit", 0),
        ("cancelled", 1, 1000, 200, 0, "self_trade", 0),
        ("reduced", 4, 1010, 200, 200, "self_trade", 0),
        ("trade", 4, 1010, 100, 100, "", 3),
        ("done", 3, 1010, 0, 0, "", 0),
    ]
    assert book.order(4).remaining == 100 and book.best_bid() == 1010
    check(book)


# --- expiry -------------------------------------------------------------------------------------


def test_gtd_expiry(book: Any) -> None:
    book.place(1, 1, BUY, 100, 1000, tif=GTD, expire_at=50)
    book.place(2, 1, BUY, 100, 990, tif=GTD, expire_at=40)
    book.place(3, 1, BUY, 100, 980, tif=GTD, expire_at=60)
    book.place(4, 1, BUY, 100, 970)
    assert book.expire(39) == []
    evs = book.expire(50)
    assert [(e.kind, e.order_id, e.reason, e.qty) for e in evs] == [
        ("expired", 2, "gtd", 100),
        ("expired", 1, "gtd", 100),
    ]
    assert [o.order_id for o in book.orders_of(1)] == [3, 4]
    # the book remembers the time: a GTD at or before it is rejected
    assert book.place(5, 1, BUY, 100, 1000, tif=GTD, expire_at=50)[0].reason == "expiry_in_past"
    assert book.expire(-1)[0].reason == "invalid_time"
    check(book)


def test_day_orders_expire_at_end_of_day(book: Any) -> None:
    book.place(2, 1, BUY, 100, 1000, tif=DAY)
    book.place(1, 1, SELL, 100, 1100, tif=DAY)
    book.place(3, 1, SELL, 100, 1200)
    evs = book.end_of_day()
    assert [(e.kind, e.order_id, e.reason) for e in evs] == [("expired", 1, "day"), ("expired", 2, "day")]
    assert len(book) == 1
    check(book)


# --- snapshot, hash, replay ---------------------------------------------------------------------


def script(book: Any) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    out += [e.as_tuple() for e in book.place(1, 1, BUY, 300, 1000)]
    out += [e.as_tuple() for e in book.place(2, 2, BUY, 200, 1000, tif=GTD, expire_at=99)]
    out += [e.as_tuple() for e in book.place(3, 3, SELL, 100, 1050, tif=DAY, post_only=True)]
    out += [e.as_tuple() for e in book.place(4, 4, SELL, 600, 1000, stp=STP_DECREMENT)]
    out += [e.as_tuple() for e in book.expire(10)]
    out += [e.as_tuple() for e in book.place(5, 4, BUY, 100, 990)]
    return out


def test_snapshot_restore_and_replay(eng: ModuleType) -> None:
    a = new_book(eng)
    ev_a = script(a)
    b = new_book(eng)
    assert script(b) == ev_a and a.state_hash() == b.state_hash()
    snap = a.to_snapshot()
    import json

    c = eng.OrderBook.from_snapshot(json.loads(json.dumps(snap)))
    assert c.to_snapshot() == snap and c.state_hash() == a.state_hash()
    check(c)
    # the restored book behaves identically from here on
    for bk in (a, c):
        bk.place(10, 9, BUY, 1000, 1100)
    assert a.state_hash() == c.state_hash()
    assert a.depth(10) == c.depth(10)


def test_from_snapshot_rejects_garbage(eng: ModuleType) -> None:
    a = new_book(eng)
    a.place(1, 1, BUY, 100, 1000)
    a.place(2, 1, SELL, 100, 1100)
    snap = a.to_snapshot()
    with pytest.raises(ValueError):
        eng.OrderBook.from_snapshot({"version": 1})
    crossed = dict(snap, asks=[[2, 1, 900, 100, "GTC", 0, False, "cancel_newest"]])
    with pytest.raises(ValueError, match="crossed"):
        eng.OrderBook.from_snapshot(crossed)
    dup = dict(snap, asks=[[1, 1, 1100, 100, "GTC", 0, False, "cancel_newest"]])
    with pytest.raises(ValueError):
        eng.OrderBook.from_snapshot(dup)


def test_event_helpers(book: Any) -> None:
    e = book.place(1, 1, BUY, 100, 1000)[0]
    d = e.to_dict()
    assert d["kind"] == "accepted" and d["order_id"] == 1 and d["qty"] == 100
    assert e == e and hash(e) == hash(e) and "accepted" in repr(e)
    assert "tick_size=10" in repr(book.spec)
