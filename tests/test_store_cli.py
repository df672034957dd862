"""``exfab trades``, ``exfab order-status`` and ``exfab store init`` as a user runs them, and the launcher's Redis.

The commands run as processes against a local topology on free ports (its
persistence node writes the order store, SQLite); what they print is checked
against the matchers' journals (``exfab journal inspect``).  With the recent
state in Redis, the launcher runs the Redis a loopback URL names when none
answers there, and leaves one that answers alone.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fabric.client import BrokerClient
from tests.helpers import LOCAL, free_port, gateway_endpoints, journal_events, topology_on_free_ports
from tests.servers import require_binary, start_redis
from tests.test_cli_e2e import exfab
from tools.up import status_table
from topology.launcher import Launcher, LaunchError
from topology.servers import REDIS_SERVER, redis_answers

pytestmark = pytest.mark.e2e

ANOTHER_DAY = "2001-01-01"


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _wait(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def _px(ex: Launcher, symbol: str, ticks_from_ref: int = 0) -> str:
    inst = ex.topo.instrument(symbol)
    ref = inst.to_ticks(inst.ref_price) if inst.ref_price is not None else None
    assert ref is not None
    return inst.to_price(ref + ticks_from_ref)


def _trade_some(ex: Launcher) -> dict[str, str]:
    """Trade in both shards: B1's buy filled by two sells (partly filled), B3's buy by one (filled); return oids."""
    a, b = ex.topo.shards[0].symbols[1], ex.topo.shards[1].symbols[0]  # TCS, ITC
    with BrokerClient(gateway_endpoints(ex), "B1", timeout=5.0) as b1, \
            BrokerClient(gateway_endpoints(ex), "B2", timeout=5.0) as b2, \
            BrokerClient(gateway_endpoints(ex), "B3", timeout=5.0) as b3:
        rest = b1.buy(a, 10, _px(ex, a, 1))
        hit1 = b2.sell(a, 4, _px(ex, a, 1))
        hit2 = b2.sell(a, 3, _px(ex, a, -1))  # trades at the resting price
        other = b3.buy(b, 5, _px(ex, b))
        b2.sell(b, 5, _px(ex, b), "IOC")
    assert [len(r.fills) for r in (hit1, hit2)] == [1, 1]
    return {"rest": rest.oid, "hit1": hit1.oid, "hit2": hit2.oid, "other": other.oid}


def _journal(ex: Launcher) -> list[dict[str, Any]]:
    return [e for s in ex.topo.shards for e in journal_events(ex, s.name)]


TRADE_KEYS = ("symbol", "trade_id", "price", "qty", "aggressor", "buy_broker", "buy_oid", "sell_broker", "sell_oid")


def _journal_trades(ex: Launcher) -> list[tuple[Any, ...]]:
    return sorted(tuple(e[k] for k in TRADE_KEYS) for e in _journal(ex) if e["event"] == "trade")


def _wait_stored(ex: Launcher) -> None:
    """Wait until the order store holds every execution report and trade of the journals."""
    events = _journal(ex)
    trades = sum(e["event"] == "trade" for e in events)
    reports = sum(e["event"] in ("accepted", "rejected", "cancelled", "replaced", "expired") for e in events)
    path = ex.workdir / ex.topo.sqlite_path("orders")

    def stored() -> bool:
        if not path.exists():
            return False
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            n_trades = db.execute("SELECT count(*) FROM trades").fetchone()[0]
            n_events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        return bool(n_trades == trades and n_events == reports + 2 * trades)

    _wait(stored, f"the store holds the journals' {trades} trades and {reports} reports")


def _with_redis(path: Path, url: str) -> Path:
    path.write_text(path.read_text().replace('recent = "embedded"', 'recent = "redis"') + f'\n[redis]\nurl = "{url}"\n')
    return path


def _render(table: Any) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=400).print(table)
    return buf.getvalue()


@pytest.fixture(scope="module")
def traded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Launcher, dict[str, str]]]:
    """The local topology on free ports (recent state in memory) after a few trades, all of them stored."""
    tmp = tmp_path_factory.mktemp("store-cli")
    ex = Launcher(topology_on_free_ports(LOCAL, tmp), workdir=tmp)
    ex.start()
    try:
        oids = _trade_some(ex)
        _wait_stored(ex)
        yield ex, oids
    finally:
        ex.stop()


def test_trades_json_equals_the_journals_trades(traded: tuple[Launcher, dict[str, str]]) -> None:
    ex, _ = traded
    r = exfab("trades", "--json", "--topology", str(ex.path), cwd=ex.workdir)
    assert r.returncode == 0, r.stderr
    got = [tuple(t[k] for k in TRADE_KEYS) for t in _lines(r.stdout)]
    want = _journal_trades(ex)
    assert len(want) == 3
    assert got == want, "the same trades, symbol by symbol in the order they were made"


def test_trades_of_a_symbol_print_a_table(traded: tuple[Launcher, dict[str, str]]) -> None:
    ex, oids = traded
    day = _lines(exfab("trades", "--json", "--topology", str(ex.path), cwd=ex.workdir).stdout)[0]["day"]
    r = exfab("trades", "--symbol", "TCS", "--topology", str(ex.path), cwd=ex.workdir)
    assert r.returncode == 0, r.stderr
    assert f"trades of {day} (TCS): 2" in r.stdout
    rows = [line for line in r.stdout.splitlines() if " TCS " in line]
    assert len(rows) == 2
    for trade_id, hit in ((1, "hit1"), (2, "hit2")):
        row = rows[trade_id - 1].split("│")
        assert [c.strip() for c in row[1:5]] == ["TCS", str(trade_id), _px(ex, "TCS", 1), "4" if trade_id == 1 else "3"]
        assert f"B1 {oids['rest']}" in row[6] and f"B2 {oids[hit]}" in row[7]
    assert "ITC" not in r.stdout


def test_trades_of_another_day_are_none(traded: tuple[Launcher, dict[str, str]]) -> None:
    ex, _ = traded
    r = exfab("trades", "--date", ANOTHER_DAY, "--topology", str(ex.path), cwd=ex.workdir)
    assert r.returncode == 0, r.stderr
    assert f"trades of {ANOTHER_DAY} (every symbol): 0" in r.stdout and "TCS" not in r.stdout
    r = exfab("trades", "--date", ANOTHER_DAY, "--json", "--topology", str(ex.path), cwd=ex.workdir)
    assert (r.returncode, r.stdout) == (0, "")


def test_trades_usage_errors_exit_2(traded: tuple[Launcher, dict[str, str]]) -> None:
    ex, _ = traded
    r = exfab("trades", "--symbol", "NOPE", "--topology", str(ex.path), cwd=ex.workdir)
    assert r.returncode == 2 and "unknown symbol 'NOPE'" in r.stderr and "TCS" in r.stderr, r.stderr
    r = exfab("trades", "--date", "yesterday", "--topology", str(ex.path), cwd=ex.workdir)
    assert r.returncode == 2 and "--date 'yesterday' is not a date (YYYY-MM-DD)" in r.stderr, r.stderr
    r = exfab("order-status", "x", "--broker", "B1", "--date", "2001-13-01", "--topology", str(ex.path),
              cwd=ex.workdir)
    assert r.returncode == 2 and "is not a date" in r.stderr, r.stderr


def test_order_status_json_shows_state_fills_and_life(traded: tuple[Launcher, dict[str, str]]) -> None:
    ex, oids = traded
    r = exfab("order-status", oids["rest"], "--broker", "B1", "--json", "--topology", str(ex.path), cwd=ex.workdir)
    assert r.returncode == 0, r.stderr
    [st] = _lines(r.stdout)
    px = _px(ex, "TCS", 1)
    assert (st["oid"], st["symbol"], st["side"], st["qty"]) == (oids["rest"], "TCS", "buy", 10)
    assert (st["state"], st["cum_qty"], st["leaves_qty"], st["avg_px"]) == ("partially_filled", 7, 3, px)
    assert st["source"].startswith("sqlite:") and st["source"].endswith("orders.sqlite3")
    assert [e["event"] for e in st["events"]] == ["accepted", "fill", "fill"]
    assert [(e["last_qty"], e["cum_qty"], e["price"], e["trade_id"]) for e in st["events"][1:]] == [
        (4, 4, px, 1), (3, 7, px, 2)]

    r = exfab("order-status", oids["hit2"], "--broker", "B2", "--json", "--topology", str(ex.path), cwd=ex.workdir)
    [st] = _lines(r.stdout)
    assert (st["state"], st["cum_qty"], st["leaves_qty"], st["avg_px"]) == ("filled", 3, 0, px)
    assert [e["event"] for e in st["events"]] == ["accepted", "fill"]
    day = st["day"]
    on_day = exfab("order-status", oids["hit2"], "--broker", "B2", "--date", day, "--json", "--topology",
                   str(ex.path), cwd=ex.workdir)
    assert on_day.returncode == 0 and _lines(on_day.stdout) == [st]
    basic = exfab("order-status", oids["hit2"], "--broker", "B2", "--date", day.replace("-", ""), "--json",
                  "--topology", str(ex.path), cwd=ex.workdir)
    assert basic.returncode == 0 and _lines(basic.stdout) == [st], "a date in ISO 8601's basic form: the same day"


def test_order_status_prints_its_life(traded: tuple[Launcher, dict[str, str]]) -> None:
    ex, oids = traded
    r = exfab("order-status", oids["rest"], "--broker", "B1", "--topology", str(ex.path), cwd=ex.workdir)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"order {oids['rest']} of B1, ") and "shard A; from sqlite:" in lines[0]
    assert "state partially_filled; filled 7, leaves 3, average price" in r.stdout
    assert [line.split()[1] for line in lines[3:]] == ["accepted", "fill", "fill"]


def test_order_status_of_an_unknown_order_exits_1(traded: tuple[Launcher, dict[str, str]]) -> None:
    ex, oids = traded
    r = exfab("order-status", "B1-nothing-1", "--broker", "B1", "--topology", str(ex.path), cwd=ex.workdir)
    assert r.returncode == 1 and "broker B1 has no order B1-nothing-1 in the stores" in r.stderr, r.stderr
    r = exfab("order-status", oids["rest"], "--broker", "B2", "--json", "--topology", str(ex.path), cwd=ex.workdir)
    assert (r.returncode, r.stdout) == (1, ""), "an order is the broker's own"
    r = exfab("order-status", oids["rest"], "--broker", "B1", "--date", ANOTHER_DAY, "--topology", str(ex.path),
              cwd=ex.workdir)
    assert r.returncode == 1 and f"on {ANOTHER_DAY}" in r.stderr


def test_store_init_creates_the_sqlite_store(tmp_path: Path) -> None:
    topo = str(topology_on_free_ports(LOCAL, tmp_path))  # nothing runs: the command makes the file
    r = exfab("store", "init", "--topology", topo, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "orders.sqlite3: tables ready" in r.stdout
    path = tmp_path / ".exfab" / "local" / "orders.sqlite3"
    with sqlite3.connect(path) as db:
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"orders", "events", "trades", "positions"} <= tables
    assert exfab("store", "init", "--topology", topo, cwd=tmp_path).returncode == 0, "safe to run again"
    empty = exfab("trades", "--json", "--topology", topo, cwd=tmp_path)
    assert (empty.returncode, empty.stdout) == (0, "")


def test_a_missing_store_exits_3(tmp_path: Path) -> None:
    topo = str(topology_on_free_ports(LOCAL, tmp_path))
    r = exfab("trades", "--topology", topo, cwd=tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "cannot read the order store: no file .exfab/local/orders.sqlite3" in r.stderr
    assert str(tmp_path) in r.stderr and "exfab store init" in r.stderr
    r = exfab("order-status", "x", "--broker", "B1", "--topology", topo, cwd=tmp_path)
    assert r.returncode == 3 and "no file .exfab/local/orders.sqlite3" in r.stderr, r.stderr
    assert not (tmp_path / ".exfab").exists(), "reading makes no file"


# The launcher and a local Redis.


def test_launcher_runs_a_local_redis_for_the_store_and_stops_it(tmp_path: Path) -> None:
    require_binary(REDIS_SERVER)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    ex = Launcher(_with_redis(topology_on_free_ports(LOCAL, tmp_path), url), workdir=tmp_path)
    ex.start()
    try:
        server = ex.redis
        assert server is not None and server.running and redis_answers("127.0.0.1", port)
        assert server.root == tmp_path / ".exfab" / "local" / "redis"
        assert server.log_path == tmp_path / ".exfab" / "local" / "logs" / "redis.log"
        table = _render(status_table(ex))
        assert any(line.split("│")[1].strip() == "redis" and str(server.pid) in line and url in line
                   for line in table.splitlines() if "│" in line), table

        oids = _trade_some(ex)
        _wait_stored(ex)
        client = redis.Redis.from_url(url)
        try:
            _wait(lambda: client.hget(f"exfab:{ex.topo.name}:order:B1:{oids['rest']}", "cum_qty") == b"7",
                  "the persistence node wrote the order, filled 7, to Redis")
            keys = {k.decode() for k in client.scan_iter(match=f"exfab:{ex.topo.name}:*")}
        finally:
            client.close()
        assert {f"exfab:local:{k}" for k in ("marker", "tape:TCS", "last:TCS", "open:B1")} <= keys, keys

        r = exfab("order-status", oids["rest"], "--broker", "B1", "--json", "--topology", str(ex.path),
                  cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        [st] = _lines(r.stdout)
        assert st["source"] == f"redis:{url}", "read from Redis first"
        assert (st["state"], st["cum_qty"]) == ("partially_filled", 7)
        assert [e["event"] for e in st["events"]] == ["accepted", "fill", "fill"], "its life from the order store"
        text = exfab("order-status", oids["rest"], "--broker", "B1", "--topology", str(ex.path), cwd=tmp_path)
        assert f"from redis:{url})" in text.stdout.splitlines()[0]
    finally:
        codes = ex.stop()
    assert list(codes)[-1] == "redis" and set(codes.values()) == {0}, codes
    assert ex.redis is None and not server.running and not redis_answers("127.0.0.1", port)


def test_launcher_leaves_a_running_redis_alone(tmp_path: Path) -> None:
    outside = start_redis(tmp_path / "redis")
    try:
        ex = Launcher(_with_redis(topology_on_free_ports(LOCAL, tmp_path), outside.url), workdir=tmp_path)
        ex.start()
        try:
            assert ex.redis is None
            table = _render(status_table(ex))
            assert "running already: used as it is" in table and outside.url in table
            oids = _trade_some(ex)
            client = redis.Redis.from_url(outside.url)
            try:
                _wait(lambda: client.exists(f"exfab:local:order:B1:{oids['rest']}") == 1,
                      "the persistence node writes to the Redis that was running")
            finally:
                client.close()
        finally:
            codes = ex.stop()
        assert "redis" not in codes
        assert outside.running and redis_answers("127.0.0.1", outside.port), "left running"
        assert not (tmp_path / ".exfab" / "local" / "redis").exists()
    finally:
        outside.stop()


def test_launcher_without_redis_server_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _with_redis(topology_on_free_ports(LOCAL, tmp_path), f"redis://localhost:{free_port()}/0")
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    ex = Launcher(path, workdir=tmp_path)
    with pytest.raises(LaunchError, match=r"redis-server is not installed: install it \(Debian: apt-get install "
                                          r"redis-server\), or point \[redis\] url at a running Redis"):
        ex.start()
    assert ex.nodes == [] and ex.redis is None


def test_launcher_runs_no_redis_for_another_machine(tmp_path: Path) -> None:
    path = _with_redis(topology_on_free_ports(LOCAL, tmp_path), "redis://redis.example.internal:6379/0")
    from topology.launcher import local_redis

    ex = Launcher(path, workdir=tmp_path)
    assert local_redis(ex.topo) is None and ex.start_redis() is None and ex.redis is None
    assert local_redis(Launcher(topology_on_free_ports(LOCAL, tmp_path), workdir=tmp_path).topo) is None
    for host in ("127.0.0.1", "127.3.2.1", "localhost", "[::1]"):
        _with_redis(topology_on_free_ports(LOCAL, tmp_path), f"redis://{host}/0")
        assert local_redis(Launcher(tmp_path / LOCAL.name, workdir=tmp_path).topo) == (host.strip("[]"), 6379)
