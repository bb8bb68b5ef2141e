"""A rewards-mall test world on top of the behaviour world: a merchant with a user, a reward, and
residents given points by operator adjustment."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import points, rewards
from registry.actors import Actor
from registry.models import User
from tests.behaviour.world import BWorld, build
from tests.factories import Party

_n = itertools.count(1)


@dataclass
class Mall:
    bw: BWorld
    merchant: Party
    reward_id: int

    def member(self, session: Session, i: int) -> Actor:
        user = session.get(User, self.bw.uid(i))
        assert user is not None
        return Actor.of(user)


def make_reward(session: Session, bw: BWorld, merchant_id: int, *, stock: int = 5, points_price: int = 300,
                cash_value: int = 20_00, valid_from: dt.date = dt.date(2026, 1, 1),
                valid_until: dt.date = dt.date(2099, 12, 31), kind: str = "park_ticket") -> rewards.Reward:
    return rewards.create_reward(session, bw.operator.actor, merchant_id=merchant_id, kind=kind,
                                 title="仙湖植物园门票", points_price=points_price, cash_value=cash_value,
                                 stock=stock, valid_from=valid_from, valid_until=valid_until)


def build_mall(session: Session, residents: int = 3, grant: int = 1000, **reward: object) -> Mall:
    bw = build(session, residents=residents)
    m = rewards.register_merchant(session, bw.operator.actor, name="仙湖植物园", city="深圳市",
                                  email=f"counter-{next(_n)}@xianhu.example")
    user = session.scalars(select(User).where(User.holder_id == m.id)).one()
    merchant = Party(m, Actor.of(user), user.email)
    r = make_reward(session, bw, m.id, **reward)  # type: ignore[arg-type]
    for i in range(residents):
        if grant:
            points.adjust_points(session, bw.operator.actor, bw.uid(i), grant, "开户奖励")
    session.commit()
    return Mall(bw, merchant, r.id)

