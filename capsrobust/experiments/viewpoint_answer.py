"""The study's viewpoint answers as data: per split, the novel-error difference of the ``validation``
protocol's matched pairs with its 95 % interval over test toys (from
:attr:`~capsrobust.experiments.viewpoint.ViewpointResult.differences`), the pairs, and whether every
pair is matched within :data:`~capsrobust.evaluation.viewpoint.MATCH_TOLERANCE`.

Reporting renders what :func:`viewpoint_answer` returns and decides nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from capsrobust.evaluation.viewpoint import VALIDATION, pair_table
from capsrobust.experiments.budgets import kind_of
from capsrobust.experiments.viewpoint import ViewpointResult

__all__ = ["ViewpointAnswer", "viewpoint_answer"]


@dataclass
class ViewpointAnswer:
    """One split's headline as data (``verdict`` None: the split has not run).

    ``verdict``: the ``matched`` / ``validation`` row of the differences table (capsules_novel_error,
    cnn_novel_error, difference, ci_low, ci_high, detectable, better); ``pairs``: the validation
    protocol's matched pairs (:func:`~capsrobust.evaluation.viewpoint.pair_table`) with ``target_set_by``,
    the kind of the weaker model (``capsule`` or ``cnn``); ``apart``: the seeds whose pair is more than
    the tolerance apart in familiar error.
    """

    split: str
    verdict: pd.Series | None = None
    pairs: pd.DataFrame | None = None
    apart: list[int] | None = None

    @property
    def better(self) -> str:
        """``capsules``, ``cnn`` or ``neither`` (also when not run)."""
        return "neither" if self.verdict is None else str(self.verdict["better"])

    @property
    def supported(self) -> bool:
        """Whether the split ran and every pair is matched."""
        return self.verdict is not None and not self.apart


def viewpoint_answer(viewpoint: ViewpointResult | None, split: str) -> ViewpointAnswer:
    """The answer for ``split`` from its viewpoint result (None: not run yet)."""
    if viewpoint is None:
        return ViewpointAnswer(split)
    differences = viewpoint.differences
    verdict = differences[(differences["comparison"] == "matched") & (differences["protocol"] == VALIDATION)].iloc[0]
    pairs = pair_table(viewpoint.per_seed)
    pairs = pairs[pairs["protocol"] == VALIDATION].assign(target_set_by=lambda t: t["weaker"].map(kind_of))
    apart = pairs[~pairs["matched"].astype(bool)]
    return ViewpointAnswer(split, verdict=verdict, pairs=pairs, apart=[int(s) for s in apart["seed"]])
