"""Recent state: what brokers and screens read fast, kept beside the books of record.

- each order's current status (an :class:`~fabric.records.OrderRow`), kept while
  it is open and for ``finished_ttl`` seconds after it finished;
- each broker's open orders;
- the last ``TAPE`` trades of each symbol, and its last price (the last trade).

One interface, :class:`RecentState`, two implementations: :class:`MemoryRecent`
(the embedded default, in the persistence node's memory) and
:class:`~fabric.redis_recent.RedisRecent` (a Redis server, written in
pipelines).  The persistence node applies each batch to it *after* the order
store holds the batch, so the order store is always the more complete of the
two: a recent state that lost its data (a Redis restarted empty) is rebuilt
from it (:meth:`RecentState.rebuild`).  ``tests/test_recent.py`` is the
contract both pass.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from fabric.records import Batch, OrderRow, TradeRow

TAPE: Final = 100  # trades kept per symbol
FINISHED_TTL_S: Final = 3600.0  # how long a finished order's status stays after it finished
MAX_FINISHED: Final = 100_000  # finished orders the embedded state keeps at most (its memory: about 1 KB each)


class RecentState(Protocol):
    """The recent state of the exchange (see the module's text)."""

    name: str
    finished_ttl: float  # seconds a finished order's status is kept

    def apply(self, batch: Batch) -> None:
        """Take a written batch: its orders' new status, its trades. Raises fabric.orderstore.StoreError."""

    def lost(self) -> bool:
        """Tell whether the state lost what was applied (a server restarted empty): rebuild it then."""

    def rebuild(self, orders: Iterable[OrderRow], trades: Iterable[TradeRow]) -> None:
        """Replace the whole state by these orders (open and recently finished) and trades (oldest first)."""

    def order(self, broker: str, oid: str) -> OrderRow | None:
        """Return the status of the broker's order, if it is open or finished recently."""

    def open_orders(self, broker: str) -> list[OrderRow]:
        """Return the broker's open orders, oldest first."""

    def last_trades(self, symbol: str, n: int = TAPE) -> list[TradeRow]:
        """Return the symbol's last ``n`` trades (at most :data:`TAPE`), newest first."""

    def last_price(self, symbol: str) -> TradeRow | None:
        """Return the symbol's last trade (its price is the last price), or None."""

    def close(self) -> None:
        """Let go of connections."""


class MemoryRecent:
    """The embedded recent state, in the persistence node's memory.

    Parameters
    ----------
    finished_ttl
        Seconds a finished order's status is kept.
    max_finished
        Finished orders kept at most (the oldest go first): the node's memory stays bounded at any rate.
    clock
        Seconds, monotonic (tests move it).
    """

    name = "embedded"

    def __init__(self, finished_ttl: float = FINISHED_TTL_S, clock: Callable[[], float] = time.monotonic,
                 max_finished: int = MAX_FINISHED) -> None:
        self.finished_ttl = finished_ttl
        self.max_finished = max_finished
        self.clock = clock
        self._orders: dict[tuple[str, str], OrderRow] = {}
        self._open: dict[str, dict[str, None]] = {}  # broker -> oids, in the order they were accepted
        self._expiry: deque[tuple[float, tuple[str, str], int]] = deque()  # (when, key, last_seq that finished it)
        self._tapes: dict[str, deque[TradeRow]] = {}

    def apply(self, batch: Batch) -> None:
        now = self.clock()
        for r in batch.orders:
            key = (r.broker, r.oid)
            had = self._orders.get(key)
            if had is not None and (had.day, had.last_seq) >= (r.day, r.last_seq):
                continue  # an order only moves forward (a later day's order with the same id replaces it)
            self._orders[key] = r
            if r.open:
                self._open.setdefault(r.broker, {})[r.oid] = None
            else:
                self._open.get(r.broker, {}).pop(r.oid, None)
                self._expiry.append((now + self.finished_ttl, key, r.last_seq))
        for t in batch.trades:
            tape = self._tapes.get(t.symbol)
            if tape is None:
                tape = self._tapes[t.symbol] = deque(maxlen=TAPE)
            tape.append(t)
        self._expire(now)

    def _expire(self, now: float) -> None:
        q = self._expiry
        while q and (q[0][0] <= now or len(q) > self.max_finished):
            _, key, seq = q.popleft()
            r = self._orders.get(key)
            if r is not None and r.last_seq == seq:  # (not an order used again since, with the same id, another day)
                del self._orders[key]

    def lost(self) -> bool:
        return False  # memory is lost only with the node, which rebuilds it on start

    def rebuild(self, orders: Iterable[OrderRow], trades: Iterable[TradeRow]) -> None:
        self._orders.clear()
        self._open.clear()
        self._expiry.clear()
        self._tapes.clear()
        self.apply(Batch(orders=list(orders), trades=list(trades)))

    def order(self, broker: str, oid: str) -> OrderRow | None:
        self._expire(self.clock())
        return self._orders.get((broker, oid))

    def open_orders(self, broker: str) -> list[OrderRow]:
        return [self._orders[(broker, oid)] for oid in self._open.get(broker, ())]

    def last_trades(self, symbol: str, n: int = TAPE) -> list[TradeRow]:
        tape = self._tapes.get(symbol, ())
        return list(reversed(tape))[:n]

    def last_price(self, symbol: str) -> TradeRow | None:
        tape = self._tapes.get(symbol)
        return tape[-1] if tape else None

    def close(self) -> None:
        pass


__all__ = ["FINISHED_TTL_S", "MAX_FINISHED", "TAPE", "MemoryRecent", "RecentState"]
