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
   the journal sequence number and the range of PUB messages it produced;
6. serve replay (a range of PUB messages again) and snapshot requests;
7. every ``HEARTBEAT_S``, publish a heartbeat carrying the last ``seq`` and
   every topic's last ``tseq``, so a subscriber that lost the last messages
   (of the shard, or of a quiet topic) learns of it without waiting for the
   next one.

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
import itertools
import logging
import signal
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import zmq

from fabric.book import warm_up
from fabric.constants import BUY, DAY, FOK, GTC, IOC, LIMIT, MARKET, SELL
from fabric.engine import Event
from fabric.instruments import Instrument
from fabric.journal import Journal, decode_command, encode_command, read_journal
from fabric.protocol import (
    BookLevel,
    BookSnapshot,
    Cancel,
    CommandReply,
    Error,
    ExAccepted,
    ExCancelled,
    ExExpired,
    ExFill,
    ExRejected,
    ExReplaced,
    New,
    OrderBatch,
    OrderCommand,
    Orders,
    OrderStatus,
    ProtocolError,
    PubBundle,
    PubHeartbeat,
    PubMessage,
    Replace,
    ReplayReply,
    ReplayRequest,
    ReplyBatch,
    SnapshotReply,
    SnapshotRequest,
    Status,
    Trade,
    book_topic,
    decode_internal,
    encode,
    exec_topic,
    heartbeat_topic,
    op_of,
    trade_topic,
)
from tools.replay import Replayer
from topology.load import load
from topology.model import Topology

log = logging.getLogger("exfab.matcher")

MAX_BATCH = 1024  # order messages drained per turn: bounds the latency a burst adds to its last message
RING = 2_000_000  # PUB messages kept in memory for replay requests
REPLAY_CHUNK = 2_000  # PUB messages per replay reply
MAX_MESSAGE = 1 << 20  # ZeroMQ drops a peer that sends more in one message (ours stay far below)
HEARTBEAT_S = 1.0  # PUB heartbeat period, whatever the traffic (docs/protocol.md, section 8)
SIDE = {BUY: "buy", SELL: "sell"}
_SIDES = {"buy": BUY, "sell": SELL}
_TYPES = {"limit": LIMIT, "market": MARKET}
_TIFS = {"GTC": GTC, "DAY": DAY, "IOC": IOC, "FOK": FOK}


class Outbox:
    """Sequence and publish the shard's outbound messages, and keep the recent ones for replays."""

    def __init__(self, shard_no: int, epoch: int, pub: zmq.Socket | None) -> None:
        self.shard_no = shard_no
        self.epoch = epoch
        self.pub = pub
        self.seq = 0
        self.tseq: dict[bytes, int] = collections.defaultdict(int)
        self.ring: collections.deque[bytes] = collections.deque(maxlen=RING)
        self.ring_first = 1  # seq of ring[0]
        self.pending: dict[bytes, list[bytes]] = {}  # topic -> bodies not yet published, in seq order
        self.last_heartbeat = time.monotonic()

    def send(self, cls: type[PubMessage], topic: bytes, ts: int, fields: dict[str, Any]) -> int:
        """Sequence one message, publish it (when live) and keep it; return its ``seq``."""
        self.seq += 1
        self.tseq[topic] += 1
        msg = cls(shard=self.shard_no, seq=self.seq, tseq=self.tseq[topic], epoch=self.epoch, ts=ts,  # type: ignore[call-arg]
                  **fields)
        body = encode(msg)
        if len(self.ring) == self.ring.maxlen:
            self.ring_first += 1
        self.ring.append(body)
        if self.pub is not None:
            self.pending.setdefault(topic, []).append(body)
        return self.seq

    def flush(self) -> None:
        """Publish what was sequenced since the last flush: per topic, one message or one bundle."""
        if self.pub is None or not self.pending:
            return
        send = self.pub.send_multipart
        for topic, bodies in self.pending.items():
            send((topic, bodies[0] if len(bodies) == 1 else encode(PubBundle(msgs=bodies))))
        self.pending = {}

    def heartbeat(self) -> None:
        """Publish a heartbeat: the last ``seq`` again, with ``tseq`` 0 (it takes no number of its own).

        It also names every topic's last ``tseq``, so a subscriber of some topics sees a lost last message
        of a quiet topic (``docs/protocol.md``, section 8).
        """
        assert self.pub is not None
        tseqs = {topic[:-1].decode(): n for topic, n in self.tseq.items()}
        msg = PubHeartbeat(shard=self.shard_no, seq=self.seq, tseq=0, epoch=self.epoch, ts=time.time_ns(),
                           tseqs=tseqs)
        self.pub.send_multipart((heartbeat_topic(self.shard_no), encode(msg)))
        self.last_heartbeat = time.monotonic()

    def range(self, first: int, last: int) -> list[bytes] | None:
        """Return the bodies of messages ``first`` .. ``last``, or ``None`` if they are not all kept."""
        if first < self.ring_first or last > self.seq or first > last:
            return None
        # islice walks the deque once; indexing it element by element costs O(n) per element from the middle.
        return list(itertools.islice(self.ring, first - self.ring_first, last - self.ring_first + 1))


class Matcher:
    """One matcher of a shard: the engine, its journal, its sockets, and the loop."""

    def __init__(self, topo: Topology, name: str, *, fsync: str = "batch", ctx: zmq.Context | None = None) -> None:
        self.topo = topo
        self.shard, self.replica = topo.replica(name)
        self.name = name
        self.shard_no = topo.shards.index(self.shard)
        self.epoch = 0  # a single matcher; primary/secondary pairs fence with ZooKeeper epochs (later)
        self.symbols = set(self.shard.symbols)
        self.replayer = Replayer()
        self.engine = self.replayer.engine
        self.engine.track_levels = True
        self.instruments: dict[str, Instrument] = {}
        for inst in topo.instruments_of(self.shard):
            self.engine.add_instrument(inst)
            self.instruments[inst.symbol] = inst
        self.levels: dict[tuple[str, int, int], tuple[int, int]] = {}  # last published (qty, count)
        self.trade_ids: dict[str, int] = collections.defaultdict(int)
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
                self.journal.append(encode_command(_instrument_record(inst)))
            self.journal.commit()
        self.ctx = ctx or zmq.Context.instance()
        self.outbox = Outbox(self.shard_no, self.epoch, None)
        self.last_reports = 0  # execution reports the last applied command published
        self._stop = False

    # ---------------------------------------------------------------- recovery

    def recover(self) -> int:
        """Replay the journal through the engine (publishing nothing); return the commands replayed."""
        n = 0
        for _seq, payload in read_journal(self.journal_path):
            cmd = decode_command(payload)
            if cmd.get("op") == "instrument":  # the engine has the topology's instruments already
                inst = self.instruments.get(cmd.get("symbol", ""))
                if inst is None or _instrument_record(inst) != cmd:
                    log.warning("journal %s: instrument %r is not the topology's; replaying with the topology's",
                                self.journal_path, cmd)
                continue
            self._apply(cmd, int(cmd.get("ts", 0)))
            n += 1
        return n

    # ------------------------------------------------------------------ engine

    def _is_retry(self, broker: str, cmd: dict[str, Any]) -> bool:
        # A `new` whose client order id the broker already used, with the same terms: a resend.
        price = cmd.get("price")
        return self.engine.is_retry(
            cmd["symbol"], broker, cmd["oid"], 0 if cmd["side"] == "buy" else 1, 0 if cmd["type"] == "limit" else 1,
            ("GTC", "DAY", "IOC", "FOK").index(cmd["tif"]), None if price is None else Decimal(price), cmd["qty"])

    def _apply(self, cmd: dict[str, Any], ts: int) -> tuple[int, int, list[Event]]:
        # Apply one journaled command; publish its outcomes; return (first_seq, last_seq, events).
        # Resends never reach the journal (_handle_round answers them from memory), so a journaled
        # command is always applied: live and in a replay of the journal alike.
        try:
            return self._apply_events(cmd, ts)
        except Exception:
            # A bug, not bad input (that was refused before the journal). The same command fails
            # the same way when the journal is replayed, so skipping it keeps replays identical.
            log.exception("command %r failed; skipped", cmd)
            self.engine.touched.clear()
            return self.outbox.seq + 1, self.outbox.seq, []

    def _engine_call(self, cmd: dict[str, Any]) -> list[Event]:
        # The engine call for a journaled command. Its fields were validated by the protocol decoder
        # before the command was journaled, so it goes to the engine directly (the replay format's
        # parser would check them all again).
        eng = self.engine
        op = cmd["op"]
        price = cmd.get("price")
        if op == "new":
            return eng.new_order(cmd["symbol"], cmd["broker"], cmd["oid"], _SIDES[cmd["side"]], _TYPES[cmd["type"]],
                                 _TIFS[cmd["tif"]], None if price is None else Decimal(price), cmd["qty"])
        if op == "cancel":
            return eng.cancel(cmd["symbol"], cmd["broker"], cmd["oid"])
        if op == "replace":
            return eng.replace(cmd["symbol"], cmd["broker"], cmd["oid"], None if price is None else Decimal(price),
                               cmd.get("qty"))
        return self.replayer.apply(cmd)  # anything else: the general path

    def _apply_events(self, cmd: dict[str, Any], ts: int) -> tuple[int, int, list[Event]]:
        events = self._engine_call(cmd)
        out = self.outbox
        first = out.seq + 1
        execs: list[tuple[type[PubMessage], dict[str, Any]]] = []
        for ev in events:
            kind = ev["event"]
            symbol = ev["symbol"]
            if kind == "trade":
                self.trade_ids[symbol] = ev["trade_id"]
                out.send(Trade, trade_topic(symbol), ts, {
                    "symbol": symbol, "trade_id": ev["trade_id"], "price": ev["price"], "qty": ev["qty"],
                    "aggressor": ev["aggressor"], "buy_broker": ev["buy_broker"], "buy_oid": ev["buy_oid"],
                    "sell_broker": ev["sell_broker"], "sell_oid": ev["sell_oid"]})
                aggr = ev["aggressor"]
                rest = "sell" if aggr == "buy" else "buy"
                for side, leaves, cum, is_aggr in ((aggr, ev["aggressor_leaves_qty"], ev["aggressor_cum_qty"], True),
                                                   (rest, ev["resting_leaves_qty"], ev["resting_cum_qty"], False)):
                    execs.append((ExFill, {
                        "broker": ev[f"{side}_broker"], "oid": ev[f"{side}_oid"], "symbol": symbol, "side": side,
                        "price": ev["price"], "last_qty": ev["qty"], "cum_qty": cum, "leaves_qty": leaves,
                        "trade_id": ev["trade_id"], "aggressor": is_aggr}))
            elif kind == "accepted":
                execs.append((ExAccepted, {k: ev.get(k) for k in
                                           ("broker", "oid", "symbol", "side", "type", "price", "qty", "tif")}))
            elif kind == "rejected":
                execs.append((ExRejected, {"broker": ev["broker"] or "", "op": ev["op"] or "", "oid": ev["oid"] or "",
                                           "symbol": symbol or "", "reason": ev["reason"], "text": ev["text"]}))
            elif kind == "cancelled":
                execs.append((ExCancelled, {k: ev[k] for k in ("broker", "oid", "symbol", "qty", "cum_qty", "reason")}))
            elif kind == "replaced":
                execs.append((ExReplaced, {k: ev[k] for k in ("broker", "oid", "symbol", "price", "qty", "leaves_qty",
                                                              "cum_qty", "kept_priority")}))
            elif kind == "expired":
                execs.append((ExExpired, {k: ev[k] for k in ("broker", "oid", "symbol", "qty", "cum_qty")}))
        self._publish_levels(ts)
        topic = exec_topic(self.shard_no)
        for cls, fields in execs:
            out.send(cls, topic, ts, fields)
        self.last_reports = len(execs)
        return first, out.seq, events

    def _publish_levels(self, ts: int) -> None:
        # Publish every touched level whose (quantity, count) differs from what was last published.
        touched = self.engine.touched
        if not touched:
            return
        for key in dict.fromkeys(touched):  # de-duplicated, first-touched order: deterministic
            symbol, side, price = key
            now = self.engine.books[symbol].level(side, price)
            if self.levels.get(key, (0, 0)) != now:
                if now == (0, 0):
                    self.levels.pop(key, None)
                else:
                    self.levels[key] = now
                self.outbox.send(BookLevel, book_topic(symbol), ts, {
                    "symbol": symbol, "side": SIDE[side], "price": self.instruments[symbol].to_price(price),
                    "qty": now[0], "count": now[1]})
        touched.clear()

    # ---------------------------------------------------------------- commands

    @staticmethod
    def _as_replay(broker: str, cmd: New | Cancel | Replace) -> dict[str, Any]:
        if isinstance(cmd, New):
            d: dict[str, Any] = {"op": "new", "oid": cmd.oid, "broker": broker, "symbol": cmd.symbol,
                                 "side": cmd.side, "type": cmd.type, "qty": cmd.qty, "tif": cmd.tif}
            if cmd.price is not None:
                d["price"] = cmd.price
            return d
        if isinstance(cmd, Cancel):
            return {"op": "cancel", "oid": cmd.oid, "broker": broker, "symbol": cmd.symbol}
        d = {"op": "replace", "oid": cmd.oid, "broker": broker, "symbol": cmd.symbol}
        if cmd.price is not None:
            d["price"] = cmd.price
        if cmd.qty is not None:
            d["qty"] = cmd.qty
        return d

    def _status(self, op: str, broker: str, oid: str, symbol: str, events: list[Event] | None = None) -> OrderStatus:
        st = self.engine.order_status(symbol, broker, oid)
        if st is None:
            # Only a refused `new` makes a rejected order; a refused cancel names an order we do not know.
            rejected = op == "new" and bool(events) and events[0]["event"] == "rejected"  # type: ignore[index]
            return OrderStatus(op=op, oid=oid, symbol=symbol, state="rejected" if rejected else "unknown",
                               reason=events[0]["reason"] if rejected else None)  # type: ignore[index]
        return self._as_status(op, st)

    @staticmethod
    def _as_status(op: str, st: Event) -> OrderStatus:
        return OrderStatus(op=op, oid=st["oid"], symbol=st["symbol"], state=st["state"], side=st["side"],
                           type=st["type"], price=st.get("price"), qty=st["qty"], cum_qty=st["cum_qty"],
                           leaves_qty=st["leaves_qty"], tif=st["tif"], reason=st["reason"])

    def _reply(self, oc: OrderCommand, **kw: Any) -> CommandReply:
        return CommandReply(gateway=oc.gateway, req=oc.req, shard=self.shard_no, epoch=self.epoch, **kw)

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
        while commands:
            commands = self._handle_round(commands, replies)
        # Replies first (they carry their commands' reports: the acknowledgement's short path), then the
        # batch's PUB messages, per topic one message or one bundle.
        for ident, answers in replies.items():
            if len(answers) == 1 or any(isinstance(a, Error) for a in answers):
                for a in answers:
                    orders.send_multipart((ident, encode(a)))
            else:
                orders.send_multipart((ident, encode(ReplyBatch(replies=answers))))
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
        steps: list[tuple[bytes, OrderCommand, dict[str, Any] | None, int]] = []
        news: set[tuple[str, str]] = set()
        rest: list[tuple[bytes, OrderCommand]] = []
        for i, (ident, oc) in enumerate(commands):
            cmd = oc.cmd
            rec: dict[str, Any] | None = None
            in_seq = 0
            if not isinstance(cmd, Orders | Status) and cmd.symbol in self.symbols:
                rec = self._as_replay(oc.broker, cmd)
                if isinstance(cmd, New):
                    if (oc.broker, cmd.oid) in news:
                        rest = commands[i:]
                        break
                    news.add((oc.broker, cmd.oid))
                    if self._is_retry(oc.broker, rec):
                        rec = None  # a resend of an order already accepted: answered, never executed twice
                if rec is not None:
                    rec["ts"] = time.time_ns()
                    rec["gw"] = oc.gateway
                    rec["req"] = oc.req
                    in_seq = self.journal.append(encode_command(rec))
            steps.append((ident, oc, rec, in_seq))
        if any(rec is not None for _, _, rec, _ in steps):
            self.journal.commit()  # durable before anything is published or acknowledged
        for ident, oc, rec, in_seq in steps:
            replies.setdefault(ident, []).append(self._answer(oc) if rec is None else self._execute(oc, rec, in_seq))
        return rest

    def _answer(self, oc: OrderCommand) -> CommandReply:
        # The reply to a command that changes nothing: a query, a resent `new`, a symbol of another shard.
        cmd = oc.cmd
        if isinstance(cmd, Orders):
            return self._reply(oc, orders=[self._as_status("orders", st)
                                           for st in self.engine.open_orders(oc.broker, cmd.symbol)
                                           if st["symbol"] in self.symbols])
        if cmd.symbol not in self.symbols:
            return self._reply(oc, reason="unknown_symbol",
                               text=f"{cmd.symbol} is not traded on shard {self.shard.name}")
        return self._reply(oc, status=self._status(op_of(cmd), oc.broker, cmd.oid, cmd.symbol))

    def _execute(self, oc: OrderCommand, rec: dict[str, Any], in_seq: int) -> CommandReply:
        # Apply one journaled command and return its reply, with the execution reports it published.
        self.last_reports = 0
        first, last, events = self._apply(rec, rec["ts"])
        status = self._status(rec["op"], oc.broker, rec["oid"], rec["symbol"], events)
        # The command's execution reports are the last `last_reports` messages it published.
        n = self.last_reports
        reports = [self.outbox.ring[i - self.outbox.ring_first] for i in range(last - n + 1, last + 1)] if n else []
        return self._reply(oc, in_seq=in_seq, first_seq=first if last >= first else 0,
                           last_seq=last if last >= first else 0, status=status, reports=reports)

    def handle_recovery(self, msg: list[bytes], sock: zmq.Socket) -> None:
        """Answer one replay or snapshot request (``msg``: the ROUTER's frames, identity first)."""
        ident, body = msg[0], msg[-1]
        if len(msg) != 2:
            sock.send_multipart((ident, encode(Error(reason="malformed", text=f"a message is one frame, got "
                                                                                f"{len(msg) - 1}"))))
            return
        try:
            req = decode_internal(body)
        except ProtocolError as e:
            sock.send_multipart((ident, encode(Error(reason=e.reason, text=e.text, field=e.field))))
            return
        if isinstance(req, ReplayRequest):
            bodies = self.outbox.range(req.first, req.last)
            if bodies is None:
                sock.send_multipart((ident, encode(ReplayReply(
                    shard=self.shard_no, first=req.first, last=req.last, msgs=[], done=True,
                    reason="replay_unavailable",
                    text=f"this matcher holds seq {self.outbox.ring_first}..{self.outbox.seq}"))))
                return
            for i in range(0, len(bodies), REPLAY_CHUNK):
                part = bodies[i:i + REPLAY_CHUNK]
                first = req.first + i
                sock.send_multipart((ident, encode(ReplayReply(
                    shard=self.shard_no, first=first, last=first + len(part) - 1, msgs=part,
                    done=i + REPLAY_CHUNK >= len(bodies)))))
        elif isinstance(req, SnapshotRequest):
            sock.send_multipart((ident, encode(self.snapshot(req.symbol))))
        else:
            sock.send_multipart((ident, encode(Error(reason="unknown_message_type",
                                                     text=f"the recovery socket does not take {type(req).__name__}"))))

    def snapshot(self, symbol: str | None = None) -> SnapshotReply:
        """Return the shard's books (or one symbol's) as of the last published message."""
        books = []
        for sym in sorted(self.symbols) if symbol is None else [symbol]:
            if sym not in self.symbols:
                continue
            lv = self.engine.book_levels(sym)
            books.append(BookSnapshot(
                symbol=sym, bids=[tuple(x) for x in lv["bids"]], asks=[tuple(x) for x in lv["asks"]],
                trade_id=self.trade_ids[sym], book_tseq=self.outbox.tseq[book_topic(sym)],
                trade_tseq=self.outbox.tseq[trade_topic(sym)]))
        return SnapshotReply(shard=self.shard_no, seq=self.outbox.seq, epoch=self.epoch,
                             exec_tseq=self.outbox.tseq[exec_topic(self.shard_no)], books=books)

    def checksum(self) -> int:
        """Return a hash of every book of the shard (equal books, equal hash)."""
        h = 0
        for sym in sorted(self.symbols):
            h = (h * 1_000_003 + self.engine.books[sym].checksum()) & ((1 << 64) - 1)  # type: ignore[attr-defined]
        return h

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
        pub.setsockopt(zmq.SNDHWM, 1_000_000)  # a slow subscriber loses messages (and recovers them), never slows us
        pub.setsockopt(zmq.LINGER, 0)
        orders.bind(self.replica.order.bind)
        recovery.bind(self.replica.recovery.bind)
        pub.bind(self.replica.pub.bind)
        try:
            n = self.recover()
            self.outbox.pub = pub
            log.info("matcher %s: shard %s (%d symbols), replayed %d journaled commands, seq %d, checksum %016x",
                     self.name, self.shard.name, len(self.symbols), n, self.outbox.seq, self.checksum())
            if ready is not None:
                ready()
            poller = zmq.Poller()
            poller.register(orders, zmq.POLLIN)
            poller.register(recovery, zmq.POLLIN)
            while not self._stop:
                events = dict(poller.poll(100))
                if orders in events:
                    batch: list[list[bytes]] = []
                    while len(batch) < MAX_BATCH:
                        try:
                            batch.append(orders.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                    try:
                        self.handle_batch(batch, orders)
                    except Exception:
                        log.exception("a batch of %d order messages failed", len(batch))
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
                if time.monotonic() - self.outbox.last_heartbeat >= HEARTBEAT_S:
                    self.outbox.heartbeat()
        finally:
            self.journal.close()
            for s in (orders, recovery, pub):
                s.close(0)
            log.info("matcher %s: stopped at seq %d, checksum %016x", self.name, self.outbox.seq, self.checksum())


def _instrument_record(inst: Instrument) -> dict[str, Any]:
    # An instrument as a journal record: the replay format's `instrument` command.
    rec: dict[str, Any] = {"op": "instrument", "symbol": inst.symbol, "tick": str(inst.tick), "lot": inst.lot}
    if inst.ref_price is not None:
        rec["ref_price"] = str(inst.ref_price)
    if inst.band_pct is not None:
        rec["band_pct"] = str(inst.band_pct)
    return rec


def main(argv: Sequence[str] | None = None) -> int:
    """Run one matcher: ``python -m nodes.matcher --topology FILE --id NAME``."""
    ap = argparse.ArgumentParser(prog="exfab node matcher", description="Run one matcher of a topology.")
    ap.add_argument("--topology", required=True, metavar="FILE")
    ap.add_argument("--id", required=True, metavar="NAME", help="the matcher's name in the topology")
    ap.add_argument("--fsync", default="batch", help="journal fsync policy: batch, interval:N (ms) or none")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s matcher {args.id} %(levelname)s %(message)s",
                        stream=sys.stderr)
    warm_up()
    matcher = Matcher(load(args.topology), args.id, fsync=args.fsync)
    signal.signal(signal.SIGINT, matcher.stop)
    signal.signal(signal.SIGTERM, matcher.stop)
    matcher.run(ready=lambda: print(f"READY matcher {args.id}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
