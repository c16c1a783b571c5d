// The Vercel AI SDK's ByteDance provider (`@ai-sdk/bytedance` with `ai`) against `seedq sim`.
//
// Usage: node vercel_check.mjs NODE_DIR BASE_URL API_KEY MODEL OUT_FILE
//   NODE_DIR: the folder whose node_modules holds the pinned packages (tests/sdk/node/package.json,
//   installed by tests/run.sh into target/test-tools/node); BASE_URL like http://127.0.0.1:8787/api/v3.
//
// As a user of the AI SDK would: `experimental_generateVideo` with `byteDance.video(MODEL)`, which
// creates the task, polls it and downloads `content.video_url`. The download goes through `ai`'s
// default `createDownload()`, which refuses loopback and private addresses (an SSRF guard in
// @ai-sdk/provider-utils' validateDownloadUrl), so the sim's 127.0.0.1 URL needs the documented
// `download` option: here a plain fetch. Writes the video to OUT_FILE and prints one JSON line:
// {"id" (Ark's task id), "usage", "bytes", "warnings", "downloaded" (the URLs the download saw)}.

import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";
import { resolve } from "node:path";

const [nodeDir, baseURL, apiKey, model, outFile] = process.argv.slice(2);
if (!outFile) {
  console.error("usage: node vercel_check.mjs NODE_DIR BASE_URL API_KEY MODEL OUT_FILE");
  process.exit(2);
}

// The packages live in NODE_DIR, not beside this script: resolve them from there.
const require = createRequire(resolve(nodeDir, "package.json"));
let ai, bytedance;
try {
  ai = require("ai");
  bytedance = require("@ai-sdk/bytedance");
} catch (e) {
  console.error(`ai / @ai-sdk/bytedance are not installed under ${nodeDir} (${e.message}); ` +
    "run tests/run.sh, or: cp tests/sdk/node/package*.json target/test-tools/node/ && " +
    "npm ci --prefix target/test-tools/node");
  process.exit(2);
}

const provider = bytedance.createByteDance({ baseURL, apiKey });
const downloaded = [];
const result = await ai.experimental_generateVideo({
  model: provider.video(model),
  prompt: "a hot air balloon over green hills at dawn",
  duration: 5,
  maxRetries: 0,
  // The provider polls every 3 s by default; the sim finishes in milliseconds.
  providerOptions: { bytedance: { pollIntervalMs: 50, pollTimeoutMs: 30000 } },
  download: async ({ url, abortSignal }) => {
    downloaded.push(url.toString());
    const r = await fetch(url, { signal: abortSignal });
    if (!r.ok) throw new Error(`GET ${url}: HTTP ${r.status}`);
    return {
      data: new Uint8Array(await r.arrayBuffer()),
      mediaType: r.headers.get("content-type") ?? undefined,
    };
  },
});

const bytes = result.video.uint8Array;
writeFileSync(outFile, bytes);
const meta = result.providerMetadata?.bytedance ?? {};
console.log(JSON.stringify({
  id: meta.taskId,
  usage: meta.usage,
  bytes: bytes.length,
  warnings: result.warnings,
  downloaded,
}));
