"""The trading calendar (fabric/calendar.py): phase boundaries, the random close, the compressed day, time zones,
the closing price and the topology's [calendar] table."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from zoneinfo import ZoneInfo

import pytest

from fabric.calendar import (
    BSE,
    Calendar,
    CalendarError,
    SessionTimes,
    calendar_from_table,
    closing_price,
    random_close_offset,
    session_at,
)

IST = ZoneInfo("Asia/Kolkata")
MONDAY = dt.date(2026, 12, 7)
SEED = 42
S = 1_000_000_000  # ns


def _at(day: dt.date, h: int, m: int, s: int = 0, zone: ZoneInfo = IST) -> int:
    return int(dt.datetime(day.year, day.month, day.day, h, m, s, tzinfo=zone).timestamp()) * S


def test_a_bse_day_runs_through_every_phase_at_its_times() -> None:
    cal = Calendar()
    close = cal.day(MONDAY, SEED).entry_close
    # (instant, phase, orders taken, next transition)
    expected = [
        (_at(MONDAY, 0, 0), "closed", False, _at(MONDAY, 9, 0)),
        (_at(MONDAY, 9, 0) - 1, "closed", False, _at(MONDAY, 9, 0)),
        (_at(MONDAY, 9, 0), "pre_open", True, close),
        (close - 1, "pre_open", True, close),
        (close, "auction", False, _at(MONDAY, 9, 15)),
        (_at(MONDAY, 9, 12), "auction", False, _at(MONDAY, 9, 15)),
        (_at(MONDAY, 9, 15) - 1, "auction", False, _at(MONDAY, 9, 15)),
        (_at(MONDAY, 9, 15), "continuous", True, _at(MONDAY, 15, 30)),
        (_at(MONDAY, 15, 30) - 1, "continuous", True, _at(MONDAY, 15, 30)),
        (_at(MONDAY, 15, 30), "closing", False, _at(MONDAY, 15, 40)),
        (_at(MONDAY, 15, 40) - 1, "closing", False, _at(MONDAY, 15, 40)),
        (_at(MONDAY, 15, 40), "closing", True, _at(MONDAY, 16, 0)),
        (_at(MONDAY, 16, 0) - 1, "closing", True, _at(MONDAY, 16, 0)),
        (_at(MONDAY, 16, 0), "closed", False, _at(MONDAY + dt.timedelta(days=1), 9, 0)),
        (_at(MONDAY, 23, 59, 59), "closed", False, _at(MONDAY + dt.timedelta(days=1), 9, 0)),
    ]
    for instant, phase, entry, until in expected:
        s = session_at(cal, instant, SEED)
        got = (s.phase, s.entry, s.until)
        assert got == (phase, entry, until), f"at {dt.datetime.fromtimestamp(instant / S, IST)}"
    assert _at(MONDAY, 9, 0) == int(dt.datetime(2026, 12, 7, 3, 30, tzinfo=dt.UTC).timestamp()) * S  # IST is +5:30


def test_following_the_transitions_visits_the_phases_in_order() -> None:
    cal = Calendar()
    t, seen = _at(MONDAY, 8, 0), []
    while t < _at(MONDAY, 20, 0):
        s = session_at(cal, t, SEED)
        seen.append((s.phase, s.entry))
        assert s.until > t
        t = s.until
    assert seen == [("closed", False), ("pre_open", True), ("auction", False), ("continuous", True),
                    ("closing", False), ("closing", True), ("closed", False)]


def test_weekends_and_holidays_stay_closed_until_the_next_trading_day() -> None:
    friday, monday = dt.date(2026, 12, 4), MONDAY
    cal = Calendar(holidays=frozenset({monday}))
    for instant in (_at(friday, 16, 0), _at(dt.date(2026, 12, 5), 10, 0), _at(monday, 10, 0)):
        s = session_at(cal, instant, SEED)
        assert (s.phase, s.until, s.day) == ("closed", _at(dt.date(2026, 12, 8), 9, 0), dt.date(2026, 12, 8))
    with pytest.raises(CalendarError, match="2026-12-07 is not a trading day of BSE"):
        cal.day(monday, SEED)


def test_the_random_close_falls_in_the_last_minute_of_entry_and_is_reproducible() -> None:
    cal = Calendar()
    offsets = set()
    for k in range(200):
        day = MONDAY + dt.timedelta(days=k)
        if not cal.trades_on(day):
            continue
        close = cal.day(day, SEED).entry_close
        assert _at(day, 9, 7) <= close < _at(day, 9, 8)
        assert close == cal.day(day, SEED).entry_close  # the same seed, the same moment
        assert (close - _at(day, 9, 7)) % 1_000_000 == 0  # a whole millisecond
        offsets.add(close - _at(day, 9, 7))
    assert len(offsets) > 100  # a different moment from day to day
    assert len({random_close_offset(seed, "BSE", MONDAY) for seed in range(50)}) > 45  # and from seed to seed
    assert random_close_offset(SEED, "BSE", MONDAY) != random_close_offset(SEED, "NSE", MONDAY)
    assert cal.day(MONDAY, 42).entry_close == _at(MONDAY, 9, 7, 43) + 212_000_000  # docs/sessions.md, section 1


def test_another_process_draws_the_same_random_close() -> None:
    # A primary and its secondary are separate processes: the draw must not depend on the process (no hash()).
    code = ("import datetime; from fabric.calendar import random_close_offset as r; "
            "print(r(42, 'BSE', datetime.date(2026, 12, 7)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert int(out.stdout) == random_close_offset(42, "BSE", MONDAY)
    assert 0 <= int(out.stdout) < 60_000


def test_the_compressed_day_runs_the_same_phases_in_minutes() -> None:
    anchor = _at(dt.date(2026, 12, 5), 14, 0)  # a Saturday afternoon: a compressed day trades every day
    cal = Calendar(scale=60, anchor=anchor)
    t, seen = anchor, []
    while t < anchor + 30 * 60 * S:
        s = session_at(cal, t, SEED)
        seen.append((s.phase, s.entry, (s.until - anchor) / S))
        t = s.until
    close = (cal.day(dt.date(2026, 12, 5), SEED).entry_close - anchor) / S
    assert 8 <= close < 9  # 8:59 + 8 minutes, less the random close's one minute: seconds 8 to 9
    assert seen[:7] == [
        ("closed", False, 1.0),  # 8:59 to 9:00 is a second
        ("pre_open", True, close),
        ("auction", False, 16.0),  # 9:15
        ("continuous", True, 391.0),  # 15:30: six and a half minutes of trading
        ("closing", False, 401.0),
        ("closing", True, 421.0),  # 16:00
        ("closed", False, 24 * 60 + 1.0),  # to the next (virtual) day's 9:00, 24 minutes on
    ]
    assert seen[7][0] == "pre_open"
    assert cal.clock(cal.real(cal.clock(anchor) + 7)) >= cal.clock(anchor) + 7


def test_the_compressed_close_is_drawn_from_the_seed_too() -> None:
    anchor = _at(MONDAY, 9, 0)
    a, b = Calendar(scale=60, anchor=anchor), Calendar(scale=60, anchor=anchor)
    assert session_at(a, anchor + 5 * S, SEED) == session_at(b, anchor + 5 * S, SEED)
    closes = {session_at(a, anchor + 2 * S, seed).until for seed in range(20)}
    assert len(closes) > 15 and all(anchor + 8 * S <= c < anchor + 9 * S for c in closes)


def test_the_times_are_read_in_the_exchanges_time_zone() -> None:
    ny = ZoneInfo("America/New_York")
    cal = Calendar(timezone="America/New_York")
    winter, summer = dt.date(2026, 12, 7), dt.date(2026, 7, 7)
    for day, utc_hour in ((winter, 14), (summer, 13)):  # 9:00 in New York: UTC-5 in winter, UTC-4 in summer
        s = session_at(cal, _at(day, 8, 0, zone=ny), SEED)
        assert s.until == _at(day, 9, 0, zone=ny)
        assert dt.datetime.fromtimestamp(s.until / S, dt.UTC).hour == utc_hour
    # 10:00 in Mumbai is 23:30 the day before in New York: continuous in one, closed in the other.
    instant = _at(MONDAY, 10, 0)
    assert session_at(Calendar(), instant, SEED).phase == "continuous"
    assert session_at(cal, instant, SEED).phase == "closed"


def test_a_calendar_that_cannot_run_a_day_says_why() -> None:
    with pytest.raises(CalendarError, match="'Mars/Olympus' is not a time zone"):
        Calendar(timezone="Mars/Olympus")
    with pytest.raises(CalendarError, match=r"continuous: 09:10:00 must come no earlier than matching_end \(09:12"):
        Calendar(times=SessionTimes(continuous=dt.time(9, 10)))
    with pytest.raises(CalendarError, match=r"a compressed calendar \(scale above 1\) needs an anchor"):
        Calendar(scale=60)
    with pytest.raises(CalendarError, match="an anchor is for a compressed calendar only"):
        Calendar(anchor=0)
    with pytest.raises(CalendarError, match="weekdays must be a non-empty set"):
        Calendar(weekdays=frozenset())
    assert SessionTimes(random_close=dt.timedelta(minutes=9)).problems() == [
        ("random_close", "0:09:00 leaves no time for order entry between pre_open and entry_close")]


# -- the closing price -----------------------------------------------------------------------------------------------

def test_the_closing_price_is_the_volume_weighted_price_of_the_last_half_hour() -> None:
    day = Calendar().day(MONDAY, SEED)
    assert day.vwap_from == _at(MONDAY, 15, 0) and day.continuous_end == _at(MONDAY, 15, 30)
    trades = [
        (990, 500, _at(MONDAY, 14, 59, 59)),  # before the half hour: not counted
        (1000, 100, _at(MONDAY, 15, 0)),  # its first instant: counted
        (1010, 300, _at(MONDAY, 15, 20)),
        (1003, 100, _at(MONDAY, 15, 30) - 1),
        (1200, 999, _at(MONDAY, 15, 45)),  # the closing session: not continuous trading
    ]
    # (1000*100 + 1010*300 + 1003*100) / 500 = 1006.6 -> 1007
    assert closing_price(trades, day, 950) == (1007, "vwap")


def test_the_closing_price_rounds_a_half_tick_up() -> None:
    day = Calendar().day(MONDAY, SEED)
    assert closing_price([(100, 1, day.vwap_from), (101, 1, day.vwap_from + 1)], day, 1) == (101, "vwap")
    assert closing_price([(100, 2, day.vwap_from), (101, 1, day.vwap_from + 1)], day, 1) == (100, "vwap")


def test_without_trades_in_the_half_hour_the_closing_price_is_the_last_price_else_the_previous_close() -> None:
    day = Calendar().day(MONDAY, SEED)
    early = [(1020, 10, _at(MONDAY, 11, 0)), (1030, 5, _at(MONDAY, 14, 0)), (1010, 5, _at(MONDAY, 9, 15))]
    assert closing_price(early, day, 950) == (1030, "last")  # the latest by time, whatever the order given
    assert closing_price([(1200, 1, _at(MONDAY, 15, 45))], day, 950) == (950, "previous")
    assert closing_price([], day, 950) == (950, "previous")


# -- the topology's [calendar] table ---------------------------------------------------------------------------------

def test_an_empty_calendar_table_is_the_bse_day() -> None:
    cal, problems = calendar_from_table({}, "local", "Asia/Kolkata")
    assert problems == [] and cal == Calendar(market="local") and cal.times == BSE


def test_a_calendar_table_is_read_with_every_key() -> None:
    tbl = {"pre_open": "09:30", "entry_close": "09:38", "random_close_s": 30, "matching_end": dt.time(9, 40),
           "continuous": "09:45", "continuous_end": "16:00", "closing_session": "16:00", "close": "16:10:30",
           "vwap_minutes": 15, "weekdays": ["mon", "wed"], "holidays": ["2026-12-09", dt.date(2026, 12, 14)],
           "seed": 7, "scale": 60, "anchor": "2026-12-07T09:29:00-05:00", "start": "09:29"}
    cal, problems = calendar_from_table(tbl, "NYSE", "America/New_York")
    assert problems == [] and cal is not None
    assert cal.times == SessionTimes(dt.time(9, 30), dt.time(9, 38), dt.timedelta(seconds=30), dt.time(9, 40),
                                     dt.time(9, 45), dt.time(16, 0), dt.time(16, 0), dt.time(16, 10, 30),
                                     dt.timedelta(minutes=15))
    assert cal.weekdays == {0, 2} and cal.holidays == {dt.date(2026, 12, 9), dt.date(2026, 12, 14)}
    assert (cal.seed, cal.scale, cal.start) == (7, 60, dt.time(9, 29))
    assert cal.anchor == int(dt.datetime(2026, 12, 7, 14, 29, tzinfo=dt.UTC).timestamp()) * S
    assert session_at(cal, cal.anchor + S, 7).phase == "pre_open"


def test_a_bad_calendar_table_gives_every_problem_with_its_place() -> None:
    tbl = {"pre_open": "9am", "random_close_s": 0, "weekdays": ["monday"], "holidays": ["26/01/2026"],
           "scale": 60, "continuous_end": "09:10", "colour": "red"}
    cal, problems = calendar_from_table(tbl, "BSE", "Asia/Kolkata")
    assert cal is None
    assert problems == [
        ("calendar.colour", "unknown key (known: pre_open, entry_close, random_close_s, matching_end, continuous, "
                            "continuous_end, closing_session, close, vwap_minutes, weekdays, holidays, seed, scale, "
                            "anchor, start)"),
        ("calendar.pre_open", "must be a local time of day such as \"09:15\", got '9am'"),
        ("calendar.random_close_s", "must be a positive whole number of seconds, got 0"),
        ("calendar.weekdays", "must be a non-empty list of mon, tue, wed, thu, fri, sat, sun, got ['monday']"),
        ("calendar.holidays[0]", "must be a date such as \"2026-01-26\", got '26/01/2026'"),
        ("calendar.anchor", "a compressed day (scale above 1) needs the instant it starts, e.g. anchor = "
                            "2026-12-07T08:59:00+05:30 (every node of the market must read the same)"),
        ("calendar.continuous_end", "09:10:00 must come after continuous (09:15:00)"),
        ("calendar.vwap_minutes", "0:30:00 is longer than continuous trading"),
    ]
    _, problems = calendar_from_table({"anchor": "2026-12-07T08:59:00"}, "BSE", "Asia/Kolkata")
    assert problems == [("calendar.anchor", "must be an instant with its offset such as 2026-12-07T08:59:00+05:30, "
                                            "got '2026-12-07T08:59:00'")]
