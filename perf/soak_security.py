"""Hostile input under a steady flow: no node dies, memory stays flat, every good order is answered.

Starts the local topology on free ports in a scratch folder and, for ``--minutes``, sends good commands from
``--brokers`` brokers at ``--rate`` per second in all (limit orders near each symbol's reference price that
rest, crossing IOC orders that trade against them, cancels of resting orders), with ``--bad-rate`` hostile
messages per second mixed in: garbage bytes and orders with hostile fields from a logged-on broker, orders
from connections that never logged on, messages over the protocol's 64 KiB limit (and, now and then, over
the socket's 1 MiB one, which drops the connection), floods of garbage before logon, and garbage sent
straight to the matchers' order and recovery sockets and to the ticker's snapshot socket.

Every good command must be answered with its closing ``order_status``; every node's resident set size is
sampled every ``--sample`` seconds.  The report (``soak_security.md`` and ``.json`` under ``--out``) gives:
whether every node is alive, each node's RSS at the start and the end with its growth per minute over the
second half, the good commands sent and answered (and any left unanswered), and the answers to the hostile
messages by reason.  The exit status is 0 when every node lived and every good command was answered.

Usage::

    python perf/soak_security.py                        # 10 minutes, 300 good/s, 40 bad/s
    python perf/soak_security.py --minutes 0.2 --out /tmp/soak-sec
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from fabric.auth import Keyring, connect  # noqa: E402
from fabric.protocol import (  # noqa: E402
    Cancel,
    Error,
    Heartbeat,
    Logon,
    LogonReject,
    New,
    OrderStatus,
    ProtocolError,
    Rejected,
    SnapshotRequest,
    decode_server,
    encode,
)
from perf.soak import growth_per_min, rss_mb  # noqa: E402
from topology.keys import broker_keyring, node_keyring  # noqa: E402
from topology.launcher import Launcher  # noqa: E402
from topology.ports import topology_on_free_ports  # noqa: E402

LOCAL = ROOT / "topology" / "examples" / "local.toml"
DEFAULT_OUT = Path(".exfab") / "perf" / "soak-security"
DRAIN_S = 15.0  # after the flow, how long unanswered good commands are awaited
STRANGER_LIFE_S = 2.0  # a throwaway connection is read this long, then closed
KEEP_OPEN = 40  # resting orders per broker; past it the broker cancels its oldest
FLOOD = 100  # garbage messages in one flood before logon (the gateway answers 16, then ignores the connection)
BAD_KINDS = ("garbage", "bad_field", "stranger", "oversized", "flood", "matcher_order", "recovery", "snapshot")
HOSTILE_FIELDS: tuple[tuple[str, Any], ...] = (
    ("qty", -1), ("qty", 0), ("qty", 2**64 - 1), ("qty", -(2**63)), ("qty", 1.5), ("price", float("nan")),
    ("price", float("inf")), ("price", "-3500.00"), ("price", "1e5"), ("side", "short"), ("tif", "GTD"),
    ("type", "stop"), ("oid", "x" * 1000), ("symbol", "NOPE"), ("symbol", ""), ("qty", "10"), ("extra", 1))


def _connect(ctx: zmq.Context[Any], endpoint: str, identity: bytes | None = None,
             keys: Keyring | None = None) -> zmq.Socket[Any]:
    """A DEALER to a node's socket: the one place this script connects (with ``keys``: over CURVE)."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        s.setsockopt(zmq.ROUTING_ID, identity)
    connect(s, endpoint, keys)
    return s


@dataclass
class _Broker:
    name: str
    sock: zmq.Socket[Any]
    open: collections.deque[tuple[str, str]] = field(default_factory=collections.deque)  # (oid, symbol) resting
    last_tx: float = 0.0


@dataclass
class _Tally:
    good_sent: collections.Counter[str] = field(default_factory=collections.Counter)  # by op
    good_answered: collections.Counter[str] = field(default_factory=collections.Counter)
    good_states: collections.Counter[str] = field(default_factory=collections.Counter)  # closing states
    good_rejects: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason
    bad_sent: collections.Counter[str] = field(default_factory=collections.Counter)  # messages by kind
    bad_answers: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason
    undecodable: int = 0
    unsent: int = 0  # strangers' messages ZeroMQ could not even queue: CURVE turned their connection away
    waits: list[float] = field(default_factory=list)  # seconds from a good command to its closing answer


class Soak:
    """The flow and the hostile input, on one loop."""

    def __init__(self, launcher: Launcher, *, brokers: int, rate: float, bad_rate: float, seed: int) -> None:
        self.ex = launcher
        self.topo = launcher.topo
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.rng = random.Random(seed)
        self.rate = rate
        self.bad_rate = bad_rate
        self.tally = _Tally()
        self.poller = zmq.Poller()
        self.owner: dict[zmq.Socket[Any], str] = {}  # socket -> "good" or "bad"
        self.pending: dict[tuple[str, str, str], float] = {}  # (broker, op, oid) -> sent at
        self.ids = itertools.count(1)
        gws = [g.endpoint.connect for g in self.topo.gateways]
        # The local topology's demo brokers, each with its key: the good flow, and one broker (B1) that sends the
        # hostile input from an authenticated session. Strangers connect without a key: CURVE turns them away.
        self.brokers = [_Broker(f"DEMO{i + 1}", _connect(self.ctx, gws[i % len(gws)], f"soak-{i}".encode(),
                                                         broker_keyring(self.topo, f"DEMO{i + 1}")))
                        for i in range(brokers)]
        self.bad = _Broker("B1", _connect(self.ctx, gws[0], b"hostile", broker_keyring(self.topo, "B1")))
        # The garbage sent to the matchers comes from an insider (a gateway's key): it reaches their decoders.
        self.node_keys = node_keyring(self.topo, f"gateway:{self.topo.gateways[0].name}")
        self.by_sock = {b.sock: b for b in self.brokers}
        for b in [*self.brokers, self.bad]:
            self._watch(b.sock, "good" if b is not self.bad else "bad")
        self.strangers: collections.deque[tuple[float, zmq.Socket[Any]]] = collections.deque()
        self.instruments = [self.topo.instrument(s) for s in self.topo.symbols]
        self.recovery = [_connect(self.ctx, s.replicas[0].recovery.connect, keys=self.node_keys)
                         for s in self.topo.shards]
        self.orders = [_connect(self.ctx, s.replicas[0].order.connect, keys=self.node_keys) for s in self.topo.shards]
        for s in [*self.recovery, *self.orders]:
            self._watch(s, "bad")
        self.snapshot: zmq.Socket[Any] | None = None
        if self.topo.ticker is not None:
            self.snapshot = _connect(self.ctx, self.topo.ticker.snapshot.connect)
            self._watch(self.snapshot, "bad")

    def _watch(self, sock: zmq.Socket[Any], owner: str) -> None:
        self.owner[sock] = owner
        self.poller.register(sock, zmq.POLLIN)

    def _forget(self, sock: zmq.Socket[Any]) -> None:
        self.poller.unregister(sock)
        del self.owner[sock]
        sock.close(0)

    def logon(self) -> None:
        """Log every broker on; fail when one is refused."""
        for b in [*self.brokers, self.bad]:
            b.sock.send(encode(Logon(broker=b.name)))
        waiting = {b.name for b in [*self.brokers, self.bad]}
        deadline = time.monotonic() + 30
        while waiting:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no logon answer for {sorted(waiting)}")
            for b in [*self.brokers, self.bad]:
                if b.name in waiting and b.sock.poll(10):
                    for f in b.sock.recv_multipart():
                        msg = decode_server(f)
                        if isinstance(msg, LogonReject):
                            raise RuntimeError(f"{b.name}: logon refused: {msg.reason}: {msg.text}")
                        waiting.discard(b.name)

    # ------------------------------------------------------------------ good

    def send_good(self, now: float) -> None:
        """One good command from a broker taken in turn: a resting limit, a crossing IOC, or a cancel."""
        b = self.brokers[next(self.ids) % len(self.brokers)]
        roll = self.rng.random()
        if b.open and (roll < 0.15 or len(b.open) > KEEP_OPEN):
            oid, symbol = b.open.popleft()
            self._good(b, "cancel", oid, Cancel(oid=oid, symbol=symbol), now)
            return
        inst = self.rng.choice(self.instruments)
        assert inst.ref_price is not None
        side = self.rng.choice(("buy", "sell"))
        crossing = roll > 0.85
        ticks = self.rng.randint(1, 8) * (-1 if side == "buy" else 1) * (-1 if crossing else 1)
        price = inst.ref_price + ticks * inst.tick
        oid = f"g{next(self.ids)}"
        qty = inst.lot * self.rng.randint(1, 5)
        msg = New(oid=oid, symbol=inst.symbol, side=side, type="limit", price=str(price), qty=qty,  # type: ignore[arg-type]
                  tif="IOC" if crossing else "GTC")
        self._good(b, "new", oid, msg, now)

    def _good(self, b: _Broker, op: str, oid: str, msg: New | Cancel, now: float) -> None:
        b.sock.send(encode(msg))
        b.last_tx = now
        self.pending[(b.name, op, oid)] = now
        self.tally.good_sent[op] += 1

    def on_good(self, b: _Broker, frames: list[bytes], now: float) -> None:
        for f in frames:
            try:
                msg = decode_server(f)
            except ProtocolError:
                self.tally.undecodable += 1
                continue
            if isinstance(msg, Rejected):
                self.tally.good_rejects[msg.reason] += 1
            elif isinstance(msg, OrderStatus) and msg.op in ("new", "cancel"):
                sent = self.pending.pop((b.name, msg.op, msg.oid), None)
                if sent is None:
                    continue
                self.tally.good_answered[msg.op] += 1
                self.tally.good_states[f"{msg.op}:{msg.state}"] += 1
                self.tally.waits.append(now - sent)
                if msg.op == "new" and msg.state in ("new", "partially_filled") and msg.symbol is not None:
                    b.open.append((msg.oid, msg.symbol))

    # ------------------------------------------------------------------- bad

    def send_bad(self, now: float) -> None:
        """One hostile message (or one flood) of a kind taken in turn."""
        kind = BAD_KINDS[next(self.ids) % len(BAD_KINDS)]
        rng = self.rng
        n = 1
        if kind == "garbage":
            self.bad.sock.send(rng.randbytes(rng.randint(1, 200)))
        elif kind == "bad_field":
            key, value = rng.choice(HOSTILE_FIELDS)
            raw = {"t": "new", "v": 1, "oid": f"b{next(self.ids)}", "symbol": self.instruments[0].symbol,
                   "side": "buy", "type": "limit", "price": "100.00", "qty": 1, "tif": "GTC", key: value}
            self.bad.sock.send(msgpack.packb(raw))
        elif kind == "stranger":
            self._to_stranger(self._stranger(now), encode(New(oid="s1", symbol=self.instruments[0].symbol,
                                                              side="sell", type="market", qty=1, tif="IOC")))
        elif kind == "oversized":
            if rng.random() < 0.05:  # over ZeroMQ's limit: the connection is dropped, unanswered
                self._to_stranger(self._stranger(now), b"\xc4" + b"x" * (2 << 20))
            else:  # over the protocol's: refused with message_too_large
                self.bad.sock.send(msgpack.packb({"t": "new", "oid": "big", "symbol": "x" * 100_000}))
        elif kind == "flood":
            s = self._stranger(now)
            n = FLOOD
            for _ in range(n):
                self._to_stranger(s, b"\xc1flood")
        elif kind == "matcher_order":
            rng.choice(self.orders).send(rng.randbytes(rng.randint(1, 100)))
        elif kind == "recovery":
            sock = rng.choice(self.recovery)
            sock.send(rng.choice([rng.randbytes(50), encode(SnapshotRequest(shard=0, symbol="NOPE")),
                                  msgpack.packb({"t": "replay_request", "shard": 0, "first": 5, "last": 1})]))
        elif kind == "snapshot" and self.snapshot is not None:
            self.snapshot.send(rng.choice([rng.randbytes(30), msgpack.packb({"t": "snapshot_request", "symbols": 5})]))
        self.tally.bad_sent[kind] += n
        self.bad.last_tx = now

    def _to_stranger(self, s: zmq.Socket[Any], body: bytes) -> None:
        # A stranger has no key: CURVE refuses its handshake, so a send may find no connection to queue on.
        try:
            s.send(body, zmq.NOBLOCK)
        except zmq.Again:
            self.tally.unsent += 1

    def _stranger(self, now: float) -> zmq.Socket[Any]:
        s = _connect(self.ctx, self.topo.gateways[next(self.ids) % len(self.topo.gateways)].endpoint.connect,
                     f"stranger-{next(self.ids)}".encode())
        self._watch(s, "bad")
        self.strangers.append((now + STRANGER_LIFE_S, s))
        return s

    def on_bad(self, frames: list[bytes]) -> None:
        body = frames[-1]
        try:
            msg: Any = decode_server(body)
            reason = msg.reason if isinstance(msg, Rejected | Error | LogonReject) else None
        except ProtocolError:
            try:  # a matcher's internal answer, or the ticker's snapshot socket (msgpack maps of their own)
                raw = msgpack.unpackb(body)
                reason = raw.get("reason") if isinstance(raw, dict) else None
            except Exception:
                self.tally.undecodable += 1
                return
        if len(frames) > 1 and reason is None:
            for f in frames[:-1]:
                self.on_bad([f])
        if reason is not None:
            self.tally.bad_answers[str(reason)] += 1

    # ------------------------------------------------------------------ loop

    def turn(self, now: float, wait_ms: int) -> None:
        """Read what came (up to ``wait_ms``), retire old strangers, keep sessions alive."""
        events = self.poller.poll(wait_ms)
        now = time.monotonic()
        for sock, _ in events:
            owner = self.owner.get(sock)
            while owner is not None:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if owner == "good":
                    self.on_good(self.by_sock[sock], frames, now)
                elif sock is self.bad.sock:
                    for f in frames:
                        self.on_bad([f])
                else:
                    self.on_bad(frames)
        while self.strangers and self.strangers[0][0] <= now:
            self._forget(self.strangers.popleft()[1])
        for b in [*self.brokers, self.bad]:
            if now - b.last_tx > 1.0:
                b.sock.send(encode(Heartbeat()))
                b.last_tx = now

    def close(self) -> None:
        for s in list(self.owner):
            s.close(0)
        self.ctx.term()


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the figures, write the report; return 0 when every node lived and every good order
    was answered."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of flow (default 10)")
    ap.add_argument("--rate", type=float, default=300.0, help="good commands per second in all (default 300)")
    ap.add_argument("--bad-rate", type=float, default=40.0, help="hostile messages per second (default 40)")
    ap.add_argument("--brokers", type=int, default=6, choices=range(1, 9), metavar="N",
                    help="good brokers, the demo brokers DEMO1 .. DEMO<N> (1-8; default 6)")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    ap.add_argument("--seed", type=int, default=15)
    # The matchers keep recent PUB messages for replays (256 MB) and finished orders (100,000) by default: under
    # a steady flow their memory grows until those fill, which takes longer than a soak. Smaller bounds let it
    # level off within minutes, so that a leak (growth that does not level off) shows.
    ap.add_argument("--ring-mb", type=int, default=16, metavar="MB", help="the matchers' replay ring (default 16)")
    ap.add_argument("--keep-finished", type=int, default=10_000, metavar="N",
                    help="finished orders each matcher keeps in memory (default 10,000)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    duration = args.minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="exfab-soak-security-"))
    matcher_args = ["--fsync", "none", "--ring-mb", str(args.ring_mb), "--keep-finished", str(args.keep_finished)]
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp, brokers="keys"), workdir=tmp,
                        extra_args={"matcher": matcher_args})
    print(f"soak-security: starting the exchange in {tmp} ...", file=sys.stderr, flush=True)
    launcher.start()
    series: dict[str, list[tuple[float, float]]] = {}
    deaths: dict[str, float] = {}
    soak: Soak | None = None
    t0 = time.monotonic()
    try:
        pids = {f"{n.kind}-{n.name}": n.proc.pid for n in launcher.nodes}
        soak = Soak(launcher, brokers=args.brokers, rate=args.rate, bad_rate=args.bad_rate, seed=args.seed)
        soak.logon()
        t0 = time.monotonic()
        end = t0 + duration
        next_good = next_bad = next_sample = t0
        while True:
            now = time.monotonic()
            if now >= next_sample:
                el = now - t0
                for n in launcher.nodes:
                    label = f"{n.kind}-{n.name}"
                    mb = rss_mb(pids[label]) if n.alive else None
                    if mb is None:
                        deaths.setdefault(label, el)
                    else:
                        series.setdefault(label, []).append((el, mb))
                tl = soak.tally
                print(f"soak-security: {el:5.0f} s of {duration:.0f}  good {sum(tl.good_sent.values()):,} sent "
                      f"{sum(tl.good_answered.values()):,} answered  bad {sum(tl.bad_sent.values()):,} sent  "
                      + "  ".join(f"{k} {v[-1][1]:,.0f} MB" for k, v in series.items())
                      + (f"  DEAD: {', '.join(deaths)}" if deaths else ""), file=sys.stderr, flush=True)
                next_sample += args.sample
            if now >= end:
                break
            if args.rate > 0:
                next_good = max(next_good, now - 1.0)  # a stalled loop does not make a burst of it
                while next_good <= now:
                    soak.send_good(now)
                    next_good += 1 / args.rate
            if args.bad_rate > 0:
                next_bad = max(next_bad, now - 1.0)
                while next_bad <= now:
                    soak.send_bad(now)
                    next_bad += 1 / args.bad_rate
            soak.turn(now, 2)
        drain_end = time.monotonic() + DRAIN_S
        while soak.pending and time.monotonic() < drain_end:
            soak.turn(time.monotonic(), 50)
        for n in launcher.nodes:
            if not n.alive:
                deaths.setdefault(f"{n.kind}-{n.name}", time.monotonic() - t0)
    finally:
        if soak is not None:
            soak.close()
        launcher.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    assert soak is not None
    tl = soak.tally
    rows = []
    for name, s in series.items():
        half = [pt for pt in s if pt[0] >= s[-1][0] / 2]
        rows.append({"node": name, "alive": name not in deaths, "start_mb": s[0][1], "end_mb": s[-1][1],
                     "peak_mb": max(v for _, v in s), "growth_mb_per_min_second_half": growth_per_min(half)})
    waits = sorted(tl.waits)
    unanswered = sorted(soak.pending)
    ok = not deaths and not unanswered
    report: dict[str, Any] = {
        "ok": ok, "minutes": args.minutes, "rate": args.rate, "bad_rate": args.bad_rate, "brokers": args.brokers,
        "seed": args.seed, "ring_mb": args.ring_mb, "keep_finished": args.keep_finished, "nodes": rows,
        "deaths": deaths,
        "good": {"sent": dict(tl.good_sent), "answered": dict(tl.good_answered), "states": dict(tl.good_states),
                 "rejects": dict(tl.good_rejects), "unanswered": len(unanswered),
                 "unanswered_first": [list(k) for k in unanswered[:20]],
                 "wait_p50_ms": 1000 * waits[len(waits) // 2] if waits else None,
                 "wait_max_ms": 1000 * waits[-1] if waits else None},
        "bad": {"sent": dict(tl.bad_sent), "answers_by_reason": dict(tl.bad_answers)},
        "undecodable_answers": tl.undecodable,
        "strangers_unsent": tl.unsent,
        "series": {k: [[round(t, 1), round(v, 2)] for t, v in s] for k, s in series.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak_security.json").write_text(json.dumps(report, indent=1) + "\n")
    sent, answered = sum(tl.good_sent.values()), sum(tl.good_answered.values())
    md = [f"# Hostile input under a steady flow: {args.rate:g} good and {args.bad_rate:g} bad messages/s for "
          f"{args.minutes:g} min", "",
          f"`python perf/soak_security.py --minutes {args.minutes:g} --rate {args.rate:g} --bad-rate "
          f"{args.bad_rate:g} --brokers {args.brokers} --ring-mb {args.ring_mb} --keep-finished {args.keep_finished}` "
          f"({'PASS' if ok else 'FAIL'}; the matchers' journals without fsync)", "",
          f"- nodes alive at the end: {len(rows) - len(deaths)} of {len(rows)}"
          + (f"; died: {', '.join(f'{k} at {v:.0f} s' for k, v in deaths.items())}" if deaths else ""),
          f"- good commands: {sent:,} sent, {answered:,} answered, {len(unanswered):,} unanswered "
          f"(new {tl.good_sent['new']:,}, cancel {tl.good_sent['cancel']:,}); closing states "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(tl.good_states.items())),
          f"- good commands rejected, by reason: {dict(tl.good_rejects) or 'none'}",
          (f"- answer wait: median {report['good']['wait_p50_ms']:.1f} ms, max {report['good']['wait_max_ms']:.0f} ms"
           if waits else "- answer wait: no answers"),
          f"- hostile messages sent, by kind: {dict(tl.bad_sent)}",
          f"- answers to them, by reason: {dict(tl.bad_answers)}",
          f"- answers that were no protocol message: {tl.undecodable}",
          f"- strangers' messages that found no connection to go out on (CURVE refused it): {tl.unsent}", "",
          "| node | alive | RSS at start (MiB) | at end | peak | growth over the second half (MiB/min) |",
          "| --- | --- | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['node']} | {'yes' if r['alive'] else 'NO'} | {r['start_mb']:,.1f} | {r['end_mb']:,.1f} | "
           f"{r['peak_mb']:,.1f} | {r['growth_mb_per_min_second_half']:+.2f} |" for r in rows]
    (args.out / "soak_security.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nreport: {args.out}/soak_security.md, soak_security.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
