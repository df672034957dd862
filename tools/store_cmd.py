"""``exfab trades``, ``exfab order-status`` and ``exfab store init``: the books of record from the command line.

They read the stores the topology names (``[stores]``), as the persistence
node writes them: the order store (SQLite or Cassandra) always, and for an
order's status the recent state first when it is Redis (the embedded recent
state lives in the node's memory, out of a command's reach).

Exit status: 0; 1 when ``order-status`` finds no such order; 2 for a usage
error (a bad date or symbol, an unreadable topology); 3 when the store cannot
be read.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import IO

import msgspec

from fabric.orderstore import StoreError
from fabric.protocol import decode_pub
from fabric.records import OrderRow, trading_day
from topology.load import TopologyError, load
from topology.model import Topology
from topology.stores import open_order_store, open_recent

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNREADABLE = 3


def _topology(path: str, err: IO[str]) -> Topology | None:
    try:
        return load(path)
    except (OSError, TopologyError) as e:
        err.write(f"exfab: {e}\n")
        return None


def _store_missing(topo: Topology, err: IO[str]) -> bool:
    """Say so and return True when the topology's SQLite order store is not there (data_dir is relative to the cwd)."""
    if topo.stores.orders != "sqlite":
        return False
    path = topo.sqlite_path("orders")
    if path.exists():
        return False
    where = "" if path.is_absolute() else f" (data_dir is relative to the current directory, {Path.cwd()})"
    err.write(f"exfab: cannot read the order store: no file {path}{where}: run in the directory the nodes run in, "
              "or create it with exfab store init\n")
    return True


def _day(date: str | None, topo: Topology, err: IO[str]) -> str | None:
    if date is None:
        return trading_day(time.time_ns(), topo.timezone)
    try:
        return dt.date.fromisoformat(date).isoformat()
    except ValueError:
        err.write(f"exfab: --date {date!r} is not a date (YYYY-MM-DD)\n")
        return None


def trades(topology: str, *, symbol: str | None = None, date: str | None = None, as_json: bool = False,
           out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Print the trades of a trading day (default today, in the exchange's time zone), of one symbol or all."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    topo = _topology(topology, err)
    if topo is None:
        return EXIT_USAGE
    day = _day(date, topo, err)
    if day is None:
        return EXIT_USAGE
    if symbol is not None and symbol not in topo.symbols:
        err.write(f"exfab: unknown symbol {symbol!r}; the topology lists {', '.join(sorted(topo.symbols))}\n")
        return EXIT_USAGE
    if _store_missing(topo, err):
        return EXIT_UNREADABLE
    try:
        store = open_order_store(topo, readonly=True)
        try:
            rows = [t for sym in ([symbol] if symbol else sorted(topo.symbols)) for t in store.trades(sym, day)]
        finally:
            store.close()
    except StoreError as e:
        err.write(f"exfab: cannot read the order store: {e}\n")
        return EXIT_UNREADABLE
    if as_json:
        for t in rows:
            out.write(json.dumps(t.to_json()) + "\n")
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trades of {day} ({symbol or 'every symbol'}): {len(rows):,}", title_justify="left")
    for col, just in (("symbol", "left"), ("trade", "right"), ("price", "right"), ("qty", "right"),
                      ("aggressor", "left"), ("buyer", "left"), ("seller", "left"), ("time", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    tz = _tz(topo)
    for t in rows:
        when = dt.datetime.fromtimestamp(t.ts / 1e9, tz).strftime("%H:%M:%S.%f")
        table.add_row(t.symbol, str(t.trade_id), t.price, f"{t.qty:,}", t.aggressor, f"{t.buy_broker} {t.buy_oid}",
                      f"{t.sell_broker} {t.sell_oid}", when)
    Console(file=out, width=160).print(table)
    return EXIT_OK


def _tz(topo: Topology) -> dt.tzinfo:
    from zoneinfo import ZoneInfo

    return ZoneInfo(topo.timezone)


def order_status(topology: str, oid: str, *, broker: str, date: str | None = None, as_json: bool = False,
                 out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Print a broker's order as the stores hold it: its state, and (from the order store) every report of its life."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    topo = _topology(topology, err)
    if topo is None:
        return EXIT_USAGE
    day = None if date is None else _day(date, topo, err)
    if date is not None and day is None:
        return EXIT_USAGE
    row: OrderRow | None = None
    source = ""
    if topo.stores.recent == "redis" and day is None:
        try:
            recent = open_recent(topo)
            try:
                row = recent.order(broker, oid)
                source = recent.name
            finally:
                recent.close()
        except StoreError as e:
            err.write(f"exfab: {e}; reading the order store\n")
    if row is None and _store_missing(topo, err):
        return EXIT_UNREADABLE
    try:
        store = open_order_store(topo, readonly=True)
        try:
            stored = store.order(broker, oid, day)
            if row is None:
                row, source = stored, store.name
            events = store.events(broker, oid, row.day) if row is not None else []
        finally:
            store.close()
    except StoreError as e:
        if row is None:
            err.write(f"exfab: cannot read the order store: {e}\n")
            return EXIT_UNREADABLE
        err.write(f"exfab: the order's life is in the order store, which cannot be read: {e}\n")
        events = []
    if row is None:
        err.write(f"exfab: broker {broker} has no order {oid}" + (f" on {day}" if day else "") + " in the stores\n")
        return EXIT_NOT_FOUND
    life = [decode_pub(e.body) for e in events]
    if as_json:
        obj = {**row.to_json(), "source": source,
               "events": [{"event": e.kind, **{k: v for k, v in msgspec.structs.asdict(m).items() if k != "v"}}
                          for e, m in zip(events, life, strict=True)]}
        out.write(json.dumps(obj) + "\n")
        return EXIT_OK
    price = row.price or "market"
    out.write(f"order {row.oid} of {row.broker}, {row.day} (shard {topo.shards[row.shard].name}; from {source})\n"
              f"  {row.side or ''} {row.qty:,} {row.symbol} @ {price} {row.tif or ''}\n"
              f"  state {row.state}" + (f" ({row.reason})" if row.reason else "")
              + f"; filled {row.cum_qty:,}, leaves {row.leaves_qty:,}"
              + (f", average price {row.avg_px}" if row.avg_px else "") + "\n")
    tz = _tz(topo)
    for ev, m in zip(events, life, strict=True):
        when = dt.datetime.fromtimestamp(ev.ts / 1e9, tz).strftime("%H:%M:%S.%f")
        fields = {k: v for k, v in msgspec.structs.asdict(m).items()
                  if k not in ("v", "shard", "tseq", "epoch", "ts", "broker", "oid", "symbol")}
        out.write(f"  {when}  {ev.kind:<9} " + " ".join(f"{k}={v}" for k, v in fields.items()) + "\n")
    return EXIT_OK


def store_init(topology: str, *, replication: str | None = None, out: IO[str] | None = None,
               err: IO[str] | None = None) -> int:
    """Create the order store's tables (SQLite file, or Cassandra keyspace and tables); safe to run again."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    topo = _topology(topology, err)
    if topo is None:
        return EXIT_USAGE
    try:
        if topo.stores.orders == "cassandra":
            from fabric.cassandra_store import init_schema

            assert topo.cassandra is not None  # (the loader requires [cassandra] for it)
            kwargs = {"replication": replication} if replication else {}
            init_schema(topo.cassandra.hosts, topo.cassandra.keyspace, port=topo.cassandra.port, **kwargs)
            out.write(f"cassandra keyspace {topo.cassandra.keyspace} and its tables are ready\n")
        else:
            store = open_order_store(topo)
            store.close()
            out.write(f"{store.name}: tables ready\n")
    except StoreError as e:
        err.write(f"exfab: {e}\n")
        return EXIT_UNREADABLE
    return EXIT_OK


__all__ = ["EXIT_NOT_FOUND", "EXIT_OK", "EXIT_UNREADABLE", "EXIT_USAGE", "order_status", "store_init", "trades"]
