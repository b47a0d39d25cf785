"""The savings of the attack sweep never change a result, and the sign-gradient attack is FGSM/BIM/PGD.

"Plain" is the sweep without savings: every image attacked at every eps for every step. Both
paths must give the same table. Exactness is checked at batch size 1, where every image's
arithmetic is independent of its neighbours; :func:`capsrobust.evaluation.robustness.compare_savings`
makes the same comparison at the real batch sizes (``capsrobust bench attacks``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from capsrobust.attacks import ScoreModel, SignGradientAttack, build_attack, set_target
from capsrobust.evaluation.robustness import RESULT_COLUMNS, SweepConfig, compare_savings, robustness_sweep
from capsrobust.models import build_model
from tests.test_attacks import TemplateCapsules, TemplateModel, separable_data, templates


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_capsules(seed: int = 0) -> nn.Module:
    """capsules-small's architecture at a few capsules per layer, 2 EM iterations: fast, untrained."""
    torch.manual_seed(seed)
    return build_model("capsules-small", A=4, B=2, C=2, D=2, iterations=2).eval()


def mixed_data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable images, some with a wrong label, so some examples are wrong on the clean input."""
    images, labels = separable_data(n=n)
    labels = labels.clone()
    labels[::3] = (labels[::3] + 1) % 5
    return images, labels


def test_savings_never_change_the_untargeted_table_of_any_attack():
    images, labels = mixed_data()
    models = {"capsules": TemplateCapsules(templates(), sharpness=3.0), "cnn": TemplateModel(templates(seed=3))}
    config = SweepConfig(attacks=("fgsm", "bim", "pgd:3x2", "transfer", "square:1", "apgd:2"),
                         eps_values=(0.0, 0.01, 0.03, 0.1), steps=3, batch_size=1)
    timings, differences, table = compare_savings(models, images, labels, config, dataset="toy")
    assert differences.empty, differences
    bim = table[table.attack == "bim"]  # the comparison is not vacuous: some, not all, examples broken
    assert (bim.adversarial_error > bim.clean_error).any() and (bim.adversarial_error < 1).any()
    total = timings[timings.model == "total"].iloc[0]
    assert total.gradient_images_savings < total.gradient_images_plain / 2


def test_savings_never_change_the_targeted_table():
    images, labels = mixed_data(n=6)
    config = SweepConfig(attacks=("fgsm", "bim", "pgd:2x2"), eps_values=(0.0, 0.02, 0.1), modes=("targeted",), steps=2,
                         batch_size=1)
    _, differences, table = compare_savings({"cnn": TemplateModel(templates())}, images, labels, config, dataset="toy")
    assert differences.empty, differences
    assert table.attack_success_rate.max() > 0


def test_savings_never_change_the_table_of_a_capsule_net_with_the_vote_attack():
    images, labels = mixed_data(n=6)
    config = SweepConfig(attacks=("fgsm", "bim", "pgd:2x2", "vote:2x2"), eps_values=(0.0, 0.005, 0.05),
                         modes=("untargeted", "targeted"), steps=2, batch_size=1)
    _, differences, table = compare_savings({"capsules-small": tiny_capsules()}, images, labels, config, dataset="toy")
    assert differences.empty, differences
    assert set(table.attack) == {"fgsm", "bim", "pgd:2x2", "vote:2x2", "worst-case"}


def test_savings_path_table_equals_the_plain_path_at_real_batch_sizes_on_a_linear_model():
    images, labels = mixed_data(n=20)
    config = SweepConfig(attacks=("fgsm", "bim", "pgd"), eps_values=(0.0, 0.01, 0.05), steps=4)
    plain = robustness_sweep({"cnn": TemplateModel(templates())}, images, labels,
                             SweepConfig(**{**config.__dict__, "savings": False}), dataset="toy")
    saved = robustness_sweep({"cnn": TemplateModel(templates())}, images, labels, config, dataset="toy")
    assert plain[RESULT_COLUMNS].equals(saved[RESULT_COLUMNS])


def test_images_wrong_on_clean_input_count_as_broken_with_no_perturbation():
    images, labels = mixed_data(n=9)  # 3 wrong labels: clean error 1/3
    config = SweepConfig(attacks=("bim",), eps_values=(0.0, 1e-4), steps=2)
    table = robustness_sweep({"cnn": TemplateModel(templates())}, images, labels, config, dataset="toy")
    at_zero, tiny_eps = table[table.eps == 0.0].iloc[0], table[table.eps == 1e-4].iloc[0]
    assert at_zero.clean_error == pytest.approx(1 / 3) and at_zero.adversarial_error == pytest.approx(1 / 3)
    assert tiny_eps.adversarial_error == pytest.approx(1 / 3)  # 1e-4 breaks none of the correct ones
    assert at_zero.gradient_images == 0 and at_zero.forward_images == 0  # eps 0: nothing attacked


# ---------------------------------------------------------------------------------------------
# The attack itself.


def batch_mean_ce(scores: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """torchattacks' loss: CE averaged over the batch (the sweep sums it, so an image's gradient does not
    depend on its batch size -- the same direction, rounded differently where it cancels to ~0)."""
    return -F.cross_entropy(scores, targets) if targets is not None else F.cross_entropy(scores, labels)


EPS = 1 / 32  # a power of two: eps * (u / eps) == u exactly, so both random starts are the same bits


@pytest.mark.parametrize("targeted", [False, True])
def test_final_iterate_is_torchattacks_fgsm_and_bim(targeted: bool):
    images, labels = separable_data(n=10)
    model = ScoreModel(TemplateCapsules(templates(), sharpness=3.0))
    pairs = [(torchattacks.FGSM(model, eps=EPS), SignGradientAttack(model, EPS, EPS, 1, random_start=False,
                                                                    loss=batch_mean_ce, keep="last")),
             (torchattacks.BIM(model, eps=EPS, alpha=EPS / 4, steps=4),
              SignGradientAttack(model, EPS, EPS / 4, 4, random_start=False, loss=batch_mean_ce, keep="last"))]
    for theirs, ours in pairs:
        set_target(theirs, 1 if targeted else None)
        set_target(ours, 1 if targeted else None)
        assert torch.allclose(theirs(images, labels), ours(images, labels), atol=1e-6)  # BIM projects in another order


def test_final_iterate_is_torchattacks_pgd_from_the_same_random_start():
    images, labels = separable_data(n=10)
    model = ScoreModel(TemplateModel(templates()))
    torch.manual_seed(5)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=5, random_start=True)(images, labels)
    torch.manual_seed(5)
    noise = torch.empty_like(images).uniform_(-EPS, EPS) / EPS  # the draw torchattacks.PGD makes
    ours = SignGradientAttack(model, EPS, EPS / 4, 5, random_start=True, loss=batch_mean_ce, keep="last").perturb(
        images, labels, start_noise=noise[None]).adversarial
    assert torch.equal(theirs, ours)


@pytest.mark.parametrize("targeted", [False, True])
def test_early_stopping_returns_exactly_the_first_successful_iterate(targeted: bool):
    images, labels = mixed_data(n=10)
    results = []
    for early_stop in (False, True):
        attack = build_attack("pgd:6x3", TemplateModel(templates()), 0.02, early_stop=early_stop, batch_size=1)
        set_target(attack, 4 if targeted else None)
        results.append(attack.perturb(images, labels))
    plain, saved = results
    assert torch.equal(plain.adversarial, saved.adversarial) and torch.equal(plain.predictions, saved.predictions)
    assert torch.equal(plain.succeeded, saved.succeeded) and saved.gradient_images < plain.gradient_images
    goal = torch.full_like(labels, 4) if targeted else labels
    hit = plain.predictions == goal if targeted else plain.predictions != goal
    assert torch.equal(hit, plain.succeeded) and 0 < int(hit.sum()) < len(labels)
    with torch.no_grad():  # the returned images really do what the attack claims
        assert torch.equal(TemplateModel(templates())(saved.adversarial).argmax(1), saved.predictions)


def test_a_shared_clean_gradient_gives_the_same_fgsm_and_bim():
    images, labels = separable_data(n=8)
    model = TemplateCapsules(templates(), sharpness=3.0)
    for name in ("fgsm", "bim"):
        attack = build_attack(name, model, 0.05, steps=3, batch_size=1)
        start = attack.gradient(images, labels)
        assert torch.equal(attack.perturb(images, labels).adversarial,
                           attack.perturb(images, labels, start_gradient=start).adversarial)


def test_restarts_only_add_strength():
    images, labels = separable_data(n=20)
    model = TemplateModel(templates())
    one = build_attack("pgd:2", model, 0.012).perturb(images, labels).succeeded
    five = build_attack("pgd:2x5", model, 0.012).perturb(images, labels).succeeded
    assert bool((five | ~one).all())  # restart 0 is the same run; later restarts can only add successes
