"""A topology of several hosts mapped onto this machine's loopback addresses (``exfab up --loopback``)."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tools import up
from topology.load import load, loads
from topology.loopback import assign, dumps, foreign_hosts, is_this_machine, map_topology, server_here
from topology.ports import free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "topology" / "examples"
CLUSTER = EXAMPLES / "cluster.toml"
LOCAL = EXAMPLES / "local.toml"


def _every_server_here(server: str, table: dict[str, Any]) -> str | None:
    return None


def _no_server_here(server: str, table: dict[str, Any]) -> str | None:
    return f"no {server} here"


def test_cluster_hosts_map_to_loopback_addresses_in_order_of_first_appearance() -> None:
    c = map_topology(CLUSTER, can_run=_every_server_here)
    assert c.hosts == {"ex-a.internal": "127.0.0.1", "ex-b.internal": "127.0.0.2", "ex-c.internal": "127.0.0.3"}
    t = c.topology
    assert {r.name: r.host for s in t.shards for r in s.replicas} == {
        "A-1": "127.0.0.1", "A-2": "127.0.0.2", "B-1": "127.0.0.2", "B-2": "127.0.0.3",
        "C-1": "127.0.0.3", "C-2": "127.0.0.1", "D-1": "127.0.0.1", "D-2": "127.0.0.3"}
    assert [(g.name, g.host) for g in t.gateways] == [("gw1", "127.0.0.1"), ("gw2", "127.0.0.2")]
    assert [(k.name, k.host) for k in t.tickers] == [("ticker", "127.0.0.3"), ("ticker-b", "127.0.0.1")]
    assert t.persistence is not None and t.persistence.host == "127.0.0.3"
    assert t.zookeeper is not None and t.zookeeper.hosts == ("127.0.0.1:2181", "127.0.0.2:2181", "127.0.0.3:2181")
    assert t.zookeeper.root == "/exfab/cluster"
    assert t.redis is not None and t.redis.url == "redis://127.0.0.3:6379/0"
    assert t.cassandra is not None and t.cassandra.hosts == ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert t.influxdb is not None and t.influxdb.url == "http://127.0.0.3:8086"
    assert (t.stores.recent, t.stores.orders, t.stores.history) == ("redis", "cassandra", "influxdb")
    assert c.fallbacks == ()


def test_every_node_keeps_its_ports_and_binds_its_own_address() -> None:
    original = load(CLUSTER)
    t = map_topology(CLUSTER, can_run=_every_server_here).topology
    assert [(p.node.name, p.role, p.port) for p in t.all_ports()] == [
        (p.node.name, p.role, p.port) for p in original.all_ports()]
    binds = []
    for s in t.shards:
        for r in s.replicas:
            binds += [e.bind for e in (r.order, r.pub, r.recovery, r.repl) if e is not None]
    binds += [g.endpoint.bind for g in t.gateways] + [e.bind for k in t.tickers for e in (k.pub, k.snapshot)]
    assert not any("*" in b for b in binds)
    assert len(set(binds)) == len(binds), "two nodes would bind the same address and port"
    assert "tcp://127.0.0.2:7110" in binds and "tcp://127.0.0.1:7110" in binds  # the pair of shard A, one port
    assert [k.http_host for k in t.tickers] == ["127.0.0.3", "127.0.0.1"]  # both pages on port 7181
    assert [k.http_host for k in original.tickers] == [None, None]  # every interface of each host


def test_an_absolute_data_dir_moves_under_the_working_directory() -> None:
    c = map_topology(CLUSTER, can_run=_every_server_here)
    assert c.data_dir == ("/var/lib/exfab/cluster", ".exfab/cluster")
    assert c.topology.data_dir == Path(".exfab/cluster")
    assert c.path == Path(".exfab/cluster/cluster.loopback.toml")
    assert "data_dir: /var/lib/exfab/cluster -> .exfab/cluster (relative: under the working directory)" in c.notes()


def test_stores_this_machine_cannot_run_fall_back_to_the_embedded_ones_and_say_so() -> None:
    c = map_topology(CLUSTER, can_run=_no_server_here)
    t = c.topology
    assert (t.stores.recent, t.stores.orders, t.stores.history) == ("embedded", "sqlite", "sqlite")
    assert t.redis is None and t.cassandra is None and t.influxdb is None
    assert [(f.store, f.was, f.now, f.why) for f in c.fallbacks] == [
        ("recent", "redis", "embedded", "no redis here"), ("orders", "cassandra", "sqlite", "no cassandra here"),
        ("history", "influxdb", "sqlite", "no influxdb here")]
    notes = c.notes()
    assert '[stores] orders = "cassandra" -> "sqlite" (.exfab/cluster/orders.sqlite3): no cassandra here' in notes
    assert '[stores] history = "influxdb" -> "sqlite" (.exfab/cluster/history.sqlite3): no influxdb here' in notes
    assert ('[stores] recent = "redis" -> "embedded" (the persistence node\'s memory): no redis here') in notes
    assert '# [stores] orders = "cassandra" -> "sqlite": no cassandra here' in c.text


def test_a_loopback_host_keeps_its_address_and_the_others_take_the_next_free_ones() -> None:
    assert assign(["ex-a", "127.0.0.1", "ex-b", "ex-a", "localhost", "127.0.0.3", "ex-c"]) == {
        "ex-a": "127.0.0.2", "127.0.0.1": "127.0.0.1", "ex-b": "127.0.0.4", "localhost": "localhost",
        "127.0.0.3": "127.0.0.3", "ex-c": "127.0.0.5"}


def test_a_topology_on_loopback_already_maps_no_host(tmp_path: Path) -> None:
    c = map_topology(LOCAL, can_run=_every_server_here)
    assert c.hosts == {} and c.data_dir is None and c.fallbacks == ()
    assert c.notes()[0] == "hosts: every host is a loopback address already; none mapped"
    assert c.topology.all_ports() == load(LOCAL).all_ports()


def test_server_urls_keep_their_user_password_port_and_path(tmp_path: Path) -> None:
    src = tmp_path / "t.toml"
    src.write_text(LOCAL.read_text().replace('recent = "embedded"', 'recent = "redis"').replace(
        'history = "sqlite"', 'history = "influxdb"') + '\n[redis]\nurl = "redis://:secret@cache.internal:6380/2"\n'
        '[influxdb]\nurl = "http://tsdb.internal"\ndatabase = "ticks"\n')
    t = map_topology(src, can_run=_every_server_here).topology
    assert t.redis is not None and t.redis.url == "redis://:secret@127.0.0.2:6380/2"
    assert t.influxdb is not None and t.influxdb.url == "http://127.0.0.3"


def test_the_copy_is_written_in_the_data_folder_never_over_the_original(tmp_path: Path) -> None:
    before = CLUSTER.read_text()
    c = map_topology(CLUSTER, can_run=_every_server_here)
    path = c.write(tmp_path)
    assert path == tmp_path / ".exfab" / "cluster" / "cluster.loopback.toml"
    assert load(path) == loads(c.text, path)
    assert CLUSTER.read_text() == before
    src = tmp_path / "t.toml"  # a data_dir of "." puts the copy beside the original, under another name
    src.write_text(LOCAL.read_text().replace('data_dir = ".exfab/local"', 'data_dir = "."'))
    assert map_topology(src, can_run=_every_server_here).write(tmp_path) == tmp_path / "t.loopback.toml"


@pytest.mark.parametrize("path", [LOCAL, CLUSTER], ids=["local", "cluster"])
def test_dumps_reads_back_to_the_same_document(path: Path) -> None:
    data = tomllib.loads(path.read_text())
    assert tomllib.loads(dumps(data)) == data
    odd = {"a": {"b c": ["x\"y", 'tab\tnew\nline'], "n": 1.5, "t": True, "sub": {"k": -3}},
           "arr": [{"x": 1, "inner": [{"y": "é"}]}, {"x": 2}]}
    assert tomllib.loads(dumps(odd)) == odd


def test_foreign_hosts_are_the_node_hosts_this_machine_is_not() -> None:
    assert foreign_hosts(load(LOCAL)) == []
    assert foreign_hosts(load(CLUSTER)) == ["ex-a.internal", "ex-b.internal", "ex-c.internal"]
    assert is_this_machine("127.0.0.5") and is_this_machine("localhost")
    assert not is_this_machine("ex-a.internal")


def test_a_server_that_cannot_be_had_here_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    why = server_here("cassandra", {"hosts": ["127.0.0.2"], "port": port})
    assert why == f"no Cassandra answers at 127.0.0.2:{port}, and exfab up runs none"
    monkeypatch.setattr("topology.loopback.shutil.which", lambda name: None)
    assert server_here("redis", {"url": f"redis://127.0.0.2:{port}/0"}) == (
        f"redis-server is not installed and nothing answers at redis://127.0.0.2:{port}/0")
    assert server_here("influxdb", {"url": f"http://127.0.0.2:{port}"}) == (
        f"influxd (InfluxDB 1.x) is not installed and nothing answers at http://127.0.0.2:{port}")
    monkeypatch.setattr("topology.loopback.shutil.which", lambda name: f"/usr/bin/{name}")
    assert server_here("redis", {"url": f"redis://127.0.0.2:{port}/0"}) is None
    assert server_here("influxdb", {"url": f"http://127.0.0.2:{port}"}) is None


def test_up_refuses_a_topology_of_other_hosts_without_loopback() -> None:
    out = io.StringIO()
    assert up.run(str(CLUSTER), out=out) == 2
    text = " ".join(out.getvalue().split())
    assert "are on ex-a.internal, ex-b.internal, ex-c.internal, not this machine" in text
    assert f"exfab up --loopback {CLUSTER}" in text
