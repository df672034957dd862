"""The ticker's WebSocket: hello, subscribe, snapshot then updates, unsubscribe, ping, errors, slow clients."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from decimal import Decimal
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.test_ticker import _trade_flow
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
