"""The gateway's risk band follows the matcher's reference price (the day's close), from start and day to day.

First in process: a gateway fed its shard's snapshot and ``S`` topic by hand takes the snapshot's reference
prices, then each ``close`` after it in the shard's order (a gap filled by replay first, what the snapshot
already had dropped). Then through the real exchange over a compressed day: the day closes well above the
topology's reference price, the next day's orders are checked around the close, and a gateway restarted after
the close starts from it.
"""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import zmq

from fabric.client import BrokerClient
from fabric.protocol import (
    BookSnapshot,
    New,
    PubBundle,
    ReplayReply,
    SessionEvent,
    SnapshotReply,
    SnapshotRequest,
    decode_internal,
    encode,
)
from nodes.gateway import Gateway
from tests.helpers import LOCAL, gateway_endpoints, topology_on_free_ports
from tests.test_e2e_day import CALENDAR, _Sessions
from topology.launcher import Launcher
from topology.load import load
from topology.model import GATEWAY, MATCHER

RISK = '\n[risk]\nrisk_band_pct = "5"\n'  # TCS's reference 3500.00: a band of 3325.00-3675.00


def _close(shard: int, seq: int, tseq: int, price: str, symbol: str = "TCS") -> SessionEvent:
    return SessionEvent(shard=shard, seq=seq, tseq=tseq, epoch=0, ts=0, kind="close", phase="closing", symbol=symbol,
                        price=price)


def _band_refusal(gw: Gateway, price: str) -> str | None:
    r = gw.risk.check("B1", New(oid="o", symbol="TCS", side="buy", type="limit", price=price, qty=1, tif="DAY"))
    return None if r is None else r[1]


def test_gateway_takes_the_snapshots_reference_then_each_close_in_the_shards_order(tmp_path: Path) -> None:
    path = topology_on_free_ports(LOCAL, tmp_path)
    path.write_text(path.read_text() + RISK)
    topo = load(path)
    gw = Gateway(topo, topo.gateways[0].name, ctx=zmq.Context())
    try:
        no = gw.shard_no["TCS"]
        lane = gw.lanes[no]
        ref = lambda: gw.risk.instruments["TCS"].ref_price  # noqa: E731
        # Before the shard answers: the topology's reference; what comes on S waits for the snapshot.
        gw.on_state(no, encode(_close(no, 8, 3, "3550.00")))  # published before the snapshot: it has it
        gw.on_state(no, encode(_close(no, 12, 5, "3610.00")))  # after it
        assert ref() == Decimal("3500.00")
        assert "3325.00-3675.00" in (_band_refusal(gw, "3700.00") or "")
        lane.refs_asked = 0.0  # (asked when its loop starts)
        book = BookSnapshot(symbol="TCS", bids=[], asks=[], trade_id=0, book_tseq=0, trade_tseq=0, ref_price="3600.00")
        gw.on_snapshot(no, SnapshotReply(shard=no, seq=10, epoch=0, exec_tseq=0, books=[book], state_tseq=4))
        assert ref() == Decimal("3610.00")  # the snapshot's 3600.00, then the close after it (3550.00 was before)
        assert lane.refs_asked is None
        assert _band_refusal(gw, "3700.00") is None  # 5 % around 3610.00: 3429.50-3790.50
        late = BookSnapshot(symbol="TCS", bids=[], asks=[], trade_id=0, book_tseq=0, trade_tseq=0, ref_price="1.00")
        gw.on_snapshot(no, SnapshotReply(shard=no, seq=11, epoch=0, exec_tseq=0, books=[late], state_tseq=5))
        assert ref() == Decimal("3610.00")  # a late answer to a request sent again changes nothing
        # A lost message (tseq 6): the one after it waits, and a replay of the range is asked for.
        gw.on_state(no, encode(PubBundle(msgs=[encode(_close(no, 16, 7, "3630.00"))])))
        assert ref() == Decimal("3610.00")
        assert lane.stream.replay is not None and (lane.stream.replay.first, lane.stream.replay.last) == (13, 15)
        gw.on_replay(no, encode(ReplayReply(shard=no, first=13, last=15, done=True,
                                            msgs=[encode(_close(no, 14, 6, "3620.00"))])))
        assert ref() == Decimal("3630.00")
        text = _band_refusal(gw, "3820.00")
        assert text is not None and "3448.50-3811.50" in text and "reference price 3630.00" in text, text
        # A close of a symbol the topology does not have is logged and left.
        gw.on_state(no, encode(_close(no, 17, 8, "10.00", symbol="NOPE")))
        assert "NOPE" not in gw.risk.instruments
    finally:
        gw._lookups.shutdown(wait=False)
        gw.lookup.close()
        gw.ctx.destroy(linger=0)


def test_gateway_asks_a_silent_shard_again_less_and_less_often_until_it_answers(tmp_path: Path) -> None:
    topo = load(topology_on_free_ports(LOCAL, tmp_path))
    ctx = zmq.Context()
    gw = Gateway(topo, topo.gateways[0].name, ctx=ctx)
    matcher = ctx.socket(zmq.ROUTER)  # shard 0's recovery socket, which reads but does not answer
    matcher.bind("inproc://recovery-0")
    gw.recovery = [ctx.socket(zmq.DEALER) for _ in gw.lanes]
    gw.recovery[0].connect("inproc://recovery-0")
    try:
        lane = gw.lanes[0]
        gw._ask_refs(0, time.monotonic())
        waits = []
        for _ in range(7):
            lane.refs_asked -= lane.refs_wait  # type: ignore[operator]  # as if that long went by unanswered
            gw.ask_replays()
            waits.append(lane.refs_wait)
        assert waits == [4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
        asked = [decode_internal(matcher.recv_multipart()[-1]) for _ in range(8)]
        assert asked == [SnapshotRequest(shard=0)] * 8
        assert gw.risk.instruments["TCS"].ref_price == Decimal("3500.00")  # the topology's until it answers
        book = BookSnapshot(symbol="TCS", bids=[], asks=[], trade_id=0, book_tseq=0, trade_tseq=0, ref_price="3670.00")
        gw.on_snapshot(0, SnapshotReply(shard=0, seq=3, epoch=0, exec_tseq=0, books=[book], state_tseq=1))
        assert gw.risk.instruments["TCS"].ref_price == Decimal("3670.00")
        assert lane.refs_asked is None
        gw.ask_replays()
        assert not matcher.poll(100)  # answered: never asked again
    finally:
        gw._lookups.shutdown(wait=False)
        gw.lookup.close()
        ctx.destroy(linger=0)


def test_matcher_snapshot_gives_the_last_close_and_a_replay_of_its_journal_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a restarted matcher, and a pair's new primary (which applied the same journal records), answer a
    # gateway that asks: the references come from the journal.
    from fabric.commands import NewOrder, SessionChange, encode_command
    from nodes.matcher import Matcher

    topo = load(topology_on_free_ports(LOCAL, tmp_path))
    name = topo.shard("A").replicas[0].name
    monkeypatch.chdir(tmp_path)  # the topology's data_dir is relative: the journal goes under the test's folder

    def refs(m: Matcher) -> dict[str, str | None]:
        return {b.symbol: b.ref_price for b in m.snapshot().books if b.symbol in ("TCS", "INFY")}

    m = Matcher(topo, name, fsync="none")
    try:
        assert refs(m) == {"TCS": "3500.00", "INFY": "1580.00"}  # the topology's, before any close
        t0 = 1_700_000_000_000_000_000
        for cmd in (SessionChange(phase="continuous", ts=t0),
                    NewOrder(oid="s", broker="B2", symbol="TCS", side="sell", type="limit", price="3670.00", qty=5,
                             tif="DAY", ts=t0 + 1),
                    NewOrder(oid="b", broker="B1", symbol="TCS", side="buy", type="limit", price="3670.00", qty=5,
                             tif="DAY", ts=t0 + 2),
                    SessionChange(phase="closing", vwap_from=t0, ts=t0 + 3)):
            m.journal.append(encode_command(cmd))
            m._apply(cmd)  # type: ignore[arg-type]
        m.journal.commit()
        assert refs(m) == {"TCS": "3670.00", "INFY": "1580.00"}  # the close (INFY did not trade: its reference)
    finally:
        m.journal.close()
    again = Matcher(topo, name, fsync="none")
    try:
        again.recover()
        assert refs(again) == {"TCS": "3670.00", "INFY": "1580.00"}
    finally:
        again.journal.close()


def _refused(r: Any) -> tuple[str, str] | None:
    return None if r.rejected is None else (r.rejected.reason, r.rejected.text)


@pytest.mark.e2e
def test_next_days_risk_band_is_around_the_close_and_a_restarted_gateway_starts_from_it(tmp_path: Path) -> None:
    path = topology_on_free_ports(LOCAL, tmp_path)
    anchor = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=5)
    path.write_text(path.read_text() + CALENDAR.format(anchor=anchor.isoformat()) + RISK)
    ex = Launcher(path, workdir=tmp_path, kinds=(MATCHER, GATEWAY), extra_args={"matcher": ["--fsync", "none"]})
    ex.start()
    sessions = _Sessions(ex)
    g1, g2 = gateway_endpoints(ex)[:2]
    b1 = BrokerClient([g1], "B1", timeout=5.0)
    b2 = BrokerClient([g1], "B2", timeout=5.0)
    b1.connect()
    b2.connect()
    try:
        # The first day trades TCS at 3670.00, near the top of the topology's risk band (3325.00-3675.00).
        sessions.wait(lambda: "continuous" in sessions.phases(), "continuous trading")
        assert b2.sell("TCS", 5, "3670.00", "DAY").accepted
        assert [f.price for f in b1.buy("TCS", 5, "3670.00", "DAY").fills] == ["3670.00"]
        far = _refused(b1.buy("TCS", 1, "3800.00", "DAY"))
        assert far is not None and far[0] == "price_outside_risk_band" and "reference price 3500.00" in far[1], far
        sessions.wait(lambda: any(m.kind == "close" and m.symbol == "TCS" for m in sessions.got), "the close")
        assert [m.price for m in sessions.got if m.kind == "close" and m.symbol == "TCS"] == ["3670.00"]
        # gw2 starts again after the close: the new process never saw it, and takes it from its shard's snapshot.
        ex.kill(GATEWAY, "gw2")
        ex.start_node(GATEWAY, "gw2")
        b3 = BrokerClient([g2], "B3", timeout=5.0)
        b3.connect()
        try:
            # The next day's pre-open: the risk band is 5 % around 3670.00 (3486.50-3853.50) at both gateways.
            sessions.wait(lambda: sessions.phases()[-1] == "pre_open" and "closed" in sessions.phases(),
                          "the next pre-open", timeout=60)
            for c in (b1, b3):
                inside = c.buy("TCS", 1, "3800.00", "DAY")  # outside the topology's band, inside the close's
                assert inside.accepted, (c.broker, inside.rejected)
                out = _refused(c.buy("TCS", 1, "3900.00", "DAY"))  # inside the matcher's 10 % (3303.00-4037.00)
                assert out is not None and out[0] == "price_outside_risk_band", out
                assert "3486.50-3853.50" in out[1] and "reference price 3670.00" in out[1], out
                assert _refused(c.buy("TCS", 1, "3480.00", "DAY"))[0] == "price_outside_risk_band"  # type: ignore[index]
        finally:
            b3.close()
    finally:
        b1.close()
        b2.close()
        sessions.close()
        ex.stop()
