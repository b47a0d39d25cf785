"""Viewpoint generalisation (paper §5.1, Table 2): distances, binning, the matching rule, kept
checkpoints, extrapolation views and the `capsrobust viewpoint-split` command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from capsrobust.training import loop as training
from capsrobust.training.checkpoints import load_checkpoint
from capsrobust.data.prepared import prepare_data
from capsrobust.data.synthnorb import is_complete, make_grid, render_dataset
from capsrobust.errors import CheckpointError, ConfigError, DataError
from capsrobust.evaluation.viewpoint import (MATCH_TOLERANCE, PAPER, VALIDATION, ViewTestSet,
                                             angular_distance_to_familiar, common_levels, curve_difference,
                                             difference_interval, error_by_distance, lighting_halves,
                                             matched_difference, novel_at_levels, per_toy_counts, select_two_way,
                                             smoothed, toy_bootstrap_weights, toy_index, weighted_error)
from capsrobust.experiments.viewpoint import ensure_extrapolation_set, get_budget, viewpoint_experiment
from capsrobust.paths import CACHE_ENV
from capsrobust.training.loop import TrainConfig, TrainingInterrupted, model_from_checkpoint, train
from capsrobust_cli.main import cli
from tests.conftest import write_dataset
from tests.test_cli_data import assert_one_line_error

# Info azimuths 0, 2 (0°, 20°: familiar) and 10, 18 (100°, 180°: novel); elevation indices 0, 4 (30°, 50°).
TINY_VIEWS = {"azimuths": (0, 2, 10, 18), "elevations": (0, 4)}
TINY_BUDGET = ["--budget", "quick", "--seeds", "1", "--no-extrapolation", "--steps", "4", "--batch-size", "8",
               "--eval-every", "2", "--iterations", "1", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("viewpoint") / "data", size=16, **TINY_VIEWS)


@pytest.fixture(scope="module")
def first_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One CLI run of the azimuth experiment on the tiny dataset: (output directory, output)."""
    out = tmp_path_factory.mktemp("viewpoint-out") / "azimuth"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("viewpoint-cache")))
        result = CliRunner().invoke(cli, ["viewpoint-split", "azimuth", "--data-dir", str(data_dir), "--out", str(out),
                                          *TINY_BUDGET])
    assert result.exit_code == 0, result.output
    return out, result.output


def meta(**columns: list[int]) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame({"azimuth": [0] * n, "elevation": [30] * n, **columns})


# ----------------------------------------------------------------------------------------------
# Distances and bins


def test_azimuth_distance_is_circular_to_the_nearest_familiar_azimuth() -> None:
    azimuths = [0, 40, 60, 100, 170, 180, 280, 300, 340, 350, 10]
    distances = angular_distance_to_familiar(meta(azimuth=azimuths), "azimuth")
    # Familiar: 300, 320, 340, 0, 20, 40. 180° is 120° from 300°; 350° is 10° from 0° across the wrap.
    assert distances.tolist() == [0, 0, 20, 60, 130, 120, 20, 0, 0, 10, 10]


def test_elevation_distance_is_to_the_nearest_familiar_elevation() -> None:
    distances = angular_distance_to_familiar(meta(elevation=[30, 35, 40, 45, 70, 0, 25, 85]), "elevation")
    assert distances.tolist() == [0, 0, 0, 5, 30, 30, 5, 45]


def test_distance_needs_a_split_with_novel_views() -> None:
    with pytest.raises(ConfigError, match="azimuth or elevation"):
        angular_distance_to_familiar(meta(azimuth=[0]), "full")


def test_error_by_distance_counts_and_errors_per_bin() -> None:
    distances = np.array([0, 0, 10, 20, 35, 60, 79])
    labels = np.array([0, 1, 2, 3, 4, 0, 1])
    predictions = np.array([0, 1, 0, 3, 0, 1, 1])  # wrong: rows 2 (bin 0), 4 (bin 20), 5 (bin 60)
    table = error_by_distance(predictions, labels, distances, bin_width=20)
    assert table["distance_from"].tolist() == [0, 20, 60]  # the empty 40-60 bin is absent
    assert table["distance_to"].tolist() == [20, 40, 80]
    assert table["n"].tolist() == [3, 2, 2]
    assert table["error"].tolist() == pytest.approx([1 / 3, 1 / 2, 1 / 2])
    assert table["mean_distance"].tolist() == pytest.approx([10 / 3, 27.5, 69.5])


# ----------------------------------------------------------------------------------------------
# The matching rule: the weaker model sets the target, both ways


def curve(steps: list[int], errors: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"step": steps, "familiar_error": errors})


def test_smoothing_averages_each_evaluation_with_its_neighbours() -> None:
    assert smoothed([0.5, 0.3, 0.1, 0.3, 0.5]).tolist() == pytest.approx([0.4, 0.3, 0.7 / 3, 0.3, 0.4])
    assert smoothed([0.5, np.nan, 0.1], window=3).tolist() == pytest.approx([0.5, 0.3, 0.1])  # NaNs skipped
    assert smoothed([0.2, 0.1], window=1).tolist() == [0.2, 0.1]


def test_the_weaker_model_sets_the_target_and_the_stronger_is_taken_nearest_it() -> None:
    # "a" reaches 0.20 smoothed at best; "b" gets down to 0.05: "a" is weaker, "b" is taken where it is nearest 0.20.
    a = curve([10, 20, 30, 40], [0.40, 0.22, 0.18, 0.20])  # smoothed: 0.31, 0.2667, 0.20, 0.19 -> best 0.19 at 40
    b = curve([10, 20, 30, 40], [0.50, 0.30, 0.21, 0.05])  # nearest 0.19: step 30 (0.21)
    choice = select_two_way({"a": a, "b": b})
    assert choice["weaker"] == "a" and choice["target"] == pytest.approx(0.19)
    assert choice["picks"]["a"] == {"step": 40, "familiar_error": 0.20, "smoothed_best": pytest.approx(0.19),
                                    "role": "target"}
    assert choice["picks"]["b"]["step"] == 30 and choice["picks"]["b"]["role"] == "matched"
    assert choice["gap"] == pytest.approx(0.21 - 0.20) and choice["matched"] is True


def test_matching_works_in_either_direction() -> None:
    a = curve([1, 2, 3], [0.30, 0.10, 0.08])
    b = curve([1, 2, 3], [0.40, 0.35, 0.30])
    assert select_two_way({"a": a, "b": b})["weaker"] == "b"
    assert select_two_way({"b": b, "a": a})["weaker"] == "b"
    assert select_two_way({"a": a, "b": b})["picks"]["a"]["step"] == 1  # 0.30 is nearest b's smoothed best 0.325


def test_one_noisy_dip_does_not_set_the_target() -> None:
    weak = curve([1, 2, 3, 4, 5], [0.40, 0.40, 0.10, 0.40, 0.40])  # one lucky evaluation at 0.10
    strong = curve([1, 2, 3, 4, 5], [0.50, 0.30, 0.20, 0.12, 0.10])
    choice = select_two_way({"weak": weak, "strong": strong})
    assert choice["weaker"] == "weak" and choice["target"] == pytest.approx(0.30)  # not 0.10
    assert choice["picks"]["strong"]["step"] == 2


def test_a_pair_further_apart_than_one_point_is_not_matched() -> None:
    weak = curve([1, 2], [0.30, 0.30])
    strong = curve([1, 2], [0.10, 0.05])  # never near 0.30
    choice = select_two_way({"weak": weak, "strong": strong})
    assert choice["picks"]["strong"]["step"] == 1 and choice["gap"] == pytest.approx(-0.20)
    assert choice["matched"] is False
    close = select_two_way({"weak": weak, "strong": curve([1, 2], [0.30 - MATCH_TOLERANCE, 0.05])})
    assert close["matched"] is True  # exactly one point apart still counts


def test_matching_needs_exactly_two_models_with_errors() -> None:
    with pytest.raises(ValueError, match="two models"):
        select_two_way({"a": curve([1], [0.1])})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        select_two_way({"a": curve([1], [np.nan]), "b": curve([1], [0.1])})


# ----------------------------------------------------------------------------------------------
# The toy bootstrap and the curves


def test_lighting_halves_alternate_and_need_two_lightings() -> None:
    match, report = lighting_halves([5, 0, 1, 2, 3, 4, 0])
    assert match.tolist() == [0, 2, 4] and report.tolist() == [1, 3, 5]
    assert [h.tolist() for h in lighting_halves([3, 0])] == [[0], [3]]
    with pytest.raises(DataError, match="at least two lightings"):
        lighting_halves([2, 2])


def test_toys_are_class_instance_pairs_and_counts_are_per_toy() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0])
    instances = np.array([4, 5, 4, 4, 5, 4])  # toy (0, 4) twice; (1, 4) is another toy than (0, 4)
    codes, classes = toy_index(labels, instances)
    assert codes.tolist() == [0, 1, 2, 2, 3, 0] and classes.tolist() == [0, 0, 1, 1]
    wrong = np.array([[1, 0, 1, 0, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=bool)  # two checkpoints
    counts, n = per_toy_counts(wrong, codes, 4, mask=np.array([True, True, True, True, True, False]))
    assert n.tolist() == [1, 1, 2, 1]
    assert counts.tolist() == [[1, 0, 1, 1], [0, 0, 0, 0]]


def test_bootstrap_resamples_toys_within_their_class() -> None:
    classes = np.array([0, 0, 0, 1, 1, 2])
    weights = toy_bootstrap_weights(classes, draws=500, seed=3)
    assert weights.shape == (500, 6)
    assert (weights[:, :3].sum(1) == 3).all() and (weights[:, 3:5].sum(1) == 2).all() and (weights[:, 5] == 1).all()
    assert weights[:, 0].mean() == pytest.approx(1.0, abs=0.15)  # each toy once on average
    assert (weights == toy_bootstrap_weights(classes, draws=500, seed=3)).all()  # seeded


def test_weighted_error_pools_images_of_the_resampled_toys() -> None:
    wrong, n = np.array([1.0, 4.0, 0.0]), np.array([2.0, 4.0, 4.0])
    weights = np.array([[1, 1, 1], [2, 0, 1], [0, 0, 0]])
    errors = weighted_error(wrong, n, weights)
    assert errors[0] == pytest.approx(5 / 10) and errors[1] == pytest.approx(2 / 8) and np.isnan(errors[2])
    assert weighted_error(np.stack([wrong, 0 * wrong]), n, weights).shape == (3, 2)  # (B, K)


def test_difference_interval_calls_a_direction_only_when_zero_is_outside() -> None:
    rng = np.random.default_rng(0)
    lower = difference_interval(-0.05, rng.normal(-0.05, 0.01, 4000))
    assert lower["better"] == "first" and lower["ci_high"] < 0 < -lower["ci_low"]
    assert lower["se"] == pytest.approx(0.01, rel=0.1) and lower["detectable"] == pytest.approx(2.8 * lower["se"], rel=1e-3)
    assert difference_interval(0.05, rng.normal(0.05, 0.01, 4000))["better"] == "second"
    assert difference_interval(0.01, rng.normal(0.01, 0.02, 4000))["better"] == "neither"


def test_matched_difference_is_the_mean_over_seeds_with_a_toy_interval() -> None:
    # Two toys; seed 0: capsules 2/10 wrong vs cnn 6/10 on both toys alike, seed 1 the same.
    caps = [(np.array([1.0, 1.0]), np.array([5.0, 5.0]))] * 2
    cnn = [(np.array([3.0, 3.0]), np.array([5.0, 5.0]))] * 2
    result = matched_difference(caps, cnn, toy_bootstrap_weights(np.array([0, 0]), draws=200))
    assert result["first_error"] == pytest.approx(0.2) and result["second_error"] == pytest.approx(0.6)
    assert result["difference"] == pytest.approx(-0.4) and result["better"] == "first"
    assert result["ci_low"] == pytest.approx(-0.4) and result["ci_high"] == pytest.approx(-0.4)  # toys agree
    # One toy carries the whole difference: the interval widens to hold both extremes.
    caps = [(np.array([0.0, 5.0]), np.array([5.0, 5.0]))]
    cnn = [(np.array([5.0, 5.0]), np.array([5.0, 5.0]))]
    spread = matched_difference(caps, cnn, toy_bootstrap_weights(np.array([0, 0]), draws=400))
    assert spread["ci_low"] == pytest.approx(-1.0) and spread["ci_high"] == pytest.approx(0.0)
    assert spread["better"] == "neither"


def test_novel_error_is_interpolated_at_familiar_levels_along_the_curve() -> None:
    familiar = np.array([0.6, 0.2, 0.4, 0.1])  # training order is not familiar order
    novel = np.array([0.8, 0.4, 0.6, 0.3])
    assert novel_at_levels(familiar, novel, np.array([0.15, 0.3, 0.5, 0.9])).tolist() == pytest.approx(
        [0.35, 0.5, 0.7, 0.8])  # the end value outside the range
    assert novel_at_levels(np.stack([familiar] * 3), np.stack([novel] * 3), np.array([0.3])).shape == (3, 1)
    assert common_levels([familiar, np.array([0.3, 0.5, 0.9])], n=3).tolist() == pytest.approx([0.3, 0.45, 0.6])
    assert len(common_levels([np.array([0.1, 0.2]), np.array([0.3, 0.4])])) == 0  # no overlap


def test_curve_difference_compares_novel_error_at_equal_familiar_error() -> None:
    # One seed, two toys, three checkpoints each; 10 familiar and 10 novel images per toy.
    n = np.array([10.0, 10.0])
    caps = [(np.array([[8.0, 8.0], [4.0, 4.0], [2.0, 2.0]]), n, np.array([[9.0, 9.0], [5.0, 5.0], [3.0, 3.0]]), n)]
    cnn = [(np.array([[6.0, 6.0], [3.0, 3.0], [1.0, 1.0]]), n, np.array([[8.0, 8.0], [6.0, 6.0], [4.0, 4.0]]), n)]
    levels = np.array([0.2, 0.4])
    rows = curve_difference(caps, cnn, levels, toy_bootstrap_weights(np.array([0, 0]), draws=50))
    # caps: familiar 0.2 -> novel 0.3, 0.4 -> 0.5; cnn: familiar 0.3 -> 0.6, 0.1 -> 0.4, so 0.2 -> 0.5, 0.4 -> ~0.667.
    assert [r["familiar_level"] for r in rows] == pytest.approx([0.2, 0.4])
    assert [r["first_error"] for r in rows] == pytest.approx([0.3, 0.5])
    assert [r["second_error"] for r in rows] == pytest.approx([0.5, 0.6 + 0.1 / 1.5])
    assert all(r["better"] == "first" for r in rows)


def test_subsample_keeps_instances_and_lightings_aligned() -> None:
    import torch

    test = ViewTestSet(torch.arange(10.0).reshape(10, 1, 1, 1), np.arange(10) % 5, np.zeros(10),
                       np.arange(10) < 5, np.arange(10) * 10, np.arange(10) % 2)
    small = test.subsample(4, seed=1)
    kept = small.images.reshape(-1).long().numpy()
    assert small.instances.tolist() == (kept * 10).tolist() and small.lightings.tolist() == (kept % 2).tolist()
    match, report = test.halves()
    assert match.tolist() == (np.arange(10) % 2 == 0).tolist() and (match ^ report).all()


# ----------------------------------------------------------------------------------------------
# Kept checkpoints


def test_keep_checkpoints_saves_an_evaluation_only_checkpoint_at_every_evaluation(
    data_dir: Path, tmp_path: Path
) -> None:
    data = prepare_data(data_dir, "azimuth")
    config = TrainConfig(model="cnn", split="azimuth", steps=4, batch_size=8, eval_every=2, keep_checkpoints=True)
    train(config, tmp_path / "kept", data=data, progress=False, log=lambda _: None)
    files = sorted(p.name for p in (tmp_path / "kept" / "checkpoints").iterdir())
    assert files == ["step-2.pt", "step-4.pt"]
    for step in (2, 4):
        checkpoint = load_checkpoint(tmp_path / "kept" / "checkpoints" / f"step-{step}.pt")
        assert checkpoint["step"] == step and checkpoint["resumable"] is False
        assert "optimizer_state" not in checkpoint
        model_from_checkpoint(checkpoint)  # rebuilds and loads
    final = load_checkpoint(tmp_path / "kept" / "last.pt")["model_state"]
    kept = load_checkpoint(tmp_path / "kept" / "checkpoints" / "step-4.pt")["model_state"]
    assert all(final[k].equal(kept[k]) for k in final)

    train(TrainConfig(model="cnn", split="azimuth", steps=2, batch_size=8, eval_every=2), tmp_path / "default",
          data=data, progress=False, log=lambda _: None)
    assert not (tmp_path / "default" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------
# The command end to end


def test_cli_writes_table2_for_both_models_and_protocols(first_run: tuple[Path, str]) -> None:
    out, output = first_run
    for name in ("table2.md", "table2.csv", "per_seed.csv", "pairs.csv", "differences.csv", "trajectory.csv",
                 "distance.csv", "distance.md", "novel_vs_familiar.png", "error_vs_distance.png", "provenance.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for figure in ("error_vs_distance.png", "novel_vs_familiar.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    per_seed = pd.read_csv(out / "per_seed.csv")
    assert sorted(zip(per_seed["protocol"], per_seed["model"])) == sorted(
        (p, m) for p in (VALIDATION, PAPER) for m in ("cnn", "capsules-small"))
    assert set(per_seed["dataset"]) == {"smallNORB"} and set(per_seed["mode"]) == {"stereo"}
    assert per_seed[["familiar_error", "novel_error"]].notna().all().all()
    # Both models are chosen among their kept step files, one as the target and one matched to it.
    assert all((out / path).is_file() and "/checkpoints/step-" in path for path in per_seed["checkpoint"])
    assert set(per_seed["step"]) <= {2, 4}
    assert all(sorted(roles) == ["matched", "target"] for _, roles in per_seed.groupby("protocol")["role"])

    table2 = pd.read_csv(out / "table2.csv")
    assert set(table2["protocol"]) == {VALIDATION, PAPER}
    assert set(table2["views"]) == {"familiar", "novel"}
    novel = table2[table2["views"] == "novel"].iloc[0]
    assert novel["relative_reduction"] == pytest.approx(1 - novel["capsules_error_mean"] / novel["cnn_error_mean"])
    assert table2["paper_smallNORB_cnn_error"].tolist()[:2] == [0.037, 0.2]

    markdown = (out / "table2.md").read_text()
    assert "azimuth split — smallNORB (stereo)" in markdown.splitlines()[0]
    assert "## Paper (smallNORB)" in markdown and "capsules-small error %" in markdown
    assert "smallNORB (stereo)" in output

    distance = pd.read_csv(out / "distance.csv")
    assert sorted(set(distance["distance_from"])) == [0, 60, 120]  # 0°/20° familiar; 100° -> 60°; 180° -> 120°
    cnn = distance[(distance["model"] == "cnn") & (distance["protocol"] == VALIDATION)]
    assert cnn["n"].sum() == 400  # every test image once

    record = json.loads((out / "provenance.json").read_text())
    assert record["seeds"] == [0] and record["dataset"] == "smallNORB" and len(record["dataset_checksum"]) == 64
    assert record["budget"]["models"]["cnn"]["steps"] == 4
    assert {c["sha256"] for c in record["checkpoints"]} and all(len(c["sha256"]) == 64 for c in record["checkpoints"])
    assert "viewpoint-split azimuth" in record["command"]


def test_both_models_keep_and_score_every_evaluation_checkpoint(first_run: tuple[Path, str]) -> None:
    out, _ = first_run
    for model in ("cnn", "capsules-small"):
        kept = sorted(p.name for p in (out / "runs" / f"{model}-seed0" / "checkpoints").iterdir())
        assert kept == ["step-2.pt", "step-4.pt"], model
        assert load_checkpoint(out / "runs" / f"{model}-seed0" / "checkpoints" / "step-2.pt")["resumable"] is False
    trajectory = pd.read_csv(out / "trajectory.csv")
    assert sorted(zip(trajectory["model"], trajectory["step"])) == [
        ("capsules-small", 2), ("capsules-small", 4), ("cnn", 2), ("cnn", 4)]
    assert trajectory["sha256"].str.len().eq(64).all()
    assert trajectory[["validation_error", "familiar_error", "novel_error", "matching_error"]].notna().all().all()


def test_the_paper_protocol_matches_on_one_half_of_the_lightings_and_reports_on_the_other(
        first_run: tuple[Path, str]) -> None:
    out, _ = first_run
    per_seed, trajectory = pd.read_csv(out / "per_seed.csv"), pd.read_csv(out / "trajectory.csv")
    distance = pd.read_csv(out / "distance.csv")
    # The tiny test set has lightings 0 and 3, 400 images: matched on lighting 0, reported on the 200 of lighting 3.
    assert json.loads((out / "provenance.json").read_text())["lightings"] == {"match": [0], "report": [3]}
    counted = distance[distance["views"] == "test"].groupby("protocol")["n"].sum() / 2  # two models
    assert counted.to_dict() == {PAPER: 200, VALIDATION: 400}
    for row in per_seed[per_seed["protocol"] == PAPER].itertuples():
        kept = trajectory[(trajectory["model"] == row.model) & (trajectory["step"] == row.step)].iloc[0]
        assert row.matching_error == pytest.approx(kept["matching_error"])  # familiar error on lighting 0
    for row in per_seed[per_seed["protocol"] == VALIDATION].itertuples():
        kept = trajectory[(trajectory["model"] == row.model) & (trajectory["step"] == row.step)].iloc[0]
        assert row.matching_error == pytest.approx(kept["validation_error"])
        assert row.familiar_error == pytest.approx(kept["familiar_error"])  # reported on every test image


def test_default_budgets_keep_30_to_60_checkpoints_per_run_of_either_model() -> None:
    from capsrobust.training.loop import total_steps

    for name, n_train in (("full", 6480), ("full", 3240), ("quick", 6480)):  # azimuth / elevation training sets
        budget = get_budget(name)
        for model in ("cnn", "capsules-small"):
            config = budget.train_config(model, split="azimuth", data_dir=None, mode="stereo", seed=0, n_train=n_train)
            steps = total_steps(config, n_train)
            evaluations = len(range(config.eval_every, steps + 1, config.eval_every)) + bool(steps % config.eval_every)
            assert config.keep_checkpoints and 30 <= evaluations <= 60, (name, model, evaluations)
    assert get_budget("full").with_overrides(eval_every=7).eval_every_for(1000) == 7


def test_rerun_with_reuse_does_not_retrain(first_run: tuple[Path, str], data_dir: Path) -> None:
    out, _ = first_run
    runs = sorted((out / "runs").iterdir())
    assert [r.name for r in runs] == ["capsules-small-seed0", "cnn-seed0"]
    before = {r.name: ((r / "metrics.jsonl").read_bytes(), (r / "last.pt").stat().st_mtime_ns) for r in runs}
    per_seed_before = pd.read_csv(out / "per_seed.csv")

    result = CliRunner().invoke(cli, ["viewpoint-split", "azimuth", "--data-dir", str(data_dir), "--out", str(out),
                                      *TINY_BUDGET, "--reuse"])
    assert result.exit_code == 0, result.output
    after = {r.name: ((r / "metrics.jsonl").read_bytes(), (r / "last.pt").stat().st_mtime_ns) for r in runs}
    assert after == before
    assert [r["action"] for r in json.loads((out / "provenance.json").read_text())["runs"]] == ["reused", "reused"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "per_seed.csv"), per_seed_before)


def test_rerun_without_reuse_is_refused(first_run: tuple[Path, str], data_dir: Path) -> None:
    out, _ = first_run
    result = CliRunner().invoke(cli, ["viewpoint-split", "azimuth", "--data-dir", str(data_dir), "--out", str(out),
                                      *TINY_BUDGET])
    assert_one_line_error(result, "already holds a run", "--reuse")


def test_reuse_with_another_budget_is_refused(first_run: tuple[Path, str], data_dir: Path) -> None:
    out, _ = first_run
    args = ["viewpoint-split", "azimuth", "--data-dir", str(data_dir), "--out", str(out), *TINY_BUDGET, "--reuse"]
    args[args.index("--steps") + 1] = "6"
    assert_one_line_error(CliRunner().invoke(cli, args), "steps=4", "another --out")


@pytest.mark.parametrize(("args", "fragments"), [
    (["viewpoint-split", "full"], ("unknown viewpoint split 'full'", "azimuth or elevation")),
    (["viewpoint-split", "azimuth", "--budget", "huge"], ("unknown budget 'huge'", "quick")),
    (["viewpoint-split", "azimuth", "--seeds", "0"], ("--seeds must be at least 1",)),
])
def test_bad_split_or_option_is_a_one_line_error(args: list[str], fragments: tuple[str, ...]) -> None:
    assert_one_line_error(CliRunner().invoke(cli, args), *fragments)


def test_bad_mode_and_capsule_model_are_one_line_errors(data_dir: Path, tmp_path: Path) -> None:
    base = ["viewpoint-split", "elevation", "--data-dir", str(data_dir), "--out", str(tmp_path), *TINY_BUDGET]
    assert_one_line_error(CliRunner().invoke(cli, [*base, "--mode", "colour"]), "unknown input mode 'colour'")
    assert_one_line_error(CliRunner().invoke(cli, [*base, "--capsule-model", "cnn"]), "--capsule-model must be")
    assert_one_line_error(CliRunner().invoke(cli, [*base, "--extrapolation"]), "only for synthnorb")


def test_help_teaches_with_examples() -> None:
    result = CliRunner().invoke(cli, ["viewpoint-split", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "capsrobust viewpoint-split azimuth --budget quick" in result.output
    assert "viewpoint-split" in CliRunner().invoke(cli, ["--help"]).output


# ----------------------------------------------------------------------------------------------
# Interrupted experiments and extrapolation views


def test_an_interrupted_training_is_resumed_and_finished_ones_reused(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = get_budget("quick").with_overrides(steps=4, batch_size=8, eval_every=2, iterations=1)
    kwargs = dict(data_dir=data_dir, seeds=[0], budget=budget, extrapolation=False, progress=False, log=lambda _: None)
    # Stop the CNN after step 2 as Ctrl-C would (the loop's own test hook), with last.pt at step 2.
    monkeypatch.setattr(training, "_PAUSE_AFTER_STEP", 2)
    monkeypatch.setattr(training, "_pause_until_interrupted", lambda sigint: setattr(sigint, "raised", True))
    with pytest.raises(TrainingInterrupted):
        viewpoint_experiment("elevation", tmp_path, **kwargs)
    monkeypatch.setattr(training, "_PAUSE_AFTER_STEP", -1)
    assert load_checkpoint(tmp_path / "runs" / "cnn-seed0" / "last.pt")["step"] == 2

    result = viewpoint_experiment("elevation", tmp_path, reuse=True, **kwargs)
    assert [r["action"] for r in result.runs] == ["resumed", "trained"]
    metrics = (tmp_path / "runs" / "cnn-seed0" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in metrics]
    assert steps == [2, 4]
    again = viewpoint_experiment("elevation", tmp_path, reuse=True, **kwargs)
    assert [r["action"] for r in again.runs] == ["reused", "reused"]
    pd.testing.assert_frame_equal(again.per_seed, result.per_seed)


def test_extrapolation_set_is_rendered_once_and_scored_on_test_toys(tmp_path: Path) -> None:
    # Two lightings: the test-familiar protocol matches on one and reports on the other.
    synth = render_dataset(tmp_path / "synth", azimuths=[0, 100], elevations=[30], lightings=[0, 1], progress=False)
    grid = make_grid([10, 90], [30], [0])  # two odd-10° azimuths: 10° and 50° from the nearest familiar one
    views = ensure_extrapolation_set("azimuth", seed=0, grid=grid, cache_dir=tmp_path / "cache", progress=False,
                                     log=lambda _: None)
    assert is_complete(views, seed=0, grid=grid) and views.parent.parent == tmp_path / "cache"
    stamp = (views / "synthnorb-manifest.json").stat().st_mtime_ns
    assert ensure_extrapolation_set("azimuth", seed=0, grid=grid, cache_dir=tmp_path / "cache", progress=False,
                                    log=lambda _: None) == views
    assert (views / "synthnorb-manifest.json").stat().st_mtime_ns == stamp  # not rendered again

    budget = get_budget("quick").with_overrides(steps=2, batch_size=8, eval_every=2, iterations=1)
    result = viewpoint_experiment("azimuth", tmp_path / "out", data_dir=synth, seeds=[0], budget=budget,
                                  extrapolation_dir=views, progress=False, log=lambda _: None)
    assert result.per_seed["extrapolation_error"].notna().all()
    assert result.extrapolation is not None and result.extrapolation["azimuths_deg"] == [10, 90]
    extra = result.distance[(result.distance["views"] == "extrapolation") & (result.distance["model"] == "cnn")
                            & (result.distance["protocol"] == VALIDATION)]
    assert extra["mean_distance"].tolist() == [10.0, 50.0]
    assert extra["n"].tolist() == [25, 25]  # 25 test toys per view (the training toys are not scored)


def test_extrapolation_render_of_another_seed_is_refused(tmp_path: Path) -> None:
    synth = render_dataset(tmp_path / "synth", azimuths=[0, 100], elevations=[30], lightings=[0], progress=False)
    other = render_dataset(tmp_path / "other", seed=1, azimuths=[10], elevations=[30], lightings=[0], progress=False)
    with pytest.raises(DataError, match="seed 1.*the toys would differ"):
        viewpoint_experiment("azimuth", tmp_path / "out", data_dir=synth, seeds=[0], budget="quick",
                             extrapolation_dir=other, progress=False, log=lambda _: None)
    assert not (tmp_path / "out" / "runs").exists()  # refused before any training


def test_budget_overrides_reach_the_capsule_config_only() -> None:
    budget = get_budget("quick").with_overrides(iterations=2, lambda_scale=10.0)
    assert budget.models["capsule"].overrides == {"iterations": 2, "lambda_scale": 10.0}
    assert budget.models["cnn"].overrides == {}
    caps = budget.train_config("capsules-small", split="azimuth", data_dir=None, mode="stereo", seed=0, n_train=64)
    cnn = budget.train_config("cnn", split="azimuth", data_dir=None, mode="stereo", seed=0, n_train=64)
    from capsrobust.training.presets import PRESETS

    # the budget's options over the default preset's, as training records them
    assert caps.model_overrides == {**PRESETS["default"].capsule_options, "iterations": 2, "lambda_scale": 10.0}
    assert cnn.model_overrides == {}
    with pytest.raises(ConfigError, match="--lambda-scale"):
        get_budget("quick").with_overrides(lambda_scale=0.0)


def test_per_model_step_overrides_apply_after_the_shared_ones() -> None:
    budget = get_budget("full").with_overrides(steps=100, cnn_steps=30)
    assert (budget.models["cnn"].steps, budget.models["capsule"].steps) == (30, 100)
    assert budget.model("capsules-small") is budget.models["capsule"] and budget.model("cnn") is budget.models["cnn"]
    with pytest.raises(ConfigError, match="--capsule-steps"):
        get_budget("full").with_overrides(capsule_steps=0)
