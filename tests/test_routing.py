"""The fast EM routing agrees with the literal Procedure 1 (tests/routing_reference.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from capsrobust.models.routing import em_routing, inverse_temperatures

sys.path.insert(0, str(Path(__file__).parent))  # the oracle module beside this file
from routing_reference import conv_child_index, reference_em_routing  # noqa: E402

# (height, width, child types, kernel, stride): overlapping receptive fields in both.
GEOMETRIES = {"k3s1": (4, 4, 2, 3, 1), "k3s2": (5, 5, 2, 3, 2)}


def _inputs(geometry: str, parent_types: int = 3, images: int = 2, seed: int = 0):
    height, width, types, kernel, stride = GEOMETRIES[geometry]
    index = conv_child_index(height, width, types, kernel, stride)
    gen = torch.Generator().manual_seed(seed)
    length, slots = index.shape
    child_votes = torch.randn(images, length, parent_types, slots, 16, generator=gen, dtype=torch.float64)
    child_acts = torch.rand(images, height * width * types, generator=gen, dtype=torch.float64)
    acts = child_acts[:, index]  # the same child has the same activation in every patch
    beta_u = 0.5 * torch.randn(parent_types, generator=gen, dtype=torch.float64)
    beta_a = 0.5 * torch.randn(parent_types, generator=gen, dtype=torch.float64)
    return child_votes, acts, beta_u, beta_a, index


def _outputs_and_grads(fn, *tensors, seed=1):
    """fn(*leaves) -> (poses, activations); returns both (float64) and d(random projection)/d each leaf."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    poses, out_acts = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    weight_p = torch.randn(poses.shape, generator=gen, dtype=torch.float64).to(poses.dtype)
    weight_a = torch.randn(out_acts.shape, generator=gen, dtype=torch.float64).to(out_acts.dtype)
    ((poses * weight_p).sum() + (out_acts * weight_a).sum()).backward()
    return [poses.detach().double(), out_acts.detach().double()] + [t.grad.double() for t in leaves]


NAMES = ["poses", "activations", "d votes", "d activations", "d beta_u", "d beta_a"]


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("normalisation", ["official", "patch"])
@pytest.mark.parametrize("schedule", ["official", "normalized"])
@pytest.mark.parametrize("geometry", ["k3s1", "k3s2"])
def test_fast_routing_matches_literal_procedure_1(geometry, schedule, normalisation, iterations):
    votes, acts, beta_u, beta_a, index = _inputs(geometry)
    options = dict(schedule=schedule, normalisation=normalisation)
    fast = _outputs_and_grads(
        lambda v, a, bu, ba: em_routing(v, a, bu, ba, iterations, child_index=index, **options),
        votes, acts, beta_u, beta_a,
    )
    slow = _outputs_and_grads(
        lambda v, a, bu, ba: reference_em_routing(v, a, bu, ba, iterations, child_index=index, **options),
        votes, acts, beta_u, beta_a,
    )
    for name, got, want in zip(NAMES, fast, slow):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("normalisation", ["official", "patch"])
def test_float32_routing_matches_float64_oracle(normalisation):
    votes, acts, beta_u, beta_a, index = _inputs("k3s2", seed=3)
    options = dict(schedule="normalized", normalisation=normalisation, child_index=index)
    fast = _outputs_and_grads(
        lambda v, a, bu, ba: em_routing(v.float(), a.float(), bu.float(), ba.float(), 3, **options),
        votes, acts, beta_u, beta_a,
    )
    slow = _outputs_and_grads(
        lambda v, a, bu, ba: reference_em_routing(v, a, bu, ba, 3, **options), votes, acts, beta_u, beta_a
    )
    for name, got, want in zip(NAMES, fast, slow):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")


def test_class_layer_without_child_index_equals_patch_normalisation():
    votes, acts, beta_u, beta_a, _ = _inputs("k3s1")
    votes, acts = votes[:, :1], acts[:, :1]  # one patch: the two normalisations coincide
    official = em_routing(votes, acts, beta_u, beta_a, 3, normalisation="official")
    patch = em_routing(votes, acts, beta_u, beta_a, 3, normalisation="patch")
    torch.testing.assert_close(official, patch)


def test_parents_compete_differs_from_per_patch_when_patches_overlap():
    votes, acts, beta_u, beta_a, index = _inputs("k3s1")
    official = em_routing(votes, acts, beta_u, beta_a, 3, schedule="normalized", child_index=index)
    patch = em_routing(votes, acts, beta_u, beta_a, 3, schedule="normalized", normalisation="patch")
    assert not torch.allclose(official[1], patch[1], atol=1e-6)


def test_official_schedule_rises_to_final_lambda():
    lambdas = inverse_temperatures("official", 3)
    assert lambdas == sorted(lambdas)
    assert lambdas[0] == pytest.approx(0.01 * 0.05)
    assert lambdas[-1] == pytest.approx(0.01 * (1 - 0.95**3))
    assert inverse_temperatures("normalized", 3) == [1.0, 2.0, 3.0]


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="official"):
        inverse_temperatures("warm", 3)


@pytest.mark.parametrize("schedule", ["official", "normalized"])
def test_naive_baseline_matches_oracle_with_per_patch_normalisation(schedule):
    from capsrobust.models.routing_naive import naive_em_routing

    votes, acts, beta_u, beta_a, index = _inputs("k3s2")
    fast = _outputs_and_grads(
        lambda v, a, bu, ba: naive_em_routing(v, a, bu, ba, 3, schedule=schedule), votes, acts, beta_u, beta_a
    )
    slow = _outputs_and_grads(
        lambda v, a, bu, ba: reference_em_routing(v, a, bu, ba, 3, schedule=schedule, normalisation="patch"),
        votes, acts, beta_u, beta_a,
    )
    for name, got, want in zip(NAMES, fast, slow):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
