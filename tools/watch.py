"""``exfab watch``: the ticker's quotes in the terminal, as a live table.

It follows the ticker's feed with :class:`fabric.marketdata.MarketDataClient`
(a snapshot, then every update; ``docs/market-data.md``) and shows, per
symbol: last price, change and change % (green up, red down), best bid and
ask with their quantities, volume, VWAP, high, low and the number of trades.
A cell that just changed is shown reversed for a second.  The table is redrawn
at most 4 times a second, under a line that names the ticker, the state of the
connection, and how many gaps and snapshots there were, and over a line with the market index
and, while the market is halted, why and until when; a halted symbol is marked ``HALTED``.  With two tickers in the
topology (A and B feeds) it follows the first and fails over to the other when the
one it follows dies or falls silent, and the line says how many times it did.  Ctrl-C (or SIGTERM)
ends it, exit status 0.

``--once`` prints the table once, as soon as the snapshot is in, and exits;
with ``--json``, one JSON object per line instead: each symbol's ``quote``
object as the ticker sent it (prices are decimal strings).  ``--json`` without
``--once`` prints the snapshot's quotes, then every quote update, until Ctrl-C.

Exit status 2 when a symbol is not traded (neither the topology nor the ticker
knows it), when the topology has no ticker, and with ``--once`` when the ticker
did not answer within ``--timeout`` seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
import time
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import IO, Any

from fabric.marketdata import MarketDataClient
from topology.clients import market_data_client
from topology.load import TopologyError, load
from topology.model import Topology

__all__ = ["COLUMNS", "WatchTable", "resolve_symbols", "run"]

COLUMNS: tuple[str, ...] = ("symbol", "last", "change", "change %", "bid", "bid qty", "ask", "ask qty", "volume",
                            "VWAP", "high", "low", "trades")
REFRESH_S = 0.25  # at most 4 redraws a second
HIGHLIGHT_S = 1.0  # how long a changed cell stays highlighted
PLAIN_EVERY_S = 5.0  # when the output is not a terminal: a table this often


def resolve_symbols(topo: Topology, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Return (the topology's symbols for ``names``, the names it does not list); case is forgiven when unambiguous."""
    listed = topo.symbols
    by_upper: dict[str, list[str]] = {}
    for s in listed:
        by_upper.setdefault(s.upper(), []).append(s)
    found: list[str] = []
    unknown: list[str] = []
    for name in names:
        if name in listed:
            found.append(name)
        elif len(by_upper.get(name.upper(), [])) == 1:
            found.append(by_upper[name.upper()][0])
        else:
            unknown.append(name)
    return list(dict.fromkeys(found)), unknown


def _sign(x: Any) -> int:
    try:
        d = Decimal(str(x))
    except (InvalidOperation, ValueError):
        return 0
    return (d > 0) - (d < 0)


def _txt(x: Any) -> str:
    return "-" if x is None else str(x)


def _qty(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else _txt(x)


def quote_cells(q: dict[str, Any] | None) -> dict[str, str]:
    """Return the table's cells (but the symbol) of one ``quote`` object."""
    if q is None:
        return {c: "-" for c in COLUMNS[1:]}
    change, pct = q.get("change"), q.get("change_pct")
    return {
        "last": _txt(q.get("last")),
        "change": "-" if change is None else ("+" if _sign(change) > 0 else "") + str(change),
        "change %": "-" if pct is None else ("+" if _sign(pct) > 0 else "") + f"{pct}%",
        "bid": _txt(q.get("bid")), "bid qty": _qty(q.get("bid_qty")),
        "ask": _txt(q.get("ask")), "ask qty": _qty(q.get("ask_qty")),
        "volume": _qty(q.get("volume")), "VWAP": _txt(q.get("vwap")),
        "high": _txt(q.get("high")), "low": _txt(q.get("low")), "trades": _qty(q.get("trades")),
    }


class WatchTable:
    """The rows of ``exfab watch``: each symbol's cells, and when each last changed (for the highlight)."""

    def __init__(self, md: MarketDataClient, order: Sequence[str] = ()) -> None:
        self.md = md
        self.order = list(order)
        self.cells: dict[str, dict[str, str]] = {}
        self.changed_at: dict[tuple[str, str], float] = {}

    def symbols(self) -> list[str]:
        """The symbols to show: those in ``order`` first, then any other the client follows."""
        md = self.md
        if md.requested is not None:
            return [s for s in md.requested if s not in md.unknown]
        return [s for s in dict.fromkeys([*self.order, *md.symbols]) if s not in md.unknown]

    def refresh(self, now: float) -> None:
        """Take the client's current quotes; remember which cells changed."""
        for sym in self.symbols():
            new = quote_cells(self.md.quote(sym))
            old = self.cells.get(sym)
            if old is not None:
                for col, text in new.items():
                    if old.get(col) != text:
                        self.changed_at[(sym, col)] = now
            self.cells[sym] = new

    def header(self) -> str:
        """The line above the table: the ticker, the connection, gaps and snapshots."""
        md, st = self.md, self.md.stats
        where = f"{md.pub} (snapshots {md.snapshot})"
        if md.state == "waiting":
            return f"waiting for the ticker at {where}..."
        if md.state == "reconnecting":
            return f"[yellow]lost the ticker at {where}; reconnecting...[/]"
        beat = ""
        if st.last_heartbeat_at is not None:
            beat = f" · heartbeat {max(0.0, time.time() - st.last_heartbeat_at):.1f} s ago"
        state = "[green]live[/]" if md.state == "live" else f"[yellow]{md.state}[/]"
        over = f" · {st.failovers} failover{'s' if st.failovers != 1 else ''}" if len(md.feeds) > 1 else ""
        return (f"ticker {where} · {state} · {st.gaps} gap{'s' if st.gaps != 1 else ''} · "
                f"{st.snapshots} snapshot{'s' if st.snapshots != 1 else ''}{over} · "
                f"{st.messages:,} message{'s' if st.messages != 1 else ''}{beat}")

    def market_line(self) -> str:
        """The line of the market: the index (value, change, % change), the session's phase and a market-wide halt,
        or ``""``."""
        parts: list[str] = []
        ix = self.md.index()
        if ix is not None:
            sign = _sign(ix.get("change"))
            color = "green" if sign > 0 else "red" if sign < 0 else "white"
            plus = "+" if sign > 0 else ""
            parts.append(f"[bold]{ix.get('name')}[/] {ix.get('value')} [{color}]{plus}{ix.get('change')} "
                         f"({plus}{ix.get('change_pct')}%)[/]")
        m = self.md.market()
        if m is not None and m.get("phase"):  # a day with sessions (docs/sessions.md)
            words = "closing session" if m["phase"] == "closing" and m.get("entry") else str(m["phase"])
            parts.append(f"[bold]session[/] {words.replace('_', '-')}")
        if m is not None and m.get("state") == "halted":
            until = m.get("until")
            end = ("until resumed" if not isinstance(until, int)
                   else "until " + dt.datetime.fromtimestamp(until / 1e9).strftime("%H:%M:%S"))
            why = str(m.get("reason") or "").replace("_", " ")
            parts.append(f"[bold white on red] MARKET HALTED [/] {why}: {m.get('text') or ''} ({end})")
        return " · ".join(parts)

    def render(self, now: float | None = None, highlight: bool = True) -> Any:
        """Return the header and the table as one rich renderable."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic() if now is None else now
        t = Table(title_justify="left", show_edge=False, pad_edge=False)
        for col in COLUMNS:
            t.add_column(col, justify="left" if col == "symbol" else "right", no_wrap=True)
        for sym in self.symbols():
            cells = self.cells.get(sym) or quote_cells(self.md.quote(sym))
            q = self.md.quote(sym)
            sign = _sign(q.get("change")) if q is not None else 0
            color = "green" if sign > 0 else "red" if sign < 0 else ""
            st = self.md.trading_state(sym)
            row: list[Text] = [Text(sym, style="bold")]
            if st is not None and st.get("state") == "halted":
                row[0].append(" HALTED", style="bold white on red")
            for col in COLUMNS[1:]:
                style = color if col in ("last", "change", "change %") else ""
                if highlight and now - self.changed_at.get((sym, col), -1e9) < HIGHLIGHT_S:
                    style = f"{style} reverse".strip()
                row.append(Text(cells[col], style=style))
            t.add_row(*row)
        market = self.market_line()
        return Group(Text.from_markup(self.header()), t, *([Text.from_markup(market)] if market else []))


def run(symbols: Sequence[str], topology: str, *, once: bool = False, as_json: bool = False, timeout: float = 5.0,
        out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run ``exfab watch``; return the exit status."""
    try:
        topo = load(topology)
    except TopologyError as e:
        err.write(f"exfab watch: {e}\n")
        return 2
    if topo.ticker is None:
        err.write(f"exfab watch: topology {topo.name!r} ({topology}) has no [ticker]\n")
        return 2
    chosen, unknown = resolve_symbols(topo, symbols)
    if unknown:
        err.write(f"exfab watch: unknown symbol{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                  f"topology {topo.name!r} lists {', '.join(topo.symbols)}\n")
        return 2
    md = market_data_client(topo, chosen or None, timeout=max(0.2, min(2.0, timeout / 2)))
    try:
        if once:
            return _once(md, topo, chosen, as_json, timeout, out, err)
        if as_json:
            return _stream_json(md, out, err)
        return _live(md, topo, chosen, out, err)
    finally:
        md.close()


def _feeds(md: MarketDataClient) -> str:
    """The feed addresses of every ticker the client may follow, for messages."""
    return " or ".join(p for p, _ in md.feeds)


def _unknown_error(md: MarketDataClient, err: IO[str]) -> int:
    names = sorted(md.unknown)
    err.write(f"exfab watch: the ticker at {md.pub} does not know {', '.join(names)}\n")
    return 2


def _once(md: MarketDataClient, topo: Topology, chosen: list[str], as_json: bool, timeout: float,
          out: IO[str], err: IO[str]) -> int:
    ready = md.wait_ready(timeout)
    if md.unknown:
        return _unknown_error(md, err)
    if not ready:
        if md.state in ("waiting", "reconnecting"):
            err.write(f"exfab watch: cannot reach the ticker at {_feeds(md)}: no connection within {timeout:g} s "
                      "(is it running? `exfab up` starts it)\n")
        else:
            err.write(f"exfab watch: the ticker at {md.pub} sent no snapshot from {md.snapshot} "
                      f"within {timeout:g} s\n")
        return 2
    view = WatchTable(md, chosen or topo.symbols)
    if as_json:
        for sym in view.symbols():
            q = md.quote(sym)
            if q is not None:
                out.write(json.dumps(q) + "\n")
        return 0
    from rich.console import Console

    view.refresh(time.monotonic())
    Console(file=out, width=None if out.isatty() else 160).print(view.render(highlight=False))
    return 0


def _live(md: MarketDataClient, topo: Topology, chosen: list[str], out: IO[str], err: IO[str]) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out, width=None if out.isatty() else 160)
    view = WatchTable(md, chosen or topo.symbols)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if console.is_terminal:
            with Live(view.render(), console=console, auto_refresh=False, refresh_per_second=4) as live:
                while not stop:
                    if _pump(md, view, err):
                        return 2
                    live.update(view.render(), refresh=True)
        else:
            last = time.monotonic() - PLAIN_EVERY_S + 1.0  # say what is awaited if it takes more than a second
            shown = False
            while not stop:
                if _pump(md, view, err):
                    return 2
                now = time.monotonic()
                if md.ready and (not shown or now - last >= PLAIN_EVERY_S):
                    console.print(view.render(highlight=False))
                    last, shown = now, True
                elif not md.ready and not shown and now - last >= PLAIN_EVERY_S:
                    console.print(view.header())
                    last = now
            view.refresh(time.monotonic())
            console.print(view.render(highlight=False))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def _stream_json(md: MarketDataClient, out: IO[str], err: IO[str]) -> int:
    """``--json`` without ``--once``: every quote of the snapshot, then each quote update, one JSON line each."""
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        state, since, said = md.state, time.monotonic(), False
        while not stop:
            for u in md.poll(REFRESH_S):
                if u.kind == "quote" and u.symbol not in md.unknown:
                    out.write(json.dumps(u.data) + "\n")
            out.flush()
            if md.unknown:
                return _unknown_error(md, err)
            if md.state != state:
                state, since, said = md.state, time.monotonic(), False
            if not said and state in ("waiting", "reconnecting") and time.monotonic() - since > 1.0:
                err.write(f"exfab watch: {'waiting for' if state == 'waiting' else 'lost'} the ticker at {md.pub}\n")
                said = True
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def _pump(md: MarketDataClient, view: WatchTable, err: IO[str]) -> bool:
    """Poll for one refresh interval; return True when the ticker said a symbol asked for is unknown."""
    end = time.monotonic() + REFRESH_S
    while (left := end - time.monotonic()) > 0:
        md.poll(left)
    if md.unknown:
        _unknown_error(md, err)
        return True
    view.refresh(time.monotonic())
    return False
