"""End-to-end: self-trade prevention set per broker in the topology, through a gateway, stamped in the journal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric.client import BrokerClient
from fabric.commands import NewOrder, decode_command
from fabric.journal import read_journal
from fabric.protocol import Cancelled
from tests.helpers import LOCAL, gateway_endpoints, journal_events, topology_on_free_ports
from topology.launcher import Launcher
from topology.ports import without_security

pytestmark = pytest.mark.e2e

BROKERS = """
[[brokers]]
id = "RESTING"
stp = "cancel_resting"

[[brokers]]
id = "INCOMING"
stp = "cancel_incoming"

[[brokers]]
id = "OTHER"

[[brokers]]
id = "OFF"
stp = "off"
"""


@pytest.fixture
def stp_exchange(tmp_path: Path) -> Iterator[Launcher]:
    """The local topology with four listed brokers, two of them with self-trade prevention."""
    src = tmp_path / "stp.toml"
    src.write_text(without_security(LOCAL.read_text()) + BROKERS)
    launcher = Launcher(topology_on_free_ports(src, tmp_path), workdir=tmp_path)
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()


def _price(ex: Launcher, symbol: str, ticks_above_low: int) -> str:
    inst = ex.topo.instrument(symbol)
    assert inst.band_lo is not None
    return inst.to_price(inst.band_lo + ticks_above_low)


def _cancels(client: BrokerClient, oid: str, timeout: float = 5.0) -> list[Cancelled]:
    # The `cancelled` reports of `oid` among the client's reports (they may still be on their way).
    deadline = time.monotonic() + timeout
    while True:
        got = [m for m in client.reports if isinstance(m, Cancelled) and m.oid == oid]
        if got or time.monotonic() > deadline:
            return got
        client.poll(0.1)


def test_broker_stp_modes_from_the_topology_apply_and_are_journaled(stp_exchange: Launcher) -> None:
    ex = stp_exchange
    g1, g2 = gateway_endpoints(ex)
    shard = ex.topo.shards[0]
    sym = shard.symbols[0]
    px = _price(ex, sym, 100)
    with BrokerClient([g1], "RESTING") as resting, BrokerClient([g2], "OTHER") as other, \
            BrokerClient([g1], "INCOMING") as incoming, BrokerClient([g2], "OFF") as off:
        # cancel_resting: the broker's own resting sell is cancelled, its buy trades with the other broker's.
        own = resting.sell(sym, 5, px, oid="r-sell")
        theirs = other.sell(sym, 5, px, oid="o-sell")
        buy = resting.buy(sym, 8, px, oid="r-buy")
        assert [(f.price, f.last_qty) for f in buy.fills] == [(px, 5)]
        assert (buy.state, buy.filled_qty, buy.status and buy.status.leaves_qty) == ("partially_filled", 5, 3)
        assert [(c.qty, c.cum_qty, c.reason) for c in _cancels(resting, own.oid)] == [(5, 0, "self_trade")]
        st = resting.order_status(own.oid, sym)
        assert (st.state, st.reason) == ("cancelled", "self_trade")
        assert other.order_status(theirs.oid, sym).state == "filled"

        # cancel_incoming: the incoming IOC order is cancelled, the broker's resting order stays.
        px2 = _price(ex, sym, 200)
        rest = incoming.sell(sym, 5, px2, oid="i-sell")
        hit = incoming.buy(sym, 5, px2, "IOC", oid="i-buy")
        assert hit.fills == [] and hit.state == "cancelled"
        assert hit.status is not None and hit.status.reason == "self_trade"
        assert incoming.order_status(rest.oid, sym).state == "new"

        # off: the broker may trade with itself.
        px3 = _price(ex, sym, 300)
        off.sell(sym, 2, px3, oid="f-sell")
        cross = off.buy(sym, 2, px3, oid="f-buy")
        assert cross.state == "filled"

    # The journal holds each order's mode: replayed without the topology, it does the same.
    replica = shard.replicas[0]
    path = ex.workdir / ex.topo.journal_dir(replica) / f"{shard.name}.journal"
    modes = {cmd.oid: cmd.stp for _, payload in read_journal(path)
             if isinstance(cmd := decode_command(payload), NewOrder)}
    assert modes == {"r-sell": "cancel_resting", "o-sell": "off", "r-buy": "cancel_resting",
                     "i-sell": "cancel_incoming", "i-buy": "cancel_incoming", "f-sell": "off", "f-buy": "off"}
    replayed = [(e["oid"], e["reason"]) for e in journal_events(ex, shard.name)
                if e["event"] == "cancelled" and e["reason"] == "self_trade"]
    assert replayed == [("r-sell", "self_trade"), ("i-buy", "self_trade")]
