"""The command line against a running exchange: exfab order, exfab orders, exfab up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.helpers import topology_on_free_ports
from topology.launcher import Launcher
from topology.load import load

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "topology" / "examples" / "local.toml"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    tmp = tmp_path_factory.mktemp("cli")
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp, brokers="keys"), workdir=tmp)  # the demo brokers' keys
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()


def exfab(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_order_json_prints_reports_named_as_replay_events(exchange: Launcher) -> None:
    topo = str(exchange.path)
    sym = exchange.topo.shards[0].symbols[2]
    inst = exchange.topo.instrument(sym)
    px = inst.to_price((inst.band_lo or 0) + 300)
    rest = exfab("order", "buy", sym, "10", "@", px, "--broker", "B1", "--json", "--topology", topo)
    assert rest.returncode == 0, rest.stderr
    events = _json_lines(rest.stdout)
    assert [e["event"] for e in events] == ["accepted", "status"]
    assert events[0]["price"] == px and events[0]["qty"] == 10 and events[1]["state"] == "new"
    oid = events[0]["oid"]

    hit = exfab("order", "sell", sym, "4", px, "--tif", "IOC", "--broker", "B2", "--json", "--topology", topo)
    assert hit.returncode == 0, hit.stderr
    events = _json_lines(hit.stdout)
    assert [e["event"] for e in events] == ["accepted", "trade", "status"]
    assert (events[1]["price"], events[1]["qty"], events[1]["aggressor"]) == (px, 4, True)

    listed = exfab("orders", "--broker", "B1", "--json", "--topology", topo)
    assert [(o["oid"], o["leaves_qty"]) for o in _json_lines(listed.stdout)] == [(oid, 6)]

    gone = exfab("order", "cancel", oid, "--broker", "B1", "--json", "--topology", topo)
    assert gone.returncode == 0, gone.stderr
    events = _json_lines(gone.stdout)
    assert [e["event"] for e in events] == ["cancelled", "status"] and events[0]["qty"] == 6


# Exit status of `exfab order` (tools/order_cmd.py EXIT_*): 0 carried out, 1 rejected, 2 usage, 3 unreachable.


def test_order_rejected_exits_1_with_the_reason(exchange: Launcher) -> None:
    sym = exchange.topo.shards[1].symbols[2]
    r = exfab("order", "buy", sym, "5", "@", "0.05", "--broker", "B3", "--topology", str(exchange.path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "REJECTED" in r.stdout and "price_out_of_band" in r.stdout

    inst = exchange.topo.instrument(sym)
    off_tick = str(Decimal(inst.to_price((inst.band_lo or 0) + 300)) + Decimal("0.01"))  # between two ticks
    r = exfab("order", "sell", sym, "5", "@", off_tick, "--broker", "B3", "--json", "--topology", str(exchange.path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert [(e["event"], e.get("reason")) for e in _json_lines(r.stdout)] == [
        ("rejected", "price_off_tick"), ("status", "price_off_tick")]


def test_order_cancel_of_a_closed_or_unknown_order_exits_1(exchange: Launcher) -> None:
    topo = str(exchange.path)
    sym = exchange.topo.shards[0].symbols[3]
    inst = exchange.topo.instrument(sym)
    px = inst.to_price((inst.band_lo or 0) + 200)
    placed = exfab("order", "buy", sym, "3", "@", px, "--broker", "DEMO5", "--json", "--topology", topo)
    assert placed.returncode == 0, placed.stderr
    oid = _json_lines(placed.stdout)[0]["oid"]
    assert exfab("order", "cancel", oid, "--broker", "DEMO5", "--topology", topo).returncode == 0

    again = exfab("order", "cancel", oid, "--symbol", sym, "--broker", "DEMO5", "--topology", topo)
    assert again.returncode == 1 and "REJECTED" in again.stdout and "order_closed" in again.stdout
    unknown = exfab("order", "cancel", oid, "--broker", "DEMO5", "--topology", topo)  # not open: not found
    assert unknown.returncode == 1 and "unknown_order" in unknown.stdout
    replace = exfab("order", "replace", "DEMO5-nothing-1", "--symbol", sym, "--qty", "2", "--broker", "DEMO5",
                    "--topology", topo)
    assert replace.returncode == 1 and "REJECTED" in replace.stdout


def test_order_fok_that_cannot_fill_is_not_a_reject(exchange: Launcher) -> None:
    sym = exchange.topo.shards[1].symbols[3]
    inst = exchange.topo.instrument(sym)
    px = inst.to_price((inst.band_lo or 0) + 100)  # nothing rests there to sell
    r = exfab("order", "buy", sym, "7", "@", px, "--tif", "FOK", "--broker", "DEMO6", "--json",
              "--topology", str(exchange.path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [e["event"] for e in _json_lines(r.stdout)] == ["accepted", "cancelled", "status"]


def test_order_post_only_gtd_and_iceberg_through_the_whole_exchange(exchange: Launcher) -> None:
    topo = str(exchange.path)
    sym = exchange.topo.shards[1].symbols[0]
    inst = exchange.topo.instrument(sym)
    px = inst.to_price((inst.band_lo or 0) + 40)
    ice = exfab("order", "sell", sym, "30", "@", px, "--disclosed-qty", "10", "--expire-date", "2099-12-31",
                "--broker", "DEMO3", "--json", "--topology", topo)
    assert ice.returncode == 0, ice.stderr
    acc = _json_lines(ice.stdout)[0]
    assert (acc["event"], acc["tif"], acc["expire_date"], acc["disclosed_qty"]) == ("accepted", "GTD", "2099-12-31",
                                                                                     10)
    cross = exfab("order", "buy", sym, "5", "@", px, "--post-only", "--broker", "DEMO4", "--json", "--topology", topo)
    assert cross.returncode == 1, cross.stderr
    rej = _json_lines(cross.stdout)[0]
    assert (rej["event"], rej["reason"]) == ("rejected", "would_cross") and "post-only" in rej["text"]
    past = exfab("order", "buy", sym, "5", "@", px, "--expire-date", "2001-01-01", "--broker", "DEMO4", "--topology",
                 topo)
    assert past.returncode == 1 and "bad_expire_date" in past.stdout, past.stdout
    take = exfab("order", "buy", sym, "12", "@", px, "--tif", "IOC", "--broker", "DEMO4", "--json", "--topology", topo)
    fills = [e for e in _json_lines(take.stdout) if e["event"] == "trade"]
    assert [f["qty"] for f in fills] == [10, 2]  # a peak, then the next one


def test_order_stop_price_waits_is_replaced_and_triggers_through_the_whole_exchange(exchange: Launcher) -> None:
    topo = str(exchange.path)
    sym = exchange.topo.shards[0].symbols[1]
    inst = exchange.topo.instrument(sym)
    base = (inst.band_lo or 0) + 60

    def px(d: int) -> str:
        return str(inst.to_price(base + d))

    def order(*args: str) -> subprocess.CompletedProcess[str]:
        return exfab("order", *args, "--json", "--topology", topo)

    assert order("sell", sym, "1", "@", px(0), "--broker", "DEMO3").returncode == 0
    assert order("buy", sym, "1", "@", px(0), "--tif", "IOC", "--broker", "DEMO4").returncode == 0  # last: px(0)
    stop = order("buy", sym, "5", "@", px(2), "--stop-price", px(1), "--broker", "DEMO5")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    acc, status = _json_lines(stop.stdout)
    assert (acc["event"], acc["tif"], acc["stop_price"]) == ("accepted", "DAY", px(1))
    assert (status["state"], status["stop_price"], "triggered" in status) == ("new", px(1), False)  # waiting
    oid = acc["oid"]
    rep = order("replace", oid, "--stop-price", px(2), "--broker", "DEMO5")
    assert rep.returncode == 0 and _json_lines(rep.stdout)[0]["stop_price"] == px(2), rep.stdout
    late = order("sell", sym, "5", "--stop-price", px(1), "--broker", "DEMO5")  # a sell stop above the last price
    assert late.returncode == 1 and _json_lines(late.stdout)[0]["reason"] == "stop_would_trigger", late.stdout
    # A trade at px(2) reaches the trigger: the stop buys the 4 left at px(2) and rests with 1.
    assert order("sell", sym, "5", "@", px(2), "--broker", "DEMO3").returncode == 0
    assert order("buy", sym, "1", "@", px(2), "--tif", "IOC", "--broker", "DEMO6").returncode == 0
    listed = exfab("orders", "--broker", "DEMO5", "--symbol", sym, "--json", "--topology", topo)
    mine = [o for o in _json_lines(listed.stdout) if o["oid"] == oid]
    assert len(mine) == 1 and (mine[0]["state"], mine[0]["cum_qty"], mine[0]["triggered"]) == (
        "partially_filled", 4, True), listed.stdout


def test_market_depth_shows_an_icebergs_peak_only_and_no_waiting_stop(exchange: Launcher) -> None:
    # What the live page's depth ladder shows (the ticker's depth objects, which the page draws as they come).
    from topology.clients import market_data_client

    topo = str(exchange.path)
    sym = exchange.topo.shards[0].symbols[4]
    inst = exchange.topo.instrument(sym)
    base = (inst.band_lo or 0) + 80

    def px(d: int) -> str:
        return str(inst.to_price(base + d))

    def order(*args: str) -> None:
        r = exfab("order", *args, "--json", "--topology", topo)
        assert r.returncode == 0, r.stdout + r.stderr

    order("sell", sym, "30", "@", px(0), "--disclosed-qty", "10", "--tif", "GTC", "--broker", "DEMO3")
    order("buy", sym, "5", "@", px(-2), "--tif", "GTC", "--broker", "DEMO4")
    order("buy", sym, "7", "@", px(3), "--stop-price", px(2), "--broker", "DEMO5")  # waits: no trade yet
    order("sell", sym, "9", "--stop-price", px(-4), "--broker", "DEMO5")  # an SL-M waiting below
    with market_data_client(topo, [sym], kinds=("depth",)) as md:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            md.poll(0.2)
            depth = md.depth(sym)
            if depth and depth["asks"] and depth["bids"]:
                break
        assert depth is not None
        assert depth["asks"] == [[px(0), 10, 1]], "the iceberg shows its peak, 10 of 30"
        assert depth["bids"] == [[px(-2), 5, 1]], "the waiting stops are not in the depth"
        order("buy", sym, "12", "@", px(0), "--tif", "IOC", "--broker", "DEMO6")  # a peak and 2 of the next
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and md.depth(sym)["asks"] != [[px(0), 8, 1]]:  # type: ignore[index]
            md.poll(0.2)
        assert md.depth(sym)["asks"] == [[px(0), 8, 1]], "the next peak, less what traded"  # type: ignore[index]


def test_order_usage_errors_exit_2_without_the_exchange(tmp_path: Path) -> None:
    topo = str(topology_on_free_ports(LOCAL, tmp_path, brokers="keys"))  # nothing runs there: usage is checked first
    words = exfab("order", "buy", "TCS", "ten", "--broker", "DEMO7", "--topology", topo)
    assert words.returncode == 2 and "quantity must be a whole number" in words.stderr
    missing = exfab("order", "buy", "TCS", "1", "--topology", topo)  # no --broker: argparse
    assert missing.returncode == 2 and "--broker" in missing.stderr
    no_file = exfab("order", "buy", "TCS", "1", "--broker", "DEMO7", "--topology", str(tmp_path / "none.toml"))
    assert no_file.returncode == 2 and "cannot read the file" in no_file.stderr


def test_order_exchange_unreachable_exit_status_3(tmp_path: Path) -> None:
    topo = topology_on_free_ports(LOCAL, tmp_path, brokers="keys")  # nothing runs on these ports
    r = exfab("order", "buy", "TCS", "1", "@", "3500", "--broker", "B4", "--topology", str(topo))
    assert r.returncode == 3 and "cannot reach the exchange" in r.stderr
    listed = exfab("orders", "--broker", "B4", "--topology", str(topo))
    assert listed.returncode == 3 and "cannot reach the exchange" in listed.stderr


def test_admin_halts_disables_and_says_what_it_did(exchange: Launcher) -> None:
    topo = str(exchange.path)
    sym = exchange.topo.shards[1].symbols[3]
    inst = exchange.topo.instrument(sym)
    px = inst.to_price((inst.band_lo or 0) + 100)
    halt = exfab("admin", "halt", sym, "--text", "news pending", "--topology", topo)
    assert (halt.returncode, halt.stdout) == (0, f"halted {sym}\n"), halt.stderr
    refused = exfab("order", "buy", sym, "1", px, "--broker", "DEMO8", "--topology", topo)
    assert refused.returncode == 1 and "halted" in refused.stdout and "news pending" in refused.stdout
    assert exfab("admin", "resume", sym, "--topology", topo).stdout == f"resumed {sym}\n"
    assert exfab("order", "buy", sym, "1", px, "--broker", "DEMO8", "--topology", topo).returncode == 0
    off = exfab("admin", "disable", "DEMO8", "--json", "--topology", topo)
    assert off.returncode == 0, off.stderr
    assert _json_lines(off.stdout) == [{"event": "admin_ack", "action": "disable", "symbol": None, "broker": "DEMO8",
                                        "cancelled": 1}]
    assert "broker_disabled" in exfab("order", "buy", sym, "1", px, "--broker", "DEMO8", "--topology", topo).stdout
    on = exfab("admin", "enable", "DEMO8", "--topology", topo)
    assert (on.returncode, on.stdout) == (0, "enabled broker DEMO8: it may trade again\n")
    nope = exfab("admin", "halt", "--as", "DEMO8", "--topology", topo)
    assert nope.returncode == 1 and "not_authorized" in nope.stderr
    usage = exfab("admin", "disable", "--topology", topo)
    assert usage.returncode == 2 and "required: BROKER" in usage.stderr


def test_order_help_lists_the_exit_codes() -> None:
    for args in (("order", "--help"), ("order", "buy", "--help"), ("order", "cancel", "--help")):
        r = exfab(*args)
        assert r.returncode == 0
        text = r.stdout[r.stdout.index("exit status:"):]
        for code, words in (("0", "carried the command out"), ("1", "rejected"), ("2", "usage error"),
                            ("3", "could not be reached")):
            assert f"  {code}  the exchange {words}" in text or f"  {code}  {words}" in text, (code, text)


@pytest.mark.timeout(240)
def test_up_demo_runs_a_moving_market_and_stops_cleanly(tmp_path: Path) -> None:
    # The demo runs a compressed day (docs/sessions.md): its pre-open opens 11 s after the command, continuous
    # trading 14 s later; 40 s of demo brokers see it trade.
    topo = topology_on_free_ports(LOCAL, tmp_path, brokers="keys")
    r = exfab("up", str(topo), "--demo", "--duration", "40", cwd=tmp_path, timeout=230)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo brokers trading" in r.stdout
    assert "--demo: a compressed day" in r.stdout
    trades = [int(line.split()[0].replace(",", "")) for line in r.stdout.splitlines() if line.endswith("trades;")
              or " trades; last:" in line]
    assert trades and max(trades) > 0
    assert "stopped:" in r.stdout and "(ok)" in r.stdout
    # What `make run` leaves: the order store's trades are the journals' trades, exactly.
    out = exfab("trades", "--topology", str(topo), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    stored = [json.loads(line) for line in out.stdout.splitlines()]
    loaded = load(topo)
    journals = []
    for shard in loaded.shards:
        path = tmp_path / loaded.journal_dir(shard.replicas[0]) / f"{shard.name}.journal"
        out = exfab("journal", "inspect", str(path), cwd=tmp_path)
        journals += [json.loads(line) for line in out.stdout.splitlines()]
    want = sorted((e["symbol"], e["trade_id"], e["price"], e["qty"], e["buy_oid"], e["sell_oid"])
                  for e in journals if e["event"] == "trade")
    phases = [e["phase"] for e in journals if e["event"] == "session"]
    assert "continuous" in phases, phases  # and the pre-open and the auction before it, unless the start was slow
    assert want and sorted((t["symbol"], t["trade_id"], t["price"], t["qty"], t["buy_oid"], t["sell_oid"])
                           for t in stored) == want
