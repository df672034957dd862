"""Real servers for tests, started on free ports in a test's folder: ``influxd`` (InfluxDB 1.x), ``redis-server``.

Starting, waiting until a server answers and stopping it are
``topology/servers.py``'s (the launcher runs a topology's local Redis with the
same code); here are the free ports, the folders and the test's own rules.

A test that needs a server calls :func:`require_binary` first: a missing binary
skips the test on a developer's machine, and fails it in CI (``CI`` set), where
``.ci/run`` installs the servers; a test that needs a server never passes silently
there without one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from topology import servers
from topology.ports import free_port
from topology.servers import REDIS_SERVER, ServerProcess

__all__ = ["InfluxServer", "RedisServer", "require_binary", "start_influxd", "start_redis"]

INFLUXD = "influxd"


def require_binary(name: str) -> str:
    """Return the path of the executable ``name``; skip the test without it (fail it when ``CI`` is set)."""
    path = shutil.which(name)
    if path is None:
        why = f"{name!r} is not installed (not on PATH)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must install it (.ci/run installs the servers the tests need)", pytrace=False)
        pytest.skip(why)
    return path


def _set_keys(text: str, section: str, values: dict[str, str]) -> str:
    """Return the TOML ``text`` with ``values`` (already TOML-encoded) set in ``[section]`` ("" for the top level).

    Keys present in the section are replaced in place; the others are added at the section's end.
    """
    lines = text.splitlines()
    out: list[str] = []
    current = ""
    todo = dict(values)

    def add_missing() -> None:
        for key, value in todo.items():
            out.append(f"  {key} = {value}" if section else f"{key} = {value}")
        todo.clear()

    for line in lines:
        header = re.match(r"\s*\[+([^\]]+)\]+\s*$", line)
        if header:
            if current == section and todo:
                add_missing()
            current = header.group(1).strip()
        elif current == section:
            m = re.match(r"(\s*)([\w-]+)\s*=", line)
            if m and m.group(2) in todo:
                line = f"{m.group(1)}{m.group(2)} = {todo.pop(m.group(2))}"
        out.append(line)
    if current == section and todo:
        add_missing()
    if todo:  # the section was not there at all
        out.append(f"[{section}]")
        add_missing()
    return "\n".join(out) + "\n"


def _disable_tables(text: str) -> str:
    """Return ``text`` with every ``[[array]]`` listener (graphite, collectd, opentsdb, udp) disabled."""
    out: list[str] = []
    in_array = False
    for line in text.splitlines():
        if re.match(r"\s*\[\[", line):
            in_array = True
        elif re.match(r"\s*\[", line):
            in_array = False
        elif in_array and re.match(r"\s*enabled\s*=", line):
            line = re.sub(r"=.*", "= false", line)
        out.append(line)
    return "\n".join(out) + "\n"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxServer(ServerProcess):
    """An ``influxd`` of this test run: its folder, ports and process.

    Attributes
    ----------
    url
        ``http://127.0.0.1:PORT`` of its HTTP API.
    root
        Its folder (config, data, log).
    """

    what = INFLUXD

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.http_port = free_port()
        self.rpc_port = free_port()
        while self.rpc_port == self.http_port:
            self.rpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = root / "influxdb.conf"
        super().__init__([binary, "-config", str(self.config)], root / "influxd.log")
        self._write_config()

    def __repr__(self) -> str:
        return f"InfluxServer({self.url}, running={self.running})"

    def _write_config(self) -> None:
        text = subprocess.run([self.binary, "config"], check=True, capture_output=True, timeout=30).stdout.decode()
        top: dict[str, str] = {"bind-address": _toml_str(f"127.0.0.1:{self.rpc_port}")}
        # Upstream names the key reporting-disabled; Debian's build prints reporting-enabled.
        if re.search(r"(?m)^reporting-enabled\s*=", text):
            top["reporting-enabled"] = "false"
        else:
            top["reporting-disabled"] = "true"
        text = _set_keys(text, "", top)
        text = _set_keys(text, "meta", {"dir": _toml_str(str(self.root / "meta"))})
        text = _set_keys(text, "data", {"dir": _toml_str(str(self.root / "data")),
                                        "wal-dir": _toml_str(str(self.root / "wal")),
                                        "query-log-enabled": "false"})
        text = _set_keys(text, "http", {"bind-address": _toml_str(f"127.0.0.1:{self.http_port}"),
                                        "log-enabled": "false", "unix-socket-enabled": "false"})
        text = _set_keys(text, "monitor", {"store-enabled": "false"})
        text = _set_keys(text, "ifql", {"enabled": "false"})
        text = _disable_tables(text)
        self.config.write_text(text)

    def answers(self) -> bool:
        """Whether ``GET /ping`` answers 204."""
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1.0) as r:
                return bool(r.status == 204)
        except (OSError, urllib.error.URLError):
            return False

    def where(self) -> str:
        """``GET {url}/ping``."""
        return f"GET {self.url}/ping"


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
