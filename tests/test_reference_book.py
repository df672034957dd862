"""Hand-worked scenarios pinning docs/book-semantics.md on the reference book.

Every expected event row below was worked out by hand from the contract, not
produced by running the code.  The self-trade prevention and circuit filter
examples at the end run on the compiled book as well.  The small builders mirror the event layouts of
the contract field by field (unused fields 0); ``test_event_rows_*`` pins the
raw integer layout once without them.
"""

from __future__ import annotations

import pytest

from fabric.book import OrderBook
from fabric.constants import (
    BUY,
    CXL_FOK_UNFILLABLE,
    CXL_IOC_REMAINDER,
    CXL_REQUESTED,
    CXL_SELF_TRADE,
    DAY,
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_REJECTED,
    EV_REPLACED,
    EV_TRADE,
    FOK,
    GTC,
    IOC,
    LIMIT,
    M_BAND_HI,
    M_BAND_LO,
    MARKET,
    NO_PRICE,
    NO_QTY,
    OP_CANCEL,
    OP_NEW,
    OP_REPLACE,
    REJ_BAD_TIF,
    REJ_LADDER_SPAN,
    REJ_ORDER_CLOSED,
    REJ_PRICE_NOT_POSITIVE,
    REJ_PRICE_OUT_OF_BAND,
    REJ_QTY_NOT_LOT_MULTIPLE,
    SELL,
    STP_CANCEL_BOTH,
    STP_CANCEL_INCOMING,
    STP_CANCEL_RESTING,
    STP_OFF,
)
from fabric.reference import Event, ReferenceBook

# ---------------------------------------------------------------------------
# Event builders: one per layout in the contract.
# ---------------------------------------------------------------------------


def accepted(oid: int, side: int, price: int, qty: int) -> Event:
    return (EV_ACCEPTED, oid, side, price, qty, qty, 0, 0, 0, 0, 0)


def rejected(oid: int, side: int, op: int, reason: int) -> Event:
    return (EV_REJECTED, oid, side, 0, 0, 0, 0, op, 0, 0, reason)


def trade(
    oid: int,
    side: int,
    price: int,
    qty: int,
    leaves: int,
    cum: int,
    other: int,
    other_leaves: int,
    other_cum: int,
) -> Event:
    return (EV_TRADE, oid, side, price, qty, leaves, cum, other, other_leaves, other_cum, 0)


def cancelled(oid: int, side: int, price: int, qty: int, cum: int, reason: int) -> Event:
    return (EV_CANCELLED, oid, side, price, qty, 0, cum, 0, 0, 0, reason)


def replaced(
    oid: int, side: int, price: int, qty: int, leaves: int, cum: int, kept: int
) -> Event:
    return (EV_REPLACED, oid, side, price, qty, leaves, cum, kept, 0, 0, 0)


def expired(oid: int, side: int, price: int, qty: int, cum: int) -> Event:
    return (EV_EXPIRED, oid, side, price, qty, 0, cum, 0, 0, 0, 0)


# ---------------------------------------------------------------------------
# Command shorthands.
# ---------------------------------------------------------------------------


def limit(
    book: ReferenceBook, oid: int, side: int, price: int, qty: int, tif: int = GTC
) -> list[Event]:
    return book.new(oid, 1, side, LIMIT, tif, price, qty)


def market(book: ReferenceBook, oid: int, side: int, qty: int, tif: int = IOC) -> list[Event]:
    return book.new(oid, 1, side, MARKET, tif, 0, qty)


def rest(book: ReferenceBook, oid: int, side: int, price: int, qty: int, tif: int = GTC) -> None:
    """Enter a limit order that must rest untouched."""
    assert limit(book, oid, side, price, qty, tif) == [accepted(oid, side, price, qty)]


# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------


def test_event_rows_raw_integers_match_documented_layout() -> None:
    book = ReferenceBook()
    assert book.new(1, 7, SELL, LIMIT, GTC, 100, 10) == [(1, 1, 1, 100, 10, 10, 0, 0, 0, 0, 0)]
    assert book.new(2, 8, BUY, LIMIT, IOC, 100, 4) == [
        (1, 2, 0, 100, 4, 4, 0, 0, 0, 0, 0),
        (3, 2, 0, 100, 4, 0, 4, 1, 6, 4, 0),
    ]
    assert book.cancel(1) == [(4, 1, 1, 100, 6, 0, 4, 0, 0, 0, 1)]
    assert book.cancel(1) == [(2, 1, 0, 0, 0, 0, 0, 2, 0, 0, 4)]


# ---------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------


def test_buy_across_several_levels_fills_best_price_then_oldest() -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 101, 10)
    rest(book, 2, SELL, 100, 5)
    rest(book, 3, SELL, 100, 5)
    rest(book, 4, SELL, 102, 10)
    rest(book, 5, SELL, 101, 3)
    assert limit(book, 6, BUY, 101, 20) == [
        accepted(6, BUY, 101, 20),
        trade(6, BUY, 100, 5, 15, 5, 2, 0, 5),
        trade(6, BUY, 100, 5, 10, 10, 3, 0, 5),
        trade(6, BUY, 101, 10, 0, 20, 1, 0, 10),
    ]
    assert book.depth(SELL) == [(101, 3, 1), (102, 10, 1)]
    assert book.queue(SELL, 101) == [5]
    assert book.depth(BUY) == []
    assert book.order(6) is None
    assert book.order(5) == (SELL, 101, 3, 3, 0)


def test_sell_across_several_levels_fills_highest_bid_then_oldest() -> None:
    book = ReferenceBook()
    rest(book, 10, BUY, 99, 5)
    rest(book, 11, BUY, 100, 5)
    rest(book, 12, BUY, 100, 5)
    rest(book, 13, BUY, 98, 5)
    assert limit(book, 14, SELL, 99, 12, IOC) == [
        accepted(14, SELL, 99, 12),
        trade(14, SELL, 100, 5, 7, 5, 11, 0, 5),
        trade(14, SELL, 100, 5, 2, 10, 12, 0, 5),
        trade(14, SELL, 99, 2, 0, 12, 10, 3, 2),
    ]
    assert book.depth(BUY) == [(99, 3, 1), (98, 5, 1)]
    assert book.order(10) == (BUY, 99, 5, 3, 2)


def test_partial_fills_track_leaves_and_cum_on_both_sides() -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 10)
    assert limit(book, 2, BUY, 100, 4) == [
        accepted(2, BUY, 100, 4),
        trade(2, BUY, 100, 4, 0, 4, 1, 6, 4),
    ]
    assert book.order(1) == (SELL, 100, 10, 6, 4)
    assert limit(book, 3, BUY, 100, 10) == [
        accepted(3, BUY, 100, 10),
        trade(3, BUY, 100, 6, 4, 6, 1, 0, 10),
    ]
    assert book.order(1) is None
    assert book.order(3) == (BUY, 100, 10, 4, 6)
    assert book.depth(BUY) == [(100, 4, 1)]
    assert book.depth(SELL) == []
    assert limit(book, 4, SELL, 100, 1) == [
        accepted(4, SELL, 100, 1),
        trade(4, SELL, 100, 1, 0, 1, 3, 3, 7),
    ]
    assert book.order(3) == (BUY, 100, 10, 3, 7)


def test_aggressive_limit_trades_at_resting_price_not_its_own() -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 5)
    assert limit(book, 2, BUY, 105, 5) == [
        accepted(2, BUY, 105, 5),
        trade(2, BUY, 100, 5, 0, 5, 1, 0, 5),
    ]
    rest(book, 3, BUY, 95, 5)
    assert limit(book, 4, SELL, 90, 5) == [
        accepted(4, SELL, 90, 5),
        trade(4, SELL, 95, 5, 0, 5, 3, 0, 5),
    ]
    assert book.depth(BUY) == [] and book.depth(SELL) == []


def test_market_order_without_liquidity_cancelled_as_ioc_remainder() -> None:
    book = ReferenceBook()
    rest(book, 1, BUY, 100, 5)  # same side: no liquidity for a buy
    assert market(book, 2, BUY, 10) == [
        accepted(2, BUY, 0, 10),
        cancelled(2, BUY, 0, 10, 0, CXL_IOC_REMAINDER),
    ]
    assert book.order(2) is None
    assert book.depth(BUY) == [(100, 5, 1)]
    assert book.depth(SELL) == []


def test_market_order_sweeps_levels_ignores_price_and_cancels_remainder() -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 3)
    rest(book, 2, SELL, 101, 4)
    assert book.new(3, 1, BUY, MARKET, IOC, 12345, 10) == [
        accepted(3, BUY, 0, 10),
        trade(3, BUY, 100, 3, 7, 3, 1, 0, 3),
        trade(3, BUY, 101, 4, 3, 7, 2, 0, 4),
        cancelled(3, BUY, 0, 3, 7, CXL_IOC_REMAINDER),
    ]
    assert book.depth(SELL) == [] and book.depth(BUY) == []


def test_ioc_limit_remainder_cancelled_not_rested() -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 3)
    rest(book, 2, SELL, 102, 5)
    assert limit(book, 3, BUY, 101, 10, IOC) == [
        accepted(3, BUY, 101, 10),
        trade(3, BUY, 100, 3, 7, 3, 1, 0, 3),
        cancelled(3, BUY, 101, 7, 3, CXL_IOC_REMAINDER),
    ]
    assert book.depth(BUY) == []
    assert book.depth(SELL) == [(102, 5, 1)]
    assert book.order(3) is None


def test_ioc_limit_not_crossing_cancelled_in_full() -> None:
    book = ReferenceBook()
    rest(book, 1, BUY, 100, 3)
    assert limit(book, 2, SELL, 101, 4, IOC) == [
        accepted(2, SELL, 101, 4),
        cancelled(2, SELL, 101, 4, 0, CXL_IOC_REMAINDER),
    ]
    assert book.depth(SELL) == []


def _fok_book() -> ReferenceBook:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 3)
    rest(book, 2, SELL, 101, 4)
    rest(book, 3, SELL, 102, 10)
    return book


def test_fok_limit_unfillable_cancelled_without_trades() -> None:
    book = _fok_book()
    # 7 shares at or below 101 (102 does not cross): 8 cannot fill.
    assert limit(book, 4, BUY, 101, 8, FOK) == [
        accepted(4, BUY, 101, 8),
        cancelled(4, BUY, 101, 8, 0, CXL_FOK_UNFILLABLE),
    ]
    assert book.depth(SELL) == [(100, 3, 1), (101, 4, 1), (102, 10, 1)]
    assert book.depth(BUY) == []
    assert book.order(1) == (SELL, 100, 3, 3, 0)


def test_fok_market_unfillable_cancelled_without_trades() -> None:
    book = _fok_book()
    assert market(book, 4, BUY, 18, FOK) == [
        accepted(4, BUY, 0, 18),
        cancelled(4, BUY, 0, 18, 0, CXL_FOK_UNFILLABLE),
    ]
    assert book.depth(SELL) == [(100, 3, 1), (101, 4, 1), (102, 10, 1)]


def test_fok_sell_limit_unfillable_counts_only_bids_at_or_above_limit() -> None:
    book = ReferenceBook()
    rest(book, 1, BUY, 100, 5)
    rest(book, 2, BUY, 99, 5)
    assert limit(book, 3, SELL, 100, 6, FOK) == [
        accepted(3, SELL, 100, 6),
        cancelled(3, SELL, 100, 6, 0, CXL_FOK_UNFILLABLE),
    ]
    assert book.depth(BUY) == [(100, 5, 1), (99, 5, 1)]


def test_fok_limit_fillable_exactly_fills_in_full_without_cancel() -> None:
    book = _fok_book()
    assert limit(book, 4, BUY, 101, 7, FOK) == [
        accepted(4, BUY, 101, 7),
        trade(4, BUY, 100, 3, 4, 3, 1, 0, 3),
        trade(4, BUY, 101, 4, 0, 7, 2, 0, 4),
    ]
    assert book.depth(SELL) == [(102, 10, 1)]
    assert market(book, 5, BUY, 10, FOK) == [
        accepted(5, BUY, 0, 10),
        trade(5, BUY, 102, 10, 0, 10, 3, 0, 10),
    ]
    assert book.depth(SELL) == []


# ---------------------------------------------------------------------------
# new: rejects
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("qty", [0, -10, 15, 1])
def test_new_qty_not_positive_lot_multiple_rejected_qty_not_lot_multiple(qty: int) -> None:
    book = ReferenceBook(lot=10)
    assert limit(book, 1, SELL, 100, qty) == [
        rejected(1, SELL, OP_NEW, REJ_QTY_NOT_LOT_MULTIPLE)
    ]
    assert book.order(1) is None
    rest(book, 2, SELL, 100, 20)


@pytest.mark.parametrize("tif", [GTC, DAY])
def test_new_market_with_gtc_or_day_rejected_bad_tif(tif: int) -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 5)
    assert market(book, 2, BUY, 5, tif) == [rejected(2, BUY, OP_NEW, REJ_BAD_TIF)]
    assert book.depth(SELL) == [(100, 5, 1)]


@pytest.mark.parametrize("price", [0, -3])
def test_new_limit_price_not_positive_rejected_price_not_positive(price: int) -> None:
    book = ReferenceBook()
    assert limit(book, 1, BUY, price, 5) == [rejected(1, BUY, OP_NEW, REJ_PRICE_NOT_POSITIVE)]
    assert book.depth(BUY) == []


def test_new_limit_outside_band_rejected_out_of_band_edges_accepted() -> None:
    book = ReferenceBook(band_lo=90, band_hi=110)
    assert limit(book, 1, BUY, 89, 5) == [rejected(1, BUY, OP_NEW, REJ_PRICE_OUT_OF_BAND)]
    assert limit(book, 2, SELL, 111, 5) == [rejected(2, SELL, OP_NEW, REJ_PRICE_OUT_OF_BAND)]
    rest(book, 3, BUY, 90, 5)
    rest(book, 4, SELL, 110, 5)


@pytest.mark.parametrize(
    ("otype", "tif", "price", "qty", "reason"),
    [
        pytest.param(MARKET, GTC, 0, 15, REJ_QTY_NOT_LOT_MULTIPLE, id="qty-before-tif"),
        pytest.param(MARKET, DAY, -5, 10, REJ_BAD_TIF, id="tif-market-price-unchecked"),
        pytest.param(LIMIT, GTC, 0, 15, REJ_QTY_NOT_LOT_MULTIPLE, id="qty-before-price"),
        pytest.param(LIMIT, GTC, 0, 10, REJ_PRICE_NOT_POSITIVE, id="positive-before-band"),
        pytest.param(LIMIT, IOC, 500, 0, REJ_QTY_NOT_LOT_MULTIPLE, id="qty-before-band"),
    ],
)
def test_new_banded_checks_in_documented_order_first_failure_rejects(
    otype: int, tif: int, price: int, qty: int, reason: int
) -> None:
    book = ReferenceBook(lot=10, band_lo=90, band_hi=110)
    assert book.new(1, 1, BUY, otype, tif, price, qty) == [rejected(1, BUY, OP_NEW, reason)]


@pytest.mark.parametrize(
    ("price", "qty", "reason"),
    [
        pytest.param(1000, 0, REJ_QTY_NOT_LOT_MULTIPLE, id="qty-before-span"),
        pytest.param(-1000, 5, REJ_PRICE_NOT_POSITIVE, id="positive-before-span"),
        pytest.param(1000, 5, REJ_LADDER_SPAN, id="span"),
    ],
)
def test_new_unbanded_checks_in_documented_order_first_failure_rejects(
    price: int, qty: int, reason: int
) -> None:
    book = ReferenceBook(max_ladder_rows=5)
    rest(book, 1, SELL, 100, 5)
    assert limit(book, 2, BUY, price, qty) == [rejected(2, BUY, OP_NEW, reason)]
    # A market order's price is never checked, span or not.
    assert book.new(3, 1, BUY, MARKET, IOC, 1000, 5) == [
        accepted(3, BUY, 0, 5),
        trade(3, BUY, 100, 5, 0, 5, 1, 0, 5),
    ]


# ---------------------------------------------------------------------------
# cancel
# ---------------------------------------------------------------------------


def test_cancel_resting_partly_filled_order_cancelled_requested_with_leaves_and_cum() -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 10)
    rest(book, 3, SELL, 100, 2)
    limit(book, 2, BUY, 100, 4)
    assert book.cancel(1) == [cancelled(1, SELL, 100, 6, 4, CXL_REQUESTED)]
    assert book.order(1) is None
    assert book.queue(SELL, 100) == [3]
    assert book.depth(SELL) == [(100, 2, 1)]
    assert book.cancel(3) == [cancelled(3, SELL, 100, 2, 0, CXL_REQUESTED)]
    assert book.depth(SELL) == []


def _book_with_closed_orders() -> ReferenceBook:
    """Orders 1..8 are all no longer resting, each for a different reason."""
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 5)
    limit(book, 2, BUY, 100, 5)  # 1 filled as resting order, 2 filled as aggressor
    rest(book, 3, SELL, 101, 5)
    book.cancel(3)  # cancelled
    rest(book, 4, SELL, 102, 5, DAY)
    book.end_of_day()  # expired
    rest(book, 5, SELL, 103, 10)
    limit(book, 6, BUY, 103, 4)
    assert book.replace(5, NO_PRICE, 4) == [replaced(5, SELL, 103, 4, 0, 4, 0)]  # replaced away
    limit(book, 7, BUY, 50, 5, IOC)  # IOC, never rested
    limit(book, 8, BUY, 50, 0)  # rejected
    assert book.depth(BUY) == [] and book.depth(SELL) == []
    return book


@pytest.mark.parametrize("oid", [1, 2, 3, 4, 5, 6, 7, 8, 99])
def test_cancel_not_resting_rejected_order_closed(oid: int) -> None:
    book = _book_with_closed_orders()
    assert book.cancel(oid) == [(EV_REJECTED, oid, 0, 0, 0, 0, 0, OP_CANCEL, 0, 0, REJ_ORDER_CLOSED)]


@pytest.mark.parametrize("oid", [1, 2, 3, 4, 5, 6, 7, 8, 99])
def test_replace_not_resting_rejected_order_closed(oid: int) -> None:
    book = _book_with_closed_orders()
    assert book.replace(oid, 100, 5) == [rejected(oid, 0, OP_REPLACE, REJ_ORDER_CLOSED)]
    # The closed check comes first, even before an invalid qty/price.
    assert book.replace(oid, 0, 0) == [rejected(oid, 0, OP_REPLACE, REJ_ORDER_CLOSED)]


# ---------------------------------------------------------------------------
# replace: rejects
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "qty", "reason"),
    [
        pytest.param(NO_PRICE, 15, REJ_QTY_NOT_LOT_MULTIPLE, id="qty-lot"),
        pytest.param(NO_PRICE, 0, REJ_QTY_NOT_LOT_MULTIPLE, id="qty-zero"),
        pytest.param(NO_PRICE, -10, REJ_QTY_NOT_LOT_MULTIPLE, id="qty-negative-not-no-qty"),
        pytest.param(0, 15, REJ_QTY_NOT_LOT_MULTIPLE, id="qty-before-price"),
        pytest.param(500, 15, REJ_QTY_NOT_LOT_MULTIPLE, id="qty-before-band"),
        pytest.param(0, NO_QTY, REJ_PRICE_NOT_POSITIVE, id="price-zero"),
        pytest.param(-5, 20, REJ_PRICE_NOT_POSITIVE, id="price-negative-not-no-price"),
        pytest.param(111, NO_QTY, REJ_PRICE_OUT_OF_BAND, id="band-hi"),
        pytest.param(89, 30, REJ_PRICE_OUT_OF_BAND, id="band-lo"),
    ],
)
def test_replace_banded_invalid_rejected_in_documented_order(
    price: int, qty: int, reason: int
) -> None:
    book = ReferenceBook(lot=10, band_lo=90, band_hi=110)
    rest(book, 1, SELL, 100, 20)
    rest(book, 2, SELL, 100, 10)
    assert book.replace(1, price, qty) == [rejected(1, SELL, OP_REPLACE, reason)]
    assert book.order(1) == (SELL, 100, 20, 20, 0)
    assert book.queue(SELL, 100) == [1, 2]


def test_replace_unbanded_beyond_span_rejected_ladder_span() -> None:
    book = ReferenceBook(max_ladder_rows=10)
    rest(book, 1, SELL, 100, 10)
    rest(book, 2, BUY, 95, 10)
    assert book.replace(1, 105, NO_QTY) == [rejected(1, SELL, OP_REPLACE, REJ_LADDER_SPAN)]
    assert book.replace(1, 105, 0) == [rejected(1, SELL, OP_REPLACE, REJ_QTY_NOT_LOT_MULTIPLE)]
    assert book.order(1) == (SELL, 100, 10, 10, 0)
    assert book.replace(1, 104, NO_QTY) == [replaced(1, SELL, 104, 10, 10, 0, 0)]


# ---------------------------------------------------------------------------
# replace: priority
# ---------------------------------------------------------------------------


def test_replace_same_price_smaller_or_equal_qty_keeps_priority() -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 10)
    rest(book, 2, SELL, 100, 10)
    rest(book, 3, SELL, 100, 10)
    limit(book, 4, BUY, 100, 3)  # 1: leaves 7, cum 3
    assert book.replace(1, NO_PRICE, 8) == [replaced(1, SELL, 100, 8, 5, 3, 1)]
    assert book.replace(2, 100, 6) == [replaced(2, SELL, 100, 6, 6, 0, 1)]
    assert book.replace(3, NO_PRICE, NO_QTY) == [replaced(3, SELL, 100, 10, 10, 0, 1)]
    assert book.queue(SELL, 100) == [1, 2, 3]
    assert book.order(1) == (SELL, 100, 8, 5, 3)
    assert book.depth(SELL) == [(100, 21, 3)]
    assert limit(book, 5, BUY, 100, 6) == [
        accepted(5, BUY, 100, 6),
        trade(5, BUY, 100, 5, 1, 5, 1, 0, 8),
        trade(5, BUY, 100, 1, 0, 6, 2, 5, 1),
    ]


def test_replace_qty_up_loses_priority_to_back_of_level() -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 10)
    rest(book, 2, SELL, 100, 10)
    rest(book, 3, SELL, 100, 10)
    limit(book, 4, BUY, 100, 4)  # 1: leaves 6, cum 4
    assert book.replace(1, NO_PRICE, 12) == [replaced(1, SELL, 100, 12, 8, 4, 0)]
    assert book.queue(SELL, 100) == [2, 3, 1]
    assert book.order(1) == (SELL, 100, 12, 8, 4)
    assert book.depth(SELL) == [(100, 28, 3)]
    assert limit(book, 5, BUY, 100, 21) == [
        accepted(5, BUY, 100, 21),
        trade(5, BUY, 100, 10, 11, 10, 2, 0, 10),
        trade(5, BUY, 100, 10, 1, 20, 3, 0, 10),
        trade(5, BUY, 100, 1, 0, 21, 1, 7, 5),
    ]


def test_replace_price_change_loses_priority_even_with_smaller_qty() -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 10)
    rest(book, 2, SELL, 101, 10)
    assert book.replace(1, 101, 5) == [replaced(1, SELL, 101, 5, 5, 0, 0)]
    assert book.queue(SELL, 101) == [2, 1]
    assert book.queue(SELL, 100) == []
    assert book.depth(SELL) == [(101, 15, 2)]
    # Back to the old price, and back again: always to the back.
    assert book.replace(2, 100, NO_QTY) == [replaced(2, SELL, 100, 10, 10, 0, 0)]
    assert book.replace(2, 101, NO_QTY) == [replaced(2, SELL, 101, 10, 10, 0, 0)]
    assert book.queue(SELL, 101) == [1, 2]


@pytest.mark.parametrize(
    ("price", "qty", "ev_price", "ev_qty"),
    [
        pytest.param(NO_PRICE, 4, 100, 4, id="qty-equals-cum"),
        pytest.param(NO_PRICE, 1, 100, 1, id="qty-below-cum"),
        pytest.param(101, 3, 101, 3, id="new-price-qty-below-cum"),
    ],
)
def test_replace_qty_at_most_cum_ends_order(
    price: int, qty: int, ev_price: int, ev_qty: int
) -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 100, 10)
    limit(book, 2, BUY, 100, 4)  # 1: leaves 6, cum 4
    assert book.replace(1, price, qty) == [replaced(1, SELL, ev_price, ev_qty, 0, 4, 0)]
    assert book.order(1) is None
    assert book.depth(SELL) == []
    assert book.cancel(1) == [rejected(1, 0, OP_CANCEL, REJ_ORDER_CLOSED)]


# ---------------------------------------------------------------------------
# replace: crossing
# ---------------------------------------------------------------------------


def test_replace_crossing_trades_as_aggressor_and_rests_remainder_keeping_day() -> None:
    book = ReferenceBook()
    rest(book, 1, SELL, 101, 4)
    rest(book, 2, SELL, 102, 3)
    rest(book, 3, SELL, 103, 5)
    rest(book, 4, BUY, 100, 5, DAY)
    assert limit(book, 5, SELL, 100, 2) == [
        accepted(5, SELL, 100, 2),
        trade(5, SELL, 100, 2, 0, 2, 4, 3, 2),
    ]
    # 4: qty 5, leaves 3, cum 2 -> qty 12 at 102: leaves 10.
    assert book.replace(4, 102, 12) == [
        replaced(4, BUY, 102, 12, 10, 2, 0),
        trade(4, BUY, 101, 4, 6, 6, 1, 0, 4),
        trade(4, BUY, 102, 3, 3, 9, 2, 0, 3),
    ]
    assert book.order(4) == (BUY, 102, 12, 3, 9)
    assert book.depth(BUY) == [(102, 3, 1)]
    assert book.depth(SELL) == [(103, 5, 1)]
    assert book.end_of_day() == [expired(4, BUY, 102, 3, 9)]
    assert book.depth(BUY) == []


def test_replace_crossing_filled_in_full_leaves_book() -> None:
    book = ReferenceBook()
    rest(book, 1, BUY, 99, 5)
    rest(book, 2, SELL, 100, 8)
    assert book.replace(1, 100, NO_QTY) == [
        replaced(1, BUY, 100, 5, 5, 0, 0),
        trade(1, BUY, 100, 5, 0, 5, 2, 3, 5),
    ]
    assert book.order(1) is None
    assert book.depth(BUY) == []
    assert book.depth(SELL) == [(100, 3, 1)]


# ---------------------------------------------------------------------------
# end_of_day
# ---------------------------------------------------------------------------


def test_end_of_day_expires_day_orders_in_oid_order_and_keeps_gtc() -> None:
    book = ReferenceBook()
    rest(book, 7, SELL, 110, 5, DAY)
    rest(book, 3, SELL, 111, 5, GTC)
    rest(book, 5, BUY, 90, 5, DAY)
    rest(book, 2, BUY, 90, 4, DAY)
    rest(book, 6, SELL, 109, 10, DAY)
    assert market(book, 8, BUY, 4) == [
        accepted(8, BUY, 0, 4),
        trade(8, BUY, 109, 4, 0, 4, 6, 6, 4),
    ]
    rest(book, 4, BUY, 89, 1, GTC)
    assert book.end_of_day() == [
        expired(2, BUY, 90, 4, 0),
        expired(5, BUY, 90, 5, 0),
        expired(6, SELL, 109, 6, 4),
        expired(7, SELL, 110, 5, 0),
    ]
    assert book.depth(BUY) == [(89, 1, 1)]
    assert book.depth(SELL) == [(111, 5, 1)]
    assert book.end_of_day() == []
    assert book.cancel(6) == [rejected(6, 0, OP_CANCEL, REJ_ORDER_CLOSED)]


# ---------------------------------------------------------------------------
# Ladder span (unbanded books)
# ---------------------------------------------------------------------------


def test_unbanded_price_beyond_ladder_span_rejected_and_range_never_shrinks() -> None:
    book = ReferenceBook(max_ladder_rows=10)
    rest(book, 1, SELL, 100, 5)
    rest(book, 2, BUY, 91, 5)  # span 91..100 = 10 rows
    assert limit(book, 3, BUY, 90, 5) == [rejected(3, BUY, OP_NEW, REJ_LADDER_SPAN)]
    assert limit(book, 4, SELL, 101, 5) == [rejected(4, SELL, OP_NEW, REJ_LADDER_SPAN)]
    book.cancel(1)
    book.cancel(2)
    assert limit(book, 5, SELL, 101, 5) == [rejected(5, SELL, OP_NEW, REJ_LADDER_SPAN)]
    rest(book, 6, SELL, 95, 5)


def test_first_limit_price_unchecked_then_single_row_ladder_rejects_neighbour() -> None:
    book = ReferenceBook(max_ladder_rows=1)
    rest(book, 1, SELL, 10**9, 5)
    rest(book, 2, SELL, 10**9, 5)
    assert limit(book, 3, SELL, 10**9 + 1, 5) == [rejected(3, SELL, OP_NEW, REJ_LADDER_SPAN)]


def test_ladder_span_not_widened_by_market_or_rejected_orders() -> None:
    book = ReferenceBook(max_ladder_rows=10)
    rest(book, 1, SELL, 100, 5)
    assert limit(book, 2, BUY, 91, 0) == [rejected(2, BUY, OP_NEW, REJ_QTY_NOT_LOT_MULTIPLE)]
    assert limit(book, 3, BUY, 80, 5) == [rejected(3, BUY, OP_NEW, REJ_LADDER_SPAN)]
    assert book.new(4, 1, SELL, MARKET, IOC, 5000, 5) == [
        accepted(4, SELL, 0, 5),
        cancelled(4, SELL, 0, 5, 0, CXL_IOC_REMAINDER),
    ]
    rest(book, 5, SELL, 109, 5)  # 100..109: neither 91, 80 nor 5000 widened it


def test_ladder_span_widened_by_ioc_limit_that_never_rests() -> None:
    book = ReferenceBook(max_ladder_rows=10)
    rest(book, 1, SELL, 100, 5)
    assert limit(book, 2, BUY, 95, 1, IOC) == [
        accepted(2, BUY, 95, 1),
        cancelled(2, BUY, 95, 1, 0, CXL_IOC_REMAINDER),
    ]
    # Range is now 95..100: 105 would make 11 rows.
    assert limit(book, 3, SELL, 105, 1) == [rejected(3, SELL, OP_NEW, REJ_LADDER_SPAN)]
    rest(book, 4, SELL, 104, 1)


def test_ladder_span_widened_by_accepted_replace() -> None:
    book = ReferenceBook(max_ladder_rows=10)
    rest(book, 1, SELL, 100, 5)
    assert book.replace(1, 109, NO_QTY) == [replaced(1, SELL, 109, 5, 5, 0, 0)]
    assert book.replace(1, 100, NO_QTY) == [replaced(1, SELL, 100, 5, 5, 0, 0)]
    assert limit(book, 2, BUY, 99, 5) == [rejected(2, BUY, OP_NEW, REJ_LADDER_SPAN)]


def test_banded_book_ignores_ladder_span() -> None:
    book = ReferenceBook(band_lo=1, band_hi=1000, max_ladder_rows=5)
    rest(book, 1, BUY, 1, 5)
    rest(book, 2, SELL, 1000, 5)
    assert book.replace(1, 500, NO_QTY) == [replaced(1, BUY, 500, 5, 5, 0, 0)]


# ---------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------


def test_depth_best_first_limited_by_n_and_queue_in_time_priority() -> None:
    book = ReferenceBook()
    rest(book, 1, BUY, 99, 5)
    rest(book, 2, BUY, 98, 3)
    rest(book, 3, BUY, 99, 2)
    rest(book, 4, BUY, 97, 1)
    rest(book, 5, SELL, 102, 4)
    rest(book, 6, SELL, 101, 6)
    assert book.depth(BUY) == [(99, 7, 2), (98, 3, 1), (97, 1, 1)]
    assert book.depth(BUY, 2) == [(99, 7, 2), (98, 3, 1)]
    assert book.depth(BUY, 0) == []
    assert book.depth(SELL) == [(101, 6, 1), (102, 4, 1)]
    assert book.depth(SELL, 1) == [(101, 6, 1)]
    assert book.queue(BUY, 99) == [1, 3]
    assert book.queue(SELL, 99) == []
    assert book.queue(BUY, 50) == []
    assert book.order(3) == (BUY, 99, 2, 2, 0)
    assert book.order(42) is None


def test_constructor_one_band_bound_rejected_value_error() -> None:
    with pytest.raises(ValueError):
        ReferenceBook(band_lo=10)
    with pytest.raises(ValueError):
        ReferenceBook(lot=0)


# ---------------------------------------------------------------------------
# Self-trade prevention: the same worked examples on both books
# ---------------------------------------------------------------------------
# Broker 1 is "own", broker 2 "other".  Resting book for every example, asks in priority order:
#   oid 1 broker 2 SELL 100 x 3;  oid 2 broker 1 SELL 100 x 4;  oid 3 broker 2 SELL 101 x 5


class _Compiled:
    """The compiled book behind the reference book's interface: event rows as tuples."""

    def __init__(self, **kw: int) -> None:
        self.book = OrderBook(**kw)

    def new(self, *args: int) -> list[Event]:
        return self._rows(self.book.new(*args))

    def replace(self, *args: int) -> list[Event]:
        return self._rows(self.book.replace(*args))

    def _rows(self, n: int) -> list[Event]:
        return [tuple(int(x) for x in r) for r in self.book.out[:n]]  # type: ignore[misc]

    def depth(self, side: int) -> list[tuple[int, int, int]]:
        return self.book.depth(side)

    def order(self, oid: int) -> tuple[int, int, int, int, int] | None:
        return self.book.order(oid)


BOOKS = [pytest.param(ReferenceBook, id="reference"), pytest.param(_Compiled, id="compiled")]


def _stp_book(make: type) -> ReferenceBook:
    book = make(band_lo=90, band_hi=110)
    for oid, broker, price, qty in ((1, 2, 100, 3), (2, 1, 100, 4), (3, 2, 101, 5)):
        assert book.new(oid, broker, SELL, LIMIT, GTC, price, qty) == [accepted(oid, SELL, price, qty)]
    return book  # type: ignore[no-any-return]


@pytest.mark.parametrize("make", BOOKS)
def test_stp_off_own_orders_trade(make: type) -> None:
    book = _stp_book(make)
    assert book.new(4, 1, BUY, LIMIT, GTC, 100, 6, STP_OFF) == [
        accepted(4, BUY, 100, 6),
        trade(4, BUY, 100, 3, 3, 3, 1, 0, 3),
        trade(4, BUY, 100, 3, 0, 6, 2, 1, 3),
    ]


@pytest.mark.parametrize("make", BOOKS)
def test_stp_cancel_resting_cancels_own_resting_and_matching_goes_on(make: type) -> None:
    book = _stp_book(make)
    assert book.new(4, 1, BUY, LIMIT, GTC, 101, 10, STP_CANCEL_RESTING) == [
        accepted(4, BUY, 101, 10),
        trade(4, BUY, 100, 3, 7, 3, 1, 0, 3),
        cancelled(2, SELL, 100, 4, 0, CXL_SELF_TRADE),
        trade(4, BUY, 101, 5, 2, 8, 3, 0, 5),
    ]
    assert book.depth(SELL) == []
    assert book.depth(BUY) == [(101, 2, 1)]  # the rest of the GTC order rests as usual


@pytest.mark.parametrize("make", BOOKS)
def test_stp_cancel_incoming_cancels_the_rest_of_the_incoming_order(make: type) -> None:
    book = _stp_book(make)
    assert book.new(4, 1, BUY, LIMIT, GTC, 101, 10, STP_CANCEL_INCOMING) == [
        accepted(4, BUY, 101, 10),
        trade(4, BUY, 100, 3, 7, 3, 1, 0, 3),
        cancelled(4, BUY, 101, 7, 3, CXL_SELF_TRADE),
    ]
    assert book.depth(SELL) == [(100, 4, 1), (101, 5, 1)]
    assert book.order(4) is None  # a GTC order's rest does not rest


@pytest.mark.parametrize("make", BOOKS)
def test_stp_cancel_both_cancels_resting_then_incoming(make: type) -> None:
    book = _stp_book(make)
    assert book.new(4, 1, BUY, LIMIT, GTC, 101, 10, STP_CANCEL_BOTH) == [
        accepted(4, BUY, 101, 10),
        trade(4, BUY, 100, 3, 7, 3, 1, 0, 3),
        cancelled(2, SELL, 100, 4, 0, CXL_SELF_TRADE),
        cancelled(4, BUY, 101, 7, 3, CXL_SELF_TRADE),
    ]
    assert book.depth(SELL) == [(101, 5, 1)]


@pytest.mark.parametrize("make", BOOKS)
def test_stp_other_brokers_orders_trade_whatever_the_mode(make: type) -> None:
    book = _stp_book(make)
    assert book.new(4, 3, BUY, LIMIT, GTC, 100, 5, STP_CANCEL_BOTH) == [
        accepted(4, BUY, 100, 5),
        trade(4, BUY, 100, 3, 2, 3, 1, 0, 3),
        trade(4, BUY, 100, 2, 0, 5, 2, 2, 2),
    ]


@pytest.mark.parametrize("make", BOOKS)
def test_stp_ioc_and_market_rest_is_cancelled_once_as_self_trade(make: type) -> None:
    book = _stp_book(make)
    assert book.new(4, 1, BUY, LIMIT, IOC, 100, 10, STP_CANCEL_INCOMING) == [
        accepted(4, BUY, 100, 10),
        trade(4, BUY, 100, 3, 7, 3, 1, 0, 3),
        cancelled(4, BUY, 100, 7, 3, CXL_SELF_TRADE),  # not also unfilled_ioc_remainder
    ]
    book = _stp_book(make)
    assert book.new(4, 1, BUY, MARKET, IOC, 0, 20, STP_CANCEL_RESTING) == [
        accepted(4, BUY, 0, 20),
        trade(4, BUY, 100, 3, 17, 3, 1, 0, 3),
        cancelled(2, SELL, 100, 4, 0, CXL_SELF_TRADE),
        trade(4, BUY, 101, 5, 12, 8, 3, 0, 5),
        cancelled(4, BUY, 0, 12, 8, CXL_IOC_REMAINDER),  # the book ran out: an ordinary IOC remainder
    ]


@pytest.mark.parametrize("make", BOOKS)
@pytest.mark.parametrize(
    ("stp", "qty", "fills"),
    [
        pytest.param(STP_CANCEL_RESTING, 8, True, id="resting-8-of-8-others"),  # others hold 3 + 5
        pytest.param(STP_CANCEL_RESTING, 9, False, id="resting-9-of-8-others"),
        pytest.param(STP_CANCEL_INCOMING, 3, True, id="incoming-3-before-own"),  # 3 before the own order
        pytest.param(STP_CANCEL_INCOMING, 4, False, id="incoming-4-past-own"),
        pytest.param(STP_CANCEL_BOTH, 4, False, id="both-4-past-own"),
    ],
)
def test_stp_fok_fills_in_full_without_a_self_trade_or_changes_nothing(make: type, stp: int, qty: int,
                                                                       fills: bool) -> None:
    book = _stp_book(make)
    events = book.new(4, 1, BUY, LIMIT, FOK, 101, qty, stp)
    if not fills:
        assert events == [accepted(4, BUY, 101, qty), cancelled(4, BUY, 101, qty, 0, CXL_FOK_UNFILLABLE)]
        assert book.depth(SELL) == [(100, 7, 2), (101, 5, 1)]  # own order not cancelled either
        return
    assert events[0] == accepted(4, BUY, 101, qty)
    assert sum(e[4] for e in events if e[0] == EV_TRADE) == qty
    assert all(e[7] != 2 for e in events if e[0] == EV_TRADE)  # never with its own order 2
    # Under cancel_resting the own order met on the way is cancelled; under cancel_incoming none is met.
    assert (cancelled(2, SELL, 100, 4, 0, CXL_SELF_TRADE) in events) == (stp == STP_CANCEL_RESTING)


@pytest.mark.parametrize("make", BOOKS)
def test_stp_replace_that_crosses_applies_the_replace_commands_mode(make: type) -> None:
    # Broker 1's resting buy at 99 is replaced up to 101: it crosses other's 3 at 100, then its own sell.
    book = _stp_book(make)
    assert book.new(4, 1, BUY, LIMIT, GTC, 99, 10) == [accepted(4, BUY, 99, 10)]
    assert book.replace(4, 101, NO_QTY, STP_CANCEL_INCOMING) == [
        replaced(4, BUY, 101, 10, 10, 0, 0),
        trade(4, BUY, 100, 3, 7, 3, 1, 0, 3),
        cancelled(4, BUY, 101, 7, 3, CXL_SELF_TRADE),
    ]
    assert book.order(4) is None and book.depth(BUY) == []
    book = _stp_book(make)
    book.new(4, 1, BUY, LIMIT, GTC, 99, 10)
    assert book.replace(4, 101, NO_QTY, STP_CANCEL_RESTING) == [
        replaced(4, BUY, 101, 10, 10, 0, 0),
        trade(4, BUY, 100, 3, 7, 3, 1, 0, 3),
        cancelled(2, SELL, 100, 4, 0, CXL_SELF_TRADE),
        trade(4, BUY, 101, 5, 2, 8, 3, 0, 5),
    ]
    assert book.depth(BUY) == [(101, 2, 1)]


# ---------------------------------------------------------------------------
# The circuit filter
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", BOOKS)
def test_market_order_trades_only_inside_the_band_and_its_rest_is_cancelled(make: type) -> None:
    book = make(band_lo=90, band_hi=110)
    for oid, price in ((1, 110), (2, 109), (3, 90)):
        book.new(oid, 2, SELL if price > 100 else BUY, LIMIT, GTC, price, 2)
    assert book.new(4, 1, BUY, LIMIT, GTC, 111, 1) == [rejected(4, BUY, OP_NEW, REJ_PRICE_OUT_OF_BAND)]
    assert book.new(5, 1, BUY, MARKET, IOC, 0, 10) == [
        accepted(5, BUY, 0, 10),
        trade(5, BUY, 109, 2, 8, 2, 2, 0, 2),
        trade(5, BUY, 110, 2, 6, 4, 1, 0, 2),  # the band's upper edge: nothing can rest beyond it
        cancelled(5, BUY, 0, 6, 4, CXL_IOC_REMAINDER),
    ]
    assert book.new(6, 1, SELL, MARKET, FOK, 0, 3) == [
        accepted(6, SELL, 0, 3),
        cancelled(6, SELL, 0, 3, 0, CXL_FOK_UNFILLABLE),  # 2 inside the band: not enough
    ]
    book.new(7, 2, BUY, LIMIT, GTC, 100, 2)
    assert book.replace(7, 89, NO_QTY) == [rejected(7, BUY, OP_REPLACE, REJ_PRICE_OUT_OF_BAND)]


@pytest.mark.parametrize("make", BOOKS)
def test_market_order_matching_itself_stops_at_the_band_edge(make: type) -> None:
    # Nothing can rest outside the band; narrowing the band under resting orders shows that the
    # matching loop would not go past the edge on its own either (the market order's limit).
    book = make(band_lo=90, band_hi=110)
    book.new(1, 2, SELL, LIMIT, GTC, 105, 2)
    book.new(2, 2, SELL, LIMIT, GTC, 110, 2)
    book.new(3, 2, BUY, LIMIT, GTC, 90, 2)
    if isinstance(book, _Compiled):
        book.book.meta[M_BAND_HI], book.book.meta[M_BAND_LO] = 109, 91
    else:
        book.band_hi, book.band_lo = 109, 91
    assert book.new(4, 1, BUY, MARKET, IOC, 0, 10) == [
        accepted(4, BUY, 0, 10),
        trade(4, BUY, 105, 2, 8, 2, 1, 0, 2),
        cancelled(4, BUY, 0, 8, 2, CXL_IOC_REMAINDER),
    ]
    assert book.new(5, 1, SELL, MARKET, FOK, 0, 1) == [
        accepted(5, SELL, 0, 1),
        cancelled(5, SELL, 0, 1, 0, CXL_FOK_UNFILLABLE),
    ]
