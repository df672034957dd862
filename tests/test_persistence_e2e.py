"""The persistence node over real processes: what the stores hold against what the matchers' journals say.

A flow of orders from the demo's brokers runs through the whole exchange
(matchers, the persistence node, the ticker, gateways); the node is killed with
``kill -9`` and restarted, its Redis is killed and restarted, its SQLite file
is locked against writes; at the end the order store's trades equal the trades
of ``exfab journal inspect`` exactly (ids, count, prices, quantities, orders),
every execution report is stored once, and the open orders the store and Redis
hold are the ones the exchange reports.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fabric.client import BrokerClient
from fabric.records import OrderRow
from tests.helpers import LOCAL, gateway_endpoints, journal_events, topology_on_free_ports
from tests.servers import RedisServer, start_redis
from tools.demo import Demo
from topology.keys import broker_keyring
from topology.launcher import Launcher

pytestmark = pytest.mark.e2e

REPORTS = ("accepted", "rejected", "cancelled", "replaced", "expired", "triggered")  # and two fills per trade


def _launch(tmp_path: Path, redis: RedisServer | None = None) -> Launcher:
    path = topology_on_free_ports(LOCAL, tmp_path, brokers="keys")  # the demo brokers log on with their keys
    if redis is not None:
        text = path.read_text().replace('recent = "embedded"', 'recent = "redis"')
        path.write_text(text + f'\n[redis]\nurl = "{redis.url}"\n')
    launcher = Launcher(path, workdir=tmp_path)
    launcher.start()
    return launcher


@pytest.fixture
def exchange_with_store(tmp_path: Path) -> Iterator[Launcher]:
    """The local topology with its persistence node (SQLite, recent state in memory), on free ports."""
    launcher = _launch(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop()


def _db(ex: Launcher) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{ex.workdir / ex.topo.sqlite_path('orders')}?mode=ro", uri=True, timeout=10)


def _stored_trades(ex: Launcher) -> list[tuple[Any, ...]]:
    with _db(ex) as db:
        return db.execute("SELECT symbol, trade_id, price, qty, buy_oid, sell_oid FROM trades "
                          "ORDER BY symbol, trade_id").fetchall()


def _journal(ex: Launcher) -> list[dict[str, Any]]:
    return [e for s in ex.topo.shards for e in journal_events(ex, s.name)]


def _journal_trades(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((e["symbol"], e["trade_id"], e["price"], e["qty"], e["buy_oid"], e["sell_oid"])
                  for e in events if e["event"] == "trade")


def _wait(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def _flow(ex: Launcher, seconds: float, rate: float = 300.0, seed: int = 7) -> tuple[Demo, threading.Thread]:
    demo = Demo(str(ex.path), brokers=6, rate=rate, seed=seed)
    t = threading.Thread(target=demo.run, args=(seconds,), daemon=True)
    t.start()
    return demo, t


def _check_against_journals(ex: Launcher) -> list[dict[str, Any]]:
    """Wait until the store holds the journals' trades, then check trades and reports: none missing, none doubled."""
    events = _journal(ex)
    want = _journal_trades(events)
    assert len(want) > 50, "the flow made trades"
    _wait(lambda: len(_stored_trades(ex)) >= len(want), f"the store holds the journals' {len(want)} trades")
    assert _stored_trades(ex) == want, "the same trades: ids, count, prices, quantities and orders"
    reports = [e for e in events if e["event"] in REPORTS]
    with _db(ex) as db:
        _wait(lambda: db.execute("SELECT count(*) FROM events").fetchone()[0] >= len(reports) + 2 * len(want),
              "every report stored")
        stored = db.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall()
    kinds: dict[str, int] = {"fill": 2 * len(want)}
    for e in reports:
        kinds[e["event"]] = kinds.get(e["event"], 0) + 1
    assert dict(stored) == kinds, "each execution report stored once"
    return events


def _orders(ex: Launcher) -> dict[tuple[str, str], OrderRow]:
    with _db(ex) as db:
        cols = list(OrderRow.__struct_fields__)
        rows = db.execute(f"SELECT {', '.join(cols)} FROM orders").fetchall()
    return {(r.broker, r.oid): r for r in (OrderRow(**dict(zip(cols, row, strict=True))) for row in rows)}


def _check_orders(ex: Launcher, events: list[dict[str, Any]]) -> dict[tuple[str, str], OrderRow]:
    """Each order's filled quantity and average price agree with its fills, and its open state with the exchange's."""
    orders = _orders(ex)
    fills: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for e in events:
        if e["event"] == "trade":
            for side in ("buy", "sell"):
                fills.setdefault((e[f"{side}_broker"], e[f"{side}_oid"]), []).append((e["price"], e["qty"]))
    accepted = {(e["broker"], e["oid"]) for e in events if e["event"] == "accepted"}
    assert accepted <= set(orders), "every accepted order is stored"
    for key, f in fills.items():
        row = orders[key]
        assert row.cum_qty == sum(q for _, q in f), key
        notional = sum((Decimal(p) * q for p, q in f), Decimal(0))
        assert Decimal(row.notional) == notional and abs(Decimal(row.avg_px) - notional / row.cum_qty) < Decimal(
            "0.000001"), key
    for b in sorted({b for b, _ in accepted}):
        client = BrokerClient(gateway_endpoints(ex), b, timeout=5.0, keys=broker_keyring(ex.topo, b))
        client.connect()
        try:
            exchange_open = {o.oid for o in client.open_orders()}
        finally:
            client.close()
        stored_open = {oid for (bb, oid), r in orders.items() if bb == b and r.open}
        assert stored_open == exchange_open, f"open orders of {b}"
    return orders


def test_a_flow_is_recorded_exactly(exchange_with_store: Launcher) -> None:
    ex = exchange_with_store
    demo, t = _flow(ex, 3.0)
    t.join(30)
    assert demo.sent > 500
    events = _check_against_journals(ex)
    _check_orders(ex, events)


def test_persistence_killed_mid_flow_resumes_with_nothing_lost_or_doubled(exchange_with_store: Launcher) -> None:
    ex = exchange_with_store
    _demo, t = _flow(ex, 6.0)
    time.sleep(2.0)
    ex.kill("persistence", "persistence")
    time.sleep(1.5)  # the flow goes on without it
    ex.start_node("persistence", "persistence")
    t.join(30)
    events = _check_against_journals(ex)
    _check_orders(ex, events)
    log = (ex.log_dir / "persistence-persistence.log").read_text()
    assert log.count("resuming after") == 2 and "resuming after 0 stored" in log  # the second start resumed


def test_locked_store_holds_its_place_and_catches_up(exchange_with_store: Launcher) -> None:
    ex = exchange_with_store
    path = ex.workdir / ex.topo.sqlite_path("orders")
    _demo, t = _flow(ex, 7.0)
    time.sleep(1.5)
    lock = sqlite3.connect(path, timeout=10, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another program holds the file: every write of the node fails
    held = lock.execute("SELECT shard, topic, tseq FROM positions ORDER BY shard, topic").fetchall()
    journal_before = len(_journal_trades(_journal(ex)))
    time.sleep(4.0)
    assert lock.execute("SELECT shard, topic, tseq FROM positions ORDER BY shard, topic").fetchall() == held
    journal_during = len(_journal_trades(_journal(ex)))
    lock.execute("ROLLBACK")
    lock.close()
    assert journal_during > journal_before, "the exchange kept trading while the store refused writes"
    t.join(30)
    events = _check_against_journals(ex)
    _check_orders(ex, events)
    log = (ex.log_dir / "persistence-persistence.log").read_text()
    assert "refuses writes" in log and "locked" in log and "written again after" in log


def test_redis_killed_and_restarted_is_repaired_from_the_order_store(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis")
    ex = _launch(tmp_path, redis)
    try:
        _demo, t = _flow(ex, 6.0)
        time.sleep(2.0)
        redis.kill()
        time.sleep(1.5)
        redis.start()  # back empty
        t.join(30)
        events = _check_against_journals(ex)
        orders = _check_orders(ex, events)
        from fabric.redis_recent import RedisRecent

        recent = RedisRecent(redis.url, prefix=f"exfab:{ex.topo.name}")
        try:
            def agrees() -> bool:
                for (b, oid), row in orders.items():
                    got = recent.order(b, oid)
                    if row.open and got != row:
                        return False
                return True

            _wait(agrees, "Redis holds every open order as the order store has it")
            for b in {b for b, _ in orders}:
                assert {r.oid for r in recent.open_orders(b)} == {oid for (bb, oid), r in orders.items()
                                                                  if bb == b and r.open}
            with _db(ex) as db:
                for (sym,) in db.execute("SELECT DISTINCT symbol FROM trades").fetchall():
                    last = db.execute("SELECT trade_id FROM trades WHERE symbol = ? ORDER BY seq DESC LIMIT 10",
                                      (sym,)).fetchall()
                    assert [r.trade_id for r in recent.last_trades(sym, 10)] == [i for (i,) in last], sym
        finally:
            recent.close()
        log = (ex.log_dir / "persistence-persistence.log").read_text()
        assert "rebuilt from" in log
    finally:
        ex.stop()
        redis.stop()


def test_status_of_an_order_the_matcher_archived_is_answered_from_the_store(tmp_path: Path) -> None:
    path = topology_on_free_ports(LOCAL, tmp_path, brokers="keys")  # the demo brokers log on with their keys
    ex = Launcher(path, workdir=tmp_path, extra_args={"matcher": ["--keep-finished", "3"]})
    ex.start()
    try:
        buyer = BrokerClient(gateway_endpoints(ex), "B1", timeout=5.0, keys=broker_keyring(ex.topo, "B1"))
        seller = BrokerClient(gateway_endpoints(ex), "B2", timeout=5.0, keys=broker_keyring(ex.topo, "B2"))
        buyer.connect()
        seller.connect()
        try:
            first = buyer.buy("TCS", 10, "3500.05")
            seller.sell("TCS", 4, "3500.05", "IOC")
            buyer.cancel(first.oid, "TCS")  # filled 4, cancelled 6: finished
            for _ in range(6):  # six more finished orders: the first is archived in the matcher
                r = buyer.buy("TCS", 1, "3500.00")
                buyer.cancel(r.oid, "TCS")
            _wait(lambda: first.oid in {oid for (_, oid) in _orders(ex)} and
                  _orders(ex)[("B1", first.oid)].state == "cancelled", "the store has the first order, cancelled")
            st = buyer.order_status(first.oid, "TCS")
            assert (st.state, st.cum_qty, st.leaves_qty, st.qty, st.reason, st.price) == (
                "cancelled", 4, 0, 10, "requested", "3500.05"), "the stored state, as the matcher had it"
            again = buyer.buy("TCS", 10, "3500.05", oid=first.oid)  # a late resend: answered, never executed
            assert again.status is not None and again.status.state == "cancelled" and not again.fills
        finally:
            buyer.close()
            seller.close()
        log = next(n for n in ex.nodes if n.kind == "gateway").log_path.read_text()
        assert "cannot be read" not in log
    finally:
        ex.stop()
