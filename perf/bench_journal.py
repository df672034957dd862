"""Journal benchmark: append+commit throughput under each fsync policy, and the read side.

For each fsync policy (``none``, ``interval:10``, ``batch``) and each group
size (records per commit, ``--batch``), append ``--n`` records of about 100
bytes (msgpack new-order commands, encoded beforehand) to a fresh journal,
committing after every group, and report records/s, MB/s (record bytes, the
16-byte headers included) and commit latency percentiles.  Then, on the last
journal written: the recovery scan of ``Journal.open``, a full ``read_journal``,
and ``read_range`` of 100 records near the end, through the open journal's
sparse index and from the file's start.

The journal files go to ``--dir`` (default: the system's temporary folder);
fsync figures are those of that folder's disk.

Usage::

    python perf/bench_journal.py                  # 100,000 records, groups of 1 and 100, readable table
    python perf/bench_journal.py --json
    python perf/bench_journal.py --batch 1,10,100,1000 --policies batch
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from fabric.commands import NewOrder, encode_command  # noqa: E402
from fabric.journal import HEADER_SIZE, Journal, read_journal, read_range  # noqa: E402

SYMBOLS = ("RELIANCE", "TCS", "HDFCBANK", "INFY", "ICICIBANK", "SBIN", "ITC", "LT")


def _say(msg: str) -> None:
    sys.stderr.write(f"bench: {msg}\n")
    sys.stderr.flush()


def payloads(n: int) -> list[bytes]:
    """Return ``n`` msgpack new-order commands of about 100 bytes each."""
    rng = np.random.default_rng(1)
    qty = rng.integers(1, 500, n).tolist()
    ticks = rng.integers(-200, 200, n).tolist()
    return [encode_command(NewOrder(oid=f"C{i:012d}", broker=f"BRK{i % 97:04d}", symbol=SYMBOLS[i % 8],
                                    side="buy" if i & 1 else "sell", type="limit",
                                    price=f"{3500 + ticks[i] * 0.05:.2f}", qty=qty[i], tif="GTC"))
            for i in range(n)]


def bench_append(path: Path, data: list[bytes], policy: str, group: int, budget: float) -> dict[str, Any]:
    """Append ``data`` committing every ``group`` records; return the figures (stops early past ``budget`` s)."""
    if path.exists():
        path.unlink()
    lat: list[int] = []
    clock = time.perf_counter_ns
    n = 0
    with Journal.open(path, "BENCH", policy) as j:
        append, commit = j.append, j.commit
        start = time.perf_counter()
        deadline = start + budget
        for i in range(0, len(data), group):
            for p in data[i : i + group]:
                append(p)
            t0 = clock()
            commit()
            lat.append(clock() - t0)
            n = min(i + group, len(data))
            if time.perf_counter() > deadline:
                break
        secs = time.perf_counter() - start
        synced = j.synced_seq
    nbytes = sum(len(p) for p in data[:n]) + HEADER_SIZE * n
    us = np.array(lat) / 1000.0
    return {"policy": policy, "batch": group, "records": n, "seconds": secs, "records_per_s": n / secs,
            "mb_per_s": nbytes / secs / 1e6, "commits": len(lat), "synced_seq": synced,
            "commit_p50_us": float(np.percentile(us, 50)), "commit_p99_us": float(np.percentile(us, 99)),
            "complete": n == len(data)}


def bench_read(path: Path, n: int) -> dict[str, Any]:
    """Return the read side's figures on a journal of ``n`` records."""
    res: dict[str, Any] = {}
    t = time.perf_counter()
    j = Journal.open(path, "BENCH")
    res["open_scan_s"] = time.perf_counter() - t
    res["open_scan_records_per_s"] = n / res["open_scan_s"]
    t = time.perf_counter()
    count = sum(1 for _ in read_journal(path))
    res["read_journal_records_per_s"] = count / (time.perf_counter() - t)
    first = max(1, n - 150)
    last = min(n, first + 99)
    reps = 200
    t = time.perf_counter()
    for _ in range(reps):
        got = j.read_range(first, last)
    res["read_range_indexed_us"] = (time.perf_counter() - t) / reps * 1e6
    t = time.perf_counter()
    scanned = read_range(path, first, last)
    res["read_range_from_start_us"] = (time.perf_counter() - t) * 1e6
    j.close()
    assert got == scanned and len(got) == last - first + 1
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the figures, and return them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="records per run (default 100,000)")
    ap.add_argument("--batch", default="1,100", help="records per commit, comma-separated (default 1,100)")
    ap.add_argument("--policies", default="none,interval:10,batch", help="fsync policies, comma-separated")
    ap.add_argument("--budget", type=float, default=120.0, help="stop a run after this many seconds (default 120)")
    ap.add_argument("--dir", help="folder for the journal files (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--out", metavar="FILE", help="also write the JSON object to FILE")
    args = ap.parse_args(argv)
    groups = [int(g) for g in args.batch.split(",")]
    policies = args.policies.split(",")

    _say(f"encoding {args.n:,} commands...")
    t = time.perf_counter()
    data = payloads(args.n)
    encode_rate = args.n / (time.perf_counter() - t)
    res: dict[str, Any] = {"n": args.n, "payload_bytes_mean": sum(map(len, data)) / len(data),
                           "record_bytes_mean": sum(map(len, data)) / len(data) + HEADER_SIZE,
                           "encode_command_per_s": encode_rate, "runs": []}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_journal.") as d:
        path = Path(d) / "bench.journal"
        res["dir"] = os.path.dirname(d)
        for policy in policies:
            for group in groups:
                _say(f"append+commit, fsync {policy}, {group} records per commit...")
                res["runs"].append(bench_append(path, data, policy, group, args.budget))
        _say("read side...")
        if path.exists():
            bench_append(path, data, "none", 1000, args.budget)
            res["read"] = bench_read(path, args.n)

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, sort_keys=True, indent=1) + "\n")
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        _print_table(res)
    return res


def _print_table(res: dict[str, Any]) -> None:
    print(f"journal benchmark: {res['n']:,} records, payload {res['payload_bytes_mean']:.0f} bytes "
          f"({res['record_bytes_mean']:.0f} with header), files in {res['dir']}")
    print(f"  {'fsync':<12} {'per commit':>10} {'records/s':>12} {'MB/s':>8} {'commits':>9} "
          f"{'commit p50':>11} {'commit p99':>11}")
    for r in res["runs"]:
        note = "" if r["complete"] else f"   (stopped after {r['records']:,} records)"
        print(f"  {r['policy']:<12} {r['batch']:>10,} {r['records_per_s']:>12,.0f} {r['mb_per_s']:>8.1f} "
              f"{r['commits']:>9,} {r['commit_p50_us']:>8.1f} us {r['commit_p99_us']:>8.1f} us{note}")
    if "read" in res:
        rd = res["read"]
        print(f"  Journal.open recovery scan {rd['open_scan_records_per_s']:,.0f} records/s "
              f"({rd['open_scan_s'] * 1000:.0f} ms); read_journal {rd['read_journal_records_per_s']:,.0f} records/s")
        print(f"  read_range of 100 records near the end: {rd['read_range_indexed_us']:,.0f} us with the open "
              f"journal's index, {rd['read_range_from_start_us']:,.0f} us scanning from the start")
    print(f"  encode_command {res['encode_command_per_s']:,.0f} commands/s (not in the figures above)")


if __name__ == "__main__":
    main()
