"""The fused C vote kernels route exactly as Procedure 1 does on the votes they never store."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from capsrobust.models import vote_kernels
from capsrobust.models.layers import ConvCaps
from capsrobust.models.routing import em_routing, em_routing_from_poses, fused_votes_supported

sys.path.insert(0, str(Path(__file__).parent))
from routing_reference import conv_child_index, reference_em_routing  # noqa: E402
from test_routing import _outputs_and_grads  # noqa: E402

NAMES = ["poses", "activations", "d patches", "d weight", "d activations", "d beta_u", "d beta_a"]


@pytest.fixture(scope="module", autouse=True)
def kernels_built():
    """These tests are about the kernels: fail (never skip) when they cannot be built here."""
    assert vote_kernels.available(), "the C vote kernels did not build (is a C compiler installed?)"


def _inputs(parent_types: int = 3, images: int = 2, seed: int = 0, scale: float = 1.0):
    height, width, types, kernel, stride = 5, 5, 2, 3, 2  # overlapping 3x3/2 receptive fields
    index = conv_child_index(height, width, types, kernel, stride)
    gen = torch.Generator().manual_seed(seed)
    length, slots = index.shape
    poses = scale * torch.randn(images, height * width * types, 4, 4, generator=gen, dtype=torch.float64)
    patches = poses[:, index]  # (N, L, I, 4, 4): the same child in every patch that contains it
    weight = torch.eye(4, dtype=torch.float64) + 0.5 * torch.randn(slots, parent_types, 4, 4, generator=gen,
                                                                   dtype=torch.float64)
    acts = torch.rand(images, height * width * types, generator=gen, dtype=torch.float64)[:, index]
    beta_u = 0.5 * torch.randn(parent_types, generator=gen, dtype=torch.float64)
    beta_a = 0.5 * torch.randn(parent_types, generator=gen, dtype=torch.float64)
    return patches, weight, acts, beta_u, beta_a, index


def _votes(patches, weight):
    n, length, slots = patches.shape[:3]
    return torch.einsum("nlirk,iokc->nloirc", patches, weight).reshape(n, length, weight.shape[1], slots, 16)


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("normalisation", ["official", "patch"])
@pytest.mark.parametrize("schedule", ["official", "normalized"])
def test_fused_float32_routing_matches_literal_procedure_1(schedule, normalisation, iterations):
    patches, weight, acts, beta_u, beta_a, index = _inputs()
    options = dict(schedule=schedule, normalisation=normalisation, child_index=index)
    tensors = (patches, weight, acts, beta_u, beta_a)
    fused = _outputs_and_grads(
        lambda p, w, a, bu, ba: em_routing_from_poses(
            p.float(), w.float(), a.float(), bu.float(), ba.float(), iterations, **options), *tensors)
    oracle = _outputs_and_grads(
        lambda p, w, a, bu, ba: reference_em_routing(_votes(p, w), a, bu, ba, iterations, **options), *tensors)
    for name, got, want in zip(NAMES, fused, oracle):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")


def test_vote_backward_matches_autograd_through_the_votes_for_more_pairs_than_one_call_takes():
    """10 factor pairs (5 iterations record 9): the kernel is called twice and the parts summed."""
    gen = torch.Generator().manual_seed(2)
    tiles, slots, types = 5, 7, 3
    patches = torch.randn(tiles, slots, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(slots, types, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    left = [torch.rand(tiles, types, slots, generator=gen, dtype=torch.float64) for _ in range(10)]
    right = [torch.randn(tiles, types, 32, generator=gen, dtype=torch.float64) for _ in range(10)]
    votes = torch.einsum("birk,iokc->boirc", patches, weight).reshape(tiles, types, slots, 16)
    centred = votes - votes.mean(2, keepdim=True).detach()
    stacked = torch.cat([centred, centred**2], dim=-1)
    sum(((l.unsqueeze(-1) * r.unsqueeze(2)) * stacked).sum() for l, r in zip(left, right)).backward()

    M = patches.detach().float().reshape(tiles, slots, 16).contiguous()
    Wt = vote_kernels.transforms_for_kernels(weight.detach().float())
    cc = vote_kernels.centre(M, Wt, types)
    g_m, g_wt = vote_kernels.vote_backward(M, Wt, cc, [l.float() for l in left], [r.float() for r in right])
    torch.testing.assert_close(g_m.view(tiles, slots, 4, 4).double(), patches.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(vote_kernels.transforms_from_kernels(g_wt, types).double(), weight.grad,
                               atol=1e-3, rtol=1e-4)


def test_fused_path_is_taken_for_float32_cpu_and_not_for_float64():
    patches, weight, *_ = _inputs()
    assert fused_votes_supported(patches.float(), weight.float())
    assert not fused_votes_supported(patches, weight)  # float64 builds the votes and routes them stored


@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_fused_routing_matches_stored_votes_at_extreme_pose_scales(scale):
    patches, weight, acts, beta_u, beta_a, index = (t.float() if t.is_floating_point() else t
                                                    for t in _inputs(scale=scale, seed=4))
    tensors = (patches, weight, acts, beta_u, beta_a)
    fused = _outputs_and_grads(lambda p, w, a, bu, ba: em_routing_from_poses(p, w, a, bu, ba, 3, child_index=index),
                               *tensors)
    stored = _outputs_and_grads(lambda p, w, a, bu, ba: em_routing(_votes(p, w), a, bu, ba, 3, child_index=index),
                                *tensors)
    for name, got, want in zip(NAMES, fused, stored):
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, atol=1e-4 * max(1.0, scale), rtol=2e-3, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("beta_parametrisation", ["direct", "official"])
def test_conv_caps_gives_the_same_result_with_and_without_kernels(monkeypatch, beta_parametrisation):
    torch.manual_seed(0)
    layer = ConvCaps(4, 5, kernel_size=3, stride=2, beta_parametrisation=beta_parametrisation)
    poses, acts = torch.randn(3, 7, 7, 4, 16), torch.rand(3, 7, 7, 4)
    fused = layer(poses, acts)
    monkeypatch.setenv(vote_kernels.DISABLE_ENV, "0")
    assert not vote_kernels.available()
    stored = layer(poses, acts)
    for got, want in zip(fused, stored):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_failed_build_warns_and_falls_back(monkeypatch):
    monkeypatch.setattr(vote_kernels, "_library", None)
    monkeypatch.setattr(vote_kernels, "_tried", False)
    monkeypatch.setenv("CC", "/bin/false")  # a "compiler" that always fails
    with pytest.warns(RuntimeWarning, match="PyTorch path"):
        assert not vote_kernels.available()
    patches, weight, acts, beta_u, beta_a, index = (t.float() if t.is_floating_point() else t for t in _inputs())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        poses, out = em_routing_from_poses(patches, weight, acts, beta_u, beta_a, 3, child_index=index)
    want = em_routing(_votes(patches, weight), acts, beta_u, beta_a, 3, child_index=index)
    torch.testing.assert_close(out, want[1])


def _routing_outputs_and_grads():
    patches, weight, acts, beta_u, beta_a, index = (t.float() if t.is_floating_point() else t
                                                    for t in _inputs(parent_types=5, images=3, seed=7))
    return _outputs_and_grads(lambda p, w, a, bu, ba: em_routing_from_poses(p, w, a, bu, ba, 3, child_index=index),
                              patches, weight, acts, beta_u, beta_a)


def test_openmp_and_python_thread_kernels_route_alike(monkeypatch):
    """Both ways of splitting tiles over two threads (OpenMP in C; Python threads) give the same numbers."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    results = {}
    for openmp in ("1", "0"):
        monkeypatch.setenv(vote_kernels.OPENMP_ENV, openmp)
        monkeypatch.setattr(vote_kernels, "_library", None)
        monkeypatch.setattr(vote_kernels, "_tried", False)
        assert vote_kernels.available()
        results[openmp] = (vote_kernels.library().cr_openmp(), _routing_outputs_and_grads())
    assert results["0"][0] == 0
    for name, got, want in zip(NAMES, results["1"][1], results["0"][1]):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_e_step_softmax_pieces_match_pytorch():
    """cr_estep's projections, max, vectorised exp and sum agree with PyTorch's on random inputs."""
    gen = torch.Generator().manual_seed(3)
    tiles, slots, types = 6, 11, 5
    M = torch.randn(tiles, slots, 16, generator=gen)
    weight = torch.randn(slots, types, 4, 4, generator=gen)
    Wt = vote_kernels.transforms_for_kernels(weight)
    cc = vote_kernels.centre(M, Wt, types)
    coeff, offset = torch.randn(tiles, types, 32, generator=gen), 30 * torch.randn(tiles, types, generator=gen)
    e, top, total = vote_kernels.e_step(M, Wt, cc, coeff, offset)
    z = vote_kernels.projections(M, Wt, cc, coeff) + offset.unsqueeze(-1)
    torch.testing.assert_close(top, z.amax(1))
    torch.testing.assert_close(e, torch.exp(z - z.amax(1, keepdim=True)), atol=1e-6, rtol=2e-6)
    torch.testing.assert_close(total, e.sum(1))
    assert (e[z < top.unsqueeze(1) - 87] == 0).all() and e.max() == 1.0


def test_centre_is_every_parents_mean_vote():
    gen = torch.Generator().manual_seed(5)
    tiles, slots, types = 4, 9, 6
    M = torch.randn(tiles, slots, 16, generator=gen)
    weight = torch.randn(slots, types, 4, 4, generator=gen)
    votes = torch.einsum("birk,iokc->borc", M.view(tiles, slots, 4, 4), weight).reshape(tiles, types, 16) / slots
    torch.testing.assert_close(vote_kernels.centre(M, vote_kernels.transforms_for_kernels(weight), types), votes,
                               atol=1e-5, rtol=1e-5)
