"""The server backend, by concern: `endpoints` (URLs, tokens, health), `dialects` (wire formats per server
kind), `concurrency` (the adaptive limit), `scheduler` (which endpoint, when) and `client` (the backend)."""

from unicorn_datasets.generation.server.client import ServerBackend

__all__ = ["ServerBackend"]
