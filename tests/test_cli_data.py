"""`capsrobust data …` through Click's CliRunner: output, exit codes, bad inputs, download."""

from __future__ import annotations

import gzip
import http.server
import shutil
import struct
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from click.testing import CliRunner, Result

from capsrobust.data import checksums, norb_format
from capsrobust.data.smallnorb import OFFICIAL_FILES, OFFICIAL_PREFIX
from capsrobust_cli.main import cli
from tests.conftest import make_split_arrays, write_dataset


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """Exit status 2, a single `Error: …` line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_teaches_the_question_and_the_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "EM routing" in result.output and "data" in result.output and "Examples" in result.output


def table_row(output: str, first_cell: str) -> list[str]:
    """Cells of the markdown table row whose first cell is ``first_cell``."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def test_info_counts_examples_per_class_and_split(norb_dir: Path) -> None:
    result = run("data", "info", "--dir", str(norb_dir))
    assert result.exit_code == 0, result.output
    assert "dataset: smallNORB (stereo" in result.output
    n_per_class = 5 * 2 * 2 * 2  # instances × elevations × azimuths × lightings
    assert table_row(result.output, "training") == ["training"] + [str(n_per_class)] * 5 + ["200", "4,6,7,8,9"]
    assert table_row(result.output, "testing")[-1] == "0,1,2,3,5"


def test_info_in_mono_mode_doubles_the_examples(norb_dir: Path) -> None:
    mono = run("data", "info", "--dir", str(norb_dir), "--mode", "mono")
    assert mono.exit_code == 0 and "(mono, 1 channel" in mono.output
    assert table_row(mono.output, "testing")[-2] == "400"


def test_info_does_not_record_checksums(norb_dir: Path) -> None:
    run("data", "info", "--dir", str(norb_dir))
    assert checksums.load_recorded() == {}


def test_verify_flags_files_that_differ_from_the_official_checksums(norb_dir: Path) -> None:
    result = run("data", "verify", "--dir", str(norb_dir))
    assert result.exit_code == 1
    assert "MISMATCH" in result.output and "FAILED: 3 file(s)" in result.output


def test_verify_records_unknown_checksums_then_checks_them(norb_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = {name: checksums.sha256_uncompressed(norb_dir / name) for name in OFFICIAL_FILES}
    monkeypatch.setattr(checksums, "KNOWN_SHA256", {n: local[n] for n in list(checksums.KNOWN_SHA256)})
    first = run("data", "verify", "--dir", str(norb_dir))
    assert first.exit_code == 0, first.output
    assert first.output.count("recorded now") == 3 and first.output.count("| official |") == 3
    second = run("data", "verify", "--dir", str(norb_dir))
    assert second.output.count("| recorded |") == 3 and "recorded now" not in second.output

    # A file changed after its checksum was recorded is now caught.
    _, cat, _ = make_split_arrays("training")
    norb_format.write(norb_dir / f"{OFFICIAL_PREFIX['training']}-training-cat.mat", (cat + 1) % 5)
    third = run("data", "verify", "--dir", str(norb_dir))
    assert third.exit_code == 1 and "training-cat.mat" in third.output.split("FAILED")[-1]


def test_splits_reports_index_set_sizes(norb_dir: Path) -> None:
    result = run("data", "splits", "azimuth", "--dir", str(norb_dir))
    assert result.exit_code == 0, result.output
    assert "split: azimuth" in result.output and "test_novel" in result.output


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line, exit 2, no traceback.


def test_missing_directory(tmp_path: Path) -> None:
    assert_one_line_error(run("data", "info", "--dir", str(tmp_path / "nowhere")), "does not exist")


def test_missing_one_file(norb_dir: Path) -> None:
    (norb_dir / f"{OFFICIAL_PREFIX['training']}-training-dat.mat").unlink()
    assert_one_line_error(run("data", "info", "--dir", str(norb_dir)), "missing", "training-dat.mat")


def test_wrong_magic(norb_dir: Path) -> None:
    path = norb_dir / f"{OFFICIAL_PREFIX['testing']}-testing-dat.mat"
    raw = bytearray(path.read_bytes())
    raw[:4] = struct.pack("<I", 0xDEADBEEF)
    path.write_bytes(bytes(raw))
    assert_one_line_error(run("data", "verify", "--dir", str(norb_dir)), "testing-dat.mat", "unknown magic")


def test_truncated_dat(norb_dir: Path) -> None:
    path = norb_dir / f"{OFFICIAL_PREFIX['training']}-training-dat.mat"
    path.write_bytes(path.read_bytes()[:-100])
    assert_one_line_error(run("data", "info", "--dir", str(norb_dir)), "training-dat.mat", "truncated")


def test_corrupt_gz(norb_gz_dir: Path) -> None:
    path = norb_gz_dir / f"{OFFICIAL_PREFIX['testing']}-testing-info.mat.gz"
    path.write_bytes(path.read_bytes()[:30])
    assert_one_line_error(run("data", "info", "--dir", str(norb_gz_dir)), "testing-info.mat.gz")


def test_labels_out_of_range(norb_dir: Path) -> None:
    _, cat, _ = make_split_arrays("testing")
    cat[0] = -1
    norb_format.write(norb_dir / f"{OFFICIAL_PREFIX['testing']}-testing-cat.mat", cat)
    assert_one_line_error(run("data", "info", "--dir", str(norb_dir)), "label -1 out of range")


def test_info_cat_length_mismatch(norb_dir: Path) -> None:
    _, cat, _ = make_split_arrays("training")
    norb_format.write(norb_dir / f"{OFFICIAL_PREFIX['training']}-training-cat.mat", cat[:-3])
    assert_one_line_error(run("data", "info", "--dir", str(norb_dir)), "disagree in length")


def test_unknown_split(norb_dir: Path) -> None:
    assert_one_line_error(run("data", "splits", "sideways", "--dir", str(norb_dir)), "unknown split 'sideways'", "azimuth")


# ---------------------------------------------------------------------------------------------
# Download from a local HTTP server (never the internet).


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range `Range: bytes=N-` support, logging what was asked."""

    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        RangeHandler.requests.append((self.path, self.headers.get("Range")))
        range_header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not range_header or not path.is_file():
            return super().send_head()
        start = int(range_header.removeprefix("bytes=").rstrip("-"))
        data = path.read_bytes()
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        import io

        return io.BytesIO(data[start:])


@pytest.fixture
def server(norb_gz_dir: Path) -> Iterator[tuple[str, Path]]:
    handler = lambda *a, **k: RangeHandler(*a, directory=str(norb_gz_dir), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", norb_gz_dir
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def served_checksums_are_official(norb_gz_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the generated files are the official ones (their checksums become the known values)."""
    known = {name: checksums.sha256_uncompressed(norb_gz_dir / f"{name}.gz") for name in checksums.KNOWN_SHA256}
    monkeypatch.setattr(checksums, "KNOWN_SHA256", known)


def test_download_fetches_all_six_files_and_verifies(
    server: tuple[str, Path], tmp_path: Path, served_checksums_are_official: None
) -> None:
    url, source = server
    dest = tmp_path / "downloaded"
    result = run("data", "download", "--dir", str(dest), "--url", url)
    assert result.exit_code == 0, result.output
    for name in OFFICIAL_FILES:
        assert (dest / f"{name}.gz").read_bytes() == (source / f"{name}.gz").read_bytes()
    assert not list(dest.glob("*.part"))
    assert result.output.count("| ok ") + result.output.count("| ok |") >= 3 and "OK:" in result.output


def test_download_resumes_a_partial_file(
    server: tuple[str, Path], tmp_path: Path, served_checksums_are_official: None
) -> None:
    url, source = server
    dest = tmp_path / "resumed"
    dest.mkdir()
    name = f"{OFFICIAL_FILES[0]}.gz"
    whole = (source / name).read_bytes()
    (dest / f"{name}.part").write_bytes(whole[:100])
    result = run("data", "download", "--dir", str(dest), "--url", url)
    assert result.exit_code == 0, result.output
    assert (dest / name).read_bytes() == whole
    assert (f"/{name}", "bytes=100-") in RangeHandler.requests


def test_download_skips_files_already_complete(
    server: tuple[str, Path], tmp_path: Path, served_checksums_are_official: None
) -> None:
    url, source = server
    dest = tmp_path / "partial_set"
    dest.mkdir()
    shutil.copy(source / f"{OFFICIAL_FILES[1]}.gz", dest)
    assert run("data", "download", "--dir", str(dest), "--url", url).exit_code == 0
    assert f"/{OFFICIAL_FILES[1]}.gz" not in [path for path, _ in RangeHandler.requests]


def test_download_reports_checksum_mismatch_with_exit_1(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server  # the generated files are not the official ones
    result = run("data", "download", "--dir", str(tmp_path / "d"), "--url", url)
    assert result.exit_code == 1 and "MISMATCH" in result.output


def test_download_from_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    result = run("data", "download", "--dir", str(tmp_path / "d"), "--url", "http://127.0.0.1:9/", "--timeout", "2")
    assert_one_line_error(result, "cannot connect")


def test_download_of_a_missing_file_names_the_url(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    assert_one_line_error(run("data", "download", "--dir", str(tmp_path / "d"), "--url", url + "nothing/"), "HTTP 404")


def test_gz_served_file_is_valid_gzip(norb_gz_dir: Path) -> None:
    # Guard for the fixtures above: what the server sends is real gzip in the official format.
    with gzip.open(norb_gz_dir / f"{OFFICIAL_FILES[1]}.gz") as f:
        assert struct.unpack("<i", f.read(4))[0] == 0x1E3D4C54
    assert np.array_equal(norb_format.read(norb_gz_dir / f"{OFFICIAL_FILES[1]}.gz"), make_split_arrays("training")[1])
