/* marketflow dashboard.
 *
 * Polls the public JSON routes about once a second (one poll at a time, backing off on errors) and draws
 * with plain SVG and tables: no third-party code, no build step. Prices and amounts are shown exactly as
 * the API sends them (decimal strings); numbers are only parsed to place things on screen.
 * A read key, when the server asks for one, lives in this tab's sessionStorage and travels in the
 * Authorization header, never in a URL.
 */
"use strict";

(() => {
  const KEY_STORAGE = "marketflow.apiKey";
  const POLL_MS = 1000;
  const MAX_BACKOFF_MS = 15000;
  const REQUEST_TIMEOUT_MS = 8000;
  const MARKETS_EVERY_MS = 30000;
  const CANDLES = 60;
  const FOOTPRINT_BARS = 6;
  const FOOTPRINT_ROWS = 24;
  const BOOK_DEPTH = 12;
  const BOOK_DEPTH_NARROW = 7;
  const TAPE_ROWS = 16;
  const SVGNS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  const state = {
    markets: [],
    assets: [],
    marketsAt: 0,
    sel: null,
    interval: "1m",
    failures: 0,
    authNeeded: false,
    shown: false,
    last: null,
    wake: null,
  };

  // -- the key ------------------------------------------------------------------------------------------

  function getKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE);
    } catch (_) {
      return null;
    }
  }

  function setKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      /* storage disabled: the key lasts as long as nothing; the form asks again */
    }
    $("forget-key").hidden = !getKey();
  }

  // -- HTTP -----------------------------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.detail) || "HTTP " + status);
      this.status = status;
      this.code = body && body.error;
    }
  }

  class NetError extends Error {}

  function fatal(err) {
    // Auth and an unreachable server stop the whole poll; anything else is one pane's problem.
    return err instanceof NetError || (err instanceof HttpError && (err.status === 401 || err.status === 403));
  }

  async function api(path, params) {
    const url = new URL(path, document.baseURI);
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    const headers = { Accept: "application/json" };
    const key = getKey();
    if (key) headers.Authorization = "Bearer " + key;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    try {
      let response;
      try {
        response = await fetch(url, {
          headers,
          signal: abort.signal,
          cache: "no-store",
          credentials: "omit",
          redirect: "error",
        });
      } catch (err) {
        const why = abort.signal.aborted ? "no answer within " + REQUEST_TIMEOUT_MS / 1000 + " s" : err.message;
        throw new NetError(String(why || err));
      }
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      if (!response.ok) throw new HttpError(response.status, body);
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Every request of a step at once; waits for all (no request outlives its poll), throws a fatal one. */
  async function all(requests) {
    const settled = await Promise.allSettled(requests);
    for (const s of settled) if (s.status === "rejected" && fatal(s.reason)) throw s.reason;
    return settled.map((s) => (s.status === "fulfilled" ? { value: s.value } : { error: s.reason }));
  }

  // -- exact decimals (strings in, strings out) -------------------------------------------------------------

  function parseDec(text) {
    const neg = text.startsWith("-");
    const [int, frac = ""] = (neg ? text.slice(1) : text).split(".");
    return { units: BigInt(int + frac) * (neg ? -1n : 1n), scale: frac.length };
  }

  function decSub(a, b) {
    const x = parseDec(a);
    const y = parseDec(b);
    const scale = Math.max(x.scale, y.scale);
    const diff = x.units * 10n ** BigInt(scale - x.scale) - y.units * 10n ** BigInt(scale - y.scale);
    const neg = diff < 0n;
    let digits = (neg ? -diff : diff).toString().padStart(scale + 1, "0");
    if (scale) digits = digits.slice(0, -scale) + "." + digits.slice(-scale);
    return (neg ? "-" : "") + digits;
  }

  /** "1.230000" -> "1.23", "5.000" -> "5": the same number, shorter. */
  function trim(text) {
    if (typeof text !== "string" || !text.includes(".")) return text;
    return text.replace(/0+$/, "").replace(/\.$/, "");
  }

  function decimals(text) {
    const dot = text.indexOf(".");
    return dot < 0 ? 0 : text.length - dot - 1;
  }

  // -- DOM helpers ------------------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function s(tag, attrs, parent) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, String(value));
    }
    if (parent) parent.append(node);
    return node;
  }

  function setText(id, text, cls) {
    const node = $(id);
    node.textContent = text === undefined || text === null || text === "" ? "–" : text;
    if (cls !== undefined) node.className = cls;
    return node;
  }

  function showEmpty(id, message, bad) {
    const node = $(id);
    node.hidden = !message;
    node.textContent = message || "";
    node.classList.toggle("bad", Boolean(bad));
  }

  function paneError(err) {
    return (err && err.message) || "this part could not be loaded";
  }

  function hhmm(iso) {
    return iso.slice(11, 16);
  }

  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 120) return seconds.toFixed(1) + " s";
    return Math.round(seconds / 60) + " min";
  }

  // -- connection state, banner, auth -------------------------------------------------------------------------

  function setConn(text, cls) {
    const pill = $("conn");
    pill.textContent = text;
    pill.className = "pill " + (cls || "");
  }

  function banner(text, cls) {
    const node = $("banner");
    node.hidden = !text;
    node.textContent = text || "";
    node.className = "banner " + (cls || "");
  }

  function showAuth(message) {
    state.authNeeded = true;
    $("auth").hidden = false;
    $("main").hidden = true;
    $("controls").hidden = true;
    state.shown = false;
    banner("");
    setConn("key needed", "warn");
    $("auth-message").textContent = message || "";
    $("key-input").focus();
  }

  function onAuthError(err) {
    const hadKey = Boolean(getKey());
    setKey(null);
    if (!hadKey) showAuth("");
    else if (err.status === 403) showAuth("That key may not read market data: " + err.message + ".");
    else showAuth("That key was not accepted: " + err.message + ".");
  }

  // -- the poll loop ---------------------------------------------------------------------------------------

  function sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        state.wake = null;
        resolve();
      }
      state.wake = done;
    });
  }

  function wake() {
    if (state.wake) state.wake();
  }

  async function loop() {
    for (;;) {
      let delay = POLL_MS;
      if (document.hidden) {
        setConn("paused (tab hidden)", "");
        delay = 60000;
      } else if (!state.authNeeded) {
        try {
          await poll();
          state.failures = 0;
        } catch (err) {
          delay = failed(err);
        }
      } else {
        delay = 60000;
      }
      await sleep(delay);
    }
  }

  function failed(err) {
    if (err instanceof HttpError && (err.status === 401 || err.status === 403)) {
      onAuthError(err);
      return POLL_MS;
    }
    state.failures += 1;
    const delay = Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** state.failures);
    const why = err instanceof NetError ? "cannot reach the marketflow daemon (" + err.message + ")" : err.message;
    banner("Connection problem: " + why + ". Retrying in " + Math.round(delay / 1000) + " s.", "bad");
    setConn("offline", "bad");
    $("main").classList.add("stale");
    if (!(err instanceof NetError) && !(err instanceof HttpError)) console.error(err);
    return delay;
  }

  async function loadMarkets() {
    const body = await api("markets");
    state.marketsAt = Date.now();
    const markets = body.markets || [];
    // Rebuilding the list would close it under the user's finger: only when it changed.
    if (state.sel && JSON.stringify(markets) === JSON.stringify(state.markets)) return;
    state.markets = markets;
    const select = $("market");
    const wanted = !state.sel ? fromHash() : state.sel.asset ? "asset/" + state.sel.asset : state.sel.exchange + "/" + state.sel.symbol;
    select.textContent = "";
    // One "all venues" choice per asset (the base of the normalized symbols), then every market.
    state.assets = [...new Set(markets.map((m) => m.symbol.split("-")[0]))].sort();
    state.assets.forEach((asset) => {
      select.append(h("option", { value: "asset:" + asset, text: asset + " · all venues" }));
    });
    state.markets.forEach((m, i) => {
      const label = m.exchange + " " + m.market + " · " + m.symbol;
      select.append(h("option", { value: String(i), text: label }));
    });
    select.disabled = state.markets.length === 0;
    if (wanted.startsWith("asset/") && state.assets.includes(wanted.slice(6))) {
      state.sel = assetChoice(wanted.slice(6));
      select.value = "asset:" + state.sel.asset;
      return;
    }
    let index = state.markets.findIndex((m) => m.exchange + "/" + m.symbol === wanted);
    if (index < 0) index = Math.max(0, state.markets.findIndex((m) => (m.channels || []).includes("book")));
    state.sel = state.markets[index] || null;
    if (state.sel) select.value = String(index);
  }

  /** The selection "one asset on every venue" (SPEC §15), shaped like a market for the shared drawing code. */
  function assetChoice(asset) {
    return { asset, exchange: "all venues", market: "", symbol: asset, channels: [] };
  }

  function choose(value) {
    if (value.startsWith("asset:")) return assetChoice(value.slice(6));
    return state.markets[Number(value)] || null;
  }

  /** Epoch milliseconds just after the newest trade of a `collectors/trades` answer (newest first), as the
   * exclusive `until` of the chart queries; undefined (the server's clock) without trades. */
  function newestTradeMs(trades) {
    const newest = trades && trades.value && trades.value.trades && trades.value.trades[0];
    const ms = newest ? Date.parse(newest.ts) : NaN;
    return Number.isFinite(ms) ? String(ms + 1) : undefined;
  }

  function fromHash() {
    const parts = decodeURIComponent(location.hash.slice(1)).split("/");
    if (parts.length >= 3 && ["1m", "5m", "1h"].includes(parts[2])) {
      state.interval = parts[2];
      $("interval").value = parts[2];
    }
    return parts.length >= 2 ? parts[0] + "/" + parts[1] : "";
  }

  function toHash() {
    if (!state.sel) return;
    const head = state.sel.asset ? ["asset", state.sel.asset] : [state.sel.exchange, state.sel.symbol];
    const hash = "#" + [...head, state.interval].join("/");
    history.replaceState(null, "", hash);
  }

  async function poll() {
    if (!state.markets.length || Date.now() - state.marketsAt > MARKETS_EVERY_MS) await loadMarkets();
    const m = state.sel;
    const interval = state.interval;
    const q = m ? (m.asset ? { asset: m.asset } : { exchange: m.exchange, symbol: m.symbol }) : null;
    const hasBook = Boolean(m && (m.channels || []).includes("book"));
    const channels = (m && m.channels) || [];
    const hasTicker = channels.includes("ticker") || channels.includes("derivatives");
    const where = m && encodeURIComponent(m.exchange) + "/" + encodeURIComponent(m.symbol);
    const [status, book, trades, ticker] = await all([
      api("collectors/status"),
      hasBook ? api("book/" + where, { depth: BOOK_DEPTH }) : null,
      q && !m.asset ? api("collectors/trades", { ...q, limit: TAPE_ROWS }) : null,
      hasTicker ? api("ticker/" + where) : null,
    ]);
    // The charts end at the newest trade, not at the clock: replayed or historical data (trades older than
    // the candle window before now) is drawn too. Live, the newest trade is now anyway.
    const until = m && m.asset ? undefined : newestTradeMs(trades);
    const [candles] = await all([q ? api("candles", { ...q, interval, limit: CANDLES, until }) : null]);
    const bars = (candles.value && candles.value.candles) || [];
    let profile = {};
    let flow = {};
    let footprint = {};
    if (q && bars.length) {
      const since = bars[0].start;
      const fpSince = bars[Math.max(0, bars.length - FOOTPRINT_BARS)].start;
      [profile, flow, footprint] = await all([
        api("volume-profile", { ...q, since, until }),
        api("order-flow", { ...q, interval, since, until }),
        m.asset ? null : api("order-flow", { ...q, interval, since: fpSince, until, footprint: "true" }),
      ]);
      profile.since = since;
    }
    // One asset: open interest and funding of every contract market, and their liquidations in the window.
    let derivs = null;
    let liqs = null;
    if (m && m.asset) {
      const since = bars.length ? bars[0].start : undefined;
      [derivs, liqs] = await all([
        api("derivatives", { asset: m.asset, limit: 1 }),
        api("liquidations", { asset: m.asset, since, until, limit: 1000 }),
      ]);
    }
    if (m !== state.sel || interval !== state.interval) return; // switched meanwhile: the next poll draws
    if (status.error) throw status.error;
    state.last = { m, hasBook, status: status.value, book, candles, trades, profile, flow, footprint, ticker, derivs, liqs };
    render(state.last);
    if (!state.shown) {
      $("auth").hidden = true;
      $("main").hidden = false;
      $("controls").hidden = false;
      state.shown = true;
      render(state.last); // again, now that the chart has a width
    }
    const warning = feedWarning(state.last);
    banner(warning, "warn");
    $("main").classList.remove("stale");
    if (warning) setConn("feed down", "warn");
    else setConn("live", "live");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString() + " · ";
  }

  // -- rendering --------------------------------------------------------------------------------------------

  function render(d) {
    renderFeeds(d.status);
    if (!d.m) {
      showEmpty("chart-empty", "No markets are configured: add [[feeds]] to the configuration.");
      return;
    }
    const venues = Boolean(d.m.asset);
    $("main").classList.toggle("all-venues", venues);
    for (const id of ["ladder-card", "tape-card", "footprint-card"]) $(id).hidden = venues;
    $("venues-card").hidden = !venues;
    if (venues) {
      renderChart(d);
      renderVenues(d);
      renderSummary(d);
      return;
    }
    renderLadder(d);
    renderTape(d.trades);
    renderChart(d);
    renderFootprint(d);
    renderSummary(d);
  }

  function feedActors(status) {
    return (status.actors || []).filter((a) => a.feed);
  }

  function feedWarning(d) {
    if (!d.m) return "";
    const mine = feedActors(d.status).filter((a) => a.feed.exchange === d.m.exchange && a.feed.market === d.m.market);
    const down = mine.filter((a) => a.feed.state !== "streaming" || a.circuit !== "closed");
    if (!down.length) return "";
    return down
      .map((a) => {
        const why = a.feed.state + (a.circuit !== "closed" ? ", circuit " + a.circuit.replace("_", "-") : "");
        const err = a.feed.last_error || a.last_error;
        return "Feed " + a.name + " is " + why + (err ? " (" + err + ")" : "") + ": " + d.m.symbol + " may be stale.";
      })
      .join(" ");
  }

  function bookStats(status) {
    const books = (status.actors || []).find((a) => a.name === "books");
    return (books && books.statistics && books.statistics.books) || {};
  }

  function feedHealth(actor) {
    const f = actor.feed;
    if (actor.circuit !== "closed" || ["failed", "circuit_open", "stopped"].includes(actor.state)) return "bad";
    if (f.state === "down") return "bad";
    if (f.state !== "streaming" || (f.last_message_age_s !== null && f.last_message_age_s > 10)) return "warn";
    return "ok";
  }

  function renderFeeds(status) {
    const body = $("feeds");
    const actors = feedActors(status);
    const books = bookStats(status);
    setText("daemon-status", "· daemon " + (status.status || "?"));
    body.textContent = "";
    for (const a of actors) {
      const f = a.feed;
      let resyncs = 0;
      for (const m of state.markets) {
        const book = m.exchange === f.exchange && m.market === f.market && books[m.exchange + ":" + m.symbol];
        resyncs += (book && book.resyncs) || 0;
      }
      const health = feedHealth(a);
      const rate = f.msgs_per_s === null ? "–" : f.msgs_per_s.toFixed(1);
      const stateCell = h("td", {}, h("span", { class: "state " + health, text: f.state }));
      const err = f.last_error || a.last_error;
      if (err && health !== "ok") stateCell.append(h("div", { class: "err", text: err }));
      const row = h(
        "tr",
        { "data-testid": "feed-row", "data-feed": a.name, "data-state": f.state, class: health === "bad" && "row-bad" },
        h("td", { text: a.name }),
        stateCell,
        h("td", { class: "num", "data-testid": "feed-rate", text: rate }),
        h("td", { class: "num", "data-testid": "feed-age", text: fmtAge(f.last_message_age_s) }),
        h("td", {}, h("span", { class: "state " + (a.circuit === "closed" ? "ok" : "bad"), text: a.circuit })),
        h("td", { class: "num", text: String(a.restarts) }),
        h("td", { class: "num", text: String(Math.max(0, (f.connects || 0) - 1)) }),
        h("td", { class: "num", text: String(resyncs) }),
      );
      body.append(row);
    }
    showEmpty("feeds-empty", actors.length ? "" : "No feeds are running: add [[feeds]] to the configuration.");
  }

  function renderSummary(d) {
    const bars = (d.candles.value && d.candles.value.candles) || [];
    const trades = (d.trades && d.trades.value && d.trades.value.trades) || [];
    const last = trades.length ? trades[0].price : bars.length ? bars[bars.length - 1].close : null;
    setText("s-last", last);
    const book = d.book && d.book.value;
    const bid = book && book.bids.length ? book.bids[0][0] : null;
    const ask = book && book.asks.length ? book.asks[0][0] : null;
    setText("s-bid", bid);
    setText("s-ask", ask);
    setText("s-spread", bid && ask ? trim(decSub(ask, bid)) : null);
    const p = d.profile.value;
    const poc = setText("s-poc", p && p.poc);
    poc.dataset.since = d.profile.since || "";
    setText("s-va", p && p.val !== null && p.vah !== null ? p.val + " – " + p.vah : null);
    const count = bars.reduce((n, b) => n + b.trades, 0);
    const tc = setText("s-trades", bars.length ? count.toLocaleString("en-US") : "0");
    tc.dataset.count = String(count);
    tc.title = "trades in the " + bars.length + " bars shown";
    const flow = (d.flow.value && d.flow.value.bars) || [];
    const cvd = flow.length ? trim(flow[flow.length - 1].cvd) : null;
    setText("s-cvd", cvd, cvd === null ? "" : cvd.startsWith("-") ? "neg" : "pos");
    renderDerivatives(d);
  }

  // Mark, index, funding with a countdown to the next funding, open interest: shown when the market's
  // feed carries the ticker or derivatives channel and the venue gives them (SPEC §12).
  function renderDerivatives(d) {
    const t = (d.ticker && d.ticker.value) || null;
    const shown = Boolean(t && (t.mark_price !== null || t.funding_rate !== null || t.open_interest !== null));
    for (const node of document.querySelectorAll(".summary .deriv")) node.hidden = !shown;
    if (!shown) return;
    setText("s-mark", t.mark_price);
    setText("s-index", t.index_price);
    const rate = t.funding_rate;
    setText("s-funding", rate, rate === null ? "" : rate.startsWith("-") ? "neg" : "pos");
    const countdown = $("s-countdown");
    countdown.dataset.at = t.next_funding_time || "";
    tickCountdown();
    setText("s-oi", t.open_interest === null ? null : trim(t.open_interest));
  }

  function tickCountdown() {
    const node = $("s-countdown");
    const at = node.dataset.at ? Date.parse(node.dataset.at) : NaN;
    if (Number.isNaN(at)) {
      node.textContent = "–";
      return;
    }
    const left = Math.max(0, Math.round((at - Date.now()) / 1000));
    const hms = [Math.floor(left / 3600), Math.floor((left % 3600) / 60), left % 60];
    node.textContent = hms.map((n) => String(n).padStart(2, "0")).join(":");
    node.title = "funding at " + node.dataset.at;
  }

  function renderLadder(d) {
    const asks = $("asks");
    const bids = $("bids");
    asks.textContent = "";
    bids.textContent = "";
    const table = asks.closest("table");
    let message = "";
    const book = d.book && d.book.value;
    if (!d.hasBook) message = "This market is collected without its book (channels: " + d.m.channels.join(", ") + ").";
    else if (d.book.error) message = "Order book unavailable: " + paneError(d.book.error);
    else if (book.status === "waiting") message = "Waiting for the first book snapshot…";
    else if (book.status === "resyncing") message = "Book resyncing after a gap; back once it is re-snapshotted.";
    else if (!book.bids.length && !book.asks.length) message = "The book is empty.";
    setText("book-status", book ? "· " + book.status : "");
    table.hidden = Boolean(message);
    showEmpty("book-empty", message, Boolean(d.book && d.book.error));
    if (message) {
      table.dataset.ts = "";
      return;
    }
    table.dataset.ts = book.ts || "";
    const max = Math.max(...book.bids.map((l) => parseFloat(l[1])), ...book.asks.map((l) => parseFloat(l[1])), 1e-12);
    const row = (level, best, side) => {
      const bar = h("div", { class: "bar" });
      bar.style.width = Math.max(1, (parseFloat(level[1]) / max) * 100).toFixed(1) + "%";
      return h(
        "tr",
        { class: best ? "best" : "" },
        h("td", { "data-testid": best ? "ladder-best-" + side : null, text: level[0] }),
        h("td", { class: "depth" }, bar, document.createTextNode(trim(level[1]))),
      );
    };
    const depth = document.documentElement.clientWidth < 600 ? BOOK_DEPTH_NARROW : BOOK_DEPTH;
    book.asks
      .slice(0, depth)
      .reverse()
      .forEach((level, i, list) => asks.append(row(level, i === list.length - 1, "ask")));
    book.bids.slice(0, depth).forEach((level, i) => bids.append(row(level, i === 0, "bid")));
    const bid = book.bids.length ? book.bids[0][0] : null;
    const ask = book.asks.length ? book.asks[0][0] : null;
    let spread = "–";
    if (bid && ask) {
      const diff = decSub(ask, bid);
      const mid = (parseFloat(ask) + parseFloat(bid)) / 2;
      spread = "spread " + trim(diff) + " · " + ((parseFloat(diff) / mid) * 1e4).toFixed(2) + " bps";
    }
    $("spread-row").textContent = spread;
  }

  function renderTape(result) {
    const body = $("tape");
    body.textContent = "";
    if (result && result.error) {
      showEmpty("tape-empty", "Trades unavailable: " + paneError(result.error), true);
      return;
    }
    const trades = (result && result.value && result.value.trades) || [];
    showEmpty("tape-empty", trades.length ? "" : "Waiting for the first trade…");
    trades.forEach((t, i) => {
      body.append(
        h(
          "tr",
          i === 0 ? { "data-testid": "last-trade", "data-id": t.id } : {},
          h("td", { text: t.ts.slice(11, 23) }),
          h("td", { class: t.side, "data-testid": i === 0 ? "last-trade-price" : null, text: t.price }),
          h("td", { text: trim(t.amount) }),
        ),
      );
    });
  }

  // -- the chart: candles, volume profile, delta and CVD (SVG) ---------------------------------------------------

  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / mag;
    return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  }

  function binSize(d, profileBins) {
    const fp = (d.footprint && d.footprint.value && d.footprint.value.bars) || [];
    for (const b of fp) if (b.footprint && b.footprint.bin) return parseFloat(b.footprint.bin);
    let best = Infinity;
    const prices = profileBins.map((b) => parseFloat(b.price)).sort((a, b) => a - b);
    for (let i = 1; i < prices.length; i++) best = Math.min(best, prices[i] - prices[i - 1]);
    return Number.isFinite(best) && best > 0 ? best : 0;
  }

  // A small triangle at (x, y) pointing away from the candle (dir 1: down, -1: up).
  function liqMark(x, y, dir, width) {
    const w = Math.max(3, Math.min(6, width / 2));
    return "M" + (x - w) + "," + y + " L" + (x + w) + "," + y + " L" + x + "," + (y + dir * w * 1.4) + " Z";
  }

  function renderChart(d) {
    const box = $("chart");
    box.textContent = "";
    if (d.candles.error) {
      showEmpty("chart-empty", "Candles unavailable: " + paneError(d.candles.error), true);
      return;
    }
    const bars = d.candles.value.candles;
    if (!bars.length) {
      showEmpty("chart-empty", "Waiting for the first trade on " + d.m.exchange + " " + d.m.symbol + "…");
      return;
    }
    showEmpty("chart-empty", "");
    const profile = d.profile.value || null;
    const bins = (profile && profile.bins) || [];
    const flowBars = new Map(((d.flow.value && d.flow.value.bars) || []).map((b) => [b.start, b]));
    const bin = binSize(d, bins);

    const W = Math.max(280, box.clientWidth || 600);
    const H = W >= 700 ? 400 : 320;
    const axisW = 64;
    const plotW = W - axisW;
    const profW = Math.round(plotW * (W >= 600 ? 0.2 : 0.26));
    const candleW = plotW - profW - 6;
    const top = 8;
    const priceH = Math.round((H - 26) * 0.68);
    const deltaTop = top + priceH + 14;
    const deltaH = H - deltaTop - 20;

    let lo = Infinity;
    let hi = -Infinity;
    for (const b of bars) {
      lo = Math.min(lo, parseFloat(b.low));
      hi = Math.max(hi, parseFloat(b.high));
    }
    for (const b of bins) {
      lo = Math.min(lo, parseFloat(b.price));
      hi = Math.max(hi, parseFloat(b.price) + bin);
    }
    if (hi - lo < 1e-9) {
      hi += Math.max(1e-6, Math.abs(hi) * 1e-4);
      lo -= Math.max(1e-6, Math.abs(lo) * 1e-4);
    }
    const pad = (hi - lo) * 0.06;
    lo -= pad;
    hi += pad;
    const y = (p) => top + ((hi - p) / (hi - lo)) * priceH;

    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "candles of " + d.m.symbol });
    const places = Math.min(8, Math.max(...bars.map((b) => decimals(b.close))));

    // Price grid and axis.
    const step = niceStep(hi - lo, priceH / 48);
    const yLast = y(parseFloat(bars[bars.length - 1].close));
    for (let p = Math.ceil(lo / step) * step; p <= hi; p += step) {
      s("line", { x1: 0, x2: plotW, y1: y(p), y2: y(p), class: "gridline" }, svg);
      const digits = Math.min(places, Math.max(0, -Math.floor(Math.log10(step)) + 1));
      if (Math.abs(y(p) - yLast) < 14) continue; // the last-price tag sits there
      s("text", { x: plotW + 6, y: y(p) + 4, class: "axis", text: p.toFixed(digits) }, svg);
    }

    // Value area band and POC line behind the candles.
    if (profile && profile.vah !== null && profile.val !== null && bin > 0) {
      const yTop = y(parseFloat(profile.vah) + bin);
      const height = Math.max(1, y(parseFloat(profile.val)) - yTop);
      s("rect", { x: 0, width: candleW, y: yTop, height, class: "va-band" }, svg);
    }

    // Candles, placed by time: the newest at the right edge, empty bars leave gaps.
    const stepMs = { "1m": 60e3, "5m": 300e3, "1h": 3600e3 }[state.interval] || 60e3;
    const lastStart = Date.parse(bars[bars.length - 1].start);
    // Few bars (a fresh daemon) get wider slots; a full window fits CANDLES.
    const span = Math.round((lastStart - Date.parse(bars[0].start)) / stepMs) + 1;
    const slot = candleW / Math.min(CANDLES, Math.max(span + 2, W >= 600 ? 30 : 16));
    const xOf = (iso) => candleW - ((lastStart - Date.parse(iso)) / stepMs + 0.5) * slot;
    const bodyW = Math.max(1, slot * 0.7);
    for (const b of bars) {
      const x = xOf(b.start);
      if (x < 0) continue;
      const o = parseFloat(b.open);
      const c = parseFloat(b.close);
      const up = c >= o;
      const wick = { x1: x, x2: x, y1: y(parseFloat(b.high)), y2: y(parseFloat(b.low)) };
      s("line", { ...wick, class: up ? "wick-up" : "wick-down" }, svg);
      const yb = y(Math.max(o, c));
      const height = Math.max(1, y(Math.min(o, c)) - yb);
      s("rect", { x: x - bodyW / 2, width: bodyW, y: yb, height, class: up ? "body-up" : "body-down" }, svg);
      // Liquidations in the bar: forced sells (longs closed) under the low, forced buys over the high.
      const f = flowBars.get(b.start);
      if (f && f.liquidations_sell && parseFloat(f.liquidations_sell) > 0) {
        const yl = y(parseFloat(b.low)) + 4;
        const mark = s("path", { d: liqMark(x, yl, 1, bodyW), class: "liq-sell", "data-testid": "liq-mark" }, svg);
        s("title", { text: "liquidated longs: " + f.liquidations_sell }, mark);
      }
      if (f && f.liquidations_buy && parseFloat(f.liquidations_buy) > 0) {
        const yh = y(parseFloat(b.high)) - 4;
        const mark = s("path", { d: liqMark(x, yh, -1, bodyW), class: "liq-buy", "data-testid": "liq-mark" }, svg);
        s("title", { text: "liquidated shorts: " + f.liquidations_buy }, mark);
      }
    }

    // Volume profile beside the candles.
    if (profile && bins.length && bin > 0) {
      const maxVol = Math.max(...bins.map((b) => parseFloat(b.volume)), 1e-12);
      const val = parseFloat(profile.val);
      const vah = parseFloat(profile.vah);
      const x0 = candleW + 6;
      for (const b of bins) {
        const p = parseFloat(b.price);
        const yTop = y(p + bin);
        const height = Math.max(1, y(p) - yTop - (y(p) - yTop > 3 ? 1 : 0));
        const cls = b.price === profile.poc ? "prof-poc" : p >= val && p <= vah ? "prof-va" : "prof";
        const width = Math.max(1, (parseFloat(b.volume) / maxVol) * (profW - 4));
        s("rect", { x: x0, y: yTop, width, height, class: cls }, svg);
      }
    }
    if (profile && profile.poc !== null) {
      const yPoc = y(parseFloat(profile.poc) + bin / 2);
      s("line", { x1: 0, x2: plotW, y1: yPoc, y2: yPoc, class: "poc-line" }, svg);
      s("text", { x: 4, y: yPoc - 4, class: "poc-label", text: "POC " + profile.poc }, svg);
    }

    // Last price tag on the axis.
    const lastClose = bars[bars.length - 1].close;
    s("line", { x1: 0, x2: plotW, y1: yLast, y2: yLast, class: "last-line" }, svg);
    s("rect", { x: plotW + 1, y: yLast - 8, width: axisW - 1, height: 16, rx: 3, class: "last-tag" }, svg);
    s("text", { x: plotW + 5, y: yLast + 4, class: "last-label", text: lastClose }, svg);

    // Delta bars and the CVD line under the candles.
    const flows = bars.map((b) => flowBars.get(b.start)).filter(Boolean);
    const mid = deltaTop + deltaH / 2;
    s("line", { x1: 0, x2: candleW, y1: mid, y2: mid, class: "zero" }, svg);
    const paneLabel = s("text", { x: 4, y: deltaTop + 10, class: "pane-label", text: "Δ / CVD" }, svg);
    if (flows.length) {
      const maxAbs = Math.max(...flows.map((f) => Math.abs(parseFloat(f.delta))), 1e-12);
      for (const f of flows) {
        const x = xOf(f.start);
        if (x < 0) continue;
        const v = parseFloat(f.delta);
        const hgt = Math.max(1, (Math.abs(v) / maxAbs) * (deltaH / 2 - 2));
        const bar = { x: x - bodyW / 2, width: bodyW, y: v >= 0 ? mid - hgt : mid, height: hgt };
        s("rect", { ...bar, class: v >= 0 ? "delta-up" : "delta-down" }, svg);
      }
      const cvds = flows.map((f) => parseFloat(f.cvd));
      let cLo = Math.min(0, ...cvds);
      let cHi = Math.max(0, ...cvds);
      if (cHi - cLo < 1e-12) cHi = cLo + 1;
      const yc = (v) => deltaTop + 2 + ((cHi - v) / (cHi - cLo)) * (deltaH - 4);
      const points = flows.map((f) => xOf(f.start).toFixed(1) + "," + yc(parseFloat(f.cvd)).toFixed(1)).join(" ");
      s("polyline", { points: flows.length > 1 ? points : points + " " + points, class: "cvd" }, svg);
      const last = flows[flows.length - 1];
      paneLabel.textContent = "Δ " + trim(last.delta) + " · CVD " + trim(last.cvd);
      // Open interest change per bar, as ticks along the bottom of the pane (green up, red down).
      const ois = flows.filter((f) => f.oi_change !== null && f.oi_change !== undefined);
      if (ois.length) {
        const maxOi = Math.max(...ois.map((f) => Math.abs(parseFloat(f.oi_change))), 1e-12);
        for (const f of ois) {
          const v = parseFloat(f.oi_change);
          const x = xOf(f.start);
          if (x < 0) continue;
          const hgt = Math.max(1, (Math.abs(v) / maxOi) * 6);
          const tick = { x: x - bodyW / 2, width: bodyW, y: deltaTop + deltaH - hgt, height: hgt };
          const node = s("rect", { ...tick, class: v >= 0 ? "oi-up" : "oi-down", "data-testid": "oi-change" }, svg);
          s("title", { text: "open interest change " + f.oi_change }, node);
        }
        paneLabel.textContent += " · OI Δ " + trim(ois[ois.length - 1].oi_change);
      }
    }

    // Time labels.
    const every = Math.max(1, Math.ceil(60 / slot));
    for (const b of bars) {
      const k = Math.round((lastStart - Date.parse(b.start)) / stepMs);
      if (k % every !== 0) continue;
      const x = xOf(b.start);
      if (x < 16) continue;
      s("text", { x, y: H - 4, class: "axis", "text-anchor": "middle", text: hhmm(b.start) }, svg);
    }
    box.append(svg);
  }

  // -- one asset on every venue ------------------------------------------------------------------------------

  const VENUE_COLORS = ["#e8a33d", "#4aa3df", "#b07cd8", "#4cc38a", "#e26d5c", "#9aa5b1", "#d6c94a", "#5ed1c9"];

  /** Per-venue CVD lines over the total, each venue's share of the range, and the venues' gaps. */
  function renderVenues(d) {
    const box = $("venues-chart");
    box.textContent = "";
    const table = $("venues");
    table.textContent = "";
    const flow = d.flow && d.flow.value;
    $("venues-title").textContent = d.m.asset;
    if (!flow || !flow.bars) {
      showEmpty("venues-empty", d.flow && d.flow.error ? "Order flow unavailable: " + paneError(d.flow.error) : "Waiting for trades…", Boolean(d.flow && d.flow.error));
      return;
    }
    showEmpty("venues-empty", flow.bars.length ? "" : "No trades of " + d.m.asset + " in the range yet.");
    const keys = (flow.markets || []).map((m) => m.market);
    const color = new Map(keys.map((k, i) => [k, VENUE_COLORS[i % VENUE_COLORS.length]]));
    // Each venue's running CVD, carried across the bars it has no trades in.
    const series = new Map(keys.map((k) => [k, []]));
    const totals = new Map(keys.map((k) => [k, { buy: 0, sell: 0 }]));
    const running = new Map(keys.map((k) => [k, 0]));
    for (const bar of flow.bars) {
      for (const k of keys) {
        const v = bar.by_venue[k];
        if (v) {
          running.set(k, parseFloat(v.cvd));
          totals.get(k).buy += parseFloat(v.buy_volume);
          totals.get(k).sell += parseFloat(v.sell_volume);
        }
        series.get(k).push(running.get(k));
      }
    }
    const total = flow.bars.map((b) => parseFloat(b.cvd));
    const W = Math.max(280, box.clientWidth || 600);
    const H = 220;
    const all = [0, ...total, ...[...series.values()].flat()];
    let lo = Math.min(...all);
    let hi = Math.max(...all);
    if (hi - lo < 1e-12) hi = lo + 1;
    const n = Math.max(1, flow.bars.length - 1);
    const x = (i) => 8 + (i / n) * (W - 80);
    const y = (v) => 10 + ((hi - v) / (hi - lo)) * (H - 30);
    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "CVD of " + d.m.asset + " per venue" });
    s("line", { x1: 0, x2: W - 72, y1: y(0), y2: y(0), class: "zero" }, svg);
    const line = (values, attrs) => {
      const pts = values.map((v, i) => x(i).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
      s("polyline", { points: values.length > 1 ? pts : pts + " " + pts, ...attrs }, svg);
    };
    for (const k of keys) line(series.get(k), { class: "venue-line", stroke: color.get(k), "data-venue": k });
    line(total, { class: "cvd total-line" });
    if (total.length) {
      const last = total[total.length - 1];
      s("text", { x: W - 68, y: y(last) + 4, class: "axis", text: "Σ " + trim(flow.bars[flow.bars.length - 1].cvd) }, svg);
    }
    box.append(svg);
    // The table: one row per venue, then the total.
    const sumAll = [...totals.values()].reduce((a, t) => a + t.buy + t.sell, 0) || 1;
    const head = h("tr", {}, h("th", { text: "venue" }), h("th", { class: "num", text: "buy" }), h("th", { class: "num", text: "sell" }), h("th", { class: "num", text: "CVD" }), h("th", { class: "num", text: "share" }));
    table.append(h("thead", {}, head));
    const body = h("tbody", {});
    for (const k of keys) {
      const t = totals.get(k);
      const swatch = h("span", { class: "swatch" });
      swatch.style.background = color.get(k); // CSSOM, not a style attribute: the CSP allows no inline styles
      const cvd = series.get(k).length ? series.get(k)[series.get(k).length - 1] : 0;
      body.append(h("tr", { "data-venue": k }, h("td", {}, swatch, k), h("td", { class: "num", text: t.buy.toFixed(3) }), h("td", { class: "num", text: t.sell.toFixed(3) }), h("td", { class: "num " + (cvd < 0 ? "neg" : "pos"), text: cvd.toFixed(3) }), h("td", { class: "num", text: Math.round(((t.buy + t.sell) / sumAll) * 100) + " %" })));
    }
    table.append(body);
    const notes = [];
    if (flow.quote_note) notes.push(flow.quote_note);
    for (const c of flow.conversions || []) notes.push(c.market + ": " + c.rule + (c.rounding ? " (" + c.rounding + ")" : ""));
    for (const e of flow.excluded || []) notes.push("left out " + e.market + ": " + e.reason);
    $("venues-notes").textContent = "Volumes in " + (flow.units || "base units") + ". " + notes.join(" · ");
    renderVenueDerivatives(d);
    const gaps = $("venue-gaps");
    gaps.textContent = "";
    for (const g of flow.gaps || []) {
      gaps.append(h("li", { class: "warn", text: g.venue + " missing " + hhmm(g.start) + "–" + (g.end ? hhmm(g.end) : "now") + " (" + g.reason + ")" }));
    }
  }

  /** Open interest summed in base units, the OI-weighted funding, and per contract market its funding,
   * open interest and the liquidations of the window (SPEC §15). */
  function renderVenueDerivatives(d) {
    const dv = (d.derivs && d.derivs.value) || null;
    const lq = (d.liqs && d.liqs.value) || null;
    const table = $("funding");
    table.textContent = "";
    setText("v-oi", dv && dv.open_interest !== null ? trim(dv.open_interest) + " " + d.m.asset : null);
    const rate = dv && dv.funding_rate;
    setText("v-funding", rate || null, rate ? (rate.startsWith("-") ? "neg" : "pos") : "");
    setText("v-liq", lq ? trim(lq.totals.buy) + " / " + trim(lq.totals.sell) : null);
    const venues = (dv && dv.venues) || {};
    const byMarket = new Map();
    for (const row of (lq && lq.liquidations) || []) {
      byMarket.set(row.market, (byMarket.get(row.market) || 0) + parseFloat(row.amount));
    }
    const keys = Object.keys(venues);
    $("funding-empty").hidden = keys.length > 0;
    if (!keys.length) return;
    const head = h("tr", {}, h("th", { text: "venue" }), h("th", { class: "num", text: "funding" }), h("th", { class: "num", text: "open interest" }), h("th", { class: "num", text: "liq." }));
    table.append(h("thead", {}, head));
    const body = h("tbody", {});
    for (const k of keys) {
      const v = venues[k];
      const f = v.funding_rate;
      body.append(h("tr", { "data-venue": k }, h("td", { text: k }), h("td", { class: "num " + (f && f.startsWith("-") ? "neg" : "pos"), text: f === null ? "–" : f }), h("td", { class: "num", text: v.open_interest === null ? "–" : trim(v.open_interest) }), h("td", { class: "num", text: (byMarket.get(k) || 0).toFixed(3) })));
    }
    table.append(body);
  }

  // -- the footprint of the latest bars ----------------------------------------------------------------------

  function renderFootprint(d) {
    const table = $("footprint");
    table.textContent = "";
    if (d.footprint.error) {
      showEmpty("fp-empty", "Footprint unavailable: " + paneError(d.footprint.error), true);
      return;
    }
    const narrow = document.documentElement.clientWidth < 600;
    const withFootprint = ((d.footprint.value && d.footprint.value.bars) || []).filter((b) => b.footprint);
    const bars = withFootprint.slice(narrow ? -3 : -FOOTPRINT_BARS);
    if (!bars.length) {
      showEmpty("fp-empty", "Waiting for the first trade…");
      return;
    }
    showEmpty("fp-empty", "");
    const prices = new Map();
    for (const b of bars) for (const l of b.footprint.levels) prices.set(l.price, parseFloat(l.price));
    const sorted = [...prices.keys()].sort((a, b) => prices.get(b) - prices.get(a));
    const bin = parseFloat(bars[bars.length - 1].footprint.bin);
    const candles = (d.candles.value && d.candles.value.candles) || [];
    const last = candles.length ? parseFloat(candles[candles.length - 1].close) : NaN;
    const lastRow = sorted.findIndex((p) => prices.get(p) <= last && last < prices.get(p) + bin);
    const lastPrice = lastRow >= 0 ? sorted[lastRow] : null;
    let rows = sorted;
    if (rows.length > FOOTPRINT_ROWS) {
      const centre = lastRow >= 0 ? lastRow : Math.floor(rows.length / 2);
      const start = Math.max(0, Math.min(rows.length - FOOTPRINT_ROWS, centre - FOOTPRINT_ROWS / 2));
      rows = rows.slice(start, start + FOOTPRINT_ROWS);
    }
    const head = h("tr", {}, h("th", { class: "price", text: "price" }));
    for (const b of bars) head.append(h("th", { text: hhmm(b.start) }));
    table.append(h("thead", {}, head));
    const body = h("tbody");
    for (const price of rows) {
      const tr = h("tr", { class: price === lastPrice ? "last" : "" }, h("td", { class: "price", text: price }));
      for (const b of bars) {
        const level = b.footprint.levels.find((l) => l.price === price);
        if (!level) {
          tr.append(h("td", { class: "cell empty-cell", text: "·" }));
          continue;
        }
        const p = prices.get(price);
        const runs = b.footprint.stacked_imbalances || [];
        const stacked = runs.filter((run) => parseFloat(run.low) <= p && p <= parseFloat(run.high));
        const cls = ["cell"].concat(stacked.map((run) => "stacked-" + run.side)).join(" ");
        tr.append(
          h(
            "td",
            { class: cls, title: `bid ${level.bid_volume} × ask ${level.ask_volume} (Δ ${level.delta})` },
            h("span", { class: "b" + (level.bid_imbalance ? " imb" : ""), text: trim(level.bid_volume) }),
            h("span", { class: "x", text: "×" }),
            h("span", { class: "a" + (level.ask_imbalance ? " imb" : ""), text: trim(level.ask_volume) }),
          ),
        );
      }
      body.append(tr);
    }
    table.append(body);
    const foot = h("tr", {}, h("td", { class: "price", text: "Δ" }));
    for (const b of bars) foot.append(h("td", { class: b.delta.startsWith("-") ? "neg" : "pos", text: trim(b.delta) }));
    table.append(h("tfoot", {}, foot));
  }

  // -- wiring -----------------------------------------------------------------------------------------------

  function start() {
    $("forget-key").hidden = !getKey();
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("key-input");
      const key = input.value.trim();
      if (!key) return;
      input.value = "";
      setKey(key);
      state.authNeeded = false;
      $("auth-message").textContent = "Checking the key…";
      setConn("connecting…", "");
      wake();
    });
    $("forget-key").addEventListener("click", () => {
      setKey(null);
      state.authNeeded = false;
      wake();
    });
    $("market").addEventListener("change", (event) => {
      state.sel = choose(event.target.value);
      toHash();
      wake();
    });
    $("interval").addEventListener("change", (event) => {
      state.interval = event.target.value;
      toHash();
      wake();
    });
    document.addEventListener("visibilitychange", wake);
    let pending = false;
    new ResizeObserver(() => {
      if (pending || !state.last || !state.shown) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        renderChart(state.last);
      });
    }).observe($("chart"));
    loop();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
