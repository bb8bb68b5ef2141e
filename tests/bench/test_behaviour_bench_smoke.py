"""Smoke test: the behaviour import benchmark runs end to end at a tiny size on the suite's database
(PostgreSQL when DATABASE_URL names it: the bench empties that database, as every test does;
otherwise a SQLite file in a temporary directory) and ends with a well-formed BENCH line."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from types import ModuleType

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "behaviour_bench.py")
LINE = re.compile(r"^BENCH behaviour rows_per_s=(\d+) peak_mb=(\d+) vs_copy=(\d+\.\d{4})$")


def load_bench() -> ModuleType:
    try:
        import bench.behaviour_bench as mod  # rootdir import (pythonpath = .)
        return mod
    except ImportError:
        spec = importlib.util.spec_from_file_location("behaviour_bench", BENCH)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["behaviour_bench"] = mod
        spec.loader.exec_module(mod)
        return mod


def test_behaviour_bench_smoke(capsys: pytest.CaptureFixture[str], template_db: str) -> None:
    bb = load_bench()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql")):
        url = "sqlite://"
    res = bb.main(["--database-url", url, "--rows", "3000", "--members", "300", "--chunk-size", "700"])
    lines = capsys.readouterr().out.strip().splitlines()
    m = LINE.match(lines[-1])
    assert m, lines[-1]
    rate, peak, vs_copy = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert rate > 0 and 0 < peak < 500 and vs_copy > 0
    result, planted = res["result"], res["planted"]
    assert result["rows"] == 3000 and result["accepted"] + result["rejected"] == 3000
    assert sum(planted.values()) >= 30          # ~2% of the rows are planted bad ones
    assert result["reasons"]["invalid"] == planted["invalid"]
    assert result["reasons"]["unknown_user"] == planted["unknown_user"]
