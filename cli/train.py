"""``capsrobust train``: train a capsule net or the CNN, resumable and reproducible."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from capsrobust.data.splits import HOLDOUTS, SPLITS
from capsrobust.training.losses import MARGIN_SCHEDULES
from capsrobust.models import MODEL_NAMES
from capsrobust.models.layers import BETA_PARAMETRISATIONS, COORDINATES, COST_NORMALISATIONS
from capsrobust.training.presets import PRESET_NAMES, RoutingOptions


@click.command()
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default="capsules-small", show_default=True,
              help="capsules (A=B=C=D=32), capsules-small (A=64, B=8, C=D=16) or the paper's cnn.")
@click.option("--split", type=click.Choice(list(SPLITS)), default="full", show_default=True,
              help="Viewpoint protocol: train on its familiar views only.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="smallNORB directory; default: synthnorb from the cache.")
@click.option("--mode", type=click.Choice(["stereo", "mono"]), default="stereo", show_default=True)
@click.option("--steps", type=int, default=None, help="Total optimisation steps (overrides --epochs).")
@click.option("--epochs", type=float, default=None, help="Epochs over the training subset [default: 10].")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=None,
              help="Adam learning rate at the start [default: 3e-3 capsule nets, 1e-3 cnn].")
@click.option("--lr-decay", type=float, default=None,
              help="Multiply the learning rate by this every 1/20 of the run (0.96: the paper's; 0.8 ends at 1/87) "
                   "[default: the preset's].")
@click.option("--ema-decay", type=float, default=None,
              help="Keep an exponential moving average of the weights with this decay (e.g. 0.999: ~1,000 steps) and "
                   "evaluate and save it instead of the last weights; 0: none [default: the preset's].")
@click.option("--shape-jitter", type=float, default=None,
              help="Before the crop, stretch each training image about its centre by a random factor per axis, "
                   "log-uniform in [1/(1+J), 1+J] (size and aspect ratio, as toy instances differ); 0: off "
                   "(the paper's augmentation only) [default: the preset's].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory [default: runs/MODEL-SPLIT-seedSEED].")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option("--holdout", type=click.Choice(list(HOLDOUTS)), default="toy", show_default=True,
              help="toy: hold one training toy per class out for validation (best.pt, matched.pt); none: train on "
                   "all five (the paper's final fit; no validation, so use last.pt or averaged.pt).")
@click.option("--target-familiar-error", type=float, default=None,
              help="Also keep matched.pt: the first checkpoint whose validation (familiar) error is <= this fraction.")
@click.option("--eval-every", type=int, default=0, help="Steps between evaluations [default: once per epoch].")
@click.option("--checkpoint-every", type=int, default=0, help="Steps between checkpoints [default: each evaluation].")
@click.option("--iterations", type=int, default=None, help="EM routing iterations (capsule models) [default: 3].")
@click.option("--lambda-scale", type=float, default=None,
              help="Capsule models: multiply every layer's EM inverse temperature (1 = official) [default: 1].")
@click.option("--conv-lambda-scale", type=float, default=None,
              help="Capsule models: multiply the convolutional capsule layers' inverse temperature once more "
                   "(on top of --lambda-scale) [default: 1].")
@click.option("--routing-schedule", type=click.Choice(["official", "normalized"]), default=None,
              help="Capsule models: EM inverse-temperature schedule; official (lambda 0.01, raw costs) or normalized "
                   "(costs standardised over each layer's parents, lambda 1, 2, 3) [default: official].")
@click.option("--beta-parametrisation", type=click.Choice(BETA_PARAMETRISATIONS), default=None,
              help="Capsule models: how beta_u, beta_a enter the EM cost; direct (start at 0), official (the official "
                   "code's constants: beta_a x 5000, log variances) or logit (beta_a in logit units) [default: the preset's].")
@click.option("--cost-normalisation", type=click.Choice(COST_NORMALISATIONS), default=None,
              help="Capsule models: none (official) or ibm (each layer's cost x 100 parents/children, as IBM's "
                   "re-implementation) [default: the preset's].")
@click.option("--class-lambda-scale", type=float, default=None,
              help="Capsule models: multiply the class layer's inverse temperature once more [default: 1].")
@click.option("--coordinates", type=click.Choice(COORDINATES), default=None,
              help="Capsule models: coordinate addition with centres in (0, 1) (unit) or minus their mean over the grid "
                   "(centred) [default: unit].")
@click.option("--transform-init", type=click.Choice(["identity", "normal"]), default=None,
              help="Capsule models: start each 4x4 transform at I + noise or at random [default: identity].")
@click.option("--margin-schedule", type=click.Choice(MARGIN_SCHEDULES), default=None,
              help="Capsule models' spread-loss margin: run (the official curve stretched over this run, 0.2 -> 0.9), "
                   "official (the authors' time axis: ~0.2 for the first 100K steps), held (0.2) or epoch (+0.1 per "
                   "epoch up to 0.9, the paper's text) [default: the preset's].")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="default", show_default=True,
              help="Capsule-net recipe the options above override: default (chosen by the ablation in results/train), "
                   "paper (the paper's text) or official (the released code).")
@click.option("--max-eval-examples", type=int, default=0, show_default=True,
              help="Evaluate on at most this many examples of each validation set (0: all).")
@click.option("--no-progress", is_flag=True, help="No progress bar (metrics are still printed and logged).")
def train(model_name: str, split: str, data_dir: Path | None, mode: str, steps: int | None, epochs: float | None,
          batch_size: int, lr: float | None, lr_decay: float | None, ema_decay: float | None, shape_jitter: float | None,
          seed: int, out_dir: Path | None, resume: bool,
          holdout: str, target_familiar_error: float | None, eval_every: int, checkpoint_every: int,
          iterations: int | None, lambda_scale: float | None, conv_lambda_scale: float | None,
          routing_schedule: str | None,
          beta_parametrisation: str | None, cost_normalisation: str | None, class_lambda_scale: float | None,
          coordinates: str | None, transform_init: str | None,
          margin_schedule: str | None, preset: str, max_eval_examples: int, no_progress: bool) -> None:
    """Train a model; checkpoints, metrics and provenance go to the run directory.

    Data-parallel: the same command under torchrun (gloo on CPUs, nccl on GPUs), e.g.
    `torchrun --nproc_per_node 2 -m capsrobust_cli train …`; --batch-size is the global batch.
    A GPU is used when one is present.

    Writes run.json (config, dataset, checksum, commit, versions), metrics.jsonl (per
    evaluation), last.pt (atomic, every --checkpoint-every steps), best.pt (best validation)
    and, with --target-familiar-error, matched.pt (the paper's matching protocol). Ctrl-C saves
    last.pt and exits; --resume continues exactly (same weights as an uninterrupted run).

    \b
    Examples:
      capsrobust train --model capsules-small --epochs 30
      capsrobust train --model cnn --split azimuth --out runs/cnn-az
      capsrobust train --model capsules --out runs/caps --resume
    """
    from capsrobust.training.loop import TrainConfig, TrainingInterrupted
    from capsrobust.training.loop import train as run_training

    routing = RoutingOptions(iterations=iterations, schedule=routing_schedule, lambda_scale=lambda_scale,
                             conv_lambda_scale=conv_lambda_scale, class_lambda_scale=class_lambda_scale,
                             transform_init=transform_init, beta_parametrisation=beta_parametrisation,
                             cost_normalisation=cost_normalisation, coordinates=coordinates)
    config = TrainConfig(model=model_name, split=split, data_dir=str(data_dir) if data_dir else None, mode=mode,
                         steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, lr_decay=lr_decay, seed=seed,
                         ema_decay=ema_decay, shape_jitter=shape_jitter,
                         holdout=holdout, target_familiar_error=target_familiar_error, eval_every=eval_every,
                         checkpoint_every=checkpoint_every, max_eval_examples=max_eval_examples,
                         margin_schedule=margin_schedule, preset=preset,
                         model_overrides=routing.overrides())  # every check: TrainConfig.validate
    out = out_dir or Path("runs") / f"{model_name}-{split}-seed{seed}"
    try:
        result = run_training(config, out, resume=resume, progress=not no_progress, log=lambda m: click.echo(m, err=True))
    except TrainingInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(130)
    if not result["is_main"]:
        return  # under torchrun, rank 0 reports
    best = result["best"]
    click.echo(f"done: {result['total_steps']} steps in {out}; best validation error "
               f"{best['validation_error']} at step {best['step']}" +
               (f"; matched at step {best['matched_step']}" if target_familiar_error is not None else ""))
