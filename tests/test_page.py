"""The live price page in a real browser (headless Chromium driven by Playwright).

The local topology (two matchers, two gateways, the ticker) runs as processes on free ports with the
simulated brokers of ``tools.demo`` trading through it; the page is read the way a person sees it and
through the hooks it exposes (``window.exfab``, ``tr[data-symbol]``, ``td[data-field]``, ``#chart``,
``#depth``, ``#tape``), and compared with the ticker's own ``GET /snapshot``.

Without Chromium or Playwright the tests are skipped, and fail when ``CI`` is set (``.ci/run``
installs Chromium). A screenshot goes to the test's folder, and to ``docs/img/live-page.png`` (the README's
picture) when ``EXFAB_SCREENSHOT=1`` is set: a test run does not change tracked files otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers import LOCAL, ROOT, topology_on_free_ports
from topology.launcher import Launcher, read_line

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "docs" / "img" / "live-page.png"
VIEWPORT = {"width": 1400, "height": 900}
DEMO_RATE = 100  # commands per second, all simulated brokers together

T = TypeVar("T")


def _require_browser() -> str:
    """Return Chromium's path; skip without Chromium or Playwright (fail when ``CI`` is set)."""
    why = None
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        why = f"Chromium is not installed ({CHROMIUM} and no chromium on PATH)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "Playwright is not installed (pip install playwright)"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must provide it for the live page's test", pytrace=False)
        pytest.skip(why)
    assert path is not None
    return path


def _wait(what: str, probe: Callable[[], T | None], timeout: float = 20.0, every: float = 0.2) -> T:
    """Return ``probe()``'s first truthy value; fail after ``timeout`` seconds, saying what was awaited."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


# --------------------------------------------------------------------------- fixtures


class LiveExchange:
    """The running topology with its demo flow, and the ticker's web address."""

    def __init__(self, launcher: Launcher, base_url: str, demo: subprocess.Popen[str]) -> None:
        self.launcher = launcher
        self.base_url = base_url
        self.demo = demo
        self.symbols = sorted(i.symbol for i in launcher.topo.instruments)

    def snapshot(self, symbol: str) -> dict[str, Any]:
        """The ticker's ``GET /snapshot?symbol=...``."""
        snap: dict[str, Any] = _get_json(f"{self.base_url}snapshot?symbol={symbol}")
        return snap


@pytest.fixture(scope="module")
def chromium_path() -> str:
    return _require_browser()


@pytest.fixture(scope="module")
def live_exchange(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveExchange]:
    """The local topology with its ticker on free ports, and simulated brokers trading on it."""
    tmp = tmp_path_factory.mktemp("live-page")
    launcher = Launcher(topology_on_free_ports(LOCAL, tmp), workdir=tmp)
    ticker = launcher.topo.ticker
    assert ticker is not None, "the local topology has a [ticker]"
    launcher.start()
    demo: subprocess.Popen[str] | None = None
    try:
        path = str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
        launcher.log_dir.mkdir(parents=True, exist_ok=True)
        with open(launcher.log_dir / "demo.log", "a", encoding="utf-8") as log:
            demo = subprocess.Popen([sys.executable, "-m", "tools.demo", "--topology", str(launcher.path),
                                     "--rate", str(DEMO_RATE)],
                                    cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                    start_new_session=True)
        line = read_line(demo.stdout, 60)  # type: ignore[arg-type]
        assert line is not None and line.startswith("READY"), f"the demo brokers did not start: {line!r}"
        yield LiveExchange(launcher, ticker.http_url, demo)
    finally:
        if demo is not None and demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(10)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
        launcher.stop()


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True, args=["--headless", "--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Page:
    """A browser page on the live page, collecting the page's script errors."""

    def __init__(self, browser: Any, base_url: str, viewport: dict[str, int] | None = None) -> None:
        self.base_url = base_url
        self.page = browser.new_page(viewport=viewport or VIEWPORT)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console.error: {m.text}") if m.type == "error" else None)

    def open(self, fragment: str = "") -> None:
        self.page.goto(self.base_url + fragment)
        _wait("the page to connect and list the symbols", lambda: self.js(
            "() => window.exfab && exfab.connected && Object.keys(exfab.quotes).length > 0"))

    def js(self, expr: str, arg: Any = None) -> Any:
        return self.page.evaluate(expr, arg)

    def state(self, symbol: str) -> dict[str, Any]:
        """The page's model of ``symbol`` and the text of its row's cells, read in one go."""
        return self.js("""(s) => {
            const q = exfab.quotes[s] || {};
            const row = document.querySelector(`tr[data-symbol="${s}"]`);
            const cell = (f) => {
                const td = row && row.querySelector(`td[data-field="${f}"]`);
                return td ? td.textContent : null;
            };
            return {last: q.last ?? null, trade_id: q.trade_id ?? null, cell_last: cell("last"),
                    cell_change_pct: cell("change_pct"), cell_bid: cell("bid"), cell_ask: cell("ask"),
                    cell_volume: cell("volume"), volume: q.volume ?? null};
        }""", symbol)

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def page(browser: Any, live_exchange: LiveExchange) -> Iterator[Page]:
    pg = Page(browser, live_exchange.base_url)
    try:
        yield pg
        assert not pg.errors, "the page logged errors:\n" + "\n".join(pg.errors)
    finally:
        pg.close()


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(240)
def test_the_page_lists_every_symbol_and_selects_the_first(page: Page, live_exchange: LiveExchange) -> None:
    page.open()
    rows = page.js("() => Array.from(document.querySelectorAll('tr[data-symbol]'), tr => tr.dataset.symbol)")
    assert sorted(rows) == live_exchange.symbols
    for f in ("last", "change_pct", "bid", "ask", "volume"):
        assert page.js(f"() => document.querySelectorAll('tr[data-symbol] td[data-field=\"{f}\"]').length") == len(rows)
    first = rows[0]
    assert page.js("() => exfab.selected") == first
    assert page.js("() => location.hash") == f"#{first}"
    assert page.js(f"() => document.querySelector('tr[data-symbol=\"{first}\"]').classList.contains('sel')")
    assert page.js("() => document.getElementById('exchange-name').textContent")  # hello's name (or the default)
    _wait("a heartbeat shown in the header", lambda: page.js(
        "() => /\\d\\d:\\d\\d:\\d\\d/.test(document.getElementById('status-hb').textContent)"))


@pytest.mark.timeout(240)
def test_last_prices_move_and_agree_with_the_ticker(page: Page, live_exchange: LiveExchange) -> None:
    page.open()
    syms = live_exchange.symbols
    before = {s: page.state(s)["last"] for s in syms}
    moved = _wait("a last price to change on the page", lambda: [
        s for s in syms if (st := page.state(s))["last"] is not None and st["last"] != before[s]], timeout=30)
    assert moved
    # The page agrees with the ticker: compare at a moment when both have seen the same last trade
    # (a trade may arrive between reading one and the other: try again).
    for sym in syms:
        if page.state(sym)["trade_id"] is None:
            continue  # nothing traded yet in this symbol
        agreed = None
        for _ in range(40):
            snap = live_exchange.snapshot(sym)["quote"]
            st = page.state(sym)
            if st["trade_id"] == snap["trade_id"] and st["cell_last"] == st["last"]:
                agreed = (snap, st)
                break
            time.sleep(0.15)
        assert agreed is not None, f"{sym}: the page never agreed with the ticker's snapshot"
        snap, st = agreed
        assert st["last"] == snap["last"], (sym, st, snap)
        assert st["cell_last"] == snap["last"], (sym, st, snap)
        assert re.fullmatch(r"[+-]?\d+\.\d\d%", st["cell_change_pct"] or ""), st
    # A changed cell flashes (green up, red down): its flash class stays on it after the animation.
    _wait("a changed cell to flash", lambda: page.js(
        "() => document.querySelector('#watch-body td:is(.fu0, .fu1, .fd0, .fd1)') !== null"))
    # The market watch keeps changing: volume grows on the page as trades come in.
    vol0 = sum(page.state(s)["volume"] or 0 for s in syms)
    _wait("the page's total volume to grow", lambda: sum(page.state(s)["volume"] or 0 for s in syms) > vol0,
          timeout=20)


@pytest.mark.timeout(240)
def test_chart_depth_and_tape_of_the_selected_symbol(page: Page, live_exchange: LiveExchange) -> None:
    sym = "TCS"
    page.open(f"#{sym}")
    assert page.js("() => exfab.selected") == sym
    _wait("a candlestick bar on the chart", lambda: page.js("""() => {
        const d = document.getElementById('chart').data;
        return d && d[0].type === 'candlestick' && d[0].x.length > 0 && d[1].type === 'bar' && d[1].x.length > 0;
    }"""), timeout=30)
    # The candles are the ticker's bars of the selected symbol.
    chart = page.js("() => ({x: document.getElementById('chart').data[0].x.length, sym: exfab.chart.symbol,"
                    " interval: exfab.chart.interval})")
    assert chart["sym"] == sym and chart["interval"] == "1m" and chart["x"] >= 1
    # The reference price line (previous close) is drawn.
    ref = live_exchange.snapshot(sym)["quote"]["ref_price"]
    dashed = page.js("() => document.getElementById('chart').layout.shapes.filter(s => s.line.dash === 'dash')"
                     ".map(s => s.y0)")
    assert dashed == [float(ref)]

    _wait("trades on the tape", lambda: page.js("() => document.querySelectorAll('#tape tr').length") > 0)
    tape = page.js("""() => Array.from(document.querySelectorAll('#tape tr'), tr => ({
        id: Number(tr.dataset.tradeId), cells: Array.from(tr.cells, td => td.textContent), cls: tr.className}))""")
    assert 0 < len(tape) <= 50
    ids = [t["id"] for t in tape]
    assert ids == sorted(ids, reverse=True), "newest on top"
    time_s, price, qty, side = tape[0]["cells"]
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d\d\d", time_s), time_s
    assert re.fullmatch(r"\d+\.\d+", price) and int(qty.replace(",", "")) > 0 and side in ("BUY", "SELL")
    # The tape's trades are the ticker's (prints of the snapshot overlap the page's newest ones).
    snap_prints = {p["trade_id"]: p for p in live_exchange.snapshot(sym)["quote"]["prints"]}
    common = [t for t in tape if t["id"] in snap_prints]
    assert common, "the tape shares trades with the ticker's snapshot"
    for t in common:
        assert t["cells"][1] == snap_prints[t["id"]]["price"]

    _wait("the depth ladder to show both sides", lambda: page.js("""() =>
        document.querySelectorAll('#depth-bids .level:not(.empty)').length > 0 &&
        document.querySelectorAll('#depth-asks .level:not(.empty)').length > 0"""))
    assert page.js("() => document.getElementById('spread-value').textContent") != "–"


@pytest.mark.timeout(240)
def test_selection_and_interval_follow_clicks_and_survive_a_reload(page: Page, live_exchange: LiveExchange,
                                                                   tmp_path: Path) -> None:
    page.open()
    sym = "INFY"
    page.page.click(f'tr[data-symbol="{sym}"]')
    assert page.js("() => location.hash") == f"#{sym}"
    _wait(f"the chart of {sym}", lambda: page.js(
        f"() => exfab.chart.symbol === '{sym}' && document.getElementById('chart').data[0].x.length > 0"), timeout=30)
    page.page.reload()
    _wait("the page to come back", lambda: page.js("() => window.exfab && exfab.connected && exfab.selected"))
    assert page.js("() => exfab.selected") == sym, "the selection is kept in the URL across a reload"
    for iv in ("5m", "1s", "1m"):
        page.page.click(f'button[data-interval="{iv}"]')
        drawn = f"() => exfab.chart.interval === '{iv}' && document.getElementById('chart').data[0].x.length > 0"
        _wait(f"the {iv} chart", partial(page.js, drawn), timeout=30)


def _time_axis_labels(page: Page) -> list[str]:
    """The chart's time-axis tick labels, left to right, as drawn."""
    labels: list[str] = page.js(
        "() => Array.from(document.querySelectorAll('#chart .xtick text'), t => t.textContent)")
    return labels


def _distinct(labels: list[str]) -> bool:
    return len(labels) >= 2 and len(set(labels)) == len(labels)


def _redrawn(page: Page, draws: int) -> bool:
    """Whether the chart was drawn again since it had been drawn ``draws`` times."""
    return bool(page.js("() => exfab.chart.draws") > draws)


@pytest.mark.timeout(240)
def test_time_axis_labels_are_distinct_at_every_interval_and_zoom(page: Page, live_exchange: LiveExchange) -> None:
    page.open("#TCS")
    for iv in ("1m", "5m", "1s"):  # 1m first: a young day has one or two minute bars, Plotly ticks them 30 s apart
        page.page.click(f'button[data-interval="{iv}"]')
        drawn = f"() => exfab.chart.interval === '{iv}' && document.getElementById('chart').data[0].x.length > 0"
        _wait(f"the {iv} chart", partial(page.js, drawn), timeout=30)
        for _ in range(3):  # live updates redraw the chart: the labels stay distinct through them
            draws = page.js("() => exfab.chart.draws")
            _wait("a live redraw", partial(_redrawn, page, draws))
            labels = _time_axis_labels(page)
            assert _distinct(labels), (iv, labels)
    # Zoomed from a second and a half (ticks a fraction of a second apart) to three years (ticks a year apart).
    for span_ms in (1_500, 90_000, 20 * 60_000, 10 * 3_600_000, 3 * 86_400_000, 60 * 86_400_000,
                    3 * 365 * 86_400_000):
        labels = page.js("""async (span) => {
            const gd = document.getElementById('chart');
            const end = Date.now();
            await Plotly.relayout(gd, {'xaxis.range': [end - span, end]});
            return Array.from(gd.querySelectorAll('.xtick text'), t => t.textContent);
        }""", span_ms)
        assert _distinct(labels), (span_ms, labels)


_LEGEND = """() => {
    const el = document.getElementById('chart-ohlc');
    const gd = document.getElementById('chart');
    const r = el.getBoundingClientRect(), panel = el.closest('.chart-panel').getBoundingClientRect();
    const d = gd.data[0], n = d.x.length;
    return {
        shown: !el.hidden && getComputedStyle(el).display !== 'none' && r.width > 0 && r.height > 0 &&
               r.left >= panel.left && r.right <= panel.right && r.top >= panel.top && r.bottom <= panel.bottom,
        clipped: el.scrollWidth > el.clientWidth,
        above_plot: r.bottom <= gd.getBoundingClientRect().top + gd._fullLayout._size.t + 1,
        labels: Array.from(el.querySelectorAll('b'), b => b.textContent),
        values: Array.from(el.querySelectorAll('span'), s => Number(s.textContent.replace(/,/g, ''))),
        last_bar: n ? [d.open[n - 1], d.high[n - 1], d.low[n - 1], d.close[n - 1], gd.data[1].y[n - 1]] : null,
    };
}"""


@pytest.mark.timeout(240)
def test_the_ohlc_legend_stays_whole_through_live_updates(browser: Any, live_exchange: LiveExchange) -> None:
    # 1200 px wide, a long symbol with four-digit prices: the chart panel's header is at its fullest there,
    # and a legend sharing it was squeezed away as prices, changes and volumes grew.
    page = Page(browser, live_exchange.base_url, viewport={"width": 1200, "height": 800})
    try:
        page.open("#BHARTIARTL")
        page.page.click('button[data-interval="1s"]')  # a bar a second: the legend's values change often
        _wait("the 1s chart", lambda: page.js(
            "() => exfab.chart.interval === '1s' && document.getElementById('chart').data[0].x.length > 0"), timeout=30)
        seen = set()
        for _ in range(6):
            draws = page.js("() => exfab.chart.draws")
            _wait("a live redraw", partial(_redrawn, page, draws), timeout=30)
            # The legend is drawn in the frame after the chart: it shows the chart's last bar once both are in.
            legend = _wait("the legend to show the chart's last bar", lambda: (
                lg if (lg := page.js(_LEGEND))["values"] == lg["last_bar"] else None), timeout=5, every=0.05)
            assert legend["shown"] and not legend["clipped"] and legend["above_plot"], legend
            assert legend["labels"] == ["O", "H", "L", "C", "V"], legend
            seen.add(tuple(legend["values"]))
        assert len(seen) > 1, "the legend followed the live bars"
        assert not page.errors, "the page logged errors:\n" + "\n".join(page.errors)
    finally:
        page.close()


@pytest.mark.timeout(240)
def test_screenshot(page: Page, live_exchange: LiveExchange, tmp_path: Path) -> None:
    page.open("#TCS")
    page.page.click('button[data-interval="1s"]')
    # Let the chart fill a little and the tape grow: the screenshot shows the page at work.
    _wait("a dozen one-second bars", lambda: page.js(
        "() => exfab.chart.interval === '1s' && exfab.chart.bars >= 12"), timeout=60)
    time.sleep(1.0)
    png = page.page.screenshot()
    (tmp_path / "live-page.png").write_bytes(png)
    if os.environ.get("EXFAB_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
