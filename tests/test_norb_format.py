"""The NORB binary matrix format: round trips, a hand-assembled header, and corrupt files."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from capsrobust.data import norb_format
from capsrobust.errors import DataError

DTYPES = [np.uint8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(7,), (5, 4), (3, 2, 5), (4, 2, 6, 6), (2, 1, 3, 2, 2)]


@pytest.mark.parametrize("suffix", [".mat", ".mat.gz"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_preserves_values_shape_and_dtype(tmp_path: Path, suffix: str, dtype: type, shape: tuple) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = tmp_path / f"x{suffix}"
    norb_format.write(path, array)
    back = norb_format.read(path)
    assert back.shape == shape and back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, array)


def test_reader_parses_a_header_assembled_byte_by_byte(tmp_path: Path) -> None:
    # uint8 magic 0x1E3D4C55 little-endian, ndim 4, dims 2 1 3 2 -> 24-byte header, 12 bytes payload.
    header = bytes([0x55, 0x4C, 0x3D, 0x1E, 4, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0])
    payload = bytes(range(12))
    (tmp_path / "dat.mat").write_bytes(header + payload)
    array = norb_format.read(tmp_path / "dat.mat")
    assert array.shape == (2, 1, 3, 2) and array.dtype == np.uint8
    assert array.reshape(-1).tolist() == list(range(12))


def test_writer_emits_the_official_int32_header_for_a_label_vector(tmp_path: Path) -> None:
    # cat files: int32 magic 0x1E3D4C54, ndim 1, dims stored as (N, 1, 1): a 20-byte header.
    norb_format.write(tmp_path / "cat.mat", np.array([0, 4, 2], dtype=np.int32))
    raw = (tmp_path / "cat.mat").read_bytes()
    assert raw[:20] == bytes([0x54, 0x4C, 0x3D, 0x1E, 1, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0])
    assert raw[20:] == bytes([0, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0])


def test_gzip_output_is_byte_identical_across_writes(tmp_path: Path) -> None:
    array = np.arange(1000, dtype=np.int32)
    norb_format.write(tmp_path / "a.mat.gz", array)
    norb_format.write(tmp_path / "b.mat.gz", array)
    assert (tmp_path / "a.mat.gz").read_bytes() == (tmp_path / "b.mat.gz").read_bytes()


def test_write_rejects_dtypes_the_format_cannot_store(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="int64"):
        norb_format.write(tmp_path / "x.mat", np.zeros(3, dtype=np.int64))


def _uint8_file(tmp_path: Path, name: str = "dat.mat") -> Path:
    path = tmp_path / name
    norb_format.write(path, np.arange(60, dtype=np.uint8).reshape(3, 2, 5, 2))
    return path


def test_unknown_magic_names_the_file(tmp_path: Path) -> None:
    path = _uint8_file(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[0:4] = struct.pack("<i", 0x12345678)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"dat\.mat: unknown magic number 0x12345678"):
        norb_format.read(path)


def test_truncated_payload_is_reported_with_sizes(tmp_path: Path) -> None:
    path = _uint8_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated payload.*need 60 bytes but the file holds 53"):
        norb_format.read(path)


def test_truncated_gzip_payload_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "dat.mat.gz"
    header = struct.pack("<iiiiii", 0x1E3D4C55, 4, 3, 2, 5, 2)
    path.write_bytes(gzip.compress(header + bytes(40), mtime=0))  # 40 of 60 payload bytes
    with pytest.raises(DataError, match="truncated payload"):
        norb_format.read(path)


def test_oversized_payload_is_reported(tmp_path: Path) -> None:
    for name in ("dat.mat", "dat.mat.gz"):
        path = tmp_path / name
        header = struct.pack("<iiiiii", 0x1E3D4C55, 4, 3, 2, 5, 2)
        body = header + bytes(61)
        path.write_bytes(gzip.compress(body, mtime=0) if name.endswith(".gz") else body)
        with pytest.raises(DataError, match="oversized|longer than the header"):
            norb_format.read(path)


def test_truncated_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "cat.mat"
    path.write_bytes(struct.pack("<ii", 0x1E3D4C54, 1) + b"\x01\x00")
    with pytest.raises(DataError, match="cat.mat: truncated header"):
        norb_format.read(path)


def test_file_that_is_not_gzip_at_all_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "info.mat.gz"
    path.write_bytes(b"this is not gzip data" * 10)
    with pytest.raises(DataError, match="info.mat.gz: .*gzip"):
        norb_format.read(path)


def test_corrupted_gzip_stream_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "dat.mat.gz"
    rng = np.random.default_rng(0)
    norb_format.write(path, rng.integers(0, 255, (50, 2, 16, 16), dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)  # zero a block of compressed data
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"dat\.mat\.gz: .*(corrupt|CRC|gzip|ended)"):
        norb_format.read(path)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        norb_format.read(tmp_path / "nope.mat")


def test_reading_a_gzip_file_does_not_hold_two_copies_in_memory(tmp_path: Path) -> None:
    # 24 MB payload: a reader that decompresses to bytes and then copies would peak near 48 MB.
    array = np.zeros((3000, 2, 64, 64), dtype=np.uint8)
    path = tmp_path / "big.mat.gz"
    norb_format.write(path, array)
    tracemalloc.start()
    try:
        back = norb_format.read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert back.nbytes == array.nbytes
    assert peak < 1.25 * array.nbytes, f"peak {peak / 1e6:.1f} MB for a {array.nbytes / 1e6:.1f} MB array"
