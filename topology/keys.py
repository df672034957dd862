"""A topology's CURVE keys, as the nodes and the brokers' clients use them (``docs/security.md``).

``fabric.auth`` knows keys and sockets; this module knows which node dials which address and which keys
each listening socket admits, from the topology's ``[security]`` table and its brokers' ``public_key``:

- :func:`node_keyring`: a node's own key pair (from ``keys_dir``) and every node server's public key;
- :func:`admit`: the ZAP domains of a context, one per kind of listening socket:

  ======================  ==================================  =====================================
  domain                  the sockets                         who is admitted (user id)
  ======================  ==================================  =====================================
  ``exfab.brokers``       a gateway's broker port             every listed broker (its broker id)
  ``exfab.orders``        a matcher's order port              the gateways (their node label)
  ``exfab.nodes``         a matcher's PUB and recovery ports  every node (its node label)
  ``exfab.repl.<shard>``  a matcher's replication port        the shard's two matchers
  ======================  ==================================  =====================================

- :func:`broker_keyring`, :func:`demo_key_file`: what a broker's client needs.

A topology without ``[security]`` (loopback hosts only: ``topology.load`` refuses it elsewhere) gives
``None`` everywhere, and every socket is open; :func:`warn_if_open` says so in each node's log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq

from fabric.auth import Keyring, load_key, zap
from topology.model import Topology

__all__ = [
    "BROKERS",
    "NODES",
    "ORDERS",
    "admit",
    "broker_keyring",
    "demo_key_file",
    "node_keyring",
    "repl_domain",
    "warn_if_open",
]

BROKERS = "exfab.brokers"
ORDERS = "exfab.orders"
NODES = "exfab.nodes"


def repl_domain(shard: str) -> str:
    """The ZAP domain of shard ``shard``'s replication ports: its two matchers only."""
    return f"exfab.repl.{shard}"


def _servers(topo: Topology) -> dict[str, str]:
    # Every address a node or broker dials, with the public key of the node listening there.
    sec = topo.security
    assert sec is not None
    out: dict[str, str] = {}
    for shard in topo.shards:
        for r in shard.replicas:
            key = sec.nodes[f"matcher:{r.name}"]
            for ep in (r.order, r.pub, r.recovery, r.repl):
                if ep is not None:
                    out[ep.connect] = key
    if sec.brokers == "keys":
        for g in topo.gateways:
            out[g.endpoint.connect] = sec.nodes[f"gateway:{g.name}"]
    return out


def node_keyring(topo: Topology, label: str) -> Keyring | None:
    """Return the keys of node ``label`` (``kind:name``), or ``None`` when the topology has no ``[security]``.

    Raises
    ------
    ValueError
        When the node's secret key file is missing or unreadable, or is not the pair the topology lists.
    """
    sec = topo.security
    if sec is None:
        return None
    path = sec.secret_file(label)
    own = load_key(path)
    if own.public != sec.nodes.get(label):
        raise ValueError(f"{path}: its public key {own.public} is not the one [security.nodes] lists for "
                         f"{label} ({sec.nodes.get(label)})")
    return Keyring(own, _servers(topo))


def admit(topo: Topology, ctx: zmq.Context) -> None:
    """Start ``ctx``'s ZAP handler with every domain of the topology (see the module's table)."""
    sec = topo.security
    if sec is None:
        return
    z = zap(ctx)
    z.allow(BROKERS, {b.public_key: b.id for b in topo.brokers if b.public_key is not None})
    z.allow(ORDERS, {k: label for label, k in sec.nodes.items() if label.startswith("gateway:")})
    z.allow(NODES, {k: label for label, k in sec.nodes.items()})
    for shard in topo.shards:
        z.allow(repl_domain(shard.name), {sec.nodes[f"matcher:{r.name}"]: f"matcher:{r.name}" for r in shard.replicas})


def broker_keyring(topo: Topology, broker: str, key_file: str | Path | None = None) -> Keyring | None:
    """Return what broker ``broker``'s client dials the gateways with: its key pair and the gateways' public keys.

    The key pair is read from ``key_file``, or, without one, from the demo key the topology ships for the
    broker (:func:`demo_key_file`). ``None`` when the topology's gateways take brokers in the clear (no
    ``[security]``, or ``brokers = "open"``); then no key is read.

    Raises
    ------
    ValueError
        When the gateways need a key and there is none, or ``key_file`` is not a secret key file.
    """
    sec = topo.security
    if sec is None or sec.brokers == "open":
        return None
    path = key_file if key_file is not None else demo_key_file(topo, broker)
    if path is None:
        raise ValueError(f"this exchange's gateways take brokers by their CURVE key, and the topology ships none for "
                         f"{broker}: give the broker's secret key file (--key FILE; exfab keys new {broker} makes "
                         "one, and prints the [[brokers]] entry to add to the topology)")
    return Keyring(load_key(path), _servers(topo))


def demo_key_file(topo: Topology, broker: str) -> Path | None:
    """Return the secret key file the topology ships for ``broker`` (a demo topology's), or ``None``."""
    sec = topo.security
    if sec is None:
        return None
    path = sec.keys_dir / f"broker-{broker}.key_secret"
    return path if path.is_file() else None


def warn_if_open(topo: Topology, label: str, log: logging.Logger) -> None:
    """Log, at a node's start, what its topology leaves open to anyone who can reach the ports."""
    if topo.security is None:
        log.warning("%s: the topology has no [security]: every socket is open to anyone on this machine, and any "
                    "broker id may log on (a loopback topology; docs/security.md)", label)
    elif topo.security.brokers == "open":
        log.warning("%s: [security] brokers = \"open\": the gateways take any broker id in the clear (a loopback "
                    "topology; docs/security.md); the sockets between nodes use CURVE", label)
