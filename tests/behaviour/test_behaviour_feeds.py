"""Behaviour feeds: every row accepted or rejected with its reason, nothing lost, nothing counted twice.

Numbers by hand (Shenzhen factors, 2021 methodology, rows in 2026): metro 46.7 g/pkm, bus 26.9 g/pkm,
shared bike 46.7 g/pkm × c(d) (c = 1/2 from 1 to 3 km, 1 from 3 km), recyclables 1.34 kg/kg; a
reduction is rounded half up once per row; 1 point per 10 g with the remainder carried per member.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from registry import behaviour, points
from registry.behaviour import BehaviourBatch, BehaviourEvent
from registry.behaviour_rules import Rules
from registry.partners import Member
from registry.points import PointsEntry
from tests.behaviour.world import RECEIVED, T0, BWorld, build, row
from tests.conftest import ON_PG

H = dt.timedelta(hours=1)
M = dt.timedelta(minutes=1)


@pytest.fixture
def bw(session: Session) -> BWorld:
    return build(session)


def run(factory: sessionmaker[Session], partner: str, ref: str, rows: Any,
        chunk_size: int = 1000, rules: Rules | None = None, reader: Session | None = None) -> behaviour.BatchResult:
    if reader is not None:
        reader.rollback()   # SQLite: the test's reading session must not hold the write lock
    return behaviour.import_rows(factory, partner, ref, "api", rows, rules=rules, chunk_size=chunk_size,
                                 received_at=RECEIVED)


def outcomes(session: Session, batch_id: int) -> list[tuple[str, str | None, int, int]]:
    return [(o.status, o.reason, o.reduction_g, o.points) for o in behaviour.outcomes(session, batch_id)]


def test_accepted_rows_add_grams_and_points_with_carry(bw: BWorld, session_factory: sessionmaker[Session],
                                                       session: Session) -> None:
    res = run(session_factory, "sz-metro", "b1", reader=session, rows=[
        row("m1", "card-0", "CI-TRANSIT", T0, mode="metro", distance_km="10"),      # 467 g → 46 pts, carry 7
        row("m2", "card-0", "CI-TRANSIT", T0 + H, mode="bus", distance_km="10"),    # 269 g: 736 → 73 (+27)
        row("m3", "card-0", "ENG-CHECKIN", T0 + 2 * H, minutes=0),                  # 5 pts, no grams
    ])
    assert (res.rows, res.accepted, res.rejected, res.reduction_g, res.points) == (3, 3, 0, 736, 78)
    assert outcomes(session, res.batch_id) == [("accepted", None, 467, 46), ("accepted", None, 269, 27),
                                               ("accepted", None, 0, 5)]
    uid = bw.uid(0)
    assert points.balance(session, uid) == 78
    earn = session.scalars(select(PointsEntry).where(PointsEntry.user_id == uid)).all()
    assert [(e.kind, e.points, e.expires_on) for e in earn] == [("earn", 78, dt.date(2027, 12, 31))]
    assert session.scalar(select(Member.reduction_g).where(Member.user_id == uid)) == 736
    # the carry (736 mod 10 = 6) counts for the next row: 1 km of metro is 46.7 → 47 g, 783 g → 78 (+5)
    res2 = run(session_factory, "sz-metro", "b2", reader=session, rows=[row("m4", "card-0", "CI-TRANSIT", T0 + 3 * H, mode="metro",
                                                       distance_km="1")])
    assert (res2.reduction_g, res2.points) == (47, 5)
    assert points.balance(session, uid) == 83
    summary = behaviour.personal_summary(session, uid, "day")
    assert summary["totals"] == [{"type": "CI-TRANSIT", "events": 3, "reduction_g": 783, "points": 78},
                                 {"type": "ENG-CHECKIN", "events": 1, "reduction_g": 0, "points": 5}]
    assert [(x["period"], x["type"], x["events"]) for x in summary["series"]] == [
        ("2026-11-20", "CI-TRANSIT", 3), ("2026-11-20", "ENG-CHECKIN", 1)]
    assert behaviour.personal_summary(session, uid)["series"][0]["period"] == "2026-11"
    assert behaviour.check_ledger(session) == []


def bad_rows(bw: BWorld) -> list[dict[str, Any]]:
    return [
        row("e1", "card-0", "CI-TRANSIT", T0, mode="metro", distance_km="5"),             # 233.5 → 234 g
        {"type": "CI-TRANSIT", "user": "card-0", "started_at": T0.isoformat()},          # no event id
        row("e3", "card-0", "CI-FLY", T0),                                                 # unknown type
        row("e4", "card-0", "CI-BIKE", T0, distance_km="4"),                               # not this partner's
        row("e5", "card-99", "CI-TRANSIT", T0, mode="metro", distance_km="5"),            # unknown user
        row("e1", "card-0", "CI-TRANSIT", T0 + H, mode="metro", distance_km="5"),         # duplicate
        row("e7", "card-0", "CI-TRANSIT", dt.datetime(2026, 9, 1), mode="metro", distance_km="5"),
        row("e8", "card-0", "CI-TRANSIT", RECEIVED + H, mode="metro", distance_km="5"),   # in the future
        row("e9", "card-0", "CI-TRANSIT", T0 + 2 * H, minutes=200, mode="metro", distance_km="150"),
        row("e10", "card-0", "CI-TRANSIT", T0 + 2 * H, minutes=10, mode="metro", distance_km="30"),
        row("e11", "card-0", "ENG-CHECKIN", T0 + 3 * H, minutes=0),                       # 5 points
        row("e12", "card-0", "ENG-CHECKIN", T0 + 5 * H, minutes=0),                       # 2nd check-in that day
        {"event_id": "e13", "user": "card-1", "type": "CI-TRANSIT", "started_at": "2026-13-01T00:00:00",
         "mode": "metro", "distance_km": "5"},
        row("e14", None, "CI-TRANSIT", T0 + H, mode="metro", distance_km="10") | {"user_id": str(bw.uid(2))},
        row("e15", "card-1", "CI-TRANSIT", T0, mode="metro", distance_km="-3"),
    ]


EXPECTED = [("accepted", None, 234, 23), ("rejected", "invalid", 0, 0), ("rejected", "invalid", 0, 0),
            ("rejected", "type_not_allowed", 0, 0), ("rejected", "unknown_user", 0, 0),
            ("rejected", "duplicate", 0, 0), ("rejected", "outside_claim_window", 0, 0),
            ("rejected", "outside_claim_window", 0, 0), ("rejected", "implausible", 0, 0),
            ("rejected", "implausible", 0, 0), ("accepted", None, 0, 5), ("rejected", "over_daily_cap", 0, 0),
            ("rejected", "invalid", 0, 0), ("accepted", None, 467, 46), ("rejected", "invalid", 0, 0)]


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_bad_rows_of_every_kind_are_kept_with_their_reason(
        bw: BWorld, session_factory: sessionmaker[Session], session: Session, chunk_size: int) -> None:
    res = run(session_factory, "sz-metro", "bad", reader=session, rows=bad_rows(bw), chunk_size=chunk_size)
    assert outcomes(session, res.batch_id) == EXPECTED
    assert (res.rows, res.accepted, res.rejected, res.reduction_g, res.points) == (15, 3, 12, 701, 74)
    assert res.reasons == {"duplicate": 1, "implausible": 2, "invalid": 4, "outside_claim_window": 2,
                           "over_daily_cap": 1, "type_not_allowed": 1, "unknown_user": 1}
    details = {o.line: o.detail for o in behaviour.outcomes(session, res.batch_id)}
    assert "event_id" in (details[2] or "") and "faster than 120 km/h" in (details[10] or "")
    assert "longer than 100 km" in (details[9] or "") and "started_at" in (details[13] or "")
    # the same user, type and time span from another partner: already claimed; a later trip is not
    other = run(session_factory, "sz-bus", "bus-1", reader=session, rows=[
        row("b1", None, "CI-TRANSIT", T0 + dt.timedelta(minutes=5), mode="bus", distance_km="5")
        | {"user_id": str(bw.uid(0))},
        row("b2", None, "CI-TRANSIT", T0 + 3 * H, mode="bus", distance_km="5") | {"user_id": str(bw.uid(0))},
    ])
    assert outcomes(session, other.batch_id) == [("rejected", "claimed_elsewhere", 0, 0),
                                                 ("accepted", None, 135, 13)]   # 134.5 → 135 g; 369 → 36
    assert points.balance(session, bw.uid(0)) == 23 + 5 + 13
    assert behaviour.check_ledger(session) == []


def test_resending_a_batch_changes_nothing(bw: BWorld, session_factory: sessionmaker[Session],
                                           session: Session) -> None:
    first = run(session_factory, "sz-metro", "bad", reader=session, rows=bad_rows(bw), chunk_size=4)

    def counts() -> tuple[int, int, int, int]:
        return (session.scalar(select(func.count()).select_from(BehaviourEvent)) or 0,
                session.scalar(select(func.count()).select_from(PointsEntry)) or 0,
                session.scalar(select(func.sum(Member.reduction_g))) or 0,
                session.scalar(select(func.count()).select_from(BehaviourBatch)) or 0)

    before = counts()
    again = run(session_factory, "sz-metro", "bad", reader=session, rows=bad_rows(bw), chunk_size=4)
    assert again.replayed and not first.replayed
    assert again.as_dict() | {"replayed": False} == first.as_dict()
    assert counts() == before
    session.rollback()
    # the same rows in another batch: each accepted event id is now a duplicate; no grams, no points
    other = run(session_factory, "sz-metro", "bad-resent", reader=session, rows=bad_rows(bw))
    assert (other.accepted, other.reduction_g, other.points) == (0, 0, 0)
    assert [o[1] for o in outcomes(session, other.batch_id)][:1] == ["duplicate"]
    assert points.balance(session, bw.uid(0)) == 28 and points.balance(session, bw.uid(2)) == 46
    assert behaviour.check_ledger(session) == []


def test_an_interrupted_import_resumes_after_its_last_chunk(
        bw: BWorld, session_factory: sessionmaker[Session], session: Session) -> None:
    rows = bad_rows(bw)

    def broken() -> Iterator[dict[str, Any]]:
        yield from rows[:9]
        raise OSError("connection lost")

    with pytest.raises(OSError):
        run(session_factory, "sz-metro", "bad", reader=session, rows=list_or(broken()), chunk_size=4)
    batch = session.scalar(select(BehaviourBatch))
    assert batch is not None and (batch.status, batch.rows_done) == ("open", 8)
    session.rollback()
    res = run(session_factory, "sz-metro", "bad", reader=session, rows=rows, chunk_size=4)
    assert not res.replayed
    assert outcomes(session, res.batch_id) == EXPECTED
    assert behaviour.check_ledger(session) == []


def list_or(it: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return it


def test_daily_cap_counts_earlier_batches(bw: BWorld, session_factory: sessionmaker[Session],
                                          session: Session) -> None:
    rules = Rules.from_mapping({"daily_caps": {"CI-BIKE": 2}})
    a = run(session_factory, "sz-bike", "a", reader=session, rows=[row("k1", "bike-0", "CI-BIKE", T0, distance_km="2")], rules=rules)
    b = run(session_factory, "sz-bike", "b", reader=session, rows=[
        row("k2", "bike-0", "CI-BIKE", T0 + H, distance_km="2"),
        row("k3", "bike-0", "CI-BIKE", T0 + 2 * H, distance_km="2"),
        # the next China day (16:00 UTC is midnight in Shenzhen): a fresh cap
        row("k4", "bike-0", "CI-BIKE", T0 + 16 * H, distance_km="0.5"),
    ], rules=rules)
    assert outcomes(session, a.batch_id) == [("accepted", None, 47, 4)]          # 2 km × 1/2 × 46.7 = 46.7
    assert outcomes(session, b.batch_id) == [("accepted", None, 47, 5), ("rejected", "over_daily_cap", 0, 0),
                                             ("accepted", None, 0, 0)]           # 94 g → 9 pts; < 1 km: 0 g
    assert behaviour.check_ledger(session) == []


def test_ledger_check_names_what_was_tampered(bw: BWorld, session_factory: sessionmaker[Session],
                                              session: Session) -> None:
    run(session_factory, "sz-metro", "b1", reader=session, rows=[row("m1", "card-0", "CI-TRANSIT", T0, mode="metro", distance_km="10")])
    assert behaviour.check_ledger(session) == []
    session.execute(update(Member).where(Member.user_id == bw.uid(0)).values(reduction_g=500))
    session.execute(update(PointsEntry).values(points=47))
    found = behaviour.check_ledger(session)
    assert f"member of programme {bw.programme_id} user {bw.uid(0)}: the record says 500 g" in found
    assert f"member of programme {bw.programme_id} user {bw.uid(0)}: the events say 467 g" in found
    assert any(f.endswith("the record says 47 points") for f in found)
    assert any(f.endswith("the events say 46 points") for f in found)
    session.rollback()
    session.execute(update(BehaviourEvent).values(batch_id=999))
    assert "1 events of batch 999 name no batch of their partner" in behaviour.check_ledger(session)
    session.rollback()


def test_a_chunk_never_leaves_a_gap_in_a_batch(bw: BWorld, session: Session) -> None:
    from registry import partners
    from registry.behaviour_rules import RowPreparer
    from registry.errors import Conflict

    partner = partners.partner_by_code(session, "sz-metro")
    batch = behaviour.open_batch(session, partner, "gap", "api", RECEIVED)
    prep = RowPreparer(Rules(), region="CN-GD-SZ", allowed=partners.allowed_types(session, partner.id),
                       received_at=RECEIVED, factors=behaviour.factor_snapshot(session))
    rows = [prep.prepare(i, row(f"g{i}", "card-0", "ENG-CHECKIN", T0 + i * 24 * H, minutes=0))
            for i in range(1, 7)]
    assert behaviour.ingest_chunk(session, batch.id, rows[:3], Rules()).rows == 3
    with pytest.raises(Conflict) as gap:
        behaviour.ingest_chunk(session, batch.id, rows[4:], Rules())    # line 4 is missing
    assert gap.value.code == "batch_in_progress"
    assert behaviour.ingest_chunk(session, batch.id, rows[1:4], Rules()).rows == 1   # lines 2-3 were recorded
    assert batch.rows_done == 4
    assert [o.line for o in behaviour.outcomes(session, batch.id)] == [1, 2, 3, 4]
    session.rollback()



def test_the_member_memo_holds_only_while_nobody_else_records(bw: BWorld, session: Session) -> None:
    """An import remembers its members between chunks; another import's chunk in between (a bike ride
    of the same resident) makes it forget, so the points carry starts from the real record. Chunks
    leave the members' records as they are (the memo holds what is waiting): whoever reads a record
    first settles every batch of the programme (the other import's first chunk; the first import's
    chunk after it forgot), and completing a batch settles it."""
    from registry import partners
    from registry.behaviour_rules import RowPreparer

    def batch_of(code: str) -> tuple[int, RowPreparer]:
        partner = partners.partner_by_code(session, code)
        batch = behaviour.open_batch(session, partner, "memo", "api", RECEIVED)
        return batch.id, RowPreparer(Rules(), region="CN-GD-SZ", received_at=RECEIVED,
                                     allowed=partners.allowed_types(session, partner.id),
                                     factors=behaviour.factor_snapshot(session))

    def metro(line: int, km: str) -> Any:
        return metro_prep.prepare(line, row(f"a{line}", "card-0", "CI-TRANSIT", T0 + line * H, mode="metro",
                                            distance_km=km))

    memo = behaviour.MemberMemo()
    a, metro_prep = batch_of("sz-metro")
    r1 = behaviour.ingest_chunk(session, a, [metro(1, "10")], Rules(), memo)      # 467 g → 46 points
    session.commit()
    assert (r1.reduction_g, r1.points) == (467, 46)
    member_id = memo.by_ref["card-0"]
    assert memo.members[member_id] == [bw.uid(0), 467, 0] and memo.head is not None   # 467 g waiting
    assert session.scalar(select(Member.reduction_g).where(Member.id == member_id)) == 0
    assert behaviour.check_ledger(session) == []
    head = memo.head

    # The import's next chunk finds the count where it left it: the memo holds.
    r2 = behaviour.ingest_chunk(session, a, [metro(2, "1")], Rules(), memo)       # 47 g: 514 → +5
    session.commit()
    assert (r2.reduction_g, r2.points) == (47, 5)
    assert memo.head == head + 1 and memo.members[member_id] == [bw.uid(0), 514, 0]

    # Another partner's import records a ride of the same resident: 4 km × 46.7 = 187 g: 701 → +19.
    b, bike_prep = batch_of("sz-bike")
    bike = bike_prep.prepare(1, row("b1", "bike-0", "CI-BIKE", T0 + 5 * H, distance_km="4"))
    assert behaviour.ingest_chunk(session, b, [bike], Rules()).points == 19
    session.commit()
    # Its chunk settled the first import's 514 g before it read the record; its own 187 g wait.
    assert session.scalar(select(Member.reduction_g).where(Member.id == member_id)) == 514
    assert session.get(behaviour.BehaviourBatch, a).members_upto == 2
    assert session.get(behaviour.BehaviourBatch, b).members_upto == 0

    # Back to the first import: 4 km of metro = 187 g. From the real record, 701 → 888: 88 - 70 = 18
    # points; a memo that had not noticed the ride would say 514 → 701: 70 - 51 = 19.
    r3 = behaviour.ingest_chunk(session, a, [metro(3, "4")], Rules(), memo)
    session.commit()
    assert (r3.reduction_g, r3.points) == (187, 18)
    assert memo.head == head + 3 and memo.members[member_id] == [bw.uid(0), 888, 701]
    assert session.scalar(select(Member.reduction_g).where(Member.id == member_id)) == 701
    assert behaviour.check_ledger(session) == []
    # Settling the first batch adds what its memo says is waiting (187 g); completing the second
    # settles nothing more.
    assert memo.pending() == {member_id: 187}
    behaviour.settle_batch(session, a, memo)
    behaviour.complete_batch(session, a, Rules(), settle_members=False)
    behaviour.complete_batch(session, b, Rules())
    session.commit()
    assert session.scalar(select(Member.reduction_g).where(Member.id == member_id)) == 888
    assert [session.get(behaviour.BehaviourBatch, x).members_upto for x in (a, b)] == [3, 1]
    assert behaviour.check_ledger(session) == []


def test_a_batch_is_settled_once_whoever_settles_it(bw: BWorld, session: Session) -> None:
    """The grams a batch's chunks accepted wait until the batch is settled, and are added once: by
    its importer's memo when nothing came between, else summed from the events. Here another import
    starts (and settles the programme, this batch included) after the batch's last chunk: the memo's
    account is stale, so settling the batch adds nothing more. Then a batch whose memo was lost (an
    interrupted import) is settled from its events."""
    from registry import partners
    from registry.behaviour_rules import RowPreparer

    partner = partners.partner_by_code(session, "sz-metro")
    prep = RowPreparer(Rules(), region="CN-GD-SZ", received_at=RECEIVED,
                       allowed=partners.allowed_types(session, partner.id), factors=behaviour.factor_snapshot(session))

    def metro(line: int, km: str, card: str = "card-0", at: int = 0) -> Any:
        return prep.prepare(line, row(f"s{line + at}", card, "CI-TRANSIT", T0 + (line + at) * H, mode="metro",
                                      distance_km=km))

    def record_of(card: str) -> int | None:
        return session.scalar(select(Member.reduction_g).join(
            partners.MemberExternalId, partners.MemberExternalId.member_id == Member.id).where(
            partners.MemberExternalId.external_id == card))

    a = behaviour.open_batch(session, partner, "settle-a", "api", RECEIVED).id
    memo = behaviour.MemberMemo()
    behaviour.ingest_chunk(session, a, [metro(1, "10"), metro(2, "1", "card-1")], Rules(), memo)   # 467 g, 47 g
    behaviour.ingest_chunk(session, a, [metro(3, "1")], Rules(), memo)                             # 47 g
    session.commit()
    assert (record_of("card-0"), record_of("card-1")) == (0, 0)
    assert memo.pending() == {memo.by_ref["card-0"]: 514, memo.by_ref["card-1"]: 47}
    assert behaviour.check_ledger(session) == []

    other = behaviour.open_batch(session, partner, "settle-b", "api", RECEIVED)
    behaviour.MemberMemo().start(session, other, partner.programme_id)    # settles batch a: 3 lines
    session.commit()
    assert (record_of("card-0"), record_of("card-1")) == (514, 47)
    assert session.get(BehaviourBatch, a).members_upto == 3
    behaviour.settle_batch(session, a, memo)          # the memo's 514 + 47 are in already: nothing added
    behaviour.complete_batch(session, a, Rules(), settle_members=False)
    session.commit()
    assert (record_of("card-0"), record_of("card-1")) == (514, 47)
    assert behaviour.check_ledger(session) == []

    # Batch c's chunk is recorded and its import lost: its grams wait until someone settles.
    c = behaviour.open_batch(session, partner, "settle-c", "api", RECEIVED).id
    behaviour.ingest_chunk(session, c, [metro(1, "2", "card-1", at=3)], Rules())                   # 93 g
    session.commit()
    assert record_of("card-1") == 47 and behaviour.check_ledger(session) == []
    behaviour.settle_batch(session, c)                # no memo: from the events
    session.commit()
    assert record_of("card-1") == 140 and session.get(BehaviourBatch, c).members_upto == 1
    # A record that says it is settled without the grams is found out.
    session.execute(update(Member).where(Member.user_id == bw.uid(1)).values(reduction_g=47))
    assert any(f.endswith("the events say 140 g") for f in behaviour.check_ledger(session))
    session.rollback()


def test_checks_made_ahead_add_the_chunk_in_flight(bw: BWorld, session_factory: sessionmaker[Session],
                                                   session: Session) -> None:
    """Chunks of two rows: each chunk's database checks are made ahead (PostgreSQL) while the chunk
    before is recorded, leaving it out; its accepted rows count in Python: a duplicate across
    chunks, the daily cap (2 here) across chunks, and the points carry across chunks."""
    rules = Rules.from_mapping({"daily_caps": {"CI-TRANSIT": 2}})
    before = dict(behaviour.PROBES)

    def metro(eid: str, card: str, hours: int, km: str) -> dict[str, Any]:
        return row(eid, card, "CI-TRANSIT", T0 + hours * H, mode="metro", distance_km=km)

    res = run(session_factory, "sz-metro", "ahead", chunk_size=2, rules=rules, reader=session, rows=[
        metro("m1", "card-0", 0, "10"),    # 467 g → 46 points (carry 7)
        metro("m2", "card-1", 1, "1"),     # 47 g → 4 (carry 7)
        metro("m1", "card-0", 2, "1"),     # chunk 2: line 1's event id → duplicate
        metro("m3", "card-0", 3, "1"),     # 47 g: 467 → 514 → +5; card-0's 2nd ride of the day
        metro("m4", "card-0", 4, "1"),     # chunk 3: a 3rd ride of card-0 that day → over the cap
        metro("m5", "card-1", 5, "1"),     # 47 g: 47 → 94 → 9 - 4 = +5
        metro("m3", "card-1", 6, "1"),     # chunk 4: line 4's event id (two chunks back) → duplicate
    ])
    assert outcomes(session, res.batch_id) == [
        ("accepted", None, 467, 46), ("accepted", None, 47, 4), ("rejected", "duplicate", 0, 0),
        ("accepted", None, 47, 5), ("rejected", "over_daily_cap", 0, 0), ("accepted", None, 47, 5),
        ("rejected", "duplicate", 0, 0)]
    assert (res.accepted, res.points) == (4, 60)
    assert points.balance(session, bw.uid(0)) == 51 and points.balance(session, bw.uid(1)) == 9
    assert session.scalar(select(Member.reduction_g).where(Member.user_id == bw.uid(0))) == 514
    if ON_PG:   # chunks 2-4 were checked ahead and the answers used (chunk 1 has no chunk before it)
        assert behaviour.PROBES["ahead"] - before["ahead"] >= 3
        # ... and their rows decided while the chunk before was being written, the decisions kept
        assert behaviour.PROBES["decided ahead"] - before["decided ahead"] >= 3
        assert behaviour.PROBES["decided again"] == before["decided again"]
    assert behaviour.check_ledger(session) == []


def test_rows_decided_ahead_are_decided_again_when_another_import_came_between(
        bw: BWorld, session_factory: sessionmaker[Session], session: Session) -> None:
    """Chunks of two rows. Once the first chunk is recorded, another partner's batch credits the
    same resident (card-0 is bike-0) before the second chunk is: the second chunk's rows, decided
    ahead from the memo's record of card-0 (467 g), are put back and decided again from the
    database's (514 g), so the points carry counts the bike ride; the third chunk, whose chunk
    before was decided again, is decided after it."""
    before = dict(behaviour.PROBES)
    bike: list[behaviour.BatchResult] = []

    def between(result: behaviour.ChunkResult) -> None:
        if not bike:
            bike.append(behaviour.import_rows(session_factory, "sz-bike", "between", "api", [
                row("k1", "bike-0", "CI-BIKE", T0 + 30 * M, distance_km="2")], received_at=RECEIVED))

    def metro(eid: str, card: str, hours: int, km: str) -> dict[str, Any]:
        return row(eid, card, "CI-TRANSIT", T0 + hours * H, mode="metro", distance_km=km)

    session.rollback()
    res = behaviour.import_rows(session_factory, "sz-metro", "decided-again", "api", [
        metro("m1", "card-0", 0, "10"),    # 467 g → 46 points
        metro("m2", "card-1", 1, "1"),     # 47 g → 4
        metro("m3", "card-0", 2, "2"),     # chunk 2: 93 g after the bike's 47: 514 → 607, 51 → 60: +9
        metro("m4", "card-1", 3, "1"),     # 47 g: 47 → 94: +5
        metro("m5", "card-0", 4, "1"),     # chunk 3: 47 g: 607 → 654: +5
    ], chunk_size=2, received_at=RECEIVED, on_chunk=between)
    assert [(o.status, o.points) for o in behaviour.outcomes(session, bike[0].batch_id)] == [("accepted", 5)]
    assert outcomes(session, res.batch_id) == [
        ("accepted", None, 467, 46), ("accepted", None, 47, 4), ("accepted", None, 93, 9),
        ("accepted", None, 47, 5), ("accepted", None, 47, 5)]
    assert session.scalar(select(Member.reduction_g).where(Member.user_id == bw.uid(0))) == 654
    assert points.balance(session, bw.uid(0)) == 46 + 5 + 9 + 5
    if ON_PG:
        assert behaviour.PROBES["decided again"] - before["decided again"] >= 1
    assert behaviour.check_ledger(session) == []


def test_two_imports_at_once_into_one_programme_keep_every_carry(session_factory: sessionmaker[Session],
                                                                  session: Session) -> None:
    """PostgreSQL, two threads: a metro and a bike-share partner import at the same time, in chunks
    of 10, rides of the same six residents; the chunks interleave, so each import's memo forgets,
    settles the other's waiting grams and reads the records again. Afterwards every member's record
    is the sum of its accepted grams, both batches are settled, and each member's points telescope:
    the sum of its rows' points is floor(record / 10), which holds only if every row's carry started
    from the member's whole record at that moment."""
    if not ON_PG:
        pytest.skip("concurrency: PostgreSQL")
    import threading

    bw = build(session, residents=6)
    session.rollback()
    start = threading.Barrier(2)
    results: dict[str, behaviour.BatchResult] = {}
    errors: list[BaseException] = []

    def rides(partner: str) -> Iterator[dict[str, Any]]:
        start.wait()
        for i in range(120):
            minutes = i * 37 + (0 if partner == "sz-metro" else 11)   # no two rides of a resident overlap
            if partner == "sz-metro":
                yield row(f"m{i}", f"card-{i % 6}", "CI-TRANSIT", T0 + minutes * M, minutes=9, mode="metro",
                          distance_km=str(1 + i % 7))
            else:
                yield row(f"k{i}", f"bike-{i % 6}", "CI-BIKE", T0 + minutes * M, minutes=9, distance_km=str(1 + i % 4))

    def go(partner: str) -> None:
        try:
            results[partner] = behaviour.import_rows(
                session_factory, partner, f"{partner}-together", "api", rides(partner), chunk_size=10,
                received_at=T0 + 5 * 24 * H, rules=Rules.from_mapping({"daily_caps": {"CI-TRANSIT": 500, "CI-BIKE": 500}}))
        except BaseException as e:   # noqa: BLE001 - re-raised below
            errors.append(e)

    before = dict(behaviour.PROBES)
    threads = [threading.Thread(target=go, args=(p,)) for p in ("sz-metro", "sz-bike")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert behaviour.PROBES["decided again"] > before["decided again"]   # they did interleave
    assert {p: (r.rows, r.accepted) for p, r in results.items()} == {"sz-metro": (120, 120), "sz-bike": (120, 120)}
    assert behaviour.check_ledger(session) == []
    assert [(b.members_upto, b.rows_done) for b in session.scalars(select(BehaviourBatch))] == [(120, 120)] * 2
    for i in range(6):
        uid = bw.uid(i)
        grams, pts = session.execute(select(func.sum(BehaviourEvent.reduction_g), func.sum(BehaviourEvent.points))
                                     .where(BehaviourEvent.user_id == uid, BehaviourEvent.status == "accepted")).one()
        assert session.scalar(select(Member.reduction_g).where(Member.user_id == uid)) == grams
        assert pts == grams // 10, (i, grams, pts)
        assert points.balance(session, uid) == pts
