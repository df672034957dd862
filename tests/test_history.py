"""Price history: one contract suite over SQLite and a real InfluxDB (influxd), aggregation, and the writer thread."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

import pytest

from fabric.history import (
    INTERVALS,
    BarRecord,
    HistoryError,
    HistoryStore,
    HistoryWriter,
    InfluxHistory,
    SQLiteHistory,
    StoreUnavailable,
    TickRecord,
    aggregate,
    interval_ns,
    open_history,
    query_bars,
)
from tests.servers import InfluxServer, start_influxd

SEC = 1_000_000_000
MIN = 60 * SEC
DAY = datetime(2025, 11, 25, tzinfo=UTC)  # a trading day, midnight UTC
D = int(DAY.timestamp()) * SEC
T0 = D + 10 * 3600 * SEC  # 10:00 UTC

pytestmark = pytest.mark.timeout(120)


def at(hh: int, mm: int, ss: int = 0, day: int = 0) -> int:
    """Return the ns time of hh:mm:ss UTC on DAY (+ ``day`` days)."""
    return D + day * 86400 * SEC + (hh * 3600 + mm * 60 + ss) * SEC


def bar(start: int, o: str, h: str, lo: str, c: str, volume: int = 10, trades: int = 2, *, symbol: str = "TCS",
        interval: str = "1m") -> BarRecord:
    return BarRecord(symbol, interval, start, Decimal(o), Decimal(h), Decimal(lo), Decimal(c), volume, trades)


def tick(trade_id: int, ts: int, price: str = "3512.35", qty: int = 10, *, symbol: str = "TCS",
         aggressor: Literal["buy", "sell"] = "buy") -> TickRecord:
    return TickRecord(symbol, trade_id, ts, Decimal(price), qty, aggressor)


# ---------------------------------------------------------------------------
# Fixtures: one contract, two stores
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """A real influxd for this module, on free ports (skipped without the binary, failed in CI)."""
    server = start_influxd(tmp_path_factory.mktemp("influxd"))
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Backend:
    """A store kind under test: ``open()`` opens (again) the same store; ``server`` is its influxd, if any."""

    kind: str
    factory: Callable[[], HistoryStore]
    server: InfluxServer | None = None
    opened: list[HistoryStore] = field(default_factory=list)

    def open(self) -> HistoryStore:
        store = self.factory()
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", pytest.param("influxdb", marks=pytest.mark.server("influxdb"))])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "history.sqlite3"
        b = Backend("sqlite", lambda: SQLiteHistory(path))
    else:
        server: InfluxServer = request.getfixturevalue("influxd")
        database = f"exfab_{uuid.uuid4().hex[:12]}"  # a database per test: tests do not see each other's points
        b = Backend("influxdb", lambda: InfluxHistory(server.url, database), server)
    try:
        yield b
    finally:
        if b.server is not None and not b.server.running:
            b.server.start()  # a test that stopped the module's server leaves it running for the next
        for s in b.opened:
            s.close()


@pytest.fixture
def store(backend: Backend) -> HistoryStore:
    return backend.open()


# ---------------------------------------------------------------------------
# The store contract
# ---------------------------------------------------------------------------

PRICES = ["3512.35", "0.05", "123456.7", "3500.00", "99999.95", "1234567890.12345"]  # the last: 15 digits


def test_bars_round_trip_with_exact_prices(store: HistoryStore) -> None:
    bars = [bar(T0 + i * MIN, p, p, p, p, volume=i + 1, trades=i + 2) for i, p in enumerate(PRICES)]
    bars.append(bar(T0 + 10 * MIN, "3500.00", "3512.35", "3495.05", "3510.10", 840, 21))
    store.write_bars(bars)
    got = store.bars("TCS", "1m", T0, T0 + 60 * MIN)
    assert got == bars
    assert [b.to_json() for b in got] == [b.to_json() for b in bars]  # "3500.00" stays "3500.00"
    assert got[2].to_json() == {"start": T0 + 2 * MIN, "start_ns": str(T0 + 2 * MIN), "open": "123456.7",
                                "high": "123456.7", "low": "123456.7", "close": "123456.7", "volume": 3, "trades": 4}


def test_ticks_round_trip_with_exact_prices(store: HistoryStore) -> None:
    ticks = [tick(i + 1, T0 + i * SEC, p, qty=i + 1, aggressor="buy" if i % 2 else "sell")
             for i, p in enumerate(PRICES)]
    store.write_ticks(ticks)
    got = store.ticks("TCS", T0, T0 + MIN)
    assert got == ticks
    assert [t.to_json() for t in got] == [t.to_json() for t in ticks]
    # A time beside its exact text, as the ticker's prints carry it (JavaScript rounds integers above 2**53).
    assert got[1].to_json() == {"trade_id": 2, "ts": T0 + SEC, "ts_ns": str(T0 + SEC), "price": "0.05", "qty": 2,
                                "aggressor": "buy"}


def test_upsert_replaces_a_bar_and_a_tick(store: HistoryStore) -> None:
    store.write_bars([bar(T0, "3500.00", "3501.00", "3499.00", "3500.50", 10, 2), bar(T0 + MIN, "1", "1", "1", "1")])
    store.write_bars([bar(T0, "3500.00", "3520.00", "3495.05", "3512.35", 840, 21)])
    assert store.bars("TCS", "1m", T0, T0 + 2 * MIN) == [
        bar(T0, "3500.00", "3520.00", "3495.05", "3512.35", 840, 21), bar(T0 + MIN, "1", "1", "1", "1")]
    store.write_ticks([tick(1, T0, "3500.00"), tick(2, T0 + SEC, "3500.05")])
    store.write_ticks([tick(2, T0 + SEC, "3501.00", qty=7, aggressor="sell")])
    assert store.ticks("TCS", T0, T0 + MIN) == [tick(1, T0, "3500.00"),
                                               tick(2, T0 + SEC, "3501.00", qty=7, aggressor="sell")]


def test_ranges_include_from_and_exclude_to(store: HistoryStore) -> None:
    bars = [bar(T0 + i * MIN, "10.00", "10.00", "10.00", "10.00") for i in range(3)]
    store.write_bars(bars)
    assert store.bars("TCS", "1m", T0 + MIN, T0 + 2 * MIN) == [bars[1]]
    assert store.bars("TCS", "1m", T0, T0 + 2 * MIN + 1) == bars
    assert store.bars("TCS", "1m", T0 + 1, T0 + 2 * MIN) == [bars[1]]
    assert store.bars("TCS", "1m", T0 + 2 * MIN + 1, T0 + 60 * MIN) == []
    ticks = [tick(i + 1, T0 + i * SEC) for i in range(3)]
    store.write_ticks(ticks)
    assert store.ticks("TCS", T0 + SEC, T0 + 2 * SEC) == [ticks[1]]
    assert store.ticks("TCS", T0, T0 + 2 * SEC + 1) == ticks
    assert store.ticks("TCS", T0 - MIN, T0) == []


def test_reads_are_oldest_first_whatever_the_write_order(store: HistoryStore) -> None:
    bars = [bar(T0 + i * MIN, f"{100 + i}.00", f"{100 + i}.00", f"{100 + i}.00", f"{100 + i}.00") for i in range(6)]
    store.write_bars([bars[i] for i in (3, 0, 5, 1, 4, 2)])
    assert store.bars("TCS", "1m", T0, T0 + 10 * MIN) == bars
    ticks = [tick(i + 1, T0 + i * SEC) for i in range(6)]
    store.write_ticks([ticks[i] for i in (3, 0, 5)])
    store.write_ticks([ticks[i] for i in (1, 4, 2)])
    assert store.ticks("TCS", T0, T0 + MIN) == ticks


def test_empty_ranges_unknown_symbols_and_other_intervals_have_nothing(store: HistoryStore) -> None:
    assert store.bars("TCS", "1m", T0, T0 + MIN) == []  # nothing written yet
    assert store.ticks("TCS", T0, T0 + MIN) == []
    store.write_bars([bar(T0, "1.00", "1.00", "1.00", "1.00")])
    store.write_ticks([tick(1, T0)])
    assert store.bars("TCS", "1m", T0 + MIN, T0) == []  # from after to
    assert store.bars("TCS", "1m", T0, T0) == []
    assert store.ticks("TCS", T0, T0) == []
    assert store.bars("INFY", "1m", T0, T0 + MIN) == []
    assert store.ticks("INFY", T0, T0 + MIN) == []
    assert store.bars("TCS", "1s", T0, T0 + MIN) == []  # intervals are kept apart
    assert store.bars("TC", "1m", T0, T0 + MIN) == []  # no prefix matching
    assert store.bars("TCS", "1m", -(2**70), 2**70) == [bar(T0, "1.00", "1.00", "1.00", "1.00")]  # clamped


def test_bad_symbols_and_intervals_are_refused(store: HistoryStore) -> None:
    for bad in ["tcs", "TCS' OR '1'='1", "", "TCS\\", 'A"B', "A B"]:
        with pytest.raises(HistoryError, match="bad symbol"):
            store.bars(bad, "1m", T0, T0 + MIN)
        with pytest.raises(HistoryError, match="bad symbol"):
            store.ticks(bad, T0, T0 + MIN)
    with pytest.raises(ValueError, match="bad_interval"):
        store.bars("TCS", "2m", T0, T0 + MIN)
    with pytest.raises(ValueError, match="bad_interval"):
        store.bars("TCS", "5m", T0, T0 + MIN)  # not stored: query_bars() makes it


def test_symbols_with_every_allowed_character(store: HistoryStore) -> None:
    symbols = ["M&M", "BAJAJ-AUTO", "NIFTY.50", "X_1"]
    store.write_bars([bar(T0, "1.50", "1.50", "1.50", "1.50", symbol=s) for s in symbols])
    store.write_ticks([tick(1, T0, "1.50", symbol=s) for s in symbols])
    for s in symbols:
        assert store.bars(s, "1m", T0, T0 + MIN) == [bar(T0, "1.50", "1.50", "1.50", "1.50", symbol=s)]
        assert store.ticks(s, T0, T0 + MIN) == [tick(1, T0, "1.50", symbol=s)]


def test_ticks_of_one_time_are_all_kept_and_rewriting_them_doubles_none(backend: Backend) -> None:
    # One aggressor order filling four resting orders: four trades with one ts, then trades 1 ns apart.
    ticks = [tick(i, T0, f"3500.{i:02d}", qty=i) for i in range(1, 5)]
    ticks += [tick(5, T0 + 1, "3501.00"), tick(6, T0 + 2, "3501.05"), tick(7, T0 + 2, "3501.10"),
              tick(8, T0 + SEC, "3502.00")]
    store = backend.open()
    store.write_ticks(ticks[:3])
    store.write_ticks(ticks[3:])
    assert store.ticks("TCS", T0, T0 + MIN) == ticks
    store.write_ticks(ticks)  # rewrite everything: same points
    store.write_ticks(ticks[2:6])  # and a middle part
    assert store.ticks("TCS", T0, T0 + MIN) == ticks
    again = backend.open()  # a new process rewriting the day (nothing in memory)
    again.write_ticks(ticks[4:])
    again.write_ticks(ticks[1:3])
    assert again.ticks("TCS", T0, T0 + MIN) == ticks
    assert again.ticks("TCS", T0, T0 + 1) == ticks[:4]  # selected by their own ts
    assert again.ticks("TCS", T0 + 1, T0 + 3) == ticks[4:7]


def test_data_survives_closing_and_reopening(backend: Backend) -> None:
    store = backend.open()
    bars = [bar(T0 + i * MIN, "3512.35", "3512.40", "3512.30", "3512.35") for i in range(3)]
    ticks = [tick(i, T0 + i) for i in range(1, 4)]
    store.write_bars(bars)
    store.write_ticks(ticks)
    store.close()
    with pytest.raises(HistoryError, match="closed"):
        store.bars("TCS", "1m", T0, T0 + MIN)
    reopened = backend.open()
    assert reopened.bars("TCS", "1m", T0, T0 + 10 * MIN) == bars
    assert reopened.ticks("TCS", T0, T0 + MIN) == ticks
    reopened.write_ticks([tick(4, T0 + 3)])  # same ts as trade 3 after the reopen: kept apart
    assert reopened.ticks("TCS", T0, T0 + MIN) == [*ticks, tick(4, T0 + 3)]


@pytest.mark.server("influxdb")
def test_influx_data_survives_a_restart_of_influxd(tmp_path: Path) -> None:
    server = start_influxd(tmp_path / "influxd")
    try:
        store = InfluxHistory(server.url, "exfab")
        bars = [bar(T0 + i * MIN, "3512.35", "3520.00", "0.05", "123456.7") for i in range(3)]
        ticks = [tick(i, T0, "3500.05") for i in range(1, 4)]
        store.write_bars(bars)
        store.write_ticks(ticks)
        server.stop()
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            store.bars("TCS", "1m", T0, T0 + 10 * MIN)
        server.start()
        assert store.bars("TCS", "1m", T0, T0 + 10 * MIN) == bars  # the same client works again
        assert store.ticks("TCS", T0, T0 + MIN) == ticks
        store.close()
        fresh = InfluxHistory(server.url, "exfab")
        assert fresh.bars("TCS", "1m", T0, T0 + 10 * MIN) == bars
        fresh.write_ticks([tick(4, T0, "3500.10")])
        assert fresh.ticks("TCS", T0, T0 + MIN) == [*ticks, tick(4, T0, "3500.10")]
        fresh.close()
    finally:
        server.stop()


def test_influx_unreachable_is_store_unavailable_and_bad_url_is_refused() -> None:
    from tests.helpers import free_port

    store = InfluxHistory(f"http://127.0.0.1:{free_port()}", "exfab", timeout=2.0)  # nothing listens there
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        store.write_bars([bar(T0, "1.00", "1.00", "1.00", "1.00")])
    with pytest.raises(StoreUnavailable):
        store.ticks("TCS", T0, T0 + MIN)
    store.close()
    for url in ["ftp://host:8086", "host:8086", "http://", "http://host:99999"]:
        with pytest.raises(HistoryError, match="bad InfluxDB url"):
            InfluxHistory(url, "exfab")


# ---------------------------------------------------------------------------
# Intervals and aggregation
# ---------------------------------------------------------------------------

# 1m bars around two UTC days, with the 5m, 1h and 1d bars worked out by hand.
ONE_MIN = [
    bar(at(23, 59, day=-1), "100.00", "101.00", "99.50", "100.50", 10, 2),
    bar(at(9, 58), "3500.00", "3505.00", "3499.00", "3502.00", 100, 5),
    bar(at(9, 59), "3502.00", "3510.00", "3501.00", "3509.00", 50, 3),
    bar(at(10, 0), "3509.05", "3512.35", "3508.00", "3511.00", 20, 2),
    bar(at(10, 4), "3511.00", "3511.00", "3495.05", "3496.00", 30, 4),
    bar(at(10, 5), "3496.00", "3500.00", "3496.00", "3499.95", 5, 1),
]
FIVE_MIN = [
    bar(at(23, 55, day=-1), "100.00", "101.00", "99.50", "100.50", 10, 2, interval="5m"),
    bar(at(9, 55), "3500.00", "3510.00", "3499.00", "3509.00", 150, 8, interval="5m"),
    bar(at(10, 0), "3509.05", "3512.35", "3495.05", "3496.00", 50, 6, interval="5m"),
    bar(at(10, 5), "3496.00", "3500.00", "3496.00", "3499.95", 5, 1, interval="5m"),
]
ONE_HOUR = [
    bar(at(23, 0, day=-1), "100.00", "101.00", "99.50", "100.50", 10, 2, interval="1h"),
    bar(at(9, 0), "3500.00", "3510.00", "3499.00", "3509.00", 150, 8, interval="1h"),
    bar(at(10, 0), "3509.05", "3512.35", "3495.05", "3499.95", 55, 7, interval="1h"),
]
ONE_DAY = [
    bar(at(0, 0, day=-1), "100.00", "101.00", "99.50", "100.50", 10, 2, interval="1d"),
    bar(at(0, 0), "3500.00", "3512.35", "3495.05", "3499.95", 205, 15, interval="1d"),
]


def test_aggregate_makes_utc_aligned_bars_from_1m_bars() -> None:
    shuffled = [ONE_MIN[i] for i in (3, 0, 5, 2, 4, 1)]
    assert aggregate(shuffled, "5m") == FIVE_MIN
    assert aggregate(shuffled, "1h") == ONE_HOUR
    assert aggregate(shuffled, "1d") == ONE_DAY
    assert aggregate(shuffled, "1m") == ONE_MIN
    assert aggregate(ONE_MIN, "15m") == [
        bar(at(23, 45, day=-1), "100.00", "101.00", "99.50", "100.50", 10, 2, interval="15m"),
        bar(at(9, 45), "3500.00", "3510.00", "3499.00", "3509.00", 150, 8, interval="15m"),
        bar(at(10, 0), "3509.05", "3512.35", "3495.05", "3499.95", 55, 7, interval="15m"),
    ]
    assert aggregate([], "1h") == []
    with pytest.raises(ValueError, match="bad_interval"):
        aggregate(ONE_MIN, "1s")  # cannot make short bars from long ones


def test_query_bars_reads_stored_intervals_and_aggregates_the_others(store: HistoryStore) -> None:
    store.write_bars(ONE_MIN)
    store.write_bars([bar(at(10, 0), "1.00", "1.00", "1.00", "1.00", interval="1s")])  # not part of any 1m bar
    day_before, day_after = at(0, 0, day=-1), at(0, 0, day=1)
    assert query_bars(store, "TCS", "1m", day_before, day_after) == ONE_MIN
    assert query_bars(store, "TCS", "1s", day_before, day_after) == [
        bar(at(10, 0), "1.00", "1.00", "1.00", "1.00", interval="1s")]
    assert query_bars(store, "TCS", "5m", day_before, day_after) == FIVE_MIN
    assert query_bars(store, "TCS", "1h", day_before, day_after) == ONE_HOUR
    assert query_bars(store, "TCS", "1d", day_before, day_after) == ONE_DAY
    assert [b.to_json() for b in query_bars(store, "TCS", "1d", D, day_after)] == [
        {"start": D, "start_ns": str(D), "open": "3500.00", "high": "3512.35", "low": "3495.05", "close": "3499.95",
         "volume": 205, "trades": 15}]
    # A bar is returned when from <= start < to, whole (with its 1m bars past to).
    assert query_bars(store, "TCS", "5m", at(10, 1), at(10, 6)) == FIVE_MIN[3:]
    assert query_bars(store, "TCS", "5m", at(10, 0), at(10, 0) + 1) == [FIVE_MIN[2]]
    assert query_bars(store, "TCS", "5m", at(9, 55), at(10, 5)) == FIVE_MIN[1:3]
    assert query_bars(store, "TCS", "1h", at(10, 0) + 1, at(11, 0)) == []
    assert query_bars(store, "INFY", "1d", day_before, day_after) == []


def test_bad_interval_names_raise_bad_interval(store: HistoryStore) -> None:
    assert [interval_ns(k) for k in ("1s", "1m", "5m", "15m", "1h", "1d")] == [
        SEC, MIN, 5 * MIN, 15 * MIN, 3600 * SEC, 86400 * SEC]
    assert list(INTERVALS) == ["1s", "1m", "5m", "15m", "1h", "1d"]
    for name in ["2m", "1M", "", "1 m", "1w"]:
        with pytest.raises(ValueError, match=r"^bad_interval"):
            interval_ns(name)
        with pytest.raises(ValueError, match=r"^bad_interval"):
            query_bars(store, "TCS", name, T0, T0 + MIN)


def test_records_check_their_fields() -> None:
    with pytest.raises(ValueError, match="bad symbol"):
        bar(T0, "1", "1", "1", "1", symbol="tcs")
    with pytest.raises(ValueError, match="multiple"):
        bar(T0 + 1, "1", "1", "1", "1")
    with pytest.raises(ValueError, match="bad_interval"):
        bar(T0, "1", "1", "1", "1", interval="2m")
    with pytest.raises(ValueError, match="finite Decimal"):
        BarRecord("TCS", "1m", T0, Decimal("NaN"), Decimal(1), Decimal(1), Decimal(1), 1, 1)
    with pytest.raises(ValueError, match="trade_id"):
        tick(0, T0)
    with pytest.raises(ValueError, match="aggressor"):
        TickRecord("TCS", 1, T0, Decimal(1), 1, "up")  # type: ignore[arg-type]


def test_open_history_picks_the_store(tmp_path: Path) -> None:
    with open_history("sqlite", sqlite_path=tmp_path / "h.sqlite3") as h:
        assert isinstance(h, SQLiteHistory)
    with pytest.raises(ValueError, match="sqlite_path"):
        open_history("sqlite")
    with pytest.raises(ValueError, match="url and database"):
        open_history("influxdb", url="http://127.0.0.1:8086")
    with pytest.raises(ValueError, match="unknown history store 'influx'"):
        open_history("influx")


# ---------------------------------------------------------------------------
# The writer thread
# ---------------------------------------------------------------------------


class Recording(HistoryStore):
    """A store in front of another: records the size of every write; fails every write while ``down`` is set."""

    def __init__(self, inner: HistoryStore) -> None:
        self.inner = inner
        self.down = threading.Event()
        self.writes: list[tuple[str, int]] = []
        self.bar_writes: list[list[BarRecord]] = []

    def write_bars(self, bars: Sequence[BarRecord]) -> None:
        if self.down.is_set():
            raise StoreUnavailable("test store is down")
        self.inner.write_bars(bars)
        self.writes.append(("bars", len(bars)))
        self.bar_writes.append(list(bars))

    def write_ticks(self, ticks: Sequence[TickRecord]) -> None:
        if self.down.is_set():
            raise StoreUnavailable("test store is down")
        self.inner.write_ticks(ticks)
        self.writes.append(("ticks", len(ticks)))

    def bars(self, symbol: str, interval: str, start_ns: int, end_ns: int) -> list[BarRecord]:
        return self.inner.bars(symbol, interval, start_ns, end_ns)

    def ticks(self, symbol: str, start_ns: int, end_ns: int) -> list[TickRecord]:
        return self.inner.ticks(symbol, start_ns, end_ns)

    def close(self) -> None:
        self.inner.close()


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_writer_writes_in_batches(store: HistoryStore) -> None:
    rec = Recording(store)
    w = HistoryWriter(rec, batch=100, flush_s=30.0)
    ticks = [tick(i, T0 + i * 1000) for i in range(1, 251)]
    w.add_ticks(ticks[:120])
    w.add_ticks(ticks[120:])
    wait_for(lambda: w.pending() == 50)  # two full batches go at once; the rest waits for flush_s or flush()
    assert rec.writes == [("ticks", 100), ("ticks", 100)]
    assert w.flush(10.0)
    assert rec.writes == [("ticks", 100), ("ticks", 100), ("ticks", 50)]
    assert store.ticks("TCS", T0, T0 + MIN) == ticks
    assert w.pending() == 0 and w.written == 250
    assert w.close()


def test_writer_writes_a_lone_point_after_flush_s(store: HistoryStore) -> None:
    w = HistoryWriter(store, batch=5000, flush_s=0.05)
    w.add_bars([bar(T0, "3512.35", "3512.35", "3512.35", "3512.35")])
    wait_for(lambda: w.pending() == 0, timeout=5.0)
    assert store.bars("TCS", "1m", T0, T0 + MIN) == [bar(T0, "3512.35", "3512.35", "3512.35", "3512.35")]
    assert w.close()


def test_writer_coalesces_a_bar_queued_several_times(store: HistoryStore) -> None:
    rec = Recording(store)
    w = HistoryWriter(rec, flush_s=30.0)
    w.add_bars([bar(T0, "3500.00", "3500.00", "3500.00", "3500.00", 1, 1)])
    w.add_bars([bar(T0, "3500.00", "3505.00", "3500.00", "3505.00", 2, 2), bar(T0 + MIN, "1.00", "1.00", "1.00",
                                                                              "1.00")])
    w.add_bars([bar(T0, "3500.00", "3505.00", "3490.00", "3491.00", 3, 3)])
    w.add_bars([bar(T0, "3500.00", "3505.00", "3490.00", "3491.00", 3, 3, interval="1s")])  # another key
    assert w.pending() == 3
    assert w.flush(10.0)
    assert rec.writes == [("bars", 3)]
    assert rec.bar_writes[0] == [bar(T0 + MIN, "1.00", "1.00", "1.00", "1.00"),  # in the order last queued
                                 bar(T0, "3500.00", "3505.00", "3490.00", "3491.00", 3, 3),
                                 bar(T0, "3500.00", "3505.00", "3490.00", "3491.00", 3, 3, interval="1s")]
    assert store.bars("TCS", "1m", T0, T0 + 2 * MIN) == [bar(T0, "3500.00", "3505.00", "3490.00", "3491.00", 3, 3),
                                                         bar(T0 + MIN, "1.00", "1.00", "1.00", "1.00")]
    assert w.close()


def test_writer_close_flushes_and_then_refuses_points(store: HistoryStore) -> None:
    w = HistoryWriter(store, flush_s=30.0)
    bars = [bar(T0 + i * MIN, "0.05", "0.10", "0.05", "0.10") for i in range(10)]
    ticks = [tick(i, T0) for i in range(1, 11)]
    w.add_bars(bars)
    w.add_ticks(ticks)
    assert w.close(10.0)
    assert w.pending() == 0
    assert store.bars("TCS", "1m", T0, T0 + 60 * MIN) == bars
    assert store.ticks("TCS", T0, T0 + MIN) == ticks
    with pytest.raises(RuntimeError, match="closed"):
        w.add_ticks([tick(11, T0)])
    with pytest.raises(TypeError, match="not a TickRecord"):
        HistoryWriter(store).add_ticks([bars[0]])  # type: ignore[list-item]


def test_writer_loses_and_doubles_nothing_with_producers_on_several_threads(tmp_path: Path) -> None:
    store = SQLiteHistory(tmp_path / "h.sqlite3")
    rec = Recording(store)
    w = HistoryWriter(rec, batch=97, flush_s=0.001)
    symbols = ["TCS", "INFY", "SBIN", "M&M"]

    def produce(symbol: str) -> None:
        for i in range(1, 1501):
            w.add_ticks([tick(i, T0 + i // 3, f"{i}.05", symbol=symbol)])
            w.add_bars([bar(T0 + (i // 100) * MIN, "1.00", f"{i}.00", "1.00", f"{i}.00", i, i, symbol=symbol)])

    threads = [threading.Thread(target=produce, args=(s,)) for s in symbols]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert w.flush(20.0)
    assert max(n for _, n in rec.writes) <= 97
    for s in symbols:
        assert store.ticks(s, T0, T0 + MIN) == [tick(i, T0 + i // 3, f"{i}.05", symbol=s) for i in range(1, 1501)]
        last = [min(1500, k * 100 + 99) for k in range(16)]
        assert store.bars(s, "1m", T0, T0 + 60 * MIN) == [
            bar(T0 + k * MIN, "1.00", f"{i}.00", "1.00", f"{i}.00", i, i, symbol=s) for k, i in enumerate(last)]
    assert w.close()
    store.close()


def test_writer_keeps_points_through_an_outage_and_logs_it_once(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording(SQLiteHistory(tmp_path / "h.sqlite3"))
    rec.down.set()
    w = HistoryWriter(rec, batch=10, flush_s=0.0)
    with caplog.at_level(logging.INFO, logger="exfab.history"):
        ticks = [tick(i, T0 + i) for i in range(1, 26)]
        w.add_ticks(ticks)
        wait_for(lambda: w.failures >= 4)  # retries after 0.1, 0.2, 0.4 s
        assert w.pending() == 25
        assert not w.flush(0.05)
        failed = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(failed) == 1 and "keeping 25 points" in failed[0].getMessage()
        rec.down.clear()
        assert w.flush(10.0)
        assert rec.ticks("TCS", T0, T0 + MIN) == ticks
        assert "is back after" in caplog.text
        assert "25 points written late" in caplog.text
        rec.down.set()  # a second outage is logged again
        w.add_ticks([tick(26, T0 + 26)])
        wait_for(lambda: len([r for r in caplog.records if "failed" in r.getMessage()]) == 2)
        assert not w.close(0.2)
        assert "closed with 1 points unwritten" in caplog.text
    rec.close()


@pytest.mark.server("influxdb")
def test_writer_keeps_points_while_influxd_is_stopped_and_writes_them_all_when_it_is_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = start_influxd(tmp_path / "influxd")
    try:
        server.stop()
        store = InfluxHistory(server.url, "exfab", timeout=2.0)  # the ticker may start before influxd
        w = HistoryWriter(store, batch=200, flush_s=0.05)
        with caplog.at_level(logging.INFO, logger="exfab.history"):
            bars = [bar(T0 + i * MIN, "3512.35", "3520.00", "3495.05", "3500.00", i + 1, 1) for i in range(30)]
            ticks = [tick(i, T0 + (i // 4) * SEC, f"3500.{i % 100:02d}") for i in range(1, 501)]  # 4 per ts
            w.add_ticks(ticks[:250])
            w.add_bars(bars)
            w.add_bars(bars[:10])  # queued twice: written once
            w.add_ticks(ticks[250:])
            wait_for(lambda: w.failures >= 2)
            assert w.pending() == 530
            assert "cannot be reached" in caplog.text
            server.start()
            assert w.flush(20.0)
            assert w.pending() == 0
            assert "530 points written late" in caplog.text
        got = store.ticks("TCS", T0, T0 + 10 * MIN)
        assert got == ticks  # none lost, none doubled
        assert store.bars("TCS", "1m", T0, T0 + 60 * MIN) == bars
        assert w.close()
        store.close()
    finally:
        server.stop()


def test_trade_ids_of_another_day_do_not_replace_the_first_days_ticks(store: HistoryStore) -> None:
    # Each trading day starts a new journal, whose trade ids start again at 1.
    day = 86_400 * SEC
    first = [tick(1, T0, "3500.00"), tick(2, T0 + SEC, "3500.05")]
    second = [tick(1, T0 + day, "3600.00"), tick(2, T0 + day + SEC, "3600.05")]
    store.write_ticks(first)
    store.write_ticks(second)
    assert store.ticks("TCS", T0, T0 + 2 * day) == first + second
