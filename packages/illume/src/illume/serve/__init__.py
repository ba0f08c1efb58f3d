"""`illume serve`: ILLUME behind an OpenAI-compatible HTTP API (see `illume.serve.app`)."""

from .app import ServeSettings, create_app
from .batching import Batcher, Expired, QueueFull

__all__ = ["Batcher", "Expired", "QueueFull", "ServeSettings", "create_app"]
