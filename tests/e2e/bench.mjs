// Benchmarks of the built playground (figures, not pass/fail):
//   - bytes of wasm + JS, raw and gzipped: the page, and the page with each build of the
//     worker (the summary's figure is the page with the CPU-only worker, what a first visit
//     without a hardware GPU downloads),
//   - time from navigation to the first lesson's title being rendered, on localhost,
//   - CPU training throughput of lesson 1's train widget in headless Chromium, read from
//     the widget's status line (micro on sentiment, then nano on stories; batch 8 × 64
//     tokens, the configuration `tinytune finetune --model assets/micro --data sentiment`
//     repeats natively).
//
//   node tests/e2e/bench.mjs [dist-folder] [--quick] [--backends cpu,cpu1,webgpu] [--steps N] [--gpu] [--prof]
//   (build first: trunk build --release)
//
// --backends: which of the page's backends train (default cpu,cpu1; cpu with --quick; below). webgpu without --gpu runs on
// SwiftShader, Chromium's software Vulkan (what CI has): a regression figure, not a GPU's
// speed. --gpu launches Chromium with its GPU (no --disable-gpu, no SwiftShader): run it on a
// machine with a graphics card and a display or a headless-capable driver to get WebGPU's
// figures beside the CPU's, in one table at the end.
//
// --prof: V8's sampling profiler in every Chromium process (`--js-flags=--prof`); each isolate
// writes isolate-*.log into the current folder. The worker's is the one with the most `tick`
// lines; `node --prof-process` on it ranks functions. Use a dev build (`trunk build`): the
// release wasm carries no function names.
//
// --quick (or BENCH_QUICK=1): one page load and one micro run of a few steps, for
// scripts/test.sh. Either way the script exits non-zero when it cannot find or parse what it
// measures (no wasm in the folder, no lesson title, a run that fails, a status line it cannot
// read), so a change to the page cannot leave it silently measuring nothing.

import { readFileSync, readdirSync, mkdtempSync } from "node:fs";
import { join, extname, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tmpdir } from "node:os";
import { gzipSync } from "node:zlib";
import { chromium } from "playwright-core";
import { serve, firstTrainWidget } from "./serve.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const args = process.argv.slice(2);
const quick = args.includes("--quick") || process.env.BENCH_QUICK === "1";
const dist = resolve(root, args.find((a, i) => !a.startsWith("--") && !["--backends", "--steps"].includes(args[i - 1])) ?? "dist");
const LOADS = quick ? 1 : 5;
const RUNS = quick ? [["micro", "sentiment", 4]] : [["micro", "sentiment", 30], ["nano", "stories", 30]];
const option = (name) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : undefined;
};
// --steps N: every run trains N steps instead (SwiftShader needs seconds per micro step, so
// `--backends cpu,webgpu --steps 5` gives the regression figure in a few minutes).
if (option("--steps") !== undefined && !(Number(option("--steps")) >= 1)) throw new Error(`bench: --steps takes a number of steps, not ${JSON.stringify(option("--steps"))}`);
for (const r of RUNS) r[2] = Number(option("--steps") ?? r[2]);
// cpu: the CPU worker on a cross-origin isolated page, as `trunk serve` serves it (a thread
// per core); cpu1: the same build on a page without the COOP/COEP headers, so on one thread
// (the side-by-side figure for the threads); webgpu: the WebGPU worker.
const BACKENDS = (option("--backends") ?? (quick ? "cpu" : "cpu,cpu1")).split(",");
for (const b of BACKENDS) if (!["cpu", "cpu1", "webgpu"].includes(b)) throw new Error(`bench: --backends takes cpu, cpu1 and/or webgpu, not ${JSON.stringify(b)}`);
const realGpu = args.includes("--gpu");
const profArgs = args.includes("--prof") ? ["--js-flags=--prof"] : [];

function fail(why) {
  throw new Error(`bench: ${why}`);
}

// ---------------------------------------------------------------- download size
let raw = 0, gz = 0, wasm = 0;
const sizes = {};
for (const f of readdirSync(dist)) {
  if (![".wasm", ".js"].includes(extname(f))) continue;
  const body = readFileSync(join(dist, f));
  const z = gzipSync(body, { level: 9 }).length;
  console.log(`${f.padEnd(28)} ${(body.length / 1e6).toFixed(2).padStart(7)} MB  gzip ${(z / 1e6).toFixed(2).padStart(6)} MB`);
  raw += body.length; gz += z;
  if (extname(f) === ".wasm") wasm++;
  sizes[f] = z;
}
if (wasm === 0) fail(`no .wasm in ${dist}: build it first (trunk build)`);
console.log(`${"wasm + JS, every file".padEnd(28)} ${(raw / 1e6).toFixed(2).padStart(7)} MB  gzip ${(gz / 1e6).toFixed(2).padStart(6)} MB`);
// What a reader downloads: the page, then one build of the worker (trunk names a worker's
// files after its binary: worker-cpu*, or worker* for the build with WebGPU).
// worker-thread.js starts the CPU worker's extra threads.
const build = (f) => (f.startsWith("worker-cpu") || f === "worker-thread.js" ? "cpu" : f.startsWith("worker") ? "webgpu" : "page");
const part = (b) => Object.entries(sizes).filter(([f]) => build(f) === b).reduce((a, [, z]) => a + z, 0);
if (!part("cpu") || !part("webgpu")) fail(`${dist} lacks a worker build (worker-cpu_bg.wasm and worker_bg.wasm): build it with trunk build`);
const mb = (z) => `${(z / 1e6).toFixed(2)} MB`;
console.log(`gzip: page ${mb(part("page"))}; with the CPU-only worker (no hardware GPU) ${mb(part("page") + part("cpu"))}; with the WebGPU worker ${mb(part("page") + part("webgpu"))}`);
const firstVisit = part("page") + part("cpu");

// ---------------------------------------------------------------- the page
const server = await serve(dist), plain = await serve(dist, { isolated: false });
const base = `http://127.0.0.1:${server.address().port}/`;
const plainBase = `http://127.0.0.1:${plain.address().port}/`;

const quiet = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const gpuArgs = !BACKENDS.includes("webgpu")
  ? ["--disable-gpu"]
  : realGpu
    ? ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--ignore-gpu-blocklist"]
    : ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=swiftshader"];
const ctx = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "tinytune-bench-")), {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", ...quiet, ...gpuArgs, ...profArgs],
});
const summary = [];
const table = [];
try {
  const lesson = firstTrainWidget();
  const times = [];
  for (let i = 0; i < LOADS; i++) {
    const page = await ctx.newPage();
    await page.goto(base + `?lesson=${lesson.slug}&backend=cpu`, { waitUntil: "commit" });
    await page.waitForSelector("[data-testid=lesson-title]", { timeout: 60_000 });
    times.push(await page.evaluate(() => performance.now()));
    await page.close();
  }
  times.sort((a, b) => a - b);
  const median = times[Math.floor(times.length / 2)];
  console.log(`first lesson rendered: median ${median.toFixed(0)} ms (min ${times[0].toFixed(0)}, max ${times[times.length - 1].toFixed(0)}) over ${LOADS} load${LOADS > 1 ? "s" : ""}`);
  summary.push(`gzip page + CPU worker ${(firstVisit / 1e6).toFixed(2)} MB`, `first lesson ${median.toFixed(0)} ms`);

  for (const backend of BACKENDS) for (const [model, task, steps] of RUNS) {
    const w = `w${lesson.n}`;
    const page = await ctx.newPage();
    await page.goto((backend === "cpu1" ? plainBase : base) + `?lesson=${lesson.slug}&backend=${backend === "cpu1" ? "cpu" : backend}&${w}.model=${model}&${w}.task=${task}&${w}.steps=${steps}&${w}.batch=8&${w}.seq=64&${w}.compare=false`);
    const widget = page.locator("[data-widget=train]").first();
    await widget.locator("[data-testid=train]").click();
    const state = widget.locator("[data-testid=run-state]");
    await widget.locator('[data-testid=run-state][data-state="Done"], [data-testid=run-state][data-state="Failed"]').waitFor({ timeout: quick ? 60_000 : 600_000 });
    if ((await state.getAttribute("data-state")) !== "Done") fail(`the ${model}/${task} run on ${backend} ended: ${await state.textContent()}`);
    // The run's status line: "done · … · step 30 of 30 · loss 0.2317 · 791 tokens/s · 27.5 s · held-out loss …".
    const status = (await state.locator("xpath=..").textContent()).trim();
    const m = /step (\d+) of (\d+) · loss ([\d.]+) · ([\d.]+) tokens\/s · ([\d.]+) s\b/.exec(status);
    if (!m) fail(`cannot read steps, tokens/s and seconds from the train widget's status line: ${JSON.stringify(status)}`);
    const [done, of, loss, tokensPerS, secs] = [Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4]), Number(m[5])];
    if (done !== steps || of !== steps || !(secs > 0) || !(tokensPerS > 0) || !Number.isFinite(loss)) fail(`implausible figures for ${steps} steps in ${JSON.stringify(status)}`);
    // The status line's tokens/s is every step's tokens over the seconds the steps took
    // (since 2026-12-07; before, it was the last step's alone, which moves by a third
    // between steps and read 25-78% higher). The run's figure here is every step's tokens
    // over the run's seconds (one decimal), which also count evaluations and the time
    // between steps, so the status line's figure cannot be below it.
    const rate = (done / secs).toFixed(2);
    const tokens = Math.round((done * 8 * 64) / secs);
    if (tokensPerS < 0.95 * tokens) fail(`the status line's ${tokensPerS} tokens/s is below ${done} steps of 8×64 over the run's ${secs} s (${tokens}): ${JSON.stringify(status)}`);
    // The backend bar names the CPU worker's threads ("CPU, 2 threads").
    const bar = (await page.textContent("[data-testid=backend]")).trim();
    const label = backend.startsWith("cpu") ? bar : realGpu ? "WebGPU" : "WebGPU (SwiftShader)";
    console.log(`train widget, ${label}, ${model}/${task}, ${done} steps of 8×64: ${rate} steps/s, ${tokens} tokens/s over the run, ${tokensPerS} over its steps (status line), ${secs} s, loss ${loss}`);
    summary.push(`${backend} ${model}/${task} ${done} steps ${rate} steps/s (${tokens} tokens/s)`);
    table.push(`| ${label} | ${model}/${task}, ${done} steps of 8×64 | ${rate} | ${tokens} | ${tokensPerS} | ${secs} | ${loss} |`);
    await page.close();
  }
  if (quick) console.log(`bench --quick: ${summary.join(", ")}`);
  else {
    console.log(`\n| backend | run | steps/s | tokens/s (run) | tokens/s (steps, status line) | seconds | final loss |\n|---|---|---|---|---|---|---|\n${table.join("\n")}`);
  }
} catch (e) {
  console.error(e.message ?? e);
  process.exitCode = 1;
} finally {
  await ctx.close();
  server.close();
  plain.close();
}
