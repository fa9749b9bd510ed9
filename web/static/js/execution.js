// The execution view: the executed flow on the builder's canvas (read-only) with each node's
// status and item count; clicking a node shows its input and output. While the execution is not
// final, steps stream in from the API's events stream (or, without one, a poll of its detail).
"use strict";

import { FINAL, api } from "./api.js";
import { Canvas, hasPositions } from "./canvas.js";
import { h, stepSection } from "./panel.js";

const root = document.getElementById("execution");
const tenant = root.dataset.tenant;
const id = root.dataset.execution;
const initialStatus = root.dataset.status;
const definition = JSON.parse(root.dataset.flowDefinition || "null");
const T = `/tenants/${encodeURIComponent(tenant)}`;
const panel = document.getElementById("panel");
const types = new Map();
let detail = null;
let canvas = null;

function statusesOf(steps) {
  const map = new Map();
  for (const s of steps) {
    map.set(s.node, { status: s.status, items: (s.items || []).length, pinned: s.pinned, replayed: s.replayed });
  }
  return map;
}

async function showNode() {
  const ids = [...canvas.selected];
  if (ids.length !== 1) {
    panel.replaceChildren(h("p", { class: "hint", text: "Click a node to see its input and output." }));
    return;
  }
  const nodeId = ids[0];
  if (!detail) await refresh();
  const node = canvas.node(nodeId);
  const spec = types.get(node.type);
  panel.replaceChildren(h("h2", { text: node.name || node.id }),
    h("p", { class: "hint", text: spec ? `${spec.label || spec.type}: ${spec.description || ""}` : node.type }),
    stepSection(nodeId, detail ? detail.steps : [], { title: "In this execution" }));
}

async function refresh() {
  const r = await api(`${T}/executions/${encodeURIComponent(id)}`);
  if (!r.ok) return null;
  detail = r.data;
  canvas?.setStatus(statusesOf(detail.steps));
  return detail;
}

function finished(status) {
  if (status !== initialStatus) location.reload();  // the page's steps, output and buttons as they are now
}

function follow() {
  const source = new EventSource(`/api/v1${T}/executions/${encodeURIComponent(id)}/events`);
  const live = new Map();
  source.addEventListener("step", (ev) => {
    const s = JSON.parse(ev.data);
    live.set(s.node, { status: s.status, items: s.items, pinned: s.pinned, replayed: s.replayed });
    canvas?.setStatus(new Map([...(detail ? statusesOf(detail.steps) : []), ...live]));
    detail = null;
    if (canvas?.selected.size) showNode();
  });
  source.addEventListener("execution", (ev) => {
    const e = JSON.parse(ev.data);
    document.getElementById("execution-status").textContent = e.status + (e.paused_at ? ` before ${e.paused_at}` : "");
    if (FINAL.has(e.status)) { source.close(); finished(e.status); }
  });
  source.onerror = async () => {
    if (source.readyState !== EventSource.CLOSED) return;
    for (;;) {  // no events stream on this server: poll the detail instead
      const d = await refresh();
      if (d && FINAL.has(d.status)) return finished(d.status);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  };
}

async function start() {
  if (definition && panel) {
    const r = await api("/node-types");
    if (r.ok) for (const t of r.data.node_types) types.set(t.type, t);
    canvas = new Canvas(document.getElementById("canvas"), { readOnly: true, specOf: (t) => types.get(t) || null,
                                                            onSelect: () => showNode() });
    canvas.setDoc(structuredClone(definition));
    if (!hasPositions(canvas.doc)) canvas.tidy();
    canvas.fit();
  }
  await refresh();
  root.dataset.ready = "yes";
  if (!FINAL.has(initialStatus)) follow();
}

start();
