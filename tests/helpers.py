"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from fabric.auth import Keyring, connect
from topology.keys import node_keyring
from topology.launcher import Launcher
from topology.model import Topology
from topology.ports import free_port
from topology.ports import topology_on_free_ports as _on_free_ports

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "topology" / "examples" / "local.toml"

__all__ = ["LOCAL", "ROOT", "dial", "free_port", "gateway_endpoints", "journal_events", "node_keys",
           "topology_on_free_ports"]


def topology_on_free_ports(src: Path, dst_dir: Path, *, brokers: str = "open", curve: bool = True) -> Path:
    """``topology.ports.topology_on_free_ports`` for tests: CURVE between the nodes, and by default the gateways
    take any broker id in the clear (``brokers = "open"``: the tests' brokers have no keys); ``brokers="keys"``
    keeps the topology's own (local.toml's demo brokers log on with their keys)."""
    return _on_free_ports(src, dst_dir, brokers=brokers, curve=curve)


def gateway_endpoints(ex: Launcher) -> list[str]:
    """Return the broker endpoints of a launched topology's gateways."""
    return [g.endpoint.connect for g in ex.topo.gateways]


def journal_events(ex: Launcher, shard: str) -> list[dict[str, Any]]:
    """Return ``exfab journal inspect`` of the shard's journal, as parsed events."""
    replica = ex.topo.shard(shard).replicas[0]
    path = ex.workdir / ex.topo.journal_dir(replica) / f"{shard}.journal"
    assert path.exists(), path
    out = subprocess.run([sys.executable, "-m", "tools.cli", "journal", "inspect", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def node_keys(topo: Topology) -> Keyring | None:
    """Return the keys a test dials a matcher's ports with: its first gateway's (the order port admits only
    gateways), or ``None`` for a topology without ``[security]`` (docs/security.md)."""
    return node_keyring(topo, f"gateway:{topo.gateways[0].name}")


def dial(sock: zmq.Socket[Any], address: str, topo: Topology) -> None:
    """Connect a test's socket to a node's port as a node does: with CURVE when the topology has keys."""
    connect(sock, address, node_keys(topo))


class RunningTicker:
    """A :class:`~nodes.ticker.Ticker` of ``topo`` run in this process, on a thread of its own.

    ``lose`` (optional) picks matcher messages the ticker never sees, to test how it recovers them.
    """

    def __init__(self, topo: Topology, name: str | None = None,
                 lose: Callable[[list[bytes]], bool] | None = None) -> None:
        from nodes.ticker import Ticker

        self.ticker = Ticker(topo, name=name)
        if lose is not None:
            take = self.ticker.follow.ingest
            self.ticker.follow.ingest = (  # type: ignore[method-assign]
                lambda frames: take([f for f in frames if not lose(f)]))
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

        def run() -> None:
            async def main() -> None:
                self.loop = asyncio.get_running_loop()
                await self.ticker.run(ready=self.ready.set)

            asyncio.run(main())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the in-process ticker did not start"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Return ``fn()`` run on the ticker's event loop (so it sees the ticker's state between turns)."""
        assert self.loop is not None

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def stop(self) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.ticker.stop)
        self.thread.join(20)
