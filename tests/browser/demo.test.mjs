// Drives the odinws demo page in headless Debian Chromium (playwright-core,
// no browser download) and checks what a visitor would see.
//
//   node tests/browser/demo.test.mjs <page url> <screenshot path> [--reconnect]
//
// Exits 0 when the page connected (through the client library it loads
// from /odinws.js), subscribed through its own controls,
// filled rows from live events (trades of every token, prices of one) and
// drew sparklines; otherwise prints why on stderr and exits 1. The
// screenshot is saved either way, when the page got that far.
//
// With --reconnect: the page subscribes from its URL, and once events flow
// the script prints a line "READY"; the caller then restarts the server. The
// check passes when the page noticed (status left "connected"), came back on
// its own, subscribed again (recovering: the page shows "reconnected:
// recovered N missed events") and receives events again.
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { launch, log, RECONNECT_WAIT_MS, WAIT_MS } from "./chromium.mjs";

const [url, shot, mode] = process.argv.slice(2);
if (!url || !shot) {
  console.error("usage: node demo.test.mjs <page url> <screenshot path>");
  process.exit(2);
}
let browser;
let page;
let problems = [];

const number = (id) => page.evaluate(
  (i) => Number(document.getElementById(i).textContent.replace(/\D/g, "")), id);

async function open(query) {
  browser = await launch({ viewport: { width: 1400, height: 1000 } });
  ({ page, problems } = browser);
  let library = null;
  page.on("response", (r) => { if (new URL(r.url()).pathname === "/odinws.js") library = r.status(); });
  await page.goto(url + (url.includes("?") ? "&" : "?") + query, { timeout: WAIT_MS });
  await page.waitForFunction(
    () => document.getElementById("status").dataset.state === "connected", null, { timeout: WAIT_MS });
  log("connected");
  // The page's connection is the client library's, loaded from the node.
  if (library !== 200) throw new Error(`the page did not load /odinws.js (status ${library})`);
}

async function reconnect() {
  const channel = "odin.token.*.trade";
  await open("subscribe=" + encodeURIComponent(channel));
  const chip = `.chip.ok[data-channel="${channel}"]`;
  await page.waitForSelector(chip, { timeout: WAIT_MS });
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length > 0,
    null, { timeout: WAIT_MS, polling: 200 });
  const rows = (await page.$$("#rows tr")).length;
  console.log("READY");
  await page.waitForFunction(
    () => document.getElementById("status").dataset.state !== "connected",
    null, { timeout: RECONNECT_WAIT_MS, polling: 50 });
  log(`server gone: status "${await page.textContent("#status")}"`);
  await page.waitForFunction(
    () => document.getElementById("status").dataset.state === "connected",
    null, { timeout: RECONNECT_WAIT_MS, polling: 100 });
  log("reconnected");
  await page.waitForSelector(chip, { timeout: WAIT_MS });
  const before = await number("total");
  await page.waitForFunction(
    (n) => Number(document.getElementById("total").textContent.replace(/\D/g, "")) > n + 5,
    before, { timeout: WAIT_MS, polling: 200 });
  log("events flow again");
  // The resubscription's ack said what recovery did: the page shows it.
  await page.waitForFunction(() => /^reconnected: recovered \d+ missed events?/
                                      .test(document.getElementById("recovery").textContent),
    null, { timeout: WAIT_MS, polling: 100 });
  log(`the page says "${await page.textContent("#recovery")}"`);
  const after = (await page.$$("#rows tr")).length;
  if (after < rows) throw new Error(`rows went from ${rows} to ${after}`);
  // The close and the refused attempts while the server restarts may log
  // connection errors in the console; only script errors count here.
  const scriptErrors = problems.filter((p) => p.startsWith("page error"));
  if (scriptErrors.length) throw new Error(scriptErrors.join("; "));
}

async function main() {
  // Start with no subscription: the subscriptions below go through the page's controls.
  await open("subscribe=");

  await page.fill("#pattern-input", "odin.token.*.trade");
  await page.click("#pattern-subscribe");
  await page.waitForSelector('.chip.ok[data-channel="odin.token.*.trade"]', { timeout: WAIT_MS });
  log("subscribed to odin.token.*.trade");

  await page.waitForFunction(
    () => document.querySelectorAll("#rows tr").length >= 3, null, { timeout: WAIT_MS, polling: 200 });
  // Trades only so far: every row shows a trade and no liquidity.
  const early = await page.$$eval("#rows tr", (rows) => rows.map((r) => ({
    token: r.dataset.token, types: r.dataset.types, trade: r.querySelector(".trade").textContent,
    count: Number(r.querySelector(".count").textContent.replace(/\D/g, "")) })));
  for (const r of early) {
    if (r.types !== "trade") throw new Error(`row ${r.token} has event types "${r.types}", want trade only`);
    if (!/^\S+ (buy|sell)$/.test(r.trade)) throw new Error(`row ${r.token} trade cell "${r.trade}"`);
  }
  log(`${early.length} rows from trades`);

  // The busiest token so far gets a price subscription through the token/type picker.
  const busiest = early.reduce((a, b) => (b.count > a.count ? b : a)).token;
  await page.fill("#tokens-input", busiest);
  for (const type of ["trade", "price", "liquidity", "*"]) {
    await page.setChecked(`input[name="type"][value="${type}"]`, type === "price");
  }
  await page.click("#pick-subscribe");
  await page.waitForSelector(`.chip.ok[data-channel="odin.token.${busiest}.price"]`, { timeout: WAIT_MS });
  log(`subscribed to odin.token.${busiest}.price`);
  await page.waitForFunction(
    (token) => {
      const row = document.querySelector(`#rows tr[data-token="${token}"]`);
      return row && row.dataset.types.split(" ").includes("price");
    }, busiest, { timeout: WAIT_MS, polling: 200 });
  log(`price events arrive for ${busiest}`);

  // Sparklines: the busiest row has several points and its canvas has ink.
  await page.waitForFunction(
    (token) => {
      const c = document.querySelector(`#rows tr[data-token="${token}"] canvas`);
      if (!c || Number(c.dataset.points) < 3) return false;
      const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let ink = 0;
      for (let i = 3; i < px.length; i += 4) if (px[i] > 0) ink++;
      return ink > 30;
    }, busiest, { timeout: WAIT_MS, polling: 200 });
  log("sparkline drawn");

  // Header counters move and the status still says connected.
  await page.waitForFunction(
    () => Number(document.getElementById("rate").textContent.replace(/\D/g, "")) > 0
      && Number(document.getElementById("total").textContent.replace(/\D/g, "")) > 0,
    null, { timeout: WAIT_MS, polling: 200 });
  const status = await page.textContent("#status");
  if (status.trim() !== "connected") throw new Error(`status says "${status}"`);
  const lastEvent = JSON.parse(await page.textContent("#last-event"));
  if (lastEvent.type !== "event" || !/^odin\.token\.[^.]+\.(trade|price)$/.test(lastEvent.channel)) {
    throw new Error(`last event panel shows ${JSON.stringify(lastEvent)}`);
  }
  if (problems.length) throw new Error(problems.join("; "));
}

let failed = false;
try {
  await (mode === "--reconnect" ? reconnect() : main());
} catch (e) {
  failed = true;
  console.error(`demo page check failed: ${e.message}`);
  if (problems.length) console.error(problems.join("\n"));
} finally {
  if (page) {
    try {
      mkdirSync(dirname(shot), { recursive: true });
      await page.screenshot({ path: shot, fullPage: true });
      log(`screenshot: ${shot}`);
    } catch (e) {
      console.error(`no screenshot: ${e.message}`);
    }
  }
  if (browser) await browser.close();
}
process.exit(failed ? 1 : 0);
