"""Property test: random command sequences give the same events and depth as the reference book.

The reference book (``matching_oracle.RefBook``) is deliberately naive; ``validate()`` must hold
after every command, and a snapshot taken at the end must restore to the same hash.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matching_oracle import RefBook

from matching.engine import (
    BUY,
    DAY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    STP_MODES,
)

TICK, LOT, MIN, MAX = 10, 100, 100, 1000
BAND = (900, 1100)


def mostly(
    valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any], percent_invalid: int = 8
) -> st.SearchStrategy[Any]:
    return st.integers(min_value=0, max_value=99).flatmap(lambda r: invalid if r < percent_invalid else valid)


ids = mostly(st.integers(min_value=0, max_value=12), st.just(-1), 2)
owners = st.integers(min_value=1, max_value=3)
prices = mostly(
    st.integers(min_value=90, max_value=110).map(lambda t: t * TICK),  # near the touch
    st.sampled_from([0, -10, 1005, 880, 1120]),
)
qtys = mostly(st.integers(min_value=1, max_value=10).map(lambda n: n * LOT), st.sampled_from([0, -100, 150]))

place = st.tuples(
    st.just("place"),
    ids,
    owners,
    st.sampled_from([BUY, SELL]),
    qtys,
    prices,
    st.sampled_from([LIMIT] * 8 + [MARKET]),
    st.sampled_from([None, None, GTC, GTC, DAY, GTD, IOC, FOK]),
    st.integers(min_value=0, max_value=30),
    st.sampled_from([False] * 5 + [True]),
    st.sampled_from(STP_MODES),
)
others = [
    (70, st.tuples(st.just("cancel"), ids)),
    (78, st.tuples(st.just("reduce"), ids, qtys)),
    (88, st.tuples(st.just("replace"), ids, prices, st.sampled_from([0, 0, 0, 100, 300, 1000, 150]))),
    (94, st.tuples(st.just("expire"), st.integers(min_value=-1, max_value=30))),
    (96, st.tuples(st.just("end_of_day"))),
    (
        100,
        st.tuples(
            st.just("set_band"), st.sampled_from([(900, 1100), (950, 1050), (1000, 1000), (10, 2000), (0, 5)])
        ),
    ),
]


def pick(r: int) -> st.SearchStrategy[tuple[Any, ...]]:
    if r < 55:
        return place
    return next(s for bound, s in others if r < bound)


commands = st.integers(min_value=0, max_value=99).flatmap(pick)


def apply(book: Any, cmd: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    op = cmd[0]
    if op == "place":
        _, oid, owner, side, qty, price, otype, tif, exp, post, stp = cmd
        if otype == MARKET:
            price = None
        if tif != GTD:
            exp = 0
        evs = book.place(oid, owner, side, qty, price, otype, tif, exp, post, stp)
    elif op == "cancel":
        evs = book.cancel(cmd[1])
    elif op == "reduce":
        evs = book.reduce(cmd[1], cmd[2])
    elif op == "replace":
        evs = book.replace(cmd[1], cmd[2], cmd[3])
    elif op == "expire":
        evs = book.expire(cmd[1])
    elif op == "end_of_day":
        evs = book.end_of_day()
    else:
        evs = book.set_band(*cmd[1])
    return [e if isinstance(e, tuple) else e.as_tuple() for e in evs]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(cmds=st.lists(commands, min_size=5, max_size=120))
def test_engine_matches_oracle(eng: ModuleType, cmds: list[tuple[Any, ...]]) -> None:
    book = eng.OrderBook(eng.InstrumentSpec(TICK, LOT, MIN, MAX), BAND)
    ref = RefBook(TICK, LOT, MIN, MAX, BAND)
    for cmd in cmds:
        got = apply(book, cmd)
        want = apply(ref, cmd)
        assert got == want, cmd
        assert book.validate() == [], cmd
        assert book.depth(50) == ref.depth(50), cmd
    # every accepted order is resting or ended by exactly one terminal event
    snap = book.to_snapshot()
    restored = eng.OrderBook.from_snapshot(json.loads(json.dumps(snap)))
    assert restored.state_hash() == book.state_hash()
    assert restored.validate() == []
    # replay from empty gives the same events and hash
    again = eng.OrderBook(eng.InstrumentSpec(TICK, LOT, MIN, MAX), BAND)
    ref2 = RefBook(TICK, LOT, MIN, MAX, BAND)
    for cmd in cmds:
        assert apply(again, cmd) == apply(ref2, cmd)
    assert again.state_hash() == book.state_hash()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmds=st.lists(commands, min_size=5, max_size=80))
def test_terminal_events_are_unique(eng: ModuleType, cmds: list[tuple[Any, ...]]) -> None:
    """An order ends at most once; while resting it has no terminal event."""
    book = eng.OrderBook(eng.InstrumentSpec(TICK, LOT, MIN, MAX), BAND)
    live: set[int] = set()
    for cmd in cmds:
        for k, oid, reason in [(e[1], e[2], e[8]) for e in apply(book, cmd)]:
            if k == "accepted":
                assert oid not in live
                live.add(oid)
            elif k in ("done", "cancelled", "expired"):
                assert oid in live, (k, oid, reason)
                live.discard(oid)
        assert all(book.order(o) is not None for o in live) and len(book) == len(live)
