"""
`fulab-upload`: upload session files to a fulabd server, live, exactly once.

    fulab-upload --url URL --path FILE [--once]           one file (the old uploader's flags)
    fulab-upload --url URL --watch DIR [--watch DIR ...]  every session under the folders
    fulab-upload par --url URL --session ID --file par.edn

Exit codes: 0 done (or stopped cleanly after the last ack); 1 failed: no
connection within --connect-timeout, a session stopped short (--once), lines
left unacknowledged at a stop, or another error (see the message); 2 bad
command line (including a --watch folder that does not exist).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fulabd.uploader.defaults import PING_INTERVAL

DEFAULT_URL = "ws://127.0.0.1:5056/fulab/lab/upload/ws"
PAR_ATTEMPTS = 3
CONNECT_TIMEOUT = 30.0


def websocket_url(url: str) -> str:
    """--url's type: a ws:// or wss:// URL, or a usage error that names the URL to give instead."""
    scheme, colon, rest = url.partition(":")
    if colon and scheme.lower() in ("ws", "wss"):
        return url
    instead = {"http": "ws", "https": "wss"}.get(scheme.lower()) if colon else None
    hint = f"use {instead}:{rest}" if instead else "give ws://HOST:PORT/fulab/lab/upload/ws (wss:// with TLS)"
    raise argparse.ArgumentTypeError(f"{url!r} is not a WebSocket URL: {hint}")


def connection_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--url", type=websocket_url, default=os.environ.get("FULAB_URL", DEFAULT_URL),
                        help="the server's upload WebSocket (default $FULAB_URL, else %(default)s)")
    parser.add_argument("--token", default=os.environ.get("FULAB_TOKEN"),
                        help="sent as 'Authorization: Bearer TOKEN' (default $FULAB_TOKEN)")
    parser.add_argument("--cafile", help="PEM file of the CA(s) that signed the server's certificate "
                                         "(default: the system's CAs)")
    parser.add_argument("--verbose", action="store_true", help="log the connection's details")


def upload_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fulab-upload", description="Upload Codex and Claude Code session files to a fulabd server, live and "
                                         "exactly once. Also: 'fulab-upload par --help'.")
    connection_arguments(parser)
    what = parser.add_mutually_exclusive_group()  # required, but checked after unknown flags (see upload_args)
    what.add_argument("--path", help="one session file to upload and follow")
    what.add_argument("--watch", action="append", metavar="DIR",
                      help="a folder of session files (repeatable), e.g. ~/.codex/sessions, ~/.claude/projects")
    parser.add_argument("--source", choices=["codex", "claude"], help="the agent (default: told from the file)")
    parser.add_argument("--project", help="project recorded with the session (default: its cwd)")
    parser.add_argument("--originator", help="who uploads (default: the agent's originator, if any)")
    parser.add_argument("--cwd", help="cwd recorded with the session (default: from the file)")
    parser.add_argument("--active-minutes", type=float, default=60,
                        help="with --watch, follow files written in the last N minutes (default %(default)s)")
    parser.add_argument("--backfill", action="store_true",
                        help="with --watch, also upload older files (once; they are followed if they change)")
    parser.add_argument("--once", action="store_true",
                        help="upload the complete lines there are, wait for the server's ack, exit")
    parser.add_argument("--quiet", action="store_true", help="print only problems")
    parser.add_argument("--poll", action="store_true", help="poll files instead of using file events")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT,
                        help="with --once, give up (exit 1) when no connection works within this many seconds "
                             "(default %(default)s)")
    parser.add_argument("--no-compress", dest="compress", action="store_false",
                        help="send lines as JSON text frames, not zstd-compressed packed frames")
    parser.add_argument("--ping-interval", type=float, default=PING_INTERVAL,
                        help="seconds between keepalive pings; a link silent for twice this is dropped and "
                             "reconnected (default %(default)s)")
    return parser


def par_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fulab-upload par",
                                     description="Send a PAR (post-action review) for a session.")
    connection_arguments(parser)
    parser.add_argument("--session", required=True, help="the session id")
    parser.add_argument("--file", required=True,
                        help="the PAR as EDN or JSON: title, tags and the five questions (intention, happening, "
                             "perspectives, learned, forward)")
    return parser


def start_logging(verbose: bool):
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner
    from twisted.logger import textFileLogObserver

    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info if verbose else LogLevel.warn)
    if not verbose:  # Autobahn's own words for a failed connection ("SSL error: ... (in )"): the uploader says it
        levels.setLogLevelForNamespace("autobahn", LogLevel.critical)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["par"]:
        args = par_parser().parse_args(argv[1:])
        start_logging(args.verbose)
        return send_par(args)
    args = upload_args(argv)
    skip_unneeded_imports(args.url)
    start_logging(args.verbose)
    return upload(args)


def skip_unneeded_imports(url: str):
    """Leave out what an upload to `url` does not need, before anything imports it (0.08 of the 0.36 s a
    one-line upload took): Autobahn's native helpers, whose modules parse C declarations at import (fulabd.frames
    calls the compiled masking loop itself), and TLS, which Twisted's TCP module loads eagerly, unless the URL
    is wss://.  Only for this process's own upload (`main`)."""
    os.environ.setdefault("AUTOBAHN_USE_NVX", "0")
    if url.startswith("ws://"):
        sys.modules.setdefault("OpenSSL", None)  # an ImportError for whoever tries: Twisted then goes without TLS


def upload_args(argv: list[str]) -> argparse.Namespace:
    """Parsed and checked; a bad command line exits 2 with argparse's message."""
    parser = upload_parser()
    args = parser.parse_args(argv)
    if not args.path and not args.watch:
        parser.error("give --path FILE or --watch DIR")
    if args.path and Path(args.path).expanduser().is_dir():
        parser.error(f"--path {args.path} is a folder: --path takes one session file; "
                     f"--watch {args.path} uploads the sessions in a folder")
    if args.path and not Path(args.path).expanduser().is_file():
        parser.error(f"--path {args.path}: no such file (check the path)")
    for folder in args.watch or ():
        if not Path(folder).expanduser().is_dir():
            parser.error(f"--watch {folder}: no such folder (create it, or check the path)")
    if args.connect_timeout <= 0:
        parser.error("--connect-timeout must be positive")
    return args


def upload(args) -> int:
    from twisted.internet import reactor

    from fulabd.uploader.connection import connection_service
    from fulabd.uploader.progress import Reporter
    from fulabd.uploader.uploads import Uploads
    from fulabd.uploader.watch import Watcher

    reporter = Reporter(quiet=args.quiet, clock=reactor, url=args.url, once=args.once)
    overrides = {"project": args.project, "originator": args.originator, "cwd": args.cwd}
    uploads = Uploads(reactor, reporter, source=args.source, overrides=overrides)
    try:
        service = connection_service(reactor, args.url, uploads, token=args.token, cafile=args.cafile,
                                     ping_interval=args.ping_interval, compress=args.compress)
    except (OSError, ValueError) as e:
        print(f"fulab-upload: {e}", file=sys.stderr)
        return 1
    watcher = Watcher(reactor, uploads, folders=args.watch or (), files=[args.path] if args.path else (),
                      active_minutes=args.active_minutes, backfill=args.backfill,
                      use_events=not (args.poll or args.once))  # --once follows nothing: no inotify thread
    outcome = {"code": 0, "said": False}  # said: the run's end was already told (done, gave up)

    def shut_down():
        def closed(settled):
            reporter.say_unchanged()
            unacked = 0 if settled else sum(batch.lines for sender in uploads.senders.values()
                                            for batch in sender.inflight)
            unsent = sum(sender.unsent_bytes() for sender in uploads.senders.values())
            if not outcome["said"] or not settled or unsent:
                behind = f", {unsent:,} bytes of the files not sent yet" if unsent else ""
                reporter.say(f"stopped: {summary(uploads, reporter)}, {unacked:,} line(s) not acknowledged{behind}"
                             f"{'; they are sent on the next start' if unacked or unsent else ''}", always=True)
            if not settled:
                outcome["code"] = 1
            if uploads.channel is not None:
                uploads.channel.close()
            watcher.stopService()
            return service.stopService()

        return uploads.stop().addCallback(closed)

    def caught_up(_):
        reporter.say_unchanged()
        problems = uploads.problems()
        outcome["said"] = True
        if problems:
            outcome["code"] = 1
            reporter.say(f"done, but {len(problems)} session(s) stopped short of the file's end:", always=True)
            for sender in problems:
                reporter.say(f"  {sender.session_id} ({sender.reader.path}): {sender.problem}", always=True)
        if uploads.unreadable:
            outcome["code"] = 1
            reporter.say(f"done, but {len(uploads.unreadable)} file(s) could not be read:", always=True)
            for path, reason in uploads.unreadable.items():
                reporter.say(f"  {path}: {reason}", always=True)
        if not problems and not uploads.unreadable:
            reporter.say(f"done: {reporter.lines:,} lines ({reporter.bytes / 1e6:,.1f} MB) acknowledged in this run")
        reactor.stop()

    def give_up():
        if uploads.stopping:
            return
        outcome["code"], outcome["said"] = 1, True
        reporter.say(f"gave up: no working connection to {args.url} within {args.connect_timeout:g} s "
                     f"(--connect-timeout); run: fulab doctor {args.url}", always=True)
        reactor.stop()

    reactor.addSystemEventTrigger("before", "shutdown", shut_down)
    reactor.callWhenRunning(watcher.startService)
    reactor.callWhenRunning(service.startService)
    if args.once:
        uploads.connect_deadline(args.connect_timeout, give_up)
        reactor.callWhenRunning(lambda: uploads.when_caught_up().addCallback(caught_up))
    reporter.say(f"uploading to {args.url}")
    reactor.run()
    return outcome["code"]


def summary(uploads, reporter) -> str:
    """What this run did, for the line said at a stop (Ctrl-C)."""
    senders = list(uploads.senders.values())
    live = sum(1 for sender in senders if sender.live)
    stopped = len(uploads.problems())
    return (f"{live} session(s) live{f', {stopped} stopped short' if stopped else ''}, "
            f"{reporter.lines:,} lines acknowledged in this run")


def read_par(path: str) -> dict:
    """A PAR from a JSON file (`.json`) or an EDN file (anything else)."""
    import orjson

    from fulabd import edn

    data = Path(path).expanduser().read_bytes()
    try:
        par = orjson.loads(data) if path.endswith(".json") else edn.loads(data)
    except Exception as e:
        raise ValueError(f"{path} is not valid {'JSON' if path.endswith('.json') else 'EDN'}: {e}") from None
    if not isinstance(par, dict):
        raise ValueError(f"{path} must hold one map (EDN) or object (JSON)")
    return par


def send_par(args) -> int:
    import orjson
    from twisted.internet import reactor

    from fulabd.uploader.connection import connection_service
    from fulabd.uploader.progress import Reporter

    try:
        par = read_par(args.file)
    except (OSError, ValueError) as e:
        print(f"fulab-upload: cannot read the PAR: {e}", file=sys.stderr)
        return 1
    outcome = {"code": 1}

    class ParReporter(Reporter):
        """Gives up after a few failed connections (TCP, TLS or handshake): a PAR is a one-off, not a daemon."""

        failures = 0

        def connect_failed(self, reason: str, advice: str | None = None):
            super().connect_failed(reason, advice)
            self.failures += 1
            if self.failures == PAR_ATTEMPTS:
                self.say(f"gave up after {PAR_ATTEMPTS} tries; run: fulab doctor {args.url}", always=True)
                reactor.stop()

    reporter = ParReporter(clock=reactor, bar=False, url=args.url)

    class OneMessage:
        """Sends the PAR on the first connection and stops once the reply is in."""

        def __init__(self):
            self.reporter = reporter
            self.channel = None
            self.done = False

        def connected(self, channel):
            self.channel = channel
            channel.send(orjson.dumps({"type": "par", "session-id": args.session, "par": par}), self.replied)

        def replied(self, reply):
            self.done = True
            if reply.get("type") == "ack":
                state = "already stored" if reply.get("dedup") else "stored"
                reporter.say(f"PAR {reply.get('par-id')} {state} for session {args.session}", always=True)
                outcome["code"] = 0
            else:
                reporter.server_error(reply)
            self.channel.close()

        def confirmed(self):
            """The server answered: nothing to say for a one-off."""

        def disconnected(self, channel, why):
            self.channel = None
            if self.done and reactor.running:
                reactor.stop()

    try:
        service = connection_service(reactor, args.url, OneMessage(), token=args.token, cafile=args.cafile)
    except (OSError, ValueError) as e:
        print(f"fulab-upload: {e}", file=sys.stderr)
        return 1

    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
