"""Offset orders: quote → pay → fill → retire to the beneficiary, with a certificate at the end.

States: draft (a quote: price, fee and total shown apart, holding supply until `expires_at`) →
awaiting_payment (card) → paid (the money is held for the order) → filled → retired (certificate
issued); or cancelled (with a reason: by the buyer, or the quote expired) or refunded (with the
reason the fill could not complete).

Fills (`fulfil`):
- from a fixed-price listing (the fast path): the quote reserved the quantity on the listing; the
  fill is delivery versus payment in one transaction: the held money goes to the seller (the fee to
  the platform), the listed blocks go to the buyer and the exact blocks delivered are retired at
  once to the beneficiary (`registry.units.retire` with their serials).
- from the order book (`exchange.offset_fill`): an IOC limit buy at the quoted price, so nothing is
  paid above the quote; what the trades delivered is retired, the rest of the money comes back.

Payment and fill are separate transactions on purpose: the money is safe (held) once paid, and a
fill interrupted by a crash is finished by `resume_paid` (a scheduled job and a CLI command); every
step locks the order row and checks its state, so nothing is retired or refunded twice.

Placed at once (`place`, or `place_offset` for the order alone: the API's `confirm: true`; wallet
only): the quote, the payment and the fill from a listing in the caller's one transaction, writing
what the three steps write; a crash leaves nothing to resume, since nothing of the order committed.
It returns what the certificate says too (`Placed.certificate_body`: no query).

Card payments (Stripe, in `exchange.payments`) call `mark_paid` when the payment succeeded and
register a refunder with `set_card_refunder` that returns money to the card.

Lock order (written out in `exchange.payments`, "Lock order"): the offset order, then its card
payment, then the payment's refunds, then cash accounts by id. Every use case here locks the order
first; a refund to the card locks the payment (`set_card_locker`) before it moves money; Stripe's
webhooks lock the order before the payment.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from exchange import offset_rows, wallets
from exchange.instruments import get_instrument
from exchange.models import (
    CashAccount,
    CashAccountKind,
    Deposit,
    Instrument,
    InstrumentKind,
    JournalKind,
    Withdrawal,
    WithdrawalStatus,
)
from exchange.offset_models import (
    Footprint,
    FootprintKind,
    ListingStatus,
    OffsetListing,
    OffsetOrder,
    OffsetStatus,
    footprint_ref,
)
from exchange.pricing import fee as fee_of
from exchange.pricing import notional as notional_of
from registry import audit, certificates, units
from registry.actors import Actor
from registry.certificates import RetirementFacts
from registry.db import utcnow
from registry.delivered_retirement import BuyerAccounts, Retired, account_columns, deliver_and_retire
from registry.errors import Conflict, InsufficientUnits, InvalidInput, NotFound, RegistryError
from registry.models import (
    Batch,
    Block,
    BlockStatus,
    Holder,
    HolderKind,
    Methodology,
    Movement,
    Project,
    ProjectKind,
    Retirement,
    RetirementPurpose,
    User,
    UserRole,
)

log = logging.getLogger(__name__)

QUOTE_TTL = dt.timedelta(minutes=10)
MAX_RESUME_ATTEMPTS = 5     # a paid order the resume job failed to finish this often is refunded
CARD_PAYMENT_TTL = dt.timedelta(minutes=30)
DEFAULT_FEE_BP = 50
PAYMENTS = ("wallet", "card")
LIVE = (OffsetStatus.DRAFT, OffsetStatus.AWAITING_PAYMENT, OffsetStatus.PAID)
_PURPOSE = {FootprintKind.EVENT: RetirementPurpose.EVENT_OFFSET,
            FootprintKind.ORGANISATION: RetirementPurpose.ORGANISATIONAL,
            FootprintKind.PERSONAL: RetirementPurpose.PERSONAL}

# Set by the card-payment module: refunder(session, order, amount) → the refund's reference.
CardRefunder = Callable[[Session, OffsetOrder, int], str | None]
_card_refunder: CardRefunder | None = None
# Set by the card-payment module: canceller(session, order) stops the order's open card payment.
CardCanceller = Callable[[Session, OffsetOrder], None]
_card_canceller: CardCanceller | None = None
# Set by the card-payment module: locker(session, order) locks the card payment that paid the order.
CardLocker = Callable[[Session, OffsetOrder], None]
_card_locker: CardLocker | None = None


def set_card_refunder(fn: CardRefunder | None) -> CardRefunder | None:
    """Register how a card payment is refunded (e.g. a Stripe Refund with an idempotency key).
    Called inside the refund's transaction, after the ledger moved the money out to the bank.
    Returns the one it replaces (a test puts it back)."""
    global _card_refunder
    previous, _card_refunder = _card_refunder, fn
    return previous


def set_card_canceller(fn: CardCanceller | None) -> CardCanceller | None:
    """Register how an order's open card payment is stopped when the order is cancelled or its
    quote expires (e.g. cancel the Stripe PaymentIntent, so the browser can no longer pay it).
    Called inside the cancellation's transaction; it must not raise for the provider (a payment
    that still arrives is refunded by `mark_paid`). Returns the one it replaces."""
    global _card_canceller
    previous, _card_canceller = _card_canceller, fn
    return previous


def set_card_locker(fn: CardLocker | None) -> CardLocker | None:
    """Register how the card payment of an order is locked (`exchange.payments`' lock order: the
    order, then its payment, then cash accounts). A refund to the card calls it, with the order
    locked, before any money moves. Returns the one it replaces."""
    global _card_locker
    previous, _card_locker = _card_locker, fn
    return previous


def _lock_card_payment(session: Session, order: OffsetOrder) -> None:
    if order.payment == "card" and order.payment_ref is not None and _card_locker is not None:
        _card_locker(session, order)


def _int(value: object, field: str, low: int = 1, high: int = 10**12) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{field} must be an integer in [{low}, {high}]", field=field)
    return value


# ---- listings ---------------------------------------------------------------------------------


def create_listing(session: Session, actor: Actor, *, project_id: int, vintage: int, quantity_kg: int,
                   price: int, fee_bp: int = DEFAULT_FEE_BP) -> OffsetListing:
    """A seller lists `quantity_kg` of its held blocks of one project and vintage at a fixed `price`
    (minor units per tonne). The blocks are locked (LISTED under the listing's ref). Raises
    InsufficientUnits (field quantity_kg), InvalidInput, Suspended."""
    actor.require_can_move_units()
    _int(project_id, "project_id")
    _int(vintage, "vintage", 1990, 2200)
    _int(quantity_kg, "quantity_kg")
    _int(price, "price")
    _int(fee_bp, "fee_bp", 0, 1000)
    listing = OffsetListing(seller_id=actor.holder_id, project_id=project_id, vintage=vintage, price=price,
                            fee_bp=fee_bp, quantity_kg=quantity_kg, available_kg=quantity_kg,
                            status=ListingStatus.ACTIVE.value, created_by_id=actor.user_id)
    session.add(listing)
    session.flush()
    units.lock_units(session, actor.holder_id, units.Selection(quantity_kg=quantity_kg, project_id=project_id,
                                                               vintage=vintage), listing.ref)
    audit.record(session, actor, "offset_listing.created", "offset_listing", listing.id,
                 {"project_id": project_id, "vintage": vintage, "quantity_kg": quantity_kg, "price": price,
                  "fee_bp": fee_bp})
    return listing


def _lock_listing(session: Session, listing_id: int) -> OffsetListing:
    listing = session.get(OffsetListing, listing_id, with_for_update={"key_share": True},
                          populate_existing=True)
    if listing is None:
        raise NotFound(f"no listing {listing_id}", field="listing_id")
    return listing


def close_listing(session: Session, actor: Actor, listing_id: int) -> OffsetListing:
    """The seller withdraws what is not reserved; live quotes keep their reservation (released to
    the seller when they end)."""
    actor.require_can_move_units()
    listing = _lock_listing(session, listing_id)
    if listing.seller_id != actor.holder_id:
        raise NotFound(f"no listing {listing_id}", field="listing_id")
    if listing.status != ListingStatus.ACTIVE.value:
        raise Conflict("the listing is closed", field="listing_id", code="listing_closed")
    unlocked = units.unlock_units(session, listing.ref, listing.available_kg) if listing.available_kg else 0
    listing.available_kg, listing.status = 0, ListingStatus.CLOSED.value
    audit.record(session, actor, "offset_listing.closed", "offset_listing", listing.id, {"unlocked_kg": unlocked})
    return listing


def _give_back(session: Session, order: OffsetOrder) -> int:
    """Return the order's reservation to its listing (or to the seller if the listing closed)."""
    kg = order.reserved_kg
    if kg == 0 or order.listing_id is None:
        return 0
    listing = _lock_listing(session, order.listing_id)
    if listing.status == ListingStatus.ACTIVE.value:
        listing.available_kg += kg
    else:
        units.unlock_units(session, listing.ref, kg)
    order.reserved_kg = 0
    return kg


def listings(session: Session, *, active_only: bool = True, limit: int = 100) -> list[OffsetListing]:
    stmt = select(OffsetListing).order_by(OffsetListing.price, OffsetListing.id).limit(limit)
    if active_only:
        stmt = stmt.where(OffsetListing.status == ListingStatus.ACTIVE.value, OffsetListing.available_kg > 0)
    return list(session.scalars(stmt))


# ---- quotes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preference:
    """What the buyer wants: an instrument, a project type (project kind or methodology sector), a
    vintage, or simply the cheapest; filled from a listing (default) or on the exchange."""

    instrument: str | None = None
    project_type: str | None = None
    vintage: int | None = None
    source: str = "listing"

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Preference:
        raw = raw or {}
        if not isinstance(raw, Mapping):
            raise InvalidInput("preference must be an object", field="preference")
        known = {"instrument", "project_type", "vintage", "cheapest", "source"}
        for k in raw:
            if k not in known:
                raise InvalidInput(f"unknown preference {k!r}", field=f"preference.{k}")
        source = raw.get("source") or "listing"
        if source not in ("listing", "exchange"):
            raise InvalidInput("source must be listing or exchange", field="preference.source")
        vintage = raw.get("vintage")
        if vintage is not None:
            _int(vintage, "preference.vintage", 1990, 2200)
        if source == "exchange" and not raw.get("instrument"):
            raise InvalidInput("buying on the exchange needs an instrument", field="preference.instrument")
        return cls(raw.get("instrument") or None, raw.get("project_type") or None, vintage, source)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("instrument", self.instrument), ("project_type", self.project_type),
                                                  ("vintage", self.vintage)) if v is not None}
        if not out:
            out["cheapest"] = True
        return out | {"source": self.source}


_L = offset_rows.LISTINGS
_O = offset_rows.ORDERS
_P = cast(Table, Project.__table__)
_M = cast(Table, Methodology.__table__)
_H = cast(Table, Holder.__table__)
_F = cast(Table, Footprint.__table__)


def _instrument_conditions(inst: Instrument) -> list[Any]:
    """Listings whose project and vintage could be delivered into `inst`."""
    if inst.kind is InstrumentKind.PROJECT:
        return [_L.c.project_id == inst.project_id, _L.c.vintage == inst.vintage_from]
    conds: list[Any] = [_L.c.vintage >= inst.vintage_from, _L.c.vintage <= inst.vintage_to]
    if inst.project_kind:
        conds.append(_P.c.kind == inst.project_kind)
    if inst.sector:
        conds.append(_M.c.sector == inst.sector)
    return conds


def _reserve_listing(session: Session, holder_id: int, qty: int, pref: Preference) -> Any:
    """Reserve `qty` on the cheapest active listing that has it available and matches the
    preference (not the buyer's own, not of a suspended project): one UPDATE .. RETURNING (id,
    price, fee_bp, available_kg, seller_id) whose subquery picks and locks the listing. Raises InsufficientUnits (field
    quantity_kg, code no_supply), NotFound (the preferred instrument)."""
    kind = None if not pref.project_type else "kind" if pref.project_type in _PROJECT_KINDS else "sector"
    params = {"r_qty": qty, "r_holder": holder_id, "r_vintage": pref.vintage, "r_type": pref.project_type}
    if pref.instrument:
        stmt = _reservation(pref.vintage is not None, kind, get_instrument(session, pref.instrument))
    else:   # the usual ones: built once per shape of preference
        stmt = _RESERVATIONS.get((pref.vintage is not None, kind))
        if stmt is None:
            stmt = _RESERVATIONS[(pref.vintage is not None, kind)] = _reservation(pref.vintage is not None, kind, None)
    # PostgreSQL re-checks a row it waited for and drops it if a concurrent quote took its supply;
    # with LIMIT 1 the statement then changes nothing even if another listing would do. A fresh
    # statement sees the committed state: try again before saying there is no supply.
    for _ in range(3):
        listing = session.execute(stmt, params).first()
        if listing is not None:
            offset_rows.refresh_loaded(session, OffsetListing, listing.id, available_kg=listing.available_kg)
            return listing
    raise InsufficientUnits(f"no listing matching the preference has {qty} kg available", field="quantity_kg",
                            code="no_supply")


_PROJECT_KINDS = frozenset(k.value for k in ProjectKind)
_RESERVATIONS: dict[tuple[bool, str | None], Any] = {}


def _reservation(by_vintage: bool, project_type: str | None, inst: Instrument | None) -> Any:
    """The reservation's UPDATE for a shape of preference (parameters r_qty, r_holder,
    r_vintage, r_type; `project_type` says which column r_type is matched to: kind or sector). The
    parameters are not named as columns: an UPDATE would set a column its parameter is named as."""
    pick = (select(_L.c.id).join(_P, _P.c.id == _L.c.project_id).join(_M, _M.c.id == _P.c.methodology_id)
            .where(_L.c.status == ListingStatus.ACTIVE.value, _L.c.available_kg >= bindparam("r_qty"),
                   _L.c.seller_id != bindparam("r_holder"), _P.c.suspended.is_(False))
            .order_by(_L.c.price, _L.c.id).limit(1).with_for_update(of=_L))
    if by_vintage:
        pick = pick.where(_L.c.vintage == bindparam("r_vintage"))
    if project_type is not None:
        pick = pick.where((_P.c.kind if project_type == "kind" else _M.c.sector) == bindparam("r_type"))
    if inst is not None:
        pick = pick.where(*_instrument_conditions(inst))
    return (update(_L).where(_L.c.id == pick.scalar_subquery(), _L.c.available_kg >= bindparam("r_qty"))
            .values(available_kg=_L.c.available_kg - bindparam("r_qty"))
            .returning(_L.c.id, _L.c.price, _L.c.fee_bp, _L.c.available_kg, _L.c.seller_id))


def _purpose(holder_kind: HolderKind, footprint_kind: FootprintKind | None) -> RetirementPurpose:
    if footprint_kind is not None:
        return _PURPOSE[footprint_kind]
    return {HolderKind.INDIVIDUAL: RetirementPurpose.PERSONAL,
            HolderKind.EVENT_ORGANISER: RetirementPurpose.EVENT_OFFSET}.get(holder_kind,
                                                                             RetirementPurpose.ORGANISATIONAL)


def _jurisdiction(city: str | None, province: str | None, given: str | None) -> str:
    if given is not None:
        if not given.strip():
            raise InvalidInput("jurisdiction must not be blank", field="jurisdiction")
        return given.strip()
    return city or province or "中国"


def covered_kg(session: Session, footprint_id: int) -> tuple[int, int]:
    """(kg retired for the footprint, kg in its live orders: quoted, paid or being filled)."""
    rows = session.execute(select(OffsetOrder.status, func.sum(OffsetOrder.quantity_kg),
                                  func.sum(OffsetOrder.filled_kg)).where(
        OffsetOrder.footprint_id == footprint_id).group_by(OffsetOrder.status)).all()
    retired = sum(int(filled or 0) for status, _, filled in rows if status is OffsetStatus.RETIRED)
    live = sum(int(qty or 0) for status, qty, _ in rows if status in (*LIVE, OffsetStatus.FILLED))
    return retired, live


def _covered(kg: Any, statuses: list[OffsetStatus]) -> Any:
    return (select(func.coalesce(func.sum(kg), 0))
            .where(_O.c.footprint_id == bindparam("fp"), _O.c.status.in_(statuses)).scalar_subquery())


# The quote's reads in one statement: the buyer (purpose, jurisdiction) and, if it covers one, its
# footprint with what `covered_kg` says is retired and live for it.
_BUYER = select(_H.c.kind, _H.c.city, _H.c.province).where(_H.c.id == bindparam("h"))
_BUYER_AND_FOOTPRINT = (
    select(_H.c.kind, _H.c.city, _H.c.province, _F.c.holder_id.label("fp_holder_id"), _F.c.kind.label("fp_kind"),
           _F.c.name.label("fp_name"), _F.c.total_kg, _covered(_O.c.filled_kg, [OffsetStatus.RETIRED]).label("retired"),
           _covered(_O.c.quantity_kg, [*LIVE, OffsetStatus.FILLED]).label("live"))
    .select_from(_H.outerjoin(_F, _F.c.id == bindparam("fp"))).where(_H.c.id == bindparam("h")))
# The same with what the fill needs of the buyer (`BuyerAccounts`), for an order placed at once.
_ACCOUNT_COLUMNS = (*account_columns(bindparam("h")), _H.c.suspended, _H.c.suspension_reason, _H.c.name)
_BUYER_TO_FILL = _BUYER.add_columns(*_ACCOUNT_COLUMNS)
_BUYER_AND_FOOTPRINT_TO_FILL = _BUYER_AND_FOOTPRINT.add_columns(*_ACCOUNT_COLUMNS)


def create_offset(session: Session, actor: Actor, *, beneficiary: str, quantity_kg: int | None = None,
                  footprint_id: int | None = None, message: str | None = None, jurisdiction: str | None = None,
                  preference: Mapping[str, Any] | None = None, payment: str = "wallet",
                  ttl: dt.timedelta = QUOTE_TTL) -> OffsetOrder:
    """Quote an offset (status draft): `quantity_kg`, or a footprint's uncovered part (or part of
    it, when both are given). A listing quote
    reserves the quantity until `expires_at`. Raises InvalidInput, NotFound (footprint, instrument),
    Conflict (footprint already covered), InsufficientUnits (no supply: field quantity_kg).

    Core statements: the buyer and footprint in one read, the listing picked and reserved by one
    UPDATE, the order by one INSERT and the audit record by `record_each`."""
    quote = _quote(session, actor, beneficiary=beneficiary, quantity_kg=quantity_kg, footprint_id=footprint_id,
                   message=message, jurisdiction=jurisdiction, preference=preference, payment=payment, ttl=ttl)
    assert quote.order is not None
    audit.record_each(session, [_quoted_record(quote.order, actor)])
    return quote.order


@dataclass(frozen=True, slots=True)
class _Quote:
    order: OffsetOrder | None   # None: not written yet (`_quote`'s to_fill, from a listing)
    footprint_ref: str | None   # the footprint's reference on the certificate, if the order covers one
    listing: Any                # the listing reserved (id, price, fee_bp, available_kg, seller_id); None: the book
    accounts: BuyerAccounts | None = None   # the buyer's registry accounts, if asked for
    row: dict[str, Any] | None = None       # the order's columns but id, as quoted


def _quote(session: Session, actor: Actor, *, beneficiary: str, quantity_kg: int | None, footprint_id: int | None,
           message: str | None, jurisdiction: str | None, preference: Mapping[str, Any] | None, payment: str,
           ttl: dt.timedelta, to_fill: bool = False) -> _Quote:
    """`create_offset` but for its audit record (`_quoted_record`), which the caller writes.
    `to_fill`: the buyer's registry accounts are read with it (`_Quote.accounts`), and a quote from
    a listing is not written (`_Quote.order` None): the caller inserts `_Quote.row`."""
    actor.require_can_move_units()
    if payment not in PAYMENTS:
        raise InvalidInput("payment must be wallet or card", field="payment")
    if not isinstance(beneficiary, str) or not beneficiary.strip():
        raise InvalidInput("beneficiary is required", field="beneficiary")
    if quantity_kg is None and footprint_id is None:
        raise InvalidInput("give quantity_kg or footprint_id (or both: part of a footprint)", field="quantity_kg")
    pref = Preference.parse(preference)
    fp_kind, fp_ref = None, None
    session.flush()   # what the caller changed through the ORM is seen: Core statements do not autoflush
    if footprint_id is None:
        buyer = session.execute(_BUYER_TO_FILL if to_fill else _BUYER, {"h": actor.holder_id}).one()
    else:
        buyer = session.execute(_BUYER_AND_FOOTPRINT_TO_FILL if to_fill else _BUYER_AND_FOOTPRINT,
                                {"h": actor.holder_id, "fp": footprint_id}).one()
        if buyer.fp_holder_id is None or buyer.fp_holder_id != actor.holder_id:
            raise NotFound(f"no footprint {footprint_id}", field="footprint_id")
        fp_kind, fp_ref = buyer.fp_kind, footprint_ref(footprint_id, buyer.fp_name)
        uncovered = buyer.total_kg - int(buyer.retired) - int(buyer.live)
        if uncovered <= 0:
            raise Conflict(f"footprint {footprint_id} is already covered by retired or pending offsets",
                           field="footprint_id", code="already_covered")
        if quantity_kg is None:
            quantity_kg = uncovered
        elif isinstance(quantity_kg, int) and quantity_kg > uncovered:
            raise Conflict(f"only {uncovered} kg of footprint {footprint_id} is not yet covered",
                           field="quantity_kg", code="more_than_footprint")
    qty = _int(quantity_kg, "quantity_kg")
    now = utcnow()
    row: dict[str, Any] = dict(
        holder_id=actor.holder_id, user_id=actor.user_id, footprint_id=footprint_id, quantity_kg=qty,
        beneficiary=beneficiary.strip(), message=message,
        jurisdiction=_jurisdiction(buyer.city, buyer.province, jurisdiction),
        purpose=_purpose(buyer.kind, fp_kind).value, preference=pref.as_dict(), payment=payment,
        source=pref.source, listing_id=None, instrument_id=None, expires_at=now + ttl, status=OffsetStatus.DRAFT,
        reason=None, payment_ref=None, paid_amount=0, refunded_amount=0, refund_ref=None, filled_kg=0,
        exchange_order_id=None, retirement_id=None, certificate_number=None, resume_attempts=0, resume_error=None,
        created_at=now, updated_at=now, paid_at=None, filled_at=None, retired_at=None)
    listing = None
    if pref.source == "listing":
        listing = _reserve_listing(session, actor.holder_id, qty, pref)
        notional = notional_of(listing.price, qty)
        row |= dict(listing_id=listing.id, reserved_kg=qty, price=listing.price, notional=notional,
                    fee=fee_of(notional, listing.fee_bp))
    else:
        from exchange.offset_fill import quote_on_book
        inst, price, notional, fee = quote_on_book(session, pref.instrument or "", qty)
        row |= dict(instrument_id=inst.id, reserved_kg=0, price=price, notional=notional, fee=fee)
    row["total"] = row["notional"] + row["fee"]
    accounts = (BuyerAccounts(buyer.holding_id, buyer.retirement_id, buyer.suspended, buyer.suspension_reason,
                              buyer.name) if to_fill else None)
    if to_fill and listing is not None:   # `place` writes the order once it knows how the fill ended
        return _Quote(None, fp_ref, listing, accounts, row)
    return _Quote(offset_rows.insert_order(session, row), fp_ref, listing, accounts, row)


def _quoted_record(order: OffsetOrder, actor: Actor) -> tuple[Actor | None, str, str, int | str, dict[str, Any]]:
    return (actor, "offset.quoted", "offset_order", order.id, {
        "quantity_kg": order.quantity_kg, "footprint_id": order.footprint_id, "source": order.source,
        "listing_id": order.listing_id, "instrument_id": order.instrument_id, "price": order.price,
        "notional": order.notional, "fee": order.fee, "total": order.total, "payment": order.payment,
        "beneficiary": order.beneficiary, "expires_at": order.expires_at.isoformat()})


# ---- reading and expiry ----------------------------------------------------------------------


def _lock(session: Session, order_id: int) -> OffsetOrder:
    order = offset_rows.lock_order(session, order_id)
    if order is None:
        raise NotFound(f"no offset order {order_id}", field="order_id")
    return order


def get_offset(session: Session, actor: Actor, order_id: int, *, lock: bool = False) -> OffsetOrder:
    """The actor's own order (an operator may read any); another holder's is NotFound."""
    order = _lock(session, order_id) if lock else session.get(OffsetOrder, order_id)
    if order is None or (order.holder_id != actor.holder_id and not actor.is_operator):
        raise NotFound(f"no offset order {order_id}", field="order_id")
    return order


def offsets_of(session: Session, holder_id: int, status: str | None = None) -> Any:
    stmt = select(OffsetOrder).where(OffsetOrder.holder_id == holder_id).order_by(OffsetOrder.id.desc())
    return stmt.where(OffsetOrder.status == status) if status else stmt


def _end(session: Session, order: OffsetOrder, status: OffsetStatus, reason: str, actor: Actor | None) -> None:
    released = _give_back(session, order)
    before = order.status
    order.status, order.reason, order.updated_at = status, reason, utcnow()
    audit.record(session, actor, f"offset.{status.value}", "offset_order", order.id,
                 {"from": before.value, "reason": reason, "released_kg": released,
                  "refunded_amount": order.refunded_amount})
    if status is OffsetStatus.CANCELLED and order.payment == "card" and _card_canceller is not None:
        _card_canceller(session, order)


def _expired(order: OffsetOrder, now: dt.datetime) -> bool:
    return order.status in (OffsetStatus.DRAFT, OffsetStatus.AWAITING_PAYMENT) and order.expires_at <= now


def expire_if_due(session: Session, order_id: int, now: dt.datetime | None = None) -> bool:
    """Cancel the order (reason quote_expired) and release its reservation if its quote ran out.
    Returns whether it did. The caller commits."""
    order = _lock(session, order_id)
    if not _expired(order, now or utcnow()):
        return False
    _end(session, order, OffsetStatus.CANCELLED, "quote_expired", None)
    return True


def expire_due(session: Session, now: dt.datetime | None = None, *, holder_id: int | None = None,
               limit: int = 500) -> list[int]:
    """The expiry job's work: every quote past its time (of one holder, if given). Returns the
    orders cancelled. The caller commits."""
    now = now or utcnow()
    stmt = (select(OffsetOrder.id).where(OffsetOrder.status.in_([OffsetStatus.DRAFT, OffsetStatus.AWAITING_PAYMENT]),
                                         OffsetOrder.expires_at <= now).order_by(OffsetOrder.id).limit(limit))
    if holder_id is not None:
        stmt = stmt.where(OffsetOrder.holder_id == holder_id)
    due = session.scalars(stmt).all()
    return [oid for oid in due if expire_if_due(session, oid, now)]


def cancel_offset(session: Session, actor: Actor, order_id: int, reason: str | None = None) -> OffsetOrder:
    """The buyer cancels a quote before paying. Raises Conflict once paid."""
    actor.require_can_move_units()
    order = get_offset(session, actor, order_id, lock=True)
    if order.status not in (OffsetStatus.DRAFT, OffsetStatus.AWAITING_PAYMENT):
        raise Conflict(f"an order that is {order.status.value} cannot be cancelled", field="order_id",
                       code="wrong_status")
    _end(session, order, OffsetStatus.CANCELLED, (reason or "cancelled by the buyer").strip(), actor)
    return order


# ---- payment ----------------------------------------------------------------------------------


def confirm_offset(session: Session, actor: Actor, order_id: int) -> OffsetOrder:
    """Accept the quote. Wallet: the total is held from the buyer's available cash now (status paid;
    InsufficientFunds, field payment, leaves the quote as it was). Card: awaiting_payment until the
    card-payment module calls `mark_paid`. Raises Conflict if the quote expired or was used."""
    actor.require_can_move_units()
    order, wallet = offset_rows.lock_order_and_wallet(session, order_id)
    if order is None or (order.holder_id != actor.holder_id and not actor.is_operator):
        raise NotFound(f"no offset order {order_id}", field="order_id")
    now = utcnow()
    if order.payment == "card" and order.status is OffsetStatus.AWAITING_PAYMENT and not _expired(order, now):
        return order
    if _expired(order, now):
        raise Conflict("the quote expired; ask for a new one", field="order_id", code="quote_expired")
    if order.status is not OffsetStatus.DRAFT:
        raise Conflict(f"the order is {order.status.value}", field="order_id", code="wrong_status")
    if order.payment == "card":
        order.status = OffsetStatus.AWAITING_PAYMENT
        order.expires_at = max(order.expires_at, now + CARD_PAYMENT_TTL)
        audit.record(session, actor, "offset.awaiting_payment", "offset_order", order.id,
                     {"total": order.total, "expires_at": order.expires_at.isoformat()})
        return order
    try:
        wallets.hold(session, order.holder_id, order.total, ref=order.ref, user_id=actor.user_id, account_ids=wallet)
    except RegistryError as e:
        raise _wallet_refused(order, e) from None
    _paid(session, order, order.total, actor, now)
    return order


def _wallet_refused(order: OffsetOrder, e: RegistryError) -> RegistryError:
    """The wallet could not hold the order's total (InsufficientFunds): the same error, field payment."""
    return type(e)(f"the wallet cannot pay {order.total}: {e.message}", field="payment", code=e.code)


def _paid(session: Session, order: OffsetOrder, amount: int, actor: Actor | None, now: dt.datetime) -> None:
    offset_rows.set_order(session, order, status=OffsetStatus.PAID, paid_amount=amount, paid_at=now, updated_at=now)
    audit.record_each(session, [_paid_record(order, amount, actor)])


def _paid_record(order: OffsetOrder, amount: int,
                 actor: Actor | None) -> tuple[Actor | None, str, str, int | str, dict[str, Any]]:
    return (actor, "offset.paid", "offset_order", order.id,
            {"payment": order.payment, "amount": amount, "payment_ref": order.payment_ref})


def mark_paid(session: Session, order_id: int, *, payment_ref: str, amount: int | None = None) -> OffsetOrder:
    """A card payment of the order succeeded (called by the card-payment module on the payment
    provider's signed webhook). Idempotent by `payment_ref`. The money enters the buyer's wallet as
    a deposit referenced by `payment_ref` and is held for the order (status paid). If the order can
    no longer be filled (expired or cancelled meanwhile), the money is refunded at once (status
    refunded, with the reason). Raises Conflict for another payment of a paid order or a wrong amount."""
    if not isinstance(payment_ref, str) or not payment_ref.strip():
        raise InvalidInput("payment_ref is required", field="payment_ref")
    order = _lock(session, order_id)
    if order.payment_ref == payment_ref:
        return order
    if order.payment != "card" or order.payment_ref is not None:
        raise Conflict("this order is not waiting for a card payment", field="order_id", code="wrong_status")
    amount = order.total if amount is None else amount
    if amount != order.total:
        raise Conflict(f"paid {amount}, the order's total is {order.total}", field="amount", code="wrong_amount")
    if order.reserved_kg and order.listing_id is not None:
        # The lock order: the listing (the fill or the expiry takes it next) before cash accounts.
        _lock_listing(session, order.listing_id)
    now = utcnow()
    if _expired(order, now):
        _end(session, order, OffsetStatus.CANCELLED, "quote_expired", None)
    order.payment_ref = payment_ref
    available, _ = wallets.holder_accounts(session, order.holder_id)
    journal = wallets.post(session, JournalKind.DEPOSIT, [
        (wallets.system_account(session, CashAccountKind.BANK), -amount), (available, amount)],
        ref=order.ref, memo=f"card payment {payment_ref}")
    session.add(Deposit(holder_id=order.holder_id, amount=amount, external_ref=f"card:{payment_ref}"[:100],
                        journal_id=journal.id))
    wallets.hold(session, order.holder_id, amount, ref=order.ref)
    if order.status in (OffsetStatus.DRAFT, OffsetStatus.AWAITING_PAYMENT):
        _paid(session, order, amount, None, now)
    else:
        order.paid_amount, order.paid_at = amount, now
        refund(session, order, f"the payment arrived after the order was {order.status.value}")
    return order


def refund(session: Session, order: OffsetOrder, reason: str) -> OffsetOrder:
    """Give back what the order still holds (wallet: to available; card: back to the card, through
    the registered refunder) and release its reservation; status refunded with `reason`. The order
    must be locked by the caller."""
    amount = order.paid_amount - order.refunded_amount
    order.reason = reason   # already now: the card refunder tells the card why
    if amount > 0:   # the lock order: the payment, the listing, then the cash accounts
        _lock_card_payment(session, order)
    if order.reserved_kg and order.listing_id is not None:
        _lock_listing(session, order.listing_id)   # `_end` gives the reservation back to it
    if amount > 0:
        wallets.release(session, order.holder_id, amount, ref=order.ref)
        if order.payment == "card":
            refund_card(session, order, amount)
        order.refunded_amount += amount
    _end(session, order, OffsetStatus.REFUNDED, reason, None)
    return order


def refund_card(session: Session, order: OffsetOrder, amount: int) -> None:
    """The money leaves the wallet for the card: a paid withdrawal to the bank side of the ledger.
    The order must be locked by the caller; its card payment is locked here before the money moves."""
    _lock_card_payment(session, order)
    available, _ = wallets.holder_accounts(session, order.holder_id)
    w = Withdrawal(holder_id=order.holder_id, amount=amount, bank_reference=f"card-refund:{order.payment_ref}"[:100],
                   status=WithdrawalStatus.PAID, reason=f"refund of offset order {order.id}", decided_at=utcnow())
    session.add(w)
    session.flush()
    wallets.post(session, JournalKind.WITHDRAWAL_PAID, [
        (available, -amount), (wallets.system_account(session, CashAccountKind.BANK), amount)],
        ref=order.ref, memo=f"card refund {order.payment_ref}")
    if _card_refunder is not None:
        order.refund_ref = _card_refunder(session, order, amount)


def _refund_failed_note(amount: int, why: str) -> str:
    return (f"the refund of {amount} to the card failed ({why}); the money is held until an operator "
            "retries it or credits it to the wallet")


def card_refund_failed(session: Session, order_id: int, amount: int, why: str) -> OffsetOrder:
    """Stripe reports that `amount` fen refunded to the order's card did not reach it (`why`: e.g.
    expired_or_canceled_card); the card-payment module holds that money for the buyer. The order no
    longer counts it as refunded, a refunded order becomes refund_failed, and its reason says so."""
    order = _lock(session, order_id)
    amount = min(amount, order.refunded_amount)
    before = order.status
    order.refunded_amount -= amount
    if order.status is OffsetStatus.REFUNDED:
        order.status = OffsetStatus.REFUND_FAILED
    note = _refund_failed_note(amount, why)
    order.reason, order.updated_at = (f"{order.reason}; {note}" if order.reason else note), utcnow()
    audit.record(session, None, "offset.refund_failed", "offset_order", order.id,
                 {"from": before.value, "amount": amount, "why": why, "refunded_amount": order.refunded_amount})
    return order


def card_refund_resolved(session: Session, order_id: int, amount: int, why: str,
                         refund_ref: str | None) -> OffsetOrder:
    """An operator resolved a failed card refund of the order: retried to the card (`refund_ref`,
    the new refund) or credited to the buyer's wallet (None). The order counts it as refunded again
    (refund_failed → refunded) and its reason says how."""
    order = _lock(session, order_id)
    amount = min(amount, order.paid_amount - order.refunded_amount)
    order.refunded_amount += amount
    if order.status is OffsetStatus.REFUND_FAILED:
        order.status = OffsetStatus.REFUNDED
    note = _refund_failed_note(amount, why)
    done = (f"refunded {amount} to the card again" if refund_ref else
            f"the card could not take {amount}: credited to the wallet instead")
    reason = (order.reason or "").replace(f"; {note}", f"; {done}").replace(note, done)
    order.reason = reason if done in reason else (f"{reason}; {done}" if reason else done)
    if refund_ref:
        order.refund_ref = refund_ref
    order.updated_at = utcnow()
    audit.record(session, None, "offset.refund_resolved", "offset_order", order.id,
                 {"amount": amount, "to": "card" if refund_ref else "wallet", "refund_ref": refund_ref,
                  "refunded_amount": order.refunded_amount})
    return order


# ---- the fill -------------------------------------------------------------------------------


def buyer_actor(session: Session, order: OffsetOrder) -> Actor:
    """The buyer as the registry sees it when retiring for the order (the user who ordered)."""
    return _buyer_and_footprint(session, order)[0]


_U = cast(Table, User.__table__)
_BUYER_OF_ORDER = (select(_H.c.kind, _U.c.role, _F.c.id, _F.c.name).select_from(_H)
                   .outerjoin(_U, _U.c.id == bindparam("u")).outerjoin(_F, _F.c.id == bindparam("fp"))
                   .where(_H.c.id == bindparam("h")))


def _buyer_and_footprint(session: Session, order: OffsetOrder) -> tuple[Actor, str | None]:
    """The buyer (`buyer_actor`) and the reference of the footprint the order covers, in one query."""
    row = session.execute(_BUYER_OF_ORDER, {"u": order.user_id, "fp": order.footprint_id,
                                            "h": order.holder_id}).first()
    assert row is not None
    return _buyer_of_row(order, row)


def _buyer_of_row(order: OffsetOrder, row: Any) -> tuple[Actor, str | None]:
    kind, role, fp_id, fp_name = row[-4:]
    actor = Actor(order.user_id, order.holder_id, kind, role if role is not None else UserRole.TRADER)
    return actor, None if fp_id is None else footprint_ref(fp_id, fp_name)


# The fill's listing, locked (as `_lock_listing` locks it), with what `_buyer_and_footprint` reads.
_LISTING_AND_BUYER = (select(_L.c.id, _L.c.seller_id, *_BUYER_OF_ORDER.selected_columns)
                      .select_from(_L).join(_H, _H.c.id == bindparam("h"))
                      .outerjoin(_U, _U.c.id == bindparam("u")).outerjoin(_F, _F.c.id == bindparam("fp"))
                      .where(_L.c.id == bindparam("l")).with_for_update(of=_L, key_share=True))


def delivered_serials(session: Session, transfer_ids: list[int]) -> list[str]:
    """The serial ranges the given transfers moved: exactly what is to be retired."""
    rows = session.execute(select(Movement.start, Movement.end, Batch).join(Batch, Batch.id == Movement.batch_id)
                           .where(Movement.transfer_id.in_(transfer_ids))
                           .order_by(Movement.batch_id, Movement.start)).all()
    return [batch.serial(start, end) for start, end, batch in rows]


def retire_delivered(session: Session, order: OffsetOrder, transfer_ids: list[int], kg: int) -> None:
    """Retire exactly the serials the given transfers delivered, for the beneficiary (status retired)."""
    buyer, footprint_ref = _buyer_and_footprint(session, order)
    r = units.retire(session, buyer, selection=units.Selection(serials=delivered_serials(session, transfer_ids)),
                     beneficiary=order.beneficiary, jurisdiction=order.jurisdiction, purpose=order.purpose,
                     footprint_ref=footprint_ref, message=order.message)
    _retired(session, order, r, kg)


def _retired(session: Session, order: OffsetOrder, r: Retirement | Retired, kg: int,
             audit_into: list[tuple[Actor | None, str, str, int | str, dict[str, Any]]] | None = None,
             **more: Any) -> None:
    """The order is retired (one UPDATE with `more` columns, e.g. reserved_kg); its audit record is
    written, or appended to `audit_into`."""
    if r.quantity_kg != kg:
        raise Conflict(f"retired {r.quantity_kg} kg, the fill delivered {kg} kg", code="fill_mismatch")
    now = utcnow()
    offset_rows.set_order(session, order, retirement_id=r.id, certificate_number=r.certificate_number,
                          filled_kg=kg, status=OffsetStatus.RETIRED, retired_at=now, updated_at=now,
                          filled_at=order.filled_at or now, **more)
    record = _retired_record(order, r.id, r.certificate_number, kg)
    if audit_into is None:
        audit.record_each(session, [record])
    else:
        audit_into.append(record)


def _retired_record(order: OffsetOrder, retirement_id: int, number: str,
                    kg: int) -> tuple[Actor | None, str, str, int | str, dict[str, Any]]:
    return (None, "offset.retired", "offset_order", order.id, {
        "certificate_number": number, "quantity_kg": kg, "retirement_id": retirement_id,
        "footprint_id": order.footprint_id})


def _fill_from_listing(session: Session, order: OffsetOrder) -> None:
    """Delivery versus payment from the listing, then retirement, all in the caller's transaction,
    in Core statements (`deliver_and_retire`, `wallets.post_locked`) with the three audit records
    in one INSERT. The money moves last: the platform's fee account is one row every fill (and the
    sequencer's settlement) locks, so it is held only from here to the commit."""
    assert order.listing_id is not None
    listing = session.execute(_LISTING_AND_BUYER, {"l": order.listing_id, "u": order.user_id,
                                                   "fp": order.footprint_id, "h": order.holder_id}).first()
    if listing is None:
        raise NotFound(f"no listing {order.listing_id}", field="listing_id")
    buyer, footprint_ref = _buyer_of_row(order, listing)
    records: list[tuple[Actor | None, str, str, int | str, dict[str, Any]]] = []
    r = deliver_and_retire(session, buyer, f"listing:{listing.id}", order.quantity_kg,
                           memo=f"offset order {order.id}", beneficiary=order.beneficiary,
                           jurisdiction=order.jurisdiction, purpose=order.purpose, footprint_ref=footprint_ref,
                           message=order.message, audit_into=records)
    # sets filled_at, the time of delivery and retirement
    _retired(session, order, r, order.quantity_kg, audit_into=records, reserved_kg=0)
    buyer_held, seller_available, fees = _settlement_accounts(session, order.holder_id, listing.seller_id)
    wallets.post_locked(session, JournalKind.SETTLEMENT, [
        (buyer_held, -order.total), (seller_available, order.notional), (fees, order.fee)], ref=order.ref,
        memo=f"offset order {order.id} from listing {listing.id}")
    audit.record_each(session, records)


_C = cast(Table, CashAccount.__table__)
_SETTLEMENT_ACCOUNTS = (
    select(_C.c.id, _C.c.holder_id, _C.c.kind, _C.c.balance).where(_C.c.currency == wallets.CURRENCY, or_(
        and_(_C.c.holder_id == bindparam("buyer"), _C.c.kind == CashAccountKind.HELD),
        and_(_C.c.holder_id == bindparam("seller"), _C.c.kind == CashAccountKind.AVAILABLE),
        and_(_C.c.holder_id.is_(None), _C.c.kind == CashAccountKind.FEES)))
    .order_by(_C.c.id).with_for_update(key_share=True))


def _settlement_accounts(session: Session, buyer_id: int, seller_id: int) -> tuple[Any, Any, Any]:
    """(buyer's held, seller's available, the platform's fees) cash accounts as rows (id, holder_id,
    kind, balance), locked in id order with one statement (as `wallets.post` would lock them)."""
    a, b, c = _locked_accounts(session, _SETTLEMENT_ACCOUNTS, buyer_id, seller_id, [
        (buyer_id, CashAccountKind.HELD), (seller_id, CashAccountKind.AVAILABLE), (None, CashAccountKind.FEES)])
    return a, b, c


# What an order placed at once pays and settles with: the buyer's available and held, the seller's
# available and the platform's fees, locked together in id order.
_PLACE_ACCOUNTS = (
    select(_C.c.id, _C.c.holder_id, _C.c.kind, _C.c.balance).where(_C.c.currency == wallets.CURRENCY, or_(
        and_(_C.c.holder_id == bindparam("buyer"), _C.c.kind == CashAccountKind.AVAILABLE),
        and_(_C.c.holder_id == bindparam("buyer"), _C.c.kind == CashAccountKind.HELD),
        and_(_C.c.holder_id == bindparam("seller"), _C.c.kind == CashAccountKind.AVAILABLE),
        and_(_C.c.holder_id.is_(None), _C.c.kind == CashAccountKind.FEES)))
    .order_by(_C.c.id).with_for_update(key_share=True))


def _locked_accounts(session: Session, stmt: Any, buyer_id: int, seller_id: int,
                     want: list[tuple[int | None, CashAccountKind]]) -> list[Any]:
    """The accounts `want` (holder, kind) that `stmt` locks, as rows in the order asked; a wallet
    not opened yet (the seller's, or a buyer's without money) is opened first."""
    params = {"buyer": buyer_id, "seller": seller_id}
    found = {(a.holder_id, a.kind): a for a in session.execute(stmt, params)}
    if len(found) < len(want):   # open what is missing, then lock them all
        for holder_id in sorted({h for h, _ in want if h is not None}):
            wallets.holder_accounts(session, holder_id)
        wallets.system_account(session, CashAccountKind.FEES)
        session.flush()
        found = {(a.holder_id, a.kind): a for a in session.execute(stmt, params)}
    return [found[k] for k in want]


def fulfil(session: Session, order_id: int) -> OffsetOrder:
    """Fill a paid order and retire what it bought (listing: at once; exchange: the IOC buy is
    placed, and `exchange.offset_fill.progress` finishes it once the engine answered). Does nothing
    to an order in another state, so running it twice retires nothing twice. A fill that cannot
    complete refunds the money, and the order says why. The caller commits."""
    order = _lock(session, order_id)
    if order.status is not OffsetStatus.PAID and not (order.source == "exchange"
                                                      and order.status is OffsetStatus.FILLED):
        return order
    if order.source == "exchange":
        from exchange import offset_fill
        return offset_fill.fulfil_on_exchange(session, order)
    try:
        with session.begin_nested():
            _fill_from_listing(session, order)
    except RegistryError as e:
        session.refresh(order)
        refund(session, order, f"the fill could not complete: {e.message}")
    return order


@dataclass(frozen=True, slots=True)
class Placed:
    """An order placed at once (`place`), and what its certificate says if it retired now."""

    order: OffsetOrder
    retired: RetirementFacts | None = None

    def certificate_body(self, base_url: str, registry_name: str = certificates.REGISTRY_NAME) -> dict[str, Any]:
        """The certificate's signed fields, as `certificates.certificate_body` reads them from the
        database, byte for byte in canonical JSON, without a query. Raises Conflict if the order
        did not retire now (refunded, or on the order book: read it from the database then)."""
        if self.retired is None:
            raise Conflict(f"offset order {self.order.id} is {self.order.status.value}, not retired at placement",
                           field="order_id", code="wrong_status")
        return certificates.body_of(self.retired, base_url, registry_name)


def place_offset(session: Session, actor: Actor, **kwargs: Any) -> OffsetOrder:
    """`place`, returning the order only."""
    return place(session, actor, **kwargs).order


def place(session: Session, actor: Actor, *, beneficiary: str, quantity_kg: int | None = None,
          footprint_id: int | None = None, message: str | None = None, jurisdiction: str | None = None,
          preference: Mapping[str, Any] | None = None, payment: str = "wallet",
          ttl: dt.timedelta = QUOTE_TTL) -> Placed:
    """Quote, pay from the wallet, fill and retire at once (an order placed and completed in one
    request): what `create_offset`, `confirm_offset` and `fulfil` do in three transactions, in the
    caller's one, with the same rows and audit records (offset.quoted, offset.paid, units.delivered,
    units.retired, offset.retired). The order ends retired with its certificate number, or refunded
    with the reason if the fill could not complete (as `fulfil` refunds it). From the order book the
    IOC buy is placed, and `fulfil` finishes the order once the engine answered. Returns the order
    and, if it retired, what its certificate says (`Placed.certificate_body`: no query needed).

    Raises what `create_offset` raises, InvalidInput (field confirm) for a card payment, and what
    `confirm_offset` raises when the wallet cannot pay (InsufficientFunds, field payment): the quote
    is written by then, so the caller must roll back.

    From a listing the order, the listing and the cash accounts are each locked once: the listing
    by the quote's reservation, the order is the one inserted (once, in its end state: retired,
    when the retirement is written; paid, then refunded, if the fill is refused), and the four cash
    accounts (the buyer's available and held, the seller's, the fees) in id order after the
    delivery, as the fill locks them; so the money moves last and the fees account is held only
    from there to the commit."""
    actor.require_can_move_units()
    if payment == "card":
        raise InvalidInput("confirm pays from the wallet at once; a card payment is quoted without it, then confirmed",
                           field="confirm", code="confirm_needs_wallet")
    quote = _quote(session, actor, beneficiary=beneficiary, quantity_kg=quantity_kg, footprint_id=footprint_id,
                   message=message, jurisdiction=jurisdiction, preference=preference, payment=payment, ttl=ttl,
                   to_fill=True)
    listing, row = quote.listing, quote.row or {}
    if listing is None:
        order = quote.order
        assert order is not None
        audit.record_each(session, [_quoted_record(order, actor)])
        confirm_offset(session, actor, order.id)
        return Placed(fulfil(session, order.id))
    filled: list[tuple[Actor | None, str, str, int | str, dict[str, Any]]] = []
    written: list[OffsetOrder] = []

    def insert_retired(retirement_id: int, number: str) -> str:
        # The order is written once, in its end state: its row refers to the retirement just written,
        # and the transfer written next names the order.
        now = utcnow()
        written.append(offset_rows.insert_order(session, row | dict(
            status=OffsetStatus.RETIRED, reserved_kg=0, paid_amount=row["total"], paid_at=now,
            filled_kg=row["quantity_kg"], filled_at=now, retired_at=now, retirement_id=retirement_id,
            certificate_number=number, updated_at=now)))
        return f"offset order {written[0].id}"

    failed: RegistryError | None = None
    try:
        # No savepoint: `deliver_and_retire` raises each refusal before its first write (pinned by
        # tests/offsets/test_delivered_retirement.py), so a refused fill leaves nothing to undo; any
        # other error aborts the caller's whole transaction and nothing of the order is placed.
        r = deliver_and_retire(session, actor, f"listing:{listing.id}", row["quantity_kg"], memo=insert_retired,
                               beneficiary=row["beneficiary"], jurisdiction=row["jurisdiction"],
                               purpose=row["purpose"], footprint_ref=quote.footprint_ref, message=row["message"],
                               audit_into=filled, accounts=quote.accounts)
        order = written[0]
        filled.append(_retired_record(order, r.id, r.certificate_number, r.quantity_kg))
    except RegistryError as e:
        if written:   # never: it refuses before its first write
            raise
        failed, now = e, utcnow()
        order = offset_rows.insert_order(session, row | dict(status=OffsetStatus.PAID, paid_amount=row["total"],
                                                             paid_at=now, updated_at=now))
    records = [_quoted_record(order, actor), _paid_record(order, order.total, actor)]
    available, held, seller, fees = _locked_accounts(session, _PLACE_ACCOUNTS, order.holder_id, listing.seller_id, [
        (order.holder_id, CashAccountKind.AVAILABLE), (order.holder_id, CashAccountKind.HELD),
        (listing.seller_id, CashAccountKind.AVAILABLE), (None, CashAccountKind.FEES)])
    journals = [wallets.LockedJournal(JournalKind.HOLD, [(available, -order.total), (held, order.total)],
                                      ref=order.ref, user_id=actor.user_id)]
    if failed is None:
        journals.append(wallets.LockedJournal(
            JournalKind.SETTLEMENT, [(held, -order.total), (seller, order.notional), (fees, order.fee)],
            ref=order.ref, memo=f"offset order {order.id} from listing {listing.id}"))
    try:
        wallets.post_locked_many(session, journals)
    except RegistryError as e:
        raise _wallet_refused(order, e) from None
    if failed is not None:
        audit.record_each(session, records)
        return Placed(refund(session, order, f"the fill could not complete: {failed.message}"))
    audit.record_each(session, records + filled)
    return Placed(order, r.facts)


def resume_paid(session_factory: Callable[[], Session], limit: int = 500, *,
                failures: dict[int, str] | None = None) -> list[int]:
    """Finish every paid order not yet retired (after a crash between payment and retirement, or
    an exchange fill the engine has answered). Each in its own transaction: one that fails is
    rolled back, its failure recorded (`_resume_failed`; into `failures` too, order id → why) and
    the others go on. Returns the order ids that changed state."""
    with session_factory() as s:
        ids = list(s.scalars(select(OffsetOrder.id).where(
            OffsetOrder.status.in_([OffsetStatus.PAID, OffsetStatus.FILLED])).order_by(OffsetOrder.id).limit(limit)))
    done = []
    for oid in ids:
        try:
            with session_factory() as s, s.begin():
                before = s.scalar(select(OffsetOrder.status).where(OffsetOrder.id == oid))
                order = fulfil(s, oid)
                after = order.status
                if after is not before:
                    order.resume_error = None
        except Exception as err:   # noqa: BLE001 - one order's failure must not stop the others
            log.warning("offset order %s could not be resumed", oid, exc_info=True)
            try:
                why = _resume_failed(session_factory, oid, err)
            except Exception:   # noqa: BLE001 - e.g. the database is gone; the next run tries again
                log.exception("the resume failure of offset order %s could not be recorded", oid)
                why = f"{type(err).__name__}: {err}"[:1000]
            if failures is not None:
                failures[oid] = why
            continue
        if after is not before:
            done.append(oid)
    return done


def _resume_failed(session_factory: Callable[[], Session], order_id: int, err: Exception) -> str:
    """Record why resuming the order failed (`resume_error`, `resume_attempts`, an audit record) in a
    transaction of its own. A failure that cannot go away by trying again (a domain error, not the
    payment provider's 5xx) or the MAX_RESUME_ATTEMPTS-th failure gives up: a paid order that has not
    bought anything is refunded with the reason (wallet, or to the card); one whose buy was placed
    keeps what it bought and stays for an operator. Returns the reason."""
    why = (f"{err.code}: {err.message}" if isinstance(err, RegistryError) else f"{type(err).__name__}: {err}")[:1000]
    with session_factory() as s, s.begin():
        order = _lock(s, order_id)
        order.resume_attempts += 1
        order.resume_error = why
        give_up = (isinstance(err, RegistryError) and err.status < 500) or order.resume_attempts >= MAX_RESUME_ATTEMPTS
        refundable = give_up and order.status is OffsetStatus.PAID and order.exchange_order_id is None
        audit.record(s, None, "offset.resume_failed", "offset_order", order.id,
                     {"attempt": order.resume_attempts, "error": why, "refund": refundable})
        if refundable:
            try:
                with s.begin_nested():
                    refund(s, order, f"the order could not be completed: {why}")
            except Exception as again:   # noqa: BLE001 - the money stays held; the next run tries again
                order = _lock(s, order_id)
                order.resume_error = f"{why}; the refund failed too: {again}"[:2000]
                audit.record(s, None, "offset.refund_failed", "offset_order", order.id,
                             {"error": order.resume_error})
    return why


# ---- checks -----------------------------------------------------------------------------------


def check(session: Session) -> list[str]:
    """Offsetting invariants; an empty list means they hold.
    1. every listing's LISTED blocks add up to its available kg plus its live reservations;
    2. a retired order has its retirement of exactly its filled kg and a settlement;
    3. a refunded order gave back everything it was paid (a refund_failed one has not); an order in
       draft or awaiting payment holds no money; a cancelled one holds none either."""
    problems: list[str] = []
    listed = dict(session.execute(select(Block.hold_ref, func.sum(Block.quantity)).where(
        Block.status == BlockStatus.LISTED, Block.hold_ref.like("listing:%")).group_by(Block.hold_ref)).tuples().all())
    reserved = dict(session.execute(select(OffsetOrder.listing_id, func.sum(OffsetOrder.reserved_kg)).where(
        OffsetOrder.listing_id.is_not(None)).group_by(OffsetOrder.listing_id)).tuples().all())
    for listing in session.scalars(select(OffsetListing)):
        have = int(listed.get(listing.ref) or 0)
        want = listing.available_kg + int(reserved.get(listing.id) or 0)
        if have != want:
            problems.append(f"listing {listing.id}: {have} kg listed, but available + reserved is {want} kg")
    for o in session.scalars(select(OffsetOrder)):
        if o.status is OffsetStatus.RETIRED:
            r = session.get(Retirement, o.retirement_id) if o.retirement_id else None
            if r is None or r.quantity_kg != o.filled_kg or o.filled_kg <= 0:
                problems.append(f"offset order {o.id} is retired without a retirement of its {o.filled_kg} kg")
            if o.paid_amount <= 0:
                problems.append(f"offset order {o.id} is retired but was never paid")
        if o.status in (OffsetStatus.REFUNDED, OffsetStatus.CANCELLED) and o.refunded_amount != o.paid_amount:
            problems.append(f"offset order {o.id} is {o.status.value}: paid {o.paid_amount}, "
                            f"refunded {o.refunded_amount}")
        if o.status is OffsetStatus.REFUND_FAILED and o.refunded_amount >= o.paid_amount:
            problems.append(f"offset order {o.id} is refund_failed but counts all it was paid as refunded")
        if o.status in (OffsetStatus.DRAFT, OffsetStatus.AWAITING_PAYMENT) and o.paid_amount:
            problems.append(f"offset order {o.id} is {o.status.value} but holds {o.paid_amount}")
        if not o.status.is_final and o.status is not OffsetStatus.FILLED and o.source == "listing" \
                and o.reserved_kg != o.quantity_kg:
            problems.append(f"offset order {o.id} is {o.status.value} with {o.reserved_kg} of {o.quantity_kg} kg reserved")
        if o.status.is_final and o.reserved_kg:
            problems.append(f"offset order {o.id} is {o.status.value} but still reserves {o.reserved_kg} kg")
    return problems
