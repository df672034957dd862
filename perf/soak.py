"""Memory under a steady flow: the resident size of every node of the exchange over a long run.

Starts the local topology on free ports in a scratch folder, drives it with the
demo's simulated brokers (``tools/demo.py``: passive limits near a wandering
mid, some crossing orders, cancels) at ``--rate`` commands per second for
``--duration`` seconds, and samples every node's resident set size (RSS, from
``/proc``) every ``--sample`` seconds.  The report gives each node's RSS at
the start and the end and its growth per minute over the second half (after
the warm-up), as a table and a plot, with the commands and messages of the run.

Usage::

    python perf/soak.py                                  # 200/s for 10 minutes, report in .exfab/perf/soak/
    python perf/soak.py --rate 500 --duration 120 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from tools.demo import Demo  # noqa: E402
from topology.launcher import Launcher  # noqa: E402
from topology.ports import topology_on_free_ports  # noqa: E402

LOCAL = ROOT / "topology" / "examples" / "local.toml"
DEFAULT_OUT = Path(".exfab") / "perf" / "soak"


def rss_mb(pid: int) -> float | None:
    """Return the resident set size of process ``pid`` in MiB, or ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def growth_per_min(samples: list[tuple[float, float]]) -> float:
    """Return the least-squares slope of (seconds, MiB) samples, in MiB per minute (0 for fewer than two)."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    den = sum((t - mx) ** 2 for t, _ in samples)
    return 0.0 if den == 0 else 60 * sum((t - mx) * (v - my) for t, v in samples) / den


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the figures, write the report; return 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0, help="commands per second in all (default 200)")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of flow (default 600)")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    ap.add_argument("--fsync", default="none", help="the matchers' journal policy (default none: memory, not disk)")
    ap.add_argument("--ring-mb", type=int, default=None, metavar="MB",
                    help="the matchers' replay ring (default: theirs, 256 MB)")
    ap.add_argument("--keep-finished", type=int, default=None, metavar="N",
                    help="finished orders each matcher keeps in memory (default: theirs, 100,000)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="exfab-soak-"))
    matcher_args = ["--fsync", args.fsync] + ([] if args.ring_mb is None else ["--ring-mb", str(args.ring_mb)])
    if args.keep_finished is not None:
        matcher_args += ["--keep-finished", str(args.keep_finished)]
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp), workdir=tmp, extra_args={"matcher": matcher_args})
    print(f"soak: starting the exchange in {tmp} ...", file=sys.stderr, flush=True)
    launcher.start()
    series: dict[str, list[tuple[float, float]]] = {}
    sent = 0
    try:
        pids = {f"{n.kind}-{n.name}": n.proc.pid for n in launcher.nodes}
        demo = Demo(str(launcher.path), brokers=8, rate=args.rate, seed=11)
        runner = threading.Thread(target=lambda: demo.run(duration=args.duration), daemon=True)
        t0 = time.monotonic()
        runner.start()
        while True:
            now = time.monotonic() - t0
            for name, pid in pids.items():
                mb = rss_mb(pid)
                if mb is not None:
                    series.setdefault(name, []).append((now, mb))
            line = "  ".join(f"{n} {s[-1][1]:,.0f} MB" for n, s in series.items() if s)
            print(f"soak: {now:5.0f} s of {args.duration:.0f}  {line}", file=sys.stderr, flush=True)
            if not runner.is_alive():
                break
            runner.join(args.sample)
        sent = demo.sent
    finally:
        launcher.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for name, s in series.items():
        half = [p for p in s if p[0] >= s[-1][0] / 2]
        rows.append({"node": name, "start_mb": s[0][1], "end_mb": s[-1][1], "peak_mb": max(v for _, v in s),
                     "growth_mb_per_min_second_half": growth_per_min(half)})
    report: dict[str, Any] = {"rate": args.rate, "duration_s": args.duration, "sample_s": args.sample,
                              "ring_mb": args.ring_mb, "keep_finished": args.keep_finished,
                              "fsync": args.fsync, "commands_sent": sent, "nodes": rows,
                              "series": {k: [[round(t, 1), round(v, 2)] for t, v in s] for k, s in series.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    md = [f"# Memory under a steady flow: {args.rate:g} commands/s for {args.duration:g} s", "",
          f"`python perf/soak.py --rate {args.rate:g} --duration {args.duration:g}"
          f"{'' if args.ring_mb is None else f' --ring-mb {args.ring_mb}'}"
          f"{'' if args.keep_finished is None else f' --keep-finished {args.keep_finished}'}` (fsync {args.fsync}); "
          f"{sent:,} commands sent.", "",
          "| node | RSS at start (MiB) | at end | peak | growth over the second half (MiB/min) |",
          "| --- | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['node']} | {r['start_mb']:,.1f} | {r['end_mb']:,.1f} | {r['peak_mb']:,.1f} | "
           f"{r['growth_mb_per_min_second_half']:+.2f} |" for r in rows]
    (args.out / "soak.md").write_text("\n".join(md) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4.5))
        for name, s in series.items():
            ax.plot([t / 60 for t, _ in s], [v for _, v in s], label=name)
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(f"RSS of each node at {args.rate:g} commands/s")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / "soak.png", dpi=110)
    except ImportError:
        print("soak: matplotlib is not installed: no plot", file=sys.stderr)
    print("\n".join(md))
    print(f"\nreport: {args.out}/soak.md, soak.json, soak.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
