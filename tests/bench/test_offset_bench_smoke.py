"""Smoke test: the offset benchmark runs end to end at a tiny size on the suite's database
(PostgreSQL when DATABASE_URL names it, with two worker processes and a database of its own on that
server; otherwise SQLite with one worker), in one transaction an order (the default) and in three (--steps),
and ends with a well-formed BENCH line."""

from __future__ import annotations

import os
import re

import pytest

LINE = re.compile(r"^BENCH offset offsets_per_s=(\d+\.\d) verify_p99_ms=(\d+\.\d\d)$")


@pytest.mark.parametrize("steps", [False, True], ids=["one-transaction", "steps"])
def test_offset_bench_smoke(capsys: pytest.CaptureFixture[str], steps: bool) -> None:
    import bench.offset_bench as ob

    url = os.environ.get("DATABASE_URL", "")
    pg = url.startswith(("postgres://", "postgresql"))
    args = ["--database-url", url, "--workers", "2"] if pg else ["--database-url", "sqlite://", "--workers", "1"]
    res = ob.main(args + ["--orders", "6", "--warmup", "2"] + (["--steps"] if steps else []))
    lines = capsys.readouterr().out.strip().splitlines()
    m = LINE.match(lines[-1])
    assert m, lines[-1]
    rate, vp99 = map(float, m.groups())
    assert res["orders"] == (12 if pg else 6)
    assert rate == pytest.approx(res["offsets_per_s"], abs=0.05) and rate > 0
    assert vp99 == pytest.approx(res["verify_p99_ms"], abs=0.005) and vp99 > 0
    phases = ("quote", "pay", "fill", "certificate", "pdf") if steps else ("place", "certificate", "pdf")
    assert all(res["phases_p50"][p] > 0 for p in phases) and set(res["phases_p50"]) == {*phases, "order"}
    assert any(line.startswith("# verify ") for line in lines)
    # the statements of the warm-up order counted (the first fills caches), by phase
    counted = next(line for line in lines if line.startswith("# SQL statements per order"))
    assert all(f" {p} " in counted for p in phases[:-1]) and res["statements_per_order"] > 0
