"""Units bought from a listing and retired at once for a beneficiary (an offset order's fill).

`deliver_and_retire` records exactly what `units.deliver_blocks` followed by `units.retire_blocks`
record (a transfer from the seller to the buyer with its movements and `units.delivered` audit
record; then a retirement from the buyer's holding account with its movements, `units.retired` audit
record and certificate number; the listed head block carved as `units.carve` does), with the same
checks and errors, but in a handful of Core statements instead of ORM flushes: this is the fill of
every listing-paid offset order, and the ORM path costs ~20 statements and most of the order's time.
tests/offsets/test_delivered_retirement.py pins the rows it writes to the ones the two calls write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from registry import audit
from registry.actors import Actor
from registry.certificates import RetiredRange, RetirementFacts
from registry.db import utcnow
from registry.errors import InsufficientUnits, InvalidInput, NotFound, Suspended
from registry.models import (
    Account,
    AccountKind,
    Batch,
    Block,
    BlockStatus,
    Holder,
    Methodology,
    Movement,
    MovementKind,
    Project,
    Retirement,
    Transfer,
    serial_prefix,
)
from registry.units import _retirement_claim, new_certificate_number

_BLOCKS = cast(Table, Block.__table__)
_TRANSFERS = cast(Table, Transfer.__table__)
_MOVEMENTS = cast(Table, Movement.__table__)
_RETIREMENTS = cast(Table, Retirement.__table__)


@dataclass(frozen=True, slots=True)
class Retired:
    """What the caller needs of the retirement written (the row is not loaded as an object)."""

    id: int
    certificate_number: str
    quantity_kg: int
    transfer_id: int
    serials: tuple[str, ...]
    facts: RetirementFacts   # what its certificate says (`certificates.body_of`), without a query


# Every fill runs these: built once (building and keying a statement costs more than running it),
# of table columns (a statement of ORM attributes is executed through the ORM's compile and result
# layers, ~0.1 ms more each).
_ACCOUNTS_T = cast(Table, Account.__table__)
_HOLDERS = cast(Table, Holder.__table__)
_BATCHES = cast(Table, Batch.__table__)
_PROJECTS = cast(Table, Project.__table__)
_METHODOLOGIES = cast(Table, Methodology.__table__)
_ACCOUNTS = (select(_ACCOUNTS_T.c.kind, _ACCOUNTS_T.c.id, _HOLDERS.c.suspended, _HOLDERS.c.suspension_reason,
                    _HOLDERS.c.name)
             .join(_HOLDERS, _HOLDERS.c.id == _ACCOUNTS_T.c.holder_id)
             .where(_ACCOUNTS_T.c.holder_id == bindparam("h"),
                    _ACCOUNTS_T.c.kind.in_([AccountKind.HOLDING, AccountKind.RETIREMENT])))
# The listed blocks, locked, with their batch numbers, whether their projects are suspended, and
# what the certificate says of their projects and methodologies (the columns of `RetiredRange`).
_LISTED = (select(_BLOCKS.c.id, _BLOCKS.c.batch_id, _BLOCKS.c.project_id, _BLOCKS.c.vintage, _BLOCKS.c.start,
                  _BLOCKS.c.end, _BLOCKS.c.account_id, _BATCHES.c.number, _PROJECTS.c.suspended, _PROJECTS.c.title,
                  _PROJECTS.c.title_en.label("p_title_en"), _PROJECTS.c.city, _METHODOLOGIES.c.code.label("m_code"),
                  _METHODOLOGIES.c.version, _METHODOLOGIES.c.title_zh, _METHODOLOGIES.c.title_en.label("m_title_en"))
           .join(_BATCHES, _BATCHES.c.id == _BLOCKS.c.batch_id).join(_PROJECTS, _PROJECTS.c.id == _BATCHES.c.project_id)
           .join(_METHODOLOGIES, _METHODOLOGIES.c.id == _BATCHES.c.methodology_id)
           .where(_BLOCKS.c.hold_ref == bindparam("ref"), _BLOCKS.c.status == BlockStatus.LISTED)
           .order_by(_BLOCKS.c.vintage, _BLOCKS.c.batch_id, _BLOCKS.c.start).with_for_update(of=_BLOCKS))
_TRANSFER = insert(_TRANSFERS).returning(_TRANSFERS.c.id)
_RETIREMENT = insert(_RETIREMENTS).returning(_RETIREMENTS.c.id)
_RETIRE_HEADS = update(_BLOCKS).where(_BLOCKS.c.id == bindparam("b_id")).values(
    end=bindparam("b_end"), quantity=bindparam("b_qty"), account_id=bindparam("b_sink"), status=BlockStatus.RETIRED,
    hold_ref=None, retirement_id=bindparam("b_retirement"), updated_at=bindparam("b_now"))
_INSERT_BLOCK = insert(_BLOCKS)
_INSERT_MOVEMENTS = insert(_MOVEMENTS)


@dataclass(frozen=True, slots=True)
class BuyerAccounts:
    """What `deliver_and_retire` needs of the buyer: its holding and retirement account ids (None:
    it has none), its suspension and its name (for the certificate). A caller that reads the buyer
    anyway reads it in the same query (`account_columns`, with the holder's `suspended`,
    `suspension_reason` and `name`)."""

    holding_id: int | None
    retirement_id: int | None
    suspended: bool
    suspension_reason: str | None
    name: str

    def checked(self, holder_id: int) -> tuple[int, int]:
        """(holding, retirement) account ids. Raises NotFound, Suspended."""
        if self.holding_id is None:
            raise NotFound(f"holder {holder_id} has no holding account", field="account")
        if self.retirement_id is None:
            raise NotFound(f"holder {holder_id} has no holding or retirement account", field="account")
        if self.suspended:
            raise Suspended(f"holder {holder_id} is suspended: {self.suspension_reason}", field="account")
        return self.holding_id, self.retirement_id


def account_columns(holder_id: Any) -> list[Any]:
    """The buyer's holding and retirement account ids as two labelled columns (holding_id,
    retirement_id) of a query about the holder `holder_id` (a column or parameter)."""
    return [select(_ACCOUNTS_T.c.id).where(_ACCOUNTS_T.c.holder_id == holder_id, _ACCOUNTS_T.c.kind == kind)
            .scalar_subquery().label(f"{kind.value}_id") for kind in (AccountKind.HOLDING, AccountKind.RETIREMENT)]


def _buyer_accounts(session: Session, holder_id: int) -> BuyerAccounts:
    """The buyer's accounts, suspension and name."""
    rows = session.execute(_ACCOUNTS, {"h": holder_id}).all()
    ids = {row.kind: row.id for row in rows}
    first = rows[0] if rows else None
    return BuyerAccounts(ids.get(AccountKind.HOLDING), ids.get(AccountKind.RETIREMENT),
                         bool(first and first.suspended), first.suspension_reason if first else None,
                         first.name if first else "")


def deliver_and_retire(session: Session, buyer: Actor, ref: str, quantity: int, *,
                       memo: str | Callable[[int, str], str], beneficiary: str,
                       jurisdiction: str, purpose: str, footprint_ref: str | None = None,
                       message: str | None = None,
                       audit_into: list[tuple[Actor | None, str, str, int | str, dict[str, Any]]] | None = None,
                       accounts: BuyerAccounts | None = None) -> Retired:
    """Deliver `quantity` kg listed under `ref` (oldest vintage, batch and serial first) to the
    buyer's holding account and retire exactly those serials for `beneficiary`, in the caller's
    transaction. Raises InvalidInput (the claim), NotFound (the buyer's accounts), Suspended (the
    buyer or a project), InsufficientUnits (field quantity_kg: less than `quantity` listed): each
    before the first write (only SELECTs have run then), so a caller needs no savepoint to undo a
    refusal. `audit_into`: the two audit records are appended to it (for `audit.record_each`)
    instead of written here. `accounts`: the buyer's accounts, if the caller read them already.
    `memo`: the transfer's, or a function called once the refusals are past and the retirement is
    written, with its id and certificate number, that returns it (and may write a row of the
    caller's that refers to the retirement: the transfer is written after it)."""
    why = _retirement_claim(buyer, beneficiary, jurisdiction, purpose)
    if quantity <= 0:
        raise InvalidInput("nothing to retire", field="quantity_kg")
    session.flush()   # what the caller changed through the ORM is seen: Core statements do not autoflush
    conn = session.connection()   # its statements are Core: executed on the connection (~10 us less each)
    if accounts is None:
        accounts = _buyer_accounts(session, buyer.holder_id)
    holding, sink = accounts.checked(buyer.holder_id)
    listed = conn.execute(_LISTED, {"ref": ref}).all()
    have = sum(b.end - b.start + 1 for b in listed)
    if quantity > have:
        raise InsufficientUnits(f"{ref} has {have} kg listed, {quantity} kg asked", field="quantity_kg")
    taken, left = [], quantity
    for b in listed:
        if left == 0:
            break
        take = min(left, b.end - b.start + 1)
        taken.append((b, b.start + take - 1))   # the row keeps the head [start, start + take - 1]
        left -= take
    suspended = sorted({b.project_id for b, _ in taken if b.suspended})
    if suspended:
        raise Suspended(f"project {suspended[0]} is suspended", field="serials")
    serials = tuple(f"{serial_prefix(b.project_id, b.vintage, b.number)}-{b.start}-{end}" for b, end in taken)
    now = utcnow()
    number = new_certificate_number()
    beneficiary, jurisdiction = beneficiary.strip(), jurisdiction.strip()
    retirement_id = conn.execute(_RETIREMENT, dict(
        certificate_number=number, holder_id=buyer.holder_id, account_id=sink, quantity_kg=quantity,
        beneficiary=beneficiary, jurisdiction=jurisdiction, purpose=why, footprint_ref=footprint_ref,
        message=message, created_by_id=buyer.user_id, retired_at=now)).scalar_one()
    if callable(memo):
        memo = memo(retirement_id, number)
    transfer_id = conn.execute(_TRANSFER, dict(
        from_account_id=taken[0][0].account_id, to_account_id=holding, quantity_kg=quantity, memo=memo,
        created_by_id=buyer.user_id, created_at=now)).scalar_one()
    # The taken rows keep their heads, now retired to the buyer (listed -> held -> retired, as the
    # movements below say); a row's start never changes, so no insert can collide on (batch, start).
    conn.execute(_RETIRE_HEADS, [{"b_id": b.id, "b_end": end, "b_qty": end - b.start + 1, "b_sink": sink,
                                  "b_retirement": retirement_id, "b_now": now} for b, end in taken])
    last, last_end = taken[-1]
    if last_end < last.end:   # the remainder of the last block stays listed under `ref`, as a new row
        conn.execute(_INSERT_BLOCK, dict(
            batch_id=last.batch_id, project_id=last.project_id, vintage=last.vintage, start=last_end + 1,
            end=last.end, quantity=last.end - last_end, account_id=last.account_id, status=BlockStatus.LISTED,
            hold_ref=ref, updated_at=now))
    conn.execute(_INSERT_MOVEMENTS, [
        {"kind": MovementKind.TRANSFER, "batch_id": b.batch_id, "start": b.start, "end": end,
         "from_account_id": b.account_id, "to_account_id": holding, "transfer_id": transfer_id,
         "retirement_id": None, "at": now} for b, end in taken] + [
        {"kind": MovementKind.RETIREMENT, "batch_id": b.batch_id, "start": b.start, "end": end,
         "from_account_id": holding, "to_account_id": sink, "transfer_id": None,
         "retirement_id": retirement_id, "at": now} for b, end in taken])
    records: list[tuple[Actor | None, str, str, int | str, dict[str, Any]]] = [
        (None, "units.delivered", "transfer", transfer_id, {
            "ref": ref, "to_holder_id": buyer.holder_id, "quantity_kg": quantity, "memo": memo,
            "serials": list(serials)}),
        (buyer, "units.retired", "retirement", retirement_id, {
            "certificate_number": number, "quantity_kg": quantity, "beneficiary": beneficiary,
            "jurisdiction": jurisdiction, "purpose": why.value, "footprint_ref": footprint_ref,
            "serials": list(serials)})]
    if audit_into is None:
        audit.record_each(session, records)
    else:
        audit_into.extend(records)
    facts = RetirementFacts(number, beneficiary, jurisdiction, why.value, message, footprint_ref, quantity, now,
                            buyer.holder_id, accounts.name, [RetiredRange(
                                b.batch_id, b.number, b.project_id, b.vintage, b.start, end, b.title, b.p_title_en,
                                b.city, b.m_code, b.version, b.title_zh, b.m_title_en) for b, end in taken])
    return Retired(retirement_id, number, quantity, transfer_id, serials, facts)
