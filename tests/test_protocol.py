"""The wire protocol (fabric/protocol.py, docs/protocol.md): round trips, every reject reason, fuzzing."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabric import protocol as p
from fabric.constants import CANCEL_REASON_NAMES, REJECT_NAMES, SELL
from fabric.engine import MatchingEngine
from fabric.instruments import Instrument
from fabric.protocol import (
    Accepted,
    BookLevel,
    BookSnapshot,
    Cancel,
    Cancelled,
    CommandReply,
    Error,
    ExAccepted,
    ExCancelled,
    ExExpired,
    ExFill,
    Expired,
    ExRejected,
    ExReplaced,
    Fill,
    Heartbeat,
    Logon,
    LogonAck,
    LogonReject,
    Logout,
    New,
    OrderCommand,
    OrderStatus,
    ProtocolError,
    Rejected,
    Replace,
    Replaced,
    ReplayReply,
    ReplayRequest,
    SnapshotReply,
    SnapshotRequest,
    Status,
    Trade,
)
from fabric.reference import ReferenceBook

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
FAMILIES = {"client": p._CLIENT, "server": p._SERVER, "pub": p._PUB, "internal": p._INTERNAL}
DECODERS = {"client": p.decode_client, "server": p.decode_server, "pub": p.decode_pub, "internal": p.decode_internal}
SEQ: dict[str, Any] = {"shard": 3, "seq": 41, "tseq": 7, "epoch": 2, "ts": 1_700_000_000_123_456_789}
NEW = New(oid="o1", symbol="TCS", side="buy", type="limit", price="3500.05", qty=10, tif="GTC")

SAMPLES: dict[str, list[Any]] = {
    "client": [
        Logon(broker="B1", secret="s3cret", heartbeat_ms=2000),
        Logon(broker="B2"),
        NEW,
        New(oid="o2", symbol="TCS", side="sell", type="market", qty=5, tif="IOC"),
        New(oid="o5", symbol="TCS", side="buy", type="limit", price="3499.00", qty=5, tif="GTD", post_only=True,
            expire_date="2026-12-31"),
        New(oid="o6", symbol="TCS", side="sell", type="limit", price="3501.00", qty=30, tif="DAY", disclosed_qty=10),
        New(oid="o7", symbol="TCS", side="sell", type="limit", price="3480.00", qty=5, tif="DAY", stop_price="3485.00"),
        New(oid="o8", symbol="TCS", side="buy", type="market", qty=5, tif="DAY", stop_price="3520.00"),
        Replace(oid="o7", symbol="TCS", stop_price="3482.50"),
        Cancel(oid="o1", symbol="TCS"),
        Replace(oid="o1", symbol="TCS", price="3500.10", qty=8),
        Replace(oid="o1", symbol="TCS", qty=4),
        Status(oid="o1", symbol="TCS"),
        Heartbeat(),
        Logout(),
        p.Orders(),
        p.Orders(symbol="TCS"),
        p.Admin(action="halt", symbol="TCS", text="news pending"),
        p.Admin(action="disable", broker="B2"),
        p.Admin(action="halt", text="index down 10%", until=1_760_000_000_000_000_000),
        p.Admin(action="disconnected", broker="B1"),
    ],
    "server": [
        LogonAck(broker="B1", heartbeat_ms=2000),
        LogonReject(reason="auth_failed", text="unknown broker B9"),
        Accepted(oid="o1", symbol="TCS", side="buy", type="limit", price="3500.05", qty=10, tif="GTC", ts=5),
        Accepted(oid="o2", symbol="TCS", side="sell", type="market", qty=5, tif="IOC"),
        Accepted(oid="o5", symbol="TCS", side="buy", type="limit", price="3499.00", qty=5, tif="GTD", post_only=True,
                 expire_date="2026-12-31", disclosed_qty=5),
        Accepted(oid="o7", symbol="TCS", side="sell", type="limit", price="3480.00", qty=5, tif="DAY",
                 stop_price="3485.00"),
        p.Triggered(oid="o7", symbol="TCS", side="sell", type="limit", price="3480.00", qty=5, stop_price="3485.00",
                    ts=8),
        p.Triggered(oid="o8", symbol="TCS", side="buy", type="market", qty=5, stop_price="3520.00"),
        Replaced(oid="o8", symbol="TCS", price=None, qty=5, leaves_qty=5, cum_qty=0, kept_priority=False,
                 stop_price="3515.00"),
        Rejected(op="new", oid="o3", symbol="TCS", reason="price_out_of_band", text="price 9.00 is outside"),
        Rejected(op="new", oid="o4", reason="bad_field", text="field 'qty' must be an integer", field="qty"),
        Fill(oid="o1", symbol="TCS", side="buy", price="3500.05", last_qty=5, cum_qty=5, leaves_qty=5, trade_id=1,
             aggressor=False, ts=6),
        Cancelled(oid="o1", symbol="TCS", qty=5, cum_qty=5, reason="requested"),
        Replaced(oid="o1", symbol="TCS", price="3500.10", qty=8, leaves_qty=3, cum_qty=5, kept_priority=False),
        Expired(oid="o1", symbol="TCS", qty=3, cum_qty=5, ts=7),
        OrderStatus(op="status", oid="o1", symbol="TCS", state="partially_filled", side="buy", type="limit",
                    price="3500.05", qty=10, cum_qty=5, leaves_qty=5, tif="GTC"),
        OrderStatus(op="new", oid="o9", symbol="TCS", state="unknown"),
        OrderStatus(op="status", oid="o7", symbol="TCS", state="new", side="sell", type="limit", price="3480.00",
                    qty=5, leaves_qty=5, tif="DAY", stop_price="3485.00", triggered=False),
        Heartbeat(),
        Logout(reason="heartbeat_timeout", text="nothing received for 6000 ms"),
        Error(reason="malformed", text="a message must be a map, got array of 2"),
        p.AdminAck(action="disable", broker="B2", cancelled=3),
        p.OpenOrders(orders=[OrderStatus(op="orders", oid="o1", symbol="TCS", state="new", side="buy", type="limit",
                                         price="3500.05", qty=10, leaves_qty=10, tif="GTC")]),
    ],
    "pub": [
        ExAccepted(**SEQ, broker="B1", oid="o1", symbol="TCS", side="buy", type="limit", price="3500.05", qty=10,
                   tif="GTC"),
        ExRejected(**SEQ, broker="B1", op="cancel", oid="o1", symbol="TCS", reason="order_closed",
                   text="order o1 is no longer open"),
        ExFill(**SEQ, broker="B2", oid="o2", symbol="TCS", side="sell", price="3500.05", last_qty=5, cum_qty=5,
               leaves_qty=0, trade_id=1, aggressor=True),
        ExCancelled(**SEQ, broker="B1", oid="o1", symbol="TCS", qty=3, cum_qty=5, reason="requested"),
        ExReplaced(**SEQ, broker="B1", oid="o1", symbol="TCS", price="3500.10", qty=8, leaves_qty=3, cum_qty=5,
                   kept_priority=True),
        ExExpired(**SEQ, broker="B1", oid="o1", symbol="TCS", qty=3, cum_qty=5),
        Trade(**SEQ, symbol="TCS", trade_id=1, price="3500.05", qty=5, aggressor="sell", buy_broker="B1",
              buy_oid="o1", sell_broker="B2", sell_oid="o2"),
        BookLevel(**SEQ, symbol="TCS", side="buy", price="3500.05", qty=0, count=0),
        p.PubHeartbeat(**dict(SEQ, tseq=0)),
        p.TradingState(**SEQ, symbol=None, state="halted", reason="circuit_breaker", text="index down 10%",
                       until=1_700_000_000_000_000_000),
        p.SessionEvent(**SEQ, kind="auction", phase="auction", symbol="TCS", price="3500.05", qty=60, unmatched=10),
        p.SessionEvent(**SEQ, kind="phase", phase="closing", entry=True),  # the closing session opens
        p.PubBundle(msgs=[p.encode(ExAccepted(**SEQ, broker="B1", oid="o1", symbol="TCS", side="buy", type="limit",
                                              price="3500.05", qty=10, tif="GTC"))]),
        ExAccepted(**SEQ, broker="B1", oid="o7", symbol="TCS", side="sell", type="limit", price="3480.00", qty=5,
                   tif="DAY", stop_price="3485.00"),
        p.ExTriggered(**SEQ, broker="B1", oid="o7", symbol="TCS", side="sell", type="limit", price="3480.00", qty=5,
                      stop_price="3485.00"),
        ExReplaced(**SEQ, broker="B1", oid="o8", symbol="TCS", price=None, qty=5, leaves_qty=5, cum_qty=0,
                   kept_priority=True, stop_price="3515.00"),
    ],
    "internal": [
        OrderCommand(gateway="gw1", req=17, broker="B1", cmd=NEW),
        OrderCommand(gateway="gw1", req=18, broker="B1", cmd=Replace(oid="o1", symbol="TCS", price="3500.10")),
        OrderCommand(gateway="gw1", req=21, broker="ops", cmd=p.Admin(action="halt", symbol="TCS")),
        CommandReply(gateway="gw1", req=17, shard=3, epoch=2, in_seq=1001, first_seq=41, last_seq=44),
        CommandReply(gateway="gw1", req=19, shard=3, epoch=2,
                     status=OrderStatus(op="status", oid="o1", symbol="TCS", state="filled", qty=10, cum_qty=10)),
        CommandReply(gateway="gw1", req=20, shard=3, epoch=2, reason="not_primary", text="epoch 3 is current"),
        ReplayRequest(shard=3, first=40, last=44),
        ReplayReply(shard=3, first=40, last=41, msgs=[b"\x80", b"\x81\xa1t\xa4book"], done=False),
        ReplayReply(shard=3, first=1, last=5, msgs=[], done=True, reason="replay_unavailable", text="trimmed"),
        SnapshotRequest(shard=3),
        SnapshotRequest(shard=3, symbol="TCS"),
        p.ReplJoin(name="A-2", last_seq=41),
        p.ReplRecords(epoch=2, first=42, records=[b"\x81\xa1t\xa3new"], live=True),
        p.ReplAck(name="A-2", last_seq=42),
        SnapshotReply(shard=3, seq=45, epoch=2, exec_tseq=30, books=[], states=[  # (the ticker's market-index part)
            p.TradingState(**SEQ, symbol="TCS", state="halted", reason="operator", text="news pending")]),
        OrderCommand(gateway="gw1", req=22, broker="OPS-TICKER",
                     cmd=p.Admin(action="halt", until=1_700_000_000_000_000_000, text="circuit breaker 10 %")),
        p.ReplRefused(reason="not_primary", text="A-1 is not the primary of shard A"),
        SnapshotReply(shard=3, seq=44, epoch=2, exec_tseq=30, books=[
            BookSnapshot(symbol="TCS", bids=[("3500.00", 15, 2), ("3499.95", 1, 1)], asks=[("3500.50", 2, 1)],
                         trade_id=9, book_tseq=12, trade_tseq=9),
            BookSnapshot(symbol="INFY", bids=[], asks=[], trade_id=0, book_tseq=0, trade_tseq=0,
                         ref_price="1612.30")]),  # (its reference: the last close)
        SnapshotReply(shard=0, seq=45, epoch=0, exec_tseq=31, books=[], states=[
            p.TradingState(**SEQ, symbol="TCS", state="halted", reason="operator", text="news pending")]),
        p.OrderBatch(cmds=[OrderCommand(gateway="gw1", req=7, broker="B1", cmd=NEW)]),
        p.ReplyBatch(replies=[CommandReply(gateway="gw1", req=7, shard=0, epoch=0, in_seq=3, first_seq=4,
                                           last_seq=6)]),
    ],
}


def _outcome(fn: Any, data: bytes) -> Any:
    try:
        return fn(data)
    except ProtocolError as e:
        return ("error", e.reason, e.field)


def _both(data: bytes, family: str = "client") -> Any:
    # The codec and the plain codec must give the same message or the same error.
    fast = _outcome(DECODERS[family], data)
    plain = _outcome(lambda d: p._decode_plain(d, FAMILIES[family]), data)
    assert fast == plain, (fast, plain)
    return fast


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "msg"), [(f, m) for f, ms in SAMPLES.items() for m in ms],
                         ids=lambda x: x if isinstance(x, str) else type(x).__name__)
def test_every_message_round_trip_gives_equal_message(family: str, msg: Any) -> None:
    data = p.encode(msg)
    assert DECODERS[family](data) == msg
    assert p._decode_plain(data, FAMILIES[family]) == msg
    assert p.encode_plain(msg) == data
    raw = msgpack.unpackb(data)
    assert list(raw)[:2] == ["t", "v"] and raw["v"] == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_samples_cover_every_message_type(family: str) -> None:
    assert {type(m) for m in SAMPLES[family]} == set(FAMILIES[family].types)


def test_new_frozen_bytes_do_not_drift() -> None:
    frozen = bytes.fromhex(
        "89a174a36e6577a17601a36f6964a26f31a673796d626f6ca3544353a473696465a3627579a474797065a56c696d6974"
        "a57072696365a7333530302e3035a3717479"
        "0a"
        "a3746966a3475443")
    assert p.encode(NEW) == frozen
    assert p.decode_client(frozen) == NEW
    assert msgpack.unpackb(frozen) == {"t": "new", "v": 1, "oid": "o1", "symbol": "TCS", "side": "buy",
                                       "type": "limit", "price": "3500.05", "qty": 10, "tif": "GTC"}


def test_plain_msgpack_map_in_any_key_order_decodes() -> None:
    raw = {"tif": "GTC", "qty": 10, "price": "3500.05", "type": "limit", "side": "buy", "symbol": "TCS",
           "oid": "o1", "v": 1, "t": "new"}
    assert _both(msgpack.packb(raw)) == NEW


def test_missing_version_reads_as_version_1() -> None:
    raw = {"t": "cancel", "oid": "o1", "symbol": "TCS"}
    assert _both(msgpack.packb(raw)) == Cancel(oid="o1", symbol="TCS")


def test_optional_field_as_nil_or_absent_decodes_the_same() -> None:
    base = {"t": "new", "v": 1, "oid": "o2", "symbol": "TCS", "side": "sell", "type": "market", "qty": 5,
            "tif": "IOC"}
    assert _both(msgpack.packb(base)) == _both(msgpack.packb(dict(base, price=None)))


def test_snapshot_book_without_ref_price_from_an_older_matcher_decodes_as_nil() -> None:
    snap = next(m for m in SAMPLES["internal"] if isinstance(m, SnapshotReply) and len(m.books) == 2)
    assert snap.books[1].ref_price == "1612.30"
    raw = msgpack.unpackb(p.encode(snap))
    for book in raw["books"]:
        book.pop("ref_price")
    old = _both(msgpack.packb(raw), "internal")
    assert [b.ref_price for b in old.books] == [None, None]
    assert old.books[1] == msgspec.structs.replace(snap.books[1], ref_price=None)


def test_large_uint64_qty_passes_type_check_for_the_engine_to_judge() -> None:
    raw = msgpack.unpackb(p.encode(NEW))
    assert _both(msgpack.packb(dict(raw, qty=2**64 - 1))).qty == 2**64 - 1
    assert _both(msgpack.packb(dict(raw, qty=-5))).qty == -5


def test_memoryview_and_bytearray_input_decode() -> None:
    data = p.encode(NEW)
    assert p.decode_client(memoryview(data)) == NEW
    assert p.decode_client(bytearray(data)) == NEW


def test_price_decimal_is_exact() -> None:
    assert p.price_decimal(_both(p.encode(NEW)).price) == Decimal("3500.05")


# --------------------------------------------------------------------------
# Every ProtocolError reason
# --------------------------------------------------------------------------

GOOD_NEW: dict[str, Any] = msgpack.unpackb(p.encode(NEW))


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD_NEW.items() if k != key}


ERROR_CASES: list[tuple[str, Any, str, str | None]] = [
    # (id, raw bytes or object to pack, reason, field)
    ("too_large", b"\x80" + b"\x00" * p.MAX_CLIENT_MESSAGE, "message_too_large", None),
    ("not_msgpack", b"\xc1", "malformed", None),
    ("empty_bytes", b"", "malformed", None),
    ("truncated", p.encode(NEW)[:-3], "malformed", None),
    ("trailing_bytes", p.encode(NEW) + b"\x00", "malformed", None),
    ("bad_utf8", b"\x81\xa1t\xa2\xff\xfe", "malformed", None),
    ("not_a_map", [1, 2], "malformed", None),
    ("a_string", "new", "malformed", None),
    ("int_key", {"t": "cancel", "oid": "o1", "symbol": "TCS", 1: 2}, "malformed", None),
    ("version_2", dict(GOOD_NEW, v=2), "unsupported_version", "v"),
    ("version_2_unknown_type", {"t": "new_v2_thing", "v": 2}, "unsupported_version", "v"),
    ("version_string", dict(GOOD_NEW, v="1"), "unsupported_version", "v"),
    ("version_true", dict(GOOD_NEW, v=True), "unsupported_version", "v"),
    ("version_float", dict(GOOD_NEW, v=1.0), "unsupported_version", "v"),
    ("unknown_type", dict(GOOD_NEW, t="neworder"), "unknown_message_type", "t"),
    ("server_type_from_broker", {"t": "fill", "v": 1}, "unknown_message_type", "t"),
    ("type_not_string", dict(GOOD_NEW, t=1), "unknown_message_type", "t"),
    ("no_type", _without("t"), "missing_field", "t"),
    ("no_oid", _without("oid"), "missing_field", "oid"),
    ("no_qty", _without("qty"), "missing_field", "qty"),
    ("limit_without_price", _without("price"), "missing_field", "price"),
    ("replace_without_change", {"t": "replace", "v": 1, "oid": "o1", "symbol": "TCS"}, "missing_field", "price"),
    ("logon_without_broker", {"t": "logon", "v": 1}, "missing_field", "broker"),
    ("float_price", dict(GOOD_NEW, price=3500.05), "bad_field", "price"),
    ("int_price", dict(GOOD_NEW, price=3500), "bad_field", "price"),
    ("exponent_price", dict(GOOD_NEW, price="3.5e3"), "bad_field", "price"),
    ("negative_price", dict(GOOD_NEW, price="-1.00"), "bad_field", "price"),
    ("nan_price", dict(GOOD_NEW, price="NaN"), "bad_field", "price"),
    ("price_newline", dict(GOOD_NEW, price="1.00\n"), "bad_field", "price"),
    ("price_unicode_digits", dict(GOOD_NEW, price="\u0661\u0662"), "bad_field", "price"),
    ("price_nine_decimals", dict(GOOD_NEW, price="1.000000001"), "bad_field", "price"),
    ("market_with_price", dict(GOOD_NEW, type="market", tif="IOC"), "bad_field", "price"),
    ("float_qty", dict(GOOD_NEW, qty=10.0), "bad_field", "qty"),
    ("bool_qty", dict(GOOD_NEW, qty=True), "bad_field", "qty"),
    ("string_qty", dict(GOOD_NEW, qty="10"), "bad_field", "qty"),
    ("nil_oid", dict(GOOD_NEW, oid=None), "bad_field", "oid"),
    ("empty_oid", dict(GOOD_NEW, oid=""), "bad_field", "oid"),
    ("long_oid", dict(GOOD_NEW, oid="x" * 65), "bad_field", "oid"),
    ("binary_symbol", dict(GOOD_NEW, symbol=b"TCS"), "bad_field", "symbol"),
    ("upper_side", dict(GOOD_NEW, side="BUY"), "bad_field", "side"),
    ("bad_type", dict(GOOD_NEW, type="stop"), "bad_field", "type"),
    ("lower_tif", dict(GOOD_NEW, tif="gtc"), "bad_field", "tif"),
    ("unknown_field", dict(GOOD_NEW, account="A1"), "bad_field", "account"),
    ("heartbeat_too_fast", {"t": "logon", "v": 1, "broker": "B1", "heartbeat_ms": 10}, "bad_field", "heartbeat_ms"),
    ("heartbeat_with_field", {"t": "heartbeat", "v": 1, "ts": 5}, "bad_field", "ts"),
]


@pytest.mark.parametrize(("raw", "reason", "field"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_client_message_gives_specific_protocol_error(raw: Any, reason: str, field: str | None) -> None:
    data = raw if isinstance(raw, bytes) else msgpack.packb(raw)
    assert _both(data) == ("error", reason, field)


def test_every_protocol_reason_has_a_case() -> None:
    decode_reasons = {"malformed", "unsupported_version", "unknown_message_type", "missing_field", "bad_field",
                      "message_too_large"}
    assert {c[2] for c in ERROR_CASES} == decode_reasons
    assert decode_reasons <= set(p.PROTOCOL_REASONS)


def test_bad_field_text_names_field_and_what_was_wrong() -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_client(msgpack.packb(dict(GOOD_NEW, price=3500.05)))
    e = info.value
    assert "'price'" in e.text and "decimal string" in e.text and "float 3500.05" in e.text
    assert (e.op, e.oid, e.symbol) == ("new", "o1", "TCS")


def test_broken_order_with_readable_oid_is_answered_rejected() -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_client(msgpack.packb(dict(GOOD_NEW, qty="ten")))
    answer = info.value.answer()
    assert answer == Rejected(op="new", oid="o1", symbol="TCS", reason="bad_field", text=info.value.text, field="qty")
    assert p.decode_server(p.encode(answer)) == answer


def test_broken_logon_is_answered_logon_reject() -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_client(msgpack.packb({"t": "logon", "v": 1, "broker": ""}))
    assert isinstance(info.value.answer(), LogonReject)


def test_unreadable_message_is_answered_error() -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_client(b"\xc1")
    answer = info.value.answer()
    assert isinstance(answer, Error) and answer.reason == "malformed"


def test_nested_command_error_names_the_dotted_field() -> None:
    raw = msgpack.unpackb(p.encode(SAMPLES["internal"][0]))
    raw["cmd"]["price"] = 1.5
    assert _both(msgpack.packb(raw), "internal") == ("error", "bad_field", "cmd.price")
    raw["cmd"] = dict(raw["cmd"], type="market", tif="IOC", price="1.00")
    assert _both(msgpack.packb(raw), "internal") == ("error", "bad_field", "cmd.price")
    raw["cmd"] = {"t": "logon", "v": 1, "broker": "B1"}
    assert _both(msgpack.packb(raw), "internal") == ("error", "unknown_message_type", "cmd.t")


def test_replay_request_backwards_range_is_bad_field() -> None:
    data = msgpack.packb({"t": "replay_request", "v": 1, "shard": 0, "first": 9, "last": 3})
    assert _both(data, "internal") == ("error", "bad_field", "last")


def test_internal_message_limit_is_larger_than_client_limit() -> None:
    big = ReplayReply(shard=1, first=1, last=1, msgs=[b"\x00" * (p.MAX_CLIENT_MESSAGE * 2)], done=True)
    assert p.decode_internal(p.encode(big)) == big
    assert _both(b"\x80" * (p.MAX_INTERNAL_MESSAGE + 1), "internal") == ("error", "message_too_large", None)


def test_answers_and_pub_ignore_unknown_fields_but_client_messages_refuse_them() -> None:
    fill = SAMPLES["server"][6]
    raw = dict(msgpack.unpackb(p.encode(fill)), venue="BSE")
    assert _both(msgpack.packb(raw), "server") == fill
    trade = SAMPLES["pub"][6]
    raw = dict(msgpack.unpackb(p.encode(trade)), conditions=["x"])
    assert _both(msgpack.packb(raw), "pub") == trade
    raw = dict(msgpack.unpackb(p.encode(SAMPLES["internal"][5])), extra=1)
    assert _both(msgpack.packb(raw), "internal") == ("error", "bad_field", "extra")


# --------------------------------------------------------------------------
# PUB frames and topics
# --------------------------------------------------------------------------


def test_pub_frames_are_topic_then_body() -> None:
    fill, trade, book = SAMPLES["pub"][2], SAMPLES["pub"][6], SAMPLES["pub"][7]
    assert p.encode_pub(fill) == [b"X3\x00", p.encode(fill)]
    assert p.encode_pub(trade) == [b"TTCS\x00", p.encode(trade)]
    assert p.encode_pub(book) == [b"BTCS\x00", p.encode(book)]
    assert p.split_topic(b"TTCS\x00") == (b"T", "TCS")
    assert p.split_topic(p.exec_topic(12)) == (b"X", "12")
    assert p.encode_pub(SAMPLES["pub"][8]) == [b"H3\x00", p.encode(SAMPLES["pub"][8])]


def test_topic_of_one_key_is_not_a_prefix_of_another() -> None:
    assert not p.trade_topic("TCSL").startswith(p.trade_topic("TCS"))
    assert not p.exec_topic(12).startswith(p.exec_topic(1))
    assert p.trade_topic("TCS").startswith(p.TRADE) and p.book_topic("TCS").startswith(p.BOOK)


@pytest.mark.parametrize("topic", [b"", b"T\x00", b"TTCS", b"QTCS\x00", b"T\xff\x00"])
def test_bad_topic_frame_is_malformed(topic: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        p.split_topic(topic)
    assert info.value.reason == "malformed"


def test_every_exec_report_as_published_reads_as_the_brokers_answer() -> None:
    # The gateway forwards a report's bytes as the matcher published them: a broker's decoder reads the answer
    # of the same `t`, every field of it equal, and passes over the stream's own fields.
    for report in SAMPLES["pub"][:6]:
        answer = p.decode_server(p.encode(report))
        assert type(answer).__struct_config__.tag == type(report).__struct_config__.tag
        for name in answer.__struct_fields__:
            if name not in ("v", "field"):
                assert getattr(answer, name) == getattr(report, name), name
    assert p.decode_server(p.encode(SAMPLES["pub"][2])) == Fill(
        oid="o2", symbol="TCS", side="sell", price="3500.05", last_qty=5, cum_qty=5, leaves_qty=0, trade_id=1,
        aggressor=True, ts=SEQ["ts"])


def test_engine_outcomes_are_valid_pub_messages_once_stamped() -> None:
    # The engine's outcomes are the PUB messages themselves: stamped, each encodes and decodes to itself.
    eng = MatchingEngine(book_factory=lambda i: ReferenceBook(lot=i.lot, band_lo=i.band_lo, band_hi=i.band_hi))
    eng.add_instrument(Instrument("TCS", tick=Decimal("0.05"), ref_price=Decimal("3500"), band_pct=Decimal("10")))
    msgs: list[Any] = [
        *eng.new_order("TCS", "B1", "o1", 0, 0, 0, Decimal("3500.05"), 10),
        *eng.new_order("TCS", "B2", "o2", SELL, 1, 2, None, 4),
        *eng.replace("TCS", "B1", "o1", Decimal("3500.10"), 8),
        *eng.new_order("TCS", "B1", "o3", 0, 0, 1, Decimal("3400.00"), 1),
        *eng.cancel("TCS", "B1", "o1"),
        *eng.cancel("TCS", "B1", "o1"),
        *eng.new_order("TCS", "B1", "o4", 0, 0, 0, Decimal("9999.00"), 1),
        *eng.end_of_day(),
    ]
    assert {type(m) for m in msgs} == {ExAccepted, ExRejected, ExFill, ExCancelled, ExReplaced, ExExpired, Trade}
    for m in msgs:
        for k, v in SEQ.items():
            setattr(m, k, v)
        assert _both(p.encode(m), "pub") == m


# --------------------------------------------------------------------------
# Fuzzing: any bytes give a message or a ProtocolError, the same from both codecs
# --------------------------------------------------------------------------

FIELD_NAMES = sorted({f for ms in SAMPLES.values() for m in ms for f in m.__struct_fields__} | {"t"})
TAGS = sorted({str(m.__struct_config__.tag) for ms in SAMPLES.values() for m in ms})

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12)
           | st.binary(max_size=12) | st.sampled_from(["3500.05", "0", "buy", "limit", "GTC", "o1", "TCS", *TAGS]))
objects = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6) | st.integers(-3, 3), inner, max_size=6),
    max_leaves=20)


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, bytes]:
    # A valid message of any family with a few fields dropped, replaced, added or its type switched.
    family = draw(st.sampled_from(sorted(SAMPLES)))
    raw = msgpack.unpackb(p.encode(draw(st.sampled_from(SAMPLES[family]))))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "set", "add", "retag"]))
        if action == "drop" and raw:
            raw.pop(draw(st.sampled_from(sorted(raw, key=str))))
        elif action in ("set", "add"):
            key = draw(st.sampled_from(sorted(raw))) if action == "set" and raw else draw(st.sampled_from(FIELD_NAMES))
            raw[key] = draw(objects)
        else:
            raw["t"] = draw(st.sampled_from(TAGS))
    return family, msgpack.packb(raw)


def _agree(data: bytes, family: str) -> None:
    fam = FAMILIES[family]
    try:
        fast: Any = fam.decode(data)
        if type(fast) in p._POST_CHECKED and not p._post_ok(fast):
            fast = "refused"
    except Exception:
        fast = "refused"
    plain = _outcome(lambda d: p._decode_plain(d, fam), data)
    if fast == "refused":  # the msgspec path refuses: the plain codec must refuse too (and names the reason)
        assert isinstance(plain, tuple), plain
        assert _outcome(DECODERS[family], data) == plain
    elif isinstance(plain, tuple) and plain[1] == "malformed":
        # Unknown fields of answers and PUB messages (and of an order status inside a command
        # reply) are skipped unread by msgspec, while msgpack.unpackb reads them and refuses
        # bad UTF-8 there: the only way the two may differ, and the codec's answer stands.
        with pytest.raises(ProtocolError, match="not one msgpack document: UnicodeDecodeError"):
            p._decode_plain(data, fam)
        assert _outcome(DECODERS[family], data) == fast
    else:
        assert fast == plain, (fast, plain)
        assert _outcome(DECODERS[family], data) == plain


@given(st.binary(max_size=300), st.sampled_from(sorted(FAMILIES)))
def test_random_bytes_give_only_protocol_errors(data: bytes, family: str) -> None:
    _agree(data, family)


@given(objects, st.sampled_from(sorted(FAMILIES)))
def test_random_msgpack_objects_give_only_protocol_errors(obj: Any, family: str) -> None:
    _agree(msgpack.packb(obj), family)


@given(near_valid())
def test_mutated_messages_give_same_result_from_both_codecs(case: tuple[str, bytes]) -> None:
    family, data = case
    _agree(data, family)


@given(st.sampled_from([p.encode(m) for ms in SAMPLES.values() for m in ms]),
       st.integers(0, 200), st.binary(min_size=1, max_size=4), st.sampled_from(sorted(FAMILIES)))
def test_corrupted_messages_give_only_protocol_errors(data: bytes, at: int, junk: bytes, family: str) -> None:
    at %= len(data)
    _agree(data[:at] + junk + data[at + len(junk):], family)
    _agree(data[:at], family)


@given(st.text(max_size=20))
def test_price_pattern_accepts_exactly_plain_decimals(text: str) -> None:
    plain_decimal = re.fullmatch(r"[0-9]{1,15}(\.[0-9]{1,8})?", text, flags=re.ASCII) is not None
    outcome = _outcome(p.decode_client, msgpack.packb(dict(GOOD_NEW, price=text)))
    assert (outcome == New(**dict(msgspec.structs.asdict(NEW), price=text))) is plain_decimal
    if plain_decimal:
        d = Decimal(text)
        assert d.is_finite() and d >= 0


def test_price_memory_stays_bounded_and_holds_only_good_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p, "_good_prices", set())
    for i in range(p._MAX_GOOD_PRICES + 10):
        assert p._price_ok(f"{i}.05")
        assert not p._price_ok(f"-{i}.05")
    assert 0 < len(p._good_prices) <= p._MAX_GOOD_PRICES
    assert all(p._price_match(x) for x in p._good_prices)


# --------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------


def test_protocol_doc_lists_every_reason_and_message_type() -> None:
    doc = DOC.read_text()
    for field in BookSnapshot.__struct_fields__:  # (a snapshot's books: a struct inside a message)
        assert f"`{field}`" in doc, ("BookSnapshot", field)
    for name in [*REJECT_NAMES.values(), *p.PROTOCOL_REASONS, *CANCEL_REASON_NAMES.values()]:
        assert f"`{name}`" in doc, name
    for tag in TAGS:
        assert f"`{tag}`" in doc, tag
    for ms in SAMPLES.values():
        for m in ms:
            for field in m.__struct_fields__:
                assert f"`{field}`" in doc, (type(m).__name__, field)


@pytest.mark.parametrize("cmd", [
    New(oid="o", symbol="S", side="buy", type="limit", price="1.00", qty=1, tif="GTC"),
    Cancel(oid="o", symbol="S"),
    Replace(oid="o", symbol="S", qty=5),
    Status(oid="o", symbol="S"),
])
def test_order_command_round_trips_every_command_kind(cmd: object) -> None:
    msg = OrderCommand(gateway="g", req=1, broker="B", cmd=cmd)  # type: ignore[arg-type]
    assert p.decode_internal(p.encode(msg)) == msg


@pytest.mark.parametrize("data", [b"\xc1", b"\xc1 not msgpack", b"\xd4"])
def test_undecodable_bytes_refusal_names_the_complaint_never_an_empty_text(data: bytes) -> None:
    with pytest.raises(ProtocolError) as e:
        p.decode_client(data)
    assert e.value.reason == "malformed"
    assert not e.value.text.rstrip().endswith(":"), e.value.text
    assert e.value.text.split(": ", 2)[-1].strip()


@pytest.mark.parametrize(("fields", "reason", "field"), [
    ({"type": "market", "tif": "IOC", "post_only": True}, "bad_field", "post_only"),
    ({"type": "market", "tif": "IOC", "disclosed_qty": 5}, "bad_field", "disclosed_qty"),
    ({"type": "limit", "price": "1.00", "tif": "GTC", "disclosed_qty": 0}, "bad_field", "disclosed_qty"),
    ({"type": "limit", "price": "1.00", "tif": "GTD"}, "missing_field", "expire_date"),
    ({"type": "limit", "price": "1.00", "tif": "DAY", "expire_date": "2026-01-05"}, "bad_field", "expire_date"),
    ({"type": "limit", "price": "1.00", "tif": "GTD", "expire_date": "5 Jan"}, "bad_field", "expire_date"),
    ({"type": "limit", "price": "1.00", "tif": "DAY", "stop_price": "-1"}, "bad_field", "stop_price"),
    ({"type": "market", "tif": "DAY", "stop_price": 1.5}, "bad_field", "stop_price"),
])
def test_new_order_type_fields_refused_with_the_field_named(fields: dict, reason: str, field: str) -> None:
    data = msgpack.packb({"t": "new", "v": 1, "oid": "o", "symbol": "S", "side": "buy", "qty": 1, **fields})
    with pytest.raises(ProtocolError) as e:
        p.decode_client(data)
    assert (e.value.reason, e.value.field) == (reason, field), e.value.text


def test_replace_of_only_a_stop_price_is_taken_and_nothing_at_all_refused() -> None:
    stop = Replace(oid="o", symbol="S", stop_price="1.05")
    assert p.decode_client(p.encode(stop)).stop() == "1.05" and p.encode_plain(stop) == p.encode(stop)
    assert "stop_price" not in msgpack.unpackb(p.encode(Replace(oid="o", symbol="S", qty=1)))
    with pytest.raises(ProtocolError) as e:
        p.decode_client(msgpack.packb({"t": "replace", "v": 1, "oid": "o", "symbol": "S"}))
    assert e.value.reason == "missing_field" and "stop_price" in e.value.text


def test_new_without_the_added_fields_encodes_them_not_at_all() -> None:
    plain = New(oid="o", symbol="S", side="buy", type="limit", price="1.00", qty=1, tif="GTC")
    assert "post_only" not in msgpack.unpackb(p.encode(plain)) and p.encode_plain(plain) == p.encode(plain)
    gtd = New(oid="o", symbol="S", side="buy", type="limit", price="1.00", qty=1, tif="GTD", post_only=True,
              expire_date="2026-01-05")
    assert p.decode_client(p.encode(gtd)).extras() == (True, "2026-01-05", 0)
