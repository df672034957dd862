"""The books of record: every order's life and every trade, as rows a store keeps.

The persistence node (``nodes/persistence.py``) follows every shard's
execution reports (topic ``X<shard>``) and trades (``T<symbol>``) and turns
them into the rows of this module, which an :class:`~fabric.orderstore.OrderStore`
keeps for good and a :class:`~fabric.recent.RecentState` keeps for fast reading:

- :class:`OrderRow`: an order as it stands, with its terms, its state, the
  quantity filled and the average price of its fills (``docs/persistence.md``);
- :class:`EventRow`: one execution report of its life, byte for byte as published;
- :class:`TradeRow`: one trade.

Every row carries the ``(shard, seq)`` of the message it came from, which is
what makes writing idempotent: a message written twice (the node restarted, or
a replay overlapped) lands on the same key, and an order's row is changed only
by a message later than the last it holds (:meth:`OrderBook.apply`).

Prices stay decimal text as the stream carries them; an order's average price
is exact (``notional`` / ``cum_qty``, kept as text).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from decimal import Decimal
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo

import msgspec

from fabric.constants import REJ_DUPLICATE_OID, REJECT_NAMES
from fabric.protocol import (
    ExAccepted,
    ExCancelled,
    ExecReport,
    ExExpired,
    ExFill,
    ExRejected,
    ExReplaced,
    ExTriggered,
    OrderStatus,
    Trade,
    encode,
)

DEFAULT_TIMEZONE: Final = "Asia/Kolkata"  # the exchange's clock for "which trading day" (the topology may say another)
OPEN_STATES: Final = frozenset({"new", "partially_filled"})
AVG_DECIMALS: Final = 6  # an average price is given to this many decimals past the tick's (exact notional is kept)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def trading_day(ts_ns: int, timezone: str = DEFAULT_TIMEZONE) -> str:
    """Return the trading day (``YYYY-MM-DD``, in the exchange's ``timezone``) of a time in ns since the Unix epoch."""
    return _dt.datetime.fromtimestamp(ts_ns / 1e9, _zone(timezone)).date().isoformat()


class OrderRow(msgspec.Struct, kw_only=True):
    """One order of one broker on one trading day, as it stands after its last message (``last_seq``).

    ``state`` is the order's (``new``, ``partially_filled``, ``filled``, ``cancelled``,
    ``expired``, ``rejected``); ``notional`` is the sum of price x quantity of its fills,
    exact decimal text, and ``avg_px`` that over ``cum_qty`` (None before a fill).
    """

    day: str
    broker: str
    oid: str
    shard: int
    symbol: str
    side: str | None = None
    type: str | None = None
    price: str | None = None
    qty: int = 0
    tif: str | None = None
    state: str = "new"
    cum_qty: int = 0
    leaves_qty: int = 0
    notional: str = "0"
    avg_px: str | None = None
    reason: str | None = None
    first_seq: int = 0
    last_seq: int = 0
    created_ts: int = 0
    updated_ts: int = 0

    @property
    def open(self) -> bool:
        """Whether the order is still in the market."""
        return self.state in OPEN_STATES

    def to_json(self) -> dict[str, object]:
        """Return the row as a JSON object (``exfab order-status --json``)."""
        return msgspec.to_builtins(self)

    def status(self, op: str) -> OrderStatus:
        """Return the order as the protocol's ``order_status`` answering ``op``."""
        return OrderStatus(op=op, oid=self.oid, symbol=self.symbol, state=self.state,  # type: ignore[arg-type]
                           side=self.side, type=self.type, price=self.price, qty=self.qty,  # type: ignore[arg-type]
                           cum_qty=self.cum_qty, leaves_qty=self.leaves_qty, tif=self.tif,  # type: ignore[arg-type]
                           reason=self.reason)


class EventRow(msgspec.Struct, kw_only=True, frozen=True):
    """One execution report of an order's life: its kind (``accepted``, ``fill``...) and its body as published."""

    day: str
    broker: str
    oid: str
    shard: int
    seq: int
    kind: str
    ts: int
    body: bytes


class TradeRow(msgspec.Struct, kw_only=True, frozen=True):
    """One trade; ``trade_id`` counts the symbol's trades of the day from 1."""

    day: str
    symbol: str
    shard: int
    seq: int
    trade_id: int
    price: str
    qty: int
    aggressor: str
    buy_broker: str
    buy_oid: str
    sell_broker: str
    sell_oid: str
    ts: int

    @classmethod
    def of(cls, t: Trade, day: str) -> TradeRow:
        """Return the row of a published trade."""
        return cls(day=day, symbol=t.symbol, shard=t.shard, seq=t.seq, trade_id=t.trade_id, price=t.price, qty=t.qty,
                   aggressor=t.aggressor, buy_broker=t.buy_broker, buy_oid=t.buy_oid, sell_broker=t.sell_broker,
                   sell_oid=t.sell_oid, ts=t.ts)

    def to_json(self) -> dict[str, object]:
        """Return the row as a JSON object (``exfab trades --json``)."""
        return msgspec.to_builtins(self)


class Position(msgspec.Struct, frozen=True):
    """Where a stream topic of a shard stands in a store: everything up to ``tseq`` (at ``seq``) is written."""

    shard: int
    topic: str
    tseq: int
    seq: int


class Batch(msgspec.Struct, kw_only=True):
    """What one write puts in the stores, all or nothing where the store can: rows, then the positions they reach.

    ``orders`` holds each changed order once, as it stands after the batch (a recent store lets the
    finished ones expire).
    """

    orders: list[OrderRow] = msgspec.field(default_factory=list)
    events: list[EventRow] = msgspec.field(default_factory=list)
    trades: list[TradeRow] = msgspec.field(default_factory=list)
    positions: list[Position] = msgspec.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.trades)


_DUPLICATE: Final = REJECT_NAMES[REJ_DUPLICATE_OID]
_KIND: Final[dict[type, str]] = {ExAccepted: "accepted", ExRejected: "rejected", ExFill: "fill",
                                 ExCancelled: "cancelled", ExReplaced: "replaced", ExExpired: "expired",
                                 ExTriggered: "triggered"}


class OrderBook:
    """The orders being changed, by (day, broker, oid): each execution report applied to its order's row.

    It holds the open orders (so a fill finds its order without reading a store) and what the
    current batch changed; :meth:`take` hands the batch over and lets finished orders go.

    Parameters
    ----------
    timezone
        The exchange's time zone, for the trading day of each message.
    """

    def __init__(self, timezone: str = DEFAULT_TIMEZONE) -> None:
        self.timezone = timezone
        self.rows: dict[tuple[str, str], OrderRow] = {}  # (broker, oid) -> the order, open or changed in this batch
        self._batch = Batch()
        self._changed: dict[tuple[str, str], OrderRow] = {}
        self._day_cache: tuple[int, int, str] = (0, 0, "")  # [start, end) ns of the last day computed, and its name
        self.missing: int = 0  # reports for an order the book never saw accepted (its start was lost)

    def load(self, rows: Iterable[OrderRow]) -> None:
        """Take the open orders a store holds (a restarted node), to apply later reports to."""
        for r in rows:
            self.rows[(r.broker, r.oid)] = r

    def day(self, ts: int) -> str:
        """Return the trading day of ``ts`` (ns), cached per day."""
        lo, hi, name = self._day_cache
        if lo <= ts < hi:
            return name
        name = trading_day(ts, self.timezone)
        d = _dt.date.fromisoformat(name)
        z = _zone(self.timezone)
        start = int(_dt.datetime(d.year, d.month, d.day, tzinfo=z).timestamp()) * 1_000_000_000
        end = int((_dt.datetime(d.year, d.month, d.day, tzinfo=z) + _dt.timedelta(days=1)).timestamp()) * 1_000_000_000
        self._day_cache = (start, end, name)
        return name

    def trade(self, t: Trade) -> None:
        """Record a trade."""
        self._batch.trades.append(TradeRow.of(t, self.day(t.ts)))

    def report(self, m: ExecReport, body: bytes | None = None) -> None:
        """Apply one execution report to its order and record it as an event (``body``: as published)."""
        key = (m.broker, m.oid)
        row = self.rows.get(key)
        t = type(m)
        # An order and its events belong to the day it was entered (a GTC order filled on a later day stays there).
        day = row.day if row is not None and t is not ExAccepted and t is not ExRejected else self.day(m.ts)
        self._batch.events.append(EventRow(day=day, broker=m.broker, oid=m.oid, shard=m.shard, seq=m.seq,
                                           kind=_KIND[t], ts=m.ts, body=body if body is not None else encode(m)))
        if row is not None and row.day == day and m.seq <= row.last_seq:
            return  # the row holds this message already (written before a restart, or a replay overlapped)
        if t is ExAccepted:
            a: ExAccepted = m  # type: ignore[assignment]
            row = OrderRow(day=day, broker=a.broker, oid=a.oid, shard=a.shard, symbol=a.symbol, side=a.side,
                           type=a.type, price=a.price, qty=a.qty, tif=a.tif, state="new", leaves_qty=a.qty,
                           first_seq=a.seq, created_ts=a.ts)
        elif t is ExRejected:
            r: ExRejected = m  # type: ignore[assignment]
            if r.op != "new" or r.reason == _DUPLICATE or (row is not None and row.state != "rejected"):
                return  # a refused cancel or replace, or a new refused for an id in use, leaves that order as it was
            row = OrderRow(day=day, broker=r.broker, oid=r.oid, shard=r.shard, symbol=r.symbol, state="rejected",
                           reason=r.reason, first_seq=r.seq, created_ts=r.ts)
        elif row is None:
            self.missing += 1
            return  # (counted: the stream lost this order's start; its events are still kept)
        elif t is ExFill:
            f: ExFill = m  # type: ignore[assignment]
            row.cum_qty, row.leaves_qty = f.cum_qty, f.leaves_qty
            notional = Decimal(row.notional) + Decimal(f.price) * f.last_qty
            row.notional = str(notional)
            row.avg_px = _avg(notional, f.cum_qty, f.price)
            row.state = "filled" if f.leaves_qty == 0 else "partially_filled"
        elif t is ExCancelled:
            c: ExCancelled = m  # type: ignore[assignment]
            row.leaves_qty, row.cum_qty, row.state, row.reason = 0, c.cum_qty, "cancelled", c.reason
        elif t is ExReplaced:
            p: ExReplaced = m  # type: ignore[assignment]
            row.price, row.qty, row.leaves_qty, row.cum_qty = p.price, p.qty, p.leaves_qty, p.cum_qty
            if p.leaves_qty == 0:
                row.state = "filled"
        elif t is ExTriggered:
            pass  # a stop order entered the book: its row is as it was (its fills follow); the event is kept
        else:
            e: ExExpired = m  # type: ignore[assignment]
            row.leaves_qty, row.cum_qty, row.state = 0, e.cum_qty, "expired"
        row.last_seq, row.updated_ts = m.seq, m.ts
        self.rows[key] = row
        self._changed[key] = row

    def position(self, shard: int, topic: str, tseq: int, seq: int) -> None:
        """Record where a topic stands once the batch is written."""
        self._batch.positions.append(Position(shard, topic, tseq, seq))

    def pending(self) -> int:
        """Return the number of messages in the batch being gathered."""
        return len(self._batch)

    def take(self) -> Batch:
        """Hand over the batch gathered so far (each changed order once); finished orders leave memory."""
        b = self._batch
        b.orders = [msgspec.structs.replace(r) for r in self._changed.values()]  # a copy: later reports change rows
        for key, r in self._changed.items():
            if not r.open:
                self.rows.pop(key, None)
        self._batch, self._changed = Batch(), {}
        return b

    def reset(self, open_rows: Iterable[OrderRow]) -> None:
        """Forget everything not written, and start again from the open orders a store holds."""
        self.rows.clear()
        self._changed.clear()
        self._batch = Batch()
        self.load(open_rows)


def _avg(notional: Decimal, qty: int, price: str) -> str:
    # To the tick's decimals and AVG_DECIMALS more, trailing zeros past the tick's dropped: 1420.1 x 3 and 1420.2
    # average "1420.125", and fills all at "3500.05" average "3500.05".
    tick_places = len(price.partition(".")[2])
    text = format((notional / qty).quantize(Decimal(1).scaleb(-(tick_places + AVG_DECIMALS))), "f")
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(tick_places, "0")
    return f"{whole}.{frac}" if frac else whole


__all__ = ["AVG_DECIMALS", "DEFAULT_TIMEZONE", "OPEN_STATES", "Batch", "EventRow", "OrderBook", "OrderRow", "Position",
           "TradeRow", "trading_day"]
