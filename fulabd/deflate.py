"""
permessage-deflate (RFC 7692) for viewers' streams, when their client offers it
(browsers do): history pages of JSON events shrink several-fold on the way to
a reader's browser.

The daemon compresses with a small window and memory level, so an open viewer
costs about 40 KB of zlib state rather than about 320 KB at zlib's defaults.
Uploads are compressed by packed frames instead (fulabd/packed.py), whose
zstd is several times faster than deflate.
"""

from __future__ import annotations

from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

WINDOW_BITS = 13  # an 8 KiB window
MEM_LEVEL = 4


def accepting(max_message_size: int):
    """Autobahn's `perMessageCompressionAccept`: take a client's deflate offer, if it made one, inflating
    at most `max_message_size` bytes of any one message it sends (a larger one closes the connection, 1009)."""
    def accept(offers):
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                bits = max(9, min(WINDOW_BITS, offer.request_max_window_bits or WINDOW_BITS))
                return PerMessageDeflateOfferAccept(offer, window_bits=bits, mem_level=MEM_LEVEL,
                                                    max_message_size=max_message_size)
        return None
    return accept
