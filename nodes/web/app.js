/* exchange-fabric live market-data page.
 *
 * Talks to the ticker node's WebSocket (docs/market-data.md, section 4) and its
 * /history route (section 6). Plain JavaScript, no build step; Plotly comes from
 * /static/plotly.min.js.
 *
 * Data flow: every WebSocket message updates the in-memory model at once (state.*);
 * the DOM is brought up to date from the model in one requestAnimationFrame per
 * frame, touching only what changed. The chart is redrawn with Plotly.react at
 * most CHART_MIN_MS apart.
 *
 * Times: every nanosecond time the ticker sends (ts, start, ...) is above 2^53, so
 * JSON.parse rounds the integer; the exact decimal text beside it (ts_ns, start_ns,
 * docs/market-data.md section 2) is what the page reads, through BigInt.
 *
 * Two tickers (A and B feeds, docs/market-data.md section 9): the hello names every
 * ticker of the market; when the page's WebSocket closes, or its ticker sends no
 * heartbeat for SILENCE_HEARTBEATS periods, the page connects to the next one at once
 * and takes every symbol from its snapshot. The tickers number their topics each their
 * own way, so `seq` orders the messages of one connection only; across tickers the
 * trades' ids (the matcher's) decide: a quote older than the one held (a lower
 * trade_id, a last trade not later) is not applied, a print already on the tape is not
 * added twice, and a bar with fewer trades than the one held is older.
 */
"use strict";

(() => {
  // ---------------------------------------------------------------- constants
  const MAX_TAPE = 50;
  const LEVELS = 5;
  const CHART_MIN_MS = 250;            // at most 4 chart redraws a second
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 5000;
  const SILENCE_HEARTBEATS = 3;        // heartbeat periods without one before leaving a ticker for the next
  const BANNER_MS = 10000;
  const NS_PER = { "1s": 1e9, "1m": 6e10, "5m": 3e11 };
  const NS_1M = 60000000000n, NS_5M = 300000000000n, NS_PER_MS = 1000000n;
  const LIVE_CAP = { "1s": 3600, "1m": 2000 };   // bars kept per symbol and interval in memory
  const CHART_CAP = { "1s": 300, "1m": 240, "5m": 288 };   // bars drawn: 5 min, 4 h, 24 h
  const CHART_MIN_BARS = 30;   // the time axis spans at least this many intervals
  const HISTORY_1S_WINDOW_MS = 10 * 60 * 1000;    // 1s history: the last ten minutes
  const FIELDS = ["last", "change", "change_pct", "bid", "bid_qty", "ask", "ask_qty",
                  "volume", "vwap", "high", "low"];
  const COLORS = {
    up: "#1fc77e", down: "#f4505a", upFill: "rgba(31,199,126,0.85)", downFill: "rgba(244,80,90,0.85)",
    upVol: "rgba(31,199,126,0.35)", downVol: "rgba(244,80,90,0.35)",
    bg: "#0f141b", grid: "#1a212b", axis: "#2a3340", text: "#8592a3", ref: "#b8c2d0", spike: "#59657a",
  };
  const FONT = "Inter, 'Segoe UI', Roboto, 'Helvetica Neue', 'Liberation Sans', Arial, sans-serif";
  /* Time-axis labels as precise as the spacing of the ticks Plotly picks, whatever the interval and zoom
     (one fixed "%H:%M" printed 21:21 21:21 21:22 21:22 when Plotly put ticks 30 s apart). Each stop's
     dtickrange is that spacing in ms (or months, "M1"), both ends included; the first match wins. */
  const TIME_TICKS = [
    { dtickrange: [null, 999], value: "%H:%M:%S.%L" },
    { dtickrange: [1000, 59999], value: "%H:%M:%S" },
    { dtickrange: [60000, 3599999], value: "%H:%M" },
    { dtickrange: [3600000, 86399999], value: "%a %H:%M" },
    { dtickrange: [86400000, 2000000000], value: "%d %b" },   // 1 to 14 days
    { dtickrange: ["M1", "M11"], value: "%b %Y" },
    { dtickrange: ["M12", null], value: "%Y" },
  ];

  // ---------------------------------------------------------------- helpers
  const $ = (id) => document.getElementById(id);
  const intFmt = new Intl.NumberFormat("en-US");
  const compactFmt = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 2 });
  const pad2 = (n) => (n < 10 ? "0" : "") + n;
  const pad3 = (n) => (n < 10 ? "00" : n < 100 ? "0" : "") + n;
  const num = (s) => (s === null || s === undefined || s === "" ? null : Number(s));
  const DASH = "–";

  function decimals(s) {
    if (typeof s !== "string") return 2;
    const i = s.indexOf(".");
    return i < 0 ? 0 : s.length - i - 1;
  }
  /* The exact nanosecond text of time field `f` of `o` (`f_ns`), or, from an older ticker without it,
     the integer's text (rounded by JSON.parse above 2^53). */
  function nsText(o, f) {
    const t = o[f + "_ns"];
    return typeof t === "string" ? t : String(o[f]);
  }
  /* Milliseconds since the epoch (floored) of time field `f` of `o`, exact: from its text, through BigInt. */
  function msOf(o, f) {
    let ns;
    try { ns = BigInt(nsText(o, f)); } catch (_) { return Math.floor(Number(o[f]) / 1e6); }
    const ms = ns / NS_PER_MS;
    return Number(ns < 0n && ns % NS_PER_MS !== 0n ? ms - 1n : ms);
  }
  function timeOfMs(ms, withMs) {
    const d = new Date(ms);
    const t = pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
    return withMs ? t + "." + pad3(d.getMilliseconds()) : t;
  }
  /* Plotly dates are naive: give it local wall-clock time as a string. */
  function plotlyTime(ms) {
    const d = new Date(ms);
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + " " +
      pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds()) + "." + pad3(d.getMilliseconds());
  }
  function signed(s) {
    if (s === null || s === undefined) return DASH;
    const v = Number(s);
    if (v > 0 && s[0] !== "+") return "+" + s;
    if (v === 0) return s.replace(/^[-+]/, "");
    return s;
  }
  function fmtField(f, q) {
    if (!q) return DASH;
    const v = q[f];
    if (v === null || v === undefined) return DASH;
    switch (f) {
      case "change": return signed(v);
      case "change_pct": return signed(v) + "%";
      case "bid_qty": case "ask_qty": case "volume": return intFmt.format(v);
      default: return String(v);
    }
  }
  function sign(v) { return v > 0 ? 1 : v < 0 ? -1 : 0; }
  function dirClass(v) { return v > 0 ? "up" : v < 0 ? "down" : "flat"; }

  /* Restart a ~600 ms flash animation on `el`: alternating between two animation
     names restarts it without forcing a layout (no offsetWidth read). */
  function flash(el, up) {
    const n = (el._flash = (el._flash | 0) ^ 1);
    el.classList.remove("fu0", "fu1", "fd0", "fd1");
    el.classList.add((up ? "fu" : "fd") + n);
  }

  // ---------------------------------------------------------------- state
  const state = {
    name: "exchange-fabric",
    symbols: [],          // [{symbol, ref_price, tick, lot}] from hello
    info: {},             // symbol -> hello entry
    quotes: {},           // symbol -> last quote object
    depth: {},            // symbol -> last depth object
    bars: {},             // symbol -> {"1s": {start: bar}, "1m": {start: bar}}
    tapes: {},            // symbol -> prints, newest first (at most MAX_TAPE)
    selected: null,
    interval: "1m",
    connected: false,
    heartbeatS: 1.0,
    lastHeartbeatMs: null,
    lastHeartbeatAt: 0,   // performance.now() of the last heartbeat
    lastMessageAt: 0,     // ... and of the last message
    updates: 0,
    helloCount: 0,
    qseq: {},             // symbol -> seq of the last quote of this connection (seq orders one ticker's messages)
    halts: {},            // symbol -> its state object while halted (docs/market-data.md, section 2: state)
    sseq: {},             // symbol -> seq of its last state object of this connection
    marketFresh: true,    // a new connection: its first market and index objects stand, whatever their seq
    indexFresh: true,
    market: null,         // the market's trading state object
    index: null,          // the market index object
    tickers: [],          // [{name, ws, http}] from hello: every ticker of the market
    tickerAt: -1,         // the one followed, in tickers
    home: null,           // the name of the ticker that served the page (reached through the page's own address)
    failovers: 0,
  };

  const exfab = {
    quotes: state.quotes,
    bars: state.bars,
    depth: state.depth,
    tapes: state.tapes,
    connected: false,
    updates: 0,
    ticker: null,         // the name of the ticker followed
    failovers: 0,
    selected: null,
    interval: state.interval,
    chart: { symbol: null, interval: null, bars: 0, draws: 0 },
    errors: [],
    halts: state.halts,   // symbol -> state object while halted
    market: null,         // the market's trading state object
    index: null,          // the market index object
  };
  window.exfab = exfab;

  // ---------------------------------------------------------------- DOM refs
  const el = {
    name: $("exchange-name"), brandSub: $("brand-sub"), session: $("session"), status: $("status"), statusText: $("status-text"), statusHb: $("status-hb"),
    clockTime: $("clock-time"), clockDate: $("clock-date"),
    banner: $("banner"), bannerText: $("banner-text"), bannerClose: $("banner-close"),
    haltBanner: $("halt-banner"), haltText: $("halt-text"),
    phaseStat: $("phase-stat"), phaseValue: $("phase-value"),
    indexStat: $("index-stat"), indexName: $("index-name"), indexValue: $("index-value"), indexChange: $("index-change"),
    watchBody: $("watch-body"),
    chart: $("chart"), chartMsg: $("chart-msg"), chartSymbol: $("chart-symbol"), chartLast: $("chart-last"),
    chartChange: $("chart-change"), chartOhlc: $("chart-ohlc"), intervals: $("intervals"),
    depthSymbol: $("depth-symbol"), depthAsks: $("depth-asks"), depthBids: $("depth-bids"),
    spreadValue: $("spread-value"), spreadMid: $("spread-mid"),
    imbFill: $("imb-fill"), imbBid: $("imb-bid"), imbAsk: $("imb-ask"),
    tape: $("tape"), tapeSymbol: $("tape-symbol"),
    statUp: $("stat-up"), statDown: $("stat-down"), statTrades: $("stat-trades"), statTurnover: $("stat-turnover"),
    footEndpoint: $("foot-endpoint"), footUpdates: $("foot-updates"), footRate: $("foot-rate"), footTz: $("foot-tz"),
  };

  // ---------------------------------------------------------------- render scheduling
  const dirty = { rows: new Set(), depth: false, tape: false, tapeReset: false, selHead: false, stats: false };
  let rafPending = false;
  function markDirty() {
    if (!rafPending) {
      rafPending = true;
      requestAnimationFrame(frame);
    }
  }
  function frame() {
    rafPending = false;
    for (const sym of dirty.rows) renderRow(sym);
    dirty.rows.clear();
    if (dirty.depth) { dirty.depth = false; renderDepth(); }
    if (dirty.tape || dirty.tapeReset) { renderTape(dirty.tapeReset); dirty.tape = dirty.tapeReset = false; }
    if (dirty.selHead) { dirty.selHead = false; renderSelHead(); }
    if (dirty.stats) { dirty.stats = false; renderStats(); }
    el.footUpdates.textContent = intFmt.format(state.updates);
  }

  // ---------------------------------------------------------------- market watch
  const rows = {};   // symbol -> {tr, cells: {field: td}, shown: {field: text}, raw: {field: number}}

  function buildWatch() {
    const frag = document.createDocumentFragment();
    for (const key of Object.keys(rows)) delete rows[key];
    for (const s of state.symbols) {
      const tr = document.createElement("tr");
      tr.dataset.symbol = s.symbol;
      const sym = document.createElement("td");
      sym.dataset.field = "symbol";
      sym.className = "l sym";
      sym.textContent = s.symbol;
      const badge = document.createElement("span");
      badge.className = "badge-halted";
      badge.textContent = "HALTED";
      badge.hidden = true;
      sym.appendChild(badge);
      tr.appendChild(sym);
      const cells = {};
      for (const f of FIELDS) {
        const td = document.createElement("td");
        td.dataset.field = f;
        td.className = "num c-" + f;
        td.textContent = DASH;
        tr.appendChild(td);
        cells[f] = td;
      }
      rows[s.symbol] = { tr, cells, badge, shown: {}, raw: {}, filled: false };
      frag.appendChild(tr);
      if (s.symbol === state.selected) tr.classList.add("sel");
    }
    el.watchBody.textContent = "";
    el.watchBody.appendChild(frag);
    for (const s of state.symbols) dirty.rows.add(s.symbol);
    markDirty();
  }

  function renderRow(sym) {
    const row = rows[sym];
    if (!row) return;
    const q = state.quotes[sym];
    const halt = state.halts[sym];
    if (row.badge.hidden === !!halt) {
      row.badge.hidden = !halt;
      row.tr.classList.toggle("halted", !!halt);
    }
    row.badge.title = halt ? haltWords(halt) : "";
    for (const f of FIELDS) {
      const text = fmtField(f, q);
      if (text === row.shown[f]) continue;
      const td = row.cells[f];
      const v = q ? num(q[f]) : null;
      const old = row.raw[f];
      td.textContent = text;
      if (row.filled && v !== null && old !== null && old !== undefined && v !== old) flash(td, v > old);
      row.shown[f] = text;
      row.raw[f] = v;
      if (f === "change" || f === "change_pct") {
        td.classList.remove("up", "down", "flat");
        td.classList.add(dirClass(v || 0));
      }
    }
    row.filled = !!q;
  }

  function renderStats() {
    let up = 0, down = 0, trades = 0, turnover = 0;
    for (const s of state.symbols) {
      const q = state.quotes[s.symbol];
      if (!q) continue;
      const c = num(q.change);
      if (c > 0) up++; else if (c < 0) down++;
      trades += q.trades || 0;
      turnover += num(q.turnover) || 0;
    }
    el.statUp.textContent = String(up);
    el.statDown.textContent = String(down);
    el.statTrades.textContent = intFmt.format(trades);
    el.statTurnover.textContent = compactFmt.format(turnover);
  }

  // ---------------------------------------------------------------- selection
  function symbolFromHash() {
    let h = location.hash.replace(/^#/, "");
    try { h = decodeURIComponent(h).trim(); } catch (_) { return null; }
    if (state.info[h]) return h;
    return state.info[h.toUpperCase()] ? h.toUpperCase() : null;
  }

  function select(sym, fromHash) {
    if (!sym || !state.info[sym]) return;
    if (sym === state.selected) return;
    const prev = state.selected && rows[state.selected];
    if (prev) prev.tr.classList.remove("sel");
    state.selected = sym;
    exfab.selected = sym;
    const row = rows[sym];
    if (row) {
      row.tr.classList.add("sel");
      row.tr.scrollIntoView({ block: "nearest" });
    }
    if (!fromHash && location.hash !== "#" + sym) history.replaceState(null, "", "#" + encodeURIComponent(sym));
    el.depthSymbol.textContent = sym;
    el.tapeSymbol.textContent = sym;
    el.chartSymbol.textContent = sym;
    dirty.depth = dirty.tapeReset = dirty.selHead = true;
    markDirty();
    chartLoad();
  }

  function moveSelection(delta) {
    const list = state.symbols;
    if (!list.length) return;
    let i = list.findIndex((s) => s.symbol === state.selected);
    i = Math.min(Math.max(0, i + delta), list.length - 1);
    select(list[i].symbol);
  }

  // ---------------------------------------------------------------- header of the chart panel
  function renderSelHead() {
    const sym = state.selected;
    const q = sym && state.quotes[sym];
    el.chartLast.textContent = q && q.last ? q.last : DASH;
    if (sym) document.title = sym + (q && q.last ? " " + q.last + " " + signed(q.change_pct) + "%" : "") + " · " + state.name;
    if (q && q.change !== null && q.change !== undefined) {
      el.chartChange.textContent = signed(q.change) + " (" + signed(q.change_pct) + "%)";
      el.chartChange.className = "chart-change num " + dirClass(num(q.change));
    } else {
      el.chartChange.textContent = "";
    }
    renderSession(q);
    const last = chart.lastBar && chart.symbol === sym ? chart.lastBar : null;
    if (!ohlcCells.open) {
      for (const [k, label] of [["open", "O"], ["high", "H"], ["low", "L"], ["close", "C"], ["volume", "V"]]) {
        const b = document.createElement("b");
        b.textContent = label;
        const v = document.createElement("span");
        el.chartOhlc.append(b, v);
        ohlcCells[k] = v;
      }
    }
    el.chartOhlc.hidden = !last;
    if (!last) return;
    for (const k of Object.keys(ohlcCells)) {
      const text = k === "volume" ? intFmt.format(last.volume) : String(last[k]);
      if (ohlcCells[k].textContent !== text) ohlcCells[k].textContent = text;
    }
  }
  const ohlcCells = {};

  const sessionCells = {};
  function renderSession(q) {
    if (!sessionCells.open) for (const dd of el.session.querySelectorAll("dd")) sessionCells[dd.dataset.s] = dd;
    for (const k of Object.keys(sessionCells)) {
      let v = q ? q[k] : null;
      if (k === "ref_price" && (v === null || v === undefined) && state.selected) v = (state.info[state.selected] || {}).ref_price;
      let text = DASH;
      if (v !== null && v !== undefined) {
        text = k === "volume" || k === "trades" ? intFmt.format(v) : k === "turnover" ? compactFmt.format(Number(v)) : String(v);
      }
      if (sessionCells[k].textContent !== text) sessionCells[k].textContent = text;
    }
  }

  // ---------------------------------------------------------------- depth ladder
  const depthRows = { asks: [], bids: [] };
  function buildDepth() {
    for (const side of ["asks", "bids"]) {
      const box = side === "asks" ? el.depthAsks : el.depthBids;
      box.textContent = "";
      for (let i = 0; i < LEVELS; i++) {
        const r = document.createElement("div");
        r.className = "depth-row level";
        const bar = document.createElement("div");
        bar.className = "depth-bar";
        const p = document.createElement("span");
        p.className = "l price";
        const q = document.createElement("span");
        q.className = "qty";
        const o = document.createElement("span");
        o.className = "orders";
        r.append(bar, p, q, o);
        box.appendChild(r);
        depthRows[side].push({ r, bar, p, q, o, shown: "" });
      }
    }
  }

  function renderDepth() {
    const sym = state.selected;
    const d = sym ? state.depth[sym] : null;
    const bids = (d && d.bids) || [];
    const asks = (d && d.asks) || [];
    let max = 0, bidTot = 0, askTot = 0;
    for (const l of bids) { max = Math.max(max, l[1]); bidTot += l[1]; }
    for (const l of asks) { max = Math.max(max, l[1]); askTot += l[1]; }
    const put = (row, lvl) => {
      const key = lvl ? lvl[0] + "|" + lvl[1] + "|" + lvl[2] : "";
      if (key !== row.shown) {
        const prevPrice = row.shown.split("|")[0];
        const prevQty = Number(row.shown.split("|")[1]);
        row.p.textContent = lvl ? lvl[0] : "";
        row.q.textContent = lvl ? intFmt.format(lvl[1]) : "";
        row.o.textContent = lvl ? String(lvl[2]) : "";
        if (lvl && prevPrice === lvl[0] && prevQty !== lvl[1]) flash(row.q, lvl[1] > prevQty);
        row.shown = key;
        row.r.classList.toggle("empty", !lvl);
      }
      const w = lvl && max ? (100 * lvl[1]) / max : 0;
      row.bar.style.transform = "scaleX(" + (w / 100).toFixed(4) + ")";
    };
    // Asks: worst at the top, best just above the spread.
    for (let i = 0; i < LEVELS; i++) put(depthRows.asks[i], asks[LEVELS - 1 - i] || null);
    for (let i = 0; i < LEVELS; i++) put(depthRows.bids[i], bids[i] || null);

    if (bids.length && asks.length) {
      const dp = Math.max(decimals(bids[0][0]), decimals(asks[0][0]));
      const scale = Math.pow(10, dp);
      const b = Math.round(Number(bids[0][0]) * scale), a = Math.round(Number(asks[0][0]) * scale);
      const spread = (a - b) / scale;
      const mid = (a + b) / 2 / scale;
      el.spreadValue.textContent = spread.toFixed(dp);
      const info = state.info[sym];
      const tick = info && info.tick ? Math.round(Number(info.tick) * scale) : 0;
      const parts = [];
      if (tick > 0) { const t = (a - b) / tick; parts.push(t + (t === 1 ? " tick" : " ticks")); }
      if (mid > 0) parts.push(((spread / mid) * 1e4).toFixed(1) + " bp");
      el.spreadMid.textContent = parts.join(" · ");
    } else {
      el.spreadValue.textContent = DASH;
      el.spreadMid.textContent = "";
    }
    const tot = bidTot + askTot;
    el.imbFill.style.width = tot ? ((100 * bidTot) / tot).toFixed(1) + "%" : "50%";
    el.imbBid.textContent = tot ? intFmt.format(bidTot) : DASH;
    el.imbAsk.textContent = tot ? intFmt.format(askTot) : DASH;
  }

  // ---------------------------------------------------------------- trade tape
  function tapeRow(p, isNew) {
    const tr = document.createElement("tr");
    tr.dataset.tradeId = String(p.trade_id);
    tr.className = (p.aggressor === "buy" ? "buy" : p.aggressor === "sell" ? "sell" : "") + (isNew ? " new" : "");
    const t = document.createElement("td");
    t.className = "l time";
    t.textContent = timeOfMs(msOf(p, "ts"), true);
    const pr = document.createElement("td");
    pr.className = "price";
    pr.textContent = p.price;
    const q = document.createElement("td");
    q.className = "qty";
    q.textContent = intFmt.format(p.qty);
    const s = document.createElement("td");
    s.className = "side";
    s.textContent = p.aggressor === "buy" ? "BUY" : p.aggressor === "sell" ? "SELL" : DASH;
    tr.append(t, pr, q, s);
    return tr;
  }

  let tapeShownTop = null;   // trade_id of the top row on screen
  function renderTape(reset) {
    const tape = (state.selected && state.tapes[state.selected]) || [];
    const body = el.tape;
    if (!reset && tapeShownTop !== null && tape.length && tape[0].trade_id >= tapeShownTop) {
      // Prepend what is new, newest on top; drop rows beyond MAX_TAPE.
      let n = 0;
      while (n < tape.length && tape[n].trade_id > tapeShownTop) n++;
      if (n === 0) return;
      const frag = document.createDocumentFragment();
      for (let i = 0; i < n; i++) frag.appendChild(tapeRow(tape[i], true));
      body.insertBefore(frag, body.firstChild);
      while (body.childElementCount > MAX_TAPE) body.lastElementChild.remove();
    } else {
      const frag = document.createDocumentFragment();
      for (const p of tape) frag.appendChild(tapeRow(p, false));
      body.textContent = "";
      body.appendChild(frag);
    }
    tapeShownTop = tape.length ? tape[0].trade_id : null;
  }

  function addPrints(sym, q) {
    let tape = state.tapes[sym];
    if (!tape) tape = state.tapes[sym] = [];
    const prints = q.prints || [];
    let top = tape.length ? tape[0].trade_id : -Infinity;
    let added = 0;
    for (const p of prints) {          // oldest first
      if (p.trade_id > top) {
        tape.unshift(p);
        top = p.trade_id;
        added++;
      }
    }
    if (tape.length > MAX_TAPE) tape.length = MAX_TAPE;
    if (added && sym === state.selected) dirty.tape = true;
  }

  // ---------------------------------------------------------------- bars (model)
  function symBars(sym) {
    let b = state.bars[sym];
    if (!b) b = state.bars[sym] = { "1s": {}, "1m": {} };
    return b;
  }
  function capBars(store, cap) {
    const keys = Object.keys(store);
    if (keys.length <= cap * 1.1) return;
    keys.sort((x, y) => { const a = BigInt(x), b = BigInt(y); return a < b ? -1 : a > b ? 1 : 0; });
    for (let i = 0; i < keys.length - cap; i++) delete store[keys[i]];
  }
  /* Upsert a symbol's bars, keyed by the exact text of their start; a bar with fewer trades than the one
     held comes from a ticker that is behind (after a failover) and is not taken. */
  function putBars(sym, barsByIv) {
    const b = symBars(sym);
    const taken = {};
    for (const iv of Object.keys(barsByIv || {})) {
      const list = barsByIv[iv];
      if (!Array.isArray(list)) continue;
      const store = b[iv] || (b[iv] = {});
      const keep = taken[iv] = [];
      for (const bar of list) {
        const key = nsText(bar, "start"), old = store[key];
        if (old && (old.trades || 0) > (bar.trades || 0)) continue;
        store[key] = bar;
        keep.push(bar);
      }
      if (LIVE_CAP[iv]) capBars(store, LIVE_CAP[iv]);
    }
    if (sym === state.selected) chartLive(taken);
  }

  /* The 5m bar of bucket `start` (a BigInt, ns), folded from the 1m bars we hold. */
  function fold5m(sym, start) {
    const m = symBars(sym)["1m"];
    let out = null;
    for (let k = 0n; k < 5n; k++) {
      const bar = m[String(start + k * NS_1M)];
      if (!bar) continue;
      if (!out) {
        out = { start: Number(start), start_ns: String(start), open: bar.open, high: bar.high, low: bar.low,
                close: bar.close, volume: bar.volume, trades: bar.trades || 0 };
      } else {
        if (Number(bar.high) > Number(out.high)) out.high = bar.high;
        if (Number(bar.low) < Number(out.low)) out.low = bar.low;
        out.close = bar.close;
        out.volume += bar.volume;
        out.trades += bar.trades || 0;
      }
    }
    return out;
  }
  /* The start (BigInt, ns) of the 5m bucket of a 1m bar's exact start text. */
  function bucket5m(text) {
    const s = BigInt(text), r = s % NS_5M;
    return s - (r < 0n ? r + NS_5M : r);
  }

  // ---------------------------------------------------------------- chart
  const chart = {
    symbol: null, interval: null, map: new Map(), req: 0, loading: false, error: null,
    dirty: false, timer: null, lastDraw: 0, cost: 0, revision: 0, lastBar: null, plotted: false,
  };

  /* The chart's series: bars keyed by their start in ms (exact: bars start on whole seconds, below 2^53). */
  function chartPut(bar) {
    const key = msOf(bar, "start");
    if (chart.interval === "5m") {
      const old = chart.map.get(key);
      // A bucket folded from fewer 1m bars than the history holds must not hide the history's.
      if (old && (old.trades || 0) > (bar.trades || 0)) return;
    }
    chart.map.set(key, bar);
  }

  /* Fold live bars of the selected symbol into the chart's series. */
  function chartLive(barsByIv) {
    if (!chart.symbol || chart.symbol !== state.selected) return;
    const iv = chart.interval;
    if (iv === "5m") {
      const list = barsByIv && barsByIv["1m"];
      if (!list || !list.length) return;
      const buckets = new Set(list.map((b) => bucket5m(nsText(b, "start"))));
      for (const s of buckets) { const f = fold5m(chart.symbol, s); if (f) chartPut(f); }
    } else {
      const list = barsByIv && barsByIv[iv];
      if (!list || !list.length) return;
      for (const b of list) chartPut(b);
    }
    scheduleChart();
  }

  /* Put every live bar we hold of the selected symbol into the chart's series. */
  function chartAllLive() {
    const sym = chart.symbol, iv = chart.interval;
    const b = symBars(sym);
    if (iv === "5m") {
      const buckets = new Set(Object.keys(b["1m"]).map((k) => bucket5m(k)));
      for (const s of buckets) { const f = fold5m(sym, s); if (f) chartPut(f); }
    } else {
      for (const k of Object.keys(b[iv] || {})) chartPut(b[iv][k]);
    }
  }

  function chartLoad() {
    const sym = state.selected, iv = state.interval;
    if (!sym) return;
    chart.symbol = sym;
    chart.interval = iv;
    chart.map = new Map();
    chart.lastBar = null;
    chart.loading = true;
    chart.error = null;
    const req = ++chart.req;
    exfab.chart.symbol = sym;
    exfab.chart.interval = iv;
    chartAllLive();        // draw what we hold at once; history fills in behind
    scheduleChart(true);
    let url = httpBase() + "history?symbol=" + encodeURIComponent(sym) + "&interval=" + encodeURIComponent(iv);
    if (iv === "1s") url += "&from=" + (BigInt(Date.now() - HISTORY_1S_WINDOW_MS) * 1000000n).toString();
    fetch(url, { cache: "no-store" })
      .then((r) => r.json().then((j) => {
        if (!r.ok) throw new Error((j && (j.text || j.error)) || "HTTP " + r.status);
        return j;
      }))
      .then((h) => {
        if (req !== chart.req) return;
        const live = chart.map;
        chart.map = new Map();
        for (const b of h.bars || []) chart.map.set(msOf(b, "start"), b);
        for (const b of live.values()) chartPut(b);   // live bars are newer: they win
        chart.loading = false;
        scheduleChart(true);
      })
      .catch((e) => {
        if (req !== chart.req) return;
        chart.loading = false;
        chart.error = "history: " + e.message;
        scheduleChart(true);
      });
  }

  function scheduleChart(now) {
    chart.dirty = true;
    if (chart.timer !== null) {
      if (!now) return;
      clearTimeout(chart.timer);
    }
    // At most 4 redraws a second, fewer when a redraw is slow: Plotly keeps under ~25% of the main thread.
    const gap = Math.min(2000, Math.max(CHART_MIN_MS, 4 * chart.cost));
    const wait = now ? 0 : Math.max(0, chart.lastDraw + gap - performance.now());
    chart.timer = setTimeout(() => {
      chart.timer = null;
      requestAnimationFrame(drawChart);
    }, wait);
  }

  function chartLayout(sym, iv, ref, lastClose, lastUp, xrange) {
    const info = state.info[sym] || {};
    const dp = decimals(info.tick || ref || "0.05");
    const shapes = [], annotations = [];
    const refV = num(ref);
    if (refV !== null) {
      shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: refV, y1: refV,
                    line: { color: COLORS.ref, width: 1, dash: "dash" }, layer: "below" });
      annotations.push({ xref: "paper", x: 0, xanchor: "left", yref: "y", y: refV, yanchor: "bottom",
                         text: "Prev close " + ref, showarrow: false,
                         font: { size: 10, color: COLORS.ref }, bgcolor: "rgba(11,14,19,0.7)" });
    }
    if (lastClose !== null) {
      const c = lastUp ? COLORS.up : COLORS.down;
      shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: Number(lastClose), y1: Number(lastClose),
                    line: { color: c, width: 1, dash: "dot" }, layer: "below" });
      annotations.push({ xref: "paper", x: 1, xanchor: "left", yref: "y", y: Number(lastClose), yanchor: "middle",
                         text: lastClose, showarrow: false, font: { size: 10, color: "#0b0e13" },
                         bgcolor: c, borderpad: 2 });
    }
    const axisCommon = {
      gridcolor: COLORS.grid, linecolor: COLORS.axis, zeroline: false, tickfont: { size: 10 },
    };
    return {
      paper_bgcolor: COLORS.bg, plot_bgcolor: COLORS.bg,
      font: { family: FONT, size: 11, color: COLORS.text },
      margin: { l: 6, r: 64, t: 24, b: 26 },   // t: the strip of the O/H/L/C/V legend (#chart-ohlc)
      showlegend: false, dragmode: "pan", hovermode: "x",
      hoverlabel: { bgcolor: "#161c25", bordercolor: "#2f3a49", font: { family: FONT, size: 11, color: "#dfe6ee" } },
      uirevision: sym + "/" + iv, datarevision: ++chart.revision,
      xaxis: Object.assign({}, axisCommon, {
        type: "date", anchor: "y2", rangeslider: { visible: false }, showspikes: true, spikemode: "across",
        spikesnap: "cursor", spikecolor: COLORS.spike, spikethickness: 1, spikedash: "dot",
        tickformatstops: TIME_TICKS, tickformat: "", hoverformat: iv === "1s" ? "%H:%M:%S" : "%H:%M",
        showline: true,
      }, xrange ? { range: xrange, autorange: false } : { autorange: true }),
      yaxis: Object.assign({}, axisCommon, {
        domain: [0.25, 1], side: "right", tickformat: "." + dp + "f", hoverformat: "." + dp + "f",
        showspikes: true, spikemode: "across", spikesnap: "cursor", spikecolor: COLORS.spike,
        spikethickness: 1, spikedash: "dot", automargin: false,
      }),
      yaxis2: Object.assign({}, axisCommon, {
        domain: [0, 0.2], side: "right", tickformat: "~s", showgrid: false, rangemode: "tozero",
        nticks: 3, automargin: false,
      }),
      shapes, annotations,
    };
  }

  function drawChart() {
    if (!chart.dirty) return;
    chart.dirty = false;
    chart.lastDraw = performance.now();
    const sym = chart.symbol, iv = chart.interval;
    if (!sym) return;
    if (!window.Plotly) {
      el.chartMsg.textContent = "Chart library not loaded";
      el.chartMsg.hidden = false;
      return;
    }
    let keys = Array.from(chart.map.keys()).sort((a, b) => a - b);
    if (keys.length > CHART_CAP[iv]) keys = keys.slice(keys.length - CHART_CAP[iv]);
    const n = keys.length;
    const ivMs = NS_PER[iv] / 1e6;
    // Plotly makes a candle as wide as the smallest gap between the trace's x values (1 ms for a lone bar,
    // ten minutes for two bars ten minutes apart), and a candlestick has no width of its own: an empty slot
    // one interval before the first bar keeps every candle one interval wide. The arrays start with it.
    const pad = n ? 1 : 0, m = n + pad;
    const x = new Array(m), o = new Array(m), h = new Array(m), l = new Array(m), c = new Array(m);
    const v = new Array(m), vc = new Array(m);
    if (pad) {
      x[0] = plotlyTime(keys[0] - ivMs);
      o[0] = h[0] = l[0] = c[0] = v[0] = null;
      vc[0] = COLORS.upVol;
    }
    for (let i = 0; i < n; i++) {
      const b = chart.map.get(keys[i]), j = i + pad;
      x[j] = plotlyTime(keys[i]);
      o[j] = Number(b.open); h[j] = Number(b.high); l[j] = Number(b.low); c[j] = Number(b.close);
      v[j] = b.volume;
      vc[j] = c[j] >= o[j] ? COLORS.upVol : COLORS.downVol;
    }
    const last = n ? chart.map.get(keys[n - 1]) : null;
    chart.lastBar = last;
    const info = state.info[sym] || {};
    const q = state.quotes[sym];
    const ref = (q && q.ref_price) || info.ref_price || null;
    const traces = [
      {
        type: "candlestick", name: sym, x, open: o, high: h, low: l, close: c, xaxis: "x", yaxis: "y",
        increasing: { line: { color: COLORS.up, width: 1 }, fillcolor: COLORS.upFill },
        decreasing: { line: { color: COLORS.down, width: 1 }, fillcolor: COLORS.downFill },
        whiskerwidth: 0, hoverinfo: "x+y",
      },
      {
        type: "bar", name: "Volume", x, y: v, width: 0.7 * ivMs,   // as wide as a candle's body
        xaxis: "x", yaxis: "y2", marker: { color: vc, line: { width: 0 } },
        hovertemplate: "Vol %{y:,}<extra></extra>",
      },
    ];
    // The time range is the page's, not Plotly's autorange: around one or two bars that spans a millisecond,
    // with ticks 0.2 ms apart. The bars drawn and half an interval either side, at least CHART_MIN_BARS
    // intervals wide, the newest bar on the right. (A user's zoom or pan is kept: uirevision.)
    let xrange = null;
    if (n) {
      const x1 = keys[n - 1] + ivMs / 2;
      xrange = [plotlyTime(Math.min(keys[0] - ivMs / 2, x1 - CHART_MIN_BARS * ivMs)), plotlyTime(x1)];
    }
    const layout = chartLayout(sym, iv, ref, last ? last.close : null,
                               last ? Number(last.close) >= Number(last.open) : true, xrange);
    const config = { displayModeBar: false, responsive: true, scrollZoom: true, displaylogo: false };
    const t0 = performance.now();
    Plotly.react(el.chart, traces, layout, config);
    const cost = performance.now() - t0;
    chart.cost = chart.cost ? 0.7 * chart.cost + 0.3 * cost : cost;
    chart.plotted = true;
    exfab.chart.bars = n;
    exfab.chart.draws++;
    if (chart.error && !n) {
      el.chartMsg.textContent = chart.error;
      el.chartMsg.hidden = false;
    } else if (!n) {
      el.chartMsg.textContent = chart.loading ? "Loading…" : "No trades yet";
      el.chartMsg.hidden = false;
    } else {
      el.chartMsg.hidden = true;
    }
    dirty.selHead = true;
    markDirty();
  }

  function setIntervalButton(iv) {
    if (!NS_PER[iv] || iv === state.interval) return;
    state.interval = iv;
    exfab.interval = iv;
    try { localStorage.setItem("exfab.interval", iv); } catch (_) { /* private mode */ }
    for (const b of el.intervals.querySelectorAll("button")) b.classList.toggle("active", b.dataset.interval === iv);
    chartLoad();
  }

  // ---------------------------------------------------------------- messages
  function applyHello(msg) {
    state.helloCount++;
    if (msg.exchange || msg.name) {
      state.name = String(msg.exchange || msg.name);
      el.name.textContent = state.name;
      if (state.name !== "exchange-fabric") el.brandSub.textContent = "exchange-fabric · Market data";
    }
    if (msg.heartbeat_s) state.heartbeatS = Number(msg.heartbeat_s) || 1.0;
    if (Array.isArray(msg.tickers) && msg.tickers.length) {
      state.tickers = msg.tickers.filter((t) => t && typeof t.ws === "string");
      state.tickerAt = state.tickers.findIndex((t) => t.name === msg.ticker);
    }
    if (state.home === null && msg.ticker) state.home = msg.ticker;
    exfab.ticker = msg.ticker || null;
    state.qseq = {};   // a new connection: its ticker's numbers
    state.sseq = {};
    state.marketFresh = state.indexFresh = true;   // the next market and index objects stand, whatever their seq
    // The market's state, the index and the halts as they stand now (each object's seq is this ticker's).
    if (msg.market) applyMarket(msg.market);
    if (msg.index) applyIndex(msg.index);
    for (const sym of Object.keys(state.halts)) delete state.halts[sym];
    for (const o of Array.isArray(msg.halted) ? msg.halted : []) applyState(o, true);
    const list = Array.isArray(msg.symbols) ? msg.symbols.map((s) => (typeof s === "string" ? { symbol: s } : s)) : [];
    const same = list.length === state.symbols.length && list.every((s, i) => s.symbol === state.symbols[i].symbol);
    state.symbols = list;
    state.info = {};
    for (const s of list) state.info[s.symbol] = s;
    if (!same) buildWatch();
    backoff = BACKOFF_MIN_MS;
    send({ op: "subscribe", symbols: "*", channels: ["quote", "depth", "bars"] });
    const want = symbolFromHash() || (state.selected && state.info[state.selected] ? state.selected : null) ||
      (list.length ? list[0].symbol : null);
    if (want !== state.selected) select(want);
    else if (state.helloCount > 1 && want) chartLoad();   // reconnected: refill what we missed
  }

  /* How quote q stands against the one held, whichever ticker each came from: "newer" (or the same trades),
     "stale" (older: a lower trade id, a last trade not later) or "reset" (the symbol's session started over:
     a lower trade id but a later last trade, or no trade after some). The same rule as the Python client's
     fabric.marketdata.quote_order. */
  function quoteOrder(held, q) {
    if (!held || typeof held.trade_id !== "number" || typeof q.trade_id !== "number" || q.trade_id >= held.trade_id) {
      return "newer";
    }
    if (q.trade_id === 0 || q.trades === 0) return "reset";
    try {
      if (BigInt(nsText(q, "last_ts")) > BigInt(nsText(held, "last_ts"))) return "reset";
    } catch (_) { /* no times to compare */ }
    return "stale";
  }

  function resetSymbol(sym) {
    state.tapes[sym] = [];
    state.bars[sym] = { "1s": {}, "1m": {} };
    if (sym === state.selected) { dirty.tapeReset = true; chartLoad(); }
  }

  function applyQuote(sym, q, snapshot) {
    // seq orders the messages of this connection's ticker; a snapshot sets where it stands.
    const last = state.qseq[sym];
    if (!snapshot && last && q.seq && q.seq <= last) return;
    if (q.seq) state.qseq[sym] = q.seq;
    const order = quoteOrder(state.quotes[sym], q);
    if (order === "stale") return;      // from a ticker behind the one the page had it from
    if (order === "reset") resetSymbol(sym);
    else if (snapshot) {
      // A snapshot carries the last 50 trades: the tape restarts from them.
      state.tapes[sym] = [];
      if (sym === state.selected) dirty.tapeReset = true;
    }
    state.quotes[sym] = q;
    addPrints(sym, q);
    dirty.rows.add(sym);
    dirty.stats = true;
    if (sym === state.selected) dirty.selHead = true;
  }

  function applyDepth(sym, d, force) {
    const prev = state.depth[sym];
    if (!force && prev && d.seq && prev.seq && d.seq <= prev.seq) return;
    state.depth[sym] = d;
    if (sym === state.selected) dirty.depth = true;
  }

  /* A halt in words: who, why, until when (local time). */
  function haltWords(o) {
    const who = o.reason === "circuit_breaker" ? "circuit breaker" : o.reason === "operator" ? "by the operator" :
      (o.reason || "");
    const until = o.until !== null && o.until !== undefined ? "resumes at " + timeOfMs(msOf(o, "until"), false)
      : "until resumed";
    return [o.text || "", who, until].filter((x) => x).join(" · ");
  }

  // A symbol's trading state (seq orders one connection's; a snapshot's stands).
  function applyState(o, snapshot) {
    const sym = o.symbol;
    if (!sym) return;
    const last = state.sseq[sym];
    if (!snapshot && last && o.seq && o.seq <= last) return;
    if (o.seq) state.sseq[sym] = o.seq;
    if (o.state === "halted") state.halts[sym] = o;
    else delete state.halts[sym];
    dirty.rows.add(sym);
  }

  const PHASE_WORDS = {pre_open: "Pre-open", auction: "Call auction", continuous: "Continuous",
                       closing: "Closing", closed: "Closed"};

  function applyMarket(o) {
    if (state.market && o.seq && state.market.seq && o.seq < state.market.seq && !state.marketFresh) return;
    state.marketFresh = false;
    state.market = exfab.market = o;
    const halted = o.state === "halted";
    el.haltBanner.hidden = !halted;
    if (halted) el.haltText.textContent = haltWords(o);
    // The trading day's phase (null: a market without a calendar, continuous all day).
    el.phaseStat.hidden = !o.phase;
    if (o.phase) {
      el.phaseValue.textContent = o.phase === "closing" && o.entry ? "Closing session" : PHASE_WORDS[o.phase] || o.phase;
    }
  }

  function applyIndex(o) {
    if (state.index && o.seq && state.index.seq && o.seq < state.index.seq && !state.indexFresh) return;
    state.indexFresh = false;
    state.index = exfab.index = o;
    el.indexStat.hidden = false;
    el.indexName.textContent = o.name;
    el.indexValue.textContent = o.value;
    el.indexChange.textContent = signed(o.change) + " (" + signed(o.change_pct) + "%)";
    el.indexChange.classList.remove("up", "down", "flat");
    el.indexChange.classList.add(dirClass(num(o.change) || 0));
  }

  function applySnapshotOf(sym, snap) {
    if (!sym) return;
    if (snap.state) applyState(snap.state, true);
    if (snap.quote) applyQuote(sym, snap.quote, true);
    if (snap.depth) applyDepth(sym, snap.depth, true);
    if (snap.bars) putBars(sym, snap.bars.bars || snap.bars);
  }

  function handle(msg) {
    state.updates++;
    exfab.updates = state.updates;
    switch (msg.t) {
      case "hello": applyHello(msg); break;
      case "snapshot":
        if (msg.symbol) applySnapshotOf(msg.symbol, msg);
        else if (msg.symbols && typeof msg.symbols === "object") {
          for (const s of Object.keys(msg.symbols)) applySnapshotOf(s, msg.symbols[s]);
        }
        break;
      case "quote": applyQuote(msg.symbol, msg, false); break;
      case "depth": applyDepth(msg.symbol, msg, false); break;
      case "bars": putBars(msg.symbol, msg.bars); break;
      case "state": applyState(msg, false); break;
      case "market": applyMarket(msg); break;
      case "index": applyIndex(msg); break;
      case "heartbeat":
        state.lastHeartbeatMs = msOf(msg, "ts");
        state.lastHeartbeatAt = performance.now();
        renderStatus();
        break;
      case "error":
        showBanner("Ticker error" + (msg.reason ? " (" + msg.reason + ")" : "") + (msg.text ? ": " + msg.text : ""));
        exfab.errors.push(msg);
        break;
      default: break;   // pong and anything newer
    }
    markDirty();
  }

  // ---------------------------------------------------------------- WebSocket
  let ws = null;
  let backoff = BACKOFF_MIN_MS;
  let reconnectAt = 0;
  let reconnectTimer = null;
  // batch=1: every message is a JSON array of the objects pending for us at one wake-up of the ticker
  // (docs/market-data.md, section 4), in order: one message and one parse for many updates.
  const homeUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws?batch=1";
  let wsUrl = homeUrl;

  /* The ticker followed, or null while the page has not heard of its tickers (or follows the one that served it:
     reached through the page's own address). */
  function away() {
    const t = state.tickers[state.tickerAt];
    return t && t.name !== state.home ? t : null;
  }
  function httpBase() {
    const t = away();
    return t && typeof t.http === "string" ? t.http : "/";
  }
  /* Leave the ticker followed for the next one of the market (when there is another). */
  function nextTicker() {
    if (state.tickers.length < 2) return false;
    state.tickerAt = (state.tickerAt + 1) % state.tickers.length;
    state.failovers++;
    exfab.failovers = state.failovers;
    const t = away();
    wsUrl = t ? t.ws + (t.ws.indexOf("?") < 0 ? "?" : "&") + "batch=1" : homeUrl;
    el.footEndpoint.textContent = wsUrl;
    return true;
  }

  function send(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
  }

  function connect() {
    reconnectTimer = null;
    setConnected(false, "connecting");
    let sock;
    try {
      sock = new WebSocket(wsUrl);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    sock.onopen = () => { if (ws === sock) setConnected(true); };
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      state.lastMessageAt = performance.now();
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      if (Array.isArray(msg)) {
        for (const m of msg) if (m && typeof m === "object") handle(m);
      } else if (msg && typeof msg === "object") handle(msg);
    };
    sock.onclose = () => {
      if (ws !== sock) return;
      ws = null;
      const was = state.connected;
      setConnected(false);
      // Another ticker: go there at once after a live connection dropped, else after the pause.
      scheduleReconnect(nextTicker() && was);
    };
    sock.onerror = () => { /* a close follows */ };
  }

  /* A ticker whose connection stays open but sends nothing (a hung process, a network that drops without a
     reset) is left as one that closed. */
  function checkSilence() {
    if (!ws || !state.connected || state.tickers.length < 2) return;
    const heard = Math.max(state.lastHeartbeatAt, state.lastMessageAt);
    if (performance.now() - heard <= SILENCE_HEARTBEATS * 1000 * state.heartbeatS) return;
    const sock = ws;
    ws = null;
    sock.onclose = null;
    try { sock.close(); } catch (_) { /* closing anyway */ }
    setConnected(false);
    scheduleReconnect(nextTicker());
  }

  function scheduleReconnect(now) {
    if (reconnectTimer !== null) return;
    const wait = now ? 0 : backoff;
    if (!now) backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    reconnectAt = performance.now() + wait;
    reconnectTimer = setTimeout(connect, wait);
    renderStatus();
  }

  function setConnected(on, phase) {
    state.connected = on;
    exfab.connected = on;
    if (on) state.lastHeartbeatAt = performance.now();
    state.phase = phase || (on ? "connected" : "reconnecting");
    renderStatus();
  }

  function renderStatus() {
    let cls, text;
    if (state.connected) {
      const stale = performance.now() - state.lastHeartbeatAt > 3000 * state.heartbeatS;
      cls = stale ? "status-stale" : "status-live";
      text = stale ? "Connected · no heartbeat" : "Connected";
    } else if (state.phase === "connecting") {
      cls = "status-connecting";
      text = "Connecting…";
    } else {
      cls = "status-down";
      const s = Math.max(0, (reconnectAt - performance.now()) / 1000);
      text = "Reconnecting in " + s.toFixed(1) + " s";
    }
    el.status.className = "status " + cls;
    if (el.statusText.textContent !== text) el.statusText.textContent = text;
    const hb = state.lastHeartbeatMs !== null ? "heartbeat " + timeOfMs(state.lastHeartbeatMs, false) : "";
    if (el.statusHb.textContent !== hb) el.statusHb.textContent = hb;
  }

  // ---------------------------------------------------------------- banner
  let bannerTimer = null;
  function showBanner(text) {
    el.bannerText.textContent = text;
    el.banner.hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => { el.banner.hidden = true; }, BANNER_MS);
  }

  // ---------------------------------------------------------------- clock and rates
  let lastUpdates = 0;
  const dateFmt = new Intl.DateTimeFormat("en-GB", { weekday: "short", day: "2-digit", month: "short", year: "numeric" });
  function tick() {
    const d = new Date();
    el.clockTime.textContent = pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
    const date = dateFmt.format(d);
    if (el.clockDate.textContent !== date) el.clockDate.textContent = date;
    const rate = state.updates - lastUpdates;
    lastUpdates = state.updates;
    el.footRate.textContent = intFmt.format(rate);
    checkSilence();
    renderStatus();
  }
  function startClock() {
    tick();
    // Tick on the second boundary.
    setTimeout(() => { tick(); setInterval(tick, 1000); }, 1000 - (Date.now() % 1000));
    // The reconnect countdown needs a faster refresh than the clock.
    setInterval(() => { if (!state.connected) renderStatus(); }, 100);
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    try {
      const iv = localStorage.getItem("exfab.interval");
      if (iv && NS_PER[iv]) state.interval = exfab.interval = iv;
    } catch (_) { /* private mode */ }
    for (const b of el.intervals.querySelectorAll("button")) {
      b.classList.toggle("active", b.dataset.interval === state.interval);
      b.addEventListener("click", () => setIntervalButton(b.dataset.interval));
    }
    el.watchBody.addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-symbol]");
      if (tr) select(tr.dataset.symbol);
    });
    document.addEventListener("keydown", (ev) => {
      if (ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA")) return;
      if (ev.key === "ArrowDown") { moveSelection(1); ev.preventDefault(); }
      else if (ev.key === "ArrowUp") { moveSelection(-1); ev.preventDefault(); }
    });
    window.addEventListener("hashchange", () => { const s = symbolFromHash(); if (s) select(s, true); });
    el.bannerClose.addEventListener("click", () => { el.banner.hidden = true; });
    if (window.ResizeObserver) {
      new ResizeObserver(() => { if (chart.plotted && window.Plotly) Plotly.Plots.resize(el.chart); })
        .observe(el.chart.parentElement);
    }
    el.footEndpoint.textContent = wsUrl;
    try { el.footTz.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "local"; } catch (_) { el.footTz.textContent = "local"; }
    buildDepth();
    startClock();
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
