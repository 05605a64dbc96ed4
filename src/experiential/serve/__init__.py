"""``experiential serve``: an OpenAI-compatible chat server whose model learns from the feedback
its users send (see :mod:`experiential.serve.app` for the endpoints)."""

from .app import ServerState, create_app, load_app, serve
from .auth import ENV_KEYS, resolve_api_keys
from .learner import BASE, AdapterRegistry, Gate, Learner, ResponseLog, Served

__all__ = ["BASE", "ENV_KEYS", "AdapterRegistry", "Gate", "Learner", "ResponseLog", "Served",
           "ServerState", "create_app", "load_app", "resolve_api_keys",
           "serve"]
