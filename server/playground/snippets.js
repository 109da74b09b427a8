// "Copy as" code for the exact request the form would send, using the README's base-URL recipes
// (cURL against the HTTP API, Python recipe P2, JS recipe J1).

import { appOf } from "./schema.js";

/** A JSON value as a Python literal (True/False/None). */
function py(value, indent = "") {
  const next = `${indent}    `;
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => `${next}${py(v, next)},`).join("\n")}\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${next}${JSON.stringify(k)}: ${py(v, next)},`).join("\n")}\n${indent}}`;
}

const shellQuote = (text) => `'${text.replaceAll("'", "'\\''")}'`;

export function curl(base, endpointId, input, withKey) {
  const auth = withKey ? ' \\\n  -H "Authorization: Key $FAL_KEY"' : "";
  const authShort = withKey ? ' -H "Authorization: Key $FAL_KEY"' : "";
  const app = appOf(endpointId);
  return [
    `BASE=${base}`,
    `curl -s -X POST "$BASE/queue/${endpointId}"${auth} \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -d ${shellQuote(JSON.stringify(input))}`,
    `# -> {"request_id": "...", "status_url": "...", "response_url": "...", ...}`,
    `REQUEST_ID=...  # from the answer above`,
    `curl -s "$BASE/queue/${app}/requests/$REQUEST_ID/status?logs=1"${authShort}`,
    `curl -s "$BASE/queue/${app}/requests/$REQUEST_ID"${authShort}`,
  ].join("\n");
}

export function python(base, endpointId, input) {
  return [
    "import fal_client",
    "import fal_client.client as fc",
    "",
    "# FAL_KEY must be set (any value when the server has no API keys)",
    `base = ${JSON.stringify(base)}`,
    'fc.RUN_URL_FORMAT = f"{base}/run/"',
    'fc.QUEUE_URL_FORMAT = f"{base}/queue/"',
    'fc.REST_URL = f"{base}/rest"',
    'fc.CDN_URL = f"{base}/cdn"',
    "",
    "result = fal_client.subscribe(",
    `    ${JSON.stringify(endpointId)},`,
    `    arguments=${py(input, "    ")},`,
    "    with_logs=True,",
    "    on_queue_update=print,",
    ")",
    "print(result)",
  ].join("\n");
}

export function javascript(base, endpointId, input) {
  const body = JSON.stringify(input, null, 2).replaceAll("\n", "\n  ");
  return [
    'import { fal } from "@fal-ai/client";',
    "",
    `const base = ${JSON.stringify(base)};`,
    'const hosts = { "queue.fal.run": `${base}/queue`, "fal.run": `${base}/run`, "rest.fal.ai": `${base}/rest` };',
    "fal.config({",
    '  credentials: process.env.FAL_KEY ?? "local-dummy",',
    "  requestMiddleware: async (req) => {",
    "    const u = new URL(req.url);",
    "    return hosts[u.host] ? { ...req, url: hosts[u.host] + u.pathname + u.search } : req;",
    "  },",
    "});",
    "",
    `const result = await fal.subscribe(${JSON.stringify(endpointId)}, {`,
    `  input: ${body},`,
    "  logs: true,",
    "  onQueueUpdate: (update) => console.log(update.status),",
    "});",
    "console.log(result.data, result.requestId);",
  ].join("\n");
}

export const SNIPPETS = { cURL: curl, Python: python, JavaScript: javascript };
