// How each event relates to the ones before it, decided once as it arrives: the date and
// pause markers, which result pairs with which call, runs of bookkeeping, turns and their tokens.
import { parse, dayKey, PAUSE_MS } from "../time.js";
import { blocksOf, isBookkeeping, isPrompt, usageOf, tokenText, updateRunLabel } from "./events.js";

const SUB_AGENT_TOOLS = new Set(["Task", "Agent"]);

// What an event makes of the ones before it: `reading` is that state, one per stream from a base line.
export function newReading() {
  return {
    calls: new Set(),    // tool call ids seen
    results: new Map(),  // call id → {block, timestamp, line} of its result
    run: null,           // the run of bookkeeping lines the last shown line belongs to
    runs: 0,
    turn: null,          // the turn (from one prompt to the next) the lines belong to
    tasks: 0,            // sub-agent calls seen
    firstTs: null,
    lastTs: null,
  };
}

// Decide, once, what row an event makes: its markers, its pairing, its run, its turn. Returns
// the results it pairs ([{id, result}]) so cards already shown can be filled.
export function classify(event, reading) {
  const ms = parse(event.timestamp);
  if (ms !== null) {
    if (reading.lastTs === null || dayKey(ms) !== dayKey(reading.lastTs)) event._day = ms;
    else if (ms - reading.lastTs > PAUSE_MS) event._pause = ms - reading.lastTs;
    if (reading.firstTs === null) reading.firstTs = ms;
    reading.lastTs = Math.max(reading.lastTs ?? ms, ms);
  }
  const filled = [];
  let paired = 0;
  let other = 0;
  for (const block of blocksOf(event)) {
    const id = block["call-id"];
    if (block.type === "tool_use") {
      if (id) reading.calls.add(id);
      if (SUB_AGENT_TOOLS.has(block["tool-name"])) block._task = reading.tasks++;
      other++;
    } else if (block.type === "tool_result" && id && reading.calls.has(id) && !reading.results.has(id)) {
      block._paired = true;
      paired++;
      const result = { block, timestamp: event.timestamp, line: event.line };
      reading.results.set(id, result);
      filled.push({ id, result });
    } else if (block.type !== "user" || block.text) {
      other++;   // anything but an empty text block beside the results shows
    }
  }
  if (paired && !other) event._paired = true;
  if (!event._paired) joinRun(event, reading);
  if (isPrompt(event)) {
    reading.turn = { input: 0, output: 0, badge: null, messages: new Map() };
    event._turn = reading.turn;
  }
  countTokens(event, reading);
  return filled;
}

function joinRun(event, reading) {
  if (!isBookkeeping(event)) {
    reading.run = null;
    return;
  }
  if (!reading.run) reading.run = { id: `run-${reading.runs++}`, first: event.line, count: 0, kinds: [], open: false, label: null };
  reading.run.count += 1;
  reading.run.kinds.push(String(event.kind || event.type).replace(/^event_msg\//, ""));
  event._run = reading.run;
  updateRunLabel(reading.run);
}

function countTokens(event, reading) {
  const usage = usageOf(event);
  const turn = reading.turn;
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
