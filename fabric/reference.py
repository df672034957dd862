"""A plain-Python reference order book: the oracle for the property tests.

:class:`ReferenceBook` implements ``docs/book-semantics.md`` as directly as it
can, with ordinary Python containers and no cleverness: one
:class:`~sortedcontainers.SortedDict` per side mapping a price to the orders
resting there (an insertion-ordered ``dict``, oldest first), and one ``dict``
from order id to order record.  It is deliberately simple and deliberately
independent of the compiled book (:mod:`fabric.kernels`, :mod:`fabric.book`),
so that random sessions run through both must produce identical event lists
and identical books; any difference is a bug in one of them.

It is not meant to be fast and is not used by the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from sortedcontainers import SortedDict

from fabric.constants import (
    BUY,
    CXL_FOK_UNFILLABLE,
    CXL_IOC_REMAINDER,
    CXL_REQUESTED,
    CXL_SELF_TRADE,
    DAY,
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_REJECTED,
    EV_REPLACED,
    EV_TRADE,
    EV_TRIGGERED,
    FLAG_POST_ONLY,
    FOK,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    MAX_LADDER_ROWS,
    NO_PRICE,
    NO_QTY,
    OP_CANCEL,
    OP_NEW,
    OP_REPLACE,
    REJ_BAD_DISCLOSED,
    REJ_BAD_STOP,
    REJ_BAD_TIF,
    REJ_LADDER_SPAN,
    REJ_NOT_STOP,
    REJ_ORDER_CLOSED,
    REJ_PRICE_NOT_POSITIVE,
    REJ_PRICE_OUT_OF_BAND,
    REJ_QTY_NOT_LOT_MULTIPLE,
    REJ_STOP_LIMIT,
    REJ_STOP_WOULD_TRIGGER,
    REJ_WOULD_CROSS,
    STP_CANCEL_INCOMING,
    STP_CANCEL_RESTING,
    STP_OFF,
)

__all__ = ["Event", "ReferenceBook"]

#: One event row, laid out as the ``E_*`` indices of :mod:`fabric.constants`.
Event = tuple[int, int, int, int, int, int, int, int, int, int, int]

#: The orders resting at one price, oldest first (``dict`` keeps insertion order).
_Level = dict[int, "_Order"]


@dataclass(slots=True)
class _Order:
    """One order while it is being matched or rests in the book."""

    oid: int
    broker: int
    side: int
    tif: int
    price: int  # ticks; 0 for a market order
    qty: int  # total order quantity
    leaves: int
    cum: int
    flags: int = 0  # FLAG_* bits
    expire: int = 0  # a GTD order's expire day (yyyymmdd)
    disclosed: int = 0  # an iceberg's peak; 0: all of it shows
    shown: int = 0  # an iceberg's displayed quantity: what is left of its current peak
    otype: int = LIMIT
    stop: int = 0  # a waiting stop's trigger price
    stp: int = STP_OFF  # a waiting stop's self-trade prevention mode
    seq: int = 0  # a waiting stop's place among the stops of its trigger (when it took that trigger)

    @property
    def displayed(self) -> int:
        """What the depth shows of it: an iceberg's current peak, else its leaves."""
        return self.shown if self.disclosed else self.leaves


def _row(
    etype: int,
    oid: int,
    side: int = 0,
    price: int = 0,
    qty: int = 0,
    leaves: int = 0,
    cum: int = 0,
    other: int = 0,
    other_leaves: int = 0,
    other_cum: int = 0,
    reason: int = 0,
) -> Event:
    """Build one event row in ``E_*`` field order."""
    return (etype, oid, side, price, qty, leaves, cum, other, other_leaves, other_cum, reason)


class ReferenceBook:
    """A price-time priority limit order book for one instrument, in plain Python.

    Parameters
    ----------
    lot : int
        Order quantities must be positive multiples of this.
    band_lo, band_hi : int or None
        Inclusive price band (ticks) of a banded book.  Give both or neither;
        with neither the book is unbanded and the ladder-span rule applies.
    max_ladder_rows : int
        Unbanded books only: the widest span of limit prices, in ticks
        counted inclusively, that the book accepts over its life.
    ref, protect_bp : int
        Market protection: a market order matches up to the last trade
        price (before the first trade ``ref``, 0 for none) plus (buy) or
        minus (sell) ``protect_bp`` basis points; 0 for no protection.

    Raises
    ------
    ValueError
        If ``lot`` or ``max_ladder_rows`` is not positive, only one band bound
        is given, or the band is empty or not positive.
    """

    def __init__(
        self,
        lot: int = 1,
        band_lo: int | None = None,
        band_hi: int | None = None,
        max_ladder_rows: int = MAX_LADDER_ROWS,
        ref: int = 0,
        protect_bp: int = 0,
    ) -> None:
        if lot <= 0:
            raise ValueError(f"lot must be positive, got {lot}")
        if max_ladder_rows <= 0:
            raise ValueError(f"max_ladder_rows must be positive, got {max_ladder_rows}")
        if (band_lo is None) != (band_hi is None):
            raise ValueError("give both band_lo and band_hi, or neither")
        if band_lo is not None and band_hi is not None and not 0 < band_lo <= band_hi:
            raise ValueError(f"bad price band [{band_lo}, {band_hi}]")
        self.lot = int(lot)
        self.band_lo = None if band_lo is None else int(band_lo)
        self.band_hi = None if band_hi is None else int(band_hi)
        self.max_ladder_rows = int(max_ladder_rows)
        if ref < 0 or not 0 <= protect_bp < 10000:
            raise ValueError(f"bad reference price {ref} or market protection {protect_bp} bp")
        self.ref, self.protect_bp = int(ref), int(protect_bp)
        self.last = 0  # price of the last trade, 0 before the first
        # Per side: price -> orders at that price, oldest first.  BUY, SELL.
        self._sides: tuple[SortedDict, SortedDict] = (SortedDict(), SortedDict())
        # Every resting order, by oid.
        self._orders: dict[int, _Order] = {}
        # Lowest / highest limit price ever accepted (ladder-span rule).
        self._seen_lo: int | None = None
        self._seen_hi: int | None = None
        self.trades = 0  # trades matched so far
        # Stop orders waiting for their trigger, by oid; `_stop_seq` numbers them as they take their trigger.
        self._stops: dict[int, _Order] = {}
        self._stop_seq = 0

    @property
    def banded(self) -> bool:
        """Whether the book has a price band (else the ladder-span rule applies)."""
        return self.band_lo is not None

    # ------------------------------------------------------------------
    # Commands
    # ------------------------------------------------------------------
    def new(
        self, oid: int, broker: int, side: int, otype: int, tif: int, price: int, qty: int, stp: int = STP_OFF,
        flags: int = 0, expire: int = 0, disclosed: int = 0, stop: int = 0,
    ) -> list[Event]:
        """Enter a new order, match it, and rest or cancel what is left.

        Parameters
        ----------
        oid : int
            Order id, unique in this book and never reused.
        broker : int
            Broker number (kept with the order; self-trade prevention compares it).
        side : int
            ``BUY`` or ``SELL``.
        otype : int
            ``LIMIT`` or ``MARKET``.
        tif : int
            ``GTC``, ``DAY``, ``IOC`` or ``FOK``.
        price : int
            Limit price in ticks; ignored for a market order.
        qty : int
            Order quantity in shares.
        stp : int
            The broker's self-trade prevention mode (``STP_*``).
        flags : int
            ``FLAG_*`` bits (``FLAG_POST_ONLY``).
        expire : int
            A GTD order's expire day (yyyymmdd).
        disclosed : int
            An iceberg's disclosed quantity (its peak); 0: all of it shows.
        stop : int
            A stop order's trigger price (ticks); 0: not a stop order.

        Returns
        -------
        list of Event
            A reject; or the acceptance followed by the trades (and the
            self-trade cancels of resting orders) and, if any, the cancel of
            the unfilled rest.
        """
        oid, broker, side, otype, tif = int(oid), int(broker), int(side), int(otype), int(tif)
        price, qty, stp = int(price), int(qty), int(stp)

        flags, expire, disclosed, stop = int(flags), int(expire), int(disclosed), int(stop)
        reason = self._qty_reject(qty)
        if not reason and stop and (tif in (IOC, FOK) or flags or disclosed):
            reason = REJ_BAD_STOP
        if not reason and otype == MARKET and not stop and tif not in (IOC, FOK):
            reason = REJ_BAD_TIF
        if not reason and tif == GTD and expire <= 0:
            reason = REJ_BAD_TIF
        if not reason and flags and tif in (IOC, FOK):
            reason = REJ_BAD_TIF
        if not reason and disclosed and (otype == MARKET or tif in (IOC, FOK) or not 0 < disclosed <= qty
                                         or disclosed % self.lot or disclosed * 10 < qty):
            reason = REJ_BAD_DISCLOSED
        if not reason and otype == LIMIT:
            reason = self._price_reject(price)
            if not reason and flags & FLAG_POST_ONLY and self._would_cross(side, price):
                reason = REJ_WOULD_CROSS
        if not reason and stop:
            reason = self._stop_reject(side, otype, price, stop)
        if reason:
            return [_row(EV_REJECTED, oid, side, other=OP_NEW, reason=reason)]
        if stop:
            if otype == LIMIT:
                self._see_price(price)
            else:
                price = 0
            self._stop_seq += 1
            self._stops[oid] = _Order(oid, broker, side, tif, price, qty, leaves=qty, cum=0,
                                      expire=expire if tif == GTD else 0, otype=otype, stop=stop, stp=stp,
                                      seq=self._stop_seq)
            return [_row(EV_ACCEPTED, oid, side, price, qty, qty, other=stop)]

        if otype == LIMIT:
            self._see_price(price)
            limit: int | None = price
        else:
            price = 0
            limit = self._protected_limit(side)
        events: list[Event] = [_row(EV_ACCEPTED, oid, side, price, qty, qty)]
        order = _Order(oid, broker, side, tif, price, qty, leaves=qty, cum=0, flags=flags,
                       expire=expire if tif == GTD else 0, disclosed=disclosed)

        if tif == FOK and self._fillable(order, limit, stp) < qty:
            events.append(_row(EV_CANCELLED, oid, side, price, qty, 0, 0, reason=CXL_FOK_UNFILLABLE))
            return events

        self_trade = self._match(order, limit, stp, events)

        if order.leaves > 0:
            if self_trade:
                events.append(_row(EV_CANCELLED, oid, side, price, order.leaves, 0, order.cum,
                                   reason=CXL_SELF_TRADE))
            elif otype == MARKET or tif in (IOC, FOK):
                events.append(
                    _row(
                        EV_CANCELLED,
                        oid,
                        side,
                        price,
                        order.leaves,
                        0,
                        order.cum,
                        reason=CXL_IOC_REMAINDER,
                    )
                )
            else:
                self._rest(order)
        return self._cascade(events)

    def cancel(self, oid: int) -> list[Event]:
        """Take a resting order out of the book at the broker's request.

        Parameters
        ----------
        oid : int
            The order to cancel.

        Returns
        -------
        list of Event
            One ``EV_CANCELLED`` row, or an ``REJ_ORDER_CLOSED`` reject when the
            order is not resting.
        """
        oid = int(oid)
        order = self._orders.get(oid) or self._stops.pop(oid, None)
        if order is None:
            return [_row(EV_REJECTED, oid, 0, other=OP_CANCEL, reason=REJ_ORDER_CLOSED)]
        if not order.stop:
            self._unrest(order)
        return [
            _row(
                EV_CANCELLED,
                oid,
                order.side,
                order.price,
                order.leaves,
                0,
                order.cum,
                reason=CXL_REQUESTED,
            )
        ]

    def replace(self, oid: int, price: int, qty: int, stp: int = STP_OFF, stop: int = NO_PRICE) -> list[Event]:
        """Change the price and/or total quantity of a resting order (FIX cancel/replace).

        Parameters
        ----------
        oid : int
            The order to change.
        price : int
            New limit price in ticks, or ``NO_PRICE`` to keep the price.
        qty : int
            New total order quantity (filled part included), or ``NO_QTY`` to
            keep it.
        stp : int
            The broker's self-trade prevention mode (``STP_*``), for when the
            order crosses the book.
        stop : int
            A waiting stop's new trigger price, or ``NO_PRICE`` (or 0) to
            keep it (a trigger is refused for any other order).

        Returns
        -------
        list of Event
            A reject; or one ``EV_REPLACED`` row, followed by trades when the
            order lost its place and now crosses the book.
        """
        oid, price, qty, stp, stop = int(oid), int(price), int(qty), int(stp), int(stop)
        if oid in self._stops:
            return self._replace_stop(self._stops[oid], price, qty, stp, stop)
        order = self._orders.get(oid)
        if order is None:
            return [_row(EV_REJECTED, oid, 0, other=OP_REPLACE, reason=REJ_ORDER_CLOSED)]
        if stop > 0:  # NO_PRICE or 0 keeps the trigger: this order has none
            return [_row(EV_REJECTED, oid, order.side, other=OP_REPLACE, reason=REJ_NOT_STOP)]

        new_price = order.price if price == NO_PRICE else price
        new_qty = order.qty if qty == NO_QTY else qty
        reason = self._qty_reject(new_qty) or self._price_reject(new_price)
        if (not reason and order.flags & FLAG_POST_ONLY and new_qty > order.cum
                and self._would_cross(order.side, new_price)):
            reason = REJ_WOULD_CROSS  # a post-only order stays post-only
        if reason:
            return [_row(EV_REJECTED, oid, order.side, other=OP_REPLACE, reason=reason)]
        self._see_price(new_price)

        side, cum = order.side, order.cum
        if new_qty <= cum:
            # Nothing left to trade: the order ends.
            self._unrest(order)
            return [_row(EV_REPLACED, oid, side, new_price, new_qty, 0, cum, 0)]

        if new_price == order.price and new_qty <= order.qty:
            # Same price, not bigger: keeps its time priority.
            order.leaves -= order.qty - new_qty
            order.qty = new_qty
            order.shown = min(order.shown, order.leaves)  # an iceberg's cut takes its hidden part first
            return [_row(EV_REPLACED, oid, side, new_price, new_qty, order.leaves, cum, 1)]

        # Loses its place: out of its level, re-enters as an aggressor.
        self._unrest(order)
        order.price, order.qty, order.leaves = new_price, new_qty, new_qty - cum
        events: list[Event] = [
            _row(EV_REPLACED, oid, side, new_price, new_qty, order.leaves, cum, 0)
        ]
        if self._match(order, new_price, stp, events):
            events.append(_row(EV_CANCELLED, oid, side, new_price, order.leaves, 0, order.cum,
                               reason=CXL_SELF_TRADE))
        elif order.leaves > 0:
            self._rest(order)
        return self._cascade(events)

    def _replace_stop(self, order: _Order, price: int, qty: int, stp: int, stop: int) -> list[Event]:
        """Replace a waiting stop's limit price, quantity and trigger (a new trigger: a new place)."""
        new_price = order.price if price == NO_PRICE else price
        new_qty = order.qty if qty == NO_QTY else qty
        new_stop = order.stop if stop <= 0 else stop
        reason = self._qty_reject(new_qty)
        if not reason and order.otype == MARKET and price != NO_PRICE:
            reason = REJ_BAD_STOP
        if not reason and order.otype == LIMIT:
            reason = self._price_reject(new_price)
        if not reason:
            reason = self._stop_reject(order.side, order.otype, new_price, new_stop)
        if reason:
            return [_row(EV_REJECTED, order.oid, order.side, other=OP_REPLACE, reason=reason)]
        if order.otype == LIMIT:
            self._see_price(new_price)
        kept = new_stop == order.stop
        if not kept:
            self._stop_seq += 1
            order.seq = self._stop_seq
        order.price, order.qty, order.leaves, order.stop, order.stp = new_price, new_qty, new_qty, new_stop, stp
        return [_row(EV_REPLACED, order.oid, order.side, new_price, new_qty, new_qty, 0, int(kept), new_stop)]

    def _stop_reject(self, side: int, otype: int, price: int, stop: int) -> int:
        """Check a stop order's trigger (and its limit price against it); return the reject reason or 0."""
        if stop <= 0:
            return REJ_PRICE_NOT_POSITIVE
        if self.band_lo is not None and self.band_hi is not None and not self.band_lo <= stop <= self.band_hi:
            return REJ_PRICE_OUT_OF_BAND
        if otype == LIMIT and (price < stop if side == BUY else price > stop):
            return REJ_STOP_LIMIT
        if self.last and (stop <= self.last if side == BUY else stop >= self.last):
            return REJ_STOP_WOULD_TRIGGER
        return 0

    def print_trade(self, price: int) -> list[Event]:
        """A trade printed outside the book at ``price`` (ticks; the call auction's): it becomes the last price,
        and the waiting stops it reaches trigger as a trade of the book's would trigger them (then the cascade).

        Returns
        -------
        list of Event
            The triggered stops' events; none when it reaches no stop (or ``price`` is not positive).
        """
        if price <= 0:
            return []
        self.last = int(price)
        return self._cascade([], first=int(price))

    def _cascade(self, events: list[Event], first: int = 0) -> list[Event]:
        """Trigger the waiting stops the trades in ``events`` reach, and those their own trades reach.

        Read the trades in order; at each, every waiting buy stop with a trigger at or below its price and
        every sell stop with a trigger at or above it is triggered, buys before sells, buys by ascending and
        sells by descending trigger, then by when they took their trigger.  Triggered stops enter the book
        one after the other in that order, each after every trade before it has been read.  ``first`` (> 0) is
        a print made outside the book (:meth:`print_trade`), read before the events' trades.
        """
        queue: list[_Order] = []
        i = 0
        prints = [first] if first > 0 else []  # a print made outside the book comes before the events' trades
        while True:
            prints += [ev[3] for ev in events[i:] if ev[0] == EV_TRADE]
            for p in prints:
                if self._stops:
                    reached = [o for o in self._stops.values()
                               if (o.stop <= p if o.side == BUY else o.stop >= p)]
                    reached.sort(key=lambda o: (o.side, o.stop if o.side == BUY else -o.stop, o.seq))
                    for o in reached:
                        del self._stops[o.oid]
                    queue.extend(reached)
            prints = []
            i = len(events)
            if not queue:
                return events
            self._enter(queue.pop(0), events)

    def _enter(self, order: _Order, events: list[Event]) -> None:
        """A triggered stop enters the book now as its limit or market order, matching first."""
        events.append(_row(EV_TRIGGERED, order.oid, order.side, order.price, order.qty, order.qty, other=order.stop))
        limit = order.price if order.otype == LIMIT else self._protected_limit(order.side)
        stp, order.stop = order.stp, 0
        if self._match(order, limit, stp, events):
            events.append(_row(EV_CANCELLED, order.oid, order.side, order.price, order.leaves, 0, order.cum,
                               reason=CXL_SELF_TRADE))
        elif order.leaves > 0:
            if order.otype == MARKET:
                events.append(_row(EV_CANCELLED, order.oid, order.side, order.price, order.leaves, 0, order.cum,
                                   reason=CXL_IOC_REMAINDER))
            else:
                self._rest(order)

    def end_of_day(self, day: int = 0) -> list[Event]:
        """Expire every resting DAY order, and every GTD order whose expire day is ``day`` (yyyymmdd) or
        before, in ascending oid order; GTC orders stay.  ``day`` 0 (unknown) expires no GTD order.

        Returns
        -------
        list of Event
            One ``EV_EXPIRED`` row per expired order.
        """
        events: list[Event] = []
        for oid in sorted(o.oid for o in (*self._orders.values(), *self._stops.values())
                          if o.tif == DAY or (o.tif == GTD and o.expire <= day)):
            order = self._orders.get(oid) or self._stops.pop(oid)
            if not order.stop:
                self._unrest(order)
            events.append(
                _row(EV_EXPIRED, oid, order.side, order.price, order.leaves, 0, order.cum)
            )
        return events

    # ------------------------------------------------------------------
    # Queries
    # ------------------------------------------------------------------
    def depth(self, side: int, n: int | None = None) -> list[tuple[int, int, int]]:
        """Return the price levels of one side, best first.

        Parameters
        ----------
        side : int
            ``BUY`` (bids, highest first) or ``SELL`` (asks, lowest first).
        n : int or None
            At most this many levels; all of them when ``None``.

        Returns
        -------
        list of tuple of int
            ``(price, total leaves, number of orders)`` per level.
        """
        book = self._sides[side]
        prices: Iterator[int] = reversed(book) if side == BUY else iter(book)
        if n is not None:
            prices = islice(prices, max(n, 0))
        result: list[tuple[int, int, int]] = []
        for p in prices:
            level: _Level = book[p]
            result.append((p, sum(o.displayed for o in level.values()), len(level)))
        return result

    def level(self, side: int, price: int) -> tuple[int, int]:
        """Return (total leaves, orders) resting on ``side`` at ``price``; (0, 0) when none."""
        level = self._sides[side].get(price)
        if not level:
            return 0, 0
        return sum(o.displayed for o in level.values()), len(level)

    def order(self, oid: int) -> tuple[int, int, int, int, int] | None:
        """Return ``(side, price, qty, leaves, cum)`` of a resting order, else ``None``.

        Parameters
        ----------
        oid : int
            The order to look up.
        """
        o = self._orders.get(int(oid)) or self._stops.get(int(oid))
        if o is None:
            return None
        return (o.side, o.price, o.qty, o.leaves, o.cum)

    def stop(self, oid: int) -> int | None:
        """Return the trigger price of a stop order waiting for it, else ``None``."""
        o = self._stops.get(int(oid))
        return None if o is None else o.stop

    @property
    def stops(self) -> int:
        """Number of stop orders waiting for their trigger."""
        return len(self._stops)

    def stop_queue(self, side: int) -> list[int]:
        """Return the oids of the waiting stops of ``side`` in trigger order (buys ascending, sells descending)."""
        mine = [o for o in self._stops.values() if o.side == side]
        mine.sort(key=lambda o: (o.stop if side == BUY else -o.stop, o.seq))
        return [o.oid for o in mine]

    def queue(self, side: int, price: int) -> list[int]:
        """Return the oids resting at one price of one side, in time priority.

        Parameters
        ----------
        side : int
            ``BUY`` or ``SELL``.
        price : int
            Price in ticks.
        """
        level: _Level | None = self._sides[side].get(int(price))
        return [] if level is None else list(level)

    def resting_orders(self, side: int) -> list[int]:
        """Return the oids resting on ``side`` in priority order: the best price first, then time."""
        book = self._sides[side]
        return [oid for p in (reversed(book) if side == BUY else book) for oid in book[p]]

    def set_band(self, band_lo: int | None, band_hi: int | None, ref: int) -> None:
        """Give the book a new price band (``None``: keep the book's) and reference price; every resting order
        keeps its place.

        Raises
        ------
        ValueError
            When the band is empty or not positive, or an order rests outside it.
        """
        if ref < 0:
            raise ValueError(f"bad reference price {ref}")
        if band_lo is not None and band_hi is not None:
            if not 0 < band_lo <= band_hi:
                raise ValueError(f"bad price band [{band_lo}, {band_hi}]")
            if any(not band_lo <= o.price <= band_hi for o in self._orders.values()):
                raise ValueError(f"orders rest outside the new band [{band_lo}, {band_hi}]: cancel them first")
            if any(not band_lo <= o.stop <= band_hi or (o.otype == LIMIT and not band_lo <= o.price <= band_hi)
                   for o in self._stops.values()):
                raise ValueError(f"stop orders wait outside the new band [{band_lo}, {band_hi}]: cancel them first")
            self.band_lo, self.band_hi = int(band_lo), int(band_hi)
        self.ref = int(ref)

    # ------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------
    def _qty_reject(self, qty: int) -> int:
        """Check rule 1 (quantity); return the reject reason or 0."""
        if qty <= 0 or qty % self.lot != 0:
            return REJ_QTY_NOT_LOT_MULTIPLE
        return 0

    def _price_reject(self, price: int) -> int:
        """Check rules 3-5 (limit price); return the reject reason or 0."""
        if price <= 0:
            return REJ_PRICE_NOT_POSITIVE
        if self.band_lo is not None and self.band_hi is not None:
            if not self.band_lo <= price <= self.band_hi:
                return REJ_PRICE_OUT_OF_BAND
        elif self._seen_lo is not None and self._seen_hi is not None:
            span = max(self._seen_hi, price) - min(self._seen_lo, price) + 1
            if span > self.max_ladder_rows:
                return REJ_LADDER_SPAN
        return 0

    def _would_cross(self, side: int, price: int) -> bool:
        """Whether a limit order at ``price`` would trade on entry (a post-only order must not)."""
        opposite = self._sides[1 - side]
        if not opposite:
            return False
        return opposite.keys()[0] <= price if side == BUY else opposite.keys()[-1] >= price

    def _protected_limit(self, side: int) -> int | None:
        """A market order's limit under market protection, or ``None`` (the band's edge, if any, applies).

        The last trade price (else the reference price) plus (buy) or minus (sell) the protection,
        rounded inwards to a whole tick, and never past the band's edge.
        """
        base = self.last or self.ref
        if not self.protect_bp or not base:
            return None
        if side == BUY:
            p = base * (10000 + self.protect_bp) // 10000
            return p if self.band_hi is None else min(p, self.band_hi)
        p = -(-base * (10000 - self.protect_bp) // 10000)
        return p if self.band_lo is None else max(p, self.band_lo)

    def _see_price(self, price: int) -> None:
        """Widen the range of accepted limit prices to include ``price``."""
        self._seen_lo = price if self._seen_lo is None else min(self._seen_lo, price)
        self._seen_hi = price if self._seen_hi is None else max(self._seen_hi, price)

    def _crossing(self, side: int, limit: int | None) -> Iterator[_Order]:
        """Yield the opposite orders ``limit`` crosses, in the order they would match.

        ``limit`` is ``None`` for a market order, which crosses every price
        inside the band (the circuit filter): no trade prints outside it.
        """
        opposite = self._sides[1 - side]
        lo, hi = self.band_lo, self.band_hi
        prices: Iterator[int]
        if side == BUY:
            prices = opposite.irange(maximum=hi if limit is None else limit)
        else:
            prices = opposite.irange(minimum=lo if limit is None else limit, reverse=True)
        for p in prices:
            yield from opposite[p].values()

    def _fillable(self, aggr: _Order, limit: int | None, stp: int) -> int:
        """Return how much ``aggr`` would fill if it matched now (what a FOK order checks).

        Without self-trade prevention: every crossing order's leaves.  With
        ``cancel_resting``: those of other brokers' orders (the broker's own
        would be cancelled).  With the other two modes: those before the
        broker's first own order, where matching would stop.
        """
        total = 0
        for o in self._crossing(aggr.side, limit):
            if stp != STP_OFF and o.broker == aggr.broker:
                if stp == STP_CANCEL_RESTING:
                    continue
                break
            total += o.leaves
        return total

    def _match(self, aggr: _Order, limit: int | None, stp: int, events: list[Event]) -> bool:
        """Fill ``aggr`` against the opposite side while it crosses, appending trades.

        Return whether self-trade prevention stopped it (the caller cancels
        its rest); a resting order it cancels gets its ``EV_CANCELLED`` here.
        """
        opposite = self._sides[1 - aggr.side]
        if limit is None:  # a market order: the circuit filter's edge, or none without a band
            limit = self.band_hi if aggr.side == BUY else self.band_lo
        while aggr.leaves > 0 and opposite:
            if aggr.side == BUY:
                best = opposite.keys()[0]  # lowest ask
                if limit is not None and best > limit:
                    break
            else:
                best = opposite.keys()[-1]  # highest bid
                if limit is not None and best < limit:
                    break
            resting = next(iter(opposite[best].values()))
            if stp != STP_OFF and resting.broker == aggr.broker:
                if stp != STP_CANCEL_INCOMING:
                    self._unrest(resting)
                    events.append(_row(EV_CANCELLED, resting.oid, resting.side, resting.price, resting.leaves,
                                       0, resting.cum, reason=CXL_SELF_TRADE))
                if stp == STP_CANCEL_RESTING:
                    continue
                return True
            # An iceberg trades its displayed peak; the next one shows at the back of the queue.
            fill = min(aggr.leaves, resting.displayed)
            aggr.leaves -= fill
            aggr.cum += fill
            resting.leaves -= fill
            resting.cum += fill
            self.trades += 1
            self.last = resting.price
            events.append(
                _row(
                    EV_TRADE,
                    aggr.oid,
                    aggr.side,
                    resting.price,
                    fill,
                    aggr.leaves,
                    aggr.cum,
                    resting.oid,
                    resting.leaves,
                    resting.cum,
                )
            )
            if resting.disclosed:
                resting.shown -= fill
                if resting.leaves and not resting.shown:
                    resting.shown = min(resting.disclosed, resting.leaves)
                    level = opposite[best]
                    del level[resting.oid]
                    level[resting.oid] = resting
            if resting.leaves == 0:
                self._unrest(resting)
        return False

    def _rest(self, order: _Order) -> None:
        """Put ``order`` at the back of its price level (an iceberg with a new peak showing)."""
        order.shown = min(order.disclosed, order.leaves)
        book = self._sides[order.side]
        level: _Level | None = book.get(order.price)
        if level is None:
            level = {}
            book[order.price] = level
        level[order.oid] = order
        self._orders[order.oid] = order

    def _unrest(self, order: _Order) -> None:
        """Take a resting ``order`` out of its level and out of the book."""
        book = self._sides[order.side]
        level: _Level = book[order.price]
        del level[order.oid]
        if not level:
            del book[order.price]
        del self._orders[order.oid]
