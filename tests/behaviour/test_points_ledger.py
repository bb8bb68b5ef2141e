"""The points ledger: redeem (never overdrawn, even under concurrency), adjust, FIFO expiry."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry import behaviour, points
from registry.actors import Actor
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound
from registry.models import User
from registry.points import PointsEntry
from tests.behaviour.world import RECEIVED, T0, BWorld, build, row


@pytest.fixture
def bw(session: Session) -> BWorld:
    return build(session, residents=2)


def actor(session: Session, user_id: int) -> Actor:
    user = session.get(User, user_id)
    assert user is not None
    return Actor.of(user)


def test_redeem_refuses_overdraft_and_a_reference_twice(bw: BWorld, session: Session) -> None:
    uid = bw.uid(0)
    me = actor(session, uid)
    points.adjust_points(session, bw.operator.actor, uid, 100, "开户奖励")
    e = points.redeem_points(session, me, uid, 60, "mall-order-1")
    assert (e.kind, e.points) == ("redeem", -60)
    with pytest.raises(Conflict) as over:
        points.redeem_points(session, me, uid, 41, "mall-order-2")
    assert over.value.code == "insufficient_points" and over.value.field == "points"
    with pytest.raises(Conflict) as twice:
        points.redeem_points(session, me, uid, 1, "mall-order-1")
    assert twice.value.code == "duplicate"
    with pytest.raises(InvalidInput):
        points.redeem_points(session, me, uid, 0, "mall-order-3")
    with pytest.raises(NotFound):   # another resident cannot spend my points
        points.redeem_points(session, actor(session, bw.uid(1)), uid, 1, "mall-order-4")
    with pytest.raises(Forbidden):
        points.adjust_points(session, me, uid, 5, "self-service")
    points.redeem_points(session, me, uid, 40, "mall-order-5")
    assert points.balance(session, uid) == 0
    session.commit()
    assert behaviour.check_ledger(session) == []


def test_concurrent_redemptions_never_overdraw(bw: BWorld, session: Session,
                                               session_factory: sessionmaker[Session]) -> None:
    uid = bw.uid(0)
    points.adjust_points(session, bw.operator.actor, uid, 100, "活动奖励")
    me = actor(session, uid)
    session.commit()
    n = 8
    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def redeem(i: int) -> None:
        barrier.wait()
        try:
            with session_factory() as s, s.begin():
                points.redeem_points(s, me, uid, 30, f"order-{i}")
            result = "ok"
        except Conflict as e:
            result = e.code
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=redeem, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["insufficient_points"] * 5 + ["ok"] * 3
    session.rollback()
    assert points.balance(session, uid) == 10
    assert behaviour.check_ledger(session) == []


def test_expiry_is_first_in_first_out_and_idempotent(bw: BWorld, session: Session,
                                                     session_factory: sessionmaker[Session]) -> None:
    uid = bw.uid(0)
    old_start = dt.datetime(2025, 6, 1)
    session.rollback()
    # 2025: 467 g → 46 points, valid to the end of 2026; 2026: 269 g (736 in all → 73) → 27 more, to 2027
    behaviour.import_rows(session_factory, "sz-metro", "2025", "csv",
                          [row("o1", "card-0", "CI-TRANSIT", old_start, mode="metro", distance_km="10")],
                          received_at=dt.datetime(2025, 6, 10))
    behaviour.import_rows(session_factory, "sz-metro", "2026", "csv",
                          [row("n1", "card-0", "CI-TRANSIT", T0, mode="bus", distance_km="10")],
                          received_at=RECEIVED)
    earned = session.execute(select(PointsEntry.points, PointsEntry.expires_on).where(PointsEntry.user_id == uid)
                             .order_by(PointsEntry.id)).all()
    assert [tuple(e) for e in earned] == [(46, dt.date(2026, 12, 31)), (27, dt.date(2027, 12, 31))]
    points.redeem_points(session, actor(session, uid), uid, 30, "order-1")   # consumes 30 of the 46
    assert points.expire_points(session, dt.date(2026, 12, 31)) == 0     # still valid on their last day
    session.commit()
    from exchange import rewards_jobs  # the daily job, as scheduled
    assert rewards_jobs.run_points_expiry(session_factory, dt.date(2027, 1, 1)) == 16   # 46 − 30 unspent
    assert points.expire_points(session, dt.date(2027, 1, 1)) == 0       # idempotent
    assert points.balance(session, uid) == 27
    points.redeem_points(session, actor(session, uid), uid, 7, "order-2")
    assert points.expire_points(session, dt.date(2028, 1, 1)) == 20      # 73 − (30 + 16 + 7)
    assert points.balance(session, uid) == 0
    session.commit()
    kinds = session.scalars(select(PointsEntry.kind).where(PointsEntry.user_id == uid).order_by(PointsEntry.id))
    assert list(kinds) == ["earn", "earn", "redeem", "expire", "redeem", "expire"]
    assert behaviour.check_ledger(session) == []


def test_check_proves_the_references_the_schema_does_not_hold(bw: BWorld, session: Session) -> None:
    """points_entries has no foreign keys on user_id and batch_id (a behaviour import writes hundreds of
    thousands of entries at once); `points.check` names an entry whose user has no points account or
    whose batch does not exist."""
    uid = bw.uid(0)
    points.adjust_points(session, bw.operator.actor, uid, 30, "开户奖励")
    session.flush()
    assert points.check(session) == []
    session.add_all([
        PointsEntry(user_id=987_654, kind="adjust", points=5, expires_on=dt.date(2027, 12, 31), reason="forged"),
        PointsEntry(user_id=uid, kind="earn", points=7, expires_on=dt.date(2027, 12, 31), batch_id=876_543,
                    ref="behaviour:876543"),
        PointsEntry(user_id=uid, kind="earn", points=8, expires_on=dt.date(2027, 12, 31), batch_id=876_543,
                    ref="behaviour:876543"),
    ])
    session.flush()
    found = points.check(session)
    assert found == ["1 points entries of user 987654, who has no points account",
                     "2 points entries name behaviour batch 876543, which does not exist"]
    assert set(found) <= set(behaviour.check_ledger(session))
    session.rollback()
