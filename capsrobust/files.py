"""Atomic file writes: a temporary file in the same directory, fsync, then ``os.replace``.

A crash or Ctrl-C at any moment leaves the previous version of the file or the new one, never a
torn one. Checkpoints and every result table, plot and provenance record go through here.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_csv", "write_json"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent directories created; mode 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, trailing newline ensured) to ``path`` atomically."""
    return atomic_write_bytes(path, (text if text.endswith("\n") else text + "\n").encode("utf-8"))


def write_csv(table: "pd.DataFrame", path: str | os.PathLike[str]) -> Path:
    """``table`` as CSV (no index; full float precision) written atomically."""
    return atomic_write_text(path, table.to_csv(index=False))


def write_json(path: str | os.PathLike[str], record: Any) -> Path:
    """``record`` as indented JSON (NaN becomes null) written atomically."""
    return atomic_write_text(path, json.dumps(_json_safe(record), indent=2))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
