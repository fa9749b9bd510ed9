// Calls to the REST API from console pages: the session cookie plus the CSRF token the page
// carries in <meta name="csrf-token">, JSON in and out; failures come back as {ok: false,
// status, problem} with the API's RFC 9457 document, so callers can show its `detail` and `errors`.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

export async function api(path, { method = "GET", body } = {}) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = csrf();
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(`/api/v1${path}`, { method, headers, credentials: "same-origin",
                                                body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    return { ok: false, status: 0, problem: { detail: `the server did not answer (${err.message}); try again` } };
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text.slice(0, 200) }; }
  if (response.ok) return { ok: true, status: response.status, data };
  return { ok: false, status: response.status, problem: data || { detail: response.statusText } };
}

/** One line a person can act on, from a failed call. */
export function explain(result) {
  const p = result.problem || {};
  if (result.status === 403) return `not allowed: ${p.detail || "your role may not do this"}`;
  return p.detail || `the server answered ${result.status}`;
}

export const FINAL = new Set(["succeeded", "failed", "cancelled"]);
