"""The engine's commands: one typed shape from the journal to the book.

A broker's ``new``, ``cancel`` or ``replace`` becomes one of these at the
matcher (:func:`from_order`), named for the broker the gateway authenticated;
the matcher stamps its time, journals it as it is (:func:`encode_command`) and
the engine applies it (:meth:`fabric.engine.MatchingEngine.apply`).  A replay of
the journal decodes the same structs straight from the journal's bytes
(:func:`decode_command`), and ``exfab replay`` parses its JSON lines into them.

The journal's records are msgpack maps with an ``op`` key and the fields below
(``docs/replay.md`` lists them), which is also the map every earlier version
wrote: a journal from before these types opens unchanged.  Prices are decimal
text as the broker sent them; the engine turns them into ticks of the
instrument once, when it applies the command.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import msgspec

from fabric.constants import (
    BUY,
    DAY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    STP_CANCEL_BOTH,
    STP_CANCEL_INCOMING,
    STP_CANCEL_RESTING,
    STP_OFF,
)
from fabric.protocol import Admin, Cancel, New, OrderCommand, Replace

__all__ = [
    "SIDE_CODES",
    "STP_CODES",
    "TIF_CODES",
    "TYPE_CODES",
    "AddInstrument",
    "CancelOrder",
    "Command",
    "Control",
    "EndOfDay",
    "NewOrder",
    "OrderCommandT",
    "ReplaceOrder",
    "SessionChange",
    "Stp",
    "admin_problem",
    "decode_command",
    "encode_command",
    "from_control",
    "from_order",
]

# The wire's names of sides, order types and times in force, and their codes in the books.
SIDE_CODES: Final = {"buy": BUY, "sell": SELL}
TYPE_CODES: Final = {"limit": LIMIT, "market": MARKET}
TIF_CODES: Final = {"GTC": GTC, "DAY": DAY, "IOC": IOC, "FOK": FOK, "GTD": GTD}
# Self-trade prevention modes (a broker's, from the topology) and their codes in the books.
STP_CODES: Final = {"off": STP_OFF, "cancel_resting": STP_CANCEL_RESTING, "cancel_incoming": STP_CANCEL_INCOMING,
                    "cancel_both": STP_CANCEL_BOTH}

Side = Literal["buy", "sell"]
OrderType = Literal["limit", "market"]
Tif = Literal["GTC", "DAY", "IOC", "FOK", "GTD"]
Stp = Literal["off", "cancel_resting", "cancel_incoming", "cancel_both"]


class _Command(msgspec.Struct, tag_field="op", kw_only=True, gc=False, omit_defaults=True,
               forbid_unknown_fields=True):
    @property
    def op(self) -> str:
        """The command's name, as the journal and the replay format write it (``"new"``...)."""
        return type(self).__struct_config__.tag  # type: ignore[return-value]


class _Order(_Command, kw_only=True):
    # What every order command carries: the order, and where it came from.
    oid: str
    broker: str
    symbol: str
    ts: int = 0  # the matcher's time for the command, in ns: its outcomes carry it, a replay gives it again
    gw: str | None = None  # the gateway that sent it, and that gateway's request number
    req: int = 0


class NewOrder(_Order, tag="new", kw_only=True):
    """Enter an order: ``price`` is decimal text for a limit order and ``None`` for a market order."""

    side: Side
    type: OrderType
    price: str | None = None
    qty: int
    tif: Tif
    stp: Stp = "off"  # the broker's self-trade prevention mode when the matcher took it; "off" is not written
    post_only: bool = False  # rejected (would_cross) rather than trade on entry; False is not written
    expire_date: str | None = None  # a GTD order's last day, "YYYY-MM-DD"
    disclosed_qty: int | None = None  # an iceberg's peak: what the depth shows of it
    stop_price: str | None = None  # a stop-loss order's trigger (decimal text); None: not a stop order


class CancelOrder(_Order, tag="cancel", kw_only=True):
    """Cancel the rest of an open order."""


class ReplaceOrder(_Order, tag="replace", kw_only=True):
    """Change an open order's price and/or total quantity; ``None`` keeps a field."""

    price: str | None = None
    qty: int | None = None
    stp: Stp = "off"  # as for NewOrder: applies when the order loses its place and crosses
    stop_price: str | None = None  # a waiting stop order's new trigger; None keeps it


class AddInstrument(_Command, tag="instrument", kw_only=True):
    """Make a symbol tradable: a journal starts with its shard's instruments, so it replays on its own."""

    symbol: str
    tick: str = "0.01"
    lot: int = 1
    ref_price: str | None = None
    band_pct: str | None = None
    market_protection_pct: str | None = None  # None (every journal from before it): no market protection


class EndOfDay(_Command, tag="end_of_day", kw_only=True):
    """Expire every resting DAY order, and the GTD orders whose ``expire_date`` is ``date`` or before.

    ``date`` ("YYYY-MM-DD") is the trading day that ends; ``None``: the day of ``ts`` in the exchange's time
    zone, and with neither no GTD order expires.
    """

    ts: int = 0
    date: str | None = None


ControlAction = Literal["halt", "resume", "disable", "enable", "disconnected"]


class Control(_Command, tag="admin", kw_only=True):
    """Market control: halt or resume ``symbol`` (``None``: every symbol of the shard), disable or enable
    ``broker`` (``disable`` also cancels its open orders: the kill switch), or cancel every open order of a
    ``broker`` whose session ended (``disconnected``: cancel-on-disconnect).

    ``until`` (ns since the Unix epoch) ends a halt by itself: the primary matcher journals the ``resume`` when
    the time comes, so a replay of the journal meets it at the same place. ``by`` is who sent it: the
    operator's broker id, the gateway for ``disconnected``, ``clock`` for the resume at ``until``.
    """

    action: ControlAction
    symbol: str | None = None
    broker: str | None = None
    text: str | None = None
    until: int | None = None
    by: str | None = None
    ts: int = 0
    gw: str | None = None
    req: int = 0


SessionPhase = Literal["pre_open", "auction", "continuous", "closing", "closed"]  # fabric.calendar.Phase


class SessionChange(_Command, tag="session", kw_only=True):
    """The trading day enters ``phase`` (``docs/sessions.md``): the primary matcher journals one when its calendar
    says so, so the secondary, a restart and a replay see the same day.

    Leaving ``pre_open`` runs the call auction; entering ``closing`` computes each symbol's closing price over the
    continuous trades from ``vwap_from`` (ns; ``None``: the 30 minutes before ``ts``); entering ``closed`` expires
    every DAY order. ``entry`` is for ``closing`` only: true, the closing session (orders at the closing price) is
    open; false (the default, which is not written: every journal from before it), the closing price's minutes.
    """

    phase: SessionPhase
    vwap_from: int | None = None
    ts: int = 0
    entry: bool = False


OrderCommandT: TypeAlias = NewOrder | CancelOrder | ReplaceOrder | Control
Command: TypeAlias = NewOrder | CancelOrder | ReplaceOrder | AddInstrument | EndOfDay | Control | SessionChange


def from_order(oc: OrderCommand, ts: int, stp: Stp = "off") -> OrderCommandT:
    """Return the command a gateway's ``order_cmd`` asks for, at matcher time ``ts`` (ns).

    ``oc.cmd`` is a broker's ``new``, ``cancel`` or ``replace``, or an operator's ``admin``: a ``status`` or
    ``orders`` changes nothing and has no command.  ``stp`` is the broker's
    self-trade prevention mode, stamped on a ``new`` or ``replace`` so that a
    replay of the journal does what the matcher did, whatever the topology says later.
    """
    c = oc.cmd
    if type(c) is New:
        return NewOrder(oid=c.oid, broker=oc.broker, symbol=c.symbol, side=c.side, type=c.type, price=c.price,
                        qty=c.qty, tif=c.tif, ts=ts, gw=oc.gateway, req=oc.req, stp=stp, post_only=c.extras()[0],
                        expire_date=c.extras()[1], disclosed_qty=c.extras()[2] or None, stop_price=c.stop())
    if type(c) is Cancel:
        return CancelOrder(oid=c.oid, broker=oc.broker, symbol=c.symbol, ts=ts, gw=oc.gateway, req=oc.req)
    if type(c) is Replace:
        return ReplaceOrder(oid=c.oid, broker=oc.broker, symbol=c.symbol, price=c.price, qty=c.qty, ts=ts,
                            gw=oc.gateway, req=oc.req, stp=stp, stop_price=c.stop())
    if type(c) is Admin:
        return from_control(oc, c, ts)
    raise TypeError(f"{type(c).__name__} is a query, not a command")


def admin_problem(c: Admin) -> tuple[str, str] | None:
    """Return why an ``admin`` command is not well formed, ``(reason, text)``, or ``None``.

    The rules across its fields (the gateway and the matcher both apply them): ``halt`` and ``resume`` are
    about a symbol or the market and take no ``broker``, and only a ``halt`` takes ``until``; the broker
    commands need ``broker`` and take no ``symbol`` and no ``until``.
    """
    if c.action == "halt" or c.action == "resume":
        if c.broker is not None:
            return "bad_field", f"{c.action} is about a symbol or the market: it takes no broker"
        if c.action == "resume" and c.until is not None:
            return "bad_field", "until is for a halt, not a resume"
        return None
    if c.broker is None:
        return "missing_field", f"{c.action} needs the broker it is about"
    if c.symbol is not None or c.until is not None:
        return "bad_field", f"{c.action} is about a broker: it takes no symbol and no until"
    return None


def from_control(oc: OrderCommand, c: Admin, ts: int) -> Control:
    """Return the ``admin`` journal command of an operator's (or a gateway's) :class:`~fabric.protocol.Admin`."""
    return Control(action=c.action, symbol=c.symbol, broker=c.broker, text=c.text, until=c.until, by=oc.broker,
                   ts=ts, gw=oc.gateway, req=oc.req)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Command)


def encode_command(cmd: Command) -> bytes:
    """Return ``cmd`` as a journal record's payload (a msgpack map, ``op`` first)."""
    return _encoder.encode(cmd)


def decode_command(payload: bytes) -> Command:
    """Return the command a journal record holds.

    Raises
    ------
    ValueError
        The payload is not one of the commands above (not msgpack, an unknown
        ``op``, a missing or mistyped field); the text says which.
    """
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise ValueError(f"payload is not a journal command: {e}") from None
