"""The smallNORB dataset (and anything written in its format, such as synthnorb).

A dataset directory holds six files (plain ``.mat`` or ``.mat.gz``)::

    <prefix>-training-{dat,cat,info}.mat   <prefix>-testing-{dat,cat,info}.mat

where ``<prefix>`` is ``smallnorb-5x46789x9x18x6x2x96x96`` / ``smallnorb-5x01235x9x18x6x2x96x96`` for
the official files (REFERENCE.md §1) or starts with ``synthnorb-`` for the embedded renderer.

:func:`load_split` returns uint8 images and a pandas metadata table, after checking labels,
instance sets, viewpoint and lighting ranges and that the three files agree in length. Decoded
arrays are cached as ``.npy`` in the user cache directory (keyed by the source files' path, size
and modification time), so the second load of a full split is a memory map: well under 2 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from capsrobust.data import norb_format
from capsrobust.data.checksums import sha256_uncompressed
from capsrobust.errors import ConfigError, DataError
from capsrobust.paths import cache_dir

__all__ = [
    "CLASS_NAMES",
    "DatasetFiles",
    "NorbSplit",
    "OFFICIAL_FILES",
    "SPLIT_INSTANCES",
    "find_files",
    "load_split",
]

Split = Literal["training", "testing"]
Mode = Literal["stereo", "mono"]

SPLITS: tuple[str, ...] = ("training", "testing")
MODES: tuple[str, ...] = ("stereo", "mono")
KINDS: tuple[str, ...] = ("dat", "cat", "info")

#: Label order of smallNORB's ``cat`` files.
CLASS_NAMES: tuple[str, ...] = ("animal", "human", "airplane", "truck", "car")
#: Toy instances in each split (LeCun et al. 2004): disjoint, so the test set holds unseen toys.
SPLIT_INSTANCES: dict[str, frozenset[int]] = {
    "training": frozenset({4, 6, 7, 8, 9}),
    "testing": frozenset({0, 1, 2, 3, 5}),
}
OFFICIAL_PREFIX: dict[str, str] = {
    "training": "smallnorb-5x46789x9x18x6x2x96x96",
    "testing": "smallnorb-5x01235x9x18x6x2x96x96",
}
#: The six official file names, uncompressed (the server holds each with a ``.gz`` suffix).
OFFICIAL_FILES: tuple[str, ...] = tuple(
    f"{OFFICIAL_PREFIX[split]}-{split}-{kind}.mat" for split in SPLITS for kind in KINDS
)

_CACHE_VERSION = 1


@dataclass(frozen=True)
class ViewRanges:
    """Allowed values of the ``info`` columns (official encoding: azimuth in 10° units, elevation index)."""

    azimuth_units: frozenset[int]
    elevation_index: range
    lighting: range


_OFFICIAL_RANGES = ViewRanges(frozenset(range(0, 35, 2)), range(0, 9), range(0, 6))
# synthnorb keeps the encoding but can render any azimuth (10° steps) and elevation 0°..90°.
_SYNTH_RANGES = ViewRanges(frozenset(range(0, 36)), range(-6, 13), range(0, 6))


@dataclass(frozen=True)
class DatasetFiles:
    """The six files of a dataset directory and what they are."""

    directory: Path
    dataset: str  # "smallNORB" or "synthnorb"
    paths: dict[tuple[str, str], Path]  # (split, kind) -> file

    def split_paths(self, split: str) -> tuple[Path, Path, Path]:
        return self.paths[(split, "dat")], self.paths[(split, "cat")], self.paths[(split, "info")]

    @property
    def ranges(self) -> ViewRanges:
        return _SYNTH_RANGES if self.dataset == "synthnorb" else _OFFICIAL_RANGES


@dataclass
class NorbSplit:
    """One split of the dataset, decoded.

    Attributes:
        images: uint8 array, ``(N, 2, H, W)`` in stereo mode (the two cameras as channels) or
            ``(2N, 1, H, W)`` in mono mode (each camera a separate example; example ``2i + c`` is
            camera ``c`` of pair ``i``). Read-only memory map of the decoded cache.
        meta: one row per example: ``label`` (0-4, see CLASS_NAMES), ``instance`` (0-9),
            ``elevation`` and ``azimuth`` in degrees, ``lighting`` (0-5), and ``camera`` in mono mode.
        dataset: "smallNORB" or "synthnorb" -- every table must say which.
        checksums: SHA-256 of each source file's uncompressed content, by file name.
    """

    images: np.ndarray
    meta: pd.DataFrame
    dataset: str
    split: str
    mode: str
    source_dir: Path
    checksums: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def labels(self) -> np.ndarray:
        return self.meta["label"].to_numpy()


def _dataset_name(prefix: str) -> str | None:
    if prefix.startswith("smallnorb"):
        return "smallNORB"
    if prefix.startswith("synthnorb"):
        return "synthnorb"
    return None


def find_files(data_dir: str | os.PathLike[str]) -> DatasetFiles:
    """Locate the six dataset files in ``data_dir`` (plain or gzipped); one-line error if any is missing."""
    directory = Path(data_dir).expanduser()
    if not directory.exists():
        raise DataError(
            f"data directory {directory} does not exist; pass --data-dir with the six smallNORB files, "
            f"run `capsrobust data download --dir {directory}`, or omit --data-dir to use synthnorb"
        )
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory; pass the directory that holds the six .mat files")

    paths: dict[tuple[str, str], Path] = {}
    datasets: set[str] = set()
    missing: list[str] = []
    for split in SPLITS:
        for kind in KINDS:
            candidates = sorted(
                p for p in directory.iterdir()
                if p.name.endswith((f"-{split}-{kind}.mat", f"-{split}-{kind}.mat.gz"))
                and _dataset_name(p.name) is not None
            )
            # Prefer the plain file when both forms are present (faster to read, same content).
            if not candidates:
                missing.append(f"{OFFICIAL_PREFIX[split]}-{split}-{kind}.mat[.gz]")
                continue
            plain = [p for p in candidates if p.suffix == ".mat"]
            chosen = plain[0] if plain else candidates[0]
            paths[(split, kind)] = chosen
            datasets.add(_dataset_name(chosen.name))  # type: ignore[arg-type]
    if missing:
        raise DataError(
            f"{directory}: missing {', '.join(missing)}; "
            f"run `capsrobust data download --dir {directory}` or copy the six official files there"
        )
    if len(datasets) != 1:
        raise DataError(f"{directory}: mixes files of {' and '.join(sorted(datasets))}; keep one dataset per directory")
    return DatasetFiles(directory=directory, dataset=datasets.pop(), paths=paths)


# ----------------------------------------------------------------------------------------------
# Validation


def _validate(files: DatasetFiles, split: str, dat: np.ndarray, cat: np.ndarray, info: np.ndarray) -> None:
    dat_path, cat_path, info_path = files.split_paths(split)
    if dat.dtype != np.uint8 or dat.ndim != 4 or dat.shape[1] != 2:
        raise DataError(f"{dat_path}: expected uint8 images of shape (N, 2, H, W), found {dat.dtype} {dat.shape}")
    if cat.ndim != 1 or not np.issubdtype(cat.dtype, np.integer):
        raise DataError(f"{cat_path}: expected a 1-D integer label vector, found {cat.dtype} {cat.shape}")
    if info.ndim != 2 or info.shape[1] != 4 or not np.issubdtype(info.dtype, np.integer):
        raise DataError(f"{info_path}: expected integer metadata of shape (N, 4), found {info.dtype} {info.shape}")
    if not (len(dat) == len(cat) == len(info)):
        raise DataError(
            f"{files.directory}: {split} files disagree in length (dat {len(dat)}, cat {len(cat)}, "
            f"info {len(info)}); one of them is from another dataset, replace it"
        )
    if len(cat) == 0:
        raise DataError(f"{cat_path}: holds no examples")
    bad = cat[(cat < 0) | (cat >= len(CLASS_NAMES))]
    if bad.size:
        raise DataError(f"{cat_path}: label {int(bad[0])} out of range 0-{len(CLASS_NAMES) - 1}; the file is corrupt")

    ranges = files.ranges
    instance, elevation, azimuth, lighting = info.T
    foreign = set(np.unique(instance).tolist()) - SPLIT_INSTANCES[split]
    if foreign:
        raise DataError(
            f"{info_path}: instances {sorted(foreign)} do not belong to the {split} set "
            f"{sorted(SPLIT_INSTANCES[split])}; training and testing files may be swapped"
        )
    checks = (
        ("azimuth", azimuth, lambda v: np.isin(v, list(ranges.azimuth_units)), "even values 0-34 (x10 degrees)"
         if ranges is _OFFICIAL_RANGES else "0-35 (x10 degrees)"),
        ("elevation", elevation, lambda v: (v >= ranges.elevation_index.start) & (v < ranges.elevation_index.stop),
         f"indices {ranges.elevation_index.start}-{ranges.elevation_index.stop - 1}"),
        ("lighting", lighting, lambda v: (v >= 0) & (v < 6), "0-5"),
    )
    for name, values, ok, allowed in checks:
        wrong = values[~ok(values)]
        if wrong.size:
            raise DataError(f"{info_path}: {name} value {int(wrong[0])} out of range ({allowed}); the file is corrupt")


# ----------------------------------------------------------------------------------------------
# Decoding with a cache


def _cache_key(paths: tuple[Path, ...]) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _decode(files: DatasetFiles, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, str]]:
    """Return (dat, cat, info, checksums), from the cache when the source files are unchanged."""
    paths = files.split_paths(split)
    entry = cache_dir() / "decoded" / _cache_key(paths)
    meta_file = entry / "meta.json"
    if meta_file.exists():
        try:
            checksums = json.loads(meta_file.read_text())["checksums"]
            dat = np.load(entry / "dat.npy", mmap_mode="r")
            cat = np.load(entry / "cat.npy")
            info = np.load(entry / "info.npy")
            return dat, cat, info, checksums
        except (OSError, ValueError, KeyError):
            shutil.rmtree(entry, ignore_errors=True)  # a damaged cache entry is rebuilt, never trusted

    dat, cat, info = (norb_format.read(p) for p in paths)
    _validate(files, split, dat, cat, info)
    checksums = {_uncompressed_name(p): sha256_uncompressed(p) for p in paths}

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "dat.npy", dat)
        np.save(tmp / "cat.npy", cat)
        np.save(tmp / "info.npy", info)
        (tmp / "meta.json").write_text(json.dumps({"checksums": checksums, "sources": [str(p) for p in paths]}))
        os.replace(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # cache is an optimisation; a read-only cache dir is fine
    return dat, cat, info, checksums


def _uncompressed_name(path: Path) -> str:
    return path.name[:-3] if path.name.endswith(".gz") else path.name


def load_split(
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "training",
    mode: str = "stereo",
) -> NorbSplit:
    """Load one split of smallNORB (or synthnorb) as uint8 images and a metadata table.

    Args:
        data_dir: directory holding the six files; ``None`` uses synthnorb from the cache,
            rendering it on first use.
        split: ``"training"`` or ``"testing"``.
        mode: ``"stereo"`` -> images ``(N, 2, H, W)``; ``"mono"`` -> ``(2N, 1, H, W)``.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown data split {split!r}; choose one of: {', '.join(SPLITS)}")
    if mode not in MODES:
        raise ConfigError(f"unknown input mode {mode!r}; choose one of: {', '.join(MODES)}")
    if data_dir is None:
        from capsrobust.data.synthnorb import ensure_rendered  # lazy: rendering is only needed on first use

        data_dir = ensure_rendered()
    files = find_files(data_dir)
    dat, cat, info, checksums = _decode(files, split)

    meta = pd.DataFrame(
        {
            "label": cat.astype(np.int64),
            "instance": info[:, 0].astype(np.int64),
            "elevation": (30 + 5 * info[:, 1]).astype(np.int64),  # index 0..8 -> 30..70 degrees
            "azimuth": (10 * info[:, 2]).astype(np.int64),  # units of 10 degrees
            "lighting": info[:, 3].astype(np.int64),
        }
    )
    images = dat
    if mode == "mono":
        n, cams, h, w = dat.shape
        images = dat.reshape(n * cams, 1, h, w)
        meta = meta.loc[meta.index.repeat(cams)].reset_index(drop=True)
        meta["camera"] = np.tile(np.arange(cams), n)
    return NorbSplit(
        images=images, meta=meta, dataset=files.dataset, split=split, mode=mode,
        source_dir=files.directory, checksums=checksums,
    )
