"""`capsrobust inspect` as a thin shell over capsrobust.experiments.inspection: the library decides which
checkpoints and images it looks at (one-line errors when it cannot), the CLI parses and prints."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from capsrobust.errors import ConfigError
from capsrobust.experiments.inspection import load_subjects, routing_images
from capsrobust_cli.main import cli
from tests.conftest import write_dataset
from tests.test_cli_data import assert_one_line_error


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> tuple[Path, Path, Path]:
    """(data directory, a one-step capsule net's last.pt, a one-step CNN's last.pt)."""
    root = tmp_path_factory.mktemp("inspect-cli")
    data_dir = write_dataset(root / "data", size=16)
    for model in ("capsules-small", "cnn"):
        result = CliRunner().invoke(cli, ["train", "--model", model, "--data-dir", str(data_dir), "--out",
                                          str(root / model), "--steps", "1", "--batch-size", "2",
                                          "--max-eval-examples", "4", "--no-progress"])
        assert result.exit_code == 0, result.output
    return data_dir, root / "capsules-small" / "last.pt", root / "cnn" / "last.pt"


def test_a_cnn_is_refused_for_the_views_that_need_a_capsule_net(runs: tuple[Path, Path, Path]) -> None:
    data_dir, caps, cnn = runs
    with pytest.raises(ConfigError, match="--routing and --reconstruct looks inside capsule nets"):
        load_subjects(cnn, data_dir=data_dir, needs_capsule=["--routing", "--reconstruct"])
    subjects = load_subjects(cnn, data_dir=data_dir)  # the pose probe takes a CNN
    assert subjects.checkpoint["model"] == "cnn" and subjects.header().startswith(f"{cnn} (cnn, step 1)")
    assert_one_line_error(CliRunner().invoke(cli, ["inspect", str(cnn), "--reconstruct", "--data-dir", str(data_dir)]),
                          "--reconstruct looks inside capsule nets")


def test_routing_images_are_one_image_or_k_per_class_and_an_index_out_of_range_is_one_line(
        runs: tuple[Path, Path, Path]) -> None:
    data_dir, caps, _ = runs
    data = load_subjects(caps, data_dir=data_dir, needs_capsule=["--routing"]).data
    images, labels, chosen = routing_images(data, None, 1)
    assert sorted(labels.tolist()) == sorted(set(data.subset("validation")[1].tolist()))  # one of each class
    assert routing_images(data, 0, 16)[2].tolist() == [0]
    result = CliRunner().invoke(cli, ["inspect", str(caps), "--routing", "--image", "100000", "--data-dir",
                                      str(data_dir)])
    assert_one_line_error(result, "--image 100000 is out of range")
