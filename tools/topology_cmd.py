"""``exfab topology check FILE``: say whether a topology file is usable, and if not, every reason why."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from topology.load import TopologyError, load
from topology.model import Topology


def summary(topology: Topology) -> str:
    """Return a one-line account of a topology: instruments, shards, nodes and stores.

    Every node it names is one this version runs (``topology.launcher.RUNNABLE``); a topology with pairs
    also says how many matchers that makes.
    """
    pairs = sum(1 for s in topology.shards if s.paired)
    n_shards = len(topology.shards)
    matchers = sum(len(s.replicas) for s in topology.shards)
    if pairs == n_shards:
        shape = f" (all primary/secondary pairs: {matchers} matchers)"
    elif pairs:
        shape = f" ({pairs} primary/secondary pair{_s(pairs)}: {matchers} matchers)"
    else:
        shape = ""
    parts = [
        f"{len(topology.instruments)} instrument{_s(len(topology.instruments))} on {n_shards} shard{_s(n_shards)}"
        f"{shape}",
        f"{len(topology.gateways)} gateway{_s(len(topology.gateways))}",
    ]
    if len(topology.tickers) == 1:
        parts.append("ticker")
    elif topology.tickers:
        parts.append(f"{len(topology.tickers)} tickers")
    if topology.persistence is not None:
        parts.append("persistence")
    if topology.zookeeper is not None:
        n = len(topology.zookeeper.hosts)
        parts.append(f"{n} ZooKeeper server{_s(n)}")
    hosts = topology.hosts()
    parts.append(f"{len(hosts)} host{_s(len(hosts))}")
    st = topology.stores
    return (f"OK: {', '.join(parts)}; stores: recent={st.recent}, orders={st.orders}, history={st.history}")


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def check_command(path: str | Path, out: TextIO = sys.stdout) -> int:
    """Check the topology file at ``path`` and print the outcome to ``out``.

    Prints one ``OK: ...`` summary line when the file is usable; otherwise
    every problem, one per line (``place: what is wrong``), then a count.

    Returns
    -------
    int
        The exit status: 0 when the file is usable, 1 when it has problems.
    """
    try:
        topology = load(path)
    except TopologyError as e:
        for p in e.problems:
            print(p, file=out)
        n = len(e.problems)
        print(f"FAILED: {n} problem{_s(n)} in {path}", file=out)
        return 1
    print(summary(topology), file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m tools.topology_cmd FILE``; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tools.topology_cmd FILE", file=sys.stderr)
        return 2
    return check_command(args[0])


if __name__ == "__main__":
    sys.exit(main())
