// Drives the odinws JavaScript client (odinws.js, as a node serves it at
// /odinws.js) in headless Debian Chromium against a real node and broker
// (run by tests/tools/test_client_browser.py, which produces events the
// whole time).
//
//   node tests/browser/client.test.mjs reconnect <node base url>
//   node tests/browser/client.test.mjs token <node base url> <HS256 secret>
//
// The page is on another origin (http://localhost:<port>, served by this
// script on loopback) and imports the library from
// http://127.0.0.1:<node port>/odinws.js, as a site would from its node.
//
//   node tests/browser/client.test.mjs snapshot <node base url> <last n>
//   node tests/browser/client.test.mjs sse <node base url>
//   node tests/browser/client.test.mjs deflate <node base url>
//
// The producer numbers the events of each channel n = 1, 2, 3, … (data.n).
//
// reconnect: subscribes to odin.token.*.trade and odin.token.ABC.*, checks
// each event reaches every subscription whose pattern matches it, prints
// "READY"; the caller then SIGKILLs the shard holding the connection while
// events keep coming. Passes when the library noticed (1006), reconnected on
// its own, subscribed again recovering from its positions (recovered: true,
// replayed > 0), and every channel's events reached each subscription in
// order, exactly once, with no gap (n consecutive) across the outage.
//
// snapshot: the producer has stopped (its last event of each channel is
// <last n>); a subscription with snapshot: true gets, at once, the latest
// event of each matching channel marked snapshot, and nothing else (no live
// event exists to bring it).
//
// sse: WebSocket is blocked (the page's WebSocket never opens: what a proxy
// that refuses upgrades looks like to a browser); the library falls back to
// Server-Sent Events, saying so (a "fallback" event with the close code),
// gets a snapshot and live events in order, and after
// the caller SIGKILLs the shard holding the stream ("READY") reconnects over
// SSE and recovers what it missed, as over WebSocket; a subscription added
// then opens a new stream, and the others go on without a gap.
//
// deflate: Chromium offers permessage-deflate on its own; the socket's
// negotiated extensions name it with server_no_context_takeover, and the
// events (compressed by the node: the caller sets its threshold to 0) reach
// the library's subscriptions whole, in order and once.
//
// token: connects with a 6 s JWT and getToken minting tokens with the
// secret: the first refresh (before exp) is good, so the connection outlives
// the first token; the second is signed with a wrong key, the server refuses
// it ("forbidden") and closes with 4001 at exp; the library asks getToken
// again and reconnects with the good token it gets, and events flow again.
//
// delta: three clients on one page subscribed to odin.token.*.price, one
// with delta: true (compact deltas), one with delta: "merge-patch", one
// without; the node sends deltas of both kinds (counted on the wire), and
// for every (channel, n) they all got, the library handed the delta
// subscriptions exactly the event the plain one got: data, ts and pos.
//
// Exits 0 on success; otherwise prints why on stderr and exits 1.
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { launch, log, RECONNECT_WAIT_MS, WAIT_MS } from "./chromium.mjs";

const [mode, base, secret] = process.argv.slice(2);
const MODES = ["reconnect", "token", "snapshot", "sse", "gap", "sse-gap", "undecodable", "deflate",
               "delta"];
if (!MODES.includes(mode) || !base || (["token", "snapshot"].includes(mode) && !secret)) {
  console.error("usage: node client.test.mjs reconnect|token|snapshot|sse|gap|sse-gap|undecodable|deflate|delta <node base url> [secret|last n]");
  process.exit(2);
}
const node = new URL(base);
const WS_URL = `ws://${node.host}/ws`;
const LIBRARY = `${node.origin}/odinws.js`;

// The app's own origin. (A page faked with page.route has no address, and
// Chromium then refuses it access to loopback: serve a real one.)
const site = createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
  res.end("<!doctype html><title>an app</title><p>app</p>");
});
await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
const PAGE = `http://localhost:${site.address().port}/`;

function mintToken(lifetime, key) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({alg: "HS256", typ: "JWT"})}.${b64({
    sub: "browser", exp: Math.floor(Date.now() / 1000) + lifetime, channels: ["odin.token.*.*"]})}`;
  return `${body}.${createHmac("sha256", key).update(body).digest("base64url")}`;
}

let browser;
let page;

const rec = () => page.evaluate(() => window.rec);
const until = (fn, arg, timeout = WAIT_MS) =>
  page.waitForFunction(fn, arg, { timeout, polling: 100 });

async function open({blockWebSocket = false} = {}) {
  browser = await launch();
  page = browser.page;
  // What the page's sockets receive (the last 400 messages, abridged): shown when a check fails.
  await page.addInitScript(() => {
    const wire = window.wire = [];
    const extensions = window.socketExtensions = [];
    const Real = window.WebSocket;
    window.WebSocket = class RecordedWebSocket extends Real {
      constructor(...args) {
        super(...args);
        this.addEventListener("open", () => extensions.push(this.extensions));
        this.addEventListener("message", (m) => {
          try {
            const msg = JSON.parse(m.data);
            if (msg.type === "event" && msg.delta !== undefined) window.deltaFrames = (window.deltaFrames || 0) + 1;
            if (Array.isArray(msg)) window.compactFrames = (window.compactFrames || 0) + 1;
            wire.push(msg.type === "event"
              ? `${msg.channel} n=${msg.data?.n} pos=${msg.pos}${msg.snapshot ? " snapshot" : ""}`
              : JSON.stringify(msg));
            if (wire.length > 400) wire.shift();
          } catch {}
        });
      }
    };
  });
  if (blockWebSocket) {
    // What a proxy that refuses WebSocket upgrades looks like to a page: the
    // socket never opens and closes with 1006 (the handshake's status is
    // not shown). Everything else (fetch, EventSource) passes.
    await page.addInitScript(() => {
      window.blockedSockets = 0;
      window.WebSocket = class BlockedWebSocket extends EventTarget {
        constructor(url) {
          super();
          window.blockedSockets++;
          this.url = url;
          this.readyState = 0;
          setTimeout(() => {
            this.readyState = 3;
            this.onerror?.(new Event("error"));
            this.onclose?.({code: 1006, reason: "", wasClean: false});
          }, 10);
        }
        send() { throw new Error("not open"); }
        close() {}
      };
      // Every stream's URL (its query: channels, since, options).
      const RealEventSource = window.EventSource;
      window.eventStreams = [];
      window.EventSource = class RecordedEventSource extends RealEventSource {
        constructor(url, init) {
          super(url, init);
          window.eventStreams.push(String(url));
        }
      };
    });
  }
  // Minted when asked for: the initial token, two refreshes, then after the 4001.
  const plan = [[6, secret], [6, secret], [6, "not-the-secret-of-at-least-32-bytes"], [300, secret]];
  await page.exposeFunction("nextToken", () => {
    const [lifetime, key] = plan.shift();
    return mintToken(lifetime, key);
  });
  await page.goto(PAGE, { timeout: WAIT_MS });
  // A cross-origin module import: needs the node's CORS header.
  await page.evaluate(async (url) => {
    const { OdinWS, tokenExpiry } = await import(url);
    Object.assign(window, { OdinWS, tokenExpiry });
  }, LIBRARY);
  log(`imported ${LIBRARY} into ${PAGE}`);
}

// The app under test: two subscriptions, everything recorded on window.rec.
// outage: the first reconnect waits 4 s (no jitter), long enough for the
// killed shard's partitions to move to the survivor, which keeps what it
// consumes meanwhile for recovery: the outage misses events for certain.
async function start(withAuth, outage = false) {
  await page.evaluate(async ({ url, withAuth, outage }) => {
    const rec = window.rec = { states: [], errors: [], trades: [], abc: [], tokenCalls: 0 };
    const options = outage ? { backoffBase: 4, env: { random: () => 1 } } : {};
    if (withAuth) {
      options.token = await window.nextToken();
      rec.exps = [window.tokenExpiry(options.token) * 1000];
      options.refreshMargin = 3;
      options.getToken = async () => {
        rec.tokenCalls++;
        const token = await window.nextToken();
        rec.exps.push(window.tokenExpiry(token) * 1000);
        return token;
      };
    }
    const client = window.client = new window.OdinWS(url, options);
    // tokenCalls as of each change: the reconnect after a close may ask
    // getToken before the test reads the record.
    client.on("state", (s) => rec.states.push({ ...s, at: Date.now(), tokenCalls: rec.tokenCalls }));
    client.on("error", (e) => rec.errors.push({ ...e, at: Date.now() }));
    rec.gaps = [];
    client.on("gap", (g) => rec.gaps.push(g));
    const keep = (list) => (e) => list.push({ channel: e.channel, seq: e.data.seq, n: e.data.n,
                                              snapshot: e.snapshot === true, at: Date.now() });
    window.subs = [client.subscribe("odin.token.*.trade", {}, keep(rec.trades)),
                   client.subscribe("odin.token.ABC.*", {}, keep(rec.abc))];
    rec.recovered = [[], []];
    window.subs.forEach((s, i) => s.on("recovered", (r) => rec.recovered[i].push(r)));
    rec.holes = [[], []];
    window.subs.forEach((s, i) => s.on("gap", (g) => rec.holes[i].push({ ...g, after: rec.trades.length })));
    client.connect();
  }, { url: WS_URL, withAuth, outage });
  await until(() => window.subs.every((s) => s.state === "subscribed"));
  log("connected and subscribed");
}

// Events keep arriving after `since` (ms epoch) on both subscriptions.
async function eventsFlowAfter(since) {
  await until((t) => window.rec.trades.filter((e) => e.at > t).length >= 5
                  && window.rec.abc.filter((e) => e.at > t).length >= 3, since);
}

async function checkDispatch() {
  await until(() => new Set(window.rec.trades.map((e) => e.channel)).size >= 2
                 && new Set(window.rec.abc.map((e) => e.channel)).size >= 2);
  const { trades, abc } = await rec();
  const bad = trades.filter((e) => !/^odin\.token\.[^.]+\.trade$/.test(e.channel))
    .concat(abc.filter((e) => !e.channel.startsWith("odin.token.ABC.")));
  if (bad.length) throw new Error(`events given to a subscription they do not match: ${JSON.stringify(bad)}`);
  // An ABC trade matches both patterns: each subscription gets it.
  const abcTrades = (list) => list.filter((e) => e.channel === "odin.token.ABC.trade").map((e) => e.seq);
  const both = abcTrades(abc).filter((seq) => abcTrades(trades).includes(seq));
  if (!both.length) throw new Error("no ABC trade reached both subscriptions");
  if (!abc.some((e) => e.channel === "odin.token.ABC.price")) throw new Error("no ABC price event");
  log(`${trades.length} trades (wildcard token), ${abc.length} ABC events (wildcard type)`);
}

// Each channel's events reached `list` in order, exactly once, without a
// gap: n consecutive from the first one received. Returns the count.
function checkSequences(list, label) {
  const byChannel = new Map();
  for (const e of list) {
    if (!byChannel.has(e.channel)) byChannel.set(e.channel, []);
    byChannel.get(e.channel).push(e.n);
  }
  for (const [channel, ns] of byChannel) {
    for (let i = 1; i < ns.length; i++) {
      if (ns[i] !== ns[i - 1] + 1) {
        const what = ns[i] <= ns[i - 1] ? "duplicate or out of order" : `${ns[i] - ns[i - 1] - 1} missed`;
        throw new Error(`${label}: ${channel} went from n=${ns[i - 1]} to n=${ns[i]} (${what}); ` +
                        `around: ${JSON.stringify(ns.slice(Math.max(0, i - 5), i + 5))}`);
      }
    }
  }
  return list.length;
}

// The shard holding the connection is killed (the caller does it after
// READY): the library reconnects, recovers every missed event in order and
// exactly once, and live events follow.
async function killedAndRecovered() {
  const before = (await rec()).states.length;
  console.log("READY");
  await until((n) => window.rec.states.slice(n).some((s) => s.state === "disconnected"),
              before, RECONNECT_WAIT_MS);
  const lost = (await rec()).states.slice(before).find((s) => s.state === "disconnected");
  log(`disconnected: ${JSON.stringify(lost)}`);
  if (lost.reason.code !== 1006 || typeof lost.retryIn !== "number") {
    throw new Error(`expected a 1006 with a retry, got ${JSON.stringify(lost)}`);
  }
  await until(() => window.client.state === "connected"
                 && window.subs.every((s) => s.state === "subscribed"), null, RECONNECT_WAIT_MS);
  const { states } = await rec();
  const back = states.filter((s) => s.state === "connected").at(-1).at;
  log(`reconnected and subscribed again (${states.slice(before).map((s) => s.state).join(" > ")})`);
  await eventsFlowAfter(back);
  log("live events flow again on both subscriptions");
  const r = await rec();
  log(`recovery answers: ${JSON.stringify(r.recovered)}`);
  for (const [i, results] of r.recovered.entries()) {
    if (results.length !== 1 || results[0].recovered !== true) {
      throw new Error(`subscription ${i}: expected one recovered: true, got ${JSON.stringify(results)}`);
    }
  }
  const replayed = r.recovered.reduce((sum, [x]) => sum + x.replayed, 0);
  if (replayed === 0) throw new Error("nothing replayed: the outage missed no event?");
  const n = checkSequences(r.trades, "odin.token.*.trade") + checkSequences(r.abc, "odin.token.ABC.*");
  log(`${replayed} events replayed after the reconnect; ${n} events in all, every channel's n ` +
      "consecutive: none missed, none twice, in order");
}

// The node tells of events it did not send live (older than
// outbound.max_event_age: the caller produces them after READY, between
// fresh ones of another channel): the library recovers them by itself from
// the position the gap notice gives, and hands every event of every channel
// over in order and once (the fresh ones it held meanwhile included).
//
// sse-gap: the same with WebSocket blocked: over Server-Sent Events the
// library opens a new stream from the gap's positions by itself.
async function gap(blockWebSocket = false) {
  await open({ blockWebSocket });
  await start(false);
  const transport = await page.evaluate(() => window.client.transport);
  if (transport !== (blockWebSocket ? "sse" : "websocket")) {
    throw new Error(`connected over ${transport}`);
  }
  const streamsBefore = await page.evaluate(() => window.eventStreams?.length ?? 0);
  console.log("READY");
  await until(() => window.rec.trades.filter((e) => e.channel === "odin.token.OLD.trade").length >= 20
                 && window.rec.trades.filter((e) => e.channel === "odin.token.NEW.trade").length >= 6);
  const r = await rec();
  log(`gap notices: ${JSON.stringify(r.gaps)}; recovery answers: ${JSON.stringify(r.recovered)}`);
  if (!r.gaps.length || r.gaps.some((g) => g.reason !== "stale")) {
    throw new Error(`expected stale gap notices, got ${JSON.stringify(r.gaps)}`);
  }
  if (!r.recovered[0].length || r.recovered[0].some((x) => x.recovered !== true)) {
    throw new Error(`expected recovered: true, got ${JSON.stringify(r.recovered[0])}`);
  }
  const old = r.trades.filter((e) => e.channel === "odin.token.OLD.trade").map((e) => e.n);
  if (JSON.stringify(old) !== JSON.stringify([...Array(20).keys()].map((i) => i + 1))) {
    throw new Error(`the stale events, recovered: ${JSON.stringify(old)}`);
  }
  const n = checkSequences(r.trades, "odin.token.*.trade");
  if (blockWebSocket) {
    const streams = await page.evaluate(() => window.eventStreams);
    const since = streams.slice(streamsBefore).filter((u) => new URL(u).searchParams.get("since"));
    if (!since.length) throw new Error(`no new stream with since after the gap: ${JSON.stringify(streams)}`);
    log(`over SSE: a new stream from the gap's positions (${new URL(since[0]).searchParams.get("since")})`);
  }
  log(`${n} trades, the 20 stale ones recovered after the gap notice, in order, once`);
}

// A record of odin.token.UND.trade the node cannot decode, between two good
// ones (the caller produces them after READY): the trade subscription gets
// n=1, its "gap" (undecodable, in place), n=2; the library does not try to
// recover it (no "recovered" answer), and the other subscription hears
// nothing of it.
async function undecodable() {
  await open();
  await start(false);
  console.log("READY");
  await until(() => window.rec.trades.filter((e) => e.channel === "odin.token.UND.trade").length >= 2
                 && window.rec.holes[0].length >= 1);
  const r = await rec();
  log(`gap notices: ${JSON.stringify(r.gaps)}; subscription gaps: ${JSON.stringify(r.holes)}`);
  const und = r.trades.filter((e) => e.channel === "odin.token.UND.trade").map((e) => e.n);
  if (JSON.stringify(und) !== "[1,2]") throw new Error(`UND trades: ${JSON.stringify(und)}`);
  const [hole] = r.holes[0];
  if (r.holes[0].length !== 1 || hole.reason !== "undecodable" || hole.channel !== "odin.token.UND.trade"
      || hole.detail !== "invalid_json" || !/:1$/.test(hole.position)) {
    throw new Error(`expected one undecodable gap at offset 1, got ${JSON.stringify(r.holes[0])}`);
  }
  const first = r.trades.findIndex((e) => e.channel === "odin.token.UND.trade");
  if (hole.after !== first + 1) throw new Error(`the gap came after ${hole.after} trades, not in place`);
  // A recovery would have been asked at once, on the same socket as the
  // second event, and answered before anything after it: none was.
  if (r.holes[1].length || r.recovered[0].length) {
    throw new Error(`recovered or told elsewhere: ${JSON.stringify([r.holes[1], r.recovered[0]])}`);
  }
  log("the undecodable record was told in place, once, and not recovered");
}

async function deflate() {
  await open();
  await start(false);
  await checkDispatch();
  const extensions = await page.evaluate(() => window.socketExtensions);
  log(`negotiated: ${JSON.stringify(extensions)}`);
  if (extensions.length !== 1 || !/^permessage-deflate\b/.test(extensions[0])
      || !/server_no_context_takeover/.test(extensions[0])) {
    throw new Error(`expected permessage-deflate with server_no_context_takeover, got ${JSON.stringify(extensions)}`);
  }
  await until(() => window.rec.trades.length >= 60 && window.rec.abc.length >= 40);
  const r = await rec();
  const n = checkSequences(r.trades, "odin.token.*.trade") + checkSequences(r.abc, "odin.token.ABC.*");
  log(`${n} events over the compressed connection, every channel's n consecutive`);
}

async function reconnect() {
  await open();
  await start(false, true);
  await checkDispatch();
  await killedAndRecovered();
}

// Subscribe with snapshot: true once the node has the producer's last
// event of every channel (it stopped producing): the latest event of each
// matching channel arrives marked snapshot, and nothing else can bring it.
async function snapshot(lastN) {
  await open();
  const deadline = Date.now() + WAIT_MS;
  for (let attempt = 1; ; attempt++) {
    const got = await page.evaluate(async (url) => {
      const client = new window.OdinWS(url);
      const events = { wild: [], exact: [] };
      const keep = (list) => (e) => list.push({ channel: e.channel, n: e.data.n, kind: e.data.kind,
                                                snapshot: e.snapshot === true });
      const subs = [client.subscribe("odin.token.*.price", { snapshot: true }, keep(events.wild)),
                    client.subscribe("odin.token.ABC.price", { snapshot: true }, keep(events.exact))];
      client.connect();
      const t0 = Date.now();
      while (!subs.every((s) => s.state === "subscribed") && Date.now() - t0 < 20000) {
        await new Promise((r) => setTimeout(r, 50));
      }
      // The snapshot follows the ack in the same write: give the page's
      // event loop a few turns to hand it over, then look.
      for (let i = 0; i < 20 && (events.wild.length < 3 || events.exact.length < 1); i++) await new Promise((r) => setTimeout(r, 50));
      client.close();
      return { events, states: subs.map((s) => s.state) };
    }, WS_URL);
    const latest = got.events.wild.filter((e) => e.n === lastN);
    if (latest.length === 3 || Date.now() > deadline) {
      log(`attempt ${attempt}: ${JSON.stringify(got)}`);
      const channels = got.events.wild.map((e) => e.channel).sort();
      const want = ["odin.token.ABC.price", "odin.token.QRS.price", "odin.token.XYZ.price"];
      if (JSON.stringify(channels) !== JSON.stringify(want)) {
        throw new Error(`wildcard snapshot: channels ${JSON.stringify(channels)}, want ${JSON.stringify(want)}`);
      }
      if (!got.events.wild.every((e) => e.snapshot && e.n === lastN && e.kind === "price")) {
        throw new Error(`wildcard snapshot: want each channel's last price (n=${lastN}) marked snapshot`);
      }
      const exact = got.events.exact;
      if (exact.length !== 1 || !exact[0].snapshot || exact[0].n !== lastN
          || exact[0].channel !== "odin.token.ABC.price") {
        throw new Error(`exact snapshot: ${JSON.stringify(exact)}`);
      }
      log("the current price of every matching channel at once, marked snapshot, nothing else");
      return;
    }
    log(`attempt ${attempt}: the node has not delivered the last events yet; again`);
  }
}

// WebSocket blocked: the library falls back to SSE; snapshot, live events,
// and recovery after the shard holding the stream is killed.
async function sse() {
  await open({ blockWebSocket: true });
  await page.evaluate((url) => {
    const rec = window.rec = { states: [], errors: [], trades: [], abc: [], prices: [],
                               fallbacks: [] };
    // Default transports (websocket, sse); a 4 s outage as in start(..., true).
    const client = window.client = new window.OdinWS(url, { backoffBase: 4,
                                                            env: { random: () => 1 } });
    client.on("state", (s) => rec.states.push({ ...s, transport: client.transport, at: Date.now() }));
    client.on("error", (e) => rec.errors.push({ ...e, at: Date.now() }));
    client.on("fallback", (f) => rec.fallbacks.push(f));
    const keep = (list) => (e) => list.push({ channel: e.channel, seq: e.data.seq, n: e.data.n,
                                              snapshot: e.snapshot === true, at: Date.now() });
    window.subs = [client.subscribe("odin.token.*.trade", {}, keep(rec.trades)),
                   client.subscribe("odin.token.ABC.*", {}, keep(rec.abc))];
    window.priceSub = client.subscribe("odin.token.XYZ.price", { snapshot: true }, keep(rec.prices));
    rec.recovered = [[], []];
    window.subs.forEach((s, i) => s.on("recovered", (r) => rec.recovered[i].push(r)));
    client.connect();
  }, WS_URL);
  await until(() => window.client.state === "connected"
                 && window.subs.every((s) => s.state === "subscribed"));
  const first = await page.evaluate(() => ({ transport: window.client.transport,
                                             blocked: window.blockedSockets,
                                             fallback: window.rec.fallbacks[0] }));
  log(`connected over ${first.transport} after ${first.blocked} blocked WebSocket attempt(s)`);
  if (first.transport !== "sse" || first.blocked < 1) {
    throw new Error(`expected the sse fallback after a blocked WebSocket, got ${JSON.stringify(first)}`);
  }
  // The fallback is said, with why: not a silent switch.
  const said = first.fallback;
  if (!said || said.from !== "websocket" || said.to !== "sse" || said.reason?.code !== 1006
      || !/websocket did not open \(close 1006\); trying sse/.test(said.message)) {
    throw new Error(`expected a "fallback" event websocket -> sse (1006), got ${JSON.stringify(said)}`);
  }
  log(`"fallback" event: ${said.message}`);
  await until(() => window.rec.prices.length >= 2);
  const prices = (await rec()).prices;
  if (!prices[0].snapshot || prices.slice(1).some((e) => e.snapshot)) {
    throw new Error(`expected one snapshot event first, then live: ${JSON.stringify(prices.slice(0, 5))}`);
  }
  checkSequences(prices, "odin.token.XYZ.price");
  log(`snapshot over SSE: XYZ price n=${prices[0].n} first, then live n=${prices[1].n}`);
  await checkDispatch();
  await killedAndRecovered();
  const transports = new Set((await rec()).states.filter((s) => s.state === "connected")
                                                 .map((s) => s.transport));
  if (transports.size !== 1 || !transports.has("sse")) {
    throw new Error(`connected over ${[...transports]}, want sse only`);
  }
  log("reconnected over SSE and recovered there too");
  // A subscription change opens a new stream (with every channel and the
  // positions seen): the other subscriptions go on without a gap.
  const tradesBefore = await page.evaluate(() => window.rec.trades.length);
  await page.evaluate(() => {
    window.rec.qrs = [];
    window.qrsSub = window.client.subscribe("odin.token.QRS.price", {}, (e) =>
      window.rec.qrs.push({ channel: e.channel, n: e.data.n, at: Date.now() }));
  });
  await until(() => window.qrsSub.state === "subscribed" && window.rec.qrs.length >= 3);
  await eventsFlowAfter(Date.now());
  const after = await rec();
  checkSequences(after.trades, "odin.token.*.trade");
  checkSequences(after.abc, "odin.token.ABC.*");
  checkSequences(after.qrs, "odin.token.QRS.price");
  log(`subscribed to odin.token.QRS.price on a new stream: ${after.qrs.length} events; the others ` +
      `went on without a gap (${after.trades.length - tradesBefore} trades since)`);
}

async function token() {
  await open();
  await start(true);
  // Refresh 1 (good) keeps the connection past the first token's exp;
  // refresh 2 (bad) is refused, and the server closes with 4001 at exp.
  await until(() => window.rec.states.some((s) => s.state === "disconnected"), null, 30000);
  const r = await rec();
  const closed = r.states.find((s) => s.state === "disconnected");
  log(`disconnected: ${JSON.stringify(closed)}; errors: ${JSON.stringify(r.errors)}`);
  if (closed.reason.code !== 4001) throw new Error(`expected 4001, got ${JSON.stringify(closed)}`);
  // The server closes when the connection's token expires (leeway 0): not
  // at the first token's exp but at the refreshed one's (same clock).
  if (closed.at < r.exps[1]) {
    throw new Error(`closed at ${closed.at}, before the refreshed token's exp ${r.exps[1]}`);
  }
  const refused = r.errors.filter((e) => e.code === "forbidden" && e.request?.type === "refresh");
  if (refused.length !== 1) throw new Error(`expected one refused refresh, got ${JSON.stringify(r.errors)}`);
  if (closed.tokenCalls !== 2) {
    throw new Error(`getToken called ${closed.tokenCalls} times before the 4001, want 2`);
  }
  await until(() => window.client.state === "connected"
                 && window.subs.every((s) => s.state === "subscribed"), null, RECONNECT_WAIT_MS);
  const after = await rec();
  if (after.tokenCalls !== 3) throw new Error(`getToken called ${after.tokenCalls} times, want 3`);
  const back = after.states.filter((s) => s.state === "connected").at(-1).at;
  log("reconnected with the token getToken gave after the 4001");
  await eventsFlowAfter(back);
  log("live events flow again");
}

// Deltas applied in the browser: the same events as whole ones, channel by channel.
async function delta() {
  await open();
  await page.evaluate((url) => {
    const rec = window.rec = { plain: {}, compact: {}, merge: {}, errors: [] };
    const keep = (into) => (e) => {
      (into[e.channel] ||= {})[e.data.n] = { data: e.data, ts: e.ts, pos: e.pos };
    };
    window.clients = [new window.OdinWS(url), new window.OdinWS(url), new window.OdinWS(url)];
    window.clients.forEach((c) => c.on("error", (e) => rec.errors.push(e)));
    window.subs = [window.clients[0].subscribe("odin.token.*.price", {}, keep(rec.plain)),
                   window.clients[1].subscribe("odin.token.*.price", { delta: true }, keep(rec.compact)),
                   window.clients[2].subscribe("odin.token.*.price", { delta: "merge-patch" }, keep(rec.merge))];
    window.clients.forEach((c) => c.connect());
  }, WS_URL);
  await until(() => window.subs.every((s) => s.state === "subscribed"));
  log("all three subscribed");
  await until(() => (window.deltaFrames || 0) >= 30 && (window.compactFrames || 0) >= 30);
  const { plain, compact, merge, errors } = await rec();
  if (errors.length) throw new Error(`client errors: ${JSON.stringify(errors)}`);
  for (const [name, got] of [["compact", compact], ["merge-patch", merge]]) {
    let compared = 0;
    for (const [channel, byN] of Object.entries(got)) {
      for (const [n, event] of Object.entries(byN)) {
        const want = plain[channel]?.[n];
        if (want === undefined) continue;
        if (JSON.stringify(want) !== JSON.stringify(event)) {
          throw new Error(`${channel} n=${n}: ${name} subscription got ${JSON.stringify(event)}, plain ${JSON.stringify(want)}`);
        }
        compared++;
      }
    }
    if (compared < 30) throw new Error(`only ${compared} ${name} events to compare`);
    log(`${compared} ${name} events equal the whole ones (data, ts, pos)`);
  }
  log(`deltas on the wire: ${await page.evaluate(() => [window.compactFrames, window.deltaFrames])} (compact, merge-patch)`);
}

let failed = false;
try {
  if (mode === "reconnect") await reconnect();
  else if (mode === "token") await token();
  else if (mode === "snapshot") await snapshot(Number(secret));
  else if (mode === "gap") await gap();
  else if (mode === "sse-gap") await gap(true);
  else if (mode === "undecodable") await undecodable();
  else if (mode === "deflate") await deflate();
  else if (mode === "delta") await delta();
  else await sse();
  // Refused attempts while a shard restarts log connection errors in the
  // console; only script errors count.
  const scriptErrors = browser.problems.filter((p) => p.startsWith("page error"));
  if (scriptErrors.length) throw new Error(scriptErrors.join("; "));
} catch (e) {
  failed = true;
  console.error(`client library check failed: ${e.message}`);
  if (browser?.problems.length) console.error(browser.problems.join("\n"));
  if (page) console.error(`recorded: ${JSON.stringify(await rec().catch(() => null))?.slice(0, 4000)}`);
  if (page) {
    const wire = await page.evaluate(() => window.wire).catch(() => []);
    console.error(`the socket received (last ${wire.length}):\n${wire.join("\n")}`);
  }
} finally {
  if (browser) await browser.close();
  site.close();
}
process.exit(failed ? 1 : 0);
