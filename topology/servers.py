"""Servers the exchange uses but is not made of (Redis, ZooKeeper, InfluxDB), run as processes of this machine.

A :class:`ServerProcess` starts a server program, waits until it answers, and
stops it (SIGTERM, then SIGKILL); :class:`RedisServer` is one for
``redis-server``, keeping nothing on disk; :class:`ZooKeeperServer` one for
Debian's ZooKeeper 3.8 (a Java program), keeping its data in its folder, and
:class:`ZooKeeperEnsemble` several of them that elect a leader among
themselves (or a single one); :class:`InfluxDBServer` one for ``influxd``
(InfluxDB 1.x), keeping its data in its folder.  The launcher runs the Redis,
the ZooKeeper and the InfluxDB a topology names on this machine
(``topology/launcher.py``); the tests run theirs on free ports
(``tests/servers.py``).  :func:`terminate` is how the launcher
stops its nodes too: one way to stop a process.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Final

from topology.ports import free_port

REDIS_SERVER: Final = "redis-server"
REDIS_PORT: Final = 6379  # the port of a redis:// URL that names none
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0

JAVA: Final = "java"
# Debian's zookeeper package (libzookeeper-java): the jar's manifest names its other jars, slf4j-api among them but
# no logging behind it; these two (dependencies of the same package) make it log through log4j 1.2, to a file.
# (Not /usr/share/java/*: that folder holds several slf4j bindings, and slf4j would pick one of them at random.)
ZOOKEEPER_JAR: Final = Path("/usr/share/java/zookeeper.jar")
ZOOKEEPER_LOG_JARS: Final = (Path("/usr/share/java/slf4j-log4j12.jar"), Path("/usr/share/java/log4j-1.2.jar"))
ZOOKEEPER_MAIN: Final = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
ZOOKEEPER_PORT: Final = 2181  # the port of a [zookeeper] host that names none
ZOOKEEPER_TICK_MS: Final = 500  # sessions may last 2 to 40 ticks: 1 to 20 s (topology/zk.py asks for 4 s)
JVM_SIGTERM: Final = 128 + signal.SIGTERM  # a JVM's exit status after its clean stop on SIGTERM
INFLUXD: Final = "influxd"  # InfluxDB 1.x's server (Debian: influxdb)
INFLUXDB_PORT: Final = 8086  # the port of an http:// [influxdb] url that names none


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


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Return the host and port of ``"host:port"``, ``"[v6]:port"`` or ``"host"`` (then ``default_port``)."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port or (":" in host and not host.startswith("[")):
        return text.strip("[]"), default_port
    return host.strip("[]"), int(port)


def four_letter(host: str, port: int, word: str, timeout: float = 1.0) -> str | None:
    """Return a ZooKeeper server's answer to a four-letter word (``srvr``, ``ruok``...), or None when none comes.

    A server answers only the words of its ``4lw.commands.whitelist`` (by default ``srvr`` alone), and says so
    for the others.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(word.encode())
            chunks = []
            while chunk := s.recv(4096):  # the server closes the connection after its answer
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode(errors="replace") if chunks else None


def zookeeper_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a ZooKeeper server serves on ``host:port``: its ``srvr`` answer gives its mode.

    A server of an ensemble that has no leader (no quorum) answers, but does not serve, and is not counted.
    """
    answer = four_letter(host, port, "srvr", timeout)
    return answer is not None and "Mode: " in answer


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
        self._started = 0.0
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
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process (again, when it was stopped), without waiting: :meth:`wait_ready` waits.

        Servers that answer only together (a ZooKeeper ensemble) are each spawned, then waited for.
        """
        if self.running:
            return
        self.stop()  # a process of ours that died: reap it, close its log
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed by stop())
        self._started = time.monotonic()
        self.ready_after = None
        self._proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=self.cwd, start_new_session=True)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the spawned server answers (:meth:`answers`).

        Raises
        ------
        ServerError
            When it exits (it is reaped), or does not answer within ``timeout`` s (it is stopped); with the tail
            of its log.
        """
        deadline = time.monotonic() + timeout
        while not self.check_ready():
            if time.monotonic() >= deadline:
                self.stop()
                raise ServerError(f"{self.what} did not answer on {self.where()} within {timeout:.0f} s; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.02)

    def check_ready(self) -> bool:
        """Whether the spawned server answers now (then ``ready_after`` says how long it took).

        Raises
        ------
        ServerError
            When it was not spawned, or has exited (it is reaped); with the tail of its log.
        """
        if self._proc is None:
            raise ServerError(f"{self.what} was not started")
        if self._proc.poll() is not None:
            rc = self._proc.returncode
            self.stop()
            raise ServerError(f"{self.what} exited with status {rc} on start; log {self.log_path}:\n"
                              f"{self.log_tail()}")
        if self.ready_after is None and self.answers():
            self.ready_after = time.monotonic() - self._started
        return self.ready_after is not None

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


class ZooKeeperServer(ServerProcess):
    """A ZooKeeper 3.8 server (``java ... QuorumPeerMain zoo.cfg``), alone or one of an ensemble.

    Everything is in its folder ``root``: ``zoo.cfg`` and ``log4j.properties`` (written at every start),
    ``data/`` (snapshots, transaction log, ``myid``: kept, so a restart comes back with its znodes and
    sessions) and by default its log, ``zookeeper.log``.  It ticks every 500 ms, so a session may last
    from 1 to 20 s; its admin HTTP server is off; it answers the four-letter words ``ruok``, ``srvr`` and
    ``mntr`` on its client port.

    Parameters
    ----------
    host
        The address it answers clients on (``localhost`` binds 127.0.0.1).
    port
        Its client port.
    root
        Its folder (created on start).
    java
        The ``java`` executable.
    jar
        ZooKeeper's jar (Debian's by default; its manifest names the jars it needs).
    myid, quorum
        For a server of an ensemble: its number (1, 2 ...) and every server's ``(host, peer port, election
        port)``, first the one numbered 1.  Without them: a standalone server.
    log_path
        Its log (default ``root/zookeeper.log``).
    heap_mb
        Its Java heap at most.

    Attributes
    ----------
    hosts
        ``host:port``, as a topology's ``[zookeeper] hosts`` names it.
    """

    what = "zookeeper"

    def __init__(self, host: str, port: int, root: Path, *, java: str = JAVA, jar: Path = ZOOKEEPER_JAR,
                 myid: int | None = None, quorum: Sequence[tuple[str, int, int]] = (), log_path: Path | None = None,
                 heap_mb: int = 256) -> None:
        root = root.absolute()
        self.host = host
        self.port = port
        self.root = root
        self.config = root / "zoo.cfg"
        self.data_dir = root / "data"
        self.myid = myid
        self.quorum = tuple(quorum)
        self.hosts = f"{f'[{host}]' if ':' in host else host}:{port}"
        log_path = (log_path or root / "zookeeper.log").absolute()
        classpath = os.pathsep.join(str(p) for p in (jar, *(j for j in ZOOKEEPER_LOG_JARS if j.exists())))
        super().__init__([java, f"-Xmx{heap_mb}m", "-XX:+UseSerialGC", "-Dzookeeper.jmx.log4j.disable=true",
                          f"-Dlog4j.configuration={(root / 'log4j.properties').as_uri()}", "-cp", classpath,
                          ZOOKEEPER_MAIN, str(self.config)], log_path, cwd=root)

    def __repr__(self) -> str:
        return f"ZooKeeperServer({self.hosts}, running={self.running})"

    def answers(self) -> bool:
        """Whether it serves (``srvr`` gives its mode: standalone, leader or follower)."""
        return zookeeper_answers(self.host, self.port)

    def where(self) -> str:
        """``host:port``."""
        return self.hosts

    def mode(self) -> str | None:
        """Its mode, as ``srvr`` says it (``standalone``, ``leader``, ``follower``), or None when it does not serve."""
        answer = four_letter(self.host, self.port, "srvr")
        for line in (answer or "").splitlines():
            if line.startswith("Mode: "):
                return line[6:].strip()
        return None

    def spawn(self) -> None:
        """Write its configuration and start it, without waiting (see :meth:`ServerProcess.spawn`)."""
        if not self.running:
            self._write_config()
        super().spawn()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Stop it (SIGTERM, then SIGKILL after ``timeout`` s); return its exit status, 0 for the JVM's clean stop."""
        code = super().stop(timeout)
        return 0 if code == JVM_SIGTERM else code

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        bind = "127.0.0.1" if self.host == "localhost" else self.host
        lines = [
            "# Written by exchange-fabric (topology/servers.py) at every start of this server.",
            f"tickTime={ZOOKEEPER_TICK_MS}",
            "initLimit=20",
            "syncLimit=10",
            f"minSessionTimeout={2 * ZOOKEEPER_TICK_MS}",
            f"maxSessionTimeout={40 * ZOOKEEPER_TICK_MS}",
            f"dataDir={self.data_dir}",
            f"clientPort={self.port}",
            f"clientPortAddress={bind}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,srvr,mntr",
            "autopurge.snapRetainCount=3",
            "autopurge.purgeInterval=1",
        ]
        if self.quorum:
            lines += [f"server.{i}={h}:{peer}:{election}" for i, (h, peer, election) in enumerate(self.quorum, 1)]
            (self.data_dir / "myid").write_text(f"{self.myid}\n")
        self.config.write_text("\n".join(lines) + "\n")
        (self.root / "log4j.properties").write_text("\n".join([
            "# Written by exchange-fabric (topology/servers.py): the server logs to one file, never the console.",
            "log4j.rootLogger=INFO, FILE",
            "log4j.appender.FILE=org.apache.log4j.FileAppender",
            f"log4j.appender.FILE.File={self.log_path}",
            "log4j.appender.FILE.Append=true",
            "log4j.appender.FILE.layout=org.apache.log4j.PatternLayout",
            "log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1}: %m%n",
        ]) + "\n")


class ZooKeeperEnsemble:
    """ZooKeeper servers of this machine that serve together: one standalone server, or an ensemble of several.

    Parameters
    ----------
    hosts
        ``(host, client port)`` of every server, in the order of a topology's ``[zookeeper] hosts``.
    root
        The folder of a single server; of an ensemble, ``root/1``, ``root/2`` ... (created on start).
    log_dir
        Where their logs go (``zookeeper.log``, or ``zookeeper-1.log`` ...); default: each server's folder.
    java, jar
        See :class:`ZooKeeperServer`.

    Attributes
    ----------
    servers
        The servers, numbered from 1 in this order (each ``myid``).

    Notes
    -----
    The servers of an ensemble talk to each other on two more ports each (the peer and the election port),
    chosen free on their addresses when the ensemble is made and kept until it is dropped.
    """

    def __init__(self, hosts: Sequence[tuple[str, int]], root: Path, log_dir: Path | None = None, *,
                 java: str = JAVA, jar: Path = ZOOKEEPER_JAR) -> None:
        if not hosts:
            raise ValueError("a ZooKeeper ensemble needs at least one server")
        if len(hosts) == 1:
            host, port = hosts[0]
            log = None if log_dir is None else log_dir / "zookeeper.log"
            self.servers = [ZooKeeperServer(host, port, root, java=java, jar=jar, log_path=log)]
            return
        quorum = []
        taken = {port for _, port in hosts}
        for host, _ in hosts:
            bind = "127.0.0.1" if host == "localhost" else host
            two: list[int] = []
            while len(two) < 2:
                if (p := free_port(bind)) not in taken:
                    taken.add(p)
                    two.append(p)
            quorum.append((bind, two[0], two[1]))
        self.servers = [ZooKeeperServer(host, port, root / str(i), java=java, jar=jar, myid=i, quorum=quorum,
                                        log_path=None if log_dir is None else log_dir / f"zookeeper-{i}.log")
                        for i, (host, port) in enumerate(hosts, 1)]

    def __repr__(self) -> str:
        return f"ZooKeeperEnsemble({self.hosts}, running={self.running})"

    @property
    def hosts(self) -> str:
        """Every server's ``host:port``, comma-separated: kazoo's ``hosts`` argument."""
        return ",".join(s.hosts for s in self.servers)

    @property
    def running(self) -> bool:
        """Whether every server's process is alive."""
        return all(s.running for s in self.servers)

    def where(self) -> str:
        """Every server's ``host:port``."""
        return self.hosts

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the servers not running (each one's configuration written again) and wait until all serve.

        An ensemble serves once a majority of its servers have elected a leader: they are all started first.

        Raises
        ------
        ServerError
            When one exits, or they do not all serve within ``timeout`` s; the servers this call started are
            stopped.
        """
        started = [s for s in self.servers if not s.running]
        for s in started:
            s.spawn()
        deadline = time.monotonic() + timeout
        try:
            while not all([s.check_ready() for s in self.servers]):
                if time.monotonic() >= deadline:
                    late = [s for s in self.servers if s.ready_after is None]
                    raise ServerError(f"zookeeper did not serve on {', '.join(s.hosts for s in late)} within "
                                      f"{timeout:.0f} s; log {late[0].log_path}:\n{late[0].log_tail()}")
                time.sleep(0.02)
        except ServerError:
            for s in started:
                s.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Stop every server (SIGTERM, then SIGKILL after ``timeout`` s); return the first non-zero status, else 0."""
        codes = [s.stop(timeout) for s in reversed(self.servers)]
        if all(c is None for c in codes):
            return None
        return next((c for c in codes if c), 0)

    def kill(self) -> None:
        """Kill every server (SIGKILL)."""
        for s in self.servers:
            s.kill()


def influxdb_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether an InfluxDB 1.x answers ``GET <url>/ping`` with 204."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/ping", timeout=timeout) as r:
            return bool(r.status == 204)
    except (OSError, urllib.error.URLError, ValueError):
        return False


class InfluxDBServer(ServerProcess):
    """An ``influxd`` (InfluxDB 1.x) keeping everything in its folder: a restart comes back with its data.

    Its configuration is ``influxd config`` (the installed version's defaults) with every listener on
    ``host``: the HTTP API on ``port``, the RPC of backups on ``rpc_port``; usage reports, the monitor's
    own database, the query log and the graphite, collectd, OpenTSDB and UDP listeners are off.

    Parameters
    ----------
    binary
        The ``influxd`` executable.
    host
        The address it binds and answers on (``localhost`` binds 127.0.0.1).
    port
        Its HTTP API's port.
    root
        Its folder: ``influxdb.conf`` (written at every start), ``meta/``, ``data/``, ``wal/`` (created on start).
    rpc_port
        Its RPC port (backups); default: a free one of ``host``.
    log_path
        Its log (default ``root/influxd.log``).

    Attributes
    ----------
    url
        ``http://host:port`` of its HTTP API.
    """

    what = INFLUXD

    def __init__(self, binary: str, host: str, port: int, root: Path, *, rpc_port: int | None = None,
                 log_path: Path | None = None) -> None:
        root = root.absolute()
        self.binary = binary
        self.host = host
        self.bind = "127.0.0.1" if host == "localhost" else host
        self.http_port = port
        if rpc_port is None:
            rpc_port = free_port(self.bind)
            while rpc_port == port:
                rpc_port = free_port(self.bind)
        self.rpc_port = rpc_port
        self.root = root
        self.config = root / "influxdb.conf"
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        super().__init__([binary, "-config", str(self.config)], log_path or root / "influxd.log")

    def __repr__(self) -> str:
        return f"InfluxDBServer({self.url}, running={self.running})"

    def answers(self) -> bool:
        """Whether ``GET /ping`` answers 204."""
        return influxdb_answers(self.url)

    def where(self) -> str:
        """``GET {url}/ping``."""
        return f"GET {self.url}/ping"

    def spawn(self) -> None:
        """Write its configuration and start it, without waiting (see :meth:`ServerProcess.spawn`)."""
        if not self.running:
            self.root.mkdir(parents=True, exist_ok=True)
            self.config.write_text(self.configuration())
        super().spawn()

    def configuration(self) -> str:
        """Return its ``influxdb.conf``: ``influxd config`` with the changes of the class's text."""
        text = subprocess.run([self.binary, "config"], check=True, capture_output=True, timeout=30).stdout.decode()
        bind = f"[{self.bind}]" if ":" in self.bind else self.bind
        top: dict[str, str] = {"bind-address": _toml_str(f"{bind}:{self.rpc_port}")}
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
        text = _set_keys(text, "http", {"bind-address": _toml_str(f"{bind}:{self.http_port}"),
                                        "log-enabled": "false", "unix-socket-enabled": "false"})
        text = _set_keys(text, "monitor", {"store-enabled": "false"})
        text = _set_keys(text, "ifql", {"enabled": "false"})
        return _disable_tables(text)


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


__all__ = ["INFLUXD", "INFLUXDB_PORT", "JAVA", "REDIS_PORT", "REDIS_SERVER", "ZOOKEEPER_JAR", "ZOOKEEPER_PORT",
           "InfluxDBServer", "RedisServer", "ServerError", "ServerProcess", "ZooKeeperEnsemble", "ZooKeeperServer",
           "four_letter", "influxdb_answers", "is_loopback", "log_tail", "redis_answers", "split_host_port",
           "terminate", "zookeeper_answers"]
