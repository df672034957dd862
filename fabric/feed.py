"""What the ticker publishes: sequenced quote, depth and bars objects built from a :class:`MarketState`.

:class:`MarketFeed` wraps a :class:`~fabric.marketstate.MarketState`.  The ticker
applies the matchers' ``Trade`` and ``BookLevel`` messages to it
(:meth:`MarketFeed.apply`), and once per turn of its loop takes what changed
(:meth:`MarketFeed.take`): for every symbol touched since the last turn, at most
one ``quote``, one ``depth`` and one ``bars`` object, each numbered by its
topic's ``seq``.  That is the ticker's own conflation: under load a turn covers
many trades and publishes the latest state once, with the turn's trades in the
quote's ``prints`` and every bar they touched in ``bars``.  The objects and
topics are specified in ``docs/market-data.md``; this module is their one
implementation (the ZeroMQ feed, the WebSocket and the snapshot service all
send what it builds).

Book level changes are applied a batch at a time: :meth:`MarketFeed.level` (the
ticker's path, one message) and :meth:`MarketFeed.levels` (a run of them) take
the topic's ``tseq`` at once but keep the change, and the batch is applied
before anything reads or otherwise changes the books (:meth:`MarketFeed.take`,
:meth:`MarketFeed.snapshot`...): only the last state of each price level counts,
and under load a level changes many times a turn (every order that joins,
fills or leaves it), so each changed level is set once per turn instead of once
per message.

Every time in nanoseconds since the epoch (``ts``, ``last_ts``, a print's
``ts``, a bar's ``start``) is an integer, and beside it, under the same name
with ``_ns`` appended, its exact decimal text: those integers exceed 2**53,
which JavaScript's ``JSON.parse`` (and most msgpack decoders' default) rounds.

Besides the symbols' objects, the feed carries the trading state of each symbol (``state``: halted or
trading, from the matchers' ``trading_state`` messages, :meth:`MarketFeed.trading_state`), of the market
(``market``: a market-wide halt), and the market index (``index``, when the topology names one: kept one
trade at a time by :class:`~fabric.index.MarketIndex`), each at most once a turn.

No sockets here: the ticker node and the benchmark drive it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from fabric.feedtopics import HEARTBEAT_TOPIC, KINDS, feed_topic, split_feed_topic
from fabric.index import MarketIndex
from fabric.instruments import Instrument
from fabric.marketstate import DEPTH, TRADING, Bar, BarSeries, MarketState, SymbolState, TapeEntry, price_of
from fabric.protocol import BookLevel, BookSnapshot, SessionEvent, Trade, TradingState

__all__ = [
    "FEED_VERSION",
    "HEARTBEAT_TOPIC",
    "KINDS",
    "FeedTurn",
    "MarketFeed",
    "feed_topic",
    "split_feed_topic",
]

FEED_VERSION: Final = 1

@dataclass
class FeedTurn:
    """What one :meth:`MarketFeed.take` produced.

    Attributes
    ----------
    messages
        ``(kind, symbol, object)`` in publishing order: per symbol its quote, then depth, then bars.
    trades
        ``(symbol, trade)`` of every trade applied since the last turn, in order (the history's ticks).
    bars
        ``(symbol, interval, bar)`` of every bar those trades touched (the history's bars), and of the index's
        bars its moves touched (under the index's name).
    """

    messages: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    trades: list[tuple[str, TapeEntry]] = field(default_factory=list)
    bars: list[tuple[str, str, Bar]] = field(default_factory=list)


class MarketFeed:
    """A :class:`MarketState` and the sequenced objects the ticker publishes from it.

    Parameters
    ----------
    instruments
        The instruments traded: their symbols and reference prices.
    index
        The market index to keep, or ``None``.
    shards
        ``(name, symbols)`` of each shard, by number: what a market-wide halt of a shard covers.
    """

    def __init__(self, instruments: Iterable[Instrument] = (), *, index: MarketIndex | None = None,
                 shards: Sequence[tuple[str, Sequence[str]]] = ()) -> None:
        self.state = MarketState(instruments)
        self.index = index
        self.shards = [(name, list(syms)) for name, syms in shards]
        self._states: set[str] = set()  # symbols whose trading state changed since the last turn
        self._market = False  # the market's trading state changed since the last turn
        self._index_moved = False
        self._index_first_ts = 0  # ts of the index's first move since the last turn (its bars for the history)
        self.seq: dict[tuple[str, str], int] = {}  # (kind, symbol) -> seq of its last message
        self._prints: dict[str, list[TapeEntry]] = {}  # trades since the symbol's last quote
        self._first_ts: dict[str, int] = {}  # ts of the first trade since the symbol's last bars
        self._book: set[str] = set()  # symbols whose levels changed since the last turn
        self._levels: list[BookLevel] = []  # level changes taken but not yet applied to the books (see level)
        self._tseq = self.state.tseq  # the state's own dict: a level's tseq counts at once
        self._depth: dict[str, tuple[Any, Any]] = {}  # last published depth per symbol
        self._top: dict[str, tuple[Any, Any]] = {}  # last published best bid/ask per symbol
        # The trading day (docs/sessions.md), from the matchers' `session` messages: the phase (None: no calendar,
        # continuous all day) and each symbol's last auction figures (indicative, auction or close).
        self.phase: str | None = None
        self.entry = False  # whether the phase takes orders (of `closing`: the closing session is open)
        self._auction: dict[str, dict[str, Any]] = {}
        self._closes: dict[str, Decimal] = {}  # the day's closing prices: the next pre-open's reference of change

    @property
    def symbols(self) -> list[str]:
        """Every symbol known, sorted."""
        return sorted(self.state.symbols)

    def apply(self, msg: object) -> bool:
        """Apply one matcher message (``Trade`` or ``BookLevel``; others ignored); return whether it changed state."""
        if self._levels:
            self._apply_levels()
        if not self.state.apply(msg):
            return False
        if type(msg) is Trade:
            self._traded(msg)
        elif type(msg) is BookLevel:
            self._book.add(msg.symbol)
        return True

    def trade(self, msg: Trade) -> None:
        """Apply a trade known to be the next of its topic (the caller checked its ``tseq``: the ticker's path)."""
        self.state.trade(msg)
        self._traded(msg)

    def level(self, msg: BookLevel) -> None:
        """Apply a book level change known to be the next of its topic (the caller checked its ``tseq``).

        Its ``tseq`` counts at once (:meth:`MarketState.last_tseq`); the change itself joins the batch applied
        before the books are next read (see the module's docstring).
        """
        self._tseq[("book", msg.symbol)] = msg.tseq
        self._levels.append(msg)

    def levels(self, msgs: list[BookLevel]) -> None:
        """Apply a run of book level changes of one symbol, in ``tseq`` order, known to follow its topic's last.

        The batch form of :meth:`level` (for a caller holding a bundle of one ``B`` topic, whose ``tseq`` it
        checked runs on from the topic's last without a gap): one ``tseq`` update for the whole run.
        """
        if msgs:
            last = msgs[-1]
            self._tseq[("book", last.symbol)] = last.tseq
            self._levels.extend(msgs)

    def _apply_levels(self) -> None:
        # Set each changed level once, to its last state, in the order of the last changes: of two texts of one price
        # ("100.5", "100.50"), the later change is the one left, as applying every message in order would leave it.
        pending, self._levels = self._levels, []
        last: dict[tuple[str, str, str], BookLevel] = {}
        pop = last.pop
        for m in pending:
            key = (m.symbol, m.side, m.price)
            pop(key, None)
            last[key] = m
        state = self.state
        symbols = state.symbols
        book = self._book
        for (sym, side, price), m in last.items():
            st = symbols.get(sym) or state.state(sym)
            st.set_level(side, price_of(price), m.qty, m.count)
            book.add(sym)

    def _traded(self, msg: Trade) -> None:
        # Remember an applied trade for the next turn: the quote's prints and the first bar it touched.
        sym = msg.symbol
        entry = self.state.symbols[sym].tape[-1]
        self._prints.setdefault(sym, []).append(entry)
        self._first_ts.setdefault(sym, msg.ts)
        ix = self.index
        if ix is not None and ix.trade(sym, entry.price, msg.ts):
            if not self._index_first_ts:
                self._index_first_ts = msg.ts
            self._index_moved = True

    def trading_state(self, msg: TradingState) -> None:
        """Apply a matcher's ``trading_state`` (a halt or a resume, of a symbol or of its whole shard)."""
        syms = self.shards[msg.shard][1] if 0 <= msg.shard < len(self.shards) else []
        self._states.update(self.state.trading_state(msg, syms))
        if msg.symbol is None:
            self._market = True

    def set_phase(self, phase: str, entry: bool = False) -> None:
        """Take the trading day's phase and whether it takes orders (a ``session`` message's, or a matcher's
        snapshot's)."""
        if (phase, entry) != (self.phase, self.entry):
            self.phase, self.entry = phase, entry
            self._market = True

    def session(self, msg: SessionEvent) -> None:
        """Apply a matcher's ``session`` message: the phase goes in the ``market`` object, a symbol's auction
        figures in its ``state`` object."""
        if msg.kind == "phase":
            self.set_phase(msg.phase, msg.entry)
            if msg.phase == "pre_open":  # a new day: its change is against the last close
                closes, self._closes = self._closes, {}
                for sym, px in closes.items():
                    st = self.state.symbols.get(sym)
                    if st is not None and st.ref_price != px:
                        st.ref_price = px
                        self._prints.setdefault(sym, [])
                        self._top.pop(sym, None)  # republish its quote
        elif msg.symbol is not None:
            if msg.kind == "close" and msg.price is not None:
                self._closes[msg.symbol] = Decimal(msg.price)
            self._auction[msg.symbol] = {"kind": msg.kind, "price": msg.price, "qty": msg.qty,
                                         "unmatched": msg.unmatched}
            self._states.add(msg.symbol)

    def apply_states(self, shard: int, states: Iterable[TradingState]) -> None:
        """Take shard ``shard``'s trading states from a matcher's snapshot (``states``: its halts in force)."""
        st = self.state
        syms = self.shards[shard][1] if 0 <= shard < len(self.shards) else []
        before = {s: st.halt_of(s) for s in syms}
        st.clear_states(shard, syms)
        for m in states:
            self.trading_state(m)
        self._states.update(s for s in syms if st.halt_of(s) != before[s])
        self._market = True

    def apply_snapshot(self, book: BookSnapshot) -> None:
        """Take a symbol's levels and ``tseq`` baselines from a matcher's snapshot (when a replay is not possible)."""
        if self._levels:
            self._apply_levels()
        self.state.apply_snapshot(book)
        self._book.add(book.symbol)

    def reset(self, symbols: Iterable[str]) -> None:
        """Forget the market state of ``symbols`` (their shard started over); their topics' ``seq`` go on."""
        syms = list(symbols)
        if self._levels:
            self._apply_levels()
        self.state.reset(syms)
        if self.index is not None:
            self.index.reset(syms)
            self._index_moved = True
        for sym in syms:
            self._prints.pop(sym, None)
            self._first_ts.pop(sym, None)
            self._book.add(sym)
            self._prints[sym] = []  # publish the emptied quote too

    @property
    def dirty(self) -> bool:
        """Whether anything changed since the last :meth:`take`."""
        return bool(self._prints or self._book or self._levels or self._states or self._market or self._index_moved)

    def take(self, now: int | None = None) -> FeedTurn:
        """Return the objects to publish for what changed since the last call, each with its topic's next ``seq``."""
        ts = time.time_ns() if now is None else now
        if self._levels:
            self._apply_levels()
        turn = FeedTurn()
        out = turn.messages
        prints, self._prints = self._prints, {}
        first_ts, self._first_ts = self._first_ts, {}
        book, self._book = self._book, set()
        for sym in sorted(prints.keys() | book):
            st = self.state.symbols[sym]
            new = prints.get(sym, [])
            top = (st.best_bid(), st.best_ask())
            if new or self._top.get(sym) != top:
                self._top[sym] = top
                out.append(("quote", sym, self._quote(sym, st, new, ts)))
            if sym in book:
                depth = (st.depth("buy"), st.depth("sell"))
                if self._depth.get(sym) != depth:
                    self._depth[sym] = depth
                    out.append(("depth", sym, self._depth_obj(sym, depth, ts)))
            if new:
                turn.trades.extend((sym, t) for t in new)
                changed = self._changed_bars(st.bars, first_ts[sym])
                turn.bars.extend((sym, iv, b) for iv, bars in changed.items() for b in bars)
                out.append(("bars", sym, self._bars_obj(sym, changed, ts)))
        if self._states:
            states, self._states = self._states, set()
            out.extend(("state", sym, self._state_obj(sym, ts)) for sym in sorted(states))
        if self._market:
            self._market = False
            out.append(("market", "", self._market_obj(ts)))
        if self._index_moved and self.index is not None:
            self._index_moved = False
            ix = self.index
            out.append(("index", ix.name, self._index_obj(ts)))
            if self._index_first_ts:
                changed = self._changed_bars(ix.bars, self._index_first_ts)
                turn.bars.extend((ix.name, iv, b) for iv, bars in changed.items() for b in bars)
            self._index_first_ts = 0
        return turn

    def heartbeat(self, now: int | None = None) -> dict[str, Any]:
        """Return a heartbeat object."""
        ts = time.time_ns() if now is None else now
        return {"t": "heartbeat", "v": FEED_VERSION, "ts": ts, "ts_ns": str(ts)}

    # ----------------------------------------------------------------- objects

    def _next(self, kind: str, sym: str) -> int:
        key = (kind, sym)
        n = self.seq.get(key, 0) + 1
        self.seq[key] = n
        return n

    def _quote(self, sym: str, st: SymbolState, prints: list[TapeEntry], ts: int, seq: int | None = None
               ) -> dict[str, Any]:
        return {
            "t": "quote", "v": FEED_VERSION, "symbol": sym,
            "seq": self._next("quote", sym) if seq is None else seq, "ts": ts, "ts_ns": str(ts),
            **st.quote_fields(),
            "prints": [t.to_json() for t in prints],
        }

    def _depth_obj(self, sym: str, depth: tuple[Any, Any], ts: int, seq: int | None = None) -> dict[str, Any]:
        bids, asks = depth
        return {"t": "depth", "v": FEED_VERSION, "symbol": sym,
                "seq": self._next("depth", sym) if seq is None else seq, "ts": ts, "ts_ns": str(ts),
                "bids": [[str(p), q, n] for p, q, n in bids], "asks": [[str(p), q, n] for p, q, n in asks]}

    def _bars_obj(self, sym: str, bars: dict[str, list[Bar]], ts: int, seq: int | None = None) -> dict[str, Any]:
        return {"t": "bars", "v": FEED_VERSION, "symbol": sym,
                "seq": self._next("bars", sym) if seq is None else seq, "ts": ts, "ts_ns": str(ts),
                "bars": {iv: [b.to_json() for b in lst] for iv, lst in bars.items()}}

    def _state_obj(self, sym: str, ts: int, seq: int | None = None) -> dict[str, Any]:
        h = self.state.halt_of(sym)
        return {"t": "state", "v": FEED_VERSION, "symbol": sym,
                "seq": self._next("state", sym) if seq is None else seq, "ts": ts, "ts_ns": str(ts),
                **(TRADING if h is None else h[0].to_json(h[1])), "auction": self._auction.get(sym)}

    def _market_obj(self, ts: int, seq: int | None = None) -> dict[str, Any]:
        # The market is halted while any shard is (a market-wide halt reaches every shard in turn); the latest
        # shard's halt says why.
        halts = self.state.shard_halts
        latest = max(halts.values(), key=lambda h: h.ts) if halts else None
        return {"t": "market", "v": FEED_VERSION, "seq": self._next("market", "") if seq is None else seq,
                "ts": ts, "ts_ns": str(ts), **(TRADING if latest is None else latest.to_json("market")),
                "shards": sorted(self.shards[n][0] if n < len(self.shards) else str(n) for n in halts),
                "index": None if self.index is None else self.index.name, "phase": self.phase,
                "entry": self.entry}

    def _index_obj(self, ts: int, seq: int | None = None) -> dict[str, Any]:
        assert self.index is not None
        name = self.index.name
        return {"t": "index", "v": FEED_VERSION, "seq": self._next("index", name) if seq is None else seq,
                "ts": ts, "ts_ns": str(ts), **self.index.fields()}

    def market_snapshot(self, now: int | None = None) -> dict[str, Any]:
        """Return ``{"market", "index", "halted"}``: the market's trading state, the index (``None`` without one),
        and the ``state`` object of every symbol halted now, each with its topic's last ``seq``."""
        ts = time.time_ns() if now is None else now
        ix = self.index
        return {"market": self._market_obj(ts, self.seq.get(("market", ""), 0)),
                "index": None if ix is None else self._index_obj(ts, self.seq.get(("index", ix.name), 0)),
                "halted": [self._state_obj(s, ts, self.seq.get(("state", s), 0)) for s in sorted(self.state.symbols)
                           if self.state.halt_of(s) is not None]}

    @staticmethod
    def _changed_bars(series_of: dict[str, BarSeries], first_ts: int) -> dict[str, list[Bar]]:
        # The bars from the one holding the turn's first trade up to the open one (trades stamped before the
        # open bar's start were folded into it, so the open bar always counts).
        out: dict[str, list[Bar]] = {}
        for iv, series in series_of.items():
            cur = series.current
            if cur is None:
                continue
            since = min(first_ts - first_ts % series.interval, cur.start)
            lst = [cur]
            for b in reversed(series.history):
                if b.start < since:
                    break
                lst.append(b)
            lst.reverse()
            out[iv] = lst
        return out

    def snapshot(self, symbol: str, now: int | None = None) -> dict[str, Any]:
        """Return ``{"quote", "depth", "bars", "state"}`` of ``symbol``: its whole state, each with its topic's last
        ``seq`` (``state``: its trading state).

        The quote's ``prints`` is the tape (the last 50 trades); ``bars`` every bar kept in memory.

        Raises
        ------
        KeyError
            When the symbol is unknown.
        """
        ts = time.time_ns() if now is None else now
        if self._levels:
            self._apply_levels()
        st = self.state.symbols[symbol]
        return {
            "quote": self._quote(symbol, st, list(st.tape), ts, self.seq.get(("quote", symbol), 0)),
            "depth": self._depth_obj(symbol, (st.depth("buy", DEPTH), st.depth("sell", DEPTH)), ts,
                                     self.seq.get(("depth", symbol), 0)),
            "bars": self._bars_obj(symbol, {iv: s.bars() for iv, s in st.bars.items()}, ts,
                                   self.seq.get(("bars", symbol), 0)),
            "state": self._state_obj(symbol, ts, self.seq.get(("state", symbol), 0)),
        }
