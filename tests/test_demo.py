"""The demo: its simulated brokers follow the trading day (what they send in each phase, tools/demo.py), and its
compressed day (tools/up.py, ``exfab up --demo``) runs through every phase."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from fabric.protocol import Cancel, New
from tools.demo import Demo

ROOT = Path(__file__).resolve().parents[1]
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


def _phases(trading_minutes: float | None, tmp_path: Path) -> list[tuple[float, str, bool]]:
    from fabric.calendar import session_at
    from tools.up import DEMO_START_S, with_demo_day
    from topology.load import load

    now = dt.datetime(2026, 12, 7, 6, 0, 0, tzinfo=dt.UTC)
    topo = load(str(with_demo_day(LOCAL, tmp_path, now, trading_minutes)))
    cal = topo.calendar
    assert cal is not None
    start = (now + dt.timedelta(seconds=DEMO_START_S)).timestamp()
    out = []
    for s in (0.5, 1.5, 9.5, 16, 74, 76, 86, 96, 1390, 1411, 1421, 1431, 1441.5):
        sess = session_at(cal, int((start + s) * 1e9), cal.seed)
        out.append((s, sess.phase, sess.entry))
    return out


def test_the_demo_day_trades_23_minutes_and_a_quarter_then_closes(tmp_path: Path) -> None:
    got = {s: (phase, entry) for s, phase, entry in _phases(None, tmp_path)}
    assert got[0.5] == ("closed", False) and got[1.5] == ("pre_open", True) and got[9.5] == ("auction", False)
    assert all(got[s] == ("continuous", True) for s in (16, 74, 76, 86, 96, 1390))
    assert got[1411] == ("closing", False) and got[1421] == ("closing", True) and got[1431] == ("closed", False)
    assert got[1441.5] == ("pre_open", True), "the next day's pre-open, 24 minutes after this one's"


def test_the_demo_day_with_one_minute_of_trading_shows_every_phase_in_two(tmp_path: Path) -> None:
    got = {s: (phase, entry) for s, phase, entry in _phases(1, tmp_path)}
    assert got[1.5] == ("pre_open", True) and got[9.5] == ("auction", False) and got[16] == ("continuous", True)
    assert got[74] == ("continuous", True) and got[76] == ("closing", False), "continuous trading ends at 75 s"
    assert got[86] == ("closing", True), "the closing session: orders at the closing price"
    assert got[96] == ("closed", False) and got[1390] == ("closed", False)
    assert got[1441.5] == ("pre_open", True)


def test_trading_minutes_is_checked_before_anything_starts(tmp_path: Path) -> None:
    from tools.up import with_demo_day

    with pytest.raises(ValueError, match=re.escape("0.5 to 23.25 minutes, not 30")):
        with_demo_day(LOCAL, tmp_path, dt.datetime.now(dt.UTC), 30)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args, why in ((["--trading-minutes", "2"], "add --demo"),
                      (["--demo", "--trading-minutes", "0.1"], "0.5 to 23.25 minutes, not 0.1")):
        r = subprocess.run([sys.executable, "-m", "tools.cli", "up", str(ROOT / LOCAL), *args], capture_output=True,
                           text=True, env=env, timeout=60, cwd=tmp_path)
        assert r.returncode == 2 and why in r.stdout, r.stdout + r.stderr
