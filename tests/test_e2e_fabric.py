"""End-to-end: the exchange as processes (matchers, gateways) and brokers trading through it."""

from __future__ import annotations

import pytest

from fabric.client import BrokerClient
from fabric.protocol import Fill
from tests.helpers import gateway_endpoints
from topology.launcher import Launcher

pytestmark = pytest.mark.e2e


def _price(ex: Launcher, symbol: str, ticks_above_low: int) -> str:
    inst = ex.topo.instrument(symbol)
    assert inst.band_lo is not None
    return inst.to_price(inst.band_lo + ticks_above_low)


def test_brokers_on_two_gateways_trade_symbols_on_two_shards(exchange: Launcher) -> None:
    g1, g2 = gateway_endpoints(exchange)
    a_sym = exchange.topo.shards[0].symbols[0]
    b_sym = exchange.topo.shards[1].symbols[0]
    with BrokerClient([g1], "B1") as b1, BrokerClient([g2], "B2") as b2:
        for sym in (a_sym, b_sym):
            px = _price(exchange, sym, 100)
            rest = b1.buy(sym, 10, px)
            assert rest.accepted and rest.state == "new", rest
            hit = b2.sell(sym, 4, px, "IOC")
            assert hit.state == "filled" and hit.filled_qty == 4
            assert [(f.price, f.last_qty, f.aggressor) for f in hit.fills] == [(px, 4, True)]
            # The resting order's fill reaches B1 through the other gateway.
            fills = [m for m in _wait_reports(b1, 1) if isinstance(m, Fill)]
            assert [(f.oid, f.last_qty, f.leaves_qty, f.aggressor) for f in fills] == [(rest.oid, 4, 6, False)]
            st = b1.order_status(rest.oid, sym)
            assert (st.state, st.cum_qty, st.leaves_qty) == ("partially_filled", 4, 6)


def _wait_reports(client: BrokerClient, n: int, timeout: float = 5.0) -> list[object]:
    import time

    got: list[object] = []
    deadline = time.monotonic() + timeout
    while len([m for m in got if isinstance(m, Fill)]) < n and time.monotonic() < deadline:
        client.poll(0.1)
        while client.reports:
            got.append(client.reports.popleft())
    return got


def test_rejects_reach_the_broker_with_reasons(exchange: Launcher) -> None:
    (g1, _) = gateway_endpoints(exchange)
    sym = exchange.topo.shards[0].symbols[0]
    with BrokerClient([g1], "B1") as c:
        r = c.buy(sym, 10, "1.03")
        assert r.rejected is not None and r.rejected.reason in ("price_off_tick", "price_out_of_band")
        r = c.buy("NOPE", 1, "1.00")
        assert r.rejected is not None and r.rejected.reason == "unknown_symbol"
        r = c.cancel("never-sent", sym)
        assert r.rejected is not None and r.rejected.reason == "unknown_order"


def test_resent_new_with_same_oid_executes_once(exchange: Launcher) -> None:
    (g1, _) = gateway_endpoints(exchange)
    sym = exchange.topo.shards[1].symbols[0]
    px = _price(exchange, sym, 50)
    with BrokerClient([g1], "B7") as c:
        first = c.buy(sym, 5, px, oid="same-1")
        again = c.buy(sym, 5, px, oid="same-1")
        assert first.state == "new" and again.state == "new"
        assert again.status is not None and again.status.qty == 5
        book_qty = c.order_status("same-1", sym).leaves_qty
        assert book_qty == 5


def test_open_orders_lists_only_open_orders_of_the_broker(exchange: Launcher) -> None:
    g1, g2 = gateway_endpoints(exchange)
    a_sym, b_sym = exchange.topo.shards[0].symbols[1], exchange.topo.shards[1].symbols[1]
    with BrokerClient([g1], "B3") as c, BrokerClient([g2], "B4") as other:
        keep_a = c.buy(a_sym, 3, _price(exchange, a_sym, 10))
        keep_b = c.sell(b_sym, 2, _price(exchange, b_sym, 900))
        gone = c.buy(a_sym, 1, _price(exchange, a_sym, 11))
        c.cancel(gone.oid, a_sym)
        other.buy(a_sym, 1, _price(exchange, a_sym, 12))
        assert sorted(o.oid for o in c.open_orders()) == sorted([keep_a.oid, keep_b.oid])
        assert [o.oid for o in c.open_orders(b_sym)] == [keep_b.oid]


def test_async_client_commands_at_once_each_get_their_own_outcome(exchange: Launcher) -> None:
    import asyncio

    from fabric.client import AsyncBrokerClient

    g1, _ = gateway_endpoints(exchange)
    sym = exchange.topo.shards[0].symbols[3]

    async def main() -> list[object]:
        async with AsyncBrokerClient([g1], "B9") as c:
            return list(await asyncio.gather(*(c.buy(sym, q, _price(exchange, sym, 20 + q)) for q in range(1, 6))))

    results = asyncio.run(main())
    assert [(r.state, r.status.qty) for r in results] == [("new", q) for q in range(1, 6)]  # type: ignore[attr-defined]
    assert all(r.resends == 0 for r in results)  # type: ignore[attr-defined]
