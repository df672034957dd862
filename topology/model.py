"""The topology model: what runs where, as immutable values.

A :class:`Topology` is what a checked topology file says (see ``topology.load``
for the file format): the instruments, which shard trades each symbol, where
every node listens, and which stores hold the exchange's data.  Nodes and the
launcher read it; nothing changes it.

Ports are listening ports of the exchange's own nodes.  An endpoint's
``connect`` address is what a peer dials (``tcp://host:port``); its ``bind``
address is what the listening node binds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal, NamedTuple

from fabric.calendar import Calendar
from fabric.circuit import SEBI_LEVELS, Level
from fabric.commands import Stp
from fabric.instruments import Instrument
from fabric.records import DEFAULT_TIMEZONE
from fabric.risk import RiskLimits

# Node kinds, in the order the launcher starts them: matchers first so that
# persistence, the ticker and the gateways find their feeds ready.
MATCHER = "matcher"
PERSISTENCE = "persistence"
TICKER = "ticker"
GATEWAY = "gateway"
NODE_KINDS = (MATCHER, PERSISTENCE, TICKER, GATEWAY)

# Store kinds: the first of each is the embedded default (nothing to install).
STORE_KINDS: Mapping[str, tuple[str, ...]] = {
    "recent": ("embedded", "redis"),
    "orders": ("sqlite", "cassandra"),
    "history": ("sqlite", "influxdb"),
}

# A ticker's HTTP port: connections one client address may hold open at once (a page takes a WebSocket and a
# few requests; a proxy in front of many browsers needs more: [ticker] connections_per_address).
DEFAULT_CONNECTIONS_PER_ADDRESS = 32

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A TCP address one node listens on.

    Parameters
    ----------
    host
        The host name or address peers dial.
    port
        The TCP port, 1-65535.
    """

    host: str
    port: int

    @property
    def connect(self) -> str:
        """The ZeroMQ address a peer connects to, ``tcp://host:port``."""
        return f"tcp://{_bracket(self.host)}:{self.port}"

    @property
    def bind(self) -> str:
        """The ZeroMQ address the listening node binds.

        A loopback host binds that address only (a one-machine topology is not
        reachable from the network, and nodes on 127.0.0.1 and 127.0.0.2 may
        share a port, as on two machines); any other host binds every
        interface, because a DNS name is not something ZeroMQ can bind.
        """
        if self.host in _LOOPBACK:
            return f"tcp://{_bracket('::1' if self.host == '::1' else '127.0.0.1')}:{self.port}"
        if _is_ipv4_loopback(self.host):
            return f"tcp://{self.host}:{self.port}"
        return f"tcp://*:{self.port}"

    def __str__(self) -> str:
        return self.connect


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, ``::1``, 127.0.0.0/8)."""
    return host in _LOOPBACK or _is_ipv4_loopback(host)


def _is_ipv4_loopback(host: str) -> bool:
    # 127.0.0.0/8, written as four decimal numbers (what ZeroMQ binds as it is).
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) <= 255 for p in parts)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True, slots=True)
class Replica:
    """One matcher process of a shard.

    Parameters
    ----------
    name
        The node name, unique among matchers (``"A"`` for a single matcher,
        ``"A-1"``/``"A-2"`` by default for a pair).
    shard
        The name of the shard it serves.
    host
        The machine it runs on.
    order_port
        Its ROUTER, where gateways send orders (the primary's only).
    pub_port
        Its PUB of sequenced execution reports and book updates.
    recovery_port
        Its ROUTER that answers journal range requests (gap recovery).
    repl_port
        Where it takes the primary's sequenced input while it is secondary;
        ``None`` for a single matcher.
    """

    name: str
    shard: str
    host: str
    order_port: int
    pub_port: int
    recovery_port: int
    repl_port: int | None = None

    @property
    def order(self) -> Endpoint:
        """The order entry endpoint (ROUTER)."""
        return Endpoint(self.host, self.order_port)

    @property
    def pub(self) -> Endpoint:
        """The execution report and book update feed (PUB)."""
        return Endpoint(self.host, self.pub_port)

    @property
    def recovery(self) -> Endpoint:
        """The journal range request endpoint (ROUTER)."""
        return Endpoint(self.host, self.recovery_port)

    @property
    def repl(self) -> Endpoint | None:
        """The replication endpoint, or ``None`` for a single matcher."""
        return None if self.repl_port is None else Endpoint(self.host, self.repl_port)


@dataclass(frozen=True, slots=True)
class Shard:
    """A set of symbols matched by one matcher or by a primary/secondary pair.

    Parameters
    ----------
    name
        The shard's name, unique in the topology.
    symbols
        The symbols it trades, in file order.
    replicas
        One matcher, or two (a pair: ZooKeeper elects the primary).  The
        first is the preferred primary on a fresh start.
    """

    name: str
    symbols: tuple[str, ...]
    replicas: tuple[Replica, ...]

    @property
    def paired(self) -> bool:
        """Whether the shard is a primary/secondary pair."""
        return len(self.replicas) == 2

    def replica(self, name: str) -> Replica:
        """Return the replica called ``name``; raise ``KeyError`` when there is none."""
        for r in self.replicas:
            if r.name == name:
                return r
        raise KeyError(f"shard {self.name!r} has no replica {name!r}")

    def peer(self, name: str) -> Replica | None:
        """Return the other replica of a pair, or ``None`` for a single matcher."""
        others = [r for r in self.replicas if r.name != name]
        if len(others) == len(self.replicas):
            raise KeyError(f"shard {self.name!r} has no replica {name!r}")
        return others[0] if others else None


@dataclass(frozen=True, slots=True)
class Gateway:
    """A broker-facing gateway.

    Parameters
    ----------
    name
        The node name, unique among gateways.
    host
        The machine it runs on.
    port
        Its ROUTER, where brokers' DEALER sockets connect.
    """

    name: str
    host: str
    port: int

    @property
    def endpoint(self) -> Endpoint:
        """The broker-facing endpoint (ROUTER)."""
        return Endpoint(self.host, self.port)


@dataclass(frozen=True, slots=True)
class Broker:
    """A broker allowed to trade.

    Parameters
    ----------
    id
        The broker id carried on every order.
    name
        A readable name, for logs and screens.
    role
        ``"operator"``: its sessions may send admin commands (halts, the kill switch); ``"broker"``: orders only.
    cancel_on_disconnect
        When its session ends (logout, heartbeat timeout), the gateway has every open order of it cancelled.
    risk
        Its own risk limits; a limit it leaves out is the ``[risk]`` table's.
    stp
        Self-trade prevention: what the book does when this broker's incoming order would trade against its own
        resting order (``docs/book-semantics.md``); ``"off"`` lets them trade.
    public_key
        Its CURVE public key (Z85): a connection to a gateway with this key is this broker, and no other
        (``docs/security.md``); ``None`` in a topology without ``[security]``.
    """

    id: str
    name: str | None = None
    role: Literal["broker", "operator"] = "broker"
    cancel_on_disconnect: bool = False
    risk: RiskLimits | None = None
    stp: Stp = "off"
    public_key: str | None = None


BROKER_ROLES = ("broker", "operator")


@dataclass(frozen=True, slots=True)
class Security:
    """Who may talk to the exchange's sockets (``[security]``; ``docs/security.md``).

    Parameters
    ----------
    keys_dir
        The folder of the nodes' secret key files, ``<kind>-<name>.key_secret`` (resolved against the
        topology file's folder).
    nodes
        ``{node label: CURVE public key (Z85)}`` for every node (``"matcher:A"``, ``"gateway:gw1"``...).
    brokers
        ``"keys"``: a broker connects with the key its ``[[brokers]]`` entry lists; ``"open"`` (loopback-only
        topologies: test rigs, benchmarks): the gateways' broker port takes any connection in the clear and
        any broker id, while every socket between nodes still uses CURVE.
    """

    keys_dir: Path
    nodes: Mapping[str, str]
    brokers: str = "keys"

    def secret_file(self, label: str) -> Path:
        """Return the secret key file of the node labelled ``label`` (``kind:name``)."""
        return self.keys_dir / (label.replace(":", "-", 1) + ".key_secret")


@dataclass(frozen=True, slots=True)
class Ticker:
    """A market data node.

    A topology may run two (or more): each publishes the same market on its own feed, as exchanges publish A
    and B feeds, and clients fail over from one to the next (``docs/market-data.md``, section 9).

    Parameters
    ----------
    host
        The machine it runs on.
    pub_port
        Its PUB of last prices, bars and depth.
    http_port
        Its HTTP server: the price page, its WebSocket and ``/history``.
    snapshot_port
        Its ROUTER answering snapshot requests of the feed's subscribers.
    name
        Its node name, unique among tickers: ``"ticker"`` for the first, ``"ticker-b"``, ``"ticker-c"``... for
        the others unless the file names them.
    connections_per_address
        The most connections (WebSocket or HTTP) one client address may hold open on its HTTP port.
    """

    host: str
    pub_port: int
    http_port: int
    snapshot_port: int
    name: str = "ticker"
    connections_per_address: int = DEFAULT_CONNECTIONS_PER_ADDRESS

    @property
    def snapshot(self) -> Endpoint:
        """The snapshot service (ROUTER) of the feed."""
        return Endpoint(self.host, self.snapshot_port)

    @property
    def pub(self) -> Endpoint:
        """The market data feed (PUB)."""
        return Endpoint(self.host, self.pub_port)

    @property
    def http_host(self) -> str | None:
        """The address the HTTP server binds, as :attr:`Endpoint.bind` decides it: a loopback host's own address
        (``localhost``: 127.0.0.1), ``None`` (every interface) for any other host."""
        if self.host == "localhost":
            return "127.0.0.1"
        if self.host == "::1" or _is_ipv4_loopback(self.host):
            return self.host
        return None

    @property
    def http_url(self) -> str:
        """The price page's address, ``http://host:port/``."""
        return f"http://{_bracket(self.host)}:{self.http_port}/"

    @property
    def ws_url(self) -> str:
        """The WebSocket's address, ``ws://host:port/ws``."""
        return f"ws://{_bracket(self.host)}:{self.http_port}/ws"


@dataclass(frozen=True, slots=True)
class Index:
    """The market index the ticker computes, and its market-wide circuit breakers (``docs/security.md``).

    Parameters
    ----------
    name
        Its name (``SENSEX``).
    base
        Its value at the previous close (every constituent at its ``ref_price``).
    constituents
        ``(symbol, weight)`` of each constituent: the weight is its free-float shares.
    operator
        The broker id the ticker halts the market as when a breaker trips (an operator's id); ``None``: the
        breakers are off, the index is only shown.
    breakers
        The breaker levels, lowest first (default SEBI's: 10, 15 and 20 %).
    """

    name: str
    base: Decimal
    constituents: tuple[tuple[str, Decimal], ...]
    operator: str | None = None
    breakers: tuple[Level, ...] = SEBI_LEVELS


@dataclass(frozen=True, slots=True)
class Persistence:
    """The persistence node: it only subscribes and writes, so it listens on no port.

    Parameters
    ----------
    host
        The machine it runs on.
    """

    host: str


@dataclass(frozen=True, slots=True)
class Stores:
    """Which store holds each kind of data (see ``STORE_KINDS``).

    Parameters
    ----------
    recent
        Recent orders and last prices: ``"embedded"`` (in the persistence
        node's memory) or ``"redis"``.
    orders
        Every order and trade: ``"sqlite"`` or ``"cassandra"``.
    history
        Ticks and bars: ``"sqlite"`` or ``"influxdb"``.
    """

    recent: str = "embedded"
    orders: str = "sqlite"
    history: str = "sqlite"


@dataclass(frozen=True, slots=True)
class ZooKeeper:
    """The ZooKeeper ensemble.

    Parameters
    ----------
    hosts
        ``"host:port"`` of every server.
    root
        The znode under which this exchange keeps its election and registry.
    """

    hosts: tuple[str, ...]
    root: str

    @property
    def connect_string(self) -> str:
        """The ensemble as kazoo's ``hosts`` argument: ``"h1:2181,h2:2181"``."""
        return ",".join(self.hosts)


@dataclass(frozen=True, slots=True)
class Redis:
    """The Redis server, as a ``redis://`` URL (``redis.Redis.from_url`` takes it)."""

    url: str


@dataclass(frozen=True, slots=True)
class Cassandra:
    """The Cassandra cluster.

    Parameters
    ----------
    hosts
        Contact points (host names or addresses).
    keyspace
        The keyspace of the orders and trades tables.
    port
        The native protocol port of every contact point.
    """

    hosts: tuple[str, ...]
    keyspace: str
    port: int = 9042


@dataclass(frozen=True, slots=True)
class InfluxDB:
    """The InfluxDB 1.x server.

    Parameters
    ----------
    url
        Its HTTP API, ``http://host:8086``.
    database
        The database ticks and bars are written to.
    """

    url: str
    database: str


class Node(NamedTuple):
    """One process the launcher starts: its kind, its name among that kind, and its host."""

    kind: str
    name: str
    host: str

    @property
    def label(self) -> str:
        """``"kind:name"``: the node's id in logs, process titles and the ZooKeeper registry."""
        return f"{self.kind}:{self.name}"


class PortUse(NamedTuple):
    """One listening port of a node: where, and whose it is."""

    host: str
    port: int
    node: Node
    role: str


@dataclass(frozen=True, slots=True)
class Topology:
    """A whole deployment, as a checked topology file says.

    Build one with ``topology.load.load``; the constructor does not check
    anything the loader checks.

    Parameters
    ----------
    name
        The exchange's name.
    data_dir
        Where journals and embedded databases live (relative paths are
        relative to the directory the nodes run in).
    instruments
        Every tradable instrument, in file order.
    shards
        Every shard, in file order.
    gateways
        Every gateway, in file order (at least one).
    brokers
        The brokers allowed to trade, and the operators; with no entry of role ``broker``, any broker id is
        accepted (operators aside).
    timezone
        The exchange's time zone (IANA name): which trading day a time belongs to.
    ticker, persistence
        The market data and persistence nodes, or ``None`` when not deployed; ``ticker`` is the first of
        ``tickers``.
    tickers
        Every market data node, in file order (empty without one): the first writes the price history, the
        next take over when the ones before are silent; clients follow one and fail over to the next.
    index
        The market index the ticker computes and its circuit breakers, or ``None``.
    stores
        Which store holds each kind of data.
    zookeeper, redis, cassandra, influxdb
        The servers, or ``None`` when the file names none.
    source
        The file the topology was read from, if any.
    risk
        The ``[risk]`` table: every broker's default risk limits.
    instrument_risk
        The risk limits of the instruments that have any, by symbol.
    security
        The keys of the nodes and how brokers authenticate; ``None``: every socket is open (a loopback-only
        topology, ``docs/security.md``).
    """

    name: str
    data_dir: Path
    instruments: tuple[Instrument, ...]
    shards: tuple[Shard, ...]
    gateways: tuple[Gateway, ...]
    brokers: tuple[Broker, ...] = ()
    timezone: str = DEFAULT_TIMEZONE
    ticker: Ticker | None = None
    persistence: Persistence | None = None
    stores: Stores = Stores()
    zookeeper: ZooKeeper | None = None
    redis: Redis | None = None
    cassandra: Cassandra | None = None
    influxdb: InfluxDB | None = None
    source: Path | None = None
    tickers: tuple[Ticker, ...] = ()
    index: Index | None = None
    risk: RiskLimits = field(default_factory=RiskLimits)
    instrument_risk: Mapping[str, RiskLimits] = field(default_factory=dict)
    security: Security | None = None
    calendar: Calendar | None = None  # the [calendar] table (docs/sessions.md); None: continuous trading all day
    _routes: dict[str, Shard] = field(init=False, repr=False, compare=False)
    _instruments: dict[str, Instrument] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One ticker given either way: ``ticker`` (the single or the first) and ``tickers`` (all) agree.
        if not self.tickers and self.ticker is not None:
            object.__setattr__(self, "tickers", (self.ticker,))
        elif self.tickers and self.ticker is None:
            object.__setattr__(self, "ticker", self.tickers[0])
        elif self.tickers and self.ticker != self.tickers[0]:
            raise ValueError("ticker must be the first of tickers")
        object.__setattr__(self, "_routes", {sym: s for s in self.shards for sym in s.symbols})
        object.__setattr__(self, "_instruments", {i.symbol: i for i in self.instruments})

    @property
    def symbols(self) -> tuple[str, ...]:
        """Every symbol, in instrument order."""
        return tuple(i.symbol for i in self.instruments)

    def instrument(self, symbol: str) -> Instrument:
        """Return the instrument of ``symbol``; raise ``KeyError`` when it is not listed."""
        try:
            return self._instruments[symbol]
        except KeyError:
            raise KeyError(f"no instrument {symbol!r} in topology {self.name!r}") from None

    def shard_of(self, symbol: str) -> Shard:
        """Return the shard that trades ``symbol``; raise ``KeyError`` when none does."""
        try:
            return self._routes[symbol]
        except KeyError:
            raise KeyError(f"no shard trades {symbol!r} in topology {self.name!r}") from None

    def shard(self, name: str) -> Shard:
        """Return the shard called ``name``; raise ``KeyError`` when there is none."""
        for s in self.shards:
            if s.name == name:
                return s
        raise KeyError(f"no shard {name!r} in topology {self.name!r}")

    def replica(self, name: str) -> tuple[Shard, Replica]:
        """Return the matcher called ``name`` and its shard; raise ``KeyError`` when there is none."""
        for s in self.shards:
            for r in s.replicas:
                if r.name == name:
                    return s, r
        raise KeyError(f"no matcher {name!r} in topology {self.name!r}")

    def gateway(self, name: str) -> Gateway:
        """Return the gateway called ``name``; raise ``KeyError`` when there is none."""
        for g in self.gateways:
            if g.name == name:
                return g
        raise KeyError(f"no gateway {name!r} in topology {self.name!r}")

    def ticker_named(self, name: str) -> Ticker:
        """Return the ticker called ``name``; raise ``KeyError`` when there is none."""
        for t in self.tickers:
            if t.name == name:
                return t
        raise KeyError(f"no ticker {name!r} in topology {self.name!r}")

    def instruments_of(self, shard: Shard | str) -> tuple[Instrument, ...]:
        """Return the instruments a shard trades, in the shard's symbol order."""
        s = self.shard(shard) if isinstance(shard, str) else shard
        return tuple(self._instruments[sym] for sym in s.symbols)

    def nodes(self, host: str | None = None) -> list[Node]:
        """Return every process to start, in start order; only those on ``host`` when given."""
        out: list[Node] = [Node(MATCHER, r.name, r.host) for s in self.shards for r in s.replicas]
        if self.persistence is not None:
            out.append(Node(PERSISTENCE, PERSISTENCE, self.persistence.host))
        out.extend(Node(TICKER, t.name, t.host) for t in self.tickers)
        out.extend(Node(GATEWAY, g.name, g.host) for g in self.gateways)
        return out if host is None else [n for n in out if n.host == host]

    def hosts(self) -> list[str]:
        """Return every host that runs a node, in order of first appearance."""
        return list(dict.fromkeys(n.host for n in self.nodes()))

    def all_ports(self) -> list[PortUse]:
        """Return every listening port of every node (servers such as Redis are not included)."""
        out: list[PortUse] = []
        for s in self.shards:
            for r in s.replicas:
                node = Node(MATCHER, r.name, r.host)
                out.append(PortUse(r.host, r.order_port, node, "order_port"))
                out.append(PortUse(r.host, r.pub_port, node, "pub_port"))
                out.append(PortUse(r.host, r.recovery_port, node, "recovery_port"))
                if r.repl_port is not None:
                    out.append(PortUse(r.host, r.repl_port, node, "repl_port"))
        for g in self.gateways:
            out.append(PortUse(g.host, g.port, Node(GATEWAY, g.name, g.host), "port"))
        for t in self.tickers:
            node = Node(TICKER, t.name, t.host)
            out.append(PortUse(t.host, t.pub_port, node, "pub_port"))
            out.append(PortUse(t.host, t.snapshot_port, node, "snapshot_port"))
            out.append(PortUse(t.host, t.http_port, node, "http_port"))
        return out

    def node_dir(self, kind: str, name: str) -> Path:
        """Return the directory a node keeps its files in (journal, embedded databases)."""
        return self.data_dir / f"{kind}-{name}"

    def journal_dir(self, replica: Replica | str) -> Path:
        """Return the directory of a matcher's journal."""
        name = replica if isinstance(replica, str) else replica.name
        return self.node_dir(MATCHER, name) / "journal"

    def sqlite_path(self, store: str) -> Path:
        """Return the SQLite file of an embedded store, ``"orders"`` or ``"history"``."""
        if store not in ("orders", "history"):
            raise ValueError(f"no SQLite file for store {store!r}: expected 'orders' or 'history'")
        return self.data_dir / f"{store}.sqlite3"
