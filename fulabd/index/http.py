"""
The search index over HTTP: `GET /fulab/lab/search`, `/fulab/lab/pars` and the
old lab's `/fulab/lab/rap` (JSON, or EDN with `?format=edn`).

Queries run in their own small thread pool, never in the reactor and never in
the pool the store commits from.  Every parameter is checked before the index
sees it; a bad one is a 400 that says how to write it.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server

from fulabd.events import PAR_QUESTIONS
from fulabd.index import BadCursor, IndexUnusable
from fulabd.index.query import BadFilter, BadQuery, parse_filters, parse_limit, parse_query
from fulabd.web import render_data

SEARCH_LIMIT, SEARCH_MOST = 20, 100
PARS_LIMIT, PARS_MOST = 50, 500
RAP_LIMIT, RAP_MOST = 10, 500     # the old /rap's default limit is 10
QUERY_THREADS = 2
RAP_LABELS = ("Intention", "What happened", "Perspectives", "Learned", "Forward")


def indexed_title(session_id: str, title: str | None) -> str | None:
    """A session's title for results: the index's own (its first prompt), until the summaries give one."""
    return title


class Queries(service.Service):
    """Runs index reads in a pool of their own."""

    def __init__(self, index, caught_up, reactor, title_of=indexed_title):
        """`caught_up()` says whether everything durable is searchable yet; `title_of(session_id, indexed)`
        is the title shown with a session's results."""
        self.index = index
        self.caught_up = caught_up
        self.reactor = reactor
        self.title_of = title_of
        self.pool = ThreadPool(minthreads=0, maxthreads=QUERY_THREADS, name="fulabd-search")

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        self.pool.stop()

    def run(self, function, *args):
        return threads.deferToThreadPool(self.reactor, self.pool, function, *args)


def text_args(request) -> dict[str, str]:
    """A request's query parameters as text (the first of repeated ones)."""
    return {key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
            for key, values in request.args.items() if values}


def error(request, code: int, err: str, detail: str) -> bytes:
    return render_data(request, {"ok": False, "err": err, "detail": detail}, code)


class IndexResource(resource.Resource):
    """A GET that parses its parameters, reads the index in a thread and renders what `answer` makes of it."""

    isLeaf = True
    _log = Logger()

    def __init__(self, queries: Queries):
        super().__init__()
        self.queries = queries

    def render_GET(self, request):
        try:
            read = self.parse(text_args(request))
        except (BadQuery, BadFilter) as e:
            return error(request, 400, "bad-query" if isinstance(e, BadQuery) else "bad-filter", str(e))
        gone = []
        request.notifyFinish().addErrback(gone.append)
        self.queries.run(read).addCallbacks(self._answered, self._failed, callbackArgs=(request, gone),
                                            errbackArgs=(request, gone))
        return server.NOT_DONE_YET

    def parse(self, args: dict[str, str]):
        """A function of no arguments that reads the index (in a thread), or BadQuery/BadFilter."""
        raise NotImplementedError

    def answer(self, page) -> dict:
        raise NotImplementedError

    def _answered(self, page, request, gone):
        self._finish(request, gone, 200, self.answer(page))

    def _failed(self, failure, request, gone):
        if failure.check(BadCursor):
            self._finish(request, gone, 400, {"ok": False, "err": "bad-cursor", "detail": str(failure.value)})
            return
        if failure.check(IndexUnusable):
            detail = "the search index is damaged and is being rebuilt from the session files; try again shortly"
        else:
            self._log.failure("a search index query failed", failure)
            detail = "the search index could not answer; try again, and tell the operator if it persists"
        self._finish(request, gone, 503, {"ok": False, "err": "index-unavailable", "detail": detail})

    def _finish(self, request, gone: list, code: int, data: dict):
        if not gone:
            request.write(render_data(request, data, code))
            request.finish()


class Search(IndexResource):
    """`GET /fulab/lab/search?q=…`: lines of every session matching all the terms."""

    def parse(self, args):
        terms = parse_query(args.get("q", ""))
        filters = parse_filters(args)
        limit = parse_limit(args.get("limit"), SEARCH_LIMIT, SEARCH_MOST)
        return lambda: self.queries.index.search(terms, filters, limit, args.get("cursor") or None)

    def answer(self, page) -> dict:
        for hit in page.items:
            hit["title"] = self.queries.title_of(hit["session-id"], hit["title"])
        return {"ok": True, "hits": page.items, "cursor": page.cursor, "caught-up": self.queries.caught_up()}


class Pars(IndexResource):
    """`GET /fulab/lab/pars`: PARs of every session, newest first."""

    def parse(self, args):
        terms = parse_query(args["q"]) if args.get("q", "").strip() else []
        filters = parse_filters(args)
        limit = parse_limit(args.get("limit"), PARS_LIMIT, PARS_MOST)
        return lambda: self.queries.index.pars(terms, filters, limit, args.get("cursor") or None)

    def answer(self, page) -> dict:
        pars = [{"session-id": item["session-id"], "id": item["id"], "index": item["index"],
                 "session-title": self.queries.title_of(item["session-id"], item["title"]),
                 "source": item["source"], "project": item["project"], "par": item["par"]} for item in page.items]
        return {"ok": True, "pars": pars, "cursor": page.cursor, "caught-up": self.queries.caught_up()}


class Rap(IndexResource):
    """`GET /fulab/lab/rap?tags=…&since=…&limit=…`: prior learning in the old lab's `/rap` shape."""

    def parse(self, args):
        filters = parse_filters({key: args[key] for key in ("tags", "since") if key in args})
        limit = parse_limit(args.get("limit"), RAP_LIMIT, RAP_MOST)
        return lambda: self.queries.index.pars([], filters, limit, None)

    def answer(self, page) -> dict:
        pars = [(item["id"], item["par"]) for item in page.items]
        questions = [par.get("questions") if isinstance(par.get("questions"), dict) else {} for _, par in pars]
        return {"ok": True, "count": len(pars),
                "pars": [{"id": par.get("id"), "session-id": session, "title": par.get("title"),
                          "timestamp": par.get("timestamp"), "tags": par.get("tags") or [],
                          "learned": answers.get("learned")} for (session, par), answers in zip(pars, questions)],
                "context": prior_learning(pars) if pars else None}


def prior_learning(pars: list[tuple[str, dict]]) -> str:
    """The old `/rap` context block: `# Prior Learning (from N PARs)`, then each PAR, as futon3 wrote them."""
    return f"# Prior Learning (from {len(pars)} PARs)\n\n" + "\n---\n\n".join(
        rap_entry(session, par) for session, par in pars)


def rap_entry(session: str, par: dict) -> str:
    questions = par.get("questions") if isinstance(par.get("questions"), dict) else {}
    tags = par.get("tags")
    lines = [f"## {par.get('title') or 'Session Review'}\n", f"*Session: {session} | {par.get('timestamp') or ''}*\n"]
    if tags is not None:
        lines.append(f"*Tags: {', '.join(str(tag) for tag in tags)}*\n")
    lines.append("\n")
    lines += [f"**{label}:** {questions.get(key) or ''}\n" + ("\n" if key != "forward" else "")
              for key, label in zip(PAR_QUESTIONS, RAP_LABELS)]
    return "".join(lines)


class SearchOff(resource.Resource):
    """The three paths, on a daemon started with `--no-index`."""

    isLeaf = True

    def render_GET(self, request):
        return error(request, 503, "search-off", "this daemon was started with --no-index, so sessions cannot be "
                                                 "searched; restart it without --no-index")


def mount(lab: resource.Resource, queries: Queries | None) -> None:
    """Put the three resources under `lab` (`/fulab/lab/`); `queries` None: the daemon has no index."""
    for name, kind in ((b"search", Search), (b"pars", Pars), (b"rap", Rap)):
        lab.putChild(name, kind(queries) if queries is not None else SearchOff())

