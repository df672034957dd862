"""The ticker node: real-time prices for everyone, from every shard's trade and book streams.

One asyncio loop does everything, in this order of priority:

- **ingest**: drain the SUB socket connected to every matcher's PUB (topics
  ``T``, ``B`` and ``H``), up to ``MAX_TURN`` ZeroMQ messages a turn, and apply
  each topic's trades and book changes in their ``tseq`` order to a
  :class:`~fabric.feed.MarketFeed`;
- **publish**: at the end of the turn, take what changed (per symbol at most one
  quote, one depth and one bars object) and send it on the ticker's PUB, to the
  web hub (which batches it for the WebSocket clients), and to the history writer;
- **recover**: a topic whose ``tseq`` skips, or which a heartbeat shows behind
  (heartbeats name every topic's last ``tseq``), holds its shard: the shard's
  new messages wait while the missing ``seq`` range is replayed from the
  matcher's recovery socket, then they are applied in order.  At start every
  shard is replayed from ``seq`` 1, so a late or restarted ticker rebuilds the
  whole day;
- **serve**: snapshot requests on the snapshot ROUTER (the Clone pattern); the
  HTTP port (the live page, ``/history``, ``/snapshot``, ``/stats`` and the
  WebSocket ``/ws``) is :class:`~nodes.webhub.WebHub`'s, which gets each turn's
  objects and fans them out to the browsers.

The history store (SQLite or InfluxDB) is written by its own thread
(:class:`~fabric.history.HistoryWriter`), so a slow or absent database never
slows the loop.  ``docs/market-data.md`` is the reference of everything served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import zmq
import zmq.asyncio

from fabric.feed import HEARTBEAT_TOPIC, MarketFeed, feed_topic
from fabric.history import (
    BarRecord,
    HistoryStore,
    HistoryWriter,
    TickRecord,
    aggregate,
    interval_ns,
    open_history,
)
from fabric.marketstate import INTERVALS, Kind
from fabric.protocol import (
    BOOK,
    HEARTBEAT,
    TRADE,
    BookLevel,
    PubHeartbeat,
    ReplayReply,
    ReplayRequest,
    SnapshotReply,
    SnapshotRequest,
    Trade,
    decode_internal,
    decode_pub,
    encode,
    iter_pub_typed,
)
from nodes.webhub import HEARTBEAT_S, WebHub
from topology.load import load
from topology.model import Topology
from topology.primary import resolver

log = logging.getLogger("exfab.ticker")

MAX_TURN: Final = 4096  # ZeroMQ messages applied per turn before publishing (a message may be a bundle)
REQUEST_TIMEOUT_S: Final = 2.0  # a matcher's answer to a replay or snapshot request
RETRY_S: Final = 1.0  # between attempts to reach a matcher that did not answer
PUB_HWM: Final = 10_000  # messages queued per feed subscriber before ZeroMQ drops (docs/market-data.md, 5)

_msgpack = msgspec.msgpack.Encoder()
_unpack = msgspec.msgpack.Decoder()
_KINDS: Final[dict[str, Kind]] = {"T": "trade", "B": "book"}  # heartbeat topic keys -> MarketState kinds


# ==========================================================================
# The matchers' streams
# ==========================================================================


@dataclass
class ShardLink:
    """What the ticker knows of one shard's stream.

    Attributes
    ----------
    high
        The highest ``seq`` seen from the shard (a heartbeat below it: the shard started over).
    floor
        Nothing at or below this ``seq`` can be missing (the start of day was replayed up to it).
    topic_seq
        Per (kind, symbol), the ``seq`` of the topic's last message applied: a gap lies after it.
    syncing
        A replay is under way: new messages are held until it is done.
    held
        Messages received while syncing, in arrival order.
    """

    no: int
    name: str
    symbols: list[str]
    recovery_addr: str
    high: int = 0
    floor: int = 0
    topic_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    syncing: bool = False
    synced_once: bool = False
    held: list[Any] = field(default_factory=list)
    sock: zmq.asyncio.Socket | None = None
    replays: int = 0
    unrecoverable: int = 0  # messages the matcher no longer held when asked


class Ticker:
    """The ticker node of a topology.

    Parameters
    ----------
    topo
        The topology; its ``[ticker]`` table names the ports.
    history
        The history store; default: the one the topology's ``[stores] history`` names.
    """

    def __init__(self, topo: Topology, history: HistoryStore | None = None) -> None:
        if topo.ticker is None:
            raise ValueError("the topology has no [ticker] table")
        self.topo = topo
        self.conf = topo.ticker
        instruments = [i for s in topo.shards for i in topo.instruments_of(s)]
        self.instruments = {i.symbol: i for i in instruments}
        self.feed = MarketFeed(instruments)
        self._tseqs = self.feed.state.tseq  # (kind, symbol) -> last tseq applied: read on every message
        primaries = [resolver(topo).primary(no) for no in range(len(topo.shards))]
        self.links = [ShardLink(no, s.name, list(s.symbols), primaries[no].recovery)
                      for no, s in enumerate(topo.shards)]
        self._pubs = [p.pub for p in primaries]
        self.store = history if history is not None else _open_store(topo)
        self.writer = HistoryWriter(self.store)
        self.ctx = zmq.asyncio.Context()
        self.web = WebHub(topo.name, self.instruments, self.feed, stats=self.stats_view, history=self.history)
        self._pub: zmq.asyncio.Socket | None = None  # the feed's PUB, bound by run()
        self._pub_raw: tuple[zmq.asyncio.Socket, zmq.Socket[bytes]] | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = {"messages": 0, "trades": 0, "duplicates": 0, "gaps": 0, "turns": 0, "published": 0}

    # ------------------------------------------------------------------ ingest

    def _check(self, link: ShardLink, msg: Any) -> tuple[int, int] | None:
        """Apply one live message of ``link``; return the ``seq`` range to replay first when it shows a gap.

        Trades and book changes apply in their topic's order (``tseq``): the matcher publishes a batch
        topic by topic, so across topics ``seq`` arrives out of order, and within a topic never.  A
        topic's lost messages lie between the ``seq`` of its last message applied and the new one's.
        A heartbeat names every topic's last ``tseq``: a topic behind it lost its last messages.
        """
        t = type(msg)
        if t is Trade or t is BookLevel:
            kind: Kind = "trade" if t is Trade else "book"
            sym = msg.symbol
            last = self._tseqs.get((kind, sym), 0)
            if msg.tseq <= last:
                self.stats["duplicates"] += 1
                return None
            if msg.tseq != last + 1:
                self.stats["gaps"] += 1
                first = max(link.topic_seq.get((kind, sym), 0), link.floor) + 1
                log.warning("shard %s: %s %s tseq %d after %d; replaying seq %d..%d", link.name, sym, kind,
                            msg.tseq, last, first, msg.seq - 1)
                return first, msg.seq - 1
            if t is Trade:
                self.feed.trade(msg)
            else:
                self.feed.level(msg)
            link.topic_seq[(kind, sym)] = msg.seq
            if msg.seq > link.high:
                link.high = msg.seq
        elif t is PubHeartbeat:
            if msg.seq < link.high:
                log.warning("shard %s: heartbeat at seq %d, below the %d already seen: the shard started over with "
                            "a new journal; rebuilding its symbols", link.name, msg.seq, link.high)
                self.feed.reset(link.symbols)
                link.topic_seq.clear()
                link.high = link.floor = 0
                return 1, msg.seq
            link.high = msg.seq
            first = 0
            state = self.feed.state
            for key, n in msg.tseqs.items():
                k = _KINDS.get(key[:1])
                if k is not None and n > state.last_tseq(key[1:], k):
                    f = max(link.topic_seq.get((k, key[1:]), 0), link.floor) + 1
                    first = f if not first else min(first, f)
            if first:
                self.stats["gaps"] += 1
                log.warning("shard %s: heartbeat at seq %d shows lost messages; replaying seq %d..%d", link.name,
                            msg.seq, first, msg.seq)
                return first, msg.seq
        return None

    def _hold(self, link: ShardLink, msg: Any, gap: tuple[int, int]) -> None:
        # Hold the shard's messages from ``msg`` on while ``gap`` is replayed.
        link.syncing = True
        if type(msg) is not PubHeartbeat:
            link.held.append(msg)
        self._spawn(self._sync(link, *gap))

    def ingest(self, frames: list[list[bytes]]) -> None:
        """Apply a drained batch of ``[topic, body]`` messages from the matchers (bad ones are logged, skipped)."""
        links = self.links
        n = len(links)
        for topic, body in frames:
            try:
                msgs = iter_pub_typed(body)
            except Exception as e:
                log.error("undecodable message on %r: %s", topic[:40], e)
                continue
            self.stats["messages"] += len(msgs)
            for msg in msgs:
                no = msg.shard  # type: ignore[union-attr]  # iter_pub_typed expands bundles
                if 0 <= no < n:
                    link = links[no]
                    if link.syncing:
                        link.held.append(msg)
                    else:
                        gap = self._check(link, msg)
                        if gap is not None:
                            self._hold(link, msg, gap)

    def _apply_replayed(self, link: ShardLink, msg: Any) -> bool:
        # A replayed message applies when it is its topic's next one; others are duplicates (or belong to a
        # gap of their own, which that topic's next live message or heartbeat shows).
        t = type(msg)
        if t is not Trade and t is not BookLevel:
            return False
        kind: Kind = "trade" if t is Trade else "book"
        if msg.tseq != self.feed.state.last_tseq(msg.symbol, kind) + 1:
            return False
        self.feed.apply(msg)
        link.topic_seq[(kind, msg.symbol)] = msg.seq
        return True

    async def _sync(self, link: ShardLink, first: int, last: int) -> None:
        # Replay first..last into the feed, then apply what was held meanwhile; again on a new gap.
        try:
            while True:
                if last >= first:
                    await self._replay(link, first, last)
                link.high = max(link.high, last)
                pending, link.held = link.held, []
                gap = None
                for i, msg in enumerate(pending):
                    gap = self._check(link, msg)
                    if gap is not None:
                        link.held = pending[i + (type(msg) is PubHeartbeat):] + link.held
                        break
                if gap is None:
                    break
                first, last = gap
        finally:
            link.syncing = False
        self.publish_turn()

    async def _replay(self, link: ShardLink, first: int, last: int) -> None:
        # Replay first..last from the matcher; when it no longer holds them, take its books from a snapshot.
        link.replays += 1
        while not self._stop.is_set():
            try:
                req = ReplayRequest(shard=link.no, first=first, last=last)
                replies = await self._ask(link, encode(req), many=True)
                break
            except TimeoutError:
                log.warning("shard %s: no answer to a replay of seq %d..%d from %s; retrying", link.name, first, last,
                            link.recovery_addr)
                await asyncio.sleep(RETRY_S)
        else:
            return
        applied = 0
        for rep in replies:
            if not isinstance(rep, ReplayReply):
                log.error("shard %s: unexpected answer to a replay: %r", link.name, rep)
                continue
            if rep.reason:
                link.unrecoverable += last - first + 1
                log.error("shard %s: the matcher no longer holds seq %d..%d (%s); taking its books from a snapshot: "
                          "trades in that range are missing from volume, bars and history", link.name, first, last,
                          rep.text)
                await self._from_snapshot(link)
                return
            for body in rep.msgs:
                if self._apply_replayed(link, decode_pub(body)):
                    applied += 1
        log.info("shard %s: replayed seq %d..%d (%d trades and book changes applied)", link.name, first, last,
                 applied)

    async def _from_snapshot(self, link: ShardLink) -> None:
        while not self._stop.is_set():
            try:
                (snap,) = await self._ask(link, encode(SnapshotRequest(shard=link.no)), many=False)
                break
            except TimeoutError:
                await asyncio.sleep(RETRY_S)
        else:
            return
        if isinstance(snap, SnapshotReply):
            for book in snap.books:
                self.feed.apply_snapshot(book)
            link.floor = link.high = max(link.high, snap.seq)

    async def _ask(self, link: ShardLink, body: bytes, *, many: bool) -> list[Any]:
        """Send one request to the shard's recovery socket; return its answer(s); raise TimeoutError.

        A socket whose request timed out is closed, so a late answer is never taken for the next one's.
        """
        if link.sock is None:
            link.sock = self.ctx.socket(zmq.DEALER)
            link.sock.setsockopt(zmq.LINGER, 0)
            link.sock.connect(link.recovery_addr)
        sock = link.sock
        out: list[Any] = []
        try:
            await sock.send(body)
            while True:
                frames = await asyncio.wait_for(sock.recv_multipart(), REQUEST_TIMEOUT_S)
                msg = decode_internal(frames[-1])
                out.append(msg)
                if not many or not isinstance(msg, ReplayReply) or msg.done:
                    return out
        except TimeoutError:
            sock.close(0)
            link.sock = None
            raise TimeoutError from None

    async def _bootstrap(self, link: ShardLink) -> None:
        # Start of day for one shard: everything from seq 1 to its current seq, then the live stream.
        link.syncing = True
        while not self._stop.is_set():
            try:
                (snap,) = await self._ask(link, encode(SnapshotRequest(shard=link.no)), many=False)
            except TimeoutError:
                if not link.synced_once:
                    log.warning("shard %s: matcher at %s does not answer; retrying", link.name, link.recovery_addr)
                    link.synced_once = True  # READY does not wait for it
                await asyncio.sleep(RETRY_S)
                continue
            if isinstance(snap, SnapshotReply):
                break
            log.error("shard %s: unexpected answer to a snapshot request: %r", link.name, snap)
            await asyncio.sleep(RETRY_S)
        else:
            return
        t0 = time.monotonic()
        link.floor = snap.seq  # after the replay of 1..seq below, nothing before it can be missing
        await self._sync(link, 1, snap.seq)
        link.synced_once = True
        log.info("shard %s: rebuilt from seq 1..%d in %.2f s", link.name, snap.seq, time.monotonic() - t0)

    # ----------------------------------------------------------------- publish

    def publish_turn(self) -> None:
        """Publish what changed since the last turn: feed, WebSocket clients, history."""
        if not self.feed.dirty:
            return
        turn = self.feed.take()
        send = self._feed_socket().send_multipart
        for kind, sym, obj in turn.messages:
            send((feed_topic(kind, sym), _msgpack.encode(obj)), zmq.NOBLOCK)
        self.web.publish(turn.messages)
        self.stats["published"] += len(turn.messages)
        self.stats["trades"] += len(turn.trades)
        if turn.trades:
            self.writer.add_ticks([TickRecord.from_tape(sym, t) for sym, t in turn.trades])
            self.writer.add_bars([BarRecord.from_bar(sym, iv, b) for sym, iv, b in turn.bars])

    def _feed_socket(self) -> zmq.Socket[bytes]:
        # The feed's PUB as a plain (shadow) socket: a send on pyzmq's asyncio socket makes a future each time, about
        # as costly as the send itself, and a NOBLOCK send on a PUB never waits (past its HWM it drops).
        pub = self._pub
        if pub is None:
            raise RuntimeError("the feed's PUB socket is not bound: publish from within run()")
        if self._pub_raw is None or self._pub_raw[0] is not pub:
            self._pub_raw = (pub, zmq.Socket.shadow(pub.underlying))
        return self._pub_raw[1]

    def stats_view(self) -> dict[str, Any]:
        """Return the ticker's counters as ``GET /stats`` shows them (the web hub adds the WebSocket's).

        The counters of :attr:`stats`, the history points waiting to be written, and per shard the last ``seq``
        seen, whether a replay is under way, the replays, and the messages the matcher could no longer replay.
        """
        return {**self.stats, "history_pending": self.writer.pending(),
                "shards": {ln.name: {"seen": ln.high, "syncing": ln.syncing, "replays": ln.replays,
                                     "unrecoverable": ln.unrecoverable} for ln in self.links}}

    # ---------------------------------------------------------------- snapshot

    def snapshot_reply(self, body: bytes) -> dict[str, Any]:
        """Answer one snapshot request body (docs/market-data.md, section 3): a ``snapshot`` or an ``error``."""
        try:
            req = _unpack.decode(body)
            if not isinstance(req, dict) or req.get("t") != "snapshot_request":
                raise ValueError("expected a map with t = snapshot_request")
            symbols = req.get("symbols")
            if symbols is not None and (not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols)):
                raise ValueError("symbols must be a list of strings or null")
        except Exception as e:
            return {"t": "error", "v": 1, "reason": "malformed", "text": str(e)[:200]}
        known = self.feed.state.symbols
        names = sorted(known) if symbols is None else symbols
        ts = time.time_ns()
        return {"t": "snapshot", "v": 1, "ts": ts, "ts_ns": str(ts),
                "symbols": {s: self.feed.snapshot(s) for s in names if s in known},
                "unknown": [s for s in names if s not in known]}

    async def _serve_snapshots(self, sock: zmq.asyncio.Socket) -> None:
        # A request is [peer identity (added by the ROUTER), envelope frames..., body]: the answer goes back with
        # the same envelope, so a REQ peer (whose envelope is one empty delimiter frame) gets its answer as well
        # as a DEALER sending the body alone.
        while True:
            frames = await sock.recv_multipart()
            if len(frames) < 2:
                continue
            await sock.send_multipart((*frames[:-1], _msgpack.encode(self.snapshot_reply(frames[-1]))))

    # -------------------------------------------------------------------- loop

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", exc_info=task.exception())

    async def _ingest(self, sub: zmq.asyncio.Socket) -> None:
        raw: zmq.Socket[bytes] = zmq.Socket.shadow(sub.underlying)
        recv = raw.recv_multipart
        while True:
            await sub.poll(timeout=None)
            frames: list[list[bytes]] = []
            while len(frames) < MAX_TURN:
                try:
                    frames.append(recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
            if frames:
                self.stats["turns"] += 1
                self.ingest(frames)
                self.publish_turn()
            await asyncio.sleep(0)  # let the WebSocket writers and requests run between turns

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self.publish_turn()
            hb = self.feed.heartbeat()
            self._feed_socket().send_multipart((HEARTBEAT_TOPIC, _msgpack.encode(hb)), zmq.NOBLOCK)
            self.web.heartbeat(hb)

    def stop(self, *_: object) -> None:
        """Ask the node to stop (also on SIGINT/SIGTERM)."""
        self._stop.set()

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Bind, rebuild the day from the matchers, serve until :meth:`stop`."""
        ctx = self.ctx
        pub = self._pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, PUB_HWM)
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind(self.conf.pub.bind)
        snap = ctx.socket(zmq.ROUTER)
        snap.setsockopt(zmq.LINGER, 0)
        snap.setsockopt(zmq.MAXMSGSIZE, 1 << 16)
        snap.bind(self.conf.snapshot.bind)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)  # never drop here: the matcher's own HWM bounds what waits for us
        sub.setsockopt(zmq.LINGER, 0)
        for prefix in (TRADE, BOOK, HEARTBEAT):
            sub.setsockopt(zmq.SUBSCRIBE, prefix)
        for addr in self._pubs:
            sub.connect(addr)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        host = "127.0.0.1" if self.conf.host in ("127.0.0.1", "localhost") else (
            "::1" if self.conf.host == "::1" else "")
        try:
            await asyncio.sleep(0.2)  # let the subscriptions reach the matchers before asking for their state
            for link in self.links:
                self._spawn(self._bootstrap(link))
            deadline = time.monotonic() + 60
            while not all(ln.synced_once for ln in self.links) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self.publish_turn()
            await self.web.serve(host or None, self.conf.http_port)
            for coro in (self._ingest(sub), self._serve_snapshots(snap), self._heartbeat()):
                self._spawn(coro)
            log.info("ticker: %d shards, %d symbols; feed %s, snapshots %s, page %s", len(self.links),
                     len(self.instruments), self.conf.pub.bind, self.conf.snapshot.bind, self.conf.http_url)
            if ready is not None:
                ready()
            await self._stop.wait()
        finally:
            await self.web.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for s in (pub, snap, sub, *(ln.sock for ln in self.links if ln.sock is not None)):
                s.close(0)
            ctx.term()
            unwritten = self.writer.pending()
            if not self.writer.close(10.0):
                log.error("history: %d points not written (the store is down); the matchers' journals still hold "
                          "their trades: a ticker started later rebuilds and writes them", unwritten)
            self.store.close()
            log.info("ticker stopped: %s", self.stats)

    # ------------------------------------------------------------------ history

    def history(self, symbol: str, interval: str, start: int, end: int) -> list[dict[str, Any]]:
        """Return the bars of ``symbol`` with ``start <= bar.start < end``: the store's, overlaid with memory's.

        Raises
        ------
        KeyError
            Unknown symbol.
        ValueError
            Unknown interval.
        """
        if symbol not in self.feed.state.symbols:
            raise KeyError(symbol)
        step = interval_ns(interval)
        base = interval if interval in INTERVALS else "1m"
        stored = {b.start: b for b in self.store.bars(symbol, base, start - start % interval_ns(base), end)}
        series = self.feed.state.symbols[symbol].bars[base]
        for b in series.bars():
            if start - step < b.start < end:
                stored[b.start] = BarRecord(symbol, base, b.start, b.open, b.high, b.low, b.close, b.volume, b.trades)
        bars = [stored[k] for k in sorted(stored)]
        if base != interval:
            bars = aggregate(bars, interval)
        return [b.to_json() for b in bars if start <= b.start < end]


def _open_store(topo: Topology) -> HistoryStore:
    kind = topo.stores.history
    if kind == "influxdb":
        if topo.influxdb is None:
            raise ValueError("[stores] history = \"influxdb\" needs an [influxdb] table")
        return open_history("influxdb", url=topo.influxdb.url, database=topo.influxdb.database)
    path = topo.sqlite_path("history")
    path.parent.mkdir(parents=True, exist_ok=True)
    return open_history("sqlite", sqlite_path=path)


def main(argv: list[str] | None = None) -> int:
    """Run the ticker: ``python -m nodes.ticker --topology FILE [--id ticker]``."""
    ap = argparse.ArgumentParser(prog="exfab node ticker", description="Run the ticker node of a topology.")
    ap.add_argument("--topology", required=True, metavar="FILE")
    ap.add_argument("--id", default="ticker", metavar="NAME", help="its name in the topology (always ticker)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ticker %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    ticker = Ticker(load(args.topology))
    asyncio.run(ticker.run(ready=lambda: print("READY ticker ticker", flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
