"""``exfab journal inspect``: show what a matcher's journal holds, without touching it.

By default the journal's commands run, in sequence order, through a fresh
engine, and the events come out exactly as ``exfab replay`` prints them, each
with one more field, ``"seq"``: the sequence number of the record that caused
it.  With ``commands`` the records themselves come out, as replay commands with
``"seq"`` (which ``exfab replay`` ignores, so the output replays as it is).
"""

from __future__ import annotations

import os
import sys
from typing import IO

import msgspec

from fabric.commands import Command, decode_command
from fabric.constants import REJ_MALFORMED, REJECT_NAMES
from fabric.journal import JournalCorrupt, JournalError, JournalInfo, journal_info, read_journal
from tools.replay import Event, Replayer, dumps

_encode_command = msgspec.json.Encoder().encode
_FLUSH_LINES = 4096


def summary_line(info: JournalInfo) -> str:
    """Return a one-line description of a journal: shard, records, sequence numbers, and a torn tail."""
    text = f"journal {info.path}: shard {info.shard}, {info.records:,} records"
    if info.records:
        text += f", seq {info.first_seq}..{info.last_seq}"
    if info.torn_bytes:
        text += (f"; torn tail of {info.torn_bytes:,} bytes at offset {info.end:,} ({info.torn_reason}), "
                 "which opening the journal would cut")
    return text


def _malformed(seq: int, error: ValueError) -> Event:
    # What Replayer.apply gives for a line it cannot read, with the record's sequence number as the line.
    return {"event": "rejected", "op": None, "oid": None, "broker": None, "symbol": None,
            "reason": REJECT_NAMES[REJ_MALFORMED], "text": f"record {seq}: {error}", "line": seq}


def inspect(path: str, *, commands: bool = False, out: IO[str] | None = None, err: IO[str] | None = None,
            timezone: str = "Asia/Kolkata") -> int:
    """Print the journal at ``path`` as JSON Lines events (or, with ``commands``, commands) to ``out``.

    ``timezone`` is the exchange's (the topology's ``[exchange] timezone``), which trading days are counted in.

    The first line on ``err`` summarises the journal.  The file is only read:
    a torn last record is reported, not cut.  A rejected event's ``"line"`` is
    its record's sequence number.

    Returns
    -------
    int
        The process exit status: 0; 1 when the journal is corrupt; 2 when the
        file cannot be read or is not a journal.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        info = journal_info(path)
    except OSError as e:
        err.write(f"exfab journal inspect: cannot read {path}: {e.strerror}\n")
        return 2
    except JournalCorrupt as e:
        err.write(f"exfab journal inspect: {e}\n")
        return 1
    except JournalError as e:
        err.write(f"exfab journal inspect: {e}\n")
        return 2
    err.write(summary_line(info) + "\n")
    err.flush()

    replayer = Replayer(timezone=timezone)
    lines: list[str] = []
    try:
        for seq, payload in read_journal(path):
            # The file may have grown since it was summarised: print what the summary counted.
            if seq > info.last_seq:
                break
            try:
                cmd: Command | None = decode_command(payload)
            except ValueError as e:
                cmd = None
                if commands:
                    err.write(f"exfab journal inspect: record {seq} is not a command: {e}\n")
                else:
                    lines.append(_with_seq(_malformed(seq, e), seq))
            if cmd is not None:
                if commands:
                    lines.append(_encode_command({**msgspec.to_builtins(cmd), "seq": seq}).decode())
                else:
                    lines.extend(_with_seq(ev, seq) for ev in replayer.apply(cmd, seq))
            if len(lines) >= _FLUSH_LINES:
                out.write("\n".join(lines) + "\n")
                lines.clear()
    except JournalError as e:
        if lines:
            out.write("\n".join(lines) + "\n")
        out.flush()
        err.write(f"exfab journal inspect: {e}\n")
        return 1
    if lines:
        out.write("\n".join(lines) + "\n")
    out.flush()
    return 0


def _with_seq(event: Event, seq: int) -> str:
    # A copy: the engine's events are not ours to change.
    tagged = dict(event)
    tagged["seq"] = seq
    return dumps(tagged)


def verify(path: str, *, repair: bool = False, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Check every record of the journal at ``path``; print what it holds and any damage; optionally repair.

    Every record's length, CRC32 and sequence number is checked, and every payload must decode as a
    command. Two kinds of damage:

    - a torn tail (the mark a crash leaves in the middle of a write): the matcher cuts it when it opens
      the journal; ``repair`` cuts it now, and nothing that was acknowledged is in it;
    - corruption (a bad record with good records after it, a broken sequence, a payload that is not a
      command): nothing is cut; the matcher refuses to open the file. The repair is by hand: keep the
      file, restore the shard's journal from its secondary or a backup, or (losing what follows)
      truncate at the offset printed, as ``--repair`` never does by itself.

    A journal cut at a record boundary (records lost at its end) checks out: only its subscribers can
    see it, when the matcher publishes again numbers they have seen (they log it and follow it).

    Returns
    -------
    int
        0: the journal checks out (or its torn tail was cut by ``repair``); 1: it is damaged;
        2: it cannot be read or is not a journal.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        info = journal_info(path)
    except OSError as e:
        err.write(f"exfab journal verify: cannot read {path}: {e.strerror}\n")
        return 2
    except JournalCorrupt as e:
        out.write(f"journal {path}: CORRUPT at offset {e.offset:,}: {e.reason}\n"
                  "  the matcher will not open it; nothing was changed. Restore the shard's journal (from a\n"
                  "  backup or its secondary), or truncate it at that offset by hand, losing what follows.\n")
        return 1
    except JournalError as e:
        err.write(f"exfab journal verify: {e}\n")
        return 2
    bad = 0
    for seq, payload in read_journal(path):
        if seq > info.last_seq:
            break
        try:
            decode_command(payload)
        except ValueError as e:
            bad += 1
            if bad <= 10:
                out.write(f"record {seq}: not a command: {e}\n")
    out.write(summary_line(info) + f"; {info.size:,} bytes\n")
    if bad:
        out.write(f"journal {path}: {bad:,} records are not commands: the matcher would skip them on replay\n")
        return 1
    if info.torn_bytes:
        if not repair:
            out.write("  run with --repair to cut the torn tail now (the matcher does it when it opens the journal)\n")
            return 1
        with open(path, "r+b") as f:
            f.truncate(info.end)
            os.fsync(f.fileno())
        out.write(f"repaired: cut {info.torn_bytes:,} bytes at offset {info.end:,}; "
                  f"{info.records:,} records, last seq {info.last_seq}\n")
    return 0
