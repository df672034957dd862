"""``exfab status``: the exchange's nodes and each shard's primary, as ZooKeeper knows them.

With ``[zookeeper]`` in the topology it reads, under the topology's root
(``topology/zk.py``), every node's registry entry (``nodes/<kind>-<name>``: kind,
name, host, pid, state and the node's details) and, per shard, the
``primary`` (name, epoch, from_seq), ``epoch`` and ``secondary`` (name, in_sync,
lag) znodes, and prints a table of the shards and one of the nodes; a node
of the topology that has no entry is listed as ``not registered``, and a
shard of a single matcher with no ``primary`` znode shows that matcher as
``(single)``.  It connects
read-only, so a ZooKeeper server cut off from its ensemble's majority still
answers what it last knew.

Without ``[zookeeper]`` there is no registry: it says so and shows what the
topology and the network can tell, whether each node's ports accept a TCP
connection (``listening``, ``not listening``; ``unknown`` for a node with no
port, the persistence node).  A single matcher is its shard's primary.

``--json`` prints one JSON object instead::

    {"topology": "local", "zookeeper": {"hosts": [...], "root": "/exfab/local"} or null,
     "shards": {"A": {"symbols": [...], "matchers": [...], "paired": false,
                      "primary": {...} or null, "epoch": 3 or null, "secondary": {...} or null}},
     "nodes": [{"kind": "persistence", "name": "persistence", "host": "127.0.0.1", "pid": 4242,
                "state": "running", ...}]}

Exit status: 0; 2 for a usage error (an unreadable topology); 3 when
ZooKeeper cannot be reached.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from topology.load import TopologyError, load
from topology.model import Topology
from topology.registry import registered
from topology.zk import connect, paths
from topology.zk import load as load_znode
from topology.zk import stop as zk_stop

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

NOT_REGISTERED = "not registered"
PROBE_TIMEOUT_S = 1.0
_OWN_KEYS = ("kind", "name", "host", "pid", "state", "started", "session")  # the rest of an entry are its details


def read(topo: Topology, zk: Any, timeout: float = 5.0) -> dict[str, Any]:
    """Return the status of a topology with ``[zookeeper]`` from its ensemble (``zk``: a started kazoo client).

    Each read waits ``timeout`` s at most (then kazoo's timeout error is raised).
    """
    assert topo.zookeeper is not None
    shards = {s.name: {"symbols": list(s.symbols), "matchers": [r.name for r in s.replicas], "paired": s.paired,
                       **_shard(zk, topo, s.name, timeout)} for s in topo.shards}
    entries: dict[tuple[Any, Any], dict[str, Any] | None] = {(n.get("kind"), n.get("name")): n
                                                              for n in registered(zk, topo, timeout)}
    absent = {"pid": None, "state": NOT_REGISTERED}
    nodes = [entries.pop((n.kind, n.name), None) or {"kind": n.kind, "name": n.name, "host": n.host, **absent}
             for n in topo.nodes()]
    nodes += [n for n in entries.values() if n is not None]  # registered, and not in this topology (another version)
    return {"topology": topo.name, "zookeeper": {"hosts": list(topo.zookeeper.hosts), "root": topo.zookeeper.root},
            "shards": shards, "nodes": nodes}


def _shard(zk: Any, topo: Topology, shard: str, timeout: float) -> dict[str, Any]:
    where = paths(topo)
    raw = _get(zk, where.epoch(shard), timeout)
    epoch: int | None = None
    if raw:
        try:  # the election's JSON ({"epoch": 3, "primary": ...}), or a bare number
            obj = json.loads(raw)
            epoch = int(obj["epoch"] if isinstance(obj, dict) else obj)
        except (ValueError, KeyError, TypeError):
            epoch = None
    return {"primary": load_znode(_get(zk, where.primary(shard), timeout)), "epoch": epoch,
            "secondary": load_znode(_get(zk, where.secondary(shard), timeout))}


def _get(zk: Any, path: str, timeout: float) -> bytes | None:
    from kazoo.exceptions import NoNodeError

    try:
        return bytes(zk.get_async(path).get(timeout=timeout)[0])
    except NoNodeError:
        return None


def probe(topo: Topology, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Return the status of a topology without ``[zookeeper]``: whether each node's ports accept a connection."""
    ports = topo.all_ports()
    with ThreadPoolExecutor(16) as pool:
        open_ = list(pool.map(lambda p: _accepts(p.host, p.port, timeout), ports))
    nodes = []
    for n in topo.nodes():
        mine = [(p.role, p.port, ok) for p, ok in zip(ports, open_, strict=True) if p.node == n]
        if not mine:
            state = "unknown"
        elif all(ok for *_, ok in mine):
            state = "listening"
        elif any(ok for *_, ok in mine):
            state = "partly listening"
        else:
            state = "not listening"
        nodes.append({"kind": n.kind, "name": n.name, "host": n.host, "pid": None, "state": state,
                      "ports": {role: {"port": port, "listening": ok} for role, port, ok in mine}})
    shards = {s.name: {"symbols": list(s.symbols), "matchers": [r.name for r in s.replicas], "paired": s.paired,
                       "primary": None if s.paired else {"name": s.replicas[0].name}, "epoch": None,
                       "secondary": None} for s in topo.shards}
    return {"topology": topo.name, "zookeeper": None, "shards": shards, "nodes": nodes}


def _accepts(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def status(topology: str, *, as_json: bool = False, timeout: float = 5.0, out: IO[str] | None = None,
           err: IO[str] | None = None) -> int:
    """Run ``exfab status``; return the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        topo = load(topology)
    except (OSError, TopologyError) as e:
        err.write(f"exfab: {e}\n")
        return EXIT_USAGE
    if topo.zookeeper is None:
        if not as_json:
            err.write(f"exfab: topology {topo.name} has no [zookeeper]: its nodes do not register, so this shows "
                      "only whether each node's ports accept a connection\n")
        view = probe(topo)
    else:
        from kazoo.exceptions import KazooException
        from kazoo.handlers.threading import KazooTimeoutError

        logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # its retries are no news here: the outcome is
        hosts = topo.zookeeper.connect_string
        try:
            zk = connect(topo, timeout=timeout, read_only=True)
        except (KazooException, KazooTimeoutError):
            err.write(f"exfab: ZooKeeper at {hosts} did not answer within {timeout:g} s\n")
            return EXIT_UNREACHABLE
        try:
            view = read(topo, zk, timeout)
        except (KazooException, KazooTimeoutError) as e:
            err.write(f"exfab: ZooKeeper at {hosts} stopped answering: {type(e).__name__} {e}\n")
            return EXIT_UNREACHABLE
        finally:
            zk_stop(zk)
    if as_json:
        out.write(json.dumps(view) + "\n")
    else:
        _print(view, out)
    return EXIT_OK


def _print(view: dict[str, Any], out: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=None if out.isatty() else 160)
    zk = view["zookeeper"]
    where = f"ZooKeeper {','.join(zk['hosts'])}, {zk['root']}" if zk else "no ZooKeeper"
    t = Table(title=f"shards of {view['topology']} ({where})", title_justify="left")
    for col, just in (("shard", "left"), ("matchers", "left"), ("primary", "left"), ("epoch", "right"),
                      ("from seq", "right"), ("secondary", "left"), ("in sync", "left"), ("lag", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for name, s in view["shards"].items():
        p, sec = s["primary"] or {}, s["secondary"] or {}
        in_sync = "-" if not sec else ("yes" if sec.get("in_sync") else "no")
        primary = p.get("name", "-" if s["paired"] else f"{s['matchers'][0]} (single)")
        t.add_row(name, " ".join(s["matchers"]) + (" (pair)" if s["paired"] else ""), str(primary),
                  _text(s["epoch"]), _text(p.get("from_seq")), str(sec.get("name", "-")), in_sync,
                  _text(sec.get("lag")))
    console.print(t)
    t = Table(title="nodes", title_justify="left")
    for col, just in (("kind", "left"), ("name", "left"), ("host", "left"), ("pid", "right"), ("state", "left"),
                      ("up", "right"), ("details", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    now = time.time()
    for n in view["nodes"]:
        started = n.get("started")
        up = _age(now - started) if isinstance(started, int | float) else "-"
        if "ports" in n:
            details = ", ".join(f"{role} {p['port']}{'' if p['listening'] else ' (closed)'}"
                                for role, p in n["ports"].items())
        else:
            details = ", ".join(f"{k}={_text(v)}" for k, v in n.items() if k not in _OWN_KEYS)
        t.add_row(str(n.get("kind", "?")), str(n.get("name", "?")), str(n.get("host", "-")), str(n.get("pid") or "-"),
                  str(n.get("state", "-")), up, details)
    console.print(t)


def _text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return v if isinstance(v, str) else json.dumps(v)


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"
