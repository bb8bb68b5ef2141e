from registry import units
from tests.factories import issued_batch, registered_project, world


def test_issue_transfer_retire(session):
    w = world(session)
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 1000)
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=units.Selection(quantity_kg=400))
    r = units.retire(session, w.buyer.actor, selection=units.Selection(quantity_kg=150), beneficiary="会议",
                     jurisdiction="深圳市", purpose="event_offset")
    session.commit()
    assert r.quantity_kg == 150
    assert b.quantity_kg == 1000
