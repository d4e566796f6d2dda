// File edits as unified diffs: Claude Edit/MultiEdit/Write/NotebookEdit inputs and Codex
// apply_patch texts. The line diff is a plain LCS on the lines between the common prefix
// and suffix, which is exact for the short strings edits carry; past MAX_CELLS it gives up
// and shows the old lines removed and the new ones added.
import { el, button, named } from "../dom.js";

const CONTEXT = 3;
const MAX_CELLS = 2_000_000;
const FOLD_LINES = 60;   // a diff longer than this shows its first FOLD_LINES lines until asked

function splitLines(text) {
  if (!text) return [];
  const lines = String(text).split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines;
}

// Every line of `a` and `b` as [sign, text]: " " both, "-" only in a, "+" only in b.
function lineDiff(a, b) {
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) { endA--; endB--; }
  const head = a.slice(0, start).map((line) => [" ", line]);
  const tail = a.slice(endA).map((line) => [" ", line]);
  const x = a.slice(start, endA);
  const y = b.slice(start, endB);
  if (x.length * y.length > MAX_CELLS) {
    return [...head, ...x.map((line) => ["-", line]), ...y.map((line) => ["+", line]), ...tail];
  }
  const width = y.length + 1;
  const table = new Uint32Array((x.length + 1) * width);   // table[i][j]: LCS length of x[i:], y[j:]
  for (let i = x.length - 1; i >= 0; i--) {
    for (let j = y.length - 1; j >= 0; j--) {
      table[i * width + j] = x[i] === y[j]
        ? table[(i + 1) * width + j + 1] + 1
        : Math.max(table[(i + 1) * width + j], table[i * width + j + 1]);
    }
  }
  const middle = [];
  let i = 0;
  let j = 0;
  while (i < x.length && j < y.length) {
    if (x[i] === y[j]) { middle.push([" ", x[i]]); i++; j++; }
    else if (table[(i + 1) * width + j] >= table[i * width + j + 1]) middle.push(["-", x[i++]]);
    else middle.push(["+", y[j++]]);
  }
  while (i < x.length) middle.push(["-", x[i++]]);
  while (j < y.length) middle.push(["+", y[j++]]);
  return [...head, ...middle, ...tail];
}

// The changed lines of a diff with CONTEXT lines around them, under "@@ -a,b +c,d @@" headers.
function hunks(lines) {
  const ranges = [];
  lines.forEach(([sign], index) => {
    if (sign === " ") return;
    const from = Math.max(0, index - CONTEXT);
    const to = Math.min(lines.length, index + CONTEXT + 1);
    const last = ranges[ranges.length - 1];
    if (last && from <= last[1]) last[1] = to;
    else ranges.push([from, to]);
  });
  const out = [];
  let oldLine = 1;
  let newLine = 1;
  let index = 0;
  for (const [from, to] of ranges) {
    for (; index < from; index++) { oldLine++; newLine++; }
    const body = lines.slice(from, to);
    const olds = body.filter(([sign]) => sign !== "+").length;
    const news = body.filter(([sign]) => sign !== "-").length;
    out.push(["@", `@@ -${oldLine},${olds} +${newLine},${news} @@`], ...body);
    oldLine += olds;
    newLine += news;
    index = to;
  }
  return out;
}

function parsed(input) {
  if (typeof input !== "string") return input;
  try { return JSON.parse(input); } catch (error) { return input; }
}

// The patch text of a Codex apply_patch call: its custom input, or the shell argument holding it.
function patchText(input) {
  const value = parsed(input);
  if (typeof value === "string") return value.includes("*** Begin Patch") ? value : null;
  if (!value || typeof value !== "object") return null;
  for (const candidate of [value.input, value.patch, ...(Array.isArray(value.command) ? value.command : [value.command])]) {
    if (typeof candidate === "string" && candidate.includes("*** Begin Patch")) {
      return candidate.slice(candidate.indexOf("*** Begin Patch"));
    }
  }
  return null;
}

// The files of an apply_patch text, each {path, note, lines}.
function parsePatch(text) {
  const files = [];
  let file = null;
  for (const line of text.split("\n")) {
    const header = /^\*\*\* (Add|Update|Delete) File: (.*)$/.exec(line);
    if (header) {
      file = { path: header[2].trim(), note: { Add: "new file", Update: "", Delete: "deleted" }[header[1]], lines: [] };
      files.push(file);
    } else if (file && line.startsWith("*** Move to: ")) {
      file.note = `moved to ${line.slice(13).trim()}`;
    } else if (file && !line.startsWith("*** ")) {
      if (line.startsWith("@@")) file.lines.push(["@", line]);
      else if (line.startsWith("+") || line.startsWith("-") || line.startsWith(" ")) file.lines.push([line[0], line.slice(1)]);
      else if (line) file.lines.push([" ", line]);
    }
  }
  return files;
}

// The diffs a tool call makes, as [{path, note, lines}], or null when it edits no file.
export function toolDiffs(name, input) {
  const value = parsed(input);
  const tool = String(name || "");
  if (value && typeof value === "object") {
    const path = value.file_path || value.notebook_path || value.path || "";
    if (tool === "Edit" && typeof value.old_string === "string") {
      return [{ path, note: value.replace_all ? "every occurrence" : "",
        lines: hunks(lineDiff(splitLines(value.old_string), splitLines(value.new_string))) }];
    }
    if (tool === "MultiEdit" && Array.isArray(value.edits)) {
      return value.edits.map((edit, n) => ({ path, note: `edit ${n + 1} of ${value.edits.length}`,
        lines: hunks(lineDiff(splitLines(edit && edit.old_string), splitLines(edit && edit.new_string))) }));
    }
    if (tool === "Write" && typeof value.content === "string") {
      return [{ path, note: "new file", lines: splitLines(value.content).map((line) => ["+", line]) }];
    }
    if (tool === "NotebookEdit") {
      const where = [value.edit_mode || "replace", value.cell_type, value.cell_id && `cell ${value.cell_id}`];
      return [{ path, note: where.filter(Boolean).join(" "),
        lines: splitLines(value.new_source).map((line) => [value.edit_mode === "delete" ? "-" : "+", line]) }];
    }
  }
  const patch = /apply_patch/.test(tool) || tool === "shell" || tool === "exec_command" ? patchText(input) : null;
  return patch ? parsePatch(patch) : null;
}

const SIGN_CLASS = { "+": "add", "-": "del", " ": "ctx", "@": "hunk" };

function lineNode([sign, text]) {
  return el("span", `dl ${SIGN_CLASS[sign]}`, sign === "@" ? text : sign + text);
}

// One file's diff: its path, then the lines, folded past FOLD_LINES.
export function renderDiff(diff) {
  const box = el("div", "diff");
  const head = el("div", "diff-path", diff.path ? named(diff.path) : "(no path)");
  if (diff.note) head.append(el("span", "dim", ` · ${diff.note}`));
  const added = diff.lines.filter(([sign]) => sign === "+").length;
  const removed = diff.lines.filter(([sign]) => sign === "-").length;
  head.append(el("span", "diff-count add", ` +${added}`), el("span", "diff-count del", ` −${removed}`));
  const body = el("pre", "diff-body");
  body.append(...diff.lines.slice(0, FOLD_LINES).map(lineNode));
  box.append(head, body);
  if (diff.lines.length > FOLD_LINES) {
    box.append(button("more", `Show ${diff.lines.length - FOLD_LINES} more diff lines`, (event) => {
      body.append(...diff.lines.slice(FOLD_LINES).map(lineNode));
      event.currentTarget.remove();
    }));
  }
  return box;
}
