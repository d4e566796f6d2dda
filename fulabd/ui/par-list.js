// The PARs page (`?view=pars`): PARs of every session, newest first, filtered by tags and words, each
// linking to its session.
import { $, el, named } from "./dom.js";
import { QUESTIONS } from "./pars.js";
import { indexPages } from "./search.js";

const PAGE = 50;

export function showParList(params, { apiUrl, pageUrl }) {
  const tags = params.get("tags") || "";
  const words = params.get("q") || "";
  const state = { shown: 0 };
  $("pars-view").hidden = false;
  document.title = "fulab lab — PARs";
  $("crumb").textContent = tags ? `PARs tagged ${tags}` : "PARs";
  $("pars-tags").value = tags;
  $("pars-q").value = words;
  $("pars-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    filter($("pars-tags").value.trim(), $("pars-q").value.trim());
  });
  const load = indexPages(apiUrl, "pars", { limit: PAGE, ...(tags ? { tags } : {}), ...(words ? { q: words } : {}) },
                          { more: $("pars-more"), error: $("pars-error"), failed: "Could not load the PARs" },
                          (body) => {
    $("pars-list").append(...body.pars.map(card));
    state.shown += body.pars.length;
    $("pars-count").textContent = `${state.shown}${body.cursor ? "+" : ""} PARs`;
    $("pars-list-empty").hidden = state.shown > 0;
    $("pars-list-empty").textContent = tags || words ? "No PAR matches the filter." : "No PARs yet.";
  });
  load();

  function filter(newTags, newWords) {
    location.href = pageUrl({ view: "pars", ...(newTags ? { tags: newTags } : {}), ...(newWords ? { q: newWords } : {}) });
  }

  function card(item) {
    const par = item.par || {};
    const box = el("article", "par-entry");
    box.append(el("h3", null, named(par.title || "Session Review")));
    const meta = el("div", "par-entry-meta");
    const when = Date.parse(par.timestamp);
    const session = el("a", "par-session", named(item["session-title"] || item["session-id"]));
    const lines = Array.isArray(par.lines) && Number.isInteger(par.lines[0]) ? { line: par.lines[0] } : {};
    session.href = pageUrl({ session: item.id, ...lines });
    meta.append(el("span", null, Number.isNaN(when) ? "" : new Date(when).toLocaleString()), session);
    for (const tag of par.tags || []) {
      const chip = el("button", "tag", named(String(tag)));
      chip.type = "button";
      chip.addEventListener("click", () => filter(String(tag), words));
      meta.append(chip);
    }
    box.append(meta);
    const answers = el("dl", "par-answers");
    for (const [key, label] of QUESTIONS) {
      const answer = par.questions && par.questions[key];
      if (answer) answers.append(el("dt", null, label), el("dd", null, String(answer)));
    }
    box.append(answers);
    return box;
  }
}
