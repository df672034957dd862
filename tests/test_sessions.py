"""The trading day in the engine and in ``exfab replay``: the pre-open, the call auction, the close.

The worked examples of ``docs/sessions.md`` (section 3) are replayed through the
replay format, each checked against the numbers printed there; then the rules
around them: what each phase takes and refuses, what is left after the auction,
orders carried into the book, the closing price and the DAY orders' expiry.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fabric.commands import SessionChange, decode_command, encode_command
from tools.replay import parse_command, replay_lines

Event = dict[str, Any]


def _inst(ref: str | None = "100", **kw: Any) -> str:
    cmd: dict[str, Any] = {"op": "instrument", "symbol": "X", "tick": "1"}
    if ref is not None:
        cmd["ref_price"] = ref
    cmd.update(kw)
    return json.dumps(cmd)


def _session(phase: str, **kw: Any) -> str:
    return json.dumps({"op": "session", "phase": phase, **kw})


def _order(oid: str, price: int | None, qty: int, tif: str = "DAY") -> str:
    # "B..." buys, "S..." sells; price None: a market order.
    cmd: dict[str, Any] = {"op": "new", "oid": oid, "broker": "b" if oid[0] == "B" else "s", "symbol": "X",
                           "side": "buy" if oid[0] == "B" else "sell", "qty": qty, "tif": tif}
    if price is None:
        cmd["type"] = "market"
    else:
        cmd.update(type="limit", price=str(price))
    return json.dumps(cmd)


def _day(ref: str, orders: list[str]) -> list[Event]:
    # The pre-open with `orders`, then the auction; every event, and the book at the end.
    return replay_lines([_inst(ref), _session("pre_open"), *orders, _session("auction")], book=True)


def _after_auction(events: list[Event]) -> tuple[Event, list[tuple[str, str, int]], Event]:
    start = next(i for i, e in enumerate(events) if e["event"] == "session" and e["phase"] == "auction")
    auction = next(e for e in events if e["event"] == "auction")
    trades = [(e["buy_oid"], e["sell_oid"], e["qty"]) for e in events[start:] if e["event"] == "trade"]
    assert all(e["price"] == auction["price"] for e in events[start:] if e["event"] == "trade")
    return auction, trades, events[-1]


def _levels(book: Event) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    return [(p, q) for p, q, _ in book["bids"]], [(p, q) for p, q, _ in book["asks"]]


EXAMPLE_1 = [_order("B1", 102, 30), _order("S5", 99, 20), _order("B2", 101, 20), _order("S6", 100, 20),
             _order("B3", 100, 10), _order("S7", 101, 30), _order("B4", None, 10, "IOC"), _order("S8", 103, 10)]


def test_example_1_rule_1_and_its_allocation_step_by_step() -> None:
    events = _day("100", EXAMPLE_1)
    auction, trades, book = _after_auction(events)
    assert (auction["price"], auction["qty"], auction["unmatched"]) == ("101.00", 60, 10)
    assert trades == [("B1", "S5", 20), ("B1", "S6", 10), ("B2", "S6", 10), ("B2", "S7", 10), ("B4", "S7", 10)]
    assert _levels(book) == ([("100.00", 10)], [("101.00", 10), ("103.00", 10)])
    # Nothing traded while the orders were collected; the indicative price followed them, ending at 101.
    pre = events[:next(i for i, e in enumerate(events) if e["event"] == "session" and e["phase"] == "auction")]
    assert not [e for e in pre if e["event"] == "trade"]
    assert [e for e in pre if e["event"] == "indicative"][-1] == {
        "event": "indicative", "symbol": "X", "price": "101.00", "qty": 60, "unmatched": 10}


def test_example_2_rule_2() -> None:
    auction, trades, book = _after_auction(_day("100", [_order("B1", 101, 20), _order("B2", 100, 10),
                                                        _order("S3", 99, 10), _order("S4", 100, 10)]))
    assert (auction["price"], auction["qty"], auction["unmatched"]) == ("101.00", 20, 0)
    assert trades == [("B1", "S3", 10), ("B1", "S4", 10)]
    assert _levels(book) == ([("100.00", 10)], [])


@pytest.mark.parametrize(("close", "price"), [("95", "99.00"), ("105", "101.00"), ("99", "99.00"),
                                              ("101", "101.00")])
def test_example_3_rule_3_nearest_the_previous_close(close: str, price: str) -> None:
    auction, trades, book = _after_auction(_day(close, [_order("B1", 101, 10), _order("B2", 98, 5),
                                                        _order("S3", 99, 10), _order("S4", 102, 5)]))
    assert (auction["price"], auction["qty"], auction["unmatched"]) == (price, 10, 0)
    assert trades == [("B1", "S3", 10)]
    assert _levels(book) == ([("98.00", 5)], [("102.00", 5)])


def test_example_4_the_previous_close_between_the_tied_prices() -> None:
    auction, trades, book = _after_auction(_day("100", [_order("B1", 101, 10), _order("B2", 99, 5),
                                                        _order("S3", 99, 10), _order("S4", 101, 5)]))
    assert (auction["price"], auction["qty"], auction["unmatched"]) == ("100.00", 10, 0)
    assert trades == [("B1", "S3", 10)]
    assert _levels(book) == ([("99.00", 5)], [("101.00", 5)])


def test_example_5_only_market_orders_a_leftover_becomes_a_limit_at_the_close() -> None:
    events = _day("100", [_order("B1", None, 20, "IOC"), _order("S2", None, 20, "IOC"), _order("B3", None, 10, "IOC")])
    auction, trades, book = _after_auction(events)
    assert (auction["price"], auction["qty"], auction["unmatched"]) == ("100.00", 20, 10)
    assert trades == [("B1", "S2", 20)]
    assert _levels(book) == ([("100.00", 10)], [])


def test_example_6_limit_orders_meet_market_orders_first() -> None:
    auction, trades, book = _after_auction(_day("100", [_order("B1", None, 40, "IOC"), _order("S2", 100, 20),
                                                        _order("S3", None, 10, "IOC"), _order("B4", 101, 10),
                                                        _order("S5", 102, 20)]))
    assert (auction["price"], auction["qty"], auction["unmatched"]) == ("102.00", 40, 10)
    assert trades == [("B1", "S2", 20), ("B1", "S5", 20)]
    assert _levels(book) == ([("101.00", 10)], [("102.00", 10)])


def test_example_1_through_the_exfab_replay_command() -> None:
    src = "\n".join([_inst("100"), _session("pre_open"), *EXAMPLE_1, _session("auction")]) + "\n"
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "replay", "--book", "-"], input=src,
                          capture_output=True, text=True, check=True)
    lines = [json.loads(s) for s in proc.stdout.splitlines()]
    assert [e for e in lines if e["event"] == "auction"] == [
        {"event": "auction", "symbol": "X", "price": "101.00", "qty": 60, "unmatched": 10}]
    assert sum(e["qty"] for e in lines if e["event"] == "trade") == 60
    assert lines[-1]["bids"] == [["100.00", 10, 1]]


# -- what each phase takes ---------------------------------------------------------------------------------------------


def _reasons(events: list[Event]) -> list[tuple[str, str]]:
    return [(e["op"], e["reason"]) for e in events if e["event"] == "rejected"]


@pytest.mark.parametrize("phase", ["auction", "closing", "closed"])
def test_new_orders_are_refused_outside_order_entry_cancels_work(phase: str) -> None:
    events = replay_lines([_inst(), _order("B1", 99, 10, "GTC"), _session(phase), _order("B2", 99, 10),
                           '{"op":"replace","oid":"B1","broker":"b","symbol":"X","price":"98"}',
                           '{"op":"cancel","oid":"B1","broker":"b","symbol":"X"}'])
    assert _reasons(events) == [("new", "market_closed"), ("replace", "market_closed")]
    rej = next(e for e in events if e["event"] == "rejected")
    assert "new refused" in rej["text"]
    assert [e["oid"] for e in events if e["event"] == "cancelled"] == ["B1"]


def test_pre_open_takes_cancels_and_replaces_without_matching() -> None:
    events = replay_lines([_inst(), _session("pre_open"), _order("B1", 101, 10), _order("S1", 99, 10),
                           _order("B2", 101, 10),
                           '{"op":"replace","oid":"B1","broker":"b","symbol":"X","qty":5}',  # keeps its place
                           '{"op":"replace","oid":"B2","broker":"b","symbol":"X","price":"102"}',
                           '{"op":"cancel","oid":"B1","broker":"b","symbol":"X"}',
                           _order("B3", None, 5, "IOC"),
                           '{"op":"replace","oid":"B3","broker":"b","symbol":"X","qty":10}',
                           _order("B4", 100, 5, "IOC"),
                           _session("auction")], book=True)
    replaced = [(e["oid"], e["price"], e["qty"], e["kept_priority"]) for e in events if e["event"] == "replaced"]
    assert replaced == [("B1", "101.00", 5, True), ("B2", "102.00", 10, False)]
    assert [(e["oid"], e["qty"], e["reason"]) for e in events if e["event"] == "cancelled"] == [("B1", 5, "requested")]
    assert _reasons(events) == [("replace", "bad_field"), ("new", "bad_time_in_force")]
    auction, trades, book = _after_auction(events)
    # B2 (102 x 10) and the market B3 (5) against S1 (99 x 10): 99 and 102 both trade 10 leaving 5, and the
    # previous close (100) lies between them (rule 3). B2, a limit order, trades first.
    assert (auction["price"], auction["qty"], auction["unmatched"]) == ("100.00", 10, 5)
    assert trades == [("B2", "S1", 10)]
    assert _levels(book) == ([("100.00", 5)], [])  # B3 left over as a limit buy at the equilibrium


def test_a_book_order_cannot_be_replaced_in_the_pre_open_a_finished_one_is_closed() -> None:
    events = replay_lines([_inst(), _order("B1", 99, 10, "GTC"), _session("pre_open"),
                           '{"op":"replace","oid":"B1","broker":"b","symbol":"X","price":"98"}',
                           _order("B2", 99, 10), '{"op":"cancel","oid":"B2","broker":"b","symbol":"X"}',
                           '{"op":"replace","oid":"B2","broker":"b","symbol":"X","price":"98"}',
                           '{"op":"cancel","oid":"B2","broker":"b","symbol":"X"}'])
    assert _reasons(events) == [("replace", "market_closed"), ("replace", "order_closed"), ("cancel", "order_closed")]


def test_no_equilibrium_market_orders_are_cancelled_limits_go_on() -> None:
    events = _day("100", [_order("B1", 99, 10), _order("B2", None, 5, "IOC"), _order("S1", 101, 10)])
    auction, trades, book = _after_auction(events)
    assert (auction["price"], auction["qty"], trades) == ("101.00", 5, [("B2", "S1", 5)])  # the market buy meets S1
    events = _day("100", [_order("B1", 99, 10), _order("B2", None, 5, "IOC")])  # no seller: nothing can trade
    auction, trades, book = _after_auction(events)
    assert (auction["price"], auction["qty"], trades) == (None, 0, [])
    assert [(e["oid"], e["reason"]) for e in events if e["event"] == "cancelled"] == [("B2", "no_auction_price")]
    assert _levels(book) == ([("99.00", 10)], [])


def test_without_a_reference_price_only_market_orders_find_no_price() -> None:
    events = replay_lines([_inst(None), _session("pre_open"), _order("B1", None, 10, "IOC"),
                           _order("S1", None, 10, "IOC"), _session("auction")])
    assert next(e for e in events if e["event"] == "auction")["price"] is None
    assert [e["reason"] for e in events if e["event"] == "cancelled"] == ["no_auction_price"] * 2


def test_an_order_filled_in_the_auction_counts_its_fills_in_the_book() -> None:
    # B1 buys 20 of its 30 in the auction; its 10 left trade in continuous trading, then it is replaced.
    events = replay_lines([_inst(), _session("pre_open"), _order("B1", 100, 30), _order("S1", 100, 20),
                           _session("auction"), _session("continuous"), _order("S2", 100, 4),
                           '{"op":"replace","oid":"B1","broker":"b","symbol":"X","qty":28}',
                           '{"op":"replace","oid":"B1","broker":"b","symbol":"X","qty":20}',
                           '{"op":"cancel","oid":"B1","broker":"b","symbol":"X"}'])
    trades = [e for e in events if e["event"] == "trade"]
    assert [(t["buy_oid"], t["qty"]) for t in trades] == [("B1", 20), ("B1", 4)]
    assert (trades[1]["resting_cum_qty"], trades[1]["resting_leaves_qty"]) == (24, 6)
    replaced = [e for e in events if e["event"] == "replaced"]
    assert [(e["qty"], e["leaves_qty"], e["cum_qty"]) for e in replaced] == [(28, 4, 24)]
    assert _reasons(events) == [("replace", "bad_field")]
    assert [(e["qty"], e["cum_qty"]) for e in events if e["event"] == "cancelled"] == [(4, 24)]


def test_the_close_publishes_the_closing_price_and_expires_day_orders() -> None:
    minute = 60 * 1_000_000_000
    events = replay_lines([_inst(), _session("pre_open"), _order("B9", None, 10, "IOC"), _order("S9", 100, 5),
                           _session("auction"), _session("continuous"),
                           _order("B1", 110, 10, "GTC"),
                           _order("S1", 110, 10),  # before the last 30 minutes: only the fallback would take it
                           _session("closing", ts=31 * minute), _session("closed", ts=60 * minute)], book=True)
    close = next(e for e in events if e["event"] == "close")
    assert (close["price"], close["qty"]) == ("110.00", 0)  # no trade in the window: the last traded price
    # The market B9 was left with 5 as a DAY limit at 100 (it was IOC): it expires with the day; the GTC stays.
    assert [(e["oid"], e["qty"], e["cum_qty"]) for e in events if e["event"] == "expired"] == [("B9", 5, 5)]
    assert [e["phase"] for e in events if e["event"] == "session"] == [
        "pre_open", "auction", "continuous", "closing", "closed"]


def test_the_closing_price_is_the_vwap_of_the_window_and_the_next_days_reference() -> None:
    # Two trades in the last half hour: (104 x 10 + 110 x 30) / 40 = 108.5, a half tick up: 109.
    ts = 10**12
    lines = [_inst(), _session("continuous"), _order("B1", 104, 10), _order("S1", 104, 10),
             _order("B2", 110, 30), _order("S2", 110, 30), _session("closing", ts=ts, vwap_from=0),
             _session("closed", ts=ts + 1), _session("pre_open"), _order("B3", None, 10, "IOC"),
             _order("S3", None, 10, "IOC"), _session("auction")]
    events = replay_lines(lines)
    assert [(e["price"], e["qty"]) for e in events if e["event"] == "close"] == [("109.00", 40)]
    assert next(e for e in events if e["event"] == "auction")["price"] == "109.00"  # rule: only market orders


def test_without_a_session_command_the_day_is_continuous() -> None:
    events = replay_lines([_inst(), _order("B1", 100, 10), _order("S1", 100, 10)])
    assert [e["event"] for e in events] == ["accepted", "accepted", "trade"]


def test_session_command_in_the_journal_and_the_replay_format() -> None:
    cmd = SessionChange(phase="closing", vwap_from=5, ts=7)
    assert decode_command(encode_command(cmd)) == cmd
    assert parse_command({"op": "session", "phase": "pre_open"}) == SessionChange(phase="pre_open")
    events = replay_lines(['{"op":"session","phase":"lunch"}', '{"op":"session"}'])
    assert [(e["reason"], e["text"]) for e in events] == [
        ("bad_field", "field 'phase' must be one of pre_open, auction, continuous, closing, closed, got 'lunch'"),
        ("missing_field", "missing field 'phase'")]


# -- the topology's [calendar] ----------------------------------------------------------------------------------------


def test_the_topology_reads_its_calendar_and_names_each_mistake() -> None:
    from tests.helpers import LOCAL
    from topology.load import check_text, loads

    text = LOCAL.read_text()
    assert loads(text).calendar is None  # no table: continuous trading all day
    topo = loads(text + '\n[calendar]\ncontinuous = "09:20"\nseed = 7\n')
    assert topo.calendar is not None and topo.calendar.seed == 7 and topo.calendar.timezone == topo.timezone
    assert topo.calendar.market == topo.name
    problems = check_text(text + '\n[calendar]\ncontinuous = "9h"\nscale = 60\nlunch = "13:00"\n')
    got = sorted((p.where, p.message) for p in problems)
    assert [w for w, _ in got] == ["calendar.anchor", "calendar.continuous", "calendar.lunch"]
    assert got[0][1].startswith("a compressed day (scale above 1) needs the instant it starts")
    assert got[1][1] == "must be a local time of day such as \"09:15\", got '9h'"
    assert got[2][1].startswith("unknown key (known: pre_open, entry_close")


def test_exfab_watch_shows_the_sessions_phase() -> None:
    from tools.watch import WatchTable

    class Md:  # the two reads of the market data client the line takes
        phase: str | None = "pre_open"

        def index(self) -> None:
            return None

        entry = True

        def market(self) -> dict[str, Any]:
            return {"t": "market", "state": "trading", "phase": self.phase, "entry": self.entry}

    md = Md()
    view = WatchTable(md, ["X"])  # type: ignore[arg-type]
    assert view.market_line() == "[bold]session[/] pre-open"
    md.phase = "closing"
    assert view.market_line() == "[bold]session[/] closing session"  # orders at the closing price
    md.entry = False
    assert view.market_line() == "[bold]session[/] closing"  # the closing price's minutes
    md.phase = None  # a market without a calendar shows no phase
    assert view.market_line() == ""


# -- the closing session: orders at the closing price -----------------------------------------------------------------


def _new(oid: str, broker: str, side: str, price: int | None, qty: int, tif: str = "DAY", **kw: Any) -> str:
    cmd: dict[str, Any] = {"op": "new", "oid": oid, "broker": broker, "symbol": "X", "side": side, "qty": qty,
                           "tif": tif, **kw}
    if price is None:
        cmd["type"] = "market"
    else:
        cmd.update(type="limit", price=str(price))
    return json.dumps(cmd)


def _op(op: str, oid: str, broker: str, **kw: Any) -> str:
    return json.dumps({"op": op, "oid": oid, "broker": broker, "symbol": "X", **kw})


# A day to the closing session: the close is 104 (the one trade, in the last half hour); a GTC buy rests at 104 in
# the continuous book.
_TO_CLOSING = [_inst("100", band_pct="10"), _session("continuous"), _new("b1", "b", "buy", 104, 10),
               _new("s1", "s", "sell", 104, 10), _new("g1", "b", "buy", 104, 5, "GTC"),
               _session("closing", ts=10**12, vwap_from=0)]


def test_the_closing_session_trades_at_the_closing_price_only() -> None:
    events = replay_lines([*_TO_CLOSING,
                           _new("c0", "s", "sell", 104, 1),  # 15:30-15:40: not yet
                           _session("closing", entry=True),
                           _new("c1", "s", "sell", 104, 5),  # at the close: rests in the closing book
                           _new("c2", "b", "buy", None, 3),  # a market order: the close, DAY
                           _new("c3", "b", "buy", 103, 3),  # another price: refused
                           _new("c4", "b", "buy", 104, 1, "GTC"),  # the session ends with the day
                           _new("c5", "b", "buy", None, 4, "IOC"),  # trades 2, the rest cancelled
                           _new("c6", "s", "sell", None, 6),
                           _session("closed")], book=True)
    assert _reasons(events) == [("new", "market_closed"), ("new", "not_closing_price"), ("new", "bad_time_in_force")]
    rej = {e["oid"]: e["text"] for e in events if e["event"] == "rejected"}
    assert rej["c3"].startswith("price 103.00 is not the closing price 104.00")
    assert rej["c4"] == "the closing session's orders end with the day: send DAY (or IOC, FOK), not GTC"
    assert [e for e in events if e["event"] == "session"][-2:] == [
        {"event": "session", "phase": "closing", "entry": True}, {"event": "session", "phase": "closed"}]
    trades = [(e["buy_oid"], e["sell_oid"], e["price"], e["qty"]) for e in events if e["event"] == "trade"]
    # The GTC buy resting at 104 in the continuous book takes no part: the closing session is a book of its own.
    assert trades[1:] == [("c2", "c1", "104.00", 3), ("c5", "c1", "104.00", 2)]
    accepted = next(e for e in events if e["event"] == "accepted" and e["oid"] == "c2")
    assert (accepted["type"], accepted.get("price"), accepted["tif"]) == ("market", None, "DAY")
    assert [(e["oid"], e["qty"], e["reason"]) for e in events if e["event"] == "cancelled"] == [
        ("c5", 2, "unfilled_ioc_remainder")]
    # The closing session's orders left expire as the market closes, with the day's DAY orders; the GTC stays.
    assert [(e["oid"], e["qty"]) for e in events if e["event"] == "expired"] == [("c6", 6)]
    assert _levels(events[-1]) == ([("104.00", 5)], [])


def test_closing_session_orders_are_cancelled_replaced_and_queried() -> None:
    from fabric.engine import MatchingEngine
    from tools.replay import Replayer

    r = Replayer(MatchingEngine())
    for line in [*_TO_CLOSING, _session("closing", entry=True), _new("c1", "s", "sell", 104, 5),
                 _new("c2", "s", "sell", 104, 5), _new("c3", "s", "sell", None, 5)]:
        r.apply_line(line)
    st = r.engine.order_status("X", "s", "c1")
    assert st is not None and (st.state, st.price, st.leaves_qty) == ("new", "104.00", 5)
    got = [r.apply_line(line) for line in [
        _op("replace", "c1", "s", price="105"),  # another price: refused
        _op("replace", "c3", "s", price="104"),  # a market order has no price to replace
        _op("replace", "c2", "s", qty=3),  # down: keeps its place, behind c1
        _op("replace", "c1", "s", qty=8, price="104"),  # up: to the back, behind c3
        _new("c4", "b", "buy", 104, 6),
        _op("cancel", "c2", "s"),
        _op("replace", "g1", "b", price="103"),  # the continuous book's order waits for continuous trading
    ]]
    assert [(e["reason"]) for e in got[0] + got[1] + got[6]] == ["not_closing_price", "bad_field", "market_closed"]
    assert got[2][0]["kept_priority"] is True and got[3][0]["kept_priority"] is False
    assert [(e["buy_oid"], e["sell_oid"], e["qty"]) for e in got[4] if e["event"] == "trade"] == [
        ("c4", "c2", 3), ("c4", "c3", 3)]
    assert [e["reason"] for e in got[5]] == ["order_closed"]  # c2 had filled in full
    st = r.engine.order_status("X", "s", "c3")
    assert st is not None and (st.state, st.type, st.price, st.cum_qty, st.leaves_qty) == (
        "partially_filled", "market", None, 3, 2)
    out = r.apply_line(_op("cancel", "c1", "s"))
    assert [(e["event"], e["qty"], e["cum_qty"]) for e in out] == [("cancelled", 8, 0)]


def test_a_symbol_without_a_close_takes_no_closing_session_orders() -> None:
    events = replay_lines([_inst(None), _session("continuous"), _session("closing", entry=True),
                           _new("c1", "s", "sell", 104, 5)])
    assert _reasons(events) == [("new", "market_closed")]
    assert "no closing price" in events[-1]["text"]


def test_session_entry_in_the_journal_and_the_replay_format() -> None:
    cmd = SessionChange(phase="closing", entry=True, ts=7)
    assert decode_command(encode_command(cmd)) == cmd
    # A journal from before the flag, and a replay line without it: the closing price's minutes, as before.
    assert b"entry" not in encode_command(SessionChange(phase="closing"))
    assert parse_command({"op": "session", "phase": "closing"}) == SessionChange(phase="closing", entry=False)
    events = replay_lines(['{"op":"session","phase":"pre_open","entry":true}',
                           '{"op":"session","phase":"closing","entry":"yes"}'])
    assert [(e["reason"], e["text"]) for e in events] == [
        ("bad_field", "field 'entry' is for the closing phase (its closing session), not pre_open, whose entry "
                      "follows from it"),
        ("bad_field", "field 'entry' must be true or false, got 'yes'")]


# -- the bands move to the new close -----------------------------------------------------------------------------------


def test_the_band_moves_to_the_close_orders_outside_it_are_cancelled() -> None:
    # Band 10 % around 100: 90-110. The day closes at 109, so the next day's band is 98.1-119.9: 99-119. The GTC buy
    # at 95 is outside it and leaves the book; the GTC sell at 110 stays. The next pre-open takes 115, refuses 95.
    lines = [_inst("100", band_pct="10"), _session("continuous"), _new("g1", "b", "buy", 95, 10, "GTC"),
             _new("g2", "s", "sell", 110, 10, "GTC"), _new("b1", "b", "buy", 109, 10), _new("s1", "s", "sell", 109, 10),
             _new("x", "b", "buy", 115, 1),  # outside today's band
             _session("closing", ts=10**12, vwap_from=0), _session("closed"), _session("pre_open"),
             _new("p1", "b", "buy", 115, 1), _new("p2", "b", "buy", 95, 1)]
    events = replay_lines(lines, book=True)
    assert [(e["oid"], e["qty"], e["reason"]) for e in events if e["event"] == "cancelled"] == [
        ("g1", 10, "outside_new_band")]
    assert [(e["oid"], e["reason"], e["text"]) for e in events if e["event"] == "rejected"] == [
        ("x", "price_out_of_band", "price 115 is outside the price band 90.00-110.00"),
        ("p2", "price_out_of_band", "price 95.00 is outside the price band 99.00-119.00")]
    assert _levels(events[-1]) == ([], [("110.00", 10)])


def test_the_band_moves_waiting_stops_outside_it_are_cancelled() -> None:
    # As above, the next day's band is 99-119. Of three GTC stops waiting (the day's trade at 109 reaches none), the
    # sell stop triggering at 92 and the one whose limit is 97 are outside it and leave; the buy SL-M at 110 stays.
    lines = [_inst("100", band_pct="10"), _session("continuous"),
             _new("t1", "s", "sell", 91, 5, "GTC", stop_price="92"),
             _new("t2", "s", "sell", 97, 5, "GTC", stop_price="100"),
             _new("t3", "b", "buy", None, 5, "GTC", stop_price="110"),
             _new("b1", "b", "buy", 109, 10), _new("s1", "s", "sell", 109, 10),
             _session("closing", ts=10**12, vwap_from=0), _session("closed"), _session("pre_open")]
    events = replay_lines(lines)
    assert [(e["oid"], e["qty"], e["reason"]) for e in events if e["event"] == "cancelled"] == [
        ("t2", 5, "outside_new_band"), ("t1", 5, "outside_new_band")]  # in trigger order: sells' descending
    assert not [e for e in events if e["event"] in ("rejected", "triggered")]
    from fabric.engine import MatchingEngine
    from tools.replay import Replayer
    r = Replayer(MatchingEngine())
    for line in lines:
        r.apply_line(line)
    st = r.engine.order_status("X", "b", "t3")
    assert st is not None and (st.state, st.stop_price, st.triggered) == ("new", "110.00", False)
    assert r.engine.books["X"].stop_queue(0) == [2] and r.engine.books["X"].stop_queue(1) == []


def test_a_book_refuses_a_band_that_leaves_a_waiting_stop_out() -> None:
    from fabric.book import OrderBook
    from fabric.constants import BUY, GTC, LIMIT, MARKET, SELL
    from fabric.reference import ReferenceBook

    for book in (OrderBook(band_lo=90, band_hi=110, slots=2), ReferenceBook(band_lo=90, band_hi=110)):
        book.new(0, 0, SELL, LIMIT, GTC, 95, 5, stop=96)
        book.new(1, 0, BUY, MARKET, GTC, 0, 5, stop=108)
        for lo, hi in ((96, 108), (95, 107)):  # the sell's limit price left out; the buy's trigger left out
            with pytest.raises(ValueError, match="outside the new band"):
                book.set_band(lo, hi, 100)
        book.set_band(95, 108, 100)
        assert book.stop_queue(SELL) == [0] and book.stop_queue(BUY) == [1]


def test_the_band_moves_in_both_books_and_the_compiled_ladder_is_laid_out_afresh() -> None:
    from fabric.book import OrderBook
    from fabric.constants import BUY, EV_ACCEPTED, EV_REJECTED, EV_TRADE, GTC, LIMIT, REJ_PRICE_OUT_OF_BAND, SELL
    from fabric.reference import ReferenceBook

    def rows(book: OrderBook | ReferenceBook, out: Any) -> list[list[int]]:
        return book.out[:out].tolist() if isinstance(book, OrderBook) else [list(r) for r in out]

    for book in (OrderBook(band_lo=90, band_hi=110, slots=2), ReferenceBook(band_lo=90, band_hi=110)):
        book.new(0, 0, BUY, LIMIT, GTC, 100, 5)
        book.new(1, 0, BUY, LIMIT, GTC, 100, 3)
        book.new(2, 1, SELL, LIMIT, GTC, 105, 4)
        book.new(3, 0, BUY, LIMIT, GTC, 99, 1)
        assert book.resting_orders(BUY) == [0, 1, 3] and book.resting_orders(SELL) == [2]
        with pytest.raises(ValueError, match="outside the new band"):
            book.set_band(100, 120, 110)
        book.set_band(95, 130, 110)
        assert book.depth(BUY) == [(100, 8, 2), (99, 1, 1)] and book.queue(BUY, 100) == [0, 1]
        assert [e[0] for e in rows(book, book.new(4, 1, SELL, LIMIT, GTC, 130, 1))] == [EV_ACCEPTED]  # inside now
        assert [(e[0], e[-1]) for e in rows(book, book.new(5, 1, SELL, LIMIT, GTC, 131, 1))] == [
            (EV_REJECTED, REJ_PRICE_OUT_OF_BAND)]
        trades = rows(book, book.new(6, 1, SELL, LIMIT, GTC, 99, 9))
        assert [(e[1], e[7], e[4]) for e in trades if e[0] == EV_TRADE] == [(6, 0, 5), (6, 1, 3), (6, 3, 1)]


# -- orders resting in the book join the pre-open's call auction -------------------------------------------------------


def test_gtc_orders_from_an_earlier_day_join_the_call_auction_ahead_of_the_pre_opens() -> None:
    from fabric.engine import MatchingEngine
    from tools.replay import Replayer

    r = Replayer(MatchingEngine())
    r.engine.track_levels = True
    setup = [_inst("100", band_pct="10"), _session("continuous"), _new("g1", "b", "buy", 99, 10, "GTC"),
             _new("g2", "s", "sell", 103, 10, "GTC"), _new("g3", "b", "buy", 98, 5, "GTC"),
             _session("closing"), _session("closed")]
    for line in setup:
        r.apply_line(line)
    r.engine.touched.clear()
    pre = [e for line in [_session("pre_open"), _new("p1", "c", "buy", 99, 10), _new("p2", "s", "sell", 99, 15),
                          _op("cancel", "g3", "b"), _op("replace", "g1", "b", price="100")]
           for e in r.apply_line(line)]
    # The book's orders count in the indicative price from the start of the pre-open.
    assert [(e["price"], e["qty"], e["unmatched"]) for e in pre if e["event"] == "indicative"] == [
        ("99.00", 15, 5)]
    assert [(e["oid"], e["reason"]) for e in pre if e["event"] in ("cancelled", "rejected")] == [
        ("g3", "requested"), ("g1", "market_closed")]
    assert next(e for e in pre if e["event"] == "rejected")["text"].startswith("order g1 rests in the book from")
    assert ("X", 0, 98) in r.engine.touched  # the cancel of a book order changes the depth
    events = r.apply_line(_session("auction"))
    auction = next(e for e in events if e["event"] == "auction")
    assert (auction["price"], auction["qty"], auction["unmatched"]) == ("99.00", 15, 5)
    # g1, from the book, is ahead of the pre-open's p1 at the same price; it keeps its place with what is left.
    assert [(e["buy_oid"], e["sell_oid"], e["qty"]) for e in events if e["event"] == "trade"] == [
        ("g1", "p2", 10), ("p1", "p2", 5)]
    assert ("X", 0, 99) in r.engine.touched
    assert r.books()[0]["bids"] == [["99.00", 5, 1]] and r.books()[0]["asks"] == [["103.00", 10, 1]]
    st = r.engine.order_status("X", "b", "g1")
    assert st is not None and (st.state, st.cum_qty) == ("filled", 10)
    events = [e for line in [_session("continuous"), _new("c1", "s", "sell", 98, 5)] for e in r.apply_line(line)]
    assert [(e["buy_oid"], e["price"], e["qty"]) for e in events if e["event"] == "trade"] == [("p1", "99.00", 5)]


def test_an_end_of_day_in_the_pre_open_takes_expired_orders_out_of_the_call_and_says_the_new_indicative() -> None:
    # A GTD buy from the book (its day 2026-01-05) and a GTC buy at 99 face a pre-open sell of 15 at 99: 15 would
    # trade. An end of day for 2026-01-05 (a replay's) expires the GTD order: 10 would trade, 5 unmatched.
    events = replay_lines([_inst("100"), _session("continuous"),
                           _new("g1", "b", "buy", 99, 10, "GTD", expire_date="2026-01-05"),
                           _new("g2", "b", "buy", 99, 10, "GTC"), _session("closing"), _session("pre_open"),
                           _new("p1", "s", "sell", 99, 15), '{"op":"end_of_day","date":"2026-01-05"}',
                           _session("auction")])
    ind = [(e["price"], e["qty"], e["unmatched"]) for e in events if e["event"] == "indicative"]
    assert ind == [("99.00", 15, 5), ("99.00", 10, 5)], ind
    assert [(e["oid"], e["qty"]) for e in events if e["event"] == "expired"] == [("g1", 10)]
    auction = next(e for e in events if e["event"] == "auction")
    assert (auction["price"], auction["qty"], auction["unmatched"]) == ("99.00", 10, 5)


def test_a_partly_filled_book_order_keeps_its_fills_through_the_call() -> None:
    events = replay_lines([_inst("100"), _session("continuous"), _new("g1", "b", "buy", 100, 20, "GTC"),
                           _new("s1", "s", "sell", 100, 5), _session("closing"), _session("closed"),
                           _session("pre_open"), _new("p1", "s", "sell", 100, 10), _session("auction"),
                           _session("continuous"), _op("replace", "g1", "b", qty=18),
                           _new("s2", "s", "sell", 100, 5)])
    fills = [(e["resting_cum_qty"] if e["sell_oid"] != "p1" else e["aggressor_cum_qty"], e["qty"])
             for e in events if e["event"] == "trade"]
    assert fills == [(5, 5), (15, 10), (18, 3)]
    replaced = next(e for e in events if e["event"] == "replaced")
    assert (replaced["qty"], replaced["cum_qty"], replaced["leaves_qty"], replaced["kept_priority"]) == (
        18, 15, 3, True)


# -- self-trade prevention in the call auction -------------------------------------------------------------------------


# docs/sessions.md, example 7: B1 and S3 are broker X's, B4 and S2 broker Y's (no mode); S3, the later of X's two,
# carries X's mode. Without it the price is 100 and 15 trade, B1 buying 10 from S3 first.
EXAMPLE_7 = [_new("B1", "X", "buy", 101, 10), _new("S2", "Y", "sell", 100, 5),
             _new("S3", "X", "sell", 99, 10, stp="{mode}"), _new("B4", "Y", "buy", 100, 5)]


@pytest.mark.parametrize(("mode", "cancelled", "auction", "trades"), [
    ("off", [], ("100.00", 15, 0), [("B1", "S3", 10), ("B4", "S2", 5)]),
    ("cancel_incoming", ["S3"], ("101.00", 5, 5), [("B1", "S2", 5)]),
    ("cancel_resting", ["B1"], ("99.00", 5, 5), [("B4", "S3", 5)]),
    ("cancel_both", ["B1", "S3"], ("100.00", 5, 0), [("B4", "S2", 5)]),
])
def test_example_7_self_trade_prevention_in_the_call(mode: str, cancelled: list[str], auction: tuple[str, int, int],
                                                     trades: list[tuple[str, str, int]]) -> None:
    events = replay_lines([_inst("100"), _session("pre_open"), *[o.replace("{mode}", mode) for o in EXAMPLE_7],
                           _session("auction")], book=True)
    indicative = [e for e in events if e["event"] == "indicative"][-1]
    assert (indicative["price"], indicative["qty"]) == ("100.00", 15)  # the collection's, whatever the modes
    got, trades_, book = _after_auction(events)
    assert [(e["oid"], e["reason"]) for e in events if e["event"] == "cancelled"] == [
        (oid, "self_trade") for oid in cancelled]
    assert (got["price"], got["qty"], got["unmatched"]) == auction
    assert trades_ == trades
    bids, asks = _levels(book)
    assert not (bids and asks and Decimal(bids[0][0]) >= Decimal(asks[0][0]))  # what is left never crosses


# -- the exchange's time zone -----------------------------------------------------------------------------------------


# 23:00 in New York on 5 January is already 6 January in Kolkata (09:30).
_NY_EVENING = int(dt.datetime(2026, 1, 6, 4, 0, tzinfo=dt.UTC).timestamp()) * 10**9


def test_a_gtd_order_is_taken_and_expires_on_the_day_of_the_engines_time_zone() -> None:
    from fabric.commands import EndOfDay, NewOrder
    from fabric.engine import MatchingEngine

    def gtd(expire: str) -> NewOrder:
        return NewOrder(oid=expire, broker="b", symbol="X", side="buy", type="limit", price="100", qty=1, tif="GTD",
                        expire_date=expire, ts=_NY_EVENING)

    ny, kolkata = MatchingEngine(timezone="America/New_York"), MatchingEngine()
    assert [type(o).__name__ for o in ny.apply(gtd("2026-01-05"))] == ["ExAccepted"]
    refused = kolkata.apply(gtd("2026-01-05"))
    assert [(type(o).__name__, getattr(o, "reason", None)) for o in refused] == [("ExRejected", "bad_expire_date")]
    assert "before the trading day 2026-01-06" in refused[0].text  # type: ignore[union-attr]
    assert [o.oid for o in ny.apply(EndOfDay(ts=_NY_EVENING))] == ["2026-01-05"]  # type: ignore[union-attr]
    # A GTD order of the 6th outlives the 5th's close in New York; in Kolkata that instant ends the 6th.
    for engine, expired in ((ny, []), (kolkata, ["2026-01-06"])):
        engine.apply(gtd("2026-01-06"))
        assert [o.oid for o in engine.apply(EndOfDay(ts=_NY_EVENING))] == expired  # type: ignore[union-attr]


def test_exfab_replay_closes_the_day_of_its_time_zone() -> None:
    lines = [_inst(), json.dumps({"op": "new", "oid": "g", "broker": "b", "symbol": "X", "side": "buy",
                                  "type": "limit", "price": "100", "qty": 1, "tif": "GTD",
                                  "expire_date": "2026-01-06"}),
             _session("closed", ts=_NY_EVENING)]
    assert [e["event"] for e in replay_lines(lines, timezone="America/New_York")] == ["accepted", "session"]
    assert [e["event"] for e in replay_lines(lines)] == ["accepted", "session", "expired"]


def test_the_matcher_counts_days_in_its_topologys_time_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fabric.commands import EndOfDay, NewOrder
    from nodes.matcher import Matcher
    from tests.helpers import LOCAL, topology_on_free_ports
    from topology.load import load

    path = topology_on_free_ports(LOCAL, tmp_path)
    path.write_text(path.read_text().replace('[exchange]\n', '[exchange]\ntimezone = "America/New_York"\n', 1))
    monkeypatch.chdir(tmp_path)  # the topology's data_dir is relative: its journal goes under the test's folder
    m = Matcher(load(path), load(path).shards[0].replicas[0].name, fsync="none")
    try:
        ts = _NY_EVENING  # 5 January in New York
        symbol = sorted(m.symbols)[0]
        price = m.instruments[symbol].to_price(m.instruments[symbol].ref_ticks)
        out = m.engine.apply(NewOrder(oid="g", broker="B1", symbol=symbol, side="buy", type="limit", price=price,
                                      qty=1, tif="GTD", expire_date="2026-01-05", ts=ts))
        assert [type(o).__name__ for o in out] == ["ExAccepted"]
        assert [type(o).__name__ for o in m.engine.apply(EndOfDay(ts=ts))] == ["ExExpired"]
    finally:
        m.journal.close()


def test_exfab_replay_takes_the_time_zone_and_names_a_bad_one() -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "replay", "--timezone", "Mars/Olympus", "-"], input="",
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "'Mars/Olympus' is not a time zone this machine knows" in proc.stderr


def test_reason_codes_are_unique() -> None:
    # Codes added on several branches must not share a number: a dict of names would lose one without a word.
    from fabric import constants

    for prefix, names in (("REJ_", constants.REJECT_NAMES), ("CXL_", constants.CANCEL_REASON_NAMES)):
        codes = [v for k, v in vars(constants).items() if k.startswith(prefix) and isinstance(v, int)]
        assert len(codes) == len(set(codes)) == len(names), prefix


def test_the_kill_switch_cancels_orders_of_the_call_and_of_the_closing_session() -> None:
    disable = json.dumps({"op": "admin", "action": "disable", "broker": "b"})
    events = replay_lines([_inst("100"), _session("continuous"), _new("g1", "b", "buy", 99, 10, "GTC"),
                           _session("closing"), _session("closed"), _session("pre_open"),
                           _new("p1", "b", "buy", 100, 5), _new("p2", "s", "sell", 98, 5), disable,
                           _session("auction")], book=True)
    kill = events[next(i for i, e in enumerate(events) if e["event"] == "indicative" and e["qty"] == 5) + 1:]
    assert [(e["oid"], e["reason"]) for e in kill if e["event"] == "cancelled"] == [
        ("g1", "kill_switch"), ("p1", "kill_switch")]
    assert [e["price"] for e in kill if e["event"] == "indicative"] == [None]  # nothing left to trade
    assert not [e for e in events if e["event"] == "trade"] and _levels(events[-1]) == ([], [("98.00", 5)])
    events = replay_lines([*_TO_CLOSING, _session("closing", entry=True), _new("c1", "b", "buy", 104, 5), disable,
                           _new("c2", "s", "sell", 104, 5)])
    assert [(e["oid"], e["reason"]) for e in events if e["event"] == "cancelled"] == [
        ("g1", "kill_switch"), ("c1", "kill_switch")]
    assert not [e for e in events if e["event"] == "trade" and e["sell_oid"] == "c2"]
