// The session header and the sub-agent sessions of a session, from the listings.
import { $, el, named } from "../dom.js";
import { parse, ago, full, duration } from "../time.js";
import { costNote, formatCost, formatCount, tokenBreakdown, tokenTotal } from "../numbers.js";

// The header: title and metadata from the listing entry `s` and the summary (`GET sessions/<id>`,
// when the daemon has it); start, end and duration from the lines held (`times`) otherwise.
export function describeSession(s, summary, times, formatSize) {
  const title = summary.title || (s.project ? s.project.split("/").filter(Boolean).pop() || s.project : s["session-id"]);
  if (title) {
    const shown = named(title);
    $("session-title").textContent = shown;
    document.title = `fulab lab — ${shown}`;
  }
  const started = summary.started || (times.firstTs !== null && new Date(times.firstTs).toISOString());
  const ended = summary.ended || (times.lastTs !== null && new Date(times.lastTs).toISOString());
  const seconds = summary["duration-s"] ?? (started && ended ? (parse(ended) - parse(started)) / 1000 : null);
  const parts = [
    ["source", s.source], ["originator", s.originator], ["folder", s.cwd || s.project],
    ["session", s["session-id"]], ["started", started], ["ended", ended],
    ["duration", typeof seconds === "number" ? duration(seconds * 1000) : null],
    ["tokens", summary.tokens ? formatCount(tokenTotal(summary.tokens)) : null],
    ["cost", summary.tokens ? formatCost(summary["cost-usd"]) : null],
    ["last write", s.modified && ago(s.modified)], ["size", formatSize(s["size-kb"])],
  ];
  const meta = $("session-meta");
  meta.replaceChildren();
  if (s.uploading) meta.append(el("span", "badge live", "live upload"));
  for (const [label, value] of parts) {
    if (!value) continue;
    const item = el("span", "meta-item");
    const shown = label === "started" || label === "ended" ? new Date(parse(value)).toLocaleString() : value;
    const text = el("span", "value", named(shown));
    if (label === "started" || label === "ended") text.title = full(value);
    if (label === "tokens") text.title = tokenBreakdown(summary.tokens);
    if (label === "cost") text.title = costNote(summary);
    item.append(el("span", "label", label), text);
    meta.append(item);
  }
}

// Sub-agent sessions of `parent` (uploaded as `<parent>/agent-…`; a later generation `<parent>~gN`
// names its parent too but is not one), in the order they started.
export function subAgentSessions(sessions, parent) {
  return sessions.filter((s) => parent && s["parent-session-id"] === parent
      && String(s["session-id"]).startsWith(`${parent}/`))
    .sort((a, b) => String(a.started || a.modified).localeCompare(String(b.started || b.modified)));
}
