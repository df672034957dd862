"""Hostile input to a primary/secondary pair's replication sockets: refused, and the pair stays in sync.

Shard A runs as a pair (A-1, A-2) over a ZooKeeper the test starts.  Generated input (random bytes, internal
messages with hostile fields, several frames) goes to both replicas' replication ROUTERs: each message is
answered with an error or a refusal, or ignored (an acknowledgement from a peer that is not the secondary);
afterwards both matchers are alive, the secondary is still in sync, a good order goes through, both books are
the same, and no log holds a traceback.  A join that names the real secondary is left out: telling a peer
from the secondary it claims to be is authentication's business (CurveZMQ), not the decoder's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from fabric import protocol as p
from tests.servers import ZooKeeperServer, start_zookeeper
from tests.test_fuzz_nodes import NODE_FUZZ, _collect, _connect, _good_order_round_trip, hostile_frames
from tests.test_pair_failover import _insync, _reign, _snapshot, _wait, paired_topology
from topology.keys import node_keyring
from topology.launcher import Launcher
from topology.model import GATEWAY, MATCHER

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    tmp = tmp_path_factory.mktemp("fuzz-pair")
    zk: ZooKeeperServer = start_zookeeper(tmp / "zk")
    launcher = Launcher(paired_topology(tmp, f"127.0.0.1:{zk.port}"), workdir=tmp, kinds=(MATCHER, GATEWAY),
                        extra_args={"matcher": ["--fsync", "none"]})
    launcher.start()
    try:
        _wait(lambda: _reign(launcher) is not None and (_insync(launcher) or {}).get("name") is not None,
              "a primary with its secondary in sync")
        yield launcher
    finally:
        launcher.stop()
        zk.stop()


@pytest.fixture(scope="module")
def ctx() -> Iterator[zmq.Context[Any]]:
    c = zmq.Context()
    yield c
    c.term()


def _not_a_replica(frames: list[bytes], names: set[str]) -> list[bytes]:
    # A join or ack naming one of the pair is a peer claiming to be it: renamed (see the module's docstring).
    out = []
    for f in frames:
        try:
            raw = msgpack.unpackb(f, raw=False)
        except Exception:
            out.append(f)
            continue
        if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"] in names:
            raw["name"] = "A-9"
            f = msgpack.packb(raw, use_bin_type=True)
        out.append(f)
    return out


@NODE_FUZZ
@given(batch=st.lists(hostile_frames("internal"), min_size=1, max_size=8), replica=st.integers(0, 1))
def test_replication_sockets_refuse_hostile_input(pair: Launcher, ctx: zmq.Context[Any], batch: list[list[bytes]],
                                                  replica: int) -> None:
    shard = pair.topo.shard("A")
    names = {r.name for r in shard.replicas}
    repl = shard.replicas[replica].repl
    assert repl is not None
    # (as its peer: the replication port admits only the shard's two matchers)
    peer = shard.replicas[1 - replica].name
    s = _connect(ctx, zmq.DEALER, repl.connect, keys=node_keyring(pair.topo, f"{MATCHER}:{peer}"))
    try:
        for frames in batch:
            s.send_multipart(_not_a_replica(frames, names))
        for m in _collect(s):
            try:
                msg: Any = p.decode_internal(m[-1])
            except p.ProtocolError:
                msg = p.decode_server(m[-1])
            assert isinstance(msg, p.Error | p.ReplRefused), msg
            assert msg.reason and msg.text
    finally:
        s.close()


def test_pair_after_fuzzing_is_in_sync_and_unharmed(pair: Launcher, ctx: zmq.Context[Any]) -> None:
    dead = [n.label for n in pair.nodes if not n.alive]
    assert not dead, f"nodes died: {dead}"
    assert (_insync(pair) or {}).get("name") is not None, "the secondary is still in sync"
    _good_order_round_trip(pair, ctx)
    a, b = (_snapshot(pair, "A", r.name) for r in pair.topo.shard("A").replicas)
    assert a.books == b.books and a.seq == b.seq
    for n in pair.nodes:
        text = n.log_path.read_text(errors="replace")
        assert "Traceback" not in text, f"{n.label} logged a failure:\n{text[text.index('Traceback') - 300:][:3000]}"
