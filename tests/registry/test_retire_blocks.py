"""`units.retire_blocks`: retiring the blocks a delivery just moved, without finding them again by serial."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from registry import holders, projects, units
from registry.errors import Forbidden, InsufficientUnits, InvalidInput, Suspended
from registry.models import AccountKind, AuditRecord, Block, BlockStatus, HolderKind, Movement, Retirement
from tests.factories import issued_batch, party, registered_project, world

Q = units.Selection
CLAIM = {"beneficiary": "大湾区论坛", "jurisdiction": "广东省深圳市福田区", "purpose": "event_offset",
         "footprint_ref": "FP-1", "message": "碳中和"}


def _listed(session, w, kg_per_batch=1000):
    p = registered_project(session, w)
    b1, b2 = issued_batch(session, w, p, kg_per_batch, year=2023), issued_batch(session, w, p, kg_per_batch, year=2024)
    units.lock_units(session, w.owner.holder.id, Q(quantity_kg=kg_per_batch, vintage=2023), "listing:a")
    units.lock_units(session, w.owner.holder.id, Q(quantity_kg=kg_per_batch, vintage=2024), "listing:b")
    session.flush()
    return p, b1, b2


def _retired_audit(session, r, prefix):
    rec = session.scalars(select(AuditRecord).where(AuditRecord.action == "units.retired",
                                                    AuditRecord.entity_id == str(r.id))).one()
    payload = json.loads(rec.payload)
    assert payload.pop("certificate_number") == r.certificate_number
    payload["serials"] = [s.replace(prefix, "X") for s in payload["serials"]]
    return rec.actor_user_id, rec.actor_holder_id, payload


def test_retiring_the_delivered_blocks_matches_retiring_their_serials(session):
    w = world(session)
    _, b1, b2 = _listed(session, w)
    t1, blocks = units.deliver_blocks(session, "listing:a", 300, w.buyer.holder.id, memo="m")
    assert [(b.batch_id, b.start, b.end, b.status, b.hold_ref) for b in blocks] == [
        (b1.id, 1, 300, BlockStatus.HELD, None)]
    fast = units.retire_blocks(session, w.buyer.actor, blocks, **CLAIM)
    t2 = units.deliver_units(session, "listing:b", 300, w.buyer.holder.id, memo="m")
    slow = units.retire(session, w.buyer.actor, selection=Q(serials=[b2.serial(1, 300)]), **CLAIM)
    session.commit()

    sink = holders.account_of(session, w.buyer.holder.id, AccountKind.RETIREMENT).id
    for r, batch in ((fast, b1), (slow, b2)):
        assert r.quantity_kg == 300 and r.account_id == sink and r.certificate_number.startswith("THC-")
        assert (r.beneficiary, r.jurisdiction, r.purpose.value, r.footprint_ref, r.message) == (
            "大湾区论坛", "广东省深圳市福田区", "event_offset", "FP-1", "碳中和")
        assert [(b.start, b.end, b.account_id, b.status) for b in session.scalars(
            select(Block).where(Block.retirement_id == r.id))] == [(1, 300, sink, BlockStatus.RETIRED)]
        # the rest stays listed for the seller
        assert [(b.start, b.end, b.status) for b in session.scalars(
            select(Block).where(Block.batch_id == batch.id, Block.retirement_id.is_(None)))] == [
            (301, 1000, BlockStatus.LISTED)]
    assert _retired_audit(session, fast, b1.serial_prefix()) == _retired_audit(session, slow, b2.serial_prefix())
    assert _retired_audit(session, fast, b1.serial_prefix())[2]["serials"] == ["X-1-300"]

    def moves(batch_id):
        return [(m.kind.value, m.start, m.end, m.to_account_id, m.transfer_id is not None, m.retirement_id is not None)
                for m in session.scalars(select(Movement).where(Movement.batch_id == batch_id).order_by(Movement.id))
                if m.kind.value != "issuance"]
    assert moves(b1.id) == moves(b2.id)
    assert t1.quantity_kg == t2.quantity_kg == 300


def test_blocks_of_two_batches_in_one_retirement(session):
    w = world(session)
    _, b1, b2 = _listed(session, w, kg_per_batch=100)
    _, first = units.deliver_blocks(session, "listing:a", 100, w.buyer.holder.id, memo="m")
    _, second = units.deliver_blocks(session, "listing:b", 40, w.buyer.holder.id, memo="m")
    r = units.retire_blocks(session, w.buyer.actor, first + second, **CLAIM)
    assert r.quantity_kg == 140
    assert session.scalars(select(Retirement.quantity_kg)).all() == [140]
    assert sorted((b.batch_id, b.start, b.end) for b in session.scalars(
        select(Block).where(Block.retirement_id == r.id))) == [(b1.id, 1, 100), (b2.id, 1, 40)]
    session.commit()


def test_refusals_change_nothing(session):
    w = world(session)
    p, b1, _ = _listed(session, w)
    other = party(session, HolderKind.ENTERPRISE, "另一买方")
    _, blocks = units.deliver_blocks(session, "listing:a", 100, w.buyer.holder.id, memo="m")
    _, theirs = units.deliver_blocks(session, "listing:a", 100, other.holder.id, memo="m")
    session.commit()

    def refused(exc, actor, bs, **kw):
        with pytest.raises(exc) as e:
            units.retire_blocks(session, actor, bs, **(CLAIM | kw))
        session.rollback()
        assert session.scalars(select(Retirement)).all() == []
        return e.value

    assert refused(InsufficientUnits, w.buyer.actor, blocks + theirs).code == "not_held"
    assert refused(InvalidInput, w.buyer.actor, blocks, beneficiary=" ").field == "beneficiary"
    assert refused(InvalidInput, w.buyer.actor, blocks, purpose="fun").field == "purpose"
    assert refused(InvalidInput, w.buyer.actor, []).field == "quantity_kg"
    viewer = party(session, HolderKind.ENTERPRISE, role="viewer")
    refused(Forbidden, viewer.actor, blocks)
    session.commit()
    projects.set_project_suspension(session, w.operator.actor, p.id, True, "double counting suspected")
    session.commit()
    refused(Suspended, w.buyer.actor, blocks)
    projects.set_project_suspension(session, w.operator.actor, p.id, False, "cleared")
    holders.set_holder_suspension(session, w.operator.actor, w.buyer.holder.id, True, "KYC review")
    session.commit()
    refused(Suspended, w.buyer.actor, blocks)
    holders.set_holder_suspension(session, w.operator.actor, w.buyer.holder.id, False, "KYC done")
    session.commit()

    r = units.retire_blocks(session, w.buyer.actor, blocks, **CLAIM)
    session.commit()
    assert r.quantity_kg == 100
    # retired blocks are final: retiring them again is refused
    with pytest.raises(InsufficientUnits):
        units.retire_blocks(session, w.buyer.actor, blocks, **CLAIM)
    session.rollback()
    assert [x.quantity_kg for x in session.scalars(select(Retirement))] == [100]
    assert b1.id == blocks[0].batch_id
