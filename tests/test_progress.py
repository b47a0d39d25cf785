"""Progress output: tqdm bars on a terminal, plain lines (no carriage returns, no escape codes) in a log."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from tqdm import tqdm

from capsrobust.progress import LineProgress, is_terminal, progress_bar
from capsrobust_cli.main import cli
from tests.conftest import write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def assert_plain(text: str) -> None:
    assert "\r" not in text and "\x1b[" not in text, repr(text[-300:])


def test_a_terminal_gets_a_tqdm_bar_and_a_log_gets_lines() -> None:
    terminal, log = FakeTerminal(), io.StringIO()
    bar = progress_bar(10, "demo", file=terminal)
    assert isinstance(bar, tqdm)
    bar.update(10)
    bar.close()
    assert "\r" in terminal.getvalue()  # a live bar redraws its line
    line_bar = progress_bar(10, "demo", file=log)
    assert isinstance(line_bar, LineProgress) and not is_terminal(log)


def test_a_log_gets_one_line_every_period_and_one_at_the_end() -> None:
    log = io.StringIO()
    with progress_bar(10, "train", unit="step", every=4, file=log) as bar:
        for step in range(10):
            bar.set_postfix(loss=f"{1 / (step + 1):.2f}")
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert [re.match(r"train: (\d+)/10 step", line).group(1) for line in lines] == ["4", "8", "10"]
    assert lines[0].endswith("loss=0.25") and "(100%)" in lines[-1]
    assert_plain(log.getvalue())


def test_the_end_line_is_not_repeated_and_a_disabled_bar_writes_nothing(capsys: pytest.CaptureFixture) -> None:
    log = io.StringIO()
    with progress_bar(3, "cells", every=1, file=log) as bar:
        bar.update(3)
    assert log.getvalue().count("cells: 3/3") == 1
    quiet = io.StringIO()
    with progress_bar(3, "cells", every=1, enabled=False, file=quiet) as bar:
        bar.update(3)
        bar.write("a message still shows")  # as tqdm.write: to stdout
    assert quiet.getvalue() == "" and capsys.readouterr().out == "a message still shows\n"


def test_unknown_total_and_closed_streams_are_handled() -> None:
    log = io.StringIO()
    with progress_bar(None, "file.mat.gz", unit="B", unit_scale=True, file=log) as bar:
        bar.update(100 - bar.n)
    assert log.getvalue().startswith("file.mat.gz: 100 B")
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed) and not is_terminal(object())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("progress") / "data", size=16)


def test_train_in_a_log_writes_plain_lines_per_epoch(data_dir: Path, tmp_path: Path) -> None:
    """CliRunner's streams are not terminals: the training bar becomes plain lines."""
    args = ["train", "--model", "cnn", "--data-dir", str(data_dir), "--steps", "6", "--batch-size", "8",
            "--eval-every", "3", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert_plain(result.output)
    progress = [line for line in result.stderr.splitlines() if re.match(r"cnn smallNORB \(stereo\): \d+/6 step", line)]
    assert progress and progress[-1].startswith("cnn smallNORB (stereo): 6/6 step (100%)")
    quiet = CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "quiet"), "--no-progress"])
    assert quiet.exit_code == 0 and " step (" not in quiet.output
    assert "validation_error=" in quiet.output  # the evaluation records are still printed


def test_the_study_in_a_log_has_no_nested_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole study (stage bars around training bars) on tiny data, as CI would log it."""
    from capsrobust.experiments import study
    from tests.test_study import TINY, TINY_VIEWS

    monkeypatch.setitem(study.STUDY_BUDGETS, "quick", TINY)
    data = write_dataset(tmp_path / "data", size=16, **TINY_VIEWS)
    result = CliRunner().invoke(cli, ["study", "--data-dir", str(data), "--out", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    assert_plain(result.output)
    stages = [line for line in result.stderr.splitlines() if re.match(r"(train|match|attack-\w+|viewpoint)-", line)]
    assert any(line.startswith("train-seed0: 4/4 task (100%)") for line in stages), stages
    assert any(line.startswith("viewpoint-azimuth: 1/1 task (100%)") for line in stages), stages
