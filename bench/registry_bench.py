"""Registry benchmark: retirement and transfer latency with 1,000 and with 1,000,000 blocks.

    .venv/bin/python bench/registry_bench.py --database-url postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python bench/registry_bench.py --database-url sqlite:// --blocks 5000 --small 500 --ops 20

The requirement: transfer and retirement must not slow down as the registry grows; with 1,000,000
blocks in the database the p99 latency of a retirement stays within 2x of the same operation with
1,000 blocks, on PostgreSQL.

What it does, for each size (`--small`, `--blocks`), in a database of its own (PostgreSQL:
`CREATE DATABASE tanhui_bench_<pid>_<size>` on the server of `--database-url`, dropped at the end
unless `--keep`; SQLite: a file in a temporary directory), migrated by the Alembic migrations
exactly as tests/conftest.py does:

1. A world through the use cases: operator, verifier, a project owner, the timed buyer, its
   counterparty, a large custody holder ("whale"); four registered projects and eight issued batches;
   then `2 * T` use-case transfers from the owner, alternately to the buyer and to the whale, so the
   buyer holds T blocks (T = 30% of `--small`, the same in both databases) interleaved in serial order
   with someone else's, across 8 batches, 4 projects and 4 vintages.
2. The bulk, in SQL (PostgreSQL `generate_series`, SQLite a recursive CTE), up to exactly the target
   number of blocks: batches of 100 blocks, 10 batches (vintages) per project, one monitoring report
   per batch; holders with holding and retirement accounts; per batch, lot 0 (two blocks) stays with
   the project owner, every further lot of two blocks is transferred (a transfer row and a movement)
   to another holder (one lot in ten to the whale); every block with piece % 4 == 1 was then retired
   by its holder (a retirement row, a movement, the block in the retirement account). So ~25% of the
   blocks are retired and the rest are held by ~n/50 accounts. Every invariant holds: the blocks of a
   batch partition [1, quantity_kg]; quantity = end - start + 1; project and vintage agree with the
   batch; each retirement adds up to its blocks, which are in its retirement account; no movement
   touches a retired range after its retirement.
3. `registry.invariants.check(include_audit=False)`, then ANALYZE.

Timed: `registry.units.retire` of q kg from the buyer's holding account, and `registry.units.transfer`
of q kg from the buyer to its counterparty, each in its own transaction (`with session.begin()`),
`time.perf_counter` around the whole transaction including the commit. After each timed transfer the
counterparty sends the same kilograms back (untimed), so the buyer's account keeps its shape. The
quantities come from one seeded sequence, the same for both sizes: 80% between 200 and 3,000 kg,
20% between 3,000 and 25,000 kg, against buyer blocks of 2,000-20,000 kg, so an operation carves one
block and sometimes takes a few. The two databases are measured interleaved (one operation on each,
in alternating order), so background load on the machine hits both alike. `--warmup` operations
(untimed) run first on each.

Why the timed account has the same T blocks at both sizes: the requirement is about the registry
growing, not one account growing; the per-operation work (blocks picked, carved, moved) is the same,
only the tables and their indexes are 1000x larger.

The last line is ``BENCH registry p99_ms_1k=<ms> p99_ms_1m=<ms> ratio=<p99_ms_1m/p99_ms_1k>`` (the
retirement p99), preceded by an informational ``BENCH registry-transfer ...`` line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Runnable as `python bench/registry_bench.py` from the repository root as well as imported.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from sqlalchemy import create_engine, event, func, select, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from registry import holders, invariants, issuance, methodologies, projects, units  # noqa: E402
from registry.actors import Actor  # noqa: E402
from registry.db import normalise_url, utcnow  # noqa: E402
from registry.models import Block, HolderKind, User  # noqa: E402

SEED = 20261123
PIECES_PER_BATCH = 100     # bulk batches are split into this many blocks
BATCHES_PER_PROJECT = 10   # one per vintage
SETUP_BATCHES = 8          # use-case batches the timed account's blocks come from


# --------------------------------------------------------------------------------------- databases

def is_pg(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql"))


def migrate(url: str) -> None:
    """As tests/conftest.py: flask_migrate.upgrade inside web.create_app(config)."""
    from flask_migrate import upgrade

    from web import create_app
    from web.config import TestConfig
    from web.extensions import db

    cfg = {k: getattr(TestConfig, k) for k in dir(TestConfig) if k.isupper()} | {
        "SQLALCHEMY_DATABASE_URI": url}
    app = create_app(cfg)
    with app.app_context():
        upgrade()
        db.engine.dispose()


class Databases:
    """Creates one fresh database per size and removes them all at the end (unless keep)."""

    def __init__(self, url: str, keep: bool) -> None:
        self.url = url
        self.keep = keep
        self.pg = is_pg(url)
        self.created: list[str] = []
        self.tmpdir: str | None = None

    def create(self, tag: str) -> str:
        if self.pg:
            name = f"tanhui_bench_{os.getpid()}_{tag}"
            admin = create_engine(make_url(normalise_url(self.url)).set(database="postgres"),
                                  isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
                c.execute(text(f'CREATE DATABASE "{name}"'))
            admin.dispose()
            self.created.append(name)
            return make_url(normalise_url(self.url)).set(database=name).render_as_string(hide_password=False)
        if self.tmpdir is None:
            self.tmpdir = tempfile.mkdtemp(prefix="tanhui_bench_")
        path = os.path.join(self.tmpdir, f"{tag}.sqlite3")
        self.created.append(path)
        return f"sqlite:///{path}"

    def drop_all(self) -> None:
        if self.keep:
            for name in self.created:
                print(f"# kept database {name}")
            return
        if self.pg:
            admin = create_engine(make_url(normalise_url(self.url)).set(database="postgres"),
                                  isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                for name in self.created:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        elif self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


# ------------------------------------------------------------------------------------- the world

@dataclass
class Party:
    holder_id: int
    actor: Actor
    account: str          # holding account number
    holding_id: int
    retirement_id: int


def _party(s: Session, kind: HolderKind, name: str) -> Party:
    h = holders.create_holder(s, None, kind=kind, name=name)
    u = holders.create_user(s, holder_id=h.id, email=f"{kind.value}-{h.id}@bench.example", name=name,
                            role="admin")
    s.flush()
    hold = holders.account_of(s, h.id)
    ret = holders.account_of(s, h.id, holders.AccountKind.RETIREMENT)
    return Party(h.id, Actor.of(s.get(User, u.id)), hold.number, hold.id, ret.id)  # type: ignore[arg-type]


@dataclass
class World:
    operator: Party
    verifier: Party
    owner: Party
    buyer: Party
    counterparty: Party
    whale: Party
    methodology_id: int


@dataclass
class Plan:
    """Everything random, drawn once from the seed: the same for both sizes."""

    timed_blocks: int
    setup_sizes: list[int]        # kg of each setup transfer (owner -> buyer / whale, alternately)
    retire_q: list[int]           # kg of each retirement (warmup first)
    transfer_q: list[int]         # kg of each transfer

    @classmethod
    def make(cls, small: int, ops: int, warmup: int) -> Plan:
        rng = random.Random(SEED)
        t = max(10, small * 3 // 10)

        def q() -> int:
            return rng.randint(200, 3000) if rng.random() < 0.8 else rng.randint(3000, 25000)

        n = ops + warmup
        retire_q = [q() for _ in range(n)]
        transfer_q = [q() for _ in range(n)]
        sizes = [rng.randint(2000, 20000) for _ in range(2 * t)]
        # The buyer must hold what it retires (with a margin); scale its blocks up if not.
        need = sum(retire_q) * 1.3 + max(transfer_q)
        have = sum(sizes[0::2])
        if have < need:
            f = need / have
            sizes = [math.ceil(x * f) for x in sizes]
        return cls(t, sizes, retire_q, transfer_q)


def build_world(factory: sessionmaker[Session], plan: Plan) -> World:
    with factory() as s, s.begin():
        w = World(operator=_party(s, HolderKind.OPERATOR, "运营方"),
                  verifier=_party(s, HolderKind.VERIFIER, "核查机构"),
                  owner=_party(s, HolderKind.ENTERPRISE, "光伏企业"),
                  buyer=_party(s, HolderKind.EVENT_ORGANISER, "会务方"),
                  counterparty=_party(s, HolderKind.INDIVIDUAL, "个人"),
                  whale=_party(s, HolderKind.ENTERPRISE, "托管账户"),
                  methodology_id=methodologies.create_methodology(
                      s, None, code="CI-PV", version="1.0", title_zh="分布式光伏", title_en="Rooftop PV",
                      sector="energy", activity_unit="MWh").id)
        total = sum(plan.setup_sizes)
        per_batch = math.ceil(total * 1.05 / SETUP_BATCHES)
        for n in range(SETUP_BATCHES // 2):
            p = projects.create_project(s, w.owner.actor, title=f"屋顶光伏 {n}", methodology_id=w.methodology_id,
                                        province="广东省", city="深圳市", district="南山区")
            projects.submit_project(s, w.owner.actor, p.id)
            projects.validate_project(s, w.verifier.actor, p.id)
            projects.register_project(s, w.operator.actor, p.id)
            for year in (2022 + n, 2023 + n if n < 2 else 2021 + n - 2):
                day = dt.date(year, 3, 1)
                r = projects.submit_report(s, w.owner.actor, p.id, period_start=day,
                                           period_end=day + dt.timedelta(days=27), claimed_kg=per_batch)
                projects.verify_report(s, w.verifier.actor, r.id, approved_kg=per_batch)
                issuance.issue(s, w.operator.actor, r.id)
    # The timed account: T blocks, carved by real transfers, interleaved with the whale's.
    chunk = 100
    for i0 in range(0, len(plan.setup_sizes), chunk):
        with factory() as s, s.begin():
            for i in range(i0, min(i0 + chunk, len(plan.setup_sizes))):
                to = w.buyer if i % 2 == 0 else w.whale
                units.transfer(s, w.owner.actor, to_account=to.account,
                               selection=units.Selection(quantity_kg=plan.setup_sizes[i]), memo="bench setup")
    return w


# -------------------------------------------------------------------------------------- the bulk

class Sql:
    """The few expressions that differ between PostgreSQL and SQLite."""

    def __init__(self, pg: bool) -> None:
        self.pg = pg

    def series(self) -> str:
        # CTE g(i) = 0 .. :n - 1
        if self.pg:
            return "g(i) AS (SELECT generate_series(0, CAST(:n AS bigint) - 1))"
        return "g(i) AS (SELECT 0 WHERE :n > 0 UNION ALL SELECT i + 1 FROM g WHERE i + 1 < :n)"

    def with_(self) -> str:
        return "WITH " if self.pg else "WITH RECURSIVE "

    def pad6(self, e: str) -> str:
        return f"lpad(CAST({e} AS text), 6, '0')" if self.pg else f"printf('%06d', {e})"

    def date(self, year: str, mmdd: str) -> str:
        m, d = mmdd.split("-")
        return f"make_date(CAST({year} AS int), {int(m)}, {int(d)})" if self.pg else \
            f"printf('%04d-{mmdd}', {year})"

    def text(self, e: str) -> str:
        return f"CAST({e} AS text)" if self.pg else f"CAST({e} AS TEXT)"


def _max_id(s: Session, table: str) -> int:
    return int(s.execute(text(f"SELECT COALESCE(MAX(id), 0) FROM {table}")).scalar_one())


def bulk_fill(factory: sessionmaker[Session], w: World, n_fill: int, pg: bool) -> dict[str, int]:
    """Add exactly `n_fill` blocks (and their batches, projects, holders, transfers, retirements,
    movements) in a few INSERT ... SELECT statements. Returns row counts."""
    if n_fill <= 0:
        return {}
    q = Sql(pg)
    k = PIECES_PER_BATCH
    nb = math.ceil(n_fill / k)
    nproj = math.ceil(nb / BATCHES_PER_PROJECT)
    nh = max(4, n_fill // 50)
    now = utcnow()
    with factory() as s, s.begin():
        base = {t: _max_id(s, t) for t in ("holders", "accounts", "projects", "monitoring_reports",
                                           "batches", "retirements", "transfers")}
        wh_hold, wh_ret = w.whale.holding_id, w.whale.retirement_id
        p: dict[str, Any] = dict(
            k=k, nh=nh, hb=base["holders"], ab=base["accounts"], pb=base["projects"],
            rpb=base["monitoring_reports"], bb=base["batches"], rtb=base["retirements"],
            tb=base["transfers"], wh=w.whale.holder_id, wha=wh_hold, wra=wh_ret, now=now, f=False,
            meth=w.methodology_id, ver=w.verifier.holder_id, opu=w.operator.actor.user_id,
            nfill=n_fill, bpp=BATCHES_PER_PROJECT)
        W = q.with_()
        G = q.series()

        def run(sql: str, n: int) -> int:
            t0 = time.perf_counter()
            res = s.execute(text(sql), p | {"n": n})
            table = sql.split("INSERT INTO ")[1].split()[0]
            timings[table] = timings.get(table, 0.0) + time.perf_counter() - t0
            return int(res.rowcount or 0)

        counts: dict[str, int] = {}
        timings: dict[str, float] = {}
        # Holders x in [0, nh): holder hb+1+x, holding account ab+1+2x, retirement account ab+2+2x.
        counts["holders"] = run(f"""{W}{G}
            INSERT INTO holders (id, kind, name, suspended, created_at, city, province)
            SELECT :hb + 1 + i, CASE WHEN i % 3 = 0 THEN 'enterprise' WHEN i % 3 = 1 THEN 'individual'
                                     ELSE 'agency' END,
                   'bench holder ' || {q.text('i')}, :f, :now, '深圳市', '广东省' FROM g""", nh)
        counts["accounts"] = run(f"""{W}{G}
            INSERT INTO accounts (id, number, holder_id, kind, created_at)
            SELECT :ab + 1 + i, CASE WHEN i % 2 = 0 THEN 'TH-H-' ELSE 'TH-R-' END
                                || {q.pad6(':hb + 1 + i / 2')},
                   :hb + 1 + i / 2, CASE WHEN i % 2 = 0 THEN 'holding' ELSE 'retirement' END, :now
            FROM g""", 2 * nh)
        # Projects: project j is owned by pool holder j % nh.
        counts["projects"] = run(f"""{W}{G}
            INSERT INTO projects (id, kind, title, methodology_id, owner_id, province, city, documents,
                                  status, validated_by_id, suspended, created_at, updated_at)
            SELECT :pb + 1 + i, 'project', 'bench project ' || {q.text('i')}, :meth, :hb + 1 + i % :nh,
                   '广东省', '深圳市', '[]', 'registered', :ver, :f, :now, :now FROM g""", nproj)
        # Batch b: project b / bpp, number b % bpp + 1, vintage 2015 + number, pieces np of s kg.
        batch_cols = """i AS b, :pb + 1 + i / :bpp AS proj, i % :bpp + 1 AS num, 2016 + i % :bpp AS vin,
                         (CASE WHEN (i + 1) * :k <= :nfill THEN :k ELSE :nfill - i * :k END)
                         * (100 + ((i * 37) % 50) * 20) AS qty"""
        counts["monitoring_reports"] = run(f"""{W}{G}, x AS (SELECT {batch_cols} FROM g)
            INSERT INTO monitoring_reports (id, project_id, period_start, period_end, claimed_kg, approved_kg,
                                            status, documents, verifier_id, submitted_at, verified_at)
            SELECT :rpb + 1 + b, proj, {q.date('vin', '01-01')}, {q.date('vin', '12-31')}, qty, qty,
                   'issued', '[]', :ver, :now, :now FROM x""", nb)
        counts["batches"] = run(f"""{W}{G}, x AS (SELECT {batch_cols} FROM g)
            INSERT INTO batches (id, project_id, number, report_id, methodology_id, vintage, quantity_kg,
                                 issued_at, issued_by_id)
            SELECT :bb + 1 + b, proj, num, :rpb + 1 + b, :meth, vin, qty, :now, :opu FROM x""", nb)
        # Block i: batch b = i / k, piece pc = i % k, lot j = pc / 2, s kg a piece.
        # Lot 0 stays with the owner; lot j >= 1 goes to the whale if (b + j) % 10 = 0, else to pool
        # holder d. Piece pc % 4 = 1 is retired by its holder.
        blk = """
            x AS (SELECT i, i / :k AS b, i % :k AS pc, (i % :k) / 2 AS j FROM g),
            y AS (SELECT i, b, pc, j, 100 + ((b * 37) % 50) * 20 AS s,
                         CASE WHEN (b + 1) * :k <= :nfill THEN :k ELSE :nfill - b * :k END AS np,
                         (b / :bpp) % :nh AS o,
                         CASE WHEN j = 0 THEN 0 WHEN (b + j) % 10 = 0 THEN 1 ELSE 2 END AS who,
                         ((b / :bpp) % :nh + 1 + ((b * 31 + j * 7919) % (:nh - 1))) % :nh AS d
                  FROM x),
            z AS (SELECT y.*, :bb + 1 + b AS batch, :pb + 1 + b / :bpp AS proj, 2016 + b % :bpp AS vin,
                         :ab + 1 + 2 * o AS oacc,
                         CASE who WHEN 0 THEN :hb + 1 + o WHEN 1 THEN :wh ELSE :hb + 1 + d END AS hid,
                         CASE who WHEN 0 THEN :ab + 1 + 2 * o WHEN 1 THEN :wha ELSE :ab + 1 + 2 * d END AS hacc,
                         CASE who WHEN 0 THEN :ab + 2 + 2 * o WHEN 1 THEN :wra ELSE :ab + 2 + 2 * d END AS racc
                  FROM y)"""
        counts["transfers"] = run(f"""{W}{G},{blk}
            INSERT INTO transfers (id, from_account_id, to_account_id, quantity_kg, memo, created_at)
            SELECT :tb + 1 + i / 2, oacc, hacc,
                   (CASE WHEN pc + 2 <= np THEN 2 ELSE np - pc END) * s, 'bench', :now
            FROM z WHERE pc % 2 = 0 AND j >= 1""", n_fill)
        counts["retirements"] = run(f"""{W}{G},{blk}
            INSERT INTO retirements (id, certificate_number, holder_id, account_id, quantity_kg, beneficiary,
                                     jurisdiction, purpose, retired_at)
            SELECT :rtb + 1 + i / 4, 'THC-BENCH-' || {q.text('i')}, hid, racc, s, 'bench beneficiary',
                   '深圳市', 'personal', :now
            FROM z WHERE pc % 4 = 1""", n_fill)
        counts["blocks"] = run(f"""{W}{G},{blk}
            INSERT INTO blocks (batch_id, project_id, vintage, start, "end", quantity, account_id, status,
                                retirement_id, updated_at)
            SELECT batch, proj, vin, pc * s + 1, (pc + 1) * s, s,
                   CASE WHEN pc % 4 = 1 THEN racc ELSE hacc END,
                   CASE WHEN pc % 4 = 1 THEN 'retired' ELSE 'held' END,
                   CASE WHEN pc % 4 = 1 THEN :rtb + 1 + i / 4 END, :now
            FROM z""", n_fill)
        # Movements in history order: issuance, then the transfers, then the retirements.
        m = 0
        m += run(f"""{W}{G}, x AS (SELECT {batch_cols} FROM g)
            INSERT INTO movements (kind, batch_id, start, "end", to_account_id, at)
            SELECT 'issuance', :bb + 1 + b, 1, qty, :ab + 1 + 2 * ((b / :bpp) % :nh), :now FROM x""", nb)
        m += run(f"""{W}{G},{blk}
            INSERT INTO movements (kind, batch_id, start, "end", from_account_id, to_account_id, transfer_id, at)
            SELECT 'transfer', batch, pc * s + 1, (CASE WHEN pc + 2 <= np THEN pc + 2 ELSE np END) * s,
                   oacc, hacc, :tb + 1 + i / 2, :now
            FROM z WHERE pc % 2 = 0 AND j >= 1""", n_fill)
        m += run(f"""{W}{G},{blk}
            INSERT INTO movements (kind, batch_id, start, "end", from_account_id, to_account_id, retirement_id, at)
            SELECT 'retirement', batch, pc * s + 1, (pc + 1) * s, hacc, racc, :rtb + 1 + i / 4, :now
            FROM z WHERE pc % 4 = 1""", n_fill)
        counts["movements"] = m
        if pg:
            for t in ("holders", "accounts", "projects", "monitoring_reports", "batches", "retirements",
                      "transfers"):
                s.execute(text(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), "
                               f"(SELECT MAX(id) FROM {t}))"))
    print("# bulk inserts (s, foreign keys checked): "
          + ", ".join(f"{t} {v:.1f}" for t, v in timings.items() if v >= 0.05), flush=True)
    return counts


def analyze(engine: Engine) -> None:
    with engine.connect() as c:
        c = c.execution_options(isolation_level="AUTOCOMMIT")
        c.execute(text("ANALYZE"))


def block_count(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(Block)) or 0)


# ------------------------------------------------------------------------------------- profiling

@dataclass
class Profile:
    """Per SQL statement (text), total seconds and count, while `on`."""

    on: bool = False
    totals: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0]))

    def attach(self, engine: Engine) -> None:
        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            conn.info["bench_t0"] = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            if self.on:
                t = self.totals[" ".join(statement.split())]
                t[0] += time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())
                t[1] += 1


# ----------------------------------------------------------------------------------- the timed run

@dataclass
class Size:
    tag: str
    target: int
    url: str = ""
    engine: Engine | None = None
    factory: sessionmaker[Session] | None = None
    world: World | None = None
    blocks_at_start: int = 0
    build_s: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    retire_ms: list[float] = field(default_factory=list)
    transfer_ms: list[float] = field(default_factory=list)
    profile: Profile = field(default_factory=Profile)


def setup_size(dbs: Databases, size: Size, plan: Plan, check: bool) -> None:
    t0 = time.perf_counter()
    size.url = dbs.create(size.tag)
    migrate(normalise_url(size.url))
    size.engine = create_engine(normalise_url(size.url))
    size.profile.attach(size.engine)
    size.factory = sessionmaker(bind=size.engine, expire_on_commit=False)
    size.build_s["migrate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    size.world = build_world(size.factory, plan)
    size.build_s["use cases"] = time.perf_counter() - t0
    have = block_count(size.factory)
    if have > size.target:
        raise SystemExit(f"--small/--blocks {size.target} is below the {have} blocks of the world "
                         f"(timed account {plan.timed_blocks} blocks); use a larger size")
    t0 = time.perf_counter()
    size.counts = bulk_fill(size.factory, size.world, size.target - have, is_pg(dbs.url))
    size.build_s["bulk"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    analyze(size.engine)
    size.build_s["analyze"] = time.perf_counter() - t0
    if check:
        t0 = time.perf_counter()
        with size.factory() as s, s.begin():
            size.violations = [str(v) for v in invariants.check(s, include_audit=False)]
        size.build_s["invariants"] = time.perf_counter() - t0
        if size.violations:
            raise SystemExit(f"{size.tag}: the built registry breaks invariants:\n" + "\n".join(size.violations))
    size.blocks_at_start = block_count(size.factory)
    print(f"# {size.tag}: {size.blocks_at_start:,} blocks; built in "
          + ", ".join(f"{k} {v:.1f} s" for k, v in size.build_s.items()), flush=True)


def one_round(size: Size, plan: Plan, i: int, record: bool) -> None:
    assert size.factory is not None and size.world is not None
    w, f = size.world, size.factory
    gc.collect(0)
    size.profile.on = record
    t0 = time.perf_counter()
    with f() as s, s.begin():
        units.retire(s, w.buyer.actor, selection=units.Selection(quantity_kg=plan.retire_q[i]),
                     beneficiary="2026 深圳马拉松", jurisdiction="深圳市", purpose="personal")
    t1 = time.perf_counter()
    with f() as s, s.begin():
        units.transfer(s, w.buyer.actor, to_account=w.counterparty.account,
                       selection=units.Selection(quantity_kg=plan.transfer_q[i]), memo="bench")
    t2 = time.perf_counter()
    size.profile.on = False
    with f() as s, s.begin():  # untimed: the counterparty sends the same kilograms back
        units.transfer(s, w.counterparty.actor, to_account=w.buyer.account,
                       selection=units.Selection(quantity_kg=plan.transfer_q[i]), memo="bench return")
    if record:
        size.retire_ms.append((t1 - t0) * 1000)
        size.transfer_ms.append((t2 - t1) * 1000)


def pct(xs: Sequence[float], p: float) -> float:
    ys = sorted(xs)
    return ys[max(0, math.ceil(p / 100 * len(ys)) - 1)]


def explain_pick(size: Size) -> str:
    """EXPLAIN ANALYZE of the first pick chunk of the buyer's account, as units._pick_quantity
    issues it (PostgreSQL only), rolled back."""
    assert size.engine is not None and size.world is not None
    captured: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if "FROM blocks" in statement and "FOR UPDATE" in statement and not captured:
            captured.append((statement, params))

    event.listen(size.engine, "before_cursor_execute", grab)
    try:
        with size.engine.connect() as conn:
            tx = conn.begin()
            s = Session(bind=conn)
            units.retire(s, size.world.buyer.actor, selection=units.Selection(quantity_kg=500),
                         beneficiary="explain", jurisdiction="深圳市", purpose="personal")
            s.flush()
            tx.rollback()
    finally:
        event.remove(size.engine, "before_cursor_execute", grab)
    if not captured:
        return "(no pick statement captured)"
    stmt, params = captured[0]
    raw = size.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + stmt, params)
        plan = "\n".join(r[0] for r in cur.fetchall())
        raw.rollback()
    finally:
        raw.close()
    return " ".join(stmt.split()) + "\n" + plan


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""),
                    help="PostgreSQL server to create the bench databases on (default $DATABASE_URL); "
                         "sqlite:// for temporary SQLite files")
    ap.add_argument("--blocks", type=int, default=1_000_000, help="blocks in the large registry")
    ap.add_argument("--small", type=int, default=1_000, help="blocks in the small registry")
    ap.add_argument("--ops", type=int, default=500, help="timed retirements (and transfers) per size")
    ap.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default ops/10, >= 5)")
    ap.add_argument("--keep", action="store_true", help="keep the databases")
    ap.add_argument("--no-check", action="store_true", help="skip registry.invariants.check after building")
    ap.add_argument("--profile", action="store_true", help="time every SQL statement of the timed operations")
    ap.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the pick query (PostgreSQL)")
    args = ap.parse_args(argv)
    url = args.database_url or "sqlite://"
    if not (is_pg(url) or url.startswith("sqlite")):
        ap.error("--database-url must be PostgreSQL or sqlite")
    warmup = args.warmup if args.warmup is not None else max(5, args.ops // 10)
    plan = Plan.make(args.small, args.ops, warmup)
    started = time.perf_counter()
    print(f"# registry bench: sizes {args.small:,} and {args.blocks:,} blocks; {args.ops} timed retirements "
          f"and transfers per size after {warmup} warm-up rounds; timed account {plan.timed_blocks} blocks")
    print(f"# python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; "
          f"database {'PostgreSQL' if is_pg(url) else 'SQLite'}", flush=True)
    dbs = Databases(url, args.keep)
    sizes = [Size("small", args.small), Size("large", args.blocks)]
    try:
        for size in sizes:
            setup_size(dbs, size, plan, check=not args.no_check)
        if is_pg(url):
            with sizes[0].engine.connect() as c:  # type: ignore[union-attr]
                print("# " + str(c.execute(text("SELECT version()")).scalar()).split(" on ")[0])
        t0 = time.perf_counter()
        for i in range(warmup + args.ops):
            for size in (sizes if i % 2 == 0 else sizes[::-1]):
                one_round(size, plan, i, record=i >= warmup)
        timed_s = time.perf_counter() - t0
        for size in sizes:
            assert size.factory is not None
            size.counts["blocks_at_end"] = block_count(size.factory)
        # The operations must have kept the registry consistent (cheap on the small one).
        if not args.no_check:
            small = sizes[0]
            with small.factory() as s, s.begin():  # type: ignore[union-attr]
                bad = [str(v) for v in invariants.check(s, include_audit=False)]
            if bad:
                raise SystemExit("invariants broken by the timed operations:\n" + "\n".join(bad))
        if args.explain and is_pg(url):
            for size in sizes:
                print(f"# EXPLAIN ANALYZE, pick query, {size.tag} ({size.blocks_at_start:,} blocks):")
                for line in explain_pick(size).splitlines():
                    print("#   " + line)
    finally:
        for size in sizes:
            if size.engine is not None:
                size.engine.dispose()
        dbs.drop_all()

    print(f"# timed phase {timed_s:.1f} s; total {time.perf_counter() - started:.1f} s")
    print("| registry blocks | operation | n | p50 ms | p99 ms | max ms |")
    print("|---:|---|---:|---:|---:|---:|")
    res: dict[str, Any] = {}
    for size in sizes:
        for name, xs in (("retire", size.retire_ms), ("transfer", size.transfer_ms)):
            r = {"n": len(xs), "p50": pct(xs, 50), "p99": pct(xs, 99), "max": max(xs)}
            res[f"{name}_{size.tag}"] = r
            print(f"| {size.blocks_at_start:,} | {name} | {r['n']} | {r['p50']:.2f} | {r['p99']:.2f} | "
                  f"{r['max']:.2f} |")
    if args.profile:
        for size in sizes:
            print(f"# SQL per timed round (retire + transfer), {size.tag}: mean ms per round, statement")
            rounds = max(1, len(size.retire_ms))
            top = sorted(size.profile.totals.items(), key=lambda kv: -kv[1][0])[:12]
            for stmt, (tot, n) in top:
                print(f"#   {tot * 1000 / rounds:7.3f} ms  x{n / rounds:5.1f}  {stmt[:150]}")
    r1, r2 = res["retire_small"]["p99"], res["retire_large"]["p99"]
    t1, t2 = res["transfer_small"]["p99"], res["transfer_large"]["p99"]
    res["ratio"] = r2 / r1
    res["transfer_ratio"] = t2 / t1
    res["blocks"] = [s.blocks_at_start for s in sizes]
    print(f"BENCH registry-transfer p99_ms_1k={t1:.2f} p99_ms_1m={t2:.2f} ratio={t2 / t1:.2f}")
    print(f"BENCH registry p99_ms_1k={r1:.2f} p99_ms_1m={r2:.2f} ratio={r2 / r1:.2f}", flush=True)
    return res


if __name__ == "__main__":
    main()
