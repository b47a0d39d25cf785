"""The study's stage store: the one owner of ``OUT/stages/<stage>/``, each stage's ``done.json`` and ``OUT/study.json``.

A stage writes its tables into its own directory and its record (``done.json``) last, each atomically
(:mod:`capsrobust.files`): a record's presence means the stage finished. The stage names live here too
(:func:`stage_names`), so experiments and reporting find a stage's files through a :class:`StageStore`
and never rebuild its paths.

Example::

    store = StageStore("results/study")
    record = store.load(attack_stage("untargeted", 0))  # None until the stage finished
    sweep = store.read_table(attack_stage("untargeted", 0), "sweep.csv")
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from capsrobust.errors import ConfigError
from capsrobust.files import write_csv, write_json

__all__ = ["DONE", "SETTINGS", "SPLITS", "StageStore", "attack_stage", "load_stage", "match_stage", "stage_names",
           "train_stage", "viewpoint_stage"]

#: The viewpoint protocols the study runs, in report order.
SPLITS = ("azimuth", "elevation")
#: The file a stage writes last: its presence means the stage is finished.
DONE = "done.json"
#: The file that records a study's settings; a rerun must use the same.
SETTINGS = "study.json"
#: The settings a rerun must repeat, in the order a mismatch is reported.
SETTING_KEYS = ("budget", "seeds", "data_dir", "mode", "train_runs")


def train_stage(seed: int) -> str:
    """The stage training both models of ``seed`` on the full split."""
    return f"train-seed{seed}"


def match_stage(seed: int) -> str:
    """The stage making the clean-error-matched pair of ``seed``."""
    return f"match-seed{seed}"


def attack_stage(mode: str, seed: int) -> str:
    """The stage attacking the matched pair of ``seed`` (``mode``: ``untargeted`` or ``targeted``)."""
    return f"attack-{mode}-seed{seed}"


def viewpoint_stage(split: str) -> str:
    """The stage running Table 2 on ``split`` over every seed."""
    return f"viewpoint-{split}"


def stage_names(seeds: Sequence[int]) -> list[str]:
    """Every stage of a study over ``seeds``, in the order they run."""
    names = []
    for seed in seeds:
        names += [train_stage(seed), match_stage(seed), attack_stage("untargeted", seed),
                  attack_stage("targeted", seed)]
    return names + [viewpoint_stage(split) for split in SPLITS]


class StageStore:
    """The stage files of the study in ``out``: where each lives, reading them, and writing them atomically."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)

    def directory(self, stage: str) -> Path:
        """``OUT/stages/<stage>/``, where every file of ``stage`` lives."""
        return self.out / "stages" / stage

    def path(self, stage: str, name: str) -> Path:
        """The file ``name`` of ``stage``."""
        return self.directory(stage) / name

    def load(self, stage: str) -> dict[str, Any] | None:
        """The ``done.json`` record of a finished stage, or None when it has not finished."""
        path = self.path(stage, DONE)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None  # a torn record cannot happen (atomic writes); a hand-edited one is redone

    def finish(self, stage: str, record: dict[str, Any], started: float) -> dict[str, Any]:
        """Write ``record`` (with the stage's name and seconds since ``started``) as its ``done.json``, last."""
        record = {"stage": stage, "seconds": round(time.perf_counter() - started, 2), **record}
        write_json(self.path(stage, DONE), record)
        return record

    def write_table(self, stage: str, name: str, table: pd.DataFrame) -> Path:
        """``table`` as the CSV file ``name`` of ``stage``, atomically."""
        return write_csv(table, self.path(stage, name))

    def read_table(self, stage: str, name: str) -> pd.DataFrame:
        """The CSV file ``name`` of ``stage``."""
        return pd.read_csv(self.path(stage, name))

    def check_settings(self, settings: dict[str, Any], reuse: bool) -> None:
        """Refuse to mix two studies in one directory: same settings with ``reuse``, none without."""
        path = self.out / SETTINGS
        if not path.exists():
            return
        if not reuse:
            raise ConfigError(f"{self.out} already holds a study; pass --reuse to continue it (finished stages are "
                              "kept) or choose another --out")
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise ConfigError(f"{path}: unreadable; choose another --out") from None
        normalised = json.loads(json.dumps(settings))  # tuples -> lists, as saved
        for key in SETTING_KEYS:
            if saved.get(key) != normalised[key]:
                what = key.replace("_", "-")
                raise ConfigError(f"{self.out} holds a study with other {what} ({saved.get(key)!r} there); rerun it "
                                  "with the same options or choose another --out")

    def save_settings(self, settings: dict[str, Any]) -> Path:
        """Record the study's settings (``study.json``), which a rerun must repeat."""
        return write_json(self.out / SETTINGS, settings)


def load_stage(out: str | os.PathLike[str], stage: str) -> dict[str, Any] | None:
    """The ``done.json`` record of a finished stage of the study in ``out``, or None (:meth:`StageStore.load`)."""
    return StageStore(out).load(stage)
