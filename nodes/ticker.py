"""The ticker node: real-time prices for everyone, from every shard's trade and book streams.

One asyncio loop does everything, in this order of priority:

- **ingest**: drain the SUB socket connected to every matcher's PUB (topics
  ``T``, ``B``, ``S`` and ``H``), up to ``MAX_TURN`` ZeroMQ messages a turn, and apply
  each topic's trades, book changes and trading states (halts) in their ``tseq`` order
  to a :class:`~fabric.feed.MarketFeed`, which keeps the market index too;
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

**Market-wide circuit breakers** (``docs/security.md``): when the index's move from its previous close
trips a level (:func:`fabric.circuit.trip`), the ticker halts the whole market through a gateway, as the
operator ``[index] operator`` (an ``admin`` command with ``until``).  Only the ticker that writes the
history (the first, or the one that took over) does it, and only once it has rebuilt the day, so it
knows from the matchers' ``S`` streams which levels tripped today already: a standby ticker, or a
restarted one, never trips a level twice.

The history store (SQLite or InfluxDB) is written by its own thread
(:class:`~fabric.history.HistoryWriter`), so a slow or absent database never
slows the loop.  ``docs/market-data.md`` is the reference of everything served.

A topology may run two tickers (``[[tickers]]``: A and B feeds of the same market;
``docs/market-data.md``, section 9).  Each runs this same loop and publishes the same
market on its own feed; clients fail over from one to the other.  The price history is
written once: by the first ticker, and by the second only while the first is silent
(:class:`~fabric.standby.Standby`: its feed's heartbeats are not heard for
``HISTORY_SILENCE_S``).  The second listens to those heartbeats and keeps the points of
the last ``KEEP_S`` seconds meanwhile, which it writes when it takes over: those the
first had not written yet when it died are among them (the stores upsert, so writing a
point twice changes nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgspec
import zmq
import zmq.asyncio

from fabric.circuit import Trip, halt_text, level_of, trip
from fabric.feed import HEARTBEAT_TOPIC, MarketFeed, feed_topic
from fabric.follow import Follower, ShardLink
from fabric.history import (
    BarRecord,
    HistoryStore,
    HistoryWriter,
    TickRecord,
    aggregate,
    interval_ns,
    open_history,
)
from fabric.index import MarketIndex
from fabric.marketstate import INTERVALS, Kind
from fabric.protocol import (
    BOOK,
    STATE,
    TRADE,
    Admin,
    AdminAck,
    BookLevel,
    Error,
    SessionEvent,
    Trade,
    TradingState,
    book_topic,
    state_topic,
    trade_topic,
)
from fabric.records import trading_day
from fabric.standby import Standby
from nodes.webhub import HEARTBEAT_S, WebHub
from topology.clients import operator_client
from topology.keys import node_keyring, warn_if_open
from topology.load import load
from topology.model import TICKER, Topology
from topology.model import Ticker as TickerConf
from topology.primary import shard_sources
from topology.registry import Registration

log = logging.getLogger("exfab.ticker")

PUB_HWM: Final = 10_000  # messages queued per feed subscriber before ZeroMQ drops (docs/market-data.md, 5)
HISTORY_SILENCE_S: Final = 3.0  # a ticker ahead not heard (heartbeats every second) this long: this one writes history
KEEP_S: Final = 30.0  # seconds of history points a ticker that does not write keeps, to write them if it takes over
ADMIN_TIMEOUT_S: Final = 5.0  # a gateway's answer to the breaker's halt, before the ticker sends it again
ADMIN_ATTEMPTS: Final = 3

_msgpack = msgspec.msgpack.Encoder()
_unpack = msgspec.msgpack.Decoder()
_KINDS: Final[dict[str, Kind]] = {"T": "trade", "B": "book"}  # heartbeat topic keys -> MarketState kinds


class Ticker:
    """The ticker node of a topology.

    Parameters
    ----------
    topo
        The topology; its ``[ticker]`` table (or the ``[[tickers]]`` table of this one) names the ports.
    history
        The history store; default: the one the topology's ``[stores] history`` names.
    name
        Which of the topology's tickers this is (default: the first).

    Raises
    ------
    KeyError
        When the topology has no ticker ``name``.
    """

    def __init__(self, topo: Topology, history: HistoryStore | None = None, name: str | None = None) -> None:
        if not topo.tickers:
            raise ValueError("the topology has no [ticker] table")
        self.topo = topo
        self.conf = topo.tickers[0] if name is None else topo.ticker_named(name)
        self.name = self.conf.name
        rank = topo.tickers.index(self.conf)
        self.ahead: tuple[TickerConf, ...] = topo.tickers[:rank]  # tickers that write history before this one
        self.standby = Standby([t.name for t in self.ahead], HISTORY_SILENCE_S, time.monotonic())
        self.writing = not self.ahead  # whether this ticker writes the history now
        self._kept: deque[tuple[float, list[TickRecord], list[BarRecord]]] = deque()  # while it does not
        instruments = [i for s in topo.shards for i in topo.instruments_of(s)]
        self.instruments = {i.symbol: i for i in instruments}
        ix = topo.index
        self.index = None if ix is None else MarketIndex(ix.name, ix.base, [
            (sym, w, self.instruments[sym].ref_price or Decimal(0)) for sym, w in ix.constituents])
        self.feed = MarketFeed(instruments, index=self.index, shards=[(s.name, s.symbols) for s in topo.shards])
        self.ctx = zmq.asyncio.Context()
        self._symbols = [list(s.symbols) for s in topo.shards]
        topics = [[state_topic(no), *(t for sym in syms for t in (trade_topic(sym), book_topic(sym)))]
                  for no, syms in enumerate(self._symbols)]
        sources, resolve = shard_sources(topo)  # (a pair's primary moves: the follower asks the new one for replays)
        warn_if_open(topo, f"{TICKER}:{self.name}", log)
        self.follow = Follower(self.ctx, sources, topics, (TRADE, BOOK, STATE), self._deliver, resolve=resolve,
                               keys=node_keyring(topo, f"{TICKER}:{self.name}"),
                               turn=self.publish_turn, on_restart=self._restart, on_unavailable=self._from_snapshot)
        for link in self.follow.links:
            for topic in link.stream.topics:
                self.follow.start_at(link.no, topic, 0, 0)  # from the day's first message: a ticker rebuilds the day
        self.store = history if history is not None else _open_store(topo)
        self.writer = HistoryWriter(self.store)
        self.web = WebHub(topo.name, self.instruments, self.feed, stats=self.stats_view, history=self.history,
                          ticker=self.name, tickers=[{"name": t.name, "ws": t.ws_url, "http": t.http_url}
                                                     for t in topo.tickers],
                          per_address=self.conf.connections_per_address)
        self._pub: zmq.asyncio.Socket | None = None  # the feed's PUB, bound by run()
        self._pub_raw: tuple[zmq.asyncio.Socket, zmq.Socket[bytes]] | None = None
        self._stop = asyncio.Event()
        self.stats = {"trades": 0, "published": 0, "history_takeovers": 0, "breakers_tripped": 0}
        self.clock: Callable[[], int] = time.time_ns  # the breakers' clock (ns since the epoch)
        self.zone = ZoneInfo(topo.timezone)
        self.tripped: dict[str, set[Decimal]] = {}  # trading day -> breaker levels tripped that day
        self._halting: asyncio.Task[None] | None = None  # a breaker's halt on its way to a gateway

    @property
    def links(self) -> list[ShardLink]:
        """Every shard's stream, as the follower keeps it."""
        return self.follow.links

    # ------------------------------------------------------------------ ingest

    def ingest(self, frames: list[list[bytes]]) -> None:
        """Apply a drained batch of ``[topic, body]`` messages from the matchers (bad ones are logged, skipped)."""
        self.follow.ingest(frames)

    def _deliver(self, link: ShardLink, msgs: list[Trade | BookLevel | TradingState]) -> None:
        # Trades, book changes or trading states of one topic, in its order (the stream put them so).
        feed = self.feed
        for m in msgs:
            if type(m) is Trade:
                feed.trade(m)
            elif type(m) is BookLevel:
                feed.level(m)
            elif type(m) is SessionEvent:
                feed.session(m)
            else:
                self._trading_state(m)  # type: ignore[arg-type]

    def _trading_state(self, m: TradingState) -> None:
        self.feed.trading_state(m)
        level = level_of(m.text) if m.symbol is None and m.state == "halted" else None
        if level is not None and self.topo.index is not None:  # a breaker's halt: that level tripped that day
            day = self.tripped.setdefault(trading_day(m.ts, self.topo.timezone), set())
            day.update(lv.pct for lv in self.topo.index.breakers if lv.pct <= level)

    def _restart(self, link: ShardLink) -> None:
        self.feed.reset(self._symbols[link.no])  # a new journal: the shard's symbols are rebuilt from its seq 1
        self.feed.apply_states(link.no, ())

    async def _from_snapshot(self, link: ShardLink) -> None:
        # A range the matcher no longer holds: the books from a snapshot (its trades are missing from volume, bars
        # and history).
        snap = await self.follow.snapshot(link)
        if snap is None:
            return
        link.stream.replay = None
        self.feed.apply_states(link.no, snap.states)
        if snap.phase is not None:
            self.feed.set_phase(snap.phase, snap.entry)
        # The S topic goes on from the snapshot: the snapshot names no tseq for it, so from just before the first
        # held change published after the snapshot, or else after the last halt the snapshot carries (a change
        # lost after that shows as a gap again, and the next snapshot takes it).
        topic = state_topic(link.no)
        held = link.stream.topics[topic].held
        after = min((k for k, (seq, _) in held.items() if seq > snap.seq), default=None)
        if after is not None:
            self._deliver(link, link.stream.jump(topic, after - 1, snap.seq))
        elif snap.state_tseq:  # a matcher that says where its S topic stands
            self._deliver(link, link.stream.jump(topic, snap.state_tseq, snap.seq))
        elif snap.states:
            last = max(snap.states, key=lambda m: m.tseq)
            self._deliver(link, link.stream.jump(topic, last.tseq, last.seq))
        for book in snap.books:
            if book.symbol not in self.feed.state.symbols:
                continue
            self.feed.apply_snapshot(book)
            self._deliver(link, link.stream.jump(trade_topic(book.symbol), book.trade_tseq, snap.seq))
            self._deliver(link, link.stream.jump(book_topic(book.symbol), book.book_tseq, snap.seq))
        link.high = max(link.high, snap.seq)

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
        if self.index is not None and turn.messages and turn.messages[-1][0] == "index":
            self.check_breakers()
        self.stats["published"] += len(turn.messages)
        self.stats["trades"] += len(turn.trades)
        if turn.trades:
            ticks = [TickRecord.from_tape(sym, t) for sym, t in turn.trades]
            bars = [BarRecord.from_bar(sym, iv, b) for sym, iv, b in turn.bars]
            if self.writing:
                self.writer.add_ticks(ticks)
                self.writer.add_bars(bars)
            else:
                now = time.monotonic()
                self._kept.append((now, ticks, bars))
                self._forget(now)

    # ------------------------------------------------------------- breakers

    def check_breakers(self) -> Trip | None:
        """Trip the market-wide circuit breaker the index's move calls for, if any; return the trip.

        Only with ``[index] operator`` set, once the day is rebuilt (the halts of the day are known), on the ticker
        that writes the history (a standby does not), and not while a halt is on its way.
        """
        conf = self.topo.index
        ix = self.index
        if (conf is None or ix is None or conf.operator is None or not self.writing or not self.follow.synced
                or self._halting is not None):
            return None
        now = dt.datetime.fromtimestamp(self.clock() / 1e9, self.zone)
        tripped = self.tripped.setdefault(now.date().isoformat(), set())
        t = trip(ix.change_pct, now, tripped, conf.breakers)
        if t is None:
            return None
        levels = {lv.pct for lv in conf.breakers if lv.pct <= t.level} - tripped
        tripped.update(levels)
        self.stats["breakers_tripped"] += 1
        text = halt_text(t.level, ix.name, ix.change_pct, ix.value, t.until)
        until = (t.until - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000
        log.warning("%s: halting the whole market", text)
        self._halting = asyncio.get_running_loop().create_task(
            self._send_halt(conf.operator, Admin(action="halt", symbol=None, until=until, text=text), tripped, levels))
        return t

    async def _send_halt(self, operator: str, admin: Admin, tripped: set[Decimal], levels: set[Decimal]) -> None:
        # Through a gateway as the operator, until a gateway says it is done (AdminAck) or refuses it (Error); a
        # halt sent twice halts once (the market is halted already). Unanswered: the levels count as not tripped,
        # and the index's next move trips them again (a refusal is final: sending it again would not change it).
        client = operator_client(self.topo, operator, ctx=self.ctx)
        done = False
        try:
            for attempt in range(1, ADMIN_ATTEMPTS + 1):
                try:
                    await client.connect()
                    await client.submit(admin)
                    deadline = time.monotonic() + ADMIN_TIMEOUT_S
                    while (left := deadline - time.monotonic()) > 0:
                        for m in await client.poll(left):
                            if isinstance(m, AdminAck):
                                log.warning("market halted by the circuit breaker (%s)", admin.text)
                                done = True
                                return
                            if isinstance(m, Error):
                                log.error("the circuit breaker's halt was refused by the gateway: %s (%s): the "
                                          "market is NOT halted (not sent again: the operator must act)", m.reason,
                                          m.text)
                                done = True
                                return
                except Exception as e:
                    log.error("the circuit breaker's halt could not be sent (attempt %d): %s", attempt, e)
                log.warning("no answer to the circuit breaker's halt (attempt %d of %d)", attempt, ADMIN_ATTEMPTS)
            log.error("the circuit breaker's halt got no answer: the market is NOT halted (%s)", admin.text)
        finally:
            client.close()
            self._halting = None
            if not done:
                tripped.difference_update(levels)

    # ----------------------------------------------------------------- history

    def _forget(self, now: float) -> None:
        # Points kept longer than KEEP_S: the ticker writing history has written them (or will, rebuilding the day).
        kept = self._kept
        while kept and now - kept[0][0] > KEEP_S:
            kept.popleft()

    def _history_duty(self, now: float) -> None:
        """Write the history or not, as the tickers ahead of this one are heard or not (:class:`Standby`)."""
        active = self.standby.active(now)
        if active and not self.writing:
            self.writing = True
            self.stats["history_takeovers"] += 1
            points = sum(len(t) + len(b) for _, t, b in self._kept)
            log.warning("history: %s silent for %g s: this ticker writes the price history now, beginning with the "
                        "%d points of the last %g s", ", ".join(self.standby.silent(now)), HISTORY_SILENCE_S, points,
                        KEEP_S)
            for _, ticks, bars in self._kept:
                self.writer.add_ticks(ticks)
                self.writer.add_bars(bars)
            self._kept.clear()
        elif not active and self.writing:
            self.writing = False
            log.warning("history: %s is back and writes the price history; this ticker stops",
                        ", ".join(t.name for t in self.ahead))
        elif not self.writing:
            self._forget(now)

    async def _watch_ahead(self) -> None:
        # The heartbeats of the tickers ahead of this one, each on a SUB of its own (to know whose it is).
        socks: dict[zmq.asyncio.Socket, str] = {}
        poller = zmq.asyncio.Poller()
        self.standby = Standby([t.name for t in self.ahead], HISTORY_SILENCE_S, time.monotonic())  # heard from now on
        try:
            for t in self.ahead:
                s = self.ctx.socket(zmq.SUB)
                s.setsockopt(zmq.LINGER, 0)
                s.subscribe(HEARTBEAT_TOPIC)
                s.connect(t.pub.connect)
                socks[s] = t.name
                poller.register(s, zmq.POLLIN)
            while True:
                events = await poller.poll(500)
                now = time.monotonic()
                for s, _ in events:
                    while s.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        await s.recv_multipart()
                    self.standby.heard(socks[s], now)
                self._history_duty(now)
        finally:
            for s in socks:
                s.close(0)

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

        The ticker's name, the counters of :attr:`stats` (``history_takeovers``: times this ticker began to write the
        history because the ones before it were silent), ``history`` (``writing`` or ``standby``), the history points
        waiting to be written, and per shard the last ``seq`` seen, whether a replay is under way, the replays, and
        the messages the matcher could no longer replay.
        """
        return {**self.stats, "ticker": self.name, "history": "writing" if self.writing else "standby",
                "messages": self.follow.messages, "turns": self.follow.turns,
                "duplicates": sum(ln.stream.duplicates for ln in self.links),
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
                "unknown": [s for s in names if s not in known], **self.feed.market_snapshot(ts)}

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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            await self.follow.start()
            await self.follow.wait_synced(60)  # READY does not wait longer for a matcher that does not answer
            self.publish_turn()
            self.check_breakers()  # (a move made while the day was being rebuilt)
            gc.freeze()  # the rebuilt day and start-up's objects: out of the cycle collector's scans from now on
            # A loopback host binds its own address (hosts mapped onto one machine share ports), others every one.
            await self.web.serve(self.conf.http_host, self.conf.http_port)
            for coro in (self._serve_snapshots(snap), self._heartbeat()):
                self.follow.spawn(coro)
            if self.ahead:
                self.follow.spawn(self._watch_ahead())
            log.info("ticker %s: %d shards, %d symbols; feed %s, snapshots %s, page %s; history %s", self.name,
                     len(self.links), len(self.instruments), self.conf.pub.bind, self.conf.snapshot.bind,
                     self.conf.http_url, "written here" if self.writing else
                     f"written by {', '.join(t.name for t in self.ahead)} (this one takes over when it is silent)")
            if ready is not None:
                ready()
            await self._stop.wait()
        finally:
            await self.web.close()
            await self.follow.close()
            for s in (pub, snap):
                s.close(0)
            ctx.term()
            unwritten = self.writer.pending()
            if not self.writer.close(10.0):
                log.error("history: %d points not written (the store is down); the matchers' journals still hold "
                          "their trades: a ticker started later rebuilds and writes them", unwritten)
            self.store.close()
            log.info("ticker stopped: %s", self.stats_view())

    # ------------------------------------------------------------------ history

    def history(self, symbol: str, interval: str, start: int, end: int) -> list[dict[str, Any]]:
        """Return the bars of ``symbol`` (or of the market index, by its name) with ``start <= bar.start < end``: the
        store's, overlaid with memory's.

        Raises
        ------
        KeyError
            Unknown symbol.
        ValueError
            Unknown interval.
        """
        ix = self.index
        if ix is not None and symbol == ix.name:
            series_of = ix.bars  # the market index's bars, stored under its name
        elif symbol in self.feed.state.symbols:
            series_of = self.feed.state.symbols[symbol].bars
        else:
            raise KeyError(symbol)
        step = interval_ns(interval)
        base = interval if interval in INTERVALS else "1m"
        stored = {b.start: b for b in self.store.bars(symbol, base, start - start % interval_ns(base), end)}
        series = series_of[base]
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
    """Run the ticker: ``python -m nodes.ticker --topology FILE [--id NAME]``."""
    ap = argparse.ArgumentParser(prog="exfab node ticker", description="Run a ticker node of a topology.")
    ap.add_argument("--topology", required=True, metavar="FILE")
    ap.add_argument("--id", default="ticker", metavar="NAME",
                    help="its name in the topology: ticker (the first, or only, one), ticker-b, ... (default ticker)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.id} %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    topo = load(args.topology)
    try:
        ticker = Ticker(topo, name=args.id)
    except (KeyError, ValueError) as e:
        names = ", ".join(t.name for t in topo.tickers) or "none"
        print(f"exfab node ticker: {e.args[0]} (its tickers: {names})", file=sys.stderr)
        return 2
    reg = Registration(topo, TICKER, ticker.name, ticker.conf.host)  # (exfab status; nothing without [zookeeper])

    def ready() -> None:
        print(f"READY ticker {ticker.name}", flush=True)
        reg.update("running")

    try:
        asyncio.run(ticker.run(ready=ready))
    finally:
        reg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
