// odinws demo page: subscribe to channels, show one live row per token.
//
// Incoming events only update an in-memory model and mark rows dirty; the
// DOM is touched in one batch per animation frame (at most ~10 per second),
// so a thousand events per second cost a thousand JSON.parse calls, not a
// thousand layouts. Everything from the server goes in with textContent.
// The connection (reconnect, resubscribe, acks) is the odinws client library,
// served by the node at /odinws.js. Subscriptions ask for a snapshot, so the
// current prices show at once, and recover after a reconnect: the line next
// to the status says how many missed events the server replayed.
import { OdinWS } from "./odinws.js";

(() => {
  const params = new URLSearchParams(location.search);
  const WS_URL = (() => {
    const given = params.get("ws");
    if (given && /^wss?:\/\//.test(given)) return given;
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  })();
  // ?subscribe=a,b chooses the first subscriptions; ?subscribe= (empty) none.
  const INITIAL = params.has("subscribe")
    ? params.get("subscribe").split(",").map((s) => s.trim()).filter(Boolean)
    : ["odin.token.*.*"];

  const SEGMENT = /^(\*|[A-Za-z0-9_:-]{1,128})$/;
  const HISTORY = 90;                    // sparkline points per token
  const RENDER_EVERY_MS = 250;           // the table redraws at most 4 times a second
  const PING_EVERY_MS = 15000;

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), rate: $("rate"), total: $("total"), tokenCount: $("token-count"),
    delay: $("delay"), rtt: $("rtt"), rows: $("rows"), empty: $("empty"),
    subs: $("subscriptions"), message: $("message"), lastEvent: $("last-event"),
    recovery: $("recovery"),
  };
  $("ws-url").textContent = WS_URL;

  // ---- model -------------------------------------------------------------
  const wanted = new Map();         // channel pattern -> its Subscription
  const tokens = new Map();         // token id -> row state
  const order = [];                 // token ids, sorted like the table
  const dirty = new Set();
  let total = 0, secondCount = 0, delaySum = 0, delayCount = 0, lastEvent = null;

  const collator = new Intl.Collator(undefined, {numeric: true});
  // Formatters are built once: toLocaleString() with options builds one per call.
  const intFmt = new Intl.NumberFormat(undefined, {maximumFractionDigits: 0});
  const sizeFmt = new Intl.NumberFormat(undefined, {maximumFractionDigits: 2});
  const bigFmt = new Intl.NumberFormat(undefined, {maximumFractionDigits: 2});
  const timeFmt = new Intl.DateTimeFormat(undefined,
    {hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false});

  function rowFor(token) {
    let s = tokens.get(token);
    if (s) return s;
    s = {token, price: NaN, first: NaN, prev: NaN, history: [], trade: null,
         liquidity: NaN, count: 0, ts: 0, types: new Set(), row: null};
    tokens.set(token, s);
    return s;
  }

  function handleEvent(msg) {
    const parts = String(msg.channel || "").split(".");
    if (parts.length !== 4) return;
    const [, , token, type] = parts;
    const d = (msg.data && typeof msg.data === "object") ? msg.data : {};
    const s = rowFor(token);
    s.count++;
    s.types.add(type);
    s.ts = typeof msg.ts === "number" ? msg.ts : Date.now();
    const price = parseFloat(d.price);
    if ((type === "trade" || type === "price") && Number.isFinite(price)) {
      if (!Number.isFinite(s.first)) s.first = price;
      s.prev = s.price;
      s.price = price;
      s.history.push(price);
      if (s.history.length > HISTORY) s.history.shift();
    }
    if (type === "trade") s.trade = d;
    else if (type === "liquidity") s.liquidity = parseFloat(d.liquidity);
    dirty.add(s);
    total++;
    secondCount++;
    // A snapshot event is the latest of its channel, however old: not a delay.
    if (typeof msg.ts === "number" && !msg.snapshot) { delaySum += Date.now() - msg.ts; delayCount++; }
    lastEvent = msg;
    scheduleRender();
  }

  // ---- rendering (batched) ---------------------------------------------------
  let renderQueued = false, lastRender = 0;

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    // Wait out the interval with a timer (an idle page draws no frames),
    // then draw in the next animation frame.
    const wait = Math.max(0, lastRender + RENDER_EVERY_MS - performance.now());
    setTimeout(() => requestAnimationFrame(render), wait);
  }

  function render() {
    renderQueued = false;
    lastRender = performance.now();
    for (const s of dirty) drawRow(s);
    dirty.clear();
    el.total.textContent = intFmt.format(total);
    el.tokenCount.textContent = tokens.size;
    el.empty.hidden = tokens.size > 0;
    if (lastEvent) el.lastEvent.textContent = JSON.stringify(lastEvent, null, 2);
  }

  function cell(tr, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function createRow(s) {
    const tr = document.createElement("tr");
    tr.dataset.token = s.token;
    const c = {
      token: cell(tr, "token"), price: cell(tr, "num price"), change: cell(tr, "num"),
      spark: cell(tr, "spark"), trade: cell(tr, "trade"), liquidity: cell(tr, "num"),
      count: cell(tr, "num count"), updated: cell(tr, "updated"),
    };
    c.token.textContent = s.token;
    const canvas = document.createElement("canvas");
    canvas.className = "sparkline";
    canvas.width = 120; canvas.height = 28;
    c.spark.appendChild(canvas);
    c.canvas = canvas;
    // Keep rows sorted by token id: binary search for the place.
    let lo = 0, hi = order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (collator.compare(order[mid], s.token) < 0) lo = mid + 1; else hi = mid;
    }
    const before = lo < order.length ? tokens.get(order[lo]).row.tr : null;
    el.rows.insertBefore(tr, before);
    order.splice(lo, 0, s.token);
    s.row = {tr, ...c};
  }

  function fmt(x) {
    if (!Number.isFinite(x)) return "–";
    const a = Math.abs(x);
    if (a >= 1000) return bigFmt.format(x);
    if (a >= 1) return x.toFixed(4);
    return x.toPrecision(4);
  }

  function drawRow(s) {
    if (!s.row) createRow(s);
    const r = s.row;
    r.tr.dataset.types = [...s.types].join(" ");
    r.price.textContent = fmt(s.price);
    // Colour by the last tick's direction. (A flash animation looks nicer but
    // repaints every row at 60 fps: the page could not keep up with 1000 events/s.)
    if (Number.isFinite(s.prev) && s.prev !== s.price) {
      r.price.className = "num price " + (s.price > s.prev ? "pos" : "neg");
    }
    if (Number.isFinite(s.first) && s.first > 0) {
      const pct = (s.price / s.first - 1) * 100;
      r.change.textContent = (pct >= 0 ? "+" : "") + pct.toFixed(2) + "%";
      r.change.className = "num " + (pct > 0 ? "pos" : pct < 0 ? "neg" : "");
    }
    if (s.trade) {
      const side = s.trade.side === "sell" ? "sell" : s.trade.side === "buy" ? "buy" : "";
      const size = parseFloat(s.trade.size);
      r.trade.textContent = `${Number.isFinite(size) ? sizeFmt.format(size) : "–"} ${side || "trade"}`;
      r.trade.className = "trade " + side;
    }
    r.liquidity.textContent = Number.isFinite(s.liquidity) ? intFmt.format(s.liquidity) : "–";
    r.count.textContent = intFmt.format(s.count);
    r.updated.textContent = timeFmt.format(s.ts) + "." + String(s.ts % 1000).padStart(3, "0");
    drawSparkline(r.canvas, s.history);
  }

  function drawSparkline(canvas, points) {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 2;
    ctx.clearRect(0, 0, w, h);
    canvas.dataset.points = points.length;
    if (points.length === 0) return;
    const min = Math.min(...points), max = Math.max(...points);
    const span = max - min || 1;
    const x = (i) => points.length === 1 ? w / 2 : pad + (i * (w - 2 * pad)) / (points.length - 1);
    const y = (v) => max === min ? h / 2 : h - pad - ((v - min) * (h - 2 * pad)) / span;
    const rising = points[points.length - 1] >= points[0];
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = rising ? "#3ecf8e" : "#ff6b6b";
    ctx.beginPath();
    points.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
    ctx.fillStyle = ctx.strokeStyle;
    ctx.beginPath();
    ctx.arc(x(points.length - 1), y(points[points.length - 1]), 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function drawSubscriptions() {
    el.subs.replaceChildren();
    if (wanted.size === 0) {
      const i = document.createElement("i");
      i.textContent = "nothing yet";
      el.subs.appendChild(i);
      return;
    }
    for (const ch of [...wanted.keys()].sort()) {
      const ok = wanted.get(ch).state === "subscribed";
      const chip = document.createElement("span");
      chip.className = "chip" + (ok ? " ok" : "");
      chip.dataset.channel = ch;
      chip.title = ok ? "subscribed" : "waiting for the server";
      chip.textContent = ch;
      const x = document.createElement("button");
      x.type = "button";
      x.textContent = "×";
      x.title = "unsubscribe";
      x.addEventListener("click", () => unsubscribe(ch));
      chip.appendChild(x);
      el.subs.appendChild(chip);
    }
  }

  let messageTimer = null;
  function say(text, isError) {
    el.message.textContent = text;
    el.message.className = isError ? "error" : "";
    clearTimeout(messageTimer);
    messageTimer = setTimeout(() => { el.message.textContent = ""; }, 8000);
  }

  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.status.textContent = text || state;
  }

  // ---- connection (the odinws client library) --------------------------------
  const client = new OdinWS(WS_URL);
  let countdown = null, pingTimer = null;

  // What the resubscriptions of the last reconnect recovered, from their acks.
  let recovery = null;
  function recovered(channel, {recovered: ok, reason, replayed, snapshot}) {
    if (!recovery) return;
    if (ok) recovery.replayed += replayed;
    else recovery.failed.push(`${channel} (${reason}${snapshot ? `, ${snapshot} snapshot events` : ""})`);
    const parts = [`reconnected: recovered ${intFmt.format(recovery.replayed)} missed event${
      recovery.replayed === 1 ? "" : "s"}`];
    if (recovery.failed.length) parts.push(`could not recover ${recovery.failed.join(", ")}`);
    el.recovery.textContent = parts.join("; ");
    el.recovery.className = "recovery" + (recovery.failed.length ? " partial" : "");
    el.recovery.hidden = false;
  }

  function subscribe(channels) {
    const fresh = channels.filter((c) => !wanted.has(c));
    if (!fresh.length) { say("Already subscribed."); return; }
    for (const channel of fresh) {
      const sub = client.subscribe(channel, {snapshot: true}, handleEvent);
      wanted.set(channel, sub);
      sub.on("recovered", (result) => recovered(channel, result));
      sub.on("state", ({state}) => {
        // A refused subscribe had no effect: forget it (the error event says why).
        if (state === "failed" && wanted.get(channel) === sub) wanted.delete(channel);
        drawSubscriptions();
      });
    }
    drawSubscriptions();
  }

  function unsubscribe(channel) {
    wanted.get(channel)?.unsubscribe();
    wanted.delete(channel);
    drawSubscriptions();
  }

  function ping() {
    client.ping().then((ms) => { el.rtt.textContent = Math.round(ms); }, () => {});
  }

  let everConnected = false;
  client.on("state", ({state, reason, retryIn}) => {
    clearInterval(countdown);
    clearInterval(pingTimer);
    if (state === "connecting") {
      setStatus("connecting", "connecting…");
    } else if (state === "connected") {
      setStatus("connected", client.transport === "websocket" ? "connected"
                                                              : `connected (${client.transport})`);
      if (everConnected) recovery = {replayed: 0, failed: []};
      everConnected = true;
      ping();
      pingTimer = setInterval(ping, PING_EVERY_MS);
    } else if (retryIn !== null && retryIn !== undefined) {
      const due = Date.now() + retryIn;
      const show = () => setStatus("reconnecting",
        `reconnecting in ${Math.max(0, (due - Date.now()) / 1000).toFixed(1)} s (closed ${reason.code})`);
      show();
      countdown = setInterval(show, 200);
    } else if (reason.code === 1000 && wanted.size === 0) {
      // The server's idle close: the library reconnects on the next subscribe.
      setStatus("idle", "idle (subscribe to reconnect)");
    } else {
      setStatus("disconnected",
        `disconnected (closed ${reason.code}${reason.text ? ": " + reason.text : ""})`);
    }
  });
  client.on("error", (e) => say(`${e.code}: ${e.message}`, true));

  // ---- controls -------------------------------------------------------------
  function validChannel(ch) {
    const p = ch.split(".");
    return p.length === 4 && p[0] === "odin" && p[1] === "token"
      && SEGMENT.test(p[2]) && SEGMENT.test(p[3]);
  }

  $("pick-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const ids = $("tokens-input").value.split(/[\s,]+/).filter(Boolean);
    let types = [...document.querySelectorAll('input[name="type"]:checked')].map((i) => i.value);
    if (types.includes("*")) types = ["*"];
    if (!ids.length || !types.length) { say("Pick at least one token and one event type.", true); return; }
    const bad = ids.concat(types).find((x) => !SEGMENT.test(x));
    if (bad) { say(`Invalid token or type "${bad}": use letters, digits, _ - : or a lone *.`, true); return; }
    subscribe(ids.flatMap((t) => types.map((ty) => `odin.token.${t}.${ty}`)));
  });

  $("pattern-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const ch = $("pattern-input").value.trim();
    if (!validChannel(ch)) {
      say("A channel looks like odin.token.<tokenId>.<eventType>; either segment may be *.", true);
      return;
    }
    subscribe([ch]);
    $("pattern-input").value = "";
  });

  $("clear-table").addEventListener("click", () => {
    tokens.clear(); order.length = 0; dirty.clear();
    el.rows.replaceChildren();
    total = 0; lastEvent = null;
    el.lastEvent.textContent = "–";
    scheduleRender();
  });

  setInterval(() => {
    el.rate.textContent = intFmt.format(secondCount);
    el.delay.textContent = delayCount ? Math.max(0, Math.round(delaySum / delayCount)) : "–";
    secondCount = 0; delaySum = 0; delayCount = 0;
  }, 1000);

  const initial = INITIAL.filter(validChannel);
  if (initial.length) subscribe(initial);
  drawSubscriptions();
  client.connect();
})();
