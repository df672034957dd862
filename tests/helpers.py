"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from topology.launcher import Launcher
from topology.ports import free_port, topology_on_free_ports

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "topology" / "examples" / "local.toml"

__all__ = ["LOCAL", "ROOT", "free_port", "gateway_endpoints", "journal_events", "topology_on_free_ports"]


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
