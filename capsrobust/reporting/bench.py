"""Reports of the ``capsrobust bench`` commands: ``bench models`` (throughput and memory),
``bench learning`` (the learning probe) and ``bench attacks`` (the attack sweep's time, with and
without the savings). Terminal text, JSON-ready records and the result files, each written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from capsrobust.files import atomic_write_text, write_csv, write_json
from capsrobust.provenance import cpu_model, provenance
from capsrobust.reporting import markdown_report, to_markdown

if TYPE_CHECKING:
    from capsrobust.data.prepared import PreparedData
    from capsrobust.evaluation.attack_data import AttackSetup

__all__ = ["bench_attacks_record", "bench_attacks_summary", "bench_attacks_text", "bench_models_record",
           "bench_models_text", "json_records", "learning_heading", "learning_record", "learning_settings",
           "learning_text", "savings_only_timings", "write_bench_attacks", "write_bench_models",
           "write_learning_report"]


def json_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with NaN as null, so the output is strict JSON."""
    return json.loads(table.to_json(orient="records"))


# ----------------------------------------------------------------------------------------------
# bench models: capsrobust.evaluation.bench.bench_models and bench_routing


def bench_models_record(model_table: pd.DataFrame, routing_table: pd.DataFrame, machine: dict[str, Any],
                        processes: pd.DataFrame | None = None) -> dict[str, Any]:
    """``{"machine", "models", "processes", "routing"}``: what ``bench models --json`` prints and models.json holds."""
    return {"machine": machine, "models": json_records(model_table),
            "processes": [] if processes is None else json_records(processes), "routing": json_records(routing_table)}


def _bench_models_sections(model_table: pd.DataFrame, routing_table: pd.DataFrame, machine: dict[str, Any],
                           processes: pd.DataFrame | None) -> list[tuple[str, str]]:
    size = machine["peak_matmul"]
    sections = [
        ("Machine", f"Peak: a float32 {size}x{size} matrix product runs at **{machine['peak_gflop_s']:.1f} GFLOP/s** on "
                    f"{machine['peak_threads']} thread(s) in this run; `of_peak` divides each model's counted "
                    "training GFLOP/s by it."),
        ("Models", "Training: forward + loss + backward + Adam step at `train_batch`; inference: forward only at "
                   "`infer_batch`. `recipe` is the preset that builds the capsule net (`default`: what `capsrobust "
                   "train` uses; `paper`: 3 routing iterations and the paper's constants). `gflop_per_image` counts "
                   "a training step's matrix products, convolutions and einsums (EM routing's contractions on the "
                   "PyTorch path), not the element-wise work.\n\n" + to_markdown(model_table)),
    ]
    if processes is not None and len(processes):
        sections.append(("One process against processes side by side",
                         "Training images/s of one process on every thread, against one-thread processes started "
                         "together (default recipe), added up.\n\n" + to_markdown(processes)))
    sections.append(("EM routing alone (ConvCaps1 of `capsules`, votes included, 3 iterations)",
                     to_markdown(routing_table)))
    return sections


def bench_models_text(model_table: pd.DataFrame, routing_table: pd.DataFrame, machine: dict[str, Any],
                      processes: pd.DataFrame | None = None) -> str:
    """Every table as a markdown section (``## Machine``, ``## Models``, ...), for the terminal."""
    return "\n\n".join(f"## {heading}\n\n{body}"
                        for heading, body in _bench_models_sections(model_table, routing_table, machine, processes))


def write_bench_models(out_dir: str | os.PathLike[str], model_table: pd.DataFrame, routing_table: pd.DataFrame,
                       machine: dict[str, Any], processes: pd.DataFrame | None = None) -> list[Path]:
    """Write models.md (every table), models.json (:func:`bench_models_record`) and provenance.json
    (command, commit, CPU, the torch threads of the run) into ``out_dir`` (created); returns their paths.

    ``model_table``, ``machine`` / ``processes`` / ``routing_table``: :func:`capsrobust.evaluation.bench.bench_models` /
    ``bench_processes`` / ``bench_routing``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = bench_models_record(model_table, routing_table, machine, processes)
    intro = ("Written by `capsrobust bench models` (exact command, commit and CPU in provenance.json). "
             "Random inputs: no dataset is involved. Ratios come from one run on one machine.")
    sections = _bench_models_sections(model_table, routing_table, machine, processes)
    return [
        atomic_write_text(out / "models.md", markdown_report("capsrobust bench models", sections, intro)),
        write_json(out / "models.json", record),
        write_json(out / "provenance.json", provenance(cpu=cpu_model(), torch_threads=record["models"][0]["threads"])),
    ]


# ----------------------------------------------------------------------------------------------
# bench learning: capsrobust.experiments.learning_probe


def learning_settings(mode: str, *, n_images: int, steps: int, batch_size: int, lr: float | None, seed: int,
                      eval_every: int, max_eval_examples: int) -> str:
    """One line on how the probe ran (``mode`` subset: the fixed images; full: the validation checks)."""
    if mode == "subset":
        return (f"{n_images} fixed training images, centre crops, no augmentation, {steps} steps, batch {batch_size}, "
                f"lr {lr or 'preset'}, seed {seed}")
    return (f"full training set with augmentation, {steps} steps, batch {batch_size}, lr {lr or 'preset'}, seed {seed}; "
            f"validation error on {max_eval_examples or 'all'} held-out-toy images every {eval_every} steps")


def learning_heading(mode: str, data: PreparedData, settings: str) -> str:
    """The probe's title: mode, dataset and :func:`learning_settings`."""
    return f"Learning probe, {mode} mode: {data.describe()}; {settings}"


def learning_record(mode: str, settings: str, data: PreparedData, summary: pd.DataFrame,
                    curves: pd.DataFrame) -> dict[str, Any]:
    """What ``bench learning --json`` prints: mode, settings, dataset, and the summary and curve rows."""
    return {"mode": mode, "settings": settings, "dataset": data.dataset, "data_mode": data.mode,
            "summary": json_records(summary), "curves": json_records(curves)}


def learning_text(heading: str, summary: pd.DataFrame) -> str:
    """The heading and the per-variant summary table, for the terminal."""
    return f"{heading}\n\n{to_markdown(summary, float_digits=3)}"


def write_learning_report(out_dir: str | os.PathLike[str], mode: str, curves: pd.DataFrame, summary: pd.DataFrame,
                          heading: str, data: PreparedData, started: dict[str, Any]) -> list[Path]:
    """Write curves.csv, summary.csv, learning.json, learning.png (accuracy on the fixed subset against
    step, or validation error against training minutes in ``full`` mode), learning.md and provenance.json
    into ``out_dir`` (created), each atomically; returns their paths.

    ``curves`` / ``summary``: :func:`~capsrobust.experiments.learning_probe.probe_subset`'s or
    ``probe_full``'s; ``started``: the :func:`~capsrobust.provenance.provenance` record taken before the
    run (the commit that ran), completed here with the dataset and mode.
    """
    from capsrobust.reporting.plots import plot_probe_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        write_csv(curves, out / "curves.csv"),
        write_csv(summary, out / "summary.csv"),
        write_json(out / "learning.json", {"mode": mode, "summary": json_records(summary),
                                           "curves": json_records(curves)}),
    ]
    if mode == "subset":
        paths.append(plot_probe_curves(curves, out / "learning.png", x="step", y="train_accuracy", xlabel="step",
                                       ylabel="accuracy on the fixed training subset", title=heading, target=0.95))
    else:
        paths.append(plot_probe_curves(curves.assign(seconds=curves["seconds"] / 60), out / "learning.png",
                                       x="seconds", y="validation_error",
                                       xlabel="training wall time (minutes, evaluations excluded)",
                                       ylabel="validation error", title=heading))
    intro = (f"Written by `capsrobust bench learning` (exact command, commit, CPU in provenance.json). {heading}.\n\n"
             "![learning curves](learning.png)")
    paths.append(atomic_write_text(out / "learning.md", markdown_report("capsrobust bench learning", [
        ("Summary", to_markdown(summary, float_digits=3)), ("Curves", to_markdown(curves, float_digits=3))], intro)))
    paths.append(write_json(out / "provenance.json", {**started, "dataset": data.dataset, "data_mode": data.mode,
                                                      "dataset_checksum": data.checksum, "mode": mode}))
    return paths


# ----------------------------------------------------------------------------------------------
# bench attacks: capsrobust.evaluation.robustness.compare_savings (or one sweep with the savings)


def savings_only_timings(table: pd.DataFrame) -> pd.DataFrame:
    """The timing table of a sweep run only with the savings: the columns of
    :func:`~capsrobust.evaluation.robustness.compare_savings`'s timings, the plain run's left empty.

    ``table``: :func:`~capsrobust.evaluation.robustness.robustness_sweep`'s (``attrs["clean_seconds"]``
    per model). One row per (model, attack), one per model for the clean predictions, and ``total``.
    """
    rows = [{"model": model, "attack": attack, "seconds_savings": group.seconds.sum(),
             "gradient_images_savings": group.gradient_images.sum(), "forward_images_savings": group.forward_images.sum()}
            for (model, attack), group in table[table.attack != "worst-case"].groupby(["model", "attack"], sort=False)]
    rows += [{"model": m, "attack": "(clean predictions)", "seconds_savings": s}
             for m, s in table.attrs["clean_seconds"].items()]
    timings = pd.DataFrame(rows)
    total = {"model": "total", "attack": "", **{c: timings[c].sum(min_count=1) for c in timings.columns[2:]}}
    timings = pd.concat([timings, pd.DataFrame([total])], ignore_index=True)
    timings.insert(2, "seconds_plain", float("nan"))
    timings["speedup"] = float("nan")
    return timings


def bench_attacks_record(setup: AttackSetup, table: pd.DataFrame, timings: pd.DataFrame,
                         differences: pd.DataFrame | None, *, device: str, threads: int, n: int, steps: int,
                         eps: Sequence[float], attacks: Sequence[str], wall_time_s: float) -> dict[str, Any]:
    """What ``bench attacks --json`` prints and attacks.json holds: the settings, clean error, timings and
    total seconds; with the plain run (``differences`` not None) also its total, the speed-up, whether
    both tables are equal, the cells compared and the differing cells.

    ``table``: the sweep with the savings; ``timings`` / ``differences``: ``compare_savings``'s (or
    :func:`savings_only_timings` and None).
    """
    total = timings[timings.model == "total"].iloc[0]
    report = {"dataset": setup.dataset, "device": device, "threads": threads, "n": n, "steps": steps,
              "eps": list(eps), "attacks": list(attacks), "batch_sizes": table.attrs["batch_sizes"],
              "clean_error": dict(table.groupby("model", sort=False).clean_error.first()),
              "timings": json_records(timings),
              "total_seconds_savings": float(total.seconds_savings), "wall_time_s": round(wall_time_s, 2)}
    if differences is not None:
        report.update(total_seconds_plain=float(total.seconds_plain), speedup=float(total.speedup),
                      tables_equal=differences.empty, cells_compared=int((table.attack != "worst-case").sum()),
                      differences=json_records(differences))
    return report


def bench_attacks_summary(report: dict[str, Any]) -> str:
    """Total seconds (plain and with the savings, the speed-up) and whether both tables are equal."""
    line = f"total with savings: {report['total_seconds_savings']:.1f} s"
    if "total_seconds_plain" not in report:
        return line + " (plain run skipped: --savings-only)"
    line = (f"total plain: {report['total_seconds_plain']:.1f} s, with savings: {report['total_seconds_savings']:.1f} s "
            f"(x{report['speedup']:.2f})\n")
    if report["tables_equal"]:
        return line + f"tables equal: yes, all {report['cells_compared']} cells identical (exact for fgsm, bim and pgd)"
    return line + f"tables equal: NO, {len(report['differences'])} of {report['cells_compared']} cells differ:"


def bench_attacks_text(report: dict[str, Any], timings: pd.DataFrame, differences: pd.DataFrame | None) -> str:
    """The terminal view: settings, the timing table, :func:`bench_attacks_summary` and any differing cells."""
    text = (f"dataset: {report['dataset']}  device: {report['device']}  threads: {report['threads']}  "
            f"n: {report['n']}  batch sizes: {report['batch_sizes']}  eps: {', '.join(f'{e:g}' for e in report['eps'])}"
            f"\n\n{to_markdown(timings, 2)}\n\n{bench_attacks_summary(report)}")
    if differences is not None and not differences.empty:
        text += "\n\n" + to_markdown(differences, 4)
    return text


def write_bench_attacks(out_dir: str | os.PathLike[str], report: dict[str, Any], timings: pd.DataFrame,
                        differences: pd.DataFrame | None, setup: AttackSetup) -> list[Path]:
    """Write attacks.json (:func:`bench_attacks_record`), attacks.md (timings, summary, differing cells)
    and provenance.json (data, checkpoints, settings, totals) into ``out_dir`` (created); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = [("Seconds per model and attack", to_markdown(timings, 2)), ("Summary", bench_attacks_summary(report))]
    if differences is not None and not differences.empty:
        sections.append(("Cells that differ", to_markdown(differences, 4)))
    return [
        write_json(out / "attacks.json", report),
        atomic_write_text(out / "attacks.md", markdown_report(
            f"Attack sweep time: {setup.dataset}", sections,
            intro=f"FGSM + BIM({report['steps']}) + PGD({report['steps']}) x {len(report['eps'])} eps x {report['n']} "
                  f"test images, untargeted, {report['threads']} torch threads on {report['device']}.")),
        write_json(out / "provenance.json", provenance(
            dataset=setup.data.dataset, mode=setup.data.mode, split=setup.data.split,
            dataset_checksum=setup.data.checksum, checkpoints=[c.record() for c in setup.checkpoints], n=report["n"],
            steps=report["steps"], eps=report["eps"], batch_sizes=report["batch_sizes"],
            wall_time_s=report["wall_time_s"], total_seconds_savings=report["total_seconds_savings"],
            total_seconds_plain=report.get("total_seconds_plain"))),
    ]
