"""Simulated brokers: a realistic flow of orders so that the demo's prices move.

One process, one loop (like a node): ``--brokers`` broker sessions spread over
the topology's gateways (``DEMO1``, ``DEMO2`` ...; when the topology lists its
``[[brokers]]``, as those brokers, one session each) send, at ``--rate``
commands per second in total, mostly passive limit orders near each symbol's
wandering mid price, some
orders that cross the spread (IOC limits and market orders), a few stop-loss
orders, and cancels of their own resting orders.  Answers are read as they come, to know which orders
rest.  With a ticker in the topology they follow the trading day from its
market data (``docs/sessions.md``): in the pre-open they send only orders that
can wait for the call auction, in the closing session orders at the closing
price, and nothing while the market takes no orders.  Run by ``exfab up --demo``, or alone:
``python -m tools.demo --topology topology/examples/local.toml``.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fabric.client import BrokerClient
from fabric.instruments import Instrument
from fabric.marketdata import MarketDataClient
from fabric.protocol import Accepted, Cancel, Cancelled, Expired, Fill, New
from topology.clients import market_data_client
from topology.keys import broker_keyring
from topology.load import load


@dataclass
class _Market:
    inst: Instrument
    mid: float  # in ticks; the simulation's own belief, never a price on the wire
    lo: int
    hi: int

    def step(self, rng: random.Random) -> None:
        # A random walk pulled gently back towards the reference price.
        ref = (self.lo + self.hi) / 2
        self.mid += rng.gauss(0, 1.5) - 0.01 * (self.mid - ref)
        self.mid = min(max(self.mid, self.lo + 20), self.hi - 20)


@dataclass
class _Broker:
    client: BrokerClient
    resting: dict[str, str] = field(default_factory=dict)  # oid -> symbol


class Demo:
    """The simulated brokers of a topology."""

    def __init__(self, topology: str, brokers: int = 8, rate: float = 100.0, seed: int = 7) -> None:
        self.topo = load(topology)
        self.rng = random.Random(seed)
        self.rate = rate
        gws = [g.endpoint.connect for g in self.topo.gateways]
        # A topology that lists its brokers lets only those log on: the demo trades as them, one session each.
        listed = [b.id for b in self.topo.brokers if b.role == "broker"]  # (operators do not trade)
        ids = listed[:brokers] or [f"DEMO{i + 1}" for i in range(brokers)]
        self.brokers = [_Broker(BrokerClient(gws[i % len(gws):] + gws[:i % len(gws)], broker, timeout=1.0,
                                             keys=broker_keyring(self.topo, broker)))
                        for i, broker in enumerate(ids)]
        self.markets = []
        for inst in self.topo.instruments:
            lo, hi = inst.band_lo or 1, inst.band_hi or 10**6
            self.markets.append(_Market(inst, (lo + hi) / 2, lo, hi))
        # The trading day's phase and each symbol's closing price, from the market data (no ticker: continuous).
        self.md: MarketDataClient | None = (market_data_client(self.topo, [m.inst.symbol for m in self.markets],
                                                               kinds=("quote",)) if self.topo.tickers else None)
        self.sent = 0
        self._stop = False

    def _phase(self) -> tuple[str, bool]:
        # (phase, entry) of the market now; continuous without a calendar or before the market data says.
        market = (self.md.market() if self.md is not None else None) or {}
        phase = market.get("phase")
        if phase is None:  # a market without a [calendar] trades continuously all day
            return "continuous", True
        return phase, bool(market.get("entry"))

    def _close(self, symbol: str) -> str | None:
        # The symbol's closing price of the day (decimal text), once its matcher has published it.
        state = self.md.trading_state(symbol) if self.md is not None else None
        auction = (state or {}).get("auction") or {}
        return auction.get("price") if auction.get("kind") == "close" else None

    def stop(self, *_: object) -> None:
        """Finish the current step and exit."""
        self._stop = True

    def _order(self, b: _Broker, phase: str = "continuous", entry: bool = True) -> bool:
        # One command of broker `b` in the day's `phase`, sent; False when the market takes none now.
        cmd = self.command(b, phase, entry, self._close)
        if cmd is not None:
            b.client.submit(cmd)
        return cmd is not None

    def command(self, b: _Broker, phase: str, entry: bool,
                close_of: Callable[[str], str | None]) -> New | Cancel | None:
        """Return broker ``b``'s next command in the day's ``phase`` (``entry``: whether it takes orders), or
        ``None`` when it takes none now; ``close_of(symbol)`` gives a symbol's closing price, once published."""
        rng = self.rng
        m = rng.choice(self.markets)
        m.step(rng)
        sym = m.inst.symbol
        roll = rng.random()
        if not entry:  # the call auction, the closing price's minutes, the night: no orders
            return None
        if roll < 0.15 and b.resting:
            oid = rng.choice(list(b.resting))
            return Cancel(oid=oid, symbol=b.resting.pop(oid))
        side: Literal["buy", "sell"] = "buy" if rng.random() < 0.5 else "sell"
        qty = rng.choice((1, 1, 2, 5, 10, 25, 50, 100)) * m.inst.lot
        oid = b.client.next_oid()
        if phase == "closing":  # the closing session: at the closing price, or a market order that takes it
            close = close_of(sym)
            if close is None:
                return None
            if roll < 0.3:
                return New(oid=oid, symbol=sym, side=side, type="market", qty=qty, tif="DAY")
            return New(oid=oid, symbol=sym, side=side, type="limit", price=close, qty=qty, tif="DAY")
        pre_open = phase == "pre_open"  # orders that wait for the call: DAY or GTC limits, market orders
        if roll < 0.20:
            return New(oid=oid, symbol=sym, side=side, type="market", qty=qty, tif="DAY" if pre_open else "IOC")
        sign = 1 if side == "buy" else -1
        if 0.30 <= roll < 0.33 and not pre_open:  # a stop-loss order: a trigger a few ticks away, SL-M or SL
            trigger = min(max(round(m.mid) + sign * rng.randint(3, 12), m.lo), m.hi)
            if rng.random() < 0.5:
                return New(oid=oid, symbol=sym, side=side, type="market", qty=qty, tif="DAY",
                           stop_price=m.inst.to_price(trigger))
            limit = min(max(trigger + sign * 2, m.lo), m.hi)
            return New(oid=oid, symbol=sym, side=side, type="limit", price=m.inst.to_price(limit), qty=qty,
                       tif="DAY", stop_price=m.inst.to_price(trigger))
        if roll < 0.30 and not pre_open:
            ticks = round(m.mid) + sign * rng.randint(1, 4)  # crosses the spread
            tif = "IOC"
        elif pre_open:  # either side of the mid, so that the call auction has something to cross
            ticks = round(m.mid) + rng.randint(-6, 6)
            tif = "DAY" if rng.random() < 0.5 else "GTC"
        else:
            ticks = round(m.mid) - sign * (1 + int(rng.expovariate(0.35)))  # passive, near the touch
            tif = "DAY" if rng.random() < 0.3 else "GTC"
        ticks = min(max(ticks, m.lo), m.hi)
        return New(oid=oid, symbol=sym, side=side, type="limit", price=m.inst.to_price(ticks), qty=qty,
                   tif=tif)  # type: ignore[arg-type]

    def _drain(self) -> None:
        if self.md is not None:
            self.md.poll(0)
        for b in self.brokers:
            for msg in b.client.poll(0):
                if isinstance(msg, Accepted) and msg.tif in ("GTC", "DAY"):
                    b.resting[msg.oid] = msg.symbol
                elif (isinstance(msg, Fill) and msg.leaves_qty == 0) or isinstance(msg, Cancelled | Expired):
                    b.resting.pop(msg.oid, None)
            if len(b.resting) > 60:  # keep the book a realistic size: cancel the oldest
                oid = next(iter(b.resting))
                b.client.submit(Cancel(oid=oid, symbol=b.resting.pop(oid)))

    def run(self, duration: float | None = None, ready: bool = False) -> int:
        """Trade until stopped (or for ``duration`` seconds); return the commands sent."""
        for b in self.brokers:
            b.client.connect()
        if self.md is not None and not self.md.wait_ready(10):  # the phase first: trade as continuous without it
            print("demo: no market data from the ticker within 10 s: trading as if continuously", file=sys.stderr,
                  flush=True)
        if ready:
            print("READY demo", flush=True)
        start = time.monotonic()
        interval = 1.0 / self.rate
        next_at = start
        while not self._stop and (duration is None or time.monotonic() - start < duration):
            now = time.monotonic()
            phase, entry = self._phase()
            while next_at <= now:  # open loop: catch up on the schedule, never slow down the flow
                self.sent += self._order(self.rng.choice(self.brokers), phase, entry)
                next_at += interval
            self._drain()
            time.sleep(min(max(0.0, next_at - time.monotonic()), 0.01))
        for b in self.brokers:
            b.client.close()
        if self.md is not None:
            self.md.close()
        return self.sent


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulated brokers: ``python -m tools.demo --topology FILE``."""
    ap = argparse.ArgumentParser(prog="exfab demo", description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="topology/examples/local.toml", metavar="FILE")
    ap.add_argument("--brokers", type=int, default=8)
    ap.add_argument("--rate", type=float, default=100.0, help="commands per second, all brokers together")
    ap.add_argument("--duration", type=float, default=None, help="seconds (default: until stopped)")
    ap.add_argument("--id", default="demo", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    demo = Demo(args.topology, args.brokers, args.rate)
    signal.signal(signal.SIGINT, demo.stop)
    signal.signal(signal.SIGTERM, demo.stop)
    demo.run(args.duration, ready=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
