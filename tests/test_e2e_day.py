"""A compressed trading day through the real exchange: the matcher follows the topology's [calendar].

The local topology with a [calendar] whose day runs 60 times as fast: the
primary matcher journals each phase as a ``session`` command and publishes it;
orders of the pre-open are accepted without trading, the call auction trades
them at the equilibrium, the close publishes the closing price and expires the
DAY orders, and the journal replays to the same day.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from fabric.client import BrokerClient
from fabric.protocol import PubBundle, SessionEvent, decode_pub, heartbeat_topic, state_topic
from tests.helpers import LOCAL, dial, gateway_endpoints, journal_events, topology_on_free_ports
from topology.launcher import Launcher
from topology.model import GATEWAY, MATCHER

pytestmark = pytest.mark.e2e

# A short day, at 60 times: a clock minute is a real second. Order entry runs 9:00 to 9:20 (20 s, so that a slow
# start-up still finds it open), the auction to 9:21, continuous trading to 9:23, the closing phase to 9:25.
CALENDAR = """
[calendar]
pre_open = "09:00"
entry_close = "09:20"
random_close_s = 1
matching_end = "09:20"
continuous = "09:21"
continuous_end = "09:23"
vwap_minutes = 1
closing_session = "09:24"
close = "09:25"
scale = 60
start = "08:59"
anchor = {anchor}
"""


class _Sessions:
    """A SUB to shard 0's ``session`` messages."""

    def __init__(self, ex: Launcher) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        dial(self.sock, ex.topo.shards[0].replicas[0].pub.connect, ex.topo)
        self.sock.subscribe(state_topic(0))
        self.sock.subscribe(heartbeat_topic(0))
        self.got: list[SessionEvent] = []

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; got {self.got}"
            while self.sock.poll(100):
                topic, body = self.sock.recv_multipart()
                if topic.startswith(b"H"):
                    continue
                msg = decode_pub(body)
                msgs = [decode_pub(b) for b in msg.msgs] if isinstance(msg, PubBundle) else [msg]
                self.got.extend(m for m in msgs if isinstance(m, SessionEvent))

    def phases(self) -> list[str]:
        return [m.phase for m in self.got if m.kind == "phase"]

    def close(self) -> None:
        self.sock.close(0)


def test_a_compressed_day_runs_every_phase_and_replays_from_the_journal(tmp_path: Path) -> None:
    path = topology_on_free_ports(LOCAL, tmp_path)
    anchor = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=8)
    path.write_text(path.read_text() + CALENDAR.format(anchor=anchor.isoformat()))
    ex = Launcher(path, workdir=tmp_path, kinds=(MATCHER, GATEWAY), extra_args={"matcher": ["--fsync", "none"]})
    ex.start()
    sessions = _Sessions(ex)
    b1 = BrokerClient(gateway_endpoints(ex)[:1], "B1", timeout=5.0)
    b1.connect()
    try:
        # Before the pre-open (the market is closed) orders are refused; the first one taken is the pre-open's.
        deadline = time.monotonic() + 60
        while True:
            buy = b1.buy("TCS", 10, "3510.00", "DAY")
            if buy.rejected is None:
                break
            assert buy.rejected.reason == "market_closed", buy.rejected
            assert time.monotonic() < deadline, "the pre-open did not come"
            time.sleep(0.2)
        sell = b1.sell("TCS", 4, "3490.00", "DAY")
        assert buy.accepted and sell.accepted
        assert buy.fills == [] and sell.fills == []  # collected, not matched
        late = b1.buy("TCS", 1, "3400.00", "IOC")
        assert late.rejected is not None and late.rejected.reason == "bad_time_in_force"
        sessions.wait(lambda: any(m.kind == "indicative" and m.qty == 4 for m in sessions.got), "the indicative")
        sessions.wait(lambda: "continuous" in sessions.phases(), "continuous trading")
        auction = next(m for m in sessions.got if m.kind == "auction")
        # 3490 and 3510 both trade 4 leaving 6; the previous close (3500) lies between them: rule 3.
        assert (auction.symbol, auction.price, auction.qty, auction.unmatched) == ("TCS", "3500.00", 4, 6)
        assert b1.order_status(buy.oid, "TCS").cum_qty == 4
        sessions.wait(lambda: "closed" in sessions.phases(), "the close")
        assert sessions.phases()[-4:] == ["auction", "continuous", "closing", "closed"]
        close = next(m for m in sessions.got if m.kind == "close" and m.symbol == "TCS")
        assert close.price == "3500.00"  # no continuous trade: the last traded price, the auction's
        st = b1.order_status(buy.oid, "TCS")
        assert (st.state, st.cum_qty) == ("expired", 4)
        refused = b1.buy("TCS", 1, "3400.00", "DAY")
        assert refused.rejected is not None and refused.rejected.reason == "market_closed"
        # The journal holds the day: replayed, it gives the same phases and the same auction.
        events = journal_events(ex, "A")
        journaled = [e["phase"] for e in events if e["event"] == "session"]
        assert journaled[-5:] == ["pre_open", "auction", "continuous", "closing", "closed"]
        assert sessions.phases() == journaled[-len(sessions.phases()):]
        assert [{k: v for k, v in e.items() if k != "seq"} for e in events
                if e["event"] == "auction" and e["symbol"] == "TCS"] == [
            {"event": "auction", "symbol": "TCS", "price": "3500.00", "qty": 4, "unmatched": 6}]
    finally:
        b1.close()
        sessions.close()
        ex.stop()
