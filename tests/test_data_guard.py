"""The data guard (checkpoint versus data) and the CPU-independent synthnorb render it relies on."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from capsrobust.training.checkpoints import check_trained_on
from capsrobust.data import norb_format
from capsrobust.data.prepared import PreparedData, prepare_data
from capsrobust.data.synthnorb import GENERATOR_VERSION, MANIFEST_NAME, render_dataset
from capsrobust.data.synthnorb.numerics import gaussian_noise
from capsrobust.data.synthnorb.recipe import LEGACY_VERSION, Recipe, checkpoint_recipe
from capsrobust.errors import CheckpointError

from .conftest import write_dataset

TINY = dict(azimuths=[0, 180], elevations=[30], lightings=[0, 3])
#: The view compare_with_render checks on the TINY grid (middle azimuth, elevation and lighting).
SPOT = dict(azimuth=180, elevation=30, lighting=3)

RENDER = """
import sys, torch
from capsrobust.data.synthnorb import render_dataset
render_dataset(sys.argv[1], seed=0, azimuths=[0, 180], elevations=[30], lightings=[0, 3], progress=False)
print(torch.backends.cpu.get_cpu_capability())
"""


def _render_in_subprocess(out: Path, capability: str | None) -> str:
    """Render TINY (seed 0) into ``out`` in a fresh interpreter; returns the CPU capability it ran with."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run([sys.executable, "-c", RENDER, str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _trained_on(data: PreparedData, **extra: object) -> dict:
    """The data fields of a checkpoint trained on ``data`` (what training records, plus ``extra``)."""
    return {"dataset": data.dataset, "dataset_checksum": data.checksum, **extra}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_dataset(tmp_path_factory.mktemp("tiny"), seed=0, progress=False, **TINY)


def _as_another_render(source: Path, out: Path, change: int, pixels: int) -> Path:
    """A copy of ``source`` whose spot-check view differs in ``pixels`` pixels by ``change`` grey levels,
    with its manifest rewritten to match -- what the same recipe rendered elsewhere looks like."""
    shutil.copytree(source, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    (dat_path,) = out.glob("synthnorb-*-testing-dat.mat")
    info = norb_format.read(next(out.glob("synthnorb-*-testing-info.mat")))
    dat = norb_format.read(dat_path).copy()
    row = int(np.flatnonzero((info[:, 2] == SPOT["azimuth"] // 10) & (info[:, 3] == SPOT["lighting"]))[0])
    flat = dat[row].reshape(-1).astype(np.int16)
    flat[:pixels] = np.where(flat[:pixels] >= 128, flat[:pixels] - change, flat[:pixels] + change)
    dat[row] = flat.reshape(dat[row].shape).astype(np.uint8)
    norb_format.write(dat_path, dat)
    manifest["files"][dat_path.name] = {"sha256": hashlib.sha256(dat_path.read_bytes()).hexdigest(),
                                        "bytes": dat_path.stat().st_size}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


# ------------------------------------------------------------------------------- the render
def test_render_is_byte_identical_under_two_cpu_capabilities_and_the_guard_accepts_both(tmp_path: Path) -> None:
    plain = _render_in_subprocess(tmp_path / "machine", None)
    fallback = _render_in_subprocess(tmp_path / "default", "default")
    assert fallback == "DEFAULT", fallback  # the scalar kernels really ran
    for path in sorted((tmp_path / "machine").iterdir()):
        assert path.read_bytes() == (tmp_path / "default" / path.name).read_bytes(), (path.name, plain)

    machine, default = prepare_data(tmp_path / "machine"), prepare_data(tmp_path / "default")
    for trained, here in ((machine, default), (default, machine)):
        checkpoint = _trained_on(trained, dataset_recipe=trained.recipe)
        assert check_trained_on("ckpt.pt", checkpoint, here) is None
    other_seed = prepare_data(render_dataset(tmp_path / "seed1", seed=1, progress=False, **TINY))
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: trained on synthnorb .*recipe: generator 1\.0, seed 1"):
        check_trained_on("ckpt.pt", _trained_on(machine, dataset_recipe=machine.recipe), other_seed)


def test_noise_is_torch_normal_computed_reproducibly() -> None:
    # Generator 1.0 drew its sensor noise with Tensor.normal_ on float32; the reproducible
    # transform gives the same numbers up to float32 rounding, blocks of 16 and a tail alike.
    for size in (18432, 40):
        expected = torch.empty(size).normal_(0.0, 2.0, generator=torch.Generator().manual_seed(7))
        got = gaussian_noise(np.array([7], dtype=np.uint64), size, 2.0)[0]
        assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=0, atol=1e-5), size


# ------------------------------------------------------------------------------- the guard
def test_same_recipe_with_other_bytes_is_accepted_with_one_line(tiny: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    trained = prepare_data(tiny)
    elsewhere = prepare_data(_as_another_render(tiny, tmp_path / "elsewhere", change=1, pixels=2))
    assert elsewhere.checksum != trained.checksum and elsewhere.recipe == trained.recipe
    note = check_trained_on("ckpt.pt", _trained_on(trained, dataset_recipe=trained.recipe), elsewhere)
    assert note is not None and "\n" not in note
    assert note.startswith("ckpt.pt: synthnorb bytes differ from its training data")
    assert "but the recipe matches (generator 1.0, seed 0, grid of 2 azimuths x 1 elevations x 2 lightings)" in note
    assert "2 of 921,600 pixels off by 1 grey level" in note
    assert capsys.readouterr().err.strip() == note  # printed once, on stderr


def test_same_recipe_beyond_the_pixel_tolerance_is_refused(tiny: Path, tmp_path: Path) -> None:
    trained = prepare_data(tiny)
    far = prepare_data(_as_another_render(tiny, tmp_path / "far", change=3, pixels=2))
    with pytest.raises(CheckpointError, match="against a fresh render of that recipe 2 of 921,600 pixels off by up to 3"):
        check_trained_on("ckpt.pt", _trained_on(trained, dataset_recipe=trained.recipe), far)
    many = prepare_data(_as_another_render(tiny, tmp_path / "many", change=1, pixels=50))
    with pytest.raises(CheckpointError, match="50 of 921,600 pixels off by 1 grey level"):
        check_trained_on("ckpt.pt", _trained_on(trained, dataset_recipe=trained.recipe), many)


def test_files_changed_behind_their_manifest_have_no_recipe(tiny: Path, tmp_path: Path) -> None:
    trained = prepare_data(tiny)
    edited = _as_another_render(tiny, tmp_path / "edited", change=1, pixels=2)
    shutil.copy(tiny / MANIFEST_NAME, edited / MANIFEST_NAME)  # the manifest of the original bytes
    data = prepare_data(edited)
    assert data.recipe is None
    with pytest.raises(CheckpointError, match="no intact synthnorb manifest in .*edited"):
        check_trained_on("ckpt.pt", _trained_on(trained, dataset_recipe=trained.recipe), data)


def test_smallnorb_must_match_byte_for_byte(tmp_path: Path) -> None:
    one = prepare_data(write_dataset(tmp_path / "one"))
    two = prepare_data(write_dataset(tmp_path / "two", lightings=(1, 2)))
    assert one.recipe is None
    assert check_trained_on("ckpt.pt", _trained_on(one), one) is None
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: trained on smallNORB data with checksum \w{12}, but the "
                                              r"data here is smallNORB \w{12}; evaluate on the data"):
        check_trained_on("ckpt.pt", _trained_on(one), two, advice="evaluate on the data it was trained on")


def test_synthnorb_checkpoint_on_smallnorb_is_refused(tiny: Path, tmp_path: Path) -> None:
    synth, norb = prepare_data(tiny), prepare_data(write_dataset(tmp_path / "norb"))
    with pytest.raises(CheckpointError, match="trained on synthnorb data .* but the data here is smallNORB"):
        check_trained_on("ckpt.pt", _trained_on(synth, dataset_recipe=synth.recipe), norb)


def test_recipe_of_checkpoints_that_record_only_a_checksum() -> None:
    old = {"dataset": "synthnorb", "dataset_checksum": "ad12ccce3e19" + "0" * 52, "config": {"data_dir": None}}
    assert checkpoint_recipe(old) == Recipe.full_grid("1.0", 0)  # the default dataset, as committed runs used
    cache = {**old, "config": {"data_dir": "/home/u/.cache/capsrobust/synthnorb/v1.0-seed3"}}
    assert checkpoint_recipe(cache) == Recipe.full_grid("1.0", 3)
    assert checkpoint_recipe({**old, "config": {"data_dir": "/data/my-render"}}) is None  # grid unknown
    assert checkpoint_recipe({"dataset": "synthnorb", "dataset_checksum": "x"}) is None  # no config at all
    assert checkpoint_recipe({**old, "dataset": "smallNORB"}) is None
    recorded = Recipe(GENERATOR_VERSION, 2, (0,), (30,), (1,))
    assert checkpoint_recipe({**old, "dataset_recipe": recorded.as_dict()}) == recorded


def test_generator_version_is_not_bumped_while_checkpoints_record_no_recipe() -> None:
    # Checkpoints without a recorded recipe are taken to be trained on LEGACY_VERSION; a new version
    # needs training to record PreparedData.recipe first, or old and new renders would be mixed up.
    import inspect

    import capsrobust.training.loop

    assert GENERATOR_VERSION == LEGACY_VERSION or "dataset_recipe" in inspect.getsource(capsrobust.training.loop)


@pytest.mark.slow
def test_committed_checkpoints_are_accepted_on_this_machines_default_data() -> None:
    from capsrobust.evaluation.attack_data import load_attack_setup

    root = Path(__file__).resolve().parent.parent / "results" / "train" / "old-defaults"
    paths = [root / "capsules-small-lam1-seed0" / "best.pt", root / "cnn-matched-seed0" / "matched.pt"]
    setup = load_attack_setup(paths, None, n=8, seed=0)  # renders the default dataset on first use
    assert setup.data.dataset == "synthnorb" and len(setup.labels) == 8
