// The PAR column: PAR cards (with the lines they are about), the form, and the selection of
// lines a PAR can be written about.
import { $, el, button, foldable, named } from "./dom.js";
import { clock, ago } from "./time.js";

export const QUESTIONS = [
  ["intention", "Intention"], ["happening", "What happened"], ["perspectives", "Perspectives"],
  ["learned", "Learned"], ["forward", "Forward"],
];

const selection = { first: null, last: null, anchor: null };
let formLines = null;     // [first, last] the open form is about, or null
let goTo = () => {};

function rangeText([first, last]) {
  return first === last ? `line ${first}` : `lines ${first}–${last}`;
}

export function isSelected(line) {
  return selection.first !== null && line >= selection.first && line <= selection.last;
}

// Click a line number: select it; shift-click: extend the selection to it.
export function selectLine(line, extend) {
  if (extend && selection.anchor !== null) {
    selection.first = Math.min(selection.anchor, line);
    selection.last = Math.max(selection.anchor, line);
  } else if (selection.first === line && selection.last === line) {
    clearSelection();
    return;
  } else {
    Object.assign(selection, { first: line, last: line, anchor: line });
  }
  markSelection();
}

function clearSelection() {
  Object.assign(selection, { first: null, last: null, anchor: null });
  markSelection();
}

export function markSelection() {
  for (const row of document.querySelectorAll(".row[data-line]")) {
    row.classList.toggle("selected", isSelected(Number(row.dataset.line)));
  }
  const bar = $("selection-bar");
  bar.hidden = selection.first === null;
  if (!bar.hidden) $("selection-text").textContent = `${rangeText([selection.first, selection.last])} selected`;
}

function setFormLines(lines) {
  formLines = lines;
  $("par-lines").hidden = !lines;
  $("par-lines-text").textContent = lines ? `About ${rangeText(lines)}` : "";
}

export function addPar(par) {
  const card = el("article", "par-card");
  card.dataset.parId = par["par-id"] || "";
  card.append(el("h3", "par-title", named(par.title || "Post-action review")));
  const info = el("div", "par-info");
  for (const tag of par.tags || []) info.append(el("span", "tag", named(String(tag).replace(/^:/, ""))));
  if (par.timestamp) info.append(el("span", "par-when", `${clock(par.timestamp)} · ${ago(par.timestamp)}`));
  const lines = Array.isArray(par.lines) && par.lines.length === 2 ? par.lines.map(Number) : null;
  if (lines && lines.every(Number.isInteger)) {
    const link = button("par-lines", rangeText(lines), () => goTo(lines[0], lines[1]));
    link.title = "Show these lines in the session";
    info.append(link);
  }
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

function openForm(lines) {
  const form = $("par-form");
  setFormLines(lines);
  form.hidden = false;
  form.elements.title.focus();
}

// `sessionId()` names the session to post to; `goTo(first, last)` shows lines in the transcript.
export function setupPars(options) {
  goTo = options.goTo;
  const form = $("par-form");
  const status = $("par-status");
  $("write-par").addEventListener("click", () => {
    if (form.hidden) openForm(null);
    else form.hidden = true;
  });
  $("par-from-selection").addEventListener("click", () => openForm([selection.first, selection.last]));
  $("selection-clear").addEventListener("click", clearSelection);
  $("par-lines-clear").addEventListener("click", () => setFormLines(null));
  $("par-cancel").addEventListener("click", () => { form.hidden = true; status.textContent = ""; });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = form.elements;
    const body = {
      title: fields.title.value,
      tags: fields.tags.value,
      questions: Object.fromEntries(QUESTIONS.map(([key]) => [key, fields[key].value])),
    };
    if (formLines) body.lines = formLines;
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    status.className = "form-status";
    status.textContent = "Saving…";
    try {
      const response = await fetch(options.apiUrl(`sessions/${encodeURIComponent(options.sessionId())}/pars`), {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
      });
      const reply = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(reply.detail || `the server answered ${response.status}`);
      form.reset();
      form.hidden = true;
      setFormLines(null);
      clearSelection();
      status.textContent = "";
    } catch (error) {
      status.className = "form-status error";
      status.textContent = `Not saved: ${error.message}`;
    } finally {
      submit.disabled = false;
    }
  });
}
