"""`flask registry close-period` / `award-badges` and `flask exchange rewards-settle` /
`programme-issuance`: the carbon-inclusion loop's jobs, run by hand."""

from __future__ import annotations

import datetime as dt
import sys

import click
from sqlalchemy.orm import sessionmaker

from exchange import programme_issuance, rewards_jobs, rewards_pool
from registry import programme_periods, recognition, rewards
from registry.errors import RegistryError
from web.extensions import db


@click.command("close-period")
@click.argument("programme", type=int)
@click.option("--period", required=True, help="The month to close, YYYY-MM.")
def close_period(programme: int, period: str) -> None:
    """Close PROGRAMME's month: its accepted reductions (g) become a monitoring report in kg, the
    remainder carried to the next period. Closing a closed period changes nothing."""
    factory = sessionmaker(bind=db.engine)
    try:
        with factory() as s, s.begin():
            row, new = programme_periods.close_period(s, None, programme, period)
            click.echo(f"programme {programme} period {period} {'closed' if new else 'was already closed'}: "
                       f"{row.carried_in_g} g carried in + {row.counted_g} g counted = {row.kg} kg "
                       f"+ {row.carried_out_g} g carried out; report {row.report_id or '-'}")
    except RegistryError as e:
        raise click.ClickException(f"{e.field}: {e.message}" if e.field else e.message) from None


@click.command("resubmit-period")
@click.argument("programme", type=int)
@click.option("--period", required=True, help="The closed month whose report was rejected, YYYY-MM.")
@click.option("--note", default=None, help="What was corrected (kept in the report's documents).")
def resubmit_period(programme: int, period: str, note: str | None) -> None:
    """Resubmit PROGRAMME's closed period whose monitoring report was rejected, for the owner: a
    corrected report for the same monitoring period and kg (the grams are never dropped)."""
    factory = sessionmaker(bind=db.engine)
    try:
        with factory() as s, s.begin():
            row = programme_periods.resubmit_period(s, None, programme, period, note=note)
            click.echo(f"programme {programme} period {period} resubmitted as report {row.report_id}: {row.kg} kg")
    except RegistryError as e:
        raise click.ClickException(f"{e.field}: {e.message}" if e.field else e.message) from None


@click.command("award-badges")
def award_badges() -> None:
    """Take in the new complete behaviour batches: year totals and badges (each batch once)."""
    new = rewards_jobs.run_badges(sessionmaker(bind=db.engine))
    click.echo("another process is awarding badges" if new is None else f"{len(new)} badges awarded")


@click.command("rewards-settle")
def rewards_settle() -> None:
    """Move programme trade proceeds into the rewards pool and pay waiting merchant payments."""
    done = rewards_jobs.run_rewards_settlement(sessionmaker(bind=db.engine))
    click.echo("another process is settling" if done is None else f"funded {done[0]} fen; {done[1]} payments made")


@click.command("programme-issuance")
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="China date to run as (default: today).")
def programme_issuance_run(today: dt.datetime | None) -> None:
    """The daily job: close due periods, offer issued credits, settle the rewards pool."""
    run = programme_issuance.run_programme_issuance(sessionmaker(bind=db.engine), today.date() if today else None)
    if run is None:
        click.echo("another process runs the programme issuance")
        return
    for pid, period, kg in run.closed:
        click.echo(f"closed programme {pid} {period}: {kg} kg")
    for pid, period, why in run.failed:
        click.echo(f"NOT closed programme {pid} {period}: {why}")
    click.echo(f"offered {len(run.offered)} orders; funded {run.funded} fen; {run.paid} payments made")


@click.command("check-rewards")
def check_rewards() -> None:
    """Check the mall (every code took its points, no negative stock), the rewards pool's books and
    every programme's carry chain; exit 1 listing violations."""
    with sessionmaker(bind=db.engine)() as s:
        found = (rewards.check(s) + rewards_pool.check(s) + programme_periods.check(s)
                 + recognition.check(s))
    for line in found:
        click.echo(line)
    click.echo(f"{len(found)} violations" if found else "rewards, pool and programme periods: sound")
    if found:
        sys.exit(1)


REGISTRY_COMMANDS = [close_period, award_badges, check_rewards, resubmit_period]
EXCHANGE_COMMANDS = [rewards_settle, programme_issuance_run]
