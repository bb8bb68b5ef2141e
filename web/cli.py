"""`flask` subcommands: users, registry checks, the demo seed."""

from __future__ import annotations

import datetime as dt
import json
import sys

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from registry import audit, holders, invariants
from registry.models import User
from web.extensions import db

users_cli = AppGroup("users", help="Users and API tokens.")
registry_cli = AppGroup("registry", help="Registry checks and maintenance.")
demo_cli = AppGroup("demo", help="Demo data.")
exchange_cli = AppGroup("exchange", help="The exchange's engine and market jobs.")
scheduler_cli = AppGroup("scheduler", help="Scheduled jobs (the daily close, order expiry).")


@users_cli.command("create-token")
@click.argument("email")
@click.option("--name", default="cli", help="A label for the token.")
@click.option("--days", type=int, default=None, help="Expire after this many days (default: never).")
def create_token(email: str, name: str, days: int | None) -> None:
    """Create a bearer token for the user EMAIL and print it (shown only once)."""
    with db.session.begin():
        user = db.session.scalar(select(User).where(User.email == email.strip().lower()))
        if user is None:
            raise click.ClickException(f"no user {email}")
        _, token = holders.create_token(db.session, user, name=name,
                                        ttl=dt.timedelta(days=days) if days else None)
    click.echo(token)


@users_cli.command("create")
@click.argument("email")
@click.option("--holder-id", type=int, required=True)
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(["admin", "trader", "viewer"]), default="admin")
@click.option("--password", default=None)
def create_user(email: str, holder_id: int, name: str, role: str, password: str | None) -> None:
    """Create a user of a holder."""
    with db.session.begin():
        user = holders.create_user(db.session, holder_id=holder_id, email=email, name=name, role=role,
                                   password=password)
    click.echo(f"user {user.id} {user.email}")


@registry_cli.command("seal-audit")
def seal_audit() -> None:
    """Chain every unsealed audit record now."""
    n = audit.seal_all(sessionmaker(bind=db.engine))
    click.echo(f"sealed {n} audit records")


@registry_cli.command("verify-audit")
@click.option("--seal/--no-seal", default=True, help="Seal pending records before verifying.")
def verify_audit(seal: bool) -> None:
    """Verify the audit hash chain; exit 1 naming the first broken link."""
    if seal:
        audit.seal_all(sessionmaker(bind=db.engine))
    with db.session.begin():
        report = audit.verify(db.session)
    click.echo(report.describe())
    if not report.ok:
        sys.exit(1)


@registry_cli.command("verify-certificate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--public-key", "public_key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The registry's public key PEM (from /.well-known/tanhui-registry-key.pem). "
                   "Default: this registry's own key.")
def verify_certificate(file: str, public_key: str | None) -> None:
    """Verify a certificate JSON FILE offline; exit 0 if valid, 1 with the reason otherwise."""
    from flask import current_app

    from registry import certificates

    if public_key:
        with open(public_key, "rb") as fh:
            pem = fh.read()
    else:
        own = certificates.existing_key_file(current_app.config, current_app.instance_path)
        if own is None:
            raise click.ClickException("no registry key here: pass --public-key PEM")
        pem = certificates.SigningKey.from_file(own).public_key_pem()
    result = certificates.verify_file(file, pem)
    click.echo(result.describe())
    if not result.ok:
        sys.exit(1)


@registry_cli.command("certificate")
@click.argument("number")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the signed JSON here.")
@click.option("--pdf", "pdf_out", type=click.Path(dir_okay=False), default=None, help="Write the PDF here.")
def certificate(number: str, json_out: str | None, pdf_out: str | None) -> None:
    """Issue the signed certificate of retirement NUMBER (prints the JSON unless --json/--pdf)."""
    from flask import current_app

    from registry import certificates
    from registry.certificate_pdf import render_pdf
    from registry.queries import retirement_by_certificate
    from web.signing import signing_key

    session = db.session()
    with session.begin():
        r, _ = retirement_by_certificate(session, number)
        doc = certificates.issue_document(session, r, signing_key(), current_app.config["PUBLIC_BASE_URL"])
    data = certificates.document_bytes(doc)
    if json_out:
        with open(json_out, "wb") as fh:
            fh.write(data)
    if pdf_out:
        with open(pdf_out, "wb") as fh:
            fh.write(render_pdf(doc, current_app.config.get("CERTIFICATE_FONT_FILE")))
    if not json_out and not pdf_out:
        click.echo(data.decode("utf-8"), nl=False)


@registry_cli.command("public-key")
def public_key_cmd() -> None:
    """Print this registry's certificate public key (PEM) and its key id."""
    from web.signing import signing_key

    key = signing_key()
    click.echo(key.public_key_pem().decode("ascii"), nl=False)
    click.echo(f"# key id {key.key_id}", err=True)


@registry_cli.command("sync-factors")
def sync_factors() -> None:
    """Load the shipped emission-factor table into the database (idempotent; operator rows kept)."""
    from registry import factors

    with db.session.begin():
        result = factors.sync_shipped(db.session)
    click.echo(f"emission factors synced: {result}")


@registry_cli.command("check")
def check() -> None:
    """Check every registry invariant; exit 1 listing the violations."""
    with db.session.begin():
        found = invariants.check(db.session)
    for v in found:
        click.echo(str(v))
    if found:
        click.echo(f"{len(found)} violation(s)")
        sys.exit(1)
    click.echo("registry consistent: all invariants hold")


@demo_cli.command("seed")
@click.option("--tokens-file", type=click.Path(dir_okay=False), default=None,
              help="Write the demo users' API tokens here as JSON.")
def seed(tokens_file: str | None) -> None:
    """Seed realistic demo data (idempotent: does nothing if already seeded)."""
    from web.demo import seed_demo

    result = seed_demo(db.session)
    audit.seal_all(sessionmaker(bind=db.engine))
    click.echo(result.summary)
    if tokens_file and result.tokens:
        with open(tokens_file, "w", encoding="utf-8") as fh:
            json.dump(result.tokens, fh, ensure_ascii=False, indent=2)


@exchange_cli.command("run-engine")
@click.option("--instrument", "symbols", multiple=True, help="Only these instruments (default: all).")
@click.option("--once", is_flag=True, help="Apply what is pending, then exit.")
@click.option("--poll", default=0.05, show_default=True, help="Seconds to wait when idle.")
def run_engine(symbols: tuple[str, ...], once: bool, poll: float) -> None:
    """Run the sequencer: the single writer of the books (one process per instrument group)."""
    import signal

    from exchange import notify
    from exchange.instruments import get_instrument
    from exchange.sequencer import Sequencer

    with db.session.begin():
        ids = [get_instrument(db.session, sym).id for sym in symbols] or None
    seq = Sequencer(sessionmaker(bind=db.engine), ids)
    if once:
        click.echo(f"applied {seq.run_once()} commands")
        return

    def stop(*_: object) -> None:
        seq.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"sequencer running for {list(symbols) or 'all instruments'}; Ctrl-C to stop")
    listener = None
    if db.engine.dialect.name == "postgresql":
        # Order entry NOTIFYs on commit: start at once rather than at the next poll.
        listener = notify.Listener(notify.dsn_of(str(db.engine.url.render_as_string(hide_password=False))),
                                   [notify.QUEUED], lambda _ch, _payload: seq.wake()).start()
    try:
        seq.serve(idle_s=poll)
    finally:
        if listener is not None:
            listener.stop()


@exchange_cli.command("close-day")
@click.option("--day", default=None, help="YYYY-MM-DD (China date). Default: today, as the job does.")
@click.option("--catch-up", default=7, show_default=True, help="Close up to N missed days first.")
def close_day(day: str | None, catch_up: int) -> None:
    """Publish reference prices and next-day bands. Without --day this is the daily close job
    (it also expires DAY orders); with --day it only publishes that day."""
    import datetime as dt

    from exchange import jobs, reference

    factory = sessionmaker(bind=db.engine)
    if day is None:
        results = jobs.run_daily_close(factory, catch_up_days=catch_up)
    else:
        try:
            when = dt.date.fromisoformat(day)
        except ValueError:
            raise click.BadParameter("use YYYY-MM-DD", param_hint="--day") from None
        results = reference.close_all(factory, when, catch_up_days=catch_up)
    if results is None:
        click.echo("another process is running the close; nothing done")
        sys.exit(1)
    for r in results:
        click.echo(json.dumps(r.as_dict(), ensure_ascii=False, default=str))
    if any(not r.ok for r in results):
        sys.exit(1)


@scheduler_cli.command("run")
@click.option("--close-time", default="15:00", show_default=True, help="Daily close, HH:MM in --tz.")
@click.option("--tz", default="Asia/Shanghai", show_default=True)
def scheduler_run(close_time: str, tz: str) -> None:
    """Run the scheduler in the foreground (one per deployment; jobs also take a lock)."""
    from exchange import jobs

    jobs.serve(sessionmaker(bind=db.engine), close_time=close_time, tz=tz)


def register_cli(app: Flask) -> None:
    from web.offset_cli import offsets_cli
    app.cli.add_command(offsets_cli)
    from web.payment_cli import payments_cli
    app.cli.add_command(payments_cli)
    from web.behaviour_cli import COMMANDS as behaviour_commands
    for command in behaviour_commands:
        registry_cli.add_command(command)
    from web import rewards_cli
    for command in rewards_cli.REGISTRY_COMMANDS:
        registry_cli.add_command(command)
    for command in rewards_cli.EXCHANGE_COMMANDS:
        exchange_cli.add_command(command)
    app.cli.add_command(scheduler_cli)
    app.cli.add_command(exchange_cli)
    app.cli.add_command(users_cli)
    app.cli.add_command(registry_cli)
    app.cli.add_command(demo_cli)
