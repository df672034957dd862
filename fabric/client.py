"""The broker's client: ``BrokerClient`` (synchronous) and ``AsyncBrokerClient`` (asyncio).

Both speak the protocol of ``docs/protocol.md`` over a ZeroMQ DEALER socket to
one of the exchange's gateways, and follow the same reliability rules (the
ZeroMQ guide's Lazy Pirate):

- every order gets a client order id (generated unless given), unique for the
  broker over the whole day;
- a command that gets no answer within ``timeout`` seconds is sent again,
  with the same id, up to ``retries`` times; the exchange never executes a
  resent ``new`` twice (it answers with the order's state);
- the gateway is presumed dead when nothing (not even a heartbeat) has come
  from it for three heartbeat intervals, or when the resends are used up; the
  client then logs on to the next gateway of its list and resends what was
  waiting.

A command returns once its outcome is known: the execution reports it caused
(``accepted`` or ``rejected``, the fills of its aggressive part, a cancel of an
unfilled IOC rest...) followed by the gateway's ``order_status`` for the
command, which says nothing more is coming for it now.  Every execution report
received, including fills of resting orders that come later, also goes to the
client's report stream (:meth:`BrokerClient.poll`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import zmq
import zmq.asyncio

from fabric.protocol import (
    Accepted,
    Cancel,
    Cancelled,
    Error,
    Expired,
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
    Replace,
    Replaced,
    ServerMessage,
    Status,
    decode_server,
    encode,
)

Report = Accepted | Rejected | Fill | Cancelled | Replaced | Expired


class ExchangeUnavailable(ConnectionError):
    """No gateway of the list answered."""


class LogonRefused(PermissionError):
    """A gateway refused the logon (``reason`` as in the protocol)."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(f"{reason}: {text}")
        self.reason = reason
        self.text = text


@dataclass
class OrderResult:
    """The outcome of one command.

    Attributes
    ----------
    oid, symbol, op
        The order and the command (``new``, ``cancel``, ``replace``, ``status``).
    events
        The execution reports of this command, in order.
    status
        The command's closing ``order_status``: the order's state once the
        command was done (after a refusal too: a refused ``new`` is
        ``rejected``). ``None`` only when the gateway answered ``error``.
    resends
        How many times the command was sent again.
    """

    oid: str
    symbol: str
    op: str
    events: list[Report] = field(default_factory=list)
    status: OrderStatus | None = None
    error: Error | None = None
    resends: int = 0

    @property
    def rejected(self) -> Rejected | None:
        """The ``rejected`` report, if the command was refused."""
        return next((e for e in self.events if isinstance(e, Rejected)), None)

    @property
    def accepted(self) -> bool:
        """Whether the command was carried out (a ``new`` accepted, a cancel or replace done)."""
        return self.rejected is None and self.error is None and self.status is not None and self.status.state not in (
            "rejected", "unknown")

    @property
    def fills(self) -> list[Fill]:
        """The fills of this command."""
        return [e for e in self.events if isinstance(e, Fill)]

    @property
    def filled_qty(self) -> int:
        """Quantity filled by this command."""
        return sum(f.last_qty for f in self.fills)

    @property
    def state(self) -> str:
        """The order's state after the command (``rejected`` when refused)."""
        if self.status is not None:
            return self.status.state
        return "rejected"


class _Waiter:
    # Matches incoming messages to the command being waited for; shared by both clients.

    def __init__(self, result: OrderResult) -> None:
        self.result = result
        self.done = False
        self.relogon = False  # the gateway ended our session: log on again and resend

    def feed(self, msg: ServerMessage) -> None:
        # Every command ends with one `order_status` of its op (docs/protocol.md, section 6); a `rejected`
        # comes before it. A refusal for want of a session is followed by one too, but the command is then
        # sent again on a new session, so that status does not end it.
        r = self.result
        if isinstance(msg, Logout):
            self.relogon = True
        elif isinstance(msg, OrderStatus):
            if msg.oid == r.oid and msg.op == r.op:
                if msg.reason == "not_logged_on":
                    self.relogon = True
                else:
                    r.status = msg
                    self.done = True
        elif isinstance(msg, Rejected):
            if msg.oid == r.oid and msg.op == r.op and msg.reason != "not_logged_on":
                r.events.append(msg)
        elif isinstance(msg, Error):
            r.error = msg
            self.done = True
        elif isinstance(msg, Accepted | Fill | Cancelled | Replaced | Expired) and msg.oid == r.oid:
            r.events.append(msg)


def _status_of(r: OrderResult) -> OrderStatus:
    # The answer to a `status` command, or the refusal as an exception.
    if r.rejected is not None:
        raise ProtocolError(r.rejected.reason, r.rejected.text, r.rejected.field)
    if r.error is not None or r.status is None:
        raise ProtocolError(r.error.reason if r.error else "malformed", r.error.text if r.error else "no status")
    return r.status


def _new(oid: str, symbol: str, side: str, qty: int, price: Decimal | str | None, tif: str | None,
         otype: str | None) -> New:
    kind = otype or ("market" if price is None else "limit")
    return New(oid=oid, symbol=symbol, side=side, type=kind,  # type: ignore[arg-type]
               price=None if price is None else str(price), qty=qty,
               tif=tif or ("IOC" if kind == "market" else "GTC"))  # type: ignore[arg-type]


class _Base:
    # What both clients share: configuration, ids, the report stream.

    def __init__(self, gateways: Sequence[str], broker: str, *, secret: str | None = None, heartbeat_ms: int = 5000,
                 timeout: float = 2.0, retries: int = 2) -> None:
        if not gateways:
            raise ValueError("give at least one gateway endpoint")
        self.gateways = list(gateways)
        self.broker = broker
        self.secret = secret
        self.heartbeat_ms = heartbeat_ms
        self.timeout = timeout
        self.retries = retries
        self.gateway_index = 0
        self.reports: collections.deque[Report] = collections.deque()
        self._prefix = f"{broker}-{secrets.token_hex(4)}-"
        self._n = 0
        self._last_rx = 0.0
        self._last_tx = 0.0
        self.failovers = 0

    def next_oid(self) -> str:
        """Return a new client order id, unique for this broker."""
        self._n += 1
        return f"{self._prefix}{self._n}"

    @property
    def endpoint(self) -> str:
        """The gateway currently in use."""
        return self.gateways[self.gateway_index]

    def _take(self, body: bytes, waiter: _Waiter | None) -> ServerMessage | None:
        self._last_rx = time.monotonic()
        try:
            msg = decode_server(body)
        except ProtocolError:
            return None
        if isinstance(msg, Accepted | Rejected | Fill | Cancelled | Replaced | Expired):
            self.reports.append(msg)
        if waiter is not None:
            waiter.feed(msg)
        return msg

    def _take_all(self, frames: list[bytes], waiter: _Waiter | None) -> list[ServerMessage]:
        # A message from the gateway carries one protocol message per frame.
        out = []
        for body in frames:
            msg = self._take(body, waiter)
            if msg is not None:
                out.append(msg)
        return out

    def _gateway_dead(self) -> bool:
        return time.monotonic() - self._last_rx > 3 * self.heartbeat_ms / 1000.0


class BrokerClient(_Base):
    """A broker's synchronous connection to the exchange.

    Parameters
    ----------
    gateways
        Gateway endpoints (``tcp://host:port``) in the order to try them.
    broker
        The broker's id.
    secret
        The broker's secret, when the exchange asks for one.
    heartbeat_ms
        Heartbeat interval agreed at logon.
    timeout
        Seconds to wait for an answer before sending a command again.
    retries
        Resends on one gateway before moving to the next.

    Examples
    --------
    >>> with BrokerClient(["tcp://127.0.0.1:7101"], "B1") as c:    # doctest: +SKIP
    ...     r = c.buy("TCS", 10, "3500.05")
    ...     r.state, [(f.price, f.last_qty) for f in r.fills]
    """

    def __init__(self, gateways: Sequence[str], broker: str, *, secret: str | None = None, heartbeat_ms: int = 5000,
                 timeout: float = 2.0, retries: int = 2, ctx: zmq.Context | None = None) -> None:
        super().__init__(gateways, broker, secret=secret, heartbeat_ms=heartbeat_ms, timeout=timeout, retries=retries)
        self.ctx = ctx or zmq.Context.instance()
        self.sock: zmq.Socket | None = None

    def __enter__(self) -> BrokerClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- connection

    def connect(self) -> None:
        """Log on to the first gateway that answers, starting with the current one.

        Raises
        ------
        ExchangeUnavailable
            When no gateway answered.
        LogonRefused
            When a gateway refused the broker.
        """
        for _ in range(len(self.gateways)):
            if self._logon():
                return
            self.gateway_index = (self.gateway_index + 1) % len(self.gateways)
        raise ExchangeUnavailable(f"no gateway answered: {', '.join(self.gateways)}")

    def _logon(self) -> bool:
        if self.sock is not None:
            self.sock.close(0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        self.sock = sock
        sock.send(encode(Logon(broker=self.broker, secret=self.secret, heartbeat_ms=self.heartbeat_ms)))
        self._last_tx = time.monotonic()
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1):
                break
            for msg in self._take_all(sock.recv_multipart(), None):
                if isinstance(msg, LogonAck):
                    return True
                if isinstance(msg, LogonReject):
                    raise LogonRefused(msg.reason, msg.text)
        return False

    def _failover(self) -> None:
        self.failovers += 1
        self.gateway_index = (self.gateway_index + 1) % len(self.gateways)
        self.connect()

    def close(self) -> None:
        """Log out and close the connection."""
        if self.sock is not None:
            with contextlib.suppress(zmq.ZMQError):  # closing anyway
                self.sock.send(encode(Logout()), zmq.NOBLOCK)
            self.sock.close(0)
            self.sock = None

    # --------------------------------------------------------------- commands

    def _send(self, msg: Any) -> None:
        assert self.sock is not None, "connect() first"
        self.sock.send(encode(msg))
        self._last_tx = time.monotonic()

    def _read_waiting(self, waiter: _Waiter | None) -> None:
        assert self.sock is not None
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._take_all(frames, waiter)

    def _heartbeat(self) -> None:
        if time.monotonic() - self._last_tx >= self.heartbeat_ms / 1000.0:
            self._send(Heartbeat())

    def _command(self, msg: New | Cancel | Replace | Status, op: str) -> OrderResult:
        if self.sock is None:
            self.connect()
        result = OrderResult(oid=msg.oid, symbol=msg.symbol, op=op)
        waiter = _Waiter(result)
        tries = 0
        # What arrived while the caller was away (heartbeats, a logout after a long idle spell): read it
        # first, so that silence is judged on what the gateway really sent.
        self._read_waiting(waiter)
        if waiter.relogon:
            waiter.relogon = False
            self.connect()
        self._send(msg)
        deadline = time.monotonic() + self.timeout
        while not waiter.done:
            now = time.monotonic()
            if waiter.relogon:
                # The session was ended (idle too long, or the gateway restarted): a new one, same command.
                waiter.relogon = False
                self.connect()
                self._send(msg)
                deadline = time.monotonic() + self.timeout
                continue
            if now >= deadline or self._gateway_dead():
                tries += 1
                result.resends += 1
                if tries > self.retries or self._gateway_dead():
                    self._failover()
                    tries = 0
                self._send(msg)
                deadline = time.monotonic() + self.timeout
                continue
            wait = min(deadline - now, self.heartbeat_ms / 1000.0)
            assert self.sock is not None
            if self.sock.poll(int(wait * 1000) + 1):
                while not waiter.done:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._take_all(frames, waiter)
            self._heartbeat()
        return result

    def buy(self, symbol: str, qty: int, price: Decimal | str | None = None, tif: str | None = None, *,
            type: str | None = None, oid: str | None = None) -> OrderResult:
        """Buy ``qty`` of ``symbol``: a limit order at ``price``, or a market order without one."""
        return self._command(_new(oid or self.next_oid(), symbol, "buy", qty, price, tif, type), "new")

    def sell(self, symbol: str, qty: int, price: Decimal | str | None = None, tif: str | None = None, *,
             type: str | None = None, oid: str | None = None) -> OrderResult:
        """Sell ``qty`` of ``symbol``: a limit order at ``price``, or a market order without one."""
        return self._command(_new(oid or self.next_oid(), symbol, "sell", qty, price, tif, type), "new")

    def cancel(self, oid: str, symbol: str) -> OrderResult:
        """Cancel the open order ``oid``."""
        return self._command(Cancel(oid=oid, symbol=symbol), "cancel")

    def replace(self, oid: str, symbol: str, price: Decimal | str | None = None, qty: int | None = None) -> OrderResult:
        """Change an open order's price and/or total quantity (FIX cancel/replace)."""
        return self._command(Replace(oid=oid, symbol=symbol, price=None if price is None else str(price), qty=qty),
                             "replace")

    def order_status(self, oid: str, symbol: str) -> OrderStatus:
        """Return the state of order ``oid`` (``state`` is ``unknown`` for an order the exchange never accepted)."""
        return _status_of(self._command(Status(oid=oid, symbol=symbol), "status"))

    def open_orders(self, symbol: str | None = None) -> list[OrderStatus]:
        """Return the broker's open orders (of one symbol, or all)."""
        if self.sock is None:
            self.connect()
        self._send(Orders(symbol=symbol))
        deadline = time.monotonic() + self.timeout * (self.retries + 1)
        assert self.sock is not None
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                for msg in self._take_all(self.sock.recv_multipart(), None):
                    if isinstance(msg, OpenOrders):
                        return list(msg.orders)
            self._heartbeat()
        raise ExchangeUnavailable(f"no answer to an orders query from {self.endpoint}")

    def submit(self, msg: New | Cancel | Replace) -> None:
        """Send a command without waiting (load generators); answers arrive through :meth:`poll`."""
        if self.sock is None:
            self.connect()
        self._send(msg)

    def poll(self, timeout: float = 0.0) -> list[ServerMessage]:
        """Receive what has arrived (waiting up to ``timeout`` seconds for the first); keep the session alive."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        out: list[ServerMessage] = []
        if self.sock.poll(int(timeout * 1000)):
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                out.extend(self._take_all(frames, None))
        self._heartbeat()
        return out


class AsyncBrokerClient(_Base):
    """The asyncio twin of :class:`BrokerClient` (``zmq.asyncio``): the same methods, as coroutines.

    Examples
    --------
    >>> async def main():                                        # doctest: +SKIP
    ...     async with AsyncBrokerClient(["tcp://127.0.0.1:7101"], "B1") as c:
    ...         r = await c.sell("INFY", 5, "1580.00", "IOC")
    """

    def __init__(self, gateways: Sequence[str], broker: str, *, secret: str | None = None, heartbeat_ms: int = 5000,
                 timeout: float = 2.0, retries: int = 2, ctx: zmq.asyncio.Context | None = None) -> None:
        super().__init__(gateways, broker, secret=secret, heartbeat_ms=heartbeat_ms, timeout=timeout, retries=retries)
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self.sock: zmq.asyncio.Socket | None = None
        # Commands take turns on the one socket: each reads answers until its own command is done.
        self._turn = asyncio.Lock()

    async def __aenter__(self) -> AsyncBrokerClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def connect(self) -> None:
        """Log on to the first gateway that answers (see :meth:`BrokerClient.connect`)."""
        for _ in range(len(self.gateways)):
            if await self._logon():
                return
            self.gateway_index = (self.gateway_index + 1) % len(self.gateways)
        raise ExchangeUnavailable(f"no gateway answered: {', '.join(self.gateways)}")

    async def _logon(self) -> bool:
        if self.sock is not None:
            self.sock.close(0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        self.sock = sock
        await sock.send(encode(Logon(broker=self.broker, secret=self.secret, heartbeat_ms=self.heartbeat_ms)))
        self._last_tx = time.monotonic()
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            if not await sock.poll(int(left * 1000) + 1):
                break
            for msg in self._take_all(await sock.recv_multipart(), None):
                if isinstance(msg, LogonAck):
                    return True
                if isinstance(msg, LogonReject):
                    raise LogonRefused(msg.reason, msg.text)
        return False

    def close(self) -> None:
        """Close the connection (sending a logout if possible)."""
        if self.sock is not None:
            with contextlib.suppress(zmq.ZMQError):  # closing anyway
                self.sock.send(encode(Logout()), zmq.NOBLOCK)
            self.sock.close(0)
            self.sock = None

    async def _send(self, msg: Any) -> None:
        assert self.sock is not None, "connect() first"
        await self.sock.send(encode(msg))
        self._last_tx = time.monotonic()

    async def _command(self, msg: New | Cancel | Replace | Status, op: str) -> OrderResult:
        async with self._turn:
            return await self._command_now(msg, op)

    async def _command_now(self, msg: New | Cancel | Replace | Status, op: str) -> OrderResult:
        if self.sock is None:
            await self.connect()
        result = OrderResult(oid=msg.oid, symbol=msg.symbol, op=op)
        waiter = _Waiter(result)
        tries = 0
        await self._send(msg)
        deadline = time.monotonic() + self.timeout
        while not waiter.done:
            now = time.monotonic()
            if waiter.relogon:
                waiter.relogon = False
                await self.connect()
                await self._send(msg)
                deadline = time.monotonic() + self.timeout
                continue
            if now >= deadline or self._gateway_dead():
                tries += 1
                result.resends += 1
                if tries > self.retries or self._gateway_dead():
                    self.failovers += 1
                    self.gateway_index = (self.gateway_index + 1) % len(self.gateways)
                    await self.connect()
                    tries = 0
                await self._send(msg)
                deadline = time.monotonic() + self.timeout
                continue
            assert self.sock is not None
            wait = min(deadline - now, self.heartbeat_ms / 1000.0)
            if await self.sock.poll(int(wait * 1000) + 1):
                self._take_all(await self.sock.recv_multipart(), waiter)
            if time.monotonic() - self._last_tx >= self.heartbeat_ms / 1000.0:
                await self._send(Heartbeat())
        return result

    async def buy(self, symbol: str, qty: int, price: Decimal | str | None = None, tif: str | None = None, *,
                  type: str | None = None, oid: str | None = None) -> OrderResult:
        """Buy ``qty`` of ``symbol`` (see :meth:`BrokerClient.buy`)."""
        return await self._command(_new(oid or self.next_oid(), symbol, "buy", qty, price, tif, type), "new")

    async def sell(self, symbol: str, qty: int, price: Decimal | str | None = None, tif: str | None = None, *,
                   type: str | None = None, oid: str | None = None) -> OrderResult:
        """Sell ``qty`` of ``symbol`` (see :meth:`BrokerClient.sell`)."""
        return await self._command(_new(oid or self.next_oid(), symbol, "sell", qty, price, tif, type), "new")

    async def cancel(self, oid: str, symbol: str) -> OrderResult:
        """Cancel the open order ``oid``."""
        return await self._command(Cancel(oid=oid, symbol=symbol), "cancel")

    async def replace(self, oid: str, symbol: str, price: Decimal | str | None = None,
                      qty: int | None = None) -> OrderResult:
        """Change an open order's price and/or total quantity."""
        return await self._command(
            Replace(oid=oid, symbol=symbol, price=None if price is None else str(price), qty=qty), "replace")

    async def order_status(self, oid: str, symbol: str) -> OrderStatus:
        """Return the state of order ``oid``."""
        return _status_of(await self._command(Status(oid=oid, symbol=symbol), "status"))

    async def next_report(self, timeout: float | None = None) -> Report | None:
        """Return the next execution report of the stream (waiting up to ``timeout`` seconds), or ``None``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.reports:
            assert self.sock is not None
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                return None
            wait = self.heartbeat_ms if left is None else min(self.heartbeat_ms, int(left * 1000) + 1)
            if await self.sock.poll(wait):
                self._take_all(await self.sock.recv_multipart(), None)
            if time.monotonic() - self._last_tx >= self.heartbeat_ms / 1000.0:
                await self._send(Heartbeat())
        return self.reports.popleft()


__all__ = ["AsyncBrokerClient", "BrokerClient", "ExchangeUnavailable", "LogonRefused", "OrderResult"]
