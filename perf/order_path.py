"""The order path without the harness: one broker, closed-loop round trip and pipelined throughput.

Starts the local topology on free ports in a scratch folder and drives one
gateway with a single raw DEALER broker:

- closed loop: send a limit order, wait for its ``accepted``, send the next
  (``--orders`` of them): the acknowledgement round trip with nothing queued;
- pipelined: keep ``--window`` limit orders outstanding and count how many
  complete (their closing ``order_status``) per second, and the CPU time of
  the matcher and gateway processes per order meanwhile (``/proc/PID/stat``).

With ``EXFAB_PROFILE_DIR=DIR`` in the environment the nodes run under cProfile
and write ``DIR/<kind>-<name>.prof`` and ``.txt`` when they stop (``nodes/profiling.py``).

With ``--baseline DIR`` the same measurement runs first on the nodes of
another checkout (``DIR``, e.g. the last release in a git worktree), then on
this one's, and the figures are compared in the same run.

Usage::

    python perf/order_path.py                  # both, journal fsync per batch
    python perf/order_path.py --fsync none
    git worktree add /tmp/release 20858e1 && python perf/order_path.py --fsync none --baseline /tmp/release
"""

from __future__ import annotations

import argparse
import random
import shutil
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

from fabric.protocol import Accepted, Logon, New, OrderStatus, decode_server, encode  # noqa: E402
from perf.harness import cpu_us_per_msg, node_cpu_s  # noqa: E402
from topology.launcher import Launcher  # noqa: E402
from topology.model import GATEWAY, MATCHER, TICKER  # noqa: E402
from topology.ports import topology_on_free_ports  # noqa: E402

LOCAL = ROOT / "topology" / "examples" / "local.toml"


def measure(args: argparse.Namespace, nodes_from: str | None = None) -> dict[str, Any]:
    """Start the exchange (its nodes from ``nodes_from``, a checkout, or this one), measure, stop it."""
    tmp = tempfile.mkdtemp(prefix="exfab-orderpath-")
    env = {} if nodes_from is None else {"PYTHONPATH": str(Path(nodes_from).resolve())}
    launcher = Launcher(topology_on_free_ports(LOCAL, Path(tmp), brokers="open"), workdir=tmp,
                        kinds=(MATCHER, TICKER, GATEWAY), extra_args={"matcher": ["--fsync", args.fsync]},
                        extra_env=env)
    launcher.start()
    try:
        topo = launcher.topo
        sym = topo.shards[0].symbols[0]
        inst = topo.instrument(sym)
        low = inst.band_lo or 1
        sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(topo.gateways[0].endpoint.connect)
        sock.send(encode(Logon(broker="OP1", heartbeat_ms=60_000)))
        sock.recv_multipart()

        lat = np.empty(args.orders)
        for i in range(args.orders):
            t0 = time.perf_counter()
            sock.send(encode(New(oid=f"c{i}", symbol=sym, side="buy", type="limit",
                                 price=inst.to_price(low + 10 + i % 50), qty=1, tif="GTC")))
            while not any(isinstance(decode_server(b), Accepted) for b in sock.recv_multipart()):
                pass
            lat[i] = time.perf_counter() - t0
        p50, p99 = (float(np.percentile(lat, q)) * 1e6 for q in (50, 99))

        rng = random.Random(1)
        sent = done = 0
        n = args.pipelined
        pids = {node.label: node.proc.pid for node in launcher.nodes}
        cpu0 = node_cpu_s(pids)
        t0 = time.perf_counter()
        while done < n:
            while sent < n and sent - done < args.window:
                px = inst.to_price(low + 1000 + rng.randint(-20, 20))
                sock.send(encode(New(oid=f"p{sent}", symbol=sym, side="buy" if sent % 2 else "sell", type="limit",
                                     price=px, qty=1, tif="GTC")))
                sent += 1
            if sock.poll(10):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    done += sum(isinstance(decode_server(b), OrderStatus) for b in frames)
        secs = time.perf_counter() - t0
        cpu1 = node_cpu_s(pids)
        sock.close(0)
        return {"ack_p50_us": p50, "ack_p99_us": p99, "orders_per_s": n / secs,
                "cpu_us_per_order": cpu_us_per_msg({k: cpu1[k] - v for k, v in cpu0.items() if k in cpu1}, n)}
    finally:
        launcher.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _line(name: str, r: dict[str, Any], args: argparse.Namespace) -> str:
    cpu = ", ".join(f"{k} {v:,.1f} us" for k, v in r["cpu_us_per_order"].items())
    return (f"{name}: closed loop ack p50 {r['ack_p50_us']:,.0f} us, p99 {r['ack_p99_us']:,.0f} us "
            f"({args.orders:,} orders); pipelined (window {args.window}) {r['orders_per_s']:,.0f} orders/s; "
            f"CPU per order: {cpu}")


def main(argv: list[str] | None = None) -> None:
    """Measure (the baseline's nodes first, with ``--baseline``), print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fsync", default="batch", help="the matchers' journal policy (default batch)")
    ap.add_argument("--orders", type=int, default=2_000, help="closed-loop orders (default 2,000)")
    ap.add_argument("--pipelined", type=int, default=20_000, help="pipelined orders (default 20,000)")
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--baseline", metavar="DIR", help="measure the nodes of this checkout first, and compare")
    args = ap.parse_args(argv)
    print(f"fsync {args.fsync}", flush=True)
    base = measure(args, args.baseline) if args.baseline else None
    if base is not None:
        print(_line(f"baseline ({args.baseline})", base, args), flush=True)
    this = measure(args)
    print(_line("this checkout", this, args))
    if base is not None:
        ratios = ", ".join(f"{k} {this['cpu_us_per_order'][k] / v:.2f}x" for k, v in base["cpu_us_per_order"].items()
                           if v and k in this["cpu_us_per_order"])
        print(f"this / baseline: orders/s {this['orders_per_s'] / base['orders_per_s']:.2f}x, ack p50 "
              f"{this['ack_p50_us'] / base['ack_p50_us']:.2f}x, CPU per order {ratios}")


if __name__ == "__main__":
    main()
