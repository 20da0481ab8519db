// End-to-end tests of the browser playground in headless Chromium (playwright-core).
//
//   node tests/e2e/run.mjs [dist-folder]        (default: dist, as built by `trunk build`)
//
// Serves the built page on 127.0.0.1 with a tiny static server, then checks what a reader
// would do: the page loads without console errors, every lesson renders, the train widget
// trains on the CPU and its loss falls, generation shows text, a reloaded link restores a
// widget's settings, and WebGPU (Chromium's software adapter) runs a training step.
// Screenshots go to tests/e2e/artifacts/. Every check runs; the exit code is non-zero when
// any failed. E2E_JOBS=N runs N checks at a time (default 2; see the harness below) and
// E2E_ONLY=TEXT only the checks whose name contains TEXT.

import { readFileSync, readdirSync, mkdirSync, existsSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { chromium } from "playwright-core";
import { serve } from "./serve.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const dist = resolve(root, process.argv[2] ?? "dist");
const artifacts = join(here, "artifacts");
mkdirSync(artifacts, { recursive: true });

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const BASE_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

// ---------------------------------------------------------------- lessons, read independently of the app
function lessonsOnDisk() {
  const dir = join(root, "lessons");
  return readdirSync(dir).filter((f) => f.endsWith(".md")).sort().map((f) => {
    const text = readFileSync(join(dir, f), "utf8");
    const title = /\ntitle:\s*(.*)\n/.exec(text)[1].trim();
    const order = Number(/\norder:\s*(\d+)/.exec(text)[1]);
    const widgets = (text.match(/^```widget\s*$/gm) ?? []).length;
    return { file: f, slug: f.replace(/^\d+-/, "").replace(/\.md$/, ""), title, order, widgets };
  }).sort((a, b) => a.order - b.order);
}

// ---------------------------------------------------------------- harness
let failures = 0;
// E2E_ONLY=<text> runs only the checks whose name contains it (for debugging one widget).
const only = process.env.E2E_ONLY;
// Checks are registered in file order and run E2E_JOBS at a time (default 2): each check
// opens its own page, whose compute worker trains on a thread per core (rayon's pool, the
// page being cross-origin isolated), so two checks share the cores; the workers' threads
// sleep between operations. Checks marked `check.long` start first, so that no
// long check is left to run alone at the end. Checks marked `check.first` run one by one
// before the others start: they open the page without naming a lesson, and the page
// reopens the lesson last read (remembered in the browser profile all checks share).
// E2E_JOBS=1 runs every check one by one, in file order.
const jobs = Math.max(1, Number(process.env.E2E_JOBS ?? 2));
const queue = [];
function check(name, fn, kind = "") {
  if (only && !name.includes(only)) return;
  queue.push({ name, fn, kind });
}
check.long = (name, fn) => check(name, fn, "long");
check.first = (name, fn) => check(name, fn, "first");
async function runOne({ name, fn }) {
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${e.stack ?? e}`);
  }
}
async function runChecks() {
  if (jobs === 1) {
    for (const c of queue) await runOne(c);
    return;
  }
  for (const c of queue.filter((c) => c.kind === "first")) await runOne(c);
  const order = [...queue.filter((c) => c.kind === "long"), ...queue.filter((c) => c.kind === "")];
  let next = 0;
  async function lane() {
    while (next < order.length) await runOne(order[next++]);
  }
  await Promise.all(Array.from({ length: Math.min(jobs, order.length) }, lane));
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }

async function browser(extraArgs = []) {
  const profile = mkdtempSync(join(tmpdir(), "tinytune-e2e-"));
  return chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: [...BASE_ARGS, ...extraArgs], viewport: { width: 1200, height: 900 } });
}

/** A page that records console errors and uncaught exceptions. */
async function openPage(ctx, url) {
  const page = await ctx.newPage();
  page.errors = [];
  page.on("console", (m) => { if (m.type() === "error") page.errors.push(m.text()); });
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("worker", (w) => w.on("console", (m) => { if (m.type() === "error") page.errors.push(`worker: ${m.text()}`); }));
  await page.goto(url);
  await page.waitForSelector("[data-testid=lesson-title]", { timeout: 60_000 });
  return page;
}

/** Sets a widget control (input, select or checkbox) the way a reader does. */
// Runs the `tinytune …` command a widget prints (cut before `cutAt`, when given) natively
// with `--json`, from the repository root, and returns its JSON.
async function printedCommandJson(widget, cutAt) {
  const command = (await widget.locator(".command code").textContent()).trim().split(/\s+/);
  assert(command[0] === "tinytune" && (!cutAt || command.includes(cutAt)), command.join(" "));
  const args = command.slice(1, cutAt ? command.indexOf(cutAt) : command.length).concat(["--json"]);
  const cli = join(root, "target/debug/tinytune");
  assert(existsSync(cli), `${cli} is missing: build it with cargo build -p tinytune-cli (scripts/test.sh runs the cargo tests first)`);
  return JSON.parse(execFileSync(cli, args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }));
}

async function setParam(widget, key, value) {
  const el = widget.locator(`[data-param="${key}"]`);
  // A control folded inside a closed <details> ("More settings") is opened first, as a
  // reader would: its summary is clicked, outermost first.
  const closed = el.locator("xpath=ancestor::details[not(@open)]/summary");
  for (let n = await closed.count(); n > 0; n--) await closed.first().click();
  const tag = await el.evaluate((e) => e.tagName.toLowerCase() + (e.type === "checkbox" ? ":checkbox" : ""));
  if (tag === "select") await el.selectOption(String(value));
  else if (tag === "input:checkbox") await el.setChecked(Boolean(value));
  else { await el.fill(String(value)); await el.dispatchEvent("change"); }
}

async function waitForRun(widget, timeout) {
  await widget.locator('[data-testid=run-state][data-state="Done"], [data-testid=run-state][data-state="Failed"]').waitFor({ timeout });
  const state = await widget.locator("[data-testid=run-state]").getAttribute("data-state");
  const text = await widget.locator("[data-testid=run-state]").textContent();
  assert(state === "Done", `the run ended ${state}: ${text}`);
}

async function losses(widget) {
  const raw = await widget.getAttribute("data-losses");
  return raw ? raw.split(",").map(Number) : [];
}

// ---------------------------------------------------------------- the checks
const server = await serve(dist);
const base = `http://127.0.0.1:${server.address().port}/`;
const lessons = lessonsOnDisk();
const cpu = await browser();

await check.first("the app loads lesson 1 with no console errors", async () => {
  const page = await openPage(cpu, base + "?backend=cpu");
  const title = await page.textContent("[data-testid=lesson-title]");
  assert(title === lessons[0].title, `first lesson title ${JSON.stringify(title)} != ${JSON.stringify(lessons[0].title)}`);
  await page.waitForFunction(() => document.querySelector("[data-testid=backend]")?.textContent.startsWith("CPU"), null, { timeout: 60_000 });
  const reason = await page.textContent("[data-testid=backend-reason]");
  assert(reason.length > 10, "the page says why it chose the backend");
  // Cross-origin isolated: the CPU worker runs a thread per core.
  const cores = await page.evaluate(() => navigator.hardwareConcurrency);
  const label = await page.textContent("[data-testid=backend]");
  assert(cores < 2 || label.startsWith(`CPU, ${Math.min(cores, 8)} threads`), `${cores} cores, backend bar: ${label}`);
  await page.waitForTimeout(500);
  await page.screenshot({ path: join(artifacts, "01-first-lesson.png"), fullPage: true });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check.first("every lesson renders with all its widgets", async () => {
  const page = await openPage(cpu, base + "?backend=cpu");
  for (const [i, l] of lessons.entries()) {
    await page.click(`nav.toc li:nth-child(${i + 1}) a`);
    await page.waitForFunction((t) => document.querySelector("[data-testid=lesson-title]")?.textContent === t, l.title, { timeout: 10_000 });
    const slug = await page.getAttribute("article", "data-lesson");
    assert(slug === l.slug, `${l.file}: article slug ${slug}`);
    const widgets = await page.locator("article [data-widget]").count();
    assert(widgets === l.widgets, `${l.file}: ${widgets} widgets on the page, ${l.widgets} in the file`);
    assert(new URL(page.url()).searchParams.get("lesson") === l.slug, `${l.file}: URL ${page.url()}`);
    await page.screenshot({ path: join(artifacts, `lesson-${l.slug}.png`), fullPage: true });
  }
  // Visited lessons are remembered.
  const done = await page.locator("nav.toc li.done").count();
  assert(done === lessons.length, `${done} lessons marked visited`);
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the train widget trains on the CPU and its loss falls", async () => {
  const page = await openPage(cpu, base + `?lesson=${lessons[0].slug}&backend=cpu`);
  const w = page.locator("[data-widget=train]").first();
  await setParam(w, "model", "nano");
  await setParam(w, "task", "stories");
  await setParam(w, "steps", 30);
  await setParam(w, "lr", 0.003);
  await setParam(w, "batch", 8);
  await setParam(w, "seq", 256);
  await setParam(w, "compare", false);
  const command = await w.locator("[data-testid=command]").textContent();
  assert(command.includes("tinytune pretrain --preset nano --tokenizer char --data stories --steps 30"), `command: ${command}`);
  await w.locator("[data-testid=train]").click();
  await waitForRun(w, 240_000);
  const l = await losses(w);
  assert(l.length === 30, `expected 30 losses, got ${l.length}`);
  const head = l.slice(0, 5).reduce((a, b) => a + b) / 5, tail = l.slice(-5).reduce((a, b) => a + b) / 5;
  assert(l.every(Number.isFinite) && tail < head - 0.3, `loss did not fall: first five ${head.toFixed(3)}, last five ${tail.toFixed(3)}`);
  const tps = await w.locator(".status:has([data-testid=run-state])").textContent();
  assert(/\d+ tokens\/s/.test(tps), `no throughput shown: ${tps}`);
  await w.screenshot({ path: join(artifacts, "train-cpu.png") });
  console.log(`     losses ${head.toFixed(3)} → ${tail.toFixed(3)}; ${tps.trim()}`);
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("without cross-origin isolation the CPU worker runs on one thread, says why, and trains to the threaded run's losses", async () => {
  const plain = await serve(dist, { isolated: false });
  const run = async (url) => {
    const page = await openPage(cpu, url + `?lesson=${lessons[0].slug}&backend=cpu`);
    await page.waitForFunction(() => document.querySelector("[data-testid=backend]")?.textContent.startsWith("CPU"), null, { timeout: 60_000 });
    const label = await page.textContent("[data-testid=backend]");
    const why = (await page.locator("[data-testid=backend-threads]").allTextContents()).join(" ");
    const w = page.locator("[data-widget=train]").first();
    await setParam(w, "model", "nano");
    await setParam(w, "task", "stories");
    await setParam(w, "steps", 6);
    await setParam(w, "compare", false);
    await w.locator("[data-testid=train]").click();
    await waitForRun(w, 120_000);
    const l = await losses(w);
    assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
    await page.close();
    return { label, why, l };
  };
  try {
    const one = await run(`http://127.0.0.1:${plain.address().port}/`);
    assert(one.label.startsWith("CPU, 1 thread"), `backend bar: ${one.label}`);
    assert(one.why.includes("not cross-origin isolated"), `no reason for one thread: ${one.why}`);
    const many = await run(base);
    assert(/^CPU, \d+ threads/.test(many.label), `isolated, backend bar: ${many.label}`);
    assert(one.l.length === 6 && many.l.length === 6, `losses: ${one.l} / ${many.l}`);
    // Threads change only how the work is split: the same losses within float rounding.
    const worst = Math.max(...one.l.map((x, i) => Math.abs(x - many.l[i]) / Math.abs(x)));
    assert(worst < 1e-4, `one thread ${one.l} vs ${many.label}: ${many.l} (relative ${worst})`);
    console.log(`     ${one.label} vs ${many.label}: losses agree to ${worst.toExponential(1)}`);
  } finally {
    plain.close();
  }
});

await check("a run can be paused, resumed and stopped", async () => {
  const page = await openPage(cpu, base + `?lesson=${lessons[0].slug}&backend=cpu`);
  const w = page.locator("[data-widget=train]").first();
  await setParam(w, "model", "nano");
  await setParam(w, "steps", 2000);
  await w.locator("[data-testid=train]").click();
  await w.locator("[data-testid=step]").waitFor({ timeout: 60_000 });
  await w.locator("[data-testid=pause]").click();
  await w.locator('[data-testid=run-state][data-state="Paused"]').waitFor({ timeout: 30_000 });
  const n = (await losses(w)).length;
  await page.waitForTimeout(1500);
  assert((await losses(w)).length === n, "steps arrived while paused");
  await w.locator("[data-testid=pause]").click(); // Resume
  const until = Date.now() + 30_000;
  while ((await losses(w)).length <= n) {
    assert(Date.now() < until, "no steps after resuming");
    await page.waitForTimeout(200);
  }
  await w.locator("[data-testid=cancel]").click();
  await w.locator('[data-testid=run-state][data-state="Cancelled"]').waitFor({ timeout: 30_000 });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("generation shows text", async () => {
  const page = await openPage(cpu, base + `?lesson=${lessons[0].slug}&backend=cpu`);
  const w = page.locator("[data-widget=generate]").first();
  await setParam(w, "model", "micro");
  const prompt = "one day, lily went to the";
  await setParam(w, "prompt", prompt);
  await setParam(w, "max_tokens", 30);
  await setParam(w, "samples", 2);
  await w.locator("[data-testid=generate]").click();
  await w.locator("[data-testid=samples]").waitFor({ timeout: 120_000 });
  const samples = await w.locator("pre.sample").allTextContents();
  assert(samples.length === 2 && samples[0] !== samples[1], `expected 2 different samples: ${JSON.stringify(samples)}`);
  for (const s of samples) {
    const added = s.slice(prompt.length);
    assert(s.startsWith(prompt) && /[a-z]{3}/.test(added) && !added.includes("<|endoftext|>"), `sample ${JSON.stringify(s)}`);
  }
  await w.screenshot({ path: join(artifacts, "generate.png") });
  console.log(`     sample: ${JSON.stringify(samples[0].slice(0, 90))}`);
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("fine-tuning the pretrained model compares answers and forgetting before and after", async () => {
  const page = await openPage(cpu, base + `?lesson=${lessons[0].slug}&backend=cpu`);
  const w = page.locator("[data-widget=train]").first();
  await setParam(w, "model", "micro");
  await setParam(w, "task", "sentiment");
  await setParam(w, "steps", 12);
  await setParam(w, "seq", 40);
  await setParam(w, "compare", true);
  await w.locator("[data-testid=train]").click();
  await waitForRun(w, 300_000);
  const compare = w.locator("[data-testid=compare]");
  const rows = await compare.locator("tbody tr").count();
  assert(rows === 3, `${rows} comparison rows`);
  const text = await compare.textContent();
  const m = /stories\): ([\d.]+) before, ([\d.]+) after/.exec(text);
  assert(m && Number(m[1]) > 0.3 && Number(m[1]) < 1.2 && Number(m[2]) > 0, `forgetting meter: ${text.slice(0, 200)}`);
  await w.screenshot({ path: join(artifacts, "compare.png") });
  console.log(`     stories loss ${m[1]} → ${m[2]}; ${(await w.locator(".status:has([data-testid=run-state])").textContent()).trim()}`);
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the decision walk-through ends in a recommendation", async () => {
  const lesson = lessons.find((l) => l.slug === "when-not-to-fine-tune");
  const page = await openPage(cpu, base + `?lesson=${lesson.slug}&backend=cpu`);
  const w = page.locator("[data-widget=decide]");
  for (const answer of ["No", "No", "Yes"]) await w.getByRole("button", { name: answer, exact: true }).click();
  const rec = await w.locator("[data-testid=recommendation]").textContent();
  assert(rec.includes("Use retrieval (RAG)"), `recommendation: ${rec}`);
  await w.getByRole("button", { name: "Start over" }).click();
  assert(await w.locator("[data-testid=recommendation]").count() === 0, "start over did not reset");
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the memory calculator recomputes as controls change and reproduces DeepSpeed's rows", async () => {
  const lesson = lessons.find((l) => l.slug === "sharding-and-offload");
  const page = await openPage(cpu, base + `?lesson=${lesson.slug}&backend=cpu`);
  const w = page.locator("[data-widget=memory]").first();
  await setParam(w, "model", "gpt2-medium");
  await setParam(w, "method", "full");
  await setParam(w, "precision", "bf16-mixed");
  await setParam(w, "gpus", 1);
  await setParam(w, "offload", "none");
  await setParam(w, "zero", 3);
  const ds = await w.locator("[data-testid=deepspeed]").textContent();
  assert(ds.includes("6.14 GB") && ds.includes("0.85 GB") && ds.includes("7.93 GB") && ds.includes("8.92 GB"), `DeepSpeed rows: ${ds}`);
  await w.screenshot({ path: join(artifacts, "memory.png") });
  const before = await w.locator("[data-testid=memory-peak]").textContent();
  await setParam(w, "batch", 8);
  const after = await w.locator("[data-testid=memory-peak]").textContent();
  assert(before !== after, `the peak did not change with the batch: ${before}`);
  // An impossible combination is explained, not computed.
  await setParam(w, "zero", 2);
  await setParam(w, "offload", "all");
  assert((await w.locator("[data-testid=memory-error]").textContent()).includes("ZeRO stage 3"), "offload=all with ZeRO-2 not explained");
  // A pasted config.json is estimated; a bad one names its field.
  await setParam(w, "offload", "none");
  await setParam(w, "model", "custom");
  await w.locator("[data-testid=config-json]").fill('{"model_type":"llama","vocab_size":32000,"hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":32,"intermediate_size":11008}');
  assert((await w.textContent()).includes("6738.4 M parameters"), "pasted Llama-2-7B config not estimated");
  await w.locator("[data-testid=config-json]").fill('{"model_type":"llama","vocab_size":32000,"hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":0,"intermediate_size":11008}');
  assert((await w.locator("[data-testid=memory-error]").textContent()).includes("num_attention_heads"), "bad config field not named");
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the memory timeline measures a real step in the worker, near its estimate", async () => {
  const lesson = lessons.find((l) => l.slug === "where-memory-goes");
  const page = await openPage(cpu, base + `?lesson=${lesson.slug}&backend=cpu`);
  const w = page.locator("[data-widget=memory-timeline]").first();
  await setParam(w, "batch", 4);
  await setParam(w, "seq", 256);
  await w.locator("[data-testid=measure]").click();
  await w.locator("[data-testid=timeline-summary]").waitFor({ timeout: 120_000 });
  const text = await w.locator("[data-testid=timeline-summary]").textContent();
  const pct = Number(/\(([+-][0-9.]+)%\)/.exec(text)?.[1]);
  assert(Number.isFinite(pct) && Math.abs(pct) < 10, `estimate vs measured: ${text}`);
  assert(!(await w.locator("[data-testid=measured-peak]").textContent()).startsWith("0 B"), "nothing was measured");
  await w.screenshot({ path: join(artifacts, "memory-timeline.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the number-format widget shows overflow, underflow and each format's bits", async () => {
  const lesson = lessons.find((l) => l.slug === "number-formats");
  const page = await openPage(cpu, base + `?lesson=${lesson.slug}&backend=cpu`);
  const w = page.locator("[data-widget=number-format]").first();
  const stored = (f) => w.locator(`tr[data-format="${f}"] [data-testid=stored]`).textContent();
  await setParam(w, "value", "0.1");
  assert(await stored("fp16") === "0.0999755859", `fp16 of 0.1: ${await stored("fp16")}`);
  assert((await w.locator('tr[data-format="bf16"] .bits').textContent()).replace(/\s+/g, " ").trim() === "0 01111011 1001101", "bf16 bits of 0.1");
  await setParam(w, "value", "70000");
  assert(await stored("fp16") === "inf" && await stored("bf16") === "70144", `70000: fp16 ${await stored("fp16")}, bf16 ${await stored("bf16")}`);
  assert(await stored("fp8-e4m3") === "NaN", "E4M3 overflow should be NaN");
  await setParam(w, "value", "1e-8");
  assert(await stored("fp16") === "0" && (await stored("bf16")).startsWith("1.001"), `1e-8: fp16 ${await stored("fp16")}, bf16 ${await stored("bf16")}`);
  await w.screenshot({ path: join(artifacts, "number-format.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the quantize widget quantizes micro's real weights and reports loss before and after", async () => {
  const lesson = lessons.find((l) => l.slug === "quantization");
  const page = await openPage(cpu, base + `?lesson=${lesson.slug}&backend=cpu`);
  const w = page.locator("[data-widget=quantize]").first();
  await setParam(w, "format", "nf4");
  await setParam(w, "block", 64);
  await w.locator("[data-testid=quantize]").click();
  await w.locator("[data-testid=quantize-table]").waitFor({ timeout: 180_000 });
  const table = await w.locator("[data-testid=quantize-table]").textContent();
  assert(table.includes("0.5625"), `NF4 with block 64 stores 0.5625 bytes per weight: ${table}`);
  const loss = await w.locator("[data-testid=loss-change]").textContent();
  assert(/^\d\.\d{4} → \d\.\d{4}/.test(loss), `loss: ${loss}`);
  assert((await w.locator("[data-testid=sample-after]").textContent()).startsWith("one day"), "no sample after quantization");
  await w.screenshot({ path: join(artifacts, "quantize.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the loss-scaling widget measures micro's FP16 gradients, and an FP16 run with dynamic scaling trains", async () => {
  const lesson = lessons.find((l) => l.slug === "number-formats");
  const page = await openPage(cpu, base + `?lesson=${lesson.slug}&backend=cpu`);
  const w = page.locator("[data-widget=loss-scaling]").first();
  await w.locator("[data-testid=loss-scaling]").click();
  await w.locator("[data-testid=loss-scaling-table], .error").first().waitFor({ timeout: 180_000 });
  const failed = await w.locator(".error").count();
  assert(failed === 0, `the widget reported: ${failed && await w.locator(".error").first().textContent()} | console: ${page.errors.join(" | ")}`);
  const cells = await w.locator("[data-testid=loss-scaling-table] tbody tr").evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent)));
  console.log(`     ${JSON.stringify(cells)}`);
  assert(cells.length === 2 && cells[1][0].startsWith("2^10"), `rows: ${JSON.stringify(cells)}`);
  const sub = (row) => parseFloat(row[2]);
  assert(sub(cells[0]) > 1 && sub(cells[1]) < sub(cells[0]) / 5, `scaling should move gradients out of the subnormals: ${JSON.stringify(cells)}`);
  await w.screenshot({ path: join(artifacts, "loss-scaling.png") });
  // The FP16 train widget of the same lesson, a few steps.
  const t = page.locator("[data-widget=train]").first();
  await setParam(t, "steps", 6);
  await t.locator("[data-testid=train]").click();
  await waitForRun(t, 180_000);
  assert((await t.locator("[data-testid=loss-scale]").count()) === 1, "an FP16 run with dynamic scaling shows its loss scale");
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("QLoRA fine-tunes micro in the page with its NF4 base reported, and the command matches", async () => {
  const lesson = lessons.find((l) => l.slug === "qlora");
  const page = await openPage(cpu, base + `?lesson=${lesson.slug}&backend=cpu`);
  const w = page.locator("[data-widget=train]").first();
  await setParam(w, "steps", 12);
  await setParam(w, "compare", false);
  const command = await w.locator("[data-testid=command]").textContent();
  assert(command.includes("--method qlora --rank 8 --alpha 16 --targets all-linear"), `command: ${command}`);
  await w.locator("[data-testid=train]").click();
  await w.locator('[data-testid=run-state][data-state="Running"]').waitFor({ timeout: 120_000 });
  const running = await w.locator("[data-testid=run-state]").textContent();
  assert(running.includes("65536 of 875264 parameters train") && running.includes("NF4 base: 786432 linear weights in 396.2 KiB"), `status: ${running}`);
  await waitForRun(w, 240_000);
  const l = await losses(w);
  const head = l.slice(0, 3).reduce((a, b) => a + b) / 3, tail = l.slice(-3).reduce((a, b) => a + b) / 3;
  console.log(`     QLoRA losses ${head.toFixed(3)} → ${tail.toFixed(3)}`);
  assert(l.length === 12 && l.every(Number.isFinite) && tail < head, `QLoRA loss did not fall: ${l}`);
  await w.screenshot({ path: join(artifacts, "qlora.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the optimizer-state widget steps every real optimizer once on micro", async () => {
  const page = await openPage(cpu, base + "?lesson=optimizers&backend=cpu");
  const w = page.locator("[data-widget=optimizer-state]").first();
  await w.locator("[data-testid=optimizer-state]").click();
  await w.locator("[data-testid=adafactor], .error").first().waitFor({ timeout: 180_000 });
  assert((await w.locator(".error").count()) === 0, `the widget reported: ${await w.locator(".error").first().textContent().catch(() => "")}`);
  const per = async (name) => parseFloat(await w.locator(`tr[data-optimizer="${name}"] [data-testid=bytes-per-param]`).textContent());
  const got = { adamw: await per("adamw"), lion: await per("lion"), sgd: await per("sgd"), mezo: await per("mezo"), adafactor: await per("adafactor"), eight: await per("adamw8bit") };
  console.log(`     bytes per parameter ${JSON.stringify(got)}`);
  assert(got.adamw === 8 && got.lion === 4 && got.sgd === 0 && got.mezo === 0, JSON.stringify(got));
  assert(got.adafactor < 0.2 && got.eight > 2 && got.eight < 2.3, JSON.stringify(got));
  const ada = await w.locator("[data-testid=adafactor]").textContent();
  assert(ada.includes("128×384") && ada.includes("512 numbers") && ada.includes("instead of 49152"), ada);
  await w.screenshot({ path: join(artifacts, "optimizer-state.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the schedule widget shows the core schedule's learning rates", async () => {
  const page = await openPage(cpu, base + "?lesson=hyperparameters&backend=cpu");
  const w = page.locator("[data-widget=schedule]").first();
  await setParam(w, "steps", 1000);
  await setParam(w, "lr", "1e-4");
  await setParam(w, "warmup", "10%");
  await setParam(w, "schedule", "linear");
  const cells = await w.locator("tbody tr").evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent)));
  console.log(`     ${JSON.stringify(cells)}`);
  // Warmup: 1e-4·1/100 at step 0; linear decay: halfway through 900 decay steps at 500 is 1e-5 + 9e-5·(5/9).
  assert(cells[0][0] === "0" && cells[0][1] === "1.000e-6", JSON.stringify(cells));
  assert(cells.some(([step, lr]) => step === "500" && lr === "6.000e-5"), JSON.stringify(cells));
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

/** Waits until a train widget's runs table has `n` finished rows, and returns them. */
async function sweepRows(w, n, timeout) {
  await w.locator(`[data-testid=runs] tbody tr:nth-child(${n})`).waitFor({ timeout });
  await waitForRun(w, timeout);
  return w.locator("[data-testid=runs] tbody tr").evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent)));
}

/** Opens `lesson` on the CPU, sets its `nth` train widget's `settings` (steps, sweep, ...),
 * trains, and returns the page, the widget and the rows of its `n` finished runs. */
async function runSweep(lesson, nth, settings, n) {
  const page = await openPage(cpu, base + `?lesson=${lesson}&backend=cpu`);
  const w = page.locator("[data-widget=train]").nth(nth);
  for (const [key, value] of Object.entries(settings)) await setParam(w, key, value);
  await w.locator("[data-testid=train]").click();
  const rows = await sweepRows(w, n, 300_000);
  console.log(`     ${JSON.stringify(rows)}`);
  return { page, w, rows };
}

await check("a sweep over accumulation trains twice: same losses, lower measured peak", async () => {
  const { page, w, rows } = await runSweep("checkpointing-and-accumulation", 1, { steps: 3, sweep: "accumulate=1,4" }, 2);
  const mib = (t) => parseFloat(t) * (t.includes("GiB") ? 1024 : t.includes("KiB") ? 1 / 1024 : 1);
  const [one, four] = rows;
  assert(Math.abs(parseFloat(one[1]) - parseFloat(four[1])) < 0.01, `losses should agree: ${one[1]} vs ${four[1]}`);
  assert(mib(four[6]) < mib(one[6]), `accumulation should lower the peak: ${one[6]} vs ${four[6]}`);
  await w.screenshot({ path: join(artifacts, "sweep-accumulate.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("lesson 5's data-parallel replicas train as one device", async () => {
  const { page, rows } = await runSweep("sharding-and-offload", 0, { steps: 3 }, 2);
  const [one, two] = rows;
  assert(one[0].includes("micro") && two[0].includes("2 replicas"), `runs: ${one[0]} | ${two[0]}`);
  assert(Math.abs(parseFloat(one[1]) - parseFloat(two[1])) < 1e-4, `losses should agree: ${one[1]} vs ${two[1]}`);
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("lesson 5's ZeRO-1 run splits the optimizer state between the replicas", async () => {
  const { page, rows } = await runSweep("sharding-and-offload", 1, { steps: 3 }, 2);
  const [whole, sharded] = rows;
  assert(sharded[0].includes("2 replicas") && sharded[0].includes("ZeRO-1"), `runs: ${whole[0]} | ${sharded[0]}`);
  assert(Math.abs(parseFloat(whole[1]) - parseFloat(sharded[1])) < 1e-4, `losses should agree: ${whole[1]} vs ${sharded[1]}`);
  // AdamW keeps 8 bytes per trainable parameter: all on the first device, or in two shares.
  assert(parseFloat(whole[5]) === 8, `unsharded state per parameter: ${whole[5]}`);
  const shares = sharded[5].split("+").map(parseFloat);
  assert(shares.length === 2 && shares.every((x) => x > 3.5 && x < 4.5), `shares per parameter: ${sharded[5]}`);
  assert(Math.abs(shares[0] + shares[1] - 8) < 0.011, `the shares should add up to the whole: ${sharded[5]}`);
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("8-bit AdamW and MeZO train in the page with their measured state", async () => {
  const { page, w, rows } = await runSweep("zeroth-order", 0, { steps: 4, sweep: "optimizer=adamw8bit,mezo" }, 2);
  const [eight, mezo] = rows;
  assert(parseFloat(eight[5]) > 2 && parseFloat(eight[5]) < 2.6 && eight[7].startsWith("CPU"), JSON.stringify(eight));
  assert(parseFloat(mezo[5]) === 0 && Number.isFinite(parseFloat(mezo[1])), JSON.stringify(mezo));
  // The same runs against seconds of training: the axis changes, the runs stay.
  await w.locator("[data-testid=by-time]").setChecked(true);
  assert((await w.locator("[data-testid=chart]").textContent()).includes("seconds of training"), "the chart did not switch to seconds");
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the calculator's flash attention drops the score matrices (lesson 11's figures)", async () => {
  const page = await openPage(cpu, base + "?lesson=attention-kernels&backend=cpu");
  const w = page.locator("[data-widget=memory]").first();
  const eager = await w.locator("[data-testid=memory-peak]").textContent();
  await setParam(w, "attention", "flash");
  const flash = await w.locator("[data-testid=memory-peak]").textContent();
  console.log(`     peak: eager ${eager}, flash ${flash}`);
  assert(eager.includes("4.18 GiB") && flash.includes("3.48 GiB"), `eager ${eager}, flash ${flash}`);
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("selective methods train in the page with their parameter counts", async () => {
  const page = await openPage(cpu, base + "?lesson=peft-family&backend=cpu");
  const w = page.locator("[data-widget=train]").nth(1);
  // The trainable count updates as the method changes, before anything runs.
  await setParam(w, "method", "last-layers");
  const live = await w.locator("[data-testid=trainable]").textContent();
  assert(live.includes("198,528 of 875,264 parameters train (22.68%)"), live);
  await setParam(w, "steps", 2);
  await setParam(w, "sweep", "method=bitfit,layernorm");
  await w.locator("[data-testid=train]").click();
  const rows = await sweepRows(w, 2, 240_000);
  const state = await w.locator("[data-testid=run-state]").textContent();
  console.log(`     ${state} | ${JSON.stringify(rows.map((r) => r[0]))}`);
  assert(state.includes("layernorm: 2304 of 875264 parameters train (0.26%)"), state);
  assert(rows[0][0].includes("bitfit") && rows[1][0].includes("layernorm"), JSON.stringify(rows));
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check.long("the lora-rank widget measures what rank r keeps of micro's real fine-tune", async () => {
  const page = await openPage(cpu, base + "?lesson=lora&backend=cpu");
  const w = page.locator("[data-widget=lora-rank]").first();
  await setParam(w, "matrix", "h.3.attn.c_attn");
  await setParam(w, "steps", 4);
  await setParam(w, "rank", 4);
  await w.locator("[data-testid=lora-rank]").click();
  await w.locator("[data-testid=energy], .error").first().waitFor({ timeout: 240_000 });
  assert((await w.locator(".error").count()) === 0, `the widget reported: ${await w.locator(".error").first().textContent().catch(() => "")}`);
  const params = await w.locator("[data-testid=lora-params]").textContent();
  const energy4 = await w.locator("[data-testid=energy]").textContent();
  const merge = await w.locator("[data-testid=merge]").textContent();
  console.log(`     ${params} | ${energy4} | ${merge}`);
  // r·(d_in + d_out) = 4·(128 + 384).
  assert(params === "2,048", params);
  const kept = (t) => parseFloat(t.match(/keeps ([0-9.]+)%/)[1]);
  const diff = parseFloat(merge.match(/difference ([0-9.e+-]+)/)[1]);
  const back = parseFloat(merge.match(/comes back within ([0-9.e+-]+)/)[1]);
  assert(kept(energy4) > 0 && kept(energy4) < 100 && diff < 1e-4 && back < 1e-5, `${energy4} ${merge}`);
  // A higher rank re-measures the same fine-tune (kept in the worker) and keeps more.
  await setParam(w, "rank", 16);
  await w.locator("[data-testid=lora-rank]").click();
  await w.locator("[data-testid=energy]", { hasText: "Rank 16 keeps" }).waitFor({ timeout: 120_000 });
  const energy16 = await w.locator("[data-testid=energy]").textContent();
  assert(kept(energy16) > kept(energy4), `${energy16} vs ${energy4}`);
  await w.screenshot({ path: join(artifacts, "lora-rank.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check.long("the merge widget merges two fine-tunes of micro with every method, as tinytune merge-study does", async () => {
  const page = await openPage(cpu, base + "?lesson=many-models-into-one&backend=cpu");
  const w = page.locator("[data-widget=merge]").first();
  await setParam(w, "steps", 4);
  await setParam(w, "method", "linear");
  await setParam(w, "t", 0.5);
  await setParam(w, "lambda", 1);
  await w.locator("[data-testid=merge]").click();
  await w.locator("[data-testid=merge-table], .error").first().waitFor({ timeout: 240_000 });
  assert((await w.locator(".error").count()) === 0, `the widget reported: ${await w.locator(".error").first().textContent().catch(() => "")}`);
  const table = async () => (await w.locator("[data-testid=merge-table] tbody tr").evaluateAll((trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent))));
  const rows = await table();
  console.log(`     ${rows.length} rows; ${JSON.stringify(rows.slice(0, 6))}`);
  // The base, both fine-tunes, 9 methods at t, the chosen method at 5 shares.
  assert(rows.length === 17, JSON.stringify(rows));
  const num = (x) => parseFloat(x);
  const merged = (label) => rows.find((r) => r[0] === label && r[1] === "merge");
  // Task arithmetic with weights 1 − t and t and lambda 1 is linear averaging.
  for (const col of [3, 5]) assert(Math.abs(num(merged("linear")[col]) - num(merged("task_arithmetic")[col])) < 1e-3, JSON.stringify([merged("linear"), merged("task_arithmetic")]));
  // Each fine-tune beats the base on its own task.
  assert(num(rows[1][3]) < num(rows[0][3]) && num(rows[2][5]) < num(rows[0][5]), JSON.stringify(rows.slice(0, 3)));
  // The printed command computes the same table natively.
  const native = await printedCommandJson(w, "--save-dir");
  const nativeRows = [...native.endpoints, ...native.methods, ...native.curve];
  assert(nativeRows.length === rows.length, `${nativeRows.length} native rows`);
  rows.forEach((r, i) => {
    const n = nativeRows[i];
    assert(r[0] === n.label, `${r[0]} vs ${n.label}`);
    assert(Math.abs(num(r[3]) - n.a.loss) < 2e-3 && Math.abs(num(r[5]) - n.b.loss) < 2e-3, `page ${JSON.stringify(r)} vs native ${JSON.stringify(n)}`);
  });
  const yaml = await w.locator("[data-testid=merge-yaml]").textContent();
  assert(yaml.includes("merge_method: linear") && yaml.includes("weight: 0.5"), yaml);
  // Another share merges the kept fine-tunes again without training them again.
  await setParam(w, "t", 0.25);
  assert((await w.locator("[data-testid=merge]").textContent()).includes("Merge and score"), await w.locator("[data-testid=merge]").textContent());
  await w.locator("[data-testid=merge]").click();
  await page.waitForFunction(() => document.querySelector("[data-widget=merge] [data-testid=merge-table] caption")?.textContent.includes("t = 0.25"), null, { timeout: 120_000 });
  const again = await table();
  assert(JSON.stringify(again.slice(0, 3)) === JSON.stringify(rows.slice(0, 3)), "the fine-tunes changed");
  await w.screenshot({ path: join(artifacts, "merge.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check.long("the federated widget averages clients round by round, as tinytune federated does", async () => {
  const page = await openPage(cpu, base + "?lesson=many-models-into-one&backend=cpu");
  const w = page.locator("[data-widget=federated]").first();
  await setParam(w, "clients", 2);
  await setParam(w, "rounds", 2);
  await setParam(w, "local_steps", 2);
  await w.locator("[data-testid=federated]").click();
  await w.locator("[data-testid=federated-table], .error").first().waitFor({ timeout: 240_000 });
  assert((await w.locator(".error").count()) === 0, `the widget reported: ${await w.locator(".error").first().textContent().catch(() => "")}`);
  const rows = await w.locator("[data-testid=federated-table] tbody tr").evaluateAll((trs) => trs.map((tr) => [...tr.children].map((td) => parseFloat(td.textContent))));
  console.log(`     ${JSON.stringify(rows)}`);
  assert(rows.length === 2 && rows.every((r) => r.length === 5 && r.every(Number.isFinite)), JSON.stringify(rows));
  const native = await printedCommandJson(w);
  assert(native.rounds.length === rows.length, JSON.stringify(native));
  native.rounds.forEach((r, i) => {
    assert(Math.abs(r.averaged - rows[i][3]) < 2e-3 && Math.abs(r.pooled - rows[i][4]) < 2e-3, `page ${JSON.stringify(rows[i])} vs native ${JSON.stringify(r)}`);
  });
  // The averaged model learns: its loss after the last round is below the loss before any.
  const start = parseFloat((await w.locator("[data-testid=federated-table] caption").textContent()).match(/before any round ([0-9.]+)/)[1]);
  assert(rows[rows.length - 1][3] < start, `${start} -> ${JSON.stringify(rows)}`);
  await w.screenshot({ path: join(artifacts, "federated.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check.long("the preference widget runs DPO on micro beside SFT on the chosen completions, and its command reproduces the run", async () => {
  const page = await openPage(cpu, base + "?lesson=learning-from-preferences&backend=cpu");
  const w = page.locator("[data-widget=preference]").first();
  // The lesson's block has no parameters: the defaults are DPO, β 0.1 on story-qa's sentence pairs.
  const command = (await w.locator("[data-testid=command]").textContent()).trim();
  assert(command.startsWith("tinytune finetune --model assets/micro --data story-qa-sentence-pairs --objective dpo --beta 0.1 --method lora"), command);
  const objectives = await w.locator('[data-param="objective"] option').evaluateAll((os) => os.map((o) => o.value));
  assert(["dpo", "ipo", "hinge"].every((o) => objectives.includes(o)), objectives.join(","));
  const t0 = Date.now();
  await w.locator("[data-testid=train]").click();
  await waitForRun(w, 300_000);
  const seconds = (Date.now() - t0) / 1000;
  const l = await losses(w);
  const steps = Number(command.match(/--steps (\d+)/)[1]);
  assert(l.length === steps && l.every(Number.isFinite), `losses ${l}`);
  // Policy and reference are the same model at step 1: both log-ratios are 0, −log σ(0) = ln 2.
  assert(Math.abs(l[0] - Math.LN2) < 1e-3, `step 1 loss ${l[0]}, not ln 2`);
  const table = async (id) => w.locator(`[data-testid=${id}] tbody tr`).evaluateAll((trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent.trim())));
  // step, loss, accuracies, margins, chosen, rejected, logps/chosen, logps/rejected
  const evals = (await table("pref-evals")).map((r) => r.map(Number));
  const every = Number(command.match(/--eval-every (\d+)/)[1]);
  assert(evals.length === Math.ceil(steps / every) && evals.every((r) => r.length === 8 && r.every(Number.isFinite)), JSON.stringify(evals));
  const last = evals[evals.length - 1];
  assert(last[0] === steps && last[2] >= 0 && last[2] <= 1, JSON.stringify(last));
  // A style preference is learned: held-out accuracy near 1, the chosen reward above the rejected.
  assert(last[1] < Math.LN2 && last[2] >= 0.9 && last[3] > 0 && Math.abs(last[3] - (last[4] - last[5])) < 2e-3, JSON.stringify(last));
  // The comparison: SFT on the chosen completions, scored on the same held-out pairs.
  const cmp = await table("pref-compare");
  assert(cmp.length === 2 && cmp[1][0].startsWith("SFT"), JSON.stringify(cmp));
  for (const r of cmp) assert(Number(r[1]) === steps && Number(r[3]) >= 0 && Number(r[3]) <= 1 && r.slice(2).every((x) => Number.isFinite(Number(x))), JSON.stringify(r));
  const samples = await table("pref-samples");
  assert(samples.length === 3 && samples.every((r) => r.length === 6 && r.slice(3).every((x) => x.length > 0 && x !== "…")), JSON.stringify(samples));
  // Loss, rewards, accuracies and log-probabilities, each with its lines drawn.
  const charts = await w.locator("svg.chart").evaluateAll((svgs) => svgs.map((svg) => svg.querySelectorAll("path").length));
  assert(charts.length === 4 && charts.every((n) => n >= 3), `lines per chart: ${charts}`);
  const status = await w.locator("[data-testid=run-state]").locator("..").textContent();
  console.log(`     ${seconds.toFixed(1)} s; step 1 loss ${l[0].toFixed(4)}, step ${steps} ${l[steps - 1].toFixed(4)}; ${status}`);
  for (const r of evals) console.log(`     held-out at step ${r[0]}: loss ${r[1]}, accuracies ${r[2]}, margins ${r[3]}, chosen ${r[4]}, rejected ${r[5]}, logps ${r[6]} / ${r[7]}`);
  for (const r of cmp) console.log(`     ${r[0]}: loss ${r[2]}, accuracies ${r[3]}, margins ${r[4]}, chosen ${r[5]}, rejected ${r[6]}, logps ${r[7]} / ${r[8]}`);
  for (const r of samples) console.log(`     ${JSON.stringify(r.slice(1))}`);
  // The printed command, run natively, trains to the same held-out figures.
  const cli = join(root, "target/debug/tinytune");
  assert(existsSync(cli), `${cli} is missing: build it with cargo build -p tinytune-cli (scripts/test.sh runs the cargo tests first)`);
  const args = command.split(/\s+/).slice(1);
  const out = mkdtempSync(join(tmpdir(), "tinytune-dpo-"));
  args[args.indexOf("--out") + 1] = join(out, "run");
  execFileSync(cli, args.concat(["--checkpoint-every", "0"]), { cwd: root, stdio: ["ignore", "ignore", "pipe"] });
  const native = readFileSync(join(out, "run/metrics.jsonl"), "utf8").trim().split("\n").map((x) => JSON.parse(x)).filter((e) => e.event === "eval");
  assert(native.length === evals.length, `${native.length} native evaluations`);
  native.forEach((e, i) => {
    const r = evals[i], m = e.metrics;
    const close = Math.abs(e.eval_loss - r[1]) < 2e-3 && Math.abs(m["rewards/accuracies"] - r[2]) < 1e-3 && Math.abs(m["rewards/margins"] - r[3]) < 2e-2;
    assert(e.step === r[0] && close, `page ${JSON.stringify(r)} vs native ${JSON.stringify(e)}`);
  });
  await w.screenshot({ path: join(artifacts, "preference.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check.long("the grpo widget runs SFT then GRPO on micro: the reward per step, sampled groups with their advantages, the held-out reward before and after, and its commands reproduce the run", async () => {
  const page = await openPage(cpu, base + "?lesson=learning-from-preferences&backend=cpu");
  const w = page.locator("[data-widget=grpo]").first();
  // The lesson's block has no parameters: sentiment, 60 SFT steps, then GRPO with G = 8.
  const commands = (await w.locator("[data-testid=command]").textContent()).trim().split("\n");
  assert(commands.length === 3, commands.join(" | "));
  const [sftCommand, evalCommand, grpoCommand] = commands;
  assert(sftCommand.startsWith("tinytune finetune --model assets/micro --data sentiment") && !sftCommand.includes("--objective"), sftCommand);
  assert(evalCommand.startsWith("tinytune eval --model runs/grpo-sft-sentiment --data sentiment --objective grpo"), evalCommand);
  assert(grpoCommand.startsWith("tinytune finetune --model runs/grpo-sft-sentiment --data sentiment --objective grpo --group-size 8"), grpoCommand);
  const expected = (await w.locator("[data-testid=expected]").textContent()).trim();
  const flag = (cmd, f) => cmd.match(new RegExp(`${f} (\\S+)`))[1];
  const steps = Number(flag(grpoCommand, "--steps")), every = Number(flag(grpoCommand, "--eval-every")), g = Number(flag(grpoCommand, "--group-size"));
  const t0 = Date.now();
  await w.locator("[data-testid=train]").click();
  // The groups appear while GRPO runs, before the run ends.
  await w.locator("[data-testid=group]").first().waitFor({ timeout: 600_000 });
  await waitForRun(w, 600_000);
  const seconds = (Date.now() - t0) / 1000;
  // The batch reward of every step, a share of right answers.
  const raw = await w.getAttribute("data-rewards");
  const rewards = raw ? raw.split(",").map(Number) : [];
  assert(rewards.length === steps && rewards.every((r) => r >= 0 && r <= 1), `rewards ${rewards}`);
  // The SFT loss, and the reward chart: batch reward, frac_reward_zero_std, held-out sampled and greedy.
  const charts = await w.locator("svg.chart").evaluateAll((svgs) => svgs.map((svg) => svg.querySelectorAll("path").length));
  assert(charts.length === 2 && charts[0] >= 1 && charts[1] >= 4, `lines per chart: ${charts}`);
  // The held-out reward before GRPO and at each evaluation.
  const held = await w.locator("[data-testid=grpo-evals] tbody tr").evaluateAll((trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent.trim())));
  assert(held.length === 1 + Math.ceil(steps / every) && held[0][0].startsWith("before"), JSON.stringify(held));
  const sampled = held.map((r) => Number(r[1])), greedy = held.map((r) => Number(r[2]));
  assert([...sampled, ...greedy].every((x) => Number.isFinite(x) && x >= 0 && x <= 1), JSON.stringify(held));
  assert(Number(held[held.length - 1][0]) === steps, JSON.stringify(held));
  // The last step's groups: G completions each, rewards 0 or 1, advantages that sum to 0
  // within the group, positive exactly where the reward beats the group's mean.
  const groups = await w.locator("[data-testid=group]").evaluateAll((gs) => gs.map((g) => ({
    caption: g.querySelector("caption").textContent,
    rows: [...g.querySelectorAll("[data-testid=completion]")].map((tr) => ({ text: tr.children[0].textContent, reward: Number(tr.dataset.reward), adv: Number(tr.dataset.advantage), shown: tr.children[2].textContent })),
  })));
  assert(groups.length >= 1 && groups.length <= 4, `${groups.length} groups`);
  for (const gr of groups) {
    assert(gr.rows.length === g, JSON.stringify(gr));
    const mean = gr.rows.reduce((a, r) => a + r.reward, 0) / g;
    const sum = gr.rows.reduce((a, r) => a + r.adv, 0);
    assert(Math.abs(sum) < 1e-6, `advantages sum to ${sum}: ${JSON.stringify(gr)}`);
    for (const r of gr.rows) {
      assert((r.reward === 0 || r.reward === 1) && Number.isFinite(r.adv), JSON.stringify(r));
      assert(Math.sign(r.adv) === Math.sign(Math.round((r.reward - mean) * 1e9)), JSON.stringify(gr));
      assert(r.adv === 0 || r.shown.startsWith(r.adv > 0 ? "+" : "-"), JSON.stringify(r));
    }
  }
  const status = await w.locator("[data-testid=run-state]").locator("..").textContent();
  console.log(`     ${seconds.toFixed(1)} s (the widget says ${JSON.stringify(expected)}); ${status}`);
  for (const r of held) console.log(`     held-out at ${r[0]}: reward ${r[1]}, greedy_reward ${r[2]}, answer loss ${r[3]}`);
  console.log(`     batch rewards ${rewards.map((r) => r.toFixed(2)).join(" ")}`);
  for (const gr of groups.slice(0, 2)) console.log(`     ${gr.caption}: ${gr.rows.map((r) => `${JSON.stringify(r.text)} ${r.reward} ${r.shown}`).join(", ")}`);
  // The printed commands, run natively: the SFT model's held-out reward is the page's "before".
  const cli = join(root, "target/debug/tinytune");
  assert(existsSync(cli), `${cli} is missing: build it with cargo build -p tinytune-cli (scripts/test.sh runs the cargo tests first)`);
  const out = mkdtempSync(join(tmpdir(), "tinytune-grpo-"));
  const sftDir = join(out, "sft");
  const native = (cmd) => cmd.split(/\s+/).slice(1).map((a) => (a === "runs/grpo-sft-sentiment" ? sftDir : a === "runs/grpo-sentiment" ? join(out, "grpo") : a));
  execFileSync(cli, native(sftCommand), { cwd: root, stdio: ["ignore", "ignore", "pipe"] });
  const before = JSON.parse(execFileSync(cli, native(evalCommand).concat(["--json"]), { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }));
  console.log(`     native before GRPO: reward ${before.reward}, greedy_reward ${before.greedy_reward}`);
  assert(Math.abs(before.reward - sampled[0]) < 0.03 && Math.abs(before.greedy_reward - greedy[0]) < 0.07, `page ${JSON.stringify(held[0])} vs native ${JSON.stringify(before)}`);
  // And GRPO from that model evaluates as the page's run did (sampling makes a float's
  // difference a different completion now and then, hence the tolerance).
  execFileSync(cli, native(grpoCommand), { cwd: root, stdio: ["ignore", "ignore", "pipe"] });
  const evals = readFileSync(join(out, "grpo/metrics.jsonl"), "utf8").trim().split("\n").map((x) => JSON.parse(x)).filter((e) => e.event === "eval");
  assert(evals.length === held.length - 1, `${evals.length} native evaluations`);
  evals.forEach((e, i) => {
    const r = held[i + 1];
    console.log(`     native at ${e.step}: reward ${e.metrics.reward}, greedy_reward ${e.metrics.greedy_reward}`);
    const close = Math.abs(e.metrics.reward - Number(r[1])) < 0.04 && Math.abs(e.metrics.greedy_reward - Number(r[2])) < 0.1;
    assert(e.step === Number(r[0]) && close, `page ${JSON.stringify(r)} vs native ${JSON.stringify(e)}`);
  });
  await w.screenshot({ path: join(artifacts, "grpo.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the distill widget trains a teacher, then three students from one start on hard labels and on soft targets, and its commands reproduce the runs", async () => {
  // The lesson that places the widget (the check reads the lessons as they are on disk).
  const placesDistill = (text) => [...text.matchAll(/^```widget\s*\n([\s\S]*?)^```/gm)].some((m) => /^\s*name:\s*distill\s*$/m.test(m[1]));
  const lesson = lessonsOnDisk().find((l) => placesDistill(readFileSync(join(root, "lessons", l.file), "utf8")));
  assert(lesson, "no lesson places the distill widget (a ```widget block with name: distill)");
  const page = await openPage(cpu, base + `?lesson=${lesson.slug}&backend=cpu`);
  const w = page.locator("[data-widget=distill]").first();
  // CI-sized: a few steps of each run on few examples of the task with the shortest rows.
  await setParam(w, "task", "sentiment");
  await setParam(w, "teacher_steps", 6);
  await setParam(w, "steps", 6);
  await setParam(w, "examples", 32);
  // The temperatures the table's labels name, whatever the lesson's block sets.
  await setParam(w, "t1", 1);
  await setParam(w, "t2", 4);
  const commands = (await w.locator("[data-testid=command]").textContent()).trim().split("\n");
  assert(commands.length === 4, commands.join(" | "));
  const task = commands[0].match(/--data (\S+)/)[1];
  assert(commands[0].startsWith("tinytune finetune --model assets/micro --data ") && commands[0].includes("--steps 6") && commands[0].endsWith(`--out runs/distill-teacher-${task}`), commands[0]);
  for (const c of commands.slice(1)) {
    assert(c.startsWith(`tinytune distill --teacher runs/distill-teacher-${task} --student-layers `) && c.includes("--steps 6") && c.includes("--train-examples 32"), c);
  }
  const expected = (await w.locator("[data-testid=expected]").textContent()).trim();
  const t0 = Date.now();
  await w.locator("[data-testid=train]").click();
  await waitForRun(w, 300_000);
  const seconds = (Date.now() - t0) / 1000;
  // Every run took its steps: the teacher's, then each student's.
  const steps = (await w.getAttribute("data-steps")).split(",").map(Number);
  assert(JSON.stringify(steps) === "[6,6,6,6]", `steps per run ${steps}`);
  // The table: the teacher and the three students, each with its final held-out loss.
  const rows = await w.locator("[data-testid=distill-table] tbody tr").evaluateAll((trs) => trs.map((tr) => ({
    cells: [...tr.children].map((td) => td.textContent.trim()),
    loss: Number(tr.querySelector("[data-testid=final-loss]").dataset.loss),
  })));
  assert(rows.length === 4 && rows.every((r) => Number.isFinite(r.loss) && r.loss > 0), JSON.stringify(rows));
  assert(JSON.stringify(rows.map((r) => r.cells[0])) === JSON.stringify(["teacher", "hard labels", "soft targets T=1", "soft targets T=4"]), JSON.stringify(rows));
  // The teacher's loss (train batch, held-out); the students' held-out losses with the
  // teacher's; their next-token loss on their training batches.
  const charts = await w.locator("svg.chart").evaluateAll((svgs) => svgs.map((svg) => svg.querySelectorAll("path").length));
  assert(charts.length === 3 && charts[0] >= 2 && charts[1] >= 4 && charts[2] >= 3, `lines per chart: ${charts}`);
  const status = await w.locator("[data-testid=run-state]").locator("..").textContent();
  console.log(`     ${seconds.toFixed(1)} s (the widget says ${JSON.stringify(expected)}); ${status}`);
  for (const r of rows) console.log(`     ${r.cells.join(" | ")}`);
  // The printed commands, run natively from the repository root (their runs/ folders in a
  // temporary one), end at the same held-out losses.
  const cli = join(root, "target/debug/tinytune");
  assert(existsSync(cli), `${cli} is missing: build it with cargo build -p tinytune-cli (scripts/test.sh runs the cargo tests first)`);
  const out = mkdtempSync(join(tmpdir(), "tinytune-distill-"));
  const native = (cmd) => cmd.split(/\s+/).slice(1).map((a) => (a.startsWith("runs/") ? join(out, a.slice(5)) : a));
  commands.forEach((c, i) => {
    const args = native(c);
    execFileSync(cli, args.concat(["--checkpoint-every", "0"]), { cwd: root, stdio: ["ignore", "ignore", "pipe"] });
    const dir = args[args.indexOf("--out") + 1];
    const evals = readFileSync(join(dir, "metrics.jsonl"), "utf8").trim().split("\n").map((x) => JSON.parse(x)).filter((e) => e.event === "eval");
    const last = evals[evals.length - 1];
    console.log(`     native ${rows[i].cells[0]}: held-out loss ${last.eval_loss} (page ${rows[i].loss})`);
    assert(last.step === 6 && Math.abs(last.eval_loss - rows[i].loss) < 2e-3, `page ${JSON.stringify(rows[i])} vs native ${JSON.stringify(last)}`);
  });
  await w.screenshot({ path: join(artifacts, "distill.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the prune widget prunes micro at several sparsities, maps what structured pruning removed, and its commands reproduce the chosen rows", async () => {
  const placesPrune = (text) => [...text.matchAll(/^```widget\s*\n([\s\S]*?)^```/gm)].some((m) => /^\s*name:\s*prune\s*$/m.test(m[1]));
  const lesson = lessonsOnDisk().find((l) => placesPrune(readFileSync(join(root, "lessons", l.file), "utf8")));
  assert(lesson, "no lesson places the prune widget (a ```widget block with name: prune)");
  const page = await openPage(cpu, base + `?lesson=${lesson.slug}&backend=cpu`);
  const w = page.locator("[data-widget=prune]").first();
  const cli = join(root, "target/debug/tinytune");
  assert(existsSync(cli), `${cli} is missing: build it with cargo build -p tinytune-cli (scripts/test.sh runs the cargo tests first)`);
  const out = mkdtempSync(join(tmpdir(), "tinytune-prune-"));
  // Prunes with the settings on the page (waiting for the table of `method`, as a table of
  // the last run stays up meanwhile), then runs the printed command natively (its
  // --out in a temporary folder) and returns the page's rows, the chosen one and the CLI's JSON.
  const run = async (method) => {
    await w.locator("[data-testid=prune]").click();
    await w.locator(`[data-testid=prune-table][data-method="${method}"], .error`).first().waitFor({ timeout: 120_000 });
    const errors = await w.locator(".error").allTextContents();
    assert(errors.length === 0, `the widget reported: ${errors.join(" | ")}`);
    const rows = await w.locator("[data-testid=prune-table] tbody tr").evaluateAll((trs) => trs.map((tr) => ({
      sparsity: Number(tr.dataset.sparsity), loss: Number(tr.dataset.loss), parameters: Number(tr.dataset.parameters), nonzero: Number(tr.dataset.nonzero),
      zeros: tr.dataset.zeros === "" ? null : Number(tr.dataset.zeros), linear: tr.dataset.linear === "" ? null : Number(tr.dataset.linear),
      chosen: tr.dataset.chosen === "true", cells: [...tr.children].map((td) => td.textContent.trim()),
    })));
    for (const r of rows) console.log(`     ${r.cells.slice(0, 5).join(" | ")}`);
    const command = (await w.locator(".command code").textContent()).trim();
    const args = command.split(/\s+/).slice(1).map((a) => (a.startsWith("runs/") ? join(out, a.slice(5)) : a)).concat(["--json"]);
    assert(command.startsWith("tinytune prune --model assets/micro --data stories ") && args.includes("--out"), command);
    const native = JSON.parse(execFileSync(cli, args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }));
    const chosen = rows.filter((r) => r.chosen);
    assert(chosen.length === 1, JSON.stringify(rows));
    console.log(`     native: ${command} → held-out loss ${native.after.eval_loss} (page ${chosen[0].loss}), before ${native.before.eval_loss} (page ${rows[0].loss})`);
    return { rows, chosen: chosen[0], native };
  };
  // The page evaluates on wasm flex and the CLI on native flex, on the same held-out batches
  // and calibration batches: the losses agree to float rounding (about 1e-6 apart when measured).
  const close = (page, native) => Math.abs(page - native) < 5e-5;

  // Magnitude, each matrix alike, at rising sparsities; the row shown is the highest.
  await setParam(w, "method", "magnitude");
  await setParam(w, "scope", "layer");
  await setParam(w, "sweep", "0.5,0.75");
  await setParam(w, "sparsity", 0.9);
  const m = await run("magnitude");
  assert(JSON.stringify(m.rows.map((r) => r.sparsity)) === "[0,0.5,0.75,0.9]" && m.chosen.sparsity === 0.9, JSON.stringify(m.rows));
  assert(m.rows.every((r) => Number.isFinite(r.loss) && r.loss > 0), JSON.stringify(m.rows));
  // Past half the weights the loss climbs with every step (at 0.5 micro hardly notices yet).
  assert(m.rows[3].loss > m.rows[2].loss && m.rows[2].loss > m.rows[1].loss && m.rows[2].loss > m.rows[0].loss + 0.1, JSON.stringify(m.rows));
  // The shape stays; the zeros are exactly the pruned weights, floor(s·n) of each of the 16 matrices.
  assert(m.rows[0].nonzero === m.rows[0].parameters, "micro has no zero weight to begin with");
  for (const r of m.rows.slice(1)) {
    assert(r.parameters === m.rows[0].parameters && r.parameters - r.nonzero === r.zeros, JSON.stringify(r));
    assert(r.zeros <= r.sparsity * r.linear && r.zeros > r.sparsity * r.linear - 16, JSON.stringify(r));
  }
  assert((await w.locator("[data-testid=prune-map][data-kind=matrices] rect").count()) === 16, "a cell per block and matrix");
  assert(close(m.chosen.loss, m.native.after.eval_loss) && close(m.rows[0].loss, m.native.before.eval_loss), `page ${JSON.stringify(m.chosen)} vs native ${JSON.stringify(m.native)}`);
  assert(m.native.after.nonzero === m.chosen.nonzero && m.native.after.parameters === m.chosen.parameters, JSON.stringify(m.native.after));

  // Structured: half of every block's MLP neurons, ranked on calibration stories.
  await setParam(w, "method", "structured");
  await setParam(w, "sweep", "0.5");
  await setParam(w, "sparsity", 0.5);
  const s = await run("structured");
  assert(s.rows.length === 2 && s.rows[1].chosen, JSON.stringify(s.rows));
  const [full, half] = s.rows;
  // 4 blocks × 256 neurons × (128 in + 1 bias + 128 out) fewer parameters, none of them zero.
  assert(half.parameters === full.parameters - 4 * 256 * 257 && half.nonzero === half.parameters && Number.isFinite(half.loss) && half.loss > full.loss, JSON.stringify(s.rows));
  const map = w.locator("[data-testid=prune-map][data-kind=structured]");
  const shares = await map.locator("rect.neurons").evaluateAll((rs) => rs.map((r) => Number(r.dataset.share)));
  assert(shares.length === 4 * 64 && Math.abs(shares.reduce((a, b) => a + b, 0) / shares.length - 0.5) < 1e-9, `${shares.length} neuron cells`);
  assert((await map.locator("rect.head").count()) === 16 && (await map.locator('rect.head[data-removed="true"]').count()) === 0, "GPT-2's heads stay");
  assert(close(half.loss, s.native.after.eval_loss) && s.native.after.parameters === half.parameters, `page ${JSON.stringify(half)} vs native ${JSON.stringify(s.native)}`);
  await w.screenshot({ path: join(artifacts, "prune.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the rope widget draws each scaling's rotations and measures micro-llama past its context", async () => {
  const page = await openPage(cpu, base + "?lesson=longer-contexts&backend=cpu");
  const w = page.locator("[data-widget=rope]").first();
  await setParam(w, "factor", 2);
  await setParam(w, "windows", 2);
  const rotations = await w.locator("[data-testid=rotations]").textContent();
  // micro-llama's head: 32 dimensions, θ = 10000; pair i turns every 2π·10000^(i/16) tokens,
  // longer than 128 for i ≥ 6; YaRN's temperature at ×2 is 0.1·ln 2 + 1.
  assert(rotations.includes("rotates 16 pairs") && rotations.includes("10 of them turn less than once") && rotations.includes("1.0693"), rotations);
  await setParam(w, "head", "llama-3.1-8b");
  const big = await w.locator("[data-testid=rotations]").textContent();
  assert(big.includes("rotates 64 pairs") && big.includes("θ = 500000"), big);
  await w.locator("[data-testid=rope]").click();
  await w.locator("[data-testid=rope-table], .error").first().waitFor({ timeout: 240_000 });
  assert((await w.locator(".error").count()) === 0, `the widget reported: ${await w.locator(".error").first().textContent().catch(() => "")}`);
  const rows = await w.locator("[data-testid=rope-table] tbody tr").evaluateAll((trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  console.log(`     ${JSON.stringify(rows)}`);
  assert(rows.length === 5 && rows.every((r) => r.length === 3), JSON.stringify(rows));
  const row = (m) => rows.find((r) => r[0] === m).slice(1).map(Number);
  assert(rows.every((r) => r.slice(1).every((x) => Number.isFinite(Number(x)) && Number(x) > 0)), JSON.stringify(rows));
  // Inside the trained context plain RoPE is the model as trained; squeezing positions ×2
  // without fine-tuning costs loss there.
  assert(row("linear")[0] > row("none")[0], JSON.stringify(rows));
  await w.screenshot({ path: join(artifacts, "rope.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the train widget fine-tunes the Llama-style micro-llama with LoRA", async () => {
  const page = await openPage(cpu, base + "?lesson=lora&backend=cpu");
  const w = page.locator("[data-widget=train]").first();
  await setParam(w, "model", "micro-llama");
  await setParam(w, "method", "lora");
  await setParam(w, "rank", 8);
  await setParam(w, "targets", "all-linear");
  await setParam(w, "sweep", "");
  // r·(d_in + d_out) over q, k, v, o (128→128, 128→64, 128→64, 128→128) and gate, up,
  // down (128↔344): 8·(256 + 192 + 192 + 256 + 3·472) = 18,496 per block, 4 blocks.
  const live = await w.locator("[data-testid=trainable]").textContent();
  assert(live.includes("73,984 of 791,680 parameters train"), live);
  await setParam(w, "steps", 2);
  await w.locator("[data-testid=train]").click();
  await waitForRun(w, 240_000);
  const command = await w.locator("[data-testid=command]").textContent();
  assert(command.includes("--model assets/micro-llama") && command.includes("--method lora"), command);
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

/** Opens a GGUF file in the real-model widget the way a reader does (the file input). */
async function openGguf(w, file, timeout) {
  await w.locator("[data-testid=gguf-file]").setInputFiles(file);
  await w.locator("[data-testid=real-info], .error").first().waitFor({ timeout });
  assert((await w.locator(".error").count()) === 0, `the widget reported: ${await w.locator(".error").first().textContent().catch(() => "")}`);
  return w.locator("[data-testid=real-info]").textContent();
}

/** Asks the opened model `prompt`, waits for the whole reply, returns [model, reply, speed]. */
async function askReal(w, prompt, maxTokens, timeout) {
  await setParam(w, "prompt", prompt);
  await setParam(w, "max_tokens", maxTokens);
  const n = await w.locator("[data-testid=replies] tbody tr").count();
  await w.locator("[data-testid=ask]").click();
  const row = w.locator("[data-testid=replies] tbody tr").nth(n);
  await w.locator(`[data-testid=replies] tbody tr:nth-child(${n + 1})[data-done=true], .error`).first().waitFor({ timeout });
  assert((await w.locator(".error").count()) === 0, `the widget reported: ${await w.locator(".error").first().textContent().catch(() => "")}`);
  return row.locator("td").evaluateAll((tds) => [tds[0].textContent, tds[2].textContent, tds[3].textContent]);
}

await check.long("the real-model widget opens a GGUF file, chats, fine-tunes with LoRA and chats again", async () => {
  // The tiny Llama of tests/fixtures/make_gguf_reference.py: Q8_0 embedding, Q4_1, Q4_0,
  // BF16 and F16 weights, the ChatML template in its metadata.
  const file = join(root, "tests/fixtures/gguf/tiny-llama.gguf");
  const page = await openPage(cpu, base + "?lesson=a-real-model&backend=cpu");
  const w = page.locator("[data-widget=real-model]").first();
  const info = await openGguf(w, file, 60_000);
  console.log(`     ${info}`);
  assert(info.includes("2 layers, width 64, 4 query heads sharing 2 key/value heads, 320 tokens") && info.includes("Chat template: from the file"), info);
  const types = await w.locator("[data-testid=storage] tbody tr td:first-child").allTextContents();
  assert(["Q4_1", "Q8_0", "Q4_0", "F32", "BF16", "F16"].every((t) => types.includes(t)), types.join(","));
  const prompt = "Name three primary colours.";
  const [model, reply, speed] = await askReal(w, prompt, 8, 60_000);
  console.log(`     ${model}: ${JSON.stringify(reply)} (${speed})`);
  assert(model === "base" && /^8 tokens · [0-9.]+ tokens\/s$/.test(speed), `${model} ${speed}`);
  // The same greedy reply as the native CLI (built by the cargo tests that run first).
  const cli = join(root, "target/debug/tinytune");
  assert(existsSync(cli), `${cli} is missing: build it with cargo build -p tinytune-cli (scripts/test.sh runs the cargo tests first)`);
  const native = execFileSync(cli, ["generate", "--model", file, "--chat", "--prompt", prompt, "--temperature", "0", "--max-tokens", "8"], { encoding: "utf8" });
  assert(native.trimEnd() === reply.trimEnd(), `page ${JSON.stringify(reply)} vs native ${JSON.stringify(native)}`);
  await setParam(w, "steps", 8);
  await setParam(w, "lr", 0.005);
  await setParam(w, "seq", 256);
  await w.locator("[data-testid=train]").click();
  await waitForRun(w, 120_000);
  const l = await losses(w);
  assert(l.length === 8 && l.every(Number.isFinite), `losses ${l}`);
  const status = await w.locator("[data-testid=run-state]").locator("..").textContent();
  const evals = (await w.getAttribute("data-evals")).split(",").map(Number);
  console.log(`     losses ${l.map((x) => x.toFixed(3)).join(" ")}; held-out ${evals.map((x) => x.toFixed(3)).join(" ")}; ${status}`);
  // Held-out Tiny Tuner conversations, the same ones at every evaluation: the fine-tune learns.
  assert(evals.length === 4 && evals[3] < evals[0], `held-out losses ${evals}`);
  const chart = await w.locator("svg polyline, svg path").count();
  assert(chart > 0, "no loss chart");
  const [after] = await askReal(w, prompt, 8, 60_000);
  assert(after === "after 8 steps of LoRA", after);
  const command = await w.locator("[data-testid=command]").textContent();
  assert(command.includes("--data assets/chat/tiny-tuner.jsonl") && command.includes("--steps 8"), command);
  await w.screenshot({ path: join(artifacts, "real-model.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

// By hand, with SmolLM2 (scripts/get-smollm2.sh): TINYTUNE_SMOLLM2_GGUF=models/… measures the
// page's load time, tokens per second and training speed on the real model.
if (process.env.TINYTUNE_SMOLLM2_GGUF) {
  await check("the real-model widget runs SmolLM2-135M-Instruct", async () => {
    const page = await openPage(cpu, base + `?lesson=a-real-model&backend=${process.env.TINYTUNE_BACKEND ?? "cpu"}`);
    const w = page.locator("[data-widget=real-model]").first();
    console.log(`     ${await openGguf(w, resolve(process.env.TINYTUNE_SMOLLM2_GGUF), 600_000)}`);
    console.log(`     ${JSON.stringify(await askReal(w, "Name three primary colours.", 48, 600_000))}`);
    await setParam(w, "steps", Number(process.env.TINYTUNE_STEPS ?? 20));
    await w.locator("[data-testid=train]").click();
    await waitForRun(w, 3_600_000);
    console.log(`     ${await w.locator("[data-testid=run-state]").locator("..").textContent()}`);
    console.log(`     losses ${(await losses(w)).map((x) => x.toFixed(3)).join(" ")}`);
    console.log(`     ${JSON.stringify(await askReal(w, "How do I boil an egg?", 48, 600_000))}`);
    await w.screenshot({ path: join(artifacts, "real-model-smollm2.png") });
    await page.close();
  });
}

await check("adapters, a soft prompt and IA³ train in the page; the prompt shows its nearest tokens", async () => {
  const page = await openPage(cpu, base + "?lesson=soft-prompts&backend=cpu");
  const w = page.locator("[data-widget=train]").first();
  await setParam(w, "model", "micro");
  await setParam(w, "method", "prompt");
  await setParam(w, "tokens", 4);
  await setParam(w, "sweep", "");
  const live = await w.locator("[data-testid=trainable]").textContent();
  // 4 virtual tokens of micro's 128-wide embedding.
  assert(live.includes("prompt: 512 of 875,264 parameters train"), live);
  await setParam(w, "steps", 2);
  await w.locator("[data-testid=train]").click();
  await waitForRun(w, 240_000);
  const nearest = await w.locator("[data-testid=nearest] tbody tr").count();
  assert(nearest === 4, `expected 4 virtual tokens in the nearest-token table, got ${nearest}`);
  await setParam(w, "sweep", "method=adapter@3e-3,ia3@3e-2");
  await w.locator("[data-testid=train]").click();
  const rows = await sweepRows(w, 3, 300_000);
  const state = await w.locator("[data-testid=run-state]").textContent();
  console.log(`     ${state} | ${JSON.stringify(rows.map((r) => r[0]))}`);
  assert(state.includes("ia3: 3584 of 875264 parameters train"), state);
  assert(rows[1][0].includes("adapter") && rows[2][0].includes("ia3") && rows.every((r) => Number.isFinite(parseFloat(r[1]))), JSON.stringify(rows));
  await w.screenshot({ path: join(artifacts, "soft-prompt.png") });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("reloading an experiment's URL restores its settings", async () => {
  const page = await openPage(cpu, base + `?lesson=${lessons[0].slug}&backend=cpu`);
  const w = page.locator("[data-widget=train]").first();
  await setParam(w, "steps", 37);
  await setParam(w, "lr", 0.002);
  await setParam(w, "task", "json-extract");
  const url = page.url();
  assert(url.includes("steps=37") && url.includes("lr=0.002") && url.includes("json-extract"), `URL does not carry the settings: ${url}`);
  const fresh = await openPage(cpu, url);
  const w2 = fresh.locator("[data-widget=train]").first();
  assert(await w2.locator('[data-param="steps"]').inputValue() === "37", "steps not restored");
  assert(await w2.locator('[data-param="lr"]').inputValue() === "0.002", "lr not restored");
  assert(await w2.locator('[data-param="task"]').inputValue() === "json-extract", "task not restored");
  assert((await w2.locator("[data-testid=command]").textContent()).includes("--steps 37"), "command not updated");
  // A bad link value is reported, not applied.
  const bad = await openPage(cpu, base + `?lesson=${lessons[0].slug}&w2.steps=-4`);
  assert((await bad.textContent("article")).includes("link parameter w2.steps ignored"), "bad link value not reported");
  await page.close(); await fresh.close(); await bad.close();
});

await check("the train widget shows the controls its lesson names and folds the rest under More settings", async () => {
  // The keys each of lesson 1's train blocks names, read from the file; the essentials show too.
  const text = readFileSync(join(root, "lessons", lessons[0].file), "utf8");
  const blocks = [...text.matchAll(/^```widget\s*\n([\s\S]*?)\n```\s*$/gm)].map((m, i) => ({ n: i + 1, body: m[1] }));
  const trains = blocks.filter((b) => /^name:\s*train\s*$/m.test(b.body));
  assert(trains.length >= 2, `${lessons[0].file}: this check needs two train widgets, found ${trains.length}`);
  const [first, last] = [trains[0], trains[trains.length - 1]];
  const named = first.body.split("\n").map((l) => l.split(":")[0].trim()).filter((k) => k && k !== "name" && !k.startsWith("#"));
  const allowed = new Set([...named, "model", "task", "steps"]);
  const visible = (w) => w.locator("[data-param]").evaluateAll((els) => els.filter((e) => e.checkVisibility()).map((e) => e.dataset.param));
  // One link: a named control of the first train widget, folded ones of the last.
  const page = await openPage(cpu, base + `?lesson=${lessons[0].slug}&backend=cpu&w${first.n}.steps=37&w${last.n}.batch=4&w${last.n}.optimizer=sgd`);
  const w = page.locator("[data-widget=train]").first();
  const more = w.locator("[data-testid=more-settings]");
  assert(!(await more.evaluate((d) => d.open)), "More settings starts open though the link set only a named control");
  assert(await w.locator('[data-param="steps"]').inputValue() === "37", "steps not applied from the link");
  const shown = await visible(w);
  assert(shown.every((k) => allowed.has(k)), `shown ${shown} beyond the lesson's ${[...allowed]}`);
  assert(named.every((k) => shown.includes(k)), `the lesson names ${named}, shown ${shown}`);
  const folded = await more.locator("[data-param]").evaluateAll((els) => els.map((e) => e.dataset.param));
  assert(folded.length >= 10 && folded.every((k) => !allowed.has(k)), `folded: ${folded}`);
  // setParam opens the fold to set a folded control, which the URL then carries.
  await setParam(w, "seed", 3);
  assert(await more.evaluate((d) => d.open), "setting a folded control did not open More settings");
  assert(new URL(page.url()).searchParams.get(`w${first.n}.seed`) === "3", `URL ${page.url()}`);
  const all = await visible(w);
  assert(all.length === shown.length + folded.length && folded.every((k) => all.includes(k)), `open, shown: ${all}`);
  // The link's folded values are applied, and their widget's fold starts open.
  const w2 = page.locator("[data-widget=train]").last();
  assert(await w2.locator("[data-testid=more-settings]").evaluate((d) => d.open), "a link's folded value did not open More settings");
  assert(await w2.locator('[data-param="batch"]').inputValue() === "4", "batch not applied from the link");
  assert(await w2.locator('[data-param="optimizer"]').inputValue() === "sgd", "optimizer not applied from the link");
  assert((await w2.locator("[data-testid=command]").textContent()).includes("--batch 4"), "command not updated");
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

await check("the page renders links and pastes as text, and its CSP refuses inline scripts", async () => {
  const payloads = [`<img src=x onerror="window.__xss=1">`, `</script><script>window.__xss=2</script>`, `"><svg onload="window.__xss=3">`];
  for (const p of payloads) {
    const page = await openPage(cpu, base + `?lesson=${lessons[0].slug}&backend=cpu&w2.task=${encodeURIComponent(p)}&w2.lr=${encodeURIComponent(p)}`);
    await page.waitForTimeout(300);
    const article = await page.textContent("article");
    assert(article.includes(p), `the payload is not shown as text: ${p}`);
    assert(await page.evaluate(() => window.__xss === undefined && document.querySelectorAll("article img[src=x], article svg[onload]").length === 0), `payload ran or became markup: ${p}`);
    await page.close();
  }
  // A pasted config.json is read as data; its text comes back as text.
  const page = await openPage(cpu, base + "?lesson=where-memory-goes&backend=cpu");
  const memory = page.locator("[data-widget=memory]").first();
  await setParam(memory, "model", "custom");
  const pasted = `{"model_type": "<img src=x onerror=window.__xss=4>", "hidden_size": "</script><script>window.__xss=5</script>"}`;
  await memory.locator("[data-testid=config-json]").fill(pasted);
  await page.waitForTimeout(300);
  const shown = await memory.locator("[data-testid=memory-error]").textContent();
  assert(shown.includes("<img src=x onerror=window.__xss=4>") || shown.includes("model_type"), `the pasted config's error: ${shown}`);
  assert(await page.evaluate(() => window.__xss === undefined && document.querySelectorAll("img[src=x]").length === 0), "a pasted config ran or became markup");
  // The Content-Security-Policy blocks inline code that is not trunk's start-up script.
  const csp = await page.evaluate(() => document.querySelector('meta[http-equiv="Content-Security-Policy"]')?.content ?? "");
  assert(csp.includes("script-src 'self' 'wasm-unsafe-eval' 'sha256-"), csp);
  assert(!/script-src[^;]*unsafe-inline/.test(csp), `script-src allows inline code: ${csp}`);
  await page.evaluate(() => { const s = document.createElement("script"); s.textContent = "window.__inline = 1"; document.body.appendChild(s); });
  await page.evaluate(() => { const d = document.createElement("div"); d.innerHTML = `<img src="data:," onerror="window.__inline = 2">`; document.body.appendChild(d); });
  await page.waitForTimeout(300);
  assert(await page.evaluate(() => window.__inline === undefined), "an injected inline script ran despite the CSP");
  await page.close();
});

await check("a crashed worker is reported in the page and the page recovers", async () => {
  const page = await openPage(cpu, base + `?lesson=${lessons[0].slug}&backend=cpu`);
  await page.waitForFunction(() => document.querySelector("[data-testid=backend]")?.textContent.startsWith("CPU"), null, { timeout: 60_000 });
  await page.evaluate(() => window.__tinytune_crash_worker());
  await page.waitForSelector("text=the compute worker crashed", { timeout: 30_000 });
  // The restarted worker serves requests again.
  const w = page.locator("[data-widget=generate]").first();
  await setParam(w, "max_tokens", 10);
  await setParam(w, "samples", 1);
  await w.locator("[data-testid=generate]").click();
  await w.locator("[data-testid=samples]").waitFor({ timeout: 120_000 });
  await page.screenshot({ path: join(artifacts, "worker-crash.png") });
  // The only errors are the panic itself.
  const other = page.errors.filter((e) => !/crash requested|unreachable|RuntimeError|panicked/.test(e));
  assert(other.length === 0, `console errors: ${other.join(" | ")}`);
  await page.close();
});

// Runs the verify widget's checks and returns its rows: [name, reference, measured, result].
async function runVerify(page, timeout) {
  const w = page.locator("[data-widget=verify]").first();
  await w.locator("[data-testid=verify-run]").click();
  await page.waitForFunction(() => / checks passed on /.test(document.querySelector("[data-testid=verify-status]")?.textContent ?? ""), null, { timeout });
  return w.locator("[data-testid=verify-table] tbody tr").evaluateAll((trs) =>
    trs.map((tr) => [tr.getAttribute("data-check"), tr.children[2].textContent, tr.children[4].textContent, tr.getAttribute("data-result"), tr.children[7].textContent]),
  );
}

await check.long("the How we know page runs every reference check in the worker on the CPU, and each passes as natively", async () => {
  const page = await openPage(cpu, base + `?lesson=${lessons[0].slug}&backend=cpu`);
  // Linked from the top bar and from every lesson's footer.
  assert((await page.locator("header [data-testid=how-we-know]").count()) === 1, "no top-bar link");
  await page.locator("[data-testid=how-we-know-footer]").click();
  await page.waitForFunction(() => document.querySelector("article")?.getAttribute("data-lesson") === "how-we-know", null, { timeout: 10_000 });
  await page.waitForFunction(() => document.querySelector("[data-testid=backend]")?.textContent.startsWith("CPU"), null, { timeout: 60_000 });
  const cli = join(root, "target/debug/tinytune");
  const native = JSON.parse(execFileSync(cli, ["verify", "--json"], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }));
  const rows = await runVerify(page, 600_000);
  console.log(`     ${rows.length} checks; e.g. ${JSON.stringify(rows.slice(0, 3))}`);
  assert(rows.length === native.checks.length && rows.length >= 50, `${rows.length} rows on the page, ${native.checks.length} natively`);
  const failed = rows.filter((r) => r[3] !== "pass");
  assert(failed.length === 0, `failed in the page: ${JSON.stringify(failed)}`);
  // The page read the same fixtures: the same checks, in order, with the same reference versions.
  for (const [i, o] of native.checks.entries()) {
    assert(rows[i][0] === o.name && rows[i][1] === o.reference, `row ${i}: ${JSON.stringify(rows[i])} vs native ${o.name} ${o.reference}`);
  }
  await page.screenshot({ path: join(artifacts, "verify.png"), fullPage: true });
  assert(page.errors.length === 0, `console errors: ${page.errors.join(" | ")}`);
  await page.close();
});

// Every reference check on WebGPU (SwiftShader: about 100 s); E2E_VERIFY_GROUP=peft (or a
// check's name) runs fewer.
const verifyGroup = process.env.E2E_VERIFY_GROUP ?? "all";
await check.long(`WebGPU (software adapter) runs the ${verifyGroup} reference checks`, async () => {
  const gpu = await browser(["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=swiftshader"]);
  try {
    const page = await openPage(gpu, base + `?lesson=how-we-know&backend=webgpu&w1.checks=${verifyGroup}`);
    await page.waitForFunction(() => !document.querySelector("[data-testid=backend]")?.textContent.startsWith("starting"), null, { timeout: 120_000 });
    const backend = await page.textContent("[data-testid=backend]");
    assert(backend.startsWith("WebGPU"), `backend is ${backend}`);
    const cli = join(root, "target/debug/tinytune");
    const filter = verifyGroup === "all" ? [] : ["--check", verifyGroup];
    const listed = execFileSync(cli, ["verify", "--list", ...filter], { cwd: root, encoding: "utf8" }).trim().split("\n");
    // SwiftShader is slow: up to a minute a check.
    const rows = await runVerify(page, 60_000 * (listed.length + 1));
    console.log(`     ${backend}: ${JSON.stringify(rows.map((r) => [r[0], r[2], r[3], r[3] === "pass" ? "" : r[4]]))}`);
    assert(rows.length === listed.length && rows.every((r) => r[3] === "pass"), JSON.stringify(rows));
    const errors = page.errors.filter((e) => !/WebGPU|powerPreference|adapter/i.test(e));
    assert(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  } finally {
    await gpu.close();
  }
});

await check("WebGPU (software adapter): automatic loads the CPU-only worker; choosing WebGPU loads the WebGPU worker, which trains", async () => {
  const gpu = await browser(["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=swiftshader"]);
  try {
    const page = await openPage(gpu, base + `?lesson=${lessons[0].slug}&backend=auto`);
    const workers = [];
    page.on("worker", (w) => workers.push(w.url()));
    const started = () => page.waitForFunction(() => !document.querySelector("[data-testid=backend]")?.textContent.startsWith("starting"), null, { timeout: 120_000 });
    await started();
    // SwiftShader is a software adapter: automatic keeps to the CPU, so the page loads the
    // build of the worker without WebGPU.
    let backend = await page.textContent("[data-testid=backend]");
    assert(backend.startsWith("CPU"), `automatic with a software adapter chose ${backend}`);
    // The CPU-only worker's extra threads are workers too (worker-thread.js).
    const first = page.workers().map((w) => w.url()).filter((u) => !u.endsWith("/worker-thread.js"));
    assert(first.length === 1 && first[0].endsWith("/worker-cpu_loader.js"), `workers: ${first}`);
    await page.selectOption("[data-testid=backend-choice]", "webgpu");
    await started();
    backend = await page.textContent("[data-testid=backend]");
    const reason = await page.textContent("[data-testid=backend-reason]");
    assert(backend.startsWith("WebGPU"), `backend is ${backend}: ${reason}`);
    // The CPU-only worker is gone, and its threads with it (the browser reports a closed
    // worker a moment after the page terminates it).
    let now = [];
    for (const until = Date.now() + 15_000; Date.now() < until; await page.waitForTimeout(250)) {
      now = page.workers().map((w) => w.url());
      if (now.length === 1) break;
    }
    assert(now.length === 1 && now[0].endsWith("/worker_loader.js"), `after choosing WebGPU, workers: ${now} (started: ${workers})`);
    const w = page.locator("[data-widget=train]").first();
    await setParam(w, "model", "nano");
    await setParam(w, "task", "stories");
    await setParam(w, "steps", 1);
    await setParam(w, "batch", 2);
    await setParam(w, "seq", 32);
    await w.locator("[data-testid=train]").click();
    await waitForRun(w, 300_000);
    const l = await losses(w);
    assert(l.length === 1 && Number.isFinite(l[0]) && l[0] > 0, `losses ${l}`);
    console.log(`     ${backend}: step 1 loss ${l[0]}`);
    await page.screenshot({ path: join(artifacts, "webgpu.png"), fullPage: false });
    const errors = page.errors.filter((e) => !/WebGPU|powerPreference|adapter/i.test(e));
    assert(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  } finally {
    await gpu.close();
  }
});

await check.long("WebGPU (software adapter) runs the real-model widget on a GGUF file", async () => {
  const gpu = await browser(["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=swiftshader"]);
  try {
    const page = await openPage(gpu, base + "?lesson=a-real-model&backend=webgpu");
    await page.waitForFunction(() => !document.querySelector("[data-testid=backend]")?.textContent.startsWith("starting"), null, { timeout: 120_000 });
    const backend = await page.textContent("[data-testid=backend]");
    assert(backend.startsWith("WebGPU"), `backend is ${backend}`);
    const w = page.locator("[data-widget=real-model]").first();
    const info = await openGguf(w, join(root, "tests/fixtures/gguf/tiny-llama.gguf"), 120_000);
    assert(info.includes("on the WebGPU") && info.includes("320 tokens"), info);
    const [model, reply, speed] = await askReal(w, "Name three primary colours.", 4, 120_000);
    console.log(`     ${backend}: ${model}: ${JSON.stringify(reply)} (${speed})`);
    assert(/^4 tokens · [0-9.]+ tokens\/s$/.test(speed), speed);
    await setParam(w, "steps", 2);
    await setParam(w, "seq", 256);
    await w.locator("[data-testid=train]").click();
    await waitForRun(w, 300_000);
    const l = await losses(w);
    assert(l.length === 2 && l.every((x) => Number.isFinite(x) && x > 0), `losses ${l}`);
    const status = await w.locator("[data-testid=run-state]").locator("..").textContent();
    console.log(`     ${status}`);
    assert(status.includes("on the WebGPU"), status);
    const errors = page.errors.filter((e) => !/WebGPU|powerPreference|adapter/i.test(e));
    assert(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  } finally {
    await gpu.close();
  }
});

await runChecks();
await cpu.close();
server.close();
if (failures) {
  console.log(`${failures} end-to-end check(s) failed; screenshots in ${artifacts}`);
  process.exit(1);
}
console.log(`all end-to-end checks passed; screenshots in ${artifacts}`);
