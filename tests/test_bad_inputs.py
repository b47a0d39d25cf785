"""Bad input a new user types: one `Error:` line naming the problem, exit status 2, no traceback, nothing run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from capsrobust.training.checkpoints import save_checkpoint
from capsrobust.errors import ConfigError
from capsrobust.experiments.learning_probe import parse_variant
from capsrobust_cli.main import cli
from tests.test_cli_data import assert_one_line_error

# ---------------------------------------------------------------------------------------------
# Learning-probe variants: each value is read as the type its option holds, where it is parsed.


@pytest.mark.parametrize("spec, fragments", [
    ("capsules-small:iterations=banana", ["iterations takes a whole number", "'banana'"]),
    ("capsules-small:iterations=2.5", ["iterations takes a whole number", "'2.5'"]),
    ("capsules-small:lr=fast", ["lr takes a number", "'fast'"]),
    ("cnn:dropout=half", ["dropout takes a number", "'half'"]),
    ("capsules-small:iterations=0", ["iterations must be at least 1, got 0"]),
    ("capsules-small:A=0", ["A must be at least 1"]),
    ("capsules-small:in_channels=3", ["in_channels cannot be set by a variant"]),
    ("cnn:iterations=2", ["unknown option 'iterations'", "valid: batch_size, dropout"]),
    ("capsules-small:schedule=bogus", ["unknown --routing-schedule 'bogus'", "valid: official, normalized"]),
])
def test_a_bad_variant_value_names_the_option_the_value_and_the_type(spec: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_variant(spec)
    message = str(info.value)
    assert message.startswith(f"variant {spec!r}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_good_variant_values_keep_their_types() -> None:
    variant = parse_variant("capsules-small:iterations=2,lambda_scale=2,coordinates=centred,lr=0.001")
    assert dict(variant.options) == {"iterations": 2, "lambda_scale": 2.0, "coordinates": "centred"}
    assert isinstance(dict(variant.options)["lambda_scale"], float) and dict(variant.training) == {"lr": 0.001}


def test_bench_learning_refuses_a_bad_value_before_touching_the_data(isolated_cache: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "learning", "capsules-small:iterations=banana"])
    assert_one_line_error(result, "capsules-small:iterations=banana", "iterations takes a whole number", "'banana'")
    assert not (isolated_cache / "synthnorb").exists()  # nothing rendered for a refused run


# ---------------------------------------------------------------------------------------------
# train: counts that cannot be negative or zero are refused with the configuration, before any data.


@pytest.mark.parametrize("args, fragment", [
    (["--iterations", "0"], "--iterations must be at least 1, got 0"),  # was an IndexError in the first step
    (["--eval-every", "-1"], "--eval-every must be 0 (automatic) or positive, got -1"),  # was accepted
    (["--checkpoint-every", "-5"], "--checkpoint-every must be 0 (automatic) or positive, got -5"),
])
def test_train_refuses_out_of_range_counts(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--steps", "2", "--out", str(tmp_path / "run"), *args])
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# A file that is not a checkpoint: named, said so, no PyTorch sentence quoted.


def _command(name: str, path: Path) -> list[str]:
    return {"evaluate": ["evaluate", str(path)], "inspect": ["inspect", str(path)],
            "attack": ["attack", "fgsm", "--eps", "0.1", "--models", f"{path},{path}", "--out", str(path.parent / "o")],
            "export": ["export", str(path), "--out", str(path.parent / "copy.pt")]}[name]


@pytest.mark.parametrize("command", ["evaluate", "inspect", "attack", "export"])
def test_a_file_that_is_not_a_checkpoint_is_named_and_said_to_be_none(command: str, tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hello, these are my notes\n")
    result = CliRunner().invoke(cli, _command(command, path))
    assert_one_line_error(result, str(path), "not a capsrobust checkpoint", "capsrobust train")
    assert "load key" not in result.output and "pickle" not in result.output.lower()  # torch's own words
    assert not (tmp_path / "o").exists()


def test_empty_and_truncated_checkpoints_say_which(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert_one_line_error(CliRunner().invoke(cli, ["evaluate", str(empty)]), str(empty), "the file is empty")
    cut = save_checkpoint(tmp_path / "cut.pt", {"model": "cnn", "model_state": {"w": torch.zeros(1000)}})
    cut.write_bytes(cut.read_bytes()[:500])
    result = CliRunner().invoke(cli, ["evaluate", str(cut)])
    assert_one_line_error(result, str(cut), "not a loadable checkpoint", "truncated or corrupt")
    assert "zip" not in result.output.lower()  # PyTorch's sentence about the archive is not quoted


def test_download_refuses_a_timeout_that_is_not_positive(tmp_path: Path) -> None:
    """It reached urllib as a ValueError traceback ("Timeout value out of range")."""
    result = CliRunner().invoke(cli, ["data", "download", "--dir", str(tmp_path / "norb"), "--url",
                                      "http://127.0.0.1:9/", "--timeout", "-1"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Error: Invalid value for '--timeout': -1.0 is not in the range x>0" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "norb").exists()
