"""Open-loop load driver, pluggable targets, and the latency report.

The driver sends at a fixed rate on a schedule: message ``i`` is due at
``t0 + i / rate`` whatever happened to the messages before it, and its latency
is measured from that *intended* time, not from when it was actually sent.  A
target that stalls therefore shows the stall in every message queued behind it
(no coordinated omission), and a driver that falls behind its own schedule
shows up in the figures too (``send_lag_us`` says by how much: how late each
message left against its schedule, a part of its latency).

A target is anything with the :class:`Target` methods: it sends message ``i``
and reports completions as ``(i, kind)`` pairs, e.g. ``(i, "ack")`` and
``(i, "fill")``.  Latencies go into one HdrHistogram per kind (1 us .. 60 s,
3 significant digits).  The driver is one thread and one poll loop, like a node.

* :class:`FloorTarget` -- the plain pyzmq echo of ``perf/floor.py`` (kind ``echo``);
* :class:`LoadDriver` -- :meth:`~LoadDriver.run` (open loop at one rate) and
  :meth:`~LoadDriver.pipelined` (closed loop with a window: msgs/s);
* :func:`sweep` -- one run per offered rate against one started target;
* :func:`process_cpu_s` -- a process's CPU time from ``/proc``: a target with ``node_pids`` gets its nodes'
  CPU per message in each result (``node_cpu_s``, ``node_cpu_us_per_msg``);
* :func:`write_report` -- ``report.json``, ``report.md`` and ``latency.png``.

Usage (the command line is ``perf/latency.py``)::

    target = FloorTarget(FloorConfig(transport="ipc"))
    results = sweep(target, [2_000, 5_000, 10_000], duration=5.0)
    write_report(results, ".exfab/perf/latency")     # exfab perf's default folder (git ignores .exfab/)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import platform
import select
import subprocess
import sys
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import zmq
from hdrh.histogram import HdrHistogram

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from perf.floor import Floor, FloorConfig, make_order, order_seq  # noqa: E402

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
BUSY_WARNING_CORES = 0.2  # other processes' CPU during a run above which the driver warns
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
CPU_TARGET_US_PER_CMD = 15.0  # issue 12: CPU per command of the matchers, and of the gateways, at most this
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@runtime_checkable
class Target(Protocol):
    """What the driver needs from a system under test.

    Attributes
    ----------
    name
        Shown in progress lines, reports and plot labels (``floor``, ``exchange``).
    kinds
        The kinds of completion it reports.  The first is the *primary* kind:
        exactly one per message sent (an ack, an echo); the driver counts a
        message complete when its primary completion arrives.  Others (fills)
        may come zero or more times per message.

    A target may also have ``node_pids() -> dict[str, int]``: its node processes, ``"kind:name" -> pid``
    (``"matcher:A"``); the driver then reports their CPU time per message (see :func:`node_cpu_s`).
    """

    name: str
    kinds: tuple[str, ...]

    def start(self) -> None:
        """Start (or connect to) the system and return when it answers: timing starts after this."""
        ...

    def send(self, i: int) -> None:
        """Send message `i` now; ids are unique and increasing over the target's life."""
        ...

    def poll(self, timeout: float) -> list[tuple[int, str]]:
        """Wait at most `timeout` seconds (sub-millisecond matters) and return the completions that arrived."""
        ...

    def stop(self) -> None:
        """Stop the system or disconnect; must be safe to call twice and after a failed start."""
        ...


class FloorTarget:
    """The floor as a :class:`Target`: each message is an order, its completion the echo (kind ``echo``).

    Parameters
    ----------
    config
        The floor's transport, batching, hops and engine; unbatched TCP through a gateway by default.
    """

    kinds: tuple[str, ...] = ("echo",)

    def __init__(self, config: FloorConfig | None = None, name: str = "floor") -> None:
        self.name = name
        self.config = config or FloorConfig()
        self._floor: Floor | None = None
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._fd = -1

    def start(self) -> None:
        """Start the floor's processes and connect a client DEALER (after a ping round trip)."""
        if self._sock is not None:
            return
        try:
            self._floor = Floor(self.config)
            self._floor.start()
            self._ctx = zmq.Context()
            self._sock = self._floor.connect(self._ctx)
            self._fd = self._sock.FD
        except BaseException:
            self.stop()
            raise

    def send(self, i: int) -> None:
        """Send a new order whose ``seq`` is `i`."""
        assert self._sock is not None, "start() first"
        self._sock.send(make_order(i))

    def poll(self, timeout: float) -> list[tuple[int, str]]:
        """Return the echoes that arrived within `timeout` seconds (waits with microsecond resolution)."""
        sock = self._sock
        assert sock is not None, "start() first"
        # zmq.poll counts in whole milliseconds, which would make the driver spin at 10,000 msgs/s; the
        # socket's FD is edge-triggered, so look at EVENTS first and sleep on the FD only when nothing waits.
        if not _readable(sock):
            if timeout <= 0:
                return []
            select.select([self._fd], [], [], timeout)
            if not _readable(sock):
                return []
        out: list[tuple[int, str]] = []
        recv, again = sock.recv, zmq.Again
        while True:
            try:
                body = recv(zmq.NOBLOCK)
            except again:
                return out
            out.append((order_seq(body), "echo"))

    def node_stats(self) -> dict[str, dict[str, float]]:
        """Return the floor nodes' counters (see :meth:`perf.floor.Floor.stats`)."""
        return self._floor.stats() if self._floor is not None else {}

    def node_pids(self) -> dict[str, int]:
        """Return the floor's node processes: ``{"matcher:floor": pid, "gateway:floor": pid}``."""
        return self._floor.pids() if self._floor is not None else {}

    def stop(self) -> None:
        """Close the client and stop the floor's processes."""
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._floor is not None:
            self._floor.stop()
            self._floor = None


def _readable(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def new_histogram() -> HdrHistogram:
    """Return an empty latency histogram in microseconds: 1 us .. 60 s, 3 significant digits."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_ns(histogram: HdrHistogram, latencies_ns: Sequence[int] | np.ndarray) -> int:
    """Record latencies given in nanoseconds into `histogram` (in microseconds, clamped to its range).

    Returns
    -------
    int
        The sum of the recorded values in microseconds (HdrHistogram's own mean walks every bucket in Python).
    """
    if len(latencies_ns) == 0:
        return 0
    us = np.clip((np.asarray(latencies_ns, dtype=np.int64) + 500) // 1000, LOWEST_US, HIGHEST_US)
    # One record_value per distinct value: at 3 significant digits a second of traffic has a few hundred.
    values, counts = np.unique(us, return_counts=True)
    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
        histogram.record_value(v, c)
    return int(us.sum())


def summarize(histogram: HdrHistogram, sum_us: int | None = None) -> dict[str, float]:
    """Return count, mean, p50, p90, p99, p99.9 and max of `histogram`, in microseconds.

    Parameters
    ----------
    histogram
        Latencies in microseconds.
    sum_us
        The sum of the recorded values, for the mean (NaN without it).
    """
    count = histogram.get_total_count()
    if count == 0:
        return {"count": 0, "mean": math.nan, **{k: math.nan for k, _ in PERCENTILES}, "max": math.nan}
    out: dict[str, float] = {"count": count, "mean": round(sum_us / count, 1) if sum_us is not None else math.nan}
    for key, pct in PERCENTILES:
        out[key] = histogram.get_value_at_percentile(pct)
    out["max"] = histogram.get_max_value()
    return out


@dataclass
class RunResult:
    """The outcome of one open-loop run at one offered rate.

    Attributes
    ----------
    target
        The target's name.
    kinds
        The target's completion kinds, primary first.
    offered_per_s
        The schedule's rate.
    duration_s
        The schedule's length.
    sent
        Messages sent (``rate * duration``).
    completed
        Completions per kind.
    achieved_per_s
        Primary completions per second, from the first intended send time to the last primary completion.
    send_lag_us
        How late messages left against the schedule (p50, p99, max): the driver's own share of the
        latencies (waking up, a blocking ``send``); a large one means the driver was the bottleneck.
    stale
        Completions for ids outside this run (late ones from an earlier run) -- ignored.
    histograms
        Latency from the intended send time, per kind, in microseconds.
    sums_us
        The sum of each histogram's recorded values, for the means.
    cpu
        Cores used during the run by the machine, by the driver's process tree, and by others
        (see :class:`CpuWatch`); ``others_cores`` well above zero means the figures are disturbed.
    node_cpu_s
        CPU seconds each node process of the target used during the run (its drain included),
        ``"kind:name" -> s``; empty for a target without ``node_pids``.
    """

    target: str
    kinds: tuple[str, ...]
    offered_per_s: float
    duration_s: float
    sent: int = 0
    completed: dict[str, int] = field(default_factory=dict)
    achieved_per_s: float = 0.0
    send_lag_us: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    node_cpu_s: dict[str, float] = field(default_factory=dict)
    stale: int = 0
    histograms: dict[str, HdrHistogram] = field(default_factory=dict)
    sums_us: dict[str, int] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        """Return the primary completion kind."""
        return self.kinds[0]

    @property
    def lost(self) -> int:
        """Return how many messages never got their primary completion (within the drain time)."""
        return self.sent - self.completed.get(self.primary, 0)

    def percentiles(self, kind: str | None = None) -> dict[str, float]:
        """Return the latency summary (us) of `kind` (the primary kind by default)."""
        kind = kind or self.primary
        return summarize(self.histograms.get(kind) or new_histogram(), self.sums_us.get(kind))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict, with each histogram also in HdrHistogram's base64 encoding."""
        return {
            "target": self.target,
            "kinds": list(self.kinds),
            "offered_per_s": self.offered_per_s,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "completed": dict(self.completed),
            "lost": self.lost,
            "stale": self.stale,
            "achieved_per_s": round(self.achieved_per_s, 1),
            "send_lag_us": self.send_lag_us,
            "cpu": self.cpu,
            "node_cpu_s": self.node_cpu_s,
            "node_cpu_us_per_msg": cpu_us_per_msg(self.node_cpu_s, self.sent),
            "latency_us": {k: _json_safe(self.percentiles(k)) for k in self.kinds},
            "hdr": {k: h.encode().decode("ascii") for k, h in self.histograms.items() if h.get_total_count()},
        }


def _json_safe(summary: Mapping[str, float]) -> dict[str, float | None]:
    """Return `summary` with NaN (no samples) as None, which JSON can carry."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}


@dataclass(frozen=True)
class PipelinedResult:
    """Closed-loop throughput: primary completions per second with `window` messages outstanding."""

    target: str
    config: str
    msgs_per_s: float
    messages: int
    seconds: float
    window: int
    cpu: dict[str, float] = field(default_factory=dict)  # see RunResult.cpu
    node_cpu_s: dict[str, float] = field(default_factory=dict)  # see RunResult.node_cpu_s, over the counted seconds
    node_cpu_us_per_msg: dict[str, float] = field(default_factory=dict)  # kind -> its processes' CPU / messages


def process_cpu_s(pid: int) -> float | None:
    """Return the CPU seconds (user + system, all its threads) that process `pid` has used so far, or None.

    Read from ``/proc/PID/stat`` (Linux); None when the process is gone or ``/proc`` cannot be read.  Linux
    counts CPU time in scheduler ticks (``SC_CLK_TCK``, 100 a second here), so a reading is good to about 10 ms:
    compare readings seconds apart.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        rest = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
        if rest[0] in ("Z", "X"):  # a zombie has no threads left to count: the process is gone
            return None
        return (int(rest[11]) + int(rest[12])) / _CLK_TCK  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


def node_cpu_s(pids: Mapping[str, int]) -> dict[str, float]:
    """Return :func:`process_cpu_s` of each process of `pids` (``"kind:name" -> pid``); gone ones left out."""
    out: dict[str, float] = {}
    for label, pid in pids.items():
        cpu = process_cpu_s(pid)
        if cpu is not None:
            out[label] = cpu
    return out


def cpu_us_per_msg(cpu_s: Mapping[str, float], messages: int) -> dict[str, float]:
    """Return, for each kind of node, the CPU of all its processes in microseconds per message.

    Parameters
    ----------
    cpu_s
        CPU seconds per process, ``"kind:name" -> seconds`` (the kind is what precedes the colon).
    messages
        The messages (commands) of the same interval; no figure when there were none.
    """
    if messages <= 0:
        return {}
    kinds: dict[str, float] = {}
    for label, seconds in cpu_s.items():
        kind = label.split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0.0) + seconds
    return {kind: round(seconds / messages * 1e6, 1) for kind, seconds in kinds.items()}


class NodeCpuWatch:
    """CPU seconds used by a target's node processes between :meth:`start` and :meth:`stop` (see ``node_pids``)."""

    def __init__(self, target: object) -> None:
        get = getattr(target, "node_pids", None)
        self.pids: dict[str, int] = dict(get()) if callable(get) else {}
        self._before: dict[str, float] = {}

    def start(self) -> None:
        """Take the first reading."""
        self._before = node_cpu_s(self.pids)

    def stop(self) -> dict[str, float]:
        """Return each process's CPU seconds since :meth:`start` (``"kind:name" -> s``; {} without node pids)."""
        after = node_cpu_s(self.pids)
        return {label: round(after[label] - before, 3) for label, before in self._before.items() if label in after}


class CpuWatch:
    """Measure, between :meth:`start` and :meth:`stop`, the CPU used by the machine and by this process tree.

    A run on a shared machine is only worth its figures if nothing else ran: ``others_cores`` says how many
    cores other processes took meanwhile.  Linux only (``/proc``); Linux samples CPU time at each scheduler
    tick, so read it to a tenth of a core over seconds, not finer.
    """

    def __init__(self) -> None:
        self._t = 0.0
        self._machine = 0
        self._ours = 0
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @staticmethod
    def _machine_busy() -> int:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait

    @staticmethod
    def _tree_busy() -> int:
        """Return the CPU ticks of this process and all its descendants (live ones)."""
        parents: dict[int, int] = {}
        ticks: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            rest = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces
            parents[int(entry)] = int(rest[1])
            ticks[int(entry)] = int(rest[11]) + int(rest[12])  # utime + stime
        ours = {os.getpid()}
        grew = True
        while grew:
            grew = False
            for pid, ppid in parents.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    grew = True
        return sum(ticks.get(pid, 0) for pid in ours)

    def start(self) -> None:
        """Take the first reading."""
        try:
            self._t, self._machine, self._ours = time.perf_counter(), self._machine_busy(), self._tree_busy()
        except (OSError, ValueError, IndexError):
            self._t = 0.0

    def stop(self) -> dict[str, float]:
        """Return cores used since :meth:`start`: ``machine_cores``, ``ours_cores``, ``others_cores`` (or {})."""
        if not self._t:
            return {}
        try:
            seconds = time.perf_counter() - self._t
            machine = (self._machine_busy() - self._machine) / self._tick / seconds
            ours = (self._tree_busy() - self._ours) / self._tick / seconds
        except (OSError, ValueError, IndexError):
            return {}
        return {"machine_cores": round(machine, 2), "ours_cores": round(ours, 2),
                "others_cores": round(max(0.0, machine - ours), 2)}


def _tighten_timer_slack() -> None:
    """Ask Linux to wake this process on time: the default 50 us timer slack would delay sends at 10,000/s."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 ns
    except (OSError, AttributeError):
        pass


class LoadDriver:
    """Drive one started :class:`Target` with open-loop schedules or a closed window.

    Ids are unique over the driver's life, so a late completion from one run is never taken for one of the
    next run.

    Parameters
    ----------
    target
        A started target.
    progress
        Write a line per second to stderr (sent, completed, current p50/p99).
    drain
        Seconds to wait, after the last send, for missing primary completions.
    """

    def __init__(self, target: Target, *, progress: bool = True, drain: float = 2.0) -> None:
        self.target = target
        self.progress = progress
        self.drain = drain
        self.next_id = 0
        _tighten_timer_slack()

    def _say(self, text: str) -> None:
        sys.stderr.write(f"{text}\n")
        sys.stderr.flush()

    def run(self, rate: float, duration: float, *, warmup: float = 0.0) -> RunResult:
        """Send at `rate` msgs/s for `duration` seconds and return the latencies from the intended send times.

        Parameters
        ----------
        rate
            Offered messages per second.
        duration
            Seconds of schedule; ``round(rate * duration)`` messages are sent (at least one).
        warmup
            Seconds run first at the same rate and thrown away (connections, caches, compiled kernels).
        """
        if rate <= 0 or duration <= 0:
            raise ValueError("rate and duration must be positive")
        if warmup > 0:
            self._run(rate, warmup, quiet=True)
        return self._run(rate, duration, quiet=not self.progress)

    def _run(self, rate: float, duration: float, *, quiet: bool) -> RunResult:
        target = self.target
        kinds = tuple(target.kinds)
        primary = kinds[0]
        result = RunResult(target.name, kinds, rate, duration)
        watch = CpuWatch()
        watch.start()
        nodes = NodeCpuWatch(target)
        nodes.start()
        # Latencies (ns) go into flat int64 arrays and into the histograms after the run: recording while
        # the clock runs would stall the loop once a second and show up at p99.9.
        latencies: dict[str, array[int]] = {k: array("q") for k in kinds}
        shown = dict.fromkeys(kinds, 0)  # how much of each array the last progress line covered
        done = dict.fromkeys(kinds, 0)
        first = self.next_id
        total = max(1, round(rate * duration))
        self.next_id += total
        period = 1e9 / rate
        clock = time.perf_counter_ns
        send, poll = target.send, target.poll
        i = 0
        lags: array[int] = array("q")
        last_primary = 0
        t0 = clock() + 1_000_000
        next_tick = t0 + 1_000_000_000
        drain_until = 0
        stale = 0
        while True:
            now = clock()
            if i < total:
                due = min(total, int((now - t0) // period) + 1) if now >= t0 else 0
                if due > i:
                    while i < due:
                        lags.append(now - int(t0 + i * period))
                        send(first + i)
                        i += 1
                    if i == total:
                        drain_until = clock() + int(self.drain * 1e9)
                timeout = max(0.0, (t0 + i * period - clock()) / 1e9) if i < total else 0.0
            else:
                if done[primary] >= total or now >= drain_until:
                    if len(kinds) == 1 or now >= drain_until:
                        break
                    drain_until = min(drain_until, now + 20_000_000)  # a moment for trailing fills
                timeout = min(0.05, max(0.0, (drain_until - now) / 1e9))
            completions = poll(timeout)
            if completions:
                t = clock()
                for j, kind in completions:
                    k = j - first
                    lat = latencies.get(kind)
                    if k < 0 or k >= i or lat is None:
                        stale += 1
                        continue
                    lat.append(t - int(t0 + k * period))
                    done[kind] += 1
                    if kind == primary:
                        last_primary = t
            if now >= next_tick:
                if not quiet:
                    self._progress(result, (now - t0) / 1e9, i, done, latencies, shown)
                next_tick += 1_000_000_000
        result.sent = i
        result.completed = done
        result.stale = stale
        for kind, lat in latencies.items():
            result.histograms[kind] = new_histogram()
            result.sums_us[kind] = record_ns(result.histograms[kind], np.frombuffer(lat, dtype=np.int64))
        p50, p99, top = np.percentile(np.frombuffer(lags, dtype=np.int64), [50, 99, 100]) / 1000
        result.send_lag_us = {"p50": round(p50, 1), "p99": round(p99, 1), "max": round(top, 1)}
        if done[primary] and last_primary > t0:
            result.achieved_per_s = done[primary] / ((last_primary - t0) / 1e9)
        result.cpu = watch.stop()
        result.node_cpu_s = nodes.stop()
        if not quiet and result.cpu.get("others_cores", 0.0) >= BUSY_WARNING_CORES:
            self._say(f"warning: other processes used {result.cpu['others_cores']:.1f} of {os.cpu_count()} cores "
                      "during this run: its figures are not this system's alone")
        return result

    def _progress(self, result: RunResult, elapsed: float, sent: int, done: Mapping[str, int],
                  latencies: Mapping[str, array[int]], shown: dict[str, int]) -> None:
        """Print the figures of the interval since the last line: sent, completed, p50 and p99 per kind."""
        parts = []
        for kind, lat in latencies.items():
            # Slice the array (a copy) before viewing it: an array with a live view cannot grow.
            recent = np.frombuffer(lat[shown[kind] :], dtype=np.int64)
            shown[kind] = len(lat)
            if len(recent):
                p50, p99 = np.percentile(recent, [50, 99]) / 1000
                parts.append(f"{kind} {done[kind]:,} p50 {p50:,.0f} us p99 {p99:,.0f} us")
            else:
                parts.append(f"{kind} {done[kind]:,}")
        head = f"{result.target} @ {result.offered_per_s:,.0f}/s  {elapsed:4.1f} s  sent {sent:,}  "
        self._say(head + "  ".join(parts))

    def pipelined(
        self, duration: float, window: int = 1000, *, warmup: float = 0.3, config: str = ""
    ) -> PipelinedResult:
        """Keep `window` messages outstanding for `duration` seconds; return primary completions per second.

        Parameters
        ----------
        duration
            Seconds counted.
        window
            Most messages sent and not yet completed.
        warmup
            Seconds run before counting starts.
        config
            A label for the report (e.g. ``batched``).
        """
        if window < 1 or duration <= 0:
            raise ValueError("window must be >= 1 and duration > 0")
        target = self.target
        primary = target.kinds[0]
        send, poll = target.send, target.poll
        first = self.next_id
        outstanding: set[int] = set()
        i = first
        received = 0
        counted_from = 0
        start = time.perf_counter() + warmup
        end = start + duration
        counting = False
        watch = CpuWatch()
        nodes = NodeCpuWatch(target)
        while True:
            while len(outstanding) < window:
                send(i)
                outstanding.add(i)
                i += 1
            for j, kind in poll(0.1):
                if kind == primary and j in outstanding:
                    outstanding.discard(j)
                    received += 1
            now = time.perf_counter()
            if not counting and now >= start:
                counting, counted_from, start, end = True, received, now, now + duration
                watch.start()
                nodes.start()
            elif counting and now >= end:
                break
        self.next_id = i
        messages = received - counted_from
        seconds = now - start
        cpu = watch.stop()
        node_cpu = nodes.stop()
        per_msg = cpu_us_per_msg(node_cpu, messages)
        deadline = time.perf_counter() + self.drain  # let the window empty before the next measurement
        while outstanding and time.perf_counter() < deadline:
            for j, kind in poll(0.05):
                if kind == primary:
                    outstanding.discard(j)
        if self.progress:
            others = f" (others used {cpu['others_cores']:.1f} cores)" if "others_cores" in cpu else ""
            node = "; CPU per message: " + ", ".join(f"{k} {v:,.1f} us" for k, v in per_msg.items()) if per_msg else ""
            self._say(f"{target.name} pipelined {config or ''} window {window}: {messages / seconds:,.0f} msgs/s"
                      + others + node)
        return PipelinedResult(target.name, config, messages / seconds, messages, seconds, window, cpu, node_cpu,
                               per_msg)


def sweep(target: Target, rates: Iterable[float], duration: float, *, warmup: float = 0.5, drain: float = 2.0,
          progress: bool = True) -> list[RunResult]:
    """Start `target`, run the driver at each rate in turn, stop the target, and return one result per rate.

    Parameters
    ----------
    target
        A target not yet started; it is stopped on return, on an exception and on Ctrl-C.
    rates
        Offered rates, msgs/s.
    duration
        Seconds per rate.
    warmup
        Seconds thrown away before each rate.
    drain
        Seconds to wait for missing completions after each rate.
    progress
        Print a line per second to stderr.
    """
    target.start()
    try:
        driver = LoadDriver(target, progress=progress, drain=drain)
        return [driver.run(rate, duration, warmup=warmup) for rate in rates]
    finally:
        target.stop()


# --------------------------------------------------------------------------- report


def git_info() -> dict[str, Any]:
    """Return the commit of the checkout and the files changed since it in the exchange's code (what was measured)."""
    root = Path(__file__).resolve().parents[1]

    def run(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    # (Not stripped: a porcelain line starts with its two status columns, the first often a space.)
    changed = [ln[3:] for ln in run("status", "--porcelain", "--", "fabric", "nodes", "topology").splitlines()]
    return {"commit": run("rev-parse", "--short", "HEAD").strip(), "changed": changed}


def machine_info() -> dict[str, Any]:
    """Return what a reader needs to compare figures across machines."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libzmq": zmq.zmq_version(),
        "pyzmq": zmq.__version__,
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews every figure
    }


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.0f}"


def _markdown(results: Sequence[RunResult], floor: Sequence[RunResult], info: Mapping[str, Any],
              extra: Mapping[str, Any]) -> str:
    lines = ["# Latency report", ""]
    if extra.get("command"):
        lines += [f"Command: `{extra['command']}`", ""]
    lines += [f"Generated {info['generated']} on {info['cpus']} CPUs, {info['platform']}, Python {info['python']}, "
              f"libzmq {info['libzmq']}, pyzmq {info['pyzmq']}; load average {info['loadavg_1m']} at the end "
              "(the harness's own processes included).", ""]
    if extra.get("transport"):
        gateway = f"; the floor's gateway {extra['floor_gateway']}" if extra.get("floor_gateway") else ""
        lines += [f"Transport: {extra['transport']}{gateway}.", ""]
    if extra.get("fsync"):
        lines += [f"The exchange's journal: fsync {extra['fsync']}.", ""]
    if extra.get("profile_dir"):
        clock = extra.get("profile_clock", "wall")
        lines += [f"**Profiled** (the nodes ran under cProfile, {clock} clock, profiles in `{extra['profile_dir']}`): "
                  "every figure of the exchange includes the profiler's cost.", ""]
    lines += ["## Round trip, open loop", "",
              "Latency in microseconds from each message's *intended* send time (no coordinated omission).",
              "Achieved is primary completions per second; lost counts messages without one after the drain;",
              "lag is how late the driver sent, p99 (its share of the latencies, already included in them);",
              "others is the CPU (cores) that processes outside the harness took during the run: above 0.2 the",
              "figures are disturbed.", "",
              "| target | kind | offered/s | achieved/s | sent | completed | lost | lag p99 | others "
              "| p50 | p90 | p99 | p99.9 | max |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in [*results, *floor]:
        for kind in r.kinds:
            p = r.percentiles(kind)
            lost = f"{r.lost:,}" if kind == r.primary else ""
            lag = _fmt(r.send_lag_us.get("p99", math.nan)) if kind == r.primary else ""
            others = f"{r.cpu['others_cores']:.1f}" if kind == r.primary and "others_cores" in r.cpu else ""
            lines.append(f"| {r.target} | {kind} | {r.offered_per_s:,.0f} | {r.achieved_per_s:,.0f} | {r.sent:,} | "
                         f"{r.completed.get(kind, 0):,} | {lost} | {lag} | {others} | {_fmt(p['p50'])} | "
                         f"{_fmt(p['p90'])} | {_fmt(p['p99'])} | {_fmt(p['p99.9'])} | {_fmt(p['max'])} |")
    throughput = extra.get("throughput") or []
    if throughput:
        lines += ["", "## Pipelined throughput, closed loop", "",
                  "| target | configuration | window | msgs/s | others |", "| --- | --- | ---: | ---: | ---: |"]
        for t in throughput:
            others = t.get("cpu", {}).get("others_cores")
            lines.append(f"| {t['target']} | {t['config']} | {t['window']:,} | {t['msgs_per_s']:,.0f} | "
                         f"{'-' if others is None else f'{others:.1f}'} |")
    lines += _cpu_lines(results, floor, throughput, float(extra.get("cpu_target_us_per_cmd") or CPU_TARGET_US_PER_CMD))
    lines += _profile_lines(extra.get("profiles") or [])
    lines += ["", "![latency against offered load](latency.png)", ""]
    return "\n".join(lines)


def _cpu_lines(results: Sequence[RunResult], floor: Sequence[RunResult], throughput: Sequence[Mapping[str, Any]],
               target_us: float) -> list[str]:
    """Return the markdown of the CPU per message of each kind of node process, pipelined runs first."""
    rows: list[tuple[str, str, dict[str, float], int]] = []  # target, run, CPU s per process, messages
    for t in throughput:
        if t.get("node_cpu_s"):
            rows.append((t["target"], f"pipelined {t['config']}".rstrip(), t["node_cpu_s"], int(t["messages"])))
    for r in [*results, *floor]:
        if r.node_cpu_s:
            rows.append((r.target, f"open loop {r.offered_per_s:,.0f}/s", r.node_cpu_s, r.sent))
    if not rows:
        return []
    lines = ["", "## CPU per message of the node processes", "",
             "CPU time (user + system, all threads: `/proc/PID/stat`) of each kind of node process during the run,",
             "summed over its processes and divided by the run's messages (commands); an open-loop run counts its",
             "drain too. Linux counts CPU in 10 ms ticks: a short run's figure is rough. The target (issue 12) is",
             f"at most {target_us:g} us per command for the exchange's matchers and for its gateways.", "",
             "| target | run | kind | processes | CPU s | messages | us per message | vs target |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for target, run, cpu, messages in rows:
        kinds: dict[str, list[str]] = {}
        for label in cpu:
            kinds.setdefault(label.split(":", 1)[0], []).append(label)
        per_msg = cpu_us_per_msg(cpu, messages)
        for kind, labels in kinds.items():
            seconds = sum(cpu[label] for label in labels)
            us = per_msg.get(kind)
            ratio = (f"{us / target_us:.1f}×" if us is not None and target != "floor" and kind in ("matcher", "gateway")
                     else "")
            names = ", ".join(label.split(":", 1)[1] for label in labels)
            lines.append(f"| {target} | {run} | {kind} | {names} | {seconds:.2f} | {messages:,} | "
                         f"{'-' if us is None else f'{us:,.1f}'} | {ratio} |")
    return lines


def _profile_lines(profiles: Sequence[Mapping[str, Any]], n: int = 10) -> list[str]:
    """Return the markdown of the top functions of each node's profile (see ``nodes/profiling.py``)."""
    if not profiles:
        return []
    lines = ["", "## Where the time goes: the nodes' profiles", "",
             "Top functions by own time of each node's loop under cProfile, over the node's whole life (every run",
             "above, warm-up and drain included), its wait for messages (zmq poll) left out: own % is of the busy",
             "time, per command is own time divided by every command the harness sent. The profiler adds its own",
             "cost to each call: read shares. Full tables in each node's `.txt`, the profile in its `.prof`",
             "(`python -m pstats FILE`)."]
    for p in profiles:
        commands = int(p.get("commands") or 0)
        total, wait = float(p.get("total_s") or 0.0), float(p.get("wait_s") or 0.0)
        lines += ["", f"**{p['node']}** ({total:.2f} s under the profiler: busy {total - wait:.2f} s, waiting "
                      f"{wait:.2f} s; {commands:,} commands; `{p['prof']}`)", "",
                  "| own s | own % | us per command | calls | function |", "| ---: | ---: | ---: | ---: | --- |"]
        for row in list(p.get("top") or [])[:n]:
            per_cmd = f"{row['tottime_s'] / commands * 1e6:,.1f}" if commands else "-"
            function = str(row["function"]).replace("|", "\\|")
            lines.append(f"| {row['tottime_s']:.3f} | {100 * row['tottime_share']:.1f} | {per_cmd} | "
                         f"{row['calls']:,} | `{function}` |")
    return lines


_PCT_COLOURS = {"p50": "#1f77b4", "p90": "#2ca02c", "p99": "#ff7f0e", "p99.9": "#d62728", "max": "#7f7f7f"}
_KIND_MARKERS = ("o", "s", "^", "D", "v")


def _plot(results: Sequence[RunResult], floor: Sequence[RunResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    n_lines = sum(len(runs[0].kinds) for runs, _, _ in [(results, 0, 0), (floor, 0, 0)] if runs) * 5
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5 + 0.18 * n_lines / 3),
                                      gridspec_kw={"width_ratios": [1.15, 1]})
    series = [(runs, "-", 1.0) for runs in [results] if runs] + [(runs, "--", 0.65) for runs in [floor] if runs]
    rates = sorted({r.offered_per_s for runs, _, _ in series for r in runs})
    us = FuncFormatter(lambda v, _: f"{v:,.0f} us" if v >= 1 else f"{v:g} us")

    # Left: each percentile against offered load, one line per percentile, kind and target.
    saturated_drawn = False
    for runs, style, alpha in series:
        runs = sorted(runs, key=lambda r: r.offered_per_s)
        for m, kind in enumerate(runs[0].kinds):
            for key in ("p50", "p90", "p99", "p99.9", "max"):
                xs = [r.offered_per_s for r in runs]
                ys = [r.percentiles(kind)[key] for r in runs]
                left.plot(xs, ys, style, marker=_KIND_MARKERS[m % len(_KIND_MARKERS)], color=_PCT_COLOURS[key],
                          alpha=alpha, lw=1.0 if key == "max" else 1.8, ms=6,
                          label=f"{runs[0].target} {kind} {key}")
                if len(rates) == 1 and not math.isnan(ys[0]):  # a lone point: say its value
                    left.annotate(f"{runs[0].target} {kind} {key} {ys[0]:,.0f} us", (xs[0], ys[0]),
                                  xytext=(8, 0), textcoords="offset points", va="center", fontsize=8)
        for r in runs:
            if r.lost or r.achieved_per_s < 0.97 * r.offered_per_s:
                left.plot([r.offered_per_s], [r.percentiles()["max"]], "o", ms=16, mfc="none", mec="red", mew=1.5)
                saturated_drawn = True
    if saturated_drawn:
        left.text(0.99, 0.01, "red circle: saturated (achieved < 97% of offered, or messages lost)",
                  transform=left.transAxes, ha="right", va="bottom", fontsize=8, color="red")
    left.set_yscale("log")
    if len(rates) > 1 and rates[-1] / rates[0] >= 4:
        left.set_xscale("log")
    left.set_xticks(rates)
    # A rate at which other processes took CPU says so under its tick: its points are not this system's alone.
    others = {rate: max((r.cpu.get("others_cores", 0.0) for runs, _, _ in series for r in runs
                         if r.offered_per_s == rate), default=0.0) for rate in rates}
    left.set_xticklabels([f"{r:,.0f}" + (f"\nothers {others[r]:.1f} cores" if others[r] >= BUSY_WARNING_CORES else "")
                          for r in rates], rotation=30 if len(rates) > 5 else 0)
    if left.get_xscale() == "log":
        left.minorticks_off()
    left.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    left.yaxis.set_major_formatter(us)
    left.yaxis.set_minor_formatter(NullFormatter())
    if len(rates) == 1:
        left.set_xlim(rates[0] * 0.8, rates[0] * 1.2)
    disturbed = any(v >= BUSY_WARNING_CORES for v in others.values())
    note = "; others: CPU that other processes took during that run" if disturbed else ""
    left.set_xlabel(f"offered load (msgs/s){note}")
    left.set_ylabel("round-trip latency from intended send time (log)")
    left.set_title("Latency percentiles against offered load")
    left.grid(True, which="major", alpha=0.3)
    # Below the axes, one column per kind and target, so that no line hides behind it.
    left.legend(fontsize=8, ncol=max(1, n_lines // 5), loc="upper center", bbox_to_anchor=(0.5, -0.12),
                frameon=False)

    # Right: the whole distribution of the primary kind at each rate (HdrHistogram's percentile plot).
    marks = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99]
    cmap = plt.get_cmap("viridis")

    def nines(p: float) -> float:
        return -math.log10(max(1e-5, 1 - p / 100))

    for runs, style, alpha in series:
        for r in sorted(runs, key=lambda r: r.offered_per_s):
            h = r.histograms.get(r.primary)
            if h is None or h.get_total_count() == 0:
                continue
            colour = cmap(rates.index(r.offered_per_s) / max(1, len(rates) - 1) * 0.85)
            xs = [nines(p) for p in marks] + [nines(100.0)]
            ys = [h.get_value_at_percentile(p) for p in marks] + [h.get_max_value()]
            right.plot(xs, ys, style, color=colour, alpha=alpha, lw=1.8,
                       label=f"{r.target} {r.primary} @ {r.offered_per_s:,.0f}/s")
    ticks = [50.0, 90.0, 99.0, 99.9, 99.99]
    right.set_xticks([nines(p) for p in ticks] + [nines(100.0)])
    right.set_xticklabels([f"{p:g}%" for p in ticks] + ["max"])
    right.set_yscale("log")
    right.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    right.yaxis.set_major_formatter(us)
    right.yaxis.set_minor_formatter(NullFormatter())
    right.set_xlabel("percentile")
    right.set_ylabel("round-trip latency (log)")
    right.set_title("Latency distribution at each offered load")
    right.grid(True, which="major", alpha=0.3)
    right.legend(fontsize=8, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)

    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: Sequence[RunResult], out_dir: str | Path, *, floor: Sequence[RunResult] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``latency.png`` into `out_dir` and return their paths.

    Parameters
    ----------
    results
        One run per offered rate of the target under test (the floor's runs, when the floor is the target).
    out_dir
        Folder, created if missing; files in it are overwritten.
    floor
        The floor's runs at the same rates, plotted dashed on the same axes and listed in the same tables.
    extra
        More JSON-ready keys for ``report.json``.  Understood by the markdown: ``command`` (shown so the
        figures can be reproduced), ``transport``, ``throughput`` (a list of :class:`PipelinedResult` dicts).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    floor = list(floor or [])
    extra = dict(extra or {})
    info = {"generated": datetime.now(UTC).isoformat(timespec="seconds"), **machine_info()}
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "latency.png"}
    doc = {**info, **extra, "runs": [r.to_dict() for r in results], "floor": [r.to_dict() for r in floor]}
    paths["json"].write_text(json.dumps(doc, indent=2, allow_nan=False, default=_json_default) + "\n")
    paths["md"].write_text(_markdown(results, floor, info, extra))
    names = " vs ".join(dict.fromkeys([r.target for r in [*results, *floor]]))
    transport = f", {extra['transport']}" if extra.get("transport") else ""
    _plot(results, floor, paths["png"], f"{names}{transport}: round trip, open loop "
          f"({info['cpus']} CPUs, libzmq {info['libzmq']})")
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
