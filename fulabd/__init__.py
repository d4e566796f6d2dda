"""fulabd: receive AI coding agents' session transcripts, store them durably, stream them live."""

__version__ = "0.1.0"
