"""Moving units: transfer, retirement and cancellation of serial blocks.

Every mover locks the source account row first (SELECT ... FOR UPDATE; BEGIN IMMEDIATE on SQLite),
so two writers never pick the same blocks; the blocks themselves are locked too. A partial move
splits a block: the row keeps the moved range and new rows keep the rest, so ranges never overlap,
never leave gaps and always add up to the batch (invariants 1 and 2). Retired and cancelled blocks
are never selected again (invariant 3).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import ColumnElement, Table, literal, select, tuple_
from sqlalchemy.orm import Session

from registry import audit
from registry.actors import Actor
from registry.db import bulk_insert, bulk_insert_ids, bulk_update, in_list, utcnow
from registry.errors import Conflict, InsufficientUnits, InvalidInput, NotFound, Suspended
from registry.holders import account_by_number, account_of
from registry.models import (
    Account,
    AccountKind,
    Batch,
    Block,
    BlockStatus,
    Cancellation,
    Holder,
    HolderKind,
    Methodology,
    Movement,
    MovementKind,
    Project,
    Retirement,
    RetirementPurpose,
    Transfer,
)
from registry.serials import SerialRange, parse_serial

_PICK_CHUNK = 256


@dataclass(frozen=True, slots=True)
class Selection:
    """What to move: a quantity (oldest vintage first, optionally of one project or vintage), or
    named serial ranges. Exactly one of `quantity_kg` and `serials`."""

    quantity_kg: int | None = None
    serials: Sequence[str] | None = None
    project_id: int | None = None
    vintage: int | None = None
    # Further conditions on Block, Project and Methodology (e.g. what an instrument can deliver).
    where: tuple[ColumnElement[bool], ...] = ()

    def validate(self) -> None:
        if (self.quantity_kg is None) == (not self.serials):
            raise InvalidInput("give either quantity_kg or serials", field="quantity_kg",
                               code="quantity_or_serials")
        if self.quantity_kg is not None and (
                not isinstance(self.quantity_kg, int) or isinstance(self.quantity_kg, bool)
                or self.quantity_kg <= 0):
            raise InvalidInput("quantity_kg must be a positive integer (kg)", field="quantity_kg")
        if self.serials is not None and not isinstance(self.serials, list | tuple):
            raise InvalidInput("serials must be a list", field="serials")


def lock_account(session: Session, account_id: int, *, field: str = "account",
                 check_suspension: bool = True) -> Account:
    # FOR NO KEY UPDATE: it does not block the KEY SHARE locks that foreign-key checks take, so two
    # opposite transfers between the same holders cannot deadlock on each other's account rows.
    acc = session.get(Account, account_id, with_for_update={"key_share": True})
    if acc is None:
        raise NotFound(f"no account {account_id}", field=field)
    if check_suspension:
        holder = session.get(Holder, acc.holder_id)
        assert holder is not None
        if holder.suspended:
            raise Suspended(f"holder {holder.id} is suspended: {holder.suspension_reason}", field=field)
    return acc


def carve(session: Session, block: Block, start: int, end: int) -> Block:
    """Return `block` narrowed to [start, end]; the remainders become new blocks in the same account
    and status. Raises AssertionError if [start, end] is not inside the block (a programming error)."""
    assert block.start <= start <= end <= block.end, (block.start, block.end, start, end)
    if (start, end) == (block.start, block.end):
        return block
    pieces = [(s, e) for s, e in ((block.start, start - 1), (end + 1, block.end)) if s <= e]
    block.start, block.end, block.quantity = start, end, end - start + 1
    session.flush()  # the row gives up its old start before a remainder takes it (unique batch, start)
    for s, e in pieces:
        session.add(Block(batch_id=block.batch_id, project_id=block.project_id, vintage=block.vintage,
                          start=s, end=e, quantity=e - s + 1, account_id=block.account_id,
                          status=block.status, hold_ref=block.hold_ref))
    return block


def _pick_quantity(session: Session, account: Account, sel: Selection, *,
                   allow_suspended: bool = False) -> list[Block]:
    """Lock and carve held blocks of `account` adding up to exactly `sel.quantity_kg`, oldest vintage
    first, skipping suspended projects. Keyset pagination over the account's pick index keeps the cost
    independent of how many blocks the registry or the account holds."""
    assert sel.quantity_kg is not None
    remaining = sel.quantity_kg
    picked: list[Block] = []
    after: tuple[int, int, int] | None = None
    # Suspended projects are few: exclude them by id rather than joining projects, which keeps the
    # plan on the ordered pick index however many projects there are.
    suspended = [] if allow_suspended else list(session.scalars(select(Project.id).where(Project.suspended)))
    chunk = min(4, _PICK_CHUNK)   # most moves need one or two blocks: lock few, then widen
    while remaining > 0:
        stmt = (select(Block).where(Block.account_id == account.id, Block.status == BlockStatus.HELD)
                .order_by(Block.vintage, Block.batch_id, Block.start)
                .limit(chunk).with_for_update(of=Block))
        chunk = min(chunk * 4, _PICK_CHUNK)
        if suspended:
            stmt = stmt.where(Block.project_id.not_in(suspended))
        if sel.where:
            stmt = (stmt.join(Project, Project.id == Block.project_id)
                    .join(Methodology, Methodology.id == Project.methodology_id).where(*sel.where))
        if sel.project_id is not None:
            stmt = stmt.where(Block.project_id == sel.project_id)
        if sel.vintage is not None:
            stmt = stmt.where(Block.vintage == sel.vintage)
        if after is not None:
            stmt = stmt.where(tuple_(Block.vintage, Block.batch_id, Block.start) > tuple_(*map(literal, after)))
        rows = session.scalars(stmt).all()
        if not rows:
            have = sel.quantity_kg - remaining
            raise InsufficientUnits(
                f"only {have} kg available to move, {sel.quantity_kg} kg asked", field="quantity_kg")
        for block in rows:
            take = min(remaining, block.quantity)
            picked.append(carve(session, block, block.start, block.start + take - 1))
            remaining -= take
            if remaining == 0:
                break
        last = rows[-1]
        after = (last.vintage, last.batch_id, last.start)
    return picked


def _parse_ranges(serials: Sequence[str]) -> list[SerialRange]:
    ranges = [parse_serial(s, field=f"serials.{i}") for i, s in enumerate(serials)]
    for i, a in enumerate(ranges):
        for j in range(i):
            if a.overlaps(ranges[j]):
                raise InvalidInput(f"overlaps serials.{j}", field=f"serials.{i}", code="overlapping_ranges")
    return ranges


def _pick_serials(session: Session, account: Account, serials: Sequence[str], *,
                  allow_suspended: bool = False) -> list[Block]:
    """Lock and carve exactly the named ranges; each must lie wholly in held blocks of `account`."""
    picked: list[Block] = []
    for i, rng in enumerate(_parse_ranges(serials)):
        field = f"serials.{i}"
        batch = session.scalar(select(Batch).where(Batch.project_id == rng.project_id,
                                                   Batch.number == rng.batch_number))
        if batch is None or batch.vintage != rng.vintage:
            raise NotFound("no such issuance batch", field=field, code="unknown_serial")
        if rng.end > batch.quantity_kg:
            raise NotFound(f"batch has serials 1..{batch.quantity_kg}", field=field, code="unknown_serial")
        # Look before locking: a range held by someone else is refused without locking their blocks
        # (two such requests crossing in opposite directions could otherwise deadlock).
        _refuse_unheld(session, account, batch.id, rng.start, rng.end, field)
        blocks = _covering(session, batch.id, rng.start, rng.end, field)
        for b in blocks:
            if b.account_id != account.id or b.status is not BlockStatus.HELD:
                raise InsufficientUnits(
                    f"serials {b.start}-{b.end} of this batch are not held in your account",
                    field=field, code="not_held")
        project = session.get(Project, batch.project_id)
        if project is not None and project.suspended and not allow_suspended:
            raise Suspended(f"project {project.id} is suspended", field=field)
        for b in blocks:
            picked.append(carve(session, b, max(b.start, rng.start), min(b.end, rng.end)))
    return picked


def _refuse_unheld(session: Session, account: Account, batch_id: int, start: int, end: int, field: str) -> None:
    stmt = select(Block.start, Block.end).where(
        Block.batch_id == batch_id, Block.end >= start, Block.start <= end,
        (Block.account_id != account.id) | (Block.status != BlockStatus.HELD)).limit(1)
    head = session.scalar(select(Block.start).where(Block.batch_id == batch_id, Block.start <= start)
                          .order_by(Block.start.desc()).limit(1))
    if head is not None:
        stmt = stmt.where(Block.start >= head)   # stay on the (batch, start) index
    other = session.execute(stmt).first()
    if other is not None:
        raise InsufficientUnits(f"serials {other[0]}-{other[1]} of this batch are not held in your account",
                                field=field, code="not_held")


def _covering(session: Session, batch_id: int, start: int, end: int, field: str) -> list[Block]:
    """Lock the blocks of a batch that cover [start, end], exactly and contiguously.

    A concurrent mover (of another account) may carve the head block while we wait for its lock;
    PostgreSQL then re-checks the row, may drop it, and this statement cannot see the remainder
    that took its place. A fresh statement can: so retry until the cover is complete."""
    for _ in range(5):
        first = session.scalar(select(Block).where(Block.batch_id == batch_id, Block.start <= start)
                               .order_by(Block.start.desc()).limit(1).with_for_update()
                               .execution_options(populate_existing=True))
        rest = session.scalars(select(Block).where(Block.batch_id == batch_id, Block.start > start,
                                                   Block.start <= end)
                               .order_by(Block.start).with_for_update()
                               .execution_options(populate_existing=True)).all()
        blocks = ([first] if first is not None else []) + list(rest)
        if blocks and blocks[0].start <= start and blocks[-1].end >= end and all(
                a.end + 1 == b.start for a, b in zip(blocks, blocks[1:], strict=False)):
            return blocks
    raise Conflict("these serials are being moved by someone else; retry", field=field, code="concurrent_change")


def _pick(session: Session, account: Account, sel: Selection, *,
          allow_suspended: bool = False) -> list[Block]:
    sel.validate()
    if sel.quantity_kg is not None:
        return _pick_quantity(session, account, sel, allow_suspended=allow_suspended)
    assert sel.serials is not None
    return _pick_serials(session, account, sel.serials, allow_suspended=allow_suspended)


def _move(session: Session, blocks: list[Block], to: Account, status: BlockStatus,
          kind: MovementKind, **link: int) -> list[Movement]:
    now = utcnow()
    moves = []
    for b in blocks:
        moves.append(Movement(kind=kind, batch_id=b.batch_id, start=b.start, end=b.end,
                              from_account_id=b.account_id, to_account_id=to.id, at=now, **link))
        b.account_id = to.id
        b.status = status
        if "retirement_id" in link:
            b.retirement_id = link["retirement_id"]
        if "cancellation_id" in link:
            b.cancellation_id = link["cancellation_id"]
    session.add_all(moves)
    return moves


def _ranges_payload(session: Session, blocks: list[Block]) -> list[str]:
    return [b.serial() for b in blocks]


def transfer(session: Session, actor: Actor, *, to_account: str, selection: Selection,
             memo: str | None = None) -> Transfer:
    """Move units from the actor's holding account to another holding account (by number).
    Raises InsufficientUnits, Suspended, InvalidInput, NotFound."""
    actor.require_can_move_units()
    selection.validate()
    dest = account_by_number(session, to_account)
    if dest.kind is not AccountKind.HOLDING:
        raise InvalidInput("units can only be transferred into a holding account", field="to_account")
    source = account_of(session, actor.holder_id)
    if dest.id == source.id:
        raise InvalidInput("source and destination are the same account", field="to_account")
    dest_holder = session.get(Holder, dest.holder_id)
    if dest_holder is not None and dest_holder.suspended:
        raise Suspended("the receiving holder is suspended", field="to_account")
    source = lock_account(session, source.id, field="account")
    blocks = _pick(session, source, selection)
    qty = sum(b.quantity for b in blocks)
    t = Transfer(from_account_id=source.id, to_account_id=dest.id, quantity_kg=qty, memo=memo,
                 created_by_id=actor.user_id)
    session.add(t)
    session.flush()
    _move(session, blocks, dest, BlockStatus.HELD, MovementKind.TRANSFER, transfer_id=t.id)
    audit.record(session, actor, "units.transferred", "transfer", t.id,
                 {"from": source.number, "to": dest.number, "quantity_kg": qty, "memo": memo,
                  "serials": _ranges_payload(session, blocks)})
    return t


def new_certificate_number() -> str:
    # Random rather than sequential: no global counter for concurrent retirements to queue on.
    return f"THC-{utcnow().year}-{secrets.token_hex(5).upper()}"


def retire(session: Session, actor: Actor, *, selection: Selection, beneficiary: str, jurisdiction: str,
           purpose: str, footprint_ref: str | None = None, message: str | None = None) -> Retirement:
    """Retire units of the actor's holding account for `beneficiary`; final. Several batches may be
    retired in one call. Returns the retirement with its unique certificate number."""
    why = _retirement_claim(actor, beneficiary, jurisdiction, purpose)
    selection.validate()
    source = lock_account(session, account_of(session, actor.holder_id).id)
    sink = account_of(session, actor.holder_id, AccountKind.RETIREMENT)
    blocks = _pick(session, source, selection)
    return _retire(session, actor, blocks, sink, beneficiary=beneficiary, jurisdiction=jurisdiction, purpose=why,
                   footprint_ref=footprint_ref, message=message)


def _retirement_claim(actor: Actor, beneficiary: str, jurisdiction: str, purpose: str) -> RetirementPurpose:
    """Check who may retire and what the claim says; the purpose parsed."""
    actor.require_can_move_units()
    if not beneficiary or not beneficiary.strip():
        raise InvalidInput("beneficiary is required", field="beneficiary")
    if not jurisdiction or not jurisdiction.strip():
        raise InvalidInput("jurisdiction (city or district of the claim) is required", field="jurisdiction")
    try:
        return RetirementPurpose(purpose)
    except ValueError:
        raise InvalidInput(f"purpose must be one of {[p.value for p in RetirementPurpose]}",
                           field="purpose") from None


def _retire(session: Session, actor: Actor, blocks: list[Block], sink: Account, *, beneficiary: str,
            jurisdiction: str, purpose: RetirementPurpose, footprint_ref: str | None,
            message: str | None) -> Retirement:
    qty = sum(b.quantity for b in blocks)
    r = Retirement(certificate_number=new_certificate_number(), holder_id=actor.holder_id,
                   account_id=sink.id, quantity_kg=qty, beneficiary=beneficiary.strip(),
                   jurisdiction=jurisdiction.strip(), purpose=purpose, footprint_ref=footprint_ref,
                   message=message, created_by_id=actor.user_id, retired_at=utcnow())
    session.add(r)
    session.flush()
    _move(session, blocks, sink, BlockStatus.RETIRED, MovementKind.RETIREMENT, retirement_id=r.id)
    audit.record(session, actor, "units.retired", "retirement", r.id,
                 {"certificate_number": r.certificate_number, "quantity_kg": qty,
                  "beneficiary": r.beneficiary, "jurisdiction": r.jurisdiction, "purpose": purpose.value,
                  "footprint_ref": footprint_ref, "serials": _ranges_payload(session, blocks)})
    return r


def retire_blocks(session: Session, actor: Actor, blocks: Sequence[Block], *, beneficiary: str, jurisdiction: str,
                  purpose: str, footprint_ref: str | None = None, message: str | None = None) -> Retirement:
    """Retire exactly `blocks` for `beneficiary`, as `retire` does (same checks, movements, audit
    record and certificate number), when the caller already holds them: blocks of the actor's
    holding account that it moved there and locked in this transaction (what `deliver_blocks`
    returns). They are not looked up again by serial. Raises InvalidInput, Suspended (the holder
    or a project), InsufficientUnits (code not_held: a block not held in the actor's holding account)."""
    why = _retirement_claim(actor, beneficiary, jurisdiction, purpose)
    if not blocks:
        raise InvalidInput("nothing to retire", field="quantity_kg")
    rows = session.execute(select(Account, Holder.suspended, Holder.suspension_reason)
                           .join(Holder, Holder.id == Account.holder_id)
                           .where(Account.holder_id == actor.holder_id,
                                  Account.kind.in_([AccountKind.HOLDING, AccountKind.RETIREMENT]))).all()
    accounts = {a.kind: a for a, _, _ in rows}
    source, sink = accounts.get(AccountKind.HOLDING), accounts.get(AccountKind.RETIREMENT)
    if source is None or sink is None:
        raise NotFound(f"holder {actor.holder_id} has no holding or retirement account", field="account")
    if rows[0].suspended:
        raise Suspended(f"holder {actor.holder_id} is suspended: {rows[0].suspension_reason}", field="account")
    for b in blocks:
        if b.account_id != source.id or b.status is not BlockStatus.HELD:
            raise InsufficientUnits(f"serials {b.serial()} are not held in your account", field="serials",
                                    code="not_held")
    suspended = session.scalar(select(Project.id).where(
        Project.id.in_(sorted({b.project_id for b in blocks})), Project.suspended).limit(1))
    if suspended is not None:
        raise Suspended(f"project {suspended} is suspended", field="serials")
    return _retire(session, actor, list(blocks), sink, beneficiary=beneficiary, jurisdiction=jurisdiction,
                   purpose=why, footprint_ref=footprint_ref, message=message)


def cancel(session: Session, actor: Actor, *, from_account: str, selection: Selection,
           reason: str) -> Cancellation:
    """Operator only: take units out of circulation (e.g. a correction), with a reason. Allowed on
    suspended holders and projects: that is what corrections are for."""
    actor.require_kind(HolderKind.OPERATOR)
    if not reason or not reason.strip():
        raise InvalidInput("a reason is required", field="reason")
    selection.validate()
    source = account_by_number(session, from_account, field="from_account")
    if source.kind is not AccountKind.HOLDING:
        raise InvalidInput("units are cancelled from a holding account", field="from_account")
    source = lock_account(session, source.id, field="from_account", check_suspension=False)
    sink = account_of(session, actor.holder_id, AccountKind.CANCELLATION)
    blocks = _pick(session, source, selection, allow_suspended=True)
    qty = sum(b.quantity for b in blocks)
    c = Cancellation(from_account_id=source.id, to_account_id=sink.id, quantity_kg=qty,
                     reason=reason.strip(), created_by_id=actor.user_id)
    session.add(c)
    session.flush()
    _move(session, blocks, sink, BlockStatus.CANCELLED, MovementKind.CANCELLATION, cancellation_id=c.id)
    audit.record(session, actor, "units.cancelled", "cancellation", c.id,
                 {"from": source.number, "quantity_kg": qty, "reason": c.reason,
                  "serials": _ranges_payload(session, blocks)})
    return c


def ensure_movable(block: Block) -> None:
    """Guard for callers outside this module (the exchange): final blocks never move."""
    if block.is_final:
        raise Conflict(f"block {block.id} is {block.status.value} and cannot move", code="final")


def lock_units(session: Session, holder_id: int, selection: Selection, ref: str) -> list[Block]:
    """List units for sale: carve exactly `selection.quantity_kg` of the holder's held blocks
    (oldest vintage first, within `selection.where`) into LISTED blocks carrying `ref`.
    Raises InsufficientUnits (field quantity_kg) or Suspended; nothing is locked then."""
    if selection.serials:
        raise InvalidInput("units are locked by quantity", field="serials")
    selection.validate()
    source = lock_account(session, account_of(session, holder_id).id, field="account")
    blocks = _pick(session, source, selection)
    for b in blocks:
        b.status, b.hold_ref = BlockStatus.LISTED, ref
    return blocks


def _listed(session: Session, ref: str) -> list[Block]:
    return list(session.scalars(select(Block).where(Block.hold_ref == ref, Block.status == BlockStatus.LISTED)
                                .order_by(Block.vintage, Block.batch_id, Block.start).with_for_update()))


def _take_listed(session: Session, ref: str, quantity: int | None) -> list[Block]:
    blocks = _listed(session, ref)
    if quantity is None:
        return blocks
    have = sum(b.quantity for b in blocks)
    if quantity <= 0 or quantity > have:
        raise InsufficientUnits(f"{ref} has {have} kg listed, {quantity} kg asked", field="quantity_kg")
    out, remaining = [], quantity
    for b in blocks:
        if remaining == 0:
            break
        take = min(remaining, b.quantity)
        out.append(carve(session, b, b.start, b.start + take - 1))
        remaining -= take
    return out


def unlock_units(session: Session, ref: str, quantity: int | None = None) -> int:
    """Return listed units of `ref` (all, or `quantity` kg) to held. Returns the kg unlocked."""
    blocks = _take_listed(session, ref, quantity)
    for b in blocks:
        b.status, b.hold_ref = BlockStatus.HELD, None
    return sum(b.quantity for b in blocks)


def deliver_units(session: Session, ref: str, quantity: int, to_holder_id: int, *, memo: str,
                  user_id: int | None = None) -> Transfer:
    """Deliver `quantity` kg of the units listed under `ref` to another holder's holding account
    (settlement of a trade). Recorded as a transfer, with the serial history kept."""
    return deliver_blocks(session, ref, quantity, to_holder_id, memo=memo, user_id=user_id)[0]


def deliver_blocks(session: Session, ref: str, quantity: int, to_holder_id: int, *, memo: str,
                   user_id: int | None = None) -> tuple[Transfer, list[Block]]:
    """`deliver_units`, returning also the delivered blocks, locked until the caller commits (e.g.
    to retire exactly them with `retire_blocks`). Raises InsufficientUnits (field quantity_kg)."""
    blocks = _take_listed(session, ref, quantity)
    source_id = blocks[0].account_id
    dest = account_of(session, to_holder_id)
    t = Transfer(from_account_id=source_id, to_account_id=dest.id, quantity_kg=quantity, memo=memo,
                 created_by_id=user_id)
    session.add(t)
    session.flush()
    for b in blocks:
        b.hold_ref = None
    _move(session, blocks, dest, BlockStatus.HELD, MovementKind.TRANSFER, transfer_id=t.id)
    audit.record(session, None, "units.delivered", "transfer", t.id,
                 {"ref": ref, "to_holder_id": to_holder_id, "quantity_kg": quantity, "memo": memo,
                  "serials": _ranges_payload(session, blocks)})
    return t, blocks


_BLOCKS = cast(Table, Block.__table__)
_TRANSFERS = cast(Table, Transfer.__table__)
_MOVEMENTS = cast(Table, Movement.__table__)


@dataclass(slots=True)
class _Piece:
    """A listed range while a settlement batch works on it: an existing row, or a remainder that
    becomes a new row when the batch is written."""

    row_id: int | None
    batch_id: int
    project_id: int
    vintage: int
    start: int
    end: int
    account_id: int
    status: BlockStatus = BlockStatus.LISTED
    hold_ref: str | None = None
    loaded: tuple[object, ...] = ()

    def __post_init__(self) -> None:
        self.loaded = (self.end, self.account_id, self.status, self.hold_ref)

    @property
    def quantity(self) -> int:
        return self.end - self.start + 1

    def changed(self) -> bool:
        return (self.end, self.account_id, self.status, self.hold_ref) != self.loaded


@dataclass(slots=True)
class Delivery:
    ref: str
    quantity: int
    from_account_id: int
    to_account_id: int
    to_holder_id: int
    memo: str
    pieces: list[_Piece]
    transfer_id: int = 0


class ListedUnits:
    """Delivery and unlocking of listed units for one settlement batch, written in bulk.

    `deliver` and `unlock` give the same result as `deliver_units` and `unlock_units` called one by
    one (transfers, movements, carved blocks, `units.delivered` audit records), but work in memory on
    the blocks locked once at construction and write everything at `flush()` with one statement per
    table. The one-by-one path costs ~10 statements per trade; the sequencer settles thousands.

    Splitting keeps `carve`'s rule: the row keeps the head of its range and the tail becomes a new
    row, so no row ever gives up its start and the inserts cannot collide on (batch, start).
    """

    def __init__(self, session: Session, refs: Sequence[str]) -> None:
        self.s = session
        self.listed: dict[str, list[_Piece]] = {}
        self.pieces: list[_Piece] = []
        self.deliveries: list[Delivery] = []
        self._accounts: dict[int, int] = {}
        if refs:
            rows = session.execute(
                select(Block.id, Block.batch_id, Block.project_id, Block.vintage, Block.start, Block.end,
                       Block.account_id, Block.status, Block.hold_ref)
                .where(in_list(session, Block.hold_ref, sorted(set(refs))), Block.status == BlockStatus.LISTED)
                .order_by(Block.hold_ref, Block.vintage, Block.batch_id, Block.start).with_for_update())
            for row in rows:
                p = _Piece(*row)
                assert p.hold_ref is not None
                self.listed.setdefault(p.hold_ref, []).append(p)
                self.pieces.append(p)

    def prefetch_accounts(self, holder_ids: Sequence[int]) -> None:
        """Holding accounts of the holders units will be delivered to, in one query."""
        missing = sorted(set(holder_ids) - set(self._accounts))
        if missing:
            self._accounts.update(self.s.execute(select(Account.holder_id, Account.id).where(
                Account.holder_id.in_(missing), Account.kind == AccountKind.HOLDING)).tuples().all())

    def _take(self, ref: str, quantity: int | None) -> list[_Piece]:
        listed = self.listed.get(ref, [])
        # (most takes fit in the first piece: then the total is not needed)
        if quantity is None or quantity <= 0 or not listed or quantity > listed[0].quantity:
            have = sum(p.quantity for p in listed)
            if quantity is None:
                quantity = have
            elif quantity <= 0 or quantity > have:
                raise InsufficientUnits(f"{ref} has {have} kg listed, {quantity} kg asked", field="quantity_kg")
        taken: list[_Piece] = []
        while quantity > 0:
            head = listed[0]
            if head.quantity > quantity:
                tail = _Piece(None, head.batch_id, head.project_id, head.vintage, head.start + quantity, head.end,
                              head.account_id, head.status, head.hold_ref)
                head.end = head.start + quantity - 1
                listed[0] = tail
                self.pieces.append(tail)
            else:
                listed.pop(0)
            taken.append(head)
            quantity -= head.quantity
        return taken

    def deliver(self, ref: str, quantity: int, to_holder_id: int, *, memo: str) -> Delivery:
        """Deliver `quantity` kg listed under `ref` to the holder's holding account. The returned
        delivery's `transfer_id` is set by `flush()`. Raises InsufficientUnits (field quantity_kg)."""
        pieces = self._take(ref, quantity)
        if to_holder_id not in self._accounts:
            self._accounts[to_holder_id] = account_of(self.s, to_holder_id).id
        dest = self._accounts[to_holder_id]
        d = Delivery(ref, quantity, pieces[0].account_id, dest, to_holder_id, memo, pieces)
        for p in pieces:
            p.account_id, p.status, p.hold_ref = dest, BlockStatus.HELD, None
        self.deliveries.append(d)
        return d

    def unlock(self, ref: str, quantity: int | None = None) -> int:
        """Return listed units of `ref` (all, or `quantity` kg) to held. Returns the kg unlocked."""
        pieces = self._take(ref, quantity)
        for p in pieces:
            p.status, p.hold_ref = BlockStatus.HELD, None
        return sum(p.quantity for p in pieces)

    def flush(self) -> None:
        """Write the batch: transfers (ids onto the deliveries), block rows, movements, audit."""
        if not self.pieces and not self.deliveries:
            return
        now = utcnow()
        if self.deliveries:
            ids = bulk_insert_ids(self.s, _TRANSFERS, [
                {"from_account_id": d.from_account_id, "to_account_id": d.to_account_id, "quantity_kg": d.quantity,
                 "memo": d.memo, "created_by_id": None, "created_at": now} for d in self.deliveries])
            for d, tid in zip(self.deliveries, ids, strict=True):
                d.transfer_id = tid
        # Rows shrink to their heads before the tails are inserted.
        bulk_update(self.s, _BLOCKS, [
            {"id": p.row_id, "end": p.end, "quantity": p.quantity, "account_id": p.account_id, "status": p.status,
             "hold_ref": p.hold_ref, "updated_at": now} for p in self.pieces if p.row_id is not None and p.changed()])
        new_rows = [{"batch_id": p.batch_id, "project_id": p.project_id, "vintage": p.vintage, "start": p.start,
                     "end": p.end, "quantity": p.quantity, "account_id": p.account_id, "status": p.status,
                     "hold_ref": p.hold_ref, "updated_at": now} for p in self.pieces if p.row_id is None]
        bulk_insert(self.s, _BLOCKS, new_rows)
        if not self.deliveries:
            return
        bulk_insert(self.s, _MOVEMENTS, [
            {"kind": MovementKind.TRANSFER, "batch_id": p.batch_id, "start": p.start, "end": p.end,
             "from_account_id": d.from_account_id, "to_account_id": d.to_account_id, "transfer_id": d.transfer_id,
             "at": now} for d in self.deliveries for p in d.pieces])
        batch_ids = {p.batch_id for d in self.deliveries for p in d.pieces}
        prefixes = {b.id: b.serial_prefix() for b in self.s.scalars(select(Batch).where(Batch.id.in_(batch_ids)))}
        audit.record_many(self.s, [
            ("units.delivered", "transfer", d.transfer_id,
             {"ref": d.ref, "to_holder_id": d.to_holder_id, "quantity_kg": d.quantity, "memo": d.memo,
              "serials": [f"{prefixes[p.batch_id]}-{p.start}-{p.end}" for p in d.pieces]})
            for d in self.deliveries])
