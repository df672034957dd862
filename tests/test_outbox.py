"""The matcher's outbox: sequence numbers, the replay ring bounded by bytes."""

from __future__ import annotations

import nodes.matcher as matcher
from fabric.protocol import BookLevel, decode_pub


def _level(i: int) -> BookLevel:
    return BookLevel(shard=0, seq=0, tseq=0, epoch=0, ts=i, symbol="TCS", side="buy", price=f"{100 + i}.00", qty=i,
                     count=1)


def test_ring_keeps_what_fits_its_bytes_and_serves_only_what_it_holds() -> None:
    out = matcher.Outbox(0, 0, None, ring_bytes=5_000)
    bodies = [out.send(_level(i), b"BTCS\x00") for i in range(1, 201)]
    assert out.seq == 200 and out.ring_bytes <= 5_000
    kept = len(out.ring)
    assert 10 < kept < 200 and out.ring_first == 200 - kept + 1
    assert out.range(out.ring_first, 200) == bodies[-kept:]
    assert out.range(out.ring_first - 1, 200) is None  # the oldest left: replay_unavailable
    last = decode_pub(out.range(200, 200)[0])  # type: ignore[index]
    assert (last.seq, last.tseq) == (200, 200)  # type: ignore[union-attr]
