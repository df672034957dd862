"""A matcher's published messages on disk, to answer replays of ranges older than its memory holds.

Everything a shard publishes follows from its journal, so this file needs no
fsync and no recovery of its own: a matcher writes it afresh as it replays its
journal at start, then appends each batch's messages after publishing them.
The file is the messages' bytes exactly as published, one after the other; an
in-memory array holds where each one starts (8 bytes a message, against some
200 for a message kept in memory), so a range is one read.
"""

from __future__ import annotations

import itertools
import logging
import os
from array import array
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("exfab.publog")


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
        self._starts = array("q", [0])  # where message i + 1 starts; the last entry is the end of the file
        self.failed: str | None = None  # why the file can no longer be written (then it serves nothing)

    @property
    def count(self) -> int:
        """The messages written."""
        return len(self._starts) - 1

    def extend(self, bodies: Sequence[bytes]) -> None:
        """Write the next messages (their ``seq`` follow :attr:`count`); no fsync: the journal is durable."""
        if not bodies or self.failed is not None:
            return
        end = self._starts[-1]
        data = b"".join(bodies)
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(self._fd, data[done:] if done else data, end + done)
        except OSError as e:
            # A full disk: replays of ranges gone from memory are answered replay_unavailable from now on (the
            # snapshot fallback), and the matcher goes on.
            self.failed = str(e)
            log.error("published-message file %s cannot be written (%s): older ranges are no longer served",
                      self.path, e)
            return
        self._starts.extend(itertools.accumulate(map(len, bodies), initial=end))
        del self._starts[-len(bodies) - 1]  # `initial` repeated the old end

    def read(self, first: int, last: int) -> list[bytes] | None:
        """Return messages ``first`` .. ``last``, or ``None`` when the file does not hold them all."""
        if self.failed is not None or first < 1 or last > self.count or first > last:
            return None
        starts = self._starts
        base = starts[first - 1]
        data = os.pread(self._fd, starts[last] - base, base)
        return [data[starts[i] - base:starts[i + 1] - base] for i in range(first - 1, last)]

    def close(self) -> None:
        """Close the file (it stays on disk until the next start empties it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


__all__ = ["PubLog"]
