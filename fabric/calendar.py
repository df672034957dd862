"""The trading calendar of a market: which phase of the trading day an instant is in, and the closing price.

A trading day runs through five phases (``docs/sessions.md``), at the BSE's times
by default, in the exchange's time zone (``[exchange] timezone``)::

    closed      until 9:00
    pre_open    9:00 to the random close of order entry (a moment of 9:07-9:08): orders collected, not matched
    auction     the random close to 9:15: no entry; the call auction uncrosses as it begins (the exchange
                allows itself until 9:12), then the buffer to continuous trading
    continuous  9:15 to 15:30
    closing     15:30 to 16:00: no entry until 15:40 while the closing price is computed, then the closing
                session (orders at the closing price) from 15:40
    closed      from 16:00 to the next trading day's 9:00

:func:`session_at` answers for an instant (ns since the Unix epoch) with the phase,
whether orders are taken, and the next transition.  The random close of the
pre-open's entry window is drawn from a seed (:func:`random_close_offset`): every
process given the same seed, market and day draws the same moment, so a primary
and its secondary close the entry window together.

A *compressed* calendar (``scale > 1``) runs the same day faster for the demo: from
its ``anchor`` (an instant, which stands for ``start``, 8:59 by default, of the
anchor's local date) the exchange's clock runs ``scale`` times as fast as the real
one, so with ``scale = 60`` an hour of the day passes in a minute.  Every day of a
compressed calendar trades (no weekends, no holidays).

The closing price (:func:`closing_price`) is the volume-weighted price of the trades
of the last 30 minutes of continuous trading, as the BSE computes it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Phase = Literal["pre_open", "auction", "continuous", "closing", "closed"]
PHASES: Final[tuple[Phase, ...]] = ("pre_open", "auction", "continuous", "closing", "closed")
ClosingSource = Literal["vwap", "last", "previous"]
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_EPOCH: Final = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_MS: Final = 1_000_000  # ns


class CalendarError(ValueError):
    """A calendar that cannot run a trading day."""


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _ns(moment: _dt.datetime) -> int:
    return (moment - _EPOCH) // _dt.timedelta(microseconds=1) * 1000


@dataclass(frozen=True, slots=True)
class SessionTimes:
    """The times of a trading day, local to the exchange.

    Parameters
    ----------
    pre_open
        Order entry of the pre-open opens.
    entry_close
        The latest moment the entry window closes; it closes at a random moment of
        the ``random_close`` before it.
    random_close
        How long before ``entry_close`` the random close may fall (whole milliseconds).
    matching_end
        The auction's matching is done by then (the uncross runs as the auction begins).
    continuous
        Continuous trading opens.
    continuous_end
        Continuous trading ends; the closing price is computed.
    closing_session
        The closing session takes orders (at the closing price) from here.
    close
        The market closes.
    vwap_window
        The closing price is the volume-weighted price of this last stretch of continuous trading.
    """

    pre_open: _dt.time = _dt.time(9, 0)
    entry_close: _dt.time = _dt.time(9, 8)
    random_close: _dt.timedelta = _dt.timedelta(minutes=1)
    matching_end: _dt.time = _dt.time(9, 12)
    continuous: _dt.time = _dt.time(9, 15)
    continuous_end: _dt.time = _dt.time(15, 30)
    closing_session: _dt.time = _dt.time(15, 40)
    close: _dt.time = _dt.time(16, 0)
    vwap_window: _dt.timedelta = _dt.timedelta(minutes=30)

    def problems(self) -> list[tuple[str, str]]:
        """Return what is wrong with these times, as ``(key, reason)``; empty when they make a day."""
        out: list[tuple[str, str]] = []
        order = ("pre_open", "entry_close", "matching_end", "continuous", "continuous_end", "closing_session",
                 "close")
        for a, b in itertools.pairwise(order):
            ta, tb = getattr(self, a), getattr(self, b)
            strict = a not in ("entry_close", "matching_end", "continuous_end")  # these may coincide with the next
            if tb < ta or (strict and tb == ta):
                out.append((b, f"{tb.isoformat()} must come {'after' if strict else 'no earlier than'} "
                               f"{a} ({ta.isoformat()})"))
        for name in order:
            t = getattr(self, name)
            if t.tzinfo is not None or t.microsecond % 1000:
                out.append((name, f"{t.isoformat()} must be a local time of day in whole milliseconds"))
        rc = self.random_close
        if rc <= _dt.timedelta(0) or rc % _dt.timedelta(milliseconds=1):
            out.append(("random_close", f"must be a positive whole number of milliseconds, got {rc}"))
        elif _secs(self.entry_close) - _secs(self.pre_open) <= rc.total_seconds():
            out.append(("random_close", f"{rc} leaves no time for order entry between pre_open and entry_close"))
        vw = self.vwap_window
        if vw <= _dt.timedelta(0) or vw % _dt.timedelta(milliseconds=1):
            out.append(("vwap_window", f"must be a positive whole number of milliseconds, got {vw}"))
        elif vw.total_seconds() > _secs(self.continuous_end) - _secs(self.continuous):
            out.append(("vwap_window", f"{vw} is longer than continuous trading"))
        return out


def _secs(t: _dt.time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


BSE: Final = SessionTimes()
"""The BSE's equity session (pre-open 9:00-9:08 with a random close in the last minute, matching to 9:12, continuous
9:15-15:30, closing session 15:40-16:00)."""


@dataclass(frozen=True, slots=True)
class Calendar:
    """A market's trading calendar.

    Parameters
    ----------
    market
        The market's name; part of what the random close is drawn from.
    timezone
        The exchange's time zone (an IANA name), in which ``times`` are read.
    times
        The day's times.
    weekdays
        The days of the week that trade (0 Monday ... 6 Sunday).
    holidays
        Dates that do not trade, though their weekday does.
    seed
        The seed the market's random closes are drawn from (callers pass it to :func:`session_at`).
    scale
        1 for a real day; above 1 the compressed day, that many times as fast.
    anchor
        Compressed only: the instant (ns since the Unix epoch) at which the exchange's clock shows ``start``.
    start
        Compressed only: the time of day the anchor stands for, on the anchor's local date.
    """

    market: str = "BSE"
    timezone: str = "Asia/Kolkata"
    times: SessionTimes = BSE
    weekdays: frozenset[int] = frozenset(range(5))
    holidays: frozenset[_dt.date] = frozenset()
    seed: int = 0
    scale: int = 1
    anchor: int | None = None
    start: _dt.time = _dt.time(8, 59)
    _origin: int = field(init=False, default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            zone = _zone(self.timezone)
        except (ValueError, ZoneInfoNotFoundError):
            raise CalendarError(f"{self.timezone!r} is not a time zone this machine knows") from None
        bad = self.times.problems()
        if bad:
            raise CalendarError("; ".join(f"{k}: {why}" for k, why in bad))
        if not self.weekdays or not self.weekdays <= frozenset(range(7)):
            raise CalendarError(f"weekdays must be a non-empty set of 0 (Monday) to 6, got {sorted(self.weekdays)}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise CalendarError(f"scale must be a whole number of at least 1, got {self.scale!r}")
        if self.scale == 1:
            if self.anchor is not None:
                raise CalendarError("an anchor is for a compressed calendar only (scale above 1)")
            return
        if self.anchor is None:
            raise CalendarError("a compressed calendar (scale above 1) needs an anchor: the instant its day starts")
        local = (_EPOCH + _dt.timedelta(microseconds=self.anchor // 1000)).astimezone(zone).date()
        object.__setattr__(self, "_origin", _ns(_dt.datetime.combine(local, self.start, zone)))

    # -- the exchange's clock ----------------------------------------------------------------------------------------

    def clock(self, instant: int) -> int:
        """Return the exchange's clock (ns) at the real ``instant``: the same for a real day, faster when compressed."""
        if self.anchor is None:
            return instant
        return self._origin + (instant - self.anchor) * self.scale

    def real(self, clock: int) -> int:
        """Return the first real instant at which the exchange's clock has reached ``clock``."""
        if self.anchor is None:
            return clock
        return self.anchor - (-(clock - self._origin) // self.scale)  # ceiling division

    def trades_on(self, day: _dt.date) -> bool:
        """Whether ``day`` is a trading day."""
        return self.scale > 1 or (day.weekday() in self.weekdays and day not in self.holidays)

    def next_trading_day(self, day: _dt.date) -> _dt.date:
        """Return the first trading day after ``day``."""
        for k in range(1, 8 + len(self.holidays)):
            d = day + _dt.timedelta(days=k)
            if self.trades_on(d):
                return d
        raise CalendarError(f"no trading day after {day}")  # unreachable: a weekday trades within a week of holidays

    def day(self, day: _dt.date, seed: int) -> TradingDay:
        """Return the transitions of the trading day ``day`` as real instants (ns).

        Raises
        ------
        CalendarError
            When ``day`` does not trade.
        """
        if not self.trades_on(day):
            raise CalendarError(f"{day} is not a trading day of {self.market}")
        zone = _zone(self.timezone)
        t = self.times

        def at(when: _dt.time) -> int:
            return _ns(_dt.datetime.combine(day, when, zone))

        entry_close = at(t.entry_close) - t.random_close // _dt.timedelta(microseconds=1) * 1000
        entry_close += random_close_offset(seed, self.market, day, t.random_close) * _MS
        vwap_ns = t.vwap_window // _dt.timedelta(microseconds=1) * 1000
        return TradingDay(
            day=day,
            pre_open=self.real(at(t.pre_open)),
            entry_close=self.real(entry_close),
            matching_end=self.real(at(t.matching_end)),
            continuous=self.real(at(t.continuous)),
            vwap_from=self.real(at(t.continuous_end) - vwap_ns),
            continuous_end=self.real(at(t.continuous_end)),
            closing_session=self.real(at(t.closing_session)),
            close=self.real(at(t.close)),
        )


@dataclass(frozen=True, slots=True)
class TradingDay:
    """One trading day's transitions, as real instants (ns since the Unix epoch).

    ``entry_close`` is the day's random close of the pre-open's order entry;
    ``vwap_from``-``continuous_end`` is the stretch the closing price is taken over.
    """

    day: _dt.date
    pre_open: int
    entry_close: int
    matching_end: int
    continuous: int
    vwap_from: int
    continuous_end: int
    closing_session: int
    close: int


@dataclass(frozen=True, slots=True)
class Session:
    """Where an instant is in the trading day.

    ``entry`` says whether orders are taken (pre-open, continuous, the closing
    session); ``until`` is the next transition, the first instant (ns) at which
    the phase or ``entry`` differs; ``day`` is the trading day of the phase (for
    ``closed``, the next one).
    """

    phase: Phase
    entry: bool
    until: int
    day: _dt.date


def random_close_offset(seed: int, market: str, day: _dt.date, window: _dt.timedelta = BSE.random_close) -> int:
    """Return the random close of ``day``'s order entry, in ms after the start of its last ``window``.

    The moment is a hash (BLAKE2b, 8 bytes, big-endian) of ``"<seed>|<market>|<YYYY-MM-DD>"``
    modulo the window's milliseconds: the same for every process given the same
    seed, market and day, different from day to day and from market to market,
    and unknown to anyone who does not know the seed.
    """
    span = window // _dt.timedelta(milliseconds=1)
    digest = hashlib.blake2b(f"{seed}|{market}|{day.isoformat()}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % span


def session_at(calendar: Calendar, instant: int, seed: int) -> Session:
    """Return the phase of ``calendar`` at ``instant`` (ns since the Unix epoch) and its next transition.

    ``seed`` draws the random close of the pre-open (:func:`random_close_offset`);
    pass the calendar's ``seed`` so that every node agrees.
    """
    # The clock's local date, exactly (the day's times are whole milliseconds; a float could round across midnight).
    clock = _EPOCH + _dt.timedelta(microseconds=calendar.clock(instant) // 1000)
    today = clock.astimezone(_zone(calendar.timezone)).date()
    if calendar.trades_on(today):
        td = calendar.day(today, seed)
        if instant < td.pre_open:
            return Session("closed", False, td.pre_open, today)
        stretches: tuple[tuple[int, Phase, bool], ...] = (
            (td.entry_close, "pre_open", True),
            (td.continuous, "auction", False),
            (td.continuous_end, "continuous", True),
            (td.closing_session, "closing", False),
            (td.close, "closing", True),
        )
        for until, phase, entry in stretches:
            if instant < until:
                return Session(phase, entry, until, today)
    nxt = calendar.next_trading_day(today)
    return Session("closed", False, calendar.day(nxt, seed).pre_open, nxt)


def closing_price(trades: Iterable[tuple[int, int, int]], day: TradingDay,
                  prev_close: int) -> tuple[int, ClosingSource]:
    """Return the closing price of ``day`` in ticks, and how it was found.

    ``trades`` are the day's trades as ``(price ticks, qty, ts ns)``, in the order
    they happened.  The price is the volume-weighted price of the trades in
    ``[day.vwap_from, day.continuous_end)``, rounded to the nearest tick (a half
    tick up): ``"vwap"``.  With no trade there, the last trade before
    ``continuous_end`` (the latest by time; of equal times, the later given):
    ``"last"``.  With no trade at all, ``prev_close``: ``"previous"``.
    """
    num = den = 0
    last: tuple[int, int] | None = None  # (ts, price)
    for price, qty, ts in trades:
        if ts >= day.continuous_end:
            continue
        if last is None or ts >= last[0]:
            last = (ts, price)
        if ts >= day.vwap_from:
            num += price * qty
            den += qty
    if den:
        return (2 * num + den) // (2 * den), "vwap"
    if last is not None:
        return last[1], "last"
    return prev_close, "previous"


# -- the topology's [calendar] table -----------------------------------------------------------------------------------

CALENDAR_KEYS: Final = ("pre_open", "entry_close", "random_close_s", "matching_end", "continuous", "continuous_end",
                        "closing_session", "close", "vwap_minutes", "weekdays", "holidays", "seed", "scale", "anchor",
                        "start")
_TIME_KEYS: Final = ("pre_open", "entry_close", "matching_end", "continuous", "continuous_end", "closing_session",
                     "close", "start")


def calendar_from_table(tbl: Mapping[str, Any], market: str, timezone: str,
                        where: str = "calendar") -> tuple[Calendar | None, list[tuple[str, str]]]:
    """Read a topology's ``[calendar]`` table (parsed TOML) into a :class:`Calendar`.

    Every key is optional (the BSE's day by default)::

        [calendar]
        pre_open = "09:00"          # local times, "HH:MM" or "HH:MM:SS" (a TOML local time is accepted too)
        entry_close = "09:08"       # the latest close of the pre-open's order entry ...
        random_close_s = 60         # ... which falls at a random moment of this many seconds before it
        matching_end = "09:12"
        continuous = "09:15"
        continuous_end = "15:30"
        closing_session = "15:40"
        close = "16:00"
        vwap_minutes = 30           # the closing price's stretch of continuous trading
        weekdays = ["mon", "tue", "wed", "thu", "fri"]
        holidays = ["2026-01-26"]   # dates (a TOML local date is accepted too)
        seed = 0                    # draws the random close; every node of the market reads the same
        scale = 1                   # above 1: the compressed day, that many times as fast (60: hours -> minutes)
        anchor = 2026-12-07T08:59:00+05:30   # compressed only, required: the instant the day starts
        start = "08:59"             # compressed only: the time of day the anchor stands for

    Returns the calendar, or ``None`` and every problem as ``(where, reason)``.
    """
    problems: list[tuple[str, str]] = []

    def bad(key: str, reason: str) -> None:
        problems.append((f"{where}.{key}", reason))

    for k in tbl:
        if k not in CALENDAR_KEYS:
            bad(k, f"unknown key (known: {', '.join(CALENDAR_KEYS)})")
    times: dict[str, Any] = {}
    for k in _TIME_KEYS:
        if k in tbl:
            t = _time_of(tbl[k])
            if t is None:
                bad(k, f"must be a local time of day such as \"09:15\", got {tbl[k]!r}")
            else:
                times[k] = t
    for key, unit, name in (("random_close_s", "seconds", "random_close"), ("vwap_minutes", "minutes", "vwap_window")):
        if key in tbl:
            v = tbl[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(key, f"must be a positive whole number of {unit}, got {v!r}")
            else:
                times[name] = _dt.timedelta(**{unit: v})
    weekdays = frozenset(range(5))
    if "weekdays" in tbl:
        v = tbl["weekdays"]
        if not isinstance(v, list) or not v or any(x not in WEEKDAYS for x in v):
            bad("weekdays", f"must be a non-empty list of {', '.join(WEEKDAYS)}, got {v!r}")
        else:
            weekdays = frozenset(WEEKDAYS.index(x) for x in v)
    holidays: set[_dt.date] = set()
    for i, v in enumerate(tbl.get("holidays", [])) if isinstance(tbl.get("holidays", []), list) else ():
        d = _date_of(v)
        if d is None:
            bad(f"holidays[{i}]", f"must be a date such as \"2026-01-26\", got {v!r}")
        else:
            holidays.add(d)
    if not isinstance(tbl.get("holidays", []), list):
        bad("holidays", f"must be a list of dates, got {tbl['holidays']!r}")
    ints: dict[str, int] = {}
    for key, least in (("seed", 0), ("scale", 1)):
        if key in tbl:
            v = tbl[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                bad(key, f"must be a whole number of at least {least}, got {v!r}")
            else:
                ints[key] = v
    scale = ints.get("scale", 1)
    anchor: int | None = None
    if "anchor" in tbl:
        anchor = _instant_of(tbl["anchor"])
        if anchor is None:
            bad("anchor", "must be an instant with its offset such as 2026-12-07T08:59:00+05:30, "
                          f"got {tbl['anchor']!r}")
        elif scale == 1:
            bad("anchor", "is for a compressed day only: set scale above 1 too, or remove it")
    elif scale > 1:
        bad("anchor", "a compressed day (scale above 1) needs the instant it starts, e.g. anchor = "
                      "2026-12-07T08:59:00+05:30 (every node of the market must read the same)")
    if "start" in times and scale == 1:
        bad("start", "is for a compressed day only: set scale above 1 too, or remove it")
    start = times.pop("start", _dt.time(8, 59))
    st = SessionTimes(**times)
    for key, why in st.problems():
        bad({"random_close": "random_close_s", "vwap_window": "vwap_minutes"}.get(key, key), why)
    if problems:
        return None, problems
    try:
        cal = Calendar(market=market, timezone=timezone, times=st, weekdays=weekdays, holidays=frozenset(holidays),
                       seed=ints.get("seed", 0), scale=scale, anchor=anchor, start=start)
    except CalendarError as e:
        return None, [(where, str(e))]
    return cal, []


def _time_of(v: object) -> _dt.time | None:
    if isinstance(v, _dt.time):
        return v if v.tzinfo is None else None
    if not isinstance(v, str) or len(v) not in (5, 8) or v[2] != ":":
        return None
    try:
        return _dt.time.fromisoformat(v)
    except ValueError:
        return None


def _date_of(v: object) -> _dt.date | None:
    if isinstance(v, _dt.datetime):
        return None
    if isinstance(v, _dt.date):
        return v
    if not isinstance(v, str):
        return None
    try:
        return _dt.date.fromisoformat(v)
    except ValueError:
        return None


def _instant_of(v: object) -> int | None:
    if isinstance(v, str):
        try:
            v = _dt.datetime.fromisoformat(v)
        except ValueError:
            return None
    if not isinstance(v, _dt.datetime) or v.tzinfo is None:
        return None
    return _ns(v)
