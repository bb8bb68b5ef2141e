"""Fixtures. Integration tests run on SQLite by default and on PostgreSQL when DATABASE_URL names it.

The schema is made only by the Alembic migrations: once per run into a template (SQLite: a file that
each test copies; PostgreSQL: the database itself, truncated before each test). After every test that
used the database, every registry invariant is checked (`registry.invariants`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from exchange import wallets
from registry import audit, invariants
from registry.db import normalise_url
from tests.freshdb import truncate_pg
from web.config import TestConfig

PG_URL = os.environ.get("DATABASE_URL", "")
ON_PG = PG_URL.startswith(("postgres://", "postgresql"))


def _migrate(url: str) -> None:
    from flask_migrate import upgrade

    from web import create_app

    app = create_app({**_cfg(url)})
    with app.app_context():
        upgrade()
    from web.extensions import db
    with app.app_context():
        db.engine.dispose()


def _cfg(url: str) -> dict[str, object]:
    return {k: getattr(TestConfig, k) for k in dir(TestConfig) if k.isupper()} | {
        "SQLALCHEMY_DATABASE_URI": url}


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    if ON_PG:
        url = normalise_url(PG_URL)
        _migrate(url)
        return url
    path = tmp_path_factory.mktemp("db") / "template.sqlite3"
    _migrate(f"sqlite:///{path}")
    return str(path)


def _truncate_pg(url: str) -> None:
    engine = create_engine(url)
    truncate_pg(engine)
    engine.dispose()


@pytest.fixture
def db_url(template_db: str, tmp_path: Path) -> str:
    """A migrated, empty database for this test."""
    if ON_PG:
        _truncate_pg(template_db)
        return template_db
    path = tmp_path / "test.sqlite3"
    shutil.copyfile(template_db, path)
    return f"sqlite:///{path}"


@pytest.fixture
def app(db_url: str, request: pytest.FixtureRequest) -> Iterator[Flask]:
    from web import create_app
    from web.extensions import db

    app = create_app(_cfg(db_url))
    with app.app_context():
        yield app
        db.session.remove()
        if "no_invariants" not in request.keywords:
            factory = sessionmaker(bind=db.engine)
            audit.seal_all(factory)
            with factory() as s, s.begin():
                found = [str(v) for v in invariants.check(s)] + wallets.check(s)
            assert not found, "registry invariants violated after the test:\n" + "\n".join(map(str, found))
        db.engine.dispose()


@pytest.fixture
def client(app: Flask):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def runner(app: Flask):  # type: ignore[no-untyped-def]
    return app.test_cli_runner()


@pytest.fixture
def engine(app: Flask):  # type: ignore[no-untyped-def]
    from web.extensions import db
    return db.engine


@pytest.fixture
def session_factory(engine) -> sessionmaker[Session]:  # type: ignore[no-untyped-def]
    return sessionmaker(bind=engine, expire_on_commit=False)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A plain SQLAlchemy session; the test commits what it wants kept."""
    with session_factory() as s:
        yield s
        s.rollback()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_pg = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL")
    for item in items:
        if "postgres" in item.keywords and not ON_PG:
            item.add_marker(skip_pg)
