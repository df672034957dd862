"""The order book of record: execution reports applied to order rows, as the persistence node does."""

from __future__ import annotations

from decimal import Decimal

from fabric.protocol import ExAccepted, ExCancelled, ExExpired, ExFill, ExRejected, ExReplaced, Trade
from fabric.records import OrderBook, trading_day

DAY1 = 1_780_000_000_000_000_000  # 2026-05-29 01:56 in Asia/Kolkata
DAY2 = DAY1 + 86_400 * 10**9


def _acc(seq: int, oid: str = "o1", qty: int = 10, ts: int = DAY1) -> ExAccepted:
    return ExAccepted(shard=0, seq=seq, tseq=seq, epoch=0, ts=ts, broker="B1", oid=oid, symbol="TCS", side="buy",
                      type="limit", price="3500.05", qty=qty, tif="GTC")


def _fill(seq: int, price: str, q: int, cum: int, leaves: int, oid: str = "o1", ts: int = DAY1) -> ExFill:
    return ExFill(shard=0, seq=seq, tseq=seq, epoch=0, ts=ts, broker="B1", oid=oid, symbol="TCS", side="buy",
                  price=price, last_qty=q, cum_qty=cum, leaves_qty=leaves, trade_id=seq, aggressor=False)


def _rej(seq: int, reason: str, oid: str = "o1") -> ExRejected:
    return ExRejected(shard=0, seq=seq, tseq=seq, epoch=0, ts=DAY1, broker="B1", op="new", oid=oid, symbol="TCS",
                      reason=reason, text="t")


def test_an_orders_life_gives_its_state_quantities_and_exact_average_price() -> None:
    book = OrderBook()
    book.report(_acc(1))
    book.report(_fill(2, "3500.05", 3, 3, 7))
    book.report(_fill(3, "3500.10", 1, 4, 6))
    batch = book.take()
    (row,) = batch.orders
    assert (row.state, row.cum_qty, row.leaves_qty, row.last_seq) == ("partially_filled", 4, 6, 3)
    assert Decimal(row.notional) == Decimal("3500.05") * 3 + Decimal("3500.10")
    assert row.avg_px == "3500.0625"
    assert [e.kind for e in batch.events] == ["accepted", "fill", "fill"]
    assert book.rows, "an open order stays in memory for its next report"
    book.report(ExCancelled(shard=0, seq=4, tseq=4, epoch=0, ts=DAY1, broker="B1", oid="o1", symbol="TCS", qty=10,
                            cum_qty=4, reason="requested"))
    (row,) = book.take().orders
    assert (row.state, row.leaves_qty, row.reason) == ("cancelled", 0, "requested")
    assert not book.rows, "a finished order leaves memory"


def test_a_report_the_row_holds_already_changes_nothing() -> None:
    book = OrderBook()
    book.report(_acc(1))
    book.report(_fill(2, "3500.05", 3, 3, 7))
    first = book.take().orders[0]
    book.report(_fill(2, "3500.05", 3, 3, 7))  # replayed after a restart
    batch = book.take()
    assert batch.orders == [] and len(batch.events) == 1, "the event is kept (its key makes it once) but no row moves"
    assert book.rows[("B1", "o1")] == first


def test_replace_expiry_and_rejects() -> None:
    book = OrderBook()
    book.report(_acc(1))
    book.report(_fill(2, "3500.05", 4, 4, 6))
    book.report(ExReplaced(shard=0, seq=3, tseq=3, epoch=0, ts=DAY1, broker="B1", oid="o1", symbol="TCS",
                           price="3500.00", qty=4, leaves_qty=0, cum_qty=4, kept_priority=True))
    assert book.take().orders[0].state == "filled"
    book.report(_acc(4, oid="o2"))
    book.report(ExExpired(shard=0, seq=5, tseq=5, epoch=0, ts=DAY1, broker="B1", oid="o2", symbol="TCS", qty=10,
                          cum_qty=0))
    assert book.take().orders[0].state == "expired"
    book.report(_rej(6, "price_out_of_band", oid="o3"))
    (row,) = book.take().orders
    assert (row.state, row.reason) == ("rejected", "price_out_of_band")


def test_a_new_refused_for_an_id_in_use_leaves_that_order_alone() -> None:
    book = OrderBook()
    book.report(_acc(1))
    book.report(_rej(2, "duplicate_client_order_id"))
    batch = book.take()
    assert [r.state for r in batch.orders] == ["new"] and [e.kind for e in batch.events] == ["accepted", "rejected"]
    book.report(_fill(3, "3500.05", 10, 10, 0))
    book.take()
    book.report(_rej(4, "duplicate_client_order_id"))  # the order finished and left memory: still left alone
    assert book.take().orders == []


def test_an_order_belongs_to_the_day_it_was_entered() -> None:
    book = OrderBook()
    book.report(_acc(1))
    book.report(_fill(2, "3500.05", 10, 10, 0, ts=DAY2))
    batch = book.take()
    assert {r.day for r in batch.orders} | {e.day for e in batch.events} == {trading_day(DAY1)}
    book.trade(Trade(shard=0, seq=3, tseq=1, epoch=0, ts=DAY2, symbol="TCS", trade_id=1, price="3500.05", qty=1,
                     aggressor="buy", buy_broker="B1", buy_oid="x", sell_broker="B2", sell_oid="y"))
    assert book.take().trades[0].day == trading_day(DAY2) != trading_day(DAY1)


def test_a_report_for_an_order_never_seen_is_counted_and_kept_as_an_event() -> None:
    book = OrderBook()
    book.report(_fill(7, "3500.05", 1, 1, 9))
    batch = book.take()
    assert book.missing == 1 and batch.orders == [] and len(batch.events) == 1


def test_trading_day_is_the_exchanges() -> None:
    ts = DAY1  # 2026-05-28 20:26 UTC, past midnight in Asia/Kolkata
    assert trading_day(ts) == "2026-05-29" and trading_day(ts, "UTC") == "2026-05-28"


def test_a_stop_orders_trigger_is_kept_as_an_event_and_leaves_its_row_open() -> None:
    from fabric.protocol import ExTriggered

    book = OrderBook()
    book.report(_acc(1))
    book.report(ExTriggered(shard=0, seq=2, tseq=2, epoch=0, ts=DAY1, broker="B1", oid="o1", symbol="TCS",
                            side="buy", type="limit", price="3500.05", qty=10, stop_price="3500.00"))
    book.report(_fill(3, "3500.05", 4, 4, 6))
    batch = book.take()
    (row,) = batch.orders
    assert [e.kind for e in batch.events] == ["accepted", "triggered", "fill"]
    assert (row.state, row.cum_qty, row.leaves_qty, row.last_seq) == ("partially_filled", 4, 6, 3)
