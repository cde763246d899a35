// What the browser checks share: Debian's Chromium (no browser download)
// driven by playwright-core with a throwaway profile, and progress lines
// stamped with the time since start.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const WAIT_MS = 60000;
// Backoff with full jitter, capped at 30 s, plus a server's or shard's restart.
export const RECONNECT_WAIT_MS = 120000;

const t0 = Date.now();
export const log = (m) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);

/**
 * A headless Chromium on a fresh profile: {context, page, problems, close()}.
 * `problems` collects the page's script errors ("page error: …") and console
 * errors ("console: …").
 */
export async function launch(options = {}) {
  const profile = mkdtempSync(join(tmpdir(), "odinws-chromium-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      headless: true,
      ...options,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
  } catch (e) {
    rmSync(profile, { recursive: true, force: true });
    throw e;
  }
  const page = context.pages()[0] || await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  return {
    context, page, problems,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
