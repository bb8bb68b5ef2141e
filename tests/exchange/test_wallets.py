"""Cash wallets: double entry, holds, withdrawals, conservation of money."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from exchange import wallets
from exchange.errors import InsufficientFunds
from exchange.models import CashAccountKind, Posting
from registry.errors import Conflict, Forbidden, InvalidInput, Suspended
from registry.holders import set_holder_suspension
from registry.models import HolderKind
from tests.factories import party


@pytest.fixture
def parties(session):
    op = party(session, HolderKind.OPERATOR)
    buyer = party(session, HolderKind.ENTERPRISE)
    session.commit()
    return op, buyer


def test_deposit_hold_release_and_balances(session, parties):
    op, buyer = parties
    wallets.deposit(session, op.actor, buyer.holder.id, 1_000_00, external_ref="BANK-001", memo="电汇")
    assert wallets.balance(session, buyer.holder.id) == wallets.Balance(1_000_00, 0)
    wallets.hold(session, buyer.holder.id, 300_00, ref="order:1")
    assert wallets.balance(session, buyer.holder.id) == wallets.Balance(700_00, 300_00)
    wallets.release(session, buyer.holder.id, 100_00, ref="order:1")
    assert wallets.balance(session, buyer.holder.id) == wallets.Balance(800_00, 200_00)
    session.commit()
    assert wallets.check(session) == []
    bank = wallets.system_account(session, CashAccountKind.BANK)
    assert bank.balance == -1_000_00


def test_no_balance_goes_negative_and_nothing_is_written(session, parties):
    op, buyer = parties
    wallets.deposit(session, op.actor, buyer.holder.id, 50)
    session.commit()
    before = session.scalar(select(func.count()).select_from(Posting))
    with pytest.raises(InsufficientFunds) as e:
        wallets.hold(session, buyer.holder.id, 51, ref="order:2")
    assert e.value.field == "amount"
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Posting)) == before
    assert wallets.balance(session, buyer.holder.id) == wallets.Balance(50, 0)


def test_schema_refuses_an_overdraft(session, parties):
    op, buyer = parties
    wallets.deposit(session, op.actor, buyer.holder.id, 10)
    session.commit()
    with pytest.raises(DBAPIError):
        session.execute(text("UPDATE cash_accounts SET balance = -1 WHERE holder_id = :h AND kind = 'available'"),
                        {"h": buyer.holder.id})
    session.rollback()


def test_deposit_rules(session, parties):
    op, buyer = parties
    with pytest.raises(Forbidden):
        wallets.deposit(session, buyer.actor, buyer.holder.id, 10)
    for bad in (0, -5, 1.5, "10", True):
        with pytest.raises(InvalidInput):
            wallets.deposit(session, op.actor, buyer.holder.id, bad)
    wallets.deposit(session, op.actor, buyer.holder.id, 10, external_ref="SLIP-9")
    with pytest.raises(Conflict):
        wallets.deposit(session, op.actor, buyer.holder.id, 10, external_ref="SLIP-9")
    session.commit()


def test_withdrawal_is_held_then_paid_or_returned(session, parties):
    op, buyer = parties
    wallets.deposit(session, op.actor, buyer.holder.id, 500)
    w1 = wallets.request_withdrawal(session, buyer.actor, 200, bank_reference="6222 **** 0001")
    assert wallets.balance(session, buyer.holder.id) == wallets.Balance(300, 200)
    with pytest.raises(InsufficientFunds):
        wallets.request_withdrawal(session, buyer.actor, 301)
    wallets.decide_withdrawal(session, op.actor, w1.id, approve=True)
    assert wallets.balance(session, buyer.holder.id) == wallets.Balance(300, 0)
    with pytest.raises(Conflict):
        wallets.decide_withdrawal(session, op.actor, w1.id, approve=False, reason="again")
    w2 = wallets.request_withdrawal(session, buyer.actor, 100)
    with pytest.raises(InvalidInput):
        wallets.decide_withdrawal(session, op.actor, w2.id, approve=False)
    with pytest.raises(Forbidden):
        wallets.decide_withdrawal(session, buyer.actor, w2.id, approve=True)
    wallets.decide_withdrawal(session, op.actor, w2.id, approve=False, reason="account name mismatch")
    assert wallets.balance(session, buyer.holder.id) == wallets.Balance(300, 0)
    session.commit()
    assert wallets.check(session) == []


def test_suspended_holder_cannot_withdraw(session, parties):
    op, buyer = parties
    wallets.deposit(session, op.actor, buyer.holder.id, 500)
    set_holder_suspension(session, op.actor, buyer.holder.id, True, "AML review")
    with pytest.raises(Suspended):
        wallets.request_withdrawal(session, buyer.actor, 10)
    session.commit()


def test_check_finds_a_forged_balance(session, parties):
    op, buyer = parties
    wallets.deposit(session, op.actor, buyer.holder.id, 500)
    session.commit()
    session.execute(text("UPDATE cash_accounts SET balance = balance + 1 WHERE holder_id = :h AND kind = 'available'"),
                    {"h": buyer.holder.id})
    problems = wallets.check(session)
    session.rollback()
    assert any("postings add up to" in p for p in problems)
    assert any("money inside" in p for p in problems)



@pytest.mark.parametrize("shape", ["round_trip", "two_moved", "three_moved"])
def test_several_journals_posted_at_once_move_each_balance_by_its_sum(session, parties, shape):
    """`post_locked_many` adds each account's net movement with one UPDATE (a CASE per account;
    none when everything nets to zero), each journal checked on the balances the ones before it
    left; and an overdraft at any journal writes nothing."""
    from exchange.models import CashAccount, Journal, JournalKind
    op, buyer = parties
    sellers = [party(session, HolderKind.ENTERPRISE) for _ in range(2)]
    wallets.deposit(session, op.actor, buyer.holder.id, 1_000)
    ids = [*wallets.holder_accounts(session, buyer.holder.id), *(wallets.holder_accounts(session, p.holder.id)[0]
                                                                   for p in sellers)]
    ids = [a.id for a in ids]
    session.commit()

    def locked() -> list:
        rows = {r.id: r for r in session.execute(select(CashAccount.id, CashAccount.kind, CashAccount.balance)
                                                 .where(CashAccount.id.in_(ids)))}
        return [rows[i] for i in ids]
    a, h, s1, s2 = locked()
    second = {"round_trip": [(h, -600), (a, 600)], "two_moved": [(h, -600), (s1, 600)],
              "three_moved": [(h, -600), (s1, 400), (s2, 200)]}[shape]
    before = session.scalar(select(func.count()).select_from(Journal))
    out = wallets.post_locked_many(session, [wallets.LockedJournal(JournalKind.HOLD, [(a, -600), (h, 600)]),
                                             wallets.LockedJournal(JournalKind.SETTLEMENT, second, ref="x")])
    session.commit()
    assert len(out) == 2 and session.scalar(select(func.count()).select_from(Journal)) == before + 2
    want = {"round_trip": [1_000, 0, 0, 0], "two_moved": [400, 0, 600, 0], "three_moved": [400, 0, 400, 200]}[shape]
    assert [r.balance for r in locked()] == want
    assert wallets.check(session) == []
    a, h, _, _ = locked()
    with pytest.raises(InsufficientFunds):   # the second journal overdraws what the first left
        wallets.post_locked_many(session, [wallets.LockedJournal(JournalKind.HOLD, [(a, -5), (h, 5)]),
                                           wallets.LockedJournal(JournalKind.HOLD, [(a, 4 - a.balance),
                                                                                    (h, a.balance - 4)])])
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Journal)) == before + 2
    assert [r.balance for r in locked()] == want
