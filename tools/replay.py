"""``exfab replay``: run a file of JSON Lines commands through the matching engine.

The command and event formats are a public interface, documented in
``docs/replay.md``.  Every input line gives zero or more event lines, in input
order; a line that cannot be understood gives a ``rejected`` event naming the
reason, and the replay goes on.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any

import msgspec

from fabric.commands import (
    SIDE_CODES,
    STP_CODES,
    TIF_CODES,
    TYPE_CODES,
    AddInstrument,
    CancelOrder,
    Command,
    Control,
    EndOfDay,
    NewOrder,
    ReplaceOrder,
    SessionChange,
)
from fabric.constants import (
    REJ_BAD_FIELD,
    REJ_BAD_INSTRUMENT,
    REJ_INSTRUMENT_EXISTS,
    REJ_MALFORMED,
    REJ_MISSING_FIELD,
    REJ_UNKNOWN_OP,
    REJECT_NAMES,
)
from fabric.engine import InstrumentExists, MatchingEngine, Outcome
from fabric.instruments import InstrumentError, parse_decimal
from fabric.protocol import (
    ExAccepted,
    ExCancelled,
    ExExpired,
    ExFill,
    ExRejected,
    ExReplaced,
    ExTriggered,
    SessionEvent,
    Trade,
    TradingState,
)

Event = dict[str, Any]  # one line of the replay's output, as docs/replay.md describes it
OPS = ("instrument", "new", "cancel", "replace", "end_of_day", "admin", "session")
_PHASES = {"pre_open": 0, "auction": 0, "continuous": 0, "closing": 0, "closed": 0}
_ADMIN_ACTIONS = {"halt": 0, "resume": 0, "disable": 0, "enable": 0, "disconnected": 0}


class CommandError(ValueError):
    """A command line that is not a valid command; ``code`` is a REJ_* reason."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def _str(cmd: dict[str, Any], name: str) -> str:
    if name not in cmd:
        raise CommandError(REJ_MISSING_FIELD, f"missing field '{name}'")
    v = cmd[name]
    if not isinstance(v, str) or not v:
        raise CommandError(REJ_BAD_FIELD, f"field '{name}' must be a non-empty string, got {v!r}")
    return v


def _int(cmd: dict[str, Any], name: str, default: int | None = None) -> int:
    if name not in cmd:
        if default is not None:
            return default
        raise CommandError(REJ_MISSING_FIELD, f"missing field '{name}'")
    v = cmd[name]
    if isinstance(v, bool) or not isinstance(v, int):
        raise CommandError(REJ_BAD_FIELD, f"field '{name}' must be an integer, got {v!r}")
    return v


def _decimal(cmd: dict[str, Any], name: str) -> str:
    # A decimal field as exact text (a JSON number arrives as a Decimal, never a float).
    if name not in cmd:
        raise CommandError(REJ_MISSING_FIELD, f"missing field '{name}'")
    try:
        return str(parse_decimal(cmd[name]))
    except ValueError as e:
        raise CommandError(REJ_BAD_FIELD, f"field '{name}': {e}") from None


def _bool(cmd: dict[str, Any], name: str) -> bool:
    v = cmd.get(name, False)
    if not isinstance(v, bool):
        raise CommandError(REJ_BAD_FIELD, f"field '{name}' must be true or false, got {v!r}")
    return v


def _choice(cmd: dict[str, Any], name: str, choices: dict[str, int], default: str | None = None) -> Any:
    # The wire's name of a choice; the replay format takes any case.
    if name not in cmd:
        if default is not None:
            return default
        raise CommandError(REJ_MISSING_FIELD, f"missing field '{name}'")
    v = cmd[name]
    key = v.upper() if isinstance(v, str) and name == "tif" else v.lower() if isinstance(v, str) else v
    if key not in choices:
        raise CommandError(REJ_BAD_FIELD, f"field '{name}' must be one of {', '.join(choices)}, got {v!r}")
    return key


def parse_command(cmd: Any) -> Command:
    """Return the typed command a replay-format JSON object describes (``docs/replay.md``).

    Raises
    ------
    CommandError
        The object is not a valid command; its ``code`` names the reason.
    """
    if not isinstance(cmd, dict):
        raise CommandError(REJ_MALFORMED, f"a command must be a JSON object, got {type(cmd).__name__}")
    if "op" not in cmd:
        raise CommandError(REJ_MISSING_FIELD, "missing field 'op'")
    op = cmd["op"]
    if op == "new":
        oid, broker, symbol = _str(cmd, "oid"), _str(cmd, "broker"), _str(cmd, "symbol")
        side = _choice(cmd, "side", SIDE_CODES)
        otype = _choice(cmd, "type", TYPE_CODES)
        qty = _int(cmd, "qty")
        stp = _choice(cmd, "stp", STP_CODES, default="off")
        post_only = _bool(cmd, "post_only")
        expire = _str(cmd, "expire_date") if cmd.get("expire_date") is not None else None
        disclosed = _int(cmd, "disclosed_qty") if cmd.get("disclosed_qty") is not None else None
        stop = _decimal(cmd, "stop_price") if cmd.get("stop_price") is not None else None
        if otype == "limit":
            return NewOrder(oid=oid, broker=broker, symbol=symbol, side=side, type=otype, qty=qty,
                            price=_decimal(cmd, "price"), tif=_choice(cmd, "tif", TIF_CODES, default="GTC"), stp=stp,
                            post_only=post_only, expire_date=expire, disclosed_qty=disclosed, stop_price=stop)
        if cmd.get("price") is not None:
            raise CommandError(REJ_BAD_FIELD, "a market order takes no price")
        if post_only or disclosed is not None:
            raise CommandError(REJ_BAD_FIELD, "a market order cannot be post-only nor disclose a quantity")
        # A stop-loss market order (SL-M) waits for its trigger: DAY unless told.
        return NewOrder(oid=oid, broker=broker, symbol=symbol, side=side, type=otype, qty=qty,
                        tif=_choice(cmd, "tif", TIF_CODES, default="IOC" if stop is None else "DAY"), stp=stp,
                        expire_date=expire, stop_price=stop)
    if op == "cancel":
        return CancelOrder(symbol=_str(cmd, "symbol"), broker=_str(cmd, "broker"), oid=_str(cmd, "oid"))
    if op == "replace":
        oid, broker, symbol = _str(cmd, "oid"), _str(cmd, "broker"), _str(cmd, "symbol")
        return ReplaceOrder(oid=oid, broker=broker, symbol=symbol,
                            price=_decimal(cmd, "price") if cmd.get("price") is not None else None,
                            qty=_int(cmd, "qty") if cmd.get("qty") is not None else None,
                            stp=_choice(cmd, "stp", STP_CODES, default="off"),
                            stop_price=_decimal(cmd, "stop_price") if cmd.get("stop_price") is not None else None)
    if op == "end_of_day":
        return EndOfDay(date=_str(cmd, "date") if cmd.get("date") is not None else None)
    if op == "admin":
        action = _choice(cmd, "action", _ADMIN_ACTIONS)
        if action in ("halt", "resume"):
            sym = _str(cmd, "symbol") if cmd.get("symbol") is not None else None
            until = _int(cmd, "until") if action == "halt" and cmd.get("until") is not None else None
            return Control(action=action, symbol=sym, until=until, text=cmd.get("text"), by=cmd.get("by"))
        return Control(action=action, broker=_str(cmd, "broker"))
    if op == "session":
        vwap_from = _int(cmd, "vwap_from") if cmd.get("vwap_from") is not None else None
        phase = _choice(cmd, "phase", _PHASES)
        entry = _bool(cmd, "entry")
        if entry and phase != "closing":
            raise CommandError(REJ_BAD_FIELD, f"field 'entry' is for the closing phase (its closing session), not "
                                              f"{phase}, whose entry follows from it")
        return SessionChange(phase=phase, vwap_from=vwap_from, ts=_int(cmd, "ts", default=0), entry=entry)
    if op == "instrument":
        symbol = _str(cmd, "symbol")
        band = cmd.get("band_pct")
        return AddInstrument(symbol=symbol, tick=_decimal(cmd, "tick") if "tick" in cmd else "0.01",
                             lot=_int(cmd, "lot", default=1),
                             ref_price=_decimal(cmd, "ref_price") if "ref_price" in cmd else None,
                             band_pct=_decimal(cmd, "band_pct") if band is not None else None,
                             market_protection_pct=_decimal(cmd, "market_protection_pct")
                             if cmd.get("market_protection_pct") is not None else None)
    raise CommandError(REJ_UNKNOWN_OP, f"unknown op {op!r}; expected one of {', '.join(OPS)}")


def replay_events(outcomes: list[Outcome]) -> list[Event]:
    """Return the engine's outcomes as the replay format's events (``docs/replay.md``).

    A trade is one ``trade`` event carrying both orders' quantities after it, where the exchange's
    stream has the trade and its two fills.
    """
    events: list[Event] = []
    it = iter(outcomes)
    for o in it:
        if type(o) is Trade:
            aggr, rest = next(it), next(it)
            assert type(aggr) is ExFill and type(rest) is ExFill
            events.append({"event": "trade", "symbol": o.symbol, "trade_id": o.trade_id, "price": o.price,
                           "qty": o.qty, "buy_oid": o.buy_oid, "sell_oid": o.sell_oid, "buy_broker": o.buy_broker,
                           "sell_broker": o.sell_broker, "aggressor": o.aggressor,
                           "aggressor_leaves_qty": aggr.leaves_qty, "aggressor_cum_qty": aggr.cum_qty,
                           "resting_leaves_qty": rest.leaves_qty, "resting_cum_qty": rest.cum_qty})
        elif type(o) is ExAccepted:
            ev: Event = {"event": "accepted", "symbol": o.symbol, "oid": o.oid, "broker": o.broker, "side": o.side,
                         "type": o.type}
            if o.price is not None:
                ev["price"] = o.price
            ev["qty"] = o.qty
            ev["tif"] = o.tif
            if o.post_only:
                ev["post_only"] = True
            if o.expire_date is not None:
                ev["expire_date"] = o.expire_date
            if o.disclosed_qty is not None:
                ev["disclosed_qty"] = o.disclosed_qty
            if o.stop_price is not None:
                ev["stop_price"] = o.stop_price
            events.append(ev)
        elif type(o) is ExTriggered:
            tev: Event = {"event": "triggered", "symbol": o.symbol, "oid": o.oid, "broker": o.broker, "side": o.side,
                          "type": o.type}
            if o.price is not None:
                tev["price"] = o.price
            tev["qty"] = o.qty
            tev["stop_price"] = o.stop_price
            events.append(tev)
        elif type(o) is ExRejected:
            events.append({"event": "rejected", "op": o.op, "oid": o.oid, "broker": o.broker, "symbol": o.symbol,
                           "reason": o.reason, "text": o.text})
        elif type(o) is ExCancelled:
            events.append({"event": "cancelled", "symbol": o.symbol, "oid": o.oid, "broker": o.broker, "qty": o.qty,
                           "cum_qty": o.cum_qty, "reason": o.reason})
        elif type(o) is ExReplaced:
            rev: Event = {"event": "replaced", "symbol": o.symbol, "oid": o.oid, "broker": o.broker,
                          "price": o.price, "qty": o.qty, "leaves_qty": o.leaves_qty, "cum_qty": o.cum_qty,
                          "kept_priority": o.kept_priority}
            if o.stop_price is not None:
                rev["stop_price"] = o.stop_price
            events.append(rev)
        elif type(o) is ExExpired:
            events.append({"event": "expired", "symbol": o.symbol, "oid": o.oid, "broker": o.broker, "qty": o.qty,
                           "cum_qty": o.cum_qty})
        elif type(o) is TradingState:
            events.append({"event": "trading_state", "symbol": o.symbol, "state": o.state, "reason": o.reason,
                           "text": o.text, "until": o.until})
        elif type(o) is SessionEvent:
            if o.kind == "phase":
                events.append({"event": "session", "phase": o.phase, "entry": True} if o.phase == "closing" and o.entry
                              else {"event": "session", "phase": o.phase})
            else:  # "auction", "indicative", "close"
                events.append({"event": o.kind, "symbol": o.symbol, "price": o.price, "qty": o.qty,
                               "unmatched": o.unmatched})
        else:  # pragma: no cover - a fill outside a trade
            raise AssertionError(f"unexpected outcome {o!r}")
    return events


# Numbers with a fraction become Decimals, never floats: prices stay exact.
_decode = msgspec.json.Decoder(float_hook=Decimal).decode
_encode = msgspec.json.encode


def dumps(event: Event) -> str:
    """Return one event as a compact JSON line (no newline), fields in their documented order."""
    return _encode(event).decode()


class Replayer:
    """Apply replay-format commands (JSON objects, or typed commands) to a :class:`MatchingEngine`, in order."""

    def __init__(self, engine: MatchingEngine | None = None, timezone: str = "Asia/Kolkata") -> None:
        self.engine = engine if engine is not None else MatchingEngine(timezone=timezone)

    def apply(self, cmd: Any, line: int | None = None) -> list[Event]:
        """Apply one command; return its events (a ``rejected`` event for a bad command)."""
        try:
            typed = cmd if isinstance(cmd, Command) else parse_command(cmd)
            try:
                return replay_events(self.engine.apply(typed))
            except InstrumentExists as e:
                raise CommandError(REJ_INSTRUMENT_EXISTS, str(e)) from None
            except InstrumentError as e:
                raise CommandError(REJ_BAD_INSTRUMENT, str(e)) from None
        except CommandError as e:
            ev: Event = {"event": "rejected", "op": None, "oid": None, "broker": None, "symbol": None}
            fields = msgspec.structs.asdict(cmd) if isinstance(cmd, Command) else cmd
            if isinstance(fields, dict):
                if isinstance(cmd, Command):
                    fields["op"] = type(cmd).__struct_config__.tag
                for k in ("op", "oid", "broker", "symbol"):
                    v = fields.get(k)
                    ev[k] = v if isinstance(v, str) else None
            ev["reason"] = REJECT_NAMES[e.code]
            ev["text"] = str(e)
            if line is not None:
                ev["line"] = line
            return [ev]

    def apply_line(self, text: str | bytes, line: int | None = None) -> list[Event]:
        """Parse one JSON Lines line and apply it; blank lines give no events."""
        if not text.strip():
            return []
        try:
            cmd = _decode(text)
        except (msgspec.DecodeError, RecursionError) as e:
            # msgspec raises RecursionError, not DecodeError, for JSON nested deeper than its stack.
            why = "JSON nested too deeply" if isinstance(e, RecursionError) else str(e)
            ev: Event = {"event": "rejected", "op": None, "oid": None, "broker": None, "symbol": None,
                         "reason": REJECT_NAMES[REJ_MALFORMED], "text": f"not JSON: {why}"}
            if line is not None:
                ev["line"] = line
            return [ev]
        return self.apply(cmd, line)

    def books(self) -> list[Event]:
        """Return one ``book`` event per symbol, in the order the symbols first appeared."""
        return [self.engine.book_levels(s) for s in self.engine.books]


# ---------------------------------------------------------------------------
# Progress and summary
# ---------------------------------------------------------------------------


class Progress:
    """Report progress on standard error for runs that last more than a moment."""

    def __init__(self, total_bytes: int | None, stream: IO[str] = sys.stderr, every: float = 1.0) -> None:
        self.total = total_bytes
        self.stream = stream
        self.every = every
        self.start = time.monotonic()
        self.last = self.start
        self.shown = False

    def update(self, lines: int, done_bytes: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        rate = lines / max(now - self.start, 1e-9)
        pct = f" {100 * done_bytes / self.total:5.1f}%" if self.total else ""
        self.stream.write(f"replay:{pct} {lines:,} commands, {rate:,.0f}/s\n")
        self.stream.flush()
        self.shown = True

    def finish(self, lines: int) -> None:
        if self.shown:
            secs = time.monotonic() - self.start
            self.stream.write(f"replay: done, {lines:,} commands in {secs:.1f} s ({lines / max(secs, 1e-9):,.0f}/s)\n")
            self.stream.flush()


@dataclass
class SymbolStats:
    """What a session did to one symbol, for the summary."""

    trades: int = 0
    volume: int = 0
    turnover: Decimal = Decimal(0)
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    last: Decimal | None = None


@dataclass
class Summary:
    """Counts of a replay's events, for people."""

    commands: int = 0
    events: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    symbols: dict[str, SymbolStats] = field(default_factory=dict)

    def add(self, ev: Event) -> None:
        kind = ev["event"]
        self.events[kind] += 1
        if kind == "rejected":
            self.rejects[ev["reason"]] += 1
        elif kind == "trade":
            st = self.symbols.setdefault(ev["symbol"], SymbolStats())
            p = Decimal(ev["price"])
            st.trades += 1
            st.volume += ev["qty"]
            st.turnover += p * ev["qty"]
            st.open = p if st.open is None else st.open
            st.high = p if st.high is None or p > st.high else st.high
            st.low = p if st.low is None or p < st.low else st.low
            st.last = p


def print_summary(summary: Summary, replayer: Replayer, seconds: float, out: IO[str]) -> None:
    """Print a readable account of the session: per-symbol trading, the book's top, and every outcome."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=None if out.isatty() else 132)
    eng = replayer.engine
    table = Table(title="Session summary by symbol", title_justify="left", header_style="bold")
    table.add_column("symbol", justify="left")
    for col in ("trades", "volume", "open", "high", "low", "last", "chg %", "VWAP", "bid", "ask", "resting"):
        table.add_column(col, justify="right", no_wrap=True)
    for symbol, book in eng.books.items():
        inst = eng.instruments[symbol]
        st = summary.symbols.get(symbol, SymbolStats())
        lv = eng.book_levels(symbol, 1)
        bid = f"{lv['bids'][0][1]} @ {lv['bids'][0][0]}" if lv["bids"] else "-"
        ask = f"{lv['asks'][0][1]} @ {lv['asks'][0][0]}" if lv["asks"] else "-"
        q = inst.tick

        def fmt(d: Decimal | None, q: Decimal = q) -> str:
            return "-" if d is None else str(d.quantize(q))

        vwap = (st.turnover / st.volume).quantize(q) if st.volume else None
        chg = "-"
        if st.last is not None and inst.ref_price:
            pct = (st.last - inst.ref_price) * 100 / inst.ref_price
            chg = f"[{'green' if pct >= 0 else 'red'}]{pct:+.2f}[/]"
        resting = getattr(book, "resting", None)
        table.add_row(symbol, f"{st.trades:,}", f"{st.volume:,}", fmt(st.open), fmt(st.high), fmt(st.low),
                      fmt(st.last), chg, fmt(vwap), bid, ask, "-" if resting is None else f"{resting:,}")
    console.print(table)
    outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.events.items()))
    console.print(f"{summary.commands:,} commands in {seconds:.2f} s "
                  f"({summary.commands / max(seconds, 1e-9):,.0f} commands/s): {outcomes}")
    if summary.rejects:
        console.print("rejects by reason: " + ", ".join(f"{k} {v:,}" for k, v in summary.rejects.most_common()))


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def run(
    path: str,
    *,
    book: bool = False,
    summary: bool = False,
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
    progress_every: float = 1.0,
    timezone: str = "Asia/Kolkata",
) -> int:
    """Replay ``path`` (``-`` for standard input) and write events (or a summary) to ``out``.

    ``timezone`` is the exchange's (an IANA name): the trading day a line's ``ts`` falls on.

    Returns
    -------
    int
        The process exit status: 0, or 2 when the file cannot be read.
    """
    try:
        src: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as e:
        err.write(f"exfab replay: cannot read {path}: {e.strerror}\n")
        return 2
    total = None if path == "-" else os.path.getsize(path)
    replayer = Replayer(timezone=timezone)
    progress = Progress(total, err, progress_every)
    stats = Summary()
    write = out.buffer.write if hasattr(out, "buffer") else (lambda b: out.write(b.decode()))
    start = time.perf_counter()
    lineno = 0
    done = 0
    with src:
        buf: list[bytes] = []
        for text in src:
            lineno += 1
            done += len(text)
            events = replayer.apply_line(text, lineno)
            if summary:
                for ev in events:
                    stats.add(ev)
            else:
                buf.extend(_encode(ev) for ev in events)
                if len(buf) >= 4096:
                    buf.append(b"")
                    write(b"\n".join(buf))
                    buf.clear()
            if lineno & 0x3FFF == 0:
                progress.update(lineno, done)
        if buf:
            buf.append(b"")
            write(b"\n".join(buf))
    seconds = time.perf_counter() - start
    stats.commands = lineno
    progress.finish(lineno)
    if summary:
        out.flush()
        print_summary(stats, replayer, seconds, out)
    elif book:
        write(b"".join(_encode(ev) + b"\n" for ev in replayer.books()))
    out.flush()
    return 0


def replay_lines(lines: Iterable[str], *, book: bool = False, timezone: str = "Asia/Kolkata") -> list[Event]:
    """Replay in memory: return every event of ``lines`` (and the books when ``book``)."""
    r = Replayer(timezone=timezone)
    events = [ev for i, text in enumerate(lines, 1) for ev in r.apply_line(text, i)]
    if book:
        events.extend(r.books())
    return events
