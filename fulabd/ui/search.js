// fulab lab web UI: the search box (in the header of every page) and its results, grouped by session.
// Uses app.js's helpers ($, el, params, apiUrl, pageUrl). Matched words are <mark> elements built here:
// nothing the server sends is ever parsed as HTML.
"use strict";

(() => {
  const PAGE = 50;
  const box = $("search-box");
  const query = params.get("search");
  box.value = query || "";
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = box.value.trim();
    if (q) location.href = pageUrl({ search: q });
  });
  if (query === null) return;

  const kind = params.get("kind") || "";
  const state = { cursor: null, hits: 0, groups: new Map() };
  $("search-view").hidden = false;
  document.title = `fulab lab — search: ${query}`;
  $("crumb").textContent = `search: ${query}`;
  $("search-kind").value = kind;
  $("search-kind").addEventListener("change", (event) => {
    const chosen = event.target.value;
    location.href = pageUrl({ search: query, ...(chosen ? { kind: chosen } : {}) });
  });
  $("search-more").addEventListener("click", load);
  load();

  async function load() {
    $("search-more").disabled = true;
    const url = apiUrl("search", { q: query, limit: PAGE, ...(kind ? { kind } : {}),
                                   ...(state.cursor ? { cursor: state.cursor } : {}) });
    try {
      const response = await fetch(url, { cache: "no-store" });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.detail || `the server answered ${response.status}`);
      $("search-error").hidden = true;
      body.hits.forEach(addHit);
      state.hits += body.hits.length;
      state.cursor = body.cursor;
      const more = state.cursor ? "+" : "";
      const indexing = body["caught-up"] ? "" : " (still indexing: more may appear)";
      $("search-count").textContent =
        `${state.hits}${more} matches in ${state.groups.size}${more} sessions${indexing}`;
      $("search-empty").hidden = state.hits > 0;
      $("search-empty").textContent = `Nothing matches ${query}.`;
    } catch (error) {
      $("search-error").textContent = `Could not search: ${error.message}`;
      $("search-error").hidden = false;
    }
    $("search-more").hidden = !state.cursor;
    $("search-more").disabled = false;
  }

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

  function snippet(parts) {
    const box = el("div", "snippet");
    for (const part of parts) box.append(part.match ? el("mark", null, part.text) : document.createTextNode(part.text));
    return box;
  }
})();
