"""The order book benchmark runs end to end and reports every figure (no timing thresholds here)."""

from __future__ import annotations

from perf import bench_book


def test_bench_book_small_run_reports_all_keys() -> None:
    res = bench_book.main(["--n", "3000", "--repeat", "1", "--skip-start", "--json"])
    for key in ("batch_cmds_per_s", "per_cmd_per_s", "reference_cmds_per_s", "liquibook_cmds_per_s", "p99_us"):
        assert res[key] > 0, key
    assert res["trades"] > 0
    assert res["p50_us"] <= res["p99_us"] <= res["p999_us"]
