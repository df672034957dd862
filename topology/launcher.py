"""Start a whole topology on this machine as processes, and stop it cleanly.

Each node runs as ``python -m nodes.<kind> --topology FILE --id NAME``, the same
command a host of a real deployment runs (``exfab node KIND ...``; see
``docs/deploy.md``).  A node prints ``READY <kind> <name>`` on its standard
output once it serves; the launcher waits for that line, in start order
(matchers first, so gateways find them), and stops everything in reverse order
with SIGTERM, then SIGKILL for a node that does not stop in time.

A topology whose recent state is a Redis on this machine (``[stores] recent =
"redis"``, a loopback host in ``[redis] url``) gets one: when nothing answers
``PING`` there, the launcher runs the installed ``redis-server`` on that port
before any node (keeping nothing on disk: its folder is
``<data_dir>/redis``, its log ``<data_dir>/logs/redis.log``) and stops it after
the nodes.  A Redis that already answers is used as it is, and left running.

A topology whose ``[zookeeper] hosts`` are all on this machine (loopback
addresses) gets its ZooKeeper the same way, before everything else: when none
of those addresses answers, the launcher runs Debian's ZooKeeper 3.8 (``java``
and ``/usr/share/java/zookeeper.jar``) on each of them, a standalone server
for one host, an ensemble for several (``127.0.0.1:2181``,
``127.0.0.2:2181``, ``127.0.0.3:2181``: three servers that elect a leader),
keeping its data under ``<data_dir>/zookeeper`` (a restart comes back with
the znodes and sessions it had) and its log in ``<data_dir>/logs``, and stops
it last.  A ZooKeeper that serves on every one of them is used as it is.

A topology whose ticker writes its price history to an InfluxDB on this machine
(``[stores] history = "influxdb"``, a loopback host in ``[influxdb] url``) gets
one too: when nothing answers ``/ping`` there, the launcher runs the installed
``influxd`` (InfluxDB 1.x) on that port, keeping its data under
``<data_dir>/influxdb`` (a restart keeps the history) and its log in
``<data_dir>/logs/influxdb.log``, and stops it after the nodes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar
from urllib.parse import urlsplit

from topology.load import load
from topology.model import GATEWAY, MATCHER, PERSISTENCE, TICKER, Topology
from topology.servers import (
    INFLUXD,
    INFLUXDB_PORT,
    JAVA,
    REDIS_PORT,
    REDIS_SERVER,
    ZOOKEEPER_JAR,
    ZOOKEEPER_PORT,
    InfluxDBServer,
    RedisServer,
    ServerError,
    ZooKeeperEnsemble,
    four_letter,
    influxdb_answers,
    is_loopback,
    log_tail,
    redis_answers,
    split_host_port,
    terminate,
)

# Node kinds this version runs (every kind a topology can name).
RUNNABLE = (MATCHER, PERSISTENCE, TICKER, GATEWAY)


_S = TypeVar("_S", RedisServer, ZooKeeperEnsemble, InfluxDBServer)

class LaunchError(RuntimeError):
    """A node did not start."""


@dataclass
class NodeProcess:
    """One running node."""

    kind: str
    name: str
    proc: subprocess.Popen[str]
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    ready_after: float | None = None

    @property
    def label(self) -> str:
        """``kind:name``."""
        return f"{self.kind}:{self.name}"

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None


class Launcher:
    """Start, watch and stop the nodes of a topology.

    Parameters
    ----------
    topology_path
        The topology file.
    workdir
        The nodes' working directory: the topology's ``data_dir`` (journals,
        stores) is relative to it. Node logs go to ``<data_dir>/logs``.
    kinds
        Which kinds of node to start.
    extra_args
        More command-line options for the nodes of a kind (e.g. ``{"matcher": ["--fsync", "none"]}``).
    extra_env
        More environment variables for every node (e.g. ``EXFAB_PROFILE_DIR``, see ``nodes/profiling.py``).

    Attributes
    ----------
    nodes
        The running nodes, in start order.
    redis
        The Redis this launcher runs (see :meth:`start_redis`), or ``None``.
    zookeeper
        The ZooKeeper this launcher runs (see :meth:`start_zookeeper`), or ``None``.
    influxdb
        The InfluxDB this launcher runs (see :meth:`start_influxdb`), or ``None``.
    """

    def __init__(self, topology_path: str | os.PathLike[str], workdir: str | os.PathLike[str] = ".",
                 kinds: Iterable[str] = RUNNABLE, extra_args: dict[str, list[str]] | None = None,
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.path = Path(topology_path).resolve()
        self.topo: Topology = load(self.path)
        self.workdir = Path(workdir).resolve()
        self.kinds = tuple(kinds)
        self.extra_args = extra_args or {}
        self.extra_env = dict(extra_env or {})
        self.nodes: list[NodeProcess] = []
        self.log_dir = self.workdir / self.topo.data_dir / "logs"
        self.redis: RedisServer | None = None  # the Redis this launcher runs, if it runs one
        self.zookeeper: ZooKeeperEnsemble | None = None  # the ZooKeeper this launcher runs, if it runs one
        self.influxdb: InfluxDBServer | None = None  # the InfluxDB this launcher runs, if it runs one

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def start_node(self, kind: str, name: str, timeout: float = 120.0) -> NodeProcess:
        """Start one node and wait until it says it is ready.

        Raises
        ------
        LaunchError
            When it exits or stays silent for ``timeout`` seconds (the first
            start of a matcher compiles the order book kernels: give it time),
            or when the topology's local ZooKeeper, Redis or InfluxDB cannot be
            run (see :meth:`start_zookeeper`, :meth:`start_redis`,
            :meth:`start_influxdb`: they are run first when they do not answer).
        """
        self.start_zookeeper()
        self.start_redis()
        self.start_influxdb()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{kind}-{name}.log"
        cmd = [sys.executable, "-m", f"nodes.{kind}", "--topology", str(self.path), "--id", name,
               *self.extra_args.get(kind, [])]
        log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(cmd, cwd=self.workdir, env=self._env(), stdout=subprocess.PIPE, stderr=log_file,
                                text=True, start_new_session=True)
        log_file.close()
        node = NodeProcess(kind, name, proc, log_path)
        line = read_line(proc.stdout, timeout)  # type: ignore[arg-type]
        if line is None or not line.startswith("READY"):
            proc.kill()
            proc.wait()
            tail = log_tail(log_path)
            raise LaunchError(f"{kind} {name} did not start (see {log_path}):\n{tail}")
        node.ready_after = time.monotonic() - node.started
        # Keep draining its standard output so it can never block on a full pipe.
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
        self.nodes = [n for n in self.nodes if not (n.kind == kind and n.name == name)] + [node]
        return node

    def start_redis(self, progress: IO[str] | None = None) -> RedisServer | None:
        """Run the topology's local Redis unless one answers there already; return the one this launcher runs.

        Nothing happens (``None``) unless the recent state is ``"redis"`` at a
        loopback host, nor when a Redis answers ``PING`` at its host and port:
        that one is used as it is.  Otherwise ``redis-server`` is started on
        that port (the one this launcher ran, when it died: again), and this
        waits until it answers.

        Raises
        ------
        LaunchError
            When ``redis-server`` is not installed, exits (its port taken by
            another program, say) or does not answer within 30 s; or when the
            URL asks for TLS, a user or a password (run such a Redis yourself).
        """
        at = local_redis(self.topo)
        if at is None:
            return None
        assert self.topo.redis is not None  # (local_redis found it)
        url = self.topo.redis.url
        server = self.redis
        if server is None:
            host, port = at
            if redis_answers(host, port):
                return None
            parts = urlsplit(url)
            if parts.scheme != "redis" or parts.password is not None or parts.username:
                raise LaunchError(f"[redis] url {url} is on this machine, where nothing answers; the launcher runs "
                                  "only a plain one (redis://, no user or password): start that Redis yourself")
            binary = shutil.which(REDIS_SERVER)
            if binary is None:
                raise LaunchError(f'[stores] recent = "redis" at {url}, on this machine, where nothing answers and '
                                  f"{REDIS_SERVER} is not installed: install it (Debian: apt-get install "
                                  "redis-server), or point [redis] url at a running Redis")
            server = RedisServer(binary, host, port, self.workdir / self.topo.data_dir / "redis",
                                 log_path=self.log_dir / "redis.log")
        elif server.running:
            return server
        self.redis = self._run(server, f"{REDIS_SERVER} on {server.where()}", f"the Redis of [redis] url {url}",
                               progress)
        return server

    def start_zookeeper(self, progress: IO[str] | None = None) -> ZooKeeperEnsemble | None:
        """Run the topology's local ZooKeeper unless it serves there already; return the one this launcher runs.

        Nothing happens (``None``) unless every ``[zookeeper] hosts`` entry is a
        loopback address, nor when a ZooKeeper serves on every one of them:
        that one is used as it is.  Otherwise a ZooKeeper server is started on
        each (the ones this launcher ran that died: again), and this waits
        until they all serve.

        Raises
        ------
        LaunchError
            When ``java`` or ZooKeeper's jar is missing, when some of the hosts
            answer and others do not (an ensemble of someone else's, partly
            up: the launcher does not add servers to it), or when a server
            exits (its port taken, say) or they do not serve within 30 s.
        """
        at = local_zookeeper(self.topo)
        if at is None:
            return None
        ensemble = self.zookeeper
        if ensemble is None:
            answers = [four_letter(h, p, "srvr") for h, p in at]
            if all(a is not None and "Mode: " in a for a in answers):
                return None
            hosts = ", ".join(f"{h}:{p}" for h, p in at)
            if any(a is not None for a in answers):
                up = ", ".join(f"{h}:{p}" for (h, p), a in zip(at, answers, strict=True) if a is not None)
                raise LaunchError(f"[zookeeper] hosts {hosts} are on this machine, where a ZooKeeper answers on "
                                  f"{up} but does not serve on all of them: start the missing servers or stop the "
                                  "others (the launcher runs a ZooKeeper only where none answers)")
            java = shutil.which(JAVA)
            if java is None or not ZOOKEEPER_JAR.exists():
                missing = f"{JAVA} is not installed" if java is None else f"there is no {ZOOKEEPER_JAR}"
                raise LaunchError(f"[zookeeper] hosts {hosts} are on this machine, where nothing answers, and "
                                  f"{missing}: install ZooKeeper (Debian: apt-get install zookeeper), or point "
                                  "[zookeeper] hosts at a running ensemble")
            ensemble = ZooKeeperEnsemble(at, self.workdir / self.topo.data_dir / "zookeeper", self.log_dir,
                                         java=java)
        elif ensemble.running:
            return ensemble
        n = len(ensemble.servers)
        self.zookeeper = self._run(ensemble, f"zookeeper on {ensemble.where()}"
                                   f"{f' (an ensemble of {n})' if n > 1 else ''}",
                                   "the ZooKeeper of [zookeeper] hosts", progress)
        return ensemble

    def start_influxdb(self, progress: IO[str] | None = None) -> InfluxDBServer | None:
        """Run the topology's local InfluxDB unless one answers there already; return the one this launcher runs.

        Nothing happens (``None``) unless the price history is ``"influxdb"`` at a
        loopback host, nor when an InfluxDB answers ``/ping`` there: that one is
        used as it is.  Otherwise ``influxd`` is started on that port (the one
        this launcher ran, when it died: again), and this waits until it answers.

        Raises
        ------
        LaunchError
            When ``influxd`` is not installed, exits (its port taken, say) or
            does not answer within 30 s; or when the URL is not plain ``http://``.
        """
        at = local_influxdb(self.topo)
        if at is None:
            return None
        assert self.topo.influxdb is not None  # (local_influxdb found it)
        url = self.topo.influxdb.url
        server = self.influxdb
        if server is None:
            if influxdb_answers(url):
                return None
            if urlsplit(url).scheme != "http":
                raise LaunchError(f"[influxdb] url {url} is on this machine, where nothing answers; the launcher "
                                  "runs only a plain one (http://): start that InfluxDB yourself")
            binary = shutil.which(INFLUXD)
            if binary is None:
                raise LaunchError(f'[stores] history = "influxdb" at {url}, on this machine, where nothing answers '
                                  f"and {INFLUXD} is not installed: install InfluxDB 1.x (Debian: apt-get install "
                                  'influxdb), point [influxdb] url at a running one, or use history = "sqlite"')
            host, port = at
            server = InfluxDBServer(binary, host, port, self.workdir / self.topo.data_dir / "influxdb",
                                    log_path=self.log_dir / "influxdb.log")
        elif server.running:
            return server
        self.influxdb = self._run(server, f"{INFLUXD} on {server.url}", f"the InfluxDB of [influxdb] url {url}",
                                  progress)
        return server

    @staticmethod
    def _run(server: _S, what: str, whose: str, progress: IO[str] | None) -> _S:
        # Start (or start again: ours, when it died) a server the topology needs here, saying so.
        if progress is not None:
            progress.write(f"starting {what}...\n")
            progress.flush()
        try:
            server.start()
        except ServerError as e:
            raise LaunchError(f"{whose} did not start: {e}") from e
        return server

    def start(self, progress: IO[str] | None = None) -> None:
        """Start every node of the chosen kinds in the topology's start order (a local ZooKeeper, Redis and
        InfluxDB first, if it needs them)."""
        try:
            self.start_zookeeper(progress)
            self.start_redis(progress)
            self.start_influxdb(progress)
            for node in self.topo.nodes():
                if node.kind not in self.kinds:
                    continue
                if progress is not None:
                    progress.write(f"starting {node.kind} {node.name}...\n")
                    progress.flush()
                self.start_node(node.kind, node.name)
        except BaseException:
            self.stop()
            raise

    def node(self, kind: str, name: str) -> NodeProcess:
        """Return the running node ``kind:name``."""
        for n in self.nodes:
            if n.kind == kind and n.name == name:
                return n
        raise KeyError(f"{kind} {name} is not running")

    def kill(self, kind: str, name: str) -> None:
        """Kill a node at once (``kill -9``): what a crash looks like."""
        n = self.node(kind, name)
        n.proc.send_signal(signal.SIGKILL)
        n.proc.wait()

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout`` s), last started first, then the InfluxDB, the
        Redis and the ZooKeeper it runs.

        Returns
        -------
        dict[str, int | None]
            Each one's exit status, by ``kind:name`` (the InfluxDB: ``influxdb``; the Redis: ``redis``; the
            ZooKeeper: ``zookeeper``, the first non-zero status of an ensemble's servers).
        """
        nodes = list(reversed(self.nodes))
        codes: dict[str, int | None] = dict(zip((n.label for n in nodes), terminate([n.proc for n in nodes], timeout),
                                                strict=True))
        self.nodes = []
        if self.influxdb is not None:
            codes["influxdb"] = self.influxdb.stop(timeout)
            self.influxdb = None
        if self.redis is not None:
            codes["redis"] = self.redis.stop(timeout)
            self.redis = None
        if self.zookeeper is not None:
            codes["zookeeper"] = self.zookeeper.stop(timeout)
            self.zookeeper = None
        return codes

    def __enter__(self) -> Launcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_redis(topo: Topology) -> tuple[str, int] | None:
    """Return the host and port of the topology's Redis when it is one of this machine's (a loopback host), else None.

    Only a topology whose recent state is Redis names one (``[stores] recent = "redis"``).
    """
    if topo.stores.recent != "redis" or topo.redis is None:
        return None
    parts = urlsplit(topo.redis.url)
    if parts.hostname is None or not is_loopback(parts.hostname):
        return None
    return parts.hostname, parts.port or REDIS_PORT


def local_influxdb(topo: Topology) -> tuple[str, int] | None:
    """Return the host and port of the topology's InfluxDB when it is one of this machine's (a loopback host), else
    None.

    Only a topology whose price history is InfluxDB names one (``[stores] history = "influxdb"``).
    """
    if topo.stores.history != "influxdb" or topo.influxdb is None:
        return None
    parts = urlsplit(topo.influxdb.url)
    if parts.hostname is None or not is_loopback(parts.hostname):
        return None
    return parts.hostname, parts.port or INFLUXDB_PORT


def local_zookeeper(topo: Topology) -> list[tuple[str, int]] | None:
    """Return the host and port of every server of the topology's ZooKeeper when all are this machine's, else None.

    This machine's means a loopback host (``127.0.0.1``, ``127.0.0.2`` ..., ``localhost``, ``::1``).
    """
    if topo.zookeeper is None:
        return None
    at = [split_host_port(h, ZOOKEEPER_PORT) for h in topo.zookeeper.hosts]
    return at if all(is_loopback(h) for h, _ in at) else None


def read_line(stream: IO[str], timeout: float) -> str | None:
    """Return one line of ``stream`` (stripped), or ``None`` after ``timeout`` seconds or at its end.

    A thread does the reading, since pipes have no portable timeout.
    """
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0].strip() if box and box[0] else None


def _drain(stream: IO[str]) -> None:
    for _ in stream:
        pass
