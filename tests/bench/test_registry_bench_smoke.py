"""Smoke test: the registry benchmark runs end to end at a tiny size on the suite's database
(PostgreSQL when DATABASE_URL names it: the bench creates and drops databases of its own on that
server; otherwise SQLite files in a temporary directory) and ends with a well-formed BENCH line."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from types import ModuleType

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "registry_bench.py")
LINE = re.compile(r"^BENCH registry p99_ms_1k=(\d+\.\d\d) p99_ms_1m=(\d+\.\d\d) ratio=(\d+\.\d\d)$")


def load_bench() -> ModuleType:
    try:
        import bench.registry_bench as mod  # rootdir import (pythonpath = .)
        return mod
    except ImportError:
        spec = importlib.util.spec_from_file_location("registry_bench", BENCH)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["registry_bench"] = mod
        spec.loader.exec_module(mod)
        return mod


def test_registry_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    rb = load_bench()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql")):
        url = "sqlite://"
    res = rb.main(["--database-url", url, "--blocks", "5000", "--small", "500", "--ops", "20"])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    m = LINE.match(lines[-1])
    assert m, lines[-1]
    p1k, p1m, ratio = map(float, m.groups())
    assert p1k > 0 and p1m > 0 and ratio == pytest.approx(p1m / p1k, abs=0.01)
    assert lines[-2].startswith("BENCH registry-transfer p99_ms_1k=")
    assert res["blocks"] == [500, 5000]   # exactly the asked registry sizes when timing starts
    assert res["retire_small"]["n"] == res["retire_large"]["n"] == 20
    assert res["transfer_large"]["n"] == 20


def test_plan_is_deterministic_and_feasible() -> None:
    rb = load_bench()
    a = rb.Plan.make(1000, 500, 50)
    assert a == rb.Plan.make(1000, 500, 50)
    assert a.timed_blocks == 300 and len(a.setup_sizes) == 600 and len(a.retire_q) == 550
    # the timed account holds more than it will ever retire
    assert sum(a.setup_sizes[0::2]) > sum(a.retire_q) + max(a.transfer_q)
