"""Programme issuance on the exchange side: closing due periods (the scheduled job) and offering
the issued credits for sale.

Once the operator has issued a closed period's report (`registry.issuance.issue`), the job offers
the batch for sale where an active instrument takes it: a project instrument of that programme and
vintage first, else a pooled one whose criteria deliver it (lowest id). The offer is a GTC limit
sell order by the programme's owner (`exchange.orders.place_order`) at the instrument's reference
price (on its tick: `offer_price`), for the batch's kg rounded down to the lot (and within the
instrument's size limits); the kg below a lot stay in the owner's account. One offer per period (`programme_offers.period_id` is
unique). A batch no instrument takes is offered by a later run, once one exists. The proceeds of the
resulting trades fund the rewards pool (`exchange.rewards_pool.fund_from_trades`).

The job takes an advisory lock (`exchange.jobs.job_lock`) and runs daily: close every due period
(`registry.programme_periods.due_periods`), offer what was issued, fund the pool, pay what waits.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from sqlalchemy import BigInteger, DateTime, ForeignKey, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

import matching
from exchange import orders, rewards_pool
from exchange.instruments import deliverable_blocks_stmt
from exchange.jobs import Wake, job_lock
from exchange.models import Instrument, InstrumentKind, InstrumentStatus
from registry import audit, programme_periods
from registry.db import Base, BigKey, utcnow
from registry.errors import RegistryError
from registry.models import Batch, Block, ReportStatus
from registry.programme_periods import ProgrammePeriod

log = logging.getLogger(__name__)

ISSUANCE_LOCK = 11   # exchange.jobs.LOCK_CLASS namespace; the close and expiry jobs use 1 and 2


class ProgrammeOffer(Base):
    __tablename__ = "programme_offers"

    id: Mapped[int] = mapped_column(primary_key=True)
    period_id: Mapped[int] = mapped_column(ForeignKey("programme_periods.id"), unique=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"))
    order_id: Mapped[int] = mapped_column(BigKey, ForeignKey("orders.id"))
    qty_kg: Mapped[int] = mapped_column(BigInteger)
    price: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


def instrument_for(session: Session, batch: Batch) -> Instrument | None:
    """The active instrument that takes the batch's credits: the programme's own contract first."""
    candidates = session.scalars(select(Instrument).where(Instrument.status == InstrumentStatus.ACTIVE)
                                 .order_by(Instrument.id)).all()
    ordered = ([i for i in candidates if i.kind is InstrumentKind.PROJECT]
               + [i for i in candidates if i.kind is not InstrumentKind.PROJECT])
    for inst in ordered:
        if session.scalar(deliverable_blocks_stmt(inst).with_only_columns(Block.id)
                          .where(Block.batch_id == batch.id).limit(1)) is not None:
            return inst
    return None


def offer_price(inst: Instrument) -> int:
    """The reference price on the instrument's tick (rounded up, so a sale is never below the
    reference), kept within today's band."""
    up = -(-inst.reference_price // inst.tick_size) * inst.tick_size
    return up if up <= inst.band_high else inst.band_high - inst.band_high % inst.tick_size


def offer_period(session: Session, period: ProgrammePeriod) -> ProgrammeOffer | None:
    """Offer the issued batch of a closed period for sale (see the module docstring); None when
    there is nothing to offer yet (not issued, no instrument, under a lot, or already offered).
    The caller commits."""
    if period.report_id is None or session.scalar(
            select(ProgrammeOffer.id).where(ProgrammeOffer.period_id == period.id)) is not None:
        return None
    batch = session.scalar(select(Batch).where(Batch.report_id == period.report_id))
    if batch is None:
        return None
    inst = instrument_for(session, batch)
    if inst is None:
        return None
    qty = min(batch.quantity_kg // inst.lot_size_kg * inst.lot_size_kg, inst.max_qty_kg)
    if qty < inst.min_qty_kg:
        return None
    price = offer_price(inst)
    actor = programme_periods.owner_actor(session, batch.project.owner_id)
    order, _ = orders.place_order(session, actor, orders.OrderRequest(
        instrument=inst.id, side=matching.SELL, qty_kg=qty, order_type=matching.LIMIT, price=price, tif="GTC"))
    offer = ProgrammeOffer(period_id=period.id, batch_id=batch.id, instrument_id=inst.id, order_id=order.id,
                           qty_kg=qty, price=price, created_at=utcnow())
    session.add(offer)
    session.flush()
    audit.record(session, None, "programme.offered", "project", batch.project_id,
                 {"period": period.period, "batch_id": batch.id, "instrument": inst.symbol, "order_id": order.id,
                  "qty_kg": qty, "price": price, "reference_price": inst.reference_price})
    return offer


def issued_unoffered(session: Session) -> list[ProgrammePeriod]:
    from registry.models import MonitoringReport
    return list(session.scalars(
        select(ProgrammePeriod).join(MonitoringReport, MonitoringReport.id == ProgrammePeriod.report_id)
        .where(MonitoringReport.status == ReportStatus.ISSUED,
               ~ProgrammePeriod.id.in_(select(ProgrammeOffer.period_id)))
        .order_by(ProgrammePeriod.id)))


@dataclass
class IssuanceRun:
    closed: list[tuple[int, str, int]] = field(default_factory=list)     # programme, period, kg
    failed: list[tuple[int, str, str]] = field(default_factory=list)     # programme, period, why
    offered: list[int] = field(default_factory=list)                     # order ids
    funded: int = 0                                                       # fen into the pool
    paid: int = 0                                                         # merchant payments made


def run_programme_issuance(session_factory: sessionmaker[Session], today: dt.date | None = None, *,
                           wake: Wake | None = None) -> IssuanceRun | None:
    """The daily job: each step in its own transaction; a failing period is logged and skipped.
    Returns what it did, or None if another process holds the lock."""
    today = today or programme_periods.china_today()
    run = IssuanceRun()
    with job_lock(session_factory, ISSUANCE_LOCK) as got:
        if not got:
            return None
        with session_factory() as s:
            due = programme_periods.due_periods(s, today)
        for programme_id, period in due:
            try:
                with session_factory() as s, s.begin():
                    row, _ = programme_periods.close_period(s, None, programme_id, period, today=today)
                    run.closed.append((programme_id, period, row.kg))
            except RegistryError as e:
                log.warning("programme %s period %s not closed: %s", programme_id, period, e.message)
                run.failed.append((programme_id, period, e.message))
        with session_factory() as s:
            pending = [p.id for p in issued_unoffered(s)]
        for period_id in pending:
            try:
                with session_factory() as s, s.begin():
                    p = s.get(ProgrammePeriod, period_id)
                    assert p is not None
                    offer = offer_period(s, p)
                    if offer is not None:
                        run.offered.append(offer.order_id)
            except RegistryError as e:
                log.warning("period %s not offered: %s", period_id, e.message)
        with session_factory() as s, s.begin():
            funded, paid = rewards_pool.settle(s)
            run.funded, run.paid = funded.amount, len(paid)
    if run.offered and wake is not None:
        wake()
    return run
