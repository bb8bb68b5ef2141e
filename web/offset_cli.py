"""`flask offsets ...`: the offset jobs by hand (after a crash, or without the scheduler)."""

from __future__ import annotations

import click
from flask.cli import AppGroup
from sqlalchemy.orm import sessionmaker

from web.extensions import db

offsets_cli = AppGroup("offsets", help="Offset orders: quote expiry, resuming paid orders, checks.")


@offsets_cli.command("resume")
def resume() -> None:
    """Finish every paid offset order not yet retired (e.g. after a crash); safe to run twice. An
    order that fails is recorded and the others go on; it is refunded once it can never complete."""
    from flask import current_app

    from exchange import offsets
    from web.payments_setup import configure_payments

    configure_payments(current_app)   # card refunds (a failed fill, what a buy did not spend) need Stripe
    failures: dict[int, str] = {}
    done = offsets.resume_paid(sessionmaker(bind=db.engine), failures=failures)
    click.echo(f"resumed {len(done)} offset order(s): {done}")
    for oid, why in failures.items():
        click.echo(f"could not resume offset order {oid}: {why}")


@offsets_cli.command("expire")
def expire() -> None:
    """Cancel offset quotes past their time and release their reservations; cancel the card
    PaymentIntents of ended orders (retrying those Stripe did not take)."""
    from flask import current_app

    from exchange import offset_payments, offsets
    from web.payments_setup import configure_payments

    configure_payments(current_app)
    with db.session.begin():
        done = offsets.expire_due(db.session)
    with db.session.begin():
        canceled = offset_payments.cancel_abandoned(db.session)
    click.echo(f"expired {len(done)} quote(s): {done}")
    if canceled:
        click.echo(f"canceled {len(canceled)} card payment(s) of ended orders: {canceled}")


@offsets_cli.command("check")
def check() -> None:
    """Check the offset invariants (listings, reservations, payments); exit 1 listing problems."""
    import sys

    from exchange import offsets

    with db.session.begin():
        found = offsets.check(db.session)
    for p in found:
        click.echo(p)
    if found:
        sys.exit(1)
    click.echo("offsets consistent")
