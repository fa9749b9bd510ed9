// The flow builder page (/t/{slug}/flows/{name}/edit and /flows/new).
//
// Why our own canvas (canvas.js) rather than a vendored library such as Drawflow: the flow JSON
// is the only model here (positions live in node.position), and multi-output ports derived from
// params (switch), multi-select with a rubber band, copy/paste and undo/redo all have to work on
// that model. Drawflow keeps its own model and has none of multi-select or undo, so we would be
// syncing two models and patching around its event handling; a few hundred lines of plain DOM +
// SVG with pointer events give one model, no build step, and gestures that real-input browser
// tests (Playwright's mouse) exercise exactly as a person does.
//
// Modules: canvas.js draws and edits the graph, panel.js renders a node's form and run data,
// debug.js runs test runs and streams their steps onto the canvas, api.js talks to /api/v1.
"use strict";

import { api, explain } from "./api.js";
import { Canvas, hasPositions, positionOf, uniqueId } from "./canvas.js";
import { Debugger } from "./debug.js";
import { h, renderNodeForm, showServerErrors, stepSection } from "./panel.js";

const root = document.getElementById("builder");
const tenant = root.dataset.tenant;
const canEdit = root.dataset.canEdit === "yes";
const $ = (id) => document.getElementById(id);
const T = `/tenants/${encodeURIComponent(tenant)}`;

const state = {
  name: root.dataset.flow,
  isNew: root.dataset.new === "yes",
  doc: { name: root.dataset.flow, nodes: [], edges: [] },
  version: null,
  active: false,
  dirty: false,
  types: new Map(),
  credentials: [],
  errors: new Map(),      // node id -> server messages
  undo: [],
  redo: [],
  editKey: null,          // the field being typed in: its keystrokes are one undo step
  clipboard: null,
  pastes: 0,
};
const flowPath = () => `${T}/flows/${encodeURIComponent(state.name)}`;

function message(text, kind = "info") {
  const el = $("message");
  el.textContent = text;
  el.dataset.kind = kind;
}

// ---- canvas, undo/redo ---------------------------------------------------------------------------

const canvas = new Canvas($("canvas"), {
  readOnly: !canEdit,
  specOf: (type) => state.types.get(type) || null,
  onBeforeChange: () => snapshot(),
  onChange: () => changed(),
  onSelect: () => { state.editKey = null; showPanel(); },
});
$("canvas").addEventListener("canvas-message", (e) => message(`Not connected: ${e.detail}`, "error"));

function snapshot() {
  state.undo.push(JSON.stringify(state.doc));
  if (state.undo.length > 200) state.undo.shift();
  state.redo = [];
  state.editKey = null;
}

function changed() {
  state.dirty = true;
  showVersion();
  showWebhook();
  scheduleValidation();
}

function restore(from, to) {
  if (!from.length) return;
  to.push(JSON.stringify(state.doc));
  state.doc = JSON.parse(from.pop());
  state.editKey = null;
  canvas.setDoc(state.doc);
  showPanel();
  changed();
}
const undo = () => restore(state.undo, state.redo);
const redo = () => restore(state.redo, state.undo);

/** A change from the side panel: one undo step per field being edited, not per keystroke. */
function edit(nodeId, key, mutate) {
  const node = canvas.node(nodeId);
  if (!node) return;
  if (state.editKey !== `${nodeId}:${key}`) {
    snapshot();
    state.editKey = `${nodeId}:${key}`;
  }
  mutate(node);
  canvas.render();
  changed();
}

function rename(oldId, newId) {
  if (newId === oldId) return null;
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(newId)) return "use 1 to 64 letters, digits and _ . -";
  if (canvas.node(newId)) return `a node ${newId} already exists`;
  snapshot();
  canvas.node(oldId).id = newId;
  for (const e of state.doc.edges) {
    if (e.from === oldId) e.from = newId;
    if (e.to === oldId) e.to = newId;
  }
  canvas.render();
  canvas.select([newId]);
  changed();
  return null;
}

// ---- copy and paste --------------------------------------------------------------------------

function copySelection() {
  const ids = new Set(canvas.selected);
  if (!ids.size) return;
  state.clipboard = JSON.stringify({
    nodes: state.doc.nodes.filter((n) => ids.has(n.id)),
    edges: state.doc.edges.filter((e) => ids.has(e.from) && ids.has(e.to)),
  });
  state.pastes = 0;
  message(`Copied ${ids.size} node(s)`);
}

function paste() {
  if (!state.clipboard || !canEdit) return;
  const { nodes, edges } = JSON.parse(state.clipboard);
  state.pastes += 1;
  snapshot();
  const newIds = new Map();
  const taken = new Set();
  for (const n of nodes) {
    const id = uniqueId(n.type, state.doc.nodes, taken);
    taken.add(id);
    newIds.set(n.id, id);
  }
  for (const n of nodes) {
    const [x, y] = positionOf(n);
    state.doc.nodes.push({ ...n, id: newIds.get(n.id), position: [x + 40 * state.pastes, y + 40 * state.pastes] });
  }
  for (const e of edges) state.doc.edges.push({ ...e, from: newIds.get(e.from), to: newIds.get(e.to) });
  canvas.render();
  canvas.select([...newIds.values()]);
  changed();
  message(`Pasted ${nodes.length} node(s)`);
}

// ---- side panel --------------------------------------------------------------------------------

const panel = $("panel");
let debug = null;

async function showPanel() {
  const ids = [...canvas.selected];
  if (ids.length === 1 && canvas.node(ids[0])) {
    const node = canvas.node(ids[0]);
    const spec = state.types.get(node.type);
    renderNodeForm(panel, {
      node, spec, readOnly: !canEdit, credentials: state.credentials,
      edit: (key, mutate) => edit(node.id, key, mutate),
      rename: (newId) => rename(node.id, newId),
    });
    showServerErrors(panel, spec, state.errors.get(node.id));
    if (debug) await debug.showNode(panel, node.id);
    return;
  }
  panel.replaceChildren();
  delete panel.dataset.nodeId;
  if (ids.length > 1) {
    panel.append(h("h2", { text: `${ids.length} nodes selected` }),
      h("p", { class: "hint", text: "Drag one of them to move them all; Ctrl+C copies them, Delete removes them." }));
    if (canEdit) panel.append(h("button", { type: "button", class: "secondary", text: "Delete selected", onclick: () => canvas.deleteSelection() }));
  } else {
    panel.append(h("p", { class: "hint", text: state.doc.nodes.length ? "Select a node to see its settings."
      : canEdit ? "Drag a trigger from the palette to start." : "This flow has no nodes." }));
  }
}

// ---- palette -----------------------------------------------------------------------------------

function buildPalette() {
  const groups = $("palette-groups");
  if (!groups) return;
  const byCategory = new Map();
  for (const spec of state.types.values()) {
    const cat = spec.category || (spec.trigger ? "Triggers" : "Core");
    (byCategory.get(cat) || byCategory.set(cat, []).get(cat)).push(spec);
  }
  const order = ["Triggers", "Core", "Flow control", "HTTP"];
  const cats = [...byCategory.keys()].sort((a, b) => ((order.indexOf(a) + 1) || 99) - ((order.indexOf(b) + 1) || 99) || a.localeCompare(b));
  groups.replaceChildren();
  for (const cat of cats) {
    const list = h("ul", { class: "palette-list", "aria-label": cat });
    for (const spec of byCategory.get(cat).sort((a, b) => (a.label || a.type).localeCompare(b.label || b.type))) {
      const item = h("li", { class: "palette-item", tabindex: "0", role: "button", "data-type": spec.type,
                             "aria-label": `Add ${spec.label || spec.type}`, title: spec.description || spec.type },
        spec.icon ? h("img", { class: "palette-icon", src: spec.icon, alt: "" }) : null,
        h("span", { class: "palette-label", text: spec.label || spec.type }), h("span", { class: "palette-desc", text: spec.description || "" }));
      item.addEventListener("pointerdown", (e) => dragFromPalette(e, spec.type));
      item.addEventListener("keydown", (e) => {
        if (e.key !== "Enter" && e.key !== " ") return;
        e.preventDefault();
        const r = $("canvas").getBoundingClientRect();
        const [x, y] = canvas.toWorld(r.left + r.width / 2, r.top + r.height / 2);
        canvas.addNode(spec.type, x - 90 + 20 * (state.doc.nodes.length % 5), y - 28 + 20 * (state.doc.nodes.length % 5));
      });
      list.append(item);
    }
    groups.append(h("div", { class: "palette-group", "data-category": cat }, h("h3", { text: cat }), list));
  }
  $("palette-search").addEventListener("input", filterPalette);
}

function filterPalette() {
  const q = $("palette-search").value.trim().toLowerCase();
  for (const item of document.querySelectorAll(".palette-item")) {
    const spec = state.types.get(item.dataset.type);
    const text = `${spec.type} ${spec.label || ""} ${spec.description || ""} ${spec.category || ""}`.toLowerCase();
    item.hidden = Boolean(q) && !text.includes(q);
  }
  for (const group of document.querySelectorAll(".palette-group")) {
    group.hidden = ![...group.querySelectorAll(".palette-item")].some((i) => !i.hidden);
  }
}

/** Drag a palette entry: a ghost follows the pointer; dropped on the canvas, it becomes a node there. */
function dragFromPalette(e, type) {
  if (e.button !== 0) return;
  e.preventDefault();
  const ghost = h("div", { class: "palette-ghost", text: state.types.get(type)?.label || type });
  let moved = false;
  const move = (ev) => {
    if (!moved) document.body.append(ghost);
    moved = true;
    ghost.style.left = `${ev.clientX + 4}px`;
    ghost.style.top = `${ev.clientY + 4}px`;
  };
  const up = (ev) => {
    window.removeEventListener("pointermove", move);
    window.removeEventListener("pointerup", up);
    ghost.remove();
    const r = $("canvas").getBoundingClientRect();
    if (!moved || ev.clientX < r.left || ev.clientX > r.right || ev.clientY < r.top || ev.clientY > r.bottom) return;
    const [x, y] = canvas.toWorld(ev.clientX, ev.clientY);
    canvas.addNode(type, x - 90, y - 28);
  };
  window.addEventListener("pointermove", move);
  window.addEventListener("pointerup", up);
}

// ---- validation and saving ---------------------------------------------------------------------

let validateTimer = null;
function scheduleValidation() {
  clearTimeout(validateTimer);
  validateTimer = setTimeout(validate, 500);
}

function draft() {
  const name = state.isNew ? $("flow-name").value.trim() : state.name;
  return { ...state.doc, name };
}

/** Put the API's problems (each names its node) at their nodes and fields; the rest in the list. */
function showProblems(errors) {
  state.errors = new Map();
  const flowErrors = [];
  for (const e of errors || []) {
    const m = /^nodes\.(.+)$/.exec(e.field || "");
    if (m && canvas.node(m[1])) (state.errors.get(m[1]) || state.errors.set(m[1], []).get(m[1])).push(e.message);
    else flowErrors.push(m ? `${m[1]}: ${e.message}` : e.message);
  }
  canvas.setErrors(state.errors);
  const list = $("flow-errors");
  list.replaceChildren(...flowErrors.map((t) => h("li", { class: "field-error", text: t })));
  if (panel.dataset.nodeId) {
    const node = canvas.node(panel.dataset.nodeId);
    if (node) showServerErrors(panel, state.types.get(node.type), state.errors.get(node.id));
  }
}

async function validate() {
  if (!state.doc.nodes.length) return showProblems([]);
  const doc = draft();
  const r = await api(`${T}/flows/validate`, { method: "POST", body: { ...doc, name: doc.name || "draft" } });
  if (r.ok) showProblems([]);
  else if (r.status === 422) showProblems(r.problem.errors || [{ field: "flow", message: r.problem.detail }]);
}

async function save() {
  if (!canEdit) return;
  const doc = draft();
  if (!doc.name) {
    message("Give the flow a name first", "error");
    $("flow-name").focus();
    return;
  }
  message("Saving…");
  const r = state.isNew ? await api(`${T}/flows`, { method: "POST", body: doc })
    : await api(flowPath(), { method: "PUT", body: doc });
  if (!r.ok) {
    if (r.status === 422 && r.problem.errors) showProblems(r.problem.errors);
    message(`Not saved: ${explain(r)}`, "error");
    return;
  }
  showProblems([]);
  if (state.isNew) {
    state.isNew = false;
    state.dirty = false;
    state.name = r.data.name;
    history.replaceState(null, "", `/t/${encodeURIComponent(tenant)}/flows/${encodeURIComponent(state.name)}/edit`);
    location.reload();  // the page of a saved flow: history, activation, test runs
    return;
  }
  state.version = r.data.version;
  state.active = r.data.active;
  state.dirty = false;
  showVersion();
  message(`Saved version ${r.data.version}`, "ok");
}

function showVersion() {
  const el = $("version");
  el.textContent = state.version ? `v${state.version}${state.dirty ? " · unsaved changes" : ""}`
    : state.dirty ? "not saved yet" : "";
  const active = $("active");
  if (active) active.checked = state.active;
}

function showWebhook() {
  const hook = state.doc.nodes.find((n) => n.type === "webhook");
  const box = $("webhook");
  if (!hook || !hook.params || typeof hook.params.path !== "string" || !hook.params.path) { box.hidden = true; return; }
  box.hidden = false;
  $("webhook-method").textContent = hook.params.method || "POST";
  $("webhook-url").textContent = `${location.origin}/hooks/${tenant}/${hook.params.path}`;
  box.title = state.active ? "listening" : "not listening until the flow is active";
}

async function copyWebhook() {
  const url = $("webhook-url").textContent;
  try {
    await navigator.clipboard.writeText(url);
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("webhook-url"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  message("Webhook URL copied", "ok");
}

async function toggleActive() {
  const want = $("active").checked;
  if (want && state.dirty) message("Activating the saved version; save first to activate your changes", "info");
  const r = await api(`${flowPath()}/${want ? "activate" : "deactivate"}`, { method: "POST" });
  if (!r.ok) {
    $("active").checked = !want;
    message(`Could not ${want ? "activate" : "deactivate"}: ${explain(r)}`, "error");
    return;
  }
  state.active = r.data.active;
  showVersion();
  showWebhook();
  message(state.active ? "Active: the flow listens to its trigger" : "Inactive", "ok");
}

// ---- version history ---------------------------------------------------------------------------

async function openHistory() {
  const dialog = $("history-dialog");
  const r = await api(`${flowPath()}/versions`);
  if (!r.ok) return message(`Could not list versions: ${explain(r)}`, "error");
  const rows = r.data;
  $("versions").replaceChildren(...rows.map((v) => h("tr", {},
    h("td", { text: `v${v.version}${v.version === state.version ? " (latest)" : ""}` }),
    h("td", { text: new Date(v.created_at * 1000).toLocaleString() }),
    h("td", {}, h("button", { type: "button", class: "secondary small", text: "Diff with latest", "aria-label": `Diff v${v.version} with latest`,
                              onclick: () => { $("diff-from").value = v.version; $("diff-to").value = rows[0].version; showDiff(); } })),
    h("td", {}, canEdit && v.version !== rows[0].version
      ? h("button", { type: "button", class: "secondary small", text: "Restore", "aria-label": `Restore v${v.version}`,
                      onclick: () => restoreVersion(v.version) }) : null))));
  for (const id of ["diff-from", "diff-to"]) {
    $(id).replaceChildren(...rows.map((v) => h("option", { value: v.version, text: `v${v.version}` })));
  }
  if (rows.length > 1) $("diff-from").value = rows[1].version;
  $("diff").replaceChildren();
  dialog.showModal();
}

async function showDiff() {
  const from = $("diff-from").value, to = $("diff-to").value;
  const r = await api(`${flowPath()}/diff?from=${from}&to=${to}`);
  const pre = $("diff");
  if (!r.ok) { pre.textContent = explain(r); return; }
  const lines = r.data.diff ? r.data.diff.split("\n") : [`v${from} and v${to} are the same`];
  pre.replaceChildren(...lines.map((line) => h("span", {
    class: line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del"
      : line.startsWith("@@") ? "hunk" : "", text: `${line}\n` })));
}

async function restoreVersion(version) {
  if (state.dirty && !confirm("Restoring replaces your unsaved changes. Go on?")) return;
  const r = await api(`${flowPath()}/versions/${version}/restore`, { method: "POST" });
  if (!r.ok) return message(`Could not restore: ${explain(r)}`, "error");
  $("history-dialog").close();
  loadDoc(r.data);
  message(`Restored v${version} as version ${r.data.version}`, "ok");
}

// ---- keyboard ----------------------------------------------------------------------------------

function typing(target) {
  return target.closest("input, textarea, select, [contenteditable], dialog");
}

document.addEventListener("keydown", (e) => {
  const mod = e.ctrlKey || e.metaKey;
  if (mod && e.key.toLowerCase() === "s") { e.preventDefault(); save(); return; }
  if (typing(e.target)) return;
  const key = e.key.toLowerCase();
  if (e.key === "Escape") { canvas.select([]); $("shortcuts").hidden = true; return; }
  if (e.key === "?") { toggleHelp(); return; }
  if (mod && key === "c") { copySelection(); e.preventDefault(); return; }
  if (mod && key === "a") { canvas.select(state.doc.nodes.map((n) => n.id)); e.preventDefault(); return; }
  if (!canEdit) return;
  if ((e.key === "Delete" || e.key === "Backspace") && (canvas.selected.size || canvas.selectedEdges.size)) {
    e.preventDefault();
    canvas.deleteSelection();
  } else if (mod && key === "v") { e.preventDefault(); paste(); }
  else if (mod && key === "z" && !e.shiftKey) { e.preventDefault(); undo(); }
  else if ((mod && key === "z" && e.shiftKey) || (mod && key === "y")) { e.preventDefault(); redo(); }
  else if (!mod && (e.key === "+" || e.key === "=")) canvas.zoomBy(1.2);
  else if (!mod && e.key === "-") canvas.zoomBy(1 / 1.2);
});

function toggleHelp() {
  const pop = $("shortcuts");
  pop.hidden = !pop.hidden;
  $("help").setAttribute("aria-expanded", String(!pop.hidden));
}

// ---- loading -----------------------------------------------------------------------------------

function loadDoc(view) {
  state.doc = structuredClone(view.definition);
  state.version = view.version;
  state.active = view.active;
  state.dirty = false;
  state.undo = [];
  state.redo = [];
  canvas.setDoc(state.doc);
  if (!hasPositions(state.doc)) {
    canvas.onBeforeChange = () => {};
    canvas.tidy();
    canvas.onBeforeChange = () => snapshot();
    state.dirty = false;
  }
  canvas.fit();
  showVersion();
  showWebhook();
  showPanel();
  validate();
}

async function start() {
  const types = await api(`/node-types?tenant=${encodeURIComponent(tenant)}`);
  if (!types.ok) {
    message(`Could not load the node types: ${explain(types)}`, "error");
  } else {
    for (const t of types.data.node_types) state.types.set(t.type, t);
  }
  const creds = await api(`${T}/credentials`);
  if (creds.ok) state.credentials = creds.data;
  buildPalette();
  if (!state.isNew) {
    const flow = await api(flowPath());
    if (!flow.ok) return message(`Could not load the flow: ${explain(flow)}`, "error");
    loadDoc(flow.data);
    debug = new Debugger({ tenant, flowPath: flowPath(), canvas, canEdit, message, draft, showPanel,
                           runNow: root.dataset.canRun === "yes" });
    await debug.loadPins();
  } else {
    canvas.setDoc(state.doc);
    showPanel();
  }
  root.dataset.ready = "yes";
}

$("save")?.addEventListener("click", save);
$("history")?.addEventListener("click", openHistory);
$("show-diff")?.addEventListener("click", showDiff);
$("active")?.addEventListener("change", toggleActive);
$("copy-webhook").addEventListener("click", copyWebhook);
$("tidy")?.addEventListener("click", () => { canvas.tidy(); canvas.fit(); });
$("undo")?.addEventListener("click", undo);
$("redo")?.addEventListener("click", redo);
$("help").addEventListener("click", toggleHelp);
$("flow-name")?.addEventListener("input", () => { state.dirty = true; showVersion(); });
window.addEventListener("beforeunload", (e) => { if (state.dirty && canEdit) e.preventDefault(); });
start();

