"""Instruments: the trading rules of one symbol, and decimal prices at the edge.

A price crosses into the engine exactly once, as a whole number of ticks, and
leaves it as a decimal string with the tick's number of decimals.  Floats never
carry a price.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from fabric.constants import MAX_PRICE_TICKS, MAX_QTY

DEFAULT_TICK = Decimal("0.01")
# The topology's market protection when an instrument names none (an Instrument made in code has none).
DEFAULT_MARKET_PROTECTION_PCT = Decimal("5")
_CACHED = 100_000  # price texts remembered per instrument and direction; past it the memory starts afresh


class InstrumentError(ValueError):
    """An instrument definition that cannot be traded."""


@dataclass(frozen=True, slots=True)
class Instrument:
    """The rules of one symbol.

    Parameters
    ----------
    symbol
        The exchange's code for the security, e.g. ``"TCS"``.
    tick
        The smallest price increment.
    lot
        Quantities must be positive multiples of this.
    ref_price
        The reference price (the previous close); the band is around it.
    band_pct
        The price band (the BSE's circuit filter) in percent of the reference
        price; ``None`` for no band.
    market_protection_pct
        Market protection: a market order matches no further than the last
        traded price (before the first trade, ``ref_price``) plus or minus this
        percentage, in steps of 0.01 %; ``None`` (or 0) for none.
        ``docs/book-semantics.md``, "Market protection".
    """

    symbol: str
    tick: Decimal = DEFAULT_TICK
    lot: int = 1
    ref_price: Decimal | None = None
    band_pct: Decimal | None = None
    market_protection_pct: Decimal | None = None
    band_lo: int | None = field(init=False, default=None)
    band_hi: int | None = field(init=False, default=None)
    _places: int = field(init=False, default=2, repr=False)
    _scale: int = field(init=False, default=100, repr=False)
    _tick_units: int = field(init=False, default=1, repr=False)
    # Prices as text <-> ticks, remembered: an order book sees the same few hundred prices all day.
    _ticks_of: dict[str, int | None] = field(init=False, default_factory=dict, repr=False, compare=False)
    _text_of: dict[int, str] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.symbol or not isinstance(self.symbol, str):
            raise InstrumentError("symbol must be a non-empty string")
        if not isinstance(self.tick, Decimal) or not self.tick.is_finite() or self.tick <= 0:
            raise InstrumentError(f"{self.symbol}: tick must be a positive decimal, got {self.tick!r}")
        if isinstance(self.lot, bool) or not isinstance(self.lot, int) or not 0 < self.lot <= MAX_QTY:
            raise InstrumentError(f"{self.symbol}: lot must be a positive integer up to {MAX_QTY}, got {self.lot!r}")
        # Prices print with the tick's decimals as written, and at least two
        # (rupees and paise): tick 0.05 -> 3500.05, tick 0.10 -> 1420.60.
        places = max(2, -self.tick.as_tuple().exponent)  # type: ignore[operator]
        object.__setattr__(self, "_places", places)
        # A price in ticks prints through integers: units of 10**-places.
        object.__setattr__(self, "_scale", 10**places)
        object.__setattr__(self, "_tick_units", int(self.tick * 10**places))
        mp = self.market_protection_pct
        if mp is not None and (not isinstance(mp, Decimal) or not mp.is_finite() or not 0 <= mp < 100
                               or mp * 100 != int(mp * 100)):
            raise InstrumentError(f"{self.symbol}: market_protection_pct must be from 0 to below 100 in steps of "
                                  f"0.01, got {mp}")
        # The reference price, with or without a band: market protection starts from it (ref_ticks).
        ref = self.ref_price
        if ref is not None and (not isinstance(ref, Decimal) or not ref.is_finite() or ref <= 0
                                or ref / self.tick > MAX_PRICE_TICKS):
            raise InstrumentError(f"{self.symbol}: ref_price must be positive and at most {MAX_PRICE_TICKS} ticks, "
                                  f"got {ref}")
        if self.band_pct is None:
            return
        if self.ref_price is None:
            raise InstrumentError(f"{self.symbol}: a price band needs a reference price")
        if not self.band_pct.is_finite() or not 0 < self.band_pct < 100:
            raise InstrumentError(f"{self.symbol}: band_pct must be above 0 and below 100, got {self.band_pct}")
        # Round the band inwards to whole ticks: a limit price must lie inside it.
        lo = self.ref_price * (1 - self.band_pct / 100) / self.tick
        hi = self.ref_price * (1 + self.band_pct / 100) / self.tick
        band_lo, band_hi = max(1, math.ceil(lo)), math.floor(hi)
        if band_hi > MAX_PRICE_TICKS:
            raise InstrumentError(f"{self.symbol}: price band reaches beyond {MAX_PRICE_TICKS} ticks")
        if band_lo > band_hi:
            raise InstrumentError(f"{self.symbol}: price band {lo}..{hi} holds no whole tick")
        object.__setattr__(self, "band_lo", band_lo)
        object.__setattr__(self, "band_hi", band_hi)

    @property
    def banded(self) -> bool:
        """Whether limit prices must lie inside a band."""
        return self.band_lo is not None

    @property
    def protect_bp(self) -> int:
        """Market protection in basis points (0: none), as the books take it."""
        return 0 if self.market_protection_pct is None else int(self.market_protection_pct * 100)

    @property
    def ref_ticks(self) -> int:
        """The reference price in whole ticks (rounded down; 0 without one), where market protection starts."""
        return 0 if self.ref_price is None else int(self.ref_price / self.tick)

    def to_ticks(self, price: Decimal) -> int | None:
        """Return ``price`` in whole ticks, or ``None`` when it is not a multiple of the tick."""
        q = price / self.tick
        if q != q.to_integral_value():
            return None
        return int(q)

    def to_price(self, ticks: int) -> str:
        """Return a price in ticks as a decimal string with the tick's decimals."""
        text = self._text_of.get(ticks)
        if text is None:
            units = ticks * self._tick_units
            scale = self._scale
            text = f"{units // scale}.{units % scale:0{self._places}d}"
            if len(self._text_of) >= _CACHED:
                self._text_of.clear()
            self._text_of[ticks] = text
        return text

    def ticks_of(self, price: str) -> int | None:
        """Return a decimal price text in whole ticks, or ``None`` when it is not a multiple of the tick.

        The text must be a finite decimal number (the protocol's and the journal's prices are).
        """
        try:
            return self._ticks_of[price]
        except KeyError:
            pass
        ticks = self.to_ticks(Decimal(price))
        if len(self._ticks_of) >= _CACHED:
            self._ticks_of.clear()
        self._ticks_of[price] = ticks
        return ticks

    def band_text(self) -> str:
        """Return the band as ``"lo-hi"`` in prices, or ``"none"``."""
        if self.band_lo is None or self.band_hi is None:
            return "none"
        return f"{self.to_price(self.band_lo)}-{self.to_price(self.band_hi)}"


def parse_decimal(value: object) -> Decimal:
    """Return ``value`` (a decimal string, an int, or a Decimal) as a finite Decimal.

    Raises
    ------
    ValueError
        When the value is not a finite decimal number (floats are refused: a
        float cannot hold most prices exactly).
    """
    if isinstance(value, bool):
        raise ValueError(f"not a decimal number: {value!r}")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int | str):
        try:
            d = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"not a decimal number: {value!r}") from None
    else:
        raise ValueError(f"not a decimal number: {value!r}")
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return d
