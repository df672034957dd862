"""A matcher's published messages on disk, to answer replays of ranges older than its memory holds.

Everything a shard publishes follows from its journal, so this file needs no
fsync and no recovery of its own: a matcher writes it afresh as it replays its
journal at start, then appends each batch's messages after publishing them.
Records are a 4-byte little-endian length and the message's bytes, exactly as
published; an in-memory index holds the offset of every ``INDEX_EVERY``-th
message, so a range is one seek and one sequential read.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

log = logging.getLogger("exfab.publog")

INDEX_EVERY = 1024
_LEN = struct.Struct("<I")


class PubLog:
    """The published messages of one shard, seq 1 onwards, in one file written anew at start.

    Parameters
    ----------
    path
        The file; created or emptied.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self._buf = bytearray()
        self._end = 0  # bytes written to the file
        self._index: list[int] = []  # offset of message 1, 1 + INDEX_EVERY, ...
        self.count = 0  # messages added
        self.failed: str | None = None  # why the file can no longer be written (then it serves nothing)

    def add(self, body: bytes) -> None:
        """Add the next message (its ``seq`` is :attr:`count` + 1)."""
        if self.count % INDEX_EVERY == 0:
            self._index.append(self._end + len(self._buf))
        self._buf += _LEN.pack(len(body))
        self._buf += body
        self.count += 1

    def flush(self) -> None:
        """Write what was added to the file (no fsync: the journal is what is durable)."""
        if not self._buf or self.failed is not None:
            return
        data, self._buf = bytes(self._buf), bytearray()
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(self._fd, data[done:], self._end + done)
        except OSError as e:
            # A full disk: replays of older ranges are answered replay_unavailable from now on (the snapshot
            # fallback), and the matcher goes on.
            self.failed = str(e)
            log.error("published-message file %s cannot be written (%s): older ranges are no longer served", self.path,
                      e)
            return
        self._end += len(data)

    def read(self, first: int, last: int) -> list[bytes] | None:
        """Return messages ``first`` .. ``last``, or ``None`` when the file does not hold them all."""
        if self.failed is not None or first < 1 or last > self.count or first > last:
            return None
        self.flush()
        if self.failed is not None:
            return None
        block = (first - 1) // INDEX_EVERY
        start = self._index[block]
        stop = self._index[(last - 1) // INDEX_EVERY + 1] if (last - 1) // INDEX_EVERY + 1 < len(self._index) else (
            self._end)
        data = os.pread(self._fd, stop - start, start)
        out: list[bytes] = []
        off, seq = 0, block * INDEX_EVERY + 1
        while seq <= last:
            (n,) = _LEN.unpack_from(data, off)
            off += 4
            if seq >= first:
                out.append(data[off:off + n])
            off += n
            seq += 1
        return out

    def close(self) -> None:
        """Close the file (it stays on disk until the next start empties it)."""
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


__all__ = ["INDEX_EVERY", "PubLog"]
