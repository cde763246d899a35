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
// reconnect: subscribes to odin.token.*.trade and odin.token.ABC.*, checks
// each event reaches every subscription whose pattern matches it, prints
// "READY"; the caller then SIGKILLs the shard holding the connection. Passes
// when the library noticed (1006), reconnected on its own, subscribed again
// and receives live events again. (Events missed meanwhile are not
// recovered: the server keeps no positions yet.)
//
// token: connects with a 6 s JWT and getToken minting tokens with the
// secret: the first refresh (before exp) is good, so the connection outlives
// the first token; the second is signed with a wrong key, the server refuses
// it ("forbidden") and closes with 4001 at exp; the library asks getToken
// again and reconnects with the good token it gets, and events flow again.
//
// Exits 0 on success; otherwise prints why on stderr and exits 1.
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { launch, log, RECONNECT_WAIT_MS, WAIT_MS } from "./chromium.mjs";

const [mode, base, secret] = process.argv.slice(2);
if (!["reconnect", "token"].includes(mode) || !base || (mode === "token" && !secret)) {
  console.error("usage: node client.test.mjs reconnect|token <node base url> [secret]");
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

async function open() {
  browser = await launch();
  page = browser.page;
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
async function start(withAuth) {
  await page.evaluate(async ({ url, withAuth }) => {
    const rec = window.rec = { states: [], errors: [], trades: [], abc: [], tokenCalls: 0 };
    const options = {};
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
    client.on("state", (s) => rec.states.push({ ...s, at: Date.now() }));
    client.on("error", (e) => rec.errors.push({ ...e, at: Date.now() }));
    const keep = (list) => (e) => list.push({ channel: e.channel, seq: e.data.seq, at: Date.now() });
    window.subs = [client.subscribe("odin.token.*.trade", {}, keep(rec.trades)),
                   client.subscribe("odin.token.ABC.*", {}, keep(rec.abc))];
    client.connect();
  }, { url: WS_URL, withAuth });
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

async function reconnect() {
  await open();
  await start(false);
  await checkDispatch();
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
  if (r.tokenCalls !== 2) throw new Error(`getToken called ${r.tokenCalls} times before the 4001, want 2`);
  await until(() => window.client.state === "connected"
                 && window.subs.every((s) => s.state === "subscribed"), null, RECONNECT_WAIT_MS);
  const after = await rec();
  if (after.tokenCalls !== 3) throw new Error(`getToken called ${after.tokenCalls} times, want 3`);
  const back = after.states.filter((s) => s.state === "connected").at(-1).at;
  log("reconnected with the token getToken gave after the 4001");
  await eventsFlowAfter(back);
  log("live events flow again");
}

let failed = false;
try {
  await (mode === "reconnect" ? reconnect() : token());
  // Refused attempts while a shard restarts log connection errors in the
  // console; only script errors count.
  const scriptErrors = browser.problems.filter((p) => p.startsWith("page error"));
  if (scriptErrors.length) throw new Error(scriptErrors.join("; "));
} catch (e) {
  failed = true;
  console.error(`client library check failed: ${e.message}`);
  if (browser?.problems.length) console.error(browser.problems.join("\n"));
  if (page) console.error(`recorded: ${JSON.stringify(await rec().catch(() => null))?.slice(0, 4000)}`);
} finally {
  if (browser) await browser.close();
  site.close();
}
process.exit(failed ? 1 : 0);
