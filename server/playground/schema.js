// Reading endpoint input schemas out of the server's /openapi.json (the models the API validates with).

const QUEUE_PREFIX = "/queue/";

/** Resolve local "#/components/..." references, recursively (the schemas here have no cycles). */
export function resolve(openapi, schema) {
  if (Array.isArray(schema)) return schema.map((s) => resolve(openapi, s));
  if (!schema || typeof schema !== "object") return schema;
  if (schema.$ref) {
    const target = schema.$ref
      .replace(/^#\//, "")
      .split("/")
      .reduce((node, key) => node[key], openapi);
    const { $ref, ...rest } = schema; // siblings of $ref (description) win over the target's
    return resolve(openapi, { ...target, ...rest });
  }
  return Object.fromEntries(Object.entries(schema).map(([k, v]) => [k, resolve(openapi, v)]));
}

/** Every submit route of the queue API: [{id, title, schema}], sorted by id. */
export function endpointsFrom(openapi) {
  const out = [];
  for (const [path, item] of Object.entries(openapi.paths || {})) {
    const post = item.post;
    const body = post && post.requestBody && post.requestBody.content["application/json"];
    if (!path.startsWith(QUEUE_PREFIX) || !body) continue;
    out.push({ id: path.slice(QUEUE_PREFIX.length), title: post.description || "", schema: resolve(openapi, body.schema) });
  }
  return out.sort((a, b) => a.id.localeCompare(b.id));
}

/** "owner/alias" of an endpoint id: what the request URLs (status, result, cancel) are built on. */
export const appOf = (endpointId) => endpointId.split("/").slice(0, 2).join("/");

/** The control a property gets. */
export function fieldKind(name, schema) {
  if (schema.anyOf) {
    const options = schema.anyOf.filter((s) => s.type !== "null");
    if (options.some((s) => s.type === "object") && options.some((s) => s.enum)) return "preset-or-object";
    if (options.length === 1) return fieldKind(name, { ...options[0], ...withoutAnyOf(schema) });
    return "json";
  }
  if (schema.enum) return "enum";
  if (schema.type === "boolean") return "boolean";
  if (schema.type === "integer" || schema.type === "number") return "number";
  if (schema.type === "string") {
    if (/image_url$/.test(name)) return "image";
    return /prompt/.test(name) ? "textarea" : "text";
  }
  if (schema.type === "array" && schema.items && schema.items.type === "object") return "list";
  return "json";
}

function withoutAnyOf(schema) {
  const { anyOf, ...rest } = schema;
  return rest;
}

/** The single non-null option of a nullable property (``seed: int | None``), else the schema itself. */
export function nonNull(schema) {
  if (!schema.anyOf) return schema;
  const options = schema.anyOf.filter((s) => s.type !== "null");
  return options.length === 1 ? { ...options[0], ...withoutAnyOf(schema) } : schema;
}
