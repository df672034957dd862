"""The ticker's feed on the wire: its topic frames, in one place for the ticker that publishes them and the
clients that subscribe (``docs/market-data.md``, section 3).

A feed message is two frames, ``[topic, body]``: the topic is a kind's letter (``q`` quote, ``d`` depth,
``b`` bars), the symbol in UTF-8 and a NUL (``b"qTCS\\0"``), or ``b"h\\0"`` for the heartbeat; the closing NUL
keeps one symbol's topic from matching another it prefixes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HEARTBEAT_TOPIC", "KINDS", "KIND_OF", "PREFIX", "feed_topic", "split_feed_topic"]

KINDS: Final = ("quote", "depth", "bars")
PREFIX: Final = {"quote": b"q", "depth": b"d", "bars": b"b"}  # a kind's topic prefix: subscribe to it for all
KIND_OF: Final = {v[0]: k for k, v in PREFIX.items()}  # a topic's first byte -> its kind
HEARTBEAT_TOPIC: Final = b"h\x00"


def feed_topic(kind: str, symbol: str) -> bytes:
    """Return the topic frame of ``kind`` ("quote", "depth" or "bars") for ``symbol``: ``b"qTCS\\0"``."""
    return PREFIX[kind] + symbol.encode() + b"\x00"


def split_feed_topic(topic: bytes) -> tuple[str, str]:
    """Return (kind, symbol) of a feed topic frame; ``("heartbeat", "")`` for the heartbeat topic.

    Raises
    ------
    ValueError
        When the frame is not a feed topic.
    """
    if topic == HEARTBEAT_TOPIC:
        return "heartbeat", ""
    kind = KIND_OF.get(topic[0]) if topic else None
    if kind is None or len(topic) < 3 or topic[-1] != 0:
        raise ValueError(f"not a feed topic: {topic!r}")
    return kind, topic[1:-1].decode()
