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
    """

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.topics: dict[bytes, _Topic[T]] = {}
        self.replay: Replay | None = None  # the replay outstanding
        self.skipped = 0  # messages lost for good: a replay the matcher could not serve
        self.rewinds = 0  # times the shard came back behind what was delivered (a journal that lost its end)
        self.duplicates = 0  # messages dropped: delivered already, through another road
        self.gaps = 0  # losses the ordered road or a heartbeat showed

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
        """
        t = self._topic(topic)
        if not t.next:
            t.next = tseq  # the first message sets the start: a subscriber wants what comes after it joined
        if tseq < t.next:
            self.duplicates += 1
            return []  # delivered already, through another path
        if tseq > t.next:
            t.held[tseq] = (seq, item)
            if in_order:
                self.gaps += 1
                self._ask(t.seq + 1, seq - 1, now)
            return []
        t.next, t.seq = tseq + 1, seq
        if not t.held:
            return [item]
        return [item, *self._drain(t)]

    def heartbeat(self, seq: int, tseqs: dict[bytes, int], now: float) -> None:
        """Take the shard's heartbeat: its last ``seq`` and the last ``tseq`` of every topic (by topic frame)."""
        for topic, last in tseqs.items():
            t = self.topics.get(topic)
            if t is None:
                continue
            if not t.next:
                t.next, t.seq = last + 1, seq  # nothing came yet: start after what was published before us
            elif last < t.next - 1:
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
                self._ask(t.seq + 1, seq, now)

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
            for t in self.topics.values():
                if t.held:
                    self._ask(t.seq + 1, min(s for s, _ in t.held.values()) - 1, now)
        return out

    def jump(self, topic: bytes, tseq: int, seq: int) -> list[T]:
        """Move a topic past message (``tseq``, ``seq``), whose state came another way (a snapshot).

        What is held up to it is dropped; returns what is now deliverable after it.
        """
        t = self._topic(topic)
        if tseq + 1 > t.next:
            t.next, t.seq = tseq + 1, seq
        for k in [k for k in t.held if k < t.next]:
            del t.held[k]
        return self._drain(t)

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


__all__ = ["REPLAY_TIMEOUT_S", "Replay", "ShardStream"]
