"""The floor: a plain pyzmq echo over the exchange's hops and processes.

The exchange will run broker client (DEALER) -> gateway (ROUTER, then a DEALER to
the matcher) -> matcher (ROUTER) and back.  The floor runs the same hops in the
same processes with nothing in them: the gateway forwards, the matcher echoes.
Whatever the exchange adds on top of these figures is the cost of its own work.

Processes
    *client*  -- the caller's process (the harness, or :func:`measure_throughput`);
    *gateway* -- ROUTER facing the client, DEALER facing the matcher, forwarding both ways;
    *matcher* -- ROUTER, sends every message back as it came.

Each node is a small loop (poll, drain what is waiting, forward) started with
``multiprocessing`` (spawn).  TCP binds to a free port on 127.0.0.1; IPC to a
socket in a fresh temporary folder.  A node reports its endpoint through a pipe
once bound and connected (the ready handshake), answers ``stats`` and ``stop``
on that pipe, and exits when the pipe closes, so that no node outlives its
parent even when the parent is killed.

Gateway modes
    *unbatched* -- one message per send call at every hop.
    *batched*   -- the gateway drains everything waiting on its ROUTER (up to
    ``max_batch``) and forwards it to the matcher as ONE message: one msgpack
    frame holding the client ids and bodies (``--batch-format packed``, the
    default) or one multipart message of two frames per order
    (``--batch-format multipart``, which costs the matcher a frame per order);
    the matcher echoes the batch as one message and the gateway splits it back
    to the clients.  This is how the real matcher will take its input.

Diagnostics
    ``--hops 1`` leaves the gateway out (client -> matcher); ``--engine c``
    makes both nodes ``zmq.proxy`` loops inside libzmq (no Python per message),
    which tells the cost of the Python loops from the cost of the sockets.
    Both modes also print each process's CPU time per message (all its threads,
    libzmq's I/O thread included; Linux samples it at scheduler ticks, so read
    it as a rough share, not to the microsecond).

Usage::

    python perf/floor.py throughput                    # pipelined msgs/s, unbatched and batched
    python perf/floor.py latency --rate 10000          # open-loop round trip through perf/harness.py
    python perf/floor.py all --transport ipc --json
    python perf/floor.py latency --hops 1 --engine c   # where does the time go?
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import msgpack
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

Transport = Literal["tcp", "ipc"]
BatchFormat = Literal["multipart", "packed"]
Engine = Literal["python", "c"]

HWM = 1_000_000  # an open-loop overload must queue, not drop: a ROUTER drops silently at its high-water mark
DRAIN_MAX = 4096  # messages taken from one socket before the loop looks at the other one
READY_TIMEOUT_S = 30.0
PING_TIMEOUT_S = 10.0
PING_SEQ = -1

# A new order as a broker would send it (see topology/examples/session.jsonl); ~120 bytes packed.
_ORDER: dict[str, Any] = {
    "op": "new",
    "seq": 0,
    "oid": "",
    "broker": "B7",
    "symbol": "ICICIBANK",
    "side": "buy",
    "type": "limit",
    "price": "1409.90",
    "qty": 15,
    "tif": "GTC",
    "ts": 0,
}


def make_order(seq: int) -> bytes:
    """Return a packed new-order message whose ``seq`` is `seq` (about 120 bytes).

    Parameters
    ----------
    seq
        The client's sequence number; the reply carries it back.
    """
    order = dict(_ORDER)
    order["seq"] = seq
    order["oid"] = f"B7-{seq & 0xFFFFFFFF:08x}"
    order["ts"] = time.time_ns()
    return msgpack.packb(order)


def order_seq(body: bytes) -> int:
    """Return the ``seq`` of a packed order (or of its echo)."""
    return int(msgpack.unpackb(body)["seq"])


@dataclass(frozen=True)
class FloorConfig:
    """How to run the floor's nodes.

    Attributes
    ----------
    transport
        ``tcp`` (127.0.0.1, free ports) or ``ipc`` (sockets in a temporary folder).
    batched
        Gateway forwards what it drained as one message per batch (see module docstring).
    batch_format
        ``packed`` (one msgpack frame) or ``multipart`` (one frame per client id and body).
    max_batch
        Most messages in one batch.
    hops
        2: client -> gateway -> matcher; 1: client -> matcher (no gateway).
    engine
        ``python``: the nodes' loops are Python; ``c``: ``zmq.proxy`` inside libzmq (unbatched only).
    """

    transport: Transport = "tcp"
    batched: bool = False
    batch_format: BatchFormat = "packed"
    max_batch: int = 1024
    hops: int = 2
    engine: Engine = "python"

    def __post_init__(self) -> None:
        if self.transport not in ("tcp", "ipc"):
            raise ValueError(f"transport must be tcp or ipc, not {self.transport!r}")
        if self.hops not in (1, 2):
            raise ValueError(f"hops must be 1 or 2, not {self.hops}")
        if self.engine not in ("python", "c"):
            raise ValueError(f"engine must be python or c, not {self.engine!r}")
        if self.engine == "c" and self.batched:
            raise ValueError("the c engine forwards one message at a time: it cannot batch")
        if self.batch_format not in ("multipart", "packed"):
            raise ValueError(f"batch_format must be multipart or packed, not {self.batch_format!r}")
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")

    def label(self) -> str:
        """Return a short human name, e.g. ``tcp 2 hops python batched(packed)``."""
        batching = f"batched({self.batch_format})" if self.batched else "unbatched"
        return f"{self.transport} {self.hops} hop{'s' if self.hops > 1 else ''} {self.engine} {batching}"


# --------------------------------------------------------------------------- nodes (child processes)


def _socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    sock = ctx.socket(kind)
    sock.sndhwm = HWM
    sock.rcvhwm = HWM
    sock.linger = 0
    return sock


def _bind(sock: zmq.Socket[bytes], transport: Transport, ipc_path: str) -> str:
    if transport == "tcp":
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return f"tcp://127.0.0.1:{port}"
    endpoint = f"ipc://{ipc_path}"
    sock.bind(endpoint)
    return endpoint


def _watch_pipe(conn: multiprocessing.connection.Connection, stats: dict[str, int]) -> None:
    """Serve the control pipe from a thread (c engine only: ``zmq.proxy`` never returns)."""
    try:
        while True:
            if conn.recv() == "stats":
                conn.send({**stats, "cpu_s": time.process_time()})
            else:
                break
    except (EOFError, OSError):
        pass
    os._exit(0)


def _control(conn: multiprocessing.connection.Connection, stats: dict[str, int]) -> bool:
    """Answer one control request; return False when the node must stop."""
    try:
        request = conn.recv()
    except (EOFError, OSError):
        return False  # parent gone
    if request == "stats":
        conn.send({**stats, "cpu_s": time.process_time()})  # user + system time of all the node's threads
        return True
    return False


def _matcher_main(conn: multiprocessing.connection.Connection, config: FloorConfig, ipc_path: str) -> None:
    """Run the echo matcher: a ROUTER that sends every message (or batch) back as it came."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = _socket(ctx, zmq.ROUTER)
    stats = {"messages": 0, "polls": 0}
    try:
        conn.send(("ready", _bind(router, config.transport, ipc_path)))
        if config.engine == "c":
            threading.Thread(target=_watch_pipe, args=(conn, stats), daemon=True).start()
            zmq.proxy(router, router)  # libzmq echoes when frontend and backend are one socket
            return
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(conn.fileno(), zmq.POLLIN)
        recv, send, again = router.recv_multipart, router.send_multipart, zmq.Again
        running = True
        while running:
            for item, _ in poller.poll():
                stats["polls"] += 1
                if item is router:
                    n = 0
                    while n < DRAIN_MAX:
                        try:
                            frames = recv(zmq.NOBLOCK)
                        except again:
                            break
                        send(frames)
                        n += 1
                    stats["messages"] += n
                elif not _control(conn, stats):
                    running = False
    except KeyboardInterrupt:
        pass
    finally:
        router.close(0)
        ctx.term()


def _gateway_main(
    conn: multiprocessing.connection.Connection, config: FloorConfig, ipc_path: str, matcher_endpoint: str
) -> None:
    """Run the forwarding gateway: client ROUTER <-> matcher DEALER, one by one or in batches."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    front = _socket(ctx, zmq.ROUTER)
    back = _socket(ctx, zmq.DEALER)
    stats = {"in": 0, "batches": 0, "out": 0, "polls": 0}
    try:
        back.connect(matcher_endpoint)
        conn.send(("ready", _bind(front, config.transport, ipc_path)))
        if config.engine == "c":
            threading.Thread(target=_watch_pipe, args=(conn, stats), daemon=True).start()
            zmq.proxy(front, back)
            return
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        poller.register(conn.fileno(), zmq.POLLIN)
        again, noblock = zmq.Again, zmq.NOBLOCK
        f_recv, f_send = front.recv_multipart, front.send_multipart
        b_recv, b_send, b_send1 = back.recv_multipart, back.send_multipart, back.send
        batched, max_batch = config.batched, config.max_batch
        packed = batched and config.batch_format == "packed"
        running = True
        while running:
            for item, _ in poller.poll():
                stats["polls"] += 1
                if item is front:
                    if batched:
                        # Drain: everything waiting goes to the matcher as one message per max_batch.
                        n = 0
                        while n < DRAIN_MAX:
                            batch: list[bytes] = []
                            while len(batch) < 2 * max_batch:
                                try:
                                    batch += f_recv(noblock)
                                except again:
                                    break
                            if not batch:
                                break
                            if packed:
                                b_send1(msgpack.packb(batch))
                            else:
                                b_send(batch)
                            n += len(batch) // 2
                            stats["batches"] += 1
                            if len(batch) < 2 * max_batch:
                                break
                        stats["in"] += n
                    else:
                        n = 0
                        while n < DRAIN_MAX:
                            try:
                                frames = f_recv(noblock)
                            except again:
                                break
                            b_send(frames)
                            n += 1
                        stats["in"] += n
                        stats["batches"] += n
                elif item is back:
                    n = 0
                    while n < DRAIN_MAX:
                        try:
                            frames = b_recv(noblock)
                        except again:
                            break
                        if packed:
                            frames = msgpack.unpackb(frames[0])
                        for k in range(0, len(frames), 2):
                            f_send(frames[k : k + 2])
                        n += len(frames) // 2
                    stats["out"] += n
                elif not _control(conn, stats):
                    running = False
    except KeyboardInterrupt:
        pass
    finally:
        front.close(0)
        back.close(0)
        ctx.term()


# --------------------------------------------------------------------------- the floor, seen from the client


class Floor:
    """Start and stop the floor's node processes; the client connects to :attr:`endpoint`.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (in a ``finally``).
    :meth:`stop` is idempotent and leaves no process or socket file behind.

    Parameters
    ----------
    config
        Transport, batching, hops and engine of the nodes.
    """

    def __init__(self, config: FloorConfig | None = None) -> None:
        self.config = config or FloorConfig()
        self.endpoint = ""
        self._procs: list[tuple[str, multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]] = []
        self._tmp: str | None = None

    def __enter__(self) -> Floor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Start the matcher (and the gateway), wait until each is bound, and return the client's endpoint."""
        if self._procs:
            return self.endpoint
        mp = multiprocessing.get_context("spawn")
        self._tmp = tempfile.mkdtemp(prefix="exfab-floor-") if self.config.transport == "ipc" else ""
        try:
            endpoint = self._spawn(mp, "matcher", _matcher_main, (os.path.join(self._tmp, "matcher"),))
            if self.config.hops == 2:
                endpoint = self._spawn(mp, "gateway", _gateway_main, (os.path.join(self._tmp, "gateway"), endpoint))
        except BaseException:
            self.stop()
            raise
        self.endpoint = endpoint
        return endpoint

    def _spawn(self, mp: Any, name: str, main: Any, args: tuple[Any, ...]) -> str:
        parent, child = mp.Pipe()
        proc = mp.Process(target=main, args=(child, self.config, *args), name=f"floor-{name}", daemon=True)
        proc.start()
        child.close()
        self._procs.append((name, proc, parent))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not parent.poll(0.05):
            if not proc.is_alive():
                raise RuntimeError(f"floor {name} exited with code {proc.exitcode} before it was ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"floor {name} not ready after {READY_TIMEOUT_S:.0f} s")
        try:
            tag, endpoint = parent.recv()
        except EOFError:
            proc.join(1.0)
            raise RuntimeError(f"floor {name} exited with code {proc.exitcode} before it was ready") from None
        if tag != "ready":
            raise RuntimeError(f"floor {name} sent {tag!r} instead of ready")
        return str(endpoint)

    def dead(self) -> list[str]:
        """Return the names of the nodes that have exited, with their exit codes."""
        return [f"{name} (exit code {proc.exitcode})" for name, proc, _ in self._procs if not proc.is_alive()]

    def connect(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        """Return a client DEALER connected to the floor after a ping round trip (see :func:`connect_client`).

        Raises
        ------
        RuntimeError
            If a node has died (its traceback is on stderr) or the ping is not echoed.
        """
        try:
            return connect_client(ctx, self.endpoint)
        except TimeoutError as exc:
            dead = self.dead()
            raise RuntimeError(f"floor node exited: {', '.join(dead)}" if dead else str(exc)) from exc

    def pids(self) -> dict[str, int]:
        """Return the nodes' process ids as ``{"matcher:floor": pid, "gateway:floor": pid}`` (the harness's labels)."""
        return {f"{name}:floor": proc.pid for name, proc, _ in self._procs if proc.pid is not None}

    def stats(self) -> dict[str, dict[str, float]]:
        """Return each node's counters since it started: messages, batches, polls, and ``cpu_s`` (CPU seconds)."""
        out: dict[str, dict[str, float]] = {}
        for name, _, conn in self._procs:
            conn.send("stats")
            out[name] = conn.recv() if conn.poll(5.0) else {}
        return out

    def stop(self) -> None:
        """Stop every node (politely, then by signal) and remove the IPC folder."""
        for _, _, conn in self._procs:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for _, proc, conn in reversed(self._procs):
            proc.join(2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self._procs.clear()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None


def connect_client(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    """Return a client DEALER connected to `endpoint`, after one message has made the round trip.

    Raises
    ------
    TimeoutError
        If the ping is not echoed within ``PING_TIMEOUT_S``.
    """
    sock = _socket(ctx, zmq.DEALER)
    sock.connect(endpoint)
    sock.send(make_order(PING_SEQ))
    if not sock.poll(int(PING_TIMEOUT_S * 1000)):
        sock.close(0)
        raise TimeoutError(f"no echo from {endpoint} within {PING_TIMEOUT_S:.0f} s")
    sock.recv()
    return sock


@dataclass(frozen=True)
class ThroughputResult:
    """Pipelined throughput of one floor configuration."""

    config: str
    msgs_per_s: float
    messages: int
    seconds: float
    window: int
    mean_batch: float  # messages per gateway -> matcher message (1.0 unbatched, 0.0 without gateway stats)
    cpu_us_per_msg: dict[str, float]  # CPU time per message of each process (client, gateway, matcher, total)


def measure_throughput(
    floor: Floor, duration: float = 2.0, window: int = 1000, warmup: float = 0.3
) -> ThroughputResult:
    """Return the replies per second of a client keeping `window` messages outstanding through `floor`.

    The client sends pre-packed orders as fast as the window allows and counts
    replies; this is the transport's ceiling, not the client's.  Counting starts
    after `warmup` seconds.

    Parameters
    ----------
    floor
        A started :class:`Floor`.
    duration
        Seconds counted.
    window
        Most messages outstanding (sent and not yet echoed).
    warmup
        Seconds run before counting starts.
    """
    if window < 1 or duration <= 0:
        raise ValueError("window must be >= 1 and duration > 0")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = floor.connect(ctx)
    bodies = [make_order(i) for i in range(64)]
    send, recv, poll, again = sock.send, sock.recv, sock.poll, zmq.Again
    outstanding = 0
    received = 0
    k = 0
    start_count = time.perf_counter() + warmup
    end = start_count + duration
    counted_from = 0
    before: dict[str, dict[str, float]] = {}
    counting = False
    try:
        while True:
            while outstanding < window:
                send(bodies[k & 63])
                k += 1
                outstanding += 1
            if poll(100):
                while True:
                    try:
                        recv(zmq.NOBLOCK)
                    except again:
                        break
                    outstanding -= 1
                    received += 1
            now = time.perf_counter()
            if not counting and now >= start_count:
                counting, counted_from, start_count = True, received, now
                before, cpu0 = floor.stats(), time.process_time()
                end = now + duration
            elif counting and now >= end:
                break
        seconds = now - start_count
        messages = received - counted_from
        after, cpu1 = floor.stats(), time.process_time()
        gw0, gw1 = before.get("gateway", {}), after.get("gateway", {})
        batches = gw1.get("batches", 0) - gw0.get("batches", 0)
        mean_batch = (gw1.get("in", 0) - gw0.get("in", 0)) / batches if batches > 0 else 0.0
        cpu = cpu_per_message(before, after, cpu1 - cpu0, messages)
        # Let the window's last replies come home so that the next run starts on empty queues.
        while outstanding > 0 and poll(2000):
            recv()
            outstanding -= 1
    finally:
        sock.close(0)
        ctx.term()
    return ThroughputResult(floor.config.label(), messages / seconds, messages, seconds, window, mean_batch, cpu)


def cpu_per_message(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], client_cpu_s: float,
                    messages: int) -> dict[str, float]:
    """Return microseconds of CPU per message for the client and each node between two :meth:`Floor.stats`.

    A node's CPU time counts all its threads, libzmq's I/O thread included.
    """
    out = {"client": client_cpu_s}
    for name in after:
        out[name] = after[name].get("cpu_s", 0.0) - before.get(name, {}).get("cpu_s", 0.0)
    out["total"] = sum(out.values())
    return {k: round(v / max(1, messages) * 1e6, 1) for k, v in out.items()}


# --------------------------------------------------------------------------- command line


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="perf/floor.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("mode", nargs="?", choices=("throughput", "latency", "all"), default="all")
    p.add_argument("--transport", choices=("tcp", "ipc"), default="tcp")
    p.add_argument("--hops", type=int, choices=(1, 2), default=2, help="2: via a gateway (default); 1: direct")
    p.add_argument("--engine", choices=("python", "c"), default="python", help="c: zmq.proxy nodes (diagnostic)")
    p.add_argument("--batch-format", choices=("packed", "multipart"), default="packed",
                   help="a batch as one msgpack frame (default) or one frame per client id and body")
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--window", type=int, default=1000, help="outstanding messages in throughput mode")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    p.add_argument("--rate", type=float, default=10_000, help="offered msgs/s in latency mode")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure the floor and print its figures; return the exit status."""
    args = _parse(argv)
    base = FloorConfig(transport=args.transport, hops=args.hops, engine=args.engine,
                       batch_format=args.batch_format, max_batch=args.max_batch)
    out: dict[str, Any] = {"config": asdict(base)}
    if args.mode in ("latency", "all"):
        from perf.harness import FloorTarget, LoadDriver  # the harness imports this module

        target = FloorTarget(base)
        target.start()
        try:
            driver = LoadDriver(target, progress=not args.json)
            driver.run(args.rate, 0.5)  # warm-up, thrown away
            before, cpu0 = target.node_stats(), time.process_time()
            result = driver.run(args.rate, args.duration)
            cpu = cpu_per_message(before, target.node_stats(), time.process_time() - cpu0, result.sent)
        finally:
            target.stop()
        pct = result.percentiles("echo")
        out["latency"] = {"offered_per_s": args.rate, "achieved_per_s": round(result.achieved_per_s, 1),
                          "sent": result.sent, "completed": result.completed.get("echo", 0),
                          **{f"{k}_us": v for k, v in pct.items()}, "cpu_us_per_msg": cpu}
        if not args.json:
            print(f"round trip, {base.label()}, {args.rate:,.0f} msgs/s offered for {args.duration:g} s: "
                  f"p50 {pct['p50']:,.0f} us  p90 {pct['p90']:,.0f} us  p99 {pct['p99']:,.0f} us  "
                  f"p99.9 {pct['p99.9']:,.0f} us  max {pct['max']:,.0f} us  "
                  f"({result.completed.get('echo', 0):,}/{result.sent:,} echoed)")
            print("  CPU per message: " + ", ".join(f"{k} {v:.1f} us" for k, v in cpu.items()))
    if args.mode in ("throughput", "all"):
        configs = [base] if base.engine == "c" or base.hops == 1 else [base, replace(base, batched=True)]
        out["throughput"] = []
        for config in configs:
            with Floor(config) as floor:
                res = measure_throughput(floor, args.duration, args.window)
            out["throughput"].append(asdict(res))
            if not args.json:
                batch = f", mean batch {res.mean_batch:.1f}" if res.mean_batch else ""
                print(f"pipelined, {res.config}, window {res.window}: {res.msgs_per_s:>9,.0f} msgs/s{batch}")
                print("  CPU per message: " + ", ".join(f"{k} {v:.1f} us" for k, v in res.cpu_us_per_msg.items()))
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every node has been stopped by the finally blocks on the way up
        sys.exit(130)
