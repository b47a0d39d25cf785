"""Download the six official smallNORB files, resumably and atomically.

Each file is fetched into ``<name>.part`` (resumed with an HTTP ``Range`` request if a partial
file is there and the server honours it), then renamed into place with ``os.replace`` once the
byte count matches the server's ``Content-Length``. A finished file is never re-downloaded.
Verification (gzip integrity and SHA-256) is the caller's next step: see
:func:`capsrobust.data.checksums.verify_files`.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from capsrobust.data.smallnorb import OFFICIAL_FILES
from capsrobust.errors import DataError

__all__ = ["OFFICIAL_BASE_URL", "download_official"]

OFFICIAL_BASE_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"

#: progress(file_name, bytes_done, bytes_total or None) is called as data arrives.
ProgressFn = Callable[[str, int, "int | None"], None]


def _fetch(url: str, dest: Path, progress: ProgressFn | None, timeout: float) -> None:
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # range not satisfiable: the partial file is already whole
            os.replace(part, dest)
            return
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL (--url) or try again later") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"{url}: cannot connect ({reason}); check your network or pass --url with a mirror") from None

    with response:
        resumed = response.status == 206
        if not resumed:
            start = 0  # the server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        done = start
        with open(part, "ab" if resumed else "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(dest.name, done, total)
    if total is not None and done != total:
        raise DataError(f"{url}: connection closed after {done} of {total} bytes; run the command again to resume")
    os.replace(part, dest)


def download_official(
    data_dir: str | os.PathLike[str],
    base_url: str = OFFICIAL_BASE_URL,
    *,
    progress: ProgressFn | None = None,
    timeout: float = 60.0,
) -> list[Path]:
    """Fetch the six official ``.mat.gz`` files into ``data_dir``; returns their paths.

    Files already complete in ``data_dir`` (plain or gzipped) are skipped; partial downloads resume.
    """
    directory = Path(data_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    paths = []
    for name in OFFICIAL_FILES:
        dest = directory / f"{name}.gz"
        if not (dest.exists() or (directory / name).exists()):
            _fetch(base + dest.name, dest, progress, timeout)
        paths.append(dest if dest.exists() else directory / name)
    return paths
