"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

from topology.launcher import Launcher
from topology.ports import free_port, topology_on_free_ports

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "topology" / "examples" / "local.toml"

__all__ = ["LOCAL", "ROOT", "free_port", "gateway_endpoints", "topology_on_free_ports"]


def gateway_endpoints(ex: Launcher) -> list[str]:
    """Return the broker endpoints of a launched topology's gateways."""
    return [g.endpoint.connect for g in ex.topo.gateways]
