"""pyproject.toml lists every package, so a regular (non-editable) install ships all of them."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _listed_packages() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(config["packages"])


def _packages_on_disk() -> set[str]:
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "capsrobust").rglob("__init__.py")}
    found |= {"capsrobust_cli." + ".".join(init.parent.relative_to(ROOT / "cli").parts)
              for init in (ROOT / "cli").rglob("__init__.py") if init.parent != ROOT / "cli"}
    return found | {"capsrobust_cli"}


def test_every_package_is_listed_in_pyproject() -> None:
    missing = _packages_on_disk() - _listed_packages()
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_pyproject_lists_no_package_that_does_not_exist() -> None:
    stale = _listed_packages() - _packages_on_disk()
    assert not stale, f"pyproject.toml lists packages with no __init__.py: {sorted(stale)}"
