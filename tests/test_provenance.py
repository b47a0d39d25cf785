"""Provenance: the commit a result was made at, and whether uncommitted code was involved."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from capsrobust.provenance import git_commit


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.md").write_text("| a |\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return tmp_path


def test_rewriting_results_does_not_mark_the_commit_dirty(repo: Path):
    (repo / "results" / "table.md").write_text("| b |\n")
    assert not git_commit(repo).endswith("+dirty")


def test_changed_code_marks_the_commit_dirty(repo: Path):
    (repo / "code.py").write_text("x = 2\n")
    assert git_commit(repo).endswith("+dirty")
