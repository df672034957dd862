"""The node registry: each running node's entry in ZooKeeper, for ``exfab status`` and operators.

A node of a topology with ``[zookeeper]`` keeps an ephemeral znode at
``<root>/nodes/<kind>-<name>`` (``topology/zk.py``) while it runs, holding JSON::

    {"kind": "persistence", "name": "persistence", "host": "ex-c.internal", "pid": 4242,
     "state": "running", "started": 1765000000, ...its details}

``started`` is the process's start, in Unix seconds; the details are the
node's own (the persistence node's counters, say).  The znode goes when the
node's session does: at a clean stop at once, after a crash when the ensemble
ends the session (``topology.zk.SESSION_TIMEOUT_S``).  A node that loses its
session (cut off from the ensemble longer than that) registers again as soon as
it is connected; a node that starts while the znode of its previous run is still
there (killed less than a session ago) takes it over.  Without ``[zookeeper]`` a
:class:`Registration` does nothing, so a node calls it either way.

Nothing here blocks the node's loop: the connection, the first write and the
writes after a reconnection happen on kazoo's threads, and :meth:`Registration.update`
only sends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from topology.model import NODE_KINDS, Topology
from topology.zk import SESSION_TIMEOUT_S, client, dump, load, no_exit_join, paths
from topology.zk import stop as zk_stop

log = logging.getLogger("exfab.registry")

STARTING = "starting"
CLOSE_TIMEOUT_S = 2.0  # how long close() waits for ZooKeeper to delete the znode of a client it does not own


class Registration:
    """A node's ephemeral znode in the registry, kept while the node runs (see the module's text).

    Parameters
    ----------
    topo
        The topology; without ``[zookeeper]`` the registration does nothing.
    kind, name
        The node's kind and name in the topology.
    host
        Its host, as the topology names it.
    state
        Its state to begin with (``"starting"``; the persistence node says ``"catching_up"``).
    zk
        A started kazoo client of the node's to use (a matcher's, say); by default the registration makes one
        of its own (``topology.zk.client``) and connects it in the background.
    **details
        More of the node's data (JSON values).

    Attributes
    ----------
    path
        The znode, or ``None`` without ``[zookeeper]``.
    """

    def __init__(self, topo: Topology, kind: str, name: str, host: str, *, state: str = STARTING, zk: Any = None,
                 **details: Any) -> None:
        self.kind, self.name = kind, name
        self._data: dict[str, Any] = {"kind": kind, "name": name, "host": host, "pid": os.getpid(), "state": state,
                                      "started": int(time.time()), **details}
        self._lock = threading.Lock()  # the data
        self._ensure_lock = threading.Lock()  # one (re)registration at a time
        self._sent: bytes | None = None
        self._closed = False
        self._zk: Any = None
        self._own = zk is None
        self.path: str | None = None
        if topo.zookeeper is None:
            return
        self.path = paths(topo).node(kind, name)
        self._zk = client(topo) if zk is None else zk
        self._zk.add_listener(self._on_state)
        if self._own:
            self._zk.start_async()  # the listener registers once connected
            no_exit_join(self._zk)
        elif self._zk.connected:
            self._zk.handler.spawn(self._ensure)

    def __repr__(self) -> str:
        return f"Registration({self.path or self.kind + '-' + self.name}, state={self._data['state']!r})"

    @property
    def data(self) -> dict[str, Any]:
        """What the znode holds (or would hold), a copy."""
        with self._lock:
            return dict(self._data)

    @property
    def client(self) -> Any:
        """The kazoo client it writes with (``None`` without ``[zookeeper]``)."""
        return self._zk

    @property
    def enabled(self) -> bool:
        """Whether the topology has ``[zookeeper]`` (else the registration does nothing)."""
        return self._zk is not None

    def update(self, state: str | None = None, **details: Any) -> None:
        """Set the node's state and details; write the znode when it changed (without waiting).

        While the node is not connected nothing is sent: the znode is written whole once it is.
        """
        with self._lock:
            if state is not None:
                self._data["state"] = state
            self._data.update(details)
            data = dump(self._data)
            if data == self._sent or self._zk is None or self._closed:
                return
            self._sent = data
        zk = self._zk
        if zk.connected:
            zk.set_async(self.path, data).rawlink(self._on_set)

    def close(self) -> None:
        """Remove the znode (by ending the session, when the client is the registration's own)."""
        zk, self._closed = self._zk, True
        if zk is None:
            return
        zk.remove_listener(self._on_state)
        try:
            if self._own:
                zk_stop(zk)  # ends the session: ZooKeeper deletes its ephemeral znodes at once
            elif zk.connected:
                stat = zk.exists_async(self.path).get(timeout=CLOSE_TIMEOUT_S)
                if stat is not None and stat.ephemeralOwner == _session(zk):
                    zk.delete_async(self.path, version=stat.version).get(timeout=CLOSE_TIMEOUT_S)
        except Exception as e:  # a node stopping does not fail on its registry entry
            log.warning("%s: not removed (%s): ZooKeeper removes it when the session ends", self.path, e)

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ kazoo's threads

    def _on_state(self, state: str) -> None:
        # kazoo's connection thread: never block here.
        if state == "CONNECTED":
            self._zk.handler.spawn(self._ensure)
        elif state == "LOST":
            log.warning("%s: ZooKeeper session lost; registering again once connected", self.path)

    def _on_set(self, result: Any) -> None:
        try:
            result.get()
        except Exception as e:
            with self._lock:
                self._sent = None
            from kazoo.exceptions import NoNodeError

            if isinstance(e, NoNodeError) and not self._closed:
                self._zk.handler.spawn(self._ensure)  # gone (taken over and released): make it again
            # Anything else is a lost connection: the listener registers again once connected.

    def _ensure(self) -> None:
        # Make the znode ours and hold the latest data: at start, after every reconnection.
        from kazoo.exceptions import KazooException, NodeExistsError

        zk = self._zk
        with self._ensure_lock:
            for _ in range(5):
                if self._closed or not zk.connected:
                    return
                with self._lock:
                    data = dump(self._data)
                try:
                    try:
                        zk.create(self.path, data, ephemeral=True, makepath=True)
                        log.info("registered as %s", self.path)
                    except NodeExistsError:
                        stat = zk.exists(self.path)
                        if stat is None:
                            continue  # gone meanwhile
                        if stat.ephemeralOwner != _session(zk):
                            old = load(zk.get(self.path)[0]) or {}
                            log.warning("%s is held by another session (pid %s on %s: a run of this node that ended "
                                        "less than %.0f s ago, or another process with its name): taking it over",
                                        self.path, old.get("pid"), old.get("host"), SESSION_TIMEOUT_S)
                            zk.delete(self.path, version=stat.version)
                            continue
                        zk.set(self.path, data)
                except NodeExistsError:
                    continue
                except KazooException as e:
                    log.warning("%s: not written (%s); trying again once connected", self.path, e)
                    return
                with self._lock:
                    self._sent = data
                return


def _session(zk: Any) -> int | None:
    cid = zk.client_id
    return None if cid is None else int(cid[0])


def registered(zk: Any, topo: Topology, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Return every registered node's data, in the topology's start order of kinds, then by name.

    Parameters
    ----------
    zk
        A started kazoo client of the topology's ensemble.
    topo
        The topology (it has ``[zookeeper]``).
    timeout
        How long each read may wait for ZooKeeper (then kazoo's timeout error is raised).
    """
    from kazoo.exceptions import NoNodeError

    where = paths(topo)
    try:
        children = zk.get_children_async(where.nodes).get(timeout=timeout)
    except NoNodeError:
        return []
    out = []
    for child in children:
        try:
            data, stat = zk.get_async(f"{where.nodes}/{child}").get(timeout=timeout)
        except NoNodeError:
            continue  # gone meanwhile
        node = load(data) or {"state": "unreadable"}
        node.setdefault("kind", child.partition("-")[0])
        node.setdefault("name", child.partition("-")[2])
        node["session"] = f"0x{stat.ephemeralOwner:x}"
        out.append(node)
    rank = {k: i for i, k in enumerate(NODE_KINDS)}
    return sorted(out, key=lambda n: (rank.get(str(n.get("kind")), len(rank)), str(n.get("kind")), str(n.get("name"))))


__all__ = ["Registration", "registered"]
