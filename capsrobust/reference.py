"""The paper's smallNORB numbers, as data, in one place (Hinton, Sabour & Frosst, ICLR 2018).

Every table that shows one of these numbers shows it in its own table, labelled smallNORB and
with :data:`SOURCE`; a synthnorb number is never put beside it as if it were comparable. Errors
and accuracies are fractions. Read from ``../shared/REFERENCE.md`` §3, §5 and §6, which cite the
paper (OpenReview HJWLfGWRb).
"""

from __future__ import annotations

__all__ = ["PAPER_FIG3", "PAPER_TABLE2", "PAPER_TEST_ERROR", "SOURCE"]

#: Citation shown under every table of paper numbers.
SOURCE = "Hinton, Sabour & Frosst, \"Matrix capsules with EM routing\", ICLR 2018 (OpenReview HJWLfGWRb)"

#: Test error on smallNORB (§5; centre crop unless noted): the big capsule net (A=B=C=D=32, 3 iterations),
#: the small one (A=64, B=8, C=D=16) and the baseline CNN (~4.2M parameters).
PAPER_TEST_ERROR: dict[str, float] = {"capsules": 0.018, "capsules-small": 0.022, "cnn": 0.052}

#: Table 2, viewpoint generalisation at matched familiar error: (split, test views) -> (cnn, capsules) error.
PAPER_TABLE2: dict[tuple[str, str], tuple[float, float]] = {
    ("azimuth", "familiar"): (0.037, 0.037),
    ("azimuth", "novel"): (0.200, 0.135),
    ("elevation", "familiar"): (0.043, 0.043),
    ("elevation", "novel"): (0.178, 0.123),
}

#: Fig. 3, white-box untargeted attacks, read off the plot (approximate): (attack, eps in the paper's
#: per-image-standardised units) -> (cnn, capsules) *accuracy*. The paper's targeted curve averages
#: over all 5 classes, the true one included, so it is not comparable with our 4-wrong-class average.
PAPER_FIG3: dict[tuple[str, float], tuple[float, float]] = {
    ("fgsm", 0.2): (0.15, 0.83),
    ("bim", 0.5): (0.05, 0.55),
}
