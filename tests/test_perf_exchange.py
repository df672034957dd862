"""`exfab perf` drives the real exchange and reports beside the floor (no timing thresholds here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_exfab_perf_exchange_short_run_reports_ack_fill_and_floor(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "perf", "--rate", "500", "--duration", "1",
                           "--warmup", "0.2", "--drain", "1", "--throughput-duration", "0.5", "--json", "--quiet",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("ack_p50_us", "ack_p99_us", "throughput_per_s", "floor_p50_us", "floor_p99_us",
                "floor_throughput_per_s"):
        assert res[key] is not None and res[key] > 0, key
    assert res["ack_p50_us"] <= res["ack_p99_us"]
    assert (tmp_path / "report.json").exists() and (tmp_path / "latency.png").exists()
