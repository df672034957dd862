"""Property tests: random sessions through the compiled book and the reference book agree exactly.

Each session is checked three ways: the compiled book called per command, the
compiled book's batch loop over the whole session, and the plain-Python
reference book must give the same events, command by command, and end with the
same book (levels and the order of every queue).  Sessions draw brokers and
self-trade prevention modes at random, post-only orders, GTD orders and end
of days that expire some of them, icebergs (disclosed quantities, valid or
not), books with and without market protection, stop orders (limit and
market, their triggers replaced, cancelled, expired and cascading); no trade of
a banded book ever prints outside its band (the circuit filter) nor, for a
market order, outside its protection; no stop order trades before a trade
prints through its trigger, and none waits once one has.
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
    E_OID,
    E_OTHER,
    E_PRICE,
    E_SIDE,
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
    INT,
    IOC,
    LIMIT,
    MARKET,
    NO_PRICE,
    NO_QTY,
    OP_CANCEL,
    OP_END_OF_DAY,
    OP_NEW,
    OP_PRINT,
    OP_REPLACE,
    REJ_BAD_DISCLOSED,
    REJ_WOULD_CROSS,
    SELL,
    STP_NAMES,
)
from fabric.reference import ReferenceBook

# Book shapes: (lot, band_lo, band_hi, max_ladder_rows, price range the session draws from, reference price,
# market protection in basis points)
SHAPES = [
    (1, 90, 110, 1 << 24, (85, 115), 0, 0),  # banded, some prices outside the band
    (5, 95, 105, 1 << 24, (94, 106), 0, 0),  # lot of 5, tight band
    (1, None, None, 1 << 24, (1, 60), 0, 0),  # unbanded, grows its ladder both ways
    (1, None, None, 40, (1, 120), 0, 0),  # unbanded, narrow ladder limit: span rejects
    (1, 90, 110, 1 << 24, (85, 115), 100, 500),  # banded, 5 % protection inside the 10 % band
    (1, None, None, 1 << 24, (1, 60), 30, 1000),  # unbanded with 10 % protection: a market order has a limit
    (1, None, None, 1 << 24, (1, 60), 0, 2500),  # protection without a reference price: none until a trade
]
DAYS = (20260105, 20260106, 20260107)  # expire days of GTD orders and the days end_of_day ends


@st.composite
def sessions(draw: st.DrawFn) -> tuple[tuple, list[tuple[int, ...]]]:
    shape = draw(st.sampled_from(SHAPES))
    lot, _, _, _, (plo, phi), _, _ = shape
    mid = draw(st.integers(plo, phi))
    n = draw(st.integers(1, 120))
    # A session mostly of one mode, so that its effects compound, now and then another: brokers change modes.
    mode = draw(st.integers(0, len(STP_NAMES) - 1))
    stp_modes = st.sampled_from([mode, mode, mode, 0, 1, 2, 3])
    cmds: list[tuple[int, ...]] = []
    next_oid = 0
    sides: list[int] = []  # of each new order: a replace may move it across the spread
    for _ in range(n):
        kind = draw(st.sampled_from(["new"] * 6 + ["cancel", "replace", "replace", "eod"] + ["new_mkt"]
                                    + ["new_stop"] * 2 + ["print"]))
        if kind == "print":  # a call auction's print, made outside the book: the last price, stops trigger
            price = draw(st.integers(max(plo, 1), phi) | st.integers(mid - 4, mid + 4).filter(lambda p: p > 0))
            cmds.append((OP_PRINT, 0, 0, 0, 0, 0, price, 0, 0, 0, 0, 0, 0))
            continue
        if kind.startswith("new") or next_oid == 0:
            side = draw(st.sampled_from([BUY, SELL]))
            stop = 0
            if kind == "new_stop":  # a trigger near the middle mostly, on either side of the last price
                stop = draw(st.integers(mid - 4, mid + 4) | st.integers(max(plo - 2, -1), phi + 2))
                kind = draw(st.sampled_from(["new", "new_mkt"]))
            market = kind == "new_mkt"
            tif = draw(st.sampled_from([IOC, FOK] if market and not stop and draw(st.booleans())
                                       else [GTC, GTC, DAY, IOC, FOK, GTD]))
            price = 0 if market else draw(st.integers(max(plo - 2, -1), phi + 2) | st.integers(mid - 3, mid + 3))
            lots = st.sampled_from([lot, 2 * lot, 3 * lot, 7 * lot, lot + 1, 0, -lot])
            qty = draw(lots if lot > 1 else st.integers(-1, 25))
            flags = draw(st.sampled_from([0, 0, 0, FLAG_POST_ONLY] if not stop else [0, 0, 0, 0, 0, FLAG_POST_ONLY]))
            expire = draw(st.sampled_from([*DAYS, 0])) if tif == GTD or draw(st.integers(0, 9)) == 0 else 0
            disclosed = draw(st.sampled_from([0, 0, 0, lot, lot, 2 * lot, lot + 1, -lot] if not stop
                                             else [0, 0, 0, 0, 0, lot]))
            cmds.append((OP_NEW, next_oid, draw(st.integers(0, 2)), side, MARKET if market else LIMIT, tif, price, qty,
                         draw(stp_modes), flags, expire, disclosed, stop))
            next_oid += 1
            sides.append(side)
        elif kind == "cancel":
            cmds.append((OP_CANCEL, draw(st.integers(0, next_oid)), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        elif kind == "replace":
            oid = draw(st.integers(0, next_oid))
            across = st.nothing() if oid == next_oid else (
                st.integers(mid, mid + 6) if sides[oid] == BUY else st.integers(mid - 6, mid))
            price = draw(st.sampled_from([NO_PRICE]) | st.integers(mid - 3, mid + 3) | st.integers(plo - 2, phi + 2)
                         | across)
            qty = draw(st.sampled_from([NO_QTY, 0, lot, 2 * lot, 5 * lot, 9 * lot, lot + 1]))
            stop = draw(st.sampled_from([NO_PRICE, NO_PRICE]) | st.integers(mid - 4, mid + 4))
            cmds.append((OP_REPLACE, oid, 0, 0, 0, 0, price, qty, draw(stp_modes), 0, 0, 0, stop))
        else:
            cmds.append((OP_END_OF_DAY, 0, 0, 0, 0, 0, 0, 0, 0, 0, draw(st.sampled_from([*DAYS, 0])), 0, 0))
    return shape, cmds


def _apply(book: OrderBook | ReferenceBook, cmd: tuple[int, ...]) -> list[tuple[int, ...]]:
    op, oid, broker, side, otype, tif, price, qty, stp, flags, expire, disclosed, stop = (
        *cmd, 0, 0, 0, 0, 0)[:C_NFIELDS]
    if op == OP_NEW:
        evs = book.new(oid, broker, side, otype, tif, price, qty, stp, flags, expire, disclosed, stop)
    elif op == OP_CANCEL:
        evs = book.cancel(oid)
    elif op == OP_REPLACE:
        evs = book.replace(oid, price, qty, stp, NO_PRICE if len(cmd) < C_NFIELDS else stop)
    elif op == OP_PRINT:
        evs = book.print_trade(price)
    else:
        evs = book.end_of_day(expire)
    rows = book.out[:evs].tolist() if isinstance(evs, int) else evs
    return [tuple(int(x) for x in r) for r in rows]


def _books(shape: tuple) -> tuple[OrderBook, OrderBook, ReferenceBook]:
    lot, lo, hi, rows, _, ref_price, bp = shape
    # Tiny initial arrays so that every growth path runs.
    small = OrderBook(lot=lot, band_lo=lo, band_hi=hi, max_ladder_rows=rows, slots=2, events=4, ref=ref_price,
                      protect_bp=bp)
    batch = OrderBook(lot=lot, band_lo=lo, band_hi=hi, max_ladder_rows=rows, slots=3, events=4, ref=ref_price,
                      protect_bp=bp)
    ref = ReferenceBook(lot=lot, band_lo=lo, band_hi=hi, max_ladder_rows=rows, ref=ref_price, protect_bp=bp)
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
        assert a.stop_queue(side) == b.stop_queue(side)
    assert a.stops == b.stops


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
        assert compiled.stop(oid) == ref.stop(oid)

    # The batch loop over the whole session gives the same events and book.
    rows = np.array(cmds, dtype=INT).reshape(-1, C_NFIELDS)
    batch_events = [tuple(int(x) for x in r) for r in batch.run(rows).tolist()]
    assert batch_events == all_events
    assert batch.checksum() == compiled.checksum()


@given(sessions())
def test_random_session_never_trades_outside_the_band(session: tuple) -> None:
    shape, cmds = session
    _, lo, hi, _, _, ref_price, bp = shape
    compiled, _, ref = _books(shape)
    for cmd in cmds:
        for book in (compiled, ref):
            last = book.last or ref_price  # what market protection starts from
            for ev in _apply(book, cmd):
                if ev[E_TYPE] == EV_TRADE:
                    assert ev[E_PRICE] > 0
                    if lo is not None:
                        assert lo <= ev[E_PRICE] <= hi, (cmd, ev)
                    if cmd[4] == MARKET and bp and last:  # market protection: no worse than last -/+ bp
                        worse = ev[E_PRICE] - last if cmd[3] == BUY else last - ev[E_PRICE]
                        assert worse * 10000 <= last * bp, (cmd, ev, last)


@given(sessions())
def test_random_session_no_stop_trades_before_a_print_through_its_trigger(session: tuple) -> None:
    shape, cmds = session
    compiled, _, ref = _books(shape)
    for book in (compiled, ref):
        waiting: dict[int, tuple[int, int]] = {}  # oid -> (side, trigger) of each stop waiting
        for cmd in cmds:
            prints: list[int] = [cmd[6]] if cmd[0] == OP_PRINT else []  # a print made outside the book comes first
            for ev in _apply(book, cmd):
                typ, oid = ev[E_TYPE], ev[E_OID]
                if typ == EV_ACCEPTED and ev[E_OTHER]:
                    waiting[oid] = (ev[E_SIDE], ev[E_OTHER])
                elif typ == EV_TRIGGERED:
                    side, trigger = waiting.pop(oid)
                    assert ev[E_OTHER] == trigger
                    # A trade of this command before it printed at or through its trigger.
                    assert any(p >= trigger if side == BUY else p <= trigger for p in prints), (cmd, ev, prints)
                elif typ == EV_TRADE:
                    assert oid not in waiting and ev[E_OTHER] not in waiting, (cmd, ev)  # a waiting stop never trades
                    prints.append(ev[E_PRICE])
                elif typ in (EV_CANCELLED, EV_EXPIRED):
                    waiting.pop(oid, None)
                elif typ == EV_REPLACED and oid in waiting:
                    waiting[oid] = (waiting[oid][0], ev[8])  # E_OTHER_LEAVES: the new trigger
            # Nothing that printed has reached a stop still waiting.
            for side, trigger in waiting.values():
                assert not any(p >= trigger if side == BUY else p <= trigger for p in prints), (cmd, waiting)
            assert book.stops == len(waiting)


@given(sessions())
def test_random_session_post_only_never_trades_on_entry(session: tuple) -> None:
    shape, cmds = session
    compiled, _, ref = _books(shape)
    for cmd in cmds:
        for book in (compiled, ref):
            asks, bids = book.depth(SELL, 1), book.depth(BUY, 1)
            evs = _apply(book, cmd)
            if cmd[0] == OP_NEW and cmd[9] & FLAG_POST_ONLY:
                assert not any(ev[E_TYPE] == EV_TRADE for ev in evs), (cmd, evs)
                crosses = bool(asks) and cmd[6] >= asks[0][0] if cmd[3] == BUY else bool(bids) and cmd[6] <= bids[0][0]
                # What would cross is rejected (would_cross, unless an earlier check rejected it); what is
                # rejected as would_cross did cross.
                assert not (crosses and evs[0][E_TYPE] == EV_ACCEPTED), (cmd, evs)
                if evs[0][E_TYPE] == EV_REJECTED and evs[0][-1] == REJ_WOULD_CROSS:
                    assert crosses, (cmd, evs)


def test_post_only_rejected_when_it_would_cross_and_rests_otherwise() -> None:
    for book in (OrderBook(), ReferenceBook()):
        _apply(book, (OP_NEW, 0, 0, SELL, LIMIT, GTC, 100, 5, 0, 0, 0))
        evs = _apply(book, (OP_NEW, 1, 1, BUY, LIMIT, GTC, 100, 5, 0, FLAG_POST_ONLY, 0))
        assert [(ev[E_TYPE], ev[-1]) for ev in evs] == [(EV_REJECTED, REJ_WOULD_CROSS)]
        assert book.depth(SELL) == [(100, 5, 1)]  # nothing of it traded
        assert _apply(book, (OP_NEW, 2, 1, BUY, LIMIT, GTC, 99, 5, 0, FLAG_POST_ONLY, 0))[0][E_TYPE] == EV_ACCEPTED
        # It stays post-only: a replace up to the ask is refused and the order keeps its price.
        evs = _apply(book, (OP_REPLACE, 2, 0, 0, 0, 0, 100, NO_QTY, 0, 0, 0))
        assert [(ev[E_TYPE], ev[-1]) for ev in evs] == [(EV_REJECTED, REJ_WOULD_CROSS)]
        assert book.depth(BUY) == [(99, 5, 1)]


def test_gtd_expires_at_the_end_of_its_day_not_before() -> None:
    for book in (OrderBook(), ReferenceBook()):
        _apply(book, (OP_NEW, 0, 0, BUY, LIMIT, GTD, 90, 5, 0, 0, 20260106))
        _apply(book, (OP_NEW, 1, 0, BUY, LIMIT, DAY, 91, 5, 0, 0, 0))
        assert [ev[1] for ev in _apply(book, (OP_END_OF_DAY, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20260105))] == [1]
        assert [ev[1] for ev in _apply(book, (OP_END_OF_DAY, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20260106))] == [0]
        assert book.depth(BUY) == []


def test_iceberg_shows_its_peak_refills_at_the_back_and_trades_through_peaks() -> None:
    for book in (OrderBook(), ReferenceBook()):
        _apply(book, (OP_NEW, 0, 0, SELL, LIMIT, GTC, 100, 10, 0, 0, 0, 3))  # iceberg: 10, peak 3
        _apply(book, (OP_NEW, 1, 0, SELL, LIMIT, GTC, 100, 2))
        assert book.depth(SELL) == [(100, 5, 2)] and book.level(SELL, 100) == (5, 2)  # 3 shown + 2
        evs = _apply(book, (OP_NEW, 2, 1, BUY, LIMIT, IOC, 100, 4))
        # The peak of 3 trades, the next peak goes behind order 1, which trades the last share.
        assert [(ev[E_TYPE], ev[7], ev[4]) for ev in evs[1:]] == [(EV_TRADE, 0, 3), (EV_TRADE, 1, 1)]
        assert book.queue(SELL, 100) == [1, 0] and book.depth(SELL) == [(100, 4, 2)]
        evs = _apply(book, (OP_NEW, 3, 1, BUY, LIMIT, IOC, 100, 9))  # 1 of order 1, then peaks of 3, 3, 1
        assert [ev[4] for ev in evs if ev[E_TYPE] == EV_TRADE] == [1, 3, 3, 1]
        assert book.depth(SELL) == []
        bad = _apply(book, (OP_NEW, 4, 0, SELL, LIMIT, GTC, 100, 100, 0, 0, 0, 9))  # under 10 % of 100
        assert [(ev[E_TYPE], ev[-1]) for ev in bad] == [(EV_REJECTED, REJ_BAD_DISCLOSED)]


def test_market_protection_stops_a_market_order_at_last_plus_pct() -> None:
    for book in (OrderBook(protect_bp=500, ref=100), ReferenceBook(protect_bp=500, ref=100)):
        for oid, px in enumerate((100, 104, 105, 106)):
            _apply(book, (OP_NEW, oid, 0, SELL, LIMIT, GTC, px, 5, 0, 0, 0))
        evs = _apply(book, (OP_NEW, 9, 1, BUY, MARKET, IOC, 0, 20, 0, 0, 0))
        # Limit 105 (100 + 5 %): three asks trade, the rest of the order is cancelled, 106 stays.
        assert [ev[E_PRICE] for ev in evs if ev[E_TYPE] == EV_TRADE] == [100, 104, 105]
        assert book.depth(SELL) == [(106, 5, 1)]
        assert book.last == 105


@given(sessions())
def test_random_session_is_deterministic_same_events_twice(session: tuple) -> None:
    shape, cmds = session
    a, b, _ = _books(shape)
    assert [_apply(a, c) for c in cmds] == [_apply(b, c) for c in cmds]
    assert a.checksum() == b.checksum()


@st.composite
def replay_sessions(draw: st.DrawFn) -> list[dict]:
    cmds: list[dict] = [
        {"op": "instrument", "symbol": "TCS", "tick": "0.05", "lot": 1, "ref_price": "1.00", "band_pct": "20",
         "market_protection_pct": draw(st.sampled_from(["0", "5", "2.5"]))},
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
            phase = draw(st.sampled_from(PHASES))
            cmds.append({"op": "session", "phase": phase, **({"entry": True} if phase == "closing"
                                                             and draw(st.booleans()) else {})})
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
                if draw(st.integers(0, 3)) == 0:
                    cmd["stop_price"] = draw(st.sampled_from(["0.95", "1.00", "1.05", "1.90", "2.10", "0.97"]))
        elif kind == "eod":
            cmd = {"op": "end_of_day", "date": draw(st.sampled_from(["2026-01-05", "2026-01-06"]))}
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
                cmd["tif"] = draw(st.sampled_from(["GTC", "DAY", "IOC", "FOK", "GTD"]))
                if cmd["tif"] == "GTD":
                    cmd["expire_date"] = draw(st.sampled_from(["2026-01-05", "2026-01-06", "2026-02-30"]))
                if draw(st.integers(0, 3)) == 0:
                    cmd["post_only"] = True
                if draw(st.integers(0, 3)) == 0:
                    cmd["disclosed_qty"] = draw(st.sampled_from([1, 5, 10, 2]))
            if draw(st.integers(0, 2)) == 0:  # a stop order (SL, or SL-M when market), mostly one that can wait
                cmd["stop_price"] = draw(st.sampled_from(["0.90", "0.95", "1.00", "1.05", "1.10", "1.90", "2.00",
                                                          "2.10", "0.97", "0"]))
                if cmd["tif"] in ("IOC", "FOK") and draw(st.integers(0, 3)):
                    cmd["tif"] = draw(st.sampled_from(["DAY", "GTC"]))
                cmd.pop("post_only", None) if draw(st.integers(0, 3)) else None
                cmd.pop("disclosed_qty", None) if draw(st.integers(0, 3)) else None
            if draw(st.booleans()):
                cmd["stp"] = draw(st.sampled_from(STP_NAMES))
            used.append((symbol, broker, oid))
        cmds.append(cmd)
    return cmds


@given(replay_sessions())
def test_random_replay_engine_compiled_and_reference_same_events(cmds: list[dict]) -> None:
    from fabric.engine import MatchingEngine, reference_book
    from tools.replay import Replayer

    compiled, ref = Replayer(), Replayer(MatchingEngine(book_factory=reference_book))
    phase, closing_session, closes = "continuous", False, {}
    for cmd in cmds:
        # The bands a command trades under: each day's, around its previous close once there is one.
        insts = compiled.engine.instruments
        bands = {s: (insts[s].to_price(insts[s].band_lo), insts[s].to_price(insts[s].band_hi))  # type: ignore[arg-type]
                 for s in ("TCS", "LOT") if s in insts}
        events = compiled.apply(dict(cmd))
        assert events == ref.apply(dict(cmd)), cmd
        if cmd["op"] == "session":
            leaving_pre_open, phase = phase == "pre_open" and cmd["phase"] != "pre_open", cmd["phase"]
            closing_session = phase == "closing" and cmd.get("entry", False)
        closes.update((ev["symbol"], ev["price"]) for ev in events if ev["event"] == "close")
        auctions = {ev["symbol"]: ev for ev in events if ev["event"] == "auction"}
        for ev in events:
            if ev["event"] == "trade" and ev["symbol"] in bands:
                lo, hi = bands[ev["symbol"]]
                assert Decimal(lo) <= Decimal(ev["price"]) <= Decimal(hi), (cmd, ev)  # the circuit filter
            if ev["event"] == "trade" and closing_session and cmd["op"] != "session":
                assert ev["price"] == closes[ev["symbol"]], (cmd, ev)  # the closing session: at the close only
            elif ev["event"] == "trade" and phase != "continuous":
                # Outside continuous trading only the call auction trades (and what it leaves may meet the book).
                assert cmd["op"] == "session" and leaving_pre_open, (cmd, ev)
            if ev["event"] in ("accepted", "replaced") and phase not in ("pre_open", "continuous") \
                    and not closing_session:
                raise AssertionError(f"{ev} outside order entry")
        for sym, auc in auctions.items():  # the auction's trades come first, all at its price, and add up to it
            first = [ev for ev in events[:events.index(auc)] if ev["event"] == "trade" and ev["symbol"] == sym]
            assert sum(ev["qty"] for ev in first) == auc["qty"], (cmd, auc)
            assert all(ev["price"] == auc["price"] for ev in first), (cmd, auc)
    assert compiled.books() == ref.books()


@st.composite
def stop_sessions(draw: st.DrawFn) -> list[dict]:
    # Continuous trading in one symbol, stop orders among the others: the engine's reports of triggers.
    cmds: list[dict] = [{"op": "instrument", "symbol": "TCS", "tick": "0.05", "lot": 1, "ref_price": "1.00",
                         "band_pct": "20", "market_protection_pct": draw(st.sampled_from(["0", "5"]))}]
    prices = ["0.90", "0.95", "1.00", "1.05", "1.10"]
    for i in range(draw(st.integers(1, 60))):
        broker = draw(st.sampled_from(["B1", "B2", "B3"]))
        kind = draw(st.sampled_from(["new", "new", "new", "stop", "stop", "cancel", "replace", "eod"]))
        if kind in ("cancel", "replace") and i:
            cmd = {"op": kind, "oid": f"o{draw(st.integers(0, i - 1))}", "broker": broker, "symbol": "TCS"}
            if kind == "replace":
                for field, values in (("price", prices), ("qty", [1, 5, 10]), ("stop_price", prices)):
                    if draw(st.booleans()):
                        cmd[field] = draw(st.sampled_from(values))
                if len(cmd) == 4:
                    cmd["qty"] = 5
        elif kind == "eod":
            cmd = {"op": "end_of_day", "date": "2026-01-05"}
        else:
            market = draw(st.integers(0, 3)) == 0
            cmd = {"op": "new", "oid": f"o{i}", "broker": broker, "symbol": "TCS",
                   "side": draw(st.sampled_from(["buy", "sell"])), "qty": draw(st.sampled_from([1, 5, 10])),
                   "type": "market" if market else "limit"}
            if not market:
                cmd["price"] = draw(st.sampled_from(prices))
            if kind == "stop":
                cmd["stop_price"] = draw(st.sampled_from(prices))
                cmd["tif"] = draw(st.sampled_from(["DAY", "GTC", "GTC", "IOC"]))
            else:
                cmd["tif"] = draw(st.sampled_from(["IOC", "FOK"] if market else ["GTC", "DAY", "IOC"]))
            if draw(st.integers(0, 4)) == 0:
                cmd["stp"] = draw(st.sampled_from(STP_NAMES))
        cmds.append(cmd)
    return cmds


@given(stop_sessions())
def test_random_stop_session_engine_compiled_and_reference_same_reports(cmds: list[dict]) -> None:
    from fabric.engine import MatchingEngine, reference_book
    from tools.replay import Replayer

    compiled, ref = Replayer(), Replayer(MatchingEngine(book_factory=reference_book))
    waiting: set[str] = set()
    for cmd in cmds:
        events = compiled.apply(dict(cmd))
        assert events == ref.apply(dict(cmd)), cmd
        for ev in events:
            if ev["event"] == "accepted" and "stop_price" in ev:
                waiting.add(ev["oid"])
            elif ev["event"] == "triggered":
                waiting.remove(ev["oid"])  # once, and only a waiting stop
            elif ev["event"] == "trade":
                assert ev["buy_oid"] not in waiting and ev["sell_oid"] not in waiting, ev
            elif ev["event"] in ("cancelled", "expired"):
                waiting.discard(ev["oid"])
    assert compiled.books() == ref.books()
    for oid in waiting:  # a stop still waiting says so in its status
        owner = next(c["broker"] for c in cmds if c["op"] == "new" and c["oid"] == oid)
        status = compiled.engine.order_status("TCS", owner, oid)
        assert status is not None and status.state == "new" and not status.triggered and status.stop_price, status


@st.composite
def pre_open_days(draw: st.DrawFn) -> list[dict]:
    # A day with sessions: sometimes a day of continuous trading before it, whose GTC orders join the call (its
    # close moves the band); random orders collected in the pre-open (some cancelled or replaced, some with a
    # self-trade prevention mode), the call auction, then continuous trading.
    cmds: list[dict] = [
        {"op": "instrument", "symbol": "TCS", "tick": "0.05", "lot": 1, "ref_price": "1.00", "band_pct": "20"},
    ]
    prices = ["0.85", "0.90", "0.95", "1.00", "1.05", "1.10", "1.15"]
    n = draw(st.integers(1, 40))
    if draw(st.booleans()):
        cmds.append({"op": "session", "phase": "continuous"})
        for i in range(draw(st.integers(1, 12))):
            cmds.append({"op": "new", "oid": f"d{i}", "broker": draw(st.sampled_from(["B1", "B2", "B3"])),
                         "symbol": "TCS", "side": draw(st.sampled_from(["buy", "sell"])), "type": "limit",
                         "price": draw(st.sampled_from(prices)), "qty": draw(st.integers(1, 20)),
                         "tif": draw(st.sampled_from(["DAY", "GTC", "GTC"]))})
        cmds += [{"op": "session", "phase": "closing"}, {"op": "session", "phase": "closed"}]
    cmds.append({"op": "session", "phase": "pre_open"})
    for i in range(n):
        broker = draw(st.sampled_from(["B1", "B2", "B3"]))
        roll = draw(st.integers(0, 9))
        if roll == 0 and i:
            pick = draw(st.integers(0, i - 1))
            oid = f"o{pick}" if draw(st.integers(0, 3)) else f"d{pick}"
            cmds.append({"op": "cancel", "oid": oid, "broker": broker, "symbol": "TCS"})
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
                cmd.update(type="limit", price=draw(st.sampled_from(prices)))
            if draw(st.integers(0, 3)) == 0:
                cmd["stp"] = draw(st.sampled_from(STP_NAMES))
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

    def ticks(price: str) -> int:
        return int(Decimal(price) / Decimal("0.05"))

    compiled, ref = Replayer(), Replayer(MatchingEngine(book_factory=reference_book))
    # Every open order as the reports left it (an independent count): oid -> (side, price ticks or None, open qty).
    open_: dict[str, tuple[int, int | None, int]] = {}
    prev_close, phase = 20, "closed"  # the previous close: 1.00 in ticks of 0.05, until a day closes
    for cmd in cmds:
        events = compiled.apply(dict(cmd))
        assert events == ref.apply(dict(cmd)), cmd
        if cmd["op"] == "session" and cmd["phase"] == "auction":
            # Self-trade prevention's cancels come first; the auction is the equilibrium of the orders left: the
            # pre-open's and the book's, which joined it.
            took_part = bool(open_)
            for e in events:
                if e["event"] == "auction":
                    break
                if e["event"] == "cancelled":
                    assert e["reason"] == "self_trade", e
                    open_.pop(e["oid"])
            levels = AuctionLevels()
            for side, price, qty in open_.values():
                levels.add(side, price, qty)
            eq = levels.equilibrium(prev_close)
            auctions = [e for e in events if e["event"] == "auction"]
            assert len(auctions) == (1 if took_part else 0)  # no call for a symbol without orders
            auction = auctions[0] if auctions else {"price": None, "qty": 0}
            if eq is None:
                assert (auction["price"], auction["qty"]) == (None, 0)
            else:
                assert (ticks(auction["price"]), auction["qty"], auction["unmatched"]) == (
                    eq.price, eq.tradable, eq.unmatched)
            book = compiled.books()[0]
            if book["bids"] and book["asks"]:  # what is left never crosses
                assert Decimal(book["bids"][0][0]) < Decimal(book["asks"][0][0]), book
            phase = "auction"
            continue
        if cmd["op"] == "session":
            phase = cmd["phase"]
        for ev in events:
            if ev["event"] == "trade":
                assert phase == "continuous", ev  # nothing trades in the pre-open
                for oid in (ev["buy_oid"], ev["sell_oid"]):
                    side, price, qty = open_[oid]
                    if qty == ev["qty"]:
                        del open_[oid]
                    else:
                        open_[oid] = (side, price, qty - ev["qty"])
            elif ev["event"] == "accepted":
                price = None if ev.get("price") is None else ticks(ev["price"])
                open_[ev["oid"]] = (0 if ev["side"] == "buy" else 1, price, ev["qty"])
            elif ev["event"] in ("cancelled", "expired"):
                open_.pop(ev["oid"], None)
            elif ev["event"] == "replaced":
                side, _, _ = open_[ev["oid"]]
                open_[ev["oid"]] = (side, ticks(ev["price"]), ev["leaves_qty"])
            elif ev["event"] == "close":
                prev_close = ticks(ev["price"])
    assert compiled.books() == ref.books()
