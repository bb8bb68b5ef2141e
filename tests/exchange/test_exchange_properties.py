"""Property test of the exchange: a stateful model of deposits, order entry (limit, IOC, FOK, post-only,
market, DAY, GTD), cancel/reduce/replace, expiry and end-of-day commands, sequencer runs and restarts,
and retirements, against the database.

After every step: the registry and ledger invariants hold, units and money are conserved, no balance
or hold is negative, retired blocks never move, every buy order's `cash_held` is what its journals
say, every sell order lists exactly what it still offers, every trade settled exactly once and
exactly (buyer paid notional + fee, seller got notional - fee, the platform got both fees), and the
sequencer's in-memory book equals the one rebuilt from the database.

Each hypothesis example gets a fresh migrated database: on SQLite a copy of the template file, on
PostgreSQL the test database truncated. `exchange_problems()` is shared with the concurrency test.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import defaultdict

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import matching
import registry.db  # noqa: F401  (SQLite pragmas and BEGIN IMMEDIATE listeners)
from exchange import instruments, orders, wallets
from exchange.errors import InsufficientFunds
from exchange.models import (
    CashAccount,
    CashAccountKind,
    CommandStatus,
    Deposit,
    Instrument,
    Journal,
    JournalKind,
    Order,
    OrderCommand,
    OrderStatus,
    Posting,
    Trade,
    Withdrawal,
    WithdrawalStatus,
)
from exchange.orders import OrderRequest, epoch
from exchange.pricing import buy_hold, fee, notional
from exchange.sequencer import Sequencer, build_book
from registry import invariants, units
from registry.db import utcnow
from registry.errors import Conflict, InsufficientUnits, InvalidInput, NotFound, RegistryError
from registry.models import (
    Account,
    AccountKind,
    Batch,
    Block,
    BlockStatus,
    HolderKind,
    Movement,
    Transfer,
)
from tests.factories import issued_batch, party, registered_project, world
from tests.freshdb import FreshDb

ON_PG = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql"))

_RETIRE = dict(beneficiary="大湾区论坛", jurisdiction="广东省深圳市", purpose="event_offset")


# --------------------------------------------------------------------------------------------------
# Exchange-wide consistency, straight from the database (also used by the concurrency test)
# --------------------------------------------------------------------------------------------------

def _i(v: object) -> int:
    return int(v or 0)  # type: ignore[call-overload]


def exchange_problems(s: Session) -> list[str]:
    """Every inconsistency between orders, holds, listed blocks, trades, settlements and commands."""
    p: list[str] = []
    insts = {i.id: i for i in s.scalars(select(Instrument))}
    all_orders = {o.id: o for o in s.scalars(select(Order))}
    trades = list(s.scalars(select(Trade).order_by(Trade.id)))
    held_acc = {h: a for h, a in s.execute(select(CashAccount.holder_id, CashAccount.id).where(
        CashAccount.kind == CashAccountKind.HELD))}
    avail_acc = {h: a for h, a in s.execute(select(CashAccount.holder_id, CashAccount.id).where(
        CashAccount.kind == CashAccountKind.AVAILABLE))}
    fees_acc = s.scalar(select(CashAccount).where(CashAccount.holder_id.is_(None),
                                                  CashAccount.kind == CashAccountKind.FEES))
    holding = {h: a for h, a in s.execute(select(Account.holder_id, Account.id).where(
        Account.kind == AccountKind.HOLDING))}

    # balances and holds never negative
    for aid, kind, bal in s.execute(select(CashAccount.id, CashAccount.kind, CashAccount.balance)):
        if kind is not CashAccountKind.BANK and bal < 0:
            p.append(f"cash account {aid} ({kind}) is negative: {bal}")
    for o in all_orders.values():
        if o.cash_held < 0:
            p.append(f"order {o.id} holds {o.cash_held}")
        if o.side == matching.SELL and o.cash_held:
            p.append(f"sell order {o.id} holds cash {o.cash_held}")
        if o.status is OrderStatus.OPEN and o.remaining_kg <= 0:
            p.append(f"order {o.id} is open with nothing remaining")
        if o.status.is_final and o.remaining_kg:
            p.append(f"order {o.id} is {o.status.value} with {o.remaining_kg} kg remaining")
        if o.status is OrderStatus.PENDING and (o.filled_kg or o.remaining_kg):
            p.append(f"pending order {o.id} has filled {o.filled_kg} / remaining {o.remaining_kg}")

    # fills per order add up to its trades
    filled: dict[int, int] = defaultdict(int)
    paid: dict[int, int] = defaultdict(int)
    fees_by: dict[int, int] = defaultdict(int)
    spent: dict[int, int] = defaultdict(int)
    for t in trades:
        for oid, f in ((t.buy_order_id, t.buyer_fee), (t.sell_order_id, t.seller_fee)):
            filled[oid] += t.qty_kg
            paid[oid] += t.notional
            fees_by[oid] += f
        spent[t.buy_order_id] += t.notional + t.buyer_fee
    for o in all_orders.values():
        if (o.filled_kg, o.notional_paid, o.fees_paid) != (filled[o.id], paid[o.id], fees_by[o.id]):
            p.append(f"order {o.id} says filled {o.filled_kg} kg, paid {o.notional_paid}, fees {o.fees_paid}; "
                     f"its trades say {filled[o.id]} kg, {paid[o.id]}, {fees_by[o.id]}")

    # buy orders: cash_held == holds - releases (journals ref order:<id> on the held account, and the
    # release of a filled buy folded into the settlement journal of its last trade) - settlements
    moved: dict[str, int] = defaultdict(int)
    last_fill: dict[int, int] = {}
    for t in trades:   # by id: in settlement order
        last_fill[t.buy_order_id] = t.id
    settle_legs: dict[int, dict[int, int]] = defaultdict(dict)
    for jid, acc, amount in s.execute(select(Posting.journal_id, Posting.account_id, Posting.amount)
                                      .join(Journal, Journal.id == Posting.journal_id)
                                      .where(Journal.kind == JournalKind.SETTLEMENT)):
        settle_legs[jid][acc] = settle_legs[jid].get(acc, 0) + amount
    for t in trades:
        buy = all_orders[t.buy_order_id]
        moved[buy.ref] -= settle_legs.get(t.journal_id, {}).get(avail_acc.get(buy.holder_id), 0)
    for ref, acc, amount in s.execute(
            select(Journal.ref, Posting.account_id, Posting.amount).join(Posting, Posting.journal_id == Journal.id)
            .where(Journal.kind.in_([JournalKind.HOLD, JournalKind.RELEASE]), Journal.ref.like("order:%"))):
        if acc in held_acc.values():
            moved[ref] += amount
    held_by_holder: dict[int, int] = defaultdict(int)
    for o in all_orders.values():
        if o.side != matching.BUY:
            if moved.get(o.ref):
                p.append(f"sell order {o.id} has cash hold journals adding up to {moved[o.ref]}")
            continue
        held_by_holder[o.holder_id] += o.cash_held
        expect = moved.get(o.ref, 0) - spent[o.id]
        if o.cash_held != expect:
            p.append(f"buy order {o.id} ({o.status.value}) holds {o.cash_held}; holds - releases - settlements "
                     f"= {expect}")
        if o.status.is_final and o.cash_held:
            p.append(f"buy order {o.id} is {o.status.value} but still holds {o.cash_held}")
    requested = defaultdict(int, {h: _i(a) for h, a in s.execute(
        select(Withdrawal.holder_id, func.sum(Withdrawal.amount))
        .where(Withdrawal.status == WithdrawalStatus.REQUESTED).group_by(Withdrawal.holder_id))})
    for holder_id, bal in s.execute(select(CashAccount.holder_id, CashAccount.balance).where(
            CashAccount.kind == CashAccountKind.HELD)):
        if bal != held_by_holder[holder_id] + requested[holder_id]:
            p.append(f"holder {holder_id}: held account {bal}, open buy orders hold {held_by_holder[holder_id]}, "
                     f"pending withdrawals {requested[holder_id]}")

    # sell orders: the listed blocks of order:<id> are what the order still offers
    listed: dict[str, int] = defaultdict(int)
    for ref, acc, kg in s.execute(select(Block.hold_ref, Block.account_id, func.sum(Block.quantity))
                                  .where(Block.status == BlockStatus.LISTED)
                                  .group_by(Block.hold_ref, Block.account_id)):
        listed[ref] += _i(kg)
        oid = int(ref.split(":")[1]) if ref and ref.startswith("order:") else None
        o = all_orders.get(oid) if oid is not None else None
        if o is None or o.side != matching.SELL:
            p.append(f"{kg} kg listed under {ref}, which is no sell order")
        elif holding.get(o.holder_id) != acc:
            p.append(f"{kg} kg listed under {ref} sit in account {acc}, not its seller's")
    for o in all_orders.values():
        if o.side != matching.SELL:
            continue
        want = 0 if o.status.is_final else o.qty_kg if o.status is OrderStatus.PENDING else o.remaining_kg
        if listed.get(o.ref, 0) != want:
            p.append(f"sell order {o.id} ({o.status.value}, remaining {o.remaining_kg}) has "
                     f"{listed.get(o.ref, 0)} kg listed, expected {want}")

    # trades: priced within both limits, settled exactly once and exactly
    fees_total = 0
    postings = settle_legs
    transfers = {t.id: t for t in s.scalars(select(Transfer).where(
        Transfer.id.in_([t.transfer_id for t in trades]) if trades else Transfer.id < 0))}
    moved_kg = defaultdict(int, {tid: _i(q) for tid, q in s.execute(
        select(Movement.transfer_id, func.sum(Movement.end - Movement.start + 1))
        .where(Movement.transfer_id.is_not(None)).group_by(Movement.transfer_id))})
    # (an order's price is its latest: only never re-priced orders are checked against their limit)
    replaced = set(s.scalars(select(OrderCommand.order_id).where(OrderCommand.kind == "replace")))
    for t in trades:
        inst = insts[t.instrument_id]
        buy, sell = all_orders[t.buy_order_id], all_orders[t.sell_order_id]
        taker_is_buy = t.maker_order_id == sell.id
        if t.maker_order_id not in (buy.id, sell.id):
            p.append(f"trade {t.id}: maker {t.maker_order_id} is neither side")
        if (buy.side, sell.side) != (matching.BUY, matching.SELL) or buy.instrument_id != inst.id \
                or sell.instrument_id != inst.id:
            p.append(f"trade {t.id} pairs orders {buy.id} ({buy.side}) and {sell.id} ({sell.side}) wrongly")
        if (t.buyer_id, t.seller_id) != (buy.holder_id, sell.holder_id) or t.buyer_id == t.seller_id:
            p.append(f"trade {t.id}: buyer {t.buyer_id}, seller {t.seller_id} disagree with the orders")
        if ((buy.price is not None and buy.id not in replaced and t.price > buy.price)
                or (sell.price is not None and sell.id not in replaced and t.price < sell.price)):
            p.append(f"trade {t.id} at {t.price} outside the limits buy {buy.price} / sell {sell.price}")
        if t.qty_kg % inst.lot_size_kg or t.price % inst.tick_size:
            p.append(f"trade {t.id}: {t.qty_kg} kg at {t.price} is off the lot or tick")
        n = notional(t.price, t.qty_kg)
        bf = fee(n, inst.taker_fee_bp if taker_is_buy else inst.maker_fee_bp)
        sf = fee(n, inst.maker_fee_bp if taker_is_buy else inst.taker_fee_bp)
        if (t.notional, t.buyer_fee, t.seller_fee) != (n, bf, sf):
            p.append(f"trade {t.id}: notional/fees {t.notional}/{t.buyer_fee}/{t.seller_fee}, expected {n}/{bf}/{sf}")
        fees_total += t.buyer_fee + t.seller_fee
        # A buy that this trade filled releases what it still held in the same journal: to the
        # buyer's available account, out of the held one (nothing else may be folded in).
        folded = postings.get(t.journal_id, {}).get(avail_acc.get(buy.holder_id), 0)
        if folded and (folded < 0 or buy.status is not OrderStatus.FILLED or last_fill[buy.id] != t.id):
            p.append(f"trade {t.id}: settlement journal {t.journal_id} releases {folded} of buy order {buy.id} "
                     f"({buy.status.value}), which is not the trade that filled it")
        want = {held_acc.get(buy.holder_id): -(t.notional + t.buyer_fee + folded),
                avail_acc.get(sell.holder_id): t.notional - t.seller_fee,
                fees_acc.id if fees_acc else None: t.buyer_fee + t.seller_fee,
                avail_acc.get(buy.holder_id): folded}
        want = {a: v for a, v in want.items() if v}
        if postings.get(t.journal_id) != want:
            p.append(f"trade {t.id}: settlement journal {t.journal_id} posts {postings.get(t.journal_id)}, "
                     f"expected {want}")
        tr = transfers.get(t.transfer_id)
        if tr is None or (tr.from_account_id, tr.to_account_id, tr.quantity_kg) != (
                holding.get(sell.holder_id), holding.get(buy.holder_id), t.qty_kg):
            p.append(f"trade {t.id}: transfer {t.transfer_id} does not deliver {t.qty_kg} kg seller -> buyer")
        elif moved_kg[tr.id] != t.qty_kg:
            p.append(f"trade {t.id}: transfer {tr.id} moved {moved_kg[tr.id]} kg of serials, not {t.qty_kg}")
    if len({t.journal_id for t in trades}) != len(trades) or len({t.transfer_id for t in trades}) != len(trades):
        p.append("two trades share a settlement journal or transfer")
    n_settlements = s.scalar(select(func.count()).select_from(Journal).where(Journal.kind == JournalKind.SETTLEMENT))
    if n_settlements != len(trades):
        p.append(f"{n_settlements} settlement journals for {len(trades)} trades")
    fees_bal = fees_acc.balance if fees_acc else 0
    if fees_bal != fees_total:
        p.append(f"the fees account has {fees_bal}, the trades' fees add up to {fees_total}")

    # every trade event of a processed command is a trade row, and nothing else is
    events: dict[int, set[int]] = defaultdict(set)
    n_events = 0
    for inst_id, result in s.execute(select(OrderCommand.instrument_id, OrderCommand.result)
                                     .where(OrderCommand.status == CommandStatus.DONE)):
        for ev in result or []:
            if ev["kind"] == matching.TRADE:
                events[inst_id].add(ev["seq"])
                n_events += 1
    rows: dict[int, set[int]] = defaultdict(set)
    for t in trades:
        rows[t.instrument_id].add(t.engine_seq)
    if n_events != len(trades) or dict(events) != dict(rows):
        p.append(f"{n_events} trade events in processed commands, {len(trades)} trade rows; "
                 f"unmatched seqs {[(i, sorted(events[i] ^ rows[i])[:10]) for i in set(events) | set(rows)]}")
    for inst in insts.values():
        last = s.scalar(select(func.max(Trade.engine_seq)).where(Trade.instrument_id == inst.id))
        if last is not None and last > inst.engine_seq:
            p.append(f"{inst.symbol}: trade seq {last} beyond the engine position {inst.engine_seq}")
    return p


def money_and_units(s: Session) -> tuple[int, int, dict[int, int]]:
    """(money inside the exchange, deposits, kg per batch)."""
    inside = _i(s.scalar(select(func.sum(CashAccount.balance)).where(CashAccount.kind != CashAccountKind.BANK)))
    deposits = _i(s.scalar(select(func.sum(Deposit.amount))))
    kg = {b: _i(q) for b, q in s.execute(select(Block.batch_id, func.sum(Block.quantity)).group_by(Block.batch_id))}
    return inside, deposits, kg


def books_match(s: Session, seq: Sequencer) -> list[str]:
    out = []
    for inst_id, book in seq.books.items():
        inst = s.get(Instrument, inst_id)
        assert inst is not None
        rebuilt = build_book(s, inst)
        if rebuilt.state_hash() != book.state_hash():
            out.append(f"instrument {inst.symbol}: the sequencer's book differs from the database's:\n"
                       f"  memory   {book.to_snapshot()}\n  database {rebuilt.to_snapshot()}")
        out += [f"{inst.symbol}: {v}" for v in book.validate()]
    return out


# --------------------------------------------------------------------------------------------------
# Fresh databases
# --------------------------------------------------------------------------------------------------

def _snapshot(s: Session) -> tuple:
    """Everything a refused request must leave as it was."""
    blocks = s.execute(select(Block.id, Block.batch_id, Block.start, Block.end, Block.account_id, Block.status,
                              Block.hold_ref).order_by(Block.id)).all()
    cash = s.execute(select(CashAccount.id, CashAccount.balance).order_by(CashAccount.id)).all()
    ords = s.execute(select(Order.id, Order.status, Order.cash_held, Order.remaining_kg, Order.price)
                     .order_by(Order.id)).all()
    counts = tuple(s.scalar(select(func.count()).select_from(t)) for t in
                   (OrderCommand, Journal, Posting, Trade, Transfer, Movement))
    return tuple(map(tuple, blocks)), tuple(map(tuple, cash)), tuple(map(tuple, ords)), counts


# --------------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------------

HOLDERS = ("S", "X", "B")      # S owns project 1 and buys; X owns project 2 and buys; B starts with cash only
INSTS = ("POOL", "PRJ")
STYLES = ("gtc",) * 6 + ("ioc", "fok", "post", "market", "market_fok", "day", "gtd", "bad_price", "bad_qty")


class ExchangeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.db = FreshDb()
        self.factory = self.db.factory
        self.seq = Sequencer(self.factory)
        self.deposited = 0
        self.order_ids: list[int] = []
        self.retired: dict[int, tuple] = {}
        self.n_ext = 0
        with self.factory() as s:
            w = world(s)
            x = party(s, HolderKind.ENTERPRISE, "双向交易方")
            p1 = registered_project(s, w, title="屋顶光伏")
            p2 = registered_project(s, w, owner=x, title="分布式光伏二期")
            issued_batch(s, w, p1, 30_000, year=2024)
            issued_batch(s, w, p1, 4_000, year=2023)     # deliverable into neither instrument
            issued_batch(s, w, p2, 20_000, year=2024, owner=x)
            pool = instruments.create_instrument(
                s, w.operator.actor, symbol="POOL-2024", name_zh="光伏2024", name_en="PV 2024", kind="pooled",
                vintage_from=2024, vintage_to=2024, sector="energy", reference_price=60_00,
                maker_fee_bp=10, taker_fee_bp=50)
            prj = instruments.create_instrument(
                s, w.operator.actor, symbol="PRJ-2024", name_zh="项目2024", name_en="Project 2024",
                kind="project", project_id=p2.id, vintage_from=2024, vintage_to=2024, reference_price=85_05,
                tick_size=5, lot_size_kg=500, min_qty_kg=1_000, max_qty_kg=20_000, band_bp=800,
                maker_fee_bp=0, taker_fee_bp=30)
            self.parties = {"S": w.owner, "X": x, "B": w.buyer}
            self.operator = w.operator
            for key, amount in (("S", 50_000), ("X", 150_000), ("B", 300_000)):
                wallets.deposit(s, w.operator.actor, self.parties[key].holder.id, amount)
                self.deposited += amount
            self.insts = {"POOL": pool, "PRJ": prj}
            self.inst_ids = {k: i.id for k, i in self.insts.items()}
            s.commit()
            _, _, self.issued = money_and_units(s)
            self.issued_db = {b: q for b, q in s.execute(select(Batch.id, Batch.quantity_kg))}
        self.holder_key = {p.holder.id: k for k, p in self.parties.items()}

    def teardown(self) -> None:
        if os.environ.get("TANHUI_XPROPS_STATS"):
            with self.factory() as s:
                print("STATS", {st_: s.scalar(select(func.count()).select_from(Order).where(Order.status == st_))
                                for st_ in OrderStatus}, "trades", s.scalar(select(func.count()).select_from(Trade)),
                      "retired", len(self.retired))
        self.seq = None  # type: ignore[assignment]
        self.db.close()

    # -- helpers ----------------------------------------------------------------------------------

    def _run(self, fn, expect: tuple[type[RegistryError], ...] | None):  # type: ignore[no-untyped-def]
        """Run a use case in its own transaction. `expect`: the domain errors allowed (None: must succeed)."""
        with self.factory() as s:
            before = _snapshot(s)
            s.rollback()
            try:
                result = fn(s)
                s.flush()
            except RegistryError as e:
                s.rollback()
                assert expect and isinstance(e, expect), (
                    f"got {type(e).__name__}: {e.message} (field {e.field}), expected {expect}")
                assert _snapshot(s) == before, "a refused request left changes behind"
                s.rollback()
                return None
            assert expect is None, f"expected {expect}, the use case succeeded"
            s.commit()
            return result

    def _price(self, data, ik: str) -> int:  # type: ignore[no-untyped-def]
        inst = self.insts[ik]
        step = max(inst.tick_size, (inst.band_high - inst.band_low) // 12 // inst.tick_size * inst.tick_size)
        k = data.draw(st.sampled_from([-6, -3, -2, -1, -1, 0, 0, 0, 1, 1, 2, 3, 6]), label="price_step")
        jitter = data.draw(st.sampled_from([0, 0, 0, 1, -1, 3]), label="jitter") * inst.tick_size
        return min(inst.band_high, max(inst.band_low, inst.reference_price + k * step + jitter))

    # -- rules --------------------------------------------------------------------------------------

    @rule(who=st.sampled_from(HOLDERS), amount=st.integers(1, 200_000))
    def deposit(self, who: str, amount: int) -> None:
        self.n_ext += 1
        self._run(lambda s: wallets.deposit(s, self.operator.actor, self.parties[who].holder.id, amount,
                                            external_ref=f"slip-{self.n_ext}"), None)
        self.deposited += amount

    @initialize(data=st.data())
    def seed_book(self, data) -> None:  # type: ignore[no-untyped-def]
        """A few resting orders to trade against."""
        for _ in range(data.draw(st.integers(0, 4), label="seed_orders")):
            self._place(data, data.draw(st.sampled_from([matching.BUY, matching.SELL]), label="side"), "gtc")
        self.seq.run_once()

    @rule(data=st.data())
    def place_buy(self, data) -> None:  # type: ignore[no-untyped-def]
        self._place(data, matching.BUY)

    @rule(data=st.data())
    def place_sell(self, data) -> None:  # type: ignore[no-untyped-def]
        self._place(data, matching.SELL)

    @rule(data=st.data())
    def place_and_run(self, data) -> None:  # type: ignore[no-untyped-def]
        self._place(data, data.draw(st.sampled_from([matching.BUY, matching.SELL]), label="side"))
        self.seq.run_once()

    def _place(self, data, side: str, style: str | None = None) -> None:  # type: ignore[no-untyped-def]
        who = data.draw(st.sampled_from(HOLDERS), label="who")
        ik = data.draw(st.sampled_from(INSTS), label="instrument")
        style = style or data.draw(st.sampled_from(STYLES), label="style")
        inst = self.insts[ik]
        lots = data.draw(st.integers(inst.min_qty_kg // inst.lot_size_kg, 8 * 1000 // inst.lot_size_kg), label="lots")
        qty = lots * inst.lot_size_kg
        price: int | None = self._price(data, ik)
        kw: dict = {}
        if style == "ioc":
            kw["tif"] = "IOC"
        elif style == "fok":
            kw["tif"] = "FOK"
        elif style == "post":
            kw["post_only"] = True
        elif style in ("market", "market_fok"):
            kw["order_type"], price = "market", None
            if style == "market_fok":
                kw["tif"] = "FOK"
        elif style == "day":
            kw["tif"] = "DAY"
        elif style == "gtd":
            kw["tif"] = "GTD"
            kw["expire_at"] = utcnow() + dt.timedelta(minutes=data.draw(st.integers(1, 120), label="ttl_min"))
        elif style == "bad_price":
            price = inst.band_high + inst.tick_size
        elif style == "bad_qty":
            qty += inst.lot_size_kg // 2 if inst.lot_size_kg > 1 else 0
            qty = qty if qty % inst.lot_size_kg else qty + 1
        kw["stp"] = data.draw(st.sampled_from(["cancel_newest"] * 3 + ["cancel_oldest", "cancel_both", "decrement"]),
                              label="stp")
        req = OrderRequest(instrument=inst.symbol, side=side, qty_kg=qty, price=price, **kw)
        holder_id = self.parties[who].holder.id

        with self.factory() as s:   # what should happen
            if style in ("bad_price", "bad_qty"):
                expect: tuple | None = (InvalidInput,)
            elif side == matching.BUY:
                limit = price if price is not None else inst.band_high
                need = buy_hold(limit, qty, inst.lot_size_kg, max(inst.maker_fee_bp, inst.taker_fee_bp))
                expect = (InsufficientFunds,) if wallets.balance(s, holder_id).available < need else None
            else:
                acc = units.account_of(s, holder_id).id
                have = _i(s.scalar(instruments.deliverable_blocks_stmt(inst).with_only_columns(
                    func.sum(Block.quantity)).where(Block.account_id == acc, Block.status == BlockStatus.HELD)))
                expect = (InsufficientUnits,) if have < qty else None
            s.rollback()
        out = self._run(lambda s: orders.place_order(s, self.parties[who].actor, req), expect)
        if out is not None:
            self.order_ids.append(out[0].id)

    def _pick_order(self, data):  # type: ignore[no-untyped-def]
        oid = data.draw(st.sampled_from(self.order_ids), label="order")
        with self.factory() as s:
            o = s.get(Order, oid)
            assert o is not None
            info = (o.holder_id, o.status, o.side, o.order_type, o.price, o.qty_kg, o.filled_kg, o.cash_held,
                    o.instrument_id)
            avail = {k: wallets.balance(s, p.holder.id).available for k, p in self.parties.items()}
            s.rollback()
        owner = self.holder_key[info[0]]
        who = data.draw(st.sampled_from([owner] * 6 + [h for h in HOLDERS if h != owner]), label="who")
        return oid, who, owner, info, avail

    @rule(data=st.data())
    def cancel(self, data) -> None:  # type: ignore[no-untyped-def]
        if not self.order_ids:
            return
        oid, who, owner, (_, status, *_rest), _ = self._pick_order(data)
        expect = (NotFound,) if who != owner else (Conflict,) if status.is_final else None
        self._run(lambda s: orders.cancel_order(s, self.parties[who].actor, oid), expect)

    @rule(data=st.data())
    def reduce(self, data) -> None:  # type: ignore[no-untyped-def]
        if not self.order_ids:
            return
        oid, who, owner, info, _ = self._pick_order(data)
        status, inst_id = info[1], info[8]
        lot = next(i.lot_size_kg for i in self.insts.values() if i.id == inst_id)
        by = lot * data.draw(st.integers(1, 6), label="by_lots")
        expect = (NotFound,) if who != owner else (Conflict,) if status.is_final else None
        self._run(lambda s: orders.reduce_order(s, self.parties[who].actor, oid, by), expect)

    @rule(data=st.data())
    def replace(self, data) -> None:  # type: ignore[no-untyped-def]
        if not self.order_ids:
            return
        oid, who, owner, info, avail = self._pick_order(data)
        _, status, side, otype, _, qty, filled, cash_held, inst_id = info
        ik = next(k for k, i in self.insts.items() if i.id == inst_id)
        inst = self.insts[ik]
        price = self._price(data, ik)
        if who != owner:
            expect: tuple | None = (NotFound,)
        elif otype != matching.LIMIT:
            expect = (InvalidInput,)
        else:
            short = False
            if side == matching.BUY:
                need = buy_hold(price, qty - filled, inst.lot_size_kg, max(inst.maker_fee_bp, inst.taker_fee_bp))
                short = need > cash_held and avail[owner] < need - cash_held
            if status.is_final:
                expect = (InsufficientFunds, Conflict) if short else (Conflict,)
            else:
                expect = (InsufficientFunds,) if short else None
        self._run(lambda s: orders.replace_order(s, self.parties[who].actor, oid, price), expect)

    @rule(ik=st.sampled_from(INSTS), minutes=st.integers(0, 150))
    def expire(self, ik: str, minutes: int) -> None:
        now = epoch(utcnow() + dt.timedelta(minutes=minutes))
        with self.factory() as s:
            s.add(OrderCommand(instrument_id=self.inst_ids[ik], kind="expire", args={"now": now}))
            s.commit()

    @rule(ik=st.sampled_from(INSTS))
    def end_of_day(self, ik: str) -> None:
        with self.factory() as s:
            s.add(OrderCommand(instrument_id=self.inst_ids[ik], kind="end_of_day", args={}))
            s.commit()

    @rule()
    def run_sequencer(self) -> None:
        self.seq.run_once()
        with self.factory() as s:
            left = s.scalar(select(func.count()).select_from(OrderCommand)
                            .where(OrderCommand.status == CommandStatus.PENDING))
            pending = s.scalar(select(func.count()).select_from(Order).where(Order.status == OrderStatus.PENDING))
            s.rollback()
        assert (left, pending) == (0, 0), f"after a run: {left} commands and {pending} orders still pending"
        assert self.seq.run_once() == 0

    @rule(run=st.booleans())
    def restart_sequencer(self, run: bool) -> None:
        old = self.seq
        self.seq = Sequencer(self.factory)
        del old
        if run:
            self.seq.run_once()

    @rule(who=st.sampled_from(HOLDERS), kg=st.integers(1, 9_000))
    def retire(self, who: str, kg: int) -> None:
        holder_id = self.parties[who].holder.id
        with self.factory() as s:
            acc = units.account_of(s, holder_id).id
            have = _i(s.scalar(select(func.sum(Block.quantity)).where(Block.account_id == acc,
                                                                       Block.status == BlockStatus.HELD)))
            s.rollback()
        self._run(lambda s: units.retire(s, self.parties[who].actor, selection=units.Selection(quantity_kg=kg),
                                         **_RETIRE),
                  (InsufficientUnits,) if have < kg else None)

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        with self.factory() as s:
            found = [str(v) for v in invariants.check(s, include_audit=False)] + wallets.check(s)
            assert not found, "\n".join(found)
            problems = exchange_problems(s)
            assert not problems, "\n".join(problems)
            inside, deposits, kg = money_and_units(s)
            assert deposits == self.deposited and inside == self.deposited, (inside, deposits, self.deposited)
            assert kg == self.issued == self.issued_db, (kg, self.issued)
            # retired blocks never move nor change
            for row in s.execute(select(Block.id, Block.batch_id, Block.start, Block.end, Block.account_id,
                                        Block.status, Block.retirement_id).where(Block.status == BlockStatus.RETIRED)):
                self.retired.setdefault(row[0], tuple(row))
            now = {r[0]: tuple(r) for r in s.execute(
                select(Block.id, Block.batch_id, Block.start, Block.end, Block.account_id, Block.status,
                       Block.retirement_id).where(Block.id.in_(list(self.retired)) if self.retired else Block.id < 0))}
            assert now == self.retired, "a retired block moved or changed"
            book_problems = books_match(s, self.seq)
            assert not book_problems, "\n".join(book_problems)
            s.rollback()


def test_exchange_state_machine(template_db) -> None:  # type: ignore[no-untyped-def]
    with FreshDb.source(template_db, ON_PG):
        run_state_machine_as_test(ExchangeMachine, settings=settings(
            max_examples=int(os.environ.get("TANHUI_XPROPS_EXAMPLES", "25")),
            stateful_step_count=int(os.environ.get("TANHUI_XPROPS_STEPS", "40")),
            deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                  HealthCheck.filter_too_much, HealthCheck.data_too_large]))
