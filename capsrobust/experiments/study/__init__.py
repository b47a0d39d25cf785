"""The whole study in one call: are matrix capsules more robust than a matched CNN?

:func:`run_study` answers the project's two questions on one dataset, per seed:

1. ``train-seed<k>``: the capsule net and the CNN trained normally on the ``full`` split (or taken,
   read-only, from finished runs elsewhere: ``train_runs``), and their clean test error;
2. ``match-seed<k>``: the clean-error-matched pair, as ``capsrobust attack`` uses it
   (``results/attacks/README.md``): the CNN stopped when its validation error first reaches the
   capsule net's best (``cnn-matched`` run, its ``matched.pt``). If the CNN never gets there, the
   capsule net is the better model on clean data; the pair is then the two ``best.pt`` and is
   reported as *not matched*;
3. ``attack-untargeted-seed<k>``, ``attack-targeted-seed<k>``: the robustness sweep of that pair
   (:func:`~capsrobust.evaluation.robustness.evaluate_robustness`) with the budget's attacks and ε
   grid, and its sanity checks and verdicts;
4. ``viewpoint-azimuth``, ``viewpoint-elevation``: Table 2 of the paper over all seeds
   (:func:`~capsrobust.experiments.viewpoint.viewpoint_experiment`).

The package, by job: :mod:`.budgets` (what sets a study's size, :data:`STUDY_BUDGETS`), :mod:`.store`
(the :class:`StageStore`, owner of ``OUT/stages/<stage>/`` and ``done.json``), :mod:`.estimate` (how
long each stage should take here), :mod:`.stages` (one function per stage) and :mod:`.run`
(:func:`run_study`). Everything a stage produces is written atomically into its directory,
``done.json`` last; a rerun (``reuse=True``) skips every stage with a ``done.json`` and resumes
interrupted trainings exactly, so a killed study continues where it stopped. The answers are decided
in :mod:`capsrobust.experiments.attack_answer` and :mod:`capsrobust.experiments.viewpoint_answer`; the
report (``REPORT.md``, ``report.html``) is written by :func:`capsrobust.reporting.study.write_study_report`.

Example::

    from capsrobust.experiments.study import run_study
    from capsrobust.reporting.study import write_study_report
    result = run_study("results/study-quick", budget="quick")
    write_study_report(result, "results/study-quick")
"""

from .budgets import STUDY_BUDGETS, StudyBudget, get_study_budget
from .run import StudyResult, run_study
from .stages import load_viewpoint_result
from .store import SPLITS, StageStore, load_stage, stage_names

__all__ = ["SPLITS", "STUDY_BUDGETS", "StageStore", "StudyBudget", "StudyResult", "get_study_budget", "load_stage",
           "load_viewpoint_result", "run_study", "stage_names"]
