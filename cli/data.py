"""``capsrobust data …``: inspect, verify and download the dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import pandas as pd

from capsrobust.data import smallnorb
from capsrobust.data.checksums import verify_files
from capsrobust.data.download import OFFICIAL_BASE_URL, download_official
from capsrobust_cli.lazy import LazyCommand, LazyGroup

DATA_HELP = """\
Inspect, verify and fetch the dataset.

capsrobust reads the official smallNORB files (plain or .gz) from any directory, or -- when no
directory is given -- the embedded synthnorb dataset from the user cache (rendered on first use).

\b
Examples:
  capsrobust data info                                # synthnorb, counts and checksums
  capsrobust data info --dir ~/smallnorb --mode mono
  capsrobust data verify --dir ~/smallnorb            # exit 1 if a checksum mismatches
  capsrobust data download --dir ~/smallnorb          # the six official .mat.gz files
"""


#: The synthnorb commands, loaded when used (capsrobust_cli/lazy.py; help lines checked by tests/test_cli_lazy.py).
SYNTH_COMMANDS = {
    "render": LazyCommand("capsrobust_cli.data_synth:render", "Render synthnorb, the procedural NORB-protocol "
                          "dataset, into DIR."),
    "show": LazyCommand("capsrobust_cli.data_synth:show", "Draw a contact sheet of a NORB-format dataset to a PNG."),
    "difficulty": LazyCommand("capsrobust_cli.data_synth:difficulty", "Measure how hard a NORB-format dataset is: "
                              "1-nearest-neighbour (L2) test error."),
}


@click.group(cls=LazyGroup, lazy_subcommands=SYNTH_COMMANDS, help=DATA_HELP)
def data() -> None:
    """Dataset commands (help text in DATA_HELP)."""


def _dir_option(required: bool = False):  # type: ignore[no-untyped-def]
    return click.option(
        "--dir", "--data-dir", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=required,
        default=None, help="Directory with the six smallNORB (or synthnorb) .mat[.gz] files." +
        ("" if required else " Default: synthnorb from the cache."),
    )


_mode_option = click.option(
    "--mode", type=click.Choice(smallnorb.MODES), default="stereo", show_default=True,
    help="stereo: both cameras as 2 channels of one example; mono: each camera a separate example.",
)


def _load_both(data_dir: Path | None, mode: str) -> dict[str, smallnorb.NorbSplit]:
    return {split: smallnorb.load_split(data_dir, split, mode) for split in smallnorb.SPLITS}


def _counts_table(splits: dict[str, smallnorb.NorbSplit]) -> pd.DataFrame:
    rows = []
    for name, split in splits.items():
        counts = split.meta["label"].value_counts().reindex(range(len(smallnorb.CLASS_NAMES)), fill_value=0)
        row = {"split": name}
        row.update({cls: int(counts[i]) for i, cls in enumerate(smallnorb.CLASS_NAMES)})
        row["total"] = len(split)
        row["instances"] = ",".join(map(str, sorted(split.meta["instance"].unique())))
        rows.append(row)
    return pd.DataFrame(rows)


def _manifest_checksums(directory: Path) -> dict[str, str] | None:
    """SHA-256 values from a synthnorb manifest beside the files, if there is one."""
    for manifest in sorted(directory.glob("*manifest.json")):
        try:
            content = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return None
        sums = content.get("sha256") or content.get("files")
        if isinstance(sums, dict):
            return {k: (v["sha256"] if isinstance(v, dict) else v) for k, v in sums.items()}
    return None


def _checksum_table(splits: dict[str, smallnorb.NorbSplit], *, record: bool) -> pd.DataFrame:
    checksums: dict[str, str] = {}
    for split in splits.values():
        checksums.update(split.checksums)
    first = next(iter(splits.values()))
    return verify_files(checksums, manifest=_manifest_checksums(first.source_dir), record=record)


@data.command()
@_dir_option()
@_mode_option
def info(data_dir: Path | None, mode: str) -> None:
    """Counts per class and split, instance sets, image size and checksums.

    \b
    Example:
      capsrobust data info --dir ~/smallnorb --mode mono
    """
    splits = _load_both(data_dir, mode)
    first = splits["training"]
    h, w = first.images.shape[-2:]
    click.echo(f"dataset: {first.dataset} ({mode}, {first.images.shape[1]} channel(s), {h}x{w})  dir: {first.source_dir}")
    click.echo(_counts_table(splits).to_markdown(index=False))
    click.echo()
    table = _checksum_table(splits, record=False)
    click.echo(table[["file", "sha256", "source", "status"]].to_markdown(index=False))


@data.command()
@_dir_option()
def verify(data_dir: Path | None) -> None:
    """Check structure and SHA-256 of all six files; exit status 1 on a mismatch.

    Structure: magic, dims, payload size, labels, instance sets and view ranges (a broken file
    is an error, exit 2). Checksums: against the official values where known (three files),
    else the values recorded on first verification (trust on first use, reported as such), or a
    synthnorb manifest.

    \b
    Example:
      capsrobust data verify --dir ~/smallnorb
    """
    splits = _load_both(data_dir, "stereo")
    table = _checksum_table(splits, record=True)
    click.echo(f"dataset: {splits['training'].dataset}  dir: {splits['training'].source_dir}")
    click.echo(table[["file", "sha256", "source", "status"]].to_markdown(index=False))
    mismatched = table[table["status"] == "MISMATCH"]
    if len(mismatched):
        click.echo(f"FAILED: {len(mismatched)} file(s) do not match their reference checksum: "
                   f"{', '.join(mismatched['file'])}; download them again", err=True)
        sys.exit(1)
    click.echo("OK: all files are structurally valid" +
               ("; checksums match" if (table["status"] == "ok").any() else ""))


@data.command()
@_dir_option(required=True)
@click.option("--url", default=OFFICIAL_BASE_URL, show_default=True, help="Base URL (a mirror) holding the .mat.gz files.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds to wait for the server.")
def download(data_dir: Path, url: str, timeout: float) -> None:
    """Fetch the six official smallNORB .mat.gz files (~250 MB), then verify them.

    Each file downloads into NAME.part and is renamed into place when complete, so an
    interrupted download resumes where it stopped when you run the command again.
    Exit status 1 if a checksum does not match.

    \b
    Example:
      capsrobust data download --dir ~/smallnorb
      capsrobust data download --dir ./norb --url http://mirror.example/norb/
    """
    from capsrobust.progress import progress_bar

    bars: dict[str, Any] = {}

    def progress(name: str, done: int, total: int | None) -> None:
        bar = bars.get(name)
        if bar is None:  # on a terminal a bar per file; in a log one line when the file is complete
            bar = bars[name] = progress_bar(total, name, unit="B", unit_scale=True, leave=True)
        bar.update(done - bar.n)

    try:
        download_official(data_dir, url, progress=progress, timeout=timeout)
    finally:
        for bar in bars.values():
            bar.close()
    click.echo(f"downloaded into {data_dir}; verifying")
    ctx = click.get_current_context()
    ctx.invoke(verify, data_dir=data_dir)


@data.command()
@click.argument("split_name", metavar="SPLIT", default="full")
@_dir_option()
@_mode_option
def splits(split_name: str, data_dir: Path | None, mode: str) -> None:
    """Sizes of the train / validation / test index sets of a viewpoint protocol.

    SPLIT is one of: full, azimuth, elevation. Validation holds out one training toy per
    class (never seen in training, like the test toys); checkpoints are matched on it.

    \b
    Example:
      capsrobust data splits azimuth --dir ~/smallnorb
    """
    from capsrobust.data.splits import get_split, split_indices

    protocol = get_split(split_name)  # fail fast on a bad name, before touching data
    train, test = (smallnorb.load_split(data_dir, s, mode) for s in smallnorb.SPLITS)
    sizes = split_indices(protocol.name, train.meta, test.meta).sizes()
    click.echo(f"dataset: {train.dataset} ({mode})  split: {protocol.name} -- {protocol.description}")
    click.echo(pd.DataFrame([sizes]).to_markdown(index=False))
