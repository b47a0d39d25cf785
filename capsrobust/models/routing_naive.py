"""A straightforward vectorised EM routing -- the baseline that ``capsrobust bench`` compares against.

Procedure 1 written the obvious way with broadcasting, as most public re-implementations do:
(V - mu) and the per-dimension Gaussian terms are materialised in every iteration, autograd
stores them all, and assignments are normalised per patch. Used only by the benchmark and
tests; the models use :func:`capsrobust.models.routing.em_routing`.
Shapes as there: votes (N, L, O, I, 16), activations (N, L, I) -> (N, L, O, 16), (N, L, O).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from capsrobust.models.routing import VARIANCE_FLOOR, inverse_temperatures


def naive_em_routing(
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    iterations: int = 3,
    *,
    schedule: str = "official",
    lambda_scale: float = 1.0,
    variance_floor: float = VARIANCE_FLOOR,
    **_ignored: object,  # normalisation / child_index: always per patch here
) -> tuple[Tensor, Tensor]:
    """Per-patch EM routing with every intermediate materialised (see module docstring)."""
    n, length, types, slots, dim = votes.shape
    v = votes.permute(0, 1, 3, 2, 4)  # (N, L, I, O, 16): children first, the usual layout
    a_in = activations.unsqueeze(-1)  # (N, L, I, 1)
    r = torch.full((n, length, slots, types), 1.0 / types, dtype=votes.dtype, device=votes.device)
    bu, ba = beta_u.view(1, 1, types, 1), beta_a.view(1, 1, types)
    for step, lam in enumerate(inverse_temperatures(schedule, iterations, lambda_scale)):
        rw = r * a_in  # (N, L, I, O)
        mass = rw.sum(dim=2, keepdim=True)  # (N, L, 1, O)
        coeff = rw / (mass + 1e-10)
        mu = (coeff.unsqueeze(-1) * v).sum(dim=2, keepdim=True)  # (N, L, 1, O, 16)
        diff_sq = (v - mu) ** 2  # (N, L, I, O, 16)
        var = (coeff.unsqueeze(-1) * diff_sq).sum(dim=2, keepdim=True) + variance_floor
        cost = ((bu + 0.5 * torch.log(var.squeeze(2))) * mass.squeeze(2).unsqueeze(-1)).sum(-1)  # (N, L, O)
        if schedule == "normalized":
            flat = cost.reshape(n, -1)
            cost = (cost - flat.mean(1).view(n, 1, 1)) / torch.sqrt(flat.var(1, unbiased=False).view(n, 1, 1) + 1e-6)
        logit_a = lam * (ba - cost)
        if step == iterations - 1:
            return mu.squeeze(2), torch.sigmoid(logit_a)
        log_p = -(diff_sq / (2 * var) + 0.5 * torch.log(2 * math.pi * var)).sum(-1)  # (N, L, I, O)
        r = torch.softmax(F.logsigmoid(logit_a).unsqueeze(2) + log_p, dim=3)
    raise AssertionError("unreachable")
