"""Matching-engine benchmark: Tanhui's order book against the order-book packages on PyPI.

    python3 bench/matching_bench.py                      # 1,000,000 commands, all peers installed
    python3 bench/matching_bench.py --commands 20000     # smoke run

One generated stream (fixed seed) of commands on one book: 50% resting limit adds near the touch,
10% marketable limits, 5% IOC limits and market orders, 30% cancels, 5% reduces and replaces. Each
engine gets the same stream translated to its API (a command a peer lacks is mapped to the nearest
equivalent, e.g. IOC = limit + cancel of the remainder, reduce = cancel + add; see PEER_NOTES).

Per engine: throughput from a plain loop over the stream (commands/s), then per-command latency
from a second run on a fresh book with ``time.perf_counter_ns`` around each command (p50, p99,
p99.9). The GC is disabled while timing, for everyone. Slow peers run on a prefix of the stream
(``--peer-commands``); their ratio is against our engine on that same prefix.
The last line is ``BENCH matching ops_per_s=... p99_us=... vs_<peer>=<ratio> ...``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# stream op codes
REST, CROSS, IOC_LIMIT, CANCEL, REDUCE, REPLACE, MARKET_ORDER = range(7)
Cmd = tuple[int, int, int, int, int, int]  # op, order_id, owner, is_buy, qty_lots, price_ticks

TICK = 10  # fen per tonne
LOT = 1000  # kg
MID = 10_000  # ticks: 1,000.00 CNY/t
BAND_TICKS = (MID // 2, MID * 2)

PEER_NOTES = {
    "lightmatchingengine": "assigns its own ids; no IOC/reduce/replace: IOC = add + cancel remainder, "
    "reduce/replace = cancel + add; market = price 0 (it has no collar)",
    "fastlob": "Decimal prices; GTC/FOK/GTD only: IOC and market = GTC at the limit/collar + cancel "
    "remainder; reduce = update(new qty); replace = cancel + add",
    "pyorderbook": "float->Decimal prices, uuid ids, cancel takes the order object; IOC/market = "
    "match at limit/collar + cancel remainder; reduce/replace = cancel + add",
    "orderly_chaos": "C++ core (orderly-chaos); IOC = limit + cancel remainder; replace = cancel + add",
    "limit_order_book": "C++ core (limit-order-book); IOC = limit + cancel remainder; "
    "reduce/replace = cancel + add",
    "cython_orderbook": "Cython (cython-orderbook); assigns its own ids; IOC = limit + cancel; "
    "reduce/replace = cancel + add",
}
NOT_BENCHED = {
    "liquibook": "installs, but its SWIG SimpleOrderBook exposes no add()/cancel(): unusable API",
    "order_book": "order-book is an L2 price-level store (no orders, no matching): incompatible",
}


def generate(n: int, seed: int = 20260131) -> list[Cmd]:
    """The command stream: fixed seed, same for every engine."""
    rnd = random.Random(seed)
    mid = MID
    live: list[int] = []  # ids that were sent as resting orders (some are filled later)
    out: list[Cmd] = []
    next_id = 1
    for i in range(n):
        if i % 64 == 0:
            mid += rnd.choice((-1, 0, 1))
        r = rnd.randrange(100)
        owner = rnd.randrange(1, 1001)
        buy = rnd.randrange(2)
        lots = rnd.randrange(1, 21)
        if r < 50:
            off = 1 + min(rnd.randrange(12), rnd.randrange(12))  # denser near the touch
            price = mid - off if buy else mid + off
            out.append((REST, next_id, owner, buy, lots, price))
            live.append(next_id)
            next_id += 1
        elif r < 60:
            price = mid + 3 if buy else mid - 3
            out.append((CROSS, next_id, owner, buy, lots, price))
            live.append(next_id)
            next_id += 1
        elif r < 65:
            if r < 63:
                price = mid + 2 if buy else mid - 2
                out.append((IOC_LIMIT, next_id, owner, buy, lots, price))
            else:
                out.append((MARKET_ORDER, next_id, owner, buy, lots, 0))
            next_id += 1
        elif r < 95:
            if live:
                j = len(live) - 1 - min(rnd.randrange(len(live)), rnd.randrange(200))
                oid = live[j]
                live[j] = live[-1]
                live.pop()
                out.append((CANCEL, oid, 0, 0, 0, 0))
            else:
                out.append((CANCEL, 0, 0, 0, 0, 0))
        elif live:
            oid = live[len(live) - 1 - rnd.randrange(min(len(live), 200))]
            if r < 97:
                out.append((REDUCE, oid, 0, 0, 1, 0))
            else:
                off = 1 + rnd.randrange(10)
                out.append((REPLACE, oid, 0, 0, 0, mid - off if rnd.randrange(2) else mid + off))
        else:
            out.append((CANCEL, 0, 0, 0, 0, 0))
    return out


# --- engines -----------------------------------------------------------------------------------
# Each factory returns (run_all, run_one): run_all(stream) processes the whole stream; run_one(cmd)
# one command (for latency). Both on a fresh book per factory call.

Runner = tuple[Callable[[list[Cmd]], None], Callable[[Cmd], Any]]
CLEANUP: list[Callable[[], Any]] = []  # peers that start threads register their stop here
PEER_ERRORS: dict[str, int] = {}  # exceptions a peer raised on valid commands (its bugs)


def tanhui(mod: Any) -> Callable[[], Runner]:
    def make() -> Runner:
        book = mod.OrderBook(
            mod.InstrumentSpec(TICK, LOT, LOT, 1_000_000 * LOT), (BAND_TICKS[0] * TICK, BAND_TICKS[1] * TICK)
        )
        place, cancel, reduce, replace = book.place, book.cancel, book.reduce, book.replace
        B, S, M, IOCS, L = mod.BUY, mod.SELL, mod.MARKET, mod.IOC, mod.LIMIT

        def one(c: Cmd) -> Any:
            op = c[0]
            if op <= CROSS:
                return place(c[1], c[2], B if c[3] else S, c[4] * LOT, c[5] * TICK)
            if op == CANCEL:
                return cancel(c[1])
            if op == REDUCE:
                return reduce(c[1], c[4] * LOT)
            if op == REPLACE:
                return replace(c[1], c[5] * TICK)
            if op == IOC_LIMIT:
                return place(c[1], c[2], B if c[3] else S, c[4] * LOT, c[5] * TICK, L, IOCS)
            return place(c[1], c[2], B if c[3] else S, c[4] * LOT, None, M)

        def run(stream: list[Cmd]) -> None:
            for c in stream:
                op = c[0]
                if op <= CROSS:
                    place(c[1], c[2], B if c[3] else S, c[4] * LOT, c[5] * TICK)
                elif op == CANCEL:
                    cancel(c[1])
                elif op == REDUCE:
                    reduce(c[1], c[4] * LOT)
                elif op == REPLACE:
                    replace(c[1], c[5] * TICK)
                elif op == IOC_LIMIT:
                    place(c[1], c[2], B if c[3] else S, c[4] * LOT, c[5] * TICK, L, IOCS)
                else:
                    place(c[1], c[2], B if c[3] else S, c[4] * LOT, None, M)

        return run, one

    return make


def lightmatchingengine_peer() -> Runner:
    from lightmatchingengine.lightmatchingengine import LightMatchingEngine, Side

    eng = LightMatchingEngine()
    ids: dict[int, Any] = {}  # our id -> their order
    sym = "X"

    def add(c: Cmd, price: int) -> Any:
        order, _trades = eng.add_order(sym, price, c[4], Side.BUY if c[3] else Side.SELL)
        return order

    def one(c: Cmd) -> Any:
        op = c[0]
        if op <= CROSS:
            o = add(c, c[5])
            if o.leaves_qty > 0:
                ids[c[1]] = o
        elif op == CANCEL:
            o = ids.pop(c[1], None)
            if o is not None and o.leaves_qty > 0:  # it keeps filled orders in its id map
                eng.cancel_order(o.order_id, sym)
        elif op == REDUCE or op == REPLACE:
            o = ids.pop(c[1], None)
            if o is not None and o.leaves_qty > 0 and eng.cancel_order(o.order_id, sym) is not None:
                price = o.price if op == REDUCE else c[5]
                qty = o.leaves_qty - c[4] if op == REDUCE else o.leaves_qty
                if qty > 0:
                    o2, _t = eng.add_order(sym, price, qty, o.side)
                    if o2.leaves_qty > 0:
                        ids[c[1]] = o2
        elif op == IOC_LIMIT:
            o = add(c, c[5])
            if o.leaves_qty > 0:
                eng.cancel_order(o.order_id, sym)
        else:
            o = add(c, 0)
            if o.leaves_qty > 0:
                eng.cancel_order(o.order_id, sym)

    def run(stream: list[Cmd]) -> None:
        for c in stream:
            one(c)

    return run, one


def fastlob_peer() -> Runner:
    from fastlob import Orderbook, OrderParams, OrderSide, OrderType

    lob = Orderbook("bench")
    lob.start()  # required; it also starts a GTD-expiry thread that wakes every 0.1 s
    CLEANUP.append(lob.stop)
    lob._logger.setLevel(logging.ERROR)  # it logs a warning per failed cancel to stderr otherwise

    def cancel(oid: str) -> Any:
        try:
            return lob.cancel(oid)
        except KeyError:  # fastlob loses price levels of partly filled orders: count and go on
            PEER_ERRORS["fastlob"] = PEER_ERRORS.get("fastlob", 0) + 1
            return None

    ids: dict[int, str] = {}
    BID, ASK, GTC = OrderSide.BID, OrderSide.ASK, OrderType.GTC

    def add(c: Cmd, price: int) -> Any:
        return lob.process(OrderParams(BID if c[3] else ASK, price, c[4], GTC))

    def one_unguarded(c: Cmd) -> Any:
        op = c[0]
        if op <= CROSS:
            r = add(c, c[5])
            ids[c[1]] = r.orderid()
        elif op == CANCEL:
            oid = ids.pop(c[1], None)
            if oid is not None:
                cancel(oid)
        elif op == REDUCE:
            oid = ids.get(c[1])
            if oid is not None:
                st = lob.get_status(oid)
                if st is not None and st[1] > c[4]:
                    try:
                        lob.update(oid, st[1] - c[4])
                    except KeyError:
                        PEER_ERRORS["fastlob"] = PEER_ERRORS.get("fastlob", 0) + 1
        elif op == REPLACE:
            oid = ids.pop(c[1], None)
            if oid is not None:
                st = lob.get_status(oid)
                r = cancel(oid)
                if st is not None and r is not None and r.success() and st[1] > 0:
                    side = BID if c[5] < MID else ASK  # fastlob does not return the side: approximate
                    ids[c[1]] = lob.process(OrderParams(side, c[5], st[1], GTC)).orderid()
        else:
            price = c[5] if op == IOC_LIMIT else (BAND_TICKS[1] if c[3] else BAND_TICKS[0])
            r = add(c, price)
            cancel(r.orderid())

    def one(c: Cmd) -> Any:
        try:
            return one_unguarded(c)
        except (KeyError, IndexError):  # fastlob's own inconsistencies deep in the stream
            PEER_ERRORS["fastlob"] = PEER_ERRORS.get("fastlob", 0) + 1
            return None

    def run(stream: list[Cmd]) -> None:
        for c in stream:
            one(c)

    return run, one


def pyorderbook_peer() -> Runner:
    from pyorderbook import Book, Order, Side

    logging.getLogger("pyorderbook").setLevel(logging.WARNING)
    book = Book()
    ids: dict[int, Any] = {}
    sym = "X"

    def add(side: Any, price: int, qty: int) -> Any:
        o = Order(side, sym, price, qty)
        book.match(o)
        return o

    def drop(o: Any) -> bool:
        if o.quantity > 0 and book.get_order(o.id) is not None:
            book.cancel(o)
            return True
        return False

    def one(c: Cmd) -> Any:
        op = c[0]
        if op <= CROSS:
            ids[c[1]] = add(Side.BID if c[3] else Side.ASK, c[5], c[4])
        elif op == CANCEL:
            o = ids.pop(c[1], None)
            if o is not None:
                drop(o)
        elif op == REDUCE or op == REPLACE:
            o = ids.pop(c[1], None)
            if o is not None and drop(o):
                qty = o.quantity - c[4] if op == REDUCE else o.quantity
                if qty > 0:
                    ids[c[1]] = add(o.side, int(o.price) if op == REDUCE else c[5], qty)
        else:
            price = c[5] if op == IOC_LIMIT else (BAND_TICKS[1] if c[3] else BAND_TICKS[0])
            drop(add(Side.BID if c[3] else Side.ASK, price, c[4]))

    def run(stream: list[Cmd]) -> None:
        for c in stream:
            one(c)

    return run, one


def orderly_chaos_peer() -> Runner:
    import orderly_chaos as oc

    book = oc.LimitOrderBook()
    BUY, SELL = oc.Side.BUY, oc.Side.SELL
    has, cancel = book.has, book.cancel

    def one(c: Cmd) -> Any:
        op = c[0]
        if op <= CROSS:
            book.limit(BUY if c[3] else SELL, c[1], c[4], c[5])
        elif op == CANCEL:
            if has(c[1]):
                cancel(c[1])
        elif op == REDUCE:
            if has(c[1]):
                book.reduce(c[1], c[4])
        elif op == REPLACE:
            if has(c[1]):
                o = book.get(c[1])
                cancel(c[1])
                book.limit(o.side, c[1], o.quantity, c[5])
        elif op == IOC_LIMIT:
            book.limit(BUY if c[3] else SELL, c[1], c[4], c[5])
            if has(c[1]):
                cancel(c[1])
        else:
            book.market(BUY if c[3] else SELL, c[1], c[4])

    def run(stream: list[Cmd]) -> None:
        for c in stream:
            one(c)

    return run, one


def limit_order_book_peer() -> Runner:
    import limit_order_book as lobm

    book = lobm.LimitOrderBook()
    has, cancel, limit = book.has, book.cancel, book.limit
    orders: dict[int, tuple[bool, int, int]] = {}  # it exposes no order query: side, qty, price

    def one(c: Cmd) -> Any:
        op = c[0]
        if op <= CROSS:
            limit(bool(c[3]), c[1], c[4], c[5])
            orders[c[1]] = (bool(c[3]), c[4], c[5])
        elif op == CANCEL:
            if has(c[1]):
                cancel(c[1])
        elif op == REDUCE or op == REPLACE:
            if has(c[1]):
                side, qty, price = orders[c[1]]
                cancel(c[1])
                if op == REDUCE:
                    qty -= c[4]
                else:
                    price = c[5]
                if qty > 0:
                    limit(side, c[1], qty, price)
        elif op == IOC_LIMIT:
            limit(bool(c[3]), c[1], c[4], c[5])
            if has(c[1]):
                cancel(c[1])
        else:
            book.market(bool(c[3]), c[1], c[4])

    def run(stream: list[Cmd]) -> None:
        for c in stream:
            one(c)

    return run, one


def cython_orderbook_peer() -> Runner:
    import cython_orderbook as co

    book = co.OrderBook()
    BID, ASK = co.OrderSide.BID, co.OrderSide.ASK
    ids: dict[int, Any] = {}

    def add(side: Any, qty: int, price: int) -> Any:
        o = co.Order(side, qty, price)
        book.add_limit_order(o)
        return o

    def one(c: Cmd) -> Any:
        op = c[0]
        if op <= CROSS:
            ids[c[1]] = add(BID if c[3] else ASK, c[4], c[5])
        elif op == CANCEL:
            o = ids.pop(c[1], None)
            if o is not None and o.remaining_quantity > 0:
                book.cancel_order(o.order_id)
        elif op == REDUCE or op == REPLACE:
            o = ids.pop(c[1], None)
            if o is not None and o.remaining_quantity > 0:
                book.cancel_order(o.order_id)
                qty = o.remaining_quantity - c[4] if op == REDUCE else o.remaining_quantity
                if qty > 0:
                    ids[c[1]] = add(o.side, qty, o.price if op == REDUCE else c[5])
        elif op == IOC_LIMIT:
            o = add(BID if c[3] else ASK, c[4], c[5])
            if o.remaining_quantity > 0:
                book.cancel_order(o.order_id)
        else:
            book.add_market_order(co.Order(BID if c[3] else ASK, c[4]))

    def run(stream: list[Cmd]) -> None:
        for c in stream:
            one(c)

    return run, one


PEERS: dict[str, Callable[[], Runner]] = {
    "lightmatchingengine": lightmatchingengine_peer,
    "fastlob": fastlob_peer,
    "pyorderbook": pyorderbook_peer,
    "orderly_chaos": orderly_chaos_peer,
    "limit_order_book": limit_order_book_peer,
    "cython_orderbook": cython_orderbook_peer,
}

# --- measuring ---------------------------------------------------------------------------------


def measure(make: Callable[[], Runner], stream: list[Cmd]) -> dict[str, float]:
    gc.collect()
    gc.disable()
    try:
        run, _ = make()
        t0 = time.perf_counter_ns()
        run(stream)
        elapsed = time.perf_counter_ns() - t0
        _, one = make()
        lat = [0] * len(stream)
        clock = time.perf_counter_ns
        for i, c in enumerate(stream):
            t = clock()
            one(c)
            lat[i] = clock() - t
    finally:
        gc.enable()
        while CLEANUP:
            CLEANUP.pop()()
    lat.sort()
    n = len(lat)

    def pct(p: float) -> float:
        return lat[min(n - 1, int(p * n))] / 1000.0

    return {
        "n": n,
        "ops": n / (elapsed / 1e9),
        "p50": pct(0.50),
        "p99": pct(0.99),
        "p999": pct(0.999),
        "seconds": elapsed / 1e9,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--commands", type=int, default=1_000_000)
    ap.add_argument("--peer-commands", type=int, default=1_000_000, help="prefix of the stream for the peers")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list, or 'none'")
    ap.add_argument("--seed", type=int, default=20260131)
    args = ap.parse_args(argv)

    import matching
    from matching import engine as pure_engine

    t0 = time.time()
    stream = generate(args.commands, args.seed)
    mix: dict[int, int] = {}
    for c in stream:
        mix[c[0]] = mix.get(c[0], 0) + 1
    names = ["rest", "cross", "ioc", "cancel", "reduce", "replace", "market"]
    print(
        f"# stream: {len(stream)} commands, seed {args.seed}; mix "
        + ", ".join(f"{names[k]} {100.0 * v / len(stream):.1f}%" for k, v in sorted(mix.items()))
    )
    print(
        f"# python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; "
        f"tanhui default implementation: {matching.IMPLEMENTATION}"
    )

    rows: list[tuple[str, int, dict[str, float]]] = []
    ours_make = tanhui(
        sys.modules["matching._native"] if matching.IMPLEMENTATION == "native" else pure_engine
    )
    ours = measure(ours_make, stream)
    rows.append((f"tanhui ({matching.IMPLEMENTATION})", len(stream), ours))
    if matching.IMPLEMENTATION == "native":
        rows.append(("tanhui (pure)", len(stream), measure(tanhui(pure_engine), stream)))

    peer_names = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]
    prefix = stream[: min(len(stream), args.peer_commands)]
    ours_prefix = measure(ours_make, prefix) if len(prefix) < len(stream) else ours
    ratios: dict[str, str] = {}
    skipped: dict[str, str] = dict(NOT_BENCHED)
    for name in peer_names:
        try:
            res = measure(PEERS[name], prefix)
        except ImportError as e:
            skipped[name] = f"not installed ({e.name})"
            ratios[name] = "na"
            continue
        except Exception as e:  # a peer that breaks on the stream is reported, not hidden
            skipped[name] = f"failed: {type(e).__name__}: {e}"
            ratios[name] = "na"
            continue
        rows.append((name, len(prefix), res))
        ratios[name] = f"{ours_prefix['ops'] / res['ops']:.2f}"

    print()
    print("| engine | commands | commands/s | p50 µs | p99 µs | p99.9 µs | tanhui ÷ engine |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, r in rows:
        ratio = ratios.get(name, "")
        print(
            f"| {name} | {n:,} | {r['ops']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | {ratio} |"
        )
    if len(prefix) < len(stream):
        print(
            f"| tanhui ({matching.IMPLEMENTATION}) on the peers' prefix | {len(prefix):,} | "
            f"{ours_prefix['ops']:,.0f} | {ours_prefix['p50']:.2f} | {ours_prefix['p99']:.2f} | "
            f"{ours_prefix['p999']:.2f} | |"
        )
    print()
    for name in peer_names:
        if name in PEER_NOTES and name not in skipped:
            print(f"- {name}: {PEER_NOTES[name]}")
    for name, count in PEER_ERRORS.items():
        print(f"- {name}: raised on {count} commands of the stream (its own bug); caught and skipped")
    for name, why in skipped.items():
        print(f"- {name}: not benchmarked: {why}")
    print(f"# wall time {time.time() - t0:.1f} s")
    line = f"BENCH matching ops_per_s={ours['ops']:.0f} p99_us={ours['p99']:.2f} " + " ".join(
        f"vs_{k}={v}" for k, v in ratios.items()
    )
    print(line.rstrip())
    return {"ours": ours, "ratios": ratios, "line": line}


if __name__ == "__main__":
    main()
