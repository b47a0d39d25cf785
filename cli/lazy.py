"""A Click group that imports each subcommand's module only when that subcommand is used.

The pattern of the Click documentation ("Complex Applications", lazily loading subcommands):
the group knows its subcommands by name and import path (``"capsrobust_cli.attack:attack"``)
and imports one in :meth:`get_command`. Click's own help listing would still import every
subcommand to ask for its one-line help, so each entry carries that line too, and
:meth:`format_commands` prints it from the registry: ``capsrobust --help`` imports no command
module, hence neither torch nor torchattacks. (``tests/test_cli_lazy.py`` checks that every
registered line is the line the loaded command gives.)

A registered group may name children to attach when it is loaded (``children``): lazily if it is
itself a :class:`LazyGroup`, else by importing them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import click

from capsrobust_cli.errors import CapsRobustGroup

__all__ = ["LazyCommand", "LazyGroup", "load"]


@dataclass(frozen=True)
class LazyCommand:
    """Where a subcommand lives (``module:attribute``), its one-line help, and (for a group) children."""

    target: str
    short_help: str
    children: dict[str, "LazyCommand"] = field(default_factory=dict)


def load(target: str) -> click.Command:
    """Import ``module:attribute`` and return the Click command it names."""
    module_name, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{target} is a {type(command).__name__}, not a Click command")
    return command


class LazyGroup(CapsRobustGroup):
    """A :class:`CapsRobustGroup` whose ``lazy_subcommands`` (name -> :class:`LazyCommand`) load on first use."""

    def __init__(self, *args: Any, lazy_subcommands: dict[str, LazyCommand] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands: dict[str, LazyCommand] = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_subcommands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_subcommands:
            spec = self.lazy_subcommands[cmd_name]
            command = load(spec.target)
            for name, child in spec.children.items():
                if not isinstance(command, click.Group):
                    raise TypeError(f"{spec.target} is not a group; it cannot take subcommand {name}")
                if isinstance(command, LazyGroup):
                    command.lazy_subcommands.setdefault(name, child)
                elif name not in command.commands:
                    command.add_command(load(child.target), name)
            self.add_command(command, cmd_name)  # loaded once per process
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's listing, with the registered help line for subcommands not loaded yet (no import)."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is None:
                line = click.Command(name, help=self.lazy_subcommands[name].short_help).get_short_help_str(limit)
                rows.append((name, line))
            elif not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
