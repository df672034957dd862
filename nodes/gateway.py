"""The gateway node: brokers' sessions, validation, routing by symbol, and their execution reports.

Sockets:

- ``front`` ROUTER, bound at the gateway's port: brokers' DEALERs, one frame
  per message (the protocol of ``docs/protocol.md``);
- one DEALER per shard to the shard's matcher (order commands and their
  :class:`~fabric.protocol.CommandReply`);
- one SUB to every shard's PUB, subscribed to execution reports and
  heartbeats only: every report reaches every gateway, and each forwards those
  of the brokers logged on to it (so a fill of a resting order reaches its
  broker whichever gateway it uses);
- one DEALER per shard to the matcher's recovery socket, for gaps.

Each turn of the loop drains every socket, then keeps the sessions alive
(heartbeats out when idle, sessions closed after three silent intervals).

A command's outcome reaches the broker as its execution reports (``accepted``
or ``rejected``, ``fill`` for each trade, ``cancelled``...), in the matcher's
order; after the last of them the gateway sends an ``order_status`` with the
command's ``op``: the order's state once the command is done, which tells a
client that nothing more is coming for it now.  Execution reports are checked
for gaps by their per-topic sequence number (``tseq``), and by the shard's
heartbeats (which carry its last ``seq``: every command's last message is an
execution report, so a heartbeat beyond the last report seen means reports
were lost); a gap is filled from the matcher's replay service before anything
after it is delivered.  Until a shard's first report arrives (a gateway just
started, or a matcher restarted before the SUB reconnected), the reports of
the commands it waits for are the ones it must not miss.
"""

from __future__ import annotations

import argparse
import collections
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

from fabric.protocol import (
    ANSWER_OPS,
    BookLevel,
    Cancel,
    CommandReply,
    Error,
    ExAccepted,
    ExCancelled,
    ExecReport,
    ExExpired,
    ExFill,
    ExRejected,
    ExReplaced,
    Heartbeat,
    Logon,
    LogonAck,
    LogonReject,
    Logout,
    New,
    OpenOrders,
    OrderBatch,
    OrderCommand,
    Orders,
    OrderStatus,
    ProtocolError,
    PubHeartbeat,
    Rejected,
    Replace,
    ReplayReply,
    ReplayRequest,
    ReplyBatch,
    Status,
    Trade,
    answer_for,
    decode_client,
    decode_internal,
    decode_pub,
    encode,
    exec_topic,
    heartbeat_topic,
    iter_pub,
    op_of,
    refused_status,
)
from topology.load import load
from topology.model import Topology

log = logging.getLogger("exfab.gateway")

MAX_MESSAGE = 1 << 20  # ZeroMQ drops a peer that sends more in one message; up to this, a message gets a reason
MAX_DRAIN = 4096  # messages taken from one socket per turn, so no socket starves the others
_EXEC_REPORTS = (ExAccepted, ExRejected, ExFill, ExCancelled, ExReplaced, ExExpired)
MAX_REMEMBERED = 100_000  # recent report seqs remembered to deliver each report once over two paths
REPLAY_TIMEOUT_S = 2.0  # a replay request unanswered this long is sent again (the matcher may have restarted)


@dataclass(slots=True)
class Session:
    """One broker's logged-on connection."""

    ident: bytes
    broker: str
    heartbeat_ms: int
    last_rx: float
    last_tx: float


@dataclass(slots=True)
class _Pending:
    # A command sent to a matcher, waiting for its CommandReply.
    broker: str
    op: str
    oid: str
    symbol: str
    shard: int
    refusal: Rejected | None = None  # the gateway refused the command and asked for the order's state instead


@dataclass(slots=True)
class _Query:
    # An `orders` query fanned out to several shards.
    broker: str
    symbol: str | None
    waiting: int
    orders: list[OrderStatus] = field(default_factory=list)


@dataclass(slots=True)
class _ShardFeed:
    # What the gateway knows of one shard's execution report stream.
    next_tseq: int = 0  # 0: not yet seen anything (or lost track: a replay was unavailable)
    seen_seq: int = 0  # seq of the last report delivered (or of the last message replayed)
    held: list[ExecReport] = field(default_factory=list)  # reports after a gap, until it is filled
    replaying: bool = False
    replay: ReplayRequest | None = None  # the request outstanding
    replay_sent: float = 0.0
    # Reports delivered from a matcher's reply, whose PUB copies are still to come (and be skipped),
    # and reports delivered from the stream, in case a reply still carries them: recent seqs only.
    by_reply: set[int] = field(default_factory=set)
    by_pub: collections.OrderedDict[int, None] = field(default_factory=collections.OrderedDict)
    # While nothing came from the stream: the seq of the first report a reply delivered. The stream
    # must not lose what follows it, but its first report (whatever its tseq) cannot say so.
    first_known: int = 0


class Gateway:
    """A gateway of the topology: sessions, routing and the execution report stream."""

    def __init__(self, topo: Topology, name: str, ctx: zmq.Context | None = None) -> None:
        self.topo = topo
        self.cfg = topo.gateway(name)
        self.name = name
        self.allowed = {b.id for b in topo.brokers}  # empty: any broker id may log on
        self.ctx = ctx or zmq.Context.instance()
        self.sessions: dict[bytes, Session] = {}
        self.by_broker: dict[str, bytes] = {}
        self.pending: dict[int, _Pending] = {}
        self.queries: dict[int, _Query] = {}
        self.req = 0
        self.shard_no = {sym: no for no, shard in enumerate(topo.shards) for sym in shard.symbols}
        self.feeds = [_ShardFeed() for _ in topo.shards]
        self.outq: dict[bytes, list[bytes]] = {}  # answers to brokers queued this turn
        self.cmdq: list[list[OrderCommand]] = [[] for _ in topo.shards]  # commands for each shard this turn
        self.counts: collections.Counter[str] = collections.Counter()
        self._stop = False

    # ----------------------------------------------------------------- sending

    def _send(self, ident: bytes, msg: Any) -> None:
        # Queued, and sent at the end of the turn: all of a broker's answers of one turn in one
        # ZeroMQ message, one frame each (docs/protocol.md, section 2).
        self.outq.setdefault(ident, []).append(encode(msg))

    def flush(self) -> None:
        """Send what this turn queued: to each broker one message, to each matcher one batch."""
        now = time.monotonic()
        for ident, frames in self.outq.items():
            self.front.send_multipart((ident, *frames))
            s = self.sessions.get(ident)
            if s is not None:
                s.last_tx = now
        self.outq = {}
        for no, cmds in enumerate(self.cmdq):
            if cmds:
                self.orders[no].send(encode(cmds[0] if len(cmds) == 1 else OrderBatch(cmds=cmds)))
                self.cmdq[no] = []

    def _send_broker(self, broker: str, msg: Any) -> None:
        ident = self.by_broker.get(broker)
        if ident is not None:
            self._send(ident, msg)

    # ---------------------------------------------------------------- brokers

    def on_client(self, ident: bytes, body: bytes) -> None:
        """Handle one message from a broker's connection."""
        now = time.monotonic()
        session = self.sessions.get(ident)
        if session is not None:
            session.last_rx = now  # anything a broker sends shows it is alive, a message we refuse included
        try:
            msg = decode_client(body)
        except ProtocolError as e:
            self.counts["protocol_error"] += 1
            if e.op in ANSWER_OPS and e.oid is not None:
                self._refuse(ident, session, e.op, e.oid, e.symbol, e.reason, e.text, e.field)
            else:
                self._send(ident, e.answer())
            return
        if isinstance(msg, Logon):
            self._logon(ident, msg, now)
            return
        if session is None:
            if isinstance(msg, New | Cancel | Replace | Status):
                self._refuse(ident, None, op_of(msg), msg.oid, msg.symbol, "not_logged_on", "log on first")
            else:
                self._send(ident, Error(reason="not_logged_on",
                                        text=f"log on before sending {type(msg).__struct_config__.tag}"))
            return
        if isinstance(msg, Heartbeat):
            self._send(ident, Heartbeat())
            return
        if isinstance(msg, Logout):
            self._drop(ident, None)
            self._send(ident, Logout())
            return
        if isinstance(msg, Orders):
            self._orders_query(session.broker, msg)
            return
        # An order message: route it by symbol to its shard's matcher.
        shard_no = self.shard_no.get(msg.symbol)
        if shard_no is None:
            self._refuse(ident, session, op_of(msg), msg.oid, msg.symbol, "unknown_symbol",
                         f"{msg.symbol} is not traded on this exchange")
            return
        self._route(session.broker, shard_no, msg, _Pending(session.broker, op_of(msg), msg.oid, msg.symbol, shard_no))
        self.counts["orders"] += 1

    def _route(self, broker: str, shard_no: int, cmd: New | Cancel | Replace | Status, pending: _Pending) -> None:
        self.req += 1
        self.pending[self.req] = pending
        self.cmdq[shard_no].append(OrderCommand(gateway=self.name, req=self.req, broker=broker, cmd=cmd))

    def _refuse(self, ident: bytes, session: Session | None, op: str, oid: str, symbol: str | None, reason: str,
                text: str, field: str | None = None) -> None:
        # Refuse an order message the gateway cannot pass on: `rejected`, then the command's closing
        # `order_status` (docs/protocol.md, section 6). When the order's shard is known, its matcher is asked
        # for the order's state in the refused command's place: the answer is exact, and it keeps its place
        # behind the order's earlier commands still in flight.
        refusal = Rejected(op=op, oid=oid, symbol=symbol, reason=reason, text=text, field=field)
        shard_no = None if session is None or symbol is None else self.shard_no.get(symbol)
        if session is not None and symbol is not None and shard_no is not None:
            self._route(session.broker, shard_no, Status(oid=oid, symbol=symbol),
                        _Pending(session.broker, op, oid, symbol, shard_no, refusal))
            return
        self._send(ident, refusal)
        self._send(ident, refused_status(op, oid, symbol, reason))

    def _orders_query(self, broker: str, msg: Orders) -> None:
        # Ask every shard that may hold the broker's orders; answer once all have replied.
        if msg.symbol is not None:
            if msg.symbol not in self.shard_no:
                self._send_broker(broker, OpenOrders(symbol=msg.symbol, orders=[]))
                return
            shards = [self.shard_no[msg.symbol]]
        else:
            shards = list(range(len(self.topo.shards)))
        query = _Query(broker, msg.symbol, len(shards))
        for no in shards:
            self.req += 1
            self.queries[self.req] = query
            self.cmdq[no].append(OrderCommand(gateway=self.name, req=self.req, broker=broker, cmd=msg))

    def _logon(self, ident: bytes, msg: Logon, now: float) -> None:
        if ident in self.sessions:
            self._send(ident, LogonReject(reason="already_logged_on", text="this connection is already logged on"))
            return
        if self.allowed and msg.broker not in self.allowed:
            self._send(ident, LogonReject(reason="auth_failed", text=f"unknown broker {msg.broker}"))
            return
        old = self.by_broker.get(msg.broker)
        if old is not None:
            # The broker reconnected (a new socket): the newest connection wins.
            self._drop(old, "already_logged_on")
        self.sessions[ident] = Session(ident, msg.broker, msg.heartbeat_ms, now, now)
        self.by_broker[msg.broker] = ident
        self._send(ident, LogonAck(broker=msg.broker, heartbeat_ms=msg.heartbeat_ms))
        log.info("broker %s logged on", msg.broker)

    def _drop(self, ident: bytes, reason: str | None) -> None:
        s = self.sessions.pop(ident, None)
        if s is None:
            return
        if self.by_broker.get(s.broker) == ident:
            del self.by_broker[s.broker]
        if reason is not None:
            self.outq.setdefault(ident, []).append(encode(Logout(reason=reason, text=f"session ended: {reason}")))
        log.info("broker %s session ended (%s)", s.broker, reason or "logout")

    def keep_alive(self) -> None:
        """Send heartbeats on idle sessions; end those silent for three intervals."""
        now = time.monotonic()
        for ident, s in list(self.sessions.items()):
            interval = s.heartbeat_ms / 1000.0
            if now - s.last_rx > 3 * interval:
                self._drop(ident, "heartbeat_timeout")
            elif now - s.last_tx >= interval:
                self._send(ident, Heartbeat())

    # ---------------------------------------------------------------- matchers

    def on_reply(self, body: bytes) -> None:
        """Handle a matcher's answer to one of our commands."""
        try:
            msg = decode_internal(body)
        except ProtocolError as e:
            log.warning("undecodable message from a matcher: %s", e)
            return
        if isinstance(msg, ReplyBatch):
            for reply in msg.replies:
                self.on_command_reply(reply)
        elif isinstance(msg, CommandReply):
            self.on_command_reply(msg)
        else:
            log.warning("unexpected %s on an order socket", type(msg).__name__)

    def on_command_reply(self, msg: CommandReply) -> None:
        """Handle a matcher's answer to one command: its reports (if any), then the order's status."""
        q = self.queries.pop(msg.req, None)
        if q is not None:
            q.orders.extend(msg.orders or [])
            q.waiting -= 1
            if q.waiting == 0:
                self._send_broker(q.broker, OpenOrders(symbol=q.symbol, orders=q.orders))
            return
        p = self.pending.pop(msg.req, None)
        if p is None:
            return
        if p.refusal is not None:
            self._send_broker(p.broker, p.refusal)
            st = msg.status
            if st is None or st.state == "unknown":
                st = refused_status(p.op, p.oid, p.symbol, p.refusal.reason)
            self._send_broker(p.broker, msgspec.structs.replace(st, op=p.op))
            return
        if msg.reason is not None:
            text = msg.text or msg.reason
            self._send_broker(p.broker, Rejected(op=p.op, oid=p.oid, symbol=p.symbol, reason=msg.reason, text=text))
            self._send_broker(p.broker, refused_status(p.op, p.oid, p.symbol, msg.reason))
            return
        if msg.status is None:
            return
        feed = self.feeds[p.shard]
        if msg.reports is not None:
            # The short path: the command's reports came with the reply; deliver them, then the status.
            for body in msg.reports:
                rep = decode_pub(body)
                if not isinstance(rep, _EXEC_REPORTS):
                    continue  # a reply carries execution reports only
                if rep.seq in feed.by_pub:
                    continue  # the stream was faster
                feed.by_reply.add(rep.seq)
                if not feed.next_tseq and not feed.first_known:
                    feed.first_known = rep.seq
                self._send_broker(rep.broker, answer_for(rep))
            if len(feed.by_reply) > MAX_REMEMBERED:
                feed.by_reply = {q for q in feed.by_reply if q > feed.seen_seq}
        self._send_broker(p.broker, msg.status)

    def on_report(self, shard_no: int, body: bytes) -> None:
        """Handle one message from a shard's PUB: an execution report (in order, or held behind a gap), a heartbeat."""
        try:
            msgs = iter_pub(body)  # one message, or the messages of a bundle
        except ProtocolError as e:
            log.warning("undecodable PUB message from shard %d: %s", shard_no, e)
            return
        for rep in msgs:
            if isinstance(rep, PubHeartbeat):
                self.on_heartbeat(shard_no, rep)
                continue
            feed = self.feeds[shard_no]
            if feed.replaying:
                feed.held.append(rep)  # type: ignore[arg-type]
                continue
            self.on_report_decoded(shard_no, rep)  # type: ignore[arg-type]

    def on_heartbeat(self, shard_no: int, hb: PubHeartbeat) -> None:
        """Ask for a replay when the shard's last ``seq`` is beyond the last report delivered."""
        feed = self.feeds[shard_no]
        if feed.replaying or hb.seq <= feed.seen_seq:
            return
        first = self._first_missing(feed, hb.seq + 1, None)
        if first is not None:
            log.warning("shard %d: heartbeat at seq %d, last report seen %d; asking for a replay",
                        shard_no, hb.seq, feed.seen_seq)
            self._replay(shard_no, first, hb.seq)

    def on_report_decoded(self, shard_no: int, rep: ExecReport) -> None:
        """Deliver one execution report, or hold it and ask for what is missing before it."""
        feed = self.feeds[shard_no]
        first = self._first_missing(feed, rep.seq, rep.tseq)
        if first is not None:
            log.warning("shard %d: gap in execution reports before seq %d (tseq %d, expected %d); asking for %d..%d",
                        shard_no, rep.seq, rep.tseq, feed.next_tseq, first, rep.seq - 1)
            feed.held.append(rep)
            self._replay(shard_no, first, rep.seq - 1)
            return
        self._deliver(shard_no, rep)

    @staticmethod
    def _first_missing(feed: _ShardFeed, seq: int, tseq: int | None) -> int | None:
        # The first seq of the messages lost before message `seq` (of report number `tseq`; None for a
        # heartbeat's seq + 1), or None when nothing that matters is missing.
        if feed.next_tseq:
            lost = seq > feed.seen_seq + 1 if tseq is None else tseq > feed.next_tseq
            return feed.seen_seq + 1 if lost else None
        # Nothing to count from: what must not be missed is what followed the reports delivered with
        # replies.
        first = feed.first_known or seq
        first = max(first, feed.seen_seq + 1)
        return first if first < seq else None

    def _replay(self, shard_no: int, first: int, last: int) -> None:
        feed = self.feeds[shard_no]
        feed.replaying = True
        feed.replay = ReplayRequest(shard=shard_no, first=first, last=last)
        feed.replay_sent = time.monotonic()
        self.recovery[shard_no].send(encode(feed.replay))

    def _deliver(self, shard_no: int, rep: ExecReport) -> None:
        feed = self.feeds[shard_no]
        if feed.next_tseq and rep.tseq < feed.next_tseq:
            return  # already delivered (a replay overlapping the live stream)
        feed.next_tseq = rep.tseq + 1
        feed.seen_seq = rep.seq
        if rep.seq in feed.by_reply:
            feed.by_reply.discard(rep.seq)  # delivered already, with its command's reply
        elif rep.broker in self.by_broker:
            self._send_broker(rep.broker, answer_for(rep))
            feed.by_pub[rep.seq] = None
            if len(feed.by_pub) > MAX_REMEMBERED:
                feed.by_pub.popitem(last=False)


    def on_replay(self, shard_no: int, body: bytes) -> None:
        """Deliver a replayed range, then what was held behind the gap."""
        try:
            msg = decode_internal(body)
        except ProtocolError as e:
            log.warning("undecodable replay reply from shard %d: %s", shard_no, e)
            return
        if not isinstance(msg, ReplayReply):
            return
        feed = self.feeds[shard_no]
        if msg.reason is not None:
            log.error("shard %d: replay %d..%d unavailable (%s); execution reports in it are lost to this "
                      "gateway's brokers, who can ask for their orders' status", shard_no, msg.first, msg.last,
                      msg.text)
            feed.next_tseq = 0  # take the next report as the new start
            feed.first_known = 0
        for b in msg.msgs:
            rep = decode_pub(b)
            if isinstance(rep, Trade | BookLevel):
                continue
            self._deliver(shard_no, rep)  # type: ignore[arg-type]
        feed.seen_seq = max(feed.seen_seq, msg.last)  # what is not a report in the range is not ours to deliver
        if msg.done or msg.reason is not None:
            feed.replaying = False
            feed.replay = None
            held, feed.held = feed.held, []
            for i, rep in enumerate(held):
                self.on_report_decoded(shard_no, rep)
                if feed.replaying:  # another gap: hold the rest again
                    feed.held.extend(held[i + 1:])
                    break

    def retry_replays(self) -> None:
        """Send again a replay request left unanswered (the matcher restarted, or the request was lost)."""
        now = time.monotonic()
        for no, feed in enumerate(self.feeds):
            if feed.replay is not None and now - feed.replay_sent >= REPLAY_TIMEOUT_S:
                log.warning("shard %d: no answer to replay %d..%d; asking again", no, feed.replay.first,
                            feed.replay.last)
                feed.replay_sent = now
                self.recovery[no].send(encode(feed.replay))

    # -------------------------------------------------------------------- loop

    def _guard(self, handler: Any, *args: Any) -> None:
        # One message must never stop the gateway: a handler's bug is logged, the loop goes on.
        try:
            handler(*args)
        except Exception:
            log.exception("%s failed", getattr(handler, "__name__", handler))

    def stop(self, *_: object) -> None:
        """Ask the loop to finish its turn and exit."""
        self._stop = True

    def run(self, ready: Any = None) -> None:
        """Bind and connect, then serve until :meth:`stop` (or SIGINT/SIGTERM)."""
        ctx = self.ctx
        self.front = ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.bind(self.cfg.endpoint.bind)
        self.orders: list[zmq.Socket] = []
        self.recovery: list[zmq.Socket] = []
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 1_000_000)
        for no, shard in enumerate(self.topo.shards):
            replica = shard.replicas[0]  # single matchers; pairs choose their primary through ZooKeeper (later)
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.connect(replica.order.connect)
            self.orders.append(d)
            r = ctx.socket(zmq.DEALER)
            r.setsockopt(zmq.LINGER, 0)
            r.connect(replica.recovery.connect)
            self.recovery.append(r)
            self.sub.connect(replica.pub.connect)
            self.sub.subscribe(exec_topic(no))
            self.sub.subscribe(heartbeat_topic(no))
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.sub, zmq.POLLIN)
        for s in (*self.orders, *self.recovery):
            poller.register(s, zmq.POLLIN)
        shard_of_topic = {topic(no): no for no in range(len(self.topo.shards)) for topic in (exec_topic,
                                                                                              heartbeat_topic)}
        if ready is not None:
            ready()
        last_keep_alive = time.monotonic()
        try:
            while not self._stop:
                events = dict(poller.poll(50))
                # Replies before the stream: a reply carries its command's reports (the short path), and
                # reading it first keeps each order's answers in the order the matcher produced them.
                for d in self.orders:
                    if d in events:
                        for _ in range(MAX_DRAIN):
                            try:
                                self._guard(self.on_reply, d.recv(zmq.NOBLOCK))
                            except zmq.Again:
                                break
                if self.sub in events:
                    for _ in range(MAX_DRAIN):
                        try:
                            topic, body = self.sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._guard(self.on_report, shard_of_topic.get(topic, -1), body)
                for no, r in enumerate(self.recovery):
                    if r in events:
                        while True:
                            try:
                                self._guard(self.on_replay, no, r.recv(zmq.NOBLOCK))
                            except zmq.Again:
                                break
                if self.front in events:
                    for _ in range(MAX_DRAIN):
                        try:
                            frames = self.front.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if len(frames) != 2:
                            self.counts["protocol_error"] += 1
                            if (sess := self.sessions.get(frames[0])) is not None:
                                sess.last_rx = time.monotonic()  # a refused message still shows the broker alive
                            self._send(frames[0], Error(reason="malformed", text=f"a message is one frame, got "
                                                                                   f"{len(frames) - 1}"))
                            continue
                        self._guard(self.on_client, frames[0], frames[1])
                now = time.monotonic()
                if now - last_keep_alive >= 0.05:
                    last_keep_alive = now
                    self.keep_alive()
                    self.retry_replays()
                self._guard(self.flush)  # this turn's answers and commands, batched
        finally:
            for s in (self.front, self.sub, *self.orders, *self.recovery):
                s.close(0)
            log.info("gateway %s stopped: %s", self.name, dict(self.counts))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one gateway: ``python -m nodes.gateway --topology FILE --id NAME``."""
    ap = argparse.ArgumentParser(prog="exfab node gateway", description="Run one gateway of a topology.")
    ap.add_argument("--topology", required=True, metavar="FILE")
    ap.add_argument("--id", required=True, metavar="NAME", help="the gateway's name in the topology")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s gateway {args.id} %(levelname)s %(message)s",
                        stream=sys.stderr)
    gw = Gateway(load(args.topology), args.id)
    signal.signal(signal.SIGINT, gw.stop)
    signal.signal(signal.SIGTERM, gw.stop)
    gw.run(ready=lambda: print(f"READY gateway {args.id}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
