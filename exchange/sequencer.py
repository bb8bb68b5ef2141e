"""The sequencer: the single writer of each instrument's book.

It rebuilds every book from the database (open orders in priority order, the engine's seq, band
and clock as stored on the instrument), then applies pending commands in sequence order. For each
batch it writes, in one transaction, the orders' new states, the trades and their settlement
(delivery versus payment: held cash buyer → seller less fees; listed blocks seller → buyer), the
released reserves and the instrument's engine position. If that transaction fails, the in-memory
book is thrown away and rebuilt from what was committed, so a crash at any point loses nothing
and settles nothing twice (a trade is unique by (instrument, engine seq)).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session, sessionmaker

import matching
from exchange import wallets
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
from registry.db import utcnow

log = logging.getLogger(__name__)


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


class _Batch:
    """Applies one batch of engine events to the database, inside the caller's transaction."""

    def __init__(self, session: Session, inst: Instrument) -> None:
        self.s = session
        self.inst = inst
        self.orders: dict[int, Order] = {}
        self.trades = 0
        # Cash accounts locked by `lock()`, by holder: (available, held); and the fee account.
        self.cash: dict[int, tuple[CashAccount, CashAccount]] = {}
        self.fees: CashAccount | None = None

    def lock(self, planned: list[tuple[OrderCommand, list[matching.Event]]]) -> None:
        ids = {cmd.order_id for cmd, _ in planned if cmd.order_id}
        for _, events in planned:
            for ev in events:
                ids.update(i for i in (ev.order_id, ev.maker_id) if i)
        if not ids:
            return
        locked = self.s.scalars(select(Order).where(Order.id.in_(sorted(ids))).order_by(Order.id)
                                .with_for_update(key_share=True).execution_options(populate_existing=True)).all()
        self.orders.update({o.id: o for o in locked})
        holders = sorted({o.holder_id for o in locked})
        for h in holders:
            wallets.holder_accounts(self.s, h)   # opened now if missing, before the locks
        fees = wallets.system_account(self.s, CashAccountKind.FEES)
        rows = self.s.scalars(select(CashAccount).where(
            or_(CashAccount.holder_id.in_(holders), CashAccount.id == fees.id))
            .order_by(CashAccount.id).with_for_update(key_share=True)
            .execution_options(populate_existing=True)).all()
        by_holder: dict[int, dict[CashAccountKind, CashAccount]] = {}
        for a in rows:
            if a.holder_id is None:
                self.fees = a
            elif a.currency == wallets.CURRENCY:
                by_holder.setdefault(a.holder_id, {})[a.kind] = a
        self.cash = {h: (k[CashAccountKind.AVAILABLE], k[CashAccountKind.HELD]) for h, k in by_holder.items()}

    def accounts(self, holder_id: int) -> tuple[CashAccount, CashAccount]:
        """(available, held) of a holder this batch locked."""
        return self.cash[holder_id]

    def release(self, o: Order, amount: int) -> None:
        available, held = self.accounts(o.holder_id)
        wallets.post(self.s, JournalKind.RELEASE, [(held, -amount), (available, amount)], ref=o.ref,
                     already_locked=True)
        o.cash_held -= amount

    def order(self, order_id: int) -> Order:
        o = self.orders.get(order_id)
        if o is None:
            o = self.s.get(Order, order_id, with_for_update={"key_share": True})
            if o is None:
                raise RuntimeError(f"engine event for unknown order {order_id}")
            self.orders[order_id] = o
        return o

    def apply(self, cmd: OrderCommand, events: Iterable[matching.Event]) -> list[dict[str, Any]]:
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
            o.updated_at = utcnow()
        return out

    def settle(self, ev: matching.Event, taker: Order, maker: Order) -> None:
        buy, sell = (taker, maker) if taker.side == matching.BUY else (maker, taker)
        amount = notional(ev.price, ev.qty)
        buyer_fee = fee(amount, self.inst.taker_fee_bp if buy is taker else self.inst.maker_fee_bp)
        seller_fee = fee(amount, self.inst.taker_fee_bp if sell is taker else self.inst.maker_fee_bp)
        if amount + buyer_fee > buy.cash_held:
            raise RuntimeError(f"order {buy.id} holds {buy.cash_held}, trade needs {amount + buyer_fee}")
        _, buyer_held = self.accounts(buy.holder_id)
        seller_available, _ = self.accounts(sell.holder_id)
        assert self.fees is not None
        journal = wallets.post(self.s, JournalKind.SETTLEMENT, [
            (buyer_held, -(amount + buyer_fee)), (seller_available, amount - seller_fee),
            (self.fees, buyer_fee + seller_fee)], ref=f"trade:{self.inst.id}:{ev.seq}", already_locked=True)
        transfer = units.deliver_units(self.s, sell.ref, ev.qty, buy.holder_id,
                                       memo=f"trade {self.inst.symbol} #{ev.seq}")
        buy.cash_held -= amount + buyer_fee
        buy.notional_paid += amount
        buy.fees_paid += buyer_fee
        sell.notional_paid += amount
        sell.fees_paid += seller_fee
        for o in (buy, sell):
            o.filled_kg += ev.qty
        taker.remaining_kg, maker.remaining_kg = ev.remaining, ev.maker_remaining
        self.s.add(Trade(instrument_id=self.inst.id, engine_seq=ev.seq, buy_order_id=buy.id, sell_order_id=sell.id,
                         maker_order_id=maker.id, buyer_id=buy.holder_id, seller_id=sell.holder_id, price=ev.price,
                         qty_kg=ev.qty, notional=amount, buyer_fee=buyer_fee, seller_fee=seller_fee,
                         transfer_id=transfer.id, journal_id=journal.id, executed_at=utcnow()))
        self.trades += 1
        audit.record(self.s, None, "trade.settled", "trade", f"{self.inst.symbol}#{ev.seq}",
                     {"instrument": self.inst.symbol, "engine_seq": ev.seq, "buy_order": buy.id, "sell_order": sell.id,
                      "maker_order": maker.id, "price": ev.price, "qty_kg": ev.qty, "notional": amount,
                      "buyer_fee": buyer_fee, "seller_fee": seller_fee, "journal_id": journal.id,
                      "transfer_id": transfer.id})

    def trim(self, o: Order, by_kg: int) -> None:
        """A resting order got smaller: give back what it no longer needs."""
        released = unlocked = 0
        if o.side == matching.SELL:
            unlocked = units.unlock_units(self.s, o.ref, by_kg)
        elif o.price is not None:
            need = buy_hold(o.price, o.remaining_kg, self.inst.lot_size_kg,
                            max(self.inst.maker_fee_bp, self.inst.taker_fee_bp))
            if o.cash_held > need:
                released = o.cash_held - need
                self.release(o, released)
        audit.record(self.s, None, "order.reduced", "order", o.id,
                     {"by_kg": by_kg, "remaining_kg": o.remaining_kg, "cash_released": released,
                      "units_unlocked_kg": unlocked})

    def finish(self, o: Order) -> None:
        """The order left the book: release whatever it still reserves."""
        released = unlocked = 0
        if o.side == matching.BUY and o.cash_held > 0:
            released = o.cash_held
            self.release(o, released)
        elif o.side == matching.SELL and o.filled_kg < o.qty_kg:
            # A fully filled sell delivered everything it listed: nothing is left to unlock.
            unlocked = units.unlock_units(self.s, o.ref)
        audit.record(self.s, None, f"order.{o.status.value}", "order", o.id,
                     {"filled_kg": o.filled_kg, "reason": o.reason, "cash_released": released,
                      "units_unlocked_kg": unlocked, "notional_paid": o.notional_paid, "fees_paid": o.fees_paid})


def _run(book: matching.OrderBook, cmd: OrderCommand, order: Order | None) -> list[matching.Event]:
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
        self.factory = session_factory
        self.only = instrument_ids
        self.batch_size = batch_size
        self.books: dict[int, matching.OrderBook] = {}
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _instrument_ids(self, session: Session) -> list[int]:
        stmt = select(Instrument.id).where(Instrument.status != InstrumentStatus.DELISTED).order_by(Instrument.id)
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
        try:
            with self.factory() as s, s.begin():
                if s.get_bind().dialect.name == "postgresql" and not s.execute(
                        text("SELECT pg_try_advisory_xact_lock(7340, :i)"), {"i": inst_id}).scalar():
                    return 0
                cmds = list(s.scalars(select(OrderCommand).where(
                    OrderCommand.instrument_id == inst_id, OrderCommand.status == CommandStatus.PENDING)
                    .order_by(OrderCommand.id).limit(self.batch_size)))
                if not cmds:
                    return 0
                inst = s.get(Instrument, inst_id, with_for_update={"key_share": True})
                assert inst is not None
                book = self.book(s, inst)
                batch = _Batch(s, inst)
                now = utcnow()
                # 1. The engine: pure and in memory, so the batch's whole effect is known before any
                #    row is touched.
                planned: list[tuple[OrderCommand, list[matching.Event]]] = []
                for cmd in cmds:
                    order = s.get(Order, cmd.order_id) if cmd.kind == "place" and cmd.order_id else None
                    if order is not None and order.status is not OrderStatus.PENDING:
                        planned.append((cmd, []))
                        continue
                    planned.append((cmd, _run(book, cmd, order)))
                # 2. Lock what it touches in one global order, orders then cash accounts, each by id:
                #    the order every other writer follows (order entry locks an order, then its
                #    holder's accounts), so a batch cannot deadlock with order entry.
                batch.lock(planned)
                # 3. Write it.
                for cmd, events in planned:
                    cmd.result = batch.apply(cmd, events)
                    cmd.status, cmd.processed_at = CommandStatus.DONE, now
                    if cmd.kind == "expire":
                        inst.engine_now = max(inst.engine_now, int(cmd.args["now"]))
                    elif cmd.kind == "set_band" and not any(e.kind == matching.REJECTED for e in events):
                        inst.band_low, inst.band_high = int(cmd.args["low"]), int(cmd.args["high"])
                inst.engine_seq = book.seq
                return len(cmds)
        except Exception:
            # The database did not take this batch: forget the book, rebuild it next time.
            self.books.pop(inst_id, None)
            raise

    # --- the embedded thread ------------------------------------------------------------------

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def start(self, idle_s: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    n = self.run_once()
                except Exception:
                    log.exception("sequencer batch failed; the book is rebuilt from the database")
                    n = 0
                if n == 0:
                    with self._wake:
                        self._wake.wait(idle_s)

        self._thread = threading.Thread(target=loop, name="sequencer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
