// Uploads with the official @fal-ai/client against a live fal-onprem server; prints one JSON report.
// Usage: node uploads.mjs <base-url> <middleware|proxy> <app> <big-upload-bytes (0: skip)>
// Configured exactly as scenarios.mjs (recipe J1 or J2). Hashes are SHA-256 hex of what was uploaded,
// so the test can compare them with the bytes served from the returned URL.
import { createHash, randomBytes } from "node:crypto";
import { fal } from "@fal-ai/client";

const [base, mode, app, bigArg] = process.argv.slice(2);
const bigBytes = Number(bigArg || 0);
const hosts = { "queue.fal.run": `${base}/queue`, "fal.run": `${base}/run`, "rest.fal.ai": `${base}/rest` };

if (mode === "middleware") {
  fal.config({
    credentials: process.env.FAL_KEY,
    requestMiddleware: async (req) => {
      const u = new URL(req.url);
      return hosts[u.host] ? { ...req, url: hosts[u.host] + u.pathname + u.search } : req;
    },
  });
} else {
  fal.config({ credentials: process.env.FAL_KEY, proxyUrl: { url: `${base}/api/fal/proxy`, when: "always" } });
}

const sha256 = (buf) => createHash("sha256").update(buf).digest("hex");
const report = {};
// The timer is unref'd so that it does not keep node alive once the report is printed.
const withTimeout = (p, ms, what) =>
  Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), ms).unref())]);

async function scenario(name, fn, ms = 60000) {
  try {
    report[name] = { ok: true, ...(await withTimeout(fn(), ms, name)) };
  } catch (e) {
    report[name] = { ok: false, error: String(e?.stack ?? e), status: e?.status, body: e?.body };
  }
}

await scenario("small_blob", async () => {
  const bytes = randomBytes(200 * 1024);
  const url = await fal.storage.upload(new Blob([bytes], { type: "application/octet-stream" }));
  return { url, sha256: sha256(bytes), size: bytes.length };
});

await scenario("named_file", async () => {
  const text = `hello from node ${mode}\n`;
  const url = await fal.storage.upload(new File([text], "notes.txt", { type: "text/plain" }));
  return { url, sha256: sha256(Buffer.from(text)) };
});

// A Blob inside the input is uploaded by the client itself (transformInput) before the job is submitted.
await scenario("blob_as_job_input", async () => {
  const png = Buffer.from(process.env.TEST_IMAGE_URI.split(",")[1], "base64");
  const result = await fal.subscribe(app, {
    input: { image_url: new Blob([png], { type: "image/png" }), seed: 21 },
    pollInterval: 100,
  });
  return { data: result.data };
});

if (bigBytes > 0) {
  await scenario(
    "big_blob",
    async () => {
      const bytes = randomBytes(bigBytes);
      const digest = sha256(bytes);
      const t0 = Date.now();
      const url = await fal.storage.upload(new Blob([bytes], { type: "application/octet-stream" }));
      return { url, sha256: digest, size: bytes.length, elapsedMs: Date.now() - t0 };
    },
    240000,
  );
}

console.log(JSON.stringify(report));
