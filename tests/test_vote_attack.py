"""The vote attack (Gu, Wu & Tresp, ICLR 2021) on matrix capsules, and AutoAttack on a capsule net.

Models are both capsule configurations at a few capsules per layer (untrained, fast); the vote
scores are checked against a float64 transcription of the one-M-step formula in
:mod:`capsrobust.attacks.vote`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchattacks
from torch import nn

from capsrobust.attacks import ScoreModel, VoteAttack, VoteScores, build_attack, set_target
from capsrobust.errors import ConfigError
from capsrobust.models import build_model
from capsrobust.models.routing import VARIANCE_FLOOR, inverse_temperatures

CONFIGURATIONS = ("capsules", "capsules-small")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(name: str, iterations: int = 3, seed: int = 0, **options: str) -> nn.Module:
    """``name``'s builder at 4/2/2/2 capsules, with non-zero class-layer betas (so they are tested too)."""
    torch.manual_seed(seed)
    model = build_model(name, A=4, B=2, C=2, D=2, iterations=iterations, **options).eval()
    with torch.no_grad():
        model.class_caps.beta_u.normal_(0.0, 0.5)
        # ~0.2 in logit units either way: direct betas are multiplied by lambda (~4e-3), logit ones are not.
        model.class_caps.beta_a.normal_(0.0, 0.2 if options.get("beta_parametrisation") == "logit" else 50.0)
    return model


def images_and_labels(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, 32, 32, generator=generator), torch.arange(n) % 5


def oracle_vote_activations(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The module docstring's formula, in float64: one M-step over the class votes, uniform assignments."""
    captured = {}
    hook = model.conv_caps2.register_forward_hook(lambda module, inputs, output: captured.update(children=output))
    with torch.no_grad():
        model(images)
    hook.remove()
    poses, acts = (t.double() for t in captured["children"])  # (N, H, W, D, 16), (N, H, W, D)
    caps = model.class_caps
    n, h, w, d, _ = poses.shape
    classes = caps.num_classes
    votes = torch.einsum("npdrk,dokc->nopdrc", poses.reshape(n, h * w, d, 4, 4), caps.weight.double())
    votes = votes.reshape(n, classes, h * w, d, 16).clone()
    centres = caps.centres.double().reshape(h * w, 2)
    votes[..., 3] += centres[:, 0].view(1, 1, h * w, 1)  # coordinate addition: pose entries (0, 3), (1, 3)
    votes[..., 7] += centres[:, 1].view(1, 1, h * w, 1)
    votes = votes.reshape(n, classes, h * w * d, 16)
    a = acts.reshape(n, 1, h * w * d, 1)
    mean = (a * votes).sum(2) / a.sum(2)
    variance = (a * (votes - mean[:, :, None]) ** 2).sum(2) / a.sum(2) + VARIANCE_FLOOR
    mass = a.sum(2)[:, :, 0] / classes  # (N, 1)
    # The class layer's lambda: official 1/4, or IBM's cost factor 100 O / I (layers.cost_factor).
    factor = 0.25 if caps.cost_normalisation == "none" else 100.0 * classes / (h * w * d)
    final_lambda = inverse_temperatures("official", caps.iterations, factor)[-1]
    cost = mass * (16 * caps.beta_u.double() + 0.5 * variance.log().sum(-1))
    if caps.beta_parametrisation == "logit":  # beta_a is the final logit's offset: logit = beta_a - lambda cost
        return torch.sigmoid(caps.beta_a.double() - final_lambda * cost)
    return torch.sigmoid(final_lambda * (caps.beta_a.double() - cost))


@pytest.mark.parametrize("name", CONFIGURATIONS)
@pytest.mark.parametrize("options", [{}, {"beta_parametrisation": "logit", "cost_normalisation": "ibm"}],
                         ids=["official", "logit-ibm"])
def test_vote_scores_are_one_m_step_over_the_class_votes(name: str, options: dict):
    model = tiny(name, **options)
    images, _ = images_and_labels()
    scores = VoteScores(model)(images)
    expected = oracle_vote_activations(model, images)
    assert torch.allclose(scores.double(), expected, atol=1e-6, rtol=0)
    assert expected.std(dim=1).min() > 1e-4  # the classes differ: the comparison is not vacuous ...
    assert 1e-3 < expected.min() and expected.max() < 1 - 1e-3  # ... and the sigmoid is not saturated


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_vote_scores_report_the_real_prediction_and_leave_the_model_as_it_was(name: str):
    model = tiny(name)
    routing = model.class_caps.routing
    images, _ = images_and_labels()
    votes = VoteScores(model)
    scores = votes(images)
    with torch.no_grad():
        assert torch.equal(votes.routed, model(images))  # full routing, for free
    assert not torch.allclose(scores, votes.routed)  # with 3 iterations, bypassing routing changes the scores
    assert model.class_caps.routing is routing
    with pytest.raises(RuntimeError):
        votes(torch.rand(2, 3, 32, 32))  # wrong channel count: the forward fails ...
    assert model.class_caps.routing is routing  # ... and the routing is still put back


def test_with_one_routing_iteration_there_is_nothing_to_bypass():
    model = tiny("capsules-small", iterations=1)
    images, _ = images_and_labels()
    with torch.no_grad():
        assert torch.allclose(VoteScores(model)(images), model(images), atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", CONFIGURATIONS)
@pytest.mark.parametrize("targeted", [False, True])
def test_vote_attack_stays_within_eps_and_the_unit_cube(name: str, targeted: bool):
    model = tiny(name)
    images, labels = images_and_labels()
    images[0, 0, :2, :2] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # pixels at the borders of [0, 1]
    eps = 0.05
    attack = build_attack("vote:3x2", model, eps)
    assert isinstance(attack, VoteAttack) and attack.model.score == "log-activation"
    set_target(attack, 3 if targeted else None)
    result = attack.perturb(images, labels)
    adversarial = result.adversarial
    assert adversarial.shape == images.shape
    assert (adversarial - images).abs().max().item() <= eps + 1e-6
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0
    with torch.no_grad():  # success is the real model's verdict, not the vote scores'
        real = model(adversarial).argmax(1)
    assert torch.equal(real, result.predictions)
    goal = torch.full_like(labels, 3) if targeted else labels
    assert torch.equal(result.succeeded, real == goal if targeted else real != goal)


def test_vote_attack_gradient_is_not_the_routed_gradient():
    model = tiny("capsules-small")
    images, labels = images_and_labels()
    vote = build_attack("vote", model, 0.05).gradient(images, labels)
    routed = build_attack("bim", model, 0.05).gradient(images, labels)
    assert vote.abs().sum() > 0 and not torch.equal(vote.sign(), routed.sign())


@pytest.mark.parametrize("how", ["build_attack", "VoteScores", "VoteAttack"])
def test_vote_attack_is_refused_for_a_cnn_with_one_line(how: str):
    cnn = build_model("cnn")
    with pytest.raises(ConfigError) as info:
        if how == "build_attack":
            build_attack("vote", cnn, 0.1)
        elif how == "VoteScores":
            VoteScores(cnn)
        else:
            VoteAttack(ScoreModel(cnn), 0.1)
    message = str(info.value)
    assert "\n" not in message and "capsule net" in message and "logits" in message


def test_autoattack_runs_on_a_capsule_net_through_its_log_activations():
    model = tiny("capsules-small")
    images, labels = images_and_labels(n=4)
    eps = 0.02
    attack = build_attack("autoattack:2", model, eps)
    # Activations are not logits: every sub-attack sees log a (softmax(log a) = a / sum a).
    assert attack.model.score == "log-activation"
    subs = attack._autoattack.attacks
    assert [type(s).__name__ for s in subs] == ["APGD", "APGDT", "FAB", "Square"]
    assert all(s.model is attack.model for s in subs) and [s.steps for s in subs[:3]] == [2, 2, 2]
    subs[3].n_queries = 20  # the standard 5000 queries are for real runs
    adversarial = attack(images, labels)
    assert (adversarial - images).abs().max().item() <= eps + 1e-6
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0
    with torch.no_grad():
        clean_wrong = model(images).argmax(1) != labels
        adversarial_wrong = model(adversarial).argmax(1) != labels
    assert bool((adversarial_wrong | ~clean_wrong).all())  # never "repairs" an example it was given wrong


def test_autoattack_apgd_targets_four_wrong_classes_of_five():
    attack = build_attack("autoattack", tiny("capsules-small"), 0.01)
    apgdt, fab = attack._autoattack.attacks[1:3]
    assert isinstance(apgdt, torchattacks.APGDT) and apgdt.n_target_classes == 4 and fab.n_target_classes == 4
    assert math.isclose(attack.eps, 0.01)
