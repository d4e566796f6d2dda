// fulab lab web UI: the session list (this file) and one session streamed live (session.js).
// ES modules, no build step, nothing loaded from elsewhere. Session content is put into the
// page as text (textContent), or as Markdown rendered with raw HTML disabled.
import { $, el } from "./dom.js";
import { ago } from "./time.js";
import { showSession } from "./session.js";

const LIST_REFRESH_MS = 3000;
const LIST_FULL_MS = 60000;

const params = new URLSearchParams(location.search);
const token = params.get("token");

// -- small helpers -----------------------------------------------------------

// A URL relative to this page's folder (`/fulab/lab/` or wherever a proxy puts it), with the token.
function apiUrl(path, query) {
  const url = new URL(path, location.href);
  url.search = "";
  for (const [key, value] of Object.entries(query || {})) url.searchParams.set(key, value);
  if (token) url.searchParams.set("token", token);
  return url;
}

function pageUrl(query) {
  const url = apiUrl("./", query);
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
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    const reply = await response.json();
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

function renderList() {
  const sources = [...new Set(list.sessions.map((s) => s.source).filter(Boolean))].sort();
  const select = $("source-filter");
  const chosen = select.value;
  const known = [...select.options].slice(1).map((option) => option.value);
  if (sources.join("\n") !== known.join("\n")) {
    select.replaceChildren(el("option", null, "All sources"), ...sources.map((s) => el("option", null, s)));
    select.options[0].value = "";
    select.value = sources.includes(chosen) ? chosen : "";
  }
  const words = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const source = select.value;
  const shown = list.sessions
    .filter((s) => !source || s.source === source)
    .filter((s) => {
      const haystack = [s.id, s["session-id"], s.project, s.originator, s.cwd, s.source, s.uploader, s["remote-source"]]
        .filter(Boolean).join(" ").toLowerCase();
      return words.every((word) => haystack.includes(word));
    })
    .sort((a, b) => (b.active - a.active) || (b.uploading - a.uploading)
      || (b.modified || "").localeCompare(a.modified || ""));
  $("sessions").tBodies[0].replaceChildren(...shown.map(sessionRow));
  $("list-empty").hidden = shown.length > 0;
  $("list-empty").textContent = list.sessions.length
    ? "No session matches the filter."
    : "No sessions yet. A session appears here as soon as fulab-upload sends it.";
  $("list-count").textContent = `${shown.length} of ${list.sessions.length} sessions`;
}

function sessionRow(s) {
  const row = el("tr", s.active ? "active" : "idle");
  row.dataset.id = s.id;
  const name = el("td", "name");
  const link = el("a", null, s.project ? s.project.split("/").filter(Boolean).pop() || s.project : s["session-id"]);
  link.href = s["viewer-url"] || pageUrl({ session: s.id });  // another lab's session opens in its own UI
  name.append(link);
  if (s["remote-source"]) {
    name.append(el("span", "badge lab", s["remote-source"]));
    name.lastChild.title = `on the lab ${s["remote-url"]}`;
  }
  if (s.uploading) name.append(el("span", "badge live", "live"));
  else if (s.active) name.append(el("span", "badge active", "active"));
  name.append(el("div", "sub", s["session-id"]));
  if (s.project) name.lastChild.title = s.project;
  const modified = el("td", null, ago(s.modified));
  modified.title = s.modified;
  row.append(name, el("td", "source", s.source || ""), el("td", null, s.originator || ""), modified,
    el("td", "num", formatSize(s["size-kb"])), el("td", "num", (s.events ?? 0).toLocaleString()),
    el("td", "num" + (s.pars ? " has-pars" : ""), String(s.pars ?? 0)));
  row.addEventListener("click", (event) => {
    if (event.target.closest("a") || getSelection().toString()) return;
    location.href = link.href;
  });
  return row;
}

// -- start -------------------------------------------------------------------

$("home").href = pageUrl({});
if (params.get("session")) showSession(params.get("session"), { apiUrl, pageUrl, formatSize });
else showList();
