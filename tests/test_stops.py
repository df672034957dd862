"""Stop-loss orders in both books: rejects, waiting, triggering, the cascade's order, cancel, replace, expiry.

Every test runs the compiled book and the reference book alike; the worked example of
``docs/book-semantics.md`` ("Stop-loss orders") is ``test_worked_example_cascade_order``.
"""

from __future__ import annotations

import pytest

from fabric.book import OrderBook
from fabric.constants import (
    BUY,
    CXL_IOC_REMAINDER,
    DAY,
    E_OID,
    E_OTHER,
    E_PRICE,
    E_QTY,
    E_REASON,
    E_TYPE,
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_REJECTED,
    EV_REPLACED,
    EV_TRADE,
    EV_TRIGGERED,
    FLAG_POST_ONLY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    NO_PRICE,
    NO_QTY,
    REJ_BAD_STOP,
    REJ_NOT_STOP,
    REJ_PRICE_NOT_POSITIVE,
    REJ_PRICE_OUT_OF_BAND,
    REJ_STOP_LIMIT,
    REJ_STOP_WOULD_TRIGGER,
    SELL,
    STP_CANCEL_INCOMING,
)
from fabric.reference import ReferenceBook

Book = OrderBook | ReferenceBook


def _books(**kw: int) -> list[Book]:
    return [OrderBook(**kw), ReferenceBook(**kw)]  # type: ignore[arg-type]


def _rows(book: Book, evs: object) -> list[tuple[int, ...]]:
    rows = book.out[:evs].tolist() if isinstance(evs, int) else evs  # type: ignore[union-attr]
    return [tuple(int(x) for x in r) for r in rows]  # type: ignore[union-attr]


def _trade(book: Book, price: int) -> None:
    # Print one trade at `price` between two fresh orders (oids from 900 up).
    n = 900 + 2 * book.trades
    _rows(book, book.new(n, 8, SELL, LIMIT, GTC, price, 1))
    assert _rows(book, book.new(n + 1, 9, BUY, LIMIT, IOC, price, 1))[1][E_TYPE] == EV_TRADE


def _reason(rows: list[tuple[int, ...]]) -> int:
    assert rows[0][E_TYPE] == EV_REJECTED, rows
    return rows[0][E_REASON]


@pytest.mark.parametrize("make", [0, 1], ids=["compiled", "reference"])
def test_each_reject_reason_of_a_new_stop(make: int) -> None:
    book = _books(band_lo=90, band_hi=110)[make]
    _trade(book, 100)  # last traded price 100
    new = book.new
    assert _reason(_rows(book, new(1, 0, BUY, LIMIT, IOC, 105, 5, stop=104))) == REJ_BAD_STOP
    assert _reason(_rows(book, new(1, 0, BUY, MARKET, FOK, 0, 5, stop=104))) == REJ_BAD_STOP
    assert _reason(_rows(book, new(1, 0, BUY, LIMIT, GTC, 105, 5, flags=FLAG_POST_ONLY, stop=104))) == REJ_BAD_STOP
    assert _reason(_rows(book, new(1, 0, BUY, LIMIT, GTC, 105, 10, disclosed=5, stop=104))) == REJ_BAD_STOP
    assert _reason(_rows(book, new(1, 0, BUY, LIMIT, GTC, 105, 5, stop=-3))) == REJ_PRICE_NOT_POSITIVE
    assert _reason(_rows(book, new(1, 0, BUY, LIMIT, GTC, 105, 5, stop=111))) == REJ_PRICE_OUT_OF_BAND
    assert _reason(_rows(book, new(1, 0, BUY, LIMIT, GTC, 103, 5, stop=104))) == REJ_STOP_LIMIT  # buy limit < trigger
    assert _reason(_rows(book, new(1, 0, SELL, LIMIT, GTC, 97, 5, stop=96))) == REJ_STOP_LIMIT  # sell limit > trigger
    assert _reason(_rows(book, new(1, 0, BUY, LIMIT, GTC, 105, 5, stop=100))) == REJ_STOP_WOULD_TRIGGER
    assert _reason(_rows(book, new(1, 0, SELL, MARKET, DAY, 0, 5, stop=100))) == REJ_STOP_WOULD_TRIGGER
    assert book.stops == 0
    # A market stop waits with DAY (a plain market order must be IOC or FOK).
    acc = _rows(book, new(1, 0, SELL, MARKET, DAY, 0, 5, stop=99))
    assert acc == [(EV_ACCEPTED, 1, SELL, 0, 5, 5, 0, 99, 0, 0, 0)]
    assert book.stops == 1 and book.stop(1) == 99 and book.depth(SELL) == []


@pytest.mark.parametrize("make", [0, 1], ids=["compiled", "reference"])
def test_without_a_last_price_any_trigger_is_taken(make: int) -> None:
    book = _books()[make]
    assert _rows(book, book.new(1, 0, BUY, LIMIT, GTC, 50, 5, stop=50))[0][E_TYPE] == EV_ACCEPTED
    assert _rows(book, book.new(2, 0, SELL, LIMIT, GTC, 50, 5, stop=50))[0][E_TYPE] == EV_ACCEPTED
    assert book.depth(BUY) == [] and book.depth(SELL) == [] and book.stops == 2


@pytest.mark.parametrize("make", [0, 1], ids=["compiled", "reference"])
def test_worked_example_cascade_order(make: int) -> None:
    # docs/book-semantics.md, "Stop-loss orders", the worked example.
    book = _books()[make]
    _trade(book, 100)
    for oid, price in ((10, 99), (11, 98), (12, 97)):
        book.new(oid, 1, BUY, LIMIT, GTC, price, 5)  # bids 99, 98, 97
    assert _rows(book, book.new(20, 2, SELL, MARKET, DAY, 0, 5, stop=98))[0][E_TYPE] == EV_ACCEPTED   # S1
    assert _rows(book, book.new(21, 2, SELL, LIMIT, GTC, 97, 5, stop=99))[0][E_TYPE] == EV_ACCEPTED   # S2
    assert _rows(book, book.new(22, 3, SELL, MARKET, GTC, 0, 5, stop=99))[0][E_TYPE] == EV_ACCEPTED   # S3
    assert book.stop_queue(SELL) == [21, 22, 20]  # descending trigger, then acceptance
    rows = _rows(book, book.new(30, 4, SELL, LIMIT, IOC, 99, 5))  # trades 5 at 99 with bid 10
    got = [(r[E_TYPE], r[E_OID], r[E_PRICE], r[E_QTY], r[E_OTHER]) for r in rows]
    assert got == [
        (EV_ACCEPTED, 30, 99, 5, 0),
        (EV_TRADE, 30, 99, 5, 10),      # the print at 99 reaches S2 and S3 (trigger 99)
        (EV_TRIGGERED, 21, 97, 5, 99),  # S2 first: accepted before S3
        (EV_TRADE, 21, 98, 5, 11),      # its print at 98 reaches S1, which queues behind S3
        (EV_TRIGGERED, 22, 0, 5, 99),   # S3, a market order
        (EV_TRADE, 22, 97, 5, 12),
        (EV_TRIGGERED, 20, 0, 5, 98),   # S1: nothing left to buy
        (EV_CANCELLED, 20, 0, 5, 0),
    ]
    assert rows[-1][E_REASON] == CXL_IOC_REMAINDER
    assert book.stops == 0 and book.depth(BUY) == [] and book.last == 97


@pytest.mark.parametrize("make", [0, 1], ids=["compiled", "reference"])
def test_buy_stops_before_sell_stops_at_one_print_and_ascending(make: int) -> None:
    book = _books()[make]
    _trade(book, 100)
    book.new(1, 1, BUY, LIMIT, GTC, 110, 1, stop=103)
    book.new(2, 1, BUY, LIMIT, GTC, 110, 1, stop=101)
    book.new(3, 1, SELL, LIMIT, GTC, 90, 1, stop=99)
    assert book.stop_queue(BUY) == [2, 1]
    book.new(4, 2, SELL, LIMIT, GTC, 98, 1)
    book.new(5, 2, SELL, LIMIT, GTC, 104, 1)
    # A buy sweeping 98 then 104: the print at 98 reaches the sell stop, the one at 104 both buy stops.
    rows = _rows(book, book.new(6, 3, BUY, LIMIT, IOC, 104, 2))
    assert [r[E_OID] for r in rows if r[E_TYPE] == EV_TRIGGERED] == [3, 2, 1]


@pytest.mark.parametrize("make", [0, 1], ids=["compiled", "reference"])
def test_a_triggered_limit_rests_with_time_priority_from_its_trigger(make: int) -> None:
    book = _books()[make]
    _trade(book, 100)
    book.new(1, 1, BUY, LIMIT, GTC, 102, 5, stop=101)  # waits; not in the depth
    book.new(2, 1, BUY, LIMIT, GTC, 102, 5)
    assert book.queue(BUY, 102) == [2] and book.depth(BUY) == [(102, 5, 1)]
    book.new(3, 2, SELL, LIMIT, GTC, 103, 1)
    _rows(book, book.new(4, 3, BUY, LIMIT, IOC, 103, 1))  # prints 103: triggers 1, which rests behind 2
    assert book.queue(BUY, 102) == [2, 1] and book.stops == 0


@pytest.mark.parametrize("make", [0, 1], ids=["compiled", "reference"])
def test_cancel_replace_and_status_of_a_waiting_stop(make: int) -> None:
    book = _books(band_lo=90, band_hi=110)[make]
    _trade(book, 100)
    book.new(1, 0, BUY, LIMIT, GTC, 105, 5, stop=104)
    book.new(2, 0, BUY, LIMIT, GTC, 106, 5, stop=104)
    assert book.order(1) == (BUY, 105, 5, 5, 0) and book.stop_queue(BUY) == [1, 2]
    # Price and quantity with the same trigger: keeps its place.
    rep = _rows(book, book.replace(1, 106, 10))
    assert rep == [(EV_REPLACED, 1, BUY, 106, 10, 10, 0, 1, 104, 0, 0)] and book.stop_queue(BUY) == [1, 2]
    # A new trigger: behind the stops of that trigger.
    rep = _rows(book, book.replace(1, NO_PRICE, NO_QTY, stop=104))
    assert rep[0][7] == 1  # the same trigger given again keeps the place too
    _rows(book, book.replace(1, NO_PRICE, NO_QTY, stop=103))
    _rows(book, book.replace(1, NO_PRICE, NO_QTY, stop=104))
    assert book.stop_queue(BUY) == [2, 1] and book.stop(1) == 104
    assert _reason(_rows(book, book.replace(1, 103, NO_QTY))) == REJ_STOP_LIMIT
    assert _reason(_rows(book, book.replace(1, NO_PRICE, NO_QTY, stop=100))) == REJ_STOP_WOULD_TRIGGER
    book.new(3, 0, SELL, MARKET, GTC, 0, 5, stop=95)
    assert _reason(_rows(book, book.replace(3, 94, NO_QTY))) == REJ_BAD_STOP  # a stop market has no limit
    book.new(4, 0, SELL, LIMIT, GTC, 108, 5)
    assert _reason(_rows(book, book.replace(4, NO_PRICE, NO_QTY, stop=107))) == REJ_NOT_STOP
    cxl = _rows(book, book.cancel(1))
    assert cxl[0][:5] == (EV_CANCELLED, 1, BUY, 106, 10) and book.stop(1) is None and book.stops == 2
    assert _reason(_rows(book, book.cancel(1))) != 0


@pytest.mark.parametrize("make", [0, 1], ids=["compiled", "reference"])
def test_day_and_gtd_stops_expire_at_end_of_day(make: int) -> None:
    book = _books()[make]
    book.new(1, 0, BUY, LIMIT, DAY, 105, 5, stop=104)
    book.new(2, 0, SELL, MARKET, GTD, 0, 5, expire=20260106, stop=95)
    book.new(3, 0, SELL, MARKET, GTC, 0, 5, stop=94)
    assert [r[E_OID] for r in _rows(book, book.end_of_day(20260105)) if r[E_TYPE] == EV_EXPIRED] == [1]
    assert [r[E_OID] for r in _rows(book, book.end_of_day(20260106)) if r[E_TYPE] == EV_EXPIRED] == [2]
    assert book.stops == 1 and book.stop(3) == 94


@pytest.mark.parametrize("make", [0, 1], ids=["compiled", "reference"])
def test_triggered_stop_market_gets_protection_and_self_trade_prevention(make: int) -> None:
    book = _books(protect_bp=500, ref=100)[make]
    _trade(book, 100)
    book.new(1, 5, SELL, LIMIT, GTC, 101, 1)
    book.new(2, 6, SELL, LIMIT, GTC, 104, 5)
    book.new(3, 6, SELL, LIMIT, GTC, 110, 5)
    book.new(4, 6, BUY, MARKET, GTC, 0, 20, stp=STP_CANCEL_INCOMING, stop=101)
    rows = _rows(book, book.new(5, 7, BUY, LIMIT, IOC, 101, 1))  # prints 101: triggers the stop
    # Its own broker's ask at 104 stops it (cancel_incoming); protection (101 + 5 %) would stop it at 106.
    assert [r[E_TYPE] for r in rows] == [EV_ACCEPTED, EV_TRADE, EV_TRIGGERED, EV_CANCELLED]
    book.new(6, 7, BUY, MARKET, GTC, 0, 20, stop=102)
    rows = _rows(book, book.new(7, 8, BUY, LIMIT, IOC, 104, 1))  # prints 104: triggers; limit 104 * 1.05 = 109
    assert [r[E_PRICE] for r in rows if r[E_TYPE] == EV_TRADE] == [104, 104]
    assert rows[-1][E_TYPE] == EV_CANCELLED and rows[-1][E_REASON] == CXL_IOC_REMAINDER
    assert book.depth(SELL) == [(110, 5, 1)]


def test_many_stops_grow_the_event_buffer_and_slots() -> None:
    small, ref = OrderBook(slots=2, events=4), ReferenceBook()
    for book in (small, ref):
        _trade(book, 100)
        for i in range(40):
            book.new(i, 1, BUY, LIMIT, GTC, 130, 2, stop=101 + i % 7)
            book.new(100 + i, 2, SELL, LIMIT, GTC, 101 + i % 25, 2)
    a = _rows(small, small.new(500, 3, BUY, LIMIT, IOC, 101, 1))
    b = _rows(ref, ref.new(500, 3, BUY, LIMIT, IOC, 101, 1))
    assert a == b and sum(r[E_TYPE] == EV_TRIGGERED for r in a) == 40
    assert small.stops == 0 and ref.stops == 0
    assert small.depth(SELL) == ref.depth(SELL) and small.depth(BUY) == ref.depth(BUY)


def test_replace_of_a_plain_order_without_a_trigger_is_taken() -> None:
    for book in _books():
        book.new(1, 0, BUY, LIMIT, GTC, 100, 5)
        assert _rows(book, book.replace(1, NO_PRICE, 3))[0][E_TYPE] == EV_REPLACED


# ------------------------------------------------------------------ the engine


def _engine() -> object:
    from decimal import Decimal

    from fabric.engine import MatchingEngine
    from fabric.instruments import Instrument

    eng = MatchingEngine()
    eng.add_instrument(Instrument("TCS", tick=Decimal("0.05"), ref_price=Decimal("100"), band_pct=Decimal("10")))
    return eng


def _names(out: list) -> list[str]:
    return [type(o).__name__ for o in out]


def test_engine_stop_waits_reports_triggered_and_is_an_ordinary_order_after() -> None:
    from fabric.protocol import ExAccepted, ExTriggered

    eng = _engine()
    eng.new_order("TCS", "B1", "s1", SELL, LIMIT, GTC, "100.00", 5)
    eng.new_order("TCS", "B2", "b1", BUY, LIMIT, IOC, "100.00", 1)  # last 100.00
    acc = eng.new_order("TCS", "B3", "st", BUY, LIMIT, DAY, "100.10", 3, stop_price="100.05")
    assert type(acc[0]) is ExAccepted and acc[0].stop_price == "100.05"
    st = eng.order_status("TCS", "B3", "st")
    assert (st.state, st.stop_price, st.triggered, st.leaves_qty) == ("new", "100.05", False, 3)
    assert eng.book_levels("TCS")["bids"] == []  # not in the depth
    assert eng.open_orders("B3")[0].oid == "st"
    eng.new_order("TCS", "B1", "s2", SELL, LIMIT, GTC, "100.05", 2)
    out = eng.new_order("TCS", "B2", "b2", BUY, LIMIT, IOC, "100.05", 5)  # 4 at 100.00, 1 at 100.05: triggers
    assert _names(out) == ["ExAccepted", "Trade", "ExFill", "ExFill", "Trade", "ExFill", "ExFill", "ExTriggered",
                           "Trade", "ExFill", "ExFill"]
    trig = out[7]
    assert type(trig) is ExTriggered and (trig.broker, trig.oid, trig.price, trig.stop_price) == (
        "B3", "st", "100.10", "100.05")
    st = eng.order_status("TCS", "B3", "st")
    assert (st.state, st.triggered, st.cum_qty, st.leaves_qty) == ("partially_filled", True, 1, 2)
    assert eng.book_levels("TCS")["bids"] == [["100.10", 2, 1]]
    rej = eng.replace("TCS", "B3", "st", None, None, stop_price="100.50")
    assert rej[0].reason == "not_a_waiting_stop"


def test_engine_rejects_stops_with_their_reason_and_a_text_naming_stop_price() -> None:
    eng = _engine()
    eng.new_order("TCS", "B1", "s1", SELL, LIMIT, GTC, "100.00", 5)
    eng.new_order("TCS", "B2", "b1", BUY, LIMIT, IOC, "100.00", 1)
    cases = [
        (dict(side=BUY, otype=LIMIT, tif=DAY, price="101.00", stop_price="100.02"), "price_off_tick"),
        (dict(side=BUY, otype=LIMIT, tif=DAY, price="101.00", stop_price="0"), "price_not_positive"),
        (dict(side=BUY, otype=LIMIT, tif=DAY, price="101.00", stop_price="120.00"), "price_out_of_band"),
        (dict(side=BUY, otype=LIMIT, tif=DAY, price="101.00", stop_price="102.00"), "bad_stop_limit"),
        (dict(side=SELL, otype=MARKET, tif=DAY, price=None, stop_price="100.00"), "stop_would_trigger"),
        (dict(side=SELL, otype=MARKET, tif=IOC, price=None, stop_price="99.00"), "bad_stop_order"),
    ]
    for kw, reason in cases:
        out = eng.new_order("TCS", "B3", "x", kw["side"], kw["otype"], kw["tif"], kw["price"], 5,
                            stop_price=kw["stop_price"])
        assert out[0].reason == reason, (kw, out)
        if reason != "bad_stop_order":
            assert "stop_price" in out[0].text, out[0].text


def test_engine_stop_refused_outside_continuous_held_through_the_auction_expired_at_close() -> None:
    eng = _engine()
    eng.new_order("TCS", "B1", "s1", SELL, LIMIT, GTC, "100.00", 5)
    eng.new_order("TCS", "B2", "b1", BUY, LIMIT, IOC, "100.00", 1)
    eng.new_order("TCS", "B3", "sd", SELL, MARKET, DAY, None, 2, stop_price="99.00")
    eng.new_order("TCS", "B3", "sg", SELL, MARKET, GTC, None, 2, stop_price="98.00")
    eng.session("closed")
    eng.session("pre_open")
    late = eng.new_order("TCS", "B3", "sp", SELL, MARKET, DAY, None, 2, stop_price="97.00")
    assert late[0].reason == "market_closed"
    out = eng.new_order("TCS", "B4", "p1", BUY, LIMIT, DAY, "98.00", 3)  # collected, no trade
    out += eng.session("auction") + eng.session("continuous")
    assert "ExTriggered" not in _names(out)
    assert eng.order_status("TCS", "B3", "sd").state == "expired"  # the DAY stop expired at the close
    assert eng.order_status("TCS", "B3", "sg").state == "new"  # the GTC one still waits
    out = eng.new_order("TCS", "B5", "x1", SELL, LIMIT, IOC, "98.00", 1)  # continuous: prints 98.00
    assert "ExTriggered" in _names(out) and eng.order_status("TCS", "B3", "sg").triggered


def test_engine_the_call_auction_price_is_the_last_price_and_triggers_stops_when_continuous_trading_opens() -> None:
    from fabric.protocol import ExTriggered, Trade

    eng = _engine()
    eng.new_order("TCS", "B1", "s1", SELL, LIMIT, GTC, "100.00", 5)
    eng.new_order("TCS", "B2", "b1", BUY, LIMIT, IOC, "100.00", 1)  # last 100.00; s1 rests with 4
    eng.new_order("TCS", "B3", "sg", SELL, MARKET, GTC, None, 2, stop_price="98.00")
    eng.session("closed")
    eng.session("pre_open")
    eng.new_order("TCS", "B5", "p2", SELL, LIMIT, DAY, "97.00", 3)
    eng.new_order("TCS", "B4", "p1", BUY, LIMIT, DAY, "97.50", 3)
    eng.new_order("TCS", "B6", "p3", BUY, LIMIT, DAY, "97.00", 2)  # below the price: rests after the call
    call = eng.session("auction")
    assert [(t.price, t.qty) for t in call if type(t) is Trade] == [("97.50", 3)]  # nearest the close, 100.00
    assert "ExTriggered" not in _names(call), "no stop triggers before continuous trading opens"
    assert eng.order_status("TCS", "B3", "sg").state == "new"
    opened = eng.session("continuous")
    trig = [e for e in opened if type(e) is ExTriggered]
    assert [(e.oid, e.stop_price) for e in trig] == [("sg", "98.00")]  # the call's 97.50 reached 98.00
    assert [(t.price, t.qty) for t in opened if type(t) is Trade] == [("97.00", 2)]  # the SL-M took p3
    assert eng.order_status("TCS", "B6", "p3").state == "filled"
    # The last price is the call's (then 97.00): a sell stop at 97.50 would trigger at once, one at 96.50 waits.
    assert eng.new_order("TCS", "B3", "s2", SELL, MARKET, DAY, None, 1, stop_price="97.50")[0].reason == \
        "stop_would_trigger"
    assert _names(eng.new_order("TCS", "B3", "s3", SELL, MARKET, DAY, None, 1, stop_price="96.50")) == ["ExAccepted"]


def test_engine_kill_switch_cancels_a_waiting_stop() -> None:
    from fabric.commands import Control

    eng = _engine()
    eng.new_order("TCS", "B3", "st", BUY, LIMIT, GTC, "101.00", 3, stop_price="100.50")
    out = eng.apply(Control(action="disable", broker="B3"))
    assert _names(out) == ["ExCancelled"] and out[0].reason == "kill_switch"
    assert eng.order_status("TCS", "B3", "st").state == "cancelled"
