"""A small document model written two ways: GitHub markdown and one self-contained HTML page.

A :class:`Document` is a list of blocks -- headings, paragraphs, bullet lists, tables
(DataFrames), figures (PNG files) and preformatted text. :meth:`Document.markdown` links the
figures by relative path; :meth:`Document.html` embeds them as base64 PNG, so the page opens in a
browser offline with nothing beside it. Inline ``**bold**`` and ```code``` work in both.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["Document"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; line-height: 1.45; color: #1b1b1b; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { background: #f5f5f5; border-radius: 3px; }
code { padding: 0 .2em; }
pre { padding: .6em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: .6em 1em; font-weight: bold; }
"""


def _inline_html(text: str) -> str:
    """Escape ``text`` and turn ``**bold**`` and ```code``` into tags."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


@dataclass
class Document:
    """Blocks in order; build with the methods below, then write :meth:`markdown` / :meth:`html`."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> "Document":
        self.blocks.append(("heading", (level, text)))
        return self

    def paragraph(self, text: str) -> "Document":
        self.blocks.append(("paragraph", text))
        return self

    def banner(self, text: str) -> "Document":
        """A highlighted paragraph (the smoke-run warning)."""
        self.blocks.append(("banner", text))
        return self

    def bullets(self, items: list[str]) -> "Document":
        self.blocks.append(("bullets", list(items)))
        return self

    def table(self, table: pd.DataFrame, float_digits: int = 2) -> "Document":
        self.blocks.append(("table", (table, float_digits)))
        return self

    def figure(self, path: str | os.PathLike[str], caption: str) -> "Document":
        """A PNG already written to ``path`` (linked relative to the markdown file, embedded in HTML)."""
        self.blocks.append(("figure", (Path(path), caption)))
        return self

    def preformatted(self, text: str) -> "Document":
        self.blocks.append(("pre", text))
        return self

    def markdown(self, relative_to: str | os.PathLike[str]) -> str:
        """GitHub markdown; figure paths relative to the directory ``relative_to``."""
        from capsrobust.reporting import to_markdown

        parts = [f"# {self.title}"]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                parts.append(f"{'#' * level} {text}")
            elif kind == "paragraph":
                parts.append(value)
            elif kind == "banner":
                parts.append(f"> **{value}**")
            elif kind == "bullets":
                parts.append("\n".join(f"- {item}" for item in value))
            elif kind == "table":
                table, digits = value
                parts.append(to_markdown(table, digits))
            elif kind == "figure":
                path, caption = value
                parts.append(f"![{caption}]({Path(os.path.relpath(path, relative_to)).as_posix()})\n\n*{caption}*")
            elif kind == "pre":
                parts.append(f"```\n{value}\n```")
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        """One HTML page, figures embedded as base64 PNG, no external resources."""
        from capsrobust.reporting import _cell

        body = [f"<h1>{_inline_html(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                body.append(f"<h{level}>{_inline_html(text)}</h{level}>")
            elif kind == "paragraph":
                body.append(f"<p>{_inline_html(value)}</p>")
            elif kind == "banner":
                body.append(f'<p class="banner">{_inline_html(value)}</p>')
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in value) + "</ul>")
            elif kind == "table":
                table, digits = value
                numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
                rows = []
                for record in table.itertuples(index=False):
                    cells = "".join(
                        f'<td class="num">{html.escape(_cell(v, digits).replace(chr(92) + "|", "|"))}</td>' if num
                        else f"<td>{html.escape(_cell(v, digits).replace(chr(92) + '|', '|'))}</td>"
                        for v, num in zip(record, numeric))
                    rows.append(f"<tr>{cells}</tr>")
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
            elif kind == "figure":
                path, caption = value
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_inline_html(caption)}</figcaption></figure>")
            elif kind == "pre":
                body.append(f"<pre>{html.escape(value)}</pre>")
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                f"<title>{html.escape(self.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
                + "\n".join(body) + "\n</body>\n</html>\n")
