"""The wire protocol: every message between brokers, gateways and matchers, and its msgpack codec.

Every message is one msgpack map with the protocol version ``v`` (1) and a type
tag ``t``.  ``docs/protocol.md`` is the specification a broker writes a client
from; this module is its implementation.  Four families of messages, each with
its own decoder:

- client messages, broker -> gateway (:data:`ClientMessage`, :func:`decode_client`);
- answers, gateway -> broker (:data:`ServerMessage`, :func:`decode_server`);
- the matcher's sequenced outbound stream on PUB (:data:`PubMessage`,
  :func:`decode_pub`, :func:`encode_pub` with its topic frame);
- gateway <-> matcher internal messages (:data:`InternalMessage`,
  :func:`decode_internal`): order commands and replies, replay and snapshot.

Messages are frozen ``msgspec.Struct`` instances built with keyword arguments;
:func:`encode` turns any of them into bytes.  A decoder returns a typed,
validated message or raises :class:`ProtocolError` naming a specific reason
(``malformed``, ``unsupported_version``, ``unknown_message_type``,
``missing_field``, ``bad_field``, ``message_too_large``), for any input bytes.
Messages to the exchange (client and internal) refuse unknown fields; messages
from it (answers, PUB) ignore them, so the exchange may add optional fields
within a version.

Two codecs, one contract
------------------------
``msgspec`` decodes straight into the tagged union of Structs, checking types,
enums and lengths in C; the price pattern and the rules across fields are
checked after it, in Python (a pattern inside msgspec cost about 0.65 us a
message; looking the price up in a set of prices already seen costs 0.05 us).  The plain codec
(:func:`decode_client_plain`, :func:`encode_plain`) does the same with
``msgpack.unpackb``/``packb`` and hand-written checks compiled from the same
Struct annotations, and gives the same messages and the same errors.
``perf/bench_codec.py --repeat 5`` timed both on the gateway's hot path, with a
third variant, every check of a ``new`` written out inline (the best a
hand-written decoder does), on the 2-core reference machine (Python 3.11.7,
msgspec 0.22.0, msgpack 1.2.4), messages per second:

============================  ========  ========  ==============  ===============
path                          msgspec   plain     plain, inlined  msgspec / best
============================  ========  ========  ==============  ===============
decode + validate a ``new``   1.82 M    0.17 M    0.29 M          6.3x
encode a ``fill``             3.53 M    0.28 M    0.84 M          4.2x
refuse a bad ``new``          0.09 M    0.12 M    0.22 M          0.4x
============================  ========  ========  ==============  ===============

msgspec won, 6.3 times faster than the best plain decoder and 4.2 times than
the best plain encoder, and is THE codec.  Its errors are terse and depend on
which field it meets first, so when the msgspec path refuses a message the
plain decoder runs on the same bytes to name the reason and the field: both
codecs give exactly the same message or :class:`ProtocolError` for every input
(the tests fuzz both against each other; the one difference: bad UTF-8 inside
an unknown field of an answer or PUB message, which msgspec skips unread and
``msgpack`` refuses), and refusing costs about 11 us, slower than the
inlined plain decoder's refusal; refused messages are rare and rate limited, so
the fast accepted path is the one that counts.  Checks run in this order: size,
map, version, type, unknown fields, then the fields in their documented order,
then the rules across fields.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgpack
import msgspec
from msgspec import Meta

from fabric.constants import REJ_BAD_FIELD, REJ_MALFORMED, REJ_MISSING_FIELD, REJECT_NAMES

__all__ = [
    "ANSWER_OPS",
    "ARCHIVED",
    "BOOK",
    "EXEC",
    "HEARTBEAT",
    "MAX_CLIENT_MESSAGE",
    "MAX_INTERNAL_MESSAGE",
    "MAX_OID_LEN",
    "MAX_PRICE_LEN",
    "MAX_SYMBOL_LEN",
    "PRICE_PATTERN",
    "PROTOCOL_REASONS",
    "STATE",
    "TRADE",
    "VERSION",
    "Accepted",
    "Admin",
    "AdminAck",
    "BookLevel",
    "BookSnapshot",
    "Cancel",
    "Cancelled",
    "ClientMessage",
    "CommandReply",
    "Error",
    "ExAccepted",
    "ExCancelled",
    "ExExpired",
    "ExFill",
    "ExRejected",
    "ExReplaced",
    "ExTriggered",
    "ExecReport",
    "Expired",
    "Fill",
    "Heartbeat",
    "InternalMessage",
    "Logon",
    "LogonAck",
    "LogonReject",
    "Logout",
    "Message",
    "New",
    "OpenOrders",
    "OrderBatch",
    "OrderCommand",
    "OrderStatus",
    "Orders",
    "ProtocolError",
    "PubBundle",
    "PubHeartbeat",
    "PubMessage",
    "Rejected",
    "ReplAck",
    "ReplJoin",
    "ReplRecords",
    "ReplRefused",
    "Replace",
    "Replaced",
    "ReplayReply",
    "ReplayRequest",
    "ReplyBatch",
    "ServerMessage",
    "SessionEvent",
    "SnapshotReply",
    "SnapshotRequest",
    "Status",
    "Trade",
    "TradingState",
    "Triggered",
    "book_topic",
    "decode_client",
    "decode_client_plain",
    "decode_internal",
    "decode_pub",
    "decode_server",
    "encode",
    "encode_plain",
    "encode_pub",
    "exec_topic",
    "heartbeat_topic",
    "iter_pub",
    "iter_pub_typed",
    "op_of",
    "price_decimal",
    "refused_status",
    "split_topic",
    "state_topic",
    "topic_of",
    "trade_topic",
]

VERSION: Final = 1

# Size limits, checked on the raw bytes before any decoding.
MAX_CLIENT_MESSAGE: Final = 64 * 1024  # client messages, answers, PUB bodies
MAX_INTERNAL_MESSAGE: Final = 16 * 1024 * 1024  # replay and snapshot replies carry many messages

MAX_OID_LEN: Final = 64
MAX_SYMBOL_LEN: Final = 32
MAX_BROKER_LEN: Final = 64
MAX_SECRET_LEN: Final = 256
MAX_TEXT_LEN: Final = 200  # an operator's text on an admin command
MIN_HEARTBEAT_MS: Final = 100
MAX_HEARTBEAT_MS: Final = 300_000
DEFAULT_HEARTBEAT_MS: Final = 5_000

# A price on the wire: plain decimal digits, an optional point and fraction; no
# sign, exponent, spaces or floats.  [0-9], not \d (which takes any Unicode
# digit); \Z, not $ (which also matches before a final newline).
PRICE_PATTERN: Final = r"^[0-9]{1,15}(\.[0-9]{1,8})?\Z"
MAX_PRICE_LEN: Final = 24  # 15 digits, a point, 8 decimals

# --------------------------------------------------------------------------
# Reasons.  The engine's reasons (fabric.constants.REJECT_NAMES) travel as they
# are; these are the protocol's, the gateway's and the matcher's own.
# --------------------------------------------------------------------------
MALFORMED: Final = REJECT_NAMES[REJ_MALFORMED]
MISSING_FIELD: Final = REJECT_NAMES[REJ_MISSING_FIELD]
BAD_FIELD: Final = REJECT_NAMES[REJ_BAD_FIELD]
MESSAGE_TOO_LARGE: Final = "message_too_large"
UNSUPPORTED_VERSION: Final = "unsupported_version"
UNKNOWN_MESSAGE_TYPE: Final = "unknown_message_type"

PROTOCOL_REASONS: Final[dict[str, str]] = {
    # Decoding (raised by this module).
    MESSAGE_TOO_LARGE: "the message is longer than the limit (64 KiB from brokers), checked before decoding",
    MALFORMED: "the bytes are not one msgpack map with string keys",
    UNSUPPORTED_VERSION: "v is not 1",
    UNKNOWN_MESSAGE_TYPE: "t is not a message type of this protocol (or not one a broker may send)",
    MISSING_FIELD: "a required field is absent",
    BAD_FIELD: "a field has the wrong type, value or length, or is not a field of the message",
    # Session (the gateway).
    "auth_failed": "logon refused: an unknown broker, or another broker than the connection's key",
    "not_logged_on": "a message other than logon before a successful logon",
    "already_logged_on": "a second logon on a session, or the broker is logged on on another session",
    "heartbeat_timeout": "nothing received for three heartbeat intervals: the gateway ends the session",
    # Risk and routing (the gateway).
    "unknown_symbol": "the symbol is not traded on this exchange",
    "rate_limited": "the broker sent more new and replace messages per second than its limit (a token bucket)",
    "order_value_too_large": "price times quantity exceeds the broker's maximum order value",
    "order_qty_too_large": "the quantity exceeds the broker's (or the instrument's) maximum order quantity",
    "price_outside_risk_band": "the limit price is outside the risk band around the instrument's reference price",
    "too_many_open_orders": "the broker has as many open orders as its limit allows: cancel some first",
    "shard_unavailable": "the matcher for the symbol is not reachable (failover in progress): retry with the same oid",
    # Market control (the matcher, on an operator's admin command or a circuit breaker).
    "halted": "trading in the symbol, or the whole market, is halted: new orders and replaces are refused",
    "broker_disabled": "an operator disabled the broker (the kill switch): its new orders and replaces are refused",
    "not_authorized": "the session may not send this message: admin commands need an operator's session",
    # Matcher (internal).
    "not_primary": "the matcher is not (or no longer) the primary of its shard; the gateway resends to the new one",
    "replay_unavailable": "the journal no longer holds the requested sequence numbers: take a snapshot",
}

# --------------------------------------------------------------------------
# Topic frames of the PUB stream: a kind byte, the key, and a NUL so that a
# subscription to one key is not also a subscription to every key it prefixes
# (b"TTCS\0" does not match b"TTCSL\0"; b"T" matches every trade).
# --------------------------------------------------------------------------
EXEC: Final = b"X"  # execution reports, key = the shard number in decimal
TRADE: Final = b"T"  # trades, key = the symbol
BOOK: Final = b"B"  # book level changes, key = the symbol
HEARTBEAT: Final = b"H"  # the shard's heartbeats, key = the shard number in decimal
STATE: Final = b"S"  # trading state changes (halts), key = the shard number in decimal

# Field types shared by the messages.
Oid = Annotated[str, Meta(min_length=1, max_length=MAX_OID_LEN)]
Symbol = Annotated[str, Meta(min_length=1, max_length=MAX_SYMBOL_LEN)]
BrokerId = Annotated[str, Meta(min_length=1, max_length=MAX_BROKER_LEN)]
# A price field: msgspec checks only its length; the pattern is checked after decoding
# (_price_ok), because a pattern inside msgspec costs ~0.65 us a message and a lookup in
# a set of prices already seen ~0.05 us.  Every field named ``price`` is such a field.
Price = Annotated[str, Meta(min_length=1, max_length=MAX_PRICE_LEN)]
Side = Literal["buy", "sell"]
OrderType = Literal["limit", "market"]
Tif = Literal["GTC", "DAY", "IOC", "FOK", "GTD"]
# A GTD order's last trading day; whether it is a real day, and not past, the engine checks (bad_expire_date).
ExpireDate = Annotated[str, Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
OrderState = Literal["new", "partially_filled", "filled", "cancelled", "replaced", "expired", "rejected", "unknown"]
Seq = Annotated[int, Meta(ge=1)]
Count = Annotated[int, Meta(ge=0)]
# (price, total quantity, number of orders) in a snapshot: off the hot path, msgspec checks the pattern.
Level = tuple[Annotated[str, Meta(pattern=PRICE_PATTERN)], int, int]
Buffer: TypeAlias = bytes | bytearray | memoryview  # what a decoder reads: a frame's bytes, or a view of them


class ProtocolError(ValueError):
    """A message that is not a valid message of this protocol.

    Attributes
    ----------
    reason
        The reason name (``malformed``, ``unsupported_version``,
        ``unknown_message_type``, ``missing_field``, ``bad_field``,
        ``message_too_large``).
    text
        What was wrong, for a person.
    field
        The offending field (a dotted path for nested ones), when there is one.
    op, oid, symbol
        The message type and the order it was about, when they could be read
        from the broken message: the gateway answers ``rejected`` for them
        (see :meth:`answer`).
    """

    def __init__(self, reason: str, text: str, field: str | None = None, op: str | None = None,
                 oid: str | None = None, symbol: str | None = None) -> None:
        super().__init__(f"{reason}: {text}")
        self.reason = reason
        self.text = text
        self.field = field
        self.op = op
        self.oid = oid
        self.symbol = symbol

    def answer(self) -> Rejected | LogonReject | Error:
        """Return the gateway's answer to the broken client message.

        A broken ``logon`` is answered ``logon_reject``; a broken order message
        whose ``oid`` could be read is answered ``rejected`` for that order;
        anything else ``error``.
        """
        if self.op == "logon":
            return LogonReject(reason=self.reason, text=self.text)
        if self.op in ANSWER_OPS and self.oid is not None:
            return Rejected(op=self.op, oid=self.oid, symbol=self.symbol, reason=self.reason, text=self.text,
                            field=self.field)
        return Error(reason=self.reason, text=self.text, field=self.field)


# ==========================================================================
# Broker -> gateway (strict: unknown fields are refused)
# ==========================================================================


class _ClientMsg(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="t", forbid_unknown_fields=True):
    v: Literal[1] = 1


class Logon(_ClientMsg, tag="logon", frozen=True, kw_only=True):
    """Open a session: the first message on a connection."""

    broker: BrokerId
    secret: Annotated[str, Meta(max_length=MAX_SECRET_LEN)] | None = None
    heartbeat_ms: Annotated[int, Meta(ge=MIN_HEARTBEAT_MS, le=MAX_HEARTBEAT_MS)] = DEFAULT_HEARTBEAT_MS


class New(_ClientMsg, tag="new", frozen=True, kw_only=True):
    """Enter an order; ``price`` is required for a limit order and absent (nil) for a market order."""

    oid: Oid
    symbol: Symbol
    side: Side
    type: OrderType
    price: Price | None = None
    qty: int
    tif: Tif
    # Added fields: unset ones are not encoded at all, so a plain order's bytes are those of before them.
    post_only: bool | msgspec.UnsetType | None = msgspec.UNSET  # true: rejected (would_cross) rather than trade
    expire_date: ExpireDate | msgspec.UnsetType | None = msgspec.UNSET  # required with tif GTD, refused otherwise
    disclosed_qty: Annotated[int, Meta(ge=1)] | msgspec.UnsetType | None = msgspec.UNSET  # an iceberg's peak
    # A stop-loss order's trigger: it waits outside the book until a trade prints at or through it.
    stop_price: Price | msgspec.UnsetType | None = msgspec.UNSET

    def extras(self) -> tuple[bool, str | None, int]:
        """Return (post-only, expire date or ``None``, disclosed quantity or 0), given or not."""
        e, d = self.expire_date, self.disclosed_qty
        return self.post_only is True, e if isinstance(e, str) else None, d if isinstance(d, int) else 0

    def stop(self) -> str | None:
        """Return the stop price (a stop-loss order's trigger), or ``None``."""
        s = self.stop_price
        return s if isinstance(s, str) else None


class Cancel(_ClientMsg, tag="cancel", frozen=True, kw_only=True):
    """Cancel the open order ``oid``."""

    oid: Oid
    symbol: Symbol


class Replace(_ClientMsg, tag="replace", frozen=True, kw_only=True):
    """Change an open order's price, total quantity, or both (``None`` keeps a field; one is required); a stop
    order waiting for its trigger may change its ``stop_price`` too."""

    oid: Oid
    symbol: Symbol
    price: Price | None = None
    qty: int | None = None
    stop_price: Price | msgspec.UnsetType | None = msgspec.UNSET  # unset: not encoded, as New's added fields

    def stop(self) -> str | None:
        """Return the new stop price, or ``None`` (kept)."""
        s = self.stop_price
        return s if isinstance(s, str) else None


class Status(_ClientMsg, tag="status", frozen=True, kw_only=True):
    """Ask for the state of order ``oid``: answered with :class:`OrderStatus`."""

    oid: Oid
    symbol: Symbol


class Orders(_ClientMsg, tag="orders", frozen=True, kw_only=True):
    """Ask for the broker's open orders (of one symbol, or all): answered with :class:`OpenOrders`."""

    symbol: Symbol | None = None


class Admin(_ClientMsg, tag="admin", frozen=True, kw_only=True):
    """An operator's command (from an operator's session only): halt or resume trading in ``symbol`` (nil: the
    whole market), or disable or enable ``broker`` (the kill switch: ``disable`` also cancels its open orders).
    Answered with :class:`AdminAck` once every shard concerned has carried it out. ``until`` ends a halt by
    itself (ns since the Unix epoch). ``disconnected`` (cancel every open order of ``broker``) is sent by a
    gateway when the session of a broker with cancel-on-disconnect ends; a session may not send it."""

    action: Literal["halt", "resume", "disable", "enable", "disconnected"]
    symbol: Symbol | None = None
    broker: BrokerId | None = None
    text: Annotated[str, Meta(max_length=MAX_TEXT_LEN)] | None = None
    until: Annotated[int, Meta(ge=0)] | None = None  # a halt ends by itself then (ns since the Unix epoch)


class Heartbeat(_ClientMsg, tag="heartbeat", frozen=True, kw_only=True):
    """Keep the session alive; sent by either side when it has sent nothing for one interval."""


class Logout(_ClientMsg, tag="logout", frozen=True, kw_only=True):
    """End the session (either side); ``reason`` is set when the gateway ends it."""

    reason: str | None = None
    text: str | None = None


# ==========================================================================
# Gateway -> broker (lenient: unknown fields are ignored)
# ==========================================================================


class _ServerMsg(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="t"):
    v: Literal[1] = 1


class LogonAck(_ServerMsg, tag="logon_ack", frozen=True, kw_only=True):
    """The session is open; ``heartbeat_ms`` is the interval both sides keep to."""

    broker: str
    heartbeat_ms: int


class LogonReject(_ServerMsg, tag="logon_reject", frozen=True, kw_only=True):
    """The logon was refused; the gateway sends nothing else on the connection."""

    reason: str
    text: str


class Accepted(_ServerMsg, tag="accepted", frozen=True, kw_only=True):
    """The order is in the market (trades, if any, follow as fills)."""

    oid: str
    symbol: str
    side: Side
    type: OrderType
    price: Price | None = None
    qty: int
    tif: Tif
    ts: int | None = None
    post_only: bool = False
    expire_date: str | None = None
    disclosed_qty: int | None = None
    stop_price: Price | None = None  # a stop order: it waits for its trigger (a `triggered` report follows)


class Triggered(_ServerMsg, tag="triggered", frozen=True, kw_only=True):
    """A stop order's trigger was reached: it enters the book now as its limit (or market) order; fills follow."""

    oid: str
    symbol: str
    side: Side
    type: OrderType
    price: Price | None = None
    qty: int
    stop_price: Price
    ts: int | None = None


class Rejected(_ServerMsg, tag="rejected", frozen=True, kw_only=True):
    """A ``new``, ``cancel``, ``replace`` or ``status`` was refused; ``reason`` names why."""

    op: str
    oid: str | None = None
    symbol: str | None = None
    reason: str
    text: str
    field: str | None = None


class Fill(_ServerMsg, tag="fill", frozen=True, kw_only=True):
    """One trade of one order: ``last_qty`` at ``price``; ``aggressor`` is true for the incoming order."""

    oid: str
    symbol: str
    side: Side
    price: Price
    last_qty: int
    cum_qty: int
    leaves_qty: int
    trade_id: int
    aggressor: bool
    ts: int | None = None


class Cancelled(_ServerMsg, tag="cancelled", frozen=True, kw_only=True):
    """The order left the market unfilled: ``qty`` taken out; ``reason`` a cancel reason."""

    oid: str
    symbol: str
    qty: int
    cum_qty: int
    reason: str
    ts: int | None = None


class Replaced(_ServerMsg, tag="replaced", frozen=True, kw_only=True):
    """The order now has ``price`` and total ``qty``; ``kept_priority`` says whether it kept its place."""

    oid: str
    symbol: str
    price: Price | None  # nil: a stop-loss market order waiting for its trigger
    qty: int
    leaves_qty: int
    cum_qty: int
    kept_priority: bool
    ts: int | None = None
    stop_price: Price | None = None  # a stop order still waiting: its trigger (kept_priority: among the stops)


class Expired(_ServerMsg, tag="expired", frozen=True, kw_only=True):
    """A DAY order left the market at the end of the day: ``qty`` taken out."""

    oid: str
    symbol: str
    qty: int
    cum_qty: int
    ts: int | None = None


class OrderStatus(_ServerMsg, tag="order_status", frozen=True, kw_only=True):
    """The state of an order: the answer to ``status``, and to a ``new`` resent with a used oid (``op="new"``)."""

    op: str
    oid: str
    symbol: str | None  # None only when a refused command's symbol could not be read
    state: OrderState
    side: Side | None = None
    type: OrderType | None = None
    price: Price | None = None
    qty: int = 0
    cum_qty: int = 0
    leaves_qty: int = 0
    tif: Tif | None = None
    reason: str | None = None
    post_only: bool = False
    expire_date: str | None = None
    disclosed_qty: int | None = None
    stop_price: Price | None = None  # a stop order's trigger
    triggered: bool = False  # a stop order that has entered the book; false (and state "new") while it waits


class OpenOrders(_ServerMsg, tag="open_orders", frozen=True, kw_only=True):
    """The answer to ``orders``: every open order of the broker (``op`` of each is ``orders``), oldest first."""

    symbol: str | None = None
    orders: list[OrderStatus]


class AdminAck(_ServerMsg, tag="admin_ack", frozen=True, kw_only=True):
    """An operator's :class:`Admin` command is carried out; ``cancelled`` counts the orders a ``disable`` cancelled."""

    action: str
    symbol: str | None = None
    broker: str | None = None
    cancelled: int = 0


class Error(_ServerMsg, tag="error", frozen=True, kw_only=True):
    """A message that could not be read as any order message (see :class:`ProtocolError`)."""

    reason: str
    text: str
    field: str | None = None


# ==========================================================================
# Matcher -> everyone, on PUB (lenient).  Every message carries the shard,
# its sequence number ``seq`` (contiguous over everything the shard
# publishes), ``tseq`` (contiguous per topic frame), the fencing epoch and
# the matcher's timestamp (ns since the Unix epoch) of the input it answers.
# ==========================================================================


class _PubMsg(msgspec.Struct, kw_only=True, gc=False, tag_field="t"):
    # Not frozen: the engine makes its outcomes as these messages and the matcher stamps them with their
    # sequence numbers, so an outcome has one shape from the book to the wire.
    v: Literal[1] = 1
    shard: int
    seq: int
    tseq: int
    epoch: int
    ts: int


class ExAccepted(_PubMsg, tag="accepted", kw_only=True):
    """Execution report: ``broker``'s order ``oid`` is in the market."""

    broker: str
    oid: str
    symbol: str
    side: Side
    type: OrderType
    price: Price | None = None
    qty: int
    tif: Tif
    post_only: bool = False
    expire_date: str | None = None
    disclosed_qty: int | None = None
    stop_price: Price | None = None


class ExTriggered(_PubMsg, tag="triggered", kw_only=True):
    """Execution report: a stop order's trigger was reached; it enters the book now (its trades follow)."""

    broker: str
    oid: str
    symbol: str
    side: Side
    type: OrderType
    price: Price | None = None
    qty: int
    stop_price: Price


class ExRejected(_PubMsg, tag="rejected", kw_only=True):
    """Execution report: the engine refused a command (``op`` new, cancel or replace)."""

    broker: str
    op: str
    oid: str
    symbol: str
    reason: str
    text: str


class ExFill(_PubMsg, tag="fill", kw_only=True):
    """Execution report: one order's side of one trade (each trade gives two, aggressor first)."""

    broker: str
    oid: str
    symbol: str
    side: Side
    price: Price
    last_qty: int
    cum_qty: int
    leaves_qty: int
    trade_id: int
    aggressor: bool


class ExCancelled(_PubMsg, tag="cancelled", kw_only=True):
    """Execution report: the order left the market unfilled."""

    broker: str
    oid: str
    symbol: str
    qty: int
    cum_qty: int
    reason: str


class ExReplaced(_PubMsg, tag="replaced", kw_only=True):
    """Execution report: the order was replaced."""

    broker: str
    oid: str
    symbol: str
    price: Price | None  # nil: a stop-loss market order waiting for its trigger
    qty: int
    leaves_qty: int
    cum_qty: int
    kept_priority: bool
    stop_price: Price | None = None


class ExExpired(_PubMsg, tag="expired", kw_only=True):
    """Execution report: a DAY order expired."""

    broker: str
    oid: str
    symbol: str
    qty: int
    cum_qty: int


class Trade(_PubMsg, tag="trade", kw_only=True):
    """A trade at the resting order's price; ``trade_id`` counts the symbol's trades from 1, without gaps."""

    symbol: str
    trade_id: int
    price: Price
    qty: int
    aggressor: Side
    buy_broker: str
    buy_oid: str
    sell_broker: str
    sell_oid: str


class BookLevel(_PubMsg, tag="book", kw_only=True):
    """A price level changed: ``qty`` is its new total (0: the level is gone), ``count`` its orders."""

    symbol: str
    side: Side
    price: Price
    qty: int
    count: int


class PubHeartbeat(_PubMsg, tag="heartbeat", kw_only=True):
    """The shard is alive and its last message was ``seq`` (not a new number); ``tseq`` is 0.

    Sent once per heartbeat interval whatever the traffic, so a subscriber
    notices a lost last message without waiting for the next one.  ``tseqs``
    holds the last ``tseq`` of every topic the shard has published on, keyed by
    the topic frame without its NUL (``"TTCS"``, ``"BTCS"``, ``"X0"``): a
    subscriber to some topics learns of a lost last message of a quiet topic.
    ``alert`` says what stops the shard from taking commands now (its journal
    cannot be written), or is nil.  ``run`` is a number the matcher draws when
    its process starts: a subscriber tells a restarted matcher by it.
    """

    tseqs: dict[str, int] = {}
    alert: str | None = None
    run: int = 0


class TradingState(_PubMsg, tag="trading_state", kw_only=True):
    """Trading in ``symbol`` (nil: every symbol of the shard, a market-wide halt) is ``halted`` or ``trading`` again.

    ``reason`` says who halted it (``operator``, ``circuit_breaker``); ``until`` is when a halt ends by itself (ns
    since the Unix epoch; nil: until an operator resumes it).
    """

    symbol: str | None = None
    state: Literal["trading", "halted"]
    reason: str
    text: str | None = None
    until: int | None = None


class SessionEvent(_PubMsg, tag="session", kw_only=True):
    """The trading day (``docs/sessions.md``), on the shard's state topic.

    ``kind`` is ``phase`` (the shard entered ``phase``; ``symbol`` nil), ``indicative`` (the pre-open's equilibrium
    of ``symbol`` changed as orders arrived: ``price`` nil when nothing would trade), ``auction`` (the call auction
    of ``symbol`` traded ``qty`` at ``price``; nil: no price, nothing traded) or ``close`` (the closing price of
    ``symbol``, the next auction's previous close; ``qty`` is the volume it was taken over). ``unmatched`` is the
    quantity willing to trade at the equilibrium that does not. ``entry`` (a ``phase`` event): whether the phase
    takes orders; of ``closing``, true once the closing session (orders at the closing price) opens.
    """

    kind: Literal["phase", "indicative", "auction", "close"]
    phase: Literal["pre_open", "auction", "continuous", "closing", "closed"]
    symbol: str | None = None
    price: Price | None = None
    qty: int = 0
    unmatched: int = 0
    entry: bool = False


class PubBundle(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="bundle", tag_field="t"):
    """Several PUB messages of one topic in one body, in ``seq`` order: ``msgs`` are their bodies.

    A matcher publishes what one batch of input produced on a topic as one
    bundle (or a lone message): one ZeroMQ message instead of many, which is
    what keeps the stream fast.  The bundle itself carries no sequence numbers;
    each message in it does.  :func:`iter_pub` expands bundles.
    """

    v: Literal[1] = 1
    msgs: list[bytes]


# ==========================================================================
# Gateway <-> matcher (strict)
# ==========================================================================


class _InternalMsg(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", forbid_unknown_fields=True):
    v: Literal[1] = 1


class OrderCommand(_InternalMsg, tag="order_cmd", frozen=True, kw_only=True):
    """A broker's command, validated by the gateway, for the shard's primary matcher.

    ``req`` is the gateway's request number (unique per gateway); the matcher
    answers it with a :class:`CommandReply`.  ``expires`` (ns since the Unix
    epoch, 0 for never) is when the gateway stops waiting for the answer: a
    matcher that takes the command later refuses it (``shard_unavailable``)
    rather than carry out what its broker was told was refused.
    """

    gateway: BrokerId
    req: Seq
    broker: BrokerId
    cmd: New | Cancel | Replace | Status | Orders | Admin
    expires: Count = 0


class CommandReply(_InternalMsg, tag="cmd_reply", frozen=True, kw_only=True):
    """The matcher's answer to an :class:`OrderCommand`.

    ``in_seq`` is the sequence number the command got in the shard's journal
    (0 when refused unsequenced: then ``reason`` says why); ``first_seq`` ..
    ``last_seq`` the PUB messages it produced (0, 0 for none); ``status`` the
    answer to a ``status`` command (and, for the others, the order's state
    once the command was done); ``orders`` the answer to an ``orders`` command;
    ``reports`` the bodies of the execution reports the command produced,
    exactly as published, so the gateway answers its broker without waiting
    for the PUB stream; ``x_tseq`` the ``tseq`` of the shard's execution
    report topic when the matcher answered, the place of this answer in the
    shard's order.
    """

    gateway: BrokerId
    req: Seq
    shard: Count
    epoch: Count
    in_seq: Count = 0
    first_seq: Count = 0
    last_seq: Count = 0
    status: OrderStatus | None = None
    orders: list[OrderStatus] | None = None
    reports: list[bytes] | None = None
    x_tseq: Count = 0
    reason: str | None = None
    text: str | None = None


class OrderBatch(_InternalMsg, tag="order_batch", frozen=True, kw_only=True):
    """Several :class:`OrderCommand` in one message, handled in order (what a gateway drained in one turn)."""

    cmds: list[OrderCommand]


class ReplyBatch(_InternalMsg, tag="reply_batch", frozen=True, kw_only=True):
    """Several :class:`CommandReply` in one message, in the order of the commands."""

    replies: list[CommandReply]


class ReplayRequest(_InternalMsg, tag="replay_request", frozen=True, kw_only=True):
    """Ask the shard's matcher for its PUB messages ``first`` .. ``last`` again (from its journal)."""

    shard: Count
    first: Seq
    last: Seq


class ReplayReply(_InternalMsg, tag="replay_reply", frozen=True, kw_only=True):
    """Part of the answer to a :class:`ReplayRequest`: ``msgs`` are the original PUB bodies, in order.

    ``first`` .. ``last`` is the range this part holds; ``done`` marks the last
    part.  A ``reason`` (``replay_unavailable``) means the range is gone from
    the journal and ``msgs`` is empty: take a snapshot instead.
    """

    shard: Count
    first: Count
    last: Count
    msgs: list[bytes]
    done: bool
    reason: str | None = None
    text: str | None = None


class SnapshotRequest(_InternalMsg, tag="snapshot_request", frozen=True, kw_only=True):
    """Ask for the books of the shard (``symbol`` None: every symbol of the shard)."""

    shard: Count
    symbol: Symbol | None = None


class BookSnapshot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One symbol's book inside a :class:`SnapshotReply`; levels are best first.

    ``ref_price`` is the symbol's reference price at the snapshot's ``seq``: its last closing price (a ``close``
    on the ``S`` topic), else the topology's ``ref_price``; nil without either (and from a matcher that predates
    the field). The gateways' risk checks start from it.
    """

    symbol: Symbol
    bids: list[Level]
    asks: list[Level]
    trade_id: Count
    book_tseq: Count
    trade_tseq: Count
    ref_price: Price | None = None


class SnapshotReply(_InternalMsg, tag="snapshot", frozen=True, kw_only=True):
    """The books as they were after PUB message ``seq``; apply updates with a larger ``seq`` on top."""

    shard: Count
    seq: Count
    epoch: Count
    exec_tseq: Count
    books: list[BookSnapshot]
    states: list[TradingState] = []
    state_tseq: Count = 0  # the tseq of the shard's S topic at seq (its halts and its session messages)
    phase: Literal["pre_open", "auction", "continuous", "closing", "closed"] | None = None
    entry: bool = False  # whether the phase takes orders at seq (of `closing`: the closing session is open)


class ReplJoin(_InternalMsg, tag="repl_join", frozen=True, kw_only=True):
    """A secondary joins its shard's primary: it holds the journal up to ``last_seq`` and wants what follows."""

    name: str
    last_seq: Count


class ReplRecords(_InternalMsg, tag="repl_records", frozen=True, kw_only=True):
    """Journal records from the primary, in order: ``records[i]`` is record ``first + i``'s command, as journaled.

    ``live`` is false for records sent to catch a secondary up from the primary's journal, true for a
    batch the primary waits on (it answers and publishes that batch once the secondary acknowledges it).
    """

    epoch: Count
    first: Seq
    records: list[bytes]
    live: bool = False


class ReplAck(_InternalMsg, tag="repl_ack", frozen=True, kw_only=True):
    """The secondary holds every record up to ``last_seq`` in its journal, and has applied them."""

    name: str
    last_seq: Count


class ReplRefused(_InternalMsg, tag="repl_refused", frozen=True, kw_only=True):
    """The primary refuses a secondary's join or ack (it is not the primary, or the secondary is not its pair)."""

    reason: str
    text: str


ClientMessage: TypeAlias = Logon | New | Cancel | Replace | Status | Orders | Admin | Heartbeat | Logout
ServerMessage: TypeAlias = (LogonAck | LogonReject | Accepted | Rejected | Fill | Cancelled | Replaced | Expired
                            | OrderStatus | OpenOrders | AdminAck | Heartbeat | Logout | Error | Triggered)
ExecReport: TypeAlias = ExAccepted | ExRejected | ExFill | ExCancelled | ExReplaced | ExExpired | ExTriggered
PubMessage: TypeAlias = ExecReport | Trade | BookLevel | PubHeartbeat | TradingState | SessionEvent | PubBundle
InternalMessage: TypeAlias = (OrderCommand | CommandReply | OrderBatch | ReplyBatch | ReplayRequest | ReplayReply
                              | ReplJoin | ReplRecords | ReplAck | ReplRefused
                              | SnapshotRequest | SnapshotReply)
Message: TypeAlias = ClientMessage | ServerMessage | PubMessage | InternalMessage

# The ops a broken message is answered ``rejected`` for (others get ``error``).
ANSWER_OPS: Final = frozenset({"new", "cancel", "replace", "status"})
# The reason of an ``unknown`` order_status from a matcher whose order finished and left its memory: the gateway
# answers the broker from the stores (docs/protocol.md, section 5).
ARCHIVED: Final = "archived"


def op_of(msg: New | Cancel | Replace | Status) -> str:
    """Return the ``op`` that answers name ``msg`` by: its message type (``"new"``, ``"cancel"``...)."""
    return type(msg).__struct_config__.tag  # type: ignore[return-value]


def refused_status(op: str, oid: str, symbol: str | None, reason: str) -> OrderStatus:
    """Return the ``order_status`` that closes a command refused before any matcher looked at its order.

    A refused ``new`` created no order (``rejected``); for the other ops the
    exchange did not look the order up (``unknown``). ``reason`` is the
    refusal's (``docs/protocol.md``, section 6).
    """
    return OrderStatus(op=op, oid=oid, symbol=symbol, state="rejected" if op == "new" else "unknown", reason=reason)

# ==========================================================================
# Encoding
# ==========================================================================

_encoder = msgspec.msgpack.Encoder()

# encode(msg) -> bytes: any message as one msgpack map, ``t`` first, then ``v`` and the fields in their declared
# order (optional fields that are None as nil).  The encoder's own method, not a wrapper: it is on every hot path.
encode: Callable[[Message], bytes] = _encoder.encode


def exec_topic(shard: int) -> bytes:
    """Return the topic frame of the execution reports of ``shard``: ``b"X<shard>\\0"``."""
    return b"X%d\x00" % shard


def trade_topic(symbol: str) -> bytes:
    """Return the topic frame of the trades of ``symbol``: ``b"T<symbol>\\0"``."""
    return TRADE + symbol.encode() + b"\x00"


def book_topic(symbol: str) -> bytes:
    """Return the topic frame of the book level changes of ``symbol``: ``b"B<symbol>\\0"``."""
    return BOOK + symbol.encode() + b"\x00"


def heartbeat_topic(shard: int) -> bytes:
    """Return the topic frame of the heartbeats of ``shard``: ``b"H<shard>\\0"``."""
    return b"H%d\x00" % shard


def state_topic(shard: int) -> bytes:
    """Return the topic frame of the trading state changes (halts) of ``shard``: ``b"S<shard>\\0"``."""
    return b"S%d\x00" % shard


def topic_of(msg: PubMessage) -> bytes:
    """Return the topic frame ``msg`` is published under."""
    if isinstance(msg, BookLevel):
        return book_topic(msg.symbol)
    if isinstance(msg, Trade):
        return trade_topic(msg.symbol)
    if isinstance(msg, PubHeartbeat):
        return heartbeat_topic(msg.shard)
    if isinstance(msg, TradingState | SessionEvent):
        return state_topic(msg.shard)
    if isinstance(msg, PubBundle):
        raise ValueError("a bundle has the topic of the messages in it")
    return exec_topic(msg.shard)


def encode_pub(msg: PubMessage) -> list[bytes]:
    """Return the two frames ``[topic, body]`` of a PUB message."""
    return [topic_of(msg), _encoder.encode(msg)]


def split_topic(topic: bytes) -> tuple[bytes, str]:
    """Return (kind, key) of a topic frame: ``b"TTCS\\0"`` -> ``(b"T", "TCS")``.

    Raises
    ------
    ProtocolError
        ``malformed`` when the frame is not a kind byte, a key and a NUL.
    """
    if len(topic) < 3 or topic[-1] != 0 or topic[:1] not in (EXEC, TRADE, BOOK, HEARTBEAT, STATE):
        raise ProtocolError(MALFORMED, f"not a topic frame: {topic!r}")
    try:
        return topic[:1], topic[1:-1].decode()
    except UnicodeDecodeError:
        raise ProtocolError(MALFORMED, f"topic key is not UTF-8: {topic!r}") from None


def price_decimal(price: str) -> Decimal:
    """Return a wire price (already validated by a decoder) as a Decimal."""
    return Decimal(price)


# ==========================================================================
# Decoding: msgspec (the codec)
# ==========================================================================


@dataclass(frozen=True, slots=True)
class _Family:
    # One family of messages with its own decoder: the msgspec decoder of the
    # union of its types, and its size limit (the plain builders are in _PLAIN).
    name: str
    decode: Callable[[Buffer], Any]
    limit: int
    types: tuple[type[msgspec.Struct], ...]


def _family(name: str, types: tuple[type[msgspec.Struct], ...], limit: int) -> _Family:
    union: Any = types[0]
    for t in types[1:]:
        union = union | t
    return _Family(name, msgspec.msgpack.Decoder(union).decode, limit, types)


_CLIENT = _family("client", (Logon, New, Cancel, Replace, Status, Orders, Admin, Heartbeat, Logout),
                  MAX_CLIENT_MESSAGE)
_SERVER = _family("server", (LogonAck, LogonReject, Accepted, Rejected, Fill, Cancelled, Replaced, Expired,
                             OrderStatus, OpenOrders, AdminAck, Heartbeat, Logout, Error, Triggered),
                  MAX_CLIENT_MESSAGE)
_PUB = _family("pub", (ExAccepted, ExRejected, ExFill, ExCancelled, ExReplaced, ExExpired, Trade, BookLevel,
                       PubHeartbeat, TradingState, SessionEvent, PubBundle, ExTriggered), MAX_INTERNAL_MESSAGE)
_INTERNAL = _family("internal", (OrderCommand, CommandReply, OrderBatch, ReplyBatch, ReplayRequest, ReplayReply,
                                 SnapshotRequest, SnapshotReply, ReplJoin, ReplRecords, ReplAck, ReplRefused),
                     MAX_INTERNAL_MESSAGE)


def _too_large(n: int, limit: int) -> ProtocolError:
    return ProtocolError(MESSAGE_TOO_LARGE, f"message is {n} bytes; the limit is {limit}")


def _check_new(msg: New, path: str = "") -> None:
    # What a field's type cannot say: a limit order has a price, a market order none.
    if msg.type == "limit":
        if msg.price is None:
            raise ProtocolError(MISSING_FIELD, "missing field 'price': a limit order needs a price",
                                path + "price", "new", msg.oid, msg.symbol)
    elif msg.price is not None:
        raise ProtocolError(BAD_FIELD, f"field 'price': a market order takes no price, got {msg.price!r}",
                            path + "price", "new", msg.oid, msg.symbol)
    elif msg.post_only is True:
        raise ProtocolError(BAD_FIELD, "field 'post_only': a market order always takes liquidity",
                            path + "post_only", "new", msg.oid, msg.symbol)
    elif isinstance(msg.disclosed_qty, int):
        raise ProtocolError(BAD_FIELD, "field 'disclosed_qty': a market order does not rest, it discloses nothing",
                            path + "disclosed_qty", "new", msg.oid, msg.symbol)
    expire = msg.extras()[1]
    if msg.tif == "GTD" and expire is None:
        raise ProtocolError(MISSING_FIELD, "missing field 'expire_date': a GTD order needs its last day",
                            path + "expire_date", "new", msg.oid, msg.symbol)
    if msg.tif != "GTD" and expire is not None:
        raise ProtocolError(BAD_FIELD, f"field 'expire_date': only a GTD order takes one, not {msg.tif}",
                            path + "expire_date", "new", msg.oid, msg.symbol)


def _check_replace(msg: Replace, path: str = "") -> None:
    if msg.price is None and msg.qty is None and msg.stop() is None:
        raise ProtocolError(MISSING_FIELD, "missing field 'price', 'qty' or 'stop_price': a replace changes one or "
                            "more", path + "price", "replace", msg.oid, msg.symbol)


def _check(msg: Any) -> None:
    # The rules across fields, shared by both codecs; called on every decoded message.
    cls = type(msg)
    if cls is New:
        _check_new(msg)
    elif cls is Replace:
        _check_replace(msg)
    elif cls is OrderCommand:
        if type(msg.cmd) is New:
            _check_new(msg.cmd, "cmd.")
        elif type(msg.cmd) is Replace:
            _check_replace(msg.cmd, "cmd.")
    elif cls is ReplayRequest and msg.first > msg.last:
        raise ProtocolError(BAD_FIELD, f"field 'last': {msg.last} is before first {msg.first}", "last",
                            "replay_request")


_UNSET: Final = msgspec.UNSET
_price_match = re.compile(PRICE_PATTERN).match
_good_prices: set[str] = set()  # prices that matched the pattern: most prices recur all day
_MAX_GOOD_PRICES: Final = 1 << 16


def _price_ok(price: str) -> bool:
    # Whether ``price`` matches PRICE_PATTERN, remembering the prices that do.
    if price in _good_prices:
        return True
    if _price_match(price) is None:
        return False
    if len(_good_prices) >= _MAX_GOOD_PRICES:
        _good_prices.clear()
    _good_prices.add(price)
    return True


def _post_ok(msg: Any) -> bool:
    # What msgspec left to check on a message it decoded: prices and the rules across fields.
    cls = type(msg)
    if cls is OrderCommand:
        return _post_ok(msg.cmd)
    if cls is OrderBatch:
        return all(_post_ok(c.cmd) for c in msg.cmds)
    if cls is ReplyBatch:
        return all(r.status is None or _post_ok(r.status) for r in msg.replies)
    if cls is CommandReply:
        return (msg.status is None or _post_ok(msg.status)) and all(
            _post_ok(o) for o in msg.orders or ())
    if cls is ReplayRequest:
        return msg.first <= msg.last
    price = getattr(msg, "price", None)  # Cancel and Status carry none
    if price is not None and not _price_ok(price):
        return False
    if cls is New:
        market = msg.type == "market"
        post_only, expire, disclosed = msg.extras()
        stop = msg.stop()
        return ((price is None) is market and not (market and (post_only or disclosed))
                and (expire is None) is (msg.tif != "GTD") and (stop is None or _price_ok(stop)))
    if cls is Replace:
        stop = msg.stop()
        return (price is not None or msg.qty is not None or stop is not None) and (stop is None or _price_ok(stop))
    if cls is Triggered or cls is ExTriggered:
        return _price_ok(msg.stop_price)
    stop = getattr(msg, "stop_price", None)  # accepted, replaced, order_status of a stop order
    return stop is None or _price_ok(stop)


def _refused(data: Buffer, fam: _Family, exc: Exception | None) -> ProtocolError:
    # The msgspec path refused ``data``: the plain decoder names the reason (it raises).
    _decode_plain(data, fam)
    # The plain codec took what msgspec refused (nesting near msgpack's depth limits,
    # a repeated key whose first value was bad).
    return ProtocolError(MALFORMED, f"cannot decode: {exc}")


def _decode(data: Buffer, fam: _Family) -> Any:
    if len(data) > fam.limit:
        raise _too_large(len(data), fam.limit)
    try:
        msg = fam.decode(data)
    except Exception as exc:  # msgspec raises DecodeError, ValidationError, UnicodeDecodeError, RecursionError
        raise _refused(data, fam, exc) from None
    if type(msg) in _POST_CHECKED and not _post_ok(msg):
        raise _refused(data, fam, None)
    return msg


_POST_CHECKED: Final = frozenset(
    [cls for fam in (_CLIENT, _SERVER, _PUB, _INTERNAL) for cls in fam.types if "price" in cls.__struct_fields__]
    + [OrderCommand, CommandReply, OrderBatch, ReplyBatch, ReplayRequest])
_decode_client = _CLIENT.decode


def decode_client(data: Buffer) -> ClientMessage:
    """Return the broker -> gateway message in ``data``, validated.

    Raises
    ------
    ProtocolError
        For anything that is not a valid client message; nothing else is
        raised, whatever the bytes.
    """
    # The gateway's hot path: _decode written out, and a limit order with a price
    # seen before passes _post_ok's checks inline.
    if len(data) > MAX_CLIENT_MESSAGE:
        raise _too_large(len(data), MAX_CLIENT_MESSAGE)
    try:
        msg = _decode_client(data)
    except Exception as exc:
        raise _refused(data, _CLIENT, exc) from None
    cls = type(msg)
    if cls is New:
        if (msg.price not in _good_prices or msg.type != "limit" or msg.expire_date is not _UNSET
                or msg.tif == "GTD" or msg.stop_price is not _UNSET) and not _post_ok(msg):
            raise _refused(data, _CLIENT, None)
    elif cls is Replace and not _post_ok(msg):
        raise _refused(data, _CLIENT, None)
    return msg


def decode_server(data: Buffer) -> ServerMessage:
    """Return the gateway -> broker message in ``data`` (unknown fields ignored); raise :class:`ProtocolError`."""
    return _decode(data, _SERVER)


def decode_pub(body: Buffer) -> PubMessage:
    """Return the PUB message in a body frame (unknown fields ignored); raise :class:`ProtocolError`."""
    return _decode(body, _PUB)


def iter_pub(body: Buffer) -> list[PubMessage]:
    """Return the PUB messages in a body frame: the messages of a bundle, or the one message.

    Raises
    ------
    ProtocolError
        When the body, or a message in the bundle, is not a PUB message.
    """
    msg = _decode(body, _PUB)
    if type(msg) is PubBundle:
        return [_decode(b, _PUB) for b in msg.msgs]
    return [msg]


def iter_pub_typed(body: Buffer) -> list[PubMessage]:
    """Return the PUB messages in a body frame, checked for types only, not for the price pattern.

    For a node reading its own matchers' stream at full rate (the ticker): the
    matcher wrote every price from its engine.  Anything that is not a PUB
    message still raises (msgspec's ``DecodeError`` or ``ValidationError``).
    """
    msg = _PUB.decode(body)
    if type(msg) is PubBundle:
        dec = _PUB.decode
        return [dec(b) for b in msg.msgs]
    return [msg]


def decode_internal(data: Buffer) -> InternalMessage:
    """Return the gateway <-> matcher message in ``data``, validated; raise :class:`ProtocolError`."""
    return _decode(data, _INTERNAL)


# ==========================================================================
# The plain codec: msgpack.unpackb and hand-written checks, compiled once per
# message type from the same Struct annotations msgspec reads.  It is the
# benchmark's alternative and the codec's explainer of refused messages.
# ==========================================================================

_Check = Callable[[Any, str], Any]  # (value, field path) -> the value to store, or raise ProtocolError
_Build = Callable[[Any, str], Any]  # (raw map, field path prefix) -> message, or raise ProtocolError

_MSGPACK_KIND = {type(None): "nil", bool: "bool", int: "int", float: "float", str: "str", bytes: "bin",
                 list: "array", dict: "map"}


def _show(value: Any) -> str:
    kind = _MSGPACK_KIND.get(type(value), "ext")
    if kind in ("array", "map"):
        return f"{kind} of {len(value)}"
    text = repr(value)
    return f"{kind} {text[:40]}..." if len(text) > 43 else f"{kind} {text}"


def _bad(path: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(BAD_FIELD, f"field '{path}' must be {expected}, got {_show(value)}", path)


_PATTERN_TEXT = {
    PRICE_PATTERN: "a decimal string such as '3500.05' (digits, an optional point and up to 8 decimals; "
                   "no sign, exponent or float)",
}


def _compile(ti: Any, name: str = "", or_nil: str = "") -> tuple[_Check, str]:
    # Return a check for one msgspec type description (of the field ``name``), and what it
    # expects in words (``or_nil`` appended when the field may be nil).
    inspect = msgspec.inspect
    if isinstance(ti, inspect.StrType):
        lo, hi, pat = ti.min_length, ti.max_length, ti.pattern
        if name in ("price", "stop_price"):  # every field named price (or stop_price) is a price (see Price)
            lo, hi, pat = None, None, PRICE_PATTERN
        rx = re.compile(pat) if pat is not None else None
        if pat is not None:
            expected = _PATTERN_TEXT.get(pat, f"a string matching {pat}")
        elif lo and hi:
            expected = f"a string of {lo} to {hi} characters"
        elif hi:
            expected = f"a string of at most {hi} characters"
        else:
            expected = "a string"
        expected += or_nil

        def check_str(x: Any, path: str) -> Any:
            if (type(x) is not str or (lo is not None and len(x) < lo) or (hi is not None and len(x) > hi)
                    or (rx is not None and rx.search(x) is None)):
                raise _bad(path, expected, x)
            return x

        return check_str, expected
    if isinstance(ti, inspect.IntType):
        ge, le = ti.ge, ti.le
        if ge is not None and le is not None:
            expected = f"an integer from {ge} to {le}"
        elif ge is not None:
            expected = f"an integer >= {ge}"
        else:
            expected = "an integer"
        expected += or_nil

        def check_int(x: Any, path: str) -> Any:
            if type(x) is not int or (ge is not None and x < ge) or (le is not None and x > le):
                raise _bad(path, expected, x)
            return x

        return check_int, expected
    if isinstance(ti, inspect.BoolType):
        expected = "true or false" + or_nil

        def check_bool(x: Any, path: str) -> Any:
            if type(x) is not bool:
                raise _bad(path, expected, x)
            return x

        return check_bool, expected
    if isinstance(ti, inspect.BytesType):
        expected = "binary" + or_nil

        def check_bytes(x: Any, path: str) -> Any:
            if type(x) is not bytes:
                raise _bad(path, expected, x)
            return x

        return check_bytes, expected
    if isinstance(ti, inspect.LiteralType):
        values = ti.values
        expected = "one of " + ", ".join(repr(v) for v in values) + or_nil
        kinds = {type(v) for v in values}

        def check_literal(x: Any, path: str) -> Any:
            if type(x) not in kinds or x not in values:
                raise _bad(path, expected, x)
            return x

        return check_literal, expected
    if isinstance(ti, inspect.UnionType):
        structs = [t.cls for t in ti.types if isinstance(t, inspect.StructType)]
        others = [t for t in ti.types if not isinstance(t, inspect.StructType | inspect.NoneType)]
        nullable = ti.includes_none
        if structs:  # a tagged union of messages (an order command's ``cmd``), maybe nullable
            tagged = _compile_tagged(structs)
            expected = "a map" + (" or nil" if nullable else "")

            def check_tagged(x: Any, path: str) -> Any:
                if x is None and nullable:
                    return None
                if type(x) is not dict:
                    raise _bad(path, expected, x)
                return tagged(x, path + ".")

            return check_tagged, expected
        if len(others) != 1 or not nullable:  # pragma: no cover - a message class with a new field type
            raise TypeError(f"no plain check for {ti}")
        check, expected = _compile(others[0], name, ", or nil")

        def check_optional(x: Any, path: str) -> Any:
            return None if x is None else check(x, path)

        return check_optional, expected
    if isinstance(ti, inspect.ListType):
        item, item_expected = _compile(ti.item_type)
        expected = f"an array of {item_expected}{or_nil}"

        def check_list(x: Any, path: str) -> Any:
            if type(x) is not list:
                raise _bad(path, expected, x)
            return [item(e, f"{path}[{i}]") for i, e in enumerate(x)]

        return check_list, expected
    if isinstance(ti, inspect.DictType):
        key, key_expected = _compile(ti.key_type)
        value, value_expected = _compile(ti.value_type)
        expected = f"a map of {key_expected} to {value_expected}{or_nil}"

        def check_dict(x: Any, path: str) -> Any:
            if type(x) is not dict:
                raise _bad(path, expected, x)
            return {key(k, f"{path} key"): value(v, f"{path}[{k!r}]") for k, v in x.items()}

        return check_dict, expected
    if isinstance(ti, inspect.TupleType):
        items = [_compile(t)[0] for t in ti.item_types]
        expected = f"an array of {len(items)}{or_nil}"

        def check_tuple(x: Any, path: str) -> Any:
            if type(x) is not list or len(x) != len(items):
                raise _bad(path, expected, x)
            return tuple(c(e, f"{path}[{i}]") for i, (c, e) in enumerate(zip(items, x, strict=True)))

        return check_tuple, expected
    if isinstance(ti, inspect.StructType):  # a nested struct: a snapshot's book, or a tagged one (its states)
        build = _compile_tagged([ti.cls]) if ti.cls.__struct_config__.tag_field else _compile_struct(ti.cls)

        def check_struct(x: Any, path: str) -> Any:
            if type(x) is not dict:
                raise _bad(path, "a map", x)
            _check_keys(x)
            return build(x, path + ".")

        return check_struct, "a map"
    raise TypeError(f"no plain check for {ti}")  # pragma: no cover - a message class with a new field type


def _check_keys(raw: dict[Any, Any]) -> None:
    for k in raw:
        if type(k) is not str:
            raise ProtocolError(MALFORMED, f"map keys must be strings, got {_show(k)}")


def _compile_struct(cls: type[msgspec.Struct]) -> _Build:
    # Return a builder of cls from a raw map whose keys are strings: unknown fields first
    # (strict classes refuse them, lenient ones skip them), then every field in order.
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    config = cls.__struct_config__
    strict = config.forbid_unknown_fields
    known = frozenset(f.encode_name for f in info.fields) | ({config.tag_field} if config.tag_field else set())
    fields = [(f.name, f.encode_name, f.required, _compile(f.type, f.encode_name)[0]) for f in info.fields]

    def build(raw: dict[Any, Any], prefix: str) -> Any:
        if strict:
            for k in raw:
                if k not in known:
                    raise ProtocolError(BAD_FIELD, f"field '{prefix}{k}' is not a field of this message",
                                        prefix + k)
        kwargs: dict[str, Any] = {}
        for name, key, required, check in fields:
            if key in raw:
                kwargs[name] = check(raw[key], prefix + key)
            elif required:
                raise ProtocolError(MISSING_FIELD, f"missing field '{prefix}{key}'", prefix + key)
        return cls(**kwargs)

    return build


def _compile_tagged(classes: list[type[msgspec.Struct]]) -> _Build:
    # Return a builder of a tagged union from a raw map: keys, version, type, then the type's
    # fields.  A field of one message type (not a union) may leave its tag out.
    by_tag: dict[Any, _Build] = {cls.__struct_config__.tag: _compile_struct(cls) for cls in classes}
    names = ", ".join(str(t) for t in by_tag)
    only = next(iter(by_tag)) if len(by_tag) == 1 else None

    def build(raw: dict[Any, Any], prefix: str) -> Any:
        _check_keys(raw)
        if "v" in raw:
            v = raw["v"]
            if type(v) is not int or v != VERSION:
                raise ProtocolError(UNSUPPORTED_VERSION, f"field '{prefix}v' must be {VERSION}, got {_show(v)}: "
                                    f"this end speaks protocol version {VERSION} only", prefix + "v")
        if "t" in raw:
            t = raw["t"]
        elif only is not None:
            t = only
        else:
            raise ProtocolError(MISSING_FIELD, f"missing field '{prefix}t' (the message type)", prefix + "t")
        fields = by_tag.get(t) if type(t) is str else None
        if fields is None:
            raise ProtocolError(UNKNOWN_MESSAGE_TYPE, f"message type {_show(t)} is not one of {names}",
                                prefix + "t")
        return fields(raw, prefix)

    return build


def _decode_raw(raw: Any, build: _Build) -> Any:
    # Build a top-level message; an error names the message type and order when the map has them.
    if type(raw) is not dict:
        raise ProtocolError(MALFORMED, f"a message must be a map, got {_show(raw)}")
    try:
        return build(raw, "")
    except ProtocolError as e:
        if e.reason != MALFORMED:
            t, oid, symbol = raw.get("t"), raw.get("oid"), raw.get("symbol")
            e.op = t if type(t) is str and len(t) <= 32 else None
            e.oid = oid if type(oid) is str and 0 < len(oid) <= MAX_OID_LEN else None
            e.symbol = symbol if type(symbol) is str and 0 < len(symbol) <= MAX_SYMBOL_LEN else None
        raise


_UNPACK_OPTS: Final = {"raw": False, "strict_map_key": False}


def _decode_plain(data: Buffer, fam: _Family) -> Any:
    if len(data) > fam.limit:
        raise _too_large(len(data), fam.limit)
    try:
        raw = msgpack.unpackb(data, **_UNPACK_OPTS)
    except Exception as exc:  # ExtraData, FormatError, StackError, UnicodeDecodeError, TypeError, ValueError
        # Some of msgpack's errors carry no text (FormatError on a reserved type byte): say what the bytes were.
        detail = str(exc) or f"cannot be read as msgpack (starts with {bytes(data[:8]).hex(' ')})"
        raise ProtocolError(MALFORMED, f"not one msgpack document: {type(exc).__name__}: {detail}"[:200]) from None
    msg = _decode_raw(raw, _PLAIN[fam.name])
    if type(msg) in _CROSS_CHECKED:
        _check(msg)
    return msg


_CROSS_CHECKED: Final = frozenset({New, Replace, OrderCommand, ReplayRequest})


_PLAIN: Final = {fam.name: _compile_tagged(list(fam.types)) for fam in (_CLIENT, _SERVER, _PUB, _INTERNAL)}


def decode_client_plain(data: Buffer) -> ClientMessage:
    """Return the client message in ``data`` exactly as :func:`decode_client` does, without msgspec.

    The alternative codec (``msgpack.unpackb`` and hand-written checks); kept
    to explain refused messages and for ``perf/bench_codec.py``.
    """
    return _decode_plain(data, _CLIENT)


_PACK: Final = msgpack.Packer(use_bin_type=True).pack
_LAYOUT: dict[type, tuple[dict[str, Any], Callable[[Any], tuple[Any, ...]], tuple[str, ...], bool]] = {}


def _is_nested(ti: Any) -> bool:
    inspect = msgspec.inspect
    if isinstance(ti, inspect.UnionType):
        return any(_is_nested(t) for t in ti.types)
    return isinstance(ti, inspect.ListType | inspect.TupleType | inspect.StructType)


def _layout(cls: type[msgspec.Struct]) -> tuple[dict[str, Any], Callable[[Any], tuple[Any, ...]], tuple[str, ...],
                                               bool]:
    config = cls.__struct_config__
    head = {config.tag_field: config.tag} if config.tag_field is not None else {}
    names = cls.__struct_fields__
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    nested = any(_is_nested(f.type) for f in info.fields)
    getter = operator.attrgetter(*names) if len(names) > 1 else (
        (lambda obj: (getattr(obj, names[0]),)) if names else (lambda obj: ()))
    layout = _LAYOUT[cls] = (head, getter, names, nested)
    return layout


def _plain(obj: Any) -> Any:
    # A message as plain msgpack-ready values: a dict with the tag first, then the fields in order.
    if isinstance(obj, list | tuple):
        return [_plain(x) for x in obj]
    if not isinstance(obj, msgspec.Struct):
        return obj
    head, getter, names, nested = _LAYOUT.get(type(obj)) or _layout(type(obj))
    out = dict(head)
    values = getter(obj)
    if nested:
        out.update(zip(names, map(_plain, values), strict=True))
    else:
        out.update(zip(names, values, strict=True))
    if type(obj) is New:  # its added fields, unset, are not encoded (msgspec leaves them out too)
        for k in ("post_only", "expire_date", "disclosed_qty", "stop_price"):
            if out[k] is msgspec.UNSET:
                del out[k]
    elif type(obj) is Replace and out["stop_price"] is msgspec.UNSET:
        del out["stop_price"]
    return out


def encode_plain(msg: Message) -> bytes:
    """Return ``msg`` as msgpack bytes built with ``msgpack``: the same bytes as :func:`encode`."""
    return _PACK(_plain(msg))
