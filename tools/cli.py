"""``exfab``: the exchange's command line.

Each subcommand is a thin layer over a module that does the work, so that what
the command line can do, a program can do too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_replay(args: argparse.Namespace) -> int:
    from tools import replay

    return replay.run(args.file, book=args.book, summary=args.summary)


def _cmd_topology_check(args: argparse.Namespace) -> int:
    from tools import topology_cmd

    return topology_cmd.check_command(args.file)


def _cmd_journal_inspect(args: argparse.Namespace) -> int:
    from tools import journal_cmd

    return journal_cmd.inspect(args.file, commands=args.commands)


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
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("topology", help="work with topology files")
    tsub = p.add_subparsers(dest="topology_command", metavar="ACTION")
    tsub.required = True
    t = tsub.add_parser("check", help="explain every mistake in a topology file",
                        description="Check a topology file and print every problem, or a one-line summary.")
    t.add_argument("file", metavar="FILE", help="topology TOML file")
    t.set_defaults(func=_cmd_topology_check)

    p = sub.add_parser("journal", help="work with a matcher's journal")
    jsub = p.add_subparsers(dest="journal_command", metavar="ACTION")
    jsub.required = True
    j = jsub.add_parser("inspect", help="print a journal as replay events (or its commands)",
                        description="Run a journal's commands through a fresh engine and print the events as "
                                    "exfab replay does, each with the seq of its input record. The file is only read.")
    j.add_argument("file", metavar="FILE", help="journal file")
    j.add_argument("--commands", action="store_true", help="print the journaled commands instead of events")
    j.set_defaults(func=_cmd_journal_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``exfab`` with ``argv`` (default: the process arguments); return the exit status."""
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
