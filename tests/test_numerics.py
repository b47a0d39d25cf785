"""No NaN/inf anywhere: EM routing and whole capsule nets on extreme inputs and weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from capsrobust.models import build_model
from capsrobust.models.layers import patch_child_index
from capsrobust.models.routing import em_routing

FAST = settings(max_examples=20, deadline=None)
SMALL_NET = dict(A=8, B=4, C=4, D=4)  # the capsules architecture at a test-friendly width

VOTE_SCALES = st.sampled_from([0.0, 1e-8, 1e-3, 1.0, 1e3, 1e6])
ACTIVATION_KINDS = st.sampled_from(["zeros", "ones", "random", "tiny", "binary"])
IMAGE_KINDS = st.sampled_from(["zeros", "ones", "constant", "saturated", "uniform"])
# Every parameter is multiplied by the scale, so class votes grow like scale^5: at 1e3 they reach
# ~1e15 and their variances ~1e30, near the float32 limit (3e38) -- beyond it no float32
# implementation can represent the variance.
WEIGHT_SCALES = st.sampled_from([1e-4, 1e-2, 1.0, 1e2, 1e3])


def _activations(kind: str, shape, gen) -> torch.Tensor:
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "ones":
        return torch.ones(shape)
    if kind == "tiny":
        return torch.full(shape, 1e-30)
    if kind == "binary":
        return (torch.rand(shape, generator=gen) > 0.5).float()
    return torch.rand(shape, generator=gen)


def _images(kind: str, batch: int, gen) -> torch.Tensor:
    shape = (batch, 2, 32, 32)
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "ones":
        return torch.ones(shape)
    if kind == "constant":
        return torch.full(shape, 0.37)
    if kind == "saturated":
        return (torch.rand(shape, generator=gen) > 0.5).float()
    return torch.rand(shape, generator=gen)


def _all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@FAST
@given(
    batch=st.integers(1, 8),
    scale=VOTE_SCALES,
    kind=ACTIVATION_KINDS,
    schedule=st.sampled_from(["official", "normalized"]),
    normalisation=st.sampled_from(["official", "patch"]),
    beta_scale=st.sampled_from([0.0, 1.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_routing_is_finite_in_values_and_gradients(batch, scale, kind, schedule, normalisation, beta_scale, seed):
    gen = torch.Generator().manual_seed(seed)
    index = patch_child_index(5, 5, 2, 3, 2)
    votes = (torch.randn(batch, 4, 3, index.shape[1], 16, generator=gen) * scale).requires_grad_(True)
    acts = _activations(kind, (batch, 25 * 2), gen)[:, index].requires_grad_(True)
    beta_u = (torch.randn(3, generator=gen) * beta_scale).requires_grad_(True)
    beta_a = (torch.randn(3, generator=gen) * beta_scale).requires_grad_(True)
    poses, out = em_routing(votes, acts, beta_u, beta_a, 3, schedule=schedule, normalisation=normalisation,
                            child_index=index)
    (poses.sum() + out.sum()).backward()
    assert _all_finite(poses, out, votes.grad, acts.grad, beta_u.grad, beta_a.grad)
    assert ((out >= 0) & (out <= 1)).all()


@FAST
@given(
    batch=st.integers(1, 8),
    image_kind=IMAGE_KINDS,
    weight_scale=WEIGHT_SCALES,
    schedule=st.sampled_from(["official", "normalized"]),
    seed=st.integers(0, 2**16),
)
def test_capsule_net_is_finite_in_scores_and_input_gradients(batch, image_kind, weight_scale, schedule, seed):
    torch.manual_seed(seed)
    model = build_model("capsules", schedule=schedule, **SMALL_NET)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(weight_scale)
    images = _images(image_kind, batch, torch.Generator().manual_seed(seed)).requires_grad_(True)
    scores = model(images)
    scores.sum().backward()
    assert _all_finite(scores, images.grad)
    assert all(_all_finite(p.grad) for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["capsules", "capsules-small"])
def test_full_size_capsule_nets_are_finite_on_constant_images(name):
    images = torch.cat([torch.zeros(1, 2, 32, 32), torch.ones(1, 2, 32, 32)]).requires_grad_(True)
    scores = build_model(name)(images)
    scores.sum().backward()
    assert _all_finite(scores, images.grad)


@pytest.mark.parametrize("schedule", ["official", "normalized"])
@pytest.mark.parametrize("name", ["capsules", "capsules-small"])
def test_class_activations_at_initialisation_are_neither_all_off_nor_all_on(name, schedule):
    torch.manual_seed(0)
    with torch.no_grad():
        scores = build_model(name, schedule=schedule)(torch.rand(8, 2, 32, 32))
    assert 0.05 < scores.mean().item() < 0.95
    assert not (scores < 0.01).all() and not (scores > 0.99).all()
