"""Progress output: a live bar on a terminal, plain lines in a log.

:func:`progress_bar` is the one way capsrobust shows progress. On a terminal it is a ``tqdm`` bar.
When the stream is not a terminal (CI, ``capsrobust study > log 2>&1``) a bar's carriage returns
and cursor-up escapes would fill the log with thousands of half-lines, so it writes one plain line
every ``every`` units instead (one per epoch, per stage, per attack cell...) and one when it ends,
with no ``\\r`` and no escape codes. ``enabled=False`` (``--no-progress``) writes nothing.

Example::

    with progress_bar(total=steps, desc="cnn synthnorb (stereo)", unit="step", every=steps_per_epoch) as bar:
        for step in range(steps):
            ...
            bar.update(1)
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["LineProgress", "is_terminal", "progress_bar"]


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an open interactive terminal (False for files, pipes, closed or fake streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class LineProgress:
    """The log form of a progress bar: the subset of tqdm's interface capsrobust uses, printed as plain lines.

    ``update`` writes ``DESC: N/TOTAL UNIT (P%), S s[, postfix]`` each time the count passes a
    multiple of ``every`` (``None``: only at the end); ``close`` writes the final count once, if it
    was not just written; ``write`` prints a message on its own line (to stdout, as ``tqdm.write``).
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", every: int | None = None,
                 initial: int = 0, enabled: bool = True, file: TextIO | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.every = every if every is None or every >= 1 else 1
        self.n = initial
        self.enabled = enabled
        self.file = file
        self.postfix = ""
        self._started = time.monotonic()
        self._last_written: int | None = initial if initial else None
        self._closed = False

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.every is not None and self.n // self.every > before // self.every:
            self._line()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def write(self, s: str, file: TextIO | None = None, end: str = "\n") -> None:
        print(s, file=file or sys.stdout, end=end, flush=True)

    def close(self) -> None:
        if not self._closed and self._last_written != self.n:
            self._line()
        self._closed = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> None:
        self._last_written = self.n
        if not self.enabled:
            return
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {count} {self.unit}{percent}, {time.monotonic() - self._started:.0f} s{postfix}",
              file=self.file or sys.stderr, flush=True)


def progress_bar(total: int | None, desc: str, *, unit: str = "it", enabled: bool = True, every: int | None = None,
                 initial: int = 0, file: TextIO | None = None, **tqdm_options: Any) -> Any:
    """A progress bar over ``total`` units: ``tqdm`` when ``file`` (default stderr) is a terminal, else a
    :class:`LineProgress` writing one line per ``every`` units and one at the end.

    ``enabled=False`` shows nothing either way. ``tqdm_options`` (``unit_scale``, ``leave``, ...) go
    to tqdm only. Both forms offer ``update``, ``set_postfix``, ``set_postfix_str``, ``write``,
    ``close``, ``n`` and ``with``.
    """
    stream = file or sys.stderr
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, file=stream,
                    dynamic_ncols=True, **tqdm_options)
    return LineProgress(total, desc, unit=unit, every=every, initial=initial, enabled=enabled, file=stream)
