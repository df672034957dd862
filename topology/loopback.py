"""A topology of several hosts, made to run on this machine: every host on a loopback address of its own.

``exfab up --loopback topology/examples/cluster.toml`` runs the nodes of three
hosts on one machine.  Linux answers on every address of 127.0.0.0/8, so each
host of the file gets one (127.0.0.1, 127.0.0.2, 127.0.0.3 ... in the order the
file first names them; a host that is a loopback address already keeps it),
and every node keeps its ports: two matchers of a pair on the same ports, on
two addresses, as on two machines.  :func:`map_topology` makes the copy:

- every node's ``host``, the ``[zookeeper] hosts``, the host of ``[redis] url``
  and ``[influxdb] url`` and the ``[cassandra] hosts`` are mapped alike, so the
  servers a topology names on a host are on that host's address;
- an absolute ``data_dir`` (``/var/lib/exfab/cluster``, which a user of this
  machine may not write) becomes ``.exfab/<name>``, under the working directory;
- a store whose server this machine cannot run, and which nothing answers for at
  its mapped address, falls back to its embedded kind: Cassandra (no server can
  be installed here) to SQLite, InfluxDB without ``influxd`` to SQLite, Redis
  without ``redis-server`` to the persistence node's memory.  The launcher runs
  the others (``topology/launcher.py``);
- the file is written anew (comments are not kept; its header says what was
  mapped), and never over the original: :meth:`LoopbackCopy.write` puts it in the
  data folder, ``<data_dir>/<stem>.loopback.toml``.

:func:`foreign_hosts` tells which hosts of a topology's nodes are not this
machine's, so that ``exfab up`` can refuse a file it cannot run as written.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from topology.load import loads
from topology.model import Topology
from topology.servers import (
    INFLUXD,
    REDIS_PORT,
    REDIS_SERVER,
    is_loopback,
    redis_answers,
    split_host_port,
)

CASSANDRA_PORT = 9042  # the port of [cassandra] when the file names none
INFLUXDB_PORT = 8086  # the port of an http:// [influxdb] url that names none

# A store kind whose server cannot be had here, and the embedded kind it becomes.
FALLBACK = {"recent": ("redis", "embedded"), "orders": ("cassandra", "sqlite"), "history": ("influxdb", "sqlite")}

#: ``can_run(server, table)``: why the server a (mapped) table names cannot be had on this machine, or None when
#: it can (it answers there, or the launcher runs it).
CanRun = Callable[[str, dict[str, Any]], str | None]


@dataclass(frozen=True, slots=True)
class Fallback:
    """A store moved to its embedded kind, and why."""

    store: str
    was: str
    now: str
    why: str


@dataclass(frozen=True, slots=True)
class LoopbackCopy:
    """A topology mapped onto this machine's loopback addresses (see the module's text).

    Attributes
    ----------
    source
        The file it was made from.
    text
        The copy, as TOML.
    topology
        The copy, read and checked.
    hosts
        Each host of the file that was not a loopback address, and its address now, in order of first appearance.
    data_dir
        ``(was, now)`` when the data folder moved, else ``None``.
    fallbacks
        The stores moved to their embedded kind.
    """

    source: Path
    text: str
    topology: Topology
    hosts: dict[str, str]
    data_dir: tuple[str, str] | None
    fallbacks: tuple[Fallback, ...]

    @property
    def path(self) -> Path:
        """Where :meth:`write` puts the copy, relative to the working directory: ``<data_dir>/<stem>.loopback.toml``."""
        return self.topology.data_dir / f"{self.source.stem}.loopback.toml"

    def write(self, workdir: str | Path = ".") -> Path:
        """Write the copy to :attr:`path` under ``workdir`` (the folders made as needed); return its path.

        Its name (``<stem>.loopback.toml``) is never the original's.
        """
        dst = Path(workdir) / self.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(self.text, encoding="utf-8")
        return dst

    def notes(self) -> list[str]:
        """What the mapping changed, one line each, for a person to read."""
        out = []
        if self.hosts:
            out.append("hosts: " + ", ".join(f"{h} -> {a}" for h, a in self.hosts.items()))
        else:
            out.append("hosts: every host is a loopback address already; none mapped")
        if self.data_dir is not None:
            was, now = self.data_dir
            out.append(f"data_dir: {was} -> {now} (relative: under the working directory)")
        for f in self.fallbacks:
            where = (f" ({self.topology.sqlite_path(f.store)})" if f.now == "sqlite"
                     else " (the persistence node's memory)")
            out.append(f'[stores] {f.store} = "{f.was}" -> "{f.now}"{where}: {f.why}')
        return out


def map_topology(source: str | Path, *, can_run: CanRun | None = None) -> LoopbackCopy:
    """Map the topology file ``source`` onto this machine's loopback addresses (see the module's text).

    Parameters
    ----------
    source
        The topology file; it is read, never written.
    can_run
        Says whether a store's server can be had here (default :func:`server_here`, which asks the network and
        looks for the programs).

    Raises
    ------
    topology.load.TopologyError
        When the file, or the copy, is not a usable topology.
    """
    src = Path(source)
    original = loads(src.read_text(encoding="utf-8"), src)  # the original's own mistakes, reported against it
    data = tomllib.loads(src.read_text(encoding="utf-8"))
    found: list[str] = []

    def note(host: str) -> str:
        found.append(host)
        return host

    _visit_hosts(data, note)
    hosts = assign(found)
    out = copy.deepcopy(data)
    _visit_hosts(out, lambda h: hosts.get(h, h))
    exchange = out.setdefault("exchange", {})
    moved = None
    data_dir = exchange.get("data_dir")
    if isinstance(data_dir, str) and Path(data_dir).is_absolute():
        now = f".exfab/{exchange.get('name', 'exchange')}"
        exchange["data_dir"] = now
        moved = (data_dir, now)
    fallbacks = []
    stores = out.get("stores", {})
    for store, (server, embedded) in FALLBACK.items():
        if stores.get(store) != server:
            continue
        why = (can_run or server_here)(server, out.get(server, {}))
        if why is not None:
            stores[store] = embedded
            out.pop(server, None)
            fallbacks.append(Fallback(store, server, embedded, why))
    keys_note = _keys_here(original, out)
    header = [f"# {src.name} mapped onto this machine by exfab up --loopback (topology/loopback.py): every host on",
              "# a loopback address of its own, the same ports. Written anew at every such start; do not edit.",
              f"# From {src.resolve()}."]
    mapped = {h: a for h, a in hosts.items() if h != a}
    header += [f"# {h} -> {a}" for h, a in mapped.items()]
    if moved is not None:
        header.append(f"# data_dir {moved[0]} -> {moved[1]}")
    header += [f'# [stores] {f.store} = "{f.was}" -> "{f.now}": {f.why}' for f in fallbacks]
    header += [f"# {keys_note}"] if keys_note else []
    text = "\n".join(header) + "\n\n" + dumps(out)
    topo = loads(text, src.with_name(f"{src.stem}.loopback.toml"))
    return LoopbackCopy(src, text, topo, mapped, moved, tuple(fallbacks))


def _keys_here(original: Topology, out: dict[str, Any]) -> str | None:
    # The copy is written elsewhere: its keys_dir names the original's folder. Without every node's secret key
    # there (an example's placeholder keys), the copy runs open, as a loopback topology may (docs/security.md).
    sec = original.security
    if sec is None:
        return None
    missing = [n.label for n in original.nodes() if not sec.secret_file(n.label).is_file()]
    if not missing:
        out["security"]["keys_dir"] = str(sec.keys_dir.resolve())
        return None
    out.pop("security")
    for b in out.get("brokers", []):
        b.pop("public_key", None)
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    return f"[security] dropped: no secret key of {missing[0]}{more} in {sec.keys_dir}: every socket open (loopback)"


def assign(hosts: Iterable[str]) -> dict[str, str]:
    """Give each distinct host a loopback address, in order: a loopback address keeps its own, the others take
    127.0.0.1, 127.0.0.2 ... (those not already taken)."""
    distinct = list(dict.fromkeys(hosts))
    taken = {"127.0.0.1" if h == "localhost" else h for h in distinct if is_loopback(h)}
    free = (a for n in range(1, 255) if (a := f"127.0.0.{n}") not in taken)
    out: dict[str, str] = {}
    for h in distinct:
        if is_loopback(h):
            out[h] = h
            continue
        addr = next(free, None)
        if addr is None:
            raise ValueError("more hosts than 127.0.0.1 - 127.0.0.254 can hold")
        out[h] = addr
    return out


def _visit_hosts(data: dict[str, Any], fn: Callable[[str], str]) -> None:
    # Every place a topology names a host, in the file's order: each one replaced by fn(host).
    def node(tbl: Any) -> None:
        if isinstance(tbl, dict) and isinstance(tbl.get("host"), str):
            tbl["host"] = fn(tbl["host"])

    for key, value in data.items():
        if key == "shards" and isinstance(value, list):
            for shard in value:
                node(shard)
                for rep in shard.get("replicas", []) if isinstance(shard, dict) else []:
                    node(rep)
        elif key in ("gateways", "tickers") and isinstance(value, list):
            for tbl in value:
                node(tbl)
        elif key in ("ticker", "persistence"):
            node(value)
        elif key == "zookeeper" and isinstance(value, dict) and isinstance(value.get("hosts"), list):
            value["hosts"] = [_map_host_port(h, fn) if isinstance(h, str) else h for h in value["hosts"]]
        elif key == "cassandra" and isinstance(value, dict) and isinstance(value.get("hosts"), list):
            value["hosts"] = [fn(h) if isinstance(h, str) else h for h in value["hosts"]]
        elif key in ("redis", "influxdb") and isinstance(value, dict) and isinstance(value.get("url"), str):
            value["url"] = _map_url(value["url"], fn)


def _map_host_port(text: str, fn: Callable[[str], str]) -> str:
    host, port = split_host_port(text, 0)
    new = fn(host)
    shown = f"[{new}]" if ":" in new else new
    return f"{shown}:{port}" if port else shown


def _map_url(url: str, fn: Callable[[str], str]) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    new = fn(parts.hostname)
    userinfo = parts.netloc.rpartition("@")[0]
    port = f":{parts.port}" if parts.port is not None else ""
    netloc = (f"{userinfo}@" if userinfo else "") + (f"[{new}]" if ":" in new else new) + port
    return urlunsplit(parts._replace(netloc=netloc))


# ----------------------------------------------------------------------------------------------------------------------
# What this machine can run


def server_here(server: str, table: dict[str, Any]) -> str | None:
    """Return why the server of a mapped ``[redis]``, ``[cassandra]`` or ``[influxdb]`` table cannot be had on this
    machine, or ``None`` when it can: something answers at its address, or the launcher can run it there
    (``redis-server``, ``influxd`` installed; Cassandra never)."""
    if server == "redis":
        url = str(table.get("url", ""))
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or REDIS_PORT
        if host and redis_answers(host, port):
            return None
        if parts.scheme != "redis" or parts.username or parts.password:
            return f"nothing answers at {url}, and exfab up runs only a plain redis:// one"
        if shutil.which(REDIS_SERVER) is None:
            return f"{REDIS_SERVER} is not installed and nothing answers at {url}"
        return None
    if server == "influxdb":
        url = str(table.get("url", "")).rstrip("/")
        if _influxdb_answers(url):
            return None
        if urlsplit(url).scheme != "http":
            return f"nothing answers at {url}, and exfab up runs only a plain http:// one"
        if shutil.which(INFLUXD) is None:
            return f"{INFLUXD} (InfluxDB 1.x) is not installed and nothing answers at {url}"
        return None
    if server == "cassandra":
        port = int(table.get("port", CASSANDRA_PORT))
        at = [f"{h}:{port}" for h in table.get("hosts", [])]
        if any(_accepts(h, port) for h in table.get("hosts", [])):
            return None
        return f"no Cassandra answers at {', '.join(at)}, and exfab up runs none"
    raise ValueError(f"unknown server {server!r}")


def _accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _influxdb_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=1.0) as r:
            return bool(r.status == 204)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def is_this_machine(host: str) -> bool:
    """Whether ``host`` is this machine: a loopback address, or a name or address this machine can bind."""
    if is_loopback(host):
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((sockaddr[0], 0))
        except OSError:
            return False
    return bool(infos)


def foreign_hosts(topo: Topology) -> list[str]:
    """Return the hosts of the topology's nodes that are not this machine's, in order of first appearance."""
    return [h for h in topo.hosts() if not is_this_machine(h)]


# ----------------------------------------------------------------------------------------------------------------------
# Writing TOML (what a topology file holds: tables, arrays of tables, strings, numbers, booleans, arrays)

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def dumps(data: dict[str, Any]) -> str:
    """Return ``data`` (as :mod:`tomllib` reads a document) as TOML text that reads back to the same."""
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def _is_tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _table(tbl: dict[str, Any], path: list[str], lines: list[str]) -> None:
    for k, v in tbl.items():
        if not isinstance(v, dict) and not _is_tables(v):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in tbl.items():
        name = ".".join(_key(p) for p in [*path, k])
        if isinstance(v, dict):
            lines += ["", f"[{name}]"]
            _table(v, [*path, k], lines)
        elif _is_tables(v):
            for item in v:
                lines += ["", f"[[{name}]]"]
                _table(item, [*path, k], lines)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


__all__ = ["CASSANDRA_PORT", "FALLBACK", "INFLUXDB_PORT", "CanRun", "Fallback", "LoopbackCopy", "assign", "dumps",
           "foreign_hosts", "is_this_machine", "map_topology", "server_here"]
