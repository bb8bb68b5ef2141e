"""The hash-chained audit log.

Use cases call `record()` inside their own transaction: an insert with no chain fields, so writers
never wait on each other. `seal()` (one sealer at a time: a PostgreSQL advisory lock, or SQLite's
single writer) then chains the committed records in the order it finds them, which is commit order
for everything committed before it runs. `verify()` walks the chain and names the first broken link.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, func, select, text
from sqlalchemy.orm import Session

from registry.actors import Actor
from registry.db import bulk_insert, utcnow
from registry.models import AuditRecord

GENESIS = "0" * 64
_SEAL_LOCK_KEY = 0x7A6875  # arbitrary, fixed: pg_advisory lock id of the sealer


_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)   # CPython's C encoder
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
# The C encoder that `_CANONICAL.encode` builds on every call, built once (the sequencer encodes
# several payloads per trade); without the cycle check, which audit payloads never need.
_C_CANONICAL = (_c_make_encoder(None, str, json.encoder.encode_basestring, None, ":", ",", True,
                                            False, True) if _c_make_encoder else None)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the same value always gives the same text."""
    if _C_CANONICAL is not None and isinstance(value, dict):
        return "".join(_C_CANONICAL(value, 0))
    return _CANONICAL.encode(value)


def record(session: Session, actor: Actor | None, action: str, entity_type: str,
           entity_id: int | str, payload: dict[str, Any]) -> AuditRecord:
    """Append an unsealed audit record to the caller's transaction."""
    rec = AuditRecord(
        at=utcnow(),
        actor_user_id=actor.user_id if actor else None,
        actor_holder_id=actor.holder_id if actor else None,
        action=action, entity_type=entity_type, entity_id=str(entity_id),
        payload=canonical_json(payload),
    )
    session.add(rec)
    return rec


def record_many(session: Session, rows: list[tuple[str, str, int | str, dict[str, Any]]],
                actor: Actor | None = None) -> None:
    """Append many unsealed records (action, entity type, entity id, payload) with one INSERT: the
    sequencer's settlement writes several per trade and must not pay an ORM flush for each."""
    if not rows:
        return
    now = utcnow()
    user_id, holder_id = (actor.user_id, actor.holder_id) if actor else (None, None)
    bulk_insert(session, cast(Table, AuditRecord.__table__), [
        {"at": now, "actor_user_id": user_id, "actor_holder_id": holder_id, "action": action,
         "entity_type": entity_type, "entity_id": str(entity_id), "payload": canonical_json(payload)}
        for action, entity_type, entity_id, payload in rows])


def record_each(session: Session, rows: list[tuple[Actor | None, str, str, int | str, dict[str, Any]]]) -> None:
    """`record_many` with an actor per record (actor, action, entity type, entity id, payload): the
    records of one use case that several actors sign (the fill of an offset order) in one INSERT."""
    if not rows:
        return
    now = utcnow()
    bulk_insert(session, cast(Table, AuditRecord.__table__), [
        {"at": now, "actor_user_id": actor.user_id if actor else None,
         "actor_holder_id": actor.holder_id if actor else None, "action": action, "entity_type": entity_type,
         "entity_id": str(entity_id), "payload": canonical_json(payload)}
        for actor, action, entity_type, entity_id, payload in rows])


def link_hash(rec: AuditRecord, chain_seq: int, prev_hash: str) -> str:
    body = canonical_json({
        "seq": chain_seq, "id": rec.id, "at": rec.at.isoformat(timespec="microseconds"),
        "user": rec.actor_user_id, "holder": rec.actor_holder_id, "action": rec.action,
        "entity": [rec.entity_type, rec.entity_id], "payload": rec.payload,
    })
    return hashlib.sha256((prev_hash + "\n" + body).encode()).hexdigest()


def seal(session: Session, limit: int = 5000) -> int:
    """Chain up to `limit` unsealed records; returns how many. The caller commits.

    Never blocks: if another sealer holds the lock, returns 0 and leaves the work to it.
    """
    if session.get_bind().dialect.name == "postgresql":
        got = session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _SEAL_LOCK_KEY}).scalar()
        if not got:
            return 0
    head = session.execute(
        select(AuditRecord.chain_seq, AuditRecord.hash)
        .where(AuditRecord.chain_seq.is_not(None))
        .order_by(AuditRecord.chain_seq.desc()).limit(1)
    ).first()
    seq, prev = (head[0], head[1]) if head else (0, GENESIS)
    pending = session.scalars(
        select(AuditRecord).where(AuditRecord.chain_seq.is_(None)).order_by(AuditRecord.id).limit(limit)
    ).all()
    now = utcnow()
    for rec in pending:
        seq += 1
        rec.chain_seq, rec.prev_hash = seq, prev
        rec.hash = prev = link_hash(rec, seq, prev)
        rec.sealed_at = now
    session.flush()
    return len(pending)


def seal_all(session_factory: Any) -> int:
    """Seal everything pending, committing every chunk. For CLI and the background sealer."""
    total = 0
    while True:
        with session_factory() as session, session.begin():
            n = seal(session)
        total += n
        if n == 0:
            return total


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    sealed: int
    unsealed: int
    broken_seq: int | None = None
    broken_id: int | None = None
    reason: str | None = None

    def describe(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.sealed} sealed records, {self.unsealed} awaiting the sealer"
        return (f"audit chain BROKEN at link {self.broken_seq} (record id {self.broken_id}): {self.reason}; "
                f"{self.sealed} links checked before it")


def _sealed(session: Session) -> Iterator[AuditRecord]:
    stmt = select(AuditRecord).where(AuditRecord.chain_seq.is_not(None)).order_by(AuditRecord.chain_seq)
    # populate_existing: never trust what this session cached, re-read every row from the database.
    yield from session.scalars(stmt.execution_options(yield_per=2000, populate_existing=True))


def verify(session: Session) -> ChainReport:
    """Recompute every link. The first record whose position, predecessor or content does not match
    its stored hash is reported; records after it are not trusted."""
    unsealed = session.scalar(select(func.count()).where(AuditRecord.chain_seq.is_(None))) or 0
    expected_seq, prev, checked = 1, GENESIS, 0
    for rec in _sealed(session):
        seq = rec.chain_seq or 0
        if seq != expected_seq:
            return ChainReport(False, checked, unsealed, expected_seq, rec.id,
                               f"link {expected_seq} is missing (next is {seq}): a record was deleted")
        if rec.prev_hash != prev:
            return ChainReport(False, checked, unsealed, seq, rec.id,
                               "prev_hash does not match the previous link's hash")
        if rec.hash != link_hash(rec, seq, prev):
            return ChainReport(False, checked, unsealed, seq, rec.id,
                               "content does not match its hash: the record was altered")
        prev = rec.hash
        expected_seq += 1
        checked += 1
    return ChainReport(True, checked, unsealed)


def history(session: Session, entity_type: str, entity_id: int | str) -> list[AuditRecord]:
    return list(session.scalars(
        select(AuditRecord).where(AuditRecord.entity_type == entity_type,
                                  AuditRecord.entity_id == str(entity_id)).order_by(AuditRecord.id)))


def as_dict(rec: AuditRecord) -> dict[str, Any]:
    at: dt.datetime = rec.at
    return {"id": rec.id, "at": at.isoformat() + "Z", "action": rec.action,
            "entity_type": rec.entity_type, "entity_id": rec.entity_id,
            "actor_user_id": rec.actor_user_id, "actor_holder_id": rec.actor_holder_id,
            "payload": json.loads(rec.payload), "chain_seq": rec.chain_seq, "hash": rec.hash}
