"""An event's carbon-neutrality statement (China's large-event guideline: reduce first, then offset;
neutral when the credits retired for the event cover its footprint).

The statement is public for event footprints (organisers publish it); other footprints are private
and answer NotFound here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from exchange.offset_models import Footprint, FootprintKind, OffsetOrder, OffsetStatus
from registry.certificate_pdf import tonnes
from registry.errors import NotFound
from registry.models import Block, Retirement


def _retirement(session: Session, r: Retirement) -> dict[str, Any]:
    blocks = session.scalars(select(Block).where(Block.retirement_id == r.id).order_by(Block.batch_id, Block.start))
    return {"certificate_number": r.certificate_number, "quantity_kg": r.quantity_kg, "beneficiary": r.beneficiary,
            "message": r.message, "retired_at": r.retired_at.isoformat() + "Z",
            "serials": [{"serial": b.serial(), "quantity_kg": b.quantity, "project": b.batch.project.title,
                         "vintage": b.vintage, "methodology": b.batch.methodology.code} for b in blocks],
            "certificate": {"json": f"/api/v1/retirements/{r.certificate_number}/certificate.json",
                            "pdf": f"/api/v1/retirements/{r.certificate_number}/certificate.pdf",
                            "page": f"/retirements/{r.certificate_number}"}}


def statement(session: Session, footprint_id: int) -> dict[str, Any]:
    """The footprint, the reductions made (organiser's notes), the credits retired for it with their
    certificates, and whether they cover it; before they do, how much is still uncovered (kg)."""
    fp = session.get(Footprint, footprint_id)
    if fp is None or fp.kind is not FootprintKind.EVENT:
        raise NotFound(f"no event footprint {footprint_id}", field="footprint_id")
    retired = session.scalars(select(Retirement).join(OffsetOrder, OffsetOrder.retirement_id == Retirement.id).where(
        OffsetOrder.footprint_id == fp.id, OffsetOrder.status == OffsetStatus.RETIRED).order_by(Retirement.id)).all()
    retired_kg = sum(r.quantity_kg for r in retired)
    uncovered = max(0, fp.total_kg - retired_kg)
    neutral = uncovered == 0
    text = (f"{fp.name}: footprint {tonnes(fp.total_kg)} t CO2e covered by {tonnes(retired_kg)} t of retired "
            f"credits in {len(retired)} certificate(s): carbon neutral." if neutral else
            f"{fp.name}: footprint {tonnes(fp.total_kg)} t CO2e, {tonnes(retired_kg)} t retired so far; "
            f"{tonnes(uncovered)} t ({uncovered} kg) still uncovered: not yet carbon neutral.")
    return {"footprint": {"id": fp.id, "name": fp.name, "kind": fp.kind.value, "region": fp.region,
                          "year": fp.year, "total_kg": fp.total_kg, "exact_kg": fp.exact_kg, "lines": fp.lines},
            "neutral": neutral, "footprint_kg": fp.total_kg, "retired_kg": retired_kg, "uncovered_kg": uncovered,
            "reductions": list(fp.reductions or []), "retirements": [_retirement(session, r) for r in retired],
            "statement": text}
