"""Render synthnorb's two splits and write them in smallNORB's binary format, with a manifest.

Files written into the output directory (``<e>``, ``<a>``, ``<l>`` = number of elevations,
azimuths and lightings; ``9x18x6`` for the default grid, so the names match smallNORB's)::

    synthnorb-5x46789x<e>x<a>x<l>x2x96x96-training-{dat,cat,info}.mat
    synthnorb-5x01235x<e>x<a>x<l>x2x96x96-testing-{dat,cat,info}.mat
    synthnorb-manifest.json

``dat`` uint8 (N, 2, 96, 96) stereo pairs; ``cat`` int32 (N,) labels; ``info`` int32 (N, 4):
instance, elevation index ``(elevation - 30) / 5`` (negative below 30°, above 8 beyond 70°),
azimuth in units of 10°, lighting 0-5 -- smallNORB's encoding. Rows are sorted by category,
instance, elevation, azimuth, lighting (lighting varies fastest).

Determinism: every random choice (toy parameters, aim jitter, sensor noise) is drawn from a
generator keyed by the seed *and* the image's own coordinates (category, instance, view,
lighting), never from shared state, so a pair's bytes do not depend on what else is rendered:
a subset of the grid reproduces exactly the matching rows of the full dataset.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch

from capsrobust.data import norb_format
from capsrobust.data.synthnorb.camera import DEFAULT_RIG
from capsrobust.data.synthnorb.render import LIGHTINGS, finish, render_views
from capsrobust.data.synthnorb.toys import ARCHETYPES, CATEGORIES, build_toy
from capsrobust.errors import ConfigError
from capsrobust.provenance import file_sha256

__all__ = [
    "FULL_AZIMUTHS",
    "FULL_ELEVATIONS",
    "GENERATOR_VERSION",
    "Grid",
    "MANIFEST_NAME",
    "RENDER_TOLERANCE",
    "SPLIT_INSTANCES",
    "make_grid",
    "render_split",
    "write_dataset",
]

#: The recipe: bumped whenever the images of a seed change by more than RENDER_TOLERANCE (toys,
#: cameras, lighting, noise); part of the cache key, the manifest and a checkpoint's data recipe.
#: Not bumped for last-bit numerics: 1.0 renders from different CPUs differed in ~1 pixel in 10^7
#: by one grey level, and the CPU-independent renderer (see numerics.py) differs from them as
#: little. Before bumping it, training must record ``PreparedData.recipe`` in its checkpoints:
#: a synthnorb checkpoint without one is taken to be trained on 1.0 (see recipe.checkpoint_recipe).
GENERATOR_VERSION = "1.0"
#: How far two renders of one recipe may differ and still count as the same data: every pixel
#: within ``max_grey`` grey levels, and at most ``max_fraction`` of the pixels differing at all.
RENDER_TOLERANCE = {"max_grey": 1, "max_fraction": 1e-5}
MANIFEST_NAME = "synthnorb-manifest.json"
FULL_AZIMUTHS: tuple[int, ...] = tuple(range(0, 360, 20))  # smallNORB: 0°, 20°, ..., 340°
FULL_ELEVATIONS: tuple[int, ...] = tuple(range(30, 75, 5))  # smallNORB: 30°, 35°, ..., 70°
SPLIT_INSTANCES: dict[str, tuple[int, ...]] = {"training": (4, 6, 7, 8, 9), "testing": (0, 1, 2, 3, 5)}
SPLITS = ("training", "testing")
#: Aim-point jitter (toy-size units, uniform in ±this per axis): smallNORB's toys are not perfectly centred.
AIM_JITTER = 0.02
#: Std of the Gaussian sensor noise, in grey levels.
NOISE_STD = 2.0
#: Views rendered per batch: bounds memory at about 2 * VIEWS_PER_BATCH * parts * 96 * 96 * 3 floats.
VIEWS_PER_BATCH = 24


class Grid(NamedTuple):
    """The rendered grid: sorted azimuths and elevations (degrees) and lighting indices."""

    azimuths: tuple[int, ...]
    elevations: tuple[int, ...]
    lightings: tuple[int, ...]

    @property
    def pairs_per_split(self) -> int:
        return 5 * 5 * len(self.azimuths) * len(self.elevations) * len(self.lightings)


def _as_ints(values: Iterable[float], what: str) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or float(v) != int(float(v)):
            raise ConfigError(f"{what} {v!r} is not a whole number of degrees; give integers such as 0,20,40")
        out.append(int(float(v)))
    return out


def make_grid(
    azimuths: Sequence[float] | None = None,
    elevations: Sequence[float] | None = None,
    lightings: Sequence[int] | None = None,
) -> Grid:
    """Validate a viewing grid (degrees; ``None`` = smallNORB's) and return it sorted and de-duplicated.

    Azimuths must be multiples of 10° in [0, 350] and elevations multiples of 5° in [0, 85], because
    ``info`` stores azimuth in units of 10° and elevation as ``(elevation - 30) / 5``. Raises
    :class:`ConfigError` with a one-line message otherwise.
    """
    az = list(FULL_AZIMUTHS) if azimuths is None else _as_ints(azimuths, "azimuth")
    el = list(FULL_ELEVATIONS) if elevations is None else _as_ints(elevations, "elevation")
    li = list(range(len(LIGHTINGS))) if lightings is None else _as_ints(lightings, "lighting")
    for name, values in (("azimuth", az), ("elevation", el), ("lighting", li)):
        if not values:
            raise ConfigError(f"empty {name} list; give at least one value, e.g. --{name}s 0")
    bad = [a for a in az if a % 10 or not 0 <= a <= 350]
    if bad:
        raise ConfigError(f"azimuth {bad[0]} is not allowed; use multiples of 10 from 0 to 350 degrees, e.g. 0,20,40")
    bad = [e for e in el if e % 5 or not 0 <= e <= 85]
    if bad:
        raise ConfigError(f"elevation {bad[0]} is not allowed; use multiples of 5 from 0 to 85 degrees, e.g. 30,35,40")
    bad = [v for v in li if not 0 <= v < len(LIGHTINGS)]
    if bad:
        raise ConfigError(f"lighting {bad[0]} is not allowed; use indices 0 to {len(LIGHTINGS) - 1}")
    return Grid(tuple(sorted(set(az))), tuple(sorted(set(el))), tuple(sorted(set(li))))


def _key_seed(*key: int) -> int:
    """A 63-bit seed derived from integer coordinates (stable across runs and platforms)."""
    return int(np.random.SeedSequence([k & 0xFFFFFFFF for k in key]).generate_state(2, np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


def _aim_points(seed: int, category: int, instance: int, views: np.ndarray) -> torch.Tensor:
    """Jittered aim point (V, 3) for views (V, 2) of (elevation°, azimuth°)."""
    out = np.empty((len(views), 3))
    for i, (el, az) in enumerate(views):
        rng = np.random.default_rng(_key_seed(seed, category, instance, int(el), int(az), 0xA1))
        out[i] = rng.uniform(-AIM_JITTER, AIM_JITTER, 3)
    return torch.tensor(out, dtype=torch.float32)


def render_split(
    split: str,
    grid: Grid,
    *,
    seed: int = 0,
    on_pairs: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one split. Returns ``dat`` uint8 (N, 2, 96, 96), ``cat`` int32 (N,), ``info`` int32 (N, 4).

    N = 25 toys x len(elevations) x len(azimuths) x len(lightings); rows sorted as the module says.
    ``on_pairs(k)`` is called after each batch with the number of pairs just rendered (progress bars).
    Runs torch single-threaded: these small element-wise kernels scale poorly across threads, and on
    a shared machine OpenMP's spinning threads made the render 5x slower than one thread (measured).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _render_split(split, grid, seed, on_pairs)
    finally:
        torch.set_num_threads(threads)


def _render_split(split: str, grid: Grid, seed: int,
                  on_pairs: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    size = DEFAULT_RIG.size
    views = np.array([(e, a) for e in grid.elevations for a in grid.azimuths], dtype=np.int64)  # (V, 2)
    n_light = len(grid.lightings)
    n = len(CATEGORIES) * len(SPLIT_INSTANCES[split]) * len(views) * n_light
    dat = np.empty((n, 2, size, size), dtype=np.uint8)
    cat = np.empty(n, dtype=np.int32)
    info = np.empty((n, 4), dtype=np.int32)
    row = 0
    for category in range(len(CATEGORIES)):
        for instance in SPLIT_INSTANCES[split]:
            toy = build_toy(category, instance, seed)
            aims = _aim_points(seed, category, instance, views)
            for start in range(0, len(views), VIEWS_PER_BATCH):
                batch = views[start : start + VIEWS_PER_BATCH]
                images = render_views(toy, torch.tensor(batch[:, 1], dtype=torch.float32),
                                      torch.tensor(batch[:, 0], dtype=torch.float32),
                                      aims[start : start + VIEWS_PER_BATCH], grid.lightings)
                m = len(batch) * n_light
                keys = [(int(e), int(a), li) for e, a in batch for li in grid.lightings]
                noise_seeds = np.array([_key_seed(seed, category, instance, e, a, li, 0x7015E) for e, a, li in keys],
                                       dtype=np.uint64)
                dat[row : row + m] = finish(images.reshape(m, 2, size, size), noise_seeds, NOISE_STD)
                cat[row : row + m] = category
                info[row : row + m] = [(instance, (e - 30) // 5, a // 10, li) for e, a, li in keys]
                row += m
                if on_pairs is not None:
                    on_pairs(m)
    assert row == n
    return dat, cat, info


def file_prefix(split: str, grid: Grid) -> str:
    """``synthnorb-5x46789x9x18x6x2x96x96`` style prefix (instances, grid size, stereo, image size)."""
    instances = "".join(str(i) for i in SPLIT_INSTANCES[split])
    size = DEFAULT_RIG.size
    dims = f"5x{instances}x{len(grid.elevations)}x{len(grid.azimuths)}x{len(grid.lightings)}x2x{size}x{size}"
    return f"synthnorb-{dims}"


def _clear_old(out_dir: Path) -> None:
    """Remove a previous synthnorb render (any grid) so one directory holds one dataset."""
    for path in out_dir.iterdir():
        if path.name.startswith("synthnorb-") and (path.name.endswith((".mat", ".mat.gz")) or path.name == MANIFEST_NAME):
            path.unlink()


def write_dataset(
    out_dir: str | os.PathLike[str],
    grid: Grid,
    *,
    seed: int = 0,
    on_pairs: Callable[[int], None] | None = None,
) -> Path:
    """Render both splits into ``out_dir`` (six ``.mat`` files + manifest); returns ``out_dir``."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if any(p.name.startswith("smallnorb-") for p in out.iterdir()):
        raise ConfigError(f"{out} holds official smallNORB files; render synthnorb into another directory")
    _clear_old(out)
    files: dict[str, dict[str, object]] = {}
    for split in SPLITS:
        arrays = render_split(split, grid, seed=seed, on_pairs=on_pairs)
        for kind, array in zip(("dat", "cat", "info"), arrays):
            path = out / f"{file_prefix(split, grid)}-{split}-{kind}.mat"
            norb_format.write(path, array)
            files[path.name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        del arrays
    manifest = {
        "dataset": "synthnorb",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "azimuths_deg": list(grid.azimuths),
        "elevations_deg": list(grid.elevations),
        "lightings": list(grid.lightings),
        "pairs_per_split": grid.pairs_per_split,
        "split_instances": {k: list(v) for k, v in SPLIT_INSTANCES.items()},
        "categories": list(CATEGORIES),
        "archetypes": [list(names) for names in ARCHETYPES],
        "camera": asdict(DEFAULT_RIG),
        "row_order": "category, instance, elevation, azimuth, lighting (lighting fastest)",
        "info_columns": "instance, elevation index (deg-30)/5, azimuth/10, lighting",
        "files": files,
    }
    tmp = out / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST_NAME)
    return out
