"""Real servers for tests, started on free ports in a test's folder: ``influxd`` (InfluxDB 1.x), ``redis-server``,
ZooKeeper 3.8 (one server, or an ensemble).

Starting, waiting until a server answers and stopping it are
``topology/servers.py``'s (the launcher runs a topology's local Redis and
ZooKeeper with the same code); here are the free ports, the folders and the
test's own rules.

A test that needs a server calls :func:`require_binary` first (ZooKeeper:
:func:`require_zookeeper`, which also wants its jar): a missing binary skips the
test on a developer's machine, and fails it in CI (``CI`` set), where
``.ci/run`` installs the servers; a test that needs a server never passes
silently there without one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from topology import servers
from topology.ports import free_port
from topology.servers import (
    INFLUXD,
    JAVA,
    REDIS_SERVER,
    ZOOKEEPER_JAR,
    InfluxDBServer,
    ZooKeeperEnsemble,
    ZooKeeperServer,
)

__all__ = ["InfluxServer", "RedisServer", "ZooKeeperEnsemble", "ZooKeeperServer", "require_binary",
           "require_zookeeper", "start_influxd", "start_redis", "start_zookeeper", "start_zookeeper_ensemble"]


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why}: CI must install it (.ci/run installs the servers the tests need)", pytrace=False)
    pytest.skip(why)


def require_binary(name: str) -> str:
    """Return the path of the executable ``name``; skip the test without it (fail it when ``CI`` is set)."""
    path = shutil.which(name)
    if path is None:
        _missing(f"{name!r} is not installed (not on PATH)")
    assert path is not None
    return path


def require_zookeeper() -> str:
    """Return the path of ``java`` once ZooKeeper's jar is there too; skip the test without them (fail it in CI)."""
    java = require_binary(JAVA)
    if not ZOOKEEPER_JAR.exists():
        _missing(f"ZooKeeper is not installed (no {ZOOKEEPER_JAR}; Debian: apt-get install zookeeper)")
    return java


class InfluxServer(InfluxDBServer):
    """An ``influxd`` of this test run, on free ports of 127.0.0.1, keeping everything in its folder.

    Attributes
    ----------
    url
        ``http://127.0.0.1:PORT`` of its HTTP API.
    root
        Its folder (config, data, log).
    """

    def __init__(self, binary: str, root: Path) -> None:
        super().__init__(binary, "127.0.0.1", free_port(), root)

    def __repr__(self) -> str:
        return f"InfluxServer({self.url}, running={self.running})"


def start_influxd(tmp_dir: Path) -> InfluxServer:
    """Start an ``influxd`` keeping everything in ``tmp_dir``, on free ports of 127.0.0.1; return it running.

    The caller stops it (:meth:`InfluxServer.stop`).  Skips the test when
    ``influxd`` is not installed (fails it when ``CI`` is set).
    """
    binary = require_binary(INFLUXD)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    server = InfluxServer(binary, tmp_dir)
    server.start()
    return server


class RedisServer(servers.RedisServer):
    """A ``redis-server`` of this test run, on a free port of 127.0.0.1, keeping nothing on disk.

    Attributes
    ----------
    url
        ``redis://127.0.0.1:PORT/0``.
    root
        Its folder (working directory, log).
    """

    def __init__(self, binary: str, root: Path) -> None:
        super().__init__(binary, "127.0.0.1", free_port(), root)


def start_redis(tmp_dir: Path) -> RedisServer:
    """Start a ``redis-server`` in ``tmp_dir`` on a free port of 127.0.0.1, saving nothing; return it running.

    The caller stops it (:meth:`RedisServer.stop`).  Skips the test when
    ``redis-server`` is not installed (fails it when ``CI`` is set).
    """
    binary = require_binary(REDIS_SERVER)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    server = RedisServer(binary, tmp_dir)
    server.start()
    return server


def start_zookeeper(tmp_dir: Path) -> ZooKeeperServer:
    """Start a standalone ZooKeeper keeping its data in ``tmp_dir``, on a free port of 127.0.0.1; return it serving.

    Its ``hosts`` (``127.0.0.1:PORT``) is what a topology's ``[zookeeper] hosts`` lists.  The caller stops it
    (:meth:`ZooKeeperServer.stop`); :meth:`ZooKeeperServer.start` starts it again with its data, sessions
    included.  Skips the test when ``java`` or ZooKeeper is not installed (fails it when ``CI`` is set).
    """
    java = require_zookeeper()
    server = ZooKeeperServer("127.0.0.1", free_port(), tmp_dir, java=java)
    server.start()
    return server


def start_zookeeper_ensemble(tmp_dir: Path, n: int = 3) -> ZooKeeperEnsemble:
    """Start an ensemble of ``n`` ZooKeeper servers on free ports of 127.0.0.1, each in ``tmp_dir/<i>``; return it.

    Its ``hosts`` is what a topology's ``[zookeeper] hosts`` lists, comma-separated; ``servers[i]`` stops and
    starts one of them.  Skips the test when ``java`` or ZooKeeper is not installed (fails it when ``CI`` is set).
    """
    java = require_zookeeper()
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    ensemble = ZooKeeperEnsemble([("127.0.0.1", p) for p in sorted(ports)], tmp_dir, java=java)
    ensemble.start()
    return ensemble
