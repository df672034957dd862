"""``exfab up``: run a whole topology on this machine, and watch its market.

Starts every node (matchers first; before them, a ZooKeeper the topology's
``[zookeeper] hosts`` put on this machine, and a Redis and an InfluxDB its
``[redis]`` and ``[influxdb]`` urls put there, when none answers there: see
``topology/launcher.py``), prints a status table and the address of the live
price page, and with ``--demo`` adds the simulated brokers of
:mod:`tools.demo`; without it the exchange stays quiet, for orders of one's own
(``exfab order``).  ``--fresh`` first deletes the topology's ``data_dir``
(journals, order store, price history, logs): an empty market.  Without it
each matcher replays its journal and the market comes back as it was.  While
it runs it shows the market as ``exfab watch`` does, from the ticker's feed (in
a terminal, a live table; otherwise a summary line every few seconds).  Ctrl-C
(or SIGTERM) stops everything cleanly, the InfluxDB, Redis and ZooKeeper it
started last.

A topology whose nodes are on other machines (``cluster.toml``: ``ex-a.internal``
...) is refused, unless ``--loopback`` asks to run it here anyway: then every host
is mapped to a loopback address of its own and the copy written to the data
folder is what runs (``topology/loopback.py``); what was mapped, and every store
that fell back to its embedded kind, is printed first.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Final

from tools.watch import WatchTable
from topology.clients import market_data_client
from topology.launcher import Launcher, LaunchError, local_influxdb, local_redis, local_zookeeper, read_line
from topology.load import TopologyError, load
from topology.loopback import foreign_hosts, map_topology
from topology.ports import absolute_keys_dir

EXIT_USAGE = 2  # an unreadable topology, or one whose nodes are on other machines (without --loopback)


def status_table(launcher: Launcher) -> Any:
    """Return a rich table of the running nodes, of the ZooKeeper (when the topology has one), of the Redis the
    recent state is in (when it is) and of the InfluxDB the price history is in (when it is)."""
    from rich.table import Table

    t = Table(title=f"exchange-fabric: topology {launcher.topo.name} ({launcher.path})", title_justify="left")
    for col in ("node", "pid", "listens on", "ready after", "log"):
        t.add_column(col)
    topo = launcher.topo
    if topo.zookeeper is not None:
        ensemble = launcher.zookeeper
        if ensemble is not None:
            for i, zk in enumerate(ensemble.servers, 1):
                label = "zookeeper" if len(ensemble.servers) == 1 else f"zookeeper:{i}"
                t.add_row(label, str(zk.pid), f"{zk.hosts} (root {topo.zookeeper.root})",
                          f"{zk.ready_after or 0:.1f} s", os.path.relpath(zk.log_path))
        else:
            where = "running already: used as it is" if local_zookeeper(topo) else "another machine's"
            t.add_row("zookeeper", "-", f"{topo.zookeeper.connect_string} (root {topo.zookeeper.root})", "-",
                      f"({where})")
    if topo.stores.recent == "redis" and topo.redis is not None:
        if launcher.redis is not None:
            t.add_row("redis", str(launcher.redis.pid), topo.redis.url, f"{launcher.redis.ready_after or 0:.1f} s",
                      os.path.relpath(launcher.redis.log_path))
        else:
            where = "running already: used as it is" if local_redis(topo) else "another machine's"
            t.add_row("redis", "-", topo.redis.url, "-", f"({where})")
    if topo.stores.history == "influxdb" and topo.influxdb is not None:
        db = f"{topo.influxdb.url} (database {topo.influxdb.database})"
        if launcher.influxdb is not None:
            t.add_row("influxdb", str(launcher.influxdb.pid), db, f"{launcher.influxdb.ready_after or 0:.1f} s",
                      os.path.relpath(launcher.influxdb.log_path))
        else:
            where = "running already: used as it is" if local_influxdb(topo) else "another machine's"
            t.add_row("influxdb", "-", db, "-", f"({where})")
    for n in launcher.nodes:
        if n.kind == "matcher":
            _, rep = launcher.topo.replica(n.name)
            where = f"orders {rep.order.connect}, feed {rep.pub.connect}"
        elif n.kind == "ticker":
            tk = launcher.topo.ticker_named(n.name)
            where = f"page {tk.http_url}, feed {tk.pub.connect}, snapshots {tk.snapshot.connect}"
        elif n.kind == "persistence":
            orders = (f"orders {topo.sqlite_path('orders')}" if topo.stores.orders == "sqlite"
                      else f"orders cassandra {','.join(topo.cassandra.hosts) if topo.cassandra else '?'}")
            recent = f"recent {topo.redis.url}" if topo.stores.recent == "redis" and topo.redis else "recent in memory"
            where = f"(no port) {orders}, {recent}"
        else:
            where = launcher.topo.gateway(n.name).endpoint.connect
        t.add_row(n.label, str(n.proc.pid), where, f"{n.ready_after or 0:.1f} s",
                  os.path.relpath(n.log_path))
    return t


def _elsewhere(topology: str, hosts: list[str]) -> str:
    """Return why ``exfab up`` does not run ``topology`` as it is: its nodes are on ``hosts``, other machines."""
    return (f"the nodes of {topology} are on {', '.join(hosts)}, not this machine; run each host's nodes there "
            f"(exfab node, docs/deploy.md), or all of them here with exfab up --loopback {topology}, each host on a "
            "loopback address of its own")


# `exfab up --demo` on a topology without a [calendar]: a compressed day, an hour of it a minute, whose pre-open opens
# DEMO_START_S after the command (the nodes start meanwhile), so a newcomer sees every phase (docs/sessions.md). The
# demo's day is the BSE's phases with continuous trading stretched over the clock day, so that it trades most of the
# time: the pre-open from 00:01, continuous trading from 00:15 for `trading_hours` hours (23 and a quarter: to 23:30),
# the closing price's ten minutes, the closing session's ten, then closed to the next day's 00:01.
DEMO_DAY: Final = """
[calendar]                              # added by exfab up --demo: a compressed day (docs/sessions.md)
pre_open = "00:01"
entry_close = "00:08"
matching_end = "00:12"
continuous = "00:15"
continuous_end = "{continuous_end}"
closing_session = "{closing_session}"
close = "{close}"
scale = 60
start = "00:00"
anchor = {anchor}
"""
DEMO_START_S: Final = 10
DEMO_TRADING_HOURS: Final = 23.25  # of the demo's day: 23 minutes and a quarter of continuous trading


def _clock(minutes: float) -> str:
    m = round(minutes * 60)  # seconds of the clock day
    return f"{m // 3600:02d}:{m // 60 % 60:02d}:{m % 60:02d}"


def with_demo_day(path: str, data_dir: Path, now: dt.datetime, trading_minutes: float | None = None) -> Path:
    """Write a copy of the topology at ``path`` with the demo's compressed day, under ``data_dir``; return its path.

    The day's 00:00 is ``DEMO_START_S`` seconds after ``now``: pre-open from a second later, the call auction
    about 7 s later, continuous trading from 14 s later for ``trading_minutes`` minutes (23 and a quarter when
    ``None``), the closing price's 10 s, the closing session's 10 s, then the market is closed until the next
    compressed day's pre-open (24 minutes after this one's).

    Raises
    ------
    ValueError
        When ``trading_minutes`` is not between 0.5 and 23.25.
    """
    hours = DEMO_TRADING_HOURS if trading_minutes is None else trading_minutes
    if not 0.5 <= hours <= DEMO_TRADING_HOURS:
        raise ValueError(f"the demo's continuous trading lasts 0.5 to {DEMO_TRADING_HOURS} minutes, not {hours}")
    end = 15 + hours * 60  # clock minutes
    anchor = (now + dt.timedelta(seconds=DEMO_START_S)).replace(microsecond=0)
    dst = data_dir / f"{Path(path).stem}.demo-day.toml"
    dst.parent.mkdir(parents=True, exist_ok=True)
    # (a relative keys_dir is relative to the topology file: the copy names the source's folder)
    text = absolute_keys_dir(Path(path), Path(path).read_text(encoding="utf-8"))
    dst.write_text(text + DEMO_DAY.format(anchor=anchor.isoformat(), continuous_end=_clock(end),
                                          closing_session=_clock(end + 10), close=_clock(end + 20)),
                   encoding="utf-8")
    return dst


def run(topology: str, *, demo: bool = False, duration: float | None = None, rate: float = 100.0,
        fresh: bool = False, loopback: bool = False, trading_minutes: float | None = None,
        out: IO[str] = sys.stdout) -> int:
    """Run ``exfab up``; return the exit status."""
    from rich.console import Console
    from rich.live import Live
    from rich.markup import escape

    console = Console(file=out, width=None if out.isatty() else 160)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        mapped = map_topology(topology) if loopback else None
        topo = mapped.topology if mapped is not None else load(topology)
    except (OSError, TopologyError) as e:
        console.print(f"[red]exfab up:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    if trading_minutes is not None:
        why = ("it is for the demo's compressed day: add --demo" if not demo else
               f"{topology} has a [calendar] of its own, which the demo follows" if topo.calendar is not None else
               None if 0.5 <= trading_minutes <= DEMO_TRADING_HOURS else
               f"the demo's continuous trading lasts 0.5 to {DEMO_TRADING_HOURS:g} minutes, not {trading_minutes:g}")
        if why is not None:
            console.print(f"[red]exfab up:[/] --trading-minutes: {escape(why)}", highlight=False, soft_wrap=True)
            return EXIT_USAGE
    if mapped is not None:
        console.print(f"--loopback: the nodes of {topology} on this machine, each host on a loopback address of "
                      "its own, the same ports:", markup=False, highlight=False, soft_wrap=True)
        for line in mapped.notes():
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    elif foreign := foreign_hosts(topo):
        console.print(f"[red]exfab up:[/] {escape(_elsewhere(topology, foreign))}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    if fresh:
        data = Path(topo.data_dir)
        if data.exists():
            console.print(f"--fresh: removing {data} (the journals, order store, price history and logs of "
                          "earlier runs)")
            shutil.rmtree(data)
    path = topology
    if mapped is not None:
        path = str(mapped.write())
        console.print(f"  the copy that runs: {path} (exfab status --topology {path})", markup=False,
                      highlight=False, soft_wrap=True)
    if demo and topo.calendar is None:
        path = str(with_demo_day(path, Path(topo.data_dir), dt.datetime.now(dt.UTC), trading_minutes))
        minutes = DEMO_TRADING_HOURS if trading_minutes is None else trading_minutes
        console.print(f"--demo: a compressed day, an hour a minute, pre-open in {DEMO_START_S + 1} s, continuous "
                      f"trading from {DEMO_START_S + 15} s for {minutes:g} min, then the close and the closing "
                      f"session: {path}", markup=False, highlight=False, soft_wrap=True)
    launcher = Launcher(path)
    runnable = [n for n in launcher.topo.nodes() if n.kind in launcher.kinds]
    console.print(f"starting {len(runnable)} nodes of {path} "
                  "(the first start compiles the order book: about 35 s)...")
    try:
        launcher.start(progress=sys.stderr)
    except LaunchError as e:
        console.print(f"[red]could not start the exchange:[/] {e}")
        return 1
    demo_proc: subprocess.Popen[str] | None = None
    md = None
    try:
        console.print(status_table(launcher))
        md = market_data_client(launcher.topo) if launcher.topo.ticker is not None else None
        view = WatchTable(md, launcher.topo.symbols) if md is not None else None
        if demo:
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
            demo_proc = subprocess.Popen(
                [sys.executable, "-m", "tools.demo", "--topology", str(launcher.path), "--rate", str(rate)],
                stdout=subprocess.PIPE, stderr=open(launcher.log_dir / "demo.log", "a"),  # noqa: SIM115
                text=True, env=env, start_new_session=True)
            if read_line(demo_proc.stdout, 30) is None:  # type: ignore[arg-type]
                console.print("[red]the demo brokers did not start[/] (see the demo log)")
            else:
                console.print(f"demo brokers trading ({rate:g} commands/s); Ctrl-C stops everything")
        else:
            console.print("the exchange is up; Ctrl-C stops it")
        console.print(f"gateways for brokers: {', '.join(g.endpoint.connect for g in launcher.topo.gateways)}")
        if launcher.topo.ticker is not None:
            t = launcher.topo.ticker
            more = "".join(f", or {o.http_url}" for o in launcher.topo.tickers[1:])
            console.print(f"[bold]live prices: {t.http_url}[/]{more}  (open it in a browser; feed {t.pub.connect}, "
                          f"`exfab watch` in another terminal)")
        else:
            console.print("no [ticker] in this topology: no market view")
        start = time.monotonic()

        def running() -> bool:
            return not stop and (duration is None or time.monotonic() - start < duration)

        def pump(seconds: float) -> None:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                if md is None:
                    time.sleep(left)
                else:
                    md.poll(left)
            if view is not None:
                view.refresh(time.monotonic())

        if console.is_terminal and view is not None:
            with Live(view.render(), console=console, auto_refresh=False) as live:
                while running():
                    pump(0.25)
                    live.update(view.render(), refresh=True)
                    _check(launcher, console)
        else:
            last = 0.0
            while running():
                pump(0.1)
                if time.monotonic() - last >= 5:
                    last = time.monotonic()
                    if md is not None:
                        quotes = {s: md.quote(s) for s in launcher.topo.symbols}
                        traded = sum(q["trades"] for q in quotes.values() if q)
                        lasts = ", ".join(f"{s} {q['last']}" for s, q in quotes.items() if q and q["last"])
                        console.print(f"{traded:,} trades; last: {lasts or 'none yet'}")
                    _check(launcher, console)
            if view is not None:
                pump(0.1)
                console.print(view.render(highlight=False))
    finally:
        if demo_proc is not None:
            demo_proc.send_signal(signal.SIGTERM)
            try:
                demo_proc.wait(10)
            except subprocess.TimeoutExpired:
                demo_proc.kill()
        if md is not None:
            md.close()
        codes = launcher.stop()
        console.print("stopped: " + ", ".join(f"{k} ({'ok' if v == 0 else v})" for k, v in codes.items()))
    return 0


_reported: set[str] = set()


def _check(launcher: Launcher, console: Any) -> None:
    for n in launcher.nodes:
        if not n.alive and n.label not in _reported:
            _reported.add(n.label)
            console.print(f"[red]{n.label} exited ({n.proc.returncode}); see {n.log_path}[/]")
    redis = launcher.redis
    if redis is not None and not redis.running and "redis" not in _reported:
        _reported.add("redis")
        console.print(f"[red]redis-server exited; see {redis.log_path}[/]")
    influxdb = launcher.influxdb
    if influxdb is not None and not influxdb.running and "influxdb" not in _reported:
        _reported.add("influxdb")
        console.print(f"[red]influxd exited; see {influxdb.log_path}[/]")
    for zk in launcher.zookeeper.servers if launcher.zookeeper is not None else ():
        if not zk.running and zk.hosts not in _reported:
            _reported.add(zk.hosts)
            console.print(f"[red]zookeeper {zk.hosts} exited; see {zk.log_path}[/]")
