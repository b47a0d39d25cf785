"""Small functions with one job (issue 26): no function or method in ``capsrobust/`` or ``cli/`` is longer
than :data:`MAX_LINES` lines (``def`` line to last line, docstring included), read with :mod:`ast`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 100

#: Functions still longer, each with the reason it may be for now: ``path:qualified name`` -> why.
#: Keep this empty or shrinking; remove an entry when its function is split. (None left: training.train,
#: 174 lines, was split in its own change.)
TEMPORARY_EXCEPTIONS: dict[str, str] = {}


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.AST]]:
    """Every function and method in ``tree`` with its qualified name (``Class.method``, ``outer.inner``)."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((prefix + node.name, node))
            found += _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            found += _functions(node, f"{prefix}{node.name}.")
        else:
            found += _functions(node, prefix)
    return found


def _lengths() -> dict[str, int]:
    """``path:qualified name`` -> lines, for every function under capsrobust/ and cli/."""
    lengths = {}
    for package in ("capsrobust", "cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for name, node in _functions(tree):
                lengths[f"{path.relative_to(ROOT).as_posix()}:{name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_is_longer_than_the_limit() -> None:
    too_long = {name: n for name, n in _lengths().items() if n > MAX_LINES and name not in TEMPORARY_EXCEPTIONS}
    assert not too_long, "split these into functions with one job each:\n" + "\n".join(
        f"  {name}: {n} lines" for name, n in sorted(too_long.items(), key=lambda item: -item[1]))


def test_every_temporary_exception_is_still_needed_and_says_why() -> None:
    lengths = _lengths()
    stale = [name for name in TEMPORARY_EXCEPTIONS if lengths.get(name, 0) <= MAX_LINES]
    assert not stale, f"no longer too long (or gone); remove from TEMPORARY_EXCEPTIONS: {stale}"
    assert all(reason.strip() for reason in TEMPORARY_EXCEPTIONS.values())


def test_the_measure_counts_from_def_to_the_last_line() -> None:
    source = "class A:\n    def f(self):\n        '''doc'''\n        return 1\n\n\ndef g():\n    def h():\n        pass\n"
    lengths = {name: node.end_lineno - node.lineno + 1 for name, node in _functions(ast.parse(source))}
    assert lengths == {"A.f": 3, "g": 3, "g.h": 2}
