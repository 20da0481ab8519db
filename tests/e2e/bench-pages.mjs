// Side-by-side training speed of several builds of the page (figures, not pass/fail): lesson
// 1's run (micro fine-tuned on sentiment, 30 steps of 8 × 64 tokens, CPU backend) in
// headless Chromium, the builds taking turns in each round, so that a busy machine slows
// them alike. Prints each run and a table of medians with each build's ratio to the first.
//
//   node tests/e2e/bench-pages.mjs [--rounds N] [--steps N] label=dist-folder label=dist-folder ...
//
// Pages are served cross-origin isolated, as `trunk serve` serves them, so the CPU worker
// trains on a thread per core; `label=dist-folder@plain` serves a build without the COOP/COEP
// headers, so on one thread.
//
// For the speed issue's before/after figure, build the page of an earlier commit in a
// worktree (git worktree add /tmp/base <commit>; trunk build --release --dist dist-base
// there) and name it first. Every build gets the same URL: lesson 1, the CPU backend, and
// each setting of the run pinned (model, task, steps, batch, seq, lr, seed, no before/after
// comparison), with the train widget's number read from this checkout's lesson 1 (pages
// since 2026-11 number widgets within their lesson). A run's seconds are the status line's:
// from the first step to the last, with a tenth of a second's resolution (about 2% at 5 s).
// The script warns when the builds end at different losses (then they did not train the same
// run) and fails when it cannot read a run.

import { mkdtempSync, existsSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tmpdir } from "node:os";
import { chromium } from "playwright-core";
import { serve, firstTrainWidget } from "./serve.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 ? Number(args[at + 1]) : fallback;
};
const ROUNDS = option("--rounds", 3);
const STEPS = option("--steps", 30);
if (!(ROUNDS >= 1) || !(STEPS >= 1)) throw new Error("bench-pages: --rounds and --steps take a positive number");
const builds = args
  .filter((a, i) => !a.startsWith("--") && !["--rounds", "--steps"].includes(args[i - 1]))
  .map((a) => {
    const m = /^([^=]+)=(.+)$/.exec(a);
    if (!m) throw new Error(`bench-pages: name each build as label=dist-folder, not ${JSON.stringify(a)}`);
    // folder@plain: served without the COOP/COEP headers, as a plain static host serves it
    // (the CPU worker then trains on one thread).
    const plain = m[2].endsWith("@plain");
    const dist = resolve(root, plain ? m[2].slice(0, -"@plain".length) : m[2]);
    if (!existsSync(join(dist, "index.html"))) throw new Error(`bench-pages: ${dist} has no index.html: build it first (trunk build --release)`);
    return { label: m[1], dist, isolated: !plain };
  });
if (builds.length === 0) throw new Error("bench-pages: name at least one build (label=dist-folder)");

function url(port) {
  const { slug, n } = firstTrainWidget();
  const w = `w${n}`;
  const run = { model: "micro", task: "sentiment", steps: STEPS, batch: 8, seq: 64, lr: 0.001, seed: 0, compare: false };
  const settings = Object.entries(run).map(([k, v]) => `${w}.${k}=${v}`).join("&");
  return `http://127.0.0.1:${port}/?lesson=${slug}&backend=cpu&${settings}`;
}

const ctx = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "tinytune-bench-")), {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const results = new Map(builds.map((b) => [b.label, []]));
const losses = new Set();
try {
  for (let round = 1; round <= ROUNDS; round++) {
    for (const build of builds) {
      const server = await serve(build.dist, { isolated: build.isolated });
      const page = await ctx.newPage();
      await page.goto(url(server.address().port));
      const w = page.locator("[data-widget=train]").first();
      await w.locator("[data-testid=train]").click();
      const state = w.locator("[data-testid=run-state]");
      await w.locator('[data-testid=run-state][data-state="Done"], [data-testid=run-state][data-state="Failed"]').waitFor({ timeout: 900_000 });
      const status = (await state.locator("xpath=..").textContent()).trim();
      if ((await state.getAttribute("data-state")) !== "Done") throw new Error(`bench-pages: ${build.label}'s run failed: ${status}`);
      const steps = /step (\d+) of (\d+)/.exec(status);
      const secs = /([\d.]+) s\b/.exec(status.replace(/[\d.]+ tokens\/s/, ""));
      const loss = /loss ([\d.]+)/.exec(status);
      if (!steps || !secs || Number(steps[1]) !== STEPS) throw new Error(`bench-pages: cannot read ${STEPS} steps and the seconds from ${build.label}'s status line: ${JSON.stringify(status)}`);
      const s = Number(secs[1]);
      const tokens = (STEPS * 8 * 64) / s;
      results.get(build.label).push(tokens);
      if (loss) losses.add(loss[1]);
      console.log(`round ${round}, ${build.label}: ${STEPS} steps in ${s} s, ${tokens.toFixed(0)} tokens/s over the run, loss ${loss ? loss[1] : "?"}`);
      await page.close();
      server.close();
    }
  }
  if (losses.size > 1) console.log(`\nWARNING: the runs ended at different losses (${[...losses].join(", ")}): the builds did not train the same run`);
  // The middle value (the upper of the two middle ones for an even number of rounds).
  const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
  const first = median(results.get(builds[0].label));
  console.log(`\n| build | tokens/s over the run (median of ${ROUNDS}) | range | vs ${builds[0].label} |\n|---|---|---|---|`);
  for (const b of builds) {
    const v = results.get(b.label);
    console.log(`| ${b.label} | ${median(v).toFixed(0)} | ${Math.min(...v).toFixed(0)}-${Math.max(...v).toFixed(0)} | ${(median(v) / first).toFixed(2)}× |`);
  }
} finally {
  await ctx.close();
}
