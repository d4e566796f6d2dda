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
        if request.setETag(self.etag):
            return b""
        return self.body


class Lab(resource.Resource):
    """The `/fulab/lab/` folder.  Without the slash it redirects, so the page's relative URLs stay under the prefix."""

    def render_GET(self, request):
        query = request.uri.partition(b"?")[2]
        request.redirect(b"lab/" + (b"?" + query if query else b""))
        return b""


def served_files(folder=None, prefix: str = "") -> dict[str, tuple]:
    """Every served file under `folder` (the UI's, by default), by its path (`render/diff.js`): (folder entry, type)."""
    files = {}
    for entry in (folder or ui_folder()).iterdir():
        if entry.is_dir():
            files |= served_files(entry, f"{prefix}{entry.name}/")
            continue
        content_type = CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
        if content_type is not None:
            files[prefix + entry.name] = (entry, content_type)
    return files


def public_paths(prefix: str = "/fulab/lab/") -> frozenset[str]:
    """The URL paths of the UI's own files: the page shell and its scripts, which hold no session data."""
    return frozenset([prefix] + [prefix + name for name in served_files()])


def mount(lab: resource.Resource) -> None:
    """Serve the UI at `lab`'s own URL (`/fulab/lab/`) and its files by name."""
    for name, (entry, content_type) in served_files().items():
        *folders, leaf = name.split("/")
        parent = lab
        for folder in (part.encode() for part in folders):
            if folder not in parent.children:
                parent.putChild(folder, resource.Resource())
            parent = parent.children[folder]
        parent.putChild(leaf.encode(), StaticFile(entry.read_bytes(), content_type))
    lab.putChild(b"", lab.children[b"index.html"])
