// The headwater page: the queue with live progress, adding downloads, cancel, remove, pause.
// Plain JavaScript, no build step. Talks to /api/v1 with the session cookie the login sets,
// and follows /api/v1/events (server-sent events) for every change.
"use strict";

const API = "/api/v1";
const ENDED = new Set(["completed", "failed", "cancelled"]);
const downloads = new Map(); // id -> record
const sources = new Map(); // name -> source view
let events = null;
let drawing = false;

const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, options);
  if (response.status === 401 && path !== "/session") {
    showLogin("");
    throw new Error("not logged in");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error(data && data.error ? data.error.message : `${response.status} ${response.statusText}`);
  }
  return data;
}

// -- logging in ---------------------------------------------------------------

function showLogin(message) {
  if (events) { events.close(); events = null; }
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("connection").textContent = "logged out";
  $("connection").className = "";
}

async function login(token) {
  await api("POST", "/session", { token });
  $("login").hidden = true;
  start();
}

// -- following the server ----------------------------------------------------------

async function start() {
  $("app").hidden = false;
  $("logout").hidden = false;
  try {
    for (const view of await api("GET", "/sources")) sources.set(view.name, view);
  } catch (error) {
    return;
  }
  drawSources();
  follow();
}

function follow() {
  if (events) events.close();
  events = new EventSource(API + "/events");
  events.addEventListener("open", () => {
    $("connection").textContent = "live";
    $("connection").className = "live";
  });
  events.addEventListener("error", async () => {
    $("connection").textContent = "reconnecting…";
    $("connection").className = "";
    if (events && events.readyState === EventSource.CLOSED) {
      try {
        await api("GET", "/health"); // shows the login on a 401
        setTimeout(follow, 2000);
      } catch (error) { /* the login is shown, or the server is gone: the user reloads */ }
    }
  });
  events.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    downloads.clear();
    for (const record of data.downloads) downloads.set(record.id, record);
    sources.clear();
    for (const view of data.sources) sources.set(view.name, view);
    $("more").hidden = data.downloads.length === 0;
    drawSources();
    redraw();
  });
  events.addEventListener("download", (event) => {
    const record = JSON.parse(event.data);
    const known = downloads.get(record.id);
    if (!known || record.updated_at >= known.updated_at) downloads.set(record.id, record);
    redraw();
  });
  events.addEventListener("removed", (event) => {
    downloads.delete(JSON.parse(event.data).id);
    redraw();
  });
  events.addEventListener("progress", (event) => {
    for (const figures of JSON.parse(event.data).downloads) {
      const known = downloads.get(figures.id);
      if (known && known.state === "running") Object.assign(known, figures);
    }
    redraw();
  });
  events.addEventListener("source", (event) => {
    const view = JSON.parse(event.data);
    sources.set(view.name, view);
    drawSources();
  });
}

// Newest first: by when they were made, then by id (the order of the API's pages).
function newestFirst(a, b) {
  if (a.created_at !== b.created_at) return b.created_at - a.created_at;
  return a.id < b.id ? 1 : -1;
}

async function loadOlder() {
  const shown = [...downloads.values()].sort(newestFirst);
  const query = new URLSearchParams({ limit: "100" });
  const oldest = shown[shown.length - 1];
  if (oldest) query.set("cursor", `${oldest.created_at}_${oldest.id}`);
  try {
    const page = await api("GET", "/downloads?" + query);
    for (const record of page.downloads) if (!downloads.has(record.id)) downloads.set(record.id, record);
    $("more").hidden = page.next === null;
    redraw();
  } catch (error) {
    $("queue-error").textContent = error.message;
  }
}

// -- drawing ------------------------------------------------------------------------

function redraw() {
  if (drawing) return;
  drawing = true;
  requestAnimationFrame(() => { drawing = false; drawDownloads(); });
}

function size(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let unit = 0;
  while (n >= 1000 && unit < units.length - 1) { n /= 1000; unit += 1; }
  return unit ? `${n.toFixed(1)} ${units[unit]}` : `${Math.round(n)} B`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

const rowsShown = new Map(); // id -> its <tr>, kept so a click never lands on a row being replaced

function downloadRow(record) {
  const row = document.createElement("tr");
  row.dataset.id = record.id;
  for (let i = 0; i < 7; i += 1) row.insertCell();
  row.cells[0].className = "name";
  const bar = document.createElement("progress");
  bar.max = 100;
  row.cells[3].append(bar, document.createTextNode(""));
  row.cells[6].append(
    button("Cancel", () => act("POST", `/downloads/${record.id}/cancel`)),
    button("Remove", () => act("DELETE", `/downloads/${record.id}`)),
  );
  row.cells[6].firstChild.className = "cancel";
  row.cells[6].lastChild.className = "remove";
  return row;
}

function fill(row, record) {
  const set = (cell, text) => { if (cell.textContent !== text) cell.textContent = text; };
  row.dataset.state = record.state;
  const name = row.cells[0];
  name.textContent = record.display_name || record.target;
  if (record.error) {
    const error = document.createElement("span");
    error.className = "error";
    error.textContent = record.error;
    name.append(error);
  }
  set(row.cells[1], record.source);
  set(row.cells[2], record.state);
  row.cells[2].className = `state state-${record.state}`;
  const bar = row.cells[3].firstChild;
  if (record.state !== "running" || record.size) bar.value = record.progress;
  else bar.removeAttribute("value");
  row.cells[3].lastChild.nodeValue = ` ${record.progress.toFixed(0)}%`;
  set(row.cells[4], record.state === "running" && record.speed ? `${size(record.speed)}/s` : "");
  set(row.cells[5], record.state === "running" ? duration(record.time_remaining) : "");
  row.cells[6].firstChild.hidden = ENDED.has(record.state);
}

function drawDownloads() {
  const body = $("download-rows");
  const ids = [...downloads.values()].sort(newestFirst).map((record) => record.id);
  for (const [id, row] of rowsShown) {
    if (!downloads.has(id)) { row.remove(); rowsShown.delete(id); }
  }
  let active = 0;
  let before = body.firstChild;
  for (const id of ids) {
    const record = downloads.get(id);
    if (!ENDED.has(record.state)) active += 1;
    let row = rowsShown.get(id);
    if (!row) { row = downloadRow(record); rowsShown.set(id, row); }
    fill(row, record);
    if (row !== before) body.insertBefore(row, before);
    else before = before.nextSibling;
  }
  $("counts").textContent = `${ids.length} shown, ${active} queued or running`;
}

function drawSources() {
  const body = $("source-rows");
  const chosen = $("add-source").value;
  const picker = document.createDocumentFragment();
  const fresh = document.createDocumentFragment();
  for (const view of [...sources.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const row = document.createElement("tr");
    row.dataset.source = view.name;
    cell(row, view.aliases.length ? `${view.name} (${view.aliases.join(", ")})` : view.name);
    if (view.status !== "ok") {
      cell(row, `broken: ${view.error}`, "broken");
      cell(row, "");
      cell(row, "");
      row.insertCell();
    } else {
      cell(row, view.paused ? "paused" : "running", view.paused ? "paused" : "");
      cell(row, String(view.policy.concurrency));
      cell(row, `${view.policy.delay} s`);
      const actions = row.insertCell();
      actions.append(view.paused
        ? button("Resume", () => act("POST", `/sources/${view.name}/resume`))
        : button("Pause", () => act("POST", `/sources/${view.name}/pause`)));
      const option = document.createElement("option");
      option.value = view.name;
      option.textContent = view.name;
      picker.append(option);
    }
    fresh.append(row);
  }
  body.replaceChildren(fresh);
  $("add-source").replaceChildren(picker);
  if (chosen && sources.has(chosen)) $("add-source").value = chosen;
}

async function act(method, path) {
  $("queue-error").textContent = "";
  try {
    const answer = await api(method, path);
    if (answer && answer.name) { sources.set(answer.name, answer); drawSources(); }
  } catch (error) {
    $("queue-error").textContent = error.message;
  }
}

// -- wiring ---------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await login($("login-token").value.trim());
      $("login-token").value = "";
    } catch (error) {
      $("login-error").textContent = error.message;
    }
  });
  $("logout").addEventListener("click", async () => {
    await api("DELETE", "/session");
    showLogin("logged out");
  });
  $("add-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("add-error").textContent = "";
    const targets = $("add-targets").value.split("\n").map((t) => t.trim()).filter((t) => t);
    const via = $("add-via").value.split(",").map((s) => s.trim()).filter((s) => s);
    const body = { source: via.length ? [$("add-source").value, ...via] : $("add-source").value, targets };
    if ($("add-existing").value) body.existing = $("add-existing").value;
    try {
      await api("POST", "/downloads", body);
      $("add-targets").value = "";
    } catch (error) {
      $("add-error").textContent = error.message;
    }
  });
  $("pause-all").addEventListener("click", () => act("POST", "/sources/pause"));
  $("resume-all").addEventListener("click", () => act("POST", "/sources/resume"));
  $("clear").addEventListener("click", () => act("POST", "/downloads/clear"));
  $("more").addEventListener("click", loadOlder);

  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    history.replaceState(null, "", location.pathname); // the token leaves the address bar at once
    login(token).catch((error) => showLogin(error.message));
  } else {
    start();
  }
});
