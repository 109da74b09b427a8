// The server's public HTTP API as the official clients use it (fal-protocol.md §3, §5).

const KEY_STORAGE = "fal-onprem.api-key";

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Key ${key}` } : {};
}

/** An HTTP error with the fal-style body and the request id (x-fal-request-id). */
export class ApiError extends Error {
  constructor(status, body, requestId) {
    const detail = body && body.detail;
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.requestId = requestId;
  }
}

async function call(url, { method = "GET", body, headers = {}, auth = true } = {}) {
  const init = { method, headers: { ...(auth ? authHeaders() : {}), ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: keep the text for the error message
  }
  if (!response.ok) throw new ApiError(response.status, data, response.headers.get("x-fal-request-id"));
  return data;
}

export const getOpenApi = () => call("/openapi.json", { auth: false });

/**
 * /readyz answers 503 with the same body when nothing is ready yet: both are useful here. With API keys
 * configured, the per-pipeline details need the key (without one the body is only {ready}).
 */
export async function getReadiness() {
  try {
    return await call("/readyz");
  } catch (err) {
    if (err instanceof ApiError && err.body && err.body.pipelines) return err.body;
    throw err;
  }
}

export const submit = (endpointId, input) => call(`/queue/${endpointId}`, { method: "POST", body: input });
export const cancel = (cancelUrl) => call(cancelUrl, { method: "PUT" });
export const result = (responseUrl) => call(responseUrl);

/**
 * Follow the SSE status stream until COMPLETED, calling onEvent for each status body. fetch, not
 * EventSource: EventSource cannot send the Authorization header.
 */
export async function streamStatus(statusUrl, onEvent, signal) {
  const response = await fetch(`${statusUrl}/stream?logs=1`, {
    headers: { ...authHeaders(), Accept: "text/event-stream" },
    signal,
  });
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // keep null
    }
    throw new ApiError(response.status, body, response.headers.get("x-fal-request-id"));
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue; // ": ping" keep-alives
      last = JSON.parse(data);
      onEvent(last);
    }
  }
  return last;
}

/** Upload a file with the JS client's flow: initiate (authorized), then PUT to the signed URL. */
export async function upload(file) {
  const { upload_url: uploadUrl, file_url: fileUrl } = await call("/rest/storage/upload/initiate", {
    method: "POST",
    body: { content_type: file.type || "application/octet-stream", file_name: file.name || "upload.bin" },
  });
  const put = await fetch(uploadUrl, {
    method: "PUT",
    body: file,
    headers: { "Content-Type": file.type || "application/octet-stream" },
  });
  if (!put.ok) {
    let body = null;
    try {
      body = await put.json();
    } catch {
      // keep null
    }
    throw new ApiError(put.status, body, null);
  }
  return fileUrl;
}
