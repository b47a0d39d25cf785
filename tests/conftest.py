"""Shared fixtures: an isolated cache directory and tiny datasets in the official NORB format."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from capsrobust.data import norb_format
from capsrobust.data.smallnorb import OFFICIAL_PREFIX, SPLIT_INSTANCES
from capsrobust.paths import CACHE_ENV


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a busy 2-core machine OpenMP threads spin on tiny tensors (100x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache directory (decoded arrays, recorded checksums)."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


def make_split_arrays(
    split: str,
    *,
    size: int = 8,
    elevations: tuple[int, ...] = (0, 4),
    azimuths: tuple[int, ...] = (0, 18),
    lightings: tuple[int, ...] = (0, 3),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dat, cat, info) for every class × split instance × view, in the official encoding.

    dat: uint8 (N, 2, size, size); cat: int32 (N,); info: int32 (N, 4) = instance, elevation index,
    azimuth in 10° units, lighting. Pixel values encode the row number so tests can track rows.
    """
    rows = list(itertools.product(range(5), sorted(SPLIT_INSTANCES[split]), elevations, azimuths, lightings))
    rng = np.random.default_rng(seed)
    dat = rng.integers(0, 256, size=(len(rows), 2, size, size), dtype=np.uint8)
    cat = np.array([r[0] for r in rows], dtype=np.int32)
    info = np.array([r[1:] for r in rows], dtype=np.int32)
    return dat, cat, info


def write_dataset(
    directory: Path,
    *,
    prefix: str = "smallnorb",
    gz: bool = False,
    **kwargs: object,
) -> Path:
    """Write the six files of a tiny dataset into ``directory`` (official names for smallnorb)."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".mat.gz" if gz else ".mat"
    for split in ("training", "testing"):
        stem = OFFICIAL_PREFIX[split] if prefix == "smallnorb" else f"{prefix}-tiny"
        arrays = make_split_arrays(split, seed=0 if split == "training" else 1, **kwargs)  # type: ignore[arg-type]
        for kind, array in zip(("dat", "cat", "info"), arrays):
            norb_format.write(directory / f"{stem}-{split}-{kind}{suffix}", array)
    return directory


@pytest.fixture
def norb_dir(tmp_path: Path) -> Path:
    """A tiny smallNORB-format dataset with the official file names (plain .mat)."""
    return write_dataset(tmp_path / "norb")


@pytest.fixture
def norb_gz_dir(tmp_path: Path) -> Path:
    """The same tiny dataset, gzipped."""
    return write_dataset(tmp_path / "norb_gz", gz=True)
