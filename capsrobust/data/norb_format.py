"""Read and write the NORB binary matrix format (``*-dat.mat``, ``*-cat.mat``, ``*-info.mat``).

Layout (REFERENCE.md §1; LeCun et al.'s NORB documentation): a header of little-endian int32
words -- ``magic``, ``ndim``, then ``max(3, ndim)`` dimensions (unused trailing dimensions are
stored as 1) -- followed by the row-major payload in the element type the magic names.
Files may be gzip-compressed (``.gz`` suffix); both forms are read the same way.

Reading streams the payload straight into a preallocated array (``readinto`` in chunks), so a
450 MB ``dat`` file costs one copy of its size in memory, never two. Every failure is a
:class:`~capsrobust.errors.DataError` whose one-line message names the file and the problem.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from capsrobust.errors import DataError

__all__ = ["MAGIC_TO_DTYPE", "Header", "read", "read_header", "write"]

#: Magic number -> element type (little-endian), as in the NORB documentation.
MAGIC_TO_DTYPE: dict[int, np.dtype] = {
    0x1E3D4C51: np.dtype("<f4"),  # single-precision float
    0x1E3D4C53: np.dtype("<f8"),  # double-precision float
    0x1E3D4C54: np.dtype("<i4"),  # int32
    0x1E3D4C55: np.dtype("u1"),  # uint8
    0x1E3D4C56: np.dtype("<i2"),  # int16
}
_DTYPE_TO_MAGIC = {dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype: magic
                   for magic, dtype in MAGIC_TO_DTYPE.items()}

_MAX_NDIM = 32  # far above anything real; guards against garbage headers
_CHUNK = 1 << 20  # bytes per readinto call: gzip materialises each chunk (twice), so keep it small


@dataclass(frozen=True)
class Header:
    """A parsed header: element type, array shape, and the header's size in bytes."""

    dtype: np.dtype
    shape: tuple[int, ...]
    header_bytes: int

    @property
    def payload_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


def _open(path: Path) -> BinaryIO:
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path or run `capsrobust data download`")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a NORB .mat file")
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _parse_header(stream: BinaryIO, path: Path) -> Header:
    head = _read_exactly(stream, 8)
    if len(head) < 8:
        raise DataError(f"{path}: truncated header ({len(head)} bytes); the file is incomplete, download it again")
    magic, ndim = struct.unpack("<ii", head)
    dtype = MAGIC_TO_DTYPE.get(magic & 0xFFFFFFFF)
    if dtype is None:
        raise DataError(
            f"{path}: unknown magic number 0x{magic & 0xFFFFFFFF:08X}; not a NORB matrix file "
            f"(expected one of {', '.join(f'0x{m:08X}' for m in MAGIC_TO_DTYPE)})"
        )
    if not 0 <= ndim <= _MAX_NDIM:
        raise DataError(f"{path}: invalid number of dimensions {ndim} in header; the file is corrupt")
    stored = max(3, ndim)
    raw = _read_exactly(stream, 4 * stored)
    if len(raw) < 4 * stored:
        raise DataError(f"{path}: truncated header; the file is incomplete, download it again")
    dims = struct.unpack(f"<{stored}i", raw)
    if any(d < 0 for d in dims):
        raise DataError(f"{path}: negative dimension in header {dims}; the file is corrupt")
    return Header(dtype=dtype, shape=tuple(dims[:ndim]), header_bytes=8 + 4 * stored)


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse only the header of a NORB matrix file (plain or ``.gz``)."""
    path = Path(path)
    try:
        with _open(path) as stream:
            return _parse_header(stream, path)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read header ({_describe(exc)}); the file is corrupt, download it again") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, gzip.BadGzipFile):
        return f"not a valid gzip file: {exc}"
    if isinstance(exc, EOFError):
        return "compressed stream ended early"
    if isinstance(exc, zlib.error):
        return f"corrupt compressed data: {exc}"
    return str(exc) or type(exc).__name__


def read(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a NORB matrix file (plain or ``.gz``) into a native-endian numpy array.

    Returns an array of the dtype the magic names and the shape the header gives
    (e.g. ``(24300, 2, 96, 96)`` uint8 for smallNORB ``dat``, ``(24300,)`` int32 for ``cat``,
    ``(24300, 4)`` int32 for ``info``). Raises :class:`DataError` naming the file if the magic
    is unknown, the payload is truncated or longer than the header says, or gzip data is corrupt.
    """
    path = Path(path)
    try:
        with _open(path) as stream:
            header = _parse_header(stream, path)
            if not _is_gzip(path):
                # Plain files: compare sizes before allocating anything.
                actual = path.stat().st_size - header.header_bytes
                if actual != header.payload_bytes:
                    raise DataError(_size_message(path, header, actual))
            out = np.empty(header.shape, dtype=header.dtype)
            view = memoryview(out.reshape(-1).view(np.uint8))
            filled = 0
            while filled < header.payload_bytes:
                n = stream.readinto(view[filled : filled + _CHUNK])  # type: ignore[attr-defined]
                if not n:
                    break
                filled += n
            if filled < header.payload_bytes:
                raise DataError(_size_message(path, header, filled))
            if stream.read(1):
                raise DataError(
                    f"{path}: payload is longer than the header's dims {header.shape} say; "
                    "the file is corrupt or not a NORB matrix, download it again"
                )
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: {_describe(exc)}; the file is corrupt, download it again") from None
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def _size_message(path: Path, header: Header, actual: int) -> str:
    kind = "truncated" if actual < header.payload_bytes else "oversized"
    return (
        f"{path}: {kind} payload: header dims {header.shape} ({header.dtype}) need "
        f"{header.payload_bytes} bytes but the file holds {actual}; download it again"
    )


def write(path: str | os.PathLike[str], array: np.ndarray, *, compresslevel: int = 6) -> None:
    """Write ``array`` as a NORB matrix file; gzip-compressed if ``path`` ends in ``.gz``.

    The element type must be one NORB knows (uint8, int16, int32, float32, float64).
    Written atomically (temporary file in the same directory, then ``os.replace``) and
    deterministically: gzip output carries no timestamp or file name, so the same array
    always gives the same bytes.
    """
    path = Path(path)
    array = np.asarray(array)
    key = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    magic = _DTYPE_TO_MAGIC.get(key)
    if magic is None:
        raise TypeError(f"NORB format cannot store dtype {array.dtype}; use uint8, int16, int32, float32 or float64")
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    header = struct.pack(f"<ii{len(dims)}i", magic, array.ndim, *dims)
    payload = np.ascontiguousarray(array, dtype=key)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            if _is_gzip(path):
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) as gz:
                    gz.write(header)
                    gz.write(memoryview(payload.reshape(-1).view(np.uint8)))
            else:
                raw.write(header)
                raw.write(memoryview(payload.reshape(-1).view(np.uint8)))
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
