"""The importer's compiled loops (`registry.behaviour_fast`, the source and its mypyc build) against the
plain Python they replaced, the build refused when it is of another source, the chunk sizes of a
preparing process, and the lookup's plan after a TRUNCATE."""

from __future__ import annotations

import copy
import datetime as dt
import importlib
import os
import pickle
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import behaviour, behaviour_fast, behaviour_impl, behaviour_prepare


@pytest.fixture(scope="module")
def fast(fast_module: Any) -> Any:
    """`registry.behaviour_fast`, the source or its compiled build (`fast_module`)."""
    return fast_module


REASONS = ["duplicate", "unknown_user", "over_daily_cap", "invalid"]
DAYS = [dt.date(2026, 11, 28), dt.date(2026, 11, 29), dt.date(2026, 11, 30)]


@st.composite
def decided_rows(draw: Any, fast: Any) -> list[Any]:
    rows = []
    for i in range(draw(st.integers(0, 30))):
        r = fast.Row(5 + i)
        r.event_id = f"e{i}"
        r.user_id = draw(st.integers(1, 6))
        r.day = draw(st.sampled_from(DAYS))
        r.reduction_g = draw(st.integers(0, 500))
        r.points = draw(st.integers(0, 50))
        if draw(st.booleans()):
            r.status = "accepted"
        else:
            r.reject(draw(st.sampled_from(REASONS)), "why")
        rows.append(r)
    return rows


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_chunk_counted_as_the_loop_it_replaced(fast: Any, data: Any) -> None:
    rows = data.draw(decided_rows(fast))
    got = fast.count_chunk(rows)
    accepted = [r for r in rows if r.status == "accepted"]
    reasons: dict[str, int] = {}
    by_user: dict[int, int] = {}
    by_day: dict[dt.date, int] = {}
    for r in rows:
        if r.status != "accepted":
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
        else:
            if r.points:
                by_user[r.user_id] = by_user.get(r.user_id, 0) + r.points
            if r.reduction_g:
                by_day[r.day] = by_day.get(r.day, 0) + r.reduction_g
    assert (got.accepted, got.rejected) == (len(accepted), len(rows) - len(accepted))
    assert got.reduction_g == sum(r.reduction_g for r in accepted)
    assert got.points == sum(r.points for r in accepted)
    assert (got.reasons, got.points_by_user, got.grams_by_day) == (reasons, by_user, by_day)


def test_rows_rebuilt_from_a_packed_chunk(fast: Any) -> None:
    cols = (41, ["a", "b"], ["r1", None], [None, 7], ["CI-BIKE", "ENG-QUIZ"], [DAYS[0], None], [12, 0], [1, 10],
            [None, "rejected"], [None, "invalid"], [None, "bad"], [b"ev1", b"ev2"], [b"st1", None])
    rows = fast.rows_of(cols)
    assert [(r.line_no, r.event_id, r.user_ref, r.user_id, r.code, r.day, r.reduction_g, r.points, r.status,
             r.reason, r.detail, r.packed_event, r.packed_stage) for r in rows] == [
        (41, "a", "r1", None, "CI-BIKE", DAYS[0], 12, 1, None, None, None, b"ev1", b"st1"),
        (42, "b", None, 7, "ENG-QUIZ", None, 0, 10, "rejected", "invalid", "bad", b"ev2", None)]
    assert all(r.started_at is None and r.factors is None for r in rows)
    with pytest.raises(ValueError):
        fast.rows_of((1, ["a"], [], [], [], [], [], [], [], [], [], [], []))


def test_stage_rows_packed_with_the_members_user_ids(fast: Any) -> None:
    rows = []
    for i, (ref, uid) in enumerate([("r1", None), (None, 55), ("r9", None), (None, 66)]):
        r = fast.Row(i + 1)
        r.user_ref, r.user_id, r.packed_stage = ref, uid, f"stage{i}".encode()
        rows.append(r)
    members = {10: [1001, 0], 20: [1055, 3]}
    got = fast.pack_stage(b"HEAD", rows, {"r1": 10}, {55: 20}, members)
    int8, null = behaviour_prepare.int8, behaviour_prepare.NULL
    assert got == b"HEAD" + b"stage0" + int8(1001) + b"stage1" + int8(1055) + b"stage2" + null + b"stage3" + null
    # Each row keeps its member's very memo entry (the classifier updates it in place), or None.
    assert rows[0].member is members[10] and rows[1].member is members[20]
    assert rows[2].member is None and rows[3].member is None
    rows[0].packed_stage = None
    with pytest.raises(ValueError):
        fast.pack_stage(b"", rows, {}, {}, {})


def test_what_waits_is_packed_in_member_order(fast: Any) -> None:
    """The memo's entries [user id, record, settled record]: the members whose record grew."""
    members = {9: [90, 15, 10], 2: [20, 2**40 + 3, 3], 7: [70, 4, 4], 5: [50, 8, 1]}
    got, n = fast.pack_pending(members, True)
    assert n == 3 and len(got) == 78
    assert [struct.unpack_from(">hiqiq", got, i * 26) for i in range(3)] == [
        (2, 8, 2, 8, 2**40), (2, 8, 5, 8, 7), (2, 8, 9, 8, 5)]
    unordered, n = fast.pack_pending(members, False)
    assert n == 3 and sorted(unordered[i:i + 26] for i in range(0, 78, 26)) == sorted(got[i:i + 26] for i in range(0, 78, 26))
    assert fast.pack_pending({7: [70, 4, 4]}, True) == (b"", 0)


def test_earnings_packed_as_the_former_loop(fast: Any) -> None:
    earned = {30: 4, 1: 0, 12: 2**33, 5: -1, 8: 1}
    kind, rest = behaviour_prepare.text("earn"), b"REST-of-the-entry"
    former = b"".join(struct.pack(">hii", 7, 4, u) + kind + struct.pack(">iq", 8, p) + rest
                      for u, p in sorted(earned.items()) if p > 0)
    assert fast.pack_earnings(earned, kind, rest) == former


def test_rows_pickle_and_copy_with_their_fields(fast: Any) -> None:
    r = fast.Row(3)
    r.event_id, r.user_ref, r.code, r.day = "ev", "card", "CI-BIKE", DAYS[1]
    r.started_at = dt.datetime(2026, 11, 29, 8, 0)
    r.reduction_g, r.points, r.packed_event = 120, 12, b"x"
    r.reject("duplicate", "d" * 400)
    for other in (pickle.loads(pickle.dumps(r)), copy.deepcopy(r)):
        assert type(other) is type(r)
        assert (other.line_no, other.event_id, other.user_ref, other.code, other.day, other.started_at,
                other.reduction_g, other.points, other.status, other.reason, len(other.detail)) == (
            3, "ev", "card", "CI-BIKE", DAYS[1], r.started_at, 120, 12, "rejected", "duplicate", 300)
        assert other.packed_event is None   # not sent between processes: packed again there


def test_a_build_of_another_source_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    behaviour_impl.native.cache_clear()
    monkeypatch.setattr(behaviour_impl, "source_sha256", lambda: "0" * 64)
    try:
        assert behaviour_impl.native() is None
        assert behaviour_impl.fast("Classifier") is behaviour_fast.Classifier
    finally:
        behaviour_impl.native.cache_clear()
        monkeypatch.undo()
    try:
        importlib.import_module("registry._fast_native")
    except ImportError:
        return
    if os.environ.get("TANHUI_BEHAVIOUR_PURE") != "1":   # the build of this very source is used
        assert behaviour_impl.native() is not None
        assert behaviour_impl.fast("Classifier") is not behaviour_fast.Classifier


def test_chunks_smaller_at_the_start_and_the_end() -> None:
    sizes = behaviour_prepare.Sizes(20_000, total=100 * 90_000)   # ~100 bytes a row: 90,000 rows
    got = []
    rows = 0
    while rows < 90_000:
        n = sizes.next()
        got.append(n)
        rows += n
        sizes.rows, sizes.read = rows, rows * 100
    assert got == [2_500, 5_000, 10_000] + [20_000] * 3 + [5_000] * 3
    small = behaviour_prepare.Sizes(behaviour_prepare.RAMP_FROM - 1, total=None)
    assert [small.next() for _ in range(5)] == [behaviour_prepare.RAMP_FROM - 1] * 5


def test_a_file_sent_in_smaller_first_and_last_chunks_keeps_every_line(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Any) -> None:
    """`_send_packed`: every line after the skipped ones once, in order; the first chunks an eighth,
    a quarter and a half, the last ones a quarter."""
    sent: list[tuple[Any, ...]] = []

    class Packer:
        def __init__(self, *args: Any) -> None:
            pass

        def pack_chunk(self, lo: int, records: list[list[str]]) -> tuple[Any, ...]:
            return (lo, [r[0] for r in records])

    monkeypatch.setattr(behaviour_prepare, "chunk_packer", lambda: Packer)
    path = tmp_path / "rows.csv"
    path.write_text("event_id,type\n" + "".join(f"e{i},CI-BIKE\n" for i in range(1, 30_001)))
    with open(path, "rb") as fp:
        behaviour_prepare._send_packed(fp, lambda n: None, None, None, 3, 4_000, sent.append)  # type: ignore[arg-type]
    sizes = [len(ids) for _, ids in sent]
    assert sizes[:8] == [500, 1_000, 2_000] + [4_000] * 5 and sizes[-2] == 1_000 and 1_000 in sizes[8:]
    assert [lo for lo, _ in sent] == [4 + sum(sizes[:i]) for i in range(len(sizes))]
    assert [i for _, ids in sent for i in ids] == [f"e{i}" for i in range(4, 30_001)]


@pytest.mark.parametrize("events", [2_500, 20_000])
def test_the_lookup_probes_the_events_by_index_after_a_truncate(session: Any, events: int) -> None:
    """After a TRUNCATE PostgreSQL's statistics say `behaviour_events` is empty while it fills again;
    as a plain join the planner then put the events outside and scanned them all for every staged
    row, and with few events it probed for duplicates by a whole scan of the span index. Every probe
    of the events must be an index probe with conditions (not a scan of a whole table or index with
    a filter), for a chunk of 5,000 rows staged."""
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner")
    from sqlalchemy import text

    session.execute(text("TRUNCATE behaviour_events"))
    session.execute(text(
        "INSERT INTO behaviour_events (batch_id, line_no, partner_id, programme_id, event_id, user_id, code, "
        "started_at, ended_at, day, reduction_g, points, status) SELECT 1, g, 1, 1, 'e' || g, g % 500, 'CI-BIKE', "
        "TIMESTAMP '2026-11-28 08:00' + g * INTERVAL '1 minute', TIMESTAMP '2026-11-28 08:10' + g * INTERVAL "
        "'1 minute', DATE '2026-11-28', 10, 1, 'accepted' FROM generate_series(1, :n) g"), {"n": events})
    session.execute(text(behaviour._STAGE_DDL))
    session.execute(text(
        "INSERT INTO behaviour_stage (line_no, event_id, user_ref, user_id, uid, code, started_at, ended_at, day_lo, "
        "day_hi, scan_lo, scan_hi) SELECT g, 'n' || g, NULL, g % 700, g % 700, 'CI-BIKE', TIMESTAMP '2026-11-28 09:00', "
        "TIMESTAMP '2026-11-28 09:10', TIMESTAMP '2026-11-27 16:00', TIMESTAMP '2026-11-28 16:00', "
        "TIMESTAMP '2026-11-27 09:00', TIMESTAMP '2026-11-28 16:00' FROM generate_series(1, 5000) g"))
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cur:
        cur.execute("SET LOCAL enable_hashjoin = off")
        cur.execute("SET LOCAL enable_mergejoin = off")
        cur.execute("EXPLAIN " + behaviour._LOOKUP_PG, {"partner": 1, "programme": 1, "b": 2, "from_line": 1})
        plan = [r[0] for r in cur.fetchall()]
    session.rollback()
    probes = [i for i, line in enumerate(plan) if " on behaviour_events " in line]
    assert len(probes) == 2, plan
    for i in probes:
        assert "Index Scan using" in plan[i] and "Index Cond" in plan[i + 1], plan
    assert "uq_behaviour_events_accepted" in plan[probes[0]] and "ix_behaviour_events_user_span" in plan[probes[1]]
