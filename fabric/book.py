"""One symbol's order book: the compiled kernels plus the arrays they work on.

:class:`OrderBook` owns the preallocated arrays of :mod:`fabric.kernels`, grows
them when a kernel asks (no order is ever dropped), and offers the interface of
``docs/book-semantics.md`` that the reference book shares.  Prices are ticks and
quantities shares; decimal prices belong to :mod:`fabric.instruments`.

All of a book's state lives in one int64 buffer (regions laid out by a header,
see ``H_*`` in :mod:`fabric.constants`) so that a call from Python unboxes a
single array.  The per-command methods return the number of events they wrote;
the events are the rows ``book.out[:n]``, valid until the next call on the same
book, so copy what you keep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fabric import kernels
from fabric.constants import (
    BUY,
    C_NFIELDS,
    DEFAULT_EVENTS,
    DEFAULT_SLOTS,
    H_BITS,
    H_EVENTS,
    H_LVL,
    H_META,
    H_NFIELDS,
    H_O2S,
    H_OIDS,
    H_ORDS,
    H_OUT,
    H_ROWS,
    H_SLOTS,
    H_WORDS,
    INT,
    L_COUNT,
    L_HEAD,
    L_NFIELDS,
    L_TAIL,
    M_BAND_HI,
    M_BAND_LO,
    M_BANDED,
    M_BASE,
    M_BEST_ASK,
    M_BEST_BID,
    M_FREE_HEAD,
    M_LAST,
    M_LOT,
    M_MAX_ROWS,
    M_NEED,
    M_NEED_PRICE,
    M_NEV,
    M_NFIELDS,
    M_NLEVELS,
    M_PROTECT_BP,
    M_REF,
    M_RESTING,
    M_SEEN_HI,
    M_SEEN_LO,
    M_STOP_BUY,
    M_STOP_SELL,
    M_STOPS,
    M_TRADES,
    MARKET,
    MAX_LADDER_ROWS,
    MAX_PRICE_TICKS,
    NEED_EVENTS,
    NEED_LADDER,
    NEED_OIDS,
    NEED_SLOTS,
    NO_ASK,
    NO_BID,
    NO_PRICE,
    NO_QTY,
    O_CUM,
    O_LEAVES,
    O_NEXT,
    O_NFIELDS,
    O_PRICE,
    O_QTY,
    O_SIDE,
    O_STATE,
    O_STOP,
    O_TYPE,
    OP_CANCEL,
    OP_END_OF_DAY,
    OP_NEW,
    OP_PRINT,
    OP_REPLACE,
    ST_STOP,
    STP_OFF,
    WORD_BITS,
)
from fabric.constants import (
    E_NFIELDS as _E_NF,
)


def _entry_point(dispatcher: Any) -> Callable[..., Any]:
    # The compiled function for int64 arrays and ints, called without numba's
    # per-call type dispatch (about 250 ns less per call).  Falls back to the
    # dispatcher itself if numba ever changes this attribute.
    try:
        overloads = dispatcher.overloads
        return overloads[dispatcher.signatures[0]].entry_point
    except (AttributeError, IndexError, KeyError):
        return dispatcher


class OrderBook:
    """A price-time priority limit order book over numba-compiled kernels.

    Parameters
    ----------
    lot
        Quantities must be positive multiples of this.
    band_lo, band_hi
        Accepted limit prices in ticks, inclusive; both ``None`` for an
        unbanded instrument, whose ladder grows to cover the prices it sees.
    max_ladder_rows
        For an unbanded book, the widest span of prices (in ticks) it accepts.
    slots
        Order slots preallocated; the book doubles them when they run out.
    events
        Rows of the event buffer preallocated; it grows when a command could overflow it.
    ref, protect_bp
        Market protection: a market order's limit is the last trade price (before the first trade, ``ref``,
        the reference price in ticks; 0 for none) plus or minus ``protect_bp`` basis points (0: no protection).
    """

    def __init__(
        self,
        lot: int = 1,
        band_lo: int | None = None,
        band_hi: int | None = None,
        max_ladder_rows: int = MAX_LADDER_ROWS,
        slots: int = DEFAULT_SLOTS,
        events: int = DEFAULT_EVENTS,
        ref: int = 0,
        protect_bp: int = 0,
    ) -> None:
        if (band_lo is None) != (band_hi is None):
            raise ValueError("give both band_lo and band_hi, or neither")
        if lot <= 0:
            raise ValueError(f"lot must be positive, got {lot}")
        meta = np.zeros(M_NFIELDS, dtype=INT)
        meta[M_LOT] = lot
        meta[M_BEST_BID] = NO_BID
        meta[M_BEST_ASK] = NO_ASK
        meta[M_MAX_ROWS] = max_ladder_rows
        meta[M_SEEN_LO] = 1
        meta[M_SEEN_HI] = 0
        meta[M_FREE_HEAD] = -1
        meta[M_STOP_BUY] = -1
        meta[M_STOP_SELL] = -1
        if ref < 0 or not 0 <= protect_bp < 10000:
            raise ValueError(f"bad reference price {ref} or market protection {protect_bp} bp")
        meta[M_REF] = ref
        meta[M_PROTECT_BP] = protect_bp
        if band_lo is not None and band_hi is not None:
            if not 0 < band_lo <= band_hi <= MAX_PRICE_TICKS:
                raise ValueError(f"bad band [{band_lo}, {band_hi}]")
            meta[M_BANDED] = 1
            meta[M_BAND_LO] = band_lo
            meta[M_BAND_HI] = band_hi
            meta[M_BASE] = band_lo
            rows = band_hi - band_lo + 1
        else:
            meta[M_BAND_LO] = 1
            meta[M_BAND_HI] = MAX_PRICE_TICKS
            meta[M_BASE] = 1
            rows = 0
        self.buf = np.zeros(H_NFIELDS, dtype=INT)
        # Views of the buffer's regions, re-pointed whenever the buffer is re-laid.
        self.ords = self.lvl = self.bits = self.meta = self.o2s = self.out = np.zeros(0, dtype=INT)
        self._layout(meta, max(slots, 1), rows, int(meta[M_BASE]), 1024, max(events, 4))
        self._apply = _entry_point(kernels.apply_buf)
        self._level = _entry_point(kernels.level_buf)

    # ------------------------------------------------------------------ layout

    def _layout(self, meta: np.ndarray, slots: int, rows: int, base: int, oids: int, events: int) -> None:
        # Build a new buffer with the given region sizes, copy the old regions
        # into it (the ladder at its new base), and point the views at it.
        old = self.buf
        had = old[H_SLOTS] > 0
        sizes = (M_NFIELDS, slots * O_NFIELDS, rows * L_NFIELDS, max(1, (rows + WORD_BITS - 1) // WORD_BITS),
                 oids, events * _E_NF)
        offs = np.cumsum((H_NFIELDS, *sizes))
        buf = np.zeros(int(offs[-1]), dtype=INT)
        buf[H_META], buf[H_ORDS], buf[H_LVL], buf[H_BITS], buf[H_O2S], buf[H_OUT] = offs[:-1]
        buf[H_SLOTS], buf[H_ROWS], buf[H_WORDS], buf[H_OIDS], buf[H_EVENTS] = slots, rows, sizes[3], oids, events
        views = kernels.views(buf)
        n_ords, n_lvl, n_bits, n_meta, n_o2s, n_out = views
        n_meta[:] = meta
        n_meta[M_BASE] = base
        n_meta[M_NLEVELS] = rows
        n_lvl[:, L_HEAD] = -1
        n_lvl[:, L_TAIL] = -1
        n_o2s[:] = -1
        old_slots = 0
        if had:
            old_slots = self.ords.shape[0]
            n_ords[:old_slots] = self.ords
            n_o2s[: self.o2s.shape[0]] = self.o2s
            n_out[: self.out.shape[0]] = self.out
            # Copy the ladder rows that overlap; rows outside hold no orders.
            old_base, old_rows = int(self.meta[M_BASE]), self.lvl.shape[0]
            first, last = max(old_base, base), min(old_base + old_rows, base + rows)
            if first < last:
                n_lvl[first - base : last - base] = self.lvl[first - old_base : last - old_base]
            used = np.nonzero(n_lvl[:, L_COUNT])[0]
            np.bitwise_or.at(n_bits, used >> 6, np.left_shift(np.int64(1), (used & 63).astype(INT)))
        if slots > old_slots:
            # Chain the new slots in front of the free list.
            n_ords[old_slots:, O_NEXT] = np.arange(old_slots + 1, slots + 1, dtype=INT)
            n_ords[slots - 1, O_NEXT] = n_meta[M_FREE_HEAD]
            n_meta[M_FREE_HEAD] = old_slots
        self.buf = buf
        self.ords, self.lvl, self.bits, self.meta, self.o2s, self.out = views

    def _grow(self) -> None:
        meta = self.meta
        need = meta[M_NEED]
        slots, rows, oids, events = self.ords.shape[0], self.lvl.shape[0], self.o2s.shape[0], self.out.shape[0]
        base = int(meta[M_BASE])
        if need == NEED_SLOTS:
            slots *= 2
        elif need == NEED_LADDER:
            base, rows = self._ladder_for(int(meta[M_NEED_PRICE]))
        elif need == NEED_EVENTS:
            events = max(2 * events, 2 * int(meta[M_RESTING]) + 16)
        elif need == NEED_OIDS:
            oids *= 2
        else:  # pragma: no cover - a kernel bug, not a user error
            raise RuntimeError(f"kernel stopped without saying why (need={need})")
        self._layout(meta.copy(), slots, rows, base, oids, events)

    def _ladder_for(self, price: int) -> tuple[int, int]:
        # The ladder of an unbanded book that covers `price` and every price
        # seen so far (all resting orders lie in that span), with room to spare.
        meta = self.meta
        lo, hi = price, price
        if meta[M_SEEN_HI] >= meta[M_SEEN_LO]:
            lo, hi = min(lo, int(meta[M_SEEN_LO])), max(hi, int(meta[M_SEEN_HI]))
        span = hi - lo + 1
        room = max(0, min(max(span, 1024), int(meta[M_MAX_ROWS]) - span))
        base = max(1, lo - room // 2)
        end = min(hi + room - room // 2, MAX_PRICE_TICKS)
        return base, end - base + 1

    def reserve_oids(self, max_oid: int) -> None:
        """Make room for order ids up to ``max_oid`` (new orders beyond it grow the map on the way)."""
        oids = self.o2s.shape[0]
        if max_oid >= oids:
            self._layout(self.meta.copy(), self.ords.shape[0], self.lvl.shape[0], int(self.meta[M_BASE]),
                         max(2 * oids, max_oid + 1), self.out.shape[0])

    # ---------------------------------------------------------------- commands

    def _again(self, op: int, oid: int, broker: int, side: int, otype: int, tif: int, price: int, qty: int,
               stp: int, flags: int = 0, expire: int = 0, disclosed: int = 0, stop: int = 0) -> int:
        # A region was too small: grow it and retry until the command fits.
        while True:
            self._grow()
            n = self._apply(self.buf, op, oid, broker, side, otype, tif, price, qty, stp, flags, expire, disclosed,
                            stop)
            if n >= 0:
                return n

    def new(self, oid: int, broker: int, side: int, otype: int, tif: int, price: int, qty: int,
            stp: int = STP_OFF, flags: int = 0, expire: int = 0, disclosed: int = 0, stop: int = 0) -> int:
        """Enter a new order (``stp``: its broker's self-trade prevention mode; ``flags``: ``FLAG_*`` bits;
        ``expire``: a GTD order's expire day, yyyymmdd; ``disclosed``: an iceberg's peak, 0 for none; ``stop``:
        a stop order's trigger price, 0 for none); return the number of events."""
        n = self._apply(self.buf, OP_NEW, oid, broker, side, otype, tif, price, qty, stp, flags, expire, disclosed,
                        stop)
        return n if n >= 0 else self._again(OP_NEW, oid, broker, side, otype, tif, price, qty, stp, flags, expire,
                                            disclosed, stop)

    def cancel(self, oid: int) -> int:
        """Cancel a resting order or a waiting stop; return the number of events written to ``self.out``."""
        n = self._apply(self.buf, OP_CANCEL, oid, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        return n if n >= 0 else self._again(OP_CANCEL, oid, 0, 0, 0, 0, 0, 0, 0)

    def replace(self, oid: int, price: int = NO_PRICE, qty: int = NO_QTY, stp: int = STP_OFF,
                stop: int = NO_PRICE) -> int:
        """Cancel/replace a resting order or a waiting stop (``qty`` is the new total; ``stp`` as for :meth:`new`;
        ``stop``: a waiting stop's new trigger, ``NO_PRICE`` keeps it); return the events."""
        n = self._apply(self.buf, OP_REPLACE, oid, 0, 0, 0, 0, price, qty, stp, 0, 0, 0, stop)
        return n if n >= 0 else self._again(OP_REPLACE, oid, 0, 0, 0, 0, price, qty, stp, stop=stop)

    def end_of_day(self, day: int = 0) -> int:
        """Expire every resting DAY order, and every GTD order expiring on ``day`` (yyyymmdd; 0: unknown, none)
        or before, waiting stops too; return the number of events."""
        n = self._apply(self.buf, OP_END_OF_DAY, 0, 0, 0, 0, 0, 0, 0, 0, 0, day, 0, 0)
        return n if n >= 0 else self._again(OP_END_OF_DAY, 0, 0, 0, 0, 0, 0, 0, 0, 0, day)

    def print_trade(self, price: int) -> int:
        """A trade printed outside the book at ``price`` (ticks; the call auction's): it becomes the last price,
        and the waiting stops it reaches trigger as a trade of the book's would trigger them; return the events."""
        n = self._apply(self.buf, OP_PRINT, 0, 0, 0, 0, 0, price, 0, 0, 0, 0, 0, 0)
        return n if n >= 0 else self._again(OP_PRINT, 0, 0, 0, 0, 0, price, 0, 0)

    def run(self, cmds: np.ndarray) -> np.ndarray:
        """Apply a batch of command rows (``C_*`` layout) in the compiled loop; return all their events.

        The returned array is a view of the event buffer, valid until the next call.
        """
        if cmds.shape[0] == 0:
            return self.out[:0]
        self.meta[M_NEV] = 0
        i = 0
        while True:
            i = kernels.run_batch_buf(self.buf, cmds, i)
            if i >= cmds.shape[0]:
                break
            self._grow()
        n = int(self.meta[M_NEV])
        self.meta[M_NEV] = 0
        return self.out[:n]

    # ------------------------------------------------------------------ reading

    @property
    def best_bid(self) -> int | None:
        """Best bid price in ticks, or ``None``."""
        p = int(self.meta[M_BEST_BID])
        return None if p == NO_BID else p

    @property
    def best_ask(self) -> int | None:
        """Best ask price in ticks, or ``None``."""
        p = int(self.meta[M_BEST_ASK])
        return None if p == NO_ASK else p

    @property
    def resting(self) -> int:
        """Number of orders resting in the book (waiting stops not counted)."""
        return int(self.meta[M_RESTING] - self.meta[M_STOPS])

    @property
    def stops(self) -> int:
        """Number of stop orders waiting for their trigger."""
        return int(self.meta[M_STOPS])

    def stop(self, oid: int) -> int | None:
        """Return the trigger price of a stop order waiting for it, else ``None``."""
        if not 0 <= oid < self.o2s.shape[0] or self.o2s[oid] < 0:
            return None
        row = self.ords[self.o2s[oid]]
        return int(row[O_STOP]) if row[O_STATE] == ST_STOP else None

    def stop_queue(self, side: int) -> list[int]:
        """Return the order ids of the waiting stops of ``side`` in trigger order (buys ascending, sells
        descending; then acceptance)."""
        oids = []
        slot = int(self.meta[M_STOP_BUY if side == BUY else M_STOP_SELL])
        while slot >= 0:
            oids.append(int(self.ords[slot, 0]))
            slot = int(self.ords[slot, O_NEXT])
        return oids

    @property
    def last(self) -> int:
        """Price (ticks) of the book's last trade, 0 before the first."""
        return int(self.meta[M_LAST])

    @property
    def trades(self) -> int:
        """Number of trades this book has matched."""
        return int(self.meta[M_TRADES])

    def depth(self, side: int, n: int | None = None) -> list[tuple[int, int, int]]:
        """Return up to ``n`` price levels of one side, best first, as (price, displayed qty, orders)."""
        nmax = int(self.meta[M_NLEVELS]) if n is None else n
        res = np.zeros((max(nmax, 0), 3), dtype=INT)
        k = kernels.depth_buf(self.buf, side, nmax, res)
        return [(int(p), int(q), int(c)) for p, q, c in res[:k]]

    def level(self, side: int, price: int) -> tuple[int, int]:
        """Return (displayed open quantity, orders) resting on ``side`` at ``price``; (0, 0) when none."""
        qty, count = self._level(self.buf, side, price)
        return qty, count

    def order(self, oid: int) -> tuple[int, int, int, int, int] | None:
        """Return (side, price, qty, leaves, cum) of a resting order or a waiting stop, or ``None``."""
        if not 0 <= oid < self.o2s.shape[0] or self.o2s[oid] < 0:
            return None
        row = self.ords[self.o2s[oid]]
        return int(row[O_SIDE]), int(row[O_PRICE]), int(row[O_QTY]), int(row[O_LEAVES]), int(row[O_CUM])

    def queue(self, side: int, price: int) -> list[int]:
        """Return the order ids resting at ``price`` on ``side``, in time priority."""
        row = price - int(self.meta[M_BASE])
        if not 0 <= row < self.meta[M_NLEVELS]:
            return []
        oids = []
        slot = int(self.lvl[row, L_HEAD])
        while slot >= 0:
            if self.ords[slot, O_SIDE] == side:
                oids.append(int(self.ords[slot, 0]))
            slot = int(self.ords[slot, O_NEXT])
        return oids

    def checksum(self) -> int:
        """Return a 64-bit hash of every resting order in priority order; equal books hash equal."""
        return int(kernels.checksum_buf(self.buf))

    def resting_orders(self, side: int) -> list[int]:
        """Return the ids of the orders resting on ``side`` in priority order: the best price first, then time."""
        rows = np.flatnonzero(self.lvl[:, L_COUNT])
        base = int(self.meta[M_BASE])
        return [oid for r in (rows[::-1] if side == BUY else rows) for oid in self.queue(side, base + int(r))]

    def set_band(self, band_lo: int | None, band_hi: int | None, ref: int) -> None:
        """Give the book a new price band (ticks, inclusive; ``None``: keep the book as it is, unbanded or not) and
        reference price, as a new trading day does around its previous close (``docs/sessions.md``).

        Every resting order keeps its place; the ladder is laid out afresh over the new band.

        Raises
        ------
        ValueError
            When the band is empty or not positive, or an order rests outside it (cancel those first).
        """
        if ref < 0:
            raise ValueError(f"bad reference price {ref}")
        if band_lo is None or band_hi is None:
            self.meta[M_REF] = ref
            return
        if not 0 < band_lo <= band_hi <= MAX_PRICE_TICKS:
            raise ValueError(f"bad band [{band_lo}, {band_hi}]")
        rows = np.flatnonzero(self.lvl[:, L_COUNT])
        base = int(self.meta[M_BASE])
        if rows.size and not band_lo <= base + int(rows[0]) <= base + int(rows[-1]) <= band_hi:
            raise ValueError(f"orders rest outside the new band [{band_lo}, {band_hi}]: cancel them first")
        for side in (BUY, 1 - BUY):  # a waiting stop's trigger and limit price must lie in the band too
            for oid in self.stop_queue(side):
                row = self.ords[self.o2s[oid]]
                if not band_lo <= row[O_STOP] <= band_hi or (row[O_TYPE] != MARKET
                                                           and not band_lo <= row[O_PRICE] <= band_hi):
                    raise ValueError(f"stop order {oid} waits outside the new band [{band_lo}, {band_hi}]: "
                                     "cancel it first")
        meta = self.meta.copy()
        meta[M_REF] = ref
        meta[M_BANDED], meta[M_BAND_LO], meta[M_BAND_HI] = 1, band_lo, band_hi
        self._layout(meta, self.ords.shape[0], band_hi - band_lo + 1, band_lo, self.o2s.shape[0], self.out.shape[0])


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel, so the first real order pays nothing."""
    book = OrderBook(lot=1, band_lo=90, band_hi=110, slots=4)
    book.new(0, 0, BUY, 0, 0, 100, 5)
    book.new(1, 1, 1, 0, 3, 100, 2)
    book.replace(0, 99, 4)
    book.new(2, 1, 1, 0, 0, 98, 2, stop=99)  # a sell stop that the next order's trade at 99 triggers
    book.new(3, 1, 1, 0, 0, 99, 2)
    book.cancel(0)
    book.end_of_day()
    book.run(np.zeros((1, C_NFIELDS), dtype=INT))
    book.depth(BUY, 5)
    book.level(BUY, 99)
    book.checksum()
