"""
How the daemon ends a WebSocket whose peer does not answer its close frame.

Autobahn resets the TCP connection when the closing handshake times out.  A
reset makes the peer's kernel discard what it has received but not yet read,
the close frame included, so a slow peer (a browser under load) reports 1006
instead of the code it was sent.  Here the connection is ended with a FIN
instead, which delivers the frame; a peer that does not read even that is
reset `RESET_AFTER` seconds later, so it cannot hold the connection.
"""

from __future__ import annotations

import txaio
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer

RESET_AFTER = 10.0


class ClosesGracefully:
    """Mixed into a `WebSocketServerProtocol`: its closing-handshake timeout ends the TCP with a FIN.

    `lost` fires once the TCP connection is gone.  Autobahn's `is_closed` fires earlier, as soon as it lets
    go of the connection, while a FIN may still wait behind unread bytes: what counts open connections
    against the caps waits for `lost`."""

    _reset_call = None

    def connectionMade(self):
        self.lost = defer.Deferred()
        super().connectionMade()

    def onCloseHandshakeTimeout(self):
        self.closeHandshakeTimeoutCall = None
        if self.state == WebSocketProtocol.STATE_CLOSED:
            return
        self.wasClean = False
        self.wasNotCleanReason = "the peer did not answer the close frame in time"
        self.wasCloseHandshakeTimeout = True
        self._reset_call = txaio.call_later(RESET_AFTER, self.transport.abortConnection)
        self.dropConnection(abort=False)  # after the reset is armed: this may end the connection at once

    def connectionLost(self, reason):
        if self._reset_call is not None and self._reset_call.active():
            self._reset_call.cancel()
        super().connectionLost(reason)
        self.lost.callback(None)
