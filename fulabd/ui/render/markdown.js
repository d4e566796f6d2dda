// Transcript text as Markdown, rendered by the vendored markdown-it with raw HTML disabled:
// any HTML in a transcript is shown as text. Links keep only http(s), mailto and in-page
// targets and open with rel="noopener noreferrer"; images are shown as links, never loaded,
// so a transcript cannot make the page fetch anything. The HTML export (fulabd/export.py)
// renders with markdown-it-py and the same rules.
import MarkdownIt from "../vendor/markdown-it/markdown-it.min.js";

const SAFE_LINK = /^(https?:|mailto:|#)/i;

const md = new MarkdownIt({ html: false, linkify: true, breaks: false });
// Only addresses with a scheme become links: transcripts are full of file names (CLAUDE.md, app.py)
// that end in a top-level domain.
md.linkify.set({ fuzzyLink: false, fuzzyEmail: false });
md.validateLink = (url) => SAFE_LINK.test(url.trim());

md.renderer.rules.link_open = (tokens, index, options, env, self) => {
  tokens[index].attrSet("rel", "noopener noreferrer");
  tokens[index].attrSet("target", "_blank");
  return self.renderToken(tokens, index, options);
};

// Table alignment as a class, not a style attribute (the page's CSP allows no inline styles).
for (const rule of ["th_open", "td_open"]) {
  md.renderer.rules[rule] = (tokens, index, options, env, self) => {
    const token = tokens[index];
    const align = /text-align:(left|right|center)/.exec(token.attrGet("style") || "");
    token.attrs = (token.attrs || []).filter(([name]) => name !== "style");
    if (align) token.attrSet("class", `align-${align[1]}`);
    return self.renderToken(tokens, index, options);
  };
}

md.renderer.rules.image = (tokens, index) => {
  const token = tokens[index];
  const alt = md.utils.escapeHtml(token.content || "image");
  const src = token.attrGet("src") || "";
  if (!md.validateLink(src)) return `<span class="md-image">[image: ${alt}]</span>`;
  return `<a class="md-image" href="${md.utils.escapeHtml(src)}" rel="noopener noreferrer" target="_blank">[image: ${alt}]</a>`;
};

export function renderMarkdown(node, text) {
  node.classList.add("markdown");
  node.innerHTML = md.render(text);
}
