"""The stores a topology names, opened: one place for every node and command that reads or writes them."""

from __future__ import annotations

from fabric.orderstore import OrderStore, SQLiteOrderStore, StoreError
from fabric.recent import MemoryRecent, RecentState
from fabric.records import OrderRow
from topology.model import Topology


def open_order_store(topo: Topology, *, readonly: bool = False) -> OrderStore:
    """Return the order store the topology names (``[stores] orders``)."""
    if topo.stores.orders == "cassandra":
        from fabric.cassandra_store import CassandraOrderStore

        if topo.cassandra is None:
            raise ValueError('[stores] orders = "cassandra" needs a [cassandra] table')
        return CassandraOrderStore(topo.cassandra.hosts, topo.cassandra.keyspace, port=topo.cassandra.port)
    return SQLiteOrderStore(topo.sqlite_path("orders"), readonly=readonly)


def open_recent(topo: Topology) -> RecentState:
    """Return the recent-state store the topology names (``[stores] recent``)."""
    if topo.stores.recent == "redis":
        from fabric.redis_recent import RedisRecent

        if topo.redis is None:
            raise ValueError('[stores] recent = "redis" needs a [redis] table')
        return RedisRecent(topo.redis.url, prefix=f"exfab:{topo.name}")
    return MemoryRecent()


class StoreLookup:
    """An order's state from the stores, for a node that no longer holds it (a gateway asked about an old order).

    The recent state first when it is Redis (the embedded one is in the persistence node's memory), then the
    order store; each opened at the first lookup and again after a failure. Blocking: run it off a node's loop.
    """

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self._recent: RecentState | None = None
        self._store: OrderStore | None = None

    def order(self, broker: str, oid: str) -> OrderRow | None:
        """Return the broker's latest order ``oid``, or None when no store has it (raises StoreError)."""
        if self.topo.stores.recent == "redis":
            try:
                if self._recent is None:
                    self._recent = open_recent(self.topo)
                row = self._recent.order(broker, oid)
                if row is not None:
                    return row
            except StoreError:
                self._close_recent()  # the order store may still answer
        try:
            if self._store is None:
                self._store = open_order_store(self.topo, readonly=True)
            return self._store.order(broker, oid)
        except StoreError:
            if self._store is not None:
                self._store.close()
                self._store = None
            raise

    def _close_recent(self) -> None:
        if self._recent is not None:
            self._recent.close()
            self._recent = None

    def close(self) -> None:
        """Let go of the stores."""
        self._close_recent()
        if self._store is not None:
            self._store.close()
            self._store = None


__all__ = ["StoreLookup", "open_order_store", "open_recent"]
