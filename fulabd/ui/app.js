// fulab lab web UI: the session list, and one session streamed live.
// Plain JS, no build step, nothing loaded from elsewhere. Session content is
// only ever put into the page as text (textContent), never as HTML.
"use strict";

const PAGE = 300;            // events rendered per page of the timeline
const FOLD_CHARS = 1500;     // longer texts are folded
const LIST_REFRESH_MS = 3000;
const LIST_FULL_MS = 60000;
const LOADING_RENDER_MS = 400;
const QUESTIONS = [
  ["intention", "Intention"], ["happening", "What happened"], ["perspectives", "Perspectives"],
  ["learned", "Learned"], ["forward", "Forward"],
];

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

function $(id) { return document.getElementById(id); }

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// An API or stream URL relative to this page's folder (`/fulab/lab/` or wherever a proxy puts it), with the token.
function apiUrl(path, query) {
  const url = new URL(path, location.href);
  url.search = "";
  for (const [key, value] of Object.entries(query || {})) url.searchParams.set(key, value);
  if (token) url.searchParams.set("token", token);
  return url;
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

function ago(iso) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  const seconds = Math.max(0, (Date.now() - then) / 1000);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(then).toLocaleDateString();
}

function clock(iso) {
  const then = Date.parse(iso);
  return Number.isNaN(then) ? "" : new Date(then).toLocaleTimeString();
}

function asText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  if (Array.isArray(value) && value.every((part) => part && typeof part.text === "string")) {
    return value.map((part) => part.text).join("\n");
  }
  return JSON.stringify(value, null, 2);
}

function firstLine(text, limit) {
  const line = (text || "").trim().split("\n", 1)[0];
  return line.length > limit ? line.slice(0, limit) + "…" : line;
}

// A text block that shows its first FOLD_CHARS characters until asked for all.
function foldable(text, className) {
  const box = el("div", className);
  const body = el("div", "text");
  box.append(body);
  if (text.length <= FOLD_CHARS) {
    body.textContent = text;
    return box;
  }
  body.textContent = text.slice(0, FOLD_CHARS) + "…";
  const more = el("button", "more", `Show all (${text.length.toLocaleString()} characters)`);
  more.type = "button";
  more.addEventListener("click", () => {
    const open = more.dataset.open === "1";
    body.textContent = open ? text.slice(0, FOLD_CHARS) + "…" : text;
    more.dataset.open = open ? "0" : "1";
    more.textContent = open ? `Show all (${text.length.toLocaleString()} characters)` : "Show less";
  });
  box.append(more);
  return box;
}

function details(summaryParts, content) {
  const box = el("details", "fold");
  const summary = el("summary");
  summary.append(...summaryParts);
  box.append(summary);
  box.addEventListener("toggle", () => {
    if (box.open && box.childNodes.length === 1) box.append(el("pre", "code", content));
  }, { once: true });
  return box;
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

// -- one session -------------------------------------------------------------

const view = {
  id: null,
  events: [],          // every line event received, in line order
  nextLine: 0,         // the line after the highest received: the offset to reconnect with
  parCount: 0,         // PAR events received: the par_offset to reconnect with
  parIds: new Set(),
  first: 0,            // index in `events` of the first rendered event
  rendered: 0,         // index in `events` after the last rendered event
  following: true,     // stick to the bottom as lines arrive
  pending: false,      // a render is scheduled
  socket: null,
  retry: 0,
  retryTimer: null,
  connected: false,
  loading: false,      // history pages are still arriving
  historyEnd: 0,       // the session's line count when this connection opened
  shownPercent: null,
};

function showSession(id) {
  view.id = id;
  $("session-view").hidden = false;
  document.body.classList.add("session-page");
  $("session-title").textContent = id;
  $("crumb").textContent = "/ " + id;
  document.title = `fulab lab — ${id}`;
  const timeline = $("timeline");
  timeline.addEventListener("scroll", () => {
    const atBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 60;
    if (atBottom !== view.following) {
      view.following = atBottom;
      if (atBottom) schedule();
      updateJump();
    }
  }, { passive: true });
  $("load-earlier").addEventListener("click", loadEarlier);
  $("jump-latest").addEventListener("click", () => { view.following = true; renderTail(); });
  setupParForm();
  loadMeta();
  connect();
}

async function loadMeta() {
  try {
    const response = await fetch(apiUrl("sessions"), { cache: "no-store" });
    const sessions = (await response.json()).sessions || [];
    const s = sessions.find((entry) => entry.id === view.id || entry["session-id"] === view.id);
    if (s) describeSession(s);
  } catch (error) {
    // The header is a nicety; the stream below says what is wrong.
  }
  setTimeout(loadMeta, LIST_REFRESH_MS * 3);
}

function describeSession(s) {
  const title = s.project ? s.project.split("/").filter(Boolean).pop() || s.project : s["session-id"];
  $("session-title").textContent = title;
  document.title = `fulab lab — ${title}`;
  const parts = [
    ["source", s.source], ["originator", s.originator], ["folder", s.cwd || s.project],
    ["session", s["session-id"]], ["last write", s.modified && `${ago(s.modified)}`],
    ["size", formatSize(s["size-kb"])],
  ];
  const meta = $("session-meta");
  meta.replaceChildren();
  if (s.uploading) meta.append(el("span", "badge live", "live upload"));
  for (const [label, value] of parts) {
    if (!value) continue;
    const item = el("span", "meta-item");
    item.append(el("span", "label", label), el("span", "value", value));
    meta.append(item);
  }
}

// -- the stream --------------------------------------------------------------

function setConn(state, text) {
  const conn = $("conn");
  conn.hidden = false;
  conn.className = `conn ${state}`;
  conn.textContent = text;
}

function connect() {
  clearTimeout(view.retryTimer);
  const query = { session: view.id };
  if (view.nextLine > 0) query.offset = view.nextLine;
  if (view.parCount > 0) query.par_offset = view.parCount;
  const url = apiUrl("stream/ws", query);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  setConn("connecting", view.retry ? "reconnecting…" : "connecting…");
  const socket = new WebSocket(url);
  view.socket = socket;
  socket.addEventListener("message", (message) => {
    let frame;
    try { frame = JSON.parse(message.data); } catch (error) { return; }
    receive(frame);
  });
  socket.addEventListener("close", (event) => {
    if (view.socket !== socket) return;
    view.connected = false;
    const delay = Math.min(15000, 1000 * 2 ** Math.min(view.retry, 4)) * (0.75 + Math.random() / 2);
    view.retry += 1;
    const reason = view.lastError || (event.reason ? event.reason : "connection lost");
    view.lastError = null;
    setConn("down", `${reason} — retrying in ${Math.round(delay / 1000)} s`);
    view.retryTimer = setTimeout(connect, delay);
  });
}

function receive(frame) {
  switch (frame.type) {
    case "init":
    case "delta":
      view.connected = true;
      view.retry = 0;
      $("stream-error").hidden = true;
      view.historyEnd = frame["line-count"] ?? 0;
      view.loading = Boolean(frame.more);
      view.shownPercent = null;
      for (const event of frame.events || []) accept(event);
      showProgress();
      schedule();
      break;
    case "event":
      accept(frame.event);
      if (view.loading) showProgress();
      schedule();
      break;
    case "history-end":
      view.loading = false;
      showProgress();
      schedule();
      // Lines skipped at the end (duplicates the server leaves out) are not asked for again.
      view.nextLine = Math.max(view.nextLine, frame["line-count"] ?? 0);
      view.parCount = Math.max(view.parCount, frame["par-count"] ?? 0);
      $("events-empty").hidden = view.events.length > 0;
      break;
    case "error":
      view.lastError = frame.err === "invalid-path" ? "no such session" : frame.detail || frame.err;
      if (frame.err === "invalid-path") {
        const notice = $("stream-error");
        notice.replaceChildren(`No session “${view.id}” is served here. `);
        const back = el("a", null, "Back to the session list");
        back.href = pageUrl({});
        notice.append(back);
        notice.hidden = false;
      }
      break;
    default:
      break;
  }
}

function showProgress() {
  if (!view.loading || view.historyEnd <= 0) {
    setConn("up", "live");
    return;
  }
  const percent = Math.min(99, Math.floor((100 * view.nextLine) / view.historyEnd));
  if (percent !== view.shownPercent) setConn("connecting", `loading history ${percent}%`);
  view.shownPercent = percent;
}

// Take one event from the server; anything already held (after a reconnect) is dropped.
function accept(event) {
  if (!event || typeof event !== "object") return;
  if (typeof event.line === "number") {
    if (event.line < view.nextLine) return;
    view.nextLine = event.line + 1;
  }
  if (event.type === "par") {
    if (typeof event["par-index"] === "number") view.parCount = Math.max(view.parCount, event["par-index"] + 1);
    const id = event["par-id"] || `line-${event.line}-${event["par-index"]}`;
    if (!view.parIds.has(id)) {
      view.parIds.add(id);
      addPar(event);
    }
    if (typeof event.line !== "number") return;
  }
  view.events.push(event);
}

// One render per animation frame; while history pages pour in, at most a few per second,
// so the browser spends its time receiving rather than re-rendering a tail that moves on at once.
function schedule() {
  if (view.pending) return;
  view.pending = true;
  const frame = () => requestAnimationFrame(() => {
    view.pending = false;
    render();
  });
  if (view.loading && view.rendered > 0) setTimeout(frame, LOADING_RENDER_MS);
  else frame();
}

// Bring the DOM up to date with the events held, keeping at most about 2 pages of them rendered.
function render() {
  $("events-empty").hidden = view.events.length > 0;
  if (!view.following) {
    updateJump();
    return;
  }
  if (view.events.length - view.rendered > PAGE) {
    renderTail();
    return;
  }
  const container = $("events");
  const fragment = document.createDocumentFragment();
  for (let i = view.rendered; i < view.events.length; i++) fragment.append(renderEvent(view.events[i]));
  container.append(fragment);
  view.rendered = view.events.length;
  while (view.rendered - view.first > 2 * PAGE) {
    container.firstChild.remove();
    view.first += 1;
  }
  updatePager();
  updateJump();
  scrollToEnd();
}

function renderTail() {
  const container = $("events");
  view.first = Math.max(0, view.events.length - PAGE);
  view.rendered = view.events.length;
  const fragment = document.createDocumentFragment();
  for (let i = view.first; i < view.rendered; i++) fragment.append(renderEvent(view.events[i]));
  container.replaceChildren(fragment);
  updatePager();
  updateJump();
  scrollToEnd();
}

function loadEarlier() {
  const timeline = $("timeline");
  const start = Math.max(0, view.first - PAGE);
  const fragment = document.createDocumentFragment();
  for (let i = start; i < view.first; i++) fragment.append(renderEvent(view.events[i]));
  const before = timeline.scrollHeight;
  $("events").prepend(fragment);
  view.first = start;
  timeline.scrollTop += timeline.scrollHeight - before;
  updatePager();
}

function updatePager() {
  const pager = $("load-earlier");
  pager.hidden = view.first === 0;
  pager.textContent = `Show ${Math.min(PAGE, view.first)} earlier events (${view.first.toLocaleString()} not shown)`;
}

function updateJump() {
  const waiting = view.events.length - view.rendered;
  const jump = $("jump-latest");
  jump.hidden = view.following || (waiting === 0 && isAtEnd());
  jump.textContent = waiting > 0 ? `↓ ${waiting.toLocaleString()} new event${waiting === 1 ? "" : "s"}` : "↓ Latest";
}

function isAtEnd() {
  const timeline = $("timeline");
  return timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 60;
}

function scrollToEnd() {
  const timeline = $("timeline");
  timeline.scrollTop = timeline.scrollHeight;
}

// -- rendering one event ------------------------------------------------------

const LABELS = {
  user: "User", assistant: "Assistant", system: "System", summary: "Compaction summary",
  reasoning: "Reasoning", tool_use: "Tool call", tool_result: "Tool result", par: "PAR", raw: "Other",
};

function renderEvent(event) {
  const type = LABELS[event.type] ? event.type : "raw";
  const node = el("article", `event ev-${type}`);
  if (event.injected || event.meta) node.classList.add("injected");
  node.dataset.line = event.line;
  const head = el("div", "ev-head");
  head.append(el("span", "ev-type", type === "raw" && event.kind ? event.kind : LABELS[type]));
  if (type === "tool_use" && event["tool-name"]) head.append(el("span", "tool-name", event["tool-name"]));
  if (event["is-error"]) head.append(el("span", "flag error", "error"));
  if (event.sidechain) head.append(el("span", "flag", "sub-agent"));
  if (event.injected) head.append(el("span", "flag", "injected"));
  if (event.truncated) head.append(el("span", "flag", "cut by the server"));
  const when = el("span", "ev-when", `#${event.line}  ${clock(event.timestamp)}`);
  when.title = event.timestamp || "";
  head.append(when);
  node.append(head);
  const blocks = Array.isArray(event.blocks) && event.blocks.length > 1 ? event.blocks : [event];
  for (const block of blocks) {
    if (blocks.length > 1 && block.type !== event.type) {
      const label = el("div", `block-label ev-${block.type}`, LABELS[block.type] || block.type);
      if (block["tool-name"]) label.append(el("span", "tool-name", block["tool-name"]));
      node.append(label);
    }
    node.append(renderBody(block, type === "raw" ? "raw" : block.type));
  }
  return node;
}

function renderBody(event, type) {
  if (type === "tool_use") {
    const input = prettyInput(event.input);
    return details([el("span", "preview", firstLine(inputPreview(event.input), 160) || "(no input)")], input);
  }
  if (type === "tool_result") {
    const content = asText(event.content);
    const size = content.length > 200 ? ` · ${content.length.toLocaleString()} characters` : "";
    return details([el("span", "preview", firstLine(content, 160) || "(empty)"), el("span", "dim", size)], content);
  }
  if (type === "raw") {
    const raw = event.data !== undefined ? JSON.stringify(event.data, null, 2) : asText(event.text);
    return details([el("span", "preview", firstLine(event.data !== undefined ? JSON.stringify(event.data) : raw, 140))],
      raw);
  }
  return foldable(asText(event.text), "body");
}

// A tool call's input as readable JSON (Codex sends its arguments as a JSON string).
function prettyInput(input) {
  if (typeof input === "string") {
    try { return JSON.stringify(JSON.parse(input), null, 2); } catch (error) { return input; }
  }
  return asText(input);
}

// The most telling part of a tool call's input, for its one-line summary.
function inputPreview(input) {
  if (typeof input === "string") {
    try { input = JSON.parse(input); } catch (error) { return input; }
  }
  if (!input || typeof input !== "object") return input === undefined || input === null ? "" : String(input);
  for (const key of ["command", "cmd", "file_path", "path", "pattern", "url", "query", "description", "prompt"]) {
    const value = input[key];
    if (typeof value === "string" && value) return value;
    if (Array.isArray(value) && value.length) return value.join(" ");
  }
  return JSON.stringify(input);
}

// -- PARs ----------------------------------------------------------------------

function addPar(par) {
  const card = el("article", "par-card");
  card.dataset.parId = par["par-id"] || "";
  card.append(el("h3", "par-title", par.title || "Post-action review"));
  const info = el("div", "par-info");
  for (const tag of par.tags || []) info.append(el("span", "tag", String(tag).replace(/^:/, "")));
  if (par.timestamp) info.append(el("span", "par-when", `${clock(par.timestamp)} · ${ago(par.timestamp)}`));
  card.append(info);
  const questions = par.questions || {};
  const answered = QUESTIONS.filter(([key]) => questions[key]);
  if (answered.length) {
    const list = el("dl", "questions");
    for (const [key, label] of QUESTIONS) {
      const dt = el("dt", null, label);
      dt.dataset.question = key;
      list.append(dt, el("dd", questions[key] ? null : "unanswered", questions[key] || "—"));
    }
    card.append(list);
  } else if (par.text) {
    card.append(foldable(par.text, "body"));
  }
  $("pars").prepend(card);
  $("pars-empty").hidden = true;
}

function setupParForm() {
  const form = $("par-form");
  const status = $("par-status");
  $("write-par").addEventListener("click", () => {
    form.hidden = !form.hidden;
    if (!form.hidden) form.elements.title.focus();
  });
  $("par-cancel").addEventListener("click", () => { form.hidden = true; status.textContent = ""; });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = form.elements;
    const body = {
      title: fields.title.value,
      tags: fields.tags.value,
      questions: Object.fromEntries(QUESTIONS.map(([key]) => [key, fields[key].value])),
    };
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    status.className = "form-status";
    status.textContent = "Saving…";
    try {
      const response = await fetch(apiUrl(`sessions/${encodeURIComponent(view.id)}/pars`), {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
      });
      const reply = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(reply.detail || `the server answered ${response.status}`);
      form.reset();
      form.hidden = true;
      status.textContent = "";
    } catch (error) {
      status.className = "form-status error";
      status.textContent = `Not saved: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
}

// -- start -------------------------------------------------------------------

$("home").href = pageUrl({});
if (params.get("session")) showSession(params.get("session"));
else showList();
