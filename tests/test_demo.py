"""The demo's simulated brokers follow the trading day: what they send in each phase (tools/demo.py)."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from fabric.protocol import Cancel, New
from tools.demo import Demo

LOCAL = "topology/examples/local.toml"


def _commands(demo: Demo, phase: str, entry: bool, close: str | None = "1000.00", n: int = 400) -> list[New | Cancel]:
    b = demo.brokers[0]
    out = []
    for _ in range(n):
        cmd = demo.command(b, phase, entry, lambda _symbol: close)
        if cmd is not None:
            out.append(cmd)
            if isinstance(cmd, New) and cmd.tif in ("DAY", "GTC"):
                b.resting[cmd.oid] = cmd.symbol  # as if accepted: later cancels have something to cancel
    return out


def test_in_continuous_trading_the_demo_sends_every_kind_of_order() -> None:
    demo = Demo(LOCAL, brokers=1)
    try:
        cmds = _commands(demo, "continuous", True)
        kinds = Counter((type(c).__name__, getattr(c, "type", None), getattr(c, "tif", None)) for c in cmds)
        assert len(cmds) == 400
        assert kinds[("New", "market", "IOC")] > 0 and kinds[("New", "limit", "IOC")] > 0
        assert kinds[("New", "limit", "GTC")] > 0 and kinds[("Cancel", None, None)] > 0
        stops = [c for c in cmds if isinstance(c, New) and c.stop_price]
        assert {c.type for c in stops} == {"market", "limit"}, "SL-M and SL orders"
        for c in stops:  # a buy stop triggers above the price, a sell stop below; an SL's limit beyond its trigger
            assert c.tif == "DAY" and (c.type == "market" or (Decimal(c.price) >= Decimal(c.stop_price))
                                       == (c.side == "buy"))
    finally:
        demo.md.close()  # type: ignore[union-attr]


def test_in_the_pre_open_only_orders_that_can_wait_for_the_call() -> None:
    demo = Demo(LOCAL, brokers=1)
    try:
        news = [c for c in _commands(demo, "pre_open", True) if isinstance(c, New)]
        assert news and all(c.tif in ("DAY", "GTC") for c in news), "IOC and FOK are refused in the pre-open"
        assert not [c for c in news if c.stop_price], "stop orders are refused in the pre-open"
        assert any(c.type == "market" for c in news) and any(c.type == "limit" for c in news)
    finally:
        demo.md.close()  # type: ignore[union-attr]


def test_in_the_closing_session_orders_at_the_closing_price_and_none_without_one() -> None:
    demo = Demo(LOCAL, brokers=1)
    try:
        news = [c for c in _commands(demo, "closing", True, close="1001.50") if isinstance(c, New)]
        assert news and all(c.tif == "DAY" and not c.stop_price for c in news)
        assert {c.price for c in news if c.type == "limit"} == {"1001.50"}
        assert any(c.type == "market" for c in news)
        assert [c for c in _commands(demo, "closing", True, close=None) if isinstance(c, New)] == []
    finally:
        demo.md.close()  # type: ignore[union-attr]


def test_when_the_market_takes_no_orders_the_demo_sends_nothing() -> None:
    demo = Demo(LOCAL, brokers=1)
    try:
        for phase in ("auction", "closing", "closed"):
            assert _commands(demo, phase, False) == [], phase
    finally:
        demo.md.close()  # type: ignore[union-attr]
