"""The matching engine: every symbol's book behind one deterministic entry point.

The engine is where names become numbers and back: a broker's client order id
becomes a dense engine order id, a decimal price becomes ticks, and the books'
integer event rows become events with symbols, brokers, client order ids and
decimal prices.  It checks what needs the engine's memory (client order ids
already used, orders that exist) and the instrument's tick; the books check the
rest (lot, time in force, band), so both the compiled and the reference book
enforce the same rules.

The same commands in the same order always give the same events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from fabric.book import OrderBook
from fabric.constants import (
    BUY,
    CANCEL_REASON_NAMES,
    E_CUM,
    E_LEAVES,
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
    MARKET,
    MAX_LADDER_ROWS,
    MAX_PRICE_TICKS,
    MAX_QTY,
    NO_PRICE,
    NO_QTY,
    REJ_BAD_TIF,
    REJ_DUPLICATE_OID,
    REJ_INSTRUMENT_EXISTS,
    REJ_LADDER_SPAN,
    REJ_ORDER_CLOSED,
    REJ_PRICE_NOT_POSITIVE,
    REJ_PRICE_OFF_TICK,
    REJ_PRICE_OUT_OF_BAND,
    REJ_PRICE_TOO_LARGE,
    REJ_QTY_NOT_LOT_MULTIPLE,
    REJ_QTY_TOO_LARGE,
    REJ_UNKNOWN_ORDER,
    REJECT_NAMES,
    SIDE_NAMES,
    TIF_NAMES,
    TYPE_NAMES,
)
from fabric.instruments import Instrument

Event = dict[str, Any]


class Book(Protocol):
    """What the engine needs of a book: see ``docs/book-semantics.md``."""

    def new(self, oid: int, broker: int, side: int, otype: int, tif: int, price: int, qty: int) -> Any: ...
    def cancel(self, oid: int) -> Any: ...
    def replace(self, oid: int, price: int, qty: int) -> Any: ...
    def end_of_day(self) -> Any: ...
    def depth(self, side: int, n: int | None = None) -> list[tuple[int, int, int]]: ...
    def level(self, side: int, price: int) -> tuple[int, int]: ...


BookFactory = Callable[[Instrument], Book]


def _rows(book: Book, result: Any) -> list[list[int]]:
    # The compiled book returns a count of rows in its event buffer; the
    # reference book returns the rows themselves.
    if isinstance(result, int):
        return book.out[:result].tolist()  # type: ignore[attr-defined]
    return list(result)


def compiled_book(inst: Instrument) -> Book:
    """Return a numba-compiled book for ``inst``."""
    return OrderBook(lot=inst.lot, band_lo=inst.band_lo, band_hi=inst.band_hi)


@dataclass(slots=True)
class _Order:
    # What the engine remembers of an order it accepted, kept current from the
    # book's events: enough to answer a status query or a retried `new`.
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


class MatchingEngine:
    """Route commands to per-symbol books and turn their output into events.

    Parameters
    ----------
    book_factory
        Makes the book of a new symbol; the compiled book by default, the
        reference book in property tests.
    """

    def __init__(self, book_factory: BookFactory = compiled_book, max_ladder_rows: int = MAX_LADDER_ROWS) -> None:
        self._book_factory = book_factory
        self._max_ladder_rows = max_ladder_rows
        self.instruments: dict[str, Instrument] = {}
        self.books: dict[str, Book] = {}
        self._broker_no: dict[str, int] = {}
        self._by_clid: dict[tuple[str, str], int] = {}
        self._orders: list[_Order] = []
        self._terms: list[tuple[int, int]] = []  # (price ticks, qty) each order was accepted with
        self._trade_no: dict[str, int] = {}
        # With `track_levels`, (symbol, side, price ticks) of every level the commands since the
        # last drain may have changed: the matcher drains it to publish book level changes.
        self.track_levels = False
        self.touched: list[tuple[str, int, int]] = []

    # ------------------------------------------------------------ instruments

    def add_instrument(self, inst: Instrument) -> Event | None:
        """Make ``inst`` tradable; return a reject event if the symbol already has a book."""
        if inst.symbol in self.books:
            return self._reject("instrument", None, None, inst.symbol, REJ_INSTRUMENT_EXISTS,
                                f"instrument {inst.symbol} is already defined or trading")
        self.instruments[inst.symbol] = inst
        self.books[inst.symbol] = self._book_factory(inst)
        self._trade_no[inst.symbol] = 0
        return None

    def _book(self, symbol: str) -> tuple[Instrument, Book]:
        book = self.books.get(symbol)
        if book is None:
            self.add_instrument(Instrument(symbol))
            book = self.books[symbol]
        return self.instruments[symbol], book

    # --------------------------------------------------------------- commands

    def new_order(
        self,
        symbol: str,
        broker: str,
        clid: str,
        side: int,
        otype: int,
        tif: int,
        price: Decimal | None,
        qty: int,
    ) -> list[Event]:
        """Enter a new order and return its events (accepted or rejected, trades, cancel of an unfilled rest)."""
        inst, book = self._book(symbol)
        if (broker, clid) in self._by_clid:
            return [self._reject("new", clid, broker, symbol, REJ_DUPLICATE_OID,
                                 f"client order id {clid} already used by broker {broker}")]
        if qty > MAX_QTY:
            return [self._reject("new", clid, broker, symbol, REJ_QTY_TOO_LARGE,
                                 f"qty {qty} exceeds the maximum {MAX_QTY}")]
        ticks = 0
        if otype != MARKET:
            assert price is not None
            t = inst.to_ticks(price)
            if t is None:
                return [self._reject("new", clid, broker, symbol, REJ_PRICE_OFF_TICK,
                                     f"price {price} is not a multiple of the tick size {inst.tick}")]
            if t > MAX_PRICE_TICKS:
                return [self._reject("new", clid, broker, symbol, REJ_PRICE_TOO_LARGE, f"price {price} is too large")]
            ticks = t
        oid = len(self._orders)
        order = _Order(symbol, broker, clid, side, otype, tif)
        self._orders.append(order)
        bno = self._broker_no.setdefault(broker, len(self._broker_no))
        rows = _rows(book, book.new(oid, bno, side, otype, tif, ticks, qty))
        events = self._events(inst, rows, price=price, qty=qty, tif=tif)
        if events and events[0]["event"] == "rejected":
            self._orders.pop()  # a rejected order does not use its client order id
        else:
            self._by_clid[(broker, clid)] = oid
            self._terms.append((ticks, qty))
        return events

    def _lookup(self, op: str, symbol: str, broker: str, clid: str) -> tuple[int, Event | None]:
        oid = self._by_clid.get((broker, clid), -1)
        if oid < 0 or self._orders[oid].symbol != symbol:
            return -1, self._reject(op, clid, broker, symbol, REJ_UNKNOWN_ORDER,
                                    f"broker {broker} has no order {clid} in {symbol}")
        return oid, None

    def cancel(self, symbol: str, broker: str, clid: str) -> list[Event]:
        """Cancel an open order of ``broker``; return the events."""
        oid, rej = self._lookup("cancel", symbol, broker, clid)
        if rej is not None:
            return [rej]
        inst, book = self._book(symbol)
        return self._events(inst, _rows(book, book.cancel(oid)))

    def replace(self, symbol: str, broker: str, clid: str, price: Decimal | None, qty: int | None) -> list[Event]:
        """Cancel/replace an open order: ``qty`` is the new total quantity; ``None`` keeps a field."""
        oid, rej = self._lookup("replace", symbol, broker, clid)
        if rej is not None:
            return [rej]
        inst, book = self._book(symbol)
        ticks = NO_PRICE
        if price is not None:
            t = inst.to_ticks(price)
            if t is None:
                return [self._reject("replace", clid, broker, symbol, REJ_PRICE_OFF_TICK,
                                     f"price {price} is not a multiple of the tick size {inst.tick}")]
            if t > MAX_PRICE_TICKS:
                return [self._reject("replace", clid, broker, symbol, REJ_PRICE_TOO_LARGE,
                                     f"price {price} is too large")]
            ticks = t
        if qty is not None and qty > MAX_QTY:
            return [self._reject("replace", clid, broker, symbol, REJ_QTY_TOO_LARGE,
                                 f"qty {qty} exceeds the maximum {MAX_QTY}")]
        rows = _rows(book, book.replace(oid, ticks, NO_QTY if qty is None else qty))
        return self._events(inst, rows, price=price, qty=qty)

    def end_of_day(self) -> list[Event]:
        """Expire every resting DAY order of every book, in the order they were accepted."""
        expired: list[tuple[int, Event]] = []
        for symbol, book in self.books.items():
            inst = self.instruments[symbol]
            for ev in self._events(inst, _rows(book, book.end_of_day())):
                expired.append((ev.pop("_oid"), ev))
        expired.sort(key=lambda pair: pair[0])
        return [ev for _, ev in expired]

    # ---------------------------------------------------------------- reading

    def book_levels(self, symbol: str, n: int | None = None) -> Event:
        """Return the book of ``symbol`` as ``{"event":"book", "bids": [[price, qty, orders], ...], "asks": ...}``."""
        inst, book = self._book(symbol)
        return {
            "event": "book",
            "symbol": symbol,
            "bids": [[inst.to_price(p), q, c] for p, q, c in book.depth(BUY, n)],
            "asks": [[inst.to_price(p), q, c] for p, q, c in book.depth(1, n)],
        }

    def order_status(self, symbol: str, broker: str, clid: str) -> Event | None:
        """Return the current state of a broker's order, or ``None`` if the broker has no such order on ``symbol``.

        ``state`` is one of ``new`` (open, nothing filled), ``partially_filled``, ``filled``,
        ``cancelled`` and ``expired``; ``reason`` is the cancel reason of a ``cancelled`` order
        (``requested``, ``unfilled_ioc_remainder``, ``fok_not_fillable``) and ``None`` otherwise.
        """
        oid = self._by_clid.get((broker, clid), -1)
        if oid < 0 or self._orders[oid].symbol != symbol:
            return None
        o = self._orders[oid]
        inst = self.instruments[symbol]
        ev: Event = {"event": "status", "symbol": symbol, "oid": clid, "broker": broker,
                     "side": SIDE_NAMES[o.side], "type": TYPE_NAMES[o.otype], "tif": TIF_NAMES[o.tif]}
        if o.otype != MARKET:
            ev["price"] = inst.to_price(o.price)
        ev.update(qty=o.qty, leaves_qty=o.leaves, cum_qty=o.cum, state=o.state, reason=o.reason)
        return ev

    def open_orders(self, broker: str, symbol: str | None = None) -> list[Event]:
        """Return the status of every open order of ``broker`` (of one symbol, or all), oldest first."""
        out = []
        for o in self._orders:
            if o.broker == broker and o.state in ("new", "partially_filled") and (symbol is None or o.symbol == symbol):
                st = self.order_status(o.symbol, broker, o.clid)
                if st is not None and st["state"] in ("new", "partially_filled"):
                    out.append(st)
        return out

    def is_retry(self, symbol: str, broker: str, clid: str, side: int, otype: int, tif: int,
                 price: Decimal | None, qty: int) -> bool:
        """Tell whether a `new` order is a resend of the broker's accepted order with this id (same terms).

        The engine's own state can differ from the terms sent (a replace changes price and quantity), so
        the comparison is with the terms of the original acceptance, which the engine keeps.
        """
        oid = self._by_clid.get((broker, clid), -1)
        if oid < 0:
            return False
        o = self._orders[oid]
        terms = self._terms[oid]
        inst = self.instruments.get(symbol)
        ticks = inst.to_ticks(price) if inst is not None and price is not None else 0
        return (o.symbol, o.side, o.otype, o.tif) == (symbol, side, otype, tif) and terms == (ticks, qty)

    def order_ref(self, oid: int) -> tuple[str, str, str]:
        """Return (symbol, broker, client order id) of an engine order id."""
        o = self._orders[oid]
        return o.symbol, o.broker, o.clid

    # --------------------------------------------------------------- decoding

    def _reject(self, op: str, clid: str | None, broker: str | None, symbol: str | None, code: int, text: str) -> Event:
        return {"event": "rejected", "op": op, "oid": clid, "broker": broker, "symbol": symbol,
                "reason": REJECT_NAMES[code], "text": text}

    def _reject_text(self, inst: Instrument, code: int, clid: str, tif: int | None, price: Decimal | None,
                     qty: int | None) -> str:
        if code == REJ_QTY_NOT_LOT_MULTIPLE:
            return f"qty {qty} is not a positive multiple of the lot size {inst.lot}"
        if code == REJ_PRICE_OUT_OF_BAND:
            return f"price {price} is outside the price band {inst.band_text()}"
        if code == REJ_PRICE_NOT_POSITIVE:
            return f"price {price} is not positive"
        if code == REJ_ORDER_CLOSED:
            return f"order {clid} is no longer open (filled, cancelled, replaced away or expired)"
        if code == REJ_BAD_TIF:
            return f"market orders must be IOC or FOK, not {TIF_NAMES[tif or 0]}"
        if code == REJ_LADDER_SPAN:
            return f"price {price} is more than {self._max_ladder_rows} ticks away from this book's other prices"
        return REJECT_NAMES.get(code, str(code))

    def _events(self, inst: Instrument, rows: list[list[int]], price: Decimal | None = None, qty: int | None = None,
                tif: int | None = None) -> list[Event]:
        symbol = inst.symbol
        to_price = inst.to_price
        orders = self._orders
        events: list[Event] = []
        for r in rows:
            typ = r[E_TYPE]
            o = orders[r[E_OID]]
            if typ == EV_TRADE:
                self._trade_no[symbol] += 1
                rest = orders[r[E_OTHER]]
                o.leaves, o.cum = r[E_LEAVES], r[E_CUM]
                o.state = "filled" if o.leaves == 0 else "partially_filled"
                rest.leaves, rest.cum = r[E_OTHER_LEAVES], r[E_OTHER_CUM]
                rest.state = "filled" if rest.leaves == 0 else "partially_filled"
                if self.track_levels:
                    self.touched.append((symbol, rest.side, r[E_PRICE]))
                buy, sell = (o, rest) if r[E_SIDE] == BUY else (rest, o)
                events.append({
                    "event": "trade", "symbol": symbol, "trade_id": self._trade_no[symbol],
                    "price": to_price(r[E_PRICE]), "qty": r[E_QTY],
                    "buy_oid": buy.clid, "sell_oid": sell.clid,
                    "buy_broker": buy.broker, "sell_broker": sell.broker,
                    "aggressor": SIDE_NAMES[r[E_SIDE]],
                    "aggressor_leaves_qty": r[E_LEAVES], "aggressor_cum_qty": r[E_CUM],
                    "resting_leaves_qty": r[E_OTHER_LEAVES], "resting_cum_qty": r[E_OTHER_CUM],
                })
            elif typ == EV_ACCEPTED:
                o.price, o.qty, o.leaves = r[E_PRICE], r[E_QTY], r[E_QTY]
                if self.track_levels and o.otype != MARKET:
                    self.touched.append((symbol, o.side, o.price))
                ev: Event = {"event": "accepted", "symbol": symbol, "oid": o.clid, "broker": o.broker,
                      "side": SIDE_NAMES[o.side], "type": TYPE_NAMES[o.otype]}
                if o.otype != MARKET:
                    ev["price"] = to_price(r[E_PRICE])
                ev["qty"] = r[E_QTY]
                ev["tif"] = TIF_NAMES[o.tif]
                events.append(ev)
            elif typ == EV_CANCELLED:
                o.leaves, o.state, o.reason = 0, "cancelled", CANCEL_REASON_NAMES[r[E_REASON]]
                if self.track_levels:
                    self.touched.append((symbol, o.side, o.price))
                events.append({"event": "cancelled", "symbol": symbol, "oid": o.clid, "broker": o.broker,
                               "qty": r[E_QTY], "cum_qty": r[E_CUM], "reason": o.reason})
            elif typ == EV_REPLACED:
                if self.track_levels:
                    self.touched.append((symbol, o.side, o.price))
                    self.touched.append((symbol, o.side, r[E_PRICE]))
                o.price, o.qty, o.leaves, o.cum = r[E_PRICE], r[E_QTY], r[E_LEAVES], r[E_CUM]
                if o.leaves == 0:
                    o.state = "filled"  # cut down to what had filled: done
                events.append({"event": "replaced", "symbol": symbol, "oid": o.clid, "broker": o.broker,
                               "price": to_price(r[E_PRICE]), "qty": r[E_QTY], "leaves_qty": r[E_LEAVES],
                               "cum_qty": r[E_CUM], "kept_priority": bool(r[E_OTHER])})
            elif typ == EV_EXPIRED:
                o.leaves, o.state = 0, "expired"
                if self.track_levels:
                    self.touched.append((symbol, o.side, o.price))
                events.append({"event": "expired", "symbol": symbol, "oid": o.clid, "broker": o.broker,
                               "qty": r[E_QTY], "cum_qty": r[E_CUM], "_oid": r[E_OID]})
            elif typ == EV_REJECTED:
                code = r[E_REASON]
                op = {1: "new", 2: "cancel", 3: "replace"}.get(r[E_OTHER], "new")
                events.append(self._reject(op, o.clid, o.broker, symbol, code,
                                           self._reject_text(inst, code, o.clid, tif, price, qty)))
            else:  # pragma: no cover - a kernel bug
                raise RuntimeError(f"unknown event row {r}")
        return events
