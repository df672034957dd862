"""``exfab keys new``: make a CURVE key pair for a broker or a node, and print the topology line for it.

The secret key file stays with its owner (the broker's client, or the node's ``keys_dir``); what is
printed on standard output is the public half, as the topology lists it (``docs/security.md``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import IO

from fabric.auth import new_key, write_key
from topology.model import BROKER_ROLES, NODE_KINDS

EXIT_OK = 0
EXIT_USAGE = 2

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def new_command(broker: str | None, node: str | None, folder: str | None, role: str, force: bool,
                out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run ``exfab keys new BROKER`` or ``exfab keys new --node KIND:NAME``; return the exit status."""
    if (broker is None) == (node is None):
        err.write("exfab keys new: error: give a broker id, or --node KIND:NAME, not both\n")
        return EXIT_USAGE
    if role not in BROKER_ROLES:
        err.write(f"exfab keys new: error: --role must be one of {', '.join(BROKER_ROLES)}\n")
        return EXIT_USAGE
    if node is not None:
        kind, _, name = node.partition(":")
        if kind not in NODE_KINDS or not _ID.match(name):
            err.write(f"exfab keys new: error: --node {node!r} is not a node label: write KIND:NAME with KIND one of "
                      f"{', '.join(NODE_KINDS)} (matcher:A, gateway:gw1, ticker:ticker, persistence:persistence)\n")
            return EXIT_USAGE
        stem, where = f"{kind}-{name}", Path(folder or "keys")
    else:
        assert broker is not None
        if not _ID.match(broker):
            err.write(f"exfab keys new: error: {broker!r} is not a broker id: 1 to 64 letters, digits, '-', '_', '.'\n")
            return EXIT_USAGE
        stem, where = f"broker-{broker}", Path(folder or ".")
    secret_file = where / f"{stem}.key_secret"
    if secret_file.exists() and not force:
        err.write(f"exfab keys new: error: {secret_file} exists: keep it, or give --force to replace it (the "
                  "topology must then list the new public key)\n")
        return EXIT_USAGE
    pair = new_key()
    what = f"node {node}" if node is not None else f"broker {broker}"
    write_key(where, stem, pair, note=f"the CURVE key pair of {what} (exfab keys new)")
    if node is not None:
        out.write(f"# add to [security.nodes]; the secret key file is {secret_file}, for that node's keys_dir\n")
        out.write(f"{json.dumps(node)} = {json.dumps(pair.public)}\n")
    else:
        out.write(f"# add to the topology; the secret key file {secret_file} is the broker's own (--key FILE)\n")
        out.write(f"[[brokers]]\nid = {json.dumps(broker)}\npublic_key = {json.dumps(pair.public)}\n")
        if role != "broker":
            out.write(f"role = {json.dumps(role)}\n")
    err.write(f"wrote {secret_file} (secret: keep it to its owner) and {where / (stem + '.key')}\n")
    return EXIT_OK
