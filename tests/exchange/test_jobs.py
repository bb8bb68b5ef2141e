"""Scheduled jobs: the daily close (reference price, next band, DAY expiry) and GTD expiry."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from sqlalchemy import func, select, text

from exchange import instruments, jobs, orders, reference, wallets
from exchange.models import CommandStatus, Instrument, Order, OrderCommand, OrderStatus, ReferencePrice
from exchange.orders import OrderRequest, epoch
from exchange.sequencer import Sequencer
from registry.db import utcnow
from tests.factories import issued_batch, registered_project, world

SYMBOL = "CI-PV-2024"


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


def _order(session, oid):
    session.expire_all()
    return session.get(Order, oid)


def _commands(session, kind):
    return session.scalar(select(func.count()).select_from(OrderCommand).where(OrderCommand.kind == kind))


def test_daily_close_publishes_moves_the_band_and_expires_day_orders(session, session_factory, m):
    w, inst_id, seq = m
    _place(session, w.owner, side="sell", qty_kg=2_000, price=62_00)
    _place(session, w.buyer, side="buy", qty_kg=2_000, price=62_00)           # a trade today at 62.00
    day_buy = _place(session, w.buyer, side="buy", qty_kg=3_000, price=59_00, tif="DAY")
    day_sell = _place(session, w.owner, side="sell", qty_kg=1_000, price=65_00, tif="DAY")
    gtc = _place(session, w.buyer, side="buy", qty_kg=1_000, price=58_00)
    seq.run_once()
    assert _order(session, day_buy).cash_held > 0
    session.rollback()
    woken = []

    results = jobs.run_daily_close(session_factory, wake=lambda: woken.append(1))
    assert results is not None and [(r.symbol, r.ok, r.reference_price, r.method) for r in results] == [
        (SYMBOL, True, 62_00, "vwap")]
    assert woken == [1]
    seq.run_once()

    today = reference.china_today()
    row = session.scalar(select(ReferencePrice))
    assert (row.trading_day, row.reference_price, row.band_low, row.band_high) == (today, 62_00, 55_80, 68_20)
    inst = session.get(Instrument, inst_id)
    assert (inst.reference_price, inst.band_low, inst.band_high) == (62_00, 55_80, 68_20)
    b, s, g = _order(session, day_buy), _order(session, day_sell), _order(session, gtc)
    assert (b.status, b.reason, b.remaining_kg, b.cash_held) == (OrderStatus.EXPIRED, "day", 0, 0)
    assert s.status is OrderStatus.EXPIRED
    assert g.status is OrderStatus.OPEN and g.cash_held > 0
    # The DAY orders' reserves are back: only the GTC buy still holds cash; the listed units are free.
    spent = 124_00 + 62                                                  # ¥124 notional + 50 bp taker fee
    assert wallets.balance(session, w.buyer.holder.id) == wallets.Balance(1_000_000 - spent - g.cash_held,
                                                                         g.cash_held)
    session.rollback()

    # A second run (another worker, a retry) publishes nothing new and expires nothing twice.
    late_day = _place(session, w.buyer, side="buy", qty_kg=1_000, price=60_00, tif="DAY")
    again = jobs.run_daily_close(session_factory)
    assert again is not None and [r.ok for r in again] == [True]
    seq.run_once()
    assert (_commands(session, "set_band"), _commands(session, "end_of_day")) == (1, 1)
    assert _order(session, late_day).status is OrderStatus.OPEN
    assert session.scalar(select(func.count()).select_from(ReferencePrice)) == 1


def test_queue_end_of_day_directly(session, m):
    w, inst_id, seq = m
    oid = _place(session, w.buyer, side="buy", qty_kg=1_000, price=59_00, tif="DAY")
    assert jobs.queue_end_of_day(session, [inst_id]) == [inst_id]
    session.commit()
    seq.run_once()
    o = _order(session, oid)
    assert (o.status, o.cash_held) == (OrderStatus.EXPIRED, 0)
    assert wallets.balance(session, w.buyer.holder.id) == wallets.Balance(1_000_000, 0)
    session.rollback()
    day = dt.date(2026, 3, 2)
    assert jobs.queue_end_of_day(session, [inst_id], day=day) == [inst_id]
    assert jobs.queue_end_of_day(session, [inst_id], day=day) == []
    session.commit()


def test_gtd_orders_expire_through_queue_expiry(session, session_factory, m):
    w, inst_id, seq = m
    now = utcnow().replace(microsecond=0)
    soon = _place(session, w.buyer, side="buy", qty_kg=1_000, price=59_00, tif="GTD",
                  expire_at=now + dt.timedelta(hours=1))
    later = _place(session, w.buyer, side="buy", qty_kg=1_000, price=58_00, tif="GTD",
                   expire_at=now + dt.timedelta(hours=3))
    seq.run_once()
    assert jobs.queue_expiry(session, epoch(now)) == []                # nothing due yet
    due = epoch(now + dt.timedelta(hours=2))
    assert jobs.queue_expiry(session, due) == [inst_id]
    assert jobs.queue_expiry(session, due) == []                       # already waiting
    session.commit()
    seq.run_once()
    a, b = _order(session, soon), _order(session, later)
    assert (a.status, a.reason, a.cash_held) == (OrderStatus.EXPIRED, "gtd", 0)
    assert b.status is OrderStatus.OPEN
    assert session.get(Instrument, inst_id).engine_now == due
    assert wallets.balance(session, w.buyer.holder.id).held == b.cash_held
    session.rollback()
    assert jobs.run_expiry(session_factory, epoch(now + dt.timedelta(hours=4))) == [inst_id]
    seq.run_once()
    assert _order(session, later).status is OrderStatus.EXPIRED
    assert wallets.balance(session, w.buyer.holder.id) == wallets.Balance(1_000_000, 0)


def test_build_scheduler_defines_the_jobs(session_factory):
    sched = jobs.build_scheduler(session_factory, close_time="15:00")
    by_id = {j.id: j for j in sched.get_jobs()}
    assert set(by_id) == {"exchange.daily_close", "exchange.expire_gtd", "offsets.expire_quotes",
                          "offsets.resume_paid"}
    close = by_id["exchange.daily_close"].trigger
    fields = {f.name: str(f) for f in close.fields}
    assert (fields["hour"], fields["minute"]) == ("15", "0")
    assert str(close.timezone) == "Asia/Shanghai"
    assert by_id["exchange.expire_gtd"].trigger.interval == dt.timedelta(seconds=60)
    sched.start(paused=True)
    try:
        nxt = sched.get_job("exchange.daily_close").next_run_time
        local = nxt.astimezone(zoneinfo.ZoneInfo("Asia/Shanghai"))
        assert (local.hour, local.minute) == (15, 0)
    finally:
        sched.shutdown(wait=False)
    with pytest.raises(ValueError):
        jobs.build_scheduler(session_factory, close_time="25:00")


@pytest.mark.postgres
def test_jobs_skip_when_another_process_holds_the_lock(session, session_factory, m):
    w, inst_id, _ = m
    _place(session, w.buyer, side="buy", qty_kg=1_000, price=59_00, tif="GTD",
           expire_at=utcnow() + dt.timedelta(minutes=5))
    with session_factory() as other, other.begin():
        assert other.execute(text("SELECT pg_try_advisory_xact_lock(:c, :k)"),
                             {"c": jobs.LOCK_CLASS, "k": jobs.EXPIRY_LOCK}).scalar()
        other.execute(text("SELECT pg_try_advisory_xact_lock(:c, :k)"), {"c": jobs.LOCK_CLASS, "k": jobs.CLOSE_LOCK})
        assert jobs.run_expiry(session_factory, epoch(utcnow() + dt.timedelta(hours=1))) is None
        assert jobs.run_daily_close(session_factory) is None
    assert session.scalar(select(func.count()).select_from(OrderCommand).where(
        OrderCommand.status == CommandStatus.PENDING, OrderCommand.kind != "place")) == 0
    assert session.scalar(select(func.count()).select_from(ReferencePrice)) == 0
    assert jobs.run_expiry(session_factory, epoch(utcnow() + dt.timedelta(hours=1))) == [inst_id]


def test_daily_close_catches_up_missed_days(session, session_factory, m):
    w, inst_id, seq = m
    today = reference.china_today()
    missed = today - dt.timedelta(days=3)
    reference.close_day(session, inst_id, missed)
    session.commit()
    results = jobs.run_daily_close(session_factory, catch_up_days=7)
    assert results is not None
    assert [(r.day, r.ok, r.method) for r in results] == [
        (today - dt.timedelta(days=2), True, "carried_forward"), (today - dt.timedelta(days=1), True, "carried_forward"),
        (today, True, "carried_forward")]
    assert results[-1].as_dict()["trading_day"] == today.isoformat()
    days = list(session.scalars(select(ReferencePrice.trading_day).order_by(ReferencePrice.trading_day)))
    assert days == [missed + dt.timedelta(days=i) for i in range(4)]
    # No more than `catch_up_days` are filled in; a failing day stops that instrument's later days.
    session.rollback()
    reference.set_blend(session, w.operator.actor, inst_id, {"vwap": 6000, "CEA": 4000})
    session.commit()
    later = jobs.run_daily_close(session_factory, today + dt.timedelta(days=10), catch_up_days=2)
    assert later is not None
    assert [(r.day, r.ok) for r in later] == [(today + dt.timedelta(days=8), False)]
    assert "external_index_missing" in (later[0].error or "")
