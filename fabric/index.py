"""The market index (as the SENSEX over its 30 stocks): a weighted sum of constituents' last prices, kept up to date
one trade at a time.  A pure library, no sockets.

The value is ``base * sum(w_i * p_i) / sum(w_i * ref_i)``: ``w_i`` a constituent's weight (its free-float
shares), ``p_i`` its last price (its ``ref_price`` before its first trade of the day), ``ref_i`` its reference
price (the previous close).  The index therefore equals ``base`` at the previous close, and its move from
there is the market's move (the one the circuit breakers of :mod:`fabric.circuit` watch).

It keeps bars of its value as a symbol has (1 s and 1 min, volume 0, ``trades`` the moves), which the
ticker writes to the price history under the index's name.

A trade changes one term: :meth:`MarketIndex.trade` adjusts the weighted sum by ``w_i * (p - p_old)``, so an
update costs the same for 30 constituents or 3,000.  Decimal arithmetic keeps the sum exact: no drift from
millions of adjustments.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Final

from fabric.marketstate import INTERVALS, BarSeries

__all__ = ["MarketIndex"]

_PLACES: Final = Decimal("0.01")


class MarketIndex:
    """One index over its constituents.

    Parameters
    ----------
    name
        The index's name (``SENSEX``).
    base
        Its value at the previous close.
    constituents
        ``(symbol, weight, ref_price)`` of each constituent; weights and reference prices positive.

    Raises
    ------
    ValueError
        When there is no constituent, a symbol is given twice, or a weight, reference price or the base is not
        positive.
    """

    def __init__(self, name: str, base: Decimal, constituents: Iterable[tuple[str, Decimal, Decimal]]) -> None:
        self.name = name
        self.base = base
        self.weights: dict[str, Decimal] = {}
        self.refs: dict[str, Decimal] = {}
        for sym, w, ref in constituents:
            if sym in self.weights:
                raise ValueError(f"{sym} is a constituent twice")
            if w <= 0 or ref <= 0:
                raise ValueError(f"{sym}: weight and reference price must be positive (got {w} and {ref})")
            self.weights[sym] = w
            self.refs[sym] = ref
        if not self.weights:
            raise ValueError(f"index {name} has no constituents")
        if base <= 0:
            raise ValueError(f"index {name}: the base must be positive (got {base})")
        self.divisor = sum((self.weights[s] * self.refs[s] for s in self.weights), Decimal(0))
        self.last: dict[str, Decimal] = dict(self.refs)  # each constituent's price in the sum
        self.total = self.divisor  # sum(w_i * p_i)
        self.high = self.low = self.value
        self.ts = 0
        # The index's own bars (1 s and 1 min; "trades" counts its moves, volume is 0), for the price history.
        self.bars: dict[str, BarSeries] = {k: BarSeries(v) for k, v in INTERVALS.items()}

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.weights

    def trade(self, symbol: str, price: Decimal, ts: int = 0) -> bool:
        """Take a constituent's trade at ``price``; return whether the index moved (other symbols: ``False``)."""
        w = self.weights.get(symbol)
        if w is None:
            return False
        old = self.last[symbol]
        if price == old:
            return False
        self.last[symbol] = price
        self.total += w * (price - old)
        v = self.value
        if v > self.high:
            self.high = v
        if v < self.low:
            self.low = v
        self.ts = max(self.ts, ts)
        if ts:
            r = v.quantize(_PLACES)
            for series in self.bars.values():
                series.add(ts, r, 0)
        return True

    def reset(self, symbols: Iterable[str]) -> None:
        """Put ``symbols`` back at their reference price (their shard started over and replays its day)."""
        for sym in symbols:
            if sym in self.weights:
                self.total += self.weights[sym] * (self.refs[sym] - self.last[sym])
                self.last[sym] = self.refs[sym]

    @property
    def value(self) -> Decimal:
        """The index's value now (unrounded)."""
        return self.base * self.total / self.divisor

    @property
    def change(self) -> Decimal:
        """The value minus the base (the previous close)."""
        return self.value - self.base

    @property
    def change_pct(self) -> Decimal:
        """The move from the previous close in percent (unrounded; negative: down)."""
        return (self.total - self.divisor) * 100 / self.divisor

    def fields(self) -> dict[str, Any]:
        """Return the index as JSON-ready fields: name, value, previous close, change, change percent, high, low.

        Values are decimal strings rounded to 2 places.
        """
        return {"name": self.name, "value": _r(self.value), "prev_close": _r(self.base), "change": _r(self.change),
                "change_pct": _r(self.change_pct), "high": _r(self.high), "low": _r(self.low),
                "constituents": len(self.weights)}


def _r(d: Decimal) -> str:
    return str(d.quantize(_PLACES))
