// Drives the official @fal-ai/client against a live fal-onprem server and prints one JSON report.
// Usage: node scenarios.mjs <base-url> <middleware|proxy> <app>
// The configuration is the README's recipe J1 (requestMiddleware) or J2 (proxyUrl, when: "always").
import { fal, ApiError, ValidationError } from "@fal-ai/client";

const [base, mode, app] = process.argv.slice(2);
const hosts = { "queue.fal.run": `${base}/queue`, "fal.run": `${base}/run`, "rest.fal.ai": `${base}/rest` };

if (mode === "middleware") {
  fal.config({
    credentials: "local-dummy",
    requestMiddleware: async (req) => {
      const u = new URL(req.url);
      return hosts[u.host] ? { ...req, url: hosts[u.host] + u.pathname + u.search } : req;
    },
  });
} else {
  fal.config({ credentials: "local-dummy", proxyUrl: { url: `${base}/api/fal/proxy`, when: "always" } });
}

// 48x40 PNG, one colour (made by the test and passed in the environment).
const image_url = process.env.TEST_IMAGE_URI;
const report = {};
// The timer is unref'd so a finished scenario does not keep node alive for the full timeout.
const withTimeout = (p, ms, what) =>
  Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), ms).unref())]);

async function scenario(name, fn) {
  try {
    report[name] = { ok: true, ...(await withTimeout(fn(), 60000, name)) };
  } catch (e) {
    report[name] = { ok: false, error: String(e?.stack ?? e) };
  }
}

function errorInfo(e) {
  return {
    kind: e instanceof ValidationError ? "ValidationError" : e instanceof ApiError ? "ApiError" : e?.constructor?.name,
    status: e?.status,
    body: e?.body,
    requestId: e?.requestId,
    fieldErrors: e instanceof ValidationError ? e.fieldErrors : undefined,
  };
}

const waitFor = async (requestId, wanted) => {
  for (let i = 0; i < 600; i++) {
    const s = await fal.queue.status(app, { requestId, logs: false });
    if (s.status === wanted) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`never reached ${wanted}`);
};

await scenario("subscribe_polling", async () => {
  const updates = [];
  const result = await fal.subscribe(app, {
    input: { image_url, seed: 5, steps: 3, step_ms: 150 },
    logs: true,
    pollInterval: 100,
    onQueueUpdate: (u) => updates.push(u),
  });
  const logs = updates.filter((u) => u.status === "IN_PROGRESS").flatMap((u) => u.logs ?? []);
  return { data: result.data, requestId: result.requestId, statuses: updates.map((u) => u.status), logs };
});

await scenario("subscribe_streaming", async () => {
  const updates = [];
  const result = await fal.subscribe(app, {
    input: { image_url, seed: 6, steps: 3, step_ms: 150 },
    logs: true,
    mode: "streaming",
    onQueueUpdate: (u) => updates.push(u),
  });
  const last = updates[updates.length - 1];
  return { data: result.data, statuses: updates.map((u) => u.status), logs: last?.logs ?? [] };
});

await scenario("submit_status_result", async () => {
  const { request_id } = await fal.queue.submit(app, { input: { image_url, seed: 8 } });
  const first = await fal.queue.status(app, { requestId: request_id, logs: true });
  await waitFor(request_id, "COMPLETED");
  const result = await fal.queue.result(app, { requestId: request_id });
  return { request_id, firstStatus: first.status, data: result.data, requestId: result.requestId };
});

await scenario("run", async () => {
  const result = await fal.run(app, { input: { image_url, seed: 9 } });
  return { data: result.data, requestId: result.requestId };
});

await scenario("cancel_running", async () => {
  const { request_id } = await fal.queue.submit(app, { input: { image_url, steps: 100, step_ms: 100 } });
  await waitFor(request_id, "IN_PROGRESS");
  const t0 = Date.now();
  await fal.queue.cancel(app, { requestId: request_id });
  await waitFor(request_id, "COMPLETED");
  const elapsedMs = Date.now() - t0;
  try {
    await fal.queue.result(app, { requestId: request_id });
    return { resultError: null, elapsedMs };
  } catch (e) {
    return { resultError: errorInfo(e), elapsedMs };
  }
});

await scenario("cancel_queued", async () => {
  const blocker = await fal.queue.submit(app, { input: { image_url, steps: 30, step_ms: 100 } });
  await waitFor(blocker.request_id, "IN_PROGRESS");
  const { request_id } = await fal.queue.submit(app, { input: { image_url, steps: 2 } });
  const before = await fal.queue.status(app, { requestId: request_id, logs: false });
  await fal.queue.cancel(app, { requestId: request_id });
  const after = await fal.queue.status(app, { requestId: request_id, logs: false });
  let second = null;
  try {
    await fal.queue.cancel(app, { requestId: request_id });
  } catch (e) {
    second = errorInfo(e);
  }
  await fal.queue.cancel(app, { requestId: blocker.request_id });
  return { before: before.status, queuePosition: before.queue_position, after: after.status, second };
});

await scenario("invalid_input", async () => {
  try {
    await fal.queue.submit(app, { input: { seed: 1 } });
    return { error: null };
  } catch (e) {
    return { error: errorInfo(e) };
  }
});

await scenario("failed_job", async () => {
  try {
    await fal.subscribe(app, { input: { image_url, fail: "item" }, pollInterval: 100 });
    return { error: null };
  } catch (e) {
    return { error: errorInfo(e) };
  }
});

console.log(JSON.stringify(report));
