"""Reading and checking topology files.

A topology file is TOML.  Every table and key, with its default::

    [exchange]
    name = "local"                      # required; letters, digits, '-', '_', '.'
    data_dir = ".exfab/local"           # journals and embedded databases; default .exfab/<name>,
                                        # relative to the directory the nodes run in
    timezone = "Asia/Kolkata"           # the exchange's clock: which trading day a trade belongs to

    [[instruments]]                     # one per symbol, with the keys of `exfab replay`'s instrument op
    symbol = "TCS"                      # required
    tick = "0.05"                       # default "0.01"; decimals are strings (ints are accepted)
    lot = 1                             # default 1
    ref_price = "3500.00"               # the previous close; needed for a band
    band_pct = "10"                     # the circuit filter in percent; absent or "0" for none
    market_protection_pct = "5"         # market orders trade within this % of the last price (default 5; "0": none)
    max_order_qty = 50000               # optional risk limits of the instrument, for every broker (the
    max_order_value = "50000000"        #   [risk] table below says what they are); the stricter of these
    risk_band_pct = "5"                 #   and the broker's own applies; risk_band_pct needs ref_price

    [[shards]]                          # every symbol on exactly one shard
    name = "A"
    symbols = ["RELIANCE", "TCS"]
    host = "127.0.0.1"                  # a single matcher: host and ports in the shard's table ...
    order_port = 7110                   #   ROUTER: orders from gateways
    pub_port = 7111                     #   PUB: sequenced execution reports and book updates
    recovery_port = 7112                #   ROUTER: journal range requests (gap recovery)
    # repl_port = 7113                  #   optional here; where a secondary takes replicated input

    [[shards]]                          # ... or a primary/secondary pair: exactly two replicas,
    name = "B"                          # each with host, order_port, pub_port, recovery_port and
    symbols = ["INFY"]                  # repl_port; needs [zookeeper] for the election
    [[shards.replicas]]
    name = "B-1"                        # optional; default <shard>-1, <shard>-2
    host = "ex-a.internal"
    order_port = 7120
    pub_port = 7121
    recovery_port = 7122
    repl_port = 7123

    [[gateways]]                        # at least one
    name = "gw1"
    host = "127.0.0.1"
    port = 7101                         # ROUTER: brokers' DEALER sockets connect here

    [[brokers]]                         # optional; when none is listed, any broker id may trade
    id = "BRK01"
    name = "Example Securities"         # optional
    public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # CURVE public key, Z85 (exfab keys new BRK01); needed
                                        # with [security]: a connection with this key is this broker
    stp = "cancel_resting"              # optional: self-trade prevention, "off" (default), "cancel_resting",
                                        # "cancel_incoming" or "cancel_both" (docs/book-semantics.md)
    role = "broker"                     # or "operator": its sessions may send admin commands (halt, resume,
                                        # disable, enable: exfab admin); default "broker"
    cancel_on_disconnect = false        # true: when its session ends (logout, heartbeat timeout; not a
                                        # reconnection that replaces it) its open orders are cancelled
    [brokers.risk]                      # optional: this broker's own limits, any key of [risk]; a key left
    max_open_orders = 500               # out is the [risk] table's

    [risk]                              # optional: the gateway's risk checks, every broker's defaults; a key
                                        # left out (or no table) is no limit (fabric/risk.py, docs/security.md)
    max_order_qty = 100000              # the largest quantity of one order (a new, a replace's new qty)
    max_order_value = "10000000"        # the largest price x quantity (market orders at the ref_price)
    risk_band_pct = "10"                # limit prices within this % of the instrument's ref_price
                                        # (instruments without a ref_price are not checked)
    max_open_orders = 1000              # open orders of one broker, as each gateway counts them
    max_orders_per_s = 500              # new and replace messages per second (a token bucket) ...
    burst = 1000                        # ... of this size (default max_orders_per_s); cancels are never
                                        # limited

    [calendar]                          # optional: the trading day's sessions, every key optional (the BSE's
    pre_open = "09:00"                  # day by default: fabric/calendar.py, docs/sessions.md); without the
    continuous = "09:15"                # table every shard trades continuously all day
    scale = 60                          # the compressed day of the demo, with anchor = <an instant>

    [ticker]                            # optional: the market data node
    host = "127.0.0.1"
    pub_port = 7180                     # PUB: last prices, bars, depth (docs/market-data.md)
    snapshot_port = 7182                # ROUTER: snapshots for the feed's subscribers (the Clone pattern)
    http_port = 7181                    # the price page, its WebSocket and /history
    connections_per_address = 32        # optional: connections one client address may hold on http_port

    [[tickers]]                         # ... or several, instead of [ticker]: A and B feeds of the same
    name = "ticker"                     # market; optional, default "ticker", then "ticker-b", "ticker-c"
    host = "127.0.0.1"                  # the same keys as [ticker]; clients fail over from one to the
    pub_port = 7180                     # next, the first writes the price history and the next take over
    snapshot_port = 7182                # while the ones before are silent (docs/market-data.md, section 9)
    http_port = 7181

    [persistence]                       # optional: the node that writes every order and trade
    host = "127.0.0.1"                  # (it listens on no port)

    [index]                             # optional: the market index the ticker computes (docs/security.md)
    name = "SENSEX"                     # required
    base = "1000"                       # required: its value at the previous close
    operator = "OPS-TICKER"             # optional: the broker id the ticker halts the market as when a
                                        # breaker trips; without it the breakers are off
    [index.constituents]                # required: symbol = weight (free-float shares), each an instrument
    RELIANCE = 676                      # with a ref_price; an integer or a decimal string
    [[index.breakers]]                  # optional, lowest level first; default SEBI's 10, 15 and 20 %
    pct = "10"                          # a move of the index, either way, of this many percent
    halts = [["13:00", "45m"], ["14:30", "15m"]]  # tripped before 13:00: 45 minutes; before 14:30: 15
                                        # minutes; later: no halt ("24:00" is the day's end, "day" the
                                        # rest of the day, durations "1h45m", "45m", "30s")

    [stores]                            # optional; the defaults need nothing installed
    recent = "embedded"                 # orders' status, open orders, last trades: in the persistence node's
                                        # memory; or "redis": needs [redis]
    orders = "sqlite"                   # every order and trade, <data_dir>/orders.sqlite3; or "cassandra":
                                        # needs [cassandra]
    history = "sqlite"                  # the ticker's price history, <data_dir>/history.sqlite3; or
                                        # "influxdb": needs [influxdb] and an InfluxDB 1.x server

    [zookeeper]                         # the node registry, exfab status, the pairs' election; exfab up
                                        # runs it when every host is a loopback address
    hosts = ["ex-a.internal:2181"]      # host:port of every server
    root = "/exfab/local"               # default /exfab/<name>
    [redis]
    url = "redis://ex-c.internal:6379/0"
    [cassandra]
    hosts = ["ex-a.internal"]           # contact points
    keyspace = "exfab"
    port = 9042                         # default 9042
    [influxdb]
    url = "http://ex-c.internal:8086"   # InfluxDB 1.x HTTP API
    database = "exfab"

    [security]                          # CURVE on every socket but the ticker's feeds (docs/security.md);
                                        # required when a node is on a host other than a loopback address
    keys_dir = "keys"                   # the nodes' secret keys, <kind>-<name>.key_secret; relative to this file
    brokers = "keys"                    # brokers log on with their [[brokers]] public_key; "open" (loopback
                                        # topologies only): any broker id, in the clear, at the gateways
    [security.nodes]                    # every node's public key, by node label (exfab keys new --node LABEL)
    "matcher:A" = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
    "gateway:gw1" = "..."

``check`` reports every mistake it finds, each with where it is; ``load``
raises :class:`TopologyError` carrying all of them.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fabric.auth import check_public_key
from fabric.calendar import Calendar, calendar_from_table
from fabric.circuit import SEBI_LEVELS, Level, parse_halts
from fabric.commands import STP_CODES, Stp
from fabric.instruments import DEFAULT_MARKET_PROTECTION_PCT, DEFAULT_TICK, Instrument, InstrumentError, parse_decimal
from fabric.records import DEFAULT_TIMEZONE
from topology.model import (
    BROKER_ROLES,
    DEFAULT_CONNECTIONS_PER_ADDRESS,
    STORE_KINDS,
    Broker,
    Cassandra,
    Gateway,
    Index,
    InfluxDB,
    Persistence,
    Redis,
    Replica,
    RiskLimits,
    Security,
    Shard,
    Stores,
    Ticker,
    Topology,
    ZooKeeper,
    is_loopback,
)

# How each top-level name is written in a file, for messages.
_TOP = {
    "exchange": "[exchange]",
    "instruments": "[[instruments]]",
    "shards": "[[shards]]",
    "gateways": "[[gateways]]",
    "brokers": "[[brokers]]",
    "ticker": "[ticker]",
    "tickers": "[[tickers]]",
    "persistence": "[persistence]",
    "stores": "[stores]",
    "zookeeper": "[zookeeper]",
    "redis": "[redis]",
    "cassandra": "[cassandra]",
    "influxdb": "[influxdb]",
    "index": "[index]",
    "risk": "[risk]",
    "security": "[security]",
    "calendar": "[calendar]",
}
_EXCHANGE_KEYS = ("name", "data_dir", "timezone")
_INSTRUMENT_RISK_KEYS = ("max_order_qty", "max_order_value", "risk_band_pct")
_INSTRUMENT_KEYS = ("symbol", "tick", "lot", "ref_price", "band_pct", "market_protection_pct", *_INSTRUMENT_RISK_KEYS)
_MATCHER_PORTS = ("order_port", "pub_port", "recovery_port", "repl_port")
_SHARD_KEYS = ("name", "symbols", "replicas", "host", *_MATCHER_PORTS)
_REPLICA_KEYS = ("name", "host", *_MATCHER_PORTS)
_GATEWAY_KEYS = ("name", "host", "port")
_BROKER_KEYS = ("id", "name", "public_key", "role", "cancel_on_disconnect", "risk", "stp")
_RISK_KEYS = ("max_order_qty", "max_order_value", "risk_band_pct", "max_open_orders", "max_orders_per_s", "burst")
_SECURITY_KEYS = ("keys_dir", "brokers", "nodes")
_TICKER_KEYS = ("host", "pub_port", "snapshot_port", "http_port", "connections_per_address")
_TICKERS_KEYS = ("name", *_TICKER_KEYS)
_PERSISTENCE_KEYS = ("host",)
_STORES_KEYS = tuple(STORE_KINDS)
_ZOOKEEPER_KEYS = ("hosts", "root")
_REDIS_KEYS = ("url",)
_CASSANDRA_KEYS = ("hosts", "keyspace", "port")
_INFLUXDB_KEYS = ("url", "database")
_INDEX_KEYS = ("name", "base", "operator", "constituents", "breakers")
_BREAKER_KEYS = ("pct", "halts")

# The server table each non-embedded store kind needs, and an example of it.
_SERVER_OF = {
    "redis": ("redis", 'url = "redis://host:6379/0"'),
    "cassandra": ("cassandra", 'hosts = ["host"] and keyspace = "exfab"'),
    "influxdb": ("influxdb", 'url = "http://host:8086" and database = "exfab"'),
}
_DEFAULT_SERVER_PORTS = {"redis": 6379, "rediss": 6379, "http": 8086, "https": 8086}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_INDEX_NAME = re.compile(r"[A-Z0-9&._-]+")
_KEYSPACE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}\Z")
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a topology file.

    Parameters
    ----------
    where
        The place, as a path through the file: ``shards[1] "B".symbols``.
    message
        What is wrong, in plain words.
    """

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class TopologyError(ValueError):
    """A topology file that cannot be used; ``problems`` holds every mistake found."""

    def __init__(self, problems: Iterable[Problem], source: str | Path | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        head = f"{source}: " if source is not None else ""
        n = len(self.problems)
        lines = [f"{head}{n} problem{'s' if n != 1 else ''} in topology"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


def load(path: str | Path) -> Topology:
    """Read and check the topology file at ``path``.

    Raises
    ------
    TopologyError
        When the file cannot be read, is not TOML, or has any mistake; it
        carries every problem found, not only the first.
    """
    topology, problems = _read(Path(path))
    if topology is None:
        raise TopologyError(problems, path)
    return topology


def check(path: str | Path) -> list[Problem]:
    """Return every problem of the topology file at ``path``; an empty list means it loads."""
    return _read(Path(path))[1]


def loads(text: str, source: str | Path | None = None) -> Topology:
    """Read and check a topology from TOML ``text``; raise :class:`TopologyError` as ``load`` does."""
    topology, problems = _parse_text(text, Path(source) if source is not None else None)
    if topology is None:
        raise TopologyError(problems, source)
    return topology


def check_text(text: str) -> list[Problem]:
    """Return every problem of a topology given as TOML ``text``."""
    return _parse_text(text, None)[1]


def from_dict(data: dict[str, Any], source: Path | None = None) -> tuple[Topology | None, list[Problem]]:
    """Build a topology from parsed TOML; return it (``None`` when there are problems) and the problems."""
    return _Builder(source).build(data)


def _read(path: Path) -> tuple[Topology | None, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        return None, [Problem(str(path), f"cannot read the file: {e.strerror or e}")]
    except UnicodeDecodeError as e:
        return None, [Problem(str(path), f"not a UTF-8 text file: {e.reason} at byte {e.start}")]
    return _parse_text(text, path)


def _parse_text(text: str, source: Path | None) -> tuple[Topology | None, list[Problem]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return None, [Problem(str(source) if source else "file", f"not valid TOML: {e}")]
    return from_dict(data, source)


# ----------------------------------------------------------------------------------------------------------------------
# Messages


def _kind(value: object) -> str:
    """Return a TOML type name for ``value``, with the value when it is short."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {_q(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _q(text: str) -> str:
    """Quote ``text`` as TOML writes a basic string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _suggest(word: str, choices: Iterable[str], show: dict[str, str] | None = None) -> str:
    """Return ``"; did you mean X?"`` for the closest choice, or ``"; expected one of ..."``."""
    choices = list(choices)
    fmt = (lambda c: show[c]) if show else _q
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {fmt(close[0])}?"
    return "; expected one of " + ", ".join(fmt(c) for c in choices)


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _item(array: str, i: int, tbl: object, key: str = "name") -> str:
    """Return the place of an array-of-tables entry: ``shards[1] "B"``."""
    if isinstance(tbl, dict) and isinstance(tbl.get(key), str) and tbl[key]:
        return f"{array}[{i}] {_q(tbl[key])}"
    return f"{array}[{i}]"


def _norm_host(host: str) -> str:
    """Return the host as the port-clash check compares it: localhost is 127.0.0.1."""
    h = host.lower()
    return "127.0.0.1" if h == "localhost" else h


# ----------------------------------------------------------------------------------------------------------------------
# Building


class _Builder:
    """Read a parsed TOML document into a Topology, collecting every problem on the way."""

    def __init__(self, source: Path | None) -> None:
        self.source = source
        self.problems: list[Problem] = []
        # (normalised host, port) -> the first place that uses it
        self.ports: dict[tuple[str, int], str] = {}
        self.instrument_risk: dict[str, RiskLimits] = {}

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    # -- typed getters ---------------------------------------------------------------------------------------------

    def keys(self, tbl: dict[str, Any], where: str, allowed: tuple[str, ...]) -> None:
        """Report every key of ``tbl`` not in ``allowed``."""
        for k in tbl:
            if k not in allowed:
                self.add(where, f"unknown key {_q(k)}{_suggest(k, allowed)}")

    def value(self, tbl: dict[str, Any], key: str, where: str, required: bool) -> Any:
        if key in tbl:
            return tbl[key]
        if required:
            self.add(where, f"missing required key {_q(key)}")
        return _MISSING

    def string(self, tbl: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
        v = self.value(tbl, key, where, required)
        if v is _MISSING:
            return None
        if not isinstance(v, str):
            self.add(_at(where, key), f"must be a string, got {_kind(v)}")
            return None
        if not v.strip():
            self.add(_at(where, key), "must not be empty")
            return None
        return v

    def name(self, tbl: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
        v = self.string(tbl, key, where, required)
        if v is not None and not _NAME.match(v):
            self.add(_at(where, key), f"{_q(v)} is not a usable name: use letters, digits, '-', '_' and '.'")
            return None
        return v

    def host(self, tbl: dict[str, Any], key: str, where: str) -> str | None:
        v = self.string(tbl, key, where)
        if v is None:
            return None
        return v if self.host_ok(v, _at(where, key)) else None

    def host_ok(self, v: str, where: str) -> bool:
        if "://" in v or "/" in v or any(c.isspace() for c in v):
            self.add(where, f"{_q(v)} is not a host name or address")
            return False
        if v.count(":") == 1:
            self.add(where, f"{_q(v)} has a port: give the host alone, and the port in its own key")
            return False
        return True

    def integer(self, tbl: dict[str, Any], key: str, where: str, required: bool = True) -> int | None:
        v = self.value(tbl, key, where, required)
        if v is _MISSING:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            self.add(_at(where, key), f"must be an integer, got {_kind(v)}")
            return None
        return v

    def port(self, tbl: dict[str, Any], key: str, where: str, host: str | None, required: bool = True) -> int | None:
        """Return a port, reporting it when out of range or already used on ``host``."""
        v = self.integer(tbl, key, where, required)
        if v is None:
            return None
        if not 1 <= v <= 65535:
            self.add(_at(where, key), f"port {v} is out of range 1-65535")
            return None
        if host is not None:
            self.claim(host, v, _at(where, key))
        return v

    def claim(self, host: str, port: int, where: str) -> None:
        """Record that ``where`` listens on ``host:port``; report it when another place already does."""
        slot = (_norm_host(host), port)
        first = self.ports.get(slot)
        if first is None:
            self.ports[slot] = where
        else:
            self.add(where, f"{host}:{port} is also used by {first}")

    def strings(self, tbl: dict[str, Any], key: str, where: str, required: bool = True) -> list[str] | None:
        v = self.value(tbl, key, where, required)
        if v is _MISSING:
            return None
        if not isinstance(v, list):
            self.add(_at(where, key), f"must be an array of strings, got {_kind(v)}")
            return None
        out: list[str] = []
        ok = True
        for i, x in enumerate(v):
            if not isinstance(x, str) or not x.strip():
                self.add(f"{_at(where, key)}[{i}]", f"must be a non-empty string, got {_kind(x)}")
                ok = False
            else:
                out.append(x)
        if ok and not out:
            self.add(_at(where, key), "must not be empty")
            return None
        return out if ok else None

    def table(self, data: dict[str, Any], key: str, required: bool = False) -> dict[str, Any] | None:
        """Return the top-level table ``key``, reporting it when missing or not a table."""
        if key not in data:
            if required:
                self.add(_TOP[key], "missing table: the file needs one")
            return None
        v = data[key]
        if not isinstance(v, dict):
            self.add(key, f"must be a table (write {_TOP[key]}), got {_kind(v)}")
            return None
        return v

    def tables(self, data: dict[str, Any], key: str) -> list[dict[str, Any]] | None:
        """Return the top-level array of tables ``key``; ``None`` when absent or broken."""
        if key not in data:
            return None
        v = data[key]
        if isinstance(v, dict):
            self.add(key, f"must be an array of tables: write {_TOP[key]}, not [{key}]")
            return None
        if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
            self.add(key, f"must be an array of tables (write {_TOP[key]}), got {_kind(v)}")
            return None
        return v

    # -- sections ----------------------------------------------------------------------------------------------------

    def build(self, data: dict[str, Any]) -> tuple[Topology | None, list[Problem]]:
        for k in data:
            if k not in _TOP:
                self.add("top level", f"unknown table {_q(k)}{_suggest(k, _TOP, _TOP)}")

        name, data_dir, timezone = self.exchange(data)
        instruments, known = self.instruments(data)
        shards = self.shards(data)
        gateways = self.gateways(data)
        brokers = self.brokers(data)
        tickers = self.tickers(data)
        persistence = self.persistence(data)
        zookeeper = self.zookeeper(data, name)
        redis = self.redis(data)
        cassandra = self.cassandra(data)
        influxdb = self.influxdb(data)
        stores = self.stores(data)
        index = self.index(data, instruments, brokers)
        risk = self.risk(data)
        security = self.security(data)
        calendar = self.calendar(data, name, timezone)
        self.routing(data, known, shards)
        if shards is not None and zookeeper is None and "zookeeper" not in data:
            for where, shard in shards:
                if shard.paired:
                    self.add(where, "a primary/secondary pair needs [zookeeper] (hosts = [...]) for the election")

        if self.problems:
            return None, self.problems
        assert name is not None and data_dir is not None and instruments is not None
        assert shards is not None and gateways is not None and stores is not None
        topology = Topology(
            name=name,
            data_dir=data_dir,
            timezone=timezone,
            instruments=tuple(instruments),
            shards=tuple(s for _, s in shards),
            gateways=tuple(gateways),
            brokers=tuple(brokers),
            tickers=tuple(tickers),
            persistence=persistence,
            stores=stores,
            zookeeper=zookeeper,
            redis=redis,
            cassandra=cassandra,
            influxdb=influxdb,
            source=self.source,
            index=index,
            risk=risk,
            instrument_risk=self.instrument_risk,
            security=security,
            calendar=calendar,
        )
        self.check_keys(topology)
        if self.problems:
            return None, self.problems
        return topology, self.problems

    def exchange(self, data: dict[str, Any]) -> tuple[str | None, Path | None, str]:
        tbl = self.table(data, "exchange", required=True)
        if tbl is None:
            return None, None, DEFAULT_TIMEZONE
        self.keys(tbl, "exchange", _EXCHANGE_KEYS)
        name = self.name(tbl, "name", "exchange")
        data_dir = self.string(tbl, "data_dir", "exchange", required=False)
        tz = self.string(tbl, "timezone", "exchange", required=False) or DEFAULT_TIMEZONE
        try:
            ZoneInfo(tz)
        except (ValueError, ZoneInfoNotFoundError):
            self.add("exchange.timezone", f"{_q(tz)} is not a time zone this machine knows (an IANA name such as "
                     '"Asia/Kolkata")')
        if name is None:
            return None, None, tz
        return name, Path(data_dir).expanduser() if data_dir is not None else Path(".exfab") / name, tz

    def instruments(self, data: dict[str, Any]) -> tuple[list[Instrument] | None, dict[str, str] | None]:
        """Return the instruments, and every listed symbol with its place (also of broken entries)."""
        entries = self.tables(data, "instruments")
        if entries is None:
            if "instruments" not in data:
                self.add("instruments", "no instruments: list each symbol in an [[instruments]] table")
            return None, None
        if not entries:
            self.add("instruments", "no instruments: list each symbol in an [[instruments]] table")
        out: list[Instrument] = []
        known: dict[str, str] = {}
        for i, tbl in enumerate(entries):
            where = _item("instruments", i, tbl, "symbol")
            self.keys(tbl, where, _INSTRUMENT_KEYS)
            symbol = self.string(tbl, "symbol", where)
            if symbol is not None and any(c.isspace() for c in symbol):
                self.add(_at(where, "symbol"), f"{_q(symbol)} has white space in it")
                symbol = None
            if symbol is not None:
                if symbol in known:
                    self.add(where, f"symbol {symbol} is listed twice (also {known[symbol]})")
                    continue
                known[symbol] = where
            inst = self.instrument(tbl, where, symbol)
            if inst is not None:
                out.append(inst)
            limits = self.risk_limits(tbl, where, _INSTRUMENT_RISK_KEYS)
            if limits is not None and limits != RiskLimits() and symbol is not None:
                if limits.risk_band_pct is not None and "ref_price" not in tbl:
                    self.add(_at(where, "risk_band_pct"), "a risk band is around the reference price: give ref_price")
                self.instrument_risk[symbol] = limits
        return out, known

    def calendar(self, data: dict[str, Any], market: str | None, timezone: str) -> Calendar | None:
        """The ``[calendar]`` table: the trading day's sessions (``docs/sessions.md``); none: continuous all day."""
        tbl = self.table(data, "calendar")
        if tbl is None:
            return None
        cal, problems = calendar_from_table(tbl, market or "exchange", timezone)
        for where, why in problems:
            self.add(where, why)
        return cal

    def risk(self, data: dict[str, Any]) -> RiskLimits:
        """The ``[risk]`` table: every broker's default limits (none without the table)."""
        tbl = self.table(data, "risk")
        if tbl is None:
            return RiskLimits()
        self.keys(tbl, "risk", _RISK_KEYS)
        return self.risk_limits(tbl, "risk", _RISK_KEYS) or RiskLimits()

    def risk_limits(self, tbl: dict[str, Any], where: str, keys: tuple[str, ...]) -> RiskLimits | None:
        """Read the risk limits among ``keys`` of ``tbl`` (other keys are not looked at); ``None`` when one is wrong."""
        ok = True
        found: dict[str, Any] = {}
        for key in keys:
            if key not in tbl:
                continue
            if key in ("max_order_value", "risk_band_pct"):
                d = self.decimal(tbl, key, where)
                if d is not None and (d <= 0 or (key == "risk_band_pct" and d >= 100)):
                    self.add(_at(where, key), f"must be above 0{' and below 100' if key == 'risk_band_pct' else ''}, "
                             f"got {d}")
                    d = None
                value: Any = d
            else:
                value = self.integer(tbl, key, where)
                if value is not None and value <= 0:
                    self.add(_at(where, key), f"must be a positive integer, got {value}")
                    value = None
            if value is None:
                ok = False
            else:
                found[key] = value
        if "burst" in found and "max_orders_per_s" not in found:
            self.add(_at(where, "burst"), "a burst is the size of the max_orders_per_s bucket: give max_orders_per_s")
            ok = False
        return RiskLimits(**found) if ok else None

    def decimal(self, tbl: dict[str, Any], key: str, where: str) -> Decimal | None:
        v = tbl[key]
        if isinstance(v, float):
            self.add(_at(where, key), f"write decimals as strings ({key} = \"{v}\"): a float cannot hold most prices "
                     "exactly")
            return None
        try:
            return parse_decimal(v)
        except ValueError as e:
            self.add(_at(where, key), str(e))
            return None

    def instrument(self, tbl: dict[str, Any], where: str, symbol: str | None) -> Instrument | None:
        ok = symbol is not None
        tick: Decimal | None = DEFAULT_TICK
        ref: Decimal | None = None
        band: Decimal | None = None
        if "tick" in tbl:
            tick = self.decimal(tbl, "tick", where)
            ok = ok and tick is not None
        if "ref_price" in tbl:
            ref = self.decimal(tbl, "ref_price", where)
            ok = ok and ref is not None
        if "band_pct" in tbl:
            band = self.decimal(tbl, "band_pct", where)
            ok = ok and band is not None
            if band == 0:
                band = None  # as in `exfab replay`: a band of 0 % means no band
        protection: Decimal | None = DEFAULT_MARKET_PROTECTION_PCT
        if "market_protection_pct" in tbl:
            protection = self.decimal(tbl, "market_protection_pct", where)
            ok = ok and protection is not None
        lot: int | None = 1
        if "lot" in tbl:
            v = tbl["lot"]
            if isinstance(v, str) and v.strip().isdigit():
                lot = int(v)
            elif isinstance(v, int) and not isinstance(v, bool):
                lot = v
            else:
                self.add(_at(where, "lot"), f"must be a whole number, got {_kind(v)}")
                lot = None
            ok = ok and lot is not None
        if not ok or symbol is None or tick is None or lot is None:
            return None
        try:
            return Instrument(symbol, tick=tick, lot=lot, ref_price=ref, band_pct=band,
                              market_protection_pct=protection or None)
        except InstrumentError as e:
            text = str(e)
            self.add(where, text.removeprefix(f"{symbol}: "))
            return None

    def shards(self, data: dict[str, Any]) -> list[tuple[str, Shard]] | None:
        entries = self.tables(data, "shards")
        if entries is None:
            if "shards" not in data:
                self.add("shards", "no shards: put every symbol on a shard with [[shards]]")
            return None
        if not entries:
            self.add("shards", "no shards: put every symbol on a shard with [[shards]]")
        out: list[tuple[str, Shard]] = []
        shard_names: dict[str, str] = {}
        replica_names: dict[str, str] = {}
        for i, tbl in enumerate(entries):
            where = _item("shards", i, tbl)
            self.keys(tbl, where, _SHARD_KEYS)
            name = self.name(tbl, "name", where)
            twice = False
            if name is not None:
                twice = name in shard_names
                if twice:
                    self.add(where, f"shard name {_q(name)} is used twice (also {shard_names[name]})")
                else:
                    shard_names[name] = where
            symbols = self.strings(tbl, "symbols", where)
            replicas = self.replicas(tbl, where, name)
            # A shard named twice has matcher names derived from it twice: one message says it.
            for r_where, r in () if twice else replicas or ():
                if r.name in replica_names:
                    self.add(r_where, f"matcher name {_q(r.name)} is used twice (also {replica_names[r.name]})")
                else:
                    replica_names[r.name] = r_where
            if name is not None and symbols is not None and replicas is not None:
                out.append((where, Shard(name, tuple(symbols), tuple(r for _, r in replicas))))
        return out

    def replicas(self, tbl: dict[str, Any], where: str, shard: str | None) -> list[tuple[str, Replica]] | None:
        flat = [k for k in ("host", *_MATCHER_PORTS) if k in tbl]
        if "replicas" in tbl:
            if flat:
                self.add(where, f"give either host and ports or [[shards.replicas]], not both (found {', '.join(flat)} "
                         "next to replicas)")
                return None
            v = tbl["replicas"]
            if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
                self.add(_at(where, "replicas"),
                         f"must be an array of tables (write [[shards.replicas]]), got {_kind(v)}")
                return None
            if not v:
                self.add(_at(where, "replicas"), "no replicas: give one matcher, or two for a primary/secondary pair")
                return None
            if len(v) > 2:
                self.add(_at(where, "replicas"), f"{len(v)} replicas: a shard has one matcher or a primary/secondary "
                         "pair (2)")
                return None
            out: list[tuple[str, Replica]] = []
            ok = True
            for j, rt in enumerate(v):
                r_where = _item(_at(where, "replicas"), j, rt)
                self.keys(rt, r_where, _REPLICA_KEYS)
                default = f"{shard}-{j + 1}" if shard is not None else None
                rname = self.name(rt, "name", r_where, required=False) if "name" in rt else default
                r = self.replica(rt, r_where, rname, shard, paired=len(v) == 2)
                if r is None:
                    ok = False
                else:
                    out.append((r_where, r))
            return out if ok else None
        if not flat:
            self.add(where, "no matcher: give host, order_port, pub_port and recovery_port, or two "
                     "[[shards.replicas]] for a primary/secondary pair")
            return None
        r = self.replica(tbl, where, shard, shard, paired=False)
        return None if r is None else [(where, r)]

    def replica(self, tbl: dict[str, Any], where: str, name: str | None, shard: str | None,
                paired: bool) -> Replica | None:
        host = self.host(tbl, "host", where)
        order = self.port(tbl, "order_port", where, host)
        pub = self.port(tbl, "pub_port", where, host)
        recovery = self.port(tbl, "recovery_port", where, host)
        repl = self.port(tbl, "repl_port", where, host, required=paired)
        if None in (name, shard, host, order, pub, recovery) or (paired and repl is None):
            return None
        assert name is not None and shard is not None and host is not None
        assert order is not None and pub is not None and recovery is not None
        return Replica(name, shard, host, order, pub, recovery, repl)

    def routing(self, data: dict[str, Any], known: dict[str, str] | None,
                shards: list[tuple[str, Shard]] | None) -> None:
        """Report symbols on two shards, on no shard, or on a shard but with no instrument."""
        entries = data.get("shards")
        if not isinstance(entries, list):
            return
        home: dict[str, str] = {}
        for i, tbl in enumerate(entries):
            if not isinstance(tbl, dict) or not isinstance(tbl.get("symbols"), list):
                continue
            where = _item("shards", i, tbl)
            sname = tbl.get("name") if isinstance(tbl.get("name"), str) else f"shards[{i}]"
            seen: set[str] = set()
            for sym in tbl["symbols"]:
                if not isinstance(sym, str) or not sym.strip():
                    continue
                if sym in seen:
                    self.add(_at(where, "symbols"), f"symbol {sym} is listed twice")
                    continue
                seen.add(sym)
                if sym in home:
                    self.add(where, f"symbol {sym} is also on shard {_q(home[sym])}")
                    continue
                home[sym] = str(sname)
                if known is not None and sym not in known:
                    self.add(_at(where, "symbols"), f"symbol {sym} has no [[instruments]] entry"
                             f"{_close(sym, known)}")
        if known is not None and shards is not None:
            for sym, where in known.items():
                if sym not in home:
                    self.add(where, f"symbol {sym} is on no shard: add it to one shard's symbols")

    def gateways(self, data: dict[str, Any]) -> list[Gateway] | None:
        entries = self.tables(data, "gateways")
        if entries is None:
            if "gateways" not in data:
                self.add("gateways", "no gateway: brokers need at least one [[gateways]] with name, host and port")
            return None
        if not entries:
            self.add("gateways", "no gateway: brokers need at least one [[gateways]] with name, host and port")
        out: list[Gateway] = []
        names: dict[str, str] = {}
        for i, tbl in enumerate(entries):
            where = _item("gateways", i, tbl)
            self.keys(tbl, where, _GATEWAY_KEYS)
            name = self.name(tbl, "name", where)
            if name is not None:
                if name in names:
                    self.add(where, f"gateway name {_q(name)} is used twice (also {names[name]})")
                else:
                    names[name] = where
            host = self.host(tbl, "host", where)
            port = self.port(tbl, "port", where, host)
            if name is not None and host is not None and port is not None:
                out.append(Gateway(name, host, port))
        return out

    def brokers(self, data: dict[str, Any]) -> list[Broker]:
        entries = self.tables(data, "brokers")
        out: list[Broker] = []
        ids: dict[str, str] = {}
        for i, tbl in enumerate(entries or ()):
            where = _item("brokers", i, tbl, "id")
            self.keys(tbl, where, _BROKER_KEYS)
            bid = self.string(tbl, "id", where)
            name = self.string(tbl, "name", where, required=False)
            stp = self.string(tbl, "stp", where, required=False) or "off"
            if stp not in STP_CODES:
                self.add(_at(where, "stp"), f"unknown self-trade prevention mode {_q(stp)}{_suggest(stp, STP_CODES)}")
                continue
            key = self.key(tbl, "public_key", where) if "public_key" in tbl else None
            role = self.string(tbl, "role", where, required=False) or "broker"
            if role not in BROKER_ROLES:
                self.add(_at(where, "role"), f"unknown role {_q(role)}{_suggest(role, BROKER_ROLES)}")
                continue
            cod = tbl.get("cancel_on_disconnect", False)
            if not isinstance(cod, bool):
                self.add(_at(where, "cancel_on_disconnect"), f"must be true or false, got {_kind(cod)}")
                cod = False
            risk: RiskLimits | None = None
            if "risk" in tbl:
                rt = tbl["risk"]
                if not isinstance(rt, dict):
                    self.add(_at(where, "risk"), f"must be a table (write [brokers.risk]), got {_kind(rt)}")
                else:
                    self.keys(rt, _at(where, "risk"), _RISK_KEYS)
                    risk = self.risk_limits(rt, _at(where, "risk"), _RISK_KEYS)
            if bid is None or ("public_key" in tbl and key is None):
                continue
            if bid in ids:
                self.add(where, f"broker id {_q(bid)} is listed twice (also {ids[bid]})")
                continue
            ids[bid] = where
            out.append(Broker(bid, name, "operator" if role == "operator" else "broker", cod, risk, cast(Stp, stp),
                              public_key=key))
        return out

    def tickers(self, data: dict[str, Any]) -> list[Ticker]:
        """The market data nodes: one ``[ticker]``, or ``[[tickers]]`` (A and B feeds), or none."""
        if "ticker" in data and "tickers" in data:
            self.add("tickers", "give either one [ticker] or [[tickers]] (one table per ticker), not both")
            return []
        if "ticker" in data:
            tbl = self.table(data, "ticker")
            if tbl is None:
                return []
            self.keys(tbl, "ticker", _TICKER_KEYS)
            t = self.ticker(tbl, "ticker", "ticker")
            return [] if t is None else [t]
        entries = self.tables(data, "tickers")
        if entries is None:
            return []
        if not entries:
            self.add("tickers", "no tickers: give each one a [[tickers]] table, or remove the key")
        out: list[Ticker] = []
        names: dict[str, str] = {}
        for i, tbl in enumerate(entries):
            where = _item("tickers", i, tbl)
            self.keys(tbl, where, _TICKERS_KEYS)
            default = "ticker" if i == 0 else f"ticker-{chr(ord('a') + i)}" if i < 26 else f"ticker-{i + 1}"
            name = self.name(tbl, "name", where, required=False) if "name" in tbl else default
            if name is not None:
                if name in names:
                    self.add(where, f"ticker name {_q(name)} is used twice (also {names[name]})")
                    name = None
                else:
                    names[name] = where
            t = self.ticker(tbl, where, name)
            if t is not None:
                out.append(t)
        return out

    def ticker(self, tbl: dict[str, Any], where: str, name: str | None) -> Ticker | None:
        host = self.host(tbl, "host", where)
        pub = self.port(tbl, "pub_port", where, host)
        snap = self.port(tbl, "snapshot_port", where, host)
        http = self.port(tbl, "http_port", where, host)
        per_address = self.integer(tbl, "connections_per_address", where, required=False)
        if per_address is not None and per_address < 1:
            self.add(_at(where, "connections_per_address"), f"must be at least 1, got {per_address}")
        if name is None or host is None or pub is None or snap is None or http is None:
            return None
        return Ticker(host, pub, http, snap, name,
                      DEFAULT_CONNECTIONS_PER_ADDRESS if per_address is None else per_address)

    def index(self, data: dict[str, Any], instruments: list[Instrument] | None, brokers: list[Broker]
              ) -> Index | None:
        """The market index and its circuit breakers (``docs/security.md``), or ``None`` without ``[index]``."""
        tbl = self.table(data, "index")
        if tbl is None:
            return None
        self.keys(tbl, "index", _INDEX_KEYS)
        name = self.name(tbl, "name", "index")
        base = None
        if "base" not in tbl:
            self.add("index", 'missing required key "base" (the index\'s value at the previous close)')
        else:
            base = self.decimal(tbl, "base", "index")
        if base is not None and base <= 0:
            self.add("index.base", f"must be positive, got {base}")
            base = None
        operator = self.string(tbl, "operator", "index", required=False)
        if operator is not None and operator not in {b.id for b in brokers if b.role == "operator"}:
            self.add("index.operator", f"{_q(operator)} is not an operator among the [[brokers]]: list it there with "
                     'role = "operator" (the ticker logs on as this operator to halt the market)')
        refs = {i.symbol: i.ref_price for i in instruments or ()}
        if name is not None and name in refs:
            self.add("index.name", f"{_q(name)} is an instrument's symbol: the index's history is kept under its name")
        elif name is not None and not _INDEX_NAME.fullmatch(name):
            self.add("index.name", f"{_q(name)}: an index name is made of A-Z, 0-9, '&', '.', '_' and '-' (as a "
                     "symbol in the price history)")
        consts: list[tuple[str, Decimal]] = []
        raw = tbl.get("constituents")
        if raw is None:
            self.add("index", 'missing required table "constituents" (symbol = weight, the free-float shares)')
        elif not isinstance(raw, dict) or not raw:
            self.add("index.constituents", f"must be a table of symbol = weight, got {_kind(raw)}")
        else:
            for sym, w in raw.items():
                where = f"index.constituents.{sym}"
                weight = None
                if isinstance(w, bool) or not isinstance(w, int | str):
                    self.add(where, f"the weight must be an integer or a decimal string, got {_kind(w)}")
                else:
                    weight = self.decimal(raw, sym, "index.constituents")
                if weight is not None and weight <= 0:
                    self.add(where, f"the weight must be positive, got {weight}")
                    weight = None
                if instruments is not None and sym not in refs:
                    self.add(where, f"{_q(sym)} is not an instrument{_suggest(sym, refs)}")
                elif instruments is not None and refs[sym] is None:
                    self.add(where, f"{sym} has no ref_price: the index starts from its constituents' previous "
                             "close")
                elif weight is not None:
                    consts.append((sym, weight))
        levels = self.breakers(tbl)
        if name is None or base is None or not consts or len(consts) != len(raw or ()) or levels is None:
            return None
        return Index(name, base, tuple(consts), operator, levels)

    def breakers(self, tbl: dict[str, Any]) -> tuple[Level, ...] | None:
        """The breaker levels of ``[index]`` (SEBI's without ``[[index.breakers]]``); ``None`` when broken."""
        if "breakers" not in tbl:
            return SEBI_LEVELS
        entries = tbl["breakers"]
        if not isinstance(entries, list) or not entries or not all(isinstance(t, dict) for t in entries):
            self.add("index.breakers", "must be an array of tables (write [[index.breakers]] with pct and halts)")
            return None
        out: list[Level] = []
        ok = True
        for i, b in enumerate(entries):
            where = f"[[index.breakers]][{i}]"
            self.keys(b, where, _BREAKER_KEYS)
            pct = None
            if "pct" not in b:
                self.add(where, 'missing required key "pct"')
            else:
                pct = self.decimal(b, "pct", where)
            if pct is not None and not 0 < pct < 100:
                self.add(_at(where, "pct"), f"must be between 0 and 100 percent, got {pct}")
                pct = None
            if pct is not None and out and pct <= out[-1].pct:
                self.add(_at(where, "pct"), f"{pct} is not above the level before it ({out[-1].pct}): give the "
                         "levels lowest first")
                pct = None
            try:
                halts = parse_halts(b.get("halts"))
            except ValueError as e:
                self.add(_at(where, "halts"), str(e))
                halts = None
            if pct is None or halts is None:
                ok = False
            else:
                out.append(Level(pct, halts))
        return tuple(out) if ok else None

    def key(self, tbl: dict[str, Any], key: str, where: str) -> str | None:
        """Return a CURVE public key (Z85), reporting why it is not one."""
        v = tbl[key]
        why = check_public_key(v)
        if why is not None:
            self.add(_at(where, key), f"{_kind(v) if not isinstance(v, str) else 'the key'} {why}")
            return None
        assert isinstance(v, str)
        return v

    def security(self, data: dict[str, Any]) -> Security | None:
        """The ``[security]`` table: where the nodes' secret keys are, their public keys, how brokers log on."""
        tbl = self.table(data, "security")
        if tbl is None:
            return None
        self.keys(tbl, "security", _SECURITY_KEYS)
        folder = self.string(tbl, "keys_dir", "security", required=False) or "keys"
        base = self.source.parent if self.source is not None else Path(".")
        keys_dir = base / Path(folder).expanduser()
        brokers = self.string(tbl, "brokers", "security", required=False) or "keys"
        if brokers not in ("keys", "open"):
            self.add("security.brokers", f"unknown value {_q(brokers)}{_suggest(brokers, ('keys', 'open'))}")
        nodes = tbl.get("nodes", {})
        if not isinstance(nodes, dict):
            self.add("security.nodes", f"must be a table (write [security.nodes]), got {_kind(nodes)}")
            nodes = {}
        out: dict[str, str] = {}
        for label in nodes:
            k = self.key(nodes, label, "security.nodes")
            if k is not None:
                out[label] = k
        return Security(keys_dir, out, brokers)

    def check_keys(self, topo: Topology) -> None:
        """Report what the topology's keys leave open or unclear (``docs/security.md``)."""
        sec = topo.security
        if sec is None:
            remote = [n for n in topo.nodes() if not is_loopback(n.host)]
            keyed = [b.id for b in topo.brokers if b.public_key is not None]
            if remote:
                self.add("security", f"missing table: {remote[0].label} runs on {remote[0].host}, not a loopback "
                         "address, so every socket between nodes needs CURVE keys: add [security] with "
                         "[security.nodes] (exfab keys new --node LABEL makes each node's pair)")
            elif keyed:
                self.add("brokers", f"broker {keyed[0]} has a public_key but the topology has no [security]: the "
                         "gateways need their own keys ([security.nodes]) to take brokers' keys")
            return
        labels = [n.label for n in topo.nodes()]
        missing = [label for label in labels if label not in sec.nodes]
        for label in missing:
            self.add("security.nodes", f"no public key for node {_q(label)}: add {_q(label)} = \"...\" "
                     f"(exfab keys new --node {label} --dir {sec.keys_dir})")
        # A key of no node admits nobody more than the nodes' keys do; next to a node without a key, it is
        # likely that node's, misspelt.
        for label in sec.nodes if missing else ():
            if label not in labels:
                self.add("security.nodes", f"{_q(label)} is not a node of this topology{_suggest(label, labels)}")
        if sec.brokers == "open":
            remote = [n for n in topo.nodes() if not is_loopback(n.host)]
            if remote:
                self.add("security.brokers", f"\"open\" is for loopback topologies only, and {remote[0].label} "
                         f"runs on {remote[0].host}: brokers must log on with keys")
        else:
            if not topo.brokers:
                self.add("brokers", "no broker: with [security] only listed brokers may log on; add [[brokers]] "
                         "entries with id and public_key (exfab keys new BROKER prints one)")
            for i, b in enumerate(topo.brokers):
                if b.public_key is None:
                    self.add(f"brokers[{i}] {_q(b.id)}", "missing required key \"public_key\": with [security] a "
                             f"broker logs on with its key (exfab keys new {b.id} makes one)")
        seen: dict[str, str] = {}
        owners = [*sec.nodes.items(), *((f"broker {b.id}", b.public_key) for b in topo.brokers if b.public_key)]
        for who, k in owners:
            if k in seen:
                self.add("security", f"{who} has the same public key as {seen[k]}: each needs its own key pair")
            else:
                seen[k] = who

    def persistence(self, data: dict[str, Any]) -> Persistence | None:
        tbl = self.table(data, "persistence")
        if tbl is None:
            return None
        self.keys(tbl, "persistence", _PERSISTENCE_KEYS)
        host = self.host(tbl, "host", "persistence")
        return None if host is None else Persistence(host)

    def stores(self, data: dict[str, Any]) -> Stores | None:
        tbl = self.table(data, "stores")
        if tbl is None:
            return None if "stores" in data else Stores()
        self.keys(tbl, "stores", _STORES_KEYS)
        kinds: dict[str, str] = {}
        ok = True
        for store, choices in STORE_KINDS.items():
            kind = self.string(tbl, store, "stores", required=False)
            if kind is None:
                ok = ok and store not in tbl
                kinds[store] = choices[0]
                continue
            if kind not in choices:
                self.add(_at("stores", store), f"unknown store kind {_q(kind)}{_suggest(kind, choices)}")
                ok = False
                continue
            kinds[store] = kind
            if kind in _SERVER_OF:
                server, example = _SERVER_OF[kind]
                if server not in data:
                    self.add(_at("stores", store), f"{_q(kind)} needs a [{server}] table ({example})")
                    ok = False
        return Stores(**kinds) if ok else None

    def zookeeper(self, data: dict[str, Any], exchange: str | None) -> ZooKeeper | None:
        tbl = self.table(data, "zookeeper")
        if tbl is None:
            return None
        self.keys(tbl, "zookeeper", _ZOOKEEPER_KEYS)
        hosts = self.strings(tbl, "hosts", "zookeeper")
        ok = hosts is not None
        for i, h in enumerate(hosts or ()):
            ok = self.host_port(h, f"zookeeper.hosts[{i}]", 2181) and ok
        root = self.string(tbl, "root", "zookeeper", required=False)
        if root is not None and (not root.startswith("/") or (root != "/" and root.endswith("/"))):
            self.add("zookeeper.root", f"{_q(root)} is not a znode path: start it with '/' and do not end it with '/'")
            ok = False
        if root is None:
            ok = ok and "root" not in tbl
            root = f"/exfab/{exchange}"
        if not ok or hosts is None:
            return None
        return ZooKeeper(tuple(hosts), root)

    def host_port(self, text: str, where: str, default_port: int) -> bool:
        """Check a ``host:port`` string (the port may be left out) and claim its port."""
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, str(default_port)
        if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            self.add(where, f"{_q(text)} is not host:port with a port in 1-65535")
            return False
        if "/" in host or any(c.isspace() for c in host):
            self.add(where, f"{_q(text)} is not host:port")
            return False
        self.claim(host, int(port_text), where)
        return True

    def url(self, tbl: dict[str, Any], where: str, schemes: tuple[str, ...], example: str) -> str | None:
        v = self.string(tbl, "url", where)
        if v is None:
            return None
        try:
            parts = urlsplit(v)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme not in schemes or not parts.hostname:
            self.add(_at(where, "url"), f"{_q(v)} is not a URL like {_q(example)} (scheme {' or '.join(schemes)})")
            return None
        self.claim(parts.hostname, port or _DEFAULT_SERVER_PORTS[parts.scheme], _at(where, "url"))
        return v

    def redis(self, data: dict[str, Any]) -> Redis | None:
        tbl = self.table(data, "redis")
        if tbl is None:
            return None
        self.keys(tbl, "redis", _REDIS_KEYS)
        url = self.url(tbl, "redis", ("redis", "rediss"), "redis://host:6379/0")
        return None if url is None else Redis(url)

    def cassandra(self, data: dict[str, Any]) -> Cassandra | None:
        tbl = self.table(data, "cassandra")
        if tbl is None:
            return None
        self.keys(tbl, "cassandra", _CASSANDRA_KEYS)
        hosts = self.strings(tbl, "hosts", "cassandra")
        ok = hosts is not None
        for i, h in enumerate(hosts or ()):
            ok = self.host_ok(h, f"cassandra.hosts[{i}]") and ok
        keyspace = self.string(tbl, "keyspace", "cassandra")
        if keyspace is not None and not _KEYSPACE.match(keyspace):
            self.add("cassandra.keyspace", f"{_q(keyspace)} is not a keyspace name: a letter, then up to 47 letters, "
                     "digits or '_'")
            keyspace = None
        port = self.port(tbl, "port", "cassandra", None, required=False)
        if port is None:
            ok = ok and "port" not in tbl
            port = 9042
        if not ok or hosts is None or keyspace is None:
            return None
        for i, h in enumerate(hosts):
            self.claim(h, port, f"cassandra.hosts[{i}]")
        return Cassandra(tuple(hosts), keyspace, port)

    def influxdb(self, data: dict[str, Any]) -> InfluxDB | None:
        tbl = self.table(data, "influxdb")
        if tbl is None:
            return None
        self.keys(tbl, "influxdb", _INFLUXDB_KEYS)
        url = self.url(tbl, "influxdb", ("http", "https"), "http://host:8086")
        database = self.string(tbl, "database", "influxdb")
        if url is None or database is None:
            return None
        return InfluxDB(url.rstrip("/"), database)


def _close(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
