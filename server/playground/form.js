// A form generated from an endpoint's input schema: one control per property, fal's defaults filled in.

import { upload } from "./api.js";
import { fieldKind, nonNull } from "./schema.js";

let uid = 0;
const FOLD_OVER = 4; // optional fields shown without folding

/** document.createElement with attributes and children in one call. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) el.append(child);
  }
  return el;
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// Sample images shipped with the page (scripts/make_playground_samples.py).
const SAMPLE_FILES = { portrait: "portrait.jpg", person: "person.png", garment: "garment.png", face: "face.png" };

/** Sample order for an image field: the likeliest picture first. */
function samplesFor(name) {
  if (/garment/.test(name)) return ["garment", "portrait", "person", "face"];
  return ["portrait", "person", "face", "garment"];
}

function boundsText(schema) {
  const parts = [];
  if (schema.minimum !== undefined) parts.push(`≥ ${schema.minimum}`);
  if (schema.exclusiveMinimum !== undefined) parts.push(`> ${schema.exclusiveMinimum}`);
  if (schema.maximum !== undefined) parts.push(`≤ ${schema.maximum}`);
  if (schema.exclusiveMaximum !== undefined) parts.push(`< ${schema.exclusiveMaximum}`);
  return parts.join(", ");
}

/**
 * One field: a wrapper (data-path, label, help, error slot) around a control.
 * Controls answer get() (undefined = leave the field out) and set(value).
 */
function buildField(name, schema, path, required, ctx) {
  const id = `f${++uid}`;
  const kind = fieldKind(name, schema);
  const helpId = `${id}-help`;
  const errorId = `${id}-error`;
  const plain = nonNull(schema);
  const bounds = kind === "number" ? boundsText(plain) : "";
  const help = [schema.description, bounds && `Range: ${bounds}.`].filter(Boolean).join(" ");
  const describedBy = help ? `${helpId} ${errorId}` : errorId;
  const control = CONTROLS[kind](name, schema, { id, path, describedBy, ctx });
  const label = h(
    "label",
    { for: control.labelFor || id, id: `${id}-label` },
    schema.title || name,
    required ? h("span", { class: "req", title: "required" }, " *") : null,
  );
  const wrapper = h(
    "div",
    { class: `field field-${kind}`, "data-path": path, "data-kind": kind },
    label,
    control.element,
    help ? h("p", { class: "help", id: helpId }, help) : null,
    h("p", { class: "field-error", id: errorId, role: "alert" }),
  );
  const field = {
    name,
    path,
    kind,
    required,
    schema,
    wrapper,
    control,
    value() {
      const value = control.get();
      if (value === undefined) return undefined;
      if (!required && schema.default !== undefined && same(value, schema.default)) return undefined;
      return value;
    },
    reset() {
      control.set(schema.default);
    },
  };
  field.reset();
  return field;
}

function numberControl(name, schema, { id, describedBy }) {
  const plain = nonNull(schema);
  const integer = plain.type === "integer";
  const input = h("input", {
    id,
    type: "number",
    inputmode: integer ? "numeric" : "decimal",
    step: integer ? "1" : "any",
    min: plain.minimum,
    max: plain.maximum,
    placeholder: name === "seed" ? "random" : undefined,
    "aria-describedby": describedBy,
  });
  let range = null;
  if (plain.minimum !== undefined && plain.maximum !== undefined) {
    // A slider for bounded numbers; the number box stays the labelled, exact control.
    range = h("input", {
      type: "range",
      min: plain.minimum,
      max: plain.maximum,
      step: integer ? "1" : String((plain.maximum - plain.minimum) / 200),
      tabindex: "-1",
      "aria-hidden": "true",
      oninput: () => {
        input.value = range.value;
      },
    });
    input.addEventListener("input", () => {
      if (input.value !== "") range.value = input.value;
    });
  }
  return {
    element: h("div", { class: "number-row" }, input, range),
    get: () => (input.value.trim() === "" ? undefined : Number(input.value)),
    set: (value) => {
      input.value = value === undefined || value === null ? "" : String(value);
      if (range && input.value !== "") range.value = input.value;
    },
    focus: () => input.focus(),
  };
}

function enumControl(name, schema, { id, describedBy }) {
  const plain = nonNull(schema);
  const select = h(
    "select",
    { id, "aria-describedby": describedBy },
    plain.default === undefined ? h("option", { value: "" }, "—") : null,
    plain.enum.map((v) => h("option", { value: v }, v)),
  );
  return {
    element: select,
    get: () => (select.value === "" ? undefined : select.value),
    set: (value) => {
      select.value = value ?? "";
    },
    focus: () => select.focus(),
  };
}

function booleanControl(name, schema, { id, describedBy }) {
  const box = h("input", { id, type: "checkbox", role: "switch", "aria-describedby": describedBy });
  return {
    element: h("span", { class: "toggle" }, box, h("span", { class: "track", "aria-hidden": "true" })),
    get: () => box.checked,
    set: (value) => {
      box.checked = Boolean(value);
    },
    focus: () => box.focus(),
  };
}

function textControl(multiline) {
  return (name, schema, { id, describedBy }) => {
    const example = schema.examples && typeof schema.examples[0] === "string" ? schema.examples[0] : "";
    const input = multiline
      ? h("textarea", { id, rows: 3, placeholder: example, "aria-describedby": describedBy })
      : h("input", { id, type: "text", placeholder: example, "aria-describedby": describedBy });
    return {
      element: input,
      get: () => (input.value === "" ? undefined : input.value),
      set: (value) => {
        input.value = value ?? "";
      },
      focus: () => input.focus(),
    };
  };
}

function jsonControl(name, schema, { id, describedBy }) {
  const input = h("textarea", { id, rows: 3, class: "mono", "aria-describedby": describedBy });
  return {
    element: input,
    get: () => {
      if (input.value.trim() === "") return undefined;
      try {
        return JSON.parse(input.value);
      } catch {
        return input.value; // sent as a string: the server's 422 names the field
      }
    },
    set: (value) => {
      input.value = value === undefined ? "" : JSON.stringify(value);
    },
    focus: () => input.focus(),
  };
}

/** ``image_size``: a preset name or a custom {width, height}. */
function presetOrObjectControl(name, schema, { id, path, describedBy }) {
  const object = schema.anyOf.find((s) => s.type === "object");
  const presets = schema.anyOf.find((s) => s.enum).enum;
  const select = h(
    "select",
    { id, "aria-describedby": describedBy },
    presets.map((p) => h("option", { value: p }, p)),
    h("option", { value: "custom" }, "custom…"),
  );
  const dims = Object.entries(object.properties).map(([key, prop]) => {
    const inputId = `${id}-${key}`;
    const input = h("input", {
      id: inputId,
      type: "number",
      step: "1",
      min: prop.exclusiveMinimum !== undefined ? prop.exclusiveMinimum + 1 : prop.minimum,
      max: prop.maximum,
    });
    const wrap = h(
      "span",
      { class: "dim", "data-path": `${path}.${key}` },
      h("label", { for: inputId }, prop.title || key),
      input,
    );
    return { key, prop, input, wrap };
  });
  const custom = h("div", { class: "custom-size" }, dims.map((d) => d.wrap));
  const sync = () => {
    custom.hidden = select.value !== "custom";
  };
  select.addEventListener("change", sync);
  return {
    element: h("div", { class: "preset-row" }, select, custom),
    get: () => {
      if (select.value !== "custom") return select.value;
      const out = {};
      for (const d of dims) if (d.input.value !== "") out[d.key] = Number(d.input.value);
      return out;
    },
    set: (value) => {
      const isObject = value && typeof value === "object";
      select.value = isObject ? "custom" : (value ?? presets[0]);
      for (const d of dims) d.input.value = String(isObject && d.key in value ? value[d.key] : (d.prop.default ?? ""));
      sync();
    },
    focus: () => select.focus(),
  };
}

/** ``*image_url``: drop zone / file picker / samples upload through the storage flow; or paste a URL. */
function imageControl(name, schema, { id, describedBy, ctx }) {
  const url = h("input", {
    id,
    type: "text",
    class: "image-url",
    placeholder: "https://…, data:image/…, or drop a file above",
    "aria-describedby": describedBy,
  });
  const preview = h("img", { class: "preview", alt: `${schema.title || name} preview`, hidden: true });
  const note = h("span", { class: "upload-note", "aria-live": "polite" });
  const file = h("input", { type: "file", accept: "image/*", hidden: true, "aria-hidden": "true", tabindex: "-1" });
  const showPreview = () => {
    const value = url.value.trim();
    if (value === preview.dataset.shown) return; // a broken image stays hidden on the next event
    preview.dataset.shown = value;
    preview.hidden = !value;
    if (value) preview.src = value;
  };
  const take = (blob) => {
    note.textContent = `uploading ${blob.name || "image"}…`;
    const task = upload(blob).then(
      (fileUrl) => {
        url.value = fileUrl;
        note.textContent = `uploaded ${blob.name || "image"}`;
        url.dispatchEvent(new Event("change", { bubbles: true })); // preview + snippets follow
      },
      (err) => {
        note.textContent = `upload failed: ${err.message}`;
        throw err;
      },
    );
    ctx.pending.add(task);
    task.finally(() => ctx.pending.delete(task)).catch(() => {});
    return task;
  };
  const drop = h(
    "button",
    {
      type: "button",
      class: "dropzone",
      "aria-label": `Upload an image for ${schema.title || name}`,
      onclick: () => file.click(),
      ondragover: (ev) => {
        ev.preventDefault();
        drop.classList.add("over");
      },
      ondragleave: () => drop.classList.remove("over"),
      ondrop: (ev) => {
        ev.preventDefault();
        drop.classList.remove("over");
        const dropped = ev.dataTransfer.files[0];
        if (dropped) take(dropped).catch(() => {});
      },
    },
    "Drop an image here or click to choose a file",
  );
  file.addEventListener("change", () => {
    if (file.files[0]) take(file.files[0]).catch(() => {});
  });
  // On input (not change): a change fires on blur, and a preview appearing under the pointer as the
  // user clicks Run would move the button away from the click.
  url.addEventListener("input", () => {
    note.textContent = "";
    showPreview();
  });
  url.addEventListener("change", showPreview);
  url.addEventListener("paste", (ev) => {
    const pasted = [...ev.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (!pasted) return; // text (a URL or data URI) is pasted as usual
    ev.preventDefault();
    take(pasted).catch(() => {});
  });
  preview.addEventListener("error", () => {
    preview.hidden = true;
  });
  const samples = h(
    "div",
    { class: "samples" },
    h("span", { class: "muted" }, "Samples:"),
    samplesFor(name).map((sample) =>
      h(
        "button",
        {
          type: "button",
          class: "sample",
          "data-sample": sample,
          "aria-label": `Use the sample ${sample} image`,
          onclick: async () => {
            const blob = await (await fetch(`/playground-assets/samples/${SAMPLE_FILES[sample]}`)).blob();
            take(new File([blob], SAMPLE_FILES[sample], { type: blob.type })).catch(() => {});
          },
        },
        h("img", { src: `/playground-assets/samples/${SAMPLE_FILES[sample]}`, alt: "" }),
        sample,
      ),
    ),
  );
  return {
    element: h("div", { class: "image-row" }, drop, file, url, samples, note, preview),
    get: () => (url.value.trim() === "" ? undefined : url.value.trim()),
    set: (value) => {
      url.value = value ?? "";
      note.textContent = "";
      showPreview();
    },
    focus: () => url.focus(),
  };
}

/** Arrays of objects (PuLID ``reference_images``): items added and removed, each a small sub-form. */
function listControl(name, schema, { id, path, ctx }) {
  const itemSchema = schema.items;
  const items = [];
  const box = h("div", { class: "list-items" });
  const count = Math.max(schema.minItems || 0, 1);
  const noun = (schema.title || name).replace(/s$/, ""); // "Reference Images" -> "Reference Image 3"
  const renumber = () => {
    items.forEach((item, i) => {
      item.legend.textContent = `${noun} ${i + 1}`;
      for (const f of item.fields) {
        const sub = f.path.slice(f.path.lastIndexOf(".") + 1);
        f.path = `${path}.${i}.${sub}`;
        f.wrapper.dataset.path = f.path;
      }
      item.element.dataset.path = `${path}.${i}`;
    });
  };
  const add = (value) => {
    const i = items.length;
    const required = new Set(itemSchema.required || []);
    const fields = Object.entries(itemSchema.properties).map(([key, prop]) =>
      buildField(key, prop, `${path}.${i}.${key}`, required.has(key), ctx),
    );
    const legend = h("legend");
    const remove = h("button", { type: "button", class: "remove" }, "Remove");
    const element = h("fieldset", { class: "list-item" }, legend, fields.map((f) => f.wrapper), remove);
    const item = { element, fields, legend };
    remove.addEventListener("click", () => {
      items.splice(items.indexOf(item), 1);
      element.remove();
      renumber();
      ctx.fields.splice(0, ctx.fields.length, ...ctx.fields.filter((f) => !fields.includes(f)));
    });
    items.push(item);
    ctx.fields.push(...fields);
    box.append(element);
    for (const f of fields) if (value && f.name in value) f.control.set(value[f.name]);
    renumber();
  };
  const addButton = h("button", { type: "button", id, class: "add", onclick: () => add() }, `Add ${noun.toLowerCase()}`);
  return {
    element: h("div", { class: "list" }, box, addButton),
    labelFor: id,
    get: () => {
      const out = items.map((item) => {
        const obj = {};
        for (const f of item.fields) {
          const v = f.value();
          if (v !== undefined) obj[f.name] = v;
        }
        return obj;
      });
      return out.length ? out : undefined;
    },
    set: (value) => {
      for (const item of items.splice(0)) {
        item.element.remove();
        ctx.fields.splice(0, ctx.fields.length, ...ctx.fields.filter((f) => !item.fields.includes(f)));
      }
      const values = Array.isArray(value) && value.length ? value : Array.from({ length: count }, () => null);
      values.forEach((v) => add(v));
    },
    focus: () => addButton.focus(),
  };
}

const CONTROLS = {
  number: numberControl,
  enum: enumControl,
  boolean: booleanControl,
  text: textControl(false),
  textarea: textControl(true),
  json: jsonControl,
  "preset-or-object": presetOrObjectControl,
  image: imageControl,
  list: listControl,
};

/** Build the form for an input schema into ``container``. */
export function buildForm(container, schema) {
  const ctx = { pending: new Set(), fields: [] };
  const required = new Set(schema.required || []);
  // Required fields first (in schema order), then the rest: what a user must fill in is on top.
  const entries = Object.entries(schema.properties || {});
  entries.sort(([a], [b]) => Number(required.has(b)) - Number(required.has(a)));
  const top = entries.map(([name, prop]) => buildField(name, prop, name, required.has(name), ctx));
  ctx.fields.push(...top);
  // Long lists of optional knobs (LivePortrait has 21) fold away under the required inputs.
  const optional = top.filter((f) => !f.required);
  const folded = optional.length > FOLD_OVER && optional.length < top.length;
  const shown = top.filter((f) => f.required || !folded).map((f) => f.wrapper);
  if (folded) {
    const summary = h("summary", {}, `Additional settings (${optional.length})`);
    shown.push(h("details", { class: "more" }, summary, optional.map((f) => f.wrapper)));
  }
  container.replaceChildren(...shown);

  return {
    fields: top,
    /** The request body: required fields and everything that differs from fal's defaults. */
    values() {
      const out = {};
      for (const f of top) {
        const v = f.value();
        if (v !== undefined) out[f.name] = v;
      }
      return out;
    },
    /** Wait for uploads still in flight (a Run pressed right after a drop). */
    async settled() {
      await Promise.all([...ctx.pending]);
    },
    reset() {
      for (const f of top) f.reset();
      this.clearErrors();
    },
    /** Image inputs with a value, for the side-by-side view: [{label, url}]. */
    images() {
      return ctx.fields
        .filter((f) => f.kind === "image" && f.control.get())
        .map((f) => ({ label: f.path, url: f.control.get() }));
    },
    clearErrors() {
      for (const el of container.querySelectorAll(".invalid")) el.classList.remove("invalid");
      for (const el of container.querySelectorAll(".field-error")) el.textContent = "";
      for (const el of container.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    },
    /** Show 422 ``detail`` entries at their fields; returns the entries no field matched. */
    showErrors(detail) {
      const unmatched = [];
      let first = null;
      for (const entry of detail) {
        const loc = (entry.loc || []).filter((part, i) => !(i === 0 && part === "body"));
        let wrapper = null;
        for (let n = loc.length; n > 0 && !wrapper; n--) {
          wrapper = container.querySelector(`.field[data-path="${CSS.escape(loc.slice(0, n).join("."))}"]`);
        }
        if (!wrapper) {
          unmatched.push(entry);
          continue;
        }
        wrapper.classList.add("invalid");
        const fold = wrapper.closest("details");
        if (fold) fold.open = true;
        const slot = wrapper.querySelector(":scope > .field-error");
        slot.textContent = slot.textContent ? `${slot.textContent}; ${entry.msg}` : entry.msg;
        const control = wrapper.querySelector("input:not([type=file]):not([type=range]), select, textarea");
        if (control) control.setAttribute("aria-invalid", "true");
        first = first || control;
      }
      if (first) first.focus();
      return unmatched;
    },
  };
}
