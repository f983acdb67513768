"""Where `ServerBackend` has always been imported from; it lives in the `server` package."""

from .server import ServerBackend

__all__ = ["ServerBackend"]
