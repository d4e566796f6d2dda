// One row of the transcript per event: what kind of row an event makes (a message, a tool
// card, folded bookkeeping, a folded context row) and the row itself, with its date and
// pause markers. Pairing and runs are decided as events arrive (session.js), so rendering a
// row again, after a page was dropped, gives the same row.
import { el, button, asText, firstLine, foldable, details } from "../dom.js";
import { clock, full, dayLabel, duration } from "../time.js";
import { renderMarkdown } from "./markdown.js";
import { toolCard, fillResult, orphanCard } from "./tools.js";

const LABELS = {
  user: "User", assistant: "Assistant", system: "System", summary: "Compaction summary",
  reasoning: "Reasoning", tool_use: "Tool call", tool_result: "Tool result", par: "PAR", raw: "Other",
};
const QUIET_SYSTEM = new Set(["turn_duration", "stop_hook_summary", "session_start", "compact_boundary"]);
const CONTEXT_PREFIXES = ["<environment_context>", "<user_instructions>", "# AGENTS.md", "<INSTRUCTIONS>",
  "<system-reminder>", "Caveat: The messages below were generated", "# CLAUDE.md", "<local-command-caveat>"];
const SLASH = /<command-name>\s*\/?([^<\s]*)\s*<\/command-name>/;
const SLASH_ARGS = /<command-args>([\s\S]*?)<\/command-args>/;
const COMMAND_OUTPUT = /^\s*<local-command-std(out|err)>([\s\S]*?)<\/local-command-std(out|err)>\s*$/;

export function blocksOf(event) {
  return Array.isArray(event.blocks) && event.blocks.length > 1 ? event.blocks : [event];
}

// Lines kept for the record rather than the reader: Codex turn_context, token_count, task
// start/end…; Claude file-history-snapshot, queue operations, attachments, hook summaries.
export function isBookkeeping(event) {
  if (event.type === "raw") return !/error|abort/i.test(event.kind || "");
  return event.type === "system" && QUIET_SYSTEM.has(event.kind);
}

// Text the agent's CLI put in the conversation (AGENTS.md, CLAUDE.md, environment, reminders).
function isContextText(text) {
  const start = asText(text).trimStart();
  return CONTEXT_PREFIXES.some((prefix) => start.startsWith(prefix));
}

// A line that is all context: injected or meta (and no slash command), or only context texts.
function isContext(event) {
  const blocks = blocksOf(event);
  if (event.type !== "user" || blocks.some((block) => block.type !== "user")) return false;
  if (event.injected) return true;
  const text = asText(event.text);
  if (SLASH.test(text) || COMMAND_OUTPUT.test(text)) return false;
  return Boolean(event.meta) || blocks.every((block) => isContextText(block.text));
}

function contextFold(text) {
  return details([el("span", "ev-type", "context"), el("span", "preview", firstLine(text, 140))], text, "fold context");
}

// A real prompt, which starts a turn.
export function isPrompt(event) {
  return event.type === "user" && !event.sidechain && !isContext(event) && !COMMAND_OUTPUT.test(asText(event.text));
}

// Token counts a line adds to its turn: Codex token_count's last usage, Claude message usage.
export function usageOf(event) {
  const codex = event.type === "raw" && event.kind === "event_msg/token_count"
    && event.data && event.data.payload && event.data.payload.info && event.data.payload.info.last_token_usage;
  if (codex) return { input: codex.input_tokens || 0, output: codex.output_tokens || 0 };
  const usage = event.usage;
  if (!usage || typeof usage !== "object") return null;
  return {
    input: (usage.input_tokens || 0) + (usage.cache_read_input_tokens || 0) + (usage.cache_creation_input_tokens || 0),
    output: usage.output_tokens || 0,
  };
}

export function tokenText(turn) {
  return `${turn.input.toLocaleString()} in · ${turn.output.toLocaleString()} out tokens`;
}

function markers(event) {
  const out = [];
  if (event._day !== undefined) out.push(el("div", "day-sep", dayLabel(event._day)));
  if (event._pause) out.push(el("div", "pause", `${duration(event._pause)} pause`));
  return out;
}

// The row of `event`. `context`: {results, children, onLine, isSelected, isTarget, sessionUrl}.
export function renderRow(event, context) {
  const row = el("div", "row");
  row.dataset.line = event.line;
  row.append(...markers(event));
  if (event.sidechain) row.classList.add("sidechain");
  if (context.isSelected(event.line)) row.classList.add("selected");
  if (context.isTarget(event.line)) row.classList.add("target");
  if (event._paired) {
    row.classList.add("paired");
    return row;
  }
  if (event._run) return bookkeepingRow(row, event, context);
  row.append(renderEvent(event, context));
  return row;
}

function bookkeepingRow(row, event, context) {
  const run = event._run;
  row.classList.add("bookkeeping");
  row.dataset.run = run.id;
  if (run.first === event.line) {
    run.label = button("bk-toggle", "", () => {
      run.open = !run.open;
      for (const node of document.querySelectorAll(`.row[data-run="${run.id}"] > article.event`)) node.hidden = !run.open;
      updateRunLabel(run);
    });
    updateRunLabel(run);
    row.append(run.label);
  }
  const article = renderEvent(event, context);
  article.hidden = !run.open;
  row.append(article);
  return row;
}

export function updateRunLabel(run) {
  if (!run.label) return;
  const kinds = [...new Set(run.kinds)].slice(0, 4).join(", ");
  run.label.textContent = `${run.open ? "▾" : "▸"} ${run.count} bookkeeping line${run.count === 1 ? "" : "s"}` +
    (kinds ? ` (${kinds}${run.kinds.length > 4 ? ", …" : ""})` : "");
}

function head(event, type, context) {
  const node = el("div", "ev-head");
  const label = type === "raw" && event.kind ? event.kind : LABELS[type];
  node.append(el("span", "ev-type", label));
  if (event["is-error"]) node.append(el("span", "flag error", "error"));
  if (event.sidechain) node.append(el("span", "flag", "sub-agent"));
  if (event.truncated) node.append(el("span", "flag", "cut by the server"));
  if (event._turn) {
    const tokens = el("span", "turn-tokens");
    event._turn.badge = tokens;
    if (event._turn.input || event._turn.output) tokens.textContent = tokenText(event._turn);
    node.append(tokens);
  }
  const when = el("span", "ev-when");
  const line = button("ev-line", `#${event.line}`, (click) => context.onLine(event.line, click.shiftKey));
  line.title = "Select this line (shift-click: a range) to write a PAR about it";
  const time = el("time", null, clock(event.timestamp));
  if (event.timestamp) {
    time.dateTime = event.timestamp;
    time.title = full(event.timestamp);
  }
  when.append(line, time);
  node.append(when);
  return node;
}

function renderEvent(event, context) {
  const type = LABELS[event.type] ? event.type : "raw";
  const node = el("article", `event ev-${type}`);
  node.dataset.line = event.line;
  if (isContext(event)) {
    node.classList.add("context");
    node.append(head(event, type, context), ...blocksOf(event).map((block) => contextFold(asText(block.text))));
    return node;
  }
  node.append(head(event, type, context));
  const blocks = blocksOf(event);
  for (const block of blocks) {
    if (block._paired && block.type === "tool_result") continue;
    if (blocks.length > 1 && block.type !== event.type && block.type !== "tool_use") {
      node.append(el("div", `block-label ev-${block.type}`, LABELS[block.type] || block.type));
    }
    node.append(renderBody(block, type === "raw" ? "raw" : block.type, event, context));
  }
  return node;
}

function renderBody(block, type, event, context) {
  if (type === "tool_use") {
    const card = toolCard(block, event.timestamp);
    const result = block["call-id"] ? context.results.get(block["call-id"]) : null;
    if (result) fillResult(card, result.block, result.timestamp, result.line);
    if (block._task !== undefined) {
      card.dataset.task = block._task;
      card.append(subAgentLink(context.children[block._task], context));
    }
    return card;
  }
  if (type === "tool_result") {
    return orphanCard(block, event.timestamp, event.line);
  }
  if (type === "raw") {
    const raw = event.data !== undefined ? JSON.stringify(event.data, null, 2) : asText(event.text);
    return details([el("span", "preview", firstLine(event.data !== undefined ? JSON.stringify(event.data) : raw, 140))],
      raw);
  }
  const text = asText(block.text);
  const slash = type === "user" && SLASH.exec(text);
  if (slash) {
    const args = SLASH_ARGS.exec(text);
    return el("div", "body slash", `/${slash[1]}${args && args[1].trim() ? " " + args[1].trim() : ""}`);
  }
  if (type === "user" && isContextText(text)) return contextFold(text);
  const output = type === "user" && COMMAND_OUTPUT.exec(text);
  if (output) return details([el("span", "dim", "command output"), el("span", "preview", firstLine(output[2], 140))], output[2]);
  return foldable(text, "body", renderMarkdown);
}

// The link from a Task card to the sub-agent's own session, when the lab has it.
export function subAgentLink(child, context) {
  const box = el("div", "subagent");
  if (!child) return box;
  const link = el("a", null, `Sub-agent session ${child["session-id"] || child.id}`);
  link.href = context.sessionUrl(child.id);
  box.append(link);
  return box;
}
