"""
`fulab`: operator commands for a running daemon.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

import orjson

from fulabd.doctor import refusal_detail

DEFAULT_URL = "http://127.0.0.1:5056"


def status(args) -> int:
    url = args.url.rstrip("/") + "/fulab/lab/status"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=args.timeout) as response:
            data = orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        print(f"fulab: {url} answered {e.code} {e.reason}", file=sys.stderr)
        if e.code == 401:
            print("The daemon requires an access token: pass --token TOKEN or set FULAB_TOKEN", file=sys.stderr)
        if e.code == 403:
            print(refusal_detail(e.read()), file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"fulab: cannot read {url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        print("Is the daemon running? Start it with: twistd -n --pidfile= fulab --port 5056", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return 0
    for key in ("running", "port", "uploads", "viewers", "sessions", "restarts", "uptime", "root", "version"):
        if key in data:
            print(f"{key:>10}: {data[key]}")
    for listener in data.get("listeners", []):
        state = "listening" if listener["listening"] else f"NOT listening ({listener.get('last-error')})"
        print(f"{'listener':>10}: {listener['endpoint']} {state}")
    if "tls" in data:
        tls = data["tls"]
        print(f"{'tls':>10}: {tls['subject']} (chain of {tls['chain']}) valid until {tls['not-after']}, "
              f"{tls['days-left']} days left, from {tls['cert']}")
    return 0 if data.get("running") else 1


def doctor(args) -> int:
    from fulabd import doctor as checks

    return checks.run(args.url, cafile=args.cafile, token=args.token, timeout=args.timeout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fulab", description="Operate a fulabd daemon.")
    commands = parser.add_subparsers(dest="command", required=True)
    status_parser = commands.add_parser("status", help="print the daemon's status")
    status_parser.add_argument("--url", default=DEFAULT_URL, help=f"the daemon's base URL [{DEFAULT_URL}]")
    status_parser.add_argument("--json", action="store_true", help="print the raw JSON")
    status_parser.add_argument("--timeout", type=float, default=10.0)
    status_parser.add_argument("--token", default=os.environ.get("FULAB_TOKEN"),
                               help="access token, for a daemon run with --token-file [$FULAB_TOKEN]")
    status_parser.set_defaults(run=status)
    doctor_parser = commands.add_parser(
        "doctor", help="check every link from here to a daemon and say what is wrong",
        description="Check name resolution, TCP, TLS, the WebSocket upgrade, ping, every upload path, the "
                    "listings and the status of a daemon; stop at the first broken link and say how to fix it.")
    doctor_parser.add_argument("url", help="e.g. wss://lab.example.org:5057/fulab/lab/upload/ws")
    doctor_parser.add_argument("--cafile", help="trust this CA (PEM) in addition to the system's")
    doctor_parser.add_argument("--token", default=os.environ.get("FULAB_TOKEN"),
                               help="upload token, sent as Authorization: Bearer [$FULAB_TOKEN]")
    doctor_parser.add_argument("--timeout", type=float, default=10.0, help="seconds per step [10]")
    doctor_parser.set_defaults(run=doctor)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
