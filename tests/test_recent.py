"""The recent-state contract over MemoryRecent and RedisRecent (a real redis-server); Redis's layout and failures."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import redis

from fabric.orderstore import StoreError
from fabric.recent import FINISHED_TTL_S, TAPE, MemoryRecent, RecentState
from fabric.records import Batch, OrderRow, TradeRow
from fabric.redis_recent import CHUNK, SCAN_COUNT, RedisRecent
from tests.servers import RedisServer, start_redis

SEC = 1_000_000_000
DAY = "2025-11-25"
NEXT_DAY = "2025-11-26"
T0 = 1_764_050_400 * SEC  # 2025-11-25 11:30 IST

pytestmark = pytest.mark.timeout(60)


def order(oid: str, *, broker: str = "B1", state: str = "new", seq: int = 1, created: int = 0,
          **changes: Any) -> OrderRow:
    """Return an order with every field set, accepted ``created`` seconds after T0, as it stands after ``seq``."""
    fields: dict[str, Any] = dict(
        day=DAY, broker=broker, oid=oid, shard=1, symbol="TCS", side="buy", type="limit", price="3512.30", qty=10,
        tif="day", state=state, cum_qty=0, leaves_qty=10, notional="0", avg_px=None, reason=None, first_seq=1,
        last_seq=seq, created_ts=T0 + created * SEC, updated_ts=T0 + created * SEC + seq)
    fields.update(changes)
    return OrderRow(**fields)


def filled(r: OrderRow, seq: int) -> OrderRow:
    """Return the order ``r`` filled whole at its price by message ``seq``."""
    return order(r.oid, broker=r.broker, state="filled", seq=seq, created=(r.created_ts - T0) // SEC, cum_qty=r.qty,
                 leaves_qty=0, notional=str(r.qty * Decimal(r.price or 0)), avg_px=r.price)


def trade(i: int, symbol: str = "TCS") -> TradeRow:
    return TradeRow(day=DAY, symbol=symbol, shard=1, seq=1000 + i, trade_id=i, price=f"{3500 + i / 20:.2f}",
                    qty=i, aggressor="buy" if i % 2 else "sell", buy_broker="B1", buy_oid=f"b{i}",
                    sell_broker="B2", sell_oid=f"s{i}", ts=T0 + i)


# ---------------------------------------------------------------------------
# Fixtures: one contract, two implementations
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for this module, on a free port (skipped without the binary, failed in CI)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """An implementation under test: ``open()`` makes a state; ``wait(s)`` lets ``s`` seconds pass for it."""

    kind: str
    factory: Callable[[float], RecentState]
    wait: Callable[[float], None]
    short_ttl: float  # a finished_ttl the expiry test can wait out
    server: RedisServer | None = None
    opened: list[RecentState] = field(default_factory=list)

    def open(self, finished_ttl: float = FINISHED_TTL_S) -> RecentState:
        state = self.factory(finished_ttl)
        self.opened.append(state)
        return state

    def direct(self) -> redis.Redis:
        """Return a client of the Redis server, to look at the keys."""
        assert self.server is not None
        return redis.Redis.from_url(self.server.url)


def redis_backend_on(server: RedisServer) -> Backend:
    """Return the Redis backend on ``server``, emptied first."""
    b = Backend("redis", lambda ttl: RedisRecent(server.url, finished_ttl=ttl), time.sleep, short_ttl=0.5,
                server=server)
    with b.direct() as r:
        r.flushall()
    return b


def closing(b: Backend) -> Iterator[Backend]:
    try:
        yield b
    finally:
        if b.server is not None and not b.server.running:
            b.server.start()  # a test that killed the module's server leaves it running for the next
        for s in b.opened:
            s.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.server("redis"))])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        clock = Clock()

        def advance(s: float) -> None:
            clock.now += s

        yield from closing(Backend("memory", lambda ttl: MemoryRecent(ttl, clock), advance, short_ttl=60.0))
    else:
        yield from closing(redis_backend_on(request.getfixturevalue("redis_server")))


@pytest.fixture
def redis_backend(redis_server: RedisServer) -> Iterator[Backend]:
    yield from closing(redis_backend_on(redis_server))


@pytest.fixture
def recent(backend: Backend) -> RecentState:
    return backend.open()


# ---------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------


def test_applied_orders_read_back_exactly(recent: RecentState) -> None:
    rows = [
        order("o1"),
        order("o2", state="partially_filled", seq=7, cum_qty=3, leaves_qty=7, notional="10536.90",
              avg_px="3512.3", updated_ts=2**62),
        order("o3", side="sell", type="market", price=None, tif="ioc", state="cancelled", leaves_qty=0,
              reason="cancelled by the broker: \u20b9 limit", seq=9),
        OrderRow(day=DAY, broker="B1", oid="o4", shard=0, symbol="INFY", state="rejected", reason="unknown_symbol"),
        order("with:colon and space", broker="B2", price="3500.00"),
    ]
    recent.apply(Batch(orders=rows))
    for r in rows:
        assert recent.order(r.broker, r.oid) == r
    assert recent.order("B2", "o1") is None
    assert recent.order("B1", "nope") is None


def test_open_orders_are_the_brokers_oldest_first_and_a_finished_one_leaves(recent: RecentState) -> None:
    o1, o2, o3 = order("o1", created=1), order("o2", created=2), order("o3", created=3)
    other = order("o1", broker="B2", created=0)
    for r in (o1, o2, o3, other):
        recent.apply(Batch(orders=[r]))
    assert recent.open_orders("B1") == [o1, o2, o3]
    assert recent.open_orders("B2") == [other]
    assert recent.open_orders("B3") == []
    o1 = order("o1", created=1, state="partially_filled", seq=4, cum_qty=4, leaves_qty=6)
    recent.apply(Batch(orders=[o1, filled(o2, 5)]))
    assert recent.open_orders("B1") == [o1, o3]
    recent.apply(Batch(orders=[filled(o1, 6), filled(o3, 7)]))
    assert recent.open_orders("B1") == []
    assert recent.order("B1", "o3") == filled(o3, 7)  # finished: still readable, for finished_ttl
    assert recent.open_orders("B2") == [other]


def test_a_batch_of_more_than_a_script_call_holds_is_written_whole(recent: RecentState) -> None:
    rows = [order(f"o{i:05}", created=i, state="new" if i % 3 else "filled", seq=i) for i in range(CHUNK * 2 + 7)]
    recent.apply(Batch(orders=rows, trades=[trade(1)]))
    assert [recent.order("B1", r.oid) for r in rows] == rows
    assert recent.open_orders("B1") == [r for r in rows if r.open]
    assert recent.last_trades("TCS") == [trade(1)]


def test_finished_orders_expire_after_finished_ttl_and_open_ones_stay(backend: Backend) -> None:
    ttl = backend.short_ttl
    recent = backend.open(finished_ttl=ttl)
    done, live = filled(order("o1"), 2), order("o2")
    recent.apply(Batch(orders=[done, live]))
    assert recent.order("B1", "o1") == done
    backend.wait(ttl + 0.2)
    assert recent.order("B1", "o1") is None
    assert recent.order("B1", "o2") == live
    assert recent.open_orders("B1") == [live]


def test_an_older_row_never_overwrites_a_newer_one(backend: Backend) -> None:
    recent = backend.open()
    new = order("o1", seq=2)
    part = order("o1", state="partially_filled", seq=5, cum_qty=4, leaves_qty=6)
    done = filled(new, 9)
    recent.apply(Batch(orders=[done]))
    recent.apply(Batch(orders=[part]))
    recent.apply(Batch(orders=[new]))
    assert recent.order("B1", "o1") == done
    assert recent.open_orders("B1") == []
    recent.apply(Batch(orders=[done]))  # the same row again changes nothing
    assert recent.order("B1", "o1") == done


def test_a_row_of_a_later_day_replaces_the_order_whatever_its_seq(recent: RecentState) -> None:
    recent.apply(Batch(orders=[filled(order("o1"), 900)]))
    again = order("o1", day=NEXT_DAY, seq=3, created=86400)  # the id used again the next day, seqs from 1 again
    recent.apply(Batch(orders=[again]))
    assert recent.order("B1", "o1") == again
    assert recent.open_orders("B1") == [again]


def test_the_tape_keeps_the_last_trades_newest_first_and_the_last_price(recent: RecentState) -> None:
    tcs = [trade(i) for i in range(1, 131)]
    infy = [trade(i, "INFY") for i in range(1, 4)]
    for i in range(0, len(tcs), 7):
        recent.apply(Batch(trades=[*tcs[i:i + 7], *infy[i // 7:i // 7 + 1]]))
    newest_first = tcs[::-1]
    assert recent.last_trades("TCS") == newest_first[:TAPE]
    assert recent.last_trades("TCS", 5) == newest_first[:5]
    assert recent.last_trades("TCS", 10 * TAPE) == newest_first[:TAPE]
    assert recent.last_trades("TCS", 0) == []
    assert recent.last_price("TCS") == tcs[-1]
    assert recent.last_trades("INFY") == infy[::-1]
    assert recent.last_price("INFY") == infy[-1]
    assert recent.last_trades("WIPRO") == []
    assert recent.last_price("WIPRO") is None


def test_one_batch_of_more_trades_than_the_tape_keeps_its_last(recent: RecentState) -> None:
    tcs = [trade(i) for i in range(1, 2 * TAPE + 51)]
    recent.apply(Batch(trades=tcs))
    assert recent.last_trades("TCS") == tcs[::-1][:TAPE]
    assert recent.last_price("TCS") == tcs[-1]


def test_rebuild_replaces_everything(backend: Backend) -> None:
    recent = backend.open(finished_ttl=backend.short_ttl)
    recent.apply(Batch(orders=[order("o1"), filled(order("o2"), 3), order("o9", broker="B2")],
                       trades=[trade(i) for i in range(1, 6)]))
    n1, n2, n3 = order("n1", created=1), filled(order("n2", created=2), 4), order("n3", broker="B3", created=3)
    infy = [trade(i, "INFY") for i in range(1, 151)]
    recent.rebuild(iter([n1, n2, n3]), iter(infy))
    assert [recent.order(r.broker, r.oid) for r in (n1, n2, n3)] == [n1, n2, n3]
    assert recent.lost() is False
    for broker, oid in [("B1", "o1"), ("B1", "o2"), ("B2", "o9")]:
        assert recent.order(broker, oid) is None
    assert recent.open_orders("B1") == [n1]
    assert recent.open_orders("B2") == []
    assert recent.open_orders("B3") == [n3]
    assert recent.last_trades("TCS") == []
    assert recent.last_price("TCS") is None
    assert recent.last_trades("INFY") == infy[::-1][:TAPE]
    assert recent.last_price("INFY") == infy[-1]
    backend.wait(backend.short_ttl + 0.2)
    recent.apply(Batch())
    assert recent.order("B1", "n2") is None  # a finished order rebuilt gets its ttl
    assert recent.order("B1", "n1") == n1


def test_lost_is_false_after_rebuild_and_apply_and_true_after_a_restart_empty(backend: Backend) -> None:
    recent = backend.open()
    recent.rebuild([], [])
    recent.apply(Batch(orders=[order("o1")], trades=[trade(1)]))
    assert recent.lost() is False
    if backend.server is None:
        return  # memory is lost only with the node
    backend.server.kill()
    backend.server.start()
    assert recent.lost() is True
    assert recent.order("B1", "o1") is None
    recent.apply(Batch(orders=[order("o2")]))
    assert recent.lost() is True  # writing after the loss does not hide it
    recent.rebuild([order("o1")], [trade(1)])
    assert recent.lost() is False
    assert recent.open_orders("B1") == [order("o1")]


# ---------------------------------------------------------------------------
# Redis: the key layout and failures
# ---------------------------------------------------------------------------

redis_only = pytest.mark.server("redis")


@redis_only
def test_redis_keys_are_laid_out_as_documented(redis_backend: Backend) -> None:
    recent = redis_backend.open(finished_ttl=60.0)
    recent.rebuild([], [])
    recent.apply(Batch(orders=[order("o1", created=2), filled(order("o2"), 3), order("o3", created=1)],
                       trades=[trade(1), trade(2)]))
    with redis_backend.direct() as r:
        assert sorted(r.keys("*")) == [b"exfab:last:TCS", b"exfab:marker", b"exfab:open:B1", b"exfab:order:B1:o1",
                                       b"exfab:order:B1:o2", b"exfab:order:B1:o3", b"exfab:tape:TCS"]
        assert r.hget("exfab:order:B1:o1", "last_seq") == b"1"
        assert not r.hexists("exfab:order:B1:o1", "avg_px")  # None: no field
        assert r.zrange("exfab:open:B1", 0, -1, withscores=True) == [(b"o3", float(T0 + SEC)),
                                                                     (b"o1", float(T0 + 2 * SEC))]
        assert r.llen("exfab:tape:TCS") == 2
        assert r.pttl("exfab:order:B1:o1") == -1
        assert 0 < r.pttl("exfab:order:B1:o2") <= 60_000
        recent.apply(Batch(orders=[order("o2", day=NEXT_DAY)]))  # the id used again: open, no expiry any more
        assert r.pttl("exfab:order:B1:o2") == -1


@redis_only
def test_redis_rebuild_leaves_other_prefixes_alone(redis_backend: Backend) -> None:
    assert redis_backend.server is not None
    url = redis_backend.server.url
    ours, theirs = RedisRecent(url, prefix="a*[b]"), RedisRecent(url, prefix="a")
    redis_backend.opened += [ours, theirs]
    theirs.rebuild([order("o1")], [trade(1)])
    ours.apply(Batch(orders=[order(f"o{i}") for i in range(SCAN_COUNT + 10)]))
    ours.rebuild([order("n1")], [])
    assert ours.open_orders("B1") == [order("n1")]
    assert theirs.open_orders("B1") == [order("o1")]
    assert theirs.last_price("TCS") == trade(1)
    assert theirs.lost() is False
    with redis_backend.direct() as r:
        assert len(r.keys("a\\*\\[b\\]:*")) == 3  # the order, the open set, the marker


@redis_only
def test_a_fresh_redis_is_lost_until_rebuilt(redis_backend: Backend) -> None:
    recent = redis_backend.open()
    assert recent.lost() is True
    recent.apply(Batch(orders=[order("o1")]))
    assert recent.lost() is True
    recent.rebuild([], [])
    assert recent.lost() is False


@redis_only
def test_redis_killed_raises_store_error_and_works_again_after_a_restart(redis_backend: Backend) -> None:
    server = redis_backend.server
    assert server is not None
    recent = redis_backend.open()
    recent.rebuild([order("o1")], [trade(1)])
    server.kill()
    with pytest.raises(StoreError, match=f"^{server.url}: apply: .*Connection refused"):
        recent.apply(Batch(orders=[order("o2")]))
    calls: list[tuple[str, Callable[[], object]]] = [
        ("lost", recent.lost), ("rebuild", lambda: recent.rebuild([], [])),
        ("order", lambda: recent.order("B1", "o1")), ("open orders", lambda: recent.open_orders("B1")),
        ("last trades", lambda: recent.last_trades("TCS")), ("last price", lambda: recent.last_price("TCS"))]
    for what, call in calls:
        with pytest.raises(StoreError, match=f"^{server.url}: {what}: "):
            call()
    server.start()
    recent.apply(Batch(orders=[order("o2")]))
    assert recent.order("B1", "o2") == order("o2")
    assert recent.lost() is True
    recent.rebuild([order("o1"), order("o2")], [trade(1)])
    assert recent.open_orders("B1") == [order("o1"), order("o2")]


@redis_only
def test_redis_refusals_are_store_errors_that_say_why(redis_backend: Backend) -> None:
    recent = redis_backend.open()
    with redis_backend.direct() as r:
        r.set("exfab:order:B1:o1", "not a hash")
        with pytest.raises(StoreError, match=r"apply: .*WRONGTYPE"):
            recent.apply(Batch(orders=[order("o1")]))
        with pytest.raises(StoreError, match=r"order: .*WRONGTYPE"):
            recent.order("B1", "o1")
        r.delete("exfab:order:B1:o1")
        r.hset("exfab:order:B1:o1", mapping={"day": DAY, "qty": "ten"})
        with pytest.raises(StoreError, match=r"order: Expected `int`"):
            recent.order("B1", "o1")
        r.set("exfab:last:TCS", b"\xc1")
        with pytest.raises(StoreError, match=r"last price: "):
            recent.last_price("TCS")
        r.replicaof("127.0.0.1", "1")  # a replica (of nothing) refuses writes
        try:
            with pytest.raises(StoreError, match=r"apply: .*read only replica"):
                recent.apply(Batch(orders=[order("o2")]))
        finally:
            r.replicaof("NO", "ONE")
    recent.apply(Batch(orders=[order("o2")]))
    assert recent.order("B1", "o2") == order("o2")


@redis_only
def test_redis_url_password_is_never_shown(redis_backend: Backend) -> None:
    assert redis_backend.server is not None
    port = redis_backend.server.port
    recent = RedisRecent(f"redis://user:s3cret@127.0.0.1:{port}/0?password=s3cret&db=0")
    redis_backend.opened.append(recent)
    assert recent.name == f"redis:redis://user@127.0.0.1:{port}/0?db=0"
    with pytest.raises(StoreError) as e:
        recent.lost()  # the server has no such user
    assert "s3cret" not in str(e.value)
    assert str(e.value).startswith(f"redis://user@127.0.0.1:{port}/0?db=0: lost: ")
    with pytest.raises(StoreError, match="bad Redis url"):
        RedisRecent("http://127.0.0.1:6379")


def test_the_embedded_state_keeps_at_most_max_finished_finished_orders() -> None:
    from fabric.recent import MemoryRecent

    recent = MemoryRecent(max_finished=3)
    live = order("live", seq=1)
    recent.apply(Batch(orders=[live]))
    for i in range(5):
        recent.apply(Batch(orders=[filled(order(f"o{i}", seq=10 + i), 9)]))
    assert [recent.order("B1", f"o{i}") is not None for i in range(5)] == [False, False, True, True, True]
    assert recent.order("B1", "live") == live, "an open order is never dropped"
