"""``exfab up --loopback`` on ``cluster.toml``: the nodes of three hosts on this machine, on 127.0.0.1-3.

Every port of the file is moved to a free one first (the nodes' and the servers': ZooKeeper, Redis,
InfluxDB), so that the test never meets a running exchange; the hosts, the pairs and the stores are
the file's.  The launcher runs a ZooKeeper ensemble of three, Redis and (when installed) InfluxDB;
the order store falls back to SQLite (no Cassandra here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, free_port, topology_on_free_ports
from tests.servers import require_binary, require_zookeeper
from topology.load import load
from topology.servers import INFLUXD, REDIS_SERVER

pytestmark = pytest.mark.e2e

CLUSTER = ROOT / "topology" / "examples" / "cluster.toml"


def _cluster_on_free_ports(tmp_path: Path) -> Path:
    path = topology_on_free_ports(CLUSTER, tmp_path, brokers="keys")  # every node's port key; its own keys
    text = path.read_text()
    for port in ("2181", "6379", "8086"):  # the servers' ports, in [zookeeper] hosts and the urls
        text = text.replace(f":{port}", f":{free_port()}")
    path.write_text(text)
    return path


def _exfab(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def _pairs_in_sync(view: dict[str, Any]) -> bool:
    return all(s["primary"] and s["secondary"] and s["secondary"].get("in_sync") for s in view["shards"].values())


@pytest.mark.timeout(240)
def test_up_loopback_runs_every_host_of_cluster_toml_with_pairs_in_sync_and_stops_cleanly(tmp_path: Path) -> None:
    require_zookeeper()
    require_binary(REDIS_SERVER)
    src = _cluster_on_free_ports(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "up", str(src), "--loopback", "--demo", "--duration",
                             "20"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    errors: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True),  # type: ignore[arg-type]
               threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)]  # type: ignore[arg-type]
    for r in readers:
        r.start()
    copy = tmp_path / ".exfab" / "cluster" / "cluster.loopback.toml"
    view: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 240
        while not any("demo brokers trading" in line for line in lines):
            assert proc.poll() is None, "".join(lines) + "".join(errors)
            assert time.monotonic() < deadline, "the exchange did not start:\n" + "".join(lines) + "".join(errors)
            time.sleep(0.2)
        while True:  # every pair: a primary and its secondary, in sync
            r = _exfab("status", "--topology", str(copy), "--json", cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            view = json.loads(r.stdout)
            if _pairs_in_sync(view) or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert proc.wait(120) == 0, "".join(lines) + "".join(errors)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    for r in readers:
        r.join(5)
    out = " ".join("".join(lines).split())
    assert "hosts: ex-a.internal -> 127.0.0.1, ex-b.internal -> 127.0.0.2, ex-c.internal -> 127.0.0.3" in out
    assert '[stores] orders = "cassandra" -> "sqlite"' in out
    topo = load(copy)
    assert [s.name for s in topo.shards] == ["A", "B", "C", "D"] and all(s.paired for s in topo.shards)
    assert _pairs_in_sync(view), view["shards"]
    assert {s: v["primary"]["name"] for s, v in view["shards"].items()} == {"A": "A-1", "B": "B-1", "C": "C-1",
                                                                             "D": "D-1"}
    states = {(n["kind"], n["name"]): n["state"] for n in view["nodes"]}
    assert len(states) == 13 and "not registered" not in states.values(), states
    assert {states[("matcher", f"{s}-2")] for s in "ABCD"} == {"secondary"}
    trades = [int(line.split()[0].replace(",", "")) for line in "".join(lines).splitlines() if " trades; last:" in line]
    assert trades and max(trades) > 0, "".join(lines)
    stopped = out[out.index("stopped:"):]  # (rich wraps it at 160 columns)
    servers = 3 if shutil.which(INFLUXD) else 2  # ZooKeeper, Redis, and InfluxDB when installed
    assert stopped.count("(ok)") == stopped.count("(") == 13 + servers, stopped
    assert "zookeeper (ok)" in stopped and "redis (ok)" in stopped
    # Each pair's two journals hold the same records: the secondary journaled what the primary did.
    for shard in topo.shards:
        a, b = (tmp_path / topo.journal_dir(r) / f"{shard.name}.journal" for r in shard.replicas)
        assert a.read_bytes() == b.read_bytes(), shard.name
