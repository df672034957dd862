"""The persistence benchmark runs end to end (``--quick``) and reports every figure (no timing thresholds here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e

HEADLINE = ["node_inprocess_msgs_per_s", "node_inprocess_redis_msgs_per_s", "catchup_msgs_per_s",
            "catchup_redis_msgs_per_s", "matchers_peak_msgs_per_s", "headroom_vs_matchers_peak",
            "live_published_msgs_per_s", "live_lag_msgs_at_end", "live_caught_up_s_after_end",
            "live_redis_published_msgs_per_s", "live_redis_lag_msgs_at_end", "live_redis_caught_up_s_after_end"]


def test_bench_persistence_quick_run_reports_all_keys(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "perf.bench_persistence", "--quick", "--json", "--out-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ext in ("json", "md"):
        assert (tmp_path / f"bench_persistence-quick.{ext}").stat().st_size > 0, ext
    res = json.loads((tmp_path / "bench_persistence-quick.json").read_text())
    redis = shutil.which("redis-server") is not None
    kinds = ["embedded", "redis"] if redis else ["embedded"]

    # --json: standard output is one JSON object, the headline figures first, then everything the report holds.
    out = json.loads(proc.stdout)
    assert list(out)[:len(HEADLINE)] == HEADLINE
    assert out["headline"] == res["headline"]
    assert out["node_inprocess_msgs_per_s"] > 0 and out["catchup_msgs_per_s"] > 0
    assert out["matchers_peak_msgs_per_s"] > 0 and out["headroom_vs_matchers_peak"] > 0
    assert out["live_published_msgs_per_s"] > 0 and out["live_lag_msgs_at_end"] >= 0
    assert out["live_caught_up_s_after_end"] is not None
    assert (out["node_inprocess_redis_msgs_per_s"] is not None) == redis
    assert (out["catchup_redis_msgs_per_s"] is not None) == redis
    assert "## Headline" in (tmp_path / "bench_persistence-quick.md").read_text()

    s = res["stream"]
    assert s["trades"] >= 3000 and s["messages"] == s["trades"] + s["exec_reports"] and s["msgs_per_cmd"] > 1

    st = res["stores"]
    assert st["decode"]["msgs_per_s"] > 0
    assert [r["batch"] for r in st["sizes"]] == [100, 1000, 5000]
    for r in st["sizes"]:
        assert r["rows"] == r["orders"] + r["events"] + r["trades"] + r["positions"]
        assert r["events"] + r["trades"] == st["messages"]
        for key in ("book", "book_with_bodies", "memory"):
            assert r[key]["msgs_per_s"] > 0 and r[key]["us_per_msg"] > 0, key
        for key in ("sqlite", "sqlite_floor"):
            assert r[key]["rows_per_s"] > 0 and r[key]["msgs_per_s"] > 0, key
        assert r["sqlite"]["vs_floor"] > 0 and r["sqlite"]["write_p50_ms"] <= r["sqlite"]["write_p99_ms"]
        assert r["sqlite"]["write_growth"] > 0
        if redis:
            assert r["redis"]["rows_per_s"] > 0 and r["redis_floor"]["rows_per_s"] > 0 and r["redis"]["vs_floor"] > 0
            assert r["redis_rows"] == r["orders"] + r["trades"]
        else:
            assert r["redis"] is None

    nd = res["node"]
    d = nd["demand"]
    assert d["shards"] == 2 and d["peak_msgs_per_s"] == pytest.approx(
        2 * 1e6 / d["matcher_us_per_cmd"] * d["msgs_per_cmd"])
    assert nd["model"]["sqlite_memory_msgs_per_s"] > 0
    assert ("sqlite_redis_msgs_per_s" in nd["model"]) == redis
    assert sorted(nd["node"]) == sorted(kinds) and set(nd["headroom"]) == set(kinds)
    for r in nd["inprocess"]:
        assert r["complete"] and r["written"] == st["messages"] and r["replays"] == 0 and r["missing_starts"] == 0

    pr = res["processes"]
    assert pr["published"]["trades"] == s["trades"] and pr["published"]["exec_reports"] == s["exec_reports"]
    assert [r["recent"] for r in pr["catchup"]] == kinds[::-1]  # Redis first, then the node kept for the end
    for r in pr["catchup"]:
        assert r["complete"], r
        assert (r["stored_trades"], r["stored_exec_reports"]) == (r["trades"], r["exec_reports"])
        assert r["msgs_per_s"] > 0 and r["launch_to_done_s"] >= r["resume_to_done_s"] > 0
        assert set(r["node_log"]) == {"paused", "resumed", "replays"}
    assert [r["recent"] for r in pr["live"]] == kinds[::-1]
    for r in pr["live"]:
        assert r["complete"] and r["commands_per_s"] > 0 and r["published_msgs"] > 0 and r["node_cpu_cores"] > 0
        assert r["lag_msgs_at_end"] >= 0 and r["caught_up_s_after_end"] is not None
        assert set(r["node_log"]) == {"paused", "resumed", "replays"}


def test_reports_go_to_an_ignored_working_folder_unless_told_where() -> None:
    from perf.bench_persistence import DEFAULT_OUT

    assert not DEFAULT_OUT.is_absolute() and DEFAULT_OUT.parts[:2] == (".exfab", "perf")
    ignored = subprocess.run(["git", "check-ignore", "-q", str(DEFAULT_OUT / "bench_persistence.json")], cwd=ROOT)
    assert ignored.returncode == 0, f"{DEFAULT_OUT} is not ignored by git: the benchmark would dirty the checkout"
