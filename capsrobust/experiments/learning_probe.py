"""The learning probe: how fast does each model variant fit, and how fast does it generalise?

Two instruments, each a few minutes per variant on two CPU cores:

- :func:`probe_subset` trains every variant on the same fixed subset of training images (centre
  crops, no augmentation) for a fixed number of steps and measures, every ``check_every`` steps,
  its accuracy on the whole subset and the spread of its class scores. A net that cannot fit 512
  images in a few hundred steps will not learn the full set in hours; one that can is worth a
  full run.
- :func:`probe_full` trains short runs on the full training set (augmentation on, as in real
  training) with :func:`capsrobust.training.train` and reports validation error against training
  wall time.

A variant is written ``MODEL[@PRESET][:key=value,...]``, e.g. ``capsules-small``,
``capsules-small@paper``, ``capsules-small:iterations=1,margin_schedule=held`` or ``cnn:lr=0.001``.
Keys that are :class:`~capsrobust.training.TrainConfig` fields (``lr``, ``batch_size``,
``margin_schedule``, ``weight_decay``) set the training; every other key is a model option
(``iterations``, ``beta_parametrisation``, ``cost_normalisation``, ...).
"""

from __future__ import annotations

import json
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from capsrobust.data.prepared import PreparedData
from capsrobust.data.transforms import center_crop
from capsrobust.errors import ConfigError
from capsrobust.models import MODEL_NAMES, BaselineCNN, MatrixCapsNet, build_model, is_capsule_model, score_kind
from capsrobust.models.prediction import predict_scores
from capsrobust.training.presets import PRESET_NAMES, resolve_preset
from capsrobust.training.loop import TrainConfig, learning_rate, loss_function, same_run

__all__ = ["Variant", "parse_variant", "probe_full", "probe_subset", "score_spread", "steps_to_accuracy"]

#: TrainConfig fields a variant may set; every other key is a model option.
TRAINING_KEYS = ("lr", "batch_size", "margin_schedule", "weight_decay", "lr_decay")
FIT_TARGET = 0.95


@dataclass(frozen=True)
class Variant:
    """One model configuration to probe: its label, model, preset and options."""

    label: str
    model: str
    preset: str = "default"
    training: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    def train_config(self, **fields: Any) -> TrainConfig:
        """The resolved (and checked) :class:`TrainConfig` of this variant (``fields`` fill the rest)."""
        return resolve_preset(TrainConfig(model=self.model, preset=self.preset, model_overrides=dict(self.options),
                                          **{**fields, **dict(self.training)}))


#: Keys a variant cannot set: the data decides the input channels, the task the classes, the code the routing.
FIXED_KEYS = ("in_channels", "num_classes", "routing")
#: How each option type reads from text, and what it is called in an error.
_READERS: dict[type, tuple[Callable[[str], Any], str]] = {
    bool: (lambda text: {"true": True, "false": False}[text.lower()], "true or false"),
    int: (int, "a whole number"),
    float: (float, "a number"),
    str: (str, "a word"),
}


def _option_types(model: str) -> dict[str, type]:
    """Key -> the type it holds (bool, int, float or str): the training keys from :class:`TrainConfig`'s
    fields, every other key from the model class's keyword arguments. Keys of no such type are left out."""
    model_class = MatrixCapsNet if is_capsule_model(model) else BaselineCNN
    training = {key: hint for key, hint in typing.get_type_hints(TrainConfig).items() if key in TRAINING_KEYS}
    types = {}
    for key, hint in {**typing.get_type_hints(model_class.__init__), **training}.items():
        kinds = [kind for kind in (typing.get_args(hint) or (hint,)) if kind in _READERS]
        if kinds:
            types[key] = kinds[0]
    return types


def _value(spec: str, key: str, text: str, types: dict[str, type]) -> Any:
    """``text`` read as the type ``key`` holds; a one-line ConfigError naming the key, the value and the type."""
    if key in FIXED_KEYS:
        raise ConfigError(f"variant {spec!r}: {key} cannot be set by a variant (it comes from the data and the model)")
    if key not in types:
        valid = ", ".join(sorted(set(types) - set(FIXED_KEYS), key=str.lower))
        raise ConfigError(f"variant {spec!r}: unknown option {key!r}; valid: {valid}")
    read, what = _READERS[types[key]]
    try:
        value = read(text)
    except (KeyError, ValueError):
        raise ConfigError(f"variant {spec!r}: {key} takes {what}, got {text!r}") from None
    if types[key] is int and value < 1:  # every whole-number option counts something: capsule types, iterations, images
        raise ConfigError(f"variant {spec!r}: {key} must be at least 1, got {value}")
    return value


def parse_variant(spec: str) -> Variant:
    """``MODEL[@PRESET][:key=value,...]`` -> :class:`Variant`; a malformed spec is a ConfigError."""
    head, _, tail = spec.strip().partition(":")
    model, _, preset = head.partition("@")
    preset = preset or "default"
    if model not in MODEL_NAMES:
        raise ConfigError(f"variant {spec!r}: unknown model {model!r}; valid: {', '.join(MODEL_NAMES)}")
    if preset not in PRESET_NAMES:
        raise ConfigError(f"variant {spec!r}: unknown preset {preset!r}; valid: {', '.join(PRESET_NAMES)}")
    training, options = [], []
    types = _option_types(model)
    for item in filter(None, (part.strip() for part in tail.split(","))):
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ConfigError(f"variant {spec!r}: {item!r} is not key=value (e.g. capsules-small:iterations=2)")
        (training if key in TRAINING_KEYS else options).append((key, _value(spec, key, text, types)))
    variant = Variant(spec.strip(), model, preset, tuple(training), tuple(options))
    try:  # bad option values fail here, once, with the variant named: a tiny copy runs one image
        config = variant.train_config()
        tiny = dict(A=4, B=2, C=2, D=2) if is_capsule_model(model) else {}
        with torch.no_grad():
            build_model(model, **{**config.model_overrides, **tiny}).eval()(torch.zeros(1, 2, 32, 32))
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"variant {spec!r}: {exc}") from None
    return variant


def score_spread(scores: torch.Tensor, score_kind: str) -> torch.Tensor:
    """Per image, max - min of its class scores (N,): raw activations, or softmax probabilities of logits."""
    if score_kind == "logits":
        scores = scores.softmax(dim=1)
    return scores.max(dim=1).values - scores.min(dim=1).values


def steps_to_accuracy(curve: pd.DataFrame, target: float = FIT_TARGET) -> float:
    """First step at which ``curve.train_accuracy`` reaches ``target`` (NaN if never)."""
    hit = curve.loc[curve["train_accuracy"] >= target, "step"]
    return float(hit.iloc[0]) if len(hit) else math.nan


def _fixed_subset(data: PreparedData, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = data.subset("train")
    if n > len(labels):
        raise ConfigError(f"--n {n} is more than the {len(labels)} training images")
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images[keep], labels[keep]


def _fit_subset(variant: Variant, images: torch.Tensor, labels: torch.Tensor, *, steps: int, check_every: int,
                seed: int, batch_size: int, lr: float | None, tick: Callable[[], None]) -> list[dict[str, Any]]:
    """Train one variant on (images (n, C, 48, 48), labels (n,)) and return one record per check."""
    config = variant.train_config(batch_size=batch_size, lr=lr, seed=seed, steps=steps)
    torch.manual_seed(seed)
    model = build_model(config.model, in_channels=images.shape[1], **config.model_overrides)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    crops = center_crop(images)
    kind = score_kind(model)
    steps_per_epoch = max(1, len(labels) // config.batch_size)
    records, seconds = [], 0.0

    def check(step: int, loss: float) -> None:
        scores = predict_scores(model, images)
        records.append({"variant": variant.label, "step": step, "seconds": seconds, "train_loss": loss,
                        "train_accuracy": float((scores.argmax(1) == labels).float().mean()),
                        "score_spread": float(score_spread(scores, kind).mean())})

    check(0, math.nan)
    model.train()
    losses: list[float] = []
    for step in range(steps):
        t0 = time.perf_counter()
        batch = torch.randint(len(labels), (config.batch_size,), generator=torch.Generator().manual_seed(seed * 100003 + step))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step, steps)
        scores = model(crops[batch])
        loss = loss_function(model, step, steps, config.margin_schedule, steps_per_epoch)(scores, labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - t0
        losses.append(float(loss.detach()))
        tick()
        if (step + 1) % check_every == 0 or step + 1 == steps:
            check(step + 1, sum(losses) / len(losses))
            losses = []
    return records


def probe_subset(variants: list[Variant], data: PreparedData, *, n: int = 512, steps: int = 300,
                 check_every: int = 25, seed: int = 0, batch_size: int = 32, lr: float | None = None,
                 progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit every variant to the same ``n`` training images; returns (curves, summary).

    curves: one row per (variant, check): step, training seconds so far, mean loss since the last
    check, accuracy on all ``n`` images (eval mode, centre crops) and mean class-score spread.
    summary: one row per variant: accuracy at each check step, final spread, steps to 95 % and seconds.
    ``batch_size``/``lr`` are the defaults (``lr`` None: each preset's for the model); a variant's own
    ``lr=``/``batch_size=`` win.
    """
    if n < 1 or steps < 1 or check_every < 1:
        raise ConfigError("--n, --steps and --check-every must be at least 1")
    images, labels = _fixed_subset(data, n, seed)
    from capsrobust.progress import progress_bar

    bar = progress_bar(steps * len(variants), "learning probe", unit="step", enabled=progress, every=steps)
    curves = []
    for variant in variants:
        bar.set_postfix_str(variant.label)
        curves += _fit_subset(variant, images, labels, steps=steps, check_every=check_every, seed=seed,
                              batch_size=batch_size, lr=lr, tick=lambda: bar.update(1))
    bar.close()
    table = pd.DataFrame(curves)
    return table, summarise_subset(table)


def summarise_subset(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: accuracy at up to six evenly spaced checks, spread, steps to 95 %, seconds."""
    rows = []
    for label, curve in curves.groupby("variant", sort=False):
        steps = sorted(curve["step"].unique())[1:]
        shown = steps[max(1, len(steps) // 6) - 1 :: max(1, len(steps) // 6)][-6:]
        row: dict[str, Any] = {"variant": label}
        for step in shown:
            row[f"acc@{step}"] = float(curve.loc[curve["step"] == step, "train_accuracy"].iloc[0])
        last = curve.iloc[-1]
        row.update(score_spread=float(last["score_spread"]), steps_to_95=steps_to_accuracy(curve),
                   seconds=float(last["seconds"]))
        rows.append(row)
    return pd.DataFrame(rows)


def probe_full(variants: list[Variant], data: PreparedData, out_dir: str | Path, *, steps: int = 1500,
               eval_every: int = 300, max_eval_examples: int = 1000, seed: int = 0, batch_size: int = 32,
               lr: float | None = None, resume: bool = False, progress: bool = True,
               log: Callable[[str], None] = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Short runs on the full training set, one run directory per variant under ``out_dir``.

    Returns (curves, summary): validation error against training seconds at every evaluation,
    and per variant the best validation error, its step and the seconds to reach it. A finished run
    directory is reused; with ``resume``, an unfinished one is continued.
    """
    from capsrobust.training.loop import train

    out = Path(out_dir)
    rows = []
    for variant in variants:
        run_dir = out / _run_name(variant, seed)
        config = variant.train_config(steps=steps, eval_every=eval_every, max_eval_examples=max_eval_examples,
                                      seed=seed, batch_size=batch_size, lr=lr)
        _check_same_recipe(run_dir, config)
        if not _finished(run_dir, steps):
            log(f"learning probe: {variant.label} -> {run_dir}")
            train(config, run_dir, resume=resume and (run_dir / "last.pt").exists(), data=data,
                  progress=progress, log=log)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            rows.append({"variant": variant.label, "seed": seed, "step": record["step"],
                         "seconds": record.get("train_seconds", math.nan), "train_error": record["train_error"],
                         "validation_error": record.get("validation_error", math.nan)})
    curves = pd.DataFrame(rows)
    summary = []
    for label, curve in curves.groupby("variant", sort=False):
        best = curve.loc[curve["validation_error"].idxmin()]
        summary.append({"variant": label, "best_validation_error": float(best["validation_error"]),
                        "at_step": int(best["step"]), "at_seconds": float(best["seconds"]),
                        "final_train_error": float(curve.iloc[-1]["train_error"]),
                        "seconds": float(curve.iloc[-1]["seconds"])})
    return curves, pd.DataFrame(summary)


def _run_name(variant: Variant, seed: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in variant.label.replace(":", "-").replace("@", "-"))
    return f"{safe}-seed{seed}"


def _check_same_recipe(run_dir: Path, config: TrainConfig) -> None:
    """Refuse to reuse a run directory whose run.json records another run than ``config``
    (:func:`~capsrobust.training.same_run`, naming the first differing option)."""
    run_json = run_dir / "run.json"
    if not run_json.exists():
        return
    difference = same_run(json.loads(run_json.read_text()).get("config", {}), config)
    if difference is not None:
        raise ConfigError(f"{run_dir} holds a run {difference}; choose another --runs directory")


def _finished(run_dir: Path, steps: int) -> bool:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return False
    lines = metrics.read_text().splitlines()
    return bool(lines) and json.loads(lines[-1])["step"] >= steps
