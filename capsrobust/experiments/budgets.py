"""How long each kind of model trains: budgets keyed by the kind of model, not capsule/CNN pairs of fields.

A study or viewpoint budget holds one :class:`ModelBudget` per kind in :data:`KINDS`; :func:`kind_of`
tells a model's kind (through :func:`capsrobust.models.is_capsule_model`, never by its name).

Example::

    from capsrobust.experiments.budgets import ModelBudget, kind_of
    models = {"capsule": ModelBudget(steps=150), "cnn": ModelBudget(steps=150)}
    models[kind_of("capsules-small")].steps  # 150
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from capsrobust.errors import ConfigError
from capsrobust.models import is_capsule_model

__all__ = ["CAPSULE", "CNN_KIND", "KINDS", "ModelBudget", "check_kinds", "kind_of", "models_from_record"]

#: The kind of a capsule net and of the baseline CNN, the keys of every per-kind mapping.
CAPSULE, CNN_KIND = "capsule", "cnn"
KINDS = (CAPSULE, CNN_KIND)


@dataclass(frozen=True)
class ModelBudget:
    """One kind of model's training: ``steps`` (None: from ``epochs``, see ``training.total_steps``) and the
    model options over its preset's (``overrides``, e.g. ``{"iterations": 2}`` for a capsule net)."""

    steps: int | None = None
    epochs: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "ModelBudget":
        """This budget with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def kind_of(model: str) -> str:
    """The kind of ``model`` (a name in :data:`capsrobust.models.MODEL_NAMES`): ``capsule`` or ``cnn``."""
    return CAPSULE if is_capsule_model(model) else CNN_KIND


def check_kinds(models: Mapping[str, ModelBudget], owner: str) -> None:
    """One-line :class:`ConfigError` unless ``models`` holds exactly one :class:`ModelBudget` per kind."""
    if sorted(models) != sorted(KINDS) or not all(isinstance(m, ModelBudget) for m in models.values()):
        raise ConfigError(f"budget {owner}: models must map each of {', '.join(KINDS)} to a ModelBudget, "
                          f"got {sorted(models)}")


def models_from_record(record: Mapping[str, Mapping[str, Any]]) -> dict[str, ModelBudget]:
    """The per-kind budgets as ``dataclasses.asdict`` saved them (a stage record) rebuilt."""
    return {kind: ModelBudget(**dict(fields)) for kind, fields in record.items()}
