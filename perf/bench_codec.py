"""Codec benchmark: msgspec against plain msgpack on the gateway's hot path.

What a gateway does for every order and every fill:

- decode + validate a ``new`` order from the bytes a broker sent (bytes in, a
  typed :class:`fabric.protocol.New` out, or a ``ProtocolError``);
- encode a ``fill`` for the broker (a :class:`fabric.protocol.Fill` in, bytes out);

and, for orientation, what a flood of broken orders costs (a ``new`` whose
price is a float, refused with ``bad_field``).

Each path runs through:

``msgspec``
    THE codec: :func:`fabric.protocol.decode_client`, :func:`fabric.protocol.encode`
    (a msgspec Decoder of the tagged union of Structs; on a refusal, the plain
    decoder names the reason).
``plain``
    :func:`fabric.protocol.decode_client_plain`, :func:`fabric.protocol.encode_plain`:
    ``msgpack.unpackb`` / ``packb`` and hand-written checks compiled from the
    message classes, giving the same messages and the same errors.
``plain-inlined``
    The best a hand-written codec can do for these two messages: every check of
    a ``new`` written out inline, a ``fill`` packed from a dict literal
    (defined here, and checked against the codec before timing).

Every figure is the best of ``--repeat`` runs over ``--n`` distinct messages.

Usage::

    python perf/bench_codec.py              # readable table
    python perf/bench_codec.py --json       # one JSON object
    python perf/bench_codec.py --n 50000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import msgspec

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from fabric.protocol import (  # noqa: E402
    MAX_CLIENT_MESSAGE,
    MAX_OID_LEN,
    MAX_SYMBOL_LEN,
    PRICE_PATTERN,
    Fill,
    New,
    ProtocolError,
    decode_client,
    decode_client_plain,
    encode,
    encode_plain,
)

# --------------------------------------------------------------------------
# The hand-inlined plain codec of the two hot messages.
# --------------------------------------------------------------------------
_price_ok = re.compile(PRICE_PATTERN).search
_NEW_KEYS = frozenset({"t", "v", "oid", "symbol", "side", "type", "price", "qty", "tif"})
_SIDES = frozenset({"buy", "sell"})
_TYPES = frozenset({"limit", "market"})
_TIFS = frozenset({"GTC", "DAY", "IOC", "FOK"})


def _bad(name: str, what: str) -> ProtocolError:
    return ProtocolError("bad_field", f"field '{name}' must be {what}", name)


def decode_new_inlined(data: bytes) -> New:
    """Decode and validate a ``new`` with every check written out (raise ProtocolError)."""
    if len(data) > MAX_CLIENT_MESSAGE:
        raise ProtocolError("message_too_large", f"message is {len(data)} bytes")
    try:
        d = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError("malformed", str(exc)) from None
    if type(d) is not dict:
        raise ProtocolError("malformed", "a message must be a map")
    for k in d:
        if type(k) is not str:
            raise ProtocolError("malformed", "map keys must be strings")
    v = d.get("v", 1)
    if type(v) is not int or v != 1:
        raise ProtocolError("unsupported_version", f"v={v!r}", "v")
    if d.get("t") != "new":
        raise ProtocolError("unknown_message_type", "only new here", "t")
    for k in d:
        if k not in _NEW_KEYS:
            raise ProtocolError("bad_field", f"field '{k}' is not a field of this message", k)
    try:
        oid, symbol, side, otype, qty, tif = d["oid"], d["symbol"], d["side"], d["type"], d["qty"], d["tif"]
    except KeyError as e:
        raise ProtocolError("missing_field", f"missing field {e}", str(e.args[0])) from None
    price = d.get("price")
    if type(oid) is not str or not 0 < len(oid) <= MAX_OID_LEN:
        raise _bad("oid", "a string of 1 to 64 characters")
    if type(symbol) is not str or not 0 < len(symbol) <= MAX_SYMBOL_LEN:
        raise _bad("symbol", "a string of 1 to 32 characters")
    if type(side) is not str or side not in _SIDES:
        raise _bad("side", "buy or sell")
    if type(otype) is not str or otype not in _TYPES:
        raise _bad("type", "limit or market")
    if price is not None and (type(price) is not str or _price_ok(price) is None):
        raise _bad("price", "a decimal string")
    if type(qty) is not int:
        raise _bad("qty", "an integer")
    if type(tif) is not str or tif not in _TIFS:
        raise _bad("tif", "GTC, DAY, IOC or FOK")
    if (price is None) is (otype == "limit"):
        raise ProtocolError("missing_field" if price is None else "bad_field", "price and type disagree", "price")
    # The checks above narrowed side, type and tif to their literals; mypy sees only str.
    return New(oid=oid, symbol=symbol, side=side, type=otype, price=price, qty=qty, tif=tif)  # type: ignore[arg-type]


_packb = msgpack.Packer(use_bin_type=True).pack


def encode_fill_inlined(m: Fill) -> bytes:
    """Encode a ``fill`` from a dict literal: the same bytes as the codec."""
    return _packb({"t": "fill", "v": 1, "oid": m.oid, "symbol": m.symbol, "side": m.side, "price": m.price,
                   "last_qty": m.last_qty, "cum_qty": m.cum_qty, "leaves_qty": m.leaves_qty,
                   "trade_id": m.trade_id, "aggressor": m.aggressor, "ts": m.ts})


# --------------------------------------------------------------------------
# Inputs and timing
# --------------------------------------------------------------------------


def new_orders(n: int, bad: bool = False) -> list[bytes]:
    """Return ``n`` encoded ``new`` orders with distinct oids (a float price when ``bad``)."""
    out = []
    for i in range(n):
        ticks = 70_000 + (i * 7919) % 400 - 200
        price: Any = f"{ticks // 20}.{ticks % 20 * 5:02d}"
        msg = {"t": "new", "v": 1, "oid": f"B1-{i:08d}", "symbol": "RELIANCE", "side": "buy" if i % 2 else "sell",
               "type": "limit", "price": float(price) if bad else price, "qty": 1 + i % 50, "tif": "DAY"}
        out.append(msgpack.packb(msg))
    return out


def fills(n: int) -> list[Fill]:
    """Return ``n`` fills of a realistic shape."""
    return [Fill(oid=f"B1-{i:08d}", symbol="RELIANCE", side="buy" if i % 2 else "sell", price="1420.55",
                 last_qty=1 + i % 7, cum_qty=1 + i % 7, leaves_qty=i % 11, trade_id=i + 1, aggressor=bool(i % 3),
                 ts=1_700_000_000_000_000_000 + i) for i in range(n)]


def _once(fn: Callable[[Any], Any], items: list[Any], expect_error: bool) -> float:
    if expect_error:
        start = time.perf_counter()
        for x in items:
            try:  # noqa: SIM105 - contextlib.suppress would add its own cost to every timed call
                fn(x)
            except ProtocolError:
                pass
        return len(items) / (time.perf_counter() - start)
    start = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - start)


def rates(variants: dict[str, Callable[[Any], Any]], items: list[Any], repeat: int,
          expect_error: bool = False) -> dict[str, float]:
    """Return the best messages/s of each variant over ``items``; runs interleave, so load hits all alike."""
    best = dict.fromkeys(variants, 0.0)
    for _ in range(repeat):
        for name, fn in variants.items():
            best[name] = max(best[name], _once(fn, items, expect_error))
    return best


def agree(good: list[bytes], bad: list[bytes], fl: list[Fill]) -> None:
    """Check that every codec gives the same result before timing any of them."""
    for data in good[:1000]:
        assert decode_client(data) == decode_client_plain(data) == decode_new_inlined(data), data
    for data in bad[:1000]:
        reasons = set()
        for fn in (decode_client, decode_client_plain, decode_new_inlined):
            try:
                fn(data)
            except ProtocolError as e:
                reasons.add((e.reason, e.field))
        assert reasons == {("bad_field", "price")}, reasons
    for fill in fl[:1000]:
        assert encode(fill) == encode_plain(fill) == encode_fill_inlined(fill)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the figures, and return them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="messages per run (default 200,000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure; the best counts (default 5)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)

    good, bad, fl = new_orders(args.n), new_orders(args.n, bad=True), fills(args.n)
    agree(good, bad, fl)
    r = args.repeat
    decoders: dict[str, Callable[[Any], Any]] = {
        "msgspec": decode_client, "plain": decode_client_plain, "plain_inlined": decode_new_inlined}
    encoders: dict[str, Callable[[Any], Any]] = {
        "msgspec": encode, "plain": encode_plain, "plain_inlined": encode_fill_inlined}
    results = {
        "decode_new": rates(decoders, good, r),
        "encode_fill": rates(encoders, fl, r),
        "reject_bad_new": rates(decoders, bad, r, expect_error=True),
    }
    ratios = {path: {"vs_plain": fig["msgspec"] / fig["plain"],
                     "vs_plain_inlined": fig["msgspec"] / fig["plain_inlined"]} for path, fig in results.items()}
    report = {
        "command": "python perf/bench_codec.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "python": platform.python_version(),
        "msgspec": msgspec.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "machine": platform.machine(),
        "n": args.n,
        "repeat": args.repeat,
        "msgs_per_s": results,
        "ratio": ratios,
        "bytes": {"new": len(good[0]), "fill": len(encode(fl[0]))},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(f"codec benchmark: {args.n:,} messages, best of {args.repeat}; Python {report['python']}, "
          f"msgspec {report['msgspec']}, msgpack {report['msgpack']}")
    print(f"{'path':<26}{'msgspec':>14}{'plain':>14}{'plain-inlined':>16}{'ratio':>9}{'ratio (inl.)':>14}")
    labels = {"decode_new": "decode + validate new", "encode_fill": "encode fill", "reject_bad_new": "reject bad new"}
    for path, fig in results.items():
        print(f"{labels[path]:<26}" + "".join(f"{fig[k] / 1e6:>11.2f} M/s" if k != "plain_inlined"
                                               else f"{fig[k] / 1e6:>13.2f} M/s" for k in fig)
              + f"{ratios[path]['vs_plain']:>8.1f}x{ratios[path]['vs_plain_inlined']:>13.1f}x")
    print(f"(ratio = msgspec / plain; a new is {report['bytes']['new']} bytes, a fill {report['bytes']['fill']})")
    return report


if __name__ == "__main__":
    main()
