"""Models: matrix-capsule networks and the paper's baseline CNN, built by name.

Every model maps float images in [0, 1], shape (N, C, 32, 32) with C = 1 (mono) or 2 (stereo),
to class scores (N, 5); ``model.score_kind`` says whether they are capsule ``"activation"``s
or CNN ``"logits"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from capsrobust.errors import ConfigError
from capsrobust.models.capsnet import MatrixCapsNet
from capsrobust.models.cnn import BaselineCNN
from capsrobust.models.routing import em_routing

__all__ = ["MODELS", "MODEL_NAMES", "BaselineCNN", "MatrixCapsNet", "ModelEntry", "build_model", "capsules",
           "capsules_small", "cnn", "em_routing", "is_capsule_model", "score_kind"]


def capsules(*, in_channels: int = 2, **overrides: Any) -> MatrixCapsNet:
    """Matrix capsules with EM routing, A=B=C=D=32, 3 iterations (~310K params; Hinton et al., ICLR 2018)."""
    config: dict[str, Any] = dict(A=32, B=32, C=32, D=32, iterations=3)
    config.update(overrides)
    return MatrixCapsNet(in_channels, **config)


def capsules_small(*, in_channels: int = 2, **overrides: Any) -> MatrixCapsNet:
    """The paper's small capsule net, A=64, B=8, C=D=16 (~68K params; Hinton et al., ICLR 2018)."""
    config: dict[str, Any] = dict(A=64, B=8, C=16, D=16, iterations=3)
    config.update(overrides)
    return MatrixCapsNet(in_channels, **config)


def cnn(*, in_channels: int = 2, **overrides: Any) -> BaselineCNN:
    """The paper's baseline CNN (~4.2M params; Hinton et al., ICLR 2018, §5)."""
    return BaselineCNN(in_channels, **overrides)


@dataclass(frozen=True)
class ModelEntry:
    """One buildable model: its builder (keyword-only options, see each builder) and the class it returns.

    ``kind`` is the class's ``score_kind``: ``"activation"`` (capsule nets) or ``"logits"`` (the CNN).
    """

    builder: Callable[..., nn.Module]
    cls: type[nn.Module]

    @property
    def kind(self) -> str:
        return getattr(self.cls, "score_kind", "logits")


#: The models by name: the one table; :data:`MODEL_NAMES` and every fact about a name derive from it.
MODELS: dict[str, ModelEntry] = {
    "capsules": ModelEntry(capsules, MatrixCapsNet),
    "capsules-small": ModelEntry(capsules_small, MatrixCapsNet),
    "cnn": ModelEntry(cnn, BaselineCNN),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def score_kind(model: nn.Module) -> str:
    """What ``model``'s class scores are: ``"activation"`` (capsule nets) or ``"logits"`` (the CNN, and any
    module that does not say)."""
    return getattr(model, "score_kind", "logits")


def is_capsule_model(model: str | nn.Module) -> bool:
    """Whether ``model`` -- a model, or the name of one in :data:`MODEL_NAMES` -- is a capsule net: its scores
    are activations (spread loss, vote attack, routing options). The one test of a model's kind; never
    compare names."""
    if isinstance(model, str):
        return model in MODELS and MODELS[model].kind == "activation"
    return score_kind(model) == "activation"


def build_model(name: str, in_channels: int = 2, **overrides: Any) -> nn.Module:
    """Build a model by name (one of :data:`MODEL_NAMES`); ``overrides`` go to its builder."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return MODELS[name].builder(in_channels=in_channels, **overrides)
