"""Which matcher is primary for a shard, and at which epoch: one answer for every node that asks.

Gateways send a shard's orders to its primary and replay from it; the ticker
and the persistence node follow the primary's stream.  They all ask a
:class:`PrimaryResolver` rather than pick a replica themselves, so that
fail-over changes one place.

Today every shard has a single matcher: :class:`StaticPrimaries` answers from
the topology (the shard's one replica, epoch 0).  Primary/secondary pairs
elect their primary through ZooKeeper, whose resolver answers the same
question with the elected matcher and its fencing epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fabric.follow import ShardSource
from topology.model import Replica, Topology


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


def resolver(topo: Topology) -> PrimaryResolver:
    """Return the resolver a node of ``topo`` uses."""
    return StaticPrimaries(topo)


def shard_sources(topo: Topology) -> list[ShardSource]:
    """Return where every shard's stream comes from (its primary's PUB and recovery sockets), by shard number."""
    res = resolver(topo)
    out = []
    for no, shard in enumerate(topo.shards):
        p = res.primary(no)
        out.append(ShardSource(no, shard.name, p.pub, p.recovery))
    return out


__all__ = ["Primary", "PrimaryResolver", "StaticPrimaries", "resolver", "shard_sources"]
