"""Round-trip latency and throughput of a target, side by side with the floor.

The floor (``perf/floor.py``) is a plain pyzmq echo over the exchange's hops
and processes; every run measures it on this machine, at the same rates, so the
exchange's figures always come with the figures of doing nothing.

For each offered rate the open-loop driver (``perf/harness.py``) sends for
``--duration`` seconds and measures each message's latency from its intended
send time.  Then a closed loop keeps ``--window`` messages outstanding and
counts completions per second: for the floor once with one message per call at
every hop, once with the gateway batching what it drained into one message to
the matcher.  The report (``report.json``, ``report.md``, ``latency.png``) goes
to ``--out``; by default to ``.exfab/perf/latency/`` under the current directory
(a working folder that ``.gitignore`` leaves out), so that measuring never
changes the reports checked in under ``perf/reports/``: name one of those with
``--out`` to refresh it on purpose.

Usage::

    python perf/latency.py                                  # floor, 10,000 msgs/s for 5 s, tcp
    python perf/latency.py --sweep 2000,5000,10000,20000 --transport ipc
    python perf/latency.py --target exchange --json         # once make_exchange_target is wired

``--json`` prints one object: ``floor_p50_us``, ``floor_p99_us`` (at the first
rate), ``floor_throughput_per_s`` (batched), ``floor_throughput_unbatched_per_s``
and, for a target other than the floor, ``<kind>_p50_us``, ``<kind>_p99_us``
for each of its completion kinds (``ack_p50_us`` ...) and ``throughput_per_s``.
For the exchange also ``matcher_cpu_us_per_cmd`` and ``gateway_cpu_us_per_cmd``:
the CPU time (user + system, ``/proc/PID/stat``) of all its matcher processes,
and of all its gateway processes, over the pipelined run, divided by that run's
commands; ``cpu_target_us_per_cmd`` (15, issue 12) and ``matcher_cpu_vs_target``,
``gateway_cpu_vs_target`` (the figure over the target); ``fsync``, the policy
they were measured with; and the floor's own figures for comparison
(``floor_matcher_cpu_us_per_msg``, ``floor_gateway_cpu_us_per_msg``, batched).

``--profile DIR`` runs the exchange's matchers and gateways under cProfile
(``nodes/profiling.py``, through ``EXFAB_PROFILE_DIR``): each writes
``DIR/<kind>-<name>.prof`` and ``.txt`` when it stops, and the report lists
each node's top functions by own time, per command.

On a shared machine read ``others`` (``floor_others_cores`` in the JSON): the
cores that processes outside the harness took during a run.  The floor alone
keeps a 2-core machine busy at 10,000 msgs/s, so anything else running moves
its figures a lot.  ``--floor-gateway batched`` sends the floor's open-loop runs
through the batching gateway too, as the exchange's matcher will batch.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from perf.floor import FloorConfig  # noqa: E402
from perf.harness import (  # noqa: E402
    CPU_TARGET_US_PER_CMD,
    FloorTarget,
    LoadDriver,
    PipelinedResult,
    RunResult,
    Target,
    write_report,
)

# Relative to the current directory: a scratch folder, never the tracked perf/reports/ (see report_dir).
DEFAULT_OUT = Path(".exfab") / "perf" / "latency"


def report_dir(out: str | Path | None, cwd: str | Path | None = None) -> Path:
    """Return the report folder: ``out`` when the command line named one, else :data:`DEFAULT_OUT` under ``cwd``.

    Parameters
    ----------
    out
        The ``--out`` option (``None`` when not given); a relative path is relative to ``cwd``.
    cwd
        The directory the command runs in (default: the current directory).
    """
    base = Path.cwd() if cwd is None else Path(cwd)
    return base / (DEFAULT_OUT if out is None else Path(out))


# --------------------------------------------------------------------------- HOOK: the real exchange


def make_exchange_target(args: argparse.Namespace) -> Target:
    """Return the real exchange as a :class:`perf.harness.Target` (see :mod:`perf.exchange_target`).

    Parameters
    ----------
    args
        The parsed command line: ``brokers``, ``fsync``, ``topology``, ``profile`` and ``profile_clock`` are used.
    """
    if args.transport != "tcp":
        raise SystemExit("the exchange's topology uses tcp endpoints; --transport ipc applies to the floor only")
    if args.profile is not None and args.topology is not None:
        raise SystemExit("--profile applies to an exchange the harness starts, not to one already running "
                         "(--topology): start that one with EXFAB_PROFILE_DIR set instead")
    from perf.exchange_target import ExchangeTarget

    return ExchangeTarget(brokers=args.brokers, fsync=args.fsync, topology=args.topology,
                          profile_dir=args.profile, profile_clock=args.profile_clock, curve=not args.no_curve)


# --------------------------------------------------------------------------- runs


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of rates: {text!r}") from exc
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def build_parser(prog: str = "perf/latency.py") -> argparse.ArgumentParser:
    """Return the command line's parser (``exfab perf`` may reuse it)."""
    p = argparse.ArgumentParser(prog=prog, description="Round-trip latency and throughput against the floor.")
    p.add_argument("--target", choices=("floor", "exchange"), default="floor", help="system under test")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--rate", type=_positive, default=10_000.0, help="offered msgs/s (default 10000)")
    load.add_argument("--sweep", type=_rates, metavar="R1,R2,...", help="offered rates, one run each")
    p.add_argument("--duration", type=_positive, default=5.0, help="seconds per rate (default 5)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds thrown away before each rate (default 0.5)")
    p.add_argument("--drain", type=float, default=2.0, help="seconds to wait for late completions (default 2)")
    p.add_argument("--transport", choices=("tcp", "ipc"), default="tcp", help="loopback transport (default tcp)")
    p.add_argument("--window", type=int, default=1000, help="outstanding messages when pipelined (default 1000)")
    p.add_argument("--throughput-duration", type=float, default=2.0,
                   help="seconds per pipelined measurement; 0 skips them (default 2)")
    p.add_argument("--batch-format", choices=("packed", "multipart"), default="packed",
                   help="how the floor's batching gateway frames a batch (default packed: one msgpack frame)")
    p.add_argument("--floor-gateway", choices=("unbatched", "batched"), default="unbatched",
                   help="the floor gateway of the open-loop runs: one message per call (default) or batching")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help=f"report folder (default {DEFAULT_OUT}/ under the current directory; the checkout's "
                        ".gitignore leaves .exfab/ out)")
    p.add_argument("--brokers", type=int, default=8, help="simulated brokers of the exchange target (default 8)")
    p.add_argument("--fsync", default="batch", help="the matchers' journal fsync policy (default batch)")
    p.add_argument("--no-curve", action="store_true", help="start the exchange without [security]: every socket in "
                   "the clear (default: CURVE everywhere, with local.toml's demo keys), to measure what CURVE costs")
    p.add_argument("--topology", default=None, metavar="FILE",
                   help="drive the exchange already running with this topology (default: start one on free ports)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="run the exchange's matchers and gateways under cProfile; each writes DIR/<kind>-<name>.prof "
                        "and .txt when it stops (every figure then includes the profiler's cost)")
    p.add_argument("--profile-clock", choices=("wall", "cpu"), default="wall",
                   help="the profiler's clock: wall (default; waits count) or cpu (the main thread's CPU time, "
                        "slower)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def measure(target: Target, rates: list[float], args: argparse.Namespace, *, latency: bool = True,
            config: str = "") -> tuple[list[RunResult], PipelinedResult | None]:
    """Start `target`, run each rate open loop (if `latency`), then pipelined (if asked); always stop it."""
    target.start()
    try:
        driver = LoadDriver(target, progress=not args.quiet, drain=args.drain)
        runs = [driver.run(rate, args.duration, warmup=args.warmup) for rate in rates] if latency else []
        piped = None
        if args.throughput_duration > 0:
            piped = driver.pipelined(args.throughput_duration, args.window, config=config)
        return runs, piped
    finally:
        target.stop()


def cpu_figures(piped: PipelinedResult | None, floor: PipelinedResult | None) -> dict[str, float | None]:
    """Return the CPU per command of the exchange's matchers and gateways (pipelined) against the target.

    Parameters
    ----------
    piped
        The exchange's pipelined run (None: not measured).
    floor
        The floor's batched pipelined run, whose nodes' figures are given beside (``floor_..._us_per_msg``).

    Returns
    -------
    dict
        ``matcher_cpu_us_per_cmd``, ``gateway_cpu_us_per_cmd`` (None when not measured), ``cpu_target_us_per_cmd``,
        ``matcher_cpu_vs_target``, ``gateway_cpu_vs_target`` (figure / target), ``floor_matcher_cpu_us_per_msg``,
        ``floor_gateway_cpu_us_per_msg``.
    """
    out: dict[str, float | None] = {"cpu_target_us_per_cmd": CPU_TARGET_US_PER_CMD}
    for kind in ("matcher", "gateway"):
        us = piped.node_cpu_us_per_msg.get(kind) if piped is not None else None
        out[f"{kind}_cpu_us_per_cmd"] = us
        out[f"{kind}_cpu_vs_target"] = None if us is None else round(us / CPU_TARGET_US_PER_CMD, 2)
        out[f"floor_{kind}_cpu_us_per_msg"] = floor.node_cpu_us_per_msg.get(kind) if floor is not None else None
    return out


def read_profiles(target: Target, folder: Path, top: int = 20) -> list[dict[str, Any]]:
    """Return, for each node profile the exchange's nodes wrote into `folder`, its top functions by own time.

    Only the profiles of the nodes `target` started are read (``node_labels``); ``commands`` is every command the
    target sent over its life, which is what each profile covers.
    """
    import pstats

    from nodes.profiling import top_functions, total_time, wait_time

    out: list[dict[str, Any]] = []
    since = getattr(target, "started_at", 0.0)
    for label in getattr(target, "node_labels", []):
        prof = folder.resolve() / f"{label.replace(':', '-')}.prof"
        if not prof.exists() or prof.stat().st_mtime < since:
            continue  # a kind that does not profile (the ticker), one killed before it could write, an older run's
        stats = pstats.Stats(str(prof))
        out.append({"node": label.replace(":", "-"), "prof": str(prof), "txt": str(prof.with_suffix(".txt")),
                    "commands": getattr(target, "commands_sent", 0), "total_s": round(total_time(stats), 3),
                    "wait_s": round(wait_time(stats), 3), "top": top_functions(stats, top)})
    return out


def _summary(prefix: str, run: RunResult, kinds: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in kinds:
        p = run.percentiles(kind)
        name = prefix or kind
        for key in ("p50", "p90", "p99", "p99.9", "max"):
            out[f"{name}_{key.replace('.', '')}_us"] = p[key] if p["count"] else None
    return out


def main(argv: list[str] | None = None, *, prog: str = "perf/latency.py") -> int:
    """Run the floor (and the target), write the report, print the figures; return the exit status.

    Parameters
    ----------
    argv
        The options (``sys.argv[1:]`` when None).
    prog
        The command's name in help and in the report's reproduction line (e.g. ``exfab perf``).

    Returns
    -------
    int
        0 on success, 2 when the target cannot be made, 130 on Ctrl-C (every process is stopped first).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    try:
        return _main(args, argv, prog)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130


def _main(args: argparse.Namespace, argv: list[str], prog: str) -> int:
    rates: list[float] = args.sweep or [args.rate]
    base = FloorConfig(transport=args.transport, batch_format=args.batch_format)

    target: Target | None = None
    if args.profile is not None and args.target != "exchange":
        sys.stderr.write(f"{prog}: --profile profiles the exchange's nodes: it needs --target exchange\n")
        return 2
    if args.target == "exchange":
        try:
            target = make_exchange_target(args)
        except NotImplementedError as exc:
            sys.stderr.write(f"{prog}: {exc}\n")
            return 2

    batched_config = replace(base, batched=True)
    batched_label = f"batched ({args.batch_format})"
    if args.floor_gateway == "batched":  # the open-loop runs go through the batching gateway
        floor_runs, batched = measure(FloorTarget(batched_config), rates, args, config=batched_label)
        _, unbatched = measure(FloorTarget(base), rates, args, latency=False, config="unbatched")
    else:
        floor_runs, unbatched = measure(FloorTarget(base), rates, args, config="unbatched")
        _, batched = measure(FloorTarget(batched_config), rates, args, latency=False, config=batched_label)
    throughput = [t for t in (unbatched, batched) if t is not None]
    runs, piped = floor_runs, None
    if target is not None:
        runs, piped = measure(target, rates, args, config="")
        if piped is not None:
            throughput.append(piped)

    extra: dict[str, Any] = {
        "command": f"{'python ' if prog.endswith('.py') else ''}{prog} {shlex.join(argv)}".rstrip(),
        "transport": args.transport,
        "floor_gateway": args.floor_gateway,
        "throughput": [vars(t) for t in throughput],
        "cpu_target_us_per_cmd": CPU_TARGET_US_PER_CMD,
    }
    cpu = cpu_figures(piped if target is not None else None, batched)
    fsync = args.fsync if args.topology is None else None  # a running exchange (--topology) has its own policy
    if target is not None:
        extra["fsync"] = fsync
        extra["cpu_us_per_cmd"] = cpu
    if args.profile is not None and target is not None:
        extra["profile_dir"] = str(args.profile.resolve())
        extra["profile_clock"] = args.profile_clock
        extra["profiles"] = read_profiles(target, args.profile)
    paths = write_report(runs, report_dir(args.out), floor=floor_runs if target is not None else None, extra=extra)

    out: dict[str, Any] = {
        "target": args.target,
        "transport": args.transport,
        "rate_per_s": rates[0],
        "duration_s": args.duration,
        **_summary("floor", floor_runs[0], ("echo",)),
        "floor_achieved_per_s": round(floor_runs[0].achieved_per_s, 1),
        "floor_lost": floor_runs[0].lost,
        "floor_others_cores": floor_runs[0].cpu.get("others_cores"),
        "floor_throughput_per_s": round(batched.msgs_per_s, 1) if batched else None,
        "floor_throughput_unbatched_per_s": round(unbatched.msgs_per_s, 1) if unbatched else None,
    }
    if target is not None:
        out.update(_summary("", runs[0], runs[0].kinds))
        out["achieved_per_s"] = round(runs[0].achieved_per_s, 1)
        out["lost"] = runs[0].lost
        out["others_cores"] = runs[0].cpu.get("others_cores")
        out["throughput_per_s"] = round(piped.msgs_per_s, 1) if piped else None
        out["fsync"] = fsync
        out.update(cpu)
        if "profiles" in extra:
            out["profile_dir"] = extra["profile_dir"]
            out["profiles"] = [p["prof"] for p in extra["profiles"]]
    out["runs"] = [{"target": r.target, "offered_per_s": r.offered_per_s, "achieved_per_s": round(r.achieved_per_s, 1),
                    "sent": r.sent, "completed": r.completed, **_summary("", r, r.kinds)}
                   for r in [*runs, *(floor_runs if target is not None else [])]]
    out["report"] = str(paths["md"])

    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{'target':<9} {'kind':<5} {'offered/s':>10} {'achieved/s':>10} {'lost':>6} {'others':>6} {'p50':>8} "
          f"{'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>8}   (us, from intended send time, {args.transport})")
    for r in [*runs, *(floor_runs if target is not None else [])]:
        for kind in r.kinds:
            p = r.percentiles(kind)
            keys = ("p50", "p90", "p99", "p99.9", "max")
            cells = " ".join(f"{p[k]:>8,.0f}" if p["count"] else f"{'-':>8}" for k in keys)
            others = f"{r.cpu['others_cores']:.1f}" if "others_cores" in r.cpu else "-"
            print(f"{r.target:<9} {kind:<5} {r.offered_per_s:>10,.0f} {r.achieved_per_s:>10,.0f} {r.lost:>6} "
                  f"{others:>6} {cells}")
    print("others: cores that processes outside the harness used during the run (above 0.2: disturbed figures)")
    for t in throughput:
        per_msg = ", ".join(f"{k} {v:,.1f} us" for k, v in t.node_cpu_us_per_msg.items())
        print(f"pipelined {t.target} {t.config or ''}, window {t.window}: {t.msgs_per_s:,.0f} msgs/s"
              + (f"; CPU per message: {per_msg}" if per_msg else ""))
    if target is not None:
        shown = [f"{kind} {cpu[f'{kind}_cpu_us_per_cmd']:,.1f} us ({cpu[f'{kind}_cpu_vs_target']:.1f}× the target)"
                 for kind in ("matcher", "gateway") if cpu.get(f"{kind}_cpu_us_per_cmd") is not None]
        policy = f", fsync {fsync}" if fsync else ""
        print(f"CPU per command, pipelined{policy} (target {CPU_TARGET_US_PER_CMD:g} us each): "
              + ("; ".join(shown) if shown else "not measured (no pipelined run, or no node processes here)"))
    for p in extra.get("profiles", []):
        print(f"profile: {p['prof']} (top functions: {p['txt']})")
    print(f"report: {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
