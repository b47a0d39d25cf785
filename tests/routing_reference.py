"""A literal, slow transcription of the paper's Procedure 1 (EM routing) -- the test oracle.

Plain Python loops over images, parents and children; each pose is a 16-vector; float64.
It mirrors REFERENCE.md §4 line by line and deliberately shares no code with
``capsrobust.models.routing`` (only the two published constants are restated here).
Autograd runs through it, so gradients can be compared too.

Shapes as in :func:`capsrobust.models.routing.em_routing`:
votes (N, L, O, I, 16), activations (N, L, I), beta_u/beta_a (O,), child_index (L, I).
"""

from __future__ import annotations

import math

import torch

FINAL_LAMBDA = 0.01  # official code, REFERENCE.md §4
FLOOR = 5e-4  # official variance floor
MIN_MASS = 1e-10


def reference_lambdas(schedule: str, iterations: int, scale: float) -> list[float]:
    if schedule == "official":
        return [FINAL_LAMBDA * scale * (1 - 0.95 ** (i + 1)) for i in range(iterations)]
    return [scale * (i + 1) for i in range(iterations)]


def reference_em_routing(votes, activations, beta_u, beta_a, iterations, *, schedule="official",
                         lambda_scale=1.0, normalisation="official", child_index=None):
    n_img, n_pos, n_types, n_slots, _ = votes.shape
    lambdas = reference_lambdas(schedule, iterations, lambda_scale)

    def child_of(l, i):
        if normalisation == "patch":
            return (l, i)  # every slot is its own child: normalise within the patch
        if child_index is None:
            return (l, i)
        return int(child_index[l, i])

    # parents_of[child] = list of (l, i, o) slots through which the child feeds a parent
    parents_of: dict = {}
    for l in range(n_pos):
        for i in range(n_slots):
            for o in range(n_types):
                parents_of.setdefault(child_of(l, i), []).append((l, i, o))

    out_poses, out_acts = [], []
    for n in range(n_img):
        # R_ij starts uniform over the parents each child feeds.
        R = {}
        for child, parents in parents_of.items():
            for (l, i, o) in parents:
                R[(l, i, o)] = torch.tensor(1.0 / len(parents), dtype=torch.float64)
        for t in range(iterations):
            lam = lambdas[t]
            mu, var, a_out = {}, {}, {}
            costs = {}
            for l in range(n_pos):
                for o in range(n_types):
                    # M-step: R_ij <- R_ij * a_i
                    rw = [R[(l, i, o)] * activations[n, l, i] for i in range(n_slots)]
                    total = sum(rw)
                    denom = torch.clamp(total, min=MIN_MASS)
                    m = sum(rw[i] * votes[n, l, o, i] for i in range(n_slots)) / denom
                    v = sum(rw[i] * (votes[n, l, o, i] - m) ** 2 for i in range(n_slots)) / denom + FLOOR
                    cost_h = (beta_u[o] + torch.log(torch.sqrt(v))) * total
                    mu[(l, o)], var[(l, o)] = m, v
                    costs[(l, o)] = cost_h.sum()
            if schedule == "normalized":
                values = list(costs.values())
                mean_c = sum(values) / len(values)
                var_c = sum((c - mean_c) ** 2 for c in values) / len(values)
                costs = {k: (c - mean_c) / torch.sqrt(var_c + 1e-6) for k, c in costs.items()}
            for (l, o), c in costs.items():
                a_out[(l, o)] = torch.sigmoid(lam * (beta_a[o] - c))
            if t == iterations - 1:
                break
            # E-step, in the log domain: log(a_j p_j) normalised over the child's parents.
            log_ap = {}
            for (l, i, o) in R:
                x, m, v = votes[n, l, o, i], mu[(l, o)], var[(l, o)]
                log_p = (-(x - m) ** 2 / (2 * v) - 0.5 * torch.log(2 * math.pi * v)).sum()
                log_ap[(l, i, o)] = torch.log(a_out[(l, o)]) + log_p
            for child, parents in parents_of.items():
                denom = torch.logsumexp(torch.stack([log_ap[p] for p in parents]), dim=0)
                for p in parents:
                    R[p] = torch.exp(log_ap[p] - denom)
        out_poses.append(torch.stack([torch.stack([mu[(l, o)] for o in range(n_types)]) for l in range(n_pos)]))
        out_acts.append(torch.stack([torch.stack([a_out[(l, o)] for o in range(n_types)]) for l in range(n_pos)]))
    return torch.stack(out_poses), torch.stack(out_acts)


def conv_child_index(height: int, width: int, types: int, kernel: int, stride: int) -> torch.Tensor:
    """(L, I) child ids for a k x k, stride s patch grid over (height, width, types) children."""
    out_h = (height - kernel) // stride + 1
    out_w = (width - kernel) // stride + 1
    rows = []
    for y in range(out_h):
        for x in range(out_w):
            row = []
            for dy in range(kernel):
                for dx in range(kernel):
                    for b in range(types):
                        row.append(((y * stride + dy) * width + (x * stride + dx)) * types + b)
            rows.append(row)
    return torch.tensor(rows, dtype=torch.long)
