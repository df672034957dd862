"""Liquibook as a peer: the same command stream through the engine a user might pick instead.

Liquibook (https://github.com/enewhuis/liquibook) is a C++ price-time matching
engine; the ``liquibook`` package on PyPI is its SWIG binding.  This module
runs a command array of :func:`perf.workload.generate` through it so that our
engine's throughput can be set against a well-known alternative.

How the binding is used
-----------------------
* The book is ``liquibook.liquibook_book_OrderBook``, the plain
  ``OrderBook<shared_ptr<SimpleOrder>>`` with no depth aggregation.  (The
  binding's ``SimpleOrderBook`` exposes no ``add``/``cancel``/``replace``, and
  ``DepthOrderBook`` feeds its depth tracker from ``SimpleOrder`` fields that
  it never updates itself, so after a price replace it throws inside its
  callbacks and drops fill notifications.)
* Every order is a ``liquibook.SimpleOrder(is_buy, price, qty, stop_price,
  conditions)``; the book keeps a reference and finds a resting order again by
  its object and its ``price()``.  So after a replace the order object itself
  must be told its new price and quantity (``SimpleOrder.replace``, which only
  works on an order marked accepted), as the C++ ``SimpleOrderBook`` would do.
* Fills are counted by a Python ``OrderListener`` subclass (a SWIG director):
  with a listener, every book event (accept, fill, cancel, replace, rejects)
  calls back into Python.

How our commands map
--------------------
==================  ==========================================================
ours                Liquibook
==================  ==========================================================
limit GTC           ``SimpleOrder(is_buy, price, qty)``, no conditions
limit DAY           the same as GTC; Liquibook has no sessions or DAY orders.
                    ``end_of_day`` is emulated by cancelling every DAY order
                    sent so far (closed ones draw a cancel reject).
limit IOC           conditions ``oc_immediate_or_cancel``
limit FOK           conditions ``oc_fill_or_kill`` (all-or-none + IOC)
market IOC / FOK    price 0 (``MARKET_ORDER_PRICE``) with the same conditions
stop (SL, SL-M)     the same order with its ``stop_price``: Liquibook holds
                    it until its own last trade price reaches the trigger
cancel              ``book.cancel(order)``
replace             ``book.replace(order, size_delta, new_price)`` with
                    ``size_delta = new total qty - current total qty`` (it is
                    applied to the open quantity, which is the same thing; a
                    cut below the filled quantity ends the order, as ours).
==================  ==========================================================

What does not map:

* Priority on replace: Liquibook always takes the order out and adds it at the
  back of its level, so a quantity-down replace at the same price loses time
  priority; ours keeps it.
* Validation: Liquibook checks neither lot size, price band, tick nor positive
  price; it rejects only zero quantities.  The generated flow is valid, so
  nothing here depends on it.
* Client order ids and brokers: Liquibook knows orders only by object; an oid
  names the object created for it (a cancel or replace of an oid that was
  never created is skipped and still counted as a command).
* Events: Liquibook reports an accept for every new order and a cancel for an
  unfilled IOC remainder, much like ours, but in its own callback shapes;
  only fills are counted here.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import TypedDict

import liquibook
import numpy as np

from fabric.constants import (
    BUY,
    C_OID,
    DAY,
    MARKET,
    NO_PRICE,
    NO_QTY,
    OP_CANCEL,
    OP_END_OF_DAY,
    OP_NEW,
    OP_REPLACE,
)

# Liquibook order conditions by our time-in-force code (GTC, DAY, IOC, FOK).
_CONDITIONS = (
    liquibook.oc_no_conditions,
    liquibook.oc_no_conditions,
    liquibook.oc_immediate_or_cancel,
    liquibook.oc_fill_or_kill,
    liquibook.oc_no_conditions,  # GTD: rests as GTC (the benchmark's GTD orders never reach their day)
)
# Liquibook has no post-only orders: the stream's post-only orders go in as plain limit orders, so where ours
# are rejected (would_cross) Liquibook's trade, and the fill counts differ by that much more.


class PeerRun(TypedDict):
    """Figures of one run through Liquibook."""

    commands: int  # rows processed
    seconds: float  # wall time of the processing loop
    cmds_per_s: float
    fills: int | None  # fills reported through on_fill, None without a callback


class FillCounter(liquibook.OrderListener):
    """Order listener that counts fills and ignores every other event.

    Liquibook's listener methods are pure virtual in C++, so all of them are
    overridden here (each event then costs one call into Python).
    """

    def __init__(self) -> None:
        super().__init__()
        self.fills = 0

    def on_accept(self, order: liquibook.SimpleOrder) -> None:
        pass

    def on_reject(self, order: liquibook.SimpleOrder, reason: str) -> None:
        pass

    def on_fill(
        self,
        order: liquibook.SimpleOrder,
        matched_order: liquibook.SimpleOrder,
        fill_qty: int,
        fill_price: int,
    ) -> None:
        self.fills += 1

    def on_cancel(self, order: liquibook.SimpleOrder) -> None:
        pass

    def on_cancel_reject(self, order: liquibook.SimpleOrder, reason: str) -> None:
        pass

    def on_replace(self, order: liquibook.SimpleOrder, size_delta: int, new_price: int) -> None:
        pass

    def on_replace_reject(self, order: liquibook.SimpleOrder, reason: str) -> None:
        pass


def _new_order(side: int, otype: int, tif: int, price: int, qty: int, stop: int = 0) -> liquibook.SimpleOrder:
    """Create the Liquibook order for one of our new-order commands, marked accepted."""
    order = liquibook.SimpleOrder(side == BUY, 0 if otype == MARKET else price, qty, stop, _CONDITIONS[tif])
    order.accept()  # SimpleOrder.replace() only updates accepted orders
    return order


def run_liquibook(cmds: np.ndarray, with_callback: bool, *, precreate: bool = False) -> PeerRun:
    """Run a command array through one Liquibook order book and time it.

    Only the loop over the commands is timed.  By default it includes creating
    the ``SimpleOrder`` of each new order, because that is part of handling a
    new order through this binding; with ``precreate`` the order objects are
    built (and marked accepted) before the clock starts, which gives the
    binding's best case.

    Parameters
    ----------
    cmds
        int64 array of shape ``(n, C_NFIELDS)`` in the ``C_*`` layout, as from
        :func:`perf.workload.generate` (one instrument, dense oids).
    with_callback
        Attach a Python order listener that counts fills.  Without it the book
        runs with no listener and no fills are counted.
    precreate
        Create the order objects before timing instead of inside the loop.

    Returns
    -------
    PeerRun
        ``{"commands": n_done, "seconds": t, "cmds_per_s": ..., "fills": ...}``
        where ``fills`` counts ``on_fill`` calls (one per pair of matched
        orders, like our trade events), or is ``None`` without a callback.
    """
    rows = cmds.tolist()
    book = liquibook.liquibook_book_OrderBook()
    listener = FillCounter() if with_callback else None
    if listener is not None:
        book.set_order_listener(listener)

    n_orders = int(cmds[:, C_OID].max(initial=-1)) + 1
    orders: list[liquibook.SimpleOrder | None] = [None] * n_orders
    if precreate:
        for op, oid, _broker, side, otype, tif, price, qty, *_, stop in rows:
            if op == OP_NEW:
                orders[oid] = _new_order(side, otype, tif, price, qty, stop)
    prices = [0] * n_orders  # current price and total quantity of every order,
    totals = [0] * n_orders  # to turn our replaces into Liquibook's deltas
    day_oids: list[int] = []
    cond = _CONDITIONS

    start = time.perf_counter()
    for op, oid, _broker, side, otype, tif, price, qty, *_, stop in rows:
        if op == OP_NEW:
            if precreate:
                order = orders[oid]
            else:  # _new_order(), inlined
                order = liquibook.SimpleOrder(side == BUY, 0 if otype == MARKET else price, qty, stop, cond[tif])
                order.accept()
                orders[oid] = order
            prices[oid] = price
            totals[oid] = qty
            if tif == DAY:
                day_oids.append(oid)
            book.add(order, cond[tif])
        elif op == OP_CANCEL:
            order = orders[oid]
            if order is not None:
                book.cancel(order)
        elif op == OP_REPLACE:
            order = orders[oid]
            if order is not None:
                new_price = prices[oid] if price == NO_PRICE else price
                delta = 0 if qty == NO_QTY else qty - totals[oid]
                book.replace(order, delta, new_price)
                order.replace(delta, new_price)
                prices[oid] = new_price
                totals[oid] += delta
        elif op == OP_END_OF_DAY:
            for day_oid in day_oids:
                book.cancel(orders[day_oid])
            day_oids.clear()
    seconds = time.perf_counter() - start

    return PeerRun(
        commands=len(rows),
        seconds=seconds,
        cmds_per_s=len(rows) / seconds if seconds > 0 else float("inf"),
        fills=listener.fills if listener is not None else None,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Print Liquibook's throughput on generated flow (command line entry point)."""
    from perf.workload import generate

    parser = argparse.ArgumentParser(description="Time Liquibook on generated order flow.")
    parser.add_argument("--n", type=int, default=1_000_000, help="commands to run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best counts")
    args = parser.parse_args(argv)

    small = run_liquibook(generate(10_000, args.seed), with_callback=True)
    print(f"sanity: 10,000 commands -> {small['fills']:,} fills")

    cmds = generate(args.n, args.seed)
    for with_callback in (False, True):
        for precreate in (False, True):
            runs = [run_liquibook(cmds, with_callback, precreate=precreate) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            fills = "" if best["fills"] is None else f", {best['fills']:,} fills"
            print(
                f"liquibook, {'with' if with_callback else 'no'} callback, orders "
                f"{'pre-created' if precreate else 'created in loop'}: "
                f"{best['commands']:,} commands in {best['seconds']:.3f} s = "
                f"{best['cmds_per_s']:,.0f} cmds/s{fills}"
            )


if __name__ == "__main__":
    main()
