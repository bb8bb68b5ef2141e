"""Smoke test: the exchange benchmark runs end to end in its tiny mode (gunicorn, the run-engine
process, a load-generator process, the settlement drain and pgbench or its Python equivalent) on the
PostgreSQL server of DATABASE_URL (it creates and drops a database of its own there) and ends with a
well-formed BENCH line. Skipped on SQLite and when gunicorn is not installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "exchange_bench.py")
LINE = re.compile(r"^BENCH exchange orders_per_s=(\d+) p99_ms=(\d+\.\d) trades_per_s=(\d+) "
                  r"vs_pgbench=(\d+\.\d\d\d) vs_floor=(\d+\.\d\d\d) floor_orders_per_s=(\d+) "
                  r"floor_p99_ms=(\d+\.\d)$")


@pytest.mark.postgres
def test_exchange_bench_smoke() -> None:
    pytest.importorskip("gunicorn")
    url = os.environ["DATABASE_URL"]
    out = subprocess.run([sys.executable, BENCH, "--smoke", "--database-url", url], capture_output=True,
                         text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    m = LINE.match(lines[-1])
    assert m, lines[-1]
    orders_per_s, p99, trades_per_s, ratio, vs_floor, floor_rate, floor_p99 = m.groups()
    assert int(orders_per_s) > 0 and float(p99) > 0 and int(trades_per_s) > 0 and float(ratio) > 0
    assert float(vs_floor) > 0 and int(floor_rate) > 0 and float(floor_p99) > 0
    assert "phase 1b (floor" in out.stdout
    assert "trades in" in out.stdout and "SQL statements per trade" in out.stdout
    # it cleaned up after itself: no bench database left behind
    assert "# kept database" not in out.stdout
