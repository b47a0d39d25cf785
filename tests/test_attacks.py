"""Adversarial evaluation: attacks, sweeps, sanity checks, `capsrobust attack` and `bench attacks`.

Library behaviour is specified on hand-built toy models whose answers are known; the CLI runs on
tiny capsules-small and cnn checkpoints trained for a few steps on a tiny NORB-format dataset.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torchattacks
from click.testing import CliRunner
from torch import nn

from capsrobust.attacks import (ATTACK_LOSSES, ATTACK_NAMES, ATTACKS, BLACK_BOX, RANDOM_START, RESTARTABLE, SIGN_GRADIENT,
                                TARGETED_OK, WHITE_BOX, AttackSpec, NoiseAttack, ScoreModel, SignGradientAttack,
                                TransferAttack, attack_info, attack_loss, build_attack, parse_attack_spec, parse_eps,
                                set_target)
from capsrobust.training.checkpoints import load_checkpoint, save_checkpoint
from capsrobust.errors import ConfigError
from capsrobust.evaluation.attack_data import SHIPPED_DEFAULTS, ShippedPair, default_checkpoints, sample_test_images
from capsrobust.evaluation.robustness import (SweepConfig, evaluate_robustness, gradient_statistics,
                                              robustness_sweep, sanity_checks)
from capsrobust.paths import CACHE_ENV
from capsrobust.reporting import sweep_pivot
from capsrobust_cli.attack import parse_attacks
from capsrobust_cli.main import cli
from tests.conftest import write_dataset
from tests.test_cli_data import assert_one_line_error

PIXELS = 2 * 32 * 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------------------------------------
# Toy models with known answers: images (N, 2, 32, 32) in [0, 1] -> scores (N, 5).


def templates(seed: int = 0) -> torch.Tensor:
    """Five random ±1 patterns (5, 2, 32, 32), one per class."""
    return torch.randint(0, 2, (5, 2, 32, 32), generator=torch.Generator().manual_seed(seed)).float() * 2 - 1


class TemplateModel(nn.Module):
    """Linear classifier s_k = 10 <x − 0.5, t_k> / P: perfect on :func:`separable_data`, softmax not saturated."""

    score_kind = "logits"

    def __init__(self, patterns: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(PIXELS, 5)
        with torch.no_grad():
            self.linear.weight.copy_(patterns.flatten(1) * 10 / PIXELS)
            self.linear.bias.copy_(-(patterns.flatten(1) * 0.5).sum(1) * 10 / PIXELS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1))


class TemplateCapsules(TemplateModel):
    """The same classifier with capsule-style outputs: activations sigmoid(sharpness · (s − offset)) in (0, 1)."""

    score_kind = "activation"

    def __init__(self, patterns: torch.Tensor, sharpness: float = 1.0, offset: float = 0.0) -> None:
        super().__init__(patterns)
        self.sharpness, self.offset = sharpness, offset

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.sharpness * (super().forward(images) - self.offset))


class Quantised(TemplateModel):
    """Gradient masking by quantisation: the input is rounded to 4 grey levels, so input gradients are 0."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.round(images * 3) / 3)


class Detached(TemplateModel):
    """Gradient masking by a non-differentiable step (the input leaves autograd)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images.detach())


class Constant(nn.Module):
    """Predicts ``cls`` for every input (zero weights: attacks cannot move it)."""

    score_kind = "logits"

    def __init__(self, cls: int) -> None:
        super().__init__()
        self.linear = nn.Linear(PIXELS, 5)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(torch.nn.functional.one_hot(torch.tensor(cls), 5).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1))


def separable_data(n: int = 20, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images 0.5 + 0.15·t_y + noise (some pixels clamped at 0 and 1), balanced labels (n,)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 5
    noise = torch.rand(n, 2, 32, 32, generator=generator) * 0.1 - 0.05
    images = (0.5 + 0.15 * templates()[labels] + noise).clamp(0, 1)
    images[:, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # pixels at the borders of [0, 1]
    return images, labels


def error(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) != labels).float().mean().item()


def cell(table: pd.DataFrame, **where: object) -> pd.Series:
    rows = table
    for key, value in where.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, where
    return rows.iloc[0]


# ---------------------------------------------------------------------------------------------
# Attacks and the sweep.


def test_toy_models_are_perfect_on_their_data():
    images, labels = separable_data()
    for model in (TemplateModel(templates()), TemplateCapsules(templates()), Quantised(templates())):
        assert error(model, images, labels) == 0.0


def test_eps_zero_leaves_error_unchanged():
    images, labels = separable_data()
    models = {"cnn": TemplateModel(templates()), "capsules": TemplateCapsules(templates())}
    config = SweepConfig(attacks=("fgsm", "bim", "pgd", "transfer"), eps_values=(0.0,), steps=3, batch_size=8)
    table = robustness_sweep(models, images, labels, config, dataset="toy")
    assert set(table.attack) == {"fgsm", "bim", "pgd", "transfer", "worst-case"}
    assert (table.adversarial_error == table.clean_error).all()
    assert (table.linf_max == 0).all()


def test_fgsm_at_large_eps_breaks_a_model_that_beats_chance():
    images, labels = separable_data()
    model = TemplateModel(templates())
    table = robustness_sweep({"cnn": model}, images, labels,
                             SweepConfig(attacks=("fgsm",), eps_values=(0.0, 0.3)), dataset="toy")
    assert cell(table, eps=0.0).adversarial_error == 0.0
    broken = cell(table, eps=0.3)
    assert broken.clean_error == 0.0 and broken.adversarial_error >= 0.9 and broken.attack_success_rate >= 0.9
    assert broken.eps_std > broken.eps  # images have std < 1 in pixel units


@pytest.mark.parametrize("score", ["log-activation", "activation"])
def test_fgsm_breaks_a_capsule_style_model_through_either_score(score: str):
    images, labels = separable_data()
    model = TemplateCapsules(templates())
    config = SweepConfig(attacks=("fgsm",), eps_values=(0.3,), scores={"capsules": score})
    row = cell(robustness_sweep({"capsules": model}, images, labels, config, dataset="toy"))
    assert row.score == score and row.adversarial_error >= 0.9


ALL_CASES = [(name, loss, targeted) for name in ATTACK_NAMES if name != "vote"  # tests/test_vote_attack.py
             for targeted in (False, True)
             for loss in (("ce", "margin", "dlr", "spread") if name in ("fgsm", "pgd") else ("ce",))
             if not targeted or name in TARGETED_OK]


@pytest.mark.parametrize("name,loss,targeted", ALL_CASES)
def test_adversarial_images_stay_in_the_eps_ball_and_the_unit_cube(name: str, loss: str, targeted: bool):
    images, labels = separable_data(n=8)
    target, source = TemplateCapsules(templates()), TemplateModel(templates(seed=3))
    eps = 0.3  # large enough to break the toy, so square and autoattack stop early
    torch.manual_seed(0)
    attack = build_attack(name, target, eps, loss=loss, steps=2, source_model=source)
    set_target(attack, 2 if targeted else None)
    adversarial = attack(images, labels)
    assert adversarial.shape == images.shape
    assert (adversarial - images).abs().max().item() <= eps + 1e-6
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0
    if name not in ("apgd", "square", "autoattack"):  # these keep the clean image where they fail
        assert (adversarial - images).abs().max().item() >= eps / 2  # it moved


def test_sweep_reports_perturbations_within_eps():
    images, labels = separable_data()
    config = SweepConfig(attacks=("fgsm", "pgd"), eps_values=(0.05, 0.2), modes=("untargeted", "targeted"), steps=2)
    table = robustness_sweep({"cnn": TemplateModel(templates())}, images, labels, config, dataset="toy")
    attacks = table[table.attack != "worst-case"]
    assert (attacks.linf_max <= attacks.eps + 1e-6).all() and (attacks.linf_mean <= attacks.linf_max + 1e-9).all()
    assert (attacks.linf_max >= attacks.eps - 1e-6).all()  # the sign step uses the whole budget


def test_targeted_success_is_averaged_over_the_four_wrong_classes():
    images, labels = separable_data(n=10)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3, 4, 1])
    # A constant model predicting class 0: an example labelled y != 0 is "hit" only for target 0,
    # one of its 4 wrong classes -> 1/4; an example labelled 0 never (target 0 is its own class).
    config = SweepConfig(attacks=("fgsm",), eps_values=(0.2,), modes=("targeted",))
    row = cell(robustness_sweep({"cnn": Constant(0)}, images, labels, config, dataset="toy"))
    assert row.attack_success_rate == pytest.approx(0.5 * 0.25)
    assert row.success_rate_5class == pytest.approx(0.2)  # the paper's convention counts target 0 for everyone


def test_targeted_success_of_a_perfect_model_at_eps_zero_is_zero_not_twenty_percent():
    images, labels = separable_data()
    config = SweepConfig(attacks=("fgsm",), eps_values=(0.0,), modes=("targeted",))
    row = cell(robustness_sweep({"cnn": TemplateModel(templates())}, images, labels, config, dataset="toy"))
    assert row.attack_success_rate == 0.0 and row.adversarial_error == 0.0
    assert row.success_rate_5class == pytest.approx(0.2)  # REFERENCE.md §6: the paper's 20 % at eps = 0


def test_worst_case_breaks_every_example_any_attack_broke():
    images, labels = separable_data()
    config = SweepConfig(attacks=("fgsm", "bim", "pgd"), eps_values=(0.02, 0.05), steps=3)
    table = robustness_sweep({"cnn": TemplateModel(templates())}, images, labels, config, dataset="toy")
    for eps in (0.02, 0.05):
        rows = table[table.eps == eps]
        worst = cell(rows, attack="worst-case").adversarial_error
        assert worst >= rows[rows.attack != "worst-case"].adversarial_error.max()


def test_spread_loss_moves_confident_capsule_predictions():
    # True class ~1, others ~5e-4 (s_y ≈ 1.5, others ≈ 0): on log-activations every gap (≈ 7.5)
    # exceeds the margin 1, so a spread loss computed there is 0 with zero gradient; computed on
    # the activations (gap < 1) it keeps pushing.
    images, labels = separable_data(n=10)
    model = TemplateCapsules(templates(), sharpness=10.0, offset=0.75)
    with torch.no_grad():
        activations = model(images)
    assert (activations.log().gather(1, labels[:, None]) - activations.log()).sort(1).values[:, 1].min() > 1
    attack = build_attack("fgsm", model, 0.05, loss="spread")
    assert ScoreModel(model).score == "log-activation"
    moved = (attack(images, labels) - images).abs().flatten(1).amax(1)
    assert torch.all(moved > 0.04)


# ---------------------------------------------------------------------------------------------
# Sanity checks.


def test_gradient_check_fails_for_a_gradient_masked_model_and_passes_for_a_normal_one():
    images, labels = separable_data()
    models = {"normal": TemplateModel(templates()), "quantised": Quantised(templates()),
              "detached": Detached(templates())}
    gradients = gradient_statistics(models, images, labels).set_index("model")
    assert gradients.loc["quantised", "zero_gradient_fraction"] == 1.0
    assert gradients.loc["detached", "zero_gradient_fraction"] == 1.0  # reported, not an autograd error
    config = SweepConfig(attacks=("fgsm", "bim"), eps_values=(0.0, 0.3), steps=2)
    table, checks = evaluate_robustness(models, images, labels, config, dataset="toy")
    status = checks[checks.check == "input gradients non-zero"].set_index("model").status
    assert status.to_dict() == {"normal": "PASS", "quantised": "FAIL", "detached": "FAIL"}
    # The masked models look robust to white-box attacks: exactly the illusion the check exposes.
    assert cell(table, model="quantised", attack="fgsm", eps=0.3).adversarial_error == 0.0
    assert cell(table, model="normal", attack="fgsm", eps=0.3).adversarial_error >= 0.9


def _fake_sweep(errors: dict[str, list[float]], eps=(0.0, 0.1, 0.5), n: int = 1000, steps: int = 10) -> pd.DataFrame:
    """A sweep table by hand: attack -> error per eps; steps and restarts read from the label (pgd:20x2)."""
    rows = [{"model": "cnn", "attack": attack, "mode": "untargeted", "eps": e, "n": n, "adversarial_error": err,
             "attack_success_rate": err, "steps": parse_attack_spec(attack).resolved_steps(steps),
             "restarts": parse_attack_spec(attack).restarts}
            for attack, values in errors.items() if attack != "worst-case" for e, err in zip(eps, values)]
    rows += [{"model": "cnn", "attack": "worst-case", "mode": "untargeted", "eps": e, "n": n, "adversarial_error": err,
              "attack_success_rate": err, "steps": 0, "restarts": 0} for e, err in zip(eps, errors.get("worst-case", []))]
    return pd.DataFrame(rows)


def test_checks_flag_bim_weaker_than_fgsm_and_non_monotone_success():
    checks = sanity_checks(_fake_sweep({"fgsm": [0.1, 0.6, 0.9], "bim": [0.1, 0.7, 0.4]}))
    by_check = checks.groupby("check").status.apply(list).to_dict()
    assert by_check["iterative >= single-step"] == ["FAIL"]
    assert sorted(by_check["success monotone in eps"]) == ["FAIL", "PASS"]  # bim drops from 0.7 to 0.4
    assert by_check["chance error at eps >= 0.5"] == ["PASS"]  # fgsm reaches 0.9


def test_checks_pass_a_sound_sweep_and_flag_accuracy_far_above_chance():
    sound = sanity_checks(_fake_sweep({"fgsm": [0.1, 0.5, 0.85], "bim": [0.1, 0.7, 0.95]}))
    ran = sound[~sound.check.isin(["converged (2x steps, restarts)", "unbounded eps reaches 100 %"])]
    assert list(ran.status) == ["HOLDS"] + ["PASS"] * (len(ran) - 1)
    assert set(sound.status) == {"HOLDS", "PASS", "SKIP"}  # no doubled attack, no eps 1 in this sweep
    stuck = sanity_checks(_fake_sweep({"fgsm": [0.1, 0.2, 0.3]}))
    assert cell(stuck, check="chance error at eps >= 0.5").status == "FAIL"
    assert cell(stuck, check="iterative >= single-step").status == "SKIP"


def test_checks_flag_transfer_stronger_than_white_box():
    checks = sanity_checks(_fake_sweep({"fgsm": [0.1, 0.2, 0.8], "transfer": [0.1, 0.6, 0.8]}))
    assert cell(checks, check="transfer <= white-box").status == "FAIL"


def test_checks_fail_naming_square_when_it_beats_the_headline_white_box_attack():
    # pgd is the headline (strongest white-box) attack; square beats it at eps 0.1 by 0.2.
    checks = sanity_checks(_fake_sweep({"fgsm": [0.1, 0.3, 0.9], "pgd": [0.1, 0.4, 0.95],
                                        "square": [0.1, 0.6, 0.95]}))
    row = cell(checks, check="square <= white-box")
    assert row.status == "FAIL" and "square beats the headline white-box attack: pgd at eps 0.1" in row.detail
    verdict = cell(checks, check="verdict")
    assert verdict.status == "SUSPECT" and "square <= white-box" in verdict.detail and checks.index[0] == verdict.name


def test_checks_fail_naming_the_vote_attack_and_pass_a_weaker_challenger():
    strong_vote = sanity_checks(_fake_sweep({"bim": [0.1, 0.3, 0.9], "vote:20x2": [0.1, 0.7, 0.9]}))
    row = cell(strong_vote, check="vote <= white-box")
    assert row.status == "FAIL" and "vote:20x2 beats the headline white-box attack: bim at eps 0.1" in row.detail
    # A square that beats only fgsm (not the headline pgd) passes, and the detail says whom it beat.
    weak = sanity_checks(_fake_sweep({"fgsm": [0.1, 0.2, 0.9], "pgd": [0.1, 0.6, 0.9], "square": [0.1, 0.5, 0.9]}))
    row = cell(weak, check="square <= white-box")
    assert row.status == "PASS" and "beats fgsm at eps [0.1]" in row.detail
    assert cell(weak, check="verdict").status == "HOLDS"


def test_checks_open_with_one_verdict_line_per_model():
    table = pd.concat([_fake_sweep({"fgsm": [0.1, 0.6, 0.9], "bim": [0.1, 0.7, 0.95]}).assign(model=model)
                       for model in ("capsules", "cnn")], ignore_index=True)
    table.loc[(table.model == "cnn") & (table.attack == "bim") & (table.eps == 0.5), "adversarial_error"] = 0.3
    checks = sanity_checks(table)
    assert list(checks.check[:2]) == ["verdict", "verdict"] and list(checks.model[:2]) == ["capsules", "cnn"]
    assert list(checks.status[:2]) == ["HOLDS", "SUSPECT"]
    assert "success monotone in eps [untargeted]: bim: drops at eps 0.5 (0.700 -> 0.300)" in checks.detail[1]
    assert "verdict" not in set(checks.check[2:])


def test_fgsm_overshoot_warns_unless_fgsm_leads_and_a_warning_never_makes_numbers_suspect():
    # FGSM falls from 0.9 to 0.8 at eps 0.5 while BIM, stronger there, keeps rising: a WARN.
    overshoot = sanity_checks(_fake_sweep({"fgsm": [0.1, 0.9, 0.8], "bim": [0.1, 0.95, 1.0]}))
    row = cell(overshoot, check="success monotone in eps", status="WARN")
    assert row.detail.startswith("fgsm: drops at eps 0.5 (0.900 -> 0.800)") and row.value == pytest.approx(0.1)
    verdict = cell(overshoot, check="verdict")
    assert verdict.status == "HOLDS" and "1 warned: success monotone in eps" in verdict.detail
    # Where FGSM is the strongest attack, its drop carries the headline: a FAIL.
    leading = sanity_checks(_fake_sweep({"fgsm": [0.1, 0.9, 0.8], "bim": [0.1, 0.6, 0.7]}))
    row = cell(leading, check="success monotone in eps", status="FAIL")
    assert "fgsm is the strongest attack at eps [0.5]" in row.detail
    assert cell(leading, check="verdict").status == "SUSPECT"


def test_a_worst_case_that_drops_fails():
    checks = sanity_checks(_fake_sweep({"fgsm": [0.1, 0.9, 0.85], "bim": [0.1, 0.8, 0.85],
                                        "worst-case": [0.1, 0.95, 0.85]}))
    rows = checks[checks.check == "success monotone in eps"].set_index("detail").status
    assert rows["worst-case: drops at eps 0.5 (0.950 -> 0.850)"] == "FAIL"
    assert cell(checks, check="verdict").status == "SUSPECT"


def test_convergence_compares_the_strongest_gradient_attack_with_its_double():
    eps = (0.0, 0.05, 0.1)
    converged = sanity_checks(_fake_sweep({"fgsm": [0.1, 0.3, 0.5], "pgd": [0.1, 0.5, 0.8],
                                           "pgd:20x2": [0.1, 0.51, 0.81]}, eps=eps))
    row = cell(converged, check="converged (2x steps, restarts)")
    assert row.status == "PASS" and row.detail.startswith("pgd:20x2 vs pgd") and "0.05: +1.0" in row.detail
    not_yet = sanity_checks(_fake_sweep({"pgd": [0.1, 0.5, 0.8], "pgd:20x2": [0.1, 0.6, 0.8]}, eps=eps))
    row = cell(not_yet, check="converged (2x steps, restarts)")
    assert row.status == "FAIL" and row.value == pytest.approx(0.1)
    assert cell(not_yet, check="verdict").status == "SUSPECT"
    # Restarts must double too for a restartable attack: pgd:20 is no double of pgd:10x2.
    single = sanity_checks(_fake_sweep({"pgd:10x2": [0.1, 0.5, 0.8], "pgd:20": [0.1, 0.9, 0.9]}, eps=eps))
    assert cell(single, check="converged (2x steps, restarts)").status == "SKIP"
    # Converged, but AutoAttack is stronger and was not doubled: a WARN that names it.
    weaker = sanity_checks(_fake_sweep({"pgd": [0.1, 0.5, 0.8], "pgd:20x2": [0.1, 0.5, 0.8],
                                        "autoattack": [0.1, 0.7, 0.9]}, eps=eps))
    row = cell(weaker, check="converged (2x steps, restarts)")
    assert row.status == "WARN" and "not shown for the stronger autoattack" in row.detail


def test_unbounded_eps_must_reach_one_hundred_percent():
    eps = (0.0, 0.1, 1.0)
    full = sanity_checks(_fake_sweep({"bim": [0.1, 0.6, 1.0]}, eps=eps))
    assert cell(full, check="unbounded eps reaches 100 %").status == "PASS"
    stuck = sanity_checks(_fake_sweep({"bim": [0.1, 0.6, 0.9]}, eps=eps))
    row = cell(stuck, check="unbounded eps reaches 100 %")
    assert row.status == "FAIL" and row.value == pytest.approx(0.9) and "at eps 1" in row.detail


def test_noise_that_changes_accuracy_warns_and_noise_beating_white_box_fails():
    quiet = sanity_checks(_fake_sweep({"bim": [0.1, 0.6, 0.9], "noise": [0.1, 0.11, 0.5]}))
    row = cell(quiet, check="random noise barely changes accuracy")
    assert row.status == "PASS" and "0.1: +1.0" in row.detail  # eps 0.5 is past the noise check's range
    assert cell(quiet, check="noise <= white-box").status == "PASS"
    loud = sanity_checks(_fake_sweep({"bim": [0.1, 0.3, 0.9], "noise": [0.1, 0.4, 0.5]}))
    assert cell(loud, check="random noise barely changes accuracy").status == "WARN"
    assert cell(loud, check="noise <= white-box").status == "FAIL"  # gradients weaker than noise: masking


def test_noise_attack_stays_in_the_ball_is_reproducible_and_has_no_targeted_mode():
    images, labels = separable_data(n=10)
    model = TemplateModel(templates())
    first = build_attack("noise", model, 0.05, steps=3, seed=1)(images, labels)
    again = build_attack("noise", model, 0.05, steps=3, seed=1)(images, labels)
    assert torch.equal(first, again) and 0.04 < (first - images).abs().max().item() <= 0.05 + 1e-6
    with pytest.raises(ConfigError, match="no targeted mode"):
        set_target(build_attack("noise", model, 0.05), 1)


def test_per_image_outcomes_give_back_the_worst_case_row():
    images, labels = separable_data()
    models = {"capsules": TemplateCapsules(templates()), "cnn": TemplateModel(templates())}
    config = SweepConfig(attacks=("fgsm", "bim", "noise"), eps_values=(0.0, 0.02, 0.3), steps=2)
    table, checks = evaluate_robustness(models, images, labels, config, dataset="toy")
    per_image = checks.attrs["per_image"]
    assert len(per_image) == 2 * 3 * len(labels) and set(per_image.dataset) == {"toy"}
    broken = per_image.groupby(["model", "eps"]).broken.mean()
    worst = table[table.attack == "worst-case"].set_index(["model", "eps"])
    assert broken.to_dict() == pytest.approx(worst.adversarial_error.to_dict())
    assert (per_image[per_image.eps == 0.0].broken == ~per_image[per_image.eps == 0.0].clean_correct).all()
    assert cell(checks, check="noise <= white-box", model="cnn").status == "PASS"


@pytest.mark.parametrize("text,expected", [("pgd", ("pgd", None, 1)), ("PGD:50x5", ("pgd", 50, 5)),
                                           ("vote:20", ("vote", 20, 1)), ("autoattack:100", ("autoattack", 100, 1)),
                                           (" apgd:10x3 ", ("apgd", 10, 3))])
def test_attack_specs_carry_steps_and_restarts(text: str, expected: tuple):
    spec = parse_attack_spec(text)
    assert (spec.name, spec.steps, spec.restarts) == expected and spec.label == text.strip().lower()


@pytest.mark.parametrize("text,fragment", [("pgdx", "unknown attack 'pgdx'"), ("fgsm:5", "fgsm takes one step"),
                                           ("bim:3x2", "only pgd, apgd, vote take restarts"),
                                           ("pgd:0", "at least 1"), ("pgd:5:x", "not NAME[:STEPS[xRESTARTS]]")])
def test_bad_attack_specs_are_refused_naming_the_problem(text: str, fragment: str):
    with pytest.raises(ConfigError) as info:
        parse_attack_spec(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_the_name_lists_are_views_of_the_attack_table():
    assert ATTACK_NAMES == tuple(ATTACKS) == ("fgsm", "bim", "pgd", "apgd", "square", "autoattack", "vote", "transfer",
                                              "noise")
    assert all(name == info.name for name, info in ATTACKS.items())
    # The sets the parallel lists held before the table, pinned.
    assert WHITE_BOX == ("fgsm", "bim", "pgd", "apgd", "autoattack")
    assert BLACK_BOX == ("square", "transfer", "noise")
    assert SIGN_GRADIENT == ("fgsm", "bim", "pgd", "vote")
    assert set(RANDOM_START) == {"pgd", "vote", "apgd", "square", "autoattack", "noise"}
    assert set(RESTARTABLE) == {"pgd", "vote", "apgd"}
    assert set(TARGETED_OK) == {"fgsm", "bim", "pgd", "vote", "square", "transfer"}
    assert ATTACK_LOSSES == {"apgd": ("ce", "dlr"), "square": ("ce", "margin"), "autoattack": ("ce",)}


def test_the_attack_table_holds_the_facts_the_sweep_acts_on():
    assert [n for n, a in ATTACKS.items() if a.needs_pair] == ["transfer"]
    assert [n for n, a in ATTACKS.items() if a.capsule_only] == ["vote"]
    assert {n: a.batch_factor for n, a in ATTACKS.items() if a.batch_factor != 1} == {"square": 4, "noise": 4}
    assert [n for n, a in ATTACKS.items() if a.fixed_steps is not None] == ["fgsm"]
    assert [n for n, a in ATTACKS.items() if a.shares_clean_gradient] == ["fgsm", "bim"]
    assert [n for n, a in ATTACKS.items() if a.skips_broken] == ["fgsm", "bim", "pgd", "vote", "transfer"]
    assert [n for n, a in ATTACKS.items() if a.gradient and a.searches] == ["bim", "pgd", "apgd", "autoattack", "vote"]
    assert [n for n, a in ATTACKS.items() if a.noise_baseline] == ["noise"]


@pytest.mark.parametrize("name,kind", [("fgsm", SignGradientAttack), ("bim", SignGradientAttack),
                                       ("pgd", SignGradientAttack), ("apgd", torchattacks.APGD),
                                       ("square", torchattacks.Square), ("autoattack", torchattacks.AutoAttack),
                                       ("transfer", TransferAttack), ("noise", NoiseAttack)])
def test_each_attack_is_built_by_its_table_row(name: str, kind: type):
    target, source = TemplateCapsules(templates()), TemplateModel(templates(seed=3))
    attack = build_attack(f"{name}:3" if name != "fgsm" else name, target, 0.1, steps=2, source_model=source)
    assert isinstance(attack, kind)
    steps = {"fgsm": 1, "square": None, "transfer": None, "noise": None, "autoattack": None}.get(name, 3)
    if steps is not None:
        assert attack.steps == steps
    if name == "noise":
        assert attack.draws == 3
    if name == "square":
        assert attack.n_queries == 300


def test_an_unknown_attack_name_is_one_line_wherever_it_enters():
    model = TemplateModel(templates())
    for call in (lambda: attack_info("cw"), lambda: build_attack(AttackSpec("cw"), model, 0.1)):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert "unknown attack 'cw'" in message and all(n in message for n in ATTACK_NAMES) and "\n" not in message


def test_a_spec_runs_with_its_own_steps_next_to_the_default():
    images, labels = separable_data(n=10)
    config = SweepConfig(attacks=("pgd", "pgd:4x2"), eps_values=(0.02,), steps=1)
    table = robustness_sweep({"cnn": TemplateModel(templates())}, images, labels, config, dataset="toy")
    assert cell(table, attack="pgd").steps == 1 and cell(table, attack="pgd:4x2")[["steps", "restarts"]].tolist() == [4, 2]


def test_sweep_config_rejects_bad_options_before_any_work():
    for bad, fragment in ((dict(attacks=("fgsm", "nope")), "unknown attack"), (dict(eps_values=(1.5,)), "[0, 1]"),
                          (dict(loss="hinge"), "unknown loss"), (dict(attacks=("apgd",), loss="margin"), "apgd"),
                          (dict(attacks=("apgd",), modes=("targeted",)), "targeted"), (dict(steps=0), "steps")):
        with pytest.raises(ConfigError, match=None) as info:
            SweepConfig(**bad).validate()
        assert fragment in str(info.value)


def _message(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


def test_each_attack_option_has_one_rule_whoever_checks_it():
    """The --eps range, the loss names and the losses an attack takes read the same from the option
    parser, the sweep's up-front check and the attack itself: one rule each, in capsrobust.attacks."""
    model = TemplateModel(templates())
    eps = {_message(lambda: parse_eps("1.5")), _message(lambda: SweepConfig(eps_values=(1.5,)).validate()),
           _message(lambda: build_attack("fgsm", model, 1.5))}
    assert len(eps) == 1 and "1.5 is outside [0, 1]" in eps.pop()
    unknown = {_message(lambda: SweepConfig(loss="hinge").validate()),
               _message(lambda: build_attack("fgsm", model, 0.1, loss="hinge")),
               _message(lambda: SignGradientAttack(model, 0.1, 0.01, 1, loss="hinge")),
               _message(lambda: attack_loss("hinge", torch.zeros(1, 5), torch.zeros(1, dtype=torch.long), None,
                                            "logits"))}
    assert unknown == {"unknown loss 'hinge'; valid losses: ce, margin, dlr, spread"}
    per_attack = {_message(lambda: SweepConfig(attacks=("apgd",), loss="margin").validate()),
                  _message(lambda: build_attack("apgd", model, 0.1, loss="margin"))}
    assert per_attack == {"apgd supports --loss ce or dlr, not 'margin'"}
    twice = {_message(lambda: SweepConfig(attacks=("fgsm", "FGSM")).validate()),
             _message(lambda: parse_attacks("fgsm,FGSM"))}
    assert len(twice) == 1 and "listed twice" in twice.pop()


def test_pivot_puts_models_side_by_side():
    images, labels = separable_data()
    models = {"capsules": TemplateCapsules(templates()), "cnn": TemplateModel(templates())}
    table = robustness_sweep(models, images, labels, SweepConfig(attacks=("fgsm",), eps_values=(0.0, 0.3)),
                             dataset="toy")
    pivot = sweep_pivot(table)
    assert list(pivot.columns) == ["attack", "mode", "eps", "eps_std", "capsules", "cnn"]
    assert list(pivot.eps) == [0.0, 0.3] and pivot.loc[1, "cnn"] >= 0.9


# ---------------------------------------------------------------------------------------------
# eps parsing and test images.


def test_parse_eps_accepts_a_value_a_list_and_an_inclusive_sweep():
    assert parse_eps("0.1") == (0.1,)
    assert parse_eps("0.1,0,0.05,0.1") == (0.0, 0.05, 0.1)
    assert parse_eps("0:0.3:0.1") == (0.0, 0.1, 0.2, 0.3)
    assert len(parse_eps("0:0.3:0.02")) == 16 and parse_eps("0:0.3:0.02")[-1] == 0.3
    assert parse_eps("0:0.25:0.1") == (0.0, 0.1, 0.2)


@pytest.mark.parametrize("text,fragment", [("1.5", "1.5 is outside [0, 1]"), ("-0.1", "-0.1 is outside"),
                                           ("abc", "'abc' is not a number"), ("0:0.3", "START:STOP:STEP"),
                                           ("0.3:0:0.1", "STOP >= START"), ("nan", "nan is outside"), ("", "empty")])
def test_parse_eps_rejects_bad_values_naming_them(text: str, fragment: str):
    with pytest.raises(ConfigError) as info:
        parse_eps(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Tiny trained checkpoints for the CLI.

TINY_CAPS = {"iterations": 1}  # the real capsules-small, one EM iteration for speed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """capsules-small and cnn trained 4 steps (batch 8) on a tiny NORB-format dataset."""
    from capsrobust.data.prepared import prepare_data
    from capsrobust.training.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("attack")
    data_dir = write_dataset(root / "data", size=16)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root / "cache"))
        data = prepare_data(data_dir)
        for name, overrides in (("cnn", {}), ("capsules-small", TINY_CAPS)):
            config = TrainConfig(model=name, data_dir=str(data_dir), steps=4, batch_size=8, eval_every=4,
                                 max_eval_examples=8, model_overrides=overrides)
            train(config, root / name, data=data, progress=False, log=lambda message: None)
    return SimpleNamespace(root=root, data_dir=data_dir, caps=root / "capsules-small" / "last.pt",
                           cnn=root / "cnn" / "last.pt", test_size=len(data.subset("test_familiar")[1]))


def attack_args(tiny: SimpleNamespace, *extra: str, models: str | None = None, out: Path | None = None) -> list[str]:
    """``attack`` with small defaults; ``extra`` (ATTACK and options) comes last, so it overrides them."""
    return ["attack", "--models", models or f"{tiny.caps},{tiny.cnn}", "--data-dir", str(tiny.data_dir),
            "--out", str(out or tiny.root / "out-unused"), "--n", "4", "--batch-size", "4", "--steps", "1",
            "--no-progress", *extra]


def test_attack_command_writes_tables_checks_provenance_and_plot(tiny: SimpleNamespace, tmp_path: Path):
    out = tmp_path / "fgsm-bim"
    result = CliRunner().invoke(cli, attack_args(tiny, "fgsm,bim", "--eps", "0,0.1", out=out))
    assert result.exit_code == 0, result.output
    for name in ("sweep.csv", "sweep.md", "checks.csv", "checks.md", "gradients.csv", "provenance.json",
                 "accuracy_vs_eps.png"):
        assert (out / name).is_file(), name
    assert not (out / "success_vs_eps.png").exists()
    assert (out / "accuracy_vs_eps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    sweep = pd.read_csv(out / "sweep.csv")
    assert set(sweep.model) == {"capsules-small", "cnn"} and set(sweep.attack) == {"fgsm", "bim", "worst-case"}
    assert set(sweep.eps) == {0.0, 0.1} and (sweep.n == 4).all() and set(sweep["mode"]) == {"untargeted"}
    assert dict(sweep.groupby("model").score.first()) == {"capsules-small": "log-activation", "cnn": "logits"}
    at_zero = sweep[sweep.eps == 0.0]
    assert (at_zero.adversarial_error == at_zero.clean_error).all()
    assert (sweep[sweep.attack != "worst-case"].linf_max <= sweep[sweep.attack != "worst-case"].eps + 1e-6).all()
    assert (out / "sweep.md").read_text().startswith("# Adversarial robustness: smallNORB (stereo)")

    checks = pd.read_csv(out / "checks.csv")
    assert list(checks.check[:2]) == ["verdict", "verdict"] and set(checks.status[:2]) <= {"HOLDS", "SUSPECT"}
    assert set(checks.status[2:]) <= {"PASS", "FAIL", "SKIP"}
    assert {"iterative >= single-step", "input gradients non-zero"} <= set(checks.check)
    assert "## Sanity checks" in result.output and "capsules-small" in result.output
    assert "- **capsules-small: " in result.output and "- **cnn: " in result.output  # the verdict lines

    record = json.loads((out / "provenance.json").read_text())
    assert record["dataset"] == "smallNORB" and record["mode"] == "stereo" and len(record["dataset_checksum"]) == 64
    assert record["eps"] == [0.0, 0.1] and record["attacks"] == ["fgsm", "bim"] and record["n"] == 4
    assert record["seed"] == 0 and record["loss"] == "ce" and record["steps"] == 1 and record["wall_time_s"] > 0
    assert record["savings"] is True and record["batch_sizes"] == {"capsules-small": 4, "cnn": 4}
    assert set(record["verdicts"]) == {"capsules-small", "cnn"} and len(record["attack_seconds"]) == 4
    assert {c["model"] for c in record["checkpoints"]} == {"capsules-small", "cnn"}
    assert all(len(c["sha256"]) == 64 for c in record["checkpoints"])


def test_attack_command_runs_the_strong_attacks_with_their_own_rows(tiny: SimpleNamespace, tmp_path: Path):
    out = tmp_path / "strong"
    result = CliRunner().invoke(cli, attack_args(tiny, "fgsm,pgd:2x2,vote,autoattack:1", "--eps", "0,0.3", out=out))
    assert result.exit_code == 0, result.output
    sweep = pd.read_csv(out / "sweep.csv")
    caps, cnn = sweep[sweep.model == "capsules-small"], sweep[sweep.model == "cnn"]
    assert set(caps.attack) == {"fgsm", "pgd:2x2", "vote", "autoattack:1", "worst-case"}
    assert set(cnn.attack) == {"fgsm", "pgd:2x2", "autoattack:1", "worst-case"}  # a CNN has no votes
    assert cell(caps, attack="pgd:2x2", eps=0.3)[["steps", "restarts"]].tolist() == [2, 2]
    attacked = sweep[sweep.attack != "worst-case"]
    assert (attacked.linf_max <= attacked.eps + 1e-6).all() and (attacked.seconds >= 0).all()
    checks = pd.read_csv(out / "checks.csv")
    assert "vote <= white-box" in set(checks[checks.model == "capsules-small"].check)
    assert "autoattack:" in (out / "sweep.md").read_text() and "vote:" in (out / "sweep.md").read_text()


def test_attack_command_without_savings_writes_the_same_sweep(tiny: SimpleNamespace, tmp_path: Path):
    tables = []
    for flag in ([], ["--no-savings"]):
        out = tmp_path / f"run{len(flag)}"
        result = CliRunner().invoke(cli, attack_args(tiny, "fgsm,bim,pgd", "--eps", "0,0.05", "--steps", "2", *flag,
                                                     out=out))
        assert result.exit_code == 0, result.output
        tables.append(pd.read_csv(out / "sweep.csv"))
        assert json.loads((out / "provenance.json").read_text())["savings"] is (not flag)
    result_columns = [c for c in tables[0].columns if c not in ("seconds", "gradient_images", "forward_images")]
    pd.testing.assert_frame_equal(tables[0][result_columns], tables[1][result_columns])
    assert tables[0].gradient_images.sum() < tables[1].gradient_images.sum()


def test_attack_command_targeted_writes_the_success_plot(tiny: SimpleNamespace, tmp_path: Path):
    out = tmp_path / "targeted"
    out.mkdir()
    (out / "success_vs_eps.png").write_bytes(b"stale")
    result = CliRunner().invoke(cli, attack_args(tiny, "fgsm", "--eps", "0.1", "--targeted", out=out))
    assert result.exit_code == 0, result.output
    sweep = pd.read_csv(out / "sweep.csv")
    assert set(sweep["mode"]) == {"untargeted", "targeted"} and set(sweep.model) == {"capsules-small", "cnn"}
    targeted = sweep[sweep["mode"] == "targeted"].iloc[0]
    assert 0.0 <= targeted.attack_success_rate <= 1.0 and 0.0 <= targeted.success_rate_5class <= 1.0
    assert (out / "success_vs_eps.png").read_bytes()[:4] == b"\x89PNG"


def test_test_images_are_a_seeded_subset_of_centre_crops(tiny: SimpleNamespace):
    from capsrobust.data.prepared import prepare_data

    data = prepare_data(tiny.data_dir)
    a_images, a_labels, a_index = sample_test_images(data, 6, seed=3)
    b_images, _, b_index = sample_test_images(data, 6, seed=3)
    _, _, c_index = sample_test_images(data, 6, seed=4)
    assert a_images.shape == (6, 2, 32, 32) and a_images.min() >= 0 and a_images.max() <= 1
    assert torch.equal(a_images, b_images) and torch.equal(a_index, b_index) and not torch.equal(a_index, c_index)
    assert torch.equal(a_labels, data.subset("test_familiar")[1][a_index])


def _ship(root: Path, pair: ShippedPair, tiny: SimpleNamespace) -> None:
    for path, source in ((pair.capsules, tiny.caps), (pair.cnn, tiny.cnn)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / path)


def test_without_models_the_shipped_default_pair_is_attacked_and_named(tiny: SimpleNamespace, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    """The design card's `capsrobust attack fgsm --eps 0.1` on a fresh clone: the committed default models."""
    monkeypatch.chdir(tmp_path)
    _ship(tmp_path, SHIPPED_DEFAULTS[0], tiny)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["attack", "fgsm", "--eps", "0.1", "--data-dir", str(tiny.data_dir), "--n", "4",
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    taken = [line for line in result.stderr.splitlines() if line.startswith("no --models given: taking")]
    assert len(taken) == 1 and SHIPPED_DEFAULTS[0].capsules in taken[0] and SHIPPED_DEFAULTS[0].cnn in taken[0]
    attacked = [c["path"] for c in json.loads((out / "provenance.json").read_text())["checkpoints"]]
    assert attacked == [SHIPPED_DEFAULTS[0].capsules, SHIPPED_DEFAULTS[0].cnn]


def test_the_first_shipped_pair_present_wins(tiny: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    matched = ShippedPair("m/caps.pt", "m/matched.pt", "a matched pair")
    unmatched = ShippedPair("u/caps.pt", "u/best.pt", "an unmatched pair")
    _ship(tmp_path, unmatched, tiny)
    paths, taken = default_checkpoints([matched, unmatched])
    assert paths == [Path("u/caps.pt"), Path("u/best.pt")]
    assert taken == "no --models given: taking an unmatched pair: u/caps.pt, u/best.pt"
    _ship(tmp_path, matched, tiny)
    assert default_checkpoints([matched, unmatched])[0] == [Path("m/caps.pt"), Path("m/matched.pt")]


def test_the_shipped_default_pair_is_todays_default_recipe():
    """The table names checkpoints the repository holds, trained with today's preset (capsule shape jitter included)."""
    from capsrobust.training.presets import resolve_preset
    from capsrobust.training.loop import TrainConfig

    root = Path(__file__).resolve().parent.parent
    pair = SHIPPED_DEFAULTS[-1]
    for path, model in ((pair.capsules, "capsules-small"), (pair.cnn, "cnn")):
        checkpoint, today = load_checkpoint(root / path), resolve_preset(TrainConfig(model=model))
        assert checkpoint["model"] == model and checkpoint["model_config"] == today.model_overrides, path
        for key in ("lr", "lr_decay", "shape_jitter"):  # None in older runs: the preset's then, 0 for jitter
            assert (checkpoint["config"].get(key) or 0.0) == (getattr(today, key) or 0.0), (path, key)


def test_attack_in_a_log_writes_one_plain_line_per_cell(tiny: SimpleNamespace, tmp_path: Path):
    """CliRunner's streams are not terminals: no carriage returns or escape codes, one line per cell instead."""
    args = [a for a in attack_args(tiny, "fgsm,bim", "--eps", "0,0.1", out=tmp_path / "out") if a != "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "\x1b[" not in result.output
    cells = [line for line in result.stderr.splitlines() if line.startswith("attack cells: ")]
    assert len(cells) == 8 and cells[-1].startswith("attack cells: 8/8 cell (100%)")  # 2 models x 2 attacks x 2 eps
    assert all(" eps=" in line for line in cells)


def test_no_shipped_checkpoints_tell_the_user_what_to_pass(tiny: SimpleNamespace, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["attack", "fgsm", "--eps", "0.1", "--data-dir", str(tiny.data_dir)])
    assert_one_line_error(result, "no --models given and no shipped default checkpoints here",
                          SHIPPED_DEFAULTS[0].capsules, "--models CAPS.pt,CNN.pt", "capsrobust train")


def _foreign(tmp_path: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    return tmp_path / "foreign.pt"


def _truncated(tmp_path: Path) -> Path:
    path = save_checkpoint(tmp_path / "cut.pt", {"model": "cnn", "model_state": {"w": torch.zeros(1000)}})
    path.write_bytes(path.read_bytes()[:500])
    return path


def _second_cnn(tmp_path: Path, tiny: SimpleNamespace) -> Path:
    return Path(shutil.copy(tiny.cnn, tmp_path / "cnn-copy.pt"))


BAD_INPUTS = [
    (["fgsm,nope", "--eps", "0.1"], None, ["unknown attack 'nope'", "fgsm, bim, pgd"]),
    (["fgsm", "--eps", "1.5"], None, ["1.5 is outside [0, 1]"]),
    (["fgsm", "--eps=-0.1"], None, ["-0.1 is outside [0, 1]"]),
    (["fgsm", "--eps", "zero"], None, ["'zero' is not a number"]),
    (["fgsm", "--eps", "0:0.3"], None, ["START:STOP:STEP"]),
    (["fgsm", "--eps", "0.1", "--loss", "hinge"], None, ["unknown loss 'hinge'"]),
    (["apgd", "--eps", "0.1", "--targeted"], None, ["apgd cannot run targeted"]),
    (["fgsm", "--eps", "0.1", "--n", "100000"], None, ["--n 100000 exceeds the", "use --n"]),
    (["fgsm", "--eps", "0.1", "--n", "0"], None, ["--n must be at least 1"]),
    (["fgsm", "--eps", "0.1"], lambda p, t: f"{p / 'none.pt'},{t.cnn}", ["checkpoint not found"]),
    (["fgsm", "--eps", "0.1"], lambda p, t: f"{t.caps},{_foreign(p)}", ["not a capsrobust checkpoint"]),
    (["fgsm", "--eps", "0.1"], lambda p, t: f"{_truncated(p)},{t.cnn}", ["not a loadable checkpoint"]),
    (["transfer", "--eps", "0.1"], lambda p, t: f"{t.cnn},{_second_cnn(p, t)}", ["both checkpoints are cnn"]),
    (["transfer", "--eps", "0.1"], lambda p, t: str(t.caps), ["transfer needs one capsule net and one cnn"]),
    (["vote", "--eps", "0.1"], lambda p, t: str(t.cnn), ["the vote attack attacks the class votes of a capsule net",
                                                         "run vote on a capsule checkpoint"]),
    (["fgsm:5", "--eps", "0.1"], None, ["fgsm takes one step"]),
    (["bim:3x2", "--eps", "0.1"], None, ["take restarts"]),
    (["fgsm", "--eps", "0.1", "--batch-size", "0"], None, ["--batch-size must be at least 1"]),
]


@pytest.mark.parametrize("args,models,fragments", BAD_INPUTS, ids=[" ".join(a) + (" models" if m else "")
                                                                   for a, m, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(tiny: SimpleNamespace, tmp_path: Path, args, models, fragments):
    out = tmp_path / "out"
    paths = models(tmp_path, tiny) if models else None
    result = CliRunner().invoke(cli, attack_args(tiny, *args, out=out, models=paths))
    assert_one_line_error(result, *fragments)
    assert not out.exists()  # nothing written for a refused run


def test_out_that_is_a_file_is_refused(tiny: SimpleNamespace, tmp_path: Path):
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(cli, attack_args(tiny, "fgsm", "--eps", "0.1", out=tmp_path / "file"))
    assert_one_line_error(result, "is a file")


def test_checkpoint_trained_on_other_data_is_refused(tiny: SimpleNamespace, tmp_path: Path):
    other = write_dataset(tmp_path / "other", size=8)
    result = CliRunner().invoke(cli, ["attack", "fgsm", "--eps", "0.1", "--models", f"{tiny.caps},{tiny.cnn}",
                                      "--data-dir", str(other), "--out", str(tmp_path / "out")])
    assert_one_line_error(result, str(tiny.caps), "checksum", "pass --data-dir with the data it was trained on")


def test_attack_help_teaches_scores_measures_and_examples():
    result = CliRunner().invoke(cli, ["attack", "--help"])
    assert result.exit_code == 0
    for text in ("log of their", "logits", "4 WRONG classes", "eps_std", "capsrobust attack fgsm --eps 0.1",
                 "capsrobust attack fgsm,bim --eps 0:0.3:0.02 --targeted",
                 "capsrobust attack transfer --eps 0.1 --models caps.pt,cnn.pt"):
        assert text in result.output, text
    assert "attack" in CliRunner().invoke(cli, ["--help"]).output


def test_bench_attacks_times_both_paths_and_finds_the_tables_equal(tiny: SimpleNamespace, tmp_path: Path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(cli, ["bench", "attacks", "--n", "10", "--steps", "2", "--json", "--models",
                                      f"{tiny.caps},{tiny.cnn}", "--data-dir", str(tiny.data_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = {(r["model"], r["attack"]): r for r in report["timings"]}
    attacks = {(m, a) for m in ("capsules-small", "cnn") for a in ("fgsm", "bim", "pgd")}
    assert attacks <= set(rows) and ("total", "") in set(rows)
    assert all(rows[k]["seconds_plain"] > 0 and rows[k]["seconds_savings"] > 0 for k in attacks)
    # Plain: 10 images x 8 eps x 2 steps through forward + backward for bim; the savings use fewer.
    assert rows[("cnn", "bim")]["gradient_images_plain"] == 10 * 8 * 2
    assert rows[("cnn", "bim")]["gradient_images_savings"] < rows[("cnn", "bim")]["gradient_images_plain"]
    assert report["tables_equal"] is True and report["differences"] == [] and report["cells_compared"] == 2 * 3 * 8
    assert report["total_seconds_plain"] == pytest.approx(rows[("total", "")]["seconds_plain"])
    assert report["n"] == 10 and report["dataset"] == "smallNORB (stereo)" and len(report["eps"]) == 8
    assert report["batch_sizes"] == {"capsules-small": 16, "cnn": 128}
    assert json.loads((out / "attacks.json").read_text())["tables_equal"] is True
    assert json.loads((out / "provenance.json").read_text())["total_seconds_plain"] > 0
    assert "tables equal: yes" in (out / "attacks.md").read_text()


def test_bench_attacks_savings_only_skips_the_plain_run(tiny: SimpleNamespace):
    result = CliRunner().invoke(cli, ["bench", "attacks", "--n", "6", "--steps", "1", "--savings-only", "--models",
                                      f"{tiny.caps},{tiny.cnn}", "--data-dir", str(tiny.data_dir)])
    assert result.exit_code == 0, result.output
    assert "plain run skipped" in result.output and "total with savings" in result.output


def test_loaded_checkpoints_keep_their_model_names(tiny: SimpleNamespace):
    assert load_checkpoint(tiny.caps)["model"] == "capsules-small" and load_checkpoint(tiny.cnn)["model"] == "cnn"
