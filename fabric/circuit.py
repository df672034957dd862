"""Market-wide circuit breakers: when a move of the market index halts the whole market, and until when.

A pure module (no sockets, no clock of its own): the ticker asks :func:`trip` on every index change, with
the index's move from its previous close, the time in the exchange's time zone, and the levels already
tripped that day; it answers ``None`` or the :class:`Trip` to carry out.  ``docs/security.md``, section
"Market-wide circuit breakers", states the rules; :data:`SEBI_LEVELS` is SEBI's table for the BSE:

======  ========================  =========================  ==========================
move    before 13:00              13:00 to 14:30 (14:00)     later
======  ========================  =========================  ==========================
10 %    45 minutes                15 minutes (until 14:30)   no halt
15 %    1 hour 45 minutes         45 minutes (until 14:00)   the rest of the day
20 %    the rest of the day       the rest of the day        the rest of the day
======  ========================  =========================  ==========================

A move is in either direction; each level trips once a day; a move past a higher level trips it (and
counts the lower ones as tripped).  A halt's text names its level (:func:`halt_text`), so a ticker that
reads the market's halts back from the matchers' streams knows what tripped today (:func:`level_of`).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

__all__ = [
    "DAY",
    "SEBI_LEVELS",
    "Level",
    "Trip",
    "halt_text",
    "level_of",
    "parse_duration",
    "parse_halts",
    "trip",
]

DAY: Final = None  # a row's halt "for the rest of the day"


@dataclass(frozen=True, slots=True)
class Level:
    """One breaker level: a move of ``pct`` percent, and its halt by time of day.

    ``halts`` is ``(before, seconds)`` rows in time order: a trip before ``before`` (local time, exclusive)
    halts for ``seconds`` (``None``: the rest of the day); a trip at or after the last row's ``before``
    does not halt.
    """

    pct: Decimal
    halts: tuple[tuple[_dt.time, int | None], ...]

    def halt_at(self, t: _dt.time) -> tuple[bool, int | None]:
        """Return (whether a trip at ``t`` halts, for how many seconds: ``None`` for the rest of the day)."""
        for before, seconds in self.halts:
            if t < before:
                return True, seconds
        return False, None


_END: Final = _dt.time(23, 59, 59, 999999)  # "until the day ends": a row that covers every time of the day

SEBI_LEVELS: Final = (
    Level(Decimal(10), ((_dt.time(13), 45 * 60), (_dt.time(14, 30), 15 * 60))),
    Level(Decimal(15), ((_dt.time(13), 105 * 60), (_dt.time(14), 45 * 60), (_END, DAY))),
    Level(Decimal(20), ((_END, DAY),)),
)


@dataclass(frozen=True, slots=True)
class Trip:
    """A breaker to trip: ``level`` (percent) halts the market until ``until`` (aware local time)."""

    level: Decimal
    until: _dt.datetime


def trip(move_pct: Decimal, now: _dt.datetime, tripped: Iterable[Decimal],
         levels: tuple[Level, ...] = SEBI_LEVELS) -> Trip | None:
    """Return the breaker a move of ``move_pct`` percent trips at ``now``, or ``None``.

    Parameters
    ----------
    move_pct
        The index's move from its previous close, in percent (negative: down); a move trips a level when
        its size is at least the level's.
    now
        The time, aware, in the exchange's time zone.
    tripped
        The levels that tripped today already: they do not trip again.
    levels
        The table, lowest level first (default SEBI's).

    Returns
    -------
    Trip | None
        The highest level crossed, when it has not tripped today and halts at this time of day; ``until``
        is ``now`` plus the halt, or the next midnight for the rest of the day.
    """
    size = abs(move_pct)
    done = set(tripped)
    crossed = [lv for lv in levels if size >= lv.pct]
    if not crossed:
        return None
    top = crossed[-1]
    if top.pct in done:
        return None
    halts, seconds = top.halt_at(now.timetz().replace(tzinfo=None))
    if not halts:
        return None
    if seconds is DAY:
        day_end = _dt.datetime.combine(now.date() + _dt.timedelta(days=1), _dt.time(), now.tzinfo)
        return Trip(top.pct, day_end)
    return Trip(top.pct, now + _dt.timedelta(seconds=seconds))


def halt_text(level: Decimal, index: str, move_pct: Decimal, value: Decimal, until: _dt.datetime) -> str:
    """Return the text of a breaker's halt: ``"circuit breaker 10 %: SENSEX down 10.31 % at 897.40, until 11:45"``.

    :func:`level_of` reads the level back from it.
    """
    way = "down" if move_pct < 0 else "up"
    end = "the end of the day" if until.time() == _dt.time() else until.strftime("%H:%M:%S")
    return (f"circuit breaker {level.normalize():f} %: {index} {way} {abs(move_pct).quantize(Decimal('0.01'))} % "
            f"at {value.quantize(Decimal('0.01'))}, halted until {end}")


_LEVEL: Final = re.compile(r"circuit breaker ([0-9]+(?:\.[0-9]+)?) %")


def level_of(text: str | None) -> Decimal | None:
    """Return the level a halt's text names (:func:`halt_text`), or ``None`` for another halt's text."""
    m = _LEVEL.match(text or "")
    return Decimal(m.group(1)) if m else None


_DURATION: Final = re.compile(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?\Z")
_CLOCK: Final = re.compile(r"([0-9]{1,2}):([0-9]{2})\Z")


def parse_duration(text: str) -> int | None:
    """Return the seconds of ``"1h45m"``, ``"45m"``, ``"30s"``; ``None`` for ``"day"`` (the rest of the day).

    Raises
    ------
    ValueError
        When the text is neither.
    """
    if text == "day":
        return DAY
    m = _DURATION.match(text)
    if not text or m is None:
        raise ValueError(f"{text!r} is not a duration (write \"45m\", \"1h45m\", \"30s\" or \"day\")")
    h, mi, s = (int(g or 0) for g in m.groups())
    if h * 3600 + mi * 60 + s <= 0:
        raise ValueError(f"{text!r}: a halt lasts more than 0 seconds")
    return h * 3600 + mi * 60 + s


def parse_halts(rows: object) -> tuple[tuple[_dt.time, int | None], ...]:
    """Return a level's ``halts`` from a topology's ``[["13:00", "45m"], ["14:30", "15m"]]`` (``"24:00"``: day's end).

    Raises
    ------
    ValueError
        When a row is not ``[HH:MM, duration]`` or the times do not increase.
    """
    if not isinstance(rows, list) or not rows:
        raise ValueError("halts must be a non-empty array of [\"HH:MM\", duration] pairs")
    out: list[tuple[_dt.time, int | None]] = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row)):
            raise ValueError(f"{row!r} is not a [\"HH:MM\", duration] pair of strings")
        m = _CLOCK.match(row[0])
        if m is None or int(m.group(1)) > 24 or int(m.group(2)) > 59 or (int(m.group(1)) == 24 and m.group(2) != "00"):
            raise ValueError(f"{row[0]!r} is not a time of day (HH:MM, 00:00 to 24:00)")
        before = _END if row[0] == "24:00" else _dt.time(int(m.group(1)), int(m.group(2)))
        if out and before <= out[-1][0]:
            raise ValueError(f"{row[0]!r} is not after the row before it: give the rows in time order")
        out.append((before, parse_duration(row[1])))
    return tuple(out)
