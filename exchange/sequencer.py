"""The sequencer: the single writer of each instrument's book.

It rebuilds every book from the database (open orders in priority order, the engine's seq, band
and clock as stored on the instrument), then applies pending commands in sequence order. For each
batch it writes, in one transaction, the orders' new states, the trades and their settlement
(delivery versus payment: held cash buyer → seller less fees; listed blocks seller → buyer), the
released reserves and the instrument's engine position. If that transaction fails, the in-memory
book is thrown away and rebuilt from what was committed, so a crash at any point loses nothing
and settles nothing twice (a trade is unique by (instrument, engine seq)).

A command that fails every time (a bug, a constraint its settlement breaks, bad arguments) must
not stall its instrument: when a batch fails, the sequencer bisects it in fresh transactions, the
commands before the failing one apply as usual and in order, and a command that fails alone twice
is set aside (`CommandStatus.FAILED`; a place's order is rejected with reason `engine_error` and
its hold released). A failure of the environment (lost connection, serialization failure,
deadlock, a full disk: `transient()`) never sets a command aside; the batch is retried on the next
run. If even setting aside fails, the instrument is halted with a reason the operators see, and the
sequencer leaves it alone until they resume it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from sqlalchemy import Table, exc, func, or_, select, text
from sqlalchemy.orm import Session, sessionmaker

import matching
from exchange import notify, wallets
from exchange.models import (
    CashAccount,
    CashAccountKind,
    CommandStatus,
    Instrument,
    InstrumentStatus,
    JournalKind,
    Order,
    OrderCommand,
    OrderStatus,
    Trade,
)
from exchange.orders import epoch
from exchange.pricing import buy_hold, fee, notional
from registry import audit, units
from registry.db import bulk_insert, bulk_update, in_list, utcnow

log = logging.getLogger(__name__)

# `Instrument.status_reason` of an instrument the sequencer halted: it skips such an instrument until
# an operator resumes it (an operator's own halt still lets cancels and end-of-day through).
HALT_PREFIX = "sequencer: "
ENGINE_ERROR = "engine_error"   # the reason of an order whose place command was set aside


# Failures of the database or the machine, not of a command: PostgreSQL SQLSTATE classes (connection
# exception, transaction rollback = serialization failure or deadlock, insufficient resources, lock
# not available, operator intervention = cancel or shutdown, system error) and SQLite result codes.
_TRANSIENT_SQLSTATE = ("08", "40", "53", "55", "57", "58")
_TRANSIENT_SQLITE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_NOMEM",
                     "SQLITE_INTERRUPT", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL")


def transient(e: BaseException) -> bool:
    """Whether a failure says nothing about the commands being applied: the database or the machine
    failed (a lost or invalidated connection, a pool timeout, a serialization failure or deadlock, a
    lock or statement timeout, a full disk, SQLite's "database is locked", an OSError of our own
    process). Such a batch is retried as it is on the next run, never split, and no command is set
    aside however often it fails. Anything else (a constraint or data error, a program limit such as
    too many parameters, an error in our code) may be the commands' own fault: the failing command is
    isolated, and set aside only if it fails again alone. A driver error we cannot place is taken as
    transient: rejecting a good order is worse than retrying a bad one."""
    if isinstance(e, exc.DBAPIError):
        if e.connection_invalidated:
            return True
        state = getattr(e.orig, "sqlstate", None)
        if isinstance(state, str) and state:
            return state[:2] in _TRANSIENT_SQLSTATE
        name = getattr(e.orig, "sqlite_errorname", None)
        if isinstance(name, str) and name:
            return name.startswith(_TRANSIENT_SQLITE)
        return isinstance(e, exc.OperationalError | exc.InterfaceError)
    return isinstance(e, exc.DisconnectionError | exc.TimeoutError | OSError | MemoryError)


def build_book(session: Session, inst: Instrument) -> matching.OrderBook:
    """The book as the database says it is: open orders per side, best price first, then by the
    engine seq that gave each its priority."""
    def rows(side: str) -> list[list[Any]]:
        price_order = Order.price.desc() if side == matching.BUY else Order.price.asc()
        stmt = (select(Order).where(Order.instrument_id == inst.id, Order.status == OrderStatus.OPEN,
                                    Order.side == side, Order.remaining_kg > 0)
                .order_by(price_order, Order.priority_seq))
        return [[o.id, o.holder_id, o.price, o.remaining_kg, o.tif, epoch(o.expire_at) if o.expire_at else 0,
                 o.post_only, o.stp] for o in session.scalars(stmt)]

    snap = {"version": matching.SNAPSHOT_VERSION, "instrument": inst.symbol,
            "spec": [inst.tick_size, inst.lot_size_kg, inst.min_qty_kg, inst.max_qty_kg],
            "band": [inst.band_low, inst.band_high], "seq": inst.engine_seq, "now": inst.engine_now,
            "bids": rows(matching.BUY), "asks": rows(matching.SELL)}
    return matching.OrderBook.from_snapshot(snap)


_ORDERS = cast(Table, Order.__table__)
_COMMANDS = cast(Table, OrderCommand.__table__)
_CASH = cast(Table, CashAccount.__table__)
_TRADES = cast(Table, Trade.__table__)
# What settlement may change on an order, compared with the loaded values to find what to write.
_CHANGING = ("price", "filled_kg", "remaining_kg", "status", "reason", "cash_held", "notional_paid", "fees_paid",
             "priority_seq")


@dataclass(slots=True)
class _Ord:
    """An order row as the batch works on it: loaded with Core and written back with one UPDATE per
    set of changed columns (the ORM's unit of work costs ~0.1 ms per object; a batch changes
    thousands)."""

    id: int
    holder_id: int
    side: str
    order_type: str
    tif: str
    price: int | None
    qty_kg: int
    filled_kg: int
    remaining_kg: int
    post_only: bool
    stp: str
    expire_at: dt.datetime | None
    status: OrderStatus
    reason: str | None
    cash_held: int
    notional_paid: int
    fees_paid: int
    priority_seq: int | None
    loaded: tuple[Any, ...] = ()

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "id", "holder_id", "side", "order_type", "tif", "price", "qty_kg", "filled_kg", "remaining_kg",
        "post_only", "stp", "expire_at", "status", "reason", "cash_held", "notional_paid", "fees_paid",
        "priority_seq")

    def __post_init__(self) -> None:
        self.loaded = self._changing()

    def _changing(self) -> tuple[Any, ...]:   # the values of _CHANGING, in its order
        return (self.price, self.filled_kg, self.remaining_kg, self.status, self.reason, self.cash_held,
                self.notional_paid, self.fees_paid, self.priority_seq)

    @property
    def ref(self) -> str:
        return f"order:{self.id}"

    def changes(self) -> dict[str, Any]:
        now = self._changing()
        if now == self.loaded:
            return {}
        return {c: v for c, v, old in zip(_CHANGING, now, self.loaded, strict=True) if v != old}


@dataclass(slots=True)
class _Cash:
    id: int
    holder_id: int | None
    kind: CashAccountKind
    currency: str
    balance: int
    loaded: int = 0

    def __post_init__(self) -> None:
        self.loaded = self.balance


def _orders(session: Session, ids: list[int], *, lock: bool) -> list[_Ord]:
    stmt = (select(*[_ORDERS.c[c] for c in _Ord.COLUMNS]).where(in_list(session, _ORDERS.c.id, ids))
            .order_by(_ORDERS.c.id))
    if lock:
        stmt = stmt.with_for_update(key_share=True)
    return [_Ord(*row) for row in session.execute(stmt)]


def _write_orders(session: Session, orders: Iterable[_Ord], now: dt.datetime) -> None:
    """One bulk UPDATE of the changed orders, setting every column that changed on any of them (an
    unchanged value is written back as it was): one statement rather than one per set of columns."""
    changed = [(o, o.changes()) for o in orders]
    changed = [(o, c) for o, c in changed if c]
    if not changed:
        return
    cols = [c for c in _CHANGING if any(c in ch for _, ch in changed)]
    bulk_update(session, _ORDERS, [{"id": o.id, "updated_at": now, **{c: getattr(o, c) for c in cols}}
                                   for o, _ in changed])


class _Batch:
    """Applies one batch of engine events to the database, inside the caller's transaction.

    Everything is computed in memory on rows locked up front (orders, cash accounts, listed blocks)
    and written at `flush()` with a statement per table, not per trade: journals and postings
    (`wallets.Journals`), transfers, movements and carved blocks (`units.ListedUnits`), trades and
    audit records as bulk INSERTs, and one UPDATE per changed order, account and block.
    """

    def __init__(self, session: Session, inst: Instrument) -> None:
        self.s = session
        self.inst = inst
        self.orders: dict[int, _Ord] = {}
        # Per trade: its row, its audit payload, its journal's index and its delivery; the ids are
        # known only once the batch is written, and `flush()` fills them into both.
        self.settled: list[tuple[dict[str, Any], dict[str, Any], int, units.Delivery]] = []
        self.audit: list[tuple[str, str, int | str, dict[str, Any]]] = []
        # Cash accounts locked by `lock()`, by holder: (available, held); and the fee account.
        self.cash: dict[int, tuple[_Cash, _Cash]] = {}
        self.fees: _Cash | None = None
        self.locked_cash: list[_Cash] = []
        self.now = utcnow()   # the time of every journal and trade of the batch
        self.journals = wallets.Journals(session, now=self.now)
        # A buy order's latest settlement journal in this batch (its index in `journals`): a buy that
        # fills releases what it held beyond its trades in that same journal, not in one of its own.
        self.last_settlement: dict[int, int] = {}
        self.units: units.ListedUnits | None = None

    def load(self, ids: list[int]) -> None:
        """The orders the batch's place commands name, in one query (not locked: pending orders are
        written only by the sequencer)."""
        if ids:
            self.orders.update({o.id: o for o in _orders(self.s, ids, lock=False)})

    def lock(self, planned: list[tuple[Any, list[matching.Event]]]) -> None:
        ids = {cmd.order_id for cmd, _ in planned if cmd.order_id}
        buyers: set[int] = set()
        for _, events in planned:
            for ev in events:
                ids.update(i for i in (ev.order_id, ev.maker_id) if i)
        if not ids:
            self.units = units.ListedUnits(self.s, [])
            return
        locked = _orders(self.s, sorted(ids), lock=True)
        self.orders.update({o.id: o for o in locked})
        holders = sorted({o.holder_id for o in locked})
        fees = wallets.system_account(self.s, CashAccountKind.FEES)
        stmt = (select(_CASH.c.id, _CASH.c.holder_id, _CASH.c.kind, _CASH.c.currency, _CASH.c.balance)
                .where(or_(in_list(self.s, _CASH.c.holder_id, holders), _CASH.c.id == fees.id))
                .order_by(_CASH.c.id).with_for_update(key_share=True))
        rows = [_Cash(*r) for r in self.s.execute(stmt)]
        have = {a.holder_id for a in rows if a.kind is CashAccountKind.HELD and a.currency == wallets.CURRENCY}
        if len(have) < len(holders):
            for h in holders:
                if h not in have:
                    wallets.holder_accounts(self.s, h)   # opened on first use, then locked with the rest
            rows = [_Cash(*r) for r in self.s.execute(stmt)]
        self.locked_cash = rows
        by_holder: dict[int, dict[CashAccountKind, _Cash]] = {}
        for a in rows:
            if a.holder_id is None:
                self.fees = a
            elif a.currency == wallets.CURRENCY:
                by_holder.setdefault(a.holder_id, {})[a.kind] = a
        self.cash = {h: (k[CashAccountKind.AVAILABLE], k[CashAccountKind.HELD]) for h, k in by_holder.items()}
        # Then the listed blocks of the sells, after orders and cash (the same global lock order).
        self.units = units.ListedUnits(self.s, [o.ref for o in locked if o.side == matching.SELL])
        for _, events in planned:
            for ev in events:
                if ev.kind == matching.TRADE:
                    buyers.update(self.orders[i].holder_id for i in (ev.order_id, ev.maker_id)
                                  if self.orders[i].side == matching.BUY)
        self.units.prefetch_accounts(sorted(buyers))

    def accounts(self, holder_id: int) -> tuple[_Cash, _Cash]:
        """(available, held) of a holder this batch locked."""
        return self.cash[holder_id]

    def release(self, o: _Ord, amount: int) -> None:
        available, held = self.accounts(o.holder_id)
        self.journals.post(JournalKind.RELEASE, [(held, -amount), (available, amount)], ref=o.ref)
        o.cash_held -= amount

    def order(self, order_id: int) -> _Ord:
        o = self.orders.get(order_id)
        if o is None:
            raise RuntimeError(f"engine event for unknown order {order_id}")
        return o

    def apply(self, cmd: Any, events: Iterable[matching.Event]) -> list[dict[str, Any]]:
        out = []
        for ev in events:
            out.append(ev.to_dict())
            kind = ev.kind
            if kind == matching.REJECTED:
                if cmd.kind == "place" and ev.order_id == cmd.order_id:
                    o = self.order(ev.order_id)
                    o.status, o.reason = OrderStatus.REJECTED, ev.reason
                    self.finish(o)
                continue   # a rejected cancel/reduce/replace changes nothing but the command's result
            if ev.order_id == 0:
                continue
            o = self.order(ev.order_id)
            if kind == matching.ACCEPTED:
                o.status, o.remaining_kg, o.priority_seq = OrderStatus.OPEN, ev.remaining, ev.seq
            elif kind == matching.TRADE:
                self.settle(ev, o, self.order(ev.maker_id))
            elif kind == matching.REDUCED:
                o.remaining_kg = ev.remaining
                self.trim(o, ev.qty)
            elif kind == matching.REPLACED:
                o.price, o.remaining_kg = ev.price, ev.remaining
                if ev.reason == "priority_lost":
                    o.priority_seq = ev.seq
            elif kind in (matching.CANCELLED, matching.EXPIRED):
                o.status = OrderStatus.CANCELLED if kind == matching.CANCELLED else OrderStatus.EXPIRED
                o.reason, o.remaining_kg = ev.reason, 0
                self.finish(o)
            elif kind == matching.DONE:
                o.status, o.remaining_kg = OrderStatus.FILLED, 0
                self.finish(o)
        return out

    def settle(self, ev: matching.Event, taker: _Ord, maker: _Ord) -> None:
        assert self.units is not None and self.fees is not None
        buy, sell = (taker, maker) if taker.side == matching.BUY else (maker, taker)
        amount = notional(ev.price, ev.qty)
        buyer_fee = fee(amount, self.inst.taker_fee_bp if buy is taker else self.inst.maker_fee_bp)
        seller_fee = fee(amount, self.inst.taker_fee_bp if sell is taker else self.inst.maker_fee_bp)
        if amount + buyer_fee > buy.cash_held:
            raise RuntimeError(f"order {buy.id} holds {buy.cash_held}, trade needs {amount + buyer_fee}")
        _, buyer_held = self.accounts(buy.holder_id)
        seller_available, _ = self.accounts(sell.holder_id)
        journal = self.journals.post(JournalKind.SETTLEMENT, [
            (buyer_held, -(amount + buyer_fee)), (seller_available, amount - seller_fee),
            (self.fees, buyer_fee + seller_fee)], ref=f"trade:{self.inst.id}:{ev.seq}")
        delivery = self.units.deliver(sell.ref, ev.qty, buy.holder_id, memo=f"trade {self.inst.symbol} #{ev.seq}")
        self.last_settlement[buy.id] = journal
        buy.cash_held -= amount + buyer_fee
        buy.notional_paid += amount
        buy.fees_paid += buyer_fee
        sell.notional_paid += amount
        sell.fees_paid += seller_fee
        for o in (buy, sell):
            o.filled_kg += ev.qty
        taker.remaining_kg, maker.remaining_kg = ev.remaining, ev.maker_remaining
        trade = {"instrument_id": self.inst.id, "engine_seq": ev.seq, "buy_order_id": buy.id,
                 "sell_order_id": sell.id, "maker_order_id": maker.id, "buyer_id": buy.holder_id,
                 "seller_id": sell.holder_id, "price": ev.price, "qty_kg": ev.qty, "notional": amount,
                 "buyer_fee": buyer_fee, "seller_fee": seller_fee, "executed_at": self.now}
        payload = {"instrument": self.inst.symbol, "engine_seq": ev.seq, "buy_order": buy.id,
                   "sell_order": sell.id, "maker_order": maker.id, "price": ev.price, "qty_kg": ev.qty,
                   "notional": amount, "buyer_fee": buyer_fee, "seller_fee": seller_fee}
        self.settled.append((trade, payload, journal, delivery))
        self.audit.append(("trade.settled", "trade", f"{self.inst.symbol}#{ev.seq}", payload))

    def trim(self, o: _Ord, by_kg: int) -> None:
        """A resting order got smaller: give back what it no longer needs."""
        assert self.units is not None
        released = unlocked = 0
        if o.side == matching.SELL:
            unlocked = self.units.unlock(o.ref, by_kg)
        elif o.price is not None:
            # A replace queued behind this reduce already topped the reserve up for its new price
            # (order entry does that): keep enough for the highest price the order may still take.
            queued = self.s.scalars(select(_COMMANDS.c.args).where(
                _COMMANDS.c.order_id == o.id, _COMMANDS.c.kind == "replace",
                _COMMANDS.c.status == CommandStatus.PENDING)).all()
            price = max([o.price, *(int(a["price"]) for a in queued)])
            need = buy_hold(price, o.remaining_kg, self.inst.lot_size_kg,
                            max(self.inst.maker_fee_bp, self.inst.taker_fee_bp))
            if o.cash_held > need:
                released = o.cash_held - need
                self.release(o, released)
        self.audit.append(("order.reduced", "order", o.id,
                           {"by_kg": by_kg, "remaining_kg": o.remaining_kg, "cash_released": released,
                            "units_unlocked_kg": unlocked}))

    def finish(self, o: _Ord) -> None:
        """The order left the book: release whatever it still reserves."""
        assert self.units is not None
        released = unlocked = 0
        if o.side == matching.BUY and o.cash_held > 0:
            released = o.cash_held
            journal = self.last_settlement.get(o.id) if o.status is OrderStatus.FILLED else None
            if journal is None:
                self.release(o, released)
            else:   # the surplus of a filled buy goes back in its last trade's settlement journal
                available, held = self.accounts(o.holder_id)
                self.journals.fold(journal, [(held, -released), (available, released)],
                                   memo=f"releases {released} held by {o.ref}")
                o.cash_held = 0
        elif o.side == matching.SELL and o.filled_kg < o.qty_kg:
            unlocked = self.units.unlock(o.ref)
        self.audit.append((f"order.{o.status.value}", "order", o.id,
                           {"filled_kg": o.filled_kg, "reason": o.reason, "cash_released": released,
                            "units_unlocked_kg": unlocked, "notional_paid": o.notional_paid,
                            "fees_paid": o.fees_paid}))

    def flush(self, commands: list[tuple[int, list[dict[str, Any]]]]) -> int:
        """Write what the batch computed (and the commands' results); returns the number of trades."""
        assert self.units is not None
        now = utcnow()
        self.s.flush()   # the instrument row
        bulk_update(self.s, _COMMANDS, [{"id": c_id, "status": CommandStatus.DONE, "processed_at": now,
                                         "result": result} for c_id, result in commands])
        _write_orders(self.s, self.orders.values(), now)
        bulk_update(self.s, _CASH, [{"id": a.id, "balance": a.balance} for a in self.locked_cash
                                    if a.balance != a.loaded])
        self.units.flush()
        journal_ids = self.journals.flush()
        for trade, payload, journal, delivery in self.settled:
            trade["journal_id"] = payload["journal_id"] = journal_ids[journal]
            trade["transfer_id"] = payload["transfer_id"] = delivery.transfer_id
        bulk_insert(self.s, _TRADES, [trade for trade, *_ in self.settled])
        audit.record_many(self.s, self.audit)
        return len(self.settled)


def _run(book: matching.OrderBook, cmd: Any, order: _Ord | None) -> list[matching.Event]:
    a = cmd.args or {}
    if cmd.kind == "place":
        assert order is not None
        return book.place(order.id, order.holder_id, order.side, order.qty_kg, order.price, order.order_type,
                          order.tif, epoch(order.expire_at) if order.expire_at else 0, order.post_only, order.stp)
    if cmd.kind == "cancel":
        return book.cancel(cmd.order_id or 0)
    if cmd.kind == "reduce":
        return book.reduce(cmd.order_id or 0, int(a["by_kg"]))
    if cmd.kind == "replace":
        return book.replace(cmd.order_id or 0, int(a["price"]))
    if cmd.kind == "expire":
        return book.expire(int(a["now"]))
    if cmd.kind == "end_of_day":
        return book.end_of_day()
    if cmd.kind == "set_band":
        return book.set_band(int(a["low"]), int(a["high"]))
    raise ValueError(f"unknown command {cmd.kind!r}")


class Sequencer:
    """One per process; owns the books of the instruments it is given (all by default).

    `run_once()` processes what is pending and returns how many commands it applied. On
    PostgreSQL an advisory lock per instrument makes sure only one sequencer writes a book.
    """

    def __init__(self, session_factory: sessionmaker[Session], instrument_ids: list[int] | None = None,
                 batch_size: int = 500) -> None:
        # 500: a batch of 2,000 costs ~8% less CPU per trade but takes ~2 s on a slow machine, as long
        # as an order POST waits for its answer; a backlog is drained in more, shorter batches.
        self.factory = session_factory
        self.only = instrument_ids
        self.batch_size = batch_size
        self.books: dict[int, matching.OrderBook] = {}
        # Called after each committed batch with its command ids (in-process waiters; other
        # processes hear of it through exchange.notify).
        self.on_applied: list[Callable[[list[int]], None]] = []
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _instrument_ids(self, session: Session) -> list[int]:
        # Only instruments with queued commands (one indexed probe each): a wake-up costs one query,
        # not an empty transaction per instrument.
        queued = (select(_COMMANDS.c.id).where(_COMMANDS.c.instrument_id == Instrument.id,
                                               _COMMANDS.c.status == CommandStatus.PENDING).exists())
        halted_here = ((Instrument.status == InstrumentStatus.HALTED)
                       & func.coalesce(Instrument.status_reason, "").startswith(HALT_PREFIX))
        stmt = (select(Instrument.id).where(Instrument.status != InstrumentStatus.DELISTED, ~halted_here, queued)
                .order_by(Instrument.id))
        ids = list(session.scalars(stmt))
        return [i for i in ids if self.only is None or i in self.only]

    def book(self, session: Session, inst: Instrument) -> matching.OrderBook:
        book = self.books.get(inst.id)
        if book is None or book.seq != inst.engine_seq:
            # First use, or another process moved this instrument on: trust the database.
            book = self.books[inst.id] = build_book(session, inst)
        return book

    def run_once(self) -> int:
        done = 0
        with self.factory() as s:
            ids = self._instrument_ids(s)
        for inst_id in ids:
            while True:
                n = self._run_batch(inst_id)
                done += n
                if n < self.batch_size:
                    break
        return done

    def _run_batch(self, inst_id: int) -> int:
        applied: list[int] = []
        tried: list[int] = []
        try:
            n = self._write_batch(inst_id, applied, self.batch_size, tried)
        except Exception as e:
            if transient(e) or not tried:
                raise
            log.warning("sequencer: a batch of %d commands of instrument %d failed (%s: %s); isolating the "
                        "failing command", len(tried), inst_id, type(e).__name__, e)
            n = self._isolate(inst_id, applied, len(tried), e)
        finally:
            if applied:
                for callback in self.on_applied:
                    callback(applied)
        return n

    def _isolate(self, inst_id: int, applied: list[int], failed: int, error: Exception) -> int:
        """The first `failed` pending commands of the instrument failed as one batch: apply them in
        order in smaller batches (bisecting the failing prefix), set aside a command that fails
        alone twice, and go on with the rest. Returns how many commands were applied or set aside.

        Each attempt is a fresh transaction on a book rebuilt from the database, so a command that
        failed only in company, or only once, applies normally. A transient failure is raised
        (the next run starts over); so is the loss of the instrument to another sequencer."""
        done, left = 0, failed
        bad: int | None = failed   # a prefix of the pending commands this long is known to fail
        alone = 0                  # how many times in a row the head command failed on its own
        while left > 0:
            size = left if bad is None else max(1, bad // 2)
            tried: list[int] = []
            try:
                n = self._write_batch(inst_id, applied, size, tried)
            except Exception as e:
                if transient(e) or not tried:
                    raise
                error = e
                if size > 1:
                    bad = size
                    continue
                alone += 1
                if alone < 2:
                    continue
                if not self._set_aside(inst_id, tried[0], error, applied):
                    return done   # halted, or another sequencer has it now
                done, left, bad, alone = done + 1, left - 1, None, 0
                continue
            if n == 0:
                return done
            done, left, alone = done + n, left - n, 0
            if bad is not None:
                bad = bad - n if bad > n else None   # the suspect went through alone: it did not fail again
        return done

    def _set_aside(self, inst_id: int, cmd_id: int, error: Exception, applied: list[int]) -> bool:
        """Mark the command failed, in one transaction with its audit record; a pending place's order
        is rejected and its hold released through the batch's own release path. If that fails too,
        halt the instrument. Returns whether the command was set aside."""
        reason = f"{type(error).__name__}: {error}"[:2000]
        try:
            with self.factory() as s, s.begin():
                if not self._lock(s, inst_id):
                    return False
                head = s.execute(select(_COMMANDS.c.id, _COMMANDS.c.kind, _COMMANDS.c.order_id, _COMMANDS.c.args)
                                 .where(_COMMANDS.c.instrument_id == inst_id,
                                        _COMMANDS.c.status == CommandStatus.PENDING)
                                 .order_by(_COMMANDS.c.id).limit(1)).first()
                if head is None or head.id != cmd_id:
                    return False   # someone else moved the queue on: nothing to set aside here
                inst = s.get(Instrument, inst_id, with_for_update={"key_share": True})
                assert inst is not None
                batch = _Batch(s, inst)
                batch.lock([(head, [])])
                order = batch.orders.get(head.order_id) if head.order_id else None
                rejected = head.kind == "place" and order is not None and order.status is OrderStatus.PENDING
                if rejected:
                    assert order is not None
                    order.status, order.reason = OrderStatus.REJECTED, ENGINE_ERROR
                    batch.finish(order)
                result = [{"kind": "failed", "reason": ENGINE_ERROR, "error": reason,
                           "order_id": head.order_id, "order_rejected": rejected}]
                batch.audit.append(("order_command.failed", "order_command", head.id,
                                    {"instrument": inst.symbol, "kind": head.kind, "order_id": head.order_id,
                                     "error": reason, "order_rejected": rejected}))
                batch.flush([])
                s.execute(_COMMANDS.update().where(_COMMANDS.c.id == head.id).values(
                    status=CommandStatus.FAILED, processed_at=utcnow(), result=result))
                notify.applied(s, inst_id, [head.id])
        except Exception as e:
            if transient(e):
                raise
            log.exception("sequencer: command %d of instrument %d could not be set aside", cmd_id, inst_id)
            self._halt(inst_id, cmd_id, error, e)
            return False
        finally:
            self.books.pop(inst_id, None)   # rebuilt from the database on the next batch
        log.error("sequencer: command %d of instrument %d failed alone twice and was set aside: %s",
                  cmd_id, inst_id, reason)
        applied.append(cmd_id)
        return True

    def _halt(self, inst_id: int, cmd_id: int, error: Exception, aside_error: Exception) -> None:
        """Stop the instrument visibly: halted, with the reason and an audit record. The sequencer
        skips it (`HALT_PREFIX`) until an operator resumes it; its commands stay pending."""
        why = (f"{HALT_PREFIX}command #{cmd_id} fails ({type(error).__name__}: {error}) and could not be "
               f"set aside ({type(aside_error).__name__}: {aside_error})")[:2000]
        with self.factory() as s, s.begin():
            inst = s.get(Instrument, inst_id, with_for_update=True)
            assert inst is not None
            before = inst.status
            inst.status, inst.status_reason = InstrumentStatus.HALTED, why
            audit.record(s, None, "instrument.halted", "instrument", inst.id,
                         {"from": before.value, "to": InstrumentStatus.HALTED.value, "reason": why,
                          "command": cmd_id})
        log.critical("sequencer: instrument %d halted: %s", inst_id, why)

    @staticmethod
    def _lock(s: Session, inst_id: int) -> bool:
        """On PostgreSQL, this sequencer's turn at the instrument for the transaction (False: another
        sequencer has it)."""
        return s.get_bind().dialect.name != "postgresql" or bool(s.execute(
            text("SELECT pg_try_advisory_xact_lock(7340, :i)"), {"i": inst_id}).scalar())

    def _write_batch(self, inst_id: int, applied: list[int], limit: int, tried: list[int]) -> int:
        """Apply up to `limit` pending commands in one transaction; `tried` gets the ids taken."""
        try:
            with self.factory() as s, s.begin():
                if not self._lock(s, inst_id):
                    return 0
                cmds = s.execute(select(_COMMANDS.c.id, _COMMANDS.c.kind, _COMMANDS.c.order_id, _COMMANDS.c.args)
                                 .where(_COMMANDS.c.instrument_id == inst_id,
                                        _COMMANDS.c.status == CommandStatus.PENDING)
                                 .order_by(_COMMANDS.c.id).limit(limit)).all()
                if not cmds:
                    return 0
                tried.extend(c.id for c in cmds)
                inst = s.get(Instrument, inst_id, with_for_update={"key_share": True})
                assert inst is not None
                book = self.book(s, inst)
                batch = _Batch(s, inst)
                # 1. The engine: pure and in memory, so the batch's whole effect is known before any
                #    row is touched.
                planned: list[tuple[Any, list[matching.Event]]] = []
                batch.load([c.order_id for c in cmds if c.kind == "place" and c.order_id])
                for cmd in cmds:
                    order = batch.orders.get(cmd.order_id) if cmd.kind == "place" and cmd.order_id else None
                    if order is not None and order.status is not OrderStatus.PENDING:
                        planned.append((cmd, []))
                        continue
                    planned.append((cmd, _run(book, cmd, order)))
                # 2. Lock what it touches in one global order, orders then cash accounts, each by id:
                #    the order every other writer follows (order entry locks an order, then its
                #    holder's accounts), so a batch cannot deadlock with order entry.
                batch.lock(planned)
                # 3. Write it.
                results = []
                for cmd, events in planned:
                    results.append((cmd.id, batch.apply(cmd, events)))
                    if cmd.kind == "expire":
                        inst.engine_now = max(inst.engine_now, int(cmd.args["now"]))
                    elif cmd.kind == "set_band" and not any(e.kind == matching.REJECTED for e in events):
                        inst.band_low, inst.band_high = int(cmd.args["low"]), int(cmd.args["high"])
                inst.engine_seq = book.seq
                batch.flush(results)
                notify.applied(s, inst_id, [c.id for c in cmds])
            applied.extend(c.id for c in cmds)
            return len(cmds)
        except Exception:
            # The database did not take this batch: forget the book, rebuild it next time.
            self.books.pop(inst_id, None)
            raise

    # --- the embedded thread ------------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    def serve(self, idle_s: float = 0.5) -> None:
        """Apply commands until `stop()`; between runs that found nothing, sleep until `wake()` or
        `idle_s` seconds. The flag is cleared before each run, so a wake during a run is not lost."""
        while not self._stop.is_set():
            self._wakeup.clear()
            try:
                n = self.run_once()
            except Exception:
                log.exception("sequencer batch failed; the book is rebuilt from the database")
                n = 0
            if n == 0:
                self._wakeup.wait(idle_s)

    def start(self, idle_s: float = 0.5) -> None:
        def loop() -> None:
            self.serve(idle_s)

        self._thread = threading.Thread(target=loop, name="sequencer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
