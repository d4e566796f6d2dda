"""
The web UI's static files, served from the package (`fulabd/ui/`) under `/fulab/lab/`.

Plain files, no build step and nothing fetched from elsewhere: the server may
have no internet.  Every `.html`, `.js` and `.css` file of the folder and its
subfolders (the session view's ES modules, the vendored Markdown library) is
served; other files (licences, notes) are not.  Each file is read once;
`no-cache` makes browsers revalidate so an upgraded daemon never runs with a
stale script.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from twisted.web import resource

CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}


def ui_folder():
    return resources.files("fulabd").joinpath("ui")


class StaticFile(resource.Resource):
    """One file of the UI, with an ETag so revalidation costs a 304."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes):
        super().__init__()
        self.body = body
        self.content_type = content_type
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"'

    def render_GET(self, request):
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if request.setETag(self.etag):
            return b""
        return self.body


class Lab(resource.Resource):
    """The `/fulab/lab/` folder.  Without the slash it redirects, so the page's relative URLs stay under the prefix."""

    def render_GET(self, request):
        query = request.uri.partition(b"?")[2]
        request.redirect(b"lab/" + (b"?" + query if query else b""))
        return b""


def serve_folder(parent: resource.Resource, folder) -> None:
    """Put every served file under `folder` (recursively) below `parent`, by name."""
    for entry in folder.iterdir():
        if entry.is_dir():
            child = resource.Resource()
            serve_folder(child, entry)
            if child.children:
                parent.putChild(entry.name.encode(), child)
            continue
        content_type = CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
        if content_type is not None:
            parent.putChild(entry.name.encode(), StaticFile(entry.read_bytes(), content_type))


def mount(lab: resource.Resource) -> None:
    """Serve the UI at `lab`'s own URL (`/fulab/lab/`) and its files by name."""
    serve_folder(lab, ui_folder())
    lab.putChild(b"", lab.children[b"index.html"])
