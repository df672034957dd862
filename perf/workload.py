"""Deterministic, realistic order flow for benchmarks, tests and sample sessions.

:func:`generate` draws one instrument's command stream as an int64 array in
the ``C_*`` row layout of :mod:`fabric.constants`, ready for the batch kernel.
The flow is modelled on a liquid cash-equity book:

* ~70% limit orders near the touch: a price a few ticks (geometric distance)
  away from a mid that does a slow random walk, buy and sell alike, a few lots
  each, mostly GTC and some DAY.  Most rest; as the mid drifts, new orders
  cross the older ones left on the wrong side, which is where most trades come
  from.
* ~15% cancels and ~10% replaces (quantity down at the same price, a move to a
  new price, or both).  The generator keeps a small price-time model of its
  own book, so these name orders that are really open, mostly recent ones;
  about 3% of them name an order that has just filled (a cancel racing the
  fill) and draw ``order_closed`` rejects, as in real traffic.
* ~5% aggressive orders: limit orders crossing the spread by a few ticks (GTC,
  IOC or FOK) and market orders (IOC, some FOK).
* With ``order_types``: 10 % of the passive orders are post-only (rejected,
  ``would_cross``, when the mid has moved past them), 5 % good-till-date
  (a far date: they rest as GTC orders do), 5 % icebergs (a third of
  their quantity disclosed) and 3 % stop-loss orders (half SL, half SL-M, GTC
  or DAY, their trigger a few ticks beyond the last trade price: they wait
  outside the book, and most trigger as the mid walks), and market orders
  meet market protection (``protect_bp`` of the last trade price).

The model follows the books exactly without icebergs; with them it drifts
now and then (a few hundred commands in a million see another last price), so
a handful of stop orders (about 1 in 400) are refused ``stop_would_trigger``.

With this mix a stream makes about 0.5 trades per command, and the book
stays small: about 10,000 orders rest after 1M commands.  The same seed always gives the same
array.  :func:`to_replay` turns an array
into dicts of the JSON Lines replay format, and :func:`write_session` writes a
multi-instrument sample session::

    python -m perf.workload --out topology/examples/session.jsonl --n 20000 --seed 7
"""

from __future__ import annotations

import argparse
import heapq
import json
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

import numpy as np

from fabric.constants import (
    BUY,
    C_NFIELDS,
    DAY,
    FLAG_POST_ONLY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    MAX_PRICE_TICKS,
    NO_PRICE,
    NO_QTY,
    OP_CANCEL,
    OP_END_OF_DAY,
    OP_NEW,
    OP_REPLACE,
    SIDE_NAMES,
    TIF_NAMES,
    TYPE_NAMES,
)

# --------------------------------------------------------------------------
# Shape of the flow.  Probabilities are per command.
# --------------------------------------------------------------------------
P_LIMIT = 0.70  # passive limit orders near the touch
P_CANCEL = 0.15
P_REPLACE = 0.10
# The remaining 5% are aggressive orders.

P_DAY = 0.20  # share of passive orders that are DAY rather than GTC
P_POST_ONLY = 0.10  # with order_types: share of passive orders that are post-only ...
P_GTD = 0.05  # ... and that are GTD (of GTC's share)
GTD_DAY = 20991231  # their expire day: never reached in a benchmark
P_ICEBERG = 0.05  # ... and that are icebergs, disclosing a third of their quantity
P_STOP = 0.03  # ... and that are stop-loss orders (half of them SL-M), a few ticks beyond the last price
P_AGGR_MARKET = 0.40  # share of aggressive orders that are market orders
P_MARKET_FOK = 0.15  # share of market orders that are FOK rather than IOC
P_AGGR_GTC = 0.50  # tif of aggressive limit orders: GTC, else IOC ...
P_AGGR_IOC = 0.40  # ... and FOK for the rest
MAX_CROSS_TICKS = 3  # aggressive limits cross the mid by 1..3 ticks

P_REPLACE_QTY_DOWN = 0.50  # replace kinds: quantity down at the same price,
P_REPLACE_MOVE = 0.40  # a move to a new price, and both for the rest

DIST_P = 0.40  # distance from the mid in ticks ~ Geometric(DIST_P), mean 2.5
LOTS_P = 0.30  # order size in lots ~ Geometric(LOTS_P), mean 3.3 ...
MAX_LOTS = 50  # ... capped
AGGR_SIZE_FACTOR = 2  # aggressive orders are twice as large

P_MID_STEP = 0.05  # the mid moves one tick (up or down) this often
MID_MARGIN = 50  # ticks the mid keeps from the band edges

P_PICK_RECENT = 0.70  # cancels/replaces mostly name recent orders ...
RECENT_P = 0.05  # ... the k-th most recent with probability ~ Geometric(RECENT_P)
P_LATE = 0.03  # cancels/replaces that name an order which has just filled
LATE_MEMORY = 64  # how many just-filled orders are remembered for that

N_BROKERS = 16


class _BookModel:
    """The generator's model of its own book, to know which orders are open.

    It matches as ``docs/book-semantics.md`` says (price-time priority, trades
    at the resting price, FOK all or nothing, a replace keeps its place only
    for a quantity cut at the same price), so that cancels and replaces name
    orders that are really open.  It has no rejects and no DAY expiry because
    the generated flow never causes them.  Resting orders sit in one heap per
    side keyed by ``(price, time)``; entries of orders that left the book or
    moved are skipped when they reach the top.  Waiting stop orders sit in one
    heap per side in trigger order; each trade price triggers those it reaches,
    as the books do (``docs/book-semantics.md``, "Stop-loss orders").
    """

    def __init__(self, ref: int = 0, protect_bp: int = 0) -> None:
        self.ref, self.protect_bp, self.last = ref, protect_bp, 0  # market protection, as the books have it
        self.side: list[int] = []
        self.disclosed: list[int] = []  # an iceberg's peak, 0 for the others ...
        self.shown: list[int] = []  # ... and what shows of it
        self.price: list[int] = []
        self.qty: list[int] = []
        self.leaves: list[int] = []
        self.broker: list[int] = []
        self.seq: list[int] = []  # time priority while resting
        # Per side, heap of (key, seq, oid) with key = -price for bids, price for asks.
        self.heaps: tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]] = ([], [])
        self.open: list[int] = []  # resting oids, the recent ones mostly at the end
        self.where: dict[int, int] = {}  # oid -> index in self.open
        self.just_filled: deque[int] = deque(maxlen=LATE_MEMORY)
        self.clock = 0
        # Waiting stops: buys by (trigger, seq), sells by (-trigger, seq); the generator never cancels them.
        self.stops: tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]] = ([], [])
        self.market: dict[int, bool] = {}  # a waiting stop: whether it is a stop-loss market order
        self.prints: list[int] = []  # trade prices not yet read for stops

    def new_stop(self, side: int, otype: int, price: int, qty: int, broker: int, trigger: int) -> int:
        """Enter a stop order (valid: its trigger beyond the last price); return its oid."""
        oid = self.new(side, otype, GTC, price, qty, broker, hold=True)
        self.clock += 1
        heapq.heappush(self.stops[side], (trigger if side == BUY else -trigger, self.clock, oid))
        self.market[oid] = otype == MARKET
        return oid

    def _cascade(self) -> None:
        # The stops the trades reached enter the book one after the other; their trades may reach more.
        queue: deque[int] = deque()
        i = 0
        while True:
            while i < len(self.prints):
                p = self.prints[i]
                i += 1
                for side in (BUY, 1 - BUY):
                    heap = self.stops[side]
                    while heap and (heap[0][0] <= p if side == BUY else -heap[0][0] >= p):
                        queue.append(heapq.heappop(heap)[2])
            if not queue:
                break
            oid = queue.popleft()
            market = self.market.pop(oid)
            self._match(oid, market)
            if self.leaves[oid] and not market:
                self._rest(oid)
        self.prints.clear()

    def new(self, side: int, otype: int, tif: int, price: int, qty: int, broker: int, post_only: bool = False,
            disclosed: int = 0, hold: bool = False) -> int:
        """Enter a new order; return its oid (a post-only order that would cross is rejected: it never rests).

        ``hold``: only record it (a stop order, see :meth:`new_stop`)."""
        oid = len(self.side)
        self.side.append(side)
        self.disclosed.append(disclosed)
        self.shown.append(0)
        self.price.append(price)
        self.qty.append(qty)
        self.leaves.append(qty)
        self.broker.append(broker)
        self.seq.append(0)
        if hold:
            return oid
        market = otype == MARKET
        if post_only and self._available(side, price, False, 1) > 0:
            self.leaves[oid] = 0
            return oid
        if tif != FOK or self._available(side, price, market, qty) >= qty:
            self._match(oid, market)
        if self.leaves[oid] and tif in (GTC, DAY, GTD):
            self._rest(oid)
        if self.prints:
            self._cascade()
        return oid

    def cancel(self, oid: int) -> None:
        """Cancel an order if it is open."""
        if oid in self.where:
            self._unrest(oid)

    def replace(self, oid: int, price: int, qty: int) -> None:
        """Replace an open order with a new price and total quantity (both given)."""
        if oid not in self.where:
            return
        cum = self.qty[oid] - self.leaves[oid]
        if qty <= cum:
            self._unrest(oid)
        elif price == self.price[oid] and qty <= self.qty[oid]:
            self.leaves[oid] -= self.qty[oid] - qty
            self.shown[oid] = min(self.shown[oid], self.leaves[oid])
        else:
            self._unrest(oid)
            self.price[oid] = price
            self.leaves[oid] = qty - cum
            self._match(oid, market=False)
            if self.leaves[oid]:
                self._rest(oid)
        self.qty[oid] = qty
        if self.prints:
            self._cascade()

    def pick(self, u: float, recent: int) -> int:
        """Return an open oid, mostly a recent one, or -1 if none is open."""
        n = len(self.open)
        if n == 0:
            return -1
        if u < P_PICK_RECENT:
            return self.open[n - min(recent, n)]
        return self.open[int((u - P_PICK_RECENT) / (1 - P_PICK_RECENT) * n)]

    def _rest(self, oid: int) -> None:
        self.shown[oid] = min(self.disclosed[oid], self.leaves[oid])
        self.clock += 1
        self.seq[oid] = self.clock
        key = -self.price[oid] if self.side[oid] == BUY else self.price[oid]
        heapq.heappush(self.heaps[self.side[oid]], (key, self.clock, oid))
        self.where[oid] = len(self.open)
        self.open.append(oid)

    def _unrest(self, oid: int) -> None:
        # Its heap entry stays behind, stale.
        i = self.where.pop(oid)
        last = self.open.pop()
        if last != oid:
            self.open[i] = last
            self.where[last] = i

    def _is_stale(self, entry: tuple[int, int, int]) -> bool:
        _, seq, oid = entry
        return oid not in self.where or self.seq[oid] != seq

    @staticmethod
    def _crosses(side: int, key: int, limit: int) -> bool:
        # Does an opposite resting order with heap key `key` cross `limit`?
        return key <= limit if side == BUY else -key >= limit

    def _market_limit(self, side: int) -> int | None:
        # A market order's limit under market protection (docs/book-semantics.md), None without it.
        base = self.last or self.ref
        if not self.protect_bp or not base:
            return None
        if side == BUY:
            return base * (10000 + self.protect_bp) // 10000
        return -(-base * (10000 - self.protect_bp) // 10000)

    def _match(self, oid: int, market: bool) -> None:
        side, limit = self.side[oid], self.price[oid]
        if market:
            protected = self._market_limit(side)
            market, limit = protected is None, limit if protected is None else protected
        heap = self.heaps[1 - side]
        while self.leaves[oid] and heap:
            entry = heap[0]
            if self._is_stale(entry):
                heapq.heappop(heap)
                continue
            key, _, other = entry
            if not market and not self._crosses(side, key, limit):
                break
            iceberg = self.disclosed[other] != 0
            fill = min(self.leaves[oid], self.shown[other] if iceberg else self.leaves[other])
            self.last = self.price[other]
            self.prints.append(self.last)
            self.leaves[oid] -= fill
            self.leaves[other] -= fill
            if iceberg:
                self.shown[other] -= fill
                if self.leaves[other] and not self.shown[other]:
                    # The next peak shows at the back of the queue: a new heap entry, the old one stale.
                    self.shown[other] = min(self.disclosed[other], self.leaves[other])
                    self.clock += 1
                    self.seq[other] = self.clock
                    heapq.heappop(heap)
                    heapq.heappush(heap, (entry[0], self.clock, other))
                    continue
            if not self.leaves[other]:
                heapq.heappop(heap)
                self._unrest(other)
                self.just_filled.append(other)

    def _available(self, side: int, limit: int, market: bool, need: int) -> int:
        # Opposite quantity at crossing prices, counted until `need` is reached.
        if market:
            protected = self._market_limit(side)
            market, limit = protected is None, limit if protected is None else protected
        heap = self.heaps[1 - side]
        taken: list[tuple[int, int, int]] = []
        total = 0
        while heap and total < need:
            entry = heapq.heappop(heap)
            if self._is_stale(entry):
                continue
            taken.append(entry)
            if not market and not self._crosses(side, entry[0], limit):
                break
            total += self.leaves[entry[2]]
        for entry in taken:
            heapq.heappush(heap, entry)
        return total


def generate(
    n: int,
    seed: int = 1,
    *,
    mid: int = 70000,
    lot: int = 1,
    band: tuple[int, int] | None = None,
    order_types: bool = False,
    protect_bp: int = 0,
) -> np.ndarray:
    """Generate ``n`` commands of realistic order flow for one instrument.

    Parameters
    ----------
    n
        Number of commands (rows) to generate.
    seed
        Seed of the numpy random generator; equal seeds give equal arrays.
    mid
        Starting mid price in ticks.
    lot
        Lot size; every quantity is a positive multiple of it.
    band
        Inclusive ``(low, high)`` price band in ticks.  Every price stays
        inside it, and the mid keeps a margin from its edges.  ``None`` means
        unbanded (prices only stay positive).
    order_types
        Put post-only, GTD, iceberg and stop-loss orders in the mix (see the module's text).
    protect_bp
        The book's market protection in basis points, with ``mid`` as its
        reference price (0: none): the generator's model matches market
        orders as the book will.

    Returns
    -------
    numpy.ndarray
        int64 array of shape ``(n, C_NFIELDS)`` in the ``C_*`` layout.  New
        orders get consecutive oids from 0; cancels and replaces name an
        earlier oid.  Cancel rows carry only op, oid and broker; replace rows
        also carry ``C_PRICE`` (or ``NO_PRICE``) and ``C_QTY`` (a new total
        quantity, or ``NO_QTY``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if lot < 1:
        raise ValueError(f"lot must be >= 1, got {lot}")
    lo, hi = band if band is not None else (1, MAX_PRICE_TICKS)
    if not 1 <= lo <= mid <= hi:
        raise ValueError(f"need 1 <= band low <= mid <= band high, got {lo}, {mid}, {hi}")
    margin = min(MID_MARGIN, (hi - lo) // 4)

    # Draw everything up front; the loop below only keeps state.
    rng = np.random.default_rng(seed)
    kind_u = rng.random(n).tolist()
    sub_u = rng.random(n).tolist()
    tif_u = rng.random(n).tolist()
    late_u = rng.random(n).tolist()
    sides = rng.integers(0, 2, n).tolist()
    dists = rng.geometric(DIST_P, n).tolist()
    lots = np.minimum(rng.geometric(LOTS_P, n), MAX_LOTS).tolist()
    cross = rng.integers(1, MAX_CROSS_TICKS + 1, n).tolist()
    brokers = rng.integers(0, N_BROKERS, n).tolist()
    pick_u = rng.random(n).tolist()
    recency = rng.geometric(RECENT_P, n).tolist()
    steps = rng.choice(np.array([-1, 0, 1]), size=n, p=[P_MID_STEP / 2, 1 - P_MID_STEP, P_MID_STEP / 2]).tolist()

    def clip(price: int) -> int:
        return min(max(price, lo), hi)

    book = _BookModel(mid, protect_bp)
    rows: list[tuple[int, ...]] = []
    post_u = rng.random(n).tolist() if order_types else [1.0] * n
    for i in range(n):
        u = kind_u[i]
        side = sides[i]
        qty = lots[i] * lot
        if u < P_LIMIT or (u < P_LIMIT + P_CANCEL + P_REPLACE and not book.open):
            # Passive limit order near the touch.
            tif = DAY if tif_u[i] < P_DAY else GTC
            post_only = post_u[i] < P_POST_ONLY
            if tif == GTC and P_POST_ONLY <= post_u[i] < P_POST_ONLY + P_GTD:
                tif = GTD
            iceberg = P_POST_ONLY + P_GTD <= post_u[i] < P_POST_ONLY + P_GTD + P_ICEBERG
            disclosed = lot * -(-lots[i] // 3) if iceberg else 0
            stop_u = post_u[i] - (P_POST_ONLY + P_GTD + P_ICEBERG)
            if 0 <= stop_u < P_STOP:
                # A stop-loss order: buy stops above the last price, sell stops below (so it waits), its limit
                # (SL) the trigger or a tick or two beyond; half are SL-M.
                base = book.last or mid
                trigger = clip(base + dists[i] if side == BUY else base - dists[i])
                if book.last == 0 or (trigger > book.last if side == BUY else trigger < book.last):
                    otype = MARKET if stop_u < P_STOP / 2 else LIMIT
                    price = 0 if otype == MARKET else clip(trigger + cross[i] - 1 if side == BUY
                                                           else trigger - cross[i] + 1)
                    tif = DAY if tif == DAY else GTC
                    oid = book.new_stop(side, otype, price, qty, brokers[i], trigger)
                    rows.append((OP_NEW, oid, brokers[i], side, otype, tif, price, qty, 0, 0, 0, 0, trigger))
                    mid = min(max(mid + steps[i], lo + margin), hi - margin)
                    continue
            price = clip(mid - dists[i] if side == BUY else mid + dists[i])
            oid = book.new(side, LIMIT, tif, price, qty, brokers[i], post_only, disclosed)
            rows.append((OP_NEW, oid, brokers[i], side, LIMIT, tif, price, qty, 0, FLAG_POST_ONLY if post_only else 0,
                         GTD_DAY if tif == GTD else 0, disclosed, 0))
        elif u < P_LIMIT + P_CANCEL + P_REPLACE:
            # Cancel or replace an open order, or now and then one just filled.
            if late_u[i] < P_LATE and book.just_filled:
                oid = book.just_filled.pop()
            else:
                oid = book.pick(pick_u[i], recency[i])
            broker = book.broker[oid]
            if u < P_LIMIT + P_CANCEL:
                book.cancel(oid)
                rows.append((OP_CANCEL, oid, broker, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
                continue
            old_side, old_price, old_qty = book.side[oid], book.price[oid], book.qty[oid]
            new_price, new_qty = NO_PRICE, NO_QTY
            s = sub_u[i]
            if s < P_REPLACE_QTY_DOWN and old_qty > lot:
                new_qty = max(lot, old_qty - cross[i] * lot)
            else:
                new_price = clip(mid - dists[i] if old_side == BUY else mid + dists[i])
                if new_price == old_price:
                    new_price = clip(new_price - 1 if old_side == BUY else new_price + 1)
                if s >= P_REPLACE_QTY_DOWN + P_REPLACE_MOVE:
                    new_qty = qty
            book.replace(
                oid,
                old_price if new_price == NO_PRICE else new_price,
                old_qty if new_qty == NO_QTY else new_qty,
            )
            rows.append((OP_REPLACE, oid, broker, 0, 0, 0, new_price, new_qty, 0, 0, 0, 0, NO_PRICE))
        else:
            # Aggressive order: a market order or a limit crossing the spread.
            qty *= AGGR_SIZE_FACTOR
            if sub_u[i] < P_AGGR_MARKET:
                otype, tif, price = MARKET, FOK if tif_u[i] < P_MARKET_FOK else IOC, 0
            else:
                t = tif_u[i]
                otype = LIMIT
                tif = GTC if t < P_AGGR_GTC else IOC if t < P_AGGR_GTC + P_AGGR_IOC else FOK
                price = clip(mid + cross[i] if side == BUY else mid - cross[i])
            oid = book.new(side, otype, tif, price, qty, brokers[i])
            rows.append((OP_NEW, oid, brokers[i], side, otype, tif, price, qty, 0, 0, 0, 0, 0))
        mid = min(max(mid + steps[i], lo + margin), hi - margin)

    out = np.zeros((n, C_NFIELDS), dtype=np.int64)
    if rows:
        out[:] = rows  # C_STP stays 0: the flow runs without self-trade prevention
    return out


def to_replay(
    cmds: np.ndarray, symbol: str = "TCS", tick: str = "0.05", *, oid_prefix: str = "o"
) -> Iterator[dict[str, object]]:
    """Turn a command array into dicts of the JSON Lines replay format.

    Parameters
    ----------
    cmds
        int64 array of shape ``(n, C_NFIELDS)``, as returned by :func:`generate`.
    symbol
        Symbol written into every order command.
    tick
        Tick size as a decimal string; prices are written as ``ticks * tick``
        with as many decimals as the tick has.
    oid_prefix
        Prefix of the client order ids (``"o"`` gives ``"o17"``).

    Yields
    ------
    dict
        One JSON-ready dict per row: ``new`` (market orders carry no price),
        ``cancel``, ``replace`` (price and qty only when they change) or
        ``end_of_day``.
    """
    tick_d = Decimal(tick)
    exponent = tick_d.as_tuple().exponent
    if not isinstance(exponent, int) or tick_d <= 0:
        raise ValueError(f"tick must be a positive decimal, got {tick!r}")
    quantum = Decimal(1).scaleb(exponent)

    def price_str(ticks: int) -> str:
        return str((tick_d * ticks).quantize(quantum))

    for op, oid, broker, side, otype, tif, price, qty, _stp, flags, expire, disclosed, stop in cmds.tolist():
        if op == OP_END_OF_DAY:
            yield {"op": "end_of_day"}
            continue
        head: dict[str, object] = {
            "op": "",
            "oid": f"{oid_prefix}{oid}",
            "broker": f"B{broker}",
            "symbol": symbol,
        }
        if op == OP_NEW:
            head["op"] = "new"
            head["side"] = SIDE_NAMES[side]
            head["type"] = TYPE_NAMES[otype]
            if otype == LIMIT:
                head["price"] = price_str(price)
            head["qty"] = qty
            head["tif"] = TIF_NAMES[tif]
            if flags & FLAG_POST_ONLY:
                head["post_only"] = True
            if disclosed:
                head["disclosed_qty"] = disclosed
            if stop:
                head["stop_price"] = price_str(stop)
            if tif == GTD:
                head["expire_date"] = f"{expire // 10000:04d}-{expire // 100 % 100:02d}-{expire % 100:02d}"
        elif op == OP_CANCEL:
            head["op"] = "cancel"
        elif op == OP_REPLACE:
            head["op"] = "replace"
            if price != NO_PRICE:
                head["price"] = price_str(price)
            if qty != NO_QTY:
                head["qty"] = qty
        else:
            raise ValueError(f"unknown op code {op}")
        yield head


@dataclass(frozen=True)
class Instrument:
    """An instrument of a sample session, as its ``instrument`` line declares it.

    ``activity`` is the instrument's relative share of the session's order
    flow; it is not written to the file.
    """

    symbol: str
    tick: str
    lot: int
    ref_price: str
    band_pct: str
    activity: float = 1.0

    def to_replay(self) -> dict[str, object]:
        """Return the ``{"op": "instrument", ...}`` line as a dict."""
        return {
            "op": "instrument",
            "symbol": self.symbol,
            "tick": self.tick,
            "lot": self.lot,
            "ref_price": self.ref_price,
            "band_pct": self.band_pct,
        }

    def mid_ticks(self) -> int:
        """Return the reference price in ticks (it must be a whole number of ticks)."""
        ticks, rest = divmod(Decimal(self.ref_price), Decimal(self.tick))
        if rest:
            raise ValueError(f"{self.symbol}: ref_price {self.ref_price} is off tick {self.tick}")
        return int(ticks)

    def band_ticks(self) -> tuple[int, int]:
        """Return the inclusive price band ``ref_price * (1 ± band_pct/100)`` in ticks.

        The low edge rounds up and the high edge down to whole ticks.
        """
        ref, tick, pct = Decimal(self.ref_price), Decimal(self.tick), Decimal(self.band_pct)
        low = ref * (100 - pct) / 100 / tick
        high = ref * (100 + pct) / 100 / tick
        return (
            int(low.to_integral_value(rounding=ROUND_CEILING)),
            int(high.to_integral_value(rounding=ROUND_FLOOR)),
        )


# BSE-like large caps with plausible prices and exchange tick sizes.
SAMPLE_INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("RELIANCE", "0.10", 1, "1420.00", "10", activity=2.0),
    Instrument("TCS", "0.05", 1, "3500.00", "10", activity=1.2),
    Instrument("HDFCBANK", "0.10", 1, "1950.00", "10", activity=1.6),
    Instrument("INFY", "0.05", 1, "1580.00", "10", activity=1.2),
    Instrument("ICICIBANK", "0.10", 1, "1410.00", "10", activity=1.3),
    Instrument("SBIN", "0.05", 1, "815.00", "20", activity=1.0),
    Instrument("ITC", "0.05", 1, "430.00", "20", activity=0.9),
    Instrument("LT", "0.10", 1, "3620.00", "10", activity=0.8),
)


def write_session(path: str | Path, n: int, seed: int, instruments: Sequence[Instrument] = SAMPLE_INSTRUMENTS) -> int:
    """Write a multi-instrument sample session as JSON Lines.

    The file declares every instrument, then interleaves ``n`` order-flow
    commands drawn per instrument with :func:`generate` (mid at the reference
    price, band from ``band_pct``), and ends with ``end_of_day``.  Each
    instrument's share of the flow follows its ``activity``.  Client order ids
    are prefixed with the symbol (``"TCS-17"``) so that they stay unique per
    broker across the file.

    Parameters
    ----------
    path
        File to write (overwritten).
    n
        Number of order-flow commands, over all instruments.
    seed
        Seed of the interleaving and of every instrument's stream.
    instruments
        Instruments of the session.

    Returns
    -------
    int
        Number of lines written.
    """
    rng = np.random.default_rng(seed)
    weights = np.array([ins.activity for ins in instruments], dtype=float)
    which = rng.choice(len(instruments), size=n, p=weights / weights.sum())
    counts = np.bincount(which, minlength=len(instruments))
    seeds = rng.integers(0, 2**62, size=len(instruments))

    streams = [
        to_replay(
            generate(int(count), int(s), mid=ins.mid_ticks(), lot=ins.lot, band=ins.band_ticks()),
            ins.symbol,
            ins.tick,
            oid_prefix=f"{ins.symbol}-",
        )
        for ins, count, s in zip(instruments, counts, seeds, strict=True)
    ]
    lines = [ins.to_replay() for ins in instruments]
    lines.extend(next(streams[k]) for k in which.tolist())
    lines.append({"op": "end_of_day"})

    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, separators=(",", ":")))
            f.write("\n")
    return len(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Write a sample session file (command line entry point)."""
    parser = argparse.ArgumentParser(description="Write a multi-instrument sample session (JSON Lines).")
    parser.add_argument("--out", required=True, help="JSON Lines file to write")
    parser.add_argument("--n", type=int, default=20000, help="order-flow commands")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    lines = write_session(args.out, args.n, args.seed)
    print(f"wrote {lines} lines to {args.out}")


if __name__ == "__main__":
    main()
