"""An operator's market control over real sockets: halts of a symbol and of the market, the kill switch, a
halt that ends by itself, and what a session that is not an operator's is told.

The local topology names the operator ``ops``; any other broker id may trade.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from fabric.client import AsyncBrokerClient, BrokerClient
from fabric.protocol import (
    AdminAck,
    ProtocolError,
    PubBundle,
    SnapshotReply,
    SnapshotRequest,
    TradingState,
    decode_internal,
    decode_pub,
    encode,
    heartbeat_topic,
    state_topic,
)
from tests.helpers import LOCAL, dial, gateway_endpoints, journal_events
from tests.servers import start_zookeeper
from topology.launcher import Launcher
from topology.model import GATEWAY, MATCHER
from topology.ports import pairs_on_free_ports

pytestmark = pytest.mark.e2e


def _client(ex: Launcher, broker: str, gateway: int = 0) -> BrokerClient:
    c = BrokerClient(gateway_endpoints(ex)[gateway:gateway + 1], broker, timeout=5.0)
    c.connect()
    return c


def _reason(r: Any) -> str | None:
    return None if r.rejected is None else r.rejected.reason


class _States:
    """A SUB to shard ``no``'s trading states (topic ``S<no>``), ready once a heartbeat of the shard came."""

    def __init__(self, ex: Launcher, no: int) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        dial(self.sock, ex.topo.shards[no].replicas[0].pub.connect, ex.topo)
        self.sock.subscribe(state_topic(no))
        self.sock.subscribe(heartbeat_topic(no))
        self.got: list[TradingState] = []
        self.wait(lambda: self.heard, 10.0)

    heard = False

    def read(self) -> None:
        while self.sock.poll(100):
            topic, body = self.sock.recv_multipart()
            if topic.startswith(b"H"):
                self.heard = True
                continue
            msg = decode_pub(body)
            msgs = [decode_pub(b) for b in msg.msgs] if isinstance(msg, PubBundle) else [msg]
            self.got.extend(m for m in msgs if isinstance(m, TradingState))

    def wait(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out; got {self.got}"
            self.read()

    def close(self) -> None:
        self.sock.close(0)


def _snapshot(ex: Launcher, no: int) -> SnapshotReply:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    dial(sock, ex.topo.shards[no].replicas[0].recovery.connect, ex.topo)
    try:
        sock.send(encode(SnapshotRequest(shard=no)))
        assert sock.poll(10_000), "no snapshot"
        reply = decode_internal(sock.recv())
        assert isinstance(reply, SnapshotReply)
        return reply
    finally:
        sock.close(0)


def test_halt_of_a_symbol_refuses_new_and_replace_cancel_works_and_survives_a_restart(exchange: Launcher) -> None:
    ops, b1 = _client(exchange, "ops"), _client(exchange, "B1")
    states = _States(exchange, 0)
    try:
        resting = b1.buy("TCS", 10, "3400.00")
        assert resting.accepted
        ack = ops.admin("halt", symbol="TCS", text="news pending")
        assert (ack.action, ack.symbol, ack.cancelled) == ("halt", "TCS", 0)
        states.wait(lambda: len(states.got) == 1)
        st = states.got[0]
        assert (st.symbol, st.state, st.reason, st.text, st.shard) == ("TCS", "halted", "operator", "news pending", 0)
        r = b1.buy("TCS", 5, "3400.00")
        assert _reason(r) == "halted" and "trading in TCS is halted (news pending)" in r.rejected.text
        assert _reason(b1.replace(resting.oid, "TCS", price="3405.00")) == "halted"
        assert b1.buy("INFY", 1, "1500.00").accepted  # another symbol of the same shard trades on
        assert [s.symbol for s in _snapshot(exchange, 0).states] == ["TCS"]
        # A restart replays the journal, the halt with it.
        b1.close()
        exchange.kill("matcher", "A")
        exchange.start_node("matcher", "A")
        b1 = _client(exchange, "B1")
        assert _reason(b1.buy("TCS", 5, "3400.00")) == "halted"
        assert b1.cancel(resting.oid, "TCS").accepted  # cancels work while halted
        assert ops.admin("resume", symbol="TCS").action == "resume"
        assert b1.buy("TCS", 5, "3400.00").accepted
        assert _snapshot(exchange, 0).states == []
        events = [e for e in journal_events(exchange, "A") if e["event"] == "trading_state"]
        assert [(e["symbol"], e["state"]) for e in events] == [("TCS", "halted"), ("TCS", "trading")]
    finally:
        ops.close()
        b1.close()
        states.close()


def test_market_halt_reaches_every_shard_until_resumed(exchange: Launcher) -> None:
    ops, b1 = _client(exchange, "ops"), _client(exchange, "B1", gateway=1)
    try:
        assert ops.admin("halt", text="exchange-wide halt").symbol is None
        assert _reason(b1.buy("TCS", 1, "3400.00")) == "halted"
        r = b1.buy("ITC", 1, "420.00")
        assert _reason(r) == "halted" and r.rejected.text.startswith("the market is halted")
        ops.close()

        async def resume() -> AdminAck:  # the asyncio client has it too
            async with AsyncBrokerClient(gateway_endpoints(exchange), "ops", timeout=5.0) as a:
                return await a.admin("resume")

        assert asyncio.run(resume()).action == "resume"
        assert b1.buy("TCS", 1, "3400.00").accepted and b1.buy("ITC", 1, "420.00").accepted
    finally:
        ops.close()
        b1.close()


def test_kill_switch_cancels_and_refuses_one_broker_until_enabled(exchange: Launcher) -> None:
    ops, b1, b2 = _client(exchange, "ops"), _client(exchange, "B1"), _client(exchange, "B2", gateway=1)
    try:
        mine = [b1.buy("TCS", 1, "3400.00").oid, b1.sell("ITC", 1, "440.00").oid]
        theirs = b2.buy("TCS", 1, "3400.00").oid
        ack = ops.admin("disable", broker="B1")
        assert (ack.action, ack.broker, ack.cancelled) == ("disable", "B1", 2)
        cancelled = []
        deadline = time.monotonic() + 10
        while len(cancelled) < 2 and time.monotonic() < deadline:
            report = b1.next_report(0.5)
            if report is not None and type(report).__name__ == "Cancelled":
                cancelled.append((report.oid, report.reason))  # type: ignore[union-attr]
        assert sorted(cancelled) == sorted((oid, "kill_switch") for oid in mine)
        r = b1.buy("TCS", 1, "3400.00")
        assert _reason(r) == "broker_disabled" and "broker B1 is disabled" in r.rejected.text
        assert [o.oid for o in b2.open_orders()] == [theirs]  # others are not touched
        assert b2.buy("TCS", 1, "3400.00").accepted
        assert ops.admin("enable", broker="B1").cancelled == 0
        assert b1.buy("TCS", 1, "3400.00").accepted
    finally:
        for c in (ops, b1, b2):
            c.close()


def test_admin_from_a_broker_and_bad_admin_commands_are_refused(exchange: Launcher) -> None:
    b1, ops = _client(exchange, "B1"), _client(exchange, "ops")
    try:
        before = journal_events(exchange, "A")
        with pytest.raises(ProtocolError) as e:
            b1.admin("halt", symbol="TCS")
        assert e.value.reason == "not_authorized" and "B1 is not an operator" in e.value.text
        with pytest.raises(ProtocolError) as e:
            ops.admin("disconnected", broker="B1")
        assert e.value.reason == "not_authorized"
        with pytest.raises(ProtocolError) as e:
            ops.admin("halt", symbol="NOPE")
        assert e.value.reason == "unknown_symbol"
        with pytest.raises(ProtocolError) as e:
            ops.admin("disable")
        assert e.value.reason == "missing_field"
        assert journal_events(exchange, "A") == before
        assert b1.buy("TCS", 1, "3400.00").accepted
    finally:
        b1.close()
        ops.close()


def test_a_halt_with_until_ends_by_a_journaled_resume(exchange: Launcher) -> None:
    ops, b1 = _client(exchange, "ops"), _client(exchange, "B1")
    states = _States(exchange, 0)
    try:
        ops.admin("halt", symbol="TCS", until=time.time_ns() + 500_000_000)
        assert _reason(b1.buy("TCS", 1, "3400.00")) == "halted"
        states.wait(lambda: len(states.got) == 2)
        assert [(s.state, s.reason) for s in states.got] == [("halted", "operator"), ("trading", "clock")]
        assert states.got[0].until is not None
        assert b1.buy("TCS", 1, "3400.00").accepted
        commands = [e for e in journal_events(exchange, "A") if e["event"] == "trading_state"]
        assert [(e["state"], e["reason"]) for e in commands] == [("halted", "operator"), ("trading", "clock")]
    finally:
        ops.close()
        b1.close()
        states.close()


def test_halts_and_cancel_on_disconnect_survive_a_fail_over_of_a_pair(tmp_path: Path) -> None:
    # Shard A as a pair: a halt is replicated to the secondary, and a cancel-on-disconnect sent while the primary
    # is dead is resent by the gateway to the new primary, which carries it out.
    zk = start_zookeeper(tmp_path / "zk")
    path = pairs_on_free_ports(LOCAL, tmp_path, f"127.0.0.1:{zk.port}", ("A",), brokers="open")
    path.write_text(path.read_text().replace('id = "B1"\n', 'id = "B1"\ncancel_on_disconnect = true\n', 1))
    ex = Launcher(path, workdir=tmp_path, kinds=(MATCHER, GATEWAY), extra_args={"matcher": ["--fsync", "none"]})
    ex.start()
    try:
        reign = _until_elected(ex)
        ops, b1 = _client(ex, "ops"), _client(ex, "B1")
        ops.admin("halt", symbol="RELIANCE", text="before the fail-over")
        oid = b1.buy("TCS", 1, "3400.00").oid
        _wait_in_sync(ex)
        ex.kill(MATCHER, reign)
        b1.close()  # its session ends while shard A has no primary: the command waits in the gateway's lane
        b1 = _client(ex, "B1")
        assert b1.open_orders() == []  # answered after the new primary carried out the cancel-on-disconnect
        assert _until_elected(ex) != reign
        assert _reason(b1.buy("RELIANCE", 1, "1400.00")) == "halted"  # the new primary holds the halt
        assert b1.buy("TCS", 1, "3400.00").accepted
        ops.admin("resume", symbol="RELIANCE")
        assert b1.buy("RELIANCE", 1, "1400.00").accepted
        assert oid not in [o.oid for o in b1.open_orders()]
        ops.close()
        b1.close()
    finally:
        ex.stop()
        zk.stop()


def _until_elected(ex: Launcher, timeout: float = 30.0) -> str:
    # The name of shard A's primary once ZooKeeper names one.
    from topology.zk import connect, paths
    from topology.zk import load as zload

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        zk = connect(ex.topo)
        try:
            data, _ = zk.get(paths(ex.topo).primary("A"))
            name = zload(data).get("name")
            if name and any(n.alive and n.name == name for n in ex.nodes):
                return str(name)
        except Exception:
            pass
        finally:
            zk.stop()
            zk.close()
        time.sleep(0.2)
    raise AssertionError("no primary elected")


def _wait_in_sync(ex: Launcher, timeout: float = 30.0) -> None:
    from topology.zk import connect, paths
    from topology.zk import load as zload

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        zk = connect(ex.topo)
        try:
            data, _ = zk.get(paths(ex.topo).shard("A") + "/insync")
            if zload(data).get("name"):
                return
        except Exception:
            pass
        finally:
            zk.stop()
            zk.close()
        time.sleep(0.2)
    raise AssertionError("the secondary is not in sync")
