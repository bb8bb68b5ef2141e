"""Smoke test: the benchmark runs end to end on a short stream (peers that are absent are skipped)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "matching_bench.py")


def load_bench() -> object:
    spec = importlib.util.spec_from_file_location("matching_bench", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["matching_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    mb = load_bench()
    res = mb.main(["--commands", "20000", "--peer-commands", "3000"])  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("BENCH matching ops_per_s=") and "p99_us=" in last
    assert res["ours"]["n"] == 20000 and res["ours"]["ops"] > 0
    for peer in ("lightmatchingengine", "fastlob", "pyorderbook"):
        assert f"vs_{peer}=" in last


def test_stream_is_deterministic_and_mixed() -> None:
    mb = load_bench()
    a = mb.generate(20000)  # type: ignore[attr-defined]
    assert a == mb.generate(20000)  # type: ignore[attr-defined]
    ops = [c[0] for c in a]
    share = {op: ops.count(op) / len(ops) for op in set(ops)}
    assert 0.45 < share[0] < 0.55 and 0.25 < share[3] < 0.35
