"""Telling processes that commands were queued or applied, without polling.

Order entry commits a command and the sequencer should start at once; the sequencer commits a batch
and the requests waiting for those commands should answer at once. On PostgreSQL both go through
LISTEN/NOTIFY: `pg_notify` inside the writer's transaction is delivered only if and when it commits,
so a listener never hears of work it cannot see yet. Each process runs one `Listener` thread (its own
connection) per channel. In one process (the embedded sequencer, and SQLite, which has no NOTIFY)
the sequencer calls `CommandWatch.applied` directly after its commit.

A notification is a hint, never the truth: a waiter that hears nothing still re-reads the database
before its deadline, so a lost notification costs latency, not correctness.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

QUEUED = "tanhui_commands_queued"     # payload: instrument id
APPLIED = "tanhui_commands_applied"   # payload: "<instrument id>:<command id>,<command id>,..."
_MAX_PAYLOAD = 7000                   # PostgreSQL's limit is 8000 bytes


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def queued(session: Session, instrument_id: int) -> None:
    """In the order entry's transaction: wake the sequencer of this instrument when it commits."""
    if _is_pg(session):
        session.execute(select(func.pg_notify(QUEUED, str(instrument_id))))


def applied(session: Session, instrument_id: int, command_ids: Iterable[int]) -> None:
    """In the sequencer's batch transaction: these commands are done once it commits."""
    if _is_pg(session):
        ids = ",".join(map(str, command_ids))
        session.execute(select(func.pg_notify(APPLIED, f"{instrument_id}:{ids if len(ids) < _MAX_PAYLOAD else '*'}")))


class CommandWatch:
    """Requests waiting for their command: `wait(id, is_done, timeout)`; `applied(ids)` wakes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # command id -> (its waiter's event, [applied: named in a notice])
        self._waiting: dict[int, tuple[threading.Event, list[bool]]] = {}

    def applied(self, command_ids: Iterable[int] | None) -> None:
        """These commands are done (None: some are, look again)."""
        woken: list[tuple[threading.Event, list[bool] | None]]
        with self._lock:
            if command_ids is None:
                woken = [(e, None) for e, _ in self._waiting.values()]
            else:
                woken = [(w[0], w[1]) for w in map(self._waiting.get, command_ids) if w is not None]
        for event, named in woken:
            if named is not None:
                named[0] = True
            event.set()

    def on_notify(self, payload: str) -> None:
        _, _, ids = payload.partition(":")
        self.applied(None if ids == "*" else [int(i) for i in ids.split(",") if i])

    def wait(self, command_id: int, is_done: Callable[[], bool], timeout: float, recheck: float = 0.25) -> bool:
        """Wait until the command is applied or `timeout` seconds pass; returns whether it was.
        `is_done` reads the database: once after registering (the notice may have come first),
        after a wake-up that did not name this command, and every `recheck` seconds in case a
        notice was lost. A notice naming the command is trusted: it is sent in the sequencer's
        transaction, so it arrives only once the command is committed as applied."""
        event, named = threading.Event(), [False]
        with self._lock:
            self._waiting[command_id] = (event, named)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if named[0] or is_done():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                event.wait(min(left, recheck))
                event.clear()
        finally:
            with self._lock:
                self._waiting.pop(command_id, None)


class Listener:
    """A daemon thread that LISTENs on PostgreSQL channels with its own connection and hands each
    payload to `callback(channel, payload)`; it reconnects after an error. Web processes share one
    per database through `subscribe`; `flask exchange run-engine` owns one."""

    def __init__(self, dsn: str, channels: Iterable[str], callback: Callable[[str, str], None]) -> None:
        self.dsn = dsn
        self.channels = list(channels)
        self.callback = callback
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    for ch in self.channels:
                        conn.execute(f'LISTEN "{ch}"')
                    self.ready.set()
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            self.callback(n.channel, n.payload)
            except Exception as e:  # noqa: BLE001 - a listener must outlive a database restart
                self.ready.clear()
                log.warning("LISTEN %s: %s; reconnecting in 1 s", self.channels, str(e).splitlines()[0])
                self._stop.wait(1.0)


_shared: dict[tuple[str, str], tuple[Listener, list[weakref.WeakMethod[Callable[[str], None]]]]] = {}
_shared_lock = threading.Lock()


def subscribe(dsn: str, channel: str, callback: Callable[[str], None]) -> Listener:
    """Call the bound method `callback(payload)` for each notice on `channel`, through one listener
    thread (one connection) per database and channel in this process, however many apps subscribe
    (tests make hundreds). Held weakly: a collected subscriber is dropped."""
    with _shared_lock:
        entry = _shared.get((dsn, channel))
        if entry is None:
            subscribers: list[weakref.WeakMethod[Callable[[str], None]]] = []

            def dispatch(_channel: str, payload: str) -> None:
                with _shared_lock:
                    live = [m() for m in subscribers]
                    subscribers[:] = [m for m, f in zip(list(subscribers), live, strict=True) if f is not None]
                for f in live:
                    if f is not None:
                        f(payload)

            entry = _shared[(dsn, channel)] = (Listener(dsn, [channel], dispatch).start(), subscribers)
        entry[1].append(weakref.WeakMethod(callback))  # type: ignore[arg-type]
        return entry[0]


def dsn_of(url: str) -> str:
    """A libpq DSN from a SQLAlchemy URL (postgresql+psycopg://... -> postgresql://...)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
