"""Shared test settings: hypothesis profiles (``HYPOTHESIS_PROFILE=ci`` runs more examples), the exchange fixture."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import LOCAL, topology_on_free_ports
from topology.launcher import Launcher

settings.register_profile("dev", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Launcher]:
    """The local topology (two matchers, the ticker, two gateways) as processes on free ports, stopped after."""
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp_path), workdir=tmp_path)
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()
