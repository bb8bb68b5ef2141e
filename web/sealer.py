"""The audit sealer of the embedded default: a daemon thread started with the first request.

In production several workers each run one; `registry.audit.seal` takes a non-blocking advisory
lock, so only one seals at a time and the others skip their turn.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask
from sqlalchemy.orm import sessionmaker

from registry import audit
from web.extensions import db

log = logging.getLogger(__name__)


def start_sealer(app: Flask) -> None:
    interval = float(app.config.get("AUDIT_SEALER_INTERVAL_S") or 0)
    if interval <= 0:
        return
    started = threading.Event()

    @app.before_request
    def _start_once() -> None:
        if started.is_set():
            return
        started.set()
        with app.app_context():
            factory = sessionmaker(bind=db.engine)
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    audit.seal_all(factory)
                except Exception:  # keep sealing after a transient database error
                    log.exception("audit sealer failed; retrying")

        threading.Thread(target=loop, name="audit-sealer", daemon=True).start()


def start_embedded_sequencer(app: Flask) -> None:
    """The embedded default: the exchange's sequencer as a thread of the app, started with the
    first request. Production runs `flask exchange run-engine` instead (EMBEDDED_SEQUENCER=0)."""
    if not app.config.get("EMBEDDED_SEQUENCER"):
        return
    from exchange.sequencer import Sequencer

    started = threading.Event()

    @app.before_request
    def _start_once() -> None:
        if started.is_set():
            return
        started.set()
        with app.app_context():
            seq = Sequencer(sessionmaker(bind=db.engine))
        app.extensions["sequencer"] = seq
        seq.on_applied.append(app.extensions["command_watch"].applied)
        seq.start()
        if app.config.get("EMBEDDED_SCHEDULER"):
            from exchange import jobs

            with app.app_context():
                sched = jobs.build_scheduler(sessionmaker(bind=db.engine), wake=seq.wake,
                                             close_time=app.config.get("CLOSE_TIME", "15:00"))
                from exchange import rewards_jobs
                rewards_jobs.add_jobs(sched, sessionmaker(bind=db.engine), sched.timezone, wake=seq.wake)
            sched.start()
            app.extensions["scheduler"] = sched


def start_command_watch(app: Flask) -> None:
    """Order POSTs wait for the sequencer's result through `exchange.notify.CommandWatch`: woken by
    the embedded sequencer directly, and on PostgreSQL by a LISTEN thread of this process (started
    with the first request, so after gunicorn forks) hearing a sequencer in any process."""
    from exchange import notify

    watch = app.extensions["command_watch"] = notify.CommandWatch()
    started = threading.Event()

    @app.before_request
    def _listen_once() -> None:
        if started.is_set():
            return
        started.set()
        if db.engine.dialect.name == "postgresql":
            url = db.engine.url.render_as_string(hide_password=False)
            app.extensions["command_listener"] = notify.subscribe(notify.dsn_of(url), notify.APPLIED, watch.on_notify)
