"""Spread loss, its margin schedule, and cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch

from capsrobust.training.losses import cross_entropy, margin_at, official_spread_margin, spread_loss, spread_margin


def test_spread_loss_is_zero_when_target_leads_by_the_margin():
    acts = torch.tensor([[0.9, 0.1, 0.2, 0.0, 0.3]])
    assert spread_loss(acts, torch.tensor([0]), margin=0.2).item() == 0.0


def test_spread_loss_sums_squared_shortfalls_over_wrong_classes():
    acts = torch.tensor([[0.5, 0.4, 0.6, 0.0, 0.0]])
    # wrong classes 1 and 2 fall short: (0.2 - 0.1)^2 + (0.2 + 0.1)^2
    assert spread_loss(acts, torch.tensor([0]), margin=0.2).item() == pytest.approx(0.01 + 0.09)


def test_spread_loss_averages_over_the_batch_and_has_gradients():
    acts = torch.rand(8, 5, requires_grad=True)
    targets = torch.randint(0, 5, (8,))
    loss = spread_loss(acts, targets, margin=0.9)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(acts.grad).all()
    per_example = torch.stack([spread_loss(acts[i : i + 1], targets[i : i + 1], 0.9) for i in range(8)])
    assert loss.item() == pytest.approx(per_example.mean().item(), rel=1e-6)


def test_margin_schedule_goes_from_0_2_to_0_9_monotonically():
    margins = [spread_margin(step, 1000) for step in range(0, 1001, 50)]
    assert margins[0] == pytest.approx(0.2 + 0.79 / (1 + math.exp(4)))  # official value at step 0
    assert margins[-1] == pytest.approx(0.9, abs=1e-6)
    assert margins == sorted(margins)


def test_margin_schedule_rejects_empty_runs():
    with pytest.raises(ValueError):
        spread_margin(0, 0)


def test_cross_entropy_matches_log_softmax():
    logits = torch.randn(4, 5)
    targets = torch.tensor([0, 1, 2, 4])
    expected = -torch.log_softmax(logits, 1)[torch.arange(4), targets].mean()
    assert cross_entropy(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_official_margin_schedule_keeps_the_authors_time_axis():
    assert official_spread_margin(0) == pytest.approx(0.2 + 0.79 / (1 + math.exp(4)))
    assert official_spread_margin(10_000) < 0.22  # a short run never leaves ~0.2
    assert official_spread_margin(300_000) == pytest.approx(0.2 + 0.79 / (1 + math.exp(-2)))
    assert margin_at("official", 500, 1000) == official_spread_margin(500)
    assert margin_at("run", 1000, 1000) == pytest.approx(0.9)


def test_unknown_margin_schedule_is_rejected():
    with pytest.raises(ValueError, match="run, official"):
        margin_at("cosine", 0, 10)
