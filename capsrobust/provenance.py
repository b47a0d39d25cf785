"""Provenance of a result: the command, commit, versions and time that produced it."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["file_sha256", "git_commit", "provenance", "versions"]

_PACKAGES = ("capsrobust", "torch", "torchvision", "torchattacks", "numpy", "pandas", "click")


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str:
    """``<sha>`` of HEAD, or ``unknown`` outside git; ``+dirty`` if tracked files other than ``results/``
    have uncommitted changes (a command that rewrites its own tables under results/ is not running
    uncommitted code)."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
                               cwd=top, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks (checkpoints, rendered data files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on, and Python's."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(**fields: Any) -> dict[str, Any]:
    """A provenance record: ``command`` (argv as typed), ``commit``, ``versions``, ``date``, plus ``fields``."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    record: dict[str, Any] = {
        "command": shlex.join(argv),
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "cpu_threads": os.cpu_count(),
    }
    record.update(fields)
    return record
