"""Offset orders read and written with Core statements, the ORM objects kept in step.

Every offset use case locks its order, and the wallet-paid path (quote → pay → fill) updates it
three times: as ORM loads and flushes that is most of its client CPU. Here the row is locked and
read with one prebuilt SELECT (`lock_order`, as `session.get(..., with_for_update={"key_share":
True}, populate_existing=True)` did: the object in the identity map is overwritten, or one is made
and attached without a query) and changed with one UPDATE whose values are set on the object as
committed state (`set_order`), so nothing is flushed for it later. `insert_order` writes a new
order with one INSERT .. RETURNING and attaches the object it returns.
"""

from __future__ import annotations

import functools
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, inspect, select, update
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from exchange.models import CashAccount, CashAccountKind
from exchange.offset_models import OffsetListing, OffsetOrder
from exchange.wallets import CURRENCY
from registry.db import utcnow

ORDERS = cast(Table, OffsetOrder.__table__)
LISTINGS = cast(Table, OffsetListing.__table__)
COLUMNS = tuple(c.key for c in ORDERS.c)
_MAPPER = inspect(OffsetOrder)
_LOCK = select(ORDERS).where(ORDERS.c.id == bindparam("id")).with_for_update(key_share=True)
_INSERT = insert(ORDERS).returning(ORDERS.c.id)
_CASH = cast(Table, CashAccount.__table__)


def _wallet_account(kind: CashAccountKind) -> Any:
    return (select(_CASH.c.id).where(_CASH.c.holder_id == ORDERS.c.holder_id, _CASH.c.kind == kind,
                                     _CASH.c.currency == CURRENCY).scalar_subquery().label(f"_{kind.value}_id"))


# The order locked with its buyer's (available, held) cash account ids: what paying from the wallet
# needs, in one statement (the accounts are not locked here: `wallets.hold` locks them in id order).
_LOCK_WITH_WALLET = (select(ORDERS, _wallet_account(CashAccountKind.AVAILABLE), _wallet_account(CashAccountKind.HELD))
                     .where(ORDERS.c.id == bindparam("id")).with_for_update(of=ORDERS, key_share=True))

assert all(_MAPPER.get_property_by_column(c).key == c.key for c in ORDERS.c), "attributes named as columns"


def attach(session: Session, values: dict[str, Any]) -> OffsetOrder:
    """The session's object of the order whose every column is in `values`, set as loaded: the one
    in the identity map (overwritten, as populate_existing does) or a new one attached to it."""
    key = _MAPPER.identity_key_from_primary_key((values["id"],))
    order = cast(OffsetOrder | None, session.identity_map.get(key))
    if order is None:
        order = OffsetOrder(**values)
        make_transient_to_detached(order)
        session.add(order)
        return order
    for k, v in values.items():
        set_committed_value(order, k, v)
    return order


def refresh_loaded(session: Session, cls: type, obj_id: int, **values: Any) -> None:
    """Set column values just written by a Core statement on the session's object of that row, if
    it has one loaded (as populate_existing would on its next load); nothing is queried."""
    obj = session.identity_map.get(inspect(cls).identity_key_from_primary_key((obj_id,)))
    if obj is not None:
        for k, v in values.items():
            set_committed_value(obj, k, v)


def lock_order(session: Session, order_id: int) -> OffsetOrder | None:
    """Lock the order's row (FOR NO KEY UPDATE) and return its object, fresh; None if there is none.
    Pending ORM changes are flushed first, as the ORM's autoflush would."""
    session.flush()
    row = session.execute(_LOCK, {"id": order_id}).mappings().first()
    return None if row is None else attach(session, dict(row))


def lock_order_and_wallet(session: Session, order_id: int) -> tuple[OffsetOrder | None, tuple[int, int] | None]:
    """`lock_order`, and the (available, held) cash account ids of the order's holder (None if it
    has not both yet), in one statement."""
    session.flush()
    row = session.execute(_LOCK_WITH_WALLET, {"id": order_id}).mappings().first()
    if row is None:
        return None, None
    values = dict(row)
    ids = values.pop("_available_id"), values.pop("_held_id")
    return attach(session, values), (ids if None not in ids else None)


def set_order(session: Session, order: OffsetOrder, **values: Any) -> None:
    """UPDATE the order's row and set the same values on its object as committed state. Like an
    ORM flush, `updated_at` is set to now unless given."""
    values.setdefault("updated_at", utcnow())
    session.execute(_update(tuple(values)), {"o_id": order.id, **{f"o_{k}": v for k, v in values.items()}})
    for k, v in values.items():
        set_committed_value(order, k, v)


@functools.lru_cache(maxsize=64)
def _update(columns: tuple[str, ...]) -> Any:
    """The UPDATE of these columns of one order, built once (parameters o_id and o_<column>)."""
    return update(ORDERS).where(ORDERS.c.id == bindparam("o_id")).values({c: bindparam(f"o_{c}") for c in columns})


def insert_order(session: Session, values: dict[str, Any]) -> OffsetOrder:
    """INSERT a new order (every column but id in `values`) and return its attached object."""
    missing = set(COLUMNS) - {"id"} - set(values)
    assert not missing, f"insert_order needs every column: {sorted(missing)}"
    order_id = session.execute(_INSERT, values).scalar_one()
    return attach(session, {"id": order_id, **values})
