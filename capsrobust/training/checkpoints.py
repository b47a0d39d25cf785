"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``, checked for identity.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts -- nothing that needs
unpickling code -- with a ``format`` tag, so a foreign ``.pt`` file is recognised as such. It holds
everything needed to rebuild the model (name and configuration) and to resume training exactly
(optimizer state, step, data order and RNG state).

:func:`load_model` is the one way back from a file to a model: it reads the checkpoint
(:func:`load_checkpoint`), prepares the data it is to be used on, checks that it was trained on that
data (:func:`check_trained_on`, the one rule for "was this checkpoint trained on this data?") and
rebuilds the model (:func:`model_from_checkpoint`). Every command that evaluates, attacks or
inspects a checkpoint goes through it; a missing, foreign, corrupt or mismatched checkpoint is a
one-line :class:`~capsrobust.errors.CheckpointError`.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from capsrobust.data.prepared import PreparedData, prepare_data
from capsrobust.data.splits import get_split
from capsrobust.errors import CheckpointError
from capsrobust.files import atomic_write_bytes
from capsrobust.models import build_model

__all__ = ["FORMAT", "LoadedModel", "check_compatible", "check_trained_on", "evaluation_only", "load_checkpoint",
           "load_model", "model_from_checkpoint", "save_checkpoint"]

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
    except Exception:  # noqa: BLE001 -- untrusted file: torch.load raises many types (even KeyError)
        raise CheckpointError(f"{path}: {_unloadable(path)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a capsrobust checkpoint (foreign file); pass one written by `capsrobust train`")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {data.get('version')} is not supported (expected {VERSION})")
    return data


#: The first bytes of every file ``torch.save`` writes (a zip archive).
_TORCH_ARCHIVE = b"PK\x03\x04"


def _unloadable(path: Path) -> str:
    """Why ``torch.load`` refused ``path``, in the user's terms (never PyTorch's own sentence)."""
    with path.open("rb") as f:
        head = f.read(len(_TORCH_ARCHIVE))
    if not head:
        return "not a loadable checkpoint (the file is empty); pass one written by `capsrobust train`"
    if head != _TORCH_ARCHIVE:
        return ("not a capsrobust checkpoint: torch.save did not write it, so it is not a loadable checkpoint; "
                "pass one written by `capsrobust train`")
    return ("not a loadable checkpoint (a torch file that is truncated or corrupt, or holds objects other than "
            "tensors and plain data, which capsrobust refuses to unpickle); use another checkpoint or retrain")


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (no data check: see :func:`load_model`)."""
    try:
        model = build_model(checkpoint["model"], in_channels=checkpoint["in_channels"], **checkpoint["model_config"])
        model.load_state_dict(checkpoint["model_state"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"checkpoint does not match its model description ({str(exc).splitlines()[0][:100]})") from None
    return model


@dataclass
class LoadedModel:
    """A trained model back from its checkpoint file, with the data it was checked against."""

    path: Path
    checkpoint: dict[str, Any]  # as read by load_checkpoint (model, config, step, dataset identity, ...)
    model: nn.Module  # rebuilt, weights loaded, in eval mode
    data: PreparedData  # the data it was trained on (check_trained_on passed)

    @property
    def name(self) -> str:
        """The model's name (``capsules``, ``capsules-small``, ``cnn``): for tables and file names."""
        return str(self.checkpoint["model"])

    @property
    def step(self) -> int:
        return int(self.checkpoint.get("step", -1))


def load_model(
    path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    split: str | None = None,
    data: PreparedData | None = None,
    checkpoint: dict[str, Any] | None = None,
    advice: str = "pass --data-dir with the data it was trained on",
    log: Callable[[str], None] | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """The one checkpoint loader: read ``path``, check it against the data, rebuild the model.

    The data is ``data`` when given (one dataset shared by several checkpoints), else prepared from
    ``data_dir`` (synthnorb when None) with the checkpoint's input mode and ``split`` (default: the
    checkpoint's own split). ``checkpoint``: the dict already read from ``path`` by
    :func:`load_checkpoint`, when the caller needed it first. Raises :class:`CheckpointError`
    (one line) for a missing, foreign, corrupt or incomplete file, a checkpoint trained on other
    data (``advice`` ends that message; ``log`` receives the note of an accepted synthnorb
    re-render, see :func:`check_trained_on`) or weights that do not fit the model they describe.
    """
    path = Path(path)
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(path)
    if data is None:
        try:
            data = prepare_data(data_dir, get_split(split or checkpoint["split"]).name, checkpoint["mode"])
        except KeyError as exc:
            raise CheckpointError(f"{path}: checkpoint lacks {exc}; pass one written by `capsrobust train`") from None
    check_trained_on(path, checkpoint, data, advice=advice, log=log)
    try:
        model = model_from_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return LoadedModel(path=path, checkpoint=checkpoint, model=model.to(device).eval(), data=data)


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


def check_trained_on(
    path: str | os.PathLike[str],
    checkpoint: dict[str, Any],
    data: PreparedData,
    *,
    advice: str = "pass --data-dir with the data it was trained on",
    log: Callable[[str], None] | None = None,
) -> str | None:
    """Raise :class:`CheckpointError` unless ``checkpoint`` was trained on ``data``; the one data guard.

    Same bytes (``dataset_checksum``) always pass, silently. Real smallNORB (or any data without a
    recipe) must be byte-identical. synthnorb passes with other bytes when (1) the checkpoint's
    recipe -- generator version, seed, grid; recorded or derived, see
    :func:`~capsrobust.data.synthnorb.recipe.checkpoint_recipe` -- equals the recipe of the files
    here, vouched for by their manifest, and (2) the files agree with a fresh render of a sample
    within :data:`~capsrobust.data.synthnorb.RENDER_TOLERANCE` (renders of one recipe on different
    CPUs differ in last-bit rounding). It then reports one line through ``log`` (default: stderr)
    and returns it. ``advice`` ends each refusal: what the caller's user should do instead.
    """
    trained = checkpoint.get("dataset")
    checksum = str(checkpoint.get("dataset_checksum"))
    if checksum == data.checksum:
        return None

    def refusal(detail: str = "") -> CheckpointError:
        return CheckpointError(f"{path}: trained on {trained} data with checksum {checksum[:12]}, but the data here "
                               f"is {data.dataset} {data.checksum[:12]}{detail}; {advice}")

    if trained != "synthnorb" or data.dataset != "synthnorb":
        raise refusal()
    from capsrobust.data.synthnorb.recipe import TOLERANCE_TEXT, Recipe, checkpoint_recipe, compare_with_render

    wanted = checkpoint_recipe(checkpoint)
    if wanted is None:
        raise refusal(" (the checkpoint records no synthnorb recipe, so only identical bytes will do)")
    here = Recipe.from_dict(data.recipe)
    if here is None:
        raise refusal(f" (no intact synthnorb manifest in {data.source_dir}, so its recipe is unknown)")
    if here != wanted:
        raise refusal(f" (recipe: {here.describe()}; trained on {wanted.describe()})")
    key = (str(data.source_dir), data.checksum)
    if key not in _AGREEMENTS:  # one spot check per dataset and process, however many checkpoints
        _AGREEMENTS[key] = compare_with_render(data.source_dir, here)
    agreement = _AGREEMENTS[key]
    if not agreement.within_tolerance():
        raise refusal(f" ({here.describe()}, but against a fresh render of that recipe {agreement.describe()}; "
                      f"allowed: {TOLERANCE_TEXT})")
    note = (f"{path}: synthnorb bytes differ from its training data (checksum {data.checksum[:12]} here, "
            f"{checksum[:12]} then) but the recipe matches ({here.describe()}) and a fresh render agrees "
            f"({agreement.describe()}; allowed: {TOLERANCE_TEXT}); using it")
    (log or _to_stderr)(note)
    return note


_AGREEMENTS: dict[tuple[str, str], Any] = {}  # (directory, checksum) -> Agreement of its spot check


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)
