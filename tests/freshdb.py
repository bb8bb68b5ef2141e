"""A fresh, migrated database per hypothesis example (property tests build many worlds per test).

PostgreSQL: truncate every table (TRUNCATE skips the row triggers that guard the audit log and final
blocks) and re-enable the guards a tamper test may have disabled. SQLite: a copy of the migrated
template file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

import registry.db  # noqa: F401  (SQLite pragmas and BEGIN IMMEDIATE listeners)


def truncate_pg(engine: Engine) -> None:
    """Empty every table and restart every sequence. DELETE with the session's triggers off (the
    guards of the audit log and final blocks, the foreign keys' checks), not TRUNCATE: the tests'
    tables hold a few rows, and TRUNCATE of 50 tables (new files for each) took 0.3-0.5 s a test,
    about a third of the PostgreSQL suite."""
    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"))]
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        for t in tables:
            conn.execute(text(f'DELETE FROM "{t}"'))
        conn.execute(text("SELECT setval(format('%I.%I', schemaname, sequencename)::regclass, start_value, false) "
                          "FROM pg_sequences WHERE schemaname = 'public'"))
        conn.execute(text("ALTER TABLE audit_records ENABLE TRIGGER USER"))
        conn.execute(text("ALTER TABLE blocks ENABLE TRIGGER USER"))


class FreshDb:
    """One fresh database; `source(template)` must be active (see below)."""

    template: str = ""
    pg_engine: Engine | None = None

    def __init__(self) -> None:
        self.tmpdir: str | None = None
        if FreshDb.pg_engine is not None:
            truncate_pg(FreshDb.pg_engine)
            self.engine = FreshDb.pg_engine
        else:
            self.tmpdir = tempfile.mkdtemp(prefix="tanhui-props-")
            path = os.path.join(self.tmpdir, "db.sqlite3")
            shutil.copyfile(FreshDb.template, path)
            self.engine = create_engine("sqlite:///" + path)
        self.factory = sessionmaker(bind=self.engine, expire_on_commit=False)

    def close(self) -> None:
        if self.tmpdir is not None:
            self.engine.dispose()
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    @staticmethod
    @contextmanager
    def source(template_db: str, on_pg: bool) -> Iterator[None]:
        """While active, FreshDb() copies `template_db` (SQLite path) or truncates it (PostgreSQL URL)."""
        FreshDb.template = template_db
        FreshDb.pg_engine = create_engine(template_db) if on_pg else None
        try:
            yield
        finally:
            if FreshDb.pg_engine is not None:
                FreshDb.pg_engine.dispose()
                FreshDb.pg_engine = None
