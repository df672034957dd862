"""The command line against a running exchange: exfab order, exfab orders, exfab up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import topology_on_free_ports
from topology.launcher import Launcher

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "topology" / "examples" / "local.toml"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    tmp = tmp_path_factory.mktemp("cli")
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp), workdir=tmp)
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()


def exfab(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_order_json_prints_reports_named_as_replay_events(exchange: Launcher) -> None:
    topo = str(exchange.path)
    sym = exchange.topo.shards[0].symbols[2]
    inst = exchange.topo.instrument(sym)
    px = inst.to_price((inst.band_lo or 0) + 300)
    rest = exfab("order", "buy", sym, "10", "@", px, "--broker", "CB1", "--json", "--topology", topo)
    assert rest.returncode == 0, rest.stderr
    events = _json_lines(rest.stdout)
    assert [e["event"] for e in events] == ["accepted", "status"]
    assert events[0]["price"] == px and events[0]["qty"] == 10 and events[1]["state"] == "new"
    oid = events[0]["oid"]

    hit = exfab("order", "sell", sym, "4", px, "--tif", "IOC", "--broker", "CB2", "--json", "--topology", topo)
    events = _json_lines(hit.stdout)
    assert [e["event"] for e in events] == ["accepted", "trade", "status"]
    assert (events[1]["price"], events[1]["qty"], events[1]["aggressor"]) == (px, 4, True)

    listed = exfab("orders", "--broker", "CB1", "--json", "--topology", topo)
    assert [(o["oid"], o["leaves_qty"]) for o in _json_lines(listed.stdout)] == [(oid, 6)]

    gone = exfab("order", "cancel", oid, "--broker", "CB1", "--json", "--topology", topo)
    events = _json_lines(gone.stdout)
    assert [e["event"] for e in events] == ["cancelled", "status"] and events[0]["qty"] == 6


def test_order_human_output_and_reject_reason(exchange: Launcher) -> None:
    sym = exchange.topo.shards[1].symbols[2]
    r = exfab("order", "buy", sym, "5", "@", "0.05", "--broker", "CB3", "--topology", str(exchange.path))
    assert r.returncode == 0
    assert "REJECTED" in r.stdout and "price_out_of_band" in r.stdout


def test_order_exchange_unreachable_exit_status_2(tmp_path: Path) -> None:
    topo = topology_on_free_ports(LOCAL, tmp_path)  # nothing runs on these ports
    r = exfab("order", "buy", "TCS", "1", "@", "3500", "--broker", "CB4", "--topology", str(topo))
    assert r.returncode == 2 and "cannot reach the exchange" in r.stderr


@pytest.mark.timeout(180)
def test_up_demo_runs_a_moving_market_and_stops_cleanly(tmp_path: Path) -> None:
    topo = topology_on_free_ports(LOCAL, tmp_path)
    r = exfab("up", str(topo), "--demo", "--duration", "10", cwd=tmp_path, timeout=170)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo brokers trading" in r.stdout
    trades = [int(line.split()[0].replace(",", "")) for line in r.stdout.splitlines() if line.endswith("trades;")
              or " trades; last:" in line]
    assert trades and max(trades) > 0
    assert "stopped:" in r.stdout and "(ok)" in r.stdout
