"""Locating, validating, decoding and caching a dataset directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from capsrobust.data import norb_format, smallnorb
from capsrobust.errors import ConfigError, DataError
from tests.conftest import make_split_arrays, write_dataset


def test_stereo_split_has_official_shapes_and_metadata_in_degrees(norb_dir: Path) -> None:
    split = smallnorb.load_split(norb_dir, "training", "stereo")
    dat, cat, info = make_split_arrays("training", seed=0)
    assert split.images.shape == (len(cat), 2, 8, 8) and split.images.dtype == np.uint8
    np.testing.assert_array_equal(split.images, dat)
    assert list(split.meta.columns) == ["label", "instance", "elevation", "azimuth", "lighting"]
    np.testing.assert_array_equal(split.labels, cat)
    assert set(split.meta["elevation"]) == {30, 50}  # indices 0 and 4
    assert set(split.meta["azimuth"]) == {0, 180}  # units 0 and 18
    assert set(split.meta["instance"]) == {4, 6, 7, 8, 9}
    assert split.dataset == "smallNORB" and split.mode == "stereo"


def test_mono_mode_makes_each_camera_an_example(norb_dir: Path) -> None:
    stereo = smallnorb.load_split(norb_dir, "testing", "stereo")
    mono = smallnorb.load_split(norb_dir, "testing", "mono")
    assert mono.images.shape == (2 * len(stereo), 1, 8, 8)
    np.testing.assert_array_equal(mono.images[1::2, 0], stereo.images[:, 1])
    np.testing.assert_array_equal(mono.images[0::2, 0], stereo.images[:, 0])
    assert mono.meta["camera"].tolist()[:4] == [0, 1, 0, 1]
    np.testing.assert_array_equal(mono.meta["label"].to_numpy()[::2], stereo.labels)


def test_gzipped_files_load_identically(norb_dir: Path, norb_gz_dir: Path) -> None:
    plain = smallnorb.load_split(norb_dir, "testing")
    packed = smallnorb.load_split(norb_gz_dir, "testing")
    np.testing.assert_array_equal(plain.images, packed.images)
    assert plain.meta.equals(packed.meta)
    assert plain.checksums == packed.checksums  # checksums are of uncompressed content


def test_second_load_comes_from_the_cache_without_decoding(norb_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = smallnorb.load_split(norb_dir, "training")

    def fail(*_: object) -> None:
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(norb_format, "read", fail)
    second = smallnorb.load_split(norb_dir, "training")
    np.testing.assert_array_equal(first.images, second.images)
    assert isinstance(second.images, np.memmap)
    assert second.checksums == first.checksums


def test_cache_is_invalidated_when_a_source_file_changes(norb_dir: Path) -> None:
    smallnorb.load_split(norb_dir, "training")
    dat, cat, info = make_split_arrays("training", seed=0)
    cat = (cat + 1) % 5
    path = norb_dir / f"{smallnorb.OFFICIAL_PREFIX['training']}-training-cat.mat"
    norb_format.write(path, cat)
    reloaded = smallnorb.load_split(norb_dir, "training")
    np.testing.assert_array_equal(reloaded.labels, cat)


def test_missing_directory_names_it_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*capsrobust data download"):
        smallnorb.load_split(tmp_path / "absent", "training")


def test_missing_one_of_six_files_is_named(norb_dir: Path) -> None:
    (norb_dir / f"{smallnorb.OFFICIAL_PREFIX['testing']}-testing-info.mat").unlink()
    with pytest.raises(DataError, match="missing .*testing-info.mat"):
        smallnorb.find_files(norb_dir)


def _rewrite(directory: Path, split: str, kind: str, array: np.ndarray) -> None:
    norb_format.write(directory / f"{smallnorb.OFFICIAL_PREFIX[split]}-{split}-{kind}.mat", array)


def test_label_out_of_range_is_reported(norb_dir: Path) -> None:
    _, cat, _ = make_split_arrays("training")
    cat[3] = 7
    _rewrite(norb_dir, "training", "cat", cat)
    with pytest.raises(DataError, match="training-cat.mat: label 7 out of range 0-4"):
        smallnorb.load_split(norb_dir, "training")


def test_info_and_cat_length_mismatch_is_reported(norb_dir: Path) -> None:
    _, _, info = make_split_arrays("testing")
    _rewrite(norb_dir, "testing", "info", info[:-1])
    with pytest.raises(DataError, match="testing files disagree in length"):
        smallnorb.load_split(norb_dir, "testing")


def test_instances_of_the_other_split_are_rejected(norb_dir: Path) -> None:
    _, _, info = make_split_arrays("training")
    info[0, 0] = 0  # a test toy in the training file
    _rewrite(norb_dir, "training", "info", info)
    with pytest.raises(DataError, match=r"instances \[0\] do not belong to the training set"):
        smallnorb.load_split(norb_dir, "training")


@pytest.mark.parametrize("column, value, name", [(2, 3, "azimuth"), (1, 9, "elevation"), (3, 6, "lighting")])
def test_view_values_off_the_official_grid_are_rejected(norb_dir: Path, column: int, value: int, name: str) -> None:
    _, _, info = make_split_arrays("testing")
    info[5, column] = value
    _rewrite(norb_dir, "testing", "info", info)
    with pytest.raises(DataError, match=f"{name} value {value} out of range"):
        smallnorb.load_split(norb_dir, "testing")


def test_synthnorb_files_may_hold_views_off_the_official_grid(tmp_path: Path) -> None:
    directory = write_dataset(tmp_path / "synth", prefix="synthnorb", elevations=(-6, 11), azimuths=(1, 35))
    split = smallnorb.load_split(directory, "testing")
    assert split.dataset == "synthnorb"
    assert set(split.meta["elevation"]) == {0, 85}
    assert set(split.meta["azimuth"]) == {10, 350}


def test_wrong_dat_shape_is_reported(norb_dir: Path) -> None:
    _rewrite(norb_dir, "training", "dat", np.zeros((500, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 images of shape \(N, 2, H, W\)"):
        smallnorb.load_split(norb_dir, "training")


def test_unknown_split_and_mode_list_the_valid_ones(norb_dir: Path) -> None:
    with pytest.raises(ConfigError, match="training, testing"):
        smallnorb.load_split(norb_dir, "validation")
    with pytest.raises(ConfigError, match="stereo, mono"):
        smallnorb.load_split(norb_dir, "training", mode="rgb")
