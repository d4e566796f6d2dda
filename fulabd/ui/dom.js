// Small DOM helpers shared by the list (app.js) and the session view.
// Session content goes into the page as text (textContent); the only HTML the UI
// inserts is markdown-it's output with raw HTML disabled (render/markdown.js).

const FOLD_CHARS = 1500;   // longer texts are folded

export function $(id) { return document.getElementById(id); }

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// Bidirectional-text controls reorder what is drawn around them (a path "src/\u202egnp.js" is drawn as
// "src/sj.png"): in names (paths, titles, tags, metadata) they are shown as what they are.
const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

export function named(text) {
  return String(text).replace(BIDI_CONTROLS,
    (c) => `⟨U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`);
}

export function button(className, text, onClick) {
  const node = el("button", className, text);
  node.type = "button";
  if (onClick) node.addEventListener("click", onClick);
  return node;
}

export function asText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  if (Array.isArray(value) && value.every((part) => part && typeof part.text === "string")) {
    return value.map((part) => part.text).join("\n");
  }
  return JSON.stringify(value, null, 2);
}

export function firstLine(text, limit) {
  const line = (text || "").trim().split("\n", 1)[0];
  return line.length > limit ? line.slice(0, limit) + "…" : line;
}

// A block that shows the first FOLD_CHARS characters of `text` (via `fill(node, text)`) until asked for all.
export function foldable(text, className, fill = (node, part) => { node.textContent = part; }) {
  const box = el("div", className);
  const body = el("div", "text");
  box.append(body);
  if (text.length <= FOLD_CHARS) {
    fill(body, text);
    return box;
  }
  const label = `Show all (${text.length.toLocaleString()} characters)`;
  fill(body, text.slice(0, FOLD_CHARS) + "…");
  box.append(button("more", label, (event) => {
    const more = event.currentTarget;
    const open = more.dataset.open === "1";
    fill(body, open ? text.slice(0, FOLD_CHARS) + "…" : text);
    more.dataset.open = open ? "0" : "1";
    more.textContent = open ? label : "Show less";
  }));
  return box;
}

// A <details> whose content is built on first opening (`content`: a string, shown as <pre>, or a builder).
export function details(summaryParts, content, className = "fold") {
  const box = el("details", className);
  const summary = el("summary");
  summary.append(...summaryParts);
  box.append(summary);
  box.addEventListener("toggle", () => {
    if (box.open && box.childNodes.length === 1) {
      box.append(typeof content === "function" ? content() : el("pre", "code", content));
    }
  }, { once: true });
  return box;
}
