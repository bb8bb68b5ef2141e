"""`flask payments ...`: card refunds that failed in Stripe, listed and resolved by an operator."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup
from sqlalchemy import select

from registry.actors import Actor
from web.extensions import db

payments_cli = AppGroup("payments", help="Card payments: refunds that failed in Stripe.")


def _operator(email: str) -> Actor:
    from registry.models import User

    user = db.session.scalar(select(User).where(User.email == email))
    if user is None:
        click.echo(f"no user {email}", err=True)
        sys.exit(2)
    return Actor.of(user)


@payments_cli.command("refund-failures")
@click.option("--operator", "email", required=True, help="The operator's e-mail (the listing is theirs to see).")
def refund_failures(email: str) -> None:
    """List the card refunds that failed in Stripe and wait for an operator."""
    from exchange import payments

    with db.session.begin():
        found = payments.failed_refunds(db.session, _operator(email))
        for r in found:
            click.echo(f"refund {r.id}: payment {r.payment_id}, {r.amount} fen, failed {r.failed_at:%Y-%m-%d %H:%M} "
                       f"({r.failure_reason}): {r.reason}")
    click.echo(f"{len(found)} failed refund(s) to resolve")


@payments_cli.command("resolve-refund")
@click.argument("refund_id", type=int)
@click.option("--action", type=click.Choice(["retry", "wallet"]), required=True,
              help="retry: refund to the card again; wallet: credit the held money to the holder's wallet.")
@click.option("--operator", "email", required=True, help="The operator's e-mail (recorded in the audit log).")
def resolve_refund(refund_id: int, action: str, email: str) -> None:
    """Resolve a card refund that failed in Stripe."""
    from flask import current_app

    from exchange import payments
    from web.payments_setup import configure_payments

    configure_payments(current_app)
    with db.session.begin():
        r = payments.resolve_failed_refund(db.session, _operator(email), refund_id, action)
        out = (f"refund {refund_id} retried as refund {r.id} ({r.stripe_refund_id}, {r.status})" if action == "retry"
               else f"refund {refund_id}: {r.amount} fen credited to the holder's wallet")
    click.echo(out)
