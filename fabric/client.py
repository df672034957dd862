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
  waiting;
- when the gateway ends the session during a command (a ``logout``, or a
  refusal with reason ``not_logged_on``), the client logs on again and resends.

A command returns once its outcome is known: the execution reports it caused
(``accepted`` or ``rejected``, the fills of its aggressive part, a cancel of an
unfilled IOC rest...) followed by the gateway's ``order_status`` for the
command, which says nothing more is coming for it now.  Every execution report
received, including fills of resting orders that come later, also goes to the
client's report stream (:meth:`BrokerClient.poll`, :meth:`BrokerClient.next_report`).

How it is built (the "sans-I/O" pattern of h11 and wsproto): every rule above
lives once, in :class:`ClientCore`, which does no I/O and reads no clock.  Each
call of a client is an :class:`Operation` of the core: a state machine that is
given the time and the frames received, and answers with what to do next
(:class:`Send` bytes, :class:`Connect` to a gateway, :class:`Receive` until a
time, :class:`Done` with the call's value), or raises the call's exception.
The two clients are thin shells that carry those actions out on a pyzmq or a
``zmq.asyncio`` socket, so both behave the same, and a fix to the rules lands
in both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as _dt
import math
import secrets
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, Protocol, TypeAlias, TypeVar, overload

import zmq
import zmq.asyncio

from fabric.auth import Keyring, connect
from fabric.protocol import (
    Accepted,
    Admin,
    AdminAck,
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
    Triggered,
    decode_server,
    encode,
)

Report = Accepted | Rejected | Fill | Cancelled | Replaced | Expired | Triggered
_CommandMsg: TypeAlias = New | Cancel | Replace | Status

T = TypeVar("T")


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


# ====================================================================== actions
# What an operation of the core asks its shell to do. They are values, so that a test can compare
# them, and so that the core never touches a socket or a clock.


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data``, one frame, on the connection in use."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Connect:
    """Close the connection in use, if any, and open a new one to ``endpoint``.

    A :class:`Send` of the ``logon`` follows.
    """

    endpoint: str


@dataclass(frozen=True, slots=True)
class Receive:
    """Wait for input until ``until`` (on the clock the operation is given).

    When input arrives, read the messages already waiting, without blocking,
    while :attr:`Operation.wants_input` holds, giving each message's frames to
    :meth:`Operation.receive`; then ask :meth:`Operation.next_action` again (at
    ``until`` at the latest).  ``until`` at or before the present means: read
    only what is already there.
    """

    until: float


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """The operation is over: ``value`` is what the client's call returns."""

    value: T


Step: TypeAlias = Send | Connect | Receive
Action: TypeAlias = Send | Connect | Receive | Done[T]


# ====================================================================== waiters
# What a serial operation waits for. The core feeds every message received to the one in its
# slot, whichever operation's shell read it (an asyncio `next_report` may read the answer of a
# command running in another task).


class _Awaited(Protocol):
    @property
    def done(self) -> bool: ...


class _Fed(_Awaited, Protocol):
    def feed(self, msg: ServerMessage) -> None: ...


class _Waiter:
    # Matches incoming messages to the command being waited for.

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
        elif isinstance(msg, Accepted | Fill | Cancelled | Replaced | Expired | Triggered) and msg.oid == r.oid:
            r.events.append(msg)


class _LogonWaiter:
    # The outcome of one logon: the first `logon_ack` or `logon_reject` decides.

    def __init__(self) -> None:
        self.done = False
        self.refused: LogonReject | None = None

    def feed(self, msg: ServerMessage) -> None:
        if self.done:
            return
        if isinstance(msg, LogonAck):
            self.done = True
        elif isinstance(msg, LogonReject):
            self.refused = msg
            self.done = True


class _OrdersWaiter:
    # The answer to an `orders` query.

    def __init__(self) -> None:
        self.done = False
        self.orders: list[OrderStatus] = []

    def feed(self, msg: ServerMessage) -> None:
        if not self.done and isinstance(msg, OpenOrders):
            self.orders = list(msg.orders)
            self.done = True


class _AdminWaiter:
    # The answer to an operator's `admin` command: its `admin_ack`, or an `error`.

    def __init__(self) -> None:
        self.done = False
        self.ack: AdminAck | None = None
        self.error: Error | None = None

    def feed(self, msg: ServerMessage) -> None:
        if self.done:
            return
        if isinstance(msg, AdminAck):
            self.ack = msg
            self.done = True
        elif isinstance(msg, Error):
            self.error = msg
            self.done = True


class _Drain:
    # Never satisfied: read everything that is waiting.
    done = False


class _ReportArrived:
    # Satisfied once the report stream holds something.

    def __init__(self, reports: collections.deque[Report]) -> None:
        self._reports = reports

    @property
    def done(self) -> bool:
        return bool(self._reports)


_DRAIN = _Drain()


# ==================================================================== the core


def _new(oid: str, symbol: str, side: str, qty: int, price: Decimal | str | None, tif: str | None,
         otype: str | None, post_only: bool = False, expire_date: _dt.date | str | None = None,
         disclosed_qty: int | None = None, stop_price: Decimal | str | None = None) -> New:
    kind = otype or ("market" if price is None else "limit")
    # The added fields go out only when used: a plain order's bytes are those an older gateway knows.
    extra: dict[str, Any] = {}
    if post_only:
        extra["post_only"] = True
    if expire_date is not None:
        extra["expire_date"] = str(expire_date)  # a date prints as YYYY-MM-DD
    if disclosed_qty is not None:
        extra["disclosed_qty"] = disclosed_qty
    if stop_price is not None:
        extra["stop_price"] = str(stop_price)
    # A stop order waits for its trigger: DAY by default, the stop-loss market order (SL-M) too.
    default = "GTD" if expire_date is not None else "DAY" if stop_price is not None else \
        "IOC" if kind == "market" else "GTC"
    return New(oid=oid, symbol=symbol, side=side, type=kind,  # type: ignore[arg-type]
               price=None if price is None else str(price), qty=qty, tif=tif or default,  # type: ignore[arg-type]
               **extra)


def _as_is(r: OrderResult) -> OrderResult:
    return r


def _status_of(r: OrderResult) -> OrderStatus:
    # The answer to a `status` command, or the refusal as an exception.
    if r.rejected is not None:
        raise ProtocolError(r.rejected.reason, r.rejected.text, r.rejected.field)
    if r.error is not None or r.status is None:
        raise ProtocolError(r.error.reason if r.error else "malformed", r.error.text if r.error else "no status")
    return r.status


class ClientCore:
    """A broker's session with the exchange, without I/O: the rules both clients follow.

    The core holds the configuration, the client order ids, the report stream,
    the heartbeat timing and what is being waited for.  It reads no clock and
    touches no socket: each call of a client is an :class:`Operation` that a
    shell drives with the current time and the frames it received (see
    :meth:`Operation.next_action`).  One serial operation (a logon, a command,
    an ``orders`` query) runs at a time; :meth:`poll` and :meth:`next_report`
    may run beside one.

    Parameters
    ----------
    gateways
        Gateway endpoints (``tcp://host:port``) in the order to try them.
    broker
        The broker's id.
    secret
        The broker's secret, when the exchange asks for one.
    heartbeat_ms
        Heartbeat interval proposed at logon; the gateway is taken for dead
        after three intervals without a message from it.
    timeout
        Seconds to wait for an answer before sending a command again.
    retries
        Resends on one gateway before moving to the next.

    Raises
    ------
    ValueError
        When ``gateways`` is empty.

    Examples
    --------
    >>> core = ClientCore(["tcp://127.0.0.1:7101"], "B1")
    >>> op = core.connect()
    >>> op.next_action(0.0)
    Connect(endpoint='tcp://127.0.0.1:7101')
    """

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
        self.failovers = 0
        self.reports: collections.deque[Report] = collections.deque()
        # A connection has been opened (and not closed): calls then use it as it is, logged on or not;
        # a call on a client never connected, or closed, logs on first.
        self.connected = False
        self._prefix = f"{broker}-{secrets.token_hex(4)}-"
        self._n = 0
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._waiter: _Fed | None = None  # what the serial operation in progress waits for

    # ------------------------------------------------------------------ state

    def next_oid(self) -> str:
        """Return a new client order id, unique for this broker."""
        self._n += 1
        return f"{self._prefix}{self._n}"

    @property
    def endpoint(self) -> str:
        """The gateway currently in use."""
        return self.gateways[self.gateway_index]

    @property
    def interval(self) -> float:
        """The heartbeat interval, in seconds."""
        return self.heartbeat_ms / 1000.0

    @property
    def next_heartbeat(self) -> float:
        """When a heartbeat is due if nothing is sent before (one interval after the last send)."""
        return self._last_tx + self.interval

    def heartbeat_due(self, now: float) -> bool:
        """Whether nothing has been sent for one heartbeat interval."""
        return now - self._last_tx >= self.interval

    def gateway_dead(self, now: float) -> bool:
        """Whether nothing has come from the gateway for three heartbeat intervals."""
        return now - self._last_rx > 3 * self.interval

    # ------------------------------------------------------------- operations

    def connect(self) -> Operation[None]:
        """Log on to the first gateway that answers, starting with the current one.

        The operation raises :class:`ExchangeUnavailable` when no gateway
        answered, and :class:`LogonRefused` when a gateway refused the broker.
        """
        return _Connect(self)

    def buy(self, symbol: str, qty: int, price: Decimal | str | None = None, tif: str | None = None, *,
            type: str | None = None, oid: str | None = None, post_only: bool = False,
            expire_date: _dt.date | str | None = None, disclosed_qty: int | None = None,
            stop_price: Decimal | str | None = None) -> Operation[OrderResult]:
        """Buy ``qty`` of ``symbol``: a limit order at ``price``, or a market order without one."""
        return _Command(self, _new(oid or self.next_oid(), symbol, "buy", qty, price, tif, type, post_only,
                                   expire_date, disclosed_qty, stop_price), "new", _as_is)

    def sell(self, symbol: str, qty: int, price: Decimal | str | None = None, tif: str | None = None, *,
             type: str | None = None, oid: str | None = None, post_only: bool = False,
             expire_date: _dt.date | str | None = None, disclosed_qty: int | None = None,
             stop_price: Decimal | str | None = None) -> Operation[OrderResult]:
        """Sell ``qty`` of ``symbol``: a limit order at ``price``, or a market order without one."""
        return _Command(self, _new(oid or self.next_oid(), symbol, "sell", qty, price, tif, type, post_only,
                                   expire_date, disclosed_qty, stop_price), "new", _as_is)

    def cancel(self, oid: str, symbol: str) -> Operation[OrderResult]:
        """Cancel the open order ``oid``."""
        return _Command(self, Cancel(oid=oid, symbol=symbol), "cancel", _as_is)

    def replace(self, oid: str, symbol: str, price: Decimal | str | None = None,
                qty: int | None = None, stop_price: Decimal | str | None = None) -> Operation[OrderResult]:
        """Change an open order's price and/or total quantity, and a waiting stop's trigger (FIX cancel/replace)."""
        extra: dict[str, Any] = {} if stop_price is None else {"stop_price": str(stop_price)}
        msg = Replace(oid=oid, symbol=symbol, price=None if price is None else str(price), qty=qty, **extra)
        return _Command(self, msg, "replace", _as_is)

    def order_status(self, oid: str, symbol: str) -> Operation[OrderStatus]:
        """Ask the state of order ``oid``; the operation raises ``ProtocolError`` when the query is refused."""
        return _Command(self, Status(oid=oid, symbol=symbol), "status", _status_of)

    def open_orders(self, symbol: str | None = None) -> Operation[list[OrderStatus]]:
        """Ask the broker's open orders (of one symbol, or all).

        The operation sends the query once and raises :class:`ExchangeUnavailable`
        when no answer came within ``timeout * (retries + 1)`` seconds.
        """
        return _OpenOrders(self, symbol)

    def admin(self, action: str, *, symbol: str | None = None, broker: str | None = None, text: str | None = None,
              until: int | None = None) -> Operation[AdminAck]:
        """Send an operator's command (an operator's session only) and wait for its ``admin_ack``.

        ``action`` is ``halt`` or ``resume`` (of ``symbol``; none: the whole market; ``until``, ns since the
        Unix epoch, ends a halt by itself) or ``disable`` or ``enable`` (of ``broker``: the kill switch). It is
        sent once: the operation raises ``ProtocolError`` when it is refused (``not_authorized``...) and
        :class:`ExchangeUnavailable` when no answer came within ``timeout * (retries + 1)`` seconds.
        """
        return _AdminOp(self, Admin(action=action, symbol=symbol, broker=broker, text=text,  # type: ignore[arg-type]
                                    until=until))

    def submit(self, msg: New | Cancel | Replace | Admin) -> Operation[None]:
        """Send a command without waiting for its answers, with no resend and no failover."""
        return _Submit(self, msg)

    def poll(self, timeout: float = 0.0) -> Operation[list[ServerMessage]]:
        """Receive what has arrived, waiting up to ``timeout`` seconds for the first; send a heartbeat if due."""
        return _Poll(self, timeout)

    def next_report(self, timeout: float | None = None) -> Operation[Report | None]:
        """Take the next execution report of the stream, waiting up to ``timeout`` seconds (``None``: no limit).

        Heartbeats are sent while it waits; the value is ``None`` when the time ran out.
        """
        return _NextReport(self, timeout)

    def close(self) -> bytes | None:
        """Forget the connection; return the ``logout`` to send on it (best effort), or ``None`` if there is none."""
        if not self.connected:
            return None
        self.connected = False
        return encode(Logout())

    # ------------------------------------------------------------------ input

    def receive(self, frames: Sequence[bytes], now: float) -> list[ServerMessage]:
        """Take one message from the gateway, received at ``now``; return the protocol messages it held.

        A message carries one protocol message per frame.  Every frame counts as
        a sign of life, even one that cannot be decoded (it is skipped);
        execution reports go to :attr:`reports`; each message is fed to what the
        serial operation in progress waits for.
        """
        out: list[ServerMessage] = []
        for body in frames:
            self._last_rx = now
            try:
                msg = decode_server(body)
            except ProtocolError:
                continue
            if isinstance(msg, Accepted | Rejected | Fill | Cancelled | Replaced | Expired | Triggered):
                self.reports.append(msg)
            if self._waiter is not None:
                self._waiter.feed(msg)
            out.append(msg)
        return out

    def _send(self, msg: Any, now: float) -> Send:
        # Anything sent counts as a heartbeat (docs/protocol.md, section 3).
        self._last_tx = now
        return Send(encode(msg))


class Operation(Generic[T]):
    """One call of a client as a state machine: no I/O, and time comes from the caller.

    A shell drives it::

        while not isinstance(action := op.next_action(now()), Done):
            carry out action (for Receive: feed frames to op.receive while op.wants_input)
        return action.value

    and calls :meth:`close` when it stops early.  The exceptions of the call
    (:class:`ExchangeUnavailable`, :class:`LogonRefused`, ``ProtocolError``)
    come out of :meth:`next_action`.
    """

    # Each operation's steps are written as a generator that yields actions and is sent the time: the
    # generator's place in its code is the state of the machine, so the rules read in the order they
    # happen (log on, read what waited, send, wait, resend, fail over) instead of as a table of states.

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self._steps: Generator[Step, float, T] | None = None
        self._awaited: _Awaited = _DRAIN
        self._over = False

    def next_action(self, now: float) -> Action[T]:
        """Return what to do next, at time ``now``.

        Parameters
        ----------
        now
            The current time in seconds, on any monotonic clock (the same for
            every call of one client).

        Returns
        -------
        Send | Connect | Receive | Done
            The next action.

        Raises
        ------
        ExchangeUnavailable, LogonRefused, ProtocolError
            The call failed; the operation is over.
        """
        if self._over:
            raise RuntimeError("this operation is over")
        try:
            if self._steps is None:
                self._steps = self._run(now)
                return next(self._steps)
            return self._steps.send(now)
        except StopIteration as stop:
            self._over = True
            return Done(stop.value)
        except BaseException:
            self._over = True
            raise

    @property
    def wants_input(self) -> bool:
        """Whether to go on reading the messages that are already waiting (during a :class:`Receive`)."""
        return not self._awaited.done

    def receive(self, frames: Sequence[bytes], now: float) -> None:
        """Take one message (its frames) received at ``now``."""
        self._core.receive(frames, now)

    def close(self) -> None:
        """Abandon the operation (the shell stopped: an exception, a cancelled task); harmless once it is over."""
        # Closing the generator runs its `finally` blocks, which give back the core's waiter slot.
        if self._steps is not None:
            self._steps.close()
        self._over = True

    def _run(self, now: float) -> Generator[Step, float, T]:
        raise NotImplementedError

    # Steps several operations share.

    def _wait(self, until: float, awaited: _Awaited) -> Generator[Step, float, float]:
        self._awaited = awaited
        return (yield Receive(until))

    def _logged_on(self, now: float) -> Generator[Step, float, float]:
        if not self._core.connected:
            now = yield from self._logon(now)
        return now

    def _logon(self, now: float) -> Generator[Step, float, float]:
        # Log on to the first gateway that answers, starting with the current one, on a new connection.
        # While a logon runs, what arrives is fed to it alone: a command waiting meanwhile sees nothing of
        # it (its answers come on the new session, after it is sent again).
        core = self._core
        outer, awaited = core._waiter, self._awaited
        try:
            for _ in range(len(core.gateways)):
                logon = _LogonWaiter()
                core._waiter = logon
                core.connected = True
                now = yield Connect(core.endpoint)
                now = yield core._send(Logon(broker=core.broker, secret=core.secret, heartbeat_ms=core.heartbeat_ms),
                                       now)
                deadline = now + core.timeout
                while not logon.done and now < deadline:
                    now = yield from self._wait(deadline, logon)
                if logon.refused is not None:
                    raise LogonRefused(logon.refused.reason, logon.refused.text)
                if logon.done:
                    return now
                core.gateway_index = (core.gateway_index + 1) % len(core.gateways)
            raise ExchangeUnavailable(f"no gateway answered: {', '.join(core.gateways)}")
        finally:
            core._waiter, self._awaited = outer, awaited


class _Connect(Operation[None]):
    def _run(self, now: float) -> Generator[Step, float, None]:
        yield from self._logon(now)


class _Command(Operation[T]):
    # A new, cancel, replace or status: sent, resent, failed over and re-logged-on until its closing status.

    def __init__(self, core: ClientCore, msg: _CommandMsg, op: str, finish: Callable[[OrderResult], T]) -> None:
        super().__init__(core)
        self._msg = msg
        self._op = op
        self._finish = finish

    def _run(self, now: float) -> Generator[Step, float, T]:
        core, msg = self._core, self._msg
        now = yield from self._logged_on(now)
        result = OrderResult(oid=msg.oid, symbol=msg.symbol, op=self._op)
        waiter = _Waiter(result)
        core._waiter = waiter
        try:
            # What arrived while the caller was away (heartbeats, a logout after a long idle spell): read it
            # first, so that silence is judged on what the gateway really sent.
            now = yield from self._wait(now, _DRAIN)
            if waiter.relogon:
                waiter.relogon = False
                now = yield from self._logon(now)
            now = yield core._send(msg, now)
            deadline = now + core.timeout
            tries = 0
            while not waiter.done:
                if waiter.relogon:
                    # The session was ended (idle too long, or the gateway restarted): a new one, same command.
                    waiter.relogon = False
                    now = yield from self._logon(now)
                    now = yield core._send(msg, now)
                    deadline = now + core.timeout
                    continue
                if now >= deadline or core.gateway_dead(now):
                    # Lazy Pirate: the same message again, with the same oid; the exchange never executes it
                    # twice. After `retries` resends, or when the gateway has gone silent, the next gateway.
                    tries += 1
                    result.resends += 1
                    if tries > core.retries or core.gateway_dead(now):
                        core.failovers += 1
                        core.gateway_index = (core.gateway_index + 1) % len(core.gateways)
                        now = yield from self._logon(now)
                        tries = 0
                    now = yield core._send(msg, now)
                    deadline = now + core.timeout
                    continue
                now = yield from self._wait(min(deadline, core.next_heartbeat), waiter)
                if core.heartbeat_due(now):
                    now = yield core._send(Heartbeat(), now)
            return self._finish(result)
        finally:
            core._waiter = None


class _OpenOrders(Operation[list[OrderStatus]]):
    def __init__(self, core: ClientCore, symbol: str | None) -> None:
        super().__init__(core)
        self._symbol = symbol

    def _run(self, now: float) -> Generator[Step, float, list[OrderStatus]]:
        core = self._core
        now = yield from self._logged_on(now)
        waiter = _OrdersWaiter()
        core._waiter = waiter
        try:
            now = yield core._send(Orders(symbol=self._symbol), now)
            deadline = now + core.timeout * (core.retries + 1)
            while now < deadline:
                now = yield from self._wait(min(deadline, core.next_heartbeat), waiter)
                if waiter.done:
                    return waiter.orders
                if core.heartbeat_due(now):
                    now = yield core._send(Heartbeat(), now)
            raise ExchangeUnavailable(f"no answer to an orders query from {core.endpoint}")
        finally:
            core._waiter = None


class _AdminOp(Operation[AdminAck]):
    def __init__(self, core: ClientCore, msg: Admin) -> None:
        super().__init__(core)
        self._msg = msg

    def _run(self, now: float) -> Generator[Step, float, AdminAck]:
        core = self._core
        now = yield from self._logged_on(now)
        waiter = _AdminWaiter()
        core._waiter = waiter
        try:
            now = yield core._send(self._msg, now)
            deadline = now + core.timeout * (core.retries + 1)
            while now < deadline:
                now = yield from self._wait(min(deadline, core.next_heartbeat), waiter)
                if waiter.ack is not None:
                    return waiter.ack
                if waiter.error is not None:
                    raise ProtocolError(waiter.error.reason, waiter.error.text)
                if core.heartbeat_due(now):
                    now = yield core._send(Heartbeat(), now)
            raise ExchangeUnavailable(f"no answer to an admin command from {core.endpoint}")
        finally:
            core._waiter = None


class _Submit(Operation[None]):
    def __init__(self, core: ClientCore, msg: New | Cancel | Replace | Admin) -> None:
        super().__init__(core)
        self._msg = msg

    def _run(self, now: float) -> Generator[Step, float, None]:
        now = yield from self._logged_on(now)
        yield self._core._send(self._msg, now)


class _Poll(Operation[list[ServerMessage]]):
    def __init__(self, core: ClientCore, timeout: float) -> None:
        super().__init__(core)
        self._timeout = timeout
        self._got: list[ServerMessage] | None = None  # what the poll returns (not what its logon read)

    def receive(self, frames: Sequence[bytes], now: float) -> None:
        msgs = self._core.receive(frames, now)
        if self._got is not None:
            self._got.extend(msgs)

    def _run(self, now: float) -> Generator[Step, float, list[ServerMessage]]:
        now = yield from self._logged_on(now)
        got: list[ServerMessage] = []
        self._got = got
        # One wait for the first message, then everything already waiting.
        now = yield from self._wait(now + self._timeout, _DRAIN)
        if self._core.heartbeat_due(now):
            yield self._core._send(Heartbeat(), now)
        return got


class _NextReport(Operation[Report | None]):
    def __init__(self, core: ClientCore, timeout: float | None) -> None:
        super().__init__(core)
        self._timeout = timeout

    def _run(self, now: float) -> Generator[Step, float, Report | None]:
        core = self._core
        now = yield from self._logged_on(now)
        deadline = None if self._timeout is None else now + self._timeout
        arrived = _ReportArrived(core.reports)
        while not core.reports:
            if deadline is not None and now >= deadline:
                return None
            # Wake for the next heartbeat too: waiting here keeps the session alive.
            until = core.next_heartbeat if deadline is None else min(deadline, core.next_heartbeat)
            now = yield from self._wait(until, arrived)
            if core.heartbeat_due(now):
                now = yield core._send(Heartbeat(), now)
        return core.reports.popleft()


# ================================================================== the shells


def _ms_until(until: float) -> int:
    # A poll timeout in whole milliseconds, rounded up so that the core's deadline has passed on waking.
    return max(0, math.ceil((until - time.monotonic()) * 1000))


class _InCore(Generic[T]):
    # A client's attribute that lives in its core: one copy of the state, read and set as before.

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _InCore[T]: ...

    @overload
    def __get__(self, obj: _Shell, owner: type | None = None) -> T: ...

    def __get__(self, obj: _Shell | None, owner: type | None = None) -> T | _InCore[T]:
        if obj is None:
            return self
        value: T = getattr(obj._core, self._name)
        return value

    def __set__(self, obj: _Shell, value: T) -> None:
        setattr(obj._core, self._name, value)


class _Shell:
    # What both clients share apart from their sockets: the core, and its state under the clients' names.

    gateways = _InCore[list[str]]()
    broker = _InCore[str]()
    secret = _InCore[str | None]()
    heartbeat_ms = _InCore[int]()
    timeout = _InCore[float]()
    retries = _InCore[int]()
    gateway_index = _InCore[int]()
    failovers = _InCore[int]()  # the moves to another gateway
    reports = _InCore[collections.deque[Report]]()  # the report stream: every execution report received

    def __init__(self, gateways: Sequence[str], broker: str, *, secret: str | None, heartbeat_ms: int,
                 timeout: float, retries: int) -> None:
        self._core = ClientCore(gateways, broker, secret=secret, heartbeat_ms=heartbeat_ms, timeout=timeout,
                                retries=retries)

    def next_oid(self) -> str:
        """Return a new client order id, unique for this broker."""
        return self._core.next_oid()

    @property
    def endpoint(self) -> str:
        """The gateway currently in use."""
        return self._core.endpoint


class BrokerClient(_Shell):
    """A broker's synchronous connection to the exchange.

    It behaves exactly as :class:`AsyncBrokerClient`: both carry out the
    decisions of one :class:`ClientCore` (resends, heartbeats, failover,
    logging on again), this one on a blocking pyzmq socket.

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
    ctx
        The ZeroMQ context for the socket (``zmq.Context.instance()`` by default).
    keys
        The broker's CURVE key pair and the gateways' public keys, when the exchange authenticates brokers by
        key (``topology.keys.broker_keyring`` makes it from a topology and the broker's secret key file); the
        broker id is then the key's, whatever ``broker`` says.

    Raises
    ------
    ValueError
        When ``gateways`` is empty.

    Examples
    --------
    >>> with BrokerClient(["tcp://127.0.0.1:7101"], "B1") as c:    # doctest: +SKIP
    ...     r = c.buy("TCS", 10, "3500.05")
    ...     r.state, [(f.price, f.last_qty) for f in r.fills]
    """

    def __init__(self, gateways: Sequence[str], broker: str, *, secret: str | None = None, heartbeat_ms: int = 5000,
                 timeout: float = 2.0, retries: int = 2, ctx: zmq.Context | None = None,
                 keys: Keyring | None = None) -> None:
        super().__init__(gateways, broker, secret=secret, heartbeat_ms=heartbeat_ms, timeout=timeout, retries=retries)
        self.ctx = ctx or zmq.Context.instance()
        self.keys = keys
        self.sock: zmq.Socket | None = None

    def __enter__(self) -> BrokerClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------- I/O

    def _drive(self, op: Operation[T]) -> T:
        # Carry out the core's actions until the operation is done.
        try:
            while True:
                action = op.next_action(time.monotonic())
                if isinstance(action, Done):
                    return action.value
                if isinstance(action, Send):
                    assert self.sock is not None
                    self.sock.send(action.data)
                elif isinstance(action, Connect):
                    self._open(action.endpoint)
                else:
                    self._receive(op, action.until)
        finally:
            op.close()

    def _open(self, endpoint: str) -> None:
        if self.sock is not None:
            self.sock.close(0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        connect(sock, endpoint, self.keys)
        self.sock = sock

    def _receive(self, op: Operation[Any], until: float) -> None:
        sock = self.sock
        assert sock is not None
        if sock.poll(_ms_until(until)):
            while op.wants_input:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                op.receive(frames, time.monotonic())

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
        self._drive(self._core.connect())

    def close(self) -> None:
        """Log out and close the connection."""
        bye = self._core.close()
        if self.sock is not None:
            if bye is not None:
                with contextlib.suppress(zmq.ZMQError):  # closing anyway
                    self.sock.send(bye, zmq.NOBLOCK)
            self.sock.close(0)
            self.sock = None

    # --------------------------------------------------------------- commands

    def buy(self, symbol: str, qty: int, price: Decimal | str | None = None, tif: str | None = None, *,
            type: str | None = None, oid: str | None = None, post_only: bool = False,
            expire_date: _dt.date | str | None = None, disclosed_qty: int | None = None,
            stop_price: Decimal | str | None = None) -> OrderResult:
        """Buy ``qty`` of ``symbol``: a limit order at ``price``, or a market order without one.

        Parameters
        ----------
        symbol
            The instrument.
        qty
            Shares, a multiple of the instrument's lot.
        price
            The limit price as a decimal string or ``Decimal``; ``None`` for a market order.
        tif
            ``GTC`` (the default for a limit order), ``DAY`` (the default for a stop order), ``IOC`` (the default
            for a market order), ``FOK`` or ``GTD`` (the default with ``expire_date``).
        type
            ``limit`` or ``market``; by default, from whether ``price`` is given.
        oid
            The client order id; a new one (:meth:`next_oid`) by default.
        post_only
            A limit order that must only add liquidity: ``rejected`` (``would_cross``) if it would trade now.
        expire_date
            A GTD order's last trading day (a ``date`` or ``"YYYY-MM-DD"``).
        disclosed_qty
            An iceberg: only this much shows in the depth, the rest refills peak by peak.
        stop_price
            A stop-loss order's trigger: the order waits outside the book until a trade prints at or above it
            (a buy) or at or below it (a sell), then enters as its limit order (SL) or market order (SL-M); a
            ``triggered`` report says when.

        Returns
        -------
        OrderResult
            The reports of the command and its closing ``order_status``.

        Raises
        ------
        ExchangeUnavailable
            When a failover found no gateway; the outcome is then unknown.
        LogonRefused
            When logging on again was refused.
        """
        return self._drive(self._core.buy(symbol, qty, price, tif, type=type, oid=oid, post_only=post_only,
                                          expire_date=expire_date, disclosed_qty=disclosed_qty,
                                          stop_price=stop_price))

    def sell(self, symbol: str, qty: int, price: Decimal | str | None = None, tif: str | None = None, *,
             type: str | None = None, oid: str | None = None, post_only: bool = False,
             expire_date: _dt.date | str | None = None, disclosed_qty: int | None = None,
             stop_price: Decimal | str | None = None) -> OrderResult:
        """Sell ``qty`` of ``symbol``: a limit order at ``price``, or a market order without one (see :meth:`buy`)."""
        return self._drive(self._core.sell(symbol, qty, price, tif, type=type, oid=oid, post_only=post_only,
                                           expire_date=expire_date, disclosed_qty=disclosed_qty,
                                           stop_price=stop_price))

    def cancel(self, oid: str, symbol: str) -> OrderResult:
        """Cancel the open order ``oid`` of ``symbol`` (raises as :meth:`buy`)."""
        return self._drive(self._core.cancel(oid, symbol))

    def replace(self, oid: str, symbol: str, price: Decimal | str | None = None, qty: int | None = None,
                stop_price: Decimal | str | None = None) -> OrderResult:
        """Change an open order's price and/or total quantity (FIX cancel/replace; raises as :meth:`buy`).

        Parameters
        ----------
        oid, symbol
            The order.
        price
            The new limit price; ``None`` keeps it.
        qty
            The new total quantity, the shares already filled included; ``None`` keeps it.
        stop_price
            A stop order still waiting for its trigger: the new trigger; ``None`` keeps it.
        """
        return self._drive(self._core.replace(oid, symbol, price, qty, stop_price))

    def order_status(self, oid: str, symbol: str) -> OrderStatus:
        """Return the state of order ``oid`` (``state`` is ``unknown`` for an order the exchange never accepted).

        Raises
        ------
        ProtocolError
            When the query was refused (``.reason``, ``.text``).
        """
        return self._drive(self._core.order_status(oid, symbol))

    def open_orders(self, symbol: str | None = None) -> list[OrderStatus]:
        """Return the broker's open orders (of one symbol, or all).

        Raises
        ------
        ExchangeUnavailable
            When no answer came within ``timeout * (retries + 1)`` seconds.
        """
        return self._drive(self._core.open_orders(symbol))

    def admin(self, action: str, *, symbol: str | None = None, broker: str | None = None, text: str | None = None,
              until: int | None = None) -> AdminAck:
        """Carry out an operator's command and return its ``admin_ack`` (an operator's session only).

        ``halt``/``resume`` a ``symbol`` or (none) the whole market, ``until`` (ns since the Unix epoch) ending a
        halt by itself; ``disable``/``enable`` a ``broker`` (``disable`` cancels its open orders too:
        ``AdminAck.cancelled`` counts them).

        Raises
        ------
        ProtocolError
            When the gateway or a matcher refused it (``.reason``: ``not_authorized``, ``unknown_symbol``...).
        ExchangeUnavailable
            When no answer came within ``timeout * (retries + 1)`` seconds.
        """
        return self._drive(self._core.admin(action, symbol=symbol, broker=broker, text=text, until=until))

    def submit(self, msg: New | Cancel | Replace | Admin) -> None:
        """Send a command without waiting (load generators); answers arrive through :meth:`poll`."""
        self._drive(self._core.submit(msg))

    def poll(self, timeout: float = 0.0) -> list[ServerMessage]:
        """Receive what has arrived (waiting up to ``timeout`` seconds for the first); keep the session alive."""
        return self._drive(self._core.poll(timeout))

    def next_report(self, timeout: float | None = None) -> Report | None:
        """Return the next execution report of the stream (waiting up to ``timeout`` seconds), or ``None``.

        Heartbeats are sent while it waits; ``timeout=None`` waits without limit.
        """
        return self._drive(self._core.next_report(timeout))


class AsyncBrokerClient(_Shell):
    """The asyncio twin of :class:`BrokerClient` (``zmq.asyncio``): the same methods, as coroutines.

    It behaves exactly as :class:`BrokerClient`: both carry out the decisions
    of one :class:`ClientCore`.  Commands and ``orders`` queries started at once
    on one client take turns; :meth:`poll`, :meth:`next_report` and
    :meth:`submit` do not wait for a turn.  :meth:`close` is a plain call.

    Parameters
    ----------
    gateways, broker, secret, heartbeat_ms, timeout, retries, keys
        As for :class:`BrokerClient`.
    ctx
        The ``zmq.asyncio`` context for the socket (``zmq.asyncio.Context.instance()`` by default).

    Examples
    --------
    >>> async def main():                                        # doctest: +SKIP
    ...     async with AsyncBrokerClient(["tcp://127.0.0.1:7101"], "B1") as c:
    ...         r = await c.sell("INFY", 5, "1580.00", "IOC")
    """

    def __init__(self, gateways: Sequence[str], broker: str, *, secret: str | None = None, heartbeat_ms: int = 5000,
                 timeout: float = 2.0, retries: int = 2, ctx: zmq.asyncio.Context | None = None,
                 keys: Keyring | None = None) -> None:
        super().__init__(gateways, broker, secret=secret, heartbeat_ms=heartbeat_ms, timeout=timeout, retries=retries)
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self.keys = keys
        self.sock: zmq.asyncio.Socket | None = None
        # Serial operations take turns on the one socket: each reads answers until its own is done.
        self._turn = asyncio.Lock()

    async def __aenter__(self) -> AsyncBrokerClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------- I/O

    async def _drive(self, op: Operation[T]) -> T:
        # Carry out the core's actions until the operation is done.
        try:
            while True:
                action = op.next_action(time.monotonic())
                if isinstance(action, Done):
                    return action.value
                if isinstance(action, Send):
                    assert self.sock is not None
                    await self.sock.send(action.data)
                elif isinstance(action, Connect):
                    self._open(action.endpoint)
                else:
                    await self._receive(op, action.until)
        finally:
            op.close()

    async def _in_turn(self, op: Operation[T]) -> T:
        async with self._turn:
            return await self._drive(op)

    async def _logged_on(self) -> None:
        # The calls that need no turn still need a session, and logging on takes a turn.
        if not self._core.connected:
            async with self._turn:
                if not self._core.connected:
                    await self._drive(self._core.connect())

    def _open(self, endpoint: str) -> None:
        if self.sock is not None:
            self.sock.close(0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        connect(sock, endpoint, self.keys)
        self.sock = sock

    async def _receive(self, op: Operation[Any], until: float) -> None:
        sock = self.sock
        assert sock is not None
        if await sock.poll(_ms_until(until)):
            while op.wants_input:
                try:
                    frames = await sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                op.receive(frames, time.monotonic())

    # ------------------------------------------------------------- connection

    async def connect(self) -> None:
        """Log on to the first gateway that answers (see :meth:`BrokerClient.connect`)."""
        await self._in_turn(self._core.connect())

    def close(self) -> None:
        """Close the connection (sending a logout if possible)."""
        bye = self._core.close()
        if self.sock is not None:
            if bye is not None:
                with contextlib.suppress(zmq.ZMQError):  # closing anyway
                    self.sock.send(bye, zmq.NOBLOCK)
            self.sock.close(0)
            self.sock = None

    # --------------------------------------------------------------- commands

    async def buy(self, symbol: str, qty: int, price: Decimal | str | None = None, tif: str | None = None, *,
                  type: str | None = None, oid: str | None = None, post_only: bool = False,
                  expire_date: _dt.date | str | None = None, disclosed_qty: int | None = None,
                  stop_price: Decimal | str | None = None) -> OrderResult:
        """Buy ``qty`` of ``symbol`` (see :meth:`BrokerClient.buy`)."""
        return await self._in_turn(self._core.buy(symbol, qty, price, tif, type=type, oid=oid, post_only=post_only,
                                                  expire_date=expire_date, disclosed_qty=disclosed_qty,
                                                  stop_price=stop_price))

    async def sell(self, symbol: str, qty: int, price: Decimal | str | None = None, tif: str | None = None, *,
                   type: str | None = None, oid: str | None = None, post_only: bool = False,
                   expire_date: _dt.date | str | None = None, disclosed_qty: int | None = None,
                   stop_price: Decimal | str | None = None) -> OrderResult:
        """Sell ``qty`` of ``symbol`` (see :meth:`BrokerClient.buy`)."""
        return await self._in_turn(self._core.sell(symbol, qty, price, tif, type=type, oid=oid,
                                                   post_only=post_only, expire_date=expire_date,
                                                   disclosed_qty=disclosed_qty, stop_price=stop_price))

    async def cancel(self, oid: str, symbol: str) -> OrderResult:
        """Cancel the open order ``oid`` (see :meth:`BrokerClient.cancel`)."""
        return await self._in_turn(self._core.cancel(oid, symbol))

    async def replace(self, oid: str, symbol: str, price: Decimal | str | None = None,
                      qty: int | None = None, stop_price: Decimal | str | None = None) -> OrderResult:
        """Change an open order's price and/or total quantity, a waiting stop's trigger (see
        :meth:`BrokerClient.replace`)."""
        return await self._in_turn(self._core.replace(oid, symbol, price, qty, stop_price))

    async def order_status(self, oid: str, symbol: str) -> OrderStatus:
        """Return the state of order ``oid`` (see :meth:`BrokerClient.order_status`)."""
        return await self._in_turn(self._core.order_status(oid, symbol))

    async def open_orders(self, symbol: str | None = None) -> list[OrderStatus]:
        """Return the broker's open orders (see :meth:`BrokerClient.open_orders`)."""
        return await self._in_turn(self._core.open_orders(symbol))

    async def admin(self, action: str, *, symbol: str | None = None, broker: str | None = None,
                    text: str | None = None, until: int | None = None) -> AdminAck:
        """Carry out an operator's command (see :meth:`BrokerClient.admin`)."""
        return await self._in_turn(self._core.admin(action, symbol=symbol, broker=broker, text=text, until=until))

    async def submit(self, msg: New | Cancel | Replace | Admin) -> None:
        """Send a command without waiting (see :meth:`BrokerClient.submit`)."""
        await self._logged_on()
        await self._drive(self._core.submit(msg))

    async def poll(self, timeout: float = 0.0) -> list[ServerMessage]:
        """Receive what has arrived (see :meth:`BrokerClient.poll`)."""
        await self._logged_on()
        return await self._drive(self._core.poll(timeout))

    async def next_report(self, timeout: float | None = None) -> Report | None:
        """Return the next execution report of the stream (waiting up to ``timeout`` seconds), or ``None``.

        Heartbeats are sent while it waits; ``timeout=None`` waits without limit.
        """
        await self._logged_on()
        return await self._drive(self._core.next_report(timeout))


__all__ = [
    "Action",
    "AsyncBrokerClient",
    "BrokerClient",
    "ClientCore",
    "Connect",
    "Done",
    "ExchangeUnavailable",
    "LogonRefused",
    "Operation",
    "OrderResult",
    "Receive",
    "Send",
]
