"""Order book benchmark: one realistic stream through four matching engines.

(a) the compiled book in its compiled batch loop (``OrderBook.run``, chunks of
    ``--chunk`` commands, as a matcher drains its sockets);
(b) the compiled book called once per command from Python (``OrderBook.new``,
    ``cancel``, ``replace``), with per-command latency percentiles;
(c) the plain-Python reference book (sortedcontainers);
(d) Liquibook, the C++ matching engine, through its Python binding from PyPI,
    with a Python ``on_fill`` listener counting every fill, its order objects
    built before the clock starts (its best case; also measured: without a
    listener, and with the orders built in the timed loop).

Every figure is measured in the same run, so ratios compare like with like on
this machine.  Also reported: the first-start time (compiling every kernel into
an empty numba cache) and the warm-start time (loading them from the cache).

Usage::

    python perf/bench_book.py                 # 1,000,000 commands, readable table
    python perf/bench_book.py --json          # one JSON object
    python perf/bench_book.py --n 200000 --skip-liquibook
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from fabric.book import OrderBook, warm_up  # noqa: E402
from fabric.constants import (  # noqa: E402
    E_TYPE,
    EV_TRADE,
    INT,
    OP_CANCEL,
    OP_END_OF_DAY,
    OP_NEW,
    OP_REPLACE,
)
from fabric.reference import ReferenceBook  # noqa: E402
from perf.workload import generate  # noqa: E402

MID = 70_000  # 3500.00 at tick 0.05
BAND = (63_000, 77_000)  # +/- 10 %
# Market protection of the books (mid as their reference price): 0.05 %, 35 ticks, so that it stops some
# market orders; the stream also has post-only, GTD, iceberg and stop-loss orders (perf/workload.py, order_types).
PROTECT_BP = 5


def _book(**kw: Any) -> OrderBook:
    return OrderBook(lot=1, band_lo=BAND[0], band_hi=BAND[1], slots=1 << 16, events=1 << 16, ref=MID,
                     protect_bp=PROTECT_BP, **kw)


def _say(msg: str) -> None:
    sys.stderr.write(f"bench: {msg}\n")
    sys.stderr.flush()


def start_times() -> tuple[float, float]:
    """Return (first start, warm start) in seconds: import and warm up every kernel, cold then cached."""
    code = "import time; t=time.perf_counter(); import fabric.book as b; b.warm_up(); print(time.perf_counter()-t)"
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout) for _ in range(2)]
    return runs[0], runs[1]


def bench_batch(cmds: np.ndarray, chunk: int, repeat: int) -> tuple[float, int]:
    """Return (best commands/s, trades) of the compiled batch loop."""
    best, trades = 0.0, 0
    for _ in range(repeat):
        book = _book()
        book.reserve_oids(int(cmds[:, 1].max()))
        n_trades = 0
        start = time.perf_counter()
        for i in range(0, cmds.shape[0], chunk):
            ev = book.run(cmds[i : i + chunk])
            n_trades += int(np.count_nonzero(ev[:, E_TYPE] == EV_TRADE))
        secs = time.perf_counter() - start
        best, trades = max(best, cmds.shape[0] / secs), n_trades
    return best, trades


def _loop(book: Any, rows: list[list[int]]) -> None:
    # The per-command path as a caller writes it: dispatch on the op, call the
    # book.  The events stay where the book put them (the compiled book's event
    # buffer, the reference book's returned list): decoding them is the caller's
    # business and is not part of either book's figure.
    new, cancel, replace, eod = book.new, book.cancel, book.replace, book.end_of_day
    for op, oid, broker, side, otype, tif, price, qty, stp, flags, expire, disclosed, stop in rows:
        if op == OP_NEW:
            new(oid, broker, side, otype, tif, price, qty, stp, flags, expire, disclosed, stop)
        elif op == OP_CANCEL:
            cancel(oid)
        elif op == OP_REPLACE:
            replace(oid, price, qty)
        elif op == OP_END_OF_DAY:
            eod()


def bench_loop(make: Any, rows: list[list[int]], repeat: int) -> tuple[float, int]:
    """Return (best commands/s, trades) of a book driven one command at a time from Python."""
    best, trades = 0.0, 0
    for _ in range(repeat):
        book = make()
        start = time.perf_counter()
        _loop(book, rows)
        best = max(best, len(rows) / (time.perf_counter() - start))
        trades = book.trades
    return best, trades


def per_command_latency(rows: list[list[int]]) -> np.ndarray:
    """Return each command's latency in ns through the compiled book's per-command call."""
    book = _book()
    lat = np.empty(len(rows), dtype=INT)
    clock = time.perf_counter_ns
    new, cancel, replace = book.new, book.cancel, book.replace
    for i, (op, oid, broker, side, otype, tif, price, qty, stp, flags, expire, disclosed, stop) in enumerate(rows):
        t0 = clock()
        if op == OP_NEW:
            new(oid, broker, side, otype, tif, price, qty, stp, flags, expire, disclosed, stop)
        elif op == OP_CANCEL:
            cancel(oid)
        elif op == OP_REPLACE:
            replace(oid, price, qty)
        lat[i] = clock() - t0
    return lat


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the figures, and return them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="commands in the stream (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=4096, help="commands per batch call in (a)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of (a) and (b); the best counts")
    ap.add_argument("--skip-liquibook", action="store_true")
    ap.add_argument("--plain", action="store_true",
                    help="the stream without post-only, GTD, iceberg and stop orders, books without market protection")
    ap.add_argument("--skip-start", action="store_true", help="do not measure first/warm start")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--out", metavar="FILE", help="also write the JSON object to FILE")
    args = ap.parse_args(argv)

    res: dict[str, Any] = {"n": args.n, "seed": args.seed, "chunk": args.chunk}
    if not args.skip_start:
        _say("first start (empty numba cache) and warm start (cached)...")
        res["first_start_s"], res["warm_start_s"] = start_times()
    warm_up()
    _say(f"generating {args.n:,} commands...")
    global PROTECT_BP
    if args.plain:
        PROTECT_BP = 0
    cmds = generate(args.n, args.seed, mid=MID, band=BAND, order_types=not args.plain, protect_bp=PROTECT_BP)
    rows = cmds.tolist()
    ops = np.bincount(cmds[:, 0], minlength=5)
    res["mix"] = {"new": int(ops[OP_NEW]), "cancel": int(ops[OP_CANCEL]), "replace": int(ops[OP_REPLACE])}

    _say("(a) compiled batch loop...")
    res["batch_cmds_per_s"], trades_a = bench_batch(cmds, args.chunk, args.repeat)
    _say("(b) per-command calls from Python...")
    res["per_cmd_per_s"], trades_b = bench_loop(
        _book, rows, args.repeat)
    lat = per_command_latency(rows) / 1000.0
    res["p50_us"], res["p99_us"], res["p999_us"] = (float(np.percentile(lat, q)) for q in (50, 99, 99.9))
    _say("(c) reference book...")
    res["reference_cmds_per_s"], trades_c = bench_loop(
        lambda: ReferenceBook(lot=1, band_lo=BAND[0], band_hi=BAND[1], ref=MID, protect_bp=PROTECT_BP), rows, 1)
    if not trades_a == trades_b == trades_c:
        raise SystemExit(f"books disagree on the number of trades: {trades_a}, {trades_b}, {trades_c}")
    res["trades"] = trades_a

    if not args.skip_liquibook:
        from perf.liquibook_peer import run_liquibook

        # Liquibook gets its best case: its order objects are built before the
        # clock starts, as our rows are (see perf/liquibook_peer.py).
        _say("(d) Liquibook with a Python on_fill listener, and without...")

        def best(**kw: Any) -> Any:
            return max((run_liquibook(cmds, **kw) for _ in range(args.repeat)), key=lambda r: r["cmds_per_s"])

        lb = best(with_callback=True, precreate=True)
        res["liquibook_cmds_per_s"] = lb["cmds_per_s"]
        res["liquibook_fills"] = lb["fills"]
        res["liquibook_nocb_cmds_per_s"] = best(with_callback=False, precreate=True)["cmds_per_s"]
        res["liquibook_inloop_cmds_per_s"] = best(with_callback=True, precreate=False)["cmds_per_s"]
        res["ratio_batch_vs_liquibook"] = res["batch_cmds_per_s"] / res["liquibook_cmds_per_s"]
        res["ratio_per_cmd_vs_liquibook"] = res["per_cmd_per_s"] / res["liquibook_cmds_per_s"]
    res["ratio_batch_vs_reference"] = res["batch_cmds_per_s"] / res["reference_cmds_per_s"]

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, sort_keys=True, indent=1) + "\n")
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        _print_table(res)
    return res


def _print_table(res: dict[str, Any]) -> None:
    print(f"order book benchmark: {res['n']:,} commands (new {res['mix']['new']:,}, cancel {res['mix']['cancel']:,}, "
          f"replace {res['mix']['replace']:,}), {res['trades']:,} trades")
    print(f"  (a) compiled batch loop      {res['batch_cmds_per_s']:>14,.0f} commands/s")
    print(f"  (b) per-command from Python  {res['per_cmd_per_s']:>14,.0f} commands/s   "
          f"latency p50 {res['p50_us']:.2f} us  p99 {res['p99_us']:.2f} us  p99.9 {res['p999_us']:.2f} us")
    print(f"  (c) reference book (Python)  {res['reference_cmds_per_s']:>14,.0f} commands/s")
    if "liquibook_cmds_per_s" in res:
        print(f"  (d) Liquibook + on_fill      {res['liquibook_cmds_per_s']:>14,.0f} commands/s   "
              f"(no listener: {res['liquibook_nocb_cmds_per_s']:,.0f}/s; orders built in the loop: "
              f"{res['liquibook_inloop_cmds_per_s']:,.0f}/s; fills {res['liquibook_fills']:,})")
        print(f"  a/d {res['ratio_batch_vs_liquibook']:.2f}   b/d {res['ratio_per_cmd_vs_liquibook']:.2f}   "
              f"a/c {res['ratio_batch_vs_reference']:.1f}")
    else:
        print(f"  a/c {res['ratio_batch_vs_reference']:.1f}")
    if "first_start_s" in res:
        print(f"  first start (compile) {res['first_start_s']:.1f} s, warm start (cached) {res['warm_start_s']:.2f} s")


if __name__ == "__main__":
    main()
