// fulab lab web UI: the session list (this file) and one session streamed live (session.js).
// ES modules, no build step, nothing loaded from elsewhere. Session content is put into the
// page as text (textContent), or as Markdown rendered with raw HTML disabled.
import { $, el, named } from "./dom.js";
import { ago } from "./time.js";
import { costNote, formatCost, formatCount, tokenBreakdown, tokenTotal } from "./numbers.js";
import { showSession } from "./session.js";
import { showSearch, wireSearchBox } from "./search.js";
import { showParList } from "./par-list.js";

const LIST_REFRESH_MS = 3000;
const LIST_FULL_MS = 60000;

const params = new URLSearchParams(location.search);
const token = takeToken();

// The access token (`/fulab/lab/?token=T`, for a daemon run with --token-file): kept in this tab's
// sessionStorage and dropped from the address bar, so that no link the page shows or shares carries it.
// Only requests to the daemon's API and streams send it.
function takeToken() {
  const given = params.get("token");
  let kept = null;
  try {
    if (given) sessionStorage.setItem("fulab-token", given);
    kept = sessionStorage.getItem("fulab-token");
  } catch (e) { /* storage disabled: the token lives as long as this page */ }
  if (given) {
    const shown = new URL(location.href);
    shown.searchParams.delete("token");
    history.replaceState(history.state, "", shown.pathname + shown.search + shown.hash);
  }
  return given || kept;
}

// -- small helpers -----------------------------------------------------------

// An API or stream URL relative to this page's folder (`/fulab/lab/` or wherever a proxy puts it), with the token.
function apiUrl(path, query) {
  const url = new URL(path, location.href);
  url.search = "";
  for (const [key, value] of Object.entries(query || {})) url.searchParams.set(key, value);
  if (token) url.searchParams.set("token", token);
  return url;
}

// A file to download from the API (an export): a link that carries no token; with a token, a click fetches the
// file with it in the Authorization header and saves what came, so the token is in no URL the page shows.
function downloadLink(link, path, query, filename) {
  const url = apiUrl(path, query);
  url.searchParams.delete("token");
  link.href = url;
  if (!token) return;
  link.addEventListener("click", async (event) => {
    event.preventDefault();
    const response = await fetch(url, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    if (!response.ok) return;
    const saved = el("a");
    saved.href = URL.createObjectURL(await response.blob());
    saved.download = filename;
    saved.click();
    setTimeout(() => URL.revokeObjectURL(saved.href), 60000);
  });
}

// A link to a page of the UI: never with the token (the tab keeps it in sessionStorage).
function pageUrl(query) {
  const url = new URL("./", location.href);
  url.search = new URLSearchParams(query || {}).toString();
  return url.pathname + url.search;
}

function formatSize(kb) {
  if (kb === null || kb === undefined) return "";
  if (kb < 1024) return `${kb} KB`;
  return `${(kb / 1024).toFixed(kb < 10240 ? 1 : 0)} MB`;
}

// -- session list ------------------------------------------------------------

const list = { sessions: [], timer: null, token: null, fullAt: 0 };

function showList() {
  $("list-view").hidden = false;
  document.title = "fulab lab — sessions";
  $("filter").value = params.get("q") || "";
  $("filter").addEventListener("input", renderList);
  $("source-filter").addEventListener("change", renderList);
  refreshList();
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshList(); });
}

// The whole listing once a minute (sessions go inactive without changing), in between only what changed
// since the last answer's token (`?since=`).
async function refreshList() {
  clearTimeout(list.timer);
  if (Date.now() - (list.fullAt || 0) > LIST_FULL_MS) list.token = null;
  try {
    const response = await fetch(apiUrl("sessions", list.token ? { since: list.token } : {}), { cache: "no-store" });
    if (!response.ok) {  // the server says why (a missing token: how to give one)
      const refusal = await response.json().catch(() => ({}));
      throw new Error(refusal.detail || `the server answered ${response.status}`);
    }
    const reply = await response.json();
    const now = Date.now();
    for (const s of reply.sessions || []) s.liveUntil = now + (s["live-for"] || 0) * 1000;
    if (list.token && !reply.reset) {
      const changed = new Map((reply.sessions || []).map((s) => [s.id, s]));
      list.sessions = [...changed.values(), ...list.sessions.filter((s) => !changed.has(s.id))];
    } else {
      list.sessions = reply.sessions || [];
      list.fullAt = Date.now();
    }
    list.token = reply.token || null;
    $("list-error").hidden = true;
    renderList();
  } catch (error) {
    $("list-error").textContent = `Could not load the sessions (${error.message}); retrying…`;
    $("list-error").hidden = false;
  }
  list.timer = setTimeout(refreshList, LIST_REFRESH_MS);
}

// Live while lines arrive: the server says for how long a session stays live without another line.
function isLive(s) {
  return Boolean(s.live) && Date.now() < s.liveUntil;
}

function renderList() {
  const sources = [...new Set(list.sessions.map((s) => s.source).filter(Boolean))].sort();
  const select = $("source-filter");
  const chosen = select.value;
  const known = [...select.options].slice(1).map((option) => option.value);
  if (sources.join("\n") !== known.join("\n")) {
    const options = sources.map((s) => Object.assign(el("option", null, named(s)), { value: s }));
    select.replaceChildren(el("option", null, "All sources"), ...options);
    select.options[0].value = "";
    select.value = sources.includes(chosen) ? chosen : "";
  }
  const words = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const source = select.value;
  const shown = list.sessions
    .filter((s) => !source || s.source === source)
    .filter((s) => {
      const haystack = [s.id, s["session-id"], s.project, s.originator, s.cwd, s.source, s.uploader,
        s["remote-source"], s.summary && s.summary.title]
        .filter(Boolean).join(" ").toLowerCase();
      return words.every((word) => haystack.includes(word));
    })
    .sort((a, b) => (isLive(b) - isLive(a)) || (b.active - a.active)
      || (b.modified || "").localeCompare(a.modified || ""));
  $("sessions").tBodies[0].replaceChildren(...shown.map(sessionRow));
  $("list-empty").hidden = shown.length > 0;
  $("list-empty").textContent = list.sessions.length
    ? "No session matches the filter."
    : "No sessions yet. A session appears here as soon as fulab-upload sends it.";
  $("list-count").textContent = `${shown.length} of ${list.sessions.length} sessions`;
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(Math.round(seconds % 60)).padStart(2, "0")} s`;
  if (minutes < 48 * 60) return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
  return `${Math.floor(minutes / 1440)} d ${Math.floor((minutes % 1440) / 60)} h`;
}

function startedAt(iso) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  const date = new Date(then);
  return `${date.toLocaleDateString()} ${date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
}

// The summary columns of a listed session; while the server is still reading its file, placeholders.
function summaryCells(summary) {
  if (!summary) return Array.from({ length: 7 }, () => el("td", "num pending", "…"));
  const tokens = summary.tokens;
  const started = el("td", "started", startedAt(summary.started));
  if (summary.started) started.title = `${summary.started} to ${summary.ended}`;
  const calls = Object.values(summary["tool-calls"]).reduce((sum, n) => sum + n, 0);
  const tools = el("td", "num tools", String(calls));
  tools.title = Object.entries(summary["tool-calls"]).map(([name, n]) => `${name}: ${n}`).join("\n");
  if (summary["tool-errors"]) tools.append(el("span", "errors", ` · ${summary["tool-errors"]} failed`));
  const tokenCell = el("td", "num tokens", formatCount(tokenTotal(tokens)));
  tokenCell.title = tokenBreakdown(tokens);
  const cost = el("td", "num cost", formatCost(summary["cost-usd"]));
  cost.title = costNote(summary);
  return [started, el("td", "num duration", formatDuration(summary["duration-s"])),
    el("td", "num turns", String(summary.turns)), tools, tokenCell, cost,
    el("td", "num subagents", String(summary.subagents.length))];
}

function sessionRow(s) {
  const row = el("tr", isLive(s) ? "live" : s.active ? "active" : "idle");
  row.dataset.id = s.id;
  const name = el("td", "name");
  const place = s.project ? s.project.split("/").filter(Boolean).pop() || s.project : null;
  const title = s.summary && s.summary.title;
  const link = el("a", "title", named(title || place || s["session-id"]));
  link.href = s["viewer-url"] || pageUrl({ session: s.id });  // another lab's session opens in its own UI
  name.append(link);
  if (s["remote-source"]) {
    name.append(el("span", "badge lab", s["remote-source"]));
    name.lastChild.title = `on the lab ${s["remote-url"]}`;
  }
  if (isLive(s)) name.append(el("span", "badge live", "live"));
  else if (s.active) name.append(el("span", "badge active", "active"));
  name.append(el("div", "sub", named([place, s.originator, s["session-id"]].filter(Boolean).join(" · "))));
  if (s.project) name.lastChild.title = s.project;
  const modified = el("td", null, ago(s.modified));
  modified.title = `${s.modified}, ${formatSize(s["size-kb"])}, ${(s.events ?? 0).toLocaleString()} lines`;
  row.append(name, el("td", "source", s.source || ""), ...summaryCells(s.summary), modified,
    el("td", "num" + (s.pars ? " has-pars" : ""), String(s.pars ?? 0)));
  row.addEventListener("click", (event) => {
    if (event.target.closest("a") || getSelection().toString()) return;
    location.href = link.href;
  });
  return row;
}

// -- start -------------------------------------------------------------------

$("home").href = pageUrl({});
wireSearchBox(params, { pageUrl });
if (params.get("session")) showSession(params.get("session"), { apiUrl, pageUrl, formatSize, downloadLink });
else if (params.has("search")) showSearch(params, { apiUrl, pageUrl });
else if (params.get("view") === "pars") showParList(params, { apiUrl, pageUrl });
else showList();
