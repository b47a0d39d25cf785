"""Model contract: shapes, score kinds, parameter counts, builders and standardisation."""

from __future__ import annotations

import pytest
import torch

from capsrobust.errors import ConfigError
from capsrobust.models import (MODEL_NAMES, MODELS, BaselineCNN, MatrixCapsNet, build_model, is_capsule_model,
                               score_kind)
from capsrobust.models.capsnet import receptive_field_centres
from capsrobust.models.layers import patch_child_index
from capsrobust.models.routing_naive import naive_em_routing

# Paper §5 / REFERENCE.md §3, with the 2-channel stereo input.
PAPER_PARAMETERS = {"capsules": 310_000, "capsules-small": 68_000, "cnn": 4_200_000}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_is_within_3_percent_of_the_paper(name):
    assert _count(build_model(name, in_channels=2)) == pytest.approx(PAPER_PARAMETERS[name], rel=0.03)


def test_a_models_kind_is_its_score_kind_attribute_not_its_name():
    capsules, cnn = build_model("capsules-small", A=4, B=2, C=2, D=2), build_model("cnn")
    assert is_capsule_model(capsules) and score_kind(capsules) == "activation"
    assert not is_capsule_model(cnn) and score_kind(cnn) == "logits"
    assert score_kind(torch.nn.Linear(2, 5)) == "logits"  # a module that does not say scores logits

    class ActivationCNN(BaselineCNN):  # the attribute decides, whatever the class or name
        score_kind = "activation"

    assert is_capsule_model(ActivationCNN(2))
    assert is_capsule_model("capsules-small") and not is_capsule_model("cnn")  # names: through their class


@pytest.mark.parametrize("in_channels", [1, 2])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_map_images_to_five_class_scores(name, in_channels):
    model = build_model(name, in_channels=in_channels).eval()
    scores = model(torch.rand(3, in_channels, 32, 32))
    assert scores.shape == (3, 5)
    assert torch.isfinite(scores).all()


def test_score_kinds_tell_activations_from_logits():
    assert build_model("capsules").score_kind == "activation"
    assert build_model("capsules-small").score_kind == "activation"
    assert build_model("cnn").score_kind == "logits"


def test_capsule_scores_are_activations_in_the_open_unit_interval():
    scores = build_model("capsules-small")(torch.rand(4, 2, 32, 32))
    assert ((scores > 0) & (scores < 1)).all()


def test_capsule_net_exposes_class_poses():
    acts, poses = build_model("capsules-small").forward_with_poses(torch.rand(2, 2, 32, 32))
    assert acts.shape == (2, 5) and poses.shape == (2, 5, 16)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_per_image_standardisation_comes_first(name):
    # A per-image affine change of brightness and contrast is undone by the first step.
    model = build_model(name).eval()
    images = torch.rand(2, 2, 32, 32)
    torch.testing.assert_close(model(images), model(0.5 * images + 0.25), atol=1e-4, rtol=1e-3)


def test_unknown_model_name_is_a_config_error_listing_valid_names():
    with pytest.raises(ConfigError) as info:
        build_model("resnet")
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_model_table_says_what_each_name_builds(name):
    entry = MODELS[name]
    model = build_model(name, in_channels=1)
    assert type(model) is entry.cls and score_kind(model) == entry.kind
    assert is_capsule_model(name) == (entry.kind == "activation") == isinstance(model, MatrixCapsNet)


def test_model_names_are_the_tables_keys_and_unknown_names_are_no_capsule_nets():
    assert MODEL_NAMES == tuple(MODELS) == ("capsules", "capsules-small", "cnn")
    assert not is_capsule_model("resnet")


def test_builders_accept_overrides():
    model = build_model("capsules", A=8, B=8, C=8, D=8, iterations=1)
    assert isinstance(model, MatrixCapsNet) and model.conv_caps1.iterations == 1


def test_models_can_be_built_with_the_naive_routing():
    model = build_model("capsules-small", routing=naive_em_routing)
    assert model(torch.rand(2, 2, 32, 32)).shape == (2, 5)


def test_patch_child_index_covers_each_patch():
    index = patch_child_index(14, 14, 2, 3, 2)
    assert index.shape == (36, 18)
    # patch (0, 1) starts at column 2; its first slot is child (row 0, col 2, type 0)
    assert index[1, 0].item() == (0 * 14 + 2) * 2
    assert index.max().item() < 14 * 14 * 2


def test_coordinate_addition_uses_receptive_field_centres():
    centres = receptive_field_centres([(5, 2), (1, 1), (3, 2), (3, 1)], grid=4)
    # ConvCaps2 position p sits on input pixel 4p + 8 (the net is 32 -> 14 -> 14 -> 6 -> 4)
    assert centres[0, 0].tolist() == pytest.approx([8.5 / 32, 8.5 / 32])
    assert centres[3, 1].tolist() == pytest.approx([20.5 / 32, 12.5 / 32])


def _pose_std_after_conv_caps(model: MatrixCapsNet, images: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        poses, acts = model.primary_caps(torch.relu(model.conv1(model.standardise(images))))
        deep, _ = model.conv_caps2(*model.conv_caps1(poses, acts))
    return poses.std().item(), deep.std().item()


def test_identity_transform_init_keeps_more_pose_scale_than_random_init():
    images = torch.rand(4, 2, 32, 32)
    ratios = {}
    for init in ("identity", "normal"):
        torch.manual_seed(0)
        primary, deep = _pose_std_after_conv_caps(build_model("capsules-small", transform_init=init), images)
        ratios[init] = deep / primary
    assert ratios["identity"] > 1.5 * ratios["normal"]


def test_identity_transform_init_starts_near_the_identity():
    torch.manual_seed(0)
    weight = build_model("capsules-small").conv_caps1.weight  # default: identity
    assert (weight.mean(dim=(0, 1)) - torch.eye(4)).abs().max() < 0.05


def test_unknown_transform_init_is_rejected():
    with pytest.raises(ValueError, match="transform_init"):
        build_model("capsules-small", transform_init="xavier")


def test_lambda_scale_reaches_every_routed_layer():
    seen = []

    def spy(*args, lambda_scale=1.0, **kwargs):
        seen.append(lambda_scale)
        return naive_em_routing(*args, lambda_scale=lambda_scale, **kwargs)

    model = build_model("capsules-small", A=4, B=2, C=2, D=2, lambda_scale=10.0, routing=spy)
    model(torch.rand(1, 2, 32, 32))
    # ConvCaps1, ConvCaps2 at 10x; the class layer at 10x the official quarter
    assert seen == pytest.approx([10.0, 10.0, 2.5])


def test_conv_lambda_scale_reaches_the_convolutional_capsule_layers_only():
    seen = []

    def spy(*args, lambda_scale=1.0, **kwargs):
        seen.append(lambda_scale)
        return naive_em_routing(*args, lambda_scale=lambda_scale, **kwargs)

    model = build_model("capsules-small", A=4, B=2, C=2, D=2, lambda_scale=2.0, conv_lambda_scale=50.0, routing=spy)
    model(torch.rand(1, 2, 32, 32))
    assert seen == pytest.approx([100.0, 100.0, 0.5])


def test_official_beta_parametrisation_reproduces_the_official_logit():
    """logit = lambda (-5000 b_a - mass (sum_h log sigma_h^2 + 16 (log 2 pi + 1) b_u)) (official em_layers.py)."""
    import math

    from capsrobust.models.layers import routing_betas

    beta_u, beta_a = torch.tensor([0.5, 2.0]), torch.tensor([1.0, -0.3])
    direct_u, direct_a, factor = routing_betas(beta_u, beta_a, "official", final_lambda=1.0)
    lam, mass, log_sigma = 0.01, torch.tensor(3.0), torch.randn(2, 16)
    ours = factor * lam * (direct_a - mass * (direct_u.view(2, 1) + log_sigma).sum(-1))
    official = lam * (-5000 * beta_a - mass * ((2 * log_sigma).sum(-1) + 16 * (math.log(2 * math.pi) + 1) * beta_u))
    torch.testing.assert_close(ours, official)


def test_official_betas_start_at_the_official_values_and_keep_the_parameter_names():
    model = build_model("capsules-small", beta_parametrisation="official")
    assert torch.all(model.conv_caps1.beta_a == 0.5) and torch.all(model.conv_caps2.beta_u == 0.5)
    assert torch.all(model.class_caps.beta_a == 1.0) and torch.all(model.class_caps.beta_u == 2.0)
    assert {"class_caps.beta_a", "class_caps.beta_u"} <= set(model.state_dict())  # old checkpoints still load
    direct = build_model("capsules-small")
    assert torch.all(direct.class_caps.beta_a == 0.0)


@pytest.mark.parametrize("kind", ["official", "logit"])
def test_learnable_betas_move_the_class_logits_thousands_of_times_faster(kind):
    """A unit step of beta_a moves a class logit by lambda (direct), 5000 lambda (official) or 1 (logit)."""
    images = torch.rand(4, 2, 32, 32)
    grads = {}
    for parametrisation in ("direct", kind):
        torch.manual_seed(0)
        model = build_model("capsules-small", A=8, B=4, C=4, D=4, beta_parametrisation=parametrisation)
        model(images).sum().backward()
        grads[parametrisation] = model.class_caps.beta_a.grad.abs().mean().item()
    assert grads[kind] > 1000 * grads["direct"]


def test_unknown_beta_parametrisation_is_rejected():
    with pytest.raises(ValueError, match="beta_parametrisation"):
        build_model("capsules-small", beta_parametrisation="learned")


def test_capsule_layer_statistics_cover_every_capsule_layer_in_order():
    from capsrobust.evaluation.capsule_stats import capsule_layer_statistics

    torch.manual_seed(0)
    table = capsule_layer_statistics(build_model("capsules-small"), torch.rand(6, 2, 32, 32), batch_size=4)
    assert list(table["layer"]) == ["primary_caps", "conv_caps1", "conv_caps2", "class_caps"]
    assert list(table["capsules"]) == [14 * 14 * 8, 6 * 6 * 16, 4 * 4 * 16, 5]
    assert ((table["act_q05"] <= table["act_q50"]) & (table["act_q50"] <= table["act_q95"])).all()
    assert ((table["act_mean"] > 0) & (table["act_mean"] < 1) & (table["pose_std"] > 0)).all()


def test_capsule_layer_statistics_refuse_a_model_without_capsules():
    from capsrobust.evaluation.capsule_stats import capsule_layer_statistics

    with pytest.raises(ValueError, match="no capsule layers"):
        capsule_layer_statistics(build_model("cnn"), torch.rand(2, 2, 32, 32))


def test_a_first_forward_under_inference_mode_does_not_break_later_backward_passes():
    model = build_model("capsules-small", A=4, B=2, C=2, D=2)
    with torch.inference_mode():  # caches the ConvCaps patch index
        model(torch.rand(1, 2, 32, 32))
    images = torch.rand(1, 2, 32, 32, requires_grad=True)
    model(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0



def _final_logit_offset(beta_parametrisation: str, cost_normalisation: str) -> tuple[float, float]:
    """(F, the offset lambda_final * beta_a the routing of a ConvCaps layer (2 -> 2 types, 3x3 kernel) gets)."""
    from capsrobust.models.layers import ConvCaps, cost_factor
    from capsrobust.models.routing import inverse_temperatures

    seen = {}

    def spy(votes, activations, beta_u, beta_a, iterations, *, lambda_scale, schedule, **options):
        seen["offset"] = inverse_temperatures(schedule, iterations, lambda_scale)[-1] * float(beta_a[0])
        return naive_em_routing(votes, activations, beta_u, beta_a, iterations, lambda_scale=lambda_scale,
                                schedule=schedule, **options)

    layer = ConvCaps(2, 2, 3, 1, iterations=2, beta_parametrisation=beta_parametrisation,
                     cost_normalisation=cost_normalisation, routing=spy)
    with torch.no_grad():
        layer.beta_a.fill_(-0.5)
        layer(torch.rand(1, 4, 4, 2, 16), torch.rand(1, 4, 4, 2))
    return cost_factor(cost_normalisation, 2, 3 * 3 * 2), seen["offset"]


@pytest.mark.parametrize("betas", ["direct", "official"])
def test_ibm_cost_normalisation_scales_lambda_so_direct_and_official_offsets_grow_by_its_factor(betas):
    """cost_normalisation="ibm" multiplies lambda by F and nothing else: logit = F lambda (beta_a - cost)."""
    factor, scaled = _final_logit_offset(betas, "ibm")
    _, plain = _final_logit_offset(betas, "none")
    assert factor == pytest.approx(100 * 2 / 18)
    assert scaled == pytest.approx(factor * plain, rel=1e-6) and abs(scaled) > 10 * abs(plain)


def test_ibm_cost_normalisation_leaves_the_logit_betas_offset_at_the_parameter():
    _, scaled = _final_logit_offset("logit", "ibm")
    _, plain = _final_logit_offset("logit", "none")
    assert scaled == pytest.approx(-0.5, rel=1e-6) and plain == pytest.approx(-0.5, rel=1e-6)
