"""Opt-in cProfile of a node's loop, for finding where each microsecond goes.

A node runs its loop inside :func:`profiled`.  Without the environment
variable ``EXFAB_PROFILE_DIR`` this does nothing (no profiler, no cost).  With
it, the loop runs under :mod:`cProfile` and, when the block ends (the node
stopping on SIGINT or SIGTERM: its handler ends the loop, and the block's exit
writes), two files go to that folder:

- ``<kind>-<name>.prof``: the profile, for ``python -m pstats`` or snakeviz;
- ``<kind>-<name>.txt``: the top functions by own time, then by cumulative time.

The clock is the wall clock by default, so own time includes waiting (a poll
that sleeps, an ``fsync``); ``EXFAB_PROFILE_CLOCK=cpu`` counts the main thread's
CPU time instead (``time.thread_time``: a system call per function call and
return on this VM, so the node runs slower still).

``exfab perf --profile DIR`` sets the variable for the nodes it launches (see
``docs/performance.md``)::

    EXFAB_PROFILE_DIR=/tmp/prof python -m nodes.matcher --topology FILE --id A
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ENV_DIR = "EXFAB_PROFILE_DIR"
ENV_CLOCK = "EXFAB_PROFILE_CLOCK"
CLOCKS = ("wall", "cpu")
TOP = 40  # rows of each table in the text summary
_ROOT = str(Path(__file__).resolve().parents[1]) + os.sep
_PACKAGES = re.compile(r"/(?:site|dist)-packages/(.+)$")
_STDLIB = re.compile(r"/lib/python3\.\d+/(.+)$")


def profile_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """Return the folder named by ``EXFAB_PROFILE_DIR``, or None when profiling is off."""
    value = (os.environ if environ is None else environ).get(ENV_DIR, "").strip()
    return Path(value) if value else None


@contextlib.contextmanager
def profiled(node: str, environ: Mapping[str, str] | None = None) -> Iterator[Path | None]:
    """Run the block under cProfile when ``EXFAB_PROFILE_DIR`` is set; write ``<node>.prof`` and ``.txt`` at its end.

    Parameters
    ----------
    node
        The files' base name, e.g. ``matcher-A`` (``<kind>-<name>``, as the launcher names the node's log).
    environ
        Where to read the variables (default ``os.environ``).

    Yields
    ------
    Path or None
        The ``.prof`` file that will be written, or None when profiling is off.

    Notes
    -----
    The profile is written however the block ends (a clean stop, an exception), but not when the process is
    killed: stop the node with SIGINT or SIGTERM.
    """
    env = os.environ if environ is None else environ
    folder = profile_dir(env)
    if folder is None:
        yield None
        return
    clock = env.get(ENV_CLOCK, "wall").strip() or "wall"
    if clock not in CLOCKS:
        raise ValueError(f"{ENV_CLOCK} must be one of {', '.join(CLOCKS)}, not {clock!r}")
    prof = cProfile.Profile(time.thread_time) if clock == "cpu" else cProfile.Profile()
    path = folder / f"{node}.prof"
    started = time.perf_counter()
    prof.enable()
    try:
        yield path
    finally:
        prof.disable()
        write_profile(prof, folder, node, clock=clock, wall_s=time.perf_counter() - started)


def write_profile(prof: cProfile.Profile, folder: str | os.PathLike[str], node: str, *, clock: str = "wall",
                  wall_s: float | None = None) -> tuple[Path, Path]:
    """Write ``<node>.prof`` and the text summary ``<node>.txt`` into `folder` (created if missing).

    Each file is written beside its place and renamed into it, so a reader never sees half a file.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    prof_path, text_path = out / f"{node}.prof", out / f"{node}.txt"
    tmp = out / f".{node}.prof.tmp"
    prof.dump_stats(str(tmp))
    os.replace(tmp, prof_path)
    tmp_text = out / f".{node}.txt.tmp"
    tmp_text.write_text(summary(pstats.Stats(prof), node, clock=clock, wall_s=wall_s), encoding="utf-8")
    os.replace(tmp_text, text_path)
    return prof_path, text_path


def _label(file: str, line: int, name: str) -> str:
    """Return ``module/path.py:line(name)`` with the checkout's or site-packages' prefix cut, or a builtin's name."""
    if file == "~":  # a builtin: its name says it, e.g. <method 'poll' of 'zmq...' objects>
        return name
    for pattern in (_PACKAGES, _STDLIB):
        m = pattern.search(file)
        if m:
            file = m.group(1)
            break
    else:
        file = file.removeprefix(_ROOT)
    return f"{file}:{line}({name})"


def _is_wait(func: tuple[str, int, str]) -> bool:
    """Whether `func` is the loop's wait for messages (a zmq poll): its own time is idle, not work."""
    file, _, name = func
    return (name == "poll" and file.replace(os.sep, "/").endswith("zmq/sugar/poll.py")) or (
        file == "~" and "zmq_poll" in name)


def _raw(stats: pstats.Stats) -> dict[tuple[str, int, str], tuple[int, int, float, float, Any]]:
    return stats.stats  # type: ignore[attr-defined]


def total_time(stats: pstats.Stats) -> float:
    """Return the profile's total time: the sum of every function's own time, in seconds."""
    return sum(tt for _, _, tt, _, _ in _raw(stats).values())


def wait_time(stats: pstats.Stats) -> float:
    """Return the own time of the loop's waits for messages (zmq polls), in seconds: idle under the wall clock."""
    return sum(v[2] for func, v in _raw(stats).items() if _is_wait(func))


def top_functions(stats: pstats.Stats | str | os.PathLike[str], n: int = 20, sort: str = "tottime",
                  *, waits: bool = False) -> list[dict[str, Any]]:
    """Return the `n` functions with most own time (``sort="cumtime"``: cumulative) of a profile.

    Parameters
    ----------
    stats
        A loaded profile or the path of a ``.prof`` file.
    sort
        ``tottime`` (own time) or ``cumtime``.
    waits
        Keep the loop's waits for messages (zmq polls) in the list; left out by default.

    Returns
    -------
    list of dict
        ``function``, ``calls``, ``tottime_s``, ``cumtime_s``, ``tottime_share`` (own time over the profile's busy
        time: its total less the waits).
    """
    st = stats if isinstance(stats, pstats.Stats) else pstats.Stats(str(stats))
    raw = _raw(st)
    busy = (total_time(st) - wait_time(st)) or 1.0
    key = 2 if sort == "tottime" else 3
    items = [kv for kv in raw.items() if waits or not _is_wait(kv[0])]
    rows = sorted(items, key=lambda kv: kv[1][key], reverse=True)[:n]
    return [{"function": _label(*func), "calls": nc, "tottime_s": round(tt, 6), "cumtime_s": round(ct, 6),
             "tottime_share": round(tt / busy, 4)} for func, (_, nc, tt, ct, _) in rows]


def summary(stats: pstats.Stats, node: str, *, clock: str = "wall", wall_s: float | None = None, n: int = TOP) -> str:
    """Return the text summary of a profile: its totals, then the top `n` functions by own and by cumulative time."""
    total, wait = total_time(stats), wait_time(stats)
    buf = io.StringIO()
    what = "main-thread CPU time (time.thread_time)" if clock == "cpu" else "wall-clock time"
    ran = f" over {wall_s:.2f} s" if wall_s is not None else ""
    buf.write(f"{node}: {total:.3f} s of {what} under cProfile{ran}, "
              f"{sum(v[1] for v in _raw(stats).values()):,} calls; waiting for messages (zmq poll) {wait:.3f} s, "
              f"busy {total - wait:.3f} s\n"
              "Own % is of the busy time; the wait is left out of the lists. cProfile adds its own cost to every\n"
              "call: compare shares, not absolute times.\n")
    for title, sort in (("own time", "tottime"), ("cumulative time", "cumtime")):
        buf.write(f"\nTop {n} by {title}:\n{'own s':>10} {'own %':>6} {'cum s':>10} {'calls':>12}  function\n")
        for r in top_functions(stats, n, sort):
            buf.write(f"{r['tottime_s']:>10.3f} {100 * r['tottime_share']:>6.1f} {r['cumtime_s']:>10.3f} "
                      f"{r['calls']:>12,}  {r['function']}\n")
    return buf.getvalue()
