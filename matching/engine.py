"""The order book: a pure, deterministic, in-memory matching engine for one instrument.

Commands in, events out. No I/O, no clock (time is passed in), no float, no database, and nothing
imported from the rest of the project. Modelled on exchange-core's ``OrderBookNaiveImpl``: two
sorted collections of price levels (bids best-first descending, asks best-first ascending), each
level a FIFO of orders (an intrusive doubly linked list) with a running total, and an id index for
O(1) cancel.

Units
-----
Every price and quantity that crosses the API is an ``int`` in *base units*: prices in minor
currency units per tonne (fen/t), quantities in kilograms of CO2e. The :class:`InstrumentSpec`
gives the tick size and the lot size in those same units; a price that is not a positive multiple
of the tick, or a quantity that is not a positive multiple of the lot, is rejected with a reason
code. The book stores the same base units internally (they are exact multiples, so no conversion
and no rounding ever happens). Events carry base units too.

Errors
------
A bad command (zero or negative price or quantity, off tick, off lot, outside the price band,
unknown or duplicate order id, bad enum value, ...) is never an exception: the command returns a
``rejected`` event with a stable reason code and the book is left untouched. Only a bad
:class:`InstrumentSpec`, a bad band at construction or a malformed snapshot raise ``ValueError``.
Arguments must have the annotated Python types (``int``, ``str``, ``bool``); the pure-Python build
rejects non-``int`` numbers with a reason code, the compiled (mypyc) build raises ``TypeError`` at
the call boundary for a wrong Python type.

This module is self-contained on purpose so that ``python3 -m matching.build`` can compile the
very same source with mypyc; ``matching/__init__.py`` picks the compiled build when present.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_left
from typing import Any, Final, NamedTuple

__all__ = [
    "BUY",
    "SELL",
    "LIMIT",
    "MARKET",
    "GTC",
    "DAY",
    "GTD",
    "IOC",
    "FOK",
    "STP_CANCEL_NEWEST",
    "STP_CANCEL_OLDEST",
    "STP_CANCEL_BOTH",
    "STP_DECREMENT",
    "ACCEPTED",
    "REJECTED",
    "TRADE",
    "REDUCED",
    "REPLACED",
    "CANCELLED",
    "EXPIRED",
    "DONE",
    "R_DUPLICATE_ORDER_ID",
    "R_UNKNOWN_ORDER_ID",
    "R_INVALID_ORDER_ID",
    "R_INVALID_OWNER",
    "R_INVALID_SIDE",
    "R_INVALID_ORDER_TYPE",
    "R_INVALID_TIF",
    "R_INVALID_STP_MODE",
    "R_INVALID_PRICE",
    "R_PRICE_OFF_TICK",
    "R_MISSING_PRICE",
    "R_UNEXPECTED_PRICE",
    "R_PRICE_OUTSIDE_BAND",
    "R_NO_PRICE_BAND",
    "R_INVALID_QTY",
    "R_QTY_OFF_LOT",
    "R_QTY_BELOW_MIN",
    "R_QTY_ABOVE_MAX",
    "R_MISSING_EXPIRY",
    "R_UNEXPECTED_EXPIRY",
    "R_EXPIRY_IN_PAST",
    "R_INVALID_POST_ONLY",
    "R_POST_ONLY_WOULD_CROSS",
    "R_INVALID_BAND",
    "R_INVALID_TIME",
    "C_USER",
    "C_REDUCED_TO_ZERO",
    "C_IOC_REMAINDER",
    "C_MARKET_REMAINDER",
    "C_FOK_UNFILLABLE",
    "C_SELF_TRADE",
    "X_GTD",
    "X_DAY",
    "SIDES",
    "ORDER_TYPES",
    "TIFS",
    "STP_MODES",
    "SNAPSHOT_VERSION",
    "InstrumentSpec",
    "Event",
    "OrderState",
    "OrderBook",
]

# --- stable string constants ------------------------------------------------------------------

BUY: Final = "buy"
SELL: Final = "sell"

LIMIT: Final = "limit"
MARKET: Final = "market"

GTC: Final = "GTC"  #: good till cancelled
DAY: Final = "DAY"  #: expired by :meth:`OrderBook.end_of_day`
GTD: Final = "GTD"  #: good till date: expired by :meth:`OrderBook.expire` once ``now >= expire_at``
IOC: Final = "IOC"  #: immediate or cancel: the remainder is cancelled, never rests
FOK: Final = "FOK"  #: fill or kill: fills completely by trades or does nothing

STP_CANCEL_NEWEST: Final = "cancel_newest"  #: default: the incoming order's remainder is cancelled
STP_CANCEL_OLDEST: Final = "cancel_oldest"  #: the resting order is cancelled, matching goes on
STP_CANCEL_BOTH: Final = "cancel_both"  #: both are cancelled
STP_DECREMENT: Final = "decrement"  #: both are reduced by the smaller remaining quantity, no trade

# event kinds
ACCEPTED: Final = "accepted"
REJECTED: Final = "rejected"
TRADE: Final = "trade"
REDUCED: Final = "reduced"
REPLACED: Final = "replaced"
CANCELLED: Final = "cancelled"
EXPIRED: Final = "expired"
DONE: Final = "done"

# rejection reasons
R_DUPLICATE_ORDER_ID: Final = "duplicate_order_id"
R_UNKNOWN_ORDER_ID: Final = "unknown_order_id"
R_INVALID_ORDER_ID: Final = "invalid_order_id"
R_INVALID_OWNER: Final = "invalid_owner"
R_INVALID_SIDE: Final = "invalid_side"
R_INVALID_ORDER_TYPE: Final = "invalid_order_type"
R_INVALID_TIF: Final = "invalid_time_in_force"
R_INVALID_STP_MODE: Final = "invalid_stp_mode"
R_INVALID_PRICE: Final = "invalid_price"  #: zero, negative or not an int
R_PRICE_OFF_TICK: Final = "price_off_tick"
R_MISSING_PRICE: Final = "missing_price"  #: a limit order without a price
R_UNEXPECTED_PRICE: Final = "unexpected_price"  #: a market order with a price
R_PRICE_OUTSIDE_BAND: Final = "price_outside_band"
R_NO_PRICE_BAND: Final = "no_price_band"  #: a market order while no band is set: no collar
R_INVALID_QTY: Final = "invalid_quantity"  #: zero, negative or not an int
R_QTY_OFF_LOT: Final = "quantity_off_lot"
R_QTY_BELOW_MIN: Final = "quantity_below_minimum"
R_QTY_ABOVE_MAX: Final = "quantity_above_maximum"
R_MISSING_EXPIRY: Final = "missing_expiry"  #: GTD without expire_at
R_UNEXPECTED_EXPIRY: Final = "unexpected_expiry"  #: expire_at on a non-GTD order
R_EXPIRY_IN_PAST: Final = "expiry_in_past"  #: expire_at <= the last time given to expire()
R_INVALID_POST_ONLY: Final = "invalid_post_only"  #: post-only on a market, IOC or FOK order
R_POST_ONLY_WOULD_CROSS: Final = "post_only_would_cross"
R_INVALID_BAND: Final = "invalid_band"
R_INVALID_TIME: Final = "invalid_time"

# cancellation / expiry reasons
C_USER: Final = "user"  #: the cancel command
C_REDUCED_TO_ZERO: Final = "reduced_to_zero"  #: reduce by the whole remaining quantity
C_IOC_REMAINDER: Final = "ioc_remainder"
C_MARKET_REMAINDER: Final = "market_remainder"  #: no more liquidity inside the collar
C_FOK_UNFILLABLE: Final = "fok_unfillable"
C_SELF_TRADE: Final = "self_trade"
X_GTD: Final = "gtd"
X_DAY: Final = "day"

SIDES: Final = (BUY, SELL)
ORDER_TYPES: Final = (LIMIT, MARKET)
TIFS: Final = (GTC, DAY, GTD, IOC, FOK)
STP_MODES: Final = (STP_CANCEL_NEWEST, STP_CANCEL_OLDEST, STP_CANCEL_BOTH, STP_DECREMENT)

SNAPSHOT_VERSION: Final = 1


class InstrumentSpec:
    """Tick, lot and order-size limits of an instrument, all ``int`` in base units.

    ``tick_size`` is in minor units per tonne, ``lot_size``, ``min_qty`` and ``max_qty`` in kg.
    ``min_qty`` and ``max_qty`` must be multiples of ``lot_size``. Raises ``ValueError`` otherwise.
    """

    __slots__ = ("tick_size", "lot_size", "min_qty", "max_qty")

    def __init__(self, tick_size: int, lot_size: int, min_qty: int, max_qty: int) -> None:
        for v in (tick_size, lot_size, min_qty, max_qty):
            if type(v) is not int or v <= 0:
                raise ValueError("instrument spec values must be positive ints")
        if min_qty % lot_size or max_qty % lot_size or min_qty > max_qty:
            raise ValueError("min_qty and max_qty must be lot multiples with min_qty <= max_qty")
        self.tick_size: int = tick_size
        self.lot_size: int = lot_size
        self.min_qty: int = min_qty
        self.max_qty: int = max_qty

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstrumentSpec) and self.as_list() == other.as_list()

    def __hash__(self) -> int:
        return hash(tuple(self.as_list()))

    def __repr__(self) -> str:
        return (
            f"InstrumentSpec(tick_size={self.tick_size}, lot_size={self.lot_size}, "
            f"min_qty={self.min_qty}, max_qty={self.max_qty})"
        )

    def as_list(self) -> list[int]:
        return [self.tick_size, self.lot_size, self.min_qty, self.max_qty]


class Event:
    """One outcome of a command. Every event has a per-book ``seq`` (1, 2, 3, ... without gaps).

    Fields that do not apply to a kind are ``0`` (ints) or ``""`` (strings). ``price == 0`` means
    "no price" (a market order). Per kind:

    - ``accepted``: order_id, owner, side, price, qty (as placed), remaining (== qty), reason = the
      order type ("limit"/"market").
    - ``rejected``: order_id (as given), owner, side, price, qty as given where known; reason.
    - ``trade``: the taker is order_id/owner/side (``taker_id``/``taker_owner`` alias them); the
      maker is maker_id/maker_owner; price is the maker's price, qty the traded kg; remaining is
      the taker's remaining after the trade, maker_remaining the maker's.
    - ``reduced``: qty = the amount taken off, remaining = what is left; reason "" for a reduce
      command, "self_trade" for a decrement by self-trade prevention.
    - ``replaced``: price and remaining are the new ones; qty = the new quantity; reason
      "priority_kept" or "priority_lost".
    - ``cancelled``: qty = the remaining quantity that was cancelled, remaining = 0; reason.
    - ``expired``: like cancelled; reason "gtd" or "day".
    - ``done``: the order is completely filled (remaining 0) and left the book.

    Every accepted order ends with exactly one of done, cancelled or expired, unless it still rests.
    """

    __slots__ = (
        "seq",
        "kind",
        "order_id",
        "owner",
        "side",
        "price",
        "qty",
        "remaining",
        "reason",
        "maker_id",
        "maker_owner",
        "maker_remaining",
    )

    def __init__(
        self,
        seq: int,
        kind: str,
        order_id: int,
        owner: int,
        side: str,
        price: int,
        qty: int,
        remaining: int,
        reason: str,
        maker_id: int,
        maker_owner: int,
        maker_remaining: int,
    ) -> None:
        self.seq = seq
        self.kind = kind
        self.order_id = order_id
        self.owner = owner
        self.side = side
        self.price = price
        self.qty = qty
        self.remaining = remaining
        self.reason = reason
        self.maker_id = maker_id
        self.maker_owner = maker_owner
        self.maker_remaining = maker_remaining

    @property
    def taker_id(self) -> int:
        return self.order_id

    @property
    def taker_owner(self) -> int:
        return self.owner

    def as_tuple(self) -> tuple[int, str, int, int, str, int, int, int, str, int, int, int]:
        return (
            self.seq,
            self.kind,
            self.order_id,
            self.owner,
            self.side,
            self.price,
            self.qty,
            self.remaining,
            self.reason,
            self.maker_id,
            self.maker_owner,
            self.maker_remaining,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "order_id": self.order_id,
            "owner": self.owner,
            "side": self.side,
            "price": self.price,
            "qty": self.qty,
            "remaining": self.remaining,
            "reason": self.reason,
            "maker_id": self.maker_id,
            "maker_owner": self.maker_owner,
            "maker_remaining": self.maker_remaining,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self.as_tuple() == other.as_tuple()

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        return f"Event{self.as_tuple()!r}"


class OrderState(NamedTuple):
    """A read-only copy of a resting order, as returned by the queries."""

    order_id: int
    owner: int
    side: str
    price: int
    remaining: int
    tif: str
    expire_at: int
    post_only: bool
    stp: str


class Level:
    """One price level: a FIFO of orders (intrusive linked list) with its running total."""

    __slots__ = ("price", "head", "tail", "total", "count")

    def __init__(self, price: int) -> None:
        self.price = price
        self.head: Order | None = None
        self.tail: Order | None = None
        self.total = 0
        self.count = 0


class Order:
    """A resting order. Internal: never handed out (queries return :class:`OrderState`)."""

    __slots__ = (
        "order_id",
        "owner",
        "side",
        "price",
        "remaining",
        "tif",
        "expire_at",
        "post_only",
        "stp",
        "prev",
        "next",
        "level",
    )

    def __init__(
        self,
        order_id: int,
        owner: int,
        side: str,
        price: int,
        remaining: int,
        tif: str,
        expire_at: int,
        post_only: bool,
        stp: str,
    ) -> None:
        self.order_id = order_id
        self.owner = owner
        self.side = side
        self.price = price
        self.remaining = remaining
        self.tif = tif
        self.expire_at = expire_at
        self.post_only = post_only
        self.stp = stp
        self.prev: Order | None = None
        self.next: Order | None = None
        self.level: Level | None = None

    def state(self) -> OrderState:
        return OrderState(
            self.order_id,
            self.owner,
            self.side,
            self.price,
            self.remaining,
            self.tif,
            self.expire_at,
            self.post_only,
            self.stp,
        )


class OrderBook:
    """The book of one instrument with price-time priority.

    Bids are kept under the key ``price`` and asks under ``-price`` in two ascending lists, so
    the best level of either side is the last element (O(1) to read and to drop) and a new level
    near the touch is inserted near the end.

    ``band`` is the price band ``(low, high)`` in base units, inclusive; ``None`` means no band:
    limit orders are then not band-checked and market orders are rejected (no collar).
    """

    def __init__(
        self,
        spec: InstrumentSpec,
        band: tuple[int, int] | None = None,
        instrument: str = "",
    ) -> None:
        self.spec = spec
        self.instrument = instrument
        self._tick = spec.tick_size
        self._lot = spec.lot_size
        self._min = spec.min_qty
        self._max = spec.max_qty
        self._has_band = False
        self._low = 0
        self._high = 0
        if band is not None:
            if not self._band_ok(band[0], band[1]):
                raise ValueError("invalid price band")
            self._has_band = True
            self._low = band[0]
            self._high = band[1]
        self._seq = 0
        self._now = 0
        self._orders: dict[int, Order] = {}
        self._bid_keys: list[int] = []
        self._ask_keys: list[int] = []
        self._bid_levels: dict[int, Level] = {}
        self._ask_levels: dict[int, Level] = {}

    # --- events -------------------------------------------------------------------------------

    def _ev(
        self,
        out: list[Event],
        kind: str,
        order_id: int,
        owner: int,
        side: str,
        price: int,
        qty: int,
        remaining: int,
        reason: str,
    ) -> None:
        self._seq += 1
        out.append(Event(self._seq, kind, order_id, owner, side, price, qty, remaining, reason, 0, 0, 0))

    def _reject(self, order_id: int, owner: int, side: str, price: int, qty: int, reason: str) -> list[Event]:
        self._seq += 1
        return [Event(self._seq, REJECTED, order_id, owner, side, price, qty, 0, reason, 0, 0, 0)]

    # --- configuration ------------------------------------------------------------------------

    def _band_ok(self, low: int, high: int) -> bool:
        return (
            type(low) is int
            and type(high) is int
            and 0 < low <= high
            and low % self._tick == 0
            and high % self._tick == 0
        )

    @property
    def band(self) -> tuple[int, int] | None:
        return (self._low, self._high) if self._has_band else None

    @property
    def seq(self) -> int:
        """The sequence number of the last event emitted (0 before any)."""
        return self._seq

    def set_band(self, low: int, high: int) -> list[Event]:
        """Set the price band, inclusive, on the tick. Resting orders outside it stay.

        Returns ``[]``, or one ``rejected(invalid_band)`` event if the band is not
        ``0 < low <= high`` on the tick.
        """
        if not self._band_ok(low, high):
            return self._reject(0, 0, "", 0, 0, R_INVALID_BAND)
        self._has_band = True
        self._low = low
        self._high = high
        return []

    def clear_band(self) -> list[Event]:
        """Remove the band: limit orders are not band-checked, market orders are rejected."""
        self._has_band = False
        self._low = 0
        self._high = 0
        return []

    # --- commands -----------------------------------------------------------------------------

    def place(
        self,
        order_id: int,
        owner: int,
        side: str,
        qty: int,
        price: int | None = None,
        order_type: str = LIMIT,
        tif: str | None = None,
        expire_at: int = 0,
        post_only: bool = False,
        stp: str = STP_CANCEL_NEWEST,
    ) -> list[Event]:
        """Place an order; returns its events in order.

        ``qty`` in kg (multiple of the lot, within min/max), ``price`` in minor units per tonne
        (multiple of the tick, inside the band) for a limit order and ``None`` for a market
        order. ``tif`` defaults to GTC for limit and IOC for market orders; market orders accept
        only IOC or FOK and trade only up to the collar (band high for a buy, band low for a
        sell); their remainder is cancelled. ``expire_at`` (any int time scale chosen by the
        caller) is required for GTD and forbidden otherwise. ``post_only`` limit orders that
        would cross are rejected. ``stp`` is the self-trade prevention mode of this order,
        applied when it meets a resting order of the same owner.

        FOK rule: the order executes only if it can be filled completely by trades walking the
        book in priority order within its price limit; resting orders of the same owner are
        skipped under cancel_oldest (and cancelled when it executes) and stop the walk under the
        other modes. Otherwise it is accepted and cancelled (fok_unfillable) with the book
        untouched.
        """
        if type(order_id) is not int or order_id < 0:
            return self._reject(0, 0, "", 0, 0, R_INVALID_ORDER_ID)
        if type(owner) is not int:
            return self._reject(order_id, 0, "", 0, 0, R_INVALID_OWNER)
        if side != BUY and side != SELL:
            return self._reject(order_id, owner, "", 0, 0, R_INVALID_SIDE)
        if type(qty) is not int or qty <= 0:
            return self._reject(order_id, owner, side, 0, 0, R_INVALID_QTY)
        px = 0
        if order_type == LIMIT:
            if price is None:
                return self._reject(order_id, owner, side, 0, qty, R_MISSING_PRICE)
            if type(price) is not int or price <= 0:
                return self._reject(order_id, owner, side, 0, qty, R_INVALID_PRICE)
            px = price
            if tif is None:
                tif = GTC
        elif order_type == MARKET:
            if price is not None:
                return self._reject(order_id, owner, side, 0, qty, R_UNEXPECTED_PRICE)
            if tif is None:
                tif = IOC
        else:
            return self._reject(order_id, owner, side, 0, qty, R_INVALID_ORDER_TYPE)
        if order_id in self._orders:
            return self._reject(order_id, owner, side, px, qty, R_DUPLICATE_ORDER_ID)
        if px % self._tick:
            return self._reject(order_id, owner, side, px, qty, R_PRICE_OFF_TICK)
        if qty % self._lot:
            return self._reject(order_id, owner, side, px, qty, R_QTY_OFF_LOT)
        if qty < self._min:
            return self._reject(order_id, owner, side, px, qty, R_QTY_BELOW_MIN)
        if qty > self._max:
            return self._reject(order_id, owner, side, px, qty, R_QTY_ABOVE_MAX)
        if tif != GTC and tif != IOC and tif != FOK and tif != DAY and tif != GTD:
            return self._reject(order_id, owner, side, px, qty, R_INVALID_TIF)
        if stp != STP_CANCEL_NEWEST and stp not in STP_MODES:
            return self._reject(order_id, owner, side, px, qty, R_INVALID_STP_MODE)
        if tif == GTD:
            if type(expire_at) is not int or expire_at <= 0:
                return self._reject(order_id, owner, side, px, qty, R_MISSING_EXPIRY)
            if expire_at <= self._now:
                return self._reject(order_id, owner, side, px, qty, R_EXPIRY_IN_PAST)
        elif expire_at != 0:
            return self._reject(order_id, owner, side, px, qty, R_UNEXPECTED_EXPIRY)
        if order_type == MARKET:
            if tif != IOC and tif != FOK:
                return self._reject(order_id, owner, side, px, qty, R_INVALID_TIF)
            if post_only:
                return self._reject(order_id, owner, side, px, qty, R_INVALID_POST_ONLY)
            if not self._has_band:
                return self._reject(order_id, owner, side, px, qty, R_NO_PRICE_BAND)
            limit = self._high if side == BUY else self._low
        else:
            if self._has_band and (px < self._low or px > self._high):
                return self._reject(order_id, owner, side, px, qty, R_PRICE_OUTSIDE_BAND)
            limit = px
        if post_only:
            if tif == IOC or tif == FOK:
                return self._reject(order_id, owner, side, px, qty, R_INVALID_POST_ONLY)
            if self._crosses(side, px):
                return self._reject(order_id, owner, side, px, qty, R_POST_ONLY_WOULD_CROSS)

        self._seq += 1
        out = [Event(self._seq, ACCEPTED, order_id, owner, side, px, qty, qty, order_type, 0, 0, 0)]
        if tif == FOK and not self._fillable(side, limit, qty, owner, stp):
            self._ev(out, CANCELLED, order_id, owner, side, px, qty, 0, C_FOK_UNFILLABLE)
            return out
        rem = qty
        if self._crosses(side, limit):
            rem = self._match(out, order_id, owner, side, px, qty, limit, stp)
            if rem <= 0:
                return out
        if order_type == MARKET:
            self._ev(out, CANCELLED, order_id, owner, side, px, rem, 0, C_MARKET_REMAINDER)
        elif tif == IOC or tif == FOK:
            self._ev(out, CANCELLED, order_id, owner, side, px, rem, 0, C_IOC_REMAINDER)
        else:
            self._rest(Order(order_id, owner, side, px, rem, tif, expire_at, post_only, stp))
        return out

    def cancel(self, order_id: int) -> list[Event]:
        """Cancel a resting order: ``cancelled(user)``, or ``rejected(unknown_order_id)``."""
        o = self._orders.get(order_id)
        if o is None:
            return self._reject(order_id, 0, "", 0, 0, R_UNKNOWN_ORDER_ID)
        self._remove(o)
        self._seq += 1
        return [
            Event(self._seq, CANCELLED, order_id, o.owner, o.side, o.price, o.remaining, 0, C_USER, 0, 0, 0)
        ]

    def reduce(self, order_id: int, by_qty: int) -> list[Event]:
        """Reduce a resting order's remaining quantity by ``by_qty`` kg; it keeps its priority.

        ``by_qty`` must be a positive lot multiple. Reducing by the whole remaining quantity or
        more cancels the order (``cancelled(reduced_to_zero)``); otherwise one ``reduced`` event.
        """
        o = self._orders.get(order_id)
        if o is None:
            return self._reject(order_id, 0, "", 0, by_qty if type(by_qty) is int else 0, R_UNKNOWN_ORDER_ID)
        if type(by_qty) is not int or by_qty <= 0:
            return self._reject(order_id, o.owner, o.side, o.price, 0, R_INVALID_QTY)
        if by_qty % self._lot:
            return self._reject(order_id, o.owner, o.side, o.price, by_qty, R_QTY_OFF_LOT)
        self._seq += 1
        if by_qty >= o.remaining:
            self._remove(o)
            return [
                Event(
                    self._seq,
                    CANCELLED,
                    order_id,
                    o.owner,
                    o.side,
                    o.price,
                    o.remaining,
                    0,
                    C_REDUCED_TO_ZERO,
                    0,
                    0,
                    0,
                )
            ]
        o.remaining -= by_qty
        lv = o.level
        assert lv is not None
        lv.total -= by_qty
        return [
            Event(self._seq, REDUCED, order_id, o.owner, o.side, o.price, by_qty, o.remaining, "", 0, 0, 0)
        ]

    def replace(self, order_id: int, price: int, qty: int = 0) -> list[Event]:
        """Move a resting order to ``price`` with ``qty`` kg remaining (0 = keep the remaining).

        Same price and no increase of quantity keeps the order's time priority; any other change
        loses it: the order goes to the back of its new level and may trade there like a new
        order (with its own self-trade prevention mode). The new price must be on the tick and
        in the band, a new ``qty`` a lot multiple within min/max. A post-only order that would
        cross is rejected and stays as it was.
        """
        o = self._orders.get(order_id)
        if o is None:
            return self._reject(order_id, 0, "", 0, 0, R_UNKNOWN_ORDER_ID)
        side = o.side
        owner = o.owner
        if type(price) is not int or price <= 0:
            return self._reject(order_id, owner, side, 0, 0, R_INVALID_PRICE)
        if type(qty) is not int or qty < 0:
            return self._reject(order_id, owner, side, price, 0, R_INVALID_QTY)
        if price % self._tick:
            return self._reject(order_id, owner, side, price, qty, R_PRICE_OFF_TICK)
        if qty:
            if qty % self._lot:
                return self._reject(order_id, owner, side, price, qty, R_QTY_OFF_LOT)
            if qty < self._min:
                return self._reject(order_id, owner, side, price, qty, R_QTY_BELOW_MIN)
            if qty > self._max:
                return self._reject(order_id, owner, side, price, qty, R_QTY_ABOVE_MAX)
        else:
            qty = o.remaining
        if self._has_band and (price < self._low or price > self._high):
            return self._reject(order_id, owner, side, price, qty, R_PRICE_OUTSIDE_BAND)
        if price == o.price and qty <= o.remaining:
            self._seq += 1
            lv = o.level
            assert lv is not None
            lv.total -= o.remaining - qty
            o.remaining = qty
            return [
                Event(self._seq, REPLACED, order_id, owner, side, price, qty, qty, "priority_kept", 0, 0, 0)
            ]
        if o.post_only and self._crosses(side, price):
            return self._reject(order_id, owner, side, price, qty, R_POST_ONLY_WOULD_CROSS)
        self._remove(o)
        self._seq += 1
        out = [Event(self._seq, REPLACED, order_id, owner, side, price, qty, qty, "priority_lost", 0, 0, 0)]
        rem = qty
        if self._crosses(side, price):
            rem = self._match(out, order_id, owner, side, price, qty, price, o.stp)
            if rem <= 0:
                return out
        o.price = price
        o.remaining = rem
        self._rest(o)
        return out

    def expire(self, now: int) -> list[Event]:
        """Tell the book the time: GTD orders with ``expire_at <= now`` expire, in order of
        ``(expire_at, order_id)``. The book remembers the latest ``now`` and rejects GTD orders
        placed later with ``expire_at`` at or before it. ``now`` is in the caller's time scale.
        """
        if type(now) is not int or now < 0:
            return self._reject(0, 0, "", 0, 0, R_INVALID_TIME)
        if now > self._now:
            self._now = now
        due = sorted(
            (o.expire_at, o.order_id) for o in self._orders.values() if o.tif == GTD and o.expire_at <= now
        )
        out: list[Event] = []
        for _, oid in due:
            o = self._orders[oid]
            self._remove(o)
            self._ev(out, EXPIRED, oid, o.owner, o.side, o.price, o.remaining, 0, X_GTD)
        return out

    def end_of_day(self) -> list[Event]:
        """Close the session: every DAY order expires, in order of order id."""
        due = sorted(o.order_id for o in self._orders.values() if o.tif == DAY)
        out: list[Event] = []
        for oid in due:
            o = self._orders[oid]
            self._remove(o)
            self._ev(out, EXPIRED, oid, o.owner, o.side, o.price, o.remaining, 0, X_DAY)
        return out

    # --- matching -----------------------------------------------------------------------------

    def _crosses(self, side: str, limit: int) -> bool:
        if side == BUY:
            keys = self._ask_keys
            return len(keys) > 0 and -keys[-1] <= limit
        keys = self._bid_keys
        return len(keys) > 0 and keys[-1] >= limit

    def _fillable(self, side: str, limit: int, qty: int, owner: int, stp: str) -> bool:
        if side == BUY:
            keys = self._ask_keys
            levels = self._ask_levels
            lim_key = -limit
        else:
            keys = self._bid_keys
            levels = self._bid_levels
            lim_key = limit
        need = qty
        i = len(keys) - 1
        while i >= 0 and keys[i] >= lim_key:
            lv = levels[keys[i]]
            o = lv.head
            while o is not None:
                if o.owner == owner:
                    if stp != STP_CANCEL_OLDEST:
                        return False
                else:
                    need -= o.remaining
                    if need <= 0:
                        return True
                o = o.next
            i -= 1
        return False

    def _match(
        self,
        out: list[Event],
        order_id: int,
        owner: int,
        side: str,
        px: int,
        qty: int,
        limit: int,
        stp: str,
    ) -> int:
        """Match an incoming order against the opposite side; returns the remaining quantity.

        A remaining quantity of 0 means the order is finished (done or cancelled); its terminal
        event has been emitted. A positive one may rest or be cancelled by the caller.
        """
        if side == BUY:
            keys = self._ask_keys
            levels = self._ask_levels
            lim_key = -limit
        else:
            keys = self._bid_keys
            levels = self._bid_levels
            lim_key = limit
        orders = self._orders
        rem = qty
        traded = False
        while rem > 0 and keys:
            key = keys[-1]
            if key < lim_key:
                break
            lv = levels[key]
            price = lv.price
            o = lv.head
            while o is not None:
                nxt = o.next
                if o.owner == owner:
                    # self-trade prevention, by the incoming order's mode
                    if stp == STP_CANCEL_OLDEST or stp == STP_CANCEL_BOTH:
                        self._unlink(lv, o)
                        del orders[o.order_id]
                        self._ev(
                            out, CANCELLED, o.order_id, o.owner, o.side, price, o.remaining, 0, C_SELF_TRADE
                        )
                        if stp == STP_CANCEL_BOTH:
                            self._drop_if_empty(keys, levels, lv, key)
                            self._ev(out, CANCELLED, order_id, owner, side, px, rem, 0, C_SELF_TRADE)
                            return 0
                    elif stp == STP_DECREMENT:
                        d = rem if rem < o.remaining else o.remaining
                        if d == o.remaining:
                            self._unlink(lv, o)
                            del orders[o.order_id]
                            self._ev(out, CANCELLED, o.order_id, o.owner, o.side, price, d, 0, C_SELF_TRADE)
                        else:
                            o.remaining -= d
                            lv.total -= d
                            self._ev(
                                out, REDUCED, o.order_id, o.owner, o.side, price, d, o.remaining, C_SELF_TRADE
                            )
                        rem -= d
                        if rem == 0:
                            self._drop_if_empty(keys, levels, lv, key)
                            self._ev(out, CANCELLED, order_id, owner, side, px, d, 0, C_SELF_TRADE)
                            return 0
                        self._ev(out, REDUCED, order_id, owner, side, px, d, rem, C_SELF_TRADE)
                    else:  # cancel newest: the incoming remainder goes, the resting order stays
                        self._ev(out, CANCELLED, order_id, owner, side, px, rem, 0, C_SELF_TRADE)
                        return 0
                else:
                    mrem = o.remaining
                    q = rem if rem < mrem else mrem
                    rem -= q
                    mrem -= q
                    self._seq += 1
                    out.append(
                        Event(
                            self._seq,
                            TRADE,
                            order_id,
                            owner,
                            side,
                            price,
                            q,
                            rem,
                            "",
                            o.order_id,
                            o.owner,
                            mrem,
                        )
                    )
                    traded = True
                    if mrem == 0:
                        self._unlink(lv, o)
                        del orders[o.order_id]
                        self._seq += 1
                        out.append(
                            Event(self._seq, DONE, o.order_id, o.owner, o.side, price, 0, 0, "", 0, 0, 0)
                        )
                    else:
                        o.remaining = mrem
                        lv.total -= q
                    if rem == 0:
                        break
                o = nxt
            self._drop_if_empty(keys, levels, lv, key)
        if rem == 0 and traded:
            self._ev(out, DONE, order_id, owner, side, px, 0, 0, "")
        return rem

    # --- book structure -----------------------------------------------------------------------

    def _rest(self, o: Order) -> None:
        """Append an order at the back of its price level (creating the level if needed)."""
        if o.side == BUY:
            key = o.price
            levels = self._bid_levels
            keys = self._bid_keys
        else:
            key = -o.price
            levels = self._ask_levels
            keys = self._ask_keys
        lv = levels.get(key)
        if lv is None:
            lv = Level(o.price)
            levels[key] = lv
            n = len(keys)
            if n == 0 or key > keys[n - 1]:
                keys.append(key)
            else:
                keys.insert(bisect_left(keys, key), key)
        tail = lv.tail
        o.prev = tail
        o.next = None
        if tail is None:
            lv.head = o
        else:
            tail.next = o
        lv.tail = o
        lv.total += o.remaining
        lv.count += 1
        o.level = lv
        self._orders[o.order_id] = o

    def _unlink(self, lv: Level, o: Order) -> None:
        prev = o.prev
        nxt = o.next
        if prev is None:
            lv.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            lv.tail = prev
        else:
            nxt.prev = prev
        o.prev = None
        o.next = None
        o.level = None
        lv.total -= o.remaining
        lv.count -= 1

    def _drop_if_empty(self, keys: list[int], levels: dict[int, Level], lv: Level, key: int) -> None:
        if lv.count == 0:
            del levels[key]
            n = len(keys)
            if keys[n - 1] == key:
                keys.pop()
            else:
                del keys[bisect_left(keys, key)]

    def _remove(self, o: Order) -> None:
        """Take a resting order out of the book and the id index."""
        lv = o.level
        assert lv is not None
        self._unlink(lv, o)
        del self._orders[o.order_id]
        if o.side == BUY:
            self._drop_if_empty(self._bid_keys, self._bid_levels, lv, o.price)
        else:
            self._drop_if_empty(self._ask_keys, self._ask_levels, lv, -o.price)

    # --- queries ------------------------------------------------------------------------------

    def best_bid(self) -> int | None:
        """The best bid price, or ``None`` when there are no bids."""
        return self._bid_keys[-1] if self._bid_keys else None

    def best_ask(self) -> int | None:
        """The best ask price, or ``None`` when there are no asks."""
        return -self._ask_keys[-1] if self._ask_keys else None

    def depth(self, n: int = 10) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Up to ``n`` aggregated levels per side, best first: ``(price, total_qty, orders)``."""
        bids = [
            (lv.price, lv.total, lv.count)
            for lv in (self._bid_levels[k] for k in reversed(self._bid_keys[-n:] if n > 0 else []))
        ]
        asks = [
            (lv.price, lv.total, lv.count)
            for lv in (self._ask_levels[k] for k in reversed(self._ask_keys[-n:] if n > 0 else []))
        ]
        return bids, asks

    def order(self, order_id: int) -> OrderState | None:
        """The resting order with this id, or ``None``."""
        o = self._orders.get(order_id)
        return None if o is None else o.state()

    def orders_of(self, owner: int) -> list[OrderState]:
        """All resting orders of ``owner``, bids then asks, each in priority order. O(book)."""
        return [o.state() for o in self._iter_orders() if o.owner == owner]

    def __len__(self) -> int:
        return len(self._orders)

    def _iter_side(self, keys: list[int], levels: dict[int, Level]) -> list[Order]:
        res: list[Order] = []
        for k in reversed(keys):
            o = levels[k].head
            while o is not None:
                res.append(o)
                o = o.next
        return res

    def _iter_orders(self) -> list[Order]:
        return self._iter_side(self._bid_keys, self._bid_levels) + self._iter_side(
            self._ask_keys, self._ask_levels
        )

    # --- snapshot, hash, invariants -------------------------------------------------------------

    def to_snapshot(self) -> dict[str, Any]:
        """The whole book as plain ints, strings, bools, lists and dicts (JSON-ready).

        Orders are listed per side in priority order (best level first, FIFO inside a level) as
        ``[order_id, owner, price, remaining, tif, expire_at, post_only, stp]``.
        """

        def rows(keys: list[int], levels: dict[int, Level]) -> list[list[Any]]:
            return [
                [o.order_id, o.owner, o.price, o.remaining, o.tif, o.expire_at, o.post_only, o.stp]
                for o in self._iter_side(keys, levels)
            ]

        return {
            "version": SNAPSHOT_VERSION,
            "instrument": self.instrument,
            "spec": self.spec.as_list(),
            "band": [self._low, self._high] if self._has_band else None,
            "seq": self._seq,
            "now": self._now,
            "bids": rows(self._bid_keys, self._bid_levels),
            "asks": rows(self._ask_keys, self._ask_levels),
        }

    @staticmethod
    def from_snapshot(snap: dict[str, Any]) -> OrderBook:
        """Rebuild a book from :meth:`to_snapshot`; raises ``ValueError`` if it is malformed."""
        try:
            if snap["version"] != SNAPSHOT_VERSION:
                raise ValueError("unsupported snapshot version")
            spec = InstrumentSpec(*snap["spec"])
            band = snap["band"]
            book = OrderBook(spec, None if band is None else (band[0], band[1]), str(snap["instrument"]))
            seq = snap["seq"]
            now = snap["now"]
            if type(seq) is not int or type(now) is not int or seq < 0 or now < 0:
                raise ValueError("bad seq or now")
            book._seq = seq
            book._now = now
            for side, rows in ((BUY, snap["bids"]), (SELL, snap["asks"])):
                for r in rows:
                    oid, owner, price, rem, tif, exp, post, stp = r
                    if (
                        type(oid) is not int
                        or type(owner) is not int
                        or type(price) is not int
                        or type(rem) is not int
                        or type(exp) is not int
                        or type(post) is not bool
                        or tif not in (GTC, DAY, GTD)
                        or stp not in STP_MODES
                        or oid in book._orders
                    ):
                        raise ValueError(f"bad order row {r!r}")
                    book._rest(Order(oid, owner, side, price, rem, str(tif), exp, post, str(stp)))
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"malformed snapshot: {e!r}") from e
        problems = book.validate()
        if problems:
            raise ValueError("snapshot violates book invariants: " + "; ".join(problems))
        return book

    def state_hash(self) -> str:
        """SHA-256 hex of the canonical JSON of :meth:`to_snapshot` (seq, band and all orders)."""
        blob = json.dumps(self.to_snapshot(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def validate(self) -> list[str]:
        """Check the book's own invariants; returns the problems found (empty when sound).

        Never crossed at rest; level keys sorted and matching the level maps; every level non
        empty with total and count equal to its orders; linked lists consistent; every order on
        the tick, a positive lot multiple and in the id index, and the index holding nothing else.
        """
        problems: list[str] = []
        seen = 0
        for side, keys, levels, sign in (
            (BUY, self._bid_keys, self._bid_levels, 1),
            (SELL, self._ask_keys, self._ask_levels, -1),
        ):
            if any(keys[i] >= keys[i + 1] for i in range(len(keys) - 1)):
                problems.append(f"{side} keys not strictly ascending")
            if set(keys) != set(levels.keys()) or len(keys) != len(levels):
                problems.append(f"{side} keys and levels differ")
            for k, lv in levels.items():
                if lv.price * sign != k:
                    problems.append(f"{side} level {lv.price} keyed {k}")
                total = 0
                count = 0
                prev: Order | None = None
                o = lv.head
                while o is not None:
                    count += 1
                    total += o.remaining
                    if o.prev is not prev:
                        problems.append(f"order {o.order_id} bad prev link")
                    if o.level is not lv or o.price != lv.price or o.side != side:
                        problems.append(f"order {o.order_id} in the wrong level")
                    if o.remaining <= 0 or o.remaining % self._lot:
                        problems.append(f"order {o.order_id} bad remaining {o.remaining}")
                    if o.price <= 0 or o.price % self._tick:
                        problems.append(f"order {o.order_id} bad price {o.price}")
                    if self._orders.get(o.order_id) is not o:
                        problems.append(f"order {o.order_id} missing from the index")
                    prev = o
                    o = o.next
                    if count > len(self._orders):
                        problems.append(f"level {lv.price} has a cycle")
                        break
                if lv.tail is not prev:
                    problems.append(f"level {lv.price} bad tail")
                if count == 0:
                    problems.append(f"{side} level {lv.price} is empty")
                if total != lv.total or count != lv.count:
                    problems.append(
                        f"level {lv.price} total/count {lv.total}/{lv.count}, orders sum {total}/{count}"
                    )
                seen += count
        if seen != len(self._orders):
            problems.append(f"index holds {len(self._orders)} orders, levels {seen}")
        bb = self.best_bid()
        ba = self.best_ask()
        if bb is not None and ba is not None and bb >= ba:
            problems.append(f"book crossed at rest: bid {bb} >= ask {ba}")
        return problems
