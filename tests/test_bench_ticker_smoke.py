"""The ticker benchmark runs end to end (``--quick``) and reports every figure (no timing thresholds here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e


def test_bench_ticker_quick_run_reports_all_keys(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "perf.bench_ticker", "--quick", "--json", "--out-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"bench_ticker-quick.{ext}").stat().st_size > 0, ext
    res = json.loads((tmp_path / "bench_ticker-quick.json").read_text())

    # --json: standard output is one JSON object, the headline figures first, then everything the report holds.
    out = json.loads(proc.stdout)
    assert list(out)[:2] == ["process_trades_per_s", "fanout_1000_p99_ms"]
    assert out["process_trades_per_s"] == res["throughput"]["end_to_end"]["trades_per_s"] > 0
    assert out["fanout_1000_p99_ms"] is None, "a quick run has 20 clients, not 1,000"
    assert out["fanout_clients"] == 20 and out["fanout_p99_ms"] > 0 and out["fanout_pairs_missing"] is not None
    assert out["targets"]["process_trades_per_s"] == 100_000 and out["targets"]["fanout_1000_p99_ms"] == 250
    assert out["targets"]["fanout_met"] is None and isinstance(out["targets"]["process_met"], bool)
    assert out["headline"] == res["headline"] and out["fanout"] == res["fanout"]
    assert "## Targets" in (tmp_path / "bench_ticker-quick.md").read_text()

    tp = res["throughput"]
    assert tp["stream"]["trades"] >= 3000
    assert tp["decode_floor"]["trades_per_s"] > 0
    assert {(r["turn"], r["history"]) for r in tp["inprocess"]} == {
        ("frames", "sqlite"), ("batch", "sqlite"), ("frames", "none"), ("batch", "none")}
    for r in tp["inprocess"]:
        for key in ("trades_per_s", "messages_per_s", "loop_s", "drain_s", "vs_floor", "replays", "complete"):
            assert key in r, key
        assert r["trades"] > 0
    assert tp["profiles"] and all(p["rows"] for p in tp["profiles"])
    e2e = tp["end_to_end"]
    assert e2e["trades"] > 0 and e2e["trades_per_s"] > 0 and e2e["subscriptions"] and "cpu_cores" in e2e

    lat = res["latency"]
    assert lat["trades"] > 0
    for path in ("sub", "ws"):
        assert lat[path]["n"] > 0
        assert lat[path]["p50_us"] <= lat[path]["p99_us"] <= lat[path]["max_us"]
    assert set(lat["ratio_ws_vs_sub"]) == {"p50_us", "p90_us", "p99_us", "max_us"}

    fan = res["fanout"]
    assert (fan["baseline"]["clients"], fan["clients"]["clients"]) == (1, 20)
    for r in fan.values():
        assert r["pairs_delivered"] > 0 and r["batch"] is True
        for key in ("all_pairs", "slowest_client_per_trade"):
            assert r[key]["p50_us"] <= r[key]["p99_us"]
        assert r["ws_messages_per_s"] > 0 and "ticker_cores" in r["cpu"]
        assert r["ws_objects_per_s"] >= r["ws_messages_per_s"], "batches carry one object or more"


def test_reports_go_to_an_ignored_working_folder_unless_told_where() -> None:
    from perf.bench_ticker import DEFAULT_OUT

    assert not DEFAULT_OUT.is_absolute() and DEFAULT_OUT.parts[:2] == (".exfab", "perf")
    ignored = subprocess.run(["git", "check-ignore", "-q", str(DEFAULT_OUT / "bench_ticker.json")], cwd=ROOT)
    assert ignored.returncode == 0, f"{DEFAULT_OUT} is not ignored by git: the benchmark would dirty the checkout"
