"""What synchronous replication costs: acknowledgement latency and throughput with and without a secondary.

Starts a ZooKeeper and the local topology with both shards as primary/secondary
pairs, in a scratch folder, on free ports. For each journal policy asked for
(``--fsync``; ``batch``: the primary and the secondary each fsync before the
order is acknowledged; ``none``: both hold it in memory, written to the OS, the
fsync behind), ``exfab perf`` drives shard A twice in the same run: with its
secondary in sync (every batch waits for the secondary's acknowledgement), then
with the secondaries killed (the primaries go on alone). Prints the ack p50 and
p99 at ``--rate`` and the pipelined throughput of each, and their ratios.

Usage::

    python perf/replication.py                         # fsync batch and none, 1,000 orders/s for 5 s
    python perf/replication.py --fsync none --rate 2000 --out /tmp/repl
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from topology.launcher import Launcher  # noqa: E402
from topology.model import GATEWAY, MATCHER  # noqa: E402
from topology.ports import free_port, pairs_on_free_ports  # noqa: E402
from topology.servers import ZooKeeperServer  # noqa: E402
from topology.zk import connect, load, paths  # noqa: E402

LOCAL = ROOT / "topology" / "examples" / "local.toml"
DEFAULT_OUT = Path(".exfab") / "perf" / "replication"
def _state(launcher: Launcher, shard: str, what: str) -> dict[str, Any] | None:
    zk = connect(launcher.topo)
    try:
        data, _ = zk.get(paths(launcher.topo).shard(shard) + f"/{what}")
        return load(data)
    except Exception:
        return None
    finally:
        zk.stop()
        zk.close()


def _wait(cond: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"replication: {what}: not within {timeout:g} s")
        time.sleep(0.1)


def _perf(path: Path, rate: float, duration: float) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "tools.cli", "perf", "--target", "exchange", "--topology", str(path),
                          "--rate", str(rate), "--duration", str(duration), "--json", "--quiet"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"replication: exfab perf failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(fsync: str, rate: float, duration: float) -> dict[str, Any]:
    """Run one journal policy: with the secondaries in sync, then without them."""
    tmp = Path(tempfile.mkdtemp(prefix="exfab-repl-"))
    java = shutil.which("java") or "java"
    zk = ZooKeeperServer("127.0.0.1", free_port(), tmp / "zk", java=java)
    zk.start()
    try:
        path = pairs_on_free_ports(LOCAL, tmp, f"127.0.0.1:{zk.port}", ("A", "B"))
        launcher = Launcher(path, workdir=tmp, kinds=(MATCHER, GATEWAY), extra_args={"matcher": ["--fsync", fsync]})
        print(f"replication: fsync {fsync}: starting the pairs in {tmp} ...", file=sys.stderr, flush=True)
        launcher.start()
        try:
            for shard in ("A", "B"):
                _wait(lambda s=shard: (_state(launcher, s, "insync") or {}).get("name"), f"shard {shard} in sync")
            print(f"replication: fsync {fsync}: with the secondaries ...", file=sys.stderr, flush=True)
            paired = _perf(path, rate, duration)
            for shard in ("A", "B"):
                primary = (_state(launcher, shard, "primary") or {})["name"]
                other = next(r.name for r in launcher.topo.shard(shard).replicas if r.name != primary)
                launcher.kill(MATCHER, other)
            print(f"replication: fsync {fsync}: primaries alone ...", file=sys.stderr, flush=True)
            time.sleep(1.0)
            alone = _perf(path, rate, duration)
            # (shard A's first batch after the kill waited REPL_TIMEOUT_S and dropped its secondary; B took none)
            assert not (_state(launcher, "A", "insync") or {}).get("name"), "shard A's primary goes on alone"
        finally:
            launcher.stop()
    finally:
        zk.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"fsync": fsync, "with_secondary": paired, "alone": alone}


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the report; return 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fsync", default="batch,none", help="journal policies, comma-separated (default batch,none)")
    ap.add_argument("--rate", type=float, default=1000.0, help="orders per second offered (default 1000)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    runs = [measure(f, args.rate, args.duration) for f in args.fsync.split(",")]
    lines = [f"`python perf/replication.py --fsync {args.fsync} --rate {args.rate:g} --duration {args.duration:g}`",
             "", "| fsync | secondary | ack p50 | ack p99 | pipelined orders/s |", "| --- | --- | ---: | ---: | ---: |"]
    for r in runs:
        for key, label in (("with_secondary", "in sync"), ("alone", "none (alone)")):
            m = r[key]
            lines.append(f"| {r['fsync']} | {label} | {m['ack_p50_us']:,.0f} µs | {m['ack_p99_us']:,.0f} µs | "
                         f"{m['throughput_per_s']:,.0f} |")
        w, a = r["with_secondary"], r["alone"]
        ratios = (w["ack_p50_us"] / a["ack_p50_us"], w["ack_p99_us"] / a["ack_p99_us"],
                  w["throughput_per_s"] / a["throughput_per_s"])
        lines.append(f"| {r['fsync']} | with / alone | {ratios[0]:.2f}× | {ratios[1]:.2f}× | {ratios[2]:.2f}× |")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replication.json").write_text(json.dumps(runs, indent=1) + "\n")
    (args.out / "replication.md").write_text(text + "\n")
    print(f"report: {args.out / 'replication.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
