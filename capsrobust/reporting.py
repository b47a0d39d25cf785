"""Turn result tables (pandas DataFrames) into text for terminals and files."""

from __future__ import annotations

import math

import pandas as pd


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
