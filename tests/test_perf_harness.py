"""Smoke tests of the latency harness, the floor and the report (no timing thresholds)."""

from __future__ import annotations

import json
import multiprocessing
import os
import pstats
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nodes.profiling import ENV_DIR, profiled, top_functions
from perf.floor import Floor, FloorConfig, connect_client, make_order, order_seq
from perf.harness import (
    CPU_TARGET_US_PER_CMD,
    LoadDriver,
    PipelinedResult,
    RunResult,
    Target,
    cpu_us_per_msg,
    node_cpu_s,
    process_cpu_s,
    write_report,
)
from perf.latency import DEFAULT_OUT, build_parser, cpu_figures, main, report_dir

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


# A child that reports, burns CPU until its own clock says `BURN_S` more, reports again, and waits for its stdin.
BURN_S = 0.5
_BURNER = f"""
import sys, time
print("started", flush=True)
sys.stdin.readline()
until = time.process_time() + {BURN_S}
while time.process_time() < until:
    pass
print("burnt", flush=True)
sys.stdin.readline()
"""


def test_process_cpu_s_child_burning_half_a_second_reads_about_that() -> None:
    child = subprocess.Popen([sys.executable, "-c", _BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "started"
        before = process_cpu_s(child.pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "burnt"
        after = process_cpu_s(child.pid)
        assert before is not None and after is not None
        # CPU time, not wall time: a busy machine delays the child but does not change what it burnt. Linux counts
        # it in 10 ms ticks, hence the margins.
        assert 0.0 <= before < 1.0  # the interpreter's start-up
        assert BURN_S - 0.05 <= after - before <= BURN_S + 0.5
        assert node_cpu_s({"matcher:child": child.pid, "gateway:gone": 2**22 + 1}) == {"matcher:child": after}
    finally:
        child.stdin.close()
        child.wait(10)
    assert process_cpu_s(child.pid) is None  # reaped: nothing to read


def test_cpu_us_per_msg_processes_of_one_kind_are_summed() -> None:
    cpu = {"matcher:A": 0.3, "matcher:B": 0.1, "gateway:gw1": 0.15, "gateway:gw2": 0.05, "ticker:ticker": 0.02}
    assert cpu_us_per_msg(cpu, 10_000) == {"matcher": 40.0, "gateway": 20.0, "ticker": 2.0}
    assert cpu_us_per_msg(cpu, 0) == {}


def test_cpu_figures_pipelined_result_gives_both_keys_against_the_target() -> None:
    piped = PipelinedResult("exchange", "", 5_000.0, 10_000, 2.0, 1_000,
                            node_cpu_us_per_msg={"matcher": 2 * CPU_TARGET_US_PER_CMD, "gateway": 7.5, "ticker": 1.0})
    floor = PipelinedResult("floor", "batched", 60_000.0, 120_000, 2.0, 1_000,
                            node_cpu_us_per_msg={"matcher": 0.7, "gateway": 6.6})
    figures = cpu_figures(piped, floor)
    assert figures["matcher_cpu_us_per_cmd"] == 2 * CPU_TARGET_US_PER_CMD
    assert figures["gateway_cpu_us_per_cmd"] == 7.5
    assert figures["matcher_cpu_vs_target"] == 2.0
    assert figures["gateway_cpu_vs_target"] == round(7.5 / CPU_TARGET_US_PER_CMD, 2)
    assert figures["cpu_target_us_per_cmd"] == CPU_TARGET_US_PER_CMD
    assert figures["floor_matcher_cpu_us_per_msg"] == 0.7
    none = cpu_figures(None, None)
    assert none["matcher_cpu_us_per_cmd"] is None and none["gateway_cpu_vs_target"] is None


class NodeEchoTarget(EchoTarget):
    """EchoTarget whose "matcher" node is the test process itself."""

    def node_pids(self) -> dict[str, int]:
        return {"matcher:self": os.getpid()}


def test_driver_target_with_node_pids_reports_cpu_per_message(tmp_path: Path) -> None:
    driver = LoadDriver(NodeEchoTarget(), progress=False)
    run = driver.run(5_000, 0.2)
    piped = driver.pipelined(0.2, window=10, warmup=0.0)
    assert set(run.node_cpu_s) == {"matcher:self"} and run.node_cpu_s["matcher:self"] >= 0
    assert set(run.to_dict()["node_cpu_us_per_msg"]) == {"matcher"}
    assert set(piped.node_cpu_s) == {"matcher:self"}
    assert set(piped.node_cpu_us_per_msg) == {"matcher"} and piped.node_cpu_us_per_msg["matcher"] >= 0
    paths = write_report([run], tmp_path, extra={"throughput": [vars(piped)]})
    md = paths["md"].read_text()
    assert "## CPU per message of the node processes" in md
    assert "| fake | pipelined | matcher | self |" in md
    assert "matcher:self" in json.loads(paths["json"].read_text())["throughput"][0]["node_cpu_s"]
    # A target without node_pids reports none.
    plain = LoadDriver(EchoTarget(), progress=False).pipelined(0.1, window=10, warmup=0.0)
    assert plain.node_cpu_s == {} and plain.node_cpu_us_per_msg == {}


def _work(n: int) -> int:
    return sum(i * i for i in range(n))


def test_profiled_without_the_variable_profiles_nothing(tmp_path: Path) -> None:
    with profiled("matcher-A", environ={}) as path:
        _work(1_000)
    assert path is None
    assert list(tmp_path.iterdir()) == []


def test_profiled_with_the_variable_writes_prof_and_text(tmp_path: Path) -> None:
    folder = tmp_path / "prof"
    with profiled("matcher-A", environ={ENV_DIR: str(folder)}) as path:
        _work(10_000)
    assert path == folder / "matcher-A.prof"
    assert sorted(p.name for p in folder.iterdir()) == ["matcher-A.prof", "matcher-A.txt"]
    assert any(row["function"].endswith("(_work)") for row in top_functions(path, 50))
    text = (folder / "matcher-A.txt").read_text()
    assert text.startswith("matcher-A: ") and "Top 40 by own time" in text


_NODE = """
import signal, sys, time
from nodes.profiling import profiled
stop = False
def on_signal(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
with profiled("gateway-gw9"):
    print("READY", flush=True)
    while not stop:
        time.sleep(0.01)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_profiled_node_stopped_by_signal_writes_its_profile(tmp_path: Path, sig: signal.Signals) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{ENV_DIR: str(tmp_path)})
    child = subprocess.Popen([sys.executable, "-c", _NODE], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "READY"
        child.send_signal(sig)
        assert child.wait(20) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    stats = pstats.Stats(str(tmp_path / "gateway-gw9.prof"))
    assert stats.total_calls > 0  # type: ignore[attr-defined]
    assert (tmp_path / "gateway-gw9.txt").stat().st_size > 0
