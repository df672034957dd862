"""Instruments: decimal prices at the edge, ticks inside, the band rounded inwards."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fabric.instruments import Instrument, InstrumentError, parse_decimal


def test_band_rounded_inwards_to_whole_ticks() -> None:
    inst = Instrument("TCS", tick=Decimal("0.05"), ref_price=Decimal("3500.03"), band_pct=Decimal("10"))
    # 3150.027 .. 3850.033 -> the first and last whole ticks inside
    assert inst.band_text() == "3150.05-3850.00"


def test_prices_print_with_at_least_two_decimals() -> None:
    assert Instrument("A", tick=Decimal("0.10")).to_price(14206) == "1420.60"
    assert Instrument("B", tick=Decimal("0.05")).to_price(70001) == "3500.05"
    assert Instrument("C", tick=Decimal("1")).to_price(250) == "250.00"
    assert Instrument("D", tick=Decimal("0.0025")).to_price(3) == "0.0075"


def test_to_ticks_refuses_price_off_the_tick() -> None:
    inst = Instrument("TCS", tick=Decimal("0.05"))
    assert inst.to_ticks(Decimal("3500.05")) == 70001
    assert inst.to_ticks(Decimal("3500.03")) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tick": Decimal("0")}, "tick must be a positive decimal"),
        ({"lot": 0}, "lot must be a positive integer"),
        ({"band_pct": Decimal("10")}, "needs a reference price"),
        ({"band_pct": Decimal("150"), "ref_price": Decimal("100")}, "band_pct must be above 0 and below 100"),
        ({"band_pct": Decimal("0.001"), "ref_price": Decimal("1.02"), "tick": Decimal("0.05")}, "holds no whole tick"),
    ],
)
def test_bad_instrument_explains_itself(kwargs: dict, message: str) -> None:
    with pytest.raises(InstrumentError, match=message):
        Instrument("X", **kwargs)


@pytest.mark.parametrize("bad", [1.5, True, "abc", "NaN", "Infinity", None])
def test_parse_decimal_refuses_floats_and_non_numbers(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_decimal(bad)
