"""`deliver_and_retire` (the fill of a listing-paid offset order) writes what `units.deliver_blocks`
followed by `units.retire_blocks` write: the same blocks, movements, transfer, retirement and audit
payloads, with the same errors, and nothing when it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from registry import holders, projects, units
from registry.actors import Actor
from registry.delivered_retirement import deliver_and_retire
from registry.errors import InsufficientUnits, InvalidInput, NotFound, RegistryError, Suspended
from registry.models import (
    AccountKind,
    AuditRecord,
    Batch,
    Block,
    Movement,
    Retirement,
    Transfer,
)
from tests.factories import World, issued_batch, registered_project, world

Q = units.Selection
CLAIM = {"beneficiary": " 大湾区论坛 ", "jurisdiction": "广东省深圳市福田区", "purpose": "event_offset",
         "footprint_ref": "FP-1", "message": "碳中和"}


def _two_listings(session: Any, w: World, sizes: tuple[int, ...] = (1000, 700)) -> dict[str, list[Batch]]:
    """Two listings of the same shape, one project each: batches of the given sizes, vintages 2023, 2024, ..."""
    out = {}
    for ref in ("listing:old", "listing:new"):
        p = registered_project(session, w)
        out[ref] = [issued_batch(session, w, p, kg, year=2023 + i) for i, kg in enumerate(sizes)]
        units.lock_units(session, w.owner.holder.id, Q(quantity_kg=sum(sizes), project_id=p.id), ref)
    session.flush()
    return out


def _state(session: Any, batches: list[Batch], transfer_id: int, retirement_id: int) -> dict[str, Any]:
    """Everything the fill wrote about these batches, with ids and serial prefixes made comparable."""
    index = {b.id: i for i, b in enumerate(batches)}

    def serials(xs: list[str]) -> list[str]:
        for b in batches:
            xs = [x.replace(b.serial_prefix() + "-", f"B{index[b.id]}-") for x in xs]
        return xs

    blocks = sorted((index[b.batch_id], b.start, b.end, b.quantity, b.account_id, b.status.value, b.hold_ref is not None,
                     b.retirement_id == retirement_id) for b in session.scalars(
        select(Block).where(Block.batch_id.in_(index))))
    moves = [(m.kind.value, index[m.batch_id], m.start, m.end, m.from_account_id, m.to_account_id,
              m.transfer_id == transfer_id if m.transfer_id else None,
              m.retirement_id == retirement_id if m.retirement_id else None)
             for m in session.scalars(select(Movement).where(Movement.batch_id.in_(index)).order_by(Movement.id))
             if m.kind.value != "issuance"]
    t = session.get(Transfer, transfer_id)
    r = session.get(Retirement, retirement_id)
    audits = {}
    for rec in session.scalars(select(AuditRecord).where(
            AuditRecord.action.in_(["units.delivered", "units.retired"]),
            AuditRecord.entity_id.in_([str(transfer_id), str(retirement_id)]))):
        if (rec.action, rec.entity_id) not in (("units.delivered", str(transfer_id)), ("units.retired", str(retirement_id))):
            continue
        payload = json.loads(rec.payload)
        payload["serials"] = serials(payload["serials"])
        payload.pop("ref", None)
        payload.pop("certificate_number", None)
        audits[rec.action] = (rec.actor_user_id, rec.actor_holder_id, payload)
    return {"blocks": blocks, "moves": moves,
            "transfer": (t.from_account_id, t.to_account_id, t.quantity_kg, t.memo, t.created_by_id),
            "retirement": (r.holder_id, r.account_id, r.quantity_kg, r.beneficiary, r.jurisdiction, r.purpose,
                           r.footprint_ref, r.message, r.created_by_id, r.certificate_number.startswith("THC-")),
            "audit": audits}


@pytest.mark.parametrize("kg", [300, 1000, 1300, 1700])   # inside a block, a whole block, across two, all
def test_it_writes_what_delivery_then_retirement_write(session: Any, kg: int) -> None:
    w = world(session)
    listed = _two_listings(session, w)
    t_old, blocks = units.deliver_blocks(session, "listing:old", kg, w.buyer.holder.id, memo="offset order 1",
                                         user_id=w.buyer.actor.user_id)
    r_old = units.retire_blocks(session, w.buyer.actor, blocks, **CLAIM)
    new = deliver_and_retire(session, w.buyer.actor, "listing:new", kg, memo="offset order 1", **CLAIM)
    session.commit()
    old_state = _state(session, listed["listing:old"], t_old.id, r_old.id)
    new_state = _state(session, listed["listing:new"], new.transfer_id, new.id)
    assert new_state == old_state
    assert new.quantity_kg == kg and len(new.serials) == len(blocks)
    r = session.get(Retirement, new.id)
    assert r is not None and r.certificate_number == new.certificate_number and r.beneficiary == "大湾区论坛"
    sink = holders.account_of(session, w.buyer.holder.id, AccountKind.RETIREMENT).id
    assert sum(b.quantity for b in session.scalars(select(Block).where(Block.retirement_id == new.id))) == kg
    assert {b.account_id for b in session.scalars(select(Block).where(Block.retirement_id == new.id))} == {sink}


def _count(session: Any) -> tuple[int, ...]:
    return tuple(session.scalar(select(func.count()).select_from(t)) or 0
                 for t in (Block, Movement, Transfer, Retirement, AuditRecord))


def test_refusals_name_the_field_and_write_nothing(session: Any) -> None:
    w = world(session)
    _two_listings(session, w)
    session.commit()
    before = _count(session)
    cases: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (InsufficientUnits, "quantity_kg", {"quantity": 1701}),
        (InvalidInput, "beneficiary", {"beneficiary": "  "}),
        (InvalidInput, "purpose", {"purpose": "nonsense"}),
        (InvalidInput, "quantity_kg", {"quantity": 0}),
    ]
    for error, field, change in cases:
        args = {"quantity": 500, **CLAIM} | change
        quantity = args.pop("quantity")
        with pytest.raises(error) as e:
            deliver_and_retire(session, w.buyer.actor, "listing:new", quantity, memo="m", **args)
        assert e.value.field == field
        session.rollback()
        assert _count(session) == before


def test_a_suspended_project_or_buyer_stops_it(session: Any) -> None:
    w = world(session)
    listed = _two_listings(session, w)
    projects.set_project_suspension(session, w.operator.actor, listed["listing:new"][0].project_id, True, "audit")
    with pytest.raises(Suspended) as e:
        deliver_and_retire(session, w.buyer.actor, "listing:new", 500, memo="m", **CLAIM)
    assert e.value.field == "serials"
    holders.set_holder_suspension(session, w.operator.actor, w.buyer.holder.id, True, "KYC")
    with pytest.raises(Suspended) as e:
        deliver_and_retire(session, w.buyer.actor, "listing:old", 500, memo="m", **CLAIM)
    assert e.value.field == "account"


def test_a_buyer_without_accounts_is_not_found(session: Any) -> None:
    w = world(session)
    _two_listings(session, w)
    with pytest.raises(NotFound):
        deliver_and_retire(session, Actor(None, 10**9, w.buyer.actor.holder_kind, w.buyer.actor.role),
                           "listing:old", 500, memo="m", **CLAIM)


def _statements(engine: Any) -> tuple[list[str], Any]:
    """The statements run on `engine` (first words, upper case) until the listener is removed."""
    from sqlalchemy import event
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.lstrip().split(None, 1)[0].upper())
    event.listen(engine, "before_cursor_execute", note)
    return seen, lambda: event.remove(engine, "before_cursor_execute", note)


def _blocks(session: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in session.execute(select(
        Block.id, Block.batch_id, Block.start, Block.end, Block.quantity, Block.account_id, Block.status, Block.hold_ref,
        Block.retirement_id, Block.updated_at).order_by(Block.id))]


REFUSALS = ["viewer", "blank_beneficiary", "blank_jurisdiction", "purpose", "zero", "no_accounts",
            "no_accounts_given", "buyer_suspended", "buyer_suspended_given", "too_much", "project_suspended"]


@pytest.mark.parametrize("case", REFUSALS)
def test_every_refusal_is_raised_before_the_first_write(session: Any, engine: Any, case: str) -> None:
    """`offsets.place_offset` calls it without a savepoint: a refusal must leave nothing to roll
    back. Each refusal path runs SELECTs only, and the refused call leaves every table as it was,
    uncommitted work of the same transaction included (no rollback in between)."""
    import dataclasses

    from registry.delivered_retirement import BuyerAccounts
    from registry.models import UserRole
    w = world(session)
    listed = _two_listings(session, w)
    actor = w.buyer.actor
    args: dict[str, Any] = {"quantity": 500, **CLAIM}
    if case == "viewer":
        actor = dataclasses.replace(actor, role=UserRole.VIEWER)
    if case in ("no_accounts", "no_accounts_given"):
        actor = Actor(None, 10**9, actor.holder_kind, actor.role)
    if case in ("buyer_suspended", "buyer_suspended_given"):
        holders.set_holder_suspension(session, w.operator.actor, w.buyer.holder.id, True, "KYC")
    if case == "project_suspended":
        projects.set_project_suspension(session, w.operator.actor, listed["listing:new"][0].project_id, True, "audit")
    if case == "no_accounts_given":   # the accounts as the quote of `place_offset` read them
        args["accounts"] = BuyerAccounts(None, None, False, None, "")
    if case == "buyer_suspended_given":
        args["accounts"] = BuyerAccounts(holders.account_of(session, actor.holder_id).id, holders.account_of(
            session, actor.holder_id, AccountKind.RETIREMENT).id, True, "KYC", "买方")
    args |= {"blank_beneficiary": {"beneficiary": " "}, "blank_jurisdiction": {"jurisdiction": ""},
             "purpose": {"purpose": "nonsense"}, "zero": {"quantity": 0},
             "too_much": {"quantity": 1701}}.get(case, {})
    session.flush()   # the setup is written (not committed): the refusal must not disturb it either
    before = _count(session), _blocks(session)
    seen, stop = _statements(engine)
    try:
        with pytest.raises(RegistryError):
            deliver_and_retire(session, actor, "listing:new", args.pop("quantity"), memo="m", **args)
    finally:
        stop()
    assert set(seen) <= {"SELECT"}, seen
    assert (_count(session), _blocks(session)) == before


CLAIMS = {
    "plain": CLAIM,
    "no_message_no_footprint": {**CLAIM, "message": None, "footprint_ref": None},
    "unicode": {**CLAIM, "beneficiary": ' Ünïcødé "活动" \\ 🌏\t', "message": "碳中和 ✓\n第二行 \u2028 end",
                "footprint_ref": "FP-7 大湾区"},
}


@pytest.mark.parametrize("claim", list(CLAIMS))
@pytest.mark.parametrize("shape", ["inside", "whole", "two_batches", "all", "pieces_of_one_batch"])
def test_the_certificate_of_what_it_retired_is_the_one_read_back(session: Any, shape: str, claim: str) -> None:
    """`Retired.facts` (what the fill had in hand) gives, in canonical JSON, byte for byte the body
    `certificate_body` reads from the database once committed: one block or several, a batch's
    contiguous pieces merged, with or without message and footprint, unicode."""
    from registry import certificates
    from tests.factories import registered_project
    w = world(session)
    if shape == "pieces_of_one_batch":   # two listed rows of one batch, back to back, and a second batch
        p = registered_project(session, w, title="社区光伏 Community PV")
        batches = [issued_batch(session, w, p, 1000, year=2023), issued_batch(session, w, p, 500, year=2023)]
        for kg in (300, 400, 800):
            units.lock_units(session, w.owner.holder.id, Q(quantity_kg=kg, project_id=p.id), "listing:new")
        kg = 1500
    else:
        _two_listings(session, w)
        kg = {"inside": 300, "whole": 1000, "two_batches": 1300, "all": 1700}[shape]
    session.commit()
    r = deliver_and_retire(session, w.buyer.actor, "listing:new", kg, memo="m", **CLAIMS[claim])
    session.commit()
    session.expire_all()
    read = certificates.certificate_body(session, session.get(Retirement, r.id), "https://tanhui.example/")
    made = certificates.body_of(r.facts, "https://tanhui.example/")
    assert certificates.canonical_json(made) == certificates.canonical_json(read)
    assert len(read["serials"]) == {"inside": 1, "whole": 1, "two_batches": 2, "all": 2,
                                    "pieces_of_one_batch": 2}[shape]
    if shape == "pieces_of_one_batch":
        assert [s["quantity_kg"] for s in read["serials"]] == [1000, 500] and batches
