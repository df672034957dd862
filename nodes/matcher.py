"""The matcher node: one shard's books behind a sequenced, journaled loop.

Each turn of the loop:

1. poll the order socket (a ROUTER the gateways' DEALERs connect to) and the
   recovery socket;
2. drain every order message waiting (up to ``MAX_BATCH``) and decode them;
3. append every command that changes state to the journal, then commit once
   for the whole batch (group commit: one fsync per batch under ``batch``);
4. apply the batch to the engine in order and publish every outcome on PUB,
   each message with the shard's sequence number ``seq`` and its topic's
   ``tseq``; within one command: trades, then book level changes, then the
   execution reports;
5. answer each gateway with a :class:`~fabric.protocol.CommandReply` naming
   the journal sequence number, the range of PUB messages it produced, its
   execution reports' bytes and its place in the shard's order (``x_tseq``),
   every command in the order it came;
6. serve replay (a range of PUB messages again, part by part as each peer
   reads it) and snapshot requests;
7. every ``HEARTBEAT_S``, publish a heartbeat carrying the last ``seq`` and
   every topic's last ``tseq``, so a subscriber that lost the last messages
   (of the shard, or of a quiet topic) learns of it without waiting for the
   next one, and an ``alert`` while the journal cannot be written.

The commands are typed (:mod:`fabric.commands`) from the journal to the
engine, and the engine's outcomes are the PUB messages themselves: this loop
stamps their sequence numbers and publishes them (``docs/architecture.md``,
"One shape per hop").  A command that arrives after its gateway's deadline
(``expires``) is refused unsequenced; a batch the journal cannot take (a full
disk) is rolled back and refused, and the next one tries again.

Nothing is published or answered before the journal holds the command, so a
restart (crash-only: ``kill -9`` is a normal way to stop) replays the journal
through the same deterministic engine and arrives at the same books and the
same PUB sequence.  A ``status`` query or a resent ``new`` (same client order
id, same terms) changes nothing and is answered from the engine's memory
without being journaled.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import zmq

from fabric.auth import connect
from fabric.book import warm_up
from fabric.calendar import session_at
from fabric.commands import (
    AddInstrument,
    Control,
    NewOrder,
    OrderCommandT,
    SessionChange,
    Stp,
    admin_problem,
    decode_command,
    encode_command,
    from_order,
)
from fabric.constants import SIDE_NAMES
from fabric.engine import MatchingEngine, Outcome, instrument_command
from fabric.instruments import Instrument
from fabric.journal import Journal, JournalError, read_journal
from fabric.protocol import (
    Admin,
    BookLevel,
    BookSnapshot,
    CommandReply,
    Error,
    ExRejected,
    OrderBatch,
    OrderCommand,
    Orders,
    OrderStatus,
    ProtocolError,
    PubBundle,
    PubHeartbeat,
    ReplAck,
    ReplayReply,
    ReplayRequest,
    ReplJoin,
    ReplRecords,
    ReplRefused,
    ReplyBatch,
    SessionEvent,
    SnapshotReply,
    SnapshotRequest,
    Status,
    Trade,
    TradingState,
    book_topic,
    decode_internal,
    encode,
    exec_topic,
    heartbeat_topic,
    op_of,
    state_topic,
    trade_topic,
)
from fabric.publog import PubLog
from fabric.sockets import readable, recv_frames, send_frames
from topology.keys import NODES, ORDERS, admit, node_keyring, repl_domain, warn_if_open
from topology.load import load
from topology.model import MATCHER, Replica, Topology
from topology.registry import Registration

log = logging.getLogger("exfab.matcher")

Stamped = Outcome | BookLevel  # what the matcher publishes with a sequence number

MAX_BATCH = 1024  # order messages drained per turn: bounds the latency a burst adds to its last message
RING_BYTES = 256 << 20  # memory the PUB messages kept for replays may take (bodies and their bookkeeping)
KEEP_FINISHED = 100_000  # finished orders the engine keeps; the stores answer for older ones (fabric.engine.ARCHIVED)
_KEPT_OVERHEAD = 80  # what one kept message costs beyond its body: the bytes object and its place in the deque
REPLAY_CHUNK = 2_000  # PUB messages per replay reply
REPLAY_QUEUE = 16  # replay parts queued for one peer at most (about 5 MB): past it, the rest waits until it reads
MAX_MESSAGE = 1 << 20  # ZeroMQ drops a peer that sends more in one message (ours stay far below)
HEARTBEAT_S = 1.0  # PUB heartbeat period, whatever the traffic (docs/protocol.md, section 8)
REPL_TIMEOUT_S = 0.5  # a secondary that does not acknowledge a batch within this long is no longer in sync
REPL_CHUNK = 1_000  # journal records per catch-up message
REPL_WINDOW = 4  # catch-up messages sent ahead of the secondary's acknowledgements
FOLLOW_CHECK_S = 0.2  # how often a secondary looks up its primary in ZooKeeper


class Outbox:
    """Sequence and publish the shard's outbound messages, and keep the recent ones for replays."""

    def __init__(self, shard_no: int, epoch: int, pub: zmq.Socket | None, ring_bytes: int | None = None,
                 publog: PubLog | None = None) -> None:
        self.shard_no = shard_no
        self.epoch = epoch
        self.pub = pub
        self.seq = 0
        self.tseq: dict[bytes, int] = collections.defaultdict(int)
        self.ring: collections.deque[bytes] = collections.deque()
        self.ring_first = 1  # seq of ring[0]
        self.ring_bytes = 0  # what the ring takes, by RING_BYTES' count
        self.ring_limit = RING_BYTES if ring_bytes is None else ring_bytes
        self.pending: dict[bytes, list[bytes]] = {}  # topic -> bodies not yet published, in seq order
        self.last_heartbeat = time.monotonic()
        self.run = int.from_bytes(os.urandom(6), "big") or 1  # this process's run (PubHeartbeat.run)
        self.publog = publog  # every message on disk, for replays older than the ring
        self.unlogged: list[bytes] = []  # messages not yet written to it

    def send(self, msg: Stamped, topic: bytes) -> bytes:
        """Stamp one outcome with the shard, its ``seq`` and ``tseq`` and the epoch; publish it (when live) and
        keep it; return its bytes."""
        seq = self.seq = self.seq + 1
        tseq = self.tseq[topic] + 1
        self.tseq[topic] = tseq
        msg.shard = self.shard_no
        msg.seq = seq
        msg.tseq = tseq
        msg.epoch = self.epoch
        body = encode(msg)
        self.unlogged.append(body)
        ring = self.ring
        ring.append(body)
        self.ring_bytes += len(body) + _KEPT_OVERHEAD
        while self.ring_bytes > self.ring_limit:  # the oldest go: a replay of them gets replay_unavailable
            self.ring_bytes -= len(ring.popleft()) + _KEPT_OVERHEAD
            self.ring_first += 1
        if self.pub is not None:
            pending = self.pending.get(topic)
            if pending is None:
                self.pending[topic] = [body]
            else:
                pending.append(body)
        return body

    def flush(self) -> None:
        """Publish what was sequenced since the last flush: per topic, one message or one bundle."""
        self.write_log()
        if self.pub is None or not self.pending:
            return
        pub = self.pub
        for topic, bodies in self.pending.items():
            send_frames(pub, (topic, bodies[0] if len(bodies) == 1 else encode(PubBundle(msgs=bodies))))
        self.pending = {}

    def write_log(self) -> None:
        """Write the messages sequenced since the last call to the published-message file (if any)."""
        if self.unlogged:
            if self.publog is not None:
                self.publog.extend(self.unlogged)
            self.unlogged = []

    def heartbeat(self, alert: str | None = None) -> None:
        """Publish a heartbeat: the last ``seq`` again, with ``tseq`` 0 (it takes no number of its own).

        It also names every topic's last ``tseq``, so a subscriber of some topics sees a lost last message
        of a quiet topic (``docs/protocol.md``, section 8).
        """
        assert self.pub is not None
        tseqs = {topic[:-1].decode(): n for topic, n in self.tseq.items()}
        msg = PubHeartbeat(shard=self.shard_no, seq=self.seq, tseq=0, epoch=self.epoch, ts=time.time_ns(),
                           tseqs=tseqs, alert=alert, run=self.run)
        self.pub.send_multipart((heartbeat_topic(self.shard_no), encode(msg)))
        self.last_heartbeat = time.monotonic()

    def range(self, first: int, last: int) -> list[bytes] | None:
        """Return the bodies of messages ``first`` .. ``last``, or ``None`` if they are not all kept."""
        if last > self.seq or first > last:
            return None
        if first < self.ring_first:  # older than memory holds: from the file, when it has them
            return None if self.publog is None else self.publog.read(first, last)
        # islice walks the deque once; indexing it element by element costs O(n) per element from the middle.
        return list(itertools.islice(self.ring, first - self.ring_first, last - self.ring_first + 1))


@dataclass(slots=True)
class _ReplayJob:
    # A replay under way for one peer: seq first..last were asked for, `next` is the first not yet sent.
    ident: bytes
    first: int
    last: int
    next: int


@dataclass(slots=True)
class _Secondary:
    # The primary's view of its secondary: records up to `acked` are held there, `next` is the first not sent.
    ident: bytes
    name: str
    next: int
    acked: int
    in_sync: bool = False


class Matcher:
    """One matcher of a shard: the engine, its journal, its sockets, and the loop.

    A shard that is a pair runs two of these; ZooKeeper elects the primary (``topology/election.py``). The
    primary takes the commands and replicates each journaled batch to the secondary before it answers or
    publishes it; the secondary journals and applies the same records (a hot standby), publishes nothing,
    and takes over when it wins the election.
    """

    def __init__(self, topo: Topology, name: str, *, fsync: str = "batch", ctx: zmq.Context | None = None,
                 ring_bytes: int | None = None, keep_finished: int | None = -1) -> None:
        self.topo = topo
        self.shard, self.replica = topo.replica(name)
        self.name = name
        self.shard_no = topo.shards.index(self.shard)
        self.keys = node_keyring(topo, f"{MATCHER}:{name}")  # CURVE on every socket; None: an open topology
        self.epoch = 0  # a single matcher; primary/secondary pairs fence with ZooKeeper epochs (later)
        self.symbols = set(self.shard.symbols)
        if keep_finished == -1:  # the default: a window when the stores answer for older orders, else every order
            keep_finished = KEEP_FINISHED if topo.persistence is not None else None
        self.engine = MatchingEngine(keep_finished=keep_finished, timezone=topo.timezone)
        self.engine.track_levels = True
        # Brokers' self-trade prevention modes, stamped on the commands journaled: a replay does what was done.
        self.stp: dict[str, Stp] = {b.id: b.stp for b in topo.brokers if b.stp != "off"}
        self.instruments: dict[str, Instrument] = {}
        for inst in topo.instruments_of(self.shard):
            self.engine.add_instrument(inst)
            self.instruments[inst.symbol] = inst
        self.levels: dict[tuple[str, int, int], tuple[int, int]] = {}  # last published (qty, count)
        self.exec_topic = exec_topic(self.shard_no)
        self.state_topic = state_topic(self.shard_no)
        self.trade_topics = {sym: trade_topic(sym) for sym in self.symbols}
        self.book_topics = {sym: book_topic(sym) for sym in self.symbols}
        jdir = topo.journal_dir(self.replica)
        jdir.mkdir(parents=True, exist_ok=True)
        self.journal_path = Path(jdir) / f"{self.shard.name}.journal"
        self.journal = Journal.open(self.journal_path, shard=self.shard.name, fsync=fsync)
        if self.journal.recovered_bytes:
            log.warning("journal %s: cut a torn last record (%d bytes)", self.journal_path,
                        self.journal.recovered_bytes)
        if self.journal.last_seq == 0:
            # A new journal starts with the shard's instruments: ticks and bands decide rejects, so the
            # journal replays on its own (`exfab journal inspect`) to what this matcher did.
            for inst in self.instruments.values():
                self.journal.append(encode_command(instrument_command(inst)))
            self.journal.commit()
        self.ctx = ctx or zmq.Context.instance()
        # The published messages on disk, written afresh by the journal's replay: replays older than the ring.
        self.publog = PubLog(self.journal_path.with_name(self.journal_path.name + ".published.log"))
        self.outbox = Outbox(self.shard_no, self.epoch, None, ring_bytes, self.publog)
        self.expired = 0  # commands refused because they came after their gateway's deadline
        self.journal_error: str | None = None  # set while the journal cannot be written: commands are refused
        self._noted = 0  # the seq last written to the journal's `.published` file
        self.replays: collections.deque[_ReplayJob] = collections.deque()  # replays under way, one per request
        self.role = "secondary" if self.shard.paired else "primary"
        self.peer: Replica | None = next((r for r in self.shard.replicas if r.name != name), None)
        self.seat: Any = None  # topology.election.Seat, for a pair (connected in run())
        self.secondary: _Secondary | None = None  # (primary) its secondary
        self.repl_out: list[bytes] = []  # (primary) records journaled this round, to replicate
        self._repl: zmq.Socket | None = None  # (primary) the replication ROUTER
        self._upstream: zmq.Socket | None = None  # (secondary) DEALER to the primary's replication ROUTER
        self._following: Any = None  # (secondary) the reign it follows
        self._follow_check = 0.0
        self.reg: Registration | None = None  # its entry in the registry (exfab status), set by main()
        self._stop = False
        # (primary) The topology's trading calendar, and the real instant (ns) of its next transition: the
        # primary journals each phase change as a `session` command (docs/sessions.md). None: continuous all day.
        self.calendar = topo.calendar
        self._session_until = 0

    # ---------------------------------------------------------------- recovery

    def recover(self) -> int:
        """Replay the journal through the engine (publishing nothing); return the commands replayed."""
        n = 0
        for _seq, payload in read_journal(self.journal_path):
            cmd = decode_command(payload)
            if isinstance(cmd, AddInstrument):  # the engine has the topology's instruments already
                inst = self.instruments.get(cmd.symbol)
                if inst is None or instrument_command(inst) != cmd:
                    log.warning("journal %s: instrument %r is not the topology's; replaying with the topology's",
                                self.journal_path, cmd)
                continue
            self._apply(cmd)  # type: ignore[arg-type]
            n += 1
            if n % 4096 == 0:
                self.outbox.write_log()  # the published messages go to their file as the replay makes them
        self.outbox.write_log()
        return n

    # ------------------------------------------------------------------ engine

    def _apply(self, cmd: OrderCommandT) -> tuple[int, int, list[bytes], list[Outcome]]:
        # Apply one journaled command and publish its outcomes: its trades, then the book levels it changed,
        # then its execution reports (docs/protocol.md, section 8). Return (first_seq, last_seq, the
        # execution reports' bytes, the outcomes).
        # Resends never reach the journal (_handle_round answers them from memory), so a journaled
        # command is always applied: live and in a replay of the journal alike.
        out = self.outbox
        first = out.seq + 1
        try:
            outcomes = self.engine.apply(cmd)
        except Exception:
            # A bug, not bad input (that was refused before the journal). The same command fails
            # the same way when the journal is replayed, so skipping it keeps replays identical.
            log.exception("command %r failed; skipped", cmd)
            self.engine.touched.clear()
            return first, out.seq, [], []
        execs = []
        for o in outcomes:
            if type(o) is Trade:
                out.send(o, self.trade_topics[o.symbol])
            elif type(o) is TradingState or type(o) is SessionEvent:
                out.send(o, self.state_topic)
            else:
                execs.append(o)
        if self.engine.touched:
            self._publish_levels(cmd.ts)
        topic = self.exec_topic
        reports = [out.send(o, topic) for o in execs]
        return first, out.seq, reports, outcomes

    def _publish_levels(self, ts: int) -> None:
        # Publish every touched level whose (quantity, count) differs from what was last published.
        touched = self.engine.touched
        books = self.engine.books
        levels = self.levels
        for key in dict.fromkeys(touched):  # de-duplicated, first-touched order: deterministic
            symbol, side, price = key
            now = books[symbol].level(side, price)
            if levels.get(key, (0, 0)) != now:
                if now == (0, 0):
                    levels.pop(key, None)
                else:
                    levels[key] = now
                self.outbox.send(BookLevel(shard=0, seq=0, tseq=0, epoch=0, ts=ts, symbol=symbol,
                                           side=SIDE_NAMES[side],  # type: ignore[arg-type]
                                           price=self.instruments[symbol].to_price(price), qty=now[0],
                                           count=now[1]), self.book_topics[symbol])
        touched.clear()

    # ---------------------------------------------------------------- commands

    def _status(self, op: str, broker: str, oid: str, symbol: str,
                outcomes: list[Outcome] | None = None) -> OrderStatus:
        st = self.engine.order_status(symbol, broker, oid, op)
        if st is None:
            # Only a refused `new` makes a rejected order; a refused cancel names an order we do not know.
            first = outcomes[0] if outcomes else None
            if op == "new" and type(first) is ExRejected:
                return OrderStatus(op=op, oid=oid, symbol=symbol, state="rejected", reason=first.reason)
            return OrderStatus(op=op, oid=oid, symbol=symbol, state="unknown")
        return st

    def _reply(self, oc: OrderCommand, **kw: Any) -> CommandReply:
        return CommandReply(gateway=oc.gateway, req=oc.req, shard=self.shard_no, epoch=self.epoch,
                            x_tseq=self.outbox.tseq[self.exec_topic], **kw)

    def handle_batch(self, frames: list[list[bytes]], orders: zmq.Socket) -> None:
        """Journal, apply and answer one drained batch of order messages (lone commands or batches)."""
        replies: dict[bytes, list[Any]] = {}
        commands: list[tuple[bytes, OrderCommand]] = []
        for msg in frames:
            ident, body = msg[0], msg[-1]
            if len(msg) != 2:
                replies.setdefault(ident, []).append(Error(reason="malformed",
                                                           text=f"a message is one frame, got {len(msg) - 1}"))
                continue
            try:
                decoded = decode_internal(body)
            except ProtocolError as e:
                replies.setdefault(ident, []).append(Error(reason=e.reason, text=e.text, field=e.field))
                continue
            except Exception as e:  # never let one message stop the shard
                log.exception("undecodable order message")
                replies.setdefault(ident, []).append(Error(reason="malformed", text=f"cannot decode: {e}"))
                continue
            if isinstance(decoded, OrderBatch):
                commands.extend((ident, oc) for oc in decoded.cmds)
            elif isinstance(decoded, OrderCommand):
                commands.append((ident, decoded))
            else:
                replies.setdefault(ident, []).append(Error(
                    reason="unknown_message_type",
                    text=f"the order socket takes order_cmd and order_batch, not {type(decoded).__name__}"))
        if self.role != "primary":
            return  # a secondary takes no command: its gateways send them again to the primary they learn of
        if self.seat is not None and self.seat.suspended:
            text = (f"shard {self.shard.name}: its matcher lost touch with ZooKeeper and takes no command until it "
                    "is back")
            for ident, oc in commands:
                replies.setdefault(ident, []).append(self._reply(oc, reason="shard_unavailable", text=text))
            commands = []
        seq0 = self.journal.last_seq
        while commands:
            commands = self._handle_round(commands, replies)
        if self.journal.last_seq > seq0:
            self._await_secondary()
            if self.seat is not None and self.seat.suspended:
                # Deposed, maybe, while the batch was under way: nothing of it may leave. The journal holds it; a
                # successor that never had it makes the restarted matcher cut it (topology.election.Seat.cut_point).
                log.critical("matcher %s: lost touch with ZooKeeper during a batch: starting over without answering it",
                             self.name)
                self._start_over()
        # Replies first (they carry their commands' reports: the acknowledgement's short path), then the
        # batch's PUB messages, per topic one message or one bundle.
        for ident, answers in replies.items():
            if len(answers) == 1 or any(isinstance(a, Error) for a in answers):
                for a in answers:
                    send_frames(orders, (ident, encode(a)))
            else:
                send_frames(orders, (ident, encode(ReplyBatch(replies=answers))))
        self.outbox.flush()

    def _handle_round(self, commands: list[tuple[bytes, OrderCommand]],
                      replies: dict[bytes, list[Any]]) -> list[tuple[bytes, OrderCommand]]:
        # Journal, apply and answer the commands up to the first `new` that repeats a (broker, oid) of this
        # round; return it and the commands after it for the next round. A resend of a `new` (a gateway
        # resending after a failover, messages queued while the matcher was down) then meets the engine with
        # its original applied: it is answered from the engine's memory and stays out of the journal.
        #
        # Every command is answered in its place: a query (`status`, `orders`, a resent `new`) is answered
        # once the commands before it are applied, so a `status` sent after a `new` sees the order, and the
        # answers for one order leave in the order its commands came (docs/protocol.md, section 6).
        mark = self.journal.mark()
        ts = time.time_ns()
        try:
            steps, rest = self._journal_round(commands, ts)
        except (OSError, JournalError) as e:
            self.repl_out = []  # rolled back: nothing of it is replicated
            self._journal_failed(e, mark)
            for ident, oc in commands:  # nothing of them was carried out: refuse them all, in their order
                replies.setdefault(ident, []).append(self._reply(oc, reason="shard_unavailable",
                                                                 text=self.journal_error))
            return []
        if self.journal_error is not None and self.journal.last_seq > mark[1]:  # a write went through
            log.warning("journal %s writes again: commands are taken again", self.journal_path)
            self.journal_error = None
        for ident, oc, cmd, in_seq in steps:
            if in_seq < 0:
                reply = self._reply(oc, reason="shard_unavailable", text=f"shard {self.shard.name} took the command "
                                    f"after it expired (matcher busy, stopped or restarting)")
            else:
                reply = self._answer(oc) if cmd is None else self._execute(oc, cmd, in_seq)
            replies.setdefault(ident, []).append(reply)
        return rest

    def _journal_failed(self, e: Exception, mark: tuple[int, int, int]) -> None:
        # A write that failed leaves the journal as it was before the round (rolled back), so the commands
        # are refused and the next round tries again: a disk that frees space needs no restart. A failed fsync
        # cannot be rolled back: the shard refuses everything until it is restarted.
        try:
            self.journal.rollback(mark)
            text = f"the shard's journal cannot be written ({e}); commands are refused until it can"
        except (OSError, JournalError) as e2:
            text = f"the shard's journal failed ({e2}); commands are refused until the matcher is restarted"
        if text != self.journal_error:
            log.error("%s", text)
        self.journal_error = text

    def _journal_round(self, commands: list[tuple[bytes, OrderCommand]], ts: int
                       ) -> tuple[list[tuple[bytes, OrderCommand, OrderCommandT | None, int]],
                                  list[tuple[bytes, OrderCommand]]]:
        # Journal the round's commands (up to a repeated `new`) and commit them; return the steps to answer in
        # order and the commands left for the next round.
        steps: list[tuple[bytes, OrderCommand, OrderCommandT | None, int]] = []
        news: set[tuple[str, str]] = set()
        rest: list[tuple[bytes, OrderCommand]] = []
        journal = self.journal
        for i, (ident, oc) in enumerate(commands):
            cmd = None
            in_seq = 0
            if oc.expires and ts > oc.expires:
                # Its gateway has told (or is about to tell) the broker it was refused: never carry it out.
                self.expired += 1
                steps.append((ident, oc, None, -1))
                continue
            c = oc.cmd
            if (type(c) is Admin and self._admin_refusal(c) is None) or (
                    type(c) not in (Orders, Status, Admin) and c.symbol in self.symbols):
                cmd = from_order(oc, ts, self.stp.get(oc.broker, "off"))
                if type(cmd) is NewOrder:
                    key = (oc.broker, cmd.oid)
                    if key in news:
                        rest = commands[i:]
                        break
                    news.add(key)
                    if self.engine.is_retry(cmd):
                        cmd = None  # a resend of an order already accepted: answered, never executed twice
                if cmd is not None:
                    payload = encode_command(cmd)
                    in_seq = journal.append(payload)
                    self.repl_out.append(payload)
            steps.append((ident, oc, cmd, in_seq))
        if any(cmd is not None for _, _, cmd, _ in steps):
            journal.commit()  # durable before anything is published or acknowledged
        self._replicate_live()
        return steps, rest

    def _answer(self, oc: OrderCommand) -> CommandReply:
        # The reply to a command that changes nothing: a query, a resent `new`, a symbol of another shard.
        cmd = oc.cmd
        if isinstance(cmd, Orders):
            return self._reply(oc, orders=[st for st in self.engine.open_orders(oc.broker, cmd.symbol)
                                           if st.symbol in self.symbols])
        if isinstance(cmd, Admin):
            reason, text = self._admin_refusal(cmd) or ("bad_field", "the admin command was not carried out")
            return self._reply(oc, reason=reason, text=text)
        if cmd.symbol not in self.symbols:
            return self._reply(oc, reason="unknown_symbol",
                               text=f"{cmd.symbol} is not traded on shard {self.shard.name}")
        return self._reply(oc, status=self._status(op_of(cmd), oc.broker, cmd.oid, cmd.symbol))

    def _admin_refusal(self, cmd: Admin) -> tuple[str, str] | None:
        # Why this shard cannot carry out an admin command (the gateway checked the session may send it).
        if cmd.symbol is not None and cmd.action in ("halt", "resume") and cmd.symbol not in self.symbols:
            return "unknown_symbol", f"{cmd.symbol} is not traded on shard {self.shard.name}"
        return admin_problem(cmd)

    def _execute(self, oc: OrderCommand, cmd: OrderCommandT, in_seq: int) -> CommandReply:
        # Apply one journaled command and return its reply, with the execution reports it published.
        first, last, reports, outcomes = self._apply(cmd)
        if isinstance(cmd, Control):  # no order of its own: its reply carries the cancels it made, if any
            return self._reply(oc, in_seq=in_seq, first_seq=first if last >= first else 0,
                               last_seq=last if last >= first else 0, reports=reports)
        status = self._status(cmd.op, oc.broker, cmd.oid, cmd.symbol, outcomes)
        return self._reply(oc, in_seq=in_seq, first_seq=first if last >= first else 0,
                           last_seq=last if last >= first else 0, status=status, reports=reports)

    def _resume_due(self, now_ns: int) -> None:
        # (primary) A halt whose `until` has come ends: the primary journals its `resume` like any command, so
        # the secondary, a restart and `exfab replay` meet it at the same place in the shard's order.
        due = self.engine.next_resume()
        if due is None or due[0] > now_ns or (self.seat is not None and self.seat.suspended):
            return
        if self._journal_own(Control(action="resume", symbol=due[1], by="clock", ts=now_ns)):
            log.info("matcher %s: the halt of %s ended at its time", self.name, due[1] or "the market")

    def _journal_own(self, cmd: Control | SessionChange) -> bool:
        # (primary) Journal a command of the matcher's own (the clock's), replicate it, apply it and publish its
        # outcomes, like any command; False when the journal failed.
        payload = encode_command(cmd)
        mark = self.journal.mark()
        try:
            self.journal.append(payload)
            self.journal.commit()
        except (OSError, JournalError) as e:
            self._journal_failed(e, mark)
            return False
        self.repl_out.append(payload)
        self._replicate_live()
        self._await_secondary()
        self._apply(cmd)  # type: ignore[arg-type]
        self.outbox.flush()
        return True

    def _session_due(self, now_ns: int) -> None:
        # (primary) The calendar's phase at `now_ns`: when it (or whether it takes orders: the closing session opens
        # within `closing`) is not the engine's, or the engine has had none yet (a first start in continuous
        # trading: its trades count for the close), journal the change (leaving continuous trading, with the start
        # of the closing price's stretch). Checked again at the next transition.
        cal = self.calendar
        if cal is None or now_ns < self._session_until or (self.seat is not None and self.seat.suspended):
            return
        s = session_at(cal, now_ns, cal.seed)
        if s.phase != self.engine.phase or s.entry != self.engine.entry or not self.engine.sessions:
            vwap_from = cal.day(s.day, cal.seed).vwap_from if s.phase == "closing" else None
            entry = s.entry and s.phase == "closing"  # the other phases' entry follows from them
            if not self._journal_own(SessionChange(phase=s.phase, vwap_from=vwap_from, ts=now_ns, entry=entry)):
                return
            log.info("matcher %s: the trading day enters %s%s", self.name, s.phase,
                     " (the closing session)" if entry else "")
        self._session_until = s.until

    def handle_recovery(self, msg: list[bytes], sock: zmq.Socket) -> None:
        """Answer one replay or snapshot request (``msg``: the ROUTER's frames, identity first)."""
        ident, body = msg[0], msg[-1]
        if len(msg) != 2:
            _answer(sock, ident, Error(reason="malformed", text=f"a message is one frame, got {len(msg) - 1}"))
            return
        try:
            req = decode_internal(body)
        except ProtocolError as e:
            _answer(sock, ident, Error(reason=e.reason, text=e.text, field=e.field))
            return
        if isinstance(req, ReplayRequest):
            self.replays.append(_ReplayJob(ident, req.first, req.last, req.first))
            self.serve_replays(sock)
        elif isinstance(req, SnapshotRequest):
            _answer(sock, ident, self.snapshot(req.symbol))
        else:
            _answer(sock, ident, Error(reason="unknown_message_type",
                                       text=f"the recovery socket does not take {type(req).__name__}"))

    @property
    def _published_path(self) -> Path:
        return self.journal_path.with_name(self.journal_path.name + ".published")

    def _note_published(self) -> None:
        # Write down how far the shard has published (once a heartbeat, best effort, no fsync): a restart that
        # replays its journal to less than this lost the end of the journal, and says so (below).
        if self.outbox.seq != self._noted:
            with contextlib.suppress(OSError):
                self._published_path.write_text(f"{self.outbox.seq}\n")
                self._noted = self.outbox.seq

    def _check_published(self) -> None:
        # After the replay: a journal that lost records at its end (cut at a record boundary: it opens without
        # a word) replays to fewer messages than the shard had published. Its subscribers notice it too, and
        # follow; the operator learns it here (docs/deploy.md, "Checking and repairing a journal").
        try:
            noted = int(self._published_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        self._noted = self.outbox.seq
        if noted > self.outbox.seq:
            log.error("matcher %s: journal %s replays to seq %d, but the shard had published up to seq %d: its last "
                      "records are lost (orders and fills its brokers were told of); subscribers follow the shard "
                      "from here", self.name, self.journal_path, self.outbox.seq, noted)
            self._published_path.write_text(f"{self.outbox.seq}\n")

    def serve_replays(self, sock: zmq.Socket) -> None:
        """Send the replays asked for, part by part, as far as each peer takes them now.

        A peer gets at most ``REPLAY_QUEUE`` parts queued at a time (the recovery socket's high-water
        mark): a peer that does not read holds no more of this matcher's memory than that, and its
        replay goes on when it reads again; a peer that has gone is forgotten.
        """
        out = self.outbox
        waiting: collections.deque[_ReplayJob] = collections.deque()
        while self.replays:
            job = self.replays.popleft()
            while job.next <= job.last:
                last = min(job.next + REPLAY_CHUNK - 1, job.last)
                bodies = out.range(job.next, last)
                if bodies is None:
                    reply = ReplayReply(shard=self.shard_no, first=job.next, last=job.last, msgs=[], done=True,
                                        reason="replay_unavailable",
                                        text=f"this matcher holds seq {out.ring_first}..{out.seq}")
                else:
                    reply = ReplayReply(shard=self.shard_no, first=job.next, last=last, msgs=bodies,
                                        done=last == job.last)
                try:
                    send_frames(sock, (job.ident, encode(reply)), zmq.NOBLOCK)
                except zmq.Again:
                    waiting.append(job)  # its queue is full: go on when the peer has read
                    break
                except zmq.ZMQError as e:
                    if e.errno != zmq.EHOSTUNREACH:
                        raise
                    break  # the peer has gone
                job.next = job.last + 1 if bodies is None else last + 1
        self.replays = waiting

    def snapshot(self, symbol: str | None = None) -> SnapshotReply:
        """Return the shard's books (or one symbol's) as of the last published message."""
        books = []
        for sym in sorted(self.symbols) if symbol is None else [symbol]:
            if sym not in self.symbols:
                continue
            lv = self.engine.book_levels(sym)
            books.append(BookSnapshot(
                symbol=sym, bids=[tuple(x) for x in lv["bids"]], asks=[tuple(x) for x in lv["asks"]],
                trade_id=self.engine.trade_id(sym), book_tseq=self.outbox.tseq[book_topic(sym)],
                trade_tseq=self.outbox.tseq[trade_topic(sym)], ref_price=self._reference(sym)))
        return SnapshotReply(shard=self.shard_no, seq=self.outbox.seq, epoch=self.epoch,
                             exec_tseq=self.outbox.tseq[exec_topic(self.shard_no)], books=books,
                             states=list(self.engine.halts.values()), state_tseq=self.outbox.tseq[self.state_topic],
                             phase=self.engine.phase if self.engine.sessions else None,  # type: ignore[arg-type]
                             entry=self.engine.sessions and self.engine.entry)

    def _reference(self, symbol: str) -> str | None:
        # The symbol's reference price as the gateways follow it: its last `close` (published on S), else the
        # instrument's ref_price (the topology's, or a close the bands moved to).
        inst = self.engine.instruments[symbol]
        close = self.engine.closes.get(symbol)
        if close is not None:
            return inst.to_price(close)
        return None if inst.ref_price is None else str(inst.ref_price)

    def checksum(self) -> int:
        """Return a hash of every book of the shard (equal books, equal hash)."""
        h = 0
        for sym in sorted(self.symbols):
            h = (h * 1_000_003 + self.engine.books[sym].checksum()) & ((1 << 64) - 1)  # type: ignore[attr-defined]
        return h

    # ------------------------------------------------------------- replication

    def _replicate_live(self) -> None:
        # (primary) Send the round's journaled records to an in-sync secondary: it journals and applies them while
        # this matcher applies them too; the batch's answers wait for its acknowledgement (_await_secondary).
        out, self.repl_out = self.repl_out, []
        sec = self.secondary
        if not out or sec is None or not sec.in_sync or self._repl is None:
            return
        first = self.journal.last_seq - len(out) + 1
        self._send_repl(sec, ReplRecords(epoch=self.epoch, first=first, records=out, live=True))
        sec.next = self.journal.last_seq + 1

    def _send_repl(self, sec: _Secondary, msg: Any) -> bool:
        assert self._repl is not None
        try:
            send_frames(self._repl, (sec.ident, encode(msg)), zmq.NOBLOCK)
            return True
        except zmq.Again:  # its queue is full: it is behind, and catches up when it reads
            return False
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            if self.secondary is sec:  # it has gone: forgotten until it joins again
                log.warning("matcher %s: secondary %s has gone: going on alone", self.name, sec.name)
                self.secondary = None
                if sec.in_sync:
                    self._declare_insync(None)  # before anything more leaves: it may not lead without it
            return False

    def _await_secondary(self) -> None:
        # (primary) Wait until the in-sync secondary holds the batch; past REPL_TIMEOUT_S it is out of sync, which
        # ZooKeeper must know before anything of the batch leaves (else it could take over without the batch).
        sec = self.secondary
        last = self.journal.last_seq
        if sec is None or not sec.in_sync or sec.acked >= last or self._repl is None:
            return
        deadline = time.monotonic() + REPL_TIMEOUT_S
        while sec.acked < last and sec is self.secondary:
            left = deadline - time.monotonic()
            if left <= 0 or not self._repl.poll(max(1, int(left * 1000))):
                break
            self._drain_repl()
        if sec is not self.secondary or sec.acked >= last:
            return
        log.warning("matcher %s: secondary %s did not acknowledge seq %d within %g s: going on alone until it "
                    "catches up", self.name, sec.name, last, REPL_TIMEOUT_S)
        sec.in_sync = False
        sec.next = sec.acked + 1
        self._declare_insync(None)

    def _declare_insync(self, name: str | None) -> None:
        try:
            self.seat.declare_insync(name, self.epoch, self.journal.last_seq)
        except Exception as e:
            if name is None:
                # Not able to say the secondary is behind: it may take over without what follows. Stop here.
                log.critical("matcher %s: cannot tell ZooKeeper the secondary is behind (%s): starting over without "
                             "answering the batch", self.name, e)
                self._start_over()
            log.warning("matcher %s: cannot tell ZooKeeper %s is in sync (%s)", self.name, name, e)
            if self.secondary is not None:
                self.secondary.in_sync = False
        self.seat.report_secondary({"name": name or (self.secondary.name if self.secondary else None),
                                    "in_sync": name is not None, "seq": self.journal.last_seq,
                                    "acked": self.secondary.acked if self.secondary else 0})

    def _drain_repl(self) -> None:
        assert self._repl is not None
        while True:
            try:
                frames = self._repl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._on_repl(frames)
            except Exception:
                log.exception("replication message failed")

    def _on_repl(self, frames: list[bytes]) -> None:
        # (primary) A secondary's join or acknowledgement.
        ident, body = frames[0], frames[-1]
        try:
            msg = decode_internal(body)
        except ProtocolError as e:
            # Not a replication message (a stray or hostile peer): told why, as on the order and recovery sockets.
            assert self._repl is not None
            with contextlib.suppress(zmq.ZMQError):
                send_frames(self._repl, (ident, encode(Error(reason=e.reason, text=e.text, field=e.field))),
                            zmq.NOBLOCK)
            return
        if isinstance(msg, ReplAck):
            sec = self.secondary
            if sec is not None and sec.ident == ident:
                sec.acked = max(sec.acked, msg.last_seq)
            return
        if not isinstance(msg, ReplJoin):
            return
        refusal = None
        if self.role != "primary":
            refusal = ReplRefused(reason="not_primary", text=f"{self.name} is not the primary of {self.shard.name}")
        elif self.peer is None or msg.name != self.peer.name:
            refusal = ReplRefused(reason="not_its_pair", text=f"{msg.name} is not {self.name}'s pair")
        elif msg.last_seq > self.journal.last_seq:
            refusal = ReplRefused(reason="ahead_of_primary",
                                  text=f"{msg.name} holds seq {msg.last_seq}, the primary {self.journal.last_seq}")
            log.error("matcher %s: secondary %s is ahead (seq %d, here %d): it must cut its journal", self.name,
                      msg.name, msg.last_seq, self.journal.last_seq)
        if refusal is not None:
            assert self._repl is not None
            with contextlib.suppress(zmq.ZMQError):
                send_frames(self._repl, (ident, encode(refusal)), zmq.NOBLOCK)
            return
        was = self.secondary
        self.secondary = _Secondary(ident, msg.name, next=msg.last_seq + 1, acked=msg.last_seq)
        log.info("matcher %s: secondary %s joins at seq %d (here %d): catching it up", self.name, msg.name,
                 msg.last_seq, self.journal.last_seq)
        if was is not None and was.in_sync:
            self._declare_insync(None)

    def _catch_up(self) -> None:
        # (primary) Send a secondary that is behind the records it lacks, a window at a time; declare it in sync
        # once it holds them all (from then on every batch waits for it).
        sec = self.secondary
        if sec is None or sec.in_sync or self._repl is None:
            return
        last = self.journal.last_seq
        while sec.next <= last and sec.next - sec.acked <= REPL_CHUNK * REPL_WINDOW:
            hi = min(sec.next + REPL_CHUNK - 1, last)
            records = [p for _, p in self.journal.read_range(sec.next, hi)]
            if not self._send_repl(sec, ReplRecords(epoch=self.epoch, first=sec.next, records=records)):
                return
            sec.next = hi + 1
        if sec.acked >= last:
            sec.in_sync = True
            log.info("matcher %s: secondary %s in sync at seq %d", self.name, sec.name, last)
            self._declare_insync(sec.name)

    def _follow(self, now: float) -> None:
        # (secondary) Keep a connection to the primary ZooKeeper names, joining it again when it changes.
        if now - self._follow_check < FOLLOW_CHECK_S:
            return
        self._follow_check = now
        reign = self.seat.primary()
        if reign == self._following:
            return
        if self._upstream is not None:
            self._upstream.close(0)
            self._upstream = None
        self._following = reign
        if reign is None or reign.name == self.name:
            return
        primary = self.shard.replica(reign.name)
        if primary.repl is None:
            log.error("matcher %s: primary %s has no repl_port in the topology", self.name, reign.name)
            return
        up = self.ctx.socket(zmq.DEALER)
        up.setsockopt(zmq.LINGER, 0)
        connect(up, primary.repl.connect, self.keys)
        self._upstream = up
        send_frames(up, (encode(ReplJoin(name=self.name, last_seq=self.journal.last_seq)),))
        log.info("matcher %s: secondary of %s (epoch %d), joining at seq %d", self.name, reign.name, reign.epoch,
                 self.journal.last_seq)

    def _on_upstream(self) -> None:
        # (secondary) Journal and apply the primary's records, then acknowledge them.
        assert self._upstream is not None
        up = self._upstream
        acked = self.journal.last_seq
        while True:
            try:
                body = up.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = decode_internal(body)
            if isinstance(msg, ReplRefused):
                log.error("matcher %s: the primary refuses it: %s (%s)", self.name, msg.reason, msg.text)
                self._following = None  # asks again at the next check
                self._follow_check = time.monotonic() + 2.0
                continue
            if not isinstance(msg, ReplRecords):
                continue
            last = self.journal.last_seq
            if msg.first > last + 1:
                log.warning("matcher %s: records from seq %d, holding %d: joining again", self.name, msg.first, last)
                send_frames(up, (encode(ReplJoin(name=self.name, last_seq=last)),))
                continue
            fresh = msg.records[last + 1 - msg.first:]
            for payload in fresh:
                self.journal.append(payload)
            self.journal.commit()
            self.outbox.epoch = self.epoch = msg.epoch
            for payload in fresh:
                cmd = decode_command(payload)
                if not isinstance(cmd, AddInstrument):
                    self._apply(cmd)  # type: ignore[arg-type]
        self.outbox.write_log()
        if self.journal.last_seq != acked:
            send_frames(up, (encode(ReplAck(name=self.name, last_seq=self.journal.last_seq)),))

    def _take_over(self, pub: zmq.Socket) -> None:
        # (secondary that won the election) Become the primary: a new epoch from the next record on.
        if self._upstream is not None:
            self._upstream.close(0)
            self._upstream = None
        reign = self.seat.take_over(self.journal.last_seq + 1, self.outbox.seq + 1)
        self.epoch = self.outbox.epoch = reign.epoch
        self.outbox.pub = pub
        self.role = "primary"
        self._following = None
        self._report()

    def _report(self) -> None:
        # Its role and where it stands, for exfab status (never waits: the registry sends in the background).
        if self.reg is not None:
            self.reg.update(self.role, shard=self.shard.name, epoch=self.epoch, seq=self.journal.last_seq)

    def _start_over(self) -> NoReturn:
        # Crash-only, at once: nothing more leaves this process. It runs again from its journal as a candidate (the
        # path of a kill -9), and cuts what a successor never had.
        with contextlib.suppress(Exception):
            self.journal.close()
        os.execv(sys.executable, [sys.executable, "-m", "nodes.matcher", *sys.argv[1:]])

    def _cut_divergent(self) -> None:
        # (a pair's matcher, starting) Cut what this journal may hold that the shard's later primaries never had.
        keep = self.seat.cut_point()
        if keep is not None and keep < self.journal.last_seq:
            cut = self.journal.truncate(keep)
            log.warning("matcher %s: cut %d journal records after seq %d: written while it led, they never reached "
                        "the primaries after it (never acknowledged to anyone)", self.name, cut, keep)

    # -------------------------------------------------------------------- loop

    def stop(self, *_: object) -> None:
        """Ask the loop to finish its turn and exit."""
        self._stop = True

    def run(self, ready: Any = None) -> None:
        """Bind, recover from the journal, then serve until :meth:`stop` (or SIGINT/SIGTERM)."""
        ctx = self.ctx
        orders = ctx.socket(zmq.ROUTER)
        recovery = ctx.socket(zmq.ROUTER)
        pub = ctx.socket(zmq.PUB)
        for s in (orders, recovery):
            s.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
            s.setsockopt(zmq.LINGER, 0)
        recovery.setsockopt(zmq.SNDHWM, REPLAY_QUEUE)
        recovery.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full queue raises Again, a peer gone EHOSTUNREACH
        pub.setsockopt(zmq.SNDHWM, 1_000_000)  # a slow subscriber loses messages (and recovers them), never slows us
        pub.setsockopt(zmq.LINGER, 0)
        warn_if_open(self.topo, f"{MATCHER}:{self.name}", log)
        if self.keys is not None:  # orders from the gateways only; the stream and replays for nodes only
            admit(self.topo, ctx)
            self.keys.serve(orders, ORDERS)
            self.keys.serve(recovery, NODES)
            self.keys.serve(pub, NODES)
        orders.bind(self.replica.order.bind)
        recovery.bind(self.replica.recovery.bind)
        pub.bind(self.replica.pub.bind)
        socks: tuple[zmq.Socket, ...] = (orders, recovery)
        if self.shard.paired:
            from topology.election import Seat

            self.seat = Seat(self.topo, self.shard, self.replica)
            if self.replica.repl is not None:
                self._repl = ctx.socket(zmq.ROUTER)
                self._repl.setsockopt(zmq.LINGER, 0)
                self._repl.setsockopt(zmq.ROUTER_MANDATORY, 1)
                if self.keys is not None:  # the shard's other matcher only
                    self.keys.serve(self._repl, repl_domain(self.shard.name))
                self._repl.bind(self.replica.repl.bind)
                socks += (self._repl,)
            self._cut_divergent()
        restart = False
        try:
            n = self.recover()
            # What recovery and start-up made lives for the whole run: out of the cycle collector's sight, so
            # its full collections scan only what the day adds (they were the exchange's worst pauses).
            gc.freeze()
            if self.role == "primary":
                self.outbox.pub = pub
            log.info("matcher %s: shard %s (%d symbols), replayed %d journaled commands, seq %d, checksum %016x%s",
                     self.name, self.shard.name, len(self.symbols), n, self.outbox.seq, self.checksum(),
                     "; standing in the election" if self.seat is not None else "")
            self._check_published()
            if self.seat is not None:
                self.seat.stand()
            if ready is not None:
                ready()
            poller = zmq.Poller()
            for sock in socks:
                poller.register(sock, zmq.POLLIN)
            upstream: zmq.Socket | None = None
            while not self._stop:
                if self.seat is not None:
                    if self.seat.lost.is_set():
                        restart = True
                        break
                    if self.role == "secondary":
                        if self.seat.won.is_set():
                            self._take_over(pub)
                        else:
                            self._follow(time.monotonic())
                    if self._upstream is not upstream:  # the secondary's connection to its primary changed
                        if upstream is not None:
                            with contextlib.suppress(KeyError):
                                poller.unregister(upstream)
                        upstream = self._upstream
                        if upstream is not None:
                            poller.register(upstream, zmq.POLLIN)
                events = readable(poller, (*socks, upstream) if upstream is not None else socks, 20 if
                                  self.seat is not None else 100)
                if self.role == "primary" and self.calendar is not None:  # before the orders that came after it
                    self._session_due(time.time_ns())
                if orders in events:
                    batch: list[list[bytes]] = []
                    while len(batch) < MAX_BATCH:
                        try:
                            batch.append(recv_frames(orders))
                        except zmq.Again:
                            break
                    try:
                        self.handle_batch(batch, orders)
                    except Exception:
                        log.exception("a batch of %d order messages failed", len(batch))
                if self.role == "primary" and self.engine.halts:
                    self._resume_due(time.time_ns())
                if recovery in events:
                    while True:
                        try:
                            msg = recovery.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        try:
                            self.handle_recovery(msg, recovery)
                        except Exception:
                            log.exception("recovery request failed")
                if self._repl is not None:
                    if self._repl in events:
                        self._drain_repl()
                    self._catch_up()
                if upstream is not None and upstream in events:
                    try:
                        self._on_upstream()
                    except Exception:
                        log.exception("replicated records failed")
                if self.replays:
                    self.serve_replays(recovery)
                if time.monotonic() - self.outbox.last_heartbeat >= HEARTBEAT_S:
                    self._report()
                    if self.role != "primary":
                        self.outbox.last_heartbeat = time.monotonic()  # (a secondary publishes nothing)
                        continue
                    self.outbox.heartbeat(self.journal_error)
                    self._note_published()
                    if self.secondary is not None and self.seat is not None:
                        sec = self.secondary
                        self.seat.report_secondary({"name": sec.name, "in_sync": sec.in_sync,
                                                    "seq": self.journal.last_seq, "acked": sec.acked,
                                                    "lag": self.journal.last_seq - sec.acked})
        finally:
            self.journal.close()
            self.publog.close()
            for s in (orders, recovery, pub, self._repl, self._upstream):
                if s is not None:
                    s.close(0)
            log.info("matcher %s: stopped at seq %d, checksum %016x; %d commands refused as expired", self.name,
                     self.outbox.seq, self.checksum(), self.expired)
            if self.seat is not None:
                self.seat.close()
        if restart:
            # The ZooKeeper session ended: another matcher may lead now. Start over as a candidate.
            log.warning("matcher %s: restarting to rejoin the shard", self.name)
            self._start_over()


def _answer(sock: zmq.Socket, ident: bytes, msg: Any) -> None:
    # One answer on the recovery socket, never waiting: a peer whose queue is full or who has gone loses it
    # (it asks again after its timeout).
    try:
        send_frames(sock, (ident, encode(msg)), zmq.NOBLOCK)
    except zmq.Again:
        log.warning("recovery: a peer's queue is full; an answer to it is dropped")
    except zmq.ZMQError as e:
        if e.errno != zmq.EHOSTUNREACH:
            raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run one matcher: ``python -m nodes.matcher --topology FILE --id NAME``."""
    ap = argparse.ArgumentParser(prog="exfab node matcher", description="Run one matcher of a topology.")
    ap.add_argument("--topology", required=True, metavar="FILE")
    ap.add_argument("--id", required=True, metavar="NAME", help="the matcher's name in the topology")
    ap.add_argument("--fsync", default="batch", help="journal fsync policy: batch, interval:N (ms) or none")
    ap.add_argument("--ring-mb", type=int, default=RING_BYTES >> 20, metavar="MB",
                    help=f"memory for the published messages kept to answer replays (default {RING_BYTES >> 20})")
    ap.add_argument("--keep-finished", type=int, default=KEEP_FINISHED, metavar="N",
                    help=f"finished orders kept in memory, older ones answered by the stores (default "
                         f"{KEEP_FINISHED:,}; every order when the topology has no persistence node)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s matcher {args.id} %(levelname)s %(message)s",
                        stream=sys.stderr)
    warm_up()
    # A write past a file size limit fails with EFBIG (refused commands, the journal rolled back) instead of
    # killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    topo = load(args.topology)
    matcher = Matcher(topo, args.id, fsync=args.fsync, ring_bytes=args.ring_mb << 20,
                      keep_finished=args.keep_finished if topo.persistence is not None else None)
    signal.signal(signal.SIGINT, matcher.stop)
    signal.signal(signal.SIGTERM, matcher.stop)
    from nodes.profiling import profiled  # EXFAB_PROFILE_DIR set: the loop runs under cProfile

    matcher.reg = Registration(topo, MATCHER, args.id, matcher.replica.host, shard=matcher.shard.name)

    def ready() -> None:
        print(f"READY matcher {args.id}", flush=True)
        matcher._report()

    try:
        with profiled(f"matcher-{args.id}"):
            matcher.run(ready=ready)
    finally:
        matcher.reg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
