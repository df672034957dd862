"""The order book's compiled kernels: plain ``@njit(cache=True)`` functions over arrays.

State of one book (all ``int64``; layouts in :mod:`fabric.constants`):

``ords``  (slots, O_NFIELDS)  one row per order slot; FIFO links per price level; free list
``lvl``   (rows, L_NFIELDS)   the price ladder, row = price - meta[M_BASE]
``bits``  (words,)            one bit per ladder row: the level holds orders
``meta``  (M_NFIELDS,)        best bid/ask, band, lot, counters
``o2s``   (max oid + 1,)      order id -> slot, -1 when not resting
``out``   (events, E_NFIELDS) events written by the last call

Every operation is O(1) except finding the next best price after the best level
empties, which scans the bitmap 64 levels per word.  A kernel never half-applies
a command: it checks capacity first, and when an array is too small it records
why in ``meta[M_NEED]`` and returns ``-1`` without touching the book, so the
caller can grow the array and call again.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fabric.constants import (
    BUY,
    C_BROKER,
    C_DISCLOSED,
    C_EXPIRE,
    C_FLAGS,
    C_OID,
    C_OP,
    C_PRICE,
    C_QTY,
    C_SIDE,
    C_STOP,
    C_STP,
    C_TIF,
    C_TYPE,
    CXL_FOK_UNFILLABLE,
    CXL_IOC_REMAINDER,
    CXL_REQUESTED,
    CXL_SELF_TRADE,
    DAY,
    E_CUM,
    E_LEAVES,
    E_NFIELDS,
    E_OID,
    E_OTHER,
    E_OTHER_CUM,
    E_OTHER_LEAVES,
    E_PRICE,
    E_QTY,
    E_REASON,
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
    GTD,
    H_BITS,
    H_EVENTS,
    H_LVL,
    H_META,
    H_O2S,
    H_OIDS,
    H_ORDS,
    H_OUT,
    H_ROWS,
    H_SLOTS,
    H_WORDS,
    IOC,
    L_COUNT,
    L_HEAD,
    L_HIDDEN,
    L_NFIELDS,
    L_QTY,
    L_TAIL,
    M_BAND_HI,
    M_BAND_LO,
    M_BANDED,
    M_BASE,
    M_BEST_ASK,
    M_BEST_BID,
    M_FREE_HEAD,
    M_LAST,
    M_LOT,
    M_MAX_ROWS,
    M_NEED,
    M_NEED_PRICE,
    M_NEV,
    M_NFIELDS,
    M_NLEVELS,
    M_PROTECT_BP,
    M_REF,
    M_RESTING,
    M_SEEN_HI,
    M_SEEN_LO,
    M_STOP_BUY,
    M_STOP_SELL,
    M_STOPS,
    M_TRADES,
    M_TRANCHES,
    MARKET,
    NEED_EVENTS,
    NEED_LADDER,
    NEED_NOTHING,
    NEED_OIDS,
    NEED_SLOTS,
    NO_ASK,
    NO_BID,
    NO_PRICE,
    NO_QTY,
    O_BROKER,
    O_CUM,
    O_DISCLOSED,
    O_EXPIRE,
    O_FLAGS,
    O_LEAVES,
    O_NEXT,
    O_NFIELDS,
    O_OID,
    O_PREV,
    O_PRICE,
    O_QTY,
    O_SHOWN,
    O_SIDE,
    O_STATE,
    O_STOP,
    O_STP,
    O_TIF,
    O_TYPE,
    OP_CANCEL,
    OP_END_OF_DAY,
    OP_NEW,
    OP_PRINT,
    OP_REPLACE,
    REJ_BAD_DISCLOSED,
    REJ_BAD_STOP,
    REJ_BAD_TIF,
    REJ_LADDER_SPAN,
    REJ_NOT_STOP,
    REJ_ORDER_CLOSED,
    REJ_PRICE_NOT_POSITIVE,
    REJ_PRICE_OUT_OF_BAND,
    REJ_QTY_NOT_LOT_MULTIPLE,
    REJ_STOP_LIMIT,
    REJ_STOP_WOULD_TRIGGER,
    REJ_WOULD_CROSS,
    SELL,
    ST_FREE,
    ST_RESTING,
    ST_STOP,
    STP_CANCEL_INCOMING,
    STP_CANCEL_RESTING,
    STP_OFF,
)

# --------------------------------------------------------------------------
# Bitmap of non-empty ladder rows
# --------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _msb(w: int) -> int:
    # Index of the highest set bit of a non-zero int64 (bit 63 is the sign bit).
    if w < 0:
        return 63
    n = 0
    if w >> 32:
        w >>= 32
        n += 32
    if w >> 16:
        w >>= 16
        n += 16
    if w >> 8:
        w >>= 8
        n += 8
    if w >> 4:
        w >>= 4
        n += 4
    if w >> 2:
        w >>= 2
        n += 2
    if w >> 1:
        n += 1
    return n


@njit(cache=True, inline="always")
def _set_bit(bits: np.ndarray, row: int) -> None:
    bits[row >> 6] |= np.int64(1) << (row & 63)


@njit(cache=True, inline="always")
def _clear_bit(bits: np.ndarray, row: int) -> None:
    bits[row >> 6] &= ~(np.int64(1) << (row & 63))


@njit(cache=True)
def scan_down(bits: np.ndarray, row: int) -> int:
    """Return the highest non-empty ladder row ``<= row``, or -1."""
    if row < 0:
        return -1
    word = row >> 6
    b = row & 63
    mask = (np.int64(2) << b) - 1  # bits 0..b; wraps to all ones for b == 63
    w = bits[word] & mask
    while w == 0:
        word -= 1
        if word < 0:
            return -1
        w = bits[word]
    return (word << 6) + _msb(w)


@njit(cache=True)
def scan_up(bits: np.ndarray, row: int, nrows: int) -> int:
    """Return the lowest non-empty ladder row ``>= row``, or -1."""
    if row >= nrows:
        return -1
    if row < 0:
        row = 0
    word = row >> 6
    nwords = bits.shape[0]
    mask = -(np.int64(1) << (row & 63))  # bits b..63
    w = bits[word] & mask
    while w == 0:
        word += 1
        if word >= nwords:
            return -1
        w = bits[word]
    return (word << 6) + _msb(w & -w)


# --------------------------------------------------------------------------
# Levels and slots
# --------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _emit(
    out: np.ndarray,
    n: int,
    typ: int,
    oid: int,
    side: int,
    price: int,
    qty: int,
    leaves: int,
    cum: int,
    other: int,
    other_leaves: int,
    other_cum: int,
    reason: int,
) -> int:
    out[n, E_TYPE] = typ
    out[n, E_OID] = oid
    out[n, E_SIDE] = side
    out[n, E_PRICE] = price
    out[n, E_QTY] = qty
    out[n, E_LEAVES] = leaves
    out[n, E_CUM] = cum
    out[n, E_OTHER] = other
    out[n, E_OTHER_LEAVES] = other_leaves
    out[n, E_OTHER_CUM] = other_cum
    out[n, E_REASON] = reason
    return n + 1


@njit(cache=True, inline="always")
def _hide(ords: np.ndarray, lvl: np.ndarray, meta: np.ndarray, slot: int, row: int, sign: int) -> None:
    # Count an iceberg's hidden quantity (leaves - shown) in (sign 1) or out of (sign -1) its level's hidden
    # quantity and the book's hidden peaks (the event bound).
    hidden = ords[slot, O_LEAVES] - ords[slot, O_SHOWN]
    d = ords[slot, O_DISCLOSED]
    lvl[row, L_HIDDEN] += sign * hidden
    meta[M_TRANCHES] += sign * ((hidden + d - 1) // d)


@njit(cache=True, inline="always")
def _to_back(ords: np.ndarray, lvl: np.ndarray, row: int, slot: int) -> None:
    # Move a resting slot to the back of its own level (an iceberg's refill), links only.
    tail = lvl[row, L_TAIL]
    if tail == slot:
        return
    prev = ords[slot, O_PREV]
    nxt = ords[slot, O_NEXT]
    if prev >= 0:
        ords[prev, O_NEXT] = nxt
    else:
        lvl[row, L_HEAD] = nxt
    ords[nxt, O_PREV] = prev
    ords[tail, O_NEXT] = slot
    ords[slot, O_PREV] = tail
    ords[slot, O_NEXT] = -1
    lvl[row, L_TAIL] = slot


@njit(cache=True, inline="always")
def _push_back(ords: np.ndarray, lvl: np.ndarray, bits: np.ndarray, meta: np.ndarray, slot: int) -> None:
    # Append a slot (fields already set) at the back of its price level.
    price = ords[slot, O_PRICE]
    row = price - meta[M_BASE]
    tail = lvl[row, L_TAIL]
    ords[slot, O_NEXT] = -1
    ords[slot, O_PREV] = tail
    if lvl[row, L_COUNT] == 0:
        lvl[row, L_HEAD] = slot
        _set_bit(bits, row)
    else:
        ords[tail, O_NEXT] = slot
    lvl[row, L_TAIL] = slot
    lvl[row, L_COUNT] += 1
    lvl[row, L_QTY] += ords[slot, O_LEAVES]
    if ords[slot, O_DISCLOSED] != 0:
        _hide(ords, lvl, meta, slot, row, 1)
    if ords[slot, O_SIDE] == BUY:
        if price > meta[M_BEST_BID]:
            meta[M_BEST_BID] = price
    elif price < meta[M_BEST_ASK]:
        meta[M_BEST_ASK] = price


@njit(cache=True, inline="always")
def _unlink(ords: np.ndarray, lvl: np.ndarray, bits: np.ndarray, meta: np.ndarray, slot: int) -> None:
    # Take a slot out of its level's FIFO; the slot itself stays allocated.
    price = ords[slot, O_PRICE]
    base = meta[M_BASE]
    row = price - base
    prev = ords[slot, O_PREV]
    nxt = ords[slot, O_NEXT]
    if prev >= 0:
        ords[prev, O_NEXT] = nxt
    else:
        lvl[row, L_HEAD] = nxt
    if nxt >= 0:
        ords[nxt, O_PREV] = prev
    else:
        lvl[row, L_TAIL] = prev
    lvl[row, L_QTY] -= ords[slot, O_LEAVES]
    if ords[slot, O_DISCLOSED] != 0:
        _hide(ords, lvl, meta, slot, row, -1)
    lvl[row, L_COUNT] -= 1
    if lvl[row, L_COUNT] == 0:
        lvl[row, L_HEAD] = -1
        lvl[row, L_TAIL] = -1
        _clear_bit(bits, row)
        if ords[slot, O_SIDE] == BUY:
            if meta[M_BEST_BID] == price:
                r = scan_down(bits, row - 1)
                meta[M_BEST_BID] = NO_BID if r < 0 else r + base
        elif meta[M_BEST_ASK] == price:
            r = scan_up(bits, row + 1, meta[M_NLEVELS])
            meta[M_BEST_ASK] = NO_ASK if r < 0 else r + base


@njit(cache=True, inline="always")
def _free(ords: np.ndarray, meta: np.ndarray, o2s: np.ndarray, slot: int) -> None:
    o2s[ords[slot, O_OID]] = -1
    ords[slot, O_STATE] = ST_FREE
    ords[slot, O_NEXT] = meta[M_FREE_HEAD]
    meta[M_FREE_HEAD] = slot
    meta[M_RESTING] -= 1


@njit(cache=True, inline="always")
def _take_slot(
    ords: np.ndarray,
    meta: np.ndarray,
    o2s: np.ndarray,
    oid: int,
    broker: int,
    side: int,
    tif: int,
    price: int,
    qty: int,
    leaves: int,
    cum: int,
    state: int,
    flags: int,
    expire: int,
    disclosed: int,
) -> int:
    # Give an order a free slot (guaranteed by the caller) with its fields set; return the slot.
    slot = meta[M_FREE_HEAD]
    meta[M_FREE_HEAD] = ords[slot, O_NEXT]
    meta[M_RESTING] += 1
    ords[slot, O_OID] = oid
    ords[slot, O_BROKER] = broker
    ords[slot, O_SIDE] = side
    ords[slot, O_TIF] = tif
    ords[slot, O_PRICE] = price
    ords[slot, O_QTY] = qty
    ords[slot, O_LEAVES] = leaves
    ords[slot, O_CUM] = cum
    ords[slot, O_STATE] = state
    ords[slot, O_FLAGS] = flags
    ords[slot, O_EXPIRE] = expire
    ords[slot, O_DISCLOSED] = disclosed
    ords[slot, O_SHOWN] = (disclosed if disclosed < leaves else leaves) if disclosed != 0 else 0
    o2s[oid] = slot
    return slot


@njit(cache=True, inline="always")
def _rest(
    ords: np.ndarray,
    lvl: np.ndarray,
    bits: np.ndarray,
    meta: np.ndarray,
    o2s: np.ndarray,
    oid: int,
    broker: int,
    side: int,
    tif: int,
    price: int,
    qty: int,
    leaves: int,
    cum: int,
    flags: int,
    expire: int,
    disclosed: int,
) -> None:
    # Put a new order's remainder in the book (a free slot is guaranteed by the caller).
    slot = _take_slot(ords, meta, o2s, oid, broker, side, tif, price, qty, leaves, cum, ST_RESTING, flags, expire,
                      disclosed)
    _push_back(ords, lvl, bits, meta, slot)


# --------------------------------------------------------------------------
# Stop orders: waiting outside the book in two trigger-sorted lists
# --------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _stop_link(ords: np.ndarray, meta: np.ndarray, slot: int) -> None:
    # Put a waiting stop into its side's list: buys by ascending trigger, sells by descending, after the stops
    # of the same trigger (acceptance order).  O(waiting stops of its side).
    side = ords[slot, O_SIDE]
    stop = ords[slot, O_STOP]
    head = M_STOP_BUY if side == BUY else M_STOP_SELL
    prev = -1
    cur = meta[head]
    while cur >= 0 and (ords[cur, O_STOP] <= stop if side == BUY else ords[cur, O_STOP] >= stop):
        prev = cur
        cur = ords[cur, O_NEXT]
    ords[slot, O_PREV] = prev
    ords[slot, O_NEXT] = cur
    if prev >= 0:
        ords[prev, O_NEXT] = slot
    else:
        meta[head] = slot
    if cur >= 0:
        ords[cur, O_PREV] = slot
    meta[M_STOPS] += 1


@njit(cache=True, inline="always")
def _stop_unlink(ords: np.ndarray, meta: np.ndarray, slot: int) -> None:
    # Take a waiting stop out of its list; the slot stays allocated.
    head = M_STOP_BUY if ords[slot, O_SIDE] == BUY else M_STOP_SELL
    prev = ords[slot, O_PREV]
    nxt = ords[slot, O_NEXT]
    if prev >= 0:
        ords[prev, O_NEXT] = nxt
    else:
        meta[head] = nxt
    if nxt >= 0:
        ords[nxt, O_PREV] = prev
    meta[M_STOPS] -= 1


@njit(cache=True, inline="always")
def _check_stop(meta: np.ndarray, side: int, is_market: bool, price: int, stop: int) -> int:
    # Reject reason for a stop order's trigger (and its limit against it), or 0.
    if stop <= 0:
        return REJ_PRICE_NOT_POSITIVE
    if meta[M_BANDED] and (stop < meta[M_BAND_LO] or stop > meta[M_BAND_HI]):
        return REJ_PRICE_OUT_OF_BAND
    if not is_market and (price < stop if side == BUY else price > stop):
        return REJ_STOP_LIMIT
    last = meta[M_LAST]
    if last > 0 and (stop <= last if side == BUY else stop >= last):
        return REJ_STOP_WOULD_TRIGGER
    return 0


@njit(cache=True, inline="always")
def _hold(
    ords: np.ndarray, meta: np.ndarray, o2s: np.ndarray, oid: int, broker: int, side: int, otype: int, tif: int,
    price: int, qty: int, stp: int, expire: int, stop: int,
) -> None:
    # Keep an accepted stop order in a free slot (guaranteed by the caller) and in its stop list.
    slot = _take_slot(ords, meta, o2s, oid, broker, side, tif, price, qty, qty, 0, ST_STOP, 0, expire, 0)
    ords[slot, O_TYPE] = otype
    ords[slot, O_STOP] = stop
    ords[slot, O_STP] = stp
    _stop_link(ords, meta, slot)


# --------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _crossing_qty(
    ords: np.ndarray, lvl: np.ndarray, bits: np.ndarray, meta: np.ndarray, side: int, limit: int, want: int,
    stp_broker: int, stp: int,
) -> int:
    # Opposite quantity an order at `limit` could trade; stops counting at `want`.  With self-trade
    # prevention (`stp_broker` >= 0) the own broker's orders are walked one by one: under cancel_resting
    # they would be cancelled, not traded, so they do not count; otherwise matching would stop at the
    # first of them, so counting stops there too.
    base = meta[M_BASE]
    nrows = meta[M_NLEVELS]
    avail = 0
    p = meta[M_BEST_ASK] if side == BUY else meta[M_BEST_BID]
    while (p <= limit if side == BUY else p >= limit) and avail < want:
        row = p - base
        if stp_broker < 0:
            avail += lvl[row, L_QTY]
        else:
            slot = lvl[row, L_HEAD]
            while slot >= 0 and avail < want:
                if ords[slot, O_BROKER] != stp_broker:
                    avail += ords[slot, O_LEAVES]
                elif stp != STP_CANCEL_RESTING:
                    return avail
                slot = ords[slot, O_NEXT]
        if side == BUY:
            r = scan_up(bits, row + 1, nrows)
            p = NO_ASK if r < 0 else r + base
        else:
            r = scan_down(bits, row - 1)
            p = NO_BID if r < 0 else r + base
    return avail


@njit(cache=True, inline="always")
def _match(
    ords: np.ndarray,
    lvl: np.ndarray,
    bits: np.ndarray,
    meta: np.ndarray,
    o2s: np.ndarray,
    out: np.ndarray,
    n: int,
    oid: int,
    side: int,
    limit: int,
    leaves: int,
    cum: int,
    stp_broker: int,
    stp: int,
) -> tuple[int, int, int, bool]:
    # Match an aggressor against the opposite side up to `limit` (a market order's limit is its band's far
    # edge: the circuit filter); return (events, leaves, cum, whether self-trade prevention stopped it: the
    # caller then cancels its rest).  `stp_broker` is the aggressor's broker when its STP mode is on, else
    # -1, which no order has: the check costs one comparison per match.
    base = meta[M_BASE]
    while leaves > 0:
        # NO_ASK is above and NO_BID below every limit: an empty side stops the loop too.
        if side == BUY:
            best = meta[M_BEST_ASK]
            if best > limit:
                break
        else:
            best = meta[M_BEST_BID]
            if best < limit:
                break
        row = best - base
        slot = lvl[row, L_HEAD]
        if ords[slot, O_BROKER] == stp_broker:
            if stp == STP_CANCEL_INCOMING:
                return n, leaves, cum, True
            n = _emit(out, n, EV_CANCELLED, ords[slot, O_OID], ords[slot, O_SIDE], best, ords[slot, O_LEAVES], 0,
                      ords[slot, O_CUM], 0, 0, 0, CXL_SELF_TRADE)
            _unlink(ords, lvl, bits, meta, slot)
            _free(ords, meta, o2s, slot)
            if stp == STP_CANCEL_RESTING:
                continue
            return n, leaves, cum, True
        r_leaves = ords[slot, O_LEAVES]
        iceberg = ords[slot, O_DISCLOSED] != 0
        avail = ords[slot, O_SHOWN] if iceberg else r_leaves  # an iceberg trades its displayed peak
        fill = leaves if leaves < avail else avail
        leaves -= fill
        cum += fill
        r_leaves -= fill
        r_cum = ords[slot, O_CUM] + fill
        ords[slot, O_LEAVES] = r_leaves
        ords[slot, O_CUM] = r_cum
        lvl[row, L_QTY] -= fill
        meta[M_TRADES] += 1
        meta[M_LAST] = best
        n = _emit(out, n, EV_TRADE, oid, side, best, fill, leaves, cum, ords[slot, O_OID], r_leaves, r_cum, 0)
        if iceberg:
            shown = avail - fill
            ords[slot, O_SHOWN] = shown
            if r_leaves > 0 and shown == 0:
                # Its peak is gone: the next one shows, at the back of the queue.
                _hide(ords, lvl, meta, slot, row, -1)
                d = ords[slot, O_DISCLOSED]
                ords[slot, O_SHOWN] = d if d < r_leaves else r_leaves
                _hide(ords, lvl, meta, slot, row, 1)
                _to_back(ords, lvl, row, slot)
        if r_leaves == 0:
            _unlink(ords, lvl, bits, meta, slot)
            _free(ords, meta, o2s, slot)
    return n, leaves, cum, False


@njit(cache=True, inline="always")
def _stp_broker(broker: int, stp: int) -> int:
    # The broker whose resting orders an aggressor must not trade with: none (-1) when its mode is off.
    return -1 if stp == STP_OFF else broker


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _check_price(meta: np.ndarray, price: int) -> int:
    # Reject reason for a limit price, or 0.  Runs before the book changes.
    if price <= 0:
        return REJ_PRICE_NOT_POSITIVE
    if meta[M_BANDED]:
        if price < meta[M_BAND_LO] or price > meta[M_BAND_HI]:
            return REJ_PRICE_OUT_OF_BAND
    elif meta[M_SEEN_HI] >= meta[M_SEEN_LO]:
        lo = meta[M_SEEN_LO] if meta[M_SEEN_LO] < price else price
        hi = meta[M_SEEN_HI] if meta[M_SEEN_HI] > price else price
        if hi - lo + 1 > meta[M_MAX_ROWS]:
            return REJ_LADDER_SPAN
    return 0


@njit(cache=True, inline="always")
def _would_cross(meta: np.ndarray, side: int, price: int) -> bool:
    # Whether a limit order at `price` would trade on entry (what a post-only order must not do).
    if side == BUY:
        return meta[M_BEST_ASK] <= price
    return meta[M_BEST_BID] >= price


@njit(cache=True, inline="always")
def _market_limit(meta: np.ndarray, side: int) -> int:
    # A market order's matching limit: the band's far edge (the circuit filter), tightened by market
    # protection to the last trade price (else the reference price) plus or minus its percentage, rounded
    # inwards to a whole tick.  No last nor reference price: the band's edge alone.
    if side == BUY:
        limit = meta[M_BAND_HI]
    else:
        limit = meta[M_BAND_LO]
    bp = meta[M_PROTECT_BP]
    if bp > 0:
        base = meta[M_LAST] if meta[M_LAST] > 0 else meta[M_REF]
        if base > 0:
            if side == BUY:
                p = base * (10000 + bp) // 10000
                if p < limit:
                    limit = p
            else:
                p = -((-base * (10000 - bp)) // 10000)
                if p > limit:
                    limit = p
    return limit


@njit(cache=True, inline="always")
def _needs_ladder(meta: np.ndarray, price: int) -> bool:
    row = price - meta[M_BASE]
    if row < 0 or row >= meta[M_NLEVELS]:
        meta[M_NEED] = NEED_LADDER
        meta[M_NEED_PRICE] = price
        return True
    return False


@njit(cache=True, inline="always")
def _see_price(meta: np.ndarray, price: int) -> None:
    if meta[M_SEEN_HI] < meta[M_SEEN_LO]:
        meta[M_SEEN_LO] = price
        meta[M_SEEN_HI] = price
    elif price < meta[M_SEEN_LO]:
        meta[M_SEEN_LO] = price
    elif price > meta[M_SEEN_HI]:
        meta[M_SEEN_HI] = price


@njit(cache=True)
def _new(
    ords: np.ndarray,
    lvl: np.ndarray,
    bits: np.ndarray,
    meta: np.ndarray,
    o2s: np.ndarray,
    out: np.ndarray,
    n: int,
    oid: int,
    broker: int,
    side: int,
    otype: int,
    tif: int,
    price: int,
    qty: int,
    stp: int,
    flags: int,
    expire: int,
    disclosed: int,
    stop: int,
) -> int:
    is_market = otype == MARKET
    is_stop = stop != 0
    reason = 0
    if qty <= 0 or qty % meta[M_LOT] != 0:
        reason = REJ_QTY_NOT_LOT_MULTIPLE
    elif is_stop and (tif in (IOC, FOK) or flags != 0 or disclosed != 0):
        reason = REJ_BAD_STOP  # a stop waits for its trigger: GTC, DAY or GTD; never post-only nor an iceberg
    elif (is_market and not is_stop and tif != IOC and tif != FOK) or (tif == GTD and expire <= 0):
        reason = REJ_BAD_TIF
    elif flags != 0 and tif in (IOC, FOK):
        reason = REJ_BAD_TIF  # a post-only order rests or nothing: never IOC, FOK (nor market)
    elif disclosed != 0 and (is_market or tif in (IOC, FOK) or disclosed < 0 or disclosed > qty
                             or disclosed % meta[M_LOT] != 0 or disclosed * 10 < qty):
        reason = REJ_BAD_DISCLOSED
    elif not is_market:
        reason = _check_price(meta, price)
        if reason == 0 and flags & FLAG_POST_ONLY and _would_cross(meta, side, price):
            reason = REJ_WOULD_CROSS
    if reason == 0 and is_stop:
        reason = _check_stop(meta, side, is_market, price, stop)
    if reason != 0:
        return _emit(out, n, EV_REJECTED, oid, side, 0, 0, 0, 0, OP_NEW, 0, 0, reason)
    if is_stop:
        # Held outside the book; its slot, and the ladder row of a limit price, are taken now, so that
        # triggering it never needs to grow anything.
        if meta[M_FREE_HEAD] < 0:
            meta[M_NEED] = NEED_SLOTS
            return -1
        if is_market:
            price = 0
        else:
            if _needs_ladder(meta, price):
                return -1
            _see_price(meta, price)
        n = _emit(out, n, EV_ACCEPTED, oid, side, price, qty, qty, 0, stop, 0, 0, 0)
        _hold(ords, meta, o2s, oid, broker, side, otype, tif, price, qty, stp, expire if tif == GTD else 0, stop)
        return n
    if is_market:
        price = 0
        limit = _market_limit(meta, side)  # the circuit filter, and market protection
    else:
        # Nothing rests above the band's top (MAX_PRICE_TICKS unbanded), and NO_ASK must stay above every limit.
        limit = price if price <= meta[M_BAND_HI] else meta[M_BAND_HI]
        rests = tif != IOC and tif != FOK
        if rests and meta[M_FREE_HEAD] < 0:
            meta[M_NEED] = NEED_SLOTS
            return -1
        if rests and _needs_ladder(meta, price):
            return -1
        _see_price(meta, price)
    n = _emit(out, n, EV_ACCEPTED, oid, side, price, qty, qty, 0, 0, 0, 0, 0)
    stp_broker = _stp_broker(broker, stp)
    if tif == FOK and _crossing_qty(ords, lvl, bits, meta, side, limit, qty, stp_broker, stp) < qty:
        return _emit(out, n, EV_CANCELLED, oid, side, price, qty, 0, 0, 0, 0, 0, CXL_FOK_UNFILLABLE)
    n, leaves, cum, self_trade = _match(ords, lvl, bits, meta, o2s, out, n, oid, side, limit, qty, 0, stp_broker, stp)
    if leaves > 0:
        if self_trade:
            n = _emit(out, n, EV_CANCELLED, oid, side, price, leaves, 0, cum, 0, 0, 0, CXL_SELF_TRADE)
        elif is_market or tif in (IOC, FOK):
            n = _emit(out, n, EV_CANCELLED, oid, side, price, leaves, 0, cum, 0, 0, 0, CXL_IOC_REMAINDER)
        else:
            _rest(ords, lvl, bits, meta, o2s, oid, broker, side, tif, price, qty, leaves, cum, flags,
                  expire if tif == GTD else 0, disclosed)
    return n


@njit(cache=True, inline="always")
def _resting_slot(o2s: np.ndarray, oid: int) -> int:
    if oid < 0 or oid >= o2s.shape[0]:
        return -1
    return o2s[oid]


@njit(cache=True)
def _cancel(
    ords: np.ndarray,
    lvl: np.ndarray,
    bits: np.ndarray,
    meta: np.ndarray,
    o2s: np.ndarray,
    out: np.ndarray,
    n: int,
    oid: int,
) -> int:
    slot = _resting_slot(o2s, oid)
    if slot < 0:
        return _emit(out, n, EV_REJECTED, oid, 0, 0, 0, 0, 0, OP_CANCEL, 0, 0, REJ_ORDER_CLOSED)
    leaves = ords[slot, O_LEAVES]
    n = _emit(
        out, n, EV_CANCELLED, oid, ords[slot, O_SIDE], ords[slot, O_PRICE], leaves, 0, ords[slot, O_CUM],
        0, 0, 0, CXL_REQUESTED
    )
    if ords[slot, O_STATE] == ST_STOP:
        _stop_unlink(ords, meta, slot)
    else:
        _unlink(ords, lvl, bits, meta, slot)
    _free(ords, meta, o2s, slot)
    return n


@njit(cache=True)
def _replace(
    ords: np.ndarray,
    lvl: np.ndarray,
    bits: np.ndarray,
    meta: np.ndarray,
    o2s: np.ndarray,
    out: np.ndarray,
    n: int,
    oid: int,
    price: int,
    qty: int,
    stp: int,
    stop: int,
) -> int:
    slot = _resting_slot(o2s, oid)
    if slot < 0:
        return _emit(out, n, EV_REJECTED, oid, 0, 0, 0, 0, 0, OP_REPLACE, 0, 0, REJ_ORDER_CLOSED)
    if ords[slot, O_STATE] == ST_STOP:
        return _replace_stop(ords, meta, out, n, slot, price, qty, stp, stop)
    side = ords[slot, O_SIDE]
    if stop > 0:  # NO_PRICE, or 0 (a row that leaves C_STOP empty), keeps: there is none
        return _emit(out, n, EV_REJECTED, oid, side, 0, 0, 0, 0, OP_REPLACE, 0, 0, REJ_NOT_STOP)
    old_price = ords[slot, O_PRICE]
    old_qty = ords[slot, O_QTY]
    cum = ords[slot, O_CUM]
    new_price = old_price if price == NO_PRICE else price
    new_qty = old_qty if qty == NO_QTY else qty
    if new_qty <= 0 or new_qty % meta[M_LOT] != 0:
        reason = REJ_QTY_NOT_LOT_MULTIPLE
    else:
        reason = _check_price(meta, new_price)
        # A post-only order stays post-only: a replace that would trade is refused, the order unchanged.
        if reason == 0 and ords[slot, O_FLAGS] & FLAG_POST_ONLY and new_qty > cum and \
                _would_cross(meta, side, new_price):
            reason = REJ_WOULD_CROSS
    if reason != 0:
        return _emit(out, n, EV_REJECTED, oid, side, 0, 0, 0, 0, OP_REPLACE, 0, 0, reason)
    if new_qty > cum and _needs_ladder(meta, new_price):
        return -1
    _see_price(meta, new_price)

    if new_qty <= cum:
        # Cut down to what has already filled: the order is done.
        n = _emit(out, n, EV_REPLACED, oid, side, new_price, new_qty, 0, cum, 0, 0, 0, 0)
        _unlink(ords, lvl, bits, meta, slot)
        _free(ords, meta, o2s, slot)
        return n

    if new_price == old_price and new_qty <= old_qty:
        # Same price, quantity not up: keeps its place in the queue.
        cut = old_qty - new_qty
        leaves = ords[slot, O_LEAVES] - cut
        row = old_price - meta[M_BASE]
        iceberg = ords[slot, O_DISCLOSED] != 0
        if iceberg:
            _hide(ords, lvl, meta, slot, row, -1)
        ords[slot, O_QTY] = new_qty
        ords[slot, O_LEAVES] = leaves
        lvl[row, L_QTY] -= cut
        if iceberg:
            # The cut takes the hidden part first; what shows is at most what is left.
            if ords[slot, O_SHOWN] > leaves:
                ords[slot, O_SHOWN] = leaves
            _hide(ords, lvl, meta, slot, row, 1)
        return _emit(out, n, EV_REPLACED, oid, side, new_price, new_qty, leaves, cum, 1, 0, 0, 0)

    # Loses its place: out of the book, may trade as the aggressor, the rest
    # goes to the back of its new level.
    _unlink(ords, lvl, bits, meta, slot)
    leaves = new_qty - cum
    n = _emit(out, n, EV_REPLACED, oid, side, new_price, new_qty, leaves, cum, 0, 0, 0, 0)
    n, leaves, cum, self_trade = _match(ords, lvl, bits, meta, o2s, out, n, oid, side, new_price, leaves, cum,
                                        _stp_broker(ords[slot, O_BROKER], stp), stp)
    if self_trade:
        n = _emit(out, n, EV_CANCELLED, oid, side, new_price, leaves, 0, cum, 0, 0, 0, CXL_SELF_TRADE)
        _free(ords, meta, o2s, slot)
    elif leaves > 0:
        ords[slot, O_PRICE] = new_price
        ords[slot, O_QTY] = new_qty
        ords[slot, O_LEAVES] = leaves
        ords[slot, O_CUM] = cum
        d = ords[slot, O_DISCLOSED]
        if d != 0:
            ords[slot, O_SHOWN] = d if d < leaves else leaves  # a new peak, at the back of its new level
        _push_back(ords, lvl, bits, meta, slot)
    else:
        _free(ords, meta, o2s, slot)
    return n


@njit(cache=True)
def _replace_stop(
    ords: np.ndarray, meta: np.ndarray, out: np.ndarray, n: int, slot: int, price: int, qty: int, stp: int,
    stop: int,
) -> int:
    # Replace a stop waiting for its trigger: its price, quantity and trigger.  It keeps its place among the
    # stops when the trigger stays; a new trigger puts it behind the stops of that trigger.
    oid = ords[slot, O_OID]
    side = ords[slot, O_SIDE]
    is_market = ords[slot, O_TYPE] == MARKET
    old_stop = ords[slot, O_STOP]
    new_price = ords[slot, O_PRICE] if price == NO_PRICE else price
    new_qty = ords[slot, O_QTY] if qty == NO_QTY else qty
    new_stop = old_stop if stop <= 0 else stop  # NO_PRICE (or 0) keeps the trigger
    reason = 0
    if new_qty <= 0 or new_qty % meta[M_LOT] != 0:
        reason = REJ_QTY_NOT_LOT_MULTIPLE
    elif is_market and price != NO_PRICE:
        reason = REJ_BAD_STOP  # a stop-loss market order has no limit price
    else:
        if not is_market:
            reason = _check_price(meta, new_price)
        if reason == 0:
            reason = _check_stop(meta, side, is_market, new_price, new_stop)
    if reason != 0:
        return _emit(out, n, EV_REJECTED, oid, side, 0, 0, 0, 0, OP_REPLACE, 0, 0, reason)
    if not is_market:
        if _needs_ladder(meta, new_price):
            return -1
        _see_price(meta, new_price)
    kept = new_stop == old_stop
    if not kept:
        _stop_unlink(ords, meta, slot)
        ords[slot, O_STOP] = new_stop
        _stop_link(ords, meta, slot)
    ords[slot, O_PRICE] = new_price
    ords[slot, O_QTY] = new_qty
    ords[slot, O_LEAVES] = new_qty
    ords[slot, O_STP] = stp
    return _emit(out, n, EV_REPLACED, oid, side, new_price, new_qty, new_qty, 0, 1 if kept else 0, new_stop, 0, 0)


@njit(cache=True)
def _enter(
    ords: np.ndarray, lvl: np.ndarray, bits: np.ndarray, meta: np.ndarray, o2s: np.ndarray, out: np.ndarray, n: int,
    slot: int,
) -> int:
    # A triggered stop (already out of its list) enters the book as its limit or market order, the aggressor.
    oid = ords[slot, O_OID]
    side = ords[slot, O_SIDE]
    price = ords[slot, O_PRICE]
    qty = ords[slot, O_QTY]
    is_market = ords[slot, O_TYPE] == MARKET
    stp = ords[slot, O_STP]
    n = _emit(out, n, EV_TRIGGERED, oid, side, price, qty, qty, 0, ords[slot, O_STOP], 0, 0, 0)
    limit = _market_limit(meta, side) if is_market else price
    n, leaves, cum, self_trade = _match(ords, lvl, bits, meta, o2s, out, n, oid, side, limit, qty, 0,
                                        _stp_broker(ords[slot, O_BROKER], stp), stp)
    if leaves > 0 and not self_trade and not is_market:
        ords[slot, O_LEAVES] = leaves
        ords[slot, O_CUM] = cum
        ords[slot, O_STATE] = ST_RESTING
        _push_back(ords, lvl, bits, meta, slot)
        return n
    if leaves > 0:
        n = _emit(out, n, EV_CANCELLED, oid, side, price, leaves, 0, cum, 0, 0, 0,
                  CXL_SELF_TRADE if self_trade else CXL_IOC_REMAINDER)
    _free(ords, meta, o2s, slot)
    return n


@njit(cache=True, inline="always")
def _reach(ords: np.ndarray, meta: np.ndarray, p: int, qhead: int, qtail: int) -> tuple[int, int]:
    # A print at `p`: the buy stops with a trigger at or below it (ascending trigger), then the sell stops with a
    # trigger at or above it (descending), leave their lists for the back of the queue (qhead..qtail, O_NEXT).
    for head in (M_STOP_BUY, M_STOP_SELL):
        s = meta[head]
        while s >= 0 and (ords[s, O_STOP] <= p if head == M_STOP_BUY else ords[s, O_STOP] >= p):
            _stop_unlink(ords, meta, s)
            ords[s, O_NEXT] = -1
            if qtail >= 0:
                ords[qtail, O_NEXT] = s
            else:
                qhead = s
            qtail = s
            s = meta[head]
    return qhead, qtail


@njit(cache=True, inline="always")
def _trigger(
    ords: np.ndarray, lvl: np.ndarray, bits: np.ndarray, meta: np.ndarray, o2s: np.ndarray, out: np.ndarray, i: int,
    n: int, first: int,
) -> int:
    # The stops a print at `first` (> 0: the call auction's, made outside the book) and then the trades in
    # out[i:n] reach, and those the trades of the triggered orders reach in turn (the cascade): at each print in
    # order, the stops it reaches join a queue (_reach); the queue's stops enter the book one after the other,
    # each once the prints before it have been read.
    qhead = -1
    qtail = -1
    if first > 0:
        qhead, qtail = _reach(ords, meta, first, qhead, qtail)
    while True:
        while i < n and meta[M_STOPS] > 0:
            if out[i, E_TYPE] == EV_TRADE:
                qhead, qtail = _reach(ords, meta, out[i, E_PRICE], qhead, qtail)
            i += 1
        if qhead < 0:
            return n
        s = qhead
        qhead = ords[s, O_NEXT]
        if qhead < 0:
            qtail = -1
        i = n
        n = _enter(ords, lvl, bits, meta, o2s, out, n, s)


@njit(cache=True)
def _end_of_day(
    ords: np.ndarray, lvl: np.ndarray, bits: np.ndarray, meta: np.ndarray, o2s: np.ndarray, out: np.ndarray, n: int,
    day: int,
) -> int:
    # Expire DAY orders, and GTD orders whose expire day is `day` or before, in the order they were accepted
    # (ascending order id).  `day` 0 (unknown): no GTD order expires.
    for oid in range(o2s.shape[0]):
        slot = o2s[oid]
        if slot >= 0 and (ords[slot, O_TIF] == DAY or (ords[slot, O_TIF] == GTD and ords[slot, O_EXPIRE] <= day)):
            n = _emit(
                out, n, EV_EXPIRED, oid, ords[slot, O_SIDE], ords[slot, O_PRICE], ords[slot, O_LEAVES], 0,
                ords[slot, O_CUM], 0, 0, 0, 0
            )
            if ords[slot, O_STATE] == ST_STOP:
                _stop_unlink(ords, meta, slot)
            else:
                _unlink(ords, lvl, bits, meta, slot)
            _free(ords, meta, o2s, slot)
    return n


@njit(cache=True, inline="always")
def apply(
    ords: np.ndarray,
    lvl: np.ndarray,
    bits: np.ndarray,
    meta: np.ndarray,
    o2s: np.ndarray,
    out: np.ndarray,
    n: int,
    op: int,
    oid: int,
    broker: int,
    side: int,
    otype: int,
    tif: int,
    price: int,
    qty: int,
    stp: int,
    flags: int,
    expire: int,
    disclosed: int,
    stop: int,
) -> int:
    """Apply one command, writing its events to ``out`` from row ``n``.

    Return the new number of events in ``out``, or -1 when an array must grow
    first (``meta[M_NEED]`` says which); in that case nothing has changed.
    ``oid`` of a new order must be below ``o2s.shape[0]``.
    """
    meta[M_NEED] = NEED_NOTHING
    # One command emits at most one event per order slot in use (resting or waiting stop) and per hidden peak
    # of an iceberg, plus three, plus three per waiting stop (its trigger, its last partial trade, its cancel).
    if out.shape[0] - n < meta[M_RESTING] + meta[M_TRANCHES] + 3 + 3 * meta[M_STOPS]:
        meta[M_NEED] = NEED_EVENTS
        return -1
    trades = meta[M_TRADES]
    if op == OP_NEW:
        if oid >= o2s.shape[0]:
            meta[M_NEED] = NEED_OIDS
            return -1
        r = _new(ords, lvl, bits, meta, o2s, out, n, oid, broker, side, otype, tif, price, qty, stp, flags,
                 expire, disclosed, stop)
    elif op == OP_CANCEL:
        return _cancel(ords, lvl, bits, meta, o2s, out, n, oid)
    elif op == OP_REPLACE:
        r = _replace(ords, lvl, bits, meta, o2s, out, n, oid, price, qty, stp, stop)
    elif op == OP_END_OF_DAY:
        return _end_of_day(ords, lvl, bits, meta, o2s, out, n, expire)
    elif op == OP_PRINT:
        if price <= 0:
            return n
        meta[M_LAST] = price
        return _trigger(ords, lvl, bits, meta, o2s, out, n, n, price) if meta[M_STOPS] > 0 else n
    else:
        return n
    # The waiting stops its trades reach: one comparison when there are none, two when it traded nothing.
    if meta[M_STOPS] > 0 and meta[M_TRADES] != trades and r > n:
        r = _trigger(ords, lvl, bits, meta, o2s, out, n, r, 0)
    return r


@njit(cache=True)
def run_batch(
    ords: np.ndarray,
    lvl: np.ndarray,
    bits: np.ndarray,
    meta: np.ndarray,
    o2s: np.ndarray,
    out: np.ndarray,
    cmds: np.ndarray,
    start: int,
) -> int:
    """Apply ``cmds[start:]`` in order, appending events to ``out`` from ``meta[M_NEV]``.

    Return the index of the first command not applied: ``cmds.shape[0]`` when
    all were, otherwise ``meta[M_NEED]`` says what must grow before the call is
    repeated from that index.  ``meta[M_NEV]`` holds the number of events in
    ``out`` (the caller resets it after consuming them).
    """
    n = meta[M_NEV]
    i = start
    ncmds = cmds.shape[0]
    while i < ncmds:
        r = apply(
            ords,
            lvl,
            bits,
            meta,
            o2s,
            out,
            n,
            cmds[i, C_OP],
            cmds[i, C_OID],
            cmds[i, C_BROKER],
            cmds[i, C_SIDE],
            cmds[i, C_TYPE],
            cmds[i, C_TIF],
            cmds[i, C_PRICE],
            cmds[i, C_QTY],
            cmds[i, C_STP],
            cmds[i, C_FLAGS],
            cmds[i, C_EXPIRE],
            cmds[i, C_DISCLOSED],
            cmds[i, C_STOP],
        )
        if r < 0:
            break
        n = r
        i += 1
    meta[M_NEV] = n
    return i


# --------------------------------------------------------------------------
# The single-buffer entry points: what the wrapper calls.
# --------------------------------------------------------------------------


@njit(cache=True, inline="always")
def views(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (ords, lvl, bits, meta, o2s, out): zero-copy views of a book buffer's regions."""
    o = buf[H_ORDS]
    ords = buf[o : o + buf[H_SLOTS] * O_NFIELDS].reshape((buf[H_SLOTS], O_NFIELDS))
    o = buf[H_LVL]
    lvl = buf[o : o + buf[H_ROWS] * L_NFIELDS].reshape((buf[H_ROWS], L_NFIELDS))
    bits = buf[buf[H_BITS] : buf[H_BITS] + buf[H_WORDS]]
    meta = buf[buf[H_META] : buf[H_META] + M_NFIELDS]
    o2s = buf[buf[H_O2S] : buf[H_O2S] + buf[H_OIDS]]
    o = buf[H_OUT]
    out = buf[o : o + buf[H_EVENTS] * E_NFIELDS].reshape((buf[H_EVENTS], E_NFIELDS))
    return ords, lvl, bits, meta, o2s, out


@njit(cache=True)
def apply_buf(
    buf: np.ndarray, op: int, oid: int, broker: int, side: int, otype: int, tif: int, price: int, qty: int, stp: int,
    flags: int, expire: int, disclosed: int, stop: int,
) -> int:
    """Apply one command to the book in ``buf``; events from row 0 of its event region.

    Return the number of events, or -1 when a region must grow (see :func:`apply`).
    """
    ords, lvl, bits, meta, o2s, out = views(buf)
    return apply(ords, lvl, bits, meta, o2s, out, 0, op, oid, broker, side, otype, tif, price, qty, stp, flags,
                 expire, disclosed, stop)


@njit(cache=True)
def run_batch_buf(buf: np.ndarray, cmds: np.ndarray, start: int) -> int:
    """Apply ``cmds[start:]`` to the book in ``buf``: :func:`run_batch` over its regions."""
    ords, lvl, bits, meta, o2s, out = views(buf)
    return run_batch(ords, lvl, bits, meta, o2s, out, cmds, start)


@njit(cache=True)
def depth_buf(buf: np.ndarray, side: int, nmax: int, res: np.ndarray) -> int:
    """:func:`depth` of the book in ``buf``."""
    _, lvl, bits, meta, _, _ = views(buf)
    return depth(lvl, bits, meta, side, nmax, res)


@njit(cache=True)
def level_buf(buf: np.ndarray, side: int, price: int) -> tuple[int, int]:
    """(displayed quantity, orders) resting on ``side`` at ``price`` in the book in ``buf``; (0, 0) for none."""
    ords, lvl, _, meta, _, _ = views(buf)
    row = price - meta[M_BASE]
    if row < 0 or row >= meta[M_NLEVELS] or lvl[row, L_COUNT] == 0:
        return 0, 0
    if ords[lvl[row, L_HEAD], O_SIDE] != side:
        return 0, 0
    return lvl[row, L_QTY] - lvl[row, L_HIDDEN], lvl[row, L_COUNT]


@njit(cache=True)
def checksum_buf(buf: np.ndarray) -> int:
    """:func:`checksum` of the book in ``buf``."""
    ords, lvl, bits, meta, _, _ = views(buf)
    return checksum(ords, lvl, bits, meta)


# --------------------------------------------------------------------------
# Reading the book
# --------------------------------------------------------------------------


@njit(cache=True)
def depth(lvl: np.ndarray, bits: np.ndarray, meta: np.ndarray, side: int, nmax: int, res: np.ndarray) -> int:
    """Write up to ``nmax`` levels of one side, best first, as (price, displayed qty, count) rows of ``res``.

    Return how many.  An iceberg counts its displayed peak only (``L_QTY - L_HIDDEN``).
    """
    base = meta[M_BASE]
    k = 0
    if side == BUY:
        p = meta[M_BEST_BID]
        while p != NO_BID and k < nmax:
            row = p - base
            res[k, 0] = p
            res[k, 1] = lvl[row, L_QTY] - lvl[row, L_HIDDEN]
            res[k, 2] = lvl[row, L_COUNT]
            k += 1
            r = scan_down(bits, row - 1)
            p = NO_BID if r < 0 else r + base
    else:
        p = meta[M_BEST_ASK]
        while p != NO_ASK and k < nmax:
            row = p - base
            res[k, 0] = p
            res[k, 1] = lvl[row, L_QTY] - lvl[row, L_HIDDEN]
            res[k, 2] = lvl[row, L_COUNT]
            k += 1
            r = scan_up(bits, row + 1, meta[M_NLEVELS])
            p = NO_ASK if r < 0 else r + base
    return k


@njit(cache=True)
def checksum(ords: np.ndarray, lvl: np.ndarray, bits: np.ndarray, meta: np.ndarray) -> int:
    """Return a 64-bit FNV-1a hash of the book in priority order (both sides, every order)."""
    h = np.uint64(14695981039346656037)
    prime = np.uint64(1099511628211)
    base = meta[M_BASE]
    for side in (BUY, SELL):
        if side == BUY:
            p = meta[M_BEST_BID]
        else:
            p = meta[M_BEST_ASK]
        while p != NO_BID and p != NO_ASK:
            row = p - base
            slot = lvl[row, L_HEAD]
            while slot >= 0:
                for f in (O_OID, O_BROKER, O_SIDE, O_TIF, O_PRICE, O_QTY, O_LEAVES, O_CUM, O_EXPIRE, O_FLAGS,
                          O_DISCLOSED, O_SHOWN):
                    h = (h ^ np.uint64(ords[slot, f])) * prime
                slot = ords[slot, O_NEXT]
            if side == BUY:
                r = scan_down(bits, row - 1)
                p = NO_BID if r < 0 else r + base
            else:
                r = scan_up(bits, row + 1, meta[M_NLEVELS])
                p = NO_ASK if r < 0 else r + base
    for head in (M_STOP_BUY, M_STOP_SELL):  # the waiting stops, in trigger order
        slot = meta[head]
        while slot >= 0:
            for f in (O_OID, O_BROKER, O_SIDE, O_TIF, O_PRICE, O_QTY, O_EXPIRE, O_TYPE, O_STOP, O_STP):
                h = (h ^ np.uint64(ords[slot, f])) * prime
            slot = ords[slot, O_NEXT]
    return np.int64(h)  # type: ignore[return-value]  # numba's int64 is the caller's int

