"""
The HTML export: the Markdown export rendered by markdown-it-py with the web UI's
markdown-it rules (raw HTML off, only addresses with a scheme linkified, links
limited to http(s)/mailto/#), in one self-contained page: inline CSS, no script,
and nothing that points out of the file (links show their address as text,
images are `[image: …]`), so it opens offline without a request.
"""

from __future__ import annotations

import html
import re

from markdown_it import MarkdownIt

SAFE_LINK = re.compile(r"^(https?:|mailto:|#)", re.I)


def renderer() -> MarkdownIt:
    """markdown-it-py set as the UI's markdown-it; links and images become text, so nothing points out."""
    md = MarkdownIt("default", {"html": False, "linkify": True})
    md.linkify.set({"fuzzy_link": False, "fuzzy_email": False})  # file names like CLAUDE.md stay text
    md.validateLink = lambda url: bool(SAFE_LINK.match(url.strip()))

    def link_open(self, tokens, index, options, env):
        env.setdefault("links", []).append((tokens[index].attrGet("href") or "", tokens[index].markup))
        return '<span class="link">'

    def link_close(self, tokens, index, options, env):
        href, markup = env["links"].pop()
        return "</span>" if markup == "linkify" else f'</span> <span class="url">&lt;{html.escape(href)}&gt;</span>'

    def image(self, tokens, index, options, env):
        return f'<span class="image">[image: {html.escape(tokens[index].content or "image")}]</span>'

    def fence_rule(self, tokens, index, options, env):
        token = tokens[index]
        language = token.info.strip().split(maxsplit=1)[0] if token.info.strip() else ""
        if language != "diff":  # as markdown-it's own fence rule writes it
            attribute = f' class="language-{html.escape(language)}"' if language else ""
            return f"<pre><code{attribute}>{html.escape(token.content, quote=True)}</code></pre>\n"
        kinds = {"+": "add", "-": "del", "@": "hunk"}
        lines = "".join(f'<span class="dl {kinds.get(line[:1], "ctx")}">{html.escape(line)}</span>'
                        for line in token.content.splitlines())
        return f'<pre class="diff"><code>{lines}</code></pre>\n'

    def cell_open(self, tokens, index, options, env):
        token = tokens[index]
        align = re.search(r"text-align:(left|right|center)", str(token.attrGet("style") or ""))
        token.attrs.pop("style", None)
        if align:
            token.attrSet("class", f"align-{align[1]}")
        return self.renderToken(tokens, index, options, env)

    md.add_render_rule("th_open", cell_open)
    md.add_render_rule("td_open", cell_open)
    md.add_render_rule("link_open", link_open)
    md.add_render_rule("link_close", link_close)
    md.add_render_rule("image", image)
    md.add_render_rule("fence", fence_rule)
    return md


STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; color: #1d2330; max-width: 960px; margin: 2em auto; padding: 0 1em; }
pre { background: #f6f7f9; border: 1px solid #e2e5eb; border-radius: 4px; padding: 8px 10px; overflow-x: auto;
      white-space: pre-wrap; overflow-wrap: anywhere; font-size: 13px; }
code { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; }
table { border-collapse: collapse; } th, td { border: 1px solid #e2e5eb; padding: 3px 8px; text-align: left; }
h2 { border-top: 1px solid #e2e5eb; padding-top: .6em; }
.dl { display: block; } .dl.add { background: #e6ffec; } .dl.del { background: #ffebe9; } .dl.hunk { color: #57606a; }
.url { color: #57606a; font-size: 90%; } .link { text-decoration: underline; }
.align-left { text-align: left; } .align-right { text-align: right; } .align-center { text-align: center; }
blockquote { border-left: 3px solid #e2e5eb; margin-left: 0; padding-left: 10px; color: #4a5263; }
"""


def html_document(title: str, text: str) -> str:
    body = renderer().render(text)
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")
