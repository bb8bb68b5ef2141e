"""The rewards pool (普惠反哺): the cash account that pays merchants for used reward codes, funded by
the sale of programme credits on the exchange. Its statement is public.

The pool is a holder of its own (kind agency, "碳惠奖励池") whose `available` cash account on the
double-entry ledger (`exchange.wallets`) is the pool; it is opened on first use and named by the
one-row table `rewards_pool`. Every pool use case locks that cash account first (so they are
serialised among themselves, and the sequencer, which never touches the pool, cannot deadlock with
them) and then moves money with `wallets.post`:

- **Inflow** (`fund_from_trades`): for each settled trade whose seller owns a programme and whose
  delivered serials (trade → its transfer → movements → batches) are that programme's credits, the
  seller's proceeds (notional − seller fee, in fen) move from the seller's available money into the
  pool, pro rata to the programme kg when a pooled contract delivered other credits too (floor; the
  remainder stays with the seller). Trades are scanned once, in id order, behind a watermark
  (`rewards_pool.scanned_trade_id`): each programme trade becomes a pending inflow (unique per
  trade), funded when the seller has the money; one whose seller withdrew it waits for a later run.
- **Outflow** (`use_code`, `pay_waiting`): a used code creates a merchant payment of the reward's
  cash value; payments are made first-come first-served while the pool can afford them. One it
  cannot afford stays `waiting` (as do the ones after it) until an inflow arrives: the pool never
  goes negative (the ledger's CHECK also refuses it). A suspended merchant's payments are held,
  `waiting`, without holding up the others, and paid in turn once the suspension is lifted.
Operators may also deposit into the pool holder (a foundation's or sponsor's grant) with the
ordinary `wallets.deposit`; the statement lists those deposits as inflows too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    String,
    func,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from exchange import wallets
from exchange.errors import InsufficientFunds
from exchange.models import CashAccount, Deposit, Instrument, JournalKind, Trade
from registry import audit, holders, rewards
from registry.actors import Actor
from registry.db import Base, BigKey, utcnow
from registry.errors import InvalidInput
from registry.models import Holder, HolderKind, Movement

POOL_NAME = "碳惠奖励池"
POOL_NAME_EN = "Tanhui rewards pool"


class RewardsPool(Base):
    """The one pool: which holder's available money it is."""

    __tablename__ = "rewards_pool"
    __table_args__ = (CheckConstraint("id = 1", name="single"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), unique=True)
    # Every trade up to this id has been examined (and, if it sold programme credits, has its inflow).
    scanned_trade_id: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class PoolInflow(Base):
    """The pool's part of one trade of programme credits: pending until moved into the pool, then
    funded (once per trade)."""

    __tablename__ = "rewards_pool_inflows"
    __table_args__ = (
        CheckConstraint("amount > 0 AND programme_kg > 0", name="positive"),
        CheckConstraint("status IN ('pending', 'funded')", name="status"),
        CheckConstraint("(status = 'funded') = (journal_id IS NOT NULL AND funded_at IS NOT NULL)",
                        name="funded_iff_journal"),
        Index("ix_rewards_pool_inflows_pending", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    trade_id: Mapped[int] = mapped_column(ForeignKey("trades.id"), unique=True)
    seller_id: Mapped[int] = mapped_column(ForeignKey("holders.id"))
    programme_kg: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(8), default="pending")
    journal_id: Mapped[int | None] = mapped_column(ForeignKey("journals.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    funded_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


# A trade's delivered serials are found from its transfer: the movements need an index for that.
Index("ix_movements_transfer_id", Movement.transfer_id)


class MerchantPayment(Base):
    """What the pool owes a merchant for one used code: waiting until the pool can pay it."""

    __tablename__ = "merchant_payments"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("status IN ('waiting', 'paid')", name="status"),
        CheckConstraint("(status = 'paid') = (journal_id IS NOT NULL AND paid_at IS NOT NULL)", name="paid_iff_journal"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    redemption_id: Mapped[int] = mapped_column(ForeignKey("reward_redemptions.id"), unique=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(8), default="waiting")
    journal_id: Mapped[int | None] = mapped_column(ForeignKey("journals.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    paid_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


def pool_holder_id(session: Session) -> int:
    """The pool's holder, opened on first use (concurrent first uses agree on one)."""
    found = session.scalar(select(RewardsPool.holder_id).where(RewardsPool.id == 1))
    if found is not None:
        return found
    try:
        with session.begin_nested():
            holder = holders.create_holder(session, None, kind=HolderKind.AGENCY, name=POOL_NAME,
                                           name_en=POOL_NAME_EN)
            session.add(RewardsPool(id=1, holder_id=holder.id, created_at=utcnow()))
            session.flush()
            wallets.holder_accounts(session, holder.id)
            return holder.id
    except IntegrityError:   # opened concurrently: use that one
        found = session.scalar(select(RewardsPool.holder_id).where(RewardsPool.id == 1))
        assert found is not None
        return found


def _lock_pool(session: Session) -> CashAccount:
    """The pool's cash account, locked (every pool use case takes this lock first)."""
    available, _ = wallets.holder_accounts(session, pool_holder_id(session))
    locked = session.scalar(select(CashAccount).where(CashAccount.id == available.id)
                            .with_for_update(key_share=True).execution_options(populate_existing=True))
    assert locked is not None
    return locked


def pool_balance(session: Session) -> int:
    holder_id = session.scalar(select(RewardsPool.holder_id).where(RewardsPool.id == 1))
    return 0 if holder_id is None else wallets.balance(session, holder_id).available


# -- outflows ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UseResult:
    redemption: rewards.Redemption
    payment: MerchantPayment | None


def use_code(session: Session, actor: Actor, code: str, *, now: dt.datetime | None = None) -> UseResult:
    """The merchant marks a code used (`registry.rewards.mark_used`) and is owed the reward's cash
    value, paid now if the pool can afford it (after any payment waiting before it), else waiting.
    One transaction; the caller commits."""
    r = rewards.mark_used(session, actor, code, now=now)
    payment = None
    if r.cash_value > 0:
        payment = MerchantPayment(redemption_id=r.id, merchant_id=r.merchant_id, amount=r.cash_value,
                                  status="waiting", created_at=utcnow())
        session.add(payment)
        session.flush()
        audit.record(session, actor, "rewards_pool.payment_due", "merchant_payment", payment.id,
                     {"redemption_id": r.id, "merchant_id": r.merchant_id, "amount": r.cash_value})
        pay_waiting(session)
    return UseResult(r, payment)


def pay_waiting(session: Session, actor: Actor | None = None) -> list[MerchantPayment]:
    """Pay waiting merchant payments in the order they fell due while the pool can afford them;
    stops at the first it cannot (nobody is overtaken). A suspended merchant's payments are held
    (skipped, not blocking the others) until the suspension is lifted. Returns the payments made.
    Idempotent."""
    pool = _lock_pool(session)
    paid = []
    for p in session.scalars(select(MerchantPayment).where(
            MerchantPayment.status == "waiting",
            MerchantPayment.merchant_id.in_(select(Holder.id).where(Holder.suspended.is_(False))))
            .order_by(MerchantPayment.id).with_for_update()):
        if pool.balance < p.amount:
            break
        available, _ = wallets.holder_accounts(session, p.merchant_id)
        j = wallets.post(session, JournalKind.SETTLEMENT, [(pool, -p.amount), (available, p.amount)],
                         ref=f"pool-out:redemption:{p.redemption_id}", memo="rewards pool pays a used reward code")
        p.status, p.journal_id, p.paid_at = "paid", j.id, utcnow()
        audit.record(session, actor, "rewards_pool.merchant_paid", "merchant_payment", p.id,
                     {"merchant_id": p.merchant_id, "redemption_id": p.redemption_id, "amount": p.amount,
                      "journal_id": j.id, "pool_balance": pool.balance})
        paid.append(p)
    return paid


# -- inflows -----------------------------------------------------------------------------------

_PROGRAMME_TRADES = """
SELECT t.id, t.seller_id, t.qty_kg, t.notional - t.seller_fee, SUM(m."end" - m.start + 1)
FROM trades t
JOIN movements m ON m.transfer_id = t.transfer_id
JOIN batches b ON b.id = m.batch_id
JOIN projects p ON p.id = b.project_id
WHERE t.id > :after AND t.id <= :upto AND p.kind = 'programme' AND p.owner_id = t.seller_id
GROUP BY t.id, t.seller_id, t.qty_kg, t.notional, t.seller_fee
ORDER BY t.id
"""


@dataclass
class FundingResult:
    funded: list[PoolInflow]
    unfunded_trade_ids: list[int]

    @property
    def amount(self) -> int:
        return sum(i.amount for i in self.funded)


def programme_share(proceeds: int, programme_kg: int, qty_kg: int) -> int:
    """The pool's part of a trade's proceeds (fen): all of them when every delivered kg was the
    programme's, else floor(proceeds × programme_kg / qty_kg)."""
    return proceeds if programme_kg >= qty_kg else proceeds * programme_kg // qty_kg


def scan_trades(session: Session, limit: int = 10_000) -> int:
    """Record the pool's part of every trade after the last one scanned, up to `limit` trades, as a
    pending inflow, and advance the watermark; returns how many trades were scanned. Each trade is
    read once (no rescan of the history). The caller holds the pool's lock."""
    pool = session.get(RewardsPool, 1, populate_existing=True)
    assert pool is not None
    after = pool.scanned_trade_id
    window = select(Trade.id).where(Trade.id > after).order_by(Trade.id).limit(limit).subquery()
    upto = session.scalar(select(func.max(window.c.id)))
    if upto is None:
        return 0
    now = utcnow()
    for trade_id, seller_id, qty_kg, proceeds, programme_kg in session.execute(
            text(_PROGRAMME_TRADES), {"after": after, "upto": upto}).all():
        amount = programme_share(int(proceeds), int(programme_kg), int(qty_kg))
        if amount > 0:
            session.add(PoolInflow(trade_id=trade_id, seller_id=seller_id, programme_kg=int(programme_kg),
                                   amount=amount, status="pending", created_at=now))
    scanned = int(session.scalar(select(func.count()).where(Trade.id > after, Trade.id <= upto)) or 0)
    pool.scanned_trade_id = int(upto)
    session.flush()
    return scanned


def fund_from_trades(session: Session, actor: Actor | None = None, limit: int = 10_000) -> FundingResult:
    """Scan new trades (`scan_trades`), then move every pending inflow into the pool, oldest first;
    one whose seller lacks the money stays pending for a later run. The caller commits."""
    pool = _lock_pool(session)
    scan_trades(session, limit)
    result = FundingResult([], [])
    for inflow in session.scalars(select(PoolInflow).where(PoolInflow.status == "pending").order_by(PoolInflow.id)):
        available, _ = wallets.holder_accounts(session, inflow.seller_id)
        try:
            with session.begin_nested():
                j = wallets.post(session, JournalKind.SETTLEMENT, [(available, -inflow.amount), (pool, inflow.amount)],
                                 ref=f"pool-in:trade:{inflow.trade_id}",
                                 memo="programme credit proceeds fund the rewards pool")
        except InsufficientFunds:
            result.unfunded_trade_ids.append(inflow.trade_id)
            continue
        inflow.status, inflow.journal_id, inflow.funded_at = "funded", j.id, utcnow()
        audit.record(session, actor, "rewards_pool.funded", "trade", inflow.trade_id,
                     {"seller_id": inflow.seller_id, "programme_kg": inflow.programme_kg, "amount": inflow.amount,
                      "journal_id": j.id, "pool_balance": pool.balance})
        result.funded.append(inflow)
    session.flush()
    return result


def settle(session: Session, actor: Actor | None = None) -> tuple[FundingResult, list[MerchantPayment]]:
    """The settlement run: fund from trades, then pay what waits. Idempotent. The caller commits."""
    if actor is not None:
        actor.require_kind(HolderKind.OPERATOR)
    funded = fund_from_trades(session, actor)
    return funded, pay_waiting(session, actor)


# -- the public statement ----------------------------------------------------------------------


def statement(session: Session, limit: int = 100) -> dict[str, Any]:
    """Balance, inflows (by trade; deposits) and outflows (by merchant payment, paid or waiting),
    newest first, `limit` of each, with totals. Amounts in fen."""
    if limit < 1 or limit > 1000:
        raise InvalidInput("limit is 1-1000", field="limit")
    holder_id = session.scalar(select(RewardsPool.holder_id).where(RewardsPool.id == 1))
    trades = session.execute(
        select(PoolInflow, Trade.qty_kg, Trade.price, Trade.executed_at, Instrument.symbol, Holder.name)
        .join(Trade, Trade.id == PoolInflow.trade_id).join(Instrument, Instrument.id == Trade.instrument_id)
        .join(Holder, Holder.id == PoolInflow.seller_id).where(PoolInflow.status == "funded")
        .order_by(PoolInflow.id.desc()).limit(limit)).all()
    deposits = [] if holder_id is None else list(session.scalars(
        select(Deposit).where(Deposit.holder_id == holder_id).order_by(Deposit.id.desc()).limit(limit)))
    payments = session.execute(
        select(MerchantPayment, Holder.name).join(Holder, Holder.id == MerchantPayment.merchant_id)
        .order_by(MerchantPayment.id.desc()).limit(limit)).all()

    def total(stmt: Any) -> int:
        return int(session.scalar(stmt) or 0)

    return {
        "currency": wallets.CURRENCY,
        "balance": pool_balance(session),
        "inflows": {
            "trades_total": total(select(func.sum(PoolInflow.amount)).where(PoolInflow.status == "funded")),
            "trades_pending_total": total(select(func.sum(PoolInflow.amount)).where(PoolInflow.status == "pending")),
            "deposits_total": 0 if holder_id is None else total(
                select(func.sum(Deposit.amount)).where(Deposit.holder_id == holder_id)),
            "trades": [{"trade_id": i.trade_id, "instrument": sym, "seller": seller, "programme_kg": i.programme_kg,
                        "trade_qty_kg": qty, "price": price, "executed_at": at.isoformat() + "Z",
                        "amount": i.amount, "funded_at": i.funded_at.isoformat() + "Z" if i.funded_at else None}
                       for i, qty, price, at, sym, seller in trades],
            "deposits": [{"deposit_id": d.id, "amount": d.amount, "external_ref": d.external_ref,
                          "at": d.created_at.isoformat() + "Z"} for d in deposits],
        },
        "outflows": {
            "paid_total": total(select(func.sum(MerchantPayment.amount)).where(MerchantPayment.status == "paid")),
            "waiting_total": total(select(func.sum(MerchantPayment.amount))
                                   .where(MerchantPayment.status == "waiting")),
            "payments": [{"payment_id": p.id, "merchant_id": p.merchant_id, "merchant": name,
                          "redemption_id": p.redemption_id, "amount": p.amount, "status": p.status,
                          "due_at": p.created_at.isoformat() + "Z",
                          "paid_at": p.paid_at.isoformat() + "Z" if p.paid_at else None}
                         for p, name in payments],
        },
    }


def check(session: Session) -> list[str]:
    """The pool's books: its balance equals inflows (trades, deposits) minus paid payments."""
    holder_id = session.scalar(select(RewardsPool.holder_id).where(RewardsPool.id == 1))
    if holder_id is None:
        return []
    ins = int(session.scalar(select(func.coalesce(func.sum(PoolInflow.amount), 0))
                             .where(PoolInflow.status == "funded")) or 0)
    deps = int(session.scalar(select(func.coalesce(func.sum(Deposit.amount), 0))
                              .where(Deposit.holder_id == holder_id)) or 0)
    outs = int(session.scalar(select(func.coalesce(func.sum(MerchantPayment.amount), 0))
                              .where(MerchantPayment.status == "paid")) or 0)
    bal = wallets.balance(session, holder_id)
    if bal.total != ins + deps - outs:
        return [f"rewards pool holds {bal.total} but inflows {ins} + deposits {deps} − payments {outs} "
                f"= {ins + deps - outs}"]
    return []
