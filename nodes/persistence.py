"""The persistence node: the books of record, written from every shard's stream.

It follows each shard's execution reports (``X<shard>``) and trades
(``T<symbol>``) with the :class:`~fabric.follow.Follower` the ticker uses, so
each message arrives once and in order, and keeps:

- in the **order store** (SQLite, the default, or Cassandra): every order with
  its whole life and every trade (``fabric/records.py``, ``fabric/orderstore.py``);
- in the **recent state** (the node's memory, the default, or Redis): each
  order's status, each broker's open orders, each symbol's last trades and last
  price (``fabric/recent.py``).

**Batches.** What arrives is applied to the orders it changes
(:class:`~fabric.records.OrderBook`) and gathered; a batch is written when it
holds ``batch`` messages or ``interval`` seconds after its first, by a thread,
so the loop goes on taking messages while a batch is written.

**Exactly once.** A batch carries, with its rows, where each topic stands
(:class:`~fabric.records.Position`), written in the same transaction (SQLite)
or after its rows (Cassandra).  A restarted node reads those positions and the
open orders, and asks the matchers to replay what came after: rows keyed by the
message's ``(shard, seq)`` are written again unchanged, and an order only moves
forward.  The recent state is written after the order store holds a batch (by
a thread of its own, so the next batch goes to the order store meanwhile); a
recent state that lost its data (Redis restarted empty) is rebuilt from the
order store.

**A store that refuses writes** (locked, read-only, down): the batch is kept and
written again every second; the positions stay where the store has them; the
node takes messages until a batch is full, then stops reading (ZeroMQ queues
what it does not read, the matchers drop what is past that queue and replay it
later); the log says what happens.  The matchers and brokers never wait for
the node.  The same pause, for one batch's write, is how a node that is behind
catches up without holding more than a batch.

**Registry.** With ``[zookeeper]`` in the topology the node registers
(``topology/registry.py``): state ``catching_up`` until every shard is synced,
then ``running``, with its counters (``written``, ``pending``, ``alert``) every
:data:`REPORT_S` seconds, for ``exfab status``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import zmq
import zmq.asyncio

from fabric.follow import Follower, ShardLink
from fabric.orderstore import OrderStore, StoreError
from fabric.protocol import EXEC, TRADE, Trade, exec_topic, trade_topic
from fabric.recent import TAPE, RecentState
from fabric.records import Batch, OrderBook, trading_day
from topology.keys import node_keyring, warn_if_open
from topology.load import load
from topology.model import PERSISTENCE, Topology
from topology.primary import shard_sources
from topology.registry import Registration
from topology.stores import open_order_store, open_recent

log = logging.getLogger("exfab.persistence")

BATCH: Final = 5000  # messages per written batch (at most this and one turn's more: reading pauses meanwhile)
INTERVAL_S: Final = 0.05  # a batch is written this long after its first message at the latest
RECENT_BEHIND: Final = 4  # batches the recent state may be behind the order store before the writer waits for it
RETRY_S: Final = 1.0  # between attempts to write to a store that refused
RCVHWM: Final = 100_000  # messages ZeroMQ queues for the node while it does not read (then the matchers drop)
REPORT_S: Final = 2.0  # between writes of the node's state and counters to the registry


class Persistence:
    """The persistence node of a topology.

    Parameters
    ----------
    topo
        The topology.
    store, recent
        The order store and the recent state; default: the ones the topology's ``[stores]`` names.
    batch, interval
        See :data:`BATCH`, :data:`INTERVAL_S`.
    name
        Its name in the registry.
    """

    def __init__(self, topo: Topology, store: OrderStore | None = None, recent: RecentState | None = None, *,
                 batch: int = BATCH, interval: float = INTERVAL_S, name: str = PERSISTENCE) -> None:
        self.topo = topo
        self.name = name
        self.store = store if store is not None else open_order_store(topo)
        self.recent = recent if recent is not None else open_recent(topo)
        self.batch, self.interval = batch, interval
        self.book = OrderBook(topo.timezone)
        self.ctx = zmq.asyncio.Context()
        topics = [[exec_topic(no), *(trade_topic(sym) for sym in s.symbols)] for no, s in enumerate(topo.shards)]
        sources, resolve = shard_sources(topo)
        self.follow = Follower(self.ctx, sources, topics, (EXEC, TRADE), self._deliver, turn=self._turn,
                               resolve=resolve,
                               rcvhwm=RCVHWM, keys=node_keyring(topo, f"{PERSISTENCE}:{name}"))
        warn_if_open(topo, f"{PERSISTENCE}:{name}", log)
        self._written: dict[tuple[int, bytes], int] = {}  # (shard, topic) -> tseq the store holds
        self._first = 0.0  # when the batch being gathered got its first message
        self._writing: asyncio.Task[None] | None = None
        self._failed: Batch | None = None  # a batch the store refused, written again until it takes it
        self._alert: str | None = None
        self._recent_stale = True  # rebuild the recent state from the order store before the next apply
        self._recent_pool = ThreadPoolExecutor(1, thread_name_prefix="recent")
        self._recent_q: deque[Future[None]] = deque()
        self._stop = asyncio.Event()
        self.stats = {"written": 0, "batches": 0, "trades": 0, "refused": 0, "recent_rebuilds": 0}

    @property
    def links(self) -> list[ShardLink]:
        """Every shard's stream, as the follower keeps it."""
        return self.follow.links

    # ------------------------------------------------------------------ start

    def resume(self) -> None:
        """Take where the store stands: each topic's position and the open orders (raises StoreError)."""
        known = {(no, t) for no, ln in enumerate(self.links) for t in ln.stream.topics}
        at = {}
        for p in self.store.positions():
            key = (p.shard, p.topic.encode())
            if key in known:
                at[key] = (p.tseq, p.seq)
        for no, link in enumerate(self.links):
            for topic in link.stream.topics:
                tseq, seq = at.get((no, topic), (0, 0))
                self.follow.start_at(no, topic, tseq, seq)
                self._written[(no, topic)] = tseq
        self.book.load(self.store.open_orders())
        stored = sum(t for t in self._written.values())
        log.info("%s: resuming after %d stored messages; %d open orders", self.store.name, stored,
                 len(self.book.rows))

    # ----------------------------------------------------------------- ingest

    def _deliver(self, link: ShardLink, msgs: list[Any]) -> None:
        book = self.book
        if not book.pending():
            self._first = time.monotonic()
        for m in msgs:
            if type(m) is Trade:
                book.trade(m)
            else:
                book.report(m)

    def _turn(self) -> None:
        n = self.book.pending()
        due = n >= self.batch or time.monotonic() - self._first >= self.interval
        if n and due and self._writing is None and self._failed is None:
            self._start_write()
        elif n >= self.batch and not self.follow.paused:
            # A batch is full while the last one is written (or refused): read no more until it is taken. What the
            # node does not read waits in ZeroMQ's queue to it, and past that the matchers drop it and replay it.
            self.follow.pause()

    def _take(self) -> Batch:
        # The batch gathered so far, with where each topic it moved now stands.
        book = self.book
        for no, link in enumerate(self.links):
            stream = link.stream
            for topic, t in stream.topics.items():
                tseq = t.next - 1 if t.next else 0
                if tseq != self._written.get((no, topic)):
                    book.position(no, topic.decode(), tseq, t.seq)
        return book.take()

    def _start_write(self) -> None:
        batch = self._failed if self._failed is not None else self._take()
        self._writing = asyncio.get_running_loop().create_task(self._write(batch))

    async def _write(self, batch: Batch) -> None:
        try:
            try:
                await asyncio.to_thread(self.store.write, batch)
            except StoreError as e:
                self._refused(batch, str(e))
                return
            if self._failed is not None:
                log.warning("%s: written again after %s: %d messages", self.store.name, self._alert or "a failure",
                            len(batch))
            self._failed, self._alert = None, None
            for p in batch.positions:
                self._written[(p.shard, p.topic.encode())] = p.tseq
            self.stats["written"] += len(batch)
            self.stats["trades"] += len(batch.trades)
            self.stats["batches"] += 1
            # The recent state on its own thread, in order, while the next batch goes to the order store; at most
            # RECENT_BEHIND batches wait for it.
            self._recent_q.append(self._recent_pool.submit(self._apply_recent, batch))
            while self._recent_q and self._recent_q[0].done():
                self._recent_q.popleft()
            if len(self._recent_q) > RECENT_BEHIND:
                await asyncio.wrap_future(self._recent_q.popleft())
        finally:
            self._writing = None
        if self.follow.paused:
            self.follow.resume()
        self._turn()

    def _refused(self, batch: Batch, text: str) -> None:
        self.stats["refused"] += 1
        if self._alert is None:
            log.error("%s refuses writes (%s): %d messages kept to write again every %.0f s; the store's positions "
                      "stay where they are", self.store.name, text, len(batch), RETRY_S)
        self._alert = text
        self._failed = batch
        asyncio.get_running_loop().call_later(RETRY_S, self._retry)

    def _retry(self) -> None:
        if self._writing is None and self._failed is not None and not self._stop.is_set():
            self._start_write()

    def _apply_recent(self, batch: Batch) -> None:
        # After the order store holds the batch: the recent state, rebuilt first when it lost what it had.
        recent = self.recent
        try:
            if self._recent_stale or recent.lost():
                self._rebuild_recent()
            else:
                recent.apply(batch)
        except StoreError as e:
            if not self._recent_stale:
                log.error("%s refuses writes (%s): it is rebuilt from the order store when it is back", recent.name, e)
            self._recent_stale = True

    def _rebuild_recent(self) -> None:
        recent = self.recent
        since = time.time_ns() - int(recent.finished_ttl * 1e9)
        day = trading_day(time.time_ns(), self.topo.timezone)
        orders = self.store.recent_orders(since)
        trades = [t for sym in self.topo.symbols for t in self.store.trades(sym, day)[-TAPE:]]
        recent.rebuild(orders, trades)
        self._recent_stale = False
        self.stats["recent_rebuilds"] += 1
        log.info("%s: rebuilt from %s: %d orders, %d trades", recent.name, self.store.name, len(orders), len(trades))

    # -------------------------------------------------------------------- loop

    def stats_view(self) -> dict[str, Any]:
        """Return the node's counters, and per shard the last ``seq`` seen and the replays."""
        return {**self.stats, "pending": self.book.pending(), "open_orders": len(self.book.rows),
                "messages": self.follow.messages, "alert": self._alert, "missing_starts": self.book.missing,
                "shards": {ln.name: {"seen": ln.high, "replays": ln.replays, "duplicates": ln.stream.duplicates,
                                     "gaps": ln.stream.gaps, "unrecoverable": ln.stream.skipped}
                           for ln in self.links}}

    def stop(self, *_: object) -> None:
        """Ask the node to stop (also on SIGINT/SIGTERM): what was taken is written first."""
        self._stop.set()

    async def _tick(self) -> None:
        # A batch that waits for no further message is written after `interval`.
        while True:
            await asyncio.sleep(self.interval)
            self._turn()

    def _report(self, reg: Registration) -> None:
        reg.update("running" if self.follow.synced else "catching_up", written=self.stats["written"],
                   pending=self.book.pending(), alert=self._alert)

    async def _reporting(self, reg: Registration) -> None:
        while True:
            self._report(reg)
            await asyncio.sleep(REPORT_S)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Resume from the store, catch up with the matchers, write until :meth:`stop`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        host = self.topo.persistence.host if self.topo.persistence is not None else "?"
        reg = Registration(self.topo, PERSISTENCE, self.name, host, state="catching_up")
        try:
            while not self._stop.is_set():
                try:
                    self.resume()
                    break
                except StoreError as e:
                    log.error("cannot read where the store stands (%s); trying again in %.0f s", e, RETRY_S)
                    await asyncio.sleep(RETRY_S)
            await asyncio.wrap_future(self._recent_pool.submit(self._apply_recent, Batch()))
            await self.follow.start()
            self.follow.spawn(self._tick())
            if reg.enabled:
                self.follow.spawn(self._reporting(reg))
            await self.follow.wait_synced(60)
            self._report(reg)
            gc.freeze()
            log.info("persistence: %d shards; orders %s, recent %s", len(self.links), self.store.name,
                     self.recent.name)
            if ready is not None:
                ready()
            await self._stop.wait()
        finally:
            await self.follow.close()
            await self._drain(10.0)
            self.ctx.term()
            self.store.close()
            self._recent_pool.shutdown(wait=True)
            self.recent.close()
            reg.close()
            log.info("persistence stopped: %s", self.stats_view())

    async def _drain(self, timeout: float) -> None:
        # Write what was taken before stopping; a store that refuses it loses nothing (the matchers replay it).
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._writing is not None:
                await asyncio.wait({self._writing}, timeout=max(0.0, deadline - time.monotonic()))
                continue
            if self._failed is None and not self.book.pending():
                return
            self._start_write()
        left = self.book.pending() + (len(self._failed) if self._failed is not None else 0)
        if left:
            log.error("stopping with %d messages not written (the store refuses them): a restarted node takes them "
                      "again from the matchers", left)


def main(argv: list[str] | None = None) -> int:
    """Run the persistence node: ``python -m nodes.persistence --topology FILE [--id persistence]``."""
    ap = argparse.ArgumentParser(prog="exfab node persistence", description="Run the persistence node of a topology.")
    ap.add_argument("--topology", required=True, metavar="FILE")
    ap.add_argument("--id", default="persistence", metavar="NAME", help="its name in the topology (always persistence)")
    ap.add_argument("--batch", type=int, default=BATCH, metavar="N",
                    help=f"messages per written batch at most (default {BATCH})")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s persistence %(levelname)s %(message)s",
                        stream=sys.stderr)
    topo = load(args.topology)
    if topo.persistence is None:
        ap.error("the topology has no [persistence] table")
    node = Persistence(topo, batch=args.batch, name=args.id)
    asyncio.run(node.run(ready=lambda: print("READY persistence persistence", flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
