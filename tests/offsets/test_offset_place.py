"""An order placed and completed at once (`offsets.place_offset`: quote, wallet payment, fill and
retirement in one transaction) writes what the three steps write (`create_offset`, `confirm_offset`,
`fulfil`, each committed): the same order row, audit records, journals and postings, listing
reservation, blocks, movements, transfer, retirement and certificate body; a fill that cannot
complete ends refunded with the same reason; and it refuses what the steps refuse, writing nothing."""

from __future__ import annotations

import dataclasses
import re
import threading
import traceback
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, update
from sqlalchemy.orm import sessionmaker

from exchange import offsets, wallets
from exchange.models import CashAccountKind, Journal, Posting
from exchange.offset_models import Footprint, OffsetListing, OffsetOrder, OffsetStatus
from registry import holders, invariants, projects
from registry.errors import InvalidInput, RegistryError
from registry.models import AuditRecord, Block, BlockStatus, Movement, Retirement, Transfer, UserRole
from tests.factories import issued_batch, party
from tests.offsets.conftest import SYMBOL, make_book, make_market
from tests.offsets.test_offset_core import _market, _order, _prepare, written

STEPS = (offsets.create_offset, offsets.confirm_offset, offsets.fulfil)


def _problems(session: Any) -> list[str]:
    return [str(v) for v in invariants.check(session, include_audit=False)] + wallets.check(session) + \
        offsets.check(session)


def _in_steps(session: Any, buyer: Any, quote: dict[str, Any], before_fill: Any) -> OffsetOrder:
    create, confirm, fulfil = STEPS
    oid = create(session, buyer.actor, beneficiary=" 大湾区论坛 ", message="碳中和", **quote).id
    session.commit()
    confirm(session, buyer.actor, oid)
    session.commit()
    before_fill()
    session.commit()
    done = fulfil(session, oid)
    session.commit()
    return done


def _at_once(session: Any, buyer: Any, quote: dict[str, Any]) -> tuple[OffsetOrder, dict[str, Any]]:
    done = offsets.place_offset(session, buyer.actor, beneficiary=" 大湾区论坛 ", message="碳中和", **quote)
    as_returned = _order(done)
    session.commit()
    return done, as_returned


@pytest.mark.parametrize("shape", ["inside", "whole", "all", "footprint", "project_suspended", "buyer_suspended"])
def test_at_once_writes_what_the_three_steps_write(session: Any, monkeypatch: pytest.MonkeyPatch, shape: str) -> None:
    w, buyer, listings, batches = _market(session)
    prepare = shape if shape in ("inside", "whole", "all", "footprint") else "whole"

    def suspend(k: int) -> None:
        if shape == "project_suspended":   # the project of the listing, suspended between the quote and the fill
            projects.set_project_suspension(session, w.operator.actor, listings[2 * k].project_id, True, "audit")
        elif shape == "buyer_suspended" and k == 0:   # the buyer, for both paths
            holders.set_holder_suspension(session, w.operator.actor, buyer.holder.id, True, "KYC review")

    done = _in_steps(session, buyer, _prepare(prepare, session, buyer), lambda: suspend(0))
    session.expire_all()
    steps = {"order": _order(session.get(OffsetOrder, done.id))} | written(session, done, batches[0])
    for listing in listings[:2]:   # the steps used the first project's listings; at once takes the second's
        offsets.close_listing(session, w.owner.actor, listing.id)
    session.commit()

    quote = offsets._quote

    def quote_then_suspend(*args: Any, **kwargs: Any) -> Any:
        q = quote(*args, **kwargs)
        suspend(1)   # as if committed by another transaction meanwhile
        return q
    monkeypatch.setattr(offsets, "_quote", quote_then_suspend)
    done, as_returned = _at_once(session, buyer, _prepare(prepare, session, buyer))
    session.expire_all()
    at_once = {"order": _order(session.get(OffsetOrder, done.id))} | written(session, done, batches[1])

    assert as_returned == at_once["order"]   # the object returned is the row as committed
    assert at_once == steps
    if shape.endswith("suspended"):
        assert done.status is OffsetStatus.REFUNDED and "is suspended" in (done.reason or "")
        assert done.reason is not None and done.reason.startswith("the fill could not complete: ")
    else:
        assert done.status is OffsetStatus.RETIRED and at_once["registry"]["retirement"][2] == done.quantity_kg
        assert [a for a, *_ in at_once["audit"]] == ["offset.quoted", "offset.paid", "offset.retired"]
    assert _problems(session) == []


def _count(session: Any) -> tuple[int, ...]:
    return tuple(session.scalar(select(func.count()).select_from(t)) or 0
                 for t in (OffsetOrder, Journal, Posting, AuditRecord, Transfer, Retirement, Movement, Block)) + (
        session.scalar(select(func.sum(OffsetListing.available_kg))),
        session.scalar(select(func.sum(Block.quantity)).where(Block.status == BlockStatus.RETIRED)))


def _error(e: Any) -> tuple[Any, ...]:
    return type(e), e.field, e.code, re.sub(r"order \d+", "order #", e.message)


REFUSED_BY_THE_QUOTE = ["no_supply", "zero", "negative", "not_an_int", "bool", "no_footprint", "more_than_footprint",
                        "covered", "blank_jurisdiction", "blank_beneficiary", "unknown_preference", "bad_payment",
                        "viewer"]


@pytest.mark.parametrize("case", [*REFUSED_BY_THE_QUOTE, "poor", "broke", "card"])
def test_refusals_are_the_steps_refusals_and_write_nothing(session: Any, case: str) -> None:
    from exchange import footprints
    from tests.offsets.test_footprints import CONFERENCE
    w, buyer, listings, _ = _market(session)
    fp = footprints.create_footprint(session, buyer.actor, "event", CONFERENCE)
    actor = buyer.actor
    kwargs: dict[str, Any] = {"beneficiary": "x", "quantity_kg": 300}
    if case == "broke":
        actor = party(session, offsets.HolderKind.ENTERPRISE, "没钱的公司").actor   # no wallet at all
    session.commit()
    if case == "covered":   # a footprint of 300 kg, quoted in full: nothing left to cover
        session.execute(update(Footprint).where(Footprint.id == fp.id).values(total_kg=300))
        offsets.create_offset(session, actor, beneficiary="x", footprint_id=fp.id)
        session.commit()
        kwargs = {"beneficiary": "x", "footprint_id": fp.id}
    kwargs |= {"no_supply": {"quantity_kg": 1001}, "zero": {"quantity_kg": 0}, "negative": {"quantity_kg": -5},
               "not_an_int": {"quantity_kg": "300"}, "bool": {"quantity_kg": True},
               "no_footprint": {"footprint_id": fp.id + 1000},
               "more_than_footprint": {"footprint_id": fp.id, "quantity_kg": fp.total_kg + 1},
               "blank_jurisdiction": {"jurisdiction": "  "}, "blank_beneficiary": {"beneficiary": " "},
               "unknown_preference": {"preference": {"colour": "green"}}, "bad_payment": {"payment": "cash"},
               "card": {"payment": "card"}}.get(case, {})
    if case == "viewer":
        actor = dataclasses.replace(actor, role=UserRole.VIEWER)
    if case == "poor":   # one fen short of the total of 300 kg at ¥60/t and its fee
        available = wallets.balance(session, buyer.holder.id).available
        wallets.hold(session, buyer.holder.id, available - (18_00 + 9) + 1, ref="elsewhere")
        session.commit()

    # What the three steps say: the quote's refusal, or the payment's
    if case == "card":
        expected: tuple[Any, ...] = (InvalidInput, "confirm", "confirm_needs_wallet")
    else:
        try:
            o = offsets.create_offset(session, actor, **kwargs)
        except RegistryError as refused:
            session.rollback()
            expected = _error(refused)
        else:
            assert case in ("poor", "broke"), f"{case}: the quote was not refused"
            session.commit()
            with pytest.raises(RegistryError) as e:
                offsets.confirm_offset(session, actor, o.id)
            session.rollback()
            expected = _error(e.value)
            assert expected[1] == "payment"
            offsets.cancel_offset(session, actor, o.id)
            session.commit()

    before = _count(session)
    with pytest.raises(RegistryError) as e:
        offsets.place_offset(session, actor, **kwargs)
    session.rollback()
    assert _error(e.value)[:len(expected)] == expected
    assert _count(session) == before
    assert _problems(session) == []


def test_at_once_on_the_order_book_places_the_buy_and_finishes_when_the_engine_answered(
        session: Any, session_factory: Any, market: Any) -> None:
    m = market
    book = make_book(session, session_factory, m)
    o = offsets.place_offset(session, m.buyer.actor, quantity_kg=6_000, beneficiary="交易所买入",
                             preference={"instrument": SYMBOL, "source": "exchange"})
    session.commit()
    assert o.status is OffsetStatus.PAID and o.exchange_order_id is not None and o.paid_amount == o.total
    book.run_once()
    session.expire_all()
    done = offsets.fulfil(session, o.id)
    session.commit()
    assert done.status is OffsetStatus.RETIRED and done.filled_kg == 6_000
    assert session.get(Retirement, done.retirement_id).quantity_kg == 6_000
    actions = list(session.scalars(select(AuditRecord.action).where(
        AuditRecord.entity_type == "offset_order", AuditRecord.entity_id == str(o.id)).order_by(AuditRecord.id)))
    assert actions == ["offset.quoted", "offset.paid", "offset.buy_placed", "offset.filled", "offset.retired"]
    assert _problems(session) == []


@pytest.mark.parametrize("project_type, found", [("project", True), ("programme", False), ("energy", True),
                                                 ("forestry", False)])
def test_the_preferred_project_type_picks_the_listing(session: Any, project_type: str, found: bool) -> None:
    """A project kind matches the project's kind, anything else the methodology's sector."""
    _, buyer, listings, _ = _market(session)
    pref = {"project_type": project_type, "vintage": 2024}
    if not found:
        with pytest.raises(RegistryError) as e:
            offsets.place_offset(session, buyer.actor, beneficiary="x", quantity_kg=700, preference=pref)
        assert (e.value.field, e.value.code) == ("quantity_kg", "no_supply")
        return
    done = offsets.place_offset(session, buyer.actor, beneficiary="x", quantity_kg=700, preference=pref)
    session.commit()
    assert done.status is OffsetStatus.RETIRED and done.listing_id == listings[1].id


@pytest.mark.postgres
def test_orders_at_once_and_in_steps_of_the_same_buyers_run_together(session: Any, engine: Any) -> None:
    """Four buyers, each placing orders at once in one thread (from the 2023 listing) and in three
    steps in another (from the 2024 one): the cash accounts of a buyer, the seller and the fees are
    locked in id order by both paths (after the listing and the blocks), so nothing deadlocks (were
    the buyer's locked by the payment before the fill locked the fees, it would); every order is
    retired and every invariant holds."""
    m = make_market(session)
    wallets.system_account(session, CashAccountKind.FEES)   # before the buyers' wallets, as the migration opens it
    issued_batch(session, m.w, m.project, 100_000, year=2023)
    listings = [offsets.create_listing(session, m.seller.actor, project_id=m.project.id, vintage=vintage,
                                       quantity_kg=100_000, price=60_00) for vintage in (2023, 2024)]
    buyers = [party(session, offsets.HolderKind.ENTERPRISE, f"买方{i}") for i in range(4)]
    for b in buyers:
        wallets.deposit(session, m.w.operator.actor, b.holder.id, 1_000_00)
    session.commit()
    big = create_engine(engine.url.render_as_string(hide_password=False), pool_size=10)
    factory = sessionmaker(bind=big, expire_on_commit=False)
    start = threading.Barrier(8)
    failures: list[str] = []

    def run(i: int, at_once: bool) -> None:
        actor = buyers[i].actor
        start.wait()
        try:
            for n in range(6):
                with factory() as s:
                    qty = 500 + 250 * ((i + n) % 4)
                    if at_once:
                        o = offsets.place_offset(s, actor, quantity_kg=qty, beneficiary=f"买方{i}",
                                                 preference={"vintage": 2023})
                        s.commit()
                    else:
                        oid = offsets.create_offset(s, actor, quantity_kg=qty, beneficiary=f"买方{i}",
                                                    preference={"vintage": 2024}).id
                        s.commit()
                        offsets.confirm_offset(s, actor, oid)
                        s.commit()
                        o = offsets.fulfil(s, oid)
                        s.commit()
                    assert o.status is OffsetStatus.RETIRED, (o.status, o.reason)
        except Exception:  # noqa: BLE001 - reported below
            failures.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(i, k == 0)) for i in range(4) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "hung"
    big.dispose()
    assert not failures, "\n".join(failures[:3])
    session.expire_all()
    orders = session.scalars(select(OffsetOrder)).all()
    assert len(orders) == 48 and {o.status for o in orders} == {OffsetStatus.RETIRED}
    for listing in listings:
        assert session.get(OffsetListing, listing.id).available_kg == 100_000 - sum(
            o.quantity_kg for o in orders if o.listing_id == listing.id)
    assert _problems(session) == []


@pytest.mark.parametrize("when", ["after_the_fill_wrote", "at_the_payment"])
def test_a_database_error_places_nothing(session: Any, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """The fill runs without a savepoint: an error that is not a refusal (here a statement the
    database rejects, after the delivery and retirement were written, or when the money moves)
    leaves the transaction to the caller's rollback, and then nothing of the order exists."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError
    _, buyer, _, _ = _market(session)
    session.commit()
    before = _count(session)
    real = offsets.deliver_and_retire if when == "after_the_fill_wrote" else wallets.post_locked_many

    def then_fail(s: Any, *args: Any, **kwargs: Any) -> Any:
        out = real(s, *args, **kwargs)
        s.execute(text("SELECT no_such_column FROM no_such_table"))
        return out
    monkeypatch.setattr(offsets if when == "after_the_fill_wrote" else wallets, real.__name__, then_fail)
    with pytest.raises(DBAPIError):
        offsets.place_offset(session, buyer.actor, beneficiary="x", quantity_kg=300)
    session.rollback()
    assert _count(session) == before
    assert _problems(session) == []


@pytest.mark.parametrize("message", [None, "碳中和 ✓ \"net zero\"\n"])
@pytest.mark.parametrize("shape", ["inside", "whole", "all", "footprint"])
def test_the_certificate_of_an_order_placed_at_once_needs_no_query(
        session: Any, engine: Any, shape: str, message: str | None) -> None:
    """`place` returns what the certificate says: its body is, byte for byte in canonical JSON,
    the one `certificate_body` reads from the database after the commit, and making it runs no
    statement."""
    from registry import certificates
    from tests.offsets.test_delivered_retirement import _statements
    _, buyer, _, _ = _market(session)
    quote = _prepare(shape, session, buyer)
    session.commit()
    placed = offsets.place(session, buyer.actor, beneficiary=" 大湾区论坛 🌏 ", message=message, **quote)
    session.commit()
    seen, stop = _statements(engine)
    try:
        made = placed.certificate_body("https://tanhui.example")
    finally:
        stop()
    assert seen == []
    session.expire_all()
    read = certificates.certificate_body(session, session.get(Retirement, placed.order.retirement_id),
                                         "https://tanhui.example")
    assert certificates.canonical_json(made) == certificates.canonical_json(read)
    assert read["footprint_ref"] is not None if shape == "footprint" else read["footprint_ref"] is None


def test_a_refunded_placement_has_no_certificate(session: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from registry.errors import Conflict
    w, buyer, listings, _ = _market(session)
    session.commit()
    quote = offsets._quote

    def quote_then_suspend(*args: Any, **kwargs: Any) -> Any:
        q = quote(*args, **kwargs)
        projects.set_project_suspension(session, w.operator.actor, listings[0].project_id, True, "audit")
        return q
    monkeypatch.setattr(offsets, "_quote", quote_then_suspend)
    placed = offsets.place(session, buyer.actor, beneficiary="x", quantity_kg=300, preference={"vintage": 2023})
    assert placed.order.status is OffsetStatus.REFUNDED and placed.retired is None
    with pytest.raises(Conflict):
        placed.certificate_body("https://tanhui.example")
