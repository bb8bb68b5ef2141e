"""The offsetting tables: footprints, fixed-price listings and offset orders.

Quantities are integer kg of CO2e; money is integer minor units (fen); prices are minor units per
tonne, as everywhere on the exchange.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from registry.db import Base, BigKey, str_enum, utcnow


class FootprintKind(enum.StrEnum):
    EVENT = "event"
    ORGANISATION = "organisation"
    PERSONAL = "personal"


class Footprint(Base):
    """A calculated footprint: the inputs as given, the line items (activity × factor, citing the
    factor's key, region, year and source) and the total in whole kg (rounded up from the exact sum)."""

    __tablename__ = "footprints"
    __table_args__ = (
        CheckConstraint("total_kg >= 0", name="total_nonnegative"),
        Index("ix_footprints_holder", "holder_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[FootprintKind] = mapped_column(str_enum(FootprintKind, "footprint_kind"))
    name: Mapped[str] = mapped_column(String(200))
    region: Mapped[str] = mapped_column(String(32))
    year: Mapped[int] = mapped_column(Integer)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    exact_kg: Mapped[str] = mapped_column(String(64))     # the exact sum, decimal text
    total_kg: Mapped[int] = mapped_column(BigInteger)
    reductions: Mapped[list[str]] = mapped_column(JSON, default=list)   # the organiser's notes
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def ref(self) -> str:
        """How certificates name the footprint they cover (`Retirement.footprint_ref`, 100 chars)."""
        return footprint_ref(self.id, self.name)


def footprint_ref(footprint_id: int, name: str) -> str:
    """`Footprint.ref` from the two columns it is made of (without loading the footprint)."""
    return f"footprint:{footprint_id} {name}"[:100]


class ListingStatus(enum.StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"


class OffsetListing(Base):
    """A seller's blocks of one project and vintage, listed at a fixed price for offset buyers.

    The blocks are LISTED in the registry under `ref` ("listing:<id>"). `available_kg` is what new
    quotes may reserve; what live quotes reserved is the sum of their orders' `reserved_kg`, so the
    listed blocks always add up to available + reserved (`offsets.check`)."""

    __tablename__ = "offset_listings"
    __table_args__ = (
        CheckConstraint("price > 0", name="price_positive"),
        CheckConstraint("quantity_kg > 0", name="quantity_positive"),
        CheckConstraint("available_kg >= 0 AND available_kg <= quantity_kg", name="available_range"),
        CheckConstraint("fee_bp >= 0 AND fee_bp <= 1000", name="fee_range"),
        CheckConstraint("status IN ('active', 'closed')", name="status"),
        Index("ix_offset_listings_pick", "status", "price", "id"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    seller_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    vintage: Mapped[int] = mapped_column(Integer)
    price: Mapped[int] = mapped_column(BigInteger)          # minor units per tonne
    fee_bp: Mapped[int] = mapped_column(Integer)            # the buyer's platform fee
    quantity_kg: Mapped[int] = mapped_column(BigInteger)
    available_kg: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(8), default=ListingStatus.ACTIVE.value)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def ref(self) -> str:
        return f"listing:{self.id}"


class OffsetStatus(enum.StrEnum):
    DRAFT = "draft"                        # a quote, holding supply until expires_at
    AWAITING_PAYMENT = "awaiting_payment"  # confirmed; the card payment is under way
    PAID = "paid"                          # the money is held for this order
    FILLED = "filled"                      # units bought (exchange path: waiting to be retired)
    RETIRED = "retired"                    # retired to the beneficiary, certificate issued
    CANCELLED = "cancelled"
    REFUNDED = "refunded"
    REFUND_FAILED = "refund_failed"        # the refund to the card failed; held until an operator acts

    @property
    def is_final(self) -> bool:
        """Nothing more will be bought or retired (a refund_failed order's money is the payment's
        business: an operator resolves it)."""
        return self in (OffsetStatus.RETIRED, OffsetStatus.CANCELLED, OffsetStatus.REFUNDED,
                        OffsetStatus.REFUND_FAILED)


class OffsetOrder(Base):
    """One buyer's offset purchase, from quote to certificate."""

    __tablename__ = "offset_orders"
    __table_args__ = (
        CheckConstraint("quantity_kg > 0", name="quantity_positive"),
        CheckConstraint("reserved_kg >= 0 AND reserved_kg <= quantity_kg", name="reserved_range"),
        CheckConstraint("filled_kg >= 0 AND filled_kg <= quantity_kg", name="filled_range"),
        CheckConstraint("price > 0 AND notional >= 0 AND fee >= 0 AND total = notional + fee", name="amounts"),
        CheckConstraint("paid_amount >= 0 AND refunded_amount >= 0 AND refunded_amount <= paid_amount",
                        name="paid_range"),
        CheckConstraint("source IN ('listing', 'exchange')", name="source"),
        CheckConstraint("payment IN ('wallet', 'card')", name="payment"),
        CheckConstraint("(source = 'listing') = (listing_id IS NOT NULL)", name="listing_source"),
        Index("ix_offset_orders_holder", "holder_id", "id"),
        Index("ix_offset_orders_status", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    footprint_id: Mapped[int | None] = mapped_column(ForeignKey("footprints.id"), index=True)
    quantity_kg: Mapped[int] = mapped_column(BigInteger)
    beneficiary: Mapped[str] = mapped_column(String(200))
    message: Mapped[str | None] = mapped_column(Text)
    jurisdiction: Mapped[str] = mapped_column(String(100))
    purpose: Mapped[str] = mapped_column(String(32))
    preference: Mapped[dict[str, Any]] = mapped_column(JSON)
    payment: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(8))
    listing_id: Mapped[int | None] = mapped_column(ForeignKey("offset_listings.id"), index=True)
    instrument_id: Mapped[int | None] = mapped_column(ForeignKey("instruments.id"))
    # The quote: price per tonne, notional and fee shown apart, total = notional + fee.
    price: Mapped[int] = mapped_column(BigInteger)
    notional: Mapped[int] = mapped_column(BigInteger)
    fee: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    reserved_kg: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    status: Mapped[OffsetStatus] = mapped_column(str_enum(OffsetStatus, "offset_status"),
                                                 default=OffsetStatus.DRAFT)
    reason: Mapped[str | None] = mapped_column(Text)        # why cancelled or refunded
    payment_ref: Mapped[str | None] = mapped_column(String(100), unique=True)   # card: the payment id
    paid_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    refund_ref: Mapped[str | None] = mapped_column(String(100))
    filled_kg: Mapped[int] = mapped_column(BigInteger, default=0)
    exchange_order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    retirement_id: Mapped[int | None] = mapped_column(ForeignKey("retirements.id"), unique=True)
    certificate_number: Mapped[str | None] = mapped_column(String(40))
    # Why the resume job last failed to finish this paid order, and how often it failed.
    resume_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    resume_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    paid_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    filled_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    retired_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    @property
    def ref(self) -> str:
        """The cash ledger's reference of this order's journals."""
        return f"offset:{self.id}"
