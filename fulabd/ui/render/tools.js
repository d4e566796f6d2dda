// A tool call and its result as one card: name, the telling argument, status, time taken,
// the input (as diffs for file edits, raw one click away) and the result folded under it.
import { el, asText, firstLine, details } from "../dom.js";
import { duration, parse } from "../time.js";
import { toolDiffs, renderDiff } from "./diff.js";

const SALIENT = ["command", "cmd", "file_path", "notebook_path", "path", "pattern", "url", "query", "description",
  "prompt"];

function parsed(input) {
  if (typeof input !== "string") return input;
  try { return JSON.parse(input); } catch (error) { return input; }
}

// A tool call's input as readable JSON (Codex sends its arguments as a JSON string).
function prettyInput(input) {
  const value = parsed(input);
  return typeof value === "string" ? value : asText(value);
}

// The most telling part of a tool call's input, for its one-line summary.
function salient(input) {
  const value = parsed(input);
  if (typeof value === "string") return value;
  if (!value || typeof value !== "object") return value === undefined || value === null ? "" : String(value);
  for (const key of SALIENT) {
    const part = value[key];
    if (typeof part === "string" && part) return part;
    if (Array.isArray(part) && part.length) return part.join(" ");
  }
  return JSON.stringify(value);
}

// Whether a result reports failure: Claude's is_error, or a Codex exit code other than 0.
function failed(result) {
  if (result["is-error"]) return true;
  const content = asText(result.content);
  const value = parsed(content);
  if (value && typeof value === "object" && value.metadata && typeof value.metadata.exit_code === "number") {
    return value.metadata.exit_code !== 0;
  }
  const code = /^Exit code: (\d+)/m.exec(content.slice(0, 400));
  return code ? code[1] !== "0" : false;
}

// The text of a Codex result wrapped as {"output": …, "metadata": …}, else the content.
function resultText(result) {
  const content = asText(result.content);
  const value = parsed(content);
  return value && typeof value === "object" && typeof value.output === "string" ? value.output : content;
}

function cardShell(name, argument, timestamp) {
  const card = el("div", "tool-card pending");
  card.dataset.started = timestamp || "";
  const head = el("div", "tool-head");
  head.append(el("span", "tool-name", name), el("span", "tool-arg", argument),
    el("span", "tool-status", "no result yet"), el("span", "tool-time"));
  card.append(head, el("div", "tool-result"));
  return card;
}

export function toolCard(call, timestamp) {
  const card = cardShell(call["tool-name"] || "tool", firstLine(salient(call.input), 160) || "(no input)", timestamp);
  if (call["call-id"]) card.dataset.callId = call["call-id"];
  const diffs = toolDiffs(call["tool-name"], call.input);
  const input = diffs && diffs.length
    ? [...diffs.map(renderDiff), details([el("span", "dim", "raw input")], prettyInput(call.input), "fold raw-input")]
    : [details([el("span", "dim", "input")], prettyInput(call.input), "fold tool-input")];
  card.lastChild.before(...input);
  return card;
}

// A result whose call is not among the lines held (the view was opened past it).
export function orphanCard(result, timestamp, line) {
  const card = cardShell("result", "of a call not loaded here", null);
  fillResult(card, result, timestamp, line);
  return card;
}

// Put `result` (a tool_result block, its line's timestamp and line index) into its card.
export function fillResult(card, result, timestamp, line) {
  const isError = failed(result);
  card.classList.remove("pending");
  card.classList.add(isError ? "error" : "ok");
  card.dataset.resultLine = line;
  card.querySelector(".tool-status").textContent = isError ? "error" : "ok";
  const started = parse(card.dataset.started);
  const ended = parse(timestamp);
  if (started !== null && ended !== null) card.querySelector(".tool-time").textContent = duration(ended - started);
  const text = resultText(result);
  const size = text.length > 200 ? ` · ${text.length.toLocaleString()} characters` : "";
  const summary = [el("span", "dim", `result #${line}`), el("span", "preview", firstLine(text, 140) || "(empty)"),
    el("span", "dim", size)];
  card.querySelector(".tool-result").replaceChildren(details(summary, text, "fold result"));
}
