"""Transfer, retirement and cancellation of serial blocks; suspension; serial history."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from registry import holders, queries, units
from registry.errors import Forbidden, InsufficientUnits, InvalidInput, NotFound, Suspended
from registry.models import AccountKind, Block, BlockStatus, HolderKind, Retirement
from tests.factories import issued_batch, party, registered_project, world

Q = units.Selection


def _blocks(session, account_number):
    acc = holders.account_by_number(session, account_number)
    return [(b.batch_id, b.start, b.end, b.status.value) for b in session.scalars(
        select(Block).where(Block.account_id == acc.id).order_by(Block.batch_id, Block.start))]


def _retire(session, p, sel, **kw):
    args = dict(beneficiary="大湾区论坛", jurisdiction="广东省深圳市福田区", purpose="event_offset") | kw
    return units.retire(session, p.actor, selection=sel, **args)


def test_partial_transfer_splits_and_keeps_ranges(session):
    w = world(session)
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 1000)
    t = units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(quantity_kg=300),
                       memo="purchase")
    assert t.quantity_kg == 300
    assert _blocks(session, w.buyer.account) == [(b.id, 1, 300, "held")]
    assert _blocks(session, w.owner.account) == [(b.id, 301, 1000, "held")]
    session.commit()


def test_quantity_transfer_takes_oldest_vintage_first(session):
    w = world(session)
    p = registered_project(session, w)
    new = issued_batch(session, w, p, 500, year=2025)
    old = issued_batch(session, w, p, 200, year=2023)
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(quantity_kg=250))
    assert _blocks(session, w.buyer.account) == [(new.id, 1, 50, "held"), (old.id, 1, 200, "held")]
    held = queries.holdings(session, w.buyer.holder.id)
    assert sorted((h["vintage"], h["held_kg"]) for h in held) == [(2023, 200), (2025, 50)]
    session.commit()


def test_transfer_filtered_by_project_and_vintage(session):
    w = world(session)
    p1, p2 = registered_project(session, w), registered_project(session, w, title="第二个")
    issued_batch(session, w, p1, 100, year=2023)
    b2 = issued_batch(session, w, p2, 100, year=2024)
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(quantity_kg=40, project_id=p2.id))
    assert _blocks(session, w.buyer.account) == [(b2.id, 1, 40, "held")]
    with pytest.raises(InsufficientUnits):
        units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(quantity_kg=1, vintage=2019))
    session.commit()


def test_named_serials_split_a_block_in_three(session):
    w = world(session)
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 1000)
    serial = b.serial(401, 600)
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(serials=[serial]))
    assert _blocks(session, w.buyer.account) == [(b.id, 401, 600, "held")]
    assert _blocks(session, w.owner.account) == [(b.id, 1, 400, "held"), (b.id, 601, 1000, "held")]
    # A range spanning two blocks of the same holder works, and a single serial too.
    units.transfer(session, w.buyer.actor, to_account=w.owner.account, selection=Q(serials=[b.serial(401, 401)]))
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(serials=[b.serial(390, 401)]))
    assert _blocks(session, w.buyer.account) == [(b.id, 390, 400, "held"), (b.id, 401, 401, "held"),
                                                 (b.id, 402, 600, "held")]
    assert _blocks(session, w.owner.account) == [(b.id, 1, 389, "held"), (b.id, 601, 1000, "held")]
    session.commit()


def test_named_serials_must_be_held_and_must_not_overlap(session):
    w = world(session)
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 1000)
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(serials=[b.serial(1, 10)]))
    with pytest.raises(InsufficientUnits) as e:
        units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(serials=[b.serial(5, 20)]))
    assert e.value.field == "serials.0"
    with pytest.raises(InvalidInput) as e:
        units.transfer(session, w.owner.actor, to_account=w.buyer.account,
                       selection=Q(serials=[b.serial(20, 30), b.serial(25, 40)]))
    assert (e.value.field, e.value.code) == ("serials.1", "overlapping_ranges")
    with pytest.raises(NotFound):
        units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(serials=[b.serial(990, 1001)]))
    with pytest.raises(InvalidInput) as e:
        units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(serials=["THR-garbage"]))
    assert e.value.field == "serials.0"
    session.commit()


def test_bad_selection_and_destination(session):
    w = world(session)
    p = registered_project(session, w)
    issued_batch(session, w, p, 100)
    for sel in (Q(), Q(quantity_kg=0), Q(quantity_kg=-3), Q(quantity_kg=5, serials=["x"]), Q(quantity_kg=True)):
        with pytest.raises(InvalidInput):
            units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=sel)
    with pytest.raises(NotFound):
        units.transfer(session, w.owner.actor, to_account="TH-H-999999", selection=Q(quantity_kg=1))
    with pytest.raises(InvalidInput):
        units.transfer(session, w.owner.actor, to_account=w.owner.account, selection=Q(quantity_kg=1))
    retirement_acc = holders.account_of(session, w.buyer.holder.id, AccountKind.RETIREMENT).number
    with pytest.raises(InvalidInput):
        units.transfer(session, w.owner.actor, to_account=retirement_acc, selection=Q(quantity_kg=1))
    with pytest.raises(InsufficientUnits):
        units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(quantity_kg=101))
    assert _blocks(session, w.owner.account)[0][1:3] == (1, 100)
    session.commit()


def test_viewer_cannot_move_units(session):
    w = world(session)
    viewer = party(session, HolderKind.ENTERPRISE, role="viewer")
    with pytest.raises(Forbidden):
        units.transfer(session, viewer.actor, to_account=w.buyer.account, selection=Q(quantity_kg=1))


def test_retirement_is_final_and_spans_batches(session):
    w = world(session)
    p = registered_project(session, w)
    b1 = issued_batch(session, w, p, 100, year=2023)
    b2 = issued_batch(session, w, p, 100, year=2024)
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(quantity_kg=200))
    r = _retire(session, w.buyer, Q(serials=[b1.serial(1, 60), b2.serial(11, 50)]), message="碳中和",
                footprint_ref="FP-1")
    assert r.quantity_kg == 100 and r.certificate_number.startswith("THC-")
    retired = session.scalars(select(Block).where(Block.retirement_id == r.id).order_by(Block.batch_id)).all()
    assert [(x.batch_id, x.start, x.end, x.status) for x in retired] == [
        (b1.id, 1, 60, BlockStatus.RETIRED), (b2.id, 11, 50, BlockStatus.RETIRED)]
    assert {x.account_id for x in retired} == {holders.account_of(session, w.buyer.holder.id,
                                                                  AccountKind.RETIREMENT).id}
    # Retired serials cannot be moved or retired again.
    with pytest.raises(InsufficientUnits):
        _retire(session, w.buyer, Q(serials=[b1.serial(1, 1)]))
    with pytest.raises(InsufficientUnits):
        units.transfer(session, w.buyer.actor, to_account=w.owner.account, selection=Q(serials=[b2.serial(11, 11)]))
    r2 = _retire(session, w.buyer, Q(quantity_kg=100))
    assert r2.certificate_number != r.certificate_number
    with pytest.raises(InsufficientUnits):
        _retire(session, w.buyer, Q(quantity_kg=1))
    session.commit()


def test_the_database_refuses_to_change_a_retired_block(session):
    w = world(session)
    p = registered_project(session, w)
    issued_batch(session, w, p, 10)
    r = _retire(session, w.owner, Q(quantity_kg=10))
    session.commit()
    with pytest.raises(DBAPIError):
        session.execute(text("UPDATE blocks SET status = 'held' WHERE retirement_id = :r"), {"r": r.id})
    session.rollback()


def test_retirement_input_is_required(session):
    w = world(session)
    p = registered_project(session, w)
    issued_batch(session, w, p, 10)
    for kw, field in [({"beneficiary": " "}, "beneficiary"), ({"jurisdiction": ""}, "jurisdiction"),
                      ({"purpose": "fun"}, "purpose")]:
        with pytest.raises(InvalidInput) as e:
            _retire(session, w.owner, Q(quantity_kg=1), **kw)
        assert e.value.field == field


def test_suspended_holder_cannot_move_or_receive(session):
    w = world(session)
    p = registered_project(session, w)
    issued_batch(session, w, p, 100)
    holders.set_holder_suspension(session, w.operator.actor, w.owner.holder.id, True, "KYC review")
    with pytest.raises(Suspended):
        units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(quantity_kg=1))
    with pytest.raises(Suspended):
        _retire(session, w.owner, Q(quantity_kg=1))
    holders.set_holder_suspension(session, w.operator.actor, w.owner.holder.id, False, "KYC done")
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(quantity_kg=10))
    holders.set_holder_suspension(session, w.operator.actor, w.buyer.holder.id, True, "sanctions check")
    with pytest.raises(Suspended):
        units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(quantity_kg=1))
    session.commit()


def test_suspended_project_units_do_not_move(session):
    w = world(session)
    bad, good = registered_project(session, w), registered_project(session, w, title="good")
    b_bad = issued_batch(session, w, bad, 100, year=2020)   # oldest: would be picked first
    b_good = issued_batch(session, w, good, 100, year=2024)
    from registry import projects
    projects.set_project_suspension(session, w.operator.actor, bad.id, True, "double counting suspected")
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(quantity_kg=50))
    assert _blocks(session, w.buyer.account) == [(b_good.id, 1, 50, "held")]
    with pytest.raises(Suspended):
        units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(serials=[b_bad.serial(1, 5)]))
    with pytest.raises(InsufficientUnits):
        _retire(session, w.owner, Q(quantity_kg=51))
    session.commit()


def test_operator_cancels_with_a_reason(session):
    w = world(session)
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 100)
    with pytest.raises(Forbidden):
        units.cancel(session, w.owner.actor, from_account=w.owner.account, selection=Q(quantity_kg=1), reason="x")
    with pytest.raises(InvalidInput):
        units.cancel(session, w.operator.actor, from_account=w.owner.account, selection=Q(quantity_kg=1), reason="")
    c = units.cancel(session, w.operator.actor, from_account=w.owner.account,
                     selection=Q(serials=[b.serial(91, 100)]), reason="metering correction")
    assert c.quantity_kg == 10
    assert _blocks(session, w.owner.account) == [(b.id, 1, 90, "held")]
    cancelled = session.scalar(select(Block).where(Block.cancellation_id == c.id))
    assert (cancelled.start, cancelled.end, cancelled.status) == (91, 100, BlockStatus.CANCELLED)
    session.commit()


def test_serial_history_lists_every_event(session):
    w = world(session)
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 1000)
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(serials=[b.serial(100, 199)]))
    r = _retire(session, w.buyer, Q(serials=[b.serial(150, 160)]))
    session.commit()
    h = queries.serial_history(session, b.serial(155, 155))
    assert [(x.start, x.end, x.status.value) for x in h.blocks] == [(150, 160, "retired")]
    assert [m.kind.value for m in h.movements] == ["issuance", "transfer", "retirement"]
    assert h.movements[-1].retirement_id == r.id
    h2 = queries.serial_history(session, b.serial(1, 1))
    assert [m.kind.value for m in h2.movements] == ["issuance"]
    with pytest.raises(NotFound):
        queries.serial_history(session, b.serial(1001, 1001))


def test_certificate_lookup(session):
    w = world(session)
    p = registered_project(session, w)
    issued_batch(session, w, p, 10)
    r = _retire(session, w.owner, Q(quantity_kg=7))
    session.commit()
    found, blocks = queries.retirement_by_certificate(session, r.certificate_number)
    assert found.id == r.id and sum(b.quantity for b in blocks) == 7
    assert session.scalar(select(Retirement.beneficiary).where(Retirement.id == r.id)) == "大湾区论坛"
    with pytest.raises(NotFound):
        queries.retirement_by_certificate(session, "THC-0000-NOPE")


def test_quantity_pick_pages_through_many_blocks(session, monkeypatch):
    monkeypatch.setattr(units, "_PICK_CHUNK", 2)
    w = world(session)
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 100)
    # Give the buyer every other 10 kg: ten separate blocks.
    units.transfer(session, w.owner.actor, to_account=w.buyer.account,
                   selection=Q(serials=[b.serial(s, s + 9) for s in range(1, 100, 20)]))
    assert len(_blocks(session, w.buyer.account)) == 5
    r = _retire(session, w.buyer, Q(quantity_kg=45))
    assert r.quantity_kg == 45
    assert _blocks(session, w.buyer.account) == [(b.id, 86, 90, "held")]
    session.commit()


def test_bulk_delivery_matches_one_by_one(session):
    """`ListedUnits` (the sequencer's bulk path) leaves the same blocks, transfers, movements and
    audit as `deliver_units`/`unlock_units` called one by one, through repeated splits of one block."""
    from registry.models import AuditRecord, Movement, Transfer
    w = world(session)
    p = registered_project(session, w)
    other = party(session, HolderKind.ENTERPRISE, "第二买方")
    one, bulk = issued_batch(session, w, p, 1000, year=2023), issued_batch(session, w, p, 1000, year=2024)
    units.lock_units(session, w.owner.holder.id, Q(quantity_kg=1000, vintage=2023), "order:one")
    units.lock_units(session, w.owner.holder.id, Q(quantity_kg=1000, vintage=2024), "order:bulk")
    session.flush()
    steps = [("deliver", 100, w.buyer), ("deliver", 250, other), ("unlock", 50, None), ("deliver", 600, w.buyer)]
    for kind, qty, to in steps:
        if kind == "deliver":
            units.deliver_units(session, "order:one", qty, to.holder.id, memo=f"m{qty}")
        else:
            units.unlock_units(session, "order:one", qty)
    listed = units.ListedUnits(session, ["order:bulk"])
    listed.prefetch_accounts([w.buyer.holder.id])
    for kind, qty, to in steps:
        if kind == "deliver":
            listed.deliver("order:bulk", qty, to.holder.id, memo=f"m{qty}")
        else:
            assert listed.unlock("order:bulk", qty) == qty
    with pytest.raises(InsufficientUnits):
        listed.unlock("order:bulk", 1)
    listed.flush()
    session.commit()

    def layout(batch_id):
        return sorted((b.start, b.end, b.account_id, b.status.value, b.hold_ref) for b in session.scalars(
            select(Block).where(Block.batch_id == batch_id)))

    def moves(batch_id):
        return [(m.start, m.end, m.from_account_id, m.to_account_id, m.kind.value,
                 session.get(Transfer, m.transfer_id).quantity_kg if m.transfer_id else None)
                for m in session.scalars(select(Movement).where(Movement.batch_id == batch_id,
                                                                Movement.transfer_id.is_not(None))
                                         .order_by(Movement.id))]

    buyer = holders.account_by_number(session, w.buyer.account).id
    second = holders.account_by_number(session, other.account).id
    owner = holders.account_by_number(session, w.owner.account).id
    assert layout(bulk.id) == [(1, 100, buyer, "held", None), (101, 350, second, "held", None),
                               (351, 400, owner, "held", None), (401, 1000, buyer, "held", None)]
    assert layout(one.id) == layout(bulk.id)
    assert moves(one.id) == moves(bulk.id) == [
        (1, 100, owner, buyer, "transfer", 100), (101, 350, owner, second, "transfer", 250),
        (401, 1000, owner, buyer, "transfer", 600)]
    delivered = [a.payload for a in session.scalars(select(AuditRecord).where(
        AuditRecord.action == "units.delivered").order_by(AuditRecord.id))]
    assert len(delivered) == 6
    assert [d.replace(one.serial_prefix(), "X").replace("order:one", "R") for d in delivered[:3]] == \
        [d.replace(bulk.serial_prefix(), "X").replace("order:bulk", "R") for d in delivered[3:]]
