"""The order and trade store on a Cassandra cluster: one table per query, written with bounded concurrency.

:class:`CassandraOrderStore` keeps the :class:`~fabric.orderstore.OrderStore` contract
(``tests/test_orderstore.py``) through ``cassandra-driver``; :func:`init_schema` makes the
keyspace and its tables (``exfab store init``).

Schema
------
Cassandra answers a query from one partition, so each row is written to every table a query
reads it from:

========================  ============================================  ===========================================
table                     primary key                                   serves
========================  ============================================  ===========================================
``orders_by_broker_day``  ``((broker, day), oid)``                      ``orders(broker, day)``
``orders_by_oid``         ``((broker, oid), day)``, newest day first    ``order(broker, oid, day)``
``open_orders``           ``((shard), day, broker, oid)``               ``open_orders()``
``orders_by_update``      ``((hour, shard), updated_ts, broker, oid)``  ``recent_orders(since_ns)``
``update_hours``          ``((owner), hour, shard)``                    which ``orders_by_update`` partitions exist
``order_events``          ``((broker, day, oid), shard, seq)``          ``events(broker, oid, day)``
``trades_by_symbol_day``  ``((symbol, day), seq)``                      ``trades(symbol, day)``
``positions``             ``((owner), shard, topic)``                   ``positions()``
========================  ============================================  ===========================================

``open_orders`` holds an order while it is ``new`` or ``partially_filled``; the write that
finishes it deletes it.  ``orders_by_update`` gets a row per change of an order, in the
partition of its shard and of the hour of its ``updated_ts`` (hours since 1970, UTC), so that
no partition holds more than an hour of one shard; ``update_hours`` lists those partitions, so
that ``recent_orders`` reads those from ``since_ns`` on and no others.  ``owner`` is always
``"exfab"``: one partition for a small table read whole.

``open_orders()`` reads the whole of ``open_orders``, and with it the tombstone each finished
order left there until compaction drops it, ``gc_grace_seconds`` later (10 days by default).
A read that meets more than 100,000 tombstones fails (``tombstone_failure_threshold``): with
that many orders in 10 days, lower the table's ``gc_grace_seconds`` and run repairs within it.

Idempotent writes
-----------------
Events, trades and positions are keyed by what they are (an event by its message's
``(shard, seq)``, a trade by its symbol's ``seq``): a replayed batch rewrites the same rows.
Order rows are written ``USING TIMESTAMP last_seq``.  Cassandra keeps, cell by cell, the
write with the highest timestamp, and every write of one order comes from its one shard,
whose sequence only grows; so a row older than the one stored (a replay after a restart)
changes nothing, which is SQLite's ``WHERE excluded.last_seq > orders.last_seq``.  The
delete that takes a finished order out of ``open_orders`` carries its ``last_seq`` too, so a
late write of its open state cannot bring it back.  (The cost: a hand-made change with cqlsh
takes the clock, microseconds since 1970, far above any ``seq``, and would win for good; change
these tables only with ``USING TIMESTAMP``.)  A column that is None is left unset rather than
written null: a null is a tombstone, and reads fail past 100,000 of them (the node never
clears a column once set).

The write path
--------------
:meth:`CassandraOrderStore.write` sends the batch's row statements (prepared, idempotent) with
at most ``concurrency`` in flight, then, once every one succeeded, the positions.  Cassandra has
no transaction across partitions: a failure or a crash in between leaves rows without the
position they reach, and the node, resuming from the older position, writes them again.  The
first failure stops the sending; the call waits for the statements in flight, then raises
:class:`~fabric.orderstore.StoreError`, so nothing of a failed write lands after it returned.

Importing ``cassandra.cluster`` takes about 0.1 s (it picks its event loop: libev, built into
the driver's wheels; asyncore, deprecated, without it, up to Python 3.11), so it is imported at
the first use: the SQLite store and the topology check do not pay for it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Final

from fabric.orderstore import StoreError
from fabric.records import OPEN_STATES, Batch, EventRow, OrderRow, Position, TradeRow

OWNER: Final = "exfab"  # the one partition of positions and update_hours
TABLES: Final = ("orders_by_broker_day", "orders_by_oid", "open_orders", "orders_by_update", "update_hours",
                 "order_events", "trades_by_symbol_day", "positions")
HOUR_NS: Final = 3_600_000_000_000  # orders_by_update's partitions: an hour of a shard
DEFAULT_REPLICATION: Final = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
DDL_TIMEOUT_S: Final = 60.0  # a CREATE waits for every node to agree on the schema

_KEYSPACE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
_ORDER_COLS: Final = tuple(OrderRow.__struct_fields__)
_EVENT_COLS: Final = tuple(EventRow.__struct_fields__)
_TRADE_COLS: Final = tuple(TradeRow.__struct_fields__)

_ORDER_COLUMNS: Final = (
    "day text, broker text, oid text, shard int, symbol text, side text, type text, price text, qty bigint,\n"
    "    tif text, state text, cum_qty bigint, leaves_qty bigint, notional text, avg_px text, reason text,\n"
    "    first_seq bigint, last_seq bigint, created_ts bigint, updated_ts bigint")


def _table(columns: str, key: str, options: str = "") -> str:
    return f"(\n    {columns},\n    PRIMARY KEY {key}\n){options}"


_TABLE_CQL: Final = {
    "orders_by_broker_day": _table(_ORDER_COLUMNS, "((broker, day), oid)"),
    "orders_by_oid": _table(_ORDER_COLUMNS, "((broker, oid), day)", " WITH CLUSTERING ORDER BY (day DESC)"),
    "open_orders": _table(_ORDER_COLUMNS, "((shard), day, broker, oid)"),
    "orders_by_update": _table(f"hour int, {_ORDER_COLUMNS}", "((hour, shard), updated_ts, broker, oid)"),
    "update_hours": _table("owner text, hour int, shard int", "((owner), hour, shard)"),
    "order_events": _table("broker text, day text, oid text, shard int, seq bigint, kind text, ts bigint, body blob",
                           "((broker, day, oid), shard, seq)"),
    "trades_by_symbol_day": _table(
        "symbol text, day text, seq bigint, shard int, trade_id bigint, price text, qty bigint, aggressor text,\n"
        "    buy_broker text, buy_oid text, sell_broker text, sell_oid text, ts bigint", "((symbol, day), seq)"),
    "positions": _table("owner text, shard int, topic text, tseq bigint, seq bigint", "((owner), shard, topic)"),
}


def _cols(cols: Sequence[str]) -> str:
    return ", ".join(cols)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _insert(table: str, cols: Sequence[str], *, timestamp: bool = False) -> str:
    using = " USING TIMESTAMP ?" if timestamp else ""
    return f"INSERT INTO {table} ({_cols(cols)}) VALUES ({_marks(len(cols))}){using}"


# Every statement the store prepares, by name. Order rows carry their last_seq as the write's timestamp.
_CQL: Final = {
    "order_by_broker_day": _insert("orders_by_broker_day", _ORDER_COLS, timestamp=True),
    "order_by_oid": _insert("orders_by_oid", _ORDER_COLS, timestamp=True),
    "open_order": _insert("open_orders", _ORDER_COLS, timestamp=True),
    "close_order": "DELETE FROM open_orders USING TIMESTAMP ? WHERE shard = ? AND day = ? AND broker = ? AND oid = ?",
    "order_by_update": _insert("orders_by_update", ("hour", *_ORDER_COLS), timestamp=True),
    "update_hour": "INSERT INTO update_hours (owner, hour, shard) VALUES (?, ?, ?)",
    "event": _insert("order_events", _EVENT_COLS),
    "trade": _insert("trades_by_symbol_day", _TRADE_COLS),
    "position": "INSERT INTO positions (owner, shard, topic, tseq, seq) VALUES (?, ?, ?, ?, ?)",
    "select_positions": "SELECT shard, topic, tseq, seq FROM positions WHERE owner = ?",
    "select_open": f"SELECT {_cols(_ORDER_COLS)} FROM open_orders",
    "select_order_latest": f"SELECT {_cols(_ORDER_COLS)} FROM orders_by_oid WHERE broker = ? AND oid = ? LIMIT 1",
    "select_order_on": f"SELECT {_cols(_ORDER_COLS)} FROM orders_by_oid WHERE broker = ? AND oid = ? AND day = ?",
    "select_orders": f"SELECT {_cols(_ORDER_COLS)} FROM orders_by_broker_day WHERE broker = ? AND day = ?",
    "select_update_hours": "SELECT hour, shard FROM update_hours WHERE owner = ? AND hour >= ?",
    "select_updated": f"SELECT {_cols(_ORDER_COLS)} FROM orders_by_update WHERE hour = ? AND shard = ? "
                      "AND updated_ts >= ?",
    "select_events": f"SELECT {_cols(_EVENT_COLS)} FROM order_events WHERE broker = ? AND day = ? AND oid = ?",
    "select_trades": f"SELECT {_cols(_TRADE_COLS)} FROM trades_by_symbol_day WHERE symbol = ? AND day = ?",
}


def _check_keyspace(keyspace: str) -> None:
    if not _KEYSPACE.fullmatch(keyspace):
        raise ValueError(f"{keyspace!r} is not a keyspace name: a letter, then up to 47 letters, digits or '_'")


def _driver_errors() -> tuple[type[BaseException], ...]:
    """Return the exceptions by which the driver says a request failed (down, timed out, refused)."""
    from cassandra import DriverException  # type: ignore[import-untyped]
    from cassandra.cluster import NoHostAvailable  # type: ignore[import-untyped]
    from cassandra.connection import ConnectionException  # type: ignore[import-untyped]
    from cassandra.protocol import ErrorMessage  # type: ignore[import-untyped]

    return DriverException, NoHostAvailable, ConnectionException, ErrorMessage


def _store_error(where: str, what: str, e: BaseException) -> StoreError:
    from cassandra import RequestValidationException

    text = f"{where}: {what}: {type(e).__name__}: {e}"
    if isinstance(e, RequestValidationException):  # e.g. "unconfigured table", "Keyspace ... does not exist"
        text += " (are the keyspace and its tables made? exfab store init)"
    return StoreError(text)


def _connect(hosts: Sequence[str], port: int, keyspace: str | None, consistency: str) -> tuple[Any, Any]:
    """Return a connected (cluster, session), its default profile reading and writing at ``consistency``."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy  # type: ignore[import-untyped]
    from cassandra.query import tuple_factory  # type: ignore[import-untyped]

    profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
                               consistency_level=ConsistencyLevel.name_to_value[consistency],
                               row_factory=tuple_factory)
    cluster = Cluster(contact_points=list(hosts), port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        return cluster, cluster.connect(keyspace)
    except BaseException:
        cluster.shutdown()
        raise


def schema(keyspace: str, replication: str = DEFAULT_REPLICATION) -> list[str]:
    """Return the CQL statements that make the keyspace and its tables, those missing (:func:`init_schema` runs them).

    Parameters
    ----------
    keyspace
        The keyspace (a letter, then up to 47 letters, digits or ``_``).
    replication
        The keyspace's replication map, in CQL, e.g. ``{'class': 'NetworkTopologyStrategy', 'dc1': 3}``.

    Raises
    ------
    ValueError
        The keyspace name or the replication map is not valid.
    """
    from cassandra.metadata import protect_name  # type: ignore[import-untyped]

    _check_keyspace(keyspace)
    if not (replication.strip().startswith("{") and replication.strip().endswith("}")):
        raise ValueError(f"replication {replication!r} is not a CQL map, e.g. {DEFAULT_REPLICATION}")
    ks = protect_name(keyspace)  # quoted unless lower case, as the driver's USE quotes it
    return ([f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"]
            + [f"CREATE TABLE IF NOT EXISTS {ks}.{t} {_TABLE_CQL[t]}" for t in TABLES])


def init_schema(hosts: Sequence[str], keyspace: str, *, port: int = 9042,
                replication: str = DEFAULT_REPLICATION) -> None:
    """Create the keyspace and the store's tables, those missing (what ``exfab store init`` does).

    Parameters
    ----------
    hosts
        Contact points of the cluster.
    keyspace
        The keyspace to create (a letter, then up to 47 letters, digits or ``_``).
    port
        The native protocol port of the contact points.
    replication
        The keyspace's replication map, in CQL, e.g.
        ``{'class': 'NetworkTopologyStrategy', 'dc1': 3}``; used only if the keyspace is created.

    Raises
    ------
    ValueError
        The keyspace name or the replication map is not valid.
    StoreError
        The cluster could not be reached, or refused a statement.
    """
    if not hosts:
        raise ValueError("no Cassandra host given")
    statements = schema(keyspace, replication)
    where = f"cassandra:{hosts[0]}/{keyspace}"
    errors = _driver_errors()
    try:
        cluster, session = _connect(hosts, port, None, "ONE")
    except errors as e:
        raise _store_error(where, "cannot connect", e) from e
    try:
        for cql in statements:
            session.execute(cql, timeout=DDL_TIMEOUT_S)
    except errors as e:
        raise _store_error(where, f"init schema: {cql.split('(')[0].strip()}", e) from e
    finally:
        cluster.shutdown()


class CassandraOrderStore:
    """The order and trade store on a Cassandra cluster (see the module's text for the schema and the writes).

    The driver reconnects by itself: a call made while the cluster cannot be reached raises
    :class:`~fabric.orderstore.StoreError`, and the same call succeeds once it can.

    Parameters
    ----------
    hosts
        Contact points of the cluster (host names or addresses).
    keyspace
        The keyspace holding the tables (made by :func:`init_schema`).
    port
        The native protocol port of the contact points.
    consistency
        The consistency level of every read and write, by name (``LOCAL_QUORUM``, ``QUORUM``, ``ONE``...).
    concurrency
        The most statements of a write in flight at once.

    Raises
    ------
    ValueError
        An argument is not valid.
    StoreError
        The cluster could not be reached, or the keyspace or its tables are missing.
    """

    def __init__(self, hosts: Sequence[str], keyspace: str, *, port: int = 9042, consistency: str = "LOCAL_QUORUM",
                 concurrency: int = 64) -> None:
        from cassandra import ConsistencyLevel

        if not hosts:
            raise ValueError("no Cassandra host given")
        _check_keyspace(keyspace)
        if consistency not in ConsistencyLevel.name_to_value:
            raise ValueError(f"{consistency!r} is not a consistency level: one of "
                             f"{', '.join(sorted(ConsistencyLevel.name_to_value))}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be 1 or more, not {concurrency}")
        self.hosts = tuple(hosts)
        self.keyspace = keyspace
        self.concurrency = concurrency
        self.name = f"cassandra:{hosts[0]}/{keyspace}"
        self._errors = _driver_errors()
        try:
            self._cluster, self._session = _connect(hosts, port, keyspace, consistency)
        except self._errors as e:
            raise _store_error(self.name, "cannot connect", e) from e
        try:
            self._stmt = {name: self._session.prepare(cql) for name, cql in _CQL.items()}
        except self._errors as e:
            self._cluster.shutdown()
            raise _store_error(self.name, "prepare", e) from e
        except BaseException:
            self._cluster.shutdown()
            raise
        for stmt in self._stmt.values():
            stmt.is_idempotent = True  # every statement may be sent again (a timeout, another host): see the module

    # -- writing ----------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Write the batch's rows, then, once every one is written, its positions. Raises StoreError."""
        self._execute_all("write", self._row_statements(batch))
        self._execute_all("write positions", [(self._stmt["position"], (OWNER, p.shard, p.topic, p.tseq, p.seq))
                                              for p in batch.positions])

    def _row_statements(self, batch: Batch) -> Iterable[tuple[Any, tuple[Any, ...]]]:
        from cassandra.query import UNSET_VALUE

        s = self._stmt
        hours: set[tuple[int, int]] = set()
        for r in batch.orders:
            # None is left unset: a null would be a tombstone (see the module's text).
            values = tuple(UNSET_VALUE if v is None else v for v in (getattr(r, c) for c in _ORDER_COLS))
            hour = r.updated_ts // HOUR_NS
            hours.add((hour, r.shard))
            yield s["order_by_broker_day"], (*values, r.last_seq)
            yield s["order_by_oid"], (*values, r.last_seq)
            yield s["order_by_update"], (hour, *values, r.last_seq)
            if r.state in OPEN_STATES:
                yield s["open_order"], (*values, r.last_seq)
            elif r.state != "rejected":  # a rejected order was never open
                yield s["close_order"], (r.last_seq, r.shard, r.day, r.broker, r.oid)
        for hour, shard in sorted(hours):
            yield s["update_hour"], (OWNER, hour, shard)
        for e in batch.events:
            yield s["event"], (e.day, e.broker, e.oid, e.shard, e.seq, e.kind, e.ts, e.body)
        for t in batch.trades:
            yield s["trade"], tuple(getattr(t, c) for c in _TRADE_COLS)

    def _execute_all(self, what: str, statements: Iterable[tuple[Any, tuple[Any, ...]]]) -> None:
        """Execute the statements with at most ``concurrency`` in flight; on the first failure, send no more,
        wait for those in flight, and raise it (a StoreError when it is the driver's)."""
        done = threading.Condition()
        in_flight = 0
        failures: list[BaseException] = []

        def succeeded(_rows: object) -> None:
            nonlocal in_flight
            with done:
                in_flight -= 1
                done.notify()

        def failed(e: BaseException) -> None:
            nonlocal in_flight
            with done:
                in_flight -= 1
                failures.append(e)
                done.notify()

        try:
            for stmt, params in statements:
                with done:
                    while in_flight >= self.concurrency and not failures:
                        done.wait()
                    if failures:
                        break
                    in_flight += 1
                try:
                    future = self._session.execute_async(stmt, params)
                except BaseException as e:  # refused before it was sent (a bad value, a closed session)
                    failed(e)
                    break
                future.add_callbacks(succeeded, failed)  # called at once if the future is done already
        finally:
            with done:
                while in_flight:
                    done.wait()
        if failures:
            first = failures[0]
            if isinstance(first, self._errors):
                raise _store_error(self.name, what, first) from first
            raise first

    # -- reading ----------------------------------------------------------

    def _rows(self, what: str, name: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self._session.execute(self._stmt[name], params))  # later pages are fetched as it iterates
        except self._errors as e:
            raise _store_error(self.name, what, e) from e

    def _orders(self, what: str, name: str, params: tuple[Any, ...] = ()) -> list[OrderRow]:
        return [OrderRow(**dict(zip(_ORDER_COLS, r, strict=True))) for r in self._rows(what, name, params)]

    def positions(self) -> list[Position]:
        return [Position(*r) for r in self._rows("positions", "select_positions", (OWNER,))]

    def open_orders(self) -> list[OrderRow]:
        rows = self._orders("open orders", "select_open")  # the whole table, every shard's partition
        return sorted(rows, key=lambda r: (r.day, r.first_seq))

    def order(self, broker: str, oid: str, day: str | None = None) -> OrderRow | None:
        if day is None:
            found = self._orders("order", "select_order_latest", (broker, oid))
        else:
            found = self._orders("order", "select_order_on", (broker, oid, day))
        return found[0] if found else None

    def orders(self, broker: str, day: str) -> list[OrderRow]:
        return self._orders("orders", "select_orders", (broker, day))

    def recent_orders(self, since_ns: int) -> list[OrderRow]:
        """Return the orders changed at or after ``since_ns`` and every open order (as SQLite), by ``updated_ts``."""
        parts = self._rows("recent orders", "select_update_hours", (OWNER, since_ns // HOUR_NS))
        latest: dict[tuple[str, str, str], OrderRow] = {}
        changes = [r for hour, shard in parts
                   for r in self._orders("recent orders", "select_updated", (hour, shard, since_ns))]
        for r in changes + self.open_orders():  # an order changed twice has a row per change: keep its last
            key = (r.day, r.broker, r.oid)
            if key not in latest or r.last_seq > latest[key].last_seq:
                latest[key] = r
        return sorted(latest.values(), key=lambda r: (r.updated_ts, r.day, r.broker, r.oid))

    def events(self, broker: str, oid: str, day: str) -> list[EventRow]:
        rows = self._rows("events", "select_events", (broker, day, oid))
        return [EventRow(**dict(zip(_EVENT_COLS, r, strict=True))) for r in rows]

    def trades(self, symbol: str, day: str) -> list[TradeRow]:
        rows = self._rows("trades", "select_trades", (symbol, day))
        return [TradeRow(**dict(zip(_TRADE_COLS, r, strict=True))) for r in rows]

    def close(self) -> None:
        self._cluster.shutdown()


__all__ = ["DEFAULT_REPLICATION", "HOUR_NS", "OWNER", "TABLES", "CassandraOrderStore", "init_schema", "schema"]
