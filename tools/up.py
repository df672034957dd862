"""``exfab up``: run a whole topology on this machine, and watch its market.

Starts every node (matchers first), prints a status table, and with ``--demo``
adds the simulated brokers of :mod:`tools.demo`.  While it runs it shows each
symbol's last price, change, volume and best bid and ask, from the matchers'
trade and book feeds (in a terminal, a live table; otherwise a summary line
every few seconds).  Ctrl-C (or SIGTERM) stops everything cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import zmq

from fabric.protocol import (
    BookLevel,
    ProtocolError,
    SnapshotReply,
    SnapshotRequest,
    Trade,
    decode_internal,
    encode,
    iter_pub,
)
from topology.launcher import Launcher, LaunchError, read_line
from topology.model import Topology


@dataclass
class Quote:
    """What the market view knows of one symbol."""

    ref: Decimal | None
    last: Decimal | None = None
    volume: int = 0
    trades: int = 0
    bids: dict[Decimal, int] = field(default_factory=dict)
    asks: dict[Decimal, int] = field(default_factory=dict)

    @property
    def change_pct(self) -> Decimal | None:
        """Change of the last price against the reference price, in percent."""
        if self.last is None or not self.ref:
            return None
        return (self.last - self.ref) * 100 / self.ref

    def best(self, side: str) -> tuple[Decimal, int] | None:
        """Best price and its quantity on ``side``."""
        book = self.bids if side == "buy" else self.asks
        if not book:
            return None
        p = max(book) if side == "buy" else min(book)
        return p, book[p]


class MarketView:
    """Every symbol's last trade and best prices, from the matchers' PUB feeds."""

    def __init__(self, topo: Topology, ctx: zmq.Context | None = None) -> None:
        self.topo = topo
        self.ctx = ctx or zmq.Context.instance()
        self.quotes = {i.symbol: Quote(i.ref_price) for i in topo.instruments}
        self.sub = self.ctx.socket(zmq.SUB)
        for shard in topo.shards:
            self.sub.connect(shard.replicas[0].pub.connect)
        self.sub.subscribe(b"T")
        self.sub.subscribe(b"B")
        self.after: dict[int, int] = {}  # per shard: apply book updates with seq above the snapshot's
        time.sleep(0.2)  # let the subscription reach the publishers before the snapshot is taken
        for no, shard in enumerate(topo.shards):
            self._snapshot(no, shard.replicas[0].recovery.connect)

    def _snapshot(self, no: int, endpoint: str) -> None:
        d = self.ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(endpoint)
        d.send(encode(SnapshotRequest(shard=no)))
        if d.poll(3000):
            snap = decode_internal(d.recv())
            if isinstance(snap, SnapshotReply):
                self.after[no] = snap.seq
                for b in snap.books:
                    q = self.quotes[b.symbol]
                    q.bids = {Decimal(p): qty for p, qty, _ in b.bids}
                    q.asks = {Decimal(p): qty for p, qty, _ in b.asks}
        d.close(0)

    def drain(self) -> int:
        """Apply every waiting trade and book update; return how many."""
        n = 0
        while True:
            try:
                _topic, body = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            try:
                msgs = iter_pub(body)
            except ProtocolError:
                continue
            for msg in msgs:
                n += 1
                self._apply(msg)

    def _apply(self, msg: Any) -> None:
        if isinstance(msg, Trade):
            q = self.quotes[msg.symbol]
            q.last = Decimal(msg.price)
            q.volume += msg.qty
            q.trades += 1
        elif isinstance(msg, BookLevel) and msg.seq > self.after.get(msg.shard, 0):
            book = self.quotes[msg.symbol].bids if msg.side == "buy" else self.quotes[msg.symbol].asks
            if msg.qty:
                book[Decimal(msg.price)] = msg.qty
            else:
                book.pop(Decimal(msg.price), None)

    def table(self) -> Any:
        """Return a rich table of the market."""
        from rich.table import Table

        t = Table(title="Market", title_justify="left")
        t.add_column("symbol")
        for col in ("last", "chg %", "volume", "trades", "bid", "ask"):
            t.add_column(col, justify="right")
        for sym, q in self.quotes.items():
            chg = q.change_pct
            chg_text = "-" if chg is None else f"[{'green' if chg >= 0 else 'red'}]{chg:+.2f}[/]"
            bid, ask = q.best("buy"), q.best("sell")
            t.add_row(sym, "-" if q.last is None else str(q.last), chg_text, f"{q.volume:,}", f"{q.trades:,}",
                      "-" if bid is None else f"{bid[1]} @ {bid[0]}", "-" if ask is None else f"{ask[1]} @ {ask[0]}")
        return t

    def close(self) -> None:
        """Close the subscription."""
        self.sub.close(0)


def status_table(launcher: Launcher) -> Any:
    """Return a rich table of the running nodes."""
    from rich.table import Table

    t = Table(title=f"exchange-fabric: topology {launcher.topo.name} ({launcher.path})", title_justify="left")
    for col in ("node", "pid", "listens on", "ready after", "log"):
        t.add_column(col)
    for n in launcher.nodes:
        if n.kind == "matcher":
            _, rep = launcher.topo.replica(n.name)
            where = f"orders {rep.order.connect}, feed {rep.pub.connect}"
        elif n.kind == "ticker" and launcher.topo.ticker is not None:
            tk = launcher.topo.ticker
            where = f"page {tk.http_url}, feed {tk.pub.connect}, snapshots {tk.snapshot.connect}"
        else:
            where = launcher.topo.gateway(n.name).endpoint.connect
        t.add_row(n.label, str(n.proc.pid), where, f"{n.ready_after or 0:.1f} s",
                  os.path.relpath(n.log_path))
    return t


def run(topology: str, *, demo: bool = False, duration: float | None = None, rate: float = 100.0,
        fresh: bool = False, out: IO[str] = sys.stdout) -> int:
    """Run ``exfab up``; return the exit status."""
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out, width=None if out.isatty() else 120)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    launcher = Launcher(topology)
    if fresh:
        data = Path(launcher.topo.data_dir)
        if data.exists():
            console.print(f"--fresh: removing {data} (journals and logs of earlier runs)")
            shutil.rmtree(data)
    runnable = [n for n in launcher.topo.nodes() if n.kind in launcher.kinds]
    console.print(f"starting {len(runnable)} nodes of {topology} "
                  "(the first start compiles the order book: about 20 s)...")
    try:
        launcher.start(progress=sys.stderr)
    except LaunchError as e:
        console.print(f"[red]could not start the exchange:[/] {e}")
        return 1
    console.print(status_table(launcher))
    demo_proc: subprocess.Popen[str] | None = None
    view = MarketView(launcher.topo)
    try:
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
            console.print(f"[bold]live prices: {t.http_url}[/]  (open it in a browser; feed {t.pub.connect}, "
                          f"`exfab watch` in another terminal)")
        start = time.monotonic()
        if console.is_terminal:
            with Live(view.table(), console=console, refresh_per_second=4) as live:
                while not stop and (duration is None or time.monotonic() - start < duration):
                    view.drain()
                    live.update(view.table())
                    time.sleep(0.25)
                    _check(launcher, console)
        else:
            last = 0.0
            while not stop and (duration is None or time.monotonic() - start < duration):
                view.drain()
                time.sleep(0.1)
                if time.monotonic() - last >= 5:
                    last = time.monotonic()
                    traded = sum(q.trades for q in view.quotes.values())
                    lasts = ", ".join(f"{s} {q.last}" for s, q in view.quotes.items() if q.last is not None)
                    console.print(f"{traded:,} trades; last: {lasts or 'none yet'}")
                    _check(launcher, console)
            view.drain()
            console.print(view.table())
    finally:
        if demo_proc is not None:
            demo_proc.send_signal(signal.SIGTERM)
            try:
                demo_proc.wait(10)
            except subprocess.TimeoutExpired:
                demo_proc.kill()
        view.close()
        codes = launcher.stop()
        console.print("stopped: " + ", ".join(f"{k} ({'ok' if v == 0 else v})" for k, v in codes.items()))
    return 0


_reported: set[str] = set()


def _check(launcher: Launcher, console: Any) -> None:
    for n in launcher.nodes:
        if not n.alive and n.label not in _reported:
            _reported.add(n.label)
            console.print(f"[red]{n.label} exited ({n.proc.returncode}); see {n.log_path}[/]")
