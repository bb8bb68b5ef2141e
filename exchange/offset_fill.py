"""Filling an offset order on the order book, never above the quote.

The quote walks the resting asks of the instrument up to the quantity: its price is the worst level
needed (the limit), its total what a buy order at that limit reserves (`pricing.buy_hold`: the
notional at the limit, the largest fee and a minor unit per lot for rounding). Nothing is reserved
on the book: another buyer may take the asks first, and then less is filled.

Once paid, `fulfil_on_exchange` places an IOC limit buy at the quoted price through
`exchange.orders.place_order` (the sequencer matches it); the held payment becomes the buy order's
reserve. When the engine has answered, the blocks its trades delivered are retired to the
beneficiary; what the order did not spend (a partial fill, a better price) is already back in the
wallet (the sequencer released it), and a card payment's remainder goes back to the card.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import matching
from exchange import offsets, orders, wallets
from exchange.instruments import get_instrument
from exchange.models import Instrument, InstrumentStatus, Order, OrderStatus, Trade
from exchange.offset_models import OffsetOrder, OffsetStatus
from exchange.pricing import buy_hold, notional
from registry import audit
from registry.errors import Conflict, InsufficientUnits, InvalidInput, RegistryError


def quote_on_book(session: Session, symbol: str, qty: int) -> tuple[Instrument, int, int, int]:
    """(instrument, limit price per tonne, notional at the limit, the most the fee can be). Raises
    InvalidInput (quantity off the lot or out of range), Conflict (not trading), InsufficientUnits."""
    inst = get_instrument(session, symbol)
    if inst.status is not InstrumentStatus.ACTIVE:
        raise Conflict(f"{inst.symbol} is {inst.status.value}", field="preference.instrument",
                       code="instrument_not_active")
    if qty % inst.lot_size_kg or not inst.min_qty_kg <= qty <= inst.max_qty_kg:
        raise InvalidInput(f"on {inst.symbol} quantity_kg must be whole lots of {inst.lot_size_kg} kg within "
                           f"[{inst.min_qty_kg}, {inst.max_qty_kg}]", field="quantity_kg", code="quantity_off_lot")
    levels = session.execute(select(Order.price, func.sum(Order.remaining_kg)).where(
        Order.instrument_id == inst.id, Order.status == OrderStatus.OPEN, Order.side == matching.SELL,
        Order.remaining_kg > 0).group_by(Order.price).order_by(Order.price)).all()
    cumulative = 0
    for price, kg in levels:
        cumulative += int(kg)
        if cumulative >= qty:
            n = notional(int(price), qty)
            hold = buy_hold(int(price), qty, inst.lot_size_kg, max(inst.maker_fee_bp, inst.taker_fee_bp))
            return inst, int(price), n, hold - n
    raise InsufficientUnits(f"{inst.symbol} offers {cumulative} kg, {qty} kg asked", field="quantity_kg",
                            code="no_supply")


def fulfil_on_exchange(session: Session, order: OffsetOrder) -> OffsetOrder:
    """Place the IOC buy of a paid order, or finish the order once the engine answered it. The order
    is locked by the caller."""
    if order.exchange_order_id is None:
        return _place(session, order)
    eo = session.get(Order, order.exchange_order_id, populate_existing=True)
    assert eo is not None
    if not eo.status.is_final:
        return order      # the sequencer has not answered yet
    return _finish(session, order, eo)


def _place(session: Session, order: OffsetOrder) -> OffsetOrder:
    assert order.instrument_id is not None
    try:
        with session.begin_nested():
            # The held payment becomes the buy order's reserve (the same amount: see quote_on_book).
            wallets.release(session, order.holder_id, order.paid_amount, ref=order.ref)
            eo, _ = orders.place_order(session, offsets.buyer_actor(session, order), orders.OrderRequest(
                instrument=order.instrument_id, side=matching.BUY, qty_kg=order.quantity_kg, order_type=matching.LIMIT,
                price=order.price, tif="IOC"))
    except RegistryError as e:
        session.refresh(order)
        return offsets.refund(session, order, f"the buy could not be placed: {e.message}")
    order.exchange_order_id = eo.id
    audit.record(session, None, "offset.buy_placed", "offset_order", order.id,
                 {"exchange_order_id": eo.id, "price": order.price, "qty_kg": order.quantity_kg,
                  "cash_held": eo.cash_held})
    return order


def _finish(session: Session, order: OffsetOrder, eo: Order) -> OffsetOrder:
    spent = eo.notional_paid + eo.fees_paid
    if order.status is OffsetStatus.PAID:
        leftover = order.paid_amount - spent        # released to the wallet by the sequencer
        if leftover and order.payment == "card":
            offsets.refund_card(session, order, leftover)
        order.refunded_amount = leftover
        if eo.filled_kg == 0:
            order.status, order.reason = OffsetStatus.REFUNDED, "nothing was offered at or below the quoted price"
            audit.record(session, None, "offset.refunded", "offset_order", order.id,
                         {"reason": order.reason, "refunded_amount": leftover})
            return order
        order.status, order.filled_kg, order.filled_at = OffsetStatus.FILLED, eo.filled_kg, eo.updated_at
        if eo.filled_kg < order.quantity_kg:
            order.reason = f"partly filled: {eo.filled_kg} of {order.quantity_kg} kg; {leftover} refunded"
        audit.record(session, None, "offset.filled", "offset_order", order.id,
                     {"filled_kg": eo.filled_kg, "spent": spent, "refunded_amount": leftover})
    transfers = list(session.scalars(select(Trade.transfer_id).where(Trade.buy_order_id == eo.id)
                                     .order_by(Trade.id)))
    try:
        with session.begin_nested():
            offsets.retire_delivered(session, order, transfers, eo.filled_kg)
    except RegistryError as e:
        # The units are the buyer's and paid for: keep them, say why, and retry on the next resume.
        session.refresh(order)
        order.reason = f"bought but not yet retired: {e.message}"
    return order
