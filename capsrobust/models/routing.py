"""EM routing between capsule layers (Hinton, Sabour & Frosst, ICLR 2018, Procedure 1).

Two pure functions: :func:`em_routing` (votes given) and :func:`em_routing_from_poses` (votes
V = patches @ W of a convolutional layer, never stored), sharing one implementation of
Procedure 1 in which only a few contractions touch the votes (see "Why it is fast"). A slow, literal
float64 transcription of Procedure 1 lives in ``tests/routing_reference.py`` and is the
oracle this module is tested against.

Shapes (``N`` images, ``L`` parent positions / patches, ``O`` parent capsule types, ``I``
child slots per patch, 16 = a flattened 4x4 pose):

    votes:        (N, L, O, I, 16)   V_ij, any strides (a permuted view is fine)
    activations:  (N, L, I)          a_i of the child in slot i of patch l
    beta_u:       (O,)               per output capsule *type* (paper §3)
    beta_a:       (O,)
    child_index:  (L, I) long        which child (0 .. num_children-1) sits in slot (l, i)
    returns       poses (N, L, O, 16), activations (N, L, O)

Why it is fast: the M-step sums sum_i R_ij V_ij and sum_i R_ij V_ij^2 and the E-step's
sum_h (V - mu)^2 / sigma^2 are all contractions of ``[V, V^2]`` (N, L, O, I, 32) with a small
tensor; ``(V - mu)`` is never materialised, and backward collects every contraction's factors and
turns them into one vote gradient. Two vote sources provide the contractions:
:class:`StoredVotes` (PyTorch batched products over a stored ``[V, V^2]``; any votes) and
:class:`FusedVotes` (convolutional layers: C kernels recompute V = M W inside every contraction,
so nothing vote-sized is stored and the passes run from cache; :func:`em_routing_from_poses`).
Votes are centred on a per-parent constant (routing is equivariant to a per-parent shift of its
votes) so the moment form of the variance does not lose precision in float32.

Both functions take an optional ``observer``: called once per iteration (M-step) with a
:class:`RoutingStep` (the M-step's weights R_ij a_i, the parent means and activations, and the vote
source, whose :meth:`StoredVotes.distances` gives ||V_ij - mu_j||); what
:mod:`capsrobust.evaluation.routing_stats` records. Without one (the default) nothing extra is computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor
import torch.nn.functional as F

Schedule = Literal["official", "normalized"]
Normalisation = Literal["official", "patch"]

SCHEDULES: tuple[str, ...] = ("official", "normalized")
NORMALISATIONS: tuple[str, ...] = ("official", "patch")

#: Official code: lambda_final = 0.01 with un-normalised costs (REFERENCE.md §4).
OFFICIAL_FINAL_LAMBDA = 0.01
#: Official code adds ~5e-4 to every variance so a parent with one child cannot collapse.
VARIANCE_FLOOR = 5e-4
#: Guards sum_i R_ij when every child of a parent is inactive (a_i = 0).
_MIN_MASS = 1e-10
#: Stored votes are routed a chunk of images at a time so that [V, V^2] stays under this many
#: bytes: 8 ConvCaps1 images of the 310K net (~340 MB), a whole batch of class-layer votes (~5 MB at
#: batch 32), where chunking would only multiply the small operations.
STORED_VOTES_BYTES = 384 * 2**20
#: ``images_per_chunk`` default: as many images as fit :data:`STORED_VOTES_BYTES`.
AUTO_CHUNK = 0


def images_per_chunk_for(per_image_votes: int, itemsize: int, chunk: int | None = AUTO_CHUNK) -> int | None:
    """Images routed together when one image has ``per_image_votes`` vote entries (L O I 16).

    ``chunk`` as given, except :data:`AUTO_CHUNK`: the most images whose [V, V^2] fit
    :data:`STORED_VOTES_BYTES` (at least one). ``None``: all at once.
    """
    if chunk != AUTO_CHUNK:
        return chunk
    return max(1, STORED_VOTES_BYTES // (2 * per_image_votes * itemsize))
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def inverse_temperatures(schedule: str, iterations: int, lambda_scale: float = 1.0) -> list[float]:
    """Inverse temperature lambda for each M-step ``i = 0 .. iterations-1``.

    ``"official"``: lambda_i = 0.01 * scale * (1 - 0.95^(i+1)) -- the authors' OpenReview answer
    and released code; their class layer uses scale 1/4. Costs are *not* normalised.
    ``"normalized"``: lambda_i = scale * (i + 1) (1, 2, 3, ...), used with costs standardised over
    the layer's parents, as in several public re-implementations.
    """
    if schedule == "official":
        return [OFFICIAL_FINAL_LAMBDA * lambda_scale * (1.0 - 0.95 ** (i + 1)) for i in range(iterations)]
    if schedule == "normalized":
        return [lambda_scale * (i + 1.0) for i in range(iterations)]
    raise ValueError(f"unknown routing schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def uniform_log_assignments(
    child_index: Tensor | None, num_parent_types: int, shape_li: tuple[int, int], dtype: torch.dtype
) -> Tensor:
    """log R_ij at the start (uniform over every parent a child feeds): (1, L, 1, I).

    With ``child_index`` the child's mass is split over all (position, type) parents that
    contain it (official); without, over the ``O`` parent types of its patch.
    """
    length, slots = shape_li
    if child_index is None:
        return torch.full((1, length, 1, slots), -math.log(num_parent_types), dtype=dtype, device="cpu")
    flat = child_index.reshape(-1)
    counts = torch.bincount(flat).to(dtype) * num_parent_types
    return (-counts.log())[flat].view(1, length, 1, slots)


def _assignment_factor(top: Tensor, total: Tensor, activations: Tensor, child_index: Tensor | None,
                       num_children: int) -> Tensor:
    """The per-child factor f (N, L, I) with which the next M-step's weights R_ij a_i = e_ij f_i.

    The E-step left z_ij as e = exp(z - top) and total = sum over the patch's O types of e, both
    per (image, patch, slot) (N, L, I). R_ij = exp(z_ij) / Z_i with Z_i the normaliser over every
    parent of child i: per patch (``child_index`` None) Z = exp(top) total; official ("parents
    compete"), Z sums exp(top) total over every patch holding the child, a log-sum-exp gathered
    per child with index_add. So f = exp(top - log Z) a.
    """
    per_slot = top + torch.log(total)  # (N, L, I): log sum_o exp(z); total >= 1 (its largest term is 1)
    if child_index is None:
        return torch.exp(top - per_slot) * activations
    n, length, slots = per_slot.shape
    flat_slots = per_slot.reshape(n, length * slots)
    flat = child_index.reshape(-1)
    with torch.no_grad():  # the shift only stabilises; the result does not depend on it
        shift = flat_slots.new_full((n, num_children), -torch.inf)
        shift.scatter_reduce_(1, flat.expand(n, -1), flat_slots, reduce="amax", include_self=True)
        shift = torch.nan_to_num(shift, neginf=0.0)
    mass = flat_slots.new_zeros((n, num_children)).index_add(1, flat, torch.exp(flat_slots - shift[:, flat]))
    # Children outside every receptive field have mass 0; keep log() finite there.
    mass = torch.where(mass > 0, mass, torch.ones_like(mass))
    per_child = shift + mass.log()  # (N, C)
    return torch.exp(top - per_child[:, flat].view(n, length, slots)) * activations


def _stack_votes(votes: Tensor) -> tuple[Tensor, Tensor]:
    """votes (N, L, O, I, 16) -> [V - c, (V - c)^2] (N, L, O, I, 32) contiguous, centre c (N, L, O, 16)."""
    centre = votes.detach().mean(dim=3, keepdim=True)
    stacked = votes.new_empty(votes.shape[:-1] + (2 * votes.shape[-1],))
    dim = votes.shape[-1]
    torch.sub(votes.detach(), centre, out=stacked[..., :dim])
    torch.mul(stacked[..., :dim], stacked[..., :dim], out=stacked[..., dim:])
    return stacked, centre.squeeze(3)


class StoredVotes:
    """Votes held in memory as [V - c, (V - c)^2] (N, L, O, I, 32); any vote tensor works.

    The centre c (per parent, the mean vote) only keeps the moment form of the variance precise
    in float32; routing is equivariant to it, so it is a constant for autograd (exactly: every
    output is unchanged by any shift c, hence no gradient flows through it). The steps below are
    the PyTorch twins of the fused kernels' (see :class:`FusedVotes`); shapes as in ``_route``.
    """

    def __init__(self, votes: Tensor) -> None:
        self.shape = tuple(votes.shape)
        self.stacked, self.centre = _stack_votes(votes)

    def _sums(self, weights: Tensor) -> Tensor:
        """weights (N, L, O, I) -> (N, L, O, 32): sum_i w [V - c, (V - c)^2]."""
        return torch.matmul(weights.unsqueeze(3), self.stacked).squeeze(3)

    def _projections(self, coeff: Tensor) -> Tensor:
        """coeff (N, L, O, 32) -> (N, L, O, I): [V - c, (V - c)^2] . coeff."""
        return torch.matmul(self.stacked, coeff.unsqueeze(-1)).squeeze(-1)

    def _weights(self, e: Tensor | None, factor: Tensor) -> Tensor:
        weights = factor.unsqueeze(2) if e is None else e * factor.unsqueeze(2)
        return weights.expand(self.shape[:4])

    def m_step(self, e: Tensor | None, factor: Tensor) -> tuple[Tensor, Tensor]:
        weights = self._weights(e, factor)
        return weights.sum(dim=3), self._sums(weights)

    def m_step_backward(self, e: Tensor | None, factor: Tensor, g_mass: Tensor,
                        g_sums: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        g_w = self._projections(g_sums) + g_mass.unsqueeze(-1)
        g_e = None if e is None else g_w * factor.unsqueeze(2)
        g_factor = (g_w if e is None else g_w * e).sum(dim=2)
        return g_e, g_factor, self._weights(e, factor)

    def e_step(self, coeff: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = self._projections(coeff) + offset.unsqueeze(-1)
        top = z.amax(dim=2)
        e = torch.exp(z - top.unsqueeze(2))
        return e, top, e.sum(dim=2)

    def e_step_backward(self, e: Tensor, g_e: Tensor, g_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g_z = e * (g_e + g_s.unsqueeze(2))
        return self._sums(g_z), g_z.sum(dim=3), g_z

    def distances(self, mean: Tensor) -> Tensor:
        """||V_ij - mean_j||: mean (N, L, O, 16) in vote coordinates -> (N, L, O, I); no gradient."""
        dim = self.shape[-1]
        offset = (mean.detach() - self.centre).unsqueeze(3)  # (N, L, O, 1, 16), like V - c
        return (self.stacked[..., :dim] - offset).norm(dim=-1)

    def vote_grads(self, left: list[Tensor], right: list[Tensor]) -> tuple[Tensor]:
        """d loss / d votes from d loss / d stacked = sum_k left_k (N, L, O, I) (x) right_k (N, L, O, 32)."""
        n, length, types, slots, width = self.stacked.shape
        dim = width // 2
        lefts = torch.stack(left, dim=-1).view(n * length * types, slots, -1)  # (B, I, K)
        rights = torch.stack(right, dim=-2).view(n * length * types, -1, width)  # (B, K, 32)
        g_stacked = torch.bmm(lefts, rights).view(self.stacked.shape)
        # d/dV of [V - c, (V - c)^2] with c held constant.
        return (torch.addcmul(g_stacked[..., :dim], self.stacked[..., :dim], g_stacked[..., dim:], value=2.0),)


class FusedVotes:
    """Votes V[n, l, o, i] = M[n, l, i] W[i, o] of a convolutional capsule layer, never stored.

    Each step recomputes V from the patches M (N, L, I, 4, 4) and transforms W (I, O, 4, 4) in C
    (:mod:`capsrobust.models.vote_kernels`), together with the element-wise work around it, so
    the passes run from cache instead of memory and no (N, L, O, I) pass is left to PyTorch.
    Float32 on the CPU only; see :func:`fused_votes_supported`.
    """

    def __init__(self, patches: Tensor, weight: Tensor) -> None:
        from capsrobust.models import vote_kernels

        self.kernels = vote_kernels
        n, length, slots = patches.shape[:3]
        types = weight.shape[1]
        self.shape = (n, length, types, slots, 16)
        self.tiles = n * length
        self.M = patches.detach().reshape(self.tiles, slots, 16).contiguous()
        self.Wt = vote_kernels.transforms_for_kernels(weight.detach())  # (I, 4, lanes)
        self.cc = vote_kernels.centre(self.M, self.Wt, types)  # (B, O, 16)
        self.centre = self.cc.view(n, length, types, 16)

    def _tiles(self, tensor: Tensor | None) -> Tensor | None:
        """(N, L, X...) -> contiguous (B, X...), the kernels' layout."""
        return None if tensor is None else tensor.reshape(self.tiles, *tensor.shape[2:]).contiguous()

    def _untile(self, tensor: Tensor | None) -> Tensor | None:
        return None if tensor is None else tensor.view(self.shape[:2] + tuple(tensor.shape[1:]))

    def m_step(self, e: Tensor | None, factor: Tensor) -> tuple[Tensor, Tensor]:
        sums, mass, _ = self.kernels.weighted_sums(self.M, self.Wt, self.cc, self._tiles(e),
                                                   per_child=self._tiles(factor), mass=True)
        return self._untile(mass), self._untile(sums)

    def m_step_backward(self, e: Tensor | None, factor: Tensor, g_mass: Tensor,
                        g_sums: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        outs = self.kernels.m_step_backward(self.M, self.Wt, self.cc, self._tiles(e), self._tiles(factor),
                                            self._tiles(g_sums), self._tiles(g_mass))
        return tuple(self._untile(t) for t in outs)  # type: ignore[return-value]

    def e_step(self, coeff: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outs = self.kernels.e_step(self.M, self.Wt, self.cc, self._tiles(coeff), self._tiles(offset))
        return tuple(self._untile(t) for t in outs)  # type: ignore[return-value]

    def e_step_backward(self, e: Tensor, g_e: Tensor, g_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outs = self.kernels.weighted_sums(self.M, self.Wt, self.cc, self._tiles(e), extra=self._tiles(g_e),
                                          per_child=self._tiles(g_s), mass=True, keep_weights=True)
        return tuple(self._untile(t) for t in outs)  # type: ignore[return-value]

    def vote_grads(self, left: list[Tensor], right: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(d patches (N, L, I, 4, 4), d weight (I, O, 4, 4)) from the recorded factor pairs."""
        n, length, types, slots, _ = self.shape
        g_m, g_wt = self.kernels.vote_backward(self.M, self.Wt, self.cc, [self._tiles(f) for f in left],
                                               [self._tiles(f) for f in right])
        return g_m.view(n, length, slots, 4, 4), self.kernels.transforms_from_kernels(g_wt, types)


def fused_votes_supported(patches: Tensor, weight: Tensor) -> bool:
    """Whether :class:`FusedVotes` can route these inputs (float32 CPU tensors, kernels built)."""
    from capsrobust.models import vote_kernels

    return (patches.dtype == torch.float32 and weight.dtype == torch.float32
            and patches.device.type == "cpu" and weight.device.type == "cpu"
            and 4 * weight.shape[1] <= vote_kernels.MAX_OC and vote_kernels.available())


@dataclass(frozen=True)
class RoutingStep:
    """One iteration of Procedure 1 as an observer sees it (shapes as in :func:`em_routing`).

    ``iteration``: 0-based M-step index; ``weights`` (N, L, O, I): R_ij a_i, the weights of this
    M-step (uniform R at the first); ``mean`` (N, L, O, 16): the parent means mu_j it computes, in
    vote coordinates; ``activations`` (N, L, O): a_j; ``source``: the votes, so that stored votes give
    ||V_ij - mu_j|| with ``source.distances(mean)``. Tensors are detached.
    """

    iteration: int
    weights: Tensor
    mean: Tensor
    activations: Tensor
    source: "StoredVotes | FusedVotes"


#: Called once per iteration with that iteration's :class:`RoutingStep`.
RoutingObserver = Callable[[RoutingStep], None]


class _Tape:
    """Factors of d loss / d [V - c, (V - c)^2] = sum_k left_k (x) right_k, collected during backward."""

    def __init__(self) -> None:
        self.left: list[Tensor] = []  # (N, L, O, I) each
        self.right: list[Tensor] = []  # (N, L, O, 32) each


class _VoteRoot(torch.autograd.Function):
    """Ties every contraction to the vote inputs; its backward turns all recorded outer-product
    factors into vote gradients at once, instead of autograd writing a full-size gradient per
    contraction."""

    @staticmethod
    def forward(ctx, source, tape: _Tape, *inputs: Tensor):  # type: ignore[override]
        ctx.source, ctx.tape, ctx.num_inputs = source, tape, len(inputs)
        return inputs[0].new_zeros(())

    @staticmethod
    def backward(ctx, _g_token):  # type: ignore[override]
        tape: _Tape = ctx.tape
        grads = ctx.source.vote_grads(tape.left, tape.right) if tape.left else (None,) * ctx.num_inputs
        tape.left.clear(), tape.right.clear()
        ctx.source = None  # free the stored votes as soon as possible
        return (None, None, *grads)


class _MStep(torch.autograd.Function):
    """M-step sums of w = e * factor: e (N, L, O, I) or None (1), factor (N, L, I) -> mass (N, L, O),
    sums (N, L, O, 32) = sum_i w [V - c, (V - c)^2]."""

    @staticmethod
    def forward(ctx, e, factor: Tensor, token: Tensor, source, tape: _Tape):  # type: ignore[override]
        ctx.save_for_backward(e, factor)
        ctx.source, ctx.tape = source, tape
        return source.m_step(e, factor)

    @staticmethod
    def backward(ctx, g_mass, g_sums):  # type: ignore[override]
        e, factor = ctx.saved_tensors
        g_e, g_factor, weights = ctx.source.m_step_backward(e, factor, g_mass, g_sums)
        ctx.tape.left.append(weights)
        ctx.tape.right.append(g_sums)
        return g_e, g_factor, torch.zeros((), dtype=factor.dtype), None, None


class _EStep(torch.autograd.Function):
    """E-step: coeff (N, L, O, 32), offset (N, L, O) -> z = [V - c, (V - c)^2] . coeff + offset as the
    per-patch softmax pieces e = exp(z - m) (N, L, O, I), m = max_o z (N, L, I; a constant: every
    result depends on z only) and s = sum_o e (N, L, I)."""

    @staticmethod
    def forward(ctx, coeff: Tensor, offset: Tensor, token: Tensor, source, tape: _Tape):  # type: ignore[override]
        e, top, total = source.e_step(coeff, offset)
        ctx.mark_non_differentiable(top)
        ctx.save_for_backward(coeff, e)
        ctx.source, ctx.tape = source, tape
        return e, top, total

    @staticmethod
    def backward(ctx, g_e, _g_top, g_total):  # type: ignore[override]
        coeff, e = ctx.saved_tensors
        g_coeff, g_offset, g_z = ctx.source.e_step_backward(e, g_e, g_total)
        ctx.tape.left.append(g_z)
        ctx.tape.right.append(coeff)
        return g_coeff, g_offset, torch.zeros((), dtype=coeff.dtype), None, None


def em_routing(
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    iterations: int = 3,
    *,
    schedule: Schedule = "official",
    lambda_scale: float = 1.0,
    normalisation: Normalisation = "official",
    child_index: Tensor | None = None,
    num_children: int | None = None,
    variance_floor: float = VARIANCE_FLOOR,
    images_per_chunk: int | None = AUTO_CHUNK,
    observer: RoutingObserver | None = None,
) -> tuple[Tensor, Tensor]:
    """Route child votes to parent capsules with EM (paper Procedure 1).

    Args:
        votes: (N, L, O, I, 16) child-to-parent votes V_ij.
        activations: (N, L, I) child activations a_i in [0, 1].
        beta_u, beta_a: (O,) learned per parent type.
        iterations: number of M-steps (E-steps run between them), >= 1.
        schedule: ``"official"`` or ``"normalized"`` (see :func:`inverse_temperatures`).
        lambda_scale: multiplies the schedule (official class layer: 0.25).
        normalisation: ``"official"``: each child's assignments sum to 1 over *all* parents
            whose receptive field contains it (needs ``child_index``; without it every slot is
            its own child, which is exact when patches do not overlap); ``"patch"``: over the
            O types of each patch only (the common naive choice).
        child_index: (L, I) long, child id of slot (l, i); ``num_children`` = number of ids.
        variance_floor: added to every variance (official stabiliser).
        images_per_chunk: route this many images at a time (images are independent); bounds the
            [V, V^2] temporaries, e.g. for inference at batch 128. ``None``: all at once;
            :data:`AUTO_CHUNK` (default): as many as fit :data:`STORED_VOTES_BYTES`.
        observer: called once per iteration with a :class:`RoutingStep` (per chunk of images, in
            order, when the images are routed in chunks); None (default): nothing is recorded.

    Returns:
        poses (N, L, O, 16) = mu_j and activations (N, L, O) = a_j of the last M-step.
        Gradients flow through every iteration.
    """
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    n, length, types, slots, dim = votes.shape
    images_per_chunk = images_per_chunk_for(length * types * slots * dim, votes.element_size(), images_per_chunk)
    if images_per_chunk is not None and n > images_per_chunk:
        chunks = [
            em_routing(v, a, beta_u, beta_a, iterations, schedule=schedule, lambda_scale=lambda_scale,
                       normalisation=normalisation, child_index=child_index, num_children=num_children,
                       variance_floor=variance_floor, images_per_chunk=None, observer=observer)
            for v, a in zip(votes.split(images_per_chunk), activations.split(images_per_chunk))
        ]
        return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
    return _route(StoredVotes(votes), (votes,), activations, beta_u, beta_a, iterations, schedule=schedule,
                  lambda_scale=lambda_scale, normalisation=normalisation, child_index=child_index,
                  num_children=num_children, variance_floor=variance_floor, observer=observer)


def em_routing_from_poses(
    patches: Tensor,
    weight: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    iterations: int = 3,
    **options,
) -> tuple[Tensor, Tensor]:
    """EM routing of the votes V[n, l, o, i] = patches[n, l, i] @ weight[i, o], without storing them.

    Args:
        patches: (N, L, I, 4, 4) child poses, slot i of patch l.
        weight: (I, O, 4, 4) one transformation matrix per (slot, parent type), shared over patches.
        activations, beta_u, beta_a, iterations, options: as in :func:`em_routing`
            (``images_per_chunk`` applies only where the votes must be stored).

    Returns poses (N, L, O, 16) and activations (N, L, O), equal to
    ``em_routing(einsum("nlirk,iokc->nloirc", patches, weight), ...)``. Float32 CPU inputs take
    the fused C kernels (:class:`FusedVotes`; 4-8x faster, no vote-sized memory); anything else
    builds the votes and calls :func:`em_routing`.
    """
    images_per_chunk = options.pop("images_per_chunk", AUTO_CHUNK)
    if not fused_votes_supported(patches, weight):
        # Build the votes a few images at a time, so the vote-sized temporaries stay bounded.
        n, length, slots = patches.shape[:3]
        per_image = length * weight.shape[1] * slots * 16
        step = images_per_chunk_for(per_image, patches.element_size(), images_per_chunk) or n
        outs = []
        for p, a in zip(patches.split(step), activations.split(step)):
            votes = torch.einsum("nlirk,iokc->nloirc", p, weight).reshape(p.shape[0], length, weight.shape[1], slots, 16)
            outs.append(em_routing(votes, a, beta_u, beta_a, iterations, images_per_chunk=None, **options))
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    return _route(FusedVotes(patches, weight), (patches, weight), activations, beta_u, beta_a, iterations,
                  **options)


def _observe(observer: RoutingObserver, step: int, e: Tensor | None, factor: Tensor, mean: Tensor,
             logit_a: Tensor, source: StoredVotes | FusedVotes) -> None:
    """Hand ``observer`` the iteration's weights e * factor (N, L, O, I), mean (centred: source.centre
    added back) and activations sigmoid(logit_a)."""
    n, length, types, slots, _ = source.shape
    weights = factor.unsqueeze(2) if e is None else e * factor.unsqueeze(2)
    observer(RoutingStep(step, weights.detach().expand(n, length, types, slots),
                         (mean + source.centre).detach(), torch.sigmoid(logit_a).detach(), source))


def _route(
    source: StoredVotes | FusedVotes,
    inputs: tuple[Tensor, ...],
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    iterations: int,
    *,
    schedule: Schedule = "official",
    lambda_scale: float = 1.0,
    normalisation: Normalisation = "official",
    child_index: Tensor | None = None,
    num_children: int | None = None,
    variance_floor: float = VARIANCE_FLOOR,
    observer: RoutingObserver | None = None,
) -> tuple[Tensor, Tensor]:
    """Procedure 1 over a vote ``source`` built from ``inputs`` (the tensors gradients go to)."""
    n, length, types, slots, dim = source.shape
    if normalisation == "patch":
        child_index = None
    elif normalisation != "official":
        raise ValueError(f"unknown normalisation {normalisation!r}; valid: {', '.join(NORMALISATIONS)}")
    if child_index is not None and num_children is None:
        num_children = int(child_index.max()) + 1
    lambdas = inverse_temperatures(schedule, iterations, lambda_scale)

    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        tape = _Tape()
        token = _VoteRoot.apply(source, tape, *inputs)

        def m_step(e: Tensor | None, factor: Tensor) -> tuple[Tensor, Tensor]:
            return _MStep.apply(e, factor, token, source, tape)

        def e_step(coeff: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return _EStep.apply(coeff, offset, token, source, tape)
    else:
        m_step, e_step = source.m_step, source.e_step

    log_r = uniform_log_assignments(child_index, types, (length, slots), activations.dtype).to(activations.device)
    factor = torch.exp(log_r).view(1, length, slots) * activations  # (N, L, I): R_ij a_i = e_ij * factor_i
    e: Tensor | None = None  # (N, L, O, I); None: 1 (the uniform start)
    beta_u = beta_u.view(types, 1)
    beta_a = beta_a.view(types)
    for step, lam in enumerate(lambdas):
        # ---- M-step: R_ij <- R_ij a_i, weighted moments of the votes. ----
        mass, moments = m_step(e, factor)  # (N, L, O), (N, L, O, 32)
        moments = moments / mass.clamp_min(_MIN_MASS).unsqueeze(-1)
        mean, mean_sq = moments.split(dim, dim=-1)
        variance = (mean_sq - mean * mean).clamp_min(0.0) + variance_floor  # (N, L, O, 16)
        log_sd = 0.5 * torch.log(variance)
        cost = ((beta_u + log_sd) * mass.unsqueeze(-1)).sum(dim=-1)  # (N, L, O)
        if schedule == "normalized":
            flat_cost = cost.reshape(n, -1)
            cost = (cost - flat_cost.mean(1).view(n, 1, 1)) / torch.sqrt(
                flat_cost.var(1, unbiased=False).view(n, 1, 1) + 1e-6
            )
        logit_a = lam * (beta_a - cost)
        if observer is not None:
            _observe(observer, step, e, factor, mean, logit_a, source)
        if step == iterations - 1:
            return mean + source.centre, torch.sigmoid(logit_a)
        # ---- E-step: log a_j + log N(V_ij; mu_j, sigma_j^2), normalised over parents. ----
        inv_var = 1.0 / variance
        coeff = torch.cat([mean * inv_var, -0.5 * inv_var], dim=-1)  # (N, L, O, 32)
        const = (
            F.logsigmoid(logit_a)
            - 0.5 * (mean * mean * inv_var).sum(-1)
            - log_sd.sum(-1)
            - dim * _HALF_LOG_2PI
        )
        e, top, total = e_step(coeff, const)  # z_ij = coeff . [V, V^2] + const as exp(z - top), sum_o
        factor = _assignment_factor(top, total, activations, child_index, num_children or 0)
    raise AssertionError("unreachable")
