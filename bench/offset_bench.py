"""Offset benchmark: wallet-paid offset orders end to end, and certificate verification.

    .venv/bin/python bench/offset_bench.py --database-url postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python bench/offset_bench.py --database-url sqlite:// --workers 1 --orders 10 --warmup 2
    .venv/bin/python bench/offset_bench.py --database-url postgresql://postgres@127.0.0.1/postgres --steps

Targets (issue 6): on PostgreSQL at least 200 offset orders per second end to end (quote → pay → fill
→ retire → certificate with PDF) and a certificate verification p99 under 20 ms.

What it does, in a database of its own (PostgreSQL: `CREATE DATABASE tanhui_bench_<pid>_offsets` on
the server of `--database-url`, dropped at the end unless `--keep`; SQLite: a temporary file),
migrated by the Alembic migrations as the tests do:

1. Through the use cases: an operator, a verifier, a seller with one registered project and one
   issued batch per worker (vintages 2015, 2016, ...), one fixed-price listing per batch at ¥60/t,
   and per worker a buyer (an event organiser) with money in its wallet and its own footprint.
2. `--workers` processes (fork), each with its own engine, run `--warmup` untimed then `--orders`
   timed orders, each of a random 500-3,000 kg from a seeded sequence. Each worker's buyer prefers
   its own vintage, so the workers buy from different listings (one listing row is the
   serialisation point of the quotes and fills that use it). One order, timed as a whole with
   `time.perf_counter`, is what the API's wallet path runs (`POST /offsets` with `"confirm": true`):
   `offsets.place` in one transaction (the quote reserving the listing's supply, the wallet's
   payment, delivery versus payment from the listing and retirement of exactly the delivered
   blocks), then the signed certificate JSON from what the placement wrote
   (`Placed.certificate_body` + `certificates.sign_body`, no query) and `certificate_pdf.render_pdf`
   (the PDF, built-in CID font). With `--steps`, the three-step sequence instead, each in its own
   transaction (`POST /offsets`, then `/confirm`): `offsets.create_offset` → `offsets.confirm_offset`
   → `offsets.fulfil`, and the certificate read back from the database
   (`certificates.issue_document`). HTTP is not included.
3. Verification: each certificate document is serialised as served (`document_bytes`), then timed:
   `load_document` + `verify_document` with the public key PEM (what `flask registry
   verify-certificate` does, without the file read).
4. Afterwards every registry invariant, `wallets.check` and `offsets.check` must hold.
5. Per-order costs that do not depend on how loaded the machine is: SQL statements by phase and kind
   (counted on the warm-up orders), the client's CPU per phase, the PostgreSQL backends' CPU (their
   /proc/<pid>/stat, when the server is on this machine), the PDF rendered alone `--pdf-repeat`
   times (CPU), and the best rate the cores could give at that CPU per order. `--profile N` (one
   worker) prints cProfile's top N functions of the worker.

offsets/s = timed orders of all workers ÷ the wall time from the first timed start to the last
timed end. The last line is ``BENCH offset offsets_per_s=<n> verify_p99_ms=<ms>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from bench.exchange_bench import SqlCounter  # noqa: E402
from bench.registry_bench import Databases, _party, is_pg, migrate, pct  # noqa: E402
from exchange import footprints, offsets, wallets  # noqa: E402
from exchange.offset_models import OffsetStatus  # noqa: E402
from registry import certificates, factors, invariants, issuance, methodologies, projects  # noqa: E402
from registry.actors import Actor  # noqa: E402
from registry.certificate_pdf import render_pdf  # noqa: E402
from registry.models import HolderKind, Retirement  # noqa: E402

SEED = 20261123
PRICE = 60_00
BASE_URL = "https://tanhui.example"
FIRST_VINTAGE = 2015
MAX_KG = 3000
PHASES = ("place", "certificate", "pdf")
STEPS_PHASES = ("quote", "pay", "fill", "certificate", "pdf")


def phases_of(steps: bool) -> tuple[str, ...]:
    return STEPS_PHASES if steps else PHASES


@dataclass
class Setup:
    url: str
    buyers: list[Actor]
    footprint_ids: list[int]
    key_pem: bytes


def build(url: str, workers: int, per_worker: int) -> Setup:
    engine = create_engine(url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    stock = per_worker * MAX_KG + MAX_KG
    with factory() as s, s.begin():
        factors.sync_shipped(s)
        op = _party(s, HolderKind.OPERATOR, "运营方")
        ver = _party(s, HolderKind.VERIFIER, "核查机构")
        seller = _party(s, HolderKind.ENTERPRISE, "光伏企业")
        m = methodologies.create_methodology(s, None, code="CI-PV", version="1.0", title_zh="分布式光伏",
                                             title_en="Rooftop PV", sector="energy", activity_unit="MWh")
        p = projects.create_project(s, seller.actor, title="屋顶光伏", methodology_id=m.id, province="广东省",
                                    city="深圳市", district="南山区")
        projects.submit_project(s, seller.actor, p.id)
        projects.validate_project(s, ver.actor, p.id)
        projects.register_project(s, op.actor, p.id)
        buyers, fps = [], []
        for k in range(workers):
            day = dt.date(FIRST_VINTAGE + k, 6, 1)
            r = projects.submit_report(s, seller.actor, p.id, period_start=day, period_end=day, claimed_kg=stock)
            projects.verify_report(s, ver.actor, r.id, approved_kg=stock)
            issuance.issue(s, op.actor, r.id)
            offsets.create_listing(s, seller.actor, project_id=p.id, vintage=FIRST_VINTAGE + k, quantity_kg=stock,
                                   price=PRICE)
            b = _party(s, HolderKind.EVENT_ORGANISER, f"会务方{k}")
            wallets.deposit(s, op.actor, b.holder_id, stock * PRICE)   # 1,000x what the stock costs
            fp = footprints.create_footprint(s, b.actor, "event", {
                "name": f"论坛 {k}", "region": "CN-GD", "year": 2026, "venue": {"electricity_kwh": 10_000_000},
                "hotel_room_nights": 1000})
            buyers.append(b.actor)
            fps.append(fp.id)
    engine.dispose()
    return Setup(url, buyers, fps, certificates.SigningKey.generate().private_pem())


class PhaseCounter(SqlCounter):
    """Statements by phase of the order and by kind (verb and table), counted on warm-up orders only
    so that the listener costs the timed orders nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = ""

    def mark(self, phase: str) -> None:
        self.phase = phase

    def attach(self, engine: Any) -> None:
        from sqlalchemy import event

        @event.listens_for(engine, "before_cursor_execute")
        def _count(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            if self.on:
                self.n[f"{self.phase}: {self.key(statement)}"] += 1


def one_order(factory: sessionmaker[Session], buyer: Actor, footprint_id: int, vintage: int, qty: int,
              key: certificates.SigningKey, times: dict[str, list[float]] | None, pdf: bool = True,
              counter: PhaseCounter | None = None, steps: bool = False) -> bytes:
    """One order end to end; returns the served certificate JSON."""
    marks = [time.perf_counter()]
    cpu = [time.process_time()]
    phase = counter.mark if counter is not None else (lambda _: None)
    order = dict(footprint_id=footprint_id, quantity_kg=qty, beneficiary="基准测试 benchmark",
                 preference={"vintage": vintage})
    with factory() as s:
        placed = None
        if not steps:
            phase("place")
            with s.begin():
                placed = offsets.place(s, buyer, **order)   # type: ignore[arg-type]
            done = placed.order
        else:
            phase("quote")
            with s.begin():
                oid = offsets.create_offset(s, buyer, **order).id   # type: ignore[arg-type]
            marks.append(time.perf_counter())
            cpu.append(time.process_time())
            phase("pay")
            with s.begin():
                offsets.confirm_offset(s, buyer, oid)
            marks.append(time.perf_counter())
            cpu.append(time.process_time())
            phase("fill")
            with s.begin():
                done = offsets.fulfil(s, oid)
        assert done.status is OffsetStatus.RETIRED, (done.status, done.reason)
        number = done.certificate_number
        marks.append(time.perf_counter())
        cpu.append(time.process_time())
        phase("certificate")
        if placed is not None:   # what the placement wrote: no query
            doc = certificates.sign_body(placed.certificate_body(BASE_URL), key)
            assert doc["certificate"]["certificate_number"] == number
        else:
            with s.begin():
                r = s.get(Retirement, done.retirement_id)
                assert r is not None and r.certificate_number == number
                doc = certificates.issue_document(s, r, key, BASE_URL)
        marks.append(time.perf_counter())
        cpu.append(time.process_time())
    if pdf:
        assert render_pdf(doc).startswith(b"%PDF")
    marks.append(time.perf_counter())
    cpu.append(time.process_time())
    if times is not None:
        for name, a, b in zip(phases_of(steps), marks[:-1], marks[1:], strict=True):
            times[name].append((b - a) * 1000)
        for name, a, b in zip(phases_of(steps), cpu[:-1], cpu[1:], strict=True):
            times[f"cpu {name}"].append((b - a) * 1000)
        times["order"].append((marks[-1] - marks[0]) * 1000)
    return certificates.document_bytes(doc)


def track_backends(engine: Any) -> set[int]:
    """The process ids of the PostgreSQL backends serving this engine's connections (filled as they open)."""
    pids: set[int] = set()
    if engine.dialect.name == "postgresql":
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _pid(dbapi_conn: Any, record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("SELECT pg_backend_pid()")
            pids.add(int(cur.fetchone()[0]))
            cur.close()
    return pids


def cpu_seconds(pids: set[int]) -> float | None:
    """User + system CPU seconds used so far by these local processes (/proc); None if not readable
    (another host, no /proc, a backend gone)."""
    if not pids:
        return None
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks += int(fields[11]) + int(fields[12])   # utime, stime: fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def worker(setup: Setup, k: int, orders: int, warmup: int, out: Any, go: Any, pdf: bool = True,
           steps: bool = False) -> None:
    engine = create_engine(setup.url, pool_size=2)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    key = certificates.SigningKey.from_pem(setup.key_pem)
    rng = random.Random(SEED + k)
    qtys = [rng.randint(500, MAX_KG) for _ in range(warmup + orders)]
    counter = PhaseCounter()
    counter.attach(engine)
    backends = track_backends(engine)
    for i, q in enumerate(qtys[:warmup]):
        counter.on = i > 0   # the first order fills caches (e.g. the shipped factors' rows)
        one_order(factory, setup.buyers[k], setup.footprint_ids[k], FIRST_VINTAGE + k, q, key, None, pdf, counter,
                  steps)
    counter.on = False
    go.wait()
    names = phases_of(steps)
    times: dict[str, list[float]] = {p: [] for p in (*names, "order", *(f"cpu {p}" for p in names))}
    docs = []
    server0, client0 = cpu_seconds(backends), time.process_time()
    start = time.perf_counter()
    for q in qtys[warmup:]:
        docs.append(one_order(factory, setup.buyers[k], setup.footprint_ids[k], FIRST_VINTAGE + k, q, key, times,
                              pdf, steps=steps))
    end = time.perf_counter()
    client, server1 = time.process_time() - client0, cpu_seconds(backends)
    engine.dispose()
    out.put({"k": k, "start": start, "end": end, "times": times, "docs": docs,
             "statements": dict(counter.n), "counted_orders": max(0, warmup - 1), "client_cpu_s": client,
             "server_cpu_s": None if server0 is None or server1 is None else server1 - server0})


def verify_all(docs: list[bytes], public_pem: bytes) -> list[float]:
    times = []
    for data in docs:
        t0 = time.perf_counter()
        result = certificates.verify_document(certificates.load_document(data), public_pem)
        times.append((time.perf_counter() - t0) * 1000)
        assert result.ok, result.reason
    return times


def check(url: str) -> list[str]:
    engine = create_engine(url)
    with sessionmaker(bind=engine)() as s:
        found = [str(v) for v in invariants.check(s, include_audit=False)] + wallets.check(s) + offsets.check(s)
    engine.dispose()
    return found


def run(setup: Setup, workers: int, orders: int, warmup: int, pdf: bool = True,
        profile: int = 0, steps: bool = False) -> list[dict[str, Any]]:
    if workers == 1:
        q: Any = _List()
        if not profile:
            worker(setup, 0, orders, warmup, q, _Go(), pdf, steps)
            return q.items
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(worker, setup, 0, orders, warmup, q, _Go(), pdf, steps)
        stats = pstats.Stats(prof, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(profile)
        stats.sort_stats("cumulative").print_stats(profile)
        return q.items
    ctx = mp.get_context("fork")
    out, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=worker, args=(setup, k, orders, warmup, out, go, pdf, steps))
             for k in range(workers)]
    for p in procs:
        p.start()
    time.sleep(0.5 + 0.2 * warmup)   # let the warm-ups finish before the timed start
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"worker {p.name} exited with {p.exitcode}")
    return results


def pdf_micro(served: bytes, repeat: int) -> list[float]:
    """CPU milliseconds to render one certificate's PDF, `repeat` times, in this process."""
    doc = certificates.load_document(served)
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        render_pdf(doc)
        times.append((time.process_time() - t0) * 1000)
    return times


class _List:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def put(self, item: dict[str, Any]) -> None:
        self.items.append(item)


class _Go:
    def wait(self) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or "sqlite://")
    ap.add_argument("--workers", type=int, default=4, help="processes placing orders at once")
    ap.add_argument("--orders", type=int, default=250, help="timed orders per worker")
    ap.add_argument("--warmup", type=int, default=10, help="untimed orders per worker first")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    ap.add_argument("--no-pdf", dest="pdf", action="store_false",
                    help="skip the PDF (to see its share; the target includes it)")
    ap.add_argument("--pdf-repeat", type=int, default=30,
                    help="afterwards, render one certificate's PDF this many times alone (0: skip)")
    ap.add_argument("--steps", action="store_true",
                    help="each order as quote, pay and fill in three transactions (create_offset, confirm_offset, "
                         "fulfil; POST /offsets then /confirm) and its certificate read back from the database, "
                         "instead of placed in one (offsets.place, as POST /offsets with confirm: true)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="with --workers 1: cProfile the worker and print its top N functions (slows it down)")
    a = ap.parse_args(argv)
    if a.profile and a.workers != 1:
        ap.error("--profile needs --workers 1")
    if not is_pg(a.database_url) and a.workers != 1:
        ap.error("SQLite runs one worker (--workers 1): it has a single writer")
    dbs = Databases(a.database_url, a.keep)
    try:
        url = dbs.create("offsets")
        migrate(url)
        setup = build(url, a.workers, a.orders + a.warmup)
        results = run(setup, a.workers, a.orders, a.warmup, a.pdf, a.profile, a.steps)
        problems = check(url)
        assert not problems, "invariants violated after the benchmark:\n" + "\n".join(problems[:20])
    finally:
        dbs.drop_all()
    n = sum(len(r["docs"]) for r in results)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    rate = n / wall
    public = certificates.SigningKey.from_pem(setup.key_pem).public_key_pem()
    verify = verify_all([d for r in results for d in r["docs"]], public)
    names = phases_of(a.steps)
    phases = {p: [x for r in results for x in r["times"][p]] for p in (*names, "order") if a.pdf or p != "pdf"}
    counted = sum(r["counted_orders"] for r in results)
    statements: Counter[str] = Counter()
    for r in results:
        statements.update(r["statements"])
    pdf_ms = pdf_micro(results[0]["docs"][0], a.pdf_repeat) if a.pdf_repeat else []
    print(f"# {platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs; {'PostgreSQL' if is_pg(a.database_url) else 'SQLite'}; {a.workers} worker(s) "
          f"x {a.orders} timed orders ({a.warmup} warm-up each){'' if a.pdf else '; WITHOUT the PDF'}; "
          + ("quote, pay and fill in three transactions (--steps)" if a.steps else "one transaction an order (place)"))
    for p, xs in phases.items():
        cpu = [x for r in results for x in r["times"].get(f"cpu {p}", [])]
        print(f"# {p:12s} p50 {pct(xs, 50):7.2f} ms  p99 {pct(xs, 99):7.2f} ms"
              + (f"   client CPU mean {sum(cpu) / len(cpu):6.2f} ms" if cpu else ""))
    print(f"# verify       p50 {pct(verify, 50):7.2f} ms  p99 {pct(verify, 99):7.2f} ms ({len(verify)} certificates)")
    if counted:
        per_phase: Counter[str] = Counter()
        for k, v in statements.items():
            per_phase[k.split(":", 1)[0]] += v
        print(f"# SQL statements per order (counted on {counted} warm-up orders): "
              f"{sum(statements.values()) / counted:.1f} = "
              + ", ".join(f"{p} {per_phase[p] / counted:.1f}" for p in names[:-1]))
        for k, v in sorted(statements.items()):
            print(f"#   {k:55s} {v / counted:5.1f}")
    if pdf_ms:
        print(f"# pdf render alone (same document, {len(pdf_ms)}x in this process): CPU p50 {pct(pdf_ms, 50):.2f} ms  "
              f"min {min(pdf_ms):.2f} ms")
    client_ms = sum(r["client_cpu_s"] for r in results) * 1000 / n
    servers = [r["server_cpu_s"] for r in results]
    server_ms = sum(servers) * 1000 / n if None not in servers else None
    cores = os.cpu_count() or 1
    line = f"# CPU per order: this client {client_ms:.2f} ms (Python: use cases, ORM, driver, PDF)"
    if server_ms is not None:
        line += (f" + PostgreSQL backend {server_ms:.2f} ms = {client_ms + server_ms:.2f} ms; {cores} cores "
                 f"can do at most {cores * 1000 / (client_ms + server_ms):.0f} orders/s")
    print(line)
    busy = sum(phases["order"])
    print(f"# {n} orders in {wall:.2f} s; {busy / n:.2f} ms of order time per order ({busy / wall / 1000:.2f} "
          f"orders in flight on average); invariants, wallets.check and offsets.check hold")
    vp99 = pct(verify, 99)
    print(f"BENCH offset offsets_per_s={rate:.1f} verify_p99_ms={vp99:.2f}", flush=True)
    return {"orders": n, "wall_s": wall, "offsets_per_s": rate, "verify_p99_ms": vp99,
            "phases_p50": {p: pct(xs, 50) for p, xs in phases.items()}, "pdf": a.pdf, "steps": a.steps,
            "statements_per_order": sum(statements.values()) / counted if counted else None}


if __name__ == "__main__":
    main()
