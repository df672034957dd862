"""The soak and dead-shard benchmarks run end to end on a tiny scale and write reports that hold their figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
def test_soak_short_run_reports_every_nodes_rss(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    proc = subprocess.run([sys.executable, "perf/soak.py", "--rate", "100", "--duration", "3", "--sample", "1",
                           "--ring-mb", "8", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "soak.json").read_text())
    nodes = {r["node"] for r in report["nodes"]}
    assert {"matcher-A", "matcher-B", "gateway-gw1", "gateway-gw2", "ticker-ticker"} <= nodes
    assert all(r["end_mb"] > 10 and r["peak_mb"] >= r["end_mb"] for r in report["nodes"])
    assert report["commands_sent"] > 100 and report["ring_mb"] == 8
    assert (out / "soak.md").read_text().startswith("# Memory under a steady flow")


@pytest.mark.timeout(180)
def test_dead_shard_short_run_reports_both_phases(tmp_path: Path) -> None:
    out = tmp_path / "dead"
    proc = subprocess.run([sys.executable, "perf/dead_shard.py", "--orders", "200", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "dead_shard.json").read_text())
    for phase in ("running", "stopped"):
        assert 0 < report[phase]["p50_us"] <= report[phase]["p99_us"] <= report[phase]["p999_us"]
    assert set(report["ratio"]) == {"p50_us", "p99_us", "p999_us"}


@pytest.mark.timeout(180)
def test_security_soak_short_run_answers_every_good_order_and_reports_the_hostile_input(tmp_path: Path) -> None:
    out = tmp_path / "soak-security"
    proc = subprocess.run([sys.executable, "perf/soak_security.py", "--minutes", "0.2", "--rate", "100",
                           "--bad-rate", "40", "--sample", "2", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "soak_security.json").read_text())
    assert report["ok"] and not report["deaths"]
    assert {r["node"] for r in report["nodes"]} >= {"matcher-A", "matcher-B", "gateway-gw1", "gateway-gw2",
                                                     "ticker-ticker", "persistence-persistence"}
    assert all(r["alive"] and r["end_mb"] > 10 for r in report["nodes"])
    good = report["good"]
    assert sum(good["sent"].values()) > 500 and good["sent"] == good["answered"] and good["unanswered"] == 0
    assert set(report["bad"]["sent"]) >= {"garbage", "bad_field", "stranger", "oversized", "flood"}
    reasons = report["bad"]["answers_by_reason"]
    assert {"malformed", "message_too_large", "bad_field"} <= set(reasons), reasons
    # Strangers have no key: CURVE turns them away before the gateway reads a byte, so none is told not_logged_on.
    assert "not_logged_on" not in reasons, reasons
    assert report["undecodable_answers"] == 0
    assert (out / "soak_security.md").read_text().startswith("# Hostile input under a steady flow")
