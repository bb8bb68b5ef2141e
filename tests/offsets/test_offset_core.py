"""The wallet-paid offset path in Core statements (quote `create_offset`, pay `confirm_offset`, fill
`fulfil` from a listing, `certificates.certificate_body`) writes what the ORM path it replaced wrote
(tests/offsets/orm_offsets.py): the same order row at every step, the same listing reservation,
cash journals, blocks, movements, audit records and certificate, and refuses the same way."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import func, select

from exchange import footprints, offsets, wallets
from exchange.models import Journal, Posting
from exchange.offset_models import OffsetListing, OffsetOrder, OffsetStatus
from registry import certificates, projects
from registry.models import AuditRecord, Retirement, Transfer
from tests.factories import issued_batch, party, registered_project, world
from tests.offsets import orm_offsets as orm
from tests.offsets.test_delivered_retirement import _state
from tests.offsets.test_footprints import CONFERENCE

NEW = (offsets.create_offset, offsets.confirm_offset, offsets.fulfil, certificates.certificate_body)
OLD = (orm.create_offset, orm.confirm_offset, orm.fulfil, orm.certificate_body)
_TIMES = {"id", "listing_id", "footprint_id", "retirement_id", "certificate_number", "created_at", "updated_at",
          "expires_at", "paid_at", "filled_at", "retired_at"}


def _market(session: Any) -> Any:
    """Two listings of the same shape (one project each: batches of 1,000 and 700 kg, vintages 2023
    and 2024) at the same price, and a buyer with money."""
    from registry import factors
    factors.sync_shipped(session)
    w = world(session)
    buyer = party(session, offsets.HolderKind.ENTERPRISE, "华南软件")   # organisational, unless a footprint says
    buyer.holder.city, buyer.holder.province = "深圳市", "广东省"
    wallets.deposit(session, w.operator.actor, buyer.holder.id, 10_000_00)
    listings, batches = [], []
    for _ in range(2):
        p = registered_project(session, w)
        batches.append([issued_batch(session, w, p, kg, year=2023 + i) for i, kg in enumerate((1000, 700))])
        for vintage, kg in ((2023, 1000), (2024, 700)):
            listings.append(offsets.create_listing(session, w.owner.actor, project_id=p.id, vintage=vintage,
                                                   quantity_kg=kg, price=60_00))
    session.commit()
    return w, buyer, listings, batches


def _project_free(text: Any) -> Any:
    return re.sub(r"project \d+", "project P", text) if isinstance(text, str) else text


def _order(o: OffsetOrder) -> dict[str, Any]:
    return {c: getattr(o, c) for c in o.__table__.columns.keys() if c not in _TIMES} | {"reason": _project_free(o.reason),
        "times": tuple(getattr(o, c) is None for c in sorted(_TIMES))}


def _audit(session: Any, order_id: int) -> list[Any]:
    out = []
    for rec in session.scalars(select(AuditRecord).where(AuditRecord.entity_type == "offset_order",
                                                         AuditRecord.entity_id == str(order_id))
                               .order_by(AuditRecord.id)):
        payload = json.loads(rec.payload)
        for k in ("listing_id", "expires_at", "certificate_number", "retirement_id", "footprint_id"):
            payload.pop(k, None)
        if "reason" in payload:
            payload["reason"] = _project_free(payload["reason"])
        out.append((rec.action, rec.actor_user_id, rec.actor_holder_id, payload))
    return out


def _cash(session: Any, order: OffsetOrder) -> list[Any]:
    return [(j.kind.value, (j.memo or "").replace(f"order {order.id}", "order N")
             .replace(f"listing {order.listing_id}", "listing L"), j.created_by_id,
             sorted(session.execute(select(Posting.account_id, Posting.amount).where(Posting.journal_id == j.id))))
            for j in session.scalars(select(Journal).where(Journal.ref == order.ref).order_by(Journal.id))]


def _run(session: Any, path: tuple[Any, ...], buyer: Any, batches: list[Any], **quote: Any) -> dict[str, Any]:
    create, confirm, fulfil, body = path
    steps = []
    o = create(session, buyer.actor, beneficiary=" 大湾区论坛 ", message="碳中和", **quote)
    oid = o.id
    session.commit()
    steps.append(_order(session.get(OffsetOrder, oid)))
    confirm(session, buyer.actor, oid)
    session.commit()
    steps.append(_order(session.get(OffsetOrder, oid)))
    done = fulfil(session, oid)
    session.commit()
    steps.append(_order(done))
    session.expire_all()
    steps.append(_order(session.get(OffsetOrder, oid)))
    return {"steps": steps} | written(session, done, batches, body)


def written(session: Any, done: OffsetOrder, batches: list[Any], body: Any = certificates.certificate_body) -> dict[str, Any]:
    """What an order wrote, its ids and times left out: its audit records, cash journals, its listing's
    availability and, once retired, the registry's rows (`_state`) and the certificate body."""
    oid = done.id
    out: dict[str, Any] = {"audit": _audit(session, oid), "cash": _cash(session, done),
                           "listing": session.get(OffsetListing, done.listing_id).available_kg}
    if done.status is OffsetStatus.RETIRED:
        r = session.get(Retirement, done.retirement_id)
        state = _state(session, batches, session.scalar(select(Transfer.id).where(
            Transfer.memo == f"offset order {oid}")), r.id)
        t = state["transfer"]
        state["transfer"] = (*t[:3], t[3].replace(str(oid), "N"), *t[4:])
        for _, _, payload in state["audit"].values():
            payload["memo"] = payload.get("memo", "").replace(str(oid), "N")
        fp = f"footprint:{done.footprint_id} "
        rt = state["retirement"]
        state["retirement"] = (*rt[:6], (rt[6] or "").replace(fp, "footprint:N "), *rt[7:])
        for _, _, payload in state["audit"].values():
            if payload.get("footprint_ref"):
                payload["footprint_ref"] = payload["footprint_ref"].replace(fp, "footprint:N ")
        out["registry"] = state
        doc = body(session, r, "https://tanhui.example")
        for s in doc["serials"]:
            s["project"]["id"] = s["project"]["code"] = s["serial"] = None
        doc["footprint_ref"] = (doc["footprint_ref"] or "").replace(f"footprint:{done.footprint_id} ", "")
        out["certificate"] = {k: v for k, v in doc.items() if k not in ("certificate_number", "retired_at",
                                                                          "verification_url")}
    return out


def _prepare(shape: str, session: Any, buyer: Any) -> dict[str, Any]:
    if shape == "footprint":
        return {"footprint_id": footprints.create_footprint(session, buyer.actor, "event", CONFERENCE).id,
                "quantity_kg": 800}
    return {"quantity_kg": {"inside": 300, "whole": 1000, "all": 700}[shape],
            "preference": {"vintage": 2024 if shape == "all" else 2023}} | (
        {"jurisdiction": " 深圳 "} if shape == "whole" else {})


@pytest.mark.parametrize("shape", ["inside", "whole", "all", "footprint", "fill_fails"])
def test_the_core_path_writes_what_the_orm_path_wrote(session: Any, shape: str) -> None:
    w, buyer, listings, batches = _market(session)
    results = []
    for k, path in enumerate((OLD, NEW)):
        if k == 1:   # the old path used the first project's listings: close them, the new path takes the second's
            for listing in listings[:2]:
                offsets.close_listing(session, w.owner.actor, listing.id)
            session.commit()
        quote = _prepare("whole" if shape == "fill_fails" else shape, session, buyer)
        if shape == "fill_fails":   # the project is suspended after the payment: the fill refunds
            create, confirm = path[0], path[1]
            o = create(session, buyer.actor, beneficiary="x", **quote)
            confirm(session, buyer.actor, o.id)
            projects.set_project_suspension(session, w.operator.actor, listings[2 * k].project_id, True, "audit")
            session.commit()
            done = path[2](session, o.id)
            session.commit()
            session.expire_all()
            results.append({"order": _order(session.get(OffsetOrder, o.id)), "audit": _audit(session, o.id),
                            "cash": _cash(session, done), "listing": session.get(OffsetListing, o.listing_id).available_kg})
            continue
        results.append(_run(session, path, buyer, batches[k], **quote))
    old, new = results
    assert new == old
    if shape == "fill_fails":
        assert new["order"]["status"] is OffsetStatus.REFUNDED
    else:
        assert new["steps"][-1]["status"] is OffsetStatus.RETIRED and new["registry"]["retirement"][2] > 0
    assert not offsets.check(session) and not wallets.check(session)


def _count(session: Any) -> tuple[int, ...]:
    return tuple(session.scalar(select(func.count()).select_from(t)) or 0
                 for t in (OffsetOrder, Journal, Posting, AuditRecord)) + (
        session.scalar(select(func.sum(OffsetListing.available_kg))),)


@pytest.mark.parametrize("case", ["no_supply", "no_footprint", "more_than_footprint", "covered", "blank_jurisdiction",
                                  "poor", "expired", "twice", "not_mine"])
def test_refusals_are_the_same_and_write_nothing(session: Any, case: str) -> None:
    w, buyer, listings, batches = _market(session)
    other = party(session, offsets.HolderKind.ENTERPRISE, "别人")
    fp = footprints.create_footprint(session, buyer.actor, "event", CONFERENCE)
    session.commit()
    errors = []
    for create, confirm, _, _ in (OLD, NEW):
        quote: dict[str, Any] = {"quantity_kg": 300}
        if case == "no_supply":
            quote["quantity_kg"] = 1001
        elif case == "no_footprint":
            quote["footprint_id"] = fp.id + 1000
        elif case == "more_than_footprint":
            quote |= {"footprint_id": fp.id, "quantity_kg": fp.total_kg + 1}
        elif case == "covered":
            quote = {"footprint_id": fp.id}
            covering = create(session, buyer.actor, beneficiary="x", footprint_id=fp.id, quantity_kg=300)
            session.commit()
        elif case == "blank_jurisdiction":
            quote["jurisdiction"] = "  "
        if case in ("no_supply", "no_footprint", "more_than_footprint", "covered", "blank_jurisdiction"):
            before = _count(session)
            with pytest.raises(Exception) as e:
                create(session, buyer.actor, beneficiary="x", **quote)
            session.rollback()
            assert _count(session) == before
            if case == "covered":
                offsets.cancel_offset(session, buyer.actor, covering.id)
                session.commit()
        else:
            o = create(session, buyer.actor, beneficiary="x", quantity_kg=300)
            session.commit()
            if case == "poor" and wallets.balance(session, buyer.holder.id).available > 1:
                wallets.hold(session, buyer.holder.id, wallets.balance(session, buyer.holder.id).available - 1,
                             ref="other")
                session.commit()
            elif case == "expired":
                session.execute(OffsetOrder.__table__.update().where(OffsetOrder.id == o.id)
                                .values(expires_at=o.created_at))
                session.commit()
            elif case == "twice":
                confirm(session, buyer.actor, o.id)
                session.commit()
            before = _count(session)
            with pytest.raises(Exception) as e:
                confirm(session, other.actor if case == "not_mine" else buyer.actor, o.id)
            session.rollback()
            assert _count(session) == before
            assert session.get(OffsetOrder, o.id).status is (OffsetStatus.PAID if case == "twice" else OffsetStatus.DRAFT)
            offsets.cancel_offset(session, buyer.actor, o.id) if case != "twice" else None
            session.commit()
        errors.append((type(e.value), e.value.field, e.value.code, re.sub(r"order \d+|footprint \d+", "#", e.value.message)))
    assert errors[0] == errors[1]
