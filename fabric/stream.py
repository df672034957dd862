"""Following a matcher's sequenced stream: each topic's messages once, in ``tseq`` order, whatever the path.

A subscriber of a shard's PUB stream (``docs/protocol.md``, sections 8 and 9)
gets messages from more than one place: the PUB socket, replies that carry a
command's execution reports (the gateway's short path), and replays of ranges
it lost.  These race each other over separate connections, so the order of
arrival is not the shard's order.  :class:`ShardStream` puts them back in
order, per topic, by ``tseq``:

- a message whose ``tseq`` is the topic's next is delivered, with whatever was
  held behind it;
- one from further on is held; if it came from the PUB socket, which is in
  order, the messages before it were lost: a replay of the ``seq`` range
  between the last delivered and it is asked for;
- one at or below the last delivered is a duplicate, and is dropped;
- a heartbeat whose ``tseqs`` name a topic's last ``tseq`` beyond what was
  delivered reveals a lost tail: a replay up to the heartbeat's ``seq``;
- a replay that is not answered in time is asked for again; one the matcher
  cannot serve (``replay_unavailable``) makes the topic start again from what
  it holds, and says what was skipped;
- a heartbeat behind what was delivered means the matcher restarted with a
  journal that lost its last records: the topic follows it from there, and
  the log says so (its next messages reuse numbers already seen).

It does no I/O: the node feeds it what arrives and sends the replay requests
it returns (the ZeroMQ Guide's reliability patterns, as a state machine).

A stream without a replay service (``replays=False``: the ticker's market-data
feed, which :class:`~fabric.marketdata.MarketDataClient` follows with the
Guide's Clone pattern) recovers by snapshot instead: a loss makes the topic
*wait*, holding what comes, and puts it in :attr:`ShardStream.holes`; the
caller takes the topic's state from a snapshot and calls
:meth:`ShardStream.jump`, which drops what the snapshot has and delivers the
rest.  :meth:`ShardStream.hold` makes a topic wait from the outside (before
its first snapshot, or when the caller knows its numbers no longer hold).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger("exfab.stream")

T = TypeVar("T")

REPLAY_TIMEOUT_S = 2.0  # a replay request unanswered this long is sent again (the matcher may have restarted)


@dataclass(slots=True)
class _Topic(Generic[T]):
    next: int = 0  # the next tseq to deliver; 0 until the topic's first message sets where it starts
    seq: int = 0  # seq of the last message delivered
    held: dict[int, tuple[int, T]] = field(default_factory=dict)  # tseq -> (seq, item), ahead of `next`
    waiting: bool = False  # everything is held until a jump says where the topic stands (recovery by snapshot)


@dataclass(slots=True)
class Replay:
    """A replay the subscriber needs: the shard's messages ``first`` .. ``last`` (``seq``, inclusive)."""

    first: int
    last: int
    sent: float | None = None  # when it was last asked for (None: not yet)


class ShardStream(Generic[T]):
    """One shard's topics, each delivered in ``tseq`` order, once.

    Parameters
    ----------
    shard
        The shard's number, for the log.
    replays
        Whether lost messages can be asked for again (a matcher's replay service). Without one
        (``False``), a loss makes the topic wait for a snapshot instead: see :attr:`holes`.
    hold_max
        At most this many messages held per topic, the oldest held dropped beyond (``None``: no
        limit). A dropped message the caller still needs shows as a hole after the next :meth:`jump`.

    Attributes
    ----------
    holes
        (``replays=False``) The topics that lost messages and wait for a :meth:`jump` from a snapshot,
        holding what comes meanwhile; :meth:`jump` and :meth:`hold` take a topic out.
    """

    def __init__(self, shard: int, *, replays: bool = True, hold_max: int | None = None) -> None:
        if hold_max is not None and hold_max < 1:
            raise ValueError("hold_max must be at least 1")
        self.shard = shard
        self.replays = replays
        self.hold_max = hold_max
        self.topics: dict[bytes, _Topic[T]] = {}
        self.replay: Replay | None = None  # the replay outstanding
        self.holes: set[bytes] = set()
        self.skipped = 0  # messages lost for good: a replay the matcher could not serve
        self.rewinds = 0  # times the shard came back behind what was delivered (a journal that lost its end)
        self.duplicates = 0  # messages dropped: delivered already, through another road
        self.gaps = 0  # losses the ordered road or a heartbeat showed (or, without replays, a jump left behind)
        self.stale = 0  # heartbeats behind what was delivered, sent before it (see heartbeat)
        self.run: int | None = None  # the run of the matcher the last heartbeat came from

    def _topic(self, topic: bytes) -> _Topic[T]:
        t = self.topics.get(topic)
        if t is None:
            t = self.topics[topic] = _Topic()
        return t

    def follow(self, topic: bytes) -> None:
        """Follow ``topic``: from now on heartbeats tell where it stands, before any of its messages came."""
        self._topic(topic)

    def delivered(self, topic: bytes) -> int:
        """Return the ``tseq`` of the topic's last delivered message (0: none yet)."""
        t = self.topics.get(topic)
        return 0 if t is None or not t.next else t.next - 1

    def started(self, topic: bytes) -> bool:
        """Tell whether the topic has a starting point (a first message, or :meth:`start`)."""
        t = self.topics.get(topic)
        return t is not None and t.next > 0

    def waiting(self, topic: bytes) -> bool:
        """Tell whether the topic holds everything that comes until a :meth:`jump` (see :meth:`hold`, :attr:`holes`)."""
        t = self.topics.get(topic)
        return t is not None and t.waiting

    def hold(self, topic: bytes) -> None:
        """Make the topic wait for a :meth:`jump`: what it holds is dropped, and what comes is held.

        For a caller that will take the topic's state from a snapshot: before its first one, or
        when the topic's numbers no longer hold (the publisher started over). What was held
        came before the snapshot is asked for, so the snapshot has it. The next :meth:`jump`
        sets where the topic stands, behind what was delivered or not.
        """
        t = self._topic(topic)
        t.waiting = True
        t.held.clear()
        self.holes.discard(topic)  # the caller knows: it is asking for the snapshot

    def start(self, topic: bytes, tseq: int, seq: int) -> None:
        """Start a topic that has none yet after message (``tseq``, ``seq``): nothing before it is wanted."""
        t = self._topic(topic)
        if not t.next:
            t.next, t.seq = tseq + 1, seq

    def offer(self, topic: bytes, tseq: int, seq: int, item: T, *, in_order: bool, now: float) -> list[T]:
        """Take one message of ``topic``; return the messages now deliverable, in order.

        ``in_order`` says the message came from a source that keeps the topic's order (the PUB socket, a
        replay): one from further on than expected then means messages were lost, and a replay is
        started (see :attr:`replay`). A message from elsewhere (a command's reply) is held until the
        stream catches up.

        A topic that waits (:meth:`waiting`) holds every message, whatever its ``tseq``, until
        :meth:`jump`; without replays, a loss on an ordered source makes the topic wait (:attr:`holes`).
        """
        t = self._topic(topic)
        if t.waiting:
            # Where the topic stands is for the snapshot to say: nothing can be delivered or called
            # a gap until then. A tseq held already is a duplicate (the topic's order is not known yet).
            if tseq in t.held:
                self.duplicates += 1
            else:
                self._keep(t, tseq, seq, item)
            return []
        if not t.next:
            t.next = tseq  # the first message sets the start: a subscriber wants what comes after it joined
        if tseq < t.next:
            self.duplicates += 1
            return []  # delivered already, through another path
        if tseq > t.next:
            self._keep(t, tseq, seq, item)
            if in_order:
                self.gaps += 1
                self._lost(topic, t, t.seq + 1, seq - 1, now)
            return []
        t.next, t.seq = tseq + 1, seq
        if not t.held:
            return [item]
        return [item, *self._drain(t)]

    def heartbeat(self, seq: int, tseqs: dict[bytes, int], now: float, *, run: int | None = None,
                  epoch: int = 0) -> None:
        """Take the shard's heartbeat: its last ``seq`` and the last ``tseq`` of every topic (by topic frame).

        ``run`` and ``epoch`` are the heartbeat's (``docs/protocol.md``, section 8); ``run`` None is for counters
        that are not a heartbeat's (a snapshot's), taken as they come. A heartbeat behind what was delivered is
        one of two things. Within one run of the matcher, it was sent before messages that came faster by
        another road (a command's reply): nothing to do. From a new run of a single matcher (epoch 0), the
        matcher restarted having lost the end of its journal: the topic follows it from there. A pair's new
        primary holds everything its predecessor published, so for a pair it is always the first kind.
        """
        new_run = run is None or (self.run is not None and run != self.run)
        if run is not None:
            self.run = run
        for topic, last in tseqs.items():
            t = self.topics.get(topic)
            if t is None or t.waiting:
                continue  # (a waiting topic stands where its snapshot will say)
            if not t.next:
                t.next, t.seq = last + 1, seq  # nothing came yet: start after what was published before us
            elif last < t.next - 1:
                if not new_run or epoch:
                    self.stale += 1  # sent before what was delivered, which came by a faster road
                    continue
                # The shard publishes again from behind what we delivered: it restarted having lost the end of
                # its journal. Its next messages reuse numbers we have seen; take them as new, not duplicates.
                log.error("shard %d: %r is back at tseq %d (seq %d) after %d was delivered: the matcher restarted "
                          "behind its subscribers (its journal lost its last records); following it from there",
                          self.shard, topic, last, seq, t.next - 1)
                self.rewinds += 1
                t.next, t.seq = last + 1, seq
                t.held.clear()
                self.replay = None
            elif last >= t.next:
                self.gaps += 1
                log.warning("shard %d: %r published up to tseq %d, delivered %d: asking for seq %d..%d", self.shard,
                            topic, last, t.next - 1, t.seq + 1, seq)
                self._lost(topic, t, t.seq + 1, seq, now)

    def _keep(self, t: _Topic[T], tseq: int, seq: int, item: T) -> None:
        if self.hold_max is not None and len(t.held) >= self.hold_max and tseq not in t.held:
            del t.held[next(iter(t.held))]  # the oldest held (dicts keep insertion order): bounded memory
        t.held[tseq] = (seq, item)

    def _lost(self, topic: bytes, t: _Topic[T], first: int, last: int, now: float) -> None:
        """Messages ``first`` .. ``last`` (``seq``) of ``topic`` were lost: ask a replay, or wait for a snapshot."""
        if self.replays:
            self._ask(first, last, now)
        else:
            t.waiting = True
            self.holes.add(topic)

    def _ask(self, first: int, last: int, now: float) -> None:
        if self.replay is None and first <= last:
            self.replay = Replay(first, last)

    def due(self, now: float) -> Replay | None:
        """Return the replay to ask for now (new, or unanswered for too long), marking it sent; else ``None``."""
        r = self.replay
        if r is None or (r.sent is not None and now - r.sent < REPLAY_TIMEOUT_S):
            return None
        if r.sent is not None:
            log.warning("shard %d: no answer to replay %d..%d; asking again", self.shard, r.first, r.last)
        r.sent = now
        return r

    def replayed(self, topic_items: Iterable[tuple[bytes, int, int, T]], last: int, done: bool,
                 now: float) -> list[T]:
        """Take one part of a replay: its messages of our topics as (topic, tseq, seq, item), up to ``seq`` ``last``.

        Returns what is now deliverable, in order.
        """
        out: list[T] = []
        for topic, tseq, seq, item in topic_items:
            if topic in self.topics:
                out.extend(self.offer(topic, tseq, seq, item, in_order=True, now=now))
        if done:
            self.replay = None
            # A hole that remains (the replay ended before it) is asked for again.
            for topic, t in self.topics.items():
                if t.held and not t.waiting:
                    self._lost(topic, t, t.seq + 1, min(s for s, _ in t.held.values()) - 1, now)
        return out

    def jump(self, topic: bytes, tseq: int, seq: int) -> list[T]:
        """Move a topic past message (``tseq``, ``seq``), whose state came another way (a snapshot).

        What is held up to it is dropped; returns what is now deliverable after it. A topic that
        waited (:meth:`hold`, :attr:`holes`) stands at the snapshot's ``tseq`` from now on even behind
        what it delivered before (the snapshot is of the publisher as it is now); one that did not
        only moves forward. Without replays, messages still held after the jump are beyond a lost one
        (the snapshot is older than the loss, or :attr:`hold_max` dropped some): the topic waits
        again, in :attr:`holes`.
        """
        t = self._topic(topic)
        if t.waiting:
            t.waiting = False
            self.holes.discard(topic)
            t.next, t.seq = tseq + 1, seq
        elif tseq + 1 > t.next:
            t.next, t.seq = tseq + 1, seq
        for k in [k for k in t.held if k < t.next]:
            del t.held[k]
        out = self._drain(t)
        if t.held and not self.replays:
            self.gaps += 1
            t.waiting = True
            self.holes.add(topic)
        return out

    def restart(self) -> None:
        """Forget where every topic stood: the shard started over (a new journal), from ``seq`` 1 again."""
        for t in self.topics.values():
            t.next, t.seq = 1, 0
            t.held.clear()
        self.replay = None

    def unavailable(self, now: float) -> list[T]:
        """Take the matcher's answer that it no longer holds the replay: start every topic again from what it holds.

        Returns what is now deliverable; :attr:`skipped` counts the messages given up.
        """
        self.replay = None
        out: list[T] = []
        for t in self.topics.values():
            if t.held:
                first = min(t.held)
                self.skipped += first - t.next
                t.next = first
                out.extend(self._drain(t))
        return out

    @staticmethod
    def _drain(t: _Topic[T]) -> list[T]:
        out: list[T] = []
        while t.next in t.held:
            t.seq, it = t.held.pop(t.next)
            out.append(it)
            t.next += 1
        return out


def deposed(epoch: int, seq: int, current_epoch: int, from_seq: int) -> bool:
    """Tell whether message (``epoch``, ``seq``) is a deposed primary's, given the current reign of its shard.

    A pair's new primary publishes from ``from_seq`` on at ``current_epoch``; below ``from_seq`` both primaries
    published the same records, so a message of an older epoch counts only there (``docs/protocol.md``, section 9).
    """
    return epoch < current_epoch and seq >= from_seq


__all__ = ["REPLAY_TIMEOUT_S", "Replay", "ShardStream", "deposed"]
