"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``, checked for identity.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts -- nothing that needs
unpickling code -- with a ``format`` tag, so a foreign ``.pt`` file is recognised as such. It holds
everything needed to rebuild the model (name and configuration) and to resume training exactly
(optimizer state, step, data order and RNG state).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from capsrobust.errors import CheckpointError
from capsrobust.files import atomic_write_bytes

__all__ = ["FORMAT", "check_compatible", "evaluation_only", "load_checkpoint", "save_checkpoint"]

#: What only resuming needs; an evaluation-only checkpoint (best.pt, `capsrobust export`) drops it.
RESUME_KEYS = ("optimizer_state", "rng_state", "scheduler")

FORMAT = "capsrobust-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path`` atomically: temp file, fsync, ``os.replace``.

    A crash at any moment leaves either the previous checkpoint or the new one, never a torn file.
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def evaluation_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` without the optimiser and RNG state: a third of the size (Adam keeps two
    moments per weight), enough to evaluate or attack the model, not to resume its training."""
    return {key: value for key, value in checkpoint.items() if key not in RESUME_KEYS} | {"resumable": False}


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a capsrobust checkpoint safely (``weights_only=True``); one-line error if it is not one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found; train one with `capsrobust train` or check the path")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; pass a checkpoint file such as {path / 'last.pt'}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- untrusted file: torch.load raises many types (even KeyError)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "truncated or corrupt" if path.stat().st_size else "empty"
        raise CheckpointError(
            f"{path}: not a loadable checkpoint ({kind}: {first[:120]}); use another checkpoint or retrain"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a capsrobust checkpoint (foreign file); pass one written by `capsrobust train`")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {data.get('version')} is not supported (expected {VERSION})")
    return data


def check_compatible(path: str | os.PathLike[str], checkpoint: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` if ``checkpoint`` was made for another model/config/dataset.

    ``expected`` maps keys of the checkpoint (``model``, ``model_config``, ``dataset``, ``mode``, …)
    to the values the caller needs.
    """
    for key, want in expected.items():
        have = checkpoint.get(key)
        if have != want:
            raise CheckpointError(
                f"{path}: checkpoint is for {key} {have!r}, not {want!r}; "
                "resume with the same settings or start a new run directory (--out)"
            )
