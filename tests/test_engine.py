"""The engine's memory of orders: status queries and recognising a resent `new`."""

from __future__ import annotations

from decimal import Decimal

from fabric.constants import BUY, GTC, IOC, LIMIT, MARKET, SELL
from fabric.engine import MatchingEngine
from fabric.instruments import Instrument


def _engine() -> MatchingEngine:
    eng = MatchingEngine()
    eng.add_instrument(Instrument("TCS", tick=Decimal("0.05"), ref_price=Decimal("3500"), band_pct=Decimal("10")))
    return eng


def test_status_follows_order_through_fills_replace_and_cancel() -> None:
    eng = _engine()
    eng.new_order("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.00"), 10)
    assert eng.order_status("TCS", "B1", "o1")["state"] == "new"  # type: ignore[index]
    eng.new_order("TCS", "B2", "s1", SELL, MARKET, IOC, None, 4)
    st = eng.order_status("TCS", "B1", "o1")
    assert st is not None and (st["state"], st["cum_qty"], st["leaves_qty"]) == ("partially_filled", 4, 6)
    eng.replace("TCS", "B1", "o1", Decimal("3499.95"), 8)
    st = eng.order_status("TCS", "B1", "o1")
    assert st is not None and (st["price"], st["qty"], st["leaves_qty"]) == ("3499.95", 8, 4)
    eng.cancel("TCS", "B1", "o1")
    st = eng.order_status("TCS", "B1", "o1")
    assert st is not None and (st["state"], st["leaves_qty"], st["cum_qty"]) == ("cancelled", 0, 4)
    assert eng.order_status("TCS", "B1", "s1") is None  # another broker's order
    assert eng.order_status("TCS", "B2", "s1")["state"] == "filled"  # type: ignore[index]


def test_is_retry_same_terms_true_different_terms_false() -> None:
    eng = _engine()
    eng.new_order("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.00"), 10)
    assert eng.is_retry("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.00"), 10)
    assert eng.is_retry("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.0"), 10)  # same price, other spelling
    assert not eng.is_retry("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.05"), 10)
    assert not eng.is_retry("TCS", "B1", "o1", SELL, LIMIT, GTC, Decimal("3500.00"), 10)
    assert not eng.is_retry("TCS", "B2", "o1", BUY, LIMIT, GTC, Decimal("3500.00"), 10)
    # A replace does not change what a resend of the original `new` looks like.
    eng.replace("TCS", "B1", "o1", Decimal("3499.00"), 5)
    assert eng.is_retry("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.00"), 10)


def test_rejected_order_frees_its_client_order_id() -> None:
    eng = _engine()
    assert eng.new_order("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("9000.00"), 10)[0]["event"] == "rejected"
    assert eng.order_status("TCS", "B1", "o1") is None
    assert eng.new_order("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.00"), 10)[0]["event"] == "accepted"
