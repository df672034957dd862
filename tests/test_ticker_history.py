"""Price history through the ticker: bars and ticks reach the store and are still served after a restart.

Run with the embedded SQLite store and with a real influxd (started on free ports; a missing binary fails
the test when ``CI`` is set).  The restart is a new trading day: the matchers' journals are removed, so the
bars ``/history`` serves afterwards can only come from the store.
"""

from __future__ import annotations

import io
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.helpers import LOCAL, free_port, topology_on_free_ports
from tests.servers import InfluxServer, require_binary, start_influxd
from tests.test_ticker import _trade_flow, exact_json
from tools.up import status_table
from topology.launcher import Launcher, LaunchError, local_influxdb
from topology.model import TICKER
from topology.servers import INFLUXD, influxdb_answers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = start_influxd(tmp_path_factory.mktemp("influxd"))
    try:
        yield server
    finally:
        server.stop()


def _topology(tmp_path: Path, store: str, influx: InfluxServer | None) -> Path:
    path = topology_on_free_ports(LOCAL, tmp_path)
    if store == "influxdb":
        assert influx is not None
        text = path.read_text().replace('history = "sqlite"', 'history = "influxdb"')
        text += f'\n[influxdb]\nurl = "{influx.url}"\ndatabase = "exfab_{tmp_path.name[-20:].replace("-", "_")}"\n'
        path.write_text(text)
    return path


def _get(url: str) -> Any:
    # Every answer is checked for the exact text of its times (docs/market-data.md, section 2).
    with urllib.request.urlopen(url, timeout=10) as r:
        return exact_json(r.read())


@pytest.mark.parametrize("store", ["sqlite", pytest.param("influxdb", marks=pytest.mark.server("influxdb"))])
def test_history_survives_a_restart_of_everything(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    influx = request.getfixturevalue("influxd") if store == "influxdb" else None
    topo_path = _topology(tmp_path, store, influx)
    ex = Launcher(topo_path, workdir=tmp_path)
    ex.start()
    try:
        assert ex.topo.ticker is not None
        base = ex.topo.ticker.http_url
        sym = ex.topo.shards[0].symbols[0]
        trades = _trade_flow(ex, [sym], 20)
        volume = sum(q for _, q in trades[sym])
        deadline = time.monotonic() + 15
        while _get(f"{base}snapshot?symbol={sym}")["quote"]["volume"] != volume:
            assert time.monotonic() < deadline, "the ticker did not see every trade"
            time.sleep(0.1)
        live_1s = _get(f"{base}history?symbol={sym}&interval=1s")["bars"]
        live_1m = _get(f"{base}history?symbol={sym}&interval=1m")["bars"]
        assert sum(b["volume"] for b in live_1s) == volume and sum(b["volume"] for b in live_1m) == volume
    finally:
        codes = ex.stop()  # SIGTERM: the ticker flushes its history writer before it exits
    assert codes.get("ticker:ticker") == 0, codes

    # A new day: the journals are gone, so the matchers start empty and the ticker rebuilds nothing.
    for journal in tmp_path.rglob("*.journal"):
        journal.unlink()
    ex = Launcher(topo_path, workdir=tmp_path)
    ex.start()
    try:
        assert ex.topo.ticker is not None
        base = ex.topo.ticker.http_url
        assert _get(f"{base}snapshot?symbol={sym}")["quote"]["volume"] == 0, "a new day starts empty"
        assert _get(f"{base}history?symbol={sym}&interval=1s")["bars"] == live_1s
        assert _get(f"{base}history?symbol={sym}&interval=1m")["bars"] == live_1m
        five = _get(f"{base}history?symbol={sym}&interval=5m")["bars"]
        assert sum(b["volume"] for b in five) == volume
        ex.kill(TICKER, TICKER)
        ex.start_node(TICKER, TICKER)
        assert _get(f"{base}history?symbol={sym}&interval=1m")["bars"] == live_1m
    finally:
        ex.stop()
    if influx is None:
        assert (tmp_path / ".exfab").exists() and any(tmp_path.rglob("history.sqlite3"))
    shutil.rmtree(tmp_path / ".exfab", ignore_errors=True)


# The launcher and a local InfluxDB (exfab up runs one for a history at a loopback url).


def _with_influxdb(tmp_path: Path, url: str) -> Path:
    path = topology_on_free_ports(LOCAL, tmp_path)
    text = path.read_text().replace('history = "sqlite"', 'history = "influxdb"')
    path.write_text(text + f'\n[influxdb]\nurl = "{url}"\ndatabase = "exfab"\n')
    return path


@pytest.mark.server("influxdb")
def test_launcher_runs_a_local_influxdb_for_the_history_and_stops_it(tmp_path: Path) -> None:
    require_binary(INFLUXD)
    port = free_port("127.0.0.2")
    url = f"http://127.0.0.2:{port}"
    ex = Launcher(_with_influxdb(tmp_path, url), workdir=tmp_path)
    server = ex.start_influxdb()
    try:
        assert server is not None and server is ex.influxdb and server.running and influxdb_answers(url)
        assert server.root == tmp_path / ".exfab" / "local" / "influxdb"
        assert server.log_path == tmp_path / ".exfab" / "local" / "logs" / "influxdb.log"
        assert ex.start_influxdb() is server, "started once"
        out = io.StringIO()
        Console(file=out, width=200).print(status_table(ex))
        row = next(line for line in out.getvalue().splitlines() if line.startswith("│ influxdb "))
        assert str(server.pid) in row and f"{url} (database exfab)" in row, row
    finally:
        codes = ex.stop()
    assert codes == {"influxdb": 0} and ex.influxdb is None and not influxdb_answers(url)


def test_launcher_without_influxd_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = Launcher(_with_influxdb(tmp_path, f"http://localhost:{free_port()}"), workdir=tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no influxd on it
    with pytest.raises(LaunchError, match=r"influxd is not installed: install InfluxDB 1.x \(Debian: apt-get install "
                                          r"influxdb\), point \[influxdb\] url at a running one"):
        ex.start()
    assert ex.nodes == [] and ex.influxdb is None


def test_launcher_runs_no_influxdb_for_another_machine_or_another_store(tmp_path: Path) -> None:
    def at(path: Path) -> tuple[str, int] | None:
        return local_influxdb(Launcher(path, workdir=tmp_path).topo)

    assert at(_with_influxdb(tmp_path, "http://tsdb.internal:8086")) is None
    assert at(topology_on_free_ports(LOCAL, tmp_path)) is None  # history = "sqlite"
    assert at(_with_influxdb(tmp_path, "http://127.0.0.3")) == ("127.0.0.3", 8086)
