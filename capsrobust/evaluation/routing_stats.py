"""What EM routing does, iteration by iteration: assignment-weighted vote-to-mean distances.

Routing is supposed to cluster: at each M-step a parent capsule's pose is the mean mu_j of its
children's votes V_ij weighted by R_ij a_i, and the E-step moves each child's assignment R_ij
towards the parents whose Gaussian explains its vote best. If that works, the votes that carry
weight for the image's true class end up close to that class capsule's mean, and the weighted
distances ||V_ij - mu_j|| shrink over the iterations (the histograms of Gritzman's "Avoiding
implementation pitfalls of matrix capsule networks" and of the seed article).

The layers' ``routing=`` hook receives the votes; :class:`RoutingRecorder` is a routing function
that runs the model's own :func:`capsrobust.models.routing.em_routing` on the votes in float64 with
an observer (tested against the float64 oracle ``tests/routing_reference.py``) and records at every
iteration t:

- ``weights`` (N, L, O, I): R_ij a_i, the weights of the M-step at iteration t (uniform R at t = 1),
- ``distances`` (N, L, O, I): ||V_ij - mu_j^t||, mu_j^t the mean that M-step computes,
- ``activations`` (N, L, O): a_j^t.

:func:`record_routing` swaps a layer's ``routing`` for a recorder and restores it afterwards. No
model code is touched; the model's own outputs are unchanged (up to float rounding).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from capsrobust.models.layers import ClassCaps, ConvCaps
from capsrobust.models.routing import RoutingStep, em_routing

__all__ = ["RoutingRecorder", "class_routing_table", "conv_routing_table", "record_routing",
           "recording_em_routing", "weighted_mean_distance"]

_MIN_MASS = 1e-10


def recording_em_routing(
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    iterations: int,
    **options,
) -> tuple[Tensor, Tensor, list[dict[str, Tensor]]]:
    """:func:`~capsrobust.models.routing.em_routing` in float64, returning (poses, activations, per-iteration records).

    Shapes as :func:`~capsrobust.models.routing.em_routing`, whose keyword ``options`` it takes (schedule,
    lambda_scale, normalisation, child_index, ...): votes (N, L, O, I, 16), activations (N, L, I),
    beta_u / beta_a (O,); returns poses (N, L, O, 16), activations (N, L, O) in the votes' dtype, without
    gradient, and one dict per iteration with ``weights`` and ``distances`` (N, L, O, I) and
    ``activations`` (N, L, O), float32.
    """
    records: list[dict[str, Tensor]] = []

    def record(step: RoutingStep) -> None:
        records.append({"weights": step.weights.float(), "distances": step.source.distances(step.mean).float(),
                        "activations": step.activations.float()})

    options.pop("images_per_chunk", None)  # one call: the observer sees every image at each iteration
    with torch.no_grad():
        poses, acts = em_routing(votes.detach().double(), activations.detach().double(), beta_u.detach().double(),
                                 beta_a.detach().double(), iterations, images_per_chunk=None, observer=record,
                                 **options)
    return poses.to(votes.dtype), acts.to(votes.dtype), records


def weighted_mean_distance(weights: Tensor, distances: Tensor) -> Tensor:
    """sum_i w_ij d_ij / sum_i w_ij over the last axis (I): (..., I) -> (...); NaN where no weight."""
    mass = weights.sum(-1)
    return torch.where(mass > _MIN_MASS, (weights * distances).sum(-1) / mass.clamp_min(_MIN_MASS),
                       torch.full_like(mass, float("nan")))


@dataclass
class RoutingRecorder:
    """A ``routing=`` function for a capsule layer that records every call (see the module docstring).

    ``keep="full"`` keeps the per-vote records (class layer: histograms); ``keep="summary"`` keeps
    only the weighted mean distance per image and parent type, averaged over positions, per
    iteration: (N, O) tensors (convolutional layers, whose vote tensors are large).
    """

    keep: str = "full"
    calls: list[list[dict[str, Tensor]]] = field(default_factory=list)

    def __call__(self, votes: Tensor, activations: Tensor, beta_u: Tensor, beta_a: Tensor, iterations: int,
                 **options) -> tuple[Tensor, Tensor]:
        poses, acts, records = recording_em_routing(votes, activations, beta_u, beta_a, iterations, **options)
        if self.keep == "summary":
            records = [{"mean_distance": torch.nanmean(weighted_mean_distance(r["weights"], r["distances"]), dim=1),
                        "activation": r["activations"].mean(dim=1)} for r in records]
        self.calls.append(records)
        return poses, acts

    def iterations(self) -> list[dict[str, Tensor]]:
        """The records of every call, concatenated over images, one dict per iteration."""
        if not self.calls:
            raise RuntimeError("the recorder has not been called")
        return [{key: torch.cat([call[t][key] for call in self.calls]) for key in self.calls[0][t]}
                for t in range(len(self.calls[0]))]


@contextlib.contextmanager
def record_routing(model: nn.Module, *, conv_layers: bool = True) -> Iterator[dict[str, RoutingRecorder]]:
    """Swap the routing of ``model``'s ClassCaps (full records) and ConvCaps (summaries) for recorders.

    Yields {module name: recorder}; the original routing functions are restored on exit.
    """
    recorders: dict[str, RoutingRecorder] = {}
    saved: list[tuple[nn.Module, object]] = []
    for name, module in model.named_modules():
        if isinstance(module, ClassCaps) or (conv_layers and isinstance(module, ConvCaps)):
            saved.append((module, module.routing))
            recorders[name] = RoutingRecorder(keep="full" if isinstance(module, ClassCaps) else "summary")
            module.routing = recorders[name]
    if not any(isinstance(m, ClassCaps) for m, _ in saved):
        raise ValueError("model has no class capsule layer (ClassCaps): routing can only be recorded in capsule nets")
    try:
        yield recorders
    finally:
        for module, routing in saved:
            module.routing = routing


def class_routing_table(records: list[dict[str, Tensor]], labels: Tensor) -> pd.DataFrame:
    """Weighted mean vote-to-mean distance of each class capsule at each iteration.

    ``records``: the class layer's :meth:`RoutingRecorder.iterations` (L = 1), ``labels`` (N,).
    One row per (iteration, class capsule, whose): ``whose`` is ``"true class"`` (images of that
    class) or ``"other classes"``; columns ``mean_distance`` (pooled weights over those images),
    ``activation`` (mean a_j) and ``images``.
    """
    rows = []
    labels = labels.cpu()
    for t, record in enumerate(records, start=1):
        weights, distances = record["weights"][:, 0], record["distances"][:, 0]  # (N, O, I)
        for j in range(weights.shape[1]):
            for whose, mask in (("true class", labels == j), ("other classes", labels != j)):
                if not mask.any():
                    continue
                w, d = weights[mask, j], distances[mask, j]
                share = (w.sum(-1) / weights[mask].sum((1, 2)).clamp_min(_MIN_MASS)).mean().item()
                rows.append({"iteration": t, "class_capsule": j, "whose": whose,
                             "mean_distance": weighted_mean_distance(w.flatten(), d.flatten()).item(),
                             "weight_share": share,
                             "activation": record["activations"][mask, 0, j].mean().item(),
                             "images": int(mask.sum())})
    return pd.DataFrame(rows)


def conv_routing_table(recorders: dict[str, RoutingRecorder]) -> pd.DataFrame:
    """Convolutional capsule layers in summary form: one row per (layer, iteration), averaged over
    positions, parent types and images: ``mean_distance`` (weighted vote-to-mean distance) and
    ``activation``."""
    rows = []
    for name, recorder in recorders.items():
        if recorder.keep != "summary":
            continue
        for t, record in enumerate(recorder.iterations(), start=1):
            rows.append({"layer": name, "iteration": t,
                         "mean_distance": float(np.nanmean(record["mean_distance"].numpy())),
                         "activation": record["activation"].mean().item()})
    return pd.DataFrame(rows)


@torch.no_grad()
def inspect_routing(model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 32
                    ) -> tuple[list[dict[str, Tensor]], pd.DataFrame, pd.DataFrame]:
    """Run ``images`` (N, C, 32, 32) through ``model`` (eval mode) with routing recorded.

    Returns the class layer's per-iteration records (for :func:`capsrobust.reporting.inspect_plots.plot_routing_histograms`),
    :func:`class_routing_table` over ``labels`` and :func:`conv_routing_table`.
    """
    was_training = model.training
    model.eval()
    try:
        with record_routing(model) as recorders:
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
    finally:
        model.train(was_training)
    class_name = next(name for name, r in recorders.items() if r.keep == "full")
    records = recorders[class_name].iterations()
    return records, class_routing_table(records, labels), conv_routing_table(recorders)
