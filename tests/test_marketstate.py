"""Tests of fabric.marketstate: statistics, bars, depth, what apply refuses, snapshots."""

from __future__ import annotations

import json
from decimal import Decimal

from fabric.instruments import Instrument
from fabric.marketstate import TAPE_LEN, MarketState
from fabric.protocol import BookLevel, BookSnapshot, PubHeartbeat, Side, Trade, decode_pub, encode_pub, iter_pub

SEC = 1_000_000_000
T0 = 1_700_000_040 * SEC  # a whole minute


def trade(tseq: int, price: str, qty: int, ts: int = T0, symbol: str = "TCS", aggressor: Side = "buy") -> Trade:
    return Trade(shard=0, seq=tseq, tseq=tseq, epoch=1, ts=ts, symbol=symbol, trade_id=tseq, price=price,
                 qty=qty, aggressor=aggressor, buy_broker="B1", buy_oid=f"b{tseq}", sell_broker="B2",
                 sell_oid=f"s{tseq}")


def level(tseq: int, side: Side, price: str, qty: int, count: int = 1, symbol: str = "TCS") -> BookLevel:
    return BookLevel(shard=0, seq=tseq, tseq=tseq, epoch=1, ts=T0, symbol=symbol, side=side, price=price,
                     qty=qty, count=count)


def market() -> MarketState:
    return MarketState([Instrument("TCS", tick=Decimal("0.05"), ref_price=Decimal("3500.00")),
                        Instrument("INFY", tick=Decimal("0.05"))])


def test_trade_sequence_gives_exact_statistics() -> None:
    m = market()
    for i, (p, q) in enumerate([("3500.00", 10), ("3535.00", 30), ("3465.00", 20), ("3570.00", 40)], 1):
        m.apply(trade(i, p, q))
    st = m.symbols["TCS"]
    assert (st.open, st.high, st.low, st.last) == (Decimal("3500.00"), Decimal("3570.00"), Decimal("3465.00"),
                                                   Decimal("3570.00"))
    assert st.last_qty == 40
    assert st.volume == 100
    assert st.trades == 4
    assert st.turnover == Decimal("353150.00")
    assert st.vwap == Decimal("3531.50")
    assert st.change == Decimal("70.00")
    assert st.change_pct == Decimal("2")
    snap = m.snapshot("TCS")
    assert snap["change_pct"] == "2.00"
    assert snap["vwap"] == "3531.5000"
    assert snap["turnover"] == "353150.00"
    assert [t["price"] for t in snap["tape"]] == ["3500.00", "3535.00", "3465.00", "3570.00"]


def test_negative_change_rounds_to_two_places() -> None:
    m = market()
    m.apply(trade(1, "3464.05", 1))  # -35.95 / 3500 = -1.02714...%
    assert m.ticks("TCS") == {"symbol": "TCS", "last": "3464.05", "change_pct": "-1.03", "volume": 1,
                              "bid": None, "ask": None}


def test_no_reference_price_gives_no_change() -> None:
    m = market()
    m.apply(trade(1, "1500.00", 5, symbol="INFY"))
    assert m.symbols["INFY"].change_pct is None
    assert m.snapshot("INFY")["change"] is None


def test_bars_split_at_second_and_minute_boundaries() -> None:
    m = market()
    m.apply(trade(1, "100.00", 1, ts=T0 + 100))
    m.apply(trade(2, "102.00", 2, ts=T0 + SEC - 1))  # same second
    m.apply(trade(3, "99.00", 3, ts=T0 + SEC))  # next second
    m.apply(trade(4, "101.00", 4, ts=T0 + 59 * SEC + 5))  # same minute, a later second
    m.apply(trade(5, "105.00", 5, ts=T0 + 60 * SEC))  # next minute
    bars = m.snapshot("TCS")["bars"]
    sec = [(b["start"], b["open"], b["high"], b["low"], b["close"], b["volume"], b["trades"]) for b in bars["1s"]]
    assert sec == [
        (T0, "100.00", "102.00", "100.00", "102.00", 3, 2),
        (T0 + SEC, "99.00", "99.00", "99.00", "99.00", 3, 1),
        (T0 + 59 * SEC, "101.00", "101.00", "101.00", "101.00", 4, 1),
        (T0 + 60 * SEC, "105.00", "105.00", "105.00", "105.00", 5, 1),
    ]
    mins = [(b["start"], b["open"], b["high"], b["low"], b["close"], b["volume"], b["trades"]) for b in bars["1m"]]
    assert mins == [
        (T0, "100.00", "102.00", "99.00", "101.00", 10, 4),
        (T0 + 60 * SEC, "105.00", "105.00", "105.00", "105.00", 5, 1),
    ]


def test_late_trade_folds_into_current_bar() -> None:
    m = market()
    m.apply(trade(1, "100.00", 1, ts=T0 + 2 * SEC))
    m.apply(trade(2, "90.00", 1, ts=T0))  # stamped before the current bar
    bars = m.symbols["TCS"].bars["1s"].bars()
    assert len(bars) == 1
    assert (bars[0].low, bars[0].volume) == (Decimal("90.00"), 2)


def test_depth_orders_best_first_keeps_five_and_removes_zero_qty() -> None:
    m = market()
    seq = 0
    for p in ["100", "101", "99", "102", "98", "103", "97"]:
        seq += 1
        m.apply(level(seq, "buy", f"{p}.00", int(p), count=2))
    for p in ["105", "104", "108", "106", "107", "109"]:
        seq += 1
        m.apply(level(seq, "sell", f"{p}.00", int(p), count=3))
    snap = m.snapshot("TCS")
    assert [b[0] for b in snap["bids"]] == ["103.00", "102.00", "101.00", "100.00", "99.00"]
    assert snap["bids"][0] == ["103.00", 103, 2]
    assert [a[0] for a in snap["asks"]] == ["104.00", "105.00", "106.00", "107.00", "108.00"]
    assert (snap["bid"], snap["bid_qty"], snap["ask"], snap["ask_qty"]) == ("103.00", 103, "104.00", 104)
    m.apply(level(seq + 1, "buy", "103.00", 0, count=0))
    m.apply(level(seq + 2, "sell", "104.00", 0, count=0))
    m.apply(level(seq + 3, "buy", "50.00", 0, count=0))  # removing a level not there is harmless
    snap = m.snapshot("TCS")
    assert [b[0] for b in snap["bids"]] == ["102.00", "101.00", "100.00", "99.00", "98.00"]
    assert [a[0] for a in snap["asks"]] == ["105.00", "106.00", "107.00", "108.00", "109.00"]
    assert m.ticks("TCS")["bid"] == "102.00"
    assert m.ticks("TCS")["ask"] == "105.00"


def test_level_update_replaces_qty_and_count() -> None:
    m = market()
    m.apply(level(1, "sell", "10.00", 5, count=1))
    m.apply(level(2, "sell", "10.00", 12, count=3))
    assert m.symbols["TCS"].depth("sell") == [(Decimal("10.00"), 12, 3)]


def test_a_tseq_that_skips_ahead_is_applied_gaps_are_the_callers() -> None:
    m = market()
    assert m.apply(trade(1, "100.00", 1)) and m.apply(trade(4, "101.00", 1))
    assert m.apply(level(1, "buy", "99.00", 1)) and m.apply(level(3, "buy", "98.00", 1))
    assert m.symbols["TCS"].volume == 2
    assert (m.last_tseq("TCS", "trade"), m.last_tseq("TCS", "book")) == (4, 3)
    assert not m.apply(trade(3, "102.00", 1)), "below the last applied: the state has it"
    assert m.symbols["TCS"].volume == 2


def test_topics_are_per_symbol_and_kind() -> None:
    m = market()
    assert m.apply(trade(1, "100.00", 1, symbol="TCS"))
    assert m.apply(trade(1, "200.00", 1, symbol="INFY"))  # INFY's own tseq 1, not TCS's again
    assert m.apply(level(1, "buy", "99.00", 1, symbol="TCS"))  # the book topic counts apart from the trades
    assert m.apply(trade(2, "100.00", 1, symbol="TCS"))
    assert (m.symbols["TCS"].volume, m.symbols["INFY"].volume) == (2, 1)
    assert (m.last_tseq("TCS", "trade"), m.last_tseq("INFY", "trade"), m.last_tseq("TCS", "book")) == (2, 1, 1)


def test_duplicate_tseq_is_ignored_and_volume_not_doubled() -> None:
    m = market()
    msgs = [trade(1, "100.00", 10), trade(2, "101.00", 20), level(1, "buy", "99.00", 5)]
    assert [m.apply(msg) for msg in msgs] == [True, True, True]
    assert [m.apply(msg) for msg in msgs] == [False, False, False]  # the whole range replayed
    assert not m.apply(level(1, "buy", "99.00", 0))  # an old tseq, even with other content, is a duplicate
    st = m.symbols["TCS"]
    assert (st.volume, st.trades, st.turnover) == (30, 2, Decimal("3020.00"))
    assert len(st.tape) == 2
    assert st.bars["1s"].bars()[0].volume == 30
    assert st.best_bid() == (Decimal("99.00"), 5)


def test_snapshot_baseline_then_later_updates_apply() -> None:
    m = market()
    m.apply_snapshot(BookSnapshot(symbol="TCS", bids=[("99.00", 10, 2), ("98.00", 5, 1)],
                                  asks=[("101.00", 7, 1)], trade_id=40, book_tseq=100, trade_tseq=40))
    assert not m.apply(level(100, "buy", "99.00", 0))  # already in the snapshot
    assert not m.apply(trade(40, "100.00", 1))  # already in the snapshot
    assert m.apply(level(101, "sell", "100.50", 3, count=1))
    assert m.apply(trade(41, "101.00", 2))
    st = m.symbols["TCS"]
    assert st.best_bid() == (Decimal("99.00"), 10)
    assert st.best_ask() == (Decimal("100.50"), 3)
    assert (st.volume, st.trade_id) == (2, 41)
    assert (m.last_tseq("TCS", "book"), m.last_tseq("TCS", "trade")) == (101, 41)


def test_snapshot_replaces_earlier_levels() -> None:
    m = market()
    m.apply(level(1, "buy", "50.00", 1))
    m.apply_snapshot(BookSnapshot(symbol="TCS", bids=[("99.00", 10, 2)], asks=[], trade_id=0, book_tseq=5,
                                  trade_tseq=0))
    assert m.symbols["TCS"].depth("buy") == [(Decimal("99.00"), 10, 2)]
    assert not m.apply(level(5, "buy", "50.00", 0)), "at the snapshot's book_tseq: it has it"
    assert m.apply(level(7, "buy", "97.00", 1))
    assert m.symbols["TCS"].depth("buy") == [(Decimal("99.00"), 10, 2), (Decimal("97.00"), 1, 1)]
    assert m.last_tseq("TCS", "book") == 7


def test_other_messages_are_ignored() -> None:
    m = market()
    assert not m.apply(PubHeartbeat(shard=0, seq=3, tseq=0, epoch=1, ts=T0))
    assert m.symbols["TCS"].trades == 0 and m.tseq == {}


def test_messages_through_the_wire_codec_apply() -> None:
    m = market()
    for msg in (trade(1, "3510.00", 3), level(1, "sell", "3510.05", 4)):
        _topic, body = encode_pub(msg)
        for decoded in iter_pub(body):
            m.apply(decoded)
        assert decode_pub(body) == msg
    assert m.ticks("TCS") == {"symbol": "TCS", "last": "3510.00", "change_pct": "0.29", "volume": 3,
                              "bid": None, "ask": "3510.05"}


def test_tape_is_bounded() -> None:
    m = market()
    for i in range(1, TAPE_LEN + 11):
        m.apply(trade(i, "100.00", 1))
    tape = m.snapshot("TCS")["tape"]
    assert len(tape) == TAPE_LEN
    assert tape[0]["trade_id"] == 11


def test_snapshot_is_json_serialisable() -> None:
    m = market()
    m.apply(trade(1, "3500.05", 3, ts=T0 + 5))
    m.apply(level(1, "buy", "3500.00", 4, count=2))
    m.apply(level(2, "sell", "3500.10", 6, count=1))
    data = json.loads(json.dumps(m.snapshot("TCS")))
    assert data["last"] == "3500.05"
    assert data["bars"]["1m"][0]["start"] == T0
    assert data["bids"] == [["3500.00", 4, 2]]
    json.dumps(m.snapshot("INFY"))  # a symbol without trades or levels too
    json.dumps(m.ticks("INFY"))
