"""The matcher's outbox: sequence numbers, the replay ring bounded by bytes."""

from __future__ import annotations

import os
from pathlib import Path

import nodes.matcher as matcher
from fabric.protocol import BookLevel, decode_pub
from fabric.publog import PubLog


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


def test_ranges_older_than_the_ring_come_from_the_published_file(tmp_path: Path) -> None:
    log = PubLog(tmp_path / "A.journal.published.log")
    out = matcher.Outbox(0, 0, None, ring_bytes=3_000, publog=log)
    bodies = [out.send(_level(i), b"BTCS\x00") for i in range(1, 5001)]
    out.flush()
    assert out.ring_first > 1000  # most of them left memory
    assert out.range(1, 5000) == bodies
    assert out.range(1023, 1026) == bodies[1022:1026]  # across an index block
    assert out.range(4999, 5000) == bodies[-2:]
    assert out.range(1, 5001) is None  # not published yet
    log.close()


def test_published_file_that_cannot_be_written_serves_nothing_and_the_outbox_goes_on(tmp_path: Path) -> None:
    log = PubLog(tmp_path / "p.log")
    out = matcher.Outbox(0, 0, None, ring_bytes=2_000, publog=log)
    out.send(_level(1), b"BTCS\x00")
    out.flush()
    os.close(log._fd)  # what a failing disk looks like to pwrite: an error
    out.send(_level(2), b"BTCS\x00")
    out.flush()
    assert log.failed is not None
    bodies = [out.send(_level(i), b"BTCS\x00") for i in range(3, 200)]
    assert out.range(199, 199) == bodies[-1:]  # the ring still serves what it holds
    assert out.range(1, 199) is None  # and the file nothing
    log._fd = -1
