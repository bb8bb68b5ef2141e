"""API v1 of offsetting: footprints, fixed-price listings, offset orders and neutrality statements."""

from __future__ import annotations

import time
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from exchange import footprints, neutrality, offset_payments, offsets, wallets
from exchange.models import Instrument, Order
from exchange.offset_models import OffsetOrder, OffsetStatus
from registry.actors import Actor
from registry.errors import InvalidInput
from web.api import offset_schemas as o
from web.api.blueprint import bp
from web.api.core import AfterCommit, endpoint, paginate
from web.api.payment_routes import payment_view, stripe_gateway
from web.extensions import db

# ---- footprints -------------------------------------------------------------------------------


@endpoint(bp, "/footprints", "POST", summary="Calculate and keep a footprint (event, organisation, personal)",
          tags=("offsets",), auth=True, body=o.FootprintCreate, response=o.FootprintOut, status=201)
def create_footprint(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    try:
        fp = footprints.create_footprint(session, actor, body["kind"], body["inputs"],
                                         reductions=body.get("reductions"))
    except InvalidInput as e:
        field = e.field if e.field in ("kind", "reductions") else f"inputs.{e.field}" if e.field else "inputs"
        raise InvalidInput(e.message, field=field, code=e.code) from None
    return footprints.as_dict(fp)


@endpoint(bp, "/footprints", summary="My footprints, newest first", tags=("offsets",), auth=True,
          response=o.FootprintOut, many=True)
def list_footprints(session: Session, actor: Actor) -> Any:
    return [footprints.as_dict(fp) for fp in footprints.footprints_of(session, actor.holder_id)]


@endpoint(bp, "/footprints/<int:footprint_id>", summary="One of my footprints, line by line", tags=("offsets",),
          auth=True, response=o.FootprintOut)
def get_footprint(session: Session, actor: Actor, footprint_id: int) -> Any:
    return footprints.as_dict(footprints.get_footprint(session, actor, footprint_id))


@endpoint(bp, "/footprints/<int:footprint_id>/reductions", "POST",
          summary="Record the reductions made before offsetting (organiser's notes)", tags=("offsets",),
          auth=True, body=o.ReductionsIn, response=o.FootprintOut)
def set_reductions(session: Session, actor: Actor, footprint_id: int, *, body: dict[str, Any]) -> Any:
    return footprints.as_dict(footprints.set_reductions(session, actor, footprint_id, body["reductions"]))


# ---- fixed-price listings ---------------------------------------------------------------------


@endpoint(bp, "/offset-listings", "POST", summary="List held blocks of one project and vintage at a fixed price",
          tags=("offsets",), auth=True, body=o.ListingCreate, response=o.ListingOut, status=201)
def create_listing(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    return offsets.create_listing(session, actor, **body)


@endpoint(bp, "/offset-listings", summary="Active fixed-price listings, cheapest first", tags=("offsets",),
          response=o.ListingOut, many=True)
def list_listings(session: Session, actor: Actor | None) -> Any:
    return offsets.listings(session)


@endpoint(bp, "/offset-listings/<int:listing_id>/close", "POST", summary="Withdraw what a listing has not sold",
          tags=("offsets",), auth=True, response=o.ListingOut)
def close_listing(session: Session, actor: Actor, listing_id: int) -> Any:
    return offsets.close_listing(session, actor, listing_id)


# ---- offset orders ----------------------------------------------------------------------------


def offset_view(session: Session, order: OffsetOrder, actor: Actor | None = None) -> dict[str, Any]:
    inst = session.get(Instrument, order.instrument_id) if order.instrument_id else None
    out = {c: getattr(order, c) for c in (
        "id", "reason", "quantity_kg", "footprint_id", "beneficiary", "message", "jurisdiction", "purpose",
        "preference", "payment", "source", "listing_id", "expires_at", "paid_amount", "refunded_amount",
        "filled_kg", "exchange_order_id", "certificate_number", "created_at", "paid_at", "filled_at",
        "retired_at", "resume_attempts", "resume_error")}
    out["status"] = order.status.value
    out["instrument"] = inst.symbol if inst else None
    out["quote"] = {"price_per_t": order.price, "notional": order.notional, "fee": order.fee, "total": order.total,
                    "currency": wallets.CURRENCY,
                    "fee_note": "the most the fee can be (unused is refunded)" if order.source == "exchange" else
                    "platform fee"}
    no = order.certificate_number
    out["certificate"] = None if no is None else {
        "number": no, "json": f"/api/v1/retirements/{no}/certificate.json",
        "pdf": f"/api/v1/retirements/{no}/certificate.pdf", "page": f"/retirements/{no}"}
    out["card_payment"] = card_payment_view(session, order, actor) if order.payment == "card" and actor else None
    return out


def card_payment_view(session: Session, order: OffsetOrder, actor: Actor) -> dict[str, Any] | None:
    """The order's card payment as /payments/{id} shows it (the payer gets the client_secret and the
    publishable key while it can still be paid), or None before the order is confirmed."""
    p = offset_payments.payment_of(session, order)
    return None if p is None else payment_view(p, actor)


def _fresh(session: Session, order_id: int) -> None:
    """Lazily expire a quote whose time ran out, in its own transaction, before it is shown."""
    if offsets.expire_if_due(session, order_id):
        session.commit()
    else:
        session.rollback()


@endpoint(bp, "/offsets", "POST", summary="Quote an offset (draft): price, fee and total, supply held briefly; "
          "with confirm: true, pay from the wallet, fill and retire it at once",
          tags=("offsets",), auth=True, body=o.OffsetCreate, response=o.OffsetOut, status=201)
def create_offset(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    if not body.pop("confirm"):
        return offset_view(session, offsets.create_offset(session, actor, **body), actor)
    order = offsets.place_offset(session, actor, **body)
    if order.source != "exchange" or order.status is not OffsetStatus.PAID:
        return offset_view(session, order, actor)
    order_id = order.id

    def bought() -> Any:   # the IOC buy is committed: give the engine a bounded time, as confirm does
        s = db.session
        _await_engine(s, order_id)
        return offset_view(s, offsets.get_offset(s, actor, order_id), actor)
    return AfterCommit(bought)


@endpoint(bp, "/offsets/<int:order_id>/confirm", "POST",
          summary="Accept the quote and pay (wallet: paid, filled and retired at once; card: awaiting payment, "
          "with the PaymentIntent's client_secret for Stripe.js in card_payment)",
          tags=("offsets",), auth=True, response=o.OffsetOut)
def confirm_offset(session: Session, actor: Actor, order_id: int) -> Any:
    if offsets.get_offset(session, actor, order_id).payment == "card":
        order, _ = offset_payments.confirm_by_card(session, actor, order_id, gateway=stripe_gateway())
        return offset_view(session, order, actor)
    order = offsets.confirm_offset(session, actor, order_id)
    if order.status is not OffsetStatus.PAID:
        return offset_view(session, order)

    def fill() -> Any:
        # The payment is committed; the fill is its own transaction (resume_paid finishes it after a crash).
        s = db.session
        done = offsets.fulfil(s, order_id)
        s.commit()
        if done.source == "exchange" and done.status is OffsetStatus.PAID:
            _await_engine(s, order_id)
        return offset_view(s, offsets.get_offset(s, actor, order_id), actor)
    return AfterCommit(fill)


def _await_engine(session: Session, order_id: int) -> None:
    """Wake the embedded sequencer and give the IOC buy a bounded time before answering."""
    seq = current_app.extensions.get("sequencer")
    if seq is not None:
        seq.wake()
    deadline = time.monotonic() + float(current_app.config.get("ORDER_WAIT_S", 2.0))
    while time.monotonic() < deadline:
        status = session.scalar(select(Order.status).join(OffsetOrder, OffsetOrder.exchange_order_id == Order.id)
                                .where(OffsetOrder.id == order_id))
        session.rollback()
        if status is not None and status.is_final:
            offsets.fulfil(session, order_id)
            session.commit()
            return
        time.sleep(0.01)


@endpoint(bp, "/offsets/<int:order_id>/cancel", "POST", summary="Cancel a quote before paying",
          tags=("offsets",), auth=True, body=o.CancelIn, response=o.OffsetOut)
def cancel_offset(session: Session, actor: Actor, order_id: int, *, body: dict[str, Any]) -> Any:
    return offset_view(session, offsets.cancel_offset(session, actor, order_id, body.get("reason")), actor)


@endpoint(bp, "/offsets/<int:order_id>", summary="One of my offset orders", tags=("offsets",), auth=True,
          response=o.OffsetOut)
def get_offset(session: Session, actor: Actor, order_id: int) -> Any:
    offsets.get_offset(session, actor, order_id)
    _fresh(session, order_id)
    return offset_view(session, offsets.get_offset(session, actor, order_id), actor)


@endpoint(bp, "/offsets", summary="My offset orders, newest first", tags=("offsets",), auth=True,
          query=o.OffsetsQuery, response=o.OffsetOut, paginated=True)
def list_offsets(session: Session, actor: Actor, *, query: dict[str, Any]) -> Any:
    offsets.expire_due(session, holder_id=actor.holder_id)
    session.commit()
    items, total = paginate(session, offsets.offsets_of(session, actor.holder_id, query.get("status")),
                            query["page"], query["per_page"])
    return [offset_view(session, x, actor) for x in items], total, query["page"], query["per_page"]


@endpoint(bp, "/footprints/<int:footprint_id>/neutrality", tags=("offsets", "public"),
          summary="An event's carbon-neutrality statement: footprint, reductions, credits retired, certificates",
          response=o.NeutralityOut)
def get_neutrality(session: Session, actor: Actor | None, footprint_id: int) -> Any:
    return neutrality.statement(session, footprint_id)
