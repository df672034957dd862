"""Risk check benchmark: what :meth:`fabric.risk.RiskChecks.check` adds to the gateway's order path.

One ``new`` limit order of one broker checked again and again (its limits resolved on the first call, as the
gateway does) against: no limit configured (the one compare the gateway pays when a topology has no ``[risk]``),
one limit (the quantity), and every limit (quantity, value, risk band, open orders, the token bucket).

Usage::

    python perf/bench_risk.py               # ns per check, best of --repeat runs of --n checks
    python perf/bench_risk.py --n 500000 --repeat 7
"""

from __future__ import annotations

import argparse
import timeit
from decimal import Decimal

from fabric.instruments import Instrument
from fabric.protocol import New
from fabric.risk import RiskChecks, RiskLimits

CASES = {
    "no limits": RiskLimits(),
    "max_order_qty only": RiskLimits(max_order_qty=100_000),
    "every limit": RiskLimits(max_order_qty=100_000, max_order_value=Decimal("10000000"), risk_band_pct=Decimal("10"),
                              max_open_orders=10**9, max_orders_per_s=10**9, burst=10**9),
}


def main() -> None:
    """Print the cost of one check per case."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="checks per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best is printed")
    args = ap.parse_args()
    tcs = Instrument("TCS", tick=Decimal("0.05"), ref_price=Decimal("3500.00"), band_pct=Decimal("10"))
    msg = New(oid="1", symbol="TCS", side="buy", type="limit", price="3500.05", qty=10, tif="GTC")
    for name, limits in CASES.items():
        r = RiskChecks(limits, {}, {"TCS": tcs}, {})
        assert r.check("B1", msg) is None
        check = r.check
        best = min(timeit.repeat(lambda: check("B1", msg), number=args.n, repeat=args.repeat))  # noqa: B023
        print(f"{name:20} {best / args.n * 1e9:6.0f} ns per check")


if __name__ == "__main__":
    main()
