// What the end-to-end checks and the benchmarks share: a static server for a built page, and
// lesson 1's first train widget as the lesson files number it.

import { createServer } from "node:http";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, extname, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml" };

/** Cross-origin isolation, as `trunk serve` sends it (Trunk.toml): without it browsers will not
 * share the CPU worker's memory with its extra threads, and it trains on one. */
export const ISOLATION = { "cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp" };

/** Serves the folder `dist` on a free localhost port, cross-origin isolated unless
 * `isolated` is false (a plain static host); resolves to the listening server. */
export function serve(dist, { isolated = true } = {}) {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    let file = join(dist, path === "/" ? "index.html" : path);
    if (!file.startsWith(dist)) { res.writeHead(403); return res.end(); }
    try {
      if (statSync(file).isDirectory()) file = join(file, "index.html");
      const body = readFileSync(file);
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", ...(isolated ? ISOLATION : {}) });
      res.end(body);
    } catch {
      res.writeHead(404); res.end("not found");
    }
  });
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server)));
}

/** Lesson 1's slug and the number of its first train widget (widgets count from 1 in lesson
 * order), read from the lesson files as the page numbers them. */
export function firstTrainWidget() {
  const dir = join(root, "lessons");
  const file = readdirSync(dir).filter((f) => /^\d+-.*\.md$/.test(f)).sort()[0];
  if (!file) throw new Error(`no lessons in ${dir}`);
  const blocks = [...readFileSync(join(dir, file), "utf8").matchAll(/^```widget\s*\n([\s\S]*?)\n```\s*$/gm)].map((m) => m[1]);
  const at = blocks.findIndex((b) => /^name:\s*train\s*$/m.test(b));
  if (at < 0) throw new Error(`${file} has no train widget to time`);
  return { slug: file.replace(/^\d+-/, "").replace(/\.md$/, ""), n: at + 1 };
}
