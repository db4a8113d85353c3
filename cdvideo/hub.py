"""The Hugging Face hub as cdvideo meets it: offline mode and whether the hub can be reached.

Imports neither torch nor diffusers, so models.py, distilled.py and metrics share it.
"""

from __future__ import annotations

import os


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set, read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the hub's host, so that no network fails in seconds, not minutes."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False
