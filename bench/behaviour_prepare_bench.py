"""The preparing process's work alone, no database: CPU microseconds a row to read, prepare, pack and
pickle a generated file (`behaviour_bench.generate`) as `registry.behaviour_prepare` does for PostgreSQL.

    .venv/bin/python bench/behaviour_prepare_bench.py [--rows 200000] [--way quick|long]

`quick` is `ChunkPacker` (its compiled build if built, unless TANHUI_BEHAVIOUR_PURE=1); `long` is every
row through `RowPreparer.prepare` then `Packer.pack` (the way before the quick path). The last line:
``BENCH behaviour_prepare way=<way> impl=<native|pure> us_per_row=<CPU µs>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from behaviour_bench import TYPES, generate

from registry import behaviour_prepare as bp
from registry.behaviour_fast import ChunkPacker
from registry.behaviour_rules import RowPreparer, Rules
from registry.factors import shipped_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--way", choices=("quick", "long"), default="quick")
    args = ap.parse_args()
    received = dt.datetime(2026, 12, 1, 12, 0, 0, 417263)   # times with microseconds, as the bench's
    rules = Rules()
    preparer = RowPreparer(rules, region="CN-GD-SZ", allowed=frozenset(TYPES), received_at=received,
                           factors=shipped_table())
    with tempfile.TemporaryDirectory(prefix="tanhui_prepare_bench_") as tmp:
        path = os.path.join(tmp, "behaviour.csv")
        generate(path, args.rows, 200_000, received, 20261123)
        with open(path, "rb") as f:
            data = f.read()
    out = open(os.devnull, "wb")   # noqa: SIM115
    cls = bp.chunk_packer() if args.way == "quick" else ChunkPacker
    impl = "native" if cls is not ChunkPacker else "pure"

    def send(cols: tuple[object, ...]) -> None:
        bp._send(out, ("packed", 0, cols))

    def chunker(preparer: RowPreparer, packer: bp.Packer, names: list[str]) -> ChunkPacker:
        c = cls(preparer, packer, names)
        if args.way == "long":
            c.quick = False
        return c   # type: ignore[no-any-return]

    original = bp.chunk_packer
    bp.chunk_packer = lambda: chunker   # type: ignore[assignment,return-value]
    try:
        c0 = time.process_time()
        bp._send_packed(io.BytesIO(data), lambda n: None, preparer, bp.Packer(rules), 0, 20_000, send)
        us = (time.process_time() - c0) * 1e6 / args.rows
    finally:
        bp.chunk_packer = original
    print(f"BENCH behaviour_prepare way={args.way} impl={impl if args.way == 'quick' else 'pure'} "
          f"us_per_row={us:.2f}")


if __name__ == "__main__":
    main()
