"""The stores a topology names, opened: one place for every node and command that reads or writes them."""

from __future__ import annotations

from fabric.orderstore import OrderStore, SQLiteOrderStore
from fabric.recent import MemoryRecent, RecentState
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


__all__ = ["open_order_store", "open_recent"]
