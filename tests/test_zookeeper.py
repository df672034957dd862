"""ZooKeeper, real: the server the tests and ``exfab up`` run, the node registry, ``exfab status``.

Every test here runs Debian's ZooKeeper 3.8 (``tests/servers.py``); without
``java`` or its jar they are skipped (failed in CI).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from tests.helpers import LOCAL, ROOT, topology_on_free_ports
from tests.servers import ZooKeeperServer, require_zookeeper, start_zookeeper, start_zookeeper_ensemble
from tools import status_cmd
from tools.up import status_table
from topology.launcher import Launcher, LaunchError, local_zookeeper
from topology.load import load
from topology.model import Topology
from topology.ports import free_port
from topology.registry import Registration, registered
from topology.servers import ZooKeeperEnsemble, four_letter, zookeeper_answers
from topology.zk import dump, paths


def _wait(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return value


def _with_zookeeper(path: Path, hosts: str) -> Path:
    """Add ``[zookeeper] hosts`` (comma-separated ``host:port``) to a topology file; return its path."""
    listed = ", ".join(f'"{h}"' for h in hosts.split(","))
    path.write_text(path.read_text() + f"\n[zookeeper]\nhosts = [{listed}]\n")
    return path


def _topology(tmp_path: Path, hosts: str) -> Topology:
    return load(_with_zookeeper(topology_on_free_ports(LOCAL, tmp_path), hosts))


def _client(hosts: str) -> KazooClient:
    zk = KazooClient(hosts=hosts, timeout=4.0, connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0})
    zk.start(timeout=10)
    return zk


def _znode(zk: KazooClient, path: str) -> tuple[dict[str, Any], Any] | None:
    stat = zk.exists(path)
    if stat is None:
        return None
    data, stat = zk.get(path)
    return json.loads(data), stat


def _data(zk: KazooClient, path: str) -> dict[str, Any]:
    z = _znode(zk, path)
    return {} if z is None else z[0]


def exfab(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """One standalone ZooKeeper for the tests that do not stop it."""
    server = start_zookeeper(tmp_path_factory.mktemp("zookeeper"))
    try:
        yield server
    finally:
        server.stop()


# The server.


def test_zookeeper_server_starts_stops_and_restarts_with_its_data(tmp_path: Path) -> None:
    server = start_zookeeper(tmp_path / "zk")
    try:
        assert server.running and server.mode() == "standalone" and zookeeper_answers("127.0.0.1", server.port)
        assert server.ready_after is not None and server.ready_after < 20
        assert four_letter("127.0.0.1", server.port, "ruok") == "imok"
        assert "maxSessionTimeout=20000" in server.config.read_text(), "a session of 4 s is allowed"
        zk = _client(server.hosts)
        try:
            zk.create("/kept", b"1")
            session = zk.client_id
            assert server.stop() == 0, "the JVM's exit on SIGTERM counts as a clean stop"
            assert not server.running and four_letter("127.0.0.1", server.port, "srvr") is None
            server.start()
            assert server.running and server.mode() == "standalone"
            assert zk.get("/kept")[0] == b"1", "its data survives a restart"
            assert zk.client_id == session, "and so do its sessions"
        finally:
            zk.stop()
            zk.close()
        log = server.log_path.read_text()
        assert server.log_path == tmp_path / "zk" / "zookeeper.log" and "binding to port" in log, log[-2000:]
    finally:
        server.stop()
    assert server.pid is None


def test_zookeeper_ensemble_serves_with_a_majority(tmp_path: Path) -> None:
    ensemble = start_zookeeper_ensemble(tmp_path / "zk", 3)
    try:
        modes = [s.mode() for s in ensemble.servers]
        assert sorted(str(m) for m in modes) == ["follower", "follower", "leader"], modes
        zk = _client(ensemble.hosts)
        try:
            zk.create("/x", b"1")
            leader = next(s for s in ensemble.servers if s.mode() == "leader")
            leader.kill()
            _wait(lambda: sorted(str(s.mode()) for s in ensemble.servers if s is not leader) == ["follower", "leader"],
                  "the two left elect a leader")
            assert zk.get("/x")[0] == b"1"
            ensemble.start()  # the killed one again
            assert ensemble.running and all(s.mode() in ("leader", "follower") for s in ensemble.servers)
        finally:
            zk.stop()
            zk.close()
    finally:
        assert ensemble.stop() == 0
    assert not ensemble.running


# The registry.


def test_registration_creates_updates_and_removes_its_znode(zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    topo = _topology(tmp_path, zookeeper.hosts)
    path = paths(topo).node("persistence", "persistence")
    zk = _client(zookeeper.hosts)
    try:
        before = int(time.time())
        reg = Registration(topo, "persistence", "persistence", "127.0.0.1", state="catching_up", written=0)
        assert reg.path == path and reg.enabled
        data, stat = _wait(lambda: _znode(zk, path), "registered")
        assert data == {"kind": "persistence", "name": "persistence", "host": "127.0.0.1", "pid": os.getpid(),
                        "state": "catching_up", "started": data["started"], "written": 0}
        assert before <= data["started"] <= time.time()
        assert stat.ephemeralOwner == reg.client.client_id[0], "ephemeral, of the registration's session"

        reg.update("running", written=5000, alert=None)
        _wait(lambda: _data(zk, path).get("state") == "running", "updated")
        assert _data(zk, path)["written"] == 5000
        [entry] = registered(zk, topo)
        assert entry["name"] == "persistence" and entry["written"] == 5000 and entry["session"].startswith("0x")
        reg.close()
        assert zk.exists(path) is None, "gone at once on close"
        reg.update("running", written=1)  # after close: nothing, no error
    finally:
        zk.stop()
        zk.close()


def test_registration_without_zookeeper_does_nothing() -> None:
    reg = Registration(load(LOCAL), "gateway", "gw1", "127.0.0.1")
    assert not reg.enabled and reg.path is None and reg.client is None
    reg.update("running", sessions=3)
    assert reg.data["state"] == "running" and reg.data["sessions"] == 3
    reg.close()


def test_registration_outlives_a_zookeeper_restart(tmp_path: Path) -> None:
    server = start_zookeeper(tmp_path / "zk")
    topo = _topology(tmp_path, server.hosts)
    reg = Registration(topo, "gateway", "gw1", "127.0.0.1", state="running", sessions=0)
    try:
        path = reg.path
        assert path is not None
        _wait(lambda: reg.client.exists(path), "registered")
        server.stop()
        reg.update(sessions=7)  # while ZooKeeper is down: written once it is back
        server.start()
        zk = _client(server.hosts)
        try:
            _wait(lambda: _data(zk, path).get("sessions") == 7, "the update made while it was down")
            assert zk.exists(path).ephemeralOwner == reg.client.client_id[0], "the same session, kept"
        finally:
            zk.stop()
            zk.close()
    finally:
        reg.close()
        server.stop()


def test_registration_registers_again_after_its_session_is_lost(zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    topo = _topology(tmp_path, zookeeper.hosts)
    reg = Registration(topo, "ticker", "ticker", "127.0.0.1", state="running")
    zk = _client(zookeeper.hosts)
    try:
        path = reg.path
        assert path is not None
        _wait(lambda: _znode(zk, path), "registered")
        old = reg.client.client_id
        reg.update(trades=3)
        # The session ends as it would after a partition longer than its timeout: another client takes it over
        # and closes it (kazoo's own tests expire sessions so). Its ephemeral znode goes with it.
        thief = KazooClient(hosts=zookeeper.hosts, client_id=old, timeout=4.0)
        thief.start(timeout=10)
        thief.stop()
        thief.close()
        _wait(lambda: reg.client.client_id and reg.client.client_id[0] != old[0], "a new session")
        data, stat = _wait(lambda: _znode(zk, path), "registered again")
        assert stat.ephemeralOwner == reg.client.client_id[0] and data["trades"] == 3 and data["pid"] == os.getpid()
    finally:
        reg.close()
        zk.stop()
        zk.close()


def test_registration_takes_over_the_znode_of_a_previous_run(zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    topo = _topology(tmp_path, zookeeper.hosts)
    path = paths(topo).node("matcher", "A")
    previous = _client(zookeeper.hosts)  # a run killed a moment ago: its session has not ended yet
    zk = _client(zookeeper.hosts)
    try:
        previous.create(path, dump({"kind": "matcher", "name": "A", "pid": 1, "state": "running"}), ephemeral=True,
                        makepath=True)
        reg = Registration(topo, "matcher", "A", "127.0.0.1", state="starting")
        try:
            data, stat = _wait(lambda: (z := _znode(zk, path)) and z[0]["pid"] == os.getpid() and z, "taken over")
            assert stat.ephemeralOwner == reg.client.client_id[0] and data["state"] == "starting"
        finally:
            reg.close()
        assert zk.exists(path) is None
    finally:
        previous.stop()
        previous.close()
        zk.stop()
        zk.close()


def test_registration_shares_a_node_s_client(zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    topo = _topology(tmp_path, zookeeper.hosts)
    mine = _client(zookeeper.hosts)
    try:
        reg = Registration(topo, "matcher", "B", "127.0.0.1", zk=mine, state="primary", epoch=4)
        assert reg.client is mine
        data, stat = _wait(lambda: _znode(mine, reg.path or ""), "registered")
        assert stat.ephemeralOwner == mine.client_id[0] and data["epoch"] == 4
        reg.close()
        assert mine.connected and mine.exists(reg.path or "") is None, "its znode removed; the client left running"
    finally:
        mine.stop()
        mine.close()


# exfab status.


def _hand_written_cluster(zk: KazooClient, topo: Topology) -> None:
    """Shard A: primary A at epoch 3 from seq 1201 with secondary X in sync; shard B: nothing yet."""
    where = paths(topo)
    zk.create(where.epoch("A"), dump({"epoch": 3, "primary": "A", "from_seq": 1201}), makepath=True)  # as elected
    zk.create(where.primary("A"), dump({"name": "A", "epoch": 3, "from_seq": 1201, "order": "tcp://127.0.0.1:1"}),
              ephemeral=True, makepath=True)
    zk.create(where.secondary("A"), dump({"name": "X", "in_sync": True, "lag": 0}), ephemeral=True, makepath=True)


def test_status_json_shows_the_shards_and_the_registered_nodes(zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    hosts = zookeeper.hosts
    path = _with_zookeeper(topology_on_free_ports(LOCAL, tmp_path), hosts)
    path.write_text(path.read_text() + 'root = "/exfab/status-test"\n')
    topo = load(path)
    zk = _client(hosts)
    reg = Registration(topo, "persistence", "persistence", "127.0.0.1", state="running", written=42, pending=0,
                       alert=None)
    try:
        _hand_written_cluster(zk, topo)
        _wait(lambda: zk.exists(reg.path or ""), "registered")
        r = exfab("status", "--json", "--topology", str(path))
        assert r.returncode == 0, r.stderr
        view = json.loads(r.stdout)
        assert view["topology"] == "local"
        assert view["zookeeper"] == {"hosts": [hosts], "root": "/exfab/status-test"}
        assert view["shards"]["A"]["primary"] == {"name": "A", "epoch": 3, "from_seq": 1201,
                                                  "order": "tcp://127.0.0.1:1"}
        assert view["shards"]["A"]["epoch"] == 3
        assert view["shards"]["A"]["secondary"] == {"name": "X", "in_sync": True, "lag": 0}
        assert view["shards"]["B"] == {"symbols": list(topo.shard("B").symbols), "matchers": ["B"], "paired": False,
                                       "primary": None, "epoch": None, "secondary": None}
        nodes = {(n["kind"], n["name"]): n for n in view["nodes"]}
        p = nodes.pop(("persistence", "persistence"))
        assert (p["host"], p["pid"], p["state"], p["written"], p["pending"], p["alert"]) == (
            "127.0.0.1", os.getpid(), "running", 42, 0, None)
        assert set(nodes) == {(n.kind, n.name) for n in topo.nodes()} - {("persistence", "persistence")}
        assert all(n["state"] == "not registered" and n["pid"] is None for n in nodes.values())

        out = io.StringIO()
        assert status_cmd.status(str(path), out=out) == 0
        text = out.getvalue()
        row = next(line for line in text.splitlines() if line.startswith("│ A "))
        assert [c.strip() for c in row.split("│")[1:-1]] == ["A", "A", "A", "3", "1,201", "X", "yes", "0"], text
        row = next(line for line in text.splitlines() if line.startswith("│ B "))
        assert [c.strip() for c in row.split("│")[1:-1]][:4] == ["B", "B", "B (single)", "-"], text
        row = next(line for line in text.splitlines() if "│ persistence " in line)
        assert str(os.getpid()) in row and "running" in row and "written=42" in row and "alert=-" in row, text
    finally:
        reg.close()
        zk.delete("/exfab/status-test", recursive=True)
        zk.stop()
        zk.close()


def test_status_exits_3_when_zookeeper_does_not_answer(tmp_path: Path) -> None:
    path = _with_zookeeper(topology_on_free_ports(LOCAL, tmp_path), f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    r = exfab("status", "--topology", str(path), "--timeout", "1")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "ZooKeeper at 127.0.0.1:" in r.stderr and "did not answer within 1 s" in r.stderr
    assert "Traceback" not in r.stderr and "Connection refused" not in r.stderr, r.stderr
    assert time.monotonic() - started < 30
    r = exfab("status", "--topology", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read the file" in r.stderr, r.stderr


def test_status_without_zookeeper_shows_which_ports_listen(tmp_path: Path) -> None:
    topo = load(topology_on_free_ports(LOCAL, tmp_path))
    gw1 = topo.gateway("gw1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", gw1.port))
        s.listen()
        out, err = io.StringIO(), io.StringIO()
        assert status_cmd.status(str(topo.source), as_json=True, out=out, err=err) == 0
    view = json.loads(out.getvalue())
    assert view["zookeeper"] is None and view["shards"]["A"]["primary"] == {"name": "A"}
    states = {n["name"]: n["state"] for n in view["nodes"]}
    assert states == {"A": "not listening", "B": "not listening", "persistence": "unknown",
                      "ticker": "not listening", "gw1": "listening", "gw2": "not listening"}
    out = io.StringIO()
    assert status_cmd.status(str(topo.source), out=out, err=err) == 0
    assert "has no [zookeeper]" in err.getvalue() and "no ZooKeeper" in out.getvalue()


# The launcher.


@pytest.mark.e2e
def test_launcher_runs_a_local_zookeeper_and_the_persistence_node_registers(tmp_path: Path) -> None:
    require_zookeeper()
    port = free_port()
    path = _with_zookeeper(topology_on_free_ports(LOCAL, tmp_path), f"127.0.0.1:{port}")
    ex = Launcher(path, workdir=tmp_path, kinds=("matcher", "persistence"))
    assert local_zookeeper(ex.topo) == [("127.0.0.1", port)]
    ex.start()
    try:
        ensemble = ex.zookeeper
        assert ensemble is not None and ensemble.running and zookeeper_answers("127.0.0.1", port)
        [server] = ensemble.servers
        assert server.root == tmp_path / ".exfab" / "local" / "zookeeper"
        assert server.log_path == tmp_path / ".exfab" / "local" / "logs" / "zookeeper.log"
        table = _render(status_table(ex))
        assert any(line.split("│")[1].strip() == "zookeeper" and str(server.pid) in line
                   and f"127.0.0.1:{port} (root /exfab/local)" in line for line in table.splitlines() if "│" in line)

        persistence = ex.node("persistence", "persistence")
        zk = _client(f"127.0.0.1:{port}")
        try:
            node_path = paths(ex.topo).node("persistence", "persistence")
            data, _ = _wait(lambda: (z := _znode(zk, node_path)) and z[0]["state"] == "running" and z,
                            "the persistence node registers, and is running once synced")
            assert data["pid"] == persistence.proc.pid and data["host"] == "127.0.0.1"
            assert {"written", "pending", "alert"} <= set(data), data
        finally:
            zk.stop()
            zk.close()
        r = exfab("status", "--json", "--topology", str(ex.path), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        nodes = {n["name"]: n for n in json.loads(r.stdout)["nodes"]}
        assert nodes["persistence"]["pid"] == persistence.proc.pid and nodes["persistence"]["state"] == "running"
    finally:
        codes = ex.stop()
    assert list(codes)[-1] == "zookeeper" and set(codes.values()) == {0}, codes
    assert ex.zookeeper is None and not zookeeper_answers("127.0.0.1", port)
    assert (tmp_path / ".exfab" / "local" / "zookeeper" / "data" / "version-2").is_dir(), "its data is kept"


def test_launcher_leaves_a_running_zookeeper_alone(zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    ex = Launcher(_with_zookeeper(topology_on_free_ports(LOCAL, tmp_path), zookeeper.hosts), workdir=tmp_path)
    assert ex.start_zookeeper() is None and ex.zookeeper is None
    assert "running already: used as it is" in _render(status_table(ex))
    assert ex.stop() == {} and zookeeper.running


def test_launcher_runs_an_ensemble_for_several_loopback_hosts(tmp_path: Path) -> None:
    require_zookeeper()
    port = free_port()
    hosts = ",".join(f"127.0.0.{i}:{port}" for i in (1, 2, 3))
    ex = Launcher(_with_zookeeper(topology_on_free_ports(LOCAL, tmp_path), hosts), workdir=tmp_path)
    try:
        ensemble = ex.start_zookeeper()
        assert isinstance(ensemble, ZooKeeperEnsemble) and ensemble.hosts == hosts
        assert sorted(str(s.mode()) for s in ensemble.servers) == ["follower", "follower", "leader"]
        assert [s.root for s in ensemble.servers] == [tmp_path / ".exfab" / "local" / "zookeeper" / str(i)
                                                      for i in (1, 2, 3)]
        assert (ensemble.servers[1].data_dir / "myid").read_text() == "2\n"
        table = _render(status_table(ex))
        assert all(f"zookeeper:{i}" in table for i in (1, 2, 3)), table
        ensemble.servers[0].kill()
        assert ex.start_zookeeper() is ensemble and ensemble.running, "a dead server of its own is started again"
    finally:
        codes = ex.stop()
    assert codes == {"zookeeper": 0}


def test_launcher_refuses_a_partly_running_ensemble(zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    hosts = f"{zookeeper.hosts},127.0.0.2:{free_port()}"
    ex = Launcher(_with_zookeeper(topology_on_free_ports(LOCAL, tmp_path), hosts), workdir=tmp_path)
    with pytest.raises(LaunchError, match=r"answers on 127\.0\.0\.1:\d+ but does not serve on all of them"):
        ex.start_zookeeper()


def test_launcher_without_java_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _with_zookeeper(topology_on_free_ports(LOCAL, tmp_path), f"localhost:{free_port()}")
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    ex = Launcher(path, workdir=tmp_path)
    with pytest.raises(LaunchError, match=r"java is not installed: install ZooKeeper \(Debian: apt-get install "
                                          r"zookeeper\), or point \[zookeeper\] hosts at a running ensemble"):
        ex.start()
    assert ex.nodes == [] and ex.zookeeper is None


def test_local_zookeeper_is_only_one_of_loopback_hosts(tmp_path: Path) -> None:
    def at(hosts: str) -> list[tuple[str, int]] | None:
        return local_zookeeper(_topology(tmp_path, hosts))

    assert at("127.0.0.1:2181") == [("127.0.0.1", 2181)]
    assert at("localhost") == [("localhost", 2181)]
    assert at("[::1]:2182,127.0.0.2:2181") == [("::1", 2182), ("127.0.0.2", 2181)]
    assert at("127.0.0.1:2181,zk.example.internal:2181") is None
    assert local_zookeeper(load(LOCAL)) is None


def _render(table: Any) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=400).print(table)
    return buf.getvalue()
