// Runs inputs through the official @fal-ai/client (fal.subscribe, recipe J1) concurrently; prints one JSON
// report. Usage: node subscribe.mjs <base-url> <app> <inputs.json (a list of inputs)>
import { readFileSync } from "node:fs";
import { fal } from "@fal-ai/client";

const [base, app, inputsPath] = process.argv.slice(2);
const hosts = { "queue.fal.run": `${base}/queue`, "fal.run": `${base}/run`, "rest.fal.ai": `${base}/rest` };
fal.config({
  credentials: "local-dummy",
  requestMiddleware: async (req) => {
    const u = new URL(req.url);
    return hosts[u.host] ? { ...req, url: hosts[u.host] + u.pathname + u.search } : req;
  },
});

const inputs = JSON.parse(readFileSync(inputsPath, "utf8"));
const timeout = (ms) => new Promise((_, rej) => setTimeout(() => rej(new Error("timeout")), ms).unref());
const results = await Promise.all(
  inputs.map(async (input) => {
    try {
      const r = await Promise.race([fal.subscribe(app, { input, pollInterval: 100 }), timeout(240000)]);
      return { ok: true, data: r.data, requestId: r.requestId };
    } catch (e) {
      return { ok: false, error: String(e?.stack ?? e), body: e?.body };
    }
  }),
);
console.log(JSON.stringify({ results }));
