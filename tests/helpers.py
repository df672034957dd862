"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

from topology.ports import free_port, topology_on_free_ports

__all__ = ["free_port", "topology_on_free_ports"]
