"""The bulk writers the sequencer uses (registry.db): COPY and UPDATE .. FROM on PostgreSQL, executemany
elsewhere. Both paths must store exactly what an ORM insert or update would, enums and JSON included."""

from __future__ import annotations

import datetime as dt
from typing import cast

import pytest
from sqlalchemy import Table, select

from exchange import instruments
from exchange.models import CommandStatus, OrderCommand
from registry.db import bulk_insert, bulk_insert_ids, bulk_update
from tests.factories import world

COMMANDS = cast(Table, OrderCommand.__table__)


@pytest.mark.parametrize("n", [3, 40])   # PostgreSQL updates more than 8 rows through a temporary table
def test_bulk_insert_and_update_round_trip(session, n):
    w = world(session)
    inst = instruments.create_instrument(
        session, w.operator.actor, symbol="BULK", name_zh="批量", name_en="Bulk", kind="pooled", vintage_from=2024,
        vintage_to=2024, sector="energy", reference_price=5000)
    session.commit()
    at = dt.datetime(2026, 11, 23, 8, 30, 15, 123456)
    rows = [{"instrument_id": inst.id, "order_id": None, "kind": "expire", "args": {"now": i, "中": "文"},
             "status": CommandStatus.PENDING, "result": None, "created_at": at} for i in range(n)]
    ids = bulk_insert_ids(session, COMMANDS, rows)
    assert len(ids) == n and ids == sorted(ids) and len(set(ids)) == n
    bulk_insert(session, COMMANDS, [rows[0] | {"args": {"now": -1}}])
    bulk_update(session, COMMANDS, [{"id": i, "status": CommandStatus.DONE, "processed_at": at,
                                     "result": [{"kind": "expired", "seq": k}]} for k, i in enumerate(ids)])
    session.commit()
    got = session.execute(select(OrderCommand.id, OrderCommand.args, OrderCommand.status, OrderCommand.result,
                                 OrderCommand.processed_at, OrderCommand.created_at).order_by(OrderCommand.id)).all()
    assert [tuple(r) for r in got[:n]] == [
        (i, {"now": k, "中": "文"}, CommandStatus.DONE, [{"kind": "expired", "seq": k}], at, at)
        for k, i in enumerate(ids)]
    assert tuple(got[n])[1:4] == ({"now": -1}, CommandStatus.PENDING, None)
    bulk_insert(session, COMMANDS, [])
    bulk_update(session, COMMANDS, [])
    assert bulk_insert_ids(session, COMMANDS, []) == []
