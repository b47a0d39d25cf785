"""The study's attack answer as data: robust accuracy of the capsule net against the matched CNN, pooled
over seeds, with 95 % bootstrap intervals and a verdict (:mod:`capsrobust.evaluation.robust_accuracy`),
and whether the matching and the sanity checks support it (:func:`attack_answer`).

Reads each finished attack stage's tables through the study's
:class:`~capsrobust.experiments.study.store.StageStore` (``per_image.csv``: the worst case per image and
eps); reporting renders what :func:`attack_answer` returns and decides nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from capsrobust.evaluation.robust_accuracy import RobustComparison, compare_robust_accuracy
from capsrobust.experiments.study.store import StageStore, attack_stage, match_stage
from capsrobust.experiments.viewpoint import CNN

if TYPE_CHECKING:
    from capsrobust.experiments.study import StudyResult

__all__ = ["NAMES", "AttackAnswer", "attack_answer", "attack_comparison", "attack_tables", "load_per_image"]

#: How verdicts name the two models.
NAMES = ("capsules", "the CNN")
#: Who is better, by the direction of a verdict (first: the capsule net).
BETTER = {1: "capsules", -1: "cnn", 0: "neither"}


@dataclass
class AttackAnswer:
    """The attack headline as data.

    ``comparison``: robust accuracy of both models with intervals (None: no per-image outcomes, or
    nothing attacked yet: ``ran`` False); ``better``: ``capsules``, ``cnn`` or ``neither`` (the
    verdict's direction); ``attacks`` and ``n``: the untargeted attacks and images per seed;
    ``matched``: per attacked seed, whether the pair is clean-error-matched; ``suspect``: the sweeps
    whose sanity verdict is not HOLDS (``<model> seed <k> (<mode>)``); ``failed``: what failed, once
    per check and attack; ``supported``: matched in every seed and nothing suspect.
    """

    ran: bool
    comparison: RobustComparison | None = None
    better: str = "neither"
    attacks: list[str] = field(default_factory=list)
    n: int = 0
    matched: list[bool] = field(default_factory=list)
    suspect: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        return self.comparison is not None and all(self.matched) and not self.suspect


def attack_tables(store: StageStore, seeds: list[int], stages: dict[str, dict],
                  mode: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sweeps, checks) of every finished attack stage of ``mode``, with a ``seed`` column."""
    sweeps, checks = [], []
    for seed in seeds:
        stage = attack_stage(mode, seed)
        record = stages.get(stage)
        if not record or "files" not in record:
            continue
        sweeps.append(store.read_table(stage, "sweep.csv").assign(seed=seed))
        checks.append(store.read_table(stage, "checks.csv").assign(seed=seed))
    if not sweeps:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(sweeps, ignore_index=True), pd.concat(checks, ignore_index=True)


def load_per_image(store: StageStore, seeds: list[int], stages: dict[str, dict]) -> pd.DataFrame:
    """Every finished untargeted attack stage's per-image outcomes, with a ``seed`` column (empty if none)."""
    frames = []
    for seed in seeds:
        stage = attack_stage("untargeted", seed)
        if "per_image.csv" in stages.get(stage, {}).get("files", []):
            frames.append(store.read_table(stage, "per_image.csv").assign(seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def attack_comparison(result: "StudyResult", *, seed: int = 0) -> RobustComparison | None:
    """The capsule net (first) against the CNN on the same attacked images, all seeds pooled; None when no
    untargeted attack stage has per-image outcomes (not run yet, or run before they were kept)."""
    per_image = load_per_image(result.store, result.seeds, result.stages)
    if per_image.empty:
        return None
    return compare_robust_accuracy(per_image, result.budget.capsule_model, CNN, names=NAMES, seed=seed)


def _what_failed(check: str, detail: str) -> str:
    """``check: attack`` where the detail opens with an attack label (``bim: drops at ...``), else ``check``."""
    head = detail.split(":")[0]
    return f"{check}: {head}" if ":" in detail and " " not in head else check


def _suspect_and_failed(result: "StudyResult", untargeted_checks: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(sweeps whose sanity verdict is not HOLDS, what failed once per check and attack) over both modes."""
    _, targeted_checks = attack_tables(result.store, result.seeds, result.stages, "targeted")
    every_check = pd.concat([untargeted_checks.assign(sweep="untargeted"), targeted_checks.assign(sweep="targeted")],
                            ignore_index=True)
    verdicts = every_check[every_check["check"] == "verdict"]
    suspect = verdicts[verdicts["status"] != "HOLDS"]
    failed = every_check[(every_check["check"] != "verdict") & (every_check["status"] == "FAIL")]
    return ([f"{r.model} seed {r.seed} ({r.sweep})" for r in suspect.itertuples(index=False)],
            list(dict.fromkeys(_what_failed(r.check, str(r.detail)) for r in failed.itertuples(index=False))))


def attack_answer(result: "StudyResult") -> AttackAnswer:
    """Who is more robust (with intervals), on which attacks and images, and whether matching and the sanity
    checks of every seed and mode support it."""
    sweep, checks = attack_tables(result.store, result.seeds, result.stages, "untargeted")
    if sweep.empty:
        return AttackAnswer(ran=False)
    comparison = attack_comparison(result)
    if comparison is None:
        return AttackAnswer(ran=True)
    suspect, failed = _suspect_and_failed(result, checks)
    return AttackAnswer(
        ran=True, comparison=comparison, better=BETTER[comparison.verdict.direction],
        attacks=list(dict.fromkeys(sweep[sweep["attack"] != "worst-case"]["attack"])), n=int(sweep["n"].iloc[0]),
        matched=[bool(result.stages.get(match_stage(s), {}).get("matched")) for s in sorted(set(sweep["seed"]))],
        suspect=suspect, failed=failed)
