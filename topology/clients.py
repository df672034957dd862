"""Clients of a deployment, made from its topology file: what a program needs to know of where things are.

The client libraries in ``fabric/`` take endpoints and know nothing of
topology files (the library sits below the deployment); these functions read
the endpoints from a topology for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import zmq.asyncio

from fabric.client import AsyncBrokerClient
from fabric.marketdata import MarketDataClient
from topology.load import load
from topology.model import Topology


def market_data_client(topo: Topology | str | os.PathLike[str], symbols: Iterable[str] | None = None,
                       **kwargs: Any) -> MarketDataClient:
    """Return a :class:`~fabric.marketdata.MarketDataClient` of a topology's tickers.

    The client follows the first ticker and fails over to the next when it dies (``docs/market-data.md``,
    section 9): it is given every ticker's feed and snapshot addresses, in the topology's order.

    Parameters
    ----------
    topo
        A :class:`~topology.model.Topology`, or the path of its file.
    symbols
        The symbols to follow (``None``: every symbol the ticker sends).
    **kwargs
        The client's other parameters (``kinds``, ``ctx``, ``timeout``, ``silence``).

    Raises
    ------
    ValueError
        When the topology has no ticker.
    topology.load.TopologyError
        When the file cannot be read or has mistakes.

    Examples
    --------
    >>> with market_data_client("topology/examples/local.toml", ["TCS"]) as md:  # doctest: +SKIP
    ...     md.wait_ready(5)
    """
    if not isinstance(topo, Topology):
        topo = load(os.fspath(topo))
    if not topo.tickers:
        raise ValueError(f"topology {topo.name!r} has no [ticker]")
    return MarketDataClient([t.pub.connect for t in topo.tickers], [t.snapshot.connect for t in topo.tickers],
                            symbols, **kwargs)


def operator_client(topo: Topology, operator: str, *, ctx: zmq.asyncio.Context | None = None) -> AsyncBrokerClient:
    """Return an operator's session with the exchange (the ticker's, to trip a circuit breaker).

    The one place an operator's connection is made: it logs on as ``operator`` to the topology's gateways, the
    first that answers, with the operator's key pair when the gateways take brokers by their keys (the file
    ``broker-<operator>.key_secret`` in the topology's ``keys_dir``: ``topology.keys.broker_keyring``).

    Parameters
    ----------
    topo
        The topology: its gateways.
    operator
        The operator's broker id (``[index] operator``).
    ctx
        The asyncio ZeroMQ context for the socket.
    """
    from topology.keys import broker_keyring

    return AsyncBrokerClient([g.endpoint.connect for g in topo.gateways], operator, ctx=ctx, timeout=2.0, retries=1,
                             keys=broker_keyring(topo, operator))


__all__ = ["market_data_client", "operator_client"]
