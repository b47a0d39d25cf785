"""synthnorb: a procedural NORB-protocol dataset, the embedded default when smallNORB is absent.

Five categories in smallNORB's label order (animal, human, airplane, truck, car), ten parametric
toys each (instances 4, 6, 7, 8, 9 for training, 0, 1, 2, 3, 5 for testing), rendered by exact
ray casting against ellipsoids, boxes and cylinders with diffuse shading and self-shadows, from
stereo camera pairs on NORB's viewing grid (18 azimuths x 9 elevations) under six lightings,
96 x 96 grayscale -- written in smallNORB's binary format, so the same loader reads it.
Any azimuth (10° steps) and elevation (0°-85°, 5° steps) can be rendered, for viewpoint-distance
experiments that real smallNORB cannot support.

Modules: :mod:`.shapes` (primitives and ray intersection), :mod:`.toys` (the 50 parametric toys),
:mod:`.camera` (stereo pinhole rig), :mod:`.render` (shading, lightings, sensor noise),
:mod:`.dataset` (grid, splits, files, manifest), :mod:`.difficulty` (the k-NN difficulty table).

Example::

    from capsrobust.data.synthnorb import ensure_rendered, render_dataset
    data_dir = ensure_rendered()                       # full default set, rendered once into the cache
    tiny = render_dataset("/tmp/tiny", azimuths=[0, 180], elevations=[30], progress=False)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from capsrobust.data.synthnorb.dataset import (
    FULL_AZIMUTHS,
    FULL_ELEVATIONS,
    GENERATOR_VERSION,
    MANIFEST_NAME,
    SPLIT_INSTANCES,
    Grid,
    make_grid,
    write_dataset,
)

__all__ = [
    "FULL_AZIMUTHS",
    "FULL_ELEVATIONS",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "SECONDS_PER_PAIR",
    "SPLIT_INSTANCES",
    "default_dir",
    "ensure_rendered",
    "is_complete",
    "make_grid",
    "render_dataset",
]

#: Measured rendering cost on 2 shared CPU cores (see results/synthnorb/README.md); only used for
#: the time estimate in the first-use notice.
SECONDS_PER_PAIR = 0.006


def render_dataset(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    azimuths: Sequence[float] | None = None,
    elevations: Sequence[float] | None = None,
    lightings: Sequence[int] | None = None,
    progress: bool = True,
) -> Path:
    """Render synthnorb into ``out_dir`` and return it.

    Angles in degrees; ``None`` = smallNORB's grid (azimuths 0-340 step 20, elevations 30-70
    step 5, lightings 0-5). Writes six official-format ``.mat`` files and ``synthnorb-manifest.json``,
    replacing any synthnorb files already there. Same seed -> byte-identical files.
    Raises :class:`~capsrobust.errors.ConfigError` for an invalid grid.
    """
    grid = make_grid(azimuths, elevations, lightings)
    if not progress:
        return write_dataset(out_dir, grid, seed=seed)
    from capsrobust.progress import progress_bar

    with progress_bar(2 * grid.pairs_per_split, "synthnorb", unit="pair", every=grid.pairs_per_split) as bar:
        return write_dataset(out_dir, grid, seed=seed, on_pairs=bar.update)


def default_dir(cache_dir: str | os.PathLike[str] | None = None, *, seed: int = 0) -> Path:
    """Where :func:`ensure_rendered` keeps the full dataset for ``seed``: ``<cache>/synthnorb/v<version>-seed<seed>``."""
    if cache_dir is None:
        from capsrobust.paths import cache_dir as user_cache_dir

        cache_dir = user_cache_dir()
    return Path(cache_dir).expanduser() / "synthnorb" / f"v{GENERATOR_VERSION}-seed{seed}"


def is_complete(directory: str | os.PathLike[str], *, seed: int = 0, grid: Grid | None = None) -> bool:
    """True if ``directory`` holds a finished render of ``grid`` (default: the full grid) for ``seed``
    by this generator version: manifest present and every file it lists at its recorded size."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    grid = grid or make_grid()
    expected = (GENERATOR_VERSION, seed, list(grid.azimuths), list(grid.elevations), list(grid.lightings))
    found = (manifest.get("generator_version"), manifest.get("seed"), manifest.get("azimuths_deg"),
             manifest.get("elevations_deg"), manifest.get("lightings"))
    if found != expected:
        return False
    files = manifest.get("files", {})
    return len(files) == 6 and all(
        (directory / name).is_file() and (directory / name).stat().st_size == entry.get("bytes")
        for name, entry in files.items()
    )


def ensure_rendered(
    cache_dir: str | os.PathLike[str] | None = None, *, seed: int = 0, progress: bool = True, force: bool = False
) -> Path:
    """The directory of the full default synthnorb dataset, rendering it on first use (or if ``force``).

    ``cache_dir`` defaults to :func:`capsrobust.paths.cache_dir` (``$CAPSROBUST_CACHE_DIR`` overrides);
    the dataset lives in :func:`default_dir`. A first use prints one line on stderr and renders into
    a temporary sibling directory that is renamed into place when complete, so an interrupted
    render never leaves a half-written dataset behind (and a concurrent one is harmless).
    """
    target = default_dir(cache_dir, seed=seed)
    if is_complete(target, seed=seed) and not force:
        return target
    minutes = max(1, round(2 * make_grid().pairs_per_split * SECONDS_PER_PAIR / 60))
    print(f"synthnorb: rendering the default dataset into {target} (first use, ~{minutes} min)", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        render_dataset(tmp, seed=seed, progress=progress)
        if target.exists() and (force or not is_complete(target, seed=seed)):
            shutil.rmtree(target)  # a stale or damaged render (e.g. a partial grid written there by hand)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target, seed=seed):  # lost a race to a broken writer: surface it
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target
