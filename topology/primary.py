"""Which matcher is primary for a shard, and at which epoch: one answer for every node that asks.

Gateways send a shard's orders to its primary and replay from it; the ticker
and the persistence node follow the primary's stream.  They all ask a
:class:`PrimaryResolver` rather than pick a replica themselves, so that
fail-over changes one place.

A shard with a single matcher is answered from the topology
(:class:`StaticPrimaries`: the shard's one replica, epoch 0). Primary/secondary
pairs elect their primary through ZooKeeper (``topology/election.py``), and
:class:`ZkPrimaries` answers with the elected matcher and its fencing epoch,
watching for the next election.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fabric.follow import ShardSource
from topology.model import Replica, Shard, Topology


@dataclass(frozen=True, slots=True)
class Primary:
    """The primary matcher of one shard.

    Attributes
    ----------
    shard
        The shard's number (its place in the topology).
    replica
        The matcher: its name, host and endpoints (order, recovery, pub).
    epoch
        The fencing epoch it publishes under; higher at each election.
    """

    shard: int
    replica: Replica
    epoch: int

    @property
    def order(self) -> str:
        """Where to send orders (``tcp://host:port``)."""
        return self.replica.order.connect

    @property
    def recovery(self) -> str:
        """Where to ask for replays and snapshots."""
        return self.replica.recovery.connect

    @property
    def pub(self) -> str:
        """Where to subscribe to the shard's sequenced stream."""
        return self.replica.pub.connect


class PrimaryResolver(Protocol):
    """Answers which matcher is primary for a shard."""

    def primary(self, shard: int) -> Primary:
        """Return the primary of shard number ``shard`` as it is known now."""
        ...


class StaticPrimaries:
    """The primaries of a topology from the file alone: each shard's first replica, at epoch 0.

    Right for single matchers; for a pair, its first replica is the preferred primary on a fresh start,
    and serves until pairs are elected through ZooKeeper (a resolver of its own).
    """

    def __init__(self, topo: Topology) -> None:
        self._primaries: list[Primary] = []
        for no, shard in enumerate(topo.shards):
            self._primaries.append(Primary(no, shard.replicas[0], 0))

    def primary(self, shard: int) -> Primary:
        """Return the primary of shard number ``shard``."""
        return self._primaries[shard]


class ZkPrimaries:
    """The primaries of a topology with pairs, as ZooKeeper says (``shards/<shard>/primary``), watched.

    A shard with one matcher is answered from the file. Until a pair's primary is known, its first replica is
    given at epoch 0 (its commands wait, and are sent again to the primary once it is known). :attr:`version`
    goes up at each change, so a node's loop notices it without a callback.
    """

    def __init__(self, topo: Topology) -> None:
        from topology.zk import connect, load, paths

        self._static = StaticPrimaries(topo)
        self._primaries = [self._static.primary(no) for no in range(len(topo.shards))]
        self._from_seq = [0] * len(topo.shards)
        self.version = 0
        self.zk = connect(topo)
        zpaths = paths(topo)
        for no, shard in enumerate(topo.shards):
            if not shard.paired:
                continue

            def watch(data: bytes | None, _stat: object, no: int = no, shard: Shard = shard) -> None:
                obj = load(data)
                if obj is None:
                    return  # no primary now: keep the last one known until the next is elected
                try:
                    replica = shard.replica(str(obj["name"]))
                    # The first PUB seq of the reign: what the fencing rule compares (fabric.stream.deposed).
                    epoch, from_seq = int(obj["epoch"]), int(obj.get("pub_from", obj["from_seq"]))
                except (KeyError, ValueError, TypeError):
                    return
                if epoch >= self._primaries[no].epoch:
                    self._primaries[no] = Primary(no, replica, epoch)
                    self._from_seq[no] = from_seq
                    self.version += 1

            self.zk.DataWatch(zpaths.primary(shard.name), watch)

    def primary(self, shard: int) -> Primary:
        """Return the primary of shard number ``shard`` as last known."""
        return self._primaries[shard]

    def from_seq(self, shard: int) -> int:
        """Return the first PUB sequence number of the current primary's reign (0 for a single matcher)."""
        return self._from_seq[shard]

    def close(self) -> None:
        """Stop watching (never waiting long for an ensemble that is gone)."""
        from topology.zk import stop

        stop(self.zk)


def resolver(topo: Topology) -> PrimaryResolver:
    """Return the resolver a node of ``topo`` uses: ZooKeeper's when a shard is a pair, else the file's."""
    if topo.zookeeper is not None and any(s.paired for s in topo.shards):
        return ZkPrimaries(topo)
    return StaticPrimaries(topo)


def shard_sources(topo: Topology) -> tuple[list[ShardSource], Callable[[], list[ShardSource]] | None]:
    """Return where every shard's stream comes from now, and, when a shard is a pair, how to ask again.

    What a follower (``fabric.follow.Follower``: its sources and ``resolve``) needs: with single matchers the
    sources never change, and there is nothing to ask again.
    """
    res = resolver(topo)
    if not any(s.paired for s in topo.shards):
        return sources_of(topo, res), None
    return sources_of(topo, res), lambda: sources_of(topo, res)


def sources_of(topo: Topology, res: PrimaryResolver) -> list[ShardSource]:
    """Return where every shard's stream comes from as ``res`` says now (a follower's view after a fail-over)."""
    out = []
    for no, shard in enumerate(topo.shards):
        p = res.primary(no)
        pubs = tuple(r.pub.connect for r in shard.replicas) if shard.paired else ()
        from_seq = res.from_seq(no) if isinstance(res, ZkPrimaries) else 0
        out.append(ShardSource(no, shard.name, p.pub, p.recovery, pubs, p.epoch, from_seq))
    return out


__all__ = ["Primary", "PrimaryResolver", "StaticPrimaries", "ZkPrimaries", "resolver", "shard_sources", "sources_of"]
