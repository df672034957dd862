"""The trading day in the engine and in ``exfab replay``: the pre-open, the call auction, the close.

The worked examples of ``docs/sessions.md`` (section 3) are replayed through the
replay format, each checked against the numbers printed there; then the rules
around them: what each phase takes and refuses, what is left after the auction,
orders carried into the book, the closing price and the DAY orders' expiry.
"""

from __future__ import annotations

import json
import subprocess
import sys
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

        def market(self) -> dict[str, Any]:
            return {"t": "market", "state": "trading", "phase": self.phase}

    md = Md()
    view = WatchTable(md, ["X"])  # type: ignore[arg-type]
    assert view.market_line() == "[bold]session[/] pre-open"
    md.phase = None  # a market without a calendar shows no phase
    assert view.market_line() == ""
