"""SHA-256 checksums of dataset files: streaming hashes, the official values, and verification.

Checksums are always of the *uncompressed* content, so ``x.mat`` and ``x.mat.gz`` agree. Official
values are known for three smallNORB files (REFERENCE.md §1); for the other three the first
verified copy's checksum is recorded in the cache directory (trust on first use) and later copies
are checked against it -- every report says which kind of check was made.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path

import pandas as pd

from capsrobust.errors import DataError
from capsrobust.paths import cache_dir

__all__ = ["KNOWN_SHA256", "sha256_uncompressed", "verify_files"]

#: Official SHA-256 of uncompressed smallNORB files (REFERENCE.md §1).
KNOWN_SHA256: dict[str, str] = {
    "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat":
        "4813bf104d229583fea8ed57fdc3e9258c927b8dfb43d75412e854a7a9588067",
    "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat":
        "2b1de646c57ffdc259b8fb973a6453e90915248a8fdb4d9df948786bdae72b34",
    "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat":
        "591ed90c090cb6724593e8de28180bd602095ee8ec82bd1a5ca30b488cd1d06e",
}

_RECORD_FILE = "recorded-checksums.json"
_CHUNK = 8 << 20


def sha256_uncompressed(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's uncompressed content (gzip is decompressed on the fly)."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as stream:
            while chunk := stream.read(_CHUNK):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc or type(exc).__name__}); the file is corrupt, download it again") from None
    return h.hexdigest()


def _recorded_path() -> Path:
    return cache_dir() / _RECORD_FILE


def load_recorded() -> dict[str, str]:
    """Checksums recorded on first verification of files with no official value."""
    try:
        return json.loads(_recorded_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_recorded(recorded: dict[str, str]) -> None:
    path = _recorded_path()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(recorded, indent=2, sort_keys=True))
    os.replace(tmp, path)


def verify_files(
    checksums: dict[str, str],
    *,
    manifest: dict[str, str] | None = None,
    record: bool = True,
) -> pd.DataFrame:
    """Compare uncompressed SHA-256 values against official, manifest or recorded values.

    Args:
        checksums: file name (uncompressed) -> SHA-256 of the local copy.
        manifest: expected values from a dataset's own manifest (synthnorb), if any.
        record: store values for files that have no official value yet (trust on first use).

    Returns:
        One row per file: ``file``, ``sha256``, ``expected``, ``source`` (official / manifest /
        recorded / none) and ``status`` (``ok``, ``MISMATCH`` or ``recorded now``).
    """
    recorded = load_recorded()
    rows = []
    changed = False
    for name, digest in sorted(checksums.items()):
        if name in KNOWN_SHA256:
            expected, source = KNOWN_SHA256[name], "official"
        elif manifest and name in manifest:
            expected, source = manifest[name], "manifest"
        elif name in recorded:
            expected, source = recorded[name], "recorded"
        else:
            expected, source = "", "none"
        if expected:
            status = "ok" if digest == expected else "MISMATCH"
        elif record and name.startswith("smallnorb"):
            recorded[name] = digest
            changed = True
            status = "recorded now"
        else:
            status = "no reference"
        rows.append({"file": name, "sha256": digest, "expected": expected, "source": source, "status": status})
    if changed:
        _save_recorded(recorded)
    return pd.DataFrame(rows, columns=["file", "sha256", "expected", "source", "status"])
