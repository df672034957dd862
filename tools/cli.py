"""``exfab``: the exchange's command line.

Each subcommand is a thin layer over a module that does the work, so that what
the command line can do, a program can do too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_replay(args: argparse.Namespace) -> int:
    from tools import replay

    return replay.run(args.file, book=args.book, summary=args.summary, timezone=args.timezone)


def _cmd_topology_check(args: argparse.Namespace) -> int:
    from tools import topology_cmd

    return topology_cmd.check_command(args.file)


def _cmd_keys_new(args: argparse.Namespace) -> int:
    from tools import keys_cmd

    return keys_cmd.new_command(args.broker, args.node, args.dir, args.role, args.force)


def _cmd_journal_inspect(args: argparse.Namespace) -> int:
    from tools import journal_cmd

    return journal_cmd.inspect(args.file, commands=args.commands, timezone=args.timezone)


def _cmd_journal_verify(args: argparse.Namespace) -> int:
    from tools import journal_cmd

    return journal_cmd.verify(args.file, repair=args.repair)


DEFAULT_TOPOLOGY = "topology/examples/local.toml"


def _timezone(text: str) -> str:
    # --timezone: an IANA name this machine knows (the trading day of a command's ts is counted in it).
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(text)
    except (ValueError, ZoneInfoNotFoundError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time zone this machine knows (an IANA name such as "
                                         "Asia/Kolkata)") from None
    return text

# The epilog of `exfab order --help`: tools/order_cmd.py's EXIT_* codes (not imported here, to keep
# every exfab command's start light).
ORDER_EXIT_STATUS = """\
exit status:
  0  the exchange carried the command out: a new order accepted (whether it
     rested, traded, or, as an IOC or FOK, was cancelled at once for what did
     not trade), a cancel or replace done
  1  the exchange rejected the command (a REJECTED line, or "rejected" with
     --json), or refused the broker's logon
  2  usage error: bad options or words, or an unreadable --topology file
  3  the exchange could not be reached, or stopped answering before the
     outcome (the command may have been carried out: exfab orders tells)"""


def _default_topology() -> str:
    # The example topology, found from a checkout or from the installed package.
    if Path(DEFAULT_TOPOLOGY).exists():
        return DEFAULT_TOPOLOGY
    return str(Path(__file__).resolve().parents[1] / DEFAULT_TOPOLOGY)


def _cmd_up(args: argparse.Namespace) -> int:
    from tools import up

    return up.run(args.file or _default_topology(), demo=args.demo, duration=args.duration, rate=args.rate,
                  fresh=args.fresh, loopback=args.loopback, trading_minutes=args.trading_minutes)


def _cmd_node(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"nodes.{args.kind}")
    extra: list[str] = []
    if args.kind == "matcher":
        options = (("--fsync", args.fsync), ("--ring-mb", args.ring_mb), ("--keep-finished", args.keep_finished))
        for opt, value in options:
            if value is not None:
                extra += [opt, str(value)]
    elif args.fsync or args.ring_mb is not None or args.keep_finished is not None:
        print(f"exfab node {args.kind}: --fsync, --ring-mb and --keep-finished are a matcher's options",
              file=sys.stderr)
        return 2
    argv = ["--topology", args.topology, "--id", args.id, *extra]
    # A matcher whose ZooKeeper session ended starts itself again with sys.argv[1:] (os.execv): its own options.
    sys.argv = [f"exfab node {args.kind}", *argv]
    return int(module.main(argv))


def _cmd_order(args: argparse.Namespace) -> int:
    from tools import order_cmd

    return order_cmd.order_command(args.action, args)


def _cmd_admin(args: argparse.Namespace) -> int:
    from tools import admin_cmd

    return admin_cmd.admin_command(args)


def _cmd_orders(args: argparse.Namespace) -> int:
    from tools import order_cmd

    return order_cmd.orders_command(args)


def _cmd_trades(args: argparse.Namespace) -> int:
    from tools import store_cmd

    return store_cmd.trades(args.topology, symbol=args.symbol, date=args.date, as_json=args.json)


def _cmd_order_status(args: argparse.Namespace) -> int:
    from tools import store_cmd

    return store_cmd.order_status(args.topology, args.oid, broker=args.broker, date=args.date, as_json=args.json)


def _cmd_store_init(args: argparse.Namespace) -> int:
    from tools import store_cmd

    return store_cmd.store_init(args.topology, replication=args.replication)


def _cmd_status(args: argparse.Namespace) -> int:
    from tools import status_cmd

    return status_cmd.status(args.topology, as_json=args.json, timeout=args.timeout)


def _cmd_watch(args: argparse.Namespace) -> int:
    from tools import watch

    return watch.run(args.symbols, args.topology, once=args.once, as_json=args.json, timeout=args.timeout)


def _cmd_perf(args: argparse.Namespace) -> int:
    return _perf(list(args.rest))


def _perf(rest: list[str]) -> int:
    from perf import latency

    if not any(a == "--target" or a.startswith("--target=") for a in rest):
        rest = ["--target", "exchange", *rest]
    return latency.main(rest, prog="exfab perf")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every ``exfab`` subcommand."""
    parser = argparse.ArgumentParser(
        prog="exfab",
        description="exchange-fabric: a stock exchange on a ZeroMQ fabric with compiled order books.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "replay",
        help="run a JSON Lines file of commands through the matching engine",
        description="Read JSON Lines commands (see docs/replay.md) and write JSON Lines events in input order.",
    )
    p.add_argument("file", metavar="FILE", help="commands file, or - for standard input")
    p.add_argument("--book", action="store_true", help="after the last command, print every symbol's book")
    p.add_argument("--summary", action="store_true", help="print a readable summary of the session instead of events")
    p.add_argument("--timezone", type=_timezone, default="Asia/Kolkata", metavar="ZONE",
                   help="the exchange's time zone, which a line's ts is a trading day of (default Asia/Kolkata, as "
                        "the topology's [exchange] timezone)")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("topology", help="work with topology files")
    tsub = p.add_subparsers(dest="topology_command", metavar="ACTION")
    tsub.required = True
    t = tsub.add_parser("check", help="explain every mistake in a topology file",
                        description="Check a topology file and print every problem, or a one-line summary.")
    t.add_argument("file", metavar="FILE", help="topology TOML file")
    t.set_defaults(func=_cmd_topology_check)

    p = sub.add_parser("keys", help="CURVE key pairs for brokers and nodes")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    k = ksub.add_parser("new", help="make a key pair and print the topology line for it",
                        description="Make a CURVE key pair: for a broker (BROKER; its secret key file is the "
                                    "broker's, given to its client with --key) or for a node (--node KIND:NAME; its "
                                    "secret key file goes in the topology's keys_dir). Print what to add to the "
                                    "topology (docs/security.md).")
    k.add_argument("broker", nargs="?", metavar="BROKER", help="the broker id")
    k.add_argument("--node", default=None, metavar="KIND:NAME", help="a node's label instead, as matcher:A")
    k.add_argument("--role", default="broker", help="the broker's role: broker (default) or operator")
    k.add_argument("--dir", default=None, metavar="DIR", help="where to write the files (default: . for a broker, "
                   "keys for a node)")
    k.add_argument("--force", action="store_true", help="replace an existing key file")
    k.set_defaults(func=_cmd_keys_new)

    p = sub.add_parser("journal", help="work with a matcher's journal")
    jsub = p.add_subparsers(dest="journal_command", metavar="ACTION")
    jsub.required = True
    j = jsub.add_parser("inspect", help="print a journal as replay events (or its commands)",
                        description="Run a journal's commands through a fresh engine and print the events as "
                                    "exfab replay does, each with the seq of its input record. The file is only read.")
    j.add_argument("file", metavar="FILE", help="journal file")
    j.add_argument("--commands", action="store_true", help="print the journaled commands instead of events")
    j.add_argument("--timezone", type=_timezone, default="Asia/Kolkata", metavar="ZONE",
                   help="the topology's [exchange] timezone, in which the journal's trading days are counted "
                        "(default Asia/Kolkata)")
    j.set_defaults(func=_cmd_journal_inspect)
    j = jsub.add_parser("verify", help="check every record of a journal; report its last seq and any damage",
                        description="Check every record (length, CRC32, sequence, a command inside) and print the "
                                    "records, the seq range and any damage. Exit 0: it checks out; 1: damaged; "
                                    "2: unreadable or not a journal.")
    j.add_argument("file", metavar="FILE", help="journal file")
    j.add_argument("--repair", action="store_true",
                   help="cut a torn tail (what a crash leaves; the matcher cuts it on open anyway); corruption "
                        "is never cut")
    j.set_defaults(func=_cmd_journal_verify)

    p = sub.add_parser("up", help="run every node of a topology on this machine",
                       description="Start every node of a topology as processes, show their status and the market; "
                                   "Ctrl-C stops them all.")
    p.add_argument("file", nargs="?", metavar="FILE", help=f"topology file (default {DEFAULT_TOPOLOGY})")
    p.add_argument("--demo", action="store_true",
                   help="add simulated brokers trading every symbol (without it: a quiet exchange)")
    p.add_argument("--rate", type=float, default=100.0, help="demo commands per second (default 100)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--trading-minutes", type=float, default=None, metavar="M",
                   help="with --demo: the compressed day's continuous trading lasts M minutes (0.5 to 23.25, the "
                        "default), e.g. 1 to see the close and the closing session two minutes after the start")
    p.add_argument("--fresh", action="store_true",
                   help="start from an empty market: delete the data_dir first (journals, price history, logs); "
                        "without it the matchers replay their journals")
    p.add_argument("--loopback", action="store_true",
                   help="run a topology of several hosts here: each host on a loopback address of its own "
                        "(127.0.0.1, 127.0.0.2 ...), an absolute data_dir under .exfab/, the stores this machine "
                        "cannot run replaced by the embedded ones; the copy is written to the data_dir")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("node", help="run one node of a topology (what each host of a deployment runs)",
                       description="Run one node in the foreground; SIGTERM or Ctrl-C stops it cleanly.")
    p.add_argument("kind", choices=("matcher", "gateway", "ticker", "persistence"), help="the node kind")
    p.add_argument("--topology", required=True, metavar="FILE")
    p.add_argument("--id", required=True, metavar="NAME", help="the node's name in the topology")
    p.add_argument("--fsync", default=None, help="matcher journal policy: batch (default), interval:N (ms), none")
    p.add_argument("--ring-mb", type=int, default=None, metavar="MB",
                   help="matcher: memory for the published messages kept to answer replays (default 256)")
    p.add_argument("--keep-finished", type=int, default=None, metavar="N",
                   help="matcher: finished orders kept in memory, older ones answered by the stores (default "
                        "100,000; every order when the topology has no persistence node)")
    p.set_defaults(func=_cmd_node)

    raw = argparse.RawDescriptionHelpFormatter  # keeps the epilog's lines
    p = sub.add_parser("order", help="send one order command as a broker and print its outcome",
                       description="Send buy, sell, cancel or replace; print the immediate outcome. The exit status "
                                   "says whether the exchange carried the command out (below).",
                       formatter_class=raw, epilog=ORDER_EXIT_STATUS)
    osub = p.add_subparsers(dest="action", metavar="ACTION")
    osub.required = True
    for action in ("buy", "sell"):
        o = osub.add_parser(action, help=f"{action} SYMBOL QTY [@ PRICE] (no price: a market order)",
                            formatter_class=raw, epilog=ORDER_EXIT_STATUS)
        o.add_argument("words", nargs="+", metavar="SYMBOL QTY [@ PRICE]")
        o.add_argument("--tif", choices=("GTC", "DAY", "IOC", "FOK", "GTD"), default=None,
                       help="time in force (default GTC for a limit order, IOC at market, GTD with --expire-date, "
                            "DAY with --stop-price)")
        o.add_argument("--oid", default=None, help="your client order id (default: generated)")
        o.add_argument("--post-only", action="store_true",
                       help="a limit order that only adds liquidity: rejected (would_cross) if it would trade now")
        o.add_argument("--expire-date", default=None, metavar="YYYY-MM-DD",
                       help="a GTD order's last trading day (makes the order GTD)")
        o.add_argument("--disclosed-qty", type=int, default=None, metavar="Q",
                       help="an iceberg: only Q shows in the depth (a lot multiple, at least 10 %% of the quantity)")
        o.add_argument("--stop-price", default=None, metavar="P",
                       help="a stop-loss order: it waits outside the book until a trade prints at or above P (buy) "
                            "or at or below P (sell), then enters as the limit order (with a price) or market order")
    o = osub.add_parser("cancel", help="cancel OID", formatter_class=raw, epilog=ORDER_EXIT_STATUS)
    o.add_argument("oid", metavar="OID")
    o.add_argument("--symbol", default=None, help="the order's symbol (default: found among your open orders)")
    o = osub.add_parser("replace", help="replace OID [--price P] [--qty Q] [--stop-price S] (qty: the new total)",
                        formatter_class=raw, epilog=ORDER_EXIT_STATUS)
    o.add_argument("oid", metavar="OID")
    o.add_argument("--symbol", default=None, help="the order's symbol (default: found among your open orders)")
    o.add_argument("--price", default=None)
    o.add_argument("--qty", type=int, default=None)
    o.add_argument("--stop-price", default=None, metavar="S", help="a stop order still waiting: its new trigger")
    for o in osub.choices.values():
        o.add_argument("--broker", required=True, help="your broker id")
        o.add_argument("--key", default=None, metavar="FILE", help="your secret key file (default: the demo key "
                       "the topology ships for the broker, if any)")
        o.add_argument("--topology", default=_default_topology(), metavar="FILE")
        o.add_argument("--json", action="store_true", help="one JSON object per execution report")
    p.set_defaults(func=_cmd_order)

    p = sub.add_parser("admin", help="an operator's market control: halt, resume, disable, enable",
                       description="Log on as an operator and halt or resume a symbol or the whole market, or "
                                   "disable a broker (the kill switch: its open orders are cancelled, its new orders "
                                   "refused) or enable it again. Exit status as exfab order's (below).",
                       formatter_class=raw, epilog=ORDER_EXIT_STATUS)
    asub = p.add_subparsers(dest="action", metavar="ACTION")
    asub.required = True
    for action, target, text in (("halt", "SYMBOL", "halt SYMBOL, or (none) the whole market"),
                                 ("resume", "SYMBOL", "resume SYMBOL, or (none) the whole market"),
                                 ("disable", "BROKER", "disable BROKER and cancel its open orders (the kill switch)"),
                                 ("enable", "BROKER", "let a disabled BROKER trade again")):
        a = asub.add_parser(action, help=text, formatter_class=raw, epilog=ORDER_EXIT_STATUS)
        a.add_argument("target", nargs="?" if target == "SYMBOL" else None, default=None, metavar=target)
        if action == "halt":
            a.add_argument("--for", dest="for_s", default=None, metavar="SECONDS",
                           help="the halt ends by itself after this long")
        a.add_argument("--as", dest="as_", default=None, metavar="OPERATOR",
                       help='the operator to log on as (default: the first broker of role "operator")')
        a.add_argument("--key", default=None, metavar="FILE", help="the operator's secret key file (default: the "
                       "demo key the topology ships for the operator, if any)")
        a.add_argument("--text", default=None, help="why, for the record (in the trading_state message)")
        a.add_argument("--topology", default=_default_topology(), metavar="FILE")
        a.add_argument("--json", action="store_true", help="print the admin_ack as one JSON object")
    p.set_defaults(func=_cmd_admin)

    p = sub.add_parser("perf", help="latency and throughput of the exchange against the pyzmq floor",
                       description="Drive the exchange open loop at a rate (or a sweep), measure the same against "
                                   "the plain pyzmq floor, and write a report. Options: exfab perf --help.",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_perf)

    p = sub.add_parser("orders", help="list a broker's open orders",
                       description="List a broker's open orders. Exit status 0; 1 when the exchange refuses the "
                                   "broker's logon, 2 for a usage error, 3 when the exchange cannot be reached.")
    p.add_argument("--broker", required=True)
    p.add_argument("--key", default=None, metavar="FILE", help="your secret key file (default: the demo key the "
                   "topology ships for the broker, if any)")
    p.add_argument("--symbol", default=None)
    p.add_argument("--topology", default=_default_topology(), metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_orders)

    store_exit = ("Exit status 0; 1 when there is no such order; 2 for a usage error; 3 when the store cannot be "
                  "read.")
    p = sub.add_parser("trades", help="the trades of a day, from the order store",
                       description="Print the trades the persistence node stored for a trading day (default today, "
                                   "in the exchange's time zone), in the order they were made. " + store_exit)
    p.add_argument("--symbol", default=None, metavar="S", help="one symbol (default: every symbol)")
    p.add_argument("--date", default=None, metavar="YYYY-MM-DD", help="the trading day (default: today)")
    p.add_argument("--topology", default=_default_topology(), metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object a trade")
    p.set_defaults(func=_cmd_trades)

    p = sub.add_parser("order-status", help="an order's state and life, from the stores",
                       description="Print a broker's order as the stores hold it: its state, filled quantity and "
                                   "average price, and every execution report of its life. " + store_exit)
    p.add_argument("oid", help="the broker's client order id")
    p.add_argument("--broker", required=True)
    p.add_argument("--date", default=None, metavar="YYYY-MM-DD", help="the trading day (default: the latest with "
                                                                      "this id)")
    p.add_argument("--topology", default=_default_topology(), metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_order_status)

    p = sub.add_parser("store", help="work with the order store")
    ssub = p.add_subparsers(dest="store_command", metavar="SUBCOMMAND")
    ssub.required = True
    s = ssub.add_parser("init", help="create the order store's tables (a Cassandra keyspace and tables, or the "
                                     "SQLite file)",
                        description="Create the order store the topology names: for Cassandra its keyspace and "
                                    "tables (CREATE ... IF NOT EXISTS), for SQLite the file and tables. Safe to run "
                                    "again. Exit status 0; 2 for a usage error; 3 when the store cannot be reached.")
    s.add_argument("--topology", default=_default_topology(), metavar="FILE")
    s.add_argument("--replication", default=None, metavar="CQL",
                   help="Cassandra's replication map for a new keyspace (default "
                        "\"{'class': 'SimpleStrategy', 'replication_factor': 1}\")")
    s.set_defaults(func=_cmd_store_init)

    p = sub.add_parser("status", help="the nodes and each shard's primary, from ZooKeeper",
                       description="Print each shard's primary, epoch and secondary (in sync, lag) and every node's "
                                   "registry entry (kind, name, host, pid, state, details), as ZooKeeper holds them. "
                                   "Without [zookeeper] in the topology: whether each node's ports accept a "
                                   "connection. Exit status 0; 2 for a usage error; 3 when ZooKeeper cannot be "
                                   "reached.")
    p.add_argument("--topology", default=_default_topology(), metavar="FILE",
                   help=f"topology file (default {DEFAULT_TOPOLOGY})")
    p.add_argument("--json", action="store_true", help="one JSON object: topology, zookeeper, shards, nodes")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="give up after S seconds without an answer from ZooKeeper (default 5)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("watch", help="the ticker's quotes as a live table",
                       description="Follow the ticker's market data feed (a snapshot, then every update) and show "
                                   "each symbol's last price, change, best bid and ask, volume, VWAP, high, low and "
                                   "trades; Ctrl-C ends it. Exit status 2 for an unknown symbol, or with --once when "
                                   "the ticker does not answer.")
    p.add_argument("symbols", nargs="*", metavar="SYMBOL", help="the symbols to show (default: every symbol)")
    p.add_argument("--topology", default=_default_topology(), metavar="FILE",
                   help=f"topology file (default {DEFAULT_TOPOLOGY})")
    p.add_argument("--once", action="store_true", help="print the table once, after the snapshot, and exit")
    p.add_argument("--json", action="store_true", help="quotes as JSON objects, one a line (with --once: the current "
                                                       "ones; without: every update until Ctrl-C)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="with --once: give up after S seconds without the ticker's snapshot (default 5)")
    p.set_defaults(func=_cmd_watch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``exfab`` with ``argv`` (default: the process arguments); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["perf"]:  # its options are the harness's own (exfab perf --help)
        return _perf(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `exfab replay big.jsonl | head` is fine; do not print a traceback.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
