"""The compiled book's own mechanics: growth, ladder re-basing, bitmap scans, checksums."""

from __future__ import annotations

import numpy as np

from fabric import kernels
from fabric.book import OrderBook
from fabric.constants import (
    BUY,
    C_NFIELDS,
    EV_ACCEPTED,
    EV_REJECTED,
    EV_TRADE,
    GTC,
    INT,
    IOC,
    LIMIT,
    M_BASE,
    MARKET,
    OP_NEW,
    REJ_LADDER_SPAN,
    SELL,
)


def test_scan_up_and_down_cross_words_find_next_level() -> None:
    bits = np.zeros(4, dtype=INT)
    for row in (3, 63, 64, 200):
        kernels._set_bit(bits, row)  # type: ignore[attr-defined]
    assert kernels.scan_up(bits, 0, 256) == 3
    assert kernels.scan_up(bits, 4, 256) == 63
    assert kernels.scan_up(bits, 65, 256) == 200
    assert kernels.scan_up(bits, 201, 256) == -1
    assert kernels.scan_down(bits, 255) == 200
    assert kernels.scan_down(bits, 199) == 64
    assert kernels.scan_down(bits, 63) == 63
    assert kernels.scan_down(bits, 2) == -1


def test_best_price_after_best_level_empties_moves_to_next_level() -> None:
    book = OrderBook(band_lo=1, band_hi=10_000)
    book.new(0, 0, BUY, LIMIT, GTC, 5_000, 1)
    book.new(1, 0, BUY, LIMIT, GTC, 100, 1)  # far below, several bitmap words away
    book.new(2, 0, SELL, LIMIT, GTC, 9_000, 1)
    assert book.best_bid == 5_000
    book.cancel(0)
    assert book.best_bid == 100
    book.cancel(1)
    assert book.best_bid is None
    book.cancel(2)
    assert book.best_ask is None


def test_slots_grow_when_full_keep_every_order() -> None:
    book = OrderBook(band_lo=1, band_hi=1_000, slots=2)
    for oid in range(500):
        book.new(oid, 0, BUY, LIMIT, GTC, 1 + oid % 400, 1)
    assert book.resting == 500
    assert sum(q for _, q, _ in book.depth(BUY)) == 500


def test_unbanded_ladder_rebases_below_and_above_keeps_queues() -> None:
    book = OrderBook()
    book.new(0, 0, BUY, LIMIT, GTC, 50_000, 3)
    book.new(1, 0, BUY, LIMIT, GTC, 50_000, 4)
    book.new(2, 0, BUY, LIMIT, GTC, 10, 1)  # far below the first ladder
    book.new(3, 0, SELL, LIMIT, GTC, 900_000, 2)  # far above it
    assert book.meta[M_BASE] <= 10
    assert book.queue(BUY, 50_000) == [0, 1]
    assert book.depth(BUY) == [(50_000, 7, 2), (10, 1, 1)]
    assert book.depth(SELL) == [(900_000, 2, 1)]
    n = book.new(4, 1, SELL, MARKET, IOC, 0, 8)
    assert [r[0] for r in book.out[:n].tolist()] == [EV_ACCEPTED, EV_TRADE, EV_TRADE, EV_TRADE]


def test_unbanded_price_too_far_from_book_rejected() -> None:
    book = OrderBook(max_ladder_rows=100)
    book.new(0, 0, BUY, LIMIT, GTC, 1_000, 1)
    book.new(1, 0, SELL, LIMIT, GTC, 1_100, 1)
    row = book.out[0].tolist()
    assert row[0] == EV_REJECTED and row[-1] == REJ_LADDER_SPAN
    book.new(2, 0, SELL, LIMIT, GTC, 1_099, 1)
    assert book.out[0, 0] == EV_ACCEPTED


def test_one_aggressor_sweeping_many_orders_grows_event_buffer() -> None:
    book = OrderBook(band_lo=1, band_hi=100, events=4)
    for oid in range(1_000):
        book.new(oid, 0, SELL, LIMIT, GTC, 50, 1)
    assert book.new(1_000, 1, BUY, MARKET, IOC, 0, 1_000) == 1 + 1_000
    assert book.resting == 0


def test_checksum_equal_books_equal_differs_on_queue_order() -> None:
    a, b, c = OrderBook(), OrderBook(), OrderBook()
    for book, order in ((a, (0, 1)), (b, (0, 1)), (c, (1, 0))):
        for oid in order:
            book.new(oid, 0, BUY, LIMIT, GTC, 100, 5)
    assert a.checksum() == b.checksum()
    assert a.checksum() != c.checksum()


def test_batch_run_resumes_after_growth_same_as_per_command() -> None:
    rng = np.random.default_rng(3)
    n = 3_000
    cmds = np.zeros((n, C_NFIELDS), dtype=INT)
    cmds[:, 0] = OP_NEW
    cmds[:, 1] = np.arange(n)
    cmds[:, 3] = rng.integers(0, 2, n)
    cmds[:, 6] = rng.integers(90, 111, n)
    cmds[:, 7] = rng.integers(1, 10, n)
    one, batch = OrderBook(slots=2, events=4), OrderBook(slots=2, events=4)
    per_cmd = []
    for c in cmds.tolist():
        n = one.new(c[1], c[2], c[3], c[4], c[5], c[6], c[7])  # may re-lay the buffer: read `out` after
        per_cmd.extend(one.out[:n].tolist())
    assert batch.run(cmds).tolist() == per_cmd
    assert batch.checksum() == one.checksum()
