"""Per-symbol market state built from the matchers' trade and book feeds: a pure library, no sockets.

The ticker node keeps one :class:`MarketState` and feeds it every ``Trade`` and
``BookLevel`` it receives (after :func:`fabric.protocol.iter_pub` has expanded
bundles).  For each symbol a :class:`SymbolState` holds the last trade, change
against the reference price, open/high/low, volume, turnover, VWAP, the best
bid and ask, five levels of depth per side (price, quantity, orders, as the BSE
shows them), a bounded tape of recent trades, and OHLCV bars of one second and
one minute.

For each symbol the last ``tseq`` applied of its ``T`` and ``B`` topics is
kept: from 0 (a fresh shard's first message is ``tseq`` 1) or a snapshot's
``book_tseq``/``trade_tseq`` (:meth:`MarketState.apply_snapshot`).  Putting the
messages in order, dropping duplicates and repairing gaps is the caller's: the
ticker follows each shard with a :class:`~fabric.stream.ShardStream` and hands
over each message once, in order (:meth:`MarketState.trade`,
:meth:`MarketState.level`).  :meth:`MarketState.apply` only refuses a message
the state has already (at or below its topic's last ``tseq``).

Each symbol's trading state (trading, or halted by an operator or a circuit breaker) comes from the
matchers' ``trading_state`` messages (:meth:`MarketState.trading_state`): a symbol's own halt, or its
shard's market-wide one (``symbol`` nil); :meth:`MarketState.halt_of` is the one that applies.

Prices are :class:`~decimal.Decimal` inside and decimal strings in the JSON
views (:meth:`MarketState.snapshot`, :meth:`MarketState.ticks`); change percent
is rounded there to 2 places and VWAP to 4.  A time in nanoseconds since the
epoch is an integer there, with its exact decimal text beside it under the same
name with ``_ns`` appended (``ts`` and ``ts_ns``, ``start`` and ``start_ns``):
such integers exceed 2**53, which JavaScript's ``JSON.parse`` rounds
(``docs/market-data.md``, section 2).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

from fabric.instruments import Instrument
from fabric.protocol import BookLevel, BookSnapshot, Trade, TradingState

__all__ = [
    "BAR_HISTORY",
    "DEPTH",
    "INTERVALS",
    "TAPE_LEN",
    "TRADING",
    "Bar",
    "BarSeries",
    "Halt",
    "Kind",
    "MarketState",
    "SymbolState",
    "TapeEntry",
    "price_of",
]

DEPTH: Final = 5  # levels per side in the depth view, as the BSE shows
TAPE_LEN: Final = 50  # recent trades kept per symbol
BAR_HISTORY: Final = 1_000  # finished bars kept per symbol and interval
INTERVALS: Final[dict[str, int]] = {"1s": 1_000_000_000, "1m": 60_000_000_000}  # bar lengths in ns

_PCT_PLACES: Final = Decimal("0.01")
_VWAP_PLACES: Final = Decimal("0.0001")

Kind = Literal["trade", "book"]


@dataclass(frozen=True, slots=True)
class Halt:
    """A halt in force: who made it (``reason``: ``operator``, ``circuit_breaker``), their words, when it ends by
    itself (``until``, ns since the epoch; ``None``: when resumed), and when it began (``ts``, the matcher's)."""

    reason: str
    text: str | None = None
    until: int | None = None
    ts: int = 0

    def to_json(self, scope: str) -> dict[str, Any]:
        """Return the halt as JSON-ready fields: ``state`` halted, ``scope`` (``symbol`` or ``market``), the rest."""
        until = self.until
        return {"state": "halted", "scope": scope, "reason": self.reason, "text": self.text, "until": until,
                "until_ns": None if until is None else str(until), "since": self.ts, "since_ns": str(self.ts)}


TRADING: Final[dict[str, Any]] = {"state": "trading", "scope": None, "reason": None, "text": None, "until": None,
                                  "until_ns": None, "since": None, "since_ns": None}  # the fields of no halt


@dataclass
class Bar:
    """One OHLCV bar; ``start`` is its first nanosecond, a multiple of the interval."""

    start: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int = 0
    trades: int = 0

    def add(self, price: Decimal, qty: int) -> None:
        """Fold one trade into the bar."""
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        self.close = price
        self.volume += qty
        self.trades += 1

    def to_json(self) -> dict[str, Any]:
        """Return the bar as a JSON-ready dict (prices as strings; ``start_ns`` is ``start`` as exact text)."""
        return {"start": self.start, "start_ns": str(self.start), "open": str(self.open), "high": str(self.high),
                "low": str(self.low), "close": str(self.close), "volume": self.volume, "trades": self.trades}


@dataclass
class BarSeries:
    """The bars of one interval: the current bar and a bounded history of finished ones, oldest first."""

    interval: int
    history: deque[Bar] = field(default_factory=lambda: deque(maxlen=BAR_HISTORY))
    current: Bar | None = None

    def add(self, ts: int, price: Decimal, qty: int) -> None:
        """Fold a trade at ``ts`` (ns) into its bar, closing the current bar when ``ts`` is past it.

        A trade stamped before the current bar's start (clocks of two replicas
        after a failover) is folded into the current bar: bars never reopen.
        """
        start = ts - ts % self.interval
        cur = self.current
        if cur is None or start > cur.start:
            if cur is not None:
                self.history.append(cur)
            cur = self.current = Bar(start=start, open=price, high=price, low=price, close=price)
        cur.add(price, qty)

    def bars(self) -> list[Bar]:
        """Return the finished bars and the current one, oldest first."""
        out = list(self.history)
        if self.current is not None:
            out.append(self.current)
        return out


@dataclass(frozen=True)
class TapeEntry:
    """One trade on the tape."""

    trade_id: int
    ts: int
    price: Decimal
    qty: int
    aggressor: str

    def to_json(self) -> dict[str, Any]:
        """Return the trade as a JSON-ready dict (price as a string; ``ts_ns`` is ``ts`` as exact text)."""
        return {"trade_id": self.trade_id, "ts": self.ts, "ts_ns": str(self.ts), "price": str(self.price),
                "qty": self.qty, "aggressor": self.aggressor}


@dataclass
class SymbolState:
    """What the market knows of one symbol: last trade, session statistics, depth, tape and bars.

    Parameters
    ----------
    symbol
        The symbol.
    ref_price
        The reference price (previous close) change is measured against; ``None`` for none.
    """

    symbol: str
    ref_price: Decimal | None = None
    last: Decimal | None = None
    last_qty: int = 0
    last_ts: int = 0
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    volume: int = 0
    turnover: Decimal = Decimal(0)
    trades: int = 0
    trade_id: int = 0
    bids: dict[Decimal, tuple[int, int]] = field(default_factory=dict)  # price -> (qty, orders)
    asks: dict[Decimal, tuple[int, int]] = field(default_factory=dict)
    tape: deque[TapeEntry] = field(default_factory=lambda: deque(maxlen=TAPE_LEN))
    bars: dict[str, BarSeries] = field(default_factory=lambda: {k: BarSeries(v) for k, v in INTERVALS.items()})

    @property
    def change(self) -> Decimal | None:
        """Return the last price minus the reference price, or ``None`` without both."""
        if self.last is None or self.ref_price is None:
            return None
        return self.last - self.ref_price

    @property
    def change_pct(self) -> Decimal | None:
        """Return the change in percent of the reference price (unrounded), or ``None``."""
        if self.last is None or not self.ref_price:
            return None
        return (self.last - self.ref_price) * 100 / self.ref_price

    @property
    def vwap(self) -> Decimal | None:
        """Return the volume-weighted average price (unrounded), or ``None`` before the first trade."""
        if not self.volume:
            return None
        return self.turnover / self.volume

    def best_bid(self) -> tuple[Decimal, int] | None:
        """Return the best bid's price and quantity, or ``None`` for an empty side."""
        if not self.bids:
            return None
        p = max(self.bids)
        return p, self.bids[p][0]

    def best_ask(self) -> tuple[Decimal, int] | None:
        """Return the best ask's price and quantity, or ``None`` for an empty side."""
        if not self.asks:
            return None
        p = min(self.asks)
        return p, self.asks[p][0]

    def depth(self, side: str, n: int = DEPTH) -> list[tuple[Decimal, int, int]]:
        """Return the best ``n`` levels of ``side`` ("buy" or "sell"), best first, as (price, qty, orders)."""
        book = self.bids if side == "buy" else self.asks
        prices = sorted(book, reverse=side == "buy")[:n]
        return [(p, *book[p]) for p in prices]

    def add_trade(self, msg: Trade) -> None:
        """Fold one trade into the statistics, the tape and the bars."""
        price = price_of(msg.price)
        qty = msg.qty
        self.last, self.last_qty, self.last_ts = price, qty, msg.ts
        if self.open is None:
            self.open = price
        if self.high is None or price > self.high:
            self.high = price
        if self.low is None or price < self.low:
            self.low = price
        self.volume += qty
        self.turnover += price * qty
        self.trades += 1
        self.trade_id = max(self.trade_id, msg.trade_id)
        self.tape.append(TapeEntry(msg.trade_id, msg.ts, price, qty, msg.aggressor))
        for series in self.bars.values():
            series.add(msg.ts, price, qty)

    def quote_fields(self) -> dict[str, Any]:
        """Return the symbol's statistics and best prices as JSON-ready fields (prices as strings, ``None`` as null).

        The fields of the ticker's ``quote`` object (``docs/market-data.md``, section 2) and of
        :meth:`MarketState.snapshot`; change percent is rounded to 2 places and VWAP to 4, and
        ``last_ts_ns`` is ``last_ts`` as exact decimal text.
        """
        bid, ask = self.best_bid(), self.best_ask()
        return {
            "ref_price": _s(self.ref_price),
            "last": _s(self.last),
            "last_qty": self.last_qty,
            "last_ts": self.last_ts,
            "last_ts_ns": str(self.last_ts),
            "change": _s(self.change),
            "change_pct": _q(self.change_pct, _PCT_PLACES),
            "open": _s(self.open),
            "high": _s(self.high),
            "low": _s(self.low),
            "volume": self.volume,
            "turnover": str(self.turnover),
            "vwap": _q(self.vwap, _VWAP_PLACES),
            "trades": self.trades,
            "trade_id": self.trade_id,
            "bid": None if bid is None else str(bid[0]),
            "bid_qty": None if bid is None else bid[1],
            "ask": None if ask is None else str(ask[0]),
            "ask_qty": None if ask is None else ask[1],
        }

    def set_level(self, side: str, price: Decimal, qty: int, count: int) -> None:
        """Set a level's quantity and order count; quantity 0 removes the level."""
        book = self.bids if side == "buy" else self.asks
        if qty > 0:
            book[price] = (qty, count)
        else:
            book.pop(price, None)


_DECIMALS: dict[str, Decimal] = {}  # wire price -> Decimal: prices repeat, and building a Decimal costs more
_DECIMALS_MAX: Final = 200_000


def price_of(text: str) -> Decimal:
    """Return the Decimal of a wire price (cached: a market trades again and again at the same prices)."""
    d = _DECIMALS.get(text)
    if d is None:
        if len(_DECIMALS) >= _DECIMALS_MAX:
            _DECIMALS.clear()
        d = _DECIMALS[text] = Decimal(text)
    return d


def _s(d: Decimal | None) -> str | None:
    return None if d is None else str(d)


def _q(d: Decimal | None, places: Decimal) -> str | None:
    return None if d is None else str(d.quantize(places))


class MarketState:
    """Every symbol's :class:`SymbolState`, kept from ``Trade`` and ``BookLevel`` messages given in order.

    Parameters
    ----------
    instruments
        The instruments traded; their ``ref_price`` is the base of change.  A
        message for a symbol not among them gets a state without a reference price.

    Attributes
    ----------
    symbols
        The state per symbol.
    tseq
        The last ``tseq`` applied per (kind, symbol), kind ``"trade"`` or ``"book"`` (read it, do not change it).
    """

    def __init__(self, instruments: Iterable[Instrument] = ()) -> None:
        self.symbols: dict[str, SymbolState] = {i.symbol: SymbolState(i.symbol, i.ref_price) for i in instruments}
        self.tseq: dict[tuple[str, str], int] = {}  # (kind, symbol) -> last tseq applied
        self.halts: dict[str, Halt] = {}  # symbol -> its own halt
        self.shard_halts: dict[int, Halt] = {}  # shard number -> its market-wide halt
        self.shard_of: dict[str, int] = {}  # symbol -> its shard, as trading_state was told

    def state(self, symbol: str) -> SymbolState:
        """Return the state of ``symbol``, creating an empty one for a symbol not seen yet."""
        st = self.symbols.get(symbol)
        if st is None:
            st = self.symbols[symbol] = SymbolState(symbol)
        return st

    def last_tseq(self, symbol: str, kind: Kind) -> int:
        """Return the last ``tseq`` applied on ``symbol``'s trade or book topic (0 before any)."""
        return self.tseq.get((kind, symbol), 0)

    def apply(self, msg: object) -> bool:
        """Apply one PUB message, a ``Trade`` or ``BookLevel``, given in its topic's order; ignore any other message.

        A message at or below its topic's last ``tseq`` (the state has it: a snapshot's baseline, or
        applied already) is ignored. There is no gap detection: a ``tseq`` that skips ahead is applied,
        the caller orders the messages and repairs losses (:class:`~fabric.stream.ShardStream`).
        Return whether the message changed the state.
        """
        if isinstance(msg, Trade):
            if msg.tseq > self.tseq.get(("trade", msg.symbol), 0):
                self.trade(msg)
                return True
        elif isinstance(msg, BookLevel) and msg.tseq > self.tseq.get(("book", msg.symbol), 0):
            self.level(msg)
            return True
        return False

    def reset(self, symbols: Iterable[str]) -> None:
        """Forget everything of ``symbols`` (a shard started over with a new journal); keep their reference prices."""
        for sym in symbols:
            old = self.symbols.get(sym)
            self.symbols[sym] = SymbolState(sym, None if old is None else old.ref_price)
            self.tseq.pop(("trade", sym), None)
            self.tseq.pop(("book", sym), None)

    def halt_of(self, symbol: str) -> tuple[Halt, str] | None:
        """Return the halt that applies to ``symbol`` and its scope (``market``: its shard's, over its own;
        ``symbol``), or ``None`` while it trades."""
        shard = self.shard_of.get(symbol)
        h = None if shard is None else self.shard_halts.get(shard)
        if h is not None:
            return h, "market"
        h = self.halts.get(symbol)
        return None if h is None else (h, "symbol")

    def trading_state(self, msg: TradingState, symbols: Iterable[str]) -> list[str]:
        """Apply a matcher's ``trading_state`` of shard ``msg.shard``, whose symbols are ``symbols``.

        ``symbol`` nil halts or resumes the whole shard (a market-wide halt), over the symbols' own halts: a
        symbol halted on its own stays halted when the market resumes.  Return the symbols whose halt (the one
        :meth:`halt_of` gives) changed.
        """
        syms = list(symbols)
        for s in syms:
            self.shard_of[s] = msg.shard
        touched = syms if msg.symbol is None else [msg.symbol]
        before = [self.halt_of(s) for s in touched]
        halt = Halt(msg.reason, msg.text, msg.until, msg.ts) if msg.state == "halted" else None
        if msg.symbol is None:
            if halt is None:
                self.shard_halts.pop(msg.shard, None)
            else:
                self.shard_halts[msg.shard] = halt
        elif halt is None:
            self.halts.pop(msg.symbol, None)
        else:
            self.halts[msg.symbol] = halt
        return [s for s, b in zip(touched, before, strict=True) if self.halt_of(s) != b]

    def clear_states(self, shard: int, symbols: Iterable[str]) -> None:
        """Forget the halts of shard ``shard`` and its ``symbols`` (a snapshot's states replace them, or the shard
        started over)."""
        self.shard_halts.pop(shard, None)
        for s in symbols:
            self.halts.pop(s, None)

    def trade(self, msg: Trade) -> None:
        """Apply a trade known to be the next of its topic (the caller checked its ``tseq``)."""
        self.tseq[("trade", msg.symbol)] = msg.tseq
        st = self.symbols.get(msg.symbol) or self.state(msg.symbol)
        st.add_trade(msg)

    def level(self, msg: BookLevel) -> None:
        """Apply a book level change known to be the next of its topic (the caller checked its ``tseq``)."""
        self.tseq[("book", msg.symbol)] = msg.tseq
        st = self.symbols.get(msg.symbol) or self.state(msg.symbol)
        st.set_level(msg.side, price_of(msg.price), msg.qty, msg.count)

    def apply_snapshot(self, snap: BookSnapshot) -> None:
        """Replace a symbol's levels with a snapshot's and take its ``tseq`` baselines and ``trade_id``.

        Messages at or below the snapshot's ``book_tseq``/``trade_tseq`` are
        then ignored by :meth:`apply`; later ones apply on top.  Session statistics
        (volume, OHLC, bars) are kept: the snapshot does not carry them.
        """
        st = self.state(snap.symbol)
        st.bids = {Decimal(p): (qty, n) for p, qty, n in snap.bids if qty > 0}
        st.asks = {Decimal(p): (qty, n) for p, qty, n in snap.asks if qty > 0}
        st.trade_id = snap.trade_id
        self.tseq[("book", snap.symbol)] = snap.book_tseq
        self.tseq[("trade", snap.symbol)] = snap.trade_tseq

    def snapshot(self, symbol: str) -> dict[str, Any]:
        """Return everything known of ``symbol`` as a JSON-ready dict (prices as strings, ``None`` as null).

        Raises
        ------
        KeyError
            When the symbol is unknown.
        """
        st = self.symbols[symbol]
        return {
            "symbol": symbol,
            **st.quote_fields(),
            "bids": [[str(p), q, n] for p, q, n in st.depth("buy")],
            "asks": [[str(p), q, n] for p, q, n in st.depth("sell")],
            "tape": [t.to_json() for t in st.tape],
            "bars": {k: [b.to_json() for b in s.bars()] for k, s in st.bars.items()},
            "trade_tseq": self.last_tseq(symbol, "trade"),
            "book_tseq": self.last_tseq(symbol, "book"),
        }

    def ticks(self, symbol: str) -> dict[str, Any]:
        """Return a compact tick of ``symbol``: last, change percent, volume, best bid and ask.

        Raises
        ------
        KeyError
            When the symbol is unknown.
        """
        q = self.symbols[symbol].quote_fields()
        return {"symbol": symbol, **{k: q[k] for k in ("last", "change_pct", "volume", "bid", "ask")}}
