"""The call auction of the pre-open session: the equilibrium price and the uncross.

During the pre-open's order entry, limit and market orders are collected without
matching; the indicative equilibrium price is published as they arrive
(:class:`AuctionLevels`, :func:`equilibrium`).  When entry closes, the whole
collection trades at that one price (:func:`uncross`) and what is left goes to
the continuous book.  ``docs/sessions.md`` states the rules with worked examples,
each of which ``tests/test_auction.py`` checks.

The equilibrium price
---------------------
For a price ``p`` let ``D(p)`` be the buy quantity willing to trade there (market
buys and limit buys priced at or above ``p``) and ``S(p)`` the sell quantity
(market sells and limit sells at or below ``p``).  The *tradable* quantity is
``min(D, S)`` and the *unmatched* quantity ``|D - S|``.

The candidates are **every limit price in the collection, of either side**, and
the previous close where rule 3 says so.  Of the candidates:

1. the price with the largest tradable quantity;
2. on a tie, the one with the smallest unmatched quantity;
3. on a further tie, the one nearest the previous close; when the previous close
   lies between the lowest and the highest of the tied prices (or is one of them),
   the previous close itself.

So two tied prices equally near the close never have to be told apart: they lie on
either side of it, and the close itself is chosen.  The close is a sound choice
there: ``D`` only falls and ``S`` only rises with the price, so every price between
two prices of the largest tradable quantity has that same tradable quantity and an
unmatched quantity no larger than theirs (``docs/sessions.md`` proves it).

With only market orders (no limit price at all) on both sides, the price is the
previous close.  When nothing can trade (no buyer and seller overlap at any
candidate), there is no equilibrium: :func:`equilibrium` returns ``None``.

The uncross
-----------
At the equilibrium price the orders that may trade there are allocated in three
rounds: limit against limit, then the limit orders left against market orders, then
market against market.  Within a round each side is taken in price-time priority
(best price first, the earlier of equal prices first; market orders in time order).
Whatever is left goes to the continuous book: a limit order at its own price, a
market order as a limit order at the equilibrium price.

Self-trade prevention: when the allocation would pair a buy and a sell of the same
broker and the later of the two (in time priority: the incoming one) carries a mode
(``fabric.constants.STP_*``), the mode cancels the earlier order (``cancel_resting``),
the later one (``cancel_incoming``) or both, whole: nothing trades before the call,
so nothing of them has traded.  The auction then starts over without them, so its
price and figures are those of the orders left (``Uncross.stp_cancelled`` lists the
cancelled ones), and what is left still never crosses.

Prices are whole ticks (``fabric.instruments``); quantities whole shares.  Time
priority is the order of the sequence the caller gives.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from fabric.constants import BUY, SELL, STP_CANCEL_BOTH, STP_CANCEL_INCOMING, STP_CANCEL_RESTING, STP_OFF

# Which rule decided the equilibrium price: 1 (tradable), 2 (unmatched), 3 (close), or only market orders.
Rule = Literal["tradable", "unmatched", "close", "market_only"]


class AuctionError(ValueError):
    """An order or a previous close the auction cannot take."""


@dataclass(frozen=True, slots=True)
class AuctionOrder:
    """One order collected during the pre-open.

    Parameters
    ----------
    oid
        The order's id (opaque here; the engine's order number).
    side
        ``fabric.constants.BUY`` or ``SELL``.
    price
        The limit price in ticks, or ``None`` for a market order.
    qty
        The quantity still open, in shares (positive).
    broker, stp
        The order's broker (a number) and its self-trade prevention mode (``STP_*``; the module's docstring).
    """

    oid: int
    side: int
    price: int | None
    qty: int
    broker: int = 0
    stp: int = STP_OFF

    def __post_init__(self) -> None:
        if self.side not in (BUY, SELL):
            raise AuctionError(f"order {self.oid}: side must be BUY (0) or SELL (1), got {self.side!r}")
        if isinstance(self.qty, bool) or not isinstance(self.qty, int) or self.qty <= 0:
            raise AuctionError(f"order {self.oid}: quantity must be a positive whole number, got {self.qty!r}")
        if self.price is not None and (isinstance(self.price, bool) or not isinstance(self.price, int)
                                       or self.price <= 0):
            raise AuctionError(f"order {self.oid}: a limit price must be a positive number of ticks, "
                               f"got {self.price!r}")

    @property
    def market(self) -> bool:
        """Whether this is a market order."""
        return self.price is None


@dataclass(frozen=True, slots=True)
class Equilibrium:
    """The auction's price and what trades at it.

    ``tradable`` is the quantity that trades at ``price``, ``unmatched`` the quantity
    willing to trade there that does not (all on one side); ``rule`` says which rule
    decided the price.
    """

    price: int
    tradable: int
    unmatched: int
    rule: Rule


@dataclass(frozen=True, slots=True)
class AuctionTrade:
    """One trade of the uncross, at the equilibrium price."""

    buy: int
    sell: int
    qty: int


@dataclass(frozen=True, slots=True)
class Leftover:
    """What of an order goes to the continuous book after the uncross.

    ``price`` is its limit price there: its own, or the equilibrium price for a
    market order (``was_market``); ``qty`` is what is left of it.
    """

    oid: int
    side: int
    price: int
    qty: int
    was_market: bool


@dataclass(frozen=True, slots=True)
class Uncross:
    """The outcome of the call auction.

    ``equilibrium`` is ``None`` when nothing could trade (then ``trades`` is empty
    and every order is left over, a market order with no price to become: see
    :func:`uncross`).  ``leftovers`` are in the time priority of the orders given.
    ``stp_cancelled`` are the orders self-trade prevention cancelled, in the order
    it met them (of a pair, the earlier order first), which trade nothing.
    """

    equilibrium: Equilibrium | None
    trades: tuple[AuctionTrade, ...]
    leftovers: tuple[Leftover, ...]
    unpriced: tuple[AuctionOrder, ...] = ()
    stp_cancelled: tuple[AuctionOrder, ...] = ()


def _check_close(prev_close: int) -> None:
    if isinstance(prev_close, bool) or not isinstance(prev_close, int) or prev_close <= 0:
        raise AuctionError(f"the previous close must be a positive number of ticks, got {prev_close!r} "
                           "(an instrument needs a reference price to hold an auction)")


class AuctionLevels:
    """The collected orders' quantities by price level, for the indicative price as orders arrive.

    :meth:`add` and :meth:`remove` keep the levels (a cancelled or amended order
    is removed, then added again with its new terms); :meth:`equilibrium` is
    O(levels), so it can run after every order.
    """

    __slots__ = ("_buy", "_prices", "_sell", "market_buy", "market_sell")

    def __init__(self) -> None:
        self._buy: dict[int, int] = {}
        self._sell: dict[int, int] = {}
        self._prices: list[int] = []  # every price with a quantity on either side, ascending
        self.market_buy = 0
        self.market_sell = 0

    @classmethod
    def of(cls, orders: Iterable[AuctionOrder]) -> AuctionLevels:
        """Return the levels of ``orders``."""
        levels = cls()
        for o in orders:
            levels.add(o.side, o.price, o.qty)
        return levels

    def add(self, side: int, price: int | None, qty: int) -> None:
        """Add ``qty`` at ``price`` (``None``: market) on ``side``."""
        if price is None:
            if side == BUY:
                self.market_buy += qty
            else:
                self.market_sell += qty
            return
        book = self._buy if side == BUY else self._sell
        if price not in self._buy and price not in self._sell:
            bisect.insort(self._prices, price)
        book[price] = book.get(price, 0) + qty

    def remove(self, side: int, price: int | None, qty: int) -> None:
        """Take ``qty`` at ``price`` (``None``: market) off ``side``.

        Raises
        ------
        AuctionError
            When the side holds less than ``qty`` there.
        """
        if price is None:
            held = self.market_buy if side == BUY else self.market_sell
            if qty > held:
                raise AuctionError(f"cannot take {qty} market off a side holding {held}")
            if side == BUY:
                self.market_buy -= qty
            else:
                self.market_sell -= qty
            return
        book = self._buy if side == BUY else self._sell
        held = book.get(price, 0)
        if qty > held:
            raise AuctionError(f"cannot take {qty} at {price} off a level holding {held}")
        if held == qty:
            del book[price]
            if price not in self._buy and price not in self._sell:
                del self._prices[bisect.bisect_left(self._prices, price)]
        else:
            book[price] = held - qty

    def prices(self) -> list[int]:
        """Return every limit price collected, of either side, ascending (the candidates)."""
        return list(self._prices)

    def table(self) -> list[tuple[int, int, int]]:
        """Return ``(price, D, S)`` for every candidate price, ascending: the cumulative quantities.

        ``D`` is the buy quantity at or above the price plus the market buys, ``S`` the
        sell quantity at or below it plus the market sells (``docs/sessions.md``'s tables).
        """
        prices = self._prices
        demand = [0] * len(prices)
        run = self.market_buy
        for i in range(len(prices) - 1, -1, -1):
            run += self._buy.get(prices[i], 0)
            demand[i] = run
        out = []
        run = self.market_sell
        for i, p in enumerate(prices):
            run += self._sell.get(p, 0)
            out.append((p, demand[i], run))
        return out

    def equilibrium(self, prev_close: int) -> Equilibrium | None:
        """Return the equilibrium price by the module's rules, or ``None`` when nothing can trade.

        Raises
        ------
        AuctionError
            When ``prev_close`` is not a positive number of ticks.
        """
        _check_close(prev_close)
        if not self._prices:
            if self.market_buy and self.market_sell:
                return Equilibrium(prev_close, min(self.market_buy, self.market_sell),
                                   abs(self.market_buy - self.market_sell), "market_only")
            return None
        rows = [(p, min(d, s), abs(d - s)) for p, d, s in self.table()]
        best_t = max(t for _, t, _ in rows)
        if best_t == 0:
            return None
        most = [(p, u) for p, t, u in rows if t == best_t]
        best_u = min(u for _, u in most)
        tied = [p for p, u in most if u == best_u]  # the prices best on rules 1 and 2, ascending
        if len(tied) == 1:
            return Equilibrium(tied[0], best_t, best_u, "tradable" if len(most) == 1 else "unmatched")
        lo, hi = tied[0], tied[-1]
        if lo <= prev_close <= hi:
            # The close lies between the tied prices, so it has their tradable quantity and an unmatched
            # quantity no larger than theirs (module docstring): its own figures are the ones that trade.
            d, s = self._cumulative(prev_close)
            return Equilibrium(prev_close, min(d, s), abs(d - s), "close")
        return Equilibrium(lo if prev_close < lo else hi, best_t, best_u, "close")

    def _cumulative(self, price: int) -> tuple[int, int]:
        d = self.market_buy + sum(q for p, q in self._buy.items() if p >= price)
        s = self.market_sell + sum(q for p, q in self._sell.items() if p <= price)
        return d, s


def equilibrium(orders: Iterable[AuctionOrder], prev_close: int) -> Equilibrium | None:
    """Return the equilibrium of ``orders`` (see the module's rules), or ``None`` when nothing can trade.

    Raises
    ------
    AuctionError
        When ``prev_close`` is not a positive number of ticks.
    """
    return AuctionLevels.of(orders).equilibrium(prev_close)


def _priority(orders: list[tuple[int, AuctionOrder]], side: int) -> list[tuple[int, AuctionOrder]]:
    # Price-time: best price first (highest buy, lowest sell), then time (the index given).
    if side == BUY:
        return sorted(orders, key=lambda io: (-(io[1].price or 0), io[0]))
    return sorted(orders, key=lambda io: (io[1].price or 0, io[0]))


def uncross(orders: Sequence[AuctionOrder], prev_close: int) -> Uncross:
    """Run the call auction over ``orders``, given in time priority (earliest first).

    Returns the equilibrium, the trades in the order they are allocated (limit
    against limit, the limit orders left against market orders, market against
    market; price-time priority within each round), and every order's leftover in
    time priority.  When there is no equilibrium nothing trades: limit orders are
    left over at their prices and market orders, which have no price to become,
    are returned in ``unpriced`` (the caller cancels them).  Orders that self-trade
    prevention cancels (the module's docstring) are in ``stp_cancelled`` and
    nowhere else; the auction is that of the orders left.

    Raises
    ------
    AuctionError
        When ``prev_close`` is not a positive number of ticks or two orders share an id.
    """
    _check_close(prev_close)
    if len({o.oid for o in orders}) != len(orders):
        raise AuctionError("two orders share an id")
    live = list(orders)
    stopped: list[AuctionOrder] = []
    while True:
        eq = equilibrium(live, prev_close)
        if eq is None:
            return Uncross(None, (),
                           tuple(Leftover(o.oid, o.side, o.price, o.qty, False) for o in live if o.price is not None),
                           tuple(o for o in live if o.price is None), tuple(stopped))
        trades, leaves, stop = _allocate(live, eq.price)
        if not stop:
            break
        # Self-trade prevention cancelled orders: the call starts over without them (each round drops one at least).
        stopped.extend(live[i] for i in stop)
        live = [o for i, o in enumerate(live) if i not in stop]
    assert sum(t.qty for t in trades) == eq.tradable, "the uncross must trade the equilibrium's quantity"
    p = eq.price
    left = tuple(Leftover(o.oid, o.side, p if o.price is None else o.price, leaves[i], o.price is None)
                 for i, o in enumerate(live) if leaves[i])
    return Uncross(eq, tuple(trades), left, (), tuple(stopped))


def _allocate(orders: list[AuctionOrder], p: int) -> tuple[list[AuctionTrade], list[int], tuple[int, ...]]:
    # The three rounds at price p: the trades and each order's leaves; or, at the first pair of one broker whose
    # later order has a self-trade prevention mode, the indices of the orders that mode cancels (earlier first).
    leaves = [o.qty for o in orders]
    lim_b = _priority([(i, o) for i, o in enumerate(orders) if o.side == BUY and o.price is not None
                       and o.price >= p], BUY)
    lim_s = _priority([(i, o) for i, o in enumerate(orders) if o.side == SELL and o.price is not None
                       and o.price <= p], SELL)
    mkt_b = [(i, o) for i, o in enumerate(orders) if o.side == BUY and o.price is None]
    mkt_s = [(i, o) for i, o in enumerate(orders) if o.side == SELL and o.price is None]
    trades: list[AuctionTrade] = []

    def match(buys: list[tuple[int, AuctionOrder]], sells: list[tuple[int, AuctionOrder]]) -> tuple[int, ...]:
        bi = si = 0
        while bi < len(buys) and si < len(sells):
            b, s = buys[bi][0], sells[si][0]
            if not leaves[b]:
                bi += 1
                continue
            if not leaves[s]:
                si += 1
                continue
            if orders[b].broker == orders[s].broker:
                first, later = min(b, s), max(b, s)
                mode = orders[later].stp
                if mode == STP_CANCEL_RESTING:
                    return (first,)
                if mode == STP_CANCEL_INCOMING:
                    return (later,)
                if mode == STP_CANCEL_BOTH:
                    return (first, later)
            q = min(leaves[b], leaves[s])
            leaves[b] -= q
            leaves[s] -= q
            trades.append(AuctionTrade(orders[b].oid, orders[s].oid, q))
        return ()

    for buys, sells in ((lim_b, lim_s), (lim_b, mkt_s), (mkt_b, lim_s), (mkt_b, mkt_s)):
        stop = match(buys, sells)
        if stop:
            return trades, leaves, stop
    return trades, leaves, ()
