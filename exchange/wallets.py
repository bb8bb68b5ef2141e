"""Cash wallets on a double-entry ledger, in integer minor units.

Every movement is a journal whose postings add up to zero. Each holder has an `available` and a
`held` account per currency; the platform has `fees`; `bank` stands for the outside world, so the
sum of every other account equals deposits minus paid withdrawals, always. Accounts are locked in
id order (no deadlock between two journals) and their running balance is updated in the same
transaction; the schema refuses an overdraft, and `check()` proves every balance equals the sum of
its postings.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, case, func, insert, inspect, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from exchange.errors import InsufficientFunds
from exchange.models import (
    CashAccount,
    CashAccountKind,
    Deposit,
    Journal,
    JournalKind,
    Posting,
    Withdrawal,
    WithdrawalStatus,
)
from registry import audit
from registry.actors import Actor
from registry.db import bulk_insert, bulk_insert_ids, utcnow
from registry.errors import Conflict, InvalidInput, NotFound, Suspended
from registry.models import Holder, HolderKind

CURRENCY = "CNY"
_CASH = cast(Table, CashAccount.__table__)
_JOURNALS = cast(Table, Journal.__table__)
_POSTINGS = cast(Table, Posting.__table__)


def _positive(amount: object, field: str = "amount") -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidInput(f"{field} must be a positive integer in minor units (fen)", field=field)
    return amount


def system_account(session: Session, kind: CashAccountKind, currency: str = CURRENCY) -> CashAccount:
    """The platform's `fees` or `bank` account of a currency (the migration opens the CNY ones)."""
    stmt = select(CashAccount).where(CashAccount.holder_id.is_(None), CashAccount.kind == kind,
                                     CashAccount.currency == currency)
    acc = session.scalar(stmt)
    if acc is None:
        try:
            with session.begin_nested():
                acc = CashAccount(holder_id=None, kind=kind, currency=currency, balance=0)
                session.add(acc)
        except IntegrityError:  # opened concurrently: use that one
            acc = session.scalar(stmt)
            assert acc is not None
    return acc


def holder_accounts(session: Session, holder_id: int, currency: str = CURRENCY) -> tuple[CashAccount, CashAccount]:
    """(available, held) of a holder, opened on first use."""
    rows = {a.kind: a for a in session.scalars(select(CashAccount).where(
        CashAccount.holder_id == holder_id, CashAccount.currency == currency))}
    for kind in (CashAccountKind.AVAILABLE, CashAccountKind.HELD):
        if kind not in rows:
            if session.get(Holder, holder_id) is None:
                raise NotFound(f"no holder {holder_id}", field="holder_id")
            # A nested transaction, so a concurrent first use (unique violation) costs only a retry.
            try:
                with session.begin_nested():
                    acc = CashAccount(holder_id=holder_id, kind=kind, currency=currency, balance=0)
                    session.add(acc)
            except IntegrityError:  # opened concurrently
                acc = session.scalars(select(CashAccount).where(
                    CashAccount.holder_id == holder_id, CashAccount.kind == kind,
                    CashAccount.currency == currency)).one()
            rows[kind] = acc
    return rows[CashAccountKind.AVAILABLE], rows[CashAccountKind.HELD]


def post(session: Session, kind: JournalKind, legs: Sequence[tuple[CashAccount, int]], *,
         ref: str | None = None, memo: str | None = None, user_id: int | None = None,
         already_locked: bool = False) -> Journal:
    """Write one balanced journal. Raises InsufficientFunds (field "amount") if a non-bank account
    would go below zero; nothing is written then. `already_locked`: the caller holds the rows'
    locks and passes the objects it loaded under them (the sequencer), so they are not re-read."""
    legs = [(a, amt) for a, amt in legs if amt != 0]
    if sum(amt for _, amt in legs) != 0:
        raise ValueError("a journal must balance")
    ids = sorted({a.id for a, _ in legs})
    if already_locked:
        locked = {a.id: a for a, _ in legs}
    else:
        locked = {a.id: a for a in session.scalars(
            select(CashAccount).where(CashAccount.id.in_(ids)).order_by(CashAccount.id)
            .with_for_update(key_share=True).execution_options(populate_existing=True))}
    delta: dict[int, int] = {}
    for a, amt in legs:
        delta[a.id] = delta.get(a.id, 0) + amt
    for acc_id, d in delta.items():
        acc = locked[acc_id]
        if acc.kind is not CashAccountKind.BANK and acc.balance + d < 0:
            raise InsufficientFunds(
                f"{acc.kind.value} balance {acc.balance} is less than {-d} (minor units)", field="amount")
    journal = Journal(kind=kind, ref=ref, memo=memo, created_by_id=user_id, created_at=utcnow())
    session.add(journal)
    session.flush()
    for acc_id, d in delta.items():
        locked[acc_id].balance += d
    session.add_all([Posting(journal_id=journal.id, account_id=a.id, amount=amt) for a, amt in legs])
    session.flush()
    return journal


def _checked(legs: Sequence[tuple[Balanced, int]]) -> tuple[list[tuple[Balanced, int]],
                                                          dict[int, tuple[Balanced, int]]]:
    """The nonzero legs of a journal and their sum per account id, once checked: they balance
    (else ValueError) and no account but the bank goes below zero (InsufficientFunds, field amount)."""
    legs = [(a, amt) for a, amt in legs if amt != 0]
    if sum(amt for _, amt in legs) != 0:
        raise ValueError("a journal must balance")
    delta: dict[int, tuple[Balanced, int]] = {}
    for a, amt in legs:
        delta[a.id] = (a, delta.get(a.id, (a, 0))[1] + amt)
    for a, d in delta.values():
        if a.kind is not CashAccountKind.BANK and a.balance + d < 0:
            raise InsufficientFunds(
                f"{a.kind.value} balance {a.balance} is less than {-d} (minor units)", field="amount")
    return legs, delta


def post_locked(session: Session, kind: JournalKind, legs: Sequence[tuple[Balanced, int]], *, ref: str | None = None,
                memo: str | None = None, user_id: int | None = None) -> int:
    """`post` on accounts the caller has locked and read as plain rows (id, kind, balance), in three
    Core statements (the journal, the balances, the postings) and no ORM flush; returns the journal's
    id. A loaded `CashAccount` object of a leg gets its new balance. Same checks and errors as `post`."""
    legs, delta = _checked(legs)
    journal_id = session.execute(insert(_JOURNALS).values(
        kind=kind, ref=ref, memo=memo, created_by_id=user_id, created_at=utcnow()).returning(_JOURNALS.c.id)).scalar_one()
    session.execute(_ADD_BALANCE, [{"a_id": acc_id, "d": d} for acc_id, (_, d) in delta.items()])
    session.execute(insert(_POSTINGS), [{"journal_id": journal_id, "account_id": a.id, "amount": amt}
                                        for a, amt in legs])
    for acc_id, (a, d) in delta.items():
        loaded = session.identity_map.get(inspect(CashAccount).identity_key_from_primary_key((acc_id,)))
        if loaded is not None:
            set_committed_value(loaded, "balance", a.balance + d)
    return journal_id


_ADD_BALANCE = update(_CASH).where(_CASH.c.id == bindparam("a_id")).values(balance=_CASH.c.balance + bindparam("d"))


@functools.lru_cache(maxsize=16)
def _add_balances(n: int) -> Any:
    """One UPDATE adding d<i> to the balance of account a<i>, for i < n (one statement for the server
    to run, where an executemany of `_ADD_BALANCE` is n)."""
    amount = _CASH.c.balance.type
    return (update(_CASH).where(_CASH.c.id.in_([bindparam(f"a{i}") for i in range(n)]))
            .values(balance=_CASH.c.balance + case(*[(_CASH.c.id == bindparam(f"a{i}"), bindparam(f"d{i}", type_=amount))
                                                     for i in range(n)])))


_INSERT_JOURNALS = insert(_JOURNALS).returning(_JOURNALS.c.id, sort_by_parameter_order=True)
_INSERT_POSTINGS = insert(_POSTINGS)


@dataclass(frozen=True, slots=True)
class LockedJournal:
    """One journal for `post_locked_many`: its kind, legs on locked accounts, ref, memo and author."""

    kind: JournalKind
    legs: Sequence[tuple[Balanced, int]]
    ref: str | None = None
    memo: str | None = None
    user_id: int | None = None


@dataclass(slots=True)
class _At:
    """An account as a journal of the batch sees it: its balance after the journals before it."""

    id: int
    kind: CashAccountKind
    balance: int


def post_locked_many(session: Session, journals: Sequence[LockedJournal]) -> list[int]:
    """`post_locked` for several journals in order, in three Core statements in all (the journals,
    the balances, the postings); returns their ids. Each journal is checked on the balances the
    ones before it left, as consecutive `post` calls would be: InsufficientFunds (field "amount") at
    the first that would overdraw an account, and nothing is written then. The accounts must be
    locked by the caller and read as plain rows (id, kind, balance); their loaded `CashAccount`
    objects, if any, get the new balances."""
    balances: dict[int, int] = {}
    checked: list[tuple[LockedJournal, list[tuple[Balanced, int]]]] = []
    for j in journals:
        legs, delta = _checked([(_At(a.id, a.kind, balances.get(a.id, a.balance)), amt) for a, amt in j.legs])
        for acc_id, (a, d) in delta.items():
            balances[acc_id] = a.balance + d
        checked.append((j, legs))
    if not checked:
        return []
    now = utcnow()
    conn = session.connection()   # Core statements: executed on the connection (~10 us less each)
    ids = list(conn.execute(_INSERT_JOURNALS, [
        {"kind": j.kind, "ref": j.ref, "memo": j.memo, "created_by_id": j.user_id, "created_at": now}
        for j, _ in checked]).scalars())
    start = {a.id: a.balance for j in journals for a, _ in j.legs}
    moved = [(acc_id, b - start[acc_id]) for acc_id, b in balances.items() if b != start[acc_id]]
    if moved:
        conn.execute(_add_balances(len(moved)), {k: v for i, (acc_id, d) in enumerate(moved)
                                                 for k, v in ((f"a{i}", acc_id), (f"d{i}", d))})
    conn.execute(_INSERT_POSTINGS, [{"journal_id": jid, "account_id": a.id, "amount": amt}
                                    for jid, (_, legs) in zip(ids, checked, strict=True) for a, amt in legs])
    for acc_id, b in balances.items():
        loaded = session.identity_map.get(inspect(CashAccount).identity_key_from_primary_key((acc_id,)))
        if loaded is not None:
            set_committed_value(loaded, "balance", b)
    return ids


class Balanced(Protocol):
    """What `Journals` needs of an account: a `CashAccount`, or a plain copy of one locked row."""

    id: int
    kind: CashAccountKind
    balance: int


class Journals:
    """Journals of one settlement batch on accounts the caller has locked, written at `flush()` with
    one INSERT for the journals and one for their postings (`post` costs two flushes each).

    Balances move on the locked objects at once, so an overdraft is refused at the journal that
    would cause it (InsufficientFunds, field "amount"), exactly as `post` refuses it. `now` is the
    journals' `created_at` (the batch's time; default: when each is queued)."""

    def __init__(self, session: Session, now: dt.datetime | None = None) -> None:
        self.s = session
        self.now = now
        self.rows: list[dict[str, object]] = []
        # Per journal: account id -> amount (one posting per account: legs on one account add up).
        self.legs: list[dict[int, int]] = []
        self.ids: list[int] = []

    @staticmethod
    def _move(legs: Sequence[tuple[Balanced, int]]) -> list[tuple[Balanced, int]]:
        """Check and apply a balanced set of legs to the locked balances; returns the nonzero legs."""
        legs, delta = _checked(legs)
        for a, d in delta.values():
            a.balance += d
        return legs

    def post(self, kind: JournalKind, legs: Sequence[tuple[Balanced, int]], *, ref: str | None = None,
             memo: str | None = None) -> int:
        """Queue a balanced journal; returns its index (its id is `ids[index]` after `flush()`)."""
        postings: dict[int, int] = {}
        for a, amt in self._move(legs):
            postings[a.id] = postings.get(a.id, 0) + amt
        self.rows.append({"kind": kind, "ref": ref, "memo": memo, "created_by_id": None,
                          "created_at": self.now or utcnow()})
        self.legs.append({acc: amt for acc, amt in postings.items() if amt})
        return len(self.rows) - 1

    def fold(self, index: int, legs: Sequence[tuple[Balanced, int]], memo: str) -> None:
        """Add balanced legs to the queued journal `index` (e.g. the release of what a filled buy
        held beyond its last trade, into that trade's settlement): a leg on an account the journal
        already posts to adds to that posting. `memo` (appended to the journal's) says what was
        folded in. Same checks as `post`."""
        postings = self.legs[index]
        for a, amt in self._move(legs):
            postings[a.id] = postings.get(a.id, 0) + amt
            if postings[a.id] == 0:
                del postings[a.id]
        row = self.rows[index]
        row["memo"] = f"{row['memo']}; {memo}" if row["memo"] else memo

    def flush(self) -> list[int]:
        if self.rows:
            self.ids = bulk_insert_ids(self.s, cast(Table, Journal.__table__), self.rows)
            bulk_insert(self.s, cast(Table, Posting.__table__), [
                {"journal_id": jid, "account_id": acc, "amount": amt}
                for jid, legs in zip(self.ids, self.legs, strict=True) for acc, amt in legs.items()])
        return self.ids


@dataclass(frozen=True, slots=True)
class Balance:
    available: int
    held: int
    currency: str = CURRENCY

    @property
    def total(self) -> int:
        return self.available + self.held


def balance(session: Session, holder_id: int, currency: str = CURRENCY) -> Balance:
    rows = dict(session.execute(select(CashAccount.kind, CashAccount.balance).where(
        CashAccount.holder_id == holder_id, CashAccount.currency == currency)).tuples().all())
    return Balance(rows.get(CashAccountKind.AVAILABLE, 0), rows.get(CashAccountKind.HELD, 0), currency)


def deposit(session: Session, actor: Actor, holder_id: int, amount: int, *, external_ref: str | None = None,
            memo: str | None = None) -> Deposit:
    """Operator credits money received (e.g. a bank transfer). `external_ref` (the bank slip) is
    unique, so a deposit is never credited twice."""
    actor.require_kind(HolderKind.OPERATOR)
    return record_deposit(session, actor, holder_id, amount, external_ref=external_ref, memo=memo)


def record_deposit(session: Session, actor: Actor | None, holder_id: int, amount: int, *,
                   external_ref: str | None = None, memo: str | None = None) -> Deposit:
    """Credit money received from outside (bank → holder's available), once per `external_ref`.
    `actor` None: a verified system event (a card payment confirmed by Stripe's signed webhook);
    callers check the right to credit. Raises Conflict (code "duplicate") on a repeated reference."""
    amount = _positive(amount)
    if external_ref and session.scalar(select(Deposit.id).where(Deposit.external_ref == external_ref)):
        raise Conflict("this bank reference was already credited", field="external_ref", code="duplicate")
    available, _ = holder_accounts(session, holder_id)
    j = post(session, JournalKind.DEPOSIT, [(system_account(session, CashAccountKind.BANK), -amount),
                                            (available, amount)],
             ref=f"holder:{holder_id}", memo=memo, user_id=actor.user_id if actor else None)
    d = Deposit(holder_id=holder_id, amount=amount, external_ref=external_ref, journal_id=j.id,
                created_by_id=actor.user_id if actor else None)
    session.add(d)
    session.flush()
    audit.record(session, actor, "cash.deposited", "deposit", d.id,
                 {"holder_id": holder_id, "amount": amount, "external_ref": external_ref})
    return d


def request_withdrawal(session: Session, actor: Actor, amount: int, *, bank_reference: str | None = None) -> Withdrawal:
    """The holder asks to withdraw; the money is held until an operator pays or rejects it."""
    actor.require_can_move_units()
    amount = _positive(amount)
    holder = session.get(Holder, actor.holder_id)
    if holder is not None and holder.suspended:
        raise Suspended("a suspended holder cannot withdraw", field="amount")
    available, held = holder_accounts(session, actor.holder_id)
    w = Withdrawal(holder_id=actor.holder_id, amount=amount, bank_reference=bank_reference,
                   status=WithdrawalStatus.REQUESTED, requested_by_id=actor.user_id)
    session.add(w)
    session.flush()
    post(session, JournalKind.WITHDRAWAL_REQUEST, [(available, -amount), (held, amount)],
         ref=f"withdrawal:{w.id}", user_id=actor.user_id)
    audit.record(session, actor, "cash.withdrawal_requested", "withdrawal", w.id, {"amount": amount})
    return w


def decide_withdrawal(session: Session, actor: Actor, withdrawal_id: int, *, approve: bool,
                      reason: str | None = None) -> Withdrawal:
    """Operator pays out (held → bank) or rejects (held → available, with a reason)."""
    actor.require_kind(HolderKind.OPERATOR)
    w = session.get(Withdrawal, withdrawal_id, with_for_update={"key_share": True})
    if w is None:
        raise NotFound(f"no withdrawal {withdrawal_id}", field="withdrawal_id")
    if w.status is not WithdrawalStatus.REQUESTED:
        raise Conflict(f"withdrawal is {w.status.value}", field="withdrawal_id", code="wrong_status")
    if not approve and not (reason and reason.strip()):
        raise InvalidInput("a rejection needs a reason", field="reason")
    available, held = holder_accounts(session, w.holder_id)
    if approve:
        post(session, JournalKind.WITHDRAWAL_PAID, [(held, -w.amount),
                                                    (system_account(session, CashAccountKind.BANK), w.amount)],
             ref=f"withdrawal:{w.id}", user_id=actor.user_id)
        w.status = WithdrawalStatus.PAID
    else:
        post(session, JournalKind.WITHDRAWAL_REJECTED, [(held, -w.amount), (available, w.amount)],
             ref=f"withdrawal:{w.id}", user_id=actor.user_id)
        w.status = WithdrawalStatus.REJECTED
    w.reason = reason
    w.decided_by_id = actor.user_id
    w.decided_at = utcnow()
    audit.record(session, actor, f"cash.withdrawal_{w.status.value}", "withdrawal", w.id,
                 {"amount": w.amount, "reason": reason})
    return w


def pay_out(session: Session, actor: Actor | None, holder_id: int, amount: int, *, bank_reference: str,
            reason: str, ref: str) -> Withdrawal:
    """Money leaves the holder's available balance straight to the outside world (a card refund
    goes back to the card), recorded as a paid withdrawal so deposits minus paid withdrawals still
    equal the money inside. Raises InsufficientFunds (field "amount") if it is not all available."""
    amount = _positive(amount)
    available, _ = holder_accounts(session, holder_id)
    post(session, JournalKind.WITHDRAWAL_PAID, [(available, -amount),
                                                (system_account(session, CashAccountKind.BANK), amount)],
         ref=ref, memo=reason, user_id=actor.user_id if actor else None)
    w = Withdrawal(holder_id=holder_id, amount=amount, bank_reference=bank_reference, reason=reason,
                   status=WithdrawalStatus.PAID, requested_by_id=actor.user_id if actor else None,
                   decided_by_id=actor.user_id if actor else None, decided_at=utcnow())
    session.add(w)
    session.flush()
    audit.record(session, actor, "cash.paid_out", "withdrawal", w.id,
                 {"holder_id": holder_id, "amount": amount, "bank_reference": bank_reference, "reason": reason})
    return w


def hold(session: Session, holder_id: int, amount: int, ref: str, user_id: int | None = None,
         account_ids: tuple[int, int] | None = None) -> int:
    """Reserve `amount` of the holder's available money (for a buy order); returns the journal's id.
    Raises InsufficientFunds (field "amount"); nothing is written then.

    Every buy order comes through here, so it is five Core statements: the conditional UPDATE of the
    available balance is the overdraft check and takes the row lock in the same step (available before
    held: their id order, as every other writer locks them); four when the caller read the holder's
    (available, held) account ids already (`account_ids`)."""
    amount = _positive(amount)
    ids = ({CashAccountKind.AVAILABLE: account_ids[0], CashAccountKind.HELD: account_ids[1]} if account_ids else
           dict(session.execute(select(CashAccount.kind, CashAccount.id).where(
               CashAccount.holder_id == holder_id, CashAccount.currency == CURRENCY)).tuples().all()))
    if len(ids) < 2:
        available, held = holder_accounts(session, holder_id)
        ids = {CashAccountKind.AVAILABLE: available.id, CashAccountKind.HELD: held.id}
    avail_id, held_id = ids[CashAccountKind.AVAILABLE], ids[CashAccountKind.HELD]
    if avail_id > held_id:   # never made so by holder_accounts; keep the id order anyway
        available, held = holder_accounts(session, holder_id)
        return post(session, JournalKind.HOLD, [(available, -amount), (held, amount)], ref=ref, user_id=user_id).id
    left = session.execute(update(_CASH).where(_CASH.c.id == avail_id, _CASH.c.balance >= amount)
                           .values(balance=_CASH.c.balance - amount).returning(_CASH.c.balance)).scalar()
    if left is None:
        have = session.scalar(select(CashAccount.balance).where(CashAccount.id == avail_id))
        raise InsufficientFunds(f"available balance {have} is less than {amount} (minor units)", field="amount")
    session.execute(update(_CASH).where(_CASH.c.id == held_id).values(balance=_CASH.c.balance + amount))
    journal_id = session.execute(insert(_JOURNALS).values(
        kind=JournalKind.HOLD, ref=ref, created_by_id=user_id, created_at=utcnow()).returning(_JOURNALS.c.id)).scalar_one()
    session.execute(insert(_POSTINGS), [{"journal_id": journal_id, "account_id": avail_id, "amount": -amount},
                                        {"journal_id": journal_id, "account_id": held_id, "amount": amount}])
    return journal_id


def release(session: Session, holder_id: int, amount: int, ref: str) -> Journal:
    available, held = holder_accounts(session, holder_id)
    return post(session, JournalKind.RELEASE, [(held, -_positive(amount)), (available, amount)], ref=ref)


def check(session: Session) -> list[str]:
    """Ledger invariants; an empty list means the books balance."""
    problems: list[str] = []
    for jid, total in session.execute(text(
            "SELECT journal_id, SUM(amount) FROM postings GROUP BY journal_id HAVING SUM(amount) <> 0")):
        problems.append(f"journal {jid} does not balance: {total}")
    for aid, bal, summed in session.execute(text(
            "SELECT a.id, a.balance, COALESCE(SUM(p.amount), 0) FROM cash_accounts a "
            "LEFT JOIN postings p ON p.account_id = a.id GROUP BY a.id, a.balance "
            "HAVING a.balance <> COALESCE(SUM(p.amount), 0)")):
        problems.append(f"cash account {aid} says {bal} but its postings add up to {summed}")
    for aid, bal in session.execute(text(
            "SELECT id, balance FROM cash_accounts WHERE kind <> 'bank' AND balance < 0")):
        problems.append(f"cash account {aid} is negative: {bal}")
    deposits = session.scalar(select(func.coalesce(func.sum(Deposit.amount), 0))) or 0
    paid = session.scalar(select(func.coalesce(func.sum(Withdrawal.amount), 0))
                          .where(Withdrawal.status == WithdrawalStatus.PAID)) or 0
    inside = session.scalar(select(func.coalesce(func.sum(CashAccount.balance), 0))
                            .where(CashAccount.kind != CashAccountKind.BANK)) or 0
    if inside != deposits - paid:
        problems.append(f"money inside is {inside}, but deposits minus paid withdrawals is {deposits - paid}")
    return problems
