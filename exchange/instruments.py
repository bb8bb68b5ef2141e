"""Instruments: what trades, in which steps, and which blocks can be delivered into it."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from exchange.models import Instrument, InstrumentKind, InstrumentStatus
from exchange.pricing import band_around
from registry import audit
from registry.actors import Actor
from registry.errors import Conflict, InvalidInput, NotFound
from registry.models import Block, HolderKind, Methodology, Project, ProjectKind, ProjectStatus

_SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{1,39}$")


def _int(value: Any, field: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{field} must be an integer in [{low}, {high}]", field=field)
    return value


def create_instrument(session: Session, actor: Actor, *, symbol: str, name_zh: str, name_en: str,
                      kind: str, vintage_from: int, vintage_to: int, reference_price: int,
                      project_id: int | None = None,
                      project_kind: str | None = None, sector: str | None = None, tick_size: int = 1,
                      lot_size_kg: int = 1000, min_qty_kg: int = 1000, max_qty_kg: int = 100_000_000,
                      band_bp: int = 1000, maker_fee_bp: int = 0, taker_fee_bp: int = 50,
                      trading_hours: dict[str, Any] | None = None) -> Instrument:
    """Operator lists a contract. Prices are minor units per tonne (tick 1 = ¥0.01/t), sizes kg
    (lot 1,000 = 1 t, the Shanghai exchange's steps); fees and band in basis points.
    `reference_price` is the opening base price; the daily reference-price job moves it after."""
    actor.require_kind(HolderKind.OPERATOR)
    symbol = (symbol or "").strip().upper()
    if not _SYMBOL.match(symbol):
        raise InvalidInput("symbol: 2-40 of A-Z, 0-9, '.', '-'", field="symbol")
    if session.scalar(select(Instrument.id).where(Instrument.symbol == symbol)):
        raise Conflict(f"instrument {symbol} exists", field="symbol", code="duplicate")
    try:
        ikind = InstrumentKind(kind)
    except ValueError:
        raise InvalidInput(f"kind must be one of {[k.value for k in InstrumentKind]}", field="kind") from None
    vintage_from = _int(vintage_from, "vintage_from", 1990, 2200)
    vintage_to = _int(vintage_to, "vintage_to", 1990, 2200)
    if vintage_to < vintage_from:
        raise InvalidInput("vintage_to is before vintage_from", field="vintage_to")
    if ikind is InstrumentKind.PROJECT:
        project = session.get(Project, project_id) if project_id is not None else None
        if project is None or project.status is not ProjectStatus.REGISTERED:
            raise InvalidInput("a project instrument needs a registered project", field="project_id")
        if vintage_from != vintage_to:
            raise InvalidInput("a project instrument has one vintage", field="vintage_to")
        project_kind = sector = None
    else:
        if project_id is not None:
            raise InvalidInput("a pooled instrument has no project", field="project_id")
        if project_kind is not None and project_kind not in {k.value for k in ProjectKind}:
            raise InvalidInput("project_kind must be project or programme", field="project_kind")
    tick_size = _int(tick_size, "tick_size", 1, 10**9)
    lot_size_kg = _int(lot_size_kg, "lot_size_kg", 1, 10**9)
    min_qty_kg = _int(min_qty_kg, "min_qty_kg", 1, 10**12)
    max_qty_kg = _int(max_qty_kg, "max_qty_kg", 1, 10**12)
    if min_qty_kg % lot_size_kg or max_qty_kg % lot_size_kg or max_qty_kg < min_qty_kg:
        raise InvalidInput("min and max size are whole lots and min <= max", field="min_qty_kg")
    reference_price = _int(reference_price, "reference_price", 1, 10**12)
    if reference_price % tick_size:
        raise InvalidInput("reference_price must be on the tick", field="reference_price")
    band_bp = _int(band_bp, "band_bp", 1, 9999)
    low, high = band_around(reference_price, band_bp, tick_size)
    inst = Instrument(symbol=symbol, name_zh=name_zh, name_en=name_en, kind=ikind, project_id=project_id,
                      project_kind=project_kind, sector=sector, vintage_from=vintage_from, vintage_to=vintage_to,
                      tick_size=tick_size, lot_size_kg=lot_size_kg, min_qty_kg=min_qty_kg, max_qty_kg=max_qty_kg,
                      band_bp=band_bp, reference_price=reference_price, band_low=low, band_high=high,
                      engine_seq=0, engine_now=0,
                      maker_fee_bp=_int(maker_fee_bp, "maker_fee_bp", 0, 1000),
                      taker_fee_bp=_int(taker_fee_bp, "taker_fee_bp", 0, 1000),
                      trading_hours=trading_hours, status=InstrumentStatus.ACTIVE)
    session.add(inst)
    session.flush()
    audit.record(session, actor, "instrument.created", "instrument", inst.id,
                 {"symbol": symbol, "kind": ikind.value, "project_id": project_id, "vintages": [vintage_from, vintage_to],
                  "tick": tick_size, "lot": lot_size_kg, "band_bp": inst.band_bp,
                  "reference_price": reference_price, "band": [low, high],
                  "fees_bp": [inst.maker_fee_bp, inst.taker_fee_bp]})
    return inst


def get_instrument(session: Session, instrument_id: int | str, *, lock: bool = False) -> Instrument:
    stmt = select(Instrument)
    stmt = stmt.where(Instrument.id == instrument_id) if isinstance(instrument_id, int) else stmt.where(
        Instrument.symbol == str(instrument_id).upper())
    inst = session.scalar(stmt.with_for_update(key_share=True) if lock else stmt)
    if inst is None:
        raise NotFound(f"no instrument {instrument_id}", field="instrument")
    return inst


_TRANSITIONS = {
    InstrumentStatus.HALTED: (InstrumentStatus.ACTIVE,),
    InstrumentStatus.ACTIVE: (InstrumentStatus.HALTED,),
    InstrumentStatus.DELISTED: (InstrumentStatus.ACTIVE, InstrumentStatus.HALTED),
}


def set_status(session: Session, actor: Actor, instrument_id: int | str, status: str, reason: str) -> Instrument:
    """Operator halts, resumes (active) or delists an instrument, with a reason."""
    actor.require_kind(HolderKind.OPERATOR)
    try:
        to = InstrumentStatus(status)
    except ValueError:
        raise InvalidInput("status must be active, halted or delisted", field="status") from None
    if not reason or not reason.strip():
        raise InvalidInput("a reason is required", field="reason")
    inst = get_instrument(session, instrument_id, lock=True)
    if inst.status not in _TRANSITIONS[to]:
        raise Conflict(f"instrument is {inst.status.value}; cannot become {to.value}", field="status",
                       code="wrong_status")
    before = inst.status
    inst.status, inst.status_reason = to, reason.strip()
    audit.record(session, actor, f"instrument.{to.value}", "instrument", inst.id,
                 {"from": before.value, "to": to.value, "reason": reason.strip()})
    return inst


def deliverable(inst: Instrument) -> list[ColumnElement[bool]]:
    """SQL conditions on Block (joined with Project and Methodology) for blocks that can be
    delivered into `inst`."""
    if inst.kind is InstrumentKind.PROJECT:
        return [Block.project_id == inst.project_id, Block.vintage == inst.vintage_from]
    conds: list[ColumnElement[bool]] = [Block.vintage >= inst.vintage_from, Block.vintage <= inst.vintage_to]
    if inst.project_kind:
        conds.append(Project.kind == inst.project_kind)
    if inst.sector:
        conds.append(Methodology.sector == inst.sector)
    return conds


def deliverable_blocks_stmt(inst: Instrument) -> Any:
    return (select(Block).join(Project, Project.id == Block.project_id)
            .join(Methodology, Methodology.id == Project.methodology_id).where(*deliverable(inst)))
