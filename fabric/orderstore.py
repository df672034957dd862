"""The order and trade store: every order's life and every trade, for good.

One interface, :class:`OrderStore`, two implementations:

- :class:`SQLiteOrderStore`, the embedded default: one file, WAL mode, each
  batch one transaction;
- :class:`~fabric.cassandra_store.CassandraOrderStore`, for a cluster: a CQL
  schema laid out for the queries, prepared statements, concurrent writes.

Both are idempotent by the ``(shard, seq)`` of the message a row came from
(``fabric.records``): a batch written twice leaves the store as written once,
and an order's row only moves forward (``last_seq``).  Both keep, with the
rows, the :class:`~fabric.records.Position` each stream topic reached, which
is where a restarted persistence node resumes.  ``tests/test_orderstore.py``
is the contract both pass.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final, Protocol

from fabric.records import OPEN_STATES, Batch, EventRow, OrderRow, Position, TradeRow


class StoreError(RuntimeError):
    """A store could not do what was asked (down, read-only, locked): the text says which and why."""


class OrderStore(Protocol):
    """Where every order and trade is kept (see the module's text)."""

    name: str  # what it is, for the log: "sqlite:/path", "cassandra:host/keyspace"

    def write(self, batch: Batch) -> None:
        """Write a batch: its rows, then its positions (at once where the store can). Raises StoreError."""

    def positions(self) -> list[Position]:
        """Return where every stream topic stands in the store."""

    def open_orders(self) -> list[OrderRow]:
        """Return every order still in the market (``new`` or ``partially_filled``)."""

    def order(self, broker: str, oid: str, day: str | None = None) -> OrderRow | None:
        """Return the broker's order ``oid`` on ``day`` (None: the latest day it was used), or None."""

    def orders(self, broker: str, day: str) -> list[OrderRow]:
        """Return the broker's orders of a day, by client order id."""

    def events(self, broker: str, oid: str, day: str) -> list[EventRow]:
        """Return an order's execution reports, in the order they were published."""

    def trades(self, symbol: str, day: str) -> list[TradeRow]:
        """Return the symbol's trades of a day, in the order they were made."""

    def recent_orders(self, since_ns: int) -> list[OrderRow]:
        """Return every open order and the orders changed at or after ``since_ns`` (a recent state's rebuild)."""

    def close(self) -> None:
        """Let go of the store's connections."""


_ORDER_COLS: Final = tuple(OrderRow.__struct_fields__)
_EVENT_COLS: Final = tuple(EventRow.__struct_fields__)
_TRADE_COLS: Final = tuple(TradeRow.__struct_fields__)

_OPEN: Final = ", ".join(repr(s) for s in sorted(OPEN_STATES))  # SQL's list of the open states
_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS orders (
    day TEXT NOT NULL, broker TEXT NOT NULL, oid TEXT NOT NULL, shard INTEGER NOT NULL, symbol TEXT NOT NULL,
    side TEXT, type TEXT, price TEXT, qty INTEGER NOT NULL, tif TEXT, state TEXT NOT NULL,
    cum_qty INTEGER NOT NULL, leaves_qty INTEGER NOT NULL, notional TEXT NOT NULL, avg_px TEXT, reason TEXT,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, created_ts INTEGER NOT NULL, updated_ts INTEGER NOT NULL,
    PRIMARY KEY (day, broker, oid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_by_oid ON orders (broker, oid, day);
CREATE INDEX IF NOT EXISTS orders_open ON orders (state) WHERE state IN ({_OPEN});
CREATE INDEX IF NOT EXISTS orders_by_update ON orders (updated_ts);
CREATE TABLE IF NOT EXISTS events (
    day TEXT NOT NULL, broker TEXT NOT NULL, oid TEXT NOT NULL, shard INTEGER NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, ts INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (day, shard, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_order ON events (day, broker, oid);
CREATE TABLE IF NOT EXISTS trades (
    day TEXT NOT NULL, symbol TEXT NOT NULL, shard INTEGER NOT NULL, seq INTEGER NOT NULL, trade_id INTEGER NOT NULL,
    price TEXT NOT NULL, qty INTEGER NOT NULL, aggressor TEXT NOT NULL, buy_broker TEXT NOT NULL,
    buy_oid TEXT NOT NULL, sell_broker TEXT NOT NULL, sell_oid TEXT NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (day, symbol, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (
    shard INTEGER NOT NULL, topic TEXT NOT NULL, tseq INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (shard, topic)
) WITHOUT ROWID;
"""

_UPSERT_ORDER: Final = (
    f"INSERT INTO orders ({', '.join(_ORDER_COLS)}) VALUES ({', '.join('?' * len(_ORDER_COLS))}) "
    "ON CONFLICT (day, broker, oid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _ORDER_COLS if c not in ("day", "broker", "oid"))
    + " WHERE excluded.last_seq > orders.last_seq"  # an order only moves forward: a replayed report changes nothing
)


def _insert(table: str, cols: tuple[str, ...]) -> str:
    # A row keyed by the (shard, seq) of its message: written again, it is already there.
    return f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


_INSERT_EVENT: Final = _insert("events", _EVENT_COLS)
_INSERT_TRADE: Final = _insert("trades", _TRADE_COLS)
_UPSERT_POSITION: Final = ("INSERT INTO positions (shard, topic, tseq, seq) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (shard, topic) DO UPDATE SET tseq = excluded.tseq, seq = excluded.seq")
BUSY_TIMEOUT_MS: Final = 2000  # a write waits this long for a lock another process holds, then fails (and is retried)


class SQLiteOrderStore:
    """The embedded order and trade store: one SQLite file in WAL mode, each :meth:`write` one transaction.

    Readers in other processes (``exfab trades``, a gateway) read it while the node writes (WAL).
    A failed write rolls back whole; the connection is opened again at the next call, so a file that
    was locked or read-only is written once it is not.

    Parameters
    ----------
    path
        The database file; made, with its tables, when missing (unless ``readonly``).
    readonly
        Open for reading only (a reader of a store some node writes).
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.name = f"sqlite:{self.path}"
        self._lock = threading.Lock()  # one connection, used from the writer thread and readers alike
        self._db: sqlite3.Connection | None = None
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        try:
            if self.readonly:
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                     timeout=BUSY_TIMEOUT_MS / 1000)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
                                     isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                # A process crash loses no committed batch; a power loss may lose the last ones, with their positions
                # (they roll back together: the node takes those messages again from the matchers).
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{self.name}: cannot open: {e}") from e
        self._db = db
        return db

    @contextmanager
    def _use(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._connect()
            except sqlite3.Error as e:
                self._drop()
                raise StoreError(f"{self.name}: {what}: {e}") from e

    def _drop(self) -> None:
        if self._db is not None:
            with suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def write(self, batch: Batch) -> None:
        """Write the batch in one transaction (see :class:`OrderStore`)."""
        with self._use("write") as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                if batch.orders:
                    db.executemany(_UPSERT_ORDER, [tuple(getattr(r, c) for c in _ORDER_COLS) for r in batch.orders])
                if batch.events:
                    db.executemany(_INSERT_EVENT, [(e.day, e.broker, e.oid, e.shard, e.seq, e.kind, e.ts, e.body)
                                                   for e in batch.events])
                if batch.trades:
                    db.executemany(_INSERT_TRADE, [tuple(getattr(t, c) for c in _TRADE_COLS) for t in batch.trades])
                if batch.positions:
                    db.executemany(_UPSERT_POSITION, [(p.shard, p.topic, p.tseq, p.seq) for p in batch.positions])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _query(self, what: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._use(what) as db:
            return db.execute(sql, args).fetchall()

    def positions(self) -> list[Position]:
        return [Position(*r) for r in self._query("positions", "SELECT shard, topic, tseq, seq FROM positions")]

    def _orders(self, what: str, where: str, args: tuple[Any, ...]) -> list[OrderRow]:
        rows = self._query(what, f"SELECT {', '.join(_ORDER_COLS)} FROM orders WHERE {where}", args)
        return [OrderRow(**dict(zip(_ORDER_COLS, r, strict=True))) for r in rows]

    def open_orders(self) -> list[OrderRow]:
        return self._orders("open orders", f"state IN ({_OPEN}) ORDER BY day, first_seq", ())

    def order(self, broker: str, oid: str, day: str | None = None) -> OrderRow | None:
        if day is None:
            found = self._orders("order", "broker = ? AND oid = ? ORDER BY day DESC LIMIT 1", (broker, oid))
        else:
            found = self._orders("order", "day = ? AND broker = ? AND oid = ?", (day, broker, oid))
        return found[0] if found else None

    def orders(self, broker: str, day: str) -> list[OrderRow]:
        return self._orders("orders", "day = ? AND broker = ? ORDER BY oid", (day, broker))

    def recent_orders(self, since_ns: int) -> list[OrderRow]:
        return self._orders("recent orders", f"updated_ts >= ? OR state IN ({_OPEN}) ORDER BY updated_ts", (since_ns,))

    def events(self, broker: str, oid: str, day: str) -> list[EventRow]:
        rows = self._query("events", f"SELECT {', '.join(_EVENT_COLS)} FROM events WHERE day = ? AND broker = ? "
                           "AND oid = ? ORDER BY shard, seq", (day, broker, oid))
        return [EventRow(**dict(zip(_EVENT_COLS, r, strict=True))) for r in rows]

    def trades(self, symbol: str, day: str) -> list[TradeRow]:
        rows = self._query("trades", f"SELECT {', '.join(_TRADE_COLS)} FROM trades WHERE day = ? AND symbol = ? "
                           "ORDER BY seq", (day, symbol))
        return [TradeRow(**dict(zip(_TRADE_COLS, r, strict=True))) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._drop()


__all__ = ["BUSY_TIMEOUT_MS", "OrderStore", "SQLiteOrderStore", "StoreError"]
