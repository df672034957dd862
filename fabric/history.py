"""Price history of the ticker node: ticks and bars in SQLite or InfluxDB, and the thread that writes them.

The ticker sends every trade (a :class:`TickRecord`) and every bar it changed (a
:class:`BarRecord`) to a :class:`HistoryWriter`, which writes them in batches on a
thread of its own into the store the topology's ``[stores] history`` names
(:func:`open_history`):

- :class:`SQLiteHistory` (``"sqlite"``): one file, prices as decimal text (exact).
- :class:`InfluxHistory` (``"influxdb"``): an InfluxDB 1.x server through its
  ``/write`` and ``/query`` endpoints (the ``influxdb`` client package).

Both stores keep the same contract (:class:`HistoryStore`): writing a bar whose
``(symbol, interval, start)`` is already stored replaces it, and so does writing a
tick whose ``(symbol, trade_id, ts)`` is (trade ids start again at 1 with each new journal, a new
trading day, so the id alone is not a key); reads return the records of a half-open time
range ``[start_ns, end_ns)``, oldest first.  Stored intervals are ``1s`` and ``1m``;
``5m``, ``15m``, ``1h`` and ``1d`` bars are made from ``1m`` bars when read
(:func:`aggregate`, :func:`query_bars`), aligned on UTC (the epoch).

While the store is down the writer keeps every point and retries with a growing
delay; nothing is dropped (``docs/market-data.md``, section 7).

InfluxDB layout
---------------
Measurement ``bars``: tags ``symbol`` and ``interval``; fields ``open``, ``high``,
``low``, ``close`` (floats), ``volume``, ``trades`` and ``dp`` (integers); time
the bar's ``start``.  Measurement ``ticks``: tag ``symbol``; fields ``trade_id``,
``ts``, ``qty``, ``dp`` (integers), ``price`` (float), ``aggressor`` (string);
time, see below.  Times are written with nanosecond precision.

*Prices* are stored as floats (so that InfluxQL can compute with them) and read
back as ``Decimal(repr(value))``: the shortest decimal that gives the same float,
which is the price written whenever it has at most 15 significant digits (any
price of an exchange).  ``dp`` holds the number of decimal places the price was
written with (for a bar, the most of its four prices), so that ``3500.00`` comes
back as ``3500.00``, not ``3500.0``.

*Tick times.*  InfluxDB keeps one point per series and time, and two trades of one
symbol can carry the same ``ts`` (one aggressor order filling several resting
orders).  A tick is therefore written at the time ``max(ts, t_prev + 1)``, where
``t_prev`` is the time the symbol's previous stored trade (the highest stored
``trade_id`` below this one) was written at: strictly increasing per symbol, in
``trade_id`` order.  The time depends only on the trade and the trades stored
before it, so rewriting the same trades (a retry, a restarted ticker replaying the
day) rewrites the same points.  The trade's own ``ts`` is kept in the ``ts`` field
and is what :meth:`InfluxHistory.ticks` returns and selects on; a tick is found
when its written time is less than :data:`TICK_TIME_SLACK_NS` (one second) past
its ``ts``, that is unless more than a billion trades of one symbol share one
nanosecond, or the trade clock went back by more than a second (a failover to a
replica whose clock is behind).  The upsert by ``(symbol, trade_id)`` holds for a
rewritten trade with the same ``ts`` (trades do not change).
"""

from __future__ import annotations

import abc
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeVar
from urllib.parse import unquote, urlsplit

from fabric.marketstate import INTERVALS as STORED_INTERVAL_NS
from fabric.marketstate import Bar, TapeEntry

__all__ = [
    "INTERVALS",
    "STORED_INTERVALS",
    "TICK_TIME_SLACK_NS",
    "BarRecord",
    "HistoryError",
    "HistoryStore",
    "HistoryWriter",
    "InfluxHistory",
    "SQLiteHistory",
    "StoreUnavailable",
    "TickRecord",
    "aggregate",
    "check_symbol",
    "interval_ns",
    "open_history",
    "query_bars",
]

log = logging.getLogger("exfab.history")

_NS_MINUTE: Final = 60_000_000_000
INTERVALS: Final[dict[str, int]] = {
    **STORED_INTERVAL_NS,
    "5m": 5 * _NS_MINUTE,
    "15m": 15 * _NS_MINUTE,
    "1h": 60 * _NS_MINUTE,
    "1d": 24 * 60 * _NS_MINUTE,
}  # bar lengths in ns; every start is a multiple of its length (UTC-aligned)
STORED_INTERVALS: Final[tuple[str, ...]] = tuple(STORED_INTERVAL_NS)  # ("1s", "1m"); the others come from "1m"
TICK_TIME_SLACK_NS: Final = 1_000_000_000  # how far past its ts a tick's InfluxDB time may be and still be found

_SYMBOL = re.compile(r"[A-Z0-9&._-]+")
_MIN_NS: Final = -(2**63) + 2  # InfluxDB's smallest and largest times; SQLite's INTEGER is int64 too
_MAX_NS: Final = 2**63 - 2
_INFLUX_PAGE: Final = 10_000  # rows per InfluxDB query (servers may cap rows per response)
_INFLUX_LINES: Final = 5_000  # points per InfluxDB write request
_LOOKUP_STATEMENTS: Final = 100  # previous-tick lookups per InfluxDB query request


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class HistoryError(Exception):
    """A history store that failed to do what it was asked."""


class StoreUnavailable(HistoryError):
    """The store's server cannot be reached (or answered a server error): worth retrying later."""


# ---------------------------------------------------------------------------
# Intervals and symbols
# ---------------------------------------------------------------------------


def interval_ns(name: str) -> int:
    """Return the length in nanoseconds of the bar interval ``name`` (``"1s"``, ``"1m"``, ..., ``"1d"``).

    Raises
    ------
    ValueError
        ``bad_interval ...`` when ``name`` is not one of :data:`INTERVALS`.
    """
    try:
        return INTERVALS[name]
    except (KeyError, TypeError):
        raise ValueError(f"bad_interval {name!r}: expected one of {', '.join(INTERVALS)}") from None


def check_symbol(symbol: str) -> str:
    """Return ``symbol`` when it is a valid symbol (``[A-Z0-9&._-]+``).

    Raises
    ------
    HistoryError
        For anything else (it could not be used safely in a query).
    """
    if not isinstance(symbol, str) or _SYMBOL.fullmatch(symbol) is None:
        raise HistoryError(f"bad symbol {symbol!r}: a symbol is made of A-Z, 0-9, '&', '.', '_' and '-'")
    return symbol


def _clamp(ns: int) -> int:
    return min(max(int(ns), _MIN_NS), _MAX_NS)


def _places(price: Decimal) -> int:
    exp = price.as_tuple().exponent
    return -exp if isinstance(exp, int) and exp < 0 else 0


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


def _check_price(name: str, value: object) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal, got {value!r}")


def _check_count(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True, slots=True)
class BarRecord:
    """One stored OHLCV bar.

    Attributes
    ----------
    symbol
        ``[A-Z0-9&._-]+``.
    interval
        A name of :data:`INTERVALS` (``"1s"`` and ``"1m"`` are stored; the others are made when read).
    start
        The bar's first nanosecond since the epoch, a multiple of the interval.
    open, high, low, close
        Prices.
    volume, trades
        Quantity traded and number of trades in the bar.

    Raises
    ------
    ValueError
        When a field is out of its domain.
    """

    symbol: str
    interval: str
    start: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    trades: int

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or _SYMBOL.fullmatch(self.symbol) is None:
            raise ValueError(f"bad symbol {self.symbol!r}: a symbol is made of A-Z, 0-9, '&', '.', '_' and '-'")
        length = interval_ns(self.interval)
        if not isinstance(self.start, int) or isinstance(self.start, bool) or self.start % length:
            raise ValueError(f"{self.symbol} {self.interval} bar: start must be a multiple of {length} ns, "
                             f"got {self.start!r}")
        for name in ("open", "high", "low", "close"):
            _check_price(name, getattr(self, name))
        _check_count("volume", self.volume, 0)
        _check_count("trades", self.trades, 0)

    @classmethod
    def from_bar(cls, symbol: str, interval: str, bar: Bar) -> BarRecord:
        """Return the record of the ticker's :class:`~fabric.marketstate.Bar` ``bar``."""
        return cls(symbol, interval, bar.start, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades)

    @property
    def places(self) -> int:
        """The most decimal places among the four prices."""
        return max(_places(self.open), _places(self.high), _places(self.low), _places(self.close))

    def to_json(self) -> dict[str, Any]:
        """Return the bar as ``/history`` shows it: ``start``, ``start_ns``, prices as strings, ``volume``, ``trades``.

        ``start_ns`` is ``start`` as exact decimal text: JavaScript's numbers round integers above 2**53.
        """
        return {"start": self.start, "start_ns": str(self.start), "open": str(self.open), "high": str(self.high),
                "low": str(self.low), "close": str(self.close), "volume": self.volume, "trades": self.trades}


@dataclass(frozen=True, slots=True)
class TickRecord:
    """One stored trade.

    Attributes
    ----------
    symbol
        ``[A-Z0-9&._-]+``.
    trade_id
        The symbol's trade number, from 1.
    ts
        The trade's time, nanoseconds since the epoch.
    price, qty
        Price and quantity.
    aggressor
        The side of the incoming order: ``"buy"`` or ``"sell"``.

    Raises
    ------
    ValueError
        When a field is out of its domain.
    """

    symbol: str
    trade_id: int
    ts: int
    price: Decimal
    qty: int
    aggressor: Literal["buy", "sell"]

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or _SYMBOL.fullmatch(self.symbol) is None:
            raise ValueError(f"bad symbol {self.symbol!r}: a symbol is made of A-Z, 0-9, '&', '.', '_' and '-'")
        _check_count("trade_id", self.trade_id, 1)
        if not isinstance(self.ts, int) or isinstance(self.ts, bool):
            raise ValueError(f"ts must be an integer (ns since the epoch), got {self.ts!r}")
        _check_price("price", self.price)
        _check_count("qty", self.qty, 0)
        if self.aggressor not in ("buy", "sell"):
            raise ValueError(f"aggressor must be 'buy' or 'sell', got {self.aggressor!r}")

    @classmethod
    def from_tape(cls, symbol: str, entry: TapeEntry) -> TickRecord:
        """Return the record of the ticker's tape entry ``entry``."""
        if entry.aggressor not in ("buy", "sell"):
            raise ValueError(f"aggressor must be 'buy' or 'sell', got {entry.aggressor!r}")
        aggressor: Literal["buy", "sell"] = "buy" if entry.aggressor == "buy" else "sell"
        return cls(symbol, entry.trade_id, entry.ts, entry.price, entry.qty, aggressor)

    def to_json(self) -> dict[str, Any]:
        """Return the trade as a JSON-ready dict (price as a string), as a ``quote``'s ``prints`` show it.

        ``ts_ns`` is ``ts`` as exact decimal text: JavaScript's numbers round integers above 2**53.
        """
        return {"trade_id": self.trade_id, "ts": self.ts, "ts_ns": str(self.ts), "price": str(self.price),
                "qty": self.qty, "aggressor": self.aggressor}


# ---------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------


def aggregate(bars: Iterable[BarRecord], interval: str) -> list[BarRecord]:
    """Return the ``interval`` bars made of ``bars`` (usually ``1m`` bars), ordered by symbol and start.

    A bar of the longer interval starts at a multiple of its length (UTC-aligned:
    a ``1d`` bar starts at midnight UTC) and holds the shorter bars that start in
    it: open of the first, close of the last, highest high, lowest low, summed
    volume and trades.  Only intervals present in the input become bars.

    Raises
    ------
    ValueError
        ``bad_interval ...`` for an unknown ``interval``, or one that is not a
        multiple of an input bar's interval.
    """
    length = interval_ns(interval)
    groups: dict[tuple[str, int], list[BarRecord]] = {}
    for b in sorted(bars, key=lambda b: (b.symbol, b.start)):
        src = interval_ns(b.interval)
        if length % src:
            raise ValueError(f"bad_interval {interval!r}: cannot be made from {b.interval!r} bars")
        groups.setdefault((b.symbol, b.start - b.start % length), []).append(b)
    out: list[BarRecord] = []
    for (symbol, start), group in groups.items():
        out.append(BarRecord(
            symbol=symbol, interval=interval, start=start,
            open=group[0].open, high=max(b.high for b in group), low=min(b.low for b in group),
            close=group[-1].close, volume=sum(b.volume for b in group), trades=sum(b.trades for b in group)))
    return out


def query_bars(store: HistoryStore, symbol: str, interval: str, start_ns: int, end_ns: int) -> list[BarRecord]:
    """Return the ``interval`` bars of ``symbol`` with ``start_ns <= start < end_ns``, oldest first.

    ``1s`` and ``1m`` bars are read as stored; ``5m``, ``15m``, ``1h`` and ``1d``
    bars are made from the ``1m`` bars (:func:`aggregate`), each whole: the last one
    holds its ``1m`` bars even past ``end_ns``.

    Raises
    ------
    ValueError
        ``bad_interval ...`` for an unknown ``interval``.
    HistoryError
        When the store fails.
    """
    length = interval_ns(interval)
    if interval in STORED_INTERVALS:
        return store.bars(symbol, interval, start_ns, end_ns)
    first = -(-start_ns // length) * length  # the first bar start at or after start_ns
    after = -(-end_ns // length) * length  # the first bar start at or after end_ns
    if first >= after:
        check_symbol(symbol)
        return []
    return aggregate(store.bars(symbol, "1m", first, after), interval)


# ---------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------


class HistoryStore(abc.ABC):
    """Where ticks and bars are kept.

    Writes are upserts: a bar replaces the stored bar of the same ``(symbol,
    interval, start)``, a tick the stored tick of the same ``(symbol, trade_id, ts)``.
    Reads return the records of ``[start_ns, end_ns)``, oldest first; an unknown
    symbol has none.  Methods raise :class:`HistoryError` when they fail, and
    :class:`StoreUnavailable` when the store cannot be reached.  A store may be
    used from several threads.
    """

    @abc.abstractmethod
    def write_bars(self, bars: Sequence[BarRecord]) -> None:
        """Store ``bars``, replacing stored bars of the same ``(symbol, interval, start)``."""

    @abc.abstractmethod
    def write_ticks(self, ticks: Sequence[TickRecord]) -> None:
        """Store ``ticks``, replacing stored ticks of the same ``(symbol, trade_id, ts)``."""

    @abc.abstractmethod
    def bars(self, symbol: str, interval: str, start_ns: int, end_ns: int) -> list[BarRecord]:
        """Return the stored ``interval`` bars of ``symbol`` with ``start_ns <= start < end_ns``, oldest first."""

    @abc.abstractmethod
    def ticks(self, symbol: str, start_ns: int, end_ns: int) -> list[TickRecord]:
        """Return the stored ticks of ``symbol`` with ``start_ns <= ts < end_ns`` in (``ts``, ``trade_id``) order."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections; further calls raise :class:`HistoryError`."""

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _dedupe_bars(bars: Sequence[BarRecord]) -> list[BarRecord]:
    latest: dict[tuple[str, str, int], BarRecord] = {}
    for b in bars:
        if not isinstance(b, BarRecord):
            raise HistoryError(f"not a BarRecord: {b!r}")
        latest[(b.symbol, b.interval, b.start)] = b
    return list(latest.values())


def _dedupe_ticks(ticks: Sequence[TickRecord]) -> list[TickRecord]:
    latest: dict[tuple[str, int, int], TickRecord] = {}
    for t in ticks:
        if not isinstance(t, TickRecord):
            raise HistoryError(f"not a TickRecord: {t!r}")
        latest[(t.symbol, t.trade_id, t.ts)] = t
    return list(latest.values())


def _check_stored_interval(interval: str) -> None:
    interval_ns(interval)
    if interval not in STORED_INTERVALS:
        raise ValueError(f"bad_interval {interval!r}: stored intervals are {', '.join(STORED_INTERVALS)}; "
                         "use query_bars() for the others")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    symbol   TEXT    NOT NULL,
    interval TEXT    NOT NULL,
    start    INTEGER NOT NULL,
    open     TEXT    NOT NULL,
    high     TEXT    NOT NULL,
    low      TEXT    NOT NULL,
    close    TEXT    NOT NULL,
    volume   INTEGER NOT NULL,
    trades   INTEGER NOT NULL,
    PRIMARY KEY (symbol, interval, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ticks (
    symbol    TEXT    NOT NULL,
    trade_id  INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    price     TEXT    NOT NULL,
    qty       INTEGER NOT NULL,
    aggressor TEXT    NOT NULL,
    PRIMARY KEY (symbol, ts, trade_id)
) WITHOUT ROWID;
"""


class SQLiteHistory(HistoryStore):
    """History in one SQLite file (WAL mode), prices as decimal text.

    One connection is shared by every thread (the writer thread and the event
    loop), under a lock; a read waits at most for one batch being written.

    Parameters
    ----------
    path
        The file, created with its tables when missing (its folder too).

    Raises
    ------
    HistoryError
        When the file cannot be opened or is not a history database.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db: sqlite3.Connection | None = sqlite3.connect(self.path, check_same_thread=False,
                                                                   timeout=10.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise HistoryError(f"history {self.path}: cannot open: {e}") from e

    def __repr__(self) -> str:
        return f"SQLiteHistory({str(self.path)!r})"

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise HistoryError(f"history {self.path}: store is closed")
        return self._db

    def _fail(self, what: str, e: sqlite3.Error) -> HistoryError:
        text = f"history {self.path}: {what}: {e}"
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            return StoreUnavailable(text)
        return HistoryError(text)

    def write_bars(self, bars: Sequence[BarRecord]) -> None:
        rows = [(b.symbol, b.interval, b.start, str(b.open), str(b.high), str(b.low), str(b.close), b.volume,
                 b.trades) for b in _dedupe_bars(bars)]
        if not rows:
            return
        with self._lock:
            db = self._conn()
            try:
                with db:
                    db.execute("BEGIN")
                    db.executemany("INSERT OR REPLACE INTO bars VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.Error as e:
                raise self._fail(f"cannot write {len(rows)} bars", e) from e

    def write_ticks(self, ticks: Sequence[TickRecord]) -> None:
        rows = [(t.symbol, t.trade_id, t.ts, str(t.price), t.qty, t.aggressor) for t in _dedupe_ticks(ticks)]
        if not rows:
            return
        with self._lock:
            db = self._conn()
            try:
                with db:
                    db.execute("BEGIN")
                    db.executemany("INSERT OR REPLACE INTO ticks VALUES (?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.Error as e:
                raise self._fail(f"cannot write {len(rows)} ticks", e) from e

    def bars(self, symbol: str, interval: str, start_ns: int, end_ns: int) -> list[BarRecord]:
        check_symbol(symbol)
        _check_stored_interval(interval)
        with self._lock:
            db = self._conn()
            try:
                rows = db.execute(
                    "SELECT start, open, high, low, close, volume, trades FROM bars "
                    "WHERE symbol = ? AND interval = ? AND start >= ? AND start < ? ORDER BY start",
                    (symbol, interval, _clamp(start_ns), _clamp(end_ns))).fetchall()
            except sqlite3.Error as e:
                raise self._fail(f"cannot read {symbol} {interval} bars", e) from e
        try:
            return [BarRecord(symbol, interval, r[0], Decimal(r[1]), Decimal(r[2]), Decimal(r[3]), Decimal(r[4]),
                              r[5], r[6]) for r in rows]
        except (ValueError, InvalidOperation) as e:
            raise HistoryError(f"history {self.path}: bad stored {symbol} {interval} bar: {e}") from e

    def ticks(self, symbol: str, start_ns: int, end_ns: int) -> list[TickRecord]:
        check_symbol(symbol)
        with self._lock:
            db = self._conn()
            try:
                rows = db.execute(
                    "SELECT trade_id, ts, price, qty, aggressor FROM ticks "
                    "WHERE symbol = ? AND ts >= ? AND ts < ? ORDER BY ts, trade_id",
                    (symbol, _clamp(start_ns), _clamp(end_ns))).fetchall()
            except sqlite3.Error as e:
                raise self._fail(f"cannot read {symbol} ticks", e) from e
        try:
            return [TickRecord(symbol, r[0], r[1], Decimal(r[2]), r[3], r[4]) for r in rows]
        except (ValueError, InvalidOperation) as e:
            raise HistoryError(f"history {self.path}: bad stored {symbol} tick: {e}") from e

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                try:
                    db.close()
                except sqlite3.Error as e:
                    raise HistoryError(f"history {self.path}: cannot close: {e}") from e


def _float_text(price: Decimal) -> str:
    return repr(float(price))  # the shortest text of the float: InfluxDB parses it back to the same float


def _price(value: Any, dp: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"price {value!r} is not a number")
    d = Decimal(repr(float(value)))
    if isinstance(dp, int) and 0 <= dp <= 18:
        d = d.quantize(Decimal(1).scaleb(-dp))
    return d


class InfluxHistory(HistoryStore):
    """History in an InfluxDB 1.x database, through ``/write`` and ``/query``.

    The layout, how prices come back exact, and how ticks of one time are kept
    apart, are described in the module's documentation.  Each thread talks to the
    server through a client of its own.

    Parameters
    ----------
    url
        ``http://host:8086`` (or https; a path prefix and ``user:password@`` are allowed).
    database
        The database, created when missing (when the server cannot be reached
        now, before the first write).
    timeout
        Seconds to wait for the server on each request.

    Raises
    ------
    HistoryError
        For a bad ``url``, or when the server refuses to create the database.
    """

    def __init__(self, url: str, database: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HistoryError(f"bad InfluxDB url {url!r}: expected one like 'http://host:8086'")
        if not isinstance(database, str) or not database:
            raise HistoryError(f"bad InfluxDB database name {database!r}")
        try:
            port = parts.port or 8086
        except ValueError as e:
            raise HistoryError(f"bad InfluxDB url {url!r}: {e}") from e
        self.url = url
        self.database = database
        self._args: dict[str, Any] = {
            "host": parts.hostname, "port": port, "database": database, "ssl": parts.scheme == "https",
            "verify_ssl": parts.scheme == "https", "timeout": timeout, "retries": 1, "path": parts.path.rstrip("/"),
            "username": unquote(parts.username) if parts.username else "root",
            "password": unquote(parts.password) if parts.password else "root",
        }
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()  # guards _clients, _closed, _db_ready
        self._write_lock = threading.Lock()  # one writer at a time: the tick times depend on what is stored
        self._closed = False
        self._db_ready = False
        self._tick_tail: dict[str, tuple[int, int]] = {}  # symbol -> (trade_id, time) of its highest written tick
        try:
            self._ensure_database()
        except StoreUnavailable as e:
            log.warning("%s; the database is created when the server is back", e)

    def __repr__(self) -> str:
        return f"InfluxHistory({self.url!r}, {self.database!r})"

    # -- plumbing ----------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            from influxdb import InfluxDBClient  # type: ignore[import-untyped]

            with self._lock:
                if self._closed:
                    raise HistoryError(f"history {self}: store is closed")
                client = InfluxDBClient(**self._args)
                self._clients.append(client)
            self._local.client = client
        elif self._closed:
            raise HistoryError(f"history {self}: store is closed")
        return client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import requests
        from influxdb.exceptions import InfluxDBClientError, InfluxDBServerError  # type: ignore[import-untyped]

        try:
            return fn(*args, **kwargs)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise StoreUnavailable(f"InfluxDB {self.url} cannot be reached ({what}): {type(e).__name__}") from e
        except requests.exceptions.RequestException as e:
            raise StoreUnavailable(f"InfluxDB {self.url} failed ({what}): {e}") from e
        except InfluxDBServerError as e:
            raise StoreUnavailable(f"InfluxDB {self.url} server error ({what}): {e}") from e
        except InfluxDBClientError as e:
            raise HistoryError(f"InfluxDB {self.url} refused ({what}): {e}") from e
        except ValueError as e:  # a body that is not JSON (a proxy's error page)
            raise HistoryError(f"InfluxDB {self.url} gave a bad answer ({what}): {e}") from e

    def _ensure_database(self) -> None:
        if self._db_ready:
            return
        from influxdb.line_protocol import quote_ident  # type: ignore[import-untyped]

        client = self._client()
        self._call(f"create database {self.database!r}", client.query,
                   f"CREATE DATABASE {quote_ident(self.database)}", method="POST")
        self._db_ready = True

    def _write(self, lines: list[str], what: str) -> None:
        self._ensure_database()
        client = self._client()
        for i in range(0, len(lines), _INFLUX_LINES):
            chunk = lines[i:i + _INFLUX_LINES]
            try:
                self._call(what, client.write_points, chunk, time_precision="n", protocol="line")
            except HistoryError as e:
                if isinstance(e, StoreUnavailable) or "database not found" not in str(e):
                    raise
                self._db_ready = False  # dropped behind our back (or a new server): create it again, once
                self._ensure_database()
                self._call(what, client.write_points, chunk, time_precision="n", protocol="line")

    def _select(self, what: str, query: str) -> list[dict[str, Any]]:
        result = self._call(what, self._client().query, query, epoch="ns")
        results = result if isinstance(result, list) else [result]
        return [p for r in results for p in r.get_points()]

    def _select_pages(self, what: str, fields: str, where: str, start_ns: int, end_ns: int) -> list[dict[str, Any]]:
        # Page by time so that a server's row limit never truncates a range.
        out: list[dict[str, Any]] = []
        cursor = _clamp(start_ns)
        end = _clamp(end_ns)
        while cursor < end:
            page = self._select(what, f"SELECT {fields} FROM {where} AND time >= {cursor} AND time < {end} "
                                      f"ORDER BY time ASC LIMIT {_INFLUX_PAGE}")
            out.extend(page)
            if len(page) < _INFLUX_PAGE:
                break
            cursor = int(page[-1]["time"]) + 1
        return out

    # -- writes ------------------------------------------------------------

    def write_bars(self, bars: Sequence[BarRecord]) -> None:
        lines = [
            f"bars,interval={b.interval},symbol={b.symbol} close={_float_text(b.close)},dp={b.places}i,"
            f"high={_float_text(b.high)},low={_float_text(b.low)},open={_float_text(b.open)},"
            f"trades={b.trades}i,volume={b.volume}i {b.start}"
            for b in _dedupe_bars(bars)
        ]
        if lines:
            with self._write_lock:
                self._write(lines, f"write {len(lines)} bars")

    def write_ticks(self, ticks: Sequence[TickRecord]) -> None:
        by_symbol: dict[str, list[TickRecord]] = {}
        for t in _dedupe_ticks(ticks):
            by_symbol.setdefault(t.symbol, []).append(t)
        if not by_symbol:
            return
        with self._write_lock:
            self._ensure_database()
            for group in by_symbol.values():
                group.sort(key=lambda t: t.trade_id)
            prev = self._previous_ticks({s: g[0].trade_id for s, g in by_symbol.items()})
            lines: list[str] = []
            tails: dict[str, tuple[int, int]] = {}
            for symbol, group in by_symbol.items():
                last = prev.get(symbol)
                for t in group:
                    at = t.ts if last is None else max(t.ts, last + 1)
                    if at > _MAX_NS:
                        raise HistoryError(f"{symbol} trade {t.trade_id}: time {at} is past InfluxDB's last time")
                    lines.append(f"ticks,symbol={symbol} aggressor=\"{t.aggressor}\",dp={_places(t.price)}i,"
                                 f"price={_float_text(t.price)},qty={t.qty}i,trade_id={t.trade_id}i,ts={t.ts}i {at}")
                    last = at
                tails[symbol] = (group[-1].trade_id, at)
            self._write(lines, f"write {len(lines)} ticks")
            for symbol, tail in tails.items():
                old = self._tick_tail.get(symbol)
                if old is None or tail[0] >= old[0]:
                    self._tick_tail[symbol] = tail

    def _previous_ticks(self, first_ids: dict[str, int]) -> dict[str, int]:
        """Return, per symbol, the time of the stored tick with the highest trade_id below ``first_ids[symbol]``."""
        out: dict[str, int] = {}
        lookup: list[tuple[str, int]] = []
        for symbol, first in first_ids.items():
            tail = self._tick_tail.get(symbol)
            if tail is not None and tail[0] == first - 1:
                out[symbol] = tail[1]  # the common case: this batch goes on from the last one
            else:
                lookup.append((symbol, first))
        if not lookup:
            return out
        client = self._client()
        for i in range(0, len(lookup), _LOOKUP_STATEMENTS):
            part = lookup[i:i + _LOOKUP_STATEMENTS]
            query = ";".join(f"SELECT trade_id FROM ticks WHERE symbol = '{check_symbol(s)}' AND trade_id < {first} "
                             "ORDER BY time DESC LIMIT 1" for s, first in part)
            try:
                result = self._call("find the previous ticks", client.query, query, epoch="ns", method="POST")
            except HistoryError as e:
                if isinstance(e, StoreUnavailable) or "database not found" not in str(e):
                    raise
                self._db_ready = False  # dropped behind our back: _write creates it again
                return out
            results = result if isinstance(result, list) else [result]
            if len(results) != len(part):
                raise HistoryError(f"InfluxDB {self.url}: {len(results)} results for {len(part)} statements")
            for (symbol, _), r in zip(part, results, strict=True):
                points = list(r.get_points())
                if points:
                    out[symbol] = int(points[0]["time"])
        return out

    # -- reads -------------------------------------------------------------

    def bars(self, symbol: str, interval: str, start_ns: int, end_ns: int) -> list[BarRecord]:
        check_symbol(symbol)
        _check_stored_interval(interval)
        where = f"bars WHERE symbol = '{symbol}' AND \"interval\" = '{interval}'"
        try:
            points = self._select_pages(f"read {symbol} {interval} bars", "open, high, low, close, volume, trades, dp",
                                        where, start_ns, end_ns)
        except HistoryError as e:
            if "database not found" in str(e):
                return []
            raise
        try:
            return [BarRecord(symbol, interval, int(p["time"]), _price(p["open"], p["dp"]),
                              _price(p["high"], p["dp"]), _price(p["low"], p["dp"]), _price(p["close"], p["dp"]),
                              int(p["volume"]), int(p["trades"])) for p in points]
        except (KeyError, TypeError, ValueError, InvalidOperation) as e:
            raise HistoryError(f"InfluxDB {self.url}: bad stored {symbol} {interval} bar: {e!r}") from e

    def ticks(self, symbol: str, start_ns: int, end_ns: int) -> list[TickRecord]:
        check_symbol(symbol)
        start, end = _clamp(start_ns), _clamp(end_ns)
        if start >= end:
            return []
        where = f"ticks WHERE symbol = '{symbol}'"
        try:
            points = self._select_pages(f"read {symbol} ticks", "trade_id, ts, price, qty, aggressor, dp", where,
                                        start, _clamp(end + TICK_TIME_SLACK_NS))
        except HistoryError as e:
            if "database not found" in str(e):
                return []
            raise
        latest: dict[tuple[int, int], TickRecord] = {}  # (ts, trade_id): a day's ids start again at 1
        try:
            for p in points:
                ts = int(p["ts"])
                if start <= ts < end:
                    tid = int(p["trade_id"])
                    latest[(ts, tid)] = TickRecord(symbol, tid, ts, _price(p["price"], p["dp"]), int(p["qty"]),
                                                   p["aggressor"])
        except (KeyError, TypeError, ValueError, InvalidOperation) as e:
            raise HistoryError(f"InfluxDB {self.url}: bad stored {symbol} tick: {e!r}") from e
        return [latest[k] for k in sorted(latest)]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()


def open_history(kind: str, *, sqlite_path: str | Path | None = None, url: str | None = None,
                 database: str | None = None) -> HistoryStore:
    """Return the history store the topology's ``[stores] history`` names.

    Parameters
    ----------
    kind
        ``"sqlite"`` (needs ``sqlite_path``) or ``"influxdb"`` (needs ``url`` and ``database``).

    Raises
    ------
    ValueError
        For another ``kind``, or a missing parameter.
    HistoryError
        When the store cannot be opened.
    """
    if kind == "sqlite":
        if sqlite_path is None:
            raise ValueError("history store 'sqlite' needs sqlite_path")
        return SQLiteHistory(sqlite_path)
    if kind == "influxdb":
        if not url or not database:
            raise ValueError("history store 'influxdb' needs url and database")
        return InfluxHistory(url, database)
    raise ValueError(f"unknown history store {kind!r}: expected 'sqlite' or 'influxdb'")


# ---------------------------------------------------------------------------
# The writer thread
# ---------------------------------------------------------------------------

_BarKey = tuple[str, str, int]
_TickKey = tuple[str, int, int]
_R = TypeVar("_R", BarRecord, TickRecord)


def _records(items: Iterable[Any], cls: type[_R]) -> list[_R]:
    # The items as a list, every one checked to be a `cls` before any is queued.
    out = list(items)
    for r in out:
        if not isinstance(r, cls):
            raise TypeError(f"not a {cls.__name__}: {r!r}")
    return out


def _take_into(queue: dict[Any, tuple[int, Any]], out: list[tuple[int, Any]], room: int) -> int:
    # Move the first `room` entries of `queue` (oldest first) to `out`; return the room left.  The queue is
    # rebuilt rather than popped from the front: a dict popped from the front keeps the holes, and every
    # later look at its first entry walks over them.
    if room <= 0 or not queue:
        return room
    if len(queue) <= room:
        out.extend(queue.values())
        room -= len(queue)
        queue.clear()
        return room
    items = list(queue.items())
    out.extend(v for _, v in items[:room])
    queue.clear()
    queue.update(items[room:])
    return 0


class HistoryWriter:
    """Writes bars and ticks to a store in batches, on a daemon thread; keeps them while the store is down.

    :meth:`add_bars` and :meth:`add_ticks` only queue (they never wait for the
    store, and never drop).  The thread writes up to ``batch`` points at a time, as
    soon as ``batch`` are queued or ``flush_s`` after the oldest was.  A bar queued
    again before it was written replaces the queued one (the store would replace
    it anyway); a tick queued again likewise.  When a write fails the points stay
    queued and the write is retried after 0.1 s, then after twice as long each
    time, up to 5 s; the outage is logged once when it starts and once when the
    store is back.

    Parameters
    ----------
    store
        Where to write.  The writer does not close it.
    batch
        Most points per write.
    flush_s
        Longest time a point waits before its batch is written.
    """

    RETRY_FIRST_S: Final = 0.1
    RETRY_MAX_S: Final = 5.0

    def __init__(self, store: HistoryStore, *, batch: int = 5000, flush_s: float = 0.5) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if flush_s < 0:
            raise ValueError(f"flush_s must not be negative, got {flush_s}")
        self.store = store
        self.batch = batch
        self.flush_s = flush_s
        self._cond = threading.Condition()
        # Queued points in the order they were (last) added, each with its add sequence number.
        self._bars: dict[_BarKey, tuple[int, BarRecord]] = {}
        self._ticks: dict[_TickKey, tuple[int, TickRecord]] = {}
        self._inflight_bars: list[tuple[int, BarRecord]] = []
        self._inflight_ticks: list[tuple[int, TickRecord]] = []
        self._seq = 0  # sequence number of the last point added
        self._first_at: float | None = None  # monotonic time the oldest unwritten point was added
        self._urgent_upto = 0  # write at once (no flush_s wait) everything up to this sequence number
        self._stopping = False
        self._closed = False
        self.written = 0  # points written so far
        self.failures = 0  # failed writes so far
        self._outage_since: float | None = None  # monotonic time of the first failed write of an outage
        self._late_upto = 0  # points with a sequence number up to this one were kept through an outage
        self._late = 0  # ... and this many of them are written
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"HistoryWriter({self.store!r}, pending={self.pending()})"

    # -- producer side -----------------------------------------------------

    def add_bars(self, bars: Iterable[BarRecord]) -> None:
        """Queue ``bars`` for writing; a queued bar of the same ``(symbol, interval, start)`` is replaced.

        Raises
        ------
        TypeError
            For something that is not a :class:`BarRecord` (nothing of the call is queued).
        RuntimeError
            After :meth:`close`.
        """
        items = _records(bars, BarRecord)
        self._add(self._bars, [((b.symbol, b.interval, b.start), b) for b in items])

    def add_ticks(self, ticks: Iterable[TickRecord]) -> None:
        """Queue ``ticks`` for writing; a queued tick of the same ``(symbol, trade_id, ts)`` is replaced.

        Raises
        ------
        TypeError
            For something that is not a :class:`TickRecord` (nothing of the call is queued).
        RuntimeError
            After :meth:`close`.
        """
        items = _records(ticks, TickRecord)
        self._add(self._ticks, [((t.symbol, t.trade_id, t.ts), t) for t in items])

    def _add(self, queue: dict[Any, tuple[int, Any]], items: list[tuple[Any, Any]]) -> None:
        if not items:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("history writer is closed")
            seq = self._seq
            for key, rec in items:
                seq += 1
                queue.pop(key, None)  # re-inserted at the end: the queue stays in sequence order
                queue[key] = (seq, rec)
            self._seq = seq
            if self._first_at is None:
                self._first_at = time.monotonic()
                self._cond.notify_all()
            elif len(self._bars) + len(self._ticks) >= self.batch:
                self._cond.notify_all()

    def pending(self) -> int:
        """Return the number of points queued or being written."""
        with self._cond:
            return self._pending()

    def _pending(self) -> int:
        return len(self._bars) + len(self._ticks) + len(self._inflight_bars) + len(self._inflight_ticks)

    def _oldest_unwritten(self) -> int:
        # The queues are in sequence order, so their first entries are their oldest.
        oldest = self._seq + 1
        for q in (self._bars, self._ticks):
            if q:
                oldest = min(oldest, next(iter(q.values()))[0])
        for f in (self._inflight_bars, self._inflight_ticks):
            if f:
                oldest = min(oldest, min(s for s, _ in f))
        return oldest

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every point queued before the call is written; return ``False`` on ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._seq
            self._urgent_upto = max(self._urgent_upto, target)
            self._cond.notify_all()
            while self._oldest_unwritten() <= target:
                if not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush (up to ``timeout`` seconds), then stop the thread; further adds raise ``RuntimeError``.

        Returns
        -------
        bool
            ``True`` when everything was written; ``False`` (and an error logged with
            the number of unwritten points) when the store stayed down.
        """
        with self._cond:
            if self._closed and not self._thread.is_alive():
                return self._pending() == 0
            self._closed = True
        ok = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=max(1.0, timeout or 0.0))
        with self._cond:
            left = self._pending()
        if left:
            log.error("history writer closed with %d points unwritten (store %r)", left, self.store)
            return False
        return ok

    # -- the thread --------------------------------------------------------

    def _take(self) -> None:
        # Move up to `batch` points from the queues to the in-flight lists (under the lock).
        room = _take_into(self._bars, self._inflight_bars, self.batch)
        _take_into(self._ticks, self._inflight_ticks, room)
        if not self._bars and not self._ticks:
            self._first_at = None  # else the points left are due no later than the ones taken

    def _due(self) -> float | None:
        # Seconds until the next batch is due (0: now), None when nothing is queued.
        queued = len(self._bars) + len(self._ticks)
        if not queued or self._first_at is None:
            return None
        if queued >= self.batch or self._stopping or self._oldest_unwritten() <= self._urgent_upto:
            return 0.0
        return max(0.0, self._first_at + self.flush_s - time.monotonic())

    def _run(self) -> None:
        delay = 0.0
        while True:
            with self._cond:
                if not self._inflight_bars and not self._inflight_ticks:
                    while True:
                        if self._stopping:
                            return
                        due = self._due()
                        if due == 0.0:
                            break
                        self._cond.wait(due)
                    self._take()
                elif delay:
                    end = time.monotonic() + delay
                    while not self._stopping and (left := end - time.monotonic()) > 0:
                        self._cond.wait(left)
                    if self._stopping:
                        return
                bars, ticks = list(self._inflight_bars), list(self._inflight_ticks)
            try:
                if bars:
                    self.store.write_bars([b for _, b in bars])
                    self._written(self._inflight_bars, [s for s, _ in bars])
                if ticks:
                    self.store.write_ticks([t for _, t in ticks])
                    self._written(self._inflight_ticks, [s for s, _ in ticks])
            except Exception as e:
                self.failures += 1
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    with self._cond:
                        kept = self._pending()
                    if isinstance(e, HistoryError):
                        log.warning("history store %r failed: %s; keeping %d points and retrying", self.store, e,
                                    kept)
                    else:
                        log.exception("history store %r failed unexpectedly; keeping %d points and retrying",
                                      self.store, kept)
                delay = min(self.RETRY_MAX_S, delay * 2) if delay else self.RETRY_FIRST_S
                continue
            delay = 0.0

    def _written(self, inflight: list[Any], seqs: list[int]) -> None:
        # Bookkeeping after a successful write of the points `seqs` (the whole in-flight list `inflight`).
        with self._cond:
            inflight.clear()
            self.written += len(seqs)
            if self._outage_since is not None:
                self._late_upto = self._seq
                self._late = 0
                log.warning("history store %r is back after %.1f s; writing the %d points kept meanwhile",
                            self.store, time.monotonic() - self._outage_since, self._pending() + len(seqs))
                self._outage_since = None
            if self._late_upto:
                self._late += sum(1 for s in seqs if s <= self._late_upto)
                if self._oldest_unwritten() > self._late_upto:
                    log.warning("history store %r: %d points written late; caught up", self.store, self._late)
                    self._late_upto = self._late = 0
            self._cond.notify_all()
