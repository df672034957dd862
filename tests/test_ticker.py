"""The ticker node against real matchers: exact state, gap recovery, restarts, the snapshot socket and HTTP."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
import zmq

from fabric.client import BrokerClient
from fabric.feed import feed_topic
from fabric.protocol import SnapshotReply, SnapshotRequest, decode_internal, encode
from tests.helpers import LOCAL, RunningTicker, dial, gateway_endpoints, topology_on_free_ports
from topology.launcher import Launcher
from topology.model import GATEWAY, MATCHER, TICKER

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------- helpers


def _trade_flow(ex: Launcher, symbols: list[str], n: int, seed: int = 7, brokers: tuple[str, str] = ("MAKER", "TAKER"),
                ) -> dict[str, list[tuple[Decimal, int]]]:
    """Trade ``n`` times across ``symbols`` (a resting order, then a partial or full hit); return the trades."""
    rng = random.Random(seed)
    g1, g2 = gateway_endpoints(ex)
    trades: dict[str, list[tuple[Decimal, int]]] = {s: [] for s in symbols}
    with BrokerClient([g1], brokers[0]) as mk, BrokerClient([g2], brokers[1]) as tk:
        for _ in range(n):
            sym = rng.choice(symbols)
            inst = ex.topo.instrument(sym)
            assert inst.band_lo is not None
            px = inst.to_price(inst.band_lo + 1000 + rng.randrange(40))
            qty = rng.randrange(1, 20)
            side = rng.choice(("buy", "sell"))
            rest = (mk.buy if side == "buy" else mk.sell)(sym, qty + rng.randrange(0, 5), px)
            assert rest.accepted, rest
            hit = (tk.sell if side == "buy" else tk.buy)(sym, qty, px, "IOC")
            # Each trade is reported once as the aggressor's fill (a resting order may itself cross on arrival).
            for r in (rest, hit):
                trades[sym].extend((Decimal(f.price), f.last_qty) for f in r.fills if f.aggressor)
    return trades


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _wait_for(cond: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _matcher_books(ex: Launcher) -> dict[str, tuple[list[list[Any]], list[list[Any]]]]:
    """Every symbol's five best levels per side, straight from the matchers' snapshots."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    out = {}
    for no, shard in enumerate(ex.topo.shards):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        dial(s, shard.replicas[0].recovery.connect, ex.topo)
        s.send(encode(SnapshotRequest(shard=no)))
        assert s.poll(5000), "matcher did not answer a snapshot request"
        snap = decode_internal(s.recv())
        s.close(0)
        assert isinstance(snap, SnapshotReply)
        for b in snap.books:
            bids = sorted(b.bids, key=lambda x: -Decimal(x[0]))[:5]
            asks = sorted(b.asks, key=lambda x: Decimal(x[0]))[:5]
            out[b.symbol] = ([[str(Decimal(p)), q, n] for p, q, n in bids],
                             [[str(Decimal(p)), q, n] for p, q, n in asks])
    return out


def _agrees(state: dict[str, Any], trades: list[tuple[Decimal, int]], book: tuple[Any, Any]) -> bool:
    q, d = state["quote"], state["depth"]
    if q["trades"] != len(trades) or q["volume"] != sum(t[1] for t in trades):
        return False
    if trades and Decimal(q["last"]) != trades[-1][0]:
        return False
    return [[str(Decimal(p)), x, n] for p, x, n in d["bids"]] == book[0] and \
        [[str(Decimal(p)), x, n] for p, x, n in d["asks"]] == book[1]


def _strip(snap: dict[str, Any]) -> dict[str, Any]:
    # A snapshot without what legitimately differs between two tickers: publication times and topic seqs.
    out = json.loads(json.dumps(snap))
    for part in ("quote", "depth", "bars", "state"):
        out[part].pop("ts", None)
        out[part].pop("ts_ns", None)
        out[part].pop("seq", None)
    return out


NS_FIELDS = ("ts", "last_ts", "start", "from", "to")  # docs/market-data.md, section 2: each has its F_ns
NS_CHECKED = (*NS_FIELDS, "until", "since")  # and those of a halt (state, market), checked where they come
JS_EXACT = 2**53  # the largest integer below which every integer is a double (a JavaScript number)


def exact_times(obj: Any, js: Any = None, seen: dict[str, int] | None = None) -> dict[str, int]:
    """Check that every nanosecond time in ``obj`` has its exact text; return how many of each were checked.

    ``obj`` is a decoded JSON or msgpack object; ``js`` is the same text as JavaScript's ``JSON.parse`` reads it
    (every number a double: ``json.loads(text, parse_int=float)``).  Every integer field ``F`` of
    :data:`NS_CHECKED` must have ``F_ns`` equal to its decimal text, and that text must give the integer exactly
    when read from ``js``; every ``F_ns`` must have its ``F``; and no other integer may exceed 2**53 (a time
    without its exact form).  ``seen["rounded"]`` counts the times a double could not hold exactly.
    """
    seen = {} if seen is None else seen
    if isinstance(obj, dict):
        for k, v in obj.items():
            jv: Any = js[k] if js is not None else None
            if k in NS_CHECKED and isinstance(v, int) and not isinstance(v, bool):
                assert obj.get(f"{k}_ns") == str(v), (k, v, obj.get(f"{k}_ns"))
                if js is not None:
                    assert int(js[f"{k}_ns"]) == v, "the text form survives JSON.parse exactly"
                    if int(jv) != v:
                        seen["rounded"] = seen.get("rounded", 0) + 1
                seen[k] = seen.get(k, 0) + 1
            elif k.endswith("_ns") and k[:-3] in NS_CHECKED:
                assert k[:-3] in obj, f"{k} without {k[:-3]}"
            elif isinstance(v, int) and not isinstance(v, bool):
                assert abs(v) < JS_EXACT, f"{k} = {v}: an integer beyond 2**53 without an exact text form"
            else:
                exact_times(v, jv, seen)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            exact_times(v, js[i] if js is not None else None, seen)
    return seen


def exact_json(text: str | bytes, seen: dict[str, int] | None = None) -> Any:
    """Parse JSON the ticker sent, check its times with :func:`exact_times`, and return it."""
    obj = json.loads(text)
    exact_times(obj, json.loads(text, parse_int=float), seen)
    return obj


# ------------------------------------------------------- the ticker process


def test_ticker_state_is_exact_and_survives_a_kill(exchange: Launcher) -> None:
    ex = exchange
    assert ex.topo.ticker is not None
    base = ex.topo.ticker.http_url
    symbols = [ex.topo.shards[0].symbols[0], ex.topo.shards[0].symbols[1], ex.topo.shards[1].symbols[0]]
    trades = _trade_flow(ex, symbols, 60)
    books = _matcher_books(ex)
    for sym in symbols:
        _wait_for(lambda s=sym: _agrees(_get(f"{base}snapshot?symbol={s}"), trades[s], books[s]), what=f"{sym} exact")
    snap = _get(f"{base}snapshot?symbol={symbols[0]}")
    q = snap["quote"]
    assert q["high"] == str(max(p for p, _ in trades[symbols[0]]))
    assert q["low"] == str(min(p for p, _ in trades[symbols[0]]))
    turnover = sum(p * n for p, n in trades[symbols[0]])
    assert Decimal(q["turnover"]) == turnover
    assert [(Decimal(t["price"]), t["qty"]) for t in q["prints"]] == trades[symbols[0]][-50:]
    bars_1s = snap["bars"]["bars"]["1s"]
    assert sum(b["volume"] for b in bars_1s) == q["volume"] and sum(b["trades"] for b in bars_1s) == q["trades"]
    before = {s: _strip(_get(f"{base}snapshot?symbol={s}")) for s in ex.topo.symbols}

    ex.kill(TICKER, TICKER)  # a crash: the restarted ticker rebuilds the day from the matchers
    ex.start_node(TICKER, TICKER)
    after = {s: _strip(_get(f"{base}snapshot?symbol={s}")) for s in ex.topo.symbols}
    assert after == before
    # and it goes on: one more trade moves the quote by exactly one trade
    more = _trade_flow(ex, symbols[:1], 1, seed=99)
    _wait_for(lambda: _get(f"{base}snapshot?symbol={symbols[0]}")["quote"]["trades"]
              == len(trades[symbols[0]]) + len(more[symbols[0]]), what="the next trade")


def test_ticker_goes_on_through_a_matcher_restart_without_doubling(exchange: Launcher) -> None:
    ex = exchange
    assert ex.topo.ticker is not None
    base = ex.topo.ticker.http_url
    sym = ex.topo.shards[0].symbols[0]
    first = _trade_flow(ex, [sym], 15)
    _wait_for(lambda: _get(f"{base}snapshot?symbol={sym}")["quote"]["trades"] == len(first[sym]))
    name = ex.topo.shards[0].replicas[0].name
    ex.kill(MATCHER, name)
    ex.start_node(MATCHER, name)  # replays its journal to the same seq: nothing new for the ticker
    second = _trade_flow(ex, [sym], 15, seed=8)
    all_trades = first[sym] + second[sym]
    books = _matcher_books(ex)
    _wait_for(lambda: _agrees(_get(f"{base}snapshot?symbol={sym}"), all_trades, books[sym]), what="exact after")
    stats = _get(f"{base}stats")
    assert stats["duplicates"] == 0 or stats["trades"] == sum(len(t) for d in (first, second) for t in d.values())


def test_snapshot_socket_and_feed_follow_the_clone_pattern(exchange: Launcher) -> None:
    ex = exchange
    tk = ex.topo.ticker
    assert tk is not None
    sym = ex.topo.shards[1].symbols[0]
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, feed_topic("quote", sym))
    sub.connect(tk.pub.connect)
    time.sleep(0.3)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(tk.snapshot.connect)
    dealer.send(msgspec.msgpack.encode({"t": "snapshot_request", "v": 1, "symbols": [sym, "NOPE"]}))
    assert dealer.poll(5000)
    snap = msgspec.msgpack.decode(dealer.recv())
    assert snap["t"] == "snapshot" and snap["unknown"] == ["NOPE"] and set(snap["symbols"]) == {sym}
    seq0 = snap["symbols"][sym]["quote"]["seq"]
    trades = _trade_flow(ex, [sym], 5)
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while sum(len(m["prints"]) for m in got) < len(trades[sym]) and time.monotonic() < deadline:
        if sub.poll(200):
            topic, body = sub.recv_multipart()
            assert topic == feed_topic("quote", sym)
            got.append(msgspec.msgpack.decode(body))
    seqs = [m["seq"] for m in got if m["seq"] > seq0]
    assert seqs == list(range(seq0 + 1, seq0 + 1 + len(seqs))), "quote seqs are contiguous"
    prints = [(Decimal(p["price"]), p["qty"]) for m in got for p in m["prints"]]
    assert prints == trades[sym]
    # a malformed request gets a reason, and the socket goes on serving
    dealer.send(b"\xc1garbage")
    assert dealer.poll(5000)
    err = msgspec.msgpack.decode(dealer.recv())
    assert err["t"] == "error" and err["reason"] == "malformed"
    for s in (sub, dealer):
        s.close(0)


def answer_of(s: zmq.Socket[bytes], body: bytes) -> bytes:
    """Send one request on a DEALER and return its answer's body."""
    s.send(body)
    assert s.poll(5000), "no answer within 5 s"
    return s.recv()


def test_snapshot_socket_as_the_doc_describes_it(exchange: Launcher) -> None:
    # docs/market-data.md, section 3, "The snapshot socket": raw pyzmq and msgpack, nothing of exchange-fabric's.
    ex = exchange
    tk = ex.topo.ticker
    assert tk is not None
    sym, other = ex.topo.shards[0].symbols[0], ex.topo.shards[1].symbols[0]
    trades = _trade_flow(ex, [sym], 6)
    addr = f"tcp://127.0.0.1:{tk.snapshot_port}"
    ctx: zmq.Context[Any] = zmq.Context.instance()

    def sock(kind: int) -> zmq.Socket[bytes]:
        s: zmq.Socket[bytes] = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(addr)
        return s

    def answer(s: zmq.Socket[bytes]) -> list[bytes]:
        assert s.poll(5000), "no answer within 5 s"
        return s.recv_multipart()

    request = msgpack.packb({"t": "snapshot_request", "v": 1, "symbols": [sym, "NOPE", other]})
    assert request == bytes.fromhex("83a174b0") + b"snapshot_request" + bytes.fromhex("a17601a7") + b"symbols" + \
        bytes.fromhex("93") + b"".join(bytes([0xA0 + len(n)]) + n.encode() for n in (sym, "NOPE", other))

    # A DEALER sends [body] and gets [answer]: one frame, one msgpack map, no end marker.
    dealer = sock(zmq.DEALER)
    dealer.send(request)
    frames = answer(dealer)
    assert len(frames) == 1
    snap = msgpack.unpackb(frames[0])
    assert snap["t"] == "snapshot" and snap["v"] == 1 and snap["ts_ns"] == str(snap["ts"])
    assert list(snap["symbols"]) == [sym, other], "the known symbols, in the order asked"
    assert snap["unknown"] == ["NOPE"]
    assert not dealer.poll(300), "one answer per request"
    objs = snap["symbols"][sym]
    assert {k: (o["t"], o["v"], o["symbol"]) for k, o in objs.items()} == {
        "quote": ("quote", 1, sym), "depth": ("depth", 1, sym), "bars": ("bars", 1, sym),
        "state": ("state", 1, sym)}
    assert snap["market"]["t"] == "market" and snap["market"]["state"] == "trading" and snap["halted"] == []
    assert snap["index"]["t"] == "index" and snap["index"]["name"] == "DEMO12", "the local topology's demo index"
    _wait_for(lambda: _get(f"{tk.http_url}snapshot?symbol={sym}")["quote"]["trades"] == len(trades[sym]))
    dealer.send(request)
    objs = msgpack.unpackb(answer(dealer)[0])["symbols"][sym]
    q = objs["quote"]
    assert q["seq"] >= 1 and q["trades"] == len(trades[sym]) and len(q["prints"]) == len(trades[sym])
    assert [(Decimal(p["price"]), p["qty"]) for p in q["prints"]] == trades[sym]
    assert set(objs["bars"]["bars"]) == {"1s", "1m"} and len(objs["depth"]["bids"]) <= 5
    assert sum(b["volume"] for b in objs["bars"]["bars"]["1m"]) == q["volume"]
    assert exact_times(msgpack.unpackb(answer_of(dealer, request)))["start"] >= 2

    # The envelope comes back: a DEALER speaking like REQ, and a REQ socket itself.
    dealer.send_multipart([b"", request])
    frames = answer(dealer)
    assert frames[0] == b"" and len(frames) == 2 and msgpack.unpackb(frames[1])["t"] == "snapshot"
    req = sock(zmq.REQ)
    for _ in range(2):  # REQ: send, receive, send again
        req.send(msgpack.packb({"t": "snapshot_request", "v": 1}))  # symbols absent: every symbol
        every = msgpack.unpackb(answer(req)[0])
        assert list(every["symbols"]) == sorted(ex.topo.symbols) and every["unknown"] == []
    dealer.send(msgpack.packb({"t": "snapshot_request", "v": 1, "symbols": None}))
    assert list(msgpack.unpackb(answer(dealer)[0])["symbols"]) == sorted(ex.topo.symbols)

    # Malformed requests: an error with the same envelope, and the connection goes on.
    for body in (b"\xc1garbage", request + b"\x00", msgpack.packb([1, 2]), msgpack.packb({"t": "snapshot"}),
                 msgpack.packb({"t": b"snapshot_request"}),  # bin, not str
                 msgpack.packb({"t": "snapshot_request", "symbols": "TCS"}),
                 msgpack.packb({"t": "snapshot_request", "symbols": [1]})):
        dealer.send(body)
        err = msgpack.unpackb(answer(dealer)[0])
        assert err["t"] == "error" and err["v"] == 1 and err["reason"] == "malformed", (body, err)
        assert isinstance(err["text"], str) and 0 < len(err["text"]) <= 200
    dealer.send_multipart([b"", b"\xc1"])
    frames = answer(dealer)
    assert frames[0] == b"" and msgpack.unpackb(frames[1])["reason"] == "malformed"
    req.send(b"\xc1")
    assert msgpack.unpackb(answer(req)[0])["reason"] == "malformed"
    dealer.send(request)
    assert msgpack.unpackb(answer(dealer)[0])["t"] == "snapshot", "still serving"
    for s in (dealer, req):
        s.close(0)


def test_http_routes_answer_bad_requests_with_reasons(exchange: Launcher) -> None:
    tk = exchange.topo.ticker
    assert tk is not None
    base = tk.http_url
    for query, status, reason in (("symbol=NOPE", 400, "unknown_symbol"),
                                  ("symbol=TCS&interval=7m", 400, "bad_interval"),
                                  ("symbol=TCS&from=yesterday", 400, "bad_time")):
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(f"{base}history?{query}")
        assert e.value.code == status and json.loads(e.value.read())["error"] == reason
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(f"{base}snapshot?symbol=NOPE")
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(f"{base}static/../../etc/passwd")
    assert e.value.code == 404
    syms = _get(f"{base}symbols")
    assert [s["symbol"] for s in syms] == sorted(exchange.topo.symbols)
    with urllib.request.urlopen(f"{base}static/plotly.min.js", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/javascript") and len(r.read()) > 1_000_000
    with urllib.request.urlopen(base, timeout=10) as r:
        assert b"<html" in r.read().lower()


# ------------------------------------------- an in-process ticker that loses


@pytest.fixture
def fabric_only(tmp_path: Path) -> Iterator[Launcher]:
    """Matchers and gateways as processes; no ticker process (the test runs its own)."""
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp_path), workdir=tmp_path, kinds=(MATCHER, GATEWAY))
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()


def test_lost_messages_are_replayed_so_the_state_stays_exact(fabric_only: Launcher) -> None:
    ex = fabric_only
    lost = {"n": 0, "seen": 0}

    def lose(frame: list[bytes]) -> bool:
        # Lose every 4th trade or book message, and every heartbeat-free tail is caught by the heartbeat.
        if frame[0][:1] not in (b"T", b"B"):
            return False
        lost["seen"] += 1
        if lost["seen"] % 4 == 0:
            lost["n"] += 1
            return True
        return False

    running = RunningTicker(ex.topo, lose=lose)
    try:
        symbols = [ex.topo.shards[0].symbols[0], ex.topo.shards[1].symbols[0], ex.topo.shards[1].symbols[1]]
        trades = _trade_flow(ex, symbols, 50)
        books = _matcher_books(ex)
        for sym in symbols:
            _wait_for(lambda s=sym: _agrees(running.call(lambda: running.ticker.web.snapshot_obj(s)), trades[s],
                                            books[s]), what=f"{sym} exact despite losses")
        stats = running.call(lambda: dict(running.ticker.stats_view()))
        assert lost["n"] > 10 and stats["gaps"] > 0
        assert stats["trades"] == sum(len(v) for v in trades.values()), "every trade counted once"
    finally:
        running.stop()


def test_a_lost_last_message_is_found_by_the_heartbeat(fabric_only: Launcher) -> None:
    ex = fabric_only
    state = {"drop": False}

    running = RunningTicker(ex.topo, lose=lambda f: state["drop"] and f[0][:1] in (b"T", b"B"))
    try:
        sym = ex.topo.shards[0].symbols[0]
        first = _trade_flow(ex, [sym], 3)
        _wait_for(lambda: running.call(lambda: running.ticker.feed.state.symbols[sym].trades) == len(first[sym]))
        state["drop"] = True  # the next trade is lost, and nothing follows it but heartbeats
        second = _trade_flow(ex, [sym], 1, seed=3)
        time.sleep(0.3)
        state["drop"] = False
        total = len(first[sym]) + len(second[sym])
        _wait_for(lambda: running.call(lambda: running.ticker.feed.state.symbols[sym].trades) == total,
                  what="the lost trade, replayed after a heartbeat")
    finally:
        running.stop()


def test_batches_published_topic_by_topic_need_no_replay(fabric_only: Launcher) -> None:
    # Brokers sending at once make the matchers batch several commands, published topic by topic: seq
    # arrives out of order across topics, which is no gap (each topic is in order).
    ex = fabric_only
    running = RunningTicker(ex.topo, lose=lambda f: False)
    try:
        groups = [[ex.topo.shards[0].symbols[0], ex.topo.shards[1].symbols[0]],
                  [ex.topo.shards[0].symbols[1], ex.topo.shards[1].symbols[1]],
                  [ex.topo.shards[0].symbols[2], ex.topo.shards[1].symbols[2]]]
        results: list[dict[str, list[tuple[Decimal, int]]]] = [{} for _ in groups]

        def flow(i: int) -> None:
            results[i] = _trade_flow(ex, groups[i], 40, seed=i, brokers=(f"MAKER{i}", f"TAKER{i}"))

        threads = [threading.Thread(target=flow, args=(i,)) for i in range(len(groups))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        trades = {s: v for r in results for s, v in r.items()}
        assert len(trades) == 6
        books = _matcher_books(ex)
        for sym in trades:
            _wait_for(lambda s=sym: _agrees(running.call(lambda: running.ticker.web.snapshot_obj(s)), trades[s],
                                            books[s]), what=f"{sym} exact")
        stats = running.call(lambda: dict(running.ticker.stats_view()))
        assert stats["gaps"] == 0, "no topic skipped a tseq"
        assert [ln.replays for ln in running.ticker.links] == [0, 0], "nothing was replayed"
    finally:
        running.stop()
