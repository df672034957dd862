"""The ticker node: real-time prices for everyone, from every shard's trade and book streams.

One asyncio loop does everything, in this order of priority:

- **ingest**: drain the SUB socket connected to every matcher's PUB (topics
  ``T``, ``B`` and ``H``), up to ``MAX_TURN`` ZeroMQ messages a turn, and apply
  each topic's trades and book changes in their ``tseq`` order to a
  :class:`~fabric.feed.MarketFeed`;
- **publish**: at the end of the turn, take what changed (per symbol at most one
  quote, one depth and one bars object) and send it on the ticker's PUB, to the
  WebSocket clients' mailboxes, and to the history writer;
- **recover**: a topic whose ``tseq`` skips, or which a heartbeat shows behind
  (heartbeats name every topic's last ``tseq``), holds its shard: the shard's
  new messages wait while the missing ``seq`` range is replayed from the
  matcher's recovery socket, then they are applied in order.  At start every
  shard is replayed from ``seq`` 1, so a late or restarted ticker rebuilds the
  whole day;
- **serve**: snapshot requests on the snapshot ROUTER (the Clone pattern), and
  one HTTP port for the live page, ``/history``, ``/snapshot`` and the
  WebSocket (``/ws``).

The history store (SQLite or InfluxDB) is written by its own thread
(:class:`~fabric.history.HistoryWriter`), so a slow or absent database never
slows the loop.  ``docs/market-data.md`` is the reference of everything served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http
import logging
import mimetypes
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import msgspec
import zmq
import zmq.asyncio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from fabric.feed import HEARTBEAT_TOPIC, KINDS, MarketFeed, feed_topic
from fabric.history import (
    BarRecord,
    HistoryError,
    HistoryStore,
    HistoryWriter,
    TickRecord,
    aggregate,
    interval_ns,
    open_history,
)
from fabric.instruments import Instrument
from fabric.marketstate import INTERVALS, TAPE_LEN, Kind
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
from topology.load import load
from topology.model import Topology

log = logging.getLogger("exfab.ticker")

MAX_TURN: Final = 4096  # ZeroMQ messages applied per turn before publishing (a message may be a bundle)
HEARTBEAT_S: Final = 1.0  # feed and WebSocket heartbeat period
REQUEST_TIMEOUT_S: Final = 2.0  # a matcher's answer to a replay or snapshot request
RETRY_S: Final = 1.0  # between attempts to reach a matcher that did not answer
PUB_HWM: Final = 10_000  # messages queued per feed subscriber before ZeroMQ drops (docs/market-data.md, 5)
WEB_DIR: Final = Path(__file__).with_name("web")
DAY_NS: Final = 86_400 * 1_000_000_000

_json = msgspec.json.Encoder()
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
        self.links = [ShardLink(no, s.name, list(s.symbols), s.replicas[0].recovery.connect)
                      for no, s in enumerate(topo.shards)]
        self._pubs = [s.replicas[0].pub.connect for s in topo.shards]
        self.store = history if history is not None else _open_store(topo)
        self.writer = HistoryWriter(self.store)
        self.ctx = zmq.asyncio.Context()
        self.web = WebHub(self)
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
        send = self._pub.send_multipart
        self.web.changed({sym for _, sym, _ in turn.messages})
        for kind, sym, obj in turn.messages:
            send((feed_topic(kind, sym), _msgpack.encode(obj)), zmq.NOBLOCK)
            self.web.publish(kind, sym, obj)
        self.stats["published"] += len(turn.messages)
        self.stats["trades"] += len(turn.trades)
        if turn.trades:
            self.writer.add_ticks([TickRecord.from_tape(sym, t) for sym, t in turn.trades])
            self.writer.add_bars([BarRecord.from_bar(sym, iv, b) for sym, iv, b in turn.bars])

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
            self._pub.send_multipart((HEARTBEAT_TOPIC, _msgpack.encode(hb)), zmq.NOBLOCK)
            self.web.heartbeat(hb)

    def stop(self, *_: object) -> None:
        """Ask the node to stop (also on SIGINT/SIGTERM)."""
        self._stop.set()

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Bind, rebuild the day from the matchers, serve until :meth:`stop`."""
        ctx = self.ctx
        self._pub = ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, PUB_HWM)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(self.conf.pub.bind)
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
        server: Server | None = None
        try:
            await asyncio.sleep(0.2)  # let the subscriptions reach the matchers before asking for their state
            for link in self.links:
                self._spawn(self._bootstrap(link))
            deadline = time.monotonic() + 60
            while not all(ln.synced_once for ln in self.links) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self.publish_turn()
            server = await serve(self.web.handler, host or None, self.conf.http_port,
                                 process_request=self.web.http, max_size=1 << 16, compression=None)
            for coro in (self._ingest(sub), self._serve_snapshots(snap), self._heartbeat()):
                self._spawn(coro)
            log.info("ticker: %d shards, %d symbols; feed %s, snapshots %s, page %s", len(self.links),
                     len(self.instruments), self.conf.pub.bind, self.conf.snapshot.bind, self.conf.http_url)
            if ready is not None:
                ready()
            await self._stop.wait()
        finally:
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 3)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for s in (self._pub, snap, sub, *(ln.sock for ln in self.links if ln.sock is not None)):
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


# ==========================================================================
# Browsers: the WebSocket and the HTTP routes
# ==========================================================================


@dataclass(eq=False)
class WebClient:
    """One WebSocket connection: what it follows and its conflating mailbox."""

    ws: ServerConnection
    subs: dict[str, frozenset[str]] = field(default_factory=dict)  # symbol -> channels
    all_channels: frozenset[str] | None = None  # subscribed to every symbol with these channels
    box: dict[tuple[str, str], tuple[dict[str, Any], bytes | None]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    conflated: int = 0
    errors: int = 0

    def wants(self, kind: str, symbol: str) -> bool:
        chans = self.subs.get(symbol, self.all_channels)
        return chans is not None and kind in chans

    def post(self, key: tuple[str, str], obj: dict[str, Any], body: bytes | None) -> None:
        """Put an object in the mailbox, merging it with one of the same symbol and kind still waiting."""
        old = self.box.get(key)
        if old is not None and key[0] in KINDS:
            self.conflated += 1
            obj = _merge(key[0], old[0], obj)
            body = None
        self.box[key] = (obj, body)
        self.wake.set()


def _merge(kind: str, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    # A newer object for a slow client: depth replaces; a quote keeps the older one's prints; bars merge by start.
    if kind == "quote":
        merged = dict(new)
        merged["prints"] = (old["prints"] + new["prints"])[-TAPE_LEN:]
        return merged
    if kind == "bars":
        merged = dict(new)
        bars: dict[str, Any] = {}
        for iv in old["bars"].keys() | new["bars"].keys():
            by_start = {b["start"]: b for b in old["bars"].get(iv, [])}
            by_start.update((b["start"], b) for b in new["bars"].get(iv, []))
            bars[iv] = [by_start[k] for k in sorted(by_start)]
        merged["bars"] = bars
        return merged
    return new


class WebHub:
    """The WebSocket clients and the HTTP routes of the ticker's web port."""

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker
        self.clients: set[WebClient] = set()
        self.static = _load_static()
        self._error_no = 0
        self._snapshots: dict[str, tuple[dict[str, Any], bytes]] = {}

    # -------------------------------------------------------------- updates

    def publish(self, kind: str, symbol: str, obj: dict[str, Any]) -> None:
        """Hand one feed object to every client following it (encoded once, lazily)."""
        body: bytes | None = None
        key = (kind, symbol)
        for c in self.clients:
            if c.wants(kind, symbol):
                if body is None:
                    body = _json.encode(obj)
                c.post(key, obj, body)

    def heartbeat(self, hb: dict[str, Any]) -> None:
        """Send a heartbeat to every client."""
        body = _json.encode(hb)
        for c in self.clients:
            c.post(("heartbeat", ""), hb, body)

    def _error(self, c: WebClient, reason: str, text: str) -> None:
        self._error_no += 1
        c.errors += 1
        c.post(("error", str(self._error_no)), {"t": "error", "reason": reason, "text": text}, None)

    def _hello(self) -> dict[str, Any]:
        return {"t": "hello", "v": 1, "exchange": self.ticker.topo.name, "heartbeat_s": HEARTBEAT_S,
                "symbols": self.symbols()}

    def symbols(self) -> list[dict[str, Any]]:
        """The instruments, as the ``hello`` message and ``GET /symbols`` list them, sorted by symbol.

        Each is ``{symbol, ref_price, tick, lot, band_pct, band_low, band_high}``: decimal text, ``lot`` an
        integer; the band's limits are the lowest and highest limit prices the matcher accepts, the band
        rounded inwards to whole ticks by the instrument itself; the three band fields are null for an
        instrument without a band.
        """
        return [_instrument_json(i) for i in sorted(self.ticker.instruments.values(), key=lambda i: i.symbol)]

    def snapshot_obj(self, symbol: str) -> dict[str, Any]:
        """The WebSocket's ``snapshot`` of one symbol."""
        return {"t": "snapshot", "symbol": symbol, **self.ticker.feed.snapshot(symbol)}

    def _snapshot_for_client(self, symbol: str) -> tuple[dict[str, Any], bytes]:
        # A symbol's snapshot, built and encoded once until the symbol next changes: clients connecting
        # together (a page reloaded by many, a reconnect after a ticker restart) share it.
        hit = self._snapshots.get(symbol)
        if hit is None:
            obj = self.snapshot_obj(symbol)
            hit = self._snapshots[symbol] = (obj, _json.encode(obj))
        return hit

    def changed(self, symbols: set[str]) -> None:
        """Forget the cached snapshots of ``symbols`` (the ticker published something new of them)."""
        for sym in symbols:
            self._snapshots.pop(sym, None)

    # ------------------------------------------------------------ WebSocket

    async def handler(self, ws: ServerConnection) -> None:
        """Serve one WebSocket connection until it closes."""
        c = WebClient(ws)
        self.clients.add(c)
        writer = asyncio.get_running_loop().create_task(self._writer(c))
        try:
            c.post(("hello", ""), self._hello(), None)
            async for raw in ws:
                self._request(c, raw)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(c)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer

    async def _writer(self, c: WebClient) -> None:
        # Sends the mailbox; while a send waits on a slow client, newer objects merge into the mailbox.
        while True:
            await c.wake.wait()
            c.wake.clear()
            box, c.box = c.box, {}
            for obj, body in box.values():
                await c.ws.send(body if body is not None else _json.encode(obj), text=True)
                c.sent += 1

    def _request(self, c: WebClient, raw: str | bytes) -> None:
        try:
            req = msgspec.json.decode(raw)
        except msgspec.DecodeError as e:
            self._error(c, "malformed", f"not JSON: {e}")
            return
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            self._error(c, "malformed", 'a request is a JSON object with an "op"')
            return
        op = req["op"]
        if op == "ping":
            ts = time.time_ns()
            c.post(("pong", str(req.get("id"))), {"t": "pong", "id": req.get("id"), "ts": ts, "ts_ns": str(ts)}, None)
            return
        if op not in ("subscribe", "unsubscribe", "snapshot"):
            self._error(c, "unknown_op", f"unknown op {op!r}: subscribe, unsubscribe, snapshot or ping")
            return
        known = self.ticker.feed.state.symbols
        symbols = req.get("symbols", "*")
        every = symbols == "*" or symbols is None
        if not every:
            if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
                self._error(c, "malformed", 'symbols must be a list of symbol names or "*"')
                return
            unknown = [s for s in symbols if s not in known]
            if unknown:
                self._error(c, "unknown_symbol", f"unknown symbols: {', '.join(unknown[:20])}")
            symbols = [s for s in symbols if s in known]
        names = sorted(known) if every else symbols
        if op == "unsubscribe":
            if every:
                c.subs.clear()
                c.all_channels = None
            else:
                for s in names:
                    c.subs.pop(s, None)
                if c.all_channels is not None:  # unsubscribing some of "all": the rest stay followed
                    c.subs.update({s: c.all_channels for s in known if s not in names and s not in c.subs})
                    c.subs.update({s: frozenset() for s in names})
                    c.all_channels = None
            return
        if op == "subscribe":
            chans = req.get("channels", list(KINDS))
            if not isinstance(chans, list) or not all(isinstance(k, str) for k in chans):
                self._error(c, "malformed", "channels must be a list of quote, depth, bars")
                return
            bad = [k for k in chans if k not in KINDS]
            if bad:
                self._error(c, "unknown_channel", f"unknown channels: {', '.join(bad)}: quote, depth or bars")
                return
            if every:
                c.all_channels = frozenset(chans)
                c.subs.clear()
            else:
                c.subs.update({s: frozenset(chans) for s in names})
        for s in names:
            c.post(("snapshot", s), *self._snapshot_for_client(s))

    # ----------------------------------------------------------------- HTTP

    async def http(self, conn: ServerConnection, request: Request) -> Response | None:
        """Answer a plain HTTP request; ``None`` lets ``/ws`` go on to the WebSocket handshake."""
        url = urlsplit(request.path)
        path = url.path
        if path == "/ws":
            return None
        try:
            if path in ("/", "/index.html"):
                return _response(200, *self.static["index.html"])
            if path.startswith("/static/"):
                f = self.static.get(path[len("/static/"):])
                return _response(200, *f) if f is not None else _error_response(404, "not_found", path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if path == "/history":
                return await self._history(q)
            if path == "/snapshot":
                sym = q.get("symbol", "")
                if sym not in self.ticker.feed.state.symbols:
                    return _error_response(404, "unknown_symbol", f"unknown symbol {sym!r}")
                return _json_response(self.snapshot_obj(sym))
            if path == "/symbols":
                return _json_response(self.symbols())
            if path == "/healthz":
                return _response(200, b"ok\n", "text/plain; charset=utf-8")
            if path == "/stats":
                return _json_response({**self.ticker.stats, "ws_clients": len(self.clients),
                                       "history_pending": self.ticker.writer.pending(),
                                       "shards": {ln.name: {"seen": ln.high, "syncing": ln.syncing,
                                                            "replays": ln.replays,
                                                            "unrecoverable": ln.unrecoverable}
                                                  for ln in self.ticker.links}})
            return _error_response(404, "not_found", f"no such page: {path}")
        except Exception as e:
            log.exception("HTTP %s failed", request.path)
            return _error_response(500, "internal_error", str(e)[:200])

    async def _history(self, q: dict[str, str]) -> Response:
        symbol = q.get("symbol", "")
        interval = q.get("interval", "1m")
        if symbol not in self.ticker.feed.state.symbols:
            return _error_response(400, "unknown_symbol", f"unknown symbol {symbol!r}")
        try:
            interval_ns(interval)
        except ValueError:
            return _error_response(400, "bad_interval", f"unknown interval {interval!r}: 1s, 1m, 5m, 15m, 1h or 1d")
        try:
            end = _parse_time(q["to"]) if "to" in q else time.time_ns()
            start = _parse_time(q["from"]) if "from" in q else end - DAY_NS
        except ValueError as e:
            return _error_response(400, "bad_time", str(e))
        try:
            bars = await asyncio.to_thread(self.ticker.history, symbol, interval, start, end)
        except HistoryError as e:
            return _error_response(503, "history_unavailable", str(e)[:300])
        return _json_response({"symbol": symbol, "interval": interval, "from": start, "from_ns": str(start),
                               "to": end, "to_ns": str(end), "bars": bars})


def _instrument_json(i: Instrument) -> dict[str, Any]:
    # The band as the matcher applies it: the instrument's own limits in ticks (rounded inwards when it was
    # made), printed by its own to_price, never recomputed here from band_pct.
    out: dict[str, Any] = {"symbol": i.symbol, "ref_price": None if i.ref_price is None else str(i.ref_price),
                           "tick": str(i.tick), "lot": i.lot, "band_pct": None, "band_low": None, "band_high": None}
    if i.band_pct is not None and i.band_lo is not None and i.band_hi is not None:
        out.update(band_pct=str(i.band_pct), band_low=i.to_price(i.band_lo), band_high=i.to_price(i.band_hi))
    return out


_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NS_TEXT: Final = re.compile(r"-?[0-9]+")


def _parse_time(s: str) -> int:
    """Return nanoseconds since the epoch from decimal text or an ISO 8601 time (UTC when no offset is given).

    Decimal text (ASCII digits, optionally after a ``-``) is taken exactly, so a JavaScript client sends a
    ``from_ns``/``to_ns`` it was given unchanged; an ISO 8601 time counts to the microsecond (further digits
    are dropped).

    Raises
    ------
    ValueError
        When ``s`` is neither.
    """
    if _NS_TEXT.fullmatch(s):
        return int(s)
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {s!r} (nanoseconds since the epoch, or ISO 8601)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    # Integer arithmetic, exact for any time (int(t.timestamp()) would round a time before 1970 towards zero).
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


def _response(status: int, body: bytes, ctype: str, cache: str = "no-cache") -> Response:
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", cache)])
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _json_response(obj: Any, status: int = 200) -> Response:
    return _response(status, _json.encode(obj), "application/json")


def _error_response(status: int, reason: str, text: str) -> Response:
    return _json_response({"error": reason, "text": text}, status)


def _load_static() -> dict[str, tuple[bytes, str]]:
    # The page's files, and Plotly's bundle from the installed plotly package (never copied into the repo).
    files: dict[str, tuple[bytes, str]] = {}
    if WEB_DIR.is_dir():
        for f in WEB_DIR.iterdir():
            if f.is_file():
                ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
                if ctype.startswith("text/") or ctype.endswith("javascript"):
                    ctype += "; charset=utf-8"
                files[f.name] = (f.read_bytes(), ctype)
    try:
        import plotly  # type: ignore[import-untyped]

        bundle = Path(plotly.__file__).with_name("package_data") / "plotly.min.js"
        files["plotly.min.js"] = (bundle.read_bytes(), "text/javascript; charset=utf-8")
    except (ImportError, OSError) as e:
        log.error("plotly.min.js not found (%s): the page's chart will not draw; pip install plotly", e)
    files.setdefault("index.html", (b"<!doctype html><title>exchange-fabric</title><p>The page's files are missing "
                                    b"from nodes/web.</p>", "text/html; charset=utf-8"))
    return files


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
