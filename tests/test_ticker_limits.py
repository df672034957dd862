"""The ticker's web port refuses what is too big or too many: oversized WebSocket messages (close 1009), HTTP
requests over ``MAX_HTTP_REQUEST`` (431), connections past the per-address cap (429); and the topology key.

Each test runs a :class:`~nodes.webhub.WebHub` alone on a free port (``tests/test_ticker_ws.py``'s ``_hub``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import nodes.webhub as webhub
from fabric.feed import MarketFeed
from nodes.webhub import WebHub
from tests.test_feed import _inst
from tests.test_topology import _one, _text
from topology.load import loads
from topology.model import DEFAULT_CONNECTIONS_PER_ADDRESS


async def _hub(per_address: int = DEFAULT_CONNECTIONS_PER_ADDRESS) -> tuple[WebHub, str, int]:
    feed = MarketFeed([_inst()])
    hub = WebHub("test", {"TCS": _inst()}, feed, stats=dict, history=lambda *_: [], per_address=per_address)
    server = await hub.serve("127.0.0.1", 0)
    return hub, "127.0.0.1", next(iter(server.sockets)).getsockname()[1]


async def _http(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One raw HTTP/1.1 GET: return the status and the body (the connection closes after it)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def _released(hub: WebHub, n: int) -> None:
    # The count drops when the server sees the connection go; wait for it (bounded).
    deadline = time.monotonic() + 10
    while sum(hub.open.values()) > n:
        assert time.monotonic() < deadline, dict(hub.open)
        await asyncio.sleep(0.01)


def test_an_oversized_websocket_message_closes_that_connection_with_1009_only() -> None:
    async def scenario() -> None:
        hub, host, port = await _hub()
        try:
            async with connect(f"ws://{host}:{port}/ws") as other, connect(f"ws://{host}:{port}/ws",
                                                                          max_size=None) as ws:
                await ws.recv()
                await other.recv()
                await ws.send("x" * (webhub.MAX_REQUEST + 1))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                assert ws.close_code == 1009  # message too big
                await other.send(json.dumps({"op": "ping", "id": 1}))
                assert json.loads(await asyncio.wait_for(other.recv(), 10))["t"] == "pong"
                # The limit itself is a message the hub takes.
                await other.send(json.dumps({"op": "ping", "id": "y" * (webhub.MAX_REQUEST - 40)}))
                assert json.loads(await asyncio.wait_for(other.recv(), 10))["t"] == "pong"
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_an_http_request_over_the_size_limit_is_refused_431_with_a_reason() -> None:
    async def scenario() -> None:
        hub, host, port = await _hub()
        try:
            # Each header line under websockets' own 8 KiB limit; together over the hub's.
            big = {f"X-Pad-{i}": "p" * 6000 for i in range(3)}
            status, body = await _http(host, port, "/healthz", big)
            assert status == 431
            err = json.loads(body)
            assert err["error"] == "request_too_large" and str(webhub.MAX_HTTP_REQUEST) in err["text"]
            with pytest.raises(InvalidStatus) as e:
                async with connect(f"ws://{host}:{port}/ws", additional_headers=big):
                    pass
            assert e.value.response.status_code == 431
            assert (await _http(host, port, "/healthz"))[0] == 200
            assert hub.stats()["http_refused"] == {"request_too_large": 2}
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_connections_past_the_per_address_cap_are_refused_429_until_one_closes() -> None:
    async def scenario() -> None:
        hub, host, port = await _hub(per_address=3)
        url = f"ws://{host}:{port}/ws"
        try:
            conns: list[Any] = [await connect(url) for _ in range(3)]
            for c in conns:
                assert json.loads(await c.recv())["t"] == "hello"
            with pytest.raises(InvalidStatus) as e:
                await connect(url)
            assert e.value.response.status_code == 429
            err = json.loads(e.value.response.body)
            assert err["error"] == "too_many_connections" and "limit is 3 per address" in err["text"]
            status, body = await _http(host, port, "/healthz")  # a plain request counts too
            assert status == 429 and json.loads(body)["error"] == "too_many_connections"
            await conns.pop().close()
            await _released(hub, 2)
            conns.append(await connect(url))  # a place is free again
            assert json.loads(await conns[-1].recv())["t"] == "hello"
            assert hub.open == {"127.0.0.1": 3}
            assert hub.stats()["http_refused"] == {"too_many_connections": 2}
            for c in conns:
                await c.close()
            await _released(hub, 0)
            assert not hub.open, "every connection gave its place back"
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_refused_handshakes_and_plain_requests_give_their_places_back() -> None:
    async def scenario() -> None:
        hub, host, port = await _hub(per_address=2)
        try:
            for _ in range(10):  # far more than the cap, one after the other: each closes and frees its place
                assert (await _http(host, port, "/symbols"))[0] == 200
                assert (await _http(host, port, "/ws"))[0] == 426  # not an upgrade: refused by websockets
            await _released(hub, 0)
            async with connect(f"ws://{host}:{port}/ws") as ws:
                assert json.loads(await ws.recv())["t"] == "hello"
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_topology_sets_the_per_address_cap_and_refuses_one_below_1() -> None:
    ticker = '[ticker]\nhost = "127.0.0.1"\npub_port = 7170\nsnapshot_port = 7172\nhttp_port = 7171\n'
    t = loads(_text(extra=ticker)).ticker
    assert t is not None and t.connections_per_address == DEFAULT_CONNECTIONS_PER_ADDRESS
    t = loads(_text(extra=ticker + "connections_per_address = 500\n")).ticker
    assert t is not None and t.connections_per_address == 500
    assert _one(_text(extra=ticker + "connections_per_address = 0\n")) == (
        "ticker.connections_per_address: must be at least 1, got 0")


def test_bytes_after_an_http_request_drop_that_connection_with_one_line_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    # websockets 17 fails its own assertion on them (found by tests/test_fuzz_nodes.py): no traceback in the log.
    async def scenario() -> None:
        hub, host, port = await _hub()
        try:
            for junk in (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\r\n",
                         b"GET /ws HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n"):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(junk)
                await asyncio.wait_for(reader.read(), 10)
                writer.close()
            assert (await _http(host, port, "/healthz"))[0] == 200
            await _released(hub, 0)
        finally:
            await hub.close()

    with caplog.at_level("INFO", logger="websockets.server"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= 40], [r.getMessage() for r in caplog.records]
    assert sum("sent bytes after its HTTP request" in r.getMessage() for r in caplog.records) == 2
