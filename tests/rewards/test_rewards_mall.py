"""The rewards mall: redemption takes points, stock and issues a code in one transaction; merchants
mark codes used once; under concurrency the stock never goes negative and points and codes match."""

from __future__ import annotations

import datetime as dt
import re
import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from registry import behaviour, holders, points, rewards
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound
from registry.models import HolderKind
from registry.rewards import Redemption, Reward
from tests.factories import party
from tests.rewards.mall import Mall, build_mall, make_reward


@pytest.fixture
def mall(session: Session) -> Mall:
    return build_mall(session, residents=3, grant=1000, stock=2, points_price=300, cash_value=20_00)


def stock(session: Session, reward_id: int) -> int:
    session.expire_all()
    r = session.get(Reward, reward_id)
    assert r is not None
    return r.stock


def test_redeem_takes_points_and_stock_and_issues_a_code(mall: Mall, session: Session) -> None:
    me = mall.member(session, 0)
    uid = mall.bw.uid(0)
    r = rewards.redeem(session, me, mall.reward_id)
    assert re.fullmatch(r"([A-HJ-NP-Z2-9]{4}-){3}[A-HJ-NP-Z2-9]{4}", r.code)
    assert (r.points, r.cash_value, r.status, r.merchant_id) == (300, 20_00, "issued", mall.merchant.holder.id)
    assert points.balance(session, uid) == 700
    assert stock(session, mall.reward_id) == 1
    r2 = rewards.redeem(session, me, mall.reward_id)
    assert r2.code != r.code and points.balance(session, uid) == 400 and stock(session, mall.reward_id) == 0
    session.commit()
    assert [x.id for x in rewards.redemptions_of(session, uid)] == [r2.id, r.id]
    assert rewards.list_rewards(session) == []          # out of stock: not on offer
    assert rewards.check(session) == [] and behaviour.check_ledger(session) == []


def test_refusals_change_nothing(mall: Mall, session: Session) -> None:
    uid = mall.bw.uid(1)
    me = mall.member(session, 1)
    points.redeem_points(session, me, uid, 800, "spent-elsewhere")     # 200 left, the price is 300
    session.commit()
    with pytest.raises(Conflict) as poor:
        rewards.redeem(session, me, mall.reward_id)
    assert (poor.value.code, poor.value.field) == ("insufficient_points", "points")
    session.rollback()
    assert stock(session, mall.reward_id) == 2 and points.balance(session, uid) == 200
    # out of stock: the points taken inside the transaction come back with the rollback
    other = mall.member(session, 0)
    session.execute(Reward.__table__.update().where(Reward.id == mall.reward_id).values(stock=0))
    session.commit()
    with pytest.raises(Conflict) as empty:
        rewards.redeem(session, other, mall.reward_id)
    assert (empty.value.code, empty.value.field) == ("out_of_stock", "reward_id")
    session.rollback()
    assert points.balance(session, mall.bw.uid(0)) == 1000
    assert session.scalar(select(func.count()).select_from(Redemption)) == 0
    with pytest.raises(NotFound):
        rewards.redeem(session, other, 999_999)
    future = make_reward(session, mall.bw, mall.merchant.holder.id, valid_from=dt.date(2098, 1, 1))
    with pytest.raises(Conflict) as early:
        rewards.redeem(session, other, future.id)
    assert early.value.code == "not_available"
    session.rollback()
    holders.set_holder_suspension(session, mall.bw.operator.actor, mall.merchant.holder.id, True, "投诉调查")
    with pytest.raises(Conflict) as suspended:
        rewards.redeem(session, other, mall.reward_id)
    assert (suspended.value.code, suspended.value.field) == ("not_available", "reward_id")
    session.rollback()


def test_operator_creates_and_restocks_others_cannot(mall: Mall, session: Session) -> None:
    me = mall.member(session, 0)
    with pytest.raises(Forbidden):
        rewards.restock(session, me, mall.reward_id, 5)
    with pytest.raises(Forbidden):
        rewards.register_merchant(session, me, name="x")
    with pytest.raises(NotFound) as nm:      # a reward's merchant must be a merchant
        rewards.create_reward(session, mall.bw.operator.actor, merchant_id=mall.bw.operator.holder.id,
                              kind="voucher", title="t", points_price=1, cash_value=0, stock=1,
                              valid_from=dt.date(2026, 1, 1), valid_until=dt.date(2026, 2, 1))
    assert nm.value.field == "merchant_id"
    with pytest.raises(InvalidInput) as order:
        make_reward(session, mall.bw, mall.merchant.holder.id, valid_from=dt.date(2026, 2, 1),
                    valid_until=dt.date(2026, 1, 1))
    assert order.value.field == "valid_until"
    with pytest.raises(InvalidInput) as qty:
        rewards.restock(session, mall.bw.operator.actor, mall.reward_id, 0)
    assert qty.value.field == "quantity"
    assert rewards.restock(session, mall.bw.operator.actor, mall.reward_id, 5).stock == 7
    session.commit()


def test_merchant_marks_a_code_used_once(mall: Mall, session: Session) -> None:
    r = rewards.redeem(session, mall.member(session, 0), mall.reward_id)
    session.commit()
    other = party(session, HolderKind.MERCHANT, "另一家商户")
    with pytest.raises(NotFound) as wrong:
        rewards.mark_used(session, other.actor, r.code)
    assert wrong.value.field == "code"
    with pytest.raises(Forbidden):               # a member cannot mark codes
        rewards.mark_used(session, mall.member(session, 0), r.code)
    used = rewards.mark_used(session, mall.merchant.actor, r.code.lower())   # read aloud: case does not matter
    assert used.status == "used" and used.used_at is not None
    with pytest.raises(Conflict) as twice:
        rewards.mark_used(session, mall.merchant.actor, r.code)
    assert twice.value.code == "already_used"
    session.rollback()


def test_an_expired_code_is_refused(session: Session) -> None:
    mall = build_mall(session, residents=1, valid_until=dt.date(2026, 12, 31))
    r = rewards.redeem(session, mall.member(session, 0), mall.reward_id, now=dt.datetime(2026, 12, 31, 15, 0))
    session.commit()
    # 31 Dec 23:59 China time is still valid; 1 Jan 00:00 China time (31 Dec 16:00 UTC) is not
    with pytest.raises(Conflict) as late:
        rewards.mark_used(session, mall.merchant.actor, r.code, now=dt.datetime(2026, 12, 31, 16, 0))
    assert late.value.code == "expired" and late.value.field == "code"
    session.rollback()
    assert rewards.mark_used(session, mall.merchant.actor, r.code,
                             now=dt.datetime(2026, 12, 31, 15, 59)).status == "used"
    session.commit()


def test_members_racing_for_the_last_items(session: Session, session_factory: sessionmaker[Session]) -> None:
    """12 members race for 5 items at 300 points; 3 of them have only 200 points. Stock never goes
    negative, every code has its points and every debit its code."""
    n, items = 12, 5
    mall = build_mall(session, residents=n, grant=0, stock=items, points_price=300)
    for i in range(n):
        points.adjust_points(session, mall.bw.operator.actor, mall.bw.uid(i), 200 if i % 4 == 0 else 300, "奖励")
    session.commit()
    actors = [mall.member(session, i) for i in range(n)]
    session.rollback()
    barrier = threading.Barrier(n)
    outcomes: dict[int, str] = {}
    lock = threading.Lock()

    def go(i: int) -> None:
        barrier.wait()
        try:
            with session_factory() as s, s.begin():
                rewards.redeem(s, actors[i], mall.reward_id)
            result = "ok"
        except Conflict as e:
            result = e.code
        with lock:
            outcomes[i] = result

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    poor = {i for i in range(n) if i % 4 == 0}
    assert all(outcomes[i] == "insufficient_points" for i in poor)
    winners = {i for i, o in outcomes.items() if o == "ok"}
    assert len(winners) == items
    assert {outcomes[i] for i in set(range(n)) - poor - winners} == {"out_of_stock"}
    assert stock(session, mall.reward_id) == 0
    codes = dict(session.execute(select(Redemption.user_id, func.count()).group_by(Redemption.user_id)).tuples().all())
    for i in range(n):
        uid = mall.bw.uid(i)
        assert codes.get(uid, 0) == (1 if i in winners else 0)
        assert points.balance(session, uid) == (0 if i in winners else 200 if i in poor else 300)
    assert rewards.check(session) == [] and behaviour.check_ledger(session) == []
    session.rollback()
