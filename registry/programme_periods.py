"""Programme issuance: closing a programme's monthly period into a monitoring report.

A programme's members' accepted reductions are grams (`behaviour_events`); credits are kilograms.
Closing period P (a calendar month, the programme's China-time days) counts the grams accepted for
days up to P's last day that no earlier period counted:

    counted_g(P) = Σ accepted grams with day ≤ end(P)  −  Σ counted_g of the earlier closed periods

so a row that arrives late (within the claim window) for a day of a closed period is counted by the
next period, and no gram is counted twice (accepted events never change). With the grams carried in
from the previous period:

    kg(P), carried_out_g(P) = divmod(carried_in_g(P) + counted_g(P), 1000)

the remainder is stored and carried into the next period: nothing lost, nothing counted twice
(the schema checks carried_in + counted = 1000 × kg + carried_out, 0 ≤ carried_out < 1000).
When kg > 0 a monitoring report of kg is submitted for the owner through the registry's flow
(`registry.projects.submit_report`, period from the day after the previous closed period, so
reports never overlap); a verifier verifies it and the operator issues it as for any project.

The grams through end(P) are read without visiting the programme's history: all the programme's
accepted grams (the sum of its batches' counters, kept with the events in each chunk's transaction)
minus the accepted grams of days after end(P), a range of the programme's day totals
(`registry.behaviour.ProgrammeDay`, one row a day, kept by the import in each chunk's transaction)
that covers only the days since the period ended. Both sums are read under the programme's import
lock, so they see the same chunks.

A verifier (or the operator) may reject a period's monitoring report. Its grams are not dropped and
not moved into another period: as in Verra's and Gold Standard's flow, the report is corrected and
resubmitted for the same monitoring period (`resubmit_period`: a new report of the period's kg, the
period now names it; the rejected one stays, rejected, in the record). The carry chain does not
change, so a period's grams reach exactly one approved issuance, however often it is rejected.

Periods close in order (a period before the last closed one is refused) and only once they have
ended; closing a closed period returns it unchanged. Closing takes the programme's import lock
(PostgreSQL advisory lock, as `registry.behaviour` does per chunk), so no chunk commits half-seen.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    String,
    UniqueConstraint,
    func,
    select,
    text,
)
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql import Select

from registry import audit, behaviour, projects
from registry.actors import Actor
from registry.behaviour import BehaviourBatch, BehaviourEvent, ProgrammeDay
from registry.db import Base, utcnow
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound
from registry.models import (
    Holder,
    MonitoringReport,
    Project,
    ProjectKind,
    ProjectStatus,
    ReportStatus,
    UserRole,
)
from registry.partners import Partner

GRAMS_PER_KG = 1000
_PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class ProgrammePeriod(Base):
    __tablename__ = "programme_periods"
    __table_args__ = (
        UniqueConstraint("programme_id", "period"),
        CheckConstraint("counted_g >= 0 AND carried_in_g >= 0 AND kg >= 0", name="nonnegative"),
        CheckConstraint("carried_out_g >= 0 AND carried_out_g < 1000", name="carry_below_a_kg"),
        CheckConstraint("carried_in_g + counted_g = kg * 1000 + carried_out_g", name="grams_conserved"),
        CheckConstraint("(kg > 0) = (report_id IS NOT NULL)", name="report_iff_kg"),
        CheckConstraint("period_start <= period_end", name="period_order"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    programme_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    period: Mapped[str] = mapped_column(String(7))          # YYYY-MM
    period_start: Mapped[dt.date] = mapped_column(Date)     # of the report: the day after the last close
    period_end: Mapped[dt.date] = mapped_column(Date)
    counted_g: Mapped[int] = mapped_column(BigInteger)
    carried_in_g: Mapped[int] = mapped_column(BigInteger)
    kg: Mapped[int] = mapped_column(BigInteger)
    carried_out_g: Mapped[int] = mapped_column(BigInteger)
    report_id: Mapped[int | None] = mapped_column(ForeignKey("monitoring_reports.id"), unique=True)
    closed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    closed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


def parse_period(period: str) -> tuple[dt.date, dt.date]:
    """'YYYY-MM' → (first day, last day). Raises InvalidInput (field period)."""
    m = _PERIOD_RE.match((period or "").strip())
    if not m:
        raise InvalidInput("period is YYYY-MM", field="period")
    year, month = int(m.group(1)), int(m.group(2))
    return dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1])


def previous_month(day: dt.date) -> str:
    first = day.replace(day=1) - dt.timedelta(days=1)
    return f"{first.year:04d}-{first.month:02d}"


def china_today() -> dt.date:
    return (utcnow() + dt.timedelta(hours=8)).date()


def owner_actor(session: Session, owner_id: int) -> Actor:
    """The programme owner acting through the scheduled job (no user: the audit shows none)."""
    owner = session.get(Holder, owner_id)
    assert owner is not None
    return Actor(None, owner.id, owner.kind, UserRole.ADMIN)


def last_closed(session: Session, programme_id: int) -> ProgrammePeriod | None:
    return session.scalar(select(ProgrammePeriod).where(ProgrammePeriod.programme_id == programme_id)
                          .order_by(ProgrammePeriod.period_end.desc()).limit(1))


def close_period(session: Session, actor: Actor | None, programme_id: int, period: str, *,
                 today: dt.date | None = None) -> tuple[ProgrammePeriod, bool]:
    """Close `period` of a registered programme (see the module docstring). `actor`: the operator
    or the programme's owner, or None for the scheduled job. Returns (the period, True if it was
    closed now; False if it was closed before and nothing changed). Raises NotFound (programme_id),
    Conflict `wrong_status` (not registered), `period_not_ended`, `before_last_closed` (field period).
    The caller commits."""
    start, end = parse_period(period)
    programme = projects.get_project(session, programme_id, lock=True)
    if programme.kind is not ProjectKind.PROGRAMME:
        raise NotFound(f"no programme {programme_id}", field="programme_id")
    if actor is not None and not actor.is_operator and actor.holder_id != programme.owner_id:
        raise Forbidden("only the operator or the programme's owner closes its periods", code="not_owner")
    existing = session.scalar(select(ProgrammePeriod).where(ProgrammePeriod.programme_id == programme_id,
                                                            ProgrammePeriod.period == period))
    if existing is not None:
        return existing, False
    if programme.status is not ProjectStatus.REGISTERED:
        raise Conflict(f"programme is {programme.status.value}; periods close once it is registered",
                       field="programme_id", code="wrong_status")
    if end >= (today or china_today()):
        raise Conflict(f"period {period} has not ended", field="period", code="period_not_ended")
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:c, :p)"),
                        {"c": behaviour._LOCK_CLASS, "p": programme_id})
    last = last_closed(session, programme_id)
    if last is not None and end <= last.period_end:
        raise Conflict(f"period {period} is before the last closed period {last.period}", field="period",
                       code="before_last_closed")
    through = accepted_grams(session, programme_id) - accepted_grams_after(session, programme_id, end)
    before = int(session.scalar(select(func.coalesce(func.sum(ProgrammePeriod.counted_g), 0))
                                .where(ProgrammePeriod.programme_id == programme_id)) or 0)
    counted = through - before
    carried_in = last.carried_out_g if last is not None else 0
    kg, carried_out = divmod(carried_in + counted, GRAMS_PER_KG)
    if last is not None:
        report_start = last.period_end + dt.timedelta(days=1)
    else:
        first_day = session.scalar(select(func.min(ProgrammeDay.day)).where(ProgrammeDay.programme_id == programme_id))
        report_start = min(start, first_day) if isinstance(first_day, dt.date) else start
    row = ProgrammePeriod(programme_id=programme_id, period=period, period_start=report_start, period_end=end,
                          counted_g=counted, carried_in_g=carried_in, kg=kg, carried_out_g=carried_out,
                          closed_at=utcnow(), closed_by_id=actor.user_id if actor else None)
    if kg > 0:
        report = projects.submit_report(
            session, owner_actor(session, programme.owner_id), programme_id, period_start=report_start,
            period_end=end, claimed_kg=kg, external_ref=f"programme:{programme_id}:{period}",
            documents=[{"name": f"accepted behaviour reductions {report_start}..{end}", "kind": "aggregate"}])
        row.report_id = report.id
    session.add(row)
    session.flush()
    audit.record(session, actor, "programme.period_closed", "project", programme_id,
                 {"period": period, "counted_g": counted, "carried_in_g": carried_in, "kg": kg,
                  "carried_out_g": carried_out, "report_id": row.report_id})
    return row, True


def periods_of(session: Session, programme_id: int) -> list[ProgrammePeriod]:
    return list(session.scalars(select(ProgrammePeriod).where(ProgrammePeriod.programme_id == programme_id)
                                .order_by(ProgrammePeriod.period_end)))


def due_periods(session: Session, today: dt.date) -> list[tuple[int, str]]:
    """(programme id, period) the scheduled job closes on `today`: for every registered programme,
    each month after its last closed period through last month (last month alone if none closed)."""
    last_month = previous_month(today)
    out = []
    for pid in session.scalars(select(Project.id).where(
            Project.kind == ProjectKind.PROGRAMME, Project.status == ProjectStatus.REGISTERED,
            Project.suspended.is_(False)).order_by(Project.id)):
        last = last_closed(session, pid)
        if last is None:
            out.append((pid, last_month))
            continue
        day = last.period_end + dt.timedelta(days=1)
        while f"{day.year:04d}-{day.month:02d}" <= last_month:
            out.append((pid, f"{day.year:04d}-{day.month:02d}"))
            day = parse_period(f"{day.year:04d}-{day.month:02d}")[1] + dt.timedelta(days=1)
    return out


def check(session: Session) -> list[str]:
    """The carry chain of every programme: the first period carries nothing in, each carries in what
    the one before carried out, the grams counted never exceed the accepted grams through the last
    closed day, and each period's report claims its kg."""
    found: list[str] = []
    by_programme: dict[int, list[ProgrammePeriod]] = {}
    for p in session.scalars(select(ProgrammePeriod).order_by(ProgrammePeriod.programme_id, ProgrammePeriod.period_end)
                             .execution_options(populate_existing=True)):
        by_programme.setdefault(p.programme_id, []).append(p)
    for programme_id, rows in by_programme.items():
        carry = 0
        for p in rows:
            if p.carried_in_g != carry:
                found.append(f"programme {programme_id} {p.period}: carried in {p.carried_in_g} g, "
                             f"the period before carried out {carry} g")
            carry = p.carried_out_g
        accepted = int(session.scalar(select(func.coalesce(func.sum(BehaviourEvent.reduction_g), 0)).where(
            BehaviourEvent.programme_id == programme_id, BehaviourEvent.status == "accepted",
            BehaviourEvent.day <= rows[-1].period_end)) or 0)
        counted = sum(p.counted_g for p in rows)
        if counted > accepted:
            found.append(f"programme {programme_id}: {counted} g counted but {accepted} g accepted "
                         f"through {rows[-1].period_end}")
    for period, programme_id, kg, claimed in session.execute(
            select(ProgrammePeriod.period, ProgrammePeriod.programme_id, ProgrammePeriod.kg,
                   MonitoringReport.claimed_kg)
            .join(MonitoringReport, MonitoringReport.id == ProgrammePeriod.report_id)
            .where(MonitoringReport.claimed_kg != ProgrammePeriod.kg)):
        found.append(f"programme {programme_id} {period}: {kg} kg closed but its report claims {claimed} kg")
    return found


# -- reading the accepted grams ----------------------------------------------------------------------

def accepted_grams(session: Session, programme_id: int) -> int:
    """All the programme's accepted grams: the sum of its partners' batch counters (one row per batch;
    `registry.behaviour.ingest_chunk` adds to them in the transaction that records the events, and
    `check_ledger` proves them against the events)."""
    return int(session.scalar(
        select(func.coalesce(func.sum(BehaviourBatch.reduction_g), 0))
        .join(Partner, Partner.id == BehaviourBatch.partner_id)
        .where(Partner.programme_id == programme_id)) or 0)


def accepted_grams_after_stmt(programme_id: int, day: dt.date) -> Select[tuple[int]]:
    return (select(func.coalesce(func.sum(ProgrammeDay.reduction_g), 0))
            .where(ProgrammeDay.programme_id == programme_id, ProgrammeDay.day > day))


def accepted_grams_after(session: Session, programme_id: int, day: dt.date) -> int:
    """The programme's accepted grams of days after `day`: a range of its day totals (one row a day,
    kept by the import with the events), whatever the number of events."""
    return int(session.scalar(accepted_grams_after_stmt(programme_id, day)) or 0)


# -- a rejected report, corrected and resubmitted --------------------------------------------------


def resubmit_period(session: Session, actor: Actor | None, programme_id: int, period: str, *,
                    note: str | None = None, documents: list[dict[str, str]] | None = None) -> ProgrammePeriod:
    """Resubmit a closed period whose monitoring report was rejected: a new report for the same
    monitoring period and the period's kg (its grams and carry are unchanged), `note` saying what
    was corrected; the period then names the new report. `actor`: the operator or the programme's
    owner, or None for the owner through the CLI. Raises NotFound (period), Forbidden `not_owner`, Conflict `not_rejected` (field period:
    the period has no report or its report is not rejected). The caller commits."""
    parse_period(period)
    programme = projects.get_project(session, programme_id, lock=True)
    if programme.kind is not ProjectKind.PROGRAMME:
        raise NotFound(f"no programme {programme_id}", field="programme_id")
    if actor is not None and not actor.is_operator and actor.holder_id != programme.owner_id:
        raise Forbidden("only the operator or the programme's owner resubmits its reports", code="not_owner")
    row = session.scalar(select(ProgrammePeriod).where(ProgrammePeriod.programme_id == programme_id,
                                                       ProgrammePeriod.period == period).with_for_update())
    if row is None:
        raise NotFound(f"programme {programme_id} has no closed period {period}", field="period")
    rejected = session.get(MonitoringReport, row.report_id) if row.report_id is not None else None
    if rejected is None or rejected.status is not ReportStatus.REJECTED:
        state = "no report" if rejected is None else f"report {rejected.id} {rejected.status.value}"
        raise Conflict(f"period {period} has {state}; only a rejected report is resubmitted",
                       field="period", code="not_rejected")
    note = (note or "").strip() or None
    attempt = 1 + int(session.scalar(select(func.count()).select_from(MonitoringReport).where(
        MonitoringReport.project_id == programme_id,
        MonitoringReport.external_ref.like(f"programme:{programme_id}:{period}%"))) or 0)
    report = projects.submit_report(
        session, owner_actor(session, programme.owner_id), programme_id, period_start=row.period_start,
        period_end=row.period_end, claimed_kg=row.kg, external_ref=f"programme:{programme_id}:{period}:{attempt}",
        documents=[{"name": f"accepted behaviour reductions {row.period_start}..{row.period_end}",
                    "kind": "aggregate"},
                   {"name": f"resubmission {attempt} of report {rejected.id}, rejected: {rejected.status_reason}"
                            + (f"; corrected: {note}" if note else ""), "kind": "correction"},
                   *(documents or [])])
    row.report_id = report.id
    session.flush()
    audit.record(session, actor, "programme.period_resubmitted", "project", programme_id,
                 {"period": period, "rejected_report_id": rejected.id, "report_id": report.id, "kg": row.kg,
                  "attempt": attempt, "note": note})
    return row


def report_history(session: Session, programme_id: int, period: str) -> list[MonitoringReport]:
    """Every monitoring report submitted for the period, first to last (rejected ones included)."""
    return list(session.scalars(select(MonitoringReport).where(
        MonitoringReport.project_id == programme_id,
        MonitoringReport.external_ref.like(f"programme:{programme_id}:{period}%")).order_by(MonitoringReport.id)))
