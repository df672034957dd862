"""The gateway's risk checks: fabric/risk.py on its own (an injected clock), the topology's risk tables, and
each check over real sockets (its reason, and nothing passed to the matcher), with cancel-on-disconnect."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgpack
import pytest
import zmq

from fabric.client import BrokerClient
from fabric.instruments import Instrument, InstrumentError
from fabric.protocol import PROTOCOL_REASONS, New, Replace, decode_server
from fabric.risk import RISK_REASONS, RiskChecks, RiskLimits, TokenBucket, open_delta
from tests.helpers import LOCAL, gateway_endpoints, journal_events, topology_on_free_ports
from topology.launcher import Launcher
from topology.load import check_text, loads
from topology.ports import without_security

# ------------------------------------------------------------------------------------------------ unit tests


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_up_to_its_size() -> None:
    b = TokenBucket(rate=2, size=3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.25) is False  # half a token
    assert b.take(0.5) is True  # one whole token after 0.5 s at 2/s
    assert b.take(0.5) is False
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]  # never more than its size


def _checks(default: RiskLimits | None = None, brokers: dict[str, RiskLimits] | None = None,
            inst: dict[str, RiskLimits] | None = None, clock: _Clock | None = None) -> RiskChecks:
    tcs = Instrument("TCS", tick=Decimal("0.05"), ref_price=Decimal("3500.00"), band_pct=Decimal("10"))
    noref = Instrument("NOREF", tick=Decimal("0.01"))
    return RiskChecks(default or RiskLimits(), brokers or {}, {"TCS": tcs, "NOREF": noref}, inst or {},
                      clock or _Clock())


def _new(qty: int, price: str | None = "3500.00", symbol: str = "TCS") -> New:
    return New(oid="1", symbol=symbol, side="buy", type="limit" if price else "market", price=price, qty=qty,
               tif="GTC" if price else "IOC")


def test_no_limits_configured_checks_nothing() -> None:
    r = _checks()
    assert not r.active
    assert r.check("B1", _new(10**9, "1.00")) is None


def test_each_limit_refuses_with_its_reason_and_a_specific_text() -> None:
    r = _checks(RiskLimits(max_order_qty=1000, risk_band_pct=Decimal("5"), max_open_orders=2))
    assert r.check("B1", _new(1000)) is None
    reason, text, field = r.check("B1", _new(1001))  # type: ignore[misc]
    assert (reason, field) == ("order_qty_too_large", "qty") and "1001" in text and "1000" in text
    reason, text, field = r.check("B1", _new(10, "3320.00"))  # type: ignore[misc]  # below 3325.00
    assert (reason, field) == ("price_outside_risk_band", "price") and "3325.00-3675.00" in text
    assert r.check("B1", _new(10, "3325.00")) is None
    assert r.check("B1", _new(10, "3675.05"))[0] == "price_outside_risk_band"  # type: ignore[index]
    assert r.check("B1", _new(10, "3320.01")) is None  # off the tick: the matcher's reason, not a risk one
    r.on_report("B1", "accepted", -1)
    r.on_report("B1", "accepted", -1)
    reason, text, _ = r.check("B1", _new(10))  # type: ignore[misc]
    assert reason == "too_many_open_orders" and "2 open orders" in text
    assert r.check("B1", Replace(oid="1", symbol="TCS", qty=5)) is None  # a replace opens no order
    r.on_report("B1", "fill", 0)
    assert r.check("B1", _new(10)) is None
    assert r.check("B2", _new(10)) is None  # per broker
    v = _checks(RiskLimits(max_order_value=Decimal("1000000")))
    reason, text, field = v.check("B1", _new(286))  # type: ignore[misc]  # 286 x 3500 = 1,001,000
    assert (reason, field) == ("order_value_too_large", "qty") and "1001000" in text and "1000000" in text
    assert v.check("B1", _new(285)) is None  # 997,500
    assert v.check("B1", _new(285, None)) is None  # a market order, valued at the reference price
    assert v.check("B1", _new(286, None))[0] == "order_value_too_large"  # type: ignore[index]
    assert v.check("B1", Replace(oid="1", symbol="TCS", qty=10**6)) is None  # no price: nothing to value it at
    assert v.check("B1", Replace(oid="1", symbol="TCS", qty=286, price="3500.00"))[0] == "order_value_too_large"  # type: ignore[index]


def test_a_stop_orders_trigger_is_in_the_risk_band_and_values_a_stop_loss_market_order() -> None:
    r = _checks(RiskLimits(risk_band_pct=Decimal("5"), max_order_value=Decimal("1000000")))  # band 3325.00-3675.00
    sl = New(oid="s", symbol="TCS", side="sell", type="limit", qty=10, price="3330.00", tif="DAY", stop_price="3320.00")
    reason, text, field = r.check("B1", sl)  # type: ignore[misc]
    assert (reason, field) == ("price_outside_risk_band", "stop_price") and "stop_price 3320.00" in text
    inside = New(oid="s", symbol="TCS", side="sell", type="limit", qty=10, price="3330.00", tif="DAY",
                 stop_price="3335.00")
    assert r.check("B1", inside) is None
    assert r.check("B1", Replace(oid="s", symbol="TCS", stop_price="3680.00"))[0] == "price_outside_risk_band"  # type: ignore[index]
    # An SL-M is valued at its trigger, not at the reference price (3500.00): 280 x 3600 = 1,008,000.
    slm = New(oid="m", symbol="TCS", side="buy", type="market", qty=280, tif="DAY", stop_price="3600.00")
    reason, text, field = r.check("B1", slm)  # type: ignore[misc]
    assert (reason, field) == ("order_value_too_large", "qty") and "280 at the stop price 3600.00" in text
    smaller = New(oid="m", symbol="TCS", side="buy", type="market", qty=277, tif="DAY", stop_price="3600.00")
    assert r.check("B1", smaller) is None


def test_an_instrument_without_reference_price_has_no_band_and_no_market_value() -> None:
    r = _checks(RiskLimits(max_order_value=Decimal("100"), risk_band_pct=Decimal("1")))
    assert r.check("B1", _new(1, "99999.00", "NOREF"))[0] == "order_value_too_large"  # type: ignore[index]
    assert r.check("B1", _new(1, "50.00", "NOREF")) is None  # no band without a reference price
    assert r.check("B1", _new(10**6, None, "NOREF")) is None  # a market order with nothing to value it at


def test_set_reference_moves_the_band_and_the_market_value_for_every_broker() -> None:
    r = _checks(RiskLimits(risk_band_pct=Decimal("5"), max_order_value=Decimal("1000000")),
                brokers={"B2": RiskLimits(risk_band_pct=Decimal("10"))})
    assert r.check("B1", _new(10, "3800.00"))[0] == "price_outside_risk_band"  # type: ignore[index]  # 3325-3675
    assert r.check("B2", _new(10, "3800.00")) is None  # B2's 10 %: 3150-3850
    assert r.check("B1", _new(285, None)) is None  # a market order, valued at 285 x 3500 = 997,500
    assert r.set_reference("TCS", Decimal("3670.00")) is True  # the close, a day later
    assert r.check("B1", _new(10, "3800.00")) is None  # 5 % around 3670: 3486.50-3853.50 (resolved again)
    reason, text, field = r.check("B1", _new(10, "3900.00"))  # type: ignore[misc]
    assert (reason, field) == ("price_outside_risk_band", "price")
    assert "3486.50-3853.50" in text and "reference price 3670.00" in text, text
    assert r.check("B1", _new(10, "3480.00"))[0] == "price_outside_risk_band"  # type: ignore[index]
    reason, text, _ = r.check("B1", _new(285, None))  # type: ignore[misc]  # 285 x 3670 = 1,045,950
    assert reason == "order_value_too_large" and "reference price 3670.00" in text, text
    assert r.check("B1", _new(272, None)) is None  # 998,240
    assert r.check("B2", _new(10, "4030.00")) is None  # B2's 10 % around 3670: 3303.00-4037.00
    assert r.check("B2", _new(10, "4040.00"))[0] == "price_outside_risk_band"  # type: ignore[index]
    assert r.set_reference("TCS", Decimal("3670")) is False  # the same price: nothing changes
    assert r.set_reference("NOREF", Decimal("10.00")) is True  # a reference where the topology gave none
    assert r.check("B1", _new(1, "11.00", "NOREF"))[0] == "price_outside_risk_band"  # type: ignore[index]


def test_set_reference_refuses_what_the_instrument_cannot_take_and_keeps_the_old() -> None:
    r = _checks(RiskLimits(risk_band_pct=Decimal("5")))
    with pytest.raises(KeyError):
        r.set_reference("NOPE", Decimal("10.00"))
    with pytest.raises(InstrumentError, match="ref_price must be positive"):
        r.set_reference("TCS", Decimal("0"))
    assert r.instruments["TCS"].ref_price == Decimal("3500.00")
    assert r.check("B1", _new(10, "3675.00")) is None


def test_broker_overrides_and_instrument_limits_the_stricter_holds() -> None:
    r = _checks(RiskLimits(max_order_qty=1000), brokers={"BIG": RiskLimits(max_order_qty=5000)},
                inst={"TCS": RiskLimits(max_order_qty=3000)})
    assert r.check("BIG", _new(3000)) is None
    assert r.check("BIG", _new(3001))[0] == "order_qty_too_large"  # type: ignore[index]  # the instrument's
    assert r.check("SMALL", _new(1001))[0] == "order_qty_too_large"  # type: ignore[index]  # the default
    assert r.limits_of("BIG") == RiskLimits(max_order_qty=5000)


def test_rate_limit_is_a_token_bucket_per_broker_and_spares_cancels() -> None:
    clock = _Clock()
    r = _checks(RiskLimits(max_orders_per_s=10, burst=2), clock=clock)
    assert [r.check("B1", _new(1)) for _ in range(2)] == [None, None]
    reason, text, _ = r.check("B1", _new(1))  # type: ignore[misc]
    assert reason == "rate_limited" and "10 orders per second" in text
    assert r.check("B2", _new(1)) is None  # another broker's bucket
    clock.now += 0.15  # one token back (and a half)
    assert r.check("B1", Replace(oid="1", symbol="TCS", price="3500.00")) is None
    assert r.check("B1", _new(1))[0] == "rate_limited"  # type: ignore[index]


def test_open_orders_count_follows_the_reports() -> None:
    assert [open_delta(k, leaves) for k, leaves in (("accepted", -1), ("fill", 5), ("fill", 0), ("cancelled", -1),
                                                      ("expired", -1), ("replaced", 3), ("replaced", 0),
                                                      ("rejected", -1))] == [1, 0, -1, -1, -1, 0, -1, 0]


def test_every_risk_reason_is_a_protocol_reason() -> None:
    assert set(RISK_REASONS) <= set(PROTOCOL_REASONS)


# ------------------------------------------------------------------------------------------------ topology

_BASE = without_security(LOCAL.read_text())  # (its own brokers, open: local.toml's keyed ones aside)


def test_topology_risk_tables_load() -> None:
    topo = loads(_BASE.replace('symbol = "ITC"\n', 'symbol = "ITC"\nmax_order_qty = 200\n') + """
[[brokers]]
id = "B1"
cancel_on_disconnect = true
[brokers.risk]
max_open_orders = 7

[risk]
max_order_qty = 1000
max_order_value = "2000000"
risk_band_pct = "5"
max_orders_per_s = 50
burst = 100
""")
    b1 = next(b for b in topo.brokers if b.id == "B1")
    assert b1.cancel_on_disconnect and b1.role == "broker" and b1.risk == RiskLimits(max_open_orders=7)
    assert next(b for b in topo.brokers if b.id == "ops").role == "operator"
    assert topo.risk == RiskLimits(max_order_qty=1000, max_order_value=Decimal("2000000"),
                                   risk_band_pct=Decimal("5"), max_orders_per_s=50, burst=100)
    assert topo.instrument_risk == {"ITC": RiskLimits(max_order_qty=200)}


@pytest.mark.parametrize(("extra", "where", "says"), [
    ('[risk]\nmax_order_qty = 0\n', "risk.max_order_qty", "must be a positive integer"),
    ('[risk]\nmax_order_value = 5.5\n', "risk.max_order_value", "write decimals as strings"),
    ('[risk]\nrisk_band_pct = "100"\n', "risk.risk_band_pct", "below 100"),
    ('[risk]\nburst = 10\n', "risk.burst", "give max_orders_per_s"),
    ('[risk]\nmax_qty = 10\n', "risk", 'did you mean "max_order_qty"'),
    ('[[brokers]]\nid = "X"\nrole = "admin"\n', '"X".role', 'unknown role "admin"'),
    ('[[brokers]]\nid = "X"\ncancel_on_disconnect = "yes"\n', '"X".cancel_on_disconnect',
     "must be true or false"),
    ('[[brokers]]\nid = "X"\nrisk = 5\n', '"X".risk', "must be a table"),
    ('[[brokers]]\nid = "X"\n[brokers.risk]\nmax_open_orders = -1\n', '"X".risk.max_open_orders',
     "positive integer"),
])
def test_topology_risk_mistakes_are_reported_where_they_are(extra: str, where: str, says: str) -> None:
    problems = check_text(_BASE + extra)
    # (the broker's index in the list depends on how many brokers the local topology lists before it)
    assert any((p.where == where or p.where.endswith(f"] {where}")) and says in p.message for p in problems), problems


def test_topology_instrument_risk_band_needs_a_reference_price() -> None:
    first = '[[instruments]]\nsymbol = "RELIANCE"'
    text = _BASE.replace(first, f'[[instruments]]\nsymbol = "NEW1"\nrisk_band_pct = "5"\n\n{first}').replace(
        'symbols = ["RELIANCE",', 'symbols = ["NEW1", "RELIANCE",')
    problems = check_text(text)
    assert [str(p) for p in problems] == ['instruments[0] "NEW1".risk_band_pct: a risk band is around the reference '
                                          "price: give ref_price"]


# ------------------------------------------------------------------------------------------------ end to end

_RISKY = """
[[brokers]]
id = "B1"
cancel_on_disconnect = true

[[brokers]]
id = "B2"

[[brokers]]
id = "BIG"
[brokers.risk]
max_order_qty = 5000
max_order_value = "100000000"

[[brokers]]
id = "FAST"
[brokers.risk]
max_orders_per_s = 1
burst = 2

[risk]
max_order_qty = 1000
max_order_value = "2000000"
risk_band_pct = "5"
max_open_orders = 3
"""


@pytest.fixture
def risky(tmp_path: Path) -> Iterator[Launcher]:
    """The local topology with risk limits, brokers B1 (cancel-on-disconnect), B2, BIG and FAST, and ITC's limit."""
    src = tmp_path / "src"
    src.mkdir()
    text = _BASE.replace('symbol = "ITC"\n', 'symbol = "ITC"\nmax_order_qty = 200\n') + _RISKY
    (src / "risky.toml").write_text(text)
    launcher = Launcher(topology_on_free_ports(src / "risky.toml", tmp_path), workdir=tmp_path)
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()


def _client(ex: Launcher, broker: str) -> BrokerClient:
    c = BrokerClient(gateway_endpoints(ex)[:1], broker, timeout=5.0)
    c.connect()
    return c


def _reason(r: object) -> str | None:
    rej = r.rejected  # type: ignore[attr-defined]
    return None if rej is None else rej.reason


@pytest.mark.e2e
def test_risk_checks_refuse_before_the_matcher(risky: Launcher) -> None:
    b2, big = _client(risky, "B2"), _client(risky, "BIG")
    try:
        before = journal_events(risky, "A")
        r = b2.buy("TCS", 1001, "3500.00")
        assert _reason(r) == "order_qty_too_large" and "1001" in r.rejected.text  # type: ignore[union-attr]
        assert r.status is not None and r.status.state == "rejected"
        assert _reason(b2.buy("TCS", 600, "3500.00")) == "order_value_too_large"  # 2,100,000
        assert _reason(b2.sell("TCS", 600)) == "order_value_too_large"  # a market order at the reference price
        assert _reason(b2.buy("TCS", 10, "3300.00")) == "price_outside_risk_band"  # inside the 10 % circuit filter
        assert journal_events(risky, "A") == before  # nothing of it reached the matcher
        assert _reason(big.buy("TCS", 2000, "3500.00")) is None  # BIG's own limits
        assert _reason(big.buy("ITC", 201, "430.00")) == "order_qty_too_large"  # ITC's limit holds for BIG too
        ok = b2.buy("TCS", 10, "3400.00")
        assert ok.accepted
        moved = b2.replace(ok.oid, "TCS", qty=1001)
        assert _reason(moved) == "order_qty_too_large"
        assert _reason(b2.replace(ok.oid, "TCS", price="3600.00")) is None  # 3675.00 is the band's top
        assert _reason(b2.replace(ok.oid, "TCS", price="3700.00")) == "price_outside_risk_band"
    finally:
        b2.close()
        big.close()


@pytest.mark.e2e
def test_max_open_orders_and_the_rate_limit(risky: Launcher) -> None:
    b2, fast = _client(risky, "B2"), _client(risky, "FAST")
    try:
        oids = [b2.buy("TCS", 1, "3400.00").oid for _ in range(3)]
        r = b2.buy("TCS", 1, "3400.00")
        assert _reason(r) == "too_many_open_orders" and "3 open orders" in r.rejected.text  # type: ignore[union-attr]
        assert b2.cancel(oids[0], "TCS").accepted
        assert b2.buy("TCS", 1, "3400.00").accepted  # room again once its cancel was reported
        # FAST: one new order a second, two at once at most; sent together, the third and fourth are refused.
        for i in range(4):
            fast.submit(New(oid=f"f{i}", symbol="INFY", side="buy", type="limit", price="1550.00", qty=1, tif="GTC"))
        got: list[object] = []
        deadline = time.monotonic() + 10
        while sum(type(m).__name__ == "OrderStatus" for m in got) < 4 and time.monotonic() < deadline:
            got.extend(fast.poll(0.2))
        reasons = [m.reason for m in got if type(m).__name__ == "Rejected"]  # type: ignore[attr-defined]
        assert reasons and set(reasons) == {"rate_limited"}
        assert sum(type(m).__name__ == "Accepted" for m in got) == 4 - len(reasons) <= 2
    finally:
        b2.close()
        fast.close()


def _open_orders(ex: Launcher, broker: str) -> list[str]:
    c = _client(ex, broker)
    try:
        return [o.oid for o in c.open_orders()]
    finally:
        c.close()


def _wait_until(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.e2e
def test_cancel_on_disconnect_at_logout_and_heartbeat_timeout_not_without_it(risky: Launcher) -> None:
    b1, b2 = _client(risky, "B1"), _client(risky, "B2")
    b1.buy("TCS", 1, "3400.00")
    b1.buy("ITC", 1, "420.00")  # both shards
    b2_oid = b2.buy("TCS", 1, "3400.00").oid
    b1.close()  # logout: B1 asked for cancel-on-disconnect
    b2.close()  # B2 did not
    _wait_until(lambda: _open_orders(risky, "B1") == [])
    events = journal_events(risky, "A") + journal_events(risky, "B")
    assert sorted(e["symbol"] for e in events if e["event"] == "cancelled" and e["broker"] == "B1"
                  and e["reason"] == "cancel_on_disconnect") == ["ITC", "TCS"]
    assert _open_orders(risky, "B2") == [b2_oid]
    # A session that falls silent: the gateway ends it after three heartbeat intervals, and cancels.
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(gateway_endpoints(risky)[0])
    try:
        sock.send(msgpack.packb({"v": 1, "t": "logon", "broker": "B1", "heartbeat_ms": 200}))
        sock.send(msgpack.packb({"v": 1, "t": "new", "oid": "hb1", "symbol": "TCS", "side": "buy", "type": "limit",
                                 "price": "3400.00", "qty": 1, "tif": "GTC"}))
        got: list[object] = []
        while not any(getattr(m, "reason", None) == "heartbeat_timeout" for m in got):
            assert sock.poll(10_000), f"no heartbeat_timeout; got {got}"
            got.extend(decode_server(f) for f in sock.recv_multipart())
        assert any(type(m).__name__ == "Accepted" for m in got)
    finally:
        sock.close(0)
    _wait_until(lambda: _open_orders(risky, "B1") == [])
    reasons = [e["reason"] for e in journal_events(risky, "A") if e["event"] == "cancelled" and e["oid"] == "hb1"]
    assert reasons == ["cancel_on_disconnect"]
