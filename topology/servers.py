"""Servers the exchange uses but is not made of (Redis), run as processes of this machine.

A :class:`ServerProcess` starts a server program, waits until it answers, and
stops it (SIGTERM, then SIGKILL); :class:`RedisServer` is one for
``redis-server``, keeping nothing on disk.  The launcher runs the Redis a
topology names on this machine (``topology/launcher.py``); the tests run theirs
on free ports (``tests/servers.py``).  :func:`terminate` is how the launcher
stops its nodes too: one way to stop a process.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Final

REDIS_SERVER: Final = "redis-server"
REDIS_PORT: Final = 6379  # the port of a redis:// URL that names none
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0


class ServerError(RuntimeError):
    """A server did not start."""


def terminate(procs: Sequence[subprocess.Popen[Any]], timeout: float = STOP_TIMEOUT_S) -> list[int]:
    """Stop processes: SIGTERM to each one running, SIGKILL to those still running after ``timeout`` s in all.

    Returns
    -------
    list[int]
        Their exit statuses, in the order given (a negative status is the signal that ended one).
    """
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def log_tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a log file, or ``"(no log)"``."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redis_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis answers ``PING`` on ``host:port`` (a refusal such as ``-NOAUTH`` is a Redis answering too)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


class ServerProcess:
    """A server program run as a child process, in a session of its own (a Ctrl-C of the terminal is not its).

    Parameters
    ----------
    argv
        The command.
    log_path
        The file its standard output and error go to (appended).
    cwd
        Its working directory (default: ours).
    """

    #: The program's name, for messages.
    what = "server"

    def __init__(self, argv: Sequence[str], log_path: Path, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.ready_after: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def answers(self) -> bool:
        """Whether the server answers (a subclass asks it over its protocol)."""
        raise NotImplementedError

    def where(self) -> str:
        """Where it answers, for messages."""
        return "?"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id, or ``None`` when it was never started or has been stopped."""
        return None if self._proc is None else self._proc.pid

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of the server's log."""
        return log_tail(self.log_path, lines)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server (again, when it was stopped) and wait until it answers.

        Raises
        ------
        ServerError
            When it exits, or does not answer within ``timeout`` s; with the tail of its log.
        """
        if self.running:
            return
        self.stop()  # a process of ours that died: reap it, close its log
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed by stop())
        started = time.monotonic()
        self._proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=self.cwd, start_new_session=True)
        while time.monotonic() - started < timeout:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self.stop()
                raise ServerError(f"{self.what} exited with status {rc} on start; log {self.log_path}:\n"
                                  f"{self.log_tail()}")
            if self.answers():
                self.ready_after = time.monotonic() - started
                return
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"{self.what} did not answer on {self.where()} within {timeout:.0f} s; "
                          f"log {self.log_path}:\n{self.log_tail()}")

    def _end(self, sig: signal.Signals, timeout: float) -> int | None:
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if sig == signal.SIGKILL:
                proc.kill()
            code = terminate([proc], timeout)[0]
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s); return its exit status (None: not started)."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server (SIGKILL): a crash, for failure tests."""
        self._end(signal.SIGKILL, STOP_TIMEOUT_S)


class RedisServer(ServerProcess):
    """A ``redis-server`` that keeps nothing on disk: a restart comes back empty.

    Parameters
    ----------
    binary
        The ``redis-server`` executable.
    host
        The address it binds and answers on (``localhost`` binds 127.0.0.1).
    port
        Its port.
    root
        Its working directory (created on start).
    log_path
        Its log (default ``root/redis-server.log``).

    Attributes
    ----------
    url
        ``redis://host:port/0``.
    """

    what = REDIS_SERVER

    def __init__(self, binary: str, host: str, port: int, root: Path, log_path: Path | None = None) -> None:
        bind = "127.0.0.1" if host == "localhost" else host
        super().__init__([binary, "--port", str(port), "--bind", bind, "--save", "", "--appendonly", "no",
                          "--dir", str(root)], log_path or root / "redis-server.log")
        self.host = host
        self.port = port
        self.root = root
        self.url = f"redis://{f'[{host}]' if ':' in host else host}:{port}/0"

    def __repr__(self) -> str:
        return f"RedisServer({self.url}, running={self.running})"

    def answers(self) -> bool:
        """Whether it answers ``PING``."""
        return redis_answers(self.host, self.port)

    def where(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server (again: same port, empty) and wait until it answers ``PING``.

        Raises
        ------
        ServerError
            When it exits (its port taken, say), or does not answer within ``timeout`` s; with the tail of its log.
        """
        os.makedirs(self.root, exist_ok=True)
        super().start(timeout)


__all__ = ["REDIS_PORT", "REDIS_SERVER", "RedisServer", "ServerError", "ServerProcess", "is_loopback", "log_tail",
           "redis_answers", "terminate"]
