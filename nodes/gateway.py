"""The gateway node: brokers' sessions, validation, routing by symbol, and their execution reports.

Sockets:

- ``front`` ROUTER, bound at the gateway's port: brokers' DEALERs, one frame
  per message (the protocol of ``docs/protocol.md``);
- one DEALER per shard to the shard's matcher (order commands and their
  :class:`~fabric.protocol.CommandReply`);
- one SUB to every shard's PUB, subscribed to execution reports, heartbeats
  and the state topic (for its closing prices): every report reaches every
  gateway, and each forwards those of the brokers logged on to it (so a fill
  of a resting order reaches its broker whichever gateway it uses);
- one DEALER per shard to the matcher's recovery socket, for gaps (and the
  shard's reference prices at start).

The risk checks (:mod:`fabric.risk`) measure the band and a market order's
value from each symbol's reference price, the matcher's: the gateway asks
each shard for a snapshot when it starts, takes the reference prices in it,
then follows the shard's state topic (``S``) from that snapshot on, in order
like the execution reports, and each ``close`` it publishes becomes the
symbol's reference (the next day's, as in the matcher). Until a shard answers,
its symbols keep the topology's ``ref_price``.

Each turn of the loop drains every socket, then keeps the sessions alive
(heartbeats out when idle, sessions closed after three silent intervals).

A command's outcome reaches the broker as its execution reports (``accepted``
or ``rejected``, ``fill`` for each trade, ``cancelled``...), forwarded as the
matcher published them; after the last of them the gateway sends an
``order_status`` with the command's ``op``: the order's state once the command
is done, which tells a client that nothing more is coming for it now.

A shard's reports arrive by two roads that race each other: with the reply to
the gateway's own command (the short path, so an acknowledgement need not wait
for the stream) and on the PUB stream (everyone's reports, for the fills of
resting orders).  A :class:`~fabric.stream.ShardStream` per shard puts them in
the shard's order (by ``tseq``) and delivers each once; a gap is filled from
the matcher's replay service before anything after it is delivered, and a
command's closing answer waits until the reports the matcher had published
before it are delivered.  So a broker sees everything about an order in the
order it happened.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import itertools
import logging
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from queue import Empty, SimpleQueue
from typing import Any

import msgspec
import zmq

from fabric.auth import connect
from fabric.commands import admin_problem
from fabric.orderstore import StoreError
from fabric.protocol import (
    ANSWER_OPS,
    ARCHIVED,
    Admin,
    AdminAck,
    Cancel,
    CommandReply,
    Error,
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
    SessionEvent,
    SnapshotReply,
    SnapshotRequest,
    Status,
    decode_client,
    decode_internal,
    decode_pub,
    encode,
    exec_topic,
    heartbeat_topic,
    op_of,
    refused_status,
    state_topic,
)
from fabric.records import OrderRow
from fabric.risk import RiskChecks
from fabric.sockets import readable, recv_frames, recv_routed, send_frames
from fabric.stream import REPLAY_TIMEOUT_S, ShardStream, deposed
from topology.keys import BROKERS, admit, node_keyring, warn_if_open
from topology.load import load
from topology.model import GATEWAY, Topology
from topology.primary import resolver
from topology.registry import Registration
from topology.stores import StoreLookup

log = logging.getLogger("exfab.gateway")

MAX_MESSAGE = 1 << 20  # ZeroMQ drops a peer that sends more in one message; up to this, a message gets a reason
MAX_DRAIN = 4096  # messages taken from one socket per turn, so no socket starves the others


@dataclass(slots=True)
class Session:
    """One broker's logged-on connection."""

    ident: bytes
    broker: str
    heartbeat_ms: int
    last_rx: float
    last_tx: float
    role: str = "broker"  # the [[brokers]] entry's role: "broker" or "operator"


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
class _AdminJob:
    # An admin command sent to every shard concerned; `broker` (the operator) is answered once all have replied
    # (None: a gateway's own cancel-on-disconnect, answered to no one).
    broker: str | None
    cmd: Admin
    waiting: int
    cancelled: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (reason, text) of each shard that refused it


@dataclass(slots=True)
class _Query:
    # An `orders` query fanned out to several shards.
    broker: str
    symbol: str | None
    waiting: int
    orders: list[OrderStatus] = field(default_factory=list)


class _Head(msgspec.Struct, gc=False):
    # What the gateway reads of a matcher's PUB message to route it: the rest it forwards as it is.
    t: str
    seq: int = 0
    tseq: int = 0
    epoch: int = 0
    broker: str = ""
    msgs: list[bytes] | None = None  # a bundle's messages
    leaves_qty: int = -1  # (a fill or a replace's) what stays open of the order: the risk checks count open orders


_head = msgspec.msgpack.Decoder(_Head).decode
_EXEC_KINDS = frozenset({"accepted", "rejected", "fill", "cancelled", "replaced", "expired", "triggered"})
_STATE_KINDS = frozenset({"session", "trading_state"})  # the messages of a shard's S topic
Report = tuple[int, str, bytes]  # (tseq, broker, the report's body as published)
STATE = ""  # the broker of an S topic's message in a lane's stream (its messages name none, a report always does)
BEFORE_LOGON = 16  # messages a connection may send before it logs on; past them it is ignored
STRANGERS_KEPT = 100_000  # connections without a session whose count is kept (the oldest are forgotten)
EXPIRES_S = 5.0  # a matcher takes a command within this long of the gateway sending it, or refuses it
EXPIRES_NS = int(EXPIRES_S * 1e9)
PENDING_GRACE_S = 1.0  # ...and the gateway waits this much longer for the answer before refusing it itself
PENDING_TIMEOUT_S = EXPIRES_S + PENDING_GRACE_S
# A shard that does not answer the snapshot request of a gateway's start (its matcher is down) is asked again, less
# and less often: each request waits in the socket's queue until the matcher is back, and each is answered then.
REFS_WAIT_MAX_S = 60.0


@dataclass(slots=True)
class _Lane:
    # One shard, as this gateway sees it: its execution reports put in the shard's order, and the answers to
    # this gateway's commands fitted in between, so a broker sees everything about an order in the order it
    # happened, whichever road each piece took.
    stream: ShardStream[Report]
    topic: bytes
    inflight: collections.OrderedDict[int, float] = field(default_factory=collections.OrderedDict)  # req -> sent
    cmds: dict[int, OrderCommand] = field(default_factory=dict)  # req -> the command, to send again to a new primary
    epoch: int = 0  # the primary's epoch: a message of an older one from seq `from_seq` on is a deposed primary's
    from_seq: int = 0
    primary: str = ""  # the matcher commands go to
    gate: int = 0  # the tseq the last reply was answered at: reports after it may follow a pending answer
    ready: collections.deque[Report] = field(default_factory=collections.deque)  # in order, not yet sent
    waiting: collections.deque[tuple[int, str, list[Any]]] = field(default_factory=collections.deque)
    sent: int = -1  # tseq of the last report sent; -1 until the first
    state: bytes = b""  # the shard's S topic: its `close` events move the risk checks' reference prices
    refs_asked: float | None = None  # when its snapshot (the reference prices) was last asked for; None: answered
    refs_wait: float = REPLAY_TIMEOUT_S  # how long until it is asked again (doubled each time, up to REFS_WAIT_MAX_S)


class Gateway:
    """A gateway of the topology: sessions, routing and the execution report stream."""

    def __init__(self, topo: Topology, name: str, ctx: zmq.Context | None = None) -> None:
        self.topo = topo
        self.cfg = topo.gateway(name)
        self.name = name
        # Empty (no [[brokers]] entry of role "broker", operators aside): any broker id may log on.
        self.allowed = {b.id for b in topo.brokers} if any(b.role == "broker" for b in topo.brokers) else set()
        self.roles = {b.id: b.role for b in topo.brokers}
        self.operators = {b.id for b in topo.brokers if b.role == "operator"}  # may send admin commands
        self.cancel_on_disconnect = {b.id for b in topo.brokers if b.cancel_on_disconnect}
        self.risk = RiskChecks(topo.risk, {b.id: b.risk for b in topo.brokers if b.risk is not None},
                               {i.symbol: i for i in topo.instruments}, topo.instrument_risk)
        self.admins: dict[int, _AdminJob] = {}
        self.keys = node_keyring(topo, f"{GATEWAY}:{name}")  # CURVE to the matchers; None: an open topology
        # Brokers connect with their keys: the broker id is the key's (ZAP's User-Id), never what a client writes.
        self.keyed = self.keys is not None and topo.security is not None and topo.security.brokers == "keys"
        if topo.security is not None and not self.keyed:
            self.allowed = set()  # brokers = "open": any broker id, in the clear (a loopback rig)
        self.ctx = ctx or zmq.Context.instance()
        self.sessions: dict[bytes, Session] = {}
        self.by_broker: dict[str, bytes] = {}
        self.pending: dict[int, _Pending] = {}
        self.queries: dict[int, _Query] = {}
        self.req = 0
        self.shard_no = {sym: no for no, shard in enumerate(topo.shards) for sym in shard.symbols}
        self.primaries = resolver(topo)
        self.lanes = [_Lane(ShardStream(no), exec_topic(no), state=state_topic(no)) for no in range(len(topo.shards))]
        for no, lane in enumerate(self.lanes):
            lane.stream.follow(lane.topic)
            lane.stream.hold(lane.state)  # from the snapshot that gives the reference prices on (on_snapshot)
            if topo.shards[no].paired:
                p = self.primaries.primary(no)
                lane.primary, lane.epoch = p.replica.name, p.epoch
                lane.from_seq = getattr(self.primaries, "from_seq", lambda _n: 0)(no)
        self._primaries_seen = getattr(self.primaries, "version", 0)
        self.outq: dict[bytes, list[bytes]] = {}  # answers to brokers queued this turn
        self.cmdq: list[list[OrderCommand]] = [[] for _ in topo.shards]  # commands for each shard this turn
        self.counts: collections.Counter[str] = collections.Counter()
        self.strangers: dict[bytes, int] = {}  # messages from each connection that has not logged on
        # Orders the matchers archived are looked up in the stores by a thread; its answers wait here for the loop.
        self.lookup = StoreLookup(topo)
        self._lookups = ThreadPoolExecutor(1, thread_name_prefix="store-lookup")
        self.looked_up: SimpleQueue[tuple[str, OrderStatus, Future[OrderRow | None]]] = SimpleQueue()
        self._stop = False

    # ----------------------------------------------------------------- sending

    def _send(self, ident: bytes, msg: Any) -> None:
        # Queued, and sent at the end of the turn: all of a broker's answers of one turn in one
        # ZeroMQ message, one frame each (docs/protocol.md, section 2).
        self.outq.setdefault(ident, []).append(encode(msg))

    def flush(self) -> None:
        """Send what this turn queued: to each matcher one batch, to each broker one message.

        A matcher's queue never blocks the gateway: when it is full (the matcher is down, and the
        commands sent since fill its queue), the batch is refused ``shard_unavailable`` at once and the
        other shards trade on.
        """
        for no, cmds in enumerate(self.cmdq):
            if cmds:
                self.cmdq[no] = []
                try:
                    send_frames(self.orders[no], (encode(cmds[0] if len(cmds) == 1 else OrderBatch(cmds=cmds)),),
                                zmq.NOBLOCK)
                except zmq.Again:
                    for oc in cmds:
                        self._give_up(no, oc.req, f"shard {self.topo.shards[no].name} is not taking commands")
                    self._pump(self.lanes[no])
        now = time.monotonic()
        for ident, frames in self.outq.items():
            send_frames(self.front, (ident, *frames))
            s = self.sessions.get(ident)
            if s is not None:
                s.last_tx = now
        self.outq = {}

    def _send_broker(self, broker: str, msg: Any) -> None:
        ident = self.by_broker.get(broker)
        if ident is not None:
            self._send(ident, msg)

    # ---------------------------------------------------------------- brokers

    def admit(self, ident: bytes) -> bool:
        """Tell whether to read a message from connection ``ident``: always once logged on, else a few.

        A connection that has not logged on may send ``BEFORE_LOGON`` messages (logons that fail
        included); past them it is told once and then ignored, so a flood before logon costs the gateway a
        dictionary look-up per message rather than a decoding and an answer.
        """
        s = self.sessions.get(ident)
        if s is not None:
            s.last_rx = time.monotonic()  # anything a broker sends shows it is alive, a message we refuse included
            return True
        n = self.strangers.get(ident, 0) + 1
        if n > BEFORE_LOGON:
            self.counts["ignored_before_logon"] += 1
            return False
        if len(self.strangers) >= STRANGERS_KEPT and ident not in self.strangers:
            for old in list(itertools.islice(self.strangers, STRANGERS_KEPT // 2)):
                del self.strangers[old]
        self.strangers[ident] = n
        if n == BEFORE_LOGON:
            log.warning("a connection sent %d messages without logging on: ignoring it", n)
            self._send(ident, Error(reason="not_logged_on", text=f"{n} messages without a logon: this connection "
                                    "is ignored from now on; connect again and log on first"))
            return False
        return True

    def on_client(self, ident: bytes, body: bytes, user: str | None = None) -> None:
        """Handle one message from a broker's connection (one that :meth:`admit` let in).

        ``user`` is the broker id the connection's key authenticated (read for connections not logged on).
        """
        now = time.monotonic()
        session = self.sessions.get(ident)
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
            self._logon(ident, msg, now, user)
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
        if isinstance(msg, Admin):
            self._admin(ident, session, msg)
            return
        # An order message: route it by symbol to its shard's matcher.
        shard_no = self.shard_no.get(msg.symbol)
        if shard_no is None:
            self._refuse(ident, session, op_of(msg), msg.oid, msg.symbol, "unknown_symbol",
                         f"{msg.symbol} is not traded on this exchange")
            return
        if self.risk.active and (type(msg) is New or type(msg) is Replace):
            refusal = self.risk.check(session.broker, msg)
            if refusal is not None:
                self.counts[refusal[0]] += 1
                self._refuse(ident, session, op_of(msg), msg.oid, msg.symbol, *refusal)
                return
        self._route(session.broker, shard_no, msg, _Pending(session.broker, op_of(msg), msg.oid, msg.symbol, shard_no))
        self.counts["orders"] += 1

    def _route(self, broker: str, shard_no: int, cmd: New | Cancel | Replace | Status | Orders | Admin,
               pending: _Pending | _Query | _AdminJob) -> None:
        self.req += 1
        if isinstance(pending, _Query):
            self.queries[self.req] = pending
        elif isinstance(pending, _AdminJob):
            self.admins[self.req] = pending
        else:
            self.pending[self.req] = pending
        lane = self.lanes[shard_no]
        lane.inflight[self.req] = time.monotonic()
        # The matcher refuses the command after `expires`; the gateway waits a little longer for its answer
        # (PENDING_GRACE_S), so an answer and a refusal never both reach the broker.
        oc = OrderCommand(gateway=self.name, req=self.req, broker=broker, cmd=cmd, expires=time.time_ns() + EXPIRES_NS)
        self.cmdq[shard_no].append(oc)
        if lane.primary:  # a pair: kept until answered, to send again after a fail-over
            lane.cmds[self.req] = oc

    def _refuse(self, ident: bytes, session: Session | None, op: str, oid: str, symbol: str | None, reason: str,
                text: str, field: str | None = None) -> None:
        # Refuse an order message the gateway cannot pass on: `rejected`, then the command's closing
        # `order_status` (docs/protocol.md, section 6). When the order's shard is known, its matcher is asked
        # for the order's state in the refused command's place: the answer is exact, and it keeps its place
        # behind the order's earlier commands still in flight.
        shard_no = None if session is None or symbol is None else self.shard_no.get(symbol)
        if session is not None and symbol is not None and shard_no is not None:
            refusal = Rejected(op=op, oid=oid, symbol=symbol, reason=reason, text=text, field=field)
            self._route(session.broker, shard_no, Status(oid=oid, symbol=symbol),
                        _Pending(session.broker, op, oid, symbol, shard_no, refusal))
            return
        for answer in _refused(op, oid, symbol, reason, text, field):
            self._send(ident, answer)

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
            self._route(broker, no, msg, query)

    def _admin(self, ident: bytes, session: Session, msg: Admin) -> None:
        # An operator's command: to the symbol's shard (a halt or resume of one symbol) or to every shard.
        def refuse(reason: str, text: str) -> None:
            self._send(ident, Error(reason=reason, text=text))

        if session.broker not in self.operators:
            refuse("not_authorized", f"broker {session.broker} is not an operator: admin commands need the session "
                   'of a broker with role = "operator" in the topology')
            return
        if msg.action == "disconnected":
            refuse("not_authorized", "disconnected is sent by a gateway when a session ends, not by a session")
            return
        problem = admin_problem(msg)
        if problem is not None:
            refuse(*problem)
            return
        shards = list(range(len(self.topo.shards)))
        if msg.symbol is not None:  # a halt or resume of one symbol
            shard_no = self.shard_no.get(msg.symbol)
            if shard_no is None:
                refuse("unknown_symbol", f"{msg.symbol} is not traded on this exchange")
                return
            shards = [shard_no]
        if msg.broker is not None and self.allowed and msg.broker not in self.allowed:
            refuse("bad_field", f"no broker {msg.broker} in the topology")
            return
        log.warning("operator %s: %s %s%s", session.broker, msg.action, msg.symbol or msg.broker or "the market",
                    f" ({msg.text})" if msg.text else "")
        job = _AdminJob(session.broker, msg, len(shards))
        for no in shards:
            self._route(session.broker, no, msg, job)

    def _admin_part(self, job: _AdminJob, no: int, reason: str | None, text: str | None, cancelled: int) -> None:
        # One shard's answer to an admin command; the operator is answered once every shard has answered.
        job.waiting -= 1
        job.cancelled += cancelled
        if reason is not None:
            job.failed.append((reason, f"shard {self.topo.shards[no].name}: {text or reason}"))
        if job.waiting:
            return
        c = job.cmd
        if job.broker is None:  # a gateway's cancel-on-disconnect
            if job.failed:
                log.error("cancel-on-disconnect of %s failed on %s; its orders there stay open", c.broker,
                          "; ".join(t for _, t in job.failed))
            else:
                log.info("cancel-on-disconnect of %s: %d open orders cancelled", c.broker, job.cancelled)
            return
        if job.failed:
            self._send_broker(job.broker, Error(reason=job.failed[0][0], text="; ".join(t for _, t in job.failed)))
        else:
            self._send_broker(job.broker, AdminAck(action=c.action, symbol=c.symbol, broker=c.broker,
                                                   cancelled=job.cancelled))

    def _logon(self, ident: bytes, msg: Logon, now: float, user: str | None) -> None:
        if ident in self.sessions:
            self._send(ident, LogonReject(reason="already_logged_on", text="this connection is already logged on"))
            return
        if self.keyed and user != msg.broker:
            self._send(ident, LogonReject(reason="auth_failed", text=f"this connection's key is broker {user}'s: "
                                          f"it cannot log on as {msg.broker}"))
            return
        if self.allowed and msg.broker not in self.allowed:
            self._send(ident, LogonReject(reason="auth_failed", text=f"unknown broker {msg.broker}"))
            return
        old = self.by_broker.get(msg.broker)
        if old is not None:
            # The broker reconnected (a new socket): the newest connection wins.
            self._drop(old, "already_logged_on")
        self.strangers.pop(ident, None)
        self.sessions[ident] = Session(ident, msg.broker, msg.heartbeat_ms, now, now, self.roles.get(msg.broker,
                                                                                                   "broker"))
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
        if s.broker in self.cancel_on_disconnect and reason != "already_logged_on":  # (replaced: not an end)
            # Every shard cancels the broker's open orders; with pairs the command survives a fail-over as
            # any other (the lanes resend what is unanswered).
            msg = Admin(action="disconnected", broker=s.broker)
            job = _AdminJob(None, msg, len(self.lanes))
            for no in range(len(self.lanes)):
                self._route(s.broker, no, msg, job)

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
        lane = self.lanes[msg.shard] if msg.shard < len(self.lanes) else None
        if lane is None or (lane.primary and msg.epoch < lane.epoch):
            return  # a deposed primary's answer: the command went again to the new one, whose answer counts
        if lane.inflight.pop(msg.req, None) is None:
            return  # not ours, or answered already (refused after PENDING_TIMEOUT_S, or by the primary before)
        lane.cmds.pop(msg.req, None)
        lane.gate = max(lane.gate, msg.x_tseq)
        q = self.queries.pop(msg.req, None)
        if q is not None:
            self._query_part(q, msg.orders or [])
            self._pump(lane)
            return
        job = self.admins.pop(msg.req, None)
        if job is not None:
            self._offer_reports(lane, msg.reports)  # the cancels a disable made, to their broker in the shard's order
            self._admin_part(job, msg.shard, msg.reason, msg.text, len(msg.reports or ()))
            self._pump(lane)
            return
        p = self.pending.pop(msg.req)
        if p.refusal is not None:
            st = msg.status
            if st is None or st.state == "unknown":
                st = refused_status(p.op, p.oid, p.symbol, p.refusal.reason)
            answers: list[Any] = [p.refusal, msgspec.structs.replace(st, op=p.op)]
        elif msg.reason is not None:
            answers = _refused(p.op, p.oid, p.symbol, msg.reason, msg.text or msg.reason)
        else:
            st = msg.status
            answers = [] if st is None else [st]
            if st is not None and st.state == "unknown" and st.reason == ARCHIVED:
                answers = []  # the order left the matcher's memory: its state comes from the stores
                self._look_up(p.broker, st)
            self._offer_reports(lane, msg.reports)
        lane.waiting.append((msg.x_tseq, p.broker, answers))
        self._pump(lane)

    @staticmethod
    def _offer_reports(lane: _Lane, reports: list[bytes] | None) -> None:
        # The short path: a command's reports came with its reply. They take their place in the shard's order,
        # which the PUB stream may not have reached yet.
        if reports:
            now = time.monotonic()
            for body in reports:
                h = _head(body)
                lane.ready.extend(lane.stream.offer(lane.topic, h.tseq, h.seq, (h.tseq, h.broker, body),
                                                    in_order=False, now=now))

    def _look_up(self, broker: str, st: OrderStatus) -> None:
        fut = self._lookups.submit(self.lookup.order, broker, st.oid)
        fut.add_done_callback(lambda f: self.looked_up.put((broker, st, f)))
        self.counts["store_lookups"] += 1

    def answer_lookups(self) -> None:
        """Answer the orders the stores were asked about: their stored state, or ``unknown`` (``archived``)."""
        while True:
            try:
                broker, st, fut = self.looked_up.get_nowait()
            except Empty:
                return
            try:
                row = fut.result()
            except StoreError as e:
                log.warning("order %s of %s: the stores cannot be read (%s); answered unknown (archived)", st.oid,
                            broker, e)
                row = None
            if row is not None and row.symbol == st.symbol:
                self._send_broker(broker, row.status(st.op))
            else:
                self._send_broker(broker, st)

    def _pump(self, lane: _Lane) -> None:
        # Send, in the shard's order, the reports and answers whose turn has come. An answer goes once the
        # reports the matcher had published before it are sent (or at once, before the first report: the
        # gateway has nothing to order it against); a report goes once no answer due before it is pending.
        ready, waiting = lane.ready, lane.waiting
        while True:
            if waiting and ((lane.sent < 0 and not ready) or lane.sent >= waiting[0][0]):
                _, broker, answers = waiting.popleft()
                for a in answers:
                    self._send_broker(broker, a)
                continue
            if ready:
                tseq = ready[0][0]
                limit = waiting[0][0] if waiting else lane.gate if lane.inflight else None
                if limit is None or tseq <= limit:
                    _, broker, body = ready.popleft()
                    if self.risk.counts_open:  # every report, once, in the shard's order: the open orders' count
                        h = _head(body)
                        self.risk.on_report(broker, h.t, h.leaves_qty)
                    lane.sent = tseq
                    ident = self.by_broker.get(broker)
                    if ident is not None:  # forwarded as the matcher published it (docs/protocol.md, section 5)
                        self.outq.setdefault(ident, []).append(body)
                    continue
            return

    def expire(self) -> None:
        """Refuse commands a matcher has not answered within ``PENDING_TIMEOUT_S`` (``shard_unavailable``).

        The shard's connection is then opened afresh, which drops what still waited in its queue: a
        command the broker was told was refused does not reach a matcher that comes back later.
        """
        deadline = time.monotonic() - PENDING_TIMEOUT_S
        for no, lane in enumerate(self.lanes):
            if not lane.inflight or next(iter(lane.inflight.values())) > deadline:
                continue
            log.warning("shard %d: commands unanswered for %g s refused (shard_unavailable); reconnecting", no,
                        PENDING_TIMEOUT_S)
            text = f"shard {self.topo.shards[no].name} did not answer within {PENDING_TIMEOUT_S:g} s"
            for req in list(lane.inflight):
                self._give_up(no, req, text)
            self._reopen(no)
            self._pump(lane)

    def _give_up(self, no: int, req: int, text: str) -> None:
        # Refuse one command sent to shard `no` (shard_unavailable); its answer keeps its place in the order.
        lane = self.lanes[no]
        lane.inflight.pop(req, None)
        lane.cmds.pop(req, None)
        q = self.queries.pop(req, None)
        if q is not None:
            self._query_part(q, [])
            return
        job = self.admins.pop(req, None)
        if job is not None:
            self._admin_part(job, no, "shard_unavailable", text, 0)
            return
        p = self.pending.pop(req, None)
        if p is not None:
            lane.waiting.append((lane.gate, p.broker, _refused(p.op, p.oid, p.symbol, "shard_unavailable", text)))

    def _query_part(self, q: _Query, orders: list[OrderStatus]) -> None:
        # One shard's part of an `orders` query (none when the shard did not answer); the broker gets the
        # whole answer once every shard asked has given its part.
        q.orders.extend(orders)
        q.waiting -= 1
        if q.waiting == 0:
            self._send_broker(q.broker, OpenOrders(symbol=q.symbol, orders=q.orders))

    def _reopen(self, no: int) -> None:
        # A new connection to shard `no`'s primary, without what the old one still queued.
        old = self.orders[no]
        self.poller.unregister(old)
        old.close(0)
        d = self.ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        connect(d, self.primaries.primary(no).order, self.keys)
        self.orders[no] = d
        self.poller.register(d, zmq.POLLIN)
        self.socks = (*self.orders, self.sub, *self.recovery, self.front)

    def on_report(self, shard_no: int, body: bytes) -> None:
        """Handle one message from a shard's PUB: execution reports (one, or a bundle of them), a heartbeat."""
        lane = self.lanes[shard_no]
        stream, topic, now = lane.stream, lane.topic, time.monotonic()
        h = _head(body)
        if h.t == "heartbeat":
            if self._current(lane, h.epoch, h.seq):
                hb = decode_pub(body)
                assert isinstance(hb, PubHeartbeat)
                stream.heartbeat(hb.seq, {topic: hb.tseqs.get(topic[:-1].decode(), 0),
                                          lane.state: hb.tseqs.get(lane.state[:-1].decode(), 0)}, now, run=hb.run,
                                 epoch=hb.epoch)
        elif h.msgs is not None:  # a bundle: each message in it carries its own epoch
            for b in h.msgs:
                m = _head(b)
                if self._current(lane, m.epoch, m.seq):
                    lane.ready.extend(stream.offer(topic, m.tseq, m.seq, (m.tseq, m.broker, b), in_order=True,
                                                   now=now))
        elif self._current(lane, h.epoch, h.seq):
            lane.ready.extend(stream.offer(topic, h.tseq, h.seq, (h.tseq, h.broker, body), in_order=True, now=now))
        self._pump(lane)

    def on_state(self, shard_no: int, body: bytes) -> None:
        """Handle one message of a shard's state topic (``S``: its halts and its trading day), one or a bundle."""
        lane = self.lanes[shard_no]
        now = time.monotonic()
        h = _head(body)
        for b in (body,) if h.msgs is None else h.msgs:  # a bundle: each message in it carries its own numbers
            m = h if b is body else _head(b)
            if self._current(lane, m.epoch, m.seq):
                self._deliver(lane, lane.stream.offer(lane.state, m.tseq, m.seq, (m.tseq, STATE, b), in_order=True,
                                                      now=now))

    def on_snapshot(self, shard_no: int, snap: SnapshotReply) -> None:
        """Take a shard's reference prices from its snapshot, then its ``S`` topic from there on."""
        lane = self.lanes[shard_no]
        if lane.refs_asked is None:
            return  # answered already: a late answer to a request sent again
        lane.refs_asked = None
        for book in snap.books:
            if book.ref_price is not None:
                self._set_reference(book.symbol, book.ref_price, f"shard {self.topo.shards[shard_no].name}")
        self._deliver(lane, lane.stream.jump(lane.state, snap.state_tseq, snap.seq))

    def _deliver(self, lane: _Lane, items: list[Report]) -> None:
        # What a lane's stream delivered, in order: execution reports to their brokers (in their turn: _pump), the
        # S topic's messages to the reference prices: a `close` is its symbol's reference from now on.
        for item in items:
            if item[1] != STATE:
                lane.ready.append(item)
                continue
            msg = decode_pub(item[2])
            if type(msg) is SessionEvent and msg.kind == "close" and msg.symbol is not None and msg.price is not None:
                self._set_reference(msg.symbol, msg.price, "the close")

    def _set_reference(self, symbol: str, price: str, source: str) -> None:
        try:
            changed = self.risk.set_reference(symbol, Decimal(price))
        except (KeyError, ValueError, ArithmeticError) as e:  # (not an instrument; InstrumentError; not a number)
            log.warning("%s: reference price %s from %s not taken (%s)", symbol, price, source, e)
            return
        if changed:
            log.info("%s: the risk checks' reference price is now %s (from %s)", symbol, price, source)

    def _ask_refs(self, no: int, now: float, again: bool = False) -> None:
        # Ask shard `no` for a snapshot: its symbols' reference prices, and where its S topic stands.
        lane = self.lanes[no]
        lane.refs_wait = min(lane.refs_wait * 2, REFS_WAIT_MAX_S) if again else REPLAY_TIMEOUT_S
        lane.refs_asked = now
        with contextlib.suppress(zmq.Again):  # (a full queue to a matcher that is down: asked again later)
            self.recovery[no].send(encode(SnapshotRequest(shard=no)), zmq.NOBLOCK)

    @staticmethod
    def _current(lane: _Lane, epoch: int, seq: int) -> bool:
        # Not a deposed primary's; a later epoch is a new primary's (learnt here if ZooKeeper has not told it yet).
        if epoch > lane.epoch:
            lane.epoch = epoch
        return not deposed(epoch, seq, lane.epoch, lane.from_seq)

    def follow_primaries(self) -> None:
        """Take a new primary of a pair (ZooKeeper's resolver changed): connect to it, send it what is unanswered."""
        version = getattr(self.primaries, "version", 0)
        if version == self._primaries_seen:
            return
        self._primaries_seen = version
        for no, lane in enumerate(self.lanes):
            p = self.primaries.primary(no)
            if not lane.primary or (p.replica.name == lane.primary and p.epoch == lane.epoch):
                continue
            log.warning("shard %s: primary is now %s (epoch %d); sending it the %d commands unanswered",
                        self.topo.shards[no].name, p.replica.name, p.epoch, len(lane.cmds))
            lane.primary, lane.epoch = p.replica.name, max(lane.epoch, p.epoch)
            lane.from_seq = getattr(self.primaries, "from_seq", lambda _n: 0)(no)
            self._reopen(no)
            old = self.recovery[no]
            self.poller.unregister(old)
            old.close(0)
            r = self.ctx.socket(zmq.DEALER)
            r.setsockopt(zmq.LINGER, 0)
            connect(r, p.recovery, self.keys)
            self.recovery[no] = r
            self.poller.register(r, zmq.POLLIN)
            self.socks = (*self.orders, self.sub, *self.recovery, self.front)
            lane.stream.replay = None  # asked of the old primary: ask the new one
            now = time.monotonic()
            if lane.refs_asked is not None:
                self._ask_refs(no, now)  # (the new primary has the same references: they come from its journal)
            for req in lane.inflight:
                lane.inflight[req] = now  # a new primary: the wait starts again
            self.cmdq[no].extend(lane.cmds[req] for req in lane.inflight if req in lane.cmds)

    def on_replay(self, shard_no: int, body: bytes) -> None:
        """Deliver a replayed range, then what was held behind the gap (or take a snapshot: :meth:`on_snapshot`)."""
        try:
            msg = decode_internal(body)
        except ProtocolError as e:
            log.warning("undecodable replay reply from shard %d: %s", shard_no, e)
            return
        if isinstance(msg, SnapshotReply):
            self.on_snapshot(shard_no, msg)
            return
        if not isinstance(msg, ReplayReply):
            return
        lane = self.lanes[shard_no]
        now = time.monotonic()
        if msg.reason is not None:
            log.error("shard %d: replay %d..%d unavailable (%s); execution reports in it are lost to this "
                      "gateway's brokers, who can ask for their orders' status", shard_no, msg.first, msg.last,
                      msg.text)
            self._deliver(lane, lane.stream.unavailable(now))
            if not lane.ready:
                lane.sent = max(lane.sent, lane.gate)  # nothing more to wait for: answers go now
        else:
            heads = ((lane.topic, h.tseq, h.seq, (h.tseq, h.broker, b)) if h.t in _EXEC_KINDS
                     else (lane.state, h.tseq, h.seq, (h.tseq, STATE, b)) for b in msg.msgs
                     if (h := _head(b)).t in _EXEC_KINDS or h.t in _STATE_KINDS)
            self._deliver(lane, lane.stream.replayed(heads, msg.last, msg.done, now))
        self._pump(lane)

    def ask_replays(self) -> None:
        """Send the replay requests the streams need: new ones, and those left unanswered too long."""
        now = time.monotonic()
        for no, lane in enumerate(self.lanes):
            r = lane.stream.due(now)
            if r is not None:
                self.recovery[no].send(encode(ReplayRequest(shard=no, first=r.first, last=r.last)))
            if lane.refs_asked is not None and now - lane.refs_asked >= lane.refs_wait:
                self._ask_refs(no, now, again=True)  # unanswered (the matcher is down, or restarted): again

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
        warn_if_open(self.topo, f"{GATEWAY}:{self.name}", log)
        if self.keyed:
            assert self.keys is not None
            admit(self.topo, ctx)
            self.keys.serve(self.front, BROKERS)
        self.front.bind(self.cfg.endpoint.bind)
        self.orders: list[zmq.Socket] = []
        self.recovery: list[zmq.Socket] = []
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 1_000_000)
        for no in range(len(self.topo.shards)):
            primary = self.primaries.primary(no)
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            connect(d, primary.order, self.keys)
            self.orders.append(d)
            r = ctx.socket(zmq.DEALER)
            r.setsockopt(zmq.LINGER, 0)
            connect(r, primary.recovery, self.keys)
            self.recovery.append(r)
            for replica in self.topo.shards[no].replicas:  # both of a pair: the stream goes on from the new primary
                connect(self.sub, replica.pub.connect, self.keys)
            self.sub.subscribe(exec_topic(no))
            self.sub.subscribe(heartbeat_topic(no))
            self.sub.subscribe(state_topic(no))
            self._ask_refs(no, time.monotonic())
        self.poller = poller = zmq.Poller()
        self.socks = (*self.orders, self.sub, *self.recovery, self.front)
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        shard_of_topic = {topic(no): no for no in range(len(self.topo.shards)) for topic in (exec_topic,
                                                                                              heartbeat_topic)}
        shard_of_state = {state_topic(no): no for no in range(len(self.topo.shards))}
        gc.freeze()  # start-up's objects live for the whole run: keep them out of the cycle collector's scans
        if ready is not None:
            ready()
        last_keep_alive = time.monotonic()
        try:
            while not self._stop:
                events = readable(poller, self.socks, 50)
                # Replies before the stream: a reply carries its command's reports (the short path), and
                # reading it first keeps each order's answers in the order the matcher produced them.
                for d in self.orders:
                    if d in events:
                        for _ in range(MAX_DRAIN):
                            try:
                                self._guard(self.on_reply, recv_frames(d)[-1])
                            except zmq.Again:
                                break
                if self.sub in events:
                    for _ in range(MAX_DRAIN):
                        try:
                            topic, body = recv_frames(self.sub)
                        except zmq.Again:
                            break
                        state_no = shard_of_state.get(topic)
                        if state_no is None:
                            self._guard(self.on_report, shard_of_topic.get(topic, -1), body)
                        else:
                            self._guard(self.on_state, state_no, body)
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
                            frames, user = recv_routed(self.front, self.sessions)
                        except zmq.Again:
                            break
                        if not self.admit(frames[0]):
                            continue
                        if len(frames) != 2:
                            self.counts["protocol_error"] += 1
                            self._send(frames[0], Error(reason="malformed", text=f"a message is one frame, got "
                                                                                   f"{len(frames) - 1}"))
                            continue
                        self._guard(self.on_client, frames[0], frames[1], user)
                now = time.monotonic()
                if now - last_keep_alive >= 0.05:
                    last_keep_alive = now
                    self.keep_alive()
                    self.expire()
                self._guard(self.follow_primaries)
                self.ask_replays()
                self._guard(self.answer_lookups)
                self._guard(self.flush)  # this turn's answers and commands, batched
        finally:
            self._lookups.shutdown(wait=False, cancel_futures=True)
            self.lookup.close()
            for s in (self.front, self.sub, *self.orders, *self.recovery):
                s.close(0)
            log.info("gateway %s stopped: %s", self.name, dict(self.counts))


def _refused(op: str, oid: str, symbol: str | None, reason: str, text: str, field: str | None = None) -> list[Any]:
    # A command refused without any matcher looking at its order: `rejected`, then its closing `order_status`.
    return [Rejected(op=op, oid=oid, symbol=symbol, reason=reason, text=text, field=field),
            refused_status(op, oid, symbol, reason)]


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
    from nodes.profiling import profiled  # EXFAB_PROFILE_DIR set: the loop runs under cProfile

    reg = Registration(gw.topo, GATEWAY, args.id, gw.cfg.host)  # (exfab status; nothing without [zookeeper])

    def ready() -> None:
        print(f"READY gateway {args.id}", flush=True)
        reg.update("running")

    try:
        with profiled(f"gateway-{args.id}"):
            gw.run(ready=ready)
    finally:
        reg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
