"""Programme periods: a programme's accepted behaviour reductions become a monitoring report.

Closing a period (`close_period`, the scheduled job and `flask registry close-programme-period`)
takes every complete behaviour batch of the programme not yet in a period and received before the
end of the period's last day, adds the grams of their accepted rows to the remainder carried from the
previous period, and submits a monitoring report of the whole kilograms (grams // 1000) through
`registry.projects.submit_report`; the remaining grams (< 1,000) carry to the next period. A batch
belongs to exactly one period (its `period_id`), so no gram is lost or counted twice; the verifier
then approves the report and the operator issues it in the registry's own flow. A period with
less than one kilogram records no report and carries everything.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from registry import audit, projects
from registry.actors import Actor
from registry.behaviour import BehaviourBatch, BehaviourEvent
from registry.db import Base, utcnow
from registry.errors import Conflict, InvalidInput, NotFound
from registry.models import Holder, ProjectKind, UserRole
from registry.partners import Partner

GRAMS_PER_KG = 1000


class ProgrammePeriod(Base):
    __tablename__ = "programme_periods"
    __table_args__ = (
        UniqueConstraint("programme_id", "period_end"),
        CheckConstraint("period_start <= period_end", name="period_order"),
        CheckConstraint("carry_out_g >= 0 AND carry_out_g < 1000 AND carry_in_g >= 0 AND reduction_g >= 0",
                        name="carry_range"),
        CheckConstraint("carry_in_g + reduction_g = quantity_kg * 1000 + carry_out_g", name="grams_conserved"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    programme_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    period_start: Mapped[dt.date] = mapped_column(Date)
    period_end: Mapped[dt.date] = mapped_column(Date)
    batches: Mapped[int] = mapped_column(Integer)
    reduction_g: Mapped[int] = mapped_column(BigInteger)
    carry_in_g: Mapped[int] = mapped_column(BigInteger)
    carry_out_g: Mapped[int] = mapped_column(BigInteger)
    quantity_kg: Mapped[int] = mapped_column(BigInteger)
    report_id: Mapped[int | None] = mapped_column(ForeignKey("monitoring_reports.id"))
    closed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


def owner_actor(session: Session, programme_id: int) -> Actor:
    """The scheduled job acts for the programme's owner (as its admin, with no user)."""
    programme = projects.get_project(session, programme_id)
    owner = session.get(Holder, programme.owner_id)
    assert owner is not None
    return Actor(None, owner.id, owner.kind, UserRole.ADMIN)


def close_period(session: Session, actor: Actor, programme_id: int, period_end: dt.date) -> ProgrammePeriod:
    """Close the programme's period ending on `period_end` (inclusive; it starts the day after the
    previous period, or on the day of the programme's first batch). Returns the period, with its
    monitoring report if at least one kilogram was reached. Raises NotFound for a missing programme,
    Conflict if the period is not after the previous one, and what `submit_report` raises (the
    programme must be registered; the actor must be its owner). The caller commits."""
    if period_end >= utcnow().date():
        raise InvalidInput("a period closes once its last day (UTC) is over", field="period_end")
    programme = projects.get_project(session, programme_id, lock=True)
    if programme.kind is not ProjectKind.PROGRAMME:
        raise NotFound(f"no programme {programme_id}", field="programme_id")
    last = session.scalar(select(ProgrammePeriod).where(ProgrammePeriod.programme_id == programme_id)
                          .order_by(ProgrammePeriod.period_end.desc()).limit(1))
    partner_ids = select(Partner.id).where(Partner.programme_id == programme_id)
    if last is not None:
        start = last.period_end + dt.timedelta(days=1)
    else:
        first = session.scalar(select(func.min(BehaviourBatch.received_at))
                               .where(BehaviourBatch.partner_id.in_(partner_ids)))
        start = first.date() if first is not None else period_end
    if period_end < start:
        raise Conflict(f"the next period of programme {programme_id} starts on {start}", field="period_end",
                       code="overlapping_period")
    cutoff = dt.datetime.combine(period_end + dt.timedelta(days=1), dt.time())
    batch_ids = list(session.scalars(
        select(BehaviourBatch.id).where(BehaviourBatch.partner_id.in_(partner_ids),
                                        BehaviourBatch.status == "complete", BehaviourBatch.period_id.is_(None),
                                        BehaviourBatch.received_at < cutoff)
        .order_by(BehaviourBatch.id).with_for_update()))
    grams = 0
    if batch_ids:
        grams = int(session.scalar(select(func.coalesce(func.sum(BehaviourEvent.reduction_g), 0)).where(
            BehaviourEvent.status == "accepted", BehaviourEvent.batch_id.in_(batch_ids))) or 0)
    carry_in = last.carry_out_g if last is not None else 0
    kg, carry_out = divmod(carry_in + grams, GRAMS_PER_KG)
    report = None
    if kg > 0:
        report = projects.submit_report(session, actor, programme_id, period_start=start, period_end=period_end,
                                        claimed_kg=kg)
    period = ProgrammePeriod(programme_id=programme_id, period_start=start, period_end=period_end,
                             batches=len(batch_ids), reduction_g=grams, carry_in_g=carry_in, carry_out_g=carry_out,
                             quantity_kg=kg, report_id=report.id if report else None, closed_at=utcnow())
    session.add(period)
    session.flush()
    if batch_ids:
        session.execute(update(BehaviourBatch).where(BehaviourBatch.id.in_(batch_ids)).values(period_id=period.id))
    audit.record(session, actor, "programme.period_closed", "project", programme_id,
                 {"period": [start.isoformat(), period_end.isoformat()], "batches": len(batch_ids),
                  "reduction_g": grams, "carry_in_g": carry_in, "carry_out_g": carry_out, "quantity_kg": kg,
                  "report_id": report.id if report else None})
    return period
