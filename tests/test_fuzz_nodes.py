"""Hostile input over real sockets against a running exchange: every case is refused or dropped, nothing breaks.

One local exchange (two matchers, the ticker, the persistence node, two gateways) runs for the module.  Each
test throws generated input at one socket: the gateways' broker port (before and after logon), a matcher's
order socket and its recovery socket (replays, snapshots), the ticker's snapshot socket and its WebSocket.
Every answer must be a valid message of the protocol that refuses (never one that says an order went in),
and after each test every node is alive, the books are as they were (the matchers' own snapshots), a good
order is accepted and cancelled, and no node's log holds a traceback (a handler's failure is logged, not
fatal, so a log is where a crash shows).  Nothing may hang: every read has a deadline.

Sockets are opened by :func:`_connect` only: when the nodes require keys it is the one place to give them.
The examples are derandomized, so a CI run meets the same inputs as a local one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from fabric import protocol as p
from fabric.auth import Keyring, connect
from fabric.constants import MAX_QTY, REJECT_NAMES
from fabric.protocol import PROTOCOL_REASONS, ProtocolError
from tests.helpers import LOCAL, node_keys, topology_on_free_ports
from tests.test_protocol import SAMPLES
from topology.launcher import Launcher

pytestmark = pytest.mark.e2e

# No shrinking: a failing example waits out DEADLINE_S at each try, and the first one found is printed whole.
NODE_FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate],
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                            HealthCheck.data_too_large])
QUIET_S = 0.15  # after the last answer, how long a batch's stragglers are awaited
DEADLINE_S = 10.0  # no read waits longer: past it the node is hung, and the test fails
REASONS = set(PROTOCOL_REASONS) | set(REJECT_NAMES.values())
# Answers a broker may get for input that must change nothing.
REFUSING = (p.Rejected, p.OrderStatus, p.Error, p.LogonAck, p.LogonReject, p.Heartbeat, p.Logout, p.OpenOrders)
_ids = itertools.count(1)


_KEYS: list[Keyring | None] = [None]  # what the fuzzers dial the nodes with: set by the `ex` fixture


def _connect(ctx: zmq.Context[Any], kind: int, endpoint: str, identity: bytes | None = None,
             keys: Keyring | None = None) -> zmq.Socket[Any]:
    """Open a socket of ``kind`` to a node's ``endpoint``: the one place the fuzzers connect.

    The fuzzers are insiders: they dial the matchers with a node's key (a gateway's; ``keys`` for another), so
    what they send reaches the code that reads it. Without a key, CURVE would refuse them before any byte is
    read (tests/test_auth.py checks that).
    """
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        s.setsockopt(zmq.ROUTING_ID, identity)
    connect(s, endpoint, keys if keys is not None else _KEYS[0])
    return s


def _collect(sock: zmq.Socket[Any], until: Any = None, quiet: float = QUIET_S) -> list[list[bytes]]:
    """Read messages until ``until(frames)`` is true for one (then a quiet moment more), or ``quiet`` s pass
    without any; fail after ``DEADLINE_S``."""
    got: list[list[bytes]] = []
    deadline = time.monotonic() + DEADLINE_S
    done = until is None
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no end of answers within {DEADLINE_S} s: the node hangs ({len(got)} messages)"
        if not sock.poll(int(1000 * (min(quiet, left) if done else left))):
            if done:
                return got
            continue
        frames = sock.recv_multipart()
        got.append(frames)
        if not done and until(frames):
            done = True


# --------------------------------------------------------------------------
# The exchange, and what "unharmed" means
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    tmp = tmp_path_factory.mktemp("fuzz-exchange")
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp), workdir=tmp, extra_args={"matcher": ["--fsync", "none"]})
    launcher.start()
    _KEYS[0] = node_keys(launcher.topo)
    try:
        yield launcher
    finally:
        _KEYS[0] = None
        launcher.stop()


@pytest.fixture(scope="module")
def ctx() -> Iterator[zmq.Context[Any]]:
    c = zmq.Context()
    yield c
    c.term()


def _books(ex: Launcher, ctx: zmq.Context[Any]) -> dict[str, tuple[Any, Any]]:
    """Every symbol's bids and asks, from each shard's matcher (its recovery socket's snapshot)."""
    books: dict[str, tuple[Any, Any]] = {}
    for no, shard in enumerate(ex.topo.shards):
        s = _connect(ctx, zmq.DEALER, shard.replicas[0].recovery.connect)
        try:
            s.send(p.encode(p.SnapshotRequest(shard=no)))
            assert s.poll(int(DEADLINE_S * 1000)), f"shard {shard.name}: no snapshot"
            snap = p.decode_internal(s.recv())
            assert isinstance(snap, p.SnapshotReply)
            books.update({b.symbol: (b.bids, b.asks) for b in snap.books})
        finally:
            s.close()
    return books


@pytest.fixture(scope="module")
def books0(ex: Launcher, ctx: zmq.Context[Any]) -> dict[str, tuple[Any, Any]]:
    return _books(ex, ctx)


def _good_order_round_trip(ex: Launcher, ctx: zmq.Context[Any], gateway: int = 0) -> None:
    """A broker logs on, rests a buy at the bottom of each shard's first symbol's band, and cancels it."""
    s = _connect(ctx, zmq.DEALER, ex.topo.gateways[gateway].endpoint.connect)
    try:
        s.send(p.encode(p.Logon(broker="PROBE")))
        assert any(isinstance(p.decode_server(f), p.LogonAck) for m in _collect(s, lambda m: True) for f in m)
        for shard in ex.topo.shards:
            inst = ex.topo.instrument(shard.symbols[0])
            assert inst.band_lo is not None
            oid = f"probe-{uuid.uuid4().hex[:12]}"
            s.send(p.encode(p.New(oid=oid, symbol=inst.symbol, side="buy", type="limit",
                                  price=inst.to_price(inst.band_lo), qty=inst.lot, tif="GTC")))
            got = [p.decode_server(f) for m in _collect(s, lambda m: b"order_status" in m[-1]) for f in m]
            assert any(isinstance(a, p.Accepted) and a.oid == oid for a in got), got
            s.send(p.encode(p.Cancel(oid=oid, symbol=inst.symbol)))
            got = [p.decode_server(f) for m in _collect(s, lambda m: b"order_status" in m[-1]) for f in m]
            assert any(isinstance(a, p.Cancelled) and a.oid == oid for a in got), got
    finally:
        s.close()


def _assert_alive(ex: Launcher) -> None:
    dead = [n.label for n in ex.nodes if not n.alive]
    assert not dead, f"nodes died: {dead}"


def _assert_unharmed(ex: Launcher, ctx: zmq.Context[Any], books0: dict[str, tuple[Any, Any]]) -> None:
    _assert_alive(ex)
    assert _books(ex, ctx) == books0, "the books changed"
    _good_order_round_trip(ex, ctx)
    assert _books(ex, ctx) == books0
    for n in ex.nodes:
        text = n.log_path.read_text(errors="replace")
        assert "Traceback" not in text, f"{n.label} logged a failure:\n{text[text.index('Traceback') - 300:][:3000]}"


# --------------------------------------------------------------------------
# What a hostile peer sends
# --------------------------------------------------------------------------

BAD_QTY = st.sampled_from([0, -1, -(2**63), 2**63 - 1, 2**63, 2**64 - 1, MAX_QTY + 1])
hostile = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | BAD_QTY
           | st.sampled_from([math.nan, math.inf, -math.inf, 1e308])
           | st.sampled_from(["", "x" * 70_000, "é" * 40, "\x00", "-1", "1e5", "NaN", "BUY", "stop", "GTD", "TCS",
                              "NOPE", "0.01", "3500.00000001", "999999999999999.99999999", "0"])
           | st.text(max_size=12) | st.binary(max_size=12))
values = st.recursive(hostile, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


def _spoil_qty(obj: Any, qty: int) -> Any:
    # Every `qty` anywhere in the message made one no book takes: the input may reach a book, never change it.
    if isinstance(obj, dict):
        return {k: (qty if k == "qty" else _spoil_qty(v, qty)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_spoil_qty(v, qty) for v in obj]
    return obj


@st.composite
def hostile_message(draw: st.DrawFn, family: str) -> bytes:
    """A message of ``family``'s samples with hostile values in some fields, retagged or not; or random bytes."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=200))
    raw = msgpack.unpackb(p.encode(draw(st.sampled_from(SAMPLES[family]))), raw=False)
    for _ in range(draw(st.integers(0 if kind == 1 else 1, 3))):
        raw[draw(st.sampled_from(sorted(raw)) | st.text(max_size=5))] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        raw["t"] = draw(st.sampled_from(sorted({str(m.__struct_config__.tag) for ms in SAMPLES.values()
                                                for m in ms})))
    return msgpack.packb(_spoil_qty(raw, draw(BAD_QTY)), use_bin_type=True)


@st.composite
def hostile_frames(draw: st.DrawFn, family: str) -> list[bytes]:
    """One ZeroMQ message: usually one frame, sometimes none of value or several."""
    n = draw(st.sampled_from([1, 1, 1, 1, 2, 3]))
    return [draw(hostile_message(family)) for _ in range(n)]


def _check_answer(body: bytes) -> Any:
    # An answer to a broker: a valid message; one that refuses, with a known reason.
    msg = p.decode_server(body)
    assert isinstance(msg, REFUSING), f"hostile input got {msg!r}"
    reason = getattr(msg, "reason", None)
    if isinstance(msg, p.Rejected | p.Error | p.LogonReject):
        assert reason in REASONS and msg.text, msg
    return msg


# --------------------------------------------------------------------------
# The gateway
# --------------------------------------------------------------------------


@NODE_FUZZ
@given(batch=st.lists(hostile_frames("client"), min_size=1, max_size=8), logon_first=st.booleans(),
       gateway=st.integers(0, 1))
def test_gateway_refuses_hostile_broker_input_before_and_after_logon(
        ex: Launcher, ctx: zmq.Context[Any], batch: list[list[bytes]], logon_first: bool, gateway: int) -> None:
    s = _connect(ctx, zmq.DEALER, ex.topo.gateways[gateway].endpoint.connect, f"fz-{next(_ids)}".encode())
    try:
        if logon_first:
            s.send(p.encode(p.Logon(broker=f"FZ{next(_ids)}")))
            (ack,) = _collect(s, lambda m: True)
            assert isinstance(p.decode_server(ack[0]), p.LogonAck)
        for frames in batch:
            s.send_multipart(frames)
        s.send(p.encode(p.Heartbeat()))  # answered in the gateway's turn: the batch's own answers are due by then
        got = _collect(s, lambda m: any(b"heartbeat" in f for f in m))
        answers = [_check_answer(f) for m in got for f in m]
        assert answers, "every message is answered (an error, a refusal) until the connection is ignored"
    finally:
        s.close()
    _assert_alive(ex)


def test_gateway_after_fuzzing_is_unharmed(ex: Launcher, ctx: zmq.Context[Any],
                                           books0: dict[str, tuple[Any, Any]]) -> None:
    _assert_unharmed(ex, ctx, books0)


def test_gateway_drops_a_connection_over_its_message_limit_and_serves_the_others(
        ex: Launcher, ctx: zmq.Context[Any], books0: dict[str, tuple[Any, Any]]) -> None:
    huge = _connect(ctx, zmq.DEALER, ex.topo.gateways[0].endpoint.connect, b"fz-huge")
    large = _connect(ctx, zmq.DEALER, ex.topo.gateways[0].endpoint.connect, b"fz-large")
    try:
        # 2 MiB: over ZeroMQ's limit on the socket (the peer is dropped, unanswered); 100 KiB: over the protocol's
        # (refused with its reason).
        huge.send(b"\x92" + b"\xa1x" * (1 << 20))
        assert _collect(huge, quiet=0.5) == []
        for size in (100_000, 1_000_000):  # a string of 1 MB: under ZeroMQ's limit, over the protocol's
            large.send(msgpack.packb({"t": "new", "oid": "o", "symbol": "x" * size}))
            got = [p.decode_server(f) for m in _collect(large, lambda m: True) for f in m]
            assert [(type(a), a.reason) for a in got] == [(p.Error, "message_too_large")], got
    finally:
        huge.close()
        large.close()
    _assert_unharmed(ex, ctx, books0)


def test_gateway_ignores_a_flood_before_logon_after_telling_it_once(ex: Launcher, ctx: zmq.Context[Any]) -> None:
    s = _connect(ctx, zmq.DEALER, ex.topo.gateways[1].endpoint.connect, b"fz-flood")
    try:
        for _ in range(2000):
            s.send(b"\xc1 garbage")
        got = [p.decode_server(f) for m in _collect(s, quiet=0.5) for f in m]
        assert len(got) == 16 and all(isinstance(a, p.Error) for a in got)
        assert got[-1].reason == "not_logged_on" and "ignored" in got[-1].text
    finally:
        s.close()


# --------------------------------------------------------------------------
# A matcher's order socket and its recovery socket
# --------------------------------------------------------------------------


def _check_internal(body: bytes) -> Any:
    # A matcher's answer: an error with a reason, or a reply whose reports all refuse.
    try:
        msg: Any = p.decode_internal(body)
    except ProtocolError:
        msg = p.decode_server(body)
        assert isinstance(msg, p.Error) and msg.reason in REASONS and msg.text, msg
        return msg
    for reply in msg.replies if isinstance(msg, p.ReplyBatch) else [msg]:
        if isinstance(reply, p.CommandReply):
            for r in reply.reports or ():
                report = p.decode_pub(r)
                assert isinstance(report, p.ExRejected), f"hostile command got {report!r}"
            assert reply.status is None or reply.status.state in ("rejected", "unknown"), reply
    return msg


@NODE_FUZZ
@given(batch=st.lists(hostile_frames("internal"), min_size=1, max_size=8), shard=st.integers(0, 1))
def test_matcher_order_socket_refuses_hostile_commands(ex: Launcher, ctx: zmq.Context[Any],
                                                       batch: list[list[bytes]], shard: int) -> None:
    s = _connect(ctx, zmq.DEALER, ex.topo.shards[shard].replicas[0].order.connect)
    try:
        for frames in batch:
            s.send_multipart(frames)
        got = _collect(s, lambda m: True)
        assert got, "the matcher answers"
        for m in got:
            _check_internal(m[-1])
    finally:
        s.close()
    _assert_alive(ex)


@NODE_FUZZ
@given(batch=st.lists(hostile_frames("internal") | st.builds(
    lambda first, last, shard: [p.encode(p.ReplayRequest(shard=shard, first=first, last=last))],
    st.sampled_from([1, 2, 10**6, 2**63 - 1]), st.sampled_from([1, 5, 10**6, 2**63 - 1, 2**64 - 1]),
    st.sampled_from([0, 1, 7, 2**64 - 1])), min_size=1, max_size=6), shard=st.integers(0, 1))
def test_matcher_recovery_socket_answers_or_refuses_hostile_requests(ex: Launcher, ctx: zmq.Context[Any],
                                                                    batch: list[list[bytes]], shard: int) -> None:
    s = _connect(ctx, zmq.DEALER, ex.topo.shards[shard].replicas[0].recovery.connect)
    try:
        for frames in batch:
            s.send_multipart(frames)
        for m in _collect(s, lambda m: True):
            msg = _check_internal(m[-1])
            assert isinstance(msg, p.Error | p.ReplayReply | p.SnapshotReply), msg
    finally:
        s.close()
    _assert_alive(ex)


def test_matchers_after_fuzzing_are_unharmed(ex: Launcher, ctx: zmq.Context[Any],
                                             books0: dict[str, tuple[Any, Any]]) -> None:
    _assert_unharmed(ex, ctx, books0)


# --------------------------------------------------------------------------
# The ticker: its snapshot socket and its WebSocket
# --------------------------------------------------------------------------

TICKER_MAX_REQUEST = 1 << 16  # the ticker's snapshot socket drops a peer that sends a larger message

snapshot_requests = st.builds(
    lambda symbols, extra: msgpack.packb({"t": "snapshot_request", "v": 1, "symbols": symbols, **extra}),
    st.none() | st.lists(st.text(max_size=8) | st.sampled_from(["TCS", "INFY", "", "\x00"]), max_size=50)
    | st.sampled_from([["x" * 1000] * 50, list(range(5)), "TCS", 7, {"a": 1}]),
    st.dictionaries(st.text(max_size=4), hostile, max_size=2))


@NODE_FUZZ
@given(batch=st.lists(st.lists(snapshot_requests | hostile_message("client"), min_size=1, max_size=3),
                      min_size=1, max_size=6))
def test_ticker_snapshot_socket_answers_every_request_with_a_snapshot_or_an_error(
        ex: Launcher, ctx: zmq.Context[Any], batch: list[list[bytes]]) -> None:
    assert ex.topo.ticker is not None
    assume(all(sum(map(len, frames)) < TICKER_MAX_REQUEST for frames in batch))  # larger: dropped (tested below)
    s = _connect(ctx, zmq.DEALER, ex.topo.ticker.snapshot.connect)
    try:
        for frames in batch:
            s.send_multipart(frames)
        got = _collect(s, lambda m: True)
        while len(got) < len(batch):
            got += _collect(s, lambda m: True)
        assert len(got) == len(batch), "one answer per request"
        for frames, m in zip(batch, got, strict=True):
            assert m[:-1] == frames[:-1], "the answer comes back with the request's envelope"
            answer = msgpack.unpackb(m[-1])
            assert answer["t"] in ("snapshot", "error"), answer
            if answer["t"] == "error":
                assert answer["reason"] == "malformed" and answer["text"]
    finally:
        s.close()
    _assert_alive(ex)


ws_frames = (st.text(max_size=200) | st.binary(max_size=200)
             | st.builds(json.dumps, st.fixed_dictionaries(
                 {"op": st.sampled_from(["subscribe", "unsubscribe", "snapshot", "ping", "buy", ""]) | st.integers()},
                 optional={"symbols": st.sampled_from(["*", None, ["TCS"], ["NOPE"] * 3000, [1, 2], "TCS", {}]),
                           "channels": st.sampled_from([["quote"], ["news"], "quote", [None], []]),
                           "id": st.integers(-(2**70), 2**70) | st.text(max_size=30) | st.none()}))
             | st.sampled_from(["[" * 10_000, "{}", "null", '{"op":NaN}', "1e999", '"\\ud800"']))


@NODE_FUZZ
@given(st.lists(ws_frames, min_size=1, max_size=8))
def test_websocket_answers_hostile_requests_and_keeps_the_connection(ex: Launcher, frames: list[str | bytes]) -> None:
    assert ex.topo.ticker is not None
    url = ex.topo.ticker.ws_url

    async def scenario() -> None:
        async with ws_connect(url, max_size=None) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))["t"] == "hello"
            for f in frames:
                await ws.send(f)
            await ws.send(json.dumps({"op": "ping", "id": "marker"}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))
                items = msg if isinstance(msg, list) else [msg]
                for m in items:
                    assert m["t"] in ("snapshot", "quote", "depth", "bars", "heartbeat", "pong", "error"), m
                    if m["t"] == "error":
                        assert m["reason"] in ("malformed", "unknown_op", "unknown_symbol", "unknown_channel"), m
                if any(m["t"] == "pong" and m["id"] == "marker" for m in items):
                    return

    asyncio.run(scenario())
    _assert_alive(ex)


def test_websocket_closes_an_oversized_message_with_1009_and_serves_the_others(ex: Launcher) -> None:
    assert ex.topo.ticker is not None
    url = ex.topo.ticker.ws_url

    async def scenario() -> None:
        async with ws_connect(url, max_size=None) as ws:
            await ws.recv()
            await ws.send("x" * (1 << 20))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), DEADLINE_S)
            assert ws.close_code == 1009
        async with ws_connect(url) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))["t"] == "hello"

    asyncio.run(scenario())


def test_ticker_snapshot_socket_drops_an_oversized_request_and_serves_the_others(ex: Launcher,
                                                                                 ctx: zmq.Context[Any]) -> None:
    assert ex.topo.ticker is not None
    big = _connect(ctx, zmq.DEALER, ex.topo.ticker.snapshot.connect)
    ok = _connect(ctx, zmq.DEALER, ex.topo.ticker.snapshot.connect)
    try:
        big.send(msgpack.packb({"t": "snapshot_request", "symbols": ["x" * TICKER_MAX_REQUEST]}))
        assert _collect(big, quiet=0.5) == [], "dropped, unanswered"
        ok.send(msgpack.packb({"t": "snapshot_request", "symbols": ["TCS"]}))
        (m,) = _collect(ok, lambda m: True)
        assert list(msgpack.unpackb(m[-1])["symbols"]) == ["TCS"]
    finally:
        big.close()
        ok.close()


http_values = (st.text(max_size=20) | st.sampled_from(["TCS", "1m", "1d", "5m", "1s", "x", "", "-1", "0",
                                                     "9" * 5000, "-" + "9" * 30, str(2**63), str(-(2**64)),
                                                     "2025-13-45T99:00:00", "2025-11-25T09:15:00Z", "\x00", "%"]))
http_requests = st.builds(
    lambda path, query: path + ("?" + urllib.parse.urlencode(query) if query else ""),
    st.sampled_from(["/", "/history", "/snapshot", "/symbols", "/stats", "/healthz", "/static/app.js",
                     "/static/../../etc/passwd", "/nope", "//", "/ws"]),
    st.dictionaries(st.sampled_from(["symbol", "interval", "from", "to", "batch"]) | st.text(max_size=4),
                    http_values, max_size=4))


async def _http_get(host: str, port: int, target: str) -> int:
    """One raw HTTP/1.1 GET of ``target``: return the status (the server closes the connection after it)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), DEADLINE_S)
        await asyncio.wait_for(reader.read(), DEADLINE_S)
    finally:
        writer.close()
    return int(line.split()[1])


@NODE_FUZZ
@given(st.lists(http_requests, min_size=1, max_size=5))
def test_http_answers_hostile_requests_with_a_status_never_an_internal_error(ex: Launcher, targets: list[str]) -> None:
    assert ex.topo.ticker is not None
    host, port = "127.0.0.1", ex.topo.ticker.http_port

    async def scenario() -> list[int]:
        return [await _http_get(host, port, t) for t in targets]

    for target, status in zip(targets, asyncio.run(scenario()), strict=True):
        assert status in (200, 400, 404, 414, 426, 431), (target, status)
    _assert_alive(ex)


@NODE_FUZZ
@given(st.binary(max_size=300) | st.builds(lambda b: b"GET /" + b + b" HTTP/1.1\r\n", st.binary(max_size=100)))
def test_http_port_answers_or_closes_on_bytes_that_are_no_request(ex: Launcher, junk: bytes) -> None:
    assert ex.topo.ticker is not None
    port = ex.topo.ticker.http_port

    async def scenario() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(junk + b"\r\n\r\n")
            # websockets answers a request it cannot parse, and closes a connection that sends no whole request
            # within its opening handshake timeout (10 s): either way the connection ends.
            return await asyncio.wait_for(reader.read(), DEADLINE_S + 5)
        finally:
            writer.close()

    answer = asyncio.run(scenario())
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert 200 <= status < 500, answer[:200]
    _assert_alive(ex)


def test_ticker_after_fuzzing_is_unharmed(ex: Launcher, ctx: zmq.Context[Any],
                                          books0: dict[str, tuple[Any, Any]]) -> None:
    _assert_unharmed(ex, ctx, books0)
    assert ex.topo.ticker is not None
    s = _connect(ctx, zmq.DEALER, ex.topo.ticker.snapshot.connect)
    try:
        s.send(msgpack.packb({"t": "snapshot_request", "v": 1, "symbols": ["TCS"]}))
        (m,) = _collect(s, lambda m: True)
        assert "TCS" in msgpack.unpackb(m[-1])["symbols"]
    finally:
        s.close()
