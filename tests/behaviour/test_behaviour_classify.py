"""The importer's per-chunk decisions (`registry.behaviour._Classifier`), whether taken all at once or
a block at a time, decide every row as the former `_classify` did (kept here as the oracle); `behaviour_fast.pack_events` (source and compiled build) packs the bytes the
former inline packing did; a preparing process started ahead and not needed ends cleanly."""

from __future__ import annotations

import copy
import datetime as dt
import struct
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import behaviour, behaviour_prepare
from registry.behaviour import Accepted, Found, MemberMemo
from registry.behaviour_rules import CLAIMED_ELSEWHERE, DUPLICATE, OVER_CAP, UNKNOWN_USER, Row, Rules


def former_classify(rows: list[Row], found: Mapping[int, Any], rules: Rules, memo: MemberMemo,
                    left_out: Accepted | None, accepted: Accepted) -> dict[int, int]:
    """`registry.behaviour._classify` as it was before the decisions were streamed (main 44b84ec)."""
    counts: dict[tuple[int, str, dt.date], int] = {}
    carry: dict[int, int] = {}
    gained: dict[int, int] = {}
    accepted_ids, per_day = accepted.event_ids, accepted.per_day
    earlier_ids = left_out.event_ids if left_out is not None else frozenset()
    earlier_per_day = left_out.per_day if left_out is not None else {}
    per_point = rules.grams_per_point
    caps: dict[str, int] = {}
    members, by_ref, by_user = memo.members, memo.by_ref, memo.by_user
    for r in rows:
        member_id, uid, before_g, dup, seen = found[r.line_no]
        counted, elsewhere = divmod(int(seen or 0), 2)
        if uid is None:
            r.reject(UNKNOWN_USER, "no member of the partner's programme with this user id")
            continue
        if member_id is None:
            member_id = by_ref.get(r.user_ref) if r.user_ref is not None else by_user.get(r.user_id or 0)
            assert member_id is not None
            before_g = members[member_id][1]
        elif member_id in members:
            memo.learn(r, member_id, uid, members[member_id][1])
            before_g = members[member_id][1]
        else:
            memo.learn(r, member_id, uid, before_g)
        r.user_id = uid
        if dup or r.event_id in accepted_ids or r.event_id in earlier_ids:
            r.reject(DUPLICATE, "this partner's event id was already accepted")
            continue
        if elsewhere:
            r.reject(CLAIMED_ELSEWHERE, "the same behaviour and time span was accepted from another partner")
            continue
        assert r.code is not None and r.day is not None
        key = (uid, r.code, r.day)
        n = counts.get(key, counted + earlier_per_day.get(key, 0)) + 1
        cap = caps.get(r.code) or caps.setdefault(r.code, rules.cap(r.code))
        if n > cap:
            r.reject(OVER_CAP, f"more than {cap} {r.code} a day")
            continue
        counts[key] = n
        before = carry.get(member_id, before_g)
        after = before + r.reduction_g
        r.points += after // per_point - before // per_point
        carry[member_id] = after
        if r.reduction_g:
            gained[member_id] = gained.get(member_id, 0) + r.reduction_g
        accepted_ids.add(r.event_id)
        per_day[key] = per_day.get(key, 0) + 1
        r.status = "accepted"
    for member_id, after in carry.items():
        if member_id in memo.members:
            memo.members[member_id][1] = after
    return gained


CODES = ["CI-TRANSIT", "CI-WASTE", "ENG-CHECKIN", "ENG-QUIZ"]
DAYS = [dt.date(2026, 11, 28), dt.date(2026, 11, 29)]


@st.composite
def chunks(draw: Any) -> tuple[list[Row], dict[int, Any], MemberMemo, Accepted | None, list[int]]:
    """A chunk of pending rows of up to 8 members (4 known to the memo, by external id or user id),
    the lookup's answers for it, the memo, what the chunk before accepted (if left out), and where
    to cut the chunk into blocks."""
    memo = MemberMemo()
    for m in range(4):   # members 0-3 known: 0-1 by external id, 2-3 by user id
        if m < 2:
            memo.by_ref[f"card-{m}"] = m
        else:
            memo.by_user[100 + m] = m
        g = draw(st.integers(0, 50))
        memo.members[m] = [100 + m, g, g]
    n = draw(st.integers(1, 40))
    rows: list[Row] = []
    found: dict[int, Any] = {}
    for i in range(n):
        line = 11 + i
        r = Row(line)
        m = draw(st.integers(0, 8))   # 8: nobody
        r.event_id = f"e{draw(st.integers(0, 25))}"
        if m in (2, 3, 6, 7) or (m == 8 and draw(st.booleans())):
            r.user_id = 100 + m
        else:
            r.user_ref = f"card-{m}"
        r.code, r.day = draw(st.sampled_from(CODES)), draw(st.sampled_from(DAYS))
        r.reduction_g = 0 if r.code.startswith("ENG") else draw(st.integers(0, 30))
        r.points = 5 if r.code.startswith("ENG") else 0
        dup = draw(st.sampled_from([None, None, None, 1]))
        seen = draw(st.sampled_from([None, 0, 1, 2, 3, 4, 7]))
        if m == 8:
            found[line] = (None, None, None, dup, seen)
        elif m < 4 and draw(st.booleans()):   # staged from the memo
            found[line] = (None, 100 + m, None, dup, seen)
        else:   # looked up: the database's record (the memo's, if it knows the member, is newer)
            found[line] = (m, 100 + m, draw(st.integers(0, 50)), dup, seen)
        rows.append(r)
    left_out = None
    if draw(st.booleans()):
        left_out = Accepted(1, 10, {f"e{draw(st.integers(0, 25))}" for _ in range(3)},
                            {(100 + draw(st.integers(0, 7)), draw(st.sampled_from(CODES)), DAYS[0]):
                             draw(st.integers(1, 3)) for _ in range(3)})
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return rows, found, memo, left_out, cuts


def outcome(r: Row) -> tuple[Any, ...]:
    return (r.line_no, r.status, r.reason, r.detail, r.user_id, r.points)


def as_found(found: Mapping[int, Any]) -> Found:
    """The former lookup's answers (line -> member id, user id, record, duplicate, seen) as the lookup
    gives them now: only the rows staged without their member are looked up, only duplicates and
    rows seen are named."""
    got = Found({}, set(), {})
    for line, (member_id, uid, before_g, dup, seen) in found.items():
        if member_id is not None or uid is None:
            got.members[line] = (member_id, uid, before_g)
        if dup:
            got.duplicates.add(line)
        if seen:
            got.seen[line] = int(seen)
    return got


@settings(max_examples=300, deadline=None)
@given(chunk=chunks(), per_point=st.sampled_from([1, 3, 10]))
def test_decided_in_blocks_as_all_at_once(fast_module: Any, chunk: Any, per_point: int) -> None:
    rows, found, memo, left_out, cuts = chunk
    rules = Rules(grams_per_point=per_point, daily_caps={"CI-TRANSIT": 3, "CI-WASTE": 1, "ENG-CHECKIN": 1})
    rows2, memo2, memo_before = copy.deepcopy(rows), copy.deepcopy(memo), copy.deepcopy(memo)
    want_accepted = Accepted(11, 10 + len(rows), set(), {})
    want_gained = former_classify(rows, found, rules, memo, left_out, want_accepted)
    accepted = Accepted(11, 10 + len(rows2), set(), {})
    answers = as_found(found)
    classifier = fast_module.Classifier(
        answers.members, answers.duplicates, answers.seen, rules.grams_per_point, rules.cap, memo2.members,
        memo2.by_ref, memo2.by_user, accepted.event_ids, accepted.per_day,
        left_out.event_ids if left_out is not None else frozenset(), left_out.per_day if left_out is not None else {})
    for r in rows2:   # staged: a row whose member the memo knows carries its entry (pack_stage)
        member_id = memo2.member_of(r)
        r.member = memo2.members[member_id] if member_id is not None else None
    for lo, hi in zip([0, *cuts], [*cuts, len(rows2)], strict=True):
        classifier.classify(rows2[lo:hi])
    gained = {m: known[1] - memo_before.members[m][1] if m in memo_before.members else known[1] - known[2]
              for m, known in memo2.members.items()}
    assert {m: g for m, g in gained.items() if g} == want_gained
    assert [outcome(r) for r in rows2] == [outcome(r) for r in rows]
    assert (accepted.event_ids, accepted.per_day) == (want_accepted.event_ids, want_accepted.per_day)
    assert (memo2.members, memo2.by_ref, memo2.by_user) == (memo.members, memo.by_ref, memo.by_user)


# -- the events' COPY bytes ------------------------------------------------------------------------

_TAIL = struct.Struct(">iqiqiii8sii")


@pytest.fixture(scope="module")
def pack_events(fast_module: Any) -> Any:
    return fast_module.pack_events


def former_pack(head: bytes, rows: list[Row]) -> bytes:
    """The packing `registry.behaviour._insert_packed` did inline (main 44b84ec)."""
    int4, int8, txt = behaviour_prepare.int4, behaviour_prepare.int8, behaviour_prepare.text
    parts = []
    for r in rows:
        assert r.packed_event is not None
        parts += [head, r.packed_event]
        if r.status == "accepted":
            parts.append(_TAIL.pack(8, r.user_id, 8, r.reduction_g, 4, r.points, 8, b"accepted", -1, -1))
        else:
            parts.append(int8(r.user_id) + int8(0) + int4(0) + txt(r.status) + txt(r.reason) + txt(r.detail))
    return b"".join(parts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.one_of(st.none(), st.integers(0, 2**62)), st.integers(0, 2**40),
                          st.integers(0, 2**30), st.text(max_size=20), st.binary(max_size=30)), max_size=20))
def test_events_packed_as_before(pack_events: Any, specs: list[Any]) -> None:
    rows = []
    for i, (ok, user_id, g, p, detail, packed) in enumerate(specs):
        r = Row(i + 1)
        r.packed_event, r.user_id = packed, user_id if not ok else (user_id or 7)
        r.reduction_g, r.points = g, p
        if ok:
            r.status = "accepted"
        else:
            r.reject(DUPLICATE if i % 2 else UNKNOWN_USER, detail)
        rows.append(r)
    head = behaviour_prepare.Packer.event_head_for() + behaviour_prepare.int4(3) * 3
    assert pack_events(head, rows) == former_pack(head, rows)


def test_a_preparing_process_started_ahead_and_not_needed_ends_cleanly() -> None:
    proc = behaviour_prepare.start()
    behaviour_prepare.stop(proc)
    assert proc.returncode is not None
    idle = behaviour_prepare.start()
    assert idle.stdin is not None
    idle.stdin.close()   # given nothing: it ends by itself, without an error
    assert idle.wait(timeout=30) == 0
    behaviour_prepare.stop(idle)


@pytest.mark.parametrize("earned", [{}, {7: 0, 3: -1}, {1: 1}, {2**31 - 1: 2**40, 5: 12, 9: 0, 4: 3}],
                         ids=["none", "none-above-0", "one", "several"])
def test_earnings_packed_for_copy_read_back_as_given(session: Any, earned: dict[int, int]) -> None:
    """`_packed_earnings` (PostgreSQL's binary COPY of the `earn` entries), read back by PostgreSQL."""
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("binary COPY is PostgreSQL's")
    from sqlalchemy import text

    session.execute(text("CREATE TEMP TABLE IF NOT EXISTS earn_check (user_id INT, kind VARCHAR(10), points BIGINT, "
                         "expires_on DATE, batch_id INT, ref VARCHAR(100), created_at TIMESTAMP)"))
    session.execute(text("DELETE FROM earn_check"))
    now = dt.datetime(2026, 12, 3, 18, 30, 5, 123456)
    parts = behaviour._packed_earnings(earned, dt.date(2027, 12, 31), 42, "behaviour:42", now)
    behaviour._copy_packed(session, "earn_check", behaviour._EARN_COLUMNS, parts)
    got = session.execute(text("SELECT * FROM earn_check ORDER BY user_id")).all()
    assert [tuple(r) for r in got] == [(u, "earn", p, dt.date(2027, 12, 31), 42, "behaviour:42", now)
                                       for u, p in sorted(earned.items()) if p > 0]
    session.rollback()
