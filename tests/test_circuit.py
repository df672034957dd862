"""The market index's arithmetic (fabric.index) and the circuit breakers' table (fabric.circuit), with its edges."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from fabric.circuit import SEBI_LEVELS, Level, halt_text, level_of, parse_duration, parse_halts, trip
from fabric.index import MarketIndex
from topology.load import check_text, loads

IST = ZoneInfo("Asia/Kolkata")
D = Decimal


def at(h: int, m: int, s: int = 0) -> dt.datetime:
    return dt.datetime(2026, 12, 7, h, m, s, tzinfo=IST)


MIDNIGHT = dt.datetime(2026, 12, 8, tzinfo=IST)


# ---------------------------------------------------------------------------------------------------------- index


def test_index_equals_base_at_previous_close() -> None:
    ix = MarketIndex("IX", D(1000), [("A", D(10), D(100)), ("B", D(5), D(200))])
    assert ix.value == D(1000)
    assert ix.change_pct == 0
    assert ix.fields()["value"] == "1000.00"


def test_index_value_is_weighted_sum_over_reference_sum() -> None:
    ix = MarketIndex("IX", D(1000), [("A", D(10), D(100)), ("B", D(5), D(200))])
    assert ix.trade("A", D(110))
    # 1000 * (10*110 + 5*200) / (10*100 + 5*200) = 1000 * 2100 / 2000
    assert ix.value == D(1050)
    assert ix.trade("B", D(180))
    assert ix.value == 1000 * (D(10) * 110 + D(5) * 180) / D(2000)
    assert ix.change_pct == D("0")  # 2000 / 2000
    assert ix.high == D(1050) and ix.low == D(1000)


def test_index_ignores_other_symbols_and_unchanged_prices() -> None:
    ix = MarketIndex("IX", D(100), [("A", D(1), D(50))])
    assert not ix.trade("Z", D(1))
    assert not ix.trade("A", D(50))
    assert ix.trade("A", D("50.05"))
    assert ix.fields() == {"name": "IX", "value": "100.10", "prev_close": "100.00", "change": "0.10",
                           "change_pct": "0.10", "high": "100.10", "low": "100.00", "constituents": 1}


def test_index_adjusting_one_term_equals_recomputing() -> None:
    cons = [(f"S{i}", D(i + 1) * 7, D(100 + i)) for i in range(30)]
    ix = MarketIndex("IX", D(1000), cons)
    last = {s: r for s, _, r in cons}
    for k in range(3000):
        s = f"S{k * 7 % 30}"
        p = D(90 + k % 23) + D("0.05") * (k % 3)
        ix.trade(s, p)
        last[s] = p
    full = 1000 * sum(w * last[s] for s, w, _ in cons) / sum(w * r for _, w, r in cons)
    assert ix.value == full


def test_index_keeps_bars_of_its_value_for_the_history() -> None:
    ix = MarketIndex("IX", D(1000), [("A", D(1), D(100))])
    t0 = 1_764_063_000_000_000_000
    ix.trade("A", D("101.234"), t0 + 1)
    ix.trade("A", D(99), t0 + 2)
    ix.trade("A", D(100), t0 + 1_500_000_000)
    one_s = ix.bars["1s"].bars()
    assert [(b.start, b.open, b.high, b.low, b.close, b.trades, b.volume) for b in one_s] == [
        (t0, D("1012.34"), D("1012.34"), D("990.00"), D("990.00"), 2, 0),
        (t0 + 1_000_000_000, D("1000.00"), D("1000.00"), D("1000.00"), D("1000.00"), 1, 0)]
    assert len(ix.bars["1m"].bars()) == 1


def test_index_reset_puts_symbols_back_at_reference() -> None:
    ix = MarketIndex("IX", D(1000), [("A", D(1), D(100)), ("B", D(1), D(100))])
    ix.trade("A", D(120))
    ix.trade("B", D(80))
    ix.reset(["A"])
    assert ix.value == D(900)


@pytest.mark.parametrize(("cons", "base", "why"), [
    ([], D(1), "no constituents"),
    ([("A", D(0), D(1))], D(1), "must be positive"),
    ([("A", D(1), D(1)), ("A", D(1), D(1))], D(1), "twice"),
    ([("A", D(1), D(1))], D(0), "base must be positive"),
])
def test_index_bad_definitions_are_refused(cons: list[tuple[str, Decimal, Decimal]], base: Decimal, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        MarketIndex("IX", base, cons)


# ---------------------------------------------------------------------------------------------------- the table


@pytest.mark.parametrize(("move", "now", "level", "until"), [
    # 10 %: before 13:00 45 min; 13:00-14:30 15 min; at or after 14:30 none.
    ("-10", at(9, 30), 10, at(10, 15)),
    ("10.5", at(12, 59, 59), 10, at(13, 44, 59)),
    ("-10", at(13, 0), 10, at(13, 15)),
    ("-12", at(14, 29, 59), 10, at(14, 44, 59)),
    ("-10", at(14, 30), None, None),
    ("-14.99", at(15, 0), None, None),
    # 15 %: before 13:00 1 h 45 min; 13:00-14:00 45 min; at or after 14:00 the rest of the day.
    ("-15", at(10, 0), 15, at(11, 45)),
    ("15", at(12, 59), 15, at(14, 44)),
    ("-15", at(13, 0), 15, at(13, 45)),
    ("-19.9", at(13, 59), 15, at(14, 44)),
    ("-15", at(14, 0), 15, MIDNIGHT),
    ("-15", at(15, 29), 15, MIDNIGHT),
    # 20 %: any time, the rest of the day.
    ("-20", at(9, 15), 20, MIDNIGHT),
    ("20", at(13, 30), 20, MIDNIGHT),
    ("-25", at(15, 20), 20, MIDNIGHT),
    # Below every level.
    ("-9.99", at(10, 0), None, None),
    ("9.99", at(10, 0), None, None),
    ("0", at(10, 0), None, None),
])
def test_sebi_table_row(move: str, now: dt.datetime, level: int | None, until: dt.datetime | None) -> None:
    t = trip(D(move), now, ())
    if level is None:
        assert t is None
    else:
        assert t is not None
        assert (t.level, t.until) == (D(level), until)


def test_each_level_trips_once_a_day() -> None:
    assert trip(D(-11), at(10, 0), [D(10)]) is None
    assert trip(D(-16), at(10, 0), [D(10), D(15)]) is None
    t = trip(D(-16), at(11, 0), [D(10)])
    assert t is not None and t.level == D(15)
    assert trip(D(-21), at(11, 0), [D(10), D(15), D(20)]) is None


def test_a_move_past_a_higher_level_trips_the_higher() -> None:
    t = trip(D(-17), at(10, 0), ())
    assert t is not None and t.level == D(15) and t.until == at(11, 45)


def test_custom_levels_from_the_topology_apply() -> None:
    levels = (Level(D("0.5"), parse_halts([["24:00", "30s"]])),)
    t = trip(D("-0.5"), at(15, 0), (), levels)
    assert t is not None and t.until == at(15, 0, 30)
    assert trip(D("-0.49"), at(15, 0), (), levels) is None


def test_halt_text_names_its_level() -> None:
    t = trip(D("-10.314"), at(11, 0), ())
    assert t is not None
    text = halt_text(t.level, "SENSEX", D("-10.314"), D("896.86"), t.until)
    assert text == "circuit breaker 10 %: SENSEX down 10.31 % at 896.86, halted until 11:45:00"
    assert level_of(text) == D(10)
    assert level_of("operator: lunch") is None
    assert level_of(None) is None
    day = halt_text(D(20), "SENSEX", D(21), D(1210), MIDNIGHT)
    assert day.endswith("until the end of the day") and "up 21.00 %" in day


def test_sebi_defaults() -> None:
    assert [lv.pct for lv in SEBI_LEVELS] == [10, 15, 20]


@pytest.mark.parametrize(("text", "seconds"), [("45m", 2700), ("1h45m", 6300), ("30s", 30), ("day", None)])
def test_parse_duration(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "45", "0m", "1d", "m"])
def test_parse_duration_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|0 seconds"):
        parse_duration(text)


@pytest.mark.parametrize(("rows", "why"), [
    ([], "non-empty"),
    ([["13:00"]], "pair"),
    ([["25:00", "1m"]], "time of day"),
    ([["14:00", "1m"], ["13:00", "1m"]], "after the row before"),
    ([["13:00", "soon"]], "not a duration"),
])
def test_parse_halts_refuses_bad_rows(rows: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_halts(rows)


# ------------------------------------------------------------------------------------------------- the topology

_TOPO = """
[exchange]
name = "t"
[[instruments]]
symbol = "A"
ref_price = "100"
[[instruments]]
symbol = "B"
ref_price = "50"
[[instruments]]
symbol = "C"
[[shards]]
name = "S"
symbols = ["A", "B", "C"]
host = "127.0.0.1"
order_port = 7010
pub_port = 7011
recovery_port = 7012
[[gateways]]
name = "gw"
host = "127.0.0.1"
port = 7001
"""


def test_topology_index_with_defaults_loads() -> None:
    topo = loads(_TOPO + '[index]\nname = "IX"\nbase = "1000"\n[index.constituents]\nA = 10\nB = "2.5"\n')
    assert topo.index is not None
    assert topo.index.constituents == (("A", D(10)), ("B", D("2.5")))
    assert topo.index.breakers == SEBI_LEVELS and topo.index.operator is None


def test_topology_index_breakers_load() -> None:
    topo = loads(_TOPO + '[[brokers]]\nid = "OPS"\nrole = "operator"\n'
                 '[index]\nname = "IX"\nbase = "1000"\noperator = "OPS"\n[index.constituents]\nA = 1\n'
                 '[[index.breakers]]\npct = "1"\nhalts = [["24:00", "1m"]]\n'
                 '[[index.breakers]]\npct = "2"\nhalts = [["12:00", "5m"], ["24:00", "day"]]\n')
    assert topo.index is not None and topo.index.operator == "OPS"
    assert [lv.pct for lv in topo.index.breakers] == [1, 2]
    assert topo.index.breakers[1].halts[1][1] is None


@pytest.mark.parametrize(("extra", "where", "why"), [
    ('[index]\nbase = "1"\n[index.constituents]\nA = 1\n', "index", 'missing required key "name"'),
    ('[index]\nname = "IX"\n[index.constituents]\nA = 1\n', "index", 'key "base"'),
    ('[index]\nname = "IX"\nbase = "-1"\n[index.constituents]\nA = 1\n', "index.base", "positive"),
    ('[index]\nname = "IX"\nbase = "1"\n', "index", "constituents"),
    ('[index]\nname = "IX"\nbase = "1"\n[index.constituents]\nZZ = 1\n', "index.constituents.ZZ", "not an instrument"),
    ('[index]\nname = "IX"\nbase = "1"\n[index.constituents]\nC = 1\n', "index.constituents.C", "no ref_price"),
    ('[index]\nname = "IX"\nbase = "1"\n[index.constituents]\nA = 0\n', "index.constituents.A", "positive"),
    ('[index]\nname = "IX"\nbase = "1"\n[index.constituents]\nA = 1.5\n', "index.constituents.A", "decimal string"),
    ('[index]\nname = "IX"\nbase = "1"\nlevels = 3\n[index.constituents]\nA = 1\n', "index", "unknown key"),
    ('[index]\nname = "A"\nbase = "1"\n[index.constituents]\nA = 1\n', "index.name", "an instrument's symbol"),
    ('[index]\nname = "ix"\nbase = "1"\n[index.constituents]\nA = 1\n', "index.name", "A-Z, 0-9"),
    ('[[brokers]]\nid = "B1"\n[index]\nname = "IX"\nbase = "1"\noperator = "OPS"\n[index.constituents]\nA = 1\n',
     "index.operator", "not an operator among the [[brokers]]"),
    ('[[brokers]]\nid = "OPS"\n[index]\nname = "IX"\nbase = "1"\noperator = "OPS"\n[index.constituents]\nA = 1\n',
     "index.operator", 'role = "operator"'),
    ('[index]\nname = "IX"\nbase = "1"\n[index.constituents]\nA = 1\n[[index.breakers]]\npct = "2"\n'
     'halts = [["24:00", "1m"]]\n[[index.breakers]]\npct = "1"\nhalts = [["24:00", "1m"]]\n', "pct", "lowest first"),
    ('[index]\nname = "IX"\nbase = "1"\n[index.constituents]\nA = 1\n[[index.breakers]]\npct = "1"\n'
     'halts = [["24:00", "forever"]]\n', "halts", "not a duration"),
])
def test_topology_index_mistakes_are_reported(extra: str, where: str, why: str) -> None:
    problems = check_text(_TOPO + extra)
    assert any(where in p.where and why in p.message for p in problems), problems
