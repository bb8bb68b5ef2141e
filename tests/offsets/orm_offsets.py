"""The ORM implementations of the wallet-paid offset path as they were before it moved to Core
statements (exchange.offsets at a1059f0): the reference that tests/offsets/test_offset_core.py pins
the Core path to. Verbatim but for the names of the helpers they share with the live module."""

# ruff: noqa
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, joinedload

from exchange import wallets
from exchange.instruments import get_instrument
from exchange.models import CashAccount, CashAccountKind, Instrument, InstrumentKind, JournalKind
from exchange.offset_models import Footprint, ListingStatus, OffsetListing, OffsetOrder, OffsetStatus
from exchange.offsets import (CARD_PAYMENT_TTL, QUOTE_TTL, PAYMENTS, Preference, _PURPOSE, _buyer_and_footprint,
                              _expired, _int, _lock_listing, covered_kg, get_offset as _get_offset)
from exchange.pricing import fee as fee_of
from exchange.pricing import notional as notional_of
from registry import audit
from registry.actors import Actor
from registry.certificates import REGISTRY_NAME, SCHEMA, iso_utc, public_key_url, verification_url
from registry.db import utcnow
from registry.delivered_retirement import Retired, deliver_and_retire
from registry.errors import Conflict, InsufficientUnits, InvalidInput, NotFound, RegistryError
from registry.models import Batch, Block, Holder, HolderKind, Methodology, Project, ProjectKind, Retirement, RetirementPurpose


def get_offset(session: Session, actor: Actor, order_id: int, *, lock: bool = False) -> OffsetOrder:
    order = _lock(session, order_id) if lock else session.get(OffsetOrder, order_id)
    if order is None or (order.holder_id != actor.holder_id and not actor.is_operator):
        raise NotFound(f"no offset order {order_id}", field="order_id")
    return order


def _instrument_conditions(inst: Instrument) -> list[Any]:
    """Listings whose project and vintage could be delivered into `inst`."""
    if inst.kind is InstrumentKind.PROJECT:
        return [OffsetListing.project_id == inst.project_id, OffsetListing.vintage == inst.vintage_from]
    conds: list[Any] = [OffsetListing.vintage >= inst.vintage_from, OffsetListing.vintage <= inst.vintage_to]
    if inst.project_kind:
        conds.append(Project.kind == inst.project_kind)
    if inst.sector:
        conds.append(Methodology.sector == inst.sector)
    return conds


def _pick_listing(session: Session, holder_id: int, qty: int, pref: Preference) -> OffsetListing:
    """The cheapest active listing with `qty` available that matches the preference, locked."""
    stmt = (select(OffsetListing).join(Project, Project.id == OffsetListing.project_id)
            .join(Methodology, Methodology.id == Project.methodology_id)
            .where(OffsetListing.status == ListingStatus.ACTIVE.value, OffsetListing.available_kg >= qty,
                   OffsetListing.seller_id != holder_id, Project.suspended.is_(False))
            .order_by(OffsetListing.price, OffsetListing.id).limit(1)
            .with_for_update(of=OffsetListing).execution_options(populate_existing=True))
    if pref.vintage is not None:
        stmt = stmt.where(OffsetListing.vintage == pref.vintage)
    if pref.project_type:
        kinds = {k.value for k in ProjectKind}
        stmt = stmt.where(Project.kind == pref.project_type if pref.project_type in kinds
                          else Methodology.sector == pref.project_type)
    if pref.instrument:
        stmt = stmt.where(*_instrument_conditions(get_instrument(session, pref.instrument)))
    # PostgreSQL re-checks a row it waited for and drops it if a concurrent quote took its supply;
    # with LIMIT 1 the statement then returns nothing even if another listing would do. A fresh
    # statement sees the committed state: try again before saying there is no supply.
    for _ in range(3):
        listing = session.scalar(stmt)
        if listing is not None:
            break
    if listing is None:
        raise InsufficientUnits(f"no listing matching the preference has {qty} kg available", field="quantity_kg",
                                code="no_supply")
    return listing


def _purpose(session: Session, holder_id: int, footprint: Footprint | None) -> RetirementPurpose:
    if footprint is not None:
        return _PURPOSE[footprint.kind]
    holder = session.get(Holder, holder_id)
    assert holder is not None
    return {HolderKind.INDIVIDUAL: RetirementPurpose.PERSONAL,
            HolderKind.EVENT_ORGANISER: RetirementPurpose.EVENT_OFFSET}.get(holder.kind,
                                                                             RetirementPurpose.ORGANISATIONAL)


def _jurisdiction(session: Session, holder_id: int, given: str | None) -> str:
    if given is not None:
        if not given.strip():
            raise InvalidInput("jurisdiction must not be blank", field="jurisdiction")
        return given.strip()
    holder = session.get(Holder, holder_id)
    assert holder is not None
    return holder.city or holder.province or "中国"


def create_offset(session: Session, actor: Actor, *, beneficiary: str, quantity_kg: int | None = None,
                  footprint_id: int | None = None, message: str | None = None, jurisdiction: str | None = None,
                  preference: Mapping[str, Any] | None = None, payment: str = "wallet",
                  ttl: dt.timedelta = QUOTE_TTL) -> OffsetOrder:
    """Quote an offset (status draft): `quantity_kg`, or a footprint's uncovered part (or part of
    it, when both are given). A listing quote
    reserves the quantity until `expires_at`. Raises InvalidInput, NotFound (footprint, instrument),
    Conflict (footprint already covered), InsufficientUnits (no supply: field quantity_kg)."""
    actor.require_can_move_units()
    if payment not in PAYMENTS:
        raise InvalidInput("payment must be wallet or card", field="payment")
    if not isinstance(beneficiary, str) or not beneficiary.strip():
        raise InvalidInput("beneficiary is required", field="beneficiary")
    if quantity_kg is None and footprint_id is None:
        raise InvalidInput("give quantity_kg or footprint_id (or both: part of a footprint)", field="quantity_kg")
    pref = Preference.parse(preference)
    footprint = None
    if footprint_id is not None:
        footprint = session.get(Footprint, footprint_id)
        if footprint is None or footprint.holder_id != actor.holder_id:
            raise NotFound(f"no footprint {footprint_id}", field="footprint_id")
        retired, live = covered_kg(session, footprint.id)
        uncovered = footprint.total_kg - retired - live
        if uncovered <= 0:
            raise Conflict(f"footprint {footprint.id} is already covered by retired or pending offsets",
                           field="footprint_id", code="already_covered")
        if quantity_kg is None:
            quantity_kg = uncovered
        elif isinstance(quantity_kg, int) and quantity_kg > uncovered:
            raise Conflict(f"only {uncovered} kg of footprint {footprint.id} is not yet covered",
                           field="quantity_kg", code="more_than_footprint")
    qty = _int(quantity_kg, "quantity_kg")
    now = utcnow()
    order = OffsetOrder(holder_id=actor.holder_id, user_id=actor.user_id, footprint_id=footprint_id,
                        quantity_kg=qty, beneficiary=beneficiary.strip(), message=message,
                        jurisdiction=_jurisdiction(session, actor.holder_id, jurisdiction),
                        purpose=_purpose(session, actor.holder_id, footprint).value, preference=pref.as_dict(),
                        payment=payment, source=pref.source, expires_at=now + ttl, status=OffsetStatus.DRAFT,
                        paid_amount=0, refunded_amount=0, filled_kg=0, created_at=now, updated_at=now)
    if pref.source == "listing":
        listing = _pick_listing(session, actor.holder_id, qty, pref)
        listing.available_kg -= qty
        order.listing_id, order.reserved_kg, order.price = listing.id, qty, listing.price
        order.notional = notional_of(listing.price, qty)
        order.fee = fee_of(order.notional, listing.fee_bp)
    else:
        from exchange.offset_fill import quote_on_book
        inst, price, notional, fee = quote_on_book(session, pref.instrument or "", qty)
        order.instrument_id, order.reserved_kg, order.price, order.notional, order.fee = inst.id, 0, price, notional, fee
    order.total = order.notional + order.fee
    session.add(order)
    session.flush()
    # record_many: one COPY now rather than an ORM object flushed with the order (every quote)
    audit.record_many(session, [("offset.quoted", "offset_order", order.id, {
        "quantity_kg": qty, "footprint_id": footprint_id, "source": order.source,
        "listing_id": order.listing_id, "instrument_id": order.instrument_id, "price": order.price,
        "notional": order.notional, "fee": order.fee, "total": order.total, "payment": payment,
        "beneficiary": order.beneficiary, "expires_at": order.expires_at.isoformat()})], actor=actor)
    return order


def _lock(session: Session, order_id: int) -> OffsetOrder:
    order = session.get(OffsetOrder, order_id, with_for_update={"key_share": True}, populate_existing=True)
    if order is None:
        raise NotFound(f"no offset order {order_id}", field="order_id")
    return order


def confirm_offset(session: Session, actor: Actor, order_id: int) -> OffsetOrder:
    """Accept the quote. Wallet: the total is held from the buyer's available cash now (status paid;
    InsufficientFunds, field payment, leaves the quote as it was). Card: awaiting_payment until the
    card-payment module calls `mark_paid`. Raises Conflict if the quote expired or was used."""
    actor.require_can_move_units()
    order = get_offset(session, actor, order_id, lock=True)
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
        wallets.hold(session, order.holder_id, order.total, ref=order.ref, user_id=actor.user_id)
    except RegistryError as e:
        raise type(e)(f"the wallet cannot pay {order.total}: {e.message}", field="payment", code=e.code) from None
    _paid(session, order, order.total, actor, now)
    return order


def _paid(session: Session, order: OffsetOrder, amount: int, actor: Actor | None, now: dt.datetime) -> None:
    order.status, order.paid_amount, order.paid_at, order.updated_at = OffsetStatus.PAID, amount, now, now
    audit.record_many(session, [("offset.paid", "offset_order", order.id,
                                 {"payment": order.payment, "amount": amount, "payment_ref": order.payment_ref})],
                      actor=actor)


def _retired(session: Session, order: OffsetOrder, r: Retirement | Retired, kg: int) -> None:
    if r.quantity_kg != kg:
        raise Conflict(f"retired {r.quantity_kg} kg, the fill delivered {kg} kg", code="fill_mismatch")
    now = utcnow()
    order.retirement_id, order.certificate_number = r.id, r.certificate_number
    order.filled_kg, order.status, order.retired_at, order.updated_at = kg, OffsetStatus.RETIRED, now, now
    order.filled_at = order.filled_at or now
    audit.record_many(session, [("offset.retired", "offset_order", order.id, {
        "certificate_number": r.certificate_number, "quantity_kg": kg, "retirement_id": r.id,
        "footprint_id": order.footprint_id})])


def _fill_from_listing(session: Session, order: OffsetOrder) -> None:
    """Delivery versus payment from the listing, then retirement, all in the caller's transaction.
    The money moves last: the platform's fee account is one row every fill (and the sequencer's
    settlement) locks, so it is held only from here to the commit."""
    assert order.listing_id is not None
    listing = _lock_listing(session, order.listing_id)
    buyer, footprint_ref = _buyer_and_footprint(session, order)
    r = deliver_and_retire(session, buyer, listing.ref, order.quantity_kg, memo=f"offset order {order.id}",
                           beneficiary=order.beneficiary, jurisdiction=order.jurisdiction, purpose=order.purpose,
                           footprint_ref=footprint_ref, message=order.message)
    _retired(session, order, r, order.quantity_kg)   # sets filled_at, the time of delivery and retirement
    order.reserved_kg = 0
    buyer_held, seller_available, fees = _settlement_accounts(session, order.holder_id, listing.seller_id)
    wallets.post(session, JournalKind.SETTLEMENT, [
        (buyer_held, -order.total), (seller_available, order.notional), (fees, order.fee)], ref=order.ref,
        memo=f"offset order {order.id} from listing {listing.id}", already_locked=True)


def _settlement_accounts(session: Session, buyer_id: int, seller_id: int) -> tuple[CashAccount, CashAccount,
                                                                                  CashAccount]:
    """(buyer's held, seller's available, the platform's fees) cash accounts, locked in id order
    with one statement (as `wallets.post` would lock them), fresh from the database."""
    want = [(buyer_id, CashAccountKind.HELD), (seller_id, CashAccountKind.AVAILABLE), (None, CashAccountKind.FEES)]
    stmt = (select(CashAccount).where(CashAccount.currency == wallets.CURRENCY, or_(
        and_(CashAccount.holder_id == buyer_id, CashAccount.kind == CashAccountKind.HELD),
        and_(CashAccount.holder_id == seller_id, CashAccount.kind == CashAccountKind.AVAILABLE),
        and_(CashAccount.holder_id.is_(None), CashAccount.kind == CashAccountKind.FEES)))
        .order_by(CashAccount.id).with_for_update(key_share=True).execution_options(populate_existing=True))
    found = {(a.holder_id, a.kind): a for a in session.scalars(stmt)}
    if len(found) < len(want):   # a seller without a wallet yet: open it, then lock all three
        wallets.holder_accounts(session, seller_id)
        wallets.system_account(session, CashAccountKind.FEES)
        found = {(a.holder_id, a.kind): a for a in session.scalars(stmt)}
    a, b, c = (found[k] for k in want)
    return a, b, c


def _ranges(blocks: list[Block]) -> list[dict[str, Any]]:
    """The retired serial ranges, sorted by (project, batch number, start), with contiguous pieces of
    one batch merged so the certificate does not depend on how the blocks were split before."""
    ordered = sorted(blocks, key=lambda b: (b.batch.project_id, b.batch.number, b.start))
    merged: list[tuple[Block, int, int]] = []
    for b in ordered:
        if merged and merged[-1][0].batch_id == b.batch_id and merged[-1][2] + 1 == b.start:
            first, start, _ = merged[-1]
            merged[-1] = (first, start, b.end)
        else:
            merged.append((b, b.start, b.end))
    out = []
    for b, start, end in merged:
        batch, project, m = b.batch, b.batch.project, b.batch.methodology
        out.append({
            "serial": batch.serial(start, end),
            "project": {"id": project.id, "code": project.code, "title": project.title,
                        "title_en": project.title_en, "city": project.city},
            "vintage": batch.vintage,
            "methodology": {"code": m.code, "version": m.version, "title_zh": m.title_zh,
                            "title_en": m.title_en},
            "quantity_kg": int(end - start + 1),
        })
    return out


def certificate_body(session: Session, retirement: Retirement, base_url: str,
                     registry_name: str = REGISTRY_NAME) -> dict[str, Any]:
    """The signed fields of a retirement's certificate: deterministic for a given retirement.

    Quantities are integer kg; the time is ISO-8601 UTC with a "Z"; the serial ranges are sorted.
    """
    batch = joinedload(Block.batch)   # one query for the blocks with their batches, projects and methodologies
    blocks = list(session.scalars(select(Block).where(Block.retirement_id == retirement.id)
                                  .options(batch.joinedload(Batch.project), batch.joinedload(Batch.methodology))
                                  .order_by(Block.batch_id, Block.start)))
    return {
        "schema": SCHEMA,
        "registry": registry_name,
        "certificate_number": retirement.certificate_number,
        "beneficiary": retirement.beneficiary,
        "jurisdiction": retirement.jurisdiction,
        "purpose": retirement.purpose.value,
        "message": retirement.message,
        "footprint_ref": retirement.footprint_ref,
        "quantity_kg": int(retirement.quantity_kg),
        "retired_at": iso_utc(retirement.retired_at),
        "retired_by": {"holder_id": retirement.holder.id, "name": retirement.holder.name},
        "serials": _ranges(blocks),
        "verification_url": verification_url(base_url, retirement.certificate_number),
        "public_key_url": public_key_url(base_url),
    }


def fulfil(session: Session, order_id: int) -> OffsetOrder:
    """`offsets.fulfil` of a listing order, on the reference fill."""
    from exchange.offsets import refund
    order = _lock(session, order_id)
    if order.status is not OffsetStatus.PAID:
        return order
    try:
        with session.begin_nested():
            _fill_from_listing(session, order)
    except RegistryError as e:
        session.refresh(order)
        refund(session, order, f"the fill could not complete: {e.message}")
    return order
