"""Capsule layers of the matrix-capsule network (paper §3, Fig. 1).

Capsule tensors are channels-last: poses (N, H, W, T, 16) -- a flattened 4x4 pose matrix per
capsule of type T at grid position (H, W) -- and activations (N, H, W, T).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from capsrobust.models.routing import em_routing, em_routing_from_poses, images_per_chunk_for, inverse_temperatures

RoutingFn = Callable[..., tuple[Tensor, Tensor]]

#: How the 4x4 transformation matrices W start (``transform_init``):
#: ``"identity"`` -- W = I + N(0, 0.1^2) per entry. A vote V = M W is then close to the child's
#: own pose, so a parent's mean keeps more of its children's pose scale (a public re-implementation
#: quotes the authors as later starting every W at I plus small noise). With plain random W the mean
#: of K independent random votes shrinks ~1/sqrt(K): on random images, capsules-small's pose std
#: goes 0.25 -> 0.10 -> 0.03 over its two convolutional capsule layers (0.25 -> 0.11 -> 0.07 with
#: identity), until the coordinate addition (offsets 0-1) swamps the class votes. Identity-started
#: nets learn faster on synthnorb (300-step A/B: 51 % vs 33 % training accuracy; test error of
#: longer runs 48.5 % vs 65.2 %, results/train/).
#: ``"normal"`` -- W ~ N(0, 0.5^2) per entry (a vote sums 4 products, so single votes keep scale).
TRANSFORM_INITS: tuple[str, ...] = ("identity", "normal")
TRANSFORM_INIT_NOISE = 0.1
TRANSFORM_INIT_STD = 0.5


def init_transforms(shape: tuple[int, ...], kind: str) -> Tensor:
    """A tensor of 4x4 transformation matrices, ``shape = (..., 4, 4)``, initialised per ``kind``."""
    if kind == "identity":
        return torch.eye(4).expand(shape) + torch.randn(shape) * TRANSFORM_INIT_NOISE
    if kind == "normal":
        return torch.randn(shape) * TRANSFORM_INIT_STD
    raise ValueError(f"unknown transform_init {kind!r}; valid: {', '.join(TRANSFORM_INITS)}")


#: How the learned per-type biases beta_u, beta_a enter the EM cost (``beta_parametrisation``):
#: ``"direct"`` -- logit a_j = lambda (beta_a - mass_j sum_h (beta_u + log sigma_jh)), both betas
#: start at 0. A unit change of beta_a moves the logit by lambda (~1e-4 at the class layer), so
#: Adam (steps ~lr per update) cannot move the class activations' offset in a short run.
#: ``"official"`` -- the official code's constants (google-research capsule_em, em_layers.py):
#: logit = lambda (-5000 b_a - mass (sum_h log sigma_h^2 + 16 (log 2 pi + 1) b_u)), b_a = b_u = 0.5
#: in convolutional layers, b_a = 1, b_u = 2 in the class layer. Written in the direct form this is
#: lambda' = 2 lambda, beta_a = -2500 b_a, beta_u = (log 2 pi + 1) / 2 b_u; the parameters are b_a, b_u.
#: ``"logit"`` -- beta_a in logit units: the routing's beta_a is the parameter divided by the
#: layer's final inverse temperature, so the parameter is the activation logit's offset at the last
#: iteration and a step of Adam moves a logit by ~lr (direct: by lr * lambda). beta_u stays direct.
#: Every option is a reparametrisation: routing is Procedure 1 with the resulting (beta_u, beta_a).
BETA_PARAMETRISATIONS: tuple[str, ...] = ("direct", "official", "logit")
_OFFICIAL_BETA_A_SCALE = -2500.0
_OFFICIAL_BETA_U_SCALE = 0.5 * (math.log(2 * math.pi) + 1.0)


def init_betas(types: int, kind: str, init_u: float, init_a: float) -> tuple[nn.Parameter, nn.Parameter]:
    """Parameters (beta_u, beta_a), each (types,), started as ``kind`` prescribes (official: the given values)."""
    if kind not in BETA_PARAMETRISATIONS:
        raise ValueError(f"unknown beta_parametrisation {kind!r}; valid: {', '.join(BETA_PARAMETRISATIONS)}")
    official = kind == "official"
    return (nn.Parameter(torch.full((types,), init_u if official else 0.0)),
            nn.Parameter(torch.full((types,), init_a if official else 0.0)))


def routing_betas(beta_u: Tensor, beta_a: Tensor, kind: str, final_lambda: float) -> tuple[Tensor, Tensor, float]:
    """(beta_u, beta_a) in the direct form :func:`em_routing` takes, and the factor on lambda.

    ``final_lambda`` is the layer's last inverse temperature before that factor (used by ``"logit"``).
    """
    if kind == "official":
        return _OFFICIAL_BETA_U_SCALE * beta_u, _OFFICIAL_BETA_A_SCALE * beta_a, 2.0
    if kind == "logit":
        return beta_u, beta_a / final_lambda, 1.0
    return beta_u, beta_a, 1.0


#: How a layer's EM cost is scaled (``cost_normalisation``):
#: ``"none"`` -- the official code: logit a_j = lambda (beta_a - cost_j), the class layer at lambda / 4.
#: ``"ibm"`` -- after Gritzman's re-implementation (IBM/matrix-capsules-with-em-routing, em_routing.py),
#: which multiplies the cost by F = 100 O / I (O parent types, I children per patch) so every layer
#: sees a similar amount of evidence per parent (capsules-small: F = 22 and 11 in the ConvCaps layers,
#: 2 in the class layer, which then drops the official 1/4). What the code does: it multiplies the
#: layer's lambda by F and nothing else, so logit a_j = F lambda (beta_a - cost_j) -- the cost *and*
#: the offset beta_a are scaled by F. IBM's form, F lambda cost_j with the offset unscaled, is what
#: ``beta_parametrisation`` ``"logit"`` gives (its beta_a is the parameter divided by the final
#: lambda, F included, so the final logit's offset is the parameter whatever F is). With ``"direct"``
#: or ``"official"`` betas the offset is F times larger (official b_a = 0.5: -2500 F lambda, not
#: -2500 lambda), which starts activations near zero. Kept as is: trained checkpoints depend on it.
COST_NORMALISATIONS: tuple[str, ...] = ("none", "ibm")
_IBM_COST_SCALE = 100.0


def cost_factor(kind: str, parent_types: int, children_per_patch: int) -> float:
    """The factor F on a layer's inverse temperature that ``cost_normalisation`` = ``kind`` applies.

    The layer multiplies its lambda by F and leaves the betas alone: logit a_j = F lambda (beta_a - cost_j),
    so beta_a is scaled with the cost unless the betas are ``"logit"`` (see :data:`COST_NORMALISATIONS`).
    """
    if kind == "none":
        return 1.0
    if kind == "ibm":
        return _IBM_COST_SCALE * parent_types / children_per_patch
    raise ValueError(f"unknown cost_normalisation {kind!r}; valid: {', '.join(COST_NORMALISATIONS)}")


#: Where coordinate addition puts each receptive-field centre (``coordinates``): ``"unit"`` -- the
#: scaled (row, col) in (0, 1), as the paper describes; ``"centred"`` -- minus their mean over
#: the grid, so the offsets average to zero and do not shift every class vote the same way.
COORDINATES: tuple[str, ...] = ("unit", "centred")


def patch_child_index(height: int, width: int, types: int, kernel: int, stride: int) -> Tensor:
    """(L, I) ids of the children in each k x k patch; L = out_h*out_w, I = k*k*types.

    Child id = (row * width + col) * types + type; slot order within a patch is
    (kernel row, kernel col, type), matching the transformation-matrix layout of ConvCaps.
    """
    out_h = (height - kernel) // stride + 1
    out_w = (width - kernel) // stride + 1
    rows = (torch.arange(out_h) * stride).view(out_h, 1, 1, 1, 1, 1)
    cols = (torch.arange(out_w) * stride).view(1, out_w, 1, 1, 1, 1)
    dy = torch.arange(kernel).view(1, 1, kernel, 1, 1, 1)
    dx = torch.arange(kernel).view(1, 1, 1, kernel, 1, 1)
    kind = torch.arange(types).view(1, 1, 1, 1, 1, types)
    index = ((rows + dy) * width + (cols + dx)) * types + kind
    return index.reshape(out_h * out_w, kernel * kernel * types)


class PrimaryCaps(nn.Module):
    """1x1 convolution to B capsule types: a 4x4 pose (16 linear outputs) and a sigmoid activation.

    features (N, in_channels, H, W) -> poses (N, H, W, B, 16), activations (N, H, W, B).
    """

    def __init__(self, in_channels: int, types: int) -> None:
        super().__init__()
        self.types = types
        self.pose = nn.Conv2d(in_channels, types * 16, kernel_size=1)
        self.activation = nn.Conv2d(in_channels, types, kernel_size=1)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        n, _, h, w = features.shape
        poses = self.pose(features).permute(0, 2, 3, 1).reshape(n, h, w, self.types, 16)
        acts = torch.sigmoid(self.activation(features)).permute(0, 2, 3, 1)
        return poses, acts


class ConvCaps(nn.Module):
    """Convolutional capsule layer with EM routing (paper §3).

    One 4x4 W per (kernel position, input type, output type), shared across positions.
    poses (N, H, W, B, 16), activations (N, H, W, B) -> (N, H', W', C, 16), (N, H', W', C).
    Each child's assignments are normalised over all parents containing it unless
    ``normalisation="patch"`` (see :func:`capsrobust.models.routing.em_routing`).
    """

    def __init__(
        self,
        in_types: int,
        out_types: int,
        kernel_size: int,
        stride: int,
        iterations: int = 3,
        *,
        schedule: str = "official",
        normalisation: str = "official",
        lambda_scale: float = 1.0,
        transform_init: str = "identity",
        beta_parametrisation: str = "direct",
        cost_normalisation: str = "none",
        routing: RoutingFn = em_routing,
    ) -> None:
        super().__init__()
        slots = kernel_size * kernel_size * in_types
        self.lambda_scale = lambda_scale * cost_factor(cost_normalisation, out_types, slots)
        self.cost_normalisation = cost_normalisation
        self.in_types, self.out_types = in_types, out_types
        self.kernel_size, self.stride = kernel_size, stride
        self.iterations, self.schedule, self.normalisation = iterations, schedule, normalisation
        self.routing = routing
        self.weight = nn.Parameter(init_transforms((slots, out_types, 4, 4), transform_init))
        self.beta_parametrisation = beta_parametrisation
        self.beta_u, self.beta_a = init_betas(out_types, beta_parametrisation, init_u=0.5, init_a=0.5)
        self._geometry: tuple[int, int] | None = None
        self.register_buffer("child_index", torch.empty(0, dtype=torch.long), persistent=False)

    def _index_for(self, height: int, width: int, device: torch.device) -> Tensor:
        if self._geometry != (height, width) or self.child_index.device != device:
            with torch.inference_mode(False):  # a cached index made under inference mode would break later backward passes
                index = patch_child_index(height, width, self.in_types, self.kernel_size, self.stride)
                self.child_index = index.to(device)
            self._geometry = (height, width)
        return self.child_index

    def forward(self, poses: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
        n, h, w, _, _ = poses.shape
        index = self._index_for(h, w, poses.device)
        out_h = (h - self.kernel_size) // self.stride + 1
        out_w = (w - self.kernel_size) // self.stride + 1
        # A gather by child index with index_select (backward: index_add): measured 1.6-2.7x faster,
        # forward + backward, than advanced indexing, a strided view or im2col at these sizes.
        flat = index.reshape(-1)
        patches = poses.reshape(n, -1, 4, 4).index_select(1, flat).view(n, *index.shape, 4, 4)  # (N, L, I, 4, 4)
        patch_acts = activations.reshape(n, -1).index_select(1, flat).view(n, *index.shape)  # (N, L, I)
        final_lambda = inverse_temperatures(self.schedule, self.iterations, self.lambda_scale)[-1]
        beta_u, beta_a, lambda_factor = routing_betas(self.beta_u, self.beta_a, self.beta_parametrisation, final_lambda)
        options = dict(schedule=self.schedule, lambda_scale=self.lambda_scale * lambda_factor,
                       normalisation=self.normalisation, child_index=index, num_children=h * w * self.in_types)
        if self.routing is em_routing:
            # Votes V = patches @ W: the C kernels recompute them and never store them (PyTorch
            # fallback where the kernels cannot run).
            out_poses, out_acts = em_routing_from_poses(
                patches, self.weight, patch_acts, beta_u, beta_a, self.iterations, **options)
        else:
            out_poses, out_acts = self._route_stored(patches, patch_acts, beta_u, beta_a, options)
        return (
            out_poses.reshape(n, out_h, out_w, self.out_types, 16),
            out_acts.reshape(n, out_h, out_w, self.out_types),
        )

    def _route_stored(self, patches: Tensor, patch_acts: Tensor, beta_u: Tensor, beta_a: Tensor,
                      options: dict) -> tuple[Tensor, Tensor]:
        """Another ``routing`` (e.g. the straightforward one the benchmark compares): build the votes
        (N, L, O, I, 16) and route them, a few images at a time so the temporaries stay bounded."""
        outs = []
        step = images_per_chunk_for(patches.shape[1] * self.out_types * patches.shape[2] * 16, patches.element_size())
        for p, a in zip(patches.split(step), patch_acts.split(step)):
            votes = torch.einsum("nlirk,iokc->nloirc", p, self.weight)
            votes = votes.reshape(p.shape[0], p.shape[1], self.out_types, p.shape[2], 16)
            outs.append(self.routing(votes, a, beta_u, beta_a, self.iterations, **options))
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


class ClassCaps(nn.Module):
    """One capsule per class, transforms shared across positions, coordinate addition (paper §3).

    The scaled (row, col) of each input capsule's receptive-field centre is added to the first
    two entries of the right-hand column of its vote (pose entries (0, 3) and (1, 3)); votes
    stay 16-d. The official class layer uses lambda_final / 4.
    poses (N, H, W, D, 16), activations (N, H, W, D) -> (N, classes, 16), (N, classes).
    """

    def __init__(
        self,
        in_types: int,
        num_classes: int,
        centres: Tensor,
        iterations: int = 3,
        *,
        schedule: str = "official",
        normalisation: str = "official",
        lambda_scale: float = 1.0,
        transform_init: str = "identity",
        beta_parametrisation: str = "direct",
        cost_normalisation: str = "none",
        coordinates: str = "unit",
        routing: RoutingFn = em_routing,
    ) -> None:
        super().__init__()
        if coordinates not in COORDINATES:
            raise ValueError(f"unknown coordinates {coordinates!r}; valid: {', '.join(COORDINATES)}")
        if cost_normalisation not in COST_NORMALISATIONS:
            raise ValueError(f"unknown cost_normalisation {cost_normalisation!r}; valid: {', '.join(COST_NORMALISATIONS)}")
        self.lambda_scale, self.cost_normalisation = lambda_scale, cost_normalisation
        self.in_types, self.num_classes = in_types, num_classes
        self.iterations, self.schedule, self.normalisation = iterations, schedule, normalisation
        self.routing = routing
        self.weight = nn.Parameter(init_transforms((in_types, num_classes, 4, 4), transform_init))
        self.beta_parametrisation = beta_parametrisation
        self.beta_u, self.beta_a = init_betas(num_classes, beta_parametrisation, init_u=2.0, init_a=1.0)
        # centres: (H, W, 2) receptive-field centres, scaled to [0, 1] of the input image.
        self.coordinates = coordinates
        shift = centres.reshape(-1, 2).mean(0) if coordinates == "centred" else torch.zeros(2)
        self.register_buffer("centres", centres.clone() - shift, persistent=False)

    def _layer_factor(self, children: int) -> float:
        """The class layer's factor on lambda: the official 1/4, or the cost normalisation's."""
        if self.cost_normalisation != "none":
            return cost_factor(self.cost_normalisation, self.num_classes, children)
        return 0.25 if self.schedule == "official" else 1.0

    def forward(self, poses: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
        n, h, w, d, _ = poses.shape
        votes = torch.einsum("npdrk,dokc->nopdrc", poses.reshape(n, h * w, d, 4, 4), self.weight)
        votes = votes.reshape(n, self.num_classes, h * w, d, 16)
        offsets = poses.new_zeros(h * w, 1, 16)
        offsets[:, 0, 3] = self.centres.reshape(h * w, 2)[:, 0]
        offsets[:, 0, 7] = self.centres.reshape(h * w, 2)[:, 1]
        votes = (votes + offsets).reshape(n, 1, self.num_classes, h * w * d, 16)
        lambda_scale = self.lambda_scale * self._layer_factor(h * w * d)
        final_lambda = inverse_temperatures(self.schedule, self.iterations, lambda_scale)[-1]
        beta_u, beta_a, lambda_factor = routing_betas(self.beta_u, self.beta_a, self.beta_parametrisation, final_lambda)
        lambda_scale *= lambda_factor
        out_poses, out_acts = self.routing(
            votes, activations.reshape(n, 1, h * w * d), beta_u, beta_a, self.iterations,
            schedule=self.schedule, lambda_scale=lambda_scale, normalisation=self.normalisation,
        )
        return out_poses.reshape(n, self.num_classes, 16), out_acts.reshape(n, self.num_classes)
