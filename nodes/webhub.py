"""The ticker's web port: HTTP routes, the live page's files, and the WebSocket fan-out.

:class:`WebHub` serves one HTTP port (``docs/market-data.md``, sections 4 and 6): ``GET /``,
``/static/...``, ``/history``, ``/snapshot``, ``/symbols``, ``/healthz``, ``/stats``, and the
WebSocket ``/ws``.  The ticker hands it what each turn published (:meth:`WebHub.publish`) and a
heartbeat a second (:meth:`WebHub.heartbeat`); the hub does the rest.

Fan-out, and why it is shaped this way.  With a thousand browsers the cost is not building the
objects but sending them: each WebSocket message to each client is a trip through the
WebSocket library and a system call.  So:

- **one serialisation per object**: a published object is encoded to JSON once, lazily (when a
  first client wants it), and its bytes are shared by every client;
- **one message per wake-up**: objects published between two flushes wait in one list for
  everybody; a flush gives each client that is keeping up *one* WebSocket message holding all of
  its objects, as a JSON array (clients that connected with ``/ws?batch=1``; others get the
  original one object per message).  Clients following the same things get the very same frame:
  the array and its WebSocket frame are built once per flush and written to each connection;
- **flushes paced by their own cost**: a flush runs at once when the hub is idle, and otherwise no
  sooner than ``FLUSH_GAP_FACTOR`` times the CPU time the last flush took after it, so fan-out
  takes at most about a third of the loop however many clients there are, and the ticker keeps
  ingesting (one client: a flush per turn; a thousand: a couple of dozen flushes a second, each
  costing about 15 µs a client here, nearly all of it the send system call).  CPU time, not
  wall-clock time: on a full machine a flush that waited for a core is not made to look dearer,
  which would space flushes further and add that wait to every client's latency;
- **slow clients conflate**: a client whose connection does not take what it is sent (its write
  buffer above the WebSocket library's limit) gets nothing more written; its objects wait in its
  mailbox, one per symbol and kind, newer ones merged into older (``_merge``), and the mailbox
  goes out as one message once the connection drains.  A slow client never holds up the others
  or the ticker.

The flush writes each frame straight to the connection's transport instead of awaiting
``ServerConnection.send`` per client: one callback serves every client without a task per
client, and the frame shared by many clients is framed once.  It writes only to connections
whose protocol state is OPEN, whole frames only, so the library's own frames (pongs, pings, the
closing handshake) never interleave with ours.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import http
import logging
import mimetypes
import re
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from fabric.feed import KINDS, MarketFeed
from fabric.feedtopics import MARKET_KINDS
from fabric.history import HistoryError, interval_ns
from fabric.instruments import Instrument
from fabric.marketstate import TAPE_LEN
from topology.model import DEFAULT_CONNECTIONS_PER_ADDRESS

__all__ = [
    "BATCH_BYTES",
    "DAY_NS",
    "FLUSH_GAP_FACTOR",
    "HEARTBEAT_S",
    "MAX_HTTP_REQUEST",
    "MAX_REQUEST",
    "WEB_DIR",
    "Item",
    "WebClient",
    "WebHub",
    "parse_time",
]

log = logging.getLogger("exfab.ticker")

HEARTBEAT_S: Final = 1.0  # feed and WebSocket heartbeat period (the hello message announces it)
WEB_DIR: Final = Path(__file__).with_name("web")
DAY_NS: Final = 86_400 * 1_000_000_000
MAX_REQUEST: Final = 1 << 16  # largest WebSocket message a client may send (a request is a few hundred bytes)
# Largest HTTP request (its line and headers; a body is refused by websockets): a browser's are under 4 KiB.
# websockets itself refuses a line over 8 KiB (414, 431) and more than 128 headers (431).
MAX_HTTP_REQUEST: Final = 16 * 1024
MAX_ANSWERS: Final = 64  # answers (pongs, errors, snapshots) waiting for one client: past it, the client is dropped
# Pacing: after a flush that took d seconds of CPU, the next waits at least FLUSH_GAP_FACTOR * d (at most
# FLUSH_MAX_GAP_S), so fan-out uses at most about 1 / (1 + FLUSH_GAP_FACTOR) of the loop when busy.
FLUSH_GAP_FACTOR: Final = 2.0
FLUSH_MAX_GAP_S: Final = 0.1
FLUSH_RETRY_S: Final = 0.05  # how soon a client that was too slow to be written to is looked at again
# A batch message is cut into several above this size (an object larger than it goes alone), so that a batch of
# snapshots stays under clients' usual message limits (1 MiB by default in Python's websockets).
BATCH_BYTES: Final = 1 << 18

_json = msgspec.json.Encoder()
# Sent to every client whatever it follows: small, rare, and what the page's banner and badges show.
_EVERYONE: Final = frozenset({"heartbeat", *MARKET_KINDS})
_OPEN: Final = State.OPEN


class Item:
    """One object on its way to WebSocket clients, with its JSON and its frame built once, when first needed.

    Parameters
    ----------
    key
        ``(kind, symbol)`` for feed objects (``("quote", "TCS")``); per-client messages have keys of their own
        (``("hello", "")``, ``("pong", id)``...).  A mailbox holds one item per key.
    obj
        The JSON-ready object.
    """

    __slots__ = ("body", "frame", "key", "obj")

    def __init__(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        self.key = key
        self.obj = obj
        self.body: bytes | None = None  # its JSON, shared by every client that gets it
        self.frame: bytes | None = None  # its own WebSocket text frame (clients without batching)


class _PipelinedRequest(logging.Filter):
    """Say in one line what websockets 17 reports as its own failure: bytes sent after an HTTP request.

    A client that sends anything after its request, before the answer (a second, pipelined request; junk),
    makes websockets' handshake fail an assertion of its own (``send_eof``: the end of the stream was already
    sent). It logs "unexpected internal error" with a traceback and drops the connection unanswered; the hub
    is unharmed. A client could fill the log with those tracebacks, so the record becomes one INFO line.
    """

    TEXT: Final = ("a client sent bytes after its HTTP request, before the answer: its connection is dropped "
                   "unanswered (websockets cannot answer it)")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AssertionError) and record.msg == "unexpected internal error" and _raised_in(exc,
                                                                                                   "send_eof"):
            record.msg, record.args, record.exc_info, record.exc_text = self.TEXT, (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _raised_in(exc: BaseException, function: str) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == function


def _text_frame(payload: bytes) -> bytes:
    # A server's frame is never masked (RFC 6455, 5.1), so one frame's bytes fit every connection.
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


@dataclass(eq=False)
class WebClient:
    """One WebSocket connection: what it follows, and its conflating mailbox.

    Attributes
    ----------
    ws
        The connection.
    batch
        Whether the client asked for batches (``/ws?batch=1``): each message a JSON array of objects.
    subs
        Per symbol, the channels followed (when not every symbol is).
    all_channels
        The channels followed of every symbol (``subscribe`` with ``symbols`` ``"*"``), or ``None``.
    box
        The mailbox: per-client messages (hello, snapshots, pongs, errors), and the feed objects of a client
        that is behind, one per key, merged.
    mark
        Objects of the hub's pending list before this index were already put in the mailbox (at a request).
    sig
        What the client follows, as a key: clients with equal ``sig`` want the same objects.
    """

    ws: ServerConnection
    batch: bool = False
    subs: dict[str, frozenset[str]] = field(default_factory=dict)  # symbol -> channels
    all_channels: frozenset[str] | None = None  # subscribed to every symbol with these channels
    box: dict[tuple[str, str], Item] = field(default_factory=dict)
    mark: int = 0
    sig: Hashable = ("*", None)
    messages: int = 0  # WebSocket messages sent
    objects: int = 0  # objects in them
    conflated: int = 0
    errors: int = 0
    dropped: bool = False  # closed for not reading its answers

    def wants(self, kind: str, symbol: str) -> bool:
        """Return whether the client follows ``kind`` ("quote", "depth", "bars") of ``symbol``."""
        chans = self.subs.get(symbol, self.all_channels)
        return chans is not None and kind in chans

    def resubscribed(self) -> None:
        """Recompute :attr:`sig` after :attr:`subs` or :attr:`all_channels` changed."""
        self.sig = ("*", self.all_channels) if not self.subs else (self.all_channels, frozenset(self.subs.items()))

    def post(self, item: Item) -> None:
        """Put an item in the mailbox, merging it with one of the same symbol and kind still waiting.

        A ``snapshot`` of a symbol supersedes the updates of that symbol still waiting (it holds their state,
        the last 50 trades and every bar), so they are dropped and the snapshot goes last: the client never
        applies an older state after a newer one.
        """
        key = item.key
        box = self.box
        kind = key[0]
        if kind == "snapshot":
            for k in (*KINDS, "state", "snapshot"):
                box.pop((k, key[1]), None)
        else:
            old = box.get(key)
            if old is not None and kind in KINDS:
                self.conflated += 1
                item = Item(key, _merge(kind, old.obj, item.obj))
        box[key] = item


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


def _wants_batch(path: str) -> bool:
    # /ws?batch=1 (or true, yes): every message a JSON array.  Anything else keeps one object per message.
    values = parse_qs(urlsplit(path).query).get("batch", [])
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


class WebHub:
    """The WebSocket clients and the HTTP routes of the ticker's web port.

    Parameters
    ----------
    exchange
        The exchange's name (the ``hello`` message's ``exchange``).
    instruments
        The instruments, by symbol (``hello`` and ``GET /symbols``).
    feed
        The ticker's feed: snapshots are built from it.
    stats
        Returns the ticker's counters for ``GET /stats``; the hub adds its own (``ws_...``).
    history
        ``history(symbol, interval, start, end)``: the bars ``GET /history`` answers (run on a worker thread).
    ticker
        This ticker's name (the ``hello`` message's ``ticker``).
    per_address
        The most connections (WebSocket or HTTP) one client address may hold open at once; past it a new one
        is refused with HTTP 429 (``too_many_connections``).
    tickers
        Every ticker of the market, in the topology's order, each ``{"name", "ws", "http"}``: the ``hello``
        message's ``tickers``, where a client goes when this one dies (``docs/market-data.md``, section 9).
    """

    def __init__(self, exchange: str, instruments: Mapping[str, Instrument], feed: MarketFeed,
                 stats: Callable[[], dict[str, Any]],
                 history: Callable[[str, str, int, int], list[dict[str, Any]]], *, ticker: str = "ticker",
                 tickers: list[dict[str, str]] | None = None,
                 per_address: int = DEFAULT_CONNECTIONS_PER_ADDRESS) -> None:
        self.exchange = exchange
        self.ticker = ticker
        self.tickers = list(tickers or ())
        self.instruments = instruments
        self.feed = feed
        self._stats = stats
        self._history = history
        self.clients: set[WebClient] = set()
        self.static = _load_static()
        self.counts = {"ws_messages": 0, "ws_objects": 0, "ws_encodes": 0, "ws_flushes": 0}
        self.per_address = per_address
        self.open: collections.Counter[str] = collections.Counter()  # open connections (HTTP and WebSocket) per address
        self.refused: collections.Counter[str] = collections.Counter()  # requests refused, by reason
        self._error_no = 0
        self._snapshots: dict[str, Item] = {}
        self._hello: Item | None = None
        self._out: list[Item] = []  # objects published since the last flush, for every client
        self._dirty: set[WebClient] = set()  # clients with something in their mailbox
        self._handle: asyncio.TimerHandle | None = None
        self._next_at = 0.0  # loop time before which no flush starts (pacing)
        self._server: Server | None = None
        # A client's mailbox holds at most one item per symbol and kind (and a snapshot per symbol, the hello, a
        # heartbeat): beyond those, MAX_ANSWERS answers to its requests.
        self._feed_keys = len(instruments) * (len(KINDS) + 2) + 4
        self._closing: set[asyncio.Task[None]] = set()

    # -------------------------------------------------------------- updates

    def publish(self, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Take one turn's ``(kind, symbol, object)`` messages for the clients following them."""
        if messages and messages[-1][0] in MARKET_KINDS:  # (a turn puts states, market and index last)
            self._hello = None
        snaps = self._snapshots
        if snaps:
            for _, sym, _ in messages:  # their cached snapshots are stale now
                snaps.pop(sym, None)
        if not self.clients or not messages:
            return
        self._out.extend(Item((kind, sym), obj) for kind, sym, obj in messages)
        self._schedule()

    def heartbeat(self, hb: dict[str, Any]) -> None:
        """Send a heartbeat to every client."""
        if self.clients:
            self._out.append(Item(("heartbeat", ""), hb))
            self._schedule()

    def body(self, item: Item) -> bytes:
        """Return the item's JSON, encoding it the first time only."""
        b = item.body
        if b is None:
            b = item.body = _json.encode(item.obj)
            self.counts["ws_encodes"] += 1
        return b

    def _frame(self, item: Item) -> bytes:
        f = item.frame
        if f is None:
            f = item.frame = _text_frame(self.body(item))
        return f

    def _batch_frames(self, items: list[Item]) -> list[bytes]:
        # The items as JSON arrays, each one WebSocket frame, cut where one would pass BATCH_BYTES.
        frames: list[bytes] = []
        chunk: list[bytes] = []
        size = 0
        for it in items:
            b = self.body(it)
            if chunk and size + len(b) > BATCH_BYTES:
                frames.append(_text_frame(b"[" + b",".join(chunk) + b"]"))
                chunk, size = [], 0
            chunk.append(b)
            size += len(b) + 1
        if chunk:
            frames.append(_text_frame(b"[" + b",".join(chunk) + b"]"))
        return frames

    # --------------------------------------------------------------- flushes

    def _schedule(self, at: float | None = None) -> None:
        # Ask for a flush at loop time ``at`` (default: as soon as pacing allows); an earlier request wins.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop, so no connection either: nothing to send
            return
        want = max(loop.time(), self._next_at) if at is None else at
        h = self._handle
        if h is not None:
            if h.when() <= want:
                return
            h.cancel()
        self._handle = loop.call_at(want, self._flush)

    def _kick(self, c: WebClient) -> None:
        # Something was put in c's mailbox: send it at the next flush.
        self._dirty.add(c)
        self._schedule()

    def flush(self) -> None:
        """Send what is pending: one message per client keeping up, mailboxes of clients that drained.

        Runs by itself (paced; see the module's docstring); public for tests and benchmarks.
        """
        if self._handle is not None:
            self._handle.cancel()
        self._flush()

    def _flush(self) -> None:
        self._handle = None
        t0 = time.thread_time()
        out, self._out = self._out, []
        # With nothing new for everybody, only the clients with a mailbox to send have anything to do.
        clients = list(self.clients) if out else list(self._dirty)
        dirty = self._dirty = set()
        wanted: dict[tuple[Hashable, int], list[Item]] = {}
        shared: dict[tuple[Hashable, int, bool], list[bytes]] = {}
        messages = objects = 0
        for c in clients:
            ws = c.ws
            if ws.protocol.state is not _OPEN:  # closing: its handler forgets it
                c.box.clear()
                continue
            key = (c.sig, c.mark)
            items = wanted.get(key)
            if items is None:
                items = wanted[key] = [it for it in out[c.mark:]
                                       if it.key[0] in _EVERYONE or c.wants(it.key[0], it.key[1])]
            c.mark = 0
            if c.box or ws.paused:
                # Behind (or with messages of its own): everything goes through its conflating mailbox.
                for it in items:
                    c.post(it)
                if ws.paused:  # its connection is not taking what it was sent: try again later
                    if c.box:
                        dirty.add(c)
                    continue
                items = list(c.box.values())
                c.box.clear()
                frames = self._batch_frames(items) if c.batch else [self._frame(it) for it in items]
            elif items:
                fkey = (*key, c.batch)
                frames_or_none = shared.get(fkey)
                if frames_or_none is None:
                    frames_or_none = shared[fkey] = (self._batch_frames(items) if c.batch
                                                     else [self._frame(it) for it in items])
                frames = frames_or_none
            else:
                continue
            write = ws.transport.write
            try:
                for f in frames:
                    write(f)
            except (OSError, RuntimeError) as e:  # the connection is going: its handler forgets it
                log.debug("WebSocket write failed: %s", e)
                continue
            c.messages += len(frames)
            c.objects += len(items)
            messages += len(frames)
            objects += len(items)
        counts = self.counts
        counts["ws_flushes"] += 1
        counts["ws_messages"] += messages
        counts["ws_objects"] += objects
        loop = asyncio.get_running_loop()
        spent = time.thread_time() - t0
        self._next_at = loop.time() + min(FLUSH_MAX_GAP_S, FLUSH_GAP_FACTOR * spent)
        if self._out:  # published during the flush: cannot happen today (no await), kept for safety
            self._schedule()
        elif dirty:
            self._schedule(max(self._next_at, loop.time() + FLUSH_RETRY_S))

    # ------------------------------------------------------------ messages

    def _post(self, c: WebClient, item: Item) -> None:
        if item.key[0] not in KINDS and item.key[0] not in _EVERYONE and len(c.box) >= MAX_ANSWERS + self._feed_keys:
            # A client that asks and does not read its answers (each ping with its own id, say) would make the
            # hub keep them all: it is dropped instead (docs/market-data.md, section 5).
            if not c.dropped:
                c.dropped = True
                log.warning("a WebSocket client with %d answers unread is dropped", len(c.box))
                task = asyncio.get_running_loop().create_task(c.ws.close(1008, "too many answers unread"))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            return
        c.post(item)
        self._kick(c)

    def _error(self, c: WebClient, reason: str, text: str) -> None:
        self._error_no += 1
        c.errors += 1
        self._post(c, Item(("error", str(self._error_no)), {"t": "error", "reason": reason, "text": text}))

    def _hello_item(self) -> Item:
        # The same for every client, built and encoded once: the instruments do not change while the ticker runs,
        # and the market's state, the index and the halts it carries are built again after they change (publish).
        if self._hello is None:
            self._hello = Item(("hello", ""), {"t": "hello", "v": 1, "exchange": self.exchange,
                                               "heartbeat_s": HEARTBEAT_S, "ticker": self.ticker,
                                               "tickers": self.tickers, "symbols": self.symbols(),
                                               **self.feed.market_snapshot()})
        return self._hello

    def symbols(self) -> list[dict[str, Any]]:
        """The instruments, as the ``hello`` message and ``GET /symbols`` list them, sorted by symbol.

        Each is ``{symbol, ref_price, tick, lot, band_pct, band_low, band_high}``: decimal text, ``lot`` an
        integer; the band's limits are the lowest and highest limit prices the matcher accepts, the band
        rounded inwards to whole ticks by the instrument itself; the three band fields are null for an
        instrument without a band.
        """
        return [_instrument_json(i) for i in sorted(self.instruments.values(), key=lambda i: i.symbol)]

    def snapshot_obj(self, symbol: str) -> dict[str, Any]:
        """The WebSocket's ``snapshot`` of one symbol."""
        return {"t": "snapshot", "symbol": symbol, **self.feed.snapshot(symbol)}

    def _snapshot_item(self, symbol: str) -> Item:
        # A symbol's snapshot, built and encoded once until the symbol next changes: clients connecting
        # together (a page reloaded by many, a reconnect after a ticker restart) share it.
        hit = self._snapshots.get(symbol)
        if hit is None:
            hit = self._snapshots[symbol] = Item(("snapshot", symbol), self.snapshot_obj(symbol))
        return hit

    # ------------------------------------------------------------ WebSocket

    async def handler(self, ws: ServerConnection) -> None:
        """Serve one WebSocket connection until it closes."""
        c = WebClient(ws, batch=_wants_batch(ws.request.path if ws.request is not None else ""))
        c.mark = len(self._out)  # what was published before it came is not its
        self.clients.add(c)
        try:
            self._post(c, self._hello_item())
            async for raw in ws:
                self._request(c, raw)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(c)
            self._dirty.discard(c)

    def _catch_up(self, c: WebClient) -> None:
        # Before a request changes what c follows or sends it a snapshot, the objects published so far that it
        # follows go to its mailbox, ahead of the answer: a snapshot then always comes after the updates older
        # than it, and every update after it is newer.
        out = self._out
        if c.mark < len(out):
            for it in out[c.mark:]:
                if it.key[0] in _EVERYONE or c.wants(it.key[0], it.key[1]):
                    c.post(it)
            c.mark = len(out)
            self._kick(c)

    def _request(self, c: WebClient, raw: str | bytes) -> None:
        try:
            req = msgspec.json.decode(raw)
        except msgspec.DecodeError as e:
            self._error(c, "malformed", f"not JSON: {e}")
            return
        except RecursionError:
            self._error(c, "malformed", "not a request: JSON nested too deeply")
            return
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            self._error(c, "malformed", 'a request is a JSON object with an "op"')
            return
        op = req["op"]
        if op == "ping":
            ts = time.time_ns()
            self._post(c, Item(("pong", str(req.get("id"))),
                               {"t": "pong", "id": req.get("id"), "ts": ts, "ts_ns": str(ts)}))
            return
        if op not in ("subscribe", "unsubscribe", "snapshot"):
            self._error(c, "unknown_op", f"unknown op {op!r}: subscribe, unsubscribe, snapshot or ping")
            return
        self._catch_up(c)
        known = self.feed.state.symbols
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
            c.resubscribed()
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
            c.resubscribed()
        for s in names:
            c.post(self._snapshot_item(s))
        self._kick(c)

    # ----------------------------------------------------------------- HTTP

    async def serve(self, host: str | None, port: int) -> Server:
        """Start serving HTTP and the WebSocket on ``host:port`` (``None``: every interface); return the server."""
        ws_log = logging.getLogger("websockets.server")
        if not any(isinstance(f, _PipelinedRequest) for f in ws_log.filters):
            ws_log.addFilter(_PipelinedRequest())
        self._server = await serve(self.handler, host, port, process_request=self.http, max_size=MAX_REQUEST,
                                   compression=None)
        return self._server

    async def close(self, timeout: float = 3.0) -> None:
        """Stop serving: close every connection and the listening socket."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout)
            except Exception as e:  # closing is best effort: the process is stopping
                log.debug("web server close: %s", e)
            self._server = None

    async def http(self, conn: ServerConnection, request: Request) -> Response | None:
        """Answer a plain HTTP request; ``None`` lets ``/ws`` go on to the WebSocket handshake.

        Every connection comes here first (websockets calls it with the parsed request): a request larger than
        ``MAX_HTTP_REQUEST`` is refused with 431 (``request_too_large``), a connection from an address that holds
        ``per_address`` open already with 429 (``too_many_connections``).
        """
        refusal = self._admit(conn, request)
        if refusal is not None:
            return refusal
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
                return await self._history_response(q)
            if path == "/snapshot":
                sym = q.get("symbol", "")
                if sym not in self.feed.state.symbols:
                    return _error_response(404, "unknown_symbol", f"unknown symbol {sym!r}")
                return _json_response(self.snapshot_obj(sym))
            if path == "/symbols":
                return _json_response(self.symbols())
            if path == "/healthz":
                return _response(200, b"ok\n", "text/plain; charset=utf-8")
            if path == "/stats":
                return _json_response(self.stats())
            return _error_response(404, "not_found", f"no such page: {path}")
        except Exception as e:
            log.exception("HTTP %s failed", request.path)
            return _error_response(500, "internal_error", str(e)[:200])

    def _admit(self, conn: ServerConnection, request: Request) -> Response | None:
        # The limits a connection must pass before anything is served; an admitted one counts against its
        # address until it closes (whenever and however it closes: the connection's own lost-waiter says so).
        size = len(request.path) + sum(len(k) + len(v) + 4 for k, v in request.headers.raw_items())
        if size > MAX_HTTP_REQUEST:
            self.refused["request_too_large"] += 1
            return _error_response(431, "request_too_large", f"the request line and headers are {size} bytes; the "
                                   f"limit is {MAX_HTTP_REQUEST}")
        peer = conn.remote_address
        addr = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        if self.open[addr] >= self.per_address:
            self.refused["too_many_connections"] += 1
            return _error_response(429, "too_many_connections", f"{addr} holds {self.open[addr]} connections to "
                                   f"this ticker; the limit is {self.per_address} per address")
        self.open[addr] += 1
        conn.connection_lost_waiter.add_done_callback(lambda _: self._release(addr))
        return None

    def _release(self, addr: str) -> None:
        n = self.open[addr] - 1
        if n > 0:
            self.open[addr] = n
        else:
            del self.open[addr]

    def stats(self) -> dict[str, Any]:
        """Return ``GET /stats``: the ticker's counters, then the WebSocket's.

        ``ws_clients`` connections; ``ws_messages`` WebSocket messages sent and ``ws_objects`` the objects in them
        (more objects than messages: batching); ``ws_encodes`` JSON serialisations of objects (one per object,
        however many clients get it); ``ws_conflated`` objects merged into an older one for a slow client;
        ``ws_flushes`` wake-ups of the fan-out; ``http_refused`` connections refused by reason
        (``too_many_connections``, ``request_too_large``).
        """
        return {**self._stats(), "ws_clients": len(self.clients), **self.counts,
                "ws_conflated": sum(c.conflated for c in self.clients), "http_refused": dict(self.refused)}

    async def _history_response(self, q: dict[str, str]) -> Response:
        symbol = q.get("symbol", "")
        interval = q.get("interval", "1m")
        ix = self.feed.index
        if symbol not in self.feed.state.symbols and (ix is None or symbol != ix.name):
            return _error_response(400, "unknown_symbol", f"unknown symbol {symbol!r}")
        try:
            interval_ns(interval)
        except ValueError:
            return _error_response(400, "bad_interval", f"unknown interval {interval!r}: 1s, 1m, 5m, 15m, 1h or 1d")
        try:
            end = parse_time(q["to"]) if "to" in q else time.time_ns()
            start = parse_time(q["from"]) if "from" in q else end - DAY_NS
        except ValueError as e:
            return _error_response(400, "bad_time", str(e))
        try:
            bars = await asyncio.to_thread(self._history, symbol, interval, start, end)
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


def parse_time(s: str) -> int:
    """Return nanoseconds since the epoch from decimal text or an ISO 8601 time (UTC when no offset is given).

    Decimal text (ASCII digits, optionally after a ``-``) is taken exactly, so a JavaScript client sends a
    ``from_ns``/``to_ns`` it was given unchanged; an ISO 8601 time counts to the microsecond (further digits
    are dropped).

    Parameters
    ----------
    s
        The time, as ``/history``'s ``from`` and ``to`` take it.

    Returns
    -------
    int
        Nanoseconds since the Unix epoch.

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


def _response(status: int, body: bytes, ctype: str, cache: str = "no-cache", cors: bool = False) -> Response:
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", cache)])
    if cors:
        headers["Access-Control-Allow-Origin"] = "*"
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _json_response(obj: Any, status: int = 200) -> Response:
    # Readable from any page: the live page of one ticker reads /history of the other after a failover.
    return _response(status, _json.encode(obj), "application/json", cors=True)


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
