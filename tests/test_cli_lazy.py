"""The lazily loading command group: `capsrobust --help` without torch, every command's help intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from capsrobust_cli.data import SYNTH_COMMANDS
from capsrobust_cli.lazy import LazyCommand, load
from capsrobust_cli.main import COMMANDS, cli

HEAVY = ("torch", "torchattacks")

PROBE = """
import json, sys
from click.testing import CliRunner
from capsrobust_cli.main import cli

out = {}
for args in (["--help"], ["data", "--help"], ["bench", "--help"]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    out[" ".join(args)] = {"help": result.output, "heavy": [m for m in %r if m in sys.modules]}
ctx = cli.make_context("capsrobust", ["--help"], resilient_parsing=True)
for name in cli.list_commands(ctx):  # load everything, then the listing must read the same
    cli.get_command(ctx, name)
out["loaded"] = CliRunner().invoke(cli, ["--help"]).output
print(json.dumps(out))
""" % (HEAVY,)


@pytest.fixture(scope="module")
def probe() -> dict:
    """`capsrobust --help` (and data/bench --help) in a fresh interpreter, and what it imported."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_help_starts_without_torch(probe: dict) -> None:
    assert probe["--help"]["heavy"] == []
    assert "viewpoint-split" in probe["--help"]["help"] and "Commands:" in probe["--help"]["help"]


@pytest.mark.parametrize("group", ["data", "bench"])
def test_subgroup_help_starts_without_torch(probe: dict, group: str) -> None:
    assert probe[f"{group} --help"]["heavy"] == []


def test_listing_before_loading_equals_the_listing_after(probe: dict) -> None:
    assert probe["--help"]["help"] == probe["loaded"]


def _registered() -> list[tuple[str, LazyCommand]]:
    out = [(name, spec) for name, spec in COMMANDS.items()]
    out += [(f"{name} {child}", sub) for name, spec in COMMANDS.items() for child, sub in spec.children.items()]
    return out + [(f"data {name}", spec) for name, spec in SYNTH_COMMANDS.items()]


@pytest.mark.parametrize(("path", "spec"), _registered(), ids=[path for path, _ in _registered()])
def test_registered_help_line_is_the_commands_own(path: str, spec: LazyCommand) -> None:
    command = load(spec.target)
    assert spec.short_help == command.get_short_help_str(limit=10**6), \
        f"update the help line of `capsrobust {path}` in its registry"


def _all_paths() -> list[list[str]]:
    paths, ctx = [], click.Context(cli)
    for name in cli.list_commands(ctx):
        paths.append([name])
        command = cli.get_command(ctx, name)
        if isinstance(command, click.Group):
            paths += [[name, sub] for sub in command.list_commands(click.Context(command, parent=ctx))]
    return paths


def test_every_command_has_working_help() -> None:
    paths = _all_paths()
    assert len(paths) == 9 + 7 + 4  # commands, data subcommands, bench subcommands (edit when adding one)
    for path in paths:
        result = CliRunner().invoke(cli, [*path, "--help"], prog_name="capsrobust")
        assert result.exit_code == 0 and f"Usage: capsrobust {' '.join(path)}" in result.output, (path, result.output)


def test_unknown_command_is_still_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["nope"])
    assert result.exit_code == 2 and "No such command 'nope'" in result.output
