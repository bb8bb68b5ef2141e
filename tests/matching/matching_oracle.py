"""A deliberately simple reference order book, the oracle for the fast one.

Same rules as ``matching.engine`` (see its docstrings), no clever data structure: one flat list
of resting orders, sorted on demand by price then arrival. Events are plain tuples
``(seq, kind, order_id, owner, side, price, qty, remaining, reason, maker_id, maker_owner,
maker_remaining)`` so they compare with ``Event.as_tuple()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from matching.engine import (
    BUY,
    DAY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    STP_CANCEL_BOTH,
    STP_CANCEL_NEWEST,
    STP_CANCEL_OLDEST,
    STP_DECREMENT,
)

EventT = tuple[int, str, int, int, str, int, int, int, str, int, int, int]


@dataclass
class ROrder:
    oid: int
    owner: int
    side: str
    price: int
    rem: int
    tif: str
    exp: int
    post: bool
    stp: str
    ts: int


class RefBook:
    def __init__(self, tick: int, lot: int, min_qty: int, max_qty: int, band: tuple[int, int] | None) -> None:
        self.tick, self.lot, self.min, self.max = tick, lot, min_qty, max_qty
        self.band = band
        self.seq = 0
        self.now = 0
        self.ts = 0
        self.orders: list[ROrder] = []

    # helpers
    def ev(
        self,
        out: list[EventT],
        kind: str,
        oid: int,
        owner: int,
        side: str,
        price: int,
        qty: int,
        rem: int,
        reason: str,
        mid: int = 0,
        mown: int = 0,
        mrem: int = 0,
    ) -> None:
        self.seq += 1
        out.append((self.seq, kind, oid, owner, side, price, qty, rem, reason, mid, mown, mrem))

    def rej(self, oid: int, owner: int, side: str, price: int, qty: int, reason: str) -> list[EventT]:
        out: list[EventT] = []
        self.ev(out, "rejected", oid, owner, side, price, qty, 0, reason)
        return out

    def find(self, oid: int) -> ROrder | None:
        for o in self.orders:
            if o.oid == oid:
                return o
        return None

    def opposite(self, side: str, limit: int) -> list[ROrder]:
        if side == BUY:
            c = [o for o in self.orders if o.side == SELL and o.price <= limit]
            return sorted(c, key=lambda o: (o.price, o.ts))
        c = [o for o in self.orders if o.side == BUY and o.price >= limit]
        return sorted(c, key=lambda o: (-o.price, o.ts))

    def rest(self, o: ROrder, new_ts: bool = True) -> None:
        if new_ts:
            self.ts += 1
            o.ts = self.ts
        self.orders.append(o)

    # commands
    def place(
        self,
        oid: Any,
        owner: Any,
        side: Any,
        qty: Any,
        price: Any = None,
        order_type: str = LIMIT,
        tif: str | None = None,
        expire_at: Any = 0,
        post_only: bool = False,
        stp: str = STP_CANCEL_NEWEST,
    ) -> list[EventT]:
        if type(oid) is not int or oid < 0:
            return self.rej(0, 0, "", 0, 0, "invalid_order_id")
        if type(owner) is not int:
            return self.rej(oid, 0, "", 0, 0, "invalid_owner")
        if side not in (BUY, SELL):
            return self.rej(oid, owner, "", 0, 0, "invalid_side")
        if type(qty) is not int or qty <= 0:
            return self.rej(oid, owner, side, 0, 0, "invalid_quantity")
        px = 0
        if order_type == LIMIT:
            if price is None:
                return self.rej(oid, owner, side, 0, qty, "missing_price")
            if type(price) is not int or price <= 0:
                return self.rej(oid, owner, side, 0, qty, "invalid_price")
            px = price
            tif = tif or GTC
        elif order_type == MARKET:
            if price is not None:
                return self.rej(oid, owner, side, 0, qty, "unexpected_price")
            tif = tif or IOC
        else:
            return self.rej(oid, owner, side, 0, qty, "invalid_order_type")
        if self.find(oid) is not None:
            return self.rej(oid, owner, side, px, qty, "duplicate_order_id")
        if px % self.tick:
            return self.rej(oid, owner, side, px, qty, "price_off_tick")
        if qty % self.lot:
            return self.rej(oid, owner, side, px, qty, "quantity_off_lot")
        if qty < self.min:
            return self.rej(oid, owner, side, px, qty, "quantity_below_minimum")
        if qty > self.max:
            return self.rej(oid, owner, side, px, qty, "quantity_above_maximum")
        if tif not in (GTC, IOC, FOK, DAY, GTD):
            return self.rej(oid, owner, side, px, qty, "invalid_time_in_force")
        if stp not in (STP_CANCEL_NEWEST, STP_CANCEL_OLDEST, STP_CANCEL_BOTH, STP_DECREMENT):
            return self.rej(oid, owner, side, px, qty, "invalid_stp_mode")
        if tif == GTD:
            if type(expire_at) is not int or expire_at <= 0:
                return self.rej(oid, owner, side, px, qty, "missing_expiry")
            if expire_at <= self.now:
                return self.rej(oid, owner, side, px, qty, "expiry_in_past")
        elif expire_at != 0:
            return self.rej(oid, owner, side, px, qty, "unexpected_expiry")
        if order_type == MARKET:
            if tif not in (IOC, FOK):
                return self.rej(oid, owner, side, px, qty, "invalid_time_in_force")
            if post_only:
                return self.rej(oid, owner, side, px, qty, "invalid_post_only")
            if self.band is None:
                return self.rej(oid, owner, side, px, qty, "no_price_band")
            limit = self.band[1] if side == BUY else self.band[0]
        else:
            if self.band is not None and not (self.band[0] <= px <= self.band[1]):
                return self.rej(oid, owner, side, px, qty, "price_outside_band")
            limit = px
        if post_only:
            if tif in (IOC, FOK):
                return self.rej(oid, owner, side, px, qty, "invalid_post_only")
            if self.opposite(side, px):
                return self.rej(oid, owner, side, px, qty, "post_only_would_cross")
        out: list[EventT] = []
        self.ev(out, "accepted", oid, owner, side, px, qty, qty, order_type)
        if tif == FOK and not self.fillable(side, limit, qty, owner, stp):
            self.ev(out, "cancelled", oid, owner, side, px, qty, 0, "fok_unfillable")
            return out
        rem = self.match(out, oid, owner, side, px, qty, limit, stp)
        if rem == 0:
            return out
        if order_type == MARKET:
            self.ev(out, "cancelled", oid, owner, side, px, rem, 0, "market_remainder")
        elif tif in (IOC, FOK):
            self.ev(out, "cancelled", oid, owner, side, px, rem, 0, "ioc_remainder")
        else:
            self.rest(ROrder(oid, owner, side, px, rem, tif, expire_at, post_only, stp, 0))
        return out

    def fillable(self, side: str, limit: int, qty: int, owner: int, stp: str) -> bool:
        need = qty
        for o in self.opposite(side, limit):
            if o.owner == owner:
                if stp != STP_CANCEL_OLDEST:
                    return False
                continue
            need -= o.rem
            if need <= 0:
                return True
        return False

    def match(
        self, out: list[EventT], oid: int, owner: int, side: str, px: int, qty: int, limit: int, stp: str
    ) -> int:
        rem = qty
        traded = False
        for o in self.opposite(side, limit):
            if o.owner == owner:
                if stp in (STP_CANCEL_OLDEST, STP_CANCEL_BOTH):
                    self.orders.remove(o)
                    self.ev(out, "cancelled", o.oid, o.owner, o.side, o.price, o.rem, 0, "self_trade")
                    if stp == STP_CANCEL_BOTH:
                        self.ev(out, "cancelled", oid, owner, side, px, rem, 0, "self_trade")
                        return 0
                elif stp == STP_DECREMENT:
                    d = min(rem, o.rem)
                    o.rem -= d
                    if o.rem == 0:
                        self.orders.remove(o)
                        self.ev(out, "cancelled", o.oid, o.owner, o.side, o.price, d, 0, "self_trade")
                    else:
                        self.ev(out, "reduced", o.oid, o.owner, o.side, o.price, d, o.rem, "self_trade")
                    rem -= d
                    if rem == 0:
                        self.ev(out, "cancelled", oid, owner, side, px, d, 0, "self_trade")
                        return 0
                    self.ev(out, "reduced", oid, owner, side, px, d, rem, "self_trade")
                else:
                    self.ev(out, "cancelled", oid, owner, side, px, rem, 0, "self_trade")
                    return 0
                continue
            q = min(rem, o.rem)
            rem -= q
            o.rem -= q
            traded = True
            self.ev(out, "trade", oid, owner, side, o.price, q, rem, "", o.oid, o.owner, o.rem)
            if o.rem == 0:
                self.orders.remove(o)
                self.ev(out, "done", o.oid, o.owner, o.side, o.price, 0, 0, "")
            if rem == 0:
                break
        if rem == 0 and traded:
            self.ev(out, "done", oid, owner, side, px, 0, 0, "")
        return rem

    def cancel(self, oid: int) -> list[EventT]:
        o = self.find(oid)
        if o is None:
            return self.rej(oid, 0, "", 0, 0, "unknown_order_id")
        self.orders.remove(o)
        out: list[EventT] = []
        self.ev(out, "cancelled", oid, o.owner, o.side, o.price, o.rem, 0, "user")
        return out

    def reduce(self, oid: int, by: int) -> list[EventT]:
        o = self.find(oid)
        if o is None:
            return self.rej(oid, 0, "", 0, by, "unknown_order_id")
        if by <= 0:
            return self.rej(oid, o.owner, o.side, o.price, 0, "invalid_quantity")
        if by % self.lot:
            return self.rej(oid, o.owner, o.side, o.price, by, "quantity_off_lot")
        out: list[EventT] = []
        if by >= o.rem:
            self.orders.remove(o)
            self.ev(out, "cancelled", oid, o.owner, o.side, o.price, o.rem, 0, "reduced_to_zero")
        else:
            o.rem -= by
            self.ev(out, "reduced", oid, o.owner, o.side, o.price, by, o.rem, "")
        return out

    def replace(self, oid: int, price: int, qty: int = 0) -> list[EventT]:
        o = self.find(oid)
        if o is None:
            return self.rej(oid, 0, "", 0, 0, "unknown_order_id")
        if price <= 0:
            return self.rej(oid, o.owner, o.side, 0, 0, "invalid_price")
        if qty < 0:
            return self.rej(oid, o.owner, o.side, price, 0, "invalid_quantity")
        if price % self.tick:
            return self.rej(oid, o.owner, o.side, price, qty, "price_off_tick")
        if qty:
            if qty % self.lot:
                return self.rej(oid, o.owner, o.side, price, qty, "quantity_off_lot")
            if qty < self.min:
                return self.rej(oid, o.owner, o.side, price, qty, "quantity_below_minimum")
            if qty > self.max:
                return self.rej(oid, o.owner, o.side, price, qty, "quantity_above_maximum")
        else:
            qty = o.rem
        if self.band is not None and not (self.band[0] <= price <= self.band[1]):
            return self.rej(oid, o.owner, o.side, price, qty, "price_outside_band")
        out: list[EventT] = []
        if price == o.price and qty <= o.rem:
            o.rem = qty
            self.ev(out, "replaced", oid, o.owner, o.side, price, qty, qty, "priority_kept")
            return out
        if o.post and self.opposite(o.side, price):
            return self.rej(oid, o.owner, o.side, price, qty, "post_only_would_cross")
        self.orders.remove(o)
        self.ev(out, "replaced", oid, o.owner, o.side, price, qty, qty, "priority_lost")
        rem = self.match(out, oid, o.owner, o.side, price, qty, price, o.stp)
        if rem:
            o.price = price
            o.rem = rem
            self.rest(o)
        return out

    def expire(self, now: int) -> list[EventT]:
        if now < 0:
            return self.rej(0, 0, "", 0, 0, "invalid_time")
        self.now = max(self.now, now)
        out: list[EventT] = []
        for o in sorted(
            (o for o in self.orders if o.tif == GTD and o.exp <= now), key=lambda o: (o.exp, o.oid)
        ):
            self.orders.remove(o)
            self.ev(out, "expired", o.oid, o.owner, o.side, o.price, o.rem, 0, "gtd")
        return out

    def end_of_day(self) -> list[EventT]:
        out: list[EventT] = []
        for o in sorted((o for o in self.orders if o.tif == DAY), key=lambda o: o.oid):
            self.orders.remove(o)
            self.ev(out, "expired", o.oid, o.owner, o.side, o.price, o.rem, 0, "day")
        return out

    def set_band(self, low: int, high: int) -> list[EventT]:
        if not (0 < low <= high and low % self.tick == 0 and high % self.tick == 0):
            return self.rej(0, 0, "", 0, 0, "invalid_band")
        self.band = (low, high)
        return []

    def depth(self, n: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        def agg(side: str, reverse: bool) -> list[tuple[int, int, int]]:
            lv: dict[int, list[int]] = {}
            for o in self.orders:
                if o.side == side:
                    a = lv.setdefault(o.price, [0, 0])
                    a[0] += o.rem
                    a[1] += 1
            return [(p, a[0], a[1]) for p, a in sorted(lv.items(), reverse=reverse)][:n]

        return agg(BUY, True), agg(SELL, False)
