"""What a synthnorb render is beyond its bytes: its recipe (generator version, seed, grid).

Real smallNORB is a fixed set of files, so data is identified by its bytes. A synthnorb dataset is
a *render*: the same recipe rendered on two machines gives the same images, but not always the
same bytes -- generator 1.0 rounded a pixel in ten million to another grey level on another CPU
(the renderer is CPU-independent since; see :mod:`.numerics`). So synthnorb data is identified by
its recipe, and two renders of one recipe count as the same data when they agree within
:data:`~.dataset.RENDER_TOLERANCE`.

* :func:`read_recipe` -- the recipe of a directory, from its manifest, only if the files are
  byte for byte the ones the manifest lists (an edited or half-copied render has none).
* :func:`checkpoint_recipe` -- the recipe a checkpoint was trained on: recorded
  (``dataset_recipe``), or derived for checkpoints that record only a checksum: trained on the
  default data (no ``--data-dir``) means generator 1.0, seed 0, full grid.
* :func:`compare_with_render` -- re-render one view of every toy and compare it with the files:
  the check that the bytes here really are a render of their recipe.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from capsrobust.data.synthnorb.dataset import (
    FULL_AZIMUTHS,
    FULL_ELEVATIONS,
    MANIFEST_NAME,
    RENDER_TOLERANCE,
    SPLITS,
    make_grid,
    render_split,
)
from capsrobust.data.synthnorb.render import LIGHTINGS
from capsrobust.errors import DataError

__all__ = ["LEGACY_VERSION", "TOLERANCE_TEXT", "Agreement", "Recipe", "checkpoint_recipe", "compare_with_render", "read_recipe"]

#: The generator version of checkpoints that record no recipe: every synthnorb checkpoint written
#: before recipes were recorded was trained on 1.0, the only version there was.
LEGACY_VERSION = "1.0"

#: RENDER_TOLERANCE in words, for messages.
TOLERANCE_TEXT = (f"off by at most {RENDER_TOLERANCE['max_grey']} grey level on at most "
                  f"1 pixel in {round(1 / RENDER_TOLERANCE['max_fraction']):,}")

_CACHE_DIR_NAME = re.compile(r"v(?P<version>\d+(?:\.\d+)*)-seed(?P<seed>\d+)")


@dataclass(frozen=True)
class Recipe:
    """Generator version, seed and grid (azimuths and elevations in degrees, lighting indices)."""

    generator_version: str
    seed: int
    azimuths: tuple[int, ...]
    elevations: tuple[int, ...]
    lightings: tuple[int, ...]

    @classmethod
    def full_grid(cls, generator_version: str, seed: int) -> "Recipe":
        """The default dataset's recipe: smallNORB's 18 azimuths x 9 elevations x 6 lightings."""
        return cls(generator_version, seed, FULL_AZIMUTHS, FULL_ELEVATIONS, tuple(range(len(LIGHTINGS))))

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | None) -> "Recipe | None":
        """From a manifest or :meth:`as_dict`; None if a field is missing or malformed."""
        if not isinstance(record, Mapping):
            return None
        try:
            version, seed = record["generator_version"], record["seed"]
            grid = [tuple(int(v) for v in record[key]) for key in ("azimuths_deg", "elevations_deg", "lightings")]
        except (KeyError, TypeError, ValueError):
            return None
        if not isinstance(version, str) or isinstance(seed, bool) or not isinstance(seed, int):
            return None
        return cls(version, seed, *grid)

    def as_dict(self) -> dict[str, Any]:
        """The manifest's names for the fields (plain JSON types, safe in a checkpoint)."""
        return {"generator_version": self.generator_version, "seed": self.seed, "azimuths_deg": list(self.azimuths),
                "elevations_deg": list(self.elevations), "lightings": list(self.lightings)}

    def describe(self) -> str:
        """E.g. ``generator 1.0, seed 0, full grid`` or ``..., grid of 2 azimuths x 1 elevations x 2 lightings``."""
        full = (self.azimuths, self.elevations, self.lightings) == (FULL_AZIMUTHS, FULL_ELEVATIONS,
                                                                   tuple(range(len(LIGHTINGS))))
        grid = "full grid" if full else (f"grid of {len(self.azimuths)} azimuths x {len(self.elevations)} elevations"
                                         f" x {len(self.lightings)} lightings")
        return f"generator {self.generator_version}, seed {self.seed}, {grid}"


def read_recipe(directory: str | os.PathLike[str], checksums: Mapping[str, str]) -> Recipe | None:
    """The recipe in ``directory``'s manifest if its files are exactly those loaded, else None.

    ``checksums``: SHA-256 of each loaded file's uncompressed content by uncompressed file name
    (:attr:`~capsrobust.data.smallnorb.NorbSplit.checksums` of both splits). The manifest lists
    each file it rendered with its SHA-256; a file changed, added or missing since means the
    bytes are not (only) that render, so no recipe is vouched for.
    """
    try:
        manifest = json.loads((Path(directory) / MANIFEST_NAME).read_text())
        listed = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if listed != dict(checksums):
        return None
    return Recipe.from_dict(manifest)


def checkpoint_recipe(checkpoint: Mapping[str, Any]) -> Recipe | None:
    """The synthnorb recipe ``checkpoint`` was trained on, or None if it cannot be known.

    A recorded ``dataset_recipe`` wins. Otherwise it is derived from the training configuration:
    no ``data_dir`` means the default dataset, which :func:`~capsrobust.data.synthnorb.ensure_rendered`
    renders with seed 0 on the full grid -- by generator :data:`LEGACY_VERSION`, since checkpoints
    without a recorded recipe predate any other version; a ``data_dir`` that is such a cache
    directory (``.../synthnorb/v<version>-seed<seed>``) names its version and seed in its path.
    Any other directory held a render of unknown grid: None.
    """
    if checkpoint.get("dataset") != "synthnorb":
        return None
    if "dataset_recipe" in checkpoint:
        return Recipe.from_dict(checkpoint["dataset_recipe"])
    config = checkpoint.get("config")
    if not isinstance(config, Mapping) or "data_dir" not in config:
        return None
    data_dir = config["data_dir"]
    if data_dir is None:
        return Recipe.full_grid(LEGACY_VERSION, 0)
    path = Path(str(data_dir))
    match = _CACHE_DIR_NAME.fullmatch(path.name)
    if match and path.parent.name == "synthnorb":
        return Recipe.full_grid(match["version"], int(match["seed"]))
    return None


@dataclass(frozen=True)
class Agreement:
    """How the files compare with a fresh render of a sample: pixels compared, how many differ, by how much."""

    pixels: int
    differing: int
    max_grey: int

    def within_tolerance(self) -> bool:
        return self.max_grey <= RENDER_TOLERANCE["max_grey"] and \
            self.differing <= RENDER_TOLERANCE["max_fraction"] * self.pixels

    def describe(self) -> str:
        """E.g. ``1 of 921,600 pixels off by 1 grey level`` or ``all 921,600 pixels identical``."""
        if not self.differing:
            return f"all {self.pixels:,} pixels identical"
        by = "1 grey level" if self.max_grey == 1 else f"up to {self.max_grey} grey levels"
        return f"{self.differing:,} of {self.pixels:,} pixels off by {by}"


def compare_with_render(directory: str | os.PathLike[str], recipe: Recipe) -> Agreement:
    """Render one view (the grid's middle azimuth and elevation, one lighting) of all 50 toys and
    compare it with the matching rows of the files in ``directory``. About a second."""
    from capsrobust.data.smallnorb import load_split

    azimuth = recipe.azimuths[len(recipe.azimuths) // 2]
    elevation = recipe.elevations[len(recipe.elevations) // 2]
    lighting = recipe.lightings[len(recipe.lightings) // 2]
    pixels = differing = max_grey = 0
    for split in SPLITS:
        fresh, cat, info = render_split(split, make_grid([azimuth], [elevation], [lighting]), seed=recipe.seed)
        stored = load_split(directory, split, "stereo")
        meta = stored.meta
        at_view = meta.index[(meta["azimuth"] == azimuth) & (meta["elevation"] == elevation)
                             & (meta["lighting"] == lighting)]
        rows = {(int(meta.at[i, "label"]), int(meta.at[i, "instance"])): i for i in at_view}
        for k in range(len(fresh)):
            row = rows.get((int(cat[k]), int(info[k, 0])))
            if row is None:
                raise DataError(f"{directory}: no {split} image of toy {int(info[k, 0])} (category {int(cat[k])}) at "
                                f"azimuth {azimuth}, elevation {elevation}, lighting {lighting}, which its manifest "
                                "lists; re-render it with `capsrobust data render`")
            diff = np.abs(np.asarray(stored.images[row], dtype=np.int16) - fresh[k].astype(np.int16))
            pixels += diff.size
            differing += int(np.count_nonzero(diff))
            max_grey = max(max_grey, int(diff.max()))
    return Agreement(pixels=pixels, differing=differing, max_grey=max_grey)
