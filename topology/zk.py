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
    no_exit_join(zk)
    return zk


def no_exit_join(zk: Any) -> None:
    """Take back the exit hook kazoo's ``start`` registers for a started client.

    At exit, kazoo joins its threads; with the ensemble gone, a watch's read waits for a server that never
    answers and the process never ends (a node ignoring SIGTERM). Its threads are daemons: a node stops its
    clients with :func:`stop`, and whatever is left ends with the process.
    """
    import atexit

    atexit.unregister(zk.handler.stop)


def client(topo: Topology, *, read_only: bool = False, session_timeout: float = SESSION_TIMEOUT_S) -> Any:
    """Return a kazoo client of the topology's ensemble, not started: ``start_async()`` connects in the background.

    The same client :func:`connect` starts, for a caller that must not wait for the ensemble (the registry).
    """
    from kazoo.client import KazooClient

    if topo.zookeeper is None:
        raise ValueError("the topology has no [zookeeper] table")
    # The connection is retried for ever; a command (and a watch's read) a few times over about 4 s, then it
    # raises: with the ensemble gone, a read retried for ever would hold its thread, and kazoo's stop() joins it.
    return KazooClient(hosts=topo.zookeeper.connect_string, timeout=session_timeout, read_only=read_only,
                       connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0},
                       command_retry={"max_tries": 6, "delay": 0.1, "max_delay": 1.0})


STOP_TIMEOUT_S = 2.0  # a node stopping waits this long for its ZooKeeper client to stop


def stop(zk: Any, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop and close a kazoo client, waiting at most ``timeout`` seconds; return whether it stopped.

    With the ensemble gone, kazoo's ``stop`` can wait for ever: a watch's callback retries its read until a
    server answers, and ``stop`` joins the thread running it. A node that is stopping must not hang on that,
    so the stop runs on a thread of its own; kazoo's threads are daemons and end with the process.
    """
    import threading

    no_exit_join(zk)  # (a stop left waiting here must not hold the process at exit either)

    def run() -> None:
        try:
            zk.stop()
            zk.close()
        except Exception as e:  # (stopping a client whose connection is gone)
            log.debug("ZooKeeper client stop: %s", e)

    t = threading.Thread(target=run, name="zk-stop", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        log.warning("ZooKeeper client did not stop within %g s (the ensemble is unreachable): leaving it", timeout)
        return False
    return True


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


__all__ = ["MATCHER_SESSION_TIMEOUT_S", "SESSION_TIMEOUT_S", "ZkPaths", "client", "connect", "dump", "load",
           "no_exit_join", "paths", "stop"]
