"""What the capsule layers of a matrix-capsule net do on images: activation and pose statistics.

A quick look inside a trained (or untrained) capsule net, layer by layer: are the activations
informative (spread over (0, 1)) or stuck near one value, and how large are the poses? Returns a
tidy DataFrame; printing is the caller's business.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor, nn

from capsrobust.models.layers import ClassCaps, ConvCaps, PrimaryCaps

__all__ = ["capsule_layer_statistics"]

_CAPSULE_LAYERS = (PrimaryCaps, ConvCaps, ClassCaps)


@torch.no_grad()
def capsule_layer_statistics(model: nn.Module, images: Tensor, *, batch_size: int = 64) -> pd.DataFrame:
    """One row per capsule layer, in forward order, over ``images`` (N, C, 32, 32) in [0, 1].

    Columns: ``layer`` (module name), ``kind``, ``capsules`` (per image), activation ``act_mean``,
    ``act_std`` (over all images and capsules), ``act_std_within`` (std over one image's capsules,
    averaged over images), quantiles ``act_q05``/``act_q50``/``act_q95``, and ``pose_std`` (std of
    all pose entries).
    """
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, _CAPSULE_LAYERS)]
    if not layers:
        raise ValueError("model has no capsule layers (PrimaryCaps, ConvCaps, ClassCaps)")
    collected: dict[str, tuple[list[Tensor], list[Tensor]]] = {name: ([], []) for name, _ in layers}

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
            poses, acts = output
            collected[name][0].append(acts.reshape(acts.shape[0], -1).float().cpu())
            collected[name][1].append(poses.reshape(poses.shape[0], -1).float().cpu())
        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in layers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    rows = []
    for name, module in layers:
        acts, poses = (torch.cat(parts) for parts in collected[name])
        quantiles = torch.quantile(acts.flatten()[:1_000_000], torch.tensor([0.05, 0.5, 0.95]))
        rows.append({
            "layer": name, "kind": type(module).__name__, "capsules": acts.shape[1],
            "act_mean": acts.mean().item(), "act_std": acts.std().item(),
            "act_std_within": acts.std(dim=1).mean().item() if acts.shape[1] > 1 else float("nan"),
            "act_q05": quantiles[0].item(), "act_q50": quantiles[1].item(), "act_q95": quantiles[2].item(),
            "pose_std": poses.std().item(),
        })
    return pd.DataFrame(rows)
