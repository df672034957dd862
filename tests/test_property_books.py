"""Property tests: random sessions through the compiled book and the reference book agree exactly.

Each session is checked three ways: the compiled book called per command, the
compiled book's batch loop over the whole session, and the plain-Python
reference book must give the same events, command by command, and end with the
same book (levels and the order of every queue).  Sessions draw brokers and
self-trade prevention modes at random, and no trade of a banded book ever
prints outside its band (the circuit filter).
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fabric.book import OrderBook
from fabric.calendar import PHASES
from fabric.constants import (
    BUY,
    C_NFIELDS,
    DAY,
    E_PRICE,
    E_TYPE,
    EV_TRADE,
    FOK,
    GTC,
    INT,
    IOC,
    LIMIT,
    MARKET,
    NO_PRICE,
    NO_QTY,
    OP_CANCEL,
    OP_END_OF_DAY,
    OP_NEW,
    OP_REPLACE,
    SELL,
    STP_NAMES,
)
from fabric.reference import ReferenceBook

# Book shapes: (lot, band_lo, band_hi, max_ladder_rows, price range the session draws from)
SHAPES = [
    (1, 90, 110, 1 << 24, (85, 115)),  # banded, some prices outside the band
    (5, 95, 105, 1 << 24, (94, 106)),  # lot of 5, tight band
    (1, None, None, 1 << 24, (1, 60)),  # unbanded, grows its ladder both ways
    (1, None, None, 40, (1, 120)),  # unbanded, narrow ladder limit: span rejects
]


@st.composite
def sessions(draw: st.DrawFn) -> tuple[tuple, list[tuple[int, ...]]]:
    shape = draw(st.sampled_from(SHAPES))
    lot, _, _, _, (plo, phi) = shape
    mid = draw(st.integers(plo, phi))
    n = draw(st.integers(1, 120))
    # A session mostly of one mode, so that its effects compound, now and then another: brokers change modes.
    mode = draw(st.integers(0, len(STP_NAMES) - 1))
    stp_modes = st.sampled_from([mode, mode, mode, 0, 1, 2, 3])
    cmds: list[tuple[int, ...]] = []
    next_oid = 0
    sides: list[int] = []  # of each new order: a replace may move it across the spread
    for _ in range(n):
        kind = draw(st.sampled_from(["new"] * 6 + ["cancel", "replace", "replace", "eod"] + ["new_mkt"]))
        if kind.startswith("new") or next_oid == 0:
            side = draw(st.sampled_from([BUY, SELL]))
            market = kind == "new_mkt"
            tif = draw(st.sampled_from([IOC, FOK] if market and draw(st.booleans()) else [GTC, GTC, DAY, IOC, FOK]))
            price = 0 if market else draw(st.integers(max(plo - 2, -1), phi + 2) | st.integers(mid - 3, mid + 3))
            lots = st.sampled_from([lot, 2 * lot, 3 * lot, 7 * lot, lot + 1, 0, -lot])
            qty = draw(lots if lot > 1 else st.integers(-1, 25))
            cmds.append((OP_NEW, next_oid, draw(st.integers(0, 2)), side, MARKET if market else LIMIT, tif, price, qty,
                         draw(stp_modes)))
            next_oid += 1
            sides.append(side)
        elif kind == "cancel":
            cmds.append((OP_CANCEL, draw(st.integers(0, next_oid)), 0, 0, 0, 0, 0, 0, 0))
        elif kind == "replace":
            oid = draw(st.integers(0, next_oid))
            across = st.nothing() if oid == next_oid else (
                st.integers(mid, mid + 6) if sides[oid] == BUY else st.integers(mid - 6, mid))
            price = draw(st.sampled_from([NO_PRICE]) | st.integers(mid - 3, mid + 3) | st.integers(plo - 2, phi + 2)
                         | across)
            qty = draw(st.sampled_from([NO_QTY, 0, lot, 2 * lot, 5 * lot, 9 * lot, lot + 1]))
            cmds.append((OP_REPLACE, oid, 0, 0, 0, 0, price, qty, draw(stp_modes)))
        else:
            cmds.append((OP_END_OF_DAY, 0, 0, 0, 0, 0, 0, 0, 0))
    return shape, cmds


def _apply(book: OrderBook | ReferenceBook, cmd: tuple[int, ...]) -> list[tuple[int, ...]]:
    op, oid, broker, side, otype, tif, price, qty, stp = cmd
    if op == OP_NEW:
        evs = book.new(oid, broker, side, otype, tif, price, qty, stp)
    elif op == OP_CANCEL:
        evs = book.cancel(oid)
    elif op == OP_REPLACE:
        evs = book.replace(oid, price, qty, stp)
    else:
        evs = book.end_of_day()
    rows = book.out[:evs].tolist() if isinstance(evs, int) else evs
    return [tuple(int(x) for x in r) for r in rows]


def _books(shape: tuple) -> tuple[OrderBook, OrderBook, ReferenceBook]:
    lot, lo, hi, rows, _ = shape
    # Tiny initial arrays so that every growth path runs.
    small = OrderBook(lot=lot, band_lo=lo, band_hi=hi, max_ladder_rows=rows, slots=2, events=4)
    batch = OrderBook(lot=lot, band_lo=lo, band_hi=hi, max_ladder_rows=rows, slots=3, events=4)
    ref = ReferenceBook(lot=lot, band_lo=lo, band_hi=hi, max_ladder_rows=rows)
    return small, batch, ref


def _same_book(a: OrderBook, b: ReferenceBook) -> None:
    for side in (BUY, SELL):
        levels = a.depth(side)
        assert levels == b.depth(side)
        for price, _, _ in levels:
            assert a.queue(side, price) == b.queue(side, price)
    # Every price's level, on both sides (empty ones and the other side's included), reads the same.
    prices = {p for side in (BUY, SELL) for p, _, _ in b.depth(side)}
    for price in prices | {p + d for p in prices for d in (-1, 1)} | {1}:
        for side in (BUY, SELL):
            assert a.level(side, price) == b.level(side, price), (side, price)


@given(sessions())
def test_random_session_compiled_and_reference_agree(session: tuple) -> None:
    shape, cmds = session
    compiled, batch, ref = _books(shape)
    all_events: list[tuple[int, ...]] = []
    for cmd in cmds:
        got, want = _apply(compiled, cmd), _apply(ref, cmd)
        assert got == want, f"after command {cmd}"
        all_events.extend(got)
    _same_book(compiled, ref)
    for oid in range(len(cmds) + 1):
        assert compiled.order(oid) == ref.order(oid)

    # The batch loop over the whole session gives the same events and book.
    rows = np.array(cmds, dtype=INT).reshape(-1, C_NFIELDS)
    batch_events = [tuple(int(x) for x in r) for r in batch.run(rows).tolist()]
    assert batch_events == all_events
    assert batch.checksum() == compiled.checksum()


@given(sessions())
def test_random_session_never_trades_outside_the_band(session: tuple) -> None:
    shape, cmds = session
    _, lo, hi, _, _ = shape
    compiled, _, ref = _books(shape)
    for cmd in cmds:
        for book in (compiled, ref):
            for ev in _apply(book, cmd):
                if ev[E_TYPE] == EV_TRADE:
                    assert ev[E_PRICE] > 0
                    if lo is not None:
                        assert lo <= ev[E_PRICE] <= hi, (cmd, ev)


@given(sessions())
def test_random_session_is_deterministic_same_events_twice(session: tuple) -> None:
    shape, cmds = session
    a, b, _ = _books(shape)
    assert [_apply(a, c) for c in cmds] == [_apply(b, c) for c in cmds]
    assert a.checksum() == b.checksum()


@st.composite
def replay_sessions(draw: st.DrawFn) -> list[dict]:
    cmds: list[dict] = [
        {"op": "instrument", "symbol": "TCS", "tick": "0.05", "lot": 1, "ref_price": "1.00", "band_pct": "20"},
        {"op": "instrument", "symbol": "LOT", "tick": "0.10", "lot": 5, "ref_price": "2.00", "band_pct": "10"},
    ]
    if draw(st.booleans()):  # a day with sessions: orders collected in the pre-open, then the call auction
        cmds.append({"op": "session", "phase": "pre_open"})
    used: list[tuple[str, str, str]] = []
    for i in range(draw(st.integers(1, 80))):
        symbol = draw(st.sampled_from(["TCS", "LOT", "FREE"]))
        broker = draw(st.sampled_from(["B1", "B2", "B3"]))
        kind = draw(st.sampled_from(["new", "new", "new", "market", "cancel", "replace", "eod", "session"]))
        if kind == "session":
            cmds.append({"op": "session", "phase": draw(st.sampled_from(PHASES))})
            continue
        if kind in ("cancel", "replace") and used:
            symbol, broker, oid = draw(st.sampled_from(used))
            broker = draw(st.sampled_from([broker, broker, "B9"]))  # sometimes not the owner
            cmd = {"op": kind, "oid": oid, "broker": broker, "symbol": symbol}
            if kind == "replace":
                if draw(st.booleans()):
                    cmd["stp"] = draw(st.sampled_from(STP_NAMES))
                if draw(st.booleans()):
                    prices = ["0.85", "0.90", "0.95", "1.00", "1.05", "1.10", "1.90", "2.00"]
                    cmd["price"] = draw(st.sampled_from(prices))
                if draw(st.booleans()):
                    cmd["qty"] = draw(st.sampled_from([0, 5, 10, 15, 3]))
        elif kind == "eod":
            cmd = {"op": "end_of_day"}
        else:
            oid = draw(st.sampled_from([f"o{i}", f"o{i}", "dup"]))
            cmd = {"op": "new", "oid": oid, "broker": broker, "symbol": symbol,
                   "side": draw(st.sampled_from(["buy", "sell"])), "qty": draw(st.sampled_from([5, 10, 15, 3, 0]))}
            if kind == "market":
                cmd["type"] = "market"
                cmd["tif"] = draw(st.sampled_from(["IOC", "FOK", "DAY"]))
            else:
                cmd["type"] = "limit"
                cmd["price"] = draw(st.sampled_from(["0.80", "0.95", "1.00", "1.05", "1.02", "1.90", "2.00", "2.20"]))
                cmd["tif"] = draw(st.sampled_from(["GTC", "DAY", "IOC", "FOK"]))
            if draw(st.booleans()):
                cmd["stp"] = draw(st.sampled_from(STP_NAMES))
            used.append((symbol, broker, oid))
        cmds.append(cmd)
    return cmds


@given(replay_sessions())
def test_random_replay_engine_compiled_and_reference_same_events(cmds: list[dict]) -> None:
    from fabric.engine import MatchingEngine
    from tools.replay import Replayer

    def reference_book(inst):  # type: ignore[no-untyped-def]
        return ReferenceBook(lot=inst.lot, band_lo=inst.band_lo, band_hi=inst.band_hi)

    compiled, ref = Replayer(), Replayer(MatchingEngine(book_factory=reference_book))
    bands = {"TCS": (Decimal("0.80"), Decimal("1.20")), "LOT": (Decimal("1.80"), Decimal("2.20"))}
    phase = "continuous"
    for cmd in cmds:
        events = compiled.apply(dict(cmd))
        assert events == ref.apply(dict(cmd)), cmd
        if cmd["op"] == "session":
            leaving_pre_open, phase = phase == "pre_open" and cmd["phase"] != "pre_open", cmd["phase"]
        auctions = {ev["symbol"]: ev for ev in events if ev["event"] == "auction"}
        for ev in events:
            if ev["event"] == "trade" and ev["symbol"] in bands:
                lo, hi = bands[ev["symbol"]]
                assert lo <= Decimal(ev["price"]) <= hi, (cmd, ev)  # the circuit filter
            if ev["event"] == "trade" and phase != "continuous":
                # Outside continuous trading only the call auction trades (and what it leaves may meet the book).
                assert cmd["op"] == "session" and leaving_pre_open, (cmd, ev)
            if ev["event"] in ("accepted", "replaced") and phase not in ("pre_open", "continuous"):
                raise AssertionError(f"{ev} outside order entry")
        for sym, auc in auctions.items():  # the auction's trades come first, all at its price, and add up to it
            first = [ev for ev in events[:events.index(auc)] if ev["event"] == "trade" and ev["symbol"] == sym]
            assert sum(ev["qty"] for ev in first) == auc["qty"], (cmd, auc)
            assert all(ev["price"] == auc["price"] for ev in first), (cmd, auc)
    assert compiled.books() == ref.books()


@st.composite
def pre_open_days(draw: st.DrawFn) -> list[dict]:
    # A day with sessions on an empty book: random orders collected in the pre-open (and some cancelled or
    # replaced), the call auction, then continuous trading.
    cmds: list[dict] = [
        {"op": "instrument", "symbol": "TCS", "tick": "0.05", "lot": 1, "ref_price": "1.00", "band_pct": "20"},
        {"op": "session", "phase": "pre_open"},
    ]
    n = draw(st.integers(1, 40))
    for i in range(n):
        broker = draw(st.sampled_from(["B1", "B2", "B3"]))
        roll = draw(st.integers(0, 9))
        if roll == 0 and i:
            cmds.append({"op": "cancel", "oid": f"o{draw(st.integers(0, i - 1))}", "broker": broker, "symbol": "TCS"})
        elif roll == 1 and i:
            cmds.append({"op": "replace", "oid": f"o{draw(st.integers(0, i - 1))}", "broker": broker, "symbol": "TCS",
                         "price": draw(st.sampled_from(["0.90", "0.95", "1.00", "1.05", "1.10"])),
                         "qty": draw(st.integers(1, 20))})
        else:
            cmd = {"op": "new", "oid": f"o{i}", "broker": broker, "symbol": "TCS",
                   "side": draw(st.sampled_from(["buy", "sell"])), "qty": draw(st.integers(1, 20)),
                   "tif": draw(st.sampled_from(["DAY", "GTC", "IOC"]))}
            if roll == 2:
                cmd["type"] = "market"
            else:
                cmd.update(type="limit", price=draw(st.sampled_from(["0.85", "0.90", "0.95", "1.00", "1.05", "1.10",
                                                                     "1.15"])))
            cmds.append(cmd)
    cmds.append({"op": "session", "phase": "auction"})
    cmds.append({"op": "session", "phase": "continuous"})
    for i in range(draw(st.integers(0, 10))):
        cmds.append({"op": "new", "oid": f"c{i}", "broker": "B1", "symbol": "TCS",
                     "side": draw(st.sampled_from(["buy", "sell"])), "type": "limit", "tif": "DAY",
                     "price": draw(st.sampled_from(["0.95", "1.00", "1.05"])), "qty": draw(st.integers(1, 20))})
    return cmds


@given(pre_open_days())
def test_random_pre_open_auction_then_continuous_compiled_and_reference_agree(cmds: list[dict]) -> None:
    from fabric.auction import AuctionLevels
    from fabric.engine import MatchingEngine
    from tools.replay import Replayer

    def reference_book(inst):  # type: ignore[no-untyped-def]
        return ReferenceBook(lot=inst.lot, band_lo=inst.band_lo, band_hi=inst.band_hi)

    compiled, ref = Replayer(), Replayer(MatchingEngine(book_factory=reference_book))
    collected: dict[str, tuple[int, int | None, int]] = {}  # oid -> (side, price ticks or None, qty)
    for cmd in cmds:
        events = compiled.apply(dict(cmd))
        assert events == ref.apply(dict(cmd)), cmd
        if cmd["op"] == "session" and cmd["phase"] == "auction":
            # The auction is the equilibrium of the collection as the reports left it (an independent count).
            levels = AuctionLevels()
            for side, price, qty in collected.values():
                levels.add(side, price, qty)
            eq = levels.equilibrium(20)  # the previous close: 1.00 in ticks of 0.05
            auctions = [e for e in events if e["event"] == "auction"]
            assert len(auctions) == (1 if collected else 0)  # no call for a symbol that collected nothing
            auction = auctions[0] if auctions else {"price": None, "qty": 0}
            if eq is None:
                assert (auction["price"], auction["qty"]) == (None, 0)
            else:
                assert (auction["price"], auction["qty"], auction["unmatched"]) == (
                    f"{eq.price * 5 // 100}.{eq.price * 5 % 100:02d}", eq.tradable, eq.unmatched)
            book = compiled.books()[0]
            if book["bids"] and book["asks"]:  # what is left never crosses
                assert Decimal(book["bids"][0][0]) < Decimal(book["asks"][0][0]), book
            continue
        for ev in events:
            if ev["event"] == "trade":
                assert cmd["op"] != "new" or cmd["oid"].startswith("c"), ev  # nothing trades in the pre-open
            if ev["event"] == "accepted":
                price = None if ev.get("price") is None else int(Decimal(ev["price"]) / Decimal("0.05"))
                collected[ev["oid"]] = (0 if ev["side"] == "buy" else 1, price, ev["qty"])
            elif ev["event"] == "cancelled":
                collected.pop(ev["oid"], None)
            elif ev["event"] == "replaced":
                side, _, _ = collected[ev["oid"]]
                collected[ev["oid"]] = (side, int(Decimal(ev["price"]) / Decimal("0.05")), ev["qty"])
    assert compiled.books() == ref.books()
