"""Order entry: validate, reserve (cash for a buy, units for a sell), persist as pending with a
sequence number (the command id), and leave the rest to the sequencer.

Any web worker may call these; only the sequencer changes the book. Every rejection here is a
domain error naming the field, raised before anything is held.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

import matching
from exchange import notify, wallets
from exchange.errors import InsufficientFunds, MarketClosed
from exchange.instruments import deliverable, get_instrument
from exchange.models import (
    CommandStatus,
    Instrument,
    InstrumentStatus,
    Order,
    OrderCommand,
    OrderStatus,
)
from exchange.pricing import buy_hold
from registry import audit, units
from registry.actors import Actor
from registry.db import utcnow
from registry.errors import Conflict, InsufficientUnits, InvalidInput, NotFound, Suspended
from registry.models import Holder

SIDES = (matching.BUY, matching.SELL)
TIFS = {matching.LIMIT: ("GTC", "DAY", "GTD", "IOC", "FOK"), matching.MARKET: ("IOC", "FOK")}
STP_MODES = ("cancel_newest", "cancel_oldest", "cancel_both", "decrement")


@dataclass(frozen=True, slots=True)
class OrderRequest:
    instrument: str | int
    side: str
    qty_kg: int
    order_type: str = "limit"
    price: int | None = None
    tif: str | None = None
    expire_at: dt.datetime | None = None
    post_only: bool = False
    stp: str = "cancel_newest"


def epoch(t: dt.datetime) -> int:
    """Seconds since 1970 UTC: the engine's time scale for GTD expiry."""
    return int(t.replace(tzinfo=dt.UTC).timestamp()) if t.tzinfo is None else int(t.timestamp())


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_open(inst: Instrument, now: dt.datetime) -> None:
    if inst.status is not InstrumentStatus.ACTIVE:
        raise Conflict(f"{inst.symbol} is {inst.status.value}", field="instrument", code="instrument_not_active")
    hours = inst.trading_hours
    if hours:
        # {"days": [0..6 Mon=0], "open": "HH:MM", "close": "HH:MM"} in the instrument's local time (UTC+8).
        local = now + dt.timedelta(hours=8)
        hhmm = local.strftime("%H:%M")
        if local.weekday() not in hours.get("days", range(7)) or not (
                hours.get("open", "00:00") <= hhmm < hours.get("close", "24:00")):
            raise MarketClosed(f"{inst.symbol} trades {hours}", field="instrument")


def _validate(inst: Instrument, req: OrderRequest, now: dt.datetime) -> str:
    """Check the request against the instrument; returns the time in force to use."""
    if req.side not in SIDES:
        raise InvalidInput("side must be buy or sell", field="side")
    if req.order_type not in TIFS:
        raise InvalidInput("order_type must be limit or market", field="order_type")
    tif = req.tif or ("GTC" if req.order_type == matching.LIMIT else "IOC")
    if tif not in TIFS[req.order_type]:
        raise InvalidInput(f"a {req.order_type} order takes time_in_force {TIFS[req.order_type]}", field="tif")
    if not _is_int(req.qty_kg) or req.qty_kg <= 0:
        raise InvalidInput("qty_kg must be a positive integer (kg)", field="qty_kg")
    if req.qty_kg % inst.lot_size_kg:
        raise InvalidInput(f"qty_kg must be a multiple of the lot, {inst.lot_size_kg} kg", field="qty_kg",
                           code="quantity_off_lot")
    if not inst.min_qty_kg <= req.qty_kg <= inst.max_qty_kg:
        raise InvalidInput(f"qty_kg must be within [{inst.min_qty_kg}, {inst.max_qty_kg}] kg", field="qty_kg",
                           code="quantity_out_of_range")
    if req.order_type == matching.LIMIT:
        if req.price is None:
            raise InvalidInput("a limit order needs a price (minor units per tonne)", field="price")
        if not _is_int(req.price) or req.price <= 0:
            raise InvalidInput("price must be a positive integer (minor units per tonne)", field="price")
        if req.price % inst.tick_size:
            raise InvalidInput(f"price must be on the tick, {inst.tick_size}", field="price", code="price_off_tick")
        if not inst.band_low <= req.price <= inst.band_high:
            raise InvalidInput(f"price must be within today's band [{inst.band_low}, {inst.band_high}] around the "
                               f"reference price {inst.reference_price}", field="price", code="price_outside_band")
    elif req.price is not None:
        raise InvalidInput("a market order has no price", field="price")
    if (tif == "GTD") != (req.expire_at is not None):
        raise InvalidInput("expire_at is required for GTD and only for GTD", field="expire_at")
    if req.expire_at is not None and epoch(req.expire_at) <= epoch(now):
        raise InvalidInput("expire_at must be in the future", field="expire_at")
    if req.post_only and (req.order_type != matching.LIMIT or tif in ("IOC", "FOK")):
        raise InvalidInput("post_only is for resting limit orders", field="post_only")
    if req.stp not in STP_MODES:
        raise InvalidInput(f"stp must be one of {STP_MODES}", field="stp")
    return tif


def place_order(session: Session, actor: Actor, req: OrderRequest) -> tuple[Order, OrderCommand]:
    """Validate, reserve and queue an order. Raises InvalidInput, InsufficientFunds (field qty_kg),
    InsufficientUnits (field qty_kg), Suspended, Conflict (instrument not active), MarketClosed."""
    actor.require_can_move_units()
    now = utcnow()
    inst = get_instrument(session, req.instrument)
    _check_open(inst, now)
    tif = _validate(inst, req, now)
    holder = session.get(Holder, actor.holder_id)
    if holder is None or holder.suspended:
        raise Suspended("a suspended holder cannot trade", field="instrument")
    amount = 0
    if req.side == matching.BUY:
        limit = req.price if req.price is not None else inst.band_high
        amount = buy_hold(limit, req.qty_kg, inst.lot_size_kg, max(inst.maker_fee_bp, inst.taker_fee_bp))
    order = Order(instrument_id=inst.id, holder_id=actor.holder_id, user_id=actor.user_id, side=req.side,
                  order_type=req.order_type, tif=tif, price=req.price, qty_kg=req.qty_kg, filled_kg=0,
                  remaining_kg=0, post_only=req.post_only, stp=req.stp, expire_at=req.expire_at,
                  status=OrderStatus.PENDING, cash_held=amount, notional_paid=0, fees_paid=0,
                  created_at=now, updated_at=now)
    session.add(order)
    session.flush()
    if req.side == matching.BUY:
        try:
            wallets.hold(session, actor.holder_id, amount, ref=order.ref, user_id=actor.user_id)
        except InsufficientFunds as e:
            raise InsufficientFunds(f"this buy needs {amount} (minor units, at most) available: {e.message}",
                                    field="qty_kg") from None
    else:
        try:
            units.lock_units(session, actor.holder_id,
                             units.Selection(quantity_kg=req.qty_kg, where=tuple(deliverable(inst))), order.ref)
        except InsufficientUnits as e:
            raise InsufficientUnits(f"not enough deliverable units for {inst.symbol}: {e.message}",
                                    field="qty_kg") from None
    cmd = OrderCommand(instrument_id=inst.id, order_id=order.id, kind="place", args={},
                       status=CommandStatus.PENDING, created_at=now)
    session.add(cmd)
    session.flush()
    notify.queued(session, inst.id)
    audit.record(session, actor, "order.placed", "order", order.id,
                 {"instrument": inst.symbol, "side": req.side, "type": req.order_type, "tif": tif,
                  "price": req.price, "qty_kg": req.qty_kg, "cash_held": order.cash_held, "seq": cmd.id})
    return order, cmd


def get_order(session: Session, actor: Actor, order_id: int, *, lock: bool = False) -> Order:
    """The actor's own order; another holder's is NotFound."""
    order = session.get(Order, order_id, with_for_update={"key_share": True} if lock else None)
    if order is None or order.holder_id != actor.holder_id:
        raise NotFound(f"no order {order_id}", field="order_id")
    return order


def _queue(session: Session, actor: Actor, order: Order, kind: str, args: dict[str, int],
           cash_topped_up: int = 0) -> OrderCommand:
    if order.status.is_final:
        raise Conflict(f"order is {order.status.value}", field="order_id", code="order_final")
    cmd = OrderCommand(instrument_id=order.instrument_id, order_id=order.id, kind=kind, args=args,
                       status=CommandStatus.PENDING, created_at=utcnow())
    session.add(cmd)
    session.flush()
    notify.queued(session, order.instrument_id)
    audit.record(session, actor, f"order.{kind}_requested", "order", order.id,
                 args | {"seq": cmd.id, "cash_topped_up": cash_topped_up})
    return cmd


def cancel_order(session: Session, actor: Actor, order_id: int) -> OrderCommand:
    actor.require_can_move_units()
    return _queue(session, actor, get_order(session, actor, order_id, lock=True), "cancel", {})


def reduce_order(session: Session, actor: Actor, order_id: int, by_kg: int) -> OrderCommand:
    """Take `by_kg` off the resting quantity; the order keeps its place in the queue."""
    actor.require_can_move_units()
    order = get_order(session, actor, order_id, lock=True)
    lot = order.instrument.lot_size_kg
    if not _is_int(by_kg) or by_kg <= 0 or by_kg % lot:
        raise InvalidInput(f"by_kg must be a positive multiple of the lot, {lot} kg", field="by_kg")
    return _queue(session, actor, order, "reduce", {"by_kg": by_kg})


def replace_order(session: Session, actor: Actor, order_id: int, price: int) -> OrderCommand:
    """Move a resting limit order to a new price (it loses its place). A buy order's reserve is
    topped up now if the new price needs more; any excess is released when the order ends."""
    actor.require_can_move_units()
    order = get_order(session, actor, order_id, lock=True)
    inst = order.instrument
    if order.order_type != matching.LIMIT:
        raise InvalidInput("only limit orders can be replaced", field="order_id")
    if not _is_int(price) or price <= 0 or price % inst.tick_size:
        raise InvalidInput(f"price must be a positive multiple of the tick, {inst.tick_size}", field="price")
    if not inst.band_low <= price <= inst.band_high:
        raise InvalidInput(f"price must be within [{inst.band_low}, {inst.band_high}]", field="price",
                           code="price_outside_band")
    topped_up = 0
    if order.side == matching.BUY:
        open_kg = order.qty_kg - order.filled_kg
        need = buy_hold(price, open_kg, inst.lot_size_kg, max(inst.maker_fee_bp, inst.taker_fee_bp))
        if need > order.cash_held:
            try:
                wallets.hold(session, order.holder_id, need - order.cash_held, ref=order.ref, user_id=actor.user_id)
            except InsufficientFunds as e:
                raise InsufficientFunds(e.message, field="price") from None
            topped_up = need - order.cash_held
            order.cash_held = need
    return _queue(session, actor, order, "replace", {"price": price}, topped_up)


def orders_of(session: Session, holder_id: int, *, open_only: bool = False, limit: int = 100,
              offset: int = 0) -> list[Order]:
    stmt = select(Order).where(Order.holder_id == holder_id).order_by(Order.id.desc()).limit(limit).offset(offset)
    if open_only:
        stmt = stmt.where(Order.status.in_([OrderStatus.PENDING, OrderStatus.OPEN]))
    return list(session.scalars(stmt))
