"""Two compressed trading days through the real exchange: the matcher follows the topology's [calendar].

The local topology with a [calendar] whose day runs 2,880 times as fast: the
primary matcher journals each phase as a ``session`` command and publishes it;
orders of the pre-open are accepted without trading, the call auction trades
them at the equilibrium, the close publishes the closing price, the closing
session trades orders at it, the market's close expires the DAY orders and moves
the band to the close; the next day's pre-open takes a GTC order of the first
day into its call auction. The journal replays to the same days.
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

# Two short days, at 2,880 times: 48 clock minutes are a real second, a clock day 30 s. From the anchor (00:00):
# order entry 00:48-06:00 (real seconds 1 to 7.5), the auction to 06:24 (8 s), continuous trading to 12:00 (15 s),
# the closing price's minutes to 12:48 (16 s), the closing session to 18:00 (22.5 s), then closed until the next
# day's pre-open (31 s), whose entry closes at 37.5 s and whose continuous trading opens at 38 s.
CALENDAR = """
[calendar]
pre_open = "00:48"
entry_close = "06:00"
random_close_s = 1
matching_end = "06:00"
continuous = "06:24"
continuous_end = "12:00"
vwap_minutes = 60
closing_session = "12:48"
close = "18:00"
scale = 2880
start = "00:00"
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


def test_two_compressed_days_run_every_phase_and_replay_from_the_journal(tmp_path: Path) -> None:
    path = topology_on_free_ports(LOCAL, tmp_path)
    anchor = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=10)
    path.write_text(path.read_text() + CALENDAR.format(anchor=anchor.isoformat()))
    ex = Launcher(path, workdir=tmp_path, kinds=(MATCHER, GATEWAY), extra_args={"matcher": ["--fsync", "none"]})
    ex.start()
    sessions = _Sessions(ex)
    b1 = BrokerClient(gateway_endpoints(ex)[:1], "B1", timeout=5.0)
    b2 = BrokerClient(gateway_endpoints(ex)[:1], "B2", timeout=5.0)
    b1.connect()
    b2.connect()
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
        sell = b2.sell("TCS", 4, "3490.00", "DAY")
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
        # Continuous trading: a GTC bid for the next day, and a trade at 3600, which makes the close.
        gtc = b1.buy("TCS", 10, "3550.00", "GTC")
        assert gtc.accepted and not gtc.fills
        assert b2.sell("TCS", 5, "3600.00", "DAY").accepted
        assert [f.price for f in b1.buy("TCS", 5, "3600.00", "DAY").fills] == ["3600.00"]
        # The closing session: orders at the closing price meet each other; the book's bids take no part.
        sessions.wait(lambda: any(m.kind == "phase" and m.entry for m in sessions.got if m.phase == "closing"),
                      "the closing session")
        close = next(m for m in sessions.got if m.kind == "close" and m.symbol == "TCS")
        assert close.price == "3600.00"  # the one continuous trade
        at_close = b2.sell("TCS", 3, "3600.00", "DAY")
        assert at_close.accepted and not at_close.fills
        market = b1.buy("TCS", 2, None, "DAY")
        assert [(f.price, f.last_qty) for f in market.fills] == [("3600.00", 2)]
        off = b1.buy("TCS", 1, "3590.00", "DAY")
        assert off.rejected is not None and off.rejected.reason == "not_closing_price", off.rejected
        sessions.wait(lambda: sessions.phases()[-1] == "closed", "the close")
        assert sessions.phases()[-5:] == ["auction", "continuous", "closing", "closing", "closed"]
        for oid, state, cum in ((buy.oid, "expired", 4), (at_close.oid, "expired", 2), (gtc.oid, "new", 0)):
            st = b1.order_status(oid, "TCS") if oid != at_close.oid else b2.order_status(oid, "TCS")
            assert (st.state, st.cum_qty) == (state, cum), (oid, st)
        refused = b1.buy("TCS", 1, "3400.00", "DAY")
        assert refused.rejected is not None and refused.rejected.reason == "market_closed"
        # The next day: the band is 10 % around 3600 (3240-3960), and the GTC bid joins the pre-open's call.
        sessions.wait(lambda: sessions.phases()[-1] == "pre_open", "the second pre-open", timeout=30)
        far = b2.sell("TCS", 1, "3900.00", "DAY")  # outside the first day's band (3150-3850)
        assert far.accepted, far.rejected
        assert b2.sell("TCS", 4, "3540.00", "DAY").accepted
        sessions.wait(lambda: any(m.kind == "indicative" and m.qty == 4 and m.price == "3550.00"
                                  for m in sessions.got), "the second day's indicative")
        sessions.wait(lambda: sessions.phases()[-1] == "continuous", "the second day's continuous trading")
        # 3540 and 3550 both trade 4 leaving 6; the previous close (3600) is above both: the nearer, 3550.
        auctions = [m for m in sessions.got if m.kind == "auction" and m.symbol == "TCS"]
        assert [(m.price, m.qty, m.unmatched) for m in auctions] == [("3500.00", 4, 6), ("3550.00", 4, 6)]
        st = b1.order_status(gtc.oid, "TCS")
        assert (st.state, st.cum_qty, st.leaves_qty) == ("partially_filled", 4, 6)
        # The journal holds both days: replayed, it gives the same phases, auctions and closing session.
        events = journal_events(ex, "A")
        journaled = [(e["phase"], e.get("entry", False)) for e in events if e["event"] == "session"]
        assert journaled[-9:] == [("pre_open", False), ("auction", False), ("continuous", False), ("closing", False),
                                  ("closing", True), ("closed", False), ("pre_open", False), ("auction", False),
                                  ("continuous", False)]
        assert sessions.phases() == [p for p, _ in journaled][-len(sessions.phases()):]
        assert [(e["price"], e["qty"], e["unmatched"]) for e in events
                if e["event"] == "auction" and e["symbol"] == "TCS"] == [("3500.00", 4, 6), ("3550.00", 4, 6)]
        assert [e["reason"] for e in events if e["event"] == "rejected" and e["oid"] == off.oid] == [
            "not_closing_price"]
        assert [(e["buy_oid"], e["sell_oid"], e["price"]) for e in events if e["event"] == "trade"
                and e["buy_oid"] == market.oid] == [(market.oid, at_close.oid, "3600.00")]
    finally:
        b1.close()
        b2.close()
        sessions.close()
        ex.stop()
