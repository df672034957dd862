"""Constants, enums and array layouts of the matching hot path, in one place.

Everything the compiled book kernels (:mod:`fabric.kernels`) and the reference
book (:mod:`fabric.reference`) agree on lives here: the command and event row
layouts, the order and level field indices, side/type/time-in-force codes and
the reject and cancel reason codes.  Values are small integers so that numba
can treat them as compile-time constants.

Prices inside the engine are whole numbers of ticks (``int64``); quantities are
whole shares (``int64``).  Decimal strings exist only at the edges.
"""

from __future__ import annotations

import numpy as np

INT = np.int64

# --------------------------------------------------------------------------
# Sides, order types, time in force
# --------------------------------------------------------------------------
BUY = 0
SELL = 1

LIMIT = 0
MARKET = 1

GTC = 0
DAY = 1
IOC = 2
FOK = 3
GTD = 4  # good till date: as DAY, but it expires at the end of its expire day (``docs/book-semantics.md``)

# Self-trade prevention: what happens when an incoming order (a new order, or a
# replace that loses its place and crosses) would trade against a resting order
# of its own broker.  Each new and replace command carries its broker's mode
# (``docs/book-semantics.md``, "Self-trade prevention").
STP_OFF = 0  # the two orders trade
STP_CANCEL_RESTING = 1  # the resting order is cancelled; matching goes on
STP_CANCEL_INCOMING = 2  # the rest of the incoming order is cancelled
STP_CANCEL_BOTH = 3  # both are cancelled

SIDE_NAMES = ("buy", "sell")
TYPE_NAMES = ("limit", "market")
TIF_NAMES = ("GTC", "DAY", "IOC", "FOK", "GTD")

# Order flags (C_FLAGS of a new order; kept with the resting order).
FLAG_POST_ONLY = 1  # a limit order that must not trade on entry: rejected (REJ_WOULD_CROSS) if it would
# A new order with a trigger price (C_STOP) is a stop-loss order: held outside the book until a trade prints
# at or through its trigger, then it enters as its limit (SL) or market (SL-M) order ("Stop-loss orders").
STP_NAMES = ("off", "cancel_resting", "cancel_incoming", "cancel_both")

# --------------------------------------------------------------------------
# Commands: one int64 row per command, used by the batch kernel.
# --------------------------------------------------------------------------
OP_NEW = 1
OP_CANCEL = 2
OP_REPLACE = 3
OP_END_OF_DAY = 4
OP_PRINT = 5  # a print made outside the book (the call auction's) at C_PRICE: the last price; stops trigger

C_OP = 0
C_OID = 1  # engine-internal order id (dense, assigned by the engine)
C_BROKER = 2  # engine-internal broker number
C_SIDE = 3
C_TYPE = 4
C_TIF = 5
C_PRICE = 6  # ticks; for a replace, NO_PRICE keeps the price
C_QTY = 7  # total order quantity; for a replace, NO_QTY keeps it
C_STP = 8  # self-trade prevention mode (STP_*) of a new or a replace; 0 elsewhere
C_FLAGS = 9  # a new order's FLAG_* bits; 0 elsewhere
C_EXPIRE = 10  # a GTD order's expire day, end_of_day's day that ends (both yyyymmdd; 0: none, unknown)
C_DISCLOSED = 11  # a new order's disclosed quantity (an iceberg's peak); 0: all of it shows
C_STOP = 12  # a stop order's trigger price (ticks): a new's (0: not a stop), a replace's (NO_PRICE or 0 keeps it)
C_NFIELDS = 13

NO_PRICE = -1
NO_QTY = -1

# --------------------------------------------------------------------------
# Events: one int64 row per event in the kernel's output buffer.
# Fields not meaningful for an event type are 0.
#
#   ACCEPTED   OID SIDE PRICE QTY LEAVES
#   REJECTED   OID SIDE REASON OTHER=op code
#   TRADE      OID=aggressor SIDE=aggressor side PRICE QTY LEAVES CUM (aggressor,
#              after the fill) OTHER=resting oid OTHER_LEAVES OTHER_CUM (resting,
#              after the fill); PRICE is the resting order's price
#   CANCELLED  OID SIDE PRICE QTY=quantity taken out of the market LEAVES=0 CUM
#              REASON=why (CXL_*)
#   REPLACED   OID SIDE PRICE=new price QTY=new total quantity LEAVES CUM
#              OTHER=1 when the order kept its time priority, else 0
#   EXPIRED    OID SIDE PRICE QTY=quantity taken out of the market LEAVES=0 CUM
#   TRIGGERED  OID SIDE PRICE (0 for a market order) QTY LEAVES CUM=0 OTHER=its trigger price: a stop order
#              leaves the stop list and enters the book now
#
# A stop order's ACCEPTED carries its trigger in OTHER; a stop's REPLACED (while it waits) carries
# OTHER=1 when it kept its place among the stops (same trigger) and OTHER_LEAVES=its trigger.
# --------------------------------------------------------------------------
EV_ACCEPTED = 1
EV_REJECTED = 2
EV_TRADE = 3
EV_CANCELLED = 4
EV_REPLACED = 5
EV_EXPIRED = 6
EV_TRIGGERED = 7

EVENT_NAMES = {
    EV_ACCEPTED: "accepted",
    EV_REJECTED: "rejected",
    EV_TRADE: "trade",
    EV_CANCELLED: "cancelled",
    EV_REPLACED: "replaced",
    EV_EXPIRED: "expired",
    EV_TRIGGERED: "triggered",
}

E_TYPE = 0
E_OID = 1
E_SIDE = 2
E_PRICE = 3
E_QTY = 4
E_LEAVES = 5
E_CUM = 6
E_OTHER = 7
E_OTHER_LEAVES = 8
E_OTHER_CUM = 9
E_REASON = 10
E_NFIELDS = 11

# --------------------------------------------------------------------------
# Why an order left the market without a fill (E_REASON of EV_CANCELLED).
# --------------------------------------------------------------------------
CXL_REQUESTED = 1  # the broker asked
CXL_IOC_REMAINDER = 2  # unfilled rest of an IOC or market order
CXL_FOK_UNFILLABLE = 3  # a FOK order that could not fill in full at once
CXL_SELF_TRADE = 4  # self-trade prevention: it would have traded with its own broker's order
# Set by the engine, not the book: every open order of a broker cancelled at once (fabric.engine.cancel_all).
CXL_KILL_SWITCH = 5  # an operator disabled the broker
CXL_DISCONNECT = 6  # the broker's session ended and it asked for cancel-on-disconnect
CXL_NO_AUCTION_PRICE = 7  # a market order of the pre-open when the call auction found no price (docs/sessions.md)
CXL_OUTSIDE_NEW_BAND = 8  # a resting order outside the band a new day's reference price gives (docs/sessions.md)

CANCEL_REASON_NAMES = {
    CXL_REQUESTED: "requested",
    CXL_IOC_REMAINDER: "unfilled_ioc_remainder",
    CXL_FOK_UNFILLABLE: "fok_not_fillable",
    CXL_SELF_TRADE: "self_trade",
    CXL_KILL_SWITCH: "kill_switch",
    CXL_DISCONNECT: "cancel_on_disconnect",
    CXL_NO_AUCTION_PRICE: "no_auction_price",
    CXL_OUTSIDE_NEW_BAND: "outside_new_band",
}

# --------------------------------------------------------------------------
# Reject reasons.  The codes 1..99 may be raised by the kernel itself (which
# re-checks what it can cheaply); 100 and up are raised at the edge only.
# Names are the stable strings printed in events; docs/replay.md lists them.
# --------------------------------------------------------------------------
REJ_QTY_NOT_LOT_MULTIPLE = 1
REJ_PRICE_OUT_OF_BAND = 2
REJ_PRICE_NOT_POSITIVE = 3
REJ_ORDER_CLOSED = 4
REJ_BAD_TIF = 5
REJ_PRICE_OFF_TICK = 6
REJ_LADDER_SPAN = 7  # unbanded instrument: price too far from the rest of the book
REJ_WOULD_CROSS = 8  # a post-only order (or its replace) would trade on entry
REJ_BAD_DISCLOSED = 9  # a disclosed quantity the rules refuse (docs/book-semantics.md, "Disclosed quantity")
REJ_STOP_LIMIT = 10  # a stop-loss limit order's price on the wrong side of its trigger (buy below, sell above)
REJ_STOP_WOULD_TRIGGER = 11  # a trigger the last traded price has already reached (buy: at or below it)
REJ_BAD_STOP = 12  # a stop order that cannot wait: IOC, FOK, post-only, disclosed; a limit price on a stop market
REJ_NOT_STOP = 13  # a replace's stop_price for an order that is not a stop waiting for its trigger

REJ_UNKNOWN_ORDER = 100
REJ_DUPLICATE_OID = 101
REJ_QTY_TOO_LARGE = 102
REJ_PRICE_TOO_LARGE = 103
REJ_HALTED = 104  # trading in the symbol (or the market) is halted
REJ_BROKER_DISABLED = 105  # an operator disabled the broker (the kill switch)
REJ_MARKET_CLOSED = 106  # the trading day's phase takes no such order now (docs/sessions.md)
REJ_EXPIRE_DATE = 107  # a GTD order's expire_date is missing, not a date, or before the trading day
REJ_NOT_CLOSING_PRICE = 108  # the closing session trades at the closing price only (docs/sessions.md)
REJ_MALFORMED = 110  # not JSON / not an object
REJ_UNKNOWN_OP = 111
REJ_MISSING_FIELD = 112
REJ_BAD_FIELD = 113
REJ_INSTRUMENT_EXISTS = 114
REJ_BAD_INSTRUMENT = 115

REJECT_NAMES = {
    REJ_QTY_NOT_LOT_MULTIPLE: "qty_not_lot_multiple",
    REJ_PRICE_OUT_OF_BAND: "price_out_of_band",
    REJ_PRICE_NOT_POSITIVE: "price_not_positive",
    REJ_ORDER_CLOSED: "order_closed",
    REJ_BAD_TIF: "bad_time_in_force",
    REJ_PRICE_OFF_TICK: "price_off_tick",
    REJ_LADDER_SPAN: "price_too_far_from_book",
    REJ_WOULD_CROSS: "would_cross",
    REJ_BAD_DISCLOSED: "bad_disclosed_qty",
    REJ_STOP_LIMIT: "bad_stop_limit",
    REJ_STOP_WOULD_TRIGGER: "stop_would_trigger",
    REJ_BAD_STOP: "bad_stop_order",
    REJ_NOT_STOP: "not_a_waiting_stop",
    REJ_UNKNOWN_ORDER: "unknown_order",
    REJ_DUPLICATE_OID: "duplicate_client_order_id",
    REJ_QTY_TOO_LARGE: "qty_too_large",
    REJ_PRICE_TOO_LARGE: "price_too_large",
    REJ_HALTED: "halted",
    REJ_BROKER_DISABLED: "broker_disabled",
    REJ_MARKET_CLOSED: "market_closed",
    REJ_EXPIRE_DATE: "bad_expire_date",
    REJ_NOT_CLOSING_PRICE: "not_closing_price",
    REJ_MALFORMED: "malformed",
    REJ_UNKNOWN_OP: "unknown_op",
    REJ_MISSING_FIELD: "missing_field",
    REJ_BAD_FIELD: "bad_field",
    REJ_INSTRUMENT_EXISTS: "instrument_exists",
    REJ_BAD_INSTRUMENT: "bad_instrument",
}

# Largest quantity and price (in ticks) the engine accepts: sums of quantities
# over a whole book stay far inside int64.
MAX_QTY = 10**12
MAX_PRICE_TICKS = 10**12

# --------------------------------------------------------------------------
# Order slots: ords[slot, O_*], int64.  A slot is free when O_STATE == ST_FREE;
# free slots are chained through O_NEXT starting at meta[M_FREE_HEAD].
# --------------------------------------------------------------------------
O_OID = 0
O_BROKER = 1
O_SIDE = 2
O_TIF = 3
O_PRICE = 4  # ticks
O_QTY = 5  # total order quantity
O_LEAVES = 6
O_CUM = 7
O_PREV = 8  # FIFO neighbours at the price level (slot numbers, -1 = none)
O_NEXT = 9
O_STATE = 10
O_EXPIRE = 11  # a GTD order's expire day (yyyymmdd), else 0
O_FLAGS = 12  # the order's FLAG_* bits
O_DISCLOSED = 13  # an iceberg's disclosed quantity (its peak), 0 for an order that shows all of it
O_SHOWN = 14  # an iceberg's displayed quantity (what is left of its current peak); unused for others
O_TYPE = 15  # a waiting stop's order type (LIMIT or MARKET); unused for others
O_STOP = 16  # a waiting stop's trigger price (ticks)
O_STP = 17  # a waiting stop's self-trade prevention mode (its broker's, from the command that set it)
O_NFIELDS = 18

ST_FREE = 0
ST_RESTING = 1
ST_STOP = 2  # a stop order waiting for its trigger: in a stop list (O_PREV/O_NEXT), not in the ladder

# --------------------------------------------------------------------------
# Price levels: lvl[price_ticks - base, L_*], int64.  A level holds bids or
# asks, never both (an uncrossed book has its bids below its asks).
# --------------------------------------------------------------------------
L_QTY = 0
L_COUNT = 1
L_HEAD = 2
L_TAIL = 3
L_HIDDEN = 4  # the icebergs' undisplayed quantity at the level: the depth shows L_QTY - L_HIDDEN
L_NFIELDS = 5

# --------------------------------------------------------------------------
# Book metadata: meta[M_*], int64.
# --------------------------------------------------------------------------
M_BASE = 0  # price (ticks) of ladder row 0
M_NLEVELS = 1  # ladder rows
M_BAND_LO = 2  # lowest accepted price (ticks), or 1 when unbanded
M_BAND_HI = 3  # highest accepted price (ticks), or MAX_PRICE_TICKS when unbanded
M_LOT = 4
M_BEST_BID = 5  # ticks, or NO_BID
M_BEST_ASK = 6  # ticks, or NO_ASK
M_FREE_HEAD = 7  # first free order slot, -1 when full
M_RESTING = 8  # order slots in use: orders resting in the book, and stop orders waiting (M_STOPS)
M_NEED = 9  # why the kernel stopped early (NEED_*), 0 otherwise
M_NEED_PRICE = 10  # the price that needs a wider ladder
M_TRADES = 11  # trades matched so far (the book's trade counter)
M_BANDED = 12  # 1 when the instrument has a price band
M_SEEN_LO = 13  # lowest limit price ever accepted (unbanded books: the ladder span rule)
M_SEEN_HI = 14  # highest; SEEN_HI < SEEN_LO means none yet
M_MAX_ROWS = 15  # widest ladder an unbanded book may grow to
M_NEV = 16  # events waiting in the output buffer (batch calls)
M_LAST = 17  # price (ticks) of the book's last trade, 0 before the first
M_REF = 18  # the instrument's reference price (ticks), 0 when it has none
M_PROTECT_BP = 19  # market protection in basis points of the last (else reference) price; 0: none
M_TRANCHES = 20  # the resting icebergs' peaks still hidden (each may make one more trade event): the event bound
M_STOPS = 21  # stop orders waiting for their trigger (they hold order slots: M_RESTING counts them too)
M_STOP_BUY = 22  # first slot of the buy stops, by ascending trigger then acceptance; -1: none
M_STOP_SELL = 23  # first slot of the sell stops, by descending trigger then acceptance; -1: none
M_NFIELDS = 24

NO_BID = -1
NO_ASK = MAX_PRICE_TICKS + 1

# Reasons the kernel returned before finishing its input; the wrapper fixes
# the cause (grows an array) and calls again from where it stopped.
NEED_NOTHING = 0
NEED_SLOTS = 1
NEED_LADDER = 2
NEED_EVENTS = 3
NEED_OIDS = 4

# --------------------------------------------------------------------------
# One book's state lives in a single int64 buffer, so that a call from Python
# unboxes one array instead of six.  buf[H_*] holds each region's offset and
# size; the kernels cut zero-copy views out of it.
# --------------------------------------------------------------------------
H_META = 0  # offset of meta (M_NFIELDS)
H_ORDS = 1  # offset of ords
H_SLOTS = 2  # rows of ords
H_LVL = 3  # offset of the ladder
H_ROWS = 4  # ladder rows
H_BITS = 5  # offset of the bitmap
H_WORDS = 6  # bitmap words
H_O2S = 7  # offset of o2s
H_OIDS = 8  # length of o2s
H_OUT = 9  # offset of the event buffer
H_EVENTS = 10  # rows of the event buffer
H_NFIELDS = 16

# Sizes.
WORD_BITS = 64
DEFAULT_SLOTS = 1 << 12
DEFAULT_EVENTS = 1 << 14
# An unbanded ladder grows to cover the prices it sees, up to this many rows
# (32 bytes each); an order further than that from the book is rejected.
MAX_LADDER_ROWS = 1 << 24
