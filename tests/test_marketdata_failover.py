"""The market data client with two tickers (A and B feeds): failover, and trade ids across tickers.

Two scripted tickers (``tests/test_marketdata.py``) publish the same trades, each numbering its topics its own
way (B batches what A sends one by one), as two ticker nodes following the same matchers do.  The client
follows A, fails over to B when A dies, falls silent or cannot be reached, and what it holds and what it
delivers has every trade once, in order (``docs/market-data.md``, section 9).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from fabric.marketdata import MarketDataClient, Update, quote_order
from tests.helpers import free_port
from tests.test_marketdata import T0, S, ScriptedTicker, bar, data

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.term()


def _ports(n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in out:
            out.append(p)
    return out


class Pair:
    """Tickers A and B of one market on free ports (B not started until asked), and a client of both."""

    def __init__(self, ctx: zmq.Context[Any], symbols: tuple[str, ...] = ("TCS",)) -> None:
        self.ctx = ctx
        self.symbols = symbols
        self.ports = _ports(4)
        self.a: ScriptedTicker | None = ScriptedTicker(ctx, self.ports[0], self.ports[1], symbols)
        self.b: ScriptedTicker | None = ScriptedTicker(ctx, self.ports[2], self.ports[3], symbols)
        self.silent: set[str] = set()  # tickers that send no heartbeat

    def client(self, **kw: Any) -> MarketDataClient:
        p = self.ports
        pubs = [f"tcp://127.0.0.1:{p[0]}", f"tcp://127.0.0.1:{p[2]}"]
        snaps = [f"tcp://127.0.0.1:{p[1]}", f"tcp://127.0.0.1:{p[3]}"]
        return MarketDataClient(pubs, snaps, list(self.symbols), ctx=self.ctx, **kw)

    def live(self) -> list[ScriptedTicker]:
        return [t for t in (self.a, self.b) if t is not None]

    def trades(self, sym: str, *prices: str, a: bool = True, b: bool = True) -> None:
        """The same trades on both feeds: one quote per trade on A, one quote for them all on B."""
        first = max(t.trade_id for t in self.live()) + 1
        ids = list(range(first, first + len(prices)))
        if a and self.a is not None:
            for i, px in zip(ids, prices, strict=True):
                self.a.quote(sym, px, trade_ids=[i])
        if b and self.b is not None:
            self.b.quote(sym, *prices, trade_ids=ids)
        for t in self.live():
            t.trade_id = ids[-1]

    def kill_a(self) -> None:
        assert self.a is not None
        self.a.close()
        self.a = None

    def pump(self, md: MarketDataClient, until: Callable[[], bool], timeout: float = 10.0) -> list[Update]:
        got: list[Update] = []
        deadline = time.monotonic() + timeout
        last_hb = 0.0
        while True:
            for name, t in (("a", self.a), ("b", self.b)):
                if t is None:
                    continue
                if time.monotonic() - last_hb > 0.05 and name not in self.silent:
                    t.heartbeat()
                t.serve()
            if time.monotonic() - last_hb > 0.05:
                last_hb = time.monotonic()
            got.extend(md.poll(0.02))
            if until():
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out: client {md!r}, {md.stats}")

    def close(self) -> None:
        for t in self.live():
            t.close()


@pytest.fixture
def pair(ctx: zmq.Context[Any]) -> Iterator[Pair]:
    p = Pair(ctx)
    yield p
    p.close()


def prints_once(updates: list[Update], seen: dict[str, list[int]]) -> dict[str, list[int]]:
    """Take the trades of ``updates`` as a consumer does: every print of a live quote, and of a snapshot's
    those above the last trade id it had (a snapshot's prints are the whole tape)."""
    for u in data(updates, "quote"):
        assert u.symbol is not None
        ids = seen.setdefault(u.symbol, [])
        last = ids[-1] if ids else 0
        ids.extend(p["trade_id"] for p in u.data["prints"] if not u.snapshot or p["trade_id"] > last)
    return seen


def test_a_dead_ticker_is_left_for_the_other_with_every_trade_once(pair: Pair) -> None:
    pair.trades("TCS", "100.05", "100.10")
    with pair.client() as md:
        seen = prints_once(pair.pump(md, lambda: md.ready), {})
        assert md.pub.endswith(str(pair.ports[0])), "the first ticker is followed"
        pair.trades("TCS", "100.15", "100.20", "100.25")
        seen = prints_once(pair.pump(md, lambda: md.quote("TCS")["trade_id"] == 5), seen)  # type: ignore[index]
        assert md.seq("TCS", "quote") == 5
        pair.kill_a()
        pair.trades("TCS", "100.30")  # while the client fails over: B has it, A never sent it
        got = pair.pump(md, lambda: md.stats.failovers == 1 and md.ready)
        assert md.pub.endswith(str(pair.ports[2])) and md.snapshot.endswith(str(pair.ports[3]))
        pair.trades("TCS", "100.35", "100.40")
        got += pair.pump(md, lambda: md.quote("TCS")["trade_id"] == 8)  # type: ignore[index]
        seen = prints_once(got, seen)
        assert seen["TCS"] == list(range(1, 9)), "every trade once, in order"
        assert [p["trade_id"] for p in md.tape("TCS")] == list(range(1, 9))
        q = md.quote("TCS")
        assert q is not None and q["trades"] == 8 and q["last"] == "100.40"
        assert md.seq("TCS", "quote") == 4, "B's numbers: it sent one quote per batch"
        assert md.stats.failovers == 1 and md.stats.missed_prints == 0 and md.stats.stale == 0
        assert md.stats.reconnects == 0 and md.state == "live"


def test_a_silent_ticker_is_left_after_the_silence(pair: Pair) -> None:
    pair.trades("TCS", "100.05")
    with pair.client(silence=0.5) as md:
        pair.pump(md, lambda: md.ready)
        pair.silent.add("a")  # A's process hangs: its connection stays, nothing comes
        t0 = time.monotonic()
        pair.pump(md, lambda: md.stats.failovers == 1)
        assert 0.4 < time.monotonic() - t0 < 2.0
        pair.trades("TCS", "100.10", a=False)
        pair.pump(md, lambda: md.ready and md.quote("TCS")["trade_id"] == 2)  # type: ignore[index]
        assert [p["trade_id"] for p in md.tape("TCS")] == [1, 2]


def test_an_unreachable_first_ticker_is_skipped(ctx: zmq.Context[Any]) -> None:
    pair = Pair(ctx)
    try:
        pair.kill_a()  # never there
        pair.trades("TCS", "100.05")
        with pair.client() as md:
            t0 = time.monotonic()
            pair.pump(md, lambda: md.ready)
            assert md.stats.failovers == 1 and time.monotonic() - t0 < 5.0
            assert md.quote("TCS")["trade_id"] == 1  # type: ignore[index]
    finally:
        pair.close()


def test_both_down_the_client_waits_then_takes_whichever_comes_back(ctx: zmq.Context[Any]) -> None:
    pair = Pair(ctx)
    try:
        pair.trades("TCS", "100.05", "100.10")
        with pair.client() as md:
            pair.pump(md, lambda: md.ready)
            b = pair.b
            assert b is not None
            b.close()
            pair.b = None
            pair.kill_a()
            pair.pump(md, lambda: md.stats.failovers >= 3, timeout=15)  # round and round, holding its state
            assert md.state == "reconnecting" and md.quote("TCS")["trade_id"] == 2  # type: ignore[index]
            # B comes back (a restarted ticker: it numbers from 1 and rebuilt the day, one more trade in it)
            pair.b = ScriptedTicker(ctx, pair.ports[2], pair.ports[3], ("TCS",))
            pair.b.quote("TCS", "100.05", "100.10", "100.15", trade_ids=[1, 2, 3])
            pair.pump(md, lambda: md.ready and md.quote("TCS")["trade_id"] == 3, timeout=15)  # type: ignore[index]
            assert [p["trade_id"] for p in md.tape("TCS")] == [1, 2, 3]
    finally:
        pair.close()


def test_a_ticker_behind_does_not_take_the_state_back(pair: Pair) -> None:
    b = pair.b
    assert b is not None
    pair.trades("TCS", "100.05", "100.10", "100.15")
    pair.trades("TCS", "100.20", "100.25", b=False)  # B is behind: it has not had trades 4 and 5 yet
    a = pair.a
    assert a is not None
    a.bars("TCS", {"1m": [bar(0, "100.25", 5)]})
    b.bars("TCS", {"1m": [bar(0, "100.15", 3)]})
    with pair.client() as md:
        seen = prints_once(pair.pump(md, lambda: md.ready and md.quote("TCS")["trade_id"] == 5), {})  # type: ignore[index]
        pair.kill_a()
        got = pair.pump(md, lambda: md.stats.failovers == 1 and md.ready)
        q = md.quote("TCS")
        assert q is not None and q["trade_id"] == 5 and q["last"] == "100.25", "the state does not go back"
        assert md.stats.stale == 1 and md.bars("TCS", "1m") == [bar(0, "100.25", 5)]
        # B catches up: its next quote has 4, 5 (had) and 6 (new); its bar has the six trades
        b.quote("TCS", "100.20", "100.25", "100.30", trade_ids=[4, 5, 6])
        b.bars("TCS", {"1m": [bar(0, "100.30", 6)]})
        got += pair.pump(md, lambda: md.seq("TCS", "bars") == 2)
        seen = prints_once(got, seen)
        assert seen["TCS"] == [1, 2, 3, 4, 5, 6]
        live = [u for u in data(got, "quote") if not u.snapshot]
        assert [p["trade_id"] for p in live[-1].data["prints"]] == [6], "the prints already had are dropped"
        assert md.stats.duplicate_prints == 2 and md.stats.missed_prints == 0
        assert [p["trade_id"] for p in md.tape("TCS")] == [1, 2, 3, 4, 5, 6]
        assert md.quote("TCS")["trades"] == 6  # type: ignore[index]
        assert md.bars("TCS", "1m") == [bar(0, "100.30", 6)]


def test_more_trades_than_a_tape_between_the_feeds_are_counted_as_missed_prints(pair: Pair) -> None:
    pair.trades("TCS", "100.05")
    with pair.client() as md:
        pair.pump(md, lambda: md.ready)
        pair.kill_a()
        pair.trades("TCS", *["100.10"] * 60)  # B's snapshot carries the last 50 of them
        pair.pump(md, lambda: md.stats.failovers == 1 and md.ready)
        assert md.quote("TCS")["trades"] == 61  # type: ignore[index]
        assert md.stats.missed_prints == 10
        assert [p["trade_id"] for p in md.tape("TCS")] == list(range(12, 62))


def test_quote_order_across_tickers() -> None:
    held = {"trade_id": 5, "trades": 5, "last_ts": T0 + 5 * S}
    assert quote_order(None, held) == "newer"
    assert quote_order(held, {"trade_id": 5, "trades": 5, "last_ts": T0 + 5 * S}) == "newer"  # bid or ask moved
    assert quote_order(held, {"trade_id": 7, "trades": 7, "last_ts": T0 + 7 * S}) == "newer"
    assert quote_order(held, {"trade_id": 4, "trades": 4, "last_ts": T0 + 4 * S}) == "stale"
    assert quote_order(held, {"trade_id": 0, "trades": 0, "last_ts": 0}) == "reset"
    assert quote_order(held, {"trade_id": 2, "trades": 2, "last_ts": T0 + 9 * S}) == "reset", "a new journal"
    assert quote_order(held, {"trade_id": None}) == "newer"


def test_constructor_needs_a_snapshot_address_per_feed() -> None:
    with pytest.raises(ValueError, match="one snapshot address per feed"):
        MarketDataClient(["tcp://127.0.0.1:1", "tcp://127.0.0.1:3"], ["tcp://127.0.0.1:2"])
    with pytest.raises(ValueError, match="silence"):
        MarketDataClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", silence=0)


def test_market_data_client_of_a_topology_has_every_ticker(tmp_path: Path) -> None:
    from tests.test_ticker_failover import two_tickers
    from topology.clients import market_data_client
    from topology.load import load

    topo = load(two_tickers(tmp_path))
    with market_data_client(topo, ["TCS"]) as md:
        assert md.feeds == tuple((t.pub.connect, t.snapshot.connect) for t in topo.tickers) and len(md.feeds) == 2
        assert md.pub == topo.tickers[0].pub.connect
