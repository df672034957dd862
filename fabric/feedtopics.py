"""The ticker's feed on the wire: its topic frames, in one place for the ticker that publishes them and the
clients that subscribe (``docs/market-data.md``, section 3).

A feed message is two frames, ``[topic, body]``: the topic is a kind's letter (``q`` quote, ``d`` depth,
``b`` bars, ``s`` trading state), the symbol in UTF-8 and a NUL (``b"qTCS\\0"``), ``i`` and the index's name
for the market index (``b"iSENSEX\\0"``), ``b"m\\0"`` for the market's trading state, or ``b"h\\0"`` for the
heartbeat; the closing NUL keeps one symbol's topic from matching another it prefixes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HEARTBEAT_TOPIC", "KINDS", "KIND_OF", "MARKET_KINDS", "MARKET_TOPIC", "PREFIX", "feed_topic",
           "split_feed_topic"]

KINDS: Final = ("quote", "depth", "bars")  # a symbol's channels (its snapshot has one object of each)
MARKET_KINDS: Final = ("state", "market", "index")  # trading states and the index: whole objects, for everyone
PREFIX: Final = {"quote": b"q", "depth": b"d", "bars": b"b"}  # a kind's topic prefix: subscribe to it for all
KIND_OF: Final = {v[0]: k for k, v in PREFIX.items()}  # a topic's first byte -> its kind
MARKET_PREFIX: Final = {"state": b"s", "market": b"m", "index": b"i"}
HEARTBEAT_TOPIC: Final = b"h\x00"
MARKET_TOPIC: Final = b"m\x00"  # the market's trading state (key: none)


def feed_topic(kind: str, symbol: str) -> bytes:
    """Return the topic frame of ``kind`` ("quote", "depth", "bars", "state"; "index": ``symbol`` is the index's
    name; "market": no symbol) for ``symbol``: ``b"qTCS\\0"``."""
    return (PREFIX.get(kind) or MARKET_PREFIX[kind]) + symbol.encode() + b"\x00"


def split_feed_topic(topic: bytes) -> tuple[str, str]:
    """Return (kind, symbol) of a feed topic frame; ``("heartbeat", "")`` for the heartbeat topic.

    Raises
    ------
    ValueError
        When the frame is not a feed topic.
    """
    if topic == HEARTBEAT_TOPIC:
        return "heartbeat", ""
    if topic == MARKET_TOPIC:
        return "market", ""
    kind = (KIND_OF.get(topic[0]) or _MARKET_KIND_OF.get(topic[0])) if topic else None
    if kind is None or len(topic) < 3 or topic[-1] != 0:
        raise ValueError(f"not a feed topic: {topic!r}")
    return kind, topic[1:-1].decode()


_MARKET_KIND_OF: Final = {v[0]: k for k, v in MARKET_PREFIX.items() if k != "market"}
