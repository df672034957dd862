"""``exfab replay``: the public JSON Lines format of docs/replay.md."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from tools import replay
from tools.replay import replay_lines

TCS = '{"op":"instrument","symbol":"TCS","tick":"0.05","lot":1,"ref_price":"3500.00","band_pct":"10"}'


def _new(oid: str, broker: str, side: str, price: str | None, qty: int, **kw: object) -> str:
    cmd: dict[str, object] = {"op": "new", "oid": oid, "broker": broker, "symbol": "TCS", "side": side,
                              "type": "limit" if price else "market", "qty": qty}
    if price:
        cmd["price"] = price
    cmd.update(kw)
    return json.dumps(cmd)


def test_issue_example_session_gives_documented_events() -> None:
    events = replay_lines([
        TCS,
        _new("o1", "B1", "buy", "3500.05", 10, tif="GTC"),
        _new("o2", "B2", "sell", None, 5, tif="IOC"),
        '{"op":"replace","oid":"o1","broker":"B1","symbol":"TCS","price":"3500.10","qty":8}',
        '{"op":"cancel","oid":"o1","broker":"B1","symbol":"TCS"}',
        '{"op":"end_of_day"}',
    ], book=True)
    kinds = [e["event"] for e in events]
    assert kinds == ["accepted", "accepted", "trade", "replaced", "cancelled", "book"]
    trade = events[2]
    assert {k: trade[k] for k in ("symbol", "price", "qty", "buy_oid", "sell_oid", "buy_broker", "sell_broker",
                                  "aggressor")} == {
        "symbol": "TCS", "price": "3500.05", "qty": 5, "buy_oid": "o1", "sell_oid": "o2",
        "buy_broker": "B1", "sell_broker": "B2", "aggressor": "sell"}
    assert events[3]["price"] == "3500.10" and events[3]["leaves_qty"] == 3 and events[3]["cum_qty"] == 5
    assert events[4] == {"event": "cancelled", "symbol": "TCS", "oid": "o1", "broker": "B1", "qty": 3,
                         "cum_qty": 5, "reason": "requested"}
    assert events[5] == {"event": "book", "symbol": "TCS", "bids": [], "asks": []}


def test_book_levels_best_first_with_totals_and_counts() -> None:
    events = replay_lines([
        TCS,
        _new("a", "B1", "buy", "3500.00", 10),
        _new("b", "B2", "buy", "3500.00", 5),
        _new("c", "B1", "buy", "3499.95", 1),
        _new("d", "B3", "sell", "3501.00", 7),
        _new("e", "B3", "sell", "3500.50", 2),
    ], book=True)
    assert events[-1] == {"event": "book", "symbol": "TCS",
                          "bids": [["3500.00", 15, 2], ["3499.95", 1, 1]],
                          "asks": [["3500.50", 2, 1], ["3501.00", 7, 1]]}


def test_every_specific_reject_reason_named() -> None:
    lines = [
        '{"op":"instrument","symbol":"LOT","tick":"0.05","lot":10,"ref_price":"100","band_pct":"20"}',
        TCS,
        _new("o1", "B1", "buy", "3500.00", 10),
        '{"op":"new","oid":"q","broker":"B1","symbol":"LOT","side":"buy","type":"limit","price":"100","qty":15}',
        _new("t", "B1", "buy", "3500.03", 1),
        _new("band", "B1", "buy", "3900.00", 1),
        _new("o1", "B1", "sell", "3600.00", 1),
        '{"op":"cancel","oid":"nope","broker":"B1","symbol":"TCS"}',
        '{"op":"cancel","oid":"o1","broker":"B2","symbol":"TCS"}',
        '{"op":"replace","oid":"o1","broker":"B2","symbol":"TCS","qty":5}',
        _new("m", "B1", "buy", None, 5, tif="GTC"),
        "{not json",
        '{"op":"fly"}',
        '{"op":"new","oid":"x","broker":"B1","symbol":"TCS","side":"buy","type":"limit","qty":1}',
        '{"op":"new","oid":"x","broker":"B1","symbol":"TCS","side":"up","type":"limit","price":"1","qty":1}',
        '{"op":"new","oid":"x","broker":"B1","symbol":"TCS","side":"buy","type":"limit","price":"1","qty":"5"}',
        '[1, 2]',
    ]
    reasons = [e["reason"] for e in replay_lines(lines) if e["event"] == "rejected"]
    assert reasons == ["qty_not_lot_multiple", "price_off_tick", "price_out_of_band", "duplicate_client_order_id",
                       "unknown_order", "unknown_order", "unknown_order", "bad_time_in_force", "malformed",
                       "unknown_op", "missing_field", "bad_field", "bad_field", "malformed"]


def test_order_of_another_broker_refused_as_unknown_order() -> None:
    events = replay_lines([TCS, _new("o1", "B1", "buy", "3500.00", 10),
                           '{"op":"cancel","oid":"o1","broker":"B2","symbol":"TCS"}'], book=True)
    assert events[1]["reason"] == "unknown_order"
    assert events[-1]["bids"] == [["3500.00", 10, 1]]


def test_defaults_symbol_without_instrument_tick_001_no_band() -> None:
    events = replay_lines([
        '{"op":"new","oid":"a","broker":"B","symbol":"NEW","side":"buy","type":"limit","price":"0.01","qty":1}',
        '{"op":"new","oid":"b","broker":"B","symbol":"NEW","side":"buy","type":"limit","price":"99999.99","qty":1}',
        '{"op":"new","oid":"c","broker":"B","symbol":"NEW","side":"buy","type":"limit","price":"1.005","qty":1}',
    ])
    assert [e["event"] for e in events] == ["accepted", "accepted", "rejected"]
    assert events[0]["tif"] == "GTC" and events[2]["reason"] == "price_off_tick"


def test_market_order_defaults_to_ioc_unfilled_rest_cancelled() -> None:
    events = replay_lines([TCS, _new("s", "B1", "sell", "3500.00", 3), _new("m", "B2", "buy", None, 5)])
    assert events[1]["tif"] == "IOC"
    assert events[-1] == {"event": "cancelled", "symbol": "TCS", "oid": "m", "broker": "B2", "qty": 2, "cum_qty": 3,
                          "reason": "unfilled_ioc_remainder"}


def test_day_orders_expire_at_end_of_day_gtc_stay() -> None:
    events = replay_lines([TCS, _new("d", "B1", "buy", "3500.00", 1, tif="DAY"),
                           _new("g", "B1", "buy", "3499.00", 1, tif="GTC"), '{"op":"end_of_day"}'], book=True)
    assert events[2] == {"event": "expired", "symbol": "TCS", "oid": "d", "broker": "B1", "qty": 1, "cum_qty": 0}
    assert events[3]["bids"] == [["3499.00", 1, 1]]


def test_cli_reads_stdin_writes_one_json_object_per_line(tmp_path: Path) -> None:
    src = "\n".join([TCS, _new("o1", "B1", "buy", "3500.05", 10), _new("o2", "B2", "sell", "3500.00", 4)]) + "\n"
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "replay", "--book", "-"], input=src,
                          capture_output=True, text=True, check=True)
    lines = [json.loads(s) for s in proc.stdout.splitlines()]
    assert [e["event"] for e in lines] == ["accepted", "accepted", "trade", "book"]
    assert lines[2]["price"] == "3500.05" and lines[2]["aggressor"] == "sell"


def test_cli_missing_file_exit_status_2_says_why() -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "replay", "/nonexistent/x.jsonl"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_large_file_shows_progress_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(_new(f"o{i}", "B1", "buy" if i % 2 else "sell", "3500.00", 1)
                              for i in range(40_000)) + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert replay.run(str(path), out=out, err=err, progress_every=0.0) == 0
    assert "replay:" in err.getvalue() and "commands" in err.getvalue()
    assert out.getvalue().count('"event":"trade"') == 20_000


def test_summary_prints_per_symbol_table() -> None:
    out = io.StringIO()
    sample = Path(__file__).resolve().parents[1] / "topology" / "examples" / "session.jsonl"
    assert replay.run(str(sample), summary=True, out=out, err=io.StringIO()) == 0
    text = out.getvalue()
    assert "Session summary" in text and "TCS" in text and "trade" in text


def test_stp_field_applies_the_mode_absent_is_off() -> None:
    events = replay_lines([
        TCS,
        _new("s1", "B1", "sell", "3500.00", 5),
        _new("b1", "B1", "buy", "3500.00", 2),  # no stp: the broker trades with itself
        _new("b2", "B1", "buy", "3500.00", 2, stp="cancel_incoming"),
        '{"op":"replace","oid":"b2","broker":"B1","symbol":"TCS","price":"3499.00","stp":"cancel_both"}',
        _new("b3", "B1", "buy", "3500.00", 1, stp="Cancel_Resting"),  # any case, as the other choices
    ])
    assert [(e["event"], e.get("oid"), e.get("reason")) for e in events] == [
        ("accepted", "s1", None), ("accepted", "b1", None), ("trade", None, None),
        ("accepted", "b2", None), ("cancelled", "b2", "self_trade"),
        ("rejected", "b2", "order_closed"),  # b2 was cancelled: nothing to replace
        ("accepted", "b3", None), ("cancelled", "s1", "self_trade")]


def test_stp_replace_that_crosses_own_order_cancels_both() -> None:
    events = replay_lines([
        TCS,
        _new("s1", "B1", "sell", "3500.00", 5),
        _new("b1", "B1", "buy", "3499.00", 2),
        '{"op":"replace","oid":"b1","broker":"B1","symbol":"TCS","price":"3500.00","stp":"cancel_both"}',
    ], book=True)
    assert [(e["event"], e.get("oid"), e.get("reason")) for e in events[2:]] == [
        ("replaced", "b1", None), ("cancelled", "s1", "self_trade"), ("cancelled", "b1", "self_trade"),
        ("book", None, None)]
    assert events[-1]["bids"] == [] and events[-1]["asks"] == []


def test_stp_bad_value_rejected_as_bad_field_naming_the_modes() -> None:
    (ev,) = replay_lines([_new("o1", "B1", "buy", "1.00", 1, stp="yes")])
    assert (ev["reason"], ev["text"]) == (
        "bad_field", "field 'stp' must be one of off, cancel_resting, cancel_incoming, cancel_both, got 'yes'")
