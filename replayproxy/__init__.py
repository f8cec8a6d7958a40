"""replayproxy: record and replay Camber API traffic and the signed webhooks that follow."""

__version__ = "0.1.0"
