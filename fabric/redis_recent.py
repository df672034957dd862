"""The recent state in a Redis server (:class:`RedisRecent`), beside the order store.

Keys, all under ``{prefix}:``:

- ``order:{broker}:{oid}``: a hash, an order's status: the fields of its
  :class:`~fabric.records.OrderRow`, a field that is None left out.  An open
  order's hash has no expiry; a finished one's expires ``finished_ttl`` after
  it finished.
- ``open:{broker}``: a sorted set, the client order ids of the broker's open
  orders scored by ``created_ts`` (oldest first).
- ``tape:{symbol}``: a list, the symbol's last ``TAPE`` trades, newest first,
  each a :class:`~fabric.records.TradeRow` in msgpack.
- ``last:{symbol}``: the symbol's last trade (msgpack).
- ``marker``: set by :meth:`RedisRecent.rebuild` only; a Redis that restarted
  empty or was flushed lacks it, which is how :meth:`RedisRecent.lost` tells (an
  apply that set it would make a Redis emptied between two batches look whole).

A batch is written by one call of a Lua script (atomic in Redis) per :data:`CHUNK`
orders: an order's hash is replaced only by a row of a later day, or of the same
day and a ``last_seq`` at least as large, so a row only moves forward.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final, cast
from urllib.parse import urlsplit, urlunsplit

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fabric.orderstore import StoreError
from fabric.recent import FINISHED_TTL_S, TAPE
from fabric.records import Batch, OrderRow, TradeRow

CHUNK: Final = 500  # orders per script call (a call holds Redis while it runs)
SCAN_COUNT: Final = 1000  # keys per SCAN step and per UNLINK of a rebuild

_FIELDS: Final = tuple(OrderRow.__struct_fields__)

# KEYS: per order its hash and its broker's open set, then per symbol its tape and last trade.
# ARGV: ttl (ms), tape length, number of orders; per order: day, last_seq, open ("1" or ""), created_ts, oid,
# number of fields, fields and values; per symbol: number of trades, the trades oldest first.
_APPLY: Final = """
local ttl, tape, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a = 4
for i = 1, n do
    local key, open = KEYS[2 * i - 1], KEYS[2 * i]
    local day, seq, nf = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 5])
    local old = redis.call('HMGET', key, 'day', 'last_seq')
    if not old[1] or day > old[1] or (day == old[1] and seq >= tonumber(old[2])) then
        redis.call('DEL', key)
        redis.call('HSET', key, unpack(ARGV, a + 6, a + 5 + 2 * nf))
        if ARGV[a + 2] == '1' then
            redis.call('ZADD', open, ARGV[a + 3], ARGV[a + 4])
        else
            redis.call('ZREM', open, ARGV[a + 4])
            redis.call('PEXPIRE', key, ttl)
        end
    end
    a = a + 6 + 2 * nf
end
for i = 2 * n + 1, #KEYS, 2 do
    local k = tonumber(ARGV[a])
    redis.call('LPUSH', KEYS[i], unpack(ARGV, a + 1, a + k))
    redis.call('LTRIM', KEYS[i], 0, tape - 1)
    redis.call('SET', KEYS[i + 1], ARGV[a + k])
    a = a + 1 + k
end
"""

_encode = msgspec.msgpack.Encoder().encode
_decode_trade = msgspec.msgpack.Decoder(TradeRow).decode


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        user = user.partition(":")[0]
        netloc = f"{user}@{host}" if user else host
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("password="))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _order(h: dict[bytes, bytes]) -> OrderRow:
    return msgspec.convert({k.decode(): v.decode() for k, v in h.items()}, OrderRow, strict=False)


class RedisRecent:
    """The recent state in a Redis server (the layout is in the module's text).

    Every method raises :class:`~fabric.orderstore.StoreError` when Redis fails (down,
    read-only, out of memory), its text naming the server and what was being done;
    a call is not retried (the persistence node retries, or rebuilds).  Answers are
    bytes (the client does not decode them).

    Parameters
    ----------
    url
        ``redis://[[user]:password@]host:port/db`` (``rediss://`` and ``unix://`` too).
    prefix
        The first part of every key.
    finished_ttl
        Seconds a finished order's status is kept.
    socket_timeout
        Seconds to wait for the server to connect and for each answer.
    """

    def __init__(self, url: str, *, prefix: str = "exfab", finished_ttl: float = FINISHED_TTL_S,
                 socket_timeout: float = 1.0) -> None:
        self.url = _without_password(url)
        self.name = f"redis:{self.url}"
        self.prefix = prefix
        self.finished_ttl = finished_ttl
        try:
            self._redis = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                               socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 0))
        except ValueError as e:
            raise StoreError(f"{self.url}: bad Redis url: {e}") from e
        self._apply = self._redis.register_script(_APPLY)
        self._marker = f"{prefix}:marker"

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, OSError, msgspec.MsgspecError) as e:  # (the last: a value that is not ours)
            raise StoreError(f"{self.url}: {what}: {e}") from e

    def _order_key(self, broker: str, oid: str) -> str:
        return f"{self.prefix}:order:{broker}:{oid}"

    def _calls(self, orders: list[OrderRow], trades: list[TradeRow]) -> Iterator[tuple[list[str], list[Any]]]:
        """Yield the keys and arguments of each script call writing these rows."""
        tapes: dict[str, list[TradeRow]] = {}
        for t in trades:
            tapes.setdefault(t.symbol, []).append(t)
        ttl_ms = max(0, round(self.finished_ttl * 1000))
        for start in range(0, max(len(orders), 1), CHUNK):
            part = orders[start:start + CHUNK]
            keys: list[str] = []
            args: list[Any] = [ttl_ms, TAPE, len(part)]
            for r in part:
                fields = [(f, v) for f in _FIELDS if (v := getattr(r, f)) is not None]
                keys += [self._order_key(r.broker, r.oid), f"{self.prefix}:open:{r.broker}"]
                args += [r.day, r.last_seq, "1" if r.open else "", r.created_ts, r.oid, len(fields)]
                args += [x for pair in fields for x in pair]
            if start + CHUNK >= len(orders):
                for symbol, tape in tapes.items():
                    keys += [f"{self.prefix}:tape:{symbol}", f"{self.prefix}:last:{symbol}"]
                    args += [min(len(tape), TAPE), *(_encode(t) for t in tape[-TAPE:])]
            yield keys, args

    def _write(self, orders: list[OrderRow], trades: list[TradeRow]) -> None:
        for keys, args in self._calls(orders, trades):
            self._apply(keys=keys, args=args)

    def apply(self, batch: Batch) -> None:
        """Write the batch's orders and trades (see :class:`~fabric.recent.RecentState`)."""
        if batch.orders or batch.trades:
            with self._calling("apply"):
                self._write(batch.orders, batch.trades)

    def lost(self) -> bool:
        """Tell whether the marker :meth:`rebuild` sets is missing (Redis restarted empty, or was flushed)."""
        with self._calling("lost"):
            return not self._redis.exists(self._marker)

    def rebuild(self, orders: Iterable[OrderRow], trades: Iterable[TradeRow]) -> None:
        """Delete every key of the prefix, write these orders and trades (oldest first), then set the marker."""
        order_rows, trade_rows = list(orders), list(trades)
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + ":*"
        with self._calling("rebuild"):
            self._redis.unlink(self._marker)  # first: a rebuild cut short leaves the state lost
            keys: list[bytes] = []
            for key in self._redis.scan_iter(match=pattern, count=SCAN_COUNT):
                keys.append(key)
                if len(keys) >= SCAN_COUNT:
                    self._redis.unlink(*keys)
                    keys.clear()
            if keys:
                self._redis.unlink(*keys)
            self._write(order_rows, trade_rows)
            self._redis.set(self._marker, time.time_ns())

    def order(self, broker: str, oid: str) -> OrderRow | None:
        with self._calling("order"):
            h = cast("dict[bytes, bytes]", self._redis.hgetall(self._order_key(broker, oid)))
            return _order(h) if h else None

    def open_orders(self, broker: str) -> list[OrderRow]:
        with self._calling("open orders"):
            oids = cast("list[bytes]", self._redis.zrange(f"{self.prefix}:open:{broker}", 0, -1))
            if not oids:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for oid in oids:
                pipe.hgetall(self._order_key(broker, oid.decode()))
            rows = [_order(h) for h in pipe.execute() if h]
        return [r for r in rows if r.open]  # (an order that finished between the two reads)

    def last_trades(self, symbol: str, n: int = TAPE) -> list[TradeRow]:
        if n <= 0:
            return []
        with self._calling("last trades"):
            blobs = cast("list[bytes]", self._redis.lrange(f"{self.prefix}:tape:{symbol}", 0, min(n, TAPE) - 1))
            return [_decode_trade(b) for b in blobs]

    def last_price(self, symbol: str) -> TradeRow | None:
        with self._calling("last price"):
            blob = cast("bytes | None", self._redis.get(f"{self.prefix}:last:{symbol}"))
            return _decode_trade(blob) if blob is not None else None

    def close(self) -> None:
        with self._calling("close"):
            self._redis.close()


__all__ = ["CHUNK", "SCAN_COUNT", "RedisRecent"]
