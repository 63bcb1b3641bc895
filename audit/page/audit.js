// The audit page: a thin client of /api/audit. Every value from the API is written with textContent, never as
// HTML, so nothing in a webhook payload can inject markup. The token stays in this tab (sessionStorage).
"use strict";

const $ = (id) => document.getElementById(id);
let nextCursor = null;

function token() { return sessionStorage.getItem("keytrail-token") || ""; }

function say(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind || "";
}

async function api(path) {
  return answer(await fetch(path, { headers: { Authorization: "Bearer " + token() } }));
}

// Searches go in a POST body: a filter value (a raw key above all) in a URL would reach proxy and load balancer logs.
async function searchApi(filters) {
  return answer(await fetch('/api/audit/search', {
    method: "POST",
    headers: { Authorization: "Bearer " + token(), "Content-Type": "application/json" },
    body: JSON.stringify(filters),
  }));
}

async function answer(response) {
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const reasons = { 401: "the token was not accepted", 404: "the audit API is off (no [api] tokens configured)" };
    throw new Error(body.error || reasons[response.status] || "HTTP " + response.status);
  }
  return body;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
}

function keyLabel(entity) {
  if (!entity.fingerprint) return entity.uid || "";
  return (entity.prefix || "") + "…" + (entity.last4 || "") + "  " + entity.fingerprint;
}

function render(records, append) {
  const body = document.querySelector("#records tbody");
  if (!append) body.replaceChildren();
  for (const record of records) {
    const row = document.createElement("tr");
    cell(row, record.time.replace("T", " ").replace("Z", ""));
    cell(row, record.tenant);
    cell(row, record.topic);
    cell(row, record.entity.type + (record.entity.name ? ": " + record.entity.name : ""));
    cell(row, keyLabel(record.entity), "key");
    cell(row, record.actor ? record.actor.uid : "");
    cell(row, record.record_id, "record");
    row.addEventListener("click", () => show(record.record_id));
    body.appendChild(row);
  }
}

function filters(cursor) {
  const body = {};
  for (const [name, value] of new FormData($("filters"))) {
    if (String(value).trim()) body[name] = String(value).trim();
  }
  body.limit = "100";
  if (cursor) body.cursor = cursor;
  return body;
}

async function search(cursor) {
  say("searching…");
  try {
    const page = await searchApi(filters(cursor));
    render(page.records, Boolean(cursor));
    nextCursor = page.next_cursor;
    $("more").hidden = !nextCursor;
    const shown = document.querySelectorAll("#records tbody tr").length;
    say(shown + " record" + (shown === 1 ? "" : "s") + (nextCursor ? " (more below)" : ""), "ok");
  } catch (error) {
    say(error.message, "error");
  }
}

async function show(recordId) {
  try {
    const found = await api("/api/audit/records/" + encodeURIComponent(recordId));
    $("detail-id").textContent = recordId;
    const list = $("deliveries");
    list.replaceChildren();
    for (const delivery of found.deliveries || []) {
      const line = document.createElement("div");
      line.className = "state-" + delivery.state;
      line.textContent = delivery.sink + ": " + delivery.state +
        (delivery.attempts ? " after " + delivery.attempts + " attempt(s)" : "") +
        (delivery.reason ? " — " + delivery.reason : "");
      list.appendChild(line);
    }
    $("detail-json").textContent = JSON.stringify(found, null, 2);
    $("detail").hidden = false;
    $("detail").scrollIntoView({ behavior: "smooth" });
  } catch (error) {
    say(error.message, "error");
  }
}

async function verify() {
  say("verifying the hash chains…");
  try {
    const result = await api("/api/audit/verify");
    const broken = (result.tenants || []).filter((t) => !t.ok);
    if (result.ok) say("every chain verifies (" + (result.tenants || []).length + " tenants)", "ok");
    else say("chain broken for " + broken.map((t) => t.tenant).join(", ") + ": see /api/audit/verify", "error");
  } catch (error) {
    say(error.message, "error");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("keytrail-token", $("token").value);
    search(null);
  });
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); search(null); });
  $("more").addEventListener("click", () => search(nextCursor));
  $("verify").addEventListener("click", verify);
  $("close").addEventListener("click", () => { $("detail").hidden = true; });
  if (token()) search(null);
  else say("enter an API token (from [api] tokens) to read the audit trail");
});
