"""The market data client: a live, exact copy of the ticker's quotes, depth, bars and tape.

:class:`MarketDataClient` reads the ticker's ZeroMQ feed (``docs/market-data.md``,
sections 2, 3 and 5) with the Clone pattern of the ZeroMQ guide:

1. a SUB socket subscribes to the topics of the symbols asked for (``qTCS\\0``,
   ``dTCS\\0``, ``bTCS\\0``), or to the kind prefixes (``q``, ``d``, ``b``) for
   every symbol, and to the heartbeat ``h\\0``; what arrives is held;
2. a DEALER asks the ticker's snapshot socket (a ROUTER) for the symbols' whole
   state, each object carrying the ``seq`` of the last message of its topic;
3. the held messages, then the later ones, whose ``seq`` is above the last
   applied of their topic are applied in order, topic by topic.

Per topic the ``seq`` counts from 1 without gaps, so the client knows when it
missed something.  The ordering, the holding, the dropping of duplicates and the
finding of gaps are :class:`~fabric.stream.ShardStream`'s (the gateway and the
ticker follow the matchers with it too), in its mode without replays: the feed
has no replay service, so a topic that lost messages waits for a snapshot.

- a message whose ``seq`` is more than one above the last applied of its topic
  means messages were lost (the ticker's high-water mark dropped them, section
  5): the gap is counted, a snapshot of that symbol is asked for, and its
  messages are held from then on, while the other symbols go on; when the
  snapshot comes, the held messages above its ``seq`` are applied (and should
  they skip some too, another snapshot is asked for).  The message that showed
  the gap (and anything held before it) is not kept: it came before the
  request was sent, so the ticker's answer already has it;
- a message at or one below the last applied ``seq`` is a duplicate and is
  ignored (so is anything at or below a snapshot's ``seq``: the feed delivers,
  after a snapshot, what was published before it);
- a message more than one *below* the last applied ``seq`` means the ticker
  started over (its ``seq`` counts from 1 again): the symbol is taken afresh
  from a snapshot (``stats.resets``);
- whenever the SUB's connection to the ticker drops (a socket monitor tells),
  a restarted ticker's numbers mean nothing against the old ones: every symbol
  is taken afresh from a snapshot once the connection is back (``stats.reconnects``),
  and what the lost connection left unread is dropped.  This, not the ``seq``
  rule above, is what catches a restart in practice: a ticker process cannot
  restart without its TCP connections dropping.  (A restart the client could
  not see, behind a proxy, that brings a topic's ``seq`` back to exactly the
  last applied or one below, would be taken for duplicates until the next
  message shows a gap.)

**Several tickers** (A and B feeds, ``docs/market-data.md``, section 9): given the
addresses of more than one ticker, the client follows the first and fails over to the
next when the one it follows dies (its connection drops), falls silent (nothing, not
even the heartbeat that comes every second, for ``silence`` seconds) or cannot be
reached: it subscribes to the next ticker's feed and takes every symbol from that
ticker's snapshot, exactly as after a reconnect, keeping the state it has meanwhile.
The tickers follow the same matchers, so they hold the same market, but each numbers
its topics its own way: the per-topic ``seq`` orders one ticker's messages, and the
trades' ``trade_id`` (per symbol, from 1, the matcher's) orders the market across
tickers.  So a quote is applied only if it is not older than the one held:

- a quote whose ``trade_id`` is below the held one's, with a ``last_ts`` not after
  it, comes from a ticker that is behind (``stats.stale``): it is not applied, and
  the symbol waits, as it is, for that ticker to catch up;
- a print (``prints``) whose ``trade_id`` the client has already had is dropped from
  the quote (``stats.duplicate_prints``): each trade is delivered once, in order;
- a print further on than the next ``trade_id`` counts the trades skipped
  (``stats.missed_prints``: more than the 50 a snapshot carries passed between the
  last print and a snapshot; the quote's totals are exact all the same);
- a bar with fewer ``trades`` than the held bar of the same ``start`` is older, and
  not applied;
- a quote whose ``trade_id`` is lower but whose ``last_ts`` is later, or with no
  trade at all after some, starts a new session (its shard's matcher began a new
  journal): the tape and the bars start over.

A snapshot request is sent only once the SUB is connected and has received
something (the ticker's heartbeat comes every second), so that the subscriptions
are in place at the ticker before it takes the snapshot; after
:data:`SUB_GRACE` seconds connected it is sent anyway.  A request unanswered
within ``timeout`` seconds is given up (the DEALER is replaced, so a late answer
is never mistaken for the next one) and sent again after a growing pause; while
the ticker is not running the client simply waits for it, holding nothing.  A
malformed message or answer is logged and counted (``stats.malformed``), never
raised.

**Halts and the index.** The trading state of each symbol followed (``s<SYMBOL>\\0``), the market's
(``m\\0``) and the market index (``i<NAME>\\0``) are whole objects, each a topic of its own: the
client keeps the latest of each (:meth:`MarketDataClient.trading_state`, :meth:`MarketDataClient.market`,
:meth:`MarketDataClient.index`), from the feed, and from every snapshot answer (which carries them
all); one whose ``seq`` skips asks for a snapshot, as a gap does.

Everything happens in the caller's thread, in :meth:`MarketDataClient.poll`: a
``zmq.Poller`` over the SUB, the DEALER and the SUB's monitor; no background
thread.

Examples
--------
>>> with MarketDataClient("tcp://127.0.0.1:7180", "tcp://127.0.0.1:7182", ["TCS"]) as md:  # doctest: +SKIP
...     md.wait_ready(5)
...     for u in md.poll(1.0):
...         if u.kind == "quote":
...             print(u.symbol, u.data["last"], md.tape(u.symbol)[-1:])
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeGuard

import msgpack
import zmq

from fabric.feedtopics import HEARTBEAT_TOPIC, KIND_OF, KINDS, MARKET_TOPIC, PREFIX, feed_topic
from fabric.marketstate import TAPE_LEN  # the prints a ticker keeps per symbol: the client keeps as many
from fabric.stream import ShardStream

__all__ = [
    "HEARTBEAT_TOPIC",
    "KINDS",
    "MarketDataClient",
    "Stats",
    "Update",
    "quote_order",
    "topic_of",
]

log = logging.getLogger(__name__)


BARS_KEPT: Final = 1000  # bars kept per symbol and interval (what the ticker keeps)
HELD_MAX: Final = 100_000  # messages held per topic while its symbol's snapshot is awaited (older ones are dropped)
SUB_GRACE: Final = 1.5  # seconds connected after which a snapshot is asked for even if nothing came yet
BACKOFF_FIRST: Final = 0.2  # pause after a first unanswered snapshot request, doubling up to BACKOFF_MAX
BACKOFF_MAX: Final = 5.0
SILENCE_S: Final = 3.0  # seconds without a message (the ticker's heartbeat comes every second) before failing over
CONNECT_S: Final = 1.0  # seconds without a connection to a ticker before failing over (when silence is longer)
DRAIN_BATCH: Final = 10_000  # feed messages read per turn before the other sockets get a look


topic_of = feed_topic  # the feed topic of a kind and symbol (fabric.feedtopics)


class Update(NamedTuple):
    """One change of the client's state, as :meth:`MarketDataClient.poll` returns them.

    Attributes
    ----------
    kind
        ``"quote"``, ``"depth"``, ``"bars"``, ``"state"`` (a symbol's trading state), ``"market"`` (the
        market's), ``"index"`` or ``"heartbeat"``.
    symbol
        The symbol (the index's name for ``index``; ``None`` for ``market`` and a heartbeat).
    data
        The object as the ticker sent it (``docs/market-data.md``, section 2): a
        ``quote`` whole, a ``depth`` whole, a ``bars`` with the bars that changed.
    snapshot
        Whether it came from a snapshot (then a ``bars`` object holds every bar).
    """

    kind: str
    symbol: str | None
    data: dict[str, Any]
    snapshot: bool = False


@dataclass
class Stats:
    """What the client has seen.

    Attributes
    ----------
    messages
        Feed messages received (heartbeats included).
    applied
        Feed messages applied to the state.
    gaps
        Times a topic's ``seq`` skipped ahead (messages lost): each led to a snapshot.
    duplicates
        Messages ignored because their ``seq`` was already applied.
    resets
        Times a topic's ``seq`` went back by more than one (the ticker started over).
    reconnects
        Times the connection to the ticker's feed dropped and came back.
    failovers
        Times the client left the ticker it followed for the next one (several tickers only).
    stale
        Quotes not applied because they were older than the one held (from a ticker that is behind).
    duplicate_prints
        Prints dropped from quotes because the client had them already (after a failover).
    missed_prints
        Trades the client has in its totals but never got the print of (more than a snapshot's 50 passed).
    snapshots
        Snapshot answers applied.
    snapshot_requests
        Snapshot requests sent (the first, after gaps, and again after timeouts).
    snapshot_timeouts
        Snapshot requests unanswered within the timeout.
    malformed
        Messages and answers that were not what the spec says (logged, ignored).
    errors
        ``error`` answers of the snapshot socket.
    last_heartbeat
        The ``ts`` of the ticker's last heartbeat (nanoseconds since the epoch), or ``None``.
    last_heartbeat_at
        When it arrived, by this machine's clock (``time.time()``), or ``None``.
    """

    messages: int = 0
    applied: int = 0
    gaps: int = 0
    duplicates: int = 0
    resets: int = 0
    reconnects: int = 0
    failovers: int = 0
    stale: int = 0
    duplicate_prints: int = 0
    missed_prints: int = 0
    snapshots: int = 0
    snapshot_requests: int = 0
    snapshot_timeouts: int = 0
    malformed: int = 0
    errors: int = 0
    last_heartbeat: int | None = None
    last_heartbeat_at: float | None = None


@dataclass
class _Symbol:
    """One symbol's state (where each of its topics stands is the client's ShardStream's)."""

    symbol: str
    topics: dict[str, bytes] = field(default_factory=dict)  # kind -> its feed topic, for the kinds followed
    quote: dict[str, Any] | None = None
    depth: dict[str, Any] | None = None
    bars: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # interval -> start -> bar
    tape: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=TAPE_LEN))
    seq: dict[str, int] = field(default_factory=dict)  # kind -> seq of the last message applied
    fresh: set[str] = field(default_factory=set)  # kinds with no live message applied since the snapshot


class _Malformed(ValueError):
    """A message that is not what the spec says."""


_ALL: Final = "*"  # the in-flight request asked for every symbol (of the client)


class MarketDataClient:
    """A live copy of the ticker's market data, kept exact by the Clone pattern (see the module's docstring).

    Parameters
    ----------
    pub
        The ticker's feed (PUB) address, e.g. ``"tcp://127.0.0.1:7180"``; or the feeds of several tickers of the
        same market, in the order to try them (A and B feeds: the client fails over from one to the next).
    snapshot
        The ticker's snapshot (ROUTER) address, e.g. ``"tcp://127.0.0.1:7182"``; or one per feed.
    symbols
        The symbols to follow; ``None`` for every symbol the ticker has.
    kinds
        Which objects to follow: any of ``"quote"``, ``"depth"``, ``"bars"``.
    ctx
        The ZeroMQ context (default: the process's shared one).
    timeout
        Seconds to wait for a snapshot answer before asking again.
    silence
        With several tickers: seconds without anything from the one followed after which the client fails over
        to the next (and without a connection to it: this or one second, whichever is shorter).

    Attributes
    ----------
    pub, snapshot
        The addresses of the ticker followed now.
    feeds
        Every ticker's ``(pub, snapshot)`` addresses, in the order given.
    requested
        The symbols asked for, or ``None`` for every symbol.
    kinds
        The kinds followed.
    stats
        What was seen: messages, gaps, snapshots, the last heartbeat... (:class:`Stats`).
    unknown
        The symbols asked for that the ticker said it does not know (they get no state).

    Examples
    --------
    >>> md = MarketDataClient("tcp://127.0.0.1:7180", "tcp://127.0.0.1:7182", ["TCS", "INFY"])  # doctest: +SKIP
    >>> md.wait_ready(5.0)                                                                      # doctest: +SKIP
    True
    >>> md.quote("TCS")["last"]                                                                 # doctest: +SKIP
    '3512.35'
    >>> md.close()                                                                              # doctest: +SKIP
    """

    def __init__(self, pub: str | Sequence[str], snapshot: str | Sequence[str], symbols: Iterable[str] | None = None,
                 kinds: Iterable[str] = KINDS, *, ctx: zmq.Context[Any] | None = None, timeout: float = 2.0,
                 silence: float = SILENCE_S) -> None:
        pubs = [pub] if isinstance(pub, str) else list(pub)
        snaps = [snapshot] if isinstance(snapshot, str) else list(snapshot)
        if not pubs or len(pubs) != len(snaps):
            raise ValueError(f"give one snapshot address per feed address: {len(pubs)} feeds, {len(snaps)} snapshots")
        self.feeds: tuple[tuple[str, str], ...] = tuple(zip(pubs, snaps, strict=True))
        self._at = 0  # the ticker followed: its index in feeds
        self.kinds: tuple[str, ...] = tuple(dict.fromkeys(kinds))
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be some of {', '.join(KINDS)}, got {list(kinds)!r}")
        self.requested: tuple[str, ...] | None = None if symbols is None else tuple(dict.fromkeys(symbols))
        if self.requested is not None:
            for s in self.requested:
                if not s or "\x00" in s:
                    raise ValueError(f"not a symbol: {s!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if silence <= 0:
            raise ValueError("silence must be positive")
        self.timeout = timeout
        self.silence = silence
        self.stats = Stats()
        self.unknown: set[str] = set()  # symbols the ticker said it does not know
        # Every topic of the feed in one stream, ordered per topic by its seq; a loss makes the topic wait for
        # its symbol's snapshot (the ticker has no replay service).
        self._stream: ShardStream[dict[str, Any]] = ShardStream(0, replays=False, hold_max=HELD_MAX)
        self._states: dict[str, _Symbol] = {}
        for s in self.requested or ():
            self._new_state(s)
        self._need: set[str] = set()  # symbols to ask a snapshot of
        self._need_all = True  # ask for every symbol of the client (the first request, and after a reconnect)
        self._inflight: set[str] | str | None = None  # symbols of the request awaiting its answer, or _ALL
        self._inflight_deadline = 0.0
        self._attempt = 0  # consecutive unanswered requests
        self._next_request_at = 0.0
        self._snapshotted = False  # a snapshot answer was applied since the client started or reconnected
        self._connected = False
        self._ever_connected = False
        self._connected_at = 0.0
        self._heard = False  # something came on the feed since it (re)connected: the subscriptions are in place
        self._backlog: list[Update] = []  # updates produced by wait_ready, for the next poll
        self._closed = False
        # The whole objects of the market: (kind, key) -> the latest, and the seq of this connection's last one.
        self._market: dict[tuple[str, str], dict[str, Any]] = {}
        self._mseq: dict[tuple[str, str], int] = {}

        self._heard_at = 0.0  # when something last came from the ticker followed (or it was chosen)

        self.ctx: zmq.Context[Any] = ctx or zmq.Context.instance()
        self._poller = zmq.Poller()
        self._sub: zmq.Socket[Any]
        self._monitor: zmq.Socket[Any] | None = None
        self._open_feed(time.monotonic())
        self._dealer: zmq.Socket[Any] | None = None
        self._new_dealer()

    @property
    def pub(self) -> str:
        """The feed (PUB) address of the ticker followed now."""
        return self.feeds[self._at][0]

    @property
    def snapshot(self) -> str:
        """The snapshot (ROUTER) address of the ticker followed now."""
        return self.feeds[self._at][1]

    # ---------------------------------------------------------------- the state

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols followed: those asked for, or every symbol the ticker has sent (without the unknown ones)."""
        return tuple(s for s in self._states if s not in self.unknown)

    def quote(self, symbol: str) -> dict[str, Any] | None:
        """Return the symbol's last ``quote`` object, or ``None`` when none came yet."""
        st = self._states.get(symbol)
        return None if st is None else st.quote

    def depth(self, symbol: str) -> dict[str, Any] | None:
        """Return the symbol's last ``depth`` object, or ``None`` when none came yet."""
        st = self._states.get(symbol)
        return None if st is None else st.depth

    def bars(self, symbol: str, interval: str = "1m") -> list[dict[str, Any]]:
        """Return the symbol's bars of ``interval`` (``"1s"``, ``"1m"``), oldest first; the last one may be open."""
        st = self._states.get(symbol)
        if st is None:
            return []
        per = st.bars.get(interval, {})
        return [per[k] for k in sorted(per)]

    def tape(self, symbol: str) -> list[dict[str, Any]]:
        """Return the symbol's last trades (at most 50), oldest first.

        Each is ``{trade_id, ts, ts_ns, price, qty, aggressor}``, as the ticker's ``prints`` carry it.
        """
        st = self._states.get(symbol)
        return [] if st is None else list(st.tape)

    def trading_state(self, symbol: str) -> dict[str, Any] | None:
        """Return the symbol's last ``state`` object (``state``: ``trading`` or ``halted``), or ``None`` before one."""
        return self._market.get(("state", symbol))

    def halted(self) -> list[str]:
        """Return the symbols halted now (on their own or by a market-wide halt), sorted."""
        return sorted(k for (kind, k), o in self._market.items() if kind == "state" and o.get("state") == "halted")

    def market(self) -> dict[str, Any] | None:
        """Return the market's last ``market`` object (a market-wide halt, or trading), or ``None`` before one."""
        return self._market.get(("market", ""))

    def index(self) -> dict[str, Any] | None:
        """Return the market index's last ``index`` object (value, change...), or ``None`` (none yet, or no index)."""
        return next((o for (kind, _), o in self._market.items() if kind == "index"), None)

    def seq(self, symbol: str, kind: str) -> int:
        """Return the ``seq`` of the last ``kind`` message applied for ``symbol`` (0 when none)."""
        st = self._states.get(symbol)
        return 0 if st is None else st.seq.get(kind, 0)

    @property
    def ready(self) -> bool:
        """Whether the state is exact: a snapshot was applied, and none is awaited."""
        return (self._snapshotted and self._inflight is None and not self._need and not self._need_all
                and all(self._synced(st) for s, st in self._states.items() if s not in self.unknown))

    @property
    def connected(self) -> bool:
        """Whether the feed's connection to the ticker is up."""
        return self._connected

    @property
    def state(self) -> str:
        """``"waiting"`` (the ticker was never reached), ``"syncing"`` (a snapshot is awaited), ``"live"``,
        ``"reconnecting"`` (the connection dropped) or ``"closed"``."""
        if self._closed:
            return "closed"
        if not self._connected:
            return "reconnecting" if self._ever_connected else "waiting"
        return "live" if self.ready else "syncing"

    # ----------------------------------------------------------------- the loop

    def poll(self, timeout: float = 0.0) -> list[Update]:
        """Receive and apply what has arrived, waiting up to ``timeout`` seconds for a first update.

        Returns
        -------
        list of Update
            The changes, in the order applied (heartbeats included).
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        out, self._backlog = self._backlog, []
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            now = time.monotonic()
            self._timers(now)
            if out:
                # Read what is already waiting, without blocking, and return.
                self._turn(0, out)
                return out
            left = deadline - now
            if left <= 0:
                self._turn(0, out)
                return out
            wake = self._next_timer(now)
            wait = left if wake is None else min(left, max(0.0, wake - now))
            self._turn(int(wait * 1000) + (1 if wait > 0 else 0), out)

    def updates(self, idle: float | None = None) -> Iterator[Update]:
        """Yield updates as they come; stop after ``idle`` seconds without any (``None``: never)."""
        while True:
            batch = self.poll(1.0 if idle is None else idle)
            if not batch and idle is not None:
                return
            yield from batch

    def wait_ready(self, timeout: float) -> bool:
        """Poll until the state is exact (:attr:`ready`) or ``timeout`` seconds passed; return :attr:`ready`.

        The updates received meanwhile are kept for the next :meth:`poll`.
        """
        deadline = time.monotonic() + timeout
        while not self.ready:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got = self.poll(min(left, 0.1))
            self._backlog.extend(got)
        return self.ready

    def _turn(self, wait_ms: int, out: list[Update]) -> None:
        """Poll the sockets once (up to ``wait_ms``) and handle what is ready: monitor, feed, then snapshots."""
        events = dict(self._poller.poll(wait_ms))
        now = time.monotonic()
        if self._monitor is not None and events.get(self._monitor):
            self._read_monitor(now)
        if events.get(self._sub):
            self._read_feed(out)
        if self._dealer is not None and events.get(self._dealer):
            self._read_answers(out)
        self._timers(time.monotonic())

    def _next_timer(self, now: float) -> float | None:
        """When something must be done even if nothing arrives: a request's deadline, a pause's end, the grace,
        a failover."""
        at: float | None = None
        if self._inflight is not None:
            at = self._inflight_deadline
        elif (self._need or self._need_all) and self._connected:
            at = self._next_request_at
            if not self._heard:
                at = max(at, self._connected_at + SUB_GRACE)
        if len(self.feeds) > 1:
            quiet = self._heard_at + self._patience()
            at = quiet if at is None else min(at, quiet)
        return at

    def _patience(self) -> float:
        """How long the ticker followed may be silent before the client fails over (several tickers only)."""
        return self.silence if self._connected else min(self.silence, CONNECT_S)

    def _timers(self, now: float) -> None:
        if len(self.feeds) > 1 and now - self._heard_at > self._patience():
            self._fail_over(now, f"nothing from the ticker at {self.pub} for {self.silence:g} s"
                            if self._connected else f"no connection to the ticker at {self.pub}")
        if self._inflight is not None and now >= self._inflight_deadline:
            self.stats.snapshot_timeouts += 1
            self._attempt += 1
            pause = min(BACKOFF_FIRST * 2 ** (self._attempt - 1), BACKOFF_MAX)
            log.warning("no snapshot from %s within %.1f s (attempt %d); asking again in %.1f s",
                        self.snapshot, self.timeout, self._attempt, pause)
            self._requeue_inflight()
            self._new_dealer()  # a late answer to the old request must not be taken for the next one's
            self._next_request_at = now + pause
        self._maybe_request(now)

    def _requeue_inflight(self) -> None:
        if self._inflight == _ALL:
            self._need_all = True
        elif isinstance(self._inflight, set):
            self._need |= self._inflight
        self._inflight = None

    # ------------------------------------------------------------ the sockets

    def _new_dealer(self) -> None:
        if self._dealer is not None:
            with contextlib.suppress(KeyError):
                self._poller.unregister(self._dealer)
            self._dealer.close(0)
        d = self.ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(self.snapshot)
        self._dealer = d
        self._poller.register(d, zmq.POLLIN)

    def _open_feed(self, now: float) -> None:
        """Subscribe to the feed of the ticker followed (``self._at``): a new SUB, and its monitor."""
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        self._sub = sub
        self._monitor = None
        self._connected = False
        self._heard_at = now
        if self.pub.startswith(("tcp://", "ipc://")):
            self._monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        else:  # inproc and the like: no connection events; take the connection as made
            self._on_connected(now)
        if self.requested is None:
            for kind in self.kinds:
                sub.subscribe(PREFIX[kind])
            sub.subscribe(b"s")
        else:
            for sym in self.requested:
                for kind in self.kinds:
                    sub.subscribe(topic_of(kind, sym))
                sub.subscribe(topic_of("state", sym))
        sub.subscribe(MARKET_TOPIC)
        sub.subscribe(b"i")
        sub.subscribe(HEARTBEAT_TOPIC)  # last: once it is heard, the subscriptions before it are in place
        sub.connect(self.pub)
        self._poller.register(sub, zmq.POLLIN)
        if self._monitor is not None:
            self._poller.register(self._monitor, zmq.POLLIN)

    def _close_feed(self) -> None:
        """Close the SUB and its monitor; what they held unread goes with them."""
        for s in (self._sub, self._monitor):
            if s is not None:
                with contextlib.suppress(KeyError):
                    self._poller.unregister(s)
        if self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sub.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        self._sub.close(0)

    def _fail_over(self, now: float, why: str) -> None:
        """Leave the ticker followed for the next one: its feed, then every symbol from its snapshot.

        The state stays as it is until the snapshot comes (so ``quote()`` and the others keep answering); the
        new ticker's numbers mean nothing against the old one's, so everything is taken afresh, as after a
        reconnect, and the trade ids keep the state from going back (see the module's docstring).
        """
        self._close_feed()
        self._at = (self._at + 1) % len(self.feeds)
        self.stats.failovers += 1
        log.warning("%s; failing over to the ticker at %s", why, self.pub)
        self._open_feed(now)
        self._resync_all()

    def _on_connected(self, now: float) -> None:
        self._connected = True
        self._ever_connected = True
        self._connected_at = now
        self._heard = False

    def _read_monitor(self, now: float) -> None:
        from zmq.utils.monitor import recv_monitor_message

        assert self._monitor is not None
        while True:
            try:
                ev = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except (zmq.ZMQError, ValueError, KeyError):  # a monitor message we cannot read: not worth stopping for
                return
            if ev["event"] == zmq.EVENT_CONNECTED:
                log.info("connected to the ticker's feed at %s", self.pub)
                self._on_connected(now)
            elif ev["event"] == zmq.EVENT_DISCONNECTED and self._connected and len(self.feeds) > 1:
                self._fail_over(now, f"lost the ticker's feed at {self.pub}")
                return
            elif ev["event"] == zmq.EVENT_DISCONNECTED and self._connected:
                log.warning("lost the ticker's feed at %s; every symbol will be taken afresh", self.pub)
                self._connected = False
                self._discard_feed()
                self.stats.reconnects += 1
                self._resync_all()

    def _discard_feed(self) -> None:
        """Drop what the lost connection left in the SUB: its ``seq`` mean nothing to a restarted ticker.

        Its messages are all queued by the time the connection is known lost (they came before the
        end of the TCP stream); a new connection's come after the reconnect interval.
        """
        n = 0
        while True:
            try:
                self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
        self.stats.messages += n
        if n:
            log.info("dropped %d messages of the lost connection", n)

    def _resync_all(self) -> None:
        """Forget the sequence of every symbol: hold what comes, and ask a snapshot of everything."""
        for st in self._states.values():
            self._hold(st)  # what is held is the old ticker's; the new one's numbers start over
        self._mseq.clear()
        self._need.clear()
        self._need_all = True
        self._inflight = None
        self._snapshotted = False
        self._attempt = 0
        self._next_request_at = 0.0
        self._new_dealer()

    def _maybe_request(self, now: float) -> None:
        if self._inflight is not None or not (self._need or self._need_all) or now < self._next_request_at:
            return
        if not self._connected or (not self._heard and now - self._connected_at < SUB_GRACE):
            return  # the subscriptions may not be at the ticker yet: its snapshot could miss what follows
        symbols: list[str] | None
        if self._need_all:
            inflight: set[str] | str = _ALL
            symbols = None if self.requested is None else [s for s in self.requested if s not in self.unknown]
            if symbols == []:  # every symbol asked for is unknown: nothing to ask
                self._need_all = False
                self._snapshotted = True
                return
        else:
            inflight = set(self._need)
            symbols = sorted(self._need)
        assert self._dealer is not None
        try:
            self._dealer.send(msgpack.packb({"t": "snapshot_request", "v": 1, "symbols": symbols}), zmq.NOBLOCK)
        except zmq.Again:  # cannot happen on a fresh DEALER; try again later rather than block
            self._next_request_at = now + BACKOFF_FIRST
            return
        self.stats.snapshot_requests += 1
        self._inflight = inflight
        self._inflight_deadline = now + self.timeout
        self._need.clear()
        self._need_all = False

    # --------------------------------------------------------------- the feed

    def _read_feed(self, out: list[Update]) -> None:
        now = time.monotonic()
        for _ in range(DRAIN_BATCH):
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.stats.messages += 1
            self._heard = True
            self._heard_at = now
            try:
                self._on_feed(frames, out, now)
            except _Malformed as e:
                self.stats.malformed += 1
                log.warning("malformed feed message ignored: %s", e)

    def _on_feed(self, frames: list[bytes], out: list[Update], now: float) -> None:
        if len(frames) != 2:
            raise _Malformed(f"{len(frames)} frames, not 2 (topic, body)")
        topic, body = frames
        if topic == HEARTBEAT_TOPIC:
            msg = _unpack(body)
            ts = msg.get("ts")
            if not _is_int(ts):
                raise _Malformed(f"heartbeat without an integer ts: {msg!r:.200}")
            self.stats.last_heartbeat = ts
            self.stats.last_heartbeat_at = time.time()
            out.append(Update("heartbeat", None, msg))
            return
        if topic == MARKET_TOPIC or topic[:1] in (b"s", b"i"):
            self._on_market(topic, body, out)
            return
        kind = KIND_OF.get(topic[0]) if topic else None
        if kind is None or len(topic) < 3 or topic[-1] != 0:
            raise _Malformed(f"not a feed topic: {topic[:60]!r}")
        try:
            sym = topic[1:-1].decode()
        except UnicodeDecodeError:
            raise _Malformed(f"topic is not UTF-8: {topic[:60]!r}") from None
        msg = _unpack(body)
        _check(kind, sym, msg)
        if kind not in self.kinds or sym in self.unknown:
            return
        st = self._states.get(sym)
        if st is None:
            if self.requested is not None:
                return  # not one of ours (a subscription prefix cannot match another symbol: topics end in NUL)
            st = self._new_state(sym)
            if self._snapshotted and not self._need_all and self._inflight != _ALL:
                self._need.add(sym)  # a symbol the first snapshot did not have
        stream = self._stream
        seq: int = msg["seq"]
        if stream.waiting(topic):  # its symbol's snapshot is awaited: the stream holds the message till then
            stream.offer(topic, seq, seq, msg, in_order=True, now=now)
            self.stats.duplicates = stream.duplicates
            return
        last = stream.delivered(topic)
        if seq <= last and kind in st.fresh:
            return  # published before the snapshot (the feed delivers it after the answer): the snapshot has it
        if seq < last - 1:
            # Not a duplicate of the last one or two: numbers from a ticker that started over (and that the
            # stream would take for duplicates). The ticker publishes no per-topic heartbeat to tell.
            self.stats.resets += 1
            log.warning("%s %s: seq %d after %d (the ticker started over?); asking a snapshot", kind, sym, seq, last)
            self._resync(st)
            return
        for m in stream.offer(topic, seq, seq, msg, in_order=True, now=now):  # the SUB keeps each topic's order
            st.fresh.discard(kind)
            self._apply(st, kind, m, out)
        self.stats.duplicates = stream.duplicates
        if topic in stream.holes:
            self._gap(st, kind, f"seq {seq} after {last} ({seq - last - 1} lost)")

    def _on_market(self, topic: bytes, body: bytes, out: list[Update]) -> None:
        # A trading state, the market's or the index: the latest whole object of its topic counts.
        kind = "market" if topic == MARKET_TOPIC else "state" if topic[:1] == b"s" else "index"
        if len(topic) < 2 or topic[-1] != 0 or (kind != "market" and len(topic) < 3):
            raise _Malformed(f"not a feed topic: {topic[:60]!r}")
        try:
            key = topic[1:-1].decode()
        except UnicodeDecodeError:
            raise _Malformed(f"topic is not UTF-8: {topic[:60]!r}") from None
        msg = _unpack(body)
        if kind == "state" and ((self.requested is not None and key not in self.requested) or key in self.unknown):
            return
        seq = msg.get("seq")
        if not _is_int(seq) or seq < 1 or msg.get("t") != kind:
            raise _Malformed(f"{kind} {key}: not a {kind} object with a seq: {msg!r:.200}")
        last = self._mseq.get((kind, key), 0)
        if seq <= last:
            self.stats.duplicates += 1
            return
        if last and seq > last + 1:
            self.stats.gaps += 1
            log.warning("%s %s: seq %d after %d; asking a snapshot", kind, key, seq, last)
            self._need_all = True  # (the answer carries the market, the index and every state)
        self._take_market(kind, key, msg, out, snapshot=False)

    def _take_market(self, kind: str, key: str, msg: dict[str, Any], out: list[Update], snapshot: bool) -> None:
        self._mseq[(kind, key)] = msg.get("seq", 0)
        self._market[(kind, key)] = msg
        self.stats.applied += 1
        out.append(Update(kind, None if kind == "market" else key, msg, snapshot))

    def _market_answer(self, msg: dict[str, Any], good: dict[str, dict[str, Any]], out: list[Update]) -> None:
        # A snapshot answer's market, index and states: each taken unless this connection has a newer one.
        objs: list[tuple[str, str, Any]] = [("market", "", msg.get("market"))]
        ix = msg.get("index")
        if isinstance(ix, dict):
            objs.append(("index", str(ix.get("name")), ix))
        objs.extend(("state", sym, o.get("state")) for sym, o in good.items())
        for kind, key, obj in objs:
            if not isinstance(obj, dict) or not _is_int(obj.get("seq")):
                continue  # (a ticker without them)
            if (kind, key) not in self._market or obj["seq"] >= self._mseq.get((kind, key), 0):
                self._take_market(kind, key, obj, out, snapshot=True)

    def _new_state(self, sym: str) -> _Symbol:
        """Make the state of a symbol to follow; its topics hold what comes until its snapshot."""
        st = self._states[sym] = _Symbol(sym, {kind: topic_of(kind, sym) for kind in self.kinds})
        self._hold(st)
        return st

    def _synced(self, st: _Symbol) -> bool:
        """Whether the symbol's state is exact: its snapshot was applied and no other is awaited."""
        return not any(self._stream.waiting(topic) for topic in st.topics.values())

    def _hold(self, st: _Symbol) -> None:
        """Hold the symbol's messages until its next snapshot, dropping what is held (the snapshot will have it)."""
        for topic in st.topics.values():
            self._stream.hold(topic)
        st.fresh.clear()

    def _resync(self, st: _Symbol) -> None:
        """Ask a new snapshot of a symbol, holding its messages till then."""
        self._hold(st)
        self._need.add(st.symbol)

    def _gap(self, st: _Symbol, kind: str, what: str) -> None:
        """The stream found a topic of the symbol short of messages (they were dropped): take it afresh."""
        self.stats.gaps = self._stream.gaps
        log.info("%s %s: %s; asking a snapshot", kind, st.symbol, what)
        self._resync(st)

    def _apply(self, st: _Symbol, kind: str, msg: dict[str, Any], out: list[Update], snapshot: bool = False) -> None:
        st.seq[kind] = msg["seq"]
        if kind == "quote":
            order = quote_order(st.quote, msg)
            if order == "stale":  # from a ticker behind the one the state came from: wait for it to catch up
                self.stats.stale += 1
                return
            held = st.quote
            had = 0 if held is None or order == "reset" or not _is_int(held.get("trade_id")) else held["trade_id"]
            if order == "reset":  # the symbol's session started over (its shard's new journal)
                st.tape.clear()
                st.bars = {}
            prints = [p for p in msg.get("prints") or () if isinstance(p, dict) and _is_int(p.get("trade_id"))]
            new = [p for p in prints if p["trade_id"] > had]
            if new and held is not None and order != "reset":
                # Trades between the last print held and the first new one that no print brings.
                skipped = (new[0]["trade_id"] - had - 1) if not snapshot else (
                    msg["trade_id"] - had - len(new) if _is_int(msg.get("trade_id")) else 0)
                self.stats.missed_prints += max(0, skipped)
            if snapshot:
                st.tape.clear()  # a snapshot's prints are the whole tape
                st.tape.extend(prints)
            else:
                if len(new) != len(prints):
                    self.stats.duplicate_prints += len(prints) - len(new)
                    msg = {**msg, "prints": new}
                st.tape.extend(new)
            st.quote = msg
        elif kind == "depth":
            st.depth = msg
        else:
            kept: dict[str, list[dict[str, Any]]] = {}
            older = 0
            for interval, bars in msg["bars"].items():
                per = st.bars.setdefault(interval, {})
                lst = kept[interval] = []
                for b in bars:
                    old = per.get(b["start"])
                    if old is not None and _is_int(old.get("trades")) and _is_int(b.get("trades")) \
                            and b["trades"] < old["trades"]:
                        older += 1  # from a ticker behind: the bar held is further on
                        continue
                    per[b["start"]] = b
                    lst.append(b)
                if len(per) > BARS_KEPT:
                    for k in sorted(per)[:len(per) - BARS_KEPT]:
                        del per[k]
            if older:
                msg = {**msg, "bars": kept}
        if not snapshot:
            self.stats.applied += 1
        out.append(Update(kind, st.symbol, msg, snapshot))

    # ----------------------------------------------------------- the snapshots

    def _read_answers(self, out: list[Update]) -> None:
        assert self._dealer is not None
        while True:
            try:
                frames = self._dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._on_answer(frames[-1], out)
            except _Malformed as e:
                self.stats.malformed += 1
                log.warning("malformed snapshot answer from %s: %s", self.snapshot, e)
                self._fail_request()

    def _fail_request(self) -> None:
        """The in-flight request got an answer that cannot be used: ask again after a pause."""
        self._attempt += 1
        self._requeue_inflight()
        self._next_request_at = time.monotonic() + min(BACKOFF_FIRST * 2 ** (self._attempt - 1), BACKOFF_MAX)

    def _on_answer(self, body: bytes, out: list[Update]) -> None:
        msg = _unpack(body)
        if msg.get("t") == "error":
            self.stats.errors += 1
            log.error("the ticker's snapshot socket %s answered an error: %s: %s", self.snapshot,
                      msg.get("reason"), msg.get("text"))
            self._fail_request()
            return
        syms = msg.get("symbols")
        if msg.get("t") != "snapshot" or not isinstance(syms, dict):
            raise _Malformed(f"not a snapshot: {msg!r:.200}")
        unknown = msg.get("unknown") or []
        if not isinstance(unknown, list):
            raise _Malformed(f"unknown is not a list: {unknown!r:.200}")
        # Check every symbol's objects before changing anything.
        good: dict[str, dict[str, Any]] = {}
        for sym, objs in syms.items():
            try:
                if not isinstance(sym, str) or not isinstance(objs, dict):
                    raise _Malformed(f"{sym!r:.60}: not a symbol's objects")
                for kind in self.kinds:
                    obj = objs.get(kind)
                    if not isinstance(obj, dict):
                        raise _Malformed(f"{sym}: no {kind} object")
                    _check(kind, sym, obj, seq_from=0)
            except _Malformed as e:
                self.stats.malformed += 1
                log.warning("malformed snapshot of %r ignored: %s", sym, e)
                continue
            good[sym] = objs
        asked, self._inflight = self._inflight, None
        self._attempt = 0
        self.stats.snapshots += 1
        self._snapshotted = True
        self._market_answer(msg, good, out)
        for sym in unknown:
            if isinstance(sym, str) and sym not in self.unknown:
                log.warning("the ticker does not know the symbol %r", sym)
                self.unknown.add(sym)
                self._need.discard(sym)
                st = self._states.get(sym)
                if st is not None:
                    self._hold(st)  # drop what it held: it gets no state (its topics wait for good)
        for sym, objs in good.items():
            st = self._states.get(sym)
            if st is None:
                if self.requested is not None:
                    continue  # not asked for
                st = self._new_state(sym)
            if self._synced(st):
                continue  # its state is exact already: this answer may be older than what was applied
            self._apply_snapshot(st, objs, out)
        # A symbol asked for but absent from the answer (or its part malformed): ask again.
        if isinstance(asked, set):
            missing = {s for s in asked if s not in self.unknown and not self._synced(self._states[s])}
        else:
            missing = {s for s, st in self._states.items() if s not in self.unknown and not self._synced(st)}
        if missing:
            self._need |= missing
            self._next_request_at = time.monotonic() + BACKOFF_FIRST

    def _apply_snapshot(self, st: _Symbol, objs: dict[str, Any], out: list[Update]) -> None:
        # A snapshot is the whole state, unless its ticker is behind the one the state came from: then its bars
        # merge with those held, and a bar older than the one held is not taken.
        quote = objs.get("quote")
        if not (isinstance(quote, dict) and quote_order(st.quote, quote) == "stale"):
            st.bars = {}
        for kind in KINDS:  # the quote first: it says whether the symbol's session started over
            if kind in self.kinds:
                self._apply(st, kind, objs[kind], out, snapshot=True)
        st.fresh = set(self.kinds)
        self._need.discard(st.symbol)
        # Then what was held, topic by topic: the stream drops what the snapshot has and gives the rest in order.
        for kind, topic in st.topics.items():
            seq = objs[kind]["seq"]
            for msg in self._stream.jump(topic, seq, seq):
                st.fresh.discard(kind)
                self._apply(st, kind, msg, out)
            if topic in self._stream.holes:  # a gap among the held messages: the next snapshot has the rest
                self._gap(st, kind, f"held messages skip some after the snapshot's seq {seq}")
                return

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the sockets (the context is left alone)."""
        if self._closed:
            return
        self._closed = True
        self._close_feed()
        if self._dealer is not None:
            self._dealer.close(0)

    def __enter__(self) -> MarketDataClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MarketDataClient({self.pub!r}, {self.snapshot!r}, {len(self.feeds)} ticker(s), "
                f"{'all symbols' if self.requested is None else list(self.requested)!r}, {self.state})")


# ------------------------------------------------------------------ checking


def quote_order(held: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """Tell how a ``quote`` of a symbol stands against the one held, whichever ticker each came from.

    Returns
    -------
    str
        ``"newer"``: not older than the held one (its ``trade_id`` is not below it; or nothing is held);
        ``"stale"``: older (a lower ``trade_id``, a ``last_ts`` not later: from a ticker that is behind);
        ``"reset"``: the symbol's session started over (a lower ``trade_id`` but a later ``last_ts``, or no
        trade after some: its shard's matcher began a new journal).

    The rule every client of several tickers follows (``docs/market-data.md``, section 9): the tickers number
    their topics each their own way, but the trade ids and times are the matcher's, the same on every ticker.
    """
    if held is None:
        return "newer"
    had, got = held.get("trade_id"), new.get("trade_id")
    if not _is_int(had) or not _is_int(got) or got >= had:
        return "newer"
    if got == 0 or new.get("trades") == 0:
        return "reset"
    had_ts, got_ts = held.get("last_ts"), new.get("last_ts")
    if _is_int(had_ts) and _is_int(got_ts) and got_ts > had_ts:
        return "reset"
    return "stale"


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _unpack(body: bytes) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several kinds (ExtraData, FormatError, ValueError...)
        raise _Malformed(f"not msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(msg, dict):
        raise _Malformed(f"not a map: {msg!r:.200}")
    return msg


def _check(kind: str, sym: str, msg: dict[str, Any], seq_from: int = 1) -> None:
    """Raise :class:`_Malformed` unless ``msg`` is a ``kind`` object of ``sym`` with what the client uses."""
    seq = msg.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < seq_from:
        raise _Malformed(f"{kind} {sym}: seq {seq!r:.40} is not an integer >= {seq_from}")
    if msg.get("symbol", sym) != sym:
        raise _Malformed(f"{kind} {sym}: the body is of {msg.get('symbol')!r:.60}")
    if kind == "quote":
        prints = msg.get("prints")
        if prints is not None and not (isinstance(prints, list) and all(isinstance(p, dict) for p in prints)):
            raise _Malformed(f"quote {sym}: prints is not a list of objects")
    elif kind == "depth":
        for side in ("bids", "asks"):
            if not isinstance(msg.get(side, []), list):
                raise _Malformed(f"depth {sym}: {side} is not a list")
    else:
        bars = msg.get("bars")
        if not isinstance(bars, dict) or not all(
                isinstance(iv, str) and isinstance(lst, list)
                and all(isinstance(b, dict) and _is_int(b.get("start")) for b in lst) for iv, lst in bars.items()):
            raise _Malformed(f"bars {sym}: bars is not {{interval: [bar with an integer start, ...]}}")
