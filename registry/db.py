"""Database plumbing shared by every package: the declarative base, column types, SQLite tuning.

Nothing here knows about Flask. `web/` builds its Flask-SQLAlchemy extension on `Base.metadata`.
"""

from __future__ import annotations

import datetime as dt
import enum
import sqlite3
from typing import Any

from sqlalchemy import BigInteger, Enum, Integer, MetaData, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names so Alembic migrations are reproducible on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A 64-bit key on PostgreSQL; on SQLite only INTEGER PRIMARY KEY aliases the rowid (autoincrement).
BigKey = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def str_enum(cls: type[enum.Enum], name: str) -> Enum:
    """A column of an enum's values: a VARCHAR with a CHECK constraint on both databases (not a
    native PostgreSQL enum), so adding a member is a plain migration."""
    return Enum(cls, name=name, native_enum=False, length=32, create_constraint=True,
                values_callable=lambda e: [m.value for m in e], validate_strings=True)


def utcnow() -> dt.datetime:
    """Timezone-naive UTC now; every timestamp in the database is UTC."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def normalise_url(url: str) -> str:
    """Map `postgres://` and `postgresql://` to the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


@event.listens_for(Engine, "connect")
def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    # We issue BEGIN ourselves (below), so pysqlite must not.
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@event.listens_for(Engine, "begin")
def _sqlite_on_begin(conn: Connection) -> None:
    # SQLite has no row locks: SELECT ... FOR UPDATE is ignored. BEGIN IMMEDIATE takes the write
    # lock at the start of every transaction, so two writers can never read the same blocks and then
    # both write them; the cost is that SQLite serialises transactions, which suits the embedded demo.
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
