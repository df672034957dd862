"""One shard stopped under load: the other shard's acknowledgement latency, before and during.

Starts the local topology on free ports in a scratch folder. One broker sends
limit orders for a shard A symbol one at a time (closed loop: the next when the
last is accepted) and another broker sends orders for a shard B symbol beside
them, without waiting. The acknowledgement round trips of shard A are measured
twice, in the same run: with matcher B running, then with matcher B frozen
(SIGSTOP: its connections stay open and it reads nothing, the hardest case for
a gateway), while B's orders keep coming and pile up. The gateway must keep
shard A's latency where it was.

Usage::

    python perf/dead_shard.py                      # 12,000 orders each phase
    python perf/dead_shard.py --orders 5000 --out /tmp/dead-shard
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from fabric.protocol import Accepted, Logon, New, decode_server, encode  # noqa: E402
from topology.launcher import Launcher  # noqa: E402
from topology.ports import topology_on_free_ports  # noqa: E402

LOCAL = ROOT / "topology" / "examples" / "local.toml"
DEFAULT_OUT = Path(".exfab") / "perf" / "dead_shard"


def _broker(endpoint: str, name: str) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(encode(Logon(broker=name, heartbeat_ms=60_000)))
    if not sock.poll(10_000):
        raise SystemExit(f"dead_shard: no logon answer from {endpoint}")
    sock.recv_multipart()
    return sock


def _phase(a: zmq.Socket[bytes], b: zmq.Socket[bytes], sym_a: str, px_a: str, sym_b: str, px_b: str, n: int,
           tag: str) -> np.ndarray:
    # n closed-loop orders on shard A, each with one shard B order sent beside it (answers to B are drained
    # and not waited for).
    lat = np.empty(n)
    for i in range(n):
        b.send(encode(New(oid=f"{tag}-b{i}", symbol=sym_b, side="buy", type="limit", price=px_b, qty=1, tif="GTC")))
        t0 = time.perf_counter()
        a.send(encode(New(oid=f"{tag}-a{i}", symbol=sym_a, side="buy", type="limit", price=px_a, qty=1, tif="GTC")))
        while True:
            if not a.poll(30_000):
                raise SystemExit(f"dead_shard: shard A stopped answering ({tag}, order {i})")
            if any(isinstance(decode_server(f), Accepted) for f in a.recv_multipart()):
                break
        lat[i] = time.perf_counter() - t0
        while True:  # B's answers, when it gives any: drained, never waited for
            try:
                b.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
    return lat


def main(argv: list[str] | None = None) -> int:
    """Measure shard A before and while shard B is frozen; print the figures; write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=12_000,
                    help="shard A orders in each phase (default 12,000: longer than the 6 s after which the gateway "
                         "refuses what a matcher left unanswered, so that path is measured too)")
    ap.add_argument("--fsync", default="none", help="the matchers' journal policy (default none)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="exfab-deadshard-"))
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp, brokers="open"), workdir=tmp,
                        extra_args={"matcher": ["--fsync", args.fsync]})
    launcher.start()
    results: dict[str, Any] = {}
    try:
        topo = launcher.topo
        shard_a, shard_b = topo.shards[0], topo.shards[1]
        inst_a, inst_b = topo.instrument(shard_a.symbols[0]), topo.instrument(shard_b.symbols[0])
        px_a = inst_a.to_price((inst_a.band_lo or 1) + 5)
        px_b = inst_b.to_price((inst_b.band_lo or 1) + 5)
        gw = topo.gateways[0].endpoint.connect
        a, b = _broker(gw, "DEAD-A"), _broker(gw, "DEAD-B")
        matcher_b = launcher.node("matcher", shard_b.replicas[0].name).proc.pid
        for tag in ("running", "stopped"):
            if tag == "stopped":
                os.kill(matcher_b, signal.SIGSTOP)
            print(f"dead_shard: shard B {tag}: {args.orders:,} shard A orders, one shard B order beside each...",
                  file=sys.stderr, flush=True)
            lat = _phase(a, b, inst_a.symbol, px_a, inst_b.symbol, px_b, args.orders, tag) * 1e6
            results[tag] = {q: float(np.percentile(lat, p)) for q, p in (("p50_us", 50), ("p99_us", 99),
                                                                       ("p999_us", 99.9))}
        os.kill(matcher_b, signal.SIGCONT)
        a.close(0)
        b.close(0)
    finally:
        launcher.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    run, stop = results["running"], results["stopped"]
    ratio = {k: stop[k] / run[k] for k in run}
    lines = [f"# Shard A while shard B is frozen (SIGSTOP), {args.orders:,} orders each, fsync {args.fsync}", "",
             f"`python perf/dead_shard.py --orders {args.orders}`", "",
             "| shard B | ack p50 | p99 | p99.9 |", "| --- | ---: | ---: | ---: |",
             f"| running | {run['p50_us']:,.0f} µs | {run['p99_us']:,.0f} µs | {run['p999_us']:,.0f} µs |",
             f"| frozen | {stop['p50_us']:,.0f} µs | {stop['p99_us']:,.0f} µs | {stop['p999_us']:,.0f} µs |",
             f"| frozen / running | {ratio['p50_us']:.2f}× | {ratio['p99_us']:.2f}× | {ratio['p999_us']:.2f}× |"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dead_shard.json").write_text(json.dumps({"orders": args.orders, "fsync": args.fsync, **results,
                                                          "ratio": ratio}, indent=1) + "\n")
    (args.out / "dead_shard.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
