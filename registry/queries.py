"""Read models: holdings, serial history, the public retirement ledger, project listings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from registry.errors import NotFound
from registry.holders import account_of
from registry.models import (
    Account,
    Batch,
    Block,
    BlockStatus,
    Methodology,
    Movement,
    Project,
    ProjectStatus,
    Retirement,
)
from registry.serials import parse_serial


def holdings(session: Session, holder_id: int) -> list[dict[str, Any]]:
    """The holder's units by project and vintage, split into held and listed (kg)."""
    acc = account_of(session, holder_id)
    rows = session.execute(
        select(Block.project_id, Project.title, Block.vintage, Block.status, func.sum(Block.quantity))
        .join(Project, Project.id == Block.project_id)
        .where(Block.account_id == acc.id, Block.status.in_([BlockStatus.HELD, BlockStatus.LISTED]))
        .group_by(Block.project_id, Project.title, Block.vintage, Block.status)
        .order_by(Block.vintage, Block.project_id)).all()
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for project_id, title, vintage, status, qty in rows:
        row = out.setdefault((project_id, vintage), {"project_id": project_id, "project_title": title,
                                                     "vintage": vintage, "held_kg": 0, "listed_kg": 0})
        row["held_kg" if status is BlockStatus.HELD else "listed_kg"] += int(qty)
    return list(out.values())


def account_blocks(session: Session, account_id: int, limit: int = 100, offset: int = 0) -> list[Block]:
    return list(session.scalars(select(Block).where(Block.account_id == account_id)
                                .order_by(Block.vintage, Block.batch_id, Block.start)
                                .limit(limit).offset(offset)))


@dataclass
class SerialHistory:
    batch: Batch
    start: int
    end: int
    blocks: list[Block]
    movements: list[Movement]


def serial_history(session: Session, serial: str) -> SerialHistory:
    """The blocks that hold the serial (or range) now and every movement that touched it."""
    rng = parse_serial(serial)
    batch = session.scalar(select(Batch).where(Batch.project_id == rng.project_id,
                                               Batch.number == rng.batch_number))
    if batch is None or batch.vintage != rng.vintage or rng.end > batch.quantity_kg:
        raise NotFound("no such serial number", field="serial", code="unknown_serial")
    first = session.scalar(select(Block).where(Block.batch_id == batch.id, Block.start <= rng.start)
                           .order_by(Block.start.desc()).limit(1))
    rest = session.scalars(select(Block).where(Block.batch_id == batch.id, Block.start > rng.start,
                                               Block.start <= rng.end).order_by(Block.start).limit(1000)).all()
    blocks = ([first] if first else []) + list(rest)
    moves = session.scalars(select(Movement).where(Movement.batch_id == batch.id,
                                                   Movement.start <= rng.end, Movement.end >= rng.start)
                            .order_by(Movement.id).limit(1000)).all()
    return SerialHistory(batch, rng.start, rng.end, blocks, list(moves))


def projects_query(*, methodology: str | None = None, status: str | None = None,
                   city: str | None = None, vintage: int | None = None, kind: str | None = None,
                   public_only: bool = True) -> Select[tuple[Project]]:
    stmt = select(Project).order_by(Project.id)
    if public_only:
        stmt = stmt.where(Project.status != ProjectStatus.DRAFT)
    if methodology:
        stmt = stmt.join(Methodology, Methodology.id == Project.methodology_id).where(
            Methodology.code == methodology)
    if status:
        stmt = stmt.where(Project.status == status)
    if city:
        stmt = stmt.where(Project.city == city)
    if kind:
        stmt = stmt.where(Project.kind == kind)
    if vintage is not None:
        stmt = stmt.where(Project.id.in_(select(Batch.project_id).where(Batch.vintage == vintage)))
    return stmt


def project_batches(session: Session, project_id: int) -> list[dict[str, Any]]:
    """Each issuance with its supply split by status (kg)."""
    batches = session.scalars(select(Batch).where(Batch.project_id == project_id).order_by(Batch.number)).all()
    supply = {(b, s): int(q) for b, s, q in session.execute(
        select(Block.batch_id, Block.status, func.sum(Block.quantity))
        .where(Block.project_id == project_id).group_by(Block.batch_id, Block.status))}
    return [{"batch": b, **{f"{s.value}_kg": supply.get((b.id, s), 0) for s in BlockStatus}}
            for b in batches]


def retirements_query(*, beneficiary: str | None = None, holder_id: int | None = None,
                      project_id: int | None = None) -> Select[tuple[Retirement]]:
    stmt = select(Retirement).order_by(Retirement.id.desc())
    if beneficiary:
        stmt = stmt.where(Retirement.beneficiary.contains(beneficiary))
    if holder_id is not None:
        stmt = stmt.where(Retirement.holder_id == holder_id)
    if project_id is not None:
        stmt = stmt.where(Retirement.id.in_(select(Block.retirement_id).where(Block.project_id == project_id)))
    return stmt


def retirement_by_certificate(session: Session, number: str) -> tuple[Retirement, list[Block]]:
    r = session.scalar(select(Retirement).where(Retirement.certificate_number == number))
    if r is None:
        raise NotFound(f"no retirement with certificate {number!r}", field="certificate_number")
    blocks = session.scalars(select(Block).where(Block.retirement_id == r.id)
                             .order_by(Block.batch_id, Block.start)).all()
    return r, list(blocks)


def account_label(session: Session, account_id: int | None) -> str | None:
    if account_id is None:
        return None
    acc = session.get(Account, account_id)
    return acc.number if acc else None
