"""
The web UI's static files, served from the package (`fulabd/ui/`) under `/fulab/lab/`.

Plain files, no build step and nothing fetched from elsewhere: the server may
have no internet.  Each file is read once; `no-cache` makes browsers revalidate
so an upgraded daemon never runs with a stale script.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from twisted.web import resource

FILES = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "app.css": b"text/css; charset=utf-8",
}


def read(name: str) -> bytes:
    return resources.files("fulabd").joinpath("ui", name).read_bytes()


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


def public_paths(prefix: str = "/fulab/lab/") -> frozenset[str]:
    """The URL paths of the UI's own files: the page shell, which holds no session data."""
    return frozenset([prefix] + [prefix + name for name in FILES])


def mount(lab: resource.Resource) -> None:
    """Serve the UI at `lab`'s own URL (`/fulab/lab/`) and its files by name."""
    for name, content_type in FILES.items():
        lab.putChild(name.encode(), StaticFile(read(name), content_type))
    lab.putChild(b"", lab.children[b"index.html"])
