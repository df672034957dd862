"""Smoke tests of the latency harness, the floor and the report (no timing thresholds)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from perf.floor import Floor, FloorConfig, connect_client, make_order, order_seq
from perf.harness import LoadDriver, RunResult, Target, write_report
from perf.latency import DEFAULT_OUT, build_parser, main, report_dir

ROOT = Path(__file__).resolve().parents[1]


class EchoTarget:
    """In-process target: every message is acked at once, every even one also filled."""

    name = "fake"
    kinds: tuple[str, ...] = ("ack", "fill")

    def __init__(self) -> None:
        self.waiting: list[tuple[int, str]] = []
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def send(self, i: int) -> None:
        self.waiting.append((i, "ack"))
        if i % 2 == 0:
            self.waiting.append((i, "fill"))

    def poll(self, timeout: float) -> list[tuple[int, str]]:
        out, self.waiting = self.waiting, []
        return out

    def stop(self) -> None:
        self.stopped = True


def _ordered(summary: dict[str, float]) -> bool:
    return summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["p99.9"] <= summary["max"]


def test_driver_fake_target_counts_every_kind() -> None:
    target = EchoTarget()
    assert isinstance(target, Target)
    driver = LoadDriver(target, progress=False)
    first = driver.run(5_000, 0.2)
    second = driver.run(5_000, 0.2)
    for result in (first, second):
        assert result.sent == 1_000
        assert result.completed == {"ack": 1_000, "fill": 500}
        assert result.lost == 0 and result.stale == 0
        assert result.histograms["ack"].get_total_count() == 1_000
        assert result.histograms["fill"].get_total_count() == 500
        assert _ordered(result.percentiles("ack"))
    assert driver.next_id == 2_000  # ids never repeat across runs
    piped = driver.pipelined(0.1, window=10, warmup=0.0)
    assert piped.messages > 0 and piped.msgs_per_s > 0


def test_write_report_fake_results_writes_three_files(tmp_path: Path) -> None:
    driver = LoadDriver(EchoTarget(), progress=False)
    results: list[RunResult] = [driver.run(rate, 0.1) for rate in (1_000, 4_000)]
    paths = write_report(results, tmp_path / "r", floor=results, extra={"command": "pytest", "throughput": []})
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
    doc = json.loads(paths["json"].read_text())
    assert [r["offered_per_s"] for r in doc["runs"]] == [1_000, 4_000]
    assert set(doc["runs"][0]["latency_us"]) == {"ack", "fill"}
    assert "| fake | fill |" in paths["md"].read_text()


def test_floor_ipc_stop_leaves_no_process_or_socket() -> None:
    floor = Floor(FloorConfig(transport="ipc", batched=True))
    endpoint = floor.start()
    try:
        assert endpoint.startswith("ipc://")
        import zmq

        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = connect_client(ctx, endpoint)
        sock.send(make_order(42))
        assert sock.poll(5_000)
        assert order_seq(sock.recv()) == 42
        sock.close(0)
        ctx.term()
        assert floor.stats()["gateway"]["in"] >= 2  # the ping and the order
    finally:
        floor.stop()
    assert multiprocessing.active_children() == []
    assert not os.path.exists(endpoint.removeprefix("ipc://"))


def test_latency_cli_floor_counts_add_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "latency"
    code = main(["--rate", "2000", "--duration", "1", "--warmup", "0.2", "--throughput-duration", "0.3",
                 "--window", "100", "--out", str(out), "--json", "--quiet"])
    assert code == 0
    figures = json.loads(capsys.readouterr().out)
    for key in ("floor_p50_us", "floor_p99_us", "floor_throughput_per_s", "floor_throughput_unbatched_per_s"):
        assert key in figures and figures[key] is not None and figures[key] > 0
    assert figures["floor_p50_us"] <= figures["floor_p99_us"] <= figures["floor_max_us"]
    for name in ("report.json", "report.md", "latency.png"):
        assert (out / name).stat().st_size > 0
    doc = json.loads((out / "report.json").read_text())
    run = doc["runs"][0]
    assert run["sent"] == 2_000
    assert run["completed"]["echo"] == run["sent"]  # a slow rate loses nothing
    assert run["latency_us"]["echo"]["count"] == run["sent"]
    echo = run["latency_us"]["echo"]
    assert echo["p50"] <= echo["p99"] <= echo["max"]
    assert [t["config"] for t in doc["throughput"]] == ["unbatched", "batched (packed)"]
    assert multiprocessing.active_children() == []


def test_default_report_dir_is_an_ignored_scratch_folder_not_the_tracked_reports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracked = (ROOT / "perf" / "reports").resolve()
    for prog in ("perf/latency.py", "exfab perf"):
        args = build_parser(prog).parse_args([])
        assert args.out is None  # no --out: report_dir decides
        for cwd in (ROOT, tmp_path):
            monkeypatch.chdir(cwd)
            out = report_dir(args.out).resolve()
            assert out == (cwd / ".exfab" / "perf" / "latency").resolve()
            assert not out.is_relative_to(tracked), out
            assert report_dir(args.out, cwd=cwd) == cwd / DEFAULT_OUT
    # .exfab/ is the checkout's ignored working folder (journals, logs, and now perf reports).
    assert DEFAULT_OUT.parts[0] == ".exfab"
    assert ".exfab/" in (ROOT / ".gitignore").read_text().splitlines()


def test_report_dir_keeps_an_explicit_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert report_dir(build_parser().parse_args(["--out", str(tmp_path / "r")]).out) == tmp_path / "r"
    assert report_dir(build_parser().parse_args(["--out", "perf/reports/latency"]).out) == (
        tmp_path / "perf" / "reports" / "latency")  # relative to where it runs, as before
