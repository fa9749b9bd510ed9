// Debugging in the builder: test runs of the draft on the canvas (statuses stream in over the
// API's events stream), pinned outputs, "run from here", step mode, and each node's last input
// and output in the side panel. Talks only to the debugging API (test-runs, events, pins, continue).
"use strict";

import { FINAL, api, explain } from "./api.js";
import { h, stepSection } from "./panel.js";

const $ = (id) => document.getElementById(id);
const showContinue = (visible) => { if ($("continue")) $("continue").hidden = !visible; };

export class Debugger {
  constructor({ tenant, flowPath, canvas, canEdit, message, draft, showPanel, runNow }) {
    Object.assign(this, { tenant, flowPath, canvas, canEdit, message, draft, showPanel });
    this.T = `/tenants/${encodeURIComponent(tenant)}`;
    this.pins = {};
    this.executionId = null;
    this.detail = null;        // the last execution's detail (steps with input and output)
    this.statuses = new Map();
    this.source = null;
    $("test-run")?.addEventListener("click", () => this.openDialog());
    $("run-start")?.addEventListener("click", () => this.startFromDialog());
    $("run-cancel")?.addEventListener("click", () => $("run-dialog").close());
    $("continue")?.addEventListener("click", () => this.continueRun());
    if (runNow) $("run-now")?.addEventListener("click", () => this.runNow());
  }

  async loadPins() {
    const r = await api(`${this.flowPath}/pins`);
    this.pins = r.ok ? r.data.pins || {} : {};
    this.canvas.setPins(Object.keys(this.pins));
  }

  // ---- starting runs ---------------------------------------------------------------------------

  async openDialog() {
    const select = $("run-past");
    const name = decodeURIComponent(this.flowPath.split("/flows/")[1]);
    const r = await api(`${this.T}/executions?flow=${encodeURIComponent(name)}&limit=20`);
    const rows = r.ok ? r.data.items : [];
    select.replaceChildren(...(rows.length ? rows.map((e) => h("option", { value: e.id,
      text: `${new Date(e.created_at * 1000).toLocaleString()} · ${e.trigger} · ${e.status} · ${e.id}` }))
      : [h("option", { value: "", text: "no executions of this flow yet" })]));
    $("run-error").textContent = "";
    $("run-dialog").showModal();
  }

  async startFromDialog() {
    const past = document.querySelector('input[name="input-kind"]:checked').value === "past";
    const body = { step_mode: $("run-step").checked };
    if (past) {
      if (!$("run-past").value) { $("run-error").textContent = "choose a past execution, or give items as JSON"; return; }
      body.input_from = $("run-past").value;
    } else {
      let items;
      try { items = JSON.parse($("run-input").value || "[{}]"); } catch (err) {
        $("run-error").textContent = `the input is not valid JSON: ${err.message}`;
        return;
      }
      if (!Array.isArray(items)) items = [items];
      if (!items.every((i) => i && typeof i === "object" && !Array.isArray(i))) {
        $("run-error").textContent = "the input must be an object or a list of objects";
        return;
      }
      body.input = items;
    }
    if (await this.start(body)) $("run-dialog").close();
  }

  /** Start a test run of the draft as it is on the canvas (saved or not). */
  async start(options) {
    const r = await api(`${this.flowPath}/test-runs`, { method: "POST", body: { definition: this.draft(), ...options } });
    if (!r.ok) {
      const why = explain(r);
      $("run-error").textContent = why;
      this.message(`Test run not started: ${why}`, "error");
      return false;
    }
    this.executionId = r.data.execution_id;
    this.detail = null;
    this.statuses = new Map();
    this.canvas.setStatus(this.statuses);
    showContinue(false);
    this.message(`Test run ${this.executionId} started…`);
    this.follow(r.data.events || `/api/v1${this.T}/executions/${this.executionId}/events`);
    return true;
  }

  async runNow() {
    const r = await api(`${this.flowPath}/run`, { method: "POST", body: { input: [{}] } });
    if (!r.ok) return this.message(`Not started: ${explain(r)}`, "error");
    this.executionId = r.data.execution_id;
    this.statuses = new Map();
    this.detail = null;
    this.message(`Run ${this.executionId} started…`);
    this.follow(`/api/v1${this.T}/executions/${this.executionId}/events`);
  }

  async continueRun() {
    showContinue(false);  // hidden now: the stream shows it again at the next pause, maybe before this answer
    this.message("Continuing…");
    const r = await api(`${this.T}/executions/${this.executionId}/continue`, { method: "POST" });
    if (!r.ok) {
      showContinue(true);
      this.message(`Could not continue: ${explain(r)}`, "error");
    }
  }

  // ---- following a run -------------------------------------------------------------------------

  follow(url) {
    this.source?.close();
    const id = this.executionId;
    const source = new EventSource(url);
    this.source = source;
    source.addEventListener("step", (ev) => {
      const s = JSON.parse(ev.data);
      this.statuses.set(s.node, { status: s.status, items: s.items, pinned: s.pinned, replayed: s.replayed });
      this.canvas.setStatus(this.statuses);
      this.detail = null;
    });
    source.addEventListener("execution", (ev) => this.onExecution(id, JSON.parse(ev.data)));
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED && this.source === source) this.poll(id);  // no stream: poll instead
    };
  }

  async onExecution(id, e) {
    if (id !== this.executionId) return;
    const paused = e.status === "waiting" && e.paused_at;
    showContinue(paused && this.canEdit);
    if (paused) this.message(`Paused before ${e.paused_at}: press Continue to run it`);
    if (!FINAL.has(e.status)) return;
    this.source?.close();
    this.source = null;
    await this.finish(id, e.status, e.error);
  }

  async poll(id) {
    while (id === this.executionId) {
      const r = await api(`${this.T}/executions/${id}`);
      if (!r.ok) return this.message(`Could not follow the run: ${explain(r)}`, "error");
      this.useDetail(r.data);
      if (FINAL.has(r.data.status)) return this.finish(id, r.data.status, r.data.error);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  useDetail(detail) {
    this.detail = detail;
    this.statuses = new Map();
    for (const s of detail.steps) {
      this.statuses.set(s.node, { status: s.status, items: (s.items || []).length, pinned: s.pinned, replayed: s.replayed });
    }
    this.canvas.setStatus(this.statuses);
  }

  async finish(id, status, error) {
    showContinue(false);
    const r = await api(`${this.T}/executions/${id}`);
    if (r.ok) this.useDetail(r.data);
    const why = error ? `: ${error.node ? error.node + ": " : ""}${error.message || error}` : "";
    this.message(`Run ${status}${why} `, status === "succeeded" ? "ok" : "error");
    $("message").append(h("a", { href: `/t/${encodeURIComponent(this.tenant)}/executions/${id}`, text: "Open the execution" }));
    this.showPanel();
  }

  // ---- the selected node ---------------------------------------------------------------------

  /** Add the node's last run data and its debug actions under its form. */
  async showNode(panel, nodeId) {
    const token = String(Math.random());
    panel.dataset.token = token;
    const box = h("div", { class: "debug-actions" });
    if (this.canEdit) {
      const pinned = Object.prototype.hasOwnProperty.call(this.pins, nodeId);
      box.append(h("button", { type: "button", class: "secondary small", text: "Run from here",
                               onclick: () => this.start({ start_at: nodeId, ...(this.executionId ? { input_from: this.executionId } : {}) }) }));
      if (pinned) {
        box.append(h("button", { type: "button", class: "secondary small", text: "Unpin", onclick: () => this.unpin(nodeId) }),
          h("p", { class: "hint", text: `Pinned: test runs use these ${this.pins[nodeId].length} item(s) instead of running it.` }));
      } else {
        box.append(h("button", { type: "button", class: "secondary small", text: "Pin output", onclick: () => this.pin(nodeId) }));
      }
    }
    if (!this.executionId) {
      panel.append(box);
      return;
    }
    if (!this.detail) {
      const r = await api(`${this.T}/executions/${this.executionId}`);
      if (r.ok) this.detail = r.data;
    }
    if (panel.dataset.token !== token || panel.dataset.nodeId !== nodeId) return;  // another node was chosen meanwhile
    panel.append(box);
    if (this.detail) panel.append(stepSection(nodeId, this.detail.steps, { title: "Last run" }));
  }

  async pin(nodeId) {
    const steps = (this.detail?.steps || []).filter((s) => s.node === nodeId && s.status === "succeeded");
    if (!steps.length) return this.message(`Run the flow first: ${nodeId} has no output to pin yet`, "error");
    const items = steps[steps.length - 1].items || [];
    const r = await api(`${this.flowPath}/pins/${encodeURIComponent(nodeId)}`, { method: "PUT", body: { items } });
    if (!r.ok) return this.message(`Not pinned: ${explain(r)}`, "error");
    this.message(`Pinned the output of ${nodeId} (${items.length} item(s))`, "ok");
    await this.loadPins();
    this.showPanel();
  }

  async unpin(nodeId) {
    const r = await api(`${this.flowPath}/pins/${encodeURIComponent(nodeId)}`, { method: "DELETE" });
    if (!r.ok) return this.message(`Not unpinned: ${explain(r)}`, "error");
    this.message(`Unpinned ${nodeId}`, "ok");
    await this.loadPins();
    this.showPanel();
  }
}
