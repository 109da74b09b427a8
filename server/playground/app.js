// The playground: pick an endpoint, fill its generated form, run it through the queue, see the result.

import * as api from "./api.js";
import { buildForm, h } from "./form.js";
import { endpointsFrom } from "./schema.js";
import { SNIPPETS } from "./snippets.js";

const READY_POLL_MS = 5000;
const RECONNECT_MS = 1000;
const RECONNECT_TRIES = 60;
const $ = (id) => document.getElementById(id);

const state = {
  endpoints: [],
  readiness: {},
  current: null, // the endpoint shown
  form: null,
  job: null, // {requestId, cancelUrl, cancelled}
  lastInput: null,
  snippet: "cURL",
};

function endpointFromPath() {
  const match = location.pathname.match(/^\/playground\/(.+)$/);
  return match ? decodeURIComponent(match[1]).replace(/\/$/, "") : null;
}

function readinessOf(id) {
  return state.readiness[id] || { state: "unknown", reason: "" };
}

function renderList() {
  const list = $("endpoint-list");
  list.replaceChildren(
    ...state.endpoints.map((ep) => {
      const r = readinessOf(ep.id);
      return h(
        "li",
        {},
        h(
          "a",
          {
            href: `/playground/${ep.id}`,
            "aria-current": state.current && state.current.id === ep.id ? "page" : null,
            onclick: (ev) => {
              ev.preventDefault();
              history.pushState({}, "", `/playground/${ep.id}`);
              show(ep.id);
            },
          },
          h("span", { class: "ep-id" }, ep.id.split("/").flatMap((part, i) => (i ? [h("wbr"), `/${part}`] : [part]))),
          h("span", { class: `badge ${r.state}`, title: r.reason || r.state }, r.state),
        ),
      );
    }),
  );
}

function renderReadiness() {
  renderList();
  if (!state.current) return;
  const r = readinessOf(state.current.id);
  const badge = $("endpoint-state");
  badge.className = `badge ${r.state}`;
  badge.textContent = r.state;
  const reason = $("endpoint-reason");
  const why = {
    unavailable: "Not served by this build",
    failed: "The pipeline failed to load",
    loading: "Loading: requests queue until a worker is ready",
  }[r.state];
  reason.hidden = !why;
  reason.textContent = why ? (r.reason ? `${why}: ${r.reason}` : why) : "";
  if (!state.job) $("run").disabled = r.state === "unavailable" || r.state === "failed";
}

async function refreshReadiness() {
  try {
    const body = await api.getReadiness();
    state.readiness = body.pipelines || {};
  } catch {
    // the server is restarting: keep the last known states
  }
  renderReadiness();
}

function show(id) {
  const ep = state.endpoints.find((e) => e.id === id) || state.endpoints[0];
  if (!ep) return;
  if (state.job) {
    // Leaving a running request: it goes on in the queue; this page stops following it.
    state.job.abort.abort();
    state.job = null;
    $("cancel").disabled = true;
    $("run").removeAttribute("aria-busy");
  }
  $("boot-error").hidden = !id || ep.id === id;
  $("boot-error").textContent = `There is no endpoint ${id} on this server; showing ${ep.id}.`;
  state.current = ep;
  document.title = `${ep.id} · fal-onprem playground`;
  $("endpoint").hidden = false;
  $("endpoint-title").textContent = ep.id;
  $("endpoint-desc").textContent = ep.title;
  state.form = buildForm($("fields"), ep.schema);
  clearRun();
  renderReadiness();
  updateSnippet();
}

// -- run -----------------------------------------------------------------------------------------

function clearRun() {
  $("timeline").replaceChildren();
  $("logs").textContent = "";
  $("logs-wrap").hidden = true;
  $("progress-wrap").hidden = true;
  $("result").hidden = true;
  $("form-error").hidden = true;
  $("run-status").replaceChildren(h("p", { class: "muted", id: "idle-note" }, "Fill in the form and press Run."));
}

function setStatus(text, kind = "") {
  $("run-status").replaceChildren(h("p", { class: `status-line ${kind}`, id: "status-line" }, text));
}

function showError(err, requestId) {
  const box = $("form-error");
  const id = requestId || err.requestId;
  let text = err.message || String(err);
  if (err.body && err.body.error_type) text += ` (${err.body.error_type})`;
  box.textContent = id ? `${text} · request id ${id}` : text;
  box.hidden = false;
}

/** A 422's detail at the fields; returns true when it was a validation list. */
function showValidation(err) {
  if (!(err instanceof api.ApiError) || err.status !== 422 || !Array.isArray(err.body && err.body.detail)) return false;
  const unmatched = state.form.showErrors(err.body.detail);
  if (unmatched.length) {
    showError({ message: unmatched.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ") }, err.requestId);
  }
  return true;
}

function addTimeline(status, extra = "") {
  const t0 = state.job ? state.job.startedAt : performance.now();
  const li = h(
    "li",
    { "data-status": status },
    h("strong", {}, status),
    h("span", { class: "extra" }, extra),
    h("span", { class: "muted" }, ` +${((performance.now() - t0) / 1000).toFixed(2)} s`),
  );
  $("timeline").append(li);
  return li;
}

function onStatus(job, event) {
  if (state.job !== job) return;
  const items = $("timeline").children;
  const lastItem = items[items.length - 1];
  const extra = event.status === "IN_QUEUE" ? ` position ${event.queue_position}` : "";
  if (!lastItem || lastItem.dataset.status !== event.status) addTimeline(event.status, extra);
  else lastItem.querySelector(".extra").textContent = extra;
  const what =
    event.status === "IN_QUEUE"
      ? `In queue (position ${event.queue_position})`
      : event.status === "IN_PROGRESS"
        ? "Running…"
        : event.error
          ? `Finished with an error: ${event.error}`
          : "Completed";
  setStatus(`${what} · request id ${event.request_id}`, event.status.toLowerCase());
  for (const entry of event.logs || []) {
    $("logs-wrap").hidden = false;
    const time = (entry.timestamp || "").slice(11, 23);
    $("logs").textContent += `${time} ${entry.level} ${entry.message}\n`;
    const step = /Step (\d+)\/(\d+)/.exec(entry.message);
    if (step) {
      $("progress-wrap").hidden = false;
      $("progress").max = Number(step[2]);
      $("progress").value = Number(step[1]);
      $("progress-text").textContent = `${step[1]} / ${step[2]}`;
    }
  }
  job.metrics = event.metrics || job.metrics;
}

/** The status stream until COMPLETED; a dropped connection (server restart, proxy timeout) is
 * re-opened, since jobs survive restarts. */
async function followStatus(job, statusUrl) {
  let last = null;
  for (let attempt = 0; !last || last.status !== "COMPLETED"; attempt++) {
    if (attempt) await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    try {
      last = (await api.streamStatus(statusUrl, (event) => onStatus(job, event), job.abort.signal)) || last;
    } catch (err) {
      const clientError = err instanceof api.ApiError && err.status < 500;
      if (clientError || job.abort.signal.aborted || attempt >= RECONNECT_TRIES) throw err;
    }
  }
  return last;
}

async function run(ev) {
  ev.preventDefault();
  if (state.job) return;
  const form = state.form;
  const endpoint = state.current;
  form.clearErrors();
  clearRun();
  setStatus("Preparing…");
  try {
    await form.settled();
  } catch (err) {
    setStatus("Upload failed", "error");
    showError(err);
    return;
  }
  const input = form.values();
  state.lastInput = input;
  updateSnippet();
  const job = { startedAt: performance.now(), metrics: {}, inputs: form.images(), abort: new AbortController() };
  state.job = job;
  $("run").disabled = true;
  try {
    setStatus("Submitting…");
    const submitted = await api.submit(endpoint.id, input);
    if (state.job !== job) return; // the user moved to another endpoint meanwhile
    Object.assign(job, { requestId: submitted.request_id, cancelUrl: submitted.cancel_url });
    $("cancel").disabled = false;
    $("run").setAttribute("aria-busy", "true");
    onStatus(job, submitted);
    const last = await followStatus(job, submitted.status_url);
    $("cancel").disabled = true;
    if (last && last.error && last.error_type === "request_cancelled") {
      setStatus(`Cancelled · request id ${submitted.request_id}`, "cancelled");
      return;
    }
    try {
      const output = await api.result(submitted.response_url);
      if (state.job === job) renderResult(job, output, submitted.request_id);
    } catch (err) {
      if (state.job !== job) return;
      setStatus("Failed", "error");
      if (!showValidation(err)) showError(err, submitted.request_id);
    }
  } catch (err) {
    if (state.job !== job) return;
    setStatus(err.status === 422 ? "Invalid input" : "Request failed", "error");
    if (!showValidation(err)) showError(err);
  } finally {
    if (state.job === job) {
      state.job = null;
      $("cancel").disabled = true;
      $("run").removeAttribute("aria-busy");
      renderReadiness();
    }
  }
}

async function cancelJob() {
  const job = state.job;
  if (!job || !job.cancelUrl) return;
  $("cancel").disabled = true;
  try {
    const answer = await api.cancel(job.cancelUrl);
    addTimeline("CANCEL", ` ${answer.status}`);
  } catch (err) {
    addTimeline("CANCEL", ` ${(err.body && err.body.status) || err.message}`);
  }
}

// -- result --------------------------------------------------------------------------------------

/** Every image object ({url, content_type: image/*}) in an output, with its JSON path. */
function outputImages(value, path = "", out = []) {
  if (Array.isArray(value)) value.forEach((v, i) => outputImages(v, `${path}[${i}]`, out));
  else if (value && typeof value === "object") {
    if (typeof value.url === "string" && /^image\//.test(value.content_type || "image/")) out.push({ path, ...value });
    else for (const [k, v] of Object.entries(value)) outputImages(v, path ? `${path}.${k}` : k, out);
  }
  return out;
}

const shorten = (_key, v) => (typeof v === "string" && v.startsWith("data:") && v.length > 120 ? `${v.slice(0, 80)}…` : v);

function figure(label, url, caption, download) {
  return h(
    "figure",
    {},
    h("a", { href: url, target: "_blank", rel: "noopener", title: "Open full size" }, h("img", { src: url, alt: label })),
    h(
      "figcaption",
      {},
      h("span", {}, label),
      caption ? h("span", { class: "muted" }, ` ${caption}`) : null,
      download ? h("a", { href: url, download: download, class: "download" }, "Download") : null,
    ),
  );
}

function renderResult(job, output, requestId) {
  const metrics = job.metrics || {};
  const meta = [
    ["request id", requestId],
    ["inference_time", metrics.inference_time !== undefined ? `${metrics.inference_time.toFixed(3)} s` : "—"],
    ["queue_time", metrics.queue_time !== undefined ? `${metrics.queue_time.toFixed(3)} s` : "—"],
  ];
  if (output && output.seed !== undefined) meta.push(["seed", String(output.seed)]);
  $("result-meta").replaceChildren(...meta.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  const images = outputImages(output);
  const inputs = job.inputs.map((img) => figure(`input: ${img.label}`, img.url, ""));
  const outputs = images.map((img) =>
    figure(`output: ${img.path}`, img.url, img.width ? `${img.width}×${img.height}` : "", img.file_name || "output"),
  );
  $("compare").replaceChildren(...inputs, ...outputs);
  $("result-json").textContent = JSON.stringify(output, shorten, 2);
  $("result").hidden = false;
  setStatus(`Completed · request id ${requestId}`, "completed");
}

// -- snippets ------------------------------------------------------------------------------------

function updateSnippet() {
  if (!state.current) return;
  const input = state.lastInput && state.form ? state.lastInput : state.form.values();
  const tabs = $("snippet-tabs");
  tabs.replaceChildren(
    ...Object.keys(SNIPPETS).map((name) =>
      h(
        "button",
        {
          type: "button",
          "aria-pressed": String(name === state.snippet),
          "data-snippet": name,
          onclick: () => {
            state.snippet = name;
            updateSnippet();
          },
        },
        name,
      ),
    ),
  );
  $("snippet").textContent = SNIPPETS[state.snippet](location.origin, state.current.id, input, Boolean(api.apiKey()));
  $("snippets").hidden = false;
}

async function copySnippet() {
  const text = $("snippet").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-snippet").textContent = "Copied";
  } catch {
    // no clipboard permission (plain http on another host): select the text for Ctrl+C instead
    getSelection().selectAllChildren($("snippet"));
    $("copy-snippet").textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => {
    $("copy-snippet").textContent = "Copy";
  }, 2000);
}

// -- start ---------------------------------------------------------------------------------------

async function main() {
  const key = $("api-key");
  key.value = api.apiKey();
  key.addEventListener("change", () => {
    api.setApiKey(key.value.trim());
    updateSnippet();
  });
  $("input-form").addEventListener("submit", run);
  $("input-form").addEventListener("input", () => {
    state.lastInput = null;
    updateSnippet();
  });
  $("input-form").addEventListener("change", () => {
    state.lastInput = null;
    updateSnippet();
  });
  $("cancel").addEventListener("click", cancelJob);
  $("reset").addEventListener("click", () => {
    state.form.reset();
    state.lastInput = null;
    updateSnippet();
  });
  $("copy-snippet").addEventListener("click", copySnippet);
  window.addEventListener("popstate", () => show(endpointFromPath()));
  try {
    const [openapi] = await Promise.all([api.getOpenApi(), refreshReadiness()]);
    state.endpoints = endpointsFrom(openapi);
  } catch (err) {
    $("boot-error").textContent = `Could not load the API description: ${err.message}`;
    $("boot-error").hidden = false;
    return;
  }
  const wanted = endpointFromPath();
  const firstReady = state.endpoints.find((ep) => readinessOf(ep.id).state === "ready");
  show(wanted || (firstReady || state.endpoints[0] || {}).id);
  setInterval(refreshReadiness, READY_POLL_MS);
  document.body.dataset.ready = "true"; // for tests: the form is built
}

main();
