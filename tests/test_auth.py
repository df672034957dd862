"""Authentication over real sockets: CurveZMQ at the gateways and between nodes (docs/security.md).

The exchange here is local.toml as it ships (its DEMO keys, brokers logging on with theirs) on free ports.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from fabric.auth import Keyring, load_key, new_key, write_key
from fabric.client import BrokerClient, ExchangeUnavailable
from fabric.feedtopics import HEARTBEAT_TOPIC
from fabric.protocol import (
    Cancel,
    Logon,
    LogonAck,
    LogonReject,
    New,
    OrderCommand,
    ReplayReply,
    ReplayRequest,
    decode_internal,
    decode_server,
    encode,
    exec_topic,
)
from tests.helpers import LOCAL, ROOT, gateway_endpoints, journal_events, topology_on_free_ports
from topology.keys import broker_keyring, node_keyring
from topology.launcher import Launcher
from topology.load import TopologyError, check_text, load, loads
from topology.model import GATEWAY, MATCHER, PERSISTENCE

pytestmark = pytest.mark.e2e

QUIET_MS = 1500  # how long a refused peer is watched for an answer that must not come


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    tmp = tmp_path_factory.mktemp("auth")
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp, brokers="keys"), workdir=tmp,
                        kinds=(MATCHER, "ticker", GATEWAY))
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()


def _dealer(address: str, keys: Keyring | None) -> zmq.Socket[bytes]:
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if keys is None:
        s.connect(address)
    else:
        keys.connect(s, address)
    return s


def _stranger(topo: Any) -> Keyring:
    # A well-formed CURVE client that knows every server's public key, with a key the topology does not list.
    ring = node_keyring(topo, "ticker:ticker")
    assert ring is not None
    return Keyring(new_key(), ring.servers)


def _price(ex: Launcher, sym: str, ticks_above_low: int) -> str:
    inst = ex.topo.instrument(sym)
    return inst.to_price((inst.band_lo or 0) + ticks_above_low)


def _answers(sock: zmq.Socket[bytes], wait_ms: int = QUIET_MS) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + wait_ms / 1000
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            out.append(sock.recv_multipart()[-1])
    return out


# ---------------------------------------------------------------------------------------------- at the gateway


def test_client_with_an_unknown_key_is_refused(keyed: Launcher) -> None:
    topo = keyed.topo
    with pytest.raises(ExchangeUnavailable), BrokerClient(gateway_endpoints(keyed), "B1", timeout=0.5, retries=0,
                                                          keys=_stranger(topo)):
        pass
    assert topo.security is not None
    s = _dealer(topo.gateways[0].endpoint.connect, _stranger(topo))
    s.send(encode(Logon(broker="B1")))
    assert _answers(s) == []
    s.close(0)


def test_plain_client_is_refused(keyed: Launcher) -> None:
    s = _dealer(keyed.topo.gateways[0].endpoint.connect, None)
    s.send(encode(Logon(broker="B1")))
    assert _answers(s) == []
    s.close(0)
    with pytest.raises(ExchangeUnavailable), BrokerClient(gateway_endpoints(keyed), "B1", timeout=0.5, retries=0):
        pass  # no keys: in the clear


def test_logon_as_another_broker_than_the_keys_is_refused_auth_failed(keyed: Launcher) -> None:
    s = _dealer(keyed.topo.gateways[0].endpoint.connect, broker_keyring(keyed.topo, "B1"))
    s.send(encode(Logon(broker="B2")))
    got = [decode_server(b) for b in _answers(s, 5000)]
    assert len(got) == 1 and isinstance(got[0], LogonReject), got
    assert got[0].reason == "auth_failed" and "B1" in got[0].text
    s.send(encode(Logon(broker="B1")))  # the key's own id logs on, on the same connection
    got = [decode_server(b) for b in _answers(s, 5000)]
    assert len(got) == 1 and isinstance(got[0], LogonAck) and got[0].broker == "B1", got
    s.close(0)


def test_another_brokers_cancel_replace_and_status_get_unknown_order(keyed: Launcher) -> None:
    ex = keyed
    sym = ex.topo.shards[0].symbols[1]
    px = _price(ex, sym, 40)
    gws = gateway_endpoints(ex)
    with BrokerClient(gws, "B3", keys=broker_keyring(ex.topo, "B3")) as owner, \
            BrokerClient(gws[::-1], "B4", keys=broker_keyring(ex.topo, "B4")) as other:
        placed = owner.buy(sym, 10, px, "GTC", oid="auth-own-1")
        assert placed.accepted and placed.status is not None and placed.status.state == "new", placed
        cancel = other.cancel("auth-own-1", sym)
        replace = other.replace("auth-own-1", sym, qty=5)
        status = other.order_status("auth-own-1", sym)
        for r in (cancel, replace):
            assert r.rejected is not None and r.rejected.reason == "unknown_order", r
        assert status.state == "unknown"
        mine = owner.order_status("auth-own-1", sym)
        assert mine.state == "new" and mine.leaves_qty == 10, mine
        assert [o.oid for o in owner.open_orders(sym)] == ["auth-own-1"]
        assert owner.cancel("auth-own-1", sym).accepted


# ------------------------------------------------------------------------------------------- between nodes


def test_raw_order_cmd_to_a_matcher_without_a_node_key_changes_no_book(keyed: Launcher) -> None:
    ex = keyed
    sym = ex.topo.shards[0].symbols[2]
    with BrokerClient(gateway_endpoints(ex), "B2", keys=broker_keyring(ex.topo, "B2")) as b2:
        assert b2.buy(sym, 7, _price(ex, sym, 30), "GTC", oid="auth-victim").accepted
        before = journal_events(ex, "A")
        order_port = ex.topo.shards[0].replicas[0].order.connect
        forged = [OrderCommand(gateway="gw1", req=900_001, broker="B2", cmd=Cancel(oid="auth-victim", symbol=sym)),
                  OrderCommand(gateway="gw1", req=900_002, broker="B2",
                               cmd=New(oid="auth-forged", symbol=sym, side="sell", type="limit",
                                       price=_price(ex, sym, 30), qty=7, tif="GTC"))]
        b2_key = broker_keyring(ex.topo, "B2")  # a broker's key is known to the gateways, not to the matchers
        for keys in (None, _stranger(ex.topo), b2_key):
            s = _dealer(order_port, keys)
            for cmd in forged:
                s.send(encode(cmd))
            assert _answers(s) == [], f"the matcher answered a forged command ({keys and keys.own.public})"
            s.close(0)
        assert journal_events(ex, "A") == before
        st = b2.order_status("auth-victim", sym)
        assert st.state == "new" and st.leaves_qty == 7
        assert b2.order_status("auth-forged", sym).state == "unknown"
        assert b2.cancel("auth-victim", sym).accepted


def test_sub_on_a_matchers_pub_without_a_node_key_receives_nothing(keyed: Launcher) -> None:
    ex = keyed
    pub = ex.topo.shards[0].replicas[0].pub.connect
    ctx = zmq.Context.instance()
    node = node_keyring(ex.topo, "ticker:ticker")  # a node's key: the positive control
    subs: dict[str, zmq.Socket[bytes]] = {}
    for who, keys in (("plain", None), ("stranger", _stranger(ex.topo)), ("node", node)):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.subscribe(exec_topic(0))
        if keys is None:
            s.connect(pub)
        else:
            keys.connect(s, pub)
        subs[who] = s
    time.sleep(0.5)  # subscriptions reach the matcher
    sym = ex.topo.shards[0].symbols[3]
    with BrokerClient(gateway_endpoints(ex), "B1", keys=broker_keyring(ex.topo, "B1")) as b1:
        for i in range(3):
            assert b1.buy(sym, 1, _price(ex, sym, 20), "IOC", oid=f"auth-pub-{i}").accepted
    seen = {who: _answers(s, 1000) for who, s in subs.items()}
    for s in subs.values():
        s.close(0)
    assert seen["plain"] == [] and seen["stranger"] == []
    assert len(seen["node"]) >= 3, "the node's subscriber saw the trading go on"


def test_replay_port_answers_nothing_to_a_stranger(keyed: Launcher) -> None:
    ex = keyed
    recovery = ex.topo.shards[0].replicas[0].recovery.connect
    ask = encode(ReplayRequest(shard=0, first=1, last=2))
    for keys in (None, _stranger(ex.topo), broker_keyring(ex.topo, "B1")):
        s = _dealer(recovery, keys)
        s.send(ask)
        assert _answers(s) == []
        s.close(0)
    s = _dealer(recovery, node_keyring(ex.topo, f"{PERSISTENCE}:{PERSISTENCE}"))
    s.send(ask)
    got = [decode_internal(b) for b in _answers(s, 5000)]
    s.close(0)
    assert got and isinstance(got[0], ReplayReply), got


def test_ticker_feed_and_snapshots_stay_open(keyed: Launcher) -> None:
    tk = keyed.topo.ticker
    assert tk is not None
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.subscribe(HEARTBEAT_TOPIC)
    sub.connect(tk.pub.connect)  # in the clear, no key
    assert sub.poll(10_000), "the ticker's public feed reached a plain subscriber"
    sub.close(0)


# ----------------------------------------------------------------------------------------- keys and topology


def _exfab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_keys_new_output_round_trips_into_a_topology_that_loads(tmp_path: Path) -> None:
    broker = _exfab("keys", "new", "NEWB", "--dir", "brokers", "--role", "operator", cwd=tmp_path)
    assert broker.returncode == 0, broker.stderr
    node = _exfab("keys", "new", "--node", "gateway:gw1", "--dir", "keys", cwd=tmp_path)
    assert node.returncode == 0, node.stderr
    again = _exfab("keys", "new", "NEWB", "--dir", "brokers", cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr
    text = LOCAL.read_text()
    gw1_line = next(ln for ln in node.stdout.splitlines() if ln.startswith('"gateway:gw1"'))
    text = "\n".join(gw1_line if ln.startswith('"gateway:gw1"') else ln for ln in text.splitlines()) + "\n"
    text = text.replace("[[brokers]]", broker.stdout + "\n[[brokers]]", 1)
    (tmp_path / "t.toml").write_text(text.replace('keys_dir = "keys"', f'keys_dir = "{tmp_path / "keys"}"'))
    topo = load(tmp_path / "t.toml")
    pair = load_key(tmp_path / "brokers" / "broker-NEWB.key_secret")
    b = next(b for b in topo.brokers if b.id == "NEWB")
    assert b.public_key == pair.public and b.role == "operator"
    ring = node_keyring(topo, "gateway:gw1")  # the node's secret file is the pair the topology lists
    assert ring is not None and ring.own == load_key(tmp_path / "keys" / "gateway-gw1.key_secret")


def _local(**edits: str) -> str:
    text = LOCAL.read_text().replace('keys_dir = "keys"', f'keys_dir = "{LOCAL.parent / "keys"}"')
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    return text


def _problems(text: str) -> list[str]:
    return [str(p) for p in check_text(text)]


def test_a_remote_host_without_security_is_refused() -> None:
    from topology.ports import without_security

    text = without_security(LOCAL.read_text()).replace('host = "127.0.0.1"\norder_port = 7110',
                                                       'host = "ex-a.internal"\norder_port = 7110')
    (p,) = _problems(text)
    assert "matcher:A runs on ex-a.internal, not a loopback address" in p and "[security]" in p
    assert _problems(without_security(LOCAL.read_text())) == []  # loopback only: open, with warnings at start


def test_bad_keys_get_specific_reasons() -> None:
    short = _problems(_local(**{'"matcher:A" = "': '"matcher:A" = "abc'}))
    assert any("security.nodes.matcher:A: the key is 43 characters long" in p for p in short), short
    no_node = _problems(_local(**{'"matcher:B" = ': '"matcher:Z" = '}))
    assert any('no public key for node "matcher:B"' in p for p in no_node), no_node
    assert any('"matcher:Z" is not a node of this topology; did you mean "matcher:A"?' in p
               or '"matcher:Z" is not a node of this topology' in p for p in no_node)
    text = _local()
    first_key = text[text.index('public_key = "') : text.index('"', text.index('public_key = "') + 14) + 1]
    missing = _problems(text.replace(first_key, "", 1))
    assert any('missing required key "public_key"' in p and "exfab keys new DEMO1" in p for p in missing), missing
    role = _problems(text.replace('role = "operator"', 'role = "operater"'))
    assert any('unknown role "operater"; did you mean "operator"?' in p for p in role), role
    keys = dict(re.findall(r'^"(matcher:[AB])" = "([^"]+)"', text, re.MULTILINE))
    twice = _problems(text.replace(keys["matcher:B"], keys["matcher:A"]))
    assert any("the same public key as" in p for p in twice), twice


def test_brokers_open_is_for_loopback_only() -> None:
    text = _local(**{'brokers = "keys"': 'brokers = "open"'})
    assert _problems(text) == []
    remote = text.replace('name = "gw2"\nhost = "127.0.0.1"', 'name = "gw2"\nhost = "gw2.internal"')
    assert any('"open" is for loopback topologies only, and gateway:gw2 runs on gw2.internal' in p
               for p in _problems(remote))


def test_a_node_key_file_that_is_not_the_listed_pair_is_refused(tmp_path: Path) -> None:
    write_key(tmp_path, "matcher-A", new_key())
    topo = loads(_local(**{f'keys_dir = "{LOCAL.parent / "keys"}"': f'keys_dir = "{tmp_path}"'}))
    with pytest.raises(ValueError, match=re.escape("is not the one [security.nodes] lists for matcher:A")):
        node_keyring(topo, "matcher:A")
    with pytest.raises(ValueError, match="no such key file"):
        node_keyring(topo, "matcher:B")
    with pytest.raises(TopologyError):
        loads(_local(**{'"matcher:A" = "': '"matcher:A" = "x'}))


def test_the_gateway_session_carries_the_keys_broker_and_role() -> None:
    from nodes.gateway import Gateway

    topo = load(LOCAL)
    gw = Gateway(topo, "gw1", ctx=zmq.Context())
    try:
        gw._logon(b"c1", Logon(broker="ops"), 0.0, "ops")
        gw._logon(b"c2", Logon(broker="B1"), 0.0, "B2")  # the key is B2's: refused
        gw._logon(b"c3", Logon(broker="B2"), 0.0, "B2")
        assert gw.sessions[b"c1"].role == "operator" and gw.sessions[b"c3"].role == "broker"
        assert b"c2" not in gw.sessions
        refused = [decode_server(b) for b in gw.outq[b"c2"]]
        assert isinstance(refused[0], LogonReject) and refused[0].reason == "auth_failed"
    finally:
        gw._lookups.shutdown(wait=False)
        gw.lookup.close()


def test_loopback_copy_runs_open_without_the_secret_keys_and_keeps_them_when_present() -> None:
    from topology.loopback import map_topology

    cluster = map_topology(LOCAL.parent / "cluster.toml", can_run=lambda _server, _table: None)
    assert cluster.topology.security is None and all(b.public_key is None for b in cluster.topology.brokers)
    assert "# [security] dropped: no secret key of matcher:A-1" in cluster.text
    local = map_topology(LOCAL, can_run=lambda _server, _table: None)
    assert local.topology.security is not None
    assert local.topology.security.keys_dir == (LOCAL.parent / "keys").resolve()
