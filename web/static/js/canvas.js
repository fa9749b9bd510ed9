// The flow canvas: nodes as positioned DOM boxes, edges as SVG curves, in one pannable, zoomable
// "world". It draws a flow document ({nodes, edges}) and edits it in place; the page around it
// (builder.js, execution.js) owns saving, undo and the side panel, and learns of changes through
// the callbacks `onBeforeChange` (take an undo snapshot), `onChange` and `onSelect`.
"use strict";

export const NODE_WIDTH = 180;
const PORT_GAP = 24;
const SVG_NS = "http://www.w3.org/2000/svg";

/** The output names of a node: fixed by its type, from its params (switch), plus "error" when
 *  its failures go to an output (on_error: output). Mirrors NodeType.output_names on the server. */
export function outputsOf(node, spec) {
  let names = ["main"];
  if (spec && Array.isArray(spec.outputs)) names = [...spec.outputs];
  else if (spec && spec.outputs === null) names = switchOutputs(node.params || {});
  if (node.on_error === "output" && !names.includes("error")) names.push("error");
  return names;
}

function switchOutputs(params) {
  const names = (Array.isArray(params.rules) ? params.rules : [])
    .filter((r) => r && typeof r === "object" && typeof r.output === "string").map((r) => r.output);
  if (params.fallback) names.push(params.fallback);
  return [...new Set(names)];
}

export function nodeHeight(outputs) {
  return Math.max(56, outputs.length * PORT_GAP + 16);
}

export class Canvas {
  constructor(el, { readOnly = false, specOf = () => null, onBeforeChange = () => {}, onChange = () => {},
                    onSelect = () => {} } = {}) {
    this.el = el;
    this.readOnly = readOnly;
    this.specOf = specOf;
    this.onBeforeChange = onBeforeChange;
    this.onChange = onChange;
    this.onSelect = onSelect;
    this.doc = { nodes: [], edges: [] };
    this.view = { x: 40, y: 40, k: 1 };
    this.selected = new Set();       // node ids
    this.selectedEdges = new Set();  // edge indexes in doc.edges
    this.status = new Map();         // node id -> {status, items, pinned, replayed}
    this.errors = new Map();         // node id -> [messages]
    this.pins = new Set();
    el.classList.add("flow-canvas");
    this.world = document.createElement("div");
    this.world.className = "world";
    this.svg = document.createElementNS(SVG_NS, "svg");
    this.svg.classList.add("edges");
    this.world.append(this.svg);
    el.append(this.world);
    this.zoomBar = document.createElement("div");
    this.zoomBar.className = "zoom-bar";
    for (const [label, title, fn] of [["+", "Zoom in", () => this.zoomBy(1.2)], ["−", "Zoom out", () => this.zoomBy(1 / 1.2)],
                                      ["⤢", "Fit to screen", () => this.fit()]]) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = label; b.title = title; b.setAttribute("aria-label", title);
      b.addEventListener("click", fn);
      this.zoomBar.append(b);
    }
    el.append(this.zoomBar);
    el.addEventListener("pointerdown", (e) => this._pointerDown(e));
    el.addEventListener("wheel", (e) => this._wheel(e), { passive: false });
    this._applyView();
  }

  setDoc(doc) {
    this.doc = doc;
    doc.nodes = doc.nodes || [];
    doc.edges = doc.edges || [];
    const ids = new Set(doc.nodes.map((n) => n.id));
    this.selected = new Set([...this.selected].filter((id) => ids.has(id)));
    this.selectedEdges.clear();
    this.render();
  }

  node(id) { return this.doc.nodes.find((n) => n.id === id); }

  // ---- drawing -------------------------------------------------------------------------------

  render() {
    for (const old of this.world.querySelectorAll(".node")) old.remove();
    for (const node of this.doc.nodes) this.world.append(this._nodeElement(node));
    this._drawEdges();
  }

  _nodeElement(node) {
    const spec = this.specOf(node.type);
    const outputs = outputsOf(node, spec);
    const [x, y] = positionOf(node);
    const box = document.createElement("div");
    box.className = "node";
    box.dataset.nodeId = node.id;
    box.dataset.type = node.type;
    box.tabIndex = -1;
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", `Node ${node.id}`);
    box.style.left = `${x}px`;
    box.style.top = `${y}px`;
    box.style.height = `${nodeHeight(outputs)}px`;
    if (spec && spec.trigger) box.classList.add("trigger");
    if (!spec) box.classList.add("unknown");
    if (this.selected.has(node.id)) box.classList.add("selected");
    const title = document.createElement("div");
    title.className = "node-title";
    title.textContent = node.name || node.id;
    const sub = document.createElement("div");
    sub.className = "node-type";
    sub.textContent = spec ? spec.label || spec.type : `${node.type} (unknown type)`;
    box.append(title, sub);
    const badges = document.createElement("div");
    badges.className = "badges";
    const st = this.status.get(node.id);
    if (st) {
      box.classList.add(`st-${st.status}`);
      box.dataset.status = st.status;
      const badge = document.createElement("span");
      badge.className = "badge run";
      badge.textContent = `${statusIcon(st.status)} ${st.items ?? 0} item${st.items === 1 ? "" : "s"}`;
      badge.title = st.status + (st.replayed ? " (replayed)" : "") + (st.pinned ? " (pinned)" : "");
      badges.append(badge);
    }
    if (this.pins.has(node.id)) {
      const pin = document.createElement("span");
      pin.className = "badge pin";
      pin.textContent = "📌";
      pin.title = "pinned output: test runs use it instead of running this node";
      pin.setAttribute("aria-label", "pinned");
      badges.append(pin);
    }
    const errs = this.errors.get(node.id);
    if (errs && errs.length) {
      box.classList.add("invalid");
      const bad = document.createElement("span");
      bad.className = "badge error";
      bad.textContent = `⚠ ${errs.length}`;
      bad.title = errs.join("\n");
      badges.append(bad);
    }
    box.append(badges);
    if (!(spec && spec.trigger)) {
      const port = document.createElement("span");
      port.className = "port in";
      port.title = "input";
      port.style.top = `${nodeHeight(outputs) / 2}px`;
      box.append(port);
    }
    outputs.forEach((name, i) => {
      const port = document.createElement("span");
      port.className = "port out";
      port.dataset.output = name;
      port.title = `output ${name}`;
      port.setAttribute("aria-label", `output ${name} of ${node.id}`);
      port.style.top = `${this._portY(outputs, i)}px`;
      if (outputs.length > 1 || name !== "main") {
        const label = document.createElement("span");
        label.className = "port-label";
        label.textContent = name;
        port.append(label);
      }
      box.append(port);
    });
    return box;
  }

  _portY(outputs, i) {
    return nodeHeight(outputs) / 2 + (i - (outputs.length - 1) / 2) * PORT_GAP;
  }

  /** World coordinates of a node's output port (name) or, with name null, its input port. */
  portPoint(node, name) {
    const [x, y] = positionOf(node);
    const outputs = outputsOf(node, this.specOf(node.type));
    if (name === null) return [x, y + nodeHeight(outputs) / 2];
    const i = Math.max(0, outputs.indexOf(name));
    return [x + NODE_WIDTH, y + this._portY(outputs, i)];
  }

  _drawEdges() {
    this.svg.replaceChildren();
    this.doc.edges.forEach((edge, i) => {
      const from = this.node(edge.from), to = this.node(edge.to);
      if (!from || !to) return;
      const d = curve(this.portPoint(from, edge.output || "main"), this.portPoint(to, null));
      const hit = document.createElementNS(SVG_NS, "path");
      hit.setAttribute("d", d);
      hit.classList.add("edge-hit");
      hit.dataset.edge = String(i);
      const line = document.createElementNS(SVG_NS, "path");
      line.setAttribute("d", d);
      line.classList.add("edge");
      line.dataset.from = edge.from;
      line.dataset.to = edge.to;
      line.dataset.output = edge.output || "main";
      if (this.selectedEdges.has(i)) line.classList.add("selected");
      this.svg.append(line, hit);
    });
  }

  setStatus(map) { this.status = map; this.render(); }
  setErrors(map) { this.errors = map; this.render(); }
  setPins(ids) { this.pins = new Set(ids); this.render(); }

  // ---- view ----------------------------------------------------------------------------------

  _applyView() {
    const { x, y, k } = this.view;
    this.world.style.transform = `translate(${x}px, ${y}px) scale(${k})`;
    this.el.style.backgroundPosition = `${x}px ${y}px`;
    this.el.style.backgroundSize = `${20 * k}px ${20 * k}px`;
  }

  toWorld(clientX, clientY) {
    const r = this.el.getBoundingClientRect();
    return [(clientX - r.left - this.view.x) / this.view.k, (clientY - r.top - this.view.y) / this.view.k];
  }

  zoomBy(factor, clientX, clientY) {
    const r = this.el.getBoundingClientRect();
    const cx = clientX ?? r.left + r.width / 2, cy = clientY ?? r.top + r.height / 2;
    const [wx, wy] = this.toWorld(cx, cy);
    const k = Math.min(2.5, Math.max(0.2, this.view.k * factor));
    this.view = { k, x: cx - r.left - wx * k, y: cy - r.top - wy * k };
    this._applyView();
  }

  /** Show every node: zoom out if needed (never in beyond 1) and centre the flow. */
  fit() {
    if (!this.doc.nodes.length) return;
    const r = this.el.getBoundingClientRect();
    const xs = this.doc.nodes.map((n) => positionOf(n)[0]), ys = this.doc.nodes.map((n) => positionOf(n)[1]);
    const minX = Math.min(...xs), minY = Math.min(...ys);
    const w = Math.max(...xs) + NODE_WIDTH - minX, h = Math.max(...ys) + 90 - minY;
    const k = Math.max(0.2, Math.min(1, (r.width - 60) / w, (r.height - 60) / h));
    this.view = { k, x: (r.width - w * k) / 2 - minX * k, y: (r.height - h * k) / 2 - minY * k };
    this._applyView();
  }

  _wheel(e) {
    e.preventDefault();
    if (e.ctrlKey || e.metaKey) this.zoomBy(Math.exp(-e.deltaY / 300), e.clientX, e.clientY);
    else {
      this.view.x -= e.deltaX;
      this.view.y -= e.deltaY;
      this._applyView();
    }
  }

  // ---- selection -----------------------------------------------------------------------------

  select(ids, edges = []) {
    this.selected = new Set(ids);
    this.selectedEdges = new Set(edges);
    for (const box of this.world.querySelectorAll(".node")) box.classList.toggle("selected", this.selected.has(box.dataset.nodeId));
    this._drawEdges();
    this.onSelect([...this.selected]);
  }

  // ---- editing (each change: onBeforeChange, mutate, render, onChange) -----------------------

  addNode(type, x, y, extra = {}) {
    const spec = this.specOf(type);
    this.onBeforeChange();
    const node = { id: uniqueId(type, this.doc.nodes), type, params: defaultParams(spec), ...extra,
                   position: [Math.round(x), Math.round(y)] };
    this.doc.nodes.push(node);
    this.render();
    this.select([node.id]);
    this.onChange("add");
    return node;
  }

  /** Connect an output to a node's input; refuses what the server would refuse anyway
   *  (a duplicate, into a trigger, into itself). Returns a reason when refused. */
  connect(from, output, to) {
    const target = this.node(to);
    if (!target || from === to) return "a node cannot feed itself";
    const spec = this.specOf(target.type);
    if (spec && spec.trigger) return `${to} is a trigger: it has no input`;
    if (this.doc.edges.some((e) => e.from === from && e.to === to && (e.output || "main") === output)) return "already connected";
    this.onBeforeChange();
    this.doc.edges.push(output === "main" ? { from, to } : { from, to, output });
    this._drawEdges();
    this.onChange("connect");
    return null;
  }

  deleteSelection() {
    if (!this.selected.size && !this.selectedEdges.size) return;
    this.onBeforeChange();
    const gone = this.selected;
    this.doc.edges = this.doc.edges.filter((e, i) => !this.selectedEdges.has(i) && !gone.has(e.from) && !gone.has(e.to));
    this.doc.nodes = this.doc.nodes.filter((n) => !gone.has(n.id));
    this.selected = new Set();
    this.selectedEdges = new Set();
    this.render();
    this.onSelect([]);
    this.onChange("delete");
  }

  /** Layered left-to-right layout: each node one column after its furthest predecessor (loop
   *  edges back into a split_in_batches are ignored), rows ordered by their predecessors' rows. */
  tidy() {
    if (!this.doc.nodes.length) return;
    this.onBeforeChange();
    const ids = this.doc.nodes.map((n) => n.id);
    const preds = new Map(ids.map((id) => [id, []]));
    const back = backEdges(this.doc);
    this.doc.edges.forEach((e, i) => { if (!back.has(i) && preds.has(e.to) && preds.has(e.from)) preds.get(e.to).push(e.from); });
    const layer = new Map();
    const depth = (id, seen = new Set()) => {
      if (layer.has(id)) return layer.get(id);
      if (seen.has(id)) return 0;
      seen.add(id);
      const d = preds.get(id).length ? 1 + Math.max(...preds.get(id).map((p) => depth(p, seen))) : 0;
      layer.set(id, d);
      return d;
    };
    ids.forEach((id) => depth(id));
    const columns = [];
    for (const id of ids) (columns[layer.get(id)] ||= []).push(id);
    const row = new Map();
    columns.forEach((col) => {
      const bary = (id) => {
        const ps = preds.get(id).filter((p) => row.has(p));
        return ps.length ? ps.reduce((s, p) => s + row.get(p), 0) / ps.length : ids.indexOf(id);
      };
      col.sort((a, b) => bary(a) - bary(b));
      col.forEach((id, i) => row.set(id, i));
    });
    const tallest = Math.max(...columns.map((c) => (c ? c.length : 0)));
    columns.forEach((col, c) => (col || []).forEach((id, i) => {
      const offset = (tallest - col.length) * 55;
      this.node(id).position = [c * (NODE_WIDTH + 80), offset + i * 110];
    }));
    this.render();
    this.onChange("tidy");
  }

  // ---- gestures ------------------------------------------------------------------------------

  _pointerDown(e) {
    if (e.button === 2 || e.target.closest(".zoom-bar")) return;
    const port = e.target.closest(".port.out");
    const box = e.target.closest(".node");
    const hit = e.target.closest(".edge-hit");
    this.el.focus({ preventScroll: true });
    if (port && box && !this.readOnly) return this._gesture(e, this._connectGesture(box.dataset.nodeId, port.dataset.output, e));
    if (box && e.button === 0 && !e.altKey) return this._gesture(e, this._nodeGesture(box.dataset.nodeId, e));
    if (hit && !this.readOnly) {
      const i = Number(hit.dataset.edge);
      const edges = e.shiftKey ? [...this.selectedEdges, i] : [i];
      this.select(e.shiftKey ? [...this.selected] : [], edges);
      return;
    }
    if (e.button === 1 || e.altKey || this.readOnly) return this._gesture(e, this._panGesture(e));
    this._gesture(e, this._rubberGesture(e));
  }

  _gesture(e, { move, up }) {
    e.preventDefault();
    const onMove = (ev) => move(ev);
    const onUp = (ev) => {
      window.removeEventListener("pointermove", onMove);
      window.removeEventListener("pointerup", onUp);
      up(ev);
    };
    window.addEventListener("pointermove", onMove);
    window.addEventListener("pointerup", onUp);
  }

  _panGesture(e) {
    const start = { x: e.clientX, y: e.clientY, vx: this.view.x, vy: this.view.y };
    let moved = false;
    return {
      move: (ev) => {
        moved = true;
        this.view.x = start.vx + ev.clientX - start.x;
        this.view.y = start.vy + ev.clientY - start.y;
        this._applyView();
      },
      up: () => { if (!moved) this.select([]); },
    };
  }

  _rubberGesture(e) {
    const r = this.el.getBoundingClientRect();
    const band = document.createElement("div");
    band.className = "rubber";
    const start = [e.clientX, e.clientY];
    const keep = e.shiftKey ? new Set(this.selected) : new Set();
    let moved = false;
    const rect = (ev) => [Math.min(start[0], ev.clientX), Math.min(start[1], ev.clientY),
                          Math.abs(ev.clientX - start[0]), Math.abs(ev.clientY - start[1])];
    return {
      move: (ev) => {
        if (!moved && Math.hypot(ev.clientX - start[0], ev.clientY - start[1]) < 4) return;
        if (!moved) this.el.append(band);
        moved = true;
        const [x, y, w, h] = rect(ev);
        Object.assign(band.style, { left: `${x - r.left}px`, top: `${y - r.top}px`, width: `${w}px`, height: `${h}px` });
      },
      up: (ev) => {
        band.remove();
        if (!moved) return this.select([...keep]);
        const [x, y, w, h] = rect(ev);
        const inside = [...this.world.querySelectorAll(".node")].filter((b) => {
          const br = b.getBoundingClientRect();
          return br.right > x && br.left < x + w && br.bottom > y && br.top < y + h;
        }).map((b) => b.dataset.nodeId);
        this.select([...keep, ...inside]);
      },
    };
  }

  _nodeGesture(id, e) {
    if (e.shiftKey) {
      const next = new Set(this.selected);
      if (next.has(id)) next.delete(id); else next.add(id);
      this.select([...next]);
    } else if (!this.selected.has(id)) this.select([id]);
    const moving = [...this.selected].map((nid) => [nid, [...positionOf(this.node(nid))]]);
    const start = [e.clientX, e.clientY];
    let moved = false;
    return {
      move: (ev) => {
        if (this.readOnly) return;
        const dx = (ev.clientX - start[0]) / this.view.k, dy = (ev.clientY - start[1]) / this.view.k;
        if (!moved && Math.hypot(dx, dy) < 3) return;
        if (!moved) this.onBeforeChange();
        moved = true;
        for (const [nid, [x, y]] of moving) {
          const node = this.node(nid);
          node.position = [Math.round(x + dx), Math.round(y + dy)];
          const box = this.world.querySelector(`.node[data-node-id="${CSS.escape(nid)}"]`);
          box.style.left = `${node.position[0]}px`;
          box.style.top = `${node.position[1]}px`;
        }
        this._drawEdges();
      },
      up: () => {
        if (moved) this.onChange("move");
        else if (!e.shiftKey && this.selected.size > 1) this.select([id]);
      },
    };
  }

  _connectGesture(from, output, e) {
    const line = document.createElementNS(SVG_NS, "path");
    line.classList.add("edge", "drafting");
    this.svg.append(line);
    const origin = this.portPoint(this.node(from), output);
    const draw = (ev) => line.setAttribute("d", curve(origin, this.toWorld(ev.clientX, ev.clientY)));
    draw(e);
    this.el.classList.add("connecting");
    return {
      move: draw,
      up: (ev) => {
        line.remove();
        this.el.classList.remove("connecting");
        const target = document.elementFromPoint(ev.clientX, ev.clientY)?.closest(".node");
        if (target) {
          const refused = this.connect(from, output, target.dataset.nodeId);
          if (refused && target.dataset.nodeId !== from) this.el.dispatchEvent(new CustomEvent("canvas-message", { detail: refused }));
        }
      },
    };
  }
}

// ---- helpers -----------------------------------------------------------------------------------

export function positionOf(node) {
  const p = node.position;
  if (Array.isArray(p) && p.length === 2 && p.every(Number.isFinite)) return p;
  if (p && typeof p === "object" && Number.isFinite(p.x) && Number.isFinite(p.y)) return [p.x, p.y];
  return [0, 0];
}

export function hasPositions(doc) {
  return (doc.nodes || []).every((n) => Array.isArray(n.position) && n.position.length === 2);
}

function curve([x1, y1], [x2, y2]) {
  const dx = Math.max(40, Math.abs(x2 - x1) / 2);
  return `M ${x1} ${y1} C ${x1 + dx} ${y1}, ${x2 - dx} ${y2}, ${x2} ${y2}`;
}

function statusIcon(status) {
  return { succeeded: "✓", failed: "✕", running: "…", waiting: "⏸", skipped: "–", cancelled: "⊘" }[status] || "•";
}

/** A new id for a node of `type`: the type itself, then type_2, type_3, ... */
export function uniqueId(type, nodes, taken = new Set()) {
  const used = new Set([...nodes.map((n) => n.id), ...taken]);
  if (!used.has(type)) return type;
  let i = 2;
  while (used.has(`${type}_${i}`)) i += 1;
  return `${type}_${i}`;
}

function defaultParams(spec) {
  const params = {};
  for (const [name, p] of Object.entries((spec && spec.params) || {})) {
    if (p.required && p.default !== null && p.default !== undefined) params[name] = structuredClone(p.default);
  }
  return params;
}

/** Indexes of edges that go back into a split_in_batches from its loop body (not layering edges). */
function backEdges(doc) {
  const succ = new Map();
  doc.edges.forEach((e) => (succ.get(e.from) || succ.set(e.from, []).get(e.from)).push(e));
  const back = new Set();
  for (const sib of doc.nodes.filter((n) => n.type === "split_in_batches")) {
    const body = new Set();
    const stack = (succ.get(sib.id) || []).filter((e) => e.output === "loop").map((e) => e.to);
    while (stack.length) {
      const cur = stack.pop();
      if (cur === sib.id || body.has(cur)) continue;
      body.add(cur);
      for (const e of succ.get(cur) || []) stack.push(e.to);
    }
    doc.edges.forEach((e, i) => { if (e.to === sib.id && (body.has(e.from) || e.from === sib.id)) back.add(i); });
  }
  return back;
}
