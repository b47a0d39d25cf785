"""``capsrobust evaluate``: test error of trained checkpoints, side by side, with learning curves."""

from __future__ import annotations

import time
from pathlib import Path

import click

from capsrobust.evaluation.checkpoint_eval import BREAKDOWNS

EVALUATE_HELP = """\
Test error of one or more CHECKPOINTs (familiar and novel test sets for split runs).

Each checkpoint is scored on the data it was trained on (the same bytes; for synthnorb the same
recipe -- generator version, seed, grid -- within 1 grey level of a fresh render; anything else is
refused), centre crop by default or the paper's 13-crop test with --multi-crop. Several
checkpoints make one side-by-side table. With --out the table is also written as markdown and
CSV, beside provenance.json (command, commit, seed, dataset and its checksum, SHA-256 of each
checkpoint), learning-curves.png (from each run directory's metrics.jsonl) and time-to-error.png
(validation error against training wall time). --by breaks the test error down by test toy
(instance), lighting, elevation or azimuth, one column per checkpoint (test-error-by-BY.md/.csv);
--confusion adds each checkpoint's confusion matrix (confusion.md/.csv) and, with --by, one row
per true class and group, e.g. per test toy (confusion-by-BY.md/.csv).

\b
Examples:
  capsrobust evaluate runs/capsules-small-full-seed0/best.pt
  capsrobust evaluate runs/caps/best.pt runs/cnn/best.pt --multi-crop --out results/train
  capsrobust evaluate runs/caps-az/matched.pt --split azimuth
  capsrobust evaluate runs/caps/best.pt runs/cnn/best.pt --by instance --by lighting
  capsrobust evaluate runs/caps/best.pt --confusion --by instance
"""


@click.command(help=EVALUATE_HELP)
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--split", type=str, default=None, help="Viewpoint protocol [default: the one each was trained on].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--multi-crop", is_flag=True, help="The paper's 13-crop test instead of the centre crop.")
@click.option("--both-crops", is_flag=True, help="Report the centre crop and the 13-crop test.")
@click.option("--by", "breakdowns", type=click.Choice(list(BREAKDOWNS)), multiple=True,
              help="Also break the test error down by this property of the test images (repeatable).")
@click.option("--confusion", is_flag=True, help="Also give each checkpoint's confusion matrix (true x predicted class).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write test-error.md/.csv, provenance.json, learning-curves.png and time-to-error.png here.")
def evaluate(checkpoints: tuple[Path, ...], split: str | None, data_dir: Path | None, multi_crop: bool,
             both_crops: bool, breakdowns: tuple[str, ...], confusion: bool, batch_size: int, out: Path | None) -> None:
    """Test error of checkpoints (help text in EVALUATE_HELP)."""
    from capsrobust.training.checkpoints import load_model
    from capsrobust.evaluation.checkpoint_eval import breakdown_table, confusion_table, error_table, test_predictions
    from capsrobust.reporting import to_markdown
    from capsrobust.reporting.evaluation import (breakdown_view, checkpoint_record, combine_test_errors,
                                                 confusion_view, evaluation_text, label_test_errors,
                                                 write_breakdown, write_confusion, write_evaluation_report)

    started = time.perf_counter()
    crops = (False, True) if both_crops else (multi_crop,)
    tables, records = [], []
    by_tables: dict[str, list] = {by: [] for by in dict.fromkeys(breakdowns)}
    confusion_bys: tuple[str | None, ...] = (None, *dict.fromkeys(breakdowns)) if confusion else ()
    confusions: dict[str | None, list] = {by: [] for by in confusion_bys}
    for path in checkpoints:
        # One-line error for a missing/foreign/truncated file or a checkpoint trained on other data.
        loaded = load_model(path, data_dir=data_dir, split=split, advice="evaluate on the data it was trained on")
        for multi in crops:
            predictions = test_predictions(loaded, multi_crop=multi, batch_size=batch_size)
            tables.append(label_test_errors(error_table(predictions), path, loaded.checkpoint))
            for by, parts in by_tables.items():
                parts.append(label_test_errors(breakdown_table(predictions, by), path, loaded.checkpoint))
            for by, parts in confusions.items():
                parts.append(label_test_errors(confusion_table(predictions, by), path, loaded.checkpoint))
        records.append(checkpoint_record(path, loaded.checkpoint))
    table = combine_test_errors(tables)
    click.echo(evaluation_text(table))
    by_table = {by: combine_test_errors(parts) for by, parts in by_tables.items()}
    for by, part in by_table.items():
        click.echo(f"\nTest error (%) by {by}:\n{to_markdown(breakdown_view(part), float_digits=2)}")
    confusion_all = {by: combine_test_errors(parts) for by, parts in confusions.items()}
    for by, part in confusion_all.items():
        click.echo(f"\nConfusion matrices{f' by {by}' if by else ''}:\n{confusion_view(part)}")
    if out is not None:
        for by, part in by_table.items():
            written = write_breakdown(part, by, out)
            click.echo(f"wrote {written[0]}, {written[1].name}")
        for by, part in confusion_all.items():
            written = write_confusion(part, out, by)
            click.echo(f"wrote {written[0]}, {written[1].name}")
        written = write_evaluation_report(table, checkpoints, records, out, started=started)
        click.echo(f"wrote {written[0]}, {', '.join(p.name for p in written[1:])}")
