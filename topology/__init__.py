"""Topology files, their checks, and the launcher."""
