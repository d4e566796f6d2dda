// One session, streamed live from /fulab/lab/stream/ws: the transcript with paired tool
// cards, folded bookkeeping, date and pause markers, opened at its end or at `?line=N`.
import { $, el } from "./dom.js";
import { parse, dayKey, PAUSE_MS, ago, full, duration } from "./time.js";
import { blocksOf, isBookkeeping, isPrompt, usageOf, tokenText, renderRow, updateRunLabel, subAgentLink } from "./render/events.js";
import { fillResult } from "./render/tools.js";
import { setupPars, addPar, isSelected, selectLine, markSelection } from "./pars.js";

const PAGE = 300;               // events rendered per page of the timeline
const LOADING_RENDER_MS = 400;
const META_REFRESH_MS = 9000;
const BEFORE_TARGET = 200;      // lines loaded before a `?line=N` target
const EARLIER_STEP = 5000;      // lines more loaded by "load earlier lines"
const SUB_AGENT_TOOLS = new Set(["Task", "Agent"]);

let api = null;                 // {apiUrl, pageUrl, formatSize} from app.js
const view = {};

function reset(base) {
  Object.assign(view, {
    base,                // the first line asked of the server
    events: [],          // every line event received, in line order
    nextLine: base,      // the line after the highest received: the offset to reconnect with
    first: 0,            // index in `events` of the first rendered event
    rendered: 0,         // index in `events` after the last rendered event
    calls: new Set(),    // tool call ids seen
    results: new Map(),  // call id → {block, timestamp, line} of its result
    run: null,           // the run of bookkeeping lines the last shown line belongs to
    runs: 0,
    turn: null,          // the turn (from one prompt to the next) the lines belong to
    tasks: 0,            // sub-agent calls seen
    firstTs: null,
    lastTs: null,
  });
}

const rowContext = {
  get results() { return view.results; },
  get children() { return view.children; },
  isSelected,
  isTarget: (line) => Boolean(view.highlight) && line >= view.highlight.first && line <= view.highlight.last,
  onLine: selectLine,
  sessionUrl: (id) => api.pageUrl({ session: id }),
};

export function showSession(id, helpers) {
  api = helpers;
  Object.assign(view, { id, sessionId: null, parCount: 0, parIds: new Set(), children: [], following: true,
    pending: false, socket: null, retry: 0, retryTimer: null, loading: false, historyEnd: 0, shownPercent: null,
    target: null, highlight: null, described: null });
  const line = Number.parseInt(new URLSearchParams(location.search).get("line"), 10);
  if (line >= 0) {
    view.target = { first: line, last: line };
    view.following = false;
  }
  reset(view.target ? Math.max(0, line - BEFORE_TARGET) : 0);
  $("session-view").hidden = false;
  document.body.classList.add("session-page");
  $("session-title").textContent = id;
  $("crumb").textContent = "/ " + id;
  document.title = `fulab lab — ${id}`;
  const timeline = $("timeline");
  timeline.addEventListener("scroll", () => {
    const atBottom = isAtEnd() && view.rendered === view.events.length;
    if (atBottom !== view.following) {
      view.following = atBottom;
      if (atBottom) schedule();
      updateJump();
    }
  }, { passive: true });
  window.addEventListener("resize", () => { if (view.following) scrollToEnd(); });
  $("load-earlier").addEventListener("click", loadEarlier);
  $("load-before").addEventListener("click", () => restart(Math.max(0, view.base - EARLIER_STEP)));
  $("jump-latest").addEventListener("click", () => { view.following = true; renderTail(); });
  for (const format of ["md", "html"]) {
    $(`export-${format}`).href = api.apiUrl(`sessions/${encodeURIComponent(id)}/export`, { format });
  }
  setupPars({ apiUrl: api.apiUrl, sessionId: () => view.id, goTo: goToLine });
  loadMeta();
  connect();
}

// -- header --------------------------------------------------------------------

async function fetchJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  return response.ok ? response.json() : null;
}

async function loadMeta() {
  try {
    const [listing, summary] = await Promise.all([
      fetchJson(api.apiUrl("sessions")), fetchJson(api.apiUrl(`sessions/${encodeURIComponent(view.id)}`)),
    ]);
    const sessions = (listing && listing.sessions) || [];
    const entry = sessions.find((s) => s.id === view.id || s["session-id"] === view.id);
    view.described = [entry || {}, summary || {}];
    describeSession(...view.described);
    linkChildren(sessions, entry);
  } catch (error) {
    // The header is a nicety; the stream below says what is wrong.
  }
  setTimeout(loadMeta, META_REFRESH_MS);
}

function describeSession(s, summary) {
  const title = summary.title || (s.project ? s.project.split("/").filter(Boolean).pop() || s.project : s["session-id"]);
  if (title) {
    $("session-title").textContent = title;
    document.title = `fulab lab — ${title}`;
  }
  const started = summary.started || (view.firstTs !== null && new Date(view.firstTs).toISOString());
  const ended = summary.ended || (view.lastTs !== null && new Date(view.lastTs).toISOString());
  const seconds = summary["duration-s"] ?? (started && ended ? (parse(ended) - parse(started)) / 1000 : null);
  const parts = [
    ["source", s.source], ["originator", s.originator], ["folder", s.cwd || s.project],
    ["session", s["session-id"]], ["started", started], ["ended", ended],
    ["duration", typeof seconds === "number" ? duration(seconds * 1000) : null],
    ["tokens", typeof summary.tokens === "number" ? summary.tokens.toLocaleString() : null],
    ["cost", typeof summary.cost === "number" ? `$${summary.cost.toFixed(2)}` : null],
    ["last write", s.modified && ago(s.modified)], ["size", api.formatSize(s["size-kb"])],
  ];
  const meta = $("session-meta");
  meta.replaceChildren();
  if (s.uploading) meta.append(el("span", "badge live", "live upload"));
  for (const [label, value] of parts) {
    if (!value) continue;
    const item = el("span", "meta-item");
    const shown = label === "started" || label === "ended" ? new Date(parse(value)).toLocaleString() : value;
    const text = el("span", "value", shown);
    if (label === "started" || label === "ended") text.title = full(value);
    item.append(el("span", "label", label), text);
    meta.append(item);
  }
}

// Sub-agent sessions of this one (uploaded as `<parent>/agent-…`; a later generation `<parent>~gN`
// names its parent too but is not one), in the order they started, go with its sub-agent calls in order.
function linkChildren(sessions, entry) {
  const parent = view.sessionId || (entry && entry["session-id"]);
  const children = sessions.filter((s) => parent && s["parent-session-id"] === parent
      && String(s["session-id"]).startsWith(`${parent}/`))
    .sort((a, b) => String(a.started || a.modified).localeCompare(String(b.started || b.modified)));
  if (children.map((c) => c.id).join("\n") === view.children.map((c) => c.id).join("\n")) return;
  view.children = children;
  for (const card of document.querySelectorAll(".tool-card[data-task]")) {
    card.querySelector(".subagent").replaceWith(subAgentLink(children[Number(card.dataset.task)], rowContext));
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
  const url = api.apiUrl("stream/ws", query);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  setConn("connecting", view.retry ? "reconnecting…" : "connecting…");
  const socket = new WebSocket(url);
  view.socket = socket;
  socket.addEventListener("message", (message) => {
    let frame;
    try { frame = JSON.parse(message.data); } catch (error) { return; }
    if (view.socket === socket) receive(frame);
  });
  socket.addEventListener("close", (event) => {
    if (view.socket !== socket) return;
    const delay = Math.min(15000, 1000 * 2 ** Math.min(view.retry, 4)) * (0.75 + Math.random() / 2);
    view.retry += 1;
    const reason = view.lastError || (event.reason ? event.reason : "connection lost");
    view.lastError = null;
    setConn("down", `${reason} — retrying in ${Math.round(delay / 1000)} s`);
    view.retryTimer = setTimeout(connect, delay);
  });
}

// Start again from line `base` (to show lines before the ones held).
function restart(base) {
  const socket = view.socket;
  view.socket = null;
  if (socket) socket.close();
  if (!view.target && view.events.length) {
    const shown = view.events[view.first];
    view.target = { first: shown.line, last: shown.line, keep: true };   // stay where the reader is
  }
  reset(base);
  view.following = false;
  $("events").replaceChildren();
  updatePager();
  connect();
}

function receive(frame) {
  switch (frame.type) {
    case "init":
    case "delta":
      view.retry = 0;
      view.sessionId = frame["session-id"] || view.sessionId;
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
      if (view.described) describeSession(...view.described);
      break;
    case "error":
      view.lastError = frame.err === "invalid-path" ? "no such session" : frame.detail || frame.err;
      if (frame.err === "invalid-path") {
        const notice = $("stream-error");
        notice.replaceChildren(`No session “${view.id}” is served here. `);
        const back = el("a", null, "Back to the session list");
        back.href = api.pageUrl({});
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
  classify(event);
  view.events.push(event);
}

// Decide, once, what row an event makes: its markers, its pairing, its run, its turn.
function classify(event) {
  const ms = parse(event.timestamp);
  if (ms !== null) {
    if (view.lastTs === null || dayKey(ms) !== dayKey(view.lastTs)) event._day = ms;
    else if (ms - view.lastTs > PAUSE_MS) event._pause = ms - view.lastTs;
    if (view.firstTs === null) view.firstTs = ms;
    view.lastTs = Math.max(view.lastTs ?? ms, ms);
  }
  let paired = 0;
  let other = 0;
  for (const block of blocksOf(event)) {
    const id = block["call-id"];
    if (block.type === "tool_use") {
      if (id) view.calls.add(id);
      if (SUB_AGENT_TOOLS.has(block["tool-name"])) block._task = view.tasks++;
      other++;
    } else if (block.type === "tool_result" && id && view.calls.has(id) && !view.results.has(id)) {
      block._paired = true;
      paired++;
      const result = { block, timestamp: event.timestamp, line: event.line };
      view.results.set(id, result);
      const card = document.querySelector(`.tool-card[data-call-id="${CSS.escape(id)}"]`);
      if (card) fillResult(card, block, event.timestamp, event.line);
    } else if (block.type !== event.type || block.text || block.type !== "user") {
      other++;
    }
  }
  if (paired && !other) event._paired = true;
  if (!event._paired) joinRun(event);
  if (isPrompt(event)) {
    view.turn = { input: 0, output: 0, badge: null, messages: new Map() };
    event._turn = view.turn;
  }
  countTokens(event);
}

function joinRun(event) {
  if (!isBookkeeping(event)) {
    view.run = null;
    return;
  }
  if (!view.run) view.run = { id: `run-${view.runs++}`, first: event.line, count: 0, kinds: [], open: false, label: null };
  view.run.count += 1;
  view.run.kinds.push(String(event.kind || event.type).replace(/^event_msg\//, ""));
  event._run = view.run;
  updateRunLabel(view.run);
}

function countTokens(event) {
  const usage = usageOf(event);
  const turn = view.turn;
  if (!usage || !turn) return;
  turn.messages.set(event["message-id"] || `line-${event.line}`, usage);
  turn.input = 0;
  turn.output = 0;
  for (const counted of turn.messages.values()) {
    turn.input += counted.input;
    turn.output += counted.output;
  }
  if (turn.badge) turn.badge.textContent = tokenText(turn);
}

// -- rendering the window ----------------------------------------------------

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

function rows(start, stop) {
  const fragment = document.createDocumentFragment();
  for (let i = start; i < stop; i++) fragment.append(renderRow(view.events[i], rowContext));
  return fragment;
}

// Bring the DOM up to date with the events held, keeping at most about 2 pages of them rendered.
function render() {
  $("events-empty").hidden = view.events.length > 0;
  if (view.target && reached(view.target.first)) {
    const target = view.target;
    view.target = null;
    goToLine(target.first, target.last, !target.keep);
    return;
  }
  if (!view.following) {
    updateJump();
    return;
  }
  if (view.events.length - view.rendered > PAGE) {
    renderTail();
    return;
  }
  const container = $("events");
  container.append(rows(view.rendered, view.events.length));
  view.rendered = view.events.length;
  while (view.rendered - view.first > 2 * PAGE) {
    container.firstChild.remove();
    view.first += 1;
  }
  updatePager();
  updateJump();
  scrollToEnd();
}

function renderWindow(start, stop) {
  view.first = start;
  view.rendered = stop;
  $("events").replaceChildren(rows(start, stop));
  updatePager();
  updateJump();
}

function renderTail() {
  renderWindow(Math.max(0, view.events.length - PAGE), view.events.length);
  scrollToEnd();
}

function loadEarlier() {
  const timeline = $("timeline");
  const start = Math.max(0, view.first - PAGE);
  const before = timeline.scrollHeight;
  $("events").prepend(rows(start, view.first));
  view.first = start;
  timeline.scrollTop += timeline.scrollHeight - before;
  updatePager();
}

function updatePager() {
  const pager = $("load-earlier");
  pager.hidden = view.first === 0;
  pager.textContent = `Show ${Math.min(PAGE, view.first)} earlier events (${view.first.toLocaleString()} not shown)`;
  const before = $("load-before");
  before.hidden = view.first !== 0 || view.base === 0;
  before.textContent = `Load lines ${Math.max(0, view.base - EARLIER_STEP).toLocaleString()}–${view.base - 1} ` +
    "(this view starts at line " + view.base.toLocaleString() + ")";
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

// -- going to a line -------------------------------------------------------------

// The index in `events` of the first event at or after `line`, or -1.
function indexOf(line) {
  let low = 0;
  let high = view.events.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (view.events[middle].line < line) low = middle + 1;
    else high = middle;
  }
  return low < view.events.length ? low : -1;
}

function reached(line) {
  return view.events.length > 0 && (view.events[view.events.length - 1].line >= line || !view.loading);
}

// Show lines first..last (highlighted unless `mark` is false), loading from an earlier offset when
// they are before the lines held.
export function goToLine(first, last = first, mark = true) {
  if (view.base > first || !reached(first)) {
    view.target = { first, last, keep: !mark };
    view.following = false;
    if (view.base > first) restart(Math.max(0, first - BEFORE_TARGET));
    return;
  }
  if (mark) view.highlight = { first, last };
  const index = indexOf(first);
  if (index < 0) return;
  view.following = false;
  if (index < view.first || index >= view.rendered) {
    renderWindow(Math.max(0, index - PAGE / 2), Math.min(view.events.length, index + PAGE / 2));
  }
  let shown = null;
  for (const card of document.querySelectorAll(".tool-card.target")) card.classList.remove("target");
  for (const row of document.querySelectorAll(".row[data-line]")) {
    const line = Number(row.dataset.line);
    row.classList.toggle("target", rowContext.isTarget(line));
    if (line < first || line > last) continue;
    const run = row.querySelector("article.event[hidden]");
    if (run && row.dataset.run) row.closest("#events").querySelector(`.row[data-run="${row.dataset.run}"] .bk-toggle`)?.click();
    const card = row.classList.contains("paired") && document.querySelector(`.tool-card[data-result-line="${line}"]`);
    if (card) card.classList.add("target");
    shown = shown || card || row;
  }
  if (shown) shown.scrollIntoView({ block: "center" });
  markSelection();
  updateJump();
}
