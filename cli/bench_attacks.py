"""``capsrobust bench attacks``: how long the paper's attack sweep takes, with and without the savings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from capsrobust.errors import ConfigError

#: The timed workload: FGSM, BIM(10), PGD(10) at 8 eps values (pixel units), untargeted.
BENCH_ATTACKS = ("fgsm", "bim", "pgd")
BENCH_EPS = (0.0125, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)


@click.command("attacks")
@click.option("--models", "models_text", default=None, metavar="PATH,PATH",
              help="Checkpoints (a capsule net and a cnn) [default: as `capsrobust attack`].")
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Test images attacked per eps.")
@click.option("--steps", type=int, default=10, show_default=True, help="Iterations of BIM and PGD.")
@click.option("--batch-size", type=int, default=None,
              help="Images per forward/backward [default: per model, 16 for capsule nets, 128 for the CNN].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--savings-only", is_flag=True,
              help="Time only the sweep with the savings (no plain run, no table comparison).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write attacks.md, attacks.json and provenance.json (command, commit, CPU, wall time) here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of markdown tables.")
def bench_attacks(models_text: str | None, n: int, steps: int, batch_size: int | None, seed: int,
                  data_dir: Path | None, savings_only: bool, out_dir: Path | None, as_json: bool) -> None:
    """Seconds for FGSM, BIM and PGD (--steps each) at 8 eps values on each model, and the total.

    The same checkpoints, test images and sweep as `capsrobust attack fgsm,bim,pgd --eps
    0.0125,...,0.3` (untargeted, --n images per eps), run twice in one process: plain (every image
    attacked at every eps for every step) and with the savings (eps 0 not attacked, images wrong
    on the clean input not attacked, each image dropped once broken, the clean-image gradient shared
    by FGSM and BIM's first step across eps; see capsrobust.evaluation.robustness). It then checks
    that both runs give the same table, cell by cell and exactly (random starts are drawn once per
    image and shared by both runs), lists any cell that differs and exits with status 1 if one does.

    Reported per (model, attack): seconds of each run, the speed-up, and the images that went
    through forward + backward and through forward alone -- where the time went.

    \b
    Examples:
      capsrobust bench attacks                      # 1000 images, the shipped default models
      capsrobust bench attacks --n 50 --models caps.pt,cnn.pt
      capsrobust bench attacks --savings-only --out results/bench/attacks
    """
    import torch

    from capsrobust.evaluation.attack_data import check_image_count, default_checkpoints, load_attack_setup
    from capsrobust.evaluation.robustness import SweepConfig, compare_savings, robustness_sweep
    from capsrobust.reporting.bench import (bench_attacks_record, bench_attacks_text, savings_only_timings,
                                            write_bench_attacks)

    check_image_count(n)
    config = SweepConfig(attacks=BENCH_ATTACKS, eps_values=BENCH_EPS, modes=("untargeted",), steps=steps,
                         batch_size=batch_size, seed=seed)
    config.validate()  # --steps and --batch-size, before the (slow) loading
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; pass a directory")
    if models_text:
        paths: list[str | Path] = [p.strip() for p in models_text.split(",")]
    else:
        paths, taken = default_checkpoints()
        click.echo(taken, err=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup = load_attack_setup(paths, data_dir, n=n, seed=seed, device=device)
    started = time.monotonic()
    if savings_only:
        table = robustness_sweep(setup.models, setup.images, setup.labels, config, dataset=setup.dataset)
        timings, differences = savings_only_timings(table), None
    else:
        timings, differences, table = compare_savings(setup.models, setup.images, setup.labels, config,
                                                      dataset=setup.dataset)
    report = bench_attacks_record(setup, table, timings, differences, device=device, threads=torch.get_num_threads(),
                                  n=n, steps=steps, eps=BENCH_EPS, attacks=BENCH_ATTACKS,
                                  wall_time_s=time.monotonic() - started)
    if out_dir is not None:
        write_bench_attacks(out_dir, report, timings, differences, setup)
    click.echo(json.dumps(report, indent=2) if as_json else bench_attacks_text(report, timings, differences))
    if differences is not None and not differences.empty:
        raise SystemExit(1)
