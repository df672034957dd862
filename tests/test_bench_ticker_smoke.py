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
    proc = subprocess.run([sys.executable, "-m", "perf.bench_ticker", "--quick", "--out-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"bench_ticker-quick.{ext}").stat().st_size > 0, ext
    res = json.loads((tmp_path / "bench_ticker-quick.json").read_text())

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
        assert r["pairs_delivered"] > 0
        for key in ("all_pairs", "slowest_client_per_trade"):
            assert r[key]["p50_us"] <= r[key]["p99_us"]
        assert r["ws_messages_per_s"] > 0 and "ticker_cores" in r["cpu"]
