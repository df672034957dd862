"""Price history through the ticker: bars and ticks reach the store and are still served after a restart.

Run with the embedded SQLite store and with a real influxd (started on free ports; a missing binary fails
the test when ``CI`` is set).  The restart is a new trading day: the matchers' journals are removed, so the
bars ``/history`` serves afterwards can only come from the store.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import LOCAL, topology_on_free_ports
from tests.servers import InfluxServer, start_influxd
from tests.test_ticker import _trade_flow, exact_json
from topology.launcher import Launcher
from topology.model import TICKER

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
