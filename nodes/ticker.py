"""The ticker node: real-time prices for everyone, from every shard's trade and book streams.

One asyncio loop does everything, in this order of priority:

- **ingest**: drain the SUB socket connected to every matcher's PUB (topics
  ``T``, ``B`` and ``H``), up to ``MAX_TURN`` ZeroMQ messages a turn, and apply
  each topic's trades and book changes in their ``tseq`` order to a
  :class:`~fabric.feed.MarketFeed`;
- **publish**: at the end of the turn, take what changed (per symbol at most one
  quote, one depth and one bars object) and send it on the ticker's PUB, to the
  web hub (which batches it for the WebSocket clients), and to the history writer;
- **recover**: each shard's topics follow a :class:`~fabric.stream.ShardStream`
  (the subscriber the gateway uses too): a topic whose ``tseq`` skips, or which
  a heartbeat shows behind (heartbeats name every topic's last ``tseq``), asks
  for the missing ``seq`` range from the matcher's recovery socket, and its
  later messages wait until the replay fills the hole; the shard's other topics
  go on.  Every topic starts at ``tseq`` 1, so a late or restarted ticker
  replays the whole day from ``seq`` 1 and rebuilds it;
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
import gc
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
    book_topic,
    decode_internal,
    decode_pub,
    encode,
    iter_pub_typed,
    trade_topic,
)
from fabric.stream import ShardStream
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
    stream
        The shard's trade and book topics, each applied once in ``tseq`` order (``fabric.stream``): a topic
        that skips or that a heartbeat shows behind asks for a replay, and its later messages wait for it.
    high
        The highest ``seq`` seen from the shard (a heartbeat below it: the shard started over).
    topics
        Per symbol, its trade and book topic frames (the stream's keys).
    """

    no: int
    name: str
    symbols: list[str]
    recovery_addr: str
    stream: ShardStream[Trade | BookLevel]
    topics: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    high: int = 0
    recovering: bool = False  # a task is answering the stream's replays
    synced_once: bool = False
    sock: zmq.asyncio.Socket | None = None
    replays: int = 0
    unrecoverable: int = 0  # messages the matcher no longer held when asked

    def __post_init__(self) -> None:
        for sym in self.symbols:
            self.topics[sym] = trade_topic(sym), book_topic(sym)
            for topic in self.topics[sym]:
                self.stream.start(topic, 0, 0)  # from the first message of the day: a ticker rebuilds the day


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
        primaries = [resolver(topo).primary(no) for no in range(len(topo.shards))]
        self.links = [ShardLink(no, s.name, list(s.symbols), primaries[no].recovery, ShardStream(no))
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
        self.stats = {"messages": 0, "trades": 0, "turns": 0, "published": 0}

    # ------------------------------------------------------------------ ingest

    def _apply(self, msgs: list[Trade | BookLevel]) -> None:
        # Trades and book changes of one topic, in its order (the stream put them so).
        feed = self.feed
        for m in msgs:
            if type(m) is Trade:
                feed.trade(m)
            else:
                feed.level(m)  # type: ignore[arg-type]

    def ingest(self, frames: list[list[bytes]]) -> None:
        """Apply a drained batch of ``[topic, body]`` messages from the matchers (bad ones are logged, skipped)."""
        links = self.links
        n = len(links)
        now = time.monotonic()
        for topic, body in frames:
            try:
                msgs = iter_pub_typed(body)
            except Exception as e:
                log.error("undecodable message on %r: %s", topic[:40], e)
                continue
            self.stats["messages"] += len(msgs)
            for msg in msgs:
                no = msg.shard  # type: ignore[union-attr]  # iter_pub_typed expands bundles
                if not 0 <= no < n:
                    continue
                link = links[no]
                t = type(msg)
                if t is Trade or t is BookLevel:
                    topics = link.topics.get(msg.symbol)  # type: ignore[union-attr]
                    if topics is None:
                        continue  # a symbol the topology does not give this shard
                    self._apply(link.stream.offer(topics[t is BookLevel], msg.tseq, msg.seq, msg,  # type: ignore
                                                  in_order=True, now=now))
                    if msg.seq > link.high:  # type: ignore[union-attr]
                        link.high = msg.seq  # type: ignore[union-attr]
                elif t is PubHeartbeat:
                    self._heartbeat_of(link, msg, now)  # type: ignore[arg-type]
                if link.stream.replay is not None and not link.recovering:
                    self._spawn(self._recover(link))

    def _heartbeat_of(self, link: ShardLink, hb: PubHeartbeat, now: float) -> None:
        if hb.seq < link.high:
            log.warning("shard %s: heartbeat at seq %d, below the %d already seen: the shard started over with "
                        "a new journal; rebuilding its symbols", link.name, hb.seq, link.high)
            self.feed.reset(link.symbols)
            link.stream.restart()
        link.high = hb.seq
        link.stream.heartbeat(hb.seq, {(k + "\x00").encode(): v for k, v in hb.tseqs.items() if k[:1] in _KINDS}, now)

    async def _recover(self, link: ShardLink) -> None:
        # Ask for the replays the shard's stream needs until none is left; a range the matcher no longer holds
        # is taken from a snapshot of its books (the trades in it are lost to volume, bars and history).
        link.recovering = True
        stream = link.stream
        try:
            while stream.replay is not None and not self._stop.is_set():
                r = stream.due(time.monotonic())
                if r is None:
                    await asyncio.sleep(0.05)  # asked already: its answer, or its timeout, is on the way
                    continue
                link.replays += 1
                try:
                    replies = await self._ask(link, encode(ReplayRequest(shard=link.no, first=r.first, last=r.last)),
                                              many=True)
                except TimeoutError:
                    log.warning("shard %s: no answer to a replay of seq %d..%d from %s; asking again", link.name,
                                r.first, r.last, link.recovery_addr)
                    continue
                applied = 0
                for rep in replies:
                    if not isinstance(rep, ReplayReply):
                        log.error("shard %s: unexpected answer to a replay: %r", link.name, rep)
                        continue
                    if rep.reason:
                        link.unrecoverable += r.last - r.first + 1
                        log.error("shard %s: the matcher no longer holds seq %d..%d (%s); taking its books from a "
                                  "snapshot: trades in that range are missing from volume, bars and history",
                                  link.name, r.first, r.last, rep.text)
                        await self._from_snapshot(link)
                        break
                    msgs: list[Trade | BookLevel] = [m for m in map(decode_pub, rep.msgs)
                                                     if isinstance(m, Trade | BookLevel) and m.symbol in link.topics]
                    items = stream.replayed(((link.topics[m.symbol][type(m) is BookLevel], m.tseq, m.seq, m)
                                             for m in msgs), rep.last, rep.done, time.monotonic())
                    self._apply(items)
                    applied += len(items)
                log.info("shard %s: replayed seq %d..%d (%d trades and book changes applied)", link.name, r.first,
                         r.last, applied)
                self.publish_turn()
        finally:
            link.recovering = False

    async def _from_snapshot(self, link: ShardLink) -> None:
        while not self._stop.is_set():
            try:
                (snap,) = await self._ask(link, encode(SnapshotRequest(shard=link.no)), many=False)
                break
            except TimeoutError:
                await asyncio.sleep(RETRY_S)
        else:
            return
        if not isinstance(snap, SnapshotReply):
            return
        link.stream.replay = None
        for book in snap.books:
            topics = link.topics.get(book.symbol)
            if topics is None:
                continue
            self.feed.apply_snapshot(book)
            self._apply(link.stream.jump(topics[0], book.trade_tseq, snap.seq))
            self._apply(link.stream.jump(topics[1], book.book_tseq, snap.seq))
        link.high = max(link.high, snap.seq)

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
        # Start of day for one shard: learn where its topics stand (a snapshot's counters), replay everything
        # before that from seq 1, then follow the live stream.
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
        counts = {}
        for book in snap.books:
            topics = link.topics.get(book.symbol)
            if topics is not None:
                counts[topics[0]], counts[topics[1]] = book.trade_tseq, book.book_tseq
        link.high = max(link.high, snap.seq)
        link.stream.heartbeat(snap.seq, counts, t0)  # the topics behind those counts ask for seq 1..snap.seq
        if link.stream.replay is not None and not link.recovering:
            await self._recover(link)
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
        return {**self.stats, "duplicates": sum(ln.stream.duplicates for ln in self.links),
                "gaps": sum(ln.stream.gaps for ln in self.links), "history_pending": self.writer.pending(),
                "shards": {ln.name: {"seen": ln.high, "syncing": ln.stream.replay is not None, "replays": ln.replays,
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
            gc.freeze()  # the rebuilt day and start-up's objects: out of the cycle collector's scans from now on
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
