"""The matcher's journal: an append-only file of sequenced inputs, one per shard.

The matcher appends every input it sequences before it processes it, and
commits (writes to the operating system, and fsyncs as the policy says) before
anything the input caused leaves the process.  After a crash the journal is the
truth: replaying it through the same deterministic engine rebuilds the books.

File layout (every integer little-endian)::

    file header   magic b"EXFJ" | version u16 | shard name length u16 | shard name (UTF-8) | CRC32 u32
    record        length u32 | CRC32 u32 | sequence number u64 | payload (length bytes)
    record        ...

The file header's CRC32 covers the bytes before it.  A record's CRC32 covers
its sequence number and payload, which lie next to each other, so one
``zlib.crc32`` call checks both.  Sequence numbers start at 1 and go up by one
with every record.  The journal does not look inside payloads; the matcher's
are the typed commands of :mod:`fabric.commands`, msgpack-encoded.

Recovery (:meth:`Journal.open`) checks every record.  A damaged last record,
the mark a crash leaves in the middle of a write, is cut off and reported in
``recovered_bytes``.  Damage followed by a record that checks out is not a
crash's mark: :class:`JournalCorrupt` is raised, and nothing is cut.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

log = logging.getLogger(__name__)

MAGIC = b"EXFJ"
FORMAT_VERSION = 1
MAX_SHARD_NAME = 255  # bytes of UTF-8
MAX_PAYLOAD = 1 << 24  # 16 MiB: a command is ~100 bytes; a length above this is damage, not data
INDEX_EVERY = 4096  # records between two entries of the sparse offset index

_FILE_HEAD = struct.Struct("<4sHH")  # magic, version, shard name length
_CRC = struct.Struct("<I")
RECORD_HEADER = struct.Struct("<IIQ")  # length, CRC32 of (sequence number, payload), sequence number
_SEQ = struct.Struct("<Q")
HEADER_SIZE = RECORD_HEADER.size  # 16

_READ_BUFFER = 1 << 20
_WRITE_CHUNK = 1 << 20  # pending bytes that make append() write out before commit(), to bound memory
_SCAN_CHUNK = 1 << 23  # bytes per step when looking for valid records after damage

_fdatasync = getattr(os, "fdatasync", os.fsync)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class JournalError(Exception):
    """A journal that cannot be used as asked."""


class JournalMismatch(JournalError):
    """A file that is not a journal, a journal of another format version, or of another shard."""


class JournalCorrupt(JournalError):
    """Damage a crash cannot explain: a bad record with valid records after it, or a broken sequence.

    Attributes
    ----------
    path, offset, reason
        The file, the byte offset of the first bad record (or of the file header), and what is wrong.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: corrupt journal at offset {offset}: {reason}")
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = reason


class JournalRangeError(JournalError, LookupError):
    """A range of sequence numbers that the journal does not hold."""


# ---------------------------------------------------------------------------
# Fsync policy
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FsyncPolicy:
    """When :meth:`Journal.commit` makes the journal durable.

    ``batch``: fsync on every commit.  ``none``: write to the operating system
    only (survives a crash of the process, not of the machine).  ``interval``:
    fsync on a commit when at least ``interval_ms`` milliseconds have passed
    since the last fsync, bounding what a machine crash can lose; records
    committed during a quiet spell are fsynced by the next commit, by
    :meth:`Journal.sync` or by :meth:`Journal.close`.
    """

    kind: Literal["batch", "none", "interval"]
    interval_ms: int = 0

    @classmethod
    def parse(cls, text: str) -> FsyncPolicy:
        """Return the policy ``text`` names: ``"batch"``, ``"none"`` or ``"interval:N"`` (N milliseconds).

        Raises
        ------
        ValueError
            When ``text`` is none of these, or N is not a positive integer.
        """
        expected = "expected 'batch', 'none' or 'interval:N' with N a positive number of milliseconds"
        if not isinstance(text, str):
            raise ValueError(f"fsync policy must be a string, got {text!r}; {expected}")
        if text == "batch":
            return cls("batch")
        if text == "none":
            return cls("none")
        kind, sep, n = text.partition(":")
        if kind == "interval" and sep:
            if not n.isascii() or not n.isdigit() or int(n) <= 0:
                raise ValueError(f"bad fsync policy {text!r}: N must be a positive integer; {expected}")
            return cls("interval", int(n))
        raise ValueError(f"bad fsync policy {text!r}; {expected}")

    def __str__(self) -> str:
        return f"interval:{self.interval_ms}" if self.kind == "interval" else self.kind


# ---------------------------------------------------------------------------
# File header and records
# ---------------------------------------------------------------------------


def _file_header(shard: str) -> bytes:
    name = _shard_bytes(shard)
    head = _FILE_HEAD.pack(MAGIC, FORMAT_VERSION, len(name)) + name
    return head + _CRC.pack(zlib.crc32(head))


def _shard_bytes(shard: str) -> bytes:
    if not isinstance(shard, str) or not shard:
        raise ValueError(f"shard must be a non-empty string, got {shard!r}")
    name = shard.encode("utf-8")
    if len(name) > MAX_SHARD_NAME:
        raise ValueError(f"shard name is {len(name)} bytes of UTF-8; at most {MAX_SHARD_NAME}")
    return name


def _read_file_header(f: BinaryIO, path: str | os.PathLike[str]) -> tuple[str, int]:
    # Returns (shard, header size); leaves f at the first record.
    fixed = f.read(_FILE_HEAD.size)
    if not fixed:
        raise JournalMismatch(f"{os.fspath(path)}: empty file, not a journal")
    if len(fixed) < len(MAGIC) or fixed[: len(MAGIC)] != MAGIC:
        raise JournalMismatch(f"{os.fspath(path)}: not a journal (starts with {fixed[:4]!r}, not {MAGIC!r})")
    if len(fixed) < _FILE_HEAD.size:
        raise JournalCorrupt(path, 0, f"file header cut short ({len(fixed)} bytes)")
    _, version, n = _FILE_HEAD.unpack(fixed)
    if version != FORMAT_VERSION:
        raise JournalMismatch(f"{os.fspath(path)}: journal format version {version}; this program reads version "
                              f"{FORMAT_VERSION}")
    rest = f.read(n + _CRC.size)
    if len(rest) < n + _CRC.size:
        raise JournalCorrupt(path, 0, f"file header cut short ({len(fixed) + len(rest)} bytes)")
    name = rest[:n]
    (crc,) = _CRC.unpack_from(rest, n)
    if zlib.crc32(fixed + name) != crc:
        raise JournalCorrupt(path, 0, "file header CRC mismatch")
    try:
        shard = name.decode("utf-8")
    except UnicodeDecodeError:
        raise JournalCorrupt(path, 0, "shard name in the file header is not UTF-8") from None
    return shard, _FILE_HEAD.size + n + _CRC.size


def pack_record(seq: int, payload: bytes) -> bytes:
    """Return the bytes of one record: header (length, CRC32, sequence number) and payload."""
    crc = zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq)))
    return RECORD_HEADER.pack(len(payload), crc, seq) + bytes(payload)


class _Scanner:
    # Reads and checks records from `offset`, expecting sequence number `seq`
    # first.  Iterating yields (offset, seq, payload) of every good record; when
    # it ends, `end` and `next_seq` are just past the last good record, and
    # `torn_bytes` / `torn_reason` describe a damaged tail, if any.  Damage with
    # a good record after it raises JournalCorrupt.

    def __init__(self, f: BinaryIO, path: str | os.PathLike[str], offset: int, seq: int) -> None:
        self._f = f
        self.path = path
        self.end = offset
        self.next_seq = seq
        self.torn_bytes = 0
        self.torn_reason: str | None = None

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        f = self._f
        f.seek(self.end)
        read, unpack, crc32 = f.read, RECORD_HEADER.unpack, zlib.crc32
        off, expected = self.end, self.next_seq
        while True:
            head = read(HEADER_SIZE)
            if len(head) < HEADER_SIZE:
                if head:
                    self._damaged(off, f"record header cut short ({len(head)} of {HEADER_SIZE} bytes)")
                return
            length, crc, seq = unpack(head)
            if length > MAX_PAYLOAD:
                self._damaged(off, f"record length {length} is over the maximum {MAX_PAYLOAD}")
                return
            payload = read(length)
            if len(payload) < length:
                self._damaged(off, f"payload cut short ({len(payload)} of {length} bytes)")
                return
            actual = crc32(payload, crc32(head[8:]))
            if actual != crc:
                self._damaged(off, f"CRC mismatch (stored {crc:#010x}, computed {actual:#010x})")
                return
            if seq != expected:
                # The record checks out, so it is no torn write: the file was spliced or written twice.
                raise JournalCorrupt(self.path, off, f"sequence number {seq} where {expected} was expected")
            off += HEADER_SIZE + length
            expected += 1
            self.end, self.next_seq = off, expected
            yield off - HEADER_SIZE - length, seq, payload

    def _damaged(self, off: int, reason: str) -> None:
        size = os.fstat(self._f.fileno()).st_size
        found = _find_record(self._f, off + 1, size, self.next_seq)
        if found is not None:
            at, seq = found
            raise JournalCorrupt(self.path, off, f"{reason}; yet a valid record (seq {seq}) follows at offset {at}")
        self.torn_bytes = size - off
        self.torn_reason = reason


def _find_record(f: BinaryIO, start: int, end: int, min_seq: int) -> tuple[int, int] | None:
    # Return (offset, seq) of the first position in [start, end) where a record
    # checks out (length in bounds, fits the file, CRC matches, sequence number
    # in the range a later record could have), or None.  Runs only on damage, so
    # numpy is imported here: it picks candidates at C speed, 8 byte alignments
    # at a time, and only those pay for a CRC.
    import numpy as np

    if end - start < HEADER_SIZE:
        return None
    max_seq = min(min_seq + (end - start) // HEADER_SIZE, (1 << 64) - 1)
    pos = start
    while pos + HEADER_SIZE <= end:
        f.seek(pos)
        chunk = f.read(min(_SCAN_CHUNK, end - pos))
        n = len(chunk)
        if n < HEADER_SIZE:
            return None
        candidates: list[int] = []
        for r in range(8):
            count = (n - r - HEADER_SIZE) // 8 + 1
            if count <= 0:
                continue
            lens = np.ndarray((count,), dtype="<u4", buffer=chunk, offset=r, strides=(8,))
            seqs = np.ndarray((count,), dtype="<u8", buffer=chunk, offset=r + 8, strides=(8,))
            hits = np.flatnonzero((seqs >= min_seq) & (seqs <= max_seq) & (lens <= MAX_PAYLOAD))
            candidates.extend((r + 8 * hits).tolist())
        for p in sorted(candidates):
            length, crc, seq = RECORD_HEADER.unpack_from(chunk, p)
            at = pos + p
            if at + HEADER_SIZE + length > end:
                continue
            if p + HEADER_SIZE + length <= n:
                body = chunk[p + 8 : p + HEADER_SIZE + length]
            else:
                f.seek(at + 8)
                body = f.read(8 + length)
            if zlib.crc32(body) == crc:
                return at, seq
        # Positions from n - HEADER_SIZE + 1 on had no room for a header in this chunk: the next one starts there.
        pos += n - HEADER_SIZE + 1
    return None


# ---------------------------------------------------------------------------
# The journal
# ---------------------------------------------------------------------------


class Journal:
    """One shard's journal, open for appending by this process alone.

    Use :meth:`Journal.open`.  Not thread-safe: one loop appends and commits.

    Attributes
    ----------
    path, shard, policy
        The file, the shard it belongs to, and the fsync policy.
    recovered_bytes
        Bytes of a torn last record that opening cut off (0 when the file ended cleanly).
    """

    def __init__(self, path: Path, shard: str, fd: int, policy: FsyncPolicy, index_every: int) -> None:
        # Internal: Journal.open() checks the file and builds the state passed here.
        self.path = path
        self.shard = shard
        self.policy = policy
        self.recovered_bytes = 0
        self._fd = fd
        self._index_every = index_every
        self._index: list[int] = []  # offset of record (i * index_every + 1)
        self._end = 0  # offset just past the last appended record, written out or not
        self._last_seq = 0
        self._flushed_seq = 0  # handed to the operating system
        self._synced_seq = 0  # made durable by an fsync
        self._buf = bytearray()
        self._last_sync = time.monotonic()
        self._failure: str | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        shard: str,
        fsync: str = "batch",
        *,
        index_every: int = INDEX_EVERY,
    ) -> Journal:
        """Open (creating if absent) the journal of ``shard`` at ``path``, recovering from a crash.

        Every record is checked.  A torn or damaged last record is cut off (the
        bytes cut are in ``recovered_bytes`` and logged); appending continues
        after the last good record.

        Parameters
        ----------
        path
            The journal file; its folder must exist.
        shard
            The shard's name, written in a new file and checked in an existing one.
        fsync
            ``"batch"`` (fsync on every commit), ``"none"`` (no fsync) or ``"interval:N"``
            (fsync on a commit at most every N milliseconds).
        index_every
            Records between two entries of the in-memory offset index :meth:`read_range` seeks with.

        Raises
        ------
        ValueError
            A bad fsync policy or shard name.
        JournalMismatch
            The file is not a journal, or is another version's or another shard's.
        JournalCorrupt
            Damage that a crash cannot explain; the file is left as it is.
        JournalError
            The journal is already open for appending (by this or another process).
        """
        policy = FsyncPolicy.parse(fsync)
        _shard_bytes(shard)
        if index_every < 1:
            raise ValueError(f"index_every must be positive, got {index_every}")
        path = Path(path)
        if not path.exists():
            _create(path, shard)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            try:
                # Two writers would interleave records: the lock (released when the fd closes, or the
                # process dies) makes the second one fail here instead.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalError(f"{path}: journal is already open for appending") from None
            journal = cls(path, shard, fd, policy, index_every)
            journal._recover()
        except BaseException:
            os.close(fd)
            raise
        return journal

    def _recover(self) -> None:
        with open(os.dup(self._fd), "rb", buffering=_READ_BUFFER) as f:
            found, start = _read_file_header(f, self.path)
            if found != self.shard:
                raise JournalMismatch(f"{self.path} is the journal of shard {found!r}, not {self.shard!r}")
            scanner = _Scanner(f, self.path, start, 1)
            every, index = self._index_every, self._index
            for off, seq, _ in scanner:
                if (seq - 1) % every == 0:
                    index.append(off)
        self._end = scanner.end
        self._last_seq = self._flushed_seq = self._synced_seq = scanner.next_seq - 1
        if scanner.torn_bytes:
            os.ftruncate(self._fd, scanner.end)
            _fdatasync(self._fd)
            self.recovered_bytes = scanner.torn_bytes
            log.warning("journal %s: cut %d bytes of a torn last record at offset %d (%s); last good seq %d",
                        self.path, scanner.torn_bytes, scanner.end, scanner.torn_reason, self._last_seq)

    # -- appending ------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The sequence number of the last record appended (0 for an empty journal)."""
        return self._last_seq

    @property
    def synced_seq(self) -> int:
        """The sequence number of the last record known to be on disk (fsynced)."""
        return self._synced_seq

    def append(self, payload: bytes) -> int:
        """Append one record and return its sequence number.

        The record is durable only after :meth:`commit` (as the fsync policy says).

        Raises
        ------
        ValueError
            The payload is longer than ``MAX_PAYLOAD``.
        JournalError
            The journal is closed, or an earlier write or fsync failed.
        OSError
            Writing failed; the journal is then unusable and must be reopened (which recovers).
        """
        if self._failure is not None:
            self._refuse()
        n = len(payload)
        if n > MAX_PAYLOAD:
            raise ValueError(f"payload of {n} bytes is over the maximum {MAX_PAYLOAD}")
        seq = self._last_seq + 1
        crc = zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq)))
        if (seq - 1) % self._index_every == 0:
            self._index.append(self._end)
        buf = self._buf
        buf += RECORD_HEADER.pack(n, crc, seq)
        buf += payload
        self._end += HEADER_SIZE + n
        self._last_seq = seq
        if len(buf) >= _WRITE_CHUNK:
            self._write_out()
        return seq

    def commit(self) -> None:
        """Write every appended record to the operating system, and fsync as the policy says.

        One commit after many appends is a group commit: one write, at most one fsync.
        """
        if self._failure is not None:
            self._refuse()
        self._write_out()
        policy = self.policy
        if policy.kind == "none" or self._synced_seq == self._last_seq:
            return
        if policy.kind == "interval" and (time.monotonic() - self._last_sync) * 1000 < policy.interval_ms:
            return
        self._sync()

    def sync(self) -> None:
        """Write out and fsync now, whatever the policy."""
        if self._failure is not None:
            self._refuse()
        self._write_out()
        if self._synced_seq != self._last_seq:
            self._sync()

    def close(self) -> None:
        """Commit what is pending (with an fsync unless the policy is ``none``) and close; closing twice is fine."""
        if self._fd < 0:
            return
        if self._failure is not None:  # a failed write not rolled back: write nothing more
            os.close(self._fd)
            self._fd = -1
            return
        try:
            self._write_out()
            if self.policy.kind != "none" and self._synced_seq != self._last_seq:
                self._sync()
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                self._failure = self._failure or "closed"

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}, shard={self.shard!r}, last_seq={self._last_seq}, fsync={self.policy})"

    def _write_out(self) -> None:
        if not self._buf:
            return
        data, self._buf = self._buf, bytearray()
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as e:
            # A part of a record may be in the file: a rollback (to a mark) or a reopen (which cuts it) is
            # the way on. The file stays open, locked: a full disk that frees space needs no restart.
            self._fail(f"write failed: {e}", close=False)
            raise
        self._flushed_seq = self._last_seq

    def _sync(self) -> None:
        try:
            _fdatasync(self._fd)
        except OSError as e:
            # After a failed fsync the kernel may have dropped the dirty pages: retrying could report
            # success for data that is gone, so the journal stops here.
            self._fail(f"fsync failed: {e}")
            raise
        self._synced_seq = self._flushed_seq
        self._last_sync = time.monotonic()

    def _fail(self, why: str, close: bool = True) -> None:
        log.error("journal %s: %s; it must be %s", self.path, why, "reopened" if close else "rolled back")
        self._failure = why
        if close:
            os.close(self._fd)
            self._fd = -1

    # -- rolling back a failed write -----------------------------------------------

    def mark(self) -> tuple[int, int, int]:
        """Return where the journal stands, to :meth:`rollback` to: call it when everything appended is committed."""
        return self._end, self._last_seq, len(self._index)

    def rollback(self, mark: tuple[int, int, int]) -> None:
        """Cut every record appended since ``mark`` from the file and from memory, after a failed write.

        A write that fails (a full disk, a file size limit) may leave part of its records in the file; none
        of them may stay, since their commands were never carried out. The journal goes on from ``mark``:
        appending works again once the disk takes writes.

        Raises
        ------
        JournalError
            The journal is closed, or an fsync failed: the kernel may have dropped written pages, so only a
            restart that reopens the journal (and checks every record) can go on.
        OSError
            Cutting the file failed; the journal stays failed.
        """
        if self._fd < 0 or (self._failure is not None and not self._failure.startswith("write failed")):
            self._refuse()
        end, seq, nindex = mark
        os.ftruncate(self._fd, end)
        self._buf = bytearray()
        self._end = end
        self._last_seq = seq
        self._flushed_seq = min(self._flushed_seq, seq)
        self._synced_seq = min(self._synced_seq, seq)
        del self._index[nindex:]
        if self._failure is not None:
            log.warning("journal %s: rolled back to seq %d after: %s", self.path, seq, self._failure)
        self._failure = None

    def truncate(self, last_seq: int) -> int:
        """Cut every record after ``last_seq`` (a deposed primary's records its successor never had); return how many.

        Raises
        ------
        JournalError
            The journal is closed or failed.
        OSError
            Cutting the file failed.
        """
        if self._failure is not None:
            self._refuse()
        if last_seq >= self._last_seq:
            return 0
        last_seq = max(0, last_seq)
        self._write_out()
        every = self._index_every
        target = last_seq + 1  # the first record cut
        block = (target - 1) // every
        off, seq = self._index[block], block * every + 1
        while seq < target:  # the records before it, skipped by their lengths
            off += HEADER_SIZE + _CRC.unpack_from(_pread_exactly(self._fd, off, 4, self.path))[0]
            seq += 1
        cut = self._last_seq - last_seq
        self.rollback((off, last_seq, (last_seq + every - 1) // every))
        os.fsync(self._fd)
        return cut

    def _refuse(self) -> None:
        if self._failure == "closed":
            raise JournalError(f"{self.path}: journal is closed")
        raise JournalError(f"{self.path}: journal failed earlier ({self._failure}); reopen it to recover")

    # -- reading --------------------------------------------------------------

    def read_range(self, first: int, last: int) -> list[tuple[int, bytes]]:
        """Return the records ``first`` to ``last`` (inclusive) as ``(seq, payload)``, for gap recovery.

        Records appended but not yet committed are written out first, so any
        sequence number up to :attr:`last_seq` can be read.

        Raises
        ------
        JournalRangeError
            The journal does not hold the whole range.
        """
        if self._failure is not None:
            self._refuse()
        _check_range(self.path, first, last, self._last_seq)
        self._write_out()
        # One read from the index entry at or before `first` to the one after `last` (or the end): the
        # records before `first` are skipped by their lengths alone, those asked for are checked.
        every = self._index_every
        block, after = (first - 1) // every, (last - 1) // every + 1
        start = self._index[block]
        stop = self._index[after] if after < len(self._index) else self._end
        data = _pread_exactly(self._fd, start, stop - start, self.path)
        off, seq = 0, block * every + 1
        try:
            while seq < first:
                off += HEADER_SIZE + _CRC.unpack_from(data, off)[0]
                seq += 1
            out = []
            view = memoryview(data)
            while seq <= last:
                length, crc, found = RECORD_HEADER.unpack_from(data, off)
                end = off + HEADER_SIZE + length
                if end > len(data) or found != seq or zlib.crc32(view[off + 8 : end]) != crc:
                    raise JournalCorrupt(self.path, start + off, f"record {seq} does not check out on reading it back")
                out.append((seq, data[off + HEADER_SIZE : end]))
                off, seq = end, seq + 1
        except struct.error:
            raise JournalCorrupt(self.path, start + off, f"record {seq} lies past the end of the file") from None
        return out


def _pread_exactly(fd: int, offset: int, size: int, path: Path) -> bytes:
    parts = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise JournalCorrupt(path, offset, "file ends before the last record appended")
        parts.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _create(path: Path, shard: str) -> None:
    # The header goes to a temporary file that is linked into place whole, so
    # a crash never leaves a journal without its header.  link() rather than
    # rename(): it fails if the journal appeared meanwhile, and never replaces one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(_file_header(shard))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _check_range(path: str | os.PathLike[str], first: int, last: int, last_seq: int | None) -> None:
    if first < 1 or last < first:
        raise ValueError(f"bad range {first}..{last}: need 1 <= first <= last")
    if last_seq is not None and last > last_seq:
        raise JournalRangeError(f"{os.fspath(path)}: journal holds seq 1..{last_seq}; asked for {first}..{last}")


# ---------------------------------------------------------------------------
# Reading without opening for append
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalInfo:
    """What a journal file holds, as :func:`journal_info` found it (the file unchanged)."""

    path: str
    shard: str
    records: int
    first_seq: int | None
    last_seq: int
    end: int  # offset just past the last good record
    size: int  # file size
    torn_bytes: int  # bytes after `end` that Journal.open would cut
    torn_reason: str | None


def journal_info(path: str | os.PathLike[str]) -> JournalInfo:
    """Check every record of the journal at ``path`` and describe it, without modifying the file.

    Raises
    ------
    JournalMismatch, JournalCorrupt
        As :meth:`Journal.open` would.
    """
    with open(path, "rb", buffering=_READ_BUFFER) as f:
        shard, start = _read_file_header(f, path)
        scanner = _Scanner(f, path, start, 1)
        for _ in scanner:
            pass
        size = os.fstat(f.fileno()).st_size
    last = scanner.next_seq - 1
    return JournalInfo(os.fspath(path), shard, last, 1 if last else None, last, scanner.end, size,
                       scanner.torn_bytes, scanner.torn_reason)


def read_journal(path: str | os.PathLike[str], from_seq: int = 1) -> Generator[tuple[int, bytes], None, None]:
    """Yield ``(seq, payload)`` of every record from ``from_seq`` on, checking each.

    A torn last record ends the iteration quietly (the file is never modified),
    so a journal being appended to can be read while it grows.

    Raises
    ------
    JournalMismatch, JournalCorrupt
        As :meth:`Journal.open` would (when iteration reaches the problem).
    """
    with open(path, "rb", buffering=_READ_BUFFER) as f:
        _, start = _read_file_header(f, path)
        for _, seq, payload in _Scanner(f, path, start, 1):
            if seq >= from_seq:
                yield seq, payload


def read_range(path: str | os.PathLike[str], first: int, last: int) -> list[tuple[int, bytes]]:
    """Return the records ``first`` to ``last`` (inclusive) of the journal at ``path``, as ``(seq, payload)``.

    Reads from the start of the file; an open :class:`Journal`'s own
    :meth:`Journal.read_range` seeks with its index instead.

    Raises
    ------
    JournalRangeError
        The journal does not hold the whole range.
    """
    _check_range(path, first, last, None)
    out: list[tuple[int, bytes]] = []
    with closing(read_journal(path, first)) as records:
        for seq, payload in records:
            out.append((seq, payload))
            if seq == last:
                break
    if len(out) != last - first + 1:
        held = out[-1][0] if out else first - 1
        raise JournalRangeError(f"{os.fspath(path)}: journal holds seq up to {held}; asked for {first}..{last}")
    return out
