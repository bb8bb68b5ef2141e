"""Database plumbing shared by every package: the declarative base, column types, SQLite tuning.

Nothing here knows about Flask. `web/` builds its Flask-SQLAlchemy extension on `Base.metadata`.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import sqlite3
import zlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    ColumnElement,
    Enum,
    Integer,
    MetaData,
    Table,
    any_,
    bindparam,
    event,
    insert,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Session

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


# --- bulk writes ---------------------------------------------------------------------------------
# The sequencer settles thousands of trades a batch. On PostgreSQL an executemany runs one statement
# per row on the server; COPY runs one for all (psycopg 3's `cursor.copy`), ~10x less time per row.
# SQLAlchemy has no COPY, hence these few lines; elsewhere the same rows go through executemany.

def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def in_list(session: Session, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN values` for a long list: on PostgreSQL `= ANY(:array)`, one parameter, so the driver
    does not parse a statement of thousands of placeholders (a new text for every length) each time."""
    values = list(values)
    if _is_pg(session):
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


def _enum_value(v: Any) -> Any:
    return v.value if isinstance(v, enum.Enum) else v


# Built once: json.dumps with options builds a new encoder on every call (and the C encoder
# under it; used directly, without the cycle check, for the lists and dicts the sequencer writes).
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)   # CPython's C encoder
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_C_JSON = (_c_make_encoder(None, _JSON.default, json.encoder.encode_basestring, None, ":", ",",
                                       False, False, True) if _c_make_encoder else None)


def _json_text(v: Any) -> Any:
    if v is None:
        return None
    if _C_JSON is not None and isinstance(v, list | dict):
        return "".join(_C_JSON(v, 0))
    return _JSON.encode(v)


# COPY's binary format: nothing to escape or parse, on either side. The value of each column goes
# by the binary dumper of its PostgreSQL type; text-like types (varchar, text, json) all take the
# text dumper, as their binary form is their text. A column of any other type makes the COPY textual.
# The types are read from the server once per process and table (a migration that changes a
# column's type needs a restart, as it does for the ORM's models); a wrong guess fails loudly, as
# the binary format checks every value's length.
_BINARY_AS = {20: 20, 21: 21, 23: 23, 16: 16, 1114: 1114, 1082: 1082, 25: 25, 1043: 25, 114: 25}
_COPY_TYPES: dict[tuple[str, tuple[str, ...]], list[int] | None] = {}


def _copy_types(cursor: Any, table: Table, columns: list[str]) -> list[int] | None:
    key = (table.name, tuple(columns))
    if key not in _COPY_TYPES:
        cursor.execute("SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                       "AND NOT attisdropped", (f'"{table.name}"',))
        oids = dict(cursor.fetchall())
        binary = [_BINARY_AS.get(int(oids[c])) for c in columns]
        _COPY_TYPES[key] = None if None in binary else [int(b) for b in binary if b is not None]
    return _COPY_TYPES[key]


def _copy(session: Session, table: Table, columns: list[str], rows: list[dict[str, Any]], *,
          into: str | None = None) -> None:
    # Enums go by value (as SQLAlchemy's Enum stores them) and JSON columns as JSON text; ints,
    # strings, datetimes and None as they are. Converters are chosen per column once, not per
    # value: this loop is the sequencer's hottest.
    convert = [_json_text if isinstance(table.c[c].type, JSON) else
               _enum_value if isinstance(table.c[c].type, Enum) else None for c in columns]
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    types = _copy_types(cursor, table, columns)
    cols = ", ".join(f'"{c}"' for c in columns)
    plain = not any(convert)
    fmt = " (FORMAT BINARY)" if types else ""
    with cursor.copy(f'COPY "{into or table.name}" ({cols}) FROM STDIN{fmt}') as copy:
        if types:
            copy.set_types(types)
        for row in rows:
            if plain:
                copy.write_row([row[c] for c in columns])
            else:
                copy.write_row([f(row[c]) if f else row[c] for c, f in zip(columns, convert, strict=True)])


def bulk_insert(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows (dicts with the same keys). PostgreSQL: COPY; elsewhere: executemany."""
    if not rows:
        return
    if _is_pg(session):
        _copy(session, table, list(rows[0]), rows)
    else:
        session.execute(insert(table), rows)


def bulk_insert_ids(session: Session, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows and return their new ids in order. PostgreSQL: ids drawn from the table's
    sequence in one query, then COPY; elsewhere: INSERT .. RETURNING."""
    if not rows:
        return []
    if _is_pg(session):
        ids = list(session.scalars(text(
            "SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table.name, "n": len(rows)}))
        _copy(session, table, ["id", *rows[0]], [{"id": i, **r} for i, r in zip(ids, rows, strict=True)])
        return ids
    return list(session.scalars(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows))


def bulk_update(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Set columns of rows by id (dicts with "id" and the same other keys). PostgreSQL: COPY into a
    temporary table and one UPDATE .. FROM; elsewhere: executemany."""
    if not rows:
        return
    cols = [c for c in rows[0] if c != "id"]
    if _is_pg(session) and len(rows) > 8:
        # One temporary table per table and column set, made once per connection, emptied at commit.
        tmp = f"_upd_{table.name}_{zlib.crc32(','.join(cols).encode()):08x}"
        quoted = ", ".join(f'"{c}"' for c in ["id", *cols])
        session.execute(text(f'CREATE TEMP TABLE IF NOT EXISTS "{tmp}" ON COMMIT DELETE ROWS AS '
                             f'SELECT {quoted} FROM "{table.name}" WITH NO DATA'))
        _copy(session, table, ["id", *cols], rows, into=tmp)
        sets = ", ".join(f'"{c}" = u."{c}"' for c in cols)
        session.execute(text(f'UPDATE "{table.name}" t SET {sets} FROM "{tmp}" u WHERE t.id = u.id'))
        session.execute(text(f'TRUNCATE "{tmp}"'))
        return
    stmt = (update(table).where(table.c.id == bindparam("_id"))
            .values(**{c: bindparam("_" + c) for c in cols}))
    session.execute(stmt, [{"_" + k: v for k, v in r.items()} for r in rows])
