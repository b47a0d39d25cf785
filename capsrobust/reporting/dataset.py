"""Reports of the dataset commands: ``data difficulty`` (the 1-NN difficulty table) and the
provenance records written beside a result about a NORB-format dataset (``data show``'s contact
sheet, the difficulty table). Every file is written atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from capsrobust.files import atomic_write_text, write_csv, write_json
from capsrobust.provenance import provenance
from capsrobust.reporting import to_markdown

__all__ = ["difficulty_markdown", "write_dataset_provenance", "write_difficulty_report"]


def write_dataset_provenance(path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None,
                             **extra: Any) -> Path:
    """Write ``path``: provenance (command, commit, versions, date) with the dataset -- its directory and,
    from its synthnorb manifest where it has one, generator version, seed, grid and the files' SHA-256 --
    and ``extra``. ``data_dir`` None: the default synthnorb (rendered first if needed). Returns the path."""
    from capsrobust.data import synthnorb

    directory = synthnorb.ensure_rendered(progress=False) if data_dir is None else Path(data_dir)
    manifest_path = directory / synthnorb.MANIFEST_NAME
    dataset: dict[str, object] = {"directory": str(directory)}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        dataset.update({k: manifest[k] for k in ("dataset", "generator_version", "seed", "azimuths_deg",
                                                 "elevations_deg", "lightings") if k in manifest})
        dataset["sha256"] = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    return write_json(path, provenance(dataset=dataset, **extra))


def difficulty_markdown(table: pd.DataFrame) -> str:
    """:func:`~capsrobust.data.synthnorb.difficulty.knn_difficulty`'s table as markdown, the error in % (1 decimal)."""
    shown = table.assign(knn_error=(100 * table["knn_error"]).round(1)).rename(columns={"knn_error": "knn_error_%"})
    return to_markdown(shown, float_digits=1)


def write_difficulty_report(out_dir: str | os.PathLike[str], table: pd.DataFrame,
                            data_dir: str | os.PathLike[str] | None, *, started: float) -> list[Path]:
    """Write difficulty.md (:func:`difficulty_markdown` and how it was measured), difficulty.csv (``table``)
    and difficulty-provenance.json (:func:`write_dataset_provenance`, with the seconds since ``started``,
    a :func:`time.perf_counter` value) into ``out_dir`` (created); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        atomic_write_text(out / "difficulty.md",
                          f"# 1-NN difficulty of {table['dataset'].iloc[0]}\n\n{difficulty_markdown(table)}\n\n"
                          "1-nearest neighbour (L2) on 96->48 antialiased bilinear downsampled, centre-cropped 32x32 "
                          "stereo images (2048 features); error in %.\n"),
        write_csv(table, out / "difficulty.csv"),
        write_dataset_provenance(out / "difficulty-provenance.json", data_dir, seconds=time.perf_counter() - started),
    ]
