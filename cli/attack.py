"""``capsrobust attack``: white-box, black-box and transfer attacks on a capsule net and the CNN."""

from __future__ import annotations

import time
from pathlib import Path

import click

from capsrobust.attacks import ATTACK_NAMES, LOSS_NAMES, attack_info, parse_attack_spec, parse_attack_specs, parse_eps
from capsrobust.errors import ConfigError

ATTACK_HELP = f"""\
Attack a capsule net and the CNN with ATTACK at every --eps and tabulate the results side by side.

ATTACK is one attack or a comma-separated list run in the same sweep (e.g. `fgsm,bim`, the
paper's Fig. 3 pair), so the sanity checks can compare them and a per-example worst case over
the attacks is reported too.  Attacks: {', '.join(ATTACK_NAMES)}.  Each may carry its own
iterations and random restarts, NAME[:STEPS[xRESTARTS]]: `pgd:50x5` is PGD with 50 steps from 5
random starts, next to a 10-step `pgd` in the same sweep (STEPS defaults to --steps).

\b
  fgsm, bim, pgd  signed-gradient steps (step 2.5 eps/steps); an image counts as broken if any
                  iterate broke it (the AutoAttack convention)
  apgd, square    torchattacks' APGD and Square (100 x STEPS queries; gradient-free)
  autoattack      torchattacks' AutoAttack standard: APGD-CE, APGD-T, FAB-T (STEPS iterations
                  each; Croce & Hein use 100: autoattack:100), then Square (5000 queries)
  vote            capsule nets only: the vote attack of Gu, Wu & Tresp (ICLR 2021): PGD on the
                  class activations EM routing gives the class votes after one M-step with uniform
                  assignments -- routing bypassed; success judged by the real model
  transfer        PGD crafted on the other model, applied unchanged (black box)

\b
What is measured, per (model, attack, eps, mode) on --n test images (a fixed random subset of
the familiar test set, seeded by --seed, centre 32x32 crops in [0, 1]):
  - clean error and adversarial error (fraction misclassified after the attack; images wrong
    on the clean input count as broken);
  - attack success rate: untargeted, the share of clean-correct examples broken; targeted,
    "prediction == target" averaged over the 4 WRONG classes (success_rate_5class also keeps
    the paper's average over all 5 classes, true one included, for comparison);
  - mean and max L-inf perturbation; eps is in pixel units of images in [0, 1] (standardisation
    is inside the models) and eps_std gives it in the paper's per-image-standardised units;
  - seconds, and the images through forward+backward and forward alone, per cell.

\b
Which score is attacked: the CNN through its logits; capsule nets through the log of their
class activations (softmax of log a = a / sum a, a proper likelihood that does not saturate;
AutoAttack's four attacks see the same scores); --loss picks what is ascended on those scores:
ce, margin (C&W), dlr (Croce & Hein) or spread (the capsule training loss, on activations).

\b
Savings (on unless --no-savings; the table is the same, `capsrobust bench attacks` checks it):
eps 0 and images already wrong are not attacked, fgsm/bim/pgd/vote drop an image once broken,
and the clean-image gradient is shared across eps.

\b
Sanity checks (Carlini et al. 2019), each PASS / FAIL / SKIP, under one verdict line per model
(HOLDS: no check fails; SUSPECT: which and why): iterative >= single-step, success monotone in
eps, chance error at eps >= 0.5, square / vote / transfer no stronger than the headline (best)
white-box attack -- a FAIL names the attack that beats it -- and non-zero finite input
gradients (gradient masking).

\b
Writes into --out (default results/attacks/ATTACK, commas as '-', colons as '_'): sweep.csv,
sweep.md, checks.csv, checks.md, gradients.csv, provenance.json, accuracy_vs_eps.png and, with
--targeted, success_vs_eps.png.

\b
Examples:
  capsrobust attack fgsm --eps 0.1
  capsrobust attack fgsm,bim --eps 0:0.3:0.02 --targeted
  capsrobust attack transfer --eps 0.1 --models caps.pt,cnn.pt
  capsrobust attack pgd --eps 0,0.05,0.1 --loss margin --steps 40 --n 500
  capsrobust attack fgsm,pgd,pgd:50x5,square,vote,autoattack --eps 0,0.01,0.02,0.05
"""


def parse_attacks(text: str) -> tuple[str, ...]:
    """``fgsm`` or ``fgsm,pgd:50x5`` -> ('fgsm', 'pgd:50x5'); one-line ConfigError for a bad spec."""
    return tuple(spec.label for spec in parse_attack_specs(text.split(",")))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command(help=ATTACK_HELP)
@click.argument("attack_list", metavar="ATTACK")
@click.option("--eps", "eps_text", default="0:0.3:0.05", show_default=True,
              help="L-inf radius in [0, 1] pixel units: 0.1, a list 0,0.05,0.1, or START:STOP:STEP (STOP included).")
@click.option("--targeted", is_flag=True, help="Also run the targeted mode (every example towards each class).")
@click.option("--models", "models_text", default=None, metavar="PATH,PATH",
              help="Checkpoints written by `capsrobust train` (a capsule net and a cnn) [default: the default models "
                   "shipped under results/train/, run from the repository root; the command says which it took].")
@click.option("--n", "n", type=int, default=1000, show_default=True,
              help="Test images attacked (a seeded subset of the familiar test set); the time grows with it, so "
                   "--n 100 gives a quick look.")
@click.option("--batch-size", type=int, default=None,
              help="Images per forward/backward [default: per model, 16 for capsule nets, 128 for the CNN].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the test subset and the attacks' random starts.")
@click.option("--steps", type=int, default=10, show_default=True,
              help="Iterations of bim/pgd/apgd/vote/autoattack where ATTACK names none (x100 queries for square; "
                   "of the source PGD for transfer).")
@click.option("--loss", default="ce", show_default=True, help=f"Attack loss: {'|'.join(LOSS_NAMES)}.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory [default: synthnorb from the cache].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output directory [default: results/attacks/ATTACK].")
@click.option("--no-savings", is_flag=True,
              help="Attack every image at every eps for every step (same table, slower; for checking).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def attack(attack_list: str, eps_text: str, targeted: bool, models_text: str | None, n: int, batch_size: int | None,
           seed: int, steps: int, loss: str, data_dir: Path | None, out_dir: Path | None, no_savings: bool,
           no_progress: bool) -> None:
    from capsrobust.evaluation.attack_data import check_image_count, default_checkpoints, load_attack_setup
    from capsrobust.evaluation.robustness import SweepConfig, check_models, evaluate_robustness, sweep_cells
    from capsrobust.reporting.attacks import attack_report_text, write_attack_report

    attacks = parse_attacks(attack_list)
    eps_values = parse_eps(eps_text)
    check_image_count(n)
    modes = ("untargeted", "targeted") if targeted else ("untargeted",)
    config = SweepConfig(attacks=attacks, eps_values=eps_values, modes=modes, loss=loss.strip().lower(),
                         steps=steps, batch_size=batch_size, seed=seed, savings=not no_savings)
    config.validate()  # every option checked before the (slow) loading
    if models_text:
        paths: list[str | Path] = [p.strip() for p in models_text.split(",")]
    else:
        paths, taken = default_checkpoints()
        click.echo(taken, err=True)
    if any(not p for p in paths):
        raise ConfigError(f"--models {models_text!r} has an empty path; pass PATH,PATH")
    out = out_dir or Path("results") / "attacks" / "-".join(attacks).replace(":", "_")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a directory")

    started = time.monotonic()
    pair = any(attack_info(parse_attack_spec(a).name).needs_pair for a in attacks)
    setup = load_attack_setup(paths, data_dir, n=n, seed=seed, device=_device(), pair=pair)
    check_models(setup.models, config)
    click.echo(f"{setup.dataset}: {len(setup.labels)} test images; models: "
               + ", ".join(f"{c.name} ({c.path}, step {c.step})" for c in setup.checkpoints), err=True)

    from capsrobust.progress import progress_bar

    with progress_bar(sweep_cells(setup.models, config), "attack cells", unit="cell", enabled=not no_progress,
                      every=1) as bar:
        def progress(row: dict) -> None:
            bar.set_postfix_str(f"{row['model']} {row['attack']} eps={row['eps']:g} {row['mode']}")
            bar.update(1)

        table, checks = evaluate_robustness(setup.models, setup.images, setup.labels, config,
                                            dataset=setup.dataset, progress=progress)
    wall = time.monotonic() - started
    click.echo(attack_report_text(table, checks, setup, config))
    written = write_attack_report(table, checks, setup, config, out, wall_time_s=wall)
    click.echo(f"\nwrote {out}/: {', '.join(p.name for p in written)} ({wall:.0f} s)")
