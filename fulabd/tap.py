"""
`twistd fulab`: command-line options and the wiring of the daemon's services.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

import fulabd
from fulabd import access, interpreter, netaddr, origins, pars, remote, supervisor, tls, tokens, ui, web
from fulabd.archive import ArchivedListing, ArchiveSource
from fulabd.budget import InflightBudget
from fulabd.catalog import Catalog, StoreSource
from fulabd.hub import Hub
from fulabd.index import http as search_http
from fulabd.index.feeder import IndexFeeder
from fulabd.index.sqlite import FTS5Missing, SqliteIndex, check_fts5
from fulabd.listing import Listing
from fulabd.local import LocalSources
from fulabd.metrics import Metrics, MetricsResource
from fulabd.prices import BadPrices, PriceTable
from fulabd.store import SessionStore
from fulabd.stream import StreamFactory
from fulabd.summaries import Summaries
from fulabd.summaries.http import with_local_sessions
from fulabd.upload import UploadFactory

MiB = 1024 * 1024


def endpoint_description(port: str, interface: str) -> str:
    """`5056` means TCP on `interface`; anything else is a Twisted endpoint string."""
    if port.isdigit():
        escaped = interface.replace(":", "\\:")
        return f"tcp:{port}:interface={escaped}"
    return port


def endpoint_port(description: str) -> str | None:
    """The port field of a `tcp:`, `tcp6:` or `ssl:` endpoint string (None for other kinds)."""
    kind, *fields = re.split(r"(?<!\\):", description)
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    named = dict(field.split("=", 1) for field in fields if "=" in field)
    positional = [field for field in fields if "=" not in field]
    return named.get("port", positional[0] if positional else "")


def check_endpoint(flag: str, description: str):
    """Refuse, before anything starts, an endpoint string Twisted cannot parse or a port out of range."""
    from twisted.internet import reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise usage.UsageError(f"{flag} {description!r} is not a port number or a Twisted endpoint string ({e}); "
                               "e.g. 5056, tcp:5056:interface=0.0.0.0 or unix:/run/fulab.sock") from None
    port = endpoint_port(description)
    if port is not None and not (port.isdigit() and 0 <= int(port) <= 65535):
        raise usage.UsageError(f"{flag} {description!r}: the port must be a number from 0 to 65535")


def check_root(root: str):
    """Refuse a --root this user cannot create or write to (instead of failing every upload later)."""
    path = os.path.abspath(root)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise usage.UsageError(f"cannot use --root {root}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise usage.UsageError(f"cannot use --root {root}: cannot create files in {existing} ({e.strerror or e}); "
                               "give a folder this user can write to, or fix its permissions") from None


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Receive AI coding agents' session transcripts over WebSocket, store them durably "
                "under --root, list them over HTTP and stream them live to viewers, all on one port.")

    optParameters = [
        ["port", "p", "5056", "Port number (listens on --interface) or a Twisted endpoint string."],
        ["interface", None, "127.0.0.1", "Interface a numeric --port listens on."],
        ["root", "r", None, "Session store folder [default: $LAB_UPLOAD_ROOT, else lab/remote]."],
        ["active-window", None, 3600.0, "Seconds since the last write for a session to count as active.", float],
        ["live-window", None, 60.0, "Seconds since the last line arrived for a session to be listed as live.", float],
        ["restart-interval", None, 10.0, "Seconds between listen retries and self-probes.", float],
        ["max-message-size", None, 64 * MiB, "Largest WebSocket message accepted, in bytes.", int],
        ["ping-interval", None, 30.0, "Seconds between WebSocket pings to each client (0: off).", float],
        ["ping-timeout", None, 30.0, "Seconds to wait for a pong before dropping a client.", float],
        ["handshake-timeout", None, 10.0, "Seconds a client may take to finish the opening handshake.", float],
        ["codex-dir", None, None, "Also list and stream the Codex sessions under this folder (e.g. ~/.codex/sessions)."],
        ["claude-dir", None, None, "Also list and stream the Claude Code sessions under this folder "
                                   "(e.g. ~/.claude/projects)."],
        ["token-file", None, None, "Require a token from this file (lines `TOKEN [NAME] [SCOPES]`) on every request."],
        ["max-connections", None, 512, "Most connections (HTTP and WebSocket) open at once (0: no cap).", int],
        ["max-connections-per-ip", None, 64, "Most connections open from one client address (0: no cap).", int],
        ["max-inflight-mb", None, 1024, "Most MiB of upload messages being received or awaiting their commit, "
                                        "over all connections; above it, reading uploads waits for their commits.", int],
        ["min-free-mb", None, 64, "Refuse uploads (storage-full) that would leave less free disk than this.", int],
        ["max-open-files", None, 256, "Most session files the store keeps open at once (least recently used "
                                      "closed first).", int],
        ["tls-port", None, None, "Also serve wss:// and https:// on this port (needs --tls-cert and --tls-key).", int],
        ["tls-interface", None, "0.0.0.0", "Interface --tls-port listens on (`::` for IPv6 and IPv4)."],
        ["tls-cert", None, None, "PEM certificate chain, leaf first (a Let's Encrypt fullchain.pem)."],
        ["tls-key", None, None, "PEM private key of the first certificate of --tls-cert."],
        ["remote-timeout", None, remote.DEFAULT_TIMEOUT, "Seconds another lab (--remote-source) has to answer.",
         float],
        ["remote-cache", None, remote.CACHE_SECONDS, "Seconds another lab's answer is reused (0: ask every time).",
         float],
        ["prices", None, None, "Price table (JSON, like fulabd/data/prices.json) for the sessions' estimated cost "
                               "[default: the table shipped with fulabd]."],
        ["tls-check-interval", None, 60.0, "Seconds between checks of the TLS files for changes (0: SIGHUP only).",
         float],
    ]

    optFlags = [
        ["no-index", None, "Do not index the sessions for search: /fulab/lab/search, /pars and /rap answer 503."],
    ]

    def __init__(self):
        super().__init__()
        self["trusted-proxies"] = []
        self["listen"] = []
        self["allowed-origins"] = []
        self["archive-dirs"] = []
        self["remote-sources"] = []
        self["remote-token-files"] = []

    def opt_trusted_proxy(self, value):
        """Take the client's address from X-Forwarded-For when the peer is this address or network (repeatable)."""
        try:
            self["trusted-proxies"].append(netaddr.parse_network(value))
        except ValueError:
            raise usage.UsageError(f"--trusted-proxy {value!r} is not an IP address or network") from None

    def opt_allowed_origin(self, value):
        """Also accept browser requests from pages at this origin, e.g. https://lab.example.org (repeatable)."""
        if origins.normalize(value) is None:
            raise usage.UsageError(f"--allowed-origin {value!r} is not an origin; give scheme://host[:port], "
                                   "e.g. https://lab.example.org")
        self["allowed-origins"].append(value)

    def opt_archive_dir(self, folder):
        """List and stream the futon3 lab's archived sessions, the *.json files in this folder (repeatable)."""
        self["archive-dirs"].append(folder)

    def opt_remote_source(self, value):
        """NAME=URL: also list the active sessions of the lab at URL (repeatable) [default: $LAB_REMOTE_SOURCES]"""
        self["remote-sources"].append(value)

    def opt_remote_token_file(self, value):
        """NAME=FILE: send the token in FILE to the remote source NAME (repeatable)."""
        self["remote-token-files"].append(value)

    def opt_listen(self, description):
        """Also listen on this Twisted endpoint string (repeatable), e.g. unix:/run/fulab.sock"""
        self["listen"].append(description)

    def postOptions(self):
        if self["root"] is None:
            self["root"] = os.environ.get("LAB_UPLOAD_ROOT") or "lab/remote"
        for name in ("active-window", "live-window", "restart-interval", "max-message-size", "handshake-timeout",
                     "max-open-files", "max-inflight-mb"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        for name in ("max-connections", "max-connections-per-ip", "min-free-mb"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must be 0 or more")
        try:
            self["tokens"] = tokens.load_tokens(self["token-file"]) if self["token-file"] else None
        except tokens.TokenFileError as e:
            raise usage.UsageError(str(e)) from None
        if not self["no-index"]:
            try:
                check_fts5()
            except FTS5Missing as e:
                raise usage.UsageError(str(e)) from None
        if self["remote-timeout"] <= 0 or self["remote-cache"] < 0:
            raise usage.UsageError("--remote-timeout must be positive and --remote-cache 0 or more")
        try:
            self["remote-labs"] = remote.configured_labs(self["remote-sources"], self["remote-token-files"],
                                                         os.environ.get(remote.ENVIRONMENT))
        except remote.BadRemote as e:
            raise usage.UsageError(str(e)) from None
        try:
            self["price-table"] = PriceTable.load(self["prices"])
        except BadPrices as e:
            raise usage.UsageError(f"--prices: {e}") from None
        if self["port"].isdigit() and int(self["port"]) > 65535:
            raise usage.UsageError(f"--port {self['port']}: the port must be a number from 0 to 65535")
        self["endpoints"] = [endpoint_description(self["port"], self["interface"])] + self["listen"]
        for flag, description in zip(["--port"] + ["--listen"] * len(self["listen"]), self["endpoints"]):
            check_endpoint(flag, description)
        if self["tls-port"] is not None and not 0 <= self["tls-port"] <= 65535:
            raise usage.UsageError(f"--tls-port {self['tls-port']}: the port must be a number from 0 to 65535")
        check_root(self["root"])
        if len({self[name] is None for name in ("tls-port", "tls-cert", "tls-key")}) > 1:
            raise usage.UsageError("--tls-port, --tls-cert and --tls-key go together: give all three or none")
        if self["tls-cert"] is not None:
            try:
                tls.load_options(self["tls-cert"], self["tls-key"])
            except tls.CertificateError as e:
                raise usage.UsageError(f"cannot serve TLS: {e}")


class CommandLine(Options):
    """What `twistd fulab` parses: a refusal is one line on stderr and exit status 1, not twistd's whole help."""

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"twistd fulab: {e}\n")
            raise SystemExit(1) from None


_log = Logger()


def warn_without_acceleration():
    from autobahn.websocket import USES_NVX

    if not USES_NVX:
        _log.warn("Autobahn's native acceleration (NVX) is off: WebSocket masking and UTF-8 checks run in pure "
                  "Python, several times slower. Unset AUTOBAHN_USE_NVX, or reinstall autobahn where its CFFI "
                  "extension can be built (a C compiler and libffi-dev).")


def makeService(config, reactor=None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    started = reactor.seconds()
    interpreter.tune()
    parent = service.MultiService()
    warn_without_acceleration()
    if config["tokens"] is not None and tokens.readable_by_others(config["token-file"]):
        _log.warn("the token file {path} can be read by other users; chmod 600 it", path=config["token-file"])
    metrics = Metrics()
    proxies = netaddr.TrustedProxies(config["trusted-proxies"])
    gate = access.Gate(config["tokens"], proxies,
                       access.ConnectionLimits(config["max-connections"], config["max-connections-per-ip"]),
                       origins.Origins(proxies, config["allowed-origins"]), ui_files=ui.public_paths())

    hub = Hub()
    store = SessionStore(config["root"], clock=reactor, hub=hub, min_free_bytes=config["min-free-mb"] * MiB,
                         observe_fsync=metrics.observe_fsync, max_open_files=config["max-open-files"])
    store.setServiceParent(parent)

    sources = [StoreSource(store)]
    listing = Listing(store)
    folders = [(source, config[f"{source}-dir"]) for source in ("codex", "claude") if config[f"{source}-dir"]]
    if folders:
        local = LocalSources(folders, hub, reactor)
        local.setServiceParent(parent)
        sources.append(local)
    archives = None
    if config["archive-dirs"]:
        archives = ArchiveSource(config["archive-dirs"], reactor)
        archives.setServiceParent(parent)
        sources.append(archives)
    listing.local = Catalog(sources[1:]).sessions  # the sessions that are not the store's
    catalog = Catalog(sources)
    indexed = [source for source in sources if source is not archives]  # archives are not session files
    summaries = Summaries(catalog, config["price-table"], clock=reactor, live_seconds=config["live-window"],
                          ready=store.loaded)
    summaries.setServiceParent(parent)
    hub.listeners.append(summaries)
    queries = None
    if not config["no-index"]:
        index = SqliteIndex(os.path.join(store.root, ".index"), writing=False)
        feeder = IndexFeeder(index, Catalog(indexed).sessions, reactor, ready=store.loaded)
        hub.listeners.append(feeder)
        feeder.setServiceParent(parent)
        queries = search_http.Queries(index, feeder.caught_up, reactor, title_of=lambda session_id, own: (
            summaries.get(session_id) or {}).get("title") or own)
        queries.setServiceParent(parent)

    uploads = UploadFactory(store, clock=reactor, max_message_size=config["max-message-size"],
                            admit=gate.admit, principal_of=gate.handshake_principal,
                            budget=InflightBudget(config["max-inflight-mb"] * MiB), reactor=reactor)
    stream = StreamFactory(catalog, hub, clock=reactor, admit=gate.admit, reactor=reactor)
    for factory in (uploads, stream):
        factory.setProtocolOptions(autoPingInterval=config["ping-interval"], autoPingTimeout=config["ping-timeout"],
                                   openHandshakeTimeout=config["handshake-timeout"])
    dispatch = web.WebSocketDispatch(uploads, stream)

    listen = [(description, endpoints.serverFromString(reactor, description)) for description in config["endpoints"]]
    certificate = None
    if config["tls-port"] is not None:
        certificate = tls.ReloadingCertificate(config["tls-cert"], config["tls-key"], reactor,
                                               config["tls-check-interval"])
        certificate.setServiceParent(parent)
        interface = config["tls-interface"]
        listen.append((f"tls:{config['tls-port']}:interface={interface}",
                       endpoints.SSL4ServerEndpoint(reactor, config["tls-port"], certificate, interface=interface)))

    listeners = []
    for description, endpoint in listen:
        listener = supervisor.ListenerSupervisor(
            description, endpoint, web.LabSite(dispatch, gate, head_timeout=config["handshake-timeout"],
                                                  timeout=config["handshake-timeout"]), reactor,
            config["restart-interval"],
            lambda address, description=description: supervisor.self_probe_endpoint(description, address, reactor),
            probe_headers=gate.probe_headers)
        listener.setServiceParent(parent)
        listeners.append(listener)

    def status() -> dict:
        ports = [listener.describe() for listener in listeners]
        return {"running": any(port["listening"] for port in ports),
                "port": next((port["port"] for port in ports if port["port"] is not None), None),
                "clients": len(uploads.connections) + len(stream.viewers), "uploads": len(uploads.connections),
                "viewers": len(stream.viewers), "sessions": len(store.sessions()),
                "restarts": sum(port["restarts"] for port in ports),
                "uptime": round(reactor.seconds() - started, 3), "version": fulabd.__version__,
                "root": store.root, "listeners": ports,
                **({"tls": certificate.describe()} if certificate is not None else {})}

    labs = None
    if config["remote-labs"]:
        labs = remote.RemoteLabs(config["remote-labs"], remote.HttpFetcher(reactor).get, reactor,
                                 timeout=config["remote-timeout"], cache_seconds=config["remote-cache"])
    lab = web.build_tree(dispatch, listing, reactor, config["active-window"], status,
                         session_child=with_local_sessions(
                             lambda name: pars.session_child(store, name, summaries, gate.requester_of), catalog,
                             summaries),
                         merge=labs.merge if labs is not None else None,
                         sessions_children={b"archived": ArchivedListing(archives)},
                         listing_extra=summaries.listing_fields)
    search_http.mount(lab, queries)
    metrics.watch(uploads, gate, status)
    dispatch.putChild(b"metrics", MetricsResource(metrics.registry))
    dispatch.putChild(b"healthz", web.Health(lambda: store.problem() or (
        None if any(listener.port is not None for listener in listeners) else "no port is listening")))
    return parent
