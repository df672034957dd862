"""Where an exchange keeps its coordination in ZooKeeper, and a client to reach it.

Under the topology's ``[zookeeper] root`` (default ``/exfab/<name>``)::

    nodes/<kind>-<name>          ephemeral: a running node (JSON: kind, name, host, pid, state, ...)
    shards/<shard>/election      the election of the shard's primary (kazoo's Lock recipe)
    shards/<shard>/epoch         persistent: the last epoch, raised by each new primary (JSON: epoch, primary, from_seq)
    shards/<shard>/primary       ephemeral: the primary (JSON: name, epoch, from_seq, pub_from, its endpoints)
    shards/<shard>/secondary     ephemeral: the secondary as its primary sees it (JSON: name, in_sync, lag, ...)
    shards/<shard>/insync        persistent: the secondary that holds every record (JSON: name, epoch, seq)
    shards/<shard>/reigns/<E>    persistent: epoch E's primary and first sequence number (JSON)
    shards/<shard>/clean/<name>  persistent: the last epoch whose records <name>'s journal holds as agreed

Every node of a topology with ``[zookeeper]`` registers itself; the primary resolver
(``topology/primary.py``) and ``exfab status`` read the rest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from topology.model import Topology

log = logging.getLogger("exfab.zk")

SESSION_TIMEOUT_S = 4.0  # a node cut off this long loses its session: its ephemeral znodes go, another takes over
# A matcher's own session, shorter: it bounds the fail-over (a killed primary's lock goes when its session ends).
# ZooKeeper grants at least 2 ticks (Debian's default tick is 2 s: the ensemble's tickTime must be 500 ms or less).
MATCHER_SESSION_TIMEOUT_S = 1.5


@dataclass(frozen=True, slots=True)
class ZkPaths:
    """The znodes of one exchange (see the module's text)."""

    root: str

    @property
    def nodes(self) -> str:
        return f"{self.root}/nodes"

    def node(self, kind: str, name: str) -> str:
        return f"{self.root}/nodes/{kind}-{name}"

    def shard(self, shard: str) -> str:
        return f"{self.root}/shards/{shard}"

    def election(self, shard: str) -> str:
        return f"{self.root}/shards/{shard}/election"

    def epoch(self, shard: str) -> str:
        return f"{self.root}/shards/{shard}/epoch"

    def primary(self, shard: str) -> str:
        return f"{self.root}/shards/{shard}/primary"

    def secondary(self, shard: str) -> str:
        return f"{self.root}/shards/{shard}/secondary"


def paths(topo: Topology) -> ZkPaths:
    """Return the znodes of a topology that has ``[zookeeper]``."""
    if topo.zookeeper is None:
        raise ValueError("the topology has no [zookeeper] table")
    return ZkPaths(topo.zookeeper.root)


def connect(topo: Topology, *, timeout: float = 10.0, read_only: bool = False,
            session_timeout: float = SESSION_TIMEOUT_S) -> Any:
    """Return a started kazoo client of the topology's ensemble (raises kazoo's timeout when none answers).

    kazoo retries a lost connection by itself; ``SESSION_TIMEOUT_S`` is how long the ensemble waits before it
    ends the session (and deletes its ephemeral znodes).
    """
    zk = client(topo, read_only=read_only, session_timeout=session_timeout)
    zk.start(timeout=timeout)
    return zk


def client(topo: Topology, *, read_only: bool = False, session_timeout: float = SESSION_TIMEOUT_S) -> Any:
    """Return a kazoo client of the topology's ensemble, not started: ``start_async()`` connects in the background.

    The same client :func:`connect` starts, for a caller that must not wait for the ensemble (the registry).
    """
    from kazoo.client import KazooClient

    if topo.zookeeper is None:
        raise ValueError("the topology has no [zookeeper] table")
    return KazooClient(hosts=topo.zookeeper.connect_string, timeout=session_timeout, read_only=read_only,
                       connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0})


def dump(obj: dict[str, Any]) -> bytes:
    """Return a znode's JSON data."""
    return json.dumps(obj, separators=(",", ":")).encode()


def load(data: bytes | None) -> dict[str, Any] | None:
    """Return a znode's JSON data (None for none, or for data that is not a JSON object)."""
    if not data:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


__all__ = ["MATCHER_SESSION_TIMEOUT_S", "SESSION_TIMEOUT_S", "ZkPaths", "client", "connect", "dump", "load", "paths"]
