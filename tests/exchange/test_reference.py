"""The daily reference price: VWAP close, carried forward, the external blend, the next day's band."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from exchange import instruments, orders, reference, wallets
from exchange.models import (
    CommandStatus,
    ExternalIndex,
    Instrument,
    Order,
    OrderCommand,
    OrderStatus,
    ReferencePrice,
    Trade,
)
from exchange.orders import OrderRequest
from exchange.sequencer import Sequencer
from registry import audit
from registry.errors import Conflict, Forbidden, InvalidInput
from tests.factories import World, issued_batch, registered_project, world

DAY = dt.date(2026, 3, 2)       # a Monday, China time
SYMBOL = "CI-PV-2024"


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
        session, w.operator.actor, symbol=SYMBOL, name_zh="光伏2024", name_en="PV 2024", kind="pooled",
        vintage_from=2024, vintage_to=2024, sector="energy", reference_price=60_00, maker_fee_bp=10,
        taker_fee_bp=50)
    wallets.deposit(session, w.operator.actor, w.buyer.holder.id, 1_000_000)
    session.commit()
    return Market(w, inst.id, Sequencer(session_factory))


def _place(session, p, **kw):
    order, _ = orders.place_order(session, p.actor, OrderRequest(instrument=SYMBOL, **kw))
    session.commit()
    return order.id


def _cst(day: dt.date, hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    """A China wall-clock time as the naive UTC the database stores."""
    return dt.datetime(day.year, day.month, day.day, hh, mm, ss) - dt.timedelta(hours=8)


def _trade(session, m, asks, times):
    """Rest the asks [(price, kg)], sweep them with one buy, and date the trades `times` (in order
    of execution). Returns the new trades' ids."""
    before = session.scalar(select(func.max(Trade.id))) or 0
    for price, kg in asks:
        _place(session, m.w.owner, side="sell", qty_kg=kg, price=price)
    top = max(p for p, _ in asks)
    _place(session, m.w.buyer, side="buy", qty_kg=sum(kg for _, kg in asks), price=top)
    m.seq.run_once()
    trades = list(session.scalars(select(Trade).where(Trade.id > before).order_by(Trade.engine_seq)))
    assert len(trades) == len(times)
    for t, at in zip(trades, times, strict=True):
        t.executed_at = at
    session.commit()
    return [t.id for t in trades]


def _three_trades(session, m):
    # Fills at the makers' prices, best first: 60.00 × 3 t, 60.01 × 1 t, 61.00 × 2 t.
    _trade(session, m, [(60_00, 3_000), (61_00, 2_000), (60_01, 1_000)],
           [_cst(DAY, 0, 0, 0), _cst(DAY, 10, 30), _cst(DAY, 23, 59, 59)])


def _inst(session, m) -> Instrument:
    session.expire_all()
    return session.get(Instrument, m.inst_id)


def test_day_window_is_china_midnight_to_midnight():
    start, end = reference.day_window(DAY)
    assert start == dt.datetime(2026, 3, 1, 16, 0) and end == dt.datetime(2026, 3, 2, 16, 0)
    assert reference.china_date(dt.datetime(2026, 3, 1, 16, 0)) == DAY
    assert reference.china_date(dt.datetime(2026, 3, 1, 15, 59, 59)) == DAY - dt.timedelta(days=1)


def test_vwap_of_a_day_with_trades(session, m):
    _three_trades(session, m)
    # Trades just outside the day (on either side) do not count.
    _trade(session, m, [(65_00, 1_000)], [_cst(DAY, 0) - dt.timedelta(seconds=1)])
    _trade(session, m, [(55_00, 1_000)], [_cst(DAY + dt.timedelta(days=1), 0)])

    row = reference.close_day(session, m.inst_id, DAY)
    session.commit()
    # Σ p·q = 6000·3000 + 6001·1000 + 6100·2000 = 36,201,000; Σ q = 6,000 → 6033.5 → half up 6034.
    assert (row.open, row.high, row.low) == (60_00, 61_00, 60_00)
    assert (row.vwap, row.close, row.reference_price, row.method) == (60_34, 60_34, 60_34, "vwap")
    assert (row.volume_kg, row.turnover, row.trade_count) == (6_000, 180_00 + 60_01 + 122_00, 3)
    assert row.previous_reference == 60_00
    # Band for the next day, ±10% on the tick: ceil(6034 × 0.9) = 5431, floor(6034 × 1.1) = 6637.
    assert (row.band_low, row.band_high) == (54_31, 66_37)
    assert row.inputs["trades"]["sum_price_qty"] == 36_201_000
    assert row.inputs["trades"]["last"] == 61_00          # executed last, at 23:59:59 CST
    assert "Σ price×qty_kg" in row.inputs["close_formula"]
    inst = _inst(session, m)
    assert inst.reference_price == 60_34
    assert (inst.band_low, inst.band_high) == (54_00, 66_00)      # the sequencer has not moved it yet
    cmd = session.scalar(select(OrderCommand).where(OrderCommand.kind == "set_band"))
    assert cmd.status is CommandStatus.PENDING and (cmd.args["low"], cmd.args["high"]) == (54_31, 66_37)
    rec = [r for r in audit.history(session, "instrument", m.inst_id) if r.action == "reference.published"]
    assert len(rec) == 1 and '"reference_price":6034' in rec[0].payload


def test_new_band_reaches_the_engine_and_rejects_outside_orders(session, m):
    _three_trades(session, m)
    reference.close_day(session, m.inst_id, DAY)
    session.commit()
    # Before the sequencer applies the band, yesterday's band still holds.
    with pytest.raises(InvalidInput):
        orders.place_order(session, m.w.buyer.actor, OrderRequest(instrument=SYMBOL, side="buy", qty_kg=1_000,
                                                                  price=66_37))
    session.rollback()
    m.seq.run_once()
    inst = _inst(session, m)
    assert (inst.band_low, inst.band_high) == (54_31, 66_37)
    assert m.seq.books[m.inst_id].band == (54_31, 66_37)
    session.rollback()
    for price in (66_38, 54_30):
        with pytest.raises(InvalidInput) as e:
            orders.place_order(session, m.w.buyer.actor, OrderRequest(instrument=SYMBOL, side="buy",
                                                                      qty_kg=1_000, price=price))
        assert e.value.field == "price" and e.value.code == "price_outside_band"
        session.rollback()
    inside = _place(session, m.w.buyer, side="buy", qty_kg=1_000, price=66_37)
    m.seq.run_once()
    session.expire_all()
    assert session.get(Order, inside).status is OrderStatus.OPEN


def test_day_without_trades_carries_the_reference_forward(session, m):
    _three_trades(session, m)
    reference.close_day(session, m.inst_id, DAY)
    session.commit()
    nxt = DAY + dt.timedelta(days=1)
    row = reference.close_day(session, m.inst_id, nxt)
    session.commit()
    assert row.method == "carried_forward"
    assert (row.vwap, row.open, row.high, row.low) == (None, None, None, None)
    assert (row.volume_kg, row.turnover, row.trade_count) == (0, 0, 0)
    assert (row.close, row.reference_price, row.previous_reference) == (60_34, 60_34, 60_34)
    assert (row.band_low, row.band_high) == (54_31, 66_37)
    assert row.inputs["close_method"] == "carried_forward"


def test_first_day_without_trades_carries_the_listing_price(session, m):
    row = reference.close_day(session, m.inst_id, DAY)
    session.commit()
    assert (row.method, row.reference_price, row.previous_reference) == ("carried_forward", 60_00, 60_00)
    assert (row.band_low, row.band_high) == (54_00, 66_00)


def _indices(session, m):
    op = m.w.operator.actor
    reference.set_external_index(session, op, "CEA", DAY - dt.timedelta(days=3), 95_96, "SEEE daily report")
    reference.set_external_index(session, op, "cea", DAY + dt.timedelta(days=1), 99_99, "SEEE (later: unused)")
    reference.set_external_index(session, op, "CCER", DAY, 63_02, "Beijing Green Exchange")
    session.commit()


def test_blend_with_cea_and_ccer(session, m):
    _three_trades(session, m)
    _indices(session, m)
    reference.set_blend(session, m.w.operator.actor, m.inst_id, {"vwap": 5000, "CEA": 2500, "CCER": 2500})
    session.commit()
    row = reference.close_day(session, m.inst_id, DAY, actor=m.w.operator.actor)
    session.commit()
    # (6034×5000 + 9596×2500 + 6302×2500) / 10000 = 69,915,000 / 10000 = 6991.5 → half up 6992.
    assert (row.method, row.close, row.vwap, row.reference_price) == ("blend", 60_34, 60_34, 69_92)
    assert (row.band_low, row.band_high) == (62_93, 76_91)       # ceil(6292.8), floor(7691.2)
    idx = row.inputs["indices"]
    assert idx["CEA"] | {"entered_at": None} == {"price": 95_96, "day": "2026-02-27", "source": "SEEE daily report",
                                                 "weight": 2500, "entered_at": None}
    assert (idx["CCER"]["price"], idx["CCER"]["day"], idx["CCER"]["weight"]) == (63_02, "2026-03-02", 2500)
    assert row.inputs["weights"] == {"vwap": 5000, "CEA": 2500, "CCER": 2500}
    assert row.inputs["blend_numerator"] == 69_915_000
    assert row.inputs["formula"] == "reference = round_half_up((5000×close + 2500×CCER + 2500×CEA) / 10000 / tick) × tick"
    assert _inst(session, m).reference_price == 69_92


def test_blend_on_a_day_without_trades_blends_the_carried_close(session, m):
    _indices(session, m)
    reference.set_blend(session, m.w.operator.actor, m.inst_id, {"vwap": 6000, "CEA": 4000})
    session.commit()
    row = reference.close_day(session, m.inst_id, DAY)
    # (6000×6000 + 9596×4000) / 10000 = 7438.4 → 7438
    assert (row.method, row.close, row.reference_price) == ("blend", 60_00, 74_38)
    assert row.inputs["close_method"] == "carried_forward"
    assert "CCER" not in row.inputs["indices"]
    session.commit()


def test_blend_with_a_coarse_tick_rounds_once_to_the_tick(session, m):
    inst = _inst(session, m)
    inst.tick_size = 10                                      # ¥0.10 per tonne
    session.commit()
    _indices(session, m)
    reference.set_blend(session, m.w.operator.actor, m.inst_id, {"vwap": 5000, "CCER": 5000})
    session.commit()
    row = reference.close_day(session, m.inst_id, DAY)
    # (6000 + 6302) / 2 = 6151 → to the tick of 10, half up: 6150.
    assert row.reference_price == 61_50 and row.reference_price % 10 == 0
    assert (row.band_low, row.band_high) == (55_40, 67_60)   # ceil(5535/10)×10, floor(6765/10)×10
    session.commit()


def test_missing_index_fails_closed(session, m):
    _three_trades(session, m)
    reference.set_external_index(session, m.w.operator.actor, "CEA", DAY, 95_96, "SEEE")
    reference.set_blend(session, m.w.operator.actor, m.inst_id, {"vwap": 6000, "CEA": 2000, "CCER": 2000})
    session.commit()
    with pytest.raises(Conflict) as e:
        reference.close_day(session, m.inst_id, DAY)
    assert e.value.code == "external_index_missing" and e.value.field == "CCER" and "CCER" in e.value.message
    session.rollback()
    # An index entered after the day does not count either.
    reference.set_external_index(session, m.w.operator.actor, "CCER", DAY + dt.timedelta(days=1), 63_00, "BGE")
    session.commit()
    with pytest.raises(Conflict):
        reference.close_day(session, m.inst_id, DAY)
    session.rollback()
    assert session.scalar(select(func.count()).select_from(ReferencePrice)) == 0
    assert session.scalar(select(func.count()).select_from(OrderCommand).where(OrderCommand.kind == "set_band")) == 0
    assert _inst(session, m).reference_price == 60_00


def test_close_all_reports_the_failure_and_closes_the_rest(session, session_factory, m):
    other = instruments.create_instrument(
        session, m.w.operator.actor, symbol="CI-PV-2025", name_zh="光伏2025", name_en="PV 2025", kind="pooled",
        vintage_from=2025, vintage_to=2025, reference_price=50_00)
    reference.set_blend(session, m.w.operator.actor, m.inst_id, {"vwap": 6000, "CEA": 4000})
    delisted = instruments.create_instrument(
        session, m.w.operator.actor, symbol="CI-OLD", name_zh="旧", name_en="Old", kind="pooled",
        vintage_from=2020, vintage_to=2020, reference_price=10_00)
    instruments.set_status(session, m.w.operator.actor, delisted.id, "delisted", "expired contract")
    session.commit()
    results = reference.close_all(session_factory, DAY)
    assert [(r.symbol, r.ok) for r in results] == [(SYMBOL, False), ("CI-PV-2025", True)]
    assert "CEA" in (results[0].error or "")
    assert (results[1].reference_price, results[1].band, results[1].method) == (50_00, (45_00, 55_00),
                                                                                 "carried_forward")
    assert results[1].as_dict()["band"] == [45_00, 55_00]
    assert session.scalar(select(ReferencePrice.instrument_id)) == other.id


def test_close_is_idempotent_and_history_append_only(session, session_factory, m):
    _three_trades(session, m)
    first = reference.close_day(session, m.inst_id, DAY)
    session.commit()
    again = reference.close_day(session, m.inst_id, DAY)
    session.commit()
    assert again.id == first.id
    assert [r.ok for r in reference.close_all(session_factory, DAY)] == [True]
    assert session.scalar(select(func.count()).select_from(ReferencePrice)) == 1
    assert session.scalar(select(func.count()).select_from(OrderCommand).where(OrderCommand.kind == "set_band")) == 1
    published = [r for r in audit.history(session, "instrument", m.inst_id) if r.action == "reference.published"]
    assert len(published) == 1
    session.rollback()
    with pytest.raises(Conflict) as e:
        reference.close_day(session, m.inst_id, DAY - dt.timedelta(days=1))
    assert e.value.code == "day_out_of_order"


def test_delisted_instrument_is_not_closed(session, m):
    instruments.set_status(session, m.w.operator.actor, m.inst_id, "delisted", "gone")
    session.commit()
    with pytest.raises(Conflict):
        reference.close_day(session, m.inst_id, DAY)


def test_external_index_entry_rules(session, m):
    op, buyer = m.w.operator.actor, m.w.buyer.actor
    with pytest.raises(Forbidden):
        reference.set_external_index(session, buyer, "CEA", DAY, 95_96, "SEEE")
    for code, price, source, field in [("EUA", 95_96, "x", "code"), ("CEA", 0, "x", "price"),
                                       ("CEA", 95.96, "x", "price"), ("CEA", True, "x", "price"),
                                       ("CEA", 95_96, "  ", "source")]:
        with pytest.raises(InvalidInput) as e:
            reference.set_external_index(session, op, code, DAY, price, source)
        assert e.value.field == field
    idx = reference.set_external_index(session, op, " cea ", DAY, 95_96, "SEEE")
    session.commit()
    assert (idx.code, idx.price, idx.entered_by_id) == ("CEA", 95_96, op.user_id)
    with pytest.raises(Conflict) as e:
        reference.set_external_index(session, op, "CEA", DAY, 96_00, "SEEE")
    assert e.value.code == "duplicate"
    session.rollback()
    assert session.scalar(select(func.count()).select_from(ExternalIndex)) == 1
    assert [r.action for r in audit.history(session, "external_index", idx.id)] == ["external_index.entered"]
    assert reference.external_indices(session)[0] | {"entered_at": None} == {
        "code": "CEA", "trading_day": "2026-03-02", "price": 95_96, "source": "SEEE",
        "entered_by_id": op.user_id, "entered_at": None}


def test_blend_weight_rules(session, m):
    op = m.w.operator.actor
    with pytest.raises(Forbidden):
        reference.set_blend(session, m.w.buyer.actor, m.inst_id, {"vwap": 10_000})
    for bad in [{"vwap": 5000, "CEA": 4000}, {"CEA": 10_000}, {"vwap": 0, "CEA": 10_000},
                {"vwap": 6000, "EUA": 4000}, {"vwap": 6000, "CEA": -1, "CCER": 4001},
                {"vwap": 6000.0, "CEA": 4000}, {}, [("vwap", 10_000)]]:
        with pytest.raises(InvalidInput) as e:
            reference.set_blend(session, op, m.inst_id, bad)  # type: ignore[arg-type]
        assert e.value.field == "weights", bad
    inst = reference.set_blend(session, op, m.inst_id, {"vwap": 6000, "cea": 2000, "CCER": 2000})
    session.commit()
    assert _inst(session, m).blend_weights == {"vwap": 6000, "CEA": 2000, "CCER": 2000}
    reference.set_blend(session, op, inst.id, None)
    session.commit()
    assert _inst(session, m).blend_weights is None
    actions = [r.action for r in audit.history(session, "instrument", m.inst_id)]
    assert actions.count("instrument.blend_set") == 2
