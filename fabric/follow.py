"""Following every shard's sequenced stream from a node: the I/O around :class:`~fabric.stream.ShardStream`.

The ticker and the persistence node each follow some topics of every shard's
PUB stream, in order, nothing lost and nothing doubled, from a starting point
(the start of the day, or where a store stands).  :class:`Follower` does it
for them on one asyncio loop:

- **bootstrap**: per shard, a snapshot request to the matcher's recovery
  socket says where each topic stands now; every followed topic behind that
  asks for a replay of what it misses, and the shard is *synced* when the
  replays are done;
- **ingest**: one SUB socket connected to every shard's PUB, drained up to
  ``MAX_TURN`` ZeroMQ messages a turn; each message of a followed topic is
  offered to its shard's stream, and what the stream delivers goes to the
  node's ``deliver`` callback, topic by topic in ``tseq`` order; heartbeats
  reveal lost tails and a matcher that started over;
- **recover**: a task per shard asks for the replays its stream needs (again
  when unanswered); a range the matcher no longer holds is either taken from a
  snapshot (``on_unavailable``: the ticker rebuilds its books) or given up
  with an error in the log (:meth:`ShardStream.unavailable`).

The node keeps what the messages mean; the follower knows only topics and
numbers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import zmq
import zmq.asyncio

from fabric.auth import Keyring, connect
from fabric.protocol import (
    BookLevel,
    PubHeartbeat,
    PubMessage,
    ReplayReply,
    ReplayRequest,
    SnapshotReply,
    SnapshotRequest,
    Trade,
    book_topic,
    decode_internal,
    decode_pub,
    encode,
    exec_topic,
    iter_pub_typed,
    topic_of,
    trade_topic,
)
from fabric.stream import ShardStream, deposed

log = logging.getLogger("exfab.follow")

MAX_TURN: Final = 4096  # ZeroMQ messages taken per turn before the node's turn callback (a message may be a bundle)
REQUEST_TIMEOUT_S: Final = 2.0  # a matcher's answer to a replay or snapshot request
RETRY_S: Final = 1.0  # between attempts to reach a matcher that did not answer
RESOLVE_S: Final = 0.1  # how often a follower of pairs looks at where their primaries are


@dataclass(frozen=True, slots=True)
class ShardSource:
    """Where a shard's stream comes from: its number, name, PUB and recovery addresses.

    ``pubs`` lists every replica's PUB when the shard is a pair (the stream goes on from a new primary);
    ``epoch`` and ``from_seq`` are the primary's reign: a message of an older epoch from ``from_seq`` on is
    a deposed primary's, and is dropped.
    """

    no: int
    name: str
    pub: str
    recovery: str
    pubs: tuple[str, ...] = ()
    epoch: int = 0
    from_seq: int = 0


@dataclass
class ShardLink:
    """What a follower knows of one shard's stream.

    Attributes
    ----------
    stream
        The followed topics, each delivered once in ``tseq`` order.
    high
        The highest ``seq`` seen from the shard (a heartbeat below it: the shard started over).
    synced
        The bootstrap is done: what the shard had published when the follower started is delivered.
    """

    source: ShardSource
    stream: ShardStream[Any]
    high: int = 0
    recovering: bool = False
    synced: bool = False
    warned: bool = False
    sock: zmq.asyncio.Socket | None = None
    replays: int = 0
    unrecoverable: int = 0  # messages the matcher no longer held when asked

    @property
    def no(self) -> int:
        return self.source.no

    @property
    def name(self) -> str:
        return self.source.name


def snapshot_counters(snap: SnapshotReply) -> dict[bytes, int]:
    """Return the last ``tseq`` of every topic a snapshot names: its books' trades and levels, its execution reports."""
    out = {exec_topic(snap.shard): snap.exec_tseq}
    for b in snap.books:
        out[trade_topic(b.symbol)] = b.trade_tseq
        out[book_topic(b.symbol)] = b.book_tseq
    return out


Deliver = Callable[[ShardLink, list[Any]], None]


class Follower:
    r"""Follow the given topics of every shard (see the module's text).

    Parameters
    ----------
    ctx
        The node's asyncio ZeroMQ context.
    sources
        Every shard to follow, by number (``sources[i].no == i``).
    topics
        Per shard, the topic frames followed (each a ``ShardStream`` topic).
    prefixes
        The SUB subscriptions covering those topics (``b"T"``, ``b"X"``...); heartbeats are added.
    deliver
        Called with each shard's deliverable messages, in order, as they become so.
    turn
        Called after each drained turn of the SUB socket and each replay part (a node's batching point).
    on_restart
        Called when a shard started over (a new journal) before its stream restarts from ``seq`` 1.
    on_unavailable
        Called when the matcher no longer holds a replay, to take the shard's state from a snapshot; without
        it, the lost range is given up (:meth:`ShardStream.unavailable`) with an error in the log.
    rcvhwm
        Messages ZeroMQ queues for the node while it does not read (0: no limit, the matcher's own high-water
        mark bounds what waits). A node that :meth:`pause`\ s gives a limit: past it the matchers drop, and
        the follower asks for what was dropped when it reads again.
    resolve
        Where every shard's stream comes from now (``topology.primary.shard_sources``), asked every
        ``RESOLVE_S``: a shard whose primary changed is followed from the new one (:meth:`move`).
    keys
        The node's CURVE keys for the matchers' PUB and recovery sockets (``topology.keys.node_keyring``);
        ``None`` in an open topology.
    """

    def __init__(self, ctx: zmq.asyncio.Context, sources: Sequence[ShardSource], topics: Sequence[Sequence[bytes]],
                 prefixes: Sequence[bytes], deliver: Deliver, *, turn: Callable[[], None] | None = None,
                 on_restart: Callable[[ShardLink], None] | None = None,
                 on_unavailable: Callable[[ShardLink], Awaitable[None]] | None = None, rcvhwm: int = 0,
                 resolve: Callable[[], Sequence[ShardSource]] | None = None, keys: Keyring | None = None) -> None:
        self.ctx = ctx
        self.keys = keys
        self.links = [ShardLink(src, ShardStream(src.no)) for src in sources]
        for link, tops in zip(self.links, topics, strict=True):
            for topic in tops:
                link.stream.follow(topic)
        self.prefixes = tuple(prefixes)
        self.deliver = deliver
        self.turn = turn or (lambda: None)
        self.on_restart = on_restart
        self.on_unavailable = on_unavailable
        self.rcvhwm = rcvhwm
        self.resolve = resolve
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.messages = 0
        self.turns = 0
        self.stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sub: zmq.asyncio.Socket | None = None
        self._topic_cache: dict[tuple[type, str], bytes] = {}

    # ------------------------------------------------------------------ start

    def start_at(self, no: int, topic: bytes, tseq: int, seq: int) -> None:
        """Deliver ``topic`` of shard ``no`` from after message (``tseq``, ``seq``) (0, 0: from the day's first)."""
        link = self.links[no]
        link.stream.start(topic, tseq, seq)
        link.high = max(link.high, seq)

    def move(self, source: ShardSource) -> None:
        """Follow a shard's new primary (a fail-over): replays and snapshots are asked of it from now on."""
        link = self.links[source.no]
        if source == link.source:
            return
        log.warning("shard %s: primary now at %s (epoch %d)", source.name, source.recovery, source.epoch)
        link.source = source
        if link.sock is not None:
            link.sock.close(0)
            link.sock = None
        if link.stream.replay is not None:
            link.stream.replay.sent = None  # ask the new primary at once

    @property
    def synced(self) -> bool:
        """Whether every shard's bootstrap is done."""
        return all(ln.synced for ln in self.links)

    async def start(self) -> None:
        """Subscribe to every shard, then bootstrap each (in the background: see :attr:`synced`)."""
        sub = self._sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sub.setsockopt(zmq.LINGER, 0)
        for prefix in (*self.prefixes, b"H"):
            sub.setsockopt(zmq.SUBSCRIBE, prefix)
        for link in self.links:
            for addr in link.source.pubs or (link.source.pub,):
                connect(sub, addr, self.keys)
        await asyncio.sleep(0.2)  # let the subscriptions reach the matchers before asking for their state
        for link in self.links:
            self.spawn(self._bootstrap(link))
        self.spawn(self._ingest(sub))
        if self.resolve is not None:
            self.spawn(self._watch(self.resolve))

    async def _watch(self, resolve: Callable[[], Sequence[ShardSource]]) -> None:
        while True:
            await asyncio.sleep(RESOLVE_S)
            for source in resolve():
                self.move(source)

    @property
    def paused(self) -> bool:
        """Whether the live stream is not being read (:meth:`pause`)."""
        return not self._flowing.is_set()

    def pause(self) -> None:
        """Stop reading the live stream (a node that cannot keep up); replays already asked for go on."""
        self._flowing.clear()

    def resume(self) -> None:
        """Read the live stream again."""
        self._flowing.set()

    async def wait_synced(self, timeout: float) -> bool:
        """Wait until every shard is synced or found not answering (or ``timeout`` s); return whether all are synced.

        A node is ready without a matcher that is down: it catches up with that shard when the matcher is back.
        """
        deadline = time.monotonic() + timeout
        while (not all(ln.synced or ln.warned for ln in self.links) and time.monotonic() < deadline
               and not self.stopped.is_set()):
            await asyncio.sleep(0.02)
        return self.synced

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task the follower cancels when closed (a failure is logged)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", exc_info=task.exception())

    async def close(self) -> None:
        """Stop every task and close the sockets."""
        self.stopped.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in (self._sub, *(ln.sock for ln in self.links)):
            if s is not None:
                s.close(0)

    # ----------------------------------------------------------------- ingest

    def _topic(self, msg: PubMessage) -> bytes:
        t = type(msg)
        key: str = msg.symbol if t is Trade or t is BookLevel else str(msg.shard)  # type: ignore[union-attr,assignment]
        topic = self._topic_cache.get((t, key))
        if topic is None:
            topic = self._topic_cache[(t, key)] = topic_of(msg)
        return topic

    def ingest(self, frames: list[list[bytes]]) -> None:
        """Take a drained batch of ``[topic, body]`` messages (a bad one is logged and skipped)."""
        links = self.links
        n = len(links)
        now = time.monotonic()
        deliver = self.deliver
        for topic, body in frames:
            try:
                msgs = iter_pub_typed(body)
            except Exception as e:
                log.error("undecodable message on %r: %s", topic[:40], e)
                continue
            self.messages += len(msgs)
            for msg in msgs:
                no = msg.shard  # type: ignore[union-attr]  # iter_pub_typed expands bundles
                if not 0 <= no < n:
                    continue
                link = links[no]
                src = link.source
                if deposed(msg.epoch, msg.seq, src.epoch, src.from_seq):  # type: ignore[union-attr]
                    continue
                if type(msg) is PubHeartbeat:
                    self._heartbeat_of(link, msg, now)
                else:
                    key = self._topic(msg)
                    if key in link.stream.topics:
                        items = link.stream.offer(key, msg.tseq, msg.seq, msg, in_order=True, now=now)  # type: ignore
                        if items:
                            deliver(link, items)
                    if msg.seq > link.high:  # type: ignore[union-attr]
                        link.high = msg.seq  # type: ignore[union-attr]
                if link.stream.replay is not None and not link.recovering:
                    self.spawn(self._recover(link))

    def _heartbeat_of(self, link: ShardLink, hb: PubHeartbeat, now: float) -> None:
        if hb.seq < link.high:
            log.warning("shard %s: heartbeat at seq %d, below the %d already seen: the shard started over with "
                        "a new journal; following it from seq 1", link.name, hb.seq, link.high)
            if self.on_restart is not None:
                self.on_restart(link)
            link.stream.restart()
        link.high = hb.seq
        link.stream.heartbeat(hb.seq, {(k + "\x00").encode(): v for k, v in hb.tseqs.items()}, now, run=hb.run,
                              epoch=hb.epoch)

    async def _ingest(self, sub: zmq.asyncio.Socket) -> None:
        raw: zmq.Socket[bytes] = zmq.Socket.shadow(sub.underlying)
        recv = raw.recv_multipart
        while True:
            await self._flowing.wait()
            await sub.poll(timeout=None)
            frames: list[list[bytes]] = []
            while len(frames) < MAX_TURN:
                try:
                    frames.append(recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
            if frames:
                self.turns += 1
                self.ingest(frames)
                self.turn()
            await asyncio.sleep(0)  # let the node's other tasks run between turns

    # ---------------------------------------------------------------- recover

    async def _recover(self, link: ShardLink) -> None:
        # Ask for the replays the shard's stream needs until none is left.
        link.recovering = True
        stream = link.stream
        try:
            while stream.replay is not None and not self.stopped.is_set():
                r = stream.due(time.monotonic())
                if r is None:
                    await asyncio.sleep(0.05)  # asked already: its answer, or its timeout, is on the way
                    continue
                link.replays += 1
                try:
                    replies = await self.ask(link, encode(ReplayRequest(shard=link.no, first=r.first, last=r.last)),
                                             many=True)
                except TimeoutError:
                    log.warning("shard %s: no answer to a replay of seq %d..%d from %s; asking again", link.name,
                                r.first, r.last, link.source.recovery)
                    continue
                delivered = 0
                for rep in replies:
                    if not isinstance(rep, ReplayReply):
                        log.error("shard %s: unexpected answer to a replay: %r", link.name, rep)
                        continue
                    if rep.reason:
                        link.unrecoverable += r.last - r.first + 1
                        if self.on_unavailable is not None:
                            log.error("shard %s: the matcher no longer holds seq %d..%d (%s); taking the shard's "
                                      "state from a snapshot", link.name, r.first, r.last, rep.text)
                            await self.on_unavailable(link)
                        else:
                            items = stream.unavailable(time.monotonic())
                            log.error("shard %s: the matcher no longer holds seq %d..%d (%s): those messages are "
                                      "lost to this node (%d given up so far)", link.name, r.first, r.last, rep.text,
                                      stream.skipped)
                            if items:
                                self.deliver(link, items)
                        break
                    msgs = [m for m in map(decode_pub, rep.msgs) if type(m) is not PubHeartbeat]
                    topics = stream.topics
                    items = stream.replayed(((k, m.tseq, m.seq, m) for m in msgs  # type: ignore[union-attr]
                                             if (k := self._topic(m)) in topics), rep.last, rep.done,
                                            time.monotonic())
                    if items:
                        self.deliver(link, items)
                    delivered += len(items)
                log.info("shard %s: replayed seq %d..%d (%d messages delivered)", link.name, r.first, r.last,
                         delivered)
                self.turn()
        finally:
            link.recovering = False

    async def snapshot(self, link: ShardLink) -> SnapshotReply | None:
        """Ask the shard's matcher for a snapshot of its books until it answers (None: the follower stopped)."""
        while not self.stopped.is_set():
            try:
                (snap,) = await self.ask(link, encode(SnapshotRequest(shard=link.no)), many=False)
            except TimeoutError:
                if not link.warned:
                    log.warning("shard %s: matcher at %s does not answer; retrying", link.name, link.source.recovery)
                    link.warned = True
                await asyncio.sleep(RETRY_S)
                continue
            if isinstance(snap, SnapshotReply):
                return snap
            log.error("shard %s: unexpected answer to a snapshot request: %r", link.name, snap)
            await asyncio.sleep(RETRY_S)
        return None

    async def ask(self, link: ShardLink, body: bytes, *, many: bool) -> list[Any]:
        """Send one request to the shard's recovery socket; return its answer(s); raise TimeoutError.

        A socket whose request timed out is closed, so a late answer is never taken for the next one's.
        """
        if link.sock is None:
            link.sock = self.ctx.socket(zmq.DEALER)
            link.sock.setsockopt(zmq.LINGER, 0)
            connect(link.sock, link.source.recovery, self.keys)
        sock = link.sock
        out: list[Any] = []
        try:
            await sock.send(body)
            while True:
                frames = await asyncio.wait_for(sock.recv_multipart(), REQUEST_TIMEOUT_S)
                msg = decode_internal(frames[-1])
                out.append(msg)
                if not many or not isinstance(msg, ReplayReply) or msg.done:
                    return out
        except TimeoutError:
            sock.close(0)
            link.sock = None
            raise TimeoutError from None

    async def _bootstrap(self, link: ShardLink) -> None:
        # Learn where the shard's topics stand (a snapshot's counters), replay what the followed topics miss
        # since where they start, then follow the live stream.
        snap = await self.snapshot(link)
        if snap is None:
            return
        t0 = time.monotonic()
        if snap.seq < link.high:
            log.warning("shard %s: the matcher is at seq %d, behind the %d this node started from: it started over "
                        "with a new journal; following it from seq 1", link.name, snap.seq, link.high)
            if self.on_restart is not None:
                self.on_restart(link)
            link.stream.restart()
        link.high = max(link.high, snap.seq)
        counters = {k: v for k, v in snapshot_counters(snap).items() if k in link.stream.topics}
        link.stream.heartbeat(snap.seq, counters, t0)  # the topics behind those counters ask for what they miss
        if link.stream.replay is not None and not link.recovering:
            await self._recover(link)
        link.synced = True
        log.info("shard %s: caught up to seq %d in %.2f s", link.name, snap.seq, time.monotonic() - t0)


__all__ = ["MAX_TURN", "REQUEST_TIMEOUT_S", "RESOLVE_S", "RETRY_S", "Follower", "ShardLink", "ShardSource",
           "snapshot_counters"]
