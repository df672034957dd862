"""The broker client's core without sockets: frames and times in, decisions out.

:class:`fabric.client.ClientCore` holds every rule the two clients follow
(docs/client.md section 9, docs/protocol.md sections 3, 6 and 7). These tests
drive its operations by hand, as a shell would, with messages built by
``fabric.protocol.encode`` and times chosen by the test, and check what it
asks for: what to send, when to resend, when to fail over, when to log on
again, and when a command is done.
"""

from __future__ import annotations

from typing import Any

import pytest

from fabric.client import (
    BrokerClient,
    ClientCore,
    Connect,
    Done,
    ExchangeUnavailable,
    LogonRefused,
    Operation,
    OrderResult,
    Receive,
    Send,
)
from fabric.protocol import (
    Accepted,
    Error,
    Fill,
    Heartbeat,
    Logon,
    LogonAck,
    LogonReject,
    Logout,
    New,
    OpenOrders,
    Orders,
    OrderStatus,
    ProtocolError,
    Rejected,
    ServerMessage,
    decode_client,
    encode,
)

GW1, GW2 = "tcp://gw1:7101", "tcp://gw2:7102"
TIMEOUT = 1.0
LOGON = encode(Logon(broker="B1", heartbeat_ms=5000))
HEARTBEAT = encode(Heartbeat())


# ------------------------------------------------------------------ helpers


def _core(heartbeat_ms: int = 5000, timeout: float = TIMEOUT, retries: int = 2) -> ClientCore:
    return ClientCore([GW1, GW2], "B1", heartbeat_ms=heartbeat_ms, timeout=timeout, retries=retries)


def _frames(*msgs: ServerMessage) -> list[bytes]:
    return [encode(m) for m in msgs]


def _ack(heartbeat_ms: int = 5000) -> list[bytes]:
    return _frames(LogonAck(broker="B1", heartbeat_ms=heartbeat_ms))


def _log_on(op: Operation[Any], now: float, endpoint: str = GW1, logon: bytes = LOGON) -> None:
    """Take ``op`` through a logon at ``endpoint`` that the gateway acknowledges at once."""
    assert op.next_action(now) == Connect(endpoint)
    assert op.next_action(now) == Send(logon)
    assert op.next_action(now) == Receive(now + TIMEOUT)
    op.receive(_ack(), now)


def _connected(now: float = 0.0, **kw: Any) -> ClientCore:
    """A core logged on to the first gateway at ``now``."""
    core = _core(**kw)
    op = core.connect()
    hb = kw.get("heartbeat_ms", 5000)
    _log_on(op, now, logon=encode(Logon(broker="B1", heartbeat_ms=hb)))
    assert op.next_action(now) == Done(None)
    return core


def _sent(op: Operation[Any], now: float, until: float | None = None) -> bytes:
    """Take a command through its read of what was waiting and its send; return the bytes sent.

    A shell asks for the next action as soon as the bytes are sent: the wait
    for the answer, until ``until`` (``now + TIMEOUT`` unless given).
    """
    assert op.next_action(now) == Receive(now)  # only what is already there
    action = op.next_action(now)
    assert isinstance(action, Send)
    assert op.next_action(now) == Receive(now + TIMEOUT if until is None else until)
    return action.data


def _done(op: Operation[Any], now: float) -> Any:
    action = op.next_action(now)
    assert isinstance(action, Done), action
    return action.value


def _accepted(oid: str, qty: int = 10) -> Accepted:
    return Accepted(oid=oid, symbol="TCS", side="buy", type="limit", price="3500.00", qty=qty, tif="GTC")


def _status(oid: str, op: str = "new", state: str = "new", reason: str | None = None) -> OrderStatus:
    return OrderStatus(op=op, oid=oid, symbol="TCS", state=state, reason=reason)  # type: ignore[arg-type]


def _rejected(oid: str, reason: str, op: str = "new") -> Rejected:
    return Rejected(op=op, oid=oid, symbol="TCS", reason=reason, text=f"refused: {reason}")


def _fill(oid: str) -> Fill:
    return Fill(oid=oid, symbol="TCS", side="buy", price="3500.00", last_qty=4, cum_qty=4, leaves_qty=6,
                trade_id=1, aggressor=False)


# ------------------------------------------------------------------- logon


def test_connect_logon_ack_done_on_first_gateway() -> None:
    core = _core()
    op = core.connect()
    _log_on(op, 0.0)
    assert op.next_action(0.1) == Done(None)
    assert (core.endpoint, core.connected, core.failovers) == (GW1, True, 0)


def test_connect_logon_reject_raises_logon_refused() -> None:
    op = _core().connect()
    assert op.next_action(0.0) == Connect(GW1)
    assert op.next_action(0.0) == Send(LOGON)
    op.receive(_frames(LogonReject(reason="auth_failed", text="unknown broker B1")), 0.2)
    with pytest.raises(LogonRefused) as refused:
        op.next_action(0.2)
    assert (refused.value.reason, refused.value.text) == ("auth_failed", "unknown broker B1")


def test_connect_no_answer_tries_each_gateway_then_raises_exchange_unavailable() -> None:
    core = _core()
    op = core.connect()
    assert [op.next_action(0.0) for _ in range(3)] == [Connect(GW1), Send(LOGON), Receive(TIMEOUT)]
    assert op.next_action(0.5) == Receive(TIMEOUT)  # woken early with nothing: wait on
    assert [op.next_action(TIMEOUT) for _ in range(3)] == [Connect(GW2), Send(LOGON), Receive(2 * TIMEOUT)]
    with pytest.raises(ExchangeUnavailable, match="no gateway answered"):
        op.next_action(2 * TIMEOUT)
    assert core.endpoint == GW1  # round the list, back where it started


def test_connect_second_gateway_answers_done_there() -> None:
    core = _core()
    op = core.connect()
    assert [op.next_action(0.0) for _ in range(3)] == [Connect(GW1), Send(LOGON), Receive(TIMEOUT)]
    _log_on(op, TIMEOUT, endpoint=GW2)
    assert op.next_action(TIMEOUT) == Done(None)
    assert core.endpoint == GW2 and core.failovers == 0  # connect() itself is not a failover


# ---------------------------------------------------------------- commands


def test_command_on_new_core_logs_on_before_sending() -> None:
    core = _core()
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    _log_on(op, 0.0)
    sent = _sent(op, 0.0)
    assert decode_client(sent) == New(oid="o1", symbol="TCS", side="buy", type="limit", price="3500.00", qty=10,
                                      tif="GTC")


def test_post_only_and_gtd_go_out_only_when_asked_for() -> None:
    import datetime

    core = _connected()
    plain = _sent(core.sell("TCS", 5, "3500.00", oid="o1"), 0.0)
    assert b"post_only" not in plain and b"expire_date" not in plain  # an older gateway's bytes
    sent = _sent(core.buy("TCS", 10, "3499.00", oid="o2", post_only=True, expire_date=datetime.date(2026, 1, 5)),
                 0.0)
    assert decode_client(sent) == New(oid="o2", symbol="TCS", side="buy", type="limit", price="3499.00", qty=10,
                                      tif="GTD", post_only=True, expire_date="2026-01-05")
    sent = _sent(core.sell("TCS", 30, "3501.00", oid="o3", disclosed_qty=10), 0.0)
    assert decode_client(sent).extras() == (False, None, 10)


def test_stop_price_goes_out_with_a_day_default_and_its_triggered_report_is_a_report() -> None:
    from fabric.protocol import Replace, Triggered

    core = _connected()
    sent = _sent(core.sell("TCS", 5, oid="s1", stop_price="3480.00"), 0.0)  # a stop-loss market order (SL-M)
    assert decode_client(sent) == New(oid="s1", symbol="TCS", side="sell", type="market", qty=5, tif="DAY",
                                      stop_price="3480.00")
    assert b"stop_price" not in _sent(core.sell("TCS", 5, "3500.00", oid="o1"), 0.0)
    op = core.replace("s1", "TCS", stop_price="3475.00")
    assert decode_client(_sent(op, 0.0)) == Replace(oid="s1", symbol="TCS", stop_price="3475.00")
    trig = Triggered(oid="s1", symbol="TCS", side="sell", type="market", qty=5, stop_price="3475.00")
    op.receive(_frames(trig, _status("s1", op="replace")), 0.1)
    r = _done(op, 0.1)
    assert r.events == [trig] and list(core.reports) == [trig]  # a triggered report belongs to its order's command


def test_async_client_passes_stop_price_to_the_core() -> None:
    import asyncio
    import inspect

    from fabric.client import AsyncBrokerClient, BrokerClient

    for cls in (BrokerClient, AsyncBrokerClient):
        for name in ("buy", "sell", "replace"):
            assert "stop_price" in inspect.signature(getattr(cls, name)).parameters, (cls, name)
    seen: list[Any] = []

    class Probe(AsyncBrokerClient):
        async def _in_turn(self, op: Any) -> Any:  # the operation the shell would drive
            seen.append(op)
            return op

    c = Probe(["tcp://127.0.0.1:1"], "B1")
    op = asyncio.run(c.buy("TCS", 5, "3510.00", stop_price="3505.00", oid="b1"))
    rep = asyncio.run(c.replace("b1", "TCS", stop_price="3506.00"))
    c.close()
    assert op._msg.stop() == "3505.00" and rep._msg.stop() == "3506.00"  # what the operation will send


def test_command_accepted_then_closing_status_done_with_events() -> None:
    core = _connected()
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    _sent(op, 0.0)
    op.receive(_frames(_accepted("o1")), 0.1)
    assert op.next_action(0.1) == Receive(TIMEOUT)  # reports alone do not end the command
    op.receive(_frames(_fill("o1"), _status("o1", state="partially_filled")), 0.2)
    r = _done(op, 0.2)
    assert isinstance(r, OrderResult)
    assert [type(e) for e in r.events] == [Accepted, Fill] and r.accepted and r.resends == 0
    assert r.state == "partially_filled" and r.filled_qty == 4
    assert [type(m) for m in core.reports] == [Accepted, Fill]  # the stream has them too


def test_command_rejected_alone_keeps_waiting() -> None:
    core = _connected()
    op = core.buy("TCS", 10, "3500.03", oid="o1")
    _sent(op, 0.0)
    op.receive(_frames(_rejected("o1", "price_off_tick")), 0.1)
    assert op.next_action(0.1) == Receive(TIMEOUT)


def test_command_rejected_then_closing_status_gives_rejected_and_status() -> None:
    core = _connected()
    op = core.buy("TCS", 10, "3500.03", oid="o1")
    _sent(op, 0.0)
    op.receive(_frames(_rejected("o1", "price_off_tick")), 0.1)
    op.receive(_frames(_status("o1", state="rejected", reason="price_off_tick")), 0.2)
    r = _done(op, 0.2)
    assert r.rejected is not None and r.rejected.reason == "price_off_tick"
    assert r.status is not None and (r.status.state, r.status.reason) == ("rejected", "price_off_tick")
    assert r.state == "rejected" and not r.accepted


def test_closing_status_of_other_op_or_oid_keeps_waiting() -> None:
    core = _connected()
    op = core.cancel("o1", "TCS")
    _sent(op, 0.0)
    op.receive(_frames(_status("o1", op="new"), _status("o2", op="cancel")), 0.1)
    assert op.next_action(0.1) == Receive(TIMEOUT)
    op.receive(_frames(_status("o1", op="cancel", state="cancelled")), 0.2)
    assert _done(op, 0.2).state == "cancelled"


def test_error_answer_done_with_error_and_no_status() -> None:
    core = _connected()
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    _sent(op, 0.0)
    op.receive(_frames(Error(reason="bad_field", text="qty", field="qty")), 0.1)
    r = _done(op, 0.1)
    assert r.error is not None and r.status is None and r.state == "rejected" and not r.accepted


def test_fill_of_other_oid_report_stream_only() -> None:
    core = _connected()
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    _sent(op, 0.0)
    op.receive(_frames(_fill("resting-7"), _accepted("o1"), _status("o1")), 0.1)
    r = _done(op, 0.1)
    assert [type(e) for e in r.events] == [Accepted]
    assert [(type(m), m.oid) for m in core.reports] == [(Fill, "resting-7"), (Accepted, "o1")]


def test_order_status_done_returns_order_status() -> None:
    core = _connected()
    op = core.order_status("o1", "TCS")
    _sent(op, 0.0)
    op.receive(_frames(_status("o1", op="status", state="filled")), 0.1)
    assert _done(op, 0.1) == _status("o1", op="status", state="filled")


def test_order_status_refused_raises_protocol_error() -> None:
    core = _connected()
    op = core.order_status("o1", "XYZ")
    _sent(op, 0.0)
    op.receive(_frames(_rejected("o1", "unknown_symbol", op="status"),
                       _status("o1", op="status", state="unknown", reason="unknown_symbol")), 0.1)
    with pytest.raises(ProtocolError) as refused:
        op.next_action(0.1)
    assert refused.value.reason == "unknown_symbol"


# ------------------------------------------------------ resends and failover


def test_timeout_resends_same_bytes_with_same_oid() -> None:
    core = _connected()
    op = core.sell("TCS", 5, oid="o1")
    first = _sent(op, 0.0)
    assert op.next_action(TIMEOUT) == Send(first)  # Lazy Pirate: the same message again
    assert decode_client(first).oid == "o1"  # type: ignore[union-attr]
    assert op.next_action(TIMEOUT) == Receive(2 * TIMEOUT)
    op.receive(_frames(_status("o1", state="filled")), 1.5)
    r = _done(op, 1.5)
    assert (r.resends, r.state, core.failovers, core.endpoint) == (1, "filled", 0, GW1)


def test_resends_used_up_fail_over_to_next_gateway() -> None:
    core = _connected(retries=2)
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    first = _sent(op, 0.0)
    for k in (1, 2):  # `retries` resends on the first gateway
        assert op.next_action(k * TIMEOUT) == Send(first)
        assert op.next_action(k * TIMEOUT) == Receive((k + 1) * TIMEOUT)
    _log_on(op, 3 * TIMEOUT, endpoint=GW2)  # then the next gateway
    assert op.next_action(3 * TIMEOUT) == Send(first)
    assert (core.failovers, core.endpoint) == (1, GW2)
    op.receive(_frames(_status("o1")), 3.2)
    assert _done(op, 3.2).resends == 3


def test_three_silent_heartbeat_intervals_gateway_dead_fails_over() -> None:
    core = _connected(heartbeat_ms=1000)
    core.timeout = 10.0
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    first = _sent(op, 0.0, until=1.0)  # woken for the heartbeat before the command's deadline
    assert op.next_action(3.5) == Send(HEARTBEAT)
    assert op.next_action(3.5) == Connect(GW2)  # nothing from gw1 since 0.0: dead, long before the timeout
    assert op.next_action(3.5) == Send(encode(Logon(broker="B1", heartbeat_ms=1000)))
    op.next_action(3.5)
    op.receive(_ack(1000), 3.6)
    assert op.next_action(3.6) == Send(first)
    assert core.failovers == 1


def test_anything_received_keeps_gateway_alive() -> None:
    core = _connected(heartbeat_ms=1000)
    core.timeout = 10.0
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    _sent(op, 0.0, until=1.0)
    op.receive([b"not msgpack"], 2.9)  # even bytes it cannot read show the gateway alive
    assert op.next_action(3.5) == Send(HEARTBEAT)
    assert isinstance(op.next_action(3.5), Receive)
    assert core.gateway_dead(6.0) and not core.gateway_dead(5.8)


# ------------------------------------------------------------ logging on again


def test_logout_during_command_logs_on_again_and_resends() -> None:
    core = _connected()
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    first = _sent(op, 0.0)
    op.receive(_frames(Logout(reason="heartbeat_timeout", text="no heartbeat")), 0.3)
    _log_on(op, 0.3)  # the same gateway, a new session
    assert op.next_action(0.3) == Send(first)
    op.receive(_frames(_accepted("o1"), _status("o1")), 0.4)
    r = _done(op, 0.4)
    assert (r.resends, r.state, core.failovers) == (0, "new", 0)


def test_not_logged_on_refusal_logs_on_again_and_resends() -> None:
    core = _connected()
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    first = _sent(op, 0.0)
    op.receive(_frames(_rejected("o1", "not_logged_on"), _status("o1", state="rejected", reason="not_logged_on")), 0.1)
    _log_on(op, 0.1)
    assert op.next_action(0.1) == Send(first)
    op.receive(_frames(_accepted("o1"), _status("o1")), 0.2)
    r = _done(op, 0.2)
    assert [type(e) for e in r.events] == [Accepted] and r.accepted  # the refusal of the old session is not in it


def test_logout_waiting_before_command_logs_on_before_sending() -> None:
    core = _connected()
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    assert op.next_action(20.0) == Receive(20.0)  # what came while the caller was away, read first
    op.receive(_frames(Logout(reason="heartbeat_timeout", text="no heartbeat")), 20.0)
    _log_on(op, 20.0)  # a new session before the command goes out
    action = op.next_action(20.0)
    assert isinstance(action, Send) and decode_client(action.data).oid == "o1"  # type: ignore[union-attr]


def test_reports_during_logon_stream_only() -> None:
    core = _connected()
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    _sent(op, 0.0)
    op.receive(_frames(Logout(reason="heartbeat_timeout", text="no heartbeat")), 0.1)
    assert op.next_action(0.1) == Connect(GW1)
    op.next_action(0.1)
    op.next_action(0.1)
    op.receive(_frames(_accepted("o1")) + _ack(), 0.2)  # reached the new session from the first send
    op.next_action(0.2)
    op.receive(_frames(_status("o1")), 0.3)
    r = _done(op, 0.3)
    assert r.events == [] and [type(m) for m in core.reports] == [Accepted]


# --------------------------------------------------------------- heartbeats


def test_idle_interval_heartbeat_due() -> None:
    core = _connected(heartbeat_ms=1000)
    assert not core.heartbeat_due(0.99) and core.heartbeat_due(1.0)
    op = core.poll(0.0)
    assert op.next_action(1.0) == Receive(1.0)
    assert op.next_action(1.0) == Send(HEARTBEAT)
    assert op.next_action(1.0) == Done([])
    assert not core.heartbeat_due(1.5)


def test_poll_before_interval_no_heartbeat() -> None:
    core = _connected(heartbeat_ms=1000)
    op = core.poll(0.2)
    assert op.next_action(0.5) == Receive(0.7)
    assert op.next_action(0.7) == Done([])


def test_command_waiting_idle_interval_sends_heartbeat() -> None:
    core = _connected(heartbeat_ms=1000)
    core.timeout = 10.0
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    _sent(op, 0.0, until=1.0)
    assert op.next_action(1.0) == Send(HEARTBEAT)
    assert op.next_action(1.0) == Receive(2.0)


# ------------------------------------------------ queries, polls and the stream


def test_open_orders_answer_returns_orders() -> None:
    core = _connected()
    op = core.open_orders("TCS")
    assert op.next_action(0.0) == Send(encode(Orders(symbol="TCS")))
    assert op.next_action(0.0) == Receive(3 * TIMEOUT)  # timeout * (retries + 1)
    mine = _status("o1", op="orders")
    op.receive(_frames(OpenOrders(symbol="TCS", orders=[mine])), 0.1)
    assert op.wants_input is False
    assert op.next_action(0.1) == Done([mine])


def test_open_orders_no_answer_raises_exchange_unavailable() -> None:
    core = _connected()
    op = core.open_orders()
    op.next_action(0.0)
    op.next_action(0.0)
    with pytest.raises(ExchangeUnavailable, match="no answer to an orders query"):
        op.next_action(3 * TIMEOUT)


def test_poll_returns_messages_received_after_its_logon() -> None:
    core = _core()
    op = core.poll(0.5)
    _log_on(op, 0.0)
    assert op.next_action(0.0) == Receive(0.5)
    assert op.wants_input  # a poll reads everything that waits
    op.receive(_frames(_fill("o1"), Heartbeat()), 0.1)
    assert op.next_action(0.1) == Done([_fill("o1"), Heartbeat()])


def test_next_report_waiting_in_stream_returned_at_once() -> None:
    core = _connected()
    core.reports.append(_fill("o1"))
    assert core.next_report(5.0).next_action(0.0) == Done(_fill("o1"))


def test_next_report_nothing_returns_none_at_timeout() -> None:
    core = _connected()
    op = core.next_report(2.0)
    assert op.next_action(0.0) == Receive(2.0)
    assert op.next_action(2.0) == Done(None)


def test_next_report_arrives_stops_reading() -> None:
    core = _connected()
    op = core.next_report(None)
    assert op.next_action(0.0) == Receive(5.0)  # no limit: wakes for the heartbeat
    op.receive(_frames(_fill("o1")), 0.1)
    assert not op.wants_input
    assert op.next_action(0.1) == Done(_fill("o1"))


def test_submit_sends_once_without_waiting() -> None:
    core = _connected()
    msg = New(oid="o9", symbol="TCS", side="buy", type="limit", price="3500.00", qty=1, tif="GTC")
    op = core.submit(msg)
    assert op.next_action(0.0) == Send(encode(msg))
    assert op.next_action(0.0) == Done(None)


# ----------------------------------------------------------- ids and the end


def test_next_oid_unique_with_broker_prefix() -> None:
    core = _core()
    a, b = core.next_oid(), core.next_oid()
    assert a != b and a.startswith("B1-") and b.endswith("-2")


def test_close_connected_returns_logout_once() -> None:
    core = _connected()
    assert core.close() == encode(Logout())
    assert core.close() is None and not core.connected


def test_abandoned_command_frees_waiter() -> None:
    core = _connected()
    op = core.buy("TCS", 10, "3500.00", oid="o1")
    _sent(op, 0.0)
    op.close()
    with pytest.raises(RuntimeError):
        op.next_action(0.1)
    # The next command is not disturbed by the abandoned one's answers.
    nxt = core.buy("TCS", 1, "3500.00", oid="o2")
    _sent(nxt, 0.2)
    nxt.receive(_frames(_status("o1")), 0.3)
    assert nxt.next_action(0.3) == Receive(0.2 + TIMEOUT)


def test_client_attributes_live_in_core() -> None:
    c = BrokerClient([GW1, GW2], "B1", timeout=3.0)  # no socket until it connects
    c.timeout = 4.5
    c.reports.append(_fill("o1"))
    core = c._core
    assert (core.timeout, c.retries, c.endpoint, c.failovers) == (4.5, 2, GW1, 0)
    assert c.reports is core.reports and c.sock is None
