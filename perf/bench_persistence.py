"""Persistence benchmark: how fast the books of record are written, and whether the node keeps up with the matchers.

The stream is real: ``perf/workload.py`` order flow for the local topology's twelve symbols through
both shards' :class:`~nodes.matcher.Matcher` objects in-process (``perf.bench_ticker.build_stream``:
batches of 1,024 commands, each batch's PUB messages grouped per topic by the real ``Outbox.flush``,
the journals written with fsync none).  The persistence node follows the execution reports (``X``)
and the trades (``T``) of it; those messages, decoded as the node decodes them (``iter_pub_typed``),
are the input of every part.

1. **Stores**, for batches of ``--batches`` messages (default 100, 1,000 and 5,000; the node writes
   at 5,000), in rounds (``--repeat``; medians):

   - :class:`~fabric.records.OrderBook`: messages/s through ``report``/``trade`` and ``take`` every
     batch, as the node calls it (no body: each report is encoded again) and with the body as
     published;
   - SQLite: :meth:`SQLiteOrderStore.write` of those batches into a fresh file (WAL, synchronous
     NORMAL, one transaction a batch); messages/s and rows/s (orders, events, trades, positions).
     Its **floor**, in the same round: the same rows, their tuples built beforehand, inserted by a bare
     ``executemany`` into plain tables of the same columns (no key, no index), one transaction per
     batch, same pragmas;
   - Redis: :meth:`RedisRecent.apply` of the batches (rows: orders and trades) to a ``redis-server``
     of this run (``tests/servers.py``, on a free port, saving nothing).  Its **floor**: a bare
     pipeline of as many ``SET`` commands (key and the row's msgpack, built beforehand), one
     round trip per batch;
   - :class:`~fabric.recent.MemoryRecent`: ``apply`` of the batches.

2. **The node in-process.** (a) The sum of the parts at 5,000 messages a batch: decoding, the
   order book, the SQLite write, the recent state, in microseconds per message, one after the
   other on one core: a conservative bound.  (b) The real :class:`~nodes.persistence.Persistence`
   class fed the stream's frames (one matcher batch a turn, what its SUB socket holds when it
   keeps up) through its follower, its writer thread writing SQLite and the recent state (memory,
   then Redis), timed until everything is written.  Both are set against the matchers' peak: each
   shard's matcher at ``--matcher-us-per-cmd`` µs of CPU per command (``exfab perf``'s figure in
   ``docs/performance.md``: 17.0 µs with an fsync per batch, the fastest it measured) times the
   stream's ``X`` and ``T`` messages per command, times the shards; and against the whole exchange's
   measured pipelined rate (``--exchange-cmds-per-s``, 30,495 commands/s in the same document).

3. **Catch-up of a node process.** Matcher processes (``--fsync none``) start on the journals the
   stream wrote (they replay them); then the persistence node starts with an empty store
   (``Launcher.start_node``) and catches up from ``seq`` 1 by asking them for replays.  Timed until
   the SQLite store holds every trade and execution report the matchers say they published (their
   snapshots: each book's last trade id and ``tseq``s); from the node's launch, and from its
   ``resuming after`` log line (start-up excluded).  With Redis too when ``redis-server`` is installed.

4. **Live.** With the caught-up node of part 3 running (each recent state in turn), the gateways
   start and ``exfab perf``'s pipelined load (``perf.exchange_target.ExchangeTarget``: 8 brokers,
   one symbol of shard A, window 1,000) runs for ``--live-duration`` seconds: the exchange's peak
   on this machine with the node beside it.  Measured: the ``X``/``T`` messages published per
   second, the node's CPU, how far behind the store is when the load stops and how long it then
   takes to hold everything.

Reports: ``bench_persistence.json`` and ``.md`` (``--quick``: ``bench_persistence-quick.*``) in ``--out-dir``,
by default ``.exfab/perf/bench_persistence/`` under the current directory (a working folder git ignores:
measuring does not change the checkout).  Scratch files (journals, stores) go to a temporary folder, removed
at the end.  ``--json`` prints the figures as one JSON object on standard output (the headline keys first)
instead of the Markdown report.

Usage::

    python perf/bench_persistence.py                  # everything, about three minutes
    python perf/bench_persistence.py --json           # the same, the figures as one JSON object
    python perf/bench_persistence.py --quick          # a smoke run, well under a minute
    python perf/bench_persistence.py --parts 1,2 --trades 100000 --batches 1000,5000,20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import shlex
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from fabric.book import warm_up  # noqa: E402
from fabric.orderstore import SQLiteOrderStore  # noqa: E402
from fabric.protocol import (  # noqa: E402
    EXEC,
    TRADE,
    PubBundle,
    SnapshotReply,
    SnapshotRequest,
    Trade,
    decode_internal,
    decode_pub,
    encode,
    exec_topic,
    iter_pub_typed,
    trade_topic,
)
from fabric.recent import MemoryRecent, RecentState  # noqa: E402
from fabric.records import Batch, OrderBook, OrderRow, TradeRow  # noqa: E402
from nodes.persistence import BATCH, Persistence  # noqa: E402
from perf.bench_ticker import build_stream  # noqa: E402
from perf.exchange_target import ExchangeTarget  # noqa: E402
from perf.harness import CpuWatch, LoadDriver, git_info, machine_info, process_cpu_s  # noqa: E402
from topology.launcher import Launcher, NodeProcess  # noqa: E402
from topology.load import load  # noqa: E402
from topology.model import MATCHER, Topology  # noqa: E402
from topology.ports import topology_on_free_ports  # noqa: E402

LOCAL: Final = ROOT / "topology" / "examples" / "local.toml"
DEFAULT_OUT: Final = Path(".exfab") / "perf" / "bench_persistence"  # under the current directory, as exfab perf's
MATCHER_US_PER_CMD: Final = 17.0  # docs/performance.md: exfab perf's matcher CPU per command, fsync per batch
EXCHANGE_CMDS_PER_S: Final = 30_495  # docs/performance.md: the exchange's pipelined commands/s (window 1,000)
LIVE_WINDOW: Final = 1_000  # commands outstanding in part 4, as exfab perf's pipelined run
POLL_S: Final = 0.05  # between two counts of the store's rows while waiting for the node
SETTLE_S: Final = 0.5  # after a node caught up, before the next phase (untimed)


def _say(msg: str) -> None:
    sys.stderr.write(f"bench_persistence: {msg}\n")
    sys.stderr.flush()


def _topology(workdir: Path, redis_url: str | None = None) -> Path:
    """Copy the local topology into ``workdir`` on free ports, its ``data_dir`` inside ``workdir``; return its path.

    With ``redis_url``, a second file ``local-redis.toml`` beside the first (same ports) names Redis as the
    recent state, and its path is returned instead.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCAL.name
    if not path.exists():
        path = topology_on_free_ports(LOCAL, workdir, curve=False)  # (stand-in matchers: plain sockets)
        lines = [f'data_dir = "{workdir / "data"}"' if ln.strip().startswith("data_dir") else ln
                 for ln in path.read_text().splitlines()]
        path.write_text("\n".join(lines) + "\n")
    if redis_url is None:
        return path
    text = path.read_text().replace('recent = "embedded"', 'recent = "redis"')
    other = workdir / "local-redis.toml"
    other.write_text(text + f'\n[redis]\nurl = "{redis_url}"\n')
    return other


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


# ==========================================================================
# The stream
# ==========================================================================


@dataclass
class Messages:
    """The stream as the persistence node takes it: its ``X``/``T`` frames per matcher batch, and every message."""

    turns: list[list[list[bytes]]]  # per matcher batch (both shards alternating), its X and T frames
    msgs: list[Any]  # every X/T message, decoded as the node decodes them, in the order of the frames
    bodies: list[bytes]  # each message's body as published (a bundle's part, or the frame's body)
    topics: list[tuple[int, str, int, int]]  # each message's (shard, topic, tseq, seq): the batches' positions
    commands: int
    trades: int
    exec_reports: int
    all_messages: int  # every PUB message of the stream (book levels too)
    build_s: float


def make_messages(topo: Topology, trades: int, seed: int) -> tuple[Messages, list[Any]]:
    """Build the stream (``perf.bench_ticker.build_stream``) and return what the node takes of it, and the matchers."""
    stream = build_stream(topo, trades, seed)
    wanted = (EXEC, TRADE)
    turns = [[f for f in frames if f[0][:1] in wanted] for _, frames in stream.batches]
    msgs: list[Any] = []
    bodies: list[bytes] = []
    for frames in turns:
        for _topic, body in frames:
            got = iter_pub_typed(body)
            first = decode_pub(body)
            msgs += got
            bodies += first.msgs if type(first) is PubBundle else [body]
    topics = [(m.shard, trade_topic(m.symbol).decode() if type(m) is Trade else exec_topic(m.shard).decode(),
               m.tseq, m.seq) for m in msgs]
    n_trades = sum(1 for m in msgs if type(m) is Trade)
    assert n_trades == stream.trades, (n_trades, stream.trades)
    return Messages(turns, msgs, bodies, topics, stream.commands, stream.trades, len(msgs) - n_trades,
                    stream.messages, stream.build_s), stream.matchers


# ==========================================================================
# Part 1: the stores
# ==========================================================================


def book_run(ms: Messages, size: int, tz: str, *, with_bodies: bool) -> tuple[float, float, list[Batch]]:
    """Apply every message to an :class:`OrderBook`, taking a batch every ``size`` messages.

    Return the wall and CPU seconds of it and the batches, each given afterwards the positions its
    topics reached (as the node adds them), outside the timing.
    """
    book = OrderBook(tz)
    report, trade, take, pending = book.report, book.trade, book.take, book.pending
    batches: list[Batch] = []
    gc.collect()
    t, c = time.perf_counter(), time.process_time()
    if with_bodies:
        for m, body in zip(ms.msgs, ms.bodies, strict=True):
            if type(m) is Trade:
                trade(m)
            else:
                report(m, body)
            if pending() >= size:
                batches.append(take())
    else:
        for m in ms.msgs:
            if type(m) is Trade:
                trade(m)
            else:
                report(m)
            if pending() >= size:
                batches.append(take())
    if pending():
        batches.append(take())
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    i = 0
    for b in batches:  # where each topic stands after the batch, as Persistence._take records it
        at: dict[tuple[int, str], tuple[int, int]] = {}
        for shard, topic, tseq, seq in ms.topics[i:i + len(b)]:
            at[(shard, topic)] = (tseq, seq)
        i += len(b)
        for (shard, topic), (tseq, seq) in at.items():
            book.position(shard, topic, tseq, seq)
        b.positions = book.take().positions
    assert i == len(ms.msgs) and book.missing == 0
    return secs, cpu, batches


def _rows(b: Batch) -> int:
    return len(b.orders) + len(b.events) + len(b.trades) + len(b.positions)


def sqlite_store_run(batches: list[Batch], path: Path) -> dict[str, Any]:
    """Write the batches with :class:`SQLiteOrderStore` into a fresh file; return the time and write latencies."""
    store = SQLiteOrderStore(path)
    lat: list[float] = []
    gc.collect()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            t = time.perf_counter()
            store.write(b)
            lat.append(time.perf_counter() - t)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        store.close()
    k = max(1, len(lat) // 10)
    return {"secs": secs, "cpu_s": cpu, "lat": lat, "growth": (sum(lat[-k:]) / k) / (sum(lat[:k]) / k)}


_FLOOR_TABLES: Final = (("orders", OrderRow.__struct_fields__), ("events", ("day", "broker", "oid", "shard", "seq",
                                                                            "kind", "ts", "body")),
                        ("trades", TradeRow.__struct_fields__), ("positions", ("shard", "topic", "tseq", "seq")))


def _tuples(b: Batch) -> list[list[tuple[Any, ...]]]:
    """The batch's rows as the store binds them (the same tuples, per table)."""
    return [[tuple(getattr(r, c) for c in OrderRow.__struct_fields__) for r in b.orders],
            [(e.day, e.broker, e.oid, e.shard, e.seq, e.kind, e.ts, e.body) for e in b.events],
            [tuple(getattr(t, c) for c in TradeRow.__struct_fields__) for t in b.trades],
            [(p.shard, p.topic, p.tseq, p.seq) for p in b.positions]]


def sqlite_floor_run(batches: list[Batch], path: Path) -> dict[str, Any]:
    """The floor: the same rows (tuples built beforehand, timed apart) by bare ``executemany`` into plain tables
    of the same columns, without keys or indexes, one transaction per batch, the store's pragmas."""
    gc.collect()
    t = time.perf_counter()
    rows = [_tuples(b) for b in batches]
    tuples_s = time.perf_counter() - t
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        inserts = []
        for table, cols in _FLOOR_TABLES:
            db.execute(f"CREATE TABLE {table} ({', '.join(cols)})")
            inserts.append(f"INSERT INTO {table} VALUES ({', '.join('?' * len(cols))})")
        t0, c0 = time.perf_counter(), time.process_time()
        for per_table in rows:
            db.execute("BEGIN")
            for sql, tuples in zip(inserts, per_table, strict=True):
                if tuples:
                    db.executemany(sql, tuples)
            db.execute("COMMIT")
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        db.close()
    return {"secs": secs, "cpu_s": cpu, "tuples_s": tuples_s}


class RedisBench:
    """A ``redis-server`` of this run (``tests/servers.py``'s :class:`RedisServer`), or why there is none."""

    def __init__(self, root: Path, skip: str | None = None) -> None:
        self.server: Any = None
        self.why: str | None = skip
        self.url = ""
        if skip is not None:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            self.why = "redis-server is not installed (not on PATH)"
            return
        try:
            from tests.servers import RedisServer

            server = RedisServer(binary, root)
            root.mkdir(parents=True, exist_ok=True)
            server.start()
        except (ImportError, RuntimeError, OSError) as e:
            self.why = f"redis-server did not start: {e}"
            return
        self.server = server
        self.url = server.url

    @property
    def up(self) -> bool:
        """Whether the server runs."""
        return self.server is not None

    def flush(self) -> None:
        """Empty the server."""
        import redis

        r = redis.Redis.from_url(self.url)
        r.flushall()
        r.close()

    def stop(self) -> None:
        """Stop the server."""
        if self.server is not None:
            self.server.stop()
            self.server = None


def redis_apply_run(batches: list[Batch], url: str, prefix: str) -> dict[str, Any]:
    """Apply the batches with :class:`RedisRecent`; return the time."""
    from fabric.redis_recent import RedisRecent

    recent = RedisRecent(url, prefix=prefix, socket_timeout=30.0)
    gc.collect()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            recent.apply(b)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        recent.close()
    return {"secs": secs, "cpu_s": cpu}


def redis_floor_run(batches: list[Batch], url: str, prefix: str) -> dict[str, Any]:
    """The floor: per batch, one pipeline (no transaction) of a ``SET`` per order and trade row, its key and its
    msgpack built beforehand."""
    import redis

    enc = msgspec.msgpack.Encoder().encode
    work = [[(f"{prefix}:o:{r.broker}:{r.oid}", enc(r)) for r in b.orders]
            + [(f"{prefix}:t:{t.symbol}:{t.seq}", enc(t)) for t in b.trades] for b in batches]
    client = redis.Redis.from_url(url, socket_timeout=30.0)
    gc.collect()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for sets in work:
            pipe = client.pipeline(transaction=False)
            for k, v in sets:
                pipe.set(k, v)
            pipe.execute()
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        client.close()
    return {"secs": secs, "cpu_s": cpu}


def memory_run(batches: list[Batch]) -> dict[str, Any]:
    """Apply the batches to a :class:`MemoryRecent`; return the time."""
    recent = MemoryRecent()
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        recent.apply(b)
    return {"secs": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def decode_run(ms: Messages) -> float:
    """Decode every frame as the node's follower does (``iter_pub_typed``); return the seconds."""
    t = time.perf_counter()
    n = 0
    for frames in ms.turns:
        for _topic, body in frames:
            n += len(iter_pub_typed(body))
    secs = time.perf_counter() - t
    assert n == len(ms.msgs)
    return secs


def _rate(n: float, secs: float) -> float:
    return n / max(secs, 1e-9)


def _figure(runs: list[dict[str, Any]], n: int, rows: int | None = None) -> dict[str, Any] | None:
    """The medians of one measure's rounds: seconds, messages/s (``n`` messages), rows/s; None if never run."""
    if not runs:
        return None
    secs = _median([r["secs"] for r in runs])
    out = {"secs": secs, "secs_all": [r["secs"] for r in runs], "cpu_s": _median([r["cpu_s"] for r in runs]),
           "msgs_per_s": _rate(n, secs), "us_per_msg": secs / n * 1e6}
    if rows is not None:
        out["rows_per_s"] = _rate(rows, secs)
    return out


def part_stores(args: argparse.Namespace, ms: Messages, tz: str, tmp: Path, redis_srv: RedisBench) -> dict[str, Any]:
    """Part 1: the order book, SQLite against its floor, Redis against its floor, the memory recent state."""
    n = len(ms.msgs)
    decode_s = []
    for _ in range(args.repeat):
        decode_s.append(decode_run(ms))
    out: dict[str, Any] = {"messages": n, "decode": {"secs": _median(decode_s), "msgs_per_s": _rate(n, _median(
        decode_s)), "us_per_msg": _median(decode_s) / n * 1e6}, "sizes": []}
    _say(f"1. decoding (iter_pub_typed): {out['decode']['msgs_per_s']:,.0f} messages/s")
    for size in args.batch_sizes:
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("book", "book_bodies", "sqlite", "sqlite_floor",
                                                                "redis", "redis_floor", "memory")}
        batches: list[Batch] = []
        for rnd in range(args.repeat):
            _say(f"1. batches of {size:,} messages, round {rnd + 1} of {args.repeat}: order book...")
            secs, cpu, batches = book_run(ms, size, tz, with_bodies=False)
            runs["book"].append({"secs": secs, "cpu_s": cpu})
            secs, cpu, _b = book_run(ms, size, tz, with_bodies=True)
            del _b
            runs["book_bodies"].append({"secs": secs, "cpu_s": cpu})
            _say(f"   SQLite store and its floor ({len(batches):,} batches, {sum(map(_rows, batches)):,} rows)...")
            d = tmp / "stores" / f"b{size}-r{rnd}"
            d.mkdir(parents=True, exist_ok=True)
            runs["sqlite"].append(sqlite_store_run(batches, d / "orders.sqlite3"))
            runs["sqlite_floor"].append(sqlite_floor_run(batches, d / "floor.sqlite3"))
            shutil.rmtree(d, ignore_errors=True)
            if redis_srv.up:
                _say("   Redis recent state and its floor...")
                runs["redis"].append(redis_apply_run(batches, redis_srv.url, f"bench:{size}:{rnd}"))
                runs["redis_floor"].append(redis_floor_run(batches, redis_srv.url, f"floor:{size}:{rnd}"))
                redis_srv.flush()
            runs["memory"].append(memory_run(batches))
        orders = sum(len(b.orders) for b in batches)
        trades = sum(len(b.trades) for b in batches)
        rows = sum(map(_rows, batches))
        redis_rows = orders + trades

        row: dict[str, Any] = {
            "batch": size, "batches": len(batches), "orders": orders, "events": sum(len(b.events) for b in batches),
            "trades": trades, "positions": sum(len(b.positions) for b in batches), "rows": rows,
            "book": _figure(runs["book"], n), "book_with_bodies": _figure(runs["book_bodies"], n),
            "sqlite": _figure(runs["sqlite"], n, rows), "sqlite_floor": _figure(runs["sqlite_floor"], n, rows),
            "redis": _figure(runs["redis"], n, redis_rows), "redis_floor": _figure(runs["redis_floor"], n, redis_rows),
            "redis_rows": redis_rows, "memory": _figure(runs["memory"], n),
        }
        lat = np.array([x for r in runs["sqlite"] for x in r["lat"]]) * 1000.0
        row["sqlite"]["write_p50_ms"] = float(np.percentile(lat, 50))
        row["sqlite"]["write_p99_ms"] = float(np.percentile(lat, 99))
        row["sqlite"]["write_max_ms"] = float(lat.max())
        # The write of a batch as the file grows: the last tenth of the batches against the first (1: no growth).
        row["sqlite"]["write_growth"] = _median([r["growth"] for r in runs["sqlite"]])
        row["sqlite_floor"]["tuples_s"] = _median([r["tuples_s"] for r in runs["sqlite_floor"]])
        row["sqlite"]["vs_floor"] = row["sqlite"]["secs"] / row["sqlite_floor"]["secs"]
        if row["redis"] is not None:
            row["redis"]["vs_floor"] = row["redis"]["secs"] / row["redis_floor"]["secs"]
        out["sizes"].append(row)
        red = ("" if row["redis"] is None else f"; Redis {row['redis']['rows_per_s']:,.0f} rows/s "
               f"({row['redis']['vs_floor']:.1f}× its floor's time)")
        _say(f"   book {row['book']['msgs_per_s']:,.0f} msgs/s; SQLite {row['sqlite']['rows_per_s']:,.0f} rows/s, "
             f"{row['sqlite']['msgs_per_s']:,.0f} msgs/s ({row['sqlite']['vs_floor']:.1f}× its floor's time){red}")
        del batches
        gc.collect()
    return out


# ==========================================================================
# Part 2: the node in-process
# ==========================================================================


async def _node_inprocess(topo: Topology, ms: Messages, store: SQLiteOrderStore, recent: RecentState,
                          timeout: float) -> dict[str, Any]:
    node = Persistence(topo, store=store, recent=recent)
    try:
        node.resume()
        await asyncio.to_thread(node._apply_recent, Batch())  # what run() does first (the recent state from the store)
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        deadline = t0 + timeout
        for frames in ms.turns:  # what Follower._ingest does with each drained turn
            node.follow.turns += 1
            node.follow.ingest(frames)
            node._turn()
            await asyncio.sleep(0)
        fed_s = time.perf_counter() - t0
        while (node.book.pending() or node._writing is not None) and time.perf_counter() < deadline:
            node._turn()  # Persistence._tick's job: a batch is written `interval` after its first message at the latest
            await asyncio.sleep(0.001)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        st = node.stats_view()
    finally:
        await node.follow.close()
        node.ctx.term()
        store.close()
        recent.close()
    n = len(ms.msgs)
    return {"recent": recent.name.split(":")[0], "messages": n, "secs": secs, "fed_s": fed_s, "cpu_s": cpu,
            "cpu_cores": cpu / secs, "msgs_per_s": n / secs, "written": st["written"], "batches": st["batches"],
            "mean_batch": st["written"] / st["batches"] if st["batches"] else 0,
            "replays": sum(s["replays"] for s in st["shards"].values()), "refused": st["refused"],
            "missing_starts": st["missing_starts"], "complete": st["written"] == n and st["pending"] == 0}


def part_node(args: argparse.Namespace, topo: Topology, ms: Messages, stores: dict[str, Any] | None, tmp: Path,
              redis_srv: RedisBench) -> dict[str, Any]:
    """Part 2: the sum of the parts, the real node class in-process, and the matchers' peak they face."""
    n = len(ms.msgs)
    per_cmd = n / ms.commands
    shards = len(topo.shards)
    peak_cmds = 1e6 / args.matcher_us_per_cmd
    demand = {"matcher_us_per_cmd": args.matcher_us_per_cmd, "shards": shards, "msgs_per_cmd": per_cmd,
              "peak_cmds_per_s_per_shard": peak_cmds, "peak_msgs_per_s": shards * peak_cmds * per_cmd,
              "exchange_cmds_per_s": args.exchange_cmds_per_s,
              "exchange_msgs_per_s": args.exchange_cmds_per_s * per_cmd}
    out: dict[str, Any] = {"demand": demand, "inprocess": []}
    if stores is not None:
        at = min(stores["sizes"], key=lambda r: abs(r["batch"] - BATCH))
        parts = {"decode": stores["decode"]["us_per_msg"], "order_book": at["book"]["us_per_msg"],
                 "sqlite": at["sqlite"]["us_per_msg"], "memory": at["memory"]["us_per_msg"]}
        model: dict[str, Any] = {"batch": at["batch"], "us_per_msg": parts,
                                 "sqlite_memory_us_per_msg": sum(parts.values())}
        model["sqlite_memory_msgs_per_s"] = 1e6 / model["sqlite_memory_us_per_msg"]
        if at["redis"] is not None:
            model["redis_us_per_msg"] = at["redis"]["us_per_msg"]
            model["sqlite_redis_us_per_msg"] = sum(parts.values()) - parts["memory"] + at["redis"]["us_per_msg"]
            model["sqlite_redis_msgs_per_s"] = 1e6 / model["sqlite_redis_us_per_msg"]
        out["model"] = model
    logs = logging.getLogger("exfab")
    kinds = ["embedded"] + (["redis"] if redis_srv.up else [])
    for kind in kinds:
        for rnd in range(args.repeat):
            _say(f"2. the node in-process (Persistence), SQLite + {kind} recent state, round {rnd + 1} of "
                 f"{args.repeat}...")
            d = tmp / "node" / f"{kind}-{rnd}"
            d.mkdir(parents=True, exist_ok=True)
            store = SQLiteOrderStore(d / "orders.sqlite3")
            recent: RecentState
            if kind == "redis":
                from fabric.redis_recent import RedisRecent

                recent = RedisRecent(redis_srv.url, prefix=f"node:{rnd}", socket_timeout=30.0)
            else:
                recent = MemoryRecent()
            level = logs.level
            logs.setLevel(logging.WARNING)  # the node logs every rebuild of the recent state at INFO
            try:
                r = asyncio.run(_node_inprocess(topo, ms, store, recent, args.timeout))
            finally:
                logs.setLevel(level)
            r["round"] = rnd
            out["inprocess"].append(r)
            shutil.rmtree(d, ignore_errors=True)
            if kind == "redis":
                redis_srv.flush()
            _say(f"   {r['msgs_per_s']:,.0f} messages/s ({n:,} in {r['secs']:.2f} s, {r['cpu_cores']:.2f} cores; "
                 f"{r['batches']:,} batches of {r['mean_batch']:,.0f} on average)"
                 + ("" if r["complete"] else " INCOMPLETE"))
    best: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        rs = [r for r in out["inprocess"] if r["recent"] == kind]
        secs = _median([r["secs"] for r in rs])
        best[kind] = {"msgs_per_s": n / secs, "secs": secs, "rounds": len(rs),
                      "complete": all(r["complete"] for r in rs)}
    out["node"] = best
    out["headroom"] = {k: {"vs_matchers_peak": v["msgs_per_s"] / demand["peak_msgs_per_s"],
                           "vs_exchange_pipelined": v["msgs_per_s"] / demand["exchange_msgs_per_s"]}
                       for k, v in best.items()}
    return out


# ==========================================================================
# Parts 3 and 4: node processes
# ==========================================================================


@dataclass
class Published:
    """What the matchers say they published of the node's topics (from their snapshots)."""

    trades: int
    exec_reports: int

    @property
    def messages(self) -> int:
        return self.trades + self.exec_reports


def published(topo: Topology) -> Published:
    """Ask every matcher for a snapshot; return its trades (last trade ids) and execution reports (``X`` tseq).

    Raises
    ------
    RuntimeError
        When a matcher does not answer within 10 s.
    """
    ctx: zmq.Context[Any] = zmq.Context.instance()
    trades = execs = 0
    for no, shard in enumerate(topo.shards):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(shard.replicas[0].recovery.connect)
            s.send(encode(SnapshotRequest(shard=no)))
            if not s.poll(10_000):
                raise RuntimeError(f"matcher {shard.name} did not answer a snapshot request")
            snap = decode_internal(s.recv_multipart()[-1])
        finally:
            s.close(0)
        assert isinstance(snap, SnapshotReply)
        trades += sum(b.trade_tseq for b in snap.books)  # one T message a trade
        execs += snap.exec_tseq
    return Published(trades, execs)


class StoreCount:
    """Counts of the rows of a SQLite order store another process writes (read-only, WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def __call__(self) -> Published:
        """Return the trades and execution reports the store holds now (0 before the file exists)."""
        if self._db is None:
            if not self.path.exists():
                return Published(0, 0)
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        try:
            (t,), (e,) = (self._db.execute(f"SELECT count(*) FROM {table}").fetchone() for table in ("trades",
                                                                                                     "events"))
        except sqlite3.OperationalError:  # (the tables are not made yet)
            return Published(0, 0)
        return Published(t, e)

    def close(self) -> None:
        """Let go of the file."""
        if self._db is not None:
            self._db.close()
            self._db = None


def wait_stored(count: StoreCount, want: Published, timeout: float) -> float | None:
    """Wait until the store holds ``want``'s trades and reports; return when (``time.time()``), None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = count()
        if got.trades >= want.trades and got.exec_reports >= want.exec_reports:
            return time.time()
        time.sleep(POLL_S)
    return None


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) persistence INFO .*resuming after")


def _resumed_at(log: Path, since: float) -> float | None:
    """Return when (``time.time()``) the node's log last says ``resuming after``, if at or after ``since``."""
    found = None
    for line in log.read_text(errors="replace").splitlines():
        m = _LOG_TIME.match(line)
        if m:
            found = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the node's local time
    return found if found is not None and found >= since - 1.0 else None


def _wipe_store(topo: Topology) -> Path:
    path = topo.sqlite_path("orders")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


_NODE_EVENTS: Final = {"paused": "reading no more until", "resumed": "reading resumes", "replays": "replayed seq"}


def _log_events(log: Path, offset: int) -> dict[str, int]:
    """Count, in the node's log past ``offset``, its pauses (the store behind by ``MAX_PENDING``), resumes, replays."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return {k: text.count(v) for k, v in _NODE_EVENTS.items()}


def catch_up(launcher: Launcher, topo: Topology, want: Published, recent: str, timeout: float) -> dict[str, Any]:
    """Start the persistence node on an empty store; time until it holds everything the matchers published."""
    db_path = _wipe_store(topo)
    count = StoreCount(db_path)
    log_path = launcher.log_dir / "persistence-persistence.log"
    log_at = log_path.stat().st_size if log_path.exists() else 0
    try:
        wall0, t0 = time.time(), time.monotonic()
        node = launcher.start_node("persistence", "persistence", timeout=max(120.0, timeout))
        ready_s = time.monotonic() - t0
        done = wait_stored(count, want, timeout)
        got = count()
    finally:
        count.close()
    end = time.monotonic()
    cpu = process_cpu_s(node.proc.pid) or 0.0
    time.sleep(SETTLE_S)  # (untimed) its last batch goes on to the recent state, and it logs what follows
    resumed = _resumed_at(node.log_path, wall0)
    launch_s = (done - wall0) if done is not None else None
    caught_s = (done - resumed) if done is not None and resumed is not None else None
    return {"recent": recent, "messages": want.messages, "trades": want.trades, "exec_reports": want.exec_reports,
            "stored_trades": got.trades, "stored_exec_reports": got.exec_reports, "complete": done is not None,
            "ready_s": ready_s, "launch_to_done_s": launch_s, "resume_to_done_s": caught_s,
            "startup_s": None if resumed is None else resumed - wall0,
            "msgs_per_s": None if caught_s is None else want.messages / caught_s,
            "msgs_per_s_from_launch": None if launch_s is None else want.messages / launch_s,
            "node_cpu_s": cpu, "node_cpu_cores": cpu / (end - t0), "pid": node.proc.pid,
            "node_log": _log_events(node.log_path, log_at)}


def part_processes(args: argparse.Namespace, path: Path, topo: Topology, ms: Messages, redis_srv: RedisBench,
                   tmp: Path) -> dict[str, Any]:
    """Parts 3 and 4: the matchers on the stream's journals; per recent state, a node catching up from seq 1, then
    (part 4) a live pipelined load with it running."""
    out: dict[str, Any] = {"catchup": [], "live": []}
    launcher = Launcher(path, workdir=path.parent, kinds=(MATCHER,), extra_args={"matcher": ["--fsync", "none"]})
    others: list[Launcher] = []
    try:
        _say(f"3. starting the matchers on the stream's journals ({ms.commands:,} commands to replay)...")
        t = time.monotonic()
        launcher.start()
        out["matchers_start_s"] = time.monotonic() - t
        want = published(topo)
        out["published"] = {"trades": want.trades, "exec_reports": want.exec_reports, "messages": want.messages}
        if (want.trades, want.exec_reports) != (ms.trades, ms.exec_reports):
            raise RuntimeError(f"the matchers replayed their journals to {want} published, the stream had "
                               f"{ms.trades} trades and {ms.exec_reports} reports")
        _say(f"   ready in {out['matchers_start_s']:.1f} s: {want.trades:,} trades and {want.exec_reports:,} execution "
             "reports published, by their snapshots")
        gateways = False
        for kind in (["redis"] if redis_srv.up else []) + ["embedded"]:
            nodes = launcher
            if kind == "redis":
                nodes = Launcher(_topology(path.parent, redis_srv.url), workdir=path.parent, kinds=())
                others.append(nodes)
            want = published(topo)  # (after a live run of another kind: more than the stream)
            _say(f"3. catch-up of a persistence node process (SQLite + {kind}) from seq 1: {want.messages:,} "
                 "messages...")
            r = catch_up(nodes, topo, want, kind, args.timeout)
            out["catchup"].append(r)
            _say(_catch_line(r))
            if 4 in args.parts_set and r["complete"]:
                if not gateways:
                    _say("4. live: starting the gateways...")
                    for gw in topo.gateways:
                        launcher.start_node("gateway", gw.name)
                    gateways = True
                lv = live(args, nodes.node("persistence", "persistence"), path, topo, kind)
                out["live"].append(lv)
                _say(_live_line(lv))
            if nodes is not launcher:
                nodes.stop()
                redis_srv.flush()
    finally:
        for other in others:
            other.stop()
        launcher.stop()
    return out


def _catch_line(r: dict[str, Any]) -> str:
    if not r["complete"]:
        return (f"   NOT caught up within the timeout: {r['stored_trades']:,} of {r['trades']:,} trades, "
                f"{r['stored_exec_reports']:,} of {r['exec_reports']:,} reports")
    since = "" if r["msgs_per_s"] is None else (f"{r['msgs_per_s']:,.0f} messages/s from its 'resuming' line "
                                                f"({r['resume_to_done_s']:.2f} s), ")
    return (f"   {since}{r['msgs_per_s_from_launch']:,.0f} from its launch ({r['launch_to_done_s']:.2f} s); node "
            f"{r['node_cpu_cores']:.2f} cores; its log: {r['node_log']}")


def live(args: argparse.Namespace, node: NodeProcess, path: Path, topo: Topology, recent: str) -> dict[str, Any]:
    """Part 4: exfab perf's pipelined load with the node running; its CPU, and its lag when the load stops."""
    node_pid = node.proc.pid
    log_at = node.log_path.stat().st_size
    count = StoreCount(topo.sqlite_path("orders"))
    target = ExchangeTarget(brokers=8, topology=str(path), commands=args.live_commands, seed=args.seed + 100)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:  # what the store holds, every half second of the load
        c = StoreCount(topo.sqlite_path("orders"))
        try:
            while not stop.wait(0.5):
                samples.append((time.monotonic(), c().messages))
        finally:
            c.close()

    try:
        target.start()
        driver = LoadDriver(target, progress=True, drain=2.0)
        before = published(topo)
        stored_before = count()
        sampler = threading.Thread(target=sample, daemon=True)
        cpu0, t0 = process_cpu_s(node_pid) or 0.0, time.monotonic()
        watch = CpuWatch()
        watch.start()
        sampler.start()
        _say(f"4. live, recent state {recent}: exfab perf's pipelined load (window {LIVE_WINDOW:,}) for "
             f"{args.live_duration:g} s...")
        res = driver.pipelined(args.live_duration, window=LIVE_WINDOW, config=f"persistence ({recent}) running")
        stop.set()
        sampler.join(5)
        t1, wall1 = time.monotonic(), time.time()
        cpu1 = process_cpu_s(node_pid) or 0.0
        machine = watch.stop()
        after = published(topo)
        stored_end = count()
        done = wait_stored(count, after, args.timeout)
    finally:
        stop.set()
        count.close()
        target.stop()
    secs = t1 - t0
    sent = after.messages - before.messages
    return {
        "recent": recent, "secs": secs, "commands_per_s": res.msgs_per_s, "commands": target.commands_sent,
        "node_cpu_us_per_cmd": res.node_cpu_us_per_msg,
        "published_msgs": sent, "published_msgs_per_s": sent / secs,
        "msgs_per_cmd": sent / max(1, target.commands_sent),
        "lag_msgs_at_end": after.messages - stored_end.messages, "lag_trades_at_end": after.trades - stored_end.trades,
        "caught_up_s_after_end": None if done is None else done - wall1, "complete": done is not None,
        "node_cpu_cores": (cpu1 - cpu0) / secs, "node_us_per_msg": (cpu1 - cpu0) / max(1, sent) * 1e6,
        "node_us_per_cmd": (cpu1 - cpu0) / max(1, target.commands_sent) * 1e6,
        "stored_msgs_per_s_during": ((samples[-1][1] - stored_before.messages) / (samples[-1][0] - t0)
                                     if samples else None),
        "cpu": machine, "node_log": _log_events(node.log_path, log_at),
    }


def _live_line(r: dict[str, Any]) -> str:
    caught = "not within the timeout" if r["caught_up_s_after_end"] is None else f"{r['caught_up_s_after_end']:.2f} s"
    return (f"   {r['published_msgs_per_s']:,.0f} X/T messages/s published ({r['commands_per_s']:,.0f} commands/s); "
            f"node {r['node_cpu_cores']:.2f} cores; {r['lag_msgs_at_end']:,} messages behind when the load stopped, "
            f"caught up {caught} later; its log: {r['node_log']}")


# ==========================================================================
# Report
# ==========================================================================


def headline(res: dict[str, Any]) -> dict[str, Any]:
    """Return the headline figures of a run (``None`` where not measured).

    ``node_inprocess_msgs_per_s``: part 2(b), SQLite and the recent state in memory; ``catchup_msgs_per_s``: part 3,
    a node process from its ``resuming`` log line; ``headroom_vs_matchers_peak``: the first over
    ``matchers_peak_msgs_per_s``; ``live_*``: part 4 (``_redis``: with Redis as the recent state).
    """
    node = (res.get("node") or {}).get("node") or {}
    demand = (res.get("node") or {}).get("demand") or {}
    procs = res.get("processes") or {}
    catch = {r["recent"]: r for r in procs.get("catchup", [])}
    lives = {r["recent"]: r for r in procs.get("live", [])}
    emb = node.get("embedded")
    peak = demand.get("peak_msgs_per_s")
    out: dict[str, Any] = {
        "node_inprocess_msgs_per_s": emb["msgs_per_s"] if emb else None,
        "node_inprocess_redis_msgs_per_s": node["redis"]["msgs_per_s"] if "redis" in node else None,
        "catchup_msgs_per_s": (catch.get("embedded") or {}).get("msgs_per_s"),
        "catchup_redis_msgs_per_s": (catch.get("redis") or {}).get("msgs_per_s"),
        "matchers_peak_msgs_per_s": peak,
        "headroom_vs_matchers_peak": emb["msgs_per_s"] / peak if emb and peak else None,
    }
    for kind, suffix in (("embedded", ""), ("redis", "_redis")):
        lv = lives.get(kind) or {}
        out[f"live{suffix}_published_msgs_per_s"] = lv.get("published_msgs_per_s")
        out[f"live{suffix}_lag_msgs_at_end"] = lv.get("lag_msgs_at_end")
        out[f"live{suffix}_caught_up_s_after_end"] = lv.get("caught_up_s_after_end")
    return out


def _n(v: float | None, fmt: str = ",.0f", none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def _markdown(res: dict[str, Any]) -> str:
    lines = ["# Persistence benchmark", "", f"Command: `{res['command']}`", "",
             f"Generated {res['generated']} on {res['cpus']} CPUs, {res['platform']}, Python {res['python']}; "
             f"load average {res['loadavg_1m']} at the end; others took {res['cpu']['others_cores']:.2f} cores on "
             f"average over the run. Code: commit {res['git']['commit'] or '?'}"
             + (f", with changes to {', '.join(res['git']['changed'])}" if res["git"]["changed"] else "") + ".", ""]
    s = res["stream"]
    lines += [f"Stream: {s['commands']:,} commands of `perf/workload.py` flow through the two shards' real matchers "
              f"gave {s['trades']:,} trades and {s['all_messages']:,} PUB messages, of which the node follows "
              f"{s['messages']:,} ({s['exec_reports']:,} execution reports and the trades: "
              f"{s['msgs_per_cmd']:.2f} a command).", ""]
    h = res["headline"]
    lines += ["## Headline", "", "| figure | this run |", "| --- | ---: |",
              f"| the node in-process, SQLite + memory, messages/s | {_n(h['node_inprocess_msgs_per_s'])} |",
              f"| the same, SQLite + Redis | {_n(h['node_inprocess_redis_msgs_per_s'])} |",
              f"| a node process catching up from seq 1, messages/s (SQLite + memory) | "
              f"{_n(h['catchup_msgs_per_s'])} |",
              f"| the same, SQLite + Redis | {_n(h['catchup_redis_msgs_per_s'])} |",
              f"| the matchers' peak, X and T messages/s (both shards) | {_n(h['matchers_peak_msgs_per_s'])} |",
              f"| headroom: node in-process / matchers' peak | {_n(h['headroom_vs_matchers_peak'], '.2f')} |",
              f"| live: X and T messages/s published under exfab perf's pipelined load (memory; Redis) | "
              f"{_n(h['live_published_msgs_per_s'])}; {_n(h['live_redis_published_msgs_per_s'])} |",
              f"| live: the store's lag when the load stopped, messages (memory; Redis) | "
              f"{_n(h['live_lag_msgs_at_end'])}; {_n(h['live_redis_lag_msgs_at_end'])} |",
              f"| live: caught up after the load stopped, s (memory; Redis) | "
              f"{_n(h['live_caught_up_s_after_end'], '.2f')}; {_n(h['live_redis_caught_up_s_after_end'], '.2f')} |",
              ""]
    st = res.get("stores")
    if st:
        lines += ["## 1. The stores, per batch size", "",
                  f"Medians of rounds ({res['args']['repeat']}). µs/msg is per message the node takes (an execution "
                  "report or a trade); rows: orders, events, trades and positions for SQLite, orders and trades for "
                  "Redis. ×floor is the time against the floor's, the same rows in the same round (1 = as fast as "
                  "the floor). Decoding (`iter_pub_typed`, as the follower): "
                  f"{st['decode']['msgs_per_s']:,.0f} messages/s ({st['decode']['us_per_msg']:.2f} µs/msg).", "",
                  "| batch | measure | messages/s | rows/s | µs/msg | floor rows/s | ×floor |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in st["sizes"]:
            b = f"{r['batch']:,}"
            lines.append(f"| {b} | OrderBook report/trade + take, as the node (each report encoded again) | "
                         f"{r['book']['msgs_per_s']:,.0f} | | {r['book']['us_per_msg']:.2f} | | |")
            lines.append(f"| {b} | OrderBook, the body as published given | {r['book_with_bodies']['msgs_per_s']:,.0f} "
                         f"| | {r['book_with_bodies']['us_per_msg']:.2f} | | |")
            q, f = r["sqlite"], r["sqlite_floor"]
            lines.append(f"| {b} | SQLiteOrderStore.write ({r['batches']:,} batches, {r['rows']:,} rows; write p50 "
                         f"{q['write_p50_ms']:.1f} ms, p99 {q['write_p99_ms']:.1f} ms; last tenth of the batches "
                         f"{q['write_growth']:.2f}× the first's time) | {q['msgs_per_s']:,.0f} | "
                         f"{q['rows_per_s']:,.0f} | {q['us_per_msg']:.2f} | {f['rows_per_s']:,.0f} | "
                         f"{q['vs_floor']:.2f} |")
            if r["redis"] is not None:
                q, f = r["redis"], r["redis_floor"]
                lines.append(f"| {b} | RedisRecent.apply ({r['redis_rows']:,} rows) | {q['msgs_per_s']:,.0f} | "
                             f"{q['rows_per_s']:,.0f} | {q['us_per_msg']:.2f} | {f['rows_per_s']:,.0f} | "
                             f"{q['vs_floor']:.2f} |")
            lines.append(f"| {b} | MemoryRecent.apply | {r['memory']['msgs_per_s']:,.0f} | | "
                         f"{r['memory']['us_per_msg']:.2f} | | |")
        shares = ", ".join(f"{r['sqlite_floor']['tuples_s'] / r['sqlite']['secs']:.0%}" for r in st["sizes"])
        sizes = ", ".join(f"{r['batch']:,}" for r in st["sizes"])
        lines += ["", f"Building the rows' tuples (what `write` does in Python before SQLite) takes {shares} of the "
                  f"write's time at batches of {sizes}.", ""]
        if res.get("redis_skipped"):
            lines += [f"Redis: not measured ({res['redis_skipped']}).", ""]
    nd = res.get("node")
    if nd:
        d = nd["demand"]
        lines += ["## 2. The node in-process, against the matchers' peak", "",
                  f"Demand: {d['shards']} shards × {d['peak_cmds_per_s_per_shard']:,.0f} commands/s (a matcher at "
                  f"{d['matcher_us_per_cmd']:g} µs of CPU a command) × {d['msgs_per_cmd']:.2f} X/T messages a command "
                  f"= **{d['peak_msgs_per_s']:,.0f} messages/s**; the whole exchange's measured pipelined rate, "
                  f"{d['exchange_cmds_per_s']:,.0f} commands/s, is {d['exchange_msgs_per_s']:,.0f} messages/s.", ""]
        m = nd.get("model")
        if m:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in m["us_per_msg"].items())
            red = ("" if "sqlite_redis_msgs_per_s" not in m else
                   f"; with Redis instead of memory ({m['redis_us_per_msg']:.2f} µs) "
                   f"{m['sqlite_redis_us_per_msg']:.2f} µs: {m['sqlite_redis_msgs_per_s']:,.0f} messages/s")
            lines += [f"(a) The sum of the parts at {m['batch']:,} a batch, one after the other on one core: {parts} "
                      f"µs/msg = {m['sqlite_memory_us_per_msg']:.2f} µs: **{m['sqlite_memory_msgs_per_s']:,.0f} "
                      f"messages/s**{red}.", ""]
        lines += ["(b) The real `Persistence` class fed the stream (one matcher batch a turn), until everything is "
                  "written:", "",
                  "| recent state | round | messages/s | seconds | of which feeding | cores | batches written | "
                  "mean batch | complete |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in nd["inprocess"]:
            lines.append(f"| {r['recent']} | {r['round'] + 1} | {r['msgs_per_s']:,.0f} | {r['secs']:.2f} | "
                         f"{r['fed_s']:.2f} | {r['cpu_cores']:.2f} | {r['batches']:,} | {r['mean_batch']:,.0f} | "
                         f"{'yes' if r['complete'] else '**no**'} |")
        lines += ["", "| recent state | messages/s (median) | × matchers' peak | × the exchange's pipelined rate |",
                  "| --- | ---: | ---: | ---: |"]
        for k, v in nd["node"].items():
            hr = nd["headroom"][k]
            lines.append(f"| {k} | {v['msgs_per_s']:,.0f} | {hr['vs_matchers_peak']:.2f} | "
                         f"{hr['vs_exchange_pipelined']:.2f} |")
        lines.append("")
    pr = res.get("processes")
    if pr:
        p = pr["published"]
        lines += ["## 3. A node process catching up", "",
                  f"Two matcher processes replayed the stream's journals in {pr['matchers_start_s']:.1f} s; by their "
                  f"snapshots they published {p['trades']:,} trades and {p['exec_reports']:,} execution reports "
                  f"({p['messages']:,} messages for the node). The node started on an empty store and caught up by "
                  "replays from seq 1.", "",
                  "| recent state | messages/s from its 'resuming' log line | seconds | messages/s from launch | "
                  "seconds | start-up | READY after | node cores | node's log: paused, resumed, replays |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in pr.get("catchup", []):
            if not r["complete"]:
                lines.append(f"| {r['recent']} | not caught up within the timeout: {r['stored_trades']:,} of "
                             f"{r['trades']:,} trades | | | | | | | |")
                continue
            lines.append(f"| {r['recent']} | {_n(r['msgs_per_s'])} | {_n(r['resume_to_done_s'], '.2f')} | "
                         f"{r['msgs_per_s_from_launch']:,.0f} | {r['launch_to_done_s']:.2f} | "
                         f"{_n(r['startup_s'], '.2f')} s | {r['ready_s']:.2f} s | {r['node_cpu_cores']:.2f} | "
                         f"{', '.join(str(v) for v in r['node_log'].values())} |")
        lines.append("")
        if pr.get("live"):
            lines += ["## 4. Live: exfab perf's pipelined load with the node running", "",
                      f"8 brokers on one gateway, one symbol of shard A, window {LIVE_WINDOW:,} (`exfab perf`'s "
                      "pipelined run), the node caught up before it starts. Published: the X/T messages the matchers' "
                      "snapshots count over the load; lag: those the store did not hold yet when the load stopped.", "",
                      "| recent state | commands/s | X/T messages/s published | per command | stored/s during the "
                      "load | node cores | node µs/msg | node µs/command | lag at the end | caught up after | "
                      "other nodes' CPU µs/command | machine, others (cores) | node's log: paused, resumed, replays |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
            for lv in pr["live"]:
                cpu = lv["cpu"]
                us = ", ".join(f"{k} {v:,.1f}" for k, v in lv["node_cpu_us_per_cmd"].items() if k != "persistence")
                caught = "not within the timeout" if lv["caught_up_s_after_end"] is None else (
                    f"{lv['caught_up_s_after_end']:.2f} s")
                lines.append(f"| {lv['recent']} | {lv['commands_per_s']:,.0f} | {lv['published_msgs_per_s']:,.0f} | "
                             f"{lv['msgs_per_cmd']:.2f} | {_n(lv['stored_msgs_per_s_during'])} | "
                             f"{lv['node_cpu_cores']:.2f} | {lv['node_us_per_msg']:.1f} | "
                             f"{lv['node_us_per_cmd']:.1f} | "
                             f"{lv['lag_msgs_at_end']:,} messages ({lv['lag_trades_at_end']:,} trades) | {caught} | "
                             f"{us} | {cpu.get('machine_cores', 0):.2f}, {cpu.get('others_cores', 0):.2f} | "
                             f"{', '.join(str(v) for v in lv['node_log'].values())} |")
            lines.append("")
    return "\n".join(lines)


def write_report(res: dict[str, Any], out_dir: Path, name: str) -> dict[str, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{name}.{k}" for k in ("json", "md")}
    paths["json"].write_text(json.dumps(res, indent=1, allow_nan=False) + "\n")
    paths["md"].write_text(_markdown(res))
    return paths


# ==========================================================================
# Command line
# ==========================================================================


@contextlib.contextmanager
def _node_logs(path: Path) -> Iterator[None]:
    """Send the in-process nodes' and matchers' logs to a file (INFO, as the nodes log), not to this terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    exfab = logging.getLogger("exfab")
    exfab.addHandler(handler)
    exfab.setLevel(logging.INFO)
    exfab.propagate = False
    try:
        yield
    finally:
        exfab.removeHandler(handler)
        handler.close()


def _cpu_total() -> Callable[[], dict[str, float]]:
    watch = CpuWatch()
    watch.start()
    return watch.stop


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the reports, and return the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one round, under a minute")
    ap.add_argument("--parts", default="1,2,3,4", help="which parts to run (default 1,2,3,4)")
    ap.add_argument("--trades", type=int, help="trades in the stream (default 25,000; --quick 3,000)")
    ap.add_argument("--batches", default="100,1000,5000", help="part 1: messages per batch (default 100,1000,5000)")
    ap.add_argument("--repeat", type=int, help="parts 1, 2: rounds, the median counts (default 3; --quick 1)")
    ap.add_argument("--matcher-us-per-cmd", type=float, default=MATCHER_US_PER_CMD,
                    help=f"part 2: a matcher's CPU per command at its peak (default {MATCHER_US_PER_CMD:g} µs, "
                    "docs/performance.md)")
    ap.add_argument("--exchange-cmds-per-s", type=float, default=EXCHANGE_CMDS_PER_S,
                    help=f"part 2: the exchange's pipelined commands/s (default {EXCHANGE_CMDS_PER_S:,}, "
                    "docs/performance.md)")
    ap.add_argument("--live-duration", type=float, help="part 4: seconds of load (default 10; --quick 2)")
    ap.add_argument("--timeout", type=float, help="longest wait for a node to hold everything (default 300 s; "
                    "--quick 60 s)")
    ap.add_argument("--no-redis", action="store_true", help="leave Redis out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, help=f"where the reports go (default {DEFAULT_OUT}/ under the current "
                    "directory, which git ignores)")
    ap.add_argument("--json", action="store_true",
                    help="print the figures as one JSON object (headline keys first) instead of the Markdown report")
    args = ap.parse_args(argv)
    out_dir: Path = args.out_dir if args.out_dir is not None else Path.cwd() / DEFAULT_OUT
    q = args.quick
    args.trades = args.trades or (3_000 if q else 25_000)
    args.repeat = args.repeat or (1 if q else 3)
    args.live_duration = args.live_duration or (2.0 if q else 10.0)
    args.timeout = args.timeout or (60.0 if q else 300.0)
    args.live_commands = int(max(20_000, 40_000 * args.live_duration))
    args.batch_sizes = [int(b) for b in args.batches.split(",")]
    args.parts_set = {int(p) for p in args.parts.split(",")}
    parts: set[int] = args.parts_set
    command = shlex.join(["python", "perf/bench_persistence.py", *(sys.argv[1:] if argv is None else argv)])
    res: dict[str, Any] = {"command": command, "generated": datetime.now(UTC).isoformat(timespec="seconds"),
                           "git": git_info(), **machine_info(),
                           "args": {k: v for k, v in vars(args).items()
                                    if k not in ("out_dir", "json", "parts_set", "batch_sizes")}}
    t0 = time.perf_counter()
    cpu_stop = _cpu_total()
    with tempfile.TemporaryDirectory(prefix="exfab-bench-persistence-") as d:
        tmp = Path(d)
        skip = "--no-redis" if args.no_redis else None if parts & {1, 2, 3} else "not needed by these parts"
        redis_srv = RedisBench(tmp / "redis", skip)
        if redis_srv.why:
            res["redis_skipped"] = redis_srv.why
            if skip is None:
                _say(f"Redis left out: {redis_srv.why}")
        try:
            path = _topology(tmp / "exchange")
            topo = load(path)
            warm_up()
            with _node_logs(tmp / "logs" / "inprocess.log"):
                _say(f"building a matcher stream of {args.trades:,} trades (two real matchers in-process)...")
                ms, matchers = make_messages(topo, args.trades, args.seed)
                for m in matchers:  # their journals are part 3's input; the matcher processes replay them
                    m.journal.close()
                    m.publog.close()
                del matchers
                res["stream"] = {"commands": ms.commands, "trades": ms.trades, "exec_reports": ms.exec_reports,
                                 "messages": len(ms.msgs), "all_messages": ms.all_messages,
                                 "msgs_per_cmd": len(ms.msgs) / ms.commands, "turns": len(ms.turns),
                                 "build_s": ms.build_s}
                _say(f"   {ms.commands:,} commands -> {ms.trades:,} trades, {len(ms.msgs):,} X/T messages "
                     f"({ms.exec_reports:,} execution reports) in {ms.build_s:.1f} s")
                gc.collect()
                gc.freeze()  # the stream is this process's, not a node's: out of the collector's sight
                try:
                    stores = part_stores(args, ms, topo.timezone, tmp, redis_srv) if 1 in parts else None
                    if stores is not None:
                        res["stores"] = stores
                    if 2 in parts:
                        res["node"] = part_node(args, topo, ms, stores, tmp, redis_srv)
                finally:
                    gc.unfreeze()
            if parts & {3, 4}:
                res["processes"] = part_processes(args, path, topo, ms, redis_srv, tmp)
        finally:
            redis_srv.stop()
    res["total_s"] = time.perf_counter() - t0
    res["cpu"] = cpu_stop()
    res.setdefault("cpu", {}).setdefault("others_cores", 0.0)
    res["loadavg_1m"] = round(os.getloadavg()[0], 2)
    res = {"headline": headline(res), **res}
    paths = write_report(res, out_dir, "bench_persistence-quick" if q else "bench_persistence")
    _say(f"done in {res['total_s']:.0f} s: {paths['md']}")
    if args.json:
        print(json.dumps({**res["headline"], **res}, indent=1, allow_nan=False))
    else:
        print(paths["md"].read_text())
    return res


if __name__ == "__main__":
    main()
