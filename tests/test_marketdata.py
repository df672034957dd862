"""The market data client's Clone pattern, against a scripted ticker that follows docs/market-data.md.

The scripted ticker (a real ZeroMQ PUB and snapshot ROUTER, driven by the test
in its own thread of control) decides what is published, what is dropped or
sent twice, and when and how snapshot requests are answered.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from fabric.client import BrokerClient
from fabric.marketdata import HEARTBEAT_TOPIC, KINDS, MarketDataClient, Update, topic_of
from fabric.protocol import Fill
from tests.helpers import LOCAL, ROOT, free_port, gateway_endpoints, topology_on_free_ports
from topology.clients import market_data_client
from topology.launcher import Launcher
from topology.model import GATEWAY, MATCHER, TICKER

pytestmark = pytest.mark.timeout(60)

S = 1_000_000_000  # ns per second
T0 = 1_764_063_000 * S


def _empty(kind: str, sym: str) -> dict[str, Any]:
    base: dict[str, Any] = {"t": kind, "v": 1, "symbol": sym, "seq": 0, "ts": T0}
    if kind == "quote":
        base.update(ref_price="100.00", last=None, last_qty=None, last_ts=None, change=None, change_pct=None,
                    open=None, high=None, low=None, volume=0, turnover="0", vwap=None, trades=0, trade_id=0,
                    bid=None, bid_qty=None, ask=None, ask_qty=None, prints=[])
    elif kind == "depth":
        base.update(bids=[], asks=[])
    else:
        base.update(bars={})
    return base


class ScriptedTicker:
    """A ticker whose every message the test chooses: per topic ``seq`` from 1, a snapshot ROUTER.

    Every object published (or dropped) is kept, so that a snapshot can be
    answered as of any ``seq`` of each topic.
    """

    def __init__(self, ctx: zmq.Context[Any], pub_port: int, snap_port: int, symbols: tuple[str, ...]) -> None:
        self.symbols = symbols
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(f"tcp://127.0.0.1:{pub_port}")
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(f"tcp://127.0.0.1:{snap_port}")
        self.history: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.requests: list[dict[str, Any]] = []  # every request received
        self.trade_id = 0
        self.ts = T0

    # publishing

    def publish(self, kind: str, sym: str, fields: dict[str, Any], *, drop: bool = False) -> dict[str, Any]:
        hist = self.history.setdefault((kind, sym), [])
        self.ts += 1000
        obj = {**fields, "t": kind, "v": 1, "symbol": sym, "seq": len(hist) + 1, "ts": self.ts}
        hist.append(obj)
        if not drop:
            self.send(kind, sym, obj)
        return obj

    def send(self, kind: str, sym: str, obj: dict[str, Any]) -> None:
        self.pub.send_multipart([topic_of(kind, sym), msgpack.packb(obj)])

    def resend(self, kind: str, sym: str, seq: int) -> None:
        """Publish the topic's message ``seq`` again (a duplicate)."""
        self.send(kind, sym, self.history[(kind, sym)][seq - 1])

    def quote(self, sym: str, *prices: str, drop: bool = False, trade_ids: list[int] | None = None) -> dict[str, Any]:
        """Publish a quote with one print per price (new trade ids unless given)."""
        if trade_ids is None:
            trade_ids = []
            for _ in prices:
                self.trade_id += 1
                trade_ids.append(self.trade_id)
        prints = [{"trade_id": t, "ts": self.ts + i, "price": p, "qty": 1, "aggressor": "buy"}
                  for i, (t, p) in enumerate(zip(trade_ids, prices, strict=True))]
        prev = self.history.get(("quote", sym))
        trades = (prev[-1]["trades"] if prev else 0) + len(prints)
        last = prices[-1] if prices else (prev[-1]["last"] if prev else None)
        return self.publish("quote", sym, {**_empty("quote", sym), "last": last, "trades": trades,
                                           "trade_id": max(trade_ids, default=0), "prints": prints,
                                           "bid": "99.00", "bid_qty": 5, "ask": "101.00", "ask_qty": 7}, drop=drop)

    def depth(self, sym: str, bids: list[list[Any]], asks: list[list[Any]], drop: bool = False) -> dict[str, Any]:
        return self.publish("depth", sym, {"bids": bids, "asks": asks}, drop=drop)

    def bars(self, sym: str, bars: dict[str, list[dict[str, Any]]], drop: bool = False) -> dict[str, Any]:
        return self.publish("bars", sym, {"bars": bars}, drop=drop)

    def heartbeat(self) -> None:
        self.pub.send_multipart([HEARTBEAT_TOPIC, msgpack.packb({"t": "heartbeat", "v": 1, "ts": time.time_ns()})])

    def raw(self, *frames: bytes) -> None:
        self.pub.send_multipart(list(frames))

    def start_over(self) -> None:
        """Forget every topic's messages: the next ``seq`` of each is 1 again (a restarted ticker)."""
        self.history.clear()

    # the state, as a snapshot says it

    def snapshot_of(self, sym: str, as_of: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            hist = self.history.get((kind, sym), [])
            n = len(hist) if as_of is None or kind not in as_of else as_of[kind]
            upto = hist[:n]
            if kind == "bars":
                merged: dict[str, dict[int, dict[str, Any]]] = {}
                for o in upto:
                    for iv, lst in o["bars"].items():
                        for b in lst:
                            merged.setdefault(iv, {})[b["start"]] = b
                obj = {**(copy.deepcopy(upto[-1]) if upto else _empty(kind, sym)),
                       "bars": {iv: [per[k] for k in sorted(per)] for iv, per in merged.items()}}
            elif kind == "quote":
                tape = [p for o in upto for p in o["prints"]]
                obj = {**(copy.deepcopy(upto[-1]) if upto else _empty(kind, sym)), "prints": tape[-50:]}
            else:
                obj = copy.deepcopy(upto[-1]) if upto else _empty(kind, sym)
            obj["seq"] = n
            out[kind] = obj
        return out

    # the snapshot socket

    def take_requests(self) -> list[tuple[bytes, dict[str, Any]]]:
        got: list[tuple[bytes, dict[str, Any]]] = []
        while True:
            try:
                ident, body = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return got
            req = msgpack.unpackb(body)
            self.requests.append(req)
            got.append((ident, req))

    def answer(self, ident: bytes, req: dict[str, Any], as_of: dict[str, dict[str, int]] | None = None) -> None:
        wanted = req.get("symbols") or list(self.symbols)
        known = [s for s in wanted if s in self.symbols]
        self.router.send_multipart([ident, msgpack.packb({
            "t": "snapshot", "v": 1, "ts": time.time_ns(),
            "symbols": {s: self.snapshot_of(s, (as_of or {}).get(s)) for s in known},
            "unknown": [s for s in wanted if s not in self.symbols]})])

    def serve(self) -> int:
        """Answer every waiting request with the current state; return how many."""
        reqs = self.take_requests()
        for ident, req in reqs:
            self.answer(ident, req)
        return len(reqs)

    def close(self) -> None:
        self.pub.close(0)
        self.router.close(0)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.term()


@pytest.fixture
def ports() -> tuple[int, int]:
    a = free_port()
    b = free_port()
    while b == a:
        b = free_port()
    return a, b


@pytest.fixture
def ticker(ctx: zmq.Context[Any], ports: tuple[int, int]) -> Iterator[ScriptedTicker]:
    t = ScriptedTicker(ctx, *ports, ("TCS", "INFY", "SBIN"))
    yield t
    t.close()


def client(ctx: zmq.Context[Any], ports: tuple[int, int], symbols: list[str] | None = None, *, every: bool = False,
           **kw: Any) -> MarketDataClient:
    """A client of the scripted ticker on ``ports``: of ``symbols`` (default TCS and INFY), or of ``every`` symbol."""
    syms = None if every else (symbols or ["TCS", "INFY"])
    return MarketDataClient(f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}", syms, ctx=ctx, **kw)


def pump(md: MarketDataClient, tk: ScriptedTicker | None, until: Callable[[], bool], timeout: float = 5.0,
         serve: bool = True) -> list[Update]:
    """Run the client (and the ticker's heartbeats and, if ``serve``, its answers) until ``until()``."""
    got: list[Update] = []
    deadline = time.monotonic() + timeout
    last_hb = 0.0
    while True:
        if tk is not None:
            if time.monotonic() - last_hb > 0.05:
                tk.heartbeat()
                last_hb = time.monotonic()
            if serve:
                tk.serve()
        got.extend(md.poll(0.02))
        if until():
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: client {md!r}, {md.stats}")


def await_request(md: MarketDataClient, tk: ScriptedTicker) -> list[tuple[bytes, dict[str, Any]]]:
    """Run the client until the ticker has its snapshot request, unanswered; return the requests."""
    reqs: list[tuple[bytes, dict[str, Any]]] = []

    def got() -> bool:
        reqs.extend(tk.take_requests())
        return bool(reqs)

    pump(md, tk, got, serve=False)
    return reqs


def settle(md: MarketDataClient, tk: ScriptedTicker | None, seconds: float = 0.2, serve: bool = True) -> list[Update]:
    """Run the client for a while, whatever happens."""
    end = time.monotonic() + seconds
    return pump(md, tk, lambda: time.monotonic() > end, timeout=seconds + 5, serve=serve)


def data(updates: list[Update], kind: str | None = None) -> list[Update]:
    return [u for u in updates if u.kind != "heartbeat" and (kind is None or u.kind == kind)]


def assert_exact(md: MarketDataClient, tk: ScriptedTicker, sym: str) -> None:
    """The client's state of ``sym`` is the ticker's now (the quote but for its prints; the tape instead)."""
    snap = tk.snapshot_of(sym)
    q = md.quote(sym)
    assert q is not None
    assert {k: v for k, v in q.items() if k != "prints"} == {k: v for k, v in snap["quote"].items() if k != "prints"}
    assert md.tape(sym) == snap["quote"]["prints"]
    assert md.depth(sym) == snap["depth"]
    for iv, bars in snap["bars"]["bars"].items():
        assert md.bars(sym, iv) == bars
    for kind in KINDS:
        assert md.seq(sym, kind) == snap[kind]["seq"]


def bar(start_s: int, close: str, volume: int = 1) -> dict[str, Any]:
    return {"start": T0 + start_s * S, "open": "100.00", "high": close, "low": "100.00", "close": close,
            "volume": volume, "trades": volume}


# --------------------------------------------------------------------------- tests


def test_snapshot_then_updates(ctx: zmq.Context[Any], ports: tuple[int, int], ticker: ScriptedTicker) -> None:
    ticker.quote("TCS", "100.05", "100.10")
    ticker.depth("TCS", [["100.00", 10, 1]], [["100.20", 5, 2]])
    ticker.bars("TCS", {"1s": [bar(0, "100.10", 2)], "1m": [bar(0, "100.10", 2)]})
    ticker.quote("INFY", "50.00")
    with client(ctx, ports) as md:
        assert md.state == "waiting" or md.state == "syncing"
        got = pump(md, ticker, lambda: md.ready)
        assert md.state == "live"
        snap = data(got)
        assert all(u.snapshot for u in snap)
        assert {(u.kind, u.symbol) for u in snap} == {(k, s) for k in KINDS for s in ("TCS", "INFY")}
        assert_exact(md, ticker, "TCS")
        assert_exact(md, ticker, "INFY")
        assert md.quote("INFY") is not None and md.quote("INFY")["last"] == "50.00"  # type: ignore[index]
        assert md.symbols == ("TCS", "INFY")
        assert ticker.requests == [{"t": "snapshot_request", "v": 1, "symbols": ["TCS", "INFY"]}]

        ticker.quote("TCS", "100.15")
        ticker.depth("TCS", [["100.10", 3, 1]], [["100.20", 5, 2]])
        ticker.bars("TCS", {"1s": [bar(1, "100.15")]})
        ticker.quote("SBIN", "10.00")  # not asked for: not seen
        got = pump(md, ticker, lambda: md.seq("TCS", "bars") == 2)
        live = data(got)
        assert [(u.kind, u.symbol, u.data["seq"], u.snapshot) for u in live] == [
            ("quote", "TCS", 2, False), ("depth", "TCS", 2, False), ("bars", "TCS", 2, False)]
        assert_exact(md, ticker, "TCS")
        assert [p["price"] for p in md.tape("TCS")] == ["100.05", "100.10", "100.15"]
        assert md.quote("SBIN") is None
        assert md.stats.gaps == 0 and md.stats.snapshots == 1 and md.stats.applied == 3
        assert md.stats.last_heartbeat is not None and md.stats.malformed == 0


def test_held_messages_at_or_below_the_snapshot_seq_are_ignored(ctx: zmq.Context[Any], ports: tuple[int, int],
                                                                 ticker: ScriptedTicker) -> None:
    with client(ctx, ports, ["TCS"]) as md:
        reqs = await_request(md, ticker)
        # Published while the request is on its way: the client holds them.
        for px in ("100.05", "100.10", "100.15"):
            ticker.quote("TCS", px)
        settle(md, ticker, 0.2, serve=False)
        assert md.quote("TCS") is None and not md.ready
        # The snapshot was taken after quote 2: the held 1 and 2 are in it, 3 is not.
        ident, req = reqs[0]
        ticker.answer(ident, req, as_of={"TCS": {"quote": 2}})
        got = pump(md, ticker, lambda: md.ready)
        quotes = [(u.data["seq"], u.snapshot) for u in data(got, "quote")]
        assert quotes == [(2, True), (3, False)]
        assert md.seq("TCS", "quote") == 3
        assert [p["trade_id"] for p in md.tape("TCS")] == [1, 2, 3]
        assert md.stats.duplicates == 0 and md.stats.gaps == 0
        ticker.quote("TCS", "100.20")
        pump(md, ticker, lambda: md.seq("TCS", "quote") == 4)
        assert_exact(md, ticker, "TCS")


def test_dropped_message_triggers_a_snapshot_of_that_symbol_and_the_state_ends_exact(
        ctx: zmq.Context[Any], ports: tuple[int, int], ticker: ScriptedTicker) -> None:
    with client(ctx, ports) as md:
        pump(md, ticker, lambda: md.ready)
        ticker.quote("TCS", "100.05")
        ticker.bars("TCS", {"1s": [bar(0, "100.05")]})
        pump(md, ticker, lambda: md.seq("TCS", "bars") == 1)
        # Lost: a quote with two trades, its bars, a depth.
        ticker.quote("TCS", "100.10", "100.20", drop=True)
        ticker.bars("TCS", {"1s": [bar(0, "100.10", 2), bar(1, "100.20")]}, drop=True)
        ticker.depth("TCS", [["100.00", 4, 1]], [], drop=True)
        ticker.quote("TCS", "100.25")  # seq 3 after 1: a gap
        got = pump(md, ticker, lambda: md.stats.gaps == 1, serve=False)
        assert not md.ready and md.state == "syncing"
        # The other symbols go on while TCS waits for its snapshot; TCS's messages are held.
        ticker.quote("INFY", "50.00")
        ticker.quote("TCS", "100.30")
        got = pump(md, ticker, lambda: md.seq("INFY", "quote") == 1, serve=False)
        assert md.seq("TCS", "quote") == 1 and md.quote("TCS")["last"] == "100.05"  # type: ignore[index]
        assert [u.symbol for u in data(got)] == ["INFY"]
        reqs = ticker.take_requests()
        assert [r for _, r in reqs] == [{"t": "snapshot_request", "v": 1, "symbols": ["TCS"]}]
        ticker.answer(*reqs[0], as_of={"TCS": {"quote": 3}})  # taken before quote 4 came out
        got = pump(md, ticker, lambda: md.ready)
        assert [(u.kind, u.data["seq"], u.snapshot) for u in data(got)] == [
            ("quote", 3, True), ("depth", 1, True), ("bars", 2, True), ("quote", 4, False)]
        assert_exact(md, ticker, "TCS")
        assert [p["price"] for p in md.tape("TCS")] == ["100.05", "100.10", "100.20", "100.25", "100.30"]
        assert md.bars("TCS", "1s") == [bar(0, "100.10", 2), bar(1, "100.20")]
        assert md.stats.gaps == 1 and md.stats.snapshots == 2 and md.stats.snapshot_requests == 2


def test_a_gap_holds_every_kind_of_the_symbol_until_its_snapshot(ctx: zmq.Context[Any], ports: tuple[int, int],
                                                                  ticker: ScriptedTicker) -> None:
    with client(ctx, ports, ["TCS"]) as md:
        pump(md, ticker, lambda: md.ready)
        ticker.quote("TCS", "100.05")
        ticker.depth("TCS", [["100.00", 1, 1]], [])
        pump(md, ticker, lambda: md.seq("TCS", "depth") == 1)
        ticker.quote("TCS", "100.10", drop=True)
        ticker.quote("TCS", "100.15")  # quote 3 after 1: a gap
        pump(md, ticker, lambda: md.stats.gaps == 1, serve=False)
        # The depth has no gap of its own, but a snapshot taken before it must not undo it: it waits too.
        ticker.depth("TCS", [["100.05", 2, 1]], [])
        settle(md, ticker, 0.2, serve=False)
        assert md.seq("TCS", "depth") == 1 and md.depth("TCS")["bids"] == [["100.00", 1, 1]]  # type: ignore[index]
        reqs = ticker.take_requests()
        assert [r for _, r in reqs] == [{"t": "snapshot_request", "v": 1, "symbols": ["TCS"]}]
        ticker.answer(*reqs[0], as_of={"TCS": {"quote": 3, "depth": 1}})  # taken before depth 2 came out
        got = pump(md, ticker, lambda: md.ready)
        assert [(u.kind, u.data["seq"], u.snapshot) for u in data(got)] == [
            ("quote", 3, True), ("depth", 1, True), ("bars", 0, True), ("depth", 2, False)]
        assert md.stats.gaps == 1 and md.stats.duplicates == 0
        assert_exact(md, ticker, "TCS")


def test_a_gap_among_the_held_messages_asks_again(ctx: zmq.Context[Any], ports: tuple[int, int],
                                                  ticker: ScriptedTicker) -> None:
    with client(ctx, ports, ["TCS"]) as md:
        reqs = await_request(md, ticker)
        ticker.quote("TCS", "100.05")
        ticker.quote("TCS", "100.10")
        ticker.quote("TCS", "100.15", drop=True)
        ticker.quote("TCS", "100.20")
        settle(md, ticker, 0.2, serve=False)
        ticker.answer(*reqs[0], as_of={"TCS": {"quote": 1}})  # held: 2 applies, then 4 after 2 is a gap
        pump(md, ticker, lambda: md.ready)
        assert md.stats.gaps == 1 and md.stats.snapshots == 2
        assert_exact(md, ticker, "TCS")


def test_duplicates_are_ignored(ctx: zmq.Context[Any], ports: tuple[int, int], ticker: ScriptedTicker) -> None:
    with client(ctx, ports, ["TCS"]) as md:
        pump(md, ticker, lambda: md.ready)
        for px in ("100.05", "100.10", "100.15"):
            ticker.quote("TCS", px)
        ticker.resend("quote", "TCS", 3)
        ticker.resend("quote", "TCS", 2)
        ticker.bars("TCS", {"1s": [bar(0, "100.15", 3)]})
        ticker.resend("bars", "TCS", 1)
        ticker.quote("TCS", "100.20")
        got = pump(md, ticker, lambda: md.seq("TCS", "quote") == 4)
        assert [(u.kind, u.data["seq"]) for u in data(got)] == [
            ("quote", 1), ("quote", 2), ("quote", 3), ("bars", 1), ("quote", 4)]
        assert md.stats.duplicates == 3 and md.stats.gaps == 0 and md.stats.resets == 0
        assert [p["trade_id"] for p in md.tape("TCS")] == [1, 2, 3, 4]
        assert_exact(md, ticker, "TCS")


def test_tape_ignores_trade_ids_already_on_it_and_keeps_50(ctx: zmq.Context[Any], ports: tuple[int, int],
                                                            ticker: ScriptedTicker) -> None:
    ticker.quote("TCS", *[f"100.{i:02d}" for i in range(10)])  # trade ids 1-10: the snapshot's prints
    with client(ctx, ports, ["TCS"]) as md:
        pump(md, ticker, lambda: md.ready)
        assert [p["trade_id"] for p in md.tape("TCS")] == list(range(1, 11))
        ticker.quote("TCS", "101.00", "101.05", trade_ids=[9, 11])  # 9 is on the tape already
        ticker.quote("TCS", "101.05", "101.10", trade_ids=[11, 12])
        pump(md, ticker, lambda: md.seq("TCS", "quote") == 3)
        assert [p["trade_id"] for p in md.tape("TCS")] == list(range(1, 13))
        ticker.trade_id = 12
        ticker.quote("TCS", *["102.00"] * 45)  # trade ids 13-57
        pump(md, ticker, lambda: md.seq("TCS", "quote") == 4)
        assert [p["trade_id"] for p in md.tape("TCS")] == list(range(8, 58))


def test_bars_are_kept_by_start(ctx: zmq.Context[Any], ports: tuple[int, int], ticker: ScriptedTicker) -> None:
    ticker.bars("TCS", {"1s": [bar(0, "100.05")], "1m": [bar(0, "100.05")]})
    with client(ctx, ports, ["TCS"]) as md:
        pump(md, ticker, lambda: md.ready)
        assert md.bars("TCS", "1s") == [bar(0, "100.05")]
        ticker.bars("TCS", {"1s": [bar(0, "100.10", 2), bar(1, "100.20")], "1m": [bar(0, "100.20", 3)]})
        ticker.bars("TCS", {"1s": [bar(1, "100.25", 2)], "1m": [bar(0, "100.25", 4)]})
        ticker.bars("TCS", {"1s": [bar(0, "99.00", 9)]})  # an older bar again: replaced in place
        pump(md, ticker, lambda: md.seq("TCS", "bars") == 4)
        assert md.bars("TCS", "1s") == [bar(0, "99.00", 9), bar(1, "100.25", 2)]
        assert md.bars("TCS", "1m") == [bar(0, "100.25", 4)]
        assert md.bars("TCS", "5m") == [] and md.bars("NOPE", "1s") == []


def test_ticker_not_up_at_first_then_up(ctx: zmq.Context[Any], ports: tuple[int, int]) -> None:
    with client(ctx, ports, ["TCS"], timeout=0.5) as md:
        assert md.poll(0.6) == []
        assert md.state == "waiting" and not md.ready and not md.connected
        assert not md.wait_ready(0.3)
        tk = ScriptedTicker(ctx, *ports, ("TCS",))
        try:
            tk.quote("TCS", "100.05")
            pump(md, tk, lambda: md.ready)
            assert md.state == "live" and md.connected
            assert_exact(md, tk, "TCS")
            assert md.stats.snapshot_requests == 1 and md.stats.snapshot_timeouts == 0
        finally:
            tk.close()


def test_unanswered_snapshot_request_is_sent_again(ctx: zmq.Context[Any], ports: tuple[int, int],
                                                   ticker: ScriptedTicker) -> None:
    ticker.quote("TCS", "100.05")
    with client(ctx, ports, ["TCS"], timeout=0.3) as md:
        reqs = await_request(md, ticker)
        settle(md, ticker, 0.4, serve=False)  # the first request is never answered
        assert md.stats.snapshot_timeouts >= 1 and not md.ready
        ticker.answer(*reqs[0])  # too late: its DEALER is gone, so this answer never counts
        pump(md, ticker, lambda: md.ready)
        assert md.stats.snapshot_requests >= 2 and md.stats.snapshots == 1
        assert_exact(md, ticker, "TCS")


def test_error_answer_is_counted_and_the_request_sent_again(ctx: zmq.Context[Any], ports: tuple[int, int],
                                                            ticker: ScriptedTicker) -> None:
    with client(ctx, ports, ["TCS"]) as md:
        reqs = await_request(md, ticker)
        ticker.router.send_multipart([reqs[0][0], msgpack.packb({"t": "error", "reason": "malformed", "text": "x"})])
        pump(md, ticker, lambda: md.stats.errors == 1, serve=False)
        pump(md, ticker, lambda: md.ready)
        assert md.stats.snapshot_requests == 2


def test_malformed_bodies_are_counted_never_raised(ctx: zmq.Context[Any], ports: tuple[int, int],
                                                   ticker: ScriptedTicker) -> None:
    with client(ctx, ports, ["TCS"]) as md:
        pump(md, ticker, lambda: md.ready)
        bad = [
            (topic_of("quote", "TCS"), b"\xc1 not msgpack"),
            (topic_of("quote", "TCS"), msgpack.packb([1, 2, 3])),
            (topic_of("quote", "TCS"), msgpack.packb({"t": "quote", "symbol": "TCS"})),  # no seq
            (topic_of("quote", "TCS"), msgpack.packb({"t": "quote", "symbol": "TCS", "seq": "1"})),
            (topic_of("quote", "TCS"), msgpack.packb({"t": "quote", "symbol": "INFY", "seq": 1})),
            (topic_of("quote", "TCS"), msgpack.packb({"t": "quote", "symbol": "TCS", "seq": 1, "prints": 7})),
            (topic_of("depth", "TCS"), msgpack.packb({"t": "depth", "symbol": "TCS", "seq": 1, "bids": "x"})),
            (topic_of("bars", "TCS"), msgpack.packb({"t": "bars", "symbol": "TCS", "seq": 1,
                                                     "bars": {"1s": [{"open": "1"}]}})),
            (HEARTBEAT_TOPIC, msgpack.packb({"t": "heartbeat"})),
        ]
        for topic, body in bad:
            ticker.raw(topic, body)
        ticker.raw(topic_of("quote", "TCS"))  # one frame
        ticker.quote("TCS", "100.05")
        pump(md, ticker, lambda: md.seq("TCS", "quote") == 1)
        assert md.stats.malformed == len(bad) + 1
        assert md.stats.gaps == 0 and md.ready
        assert_exact(md, ticker, "TCS")


def test_malformed_snapshot_answer_is_counted_and_asked_again(ctx: zmq.Context[Any], ports: tuple[int, int],
                                                              ticker: ScriptedTicker) -> None:
    with client(ctx, ports, ["TCS"]) as md:
        reqs = await_request(md, ticker)
        ticker.router.send_multipart([reqs[0][0], b"\xc1"])
        pump(md, ticker, lambda: md.stats.malformed == 1, serve=False)
        pump(md, ticker, lambda: md.ready)
        assert md.stats.snapshot_requests == 2 and md.stats.snapshots == 1


def test_a_restarted_ticker_is_taken_afresh(ctx: zmq.Context[Any], ports: tuple[int, int]) -> None:
    tk = ScriptedTicker(ctx, *ports, ("TCS",))
    with client(ctx, ports, ["TCS"]) as md:
        try:
            for px in ("100.05", "100.10", "100.15", "100.20", "100.25"):
                tk.quote("TCS", px)
            pump(md, tk, lambda: md.ready and md.seq("TCS", "quote") == 5)
        finally:
            tk.close()
        pump(md, None, lambda: md.state == "reconnecting")
        tk = ScriptedTicker(ctx, *ports, ("TCS",))  # its numbers start over
        try:
            tk.trade_id = 100
            tk.quote("TCS", "200.00")
            tk.quote("TCS", "200.05")
            pump(md, tk, lambda: md.ready)
            assert md.stats.reconnects == 1
            assert_exact(md, tk, "TCS")
            tk.quote("TCS", "200.10")
            pump(md, tk, lambda: md.seq("TCS", "quote") == 3)
            assert_exact(md, tk, "TCS")
        finally:
            tk.close()


def test_seq_going_back_by_more_than_one_takes_the_symbol_afresh(ctx: zmq.Context[Any], ports: tuple[int, int],
                                                                  ticker: ScriptedTicker) -> None:
    with client(ctx, ports, ["TCS"]) as md:
        pump(md, ticker, lambda: md.ready)
        for px in ("100.05", "100.10", "100.15"):
            ticker.quote("TCS", px)
        pump(md, ticker, lambda: md.seq("TCS", "quote") == 3)
        ticker.start_over()
        ticker.quote("TCS", "300.00")  # seq 1 after 3, on the same connection
        pump(md, ticker, lambda: md.stats.resets == 1 and md.ready)
        assert md.stats.snapshots == 2 and md.stats.gaps == 0
        assert_exact(md, ticker, "TCS")


def test_unknown_symbols_are_reported(ctx: zmq.Context[Any], ports: tuple[int, int], ticker: ScriptedTicker) -> None:
    with client(ctx, ports, ["TCS", "NOPE"]) as md:
        pump(md, ticker, lambda: md.ready)
        assert md.unknown == {"NOPE"} and md.symbols == ("TCS",)
        assert md.quote("NOPE") is None


def test_every_symbol_when_none_is_named(ctx: zmq.Context[Any], ports: tuple[int, int],
                                         ticker: ScriptedTicker) -> None:
    ticker.quote("SBIN", "10.00")
    with client(ctx, ports, every=True) as md:
        pump(md, ticker, lambda: md.ready)
        assert ticker.requests == [{"t": "snapshot_request", "v": 1, "symbols": None}]
        assert md.symbols == ("TCS", "INFY", "SBIN")
        ticker.quote("INFY", "50.00")
        ticker.quote("SBIN", "10.05", drop=True)
        ticker.quote("SBIN", "10.10")
        pump(md, ticker, lambda: md.seq("INFY", "quote") == 1 and md.seq("SBIN", "quote") == 3 and md.ready)
        for sym in ticker.symbols:
            assert_exact(md, ticker, sym)
        assert ticker.requests[-1]["symbols"] == ["SBIN"]


def test_kinds_not_asked_for_are_not_kept(ctx: zmq.Context[Any], ports: tuple[int, int],
                                          ticker: ScriptedTicker) -> None:
    with client(ctx, ports, ["TCS"], kinds=("quote",)) as md:
        pump(md, ticker, lambda: md.ready)
        ticker.depth("TCS", [["100.00", 1, 1]], [])
        ticker.quote("TCS", "100.05")
        got = pump(md, ticker, lambda: md.seq("TCS", "quote") == 1)
        assert {u.kind for u in data(got)} == {"quote"} and md.depth("TCS") is None


def test_updates_generator_and_close(ctx: zmq.Context[Any], ports: tuple[int, int], ticker: ScriptedTicker) -> None:
    md = client(ctx, ports, ["TCS"])
    pump(md, ticker, lambda: md.ready)
    ticker.quote("TCS", "100.05")
    seen = [u for u in md.updates(idle=0.3) if u.kind == "quote"]
    assert [u.data["seq"] for u in seen] == [1]
    md.close()
    assert md.state == "closed"
    with pytest.raises(RuntimeError):
        md.poll()
    md.close()  # twice is fine


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="kinds"):
        MarketDataClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", kinds=("quotes",))
    with pytest.raises(ValueError, match="symbol"):
        MarketDataClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", ["A\x00B"])


def test_market_data_client_from_topology(tmp_path: Path) -> None:
    path = topology_on_free_ports(LOCAL, tmp_path)
    from topology.load import load

    topo = load(path)
    assert topo.ticker is not None
    for src in (path, str(path), topo):
        with market_data_client(src, ["TCS"]) as md:
            assert md.pub == topo.ticker.pub.connect and md.snapshot == topo.ticker.snapshot.connect
            assert md.requested == ("TCS",)


# --------------------------------------------------------------------------- against the real ticker


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """The local topology (matchers, ticker, gateways) as processes on free ports, for this module's e2e tests."""
    tmp = tmp_path_factory.mktemp("md")
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp), workdir=tmp, kinds=(MATCHER, TICKER, GATEWAY))
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()


def trade(ex: Launcher, sym: str, prices: list[str], qty: int = 3) -> list[Fill]:
    """Make one trade of ``qty`` at each price (a resting buy, hit by an IOC sell); return the aggressors' fills."""
    gws = gateway_endpoints(ex)
    fills: list[Fill] = []
    with BrokerClient(gws, "MDB1") as buyer, BrokerClient(gws, "MDS1") as seller:
        for px in prices:
            assert buyer.buy(sym, qty, px).accepted
            r = seller.sell(sym, qty, px, "IOC")
            assert r.filled_qty == qty, r.events
            fills.extend(f for f in r.fills if f.aggressor)
    return fills


def wait_trades(md: MarketDataClient, counts: dict[str, int], timeout: float = 10.0) -> None:
    def done() -> bool:
        # A turn's quote, depth and bars come one after the other: wait for the bars too.
        return md.ready and all((md.quote(s) or {}).get("trades") == n
                                and all(sum(b["trades"] for b in md.bars(s, iv)) == n for iv in ("1s", "1m"))
                                for s, n in counts.items())

    pump(md, None, done, timeout=timeout)


def assert_same_state(a: MarketDataClient, b: MarketDataClient, sym: str) -> None:
    """Two clients agree on ``sym`` (the quote but for ``ts``, ``ts_ns`` and ``prints``, which a snapshot sets apart).

    Both are run until they have applied the same ``seq`` of each topic (the ticker may publish a last quote of
    the book's change after the one a test waited for).
    """
    def level() -> bool:
        b.poll(0)
        return all(a.seq(sym, k) == b.seq(sym, k) for k in KINDS)

    pump(a, None, level)
    def strip(o: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if o is None else {k: v for k, v in o.items() if k not in ("ts", "ts_ns", "prints")}

    assert strip(a.quote(sym)) == strip(b.quote(sym))
    assert strip(a.depth(sym)) == strip(b.depth(sym))
    assert a.tape(sym) == b.tape(sym)
    for iv in ("1s", "1m"):
        assert a.bars(sym, iv) == b.bars(sym, iv)


def assert_quote_matches(md: MarketDataClient, sym: str, fills: list[Fill]) -> None:
    q = md.quote(sym)
    assert q is not None
    prices = [Decimal(f.price) for f in fills]
    volume = sum(f.last_qty for f in fills)
    turnover = sum((Decimal(f.price) * f.last_qty for f in fills), Decimal(0))
    assert (q["last"], q["last_qty"], q["trades"], q["volume"], q["trade_id"]) == (
        fills[-1].price, fills[-1].last_qty, len(fills), volume, fills[-1].trade_id)
    assert Decimal(q["high"]) == max(prices) and Decimal(q["low"]) == min(prices)
    assert Decimal(q["open"]) == prices[0] and Decimal(q["turnover"]) == turnover
    assert Decimal(q["vwap"]) == (turnover / volume).quantize(Decimal("0.0001"))
    tape = md.tape(sym)
    assert [(p["trade_id"], p["price"], p["qty"], p["aggressor"]) for p in tape] == [
        (f.trade_id, f.price, f.last_qty, "sell") for f in fills][-50:]
    for iv in ("1s", "1m"):
        assert sum(b["volume"] for b in md.bars(sym, iv)) == volume
        assert sum(b["trades"] for b in md.bars(sym, iv)) == len(fills)


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_e2e_quotes_are_the_trades(exchange: Launcher) -> None:
    with market_data_client(exchange.topo, ["TCS", "ITC"]) as md:
        assert md.wait_ready(10), md
        fills = {"TCS": trade(exchange, "TCS", ["3500.00", "3501.05", "3499.95", "3502.00"]),
                 "ITC": trade(exchange, "ITC", ["430.05", "430.10"], qty=7)}
        wait_trades(md, {s: len(f) for s, f in fills.items()})
        for sym, f in fills.items():
            assert_quote_matches(md, sym, f)
        # A client starting now gets the same state from its snapshot alone.
        with market_data_client(exchange.topo, ["TCS", "ITC"]) as fresh:
            assert fresh.wait_ready(10)
            for sym in fills:
                assert_same_state(md, fresh, sym)
        assert md.stats.gaps == 0 and md.stats.malformed == 0 and md.stats.snapshots == 1


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_e2e_every_symbol_and_a_restarted_ticker(exchange: Launcher) -> None:
    with market_data_client(exchange.topo) as md:
        assert md.wait_ready(10), md
        assert set(md.symbols) == set(exchange.topo.symbols)
        fills = trade(exchange, "LT", ["3620.00", "3621.10"])
        wait_trades(md, {"LT": 2})
        exchange.kill("ticker", "ticker")
        pump(md, None, lambda: md.state == "reconnecting")
        fills += trade(exchange, "LT", ["3619.90"])  # while the ticker is down: the new one replays it
        exchange.start_node("ticker", "ticker")
        wait_trades(md, {"LT": 3}, timeout=30)
        assert md.stats.reconnects == 1 and md.stats.snapshots == 2
        assert_quote_matches(md, "LT", fills)
        fills += trade(exchange, "LT", ["3620.50"])
        wait_trades(md, {"LT": 4})
        assert_quote_matches(md, "LT", fills)


def exfab(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_e2e_watch_once_table_and_json(exchange: Launcher) -> None:
    fills = trade(exchange, "INFY", ["1580.05", "1581.00"], qty=2)
    topo = str(exchange.path)
    with market_data_client(exchange.topo, ["INFY"]) as md:  # the ticker has published them
        wait_trades(md, {"INFY": 2})
    r = exfab("watch", "INFY", "SBIN", "--once", "--topology", topo)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert exchange.topo.ticker is not None and exchange.topo.ticker.pub.connect in lines[0] and "live" in lines[0]
    header = next(line for line in lines if line.startswith("symbol"))
    assert [c.strip() for c in header.split("┃")] == ["symbol", "last", "change", "change %", "bid", "bid qty", "ask",
                                                      "ask qty", "volume", "VWAP", "high", "low", "trades"]
    infy = next(line for line in lines if line.startswith("INFY"))
    cells = [c.strip() for c in infy.split("│")]
    assert cells[1] == "1581.00" and cells[8] == "4" and cells[12] == "2"
    assert any(line.startswith("SBIN") for line in lines)

    r = exfab("watch", "INFY", "--once", "--json", "--topology", topo)
    assert r.returncode == 0, r.stderr
    quotes = [json.loads(line) for line in r.stdout.splitlines()]
    assert [q["symbol"] for q in quotes] == ["INFY"]
    assert quotes[0]["last"] == "1581.00" and quotes[0]["trades"] == 2 and quotes[0]["t"] == "quote"
    assert [p["trade_id"] for p in quotes[0]["prints"]] == [f.trade_id for f in fills]

    r = exfab("watch", "--once", "--json", "--topology", topo)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["symbol"] for line in r.stdout.splitlines()] == list(exchange.topo.symbols)


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_e2e_watch_unknown_symbols_exit_2(exchange: Launcher, tmp_path: Path) -> None:
    r = exfab("watch", "TCS", "NOPE", "--once", "--topology", str(exchange.path))
    assert r.returncode == 2 and "unknown symbol NOPE" in r.stderr and r.stdout == ""
    # A symbol the topology file lists but the running ticker does not (the file changed since it started).
    text = exchange.path.read_text()
    text = text.replace('symbols = ["ITC",', 'symbols = ["NEWCO", "ITC",', 1)
    text += '\n[[instruments]]\nsymbol = "NEWCO"\ntick = "0.05"\nlot = 1\nref_price = "10.00"\n'
    changed = tmp_path / "changed.toml"
    changed.write_text(text)
    r = exfab("watch", "NEWCO", "--once", "--topology", str(changed))
    assert r.returncode == 2 and "does not know NEWCO" in r.stderr, r.stderr


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_e2e_watch_live_until_interrupted(exchange: Launcher) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "tools.cli", "watch", "TCS", "--topology", str(exchange.path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert p.stdout is not None
        first: list[str] = []
        while not (first and first[-1].startswith("TCS ")):  # the header, the table's head and rule, TCS's row
            line = p.stdout.readline()
            assert line, (first, p.stderr.read() if p.stderr else "")
            first.append(line)
        assert "live" in first[-4], first
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "TCS " in out  # the table again on the way out


def test_watch_ticker_unreachable_exit_2(tmp_path: Path) -> None:
    topo = topology_on_free_ports(LOCAL, tmp_path)  # nothing runs on these ports
    t0 = time.monotonic()
    r = exfab("watch", "TCS", "--once", "--timeout", "1", "--topology", str(topo))
    assert r.returncode == 2 and r.stdout == ""
    from topology.load import load

    ticker = load(topo).ticker
    assert ticker is not None
    assert f"cannot reach the ticker at {ticker.pub.connect}" in r.stderr
    assert time.monotonic() - t0 < 20


def test_watch_topology_without_ticker_exit_2(tmp_path: Path) -> None:
    text = LOCAL.read_text()
    start = text.index("\n[ticker]\n") + 1  # the tables, not a comment naming them
    end = text.index("\n[persistence]\n") + 1
    path = tmp_path / "noticker.toml"
    path.write_text(text[:start] + text[end:])
    r = exfab("watch", "--once", "--topology", str(path))
    assert r.returncode == 2 and "has no [ticker]" in r.stderr


def test_watch_live_waits_for_the_ticker_and_stops_on_sigint(tmp_path: Path) -> None:
    topo = topology_on_free_ports(LOCAL, tmp_path)  # nothing runs on these ports
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "tools.cli", "watch", "--topology", str(topo)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    from topology.load import load

    ticker = load(topo).ticker
    assert ticker is not None
    assert line.startswith(f"waiting for the ticker at {ticker.pub.connect}")
    assert p.returncode == 0, err


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_e2e_watch_json_streams_quote_updates(exchange: Launcher) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "tools.cli", "watch", "HDFCBANK", "--json", "--topology",
                          str(exchange.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=ROOT)
    try:
        assert p.stdout is not None
        first = json.loads(p.stdout.readline())  # the snapshot's quote
        assert (first["symbol"], first["trades"]) == ("HDFCBANK", 0)
        fills = trade(exchange, "HDFCBANK", ["1950.00"])
        while True:
            q = json.loads(p.stdout.readline())
            if q["trades"] == 1:
                break
        assert q["last"] == "1950.00" and [pr["trade_id"] for pr in q["prints"]] == [fills[0].trade_id]
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err


def test_watch_symbols_and_cells() -> None:
    from tools.watch import COLUMNS, quote_cells, resolve_symbols
    from topology.load import load

    topo = load(LOCAL)
    assert resolve_symbols(topo, ["tcs", "INFY", "TCS", "nope"]) == (["TCS", "INFY"], ["nope"])
    assert resolve_symbols(topo, []) == ([], [])
    assert set(quote_cells(None).values()) == {"-"} and list(quote_cells(None)) == list(COLUMNS[1:])
    q = {"last": "3512.35", "change": "12.35", "change_pct": "0.35", "bid": "3512.30", "bid_qty": 40,
         "ask": None, "ask_qty": None, "volume": 12840, "vwap": "3510.7205", "high": "3520.00", "low": "3495.05",
         "trades": 310}
    assert quote_cells(q) == {"last": "3512.35", "change": "+12.35", "change %": "+0.35%", "bid": "3512.30",
                              "bid qty": "40", "ask": "-", "ask qty": "-", "volume": "12,840", "VWAP": "3510.7205",
                              "high": "3520.00", "low": "3495.05", "trades": "310"}
    assert quote_cells({**q, "change": "-1.00", "change_pct": "-0.03"})["change %"] == "-0.03%"
