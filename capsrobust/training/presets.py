"""Named training recipes: the capsule-net options and spread-loss schedule a run starts from.

The model builders (:mod:`capsrobust.models`) keep the paper's architecture and its routing
constants, so a checkpoint's stored options always rebuild the network it was trained as. A
preset is applied on top, when a run starts (:func:`resolve_preset`): options the user gives
win, the preset fills the rest, and the fully resolved options are what ``run.json`` and every
checkpoint record.

- ``default``: chosen by the learning probe and the ablation in ``results/train/`` (README.md,
  "Training defaults", states each choice and the measurement behind it).
- ``paper``: the paper's text -- 3 routing iterations, the official inverse-temperature schedule
  and costs, beta_a and beta_u as plain offsets, the spread-loss margin 0.2 -> 0.9 by +0.1 per epoch.
- ``official``: the authors' released code (google-research ``capsule_em``) -- 3 iterations, its
  cost constants (``beta_parametrisation="official"``) and its margin time axis (~0.2 for the
  first 100K steps).

Each preset holds one :class:`KindRecipe` per kind of model (:data:`KINDS`). The CNN has no routing
options: its recipe (Adam at :data:`CNN_LR`, cross-entropy, augmentation) is the same in all three.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

from capsrobust.errors import ConfigError
from capsrobust.models import MatrixCapsNet, is_capsule_model
from capsrobust.models.layers import BETA_PARAMETRISATIONS, COORDINATES, COST_NORMALISATIONS, TRANSFORM_INITS
from capsrobust.models.routing import NORMALISATIONS, SCHEDULES

__all__ = ["KINDS", "KindRecipe", "PRESETS", "PRESET_NAMES", "Preset", "RoutingOptions", "flag", "get_preset",
           "kind_of", "resolve_preset"]

#: Adam learning rates: the authors' 3e-3 for capsule nets (REFERENCE.md §4). The CNN's is 1e-3: at
#: 3e-3 it fitted nothing of the 512-image probe in 300 steps (chance) and reached 25.4 % validation
#: error after 1,500 full-data steps, against 11.5 % at 1e-3 (results/train/probe-subset, probe-full-cnn).
CAPSULE_LR = 3e-3
CNN_LR = 1e-3
#: The learning rate's factor per 1/20 of a run: the paper's 0.96 per 20K steps, scaled to the run.
PAPER_LR_DECAY = 0.96
#: The default capsule nets' factor: 0.8 ends a run at 1/87 of the start. Over 30 epochs of capsules-small
#: (two seeds each) it gave test error 17.6 +- 0.7 % against 18.6 +- 0.1 % at 0.96, a validation error that
#: settles (9-12 % over the last ten epochs, against 6-14 %) and training error <= 2 % by epoch 16-17 instead
#: of 26. The CNN keeps 0.96: at 0.8 its test error was higher (results/train/README.md).
CAPSULE_LR_DECAY = 0.8
#: The default capsule nets' shape jitter (training.TrainConfig.shape_jitter): each axis stretched by a
#: log-uniform factor in [1/1.15, 1.15] before the crop. 30 epochs of capsules-small, two seeds, paired
#: with the runs without it: test error 15.64 +- 0.65 % against 17.55 +- 0.70 %, better in both seeds
#: (results/train/jitter/).
CAPSULE_SHAPE_JITTER = 0.15

#: The kinds of model a preset has a recipe for: capsule nets and the CNN (:func:`kind_of`).
KINDS: tuple[str, ...] = ("capsule", "cnn")

#: Routing option -> its command-line flag, where the flag is not ``--`` plus the name with dashes.
_FLAGS = {"schedule": "--routing-schedule"}
#: Routing option -> the values it may take (the models' own tables).
_CHOICES: dict[str, tuple[str, ...]] = {
    "schedule": SCHEDULES, "normalisation": NORMALISATIONS, "transform_init": TRANSFORM_INITS,
    "beta_parametrisation": BETA_PARAMETRISATIONS, "cost_normalisation": COST_NORMALISATIONS,
    "coordinates": COORDINATES,
}


def kind_of(model: str) -> str:
    """The kind of model ``model`` is, one of :data:`KINDS` (by :func:`~capsrobust.models.is_capsule_model`)."""
    return "capsule" if is_capsule_model(model) else "cnn"


def flag(option: str) -> str:
    """The command-line flag of a training or routing option (``lambda_scale`` -> ``--lambda-scale``)."""
    return _FLAGS.get(option, "--" + option.replace("_", "-"))


@dataclass(frozen=True)
class RoutingOptions:
    """A capsule net's EM-routing options (:class:`~capsrobust.models.MatrixCapsNet` keyword arguments);
    None: not chosen, so the builder's default (:meth:`defaults`).

    A run records the chosen ones as a plain dict (``model_overrides`` in ``run.json``, ``model_config``
    in every checkpoint; :meth:`overrides`), so ``build_model(name, **options)`` rebuilds any checkpoint.
    """

    iterations: int | None = None
    schedule: str | None = None
    normalisation: str | None = None
    lambda_scale: float | None = None
    conv_lambda_scale: float | None = None
    class_lambda_scale: float | None = None
    transform_init: str | None = None
    beta_parametrisation: str | None = None
    cost_normalisation: str | None = None
    coordinates: str | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> "RoutingOptions":
        """The routing options among a run's model options (other keys, e.g. ``A``, stay the builder's business)."""
        return cls(**{key: value for key, value in overrides.items() if key in cls.names()})

    @classmethod
    def defaults(cls) -> "RoutingOptions":
        """What each option is when not chosen: the model class's own defaults (the one source)."""
        parameters = inspect.signature(MatrixCapsNet.__init__).parameters
        return cls(**{name: parameters[name].default for name in cls.names()})

    def overrides(self) -> dict[str, Any]:
        """The chosen options (not None) as a run records them, in field order."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    def validate(self) -> None:
        """One-line :class:`ConfigError` for an option out of range, naming its flag."""
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError(f"--iterations must be at least 1, got {self.iterations}")
        for key in ("lambda_scale", "conv_lambda_scale", "class_lambda_scale"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"{flag(key)} must be positive (1 = official), got {value}")
        for key, valid in _CHOICES.items():
            value = getattr(self, key)
            if value is not None and value not in valid:
                raise ConfigError(f"unknown {flag(key)} {value!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class KindRecipe:
    """One kind of model's part of a preset: what a run of that kind gets where the user chose nothing."""

    lr: float  # Adam's learning rate at the start
    lr_decay: float = PAPER_LR_DECAY  # the learning rate's factor per 1/20 of the run
    ema_decay: float = 0.0  # the weight average's decay (training.TrainConfig.ema_decay); 0: none
    shape_jitter: float = 0.0  # training.TrainConfig.shape_jitter; 0: the paper's augmentation only
    margin_schedule: str = "run"  # the spread-loss margin (losses.MARGIN_SCHEDULES); the CNN records "run"
    routing: RoutingOptions = field(default_factory=RoutingOptions)  # capsule nets only


@dataclass(frozen=True)
class Preset:
    """A named recipe: one :class:`KindRecipe` per kind of model (:data:`KINDS`)."""

    name: str
    description: str
    kinds: Mapping[str, KindRecipe]

    def for_model(self, model: str) -> KindRecipe:
        """The recipe of ``model``'s kind."""
        return self.kinds[kind_of(model)]

    @property
    def capsule_options(self) -> dict[str, Any]:
        """The capsule nets' routing options (``build_model`` keyword arguments) this preset chooses."""
        return self.kinds["capsule"].routing.overrides()


_CNN = KindRecipe(lr=CNN_LR)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "default",
            "2 routing iterations, beta_a in logit units, IBM's cost normalisation, spread-loss margin held at 0.2, "
            "learning rate x0.8 per 1/20 of the run, shape jitter 0.15",
            {"capsule": KindRecipe(lr=CAPSULE_LR, lr_decay=CAPSULE_LR_DECAY, shape_jitter=CAPSULE_SHAPE_JITTER,
                                   margin_schedule="held",
                                   routing=RoutingOptions(iterations=2, beta_parametrisation="logit",
                                                          cost_normalisation="ibm")),
             "cnn": _CNN},
        ),
        Preset(
            "paper",
            "the paper's text: 3 iterations, official lambda schedule, direct betas, margin +0.1 per epoch",
            {"capsule": KindRecipe(lr=CAPSULE_LR, margin_schedule="epoch",
                                   routing=RoutingOptions(iterations=3, beta_parametrisation="direct",
                                                          cost_normalisation="none")),
             "cnn": _CNN},
        ),
        Preset(
            "official",
            "the released code: 3 iterations, its cost constants, its margin time axis",
            {"capsule": KindRecipe(lr=CAPSULE_LR, margin_schedule="official",
                                   routing=RoutingOptions(iterations=3, beta_parametrisation="official",
                                                          cost_normalisation="none")),
             "cnn": _CNN},
        ),
    )
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def get_preset(name: str) -> Preset:
    """A preset by name; one-line :class:`ConfigError` naming the valid ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown --preset {name!r}; valid: {', '.join(PRESET_NAMES)}") from None


def resolve_preset(config: Any) -> Any:
    """The complete config a run trains and records: a copy of a :class:`~capsrobust.training.TrainConfig`,
    checked (its ``validate``), with its preset's recipe for its kind of model filled in.

    The preset's routing options go under the explicit ``model_overrides`` (explicit ones win; the
    CNN's recipe has none); its learning rate, learning-rate decay, weight-average decay, shape jitter
    and margin schedule fill ``lr`` / ``lr_decay`` / ``ema_decay`` / ``shape_jitter`` /
    ``margin_schedule`` where they are None. Resolving a resolved config changes nothing.
    """
    config.validate()
    recipe = get_preset(config.preset).for_model(config.model)
    return dataclasses.replace(config, model_overrides={**recipe.routing.overrides(), **config.model_overrides},
                               lr=config.lr or recipe.lr,
                               margin_schedule=config.margin_schedule or recipe.margin_schedule,
                               lr_decay=_given(config.lr_decay, recipe.lr_decay),
                               ema_decay=_given(config.ema_decay, recipe.ema_decay),
                               shape_jitter=_given(config.shape_jitter, recipe.shape_jitter))


def _given(value: Any, preset_value: Any) -> Any:
    """The user's ``value`` where given (not None), else the preset's."""
    return preset_value if value is None else value
