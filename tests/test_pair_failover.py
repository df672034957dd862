"""Primary/secondary pairs over a real ZooKeeper: fail-over with nothing lost and nothing doubled.

Shard A of the local topology runs as a pair (A-1, A-2) elected through a
ZooKeeper the test starts; a broker trades on it without pause while its
primary is killed (``kill -9``); the secondary takes over, the gateways send
it what was unanswered, and the old primary, restarted, rejoins as the
secondary. At the end every order the broker was told was accepted is in the
journal exactly once, and both matchers hold the same books.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from fabric.client import BrokerClient, ExchangeUnavailable
from fabric.protocol import SnapshotReply, SnapshotRequest, decode_internal, encode
from tests.helpers import LOCAL, ROOT, dial, gateway_endpoints
from tests.servers import ZooKeeperServer, start_zookeeper
from topology.launcher import Launcher
from topology.load import load
from topology.model import GATEWAY, MATCHER
from topology.ports import pairs_on_free_ports
from topology.zk import connect, paths
from topology.zk import load as zload

pytestmark = pytest.mark.e2e

def paired_topology(tmp_path: Path, zk_hosts: str, shards: tuple[str, ...] = ("A",)) -> Path:
    """Write the local topology with ``shards`` as pairs and ``[zookeeper]``; return its path (ports free)."""
    return pairs_on_free_ports(LOCAL, tmp_path, zk_hosts, shards, brokers="open")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Launcher, ZooKeeperServer]]:
    zk = start_zookeeper(tmp_path / "zk")
    path = paired_topology(tmp_path, f"127.0.0.1:{zk.port}")
    launcher = Launcher(path, workdir=tmp_path, kinds=(MATCHER, GATEWAY), extra_args={"matcher": ["--fsync", "none"]})
    launcher.start()
    try:
        yield launcher, zk
    finally:
        launcher.stop()
        zk.stop()


def _reign(ex: Launcher, shard: str = "A") -> dict[str, Any] | None:
    zk = connect(ex.topo)
    try:
        data, _ = zk.get(paths(ex.topo).primary(shard))
        return zload(data)
    except Exception:
        return None
    finally:
        zk.stop()
        zk.close()


def _insync(ex: Launcher, shard: str = "A") -> dict[str, Any] | None:
    zk = connect(ex.topo)
    try:
        data, _ = zk.get(paths(ex.topo).shard(shard) + "/insync")
        return zload(data)
    except Exception:
        return None
    finally:
        zk.stop()
        zk.close()


def _wait(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def test_killed_primary_fails_over_and_rejoins_with_nothing_lost_or_doubled(
        pair: tuple[Launcher, ZooKeeperServer]) -> None:
    ex, _zk = pair
    _wait(lambda: _reign(ex) is not None, "a primary is elected")
    first = _reign(ex)
    assert first is not None
    secondary = "A-2" if first["name"] == "A-1" else "A-1"
    _wait(lambda: (_insync(ex) or {}).get("name") == secondary, "the secondary is in sync")
    sym = load(ex.path).shard("A").symbols[0]
    inst = ex.topo.instrument(sym)
    price = inst.to_price((inst.band_lo + inst.band_hi) // 2)  # type: ignore[operator]
    told: dict[str, str] = {}  # oid -> what the broker was told at the end (its closing state)
    client = BrokerClient(gateway_endpoints(ex), "B1", timeout=2.0)
    client.connect()
    kill_at = None
    accepted_after: float | None = None
    try:
        t_end = time.monotonic() + 12.0
        i = 0
        while time.monotonic() < t_end:
            i += 1
            side = client.buy if i % 2 else client.sell
            try:
                r = side(sym, 1, price, "GTC")
                told[r.oid] = r.state
                if kill_at is not None and accepted_after is None and r.accepted:
                    accepted_after = time.monotonic() - kill_at
            except ExchangeUnavailable:
                pass
            if kill_at is None and i == 200:
                kill_at = time.monotonic()
                ex.kill(MATCHER, first["name"])
            time.sleep(0.01)
    finally:
        client.close()
    assert kill_at is not None and accepted_after is not None, "orders were accepted after the kill"
    print(f"fail-over: first order accepted {accepted_after:.3f} s after the kill")
    second = _reign(ex)
    assert second is not None and second["name"] == secondary and second["epoch"] > first["epoch"]
    # The old primary comes back as the secondary, cuts nothing it should keep, and catches up.
    ex.start_node(MATCHER, first["name"])
    _wait(lambda: (_insync(ex) or {}).get("name") == first["name"], "the old primary rejoins in sync")
    a, b = _snapshot(ex, "A", "A-1"), _snapshot(ex, "A", "A-2")
    assert (a.seq, a.books) == (b.seq, b.books), "both matchers hold the same books"
    events = _journal(ex, "A", second["name"])
    accepted = [e["oid"] for e in events if e["event"] == "accepted"]
    assert len(accepted) == len(set(accepted)), "no order accepted twice"
    acked = {oid for oid, state in told.items() if state not in ("rejected", "unknown")}
    assert acked <= set(accepted), f"acknowledged orders missing: {sorted(acked - set(accepted))[:5]}"




class _Trader:
    """Two brokers trading without pause on the given symbols: B1 rests a buy, B2 sells into it (IOC)."""

    def __init__(self, ex: Launcher, symbols: list[str]) -> None:
        self.ex, self.symbols = ex, symbols
        self.told: dict[str, tuple[str, str]] = {}  # oid -> (symbol, closing state), for commands answered
        self.sent: set[str] = set()
        self.fills: dict[str, list[tuple[str, int, str, int]]] = {}  # B2's oid -> its fills (symbol, id, px, qty)
        self.stop = False
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        buyer = BrokerClient(gateway_endpoints(self.ex), "B1", timeout=1.0, retries=3)
        seller = BrokerClient(gateway_endpoints(self.ex), "B2", timeout=1.0, retries=3)
        buyer.connect()
        seller.connect()
        i = 0
        try:
            while not self.stop:
                sym = self.symbols[i % len(self.symbols)]
                i += 1
                inst = self.ex.topo.instrument(sym)
                price = inst.to_price((inst.band_lo + inst.band_hi) // 2)  # type: ignore[operator]
                for client, side, tif in ((buyer, "buy", "GTC"), (seller, "sell", "IOC")):
                    oid = client.next_oid()
                    self.sent.add(oid)
                    try:
                        r = (client.buy if side == "buy" else client.sell)(sym, 1, price, tif, oid=oid)
                    except ExchangeUnavailable:
                        self.errors += 1
                        continue
                    self.told[oid] = (sym, r.state)
                    if side == "sell":
                        self.fills[oid] = [(f.symbol, f.trade_id, f.price, f.last_qty) for f in r.fills]
                time.sleep(0.005)
        finally:
            buyer.close()
            seller.close()


def _journal(ex: Launcher, shard: str, replica: str) -> list[dict[str, Any]]:
    path = ex.workdir / ex.topo.journal_dir(ex.topo.shard(shard).replica(replica)) / f"{shard}.journal"
    out = subprocess.run([sys.executable, "-m", "tools.cli", "journal", "inspect", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def _check_pairs(ex: Launcher, trader: _Trader, shards: tuple[str, ...]) -> None:
    """Both matchers of each pair agree; every acknowledged order is in the journal once; fills match the trades."""
    events: list[dict[str, Any]] = []
    for shard in shards:
        reign = _reign(ex, shard)
        assert reign is not None
        other = next(r.name for r in ex.topo.shard(shard).replicas if r.name != reign["name"])
        _wait(lambda s=shard, o=other: (_insync(ex, s) or {}).get("name") == o, f"{other} in sync")
        a, b = _snapshot(ex, shard, reign["name"]), _snapshot(ex, shard, other)
        assert (a.seq, a.books) == (b.seq, b.books), f"shard {shard}: both matchers hold the same books"
        mine, theirs = _journal(ex, shard, reign["name"]), _journal(ex, shard, other)
        assert mine == theirs, f"shard {shard}: both journals replay to the same events"
        events += mine
    accepted = [e["oid"] for e in events if e["event"] == "accepted"]
    assert len(accepted) == len(set(accepted)), "no order accepted twice"
    acked = {oid for oid, (_, state) in trader.told.items() if state not in ("rejected", "unknown")}
    assert acked <= set(accepted), f"acknowledged orders missing: {sorted(acked - set(accepted))[:5]}"
    trades: dict[str, list[tuple[str, int, str, int]]] = {}
    for e in events:
        if e["event"] == "trade":
            assert e["sell_oid"] in trader.sent, "a trade no broker asked for"
            trades.setdefault(e["sell_oid"], []).append((e["symbol"], e["trade_id"], e["price"], e["qty"]))
    for oid, fills in trader.fills.items():
        assert trades.get(oid, []) == fills, (f"the seller was told of the trades of {oid} as they happened: "
                                              f"told {fills}, journal {trades.get(oid, [])}, "
                                              f"closing state {trader.told.get(oid)}")


def _snapshot(ex: Launcher, shard: str, name: str) -> SnapshotReply:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    dial(s, ex.topo.shard(shard).replica(name).recovery.connect, ex.topo)
    try:
        s.send(encode(SnapshotRequest(shard=[x.name for x in ex.topo.shards].index(shard))))
        assert s.poll(5000), f"{name} does not answer"
        reply = decode_internal(s.recv())
        assert isinstance(reply, SnapshotReply)
        return reply
    finally:
        s.close(0)


@pytest.fixture
def pairs(tmp_path: Path) -> Iterator[tuple[Launcher, ZooKeeperServer]]:
    zk = start_zookeeper(tmp_path / "zk")
    path = paired_topology(tmp_path, f"127.0.0.1:{zk.port}", ("A", "B"))
    launcher = Launcher(path, workdir=tmp_path, kinds=(MATCHER, GATEWAY), extra_args={"matcher": ["--fsync", "none"]})
    launcher.start()
    try:
        for shard in ("A", "B"):
            _wait(lambda s=shard: _reign(launcher, s) is not None, f"shard {shard} has a primary")
        yield launcher, zk
    finally:
        launcher.stop()
        zk.stop()


def test_chaos_primaries_killed_at_random_lose_and_double_nothing(pairs: tuple[Launcher, ZooKeeperServer]) -> None:
    ex, _zk = pairs
    rng = random.Random(5)
    symbols = [ex.topo.shard("A").symbols[0], ex.topo.shard("B").symbols[0]]
    trader = _Trader(ex, symbols)
    trader.thread.start()
    times = []
    try:
        for _ in range(10):
            shard = rng.choice(["A", "B"])
            reign = _reign(ex, shard)
            assert reign is not None
            other = next(r.name for r in ex.topo.shard(shard).replicas if r.name != reign["name"])
            _wait(lambda s=shard, o=other: (_insync(ex, s) or {}).get("name") == o, f"{other} in sync before the kill")
            time.sleep(rng.uniform(0.2, 1.0))
            t0 = time.monotonic()
            ex.kill(MATCHER, reign["name"])
            _wait(lambda s=shard, e=reign["epoch"]: ((_reign(ex, s) or {}).get("epoch") or 0) > e, "a new primary",
                  timeout=10)
            times.append(time.monotonic() - t0)
            ex.start_node(MATCHER, reign["name"])
    finally:
        time.sleep(1.0)
        trader.stop = True
        trader.thread.join(30)
    times.sort()
    print(f"fail-over (kill to new primary in ZooKeeper) over {len(times)} kills: min {times[0]:.2f} s, "
          f"median {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s; {len(trader.told)} commands answered, "
          f"{trader.errors} given up by the client")
    assert len(trader.told) > 200
    _check_pairs(ex, trader, ("A", "B"))


def test_primary_cut_off_stops_before_its_secondary_takes_over(pair: tuple[Launcher, ZooKeeperServer]) -> None:
    ex, _zk = pair
    first = _reign(ex)
    assert first is not None
    other = "A-2" if first["name"] == "A-1" else "A-1"
    _wait(lambda: (_insync(ex) or {}).get("name") == other, "the secondary in sync")
    symbols = [ex.topo.shard("A").symbols[0]]
    trader = _Trader(ex, symbols)
    trader.thread.start()
    node = ex.node(MATCHER, first["name"])
    try:
        time.sleep(1.0)
        node.proc.send_signal(signal.SIGSTOP)  # cut off: its ZooKeeper session ends while it cannot act
        _wait(lambda: ((_reign(ex) or {}).get("epoch") or 0) > first["epoch"], "the secondary takes over")
        time.sleep(1.0)
        node.proc.send_signal(signal.SIGCONT)  # it wakes, finds its session gone, and rejoins as the secondary
        _wait(lambda: (_insync(ex) or {}).get("name") == first["name"], "the old primary rejoins in sync", 30)
        time.sleep(1.0)
    finally:
        trader.stop = True
        trader.thread.join(30)
    log = node.log_path.read_text()
    assert "session lost" in log or "starting over" in log
    _check_pairs(ex, trader, ("A",))


def test_zookeeper_restarted_under_load_loses_and_doubles_nothing(pairs: tuple[Launcher, ZooKeeperServer]) -> None:
    ex, zk = pairs
    trader = _Trader(ex, [ex.topo.shard("A").symbols[0], ex.topo.shard("B").symbols[0]])
    trader.thread.start()
    try:
        time.sleep(1.5)
        before = len(trader.told)
        zk.stop()
        time.sleep(2.0)
        zk.start()
        time.sleep(3.0)
        after = len(trader.told)
        time.sleep(2.0)
        assert len(trader.told) > after > before, "trading goes on after ZooKeeper is back"
    finally:
        trader.stop = True
        trader.thread.join(30)
    _check_pairs(ex, trader, ("A", "B"))


def test_nodes_stop_on_sigterm_while_zookeeper_is_gone(pair: tuple[Launcher, ZooKeeperServer]) -> None:
    # With the ensemble gone, kazoo's stop() can wait for ever (a watch's read retries until a server answers,
    # and stop() joins its thread): gateways left over from a test whose ZooKeeper had stopped ignored SIGTERM.
    ex, zk = pair
    _wait(lambda: _reign(ex) is not None, "a primary")
    zk.stop()
    time.sleep(6.0)  # past the sessions' timeout: every client has seen the ensemble go
    nodes = [ex.node(GATEWAY, g.name) for g in ex.topo.gateways]
    nodes += [ex.node(MATCHER, r.name) for r in ex.topo.shard("A").replicas]
    for node in nodes:
        node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{node.kind} {node.name} did not stop on SIGTERM with ZooKeeper gone")


def test_ticker_and_persistence_follow_the_new_primary(tmp_path: Path) -> None:
    zk = start_zookeeper(tmp_path / "zk")
    path = paired_topology(tmp_path, f"127.0.0.1:{zk.port}")
    ex = Launcher(path, workdir=tmp_path, extra_args={"matcher": ["--fsync", "none"]})
    ex.start()
    try:
        _wait(lambda: _reign(ex) is not None, "a primary")
        first = _reign(ex)
        assert first is not None
        other = "A-2" if first["name"] == "A-1" else "A-1"
        _wait(lambda: (_insync(ex) or {}).get("name") == other, "the secondary in sync")
        symbols = list(ex.topo.shard("A").symbols[:2])
        trader = _Trader(ex, symbols)
        trader.thread.start()
        try:
            time.sleep(2.0)
            ex.kill(MATCHER, first["name"])
            time.sleep(4.0)
        finally:
            trader.stop = True
            trader.thread.join(30)
        events = _journal(ex, "A", other)
        want = sorted((e["symbol"], e["trade_id"], e["price"], e["qty"]) for e in events if e["event"] == "trade")
        assert want, "trades were made"

        def stored() -> list[tuple[Any, ...]]:
            import sqlite3

            db = sqlite3.connect(f"file:{tmp_path / ex.topo.sqlite_path('orders')}?mode=ro", uri=True)
            try:
                return sorted(db.execute("SELECT symbol, trade_id, price, qty FROM trades").fetchall())
            finally:
                db.close()

        _wait(lambda: stored() == want, "the order store holds the journal's trades, once each")
        base = ex.topo.ticker.http_url if ex.topo.ticker is not None else ""
        for sym in symbols:
            count = sum(1 for e in events if e["event"] == "trade" and e["symbol"] == sym)

            def ticker_trades(sym: str = sym) -> int:
                import urllib.request

                with urllib.request.urlopen(f"{base}snapshot?symbol={sym}", timeout=5) as r:
                    return int(json.loads(r.read())["quote"]["trades"])

            _wait(lambda c=count, f=ticker_trades: f() == c, f"the ticker counts {sym}'s {count} trades")
    finally:
        ex.stop()
        zk.stop()


def test_a_matcher_that_led_and_lost_cuts_only_what_its_successors_never_had(tmp_path: Path) -> None:
    zk = start_zookeeper(tmp_path / "zk")
    try:
        topo = load(paired_topology(tmp_path, f"127.0.0.1:{zk.port}"))
        shard = topo.shard("A")
        from topology.election import Seat

        one, two = Seat(topo, shard, shard.replica("A-1")), Seat(topo, shard, shard.replica("A-2"))
        try:
            assert one.cut_point() is None and one.eligible() and two.eligible(), "a shard that never had a primary"
            assert one.take_over(7).epoch == 1  # A-1 leads from seq 7 ...
            one.declare_insync("A-2", 1, 40)  # ... with A-2 in sync at seq 40
            assert two.eligible() and two.cut_point() is None
            one.declare_insync(None, 1, 45)  # A-2 falls behind: A-1 goes on alone, and only it may lead
            assert one.eligible() and not two.eligible()
            assert one.cut_point() is None, "the one that led last keeps everything"
            # A-1 dies; A-2 (in sync again, say) leads from seq 50, then again from 80 after a restart.
            one.declare_insync("A-2", 1, 49)
            assert two.take_over(50).epoch == 2 and two.take_over(80).epoch == 3
            assert one.cut_point() == 49, "A-1's records from 50 on were written after its last agreed epoch"
            assert not one.eligible()
            two.declare_insync("A-1", 3, 90)  # A-1 rejoined, cut, caught up: in sync at epoch 3
            assert one.cut_point() is None and one.eligible()
        finally:
            one.close()
            two.close()
    finally:
        zk.stop()


def test_journal_cut_at_the_cut_point_then_caught_up_equals_the_primarys(tmp_path: Path) -> None:
    from fabric.journal import Journal, read_journal

    deposed = Journal.open(tmp_path / "A1.journal", shard="A", fsync="none")
    primary = Journal.open(tmp_path / "A2.journal", shard="A", fsync="none")
    for i in range(1, 50):
        deposed.append(b"r%d" % i)
        primary.append(b"r%d" % i)
    for i in range(50, 55):
        deposed.append(b"lost%d" % i)  # journaled by the deposed primary, never replicated, never answered
    for i in range(50, 60):
        primary.append(b"new%d" % i)
    deposed.truncate(49)
    for seq, payload in primary.read_range(50, 59):
        assert deposed.append(payload) == seq
    deposed.close()
    primary.close()
    assert list(read_journal(tmp_path / "A1.journal")) == list(read_journal(tmp_path / "A2.journal"))


def test_gateway_drops_a_deposed_primarys_messages_one_by_one_even_in_a_bundle(tmp_path: Path) -> None:
    from fabric.protocol import ExCancelled, PubBundle, encode, exec_topic
    from fabric.stream import ShardStream
    from nodes.gateway import Gateway, _Lane

    def report(seq: int, epoch: int) -> bytes:
        return encode(ExCancelled(shard=0, seq=seq, tseq=seq, epoch=epoch, ts=1, broker="B1", oid=f"o{seq}",
                                  symbol="TCS", qty=1, cum_qty=0, reason="requested"))

    gw = Gateway.__new__(Gateway)  # the report path alone: no sockets
    gw.lanes = [_Lane(ShardStream(0), exec_topic(0), epoch=2, from_seq=3, primary="A-2")]
    gw.lanes[0].stream.follow(exec_topic(0))
    gw.lanes[0].stream.start(exec_topic(0), 0, 0)
    gw._pump = lambda lane: None  # type: ignore[method-assign]
    gw.on_report(0, encode(PubBundle(msgs=[report(1, 1), report(2, 1), report(3, 1)])))  # 3: the old primary's
    gw.on_report(0, report(3, 2))  # the new primary's seq 3
    assert [(tseq, body) for tseq, _b, body in gw.lanes[0].ready] == [(1, report(1, 1)), (2, report(2, 1)),
                                                                       (3, report(3, 2))]
