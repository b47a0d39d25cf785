"""Measure synthnorb's rendering speed on a subset and extrapolate to the full dataset.

Rendering cost is linear in the number of pairs (every toy, view and lighting costs about the
same), so a timed subset that covers all 50 toys predicts the full render well. CPU time is
reported beside wall time: on a machine shared with other jobs, wall time overstates the cost.
"""

from __future__ import annotations

import time

import pandas as pd

from capsrobust.data.synthnorb.dataset import SPLITS, Grid, make_grid, render_split

__all__ = ["bench_render"]


def bench_render(grid: Grid | None = None, *, seed: int = 0) -> pd.DataFrame:
    """Render both splits of ``grid`` (default: 4 azimuths x 2 elevations x 6 lightings) in memory, timed.

    Returns one row: ``pairs, wall_s, cpu_s, pairs_per_s`` (wall), ``cpu_ms_per_pair`` and
    ``full_render_min`` (the 2 x 24,300 pairs of the full grid at the measured wall rate; writing
    the files adds a few seconds).
    """
    grid = grid or make_grid([0, 90, 180, 270], [30, 70])
    wall, cpu = time.perf_counter(), time.process_time()
    pairs = 0
    for split in SPLITS:
        dat, _, _ = render_split(split, grid, seed=seed)
        pairs += len(dat)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    full_pairs = 2 * make_grid().pairs_per_split
    return pd.DataFrame([{
        "pairs": pairs,
        "wall_s": wall,
        "cpu_s": cpu,
        "pairs_per_s": pairs / wall,
        "cpu_ms_per_pair": 1000 * cpu / pairs,
        "full_render_min": full_pairs / (pairs / wall) / 60,
    }])
