"""The real exchange as a :class:`perf.harness.Target`: orders through a gateway to a matcher.

``start`` runs the local topology (``topology/examples/local.toml``) on free
ports in a scratch folder, logs on ``brokers`` simulated brokers (raw DEALER
sockets speaking the protocol, no client library in the way) to one gateway,
and prepares a realistic command stream from :mod:`perf.workload` for one
symbol of the first shard: passive limit orders near the touch, cancels and
replaces of open orders, orders that cross.  Message ``i`` is command ``i`` of
that stream; its ``ack`` is the first answer to it (``accepted`` or
``rejected`` for a new order, ``cancelled`` or ``rejected`` for a cancel,
``replaced`` or ``rejected`` for a replace) and its ``fill`` the first fill of
the order it sent, when that order traded on arrival.

``node_pids`` names the node processes (``"matcher:A" -> pid``), for the
driver's CPU time per command; with ``profile_dir`` the nodes it starts run
their loops under cProfile (``nodes/profiling.py``) and write their profiles
there when they stop.
"""

from __future__ import annotations

import collections
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import zmq

from fabric.auth import connect
from fabric.constants import (
    BUY,
    MARKET,
    NO_PRICE,
    NO_QTY,
    OP_CANCEL,
    OP_NEW,
    TIF_NAMES,
)
from fabric.protocol import (
    Accepted,
    Cancel,
    Cancelled,
    Fill,
    Logon,
    LogonAck,
    New,
    Rejected,
    Replace,
    Replaced,
    decode_server,
    encode,
)
from nodes.profiling import ENV_CLOCK, ENV_DIR
from perf.workload import generate
from topology.keys import broker_keyring, demo_key_file
from topology.launcher import Launcher
from topology.load import load
from topology.model import GATEWAY, MATCHER, TICKER
from topology.ports import topology_on_free_ports

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "topology" / "examples" / "local.toml"


class ExchangeTarget:
    """Drive the exchange's order path; completions ``ack`` (one per command) and ``fill``."""

    name = "exchange"
    kinds: tuple[str, ...] = ("ack", "fill")

    def __init__(self, brokers: int = 8, fsync: str = "batch", commands: int = 2_000_000, seed: int = 1,
                 topology: str | None = None, profile_dir: str | os.PathLike[str] | None = None,
                 profile_clock: str = "wall", curve: bool = True) -> None:
        if profile_dir is not None and topology is not None:
            raise ValueError("profiling applies to an exchange the harness starts, not to one already running")
        self.topology = topology  # an exchange already running; None: start one on free ports
        self.curve = curve  # the exchange it starts uses CURVE (local.toml's demo keys) or runs open
        self.profile_dir = None if profile_dir is None else Path(profile_dir).resolve()
        self.profile_clock = profile_clock
        self.commands_sent = 0  # over the target's life: what a node's profile covers
        self.node_labels: list[str] = []  # "kind:name" of the nodes it started
        self.started_at = 0.0
        self.n_brokers = brokers
        self.fsync = fsync
        self.n_commands = commands
        self.seed = seed
        self.launcher: Launcher | None = None
        self.run = secrets.token_hex(3)  # order ids unique across runs against one running exchange
        self.tmp: str | None = None
        self.socks: list[zmq.Socket] = []
        self.ctx: zmq.Context = zmq.Context.instance()

    def start(self) -> None:
        """Start the topology (or connect to the running one), log the brokers on, prepare the command stream."""
        self.started_at = time.time()  # a node profile older than this is an earlier run's
        if self.topology is not None:
            topo = load(self.topology)
        else:
            self.tmp = tempfile.mkdtemp(prefix="exfab-perf-")
            path = topology_on_free_ports(LOCAL, Path(self.tmp), curve=self.curve)
            env = {} if self.profile_dir is None else {ENV_DIR: str(self.profile_dir), ENV_CLOCK: self.profile_clock}
            # The order path and its market data; the persistence node, off the order path, has its own benchmark
            # (perf/bench_persistence.py) and on two cores would take the matchers' CPU.
            self.launcher = Launcher(path, workdir=self.tmp, kinds=(MATCHER, TICKER, GATEWAY),
                                     extra_args={"matcher": ["--fsync", self.fsync]}, extra_env=env)
            self.launcher.start()
            self.node_labels = [n.label for n in self.launcher.nodes]
            topo = self.launcher.topo
        self.symbol = topo.shards[0].symbols[0]
        inst = topo.instrument(self.symbol)
        lo, hi = inst.band_lo or 1, inst.band_hi or 10**7
        self.cmds = generate(self.n_commands, self.seed, mid=(lo + hi) // 2, lot=inst.lot, band=(lo, hi)).tolist()
        self.to_price = inst.to_price
        endpoint = topo.gateways[0].endpoint.connect
        self.poller = zmq.Poller()
        ids = [f"PERF{b}-{self.seed}" for b in range(self.n_brokers)]
        if topo.security is not None and topo.security.brokers == "keys":  # brokers log on with keys: the demo's
            ids = [b.id for b in topo.brokers if b.role == "broker" and demo_key_file(topo, b.id)][:self.n_brokers]
            if len(ids) < self.n_brokers:
                raise RuntimeError(f"the topology ships demo keys for {len(ids)} brokers, and {self.n_brokers} "
                                   "are asked for (--brokers)")
        for broker in ids:
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            connect(s, endpoint, broker_keyring(topo, broker))
            s.send(encode(Logon(broker=broker, heartbeat_ms=60_000)))
            if not s.poll(10_000) or not isinstance(decode_server(s.recv_multipart()[0]), LogonAck):
                raise RuntimeError(f"broker {broker} could not log on to {endpoint}")
            self.socks.append(s)
            self.poller.register(s, zmq.POLLIN)
        self.owner: dict[int, int] = {}  # order -> broker socket
        # (op, oid) -> messages waiting for their ack, oldest first: an order's answers come in order,
        # and two replaces of one order may be in flight at once.
        self.pending: dict[tuple[str, str], collections.deque[int]] = collections.defaultdict(collections.deque)
        self.aggressive: dict[str, int] = {}  # oid -> message whose first fill is still to come

    def send(self, i: int) -> None:
        """Send command ``i`` of the stream."""
        op, oid, broker, side, otype, tif, price, qty, *_ = self.cmds[i % len(self.cmds)]
        if i >= len(self.cmds):
            oid += (i // len(self.cmds)) * 10_000_000  # past the stream's end: fresh order ids
        key = f"h{self.run}-{oid}"
        msg: New | Cancel | Replace
        if op == OP_NEW:
            b = broker % self.n_brokers
            self.owner[oid] = b
            msg = New(oid=key, symbol=self.symbol, side="buy" if side == BUY else "sell",
                      type="market" if otype == MARKET else "limit",
                      price=None if otype == MARKET else self.to_price(price), qty=qty,
                      tif=TIF_NAMES[tif])  # type: ignore[arg-type]
            self.pending[("new", key)].append(i)
            self.aggressive[key] = i
        elif op == OP_CANCEL:
            b = self.owner.get(oid, 0)
            msg = Cancel(oid=key, symbol=self.symbol)
            self.pending[("cancel", key)].append(i)
        else:
            b = self.owner.get(oid, 0)
            msg = Replace(oid=key, symbol=self.symbol, price=None if price == NO_PRICE else self.to_price(price),
                          qty=None if qty == NO_QTY else qty)
            self.pending[("replace", key)].append(i)
            self.aggressive[key] = i
        self.socks[b].send(encode(msg))
        self.commands_sent += 1

    def poll(self, timeout: float) -> list[tuple[int, str]]:
        """Return the completions that arrived within ``timeout`` seconds."""
        out: list[tuple[int, str]] = []
        ready = self.poller.poll(int(timeout * 1000))
        for sock, _ in ready:
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                for body in frames:
                    self._completion(decode_server(body), out)
        return out

    def _take(self, op: str, oid: str) -> int | None:
        waiting = self.pending.get((op, oid))
        if not waiting:
            return None
        i = waiting.popleft()
        if not waiting:
            del self.pending[(op, oid)]
        return i

    def _completion(self, msg: object, out: list[tuple[int, str]]) -> None:
        if isinstance(msg, Accepted):
            i = self._take("new", msg.oid)
        elif isinstance(msg, Rejected):
            i = self._take(msg.op, msg.oid or "")
            self.aggressive.pop(msg.oid or "", None)
        elif isinstance(msg, Cancelled):
            i = self._take("cancel", msg.oid) if msg.reason == "requested" else None
            self.aggressive.pop(msg.oid, None)
        elif isinstance(msg, Replaced):
            i = self._take("replace", msg.oid)
        elif isinstance(msg, Fill):
            i = self.aggressive.pop(msg.oid, None) if msg.aggressor else None
            if i is not None:
                out.append((i, "fill"))
            return
        else:
            return
        if i is not None:
            out.append((i, "ack"))

    def node_pids(self) -> dict[str, int]:
        """Return the exchange's node processes on this machine, ``"kind:name" -> pid`` (``"matcher:A"``).

        The nodes it started; for an exchange already running (``topology``), the processes of this machine that
        run a node of that topology file (``python -m nodes.KIND`` or ``exfab node KIND``, ``--topology`` naming
        the same file).
        """
        if self.launcher is not None:
            return {n.label: n.proc.pid for n in self.launcher.nodes if n.alive}
        if self.topology is not None:
            return running_nodes(self.topology)
        return {}

    def stop(self) -> None:
        """Close the brokers' sockets and stop the exchange."""
        for s in self.socks:
            s.close(0)
        self.socks = []
        if self.launcher is not None:
            self.launcher.stop()
            self.launcher = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def running_nodes(topology: str | os.PathLike[str]) -> dict[str, int]:
    """Return the processes of this machine that run a node of `topology`: ``"kind:name" -> pid``.

    A node's command line is ``... -m nodes.KIND --topology FILE --id NAME`` (the launcher's, ``exfab up``) or
    ``exfab node KIND --topology FILE --id NAME``; FILE is resolved against the process's working directory.
    """
    want = Path(topology).resolve()
    out: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            kind = name = path = None
            for k, arg in enumerate(argv[:-1]):
                nxt = argv[k + 1]
                if arg == "-m" and nxt.startswith("nodes."):
                    kind = nxt.removeprefix("nodes.")
                elif arg == "node" and nxt in ("matcher", "gateway", "ticker"):
                    kind = nxt
                elif arg == "--topology":
                    path = nxt
                elif arg == "--id":
                    name = nxt
            if kind and name and path and (Path(os.readlink(f"/proc/{entry}/cwd")) / path).resolve() == want:
                out[f"{kind}:{name}"] = int(entry)
        except OSError:
            continue  # gone, or not ours to read
    return out
