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

Usage::

    python perf/order_path.py                  # both, journal fsync per batch
    python perf/order_path.py --fsync none
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from fabric.protocol import Accepted, Logon, New, OrderStatus, decode_server, encode  # noqa: E402
from perf.harness import cpu_us_per_msg, node_cpu_s  # noqa: E402
from topology.launcher import Launcher  # noqa: E402
from topology.ports import topology_on_free_ports  # noqa: E402

LOCAL = ROOT / "topology" / "examples" / "local.toml"


def main(argv: list[str] | None = None) -> None:
    """Start the exchange, measure, print the figures, stop it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fsync", default="batch", help="the matchers' journal policy (default batch)")
    ap.add_argument("--orders", type=int, default=2_000, help="closed-loop orders (default 2,000)")
    ap.add_argument("--pipelined", type=int, default=20_000, help="pipelined orders (default 20,000)")
    ap.add_argument("--window", type=int, default=500)
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="exfab-orderpath-")
    launcher = Launcher(topology_on_free_ports(LOCAL, Path(tmp)), workdir=tmp,
                        extra_args={"matcher": ["--fsync", args.fsync]})
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
        print(f"closed loop, fsync {args.fsync}: ack round trip p50 {p50:,.0f} us, p99 {p99:,.0f} us "
              f"({args.orders:,} orders)")

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
        per_order = cpu_us_per_msg({k: cpu1[k] - v for k, v in cpu0.items() if k in cpu1}, n)
        cpu = ", ".join(f"{k} {v:,.1f} us" for k, v in per_order.items())
        print(f"pipelined, fsync {args.fsync}, window {args.window}: {n:,} orders in {secs:.2f} s = "
              f"{n / secs:,.0f} orders/s; CPU per order: {cpu}")
        sock.close(0)
    finally:
        launcher.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
