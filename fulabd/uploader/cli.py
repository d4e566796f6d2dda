"""
`fulab-upload`: upload session files to a fulabd server, live, exactly once.

    fulab-upload --url URL --path FILE [--once]           one file (the old uploader's flags)
    fulab-upload --url URL --watch DIR [--watch DIR ...]  every session under the folders
    fulab-upload par --url URL --session ID --file par.edn

Exit codes: 0 done (or stopped cleanly after the last ack), 1 failed (see the
message), 2 bad command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner
from twisted.logger import textFileLogObserver

from fulabd import edn
from fulabd.uploader.connection import PING_INTERVAL, connection_service
from fulabd.uploader.progress import Reporter
from fulabd.uploader.uploads import Uploads
from fulabd.uploader.watch import Watcher

DEFAULT_URL = "ws://127.0.0.1:5056/fulab/lab/upload/ws"
PAR_ATTEMPTS = 3


def connection_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--url", default=os.environ.get("FULAB_URL", DEFAULT_URL),
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
    what = parser.add_mutually_exclusive_group(required=True)
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
    level = LogLevel.info if verbose else LogLevel.warn
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr),
                                    [LogLevelFilterPredicate(defaultLogLevel=level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["par"]:
        args = par_parser().parse_args(argv[1:])
        start_logging(args.verbose)
        return send_par(args)
    args = upload_parser().parse_args(argv)
    start_logging(args.verbose)
    return upload(args)


def upload(args) -> int:
    from twisted.internet import reactor

    if args.path and not Path(args.path).expanduser().is_file():
        print(f"fulab-upload: no such file: {args.path}", file=sys.stderr)
        return 1
    if args.once and args.watch and not args.backfill:
        print("fulab-upload: note: --once with --watch uploads only files written in the last "
              f"{args.active_minutes:g} minutes; add --backfill for all", file=sys.stderr)
    reporter = Reporter(quiet=args.quiet, clock=reactor)
    overrides = {"project": args.project, "originator": args.originator, "cwd": args.cwd}
    uploads = Uploads(reactor, reporter, source=args.source, overrides=overrides)
    try:
        service = connection_service(reactor, args.url, uploads, token=args.token, cafile=args.cafile,
                                     ping_interval=args.ping_interval, compress=args.compress)
    except (OSError, ValueError) as e:
        print(f"fulab-upload: {e}", file=sys.stderr)
        return 1
    watcher = Watcher(reactor, uploads, folders=args.watch or (), files=[args.path] if args.path else (),
                      active_minutes=args.active_minutes, backfill=args.backfill, use_events=not args.poll)
    outcome = {"code": 0}

    def shut_down():
        def closed(settled):
            if not settled:
                unacked = sum(batch.lines for sender in uploads.senders.values() for batch in sender.inflight)
                reporter.say(f"stopped with {unacked} line(s) not acknowledged; they are sent on the next start",
                             always=True)
                outcome["code"] = 1
            if uploads.channel is not None:
                uploads.channel.close()
            watcher.stopService()
            return service.stopService()

        return uploads.stop().addCallback(closed)

    def caught_up(_):
        reporter.say(f"done: {reporter.lines:,} lines ({reporter.bytes / 1e6:,.1f} MB) acknowledged in this run")
        reactor.stop()

    reactor.addSystemEventTrigger("before", "shutdown", shut_down)
    reactor.callWhenRunning(watcher.startService)
    reactor.callWhenRunning(service.startService)
    if args.once:
        reactor.callWhenRunning(lambda: uploads.when_caught_up().addCallback(caught_up))
    reporter.say(f"uploading to {args.url}")
    reactor.run()
    return outcome["code"]


def read_par(path: str) -> dict:
    """A PAR from a JSON file (`.json`) or an EDN file (anything else)."""
    data = Path(path).expanduser().read_bytes()
    try:
        par = orjson.loads(data) if path.endswith(".json") else edn.loads(data)
    except Exception as e:
        raise ValueError(f"{path} is not valid {'JSON' if path.endswith('.json') else 'EDN'}: {e}") from None
    if not isinstance(par, dict):
        raise ValueError(f"{path} must hold one map (EDN) or object (JSON)")
    return par


def send_par(args) -> int:
    from twisted.internet import reactor

    try:
        par = read_par(args.file)
    except (OSError, ValueError) as e:
        print(f"fulab-upload: cannot read the PAR: {e}", file=sys.stderr)
        return 1
    outcome = {"code": 1}

    class ParReporter(Reporter):
        """Gives up after a few refused connections: a PAR is a one-off, not a daemon."""

        failures = 0

        def connect_failed(self, reason: str):
            super().connect_failed(reason)
            self.failures += 1
            if self.failures >= PAR_ATTEMPTS and reactor.running:
                reactor.stop()

    reporter = ParReporter(clock=reactor, bar=False)

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

        def disconnected(self, channel, code, reason):
            self.channel = None
            if self.done and reactor.running:
                reactor.stop()

    try:
        service = connection_service(reactor, args.url, OneMessage(), token=args.token, cafile=args.cafile)
    except (OSError, ValueError) as e:
        print(f"fulab-upload: {e}", file=sys.stderr)
        return 1

    def give_up(failure):
        reporter.say(f"could not reach {args.url}: {failure.getErrorMessage()}", always=True)
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(service.startService)
    reactor.callWhenRunning(lambda: service.whenConnected(failAfterFailures=PAR_ATTEMPTS).addErrback(give_up))
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
