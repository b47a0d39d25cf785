"""Run (or continue) a whole study: check every option, then each stage not yet finished, in order."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from capsrobust.data.prepared import PreparedData, prepare_data
from capsrobust.errors import ConfigError
from capsrobust.experiments.runs import finished_run
from capsrobust.experiments.viewpoint import CNN

from . import stages as stage_functions
from .budgets import StudyBudget, get_study_budget
from .estimate import estimate_stages, minutes
from .store import SPLITS, StageStore, stage_names

__all__ = ["StudyResult", "run_study"]


@dataclass
class StudyResult:
    """What :func:`run_study` did and where its stage outputs are (the report reads them from there)."""

    out: Path
    budget: StudyBudget
    seeds: list[int]
    dataset: str  # e.g. "synthnorb (stereo)"
    dataset_name: str
    mode: str
    dataset_checksum: str
    data_dir: str | None
    train_runs: str | None
    stages: dict[str, dict[str, Any]]  # stage -> its done.json record
    estimate_seconds: float
    seconds: float

    @property
    def store(self) -> StageStore:
        """The stage files of this study."""
        return StageStore(self.out)


def run_study(
    out_dir: str | os.PathLike[str],
    *,
    budget: str | StudyBudget = "quick",
    seeds: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    mode: str = "stereo",
    reuse: bool = False,
    train_runs: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> StudyResult:
    """Run (or continue) the study into ``out_dir`` and return where everything is.

    Args:
        budget: ``quick``, ``full`` or a :class:`StudyBudget` (tests use tiny ones).
        seeds: how many seeds (0, 1, ...); None: the budget's.
        data_dir: smallNORB directory; None: synthnorb from the cache.
        reuse: continue a study already in ``out_dir`` (same settings); without it such a directory is refused.
        train_runs: a directory holding finished full-split runs ``<capsule model>-seed<k>/`` and
            ``cnn-seed<k>/`` (e.g. ``results/train``), used read-only instead of training them.
    Raises: :class:`ConfigError` / :class:`~capsrobust.errors.CheckpointError` /
        :class:`~capsrobust.errors.DataError` (one line) before anything is written or overwritten.
    """
    started = time.perf_counter()
    chosen, seed_list, out, runs_dir = _checked_options(budget, seeds, mode, out_dir, train_runs)
    store = StageStore(out)
    data_dir_text = str(data_dir) if data_dir is not None else None
    settings = {"budget": chosen.settings(), "seeds": seed_list, "data_dir": data_dir_text, "mode": mode,
                "train_runs": str(runs_dir) if runs_dir else None}
    store.check_settings(settings, reuse)
    data = prepare_data(data_dir, "full", mode)  # a missing or foreign data directory fails here, before any write
    if runs_dir is not None:
        _check_borrowed_runs(runs_dir, chosen, seed_list, data, data_dir_text, log)
    store.save_settings(settings)
    context = stage_functions.StageContext(store=store, budget=chosen, data=data, data_dir=data_dir_text, mode=mode,
                                           train_runs=runs_dir, progress=progress, log=log)
    estimate = estimate_stages(chosen, seed_list, _split_sizes(data), data.in_channels, settings["train_runs"])
    records = _run_stages(context, seed_list, estimate)
    return StudyResult(out=out, budget=chosen, seeds=seed_list, dataset=data.describe(), dataset_name=data.dataset,
                       mode=mode, dataset_checksum=data.checksum, data_dir=data_dir_text,
                       train_runs=settings["train_runs"], stages=records, estimate_seconds=sum(estimate.values()),
                       seconds=time.perf_counter() - started)


def _checked_options(budget: str | StudyBudget, seeds: int | None, mode: str, out_dir: str | os.PathLike[str],
                     train_runs: str | os.PathLike[str] | None) -> tuple[StudyBudget, list[int], Path, Path | None]:
    """(budget, seeds, out, train-runs directory), every option checked before any work (one-line errors)."""
    chosen = get_study_budget(budget)
    chosen.validate()
    n_seeds = chosen.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {n_seeds}")
    if mode not in ("stereo", "mono"):
        raise ConfigError(f"unknown input mode {mode!r}; choose stereo or mono")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out must be a directory")
    runs_dir = Path(train_runs) if train_runs is not None else None
    if runs_dir is not None and not runs_dir.is_dir():
        raise ConfigError(f"--train-runs {runs_dir}: no such directory; pass one holding finished "
                          f"{chosen.capsule_model}-seed<k>/ and cnn-seed<k>/ runs (e.g. results/train)")
    return chosen, list(range(n_seeds)), out, runs_dir


def _check_borrowed_runs(runs_dir: Path, budget: StudyBudget, seeds: list[int], data: PreparedData,
                         data_dir: str | None, log: Callable[[str], None]) -> None:
    """Every borrowed full-split run checked (finished, the budget's training, same data) before the first
    minute of work."""
    for seed in seeds:
        for model in (budget.capsule_model, CNN):
            config = budget.train_config(model, data_dir=data_dir, mode=data.mode, seed=seed)
            finished_run(runs_dir / f"{model}-seed{seed}", config, data=data, log=log)


def _split_sizes(data: PreparedData) -> dict[str, int]:
    """Training images of each split the study trains on, and the full split's validation and test sizes."""
    from capsrobust.data.splits import split_indices

    sizes = {"full": len(data.indices.train), "validation": len(data.indices.validation),
             "test": len(data.indices.test_familiar)}
    for split in SPLITS:
        sizes[split] = len(split_indices(split, data.meta["training"], data.meta["testing"]).train)
    return sizes


def _run_stages(context: stage_functions.StageContext, seeds: list[int],
                estimate: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Every stage not finished yet, in order, each recorded when done; logs the time left as it goes."""
    store, log = context.store, context.log
    stages = stage_names(seeds)
    records: dict[str, dict[str, Any]] = {}
    left = sum(estimate[s] for s in stages if store.load(s) is None)
    log(f"study: {len(stages)} stages, {sum(store.load(s) is not None for s in stages)} already done; "
        f"estimate for the rest ~{minutes(left)} on this machine ({context.budget.name} budget, {len(seeds)} seed(s))")
    spent, estimated_done = 0.0, 0.0
    for stage in stages:
        record = store.load(stage)
        if record is not None:
            log(f"{stage}: done earlier ({record.get('seconds', 0):.0f} s), skipped")
            records[stage] = record
            continue
        stage_started = time.perf_counter()
        records[stage] = store.finish(stage, stage_functions.run_stage(context, stage, seeds), stage_started)
        spent += records[stage]["seconds"]
        estimated_done += estimate[stage]
        left -= estimate[stage]
        scale = spent / estimated_done if estimated_done > 0 else 1.0
        log(f"{stage}: {records[stage]['seconds']:.0f} s (estimated {estimate[stage]:.0f} s); "
            f"~{minutes(max(0.0, left) * scale)} left")
    return records
