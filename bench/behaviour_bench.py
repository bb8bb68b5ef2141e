"""Behaviour import benchmark: a generated CSV of behaviour rows imported end to end.

    .venv/bin/python bench/behaviour_bench.py --database-url postgresql://postgres@127.0.0.1/<db>
    .venv/bin/python bench/behaviour_bench.py --database-url sqlite:// --rows 20000 --members 2000

The requirement: on PostgreSQL, import a file of 1,000,000 behaviour rows (mixed types, 1% duplicates,
1% invalid) at 50,000 rows/s or more end to end (validated, computed, stored, points credited), with
peak memory under 500 MB, and print the ratio to a bare COPY of the same file into an unindexed table.

What it does:

1. The database: `--database-url` is migrated (Alembic, as tests/conftest.py does) and then EMPTIED
   (every table truncated, as the tests do: give it a database of its own); `sqlite://` means a
   fresh SQLite file in a temporary directory.
2. A world through the use cases: an operator, a Shenzhen programme, the partner `bench-city`
   (CI-TRANSIT, CI-BIKE, CI-WASTE, ENG-CHECKIN, ENG-QUIZ); the shipped emission factors synced. Then
   `--members` residents in bulk (users of one holder, programme members, the partner's external ids
   `r<i>`, points accounts), not timed.
3. The file, streamed to disk (seeded): rows spread over the 7 days before the receipt time, 45%
   transit (bus or metro, 1-30 km at a plausible speed), 30% shared bikes (0.5-8 km), 10% waste
   drop-offs (recyclables, 0.5-10 kg), 10% check-ins, 5% quizzes; times with a +08:00 offset;
   distances to 0.01 km. 1% of the rows repeat an earlier row's event id (duplicates) and 1% are
   invalid (in turn: an unknown user, an implausible speed, a distance that is not a number, a time
   outside the claim window).
4. Timed, the baseline: `COPY bench_copy FROM STDIN (FORMAT csv, HEADER)` of the same file into a
   fresh table of text columns with no index or key (SQLite: executemany of the csv module's rows).
5. Timed, the import: `registry.behaviour_io.import_csv` — the function behind
   `flask registry import-behaviour` — with `--chunk-size` rows per transaction.
6. Not timed: the outcome counts against what was generated, `registry.behaviour.check_ledger`.

Peak memory is the process's peak resident set size (`getrusage` ru_maxrss) at the end: the whole
run, generation and baseline included, so an upper bound for the import.
The last line: ``BENCH behaviour rows_per_s=<import rows/s> peak_mb=<MB> vs_copy=<import rows/s ÷
COPY rows/s>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import registry.db  # noqa: F401  (SQLite pragmas)
from registry import behaviour, behaviour_prepare, factors, holders, methodologies, partners, projects
from registry.actors import Actor
from registry.behaviour_io import CSV_COLUMNS, import_csv
from registry.db import normalise_url, utcnow
from registry.models import HolderKind, User

PARTNER = "bench-city"
TYPES = ["CI-TRANSIT", "CI-BIKE", "CI-WASTE", "ENG-CHECKIN", "ENG-QUIZ"]


def is_pg(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql"))


def migrate_and_empty(url: str) -> None:
    from flask_migrate import upgrade

    from web import create_app
    from web.config import TestConfig
    from web.extensions import db

    cfg = {k: getattr(TestConfig, k) for k in dir(TestConfig) if k.isupper()} | {"SQLALCHEMY_DATABASE_URI": url}
    app = create_app(cfg)
    with app.app_context():
        upgrade()
        db.engine.dispose()
    if is_pg(url):
        engine = create_engine(url)
        with engine.begin() as c:
            tables = [r[0] for r in c.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"))]
            c.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
        engine.dispose()


def build_world(factory: sessionmaker[Session], members: int) -> int:
    """Returns the number of members created."""
    with factory() as s, s.begin():
        factors.sync_shipped(s)
        op_holder = holders.create_holder(s, None, kind=HolderKind.OPERATOR, name="运营方")
        op_user = holders.create_user(s, holder_id=op_holder.id, email="op@bench.example", name="op")
        op = Actor.of(op_user)
        m = methodologies.create_methodology(s, None, code="CI-TRANSIT-B", version="1.0", title_zh="低碳出行",
                                             title_en="Low-carbon travel", sector="transport",
                                             activity_unit="pkm")
        programme = projects.create_project(s, op, kind="programme", title="深圳碳普惠", methodology_id=m.id,
                                            province="广东省", city="深圳市")
        partners.register_partner(s, op, code=PARTNER, name="深圳出行平台", kind="transit",
                                  programme_id=programme.id, region="CN-GD-SZ", behaviour_types=TYPES)
        residents = holders.create_holder(s, None, kind=HolderKind.INDIVIDUAL, name="居民")
        partner_id = partners.partner_by_code(s, PARTNER).id
        programme_id, holder_id = programme.id, residents.id
        first_user = (s.scalar(select(func.max(User.id))) or 0) + 1
    now = utcnow()
    step = 20_000
    for lo in range(0, members, step):
        ids = range(lo, min(members, lo + step))
        with factory() as s, s.begin():
            copy = behaviour._copy_rows  # the import's own bulk writer (COPY / executemany)
            copy(s, "users", ("id", "holder_id", "email", "name", "role", "active", "created_at"),
                 ((first_user + i, holder_id, f"r{i}@bench.example", f"r{i}", "viewer", True, now) for i in ids))
            copy(s, "behaviour_members", ("id", "programme_id", "user_id", "city", "district", "community",
                                          "reduction_g", "enrolled_at"),
                 ((i + 1, programme_id, first_user + i, "深圳市", "南山区", f"社区{i % 50}", 0, now) for i in ids))
            copy(s, "behaviour_external_ids", ("id", "partner_id", "external_id", "member_id"),
                 ((i + 1, partner_id, f"r{i}", i + 1) for i in ids))
            copy(s, "points_accounts", ("user_id", "created_at"), ((first_user + i, now) for i in ids))
    with factory() as s, s.begin():
        if s.get_bind().dialect.name == "postgresql":
            for table in ("users", "behaviour_members", "behaviour_external_ids"):
                s.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT MAX(id) FROM {table}))"))
            s.execute(text("ANALYZE"))
    return members


def generate(path: str, rows: int, members: int, received: dt.datetime, seed: int) -> dict[str, int]:
    """Write the CSV; returns how many rows of each planted kind it holds."""
    rnd = random.Random(seed)
    cst = dt.timezone(dt.timedelta(hours=8))
    span_s = 7 * 86400 - 7200
    base = received - dt.timedelta(days=7)
    planted = {"duplicate": 0, "unknown_user": 0, "implausible": 0, "invalid": 0, "outside_claim_window": 0}
    recent: list[str] = []
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(CSV_COLUMNS) + "\n")
        for n in range(rows):
            roll = rnd.random()
            user = f"r{rnd.randrange(members)}"
            start = base + dt.timedelta(seconds=rnd.randrange(span_s))
            kind = rnd.random()
            mode = category = dist = weight = ""
            if kind < 0.45:
                t, mode = "CI-TRANSIT", rnd.choice(("bus", "metro"))
                km = rnd.randrange(100, 3001)
                minutes = km * 60 // (2000 if mode == "bus" else 3500) + 5
                dist = f"{km // 100}.{km % 100:02d}"
            elif kind < 0.75:
                t = "CI-BIKE"
                km = rnd.randrange(50, 801)
                minutes = km * 60 // 1200 + 3
                dist = f"{km // 100}.{km % 100:02d}"
            elif kind < 0.85:
                t, category, minutes = "CI-WASTE", "recyclables", 0
                g = rnd.randrange(5, 101)
                weight = f"{g // 10}.{g % 10}"
            else:
                t, minutes = ("ENG-CHECKIN" if kind < 0.95 else "ENG-QUIZ"), 0
            event_id = f"ev{n}"
            if roll < 0.01 and recent:
                event_id = rnd.choice(recent)
                planted["duplicate"] += 1
            elif roll < 0.02:
                bad = n % 4
                if bad == 0:
                    user = f"x{n}"
                    planted["unknown_user"] += 1
                elif bad == 1:
                    t, mode, dist, minutes = "CI-TRANSIT", "metro", "30.00", 2
                    planted["implausible"] += 1
                elif bad == 2:
                    t, mode, dist = "CI-TRANSIT", "bus", "abc"
                    planted["invalid"] += 1
                else:
                    start -= dt.timedelta(days=60)
                    planted["outside_claim_window"] += 1
            else:
                if len(recent) < 1000:
                    recent.append(event_id)
                else:
                    recent[n % 1000] = event_id
            s = start.replace(tzinfo=dt.UTC).astimezone(cst)
            e = s + dt.timedelta(minutes=minutes)
            f.write(f"{event_id},{user},,{t},{s.isoformat()},{e.isoformat()},{mode},{dist},{category},{weight}\n")
    return planted


def copy_baseline(engine: Engine, path: str) -> float:
    """Seconds to load the file into a fresh unindexed table of text columns."""
    cols = ", ".join(f"\"{c}\" TEXT" for c in CSV_COLUMNS)
    with engine.begin() as c:
        c.execute(text("DROP TABLE IF EXISTS bench_copy"))
        c.execute(text(f"CREATE TABLE bench_copy ({cols})"))
    t0 = time.perf_counter()
    with engine.begin() as c:
        raw: Any = c.connection.driver_connection
        if engine.dialect.name == "postgresql":
            with raw.cursor() as cur, cur.copy("COPY bench_copy FROM STDIN (FORMAT csv, HEADER)") as cp, \
                    open(path, "rb") as f:
                while block := f.read(1 << 20):
                    cp.write(block)
        else:
            import csv
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.reader(f)
                next(reader)
                marks = ", ".join("?" for _ in CSV_COLUMNS)
                while batch := [r for _, r in zip(range(20_000), reader, strict=False)]:
                    raw.executemany(f"INSERT INTO bench_copy VALUES ({marks})", batch)
    elapsed = time.perf_counter() - t0
    with engine.begin() as c:
        c.execute(text("DROP TABLE bench_copy"))
    return elapsed


def _proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (user + system; with `children`, also of its exited, reaped children)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    """CPU seconds of this process's exited, reaped children (the import's preparing process)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def server_cpu(engine: Engine) -> float | None:
    """CPU seconds used so far by the PostgreSQL server of `engine` when it runs on this machine: its
    postmaster with every child, live or exited (the postmaster reaps them). On a server shared with
    other databases this counts their work too. None elsewhere."""
    if engine.dialect.name != "postgresql" or not os.path.isdir("/proc"):
        return None
    try:
        with engine.connect() as c:
            backend = c.scalar(text("SELECT pg_backend_pid()"))
        postmaster = int(open(f"/proc/{backend}/stat").read().rsplit(")", 1)[1].split()[1])
        total = _proc_cpu(postmaster, children=True)
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[1]) == postmaster:
                    total += _proc_cpu(int(pid))
        return total
    except OSError:
        return None


def backends_cpu(engine: Engine) -> dict[int, float] | None:
    """CPU seconds so far of each live backend connected to `engine`'s database, when the server runs
    on this machine (None elsewhere): the import's own work, whatever else the server is doing. The
    server's background processes (WAL writer, checkpointer) are not in it."""
    if engine.dialect.name != "postgresql" or not os.path.isdir("/proc"):
        return None
    with engine.connect() as c:
        pids = c.scalars(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).all()
    found = {}
    for pid in pids:
        try:
            found[int(pid)] = _proc_cpu(int(pid))
        except OSError:
            continue
    return found


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True, help="a database of the bench's own (it is emptied)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--members", type=int, default=200_000)
    ap.add_argument("--chunk-size", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--no-pipeline", action="store_true", help="prepare and record chunks in one thread")
    ap.add_argument("--no-probe-ahead", action="store_true",
                    help="make each chunk's database checks in its own transaction, not ahead")
    ap.add_argument("--prepare-here", action="store_true",
                    help="read and prepare the rows in the importing process, not in a child process")
    args = ap.parse_args(argv)

    tmpdir = tempfile.mkdtemp(prefix="tanhui_behaviour_bench_")
    try:
        url = args.database_url
        url = normalise_url(url) if is_pg(url) else f"sqlite:///{os.path.join(tmpdir, 'bench.sqlite3')}"
        migrate_and_empty(url)
        engine = create_engine(url)
        factory = sessionmaker(bind=engine, expire_on_commit=False)
        t0 = time.perf_counter()
        build_world(factory, args.members)
        t_world = time.perf_counter() - t0
        received = utcnow()
        path = os.path.join(tmpdir, "behaviour.csv")
        t0 = time.perf_counter()
        planted = generate(path, args.rows, args.members, received, args.seed)
        t_gen = time.perf_counter() - t0
        size_mb = os.path.getsize(path) / 2**20
        print(f"# {platform.python_version()} on {engine.dialect.name}; {args.rows} rows ({size_mb:.1f} MiB), "
              f"{args.members} members, chunk {args.chunk_size}; world {t_world:.1f} s, file {t_gen:.1f} s")
        print(f"# planted: {planted}")

        t_copy = copy_baseline(engine, path)
        print(f"# bare COPY into an unindexed table: {t_copy:.2f} s = {args.rows / t_copy:,.0f} rows/s")

        cpu0, server0, child0 = time.process_time(), server_cpu(engine), _children_cpu()
        own0 = backends_cpu(engine)
        t0 = time.perf_counter()
        result = import_csv(factory, path, PARTNER, chunk_size=args.chunk_size, pipeline=not args.no_pipeline,
                            probe_ahead=not args.no_probe_ahead, prepare_apart=False if args.prepare_here else None)
        t_import = time.perf_counter() - t0
        t_end = t0 + t_import
        cpu_here, server1, own1 = time.process_time() - cpu0, server_cpu(engine), backends_cpu(engine)
        cpu_child = _children_cpu() - child0
        cpu_py = cpu_here + cpu_child
        # The preparing child's peak is added to ours: an upper bound of the two at once.
        peak_here = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_child = behaviour_prepare.PEAK_KB["last"] / 1024 if cpu_child else 0.0
        peak_mb = peak_here + peak_child
        print(f"# peak RSS MB: importer {peak_here:.0f}, preparing process {peak_child:.0f}")
        rate = args.rows / t_import
        print(f"# import: {t_import:.2f} s; rows {result.rows}, accepted {result.accepted}, "
              f"rejected {result.rejected}, reduction {result.reduction_g} g, points {result.points}")
        print(f"# rejected by reason: {result.reasons}")
        print("# seconds by phase: " + ", ".join(f"{k} {v:.2f}" for k, v in behaviour.PHASES.items())
              + f"; commit and the rest {t_import - sum(behaviour.PHASES.values()):.2f}")
        print("# timeline (s from the start, first..last): " + ", ".join(
            f"{k} {a - t0:.2f}" + (f"..{b - t0:.2f}" if b - a >= 0.005 else "") for k, (a, b) in behaviour.MARKS.items())
            + f", complete {t_end - t0:.2f}")
        print(f"# chunks checked ahead {behaviour.PROBES['ahead']}, checked again {behaviour.PROBES['again']}; "
              f"decided ahead {behaviour.PROBES['decided ahead']}, decided again {behaviour.PROBES['decided again']}")
        # CPU seconds are steadier than wall time on a shared machine: at 50,000 rows/s on two cores
        # the import may use at most 40 s of CPU per million rows, Python and PostgreSQL together.
        # The server's figure counts every database's work (other suites on a shared server); the
        # backends of the bench's own database are the import's alone, and are what is summed.
        cpu_pg = server1 - server0 if server0 is not None and server1 is not None else None
        cpu_own = (sum(t - own0.get(pid, 0.0) for pid, t in own1.items())
                   if own0 is not None and own1 is not None else None)
        print(f"# CPU seconds: python {cpu_py:.1f} (importer {cpu_here:.1f}, preparing process {cpu_child:.1f})"
              + (f", postgresql backends of this database {cpu_own:.1f}" if cpu_own is not None else "")
              + (f" (server in all {cpu_pg:.1f})" if cpu_pg is not None else "")
              + f"; per 1M rows {(cpu_py + (cpu_own or 0)) * 1e6 / args.rows:.1f}")

        t0 = time.perf_counter()
        with factory() as s, s.begin():
            violations = behaviour.check_ledger(s)
            earned = s.scalar(text("SELECT COALESCE(SUM(points), 0) FROM points_entries WHERE kind = 'earn'"))
        print(f"# check_ledger: {len(violations)} violations ({time.perf_counter() - t0:.1f} s); "
              f"points earned in the ledger {earned}")
        assert not violations, violations[:5]
        assert result.rows == args.rows and earned == result.points
        # a planted duplicate whose first row was itself rejected (e.g. over the cap) may be accepted
        assert 0.9 * planted["duplicate"] <= result.reasons.get("duplicate", 0) <= planted["duplicate"]
        for reason in ("unknown_user", "implausible", "outside_claim_window"):
            assert result.reasons.get(reason, 0) >= planted[reason], (reason, result.reasons)
        assert result.reasons.get("invalid", 0) == planted["invalid"]
        engine.dispose()
        vs_copy = rate / (args.rows / t_copy)
        print(f"BENCH behaviour rows_per_s={rate:.0f} peak_mb={peak_mb:.0f} vs_copy={vs_copy:.4f}")
        return {"rows_per_s": rate, "peak_mb": peak_mb, "vs_copy": vs_copy, "result": result.as_dict(),
                "planted": planted, "copy_s": t_copy, "import_s": t_import}
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
