"""The ticker's halts, market index and circuit breakers, against a scripted matcher and a recording gateway.

The matcher side of halts comes from another branch: here a matcher-like PUB publishes ``trading_state`` messages
(and trades) as a matcher would, its recovery ROUTER answers snapshots and replays, and a gateway-like ROUTER
records the ``admin`` commands the ticker's circuit breaker sends.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from websockets.sync.client import connect as ws_connect

from fabric.circuit import level_of
from fabric.feed import feed_topic
from fabric.protocol import (
    Admin,
    AdminAck,
    BookSnapshot,
    Heartbeat,
    Logon,
    LogonAck,
    PubMessage,
    ReplayReply,
    ReplayRequest,
    SnapshotReply,
    SnapshotRequest,
    Trade,
    TradingState,
    decode_client,
    decode_internal,
    encode,
    topic_of,
)
from tests.helpers import RunningTicker, free_port
from tests.test_ticker import exact_times
from topology.load import load

SYMBOLS = ("XA", "XB", "XC")

_TOPO = """
[exchange]
name = "halts"
data_dir = "{data}"

[[instruments]]
symbol = "XA"
tick = "0.01"
ref_price = "100.00"

[[instruments]]
symbol = "XB"
tick = "0.01"
ref_price = "50.00"

[[instruments]]
symbol = "XC"
tick = "0.01"
ref_price = "10.00"

[[shards]]
name = "A"
symbols = ["XA", "XB", "XC"]
host = "127.0.0.1"
order_port = {order}
pub_port = {pub}
recovery_port = {recovery}

[[gateways]]
name = "gw1"
host = "127.0.0.1"
port = {gw}

[ticker]
host = "127.0.0.1"
pub_port = {tpub}
snapshot_port = {tsnap}
http_port = {thttp}

[[brokers]]
id = "OPS-TICKER"
role = "operator"

[index]
name = "IX"
base = "1000"
operator = "OPS-TICKER"

[index.constituents]
XA = 10
XB = 20

[[index.breakers]]
pct = "1"
halts = [["24:00", "2m"]]

[[index.breakers]]
pct = "3"
halts = [["24:00", "day"]]
"""


class ScriptedMatcher:
    """Shard 0 as a matcher shows it to subscribers: a PUB, and a recovery ROUTER answering on a thread."""

    def __init__(self, ctx: zmq.Context[Any], pub: int, recovery: int, *, unavailable: bool = False) -> None:
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(f"tcp://127.0.0.1:{pub}")
        self.rec = ctx.socket(zmq.ROUTER)
        self.rec.setsockopt(zmq.LINGER, 0)
        self.rec.bind(f"tcp://127.0.0.1:{recovery}")
        self.unavailable = unavailable  # answer every replay with replay_unavailable (the ticker takes a snapshot)
        self.seq = 0
        self.tseq: dict[bytes, int] = {}
        self.sent: list[tuple[int, bytes]] = []  # (seq, body) of every message published
        self.states: list[TradingState] = []  # the halts in force, as a snapshot carries them
        self.trade_ids: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def publish(self, make: Callable[[int, int], PubMessage], topic: bytes) -> PubMessage:
        """Number and publish one message: ``make(seq, tseq)`` builds it."""
        self.seq += 1
        tseq = self.tseq[topic] = self.tseq.get(topic, 0) + 1
        msg = make(self.seq, tseq)
        body = encode(msg)
        self.sent.append((self.seq, body))
        self.pub.send_multipart([topic_of(msg), body])
        return msg

    def state(self, symbol: str | None, state: str, reason: str = "operator", text: str | None = None,
              until: int | None = None) -> TradingState:
        msg = self.publish(lambda seq, tseq: TradingState(shard=0, seq=seq, tseq=tseq, epoch=0, ts=time.time_ns(),
                                                          symbol=symbol, state=state, reason=reason, text=text,
                                                          until=until), b"S0\x00")
        assert isinstance(msg, TradingState)
        self.states = [s for s in self.states if s.symbol != symbol]
        if state == "halted":
            self.states.append(msg)
        return msg

    def trade(self, symbol: str, price: str, qty: int = 1) -> None:
        tid = self.trade_ids[symbol] = self.trade_ids.get(symbol, 0) + 1
        self.publish(lambda seq, tseq: Trade(shard=0, seq=seq, tseq=tseq, epoch=0, ts=time.time_ns(), symbol=symbol,
                                             trade_id=tid, price=price, qty=qty, aggressor="buy", buy_broker="B1",
                                             buy_oid=f"b{tid}", sell_broker="B2", sell_oid=f"s{tid}"),
                     b"T" + symbol.encode() + b"\x00")

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.rec, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            ident, *_, body = self.rec.recv_multipart()
            req = decode_internal(body)
            if isinstance(req, SnapshotRequest):
                books = [BookSnapshot(symbol=s, bids=[], asks=[], trade_id=self.trade_ids.get(s, 0), book_tseq=0,
                                      trade_tseq=self.tseq.get(b"T" + s.encode() + b"\x00", 0)) for s in SYMBOLS]
                reply = SnapshotReply(shard=0, seq=self.seq, epoch=0, exec_tseq=0, books=books,
                                      states=list(self.states))
                self.rec.send_multipart([ident, encode(reply)])
            elif isinstance(req, ReplayRequest):
                if self.unavailable:
                    rep = ReplayReply(shard=0, first=req.first, last=req.last, msgs=[], done=True,
                                      reason="replay_unavailable", text="gone")
                else:
                    rep = ReplayReply(shard=0, first=req.first, last=req.last, done=True,
                                      msgs=[b for s, b in self.sent if req.first <= s <= req.last])
                self.rec.send_multipart([ident, encode(rep)])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pub.close(0)
        self.rec.close(0)


class RecordingGateway:
    """A gateway-like ROUTER: it logs brokers on and records (and acknowledges) every admin command."""

    def __init__(self, ctx: zmq.Context[Any], port: int) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://127.0.0.1:{port}")
        self.admins: list[tuple[str, Admin]] = []
        self.brokers: dict[bytes, str] = {}
        self.answer = True  # acknowledge admin commands (False: take them and say nothing)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            ident, body = self.sock.recv_multipart()
            msg = decode_client(body)
            if isinstance(msg, Logon):
                self.brokers[ident] = msg.broker
                self.sock.send_multipart([ident, encode(LogonAck(broker=msg.broker, heartbeat_ms=msg.heartbeat_ms))])
            elif isinstance(msg, Admin):
                self.admins.append((self.brokers.get(ident, "?"), msg))
                if self.answer:
                    self.sock.send_multipart([ident, encode(AdminAck(action=msg.action, symbol=msg.symbol))])
            elif isinstance(msg, Heartbeat):
                self.sock.send_multipart([ident, encode(Heartbeat())])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)


def _wait_for(cond: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    ports = {k: free_port() for k in ("order", "pub", "recovery", "gw", "tpub", "tsnap", "thttp")}
    path = tmp_path / "halts.toml"
    path.write_text(_TOPO.format(data=tmp_path / "data", **ports))
    ctx: zmq.Context[Any] = zmq.Context()
    m = ScriptedMatcher(ctx, ports["pub"], ports["recovery"])
    gw = RecordingGateway(ctx, ports["gw"])
    try:
        yield {"path": path, "ports": ports, "matcher": m, "gateway": gw, "ctx": ctx}
    finally:
        m.close()
        gw.close()
        ctx.term()


class FeedReader:
    """A SUB on the ticker's feed keeping the last object of every topic."""

    def __init__(self, ctx: zmq.Context[Any], port: int) -> None:
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for prefix in (b"s", b"m", b"i"):
            self.sub.subscribe(prefix)
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        self.last: dict[bytes, dict[str, Any]] = {}

    def read(self) -> dict[bytes, dict[str, Any]]:
        while self.sub.poll(0):
            topic, body = self.sub.recv_multipart()
            self.last[topic] = msgpack.unpackb(body)
        return self.last

    def close(self) -> None:
        self.sub.close(0)


def test_halts_reach_the_feed_the_websocket_and_the_snapshot(world: dict[str, Any]) -> None:
    m: ScriptedMatcher = world["matcher"]
    running = RunningTicker(load(world["path"]))
    feed = FeedReader(world["ctx"], world["ports"]["tpub"])
    try:
        time.sleep(0.3)  # the feed's subscription reaches the ticker
        with ws_connect(f"ws://127.0.0.1:{world['ports']['thttp']}/ws") as ws:
            hello = json.loads(ws.recv(timeout=5))  # with the market's state, the index and the halts
            assert hello["t"] == "hello" and hello["market"]["state"] == "trading" and hello["halted"] == []
            assert hello["index"]["value"] == "1000.00"

            m.state("XA", "halted", text="news pending")
            got = json.loads(ws.recv(timeout=5))  # every client gets states, subscribed or not
            assert (got["t"], got["symbol"], got["state"], got["scope"], got["reason"], got["text"]) == \
                ("state", "XA", "halted", "symbol", "operator", "news pending")
            _wait_for(lambda: feed.read().get(feed_topic("state", "XA"), {}).get("state") == "halted",
                      "XA halted on the feed")

            until = time.time_ns() + 60 * 10**9
            m.state(None, "halted", reason="circuit_breaker", text="circuit breaker 10 %: IX down", until=until)
            # Every symbol of the shard is now under the market's halt (XA's own halt under it), then the market.
            objs = [json.loads(ws.recv(timeout=5)) for _ in range(4)]
            assert [(o["t"], o.get("symbol")) for o in objs] == [("state", "XA"), ("state", "XB"), ("state", "XC"),
                                                                 ("market", None)]
            market = objs[3]
            assert (market["state"], market["reason"], market["until"], market["until_ns"], market["shards"]) == \
                ("halted", "circuit_breaker", until, str(until), ["A"])
            assert all(o["scope"] == "market" and o["reason"] == "circuit_breaker" for o in objs[:3])
            seen: dict[str, int] = {}
            for o in objs:
                exact_times(o, None, seen)
            assert seen["until"] == 4 and seen["since"] == 4, "until and since with their exact text"

        with ws_connect(f"ws://127.0.0.1:{world['ports']['thttp']}/ws") as late:
            hello = json.loads(late.recv(timeout=5))
            assert hello["market"]["state"] == "halted" and hello["market"]["until"] == until
            assert [o["symbol"] for o in hello["halted"]] == ["XA", "XB", "XC"], "a client connecting now is told"
        with ws_connect(f"ws://127.0.0.1:{world['ports']['thttp']}/ws") as ws2:
            json.loads(ws2.recv(timeout=5))
            m.state(None, "trading", reason="operator")
            objs = [json.loads(ws2.recv(timeout=5)) for _ in range(4)]
            assert [(o["t"], o.get("symbol"), o["state"], o["scope"]) for o in objs] == \
                [("state", "XA", "halted", "symbol"), ("state", "XB", "trading", None),
                 ("state", "XC", "trading", None), ("market", None, "trading", None)]
        snap = running.call(lambda: running.ticker.snapshot_reply(msgpack.packb({"t": "snapshot_request"})))
        assert snap["symbols"]["XA"]["state"]["state"] == "halted", "a symbol's own halt outlives the market's"
        assert snap["symbols"]["XB"]["state"]["state"] == "trading"
        assert snap["market"]["state"] == "trading" and [o["symbol"] for o in snap["halted"]] == ["XA"]
        _wait_for(lambda: feed.read().get(b"m\x00", {}).get("state") == "trading", "the market trading on the feed")
    finally:
        feed.close()
        running.stop()


def test_a_ticker_that_starts_from_a_snapshot_takes_its_halts(tmp_path: Path) -> None:
    ports = {k: free_port() for k in ("order", "pub", "recovery", "gw", "tpub", "tsnap", "thttp")}
    path = tmp_path / "halts.toml"
    path.write_text(_TOPO.format(data=tmp_path / "data", **ports))
    ctx: zmq.Context[Any] = zmq.Context()
    m = ScriptedMatcher(ctx, ports["pub"], ports["recovery"], unavailable=True)
    try:
        m.state("XB", "halted", text="results")  # before the ticker: gone from the matcher, in its snapshot
        m.trade("XA", "100.00")
        running = RunningTicker(load(path))
        try:
            st = _wait_for(lambda: running.call(lambda: running.ticker.feed.state.halt_of("XB")),
                           "XB's halt from the snapshot")
            assert st[0].text == "results" and st[1] == "symbol"
            assert running.call(lambda: running.ticker.feed.state.halt_of("XA")) is None
        finally:
            running.stop()
    finally:
        m.close()
        ctx.term()


def test_the_index_moves_with_trades_and_a_breaker_halts_the_market_once(world: dict[str, Any]) -> None:
    m: ScriptedMatcher = world["matcher"]
    gw: RecordingGateway = world["gateway"]
    running = RunningTicker(load(world["path"]))
    feed = FeedReader(world["ctx"], world["ports"]["tpub"])
    try:
        time.sleep(0.3)
        # IX = 1000 * (10 * XA + 20 * XB) / (10 * 100 + 20 * 50) = 1000 * (10 XA + 20 XB) / 2000
        m.trade("XC", "11.00")  # not a constituent
        m.trade("XA", "100.50")  # +0.25 %
        ix = _wait_for(lambda: feed.read().get(feed_topic("index", "IX")), "the index on the feed")
        assert (ix["value"], ix["change"], ix["change_pct"], ix["prev_close"]) == ("1002.50", "2.50", "0.25",
                                                                                   "1000.00")
        assert gw.admins == [], "below every level"
        m.trade("XB", "48.80")  # 1000 * (1005 + 976) / 2000 = 990.50: -0.95 %
        _wait_for(lambda: feed.read()[feed_topic("index", "IX")]["value"] == "990.50", "the index at 990.50")
        assert gw.admins == []
        m.trade("XB", "48.70")  # 1000 * (1005 + 974) / 2000 = 989.50: -1.05 %: level 1 trips
        operator, admin = _wait_for(lambda: gw.admins[0] if gw.admins else None, "the breaker's admin")
        assert operator == "OPS-TICKER"
        assert (admin.action, admin.symbol) == ("halt", None)
        assert admin.until is not None and abs(admin.until - (time.time_ns() + 120 * 10**9)) < 10 * 10**9
        assert level_of(admin.text) == Decimal(1) and "IX down 1.05 %" in (admin.text or "")
        # The matcher halts the market and says so; the index moving further does not trip level 1 again.
        m.state(None, "halted", reason="circuit_breaker", text=admin.text, until=admin.until)
        m.trade("XB", "48.60")  # -1.15 %
        _wait_for(lambda: feed.read()[feed_topic("index", "IX")]["value"] == "988.50", "the index at 988.50")
        time.sleep(0.3)
        assert len(gw.admins) == 1, "each level trips once a day"
        stats = running.call(lambda: dict(running.ticker.stats_view()))
        assert stats["breakers_tripped"] == 1
        # The index's bars, as a symbol's, from /history under its name.
        with urllib.request.urlopen(f"http://127.0.0.1:{world['ports']['thttp']}/history?symbol=IX&interval=1m",
                                    timeout=5) as r:
            hist = json.loads(r.read())
        assert hist["bars"] and hist["bars"][-1]["close"] == "988.50" and hist["bars"][-1]["volume"] == 0
        assert min(b["low"] for b in hist["bars"]) == "988.50" and max(b["high"] for b in hist["bars"]) == "1002.50"
        m.trade("XA", "93.00")  # 1000 * (930 + 972) / 2000 = 951.00: -4.9 %: level 3, for the rest of the day
        _, admin = _wait_for(lambda: gw.admins[1] if len(gw.admins) > 1 else None, "the second level's admin")
        assert level_of(admin.text) == Decimal(3) and "until the end of the day" in (admin.text or "")
    finally:
        feed.close()
        running.stop()


def test_a_ticker_that_saw_the_halt_in_the_stream_or_is_a_standby_does_not_trip_again(tmp_path: Path) -> None:
    from nodes.ticker import Ticker

    ports = {k: free_port() for k in ("order", "pub", "recovery", "gw", "tpub", "tsnap", "thttp")}
    text = _TOPO.format(data=tmp_path / "data", **ports)
    path = tmp_path / "halts.toml"
    path.write_text(text)
    t = Ticker(load(path))
    for link in t.links:
        link.synced = True

    def trade(sym: str, price: str, n: int) -> Trade:
        return Trade(shard=0, seq=n, tseq=n, epoch=0, ts=time.time_ns(), symbol=sym, trade_id=n, price=price, qty=1,
                     aggressor="buy", buy_broker="B1", buy_oid="b", sell_broker="B2", sell_oid="s")

    # What a restarted ticker replays: the day's breaker halt of level 1, then trades past it.
    t._trading_state(TradingState(shard=0, seq=1, tseq=1, epoch=0, ts=time.time_ns(), symbol=None, state="halted",
                                  reason="circuit_breaker", text="circuit breaker 1 %: IX down 1.05 % at 989.50, "
                                  "halted until 10:02:00", until=None))
    t.feed.trade(trade("XB", "48.60", 2))
    assert t.index is not None and t.index.change_pct < -1
    assert t.check_breakers() is None, "level 1 tripped today already"
    # A standby ticker (not writing the history) never trips, even past a new level.
    t.feed.trade(trade("XA", "93.00", 3))
    t.writing = False
    assert t.check_breakers() is None
    # Before the day is rebuilt, neither.
    t.writing = True
    t.links[0].synced = False
    assert t.check_breakers() is None
    t.store.close()


def test_the_market_data_client_keeps_halts_market_and_index(world: dict[str, Any]) -> None:
    from fabric.marketdata import MarketDataClient

    m: ScriptedMatcher = world["matcher"]
    ports = world["ports"]
    m.trade("XA", "101.00")
    running = RunningTicker(load(world["path"]))
    md = MarketDataClient(f"tcp://127.0.0.1:{ports['tpub']}", f"tcp://127.0.0.1:{ports['tsnap']}", ["XA", "XB"],
                          ctx=world["ctx"])
    try:
        assert md.wait_ready(10)
        ix = md.index()
        assert ix is not None and ix["value"] == "1005.00", "from the snapshot"
        market = md.market()
        assert market is not None and market["state"] == "trading"
        assert md.trading_state("XA") is not None and md.halted() == []
        seen: list[tuple[str, str | None, str]] = []

        def until_seen(kind: str, key: str | None, state: str) -> bool:
            seen.extend((u.kind, u.symbol, u.data.get("state", "")) for u in md.poll(0.1))
            return (kind, key, state) in seen

        m.state("XB", "halted", text="results")
        _wait_for(lambda: until_seen("state", "XB", "halted"), "XB halted at the client")
        assert md.halted() == ["XB"]
        assert (md.trading_state("XB") or {}).get("text") == "results"
        m.state(None, "halted", reason="circuit_breaker", text="circuit breaker 1 %: IX down")
        _wait_for(lambda: until_seen("market", None, "halted"), "the market halted at the client")
        assert md.halted() == ["XA", "XB"], "every symbol followed (not XC: not asked for)"
        m.trade("XB", "51.00")
        _wait_for(lambda: (md.poll(0.1), (md.index() or {}).get("value") == "1015.00")[1], "the index live")
        assert md.stats.gaps == 0 and md.stats.malformed == 0
        # exfab watch shows them: the index and the halt on the market's line, a HALTED mark per symbol.
        import io

        from rich.console import Console

        from tools.watch import WatchTable

        view = WatchTable(md, ["XA", "XB"])
        view.refresh(time.monotonic())
        buf = io.StringIO()
        Console(file=buf, width=200).print(view.render(highlight=False))
        text = buf.getvalue()
        assert "IX 1015.00 +15.00 (+1.50%)" in text
        assert "MARKET HALTED" in text and "circuit breaker: circuit breaker 1 %: IX down (until resumed)" in text
        assert text.count("HALTED") == 3, text
    finally:
        md.close()
        running.stop()


def test_the_page_shows_the_index_a_halted_badge_and_the_market_banner(world: dict[str, Any]) -> None:
    from tests.test_page import _require_browser

    chromium = _require_browser()
    from playwright.sync_api import sync_playwright

    m: ScriptedMatcher = world["matcher"]
    running = RunningTicker(load(world["path"]))
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{world['ports']['thttp']}/")
            page.wait_for_function("() => window.exfab && window.exfab.index && window.exfab.market", timeout=10000)
            assert page.inner_text("#index-name") == "IX" and page.inner_text("#index-value") == "1000.00"
            assert page.is_hidden("#halt-banner")
            assert page.is_hidden("tr[data-symbol=XA] .badge-halted")

            m.trade("XA", "102.00")
            page.wait_for_function("() => document.getElementById('index-value').textContent === '1010.00'",
                                   timeout=10000)
            assert page.inner_text("#index-change") == "+10.00 (+1.00%)"
            assert "up" in (page.get_attribute("#index-change", "class") or "")

            m.state("XA", "halted", text="news pending")
            page.wait_for_selector("tr[data-symbol=XA] .badge-halted", state="visible", timeout=10000)
            assert page.is_hidden("tr[data-symbol=XB] .badge-halted")
            assert "news pending" in (page.get_attribute("tr[data-symbol=XA] .badge-halted", "title") or "")

            until = (time.time_ns() // 10**9 + 3600) * 10**9
            m.state(None, "halted", reason="circuit_breaker", text="circuit breaker 1 %: IX down 1.05 %",
                    until=until)
            page.wait_for_selector("#halt-banner", state="visible", timeout=10000)
            banner = page.inner_text("#halt-banner")
            assert "MARKET HALTED" in banner and "circuit breaker 1 %: IX down 1.05 %" in banner
            local = page.evaluate("(ms) => new Date(ms).toTimeString().slice(0, 8)", until // 10**6)
            assert f"resumes at {local}" in banner
            for sym in SYMBOLS:
                assert page.is_visible(f"tr[data-symbol={sym}] .badge-halted"), sym
            page.screenshot(path=str(world["path"].parent / "halted.png"))
            page.reload()  # a page opened during the halt learns it from the hello
            page.wait_for_function("() => window.exfab && window.exfab.market", timeout=10000)
            page.wait_for_selector("#halt-banner", state="visible", timeout=10000)
            page.wait_for_selector("tr[data-symbol=XC] .badge-halted", state="visible", timeout=10000)

            m.state(None, "trading")
            page.wait_for_selector("#halt-banner", state="hidden", timeout=10000)
            # each symbol's state comes in its own message: wait for XB's, then XA's must still show
            page.wait_for_selector("tr[data-symbol=XB] .badge-halted", state="hidden", timeout=10000)
            page.wait_for_selector("tr[data-symbol=XC] .badge-halted", state="hidden", timeout=10000)
            assert page.is_visible("tr[data-symbol=XA] .badge-halted"), "XA's own halt stays"
            browser.close()
        assert errors == []
    finally:
        running.stop()


def test_a_halt_no_gateway_answers_is_sent_again_at_the_next_move(world: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import nodes.ticker

    monkeypatch.setattr(nodes.ticker, "ADMIN_TIMEOUT_S", 0.3)
    monkeypatch.setattr(nodes.ticker, "ADMIN_ATTEMPTS", 1)
    m: ScriptedMatcher = world["matcher"]
    gw: RecordingGateway = world["gateway"]
    gw.answer = False
    running = RunningTicker(load(world["path"]))
    try:
        m.trade("XB", "48.70")  # -1.05 %: level 1
        _wait_for(lambda: len(gw.admins) == 1, "the first try")
        _wait_for(lambda: running.call(lambda: running.ticker._halting is None), "the first try given up")
        assert running.call(lambda: set().union(*running.ticker.tripped.values())) == set(), "not tripped after all"
        gw.answer = True
        m.trade("XB", "48.65")
        _wait_for(lambda: len(gw.admins) == 2, "the halt sent again at the next move")
        assert level_of(gw.admins[1][1].text) == Decimal(1)
        _wait_for(lambda: running.call(lambda: running.ticker._halting is None), "the second try answered")
        assert running.call(lambda: set().union(*running.ticker.tripped.values())) == {Decimal(1)}
    finally:
        running.stop()
