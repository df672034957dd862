"""Trade through a running exchange with the asyncio client, ``AsyncBrokerClient``.

Two brokers in one event loop, each with its own client: B3 rests a bid of 20
INFY and follows its fills on the report stream (``next_report``) while B4
sells into it in four pieces of 5 from another task.

Start the exchange first, in another terminal, from the checkout::

    exfab up                                  # topology/examples/local.toml

then::

    python examples/client_async.py           # or --topology FILE for another topology
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from fabric.auth import Keyring  # noqa: E402
from fabric.client import AsyncBrokerClient  # noqa: E402
from fabric.protocol import Fill  # noqa: E402
from topology.keys import broker_keyring  # noqa: E402
from topology.load import load  # noqa: E402

SYMBOL, PRICE, QTY = "INFY", "1580.00", 20


async def buyer(gateways: list[str], keys: Keyring | None, resting: asyncio.Event) -> None:
    """Rest a bid, then wait on the report stream until it is filled."""
    async with AsyncBrokerClient(gateways, "B3", keys=keys) as c:
        r = await c.buy(SYMBOL, QTY, PRICE)
        print(f"B3 bid {r.oid}: {r.state}, leaves {r.status.leaves_qty if r.status else 0}")
        resting.set()
        leaves = QTY
        while leaves:
            report = await c.next_report(timeout=10.0)
            if report is None:
                print("B3: no report for 10 s; giving up")
                return
            if isinstance(report, Fill) and report.oid == r.oid:
                leaves = report.leaves_qty
                print(f"B3 fill #{report.trade_id}: {report.last_qty} @ {report.price}, "
                      f"cum {report.cum_qty}, leaves {leaves}")
        st = await c.order_status(r.oid, SYMBOL)
        print(f"B3 {r.oid}: {st.state}, cum {st.cum_qty}")


async def seller(gateways: list[str], keys: Keyring | None, resting: asyncio.Event) -> None:
    """Once the bid rests, sell into it in pieces."""
    async with AsyncBrokerClient(gateways[::-1], "B4", keys=keys) as c:
        await resting.wait()
        for _ in range(QTY // 5):
            r = await c.sell(SYMBOL, 5, PRICE, "IOC")
            print(f"B4 sell {r.oid}: {r.state}, filled {r.filled_qty}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default=str(ROOT / "topology" / "examples" / "local.toml"))
    args = ap.parse_args()
    topo = load(args.topology)
    gateways = [g.endpoint.connect for g in topo.gateways]
    resting = asyncio.Event()
    # Each broker logs on with its CURVE key: local.toml ships DEMO keys for B1-B4 (docs/security.md).
    await asyncio.gather(buyer(gateways, broker_keyring(topo, "B3"), resting),
                         seller(gateways, broker_keyring(topo, "B4"), resting))


if __name__ == "__main__":
    asyncio.run(main())
