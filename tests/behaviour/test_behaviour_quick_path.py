"""The preparing process's quick path (`registry.behaviour_fast.ChunkPacker`, the source and, when
built, its mypyc build `registry._fast_native`) gives, row by row, the columns and packed bytes that
`RowPreparer.prepare` then `Packer.pack` give (the long way)."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import behaviour_io
from registry.behaviour_fast import ChunkPacker
from registry.behaviour_prepare import Packer
from registry.behaviour_rules import RowPreparer, Rules
from registry.factors import shipped_table

RECEIVED = dt.datetime(2026, 12, 1, 12, 0, 0, 123456)
ALLOWED = frozenset({"CI-TRANSIT", "CI-BIKE", "CI-WASTE", "CI-HOME", "ENG-CHECKIN", "ENG-QUIZ"})
NAMES = ["event_id", "user", "user_id", "type", "started_at", "ended_at", "mode", "distance_km", "category",
         "weight_kg"]
FACTORS = shipped_table()
@pytest.fixture(scope="module")
def impl(fast_module: Any) -> type[Any]:
    """`ChunkPacker` of the source or of the compiled build."""
    return fast_module.ChunkPacker  # type: ignore[no-any-return]


def preparer(rules: Rules | None = None) -> RowPreparer:
    return RowPreparer(rules or Rules(), region="CN-GD-SZ", allowed=ALLOWED, received_at=RECEIVED, factors=FACTORS)


def long_way(names: list[str], records: list[list[str]], rules: Rules | None = None) -> tuple[Any, ...]:
    """Every record through `prepare` + `pack`, in the columns `pack_chunk` returns."""
    rules = rules or Rules()
    chunker = ChunkPacker(preparer(rules), Packer(rules), names)
    chunker.quick = False
    return chunker.pack_chunk(7, records)


def quick_way(impl: type[Any], names: list[str], records: list[list[str]], rules: Rules | None = None
              ) -> tuple[Any, tuple[Any, ...]]:
    rules = rules or Rules()
    chunker = impl(preparer(rules), Packer(rules), names)
    return chunker, chunker.pack_chunk(7, records)


def local(t: dt.datetime, offset: str = "+08:00") -> str:
    sign = -1 if offset[0] == "-" else 1
    delta = dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])) * sign
    return (t + delta).isoformat() + offset


def ordinary_records(n: int) -> list[list[str]]:
    out = []
    for i in range(n):
        s = RECEIVED.replace(microsecond=0 if i % 2 else 654321) - dt.timedelta(days=i % 6, minutes=60 + 37 * i)
        e = s + dt.timedelta(minutes=20 + i % 9)
        kind = i % 5
        if kind == 0:
            rec = [f"t{i}", f"card-{i % 11}", "", "CI-TRANSIT", local(s), local(e), ("bus", "metro")[i % 2],
                   f"{1 + i % 13}.{i % 7}", "", ""]
        elif kind == 1:
            rec = [f"b{i}", "", str(1000 + i % 5), "CI-BIKE", local(s), local(e), "", f"{i % 4 + 1}", "", ""]
        elif kind == 2:
            rec = [f"w{i}", f"card-{i % 3}", "", "CI-WASTE", local(s), "", "", "", "recyclables", f"{i % 5}.5"]
        elif kind == 3:
            rec = [f"c{i}", f"card-{i % 3}", "", "ENG-CHECKIN", local(s, "-05:30"), local(s, "-05:30"), "", "", "", ""]
        else:
            rec = [f"q{i}", f"我-{i % 3}", "", "ENG-QUIZ", local(s), local(e), "", "", "", ""]
        out.append(rec)
    return out


class _NoLongWay:
    """The preparer's memos and rules, but no `prepare`."""

    def __init__(self, preparer: RowPreparer) -> None:
        self.rules, self._qty, self._calc = preparer.rules, preparer._qty, preparer._calc

    def prepare(self, line_no: int, raw: Any) -> Any:
        raise AssertionError(f"line {line_no} went the long way")


def test_ordinary_records_are_the_long_ways_and_mostly_quick(impl: type[Any]) -> None:
    records = ordinary_records(400)
    chunker, quick = quick_way(impl, NAMES, records)
    assert quick == long_way(NAMES, records)
    assert all(s is None for s in quick[8])   # every ordinary row passes the Python checks
    assert sum(g > 0 for g in quick[6]) > 200
    chunker.preparer = _NoLongWay(chunker.preparer)
    again = chunker.pack_chunk(7, records)   # met before: every row the quick way
    assert again == quick


def test_a_file_read_as_records_gives_what_csv_rows_gives() -> None:
    data = "\ufeffevent_id, user ,type\r\na,u1,CI-BIKE\r\n\r\n\"b\nc\",u2,ENG-QUIZ\r\nd,u3\r\n".encode()
    got = behaviour_io.csv_records(io.BytesIO(data))
    assert got is not None
    names, records = got
    assert [dict(zip(names, r, strict=False)) for r in records] == list(behaviour_io.csv_rows(io.BytesIO(data)))
    assert behaviour_io.csv_records(io.BytesIO(b"")) is None


_TIMES = st.one_of(
    st.sampled_from(["", " ", "2026-11-28T10:00:00+08:00", "2026-11-28T10:00:00Z", "2026-11-28T10:00:00",
                     "2026-11-28 10:00:00+08:00", "2026-11-28T10:61:00+08:00", "2026-11-28T10:00:60+08:00",
                     "2026-11-28T24:00:00+08:00", "2026-W48-6T10:00:00+08:00", "2026-11-28T10:00:00+24:00",
                     "2026-11-28T10:00:00+08:60", "2026-11-28T10:00:00.5+08:00", "2026-11-28T10:00:00+0800",
                     "2026-11-28T10:00:00-00:00", "2026-11-31T10:00:00+08:00", "２026-11-28T10:00:00+08:00",
                     " 2026-11-28T10:00:00+08:00", "2026-11-28T10:0０:00+08:00", "2026-11-28T1０:00:00+08:00",
                     "2026-11-28T10:00:00+08:00:00", "2026-11-28T10:00:0a+08:00", "2025-12-31T23:30:00-05:00",
                     "2026-11-28T10:00:00.123+08:00", "2026-11-28T10:00:00.123456+08:00", "2026-11-28T10:00:00,123+08:00",
                     "2026-11-28T10:00:00.12345+08:00", "2026-11-28T10:00:00.1234567+08:00", "2026-11-28T10:00:00.12a+08:00",
                     "2026-11-28T10:00:00.1234٥6+08:00", "2026-11-28T10:00:00.123456Z+08:0",
                     "2026-11-28T10:00:00.-12+08:00"]),
    st.builds(lambda d, m, us, off: local(RECEIVED.replace(microsecond=us) - dt.timedelta(days=d, minutes=m), off),
              st.integers(-1, 40), st.integers(-300, 300), st.sampled_from([0, 0, 1, 999, 123000, 999999]),
              st.sampled_from(["+08:00", "+00:00", "-05:30", "+14:00", "-12:00", "+05:45"])),
)
_NUMBERS = st.sampled_from(["", " ", "0", "1", "1.5", " 3.25 ", "12.00", "30", "55", "120", "abc", "-1", "1e1",
                            "NaN", "Infinity", "0.001", "1_0", "５", "49.9", "50.1", "1000.0001"])
_RECORD = st.tuples(
    st.sampled_from(["", " ", "e1", " e2 ", "e" * 64, "e" * 65, "一号", "a,b"]),           # event_id
    st.sampled_from(["", " ", "card-1", " card-2", "u" * 64, "u" * 65, "我"]),                # user
    st.sampled_from(["", "42", " 7 ", "4x", "١٢", "²", "1" * 17, "1" * 18, "-3"]),       # user_id
    st.sampled_from(sorted(ALLOWED) + ["CI-NEV", "", "ci-bike", " CI-BIKE ", "NOPE"]),       # type
    _TIMES, _TIMES,
    st.sampled_from(["", "bus", "metro", " metro ", "ferry", "BUS"]),                       # mode
    _NUMBERS,                                                                               # distance_km
    st.sampled_from(["", "recyclables", "kitchen", "e-waste", "nope"]),                     # category
    _NUMBERS,                                                                               # weight_kg
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_RECORD, min_size=1, max_size=30), st.booleans(), st.integers(0, 3))
def test_any_records_give_the_long_ways_columns(impl: type[Any], recs: list[tuple[str, ...]], twice: bool,
                                                drop: int) -> None:
    names = list(NAMES)
    records = [list(r) for r in recs]
    if drop:   # a file without some of the columns, or with a short record
        del names[-drop]
        for r in records:
            del r[-drop]
        records[0] = records[0][:-1]
    if twice:   # the second time round, the memos know every activity and time
        records = records + records
    assert quick_way(impl, names, records)[1] == long_way(names, records)


@settings(max_examples=50, deadline=None)
@given(st.lists(_RECORD, min_size=1, max_size=20),
       st.builds(Rules, day_utc_offset_h=st.integers(-12, 14), max_duration_h=st.integers(1, 48),
                 claim_window_days=st.integers(1, 60), future_skew_s=st.integers(0, 7200),
                 max_waste_kg=st.integers(1, 60)))
def test_other_rules_give_the_long_ways_columns(impl: type[Any], recs: list[tuple[str, ...]], rules: Rules) -> None:
    records = [list(r) for r in recs] * 2
    assert quick_way(impl, NAMES, records, rules)[1] == long_way(NAMES, records, rules)


def test_a_file_with_an_activity_column_goes_the_long_way(impl: type[Any]) -> None:
    names = NAMES + ["activity"]
    records = [r + [""] for r in ordinary_records(20)]
    chunker, quick = quick_way(impl, names, records)
    assert not chunker.quick
    assert quick == long_way(names, records)


def test_digits_python_reads_but_int_does_not_and_an_offset_inside_the_seconds_are_invalid() -> None:
    """"²" is a digit to str.isdigit but not to int; "10:00:00.-12" parses with an offset of its own,
    once "+08:00" has been met. Both used to stop the import (ValueError, TypeError); each is a row
    rejected as invalid."""
    prep = RowPreparer(Rules(), region="CN-GD-SZ", allowed=ALLOWED, received_at=RECEIVED, factors=FACTORS)
    ok = {"event_id": "e1", "user": "card-1", "type": "ENG-CHECKIN", "started_at": local(RECEIVED, "+08:00")}
    assert prep.prepare(1, ok).status is None
    bad_user = prep.prepare(2, {**ok, "user": "", "user_id": "²"})
    assert (bad_user.status, bad_user.reason) == ("rejected", "invalid") and "user_id" in (bad_user.detail or "")
    bad_time = prep.prepare(3, {**ok, "started_at": "2026-11-28T10:00:00.-12+08:00"})
    assert (bad_time.status, bad_time.reason) == ("rejected", "invalid") and "started_at" in (bad_time.detail or "")


def test_an_import_collects_garbage_less_often_and_restores_the_thresholds() -> None:
    import gc
    import threading

    from registry import behaviour_rules

    before = gc.get_threshold()
    inside, entered, leave = [], threading.Event(), threading.Event()

    def other_import() -> None:
        with behaviour_rules.fewer_collections():
            entered.set()
            leave.wait(5)

    t = threading.Thread(target=other_import)
    with pytest.raises(RuntimeError):
        with behaviour_rules.fewer_collections():
            inside.append(gc.get_threshold())
            t.start()
            entered.wait(5)
            raise RuntimeError("a failed chunk")
    inside.append(gc.get_threshold())     # the other import still runs: still fewer collections
    leave.set()
    t.join(5)
    assert inside == [behaviour_rules._IMPORT_THRESHOLDS] * 2
    assert gc.get_threshold() == before
