"""The engine's memory of orders: status queries and recognising a resent `new`."""

from __future__ import annotations

from decimal import Decimal

from fabric.commands import NewOrder, ReplaceOrder
from fabric.constants import BUY, GTC, IOC, LIMIT, MARKET, SELL
from fabric.engine import MatchingEngine
from fabric.instruments import Instrument
from fabric.protocol import ExAccepted, ExCancelled, ExRejected, Trade


def _engine() -> MatchingEngine:
    eng = MatchingEngine()
    eng.add_instrument(Instrument("TCS", tick=Decimal("0.05"), ref_price=Decimal("3500"), band_pct=Decimal("10")))
    return eng


def test_status_follows_order_through_fills_replace_and_cancel() -> None:
    eng = _engine()
    eng.new_order("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.00"), 10)
    assert eng.order_status("TCS", "B1", "o1").state == "new"  # type: ignore[union-attr]
    eng.new_order("TCS", "B2", "s1", SELL, MARKET, IOC, None, 4)
    st = eng.order_status("TCS", "B1", "o1")
    assert st is not None and (st.state, st.cum_qty, st.leaves_qty) == ("partially_filled", 4, 6)
    eng.replace("TCS", "B1", "o1", Decimal("3499.95"), 8)
    st = eng.order_status("TCS", "B1", "o1")
    assert st is not None and (st.price, st.qty, st.leaves_qty) == ("3499.95", 8, 4)
    eng.cancel("TCS", "B1", "o1")
    st = eng.order_status("TCS", "B1", "o1")
    assert st is not None and (st.state, st.leaves_qty, st.cum_qty, st.reason) == ("cancelled", 0, 4, "requested")
    assert eng.order_status("TCS", "B1", "s1") is None  # another broker's order
    assert eng.order_status("TCS", "B2", "s1").state == "filled"  # type: ignore[union-attr]


def _new(broker: str = "B1", side: str = "buy", price: str = "3500.00") -> NewOrder:
    return NewOrder(oid="o1", broker=broker, symbol="TCS", side=side, type="limit", price=price,  # type: ignore[arg-type]
                    qty=10, tif="GTC")


def test_is_retry_same_terms_true_different_terms_false() -> None:
    eng = _engine()
    eng.apply(_new())
    assert eng.is_retry(_new())
    assert eng.is_retry(_new(price="3500.0"))  # same price, other spelling
    assert not eng.is_retry(_new(price="3500.05"))
    assert not eng.is_retry(_new(side="sell"))
    assert not eng.is_retry(_new(broker="B2"))
    # A replace does not change what a resend of the original `new` looks like.
    eng.replace("TCS", "B1", "o1", Decimal("3499.00"), 5)
    assert eng.is_retry(_new())


def test_rejected_order_frees_its_client_order_id() -> None:
    eng = _engine()
    assert isinstance(eng.new_order("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("9000.00"), 10)[0], ExRejected)
    assert eng.order_status("TCS", "B1", "o1") is None
    assert isinstance(eng.new_order("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.00"), 10)[0], ExAccepted)


# ------------------------------------------------------------ archiving finished orders


def _flow(eng: MatchingEngine, n: int, seed: int = 3) -> list[list[object]]:
    """A random flow of news, cancels and replaces; return each command's outcomes."""
    import random

    rng = random.Random(seed)
    out: list[list[object]] = []
    for i in range(n):
        roll = rng.random()
        oid = f"o{rng.randrange(max(1, i))}"
        if roll < 0.15:
            out.append(list(eng.cancel("TCS", "B1", oid)))
        elif roll < 0.25:
            out.append(list(eng.replace("TCS", "B1", oid, rng.choice(["3500.00", "3500.03", "3499.95"]),
                                        rng.choice([None, 5, 20]))))
        else:
            side = rng.choice([BUY, SELL])
            price = Decimal("3500.00") + Decimal("0.05") * rng.randint(-3, 3)
            tif = rng.choice([GTC, GTC, IOC])
            out.append(list(eng.new_order("TCS", "B1", f"o{i}", side, LIMIT, tif, price, rng.randint(1, 30))))
    return out


def test_archiving_finished_orders_changes_no_outcome() -> None:
    kept, archiving = _engine(), MatchingEngine(keep_finished=3)
    archiving.add_instrument(kept.instruments["TCS"])
    assert _flow(kept, 3000) == _flow(archiving, 3000), "the same outcomes, message for message"
    assert archiving.in_memory < kept.in_memory / 5, "finished orders left memory"


def test_an_archived_order_is_closed_used_and_answered_from_the_stores() -> None:
    eng = MatchingEngine(keep_finished=1)
    eng.add_instrument(Instrument("TCS", tick=Decimal("0.05"), ref_price=Decimal("3500"), band_pct=Decimal("10")))
    eng.new_order("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.00"), 10)
    eng.cancel("TCS", "B1", "o1")
    eng.new_order("TCS", "B1", "o2", BUY, LIMIT, GTC, Decimal("3500.00"), 10)
    eng.cancel("TCS", "B1", "o2")  # o1 is now the oldest of two finished orders: archived
    st = eng.order_status("TCS", "B1", "o1", "status")
    assert st is not None and (st.state, st.reason) == ("unknown", "archived")
    st2 = eng.order_status("TCS", "B1", "o2")
    assert st2 is not None and st2.state == "cancelled", "the newest finished order is still in memory"
    (rej,) = eng.cancel("TCS", "B1", "o1")
    assert isinstance(rej, ExRejected) and rej.reason == "order_closed" and "no longer open" in rej.text
    (rej,) = eng.replace("TCS", "B1", "o1", Decimal("3500.03"), None)
    assert isinstance(rej, ExRejected) and rej.reason == "price_off_tick", "the engine's checks come first, as before"
    assert eng.is_retry(_new()), "a new with an archived id is answered (from the stores), never executed"
    (dup,) = eng.new_order("TCS", "B1", "o1", BUY, LIMIT, GTC, Decimal("3500.00"), 10)
    assert isinstance(dup, ExRejected) and dup.reason == "duplicate_client_order_id"
    assert eng.order_status("TCS", "B1", "o1", "status").symbol == "TCS"  # type: ignore[union-attr]
    assert eng.order_status("INFY", "B1", "o1") is None, "another symbol's order of that id: none"


# -- self-trade prevention: the engine's outcomes, by name ------------------------------------------------------------


def _sell(eng: MatchingEngine, broker: str, oid: str, price: str, qty: int) -> None:
    eng.apply(NewOrder(oid=oid, broker=broker, symbol="TCS", side="sell", type="limit", price=price, qty=qty,
                       tif="GTC"))


def test_stp_cancel_resting_reports_the_resting_orders_cancel_then_the_trade() -> None:
    eng = _engine()
    _sell(eng, "B1", "own", "3500.00", 4)
    _sell(eng, "B2", "theirs", "3500.05", 5)
    out = eng.apply(NewOrder(oid="b", broker="B1", symbol="TCS", side="buy", type="limit", price="3500.05", qty=6,
                             tif="GTC", stp="cancel_resting"))
    assert [(type(o).__name__, getattr(o, "oid", None), getattr(o, "reason", None)) for o in out] == [
        ("ExAccepted", "b", None), ("ExCancelled", "own", "self_trade"), ("Trade", None, None),
        ("ExFill", "b", None), ("ExFill", "theirs", None)]
    cxl = out[1]
    assert isinstance(cxl, ExCancelled) and (cxl.broker, cxl.qty, cxl.cum_qty) == ("B1", 4, 0)
    st = eng.order_status("TCS", "B1", "own")
    assert st is not None and (st.state, st.reason) == ("cancelled", "self_trade")
    st = eng.order_status("TCS", "B1", "b")
    assert st is not None and (st.state, st.cum_qty, st.leaves_qty) == ("partially_filled", 5, 1)


def test_stp_cancel_both_market_order_and_resting_order_end_self_trade() -> None:
    eng = _engine()
    _sell(eng, "B1", "own", "3500.00", 4)
    out = eng.apply(NewOrder(oid="m", broker="B1", symbol="TCS", side="buy", type="market", qty=3, tif="IOC",
                             stp="cancel_both"))
    assert [(type(o).__name__, o.oid, o.reason) for o in out if isinstance(o, ExCancelled)] == [
        ("ExCancelled", "own", "self_trade"), ("ExCancelled", "m", "self_trade")]
    assert not any(isinstance(o, Trade) for o in out)
    assert eng.order_status("TCS", "B1", "m").reason == "self_trade"  # type: ignore[union-attr]
    assert eng.book_levels("TCS")["asks"] == []


def test_stp_replace_carries_its_own_mode_cancel_incoming_ends_the_order() -> None:
    eng = _engine()
    _sell(eng, "B1", "own", "3500.00", 4)
    eng.new_order("TCS", "B1", "b", BUY, LIMIT, GTC, Decimal("3499.00"), 4)
    out = eng.apply(ReplaceOrder(oid="b", broker="B1", symbol="TCS", price="3500.00", stp="cancel_incoming"))
    assert [type(o).__name__ for o in out] == ["ExReplaced", "ExCancelled"]
    st = eng.order_status("TCS", "B1", "b")
    assert st is not None and (st.state, st.reason, st.leaves_qty) == ("cancelled", "self_trade", 0)
    assert eng.order_status("TCS", "B1", "own").state == "new"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- order types


_TS_2026_01_05 = 1_767_600_000_000_000_000  # 2026-01-05 13:30 IST (08:00 UTC)


def test_post_only_that_would_cross_is_rejected_would_cross_and_nothing_trades() -> None:
    eng = _engine()
    _sell(eng, "B2", "s", "3500.00", 5)
    out = eng.apply(NewOrder(oid="p", broker="B1", symbol="TCS", side="buy", type="limit", price="3500.00", qty=5,
                             tif="GTC", post_only=True))
    assert len(out) == 1 and isinstance(out[0], ExRejected)
    assert (out[0].reason, out[0].text) == ("would_cross", "post-only order at 3500.00 would trade on entry")
    out = eng.apply(NewOrder(oid="p", broker="B1", symbol="TCS", side="buy", type="limit", price="3499.95", qty=5,
                             tif="DAY", post_only=True))
    assert isinstance(out[0], ExAccepted) and out[0].post_only and len(out) == 1
    st = eng.order_status("TCS", "B1", "p")
    assert st is not None and st.post_only and st.state == "new"
    out = eng.apply(NewOrder(oid="q", broker="B1", symbol="TCS", side="buy", type="limit", price="3499.95", qty=5,
                             tif="IOC", post_only=True))
    assert isinstance(out[0], ExRejected) and out[0].reason == "bad_time_in_force" and "post-only" in out[0].text


def test_gtd_expire_date_checked_then_expires_at_the_end_of_that_day_only() -> None:
    eng = _engine()

    def gtd(oid: str, date: str) -> list:
        return eng.apply(NewOrder(oid=oid, broker="B1", symbol="TCS", side="buy", type="limit", price="3400.00",
                                  qty=5, tif="GTD", expire_date=date, ts=_TS_2026_01_05))

    past = gtd("a", "2026-01-04")
    assert isinstance(past[0], ExRejected) and past[0].reason == "bad_expire_date"
    assert past[0].text == "expire_date 2026-01-04 is before the trading day 2026-01-05"
    bad = gtd("a", "2026-02-30")
    assert isinstance(bad[0], ExRejected) and bad[0].text == "expire_date 2026-02-30 is not a date (YYYY-MM-DD)"
    acc = gtd("today", "2026-01-05")[0]
    assert isinstance(acc, ExAccepted) and (acc.tif, acc.expire_date) == ("GTD", "2026-01-05")
    assert isinstance(gtd("later", "2026-01-07")[0], ExAccepted)
    assert [e.oid for e in eng.end_of_day(_TS_2026_01_05)] == ["today"]
    assert [e.oid for e in eng.end_of_day(0, "2026-01-06")] == []
    assert [e.oid for e in eng.end_of_day(0, "2026-01-07")] == ["later"]


def test_market_order_stops_at_the_protection_from_the_last_trade() -> None:
    eng = MatchingEngine()
    eng.add_instrument(Instrument("TCS", tick=Decimal("0.05"), ref_price=Decimal("100"),
                                  market_protection_pct=Decimal("2")))
    for i, px in enumerate(("100.00", "101.00", "102.00", "102.05")):
        _sell(eng, "B2", f"s{i}", px, 5)
    out = eng.apply(NewOrder(oid="m", broker="B1", symbol="TCS", side="buy", type="market", qty=20, tif="IOC"))
    assert [o.price for o in out if isinstance(o, Trade)] == ["100.00", "101.00", "102.00"]  # limit 102.00
    assert isinstance(out[-1], ExCancelled) and (out[-1].qty, out[-1].reason) == (5, "unfilled_ioc_remainder")


def test_iceberg_depth_shows_the_peak_and_status_its_whole_quantity() -> None:
    eng = _engine()
    out = eng.apply(NewOrder(oid="ice", broker="B2", symbol="TCS", side="sell", type="limit", price="3500.00",
                             qty=30, tif="GTC", disclosed_qty=10))
    assert isinstance(out[0], ExAccepted) and out[0].disclosed_qty == 10
    assert eng.book_levels("TCS")["asks"] == [["3500.00", 10, 1]]
    eng.apply(NewOrder(oid="b", broker="B1", symbol="TCS", side="buy", type="limit", price="3500.00", qty=12,
                       tif="IOC"))
    assert eng.book_levels("TCS")["asks"] == [["3500.00", 8, 1]]  # the second peak, 2 of it traded
    st = eng.order_status("TCS", "B2", "ice")
    assert st is not None and (st.cum_qty, st.leaves_qty, st.disclosed_qty) == (12, 18, 10)
    bad = eng.apply(NewOrder(oid="x", broker="B2", symbol="TCS", side="sell", type="limit", price="3500.00",
                             qty=30, tif="GTC", disclosed_qty=2))
    assert isinstance(bad[0], ExRejected) and bad[0].reason == "bad_disclosed_qty" and "10 %" in bad[0].text
