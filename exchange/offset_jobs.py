"""Scheduled offset jobs (APScheduler), added to the exchange scheduler by `jobs.build_scheduler`.

- Every 30 s: cancel quotes past their time and give their reservation back to the listing
  (`offsets.expire_due`; reading an order also does it lazily); their open card PaymentIntents are
  canceled in Stripe, and those Stripe did not take the first time are tried again
  (`offset_payments.cancel_abandoned`).
- Every 30 s: finish paid orders not yet retired (`offsets.resume_paid`): a fill interrupted by a
  crash between payment and retirement, or an exchange buy the engine has answered since.

Like the other jobs each takes a PostgreSQL advisory lock and skips if another process holds it;
both are idempotent (every step locks the order and checks its state).
"""

from __future__ import annotations

import logging

from apscheduler.schedulers.base import BaseScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from sqlalchemy.orm import Session, sessionmaker

from exchange import offset_payments, offsets
from exchange.jobs import Wake, job_lock

log = logging.getLogger(__name__)

EXPIRY_LOCK = 3
RESUME_LOCK = 4


def run_offset_expiry(session_factory: sessionmaker[Session]) -> list[int] | None:
    """Cancel expired quotes. Returns the orders cancelled, or None if another process runs it."""
    with job_lock(session_factory, EXPIRY_LOCK) as got:
        if not got:
            return None
        with session_factory() as s, s.begin():
            done = offsets.expire_due(s)
        with session_factory() as s, s.begin():
            canceled = offset_payments.cancel_abandoned(s)
    if canceled:
        log.info("card payments of ended offset orders canceled on retry: %s", canceled)
    if done:
        log.info("offset quotes expired: %s", done)
    return done


def run_resume(session_factory: sessionmaker[Session], wake: Wake | None = None) -> list[int] | None:
    """Finish paid offset orders. Returns the orders that moved on, or None if another process runs it."""
    with job_lock(session_factory, RESUME_LOCK) as got:
        if not got:
            return None
        failures: dict[int, str] = {}
        done = offsets.resume_paid(session_factory, failures=failures)
    if failures:
        log.warning("offset orders that could not be resumed: %s", failures)
    if done:
        log.info("offset orders resumed: %s", done)
        if wake is not None:
            wake()   # an exchange buy may have been placed
    return done


def add_jobs(sched: BaseScheduler, session_factory: sessionmaker[Session], *, wake: Wake | None = None,
             seconds: int = 30) -> None:
    sched.add_job(run_offset_expiry, IntervalTrigger(seconds=seconds), args=[session_factory],
                  id="offsets.expire_quotes", name="offset quote expiry", replace_existing=True,
                  misfire_grace_time=seconds)
    sched.add_job(run_resume, IntervalTrigger(seconds=seconds), args=[session_factory], kwargs={"wake": wake},
                  id="offsets.resume_paid", name="finish paid offset orders", replace_existing=True,
                  misfire_grace_time=seconds)
