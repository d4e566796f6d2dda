// The search box (in the header of every page) and its results (`?search=`), grouped by session.
// Matched words are <mark> elements built here: nothing the server sends is ever parsed as HTML.
import { $, el } from "./dom.js";

const PAGE = 50;

export function wireSearchBox(params, { pageUrl }) {
  const box = $("search-box");
  box.value = params.get("search") || "";
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = box.value.trim();
    if (q) location.href = pageUrl({ search: q });
  });
}

// Pages of an index answer (`/search`, `/pars`), the next one on each click of `more`: `show(body)` renders
// one; a failure is shown in `error`, prefixed with `failed`. Returns the function that loads the next page.
export function indexPages(apiUrl, path, query, { more, error, failed }, show) {
  let cursor = null;
  async function load() {
    more.disabled = true;
    try {
      const response = await fetch(apiUrl(path, { ...query, ...(cursor ? { cursor } : {}) }), { cache: "no-store" });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.detail || `the server answered ${response.status}`);
      error.hidden = true;
      cursor = body.cursor;
      show(body);
    } catch (problem) {
      error.textContent = `${failed}: ${problem.message}`;
      error.hidden = false;
    }
    more.hidden = !cursor;
    more.disabled = false;
  }
  more.addEventListener("click", load);
  return load;
}

export function showSearch(params, { apiUrl, pageUrl }) {
  const query = params.get("search");
  const kind = params.get("kind") || "";
  const state = { hits: 0, groups: new Map() };
  $("search-view").hidden = false;
  document.title = `fulab lab — search: ${query}`;
  $("crumb").textContent = `search: ${query}`;
  $("search-kind").value = kind;
  $("search-kind").addEventListener("change", (event) => {
    const chosen = event.target.value;
    location.href = pageUrl({ search: query, ...(chosen ? { kind: chosen } : {}) });
  });
  const load = indexPages(apiUrl, "search", { q: query, limit: PAGE, ...(kind ? { kind } : {}) },
                          { more: $("search-more"), error: $("search-error"), failed: "Could not search" }, (body) => {
    body.hits.forEach(addHit);
    state.hits += body.hits.length;
    const more = body.cursor ? "+" : "";
    const indexing = body["caught-up"] ? "" : " (still indexing: more may appear)";
    $("search-count").textContent = `${state.hits}${more} matches in ${state.groups.size}${more} sessions${indexing}`;
    $("search-empty").hidden = state.hits > 0;
    $("search-empty").textContent = `Nothing matches ${query}.`;
  });
  load();

  function addHit(hit) {
    let group = state.groups.get(hit.id);
    if (!group) {
      group = el("section", "hit-group");
      const head = el("div", "hit-session");
      const link = el("a", "hit-title", hit.title || hit["session-id"]);
      link.href = pageUrl({ session: hit.id });
      head.append(link, el("span", "hit-where", [hit.source, hit.project, hit["session-id"]].filter(Boolean)
        .join(" · ")));
      group.append(head, el("ol", "hits"));
      state.groups.set(hit.id, group);
      $("search-results").append(group);
    }
    const link = el("a", "hit");
    link.href = pageUrl({ session: hit.id, ...(hit.line !== null ? { line: hit.line } : {}) });
    link.dataset.session = hit.id;
    link.dataset.line = hit.line === null ? "" : hit.line;
    const when = Date.parse(hit.timestamp);
    link.append(el("span", `hit-kind kind-${hit.kind}`, hit.kind),
                el("span", "hit-line", hit.line !== null ? `line ${hit.line}` : "PAR"),
                el("span", "hit-when", Number.isNaN(when) ? "" : new Date(when).toLocaleString()),
                snippet(hit.snippet));
    const item = el("li");
    item.append(link);
    group.querySelector("ol").append(item);
  }
}

function snippet(parts) {
  const box = el("div", "snippet");
  for (const part of parts) box.append(part.match ? el("mark", null, part.text) : document.createTextNode(part.text));
  return box;
}
