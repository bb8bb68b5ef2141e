"""Scheduled exchange jobs (APScheduler): the daily close and order expiry.

- Daily close (default 15:00 Asia/Shanghai): publish every instrument's reference price for today's
  China date (`reference.close_all`, which queues each next-day band) and queue an `end_of_day`
  command per instrument, so the sequencer expires DAY orders and releases their reserves.
- Every minute: queue an `expire` command (the current epoch seconds) for each instrument that has
  a GTD order due, so the sequencer expires it.

Jobs run once even with several web workers: run the scheduler in one process (`flask scheduler
run`), and besides, every job takes a PostgreSQL advisory lock (pg_try_advisory_xact_lock) and skips
if another process holds it. The close is idempotent per (instrument, day) and `end_of_day` is
queued at most once per (instrument, day), so a job that runs twice changes nothing. On SQLite (the
embedded single-process demo) there is no lock to take.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import zoneinfo
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from exchange import reference
from exchange.models import (
    CommandStatus,
    Instrument,
    InstrumentStatus,
    Order,
    OrderCommand,
    OrderStatus,
)
from exchange.orders import epoch
from registry.db import utcnow

log = logging.getLogger(__name__)

LOCK_CLASS = 7341            # pg advisory lock namespace of the jobs (the sequencer uses 7340)
CLOSE_LOCK = 1
EXPIRY_LOCK = 2

Wake = Callable[[], None]


@contextmanager
def job_lock(session_factory: sessionmaker[Session], key: int) -> Iterator[bool]:
    """On PostgreSQL, hold a transaction-level advisory lock for the job's duration (True), or
    yield False if another process holds it. Elsewhere (SQLite: one process) always True."""
    with session_factory() as s:
        if s.get_bind().dialect.name != "postgresql":
            yield True
            return
        with s.begin():
            got = bool(s.execute(text("SELECT pg_try_advisory_xact_lock(:c, :k)"),
                                 {"c": LOCK_CLASS, "k": key}).scalar())
            yield got


def _live_instrument_ids(session: Session) -> list[int]:
    return list(session.scalars(select(Instrument.id).where(Instrument.status != InstrumentStatus.DELISTED)
                                .order_by(Instrument.id)))


def queue_end_of_day(session: Session, instrument_ids: list[int], *, day: dt.date | None = None) -> list[int]:
    """Queue an `end_of_day` command (DAY orders expire) for each instrument; with `day`, at most
    once per instrument and China day. Returns the instruments queued. The caller commits."""
    done: set[int] = set()
    if day is not None:
        start, _ = reference.day_window(day)
        for inst_id, args in session.execute(select(OrderCommand.instrument_id, OrderCommand.args).where(
                OrderCommand.kind == "end_of_day", OrderCommand.instrument_id.in_(instrument_ids),
                OrderCommand.created_at >= start)):
            if (args or {}).get("day") == day.isoformat():
                done.add(inst_id)
    queued = []
    now = utcnow()
    for inst_id in instrument_ids:
        if inst_id in done:
            continue
        session.add(OrderCommand(instrument_id=inst_id, order_id=None, kind="end_of_day",
                                 args={"day": day.isoformat()} if day else {}, status=CommandStatus.PENDING,
                                 created_at=now))
        queued.append(inst_id)
    session.flush()
    return queued


def queue_expiry(session: Session, now_epoch: int) -> list[int]:
    """Queue an `expire` command with `now_epoch` for each live instrument that has a pending or open
    GTD order due by then and no expiry command already waiting. Returns the instruments queued.
    The caller commits."""
    due_at = dt.datetime.fromtimestamp(now_epoch, dt.UTC).replace(tzinfo=None)
    due = set(session.scalars(select(Order.instrument_id).join(Instrument, Instrument.id == Order.instrument_id).where(
        Order.tif == "GTD", Order.status.in_([OrderStatus.PENDING, OrderStatus.OPEN]),
        Order.expire_at <= due_at, Instrument.status != InstrumentStatus.DELISTED).distinct()))
    if not due:
        return []
    waiting = set(session.scalars(select(OrderCommand.instrument_id).where(
        OrderCommand.kind == "expire", OrderCommand.status == CommandStatus.PENDING,
        OrderCommand.instrument_id.in_(due)).distinct()))
    queued = sorted(due - waiting)
    now = utcnow()
    for inst_id in queued:
        session.add(OrderCommand(instrument_id=inst_id, order_id=None, kind="expire", args={"now": int(now_epoch)},
                                 status=CommandStatus.PENDING, created_at=now))
    session.flush()
    return queued


def run_daily_close(session_factory: sessionmaker[Session], day: dt.date | None = None, *,
                    wake: Wake | None = None, catch_up_days: int = 7) -> list[reference.CloseResult] | None:
    """The daily close job: publish `day` (default today's China date) for every instrument, first
    catching up at most `catch_up_days` missed days, then queue end_of_day. Returns the results,
    or None if another process holds the job's lock."""
    day = day or reference.china_today()
    with job_lock(session_factory, CLOSE_LOCK) as got:
        if not got:
            log.info("daily close for %s skipped: another process runs it", day)
            return None
        results = reference.close_all(session_factory, day, catch_up_days=catch_up_days)
        with session_factory() as s, s.begin():
            queued = queue_end_of_day(s, _live_instrument_ids(s), day=day)
    for r in results:
        if r.ok:
            log.info("reference %s %s: %s (%s) band %s", r.symbol, day, r.reference_price, r.method, r.band)
    log.info("daily close %s: %d published, %d failed, end_of_day queued for %d",
             day, sum(r.ok for r in results), sum(not r.ok for r in results), len(queued))
    if wake is not None:
        wake()
    return results


def run_expiry(session_factory: sessionmaker[Session], now_epoch: int | None = None, *,
               wake: Wake | None = None) -> list[int] | None:
    """The GTD expiry job. Returns the instruments queued, or None if another process holds the lock."""
    now_epoch = epoch(utcnow()) if now_epoch is None else now_epoch
    with job_lock(session_factory, EXPIRY_LOCK) as got:
        if not got:
            return None
        with session_factory() as s, s.begin():
            queued = queue_expiry(s, now_epoch)
    if queued and wake is not None:
        wake()
    return queued


def _timezone(tz: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(tz)
    except zoneinfo.ZoneInfoNotFoundError:
        if tz == "Asia/Shanghai":   # no tz database installed: China has had no DST since 1991
            return reference.CHINA
        raise


def build_scheduler(session_factory: sessionmaker[Session], *, close_time: str = "15:00",
                    tz: str = "Asia/Shanghai", wake: Wake | None = None,
                    expiry_seconds: int = 60, catch_up_days: int = 7) -> BackgroundScheduler:
    """A (not yet started) scheduler with the daily close at `close_time` in `tz` and GTD expiry
    every `expiry_seconds`. In-memory job store: the jobs are defined in code and rebuilt at start.
    `wake` (e.g. `Sequencer.wake`) is called after a job queued commands."""
    try:
        hour, minute = (int(x) for x in close_time.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise ValueError(f"close_time must be HH:MM, not {close_time!r}") from None
    zone = _timezone(tz)
    sched = BackgroundScheduler(timezone=zone, job_defaults={"coalesce": True, "max_instances": 1})
    sched.add_job(run_daily_close, CronTrigger(hour=hour, minute=minute, timezone=zone),
                  args=[session_factory], kwargs={"wake": wake, "catch_up_days": catch_up_days},
                  id="exchange.daily_close",
                  name="reference price, next band and DAY-order expiry", replace_existing=True,
                  misfire_grace_time=3600)
    sched.add_job(run_expiry, IntervalTrigger(seconds=expiry_seconds, timezone=zone),
                  args=[session_factory], kwargs={"wake": wake}, id="exchange.expire_gtd",
                  name="GTD order expiry", replace_existing=True, misfire_grace_time=expiry_seconds)
    from exchange import offset_jobs
    offset_jobs.add_jobs(sched, session_factory, wake=wake)
    return sched


def serve(session_factory: sessionmaker[Session], **kw: Any) -> None:
    """Run the scheduler in the foreground until interrupted (for `flask scheduler run`)."""
    sched = build_scheduler(session_factory, **kw)
    from exchange import rewards_jobs  # imported here: it builds on this module's job_lock
    rewards_jobs.add_jobs(sched, session_factory, sched.timezone, wake=kw.get("wake"))
    sched.start()
    log.info("scheduler started: %s", ", ".join(f"{j.id} next {j.next_run_time}" for j in sched.get_jobs()))
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        sched.shutdown(wait=True)
