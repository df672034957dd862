"""MarketFeed: what the ticker publishes per turn, sequenced per topic, and the WebSocket conflation rules."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from fabric.feed import HEARTBEAT_TOPIC, MarketFeed, feed_topic, split_feed_topic
from fabric.instruments import Instrument
from fabric.protocol import BookLevel, BookSnapshot, Trade
from nodes.webhub import Item, WebClient, _merge

S = 1_000_000_000
T0 = 1_764_000_000 * S  # a whole minute


def _inst(symbol: str = "TCS", ref: str = "100.00") -> Instrument:
    return Instrument(symbol, tick=Decimal("0.05"), ref_price=Decimal(ref))


def trade(tseq: int, price: str, qty: int, ts: int, symbol: str = "TCS", aggressor: str = "buy") -> Trade:
    return Trade(shard=0, seq=tseq, tseq=tseq, epoch=0, ts=ts, symbol=symbol, trade_id=tseq, price=price, qty=qty,
                 aggressor=aggressor, buy_broker="B1", buy_oid="o1", sell_broker="B2", sell_oid="o2")  # type: ignore[arg-type]


def level(tseq: int, side: str, price: str, qty: int, count: int = 1, symbol: str = "TCS") -> BookLevel:
    return BookLevel(shard=0, seq=tseq, tseq=tseq, epoch=0, ts=T0, symbol=symbol, side=side,  # type: ignore[arg-type]
                     price=price, qty=qty, count=count)


def kinds(turn_msgs: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, int]]:
    return [(k, s, o["seq"]) for k, s, o in turn_msgs]


def test_topics_round_trip_and_refuse_strangers() -> None:
    assert feed_topic("quote", "TCS") == b"qTCS\x00"
    assert split_feed_topic(b"dINFY\x00") == ("depth", "INFY")
    assert split_feed_topic(HEARTBEAT_TOPIC) == ("heartbeat", "")
    for bad in (b"", b"xTCS\x00", b"qTCS", b"q\x00"):
        with pytest.raises(ValueError):
            split_feed_topic(bad)


def test_a_turn_publishes_one_quote_depth_and_bars_per_symbol_with_every_trade_in_prints() -> None:
    f = MarketFeed([_inst()])
    assert not f.dirty and f.take(T0).messages == []
    f.apply(level(1, "sell", "100.50", 30))
    for i, (px, q) in enumerate((("100.50", 10), ("100.50", 5), ("100.50", 1)), start=1):
        f.apply(trade(i, px, q, T0 + i * 100_000_000))
    f.apply(level(2, "sell", "100.50", 14))
    turn = f.take(T0 + S)
    assert kinds(turn.messages) == [("quote", "TCS", 1), ("depth", "TCS", 1), ("bars", "TCS", 1)]
    quote = turn.messages[0][2]
    assert [p["qty"] for p in quote["prints"]] == [10, 5, 1]
    assert quote["volume"] == 16 and quote["last"] == "100.50" and quote["change_pct"] == "0.50"
    assert quote["ask"] == "100.50" and quote["ask_qty"] == 14 and quote["bid"] is None
    assert turn.messages[1][2]["asks"] == [["100.50", 14, 1]]
    bars = turn.messages[2][2]["bars"]
    assert [(b["start"], b["volume"], b["trades"]) for b in bars["1s"]] == [(T0, 16, 3)]
    assert [(b["start"], b["volume"]) for b in bars["1m"]] == [(T0, 16)]
    assert [(s, t.trade_id) for s, t in turn.trades] == [("TCS", 1), ("TCS", 2), ("TCS", 3)]
    assert [(s, iv) for s, iv, _ in turn.bars] == [("TCS", "1s"), ("TCS", "1m")]
    assert not f.dirty


def test_seq_counts_per_topic_and_unchanged_depth_is_not_republished() -> None:
    f = MarketFeed([_inst(), _inst("INFY", "1500.00")])
    f.apply(level(1, "buy", "99.00", 10))
    f.take(T0)
    f.apply(level(2, "buy", "98.00", 10))  # below the best: depth changes, the quote (best bid) does not
    turn = f.take(T0)
    assert kinds(turn.messages) == [("depth", "TCS", 2)]
    f.apply(trade(1, "1500.00", 3, T0, symbol="INFY"))
    turn = f.take(T0)
    assert kinds(turn.messages) == [("quote", "INFY", 1), ("bars", "INFY", 1)]
    # a change to a level beyond the fifth leaves the top five as they were: no depth message
    for i, px in enumerate(("97.00", "96.00", "95.00", "94.00"), start=3):
        f.apply(level(i, "buy", px, 10))
    f.take(T0)
    f.apply(level(7, "buy", "90.00", 10))
    assert f.take(T0).messages == []


def test_bars_carry_the_bar_a_turn_closed_and_the_open_one() -> None:
    f = MarketFeed([_inst()])
    f.apply(trade(1, "100.00", 1, T0 + 100))
    f.take(T0)
    f.apply(trade(2, "101.00", 2, T0 + 200))  # same second
    f.apply(trade(3, "102.00", 3, T0 + 2 * S))  # two seconds later: the first second closes
    bars = f.take(T0).messages[-1][2]["bars"]
    assert [(b["start"], b["close"], b["volume"]) for b in bars["1s"]] == [(T0, "101.00", 3), (T0 + 2 * S, "102.00", 3)]
    assert [(b["start"], b["volume"], b["trades"]) for b in bars["1m"]] == [(T0, 6, 3)]


def test_duplicates_are_not_applied_and_snapshots_carry_the_last_seq() -> None:
    f = MarketFeed([_inst()])
    t = trade(1, "100.00", 4, T0)
    assert f.apply(t) and not f.apply(t)
    f.take(T0)
    snap = f.snapshot("TCS", T0)
    assert snap["quote"]["seq"] == 1 and snap["quote"]["volume"] == 4 and len(snap["quote"]["prints"]) == 1
    assert snap["depth"]["seq"] == 0 and snap["bars"]["seq"] == 1
    with pytest.raises(KeyError):
        f.snapshot("NOPE")


def test_a_matcher_snapshot_sets_the_books_and_a_reset_forgets_the_day() -> None:
    f = MarketFeed([_inst()])
    f.apply(trade(1, "100.00", 4, T0))
    f.apply_snapshot(BookSnapshot(symbol="TCS", bids=[("99.95", 10, 2)], asks=[("100.05", 5, 1)], trade_id=9,
                                  book_tseq=40, trade_tseq=9))
    turn = f.take(T0)
    assert turn.messages[1][2]["bids"] == [["99.95", 10, 2]]
    assert not f.apply(level(40, "buy", "99.95", 1)), "at or below the snapshot's tseq: already in it"
    assert f.apply(level(41, "buy", "99.95", 1))
    f.reset(["TCS"])
    f.take(T0)
    snap = f.snapshot("TCS", T0)
    assert snap["quote"]["volume"] == 0 and snap["depth"]["bids"] == [] and snap["quote"]["ref_price"] == "100.00"
    assert f.apply(trade(1, "100.00", 1, T0)), "after a reset the shard's numbering starts again"


def test_a_slow_websocket_client_gets_the_latest_state_with_every_print_and_bar() -> None:
    q1: dict[str, Any] = {"t": "quote", "seq": 1, "last": "1", "prints": [{"trade_id": 1}]}
    q2: dict[str, Any] = {"t": "quote", "seq": 2, "last": "2", "prints": [{"trade_id": 2}, {"trade_id": 3}]}
    assert _merge("quote", q1, q2) == {"t": "quote", "seq": 2, "last": "2",
                                       "prints": [{"trade_id": 1}, {"trade_id": 2}, {"trade_id": 3}]}
    b1 = {"t": "bars", "seq": 1, "bars": {"1s": [{"start": 1, "close": "1"}, {"start": 2, "close": "2"}]}}
    b2 = {"t": "bars", "seq": 2, "bars": {"1s": [{"start": 2, "close": "3"}, {"start": 3, "close": "4"}],
                                          "1m": [{"start": 0, "close": "4"}]}}
    merged = _merge("bars", b1, b2)
    assert merged["seq"] == 2
    assert merged["bars"]["1s"] == [{"start": 1, "close": "1"}, {"start": 2, "close": "3"}, {"start": 3, "close": "4"}]
    assert merged["bars"]["1m"] == [{"start": 0, "close": "4"}]
    assert _merge("depth", {"seq": 1}, {"seq": 2}) == {"seq": 2}
    long = {"t": "quote", "seq": 3, "prints": [{"trade_id": i} for i in range(10, 60)]}
    assert len(_merge("quote", q2, long)["prints"]) == 50

    c = WebClient(ws=None)  # type: ignore[arg-type]
    c.all_channels = frozenset({"quote"})
    first, second = Item(("quote", "TCS"), q1), Item(("quote", "TCS"), q2)
    first.body = second.body = b"{}"
    c.post(first)
    c.post(second)
    c.post(Item(("heartbeat", ""), {"t": "heartbeat"}))
    assert list(c.box) == [("quote", "TCS"), ("heartbeat", "")] and c.conflated == 1
    kept = c.box[("quote", "TCS")]
    assert kept.body is None, "a merged object is the client's own: encoded for it alone"
    assert [p["trade_id"] for p in kept.obj["prints"]] == [1, 2, 3]
    assert c.wants("quote", "TCS") and not c.wants("depth", "TCS")
    assert (q1["seq"], len(q1["prints"]), len(q2["prints"])) == (1, 1, 2), "the shared objects are left as they were"


def test_a_snapshot_in_a_mailbox_supersedes_the_updates_of_its_symbol_waiting_there() -> None:
    c = WebClient(ws=None)  # type: ignore[arg-type]
    c.post(Item(("quote", "TCS"), {"t": "quote", "seq": 4, "prints": []}))
    c.post(Item(("depth", "INFY"), {"t": "depth", "seq": 2}))
    c.post(Item(("bars", "TCS"), {"t": "bars", "seq": 3, "bars": {}}))
    c.post(Item(("snapshot", "TCS"), {"t": "snapshot", "symbol": "TCS"}))
    c.post(Item(("quote", "TCS"), {"t": "quote", "seq": 5, "prints": []}))
    assert list(c.box) == [("depth", "INFY"), ("snapshot", "TCS"), ("quote", "TCS")]
    assert c.box[("quote", "TCS")].obj["seq"] == 5 and c.conflated == 0


def test_the_tickers_path_after_a_reset_publishes_the_new_days_first_trade() -> None:
    f = MarketFeed([_inst()])
    f.trade(trade(1, "100.00", 4, T0))
    f.take(T0)
    f.reset(["TCS"])
    f.trade(trade(1, "101.00", 2, T0 + S))  # the ticker checked the tseq: a new journal starts at 1
    quote = f.take(T0 + S).messages[0][2]
    assert quote["volume"] == 2 and [p["price"] for p in quote["prints"]] == ["101.00"]


def test_every_time_has_its_exact_text_beside_it() -> None:
    # docs/market-data.md, section 2: JavaScript rounds integers above 2**53; F_ns is the time F as exact text.
    from tests.test_ticker import exact_times

    f = MarketFeed([_inst()])
    at, now = T0 + 1_234_567_891, T0 + 3 * S + 7  # odd nanoseconds: no double holds them
    assert float(at) != at and float(now) != now
    f.apply(level(1, "sell", "100.50", 30))
    f.apply(trade(1, "100.50", 10, at))
    turn = f.take(now)
    assert [k for k, _, _ in turn.messages] == ["quote", "depth", "bars"]
    for _, _, obj in turn.messages:
        assert obj["ts_ns"] == str(now)
        exact_times(msgspec.msgpack.decode(msgspec.msgpack.encode(obj)))  # on the ZeroMQ feed too
    quote, bars = turn.messages[0][2], turn.messages[2][2]["bars"]
    assert (quote["last_ts"], quote["last_ts_ns"]) == (at, str(at))
    assert [(p["ts"], p["ts_ns"]) for p in quote["prints"]] == [(at, str(at))]
    assert [(b["start"], b["start_ns"]) for b in bars["1s"]] == [(T0 + S, str(T0 + S))]
    assert [(b["start"], b["start_ns"]) for b in bars["1m"]] == [(T0, str(T0))]
    assert f.heartbeat(now) == {"t": "heartbeat", "v": 1, "ts": now, "ts_ns": str(now)}
    seen = exact_times(f.snapshot("TCS", now))
    assert seen == {"ts": 4 + 1, "last_ts": 1, "start": 2}  # quote, depth, bars, state, the print; the quote; bars
    before = MarketFeed([_inst()]).snapshot("TCS", now)["quote"]
    assert (before["last_ts"], before["last_ts_ns"]) == (0, "0"), "before the first trade"


def test_a_turns_level_changes_apply_as_one_batch_each_level_set_once_to_its_last_state(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fabric.marketstate import SymbolState

    sets: list[tuple[str, Decimal, int]] = []
    real = SymbolState.set_level

    def counting(self: SymbolState, side: str, price: Decimal, qty: int, count: int) -> None:
        sets.append((side, price, qty))
        real(self, side, price, qty, count)

    monkeypatch.setattr(SymbolState, "set_level", counting)
    f = MarketFeed([_inst()])
    # The ticker's path: one message at a time, its tseq checked by the caller.
    for i, (side, px, q) in enumerate((("sell", "100.50", 30), ("sell", "100.50", 20), ("buy", "99.50", 5),
                                       ("sell", "100.50", 0), ("sell", "100.55", 8), ("sell", "100.50", 12)), 1):
        f.level(level(i, side, px, q))
        assert f.state.last_tseq("TCS", "book") == i, "a change's tseq counts at once (the next gap check reads it)"
    assert f.dirty and sets == []
    depth = next(o for k, _, o in f.take(T0).messages if k == "depth")
    assert (depth["asks"], depth["bids"]) == ([["100.50", 12, 1], ["100.55", 8, 1]], [["99.50", 5, 1]])
    assert sorted(sets) == [("buy", Decimal("99.50"), 5), ("sell", Decimal("100.50"), 12),
                            ("sell", Decimal("100.55"), 8)], "three levels changed: three sets, not six"
    # The batch form, for a caller holding a run of one topic: the same result, one tseq update.
    f.levels([level(7, "buy", "99.50", 0), level(8, "buy", "99.55", 3), level(9, "buy", "99.55", 4)])
    assert f.state.last_tseq("TCS", "book") == 9
    assert f.snapshot("TCS", T0)["depth"]["bids"] == [["99.55", 4, 1]], "a snapshot sees the changes not yet taken"
    # Two texts of one price: the later change is the one left, as message by message.
    f.level(level(10, "sell", "100.5", 1))
    f.level(level(11, "sell", "100.50", 0))
    f.take(T0)
    assert f.snapshot("TCS", T0)["depth"]["asks"] == [["100.55", 8, 1]]


def test_batched_levels_leave_the_books_as_applying_every_message_in_order_does() -> None:
    import random

    rng = random.Random(5)
    batched, one_by_one = MarketFeed([_inst()]), MarketFeed([_inst()])
    for tseq in range(1, 2001):
        m = level(tseq, rng.choice(("buy", "sell")), f"{100 + rng.randrange(6) * 0.05:.2f}", rng.choice((0, 1, 7, 9)),
                  rng.randrange(1, 4))
        batched.level(m)
        assert one_by_one.apply(m)
        if rng.random() < 0.05:  # turns of random length
            assert batched.take(T0) == one_by_one.take(T0)
    assert batched.take(T0) == one_by_one.take(T0)
    st, ref = batched.state.symbols["TCS"], one_by_one.state.symbols["TCS"]
    assert (st.bids, st.asks) == (ref.bids, ref.asks) and batched.state.tseq == one_by_one.state.tseq


# ------------------------------------------------------------------ trading states and the index


def _state(tseq: int, symbol: str | None, state: str, reason: str = "operator", until: int | None = None,
           shard: int = 0) -> Any:
    from fabric.protocol import TradingState

    return TradingState(shard=shard, seq=tseq, tseq=tseq, epoch=0, ts=T0 + tseq, symbol=symbol, state=state,
                        reason=reason, text=f"t{tseq}", until=until)


def _halts_feed() -> MarketFeed:
    from fabric.index import MarketIndex

    insts = [_inst("TCS"), _inst("INFY", "50.00"), _inst("SBIN", "10.00")]
    ix = MarketIndex("IX", Decimal(1000), [("TCS", Decimal(1), Decimal(100)), ("INFY", Decimal(2), Decimal(50))])
    return MarketFeed(insts, index=ix, shards=[("A", ["TCS", "INFY"]), ("B", ["SBIN"])])


def test_a_market_halt_covers_its_shard_over_a_symbols_own_halt_and_publishes_once_a_turn() -> None:
    f = _halts_feed()
    f.trading_state(_state(1, "TCS", "halted"))
    turn = f.take(T0)
    assert kinds(turn.messages) == [("state", "TCS", 1)]
    assert (turn.messages[0][2]["state"], turn.messages[0][2]["scope"], turn.messages[0][2]["text"]) == \
        ("halted", "symbol", "t1")
    f.trading_state(_state(2, None, "halted", "circuit_breaker", until=T0 + 60 * S))
    turn = f.take(T0)
    assert kinds(turn.messages) == [("state", "INFY", 1), ("state", "TCS", 2), ("market", "", 1)]
    market = turn.messages[-1][2]
    assert (market["state"], market["reason"], market["until"], market["shards"], market["index"]) == \
        ("halted", "circuit_breaker", T0 + 60 * S, ["A"], "IX")
    assert f.state.halt_of("SBIN") is None, "shard B trades on"
    f.trading_state(_state(3, None, "trading"))
    turn = f.take(T0)
    objs = {sym: o for k, sym, o in turn.messages if k == "state"}
    assert (objs["TCS"]["state"], objs["TCS"]["scope"]) == ("halted", "symbol"), "its own halt stays"
    assert objs["INFY"]["state"] == "trading" and turn.messages[-1][2]["state"] == "trading"
    assert f.take(T0).messages == [], "nothing changed"


def test_a_snapshots_states_replace_the_shards() -> None:
    f = _halts_feed()
    f.trading_state(_state(1, "TCS", "halted"))
    f.take(T0)
    f.apply_states(0, [_state(5, "INFY", "halted")])
    turn = f.take(T0)
    assert [(sym, o["state"]) for k, sym, o in turn.messages if k == "state"] == [("INFY", "halted"),
                                                                                  ("TCS", "trading")]
    assert f.market_snapshot(T0)["halted"][0]["symbol"] == "INFY"
    assert f.snapshot("INFY", T0)["state"]["seq"] == 1


def test_the_index_moves_with_its_constituents_once_a_turn() -> None:
    f = _halts_feed()
    f.trade(trade(1, "101.00", 1, T0 + 1))
    f.trade(trade(1, "49.00", 1, T0 + 2, symbol="INFY"))
    f.trade(trade(1, "12.00", 1, T0 + 3, symbol="SBIN"))  # not a constituent
    turn = f.take(T0 + S)
    idx = [o for k, _, o in turn.messages if k == "index"]
    # 1000 * (101 + 2 * 49) / (100 + 2 * 50) = 995
    assert len(idx) == 1 and (idx[0]["value"], idx[0]["change_pct"], idx[0]["seq"]) == ("995.00", "-0.50", 1)
    assert {(sym, iv) for sym, iv, _ in turn.bars if sym == "IX"} == {("IX", "1s"), ("IX", "1m")}
    f.trade(trade(2, "12.50", 1, T0 + 4, symbol="SBIN"))
    assert [k for k, _, _ in f.take(T0 + S).messages if k == "index"] == [], "only constituents move it"


def test_the_trading_day_goes_in_the_market_object_and_a_symbols_auction_in_its_state() -> None:
    from fabric.protocol import SessionEvent

    f = MarketFeed([_inst()])
    seq = {"shard": 0, "seq": 1, "tseq": 1, "epoch": 0, "ts": T0}
    assert f.market_snapshot(T0)["market"]["phase"] is None  # no calendar: continuous all day, no phase
    f.session(SessionEvent(**seq, kind="phase", phase="pre_open"))
    f.session(SessionEvent(**seq, kind="indicative", phase="pre_open", symbol="TCS", price="101.00", qty=60,
                           unmatched=10))
    out = {(kind, sym): obj for kind, sym, obj in f.take(T0 + S).messages}
    assert out[("market", "")]["phase"] == "pre_open"
    assert out[("state", "TCS")]["auction"] == {"kind": "indicative", "price": "101.00", "qty": 60, "unmatched": 10}
    assert out[("state", "TCS")]["state"] == "trading"
    f.session(SessionEvent(**seq, kind="phase", phase="pre_open"))  # the same phase again: nothing to publish
    assert not f.dirty
    # The closing phase, then its closing session: the same phase, now taking orders at the closing price.
    f.session(SessionEvent(**seq, kind="phase", phase="closing"))
    f.session(SessionEvent(**seq, kind="phase", phase="closing", entry=True))
    markets = [obj for kind, _, obj in f.take(T0 + 2 * S).messages if kind == "market"]
    assert [(m["phase"], m["entry"]) for m in markets] == [("closing", True)]


def test_the_next_days_change_is_against_the_closing_price() -> None:
    from fabric.protocol import SessionEvent

    f = MarketFeed([_inst()])
    seq = {"shard": 0, "seq": 1, "tseq": 1, "epoch": 0, "ts": T0}
    f.trade(Trade(**seq, symbol="TCS", trade_id=1, price="104.00", qty=1, aggressor="buy", buy_broker="B1",
                  buy_oid="o1", sell_broker="B2", sell_oid="o2"))
    f.session(SessionEvent(**seq, kind="close", phase="closing", symbol="TCS", price="104.00", qty=1))
    quote = next(o for k, _, o in f.take(T0 + S).messages if k == "quote")
    assert (quote["ref_price"], quote["change"]) == ("100.00", "4.00")  # the day's change until the next pre-open
    f.session(SessionEvent(**seq, kind="phase", phase="pre_open"))
    quote = next(o for k, _, o in f.take(T0 + 2 * S).messages if k == "quote")
    assert (quote["ref_price"], quote["change"]) == ("104.00", "0.00")
