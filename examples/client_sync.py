"""Trade through a running exchange with the synchronous client, ``BrokerClient``.

Two brokers on the local topology: B1 rests a bid on TCS, B2 sells into it;
B1 sees the fill of its resting order, replaces the order down, looks it up,
lists its open orders and cancels it; then a refused order and a market order.

Start the exchange first, in another terminal, from the checkout::

    exfab up                                  # topology/examples/local.toml

then::

    python examples/client_sync.py            # or --topology FILE for another topology
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from fabric.client import BrokerClient, OrderResult  # noqa: E402
from fabric.protocol import Fill  # noqa: E402
from topology.keys import broker_keyring  # noqa: E402
from topology.load import load  # noqa: E402


def show(what: str, r: OrderResult) -> None:
    """Print one command's outcome: its reports, then the order's state."""
    filled = f", {r.filled_qty} filled by it" if r.fills else ""
    print(f"{what}: {r.op} {r.oid} -> {r.state}{filled}")
    for e in r.events:
        print(f"    {type(e).__name__:<9} {_fields(e)}")


def _fields(e: object) -> str:
    keys = ("price", "qty", "last_qty", "cum_qty", "leaves_qty", "aggressor", "kept_priority", "reason")
    return " ".join(f"{k}={getattr(e, k)}" for k in keys if getattr(e, k, None) is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default=str(ROOT / "topology" / "examples" / "local.toml"))
    args = ap.parse_args()
    # The gateways' endpoints come from the topology: tcp://127.0.0.1:7101 and :7102 for local.toml.
    topo = load(args.topology)
    gateways = [g.endpoint.connect for g in topo.gateways]
    # Each broker logs on with its CURVE key: local.toml ships DEMO keys for B1-B4 (docs/security.md).
    with (BrokerClient(gateways, "B1", keys=broker_keyring(topo, "B1")) as b1,
          BrokerClient(gateways[::-1], "B2", keys=broker_keyring(topo, "B2")) as b2):
        print(f"B1 on {b1.endpoint}, B2 on {b2.endpoint}")

        bid = b1.buy("TCS", 10, "3500.00")              # limit, GTC: rests
        show("B1 buys 10 TCS @ 3500.00", bid)

        hit = b2.sell("TCS", 4, "3500.00", "IOC")        # crosses at once
        show("B2 sells 4 TCS @ 3500.00 IOC", hit)

        # B1's resting order traded too: that fill arrives on B1's report stream.
        b1.poll(1.0)
        fills = [m for m in b1.reports if isinstance(m, Fill) and not m.aggressor]
        for f in fills:
            print(f"B1 report: fill {f.oid} {f.last_qty} @ {f.price}, leaves {f.leaves_qty}")
        b1.reports.clear()

        # FIX cancel/replace: qty is the new total, filled shares included (4 filled + 4 open).
        show("B1 replaces to a total of 8", b1.replace(bid.oid, "TCS", qty=8))

        st = b1.order_status(bid.oid, "TCS")
        print(f"B1 status: {st.state}, qty {st.qty}, cum {st.cum_qty}, leaves {st.leaves_qty} @ {st.price}")
        print("B1 open orders:", [(o.oid, o.symbol, o.leaves_qty) for o in b1.open_orders()])

        show("B1 cancels", b1.cancel(bid.oid, "TCS"))

        bad = b1.buy("TCS", 10, "3500.03")               # TCS trades in ticks of 0.05
        show("B1 buys off the tick", bad)
        assert bad.rejected is not None
        print(f"    reason {bad.rejected.reason}: {bad.rejected.text}")

        mkt = b2.sell("TCS", 5)                          # no price: a market order, IOC
        show("B2 sells 5 TCS at market", mkt)


if __name__ == "__main__":
    main()
