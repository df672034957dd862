"""``exfab order`` and ``exfab orders``: a broker's orders from the command line.

An order command logs on as the broker, sends one command, prints its
immediate outcome (accepted or rejected, the fills of its aggressive part, the
cancel of an unfilled IOC rest, the order's state) and exits.  Its exit status
(``EXIT_*`` below; ``exfab order --help`` lists them too) tells a script what
happened: 0 when the exchange carried the command out, 1 when it rejected it,
2 for a usage error (argparse's own code), 3 when the exchange could not be
reached or stopped answering.

``--json`` prints one JSON object per line: each execution report with an
``event`` field named as in the replay format (``accepted``, ``rejected``,
``trade`` for a fill, ``cancelled``, ``replaced``, ``expired``, ``triggered``), then the
order's ``status``; the other fields are those of ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import IO, Any

import msgspec

from fabric.client import BrokerClient, ExchangeUnavailable, LogonRefused, OrderResult
from fabric.protocol import Accepted, Cancelled, Expired, Fill, OrderStatus, Rejected, Replaced, Triggered
from topology.keys import broker_keyring
from topology.load import load

EXIT_OK = 0  # the exchange carried the command out
EXIT_REJECTED = 1  # the exchange refused the command (or the broker's logon)
EXIT_USAGE = 2  # the command line is wrong: argparse's code, also for SYMBOL QTY [@ PRICE] and --topology
EXIT_UNREACHABLE = 3  # no gateway answered, or the exchange stopped answering before the outcome
# tools/cli.py's ORDER_EXIT_STATUS (the epilog of `exfab order --help`) explains these codes to users.

EVENT_NAMES: dict[type, str] = {Accepted: "accepted", Rejected: "rejected", Fill: "trade", Cancelled: "cancelled",
               Replaced: "replaced", Expired: "expired", Triggered: "triggered", OrderStatus: "status"}


def as_json(msg: Any) -> dict[str, Any]:
    """Return a report as a JSON-ready dict: ``event`` first, then the protocol's fields."""
    fields = {k: v for k, v in msgspec.structs.asdict(msg).items()
              if k != "v" and v is not None and not (k in ("post_only", "triggered") and v is False)}
    out: dict[str, Any] = {"event": EVENT_NAMES.get(type(msg), type(msg).__name__.lower())}
    if isinstance(msg, Fill):
        out["qty"] = msg.last_qty  # as a replay `trade` has it
    out.update(fields)
    return out


def describe(msg: Any) -> str:
    """Return one line for a person."""
    if isinstance(msg, Accepted):
        at = f"@ {msg.price}" if msg.price is not None else "at market"
        tif = f"{msg.tif} {msg.expire_date}" if msg.expire_date else msg.tif
        post = " post-only" if msg.post_only else ""
        if msg.disclosed_qty:
            post += f" disclosing {msg.disclosed_qty}"
        if msg.stop_price is not None:
            post += f", waiting for a trade at {'or above' if msg.side == 'buy' else 'or below'} {msg.stop_price}"
        return f"accepted   {msg.side} {msg.qty} {msg.symbol} {at} {tif}{post}   oid {msg.oid}"
    if isinstance(msg, Triggered):
        at = f"@ {msg.price}" if msg.price is not None else "at market"
        return f"triggered  {msg.side} {msg.qty} {msg.symbol} {at}: stop {msg.stop_price} reached   oid {msg.oid}"
    if isinstance(msg, Rejected):
        return f"REJECTED   {msg.op} {msg.oid or ''}: {msg.reason} ({msg.text})"
    if isinstance(msg, Fill):
        role = "aggressor" if msg.aggressor else "resting"
        return (f"fill       {msg.side} {msg.last_qty} {msg.symbol} @ {msg.price}   cum {msg.cum_qty}, "
                f"leaves {msg.leaves_qty}   trade {msg.trade_id} ({role})")
    if isinstance(msg, Cancelled):
        return f"cancelled  {msg.qty} {msg.symbol} ({msg.reason}), cum {msg.cum_qty}   oid {msg.oid}"
    if isinstance(msg, Replaced):
        kept = "kept its place" if msg.kept_priority else "back of the queue"
        stop = f", stop {msg.stop_price}" if msg.stop_price is not None else ""
        return (f"replaced   {msg.symbol} now {msg.qty} @ {msg.price or 'market'}{stop}, leaves {msg.leaves_qty}, "
                f"cum {msg.cum_qty} ({kept})   oid {msg.oid}")
    if isinstance(msg, Expired):
        return f"expired    {msg.qty} {msg.symbol}   oid {msg.oid}"
    if isinstance(msg, OrderStatus):
        if msg.state in ("rejected", "unknown"):
            return f"status     {msg.state}"
        price = f" @ {msg.price}" if msg.price else ""
        stop = "" if msg.stop_price is None else \
            f", stop {msg.stop_price} ({'triggered' if msg.triggered else 'waiting for its trigger'})"
        return (f"status     {msg.state}: {msg.side or ''} {msg.qty}{price}, cum {msg.cum_qty}, "
                f"leaves {msg.leaves_qty}{stop}")
    return str(msg)


def _print_result(r: OrderResult, as_json_lines: bool, out: IO[str]) -> None:
    msgs: list[Any] = list(r.events)
    if r.status is not None:
        msgs.append(r.status)
    if r.error is not None:
        msgs.append(r.error)
    for m in msgs:
        out.write((json.dumps(as_json(m)) if as_json_lines else describe(m)) + "\n")


def _client(topology: str, broker: str, key: str | None = None) -> BrokerClient:
    # The broker's key: --key FILE, or the demo key the topology ships for it (local.toml's brokers).
    topo = load(topology)
    return BrokerClient([g.endpoint.connect for g in topo.gateways], broker, timeout=2.0, retries=1,
                        keys=broker_keyring(topo, broker, key))


def parse_order_words(words: Sequence[str]) -> tuple[str, int, str | None]:
    """Parse ``SYMBOL QTY [@ PRICE]`` (the ``@`` is optional); return (symbol, qty, price or None).

    Raises
    ------
    ValueError
        With a message for the user when the words do not fit.
    """
    rest = [w for w in words if w != "@"]
    if len(rest) not in (2, 3):
        raise ValueError("expected SYMBOL QTY [@ PRICE], e.g. TCS 10 @ 3500.05")
    symbol, qty_text = rest[0], rest[1]
    if not qty_text.isdigit():
        raise ValueError(f"quantity must be a whole number, got {qty_text!r}")
    price = rest[2] if len(rest) == 3 else None
    if price is not None and price.startswith("@"):
        price = price[1:]
    return symbol, int(qty_text), price


def order_command(action: str, args: Any, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run ``exfab order ACTION ...``; return the exit status (an ``EXIT_*`` code)."""
    if action in ("buy", "sell"):
        try:
            symbol, qty, price = parse_order_words(args.words)
        except ValueError as e:
            err.write(f"exfab order {action}: error: {e}\n")
            return EXIT_USAGE
    try:
        client = _client(args.topology, args.broker, getattr(args, "key", None))
    except ValueError as e:  # the topology's problems, or the broker's key file's
        err.write(f"exfab order: error: {e}\n")
        return EXIT_USAGE
    try:
        try:
            client.connect()
        except LogonRefused as e:
            err.write(f"exfab order: the exchange refused the logon of {args.broker}: {e}\n")
            return EXIT_REJECTED
        except ExchangeUnavailable as e:
            err.write(f"exfab order: cannot reach the exchange: {e}\n")
            return EXIT_UNREACHABLE
        if action in ("buy", "sell"):
            send = client.buy if action == "buy" else client.sell
            r = send(symbol, qty, price, args.tif, type=None if price is not None else "market", oid=args.oid,
                     post_only=getattr(args, "post_only", False), expire_date=getattr(args, "expire_date", None),
                     disclosed_qty=getattr(args, "disclosed_qty", None), stop_price=getattr(args, "stop_price", None))
        else:
            found = args.symbol or _find_symbol(client, args.oid)
            if found is None:
                msg = Rejected(op=action, oid=args.oid, reason="unknown_order",
                               text=f"broker {args.broker} has no open order {args.oid} "
                                    "(give --symbol for a closed one)")
                out.write((json.dumps(as_json(msg)) if args.json else describe(msg)) + "\n")
                return EXIT_REJECTED
            if action == "cancel":
                r = client.cancel(args.oid, found)
            else:
                r = client.replace(args.oid, found, args.price, args.qty, getattr(args, "stop_price", None))
        _print_result(r, args.json, out)
        return EXIT_OK if r.accepted else EXIT_REJECTED
    except ExchangeUnavailable as e:
        err.write(f"exfab order: the exchange stopped answering: {e}\n")
        return EXIT_UNREACHABLE
    finally:
        client.close()


def _find_symbol(client: BrokerClient, oid: str) -> str | None:
    for o in client.open_orders():
        if o.oid == oid:
            return o.symbol
    return None


def orders_command(args: Any, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run ``exfab orders --broker B``: print the broker's open orders; return the exit status."""
    try:
        client = _client(args.topology, args.broker, getattr(args, "key", None))
    except ValueError as e:  # the topology's problems, or the broker's key file's
        err.write(f"exfab orders: error: {e}\n")
        return EXIT_USAGE
    try:
        client.connect()
        orders = client.open_orders(args.symbol)
    except LogonRefused as e:
        err.write(f"exfab orders: the exchange refused the logon of {args.broker}: {e}\n")
        return EXIT_REJECTED
    except ExchangeUnavailable as e:
        err.write(f"exfab orders: cannot reach the exchange: {e}\n")
        return EXIT_UNREACHABLE
    finally:
        client.close()
    if args.json:
        for o in orders:
            out.write(json.dumps(as_json(o)) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Open orders of {args.broker}", title_justify="left")
    for col in ("oid", "symbol", "side", "price", "qty", "filled", "open", "tif", "state"):
        table.add_column(col, justify="right" if col in ("price", "qty", "filled", "open") else "left")
    for o in orders:
        table.add_row(o.oid, o.symbol, o.side or "", o.price or "market", str(o.qty), str(o.cum_qty),
                      str(o.leaves_qty), o.tif or "", o.state)
    console = Console(file=out, width=None if out.isatty() else 120)
    console.print(table if orders else f"{args.broker} has no open orders")
    return 0
