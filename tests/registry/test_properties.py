"""Property tests of the registry: a stateful model of issue/transfer/retire/cancel/suspend against the
database, `carve` on arbitrary blocks, and the serial-number grammar.

The state machine gets a fresh migrated database for every hypothesis example: on SQLite a copy of
the template file, on PostgreSQL the test database truncated (TRUNCATE bypasses the row triggers that
guard final blocks and audit records).
"""

from __future__ import annotations

import itertools
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text
from sqlalchemy.orm import Session

import registry.db  # noqa: F401  (SQLite pragmas and BEGIN IMMEDIATE listeners)
from registry import audit, holders, invariants, projects, units
from registry.errors import (
    Conflict,
    InsufficientUnits,
    InvalidInput,
    NotFound,
    RegistryError,
    Suspended,
)
from registry.models import Account, Batch, Block, BlockStatus, HolderKind
from registry.serials import format_serial, parse_serial
from tests.factories import issued_batch, party, registered_project, world
from tests.freshdb import FreshDb

ON_PG = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql"))

Q = units.Selection
HOLDERS = ("A", "B", "C")          # A and B own projects; C (an individual) only receives
PROJECT_OWNERS = ("A", "A", "B")   # project index -> owning holder
YEARS = (2021, 2022, 2023, 2024)

_RETIRE = dict(beneficiary="大湾区论坛", jurisdiction="广东省深圳市", purpose="event_offset")


# --------------------------------------------------------------------------------------------------
# The model: per batch, coalesced segments (start, end, label); a label is "<holder>:<account kind>".
# --------------------------------------------------------------------------------------------------

def _coalesce(segs: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for s, e, lab in sorted(segs):
        if out and out[-1][2] == lab and out[-1][1] + 1 == s:
            out[-1] = (out[-1][0], e, lab)
        else:
            out.append((s, e, lab))
    return out


def _relabel(segs: list[tuple[int, int, str]], s: int, e: int, lab: str) -> list[tuple[int, int, str]]:
    out = []
    for a, b, old in segs:
        if b < s or a > e:
            out.append((a, b, old))
            continue
        if a < s:
            out.append((a, s - 1, old))
        if b > e:
            out.append((e + 1, b, old))
        out.append((max(a, s), min(b, e), lab))
    return _coalesce(out)


class Model:
    def __init__(self) -> None:
        self.batches: dict[int, dict] = {}  # batch id -> {project, vintage, number, qty, segs}
        self.suspended: set[int] = set()    # project indices

    def held_segments(self, holder: str, *, allow_suspended: bool) -> list[tuple[int, int, int, int]]:
        """(vintage, batch_id, start, end) of held kg of `holder`, in pick order."""
        out = []
        for bid, b in self.batches.items():
            if b["project"] in self.suspended and not allow_suspended:
                continue
            for s, e, lab in b["segs"]:
                if lab == f"{holder}:holding":
                    out.append((b["vintage"], bid, s, e))
        return sorted(out)

    def pick_quantity(self, holder: str, kg: int, *, allow_suspended: bool) -> list[tuple[int, int, int]] | None:
        picked, left = [], kg
        for _v, bid, s, e in self.held_segments(holder, allow_suspended=allow_suspended):
            take = min(left, e - s + 1)
            picked.append((bid, s, s + take - 1))
            left -= take
            if left == 0:
                return picked
        return None

    def apply(self, picked: list[tuple[int, int, int]], label: str) -> None:
        for bid, s, e in picked:
            self.batches[bid]["segs"] = _relabel(self.batches[bid]["segs"], s, e, label)

    def label_of(self, bid: int, s: int, e: int) -> set[str]:
        return {lab for a, b, lab in self.batches[bid]["segs"] if not (b < s or a > e)}

    def predict_serials(self, holder: str, ranges: list[tuple[int, int, int]], *,
                        allow_suspended: bool) -> type[RegistryError] | None:
        """The error `_pick_serials` must raise for these (batch id, start, end) ranges, or None."""
        for i, (b1, s1, e1) in enumerate(ranges):
            for b2, s2, e2 in ranges[:i]:
                if b1 == b2 and s1 <= e2 and s2 <= e1:
                    return InvalidInput
        for bid, s, e in ranges:
            b = self.batches[bid]
            if e > b["qty"]:
                return NotFound
            if self.label_of(bid, s, e) != {f"{holder}:holding"}:
                return InsufficientUnits
            if b["project"] in self.suspended and not allow_suspended:
                return Suspended
        return None

    def totals(self) -> Counter:
        c: Counter = Counter()
        for b in self.batches.values():
            for s, e, lab in b["segs"]:
                c[lab] += e - s + 1
        return c


# --------------------------------------------------------------------------------------------------
# Fresh databases
# --------------------------------------------------------------------------------------------------

def _snapshot(s: Session) -> tuple:
    blocks = s.execute(select(Block.id, Block.batch_id, Block.start, Block.end, Block.account_id,
                              Block.status).order_by(Block.id)).all()
    n_mov = s.scalar(text("SELECT COUNT(*) FROM movements"))
    n_audit = s.scalar(text("SELECT COUNT(*) FROM audit_records"))
    n_batches = s.scalar(text("SELECT COUNT(*) FROM batches"))
    return tuple(map(tuple, blocks)), n_mov, n_audit, n_batches


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.db = FreshDb()
        self.model = Model()
        self.final: dict[int, tuple] = {}
        with self.db.factory() as s:
            w = world(s)
            c = party(s, HolderKind.INDIVIDUAL, "个人")
            self.parties = {"A": w.owner, "B": w.buyer, "C": c, "OP": w.operator}
            self.w = w
            self.projects = [registered_project(s, w, owner=self.parties[o], title=f"项目{i}")
                             for i, o in enumerate(PROJECT_OWNERS)]
            self.project_ids = [p.id for p in self.projects]
            s.commit()
            self.labels: dict[int, str] = {}
            for key, p in self.parties.items():
                for acc in s.scalars(select(Account).where(Account.holder_id == p.holder.id)):
                    self.labels[acc.id] = f"{key}:{acc.kind.value}"

    def teardown(self) -> None:
        self.db.close()

    # -- running a use case in its own transaction ------------------------------------------------

    def _run(self, fn, expect: type[RegistryError] | None):  # type: ignore[no-untyped-def]
        with self.db.factory() as s:
            before = _snapshot(s)
            s.rollback()
            try:
                result = fn(s)
                s.flush()
            except RegistryError as e:
                s.rollback()
                assert expect is not None and isinstance(e, expect), (
                    f"got {type(e).__name__}: {e.message} (field {e.field}), expected {expect}")
                assert _snapshot(s) == before, "a failed use case left changes behind"
                s.rollback()
                return None
            assert expect is None, f"expected {expect.__name__}, the use case succeeded"
            s.commit()
            return result

    def _serial(self, bid: int, s: int, e: int) -> str:
        b = self.model.batches[bid]
        return format_serial(b["project_id"], b["vintage"], b["number"], s, e)

    def _draw_ranges(self, data, holder: str) -> list[tuple[int, int, int]]:  # type: ignore[no-untyped-def]
        """Mostly sub-ranges of the holder's held segments; sometimes someone else's, an overlap, or
        serials past the batch's end."""
        mine = [(bid, s, e) for _v, bid, s, e in self.model.held_segments(holder, allow_suspended=True)]
        every = [(bid, s, e) for bid, b in self.model.batches.items() for s, e, _ in b["segs"]]
        ranges: list[tuple[int, int, int]] = []
        for _ in range(data.draw(st.integers(1, 3), label="n_ranges")):
            kind = data.draw(st.sampled_from(["mine"] * 8 + ["any", "overlap", "past_end"]), label="kind")
            if kind == "overlap" and ranges:
                bid, s, e = data.draw(st.sampled_from(ranges), label="overlapped")
                ranges.append((bid, s, data.draw(st.integers(s, s + 10), label="end")))
                continue
            if kind == "past_end":
                bid = data.draw(st.sampled_from(sorted(self.model.batches)), label="batch")
                q = self.model.batches[bid]["qty"]
                ranges.append((bid, max(1, q - 5), q + data.draw(st.integers(1, 5), label="over")))
                continue
            pool = mine if (kind == "mine" and mine) else every
            bid, s, e = data.draw(st.sampled_from(pool), label="segment")
            a = data.draw(st.integers(s, e), label="start")
            b = data.draw(st.integers(a, e), label="end")
            ranges.append((bid, a, b))
        return ranges

    def _draw_kg(self, data, avail: int) -> int:  # type: ignore[no-untyped-def]
        """Usually at most what is available, sometimes more."""
        if avail and data.draw(st.integers(0, 4), label="within") > 0:
            return data.draw(st.integers(1, avail), label="kg")
        return data.draw(st.integers(avail + 1, avail + 50), label="kg")

    def _draw_holder(self, data, label: str) -> str:  # type: ignore[no-untyped-def]
        """Usually a holder with units."""
        having = [h for h in HOLDERS if self.model.held_segments(h, allow_suspended=True)]
        return data.draw(st.sampled_from(having if having and data.draw(st.integers(0, 3), label="rich") > 0
                                         else list(HOLDERS)), label=label)

    # -- rules ------------------------------------------------------------------------------------

    @initialize(kgs=st.lists(st.integers(1, 5000), min_size=1, max_size=3), year=st.sampled_from(YEARS))
    def first_issuances(self, kgs: list[int], year: int) -> None:
        for i, kg in enumerate(kgs):
            self.issue(i, kg, year)

    @rule(project=st.integers(0, len(PROJECT_OWNERS) - 1), kg=st.integers(1, 5000), year=st.sampled_from(YEARS))
    def issue(self, project: int, kg: int, year: int) -> None:
        owner = PROJECT_OWNERS[project]
        expect = Suspended if project in self.model.suspended else None
        batch = self._run(lambda s: issued_batch(s, self.w, self.projects[project], kg, year=year,
                                                 owner=self.parties[owner]), expect)
        if batch is not None:
            self.model.batches[batch.id] = dict(project=project, project_id=self.project_ids[project],
                                                vintage=batch.vintage, number=batch.number, qty=kg,
                                                segs=[(1, kg, f"{owner}:holding")])

    @rule(data=st.data())
    def transfer_quantity(self, data) -> None:  # type: ignore[no-untyped-def]
        src = self._draw_holder(data, "src")
        dst = data.draw(st.sampled_from([h for h in HOLDERS if h != src]), label="dst")
        avail = sum(e - s + 1 for *_, s, e in self.model.held_segments(src, allow_suspended=False))
        kg = self._draw_kg(data, avail)
        picked = self.model.pick_quantity(src, kg, allow_suspended=False)
        t = self._run(lambda s: units.transfer(s, self.parties[src].actor, to_account=self.parties[dst].account,
                                               selection=Q(quantity_kg=kg)),
                      None if picked else InsufficientUnits)
        if t is not None:
            assert t.quantity_kg == kg
            self.model.apply(picked, f"{dst}:holding")

    @precondition(lambda self: self.model.batches)
    @rule(data=st.data())
    def transfer_serials(self, data) -> None:  # type: ignore[no-untyped-def]
        src = self._draw_holder(data, "src")
        dst = data.draw(st.sampled_from([h for h in HOLDERS if h != src]), label="dst")
        ranges = self._draw_ranges(data, src)
        expect = self.model.predict_serials(src, ranges, allow_suspended=False)
        t = self._run(lambda s: units.transfer(
            s, self.parties[src].actor, to_account=self.parties[dst].account,
            selection=Q(serials=[self._serial(*r) for r in ranges])), expect)
        if t is not None:
            assert t.quantity_kg == sum(e - s + 1 for _, s, e in ranges)
            self.model.apply(ranges, f"{dst}:holding")

    @rule(data=st.data())
    def retire_quantity(self, data) -> None:  # type: ignore[no-untyped-def]
        who = self._draw_holder(data, "holder")
        avail = sum(e - s + 1 for *_, s, e in self.model.held_segments(who, allow_suspended=False))
        kg = self._draw_kg(data, avail)
        picked = self.model.pick_quantity(who, kg, allow_suspended=False)
        r = self._run(lambda s: units.retire(s, self.parties[who].actor, selection=Q(quantity_kg=kg), **_RETIRE),
                      None if picked else InsufficientUnits)
        if r is not None:
            assert r.quantity_kg == kg
            self.model.apply(picked, f"{who}:retirement")

    @precondition(lambda self: self.model.batches)
    @rule(data=st.data())
    def retire_serials(self, data) -> None:  # type: ignore[no-untyped-def]
        who = self._draw_holder(data, "holder")
        ranges = self._draw_ranges(data, who)
        expect = self.model.predict_serials(who, ranges, allow_suspended=False)
        r = self._run(lambda s: units.retire(s, self.parties[who].actor,
                                             selection=Q(serials=[self._serial(*x) for x in ranges]), **_RETIRE),
                      expect)
        if r is not None:
            assert r.quantity_kg == sum(e - s + 1 for _, s, e in ranges)
            self.model.apply(ranges, f"{who}:retirement")

    @rule(data=st.data())
    def cancel(self, data) -> None:  # type: ignore[no-untyped-def]
        who = self._draw_holder(data, "from")
        if self.model.batches and data.draw(st.booleans(), label="by_serials"):
            ranges = self._draw_ranges(data, who)
            expect = self.model.predict_serials(who, ranges, allow_suspended=True)
            sel = Q(serials=[self._serial(*x) for x in ranges])
            picked: list | None = ranges
        else:
            avail = sum(e - s + 1 for *_, s, e in self.model.held_segments(who, allow_suspended=True))
            kg = self._draw_kg(data, avail)
            picked = self.model.pick_quantity(who, kg, allow_suspended=True)
            expect = None if picked else InsufficientUnits
            sel = Q(quantity_kg=kg)
        c = self._run(lambda s: units.cancel(s, self.parties["OP"].actor, from_account=self.parties[who].account,
                                             selection=sel, reason="correction"), expect)
        if c is not None:
            assert picked is not None
            assert c.quantity_kg == sum(e - s + 1 for _, s, e in picked)
            self.model.apply(picked, "OP:cancellation")

    @rule(project=st.integers(0, len(PROJECT_OWNERS) - 1), redundant=st.integers(0, 3).map(lambda n: n == 0))
    def suspend_or_reinstate(self, project: int, redundant: bool) -> None:
        is_susp = project in self.model.suspended
        target = is_susp if redundant else not is_susp
        done = self._run(lambda s: projects.set_project_suspension(
            s, self.parties["OP"].actor, self.project_ids[project], target, "review"),
            Conflict if redundant else None)
        if done is not None:
            (self.model.suspended.add if target else self.model.suspended.discard)(project)

    # -- checks after every step ------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        with self.db.factory() as s:
            found = invariants.check(s, include_audit=False)
            assert not found, "\n".join(map(str, found))
            rows = s.execute(select(Block.batch_id, Block.start, Block.end, Block.account_id, Block.status,
                                    Block.id)).all()
            db_segs: dict[int, list] = {}
            held: Counter = Counter()
            for bid, a, b, acc, status, block_id in rows:
                lab = self.labels[acc]
                kind = lab.split(":")[1]
                assert status is {"holding": BlockStatus.HELD, "retirement": BlockStatus.RETIRED,
                                  "cancellation": BlockStatus.CANCELLED}[kind], (lab, status)
                db_segs.setdefault(bid, []).append((a, b, lab))
                held[lab] += b - a + 1
                if status in (BlockStatus.RETIRED, BlockStatus.CANCELLED):
                    self.final.setdefault(block_id, (block_id, a, b, acc, status))
            # per-account totals, and serial-exact agreement with the model
            assert +held == +self.model.totals()
            assert set(db_segs) == set(self.model.batches)
            for bid, b in self.model.batches.items():
                assert sum(e - s + 1 for s, e, _ in db_segs[bid]) == b["qty"]
                assert _coalesce(db_segs[bid]) == b["segs"], bid
            issued = dict(s.execute(select(Batch.id, Batch.quantity_kg)).all())
            assert issued == {bid: b["qty"] for bid, b in self.model.batches.items()}
            # final blocks never change
            now = {r[0]: tuple(r) for r in s.execute(
                select(Block.id, Block.start, Block.end, Block.account_id, Block.status)
                .where(Block.id.in_(list(self.final)) if self.final else Block.id < 0)).all()}
            assert now == self.final
            s.rollback()
            audit.seal(s)
            s.commit()
            report = audit.verify(s)
            assert report.ok and report.unsealed == 0, report.describe()
            s.rollback()


def test_registry_state_machine(template_db) -> None:  # type: ignore[no-untyped-def]
    with FreshDb.source(template_db, ON_PG):
        run_state_machine_as_test(RegistryMachine, settings=settings(
            max_examples=25 if ON_PG else 40, stateful_step_count=25, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                   HealthCheck.filter_too_much]))


# --------------------------------------------------------------------------------------------------
# carve
# --------------------------------------------------------------------------------------------------

_carve_world: dict = {}


@st.composite
def _block_and_subrange(draw):  # type: ignore[no-untyped-def]
    qty = draw(st.integers(1, 10_000))
    s = draw(st.integers(1, qty))
    e = draw(st.integers(s, qty))
    a = draw(st.integers(s, e))
    b = draw(st.integers(a, e))
    return qty, s, e, a, b


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_block_and_subrange())
def test_carve_pieces_partition_the_block(session, case) -> None:  # type: ignore[no-untyped-def]
    qty, s, e, a, b = case
    key = id(session)
    if key not in _carve_world:
        _carve_world.clear()
        w = world(session)
        _carve_world[key] = (w, registered_project(session, w))
        session.commit()
    w, p = _carve_world[key]
    nested = session.begin_nested()
    batch = issued_batch(session, w, p, qty)
    session.flush()
    whole = session.scalars(select(Block).where(Block.batch_id == batch.id)).one()
    block = units.carve(session, whole, s, e)           # the block [s, e] (and its remainders)
    assert (block.start, block.end, block.quantity) == (s, e, e - s + 1)
    session.flush()
    others_before = {(x.start, x.end) for x in session.scalars(
        select(Block).where(Block.batch_id == batch.id, Block.id != block.id))}
    piece = units.carve(session, block, a, b)
    assert piece is block and (piece.start, piece.end, piece.quantity) == (a, b, b - a + 1)
    session.flush()
    session.expire_all()
    rows = session.execute(select(Block.start, Block.end, Block.quantity, Block.status, Block.account_id)
                           .where(Block.batch_id == batch.id).order_by(Block.start)).all()
    # contiguous, disjoint, covering [1, qty]; every piece's quantity is its range's length
    assert rows[0].start == 1 and rows[-1].end == qty
    for prev, nxt in itertools.pairwise(rows):
        assert nxt.start == prev.end + 1
    for r in rows:
        assert r.quantity == r.end - r.start + 1 >= 1
        assert r.status is BlockStatus.HELD
    assert sum(r.quantity for r in rows) == qty
    # the pieces of [s, e] are exactly [s, a-1], [a, b], [b+1, e] (the empty ones left out)
    inside = [(r.start, r.end) for r in rows if s <= r.start and r.end <= e]
    assert inside == [(x, y) for x, y in ((s, a - 1), (a, b), (b + 1, e)) if x <= y]
    assert {(r.start, r.end) for r in rows} - set(inside) == others_before
    assert not invariants.check(session, include_audit=False)
    nested.rollback()


def test_quantity_pick_pages_past_one_chunk(session) -> None:  # type: ignore[no-untyped-def]
    """More held blocks than one keyset page (64): a quantity pick still takes exactly the oldest."""
    w = world(session)
    p = registered_project(session, w)
    old = issued_batch(session, w, p, 300, year=2022)
    new = issued_batch(session, w, p, 300, year=2023)
    for b in (new, old):  # 150 one-kilogram blocks per batch in the buyer's account
        for n in range(1, 301, 2):
            units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=Q(serials=[b.serial(n, n)]))
    session.commit()
    units.transfer(session, w.buyer.actor, to_account=w.owner.account, selection=Q(quantity_kg=170))
    session.commit()
    owner = holders.account_by_number(session, w.owner.account)
    got = session.execute(select(Block.batch_id, Block.start).where(
        Block.account_id == owner.id).order_by(Block.batch_id, Block.start)).all()
    owner_old = {st_ for bid, st_ in got if bid == old.id}
    owner_new = {st_ for bid, st_ in got if bid == new.id}
    assert owner_old == set(range(1, 301))                      # all of the old vintage came back
    assert {n for n in range(1, 301, 2) if n in owner_new} == set(range(1, 41, 2))  # then 20 of the new
    with pytest.raises(InsufficientUnits):
        units.transfer(session, w.buyer.actor, to_account=w.owner.account, selection=Q(quantity_kg=131))
    session.rollback()


# --------------------------------------------------------------------------------------------------
# serial numbers
# --------------------------------------------------------------------------------------------------

_ids = st.integers(0, 10**12 - 1)
_vintages = st.integers(1000, 9999)
_batches = st.integers(0, 10**9 - 1)
_pos = st.integers(1, 10**15 - 1)


@given(project=_ids, vintage=_vintages, batch=_batches, a=_pos, b=_pos,
       pad=st.sampled_from(["", " ", "\t", "\n", "  "]))
def test_serial_round_trip(project, vintage, batch, a, b, pad) -> None:  # type: ignore[no-untyped-def]
    start, end = min(a, b), max(a, b)
    rng = parse_serial(pad + format_serial(project, vintage, batch, start, end) + pad)
    assert (rng.project_id, rng.vintage, rng.batch_number, rng.start, rng.end) == (
        project, vintage, batch, start, end)
    assert rng.quantity == end - start + 1
    one = parse_serial(f"THR-{project:05d}-{vintage}-{batch}-{start}")
    assert (one.start, one.end, one.quantity) == (start, start, 1)


def _malformed() -> st.SearchStrategy[str]:
    good = st.builds(format_serial, st.integers(1, 99999), _vintages, st.integers(1, 999),
                     st.integers(1, 999), st.integers(1000, 9999))
    return st.one_of(
        st.text(max_size=40).filter(lambda t: not t.strip().startswith("THR-")),
        good.map(lambda s: s.replace("THR-", "THX-", 1)),
        good.map(lambda s: s.lower()),
        good.map(lambda s: s + "-7"),                                  # too many parts
        good.map(lambda s: s.rsplit("-", 2)[0]),                       # no start
        good.map(lambda s: s.replace("-", "--", 1)),
        good.map(lambda s: s + "x"),
        st.builds(lambda p, v, b, n: f"THR-{p:05d}-{v}-{b}-{n}", st.integers(1, 99), st.integers(0, 999),
                  st.integers(1, 9), _pos),                            # vintage not 4 digits
        st.builds(lambda p, b, n: f"THR-{p:05d}-2024-{b}-0-{n}", st.integers(1, 99), st.integers(1, 9), _pos),
        st.builds(lambda p, b, n: f"THR-{p:05d}-2024-{b}-0", st.integers(1, 99), st.integers(1, 9), _pos),
        st.builds(lambda p, a, d: f"THR-{p:05d}-2024-1-{a + d}-{a}", st.integers(1, 99), _pos,
                  st.integers(1, 10**6)),                              # end before start
        st.builds(lambda n: f"THR-00001-2024-1-1-{n}", st.integers(10**15, 10**18)),  # 16+ digits
    )


@given(bad=_malformed(), field=st.sampled_from(["serial", "serials.0", "serials.3", "from"]))
def test_malformed_serial_names_the_field(bad, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput) as e:
        parse_serial(bad, field=field)
    assert e.value.field == field
    assert e.value.code == "bad_serial"


@given(value=st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2)))
def test_non_text_serial_is_invalid_input(value) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput) as e:
        parse_serial(value, field="serials.1")
    assert e.value.field == "serials.1"


def test_batch_serial_text_is_format_serial(session) -> None:  # type: ignore[no-untyped-def]
    w = world(session)
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 50)
    session.commit()
    assert b.serial(3, 9) == format_serial(p.id, b.vintage, b.number, 3, 9)
    rng = parse_serial(b.serial(3, 9))
    assert (rng.project_id, rng.vintage, rng.batch_number, rng.start, rng.end) == (p.id, b.vintage, b.number, 3, 9)
