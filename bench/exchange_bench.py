"""Exchange benchmark: order entry over HTTP (gunicorn + `flask exchange run-engine`), settlement
throughput of the sequencer, and pgbench one-row inserts on the same PostgreSQL server.

    .venv/bin/python bench/exchange_bench.py --database-url postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python bench/exchange_bench.py --smoke          # tiny: 2 s, 4 clients, 200 trades

The requirement: on PostgreSQL, with the app served by gunicorn on 127.0.0.1 and a load generator in
another process, sustained order entry of at least 1,000 orders/s with p99 under 100 ms, and the
sequencer settling at least 5,000 trades/s; pgbench one-row insert transactions on the same server,
in the same run, as the yardstick.

What it does, in a database of its own (`CREATE DATABASE tanhui_xbench_<pid>` on the server of
`--database-url`, migrated by the Alembic migrations as tests/conftest.py does, dropped at the end
unless `--keep`, also on failure):

0. A world through the use cases (no HTTP): operator, verifier, an enterprise that issues one large
   2025 batch and transfers a block of it to each seller; `--traders` sellers and buyers (buyers get
   a deposit of 10^10 fen each); one bearer token per trader (`registry.holders.create_token`);
   two pooled instruments (reference price 5,000 fen/t, band +-10%, taker fee 50 bp, maker 0):
   XB-ENTRY for phase 1, XB-SETTLE for phase 2.
1. Order entry. `gunicorn -k gthread -w <workers> --threads <threads> -b 127.0.0.1:<free port>
   'web:create_app()'` and `flask --app web exchange run-engine` as separate processes (env
   DATABASE_URL=<bench db>, EMBEDDED_SEQUENCER=0, AUDIT_SEALER_INTERVAL_S=0). The load generator is
   a third process (this script with `--_loadgen`): `--clients` threads, each with its own
   keep-alive http.client connection and its own traders, POST /api/v1/orders for `--duration`
   seconds after an untimed warm-up. Mix: 85% resting limit orders 1-50 ticks behind the touch
   (5,000), 15% crossing (a buy at 5,050 or a sell at 4,950); 1-5 t; half buys, half sells.
   Client-side: accepted (HTTP 201) orders/s over the timed window, p50/p99/max latency of every
   request, HTTP errors, and how many 201 answers came back with the command still pending (the
   POST waits up to ORDER_WAIT_S = 2 s for the sequencer).
2. Settlement, in this process, with the engine process stopped: `--trades` N resting sells of 1 t
   (N sellers round-robin) are placed through `exchange.orders.place_order` and applied by
   `Sequencer(factory).run_once()` (timed separately: resting), then N crossing buys of 1 t at the
   same price are placed (committed, pending) and `run_once()` draining them is timed: trades/s =
   Trade rows created / that time. Every SQL statement of the drain is counted by a
   `before_cursor_execute` listener (statements per trade, by kind and table).
1b. The floor, as a peer of phase 1: `bench/http_floor.py` served by gunicorn with the same settings
   and hit by the same load generator: each POST parses the JSON, reads the token, INSERTs one row
   and commits (psycopg, no ORM, no hold, no engine) and answers 201. Order entry does all of that
   and more, so its rate on this machine cannot exceed the floor's; vs_floor = phase 1 / phase 1b.
3. `pgbench -n -c <clients> -j 2 -T <duration> -f <one INSERT>` on a one-row table in the same
   database (if pgbench is missing: an equivalent loop of psycopg connections, one INSERT + COMMIT
   per transaction). vs_pgbench = phase-1 orders/s / pgbench tps.

With `--profile` it also times, in this process, the parts of an order POST (Flask test client
against the same database, sequencer as a thread): authentication, body validation, order entry
(place_order, of which the cash hold / unit lock), the commit, and the wait for the sequencer;
plus a cProfile of the settlement drain.

The last line is ``BENCH exchange orders_per_s=<n> p99_ms=<ms> trades_per_s=<n> vs_pgbench=<ratio>``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

REF_PRICE = 5000
ENTRY = "XB-ENTRY"
SETTLE = "XB-SETTLE"
SEED = 20261123


def pct(xs: Sequence[float], p: float) -> float:
    if not xs:
        return float("nan")
    ys = sorted(xs)
    k = min(len(ys) - 1, max(0, int(round(p / 100 * (len(ys) - 1)))))
    return ys[k]


# ================================================================================ load generator
# Runs in its own process (`--_loadgen cfg.json out.json`); imports nothing of the project.

def loadgen(cfg_path: str, out_path: str) -> None:
    with open(cfg_path) as f:
        cfg = json.load(f)
    host, port = "127.0.0.1", int(cfg["port"])
    clients, duration, warmup = int(cfg["clients"]), float(cfg["duration"]), float(cfg["warmup"])
    buyers, sellers = cfg["buyers"], cfg["sellers"]
    symbol = cfg["symbol"]
    path = cfg.get("path", "/api/v1/orders")
    start_at = time.monotonic() + 0.2
    t_measure = start_at + warmup
    t_end = t_measure + duration
    results: list[dict[str, Any]] = [{} for _ in range(clients)]

    def client(i: int) -> None:
        rng = random.Random(SEED + i)
        side_tokens = buyers if i % 2 == 0 else sellers
        mine = side_tokens[(i // 2) % len(side_tokens)::max(1, (clients + 1) // 2)] or [side_tokens[0]]
        side = "buy" if i % 2 == 0 else "sell"
        lat: list[float] = []
        codes: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        pending = 0
        accepted = 0
        errors: list[str] = []
        conn: http.client.HTTPConnection | None = None
        n = 0
        while time.monotonic() < start_at:
            time.sleep(0.005)
        while True:
            now = time.monotonic()
            if now >= t_end:
                break
            token = mine[n % len(mine)]
            n += 1
            qty = rng.randint(1, 5) * 1000
            if rng.random() < 0.15:       # crossing
                price = REF_PRICE + 50 if side == "buy" else REF_PRICE - 50
            else:                          # resting near the touch
                off = rng.randint(1, 50)
                price = REF_PRICE - off if side == "buy" else REF_PRICE + off
            body = json.dumps({"instrument": symbol, "side": side, "qty_kg": qty, "price": price})
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=30)
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                code = resp.status
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                code, data = 0, str(e).encode()
            ms = (time.perf_counter() - t0) * 1000
            if now < t_measure:
                continue   # warm-up: not recorded
            lat.append(ms)
            codes[str(code)] += 1
            if code == 201:
                accepted += 1
                try:
                    doc = json.loads(data)
                    statuses[doc.get("status", "?")] += 1
                    if doc.get("pending_commands", 0) or doc.get("status") == "pending":
                        pending += 1
                except ValueError:
                    statuses["bad_json"] += 1
            elif len(errors) < 3:
                errors.append(f"{code}: {data[:200]!r}")
        if conn is not None:
            conn.close()
        results[i] = {"lat": lat, "codes": dict(codes), "statuses": dict(statuses), "pending": pending,
                      "accepted": accepted, "errors": errors}

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + warmup + 120)
    lat = [x for r in results for x in r.get("lat", [])]
    codes: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for r in results:
        codes.update(r.get("codes", {}))
        statuses.update(r.get("statuses", {}))
    out = {"duration": duration, "requests": len(lat), "accepted": sum(r.get("accepted", 0) for r in results),
           "pending": sum(r.get("pending", 0) for r in results), "codes": dict(codes),
           "statuses": dict(statuses), "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
           "max": max(lat) if lat else float("nan"), "errors": [e for r in results for e in r.get("errors", [])][:5]}
    with open(out_path, "w") as f:
        json.dump(out, f)


if len(sys.argv) >= 2 and sys.argv[1] == "--_loadgen":   # before the project's imports: a lean process
    loadgen(sys.argv[2], sys.argv[3])
    sys.exit(0)

# ================================================================================ the bench proper

from sqlalchemy import create_engine, event, func, select, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from exchange import instruments, orders, wallets  # noqa: E402
from exchange.models import Trade  # noqa: E402
from exchange.sequencer import Sequencer  # noqa: E402
from registry import holders, issuance, methodologies, projects, units  # noqa: E402
from registry.actors import Actor  # noqa: E402
from registry.db import normalise_url  # noqa: E402
from registry.models import HolderKind, User  # noqa: E402


def is_pg(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql"))


def _cfg(url: str) -> dict[str, Any]:
    from web.config import TestConfig
    return {k: getattr(TestConfig, k) for k in dir(TestConfig) if k.isupper()} | {"SQLALCHEMY_DATABASE_URI": url}


def migrate(url: str) -> None:
    """As tests/conftest.py and bench/registry_bench.py: flask_migrate.upgrade inside create_app."""
    from flask_migrate import upgrade

    from web import create_app
    from web.extensions import db

    app = create_app(_cfg(url))
    with app.app_context():
        upgrade()
        db.engine.dispose()


class Database:
    """One fresh PostgreSQL database, dropped at the end (unless keep), even on failure."""

    def __init__(self, server_url: str, keep: bool) -> None:
        self.server = make_url(normalise_url(server_url))
        self.keep = keep
        self.name = f"tanhui_xbench_{os.getpid()}"
        self.url = self.server.set(database=self.name).render_as_string(hide_password=False)
        self.created = False

    def _admin(self) -> Engine:
        return create_engine(self.server.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def create(self) -> str:
        admin = self._admin()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            c.execute(text(f'CREATE DATABASE "{self.name}"'))
        admin.dispose()
        self.created = True
        return self.url

    def drop(self) -> None:
        if not self.created:
            return
        if self.keep:
            print(f"# kept database {self.name}")
            return
        admin = self._admin()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        admin.dispose()
        self.created = False


class Procs:
    """Child processes in their own process groups: terminated (then killed) at the end."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        out = open(log, "wb")
        p = subprocess.Popen(argv, env=env, cwd=_ROOT, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        out.close()
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 10) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        else:   # the leader exited; make sure nothing of its group lingers
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for _, p in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(p)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------- the world

@dataclass
class Trader:
    holder_id: int
    actor: Actor
    token: str


@dataclass
class World:
    operator: Actor
    buyers: list[Trader]
    sellers: list[Trader]


def _party(s: Session, kind: HolderKind, name: str) -> tuple[int, Actor, User]:
    h = holders.create_holder(s, None, kind=kind, name=name)
    u = holders.create_user(s, holder_id=h.id, email=f"{kind.value}-{h.id}@xbench.example", name=name, role="admin")
    s.flush()
    user = s.get(User, u.id)
    assert user is not None
    return h.id, Actor.of(user), user


def build_world(factory: sessionmaker[Session], n_traders: int, kg_per_seller: int) -> World:
    with factory() as s, s.begin():
        _, op, _ = _party(s, HolderKind.OPERATOR, "运营方")
        _, ver, _ = _party(s, HolderKind.VERIFIER, "核查机构")
        _, owner, _ = _party(s, HolderKind.ENTERPRISE, "光伏企业")
        m = methodologies.create_methodology(s, None, code="CI-PV", version="1.0", title_zh="分布式光伏",
                                             title_en="Rooftop PV", sector="energy", activity_unit="MWh")
        p = projects.create_project(s, owner, title="屋顶光伏", methodology_id=m.id, province="广东省",
                                    city="深圳市", district="南山区")
        projects.submit_project(s, owner, p.id)
        projects.validate_project(s, ver, p.id)
        projects.register_project(s, op, p.id)
        total = kg_per_seller * n_traders
        day = dt.date(2025, 3, 1)
        r = projects.submit_report(s, owner, p.id, period_start=day, period_end=day + dt.timedelta(days=27),
                                   claimed_kg=total)
        projects.verify_report(s, ver, r.id, approved_kg=total)
        issuance.issue(s, op, r.id)
        for sym in (ENTRY, SETTLE):
            instruments.create_instrument(s, op, symbol=sym, name_zh="光伏2025", name_en="PV 2025", kind="pooled",
                                          vintage_from=2025, vintage_to=2025, sector="energy",
                                          reference_price=REF_PRICE, taker_fee_bp=50, maker_fee_bp=0)
        buyers, sellers = [], []
        for i in range(n_traders):
            hid, a, u = _party(s, HolderKind.ENTERPRISE, f"卖方{i}")
            sellers.append(Trader(hid, a, holders.create_token(s, u)[1]))
            units.transfer(s, owner, to_account=holders.account_of(s, hid).number,
                           selection=units.Selection(quantity_kg=kg_per_seller), memo="xbench setup")
            hid, a, u = _party(s, HolderKind.EVENT_ORGANISER, f"买方{i}")
            buyers.append(Trader(hid, a, holders.create_token(s, u)[1]))
            wallets.deposit(s, op, hid, 10**10)
    return World(op, buyers, sellers)


# ----------------------------------------------------------------------------------- SQL counter

class SqlCounter:
    """Counts (and times) every statement on an engine while `on`; keyed by verb and table."""

    def __init__(self, thread: int | None = None) -> None:
        self.on = False
        self.thread = thread     # count only this thread's statements (None: all)
        self.n: Counter[str] = Counter()
        self.t: dict[str, float] = defaultdict(float)
        self._t0: dict[int, float] = {}

    @staticmethod
    def key(statement: str) -> str:
        s = " ".join(statement.split())
        verb = s.split(" ", 1)[0].upper()
        m = None
        if verb == "SELECT":
            m = re.search(r"\bFROM\s+(\w+)", s, re.I)
            if re.search(r"FOR (NO KEY )?(KEY SHARE|UPDATE|SHARE)", s, re.I):
                verb = "SELECT..FOR UPDATE/KEY SHARE"
        elif verb == "INSERT":
            m = re.search(r"INTO\s+(\w+)", s, re.I)
        elif verb == "UPDATE":
            m = re.search(r"UPDATE\s+(\w+)", s, re.I)
        elif verb == "DELETE":
            m = re.search(r"FROM\s+(\w+)", s, re.I)
        return f"{verb} {m.group(1) if m else ''}".strip()

    def attach(self, engine: Engine) -> None:
        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            if self.on and (self.thread is None or threading.get_ident() == self.thread):
                self._t0[id(cursor)] = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            if self.on and (self.thread is None or threading.get_ident() == self.thread):
                t0 = self._t0.pop(id(cursor), None)
                k = self.key(statement) + (" (executemany)" if many else "")
                self.n[k] += 1
                if t0 is not None:
                    self.t[k] += time.perf_counter() - t0

    def reset(self) -> None:
        self.n.clear()
        self.t.clear()


# ------------------------------------------------------------------------------- phase 1: entry

def wait_http(port: int, proc: subprocess.Popen[bytes], log: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}:\n" + open(log).read()[-3000:])
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", f"/api/v1/instruments/{ENTRY}")
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"gunicorn did not answer within {timeout} s:\n" + open(log).read()[-3000:])


def wait_engine(proc: subprocess.Popen[bytes], log: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"run-engine exited with {proc.returncode}:\n" + open(log).read()[-3000:])
        with open(log) as f:
            if "sequencer running" in f.read():
                return
        time.sleep(0.1)
    raise SystemExit("run-engine did not start:\n" + open(log).read()[-3000:])


def start_loadgen(args: argparse.Namespace, port: int, w: World, procs: Procs, tmp: str,
                  path: str) -> tuple[subprocess.Popen[bytes], str]:
    """The load generator process (`--_loadgen`), POSTing orders to `path`; returns it and its output file."""
    cfg = {"port": port, "clients": args.clients, "duration": args.duration, "warmup": args.warmup,
           "symbol": ENTRY, "path": path, "buyers": [t.token for t in w.buyers],
           "sellers": [t.token for t in w.sellers]}
    cfg_path, out_path = os.path.join(tmp, "loadgen.json"), os.path.join(tmp, "loadgen.out.json")
    with contextlib.suppress(FileNotFoundError):
        os.remove(out_path)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    lg = procs.start("loadgen", [sys.executable, os.path.abspath(__file__), "--_loadgen", cfg_path, out_path],
                     dict(os.environ), os.path.join(tmp, "loadgen.log"))
    return lg, out_path


def wait_loadgen(args: argparse.Namespace, lg: subprocess.Popen[bytes], out_path: str, procs: Procs, tmp: str,
                 also: Sequence[subprocess.Popen[bytes]] = ()) -> dict[str, Any]:
    try:
        lg.wait(args.duration + args.warmup + 180)
    except subprocess.TimeoutExpired:
        procs.stop(lg)
        raise SystemExit("the load generator did not finish") from None
    for sp in also:
        sp.wait(30)
    if lg.returncode != 0 or not os.path.exists(out_path):
        raise SystemExit("load generator failed:\n" + open(os.path.join(tmp, "loadgen.log")).read()[-3000:])
    with open(out_path) as f:
        res: dict[str, Any] = json.load(f)
    return res


def gunicorn_argv(args: argparse.Namespace, port: int, app: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", str(args.workers), "--threads",
            str(args.threads), "-b", f"127.0.0.1:{port}", "--keep-alive", "30", "--log-level", "warning", app]


def phase_floor(args: argparse.Namespace, url: str, w: World, procs: Procs, tmp: str) -> dict[str, Any]:
    """The peer of phase 1: `bench/http_floor.py` (parse, one INSERT, commit, answer) on the same
    gunicorn settings, hit by the same load generator: what order entry cannot beat on this machine."""
    from bench import http_floor

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    http_floor.create_table(dsn)
    port = free_port()
    log = os.path.join(tmp, "floor.log")
    argv = gunicorn_argv(args, port, "bench.http_floor:create_app()")
    print(f"# phase 1b (floor): {' '.join(argv[1:])}", flush=True)
    gun = procs.start("floor", argv, dict(os.environ, FLOOR_DSN=dsn, PYTHONPATH=_ROOT), log)
    deadline = time.monotonic() + 60
    while True:   # up when a POST answers
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("POST", "/floor/orders", body="{}", headers={"Authorization": "Bearer x",
                                                                 "Content-Type": "application/json"})
            c.getresponse().read()
            c.close()
            break
        except OSError:
            if gun.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the floor app did not start:\n" + open(log).read()[-3000:]) from None
            time.sleep(0.2)
    lg, out_path = start_loadgen(args, port, w, procs, tmp, "/floor/orders")
    res = wait_loadgen(args, lg, out_path, procs, tmp)
    procs.stop(gun)
    res["orders_per_s"] = res["accepted"] / args.duration
    return res


def phase_entry(args: argparse.Namespace, url: str, w: World, procs: Procs, tmp: str) -> dict[str, Any]:
    env = dict(os.environ, DATABASE_URL=url, EMBEDDED_SEQUENCER="0", AUDIT_SEALER_INTERVAL_S="0",
               FLASK_APP="web", PYTHONPATH=_ROOT)
    port = free_port()
    glog, elog = os.path.join(tmp, "gunicorn.log"), os.path.join(tmp, "engine.log")
    gargv = gunicorn_argv(args, port, "web:create_app()")
    eargv = [sys.executable, "-m", "flask", "--app", "web", "exchange", "run-engine", "--poll", "0.5"]
    print(f"# phase 1: {' '.join(gargv[1:])}  +  {' '.join(eargv[1:])}", flush=True)
    engine_p = procs.start("engine", eargv, env, elog)
    gun = procs.start("gunicorn", gargv, env, glog)
    wait_engine(engine_p, elog)
    wait_http(port, gun, glog)
    lg, out_path = start_loadgen(args, port, w, procs, tmp, "/api/v1/orders")
    spies: dict[str, subprocess.Popen[bytes]] = {}
    spy_exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if args.py_spy and os.path.exists(spy_exe):
        time.sleep(0.5 + args.warmup)
        # one gunicorn worker, sampled (on-CPU only) for most of the timed window
        kids = subprocess.run(["pgrep", "-P", str(gun.pid)], capture_output=True, text=True).stdout.split()
        for name, pid in (("worker", kids[0] if kids else None),):
            if pid:
                spies[name] = subprocess.Popen(
                    [spy_exe, "record", "-p", pid, "-d", str(max(1, int(args.duration) - 1)), "-f", "raw",
                     "-o", os.path.join(tmp, f"{name}.folded"), "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = wait_loadgen(args, lg, out_path, procs, tmp, list(spies.values()))
    # let the engine finish what is queued, then stop both servers
    procs.stop(gun)
    t0 = time.monotonic()
    eng = create_engine(url)
    with eng.connect() as c:
        while time.monotonic() - t0 < 60:
            left = c.execute(text("SELECT count(*) FROM order_commands WHERE status = 'pending'")).scalar()
            c.rollback()
            if not left:
                break
            time.sleep(0.1)
        res["db_trades"] = c.execute(text(
            "SELECT count(*) FROM trades t JOIN instruments i ON i.id = t.instrument_id WHERE i.symbol = :s"),
            {"s": ENTRY}).scalar()
        res["db_orders"] = dict(c.execute(text(
            "SELECT o.status, count(*) FROM orders o JOIN instruments i ON i.id = o.instrument_id "
            "WHERE i.symbol = :s GROUP BY o.status"), {"s": ENTRY}).all())
        res["db_orders"] = {str(k): v for k, v in res["db_orders"].items()}
    eng.dispose()
    procs.stop(engine_p)
    res["orders_per_s"] = res["accepted"] / args.duration
    res["pyspy"] = {name: os.path.join(tmp, f"{name}.folded") for name in spies}
    return res


def summarise_pyspy(path: str, top: int = 22) -> list[str]:
    """Inclusive share of frames of ours (and a few library ones) in a py-spy raw (folded) profile."""
    if not path or not os.path.exists(path):
        return []
    total = 0
    incl: Counter[str] = Counter()
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        total += k
        seen = set()
        for fr in stack.split(";"):
            m = re.match(r"(\w+) \((?:.*/)?((?:web|exchange|registry|matching)/[\w/]+\.py)", fr)
            name = f"{m.group(2)}:{m.group(1)}" if m else None
            if not name:
                m2 = re.match(r"(\w+) \(.*/(sqlalchemy|psycopg|flask|gunicorn|werkzeug|marshmallow)/", fr)
                name = f"[{m2.group(2)}] {m2.group(1)}" if m2 and m2.group(1) in (
                    "commit", "execute", "_execute_context", "flush", "_autoflush", "sleep", "wait", "handle_request",
                    "full_dispatch_request", "dispatch_request", "_compile_w_cache", "load", "dump", "_emit_update_statements",
                    "_emit_insert_statements") else None
            if name and name not in seen:
                seen.add(name)
                incl[name] += k
    return [f"{100 * v / total:5.1f}%  {k}" for k, v in incl.most_common(top)] if total else []


# --------------------------------------------------------------------------- phase 2: settlement

def place_many(factory: sessionmaker[Session], traders: list[Trader], side: str, n: int, price: int,
               chunk: int = 250) -> float:
    t0 = time.perf_counter()
    for i0 in range(0, n, chunk):
        with factory() as s, s.begin():
            for i in range(i0, min(n, i0 + chunk)):
                t = traders[i % len(traders)]
                orders.place_order(s, t.actor, orders.OrderRequest(instrument=SETTLE, side=side, qty_kg=1000,
                                                                   price=price))
    return time.perf_counter() - t0


ROW_TABLES = ("trades", "journals", "postings", "transfers", "movements", "blocks", "audit_records")


def row_counts(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as s:
        return {t: int(s.scalar(text(f"SELECT count(*) FROM {t}")) or 0) for t in ROW_TABLES}


def backend_cpu(eng: Engine) -> dict[int, float]:
    """CPU seconds (user + system, from /proc) of every PostgreSQL backend connected to the bench
    database but the one asking (`eng` must not be the measured engine: its pool would hand out the
    very connection to be measured); empty if the server is not on this machine."""
    with eng.connect() as c:
        pids = list(c.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND pid <> pg_backend_pid()")).scalars())
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def phase_settle(args: argparse.Namespace, url: str, w: World) -> dict[str, Any]:
    eng = create_engine(url)
    counter = SqlCounter()
    counter.attach(eng)
    factory = sessionmaker(bind=eng, expire_on_commit=False)
    n = args.trades
    place_sells = place_many(factory, w.sellers, "sell", n, REF_PRICE)
    seq = Sequencer(factory)
    t0 = time.perf_counter()
    rested = seq.run_once()
    rest_s = time.perf_counter() - t0
    place_buys = place_many(factory, w.buyers, "buy", n, REF_PRICE)
    with factory() as s:
        before = s.scalar(select(func.count()).select_from(Trade)) or 0
    rows0 = row_counts(factory)
    counter.reset()
    counter.on = True
    watch = create_engine(url, poolclass=NullPool)
    pg0 = backend_cpu(watch)
    t0, cpu0 = time.perf_counter(), time.process_time()
    applied = seq.run_once()
    drain_s, client_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    pg1 = backend_cpu(watch)
    watch.dispose()
    counter.on = False
    server_cpu_s = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
    with factory() as s:
        trades = (s.scalar(select(func.count()).select_from(Trade)) or 0) - before
    rows1 = row_counts(factory)
    prof = None
    if args.profile:   # untimed: the same drain again, smaller, under cProfile
        import cProfile
        m = min(n, 1000)
        place_many(factory, w.sellers, "sell", m, REF_PRICE)
        seq.run_once()
        place_many(factory, w.buyers, "buy", m, REF_PRICE)
        prof = cProfile.Profile()
        prof.enable()
        seq.run_once()
        prof.disable()
    eng.dispose()
    res = {"n": n, "place_sells_s": place_sells, "rest_s": rest_s, "rested": rested, "place_buys_s": place_buys,
           "applied": applied, "drain_s": drain_s, "client_cpu_s": client_cpu_s,
           "server_cpu_s": server_cpu_s if pg1 else None, "trades": trades, "trades_per_s": trades / drain_s,
           "rows": {t: rows1[t] - rows0[t] for t in ROW_TABLES}, "sql_n": dict(counter.n), "sql_t": dict(counter.t), "entry_orders_per_s_inproc": 2 * n / (
               place_sells + place_buys)}
    if prof is not None:
        import io
        import pstats
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(
            r"exchange/|registry/|matching/|sqlalchemy/orm/session.py:.*\(commit|flush\)", 30)
        res["cprofile"] = buf.getvalue()
    return res


# ------------------------------------------------------------------------------ phase 3: pgbench

def pgbench_bin() -> str | None:
    for cand in [shutil.which("pgbench"), *sorted(
            __import__("glob").glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)]:
        if cand and os.path.exists(cand):
            return cand
    return None


def phase_pgbench(args: argparse.Namespace, url: str, tmp: str) -> dict[str, Any]:
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(text("CREATE TABLE xbench_pgbench (id bigserial PRIMARY KEY, v integer NOT NULL, "
                       "at timestamptz NOT NULL DEFAULT now())"))
    eng.dispose()
    u = make_url(url)
    exe = pgbench_bin()
    if exe:
        script = os.path.join(tmp, "insert.sql")
        with open(script, "w") as f:
            f.write("\\set v random(1, 1000000)\nINSERT INTO xbench_pgbench (v) VALUES (:v);\n")
        argv = [exe, "-n", "-c", str(args.clients), "-j", "2", "-T", str(max(1, int(round(args.duration)))),
                "-f", script, "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres",
                u.database or ""]
        env = dict(os.environ)
        if u.password:
            env["PGPASSWORD"] = u.password
        print(f"# phase 3: {' '.join(argv[1:])}", flush=True)
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.duration + 120)
        m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
        if out.returncode != 0 or not m:
            raise SystemExit(f"pgbench failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        lat = re.search(r"latency average = ([\d.]+) ms", out.stdout)
        return {"tool": "pgbench", "tps": float(m.group(1)), "lat_avg_ms": float(lat.group(1)) if lat else None,
                "cmd": " ".join(argv[1:])}
    # An equivalent loop: N connections, one INSERT + COMMIT per transaction.
    import psycopg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    stop_at = time.monotonic() + args.duration
    counts = [0] * args.clients

    def run(i: int) -> None:
        with psycopg.connect(dsn) as c:
            while time.monotonic() < stop_at:
                c.execute("INSERT INTO xbench_pgbench (v) VALUES (%s)", (i,))
                c.commit()
                counts[i] += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(args.clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"tool": "python loop (psycopg)", "tps": sum(counts) / args.duration, "lat_avg_ms": None, "cmd": ""}


# ------------------------------------------------------------------------ profile of an order POST

def profile_post(url: str, w: World, n: int) -> dict[str, Any]:
    """Order POSTs through the Flask test client against the bench database, the sequencer as a
    thread of this process; the parts of each request timed by wrapping the functions involved."""
    import web.api.core as core
    import web.api.exchange_routes as routes
    from web import create_app
    from web.extensions import db

    acc: dict[str, float] = defaultdict(float)
    cnt: Counter[str] = Counter()

    def wrap(mod: Any, name: str, label: str) -> Any:
        orig = getattr(mod, name)

        def f(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                acc[label] += time.perf_counter() - t0
                cnt[label] += 1
        setattr(mod, name, f)
        return orig

    restore = [(core, "authenticate", wrap(core, "authenticate", "auth (token lookup)")),
               (core, "_load_body", wrap(core, "_load_body", "body validation (marshmallow)")),
               (routes.orders, "place_order", wrap(routes.orders, "place_order", "place_order (total)")),
               (orders.wallets, "hold", wrap(orders.wallets, "hold", "  of which wallets.hold (buy)")),
               (orders.units, "lock_units", wrap(orders.units, "lock_units", "  of which units.lock_units (sell)")),
               (orders.audit, "record", wrap(orders.audit, "record", "  of which audit.record")),
               (routes, "_await", wrap(routes, "_await", "wait for the sequencer + order view"))]
    counter = SqlCounter(thread=threading.get_ident())
    try:
        app = create_app(_cfg(url) | {"ORDER_WAIT_S": 2.0})
        with app.app_context():
            counter.attach(db.engine)
            seq = Sequencer(sessionmaker(bind=db.engine))
            app.extensions["sequencer"] = seq
            seq.start(idle_s=0.05)
            orig_commit = Session.commit

            def commit(self: Session) -> None:
                t0 = time.perf_counter()
                try:
                    orig_commit(self)
                finally:
                    if threading.current_thread() is threading.main_thread():
                        acc["session.commit (all in the request)"] += time.perf_counter() - t0

            Session.commit = commit  # type: ignore[method-assign]
            client = app.test_client()
            rng = random.Random(SEED)
            total = 0.0
            try:
                for i in range(n):
                    side = "buy" if i % 2 == 0 else "sell"
                    t = (w.buyers if side == "buy" else w.sellers)[i % len(w.buyers)]
                    off = rng.randint(1, 50) if rng.random() >= 0.15 else -50
                    price = REF_PRICE - off if side == "buy" else REF_PRICE + off
                    counter.on = True
                    t0 = time.perf_counter()
                    r = client.post("/api/v1/orders", headers={"Authorization": f"Bearer {t.token}"},
                                    json={"instrument": ENTRY, "side": side, "qty_kg": 1000, "price": price})
                    total += time.perf_counter() - t0
                    assert r.status_code == 201, r.get_data(as_text=True)
            finally:
                Session.commit = orig_commit  # type: ignore[method-assign]
                seq.stop()
                counter.on = False
            db.session.remove()
            db.engine.dispose()
    finally:
        for mod, name, orig in restore:
            setattr(mod, name, orig)
    return {"n": n, "total_ms": total * 1000 / n, "parts": {k: v * 1000 / n for k, v in acc.items()},
            "sql_n": dict(counter.n)}


# ---------------------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1/postgres",
                    help="a PostgreSQL server (the bench creates and drops a database of its own there)")
    ap.add_argument("--duration", type=float, default=20.0, help="timed seconds of order entry (and of pgbench)")
    ap.add_argument("--warmup", type=float, default=2.0, help="untimed seconds of order entry first")
    ap.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    ap.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (gthread)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent load-generator connections")
    ap.add_argument("--traders", type=int, default=64, help="buyers and as many sellers")
    ap.add_argument("--trades", type=int, default=5000, help="trades settled in phase 2")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the smoke test")
    ap.add_argument("--profile", action="store_true",
                    help="also time the parts of an order POST in-process and cProfile the settlement drain")
    ap.add_argument("--profile-orders", type=int, default=400, help="order POSTs timed by --profile")
    ap.add_argument("--py-spy", action="store_true", help="py-spy one gunicorn worker during phase 1")
    ap.add_argument("--only", choices=["settle"],
                    help="run only this phase (settle: the world and phase 2; the other measures print as 0)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.clients, args.traders, args.trades = 2.0, 0.5, 4, 8, 200
        args.workers, args.threads = 2, 2
    if not is_pg(args.database_url):
        ap.error("--database-url must be PostgreSQL")
    started = time.perf_counter()
    print(f"# exchange bench: {args.duration:g} s of order entry ({args.clients} clients, gunicorn "
          f"{args.workers}x{args.threads} gthread), {args.trades} trades settled, pgbench {args.duration:g} s")
    print(f"# python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    db = Database(args.database_url, args.keep)
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="tanhui_xbench_")

    def cleanup() -> None:
        procs.stop_all()
        with contextlib.suppress(Exception):
            db.drop()
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    prev_term = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res: dict[str, Any] = {}
    try:
        url = db.create()
        migrate(url)
        eng = create_engine(url)
        with eng.connect() as c:
            res["server"] = str(c.execute(text("SELECT version()")).scalar()).split(" on ")[0]
            res["sync_commit"] = c.execute(text("SHOW synchronous_commit")).scalar()
        eng.dispose()
        t0 = time.perf_counter()
        per_seller = max(2_000_000, (args.trades // args.traders + 2) * 1000 + 50_000_000)
        w = build_world(sessionmaker(bind=create_engine(url), expire_on_commit=False), args.traders, per_seller)
        print(f"# {res['server']}, synchronous_commit={res['sync_commit']}; world built in "
              f"{time.perf_counter() - t0:.1f} s ({args.traders} buyers, {args.traders} sellers)", flush=True)
        if args.only == "settle":
            res["entry"] = {"orders_per_s": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0, "pending": 0, "accepted": 0}
        else:
            res["entry"] = phase_entry(args, url, w, procs, tmp)
        e = res["entry"]
        if not args.only:
            print(f"# phase 1: {e['requests']} requests, {e['accepted']} accepted, codes {e['codes']}, "
                  f"answer status {e['statuses']}, still pending {e['pending']}; engine left "
                  f"{e['db_trades']} trades, orders {e['db_orders']}", flush=True)
        if e.get("errors"):
            print(f"# phase 1 errors (first): {e['errors']}")
        for name, path in (e.get("pyspy") or {}).items():
            print(f"# py-spy {name} (on-CPU samples, inclusive share):")
            for line in summarise_pyspy(path):
                print(f"#   {line}")
        st = res["settle"] = phase_settle(args, url, w)
        print(f"# phase 2: placed {st['n']} sells in {st['place_sells_s']:.1f} s and {st['n']} buys in "
              f"{st['place_buys_s']:.1f} s in-process ({st['entry_orders_per_s_inproc']:.0f} orders/s, one "
              f"session, no HTTP); resting the sells: {st['rest_s']:.2f} s; draining the buys: "
              f"{st['applied']} commands, {st['trades']} trades in {st['drain_s']:.2f} s", flush=True)
        tn = max(1, st["trades"])
        if st["server_cpu_s"] is not None:
            print(f"# CPU per trade during the drain: {st['client_cpu_s'] * 1000 / tn:.3f} ms in this process, "
                  f"{st['server_cpu_s'] * 1000 / tn:.3f} ms in the PostgreSQL backends "
                  f"({(st['client_cpu_s'] + st['server_cpu_s']) * 1000 / tn:.3f} ms in all)")
        else:
            print(f"# CPU per trade during the drain: {st['client_cpu_s'] * 1000 / tn:.3f} ms in this process")
        print("# rows inserted per trade during the drain: " + ", ".join(
            f"{t} {v / tn:.2f}" for t, v in st["rows"].items()))
        print(f"# SQL statements per trade during the drain (COPY, sent on the driver itself, not counted): "
              f"{sum(st['sql_n'].values()) / tn:.3f} "
              f"({sum(st['sql_t'].values()) * 1000 / tn:.2f} ms in the database driver per trade, "
              f"{st['drain_s'] * 1000 / tn:.2f} ms wall per trade)")
        for k, v in sorted(st["sql_n"].items(), key=lambda kv: -kv[1]):
            print(f"#   {v / tn:6.3f} x  {st['sql_t'].get(k, 0) * 1000 / tn:6.3f} ms  {k}")
        if args.profile:
            print(f"# cProfile of a second, untimed drain of {min(st['n'], 1000)} trades (cumulative):")
            for line in st["cprofile"].splitlines():
                if line.strip():
                    print("#   " + line)
        if args.only:
            res["floor"] = {"orders_per_s": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
            res["pgbench"] = {"tool": "pgbench", "tps": 0.0}
        else:
            fl = res["floor"] = phase_floor(args, url, w, procs, tmp)
            print(f"# phase 1b (floor: parse, one INSERT, commit, answer): {fl['requests']} requests, "
                  f"{fl['accepted']} accepted ({fl['orders_per_s']:.0f}/s), codes {fl['codes']}, p50 "
                  f"{fl['p50']:.1f} ms, p99 {fl['p99']:.1f} ms", flush=True)
            res["pgbench"] = phase_pgbench(args, url, tmp)
        pg = res["pgbench"]
        if not args.only:
            print(f"# phase 3: {pg['tool']}: {pg['tps']:.0f} one-row insert transactions/s with {args.clients} "
                  f"connections" + (f", average latency {pg['lat_avg_ms']} ms" if pg["lat_avg_ms"] else ""),
                  flush=True)
        if args.profile and not args.only:
            pp = res["post_profile"] = profile_post(url, w, args.profile_orders)
            print(f"# order POST in-process (Flask test client, one at a time, sequencer thread): "
                  f"{pp['total_ms']:.2f} ms per POST; parts (ms per POST):")
            for k, v in pp["parts"].items():
                print(f"#   {v:7.2f}  {k}")
            print(f"# SQL statements per POST (request thread): {sum(pp['sql_n'].values()) / pp['n']:.1f}")
            for k, v in sorted(pp["sql_n"].items(), key=lambda kv: -kv[1]):
                print(f"#   {v / pp['n']:6.2f} x  {k}")
    finally:
        cleanup()
        atexit.unregister(cleanup)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, prev_term)

    e, st, pg, fl = res["entry"], res["settle"], res["pgbench"], res["floor"]
    print(f"# total {time.perf_counter() - started:.1f} s")
    print("| measure | value | target |")
    print("|---|---:|---:|")
    print(f"| accepted orders/s (HTTP, {args.clients} clients) | {e['orders_per_s']:.0f} | >= 1,000 |")
    print(f"| order POST p50 / p99 / max ms | {e['p50']:.1f} / {e['p99']:.1f} / {e['max']:.1f} | p99 < 100 |")
    print(f"| answers still pending | {e['pending']} of {e['accepted']} | |")
    print(f"| floor: same gunicorn, one INSERT + commit per POST: orders/s | {fl['orders_per_s']:.0f} | |")
    print(f"| floor POST p50 / p99 / max ms | {fl['p50']:.1f} / {fl['p99']:.1f} / {fl['max']:.1f} | |")
    print(f"| trades settled/s (sequencer) | {st['trades_per_s']:.0f} | >= 5,000 |")
    print(f"| {pg['tool']} one-row inserts/s | {pg['tps']:.0f} | |")
    ratio = e["orders_per_s"] / pg["tps"] if pg["tps"] else 0.0 if args.only else float("nan")
    res["vs_pgbench"] = ratio
    res["vs_floor"] = e["orders_per_s"] / fl["orders_per_s"] if fl["orders_per_s"] else 0.0 if args.only else float("nan")
    print(f"BENCH exchange orders_per_s={e['orders_per_s']:.0f} p99_ms={e['p99']:.1f} "
          f"trades_per_s={st['trades_per_s']:.0f} vs_pgbench={ratio:.3f} vs_floor={res['vs_floor']:.3f} "
          f"floor_orders_per_s={fl['orders_per_s']:.0f} floor_p99_ms={fl['p99']:.1f}", flush=True)
    return res


if __name__ == "__main__":
    main()
