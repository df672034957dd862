"""One shard stopped under load: the other shards trade on, and what was refused is never carried out.

A matcher frozen with SIGSTOP keeps its connections open and reads nothing: the
gateway's commands for it pile up in sockets.  The gateway must keep serving
every other shard and every session, refuse the stuck commands with
``shard_unavailable`` within its bound, and a matcher that wakes up to find
them must not execute them behind their brokers' backs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from fabric.client import BrokerClient
from fabric.protocol import OrderStatus, Rejected, decode_server
from nodes.gateway import PENDING_TIMEOUT_S
from tests.helpers import dial, gateway_endpoints
from topology.launcher import Launcher

pytestmark = pytest.mark.e2e


def _price(ex: Launcher, symbol: str, ticks_from_ref: int) -> str:
    inst = ex.topo.instrument(symbol)
    assert inst.ref_price is not None
    ref = inst.to_ticks(inst.ref_price)
    assert ref is not None
    return inst.to_price(ref + ticks_from_ref)


@pytest.mark.timeout(120)
def test_stopped_shard_never_stops_the_others_and_its_refused_orders_never_execute(exchange: Launcher) -> None:
    g1, _ = gateway_endpoints(exchange)
    shard_a, shard_b = exchange.topo.shards[0], exchange.topo.shards[1]
    sym_a, sym_b = shard_a.symbols[0], shard_b.symbols[0]
    px_a, px_b = _price(exchange, sym_a, -5), _price(exchange, sym_b, -5)
    matcher_b = exchange.node("matcher", shard_b.replicas[0].name)

    flood = _logged_on(g1, "FLOOD")

    os.kill(matcher_b.proc.pid, signal.SIGSTOP)
    oids = [f"stuck-{i}" for i in range(1500)]
    closing: dict[str, OrderStatus] = {}
    refused: dict[str, Rejected] = {}

    def read(wait_ms: int) -> None:
        if flood.poll(wait_ms):
            while True:
                try:
                    frames = flood.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                for f in frames:
                    m: Any = decode_server(f)
                    if isinstance(m, OrderStatus) and m.op == "new":
                        closing[m.oid] = m
                    elif isinstance(m, Rejected) and m.oid is not None:
                        refused[m.oid] = m

    try:
        t0 = time.monotonic()
        for i, oid in enumerate(oids):
            flood.send(msgpack.packb({"t": "new", "v": 1, "oid": oid, "symbol": sym_b, "side": "buy",
                                      "type": "limit", "price": px_b, "qty": 1, "tif": "GTC"}))
            if i % 50 == 0:
                read(1)  # spread over many turns of the gateway: many messages on the stuck connection
        # Shard A trades on, through the same gateway, within the client's first timeout (no resend).
        with BrokerClient([g1], "ALIVE", timeout=2.0, retries=0) as alive:
            r = alive.buy(sym_a, 1, px_a)
            assert (r.state, r.resends) == ("new", 0), r
            assert alive.order_status(r.oid, sym_a).state == "new"
        # Every stuck command is refused shard_unavailable, within the gateway's bound.
        deadline = t0 + PENDING_TIMEOUT_S + 10
        while len(closing) < len(oids) and time.monotonic() < deadline:
            read(100)
        assert len(closing) == len(oids), f"{len(oids) - len(closing)} commands never answered"
        assert {st.reason for st in closing.values()} == {"shard_unavailable"}
        assert {st.state for st in closing.values()} == {"rejected"}
        assert set(refused) == set(oids) and {m.reason for m in refused.values()} == {"shard_unavailable"}
    finally:
        os.kill(matcher_b.proc.pid, signal.SIGCONT)
        flood.close(0)

    # Shard B wakes up, finds the stale commands in its socket, and refuses them: none was carried out.
    time.sleep(1.0)
    with BrokerClient([g1], "FLOOD", timeout=5.0) as c:
        states = {c.order_status(oid, sym_b).state for oid in oids}
        assert states == {"unknown"}, states
        assert c.open_orders(sym_b) == []
        assert c.buy(sym_b, 1, px_b, oid="after-1").state == "new"  # and it trades again


def _logged_on(endpoint: str, broker: str) -> zmq.Socket[bytes]:
    """A raw DEALER logged on to a gateway as ``broker``."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(msgpack.packb({"t": "logon", "v": 1, "broker": broker, "heartbeat_ms": 60_000}))
    assert sock.poll(5000), f"no logon answer for {broker}"
    sock.recv_multipart()
    return sock


def _flow(ex: Launcher, endpoint: str, broker: str, sym: str, n: int, spread: int) -> None:
    """Send ``n`` limit orders on ``sym`` (buys and sells within ``spread`` ticks of the reference, so they
    cross and rest), up to 300 outstanding, and wait until every one is closed."""
    sock = _logged_on(endpoint, broker)
    done = 0
    for i in range(n):
        sock.send(msgpack.packb({"t": "new", "v": 1, "oid": f"{broker}-{i}", "symbol": sym,
                                 "side": "buy" if i % 2 else "sell", "type": "limit",
                                 "price": _price(ex, sym, i % spread - spread // 2), "qty": 1, "tif": "GTC"}))
        while i - done > 300 or (i == n - 1 and done < n):
            assert sock.poll(5000), "the exchange stopped answering"
            done += sum(isinstance(decode_server(f), OrderStatus) for f in sock.recv_multipart())
    sock.close(0)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)
def test_peer_that_never_reads_its_replays_holds_little_matcher_memory(exchange: Launcher) -> None:
    from fabric.protocol import ReplayReply, ReplayRequest, SnapshotReply, SnapshotRequest, decode_internal, encode

    g1, _ = gateway_endpoints(exchange)
    shard = exchange.topo.shards[0]
    sym = shard.symbols[0]
    replica = shard.replicas[0]
    pid = exchange.node("matcher", replica.name).proc.pid
    # A day's worth of stream: 20,000 orders crossing and resting, about 3 PUB messages each.
    _flow(exchange, g1, "BULK", sym, 20_000, 7)

    def dealer(stingy: bool = False) -> zmq.Socket[bytes]:
        d: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        if stingy:  # takes nearly nothing off the wire: what the matcher sends it stays with the matcher
            d.setsockopt(zmq.RCVHWM, 1)
            d.setsockopt(zmq.RCVBUF, 4096)
        dial(d, replica.recovery.connect, exchange.topo)
        return d

    reader = dealer()
    reader.send(encode(SnapshotRequest(shard=0)))
    assert reader.poll(5000)
    snap = decode_internal(reader.recv_multipart()[-1])
    assert isinstance(snap, SnapshotReply) and snap.seq > 50_000
    before = _rss_mb(pid)
    idle = dealer(stingy=True)  # asks five times for the whole day and never reads
    for _ in range(5):
        idle.send(encode(ReplayRequest(shard=0, first=1, last=snap.seq)))
    time.sleep(2.0)
    grown = _rss_mb(pid) - before
    # Unbounded, five whole days of messages (about 5 x 10 MB of bodies, more in ZeroMQ's copies) would sit
    # in the matcher for that peer; bounded, a few parts.
    assert grown < 20, f"the matcher grew {grown:.1f} MB for a peer that does not read"
    # A peer that reads still gets every message of the range, in order, while the other one sits there.
    reader.send(encode(ReplayRequest(shard=0, first=1, last=snap.seq)))
    got = 0
    while True:
        assert reader.poll(10_000), f"replay stalled after {got} messages"
        part = decode_internal(reader.recv_multipart()[-1])
        assert isinstance(part, ReplayReply) and part.reason is None and part.first == got + 1
        got = part.last
        if part.done:
            break
    assert got == snap.seq
    idle.close(0)
    reader.close(0)


@pytest.mark.timeout(120)
def test_journal_that_cannot_be_written_refuses_commands_and_resumes_by_itself(exchange: Launcher) -> None:
    # A full disk, played by a file size limit on the matcher (its writes then fail with EFBIG, as they fail
    # with ENOSPC on a full disk): commands are refused at once with a reason, nothing refused is carried
    # out, the heartbeat says why, and the shard takes commands again as soon as the journal can grow.
    import resource

    from fabric.journal import read_journal
    from fabric.protocol import PubHeartbeat, decode_pub, heartbeat_topic

    g1, _ = gateway_endpoints(exchange)
    shard = exchange.topo.shards[0]
    sym = shard.symbols[0]
    replica = shard.replicas[0]
    pid = exchange.node("matcher", replica.name).proc.pid
    path = exchange.workdir / exchange.topo.journal_dir(replica) / f"{shard.name}.journal"
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.subscribe(heartbeat_topic(0))
    dial(sub, replica.pub.connect, exchange.topo)
    with BrokerClient([g1], "DISK", timeout=3.0, retries=0) as c:
        assert c.buy(sym, 1, _price(exchange, sym, -5), oid="disk-0").state == "new"
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (path.stat().st_size + 400, resource.RLIM_INFINITY))
        results = [c.buy(sym, 1, _price(exchange, sym, -5), oid=f"disk-{i}") for i in range(1, 8)]
        refused = [r for r in results if r.rejected is not None]
        assert refused, "the journal reached its limit: some order must have been refused"
        for r in refused:
            assert r.resends == 0 and r.rejected is not None and r.rejected.reason == "shard_unavailable"
            assert "journal cannot be written" in r.rejected.text, r.rejected.text
            assert c.order_status(r.oid, sym).state == "unknown"  # not carried out
        deadline = time.monotonic() + 5
        alert = None
        while alert is None and time.monotonic() < deadline:
            if sub.poll(500):
                hb = decode_pub(sub.recv_multipart()[-1])
                assert isinstance(hb, PubHeartbeat)
                alert = hb.alert
        assert alert is not None and "journal" in alert
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        after = c.buy(sym, 1, _price(exchange, sym, -5), oid="disk-after")
        assert after.state == "new" and after.rejected is None
    sub.close(0)
    taken = {r.oid for r in results if r.rejected is None} | {"disk-0", "disk-after"}
    journaled = set()
    from fabric.commands import NewOrder, decode_command

    for _, payload in read_journal(path):
        cmd = decode_command(payload)
        if isinstance(cmd, NewOrder):
            journaled.add(cmd.oid)
    assert journaled == taken  # every order taken is in the journal, and no refused one


@pytest.mark.timeout(120)
def test_replay_older_than_the_ring_is_served_from_the_published_file(tmp_path: Path) -> None:
    # A matcher with a 1 MiB ring: most of the day's messages leave memory, and a replay of the whole day
    # (what a ticker started late asks for) still gets every one, byte for byte in seq order, from disk.
    from fabric.protocol import ReplayReply, ReplayRequest, decode_internal, decode_pub, encode
    from tests.helpers import LOCAL, topology_on_free_ports

    ex = Launcher(topology_on_free_ports(LOCAL, tmp_path), workdir=tmp_path,
                  extra_args={"matcher": ["--fsync", "none", "--ring-mb", "1"]})
    ex.start()
    try:
        g1, _ = gateway_endpoints(ex)
        shard = ex.topo.shards[0]
        sym = shard.symbols[0]
        n = 6_000
        _flow(ex, g1, "DAY", sym, n, 5)
        reader: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        reader.setsockopt(zmq.LINGER, 0)
        dial(reader, shard.replicas[0].recovery.connect, ex.topo)
        time.sleep(1.2)  # a heartbeat has gone by: the shard's last seq is settled
        reader.send(encode(ReplayRequest(shard=0, first=1, last=1)))
        assert reader.poll(5000)
        first = decode_internal(reader.recv_multipart()[-1])
        assert isinstance(first, ReplayReply) and first.reason is None, first  # seq 1: long gone from the ring
        seqs: list[int] = []
        last = 3 * n  # a new order makes at least an acceptance, a level change and, often, trades and fills
        reader.send(encode(ReplayRequest(shard=0, first=1, last=last)))
        while True:
            assert reader.poll(10_000)
            part = decode_internal(reader.recv_multipart()[-1])
            assert isinstance(part, ReplayReply) and part.reason is None, part
            seqs.extend(decode_pub(b).seq for b in part.msgs)  # type: ignore[union-attr]
            if part.done:
                break
        assert seqs == list(range(1, last + 1))
        reader.close(0)
    finally:
        ex.stop()
