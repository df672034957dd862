"""The call auction (fabric/auction.py): the worked examples of docs/sessions.md, number for number, and properties.

Each worked example below is one of docs/sessions.md, section 3, with the same
orders and the same figures; the property tests check the rules on random
collections against a naive reference that tries every candidate price.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabric.auction import (
    AuctionError,
    AuctionLevels,
    AuctionOrder,
    AuctionTrade,
    Equilibrium,
    Leftover,
    equilibrium,
    uncross,
)
from fabric.constants import BUY, SELL, STP_CANCEL_BOTH, STP_CANCEL_INCOMING, STP_CANCEL_RESTING, STP_OFF


def _b(oid: int, price: int | None, qty: int) -> AuctionOrder:
    return AuctionOrder(oid, BUY, price, qty)


def _s(oid: int, price: int | None, qty: int) -> AuctionOrder:
    return AuctionOrder(oid, SELL, price, qty)


# -- the worked examples of docs/sessions.md ------------------------------------------------------------------------

# Example 1: rule 1 decides; also the allocation example.
EX1 = [_b(1, 102, 30), _s(5, 99, 20), _b(2, 101, 20), _s(6, 100, 20), _b(3, 100, 10), _s(7, 101, 30),
       _b(4, None, 10), _s(8, 103, 10)]


def test_example_1_largest_tradable_quantity_decides() -> None:
    levels = AuctionLevels.of(EX1)
    assert levels.table() == [(99, 70, 20), (100, 70, 40), (101, 60, 70), (102, 40, 70), (103, 10, 80)]
    assert equilibrium(EX1, 100) == Equilibrium(101, 60, 10, "tradable")


def test_example_1_allocates_limit_against_limit_then_limit_against_market() -> None:
    out = uncross(EX1, 100)
    assert out.trades == (AuctionTrade(1, 5, 20), AuctionTrade(1, 6, 10), AuctionTrade(2, 6, 10),
                          AuctionTrade(2, 7, 10), AuctionTrade(4, 7, 10))
    assert out.leftovers == (Leftover(3, BUY, 100, 10, False), Leftover(7, SELL, 101, 10, False),
                             Leftover(8, SELL, 103, 10, False))


# Example 2: two prices trade 20; the smaller unmatched quantity decides, though the other is the close.
EX2 = [_b(1, 101, 20), _b(2, 100, 10), _s(3, 99, 10), _s(4, 100, 10)]


def test_example_2_smallest_unmatched_quantity_decides() -> None:
    assert AuctionLevels.of(EX2).table() == [(99, 30, 10), (100, 30, 20), (101, 20, 20)]
    assert equilibrium(EX2, 100) == Equilibrium(101, 20, 0, "unmatched")
    out = uncross(EX2, 100)
    assert out.trades == (AuctionTrade(1, 3, 10), AuctionTrade(1, 4, 10))
    assert out.leftovers == (Leftover(2, BUY, 100, 10, False),)


# Example 3: 99 and 101 tie on both; the close (95) is below both, the nearer (99) is the price.
EX3 = [_b(1, 101, 10), _b(2, 98, 5), _s(3, 99, 10), _s(4, 102, 5)]


def test_example_3_nearest_the_previous_close_decides() -> None:
    assert AuctionLevels.of(EX3).table() == [(98, 15, 0), (99, 10, 10), (101, 10, 10), (102, 0, 15)]
    assert equilibrium(EX3, 95) == Equilibrium(99, 10, 0, "close")
    assert equilibrium(EX3, 105) == Equilibrium(101, 10, 0, "close")  # above both: the higher
    assert equilibrium(EX3, 99) == Equilibrium(99, 10, 0, "close")  # the close is one of them: itself
    assert equilibrium(EX3, 101) == Equilibrium(101, 10, 0, "close")
    out = uncross(EX3, 95)
    assert out.trades == (AuctionTrade(1, 3, 10),)
    assert out.leftovers == (Leftover(2, BUY, 98, 5, False), Leftover(4, SELL, 102, 5, False))


# Example 4: 99 and 101 tie on both and are equally near the close (100), which lies between: 100 is the price,
# and it leaves nothing unmatched where the candidates left 5.
EX4 = [_b(1, 101, 10), _b(2, 99, 5), _s(3, 99, 10), _s(4, 101, 5)]


def test_example_4_the_previous_close_between_the_tied_prices_is_the_price() -> None:
    assert AuctionLevels.of(EX4).table() == [(99, 15, 10), (101, 10, 15)]
    assert equilibrium(EX4, 100) == Equilibrium(100, 10, 0, "close")
    out = uncross(EX4, 100)
    assert out.trades == (AuctionTrade(1, 3, 10),)
    assert out.leftovers == (Leftover(2, BUY, 99, 5, False), Leftover(4, SELL, 101, 5, False))


# Example 5: only market orders: the previous close; the buy left over becomes a limit order at it.
EX5 = [_b(1, None, 20), _s(2, None, 20), _b(3, None, 10)]


def test_example_5_only_market_orders_trade_at_the_previous_close() -> None:
    assert AuctionLevels.of(EX5).table() == []
    assert equilibrium(EX5, 100) == Equilibrium(100, 20, 10, "market_only")
    out = uncross(EX5, 100)
    assert out.trades == (AuctionTrade(1, 2, 20),)
    assert out.leftovers == (Leftover(3, BUY, 100, 10, True),)


# Example 6: market buys meet limit sells before the market sell; the market sell left becomes a limit at 102.
EX6 = [_b(1, None, 40), _s(2, 100, 20), _s(3, None, 10), _b(4, 101, 10), _s(5, 102, 20)]


def test_example_6_market_orders_meet_limit_orders_before_market_orders() -> None:
    assert AuctionLevels.of(EX6).table() == [(100, 50, 30), (101, 50, 30), (102, 40, 50)]
    assert equilibrium(EX6, 100) == Equilibrium(102, 40, 10, "tradable")
    out = uncross(EX6, 100)
    assert out.trades == (AuctionTrade(1, 2, 20), AuctionTrade(1, 5, 20))
    assert out.leftovers == (Leftover(3, SELL, 102, 10, True), Leftover(4, BUY, 101, 10, False))


def test_no_overlap_has_no_equilibrium_and_market_orders_are_returned_unpriced() -> None:
    assert equilibrium([_b(1, 99, 10), _s(2, 101, 10)], 100) is None  # the books do not meet
    assert equilibrium([_b(1, 99, 10), _s(2, 101, 10), _s(3, None, 5)], 100) == Equilibrium(99, 5, 5, "tradable")
    orders = [_b(1, 99, 10), _b(2, None, 5)]  # no seller at all
    assert equilibrium(orders, 100) is None
    out = uncross(orders, 100)
    assert out.equilibrium is None and out.trades == ()
    assert out.leftovers == (Leftover(1, BUY, 99, 10, False),)
    assert out.unpriced == (orders[1],)
    assert equilibrium([], 100) is None


# -- bad input -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "reason"), [
    ((1, 2, 100, 10), "side must be BUY"),
    ((1, BUY, 100, 0), "quantity must be a positive whole number"),
    ((1, BUY, 0, 10), "limit price must be a positive number of ticks"),
    ((1, BUY, 100.5, 10), "limit price must be a positive number of ticks"),
])
def test_a_bad_order_is_refused_with_its_reason(args: tuple, reason: str) -> None:
    with pytest.raises(AuctionError, match=reason):
        AuctionOrder(*args)


def test_a_missing_previous_close_and_a_repeated_id_are_refused() -> None:
    with pytest.raises(AuctionError, match="previous close must be a positive number of ticks"):
        equilibrium(EX1, 0)
    with pytest.raises(AuctionError, match="two orders share an id"):
        uncross([_b(1, 100, 5), _s(1, 100, 5)], 100)


def test_levels_follow_cancels_and_refuse_taking_more_than_they_hold() -> None:
    levels = AuctionLevels.of(EX1)
    for o in EX1[4:]:
        levels.remove(o.side, o.price, o.qty)
    assert levels.table() == AuctionLevels.of(EX1[:4]).table()
    assert levels.equilibrium(100) == equilibrium(EX1[:4], 100)
    with pytest.raises(AuctionError, match="cannot take 31 at 102 off a level holding 30"):
        levels.remove(BUY, 102, 31)
    levels.remove(BUY, 102, 30)
    assert 102 not in levels.prices()
    with pytest.raises(AuctionError, match="cannot take 1 market off a side holding 0"):
        levels.remove(SELL, None, 1)


# -- properties ------------------------------------------------------------------------------------------------------

@st.composite
def books(draw: st.DrawFn) -> tuple[list[AuctionOrder], int]:
    n = draw(st.integers(0, 14))
    orders = []
    for oid in range(n):
        side = draw(st.sampled_from([BUY, SELL]))
        price = draw(st.none() | st.integers(95, 105))
        orders.append(AuctionOrder(oid, side, price, draw(st.integers(1, 6)) * draw(st.sampled_from([1, 10]))))
    prices = sorted({o.price for o in orders if o.price is not None})
    close = st.integers(90, 110) | st.sampled_from(prices) if prices else st.integers(90, 110)
    return orders, draw(close)  # a close often equal to an order's price: rule 3's edge


def _figures(orders: list[AuctionOrder], p: int) -> tuple[int, int]:
    d = sum(o.qty for o in orders if o.side == BUY and (o.price is None or o.price >= p))
    s = sum(o.qty for o in orders if o.side == SELL and (o.price is None or o.price <= p))
    return min(d, s), abs(d - s)


def _naive(orders: list[AuctionOrder], close: int) -> tuple[int, int, int] | None:
    # The rules as stated, by trying every candidate price one by one.
    candidates = sorted({o.price for o in orders if o.price is not None})
    if not candidates:
        t, u = _figures(orders, close)
        return (close, t, u) if t else None
    scored = [(p, *_figures(orders, p)) for p in candidates]
    best_t = max(t for _, t, _ in scored)
    if best_t == 0:
        return None
    best_u = min(u for _, t, u in scored if t == best_t)
    tied = [p for p, t, u in scored if t == best_t and u == best_u]
    if any(a <= close <= b for a in tied for b in tied):
        return (close, *_figures(orders, close))
    p = min(tied, key=lambda p: abs(p - close))
    return (p, best_t, best_u)


@given(books())
def test_equilibrium_agrees_with_trying_every_candidate(book: tuple[list[AuctionOrder], int]) -> None:
    orders, close = book
    eq = equilibrium(orders, close)
    naive = _naive(orders, close)
    assert (None if eq is None else (eq.price, eq.tradable, eq.unmatched)) == naive


@given(books())
def test_the_price_trades_the_most_and_then_leaves_the_least_unmatched(book: tuple[list[AuctionOrder], int]) -> None:
    orders, close = book
    eq = equilibrium(orders, close)
    if eq is None:
        return
    assert _figures(orders, eq.price) == (eq.tradable, eq.unmatched)
    for p in {o.price for o in orders if o.price is not None}:
        t, u = _figures(orders, p)
        assert t <= eq.tradable
        if t == eq.tradable:
            assert u >= eq.unmatched
            if u == eq.unmatched and p != eq.price:
                # rule 3: a tied candidate is never nearer the close than the price
                assert abs(p - close) >= abs(eq.price - close)


@given(books())
def test_the_uncross_conserves_respects_limits_and_leaves_an_uncrossed_book(
        book: tuple[list[AuctionOrder], int]) -> None:
    orders, close = book
    out = uncross(orders, close)
    traded = {o.oid: 0 for o in orders}
    for t in out.trades:
        traded[t.buy] += t.qty
        traded[t.sell] += t.qty
    by_oid = {o.oid: o for o in orders}
    for t in out.trades:
        assert by_oid[t.buy].side == BUY and by_oid[t.sell].side == SELL and t.qty > 0
    left = {lo.oid: lo for lo in out.leftovers}
    unpriced = {o.oid for o in out.unpriced}
    for o in orders:
        rest = left[o.oid].qty if o.oid in left else 0
        assert traded[o.oid] + rest + (o.qty if o.oid in unpriced else 0) == o.qty  # conserved
    if out.equilibrium is None:
        assert not out.trades
        return
    p = out.equilibrium.price
    assert sum(t.qty for t in out.trades) == out.equilibrium.tradable
    for o in orders:
        if traded[o.oid] and o.price is not None:  # never worse than its limit
            assert o.price >= p if o.side == BUY else o.price <= p
        if o.oid in left:
            assert left[o.oid].price == (p if o.price is None else o.price)
            assert left[o.oid].was_market == (o.price is None)
    bids = [lo.price for lo in out.leftovers if lo.side == BUY]
    asks = [lo.price for lo in out.leftovers if lo.side == SELL]
    if bids and asks:
        assert max(bids) < min(asks)  # what goes to the continuous book does not cross
    assert [lo.oid for lo in out.leftovers] == [o.oid for o in orders if o.oid in left]  # time priority kept


@given(books())
def test_the_uncross_fills_in_price_time_priority_and_limits_before_markets(
        book: tuple[list[AuctionOrder], int]) -> None:
    orders, close = book
    out = uncross(orders, close)
    if out.equilibrium is None:
        return
    p = out.equilibrium.price
    traded = {o.oid: 0 for o in orders}
    for t in out.trades:
        traded[t.buy] += t.qty
        traded[t.sell] += t.qty

    def rank(i: int, o: AuctionOrder) -> tuple[int, int, int]:
        # The order in which a side is served: limit orders by price then time, then market orders by time.
        if o.price is None:
            return (1, 0, i)
        return (0, -o.price if o.side == BUY else o.price, i)

    for side in (BUY, SELL):
        able = sorted(((rank(i, o), o) for i, o in enumerate(orders) if o.side == side
                       and (o.price is None or (o.price >= p if side == BUY else o.price <= p))),
                      key=lambda ro: ro[0])
        # Served in rank order: once one order is not filled in full, every later one gets nothing.
        short = False
        for _, o in able:
            if short:
                assert traded[o.oid] == 0, f"{o} traded though an order ahead of it was not filled"
            elif traded[o.oid] < o.qty:
                short = True


@given(books(), st.data())
def test_levels_kept_by_add_and_remove_agree_with_levels_built_afresh(
        book: tuple[list[AuctionOrder], int], data: st.DataObject) -> None:
    orders, close = book
    levels = AuctionLevels()
    live: list[AuctionOrder] = []
    for o in orders:
        levels.add(o.side, o.price, o.qty)
        live.append(o)
        drop: bool = data.draw(st.booleans())
        if drop:
            gone = live.pop(data.draw(st.integers(0, len(live) - 1)))
            levels.remove(gone.side, gone.price, gone.qty)
        assert levels.table() == AuctionLevels.of(live).table()
        assert levels.equilibrium(close) == equilibrium(live, close)


# -- self-trade prevention in the call (docs/sessions.md, section 4 and example 7) ------------------------------------


def test_example_7_self_trade_prevention_cancels_and_the_call_starts_over() -> None:
    x, y = 1, 2
    orders = [AuctionOrder(1, BUY, 101, 10, x), AuctionOrder(2, SELL, 100, 5, y),
              AuctionOrder(3, SELL, 99, 10, x, STP_CANCEL_INCOMING), AuctionOrder(4, BUY, 100, 5, y)]
    assert equilibrium(orders, 100) == Equilibrium(100, 15, 0, "tradable")  # the last indicative figures
    out = uncross(orders, 100)
    assert [o.oid for o in out.stp_cancelled] == [3]
    assert out.equilibrium == Equilibrium(101, 5, 5, "unmatched")
    assert out.trades == (AuctionTrade(1, 2, 5),)
    assert [(lo.oid, lo.price, lo.qty) for lo in out.leftovers] == [(1, 101, 5), (4, 100, 5)]
    # The mode is the later order's: the same pair with the mode on the earlier order trades.
    orders[0], orders[2] = AuctionOrder(1, BUY, 101, 10, x, STP_CANCEL_BOTH), AuctionOrder(3, SELL, 99, 10, x)
    assert uncross(orders, 100).stp_cancelled == ()


@st.composite
def broker_books(draw: st.DrawFn) -> list[AuctionOrder]:
    n = draw(st.integers(1, 25))
    return [AuctionOrder(i, draw(st.sampled_from([BUY, SELL])),
                         None if draw(st.integers(0, 5)) == 0 else draw(st.integers(95, 105)), draw(st.integers(1, 20)),
                         draw(st.integers(0, 2)), draw(st.sampled_from([STP_OFF, STP_CANCEL_RESTING,
                                                                        STP_CANCEL_INCOMING, STP_CANCEL_BOTH])))
            for i in range(n)]


@given(broker_books())
def test_the_call_with_self_trade_prevention_is_the_call_of_the_orders_it_leaves(orders: list[AuctionOrder]) -> None:
    out = uncross(orders, 100)
    gone = {o.oid for o in out.stp_cancelled}
    rest = [o for o in orders if o.oid not in gone]
    again = uncross(rest, 100)
    assert (again.equilibrium, again.trades, again.leftovers, again.unpriced, again.stp_cancelled) == (
        out.equilibrium, out.trades, out.leftovers, out.unpriced, ())
    by_oid = {o.oid: o for o in orders}
    for t in out.trades:
        b, s = by_oid[t.buy], by_oid[t.sell]
        assert b.broker != s.broker or by_oid[max(t.buy, t.sell)].stp == STP_OFF  # no self-trade its mode forbade
    traded = {t.buy for t in out.trades} | {t.sell for t in out.trades}
    assert not gone & {lo.oid for lo in out.leftovers} and not gone & traded
    bids = [lo.price for lo in out.leftovers if lo.side == BUY]
    asks = [lo.price for lo in out.leftovers if lo.side == SELL]
    assert not (bids and asks and max(bids) >= min(asks))  # still nothing crosses
