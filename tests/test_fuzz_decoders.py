"""Hostile input to the pure decoders: every input decodes or is refused with the module's error and a reason.

The wire codec (``fabric/protocol.py``: every family, both codecs), the PUB and feed topic frames, the market data
client's feed and snapshot readers (``fabric/marketdata.py``, fed by hand: no sockets are read) and the replay
file's parser (``tools/replay.py``).  ``tests/test_protocol.py`` fuzzes the two codecs against each other with
small objects; these cases push the edges instead: integers at and past 64 bits, NaN and infinities, strings of
a megabyte, nesting deeper than any decoder's stack, unknown enum values, binary where text belongs.  Each test
is derandomized (the same examples in every run, so CI is reproducible) and bounded to a few seconds.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric import protocol as p
from fabric.feedtopics import split_feed_topic
from fabric.marketdata import MarketDataClient, _check, _Malformed, _unpack
from fabric.protocol import PROTOCOL_REASONS, ProtocolError
from tests.test_protocol import SAMPLES
from tools.replay import Replayer

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DECODERS = {"client": p.decode_client, "client_plain": p.decode_client_plain, "server": p.decode_server,
            "pub": p.decode_pub, "iter_pub": p.iter_pub, "internal": p.decode_internal}
FIELDS = sorted({f for ms in SAMPLES.values() for m in ms for f in m.__struct_fields__} | {"t", "v"})
TAGS = sorted({str(m.__struct_config__.tag) for ms in SAMPLES.values() for m in ms})

# Values a hostile peer puts where a field is expected.
edge_ints = st.sampled_from([0, -1, 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 2**64 - 1])
hostile = (st.none() | st.booleans() | edge_ints | st.integers(-(2**63), 2**64 - 1)
           | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324])
           | st.sampled_from(["", "x" * 70_000, "é" * 40, "\x00", "3500.05\n", "-1", "1e5", "NaN", "inf", "１２３",
                              "buy ", "BUY", "limit\x00", "GTC", "gtc", "stop", "iceberg", "sell"])
           | st.text(max_size=30) | st.binary(max_size=30)
           | st.sampled_from([msgpack.ExtType(1, b"x"), msgpack.Timestamp(2**34, 0)]))
values = st.recursive(hostile, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=4),
                      max_leaves=8)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _refused_well(decode: Any, data: bytes) -> None:
    # A message, or a ProtocolError with a known reason and a text; never any other exception.
    try:
        decode(data)
    except ProtocolError as e:
        assert e.reason in PROTOCOL_REASONS, e.reason
        assert e.text.strip(), "a refusal says what was wrong"


@st.composite
def hostile_messages(draw: st.DrawFn) -> bytes:
    # A valid message of some family with hostile values in some of its fields (or new ones), maybe retagged.
    family = draw(st.sampled_from(sorted(SAMPLES)))
    raw = msgpack.unpackb(p.encode(draw(st.sampled_from(SAMPLES[family]))))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(raw)) | st.sampled_from(FIELDS))
        raw[key] = draw(values)
    if draw(st.booleans()):
        raw["t"] = draw(st.sampled_from(TAGS))
    return _pack(raw)


@FUZZ
@given(hostile_messages(), st.sampled_from(sorted(DECODERS)))
def test_hostile_field_values_are_decoded_or_refused_with_a_reason(data: bytes, decoder: str) -> None:
    _refused_well(DECODERS[decoder], data)


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(sorted(DECODERS)))
def test_random_bytes_are_refused_with_a_reason(data: bytes, decoder: str) -> None:
    _refused_well(DECODERS[decoder], data)


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("data", [
    b"\x91" * 100_000,  # arrays nested 100,000 deep: deeper than any stack
    b"\x81\xa1t" * 50_000 + b"\xc0",  # maps nested as deep
    b"\xdd\xff\xff\xff\xff",  # an array that says it holds 4 billion items, then ends
    b"\xdf\xff\xff\xff\xff",  # a map that says the same
    b"\xdb\xff\xff\xff\xff",  # a string of 4 GB announced
    b"\xc6\x7f\xff\xff\xff",  # binary of 2 GB announced
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # a NaN double, alone
    b"",
], ids=["nested-arrays", "nested-maps", "huge-array", "huge-map", "huge-str", "huge-bin", "nan", "empty"])
def test_pathological_msgpack_is_refused_quickly(data: bytes, decoder: str) -> None:
    with pytest.raises(ProtocolError) as e:
        DECODERS[decoder](data)
    assert e.value.reason in ("malformed", "message_too_large"), e.value


@pytest.mark.parametrize("field", ["qty", "oid", "symbol", "side", "type", "tif", "price"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1.5, "x" * 1000, b"TCS", [1], {"a": 1}, None, True],
                         ids=["nan", "inf", "-inf", "float", "1k-str", "bin", "list", "map", "nil", "bool"])
def test_every_order_field_refuses_wrong_types_with_bad_field_naming_it(field: str, value: Any) -> None:
    raw = {"t": "new", "v": 1, "oid": "o1", "symbol": "TCS", "side": "buy", "type": "limit", "price": "3500.05",
           "qty": 10, "tif": "GTC", field: value}
    with pytest.raises(ProtocolError) as e:
        p.decode_client(_pack(raw))
    if value is None and field != "price":
        assert e.value.reason == "bad_field"
    assert e.value.reason in ("bad_field", "missing_field") and e.value.field == field, e.value
    assert isinstance(e.value.answer(), p.Rejected if field != "oid" else p.Error | p.Rejected)


@pytest.mark.parametrize(("field", "value"), [("side", "short"), ("type", "stop"), ("tif", "GTT"), ("tif", "gtc"),
                                              ("side", "BUY")])
def test_unknown_enum_values_are_bad_field(field: str, value: str) -> None:
    raw = {"t": "new", "oid": "o1", "symbol": "TCS", "side": "buy", "type": "limit", "price": "1.00", "qty": 1,
           "tif": "GTC", field: value}
    with pytest.raises(ProtocolError) as e:
        p.decode_client(_pack(raw))
    assert (e.value.reason, e.value.field, e.value.oid) == ("bad_field", field, "o1")


def test_a_one_megabyte_message_is_too_large_before_it_is_read() -> None:
    raw = {"t": "new", "oid": "o1", "symbol": "x" * (1 << 20), "side": "buy", "type": "market", "qty": 1,
           "tif": "IOC"}
    with pytest.raises(ProtocolError) as e:
        p.decode_client(_pack(raw))
    assert e.value.reason == "message_too_large"


# --------------------------------------------------------------------------
# Topic frames: the matchers' PUB and the ticker's feed
# --------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=80) | st.builds(lambda k, b: k + b, st.sampled_from([b"X", b"T", b"B", b"H", b"q", b"d",
                                                                               b"b", b"h"]), st.binary(max_size=20)))
def test_topic_frames_split_or_are_refused_with_the_documented_error(topic: bytes) -> None:
    try:
        kind, key = p.split_topic(topic)
        assert kind + key.encode() + b"\x00" == topic
    except ProtocolError as e:
        assert e.reason == "malformed"
    try:
        split_feed_topic(topic)
    except ValueError as e:  # the documented error (UnicodeDecodeError is one)
        assert str(e)


# --------------------------------------------------------------------------
# The market data client's readers: a hostile or broken ticker
# --------------------------------------------------------------------------

feed_values = st.recursive(hostile | st.sampled_from(["TCS", "INFY", "1m", "quote"]),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(["seq", "symbol", "prints", "trade_id", "bids", "asks",
                                                              "bars", "start", "trades", "last_ts", "ts", "t",
                                                              "symbols", "unknown", "quote", "depth", "1m"])
                                             | st.text(max_size=4), inner, max_size=5),
                           max_leaves=12)


@st.composite
def feed_bodies(draw: st.DrawFn) -> bytes:
    # Mostly well-shaped feed objects with hostile parts; sometimes anything at all.
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    obj: dict[Any, Any] = {"seq": draw(edge_ints | st.integers(-3, 5)), "symbol": "TCS", "trade_id": draw(edge_ints),
                           "prints": [{"trade_id": draw(edge_ints), "price": "1.00"}],
                           "bids": [], "asks": [], "bars": {"1m": [{"start": 1, "trades": draw(edge_ints)}]},
                           "ts": 5}
    for _ in range(draw(st.integers(0, 3))):
        obj[draw(st.sampled_from(sorted(obj, key=str)))] = draw(feed_values)
    return _pack(obj)


@pytest.fixture(scope="module")
def md_client() -> Any:
    # A client whose sockets point at nothing (its readers are driven by hand here).
    c = MarketDataClient("tcp://127.0.0.1:9", "tcp://127.0.0.1:9")
    yield c
    c.close()


@FUZZ
@given(topic=st.sampled_from([b"qTCS\x00", b"dTCS\x00", b"bTCS\x00", b"h\x00", b"qINFY\x00", b"x\x00", b"q\xff\x00"]),
       body=feed_bodies(), extra=st.booleans())
def test_feed_messages_are_applied_or_refused_as_malformed(md_client: MarketDataClient, topic: bytes, body: bytes,
                                                           extra: bool) -> None:
    frames = [topic, body, b"more"] if extra else [topic, body]
    try:
        md_client._on_feed(frames, [], 0.0)
    except _Malformed as e:
        assert str(e)


@FUZZ
@given(feed_values, st.sampled_from(["quote", "depth", "bars"]))
def test_feed_object_check_refuses_only_as_malformed(obj: Any, kind: str) -> None:
    try:
        msg = _unpack(_pack(obj))
        _check(kind, "TCS", msg)
    except _Malformed as e:
        assert str(e)


@st.composite
def snapshot_answers(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return _pack(draw(feed_values))
    objs = {k: {"seq": draw(edge_ints | st.integers(0, 3)), "trade_id": draw(edge_ints), "bars": {}, "prints": []}
            for k in ("quote", "depth", "bars")}
    for _ in range(draw(st.integers(0, 3))):
        objs[draw(st.sampled_from(["quote", "depth", "bars"]))] = draw(feed_values)
    answer: dict[str, Any] = {"t": draw(st.sampled_from(["snapshot", "error", "x"])), "v": 1,
                              "symbols": draw(st.sampled_from([{"TCS": objs}, {"INFY": objs, "TCS": []}, [], None])),
                              "unknown": draw(st.sampled_from([[], ["ZZZ"], "ZZZ", [1, None]]))}
    return _pack(answer)


@FUZZ
@given(snapshot_answers())
def test_snapshot_answers_are_applied_or_refused_as_malformed(md_client: MarketDataClient, body: bytes) -> None:
    try:
        md_client._on_answer(body, [])
    except _Malformed as e:
        assert str(e)


# --------------------------------------------------------------------------
# The replay file (docs/replay.md): every line gives events; a bad one a `rejected` event with a reason
# --------------------------------------------------------------------------

replay_fields = st.sampled_from(["op", "oid", "broker", "symbol", "side", "type", "qty", "price", "tif", "tick", "lot",
                                 "ref_price", "band_pct"])
replay_values = (st.none() | st.booleans() | edge_ints | st.integers(-5, 5)
                 | st.sampled_from(["new", "cancel", "replace", "instrument", "end_of_day", "buy", "sell", "limit",
                                    "market", "GTC", "ioc", "FOK", "TCS", "o1", "B1", "1.00", "0.05", "-1", "0",
                                    "1e400", "NaN", "Infinity", "99999999999999999999.5", "0.000000000001", "x" * 5000])
                 | st.floats(allow_nan=False) | st.text(max_size=8))


@st.composite
def replay_lines(draw: st.DrawFn) -> str:
    pick = draw(st.integers(0, 5))
    if pick == 0:
        return draw(st.text(max_size=60))
    if pick == 1:  # numbers JSON allows and Python's json does not write
        return draw(st.sampled_from(['{"op":"new","qty":1e999}', '{"op":"new","qty":-0}', "[" * 5000,
                                     '{"op":"instrument","symbol":"Z","tick":1e-400}', '{"op":"new","qty":NaN}',
                                     '{"op":"instrument","symbol":"W","tick":"0.00000001","ref_price":"1000000",'
                                     '"band_pct":"1000"}',
                                     '{"op":"instrument","symbol":"V","lot":9223372036854775807}']))
    base: dict[str, Any] = {"op": draw(st.sampled_from(["new", "cancel", "replace", "instrument", "end_of_day"])),
                            "oid": "o1", "broker": "B1", "symbol": draw(st.sampled_from(["TCS", "U", "V"])),
                            "side": "buy", "type": "limit", "qty": 10, "price": "100.00", "tif": "GTC"}
    for _ in range(draw(st.integers(0, 3))):
        base[draw(replay_fields)] = draw(replay_values)
    return json.dumps(base)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(replay_lines(), min_size=1, max_size=8))
def test_replay_lines_give_events_or_a_rejected_event_with_a_reason(lines: list[str]) -> None:
    r = Replayer()
    r.apply_line('{"op":"instrument","symbol":"TCS","tick":"0.05","ref_price":"100.00","band_pct":"10"}')
    r.apply_line('{"op":"instrument","symbol":"U"}')
    for i, text in enumerate(lines, 1):
        events = r.apply_line(text, i)
        for ev in events:
            if ev["event"] == "rejected":
                assert ev["reason"] and ev["text"], ev
    r.books()


def test_replay_line_nested_too_deeply_is_a_malformed_rejected_event() -> None:
    # Found by the fuzzer above: msgspec raised RecursionError out of apply_line and stopped the replay.
    (ev,) = Replayer().apply_line("[" * 5000, 3)
    assert (ev["event"], ev["reason"], ev["line"]) == ("rejected", "malformed", 3)
    assert "nested too deeply" in ev["text"]
