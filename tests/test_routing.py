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


def _with_observer(**options):
    steps = []
    routing = lambda v, a, bu, ba: em_routing(v, a, bu, ba, 3, observer=steps.append, **options)  # noqa: E731
    return routing, steps


@pytest.mark.parametrize("normalisation", ["official", "patch"])
def test_an_observer_sees_every_iteration_and_changes_nothing(normalisation):
    votes, acts, beta_u, beta_a, index = _inputs("k3s1")
    options = dict(schedule="official", lambda_scale=100.0, normalisation=normalisation, child_index=index)
    plain = _outputs_and_grads(lambda v, a, bu, ba: em_routing(v, a, bu, ba, 3, **options), votes, acts, beta_u, beta_a)
    observed_routing, steps = _with_observer(**options)
    observed = _outputs_and_grads(observed_routing, votes, acts, beta_u, beta_a)
    for name, got, want in zip(NAMES, observed, plain):
        assert torch.equal(got, want), name
    assert [s.iteration for s in steps] == [0, 1, 2]
    n, length, types, slots, _ = votes.shape
    for step in steps:
        assert step.weights.shape == (n, length, types, slots) and step.mean.shape == (n, length, types, 16)
        assert not step.weights.requires_grad and not step.mean.requires_grad
        # mu_j = sum_i w_ij V_ij / sum_i w_ij, and the distances are ||V_ij - mu_j||
        mean = (step.weights.unsqueeze(-1) * votes).sum(3) / step.weights.sum(3).unsqueeze(-1)
        torch.testing.assert_close(step.mean, mean)
        torch.testing.assert_close(step.source.distances(step.mean), (votes - mean.unsqueeze(3)).norm(dim=-1))
    torch.testing.assert_close(steps[-1].mean, plain[0])
    torch.testing.assert_close(steps[-1].activations, plain[1])


def test_observed_weights_are_each_childs_activation_spread_over_its_parents():
    votes, acts, beta_u, beta_a, index = _inputs("k3s2")
    routing, steps = _with_observer(lambda_scale=100.0, child_index=index)
    routing(votes, acts, beta_u, beta_a)
    children = int(index.max()) + 1
    flat = index.reshape(-1)
    child_acts = torch.zeros(votes.shape[0], children, dtype=votes.dtype).index_copy(1, flat, acts.reshape(len(acts), -1))
    for step in steps:  # R_ij sums to 1 over every parent of child i (official normalisation)
        per_child = torch.zeros_like(child_acts).index_add(1, flat, step.weights.sum(2).reshape(len(acts), -1))
        torch.testing.assert_close(per_child, child_acts)


def test_fused_votes_offer_the_observer_the_same_weights_means_and_activations():
    from capsrobust.models import vote_kernels
    from capsrobust.models.routing import em_routing_from_poses

    if not vote_kernels.available():
        pytest.skip("vote kernels not built")
    gen = torch.Generator().manual_seed(0)
    patches, weight = torch.randn(2, 4, 6, 4, 4, generator=gen), torch.randn(6, 3, 4, 4, generator=gen)
    acts, beta_u, beta_a = torch.rand(2, 4, 6, generator=gen), torch.zeros(3), torch.zeros(3)
    votes = torch.einsum("nlirk,iokc->nloirc", patches, weight).reshape(2, 4, 3, 6, 16)
    fused, stored = [], []
    em_routing_from_poses(patches, weight, acts, beta_u, beta_a, 2, lambda_scale=100.0, observer=fused.append)
    em_routing(votes, acts, beta_u, beta_a, 2, lambda_scale=100.0, observer=stored.append)
    assert len(fused) == len(stored) == 2
    for got, want in zip(fused, stored):
        for name in ("weights", "mean", "activations"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-4, rtol=1e-4)
