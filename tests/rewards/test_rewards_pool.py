"""The rewards pool: programme credit sales fund it (once per trade, pro rata to the programme's kg),
used codes are paid from it first come first served, and it never goes negative."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from exchange import instruments, orders, rewards_pool, wallets
from exchange.models import Trade
from exchange.orders import OrderRequest
from exchange.rewards_pool import MerchantPayment, PoolInflow, RewardsPool
from exchange.sequencer import Sequencer
from registry import rewards
from registry.errors import Forbidden
from registry.models import HolderKind
from tests.factories import Party, World, issued_batch, party, registered_project, world
from tests.rewards.mall import build_mall, make_reward


@dataclass
class Market:
    w: World
    agency: Party
    seq: Sequencer


@pytest.fixture
def market(session: Session, session_factory: sessionmaker[Session]) -> Market:
    """An agency owning a programme (1,000 kg issued, vintage 2024) and an enterprise project
    (4,000 kg, issued after it), both deliverable into one pooled energy contract."""
    w = world(session)
    agency = party(session, HolderKind.AGENCY, "深圳市碳普惠中心")
    programme = registered_project(session, w, owner=agency, kind="programme", title="低碳出行")
    project = registered_project(session, w, owner=agency, title="办公楼节能")
    issued_batch(session, w, programme, 1_000, year=2024, owner=agency)
    issued_batch(session, w, project, 4_000, year=2024, owner=agency)
    instruments.create_instrument(
        session, w.operator.actor, symbol="SZ-ENERGY-2024", name_zh="深圳能源2024", name_en="SZ energy 2024",
        kind="pooled", vintage_from=2024, vintage_to=2024, sector="energy", reference_price=60_00,
        maker_fee_bp=10, taker_fee_bp=50)
    wallets.deposit(session, w.operator.actor, w.buyer.holder.id, 1_000_000)
    session.commit()
    return Market(w, agency, Sequencer(session_factory))


def trade(session: Session, m: Market, qty: int) -> None:
    for p, side, price in ((m.agency, "sell", 60_00), (m.w.buyer, "buy", 60_00)):
        orders.place_order(session, p.actor, OrderRequest(instrument="SZ-ENERGY-2024", side=side, qty_kg=qty,
                                                          price=price))
        session.commit()
    assert m.seq.run_once() >= 1


def test_programme_sales_fund_the_pool_once_per_trade(market: Market, session: Session) -> None:
    m = market
    trade(session, m, 3_000)     # oldest batch first: the programme's 1,000 kg, then 2,000 kg of the project
    trade(session, m, 1_000)     # the project's credits only: nothing for the pool
    trades = session.scalars(select(Trade).order_by(Trade.id)).all()
    assert [(t.qty_kg, t.notional, t.seller_fee) for t in trades] == [(3_000, 180_00, 18), (1_000, 60_00, 6)]
    seller_before = wallets.balance(session, m.agency.holder.id).available
    assert seller_before == 180_00 - 18 + 60_00 - 6
    funded = rewards_pool.fund_from_trades(session)
    # proceeds 18,000 − 18 = 17,982 fen; the programme's share 17,982 × 1,000 / 3,000 = 5,994
    assert [(i.trade_id, i.programme_kg, i.amount) for i in funded.funded] == [(trades[0].id, 1_000, 5_994)]
    session.commit()
    assert rewards_pool.pool_balance(session) == 5_994
    assert wallets.balance(session, m.agency.holder.id).available == seller_before - 5_994
    again = rewards_pool.fund_from_trades(session)
    assert again.funded == [] and rewards_pool.pool_balance(session) == 5_994
    # every trade was read once: the watermark is past both, one inflow (the programme's trade)
    pool = session.get(RewardsPool, 1)
    assert pool is not None and pool.scanned_trade_id == trades[-1].id
    assert [(i.trade_id, i.status) for i in session.scalars(select(PoolInflow))] == [(trades[0].id, "funded")]
    session.commit()
    statement = rewards_pool.statement(session)
    assert statement["balance"] == 5_994
    assert [(x["trade_id"], x["instrument"], x["seller"], x["programme_kg"], x["amount"])
            for x in statement["inflows"]["trades"]] == [
        (trades[0].id, "SZ-ENERGY-2024", "深圳市碳普惠中心", 1_000, 5_994)]
    assert rewards_pool.check(session) == [] and wallets.check(session) == []


def test_a_trade_whose_proceeds_were_withdrawn_waits(market: Market, session: Session) -> None:
    m = market
    trade(session, m, 1_000)     # the programme's 1,000 kg: 6,000 − 6 = 5,994 fen, all the pool's
    wallets.request_withdrawal(session, m.agency.actor, 5_994)
    session.commit()
    first = rewards_pool.fund_from_trades(session)
    assert first.funded == [] and len(first.unfunded_trade_ids) == 1
    session.commit()
    inflows = rewards_pool.statement(session)["inflows"]
    assert (inflows["trades_pending_total"], inflows["trades_total"], inflows["trades"]) == (5_994, 0, [])
    w = session.scalar(select(wallets.Withdrawal))
    assert w is not None
    wallets.decide_withdrawal(session, m.w.operator.actor, w.id, approve=False, reason="资金需入奖励池")
    assert rewards_pool.fund_from_trades(session).amount == 5_994
    session.commit()


def test_payments_wait_in_order_and_the_pool_never_goes_negative(session: Session) -> None:
    mall = build_mall(session, residents=2, grant=1000, stock=5, points_price=100, cash_value=15_00)
    cheap = make_reward(session, mall.bw, mall.merchant.holder.id, points_price=50, cash_value=5_00)
    free = make_reward(session, mall.bw, mall.merchant.holder.id, points_price=10, cash_value=0)
    codes = [rewards.redeem(session, mall.member(session, 0), rid).code for rid in (mall.reward_id, cheap.id, free.id)]
    pool = rewards_pool.pool_holder_id(session)
    wallets.deposit(session, mall.bw.operator.actor, pool, 10_00, external_ref="foundation-1")
    session.commit()
    first = rewards_pool.use_code(session, mall.merchant.actor, codes[0])      # 15.00 > 10.00: waits
    assert first.payment is not None and first.payment.status == "waiting"
    second = rewards_pool.use_code(session, mall.merchant.actor, codes[1])     # 5.00 fits, but waits its turn
    assert second.payment is not None and second.payment.status == "waiting"
    third = rewards_pool.use_code(session, mall.merchant.actor, codes[2])      # no cash value: no payment
    assert third.payment is None and third.redemption.status == "used"
    session.commit()
    assert rewards_pool.pool_balance(session) == 10_00
    assert rewards_pool.statement(session)["outflows"]["waiting_total"] == 20_00
    wallets.deposit(session, mall.bw.operator.actor, pool, 7_00, external_ref="foundation-2")
    paid = rewards_pool.pay_waiting(session)                                   # 17.00: the first, then 2.00 left
    assert [p.amount for p in paid] == [15_00]
    wallets.deposit(session, mall.bw.operator.actor, pool, 3_00, external_ref="foundation-3")
    assert [p.amount for p in rewards_pool.pay_waiting(session)] == [5_00]
    assert rewards_pool.pay_waiting(session) == []
    session.commit()
    assert rewards_pool.pool_balance(session) == 0
    assert wallets.balance(session, mall.merchant.holder.id).available == 20_00
    statuses = session.scalars(select(MerchantPayment.status).order_by(MerchantPayment.id)).all()
    assert statuses == ["paid", "paid"]
    assert session.scalars(select(PoolInflow)).all() == []
    assert rewards_pool.check(session) == [] and wallets.check(session) == []


def test_only_the_operator_runs_the_settlement(session: Session) -> None:
    mall = build_mall(session, residents=1)
    with pytest.raises(Forbidden):
        rewards_pool.settle(session, mall.member(session, 0))
    funded, paid = rewards_pool.settle(session, mall.bw.operator.actor)
    assert (funded.amount, paid) == (0, [])
    session.commit()


def test_merchants_racing_on_a_small_pool_never_overdraw_it(session: Session,
                                                          session_factory: sessionmaker[Session]) -> None:
    """Six codes of 10.00 used at once against a pool of 30.00: three are paid, three wait."""
    n = 6
    mall = build_mall(session, residents=n, grant=100, stock=n, points_price=100, cash_value=10_00)
    codes = [rewards.redeem(session, mall.member(session, i), mall.reward_id).code for i in range(n)]
    wallets.deposit(session, mall.bw.operator.actor, rewards_pool.pool_holder_id(session), 30_00)
    session.commit()
    counter = mall.merchant.actor
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def use(code: str) -> None:
        barrier.wait()
        try:
            with session_factory() as s, s.begin():
                rewards_pool.use_code(s, counter, code)
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=use, args=(c,)) for c in codes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    statuses = sorted(session.scalars(select(MerchantPayment.status)).all())
    assert statuses == ["paid"] * 3 + ["waiting"] * 3
    assert rewards_pool.pool_balance(session) == 0
    assert wallets.balance(session, mall.merchant.holder.id).available == 30_00
    assert rewards_pool.check(session) == [] and wallets.check(session) == []
    session.rollback()
