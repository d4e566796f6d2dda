// One session, streamed live from /fulab/lab/stream/ws: the transcript with paired tool
// cards, folded bookkeeping, date and pause markers, opened at its end or at `?line=N`.
import { $, el, named } from "./dom.js";
import { describeSession, subAgentSessions } from "./render/header.js";
import { renderRow, subAgentLink } from "./render/events.js";
import { newReading, classify } from "./render/classify.js";
import { fillResult } from "./render/tools.js";
import { setupPars, addPar, isSelected, selectLine, markSelection } from "./pars.js";

const PAGE = 300;               // events rendered per page of the timeline
const LOADING_RENDER_MS = 400;
const META_REFRESH_MS = 9000;
const BEFORE_TARGET = 200;      // lines loaded before a `?line=N` target
const EARLIER_STEP = 5000;      // lines more loaded by "load earlier lines"

let api = null;                 // {apiUrl, pageUrl, formatSize} from app.js
const view = {};

function reset(base) {
  Object.assign(view, {
    base,                // the first line asked of the server
    events: [],          // every line event received, in line order
    nextLine: base,      // the line after the highest received: the offset to reconnect with
    first: 0,            // index in `events` of the first rendered event
    rendered: 0,         // index in `events` after the last rendered event
    reading: newReading(),
  });
}

const rowContext = {
  get results() { return view.reading.results; },
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
    target: null, highlight: null, described: null, listing: new Map(), listingToken: null });
  const line = Number.parseInt(new URLSearchParams(location.search).get("line"), 10);
  if (line >= 0) {
    view.target = { first: line, last: line };
    view.following = false;
  }
  reset(view.target ? Math.max(0, line - BEFORE_TARGET) : 0);
  $("session-view").hidden = false;
  document.body.classList.add("session-page");
  const shown = named(id);  // until the listing says more
  $("session-title").textContent = shown;
  $("crumb").textContent = "/ " + shown;
  document.title = `fulab lab — ${shown}`;
  const timeline = $("timeline");
  timeline.addEventListener("scroll", () => {
    // A reader who follows stops only by scrolling away from the end (the scroll `scrollToEnd` causes may
    // come after more events arrived, before they are drawn); one who does not starts again only at the
    // session's end, not at the end of a window of it.
    const atEnd = isAtEnd();
    const follow = view.following ? atEnd : atEnd && view.rendered === view.events.length;
    if (follow !== view.following) {
      view.following = follow;
      if (follow) schedule();
      updateJump();
    }
  }, { passive: true });
  window.addEventListener("resize", () => { if (view.following) scrollToEnd(); });
  $("load-earlier").addEventListener("click", loadEarlier);
  $("load-before").addEventListener("click", () => restart(Math.max(0, view.base - EARLIER_STEP)));
  $("jump-latest").addEventListener("click", () => { view.following = true; renderTail(); });
  for (const format of ["md", "html"]) {
    api.downloadLink($(`export-${format}`), `sessions/${encodeURIComponent(id)}/export`, { format },
      `${id.replace(/[^A-Za-z0-9._-]/g, "_")}.${format}`);
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

// The listing once, then only its changes (`?since=`, as the list does), for this session's entry
// and its sub-agents'; the summary, when the daemon has it, for the header.
async function loadMeta() {
  try {
    const query = view.listingToken ? { since: view.listingToken } : {};
    const [listing, reply] = await Promise.all([
      fetchJson(api.apiUrl("sessions", query)), fetchJson(api.apiUrl(`sessions/${encodeURIComponent(view.id)}`)),
    ]);
    const summary = reply && reply.summary;  // null while the daemon is still reading the session's file
    if (listing) {
      if (!view.listingToken || listing.reset) view.listing = new Map();
      for (const s of listing.sessions || []) view.listing.set(s.id, s);
      view.listingToken = listing.token || null;
    }
    const sessions = [...view.listing.values()];
    const entry = sessions.find((s) => s.id === view.id || s["session-id"] === view.id);
    view.described = [entry || {}, summary || {}];
    describe();
    linkChildren(sessions, entry);
  } catch (error) {
    // The header is a nicety; the stream below says what is wrong.
  }
  setTimeout(loadMeta, META_REFRESH_MS);
}

function describe() {
  const [entry, summary] = view.described;
  describeSession(entry, summary, view.reading, api.formatSize);
}

// Sub-agent sessions go with the sub-agent calls in order.
function linkChildren(sessions, entry) {
  const children = subAgentSessions(sessions, view.sessionId || (entry && entry["session-id"]));
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
      if (view.target && view.events.length === 0 && view.base > 0) {  // asked from past the session's end
        const { first } = view.target;
        view.target = null;
        showPastEnd(first);
        break;
      }
      showProgress();
      schedule();
      // Lines skipped at the end (duplicates the server leaves out) are not asked for again.
      view.nextLine = Math.max(view.nextLine, frame["line-count"] ?? 0);
      view.parCount = Math.max(view.parCount, frame["par-count"] ?? 0);
      $("events-empty").hidden = view.events.length > 0;
      if (view.described) describe();
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
  for (const { id, result } of classify(event, view.reading)) {
    const card = document.querySelector(`.tool-card[data-call-id="${CSS.escape(id)}"]`);
    if (card) fillResult(card, result.block, result.timestamp, result.line);
  }
  view.events.push(event);
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

// A line asked for (`?line=`, a search hit, a PAR's) that the session does not have: say so, and follow its end.
function showPastEnd(line) {
  const last = view.events.findLast((event) => typeof event.line === "number");
  const count = Math.max(view.historyEnd, last ? last.line + 1 : 0);
  const note = $("line-note");
  note.textContent = `Line ${line.toLocaleString()} is past the end of this session, which has ` +
    `${count.toLocaleString()} line${count === 1 ? "" : "s"} so far: showing its end.`;
  note.hidden = false;
  if (view.events.length === 0 && view.base > 0) restart(Math.max(0, count - BEFORE_TARGET));
  view.following = true;
  renderTail();
}

function reached(line) {
  return view.events.length > 0 && (view.events[view.events.length - 1].line >= line || !view.loading);
}

// Show lines first..last (highlighted unless `mark` is false), loading from an earlier offset when
// they are before the lines held.
function goToLine(first, last = first, mark = true) {
  if (view.base > first || !reached(first)) {
    view.target = { first, last, keep: !mark };
    view.following = false;
    if (view.base > first) restart(Math.max(0, first - BEFORE_TARGET));
    return;
  }
  const index = indexOf(first);
  if (index < 0) {
    showPastEnd(first);
    return;
  }
  $("line-note").hidden = true;
  if (mark) view.highlight = { first, last };
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
