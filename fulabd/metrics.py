"""
`GET /metrics`: what the daemon is doing, in the Prometheus text format.

The upload factory, the gate and the status already count what happens; a
collector reads those counts at scrape time, so there is one source of truth.
Only fsync latency is observed as it happens (the store reports each one).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web import resource

# fdatasync of a small append costs ~0.3 ms on an SSD; a stalled disk takes seconds.
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The daemon's own registry (not the global one, so several daemons or tests never share it)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.fsync = Histogram("fulab_fsync_seconds", "Time to fdatasync a session's new lines.",
                               buckets=FSYNC_BUCKETS, registry=self.registry)

    def observe_fsync(self, seconds: float):
        self.fsync.observe(seconds)

    def watch(self, uploads, gate, status):
        """Expose the counts of the upload factory, the gate and `status()`."""
        self.registry.register(LabCollector(uploads, gate, status))


class LabCollector:
    def __init__(self, uploads, gate, status):
        self.uploads = uploads
        self.gate = gate
        self.status = status

    def collect(self):
        uploads, status = self.uploads, self.status()
        yield GaugeMetricFamily("fulab_listening", "1 while a listener is listening.", value=int(status["running"]))
        yield GaugeMetricFamily("fulab_connections", "Open connections counted against the caps (HTTP and "
                                "WebSocket).", value=sum(self.gate.limits.open.values()))
        yield GaugeMetricFamily("fulab_websocket_connections", "Open WebSocket connections (uploads and viewers).",
                                value=self.gate.websockets_open)
        yield CounterMetricFamily("fulab_websocket_connections_opened", "WebSocket connections admitted.",
                                  value=self.gate.admitted)
        yield GaugeMetricFamily("fulab_upload_connections", "Open upload connections.", value=len(uploads.connections))
        yield GaugeMetricFamily("fulab_viewers", "Open viewer connections.", value=status["viewers"])
        yield GaugeMetricFamily("fulab_sessions", "Sessions in the store.", value=status["sessions"])
        yield CounterMetricFamily("fulab_messages_received", "Upload messages received.", value=uploads.messages_in)
        yield CounterMetricFamily("fulab_received_bytes", "Bytes of upload messages received.", value=uploads.bytes_in)
        yield CounterMetricFamily("fulab_lines_stored", "Session lines stored durably (not counting resent ones).",
                                  value=uploads.lines_in)
        yield CounterMetricFamily("fulab_acks", "Acks of stored lines sent to uploaders.", value=uploads.acks)
        budget = uploads.budget
        yield GaugeMetricFamily("fulab_upload_inflight_bytes", "Bytes of upload messages being received or awaiting "
                                "their commit (bounded by --max-inflight-mb).", value=budget.reserved)
        yield GaugeMetricFamily("fulab_upload_held_connections", "Upload connections not read until the in-flight "
                                "bytes fall.", value=budget.held)
        yield CounterMetricFamily("fulab_upload_holds", "Times an upload connection was held by the memory budget.",
                                  value=budget.holds)
        yield CounterMetricFamily("fulab_listener_restarts", "Times a listener was re-established.",
                                  value=status["restarts"])
        errors = CounterMetricFamily("fulab_errors", "Error replies sent to uploaders, by code.", labels=["code"])
        for code, count in sorted(uploads.errors.items()):
            errors.add_metric([code], count)
        yield errors
        refused = CounterMetricFamily("fulab_refused", "Requests and connections refused, by reason.",
                                      labels=["reason"])
        for reason, count in sorted(self.gate.refused.items()):
            refused.add_metric([reason], count)
        yield refused


class MetricsResource(resource.Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.registry)
