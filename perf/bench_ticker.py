"""Market data benchmark: the trades per second the ticker keeps up with, its latency to a browser, its fan-out.

1. **Throughput.** A realistic matcher stream: ``perf/workload.py`` order flow for the local
   topology's twelve symbols, run through the two shards' real :class:`~nodes.matcher.Matcher`
   objects in-process (no sockets), batches of ``MAX_BATCH`` (1,024) commands, each batch's PUB
   messages grouped per topic by the real :meth:`~nodes.matcher.Outbox.flush` (a lone message or a
   bundle): the ``[topic, body]`` frames a ticker receives.  Then:

   (c) end to end over ZeroMQ: a ticker process (``python -m nodes.ticker``) fed the frames by a
       scripted publisher bound on the shards' PUB ports (XPUB without drops: as fast as the ticker
       takes them), its start answered on the shards' recovery ports with an empty snapshot at
       ``seq`` 0, its replay requests by the matchers that made the stream; sustained trades/s from
       its ``/stats``.  A scripted publisher stands in for the matchers to offer more than they can
       make.  It also learns the ticker's subscriptions, which (a) and (b) then use;
   (a) in this process, the ticker's own work: :meth:`Ticker.ingest` + :meth:`Ticker.publish_turn`
       per turn, turns of up to ``MAX_TURN`` frames or of one matcher batch, with the real SQLite
       history writer (its thread in this process) or a writer that drops; replay requests are
       answered by the matchers (:meth:`Matcher.handle_recovery`) in the same loop, their time taken out.
       The stream and the matchers are frozen out of the garbage collector's sight (``gc.freeze``),
       as they would not be in a ticker process;
   (b) the floor, in the same run: only decoding the same frames (``iter_pub``, and
       ``iter_pub_typed`` where the protocol has it; execution reports only as far as their
       numbers), nothing applied.

   (b) and (a) run in rounds, each measuring everything once, and report medians.

2. **Latency**, trade to WebSocket client, at ``--rate`` trades/s for ``--duration`` s on the real
   exchange (matchers with ``--fsync none``, gateways, ticker, as processes): brokers on both
   gateways each send pairs of a resting limit order and an IOC crossing it; one WebSocket client
   subscribed to every symbol records when each trade reaches it in a ``quote``'s ``prints``; the
   baseline is a ZeroMQ SUB on the matchers' PUB (topic ``T``) timing the same trades.  Latency is
   receipt time minus the trade's ``ts`` (the matcher's clock, same machine).

3. **Fan-out**: the same at ``--fanout-rate`` trades/s with ``--clients`` WebSocket clients (one
   process, one asyncio loop), and the baseline of one client in the same run: latency over every
   (trade, client) pair, the slowest client per trade, messages and objects delivered per second, the
   ticker's CPU.  The clients ask for batches (``/ws?batch=1``, as the live page); ``--no-batch``
   measures the one-object-per-message mode instead.

The headline figures and the targets (issue 12): ``process_trades_per_s``, part 1(c), target at least
100,000; ``fanout_1000_p99_ms``, part 3's p99 over every (trade, client) pair with 1,000 clients at 100
trades/s, target at most 250 ms with no pair missing.

Reports: ``bench_ticker.json``, ``.md`` and ``.png`` (``--quick``: ``bench_ticker-quick.*``) in ``--out-dir``,
by default ``.exfab/perf/bench_ticker/`` under the current directory (a working folder git ignores: measuring
does not change the checkout; name ``perf/reports`` to refresh the reports checked in).  ``--json`` prints the
figures as one JSON object on standard output (the headline keys first) instead of the Markdown report.

Usage::

    python perf/bench_ticker.py                      # everything, about two minutes
    python perf/bench_ticker.py --json               # the same, the figures as one JSON object
    python perf/bench_ticker.py --quick              # a smoke run, under a minute
    python perf/bench_ticker.py --parts 1 --trades 100000
    python perf/bench_ticker.py --parts 3 --profile-live     # the ticker under cProfile (slower)
    python perf/bench_ticker.py --out-dir perf/reports        # refresh the reports checked in
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import logging
import os
import pstats
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Literal
from unittest import mock

import msgspec
import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import fabric.protocol  # noqa: E402
import nodes.matcher  # noqa: E402
from fabric.book import warm_up  # noqa: E402
from fabric.follow import MAX_TURN  # noqa: E402
from fabric.history import BarRecord, TickRecord, open_history  # noqa: E402
from fabric.protocol import (  # noqa: E402
    EXEC,
    Cancel,
    Logon,
    New,
    OrderCommand,
    Replace,
    ReplayRequest,
    SnapshotReply,
    SnapshotRequest,
    decode_internal,
    encode,
    iter_pub,
)
from nodes.matcher import MAX_BATCH, Matcher  # noqa: E402
from nodes.ticker import PUB_HWM, Ticker  # noqa: E402
from perf.harness import CpuWatch, git_info, machine_info  # noqa: E402
from perf.ticker_clients import raise_fd_limit  # noqa: E402
from perf.workload import generate, to_replay  # noqa: E402
from topology.launcher import Launcher, read_line  # noqa: E402
from topology.load import load  # noqa: E402
from topology.model import GATEWAY, MATCHER, Topology  # noqa: E402
from topology.ports import free_port, topology_on_free_ports  # noqa: E402

LOCAL: Final = ROOT / "topology" / "examples" / "local.toml"
DEFAULT_OUT: Final = Path(".exfab") / "perf" / "bench_ticker"  # under the current directory, as exfab perf's
TARGET_TRADES_PER_S: Final = 100_000  # part 1(c): a ticker process
TARGET_FANOUT_CLIENTS: Final = 1_000  # part 3: this many WebSocket clients on every symbol...
TARGET_FANOUT_RATE: Final = 100.0  # ... at this many trades/s ...
TARGET_FANOUT_P99_MS: Final = 250.0  # ... see every trade's quote within this, at p99 over every (trade, client)
STAMP_STEP_NS: Final = 3_333  # the stream's ts advance per command: 300,000 commands/s, about 100,000 trades/s
CHUNK_BATCHES: Final = 8  # matcher batches of order flow generated at a time, per shard
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
# Part 1(a)'s configurations: (turn, history).  Turn "frames": up to MAX_TURN frames a turn, the most the node
# drains before publishing; "batch": one matcher batch a turn.  History "none": a writer that drops.
IN_PROCESS: Final = (("frames", "sqlite"), ("batch", "sqlite"), ("frames", "none"), ("batch", "none"))
# Profiled without the SQLite thread, whose turns on the GIL would be charged to whatever the main thread was doing
# (the history records are still built: the ticker makes them before handing them over).
PROFILED: Final = (("frames", "none"), ("batch", "none"))
PROFILE_BUDGET_S: Final = 5.0
E2E_ROUNDS: Final = 3  # runs of part 1(c), each with a fresh ticker process; the median counts


def _say(msg: str) -> None:
    sys.stderr.write(f"bench_ticker: {msg}\n")
    sys.stderr.flush()


def _topology(workdir: Path) -> Path:
    """Copy the local topology into ``workdir`` on free ports, its ``data_dir`` inside ``workdir``; return its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = topology_on_free_ports(LOCAL, workdir, curve=False)  # (stand-in matchers: plain sockets)
    lines = [f'data_dir = "{workdir / "data"}"' if ln.strip().startswith("data_dir") else ln
             for ln in path.read_text().splitlines()]
    # Every fan-out client connects from this machine's one address: lift the ticker's per-address cap.
    lines = [f"{ln}\nconnections_per_address = 1000000" if ln.strip().startswith("http_port") else ln for ln in lines]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cpu_ticks(pid: int, tid: int | None = None) -> int:
    """Return the CPU time (user + system, clock ticks) of process ``pid`` (or of its thread ``tid``); 0 when gone."""
    try:
        with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    rest = stat[stat.rfind(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def _thread_ticks(pid: int) -> dict[str, int]:
    """Return the CPU ticks of process ``pid`` per kind of thread: ``main`` (the Python loop), ``zmq`` (libzmq's
    I/O threads), ``other`` (Python threads: the ticker's history writer)."""
    out = {"main": 0, "zmq": 0, "other": 0}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        kind = "main" if tid == pid else "zmq" if comm.startswith("ZMQbg") else "other"
        out[kind] += _cpu_ticks(pid, tid)
    return out


def _machine_ticks() -> int:
    """Return the CPU ticks the whole machine spent busy (all but idle and iowait), from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)


def _our_cpu_s() -> float:
    """Return the CPU seconds of this process and of its children that ended (every node and client it started)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _cores(before: dict[str, int], after: dict[str, int], secs: float) -> dict[str, float]:
    return {k: round((after.get(k, 0) - v) / CLK_TCK / secs, 3) for k, v in before.items()}


def _summary(lat_ns: np.ndarray) -> dict[str, float | int | None]:
    """Return count and p50/p90/p99/max (microseconds) of latencies in nanoseconds."""
    if lat_ns.size == 0:
        return {"n": 0, "p50_us": None, "p90_us": None, "p99_us": None, "max_us": None}
    p50, p90, p99 = np.percentile(lat_ns, [50, 90, 99]) / 1000.0
    return {"n": int(lat_ns.size), "p50_us": float(p50), "p90_us": float(p90), "p99_us": float(p99),
            "max_us": float(lat_ns.max()) / 1000.0}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _drain(stream: IO[str]) -> None:
    for _ in stream:
        pass


def _start(cmd: list[str], log_path: Path, timeout: float) -> subprocess.Popen[str]:
    """Start a process that prints ``READY...`` on its standard output when it serves, and return it.

    Raises
    ------
    RuntimeError
        When it exits or stays silent for ``timeout`` seconds.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True)
    assert proc.stdout is not None
    line = read_line(proc.stdout, timeout)
    if line is None or not line.startswith("READY"):
        proc.kill()
        proc.wait()
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"{shlex.join(cmd[1:4])} did not start (see {log_path}):\n{tail}")
    return proc


def _stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _ticker_cmd(path: Path, profile: Path | None = None) -> list[str]:
    prof = [] if profile is None else ["-m", "cProfile", "-o", str(profile)]
    return [sys.executable, *prof, "-m", "nodes.ticker", "--topology", str(path)]


def _profile_rows(prof: cProfile.Profile | pstats.Stats, n: int = 15) -> list[dict[str, Any]]:
    """Return the top ``n`` functions by own time, with paths shortened."""
    st = prof if isinstance(prof, pstats.Stats) else pstats.Stats(prof)
    rows = []
    for (file, line, name), (_cc, calls, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        short = re.sub(r"^.*/lib/python3\.\d+/(site-packages/)?", "", file.removeprefix(str(ROOT) + "/"))
        where = f"{short}:{line}({name})" if line else name
        rows.append({"function": where, "calls": calls, "tottime_s": tt, "cumtime_s": ct})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:n]


# ==========================================================================
# Part 1: the stream, and the throughput
# ==========================================================================


class DropWriter:
    """A history writer that drops everything: the ticker without its history (for the difference it makes)."""

    def add_ticks(self, ticks: Sequence[TickRecord]) -> None:
        """Drop ``ticks``."""

    def add_bars(self, bars: Sequence[BarRecord]) -> None:
        """Drop ``bars``."""

    def pending(self) -> int:
        """Return 0: nothing is ever waiting."""
        return 0

    def flush(self, timeout: float | None = None) -> bool:
        """Return at once: nothing to write."""
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Nothing to close."""
        return True


class _Collect:
    """Stands in for a matcher's PUB socket: keeps what :meth:`Outbox.flush` sends."""

    def __init__(self) -> None:
        self.frames: list[list[bytes]] = []

    def send_multipart(self, frames: Sequence[bytes]) -> None:
        self.frames.append(list(frames))


def _collect_frames(sock: Any, frames: Sequence[bytes], flags: int = 0) -> None:
    """Stands in for :func:`fabric.sockets.send_frames` in the matcher module: the compiled send wants a real socket,
    and the stream's PUB is a :class:`_Collect`."""
    sock.send_multipart(list(frames))


class _StampClock:
    """Stands in for the matcher module's ``time``: ``time_ns`` advances ``step`` per call (one call per command)."""

    def __init__(self, start: int, step: int) -> None:
        self.now = start
        self.step = step

    def time_ns(self) -> int:
        self.now += self.step
        return self.now

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()


@dataclass
class Stream:
    """A matcher PUB stream: per batch, the shard's number and its ``[topic, body]`` frames, in publishing order."""

    batches: list[tuple[int, list[list[bytes]]]]
    matchers: list[Matcher]
    commands: int
    trades: int
    messages: int
    build_s: float

    @property
    def frames(self) -> list[list[bytes]]:
        """Every frame, in order."""
        return [f for _, frames in self.batches for f in frames]


def _order_flow(topo: Topology, shard_no: int, n: int, seed: int, chunk: int) -> list[OrderCommand]:
    """Return ``n`` commands of ``perf.workload`` flow over the shard's symbols (one stream per symbol, interleaved)."""
    syms = list(topo.shards[shard_no].symbols)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(syms), n)
    counts = np.bincount(which, minlength=len(syms))
    streams = []
    for k, sym in enumerate(syms):
        inst = topo.instrument(sym)
        assert inst.ref_price is not None and inst.band_lo is not None and inst.band_hi is not None
        mid = int(inst.ref_price / inst.tick)
        cmds = generate(int(counts[k]), seed + 7 * k + 1, mid=mid, lot=inst.lot, band=(inst.band_lo, inst.band_hi))
        streams.append(to_replay(cmds, sym, str(inst.tick), oid_prefix=f"{sym}-{chunk}-"))
    out: list[OrderCommand] = []
    for i, k in enumerate(which.tolist()):
        d: dict[str, Any] = next(streams[k])
        op = d["op"]
        cmd: New | Cancel | Replace
        if op == "new":
            cmd = New(oid=d["oid"], symbol=d["symbol"], side=d["side"], type=d["type"], price=d.get("price"),
                      qty=d["qty"], tif=d["tif"])
        elif op == "cancel":
            cmd = Cancel(oid=d["oid"], symbol=d["symbol"])
        else:
            cmd = Replace(oid=d["oid"], symbol=d["symbol"], price=d.get("price"), qty=d.get("qty"))
        out.append(OrderCommand(gateway="gw1", req=chunk * n + i + 1, broker=d["broker"], cmd=cmd))
    return out


def build_stream(topo: Topology, trades: int, seed: int) -> Stream:
    """Run order flow through both shards' matchers until they made ``trades`` trades; return what they published.

    The matchers are real (journal with fsync none, in the topology's data_dir) and get batches of
    ``MAX_BATCH`` commands, alternately, through the path ``Matcher.handle_batch`` takes (without the
    decoding of the order socket's frames and the replies); their PUB is a collector, so each batch's
    messages are grouped per topic by the real ``Outbox.flush``.  Message timestamps advance
    ``STAMP_STEP_NS`` per command, as if the matchers had made the flow at about 100,000 trades/s.
    """
    t0 = time.perf_counter()
    matchers = [Matcher(topo, s.replicas[0].name, fsync="none") for s in topo.shards]
    pubs = [_Collect() for _ in matchers]
    for m, pub in zip(matchers, pubs, strict=True):
        m.outbox.pub = pub  # type: ignore[assignment]
    batches: list[tuple[int, list[list[bytes]]]] = []
    commands = 0
    chunk = 0
    made = 0
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(nodes.matcher, "time", _StampClock(time.time_ns(), STAMP_STEP_NS)))
        # The matcher sends through fabric.sockets' compiled helpers, which want a real socket.
        patches.enter_context(mock.patch.object(nodes.matcher, "send_frames", _collect_frames))
        while made < trades:
            flows = [_order_flow(topo, no, CHUNK_BATCHES * MAX_BATCH, seed + 1000 * chunk + no, chunk)
                     for no in range(len(matchers))]
            for b in range(CHUNK_BATCHES):
                for no, m in enumerate(matchers):
                    work: list[tuple[bytes, OrderCommand]] = [(b"bench", oc) for oc in
                                                              flows[no][b * MAX_BATCH:(b + 1) * MAX_BATCH]]
                    commands += len(work)
                    replies: dict[bytes, list[Any]] = {}
                    while work:
                        work = m._handle_round(work, replies)
                    pubs[no].frames = []
                    m.outbox.flush()
                    batches.append((no, pubs[no].frames))
                made = sum(m.engine.trade_id(sym) for m in matchers for sym in m.symbols)
                if made >= trades:
                    break
            chunk += 1
            _say(f"  stream: {commands:,} commands, {made:,} trades so far...")
    messages = sum(m.outbox.seq for m in matchers)
    return Stream(batches, matchers, commands, made, messages, time.perf_counter() - t0)


class _ExecHead(msgspec.Struct, frozen=True, gc=False):
    """The numbers of an execution report (or the bodies of a bundle of them): what a ticker following every
    ``seq`` of a shard must decode of a message it does not use."""

    t: str
    shard: int = -1
    seq: int = 0
    msgs: list[bytes] = []


_exec_head = msgspec.msgpack.Decoder(_ExecHead).decode


# The decoders a ticker may use for trades and book changes: ``iter_pub`` validates every field as the protocol
# says; ``iter_pub_typed`` (where fabric.protocol has it) checks types only, for a node reading its own matchers.
DECODERS: Final[dict[str, Callable[[bytes], list[Any]]]] = {
    "iter_pub": iter_pub, **({"iter_pub_typed": fabric.protocol.iter_pub_typed}
                             if hasattr(fabric.protocol, "iter_pub_typed") else {})}


def decode_floor(frames: list[list[bytes]], decoder: Callable[[bytes], list[Any]] = iter_pub) -> int:
    """Decode every frame, nothing applied (``decoder``; execution reports only as far as their numbers); return
    the number of messages."""
    n = 0
    for topic, body in frames:
        if topic[:1] == EXEC:
            head = _exec_head(body)
            msgs: list[Any] = [_exec_head(b) for b in head.msgs] if head.t == "bundle" else [head]
        else:
            msgs = decoder(body)
        n += len(msgs)
    return n


def _subscribed(frames: list[list[bytes]], prefixes: Sequence[bytes]) -> list[list[bytes]]:
    """The frames a SUB socket subscribed to ``prefixes`` receives (ZeroMQ matches the start of the topic frame)."""
    if b"" in prefixes:
        return frames
    return [f for f in frames if f[0].startswith(tuple(prefixes))]


def _turns(stream: Stream, turn: str, prefixes: Sequence[bytes]) -> list[list[list[bytes]]]:
    if turn == "batch":
        return [_subscribed(frames, prefixes) for _, frames in stream.batches]
    frames = _subscribed(stream.frames, prefixes)
    return [frames[i:i + MAX_TURN] for i in range(0, len(frames), MAX_TURN)]


def _answer_recovery(msg: list[bytes], sock: Any, matcher: Matcher) -> None:
    # A snapshot request gets an empty snapshot at seq 0 (the ticker starts from nothing); a replay request the
    # matcher's own answer, from the ring of what it published.
    req = decode_internal(msg[-1])
    if isinstance(req, SnapshotRequest):
        sock.send_multipart((msg[0], encode(SnapshotReply(shard=matcher.shard_no, seq=0, epoch=0, exec_tseq=0,
                                                          books=[]))))
    elif isinstance(req, ReplayRequest):
        matcher.handle_recovery(msg, sock)


async def _serve_recovery(sock: Any, matcher: Matcher, spent: list[float]) -> None:
    # The shard's recovery socket in the ticker's loop; the time it takes is counted in `spent`.
    while True:
        msg = await sock.recv_multipart()
        t = time.perf_counter()
        _answer_recovery(msg, sock, matcher)
        spent[0] += time.perf_counter() - t


async def _inprocess(topo: Topology, stream: Stream, turn: str, history: str, prefixes: Sequence[bytes], tmp: Path,
                     profile: bool, budget: float) -> dict[str, Any]:
    store = open_history("sqlite", sqlite_path=tmp / f"history-{time.time_ns()}.sqlite3")
    ticker = Ticker(topo, history=store)
    if history == "none":
        ticker.writer.close()
        ticker.writer = DropWriter()  # type: ignore[assignment]
    pub = ticker.ctx.socket(zmq.PUB)  # what Ticker.run binds: the feed, here without subscribers
    pub.setsockopt(zmq.SNDHWM, PUB_HWM)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"tcp://127.0.0.1:{free_port()}")
    ticker._pub = pub
    spent = [0.0]
    routers = []
    servers = []
    for no, shard in enumerate(topo.shards):
        r = ticker.ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.LINGER, 0)
        r.bind(shard.replicas[0].recovery.bind)
        routers.append(r)
        servers.append(asyncio.get_running_loop().create_task(_serve_recovery(r, stream.matchers[no], spent)))
    turns = _turns(stream, turn, prefixes)
    prof = cProfile.Profile() if profile else None
    try:
        t0 = time.perf_counter()
        c0 = time.process_time()
        m0 = _machine_ticks()
        if prof is not None:
            prof.enable()
        deadline = t0 + budget
        for frames in turns:  # what Ticker._ingest does with each drained turn
            ticker.follow.turns += 1
            ticker.ingest(frames)
            ticker.publish_turn()
            await asyncio.sleep(0)
        while ticker.follow._tasks and time.perf_counter() < deadline:  # replays still under way
            await asyncio.sleep(0)
        timed_out = bool(ticker.follow._tasks)
        while ticker.follow._tasks:  # cancel again until they are gone: asyncio.wait_for can swallow a cancellation
            for task in list(ticker.follow._tasks):
                task.cancel()
            await asyncio.sleep(0)
        ticker.publish_turn()
        if prof is not None:
            prof.disable()
        loop_s = time.perf_counter() - t0 - spent[0]
        others = ((_machine_ticks() - m0) / CLK_TCK - (time.process_time() - c0)) / (loop_s + spent[0])
        cpu_s = time.process_time() - c0 - spent[0]  # every thread of this process: the ticker's, its history writer
        t1 = time.perf_counter()
        written = ticker.writer.flush(120.0)
        drain_s = time.perf_counter() - t1
    finally:
        for t in servers:
            t.cancel()
        await asyncio.gather(*servers, return_exceptions=True)
        for s in (pub, *routers, *(ln.sock for ln in ticker.links if ln.sock is not None)):
            s.close(0)
        ticker.ctx.term()
        ticker.writer.close(30.0)
        store.close()
    st = ticker.stats_view()
    applied = sum(s.trades for s in ticker.feed.state.symbols.values())
    out: dict[str, Any] = {
        "loop_s": loop_s, "cpu_s": cpu_s, "others_cores": max(0.0, others), "drain_s": drain_s,
        "history_written": written, "recovery_s": spent[0],
        "trades": applied, "messages": st["messages"], "turns": st["turns"], "gaps": st["gaps"],
        "replays": sum(ln.replays for ln in ticker.links), "published": st["published"],
        "complete": not timed_out and applied == stream.trades,
    }
    if prof is not None:
        out["profile"] = _profile_rows(prof)
    return out


def _median_run(turn: str, history: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the figures of (a) for one configuration from its runs: the median's."""
    loop_s = float(np.median([r["loop_s"] for r in runs]))
    cpu_s = float(np.median([r["cpu_s"] for r in runs]))
    drain_s = float(np.median([r["drain_s"] for r in runs]))
    last = runs[-1]
    trades = last["trades"]
    return {
        "turn": turn, "history": history, "repeats": len(runs),
        "loop_s": loop_s, "loop_s_all": [r["loop_s"] for r in runs], "cpu_s": cpu_s,
        "cpu_s_all": [r["cpu_s"] for r in runs], "drain_s": drain_s,
        "others_cores_all": [round(r["others_cores"], 2) for r in runs],
        "trades_per_s": trades / loop_s, "trades_per_cpu_s": trades / cpu_s,
        "best_trades_per_s": max(r["trades"] / r["loop_s"] for r in runs), "messages_per_s": last["messages"] / loop_s,
        "others_cores": float(np.median([r["others_cores"] for r in runs])),
        "sustained_trades_per_s": trades / (loop_s + drain_s),
        "turns": last["turns"], "replays": last["replays"], "gaps": last["gaps"],
        "recovery_s": float(np.median([r["recovery_s"] for r in runs])), "published": last["published"],
        "complete": all(r["complete"] for r in runs), "trades": trades,
    }


class _RecoveryServer(threading.Thread):
    """The shards' recovery ROUTERs for a ticker process: empty snapshots at seq 0, replays from the matchers' rings."""

    def __init__(self, topo: Topology, matchers: list[Matcher]) -> None:
        super().__init__(name="recovery", daemon=True)
        self.topo = topo
        self.matchers = matchers
        self.stopping = False
        self.requests = 0
        self.bound = threading.Event()

    def run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        socks = []
        poller = zmq.Poller()
        for shard in self.topo.shards:
            s = ctx.socket(zmq.ROUTER)
            s.setsockopt(zmq.LINGER, 0)
            s.bind(shard.replicas[0].recovery.bind)
            poller.register(s, zmq.POLLIN)
            socks.append(s)
        self.bound.set()
        try:
            while not self.stopping:
                for s, _ in poller.poll(100):
                    msg = s.recv_multipart()
                    self.requests += 1
                    _answer_recovery(msg, s, self.matchers[socks.index(s)])
        finally:
            for s in socks:
                s.close(0)
            ctx.term()


def end_to_end(path: Path, topo: Topology, stream: Stream, timeout: float, logs: Path) -> dict[str, Any]:
    """(c): a ticker process fed the stream over ZeroMQ as fast as it takes it; return its sustained rate.

    The publisher sends every frame; ZeroMQ passes on those the ticker subscribed to (``subscriptions``).
    """
    rec = _RecoveryServer(topo, stream.matchers)
    rec.start()
    rec.bound.wait(10)
    ctx: zmq.Context[Any] = zmq.Context()
    pubs = []
    for shard in topo.shards:
        x = ctx.socket(zmq.XPUB)
        x.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue blocks the sender: fed as fast as the ticker takes them
        x.setsockopt(zmq.LINGER, 0)
        x.bind(shard.replicas[0].pub.bind)
        pubs.append(x)
    proc = _start(_ticker_cmd(path), logs / "ticker-e2e.log", 90)
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    assert topo.ticker is not None
    url = topo.ticker.http_url + "stats"
    subscriptions: set[bytes] = set()
    try:
        for x in pubs:  # the ticker subscribes before it asks for its snapshot: its subscriptions are all here
            if not x.poll(15_000):
                raise RuntimeError("the ticker did not subscribe")
            while x.poll(200):
                sub = x.recv()
                if sub[:1] == b"\x01":
                    subscriptions.add(sub[1:])
        cpu0 = _cpu_ticks(proc.pid)
        threads0 = _thread_ticks(proc.pid)
        t0 = time.perf_counter()
        for no, frames in stream.batches:
            for f in frames:
                pubs[no].send_multipart(f)
        sent_s = time.perf_counter() - t0
        st = _get_json(url)
        while st["trades"] < stream.trades and time.perf_counter() - t0 < timeout:
            time.sleep(0.05)
            st = _get_json(url)
        secs = time.perf_counter() - t0
        cpu = (_cpu_ticks(proc.pid) - cpu0) / CLK_TCK
        threads = _cores(threads0, _thread_ticks(proc.pid), secs)
        pending = st.get("history_pending") or 0
        while pending and time.perf_counter() - t0 < timeout:  # the history writer's backlog
            time.sleep(0.05)
            pending = _get_json(url).get("history_pending") or 0
        drain_s = time.perf_counter() - t0 - secs
    finally:
        _stop(proc)
        rec.stopping = True
        rec.join(5)
        for x in pubs:
            x.close(0)
        ctx.term()
    shards = st.get("shards", {})
    return {
        "secs": secs, "sent_s": sent_s, "trades": st["trades"], "complete": st["trades"] >= stream.trades,
        "trades_per_s": st["trades"] / secs, "messages_per_s": st["messages"] / secs, "cpu_cores": cpu / secs,
        "threads_cores": threads, "turns": st["turns"], "gaps": st["gaps"],
        "replays": sum(s["replays"] for s in shards.values()),
        "recovery_requests": rec.requests, "history_pending": st.get("history_pending"), "drain_s": drain_s,
        "history_left": pending, "sustained_trades_per_s": st["trades"] / (secs + drain_s),
        "subscriptions": sorted(s.decode() for s in subscriptions),
    }


def _turn_label(turn: str) -> str:
    return f"up to {MAX_TURN:,} frames" if turn == "frames" else "one matcher batch"


def part_throughput(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Part 1: build the stream, then (c), (b) and (a)."""
    path = _topology(tmp / "p1")
    topo = load(path)
    warm_up()
    # The in-process ticker and matchers log as the nodes do (INFO, to a file), not on this terminal.
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(tmp / "logs" / "inprocess.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    exfab = logging.getLogger("exfab")
    exfab.addHandler(handler)
    exfab.setLevel(logging.INFO)
    exfab.propagate = False
    _say(f"1. building a matcher stream of {args.trades:,} trades (two real matchers in-process)...")
    stream = build_stream(topo, args.trades, args.seed)
    frames = stream.frames
    info = {"commands": stream.commands, "trades": stream.trades, "messages": stream.messages, "frames": len(frames),
            "batches": len(stream.batches), "batch_commands": MAX_BATCH, "bytes": sum(len(b) for _, b in frames),
            "stamp_step_ns": STAMP_STEP_NS, "build_s": stream.build_s, "max_turn": MAX_TURN}
    _say(f"   {stream.commands:,} commands -> {stream.trades:,} trades, {stream.messages:,} PUB messages in "
         f"{len(frames):,} frames ({len(stream.batches)} batches), built in {stream.build_s:.1f} s")
    # The stream and the matchers are this process's, not a ticker's: out of the garbage collector's sight, so that
    # its full collections walk the ticker's objects only, as in a ticker process.
    gc.collect()
    gc.freeze()
    try:
        e2e_runs = []
        for rnd in range(min(args.repeat, E2E_ROUNDS)):
            _say(f"1(c) end to end: a ticker process fed by a scripted publisher, run {rnd + 1}...")
            r = end_to_end(path, topo, stream, args.budget, tmp / "logs")
            _say(f"     {r['trades_per_s']:,.0f} trades/s over {r['secs']:.2f} s, ticker {r['cpu_cores']:.2f} cores, "
                 f"{r['replays']:,} replays{'' if r['complete'] else ' (INCOMPLETE: stopped at the budget)'}; it "
                 f"subscribes to {', '.join(repr(p) for p in r['subscriptions'])}")
            e2e_runs.append(r)
            if not r["complete"]:
                break
        e2e = sorted(e2e_runs, key=lambda r: r["trades_per_s"])[len(e2e_runs) // 2]  # the median run
        e2e["runs"] = len(e2e_runs)
        e2e["trades_per_s_all"] = [r["trades_per_s"] for r in e2e_runs]
        prefixes = [p.encode() for p in e2e["subscriptions"]]
        fed = _subscribed(frames, prefixes)
        # (b) and (a) in rounds, each round measuring everything once: a burst of noise from elsewhere on the
        # machine then lands on one round of every figure, not on every run of one.
        floor_s: dict[str, list[float]] = {name: [] for name in DECODERS}
        floor_cpu: dict[str, list[float]] = {name: [] for name in DECODERS}
        n = 0
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in IN_PROCESS}
        for rnd in range(args.repeat):
            _say(f"1(b) decode floor ({len(fed):,} frames of those topics), round {rnd + 1} of {args.repeat}...")
            for name, decoder in DECODERS.items():
                t, c = time.perf_counter(), time.process_time()
                n = decode_floor(fed, decoder)
                floor_s[name].append(time.perf_counter() - t)
                floor_cpu[name].append(time.process_time() - c)
            for turn, history in IN_PROCESS:
                if runs[turn, history] and not runs[turn, history][-1]["complete"]:
                    continue  # stopped at the budget: once is enough
                _say(f"1(a) in-process: turns of {_turn_label(turn)}, history {history}...")
                r = asyncio.run(_inprocess(topo, stream, turn, history, prefixes, tmp, False, args.budget))
                stopped = "" if r["complete"] else ", STOPPED at the budget"
                _say(f"     {r['trades'] / r['loop_s']:,.0f} trades/s, {r['trades'] / r['cpu_s']:,.0f} per CPU-second "
                     f"({r['trades']:,} trades in {r['loop_s']:.2f} s{stopped}; history drain {r['drain_s']:.2f} s; "
                     f"{r['replays']:,} replays)")
                runs[turn, history].append(r)
        floors: dict[str, dict[str, Any]] = {}
        for name, ts in floor_s.items():
            secs, cpu = float(np.median(ts)), float(np.median(floor_cpu[name]))
            floors[name] = {"decoder": name, "secs": secs, "secs_all": ts, "cpu_s": cpu, "cpu_s_all": floor_cpu[name],
                            "messages": n, "frames": len(fed), "trades_per_s": stream.trades / secs,
                            "best_trades_per_s": stream.trades / min(ts),
                            "trades_per_cpu_s": stream.trades / cpu, "messages_per_s": n / secs}
        floor = max(floors.values(), key=lambda f: f["trades_per_cpu_s"])  # the cheapest decoding is the floor
        configs = []
        for (turn, history), rs in runs.items():
            med = _median_run(turn, history, rs)
            med["vs_floor"] = floor["trades_per_cpu_s"] / med["trades_per_cpu_s"]  # CPU per trade, against the floor's
            configs.append(med)
        e2e["trades_per_cpu_s"] = e2e["trades"] / (e2e["cpu_cores"] * e2e["secs"])
        e2e["vs_floor"] = floor["trades_per_cpu_s"] / e2e["trades_per_cpu_s"]
        profiles = []
        for turn, history in PROFILED:
            _say(f"1(a) profile: turns of {_turn_label(turn)}, history {history}...")
            p = asyncio.run(_inprocess(topo, stream, turn, history, prefixes, tmp, True,
                                       min(args.budget, PROFILE_BUDGET_S)))
            profiles.append({"turn": turn, "history": history, "loop_s": p["loop_s"], "trades": p["trades"],
                             "complete": p["complete"], "rows": p["profile"]})
    finally:
        gc.unfreeze()
        for m in stream.matchers:
            m.journal.close()
        exfab.removeHandler(handler)
        handler.close()
    return {"stream": info, "decode_floor": floor, "decode_floors": list(floors.values()), "inprocess": configs,
            "profiles": profiles, "end_to_end": e2e,
            "target_trades_per_s": TARGET_TRADES_PER_S}


# ==========================================================================
# Parts 2 and 3: the real exchange
# ==========================================================================


class Pump:
    """Brokers that trade: one DEALER per gateway, each sending pairs of a resting order and an IOC crossing it.

    Both orders of a pair go through the same DEALER, gateway and matcher in order, so every pair
    makes exactly one trade and leaves the book as it was.  Pairs are sent open loop at a fixed
    rate, spread over every symbol; answers are drained, not decoded.
    """

    def __init__(self, topo: Topology, seed: int) -> None:
        self.topo = topo
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.socks: list[zmq.Socket[bytes]] = []
        for i, gw in enumerate(topo.gateways):
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(gw.endpoint.connect)
            s.send(encode(Logon(broker=f"TICKBENCH{i}", heartbeat_ms=60_000)))
            if not s.poll(10_000):
                raise RuntimeError(f"gateway {gw.name} did not answer the logon")
            s.recv_multipart()
            self.socks.append(s)
        self.rng = np.random.default_rng(seed)
        self.symbols = list(topo.symbols)
        self.base: dict[str, int] = {}
        for sym in self.symbols:
            inst = topo.instrument(sym)
            assert inst.ref_price is not None
            self.base[sym] = int(inst.ref_price / inst.tick)
        self.mid = dict(self.base)
        self.n = 0
        self.answers = 0

    def _drain(self) -> None:
        for s in self.socks:
            while True:
                try:
                    self.answers += len(s.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break

    def run(self, rate: float, duration: float) -> dict[str, float]:
        """Send ``rate`` pairs a second for ``duration`` seconds; return what was sent and how late."""
        n = int(rate * duration)
        syms = self.rng.integers(0, len(self.symbols), n).tolist()
        steps = self.rng.integers(-1, 2, n).tolist()
        qtys = self.rng.integers(1, 11, n).tolist()
        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        lag = np.zeros(n)
        t0 = time.perf_counter()
        i = 0
        while i < n:
            now = time.perf_counter()
            while i < n and t0 + i / rate <= now:
                sym = self.symbols[syms[i]]
                inst = self.topo.instrument(sym)
                base = self.base[sym]
                self.mid[sym] = min(max(self.mid[sym] + steps[i], base - 50), base + 50)
                px = inst.to_price(self.mid[sym])
                side: Literal["buy", "sell"] = "buy" if self.n % 2 else "sell"
                other: Literal["buy", "sell"] = "sell" if self.n % 2 else "buy"
                s = self.socks[self.n % len(self.socks)]
                s.send(encode(New(oid=f"r{self.n}", symbol=sym, side=side, type="limit", price=px, qty=qtys[i],
                                  tif="GTC")))
                s.send(encode(New(oid=f"h{self.n}", symbol=sym, side=other, type="limit", price=px, qty=qtys[i],
                                  tif="IOC")))
                lag[i] = now - (t0 + i / rate)
                self.n += 1
                i += 1
            self._drain()
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                poller.poll(int(wait * 1000) + 1)
        secs = time.perf_counter() - t0
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            self._drain()
            time.sleep(0.01)
        return {"pairs": n, "secs": secs, "sent_per_s": n / secs,
                "send_lag_p99_ms": float(np.percentile(lag, 99)) * 1000 if n else 0.0}

    def close(self) -> None:
        """Close the sockets."""
        for s in self.socks:
            s.close(0)
        self.ctx.term()


class LiveExchange:
    """The local topology's matchers (fsync none) and gateways as processes; the ticker started per run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.path = _topology(workdir)
        self.launcher = Launcher(self.path, workdir=workdir, kinds=(MATCHER, GATEWAY),
                                 extra_args={"matcher": ["--fsync", "none"]})
        self.topo = self.launcher.topo
        assert self.topo.ticker is not None
        self.http = self.topo.ticker.http_url
        self.ticker: subprocess.Popen[str] | None = None
        self.logs = workdir / "logs"

    def start(self) -> None:
        """Start the matchers and gateways."""
        self.launcher.start()

    def start_ticker(self, profile: Path | None = None) -> subprocess.Popen[str]:
        """Start a ticker (under cProfile, writing ``profile`` when it stops, if given); return once it has rebuilt
        the day and serves."""
        self.stop_ticker()
        proc = _start(_ticker_cmd(self.path, profile), self.logs / "ticker.log", 120)
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
        self.ticker = proc
        return proc

    def stop_ticker(self) -> None:
        """Stop the ticker, if one runs."""
        if self.ticker is not None:
            _stop(self.ticker)
            self.ticker = None

    def stats(self) -> dict[str, Any]:
        """The ticker's ``/stats``."""
        return dict(_get_json(self.http + "stats"))

    def matcher_trades(self) -> int:
        """Return how many trades the matchers made today (from their snapshots: the last trade id of each symbol)."""
        ctx: zmq.Context[Any] = zmq.Context.instance()
        total = 0
        for no, shard in enumerate(self.topo.shards):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(shard.replicas[0].recovery.connect)
            s.send(encode(SnapshotRequest(shard=no)))
            if not s.poll(10_000):
                raise RuntimeError(f"matcher {shard.name} did not answer a snapshot request")
            snap = decode_internal(s.recv())
            s.close(0)
            assert isinstance(snap, SnapshotReply)
            total += sum(b.trade_id for b in snap.books)
        return total

    def stop(self) -> None:
        """Stop everything."""
        self.stop_ticker()
        self.launcher.stop()


@dataclass
class LiveRun:
    """What one live run recorded."""

    clients: int
    rate: float
    duration: float
    t_start: int = 0
    t_end: int = 0
    t_stop: int = 0
    pump: dict[str, float] = field(default_factory=dict)
    expected_trades: int = 0
    caught_up_s: float | None = None
    stats_before: dict[str, Any] = field(default_factory=dict)
    stats_after: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    sub: dict[str, np.ndarray] = field(default_factory=dict)
    ws: dict[str, np.ndarray] = field(default_factory=dict)
    profile: list[dict[str, Any]] | None = None
    ticker_threads: dict[str, float] = field(default_factory=dict)


def live_run(ex: LiveExchange, pump: Pump, *, rate: float, duration: float, clients: int, drain_s: float, tmp: Path,
             profile: bool = False, batch: bool = True) -> LiveRun:
    """Start a fresh ticker and the clients, trade at ``rate`` for ``duration`` s, wait for the ticker, collect.

    With ``profile`` the ticker runs under cProfile (its whole life: start, load, drain) and the run keeps the top
    of its profile.
    """
    run = LiveRun(clients, rate, duration)
    tag = f"{clients}-{int(rate)}"
    prof_path = tmp / f"ticker-{tag}.prof" if profile else None
    ticker = ex.start_ticker(prof_path)
    symbols = ",".join(ex.topo.symbols)
    sub_out, ws_out = tmp / f"sub-{tag}.npz", tmp / f"ws-{tag}.npz"
    pubs = [s.replicas[0].pub.connect for s in ex.topo.shards]
    client = [sys.executable, "-m", "perf.ticker_clients"]
    sub = _start([*client, "sub", *pubs, "--symbols", symbols, "--out", str(sub_out)], ex.logs / "clients.log", 30)
    try:
        ws = _start([*client, "ws", ex.http.replace("http://", "ws://") + "ws", "--clients", str(clients),
                     "--symbols", symbols, "--out", str(ws_out), *([] if batch else ["--no-batch"])],
                    ex.logs / "clients.log", 60 + clients * 0.2)
    except BaseException:
        _stop(sub)
        raise
    try:
        run.stats_before = ex.stats()
        watch = CpuWatch()
        pids = {"ticker": ticker.pid, "ws_clients": ws.pid, "sub": sub.pid, "brokers": os.getpid(),
                **{f"{n.kind}_{n.name}": n.proc.pid for n in ex.launcher.nodes}}
        ticks0 = {k: _cpu_ticks(p) for k, p in pids.items()}
        threads0 = _thread_ticks(ticker.pid)
        watch.start()
        run.t_start = time.time_ns()
        run.pump = pump.run(rate, duration)
        run.t_end = time.time_ns()
        secs = (run.t_end - run.t_start) / 1e9
        run.cpu = {f"{k}_cores": (_cpu_ticks(p) - ticks0[k]) / CLK_TCK / secs for k, p in pids.items()}
        run.ticker_threads = _cores(threads0, _thread_ticks(ticker.pid), secs)
        run.cpu.update(watch.stop())
        run.expected_trades = ex.matcher_trades()
        deadline = time.perf_counter() + drain_s
        while time.perf_counter() < deadline:
            if ex.stats()["trades"] >= run.expected_trades:
                run.caught_up_s = (time.time_ns() - run.t_end) / 1e9
                break
            time.sleep(0.1)
        time.sleep(1.0 if clients > 1 else 0.3)  # the last quotes on their way to the clients
        run.t_stop = time.time_ns()
        run.stats_after = ex.stats()
    finally:
        for p in (ws, sub):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (ws, sub):
            assert p.stdout is not None
            read_line(p.stdout, 60)
            _stop(p, 5)
        ex.stop_ticker()
    with np.load(sub_out) as f:
        run.sub = {k: f[k] for k in f.files}
    with np.load(ws_out) as f:
        run.ws = {k: f[k] for k in f.files}
    if prof_path is not None and prof_path.exists():
        run.profile = _profile_rows(pstats.Stats(str(prof_path)))
    return run


def _keys(d: dict[str, np.ndarray]) -> np.ndarray:
    return (d["sym"] << 40) | d["trade_id"]


def _trades_of(run: LiveRun) -> tuple[np.ndarray, np.ndarray]:
    """Return (key, SUB latency) of every trade the run made, sorted by key, from the SUB baseline."""
    keys = _keys(run.sub)
    mine = run.sub["ts"] >= run.t_start
    keys, idx = np.unique(keys[mine], return_index=True)
    lat = (run.sub["recv"][mine] - run.sub["ts"][mine])[idx]
    return keys, lat


def _replays(run: LiveRun) -> int:
    def total(st: dict[str, Any]) -> int:
        return sum(s.get("replays", 0) for s in st.get("shards", {}).values())
    return total(run.stats_after) - total(run.stats_before)


def _ticker_counts(run: LiveRun) -> dict[str, int]:
    """What the ticker's ``/stats`` counted during the run: turns, objects published, trades, gaps, replays."""
    out = {k: run.stats_after.get(k, 0) - run.stats_before.get(k, 0) for k in ("turns", "published", "trades", "gaps")}
    out["replays"] = _replays(run)
    return out


def analyze_latency(run: LiveRun) -> dict[str, Any]:
    """Part 2's figures: SUB and WebSocket latency of the run's trades, and what the ticker adds per trade."""
    keys, sub_lat = _trades_of(run)
    wkeys = _keys(run.ws)
    sel = np.isin(wkeys, keys)
    wk, first = np.unique(wkeys[sel], return_index=True)
    ws_lat = (run.ws["recv"][sel] - run.ws["ts"][sel])[first]
    added = ws_lat - sub_lat[np.isin(keys, wk)]
    sub_s, ws_s = _summary(sub_lat), _summary(ws_lat)
    ratio = {k: (ws_s[k] / sub_s[k] if ws_s[k] and sub_s[k] else None)  # type: ignore[operator]
             for k in ("p50_us", "p90_us", "p99_us", "max_us")}
    return {
        "rate": run.rate, "duration_s": run.duration, "pump": run.pump,
        "trades": int(keys.size), "delivered": int(wk.size), "undelivered": int(keys.size - wk.size),
        "caught_up_s": run.caught_up_s, "sub": sub_s, "ws": ws_s, "ratio_ws_vs_sub": ratio,
        "added_by_ticker": _summary(added), "cpu": run.cpu, "ticker_threads_cores": run.ticker_threads,
        "ticker": _ticker_counts(run), "ticker_replays": _replays(run),
        "ticker_profile": run.profile, "_sub_lat": sub_lat, "_ws_lat": ws_lat,
    }


def analyze_fanout(run: LiveRun, nsym: int) -> dict[str, Any]:
    """Part 3's figures: latency over every (trade, client) pair, the slowest client per trade, messages and objects
    per second."""
    keys, _ = _trades_of(run)
    wkeys = _keys(run.ws)
    sel = np.isin(wkeys, keys)
    pair = wkeys[sel] * run.clients + run.ws["client"][sel]
    pair, first = np.unique(pair, return_index=True)
    lat = (run.ws["recv"][sel] - run.ws["ts"][sel])[first]
    tkey = pair // run.clients  # sorted, as pair is
    starts = np.flatnonzero(np.r_[True, tkey[1:] != tkey[:-1]]) if tkey.size else np.zeros(0, dtype=np.int64)
    slowest = np.maximum.reduceat(lat, starts) if tkey.size else np.zeros(0, dtype=np.int64)
    window = (run.t_stop - run.t_start) / 1e9
    if "received_ready" in run.ws:  # counted by the clients when they were all connected, before the load
        received = int(run.ws["received"].sum() - run.ws["received_ready"].sum())
        objects = int(run.ws["objects"].sum() - run.ws["objects_ready"].sum())
    else:  # hello and one snapshot per symbol, one message each, before the load
        received = objects = int(run.ws["received"].sum()) - run.clients * (1 + nsym)
    quotes = int(run.ws["quotes"].sum())
    return {
        "clients": run.clients, "rate": run.rate, "duration_s": run.duration, "pump": run.pump,
        "trades": int(keys.size), "pairs_expected": int(keys.size) * run.clients, "pairs_delivered": int(lat.size),
        "pairs_missing": int(keys.size) * run.clients - int(lat.size), "caught_up_s": run.caught_up_s,
        "all_pairs": _summary(lat), "slowest_client_per_trade": _summary(slowest),
        "ws_messages_per_s": received / window, "ws_objects_per_s": objects / window,
        "objects_per_message": objects / received if received else None,
        "quotes_per_trade_per_client": quotes / run.clients / keys.size if keys.size else None,
        "window_s": window, "cpu": run.cpu, "ticker_threads_cores": run.ticker_threads,
        "clients_cpu_s": float(run.ws["cpu_s"][0]), "ticker": _ticker_counts(run), "ticker_replays": _replays(run),
        "ticker_profile": run.profile, "_all": lat, "_slowest": slowest,
    }


def _us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:,.1f} ms" if v >= 10_000 else f"{v:,.0f} µs"


def part_live(args: argparse.Namespace, tmp: Path, parts: set[int]) -> dict[str, Any]:
    """Parts 2 and 3 on one running exchange, a fresh ticker per run."""
    ex = LiveExchange(tmp / "live")
    _say("2/3. starting the exchange (matchers with --fsync none, gateways)...")
    ex.start()
    pump = Pump(ex.topo, args.seed)
    out: dict[str, Any] = {}
    try:
        if 2 in parts:
            _say(f"2. latency: {args.rate:,.0f} trades/s for {args.duration:g} s, one WebSocket client and the SUB "
                 "baseline...")
            r = analyze_latency(live_run(ex, pump, rate=args.rate, duration=args.duration, clients=1,
                                         drain_s=args.drain, tmp=tmp, profile=args.profile_live))
            _say(f"   SUB p50 {_us(r['sub']['p50_us'])} p99 {_us(r['sub']['p99_us'])}; WebSocket p50 "
                 f"{_us(r['ws']['p50_us'])} p99 {_us(r['ws']['p99_us'])}; {r['undelivered']} of {r['trades']} "
                 f"undelivered; {r['ticker_replays']} replays")
            out["latency"] = r
        if 3 in parts:
            runs = []
            for n in (1, args.clients):
                _say(f"3. fan-out: {n:,} WebSocket client(s), {args.fanout_rate:,.0f} trades/s for "
                     f"{args.duration:g} s...")
                f = analyze_fanout(live_run(ex, pump, rate=args.fanout_rate, duration=args.duration, clients=n,
                                            drain_s=args.drain, tmp=tmp, profile=args.profile_live,
                                            batch=not args.no_batch),
                                   len(ex.topo.symbols))
                f["batch"] = not args.no_batch
                _say(f"   all pairs p50 {_us(f['all_pairs']['p50_us'])} p99 {_us(f['all_pairs']['p99_us'])}; "
                     f"slowest client p50 {_us(f['slowest_client_per_trade']['p50_us'])}; "
                     f"{f['ws_messages_per_s']:,.0f} msgs/s ({f['ws_objects_per_s']:,.0f} objects/s); ticker "
                     f"{f['cpu']['ticker_cores']:.2f} cores; "
                     f"{f['pairs_missing']:,} pairs missing")
                runs.append(f)
            out["fanout"] = {"baseline": runs[0], "clients": runs[1]}
    finally:
        pump.close()
        ex.stop()
    return out


# ==========================================================================
# Report
# ==========================================================================


def _public(obj: Any) -> Any:
    """``obj`` without the keys starting with ``_`` (raw arrays kept for the plot)."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_public(v) for v in obj]
    return obj


def _profile_table(rows: list[dict[str, Any]], n: int = 12) -> list[str]:
    return ["| function | calls | own s | cumulative s |", "| --- | ---: | ---: | ---: |",
            *(f"| `{r['function']}` | {r['calls']:,} | {r['tottime_s']:.3f} | {r['cumtime_s']:.3f} |"
              for r in rows[:n])]


def headline(res: dict[str, Any]) -> dict[str, Any]:
    """Return the headline figures of a run and how they compare with the targets (``None`` where not measured).

    ``process_trades_per_s`` is part 1(c), a ticker process; ``fanout_1000_p99_ms`` part 3's p99 over every (trade,
    client) pair, when it ran with 1,000 clients (``fanout_p99_ms`` whatever the number, ``fanout_clients``).
    """
    e2e = (res.get("throughput") or {}).get("end_to_end")
    fan = (res.get("fanout") or {}).get("clients")
    rate = e2e["trades_per_s"] if e2e else None
    p99 = fan["all_pairs"]["p99_us"] / 1000.0 if fan and fan["all_pairs"]["p99_us"] is not None else None
    at_target = bool(fan and fan["clients"] == TARGET_FANOUT_CLIENTS and fan["rate"] == TARGET_FANOUT_RATE)
    slowest = fan["slowest_client_per_trade"]["p99_us"] if fan else None
    return {
        "process_trades_per_s": rate,
        "fanout_1000_p99_ms": p99 if at_target else None,
        "fanout_clients": fan["clients"] if fan else None,
        "fanout_rate": fan["rate"] if fan else None,
        "fanout_p99_ms": p99,
        "fanout_slowest_client_p99_ms": None if slowest is None else slowest / 1000.0,
        "fanout_pairs_missing": fan["pairs_missing"] if fan else None,
        "targets": {
            "process_trades_per_s": TARGET_TRADES_PER_S,
            "fanout_1000_p99_ms": TARGET_FANOUT_P99_MS,
            "process_met": None if rate is None else rate >= TARGET_TRADES_PER_S,
            "fanout_met": (None if not at_target or p99 is None
                           else p99 <= TARGET_FANOUT_P99_MS and fan is not None and fan["pairs_missing"] == 0),
        },
    }


def _target_lines(h: dict[str, Any]) -> list[str]:
    t = h["targets"]

    def met(v: bool | None) -> str:
        return "not measured in this run" if v is None else ("met" if v else "**not met**")

    rate = "-" if h["process_trades_per_s"] is None else f"{h['process_trades_per_s']:,.0f}"
    fan = ("-" if h["fanout_p99_ms"] is None else
           f"{h['fanout_p99_ms']:,.1f} ms with {h['fanout_clients']:,} clients at {h['fanout_rate']:,.0f} trades/s, "
           f"{h['fanout_pairs_missing']:,} pairs missing")
    return ["## Targets", "", "| target | this run | |", "| --- | --- | --- |",
            f"| a ticker process (1c) ≥ {t['process_trades_per_s']:,} trades/s | {rate} | "
            f"{met(t['process_met'])} |",
            f"| {TARGET_FANOUT_CLIENTS:,} WebSocket clients at {TARGET_FANOUT_RATE:,.0f} trades/s: every (trade, "
            f"client) p99 ≤ {t['fanout_1000_p99_ms']:,.0f} ms, none missing | {fan} | {met(t['fanout_met'])} |", ""]


def _markdown(res: dict[str, Any], png: str) -> str:
    lines = ["# Market data (ticker) benchmark", "", f"Command: `{res['command']}`", "",
             f"Generated {res['generated']} on {res['cpus']} CPUs, {res['platform']}, Python {res['python']}, "
             f"libzmq {res['libzmq']}; load average {res['loadavg_1m']} at the end; others took "
             f"{res.get('cpu', {}).get('others_cores', 0):.2f} cores on average over the run. Code: commit "
             f"{res['git']['commit'] or '?'}"
             + (f", with changes to {', '.join(res['git']['changed'])}" if res["git"]["changed"] else "") + ".", ""]
    lines += _target_lines(res.get("headline") or headline(res))
    tp = res.get("throughput")
    if tp:
        s, fl, e = tp["stream"], tp["decode_floor"], tp["end_to_end"]
        lines += ["## 1. Throughput on one core", "",
                  f"Stream: {s['commands']:,} commands of `perf/workload.py` flow through the two shards' real "
                  f"matchers (batches of {s['batch_commands']:,}) gave {s['trades']:,} trades and {s['messages']:,} "
                  f"PUB messages in {s['frames']:,} frames ({s['bytes'] / 1e6:,.1f} MB). The ticker subscribes to "
                  f"{', '.join(repr(x) for x in e['subscriptions'])}: {fl['frames']:,} of those frames, "
                  f"{fl['messages']:,} messages.", "",
                  f"Medians of {res['args']['repeat']} rounds (best round in brackets). Trades/s is wall-clock; per "
                  "CPU-second counts the CPU time of the process (all its threads: with history `sqlite`, the "
                  "writer's too); ×floor is the CPU per trade against the decode floor's; others: the cores other "
                  "processes took meanwhile.", "",
                  "| measure | trades/s (best) | per CPU-second | messages/s | ×floor | history drain after | "
                  "trades/s incl. drain | others |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| (b) decode only, `{f['decoder']}` | {f['trades_per_s']:,.0f} ({f['best_trades_per_s']:,.0f}) | "
                  f"{f['trades_per_cpu_s']:,.0f} | {f['messages_per_s']:,.0f} | "
                  f"{fl['trades_per_cpu_s'] / f['trades_per_cpu_s']:.1f} | | | |" for f in tp["decode_floors"]]
        for r in tp["inprocess"]:
            stop = "" if r["complete"] else f" (stopped at the budget: {r['trades']:,} trades)"
            lines.append(f"| (a) in-process, turns of {_turn_label(r['turn'])}, history {r['history']} | "
                         f"{r['trades_per_s']:,.0f}{stop} ({r['best_trades_per_s']:,.0f}) | "
                         f"{r['trades_per_cpu_s']:,.0f} | "
                         f"{r['messages_per_s']:,.0f} | {r['vs_floor']:.1f} | {r['drain_s']:.2f} s | "
                         f"{r['sustained_trades_per_s']:,.0f} | {r['others_cores']:.2f} |")
        stop = "" if e["complete"] else f" (stopped at the budget: {e['trades']:,} trades)"
        th = ", ".join(f"{k} {v:.2f}" for k, v in e.get("threads_cores", {}).items())
        lines += [f"| (c) end to end, a ticker process over ZeroMQ, median of {e['runs']} ({e['cpu_cores']:.2f} "
                  f"cores: {th}) | "
                  f"{e['trades_per_s']:,.0f}{stop} | {e['trades_per_cpu_s']:,.0f} | {e['messages_per_s']:,.0f} | "
                  f"{e['vs_floor']:.1f} | {e['drain_s']:.2f} s ({e['history_pending']:,} points at the end) | "
                  f"{e['sustained_trades_per_s']:,.0f} | |", "",
                  f"Replays: {sum(r['replays'] for r in tp['inprocess']) + e['replays']:,} in all of (a) and (c).", ""]
        for p in tp["profiles"]:
            stopped = "" if p["complete"] else f", stopped at the budget after {p['trades']:,} trades"
            lines += [f"Profile (a), turns of {_turn_label(p['turn'])}, history {p['history']} (cProfile, main "
                      f"thread; {p['loop_s']:.2f} s under the profiler{stopped}):", "", *_profile_table(p["rows"]), ""]
    lat = res.get("latency")
    if lat:
        cu = "not within the drain" if lat["caught_up_s"] is None else f"{lat['caught_up_s']:.1f} s"
        lines += ["## 2. Trade to WebSocket client latency", "",
                  f"{lat['pump']['sent_per_s']:,.0f} trades/s for {lat['duration_s']:g} s: {lat['trades']:,} trades, "
                  f"{lat['undelivered']:,} not delivered to the WebSocket client; the ticker caught up {cu} after "
                  f"the load ({lat['ticker_replays']:,} replays).", "",
                  "| path | p50 | p90 | p99 | max |", "| --- | ---: | ---: | ---: | ---: |"]
        for path, key in (("ZeroMQ SUB on the matchers (baseline)", "sub"), ("WebSocket via the ticker", "ws"),
                          ("added by the ticker, per trade", "added_by_ticker")):
            p = lat[key]
            lines.append(f"| {path} | {_us(p['p50_us'])} | {_us(p['p90_us'])} | {_us(p['p99_us'])} | "
                         f"{_us(p['max_us'])} |")
        ra = lat["ratio_ws_vs_sub"]
        lines += ["| ratio WebSocket / SUB | " + " | ".join("-" if ra[k] is None else f"{ra[k]:,.1f}×"
                                                           for k in ("p50_us", "p90_us", "p99_us", "max_us")) + " |",
                  ""]
    fan = res.get("fanout")
    if fan:
        mode = ("batches (`/ws?batch=1`)" if fan["clients"].get("batch", True)
                else "one object per message (`--no-batch`)")
        lines += ["## 3. Fan-out", "", f"Clients asking for {mode}.", "",
                  "| clients | trades | pairs missing | all pairs p50 | p99 | slowest client p50 | p99 | WS msgs/s | "
                  "objects/s | quotes per trade per client | ticker CPU | clients CPU |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in (fan["baseline"], fan["clients"]):
            a, s2 = r["all_pairs"], r["slowest_client_per_trade"]
            q = r["quotes_per_trade_per_client"]
            lines.append(f"| {r['clients']:,} | {r['trades']:,} | {r['pairs_missing']:,} | {_us(a['p50_us'])} | "
                         f"{_us(a['p99_us'])} | {_us(s2['p50_us'])} | {_us(s2['p99_us'])} | "
                         f"{r['ws_messages_per_s']:,.0f} | {r.get('ws_objects_per_s', 0):,.0f} | "
                         f"{'-' if q is None else f'{q:.2f}'} | "
                         f"{r['cpu']['ticker_cores']:.2f} | {r['cpu']['ws_clients_cores']:.2f} |")
        lines.append("")
    live = ([("latency", lat)] if lat else []) + ([("fan-out, 1 client", fan["baseline"]),
                                                   (f"fan-out, {fan['clients']['clients']:,} clients", fan["clients"])]
                                                  if fan else [])
    if live:
        lines += ["CPU during each run's load, in cores (from `/proc`; `brokers` is this process, `others` what "
                  "processes outside the benchmark took):", ""]
        for name, r in live:
            cpu = r["cpu"]
            parts = [f"{k.removesuffix('_cores')} {v:.2f}" for k, v in cpu.items()
                     if k.endswith("_cores") and k not in ("machine_cores", "ours_cores", "others_cores")]
            tt: dict[str, float] = r.get("ticker_threads_cores") or {}
            threads = f" (ticker threads: {', '.join(f'{k} {v:.2f}' for k, v in tt.items())})" if tt else ""
            lines.append(f"- {name} ({r['rate']:,.0f} trades/s): {', '.join(parts)}; machine "
                         f"{cpu.get('machine_cores', 0):.2f}, others {cpu.get('others_cores', 0):.2f}{threads}")
        lines.append("")
        for name, r in live:
            if r.get("ticker_profile"):
                lines += [f"Profile of the ticker process, {name} (its whole life, main thread, cProfile):", "",
                          *_profile_table(r["ticker_profile"]), ""]
    lines += [f"![latency distributions]({png})", ""]
    return "\n".join(lines)


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    marks = np.array([1.0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99])

    def nines(p: Any) -> Any:
        return -np.log10(np.maximum(1e-5, 1 - np.asarray(p) / 100))

    def curve(ax: Any, lat_ns: np.ndarray, label: str, **kw: Any) -> None:
        if lat_ns.size:
            ys = np.percentile(lat_ns, marks) / 1000.0
            ax.plot([*nines(marks), nines(100.0)], [*ys, lat_ns.max() / 1000.0], label=label, lw=1.8, **kw)

    tp, lat, fan = res.get("throughput"), res.get("latency"), res.get("fanout")
    panels = [k for k, v in (("tp", tp), ("lat", lat), ("fan", fan)) if v]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.8), squeeze=False)
    us = FuncFormatter(lambda v, _: f"{v / 1000:g} ms" if v >= 1000 else f"{v:g} µs")
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "tp":
            assert tp is not None
            labels = [f"(b) decode floor\n{tp['decode_floor']['decoder']}"]
            vals = [tp["decode_floor"]["trades_per_s"]]
            for r in tp["inprocess"]:
                turn = f"{MAX_TURN:,} frames" if r["turn"] == "frames" else "one batch"
                labels.append(f"(a) turns of {turn},\nhistory {r['history']}")
                vals.append(r["trades_per_s"])
            labels.append("(c) ticker process\nover ZeroMQ")
            vals.append(tp["end_to_end"]["trades_per_s"])
            ax.barh(range(len(vals)), vals, color=["#7f7f7f"] + ["#1f77b4"] * (len(vals) - 2) + ["#2ca02c"])
            for i, v in enumerate(vals):
                ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
            ax.set_yticks(range(len(vals)))
            ax.set_yticklabels(labels, fontsize=8)
            ax.invert_yaxis()
            ax.axvline(tp["target_trades_per_s"], color="k", ls="--", lw=1)
            ax.text(tp["target_trades_per_s"], len(vals) - 0.6, " target", fontsize=8)
            ax.set_xlim(0, max(*vals, tp["target_trades_per_s"]) * 1.18)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
            ax.set_xlabel("trades/s")
            ax.set_title("1. Throughput on one core")
            ax.grid(True, axis="x", alpha=0.3)
            continue
        if panel == "lat":
            assert lat is not None
            curve(ax, lat["_sub_lat"], "ZeroMQ SUB on the matchers (baseline)", color="#7f7f7f", ls="--")
            curve(ax, lat["_ws_lat"], "WebSocket via the ticker", color="#1f77b4")
            ax.set_title(f"2. Trade → client latency at {lat['rate']:,.0f} trades/s")
        else:
            assert fan is not None
            base, many = fan["baseline"], fan["clients"]
            curve(ax, base["_all"], "1 client", color="#7f7f7f", ls="--")
            curve(ax, many["_all"], f"{many['clients']:,} clients, every (trade, client)", color="#1f77b4")
            curve(ax, many["_slowest"], f"{many['clients']:,} clients, slowest client per trade", color="#d62728")
            ax.set_title(f"3. Fan-out at {many['rate']:,.0f} trades/s")
        ticks = [50.0, 90.0, 99.0, 99.9]
        ax.set_xticks([*nines(np.array(ticks)), nines(100.0)])
        ax.set_xticklabels([f"{p:g}%" for p in ticks] + ["max"])
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(us)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency from the trade's ts (log)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left" if panel == "lat" else "center right")
    fig.suptitle(f"Ticker benchmark ({res['cpus']} CPUs, {res['generated']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(res: dict[str, Any], out_dir: Path, name: str) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>.png`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{name}.{k}" for k in ("json", "md", "png")}
    public = _public(res)
    paths["json"].write_text(json.dumps(public, indent=1, allow_nan=False) + "\n")
    paths["md"].write_text(_markdown(public, paths["png"].name))
    _plot(res, paths["png"])
    return paths


# ==========================================================================
# Command line
# ==========================================================================


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the reports, and return the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trades", type=int, help="part 1: trades in the stream (default 50,000; --quick 3,000)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one repeat, under a minute")
    ap.add_argument("--parts", default="1,2,3", help="which parts to run (default 1,2,3)")
    ap.add_argument("--repeat", type=int, help="part 1: rounds of runs, the median counts (default 5; --quick 1)")
    ap.add_argument("--budget", type=float, help="part 1: longest run of a ticker over the stream, stopped there "
                    "(default 10 s; --quick 3 s)")
    ap.add_argument("--rate", type=float, default=1000.0, help="part 2: trades/s (default 1,000)")
    ap.add_argument("--fanout-rate", type=float, default=100.0, help="part 3: trades/s (default 100)")
    ap.add_argument("--duration", type=float,
                    help="parts 2 and 3: seconds of trading per run (default 10; --quick 1)")
    ap.add_argument("--clients", type=int, help="part 3: WebSocket clients (default 1,000; --quick 20)")
    ap.add_argument("--drain", type=float,
                    help="parts 2, 3: longest wait for the ticker after the load (default 20 s; --quick 3 s)")
    ap.add_argument("--profile-live", action="store_true",
                    help="parts 2, 3: run the ticker under cProfile (slower: its figures are then not the ticker's)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-batch", action="store_true",
                    help="parts 2, 3: WebSocket clients without batches (one object per message, /ws)")
    ap.add_argument("--out-dir", type=Path, help=f"where the reports go (default {DEFAULT_OUT}/ under the current "
                    "directory, which git ignores; perf/reports to refresh the reports checked in)")
    ap.add_argument("--json", action="store_true",
                    help="print the figures as one JSON object (headline keys first) instead of the Markdown report")
    args = ap.parse_args(argv)
    out_dir: Path = args.out_dir if args.out_dir is not None else Path.cwd() / DEFAULT_OUT
    q = args.quick
    args.trades = args.trades or (3_000 if q else 50_000)
    args.repeat = args.repeat or (1 if q else 5)
    args.budget = args.budget or (3.0 if q else 10.0)
    args.duration = args.duration or (1.0 if q else 10.0)
    args.clients = args.clients or (20 if q else 1_000)
    args.drain = args.drain if args.drain is not None else (3.0 if q else 20.0)
    parts = {int(p) for p in args.parts.split(",")}
    raise_fd_limit()  # the ticker and the clients inherit it: a thousand WebSockets need more than 1,024 files
    command = shlex.join(["python", "perf/bench_ticker.py", *(sys.argv[1:] if argv is None else argv)])
    res: dict[str, Any] = {"command": command, "generated": datetime.now(UTC).isoformat(timespec="seconds"),
                           "git": git_info(), **machine_info(),
                           "args": {k: v for k, v in vars(args).items() if k not in ("out_dir", "json")}}
    t0 = time.perf_counter()
    m0, ours0 = _machine_ticks(), _our_cpu_s()
    with tempfile.TemporaryDirectory(prefix="exfab-bench-ticker-") as d:
        tmp = Path(d)
        if 1 in parts:
            t = time.perf_counter()
            res["throughput"] = part_throughput(args, tmp)
            res["throughput"]["part_s"] = time.perf_counter() - t
        if parts & {2, 3}:
            t = time.perf_counter()
            res.update(part_live(args, tmp, parts))
            res["live_part_s"] = time.perf_counter() - t
    res["total_s"] = time.perf_counter() - t0
    machine, ours = (_machine_ticks() - m0) / CLK_TCK / res["total_s"], (_our_cpu_s() - ours0) / res["total_s"]
    res["cpu"] = {"machine_cores": round(machine, 2), "ours_cores": round(ours, 2),
                  "others_cores": round(max(0.0, machine - ours), 2)}
    res["loadavg_1m"] = round(os.getloadavg()[0], 2)
    res = {"headline": headline(res), **res}
    paths = write_report(res, out_dir, "bench_ticker-quick" if q else "bench_ticker")
    _say(f"done in {res['total_s']:.0f} s: {paths['md']}")
    public: dict[str, Any] = _public(res)
    if args.json:
        print(json.dumps({**public["headline"], **public}, indent=1, allow_nan=False))
    else:
        print(paths["md"].read_text())
    return public


if __name__ == "__main__":
    main()
