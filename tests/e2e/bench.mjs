// Benchmarks of the built playground (figures, not pass/fail):
//   - bytes of wasm + JS, raw and gzipped (what a first visit downloads before the lesson),
//   - time from navigation to the first lesson's title being rendered, on localhost,
//   - CPU training throughput of the train widget (nano, stories) in headless Chromium.
//
//   node tests/e2e/bench.mjs [dist-folder]      (build first: trunk build --release)

import { createServer } from "node:http";
import { readFileSync, readdirSync, statSync, mkdtempSync } from "node:fs";
import { join, extname, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tmpdir } from "node:os";
import { gzipSync } from "node:zlib";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const dist = resolve(here, "../..", process.argv[2] ?? "dist");

let raw = 0, gz = 0;
for (const f of readdirSync(dist)) {
  if (![".wasm", ".js"].includes(extname(f))) continue;
  const body = readFileSync(join(dist, f));
  const z = gzipSync(body, { level: 9 }).length;
  console.log(`${f.padEnd(28)} ${(body.length / 1e6).toFixed(2).padStart(7)} MB  gzip ${(z / 1e6).toFixed(2).padStart(6)} MB`);
  raw += body.length; gz += z;
}
console.log(`${"wasm + JS total".padEnd(28)} ${(raw / 1e6).toFixed(2).padStart(7)} MB  gzip ${(gz / 1e6).toFixed(2).padStart(6)} MB`);

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json" };
const server = createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  const file = join(dist, path === "/" ? "index.html" : path);
  try {
    const body = readFileSync(file);
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
    res.end(body);
  } catch { res.writeHead(404); res.end(); }
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${server.address().port}/`;

const ctx = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "tinytune-bench-")), {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const times = [];
for (let i = 0; i < 5; i++) {
  const page = await ctx.newPage();
  await page.goto(base + "?backend=cpu", { waitUntil: "commit" });
  await page.waitForSelector("[data-testid=lesson-title]");
  times.push(await page.evaluate(() => performance.now()));
  await page.close();
}
times.sort((a, b) => a - b);
console.log(`first lesson rendered: median ${times[2].toFixed(0)} ms (min ${times[0].toFixed(0)}, max ${times[4].toFixed(0)}) over 5 loads`);

// The micro preset fine-tuned on sentiment with the widget's defaults (batch 8 × 64 tokens),
// the configuration `tinytune finetune --model assets/micro --data sentiment` repeats natively.
for (const [model, task] of [["micro", "sentiment"], ["nano", "stories"]]) {
  const page = await ctx.newPage();
  await page.goto(base + `?backend=cpu&w2.model=${model}&w2.task=${task}&w2.steps=30`);
  const w = page.locator("[data-widget=train]").first();
  await w.locator("[data-testid=train]").click();
  await w.locator('[data-testid=run-state][data-state="Done"]').waitFor({ timeout: 600_000 });
  const status = (await w.locator(".status").first().textContent()).trim();
  const secs = Number(/([\d.]+) s/.exec(status)[1]);
  console.log(`train widget, CPU, ${model}/${task}, 30 steps of 8×64: ${(30 / secs).toFixed(2)} steps/s (${status})`);
  await page.close();
}
await ctx.close();
server.close();
