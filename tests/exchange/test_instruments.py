from __future__ import annotations

import pytest
from sqlalchemy import select

from exchange import instruments
from exchange.models import InstrumentStatus
from registry import units
from registry.errors import Conflict, Forbidden, InvalidInput
from tests.factories import issued_batch, registered_project, world


def _pooled(session, w, **kw):
    args = dict(symbol="CI-PV-2024", name_zh="光伏碳普惠2024", name_en="Solar PV credits 2024", kind="pooled",
                vintage_from=2024, vintage_to=2024, sector="energy", project_kind="project",
                reference_price=60_00) | kw
    return instruments.create_instrument(session, w.operator.actor, **args)


def test_create_halt_resume_delist(session):
    w = world(session)
    inst = _pooled(session, w)
    assert (inst.tick_size, inst.lot_size_kg, inst.band_bp, inst.status) == (1, 1000, 1000, InstrumentStatus.ACTIVE)
    assert (inst.reference_price, inst.band_low, inst.band_high) == (6000, 5400, 6600)
    instruments.set_status(session, w.operator.actor, inst.id, "halted", "abnormal volatility")
    with pytest.raises(Conflict):
        instruments.set_status(session, w.operator.actor, inst.id, "halted", "again")
    instruments.set_status(session, w.operator.actor, "ci-pv-2024", "active", "resumed")
    instruments.set_status(session, w.operator.actor, inst.id, "delisted", "vintage rolled off")
    with pytest.raises(Conflict):
        instruments.set_status(session, w.operator.actor, inst.id, "active", "no way back")
    session.commit()


def test_only_operators_list_and_input_is_checked(session):
    w = world(session)
    with pytest.raises(Forbidden):
        instruments.create_instrument(session, w.owner.actor, symbol="X1", name_zh="x", name_en="x",
                                      kind="pooled", vintage_from=2024, vintage_to=2024, reference_price=100)
    for kw, field in [({"symbol": "bad symbol"}, "symbol"), ({"kind": "swap"}, "kind"),
                      ({"vintage_to": 2020}, "vintage_to"), ({"tick_size": 0}, "tick_size"),
                      ({"min_qty_kg": 1500}, "min_qty_kg"), ({"taker_fee_bp": 5000}, "taker_fee_bp"),
                      ({"kind": "project", "project_id": 999}, "project_id"),
                      ({"reference_price": 0}, "reference_price"), ({"tick_size": 7}, "reference_price")]:
        with pytest.raises(InvalidInput) as e:
            _pooled(session, w, **kw)
        assert e.value.field == field
    _pooled(session, w)
    with pytest.raises(Conflict):
        _pooled(session, w)


def test_deliverable_blocks(session):
    w = world(session)
    p = registered_project(session, w)
    b24 = issued_batch(session, w, p, 5000, year=2024)
    issued_batch(session, w, p, 5000, year=2023)
    pooled = _pooled(session, w)
    proj = instruments.create_instrument(session, w.operator.actor, symbol=f"P{p.id:05d}-2023", name_zh="项目",
                                         name_en="project", kind="project", project_id=p.id,
                                         vintage_from=2023, vintage_to=2023, reference_price=55_00)
    units.retire(session, w.owner.actor, selection=units.Selection(serials=[b24.serial(1, 10)]),
                 beneficiary="x", jurisdiction="深圳市", purpose="other")
    pooled_vintages = {b.vintage for b in session.scalars(instruments.deliverable_blocks_stmt(pooled))}
    proj_vintages = {b.vintage for b in session.scalars(instruments.deliverable_blocks_stmt(proj))}
    assert pooled_vintages == {2024} and proj_vintages == {2023}
    other_sector = _pooled(session, w, symbol="CI-FOREST-2024", sector="forestry")
    assert session.scalars(instruments.deliverable_blocks_stmt(other_sector)).all() == []
    assert session.scalar(select(instruments.Instrument.symbol).where(instruments.Instrument.id == proj.id)) \
        == f"P{p.id:05d}-2023"
    session.commit()
