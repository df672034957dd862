"""Which of several redundant nodes does a job that must be done once: the first of them that is alive.

Two tickers (A and B feeds) follow the same matchers and hold the same market, but the price history
is to be written once.  The nodes are ranked (the topology's order), and a node does the job while
every node ranked before it is *silent*: nothing heard from it (a ticker's feed sends a heartbeat
every second) for ``silence`` seconds.  So the first ticker writes; the second writes while the first
is down, and stops when it hears it again.

Being silent is not being dead (a node cut off from this one by the network still runs): then both do
the job for a while, which suits a job that is idempotent, as writing history is (every store upserts
by key).  A node that starts takes the nodes before it as alive until ``silence`` has passed, so that
it does not start doing the job in the second before it first hears them.

This is the state machine alone, without I/O (the ZeroMQ Guide's Binary Star keeps its fail-over
machine apart from the server in the same way): the node tells it what it hears and asks whether it
is active.

Examples
--------
>>> s = Standby(["ticker"], silence=3.0, now=0.0)
>>> s.active(1.0), s.active(3.5)
(False, True)
>>> s.heard("ticker", 4.0)
>>> s.active(4.5)
False
>>> Standby([], silence=3.0, now=0.0).active(0.0)   # the first node: always active
True
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Standby"]


class Standby:
    """The standing of one node among ranked redundant ones (see the module's text).

    Parameters
    ----------
    ahead
        The names of the nodes ranked before this one (empty: this one is the first, always active).
    silence
        Seconds without hearing a node after which it counts as gone.
    now
        The time now (any monotonic clock, in seconds): the nodes ahead count as heard now.
    """

    def __init__(self, ahead: Sequence[str], silence: float, now: float) -> None:
        if silence <= 0:
            raise ValueError(f"silence must be positive, got {silence}")
        self.silence = silence
        self.last: dict[str, float] = dict.fromkeys(ahead, now)

    def heard(self, name: str, now: float) -> None:
        """Record that node ``name`` (one of those ahead) was heard at ``now``; other names are ignored."""
        if name in self.last:
            self.last[name] = max(self.last[name], now)

    def silent(self, now: float) -> list[str]:
        """Return the nodes ahead not heard for more than ``silence`` seconds, in rank order."""
        return [n for n, t in self.last.items() if now - t > self.silence]

    def active(self, now: float) -> bool:
        """Return whether this node does the job now: every node ahead of it is silent."""
        return all(now - t > self.silence for t in self.last.values())
