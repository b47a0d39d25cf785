"""``capsrobust data render|show|difficulty`` and ``capsrobust bench data``: the synthnorb commands.

Thin Click layer over :mod:`capsrobust.data.synthnorb`; the lead registers the module-level
commands ``render``, ``show``, ``difficulty`` (under ``data``) and ``bench_data`` (as ``bench data``).
Each command also converts library errors itself, so it behaves the same when invoked directly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from capsrobust.errors import ConfigError
from capsrobust_cli.errors import reraise_as_user_error

__all__ = ["bench_data", "difficulty", "render", "show"]


def _degree_list(text: str | None, name: str) -> list[int] | None:
    """Parse ``"0,20,40"`` into ints; ``None``/empty -> None (the full grid)."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    try:
        return [int(t) for t in items]
    except ValueError:
        raise ConfigError(f"--{name} {text!r} is not a comma-separated list of whole degrees; write e.g. 0,20,40") from None


_data_dir_option = click.option(
    "--data-dir", "--dir", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Directory with the six NORB-format .mat[.gz] files (synthnorb or smallNORB). Default: synthnorb from "
         "the cache, rendered on first use.",
)

RENDER_HELP = """\
Render synthnorb, the procedural NORB-protocol dataset, into DIR.

Five categories (animal, human, airplane, truck, car) x ten parametric toys (training toys 4, 6,
7, 8, 9; test toys 0, 1, 2, 3, 5), stereo 96x96 grayscale pairs under six lightings, written as
the six official-format .mat files plus synthnorb-manifest.json (seed, grid, SHA-256 of each
file). The same seed always gives byte-identical files.

Without --out the full dataset goes to the cache directory that every command uses when no
--data-dir is given (skipped if already there; --force renders again). Any azimuth (multiples
of 10) and elevation (multiples of 5, 0-85) can be rendered -- for viewpoint-distance experiments
beyond smallNORB's grid -- but a partial grid needs its own --out.

\b
Examples:
  capsrobust data render                                   # full set into the cache (minutes)
  capsrobust data render --out /tmp/tiny --azimuths 0,180 --elevations 30
  capsrobust data render --out ~/synth-high --elevations 75,80,85 --seed 1
"""


@click.command("render", help=RENDER_HELP)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory (created). Default: the synthnorb cache directory.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the toy shapes, aim jitter and noise.")
@click.option("--azimuths", metavar="LIST", default=None,
              help="Azimuths in degrees, comma-separated, multiples of 10 in 0-350. Default: 0,20,...,340.")
@click.option("--elevations", metavar="LIST", default=None,
              help="Elevations in degrees, comma-separated, multiples of 5 in 0-85. Default: 30,35,...,70.")
@click.option("--lightings", metavar="LIST", default=None, help="Lighting indices 0-5, comma-separated. Default: all six.")
@click.option("--force", is_flag=True, help="Render the cached default set again even if it is complete.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@reraise_as_user_error
def render(out: Path | None, seed: int, azimuths: str | None, elevations: str | None, lightings: str | None,
           force: bool, quiet: bool) -> None:
    """Render synthnorb (help text in RENDER_HELP)."""
    from capsrobust.data import synthnorb

    grid = synthnorb.make_grid(_degree_list(azimuths, "azimuths"), _degree_list(elevations, "elevations"),
                               _degree_list(lightings, "lightings"))
    start = time.perf_counter()
    if out is None:
        if grid != synthnorb.make_grid():
            raise ConfigError("a partial grid needs --out DIR; the default cache directory holds only the full dataset")
        target = synthnorb.default_dir(seed=seed)
        if synthnorb.is_complete(target, seed=seed) and not force:
            click.echo(f"synthnorb (seed {seed}) is already rendered in {target}; use --force to render it again")
            return
        out = synthnorb.ensure_rendered(seed=seed, progress=not quiet, force=True)
    else:
        out = synthnorb.render_dataset(out, seed=seed, azimuths=grid.azimuths, elevations=grid.elevations,
                                       lightings=grid.lightings, progress=not quiet)
    seconds = time.perf_counter() - start
    manifest = json.loads((out / synthnorb.MANIFEST_NAME).read_text())
    pairs = 2 * grid.pairs_per_split
    click.echo(f"synthnorb {manifest['generator_version']} seed {seed}: {pairs} stereo pairs in {seconds:.1f} s "
               f"({pairs / seconds:.0f} pairs/s) -> {out}")
    for name, entry in manifest["files"].items():
        click.echo(f"  {name}  sha256 {entry['sha256'][:16]}…  {entry['bytes']:,} bytes")


SHOW_HELP = """\
Draw a contact sheet of a NORB-format dataset to a PNG.

One row per toy (class x instance, training and test toys both, marked), one column per view;
the columns sweep azimuth, elevation and lighting together so one picture shows all three.
Left camera of each stereo pair. Use it to check that categories are recognisable and instances
differ -- for synthnorb, and for the official files too.

\b
Examples:
  capsrobust data show --out sheet.png                     # default synthnorb
  capsrobust data show --data-dir ~/smallnorb --columns 12 --out norb.png
"""


@click.command("show", help=SHOW_HELP)
@_data_dir_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("contact-sheet.png"),
              show_default=True, help="PNG file to write.")
@click.option("--columns", type=click.IntRange(1, 36), default=8, show_default=True, help="Views per row.")
@reraise_as_user_error
def show(data_dir: Path | None, out: Path, columns: int) -> None:
    """Contact sheet (help text in SHOW_HELP)."""
    from capsrobust.data.synthnorb.sheet import save_contact_sheet
    from capsrobust.reporting.dataset import write_dataset_provenance

    path = save_contact_sheet(data_dir, out, columns=columns)
    record = write_dataset_provenance(path.with_name(f"{path.stem}-provenance.json"), data_dir, columns=columns)
    click.echo(f"wrote {path} and {record.name}")


DIFFICULTY_HELP = """\
Measure how hard a NORB-format dataset is: 1-nearest-neighbour (L2) test error.

Features are what the models see at test time: 96->48 antialiased downsample, centre 32x32
crop, both stereo images concatenated (2048 values). Three protocols (Hinton et al. 2018, §5.1):
full (all training pairs -> all test pairs), azimuth (fit on azimuths 300-40°, test on familiar
and on novel azimuths) and elevation (fit on 30-40°, test on familiar and novel elevations).
LeCun et al. (2004) report 18.4 % k-NN error on real NORB. A model-free number: nothing here
can favour capsules or CNNs. Takes about a minute on the full dataset.

\b
Examples:
  capsrobust data difficulty                               # default synthnorb
  capsrobust data difficulty --out results/synthnorb       # + difficulty.md/.csv, provenance.json
  capsrobust data difficulty --data-dir ~/smallnorb
"""


@click.command("difficulty", help=DIFFICULTY_HELP)
@_data_dir_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write difficulty.md, difficulty.csv and provenance.json into this directory.")
@reraise_as_user_error
def difficulty(data_dir: Path | None, out: Path | None) -> None:
    """k-NN difficulty table (help text in DIFFICULTY_HELP)."""
    from capsrobust.data.synthnorb.difficulty import knn_difficulty
    from capsrobust.reporting.dataset import difficulty_markdown, write_difficulty_report

    started = time.perf_counter()
    table = knn_difficulty(data_dir)
    click.echo(difficulty_markdown(table))
    if out is not None:
        written = write_difficulty_report(out, table, data_dir, started=started)
        click.echo(f"wrote {', '.join(str(p) for p in written)}")


BENCH_DATA_HELP = """\
Time synthnorb rendering on a subset and extrapolate to the full dataset.

Renders both splits of a small grid (all 50 toys, every lighting) in memory and prints pairs/s,
CPU ms per pair and the extrapolated time of the full render (2 x 24,300 stereo pairs). On a
shared machine wall time overstates the cost; CPU time is shown beside it.

\b
Examples:
  capsrobust bench data                                    # 4 azimuths x 2 elevations
  capsrobust bench data --azimuths 0,20,40,60 --elevations 30,50,70 --json
"""


@click.command("data", help=BENCH_DATA_HELP)
@click.option("--azimuths", metavar="LIST", default="0,90,180,270", show_default=True, help="Azimuths timed (degrees).")
@click.option("--elevations", metavar="LIST", default="30,70", show_default=True, help="Elevations timed (degrees).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a markdown table.")
@reraise_as_user_error
def bench_data(azimuths: str, elevations: str, seed: int, as_json: bool) -> None:
    """Rendering speed (help text in BENCH_DATA_HELP)."""
    from capsrobust.data.synthnorb import make_grid
    from capsrobust.data.synthnorb.speed import bench_render
    from capsrobust.reporting import to_markdown

    grid = make_grid(_degree_list(azimuths, "azimuths"), _degree_list(elevations, "elevations"))
    table = bench_render(grid, seed=seed)
    if as_json:
        click.echo(json.dumps(table.to_dict(orient="records")[0], indent=2))
    else:
        click.echo(to_markdown(table, float_digits=2))
        row = table.iloc[0]
        click.echo(f"full render (48,600 pairs) ≈ {row['full_render_min']:.1f} min at {row['pairs_per_s']:.0f} pairs/s "
                   "(extrapolated from this subset; files add a few seconds)")
