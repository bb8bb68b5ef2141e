"""Shape domain objects into the dicts the response schemas dump (read-only queries only)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.models import Account, Batch, Block, Movement, Retirement, Transfer
from registry.queries import SerialHistory


def pieces(blocks: list[Block]) -> list[dict[str, Any]]:
    return [{"serial": b.serial(), "project_id": b.project_id, "project_title": b.batch.project.title,
             "vintage": b.vintage, "methodology": f"{b.batch.methodology.code} v{b.batch.methodology.version}",
             "quantity_kg": b.quantity} for b in blocks]


def permalink(number: str) -> str:
    return current_app.config["PUBLIC_BASE_URL"].rstrip("/") + f"/retirements/{number}"


def retirement(session: Session, r: Retirement, blocks: list[Block] | None = None) -> dict[str, Any]:
    if blocks is None:
        blocks = list(session.scalars(select(Block).where(Block.retirement_id == r.id)
                                      .order_by(Block.batch_id, Block.start)))
    return {"certificate_number": r.certificate_number, "permalink": permalink(r.certificate_number),
            "beneficiary": r.beneficiary, "jurisdiction": r.jurisdiction, "purpose": r.purpose.value,
            "quantity_kg": r.quantity_kg, "footprint_ref": r.footprint_ref, "message": r.message,
            "retired_by": {"holder_id": r.holder.id, "name": r.holder.name},
            "retired_at": r.retired_at, "serials": pieces(blocks)}


def _moved_ranges(session: Session, **link: int) -> list[dict[str, Any]]:
    """The ranges a transfer moved, from its movements (the blocks may have split again since)."""
    (col, value), = link.items()
    moves = session.scalars(select(Movement).where(getattr(Movement, col) == value).order_by(Movement.id)).all()
    out = []
    for m in moves:
        batch = session.get(Batch, m.batch_id)
        assert batch is not None
        out.append({"serial": batch.serial(m.start, m.end), "project_id": batch.project_id,
                    "project_title": batch.project.title, "vintage": batch.vintage,
                    "methodology": f"{batch.methodology.code} v{batch.methodology.version}",
                    "quantity_kg": m.end - m.start + 1})
    return out


def transfer(session: Session, t: Transfer) -> dict[str, Any]:
    return {"id": t.id, "transfer": t, "serials": _moved_ranges(session, transfer_id=t.id)}


def cancellation(session: Session, c: Any) -> dict[str, Any]:
    acc = session.get(Account, c.from_account_id)
    return {"id": c.id, "from_account": acc.number if acc else None, "quantity_kg": c.quantity_kg,
            "reason": c.reason, "created_at": c.created_at,
            "serials": pieces(list(session.scalars(select(Block).where(Block.cancellation_id == c.id)
                                                   .order_by(Block.batch_id, Block.start))))}


def serial(session: Session, h: SerialHistory) -> dict[str, Any]:
    accounts: dict[int, str] = {}

    def number(account_id: int | None) -> str | None:
        if account_id is None:
            return None
        if account_id not in accounts:
            acc = session.get(Account, account_id)
            accounts[account_id] = acc.number if acc else "?"
        return accounts[account_id]

    history = []
    for m in h.movements:
        cert = None
        if m.retirement_id is not None:
            r = session.get(Retirement, m.retirement_id)
            cert = r.certificate_number if r else None
        history.append({"id": m.id, "kind": m.kind.value, "serial": h.batch.serial(m.start, m.end),
                        "quantity_kg": m.quantity, "from_account": number(m.from_account_id),
                        "to_account": number(m.to_account_id), "at": m.at, "transfer_id": m.transfer_id,
                        "certificate_number": cert, "cancellation_id": m.cancellation_id})
    return {"serial": h.batch.serial(h.start, h.end), "project_id": h.batch.project_id,
            "vintage": h.batch.vintage, "batch_number": h.batch.number,
            "methodology": f"{h.batch.methodology.code} v{h.batch.methodology.version}",
            "blocks": h.blocks, "history": history}
