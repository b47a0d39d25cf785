"""Looking inside capsule nets: routing records, the viewpoint probe, the decoder, `capsrobust inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from capsrobust.evaluation.pose_probe import RidgeProbe, fit_ridge_probe, probe_features, probe_scores
from capsrobust.evaluation.routing_stats import (class_routing_table, inspect_routing, record_routing,
                                                 recording_em_routing)
from capsrobust.experiments.decoder import pose_traversal, reconstruction_study, traversal_effects
from capsrobust.models import build_model
from capsrobust.models.routing import em_routing
from capsrobust_cli.main import cli
from tests.conftest import write_dataset
from tests.routing_reference import conv_child_index, reference_em_routing
from tests.test_cli_data import assert_one_line_error


def tiny_capsnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("capsules-small", A=4, B=2, C=2, D=2, iterations=3).eval()


def agreeing_votes(n: int = 4, classes: int = 3, children: int = 24, outliers: int = 8) -> torch.Tensor:
    """Votes (N, 1, O, I, 16): class 0's votes agree (a tight cluster) except ``outliers`` scattered ones;
    the other classes' votes are scattered everywhere."""
    generator = torch.Generator().manual_seed(0)
    votes = torch.randn(n, 1, classes, children, 16, generator=generator) * 2.0
    centre = torch.randn(n, 1, 1, 16, generator=generator)
    votes[:, :, 0, outliers:] = centre + 0.05 * torch.randn(n, 1, children - outliers, 16, generator=generator)
    return votes


def test_recording_routing_matches_the_literal_procedure_1() -> None:
    votes = torch.randn(2, 4, 3, 9, 16, dtype=torch.float64)
    acts = torch.rand(2, 4, 9, dtype=torch.float64)
    beta_u, beta_a = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    index = conv_child_index(4, 4, 1, 3, 1)
    options = dict(schedule="official", lambda_scale=100.0, child_index=index)
    poses, out_acts, records = recording_em_routing(votes, acts, beta_u, beta_a, 3, num_children=16, **options)
    ref_poses, ref_acts = reference_em_routing(votes, acts, beta_u, beta_a, 3, **options)
    torch.testing.assert_close(poses, ref_poses)
    torch.testing.assert_close(out_acts, ref_acts)
    assert len(records) == 3 and records[0]["weights"].shape == (2, 4, 3, 9)


def test_a_child_far_below_the_rest_of_the_batch_still_spreads_its_whole_activation() -> None:
    """Each child's assignments sum to 1 however far its log a_j p_j lies below the other children's
    (a batch-wide shift would underflow them all to 0 about 745 below the batch maximum)."""
    generator = torch.Generator().manual_seed(0)
    votes = 0.01 * torch.randn(1, 1, 3, 10, 16, generator=generator, dtype=torch.float64)
    votes[:, :, :, 0] = 100.0  # one outlier child, nearly inactive: log p ~ -1e7 under every parent
    acts = torch.ones(1, 1, 10, dtype=torch.float64)
    acts[:, :, 0] = 1e-6
    index = torch.arange(10).view(1, 10)  # official normalisation, each slot its own child
    _, _, records = recording_em_routing(votes, acts, torch.zeros(3, dtype=torch.float64),
                                         torch.zeros(3, dtype=torch.float64), 3, lambda_scale=100.0, child_index=index)
    for record in records:  # weights R_ij a_i summed over the parents: a_i (float32 records)
        torch.testing.assert_close(record["weights"].double().sum(2), acts, rtol=1e-5, atol=0.0)


def test_recorded_model_gives_the_same_outputs_and_restores_its_routing() -> None:
    model, images = tiny_capsnet(), torch.rand(3, 2, 32, 32)
    with torch.no_grad():
        expected = model.forward_with_poses(images)
        with record_routing(model) as recorders:
            recorded = model.forward_with_poses(images)
    torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=1e-4)
    assert set(recorders) == {"conv_caps1", "conv_caps2", "class_caps"}
    assert model.class_caps.routing is em_routing and model.conv_caps1.routing is em_routing


def test_weighted_distance_of_the_agreeing_class_shrinks_over_iterations() -> None:
    votes = agreeing_votes()
    acts = torch.ones(votes.shape[0], 1, votes.shape[3])
    _, _, records = recording_em_routing(votes, acts, torch.zeros(3), torch.zeros(3), 3, schedule="normalized")
    table = class_routing_table(records, torch.zeros(votes.shape[0], dtype=torch.long))
    agreeing = table[(table.class_capsule == 0) & (table.whose == "true class")].sort_values("iteration")
    distances = agreeing["mean_distance"].to_numpy()
    assert np.all(np.diff(distances) < 0), distances
    assert distances[-1] < 0.5 * distances[0]
    assert agreeing["weight_share"].iloc[-1] > agreeing["weight_share"].iloc[0]


def test_routing_inspection_tables_cover_every_iteration_class_and_conv_layer() -> None:
    records, class_table, conv_table = inspect_routing(tiny_capsnet(), torch.rand(10, 2, 32, 32),
                                                       torch.arange(10) % 5)
    assert len(records) == 3 and records[0]["distances"].shape == (10, 1, 5, 4 * 4 * 2)
    assert len(class_table) == 3 * 5 * 2
    assert list(conv_table["layer"].unique()) == ["conv_caps1", "conv_caps2"] and len(conv_table) == 6
    assert class_table["mean_distance"].notna().all() and conv_table["mean_distance"].notna().all()


def test_probe_recovers_a_known_linear_map() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 16))
    truth = rng.normal(size=(16, 3))
    targets = features @ truth + np.array([0.5, -1.0, 40.0])
    probe = fit_ridge_probe(features[:300], targets[:300], features[300:350], targets[300:350])
    scores = probe_scores(probe.predict(features[350:]), targets[350:])
    assert scores["r2_mean"] > 0.999
    np.testing.assert_allclose(probe.predict(features[350:]), targets[350:], atol=1e-2)


def test_probe_scores_angles_on_the_circle() -> None:
    azimuth = np.deg2rad(np.array([350.0, 10.0]))
    truth = np.stack([np.cos(azimuth), np.sin(azimuth), [30.0, 40.0]], axis=1)
    predicted = np.stack([np.cos(azimuth + np.deg2rad(20)), np.sin(azimuth + np.deg2rad(20)), [35.0, 40.0]], axis=1)
    scores = probe_scores(predicted, truth)
    assert scores["azimuth_error_deg"] == pytest.approx(20.0)
    assert scores["elevation_error_deg"] == pytest.approx(2.5)


def test_ridge_of_uninformative_features_predicts_the_mean() -> None:
    probe = RidgeProbe.fit(np.ones((50, 4)), np.arange(150.0).reshape(50, 3), alpha=1.0)
    np.testing.assert_allclose(probe.predict(np.ones((2, 4))), np.tile(np.arange(150.0).reshape(50, 3).mean(0), (2, 1)))


def test_probe_features_are_the_winning_pose_or_the_cnn_penultimate_layer() -> None:
    images = torch.rand(4, 2, 32, 32)
    assert probe_features(tiny_capsnet(), images).shape == (4, 16)
    assert probe_features(tiny_capsnet(), images, capsule_features="masked").shape == (4, 80)
    assert probe_features(build_model("cnn"), images).shape == (4, 1024)
    assert probe_features(None, images).shape == (4, 2 * 32 * 32)


def test_decoder_trains_on_a_frozen_tiny_capsnet_and_traverses_every_pose_entry() -> None:
    model = tiny_capsnet()
    before = [p.clone() for p in model.parameters()]
    images, labels = torch.rand(40, 2, 32, 32), torch.arange(40) % 5
    result, held_poses, predicted = reconstruction_study(model, images[:30], labels[:30], images[30:], labels[30:],
                                                         steps=3)
    assert result.metrics["steps"] == 3 and result.metrics["decoder_mse"] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    steps = (-1.0, 0.0, 1.0)
    traversal = pose_traversal(result, held_poses[0], int(predicted[0]), steps)
    assert traversal.shape == (16, 3, 2, 32, 32) and traversal.min() >= 0 and traversal.max() <= 1
    assert len(traversal_effects(traversal, steps)) == 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data dir, capsule checkpoint, CNN checkpoint): one training step each on a tiny dataset."""
    from capsrobust.paths import CACHE_ENV

    root = tmp_path_factory.mktemp("inspect")
    data_dir = write_dataset(root / "data", size=16, azimuths=(0, 2, 10, 18), elevations=(0, 4))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root / "cache"))
        for model in ("capsules-small", "cnn"):
            result = CliRunner().invoke(cli, ["train", "--model", model, "--data-dir", str(data_dir), "--out",
                                              str(root / model), "--steps", "1", "--batch-size", "2",
                                              "--max-eval-examples", "4", "--no-progress"])
            assert result.exit_code == 0, result.output
    return data_dir, root / "capsules-small" / "last.pt", root / "cnn" / "last.pt"


def test_cli_routing_writes_histograms_tables_and_provenance(trained, tmp_path: Path) -> None:
    data_dir, caps, _ = trained
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["inspect", str(caps), "--routing", "--per-class", "2", "--data-dir",
                                      str(data_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "distance it1" in result.output and "share it2" in result.output and "conv_caps1" in result.output
    for name in ("routing.png", "routing.md", "routing-class.csv", "routing-conv.csv"):
        assert (out / name).is_file(), name
    record = json.loads((out / "routing.json").read_text())
    assert record["checkpoint"]["sha256"] and len(record["validation_indices"]) == 2 * 5


def test_cli_pose_probe_compares_capsules_with_the_cnn_and_says_what_novel_means(trained, tmp_path: Path) -> None:
    data_dir, caps, cnn = trained
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["inspect", str(caps), "--pose-probe", "--compare", str(cnn), "--data-dir",
                                      str(data_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "pose-probe.csv")
    assert set(table["model"]) == {"constant", "pixels", "capsules-small", "cnn"}
    assert {("azimuth", "novel"), ("elevation", "familiar"), ("full", "familiar")} <= set(zip(table.split, table.views))
    assert "trained on all views" in (out / "pose-probe.md").read_text()


def test_cnn_checkpoint_given_to_routing_is_a_one_line_error(trained) -> None:
    data_dir, _, cnn = trained
    assert_one_line_error(CliRunner().invoke(cli, ["inspect", str(cnn), "--routing", "--data-dir", str(data_dir)]),
                          "cnn checkpoint", "--routing")


def test_image_and_per_class_exclude_each_other(trained) -> None:
    data_dir, caps, _ = trained
    assert_one_line_error(CliRunner().invoke(cli, ["inspect", str(caps), "--routing", "--image", "0", "--per-class",
                                                   "2", "--data-dir", str(data_dir)]), "--image", "--per-class")
