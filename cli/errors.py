"""Turn library errors into one-line CLI errors with exit status 2."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import click

from capsrobust.errors import CapsRobustError

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """A problem with the user's input or files: printed as one line, exit status 2."""

    exit_code = 2


class CapsRobustGroup(click.Group):
    """A Click group whose commands report :class:`CapsRobustError` as ``Error: ...`` + exit 2.

    Subgroups created with ``@group.group()`` inherit this class, so every command in the
    tree shares the same error contract without decorating each one.
    """

    group_class = type  # subgroups are CapsRobustGroup too

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CapsRobustError as exc:
            raise UserError(str(exc)) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise UserError(f"{exc.strerror}: {exc.filename}") from None


def reraise_as_user_error(func: F) -> F:
    """Decorator for code called outside a group's invoke (e.g. callbacks)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CapsRobustError as exc:
            raise UserError(str(exc)) from None

    return wrapper  # type: ignore[return-value]
