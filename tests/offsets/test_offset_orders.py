"""Offset orders filled from fixed-price listings and paid from the wallet (and the card hooks)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from exchange import footprints, offsets, wallets
from exchange.errors import InsufficientFunds
from exchange.models import CashAccount, CashAccountKind, Withdrawal
from exchange.offset_models import OffsetListing, OffsetStatus
from registry import certificates, invariants, projects
from registry.db import utcnow
from registry.errors import Conflict, InsufficientUnits, InvalidInput, NotFound
from registry.models import Block, BlockStatus, HolderKind, Retirement
from tests.factories import party
from tests.offsets.conftest import CASH, PRICE
from tests.offsets.test_footprints import CONFERENCE


def _fees(session) -> int:
    return session.scalar(select(CashAccount.balance).where(CashAccount.holder_id.is_(None),
                                                           CashAccount.kind == CashAccountKind.FEES)) or 0


def _listing(session, m, kg=100_000, price=PRICE) -> OffsetListing:
    return offsets.create_listing(session, m.seller.actor, project_id=m.project.id, vintage=2024, quantity_kg=kg,
                                  price=price)


def _problems(session) -> list[str]:
    return [str(v) for v in invariants.check(session, include_audit=False)] + wallets.check(session) + \
        offsets.check(session)


def test_footprint_offset_quote_pay_fill_retire_certificate(session, market) -> None:
    m = market
    listing = _listing(session, m)
    fp = footprints.create_footprint(session, m.buyer.actor, "event", CONFERENCE)
    order = offsets.create_offset(session, m.buyer.actor, footprint_id=fp.id, beneficiary="大湾区低碳论坛 2026",
                                  message="碳中和会议")
    session.commit()
    # 77,095 kg at ¥60/t: 6,000 × 77,095 / 1,000 = 462,570 fen; fee 50 bp = 2,312.85 → 2,313; total 464,883.
    assert (order.status, order.quantity_kg, order.price) == (OffsetStatus.DRAFT, 77_095, PRICE)
    assert (order.notional, order.fee, order.total) == (462_570, 2_313, 464_883)
    assert order.purpose == "event_offset" and order.reserved_kg == 77_095
    assert session.get(OffsetListing, listing.id).available_kg == 100_000 - 77_095
    assert order.expires_at - order.created_at == offsets.QUOTE_TTL

    offsets.confirm_offset(session, m.buyer.actor, order.id)
    session.commit()
    assert order.status is OffsetStatus.PAID and order.paid_amount == 464_883
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH - 464_883, 464_883)

    offsets.fulfil(session, order.id)
    session.commit()
    assert order.status is OffsetStatus.RETIRED and order.filled_kg == 77_095 and order.reserved_kg == 0
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH - 464_883, 0)
    assert wallets.balance(session, m.seller.holder.id).available == 462_570
    assert _fees(session) == 2_313
    r = session.get(Retirement, order.retirement_id)
    assert r.certificate_number == order.certificate_number and r.quantity_kg == 77_095
    assert r.beneficiary == "大湾区低碳论坛 2026" and r.message == "碳中和会议"
    assert r.footprint_ref == f"footprint:{fp.id} 大湾区低碳论坛 2026" and r.holder_id == m.buyer.holder.id
    retired = session.scalars(select(Block).where(Block.retirement_id == r.id)).all()
    assert sum(b.quantity for b in retired) == 77_095 and all(b.status is BlockStatus.RETIRED for b in retired)
    assert [(b.start, b.end) for b in retired] == [(1, 77_095)]     # the oldest listed serials
    listed = session.scalar(select(func.sum(Block.quantity)).where(Block.hold_ref == listing.ref)) or 0
    assert listed == 100_000 - 77_095

    key = certificates.SigningKey.generate()
    doc = certificates.issue_document(session, r, key, "https://tanhui.example")
    assert doc["certificate"]["footprint_ref"].startswith(f"footprint:{fp.id}")
    assert certificates.verify_document(doc, key.public_key_pem()).ok

    # Running the fill again changes nothing; the footprint is covered.
    assert offsets.fulfil(session, order.id).status is OffsetStatus.RETIRED
    assert session.scalar(select(func.count()).select_from(Retirement)) == 1
    with pytest.raises(Conflict) as e:
        offsets.create_offset(session, m.buyer.actor, footprint_id=fp.id, beneficiary="x")
    assert e.value.field == "footprint_id"
    assert _problems(session) == []


def test_preferences_pick_the_cheapest_matching_listing(session, market) -> None:
    m = market
    dear = _listing(session, m, 50_000, 80_00)
    cheap = _listing(session, m, 50_000, 55_00)
    o1 = offsets.create_offset(session, m.buyer.actor, quantity_kg=10_000, beneficiary="a")
    assert o1.listing_id == cheap.id and o1.preference == {"cheapest": True, "source": "listing"}
    o2 = offsets.create_offset(session, m.buyer.actor, quantity_kg=45_000, beneficiary="b",
                               preference={"vintage": 2024, "project_type": "energy"})
    assert o2.listing_id == dear.id            # the cheap one has only 40,000 kg left
    with pytest.raises(InsufficientUnits) as e:
        offsets.create_offset(session, m.buyer.actor, quantity_kg=1_000, beneficiary="c",
                              preference={"vintage": 2023})
    assert e.value.field == "quantity_kg"
    with pytest.raises(InsufficientUnits):
        offsets.create_offset(session, m.buyer.actor, quantity_kg=1_000, beneficiary="c",
                              preference={"project_type": "forestry"})
    with pytest.raises(InvalidInput) as e:
        offsets.create_offset(session, m.buyer.actor, quantity_kg=1_000, beneficiary="c", preference={"colour": "x"})
    assert e.value.field == "preference.colour"
    with pytest.raises(InsufficientUnits):          # a seller cannot buy its own listing
        offsets.create_offset(session, m.seller.actor, quantity_kg=1_000, beneficiary="c")
    session.commit()
    assert _problems(session) == []


def test_expiry_and_cancel_release_the_reservation(session, market) -> None:
    m = market
    listing = _listing(session, m)
    a = offsets.create_offset(session, m.buyer.actor, quantity_kg=30_000, beneficiary="a")
    b = offsets.create_offset(session, m.buyer.actor, quantity_kg=20_000, beneficiary="b")
    session.commit()
    assert session.get(OffsetListing, listing.id).available_kg == 50_000
    later = utcnow() + offsets.QUOTE_TTL + dt.timedelta(seconds=1)
    assert offsets.expire_due(session, utcnow()) == []
    offsets.cancel_offset(session, m.buyer.actor, b.id, "changed my mind")
    assert offsets.expire_due(session, later) == [a.id]
    session.commit()
    assert (a.status, a.reason, a.reserved_kg) == (OffsetStatus.CANCELLED, "quote_expired", 0)
    assert (b.status, b.reason) == (OffsetStatus.CANCELLED, "changed my mind")
    assert session.get(OffsetListing, listing.id).available_kg == 100_000
    with pytest.raises(Conflict):
        offsets.confirm_offset(session, m.buyer.actor, a.id)
    with pytest.raises(Conflict):
        offsets.cancel_offset(session, m.buyer.actor, a.id)
    # An expired but not yet swept quote cannot be paid either.
    c = offsets.create_offset(session, m.buyer.actor, quantity_kg=1_000, beneficiary="c", ttl=dt.timedelta(0))
    session.commit()
    with pytest.raises(Conflict) as e:
        offsets.confirm_offset(session, m.buyer.actor, c.id)
    assert e.value.code == "quote_expired"
    session.rollback()
    assert wallets.balance(session, m.buyer.holder.id).available == CASH
    assert _problems(session) == []


def test_wallet_too_small_leaves_the_quote(session, market) -> None:
    m = market
    _listing(session, m, 200_000, 60_00)
    order = offsets.create_offset(session, m.buyer.actor, quantity_kg=200_000, beneficiary="big")
    session.commit()
    assert order.total == 12_000_00 + 6_000       # more than the ¥10,000 in the wallet
    with pytest.raises(InsufficientFunds) as e:
        offsets.confirm_offset(session, m.buyer.actor, order.id)
    assert e.value.field == "payment"
    session.rollback()
    assert session.get(type(order), order.id).status is OffsetStatus.DRAFT
    other = party(session, HolderKind.INDIVIDUAL)
    with pytest.raises(NotFound):
        offsets.get_offset(session, other.actor, order.id)
    session.rollback()
    assert _problems(session) == []


def test_fill_that_cannot_complete_is_refunded_with_the_reason(session, market) -> None:
    m = market
    listing = _listing(session, m)
    order = offsets.create_offset(session, m.buyer.actor, quantity_kg=5_000, beneficiary="x")
    offsets.confirm_offset(session, m.buyer.actor, order.id)
    session.commit()
    projects.set_project_suspension(session, m.w.operator.actor, m.project.id, True, "under review")
    session.commit()
    offsets.fulfil(session, order.id)
    session.commit()
    assert order.status is OffsetStatus.REFUNDED and "suspended" in order.reason
    assert order.refunded_amount == order.paid_amount == order.total
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH, 0)
    assert wallets.balance(session, m.seller.holder.id).total == 0
    assert session.get(OffsetListing, listing.id).available_kg == 100_000
    assert session.scalar(select(func.count()).select_from(Retirement)) == 0
    assert _problems(session) == []


def test_card_payment_hooks(session, market) -> None:
    m = market
    _listing(session, m)
    refunds: list[tuple[int, int]] = []
    previous = offsets.set_card_refunder(lambda s, o, amount: refunds.append((o.id, amount)) or f"re_{o.id}")
    try:
        order = offsets.create_offset(session, m.buyer.actor, quantity_kg=2_000, beneficiary="card", payment="card")
        offsets.confirm_offset(session, m.buyer.actor, order.id)
        assert order.status is OffsetStatus.AWAITING_PAYMENT
        assert offsets.confirm_offset(session, m.buyer.actor, order.id) is order     # idempotent
        offsets.mark_paid(session, order.id, payment_ref="pi_1")
        offsets.mark_paid(session, order.id, payment_ref="pi_1")                      # webhook repeated
        with pytest.raises(Conflict):
            offsets.mark_paid(session, order.id, payment_ref="pi_2")
        session.commit()
        assert order.status is OffsetStatus.PAID and order.paid_amount == order.total == 12_000 + 60
        offsets.fulfil(session, order.id)
        session.commit()
        assert order.status is OffsetStatus.RETIRED
        assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH, 0)   # the card paid

        late = offsets.create_offset(session, m.buyer.actor, quantity_kg=1_000, beneficiary="late", payment="card",
                                     ttl=dt.timedelta(0))
        session.commit()
        offsets.mark_paid(session, late.id, payment_ref="pi_late")
        session.commit()
        assert late.status is OffsetStatus.REFUNDED and late.refund_ref == f"re_{late.id}"
        assert "after the order was cancelled" in late.reason and late.reserved_kg == 0
        assert refunds == [(late.id, late.total)]
        w = session.scalars(select(Withdrawal)).one()
        assert (w.amount, w.bank_reference) == (late.total, "card-refund:pi_late")
        assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH, 0)
    finally:
        offsets.set_card_refunder(previous)
    assert _problems(session) == []


def test_crash_between_payment_and_retirement_resumes_once(session, session_factory, market) -> None:
    m = market
    _listing(session, m)
    order = offsets.create_offset(session, m.buyer.actor, quantity_kg=7_000, beneficiary="resume")
    offsets.confirm_offset(session, m.buyer.actor, order.id)
    session.commit()          # the payment is committed, then the process dies before the fill
    oid = order.id
    assert offsets.resume_paid(session_factory) == [oid]
    assert offsets.resume_paid(session_factory) == []
    session.expire_all()
    done = offsets.get_offset(session, m.buyer.actor, oid)
    assert done.status is OffsetStatus.RETIRED and done.filled_kg == 7_000
    assert session.scalar(select(func.count()).select_from(Retirement)) == 1
    assert _problems(session) == []


def test_jobs_and_cli_expire_and_resume(session, session_factory, runner, market) -> None:
    from exchange import offset_jobs
    m = market
    _listing(session, m)
    stale = offsets.create_offset(session, m.buyer.actor, quantity_kg=1_000, beneficiary="s", ttl=dt.timedelta(0))
    paid = offsets.create_offset(session, m.buyer.actor, quantity_kg=2_000, beneficiary="p")
    offsets.confirm_offset(session, m.buyer.actor, paid.id)
    session.commit()
    assert offset_jobs.run_offset_expiry(session_factory) == [stale.id]
    out = runner.invoke(args=["offsets", "resume"])
    assert out.exit_code == 0 and f"[{paid.id}]" in out.output
    assert offset_jobs.run_resume(session_factory) == []
    assert runner.invoke(args=["offsets", "check"]).output.strip() == "offsets consistent"
    session.expire_all()
    assert offsets.get_offset(session, m.buyer.actor, paid.id).status is OffsetStatus.RETIRED
    assert offsets.get_offset(session, m.buyer.actor, stale.id).status is OffsetStatus.CANCELLED


def test_part_of_a_footprint(session, market) -> None:
    m = market
    _listing(session, m)
    fp = footprints.create_footprint(session, m.buyer.actor, "event", CONFERENCE)
    with pytest.raises(Conflict) as e:
        offsets.create_offset(session, m.buyer.actor, footprint_id=fp.id, quantity_kg=77_096, beneficiary="x")
    assert e.value.field == "quantity_kg"
    a = offsets.create_offset(session, m.buyer.actor, footprint_id=fp.id, quantity_kg=70_000, beneficiary="x")
    b = offsets.create_offset(session, m.buyer.actor, footprint_id=fp.id, beneficiary="x")
    assert (a.quantity_kg, b.quantity_kg) == (70_000, 7_095)
    assert offsets.covered_kg(session, fp.id) == (0, 77_095)
    offsets.cancel_offset(session, m.buyer.actor, b.id)
    assert offsets.covered_kg(session, fp.id) == (0, 70_000)
    session.commit()


def test_crash_inside_the_fill_leaves_nothing_half_done(session, session_factory, market, monkeypatch) -> None:
    m = market
    _listing(session, m)
    order = offsets.create_offset(session, m.buyer.actor, quantity_kg=3_000, beneficiary="crash")
    offsets.confirm_offset(session, m.buyer.actor, order.id)
    session.commit()
    oid = order.id

    class Killed(BaseException):
        pass

    def die(*a, **k):
        raise Killed()
    # the process dies after the units are delivered and retired, before the money moves
    monkeypatch.setattr(offsets.wallets, "post_locked", die)
    with pytest.raises(Killed):
        offsets.resume_paid(session_factory)
    monkeypatch.undo()
    session.expire_all()
    assert offsets.get_offset(session, m.buyer.actor, oid).status is OffsetStatus.PAID
    assert wallets.balance(session, m.seller.holder.id).total == 0      # the DvP rolled back with it
    session.rollback()
    assert offsets.resume_paid(session_factory) == [oid]
    session.expire_all()
    assert offsets.get_offset(session, m.buyer.actor, oid).status is OffsetStatus.RETIRED
    assert session.scalar(select(func.count()).select_from(Retirement)) == 1
    assert _problems(session) == []


def _stuck(session, m, *quantities: int) -> list[int]:
    """Paid wallet orders whose fill never ran (the process died after the payment's commit)."""
    ids = []
    for qty in quantities:
        order = offsets.create_offset(session, m.buyer.actor, quantity_kg=qty, beneficiary=f"stuck {qty}")
        offsets.confirm_offset(session, m.buyer.actor, order.id)
        ids.append(order.id)
    session.commit()
    return ids


def _resume_failures(session, oid: int) -> list[dict]:
    import json

    from registry.models import AuditRecord
    return [json.loads(x) for x in session.scalars(select(AuditRecord.payload).where(
        AuditRecord.action == "offset.resume_failed", AuditRecord.entity_id == str(oid)).order_by(AuditRecord.id))]


def test_resume_goes_on_past_an_order_that_fails_and_refunds_it_after_the_last_attempt(
        session, session_factory, market, monkeypatch) -> None:
    m = market
    _listing(session, m)
    # A: 3,000 kg at ¥60/t = 18,000 + 90 fee (50 bp) = 18,090; B: 2,000 kg = 12,000 + 60 = 12,060.
    a, b = _stuck(session, m, 3_000, 2_000)
    fill = offsets._fill_from_listing

    def flaky(s, order):
        if order.id == a:
            raise RuntimeError("disk on fire")
        return fill(s, order)
    monkeypatch.setattr(offsets, "_fill_from_listing", flaky)
    failures: dict[int, str] = {}
    assert offsets.resume_paid(session_factory, failures=failures) == [b]
    assert failures == {a: "RuntimeError: disk on fire"}
    session.expire_all()
    first = offsets.get_offset(session, m.buyer.actor, a)
    assert (first.status, first.resume_attempts, first.resume_error) == (
        OffsetStatus.PAID, 1, "RuntimeError: disk on fire")
    assert offsets.get_offset(session, m.buyer.actor, b).status is OffsetStatus.RETIRED
    assert _resume_failures(session, a) == [{"attempt": 1, "error": "RuntimeError: disk on fire", "refund": False}]
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH - 18_090 - 12_060, 18_090)
    session.rollback()

    # It may be passing (a lock, a restart): the job tries again, and gives up on the fifth failure.
    for _ in range(offsets.MAX_RESUME_ATTEMPTS - 2):
        assert offsets.resume_paid(session_factory) == []
    session.expire_all()
    assert offsets.get_offset(session, m.buyer.actor, a).status is OffsetStatus.PAID
    session.rollback()
    assert offsets.resume_paid(session_factory) == []
    session.expire_all()
    gone = offsets.get_offset(session, m.buyer.actor, a)
    assert (gone.status, gone.resume_attempts, gone.refunded_amount, gone.reason) == (
        OffsetStatus.REFUNDED, 5, 18_090, "the order could not be completed: RuntimeError: disk on fire")
    assert [x["refund"] for x in _resume_failures(session, a)] == [False] * 4 + [True]
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH - 12_060, 0)
    assert _listing_available(session, m) == 100_000 - 2_000
    assert session.scalar(select(func.count()).select_from(Retirement)) == 1
    session.rollback()
    monkeypatch.undo()
    assert offsets.resume_paid(session_factory) == []
    assert _problems(session) == []


def _listing_available(session, m) -> int:
    return session.scalar(select(OffsetListing.available_kg).where(OffsetListing.seller_id == m.seller.holder.id))


def test_resume_refunds_at_once_an_order_that_can_never_complete(session, session_factory, market,
                                                                 monkeypatch) -> None:
    m = market
    _listing(session, m)
    a, b = _stuck(session, m, 3_000, 2_000)
    fulfil = offsets.fulfil

    def broken(s, oid):
        if oid == a:
            raise Conflict("the order's holder has no registry account", code="no_account")
        return fulfil(s, oid)
    monkeypatch.setattr(offsets, "fulfil", broken)
    failures: dict[int, str] = {}
    assert offsets.resume_paid(session_factory, failures=failures) == [b]
    why = "no_account: the order's holder has no registry account"
    assert failures == {a: why}
    session.expire_all()
    gone = offsets.get_offset(session, m.buyer.actor, a)
    assert (gone.status, gone.resume_attempts, gone.resume_error, gone.refunded_amount, gone.reason) == (
        OffsetStatus.REFUNDED, 1, why, 18_090, f"the order could not be completed: {why}")
    assert offsets.get_offset(session, m.buyer.actor, b).status is OffsetStatus.RETIRED
    assert _resume_failures(session, a) == [{"attempt": 1, "error": why, "refund": True}]
    assert wallets.balance(session, m.buyer.holder.id) == wallets.Balance(CASH - 12_060, 0)
    session.rollback()
    assert _problems(session) == []
