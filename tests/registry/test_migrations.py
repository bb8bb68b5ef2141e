"""The migrations build exactly the schema the models declare (tables, columns and their types,
indexes, unique and foreign keys), on the database the suite runs on. The tests run on the
migrated schema, so a model change without its migration would otherwise pass here and fail on
a production database."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

import web  # noqa: F401  (imports every package's models into the metadata)
from registry.db import Base


def test_the_migrated_schema_is_the_models_schema(engine: Engine) -> None:
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert len(Base.metadata.tables) > 40
