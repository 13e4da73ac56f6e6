"""Where the project keeps its files: converted models, the request cache.

`DLN_HOME` (default `~/.cache/dln`) holds everything; `DLN_CACHE` overrides the request-cache file
(`0`/`off` disables it).
"""

from __future__ import annotations

import os
from pathlib import Path


def dln_home() -> Path:
    return Path(os.environ.get("DLN_HOME") or Path.home() / ".cache" / "dln").expanduser()


def default_cache_path() -> Path | None:
    """The request-cache file, or None when `DLN_CACHE` switches the cache off."""
    value = os.environ.get("DLN_CACHE", "").strip()
    if value.lower() in {"0", "off", "false", "no", "none"}:
        return None
    return Path(value).expanduser() if value else dln_home() / "cache.sqlite"
