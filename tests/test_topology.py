"""Topology files: the examples load, every kind of mistake is reported plainly with its place."""

from __future__ import annotations

import io
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from fabric.instruments import Instrument
from tools.topology_cmd import check_command, summary
from topology.load import Problem, TopologyError, check, check_text, load, loads
from topology.model import Endpoint, Node

EXAMPLES = Path(__file__).resolve().parents[1] / "topology" / "examples"

EXCHANGE = """
[exchange]
name = "t"
"""

INSTRUMENTS = """
[[instruments]]
symbol = "TCS"
tick = "0.05"
lot = 1
ref_price = "3500.00"
band_pct = "10"

[[instruments]]
symbol = "INFY"
tick = "0.05"
ref_price = "1580.00"
band_pct = "10"

[[instruments]]
symbol = "SBIN"
tick = "0.05"
ref_price = "815.00"
band_pct = "20"
"""

SHARDS = """
[[shards]]
name = "A"
symbols = ["TCS", "INFY"]
host = "127.0.0.1"
order_port = 7110
pub_port = 7111
recovery_port = 7112

[[shards]]
name = "B"
symbols = ["SBIN"]
host = "127.0.0.1"
order_port = 7120
pub_port = 7121
recovery_port = 7122
"""

PAIR = """
[[shards]]
name = "A"
symbols = ["TCS", "INFY", "SBIN"]

[[shards.replicas]]
name = "A-1"
host = "ex-a.internal"
order_port = 7110
pub_port = 7111
recovery_port = 7112
repl_port = 7113

[[shards.replicas]]
name = "A-2"
host = "ex-b.internal"
order_port = 7110
pub_port = 7111
recovery_port = 7112
repl_port = 7113
"""

GATEWAYS = """
[[gateways]]
name = "gw1"
host = "127.0.0.1"
port = 7101
"""

ZOOKEEPER = """
[zookeeper]
hosts = ["ex-a.internal:2181", "ex-b.internal:2181", "ex-c.internal:2181"]
"""


# A topology with nodes on other hosts than loopback ones needs keys (docs/security.md).
ZOOKEEPER = ZOOKEEPER + """
[[brokers]]
id = "B1"
public_key = "=Q:8M9Q<-+v@AXB:zHd?7dpR)R?Z2p3j2jUu$Yat"

[security]
[security.nodes]
"matcher:A-1" = "XY0%>/:IHQfooZsDi$$LBS(=llMl%xIT0lqpbbYP"
"matcher:A-2" = "2Qb3c7uH>Tw2h@Xl!sg26e#(buaZ4h-liuDOHveG"
"gateway:gw1" = "W3ms*MQu5=*g!i=dzjbUE1j$M=FCNT/E}vx:0(Pu"
"""


def _text(exchange: str = EXCHANGE, instruments: str = INSTRUMENTS, shards: str = SHARDS,
          gateways: str = GATEWAYS, extra: str = "") -> str:
    return exchange + instruments + shards + gateways + extra


def _problems(text: str) -> list[str]:
    return [str(p) for p in check_text(text)]


def _one(text: str) -> str:
    """Return the only problem of ``text``, failing when there are none or several."""
    problems = _problems(text)
    assert len(problems) == 1, problems
    return problems[0]


# -- the examples ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["local.toml", "cluster.toml"])
def test_example_file_checks_clean(name: str) -> None:
    assert check(EXAMPLES / name) == []
    topo = load(EXAMPLES / name)
    assert topo.source == EXAMPLES / name
    assert len(topo.instruments) >= 10
    assert sorted(topo.symbols) == sorted(sym for s in topo.shards for sym in s.symbols)


def test_local_example_is_one_machine_with_embedded_stores() -> None:
    topo = load(EXAMPLES / "local.toml")
    assert topo.hosts() == ["127.0.0.1"]
    assert (topo.stores.recent, topo.stores.orders, topo.stores.history) == ("embedded", "sqlite", "sqlite")
    assert len(topo.shards) == 2 and not any(s.paired for s in topo.shards)
    assert topo.zookeeper is None and topo.redis is None
    assert len(topo.gateways) == 2 and topo.ticker is not None and topo.persistence is not None
    assert all(7100 <= p.port <= 7199 for p in topo.all_ports())
    reliance = topo.instrument("RELIANCE")
    assert reliance == Instrument("RELIANCE", tick=Decimal("0.10"), lot=1, ref_price=Decimal("1420.00"),
                                  band_pct=Decimal("10"), market_protection_pct=Decimal("5"))  # the default


def test_cluster_example_pairs_each_shard_across_two_hosts() -> None:
    topo = load(EXAMPLES / "cluster.toml")
    assert topo.hosts() == ["ex-a.internal", "ex-b.internal", "ex-c.internal"]
    assert len(topo.shards) == 4
    for shard in topo.shards:
        assert shard.paired
        assert shard.replicas[0].host != shard.replicas[1].host
    assert topo.zookeeper is not None and len(topo.zookeeper.hosts) == 3
    assert (topo.stores.recent, topo.stores.orders, topo.stores.history) == ("redis", "cassandra", "influxdb")
    assert topo.redis is not None and topo.cassandra is not None and topo.influxdb is not None
    assert len(topo.gateways) == 2


# -- the model ---------------------------------------------------------------------------------------------------------


def test_shard_of_routes_each_symbol_to_its_shard() -> None:
    topo = loads(_text())
    assert topo.shard_of("TCS").name == "A"
    assert topo.shard_of("INFY").name == "A"
    assert topo.shard_of("SBIN").name == "B"
    assert [i.symbol for i in topo.instruments_of("A")] == ["TCS", "INFY"]


def test_shard_of_unknown_symbol_raises_key_error_naming_it() -> None:
    topo = loads(_text())
    with pytest.raises(KeyError, match="WIPRO"):
        topo.shard_of("WIPRO")


def test_endpoints_connect_by_host_and_bind_loopback_or_all() -> None:
    topo = loads(_text())
    a = topo.shard("A").replicas[0]
    assert a.name == "A" and a.shard == "A"
    assert a.order.connect == "tcp://127.0.0.1:7110"
    assert a.order.bind == "tcp://127.0.0.1:7110"
    assert a.pub.connect == "tcp://127.0.0.1:7111" and a.recovery.connect == "tcp://127.0.0.1:7112"
    assert a.repl is None
    assert Endpoint("ex-a.internal", 7110).bind == "tcp://*:7110"
    # Every address of 127.0.0.0/8 binds itself alone, so two hosts mapped onto one machine share their ports.
    assert Endpoint("127.0.0.2", 7110).bind == "tcp://127.0.0.2:7110"
    assert Endpoint("localhost", 7110).bind == "tcp://127.0.0.1:7110"
    assert Endpoint("10.0.0.2", 7110).bind == "tcp://*:7110"
    assert Endpoint("::1", 7110).connect == "tcp://[::1]:7110"
    assert topo.gateway("gw1").endpoint.connect == "tcp://127.0.0.1:7101"


def test_nodes_list_matchers_first_then_persistence_ticker_gateways() -> None:
    extra = ('[ticker]\nhost = "127.0.0.1"\npub_port = 7180\nsnapshot_port = 7182\nhttp_port = 7181\n'
             '[persistence]\nhost = "127.0.0.1"\n')
    topo = loads(_text(extra=extra))
    assert topo.nodes() == [
        Node("matcher", "A", "127.0.0.1"),
        Node("matcher", "B", "127.0.0.1"),
        Node("persistence", "persistence", "127.0.0.1"),
        Node("ticker", "ticker", "127.0.0.1"),
        Node("gateway", "gw1", "127.0.0.1"),
    ]
    assert topo.nodes()[0].label == "matcher:A"
    assert topo.ticker is not None and topo.ticker.http_url == "http://127.0.0.1:7181/"
    ports = sorted(p.port for p in topo.all_ports())
    assert ports == [7101, 7110, 7111, 7112, 7120, 7121, 7122, 7180, 7181, 7182]


def test_nodes_filtered_by_host_give_that_machines_processes() -> None:
    topo = load(EXAMPLES / "cluster.toml")
    on_b = topo.nodes("ex-b.internal")
    assert {n.label for n in on_b} == {"matcher:A-2", "matcher:B-1", "gateway:gw2"}


def test_pair_replicas_know_their_peer_and_replication_endpoint() -> None:
    topo = loads(_text(shards=PAIR, extra=ZOOKEEPER))
    shard, r1 = topo.replica("A-1")
    assert shard.paired and r1.repl is not None and r1.repl.connect == "tcp://ex-a.internal:7113"
    peer = shard.peer("A-1")
    assert peer is not None and peer.name == "A-2"
    assert topo.zookeeper is not None and topo.zookeeper.root == "/exfab/t"
    assert topo.zookeeper.connect_string == "ex-a.internal:2181,ex-b.internal:2181,ex-c.internal:2181"


def test_defaults_fill_data_dir_stores_and_replica_names() -> None:
    shards = PAIR.replace('name = "A-1"\n', "").replace('name = "A-2"\n', "")
    topo = loads(_text(shards=shards, extra=ZOOKEEPER))
    assert topo.data_dir == Path(".exfab/t")
    assert (topo.stores.recent, topo.stores.orders, topo.stores.history) == ("embedded", "sqlite", "sqlite")
    assert [r.name for r in topo.shard("A").replicas] == ["A-1", "A-2"]
    assert topo.journal_dir("A-1") == Path(".exfab/t/matcher-A-1/journal")
    assert topo.sqlite_path("orders") == Path(".exfab/t/orders.sqlite3")


# -- mistakes, one kind per test ---------------------------------------------------------------------------------------


def test_unknown_top_level_table_suggests_the_near_name() -> None:
    msg = _one(_text(extra='[tickr]\nhost = "127.0.0.1"\n'))
    assert msg == 'top level: unknown table "tickr"; did you mean [ticker]?'


def test_unknown_key_in_table_suggests_the_near_key() -> None:
    msg = _one(_text(shards=SHARDS.replace("order_port = 7120", "order_port = 7120\norder_prot = 7125")))
    assert msg == 'shards[1] "B": unknown key "order_prot"; did you mean "order_port"?'


def test_unknown_key_without_near_name_lists_the_allowed_keys() -> None:
    msg = _one(_text(gateways=GATEWAYS + "colour = 1\n"))
    assert msg.startswith('gateways[0] "gw1": unknown key "colour"; expected one of "name", "host", "port"')


def test_missing_required_key_names_key_and_place() -> None:
    msg = _one(_text(gateways=GATEWAYS.replace("port = 7101\n", "")))
    assert msg == 'gateways[0] "gw1": missing required key "port"'


def test_missing_exchange_table_is_reported() -> None:
    assert _one(_text(exchange="")) == "[exchange]: missing table: the file needs one"


def test_wrong_type_names_expected_and_found_types() -> None:
    msg = _one(_text(shards=SHARDS.replace("order_port = 7110", 'order_port = "7110"')))
    assert msg == 'shards[0] "A".order_port: must be an integer, got string "7110"'


def test_table_written_as_single_table_asks_for_array_of_tables() -> None:
    gateways = GATEWAYS.replace("[[gateways]]", "[gateways]")
    assert _one(_text(gateways=gateways)) == "gateways: must be an array of tables: write [[gateways]], not [gateways]"


def test_symbol_on_two_shards_names_both_shards() -> None:
    msg = _one(_text(shards=SHARDS.replace('symbols = ["SBIN"]', 'symbols = ["SBIN", "TCS"]')))
    assert msg == 'shards[1] "B": symbol TCS is also on shard "A"'


def test_symbol_on_no_shard_names_the_instrument() -> None:
    msg = _one(_text(shards=SHARDS.replace('symbols = ["TCS", "INFY"]', 'symbols = ["TCS"]')))
    assert msg == "instruments[1] \"INFY\": symbol INFY is on no shard: add it to one shard's symbols"


def test_shard_symbol_without_instrument_is_reported_with_a_near_symbol() -> None:
    msg = _one(_text(instruments=INSTRUMENTS + '[[instruments]]\nsymbol = "WIPRO"\n',
                     shards=SHARDS.replace('symbols = ["SBIN"]', 'symbols = ["SBIN", "WIPRO", "INFI"]')))
    assert msg == 'shards[1] "B".symbols: symbol INFI has no [[instruments]] entry (did you mean INFY?)'


def test_symbol_listed_twice_on_one_shard_is_reported() -> None:
    msg = _one(_text(shards=SHARDS.replace('symbols = ["SBIN"]', 'symbols = ["SBIN", "SBIN"]')))
    assert msg == 'shards[1] "B".symbols: symbol SBIN is listed twice'


def test_host_port_used_twice_names_both_places() -> None:
    msg = _one(_text(gateways=GATEWAYS.replace("port = 7101", "port = 7111")))
    assert msg == 'gateways[0] "gw1".port: 127.0.0.1:7111 is also used by shards[0] "A".pub_port'


def test_localhost_and_loopback_address_clash_on_the_same_port() -> None:
    gateways = GATEWAYS.replace('host = "127.0.0.1"', 'host = "localhost"').replace("7101", "7110")
    assert "localhost:7110 is also used by shards[0] \"A\".order_port" in _one(_text(gateways=gateways))


def test_same_port_on_different_hosts_is_fine() -> None:
    assert check_text(_text(shards=PAIR, extra=ZOOKEEPER)) == []


def test_server_port_clashing_with_node_port_is_reported() -> None:
    extra = '[stores]\nrecent = "redis"\n[redis]\nurl = "redis://127.0.0.1:7101/0"\n'
    assert _one(_text(extra=extra)) == 'redis.url: 127.0.0.1:7101 is also used by gateways[0] "gw1".port'


@pytest.mark.parametrize("port", [0, 70000, -5])
def test_port_out_of_range_is_reported(port: int) -> None:
    msg = _one(_text(gateways=GATEWAYS.replace("port = 7101", f"port = {port}")))
    assert msg == f'gateways[0] "gw1".port: port {port} is out of range 1-65535'


def test_unknown_store_kind_suggests_the_near_kind() -> None:
    msg = _one(_text(extra='[stores]\nrecent = "reddis"\n[redis]\nurl = "redis://ex-c.internal:6379/0"\n'))
    assert msg == 'stores.recent: unknown store kind "reddis"; did you mean "redis"?'


@pytest.mark.parametrize(
    ("store", "kind", "table"),
    [("recent", "redis", "[redis]"), ("orders", "cassandra", "[cassandra]"), ("history", "influxdb", "[influxdb]")],
)
def test_store_kind_without_its_server_table_is_reported(store: str, kind: str, table: str) -> None:
    msg = _one(_text(extra=f'[stores]\n{store} = "{kind}"\n'))
    assert msg.startswith(f'stores.{store}: "{kind}" needs a {table} table')


def test_pair_without_zookeeper_is_reported_on_the_shard() -> None:
    msg = _one(_text(shards=PAIR))
    assert msg.startswith('shards[0] "A": a primary/secondary pair needs [zookeeper]')


def test_pair_replica_without_repl_port_is_reported() -> None:
    shards = PAIR.replace("repl_port = 7113\n", "", 1)
    msg = _one(_text(shards=shards, extra=ZOOKEEPER))
    assert msg == 'shards[0] "A".replicas[0] "A-1": missing required key "repl_port"'


def test_more_than_two_replicas_is_reported() -> None:
    third = '[[shards.replicas]]\nname = "A-3"\nhost = "ex-c.internal"\norder_port = 7110\npub_port = 7111\n' \
            'recovery_port = 7112\nrepl_port = 7113\n'
    msg = _one(_text(shards=PAIR + third, extra=ZOOKEEPER))
    assert msg == 'shards[0] "A".replicas: 3 replicas: a shard has one matcher or a primary/secondary pair (2)'


def test_shard_with_both_host_and_replicas_is_reported() -> None:
    shards = PAIR.replace('symbols = ["TCS", "INFY", "SBIN"]\n', 'symbols = ["TCS", "INFY", "SBIN"]\nhost = "x"\n')
    msg = _one(_text(shards=shards, extra=ZOOKEEPER))
    assert msg.startswith('shards[0] "A": give either host and ports or [[shards.replicas]], not both')


def test_shard_without_matcher_is_reported() -> None:
    shards = '[[shards]]\nname = "A"\nsymbols = ["TCS", "INFY", "SBIN"]\n'
    assert _one(_text(shards=shards)).startswith('shards[0] "A": no matcher: give host, order_port')


def test_no_gateway_is_reported() -> None:
    assert _one(_text(gateways="")).startswith("gateways: no gateway: brokers need at least one [[gateways]]")


@pytest.mark.parametrize(
    ("part", "mutate", "expected"),
    [
        ("shards", lambda s: s.replace('name = "B"', 'name = "A"'), 'shards[1] "A": shard name "A" is used twice '
                                                                      '(also shards[0] "A")'),
        ("gateways", lambda g: g + g.replace("7101", "7102"), 'gateways[1] "gw1": gateway name "gw1" is used twice '
                                                              '(also gateways[0] "gw1")'),
        ("instruments", lambda i: i + '[[instruments]]\nsymbol = "TCS"\n',
         'instruments[3] "TCS": symbol TCS is listed twice (also instruments[0] "TCS")'),
        ("extra", lambda _: '[[brokers]]\nid = "B1"\n[[brokers]]\nid = "B1"\n', 'brokers[1] "B1": broker id "B1" is '
                                                                                'listed twice (also brokers[0] "B1")'),
    ],
)
def test_duplicate_name_is_reported_with_both_places(part: str, mutate: Callable[[str], str], expected: str) -> None:
    parts = {"instruments": INSTRUMENTS, "shards": SHARDS, "gateways": GATEWAYS, "extra": ""}
    parts[part] = mutate(parts[part])
    assert _one(_text(**parts)) == expected


def test_duplicate_matcher_name_across_shards_is_reported() -> None:
    pair_b = PAIR.replace('name = "A"\n', 'name = "B"\n').replace('symbols = ["TCS", "INFY", "SBIN"]', "symbols = []")
    pair_b = pair_b.replace("ex-a", "ex-c").replace("ex-b", "ex-d")
    problems = _problems(_text(shards=PAIR + pair_b, extra=ZOOKEEPER))
    assert 'shards[1] "B".replicas[0] "A-1": matcher name "A-1" is used twice (also shards[0] "A".replicas[0] ' \
           '"A-1")' in problems


@pytest.mark.parametrize(
    ("line", "replacement", "expected"),
    [
        ('band_pct = "10"\n\n[[instruments]]\nsymbol = "INFY"', 'band_pct = "150"\n\n[[instruments]]\nsymbol = "INFY"',
         'instruments[0] "TCS": band_pct must be above 0 and below 100, got 150'),
        ('tick = "0.05"\nlot = 1', 'tick = "0"\nlot = 1', 'instruments[0] "TCS": tick must be a positive decimal'),
        ("lot = 1", "lot = 0", 'instruments[0] "TCS": lot must be a positive integer up to 1000000000000, got 0'),
        ('tick = "0.05"\nlot = 1', 'tick = "abc"\nlot = 1', "instruments[0] \"TCS\".tick: not a decimal number: 'abc'"),
        ('tick = "0.05"\nlot = 1', "tick = 0.05\nlot = 1", 'instruments[0] "TCS".tick: write decimals as strings'),
        ("lot = 1", "lot = 1.5", 'instruments[0] "TCS".lot: must be a whole number, got float 1.5'),
        ('ref_price = "3500.00"\n', "", 'instruments[0] "TCS": a price band needs a reference price'),
    ],
)
def test_bad_instrument_value_reuses_the_instrument_message(line: str, replacement: str, expected: str) -> None:
    msg = _one(_text(instruments=INSTRUMENTS.replace(line, replacement, 1)))
    assert msg.startswith(expected), msg


def test_lot_as_digit_string_and_zero_band_are_accepted() -> None:
    instruments = INSTRUMENTS.replace("lot = 1", 'lot = "5"').replace('band_pct = "20"', 'band_pct = "0"')
    topo = loads(_text(instruments=instruments))
    assert topo.instrument("TCS").lot == 5
    assert not topo.instrument("SBIN").banded


def test_market_protection_defaults_to_five_percent_and_can_be_set_or_off() -> None:
    instruments = INSTRUMENTS.replace("lot = 1", 'lot = 1\nmarket_protection_pct = "2.5"', 1)
    topo = loads(_text(instruments=instruments))
    assert topo.instrument("TCS").protect_bp == 250
    assert topo.instrument("INFY").protect_bp == 500
    off = loads(_text(instruments=INSTRUMENTS.replace("lot = 1", 'lot = 1\nmarket_protection_pct = "0"', 1)))
    assert off.instrument("TCS").market_protection_pct is None and off.instrument("TCS").protect_bp == 0
    msg = _one(_text(instruments=INSTRUMENTS.replace("lot = 1", 'lot = 1\nmarket_protection_pct = "120"', 1)))
    assert msg.startswith('instruments[0] "TCS": market_protection_pct must be from 0 to below 100'), msg


def test_bad_server_tables_are_reported() -> None:
    extra = ('[zookeeper]\nhosts = ["zk1:99999"]\nroot = "exfab"\n[influxdb]\nurl = "ftp://x"\n'
             '[cassandra]\nhosts = ["c1"]\nkeyspace = "1bad"\n')
    assert _problems(_text(extra=extra)) == [
        'zookeeper.hosts[0]: "zk1:99999" is not host:port with a port in 1-65535',
        "zookeeper.root: \"exfab\" is not a znode path: start it with '/' and do not end it with '/'",
        'cassandra.keyspace: "1bad" is not a keyspace name: a letter, then up to 47 letters, digits or \'_\'',
        'influxdb.url: "ftp://x" is not a URL like "http://host:8086" (scheme http or https)',
        'influxdb: missing required key "database"',
    ]


def test_host_with_port_in_it_is_reported() -> None:
    msg = _one(_text(gateways=GATEWAYS.replace('"127.0.0.1"', '"127.0.0.1:7101"')))
    assert msg == ('gateways[0] "gw1".host: "127.0.0.1:7101" has a port: give the host alone, '
                   "and the port in its own key")


# -- every problem, not the first --------------------------------------------------------------------------------------


def test_check_reports_every_problem_not_only_the_first() -> None:
    text = _text(
        shards=SHARDS.replace('symbols = ["SBIN"]', 'symbols = ["TCS"]').replace("pub_port = 7121", "pub_port = 0"),
        gateways=GATEWAYS.replace("port = 7101", 'port = "x"'),
        extra='[stores]\norders = "mongo"\n',
    )
    problems = _problems(text)
    assert 'shards[1] "B".pub_port: port 0 is out of range 1-65535' in problems
    assert 'gateways[0] "gw1".port: must be an integer, got string "x"' in problems
    assert 'shards[1] "B": symbol TCS is also on shard "A"' in problems
    assert "instruments[2] \"SBIN\": symbol SBIN is on no shard: add it to one shard's symbols" in problems
    assert any(p.startswith('stores.orders: unknown store kind "mongo"') for p in problems)
    assert len(problems) == 5


def test_load_raises_topology_error_carrying_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(_text(gateways="", extra='[stores]\nhistory = "influx"\n'), encoding="utf-8")
    with pytest.raises(TopologyError) as info:
        load(path)
    err = info.value
    assert len(err.problems) == 2 and all(isinstance(p, Problem) for p in err.problems)
    assert str(path) in str(err) and "2 problems" in str(err)
    assert check(path) == list(err.problems)


def test_invalid_toml_is_one_problem_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[exchange]\nname = "t\n', encoding="utf-8")
    (problem,) = check(path)
    assert problem.where == str(path) and "not valid TOML" in problem.message and "line 2" in problem.message


def test_missing_file_is_one_problem(tmp_path: Path) -> None:
    (problem,) = check(tmp_path / "absent.toml")
    assert "cannot read the file" in problem.message


# -- the command -------------------------------------------------------------------------------------------------------


def test_check_command_prints_summary_and_exits_zero() -> None:
    out = io.StringIO()
    assert check_command(EXAMPLES / "local.toml", out=out) == 0
    assert out.getvalue() == ("OK: 12 instruments on 2 shards, 2 gateways, ticker, persistence, 1 host; "
                              "stores: recent=embedded, orders=sqlite, history=sqlite\n")


def test_check_command_counts_the_matchers_of_pairs() -> None:
    out = io.StringIO()
    assert check_command(EXAMPLES / "cluster.toml", out=out) == 0
    assert out.getvalue() == ("OK: 16 instruments on 4 shards (all primary/secondary pairs: 8 matchers), 2 gateways, "
                              "2 tickers, persistence, 3 ZooKeeper servers, 3 hosts; "
                              "stores: recent=redis, orders=cassandra, history=influxdb\n")


def test_check_command_prints_every_problem_one_per_line_and_exits_one(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(_text(gateways="", shards=SHARDS.replace("7121", "70000")), encoding="utf-8")
    out = io.StringIO()
    assert check_command(path, out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines == [
        'shards[1] "B".pub_port: port 70000 is out of range 1-65535',
        "gateways: no gateway: brokers need at least one [[gateways]] with name, host and port",
        f"FAILED: 2 problems in {path}",
    ]


# -- two tickers (A and B feeds) ---------------------------------------------------------------------------------------

TICKERS = """
[[tickers]]
host = "127.0.0.1"
pub_port = 7180
snapshot_port = 7182
http_port = 7181

[[tickers]]
host = "127.0.0.1"
pub_port = 7190
snapshot_port = 7192
http_port = 7191
"""


def test_two_tickers_are_two_nodes_the_first_is_the_ticker() -> None:
    topo = loads(_text(extra=TICKERS))
    a, b = topo.tickers
    assert (a.name, b.name) == ("ticker", "ticker-b") and topo.ticker == a
    assert topo.ticker_named("ticker-b") == b and b.ws_url == "ws://127.0.0.1:7191/ws"
    with pytest.raises(KeyError, match="ticker-c"):
        topo.ticker_named("ticker-c")
    assert [n for n in topo.nodes() if n.kind == "ticker"] == [Node("ticker", "ticker", "127.0.0.1"),
                                                                Node("ticker", "ticker-b", "127.0.0.1")]
    assert sorted(p.port for p in topo.all_ports() if p.node.name == "ticker-b") == [7190, 7191, 7192]
    assert summary(topo).startswith("OK: 3 instruments on 2 shards, 1 gateway, 2 tickers, 1 host;")


def test_one_ticker_as_an_array_and_named_tickers() -> None:
    one = TICKERS[:TICKERS.index("[[tickers]]", 10)]
    topo = loads(_text(extra=one))
    assert topo.tickers == (topo.ticker,) and topo.ticker is not None and topo.ticker.name == "ticker"
    named = TICKERS.replace('[[tickers]]\nhost', '[[tickers]]\nname = "md-a"\nhost', 1)
    assert [t.name for t in loads(_text(extra=named)).tickers] == ["md-a", "ticker-b"]
    single = loads(_text(extra='[ticker]\nhost = "127.0.0.1"\npub_port = 7180\nsnapshot_port = 7182\n'
                               'http_port = 7181\n'))
    assert single.tickers == (single.ticker,) and single.ticker is not None and single.ticker.name == "ticker"


def test_ticker_and_tickers_together_is_a_mistake() -> None:
    msg = _one(_text(extra='[ticker]\nhost = "127.0.0.1"\npub_port = 7170\nsnapshot_port = 7172\n'
                           'http_port = 7171\n' + TICKERS))
    assert msg == "tickers: give either one [ticker] or [[tickers]] (one table per ticker), not both"


def test_tickers_mistakes_say_which_ticker() -> None:
    clash = TICKERS.replace("pub_port = 7190", "pub_port = 7180")
    assert _one(_text(extra=clash)) == 'tickers[1].pub_port: 127.0.0.1:7180 is also used by tickers[0].pub_port'
    twice = TICKERS.replace('[[tickers]]\nhost', '[[tickers]]\nname = "md"\nhost')
    assert _one(_text(extra=twice)) == 'tickers[1] "md": ticker name "md" is used twice (also tickers[0] "md")'
    typo = TICKERS.replace("http_port = 7191", "http_prot = 7191")
    assert _problems(_text(extra=typo)) == [
        'tickers[1]: unknown key "http_prot"; did you mean "http_port"?',
        'tickers[1]: missing required key "http_port"']
    assert _one(_text(extra='[tickers]\nhost = "127.0.0.1"\n')) == (
        "tickers: must be an array of tables: write [[tickers]], not [tickers]")


def test_the_model_keeps_ticker_and_tickers_in_step() -> None:
    from topology.model import Ticker, Topology

    a, b = Ticker("h", 1, 2, 3), Ticker("h", 4, 5, 6, "ticker-b")
    assert Topology("t", Path("."), (), (), (), ticker=a).tickers == (a,)
    assert Topology("t", Path("."), (), (), (), tickers=(a, b)).ticker == a
    with pytest.raises(ValueError, match="first of tickers"):
        Topology("t", Path("."), (), (), (), ticker=b, tickers=(a, b))


# -- self-trade prevention per broker --------------------------------------------------------------------------------

def test_broker_stp_mode_is_read_and_off_by_default() -> None:
    topo = loads(_text(extra='[[brokers]]\nid = "B1"\nstp = "cancel_both"\n[[brokers]]\nid = "B2"\n'))
    assert [(b.id, b.stp) for b in topo.brokers] == [("B1", "cancel_both"), ("B2", "off")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"cancel_rest"', 'brokers[0] "B1".stp: unknown self-trade prevention mode "cancel_rest"; did you mean '
                          '"cancel_resting"?'),
        ('"never"', 'brokers[0] "B1".stp: unknown self-trade prevention mode "never"; expected one of "off", '
                    '"cancel_resting", "cancel_incoming", "cancel_both"'),
        ("true", 'brokers[0] "B1".stp: must be a string, got boolean true'),
    ],
)
def test_bad_broker_stp_mode_is_reported_with_the_modes(value: str, expected: str) -> None:
    assert _one(_text(extra=f'[[brokers]]\nid = "B1"\nstp = {value}\n')) == expected
