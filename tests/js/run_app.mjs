// Runs one request through the official @fal-ai/client (README recipe J1) and prints the result as JSON.
// Usage: node run_app.mjs <base-url> <app> <input.json>
import { readFileSync } from "node:fs";
import { fal } from "@fal-ai/client";

const [base, app, input] = process.argv.slice(2);
const hosts = { "queue.fal.run": `${base}/queue`, "fal.run": `${base}/run`, "rest.fal.ai": `${base}/rest` };
fal.config({
  credentials: "local-dummy",
  requestMiddleware: async (req) => {
    const u = new URL(req.url);
    return hosts[u.host] ? { ...req, url: hosts[u.host] + u.pathname + u.search } : req;
  },
});
const result = await fal.subscribe(app, { input: JSON.parse(readFileSync(input, "utf8")), pollInterval: 100 });
console.log(JSON.stringify({ data: result.data, requestId: result.requestId }));
