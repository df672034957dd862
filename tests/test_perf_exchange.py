"""`exfab perf` drives the real exchange and reports beside the floor (no timing thresholds here)."""

from __future__ import annotations

import json
import os
import pstats
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from topology.load import load

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "topology" / "examples" / "local.toml"
# The smallest run that still measures everything: 500 commands open loop, half a second pipelined.
SMOKE = ["--rate", "500", "--duration", "1", "--warmup", "0.2", "--drain", "1", "--throughput-duration", "0.5"]


def _perf(*options: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "perf", *options, "--json", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_exfab_perf_exchange_short_run_reports_ack_fill_floor_and_cpu_per_command(tmp_path: Path) -> None:
    res = _perf(*SMOKE, "--out", str(tmp_path))
    for key in ("ack_p50_us", "ack_p99_us", "throughput_per_s", "floor_p50_us", "floor_p99_us",
                "floor_throughput_per_s"):
        assert res[key] is not None and res[key] > 0, key
    assert res["ack_p50_us"] <= res["ack_p99_us"]
    assert (tmp_path / "report.json").exists() and (tmp_path / "latency.png").exists()
    # CPU per command of the matchers and of the gateways over the pipelined run, beside the target.
    for kind in ("matcher", "gateway"):
        assert res[f"{kind}_cpu_us_per_cmd"] is not None and res[f"{kind}_cpu_us_per_cmd"] > 0, kind
        assert res[f"{kind}_cpu_vs_target"] == round(res[f"{kind}_cpu_us_per_cmd"] / res["cpu_target_us_per_cmd"], 2)
    assert res["cpu_target_us_per_cmd"] == 15 and res["fsync"] == "batch"
    doc = json.loads((tmp_path / "report.json").read_text())
    topo = load(LOCAL)
    exchange = doc["throughput"][-1]
    assert exchange["target"] == "exchange"
    assert set(exchange["node_cpu_s"]) >= {f"matcher:{r.name}" for s in topo.shards for r in s.replicas} | {
        f"gateway:{g.name}" for g in topo.gateways}
    assert doc["cpu_us_per_cmd"]["matcher_cpu_us_per_cmd"] == res["matcher_cpu_us_per_cmd"]
    assert "## CPU per message of the node processes" in (tmp_path / "report.md").read_text()


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_exfab_perf_profile_short_run_writes_a_profile_per_node(tmp_path: Path) -> None:
    prof_dir = tmp_path / "profiles"
    res = _perf(*SMOKE, "--throughput-duration", "0", "--out", str(tmp_path / "report"), "--profile", str(prof_dir))
    topo = load(LOCAL)
    nodes = [f"matcher-{r.name}" for s in topo.shards for r in s.replicas] + [f"gateway-{g.name}" for g in
                                                                                topo.gateways]
    for node in nodes:  # written when the launcher stopped the node with SIGTERM
        stats = pstats.Stats(str(prof_dir / f"{node}.prof"))
        assert stats.total_calls > 0, node  # type: ignore[attr-defined]
        assert (prof_dir / f"{node}.txt").read_text().startswith(f"{node}: ")
    assert sorted(res["profiles"]) == sorted(str((prof_dir / f"{n}.prof").resolve()) for n in nodes)
    assert res["profile_dir"] == str(prof_dir.resolve())
    md = (tmp_path / "report" / "report.md").read_text()
    assert "**Profiled**" in md and "## Where the time goes: the nodes' profiles" in md
