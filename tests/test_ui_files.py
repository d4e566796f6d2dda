"""
The UI's files as served: every ES module the page imports (from index.html's
script, transitively) is served with a JavaScript type, and nothing else in the
folder (licences, notes) is.
"""

import posixpath
import re

from fulabd import ui

IMPORT = re.compile(r"""^\s*import\s[^'"]*['"]([^'"]+)['"]""", re.M)


def test_every_module_the_page_imports_is_served_as_javascript_and_notes_are_not():
    files = ui.served_files()
    index = files["index.html"][0].read_text()
    entry = re.search(r'<script type="module" src="([^"]+)"', index)[1]
    pending, reached = [entry], set()
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        assert name in files and files[name][1].startswith(b"text/javascript"), name
        source = files[name][0].read_text()
        pending += [posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                    for target in IMPORT.findall(source)]
    assert {"session.js", "render/markdown.js", "vendor/markdown-it/markdown-it.min.js"} <= reached
    assert not [name for name in files if "LICENSE" in name or name.endswith(".md")]
    assert set(ui.public_paths()) == {"/fulab/lab/"} | {"/fulab/lab/" + name for name in files}
