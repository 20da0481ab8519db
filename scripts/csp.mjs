// trunk post-build hook: adds a Content-Security-Policy to the built index.html. The one
// inline script trunk writes (the module that starts the page's wasm) is allowed by its
// SHA-256, computed here from the built file, so the policy stays exact as trunk changes;
// nothing else inline may run. 'wasm-unsafe-eval' lets the page compile its WebAssembly;
// workers, fetches and styles come from the site itself (style attributes, which the charts
// set, are allowed; they cannot run code).
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

if (process.env.TINYTUNE_NO_CSP) {
  console.log("csp.mjs: TINYTUNE_NO_CSP is set (scripts/serve.sh): no Content-Security-Policy for the development server");
  process.exit(0);
}
const dir = process.env.TRUNK_STAGING_DIR;
if (!dir) throw new Error("scripts/csp.mjs runs as trunk's post_build hook (TRUNK_STAGING_DIR is not set)");
const file = join(dir, "index.html");
let html = readFileSync(file, "utf8");
const inline = [...html.matchAll(/<script(?![^>]*\bsrc=)[^>]*>([\s\S]*?)<\/script>/g)].map((m) => m[1]);
const hashes = inline.map((body) => `'sha256-${createHash("sha256").update(body, "utf8").digest("base64")}'`);
const policy = [
  "default-src 'self'",
  `script-src 'self' 'wasm-unsafe-eval' ${hashes.join(" ")}`.trim(),
  "worker-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "style-src 'self' 'unsafe-inline'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
].join("; ");
const meta = `<meta http-equiv="Content-Security-Policy" content="${policy}" />`;
html = html.replace(/<meta http-equiv="Content-Security-Policy"[^>]*>\s*/g, "");
html = html.replace(/<head>/, `<head>\n    ${meta}`);
writeFileSync(file, html);
console.log(`csp.mjs: ${inline.length} inline script(s) allowed by hash`);
