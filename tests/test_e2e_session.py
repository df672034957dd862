"""The broker's session over real sockets: liveness, closing messages, the order of answers, order reasons.

Each test launches the local topology as processes on free ports and talks to a
gateway from a raw DEALER, byte for byte as ``docs/protocol.md`` describes, the
way a client written in another language would.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
import zmq

from fabric.client import BrokerClient
from fabric.protocol import (
    Accepted,
    Cancelled,
    Logout,
    OrderStatus,
    Rejected,
    decode_server,
)
from tests.helpers import gateway_endpoints
from topology.launcher import Launcher

pytestmark = pytest.mark.e2e


class _Broker:
    """A raw DEALER logged on to a gateway: sends msgpack maps, collects every answer frame."""

    def __init__(self, endpoint: str, broker: str | None, heartbeat_ms: int = 60_000) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.got: list[Any] = []
        if broker is not None:
            self.send(t="logon", broker=broker, heartbeat_ms=heartbeat_ms)
            self.wait(lambda: any(type(m).__name__ == "LogonAck" for m in self.got))
            self.got.clear()

    def send(self, **fields: Any) -> None:
        self.sock.send(msgpack.packb({"v": 1, **fields}))

    def send_raw(self, *frames: bytes) -> None:
        self.sock.send_multipart(frames)

    def read(self, wait: float) -> None:
        if self.sock.poll(int(wait * 1000)):
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                self.got.extend(decode_server(f) for f in frames)

    def wait(self, until: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, f"timed out; got {self.got}"
            self.read(0.05)

    def closing(self, op: str, oid: str) -> list[OrderStatus]:
        return [m for m in self.got if isinstance(m, OrderStatus) and (m.op, m.oid) == (op, oid)]

    def close(self) -> None:
        self.sock.close(0)


_NEW = {"t": "new", "symbol": "TCS", "side": "buy", "type": "limit", "price": "3400.00", "qty": 10, "tif": "GTC"}


def test_refused_messages_keep_a_session_alive(exchange: Launcher) -> None:
    # A broker that sends only messages the gateway refuses, and no heartbeat, for over three intervals.
    g1, _ = gateway_endpoints(exchange)
    b = _Broker(g1, "LIVE", heartbeat_ms=1000)
    try:
        end = time.monotonic() + 4.5
        n = 0
        while time.monotonic() < end:
            n += 1
            if n % 2:
                b.send(**_NEW, oid=f"live-{n}", colour="red")  # an unknown field: refused, bad_field
            else:
                b.send_raw(b"\xc1 garbage")  # not msgpack: refused, malformed
            b.read(0.25)
        assert not [m for m in b.got if isinstance(m, Logout)], [m for m in b.got if isinstance(m, Logout)]
        refused = [m for m in b.got if isinstance(m, Rejected)]
        assert refused and {m.reason for m in refused} == {"bad_field"}
        # The session is still there: a real order is accepted on it.
        b.got.clear()
        b.send(**_NEW, oid="live-ok")
        b.wait(lambda: b.closing("new", "live-ok"))
        assert any(isinstance(m, Accepted) and m.oid == "live-ok" for m in b.got)
    finally:
        b.close()


def test_closed_order_status_carries_its_cancel_reason(exchange: Launcher) -> None:
    # Nothing rests on the quiet exchange's TCS book below the reference price, so IOC and FOK buys find nothing.
    g1, _ = gateway_endpoints(exchange)
    with BrokerClient([g1], "REASONS") as c:
        rest = c.buy("TCS", 5, "3400.00")
        assert rest.state == "new"
        cases = {
            "requested": c.cancel(rest.oid, "TCS"),
            "unfilled_ioc_remainder": c.buy("TCS", 5, "3400.00", "IOC"),
            "fok_not_fillable": c.buy("TCS", 5, "3400.00", "FOK"),
        }
        for reason, r in cases.items():
            assert r.status is not None and (r.status.state, r.status.reason) == ("cancelled", reason), r
            assert [e.reason for e in r.events if isinstance(e, Cancelled)] == [reason]
            later = c.order_status(r.oid, "TCS")
            assert (later.state, later.reason, later.op) == ("cancelled", reason, "status")
        filled_or_open = c.order_status(c.buy("TCS", 1, "3400.00").oid, "TCS")
        assert (filled_or_open.state, filled_or_open.reason) == ("new", None)


def test_answers_for_one_order_keep_the_order_of_its_commands(exchange: Launcher) -> None:
    g1, _ = gateway_endpoints(exchange)
    b = _Broker(g1, "ORDERLY")
    try:
        oids = [f"ord-{i}" for i in range(20)]
        for oid in oids:  # back to back: the three commands of one order reach the matcher in one batch
            b.send(**_NEW, oid=oid)
            b.send(t="status", oid=oid, symbol="TCS")
            b.send(t="cancel", oid=oid, symbol="TCS", pad=1)  # refused by the gateway: bad_field
            b.send(t="cancel", oid=oid, symbol="TCS")
        b.wait(lambda: all(len(b.closing("cancel", oid)) == 2 for oid in oids))
        b.read(0.3)
        for oid in oids:
            seen = [(type(m).__name__, getattr(m, "op", None), getattr(m, "state", None))
                    for m in b.got if getattr(m, "oid", None) == oid]
            assert seen == [
                ("Accepted", None, None), ("OrderStatus", "new", "new"),
                ("OrderStatus", "status", "new"),
                ("Rejected", "cancel", None), ("OrderStatus", "cancel", "new"),
                ("Cancelled", None, None), ("OrderStatus", "cancel", "cancelled"),
            ], (oid, seen)
    finally:
        b.close()


@pytest.mark.parametrize("logged_on", [True, False])
def test_every_refused_command_ends_in_one_closing_order_status(exchange: Launcher, logged_on: bool) -> None:
    g1, _ = gateway_endpoints(exchange)
    b = _Broker(g1, "CLOSING" if logged_on else None)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({**_NEW, "oid": "c-1", "qty": "10"}, "bad_field", "new"),
        ({k: v for k, v in {**_NEW, "oid": "c-2"}.items() if k != "qty"}, "missing_field", "new"),
        ({**_NEW, "oid": "c-3", "v": 2}, "unsupported_version", "new"),
        ({**_NEW, "oid": "c-4", "symbol": "NOPE"}, "unknown_symbol", "new"),
        ({"t": "cancel", "oid": "c-5", "symbol": "TCS", "x": 1}, "bad_field", "cancel"),
        ({"t": "replace", "oid": "c-6", "symbol": "NOPE", "qty": 5}, "unknown_symbol", "replace"),
        ({"t": "status", "oid": "c-7"}, "missing_field", "status"),
    ]
    try:
        for fields, reason, op in cases:
            oid = fields["oid"]
            b.got.clear()
            b.send(**fields)
            b.wait(lambda oid=oid, op=op: b.closing(op, oid))  # type: ignore[misc]
            b.read(0.2)  # nothing may follow the closing message
            want = "not_logged_on" if not logged_on and reason in ("unknown_symbol",) else reason
            (rej,) = [m for m in b.got if isinstance(m, Rejected)]
            assert (rej.op, rej.oid, rej.reason) == (op, oid, want), fields
            (st,) = b.closing(op, oid)
            assert st.reason == want and st.state == ("rejected" if op == "new" else "unknown"), st
            assert b.got[-1] is st and len(b.got) == 2, b.got
    finally:
        b.close()


def test_logon_reject_for_a_second_logon_leaves_the_session_as_it_was(exchange: Launcher) -> None:
    g1, _ = gateway_endpoints(exchange)
    b = _Broker(g1, "TWICE")
    try:
        b.send(t="logon", broker="OTHER")
        b.wait(lambda: b.got)
        (rej,) = b.got
        assert (type(rej).__name__, rej.reason) == ("LogonReject", "already_logged_on")
        b.got.clear()
        b.send(**_NEW, oid="twice-1")  # still TWICE's session
        b.wait(lambda: b.closing("new", "twice-1"))
        assert isinstance(b.got[0], Accepted)
    finally:
        b.close()
    with BrokerClient([g1], "TWICE") as c:  # the order is TWICE's, not OTHER's
        assert c.order_status("twice-1", "TCS").state == "new"


def test_a_connection_that_floods_before_logon_is_ignored_and_others_trade_on(exchange: Launcher) -> None:
    from nodes.gateway import BEFORE_LOGON

    g1, _ = gateway_endpoints(exchange)
    stranger = _Broker(g1, None)
    try:
        for i in range(2000):
            stranger.send(**_NEW, oid=f"s-{i}")
        stranger.read(1.0)
        stranger.read(0.5)
        refused = [m for m in stranger.got if isinstance(m, Rejected)]
        # A handful answered (not_logged_on), then one last word, then nothing, whatever else comes.
        assert len(refused) == BEFORE_LOGON - 1 and {m.reason for m in refused} == {"not_logged_on"}
        last = stranger.got[-1]
        assert type(last).__name__ == "Error" and last.reason == "not_logged_on" and "ignored" in last.text
        stranger.got.clear()
        stranger.send(t="logon", broker="LATE")
        stranger.read(0.5)
        assert stranger.got == []  # even a logon: the connection is ignored; a new one is served
        with BrokerClient([g1], "LATE") as c:
            assert c.buy("TCS", 1, "3400.00").state == "new"
    finally:
        stranger.close()
