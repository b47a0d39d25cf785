"""Where capsrobust keeps things it can rebuild (decoded arrays, rendered synthnorb)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

#: Environment variable that overrides the cache directory (tests use it to stay isolated).
CACHE_ENV = "CAPSROBUST_CACHE_DIR"


def cache_dir() -> Path:
    """The user cache directory (``$CAPSROBUST_CACHE_DIR`` or the platform's cache dir), created."""
    override = os.environ.get(CACHE_ENV)
    path = Path(override) if override else Path(platformdirs.user_cache_dir("capsrobust"))
    path.mkdir(parents=True, exist_ok=True)
    return path
