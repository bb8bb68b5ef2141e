"""`flask registry` commands of public behaviour: CSV import, points expiry, the ledger check, partners."""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable

import click
from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry import behaviour, partners, points
from registry.actors import Actor
from registry.behaviour_io import import_csv
from registry.behaviour_rules import Rules
from registry.errors import RegistryError
from registry.models import User
from web.extensions import db


@click.command("import-behaviour")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--partner", "partner", required=True, help="The partner's code.")
@click.option("--batch-ref", default=None, help="The batch reference (default: the file's SHA-256).")
@click.option("--chunk-size", type=int, default=20_000, show_default=True)
def import_behaviour(file: str, partner: str, batch_ref: str | None, chunk_size: int) -> None:
    """Import a partner's CSV of behaviour rows (streamed: memory stays flat). Header: event_id, user
    (the partner's id) or user_id, type, started_at, ended_at, mode, distance_km, category, weight_kg.
    Importing the same file again changes nothing; an interrupted import resumes."""
    rules = Rules.from_mapping(current_app.config.get("BEHAVIOUR_RULES"))
    factory = sessionmaker(bind=db.engine)
    with click.progressbar(length=os.path.getsize(file), label="importing", file=sys.stderr) as bar:
        try:
            result = import_csv(factory, file, partner, rules=rules, ref=batch_ref, chunk_size=chunk_size,
                                on_bytes=bar.update)
        except RegistryError as e:
            raise click.ClickException(e.message) from None
    click.echo(f"batch {result.batch_id} ({result.ref}){' already imported: nothing changed' if result.replayed else ''}")
    click.echo(f"rows {result.rows}: accepted {result.accepted}, rejected {result.rejected}; "
               f"reduction {result.reduction_g} g; points {result.points}")
    for reason, n in result.reasons.items():
        click.echo(f"  rejected {reason}: {n}")


@click.command("expire-points")
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Expire points valid only before this day (default: today, UTC).")
def expire_points(today: dt.datetime | None) -> None:
    """The points expiry job (idempotent: run it daily)."""
    day = today.date() if today else dt.datetime.now(dt.UTC).date()
    with db.session.begin():
        n = points.expire_points(db.session, day)
    click.echo(f"expired {n} points before {day}")


@click.command("check-points")
def check_points() -> None:
    """Check the behaviour records and the points ledger; exit 1 listing violations."""
    with db.session.begin():
        found = behaviour.check_ledger(db.session)
    for v in found:
        click.echo(v)
    click.echo("points ledger sound" if not found else f"{len(found)} violations")
    if found:
        sys.exit(1)


def _operator(session: Session, email: str) -> Actor:
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise click.ClickException(f"no user {email}")
    return Actor.of(user)


def _partner_command(action: Callable[[Session, Actor, partners.Partner], str]) -> None:
    """Run `action` as the operator named by --operator on the partner CODE, in one transaction."""
    ctx = click.get_current_context()
    try:
        with db.session.begin():
            actor = _operator(db.session, ctx.params["operator"])
            partner = partners.partner_by_code(db.session, ctx.params["code"])
            click.echo(action(db.session, actor, partner))
    except RegistryError as e:
        raise click.ClickException(f"{e.field}: {e.message}" if e.field else e.message) from None


_OPERATOR = click.option("--operator", required=True, help="The email of the operator's user acting (audited).")


@click.command("partner-deactivate")
@click.argument("code")
@click.option("--reason", required=True)
@_OPERATOR
def partner_deactivate(code: str, reason: str, operator: str) -> None:
    """Deactivate partner CODE: its batches (API and CSV) are refused until it is reactivated."""
    _partner_command(lambda s, actor, p: (
        f"partner {partners.deactivate_partner(s, actor, p.id, reason).code} deactivated"))


@click.command("partner-reactivate")
@click.argument("code")
@click.option("--rotate-secret", is_flag=True, help="Replace its HMAC secret too (printed once).")
@click.option("--reason", default=None)
@_OPERATOR
def partner_reactivate(code: str, rotate_secret: bool, reason: str | None, operator: str) -> None:
    """Reactivate partner CODE (with --rotate-secret after a leaked secret)."""
    def act(s: Session, actor: Actor, p: partners.Partner) -> str:
        _, secret = partners.reactivate_partner(s, actor, p.id, rotate=rotate_secret, reason=reason)
        return f"partner {p.code} reactivated" + (f"; new secret (shown once): {secret}" if secret else "")
    _partner_command(act)


@click.command("partner-rotate-secret")
@click.argument("code")
@_OPERATOR
def partner_rotate_secret(code: str, operator: str) -> None:
    """Replace partner CODE's HMAC secret; the new one is printed once, the old one stops at once."""
    _partner_command(lambda s, actor, p: (
        f"partner {p.code} new secret (shown once): {partners.rotate_secret(s, actor, p.id)}"))


COMMANDS = (import_behaviour, expire_points, check_points, partner_deactivate, partner_reactivate,
            partner_rotate_secret)
