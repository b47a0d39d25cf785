"""``capsrobust bench attacks``: how long the paper's attacks take on both models."""

from __future__ import annotations

import json
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
@click.option("--batch-size", type=int, default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a markdown table.")
def bench_attacks(models_text: str | None, n: int, steps: int, batch_size: int, seed: int, data_dir: Path | None,
                  as_json: bool) -> None:
    """Seconds for FGSM, BIM and PGD (--steps each) at 8 eps values on each model, and the total.

    The same checkpoints and test images as `capsrobust attack` (untargeted, --n images per eps),
    timed one (model, attack) at a time; images_per_s counts adversarial images produced.

    \b
    Examples:
      capsrobust bench attacks                      # 1000 images, newest checkpoints
      capsrobust bench attacks --n 100 --json --models caps.pt,cnn.pt
    """
    import torch

    from capsrobust.evaluation.attack_data import find_default_checkpoints, load_attack_setup
    from capsrobust.evaluation.robustness import SweepConfig, attack_timings
    from capsrobust.reporting import to_markdown

    for name, value in (("--n", n), ("--steps", steps), ("--batch-size", batch_size)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    paths = [p.strip() for p in models_text.split(",")] if models_text else find_default_checkpoints()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup = load_attack_setup(paths, data_dir, n=n, seed=seed, device=device)
    config = SweepConfig(attacks=BENCH_ATTACKS, eps_values=BENCH_EPS, modes=("untargeted",), steps=steps,
                         batch_size=batch_size, seed=seed)
    table = attack_timings(setup.models, setup.images, setup.labels, config)
    total = float(table.seconds.sum())
    if as_json:
        records = json.loads(table.to_json(orient="records"))
        click.echo(json.dumps({"dataset": setup.dataset, "device": device, "threads": torch.get_num_threads(),
                               "eps": list(BENCH_EPS), "timings": records, "total_seconds": total}, indent=2))
        return
    click.echo(f"dataset: {setup.dataset}  device: {device}  threads: {torch.get_num_threads()}  "
               f"eps: {', '.join(f'{e:g}' for e in BENCH_EPS)}\n")
    click.echo(to_markdown(table, 3))
    click.echo(f"\ntotal: {total:.1f} s")
