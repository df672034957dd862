"""The order store contract (``fabric.orderstore.OrderStore``), run on every store; then what only one store does.

The contract runs on :class:`SQLiteOrderStore` always, and on :class:`CassandraOrderStore` where
``CASSANDRA_HOSTS`` names a cluster (``host[:port]``, comma-separated; no Cassandra server can be
installed on the project's machines, so CI runs SQLite only)::

    CASSANDRA_HOSTS=10.0.0.5,10.0.0.6 CASSANDRA_KEYSPACE=exfab_test .venv/bin/pytest tests/test_orderstore.py

Without ``CASSANDRA_KEYSPACE`` the suite makes a keyspace ``exfab_test_<random>`` and drops it
after; with it, it makes what is missing, empties its tables before each test (so its name must
contain ``test``), and leaves it.  Tests whose name starts with ``test_cassandra_`` need no server:
they check the CQL and the write path against a stand-in session.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric import cassandra_store, orderstore
from fabric.cassandra_store import CassandraOrderStore, init_schema
from fabric.orderstore import OrderStore, SQLiteOrderStore, StoreError
from fabric.records import Batch, EventRow, OrderRow, Position, TradeRow

CASSANDRA_HOSTS = os.environ.get("CASSANDRA_HOSTS", "")
HOW_TO_RUN_CASSANDRA = ("no Cassandra cluster: set CASSANDRA_HOSTS=host[:port],... (and optionally "
                        "CASSANDRA_KEYSPACE=exfab_test) to run the contract on one")

DAY = "2026-01-05"
NEXT_DAY = "2026-01-06"
T0 = int(dt.datetime(2026, 1, 5, 4, 30, tzinfo=dt.UTC).timestamp()) * 1_000_000_000  # 10:00 in Mumbai, on DAY
S = 1_000_000_000  # a second, in ns


# -- rows -------------------------------------------------------------------

def order(oid: str, *, broker: str = "B1", day: str = DAY, state: str = "new", seq: int = 1, first_seq: int = 1,
          ts: int = T0, shard: int = 0, **terms: Any) -> OrderRow:
    """An order of 10 TCS at 3500.00 as it stands after its message ``seq`` (at ``ts``)."""
    qty = terms.pop("qty", 10)
    cum = terms.pop("cum_qty", {"filled": qty, "partially_filled": 4}.get(state, 0))
    leaves = qty - cum if state in ("new", "partially_filled") else 0
    fields: dict[str, Any] = dict(side="buy", type="limit", price="3500.00", tif="GTC", cum_qty=cum, leaves_qty=leaves,
                                  notional=str(3500 * cum) if cum else "0", avg_px="3500.00" if cum else None)
    if state == "rejected":
        fields = dict(side=None, type=None, price=None, tif=None, cum_qty=0, leaves_qty=0, notional="0", avg_px=None,
                      reason="price_out_of_band")
    fields.update(terms)
    return OrderRow(day=day, broker=broker, oid=oid, shard=shard, symbol="TCS", qty=qty, state=state,
                    first_seq=first_seq, last_seq=seq, created_ts=T0 + first_seq, updated_ts=ts, **fields)


def event(oid: str, seq: int, kind: str = "accepted", *, broker: str = "B1", day: str = DAY,
          shard: int = 0) -> EventRow:
    return EventRow(day=day, broker=broker, oid=oid, shard=shard, seq=seq, kind=kind, ts=T0 + seq,
                    body=b"\x81\xa2op\xa3new" + seq.to_bytes(4, "big"))


def trade(seq: int, *, symbol: str = "TCS", day: str = DAY, trade_id: int | None = None) -> TradeRow:
    return TradeRow(day=day, symbol=symbol, shard=0, seq=seq, trade_id=trade_id or seq, price="3500.00", qty=4,
                    aggressor="sell", buy_broker="B1", buy_oid="o1", sell_broker="B2", sell_oid="o9", ts=T0 + seq)


def sample_batch() -> Batch:
    """Two brokers' orders (one partly filled), their events and a trade, out of order, and the positions."""
    return Batch(
        orders=[order("o2", seq=5, first_seq=5, ts=T0 + 5), order("o1", state="partially_filled", seq=7, ts=T0 + 7),
                order("o1", broker="B2", seq=6, first_seq=6, ts=T0 + 6)],
        events=[event("o1", 7, "fill"), event("o2", 5), event("o1", 1), event("o1", 6, broker="B2")],
        trades=[trade(8, trade_id=2), trade(3, trade_id=1)],
        positions=[Position(0, "X0", 7, 7), Position(0, "TTCS", 2, 8)])


def contents(store: OrderStore, batch: Batch) -> dict[str, Any]:
    """Everything the store answers about the rows of ``batch``."""
    keys = {(r.broker, r.day) for r in batch.orders} | {(e.broker, e.day) for e in batch.events}
    return {
        "orders": {k: store.orders(*k) for k in sorted(keys)},
        "events": {(e.broker, e.oid, e.day): store.events(e.broker, e.oid, e.day) for e in batch.events},
        "trades": {(t.symbol, t.day): store.trades(t.symbol, t.day) for t in batch.trades},
        "open": store.open_orders(),
        "recent": store.recent_orders(0),
        "positions": by_topic(store.positions()),
    }


def by_topic(positions: list[Position]) -> list[Position]:
    return sorted(positions, key=lambda p: (p.shard, p.topic))


# -- the stores ---------------------------------------------------------------

def cassandra_endpoints() -> tuple[list[str], int]:
    """Return the hosts and the port CASSANDRA_HOSTS names (every host's port, when given, the same)."""
    hosts, ports = [], set()
    for item in CASSANDRA_HOSTS.split(","):
        host, _, port = item.strip().partition(":")
        hosts.append(host)
        ports.add(int(port or 9042))
    if len(ports) != 1:
        pytest.fail(f"CASSANDRA_HOSTS={CASSANDRA_HOSTS}: the driver takes one port for every host")
    return hosts, ports.pop()


def run_cql(hosts: list[str], port: int, statements: list[str]) -> None:
    cluster, session = cassandra_store._connect(hosts, port, None, "ONE")
    try:
        for cql in statements:
            session.execute(cql, timeout=60)
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def cassandra_keyspace() -> Iterator[tuple[list[str], int, str]]:
    """A keyspace with the store's tables: CASSANDRA_KEYSPACE, or a fresh one dropped after."""
    hosts, port = cassandra_endpoints()
    given = os.environ.get("CASSANDRA_KEYSPACE")
    if given is not None and "test" not in given.lower():
        pytest.fail(f"CASSANDRA_KEYSPACE={given}: the tests empty its tables; give a keyspace whose name has 'test'")
    keyspace = given or f"exfab_test_{secrets.token_hex(4)}"
    init_schema(hosts, keyspace, port=port)
    try:
        yield hosts, port, keyspace
    finally:
        if given is None:
            run_cql(hosts, port, [f"DROP KEYSPACE IF EXISTS {quoted(keyspace)}"])


def quoted(keyspace: str) -> str:
    from cassandra.metadata import protect_name  # type: ignore[import-untyped]

    return protect_name(keyspace)


def make_sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> OrderStore:
    return SQLiteOrderStore(tmp_path / "orders.sqlite3")


def make_cassandra(request: pytest.FixtureRequest, tmp_path: Path) -> OrderStore:
    hosts, port, keyspace = request.getfixturevalue("cassandra_keyspace")
    run_cql(hosts, port, [f"TRUNCATE {quoted(keyspace)}.{t}" for t in cassandra_store.TABLES])
    return CassandraOrderStore(hosts, keyspace, port=port)


STORES: dict[str, Callable[[pytest.FixtureRequest, Path], OrderStore]] = {
    "sqlite": make_sqlite, "cassandra": make_cassandra}


@pytest.fixture(params=[
    pytest.param("sqlite"),
    pytest.param("cassandra", marks=[pytest.mark.server("cassandra"),
                                     pytest.mark.skipif(not CASSANDRA_HOSTS, reason=HOW_TO_RUN_CASSANDRA)]),
])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OrderStore]:
    s = STORES[request.param](request, tmp_path)
    try:
        yield s
    finally:
        s.close()


# -- the contract -------------------------------------------------------------

def test_empty_store_returns_nothing(store: OrderStore) -> None:
    assert store.positions() == []
    assert store.open_orders() == []
    assert store.order("B1", "o1") is None
    assert store.order("B1", "o1", DAY) is None
    assert store.orders("B1", DAY) == []
    assert store.events("B1", "o1", DAY) == []
    assert store.trades("TCS", DAY) == []
    assert store.recent_orders(0) == []


def test_written_batch_reads_back(store: OrderStore) -> None:
    b = sample_batch()
    store.write(b)
    o2, o1, b2_o1 = b.orders
    assert store.order("B1", "o1", DAY) == o1
    assert store.order("B1", "o1") == o1
    assert store.order("B2", "o1") == b2_o1
    assert store.order("B1", "o1", NEXT_DAY) is None
    assert store.orders("B1", DAY) == [o1, o2]  # by client order id
    assert store.orders("B2", DAY) == [b2_o1]
    assert store.events("B1", "o1", DAY) == [event("o1", 1), event("o1", 7, "fill")]  # in the order published
    assert store.events("B2", "o1", DAY) == [event("o1", 6, broker="B2")]
    assert store.trades("TCS", DAY) == [trade(3, trade_id=1), trade(8, trade_id=2)]  # in the order made
    assert store.trades("INFY", DAY) == []
    assert by_topic(store.positions()) == by_topic(b.positions)


def test_order_without_day_is_the_latest_day_it_was_used(store: OrderStore) -> None:
    first, second = order("o1", seq=3), order("o1", day=NEXT_DAY, seq=2, ts=T0 + 86_400 * S)
    store.write(Batch(orders=[second]))
    store.write(Batch(orders=[first]))
    assert store.order("B1", "o1") == second
    assert store.order("B1", "o1", DAY) == first


def test_positions_move_with_each_write(store: OrderStore) -> None:
    store.write(Batch(positions=[Position(0, "X0", 1, 1), Position(1, "X1", 5, 5)]))
    store.write(Batch(positions=[Position(0, "X0", 9, 12)]))
    assert by_topic(store.positions()) == [Position(0, "X0", 9, 12), Position(1, "X1", 5, 5)]


def test_batch_written_twice_leaves_the_rows_as_written_once(store: OrderStore) -> None:
    b = sample_batch()
    store.write(b)
    once = contents(store, b)
    store.write(b)
    assert contents(store, b) == once
    assert sum(len(v) for v in once["orders"].values()) == 3
    assert sum(len(v) for v in once["events"].values()) == 4
    assert len(once["trades"][("TCS", DAY)]) == 2


def test_older_order_row_written_after_a_newer_changes_nothing(store: OrderStore) -> None:
    # A replay after a restart can send an order's earlier state again (SQLite: the upsert's WHERE; Cassandra:
    # the rows' write timestamp is their last_seq).
    filled = order("o1", state="filled", seq=9, ts=T0 + 9)
    store.write(Batch(orders=[filled]))
    store.write(Batch(orders=[order("o1", state="partially_filled", seq=7, ts=T0 + 7)]))
    store.write(Batch(orders=[order("o1", seq=1, ts=T0 + 1)]))
    assert store.order("B1", "o1") == filled
    assert store.orders("B1", DAY) == [filled]
    assert store.open_orders() == []
    assert store.recent_orders(0) == [filled]


def test_open_orders_are_new_and_partially_filled_until_finished(store: OrderStore) -> None:
    rows = [order("o1", seq=1, first_seq=1), order("o2", state="partially_filled", seq=4, first_seq=2),
            order("o3", state="filled", seq=5, first_seq=3), order("o4", state="cancelled", seq=6, first_seq=4),
            order("o5", state="rejected", seq=7, first_seq=7), order("o6", state="expired", seq=8, first_seq=8),
            order("o7", broker="B2", seq=9, first_seq=9, shard=1)]
    store.write(Batch(orders=rows))
    assert store.open_orders() == [rows[0], rows[1], rows[6]]  # by day, then first_seq
    done = order("o1", state="filled", seq=10, first_seq=1, ts=T0 + 10)
    cancelled = order("o7", broker="B2", state="cancelled", seq=11, first_seq=9, shard=1, ts=T0 + 11)
    store.write(Batch(orders=[done, cancelled]))
    assert store.open_orders() == [rows[1]]
    assert store.order("B1", "o1") == done


def test_recent_orders_are_those_changed_since_and_the_open_ones(store: OrderStore) -> None:
    old_open = order("o1", seq=1, ts=T0)
    old_done = order("o2", state="filled", seq=2, ts=T0 + 1)
    changed = order("o3", seq=3, first_seq=3, ts=T0 + 10 * S)
    tomorrow = order("o4", day=NEXT_DAY, state="cancelled", seq=4, first_seq=4, ts=T0 + 86_400 * S)
    store.write(Batch(orders=[old_open, old_done, changed, tomorrow]))
    filled = order("o3", state="filled", seq=5, first_seq=3, ts=T0 + 20 * S)  # o3 again: one row, its last state
    store.write(Batch(orders=[filled]))
    assert store.recent_orders(T0 + 5 * S) == [old_open, filled, tomorrow]  # by updated_ts
    assert store.recent_orders(T0 + 86_400 * S) == [old_open, tomorrow]
    assert store.recent_orders(T0 + 2 * 86_400 * S) == [old_open]
    assert store.recent_orders(0) == [old_open, old_done, filled, tomorrow]


def test_batch_of_thousands_of_rows_round_trips(store: OrderStore) -> None:
    orders = [order(f"o{i:03d}", state="partially_filled" if i % 2 else "filled", seq=50 * i + 49, first_seq=50 * i,
                    ts=T0 + i) for i in range(100)]
    events = [event(f"o{i // 50:03d}", i, "accepted" if i % 50 == 0 else "fill") for i in range(5_000)]
    trades = [trade(i) for i in range(1, 2_001)]
    store.write(Batch(orders=orders, events=events, trades=trades, positions=[Position(0, "X0", 5_000, 4_999)]))
    assert store.orders("B1", DAY) == orders
    assert [r.oid for r in store.open_orders()] == [r.oid for r in orders if r.open]
    assert store.events("B1", "o042", DAY) == events[2_100:2_150]
    assert sum(len(store.events("B1", r.oid, DAY)) for r in orders) == 5_000
    assert store.trades("TCS", DAY) == trades
    assert store.positions() == [Position(0, "X0", 5_000, 4_999)]


# -- SQLite only ----------------------------------------------------------------

def test_sqlite_write_while_another_connection_holds_the_lock_fails_then_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orderstore, "BUSY_TIMEOUT_MS", 50)  # read when the store opens its connection
    path = tmp_path / "orders.sqlite3"
    store = SQLiteOrderStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    b = sample_batch()
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked") as failure:
            store.write(b)
        assert str(path) in str(failure.value)
        other.execute("ROLLBACK")
        assert store.orders("B1", DAY) == [] and store.positions() == [] and store.trades("TCS", DAY) == []
        store.write(b)
        assert store.orders("B1", DAY) == [b.orders[1], b.orders[0]]
        assert by_topic(store.positions()) == by_topic(b.positions)
    finally:
        other.close()
        store.close()


def test_sqlite_readonly_store_reads_while_a_writer_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orderstore, "BUSY_TIMEOUT_MS", 50)  # a reader made to wait would fail, not just be slow
    path = tmp_path / "orders.sqlite3"
    writer = SQLiteOrderStore(path)
    reader = SQLiteOrderStore(path, readonly=True)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        writer.write(Batch(trades=[trade(1)]))
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM trades")  # a write under way, not committed
        assert reader.trades("TCS", DAY) == [trade(1)]
        other.execute("ROLLBACK")
        writer.write(Batch(trades=[trade(2)]))
        assert reader.trades("TCS", DAY) == [trade(1), trade(2)]
        with pytest.raises(StoreError, match="readonly"):
            reader.write(Batch(trades=[trade(3)]))
    finally:
        other.close()
        reader.close()
        writer.close()


# -- Cassandra, without a server --------------------------------------------------

def test_cassandra_store_module_does_not_import_the_driver() -> None:
    code = "import sys, fabric.cassandra_store, fabric.orderstore; print('cassandra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cassandra_unreachable_cluster_raises_store_error() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError, match=r"cassandra:127\.0\.0\.1/exfab: cannot connect: NoHostAvailable"):
        CassandraOrderStore(["127.0.0.1"], "exfab", port=port)
    with pytest.raises(StoreError, match="cannot connect"):
        init_schema(["127.0.0.1"], "exfab", port=port)


def _schema_tables() -> dict[str, tuple[set[str], list[str], list[str]]]:
    """Return each table's columns, partition key and clustering columns, read from the schema's CQL."""
    tables = {}
    for cql in cassandra_store.schema("exfab")[1:]:
        m = re.fullmatch(r"CREATE TABLE IF NOT EXISTS exfab\.(\w+) \((.*)PRIMARY KEY \(\((.*?)\)(.*?)\)\s*\).*", cql,
                         re.S)
        assert m, cql
        name, columns, partition, clustering = m.groups()
        tables[name] = (set(re.findall(r"(\w+) (?:text|int|bigint|blob),", columns)),
                        [c.strip() for c in partition.split(",")],
                        [c.strip() for c in clustering.split(",") if c.strip()])
    return tables


def test_cassandra_statements_name_real_columns_and_whole_partition_keys() -> None:
    tables = _schema_tables()
    assert set(tables) == set(cassandra_store.TABLES)
    for cql in cassandra_store._CQL.values():
        table = re.search(r"(?:INTO|FROM) (\w+)", cql).group(1)  # type: ignore[union-attr]
        columns, partition, clustering = tables[table]
        named = re.search(r"\((.*?)\) VALUES|SELECT (.*?) FROM", cql)
        if named:
            assert set(re.findall(r"\w+", named.group(1) or named.group(2))) <= columns, cql
        if cql.startswith("INSERT"):
            assert named
            assert set(partition + clustering) <= set(re.findall(r"\w+", named.group(1))), f"a key left out: {cql}"
            continue
        where = re.findall(r"(\w+) (=|>=)", cql.partition("WHERE")[2])
        if not where and cql.endswith("FROM open_orders"):
            continue  # the one full scan: open_orders() reads every shard's partition
        restricted = [c for c, _ in where]
        assert restricted[:len(partition)] == partition, f"not the whole partition key: {cql}"
        assert restricted[len(partition):] == clustering[:len(restricted) - len(partition)], cql
        if cql.startswith("DELETE"):
            assert restricted == partition + clustering and "USING TIMESTAMP ?" in cql, cql


class FakeFuture:
    """A request's future: its callbacks run when the session completes it."""

    def __init__(self, cql: str, params: tuple[Any, ...]) -> None:
        self.cql, self.params = cql, params
        self.error: BaseException | None = None
        self.callbacks: tuple[Callable[[Any], None], Callable[[BaseException], None]] | None = None

    def add_callbacks(self, callback: Callable[[Any], None], errback: Callable[[BaseException], None]) -> None:
        self.callbacks = (callback, errback)


class FakeSession:
    """Takes the store's statements: checks every bind marker has its value, and completes them on a thread."""

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None) -> None:
        self.sent: list[FakeFuture] = []
        self.fail_at, self.error = fail_at, error
        self.outstanding = self.most_outstanding = 0
        self.lock = threading.Lock()

    def prepare(self, cql: str) -> Any:
        return type("Prepared", (), {"cql": cql, "is_idempotent": False})()

    def execute_async(self, stmt: Any, params: tuple[Any, ...]) -> FakeFuture:
        assert len(params) == stmt.cql.count("?"), stmt.cql
        f = FakeFuture(stmt.cql, params)
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            f.error = self.error
        with self.lock:
            self.sent.append(f)
            self.outstanding += 1
            self.most_outstanding = max(self.most_outstanding, self.outstanding)
        threading.Thread(target=self.complete, args=(f,)).start()
        return f

    def complete(self, f: FakeFuture) -> None:
        time.sleep(0.001)
        while f.callbacks is None:
            time.sleep(0.0001)
        with self.lock:
            self.outstanding -= 1
        if f.error is None:
            f.callbacks[0]([])
        else:
            f.callbacks[1](f.error)


def fake_store(monkeypatch: pytest.MonkeyPatch, session: FakeSession, concurrency: int = 64) -> CassandraOrderStore:
    cluster = type("Cluster", (), {"shutdown": lambda self: None})()
    monkeypatch.setattr(cassandra_store, "_connect", lambda *args: (cluster, session))
    return CassandraOrderStore(["10.0.0.5"], "exfab", concurrency=concurrency)


def test_cassandra_write_sends_rows_then_positions_with_bounded_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    from cassandra.query import UNSET_VALUE  # type: ignore[import-untyped]

    session = FakeSession()
    store = fake_store(monkeypatch, session, concurrency=4)
    assert store.name == "cassandra:10.0.0.5/exfab"
    b = sample_batch()
    b.orders += [order("o3", state="filled", seq=9, ts=T0 + 9), order("o4", state="rejected", seq=10, ts=T0 + 10)]
    store.write(b)
    cqls = [f.cql for f in session.sent]
    assert all(c.startswith("INSERT INTO positions") for c in cqls[-2:])
    assert not any("positions" in c for c in cqls[:-2])
    assert 1 < session.most_outstanding <= 4
    by_table = [re.search(r"(?:INTO|FROM) (\w+)", c).group(1) for c in cqls]  # type: ignore[union-attr]
    assert by_table.count("orders_by_oid") == 5 and by_table.count("order_events") == 4
    assert by_table.count("open_orders") == 4  # three open orders in, the filled one out; the rejected never in
    delete = next(f for f in session.sent if f.cql.startswith("DELETE"))
    assert delete.params == (9, 0, DAY, "B1", "o3")  # at the timestamp of its last_seq
    o2 = next(f for f in session.sent if "orders_by_oid" in f.cql and f.params[2] == "o2")
    assert o2.params[-1] == 5  # the write's timestamp: the row's last_seq
    assert o2.params[cassandra_store._ORDER_COLS.index("avg_px")] is UNSET_VALUE  # None is left unset, not null


def test_cassandra_failed_row_write_raises_store_error_and_writes_no_position(monkeypatch: pytest.MonkeyPatch) -> None:
    from cassandra import WriteTimeout, WriteType  # type: ignore[import-untyped]

    timeout = WriteTimeout("Operation timed out - received only 1 responses.", write_type=WriteType.SIMPLE)
    session = FakeSession(fail_at=2, error=timeout)
    store = fake_store(monkeypatch, session, concurrency=1)
    with pytest.raises(StoreError, match=r"cassandra:10\.0\.0\.5/exfab: write: WriteTimeout: Operation timed out"):
        store.write(sample_batch())
    assert len(session.sent) == 3 and session.outstanding == 0  # none sent after the failure, none left in flight
    assert not any("positions" in f.cql for f in session.sent)
