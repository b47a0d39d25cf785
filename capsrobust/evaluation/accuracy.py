"""Class scores and error rates: kept importable from here; they live in :mod:`capsrobust.models.prediction`.

Training needs them for its validation error, so they sit below training (issue 15: no import runs
back up a layer). New code imports them from :mod:`capsrobust.models.prediction`.
"""

from __future__ import annotations

from capsrobust.models.prediction import error_rate, predict_scores

__all__ = ["error_rate", "predict_scores"]
