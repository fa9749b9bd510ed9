// The side panel: a node's params as a form generated from its type's param schema
// (GET /api/v1/node-types), its settings, and what it received and produced in a run.
"use strict";

const ON_ERROR = [["fail", "fail the execution"], ["continue", "continue with no items"],
                  ["output", "send the error to an 'error' output"]];

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...children.filter((c) => c !== null && c !== undefined));
  return el;
}

let fieldSeq = 0;

/** The field a server message is about: "param 'fields' is required" -> "fields". */
export function fieldOf(message) {
  const m = /param '([^']+)'/.exec(message) || /^(retry|timeout_s|on_error|credential)\b/.exec(message);
  return m ? m[1] : null;
}

/**
 * Draw the form of `node`. `edit(key, mutate)` applies a change to the node (the key groups the
 * keystrokes of one field into one undo step); `errors` are the server's messages for this node.
 */
export function renderNodeForm(panel, { node, spec, readOnly, credentials, edit, rename }) {
  panel.replaceChildren();
  panel.dataset.nodeId = node.id;
  panel.append(h("h2", { text: spec ? spec.label || spec.type : node.type }));
  if (spec && spec.description) panel.append(h("p", { class: "hint", text: spec.description }));
  if (!spec) panel.append(h("p", { class: "field-error", text: `unknown node type ${node.type}` }));
  panel.append(h("div", { class: "node-errors" }));

  const form = h("form", { class: "node-form", "aria-label": `Settings of ${node.id}`, onsubmit: (e) => e.preventDefault() });
  const idInput = h("input", { value: node.id, disabled: readOnly, autocomplete: "off" });
  const idError = h("p", { class: "field-error" });
  idInput.addEventListener("change", () => {
    const problem = rename(idInput.value.trim());
    if (problem) { idInput.value = node.id; idError.textContent = problem; } else idError.textContent = "";
  });
  form.append(field("Node id", idInput, idError));

  for (const [name, p] of Object.entries((spec && spec.params) || {})) {
    form.append(paramField(node, name, p, { readOnly, edit }));
  }
  if (spec && spec.credential) {
    const select = h("select", { disabled: readOnly },
      h("option", { value: "", text: "(none)" }),
      ...credentials.map((c) => h("option", { value: c.name, text: `${c.name} (${c.type})`, selected: node.credential === c.name })));
    if (node.credential && !credentials.some((c) => c.name === node.credential)) {
      select.append(h("option", { value: node.credential, selected: true, text: `${node.credential} (missing)` }));
    }
    select.addEventListener("change", () => edit("credential", (n) => { if (select.value) n.credential = select.value; else delete n.credential; }));
    form.append(field("Credential", select, errorList("credential")));
  }
  form.append(settingsSection(node, { readOnly, edit }));
  panel.append(form);
}

/** Put the server's messages about the shown node at their fields (the rest above the form),
 *  without redrawing the form, so that typing is never interrupted. */
export function showServerErrors(panel, spec, messages) {
  for (const box of panel.querySelectorAll(".field-errors, .node-errors")) box.replaceChildren();
  for (const message of messages || []) {
    const f = fieldOf(message);
    const box = f && panel.querySelector(`.field-errors[data-field="${CSS.escape(f)}"]`);
    (box || panel.querySelector(".node-errors"))?.append(h("p", { class: "field-error server", role: "alert", text: message }));
    if (box && box.closest("details")) box.closest("details").open = true;
  }
}

function field(label, control, ...after) {
  const id = `f${++fieldSeq}`;
  control.id = id;
  const wrap = h("div", { class: "field" }, h("label", { for: id, text: label }), control, ...after);
  return wrap;
}

function errorList(name) {
  return h("div", { class: "field-errors", "data-field": name });
}

function paramField(node, name, p, { readOnly, edit }) {
  const params = node.params || (node.params = {});
  const has = Object.prototype.hasOwnProperty.call(params, name);
  const value = has ? params[name] : undefined;
  const local = h("p", { class: "field-error local", role: "alert" });
  const set = (v) => edit(`param:${name}`, (n) => {
    n.params = n.params || {};
    if (v === undefined) delete n.params[name]; else n.params[name] = v;
  });
  const check = (problem) => { local.textContent = problem || ""; };
  const label = name + (p.required ? " *" : "");
  let control;
  const exprOk = p.expression;
  if (p.choices && p.choices.length && p.kind !== "boolean") {
    control = h("select", { disabled: readOnly, name },
      h("option", { value: "", text: p.default !== null && p.default !== undefined ? `(default: ${p.default})` : "(choose)" }),
      ...p.choices.map((c) => h("option", { value: JSON.stringify(c), text: String(c), selected: has && value === c })));
    control.addEventListener("change", () => {
      const v = control.value ? JSON.parse(control.value) : undefined;
      check(p.required && v === undefined && (p.default === null || p.default === undefined) ? "required" : "");
      set(v);
    });
  } else if (p.kind === "boolean") {
    const on = has ? value === true : p.default === true;
    control = h("input", { type: "checkbox", checked: on, disabled: readOnly, name });
    control.addEventListener("change", () => set(control.checked));
  } else if (p.kind === "object") {
    return keyValueField(name, label, p, value, { readOnly, set });
  } else if (p.kind === "list" || p.kind === "any") {
    const text = !has ? "" : typeof value === "string" ? value : JSON.stringify(value, null, 2);
    control = h("textarea", { rows: 4, disabled: readOnly, name, spellcheck: "false",
                              placeholder: p.kind === "list" ? "[ ... ] (JSON)" : exprOk ? "JSON or {{ expression }}" : "JSON" });
    control.value = text;
    control.addEventListener("input", () => {
      const raw = control.value.trim();
      if (!raw) { check(p.required ? "required" : ""); return set(undefined); }
      try {
        const v = JSON.parse(raw);
        if (p.kind === "list" && !Array.isArray(v)) { check("must be a JSON list, e.g. [ ... ]"); return set(v); }
        check("");
        set(v);
      } catch {
        if (exprOk && p.kind === "any") { check(""); return set(raw); }
        check("not valid JSON");
      }
    });
  } else {
    const numeric = p.kind === "integer" || p.kind === "number";
    control = h("input", { type: "text", disabled: readOnly, name, autocomplete: "off", spellcheck: "false",
                           inputmode: numeric && !exprOk ? "decimal" : null,
                           placeholder: p.default !== null && p.default !== undefined ? `default: ${JSON.stringify(p.default)}` : "" });
    control.value = has ? (typeof value === "string" ? value : JSON.stringify(value)) : "";
    control.addEventListener("input", () => {
      const raw = control.value;
      if (!raw.trim()) { check(p.required ? "required" : ""); return set(undefined); }
      if (numeric && !(exprOk && raw.includes("{{"))) {
        const n = Number(raw);
        if (!Number.isFinite(n)) { check(`must be a number${exprOk ? " or an {{ expression }}" : ""}`); return set(raw); }
        if (p.kind === "integer" && !Number.isInteger(n)) { check("must be a whole number"); return set(n); }
        check("");
        return set(n);
      }
      if (!exprOk && raw.includes("{{")) { check("must be a literal value, not an expression"); return set(raw); }
      check("");
      set(raw);
    });
  }
  const hint = p.description ? h("p", { class: "hint", text: p.description }) : null;
  if (!has && p.required && (p.default === null || p.default === undefined)) local.textContent = "required";
  return field(label, control, hint, local, errorList(name));
}

function keyValueField(name, label, p, value, { readOnly, set }) {
  const rows = h("div", { class: "kv-rows" });
  const local = h("p", { class: "field-error local", role: "alert" });
  const collect = () => {
    const out = {};
    for (const row of rows.children) {
      const [k, v] = row.querySelectorAll("input");
      if (!k.value.trim()) continue;
      out[k.value.trim()] = parseLoose(v.value);
    }
    local.textContent = p.required && !Object.keys(out).length ? "required: add at least one field" : "";
    set(Object.keys(out).length || !p.required ? out : undefined);
  };
  const addRow = (k = "", v = "") => {
    const key = h("input", { value: k, placeholder: "name", "aria-label": `${name} name`, disabled: readOnly, autocomplete: "off" });
    const val = h("input", { value: v, placeholder: "value, JSON or {{ expression }}", "aria-label": `${name} value`,
                             disabled: readOnly, autocomplete: "off", spellcheck: "false" });
    key.addEventListener("input", collect);
    val.addEventListener("input", collect);
    const remove = h("button", { type: "button", class: "secondary small", "aria-label": `Remove ${name} entry`, text: "×",
                                 disabled: readOnly, onclick: () => { row.remove(); collect(); } });
    const row = h("div", { class: "kv-row" }, key, val, remove);
    rows.append(row);
    return row;
  };
  for (const [k, v] of Object.entries(value && typeof value === "object" ? value : {})) {
    addRow(k, typeof v === "string" ? v : JSON.stringify(v));
  }
  const id = `f${++fieldSeq}`;
  const add = h("button", { type: "button", class: "secondary small", text: `Add ${name} entry`, disabled: readOnly,
                            onclick: () => addRow().querySelector("input").focus() });
  if (!rows.children.length && !readOnly) addRow();
  if (p.required && !(value && Object.keys(value).length)) local.textContent = "required: add at least one field";
  return h("div", { class: "field kv", role: "group", "aria-labelledby": id },
    h("span", { class: "label", id, text: label }), rows, readOnly ? null : add,
    p.description ? h("p", { class: "hint", text: `${p.description}; values are JSON when they parse, else text` }) : null,
    local, errorList(name));
}

/** A typed value: JSON when it parses (true, 3, {"a": 1}), else the text itself. */
export function parseLoose(text) {
  const t = text.trim();
  if (!t) return "";
  try { return JSON.parse(t); } catch { return text; }
}

function settingsSection(node, { readOnly, edit }) {
  const box = h("details", { class: "node-settings" }, h("summary", { text: "Node settings" }));
  const name = h("input", { value: node.name || "", disabled: readOnly, autocomplete: "off" });
  name.addEventListener("input", () => edit("name", (n) => { if (name.value.trim()) n.name = name.value; else delete n.name; }));
  const onError = h("select", { disabled: readOnly },
    ...ON_ERROR.map(([v, text]) => h("option", { value: v, text: `${v}: ${text}`, selected: (node.on_error || "fail") === v })));
  onError.addEventListener("change", () => edit("on_error", (n) => { if (onError.value === "fail") delete n.on_error; else n.on_error = onError.value; }));
  const attempts = h("input", { value: node.retry?.max_attempts ?? "", placeholder: "1", disabled: readOnly, inputmode: "numeric" });
  const attemptsError = h("p", { class: "field-error local" });
  attempts.addEventListener("input", () => {
    const v = attempts.value.trim();
    const n = Number(v);
    attemptsError.textContent = v && !(Number.isInteger(n) && n >= 1) ? "must be a whole number of at least 1" : "";
    edit("retry", (nd) => {
      if (!v) { if (nd.retry) delete nd.retry.max_attempts; if (nd.retry && !Object.keys(nd.retry).length) delete nd.retry; return; }
      nd.retry = { ...(nd.retry || {}), max_attempts: Number.isFinite(n) ? n : v };
    });
  });
  const timeout = h("input", { value: node.timeout_s ?? "", placeholder: "none", disabled: readOnly, inputmode: "decimal" });
  const timeoutError = h("p", { class: "field-error local" });
  timeout.addEventListener("input", () => {
    const v = timeout.value.trim();
    const n = Number(v);
    timeoutError.textContent = v && !(Number.isFinite(n) && n > 0) ? "must be a number of seconds above 0" : "";
    edit("timeout_s", (nd) => { if (!v) delete nd.timeout_s; else nd.timeout_s = Number.isFinite(n) ? n : v; });
  });
  const notes = h("textarea", { rows: 3, disabled: readOnly });
  notes.value = node.notes || "";
  notes.addEventListener("input", () => edit("notes", (n) => { if (notes.value) n.notes = notes.value; else delete n.notes; }));
  box.append(field("Display name", name), field("On error", onError, errorList("on_error")),
    field("Attempts", attempts, attemptsError, errorList("retry")),
    field("Timeout (s)", timeout, timeoutError, errorList("timeout_s")), field("Notes", notes));
  return box;
}

// ---- run data ----------------------------------------------------------------------------------

/** A collapsible tree of a JSON value (native <details>, so it needs no script to open and close). */
export function jsonTree(value, label = "", depth = 0) {
  if (value === null || typeof value !== "object") {
    return h("div", { class: "leaf" }, label !== "" ? h("span", { class: "key", text: `${label}: ` }) : null,
      h("span", { class: `v-${value === null ? "null" : typeof value}`, text: JSON.stringify(value) }));
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  const kind = Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`;
  const box = h("details", { class: "tree", open: depth < 2 },
    h("summary", {}, label !== "" ? h("span", { class: "key", text: `${label}: ` }) : null, h("span", { class: "kind", text: kind })));
  for (const [k, v] of entries) box.append(jsonTree(v, k, depth + 1));
  return box;
}

/** The steps one node ran in an execution: status, attempt, timing, error, input and output. */
export function stepSection(nodeId, steps, { title = "Last run" } = {}) {
  const mine = steps.filter((s) => s.node === nodeId);
  const box = h("div", { class: "run-data", role: "region", "aria-label": `Run data of ${nodeId}` }, h("h3", { text: title }));
  if (!mine.length) {
    box.append(h("p", { class: "hint", text: "This node did not run." }));
    return box;
  }
  for (const s of mine) {
    const ms = s.ended_at && s.started_at ? ((s.ended_at - s.started_at) * 1000).toFixed(1) : null;
    const flags = [s.pinned ? "pinned" : null, s.replayed ? "replayed" : null].filter(Boolean).join(", ");
    box.append(h("p", { class: "step-line" },
      h("span", { class: `status ${s.status}`, text: s.status }),
      ` ${s.key !== s.node ? s.key + " · " : ""}attempt ${s.attempt}${ms ? ` · ${ms} ms` : ""}${flags ? ` · ${flags}` : ""}`));
    if (s.error) box.append(h("p", { class: "step-error", role: "alert", text: typeof s.error === "string" ? s.error : JSON.stringify(s.error) }));
    const input = Array.isArray(s.input) ? s.input : null;
    box.append(h("h4", { text: input ? `Input: ${input.length} item(s)` : `Input: ${s.input_count} item(s)` }),
      input ? jsonTree(input) : h("p", { class: "hint", text: "the items it received are not recorded" }));
    const perOutput = Object.entries(s.outputs || {});
    const split = perOutput.length > 1 ? ` (${perOutput.map(([k, n]) => `${k}: ${n}`).join(", ")})` : "";
    box.append(h("h4", { text: `Output: ${(s.items || []).length} item(s)${split}` }), jsonTree(s.items || []));
  }
  return box;
}
