"""Scheduled jobs of the carbon-inclusion loop, added to the exchange's scheduler
(`exchange.jobs.build_scheduler`):

- programme issuance, daily (01:30 China time): close every due period, offer what was issued,
  fund the rewards pool, pay what waits (`exchange.programme_issuance.run_programme_issuance`);
- rewards settlement, every 10 minutes: programme trade proceeds into the pool, waiting merchant
  payments out (`exchange.rewards_pool.settle`);
- recognition, every 10 minutes: new behaviour batches into the year totals and badges
  (`registry.recognition.refresh`);
- points expiry, daily (00:10 China time): points past their validity expire, first in first out
  (`registry.points.expire_points`).

Each takes its advisory lock (`exchange.jobs.job_lock`) and is idempotent, so a second scheduler
or a rerun changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging

from apscheduler.schedulers.base import BaseScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from sqlalchemy.orm import Session, sessionmaker

from exchange import programme_issuance, rewards_pool
from exchange.jobs import Wake, job_lock
from registry import points, recognition
from registry.rewards import china_today

log = logging.getLogger(__name__)

SETTLEMENT_LOCK = 12
BADGES_LOCK = 13
POINTS_EXPIRY_LOCK = 14


def run_rewards_settlement(session_factory: sessionmaker[Session]) -> tuple[int, int] | None:
    """(fen funded, payments made), or None if another process holds the lock."""
    with job_lock(session_factory, SETTLEMENT_LOCK) as got:
        if not got:
            return None
        with session_factory() as s, s.begin():
            funded, paid = rewards_pool.settle(s)
            return funded.amount, len(paid)


def run_badges(session_factory: sessionmaker[Session]) -> list[tuple[int, str]] | None:
    """The new awards, or None if another process holds the lock."""
    with job_lock(session_factory, BADGES_LOCK) as got:
        if not got:
            return None
        with session_factory() as s, s.begin():
            return recognition.refresh(s)


def run_points_expiry(session_factory: sessionmaker[Session], today: dt.date | None = None) -> int | None:
    """Points expired (on the China date `today`, default now), or None if another process holds the lock."""
    with job_lock(session_factory, POINTS_EXPIRY_LOCK) as got:
        if not got:
            return None
        with session_factory() as s, s.begin():
            return points.expire_points(s, today or china_today())


def add_jobs(sched: BaseScheduler, session_factory: sessionmaker[Session], zone: dt.tzinfo,
             wake: Wake | None = None, every_s: int = 600) -> None:
    sched.add_job(programme_issuance.run_programme_issuance, CronTrigger(hour=1, minute=30, timezone=zone),
                  args=[session_factory], kwargs={"wake": wake}, id="carbon_inclusion.programme_issuance",
                  name="close programme periods, offer issued credits, fund the rewards pool",
                  replace_existing=True, misfire_grace_time=3600)
    sched.add_job(run_rewards_settlement, IntervalTrigger(seconds=every_s, timezone=zone), args=[session_factory],
                  id="carbon_inclusion.rewards_settlement", name="rewards pool settlement", replace_existing=True,
                  misfire_grace_time=every_s)
    sched.add_job(run_badges, IntervalTrigger(seconds=every_s, timezone=zone), args=[session_factory],
                  id="carbon_inclusion.badges", name="award badges", replace_existing=True,
                  misfire_grace_time=every_s)
    sched.add_job(run_points_expiry, CronTrigger(hour=0, minute=10, timezone=zone), args=[session_factory],
                  id="carbon_inclusion.points_expiry", name="points expiry", replace_existing=True,
                  misfire_grace_time=3600)
