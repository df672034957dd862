"""``exfab admin``: an operator's market control from the command line.

``exfab admin halt [SYMBOL]`` and ``exfab admin resume [SYMBOL]`` halt and resume one symbol or (no symbol) the
whole market; ``exfab admin disable BROKER`` (the kill switch: its open orders are cancelled and its new orders
refused) and ``exfab admin enable BROKER`` let it back. The command logs on to a gateway as an operator
(``--as``, default the first broker of role ``operator`` in the topology), sends one ``admin`` command, prints
what was done and exits: 0 when it was carried out, 1 when the exchange refused it (``not_authorized``...), 2
for a usage error, 3 when the exchange could not be reached.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import IO, Any

from fabric.client import BrokerClient, ExchangeUnavailable, LogonRefused
from fabric.protocol import AdminAck, ProtocolError
from tools.order_cmd import EXIT_OK, EXIT_REJECTED, EXIT_UNREACHABLE, EXIT_USAGE
from topology.keys import broker_keyring
from topology.load import TopologyError, load

ACTIONS = ("halt", "resume", "disable", "enable")


def describe(ack: AdminAck) -> str:
    """Return what an ``admin_ack`` says was done, for a person."""
    if ack.action in ("halt", "resume"):
        what = ack.symbol or "the whole market"
        return f"{'halted' if ack.action == 'halt' else 'resumed'} {what}"
    if ack.action == "disable":
        return (f"disabled broker {ack.broker}: its new orders and replaces are refused; {ack.cancelled} open "
                f"order{'s' if ack.cancelled != 1 else ''} cancelled")
    return f"enabled broker {ack.broker}: it may trade again"


def _until(text: str | None) -> int | None:
    # --for SECONDS: a halt that ends by itself, as ns since the Unix epoch.
    if text is None:
        return None
    seconds = float(text)
    if seconds <= 0:
        raise ValueError(f"--for must be a positive number of seconds, got {text}")
    return int((dt.datetime.now(dt.UTC).timestamp() + seconds) * 1e9)


def admin_command(args: Any, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run ``exfab admin ACTION [TARGET]``; return the exit status (the ``EXIT_*`` codes of ``exfab order``)."""
    action: str = args.action
    target: str | None = args.target
    if action in ("disable", "enable") and target is None:
        err.write(f"exfab admin {action}: error: give the BROKER to {action}\n")
        return EXIT_USAGE
    try:
        topo = load(args.topology)
        until = _until(getattr(args, "for_s", None))
    except (TopologyError, ValueError) as e:
        err.write(f"exfab admin: error: {e}\n")
        return EXIT_USAGE
    operator = args.as_ or next((b.id for b in topo.brokers if b.role == "operator"), None)
    if operator is None:
        err.write('exfab admin: error: the topology names no operator ([[brokers]] with role = "operator"): give '
                  "--as OPERATOR\n")
        return EXIT_USAGE
    try:  # the operator's key: --key FILE, or the demo key the topology ships for it (local.toml's operators)
        keys = broker_keyring(topo, operator, getattr(args, "key", None))
    except ValueError as e:
        err.write(f"exfab admin: error: {e}\n")
        return EXIT_USAGE
    client = BrokerClient([g.endpoint.connect for g in topo.gateways], operator, timeout=5.0, retries=1, keys=keys)
    try:
        client.connect()
        symbol = target if action in ("halt", "resume") else None
        broker = target if action in ("disable", "enable") else None
        ack = client.admin(action, symbol=symbol, broker=broker, text=args.text, until=until)
    except LogonRefused as e:
        err.write(f"exfab admin: the exchange refused the logon of {operator}: {e}\n")
        return EXIT_REJECTED
    except ProtocolError as e:
        err.write(f"exfab admin {action}: refused: {e.reason} ({e.text})\n")
        return EXIT_REJECTED
    except ExchangeUnavailable as e:
        err.write(f"exfab admin: cannot reach the exchange: {e}\n")
        return EXIT_UNREACHABLE
    finally:
        client.close()
    if args.json:
        out.write(json.dumps({"event": "admin_ack", "action": ack.action, "symbol": ack.symbol, "broker": ack.broker,
                              "cancelled": ack.cancelled}) + "\n")
    else:
        out.write(describe(ack) + (f" until {dt.datetime.fromtimestamp(until / 1e9, dt.UTC):%H:%M:%S} UTC"
                                   if until is not None else "") + "\n")
    return EXIT_OK
