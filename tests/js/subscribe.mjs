// One fal.subscribe through the official @fal-ai/client against a live fal-onprem server; prints a JSON report.
// Usage: TEST_INPUT='{"...": ...}' node subscribe.mjs <base-url> <app>   (README recipe J1, requestMiddleware)
import { fal } from "@fal-ai/client";

const [base, app] = process.argv.slice(2);
const hosts = { "queue.fal.run": `${base}/queue`, "fal.run": `${base}/run`, "rest.fal.ai": `${base}/rest` };
fal.config({
  credentials: "local-dummy",
  requestMiddleware: async (req) => {
    const u = new URL(req.url);
    return hosts[u.host] ? { ...req, url: hosts[u.host] + u.pathname + u.search } : req;
  },
});

const report = {};
try {
  const result = await fal.subscribe(app, { input: JSON.parse(process.env.TEST_INPUT), logs: true, pollInterval: 100 });
  report.subscribe = { ok: true, data: result.data, requestId: result.requestId };
} catch (e) {
  report.subscribe = { ok: false, error: String(e?.stack ?? e), body: e?.body };
}
console.log(JSON.stringify(report));
