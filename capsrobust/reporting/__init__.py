"""Turn result tables (pandas DataFrames) into text for terminals and files, written atomically.

This module holds the shared pieces (markdown tables and documents, the sweep pivot, the atomic
writers of :mod:`capsrobust.files`); each command's report lives in its own submodule:
:mod:`~capsrobust.reporting.attacks` (``attack``), :mod:`~capsrobust.reporting.evaluation`
(``evaluate``), :mod:`~capsrobust.reporting.bench` (``bench models|learning|attacks``),
:mod:`~capsrobust.reporting.inspection` (``inspect``), :mod:`~capsrobust.reporting.viewpoint`
(``viewpoint-split``) and :mod:`~capsrobust.reporting.study` (``study``, built on the markdown/HTML
document model of :mod:`~capsrobust.reporting.document`); the figures are drawn by
:mod:`~capsrobust.reporting.plots` and :mod:`~capsrobust.reporting.inspect_plots`.
"""

from __future__ import annotations

import math

import pandas as pd

from capsrobust.files import atomic_write_bytes, atomic_write_text, write_csv, write_json

__all__ = ["atomic_write_bytes", "atomic_write_text", "markdown_report", "sweep_pivot", "to_markdown", "write_csv",
           "write_json"]


def _cell(value: object, float_digits: int) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.{float_digits}g}" if abs(value) >= 1e5 else f"{value:.{float_digits}f}".rstrip("0").rstrip(".")
    return str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame, float_digits: int = 2) -> str:
    """A GitHub-flavoured markdown table of ``table`` (no index; NaN as empty; no tabulate needed).

    Numbers are right-aligned and floats shown with ``float_digits`` decimals.
    """
    columns = [str(c) for c in table.columns]
    rows = [[_cell(v, float_digits) for v in record] for record in table.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        padded = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(cells, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(columns), rule] + [line(r) for r in rows])


# Files: written atomically by capsrobust.files (re-exported here, where reports have always found them).


def markdown_report(title: str, sections: list[tuple[str, str]], intro: str = "") -> str:
    """A markdown document: ``# title``, an optional intro paragraph, then ``## heading`` + body per section."""
    parts = [f"# {title}"] + ([intro.strip()] if intro.strip() else [])
    parts += [f"## {heading}\n\n{body.strip()}" for heading, body in sections]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------
# Adversarial sweeps (capsrobust.evaluation.robustness): terminal and file views.


def sweep_pivot(table: pd.DataFrame, value: str = "adversarial_error") -> pd.DataFrame:
    """Side-by-side view of a robustness sweep: one row per (attack, mode, eps), one ``value`` column per model.

    Rows keep the sweep's attack order (``worst-case`` last), untargeted before targeted; ``eps_std``
    (ε in per-image-standardised units) sits next to ``eps``.
    """
    models = list(dict.fromkeys(table.model))
    attacks = list(dict.fromkeys(table.attack))
    modes = [m for m in ("untargeted", "targeted") if m in set(table["mode"])]
    wide = table.pivot_table(index=["attack", "mode", "eps"], columns="model", values=value, sort=False)
    eps_std = table.groupby(["attack", "mode", "eps"], sort=False)["eps_std"].first()
    wide = wide.reindex(columns=models)
    wide.insert(0, "eps_std", eps_std)
    wide = wide.reset_index()
    wide["attack"] = pd.Categorical(wide["attack"], attacks, ordered=True)
    wide["mode"] = pd.Categorical(wide["mode"], modes, ordered=True)
    wide = wide.sort_values(["mode", "attack", "eps"], kind="stable").reset_index(drop=True)
    wide["attack"], wide["mode"] = wide["attack"].astype(str), wide["mode"].astype(str)
    wide.columns.name = None
    return wide
