"""The matcher's journal: record format, group commit, crash recovery, ranged reads, and inspect."""

from __future__ import annotations

import bisect
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import msgpack
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabric.commands import CancelOrder, EndOfDay, NewOrder, ReplaceOrder, decode_command, encode_command
from fabric.journal import (
    HEADER_SIZE,
    FsyncPolicy,
    Journal,
    JournalCorrupt,
    JournalError,
    JournalMismatch,
    JournalRangeError,
    journal_info,
    pack_record,
    read_journal,
    read_range,
)
from tools import replay
from tools.journal_cmd import inspect, verify
from tools.replay import Replayer, replay_lines

ROOT = Path(__file__).resolve().parents[1]
SESSION = ROOT / "topology" / "examples" / "session.jsonl"


def _payloads(n: int) -> list[bytes]:
    return [encode_command(NewOrder(oid=f"o{i}", broker="B1", symbol="TCS", side="buy", type="limit",
                                    price="3500.05", qty=i, tif="GTC")) for i in range(1, n + 1)]


def _write(path: Path, payloads: list[bytes], shard: str = "S1") -> list[int]:
    # Return the offset of every record, and the end of the file, as the last element.
    with Journal.open(path, shard) as j:
        for p in payloads:
            j.append(p)
        j.commit()
    size = path.stat().st_size
    offsets = [size]
    for p in reversed(payloads):
        offsets.insert(0, offsets[0] - HEADER_SIZE - len(p))
    return offsets


# ---------------------------------------------------------------------------
# Appending and reading back
# ---------------------------------------------------------------------------


def test_round_trip_reads_back_every_payload_in_order(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    payloads = [*_payloads(100), b"", b"\x00" * 1000]
    with Journal.open(path, "S1") as j:
        seqs = [j.append(p) for p in payloads]
        j.commit()
        assert j.last_seq == len(payloads)
    assert seqs == list(range(1, len(payloads) + 1))
    assert list(read_journal(path)) == list(zip(seqs, payloads, strict=True))
    assert list(read_journal(path, from_seq=100)) == list(zip(seqs, payloads, strict=True))[99:]


def test_record_layout_is_length_crc_seq_payload(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    offsets = _write(path, [b"hello"])
    raw = path.read_bytes()
    assert raw[:4] == b"EXFJ" and b"S1" in raw[: offsets[0]]
    assert raw[offsets[0] :] == pack_record(1, b"hello")
    length, crc, seq = int.from_bytes(raw[-21:-17], "little"), raw[-17:-13], int.from_bytes(raw[-13:-5], "little")
    assert (length, seq) == (5, 1) and crc != b"\0\0\0\0"


def test_reopen_continues_sequence(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    _write(path, _payloads(10))
    with Journal.open(path, "S1") as j:
        assert j.last_seq == 10 and j.recovered_bytes == 0
        assert j.append(b"eleven") == 11
        j.commit()
    with Journal.open(path, "S1") as j:
        assert j.last_seq == 11
    assert [s for s, _ in read_journal(path)] == list(range(1, 12))


def test_new_journal_empty_last_seq_zero_first_append_one(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    with Journal.open(path, "S1") as j:
        assert j.last_seq == 0
    assert list(read_journal(path)) == []
    with Journal.open(path, "S1") as j:
        assert j.append(b"x") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("policy", ["batch", "none", "interval:5", "interval:60000"])
def test_group_commit_each_policy_records_readable_after_commit(tmp_path: Path, policy: str) -> None:
    path = tmp_path / "s1.journal"
    payloads = _payloads(500)
    with Journal.open(path, "S1", policy) as j:
        for batch in range(5):
            for p in payloads[batch * 100 : (batch + 1) * 100]:
                j.append(p)
            j.commit()
            # A commit hands everything to the OS: another reader sees it before close.
            assert [s for s, _ in read_journal(path)] == list(range(1, (batch + 1) * 100 + 1))
        if policy == "batch":
            assert j.synced_seq == j.last_seq
        elif policy == "none":
            assert j.synced_seq == 0
        elif policy == "interval:60000":
            assert j.synced_seq == 0  # no fsync until a minute has passed, or sync()
            j.sync()
            assert j.synced_seq == 500
    assert list(read_journal(path)) == list(enumerate(payloads, 1))


def test_interval_policy_fsyncs_once_interval_passed(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "s1.journal", "S1", "interval:100") as j:
        j.append(b"a")
        time.sleep(0.12)
        j.commit()
        assert j.synced_seq == 1
        j.append(b"b")
        j.commit()  # within 100 ms of the last fsync
        assert j.synced_seq == 1
        time.sleep(0.12)
        j.commit()
        assert j.synced_seq == 2


@pytest.mark.parametrize("bad", ["", "Batch", "fast", "interval", "interval:", "interval:0", "interval:-5",
                                 "interval:1.5", "interval:ten", "none:1", "interval:٣"])
def test_bad_fsync_policy_rejected_with_clear_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="fsync policy"):
        Journal.open(tmp_path / "s1.journal", "S1", bad)
    assert not (tmp_path / "s1.journal").exists()


def test_fsync_policy_parse_and_str_round_trip() -> None:
    for text in ("batch", "none", "interval:250"):
        assert str(FsyncPolicy.parse(text)) == text
    assert FsyncPolicy.parse("interval:250").interval_ms == 250


def test_closed_journal_refuses_append(tmp_path: Path) -> None:
    j = Journal.open(tmp_path / "s1.journal", "S1")
    j.close()
    j.close()
    with pytest.raises(JournalError, match="closed"):
        j.append(b"x")


def test_second_writer_refused_while_first_open(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    with Journal.open(path, "S1"), pytest.raises(JournalError, match="already open"):
        Journal.open(path, "S1")
    with Journal.open(path, "S1") as j:  # the lock went with the first
        assert j.last_seq == 0


def test_oversized_payload_refused(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "s1.journal", "S1") as j, pytest.raises(ValueError, match="maximum"):
        j.append(bytes((1 << 24) + 1))


# ---------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 3, HEADER_SIZE - 1, HEADER_SIZE + 1])
def test_torn_last_record_cut_on_open_and_sequence_continues(tmp_path: Path, cut: int,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s1.journal"
    payloads = _payloads(20)
    offsets = _write(path, payloads)
    with open(path, "r+b") as f:
        f.truncate(offsets[-1] - cut)
    info = journal_info(path)
    assert info.records == 19 and info.torn_bytes == offsets[-1] - cut - offsets[19]
    with caplog.at_level(logging.WARNING, logger="fabric.journal"), Journal.open(path, "S1") as j:
        assert j.last_seq == 19
        assert j.recovered_bytes == offsets[-1] - cut - offsets[19] > 0
        assert path.stat().st_size == offsets[19]
        assert j.append(b"new twentieth") == 20
    assert "cut" in caplog.text and str(j.recovered_bytes) in caplog.text
    assert list(read_journal(path)) == [*enumerate(payloads[:19], 1), (20, b"new twentieth")]


@pytest.mark.parametrize("where", ["payload", "seq", "crc", "length"])
def test_flipped_byte_in_last_record_cut_on_open(tmp_path: Path, where: str) -> None:
    path = tmp_path / "s1.journal"
    payloads = _payloads(20)
    offsets = _write(path, payloads)
    at = offsets[19] + {"payload": HEADER_SIZE + 7, "seq": 8, "crc": 5, "length": 0}[where]
    data = bytearray(path.read_bytes())
    data[at] ^= 0x04
    path.write_bytes(data)
    assert [s for s, _ in read_journal(path)] == list(range(1, 20))
    with Journal.open(path, "S1") as j:
        assert j.last_seq == 19
        assert j.recovered_bytes == offsets[20] - offsets[19]
        assert j.append(b"again") == 20


def test_zero_filled_tail_cut_on_open(tmp_path: Path) -> None:
    # What a machine crash can leave: the file grew but its last block never reached the disk.
    path = tmp_path / "s1.journal"
    _write(path, _payloads(5))
    with open(path, "ab") as f:
        f.write(bytes(4096))
    with Journal.open(path, "S1") as j:
        assert j.last_seq == 5 and j.recovered_bytes == 4096


@pytest.mark.parametrize("where", ["payload", "length", "seq"])
def test_corruption_in_middle_raises_journal_corrupt_with_offset(tmp_path: Path, where: str) -> None:
    path = tmp_path / "s1.journal"
    offsets = _write(path, _payloads(50))
    at = offsets[24] + {"payload": HEADER_SIZE + 3, "length": 1, "seq": 9}[where]
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(data)
    for attempt in (lambda: Journal.open(path, "S1"), lambda: list(read_journal(path)), lambda: journal_info(path)):
        with pytest.raises(JournalCorrupt) as e:
            attempt()
        assert e.value.offset == offsets[24]
        assert "valid record (seq 26)" in str(e.value)
    assert path.read_bytes() == data  # nothing cut


def test_zeroed_block_in_middle_raises_journal_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    offsets = _write(path, _payloads(200))
    data = bytearray(path.read_bytes())
    data[offsets[10] : offsets[10] + 1000] = bytes(1000)
    path.write_bytes(data)
    with pytest.raises(JournalCorrupt, match=f"offset {offsets[10]}"):
        Journal.open(path, "S1")


def test_sequence_break_raises_journal_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    offsets = _write(path, _payloads(3))
    with open(path, "ab") as f:
        f.write(pack_record(5, b"from somewhere else"))
    with pytest.raises(JournalCorrupt, match="sequence number 5 where 4 was expected") as e:
        Journal.open(path, "S1")
    assert e.value.offset == offsets[3]


def test_wrong_magic_refused(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    path.write_bytes(b'{"op":"new"}\n' * 10)
    with pytest.raises(JournalMismatch, match="not a journal"):
        Journal.open(path, "S1")
    with pytest.raises(JournalMismatch, match="not a journal"):
        list(read_journal(path))


def test_empty_file_refused_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    path.touch()
    with pytest.raises(JournalMismatch, match="empty"):
        Journal.open(path, "S1")


def test_wrong_shard_refused(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    _write(path, _payloads(3), shard="S1")
    with pytest.raises(JournalMismatch, match="shard 'S1', not 'S2'"):
        Journal.open(path, "S2")
    assert journal_info(path).shard == "S1"


def test_other_format_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    _write(path, [])
    data = bytearray(path.read_bytes())
    data[4] = 9
    path.write_bytes(data)
    with pytest.raises(JournalMismatch, match="version 9"):
        Journal.open(path, "S1")


def test_damaged_file_header_refused(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    offsets = _write(path, _payloads(2))
    data = bytearray(path.read_bytes())
    data[offsets[0] - 6] ^= 1  # in the shard name
    path.write_bytes(data)
    with pytest.raises(JournalCorrupt, match="file header CRC"):
        Journal.open(path, "S1")


# ---------------------------------------------------------------------------
# Ranged reads
# ---------------------------------------------------------------------------


def test_read_range_returns_exactly_asked_range_across_index_blocks(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    payloads = _payloads(13_000)  # four blocks of the default index
    everything = list(enumerate(payloads, 1))
    with Journal.open(path, "S1") as j:
        for p in payloads:
            j.append(p)
        j.commit()
        for first, last in [(1, 1), (1, 4096), (4096, 4097), (4097, 4097), (100, 9000), (8193, 13_000),
                            (12_999, 13_000), (1, 13_000)]:
            assert j.read_range(first, last) == everything[first - 1 : last]
            assert read_range(path, first, last) == everything[first - 1 : last]
        with pytest.raises(JournalRangeError):
            j.read_range(12_000, 13_001)
        with pytest.raises(ValueError):
            j.read_range(5, 4)
        with pytest.raises(ValueError):
            j.read_range(0, 4)
    with pytest.raises(JournalRangeError, match="13000"):
        read_range(path, 12_000, 13_001)


def test_read_range_sees_uncommitted_and_reopened_records(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    payloads = _payloads(100)
    with Journal.open(path, "S1", index_every=7) as j:
        for p in payloads[:60]:
            j.append(p)
        assert j.read_range(50, 60) == list(enumerate(payloads, 1))[49:60]
    with Journal.open(path, "S1", index_every=7) as j:
        for p in payloads[60:]:
            j.append(p)
        for first in range(1, 101, 9):
            assert j.read_range(first, 100) == list(enumerate(payloads, 1))[first - 1 :]


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), max_size=40), st.integers(1, 9))
def test_random_payloads_round_trip_through_write_reopen_and_ranges(payloads: list[bytes], every: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "j"
        with Journal.open(path, "P", "none", index_every=every) as j:
            half = len(payloads) // 2
            for p in payloads[:half]:
                j.append(p)
        with Journal.open(path, "P", "none", index_every=every) as j:
            assert j.last_seq == half and j.recovered_bytes == 0
            for p in payloads[half:]:
                j.append(p)
            j.commit()
            expected = list(enumerate(payloads, 1))
            assert list(read_journal(path)) == expected
            if payloads:
                assert j.read_range(1, len(payloads)) == expected
                assert j.read_range(len(payloads), len(payloads)) == expected[-1:]


@given(st.lists(st.binary(max_size=120), max_size=25), st.data())
def test_truncation_at_any_offset_recovers_records_fully_written_before_it(payloads: list[bytes],
                                                                          data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "j"
        with Journal.open(path, "P", "none") as j:
            for p in payloads:
                j.append(p)
        full = path.read_bytes()
        ends = [len(full) - sum(HEADER_SIZE + len(p) for p in payloads)]  # ends[k]: end of record k
        for p in payloads:
            ends.append(ends[-1] + HEADER_SIZE + len(p))
        cut = data.draw(st.integers(0, len(full)), label="cut")
        path.write_bytes(full[:cut])
        if cut < ends[0]:
            # The file header is written whole before the journal exists: a shorter file is refused, never reset.
            with pytest.raises(JournalError):
                Journal.open(path, "P")
            return
        k = bisect.bisect_right(ends, cut) - 1
        expected = list(enumerate(payloads[:k], 1))
        assert list(read_journal(path)) == expected
        assert path.read_bytes() == full[:cut]  # reading never modifies
        with Journal.open(path, "P", "none") as j:
            assert j.last_seq == k
            assert j.recovered_bytes == cut - ends[k]
            assert j.append(b"after") == k + 1
        assert list(read_journal(path)) == [*expected, (k + 1, b"after")]


_TEXT = st.text(min_size=1, max_size=12)


@given(st.one_of(
    st.builds(NewOrder, oid=_TEXT, broker=_TEXT, symbol=_TEXT, side=st.sampled_from(["buy", "sell"]),
              type=st.sampled_from(["limit", "market"]), price=st.none() | st.sampled_from(["3500.05", "0.5", "1"]),
              qty=st.integers(-(2**63), 2**63 - 1), tif=st.sampled_from(["GTC", "DAY", "IOC", "FOK"]),
              ts=st.integers(0, 2**63 - 1), gw=st.none() | _TEXT, req=st.integers(0, 2**63 - 1)),
    st.builds(CancelOrder, oid=_TEXT, broker=_TEXT, symbol=_TEXT, ts=st.integers(0, 2**63 - 1)),
    st.builds(ReplaceOrder, oid=_TEXT, broker=_TEXT, symbol=_TEXT, price=st.none() | st.just("3500.10"),
              qty=st.none() | st.integers(0, 10**12)),
    st.builds(EndOfDay, ts=st.integers(0, 2**63 - 1)),
))
def test_commands_round_trip_through_the_journal_payload(cmd: object) -> None:
    assert decode_command(encode_command(cmd)) == cmd  # type: ignore[arg-type]


def test_payload_of_earlier_versions_decodes_to_the_same_command() -> None:
    # What the matcher journaled before the typed commands: a plain msgpack map, the price as text.
    old = msgpack.packb({"op": "new", "oid": "o1", "broker": "B1", "symbol": "TCS", "side": "buy", "type": "limit",
                         "qty": 10, "tif": "GTC", "price": "3500.05", "ts": 17, "gw": "G1", "req": 3})
    assert decode_command(old) == NewOrder(oid="o1", broker="B1", symbol="TCS", side="buy", type="limit",
                                           price="3500.05", qty=10, tif="GTC", ts=17, gw="G1", req=3)
    old = msgpack.packb({"op": "instrument", "symbol": "TCS", "tick": "0.05", "lot": 1, "ref_price": "3500.00",
                         "band_pct": "10"})
    assert decode_command(old).op == "instrument"


def test_decode_command_refuses_non_map_garbage_and_unknown_fields() -> None:
    for payload, text in [(b"\x93\x01\x02\x03", "Expected `object`"), (b"\xc1", "payload is not a journal command"),
                          (msgpack.packb({"op": "bogus"}), "Invalid value 'bogus'"),
                          (msgpack.packb({"op": "cancel", "oid": "o", "broker": "b", "symbol": "S", "pad": 1}),
                           "unknown field `pad`")]:
        with pytest.raises(ValueError, match=re.escape(text)):
            decode_command(payload)


# ---------------------------------------------------------------------------
# A real crash
# ---------------------------------------------------------------------------

_WRITER = """
import sys
from fabric.commands import NewOrder, encode_command
from fabric.journal import Journal
j = Journal.open(sys.argv[1], "S1", sys.argv[2])
i = j.last_seq
told = False
while True:
    for _ in range(1 + i % 97):
        i += 1
        j.append(encode_command(NewOrder(oid=f"o{i}", broker="B1", symbol="TCS", side="buy", type="limit",
                                         price="3500.05", qty=i, tif="GTC", gw="x" * (i % 500))))
    j.commit()
    if not told and i > 2000:
        print(i, flush=True)
        told = True
"""


@pytest.mark.parametrize("policy", ["none", "batch"])
def test_kill_9_while_appending_leaves_contiguous_prefix_of_valid_records(tmp_path: Path, policy: str) -> None:
    path = tmp_path / "s1.journal"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    committed = 0
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), policy], stdout=subprocess.PIPE,
                                text=True, env=env, cwd=ROOT)
        assert proc.stdout is not None
        committed = int(proc.stdout.readline())  # a commit that returned: the records are in the OS
        time.sleep(0.05 + 0.07 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with Journal.open(path, "S1", policy) as j:
            assert j.last_seq >= committed
        seqs = []
        for seq, payload in read_journal(path):
            cmd = decode_command(payload)
            assert type(cmd) is NewOrder
            assert cmd.oid == f"o{seq}" and cmd.qty == seq and cmd.gw == "x" * (seq % 500)
            seqs.append(seq)
        assert seqs == list(range(1, len(seqs) + 1))
        assert journal_info(path).torn_bytes == 0


# ---------------------------------------------------------------------------
# exfab journal inspect
# ---------------------------------------------------------------------------

_SESSION = [
    '{"op":"instrument","symbol":"TCS","tick":"0.05","lot":1,"ref_price":"3500.00","band_pct":"10"}',
    '{"op":"new","oid":"o1","broker":"B1","symbol":"TCS","side":"buy","type":"limit","price":"3500.05","qty":10,'
    '"tif":"GTC"}',
    '{"op":"new","oid":"o2","broker":"B2","symbol":"TCS","side":"sell","type":"market","qty":5,"tif":"IOC"}',
    '{"op":"new","oid":"o3","broker":"B2","symbol":"TCS","side":"sell","type":"limit","price":3500.10,"qty":4}',
    '{"op":"replace","oid":"o1","broker":"B1","symbol":"TCS","price":"3500.10","qty":8}',
    '{"op":"new","oid":"o4","broker":"B3","symbol":"TCS","side":"buy","type":"limit","price":"3500.07","qty":1}',
    '{"op":"cancel","oid":"o3","broker":"B2","symbol":"TCS"}',
    '{"op":"new","oid":"o5","broker":"B3","symbol":"TCS","side":"buy","type":"limit","price":"3499.00","qty":2,'
    '"tif":"DAY"}',
    '{"op":"end_of_day"}',
]


def _journal_lines(path: Path, lines: list[str]) -> None:
    with Journal.open(path, "S1") as j:
        for text in lines:
            # As exfab replay reads a line (fractions become Decimals, never floats), into the typed command.
            j.append(encode_command(replay.parse_command(json.loads(text, parse_float=Decimal))))


def _inspect(path: Path, **kw: bool) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    rc = inspect(str(path), out=out, err=err, **kw)
    return rc, out.getvalue().splitlines(), err.getvalue()


def test_inspect_events_equal_replay_events_with_seq(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    _journal_lines(path, _SESSION)
    rc, lines, err = _inspect(path)
    assert rc == 0
    assert err.splitlines()[0] == f"journal {path}: shard S1, 9 records, seq 1..9"
    r = Replayer()
    expected = [(i, ev) for i, text in enumerate(_SESSION, 1) for ev in r.apply_line(text, i)]
    assert [json.loads(s) for s in lines] == [{**json.loads(replay.dumps(ev)), "seq": i} for i, ev in expected]
    # The same text as exfab replay's, with "seq" as one more field at the end.
    assert lines == [replay.dumps(ev)[:-1] + f',"seq":{i}}}' for i, ev in expected]
    assert [json.loads(replay.dumps(ev)) for _, ev in expected] == [
        json.loads(replay.dumps(ev)) for ev in replay_lines(_SESSION)]
    kinds = {json.loads(s)["event"] for s in lines}
    assert {"accepted", "trade", "replaced", "rejected", "cancelled", "expired"} <= kinds


def test_inspect_example_session_equals_exfab_replay_output(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    lines = SESSION.read_text().splitlines()
    _journal_lines(path, lines)
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "replay", str(SESSION)], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    rc, got, _ = _inspect(path)
    assert rc == 0 and len(got) == len(proc.stdout.splitlines()) > len(lines)
    stripped = []
    for text in got:
        ev = json.loads(text)
        del ev["seq"]
        stripped.append(json.dumps(ev, separators=(",", ":"), ensure_ascii=False))
    assert stripped == proc.stdout.splitlines()


def test_inspect_commands_prints_records_as_replayable_commands(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    _journal_lines(path, _SESSION)
    rc, lines, _ = _inspect(path, commands=True)
    assert rc == 0
    assert [json.loads(s) for s in lines] == [
        {**msgspec.to_builtins(replay.parse_command(json.loads(text, parse_float=Decimal))), "seq": i}
        for i, text in enumerate(_SESSION, 1)]
    assert '"price":"3500.10",' in lines[3]  # a price given as a JSON number is journaled as its exact text
    # exfab replay ignores "seq": the printed commands replay to the same events.
    assert replay_lines(lines) == replay_lines(_SESSION)


def test_inspect_torn_tail_reported_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    _journal_lines(path, _SESSION)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4)
    before = path.read_bytes()
    rc, lines, err = _inspect(path, commands=True)
    assert rc == 0 and len(lines) == 8
    assert "8 records, seq 1..8; torn tail of" in err.splitlines()[0]
    assert path.read_bytes() == before


def test_inspect_not_a_journal_exit_2_corrupt_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(_SESSION))
    rc, lines, err = _inspect(path)
    assert rc == 2 and not lines and "not a journal" in err
    rc, _, err = _inspect(tmp_path / "missing")
    assert rc == 2 and "cannot read" in err
    path = tmp_path / "s1.journal"
    offsets = _write(path, _payloads(5))
    data = bytearray(path.read_bytes())
    data[offsets[1] + HEADER_SIZE] ^= 1
    path.write_bytes(data)
    rc, _, err = _inspect(path)
    assert rc == 1 and "corrupt journal" in err


def test_inspect_undecodable_record_gives_malformed_rejection(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    with Journal.open(path, "S1") as j:
        j.append(b"\xc1")
        j.append(msgpack.packb({"op": "bogus", "oid": "o9"}))  # a map, but no command a matcher journals
    rc, lines, _ = _inspect(path)
    for seq, text in enumerate(lines, 1):
        ev = json.loads(text)
        assert rc == 0 and ev["event"] == "rejected" and ev["reason"] == "malformed" and ev["seq"] == seq
        assert ev["text"].startswith(f"record {seq}: payload is not a journal command")


# ---------------------------------------------------------------------------
# Journals written before the typed commands
# ---------------------------------------------------------------------------

DATA = ROOT / "tests" / "data"


def test_journal_written_by_version_0_1_reads_to_the_same_events(tmp_path: Path) -> None:
    # tests/data/v0.1-A.journal was written by a matcher of commit 20858e1 (plain msgpack maps), and
    # v0.1-A.events.jsonl is what that commit's `exfab journal inspect` printed for it.
    path = tmp_path / "A.journal"
    path.write_bytes((DATA / "v0.1-A.journal").read_bytes())
    rc, lines, _ = _inspect(path)
    assert rc == 0
    assert lines == (DATA / "v0.1-A.events.jsonl").read_text().splitlines()
    kinds = {json.loads(s)["event"] for s in lines}
    assert {"accepted", "trade", "replaced", "cancelled", "rejected"} <= kinds


# ---------------------------------------------------------------------------
# exfab journal verify
# ---------------------------------------------------------------------------


def _verify(path: Path, repair: bool = False) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = verify(str(path), repair=repair, out=out, err=err)
    return rc, out.getvalue() + err.getvalue()


def test_verify_sound_journal_reports_records_and_last_seq(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    _write(path, _payloads(5))
    rc, text = _verify(path)
    assert rc == 0 and "5 records, seq 1..5" in text


def test_verify_torn_tail_exit_1_repair_cuts_it(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    _write(path, _payloads(5))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 3)
    rc, text = _verify(path)
    assert rc == 1 and "torn tail" in text and "--repair" in text
    rc, text = _verify(path, repair=True)
    assert rc == 0 and "repaired" in text
    rc, text = _verify(path)
    assert rc == 0 and "4 records, seq 1..4" in text and "torn tail" not in text


def test_verify_corruption_exit_1_file_unchanged_even_with_repair(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    offsets = _write(path, _payloads(5))
    data = bytearray(path.read_bytes())
    data[offsets[1] + HEADER_SIZE] ^= 1
    path.write_bytes(data)
    rc, text = _verify(path, repair=True)
    assert rc == 1 and "CORRUPT at offset" in text
    assert path.read_bytes() == data


def test_verify_foreign_payload_exit_1_not_a_journal_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    with Journal.open(path, "S1") as j:
        j.append(msgpack.packb({"op": "bogus"}))
    rc, text = _verify(path)
    assert rc == 1 and "record 1: not a command" in text
    other = tmp_path / "x.txt"
    other.write_text("hello")
    assert _verify(other)[0] == 2


def test_rollback_cuts_what_was_appended_since_the_mark_and_appending_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    payloads = _payloads(6)
    with Journal.open(path, "S1", index_every=2) as j:
        for p in payloads[:3]:
            j.append(p)
        j.commit()
        mark = j.mark()
        size = path.stat().st_size
        for p in payloads[3:5]:
            j.append(p)
        j.commit()
        assert path.stat().st_size > size
        j.rollback(mark)
        assert path.stat().st_size == size and j.last_seq == 3
        assert j.append(payloads[5]) == 4
        j.commit()
        assert j.read_range(1, 4) == [(1, payloads[0]), (2, payloads[1]), (3, payloads[2]), (4, payloads[5])]
    assert list(read_journal(path)) == [(1, payloads[0]), (2, payloads[1]), (3, payloads[2]), (4, payloads[5])]


def test_rollback_after_a_failed_fsync_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s1.journal"
    with Journal.open(path, "S1") as j:
        mark = j.mark()
        j.append(_payloads(1)[0])
        j._fail("fsync failed: simulated")  # what _sync does when fdatasync raises
        with pytest.raises(JournalError, match="reopen"):
            j.rollback(mark)


def test_truncate_cuts_the_records_after_a_seq_and_appending_goes_on(tmp_path: Path) -> None:
    from fabric.journal import Journal, read_journal

    path = tmp_path / "A.journal"
    j = Journal.open(path, shard="A", fsync="none", index_every=4)
    for i in range(1, 11):
        j.append(f"r{i}".encode())
    j.commit()
    assert j.truncate(6) == 4 and j.last_seq == 6
    assert j.truncate(6) == 0
    assert j.append(b"new7") == 7
    j.commit()
    assert j.read_range(5, 7) == [(5, b"r5"), (6, b"r6"), (7, b"new7")]
    j.close()
    assert [p for _, p in read_journal(path)] == [b"r1", b"r2", b"r3", b"r4", b"r5", b"r6", b"new7"]
    j = Journal.open(path, shard="A", fsync="none", index_every=4)
    assert j.truncate(0) == 7 and j.last_seq == 0 and j.append(b"x") == 1
    j.close()
