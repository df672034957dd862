"""The clients of the ticker benchmark, each a process of its own: WebSocket browsers, or a ZeroMQ SUB.

``perf/bench_ticker.py`` starts them.  A client prints ``READY`` once it is connected (WebSocket
clients: once every connection has its snapshots), records what arrives until SIGTERM or SIGINT,
then writes what it saw to ``--out`` (a ``.npz`` file) and prints ``DONE``.

- ``ws URL --clients N``: N WebSocket connections, each subscribed to every symbol and channel (as
  the live page is).  For every trade in the ``prints`` of a ``quote`` it records the client, the
  symbol, the ``trade_id``, the trade's ``ts`` and the time the message reached the client's code.
  They connect with ``?batch=1``, as the live page does (each message a JSON array of objects:
  ``docs/market-data.md``, section 4); ``--no-batch`` connects without it (one object per message).
  Per client it counts messages and objects, in all and up to ``READY``.
- ``sub ENDPOINT...``: one ZeroMQ SUB on matchers' PUB sockets, topic ``T`` (trades): for every trade
  the symbol, ``trade_id``, ``ts`` and the time of receipt.

Times are ``time.time_ns()``: the trade's ``ts`` is the matcher's ``time.time_ns()`` on the same
machine, so receipt minus ``ts`` is the trade's latency to that client.  The WebSocket clients share
one asyncio loop: with many of them the loop itself can fall behind, and that delay is in their
figures (it is what a machine full of browsers would see).

Usage::

    python -m perf.ticker_clients ws ws://127.0.0.1:7181/ws --clients 1000 --symbols TCS,INFY --out ws.npz
    python -m perf.ticker_clients ws ws://127.0.0.1:7181/ws --no-batch --clients 10 --symbols TCS --out ws.npz
    python -m perf.ticker_clients sub tcp://127.0.0.1:7111 tcp://127.0.0.1:7121 --symbols TCS,INFY --out sub.npz
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from fabric.protocol import TRADE, Trade, iter_pub  # noqa: E402

CONNECT_AT_ONCE = 50  # WebSocket handshakes in flight at a time while connecting
SUB_SETTLE_S = 0.5  # a SUB cannot know when its subscription reached the publisher: wait this long


class _Print(msgspec.Struct):
    trade_id: int
    ts: int


class _Msg(msgspec.Struct):
    """What a client reads of a WebSocket message (other fields are skipped by the decoder)."""

    t: str
    symbol: str | None = None
    prints: list[_Print] = []


class Records:
    """Trades as seen by clients: one row per (client, trade) in growable int64 arrays."""

    def __init__(self) -> None:
        self.client = array("q")
        self.sym = array("q")
        self.trade_id = array("q")
        self.ts = array("q")
        self.recv = array("q")

    def add(self, client: int, sym: int, trade_id: int, ts: int, recv: int) -> None:
        """Record one trade's receipt."""
        self.client.append(client)
        self.sym.append(sym)
        self.trade_id.append(trade_id)
        self.ts.append(ts)
        self.recv.append(recv)

    def save(self, path: str, **extra: Any) -> None:
        """Write the rows (and ``extra`` arrays) to ``path`` (``.npz``)."""
        arrays: dict[str, Any] = {k: np.frombuffer(getattr(self, k), dtype=np.int64) if len(getattr(self, k)) else
                                  np.zeros(0, dtype=np.int64) for k in ("client", "sym", "trade_id", "ts", "recv")}
        arrays.update(extra)
        np.savez(path, **arrays)


def raise_fd_limit() -> int:
    """Raise this process's open-file limit (soft) to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------ WebSocket


def _with_batch(url: str) -> str:
    """Return ``url`` asking for batches (``batch=1`` added to its query)."""
    return url + ("&" if "?" in url else "?") + "batch=1"


async def _ws_main(url: str, n: int, symbols: list[str], out: str, batch: bool = True) -> None:
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosedOK

    if batch:
        url = _with_batch(url)
    index = {s: i for i, s in enumerate(symbols)}
    rec = Records()
    received = np.zeros(n, dtype=np.int64)  # messages per client, every kind
    objects = np.zeros(n, dtype=np.int64)  # objects in them (more than messages when batched)
    quotes = np.zeros(n, dtype=np.int64)
    # A batch is an array of objects, a message without batching one object: the decoder takes either.
    decode = msgspec.json.Decoder(list[_Msg] | _Msg).decode
    subscribe = msgspec.json.encode({"op": "subscribe", "symbols": "*", "channels": ["quote", "depth", "bars"]})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    ready = 0
    all_ready = asyncio.Event()
    conns: list[ClientConnection] = []

    async def client(i: int) -> None:
        nonlocal ready
        snaps = 0
        await gate.acquire()
        released = False
        try:
            for attempt in range(5):
                try:
                    ws = await connect(url, compression=None, max_size=None, ping_interval=None, open_timeout=60,
                                       close_timeout=1)
                    break
                except OSError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            conns.append(ws)
            await ws.send(subscribe.decode())
            while True:
                try:
                    raw = await ws.recv(decode=False)  # the frame's bytes: msgspec reads UTF-8 itself
                except ConnectionClosedOK:
                    return
                now = time.time_ns()
                got = decode(raw)
                msgs = got if isinstance(got, list) else (got,)
                received[i] += 1
                objects[i] += len(msgs)
                for m in msgs:
                    if m.t == "quote":
                        quotes[i] += 1
                        sym = index.get(m.symbol or "", -1)
                        for p in m.prints:
                            rec.add(i, sym, p.trade_id, p.ts, now)
                    elif m.t == "snapshot" and not released:
                        snaps += 1
                        if snaps == len(symbols):
                            released = True
                            gate.release()
                            ready += 1
                            if ready == n:
                                all_ready.set()
        finally:
            if not released:
                gate.release()

    tasks = [asyncio.create_task(client(i)) for i in range(n)]
    waiter = asyncio.create_task(all_ready.wait())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} WebSocket clients failed: {failed[0].exception()!r}")
    cpu0 = time.process_time()
    at_ready = received.copy(), objects.copy()  # hello and snapshots: what came before the load
    print(f"READY {ready}", flush=True)
    await stop.wait()
    cpu = time.process_time() - cpu0
    rec.save(out, received=received, objects=objects, quotes=quotes, received_ready=at_ready[0],
             objects_ready=at_ready[1], cpu_s=np.array([cpu]))
    print("DONE", flush=True)
    # Closing a thousand connections politely takes longer than it is worth: the ticker sees them drop.
    sys.stdout.flush()
    os._exit(0)


# ------------------------------------------------------------------ ZeroMQ SUB


def _sub_main(endpoints: list[str], symbols: list[str], out: str) -> None:
    index = {s: i for i, s in enumerate(symbols)}
    rec = Records()
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, TRADE)
    for e in endpoints:
        sub.connect(e)
    time.sleep(SUB_SETTLE_S)
    cpu0 = time.process_time()
    print("READY", flush=True)
    while not stopping:
        if not sub.poll(100):
            continue
        while True:
            try:
                _topic, body = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            now = time.time_ns()
            for m in iter_pub(body):
                if type(m) is Trade:
                    rec.add(0, index.get(m.symbol, -1), m.trade_id, m.ts, now)
    cpu = time.process_time() - cpu0
    rec.save(out, cpu_s=np.array([cpu]))
    sub.close(0)
    ctx.term()
    print("DONE", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run one client process (see the module's docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sp = ap.add_subparsers(dest="kind", required=True)
    ws = sp.add_parser("ws", help="WebSocket clients of the ticker")
    ws.add_argument("url")
    ws.add_argument("--clients", type=int, default=1)
    ws.add_argument("--no-batch", action="store_true",
                    help="one object per message (connect without ?batch=1), as clients before batching")
    sub = sp.add_parser("sub", help="a ZeroMQ SUB on the matchers' trades")
    sub.add_argument("endpoints", nargs="+")
    for p in (ws, sub):
        p.add_argument("--symbols", required=True, help="every symbol, comma-separated: the index of each is stored")
        p.add_argument("--out", required=True, help=".npz file to write at the end")
    args = ap.parse_args(argv)
    symbols = args.symbols.split(",")
    raise_fd_limit()
    if args.kind == "ws":
        asyncio.run(_ws_main(args.url, args.clients, symbols, args.out, batch=not args.no_batch))
    else:
        _sub_main(args.endpoints, symbols, args.out)


if __name__ == "__main__":
    main()
