"""Real servers for tests, started on free ports in a test's folder: ``influxd`` (InfluxDB 1.x), ``redis-server``.

A test that needs a server calls :func:`require_binary` first: a missing binary
skips the test on a developer's machine, and fails it in CI (``CI`` set), where
``.ci/run`` installs the servers; a test that needs a server never passes silently
there without one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import pytest

from topology.ports import free_port

__all__ = ["InfluxServer", "RedisServer", "require_binary", "start_influxd", "start_redis"]

INFLUXD = "influxd"
REDIS_SERVER = "redis-server"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


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


class InfluxServer:
    """An ``influxd`` of this test run: its folder, ports and process.

    Attributes
    ----------
    url
        ``http://127.0.0.1:PORT`` of its HTTP API.
    root
        Its folder (config, data, log).
    """

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.http_port = free_port()
        self.rpc_port = free_port()
        while self.rpc_port == self.http_port:
            self.rpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = root / "influxdb.conf"
        self.log_path = root / "influxd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
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

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1.0) as r:
                return bool(r.status == 204)
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        """Start the server (again: same ports and folders) and wait until ``GET /ping`` answers 204.

        Raises
        ------
        RuntimeError
            When it does not answer within 30 s (or exits), with the tail of its log.
        """
        if self.running:
            return
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed by stop())
        self._proc = subprocess.Popen([self.binary, "-config", str(self.config)], stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self.stop()
                raise RuntimeError(f"influxd exited with status {rc} on start; log {self.log_path}:\n"
                                   f"{self.log_tail()}")
            if self._ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"influxd did not answer GET {self.url}/ping within {START_TIMEOUT_S:.0f} s; "
                           f"log {self.log_path}:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 10 s."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None


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


class RedisServer:
    """A ``redis-server`` of this test run, keeping nothing on disk: a restart comes back empty.

    Attributes
    ----------
    url
        ``redis://127.0.0.1:PORT/0``.
    root
        Its folder (working directory, log).
    """

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = root / "redis-server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"RedisServer({self.url}, running={self.running})"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        """Start the server (again: same port, empty) and wait until it answers ``PING``.

        Raises
        ------
        RuntimeError
            When it does not answer within 30 s (or exits), with the tail of its log.
        """
        if self.running:
            return
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed by stop())
        self._proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(self.root)], stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self.stop()
                raise RuntimeError(f"redis-server exited with status {rc} on start; log {self.log_path}:\n"
                                   f"{self.log_tail()}")
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {START_TIMEOUT_S:.0f} s; "
                           f"log {self.log_path}:\n{self.log_tail()}")

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 10 s."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server (SIGKILL): a crash, for failure tests."""
        self._end(signal.SIGKILL)


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
