"""The matching engine: every symbol's book behind one deterministic entry point.

The engine is where names become numbers and back: a broker's client order id
becomes a dense engine order id, a decimal price becomes ticks, and the books'
integer event rows become the exchange's outcome messages: ``accepted``,
``rejected``, ``trade`` and the two ``fill``s of each trade, ``cancelled``,
``replaced``, ``expired`` (the PUB messages of :mod:`fabric.protocol`, unstamped:
the matcher gives them their sequence numbers and publishes them as they are).
It checks what needs the engine's memory (client order ids already used,
orders that exist) and the instrument's tick; the books check the rest (lot,
time in force, band), so both the compiled and the reference book enforce the
same rules.

The same commands in the same order always give the same outcomes.
"""

from __future__ import annotations

import datetime as _dt
from array import array
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final, Protocol, TypeAlias, cast
from zoneinfo import ZoneInfo

import msgspec

from fabric.auction import AuctionLevels, AuctionOrder, Uncross, uncross
from fabric.book import OrderBook
from fabric.calendar import TradingDay, closing_price
from fabric.commands import (
    SIDE_CODES,
    STP_CODES,
    TIF_CODES,
    TYPE_CODES,
    AddInstrument,
    CancelOrder,
    Command,
    Control,
    EndOfDay,
    NewOrder,
    ReplaceOrder,
    SessionChange,
)
from fabric.constants import (
    BUY,
    CANCEL_REASON_NAMES,
    CXL_DISCONNECT,
    CXL_KILL_SWITCH,
    CXL_NO_AUCTION_PRICE,
    CXL_OUTSIDE_NEW_BAND,
    CXL_REQUESTED,
    CXL_SELF_TRADE,
    DAY,
    E_CUM,
    E_LEAVES,
    E_NFIELDS,
    E_OID,
    E_OTHER,
    E_OTHER_CUM,
    E_OTHER_LEAVES,
    E_PRICE,
    E_QTY,
    E_REASON,
    E_SIDE,
    E_TYPE,
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_REJECTED,
    EV_REPLACED,
    EV_TRADE,
    EV_TRIGGERED,
    FLAG_POST_ONLY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    MAX_LADDER_ROWS,
    MAX_PRICE_TICKS,
    MAX_QTY,
    NO_PRICE,
    NO_QTY,
    REJ_BAD_DISCLOSED,
    REJ_BAD_FIELD,
    REJ_BAD_STOP,
    REJ_BAD_TIF,
    REJ_BROKER_DISABLED,
    REJ_DUPLICATE_OID,
    REJ_EXPIRE_DATE,
    REJ_HALTED,
    REJ_LADDER_SPAN,
    REJ_MARKET_CLOSED,
    REJ_NOT_CLOSING_PRICE,
    REJ_NOT_STOP,
    REJ_ORDER_CLOSED,
    REJ_PRICE_NOT_POSITIVE,
    REJ_PRICE_OFF_TICK,
    REJ_PRICE_OUT_OF_BAND,
    REJ_PRICE_TOO_LARGE,
    REJ_QTY_NOT_LOT_MULTIPLE,
    REJ_QTY_TOO_LARGE,
    REJ_STOP_LIMIT,
    REJ_STOP_WOULD_TRIGGER,
    REJ_UNKNOWN_ORDER,
    REJ_WOULD_CROSS,
    REJECT_NAMES,
    SELL,
    SIDE_NAMES,
    STP_OFF,
    TIF_NAMES,
    TYPE_NAMES,
)
from fabric.instruments import Instrument, InstrumentError
from fabric.protocol import (
    ARCHIVED,
    ExAccepted,
    ExCancelled,
    ExExpired,
    ExFill,
    ExRejected,
    ExReplaced,
    ExTriggered,
    OrderStatus,
    SessionEvent,
    Trade,
    TradingState,
)

Outcome: TypeAlias = (ExAccepted | ExRejected | Trade | ExFill | ExCancelled | ExReplaced | ExExpired | TradingState
                      | SessionEvent | ExTriggered)
MARKET_WIDE: Final = ""  # the key of a market-wide halt in MatchingEngine.halts
CONTINUOUS: Final = "continuous"  # the phase of a day without a calendar, all day
_NO_ENTRY: Final = {  # why a phase takes no new order (docs/sessions.md)
    "auction": "order entry of the pre-open has closed; the call auction runs until continuous trading opens",
    "closing": "continuous trading has ended and the closing price is being computed; the closing session takes "
               "orders at the closing price once it opens",
    "closed": "the market is closed until the next pre-open",
}
# The time zone trading days are counted in (a GTD order's expire_date, an end of day without a date) when the
# engine is given none: the topology's `[exchange] timezone` default.
EXCHANGE_ZONE: Final = ZoneInfo("Asia/Kolkata")


def trading_day(ts: int, zone: ZoneInfo = EXCHANGE_ZONE) -> int:
    """Return the day (yyyymmdd) of ``ts`` (ns since the Unix epoch) in ``zone``, the exchange's; 0 for ts 0."""
    if ts <= 0:
        return 0
    d = _dt.datetime.fromtimestamp(ts / 1e9, zone).date()
    return d.year * 10000 + d.month * 100 + d.day


def day_of(date: str) -> int:
    """Return a "YYYY-MM-DD" date as yyyymmdd; 0 when it is no real date."""
    try:
        d = _dt.date.fromisoformat(date)
    except ValueError:
        return 0
    return d.year * 10000 + d.month * 100 + d.day if len(date) == 10 else 0


def _date_text(day: int) -> str:
    return f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}"


class InstrumentExists(InstrumentError):
    """The symbol already has a book."""


class Book(Protocol):
    """What the engine needs of a book: see ``docs/book-semantics.md``."""

    def new(self, oid: int, broker: int, side: int, otype: int, tif: int, price: int, qty: int,
            stp: int = STP_OFF, flags: int = 0, expire: int = 0, disclosed: int = 0, stop: int = 0) -> Any: ...
    def cancel(self, oid: int) -> Any: ...
    def replace(self, oid: int, price: int, qty: int, stp: int = STP_OFF, stop: int = NO_PRICE) -> Any: ...
    def end_of_day(self, day: int = 0) -> Any: ...
    def depth(self, side: int, n: int | None = None) -> list[tuple[int, int, int]]: ...
    def level(self, side: int, price: int) -> tuple[int, int]: ...
    def order(self, oid: int) -> tuple[int, int, int, int, int] | None: ...
    def resting_orders(self, side: int) -> list[int]: ...
    def stop_queue(self, side: int) -> list[int]: ...
    def set_band(self, band_lo: int | None, band_hi: int | None, ref: int) -> None: ...
    def print_trade(self, price: int) -> Any: ...


BookFactory = Callable[[Instrument], Book]


def _rows(book: Book, result: Any) -> list[list[int]]:
    # The compiled book returns a count of rows in its event buffer; the
    # reference book returns the rows themselves.
    if isinstance(result, int):
        return book.out[:result].tolist()  # type: ignore[attr-defined]
    return list(result)


def compiled_book(inst: Instrument) -> Book:
    """Return a numba-compiled book for ``inst``."""
    return OrderBook(lot=inst.lot, band_lo=inst.band_lo, band_hi=inst.band_hi, ref=inst.ref_ticks,
                     protect_bp=inst.protect_bp)


def reference_book(inst: Instrument) -> Book:
    """Return the plain-Python reference book for ``inst`` (the property tests' oracle)."""
    from fabric.reference import ReferenceBook

    return ReferenceBook(lot=inst.lot, band_lo=inst.band_lo, band_hi=inst.band_hi, ref=inst.ref_ticks,
                         protect_bp=inst.protect_bp)


def instrument_of(cmd: AddInstrument) -> Instrument:
    """Return the instrument an ``instrument`` command defines.

    Raises
    ------
    fabric.instruments.InstrumentError
        The definition cannot be traded (its text says why).
    """
    band = None if cmd.band_pct is None else Decimal(cmd.band_pct)
    return Instrument(cmd.symbol, tick=Decimal(cmd.tick), lot=cmd.lot,
                      ref_price=None if cmd.ref_price is None else Decimal(cmd.ref_price),
                      band_pct=None if band == 0 else band,  # a band of 0 % is no band, as on the BSE
                      market_protection_pct=None if cmd.market_protection_pct is None
                      else Decimal(cmd.market_protection_pct) or None)


def instrument_command(inst: Instrument) -> AddInstrument:
    """Return the ``instrument`` command that defines ``inst`` (how a journal starts)."""
    return AddInstrument(symbol=inst.symbol, tick=str(inst.tick), lot=inst.lot,
                         ref_price=None if inst.ref_price is None else str(inst.ref_price),
                         band_pct=None if inst.band_pct is None else str(inst.band_pct),
                         market_protection_pct=None if inst.market_protection_pct is None
                         else str(inst.market_protection_pct))


class _Order(msgspec.Struct, gc=False):
    # What the engine remembers of an order it accepted, kept current from the
    # book's events: enough to answer a status query or a retried `new`. Untracked by
    # Python's cycle collector (it holds no container): a day of orders costs its
    # full collections nothing.
    symbol: str
    broker: str
    clid: str
    side: int
    otype: int
    tif: int
    price: int = 0  # ticks; 0 for a market order
    qty: int = 0
    leaves: int = 0
    cum: int = 0
    state: str = "new"
    reason: str | None = None  # why a cancelled order was cancelled
    base: int = 0  # what the call auction filled before the order entered the book (the book counts from 0)
    flags: int = 0  # FLAG_* bits (post-only)
    expire: int = 0  # a GTD order's expire day, yyyymmdd
    disclosed: int = 0  # an iceberg's peak
    stop: int = 0  # a stop order's trigger (ticks), 0 for other orders
    triggered: bool = False  # a stop order that has entered the book


_ARCHIVED_OID: Final = -2


class MatchingEngine:
    """Route commands to per-symbol books and turn their output into outcome messages.

    Parameters
    ----------
    book_factory
        Makes the book of a new symbol; the compiled book by default, the
        reference book in property tests.
    max_ladder_rows
        The widest price ladder a book without a band may span, in ticks.
    keep_finished
        How many finished orders (filled, cancelled, expired) stay in memory; older ones are archived
        (:data:`ARCHIVED`): the stores answer for them. ``None`` keeps every order (a deployment without
        stores). Archiving changes no outcome, only where an old order's state is read.
    timezone
        The exchange's time zone (an IANA name; the topology's ``[exchange] timezone``): the trading day of a
        command's ``ts``, which a GTD order's ``expire_date`` and an ``end_of_day`` without a date are counted in.
    """

    def __init__(self, book_factory: BookFactory = compiled_book, max_ladder_rows: int = MAX_LADDER_ROWS,
                 keep_finished: int | None = None, timezone: str = "Asia/Kolkata") -> None:
        self.zone = ZoneInfo(timezone)
        self._book_factory = book_factory
        self._max_ladder_rows = max_ladder_rows
        self.keep_finished = keep_finished
        self.instruments: dict[str, Instrument] = {}
        self.books: dict[str, Book] = {}
        self._broker_no: dict[str, int] = {}
        self._by_clid: dict[tuple[str, str], int] = {}
        self._orders: list[_Order | None] = []  # by engine order id; None once archived
        self._terms: list[tuple[int, int] | None] = []  # (price ticks, qty) each order was accepted with
        # Finished orders, oldest first; past `keep_finished` of them the oldest is archived: it leaves memory, and
        # only "broker NUL clid" -> symbol stays, so its id is never used again and a query is sent to the stores.
        self._finished: deque[int] = deque()
        self._archived: dict[str, str] = {}
        self._trade_no: dict[str, int] = {}
        # With `track_levels`, (symbol, side, price ticks) of every level the commands since the
        # last drain may have changed: the matcher drains it to publish book level changes.
        self.track_levels = False
        self.touched: list[tuple[str, int, int]] = []
        # Market control (`admin` commands): the halts in force, by symbol (MARKET_WIDE: the whole shard), as
        # their `trading_state` messages; the brokers an operator disabled. Both empty on a normal day, which
        # is all a new order or a replace pays for them.
        self.halts: dict[str, TradingState] = {}
        self.disabled: set[str] = set()
        # The trading day (docs/sessions.md): continuous all day until a `session` command comes. In the pre-open
        # the orders are collected here, outside the books (engine ids in time priority, by symbol), with their
        # levels and the last indicative figures published; `closes` is each symbol's last closing price (ticks),
        # taken over `_day_trades`, the trades of the day's continuous trading as flat (ticks, qty, ts) triples of
        # 64-bit integers (24 bytes a trade).
        self.phase: str = CONTINUOUS
        self.sessions = False  # whether a `session` command came: the day follows a calendar
        self._collected: dict[str, dict[int, None]] = {}
        self._levels: dict[str, AuctionLevels] = {}
        self._indicative: dict[str, tuple[int | None, int, int]] = {}
        self._stp_of: dict[int, int] = {}
        self.closes: dict[str, int] = {}
        self._day_trades: dict[str, array[int]] | None = None
        # Orders resting in the book when the pre-open began take part in its call where they rest (`_carried`,
        # in `_collected` ahead of the pre-open's own). The closing session (`closing` with entry) has a book per
        # symbol of its own, banded at exactly the closing price, and `_closing_orders` are the orders in them.
        self._carried: set[int] = set()
        self._opening: dict[str, int] = {}  # each symbol's call auction price until continuous trading begins
        self._closing_session = False
        self._closing_books: dict[str, Book] = {}
        self._closing_orders: dict[int, None] = {}

    # ------------------------------------------------------------ instruments

    def add_instrument(self, inst: Instrument) -> None:
        """Make ``inst`` tradable.

        Raises
        ------
        InstrumentExists
            The symbol already has a book.
        """
        if inst.symbol in self.books:
            raise InstrumentExists(f"instrument {inst.symbol} is already defined or trading")
        self.instruments[inst.symbol] = inst
        self.books[inst.symbol] = self._book_factory(inst)
        self._trade_no[inst.symbol] = 0

    def _book(self, symbol: str) -> tuple[Instrument, Book]:
        book = self.books.get(symbol)
        if book is None:
            self.add_instrument(Instrument(symbol))
            book = self.books[symbol]
        return self.instruments[symbol], book

    def trade_id(self, symbol: str) -> int:
        """Return the number of the symbol's last trade (0: none yet)."""
        return self._trade_no.get(symbol, 0)

    # --------------------------------------------------------------- commands

    def apply(self, cmd: Command) -> list[Outcome]:
        """Apply one command; return its outcomes, stamped with the command's ``ts`` and nothing else.

        Raises
        ------
        fabric.instruments.InstrumentError
            An ``instrument`` command that cannot be traded, or whose symbol has a book already.
        """
        if isinstance(cmd, NewOrder):
            return self.new_order(cmd.symbol, cmd.broker, cmd.oid, SIDE_CODES[cmd.side], TYPE_CODES[cmd.type],
                                  TIF_CODES[cmd.tif], cmd.price, cmd.qty, cmd.ts, STP_CODES[cmd.stp], cmd.post_only,
                                  cmd.expire_date, cmd.disclosed_qty or 0, cmd.stop_price)
        if isinstance(cmd, CancelOrder):
            return self.cancel(cmd.symbol, cmd.broker, cmd.oid, cmd.ts)
        if isinstance(cmd, ReplaceOrder):
            return self.replace(cmd.symbol, cmd.broker, cmd.oid, cmd.price, cmd.qty, cmd.ts, STP_CODES[cmd.stp],
                                cmd.stop_price)
        if isinstance(cmd, EndOfDay):
            out: list[Outcome] = list(self.end_of_day(cmd.ts, cmd.date))
            if out and self._collected:  # in the pre-open, orders it expired have left the call: a new indicative
                for symbol in list(self._collected):
                    out.extend(self._indicate(self.instruments[symbol], cmd.ts))
            return out
        if isinstance(cmd, Control):
            return self.control(cmd)
        if isinstance(cmd, SessionChange):
            return self.session(cmd.phase, cmd.ts, cmd.vwap_from, cmd.entry)
        self.add_instrument(instrument_of(cmd))
        return []

    # --------------------------------------------------------- market control

    def control(self, cmd: Control) -> list[Outcome]:
        """Apply an ``admin`` command: a halt or resume publishes a ``trading_state``; ``disable`` (the kill
        switch) and ``disconnected`` (cancel-on-disconnect) cancel every open order of the broker."""
        a = cmd.action
        if a == "halt" or a == "resume":
            key = MARKET_WIDE if cmd.symbol is None else cmd.symbol
            st = TradingState(shard=0, seq=0, tseq=0, epoch=0, ts=cmd.ts, symbol=cmd.symbol,
                              state="halted" if a == "halt" else "trading",
                              reason="clock" if cmd.by == "clock" else "operator", text=cmd.text,
                              until=cmd.until if a == "halt" else None)
            if a == "halt":
                self.halts[key] = st
            else:
                self.halts.pop(key, None)
            return [st]
        assert cmd.broker is not None, "the matcher refuses a broker command without a broker"
        if a == "enable":
            self.disabled.discard(cmd.broker)
            return []
        if a == "disable":
            self.disabled.add(cmd.broker)
            return self.cancel_all(cmd.broker, CXL_KILL_SWITCH, cmd.ts)
        return self.cancel_all(cmd.broker, CXL_DISCONNECT, cmd.ts)

    def cancel_all(self, broker: str, reason: int, ts: int = 0) -> list[Outcome]:
        """Cancel every open order of ``broker``, oldest first, with cancel reason ``reason`` (a ``CXL_`` code)."""
        out: list[Outcome] = []
        for oid, o in enumerate(self._orders):
            if o is None or o.broker != broker or o.state not in ("new", "partially_filled"):
                continue
            inst, book = self._book(o.symbol)
            if self._collected and oid in self._collected.get(o.symbol, ()):
                evs = self._session_cancel(inst, oid, ts)
            else:
                book = self._closing_books[o.symbol] if oid in self._closing_orders else book
                evs = self._outcomes(inst, _rows(book, book.cancel(oid)), ts)
            out.extend(self._cancelled_for(evs, o, reason))
        self._archive_finished()
        return out

    @staticmethod
    def _cancelled_for(evs: list[Outcome], o: _Order, reason: int) -> list[Outcome]:
        # A cancel the engine made, not the broker: the cancelled report among a book's events, and the order,
        # say why (`reason`, a CXL_ code), where the book says `requested`.
        for ev in evs:
            if type(ev) is ExCancelled:
                ev.reason = o.reason = CANCEL_REASON_NAMES[reason]
        return evs

    def halt_of(self, symbol: str) -> TradingState | None:
        """Return the halt in force on ``symbol`` (its own, else the market-wide one), or ``None``."""
        return self.halts.get(symbol) or self.halts.get(MARKET_WIDE)

    def next_resume(self) -> tuple[int, str | None] | None:
        """Return the earliest ``until`` of the halts in force and its symbol (``None``: market-wide), if any."""
        timed = [(st.until, st.symbol) for st in self.halts.values() if st.until is not None]
        return min(timed, key=lambda t: (t[0], t[1] or "")) if timed else None

    def _refused_by_control(self, op: str, symbol: str, broker: str, clid: str, ts: int) -> ExRejected | None:
        # A new order or a replace while its broker is disabled or its symbol halted.
        if broker in self.disabled:
            return self._reject(op, clid, broker, symbol, REJ_BROKER_DISABLED,
                                f"broker {broker} is disabled by an operator: {op} refused until it is enabled", ts)
        st = self.halt_of(symbol)
        if st is None:
            return None
        where = "the market" if st.symbol is None else f"trading in {symbol}"
        why = f" ({st.text})" if st.text else ""
        return self._reject(op, clid, broker, symbol, REJ_HALTED,
                            f"{where} is halted{why}: {op} refused until it resumes", ts)

    def new_order(
        self,
        symbol: str,
        broker: str,
        clid: str,
        side: int,
        otype: int,
        tif: int,
        price: Decimal | str | None,
        qty: int,
        ts: int = 0,
        stp: int = STP_OFF,
        post_only: bool = False,
        expire_date: str | None = None,
        disclosed: int = 0,
        stop_price: Decimal | str | None = None,
    ) -> list[Outcome]:
        """Enter a new order and return its outcomes (accepted or rejected, trades and fills, cancel of a rest).

        ``stp`` is the broker's self-trade prevention mode (``STP_*``): a resting order it cancels gets its
        ``cancelled`` (``self_trade``) among the outcomes. ``post_only``: rejected (``would_cross``) rather
        than trade on entry. ``expire_date`` ("YYYY-MM-DD"): a GTD order's last day, not before the trading
        day of ``ts`` (when ``ts`` is given). ``disclosed``: an iceberg's peak (0: all of it shows).
        ``stop_price``: a stop-loss order's trigger (``docs/book-semantics.md``, "Stop-loss orders").
        """
        inst, book = self._book(symbol)
        if self.halts or self.disabled:
            rej = self._refused_by_control("new", symbol, broker, clid, ts)
            if rej is not None:
                return [rej]
        if (broker, clid) in self._by_clid or f"{broker}\x00{clid}" in self._archived:
            return [self._reject("new", clid, broker, symbol, REJ_DUPLICATE_OID,
                                 f"client order id {clid} already used by broker {broker}", ts)]
        if qty > MAX_QTY:
            return [self._reject("new", clid, broker, symbol, REJ_QTY_TOO_LARGE,
                                 f"qty {qty} exceeds the maximum {MAX_QTY}", ts)]
        ticks = 0
        if otype != MARKET:
            assert price is not None
            t = self._ticks(inst, price)
            if t is None:
                return [self._reject("new", clid, broker, symbol, REJ_PRICE_OFF_TICK,
                                     f"price {price} is not a multiple of the tick size {inst.tick}", ts)]
            if t > MAX_PRICE_TICKS:
                return [self._reject("new", clid, broker, symbol, REJ_PRICE_TOO_LARGE,
                                     f"price {price} is too large", ts)]
            ticks = t
        expire = 0
        if tif == GTD or expire_date is not None:
            problem = self._expire_problem(tif, expire_date, ts)
            if problem is not None:
                return [self._reject("new", clid, broker, symbol, REJ_EXPIRE_DATE, problem, ts)]
            expire = day_of(expire_date)  # type: ignore[arg-type]
        stop = 0
        if stop_price is not None:
            rej, stop = self._stop_ticks("new", inst, broker, clid, stop_price, ts)
            if rej is not None:
                return [rej]
        flags = FLAG_POST_ONLY if post_only else 0
        if self.phase != CONTINUOUS:
            if flags or expire or disclosed or stop:
                return [self._reject("new", clid, broker, symbol, REJ_MARKET_CLOSED,
                                     f"post-only, GTD, disclosed-quantity and stop orders are taken in continuous "
                                     f"trading only, not in the {self.phase} phase", ts)]
            return self._session_new(inst, broker, clid, side, otype, tif, ticks, qty, ts, stp)
        oid = len(self._orders)
        order = _Order(symbol, broker, clid, side, otype, tif, flags=flags, expire=expire, disclosed=disclosed,
                       stop=stop)
        self._orders.append(order)
        bno = self._broker_no.setdefault(broker, len(self._broker_no))
        rows = _rows(book, book.new(oid, bno, side, otype, tif, ticks, qty, stp, flags, expire, disclosed, stop))
        out = self._outcomes(inst, rows, ts, price=price, qty=qty, tif=tif, disclosed=disclosed, stop=stop)
        if out and type(out[0]) is ExRejected:
            self._orders.pop()  # a rejected order does not use its client order id
        else:
            self._by_clid[(broker, clid)] = oid
            self._terms.append((ticks, qty))
            if self._finished:
                self._archive_finished()
        return out

    def _expire_problem(self, tif: int, expire_date: str | None, ts: int) -> str | None:
        # Why a GTD order's expire_date (or another order's) cannot be taken, or None.
        if tif != GTD:
            return f"expire_date is for a GTD order, not {TIF_NAMES[tif]}"
        if expire_date is None:
            return "a GTD order needs its expire_date"
        day = day_of(expire_date)
        if day == 0:
            return f"expire_date {expire_date} is not a date (YYYY-MM-DD)"
        today = trading_day(ts, self.zone)
        if day < today:
            return f"expire_date {expire_date} is before the trading day {_date_text(today)}"
        return None

    def _stop_ticks(self, op: str, inst: Instrument, broker: str, clid: str, stop_price: Decimal | str,
                    ts: int) -> tuple[ExRejected | None, int]:
        # A stop price in ticks, or why it cannot be one (the tick, its size, not positive: 0 means "no stop"
        # to the books); the books check the rest (band, limit against trigger, the last price).
        t = self._ticks(inst, stop_price)
        if t is None:
            return self._reject(op, clid, broker, inst.symbol, REJ_PRICE_OFF_TICK,
                                f"stop_price {stop_price} is not a multiple of the tick size {inst.tick}", ts), 0
        if t > MAX_PRICE_TICKS:
            return self._reject(op, clid, broker, inst.symbol, REJ_PRICE_TOO_LARGE,
                                f"stop_price {stop_price} is too large", ts), 0
        if t <= 0:
            return self._reject(op, clid, broker, inst.symbol, REJ_PRICE_NOT_POSITIVE,
                                f"stop_price {stop_price} is not positive", ts), 0
        return None, t

    @staticmethod
    def _ticks(inst: Instrument, price: Decimal | str) -> int | None:
        return inst.ticks_of(price) if isinstance(price, str) else inst.to_ticks(price)

    def _lookup(self, op: str, symbol: str, broker: str, clid: str, ts: int) -> tuple[int, ExRejected | None]:
        oid = self._by_clid.get((broker, clid), -1)
        if oid < 0 and self._archived.get(f"{broker}\x00{clid}") == symbol:
            return _ARCHIVED_OID, None  # closed, as the book would say (after the checks that come before it)
        if oid < 0 or self._orders[oid].symbol != symbol:  # type: ignore[union-attr]
            return -1, self._reject(op, clid, broker, symbol, REJ_UNKNOWN_ORDER,
                                    f"broker {broker} has no order {clid} in {symbol}", ts)
        return oid, None

    def cancel(self, symbol: str, broker: str, clid: str, ts: int = 0) -> list[Outcome]:
        """Cancel an open order of ``broker``; return the outcomes."""
        oid, rej = self._lookup("cancel", symbol, broker, clid, ts)
        if rej is not None:
            return [rej]
        inst, book = self._book(symbol)
        if oid == _ARCHIVED_OID:
            return [self._closed("cancel", clid, broker, inst, ts)]
        if self._collected and oid in self._collected.get(symbol, ()):
            return self._session_cancel(inst, oid, ts)
        if self._closing_orders and oid in self._closing_orders:
            book = self._closing_books[symbol]
        out = self._outcomes(inst, _rows(book, book.cancel(oid)), ts)
        self._archive_finished()
        return out

    def _closed(self, op: str, clid: str, broker: str, inst: Instrument, ts: int) -> ExRejected:
        # What the book answers a cancel or replace of an order no longer resting.
        return self._reject(op, clid, broker, inst.symbol, REJ_ORDER_CLOSED,
                            self._reject_text(inst, REJ_ORDER_CLOSED, clid, None, None, None), ts)

    def replace(self, symbol: str, broker: str, clid: str, price: Decimal | str | None, qty: int | None,
                ts: int = 0, stp: int = STP_OFF, stop_price: Decimal | str | None = None) -> list[Outcome]:
        """Cancel/replace an open order: ``qty`` is the new total quantity; ``None`` keeps a field; ``stp`` as for
        :meth:`new_order`; ``stop_price``: a waiting stop order's new trigger."""
        oid, rej = self._lookup("replace", symbol, broker, clid, ts)
        if rej is None and (self.halts or self.disabled):
            rej = self._refused_by_control("replace", symbol, broker, clid, ts)
        if rej is not None:
            return [rej]
        inst, book = self._book(symbol)
        ticks = NO_PRICE
        if price is not None:
            t = self._ticks(inst, price)
            if t is None:
                return [self._reject("replace", clid, broker, symbol, REJ_PRICE_OFF_TICK,
                                     f"price {price} is not a multiple of the tick size {inst.tick}", ts)]
            if t > MAX_PRICE_TICKS:
                return [self._reject("replace", clid, broker, symbol, REJ_PRICE_TOO_LARGE,
                                     f"price {price} is too large", ts)]
            ticks = t
        if qty is not None and qty > MAX_QTY:
            return [self._reject("replace", clid, broker, symbol, REJ_QTY_TOO_LARGE,
                                 f"qty {qty} exceeds the maximum {MAX_QTY}", ts)]
        stop = NO_PRICE
        if stop_price is not None:
            srej, stop = self._stop_ticks("replace", inst, broker, clid, stop_price, ts)
            if srej is not None:
                return [srej]
        if oid == _ARCHIVED_OID:
            return [self._closed("replace", clid, broker, inst, ts)]
        if self.phase != CONTINUOUS and stop != NO_PRICE:
            return [self._reject("replace", clid, broker, symbol, REJ_MARKET_CLOSED,
                                 f"a stop order's trigger is changed in continuous trading only, not in the "
                                 f"{self.phase} phase", ts)]
        if self.phase != CONTINUOUS:
            return self._session_replace(inst, oid, ticks, qty, ts, stp)
        base = self._orders[oid].base  # type: ignore[union-attr]
        if base and qty is not None:  # the book knows the order from after its call auction
            if qty <= base:
                return [self._reject("replace", clid, broker, symbol, REJ_BAD_FIELD,
                                     f"qty {qty} is not above the {base} the call auction filled: cancel the "
                                     "order instead", ts)]
            qty -= base
        rows = _rows(book, book.replace(oid, ticks, NO_QTY if qty is None else qty, stp, stop))
        out = self._outcomes(inst, rows, ts, price=price, qty=qty, stop=stop)
        self._archive_finished()
        return out

    def end_of_day(self, ts: int = 0, date: str | None = None) -> list[ExExpired]:
        """Expire every resting DAY order of every book, and every GTD order whose expire_date is the day that
        ends (``date``, else the trading day of ``ts``, else none) or before, in the order they were accepted."""
        day = day_of(date) if date is not None else trading_day(ts, self.zone)
        expired: list[tuple[int, ExExpired]] = []
        for symbol, book in self.books.items():
            inst = self.instruments[symbol]
            rows = _rows(book, book.end_of_day(day))
            for row, ev in zip(rows, self._outcomes(inst, rows, ts), strict=True):
                assert type(ev) is ExExpired
                expired.append((row[E_OID], ev))
                if row[E_OID] in self._carried:  # an end of day in the pre-open: it leaves the call too
                    self._carried.discard(row[E_OID])
                    del self._collected[symbol][row[E_OID]]
                    self._levels[symbol].remove(row[E_SIDE], row[E_PRICE], ev.qty)
        expired.sort(key=lambda pair: pair[0])
        self._archive_finished()
        return [ev for _, ev in expired]

    # --------------------------------------------------------------- sessions

    @property
    def entry(self) -> bool:
        """Whether the phase takes new orders: the pre-open, continuous trading and the closing session."""
        return self.phase in ("pre_open", CONTINUOUS) or self._closing_session

    def session(self, phase: str, ts: int = 0, vwap_from: int | None = None, entry: bool = False) -> list[Outcome]:
        """Enter ``phase`` of the trading day (``docs/sessions.md``); return its outcomes.

        A ``phase`` event first. Leaving the pre-open runs each symbol's call auction (:meth:`_uncross`); leaving
        continuous trading publishes each symbol's closing price over its trades from ``vwap_from`` (ns; ``None``:
        the 30 minutes before ``ts``), kept as the next auction's previous close; ``closing`` with ``entry`` opens
        the closing session (orders at the closing price), whose orders expire when it ends; ``closed`` expires
        every DAY order, as ``end_of_day`` does, and moves the bands to the new closes. Entering the pre-open moves
        the bands (when no ``closed`` did) and brings the orders resting in the book into its call auction.
        """
        entry = entry and phase == "closing"
        prev, closing_session = self.phase, self._closing_session
        self.phase, self.sessions, self._closing_session = phase, True, entry
        out: list[Outcome] = [SessionEvent(shard=0, seq=0, tseq=0, epoch=0, ts=ts, kind="phase",
                                           phase=phase, entry=self.entry)]  # type: ignore[arg-type]
        if prev == "pre_open" and phase != "pre_open":
            for symbol in list(self._collected):
                out.extend(self._uncross(symbol, ts))
            self._collected.clear()
            self._levels.clear()
            self._indicative.clear()
            self._carried.clear()
        if closing_session and not entry:
            out.extend(self._end_closing_session(ts))
        if phase == CONTINUOUS:
            if self._day_trades is None:
                self._day_trades = {}
            out.extend(self._open_books(ts))
        elif self._day_trades is not None:
            out.extend(self._closing_prices(self._day_trades, ts, vwap_from))
            self._day_trades = None
        if entry and not closing_session:
            self._open_closing_session()
        if phase == "closed":
            out.extend(self.end_of_day(ts))
            out.extend(self._move_bands(ts))
        if phase == "pre_open" and prev != "pre_open":
            self._opening.clear()  # a call whose day never traded continuously opens nothing
            out.extend(self._move_bands(ts))
            for symbol in self.books:
                out.extend(self._carry_into_call(symbol, ts))
        return out

    def _open_books(self, ts: int) -> list[Outcome]:
        # Continuous trading begins: each symbol's call auction price becomes its book's last traded price (what a
        # stop's trigger and market protection are measured from), and the waiting stops it reaches trigger now.
        out: list[Outcome] = []
        for symbol, price in self._opening.items():
            inst, book = self._book(symbol)
            out.extend(self._outcomes(inst, _rows(book, book.print_trade(price)), ts))
        self._opening.clear()
        self._archive_finished()
        return out

    def _move_bands(self, ts: int) -> list[Outcome]:
        # A new day: each symbol's reference price becomes its last close, and a band around the reference
        # (band_pct) moves with it. The book takes the new band; an order resting outside it is cancelled first
        # (outside_new_band), bids then asks, each side in priority order.
        out: list[Outcome] = []
        for symbol, close in self.closes.items():
            inst = self.instruments[symbol]
            if inst.ref_price is not None and inst.to_ticks(inst.ref_price) == close:
                continue
            try:
                new = Instrument(symbol, tick=inst.tick, lot=inst.lot, ref_price=close * inst.tick,
                                 band_pct=inst.band_pct, market_protection_pct=inst.market_protection_pct)
            except InstrumentError:  # a band past the largest price: the day keeps the old one
                continue
            book = self.books[symbol]
            if new.band_lo is not None and new.band_hi is not None:
                lo, hi = new.band_lo, new.band_hi
                orders = cast(list[_Order], self._orders)
                outside = [oid for side in (BUY, SELL) for oid in book.resting_orders(side)
                           if not lo <= orders[oid].price <= hi]
                # then the waiting stops whose trigger or limit price the band leaves out
                outside += [oid for side in (BUY, SELL) for oid in book.stop_queue(side)
                            if not (lo <= orders[oid].stop <= hi
                                    and (orders[oid].otype == MARKET or lo <= orders[oid].price <= hi))]
                for oid in outside:
                    out.extend(self._cancelled_for(self._outcomes(inst, _rows(book, book.cancel(oid)), ts),
                                                   orders[oid], CXL_OUTSIDE_NEW_BAND))
            book.set_band(new.band_lo, new.band_hi, new.ref_ticks)
            self.instruments[symbol] = new
        self._archive_finished()
        return out

    def _carry_into_call(self, symbol: str, ts: int) -> list[Outcome]:
        # The orders resting in the book as the pre-open begins take part in its call auction where they rest, ahead
        # of the pre-open's orders: each side in the book's priority (price, then time), bids first. They count in
        # the indicative price from now.
        book = self.books[symbol]
        oids = book.resting_orders(BUY) + book.resting_orders(SELL)
        if not oids:
            return []
        coll = self._collected.setdefault(symbol, {})
        levels = self._levels.setdefault(symbol, AuctionLevels())
        for oid in oids:
            o = cast(_Order, self._orders[oid])
            coll[oid] = None
            self._carried.add(oid)
            levels.add(o.side, o.price, o.leaves)
        return self._indicate(self.instruments[symbol], ts)

    def _open_closing_session(self) -> None:
        # A book per symbol with a closing price, banded at exactly that price: its orders meet only each other.
        for symbol, inst in self.instruments.items():
            close = self.closes.get(symbol)
            if close is not None:
                book = self._book_factory(inst)
                book.set_band(close, close, close)
                self._closing_books[symbol] = book

    def _end_closing_session(self, ts: int) -> list[Outcome]:
        # The closing session's orders left expire (they are all DAY), in acceptance order, and its books go.
        expired: list[tuple[int, Outcome]] = []
        for symbol, book in self._closing_books.items():
            rows = _rows(book, book.end_of_day(0))
            expired.extend(zip((r[E_OID] for r in rows), self._outcomes(self.instruments[symbol], rows, ts),
                               strict=True))
        expired.sort(key=lambda pair: pair[0])
        self._closing_books.clear()
        self._closing_orders.clear()
        self._archive_finished()
        return [ev for _, ev in expired]

    def _reference(self, symbol: str) -> int | None:
        # The previous close of the auction's rule 3: the last closing price, else the instrument's reference price.
        close = self.closes.get(symbol)
        if close is not None:
            return close
        inst = self.instruments[symbol]
        return None if inst.ref_price is None else inst.to_ticks(inst.ref_price)

    def _event(self, kind: str, inst: Instrument, ts: int, price: int | None, qty: int = 0,
               unmatched: int = 0) -> SessionEvent:
        return SessionEvent(shard=0, seq=0, tseq=0, epoch=0, ts=ts, kind=kind, phase=self.phase,  # type: ignore[arg-type]
                            symbol=inst.symbol, price=None if price is None else inst.to_price(price), qty=qty,
                            unmatched=unmatched)

    def _session_new(self, inst: Instrument, broker: str, clid: str, side: int, otype: int, tif: int, ticks: int,
                     qty: int, ts: int, stp: int) -> list[Outcome]:
        # A new order outside continuous trading: collected in the pre-open, refused in the other phases. The
        # checks are the book's (docs/book-semantics.md), but for the time in force: a market order waits for
        # the auction whatever its time in force, a limit order must be able to wait (DAY or GTC).
        symbol = inst.symbol
        if self._closing_session:
            return self._closing_new(inst, broker, clid, side, otype, tif, ticks, qty, ts, stp)
        if self.phase != "pre_open":
            return [self._reject("new", clid, broker, symbol, REJ_MARKET_CLOSED,
                                 f"{_NO_ENTRY.get(self.phase, self.phase)}: new refused", ts)]
        market = otype == MARKET
        code, text = 0, ""
        if qty <= 0 or qty % inst.lot:
            code = REJ_QTY_NOT_LOT_MULTIPLE
        elif not market and tif in (IOC, FOK):
            code, text = REJ_BAD_TIF, (f"a {TIF_NAMES[tif]} limit order cannot wait for the pre-open's call "
                                       "auction: send it DAY or GTC, or in continuous trading")
        elif not market and ticks <= 0:
            code = REJ_PRICE_NOT_POSITIVE
        elif not market and inst.band_lo is not None and not inst.band_lo <= ticks <= (inst.band_hi or 0):
            code = REJ_PRICE_OUT_OF_BAND
        if code:
            return [self._reject("new", clid, broker, symbol, code, text or self._reject_text(
                inst, code, clid, tif, None if market else inst.to_price(ticks), qty), ts)]
        oid = len(self._orders)
        self._orders.append(_Order(symbol, broker, clid, side, otype, tif, price=ticks, qty=qty, leaves=qty))
        self._by_clid[(broker, clid)] = oid
        self._terms.append((ticks, qty))
        self._broker_no.setdefault(broker, len(self._broker_no))
        if stp != STP_OFF:  # for when the order enters the book after the auction
            self._stp_of[oid] = stp
        self._collected.setdefault(symbol, {})[oid] = None
        self._levels.setdefault(symbol, AuctionLevels()).add(side, None if market else ticks, qty)
        out: list[Outcome] = [ExAccepted(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=broker, oid=clid,
                                         symbol=symbol, side=SIDE_NAMES[side],  # type: ignore[arg-type]
                                         type=TYPE_NAMES[otype],  # type: ignore[arg-type]
                                         price=None if market else inst.to_price(ticks), qty=qty,
                                         tif=TIF_NAMES[tif])]  # type: ignore[arg-type]
        return out + self._indicate(inst, ts)

    def _session_cancel(self, inst: Instrument, oid: int, ts: int) -> list[Outcome]:
        # Cancel an order collected in the pre-open: it leaves the collection (and the book, where it rests there).
        o = cast(_Order, self._orders[oid])
        del self._collected[inst.symbol][oid]
        self._levels[inst.symbol].remove(o.side, None if o.otype == MARKET else o.price, o.leaves)
        if oid in self._carried:
            self._carried.discard(oid)
            book = self.books[inst.symbol]
            out = self._outcomes(inst, _rows(book, book.cancel(oid)), ts)
            self._archive_finished()
        else:
            out = [self._leave(inst, oid, CXL_REQUESTED, ts)]
        return out + self._indicate(inst, ts)

    def _leave(self, inst: Instrument, oid: int, reason: int, ts: int) -> ExCancelled:
        # An order of the collection leaves the market unfilled (nothing of it is in a book).
        o = cast(_Order, self._orders[oid])
        qty, o.leaves, o.state, o.reason = o.leaves, 0, "cancelled", CANCEL_REASON_NAMES[reason]
        self._stp_of.pop(oid, None)
        if self.keep_finished is not None:
            self._finished.append(oid)
        return ExCancelled(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=o.broker, oid=o.clid, symbol=inst.symbol,
                           qty=qty, cum_qty=o.cum, reason=o.reason)

    def _session_replace(self, inst: Instrument, oid: int, ticks: int, qty: int | None, ts: int,
                         stp: int = STP_OFF) -> list[Outcome]:
        # A replace outside continuous trading: of an order collected in the pre-open, it changes the collection
        # (keeping its place as the book would: same price, quantity not raised); of an order of the closing session,
        # its quantity; a booked order waits for continuous trading (it can be cancelled at any time), also when it
        # takes part in the pre-open's call.
        symbol = inst.symbol
        o = cast(_Order, self._orders[oid])
        if self._closing_orders and oid in self._closing_orders:
            return self._closing_replace(inst, oid, ticks, qty, ts, stp)
        if oid in self._carried:
            return [self._reject("replace", o.clid, o.broker, symbol, REJ_MARKET_CLOSED,
                                 f"order {o.clid} rests in the book from before the pre-open: it takes part in the "
                                 "call auction as it is and can be replaced in continuous trading; it can be "
                                 "cancelled", ts)]
        if oid not in self._collected.get(symbol, ()):
            if o.state not in ("new", "partially_filled"):
                return [self._closed("replace", o.clid, o.broker, inst, ts)]
            return [self._reject("replace", o.clid, o.broker, symbol, REJ_MARKET_CLOSED,
                                 f"order {o.clid} is in the book, which takes replaces in continuous trading only "
                                 f"(the phase is {self.phase}); it can be cancelled", ts)]
        if o.otype == MARKET:
            return [self._reject("replace", o.clid, o.broker, symbol, REJ_BAD_FIELD,
                                 f"order {o.clid} is a market order waiting for the call auction: it cannot be "
                                 "replaced; cancel it and send another", ts)]
        price = o.price if ticks == NO_PRICE else ticks
        new_qty = o.qty if qty is None else qty
        code = 0
        if new_qty <= 0 or new_qty % inst.lot:
            code = REJ_QTY_NOT_LOT_MULTIPLE
        elif price <= 0:
            code = REJ_PRICE_NOT_POSITIVE
        elif inst.band_lo is not None and not inst.band_lo <= price <= (inst.band_hi or 0):
            code = REJ_PRICE_OUT_OF_BAND
        if code:
            return [self._reject("replace", o.clid, o.broker, symbol, code, self._reject_text(
                inst, code, o.clid, o.tif, inst.to_price(price), new_qty), ts)]
        kept = price == o.price and new_qty <= o.qty
        levels = self._levels[symbol]
        levels.remove(o.side, o.price, o.leaves)
        levels.add(o.side, price, new_qty)
        o.price, o.qty, o.leaves = price, new_qty, new_qty
        if not kept:  # to the back of the time priority
            coll = self._collected[symbol]
            del coll[oid]
            coll[oid] = None
        out: list[Outcome] = [ExReplaced(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=o.broker, oid=o.clid,
                                         symbol=symbol, price=inst.to_price(price), qty=new_qty, leaves_qty=new_qty,
                                         cum_qty=0, kept_priority=kept)]
        return out + self._indicate(inst, ts)

    def _closing_new(self, inst: Instrument, broker: str, clid: str, side: int, otype: int, tif: int, ticks: int,
                     qty: int, ts: int, stp: int) -> list[Outcome]:
        # A new order of the closing session: a market order, or a limit order at exactly the closing price, into the
        # symbol's closing book, where it trades at the closing price with the session's other orders (price-time
        # priority, the broker's self-trade prevention) or rests until the session ends. A market order is a limit
        # order at the closing price there. GTC and GTD orders are refused: the session ends with the day.
        symbol = inst.symbol
        book = self._closing_books.get(symbol)
        if book is None:
            return [self._reject("new", clid, broker, symbol, REJ_MARKET_CLOSED,
                                 f"{symbol} has no closing price (no trade and no reference price): its closing "
                                 "session takes no orders", ts)]
        close = self.closes[symbol]
        if tif in (GTC, GTD):
            return [self._reject("new", clid, broker, symbol, REJ_BAD_TIF,
                                 f"the closing session's orders end with the day: send DAY (or IOC, FOK), not "
                                 f"{TIF_NAMES[tif]}", ts)]
        market = otype == MARKET
        if not market and ticks != close:
            return [self._reject("new", clid, broker, symbol, REJ_NOT_CLOSING_PRICE,
                                 f"price {inst.to_price(ticks)} is not the closing price {inst.to_price(close)}: the "
                                 "closing session trades at the closing price only (a market order takes it)", ts)]
        oid = len(self._orders)
        self._orders.append(_Order(symbol, broker, clid, side, otype, tif))
        bno = self._broker_no.setdefault(broker, len(self._broker_no))
        rows = _rows(book, book.new(oid, bno, side, LIMIT, tif, close, qty, stp))
        out = self._outcomes(inst, rows, ts, price=None if market else inst.to_price(ticks), qty=qty, tif=tif)
        if out and type(out[0]) is ExRejected:
            self._orders.pop()
        else:
            self._by_clid[(broker, clid)] = oid
            self._terms.append((ticks, qty))
            self._closing_orders[oid] = None
            self._archive_finished()
        return out

    def _closing_replace(self, inst: Instrument, oid: int, ticks: int, qty: int | None, ts: int,
                         stp: int) -> list[Outcome]:
        # A replace of a closing session's order changes its quantity (down: it keeps its place; up: to the back,
        # trading first if it can); a price, where given, must be the closing price (none for a market order).
        o = cast(_Order, self._orders[oid])
        close = self.closes[inst.symbol]
        if ticks != NO_PRICE and o.otype == MARKET:
            return [self._reject("replace", o.clid, o.broker, inst.symbol, REJ_BAD_FIELD,
                                 f"order {o.clid} is a market order of the closing session: it has no price to "
                                 "replace; change its qty", ts)]
        if ticks != NO_PRICE and ticks != close:
            return [self._reject("replace", o.clid, o.broker, inst.symbol, REJ_NOT_CLOSING_PRICE,
                                 f"price {inst.to_price(ticks)} is not the closing price {inst.to_price(close)}: the "
                                 "closing session trades at the closing price only", ts)]
        book = self._closing_books[inst.symbol]
        rows = _rows(book, book.replace(oid, NO_PRICE, NO_QTY if qty is None else qty, stp))
        out = self._outcomes(inst, rows, ts, price=inst.to_price(close), qty=qty)
        self._archive_finished()
        return out

    def _indicate(self, inst: Instrument, ts: int) -> list[Outcome]:
        # The indicative equilibrium of the symbol's collection, when it differs from the last one published.
        levels = self._levels.get(inst.symbol)
        eq = None
        if levels is not None:
            prices = levels.prices()
            ref = self._reference(inst.symbol)
            ref = ref if ref is not None else (prices[0] if prices else None)
            eq = None if ref is None else levels.equilibrium(ref)
        figures = (None, 0, 0) if eq is None else (eq.price, eq.tradable, eq.unmatched)
        if self._indicative.get(inst.symbol, (None, 0, 0)) == figures:
            return []
        self._indicative[inst.symbol] = figures
        return [self._event("indicative", inst, ts, *figures)]

    def _uncross(self, symbol: str, ts: int) -> list[Outcome]:
        # The call auction of one symbol (fabric.auction.uncross): the cancels of self-trade prevention, the trades at
        # the equilibrium price, an `auction` event, then what is left of the pre-open's orders enters the book as a
        # limit order (a market order at the equilibrium price, DAY when it was IOC or FOK; with no equilibrium it is
        # cancelled, `no_auction_price`). The orders that took part from the book stay there, less what they traded
        # (the book's replace down, which keeps their place). Without a previous close, rule 3 takes the lowest
        # collected price (and only market orders find no price).
        inst, book = self._book(symbol)
        orders = cast(list[_Order], self._orders)
        bno, stp_of, carried = self._broker_no, self._stp_of, self._carried
        coll = [AuctionOrder(oid, orders[oid].side, None if orders[oid].otype == MARKET else orders[oid].price,
                             orders[oid].leaves, bno[orders[oid].broker], stp_of.get(oid, STP_OFF))
                for oid in self._collected[symbol]]
        if not coll:
            return []
        ref = self._reference(symbol)
        if ref is None:
            prices = [a.price for a in coll if a.price is not None]
            ref = min(prices) if prices else None
        u = uncross(coll, ref) if ref is not None else Uncross(None, (), (), tuple(coll))
        out: list[Outcome] = []
        for a in u.stp_cancelled:  # self-trade prevention, before the call trades
            if a.oid in carried:
                out.extend(self._cancelled_for(self._outcomes(inst, _rows(book, book.cancel(a.oid)), ts),
                                               orders[a.oid], CXL_SELF_TRADE))
            else:
                out.append(self._leave(inst, a.oid, CXL_SELF_TRADE, ts))
        filled: dict[int, int] = {}  # what each order from the book traded in the call
        for t in u.trades:
            assert u.equilibrium is not None
            b, s = orders[t.buy], orders[t.sell]
            row = [0] * E_NFIELDS
            row[E_TYPE], row[E_OID], row[E_OTHER], row[E_SIDE] = EV_TRADE, t.buy, t.sell, BUY
            row[E_PRICE], row[E_QTY] = u.equilibrium.price, t.qty
            # Cumulative quantities as the book would count them (the engine adds an order's `base`).
            row[E_LEAVES], row[E_CUM] = b.leaves - t.qty, b.cum - b.base + t.qty
            row[E_OTHER_LEAVES], row[E_OTHER_CUM] = s.leaves - t.qty, s.cum - s.base + t.qty
            out.extend(self._outcomes(inst, [row], ts))
            for oid in (t.buy, t.sell):
                if oid in carried:
                    filled[oid] = filled.get(oid, 0) + t.qty
        for oid, q in filled.items():  # the book's orders keep their place with what is left of them
            side, price, qty, leaves, _ = cast(tuple[int, int, int, int, int], book.order(oid))
            if q < leaves:
                book.replace(oid, NO_PRICE, qty - q)
            else:  # filled: out of the book (a replace down to nothing would be refused for its quantity 0)
                book.cancel(oid)
            orders[oid].base += q
            if self.track_levels:
                self.touched.append((symbol, side, price))
        eq = u.equilibrium
        out.append(self._event("auction", inst, ts, None if eq is None else eq.price,
                               0 if eq is None else eq.tradable, 0 if eq is None else eq.unmatched))
        for a in u.unpriced:
            out.append(self._leave(inst, a.oid, CXL_NO_AUCTION_PRICE, ts))
        for lf in u.leftovers:
            if lf.oid in carried:  # it never left the book
                continue
            o = orders[lf.oid]
            if lf.was_market:
                o.otype, o.tif = LIMIT, DAY if o.tif in (IOC, FOK) else o.tif
            o.price, o.base = lf.price, o.cum
            rows = _rows(book, book.new(lf.oid, self._broker_no[o.broker], o.side, LIMIT, o.tif, lf.price, lf.qty,
                                        self._stp_of.pop(lf.oid, STP_OFF)))
            if rows and rows[0][E_TYPE] == EV_ACCEPTED:  # accepted in the pre-open already: not again
                if self.track_levels:
                    self.touched.append((symbol, o.side, lf.price))
                out.extend(self._outcomes(inst, rows[1:], ts))
            else:  # the book refused it (an unbanded book's ladder span): it leaves the market
                o.leaves = lf.qty
                ev = self._leave(inst, lf.oid, CXL_REQUESTED, ts)
                ev.reason = o.reason = REJECT_NAMES[rows[0][E_REASON]] if rows else "rejected"
                out.append(ev)
        for oid in self._collected[symbol]:
            self._stp_of.pop(oid, None)
        if eq is not None and u.trades:  # the opening price: printed into the book when continuous trading begins
            self._opening[symbol] = eq.price
        self._archive_finished()
        return out

    def _closing_prices(self, trades: dict[str, array[int]], ts: int, vwap_from: int | None) -> list[Outcome]:
        # Each symbol's closing price (fabric.calendar.closing_price) as a `close` event, kept for the next day.
        start = ts - 30 * 60 * 1_000_000_000 if vwap_from is None else vwap_from
        end = ts + 1  # the trades of commands before this one: at its instant at the latest
        day = TradingDay(day=_dt.date(1970, 1, 1), pre_open=0, entry_close=0, matching_end=0, continuous=0,
                         vwap_from=start, continuous_end=end, closing_session=end, close=end)
        out: list[Outcome] = []
        for symbol, inst in self.instruments.items():
            ref = self._reference(symbol)
            flat = iter(trades.get(symbol, ()))
            ts_ = list(zip(flat, flat, flat, strict=True))  # (ticks, qty, ts)
            if ref is None and not ts_:
                continue
            price, how = closing_price(ts_, day, ref if ref is not None else 0)
            if price <= 0:  # no reference and no trade before the close
                continue
            self.closes[symbol] = price
            vol = sum(q for _, q, t in ts_ if start <= t < end) if how == "vwap" else 0
            out.append(self._event("close", inst, ts, price, vol))
        return out

    # ---------------------------------------------------------------- reading

    def book_levels(self, symbol: str, n: int | None = None) -> dict[str, Any]:
        """Return the book of ``symbol`` as ``{"event":"book", "bids": [[price, qty, orders], ...], "asks": ...}``."""
        inst, book = self._book(symbol)
        return {
            "event": "book",
            "symbol": symbol,
            "bids": [[inst.to_price(p), q, c] for p, q, c in book.depth(BUY, n)],
            "asks": [[inst.to_price(p), q, c] for p, q, c in book.depth(1, n)],
        }

    def order_status(self, symbol: str, broker: str, clid: str, op: str = "status") -> OrderStatus | None:
        """Return the current state of a broker's order, or ``None`` if the broker has no such order on ``symbol``.

        ``state`` is one of ``new`` (open, nothing filled), ``partially_filled``, ``filled``,
        ``cancelled`` and ``expired``; ``reason`` is the cancel reason of a ``cancelled`` order
        (``requested``, ``unfilled_ioc_remainder``, ``fok_not_fillable``, ``self_trade``) and ``None`` otherwise.
        ``op`` is the request the status answers (``docs/protocol.md``, section 5).
        """
        oid = self._by_clid.get((broker, clid), -1)
        if oid < 0:
            if self._archived.get(f"{broker}\x00{clid}") == symbol:
                return OrderStatus(op=op, oid=clid, symbol=symbol, state="unknown", reason=ARCHIVED)
            return None
        o = self._orders[oid]
        if o is None or o.symbol != symbol:
            return None
        return self._status(o, op)

    def _status(self, o: _Order, op: str) -> OrderStatus:
        return OrderStatus(op=op, oid=o.clid, symbol=o.symbol, state=o.state,  # type: ignore[arg-type]
                           side=SIDE_NAMES[o.side], type=TYPE_NAMES[o.otype],  # type: ignore[arg-type]
                           price=None if o.otype == MARKET else self.instruments[o.symbol].to_price(o.price),
                           qty=o.qty, cum_qty=o.cum, leaves_qty=o.leaves, tif=TIF_NAMES[o.tif],  # type: ignore[arg-type]
                           reason=o.reason, post_only=bool(o.flags & FLAG_POST_ONLY),
                           expire_date=_date_text(o.expire) if o.expire else None, disclosed_qty=o.disclosed or None,
                           stop_price=self.instruments[o.symbol].to_price(o.stop) if o.stop else None,
                           triggered=o.triggered)

    def open_orders(self, broker: str, symbol: str | None = None) -> list[OrderStatus]:
        """Return the status of every open order of ``broker`` (of one symbol, or all), oldest first."""
        return [self._status(o, "orders") for o in self._orders
                if o is not None and o.broker == broker and o.state in ("new", "partially_filled")
                and (symbol is None or o.symbol == symbol)]

    def is_retry(self, cmd: NewOrder) -> bool:
        """Tell whether a ``new`` is a resend of the broker's accepted order with this id (same terms).

        The engine's own state can differ from the terms sent (a replace changes price and quantity), so
        the comparison is with the terms of the original acceptance, which the engine keeps.
        """
        oid = self._by_clid.get((cmd.broker, cmd.oid), -1)
        if oid < 0:
            # An archived order's terms are gone: a new with its id is taken as a resend and answered with its
            # state (from the stores), never executed.
            return self._archived.get(f"{cmd.broker}\x00{cmd.oid}") == cmd.symbol
        o = self._orders[oid]
        assert o is not None
        inst = self.instruments.get(cmd.symbol)
        ticks = inst.ticks_of(cmd.price) if inst is not None and cmd.price is not None else 0
        return (o.symbol, o.side, o.otype, o.tif) == (cmd.symbol, SIDE_CODES[cmd.side], TYPE_CODES[cmd.type],
                                                       TIF_CODES[cmd.tif]) and self._terms[oid] == (ticks, cmd.qty)

    def order_ref(self, oid: int) -> tuple[str, str, str]:
        """Return (symbol, broker, client order id) of an engine order id (not archived)."""
        o = self._orders[oid]
        assert o is not None, "an archived order"
        return o.symbol, o.broker, o.clid

    def _archive_finished(self) -> None:
        # The oldest finished orders beyond `keep_finished` leave memory (their ids stay used).
        fin, keep = self._finished, self.keep_finished
        while keep is not None and len(fin) > keep:
            oid = fin.popleft()
            o = self._orders[oid]
            if o is None:
                continue
            del self._by_clid[(o.broker, o.clid)]
            self._archived[f"{o.broker}\x00{o.clid}"] = o.symbol
            self._orders[oid] = None
            self._terms[oid] = None

    @property
    def in_memory(self) -> int:
        """Return the number of orders the engine holds (open, and finished but not archived)."""
        return len(self._by_clid)

    # --------------------------------------------------------------- outcomes

    @staticmethod
    def _reject(op: str, clid: str, broker: str, symbol: str, code: int, text: str, ts: int) -> ExRejected:
        return ExRejected(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=broker, op=op, oid=clid, symbol=symbol,
                          reason=REJECT_NAMES[code], text=text)

    def _reject_text(self, inst: Instrument, code: int, clid: str, tif: int | None, price: Decimal | str | None,
                     qty: int | None, disclosed: int = 0, stop: int = 0) -> str:
        if code == REJ_QTY_NOT_LOT_MULTIPLE:
            return f"qty {qty} is not a positive multiple of the lot size {inst.lot}"
        if code == REJ_PRICE_OUT_OF_BAND:
            ticks = None if price is None else self._ticks(inst, price)
            if stop > 0 and (ticks is None or inst.band_lo is None or inst.band_lo <= ticks <= (inst.band_hi or 0)):
                return f"stop_price {inst.to_price(stop)} is outside the price band {inst.band_text()}"
            return f"price {price} is outside the price band {inst.band_text()}"
        if code == REJ_STOP_LIMIT:
            return (f"a stop-loss limit order's price must be at or beyond its trigger: a buy's at or above, a "
                    f"sell's at or below stop_price{'' if stop <= 0 else ' ' + str(inst.to_price(stop))}")
        if code == REJ_STOP_WOULD_TRIGGER:
            return (f"stop_price{'' if stop <= 0 else ' ' + str(inst.to_price(stop))} has already been reached by the "
                    "last traded price: a buy stop's trigger must be above it, a sell stop's below it")
        if code == REJ_BAD_STOP:
            return ("a stop order waits for its trigger: GTC, DAY or GTD, not IOC or FOK, never post-only nor with a "
                    "disclosed quantity; a stop-loss market order has no limit price to replace")
        if code == REJ_NOT_STOP:
            return f"order {clid} is not a stop order waiting for its trigger: it has no stop_price to change"
        if code == REJ_PRICE_NOT_POSITIVE:
            return f"price {price} is not positive"
        if code == REJ_ORDER_CLOSED:
            return f"order {clid} is no longer open (filled, cancelled, replaced away or expired)"
        if code == REJ_BAD_TIF:
            if tif is not None and TIF_NAMES[tif] in ("IOC", "FOK"):  # what a post-only order cannot be
                return f"a post-only order rests: GTC, DAY or GTD, not {TIF_NAMES[tif]}"
            return f"market orders must be IOC or FOK, not {TIF_NAMES[tif or 0]}"
        if code == REJ_BAD_DISCLOSED:
            return (f"disclosed_qty {disclosed} must be a multiple of the lot size {inst.lot} from 10 % of qty {qty} "
                    "up to qty, on a limit order that rests (GTC, DAY, GTD)")
        if code == REJ_WOULD_CROSS:
            return (f"post-only order at {price} would trade on entry"
                    if price is not None else "post-only order would trade on entry at its new price")
        if code == REJ_LADDER_SPAN:
            return f"price {price} is more than {self._max_ladder_rows} ticks away from this book's other prices"
        return REJECT_NAMES.get(code, str(code))

    def _outcomes(self, inst: Instrument, rows: list[list[int]], ts: int, price: Decimal | str | None = None,
                  qty: int | None = None, tif: int | None = None, disclosed: int = 0,
                  stop: int = 0) -> list[Outcome]:
        # The book's rows as outcome messages, in the book's order; a trade gives the trade and its two
        # fills, the aggressor's first. The engine's memory of each order follows the rows.
        symbol = inst.symbol
        to_price = inst.to_price
        orders = cast(list[_Order], self._orders)  # rows name orders in memory only: resting, or the one entering
        track = self.touched.append if self.track_levels else None
        done = self._finished.append if self.keep_finished is not None else None  # orders that finish, for archiving
        day = self._day_trades  # the continuous trades of a day with sessions, for its closing price
        out: list[Outcome] = []
        for r in rows:
            typ = r[E_TYPE]
            o = orders[r[E_OID]]
            if typ == EV_TRADE:
                trade_id = self._trade_no[symbol] = self._trade_no[symbol] + 1
                rest = orders[r[E_OTHER]]
                o.leaves, o.cum = r[E_LEAVES], r[E_CUM] + o.base
                o.state = "filled" if o.leaves == 0 else "partially_filled"
                rest.leaves, rest.cum = r[E_OTHER_LEAVES], r[E_OTHER_CUM] + rest.base
                rest.state = "filled" if rest.leaves == 0 else "partially_filled"
                if done is not None:
                    if o.leaves == 0:
                        done(r[E_OID])
                    if rest.leaves == 0:
                        done(r[E_OTHER])
                if track is not None:
                    track((symbol, rest.side, r[E_PRICE]))
                px = to_price(r[E_PRICE])
                q = r[E_QTY]
                if day is not None:
                    (day.get(symbol) or day.setdefault(symbol, array("q"))).extend((r[E_PRICE], q, ts))
                buy, sell = (o, rest) if r[E_SIDE] == BUY else (rest, o)
                out.append(Trade(shard=0, seq=0, tseq=0, epoch=0, ts=ts, symbol=symbol, trade_id=trade_id, price=px,
                                 qty=q, aggressor=SIDE_NAMES[r[E_SIDE]],  # type: ignore[arg-type]
                                 buy_broker=buy.broker, buy_oid=buy.clid, sell_broker=sell.broker,
                                 sell_oid=sell.clid))
                out.append(ExFill(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=o.broker, oid=o.clid, symbol=symbol,
                                  side=SIDE_NAMES[o.side], price=px, last_qty=q,  # type: ignore[arg-type]
                                  cum_qty=o.cum, leaves_qty=o.leaves, trade_id=trade_id, aggressor=True))
                out.append(ExFill(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=rest.broker, oid=rest.clid,
                                  symbol=symbol, side=SIDE_NAMES[rest.side], price=px,  # type: ignore[arg-type]
                                  last_qty=q, cum_qty=rest.cum, leaves_qty=rest.leaves, trade_id=trade_id,
                                  aggressor=False))
            elif typ == EV_ACCEPTED:
                o.price, o.qty, o.leaves = r[E_PRICE], r[E_QTY], r[E_QTY]
                market = o.otype == MARKET
                if track is not None and not market:
                    track((symbol, o.side, o.price))
                out.append(ExAccepted(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=o.broker, oid=o.clid,
                                      symbol=symbol, side=SIDE_NAMES[o.side],  # type: ignore[arg-type]
                                      type=TYPE_NAMES[o.otype],  # type: ignore[arg-type]
                                      price=None if market else to_price(r[E_PRICE]), qty=r[E_QTY],
                                      tif=TIF_NAMES[o.tif],  # type: ignore[arg-type]
                                      post_only=bool(o.flags & FLAG_POST_ONLY),
                                      expire_date=_date_text(o.expire) if o.expire else None,
                                      disclosed_qty=o.disclosed or None,
                                      stop_price=to_price(r[E_OTHER]) if r[E_OTHER] else None))
            elif typ == EV_TRIGGERED:
                o.triggered = True
                market = o.otype == MARKET
                if track is not None and not market:
                    track((symbol, o.side, o.price))
                out.append(ExTriggered(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=o.broker, oid=o.clid,
                                       symbol=symbol, side=SIDE_NAMES[o.side],  # type: ignore[arg-type]
                                       type=TYPE_NAMES[o.otype],  # type: ignore[arg-type]
                                       price=None if market else to_price(r[E_PRICE]), qty=r[E_QTY],
                                       stop_price=to_price(r[E_OTHER])))
            elif typ == EV_CANCELLED:
                o.leaves, o.state, o.reason = 0, "cancelled", CANCEL_REASON_NAMES[r[E_REASON]]
                if done is not None:
                    done(r[E_OID])
                if track is not None:
                    track((symbol, o.side, o.price))
                out.append(ExCancelled(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=o.broker, oid=o.clid,
                                       symbol=symbol, qty=r[E_QTY], cum_qty=r[E_CUM] + o.base, reason=o.reason))
            elif typ == EV_REPLACED:
                if track is not None:
                    track((symbol, o.side, o.price))
                    track((symbol, o.side, r[E_PRICE]))
                o.price, o.qty, o.leaves, o.cum = r[E_PRICE], r[E_QTY] + o.base, r[E_LEAVES], r[E_CUM] + o.base
                if r[E_OTHER_LEAVES]:  # a waiting stop: its trigger
                    o.stop = r[E_OTHER_LEAVES]
                if o.leaves == 0:
                    o.state = "filled"  # cut down to what had filled: done
                    if done is not None:
                        done(r[E_OID])
                out.append(ExReplaced(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=o.broker, oid=o.clid,
                                      symbol=symbol, price=None if o.otype == MARKET else to_price(r[E_PRICE]),
                                      qty=o.qty, leaves_qty=r[E_LEAVES], cum_qty=o.cum, kept_priority=bool(r[E_OTHER]),
                                      stop_price=to_price(r[E_OTHER_LEAVES]) if r[E_OTHER_LEAVES] else None))
            elif typ == EV_EXPIRED:
                o.leaves, o.state = 0, "expired"
                if done is not None:
                    done(r[E_OID])
                if track is not None:
                    track((symbol, o.side, o.price))
                out.append(ExExpired(shard=0, seq=0, tseq=0, epoch=0, ts=ts, broker=o.broker, oid=o.clid,
                                     symbol=symbol, qty=r[E_QTY], cum_qty=r[E_CUM] + o.base))
            elif typ == EV_REJECTED:
                code = r[E_REASON]
                op = {1: "new", 2: "cancel", 3: "replace"}.get(r[E_OTHER], "new")
                out.append(self._reject(op, o.clid, o.broker, symbol, code,
                                        self._reject_text(inst, code, o.clid, tif, price, qty, disclosed,
                                                          o.stop if stop == NO_PRICE else stop), ts))
            else:  # pragma: no cover - a kernel bug
                raise RuntimeError(f"unknown event row {r}")
        return out
