"""Training recipes: presets, the new capsule options (each a reparametrisation of Procedure 1),
margin schedules, and the learning probe that chose the defaults."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from capsrobust.errors import ConfigError
from capsrobust.training.losses import epoch_spread_margin, margin_at
from capsrobust.models import build_model, is_capsule_model
from capsrobust.models.layers import cost_factor, routing_betas
from capsrobust.models.routing import inverse_temperatures
from capsrobust.training.presets import PRESETS, resolve_preset
from capsrobust.training.loop import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from routing_reference import reference_em_routing  # noqa: E402


def oracle_routing(*args, num_children=None, **kwargs):
    """The float64 literal Procedure 1 with the fast routing's signature (it finds the children itself)."""
    return reference_em_routing(*args, **kwargs)

TINY = dict(A=4, B=2, C=2, D=2)
#: Every new option, alone and together.
OPTION_SETS = [
    dict(beta_parametrisation="logit"),
    dict(beta_parametrisation="logit", cost_normalisation="ibm"),
    dict(beta_parametrisation="official", cost_normalisation="ibm", iterations=2),
    dict(coordinates="centred", class_lambda_scale=4.0, iterations=1),
]


# ---------------------------------------------------------------------------------------------- presets


def test_the_default_preset_fills_capsule_options_and_explicit_options_win():
    config = resolve_preset(TrainConfig(model="capsules-small", model_overrides={"iterations": 3}))
    assert config.model_overrides == {**PRESETS["default"].capsule_options, "iterations": 3}
    assert config.margin_schedule == PRESETS["default"].kinds["capsule"].margin_schedule
    explicit = resolve_preset(TrainConfig(model="capsules-small", margin_schedule="run"))
    assert explicit.margin_schedule == "run"


def test_resolving_a_preset_twice_changes_nothing():
    once = resolve_preset(TrainConfig(model="capsules", preset="paper"))
    assert resolve_preset(once) == once


def test_presets_differ_and_the_cnn_gets_no_capsule_options():
    paper = resolve_preset(TrainConfig(model="capsules-small", preset="paper"))
    default = resolve_preset(TrainConfig(model="capsules-small"))
    assert paper.model_overrides != default.model_overrides
    assert paper.model_overrides["iterations"] == 3 and paper.margin_schedule == "epoch"
    cnn = resolve_preset(TrainConfig(model="cnn", preset="paper"))
    assert cnn.model_overrides == {} and cnn.margin_schedule == "run"


def test_learning_rate_decay_comes_from_the_preset_per_kind_of_model_and_an_explicit_one_wins():
    default = PRESETS["default"]
    assert resolve_preset(TrainConfig(model="capsules-small")).lr_decay == default.kinds["capsule"].lr_decay == 0.8
    assert resolve_preset(TrainConfig(model="cnn")).lr_decay == default.kinds["cnn"].lr_decay == 0.96
    assert resolve_preset(TrainConfig(model="capsules", preset="paper")).lr_decay == 0.96
    assert resolve_preset(TrainConfig(model="capsules-small", lr_decay=0.5)).lr_decay == 0.5
    with pytest.raises(ConfigError, match="--lr-decay must be in"):
        TrainConfig(lr_decay=1.5).validate()


def test_shape_jitter_comes_from_the_preset_per_kind_of_model_and_an_explicit_one_wins():
    default = PRESETS["default"]
    assert resolve_preset(TrainConfig(model="capsules-small")).shape_jitter == default.kinds["capsule"].shape_jitter
    assert resolve_preset(TrainConfig(model="cnn")).shape_jitter == default.kinds["cnn"].shape_jitter
    assert resolve_preset(TrainConfig(model="capsules", preset="paper")).shape_jitter == 0.0  # the paper's augmentation
    assert resolve_preset(TrainConfig(model="cnn", shape_jitter=0.3)).shape_jitter == 0.3
    assert resolve_preset(TrainConfig(model="capsules-small", shape_jitter=0.0)).shape_jitter == 0.0


def test_an_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown --preset 'fast'"):
        resolve_preset(TrainConfig(preset="fast"))


def test_every_preset_has_a_recipe_for_every_kind_of_model_and_the_cnn_no_routing_options():
    from capsrobust.training.presets import KINDS

    for preset in PRESETS.values():
        assert set(preset.kinds) == set(KINDS)
        assert preset.kinds["cnn"].routing.overrides() == {}
        assert preset.for_model("capsules") is preset.kinds["capsule"] and preset.for_model("cnn") is preset.kinds["cnn"]


@pytest.mark.parametrize(("config", "message"), [
    (dict(model="cnn", model_overrides={"iterations": 2}), "--iterations applies to capsule models only"),
    (dict(model="cnn", model_overrides={"schedule": "normalized"}), "--routing-schedule applies to capsule models"),
    (dict(model="cnn", margin_schedule="held"), "--margin-schedule applies to the capsule nets"),
    (dict(model_overrides={"iterations": 0}), "--iterations must be at least 1"),
    (dict(model_overrides={"class_lambda_scale": -1.0}), "--class-lambda-scale must be positive"),
    (dict(model_overrides={"coordinates": "polar"}), "unknown --coordinates 'polar'"),
])
def test_every_option_is_checked_by_the_config_itself(config, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**config).validate()
    with pytest.raises(ConfigError, match=message):  # the one resolver checks first
        resolve_preset(TrainConfig(**config))


def test_routing_options_record_only_what_was_chosen_and_default_to_the_model_class():
    from capsrobust.models import MatrixCapsNet
    from capsrobust.training.presets import RoutingOptions

    chosen = RoutingOptions(iterations=2, lambda_scale=4.0)
    assert chosen.overrides() == {"iterations": 2, "lambda_scale": 4.0}
    assert RoutingOptions.from_overrides({"iterations": 2, "lambda_scale": 4.0, "A": 8}) == chosen
    assert RoutingOptions.defaults().iterations == 3 and RoutingOptions.defaults().coordinates == "unit"
    model = build_model("capsules-small", **TINY, **chosen.overrides())
    assert isinstance(model, MatrixCapsNet) and model.class_caps.iterations == 2


def test_model_kinds_come_from_the_model_class():
    assert is_capsule_model("capsules") and is_capsule_model("capsules-small")
    assert not is_capsule_model("cnn") and not is_capsule_model("resnet")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_a_finite_capsule_net(preset):
    config = resolve_preset(TrainConfig(model="capsules-small", preset=preset))
    torch.manual_seed(0)
    model = build_model("capsules-small", **config.model_overrides)
    images = torch.rand(2, 2, 32, 32, requires_grad=True)
    scores = model(images)
    scores.sum().backward()
    assert torch.isfinite(scores).all() and torch.isfinite(images.grad).all()


# ---------------------------------------------------------------------------------------------- options


def test_logit_betas_make_the_parameter_the_final_logit_offset():
    """beta_a (logit units) / lambda_final, times lambda_final in routing, is beta_a again."""
    beta_u, beta_a = torch.tensor([0.3]), torch.tensor([-1.5])
    final = inverse_temperatures("official", 2, 0.25)[-1]
    direct_u, direct_a, factor = routing_betas(beta_u, beta_a, "logit", final)
    assert factor == 1.0 and torch.equal(direct_u, beta_u)
    torch.testing.assert_close(final * direct_a, beta_a)


def test_ibm_cost_normalisation_scales_each_layer_by_100_parents_over_children():
    seen = []

    def spy(*args, lambda_scale=1.0, **kwargs):
        seen.append(lambda_scale)
        return oracle_routing(*args, lambda_scale=lambda_scale, **kwargs)

    model = build_model("capsules-small", **TINY, cost_normalisation="ibm", routing=spy)
    model(torch.rand(1, 2, 32, 32))
    # ConvCaps1: 3x3x2 children, 2 parents; ConvCaps2: 3x3x2, 2; class: 4x4x2 children, 5 classes (no 1/4)
    assert seen == pytest.approx([100 * 2 / 18, 100 * 2 / 18, 100 * 5 / 32])
    assert cost_factor("none", 5, 32) == 1.0
    with pytest.raises(ValueError, match="cost_normalisation"):
        cost_factor("layer", 5, 32)


def test_class_lambda_scale_reaches_the_class_layer_only():
    seen = []

    def spy(*args, lambda_scale=1.0, **kwargs):
        seen.append(lambda_scale)
        return oracle_routing(*args, lambda_scale=lambda_scale, **kwargs)

    build_model("capsules-small", **TINY, class_lambda_scale=8.0, routing=spy)(torch.rand(1, 2, 32, 32))
    assert seen == pytest.approx([1.0, 1.0, 8.0 * 0.25])


def test_centred_coordinates_average_to_zero_over_the_grid():
    unit = build_model("capsules-small", **TINY).class_caps.centres
    centred = build_model("capsules-small", **TINY, coordinates="centred").class_caps.centres
    torch.testing.assert_close(centred, unit - unit.reshape(-1, 2).mean(0))
    assert centred.reshape(-1, 2).mean(0).abs().max() < 1e-6
    with pytest.raises(ValueError, match="coordinates"):
        build_model("capsules-small", coordinates="polar")


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_routes_as_the_literal_procedure_1(options):
    """The whole net with the fast (fused C) routing equals the net routed by the float64 oracle."""
    torch.manual_seed(0)
    fast = build_model("capsules-small", **TINY, **options)
    with torch.no_grad():  # make the betas non-trivial, so every reparametrisation matters
        for name, param in fast.named_parameters():
            if "beta" in name:
                param.copy_(0.3 * torch.randn_like(param))
    oracle = build_model("capsules-small", **TINY, **options, routing=oracle_routing)
    oracle.load_state_dict(fast.state_dict())
    images = torch.rand(2, 2, 32, 32)
    got_acts, got_poses = fast.forward_with_poses(images)
    want_acts, want_poses = oracle.double().forward_with_poses(images.double())
    torch.testing.assert_close(got_acts.double(), want_acts, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(got_poses.double(), want_poses, atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------------------------------------- margins


def test_held_margin_stays_at_0_2():
    assert {margin_at("held", step, 1000) for step in (0, 500, 999)} == {0.2}


def test_epoch_margin_grows_by_0_1_per_epoch_up_to_0_9():
    assert epoch_spread_margin(0, 100) == pytest.approx(0.2)
    assert epoch_spread_margin(99, 100) == pytest.approx(0.2)
    assert epoch_spread_margin(100, 100) == pytest.approx(0.3)
    assert epoch_spread_margin(10_000, 100) == pytest.approx(0.9)
    assert margin_at("epoch", 250, 1000, steps_per_epoch=100) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        margin_at("epoch", 0, 10)


# ---------------------------------------------------------------------------------------------- the probe


def test_variants_parse_into_training_keys_and_model_options():
    from capsrobust.experiments.learning_probe import parse_variant

    variant = parse_variant("capsules-small@paper:iterations=2,lr=0.001,coordinates=centred")
    config = variant.train_config()
    assert variant.preset == "paper" and config.lr == 0.001
    assert config.model_overrides["iterations"] == 2 and config.model_overrides["coordinates"] == "centred"
    assert config.margin_schedule == "epoch"


@pytest.mark.parametrize("spec, message", [
    ("resnet", "unknown model"), ("capsules@fast", "unknown preset"), ("capsules:iterations", "not key=value"),
    ("capsules:colour=red", "colour"), ("capsules:beta_parametrisation=x", "beta_parametrisation"),
])
def test_bad_variants_are_one_config_error_naming_the_variant(spec, message):
    from capsrobust.experiments.learning_probe import parse_variant

    with pytest.raises(ConfigError, match=message) as info:
        parse_variant(spec)
    assert spec in str(info.value)


def test_steps_to_accuracy_is_the_first_check_at_the_target():
    from capsrobust.experiments.learning_probe import steps_to_accuracy

    curve = pd.DataFrame({"step": [0, 25, 50, 75], "train_accuracy": [0.2, 0.96, 0.9, 0.99]})
    assert steps_to_accuracy(curve) == 25
    assert math.isnan(steps_to_accuracy(curve.assign(train_accuracy=0.5)))


def test_score_spread_uses_activations_raw_and_logits_as_probabilities():
    from capsrobust.experiments.learning_probe import score_spread

    acts = torch.tensor([[0.1, 0.5, 0.3]])
    assert score_spread(acts, "activation").item() == pytest.approx(0.4)
    logits = torch.tensor([[0.0, 0.0, 0.0]])
    assert score_spread(logits, "logits").item() == pytest.approx(0.0)


def test_centred_coordinates_move_the_class_poses_but_not_the_activations():
    """Centring shifts every vote of a class capsule by one constant; EM routing is shift-equivariant."""
    torch.manual_seed(0)
    unit = build_model("capsules-small", **TINY)
    centred = build_model("capsules-small", **TINY, coordinates="centred")
    centred.load_state_dict(unit.state_dict())
    images = torch.rand(3, 2, 32, 32)
    acts_u, poses_u = unit.forward_with_poses(images)
    acts_c, poses_c = centred.forward_with_poses(images)
    torch.testing.assert_close(acts_c, acts_u, atol=1e-5, rtol=1e-4)
    shift = (unit.class_caps.centres - centred.class_caps.centres).reshape(-1, 2)[0]
    torch.testing.assert_close(poses_u[..., 3] - poses_c[..., 3], shift[0].expand(3, 5), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_dataset

    return write_dataset(tmp_path_factory.mktemp("probe") / "data", size=16)


TINY_CAPS = "capsules-small:A=4,B=2,C=2,D=2"


def test_bench_learning_subset_mode_writes_its_tables_and_plot(tiny_data: Path, tmp_path: Path):
    import json

    from click.testing import CliRunner

    from capsrobust_cli.main import cli

    out = tmp_path / "probe"
    result = CliRunner().invoke(cli, ["bench", "learning", TINY_CAPS, "cnn", "--data-dir", str(tiny_data), "--n", "8",
                                      "--steps", "4", "--check-every", "2", "--no-progress", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [row["variant"] for row in report["summary"]] == [TINY_CAPS, "cnn"]
    assert sorted({row["step"] for row in report["curves"]}) == [0, 2, 4]
    assert all(0 <= row["train_accuracy"] <= 1 for row in report["curves"])
    assert {"learning.md", "curves.csv", "summary.csv", "learning.json", "learning.png", "provenance.json"} <= {
        p.name for p in out.iterdir()}
    assert json.loads((out / "provenance.json").read_text())["dataset"] == "smallNORB"


def test_bench_learning_full_mode_reuses_finished_runs_and_refuses_foreign_ones(tiny_data: Path, tmp_path: Path):
    import json

    from capsrobust.data.prepared import prepare_data
    from capsrobust.experiments.learning_probe import parse_variant, probe_full

    data = prepare_data(tiny_data)
    runs = tmp_path / "runs"
    options = dict(steps=2, eval_every=1, max_eval_examples=4, batch_size=2, progress=False, log=lambda _: None)
    curves, summary = probe_full([parse_variant(TINY_CAPS)], data, runs, **options)
    assert list(curves["step"]) == [1, 2] and curves["validation_error"].between(0, 1).all()
    assert (curves["seconds"] > 0).all() and summary.loc[0, "variant"] == TINY_CAPS
    metrics = next(runs.iterdir()) / "metrics.jsonl"
    before = metrics.read_text()
    again, _ = probe_full([parse_variant(TINY_CAPS)], data, runs, **options)  # finished: reused, not retrained
    assert metrics.read_text() == before and again.equals(curves)
    (runs / "cnn-seed0").mkdir()
    saved = {"model": "cnn", "model_overrides": {}, "margin_schedule": "run", "lr": 0.003, "batch_size": 2, "seed": 0}
    (runs / "cnn-seed0" / "run.json").write_text(json.dumps({"config": saved}))
    with pytest.raises(ConfigError, match="holds a run trained with lr=0.003, not 0.001"):
        probe_full([parse_variant("cnn")], data, runs, **options)
