"""The gateway's risk checks: one call per order message, before it is routed to a matcher.

Issue 15's checks, as exchange-core has them, a stage of their own before matching (the gateway's loop only
calls :meth:`RiskChecks.check` and feeds :meth:`RiskChecks.on_report`):

- the largest quantity of one order (``order_qty_too_large``);
- the largest value, price times quantity, of one order (``order_value_too_large``); a market order is valued at
  the instrument's reference price (the previous close), and not checked when it has none;
- the risk band: a limit price within ``risk_band_pct`` percent of the reference price
  (``price_outside_risk_band``); an instrument without a reference price is not checked (the matcher's
  circuit filter, ``band_pct``, still is);
- the most open orders of a broker (``too_many_open_orders``);
- the broker's rate of ``new`` and ``replace`` messages, a token bucket (``rate_limited``); cancels are never
  limited, so a broker can always take its orders out of the market.

The reference price starts as the topology's ``ref_price`` and follows the matcher's (:meth:`RiskChecks.set_reference`:
the gateway gives it each symbol's reference from its shard's snapshot, then each ``close`` the shard publishes).

The limits come from the topology once (``[risk]`` defaults, a broker's own ``risk`` table, an instrument's
keys: :class:`topology.model.RiskLimits`). A broker's limit is its own value, else the ``[risk]`` default;
an instrument's limit applies to every broker too, and where both say something the stricter holds. They are
resolved per (broker, symbol) on the first order and kept, so an order costs a few dictionary look-ups and
integer compares: prices are compared in ticks, values as ticks times quantity.

Open orders are counted from the execution reports the gateway receives (every gateway receives every shard's
reports): ``accepted`` +1, and -1 when the order finishes (``cancelled``, ``expired``, a ``fill`` or a
``replaced`` that leaves nothing open). The count starts at zero when the gateway starts, and orders sent but not
yet accepted are not in it: the limit holds per gateway, to within the orders in flight.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from fabric.instruments import Instrument
from fabric.protocol import New, Replace

__all__ = ["NO_LIMIT", "RISK_REASONS", "RiskChecks", "RiskLimits", "TokenBucket", "open_delta"]

NO_LIMIT: Final = 1 << 62  # an integer limit no order reaches: "no limit" costs the same compare as a limit

# The reasons these checks give (docs/protocol.md, section 11, lists them with fabric.protocol.PROTOCOL_REASONS).
RISK_REASONS: Final = ("rate_limited", "order_qty_too_large", "order_value_too_large", "price_outside_risk_band",
                       "too_many_open_orders")

Refusal = tuple[str, str, str | None]  # (reason, text, the field at fault if one is)


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """The gateway's risk limits (``fabric.risk``): each ``None`` is no limit.

    The ``[risk]`` table holds the defaults of every broker, a broker's ``risk`` sub-table its own, and an
    ``[[instruments]]`` entry the instrument's (``max_order_qty``, ``max_order_value``, ``risk_band_pct`` only).

    Parameters
    ----------
    max_order_qty
        The largest quantity of one order (``new``, or a ``replace``'s new quantity).
    max_order_value
        The largest price times quantity of one order; a market order is valued at the reference price.
    risk_band_pct
        Limit prices must lie within this many percent of the instrument's reference price.
    max_open_orders
        The most open orders a broker may have (counted by each gateway from the execution reports).
    max_orders_per_s
        The broker's rate of ``new`` and ``replace`` messages (a token bucket refilled at this rate).
    burst
        The bucket's size: how many may come at once (default ``max_orders_per_s``).
    """

    max_order_qty: int | None = None
    max_order_value: Decimal | None = None
    risk_band_pct: Decimal | None = None
    max_open_orders: int | None = None
    max_orders_per_s: int | None = None
    burst: int | None = None


class TokenBucket:
    """A token bucket: ``size`` tokens at most, refilled at ``rate`` per second; each message takes one.

    Parameters
    ----------
    rate
        Tokens added per second.
    size
        The most tokens it holds (a burst); it starts full.
    now
        The time it starts at, in seconds (the clock :meth:`take` is given).
    """

    __slots__ = ("last", "rate", "size", "tokens")

    def __init__(self, rate: float, size: float, now: float) -> None:
        self.rate = rate
        self.size = size
        self.tokens = size
        self.last = now

    def take(self, now: float) -> bool:
        """Take one token at time ``now`` (seconds, never going back); return ``False`` when there is none."""
        t = self.tokens + (now - self.last) * self.rate
        self.last = now
        if t > self.size:
            t = self.size
        if t < 1.0:
            self.tokens = t
            return False
        self.tokens = t - 1.0
        return True


@dataclass(slots=True)
class _Broker:
    # One broker's limits that are not per symbol, and its state.
    bucket: TokenBucket | None
    max_open: int


@dataclass(slots=True)
class _Resolved:
    # One (broker, symbol)'s limits, in the units of the checks, and its broker's state.
    broker: _Broker
    priced: bool  # a band or a value limit: the price is looked at
    inst: Instrument | None
    max_qty: int
    max_value: Decimal | None  # for the texts
    max_value_ticks: int  # the largest price in ticks times quantity
    band_lo: int
    band_hi: int
    band_pct: Decimal | None
    ref_ticks: int  # the reference price in ticks (0: none): a market order's value


def open_delta(kind: str, leaves_qty: int) -> int:
    """Return how an execution report changes its broker's count of open orders: +1, -1 or 0.

    ``kind`` is the report's type (``accepted``, ``fill``...); ``leaves_qty`` its ``leaves_qty`` (-1 when it
    has none).
    """
    if kind == "accepted":
        return 1
    if kind == "cancelled" or kind == "expired" or ((kind == "fill" or kind == "replaced") and leaves_qty == 0):
        return -1
    return 0


def _lower(*values: int | Decimal | None) -> int | Decimal | None:
    # The stricter of the limits that are set.
    set_ = [v for v in values if v is not None]
    return min(set_) if set_ else None


def _outside_band(r: _Resolved, inst: Instrument, field: str, value: object) -> Refusal:
    # The refusal of a price (`field`: price or stop_price) outside the risk band.
    return ("price_outside_risk_band", f"{field} {value} is outside the risk band {inst.to_price(r.band_lo)}-"
            f"{inst.to_price(r.band_hi)} ({r.band_pct}% around the reference price {inst.ref_price})", field)


class RiskChecks:
    """The risk limits of a topology and the state they need (token buckets, open orders).

    Parameters
    ----------
    default
        Every broker's limits (the topology's ``[risk]``).
    brokers
        The brokers' own limits, by broker id (a key each leaves out is the default's).
    instruments
        The instruments, by symbol: ticks and reference prices.
    instrument_limits
        The instruments' limits, by symbol.
    clock
        Seconds, for the token buckets (``time.monotonic``; tests give their own).
    """

    def __init__(self, default: RiskLimits, brokers: Mapping[str, RiskLimits], instruments: Mapping[str, Instrument],
                 instrument_limits: Mapping[str, RiskLimits], clock: Callable[[], float] = time.monotonic) -> None:
        self.default = default
        self.brokers = dict(brokers)
        self.instruments = dict(instruments)
        self.instrument_limits = dict(instrument_limits)
        self.clock = clock
        limits = [self.default, *self.brokers.values(), *self.instrument_limits.values()]
        self.active = any(lim != RiskLimits() for lim in limits)  # no limit anywhere: check() is one compare
        self.counts_open = any(lim.max_open_orders is not None for lim in limits)  # on_report is needed
        self._resolved: dict[str, dict[str, _Resolved]] = {}  # broker -> symbol -> its limits
        self._broker: dict[str, _Broker] = {}
        self.open: dict[str, int] = {}  # broker -> open orders, from the execution reports

    # ---------------------------------------------------------------- limits

    def limits_of(self, broker: str) -> RiskLimits:
        """Return ``broker``'s own limits, each key it leaves out the ``[risk]`` default."""
        own = self.brokers.get(broker)
        if own is None:
            return self.default
        d = self.default

        def pick(name: str) -> object:
            v = getattr(own, name)
            return getattr(d, name) if v is None else v

        return RiskLimits(**{name: pick(name) for name in RiskLimits.__slots__})  # type: ignore[arg-type]

    def _resolve(self, broker: str, symbol: str) -> _Resolved:
        b = self.limits_of(broker)
        i = self.instrument_limits.get(symbol, RiskLimits())
        inst = self.instruments.get(symbol)
        max_qty = _lower(b.max_order_qty, i.max_order_qty)
        max_value = _lower(b.max_order_value, i.max_order_value)
        band = _lower(b.risk_band_pct, i.risk_band_pct)
        lo, hi, ref_ticks, value_ticks = 0, NO_LIMIT, 0, NO_LIMIT
        if inst is not None:
            if max_value is not None:
                value_ticks = math.floor(Decimal(max_value) / inst.tick)  # price*qty <= max iff ticks*qty <= this
            if inst.ref_price is not None:
                ref_ticks = math.floor(inst.ref_price / inst.tick)
                if band is not None:
                    pct = Decimal(band) / 100
                    lo = math.ceil(inst.ref_price * (1 - pct) / inst.tick)  # inwards to whole ticks, as the band
                    hi = math.floor(inst.ref_price * (1 + pct) / inst.tick)
        state = self._broker.get(broker) or self._broker_state(broker)
        priced = inst is not None and (value_ticks != NO_LIMIT or hi != NO_LIMIT)
        return _Resolved(state, priced, inst, NO_LIMIT if max_qty is None else int(max_qty),
                         None if max_value is None else Decimal(max_value), value_ticks, lo, hi,
                         None if band is None or ref_ticks == 0 else Decimal(band), ref_ticks)

    def _broker_state(self, broker: str) -> _Broker:
        lim = self.limits_of(broker)
        bucket = None
        if lim.max_orders_per_s is not None:
            bucket = TokenBucket(lim.max_orders_per_s, lim.burst or lim.max_orders_per_s, self.clock())
        b = self._broker[broker] = _Broker(bucket, NO_LIMIT if lim.max_open_orders is None else lim.max_open_orders)
        return b

    def set_reference(self, symbol: str, ref_price: Decimal) -> bool:
        """Make ``ref_price`` the reference price of ``symbol`` (the matcher's); return whether it changed.

        The risk band and a market order's value are measured from it from the next order on: every broker's
        limits for the symbol are resolved again (its token bucket and open orders are the broker's, and stay).

        Raises
        ------
        KeyError
            The symbol is not one of the instruments.
        fabric.instruments.InstrumentError
            The instrument cannot take that price (not positive, or past the largest price); its reference
            stays as it was.
        """
        inst = self.instruments[symbol]
        if inst.ref_price == ref_price:
            return False
        self.instruments[symbol] = dataclasses.replace(inst, ref_price=ref_price)
        for per in self._resolved.values():
            per.pop(symbol, None)
        return True

    # ---------------------------------------------------------------- checks

    def check(self, broker: str, msg: New | Replace) -> Refusal | None:
        """Return why ``broker``'s ``new`` or ``replace`` is refused, ``(reason, text, field)``, or ``None``.

        A message that passes has taken a token of the broker's bucket; a refused one has not.
        """
        if not self.active:
            return None
        per = self._resolved.get(broker)
        r = None if per is None else per.get(msg.symbol)
        if r is None:
            r = self._resolved.setdefault(broker, {})[msg.symbol] = self._resolve(broker, msg.symbol)
        b = r.broker
        if b.bucket is not None and not b.bucket.take(self.clock()):
            op = "new" if type(msg) is New else "replace"
            return ("rate_limited", f"broker {broker} sent more than {b.bucket.rate:g} orders per second (a burst "
                    f"of {b.bucket.size:g} at most): this {op} is refused; cancels are never limited", None)
        qty = msg.qty
        if qty is not None and qty > r.max_qty:
            return ("order_qty_too_large", f"qty {qty} exceeds the maximum order quantity {r.max_qty} of broker "
                    f"{broker} in {msg.symbol}", "qty")
        if r.priced:
            price = msg.price
            inst = r.inst
            assert inst is not None
            stop = msg.stop_price  # a stop order's trigger (unset and None are false): in the band as a price is
            stop_ticks = (inst.ticks_of(stop) or 0) if stop else 0
            if stop_ticks and not r.band_lo <= stop_ticks <= r.band_hi:
                return _outside_band(r, inst, "stop_price", stop)
            if price is not None:
                ticks = inst.ticks_of(price) or 0  # off the tick: the matcher refuses it with its own reason
                if ticks and not r.band_lo <= ticks <= r.band_hi:
                    return _outside_band(r, inst, "price", price)
            elif stop_ticks and type(msg) is New:
                ticks = stop_ticks  # a stop-loss market order, valued at its trigger
            else:
                ticks = r.ref_ticks if type(msg) is New else 0  # a market order, valued at the reference price
            if qty is not None and ticks and ticks * qty > r.max_value_ticks:
                value = inst.tick * ticks * qty
                at = (f"{price} x {qty}" if price is not None else f"{qty} at the stop price {stop}" if stop_ticks
                      else f"{qty} at the reference price {inst.ref_price}")
                return ("order_value_too_large", f"order value {value} ({at}) exceeds the maximum order value "
                        f"{r.max_value} of broker {broker}", "qty")
        if b.max_open != NO_LIMIT and type(msg) is New and self.open.get(broker, 0) >= b.max_open:
            return ("too_many_open_orders", f"broker {broker} has {self.open.get(broker, 0)} open orders, the most it "
                    f"may have (max_open_orders {b.max_open})", None)
        return None

    def on_report(self, broker: str, kind: str, leaves_qty: int) -> None:
        """Count one execution report of ``broker`` toward its open orders (see :func:`open_delta`)."""
        d = open_delta(kind, leaves_qty)
        if d:
            self.open[broker] = self.open.get(broker, 0) + d
