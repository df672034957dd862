"""A matcher's seat in its shard's pair: who is primary, at which epoch, decided through ZooKeeper.

The rules (``docs/deploy.md``, "Primary and secondary"):

- **Election.** Both matchers of a pair stand in the shard's election (kazoo's
  ``Lock`` recipe at ``shards/<shard>/election``); the holder may become primary.
- **Only a matcher that holds every acknowledged order may win.** A matcher is
  *eligible* when it was the last primary (``shards/<shard>/epoch`` names it), or
  is the secondary its primary last declared in sync (``shards/<shard>/insync``),
  or when the shard never had a primary. A holder that is not eligible lets go
  and tries again later: the shard waits for the one that has the orders.
- **Fencing.** A new primary raises the shard's epoch (a compare-and-set on
  ``shards/<shard>/epoch``) before it takes a command, and writes
  ``shards/<shard>/primary`` (ephemeral) with the epoch and the first sequence
  number of its reign. Every message it sends carries the epoch; subscribers drop
  messages of an older epoch.
- **A deposed primary never accepts.** When its ZooKeeper connection is
  SUSPENDED it stops taking commands at once (:attr:`Seat.suspended`); when the
  session is LOST, its ephemeral znodes are gone and another may have won: it
  starts over as a candidate (the matcher process restarts itself and rejoins as
  a secondary, cutting from its journal whatever its successor never had).

The matcher's loop polls this object between batches; the blocking election runs
on a thread of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from topology.model import Replica, Shard, Topology
from topology.zk import MATCHER_SESSION_TIMEOUT_S, connect, dump, load, paths
from topology.zk import stop as zk_stop

log = logging.getLogger("exfab.election")

RETRY_S = 0.5  # a candidate that won but may not lead lets go for this long
READ_TIMEOUT_S = 1.0  # a read of the shard's znodes gives up after this long (the ensemble is unreachable)


@dataclass(frozen=True, slots=True)
class Reign:
    """A primary's term: its name, epoch and the first journal sequence number it wrote."""

    name: str
    epoch: int
    from_seq: int


class Seat:
    """One matcher's place in its shard's pair (see the module's text).

    Parameters
    ----------
    topo, shard, replica
        The topology, the shard and this matcher.
    """

    def __init__(self, topo: Topology, shard: Shard, replica: Replica) -> None:
        self.topo, self.shard, self.replica = topo, shard, replica
        self.paths = paths(topo)
        self.zk = connect(topo, session_timeout=MATCHER_SESSION_TIMEOUT_S)
        self.suspended = False  # the connection to ZooKeeper is down: take no command
        self.lost = threading.Event()  # the session ended: another may lead; start over
        self.won = threading.Event()  # this matcher holds the election: the loop may take over
        self._lock: Any = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self.zk.add_listener(self._state)
        for p in (self.paths.shard(shard.name), self.paths.election(shard.name)):
            self.zk.ensure_path(p)

    def _state(self, state: str) -> None:
        # kazoo calls this from its connection thread: only flags are set here.
        from kazoo.protocol.states import KazooState

        if state == KazooState.SUSPENDED:
            self.suspended = True
            log.warning("matcher %s: connection to ZooKeeper suspended: taking no command until it is back",
                        self.replica.name)
        elif state == KazooState.LOST:
            self.suspended = True
            self.lost.set()
            log.error("matcher %s: ZooKeeper session lost: another matcher may lead; starting over",
                      self.replica.name)
        else:
            if self.suspended and not self.lost.is_set():
                log.info("matcher %s: connection to ZooKeeper back, session kept", self.replica.name)
            self.suspended = self.lost.is_set()

    # ----------------------------------------------------------------- reading

    def _json(self, path: str) -> dict[str, Any] | None:
        # Never waits long: with the ensemble gone a plain get waits until it is back, and a secondary's loop,
        # which reads the primary's znode, would hang (not even stopping on SIGTERM).
        try:
            data, _ = self.zk.get_async(path).get(timeout=READ_TIMEOUT_S)
        except Exception:  # NoNodeError, a timeout, or a connection problem: nothing known
            return None
        return load(data)

    def primary(self) -> Reign | None:
        """Return the current primary's reign, or None when the shard has none."""
        obj = self._json(self.paths.primary(self.shard.name))
        if obj is None:
            return None
        return Reign(str(obj["name"]), int(obj["epoch"]), int(obj["from_seq"]))

    def eligible(self) -> bool:
        """Tell whether this matcher holds every acknowledged order of the shard (see the module's text)."""
        epoch = self._json(self.paths.epoch(self.shard.name))
        if epoch is None:
            return True  # the shard never had a primary
        if epoch.get("primary") == self.replica.name:
            return True
        insync = self._json(self.paths.shard(self.shard.name) + "/insync") or {}
        return insync.get("name") == self.replica.name and insync.get("epoch") == epoch.get("epoch")

    # ---------------------------------------------------------------- standing

    def stand(self) -> None:
        """Stand in the election (on a thread); :attr:`won` is set when this matcher holds it."""
        if self._thread is not None:
            return
        self._lock = self.zk.Lock(self.paths.election(self.shard.name), identifier=self.replica.name)
        self._thread = threading.Thread(target=self._run, name=f"election-{self.replica.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.lost.is_set() and not self._closing:
            try:
                self._lock.acquire()
            except Exception as e:  # the connection went: try again when it is back
                if self._closing:
                    return  # (the matcher is stopping)
                log.warning("matcher %s: election: %s", self.replica.name, e)
                self.lost.wait(RETRY_S)
                continue
            if self.eligible():
                self.won.set()
                return
            log.info("matcher %s: holds the election but may not lead (not in sync with the last primary): "
                     "letting go", self.replica.name)
            self._lock.release()
            self.lost.wait(RETRY_S * 4)

    def take_over(self, from_seq: int, pub_from: int = 0) -> Reign:
        """Become primary: raise the epoch, write the reign (call once :attr:`won` is set).

        ``from_seq`` is the first journal record of the reign (what a returning matcher cuts from); ``pub_from``
        the first PUB message's seq (what subscribers fence by, ``fabric.stream.deposed``).
        """
        from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

        zk, name = self.zk, self.shard.name
        path = self.paths.epoch(name)
        while True:
            try:
                data, stat = zk.get(path)
                old = load(data) or {}
                epoch = int(old.get("epoch", 0)) + 1
                zk.set(path, dump({"epoch": epoch, "primary": self.replica.name, "from_seq": from_seq}),
                       version=stat.version)
                break
            except NoNodeError:
                try:
                    epoch = 1
                    zk.create(path, dump({"epoch": epoch, "primary": self.replica.name, "from_seq": from_seq}),
                              makepath=True)
                    break
                except NodeExistsError:
                    continue
            except BadVersionError:
                continue
        r = self.replica
        reign = {"name": r.name, "epoch": epoch, "from_seq": from_seq, "pub_from": pub_from, "host": r.host,
                 "pid": os.getpid(),
                 "order": r.order.connect, "pub": r.pub.connect, "recovery": r.recovery.connect,
                 "repl": r.repl.connect if r.repl is not None else None}
        ppath = self.paths.primary(name)
        with contextlib.suppress(NoNodeError):
            zk.delete(ppath)  # a former reign's, if its session has not ended yet (it holds no lock)
        zk.create(self._reigns + f"/{epoch:010d}", dump({"primary": r.name, "from_seq": from_seq}), makepath=True)
        self._clean(r.name, epoch)
        zk.create(ppath, dump(reign), ephemeral=True, makepath=True)
        self.declare_insync(None, epoch, 0)
        log.info("matcher %s: primary of shard %s at epoch %d from seq %d", r.name, name, epoch, from_seq)
        return Reign(r.name, epoch, from_seq)

    def declare_insync(self, secondary: str | None, epoch: int, seq: int) -> None:
        """Write which secondary holds everything (None: none; the primary goes on alone). Raises on failure."""
        self._put(self.paths.shard(self.shard.name) + "/insync", {"name": secondary, "epoch": epoch, "seq": seq})
        if secondary is not None:
            self._clean(secondary, epoch)

    def _put(self, path: str, obj: dict[str, Any]) -> None:
        data = dump(obj)
        if self.zk.exists(path):
            self.zk.set(path, data)
        else:
            self.zk.create(path, data, makepath=True)

    @property
    def _reigns(self) -> str:
        return self.paths.shard(self.shard.name) + "/reigns"

    def _clean(self, name: str, epoch: int) -> None:
        # `name`'s journal is a copy of the shard's agreed records as of `epoch` (it led it, or was in sync in it).
        self._put(self.paths.shard(self.shard.name) + f"/clean/{name}", {"epoch": epoch})

    def cut_point(self) -> int | None:
        """Return the last journal record this matcher may keep (None: all), having been away.

        Records it wrote after the last epoch it led or followed in sync may never have reached the primaries
        that followed: everything from the first of those reigns' first sequence number on is cut.
        """
        clean = self._json(self.paths.shard(self.shard.name) + f"/clean/{self.replica.name}")
        if clean is None:
            return None  # never led nor followed in sync: wrote nothing but its instruments
        mine = int(clean.get("epoch", 0))
        try:
            later = sorted(int(c) for c in self.zk.get_children(self._reigns) if int(c) > mine)
        except Exception:
            return None
        if not later:
            return None
        first = self._json(self._reigns + f"/{later[0]:010d}") or {}
        return int(first.get("from_seq", 1)) - 1

    def report_secondary(self, info: dict[str, Any]) -> None:
        """Write how the secondary stands (``exfab status``): best effort, sent without waiting for the answer."""
        path = self.paths.secondary(self.shard.name)
        data = dump(info)

        def made(result: Any) -> None:
            if result.exception is not None:  # there already (this session made it): write it instead
                self.zk.set_async(path, data)

        try:
            self.zk.create_async(path, data, ephemeral=True, makepath=True).rawlink(made)
        except Exception as e:
            log.debug("secondary report: %s", e)

    def close(self) -> None:
        """Leave the election and ZooKeeper (the ephemeral znodes go with the session)."""
        self._closing = True
        with contextlib.suppress(Exception):
            self.zk.remove_listener(self._state)  # (leaving is not losing the session)
        zk_stop(self.zk)


__all__ = ["Reign", "Seat"]
