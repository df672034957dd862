"""Two tickers (A and B feeds) over real processes: one killed under load, and every client carries on.

The local topology with a second ticker (``[[tickers]]``) runs as processes on free ports: the matchers,
both tickers and the gateways.  The demo's brokers trade through it; a
:class:`~fabric.marketdata.MarketDataClient` of both tickers (what ``exfab watch`` runs), a WebSocket client
written as ``docs/market-data.md`` section 9 says, and the live page in headless Chromium all follow the
first ticker.  It is killed with ``kill -9`` mid-flow; each client fails over to the second, and at the end
what each holds equals the matchers' journals (``exfab journal inspect``): per symbol the count of trades,
the volume, the last price and trade id, the tape; the feed's and the WebSocket's clients got every trade's
print once, in order; an ``exfab watch`` started then reaches the second ticker.  The price history, written
by the first ticker and then by the second, which took over, holds every trade once; the first ticker,
restarted, writes it again and the second stops.  Run again with the first ticker hung (``SIGSTOP``: its
connections stay open and silent) instead of killed, then resumed.

Without Chromium or Playwright the page is left out (it is required when ``CI`` is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from fabric.marketdata import MarketDataClient, Update, quote_order
from fabric.marketstate import TAPE_LEN
from tests.helpers import LOCAL, journal_events, topology_on_free_ports
from tests.test_marketdata import exfab
from tools.demo import Demo
from topology.clients import market_data_client
from topology.launcher import Launcher
from topology.model import GATEWAY, MATCHER, TICKER

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
SECOND = """[[tickers]]
host = "127.0.0.1"
pub_port = 7180
snapshot_port = 7182
http_port = 7181

[[tickers]]
host = "127.0.0.1"
pub_port = 7190
snapshot_port = 7192
http_port = 7191
"""


def two_tickers(tmp_path: Path) -> Path:
    """The local topology with a second ticker, on free ports."""
    text = LOCAL.read_text()
    one = '[ticker]\nhost = "127.0.0.1"\npub_port = 7180\nsnapshot_port = 7182\nhttp_port = 7181\n'
    assert one in text
    src = tmp_path / "src"
    src.mkdir()
    (src / "local.toml").write_text(text.replace(one, SECOND))
    return topology_on_free_ports(src / "local.toml", tmp_path, curve=False)  # (ticker-b has no key)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _wait(cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def _browser() -> str | None:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None and os.environ.get("CI"):
        pytest.fail("Chromium and Playwright are needed for the live page's part (CI must provide them)")
    return path


# ------------------------------------------------------------------------------------------- what the journals say


class Truth:
    """Per symbol, the trades of the matchers' journals, in trade id order."""

    def __init__(self, ex: Launcher) -> None:
        events = [e for s in ex.topo.shards for e in journal_events(ex, s.name)]
        self.trades: dict[str, list[dict[str, Any]]] = {sym: [] for sym in ex.topo.symbols}
        for e in events:
            if e["event"] == "trade":
                self.trades[e["symbol"]].append(e)
        for lst in self.trades.values():
            lst.sort(key=lambda e: e["trade_id"])
            assert [e["trade_id"] for e in lst] == list(range(1, len(lst) + 1))

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.trades.values())

    def agrees(self, sym: str, quote: dict[str, Any] | None, tape: list[dict[str, Any]]) -> bool:
        """Whether a client's quote and tape (oldest first) of ``sym`` are the journals'."""
        want = self.trades[sym]
        if not want:
            return quote is None or quote.get("trades", 0) == 0
        if quote is None:
            return False
        last = want[-1]
        return (quote["trades"] == len(want) and quote["trade_id"] == last["trade_id"]
                and quote["volume"] == sum(e["qty"] for e in want) and Decimal(quote["last"]) == Decimal(last["price"])
                and [(p["trade_id"], Decimal(p["price"]), p["qty"]) for p in tape]
                == [(e["trade_id"], Decimal(e["price"]), e["qty"]) for e in want[-TAPE_LEN:]])


# --------------------------------------------------------------------------------------------------------- clients


class FeedClient:
    """A :class:`MarketDataClient` of both tickers on a thread of its own, taking every trade as a consumer does."""

    def __init__(self, md: MarketDataClient) -> None:
        self.md = md
        self.delivered: dict[str, list[int]] = {}  # per symbol, the trade ids of the prints taken, in order
        self.back_at: float | None = None  # when it was live again after its first failover
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _take(self, updates: list[Update]) -> None:
        # A live quote's prints are new; of a snapshot's (the whole tape), those above the last trade id taken.
        for u in updates:
            if u.kind != "quote" or u.symbol is None:
                continue
            ids = self.delivered.setdefault(u.symbol, [])
            last = ids[-1] if ids else 0
            ids.extend(p["trade_id"] for p in u.data["prints"] if not u.snapshot or p["trade_id"] > last)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take(self.md.poll(0.1))
            if self.back_at is None and self.md.stats.failovers and self.md.ready:
                self.back_at = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


class WsClient:
    """A WebSocket client of the market as docs/market-data.md, section 9, says to write one.

    It follows the ticker it was given; on ``hello`` it learns every ticker of the market; when its connection
    closes or its ticker sends nothing for 3 heartbeats, it connects to the next one (without waiting long for
    a silent ticker's closing handshake: a snapshot's tape holds 50 trades of each symbol, so the sooner the
    better); ``seq`` orders one connection's messages; across tickers :func:`~fabric.marketdata.quote_order`
    and the prints' trade ids.
    """

    SILENCE_S = 3.0

    def __init__(self, url: str) -> None:
        self.url = url
        self.tickers: list[dict[str, str]] = []
        self.at = -1
        self.ticker: str | None = None
        self.quotes: dict[str, dict[str, Any]] = {}
        self.tapes: dict[str, list[dict[str, Any]]] = {}
        self.delivered: dict[str, list[int]] = {}
        self.qseq: dict[str, int] = {}
        self.failovers = 0
        self.snapshots = 0
        self.back_at: float | None = None  # when a snapshot came after its first failover
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        url = self.url
        while not self._stop.is_set():
            try:
                async with connect(url + "?batch=1", open_timeout=2, close_timeout=0.5, max_size=None) as ws:
                    self.qseq = {}
                    last = time.monotonic()
                    while not self._stop.is_set() and time.monotonic() - last < self.SILENCE_S:
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.3)
                        except TimeoutError:
                            continue
                        last = time.monotonic()
                        for obj in json.loads(raw):
                            if obj["t"] == "hello":
                                self.tickers, self.ticker = obj["tickers"], obj["ticker"]
                                self.at = [t["name"] for t in self.tickers].index(obj["ticker"])
                                await ws.send(json.dumps({"op": "subscribe", "symbols": "*"}))
                            with self.lock:
                                self._handle(obj)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                pass
            if self._stop.is_set():
                return
            if len(self.tickers) > 1:
                self.at = (self.at + 1) % len(self.tickers)
                url = self.tickers[self.at]["ws"]
                self.failovers += 1
            else:
                await asyncio.sleep(0.5)

    def _handle(self, obj: dict[str, Any]) -> None:
        if obj["t"] == "snapshot":
            self.snapshots += 1
            if self.failovers and self.back_at is None:
                self.back_at = time.monotonic()
            self._quote(obj["quote"], snapshot=True)
        elif obj["t"] == "quote":
            self._quote(obj, snapshot=False)

    def _quote(self, q: dict[str, Any], snapshot: bool) -> None:
        sym = q["symbol"]
        if not snapshot and q["seq"] <= self.qseq.get(sym, 0):
            return
        self.qseq[sym] = q["seq"]
        held = self.quotes.get(sym)
        order = quote_order(held, q)
        if order == "stale":
            return
        had = 0 if held is None or order == "reset" else held["trade_id"]
        new = [p for p in q["prints"] if p["trade_id"] > had]
        self.quotes[sym] = q
        self.tapes[sym] = (q["prints"] if snapshot else self.tapes.get(sym, []) + new)[-TAPE_LEN:]
        self.delivered.setdefault(sym, []).extend(p["trade_id"] for p in new)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


# ------------------------------------------------------------------------------------------------------------ test


def _page_state(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => ({
        connected: exfab.connected, ticker: exfab.ticker, failovers: exfab.failovers,
        quotes: Object.fromEntries(Object.entries(exfab.quotes).map(([s, q]) => [s, {
            trades: q.trades, trade_id: q.trade_id, volume: q.volume, last: q.last}])),
        tapes: Object.fromEntries(Object.entries(exfab.tapes).map(([s, t]) => [s, t.map(p => ({
            trade_id: p.trade_id, price: p.price, qty: p.qty})).reverse()])),
    })""")


def _history(ex: Launcher) -> tuple[list[tuple[Any, ...]], dict[str, tuple[int, int]]]:
    """The history store's ticks, and per symbol the 1m bars' total volume and trades."""
    path = ex.workdir / ex.topo.sqlite_path("history")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        ticks = db.execute("SELECT symbol, trade_id, price, qty FROM ticks ORDER BY symbol, trade_id").fetchall()
        bars = db.execute("SELECT symbol, sum(volume), sum(trades) FROM bars WHERE interval = '1m' "
                          "GROUP BY symbol").fetchall()
    return ticks, {s: (v, n) for s, v, n in bars}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["kill", "hang"])
def test_one_ticker_killed_under_load_clients_carry_on_from_the_other(how: str, tmp_path: Path) -> None:
    # kill: kill -9, its connections close; hang: SIGSTOP, its connections stay open and silent
    # (the clients leave it after 3 s without a heartbeat), then SIGCONT.
    ex = Launcher(two_tickers(tmp_path), workdir=tmp_path, kinds=(MATCHER, TICKER, GATEWAY))
    a, b = ex.topo.tickers
    assert (a.name, b.name) == ("ticker", "ticker-b") and ex.topo.ticker == a
    browser_path = _browser()
    pw = browser = None
    feed = ws = None
    ex.start()
    try:
        assert [n.name for n in ex.nodes if n.kind == TICKER] == ["ticker", "ticker-b"]
        feed = FeedClient(market_data_client(ex.topo))
        ws = WsClient(a.ws_url)
        page = None
        if browser_path is not None:
            from playwright.sync_api import sync_playwright

            pw = sync_playwright().start()
            browser = pw.chromium.launch(executable_path=browser_path, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(a.http_url)
            _wait(lambda: page.evaluate("() => window.exfab && exfab.connected && exfab.ticker === 'ticker'"),
                  "the page on the first ticker")
        _wait(lambda: feed.md.ready and ws.snapshots > 0, "the feed's and the WebSocket's clients on the first ticker")
        assert feed.md.pub == a.pub.connect and ws.ticker == "ticker"

        demo = Demo(str(ex.path), brokers=6, rate=200, seed=11)
        flow = threading.Thread(target=demo.run, args=(9.0,), daemon=True)
        flow.start()
        time.sleep(3.5)
        assert _get(f"{b.http_url}stats")["history"] == "standby", "the second ticker does not write history"
        first = ex.node(TICKER, "ticker")
        if how == "kill":
            ex.kill(TICKER, "ticker")  # under load
        else:
            first.proc.send_signal(signal.SIGSTOP)
        killed_at = time.monotonic()
        page_back: float | None = None
        while flow.is_alive() and page is not None and page_back is None:
            if page.evaluate("() => exfab.connected && exfab.ticker === 'ticker-b'"):
                page_back = time.monotonic() - killed_at
            time.sleep(0.05)
        flow.join(60)
        assert not flow.is_alive() and demo.sent > 1000
        if how == "hang":  # long enough for the second to take the history over: stays silent until the end
            _wait(lambda: _get(f"{b.http_url}stats")["history"] == "writing", "the second ticker writes history", 10)

        truth = Truth(ex)
        assert truth.total > 200, "the flow made trades"
        print(f"{truth.total} trades; {demo.sent} commands")

        def all_agree() -> list[str]:
            with ws.lock:
                bad = [f"ws {s}" for s in truth.trades if not truth.agrees(s, ws.quotes.get(s), ws.tapes.get(s, []))]
            if page is not None:
                st = _page_state(page)
                bad += [f"page {s}" for s in truth.trades
                        if not truth.agrees(s, st["quotes"].get(s), st["tapes"].get(s, []))]
            return bad

        _wait(lambda: not all_agree(), "the WebSocket's client and the page agree with the journals")
        feed.stop()  # its state is read from here on
        md = feed.md
        assert md.pub == b.pub.connect and md.state == "live" and md.stats.failovers == 1
        for sym in truth.trades:
            assert truth.agrees(sym, md.quote(sym), md.tape(sym)), sym
            ids = list(range(1, len(truth.trades[sym]) + 1))
            assert feed.delivered.get(sym, []) == ids, f"{sym}: the feed's prints, every trade once"
            assert ws.delivered.get(sym, []) == ids, f"{sym}: the WebSocket's prints, every trade once"
        assert md.stats.missed_prints == 0 and md.stats.gaps == 0
        assert ws.ticker == "ticker-b" and ws.failovers >= 1
        if how == "kill":  # `exfab watch` started now: the first ticker refuses it, it goes to the second
            r = exfab("watch", "--once", "--json", "--topology", str(ex.path), "--timeout", "10")
            assert r.returncode == 0, r.stderr
            watched = {q["symbol"]: q for q in map(json.loads, r.stdout.splitlines())}
            for sym in truth.trades:
                assert truth.agrees(sym, watched.get(sym), watched[sym]["prints"] if sym in watched else []), sym
        if page is not None:
            st = _page_state(page)
            assert st["connected"] and st["ticker"] == "ticker-b" and st["failovers"] >= 1
            assert not errors, errors

        # History: every trade once, though two tickers wrote it (the second took over).
        stats = _wait(lambda: (s := _get(f"{b.http_url}stats"))["history_pending"] == 0 and s, "history written")
        assert stats["history"] == "writing" and stats["history_takeovers"] == 1
        want = sorted((s, e["trade_id"], e["price"], e["qty"]) for s, lst in truth.trades.items() for e in lst)
        ticks, bars = _history(ex)
        assert ticks == want, "every trade in the history, once"
        for sym, lst in truth.trades.items():
            if lst:
                assert bars[sym] == (sum(e["qty"] for e in lst), len(lst)), sym
        log = (ex.log_dir / "ticker-ticker-b.log").read_text()
        assert "writes the price history now" in log
        assert feed.back_at is not None and ws.back_at is not None
        print(f"back on the second ticker after the {how}: feed {feed.back_at - killed_at:.2f} s, WebSocket "
              f"{ws.back_at - killed_at:.2f} s, page {'-' if page_back is None else f'{page_back:.2f} s'}; "
              f"feed client: {md.stats}")

        # The first ticker back (restarted, it rebuilds the day; resumed, it catches up by replays): it writes the
        # history again, and the second stops.
        if how == "kill":
            ex.start_node(TICKER, "ticker")
        else:
            first.proc.send_signal(signal.SIGCONT)
        _wait(lambda: _get(f"{b.http_url}stats")["history"] == "standby", "the second ticker hands back", 20)
        back = _wait(lambda: (s := _get(f"{a.http_url}stats"))["history_pending"] == 0
                     and s["trades"] == truth.total and s, "the first is back and writes")
        assert back["history"] == "writing"
        assert _history(ex)[0] == want, "and still every trade once"
        assert md.pub == b.pub.connect, "the clients stay where they are"
    finally:
        if how == "hang":
            with contextlib.suppress(KeyError, ProcessLookupError):
                ex.node(TICKER, "ticker").proc.send_signal(signal.SIGCONT)
        for c in (feed, ws):
            if c is not None:
                c.stop()
        if feed is not None:
            feed.md.close()
        if browser is not None:
            browser.close()
        if pw is not None:
            pw.stop()
        ex.stop()
