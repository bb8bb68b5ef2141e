"""The exchange's tables: instruments, the double-entry cash ledger, orders and trades.

Money is integer minor units (fen for CNY); prices are minor units per tonne; quantities are kg.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.db import Base, BigKey, str_enum, utcnow
from registry.models import Holder


class InstrumentKind(enum.StrEnum):
    POOLED = "pooled"      # a standardised contract: any deliverable block of the criteria
    PROJECT = "project"    # one project and vintage


class InstrumentStatus(enum.StrEnum):
    ACTIVE = "active"
    HALTED = "halted"
    DELISTED = "delisted"


class Instrument(Base):
    """A tradable contract and the blocks deliverable into it.

    Pooled: blocks whose project kind, methodology sector and vintage fall within the criteria.
    Project-specific: blocks of `project_id` with vintage `vintage_from` (== `vintage_to`).
    """

    __tablename__ = "instruments"
    __table_args__ = (
        CheckConstraint("tick_size > 0", name="tick_positive"),
        CheckConstraint("lot_size_kg > 0", name="lot_positive"),
        CheckConstraint("min_qty_kg > 0 AND max_qty_kg >= min_qty_kg", name="size_range"),
        CheckConstraint("band_bp > 0 AND band_bp < 10000", name="band_range"),
        CheckConstraint("maker_fee_bp >= 0 AND taker_fee_bp >= 0 AND maker_fee_bp <= 1000 "
                        "AND taker_fee_bp <= 1000", name="fee_range"),
        CheckConstraint("vintage_from <= vintage_to", name="vintage_order"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    symbol: Mapped[str] = mapped_column(String(40), unique=True)
    name_zh: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200))
    kind: Mapped[InstrumentKind] = mapped_column(str_enum(InstrumentKind, "instrument_kind"))
    project_kind: Mapped[str | None] = mapped_column(String(16))   # pooled: "project" or "programme"
    sector: Mapped[str | None] = mapped_column(String(64))         # pooled: methodology sector
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    vintage_from: Mapped[int] = mapped_column(Integer)
    vintage_to: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), default="CNY")
    tick_size: Mapped[int] = mapped_column(Integer, default=1)           # minor units per tonne
    lot_size_kg: Mapped[int] = mapped_column(Integer, default=1000)
    min_qty_kg: Mapped[int] = mapped_column(BigInteger, default=1000)
    max_qty_kg: Mapped[int] = mapped_column(BigInteger, default=100_000_000)
    band_bp: Mapped[int] = mapped_column(Integer, default=1000)          # ±10% around the reference
    maker_fee_bp: Mapped[int] = mapped_column(Integer, default=0)
    taker_fee_bp: Mapped[int] = mapped_column(Integer, default=50)
    trading_hours: Mapped[dict[str, Any] | None] = mapped_column(JSON)   # None: always open
    status: Mapped[InstrumentStatus] = mapped_column(str_enum(InstrumentStatus, "instrument_status"),
                                                     default=InstrumentStatus.ACTIVE)
    status_reason: Mapped[str | None] = mapped_column(Text)
    # The published reference price (minor units per tonne) and the band the engine enforces today.
    reference_price: Mapped[int] = mapped_column(BigInteger)
    band_low: Mapped[int] = mapped_column(BigInteger)
    band_high: Mapped[int] = mapped_column(BigInteger)
    # The sequencer's position: the engine's last event seq, written with each batch it settles.
    engine_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    engine_now: Mapped[int] = mapped_column(BigInteger, default=0)   # last expiry time given, epoch s
    # The published blend of the reference price, weights in basis points adding up to 10,000, e.g.
    # {"vwap": 6000, "CEA": 2000, "CCER": 2000}; None means the day's VWAP alone.
    blend_weights: Mapped[dict[str, int] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class CashAccountKind(enum.StrEnum):
    AVAILABLE = "available"    # a holder's spendable money
    HELD = "held"              # a holder's money reserved by open buy orders and pending withdrawals
    FEES = "fees"              # the platform's fee income
    BANK = "bank"              # the outside world: deposits come from it, withdrawals go to it


class CashAccount(Base):
    """One ledger account. `balance` is a running total kept in the same transaction as the
    postings (so a CHECK can refuse an overdraft under the row lock); `wallets.check` proves it
    equals the sum of the account's postings."""

    __tablename__ = "cash_accounts"
    __table_args__ = (
        UniqueConstraint("holder_id", "kind", "currency"),
        # NULLs are distinct in a unique constraint: the platform's own accounts need their own index.
        Index("uq_cash_accounts_system", "kind", "currency", unique=True,
              sqlite_where=text("holder_id IS NULL"), postgresql_where=text("holder_id IS NULL")),
        CheckConstraint("kind = 'bank' OR balance >= 0", name="no_overdraft"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    holder_id: Mapped[int | None] = mapped_column(ForeignKey("holders.id"))
    kind: Mapped[CashAccountKind] = mapped_column(str_enum(CashAccountKind, "cash_account_kind"))
    currency: Mapped[str] = mapped_column(String(3), default="CNY")
    balance: Mapped[int] = mapped_column(BigInteger, default=0)

    holder: Mapped[Holder | None] = relationship()


class JournalKind(enum.StrEnum):
    DEPOSIT = "deposit"
    WITHDRAWAL_REQUEST = "withdrawal_request"
    WITHDRAWAL_PAID = "withdrawal_paid"
    WITHDRAWAL_REJECTED = "withdrawal_rejected"
    HOLD = "hold"
    RELEASE = "release"
    SETTLEMENT = "settlement"


class Journal(Base):
    """One balanced movement of money: its postings add up to zero."""

    __tablename__ = "journals"

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    kind: Mapped[JournalKind] = mapped_column(str_enum(JournalKind, "journal_kind"))
    ref: Mapped[str | None] = mapped_column(String(64), index=True)   # e.g. "order:12", "trade:5"
    memo: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    postings: Mapped[list[Posting]] = relationship(back_populates="journal")


class Posting(Base):
    __tablename__ = "postings"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="nonzero"),
        Index("ix_postings_account", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    journal_id: Mapped[int] = mapped_column(ForeignKey("journals.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("cash_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)   # minor units; + credit to the account, − debit

    journal: Mapped[Journal] = relationship(back_populates="postings")


class WithdrawalStatus(enum.StrEnum):
    REQUESTED = "requested"
    PAID = "paid"
    REJECTED = "rejected"


class Withdrawal(Base):
    __tablename__ = "withdrawals"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="CNY")
    bank_reference: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[WithdrawalStatus] = mapped_column(str_enum(WithdrawalStatus, "withdrawal_status"),
                                                     default=WithdrawalStatus.REQUESTED)
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Deposit(Base):
    """An operator-credited deposit (bank transfer received); card top-ups come with Stripe."""

    __tablename__ = "deposits"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="CNY")
    external_ref: Mapped[str | None] = mapped_column(String(100), unique=True)   # bank slip id
    journal_id: Mapped[int] = mapped_column(ForeignKey("journals.id"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)




class OrderStatus(enum.StrEnum):
    PENDING = "pending"        # persisted and held, waiting for the sequencer
    OPEN = "open"              # resting on the book (possibly partly filled)
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED)


class Order(Base):
    """An order; its id is also the engine's order id. Quantities kg, prices minor units per tonne."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("qty_kg > 0", name="qty_positive"),
        CheckConstraint("filled_kg >= 0 AND filled_kg <= qty_kg", name="filled_range"),
        CheckConstraint("remaining_kg >= 0 AND remaining_kg + filled_kg <= qty_kg", name="remaining_range"),
        CheckConstraint("cash_held >= 0", name="hold_nonnegative"),
        CheckConstraint("price IS NULL OR price > 0", name="price_positive"),
        Index("ix_orders_book", "instrument_id", "status", "side", "price", "priority_seq"),
        Index("ix_orders_holder", "holder_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"))
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    side: Mapped[str] = mapped_column(String(4))               # buy | sell
    order_type: Mapped[str] = mapped_column(String(8))         # limit | market
    tif: Mapped[str] = mapped_column(String(4))                # GTC DAY GTD IOC FOK
    price: Mapped[int | None] = mapped_column(BigInteger)
    qty_kg: Mapped[int] = mapped_column(BigInteger)
    filled_kg: Mapped[int] = mapped_column(BigInteger, default=0)
    remaining_kg: Mapped[int] = mapped_column(BigInteger, default=0)   # resting on the book
    post_only: Mapped[bool] = mapped_column(default=False)
    stp: Mapped[str] = mapped_column(String(16), default="cancel_newest")
    expire_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    status: Mapped[OrderStatus] = mapped_column(str_enum(OrderStatus, "order_status"), default=OrderStatus.PENDING)
    reason: Mapped[str | None] = mapped_column(String(64))
    cash_held: Mapped[int] = mapped_column(BigInteger, default=0)      # buy: money still reserved
    notional_paid: Mapped[int] = mapped_column(BigInteger, default=0)  # buy: paid so far, fees apart
    fees_paid: Mapped[int] = mapped_column(BigInteger, default=0)
    priority_seq: Mapped[int | None] = mapped_column(BigInteger)       # engine seq that set its priority
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    instrument: Mapped[Instrument] = relationship()

    @property
    def ref(self) -> str:
        return f"order:{self.id}"


class CommandStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    # Set aside by the sequencer: it failed alone, twice, so it is not applied; `result` holds the
    # error and what was done instead (a place's order rejected with its hold released).
    FAILED = "failed"


class OrderCommand(Base):
    """The sequencer's input: its id is the sequence number commands are applied in."""

    __tablename__ = "order_commands"
    __table_args__ = (Index("ix_order_commands_queue", "instrument_id", "status", "id"),)

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    kind: Mapped[str] = mapped_column(String(16))   # place | cancel | reduce | replace | expire | end_of_day
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[CommandStatus] = mapped_column(str_enum(CommandStatus, "command_status"),
                                                  default=CommandStatus.PENDING)
    result: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    processed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Trade(Base):
    __tablename__ = "trades"
    __table_args__ = (
        UniqueConstraint("instrument_id", "engine_seq"),
        CheckConstraint("qty_kg > 0 AND price > 0 AND notional > 0", name="positive"),
        Index("ix_trades_instrument_time", "instrument_id", "executed_at"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"))
    engine_seq: Mapped[int] = mapped_column(BigInteger)   # the trade event's seq: settles exactly once
    buy_order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    sell_order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    maker_order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    buyer_id: Mapped[int] = mapped_column(ForeignKey("holders.id"))
    seller_id: Mapped[int] = mapped_column(ForeignKey("holders.id"))
    price: Mapped[int] = mapped_column(BigInteger)
    qty_kg: Mapped[int] = mapped_column(BigInteger)
    notional: Mapped[int] = mapped_column(BigInteger)
    buyer_fee: Mapped[int] = mapped_column(BigInteger)
    seller_fee: Mapped[int] = mapped_column(BigInteger)
    transfer_id: Mapped[int] = mapped_column(ForeignKey("transfers.id"))
    journal_id: Mapped[int] = mapped_column(ForeignKey("journals.id"))
    executed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ReferencePrice(Base):
    """The reference price of one instrument for one trading day (China time), with every input.

    close = the day's VWAP (the Shanghai exchange's rule), carried forward when nothing traded;
    reference = close, or the published blend of close and external indices; the band for the
    next day is ±band_bp around the reference.
    """

    __tablename__ = "reference_prices"
    __table_args__ = (UniqueConstraint("instrument_id", "trading_day"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"))
    trading_day: Mapped[dt.date] = mapped_column(Date)
    open: Mapped[int | None] = mapped_column(BigInteger)
    high: Mapped[int | None] = mapped_column(BigInteger)
    low: Mapped[int | None] = mapped_column(BigInteger)
    vwap: Mapped[int | None] = mapped_column(BigInteger)        # None when nothing traded
    close: Mapped[int] = mapped_column(BigInteger)
    volume_kg: Mapped[int] = mapped_column(BigInteger, default=0)
    turnover: Mapped[int] = mapped_column(BigInteger, default=0)  # sum of notionals, minor units
    trade_count: Mapped[int] = mapped_column(Integer, default=0)
    previous_reference: Mapped[int] = mapped_column(BigInteger)
    method: Mapped[str] = mapped_column(String(32))               # vwap | carried_forward | blend
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reference_price: Mapped[int] = mapped_column(BigInteger)
    band_low: Mapped[int] = mapped_column(BigInteger)
    band_high: Mapped[int] = mapped_column(BigInteger)
    computed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ExternalIndex(Base):
    """An operator-entered external price (national ETS allowance CEA, CCER), minor units per tonne."""

    __tablename__ = "external_indices"
    __table_args__ = (UniqueConstraint("code", "trading_day"), CheckConstraint("price > 0", name="price_positive"))

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(16))           # CEA | CCER
    trading_day: Mapped[dt.date] = mapped_column(Date)
    price: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(200))
    entered_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    entered_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
