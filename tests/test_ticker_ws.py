"""The ticker's WebSocket: hello, subscribe, snapshot then updates, unsubscribe, ping, errors, slow clients, batches.

The batching tests run a :class:`~nodes.webhub.WebHub` alone on a real port, fed by a
:class:`~fabric.feed.MarketFeed` in the test, so that what is published between two of its wake-ups is
known exactly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

import nodes.webhub as webhub
from fabric.client import BrokerClient
from fabric.feed import MarketFeed
from nodes.webhub import WebHub
from tests.helpers import LOCAL, gateway_endpoints, topology_on_free_ports
from tests.test_feed import T0, _inst, level, trade
from tests.test_ticker import JS_EXACT, NS_FIELDS, _trade_flow, exact_json
from topology.launcher import Launcher

pytestmark = pytest.mark.e2e


async def _recv_until(ws: ClientConnection, pred: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Receive messages until one satisfies ``pred``; return all received (the last one satisfies it)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching message in {timeout} s; got {[m.get('t') for m in got]}")
        msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        got.append(msg)
        if pred(msg):
            return got


def test_subscribe_snapshot_updates_unsubscribe_and_errors(exchange: Launcher) -> None:
    tk = exchange.topo.ticker
    assert tk is not None
    a, b = exchange.topo.shards[0].symbols[0], exchange.topo.shards[1].symbols[0]

    async def scenario() -> None:
        async with connect(tk.ws_url) as ws:
            hello = json.loads(await ws.recv())
            assert hello["t"] == "hello" and [s["symbol"] for s in hello["symbols"]] == sorted(exchange.topo.symbols)
            await ws.send(json.dumps({"op": "subscribe", "symbols": [a], "channels": ["quote", "bars"]}))
            snap = (await _recv_until(ws, lambda m: m["t"] == "snapshot"))[-1]
            assert snap["symbol"] == a and {"quote", "depth", "bars"} <= snap.keys()
            before = snap["quote"]["trades"]
            trades = await asyncio.to_thread(_trade_flow, exchange, [a, b], 12)
            want = before + len(trades[a])
            got = await _recv_until(ws, lambda m: m["t"] == "quote" and m["trades"] == want)
            kinds = {m["t"] for m in got}
            assert "depth" not in kinds, "not subscribed to depth"
            assert all(m.get("symbol") in (a, None) for m in got), "only the subscribed symbol"
            prints = [(Decimal(p["price"]), p["qty"]) for m in got if m["t"] == "quote" for p in m["prints"]]
            assert prints == trades[a]
            assert any(m["t"] == "bars" for m in got)

            await ws.send(json.dumps({"op": "ping", "id": 7}))
            assert (await _recv_until(ws, lambda m: m["t"] == "pong"))[-1]["id"] == 7
            for req, reason in (("not json", "malformed"), (json.dumps([1]), "malformed"),
                                (json.dumps({"op": "buy"}), "unknown_op"),
                                (json.dumps({"op": "subscribe", "symbols": ["NOPE"]}), "unknown_symbol"),
                                (json.dumps({"op": "subscribe", "symbols": [a], "channels": ["news"]}),
                                 "unknown_channel"),
                                (json.dumps({"op": "subscribe", "symbols": "TCS"}), "malformed")):
                await ws.send(req)
                err = (await _recv_until(ws, lambda m: m["t"] == "error"))[-1]
                assert err["reason"] == reason, (req, err)

            await ws.send(json.dumps({"op": "unsubscribe", "symbols": [a]}))
            await ws.send(json.dumps({"op": "ping", "id": 8}))
            await _recv_until(ws, lambda m: m["t"] == "pong" and m["id"] == 8)
            await asyncio.to_thread(_trade_flow, exchange, [a], 3, 5)
            await asyncio.sleep(0.5)
            await ws.send(json.dumps({"op": "snapshot", "symbols": [a]}))
            rest = await _recv_until(ws, lambda m: m["t"] == "snapshot")
            assert [m["t"] for m in rest if m["t"] in ("quote", "bars", "depth")] == [], "unsubscribed"
            assert rest[-1]["quote"]["trades"] > want, "a snapshot on request shows the newer trades"

    asyncio.run(scenario())


def test_a_client_that_does_not_read_slows_nobody_and_catches_up_whole(exchange: Launcher) -> None:
    tk = exchange.topo.ticker
    assert tk is not None
    sym = exchange.topo.shards[0].symbols[0]

    async def scenario() -> None:
        # A client that stops reading (tiny buffers), and a prompt one beside it.
        async with connect(tk.ws_url, max_queue=1) as slow, connect(tk.ws_url) as fast:
            for ws in (slow, fast):
                await ws.recv()  # hello
                await ws.send(json.dumps({"op": "subscribe"}))
            trades = await asyncio.to_thread(_trade_flow, exchange, [sym], 40, 11)
            total = len(trades[sym])
            await _recv_until(fast, lambda m: m["t"] == "quote" and m["symbol"] == sym and m["trades"] >= total)
            stats = json.loads(urllib.request.urlopen(tk.http_url + "stats", timeout=5).read())
            assert stats["ws_clients"] == 2
            # The slow one now reads everything waiting: the latest quote arrives, with every print of the last 50.
            seen: list[tuple[Decimal, int]] = []
            last: dict[str, Any] = {}
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and last.get("trades") != total:
                m = json.loads(await asyncio.wait_for(slow.recv(), 5))
                if m["t"] == "snapshot" and m["symbol"] == sym:
                    seen = [(Decimal(p["price"]), p["qty"]) for p in m["quote"]["prints"]]
                    last = m["quote"]
                elif m["t"] == "quote" and m["symbol"] == sym:
                    seen += [(Decimal(p["price"]), p["qty"]) for p in m["prints"]]
                    last = m
            assert last.get("trades") == total
            assert seen[-50:] == trades[sym][-50:]

    asyncio.run(scenario())


# ------------------------------------------------------------------ bands and exact times


def _get_text(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        body: bytes = r.read()
        return body


def _set_band(text: str, symbol: str, band: str | None) -> str:
    """Return topology ``text`` with ``symbol``'s ``band_pct`` set to ``band`` (``None``: the line removed)."""
    block = re.compile(rf'(symbol = "{symbol}"\n(?:[a-z_]+ = [^\n]*\n)*?)band_pct = "[^"]*"\n')
    assert block.search(text), f"{symbol} has a band_pct in {LOCAL.name}"
    return block.sub(lambda m: m.group(1) + ("" if band is None else f'band_pct = "{band}"\n'), text, count=1)


@pytest.fixture
def banded_exchange(tmp_path: Path) -> Iterator[Launcher]:
    """The local topology with ITC unbanded and AXISBANK's band a 3.33 % that does not fall on whole ticks."""
    path = topology_on_free_ports(LOCAL, tmp_path)
    path.write_text(_set_band(_set_band(path.read_text(), "ITC", None), "AXISBANK", "3.33"))
    launcher = Launcher(path, workdir=tmp_path)
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()


def test_hello_and_symbols_give_each_instrument_its_band(banded_exchange: Launcher) -> None:
    ex = banded_exchange
    tk = ex.topo.ticker
    assert tk is not None

    async def hello() -> dict[str, Any]:
        async with connect(tk.ws_url) as ws:
            msg: dict[str, Any] = json.loads(await ws.recv())
            return msg

    msg = asyncio.run(hello())
    assert msg["t"] == "hello" and msg["v"] == 1 and msg["exchange"] == ex.topo.name and msg["heartbeat_s"] == 1.0
    listed = json.loads(_get_text(f"{tk.http_url}symbols"))
    assert listed == msg["symbols"], "GET /symbols is the hello's list"
    by_sym = {s["symbol"]: s for s in listed}
    assert list(by_sym) == sorted(ex.topo.symbols)
    for s in listed:
        assert list(s) == ["symbol", "ref_price", "tick", "lot", "band_pct", "band_low", "band_high"]
        inst = ex.topo.instrument(s["symbol"])
        assert (s["ref_price"], s["tick"], s["lot"]) == (str(inst.ref_price), str(inst.tick), inst.lot)
    # The band as the matcher applies it: ref_price * (1 -/+ band_pct / 100), rounded inwards to whole ticks.
    assert (by_sym["TCS"]["band_pct"], by_sym["TCS"]["band_low"], by_sym["TCS"]["band_high"]) == (
        "10", "3150.00", "3850.00")
    assert (by_sym["AXISBANK"]["band_pct"], by_sym["AXISBANK"]["band_low"], by_sym["AXISBANK"]["band_high"]) == (
        "3.33", "1111.75", "1188.25")  # 1111.705 and 1188.295, inwards to the 0.05 tick
    assert (by_sym["ITC"]["band_pct"], by_sym["ITC"]["band_low"], by_sym["ITC"]["band_high"]) == (None, None, None)
    assert by_sym["ITC"]["ref_price"] == "430.00"

    # They are the matcher's limits: a buy at either limit is accepted, one tick outside is rejected.
    ax = by_sym["AXISBANK"]
    tick = Decimal(ax["tick"])
    with BrokerClient(gateway_endpoints(ex)[:1], "BANDS") as b:
        for price in (ax["band_low"], ax["band_high"]):
            assert b.buy("AXISBANK", 1, price).accepted, price
        for price, order in ((Decimal(ax["band_low"]) - tick, b.buy), (Decimal(ax["band_high"]) + tick, b.sell)):
            r = order("AXISBANK", 1, price)
            assert r.rejected is not None and r.rejected.reason == "price_out_of_band", (price, r)


def test_every_nanosecond_time_in_json_has_its_exact_text(exchange: Launcher) -> None:
    # docs/market-data.md, section 2: each time F (ns) has F_ns, its decimal text, exact in JavaScript too.
    tk = exchange.topo.ticker
    assert tk is not None
    sym = exchange.topo.shards[0].symbols[0]
    seen: dict[str, int] = {}
    kinds: set[str] = set()

    async def scenario() -> None:
        async with connect(tk.ws_url) as ws:
            exact_json(await ws.recv(), seen)  # hello: no times, and no integer beyond 2**53
            await ws.send(json.dumps({"op": "subscribe", "symbols": [sym]}))
            trades = await asyncio.to_thread(_trade_flow, exchange, [sym], 8)
            await ws.send(json.dumps({"op": "ping", "id": 1}))
            deadline = time.monotonic() + 15
            while not {"snapshot", "quote", "depth", "bars", "heartbeat", "pong"} <= kinds or \
                    seen.get("last_ts", 0) < 2 or seen.get("ts", 0) < len(trades[sym]):
                assert time.monotonic() < deadline, f"got {sorted(kinds)}, {seen}"
                msg = exact_json(await asyncio.wait_for(ws.recv(), 5), seen)
                kinds.add(msg["t"])

    asyncio.run(scenario())
    assert seen.get("rounded", 0) > 0, "JSON.parse rounds some of the integer times: the text forms matter"

    base = tk.http_url
    exact_json(_get_text(f"{base}snapshot?symbol={sym}"), seen)
    exact_json(_get_text(f"{base}symbols"), seen)
    exact_json(_get_text(f"{base}stats"), seen)
    # /history: from and to as decimal text (an odd one: no double holds it) and as ISO 8601.
    to = (time.time_ns() + 60_000_000_000) | 1
    assert to > JS_EXACT and float(to) != to
    since = dt.datetime.now(dt.UTC).replace(microsecond=123456) - dt.timedelta(hours=1)
    since_ns = (int(since.timestamp()) * 1_000_000 + since.microsecond) * 1_000
    for iv in ("1s", "1m", "5m"):
        for frm, want_from in ((str(to - 3_600_000_000_007), to - 3_600_000_000_007),
                               (since.isoformat(), since_ns), (since.replace(tzinfo=None).isoformat(), since_ns)):
            query = urllib.parse.urlencode({"symbol": sym, "interval": iv, "from": frm, "to": str(to)})
            raw = _get_text(f"{base}history?{query}")
            h = exact_json(raw, seen)
            assert (h["from"], h["from_ns"], h["to"], h["to_ns"]) == (want_from, str(want_from), to, str(to))
            assert json.loads(raw, parse_int=float)["to"] != to, "as a JavaScript number, to is rounded"
            assert h["bars"] and all(b["start_ns"] == str(b["start"]) for b in h["bars"])
    assert all(seen.get(f, 0) > 0 for f in NS_FIELDS), seen


# ------------------------------------------------------------------ batches, shared bytes, slow clients


class _Counting:
    """Stands in for a module's encoder or frame builder: counts the calls."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0

    def encode(self, obj: Any) -> bytes:
        self.calls += 1
        out: bytes = self.fn(obj)
        return out

    def __call__(self, payload: bytes) -> bytes:
        self.calls += 1
        out: bytes = self.fn(payload)
        return out


async def _hub() -> tuple[WebHub, MarketFeed, str]:
    """A web hub alone on a free port, over a feed of TCS and INFY; return it, its feed and its ``ws://`` URL."""
    feed = MarketFeed([_inst(), _inst("INFY", "1500.00")])
    hub = WebHub("test", {i.symbol: i for i in (_inst(), _inst("INFY", "1500.00"))}, feed,
                 stats=dict, history=lambda *_: [])
    server = await hub.serve("127.0.0.1", 0)
    port = next(iter(server.sockets)).getsockname()[1]
    return hub, feed, f"ws://127.0.0.1:{port}/ws"


def _turn(feed: MarketFeed, hub: WebHub, i: int) -> list[tuple[str, str, int]]:
    """Trade once on TCS (its ask shrinking) and publish the turn; return its (kind, symbol, seq)."""
    feed.apply(level(i, "sell", "100.50", 100 - i))
    feed.apply(trade(i, "100.50", 1, T0 + i))
    msgs = feed.take(T0 + i).messages
    hub.publish(msgs)
    return [(k, sym, o["seq"]) for k, sym, o in msgs]


async def _subscribed(ws: ClientConnection, batch: bool) -> None:
    # hello, then a snapshot of each symbol: one array each time when batching, one message per object otherwise.
    hello = json.loads(await ws.recv())
    assert (hello if batch else [hello])[0]["t"] == "hello"
    await ws.send(json.dumps({"op": "subscribe"}))
    snaps = json.loads(await ws.recv()) if batch else [json.loads(await ws.recv()) for _ in range(2)]
    assert [(m["t"], m["symbol"]) for m in snaps] == [("snapshot", "INFY"), ("snapshot", "TCS")]


async def _silent(ws: ClientConnection, secs: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(ws.recv(), secs)
    except TimeoutError:
        return True
    return False


def test_updates_of_one_wakeup_reach_each_batching_client_in_one_message_serialised_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        hub, feed, url = await _hub()
        try:
            async with connect(url + "?batch=1") as a, connect(url + "?batch=1") as b, \
                    connect(url + "?batch=1") as c, connect(url) as single:
                for ws in (a, b, c):
                    await _subscribed(ws, batch=True)
                await _subscribed(single, batch=False)
                encoder = _Counting(msgspec.json.Encoder().encode)
                framer = _Counting(webhub._text_frame)
                monkeypatch.setattr(webhub, "_json", encoder)
                monkeypatch.setattr(webhub, "_text_frame", framer)
                # Three turns published before the hub wakes up (nothing awaits in between).
                want = [m for i in (1, 2, 3) for m in _turn(feed, hub, i)]
                assert len(want) == 9 and {k for k, _, _ in want} == {"quote", "depth", "bars"}
                raw = [await asyncio.wait_for(ws.recv(), 5) for ws in (a, b, c)]
                assert raw[0] == raw[1] == raw[2]
                got = json.loads(raw[0])
                assert isinstance(got, list), "a batch is a JSON array"
                assert [(m["t"], m["symbol"], m["seq"]) for m in got] == want, "every object, in publishing order"
                assert [p["trade_id"] for m in got if m["t"] == "quote" for p in m["prints"]] == [1, 2, 3]
                for ws in (a, b, c):
                    assert await _silent(ws), "one message for the whole wake-up"
                # A client that did not ask for batches gets the same objects one per message, as before.
                one = [json.loads(await asyncio.wait_for(single.recv(), 5)) for _ in want]
                assert [(m["t"], m["symbol"], m["seq"]) for m in one] == want
                assert await _silent(single)
                # Each object serialised once for the four clients; one frame for the three batching ones (the
                # same subscriptions), one per object for the other.
                assert encoder.calls == len(want) == hub.counts["ws_encodes"] - 2 - 1  # minus snapshots, hello
                assert framer.calls == 1 + len(want)
                stats = hub.stats()
                assert stats["ws_clients"] == 4 and stats["ws_objects"] >= stats["ws_messages"]
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_a_client_whose_connection_is_full_gets_its_merged_mailbox_in_one_message_once_it_drains() -> None:
    async def scenario() -> None:
        hub, feed, url = await _hub()
        try:
            async with connect(url + "?batch=1") as slow:
                await _subscribed(slow, batch=True)
                (sc,) = hub.clients
                async with connect(url + "?batch=1") as fast:
                    await _subscribed(fast, batch=True)
                    # The slow connection's write buffer is over its limit (what websockets' flow control says
                    # when a client stops reading): nothing more is written to it, its updates conflate.
                    sc.ws.paused = True
                    for i in range(1, 6):
                        want = _turn(feed, hub, i)
                        got = json.loads(await asyncio.wait_for(fast.recv(), 5))
                        assert [(m["t"], m["symbol"], m["seq"]) for m in got] == want, "the other is not held up"
                    assert await _silent(slow)
                    assert list(sc.box) == [("quote", "TCS"), ("depth", "TCS"), ("bars", "TCS")]
                    assert sc.conflated == 3 * 4
                    sc.ws.paused = False  # drained: the mailbox goes out at the next look, as one message
                    late = json.loads(await asyncio.wait_for(slow.recv(), 5))
                    assert [(m["t"], m["seq"]) for m in late] == [("quote", 5), ("depth", 5), ("bars", 5)]
                    assert [p["trade_id"] for p in late[0]["prints"]] == [1, 2, 3, 4, 5], "every print"
                    assert late[0]["volume"] == 5 and late[1]["asks"] == [["100.50", 95, 1]]
                    assert [(b["start"], b["trades"]) for b in late[2]["bars"]["1s"]] == [(T0, 5)]
                    assert await _silent(slow)
                    # Caught up: it shares the batches again.
                    want = _turn(feed, hub, 6)
                    mine, theirs = [await asyncio.wait_for(ws.recv(), 5) for ws in (slow, fast)]
                    assert mine == theirs and [(m["t"], m["seq"]) for m in json.loads(mine)] == [
                        (k, n) for k, _, n in want]
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_a_subscription_made_between_wakeups_gets_the_snapshot_after_older_updates_never_before() -> None:
    async def scenario() -> None:
        hub, feed, url = await _hub()
        try:
            async with connect(url + "?batch=1") as ws:
                await ws.recv()  # hello
                await ws.send(json.dumps({"op": "subscribe", "symbols": ["INFY"]}))
                assert [m["t"] for m in json.loads(await ws.recv())] == ["snapshot"]
                # A TCS update is published and waits for the next wake-up; the client subscribes to TCS before
                # it: the snapshot (which holds that update) arrives, the older update does not follow it.
                hub._next_at = asyncio.get_running_loop().time() + 0.5  # the hub flushed just now: it waits
                _turn(feed, hub, 1)
                await ws.send(json.dumps({"op": "subscribe", "symbols": ["TCS"]}))
                await asyncio.sleep(0.1)
                _turn(feed, hub, 2)
                got = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert [(m["t"], m["symbol"]) for m in got] == [("snapshot", "TCS"), ("quote", "TCS"),
                                                                 ("depth", "TCS"), ("bars", "TCS")]
                assert got[0]["quote"]["seq"] == 1 and got[1]["seq"] == 2
                assert [p["trade_id"] for p in got[0]["quote"]["prints"]] == [1], "the snapshot holds trade 1"
                assert [p["trade_id"] for p in got[1]["prints"]] == [2], "and it is not sent again after it"
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_deeply_nested_json_is_refused_as_malformed_and_the_connection_stays() -> None:
    async def scenario() -> None:
        hub, _, url = await _hub()
        try:
            async with connect(url) as ws:
                assert json.loads(await ws.recv())["t"] == "hello"
                await ws.send("[" * 20_000)
                err = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert (err["t"], err["reason"]) == ("error", "malformed") and "nested" in err["text"]
                await ws.send(json.dumps({"op": "ping", "id": 7}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["t"] == "pong"
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_a_client_that_pings_and_never_reads_is_dropped_not_kept() -> None:
    async def scenario() -> None:
        hub, _, url = await _hub()
        try:
            async with connect(url) as ws:
                (c,) = hub.clients
                c.ws.paused = True  # its connection takes nothing more: every answer waits in its mailbox
                for i in range(webhub.MAX_ANSWERS + 100):
                    await ws.send(json.dumps({"op": "ping", "id": f"{i}-{'x' * 1000}"}))
                for _ in range(100):
                    if c.dropped:
                        break
                    await asyncio.sleep(0.02)
                assert c.dropped and len(c.box) <= webhub.MAX_ANSWERS + hub._feed_keys
                await asyncio.wait_for(ws.wait_closed(), 5)
                assert ws.close_code == 1008
            assert not hub.clients
        finally:
            await hub.close()

    asyncio.run(scenario())
