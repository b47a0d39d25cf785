"""`capsrobust study`: end to end on a tiny budget and tiny data, its resume, its bad inputs, its stage
store, budgets keyed by kind of model, and the answers decided in experiments and rendered by reporting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from capsrobust.errors import ConfigError
from capsrobust.experiments import study
from capsrobust.experiments.budgets import ModelBudget
from capsrobust.experiments.study import StageStore, StudyBudget, load_stage, run_study, stage_names
from capsrobust.experiments.study import stages as study_stages
from capsrobust.experiments.viewpoint import ViewpointBudget
from capsrobust.paths import CACHE_ENV
from capsrobust.reporting.study import HEADLINE_END, HEADLINE_START
from capsrobust_cli.main import cli
from tests.conftest import write_dataset
from tests.test_cli_data import assert_one_line_error

# Info azimuths 0, 2 (familiar) and 10, 18 (novel); elevation indices 0 (familiar) and 4 (novel).
TINY_VIEWS = {"azimuths": (0, 2, 10, 18), "elevations": (0, 4)}
#: Seconds, not minutes: a few steps of each model, two eps values, the cheap attacks.
TINY_MODELS = {"capsule": ModelBudget(steps=4, overrides={"iterations": 1}), "cnn": ModelBudget(steps=4)}
TINY = StudyBudget(
    "tiny", smoke=True, seeds=1, models=TINY_MODELS, batch_size=8, eval_every=2, matched_cnn_steps=4,
    matched_eval_every=2, attacks=("fgsm", "bim", "transfer", "vote"), targeted_attacks=("fgsm",), attack_steps=2,
    attack_images=16, targeted_images=8, eps=(0.0, 0.05),
    viewpoint=ViewpointBudget("tiny", models=TINY_MODELS, batch_size=8, eval_every=2),
)
QUIET = {"progress": False, "log": lambda _: None}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("study") / "data", size=16, **TINY_VIEWS)


@pytest.fixture(scope="module")
def first_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> tuple[Path, str]:
    """`capsrobust study` on the tiny data with the tiny budget standing in for quick: (OUT, output)."""
    out = tmp_path_factory.mktemp("study-out") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("study-cache")))
        patch.setitem(study.STUDY_BUDGETS, "quick", TINY)
        result = CliRunner().invoke(cli, ["study", "--data-dir", str(data_dir), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out, result.output


def _stamps(out: Path) -> dict[str, int]:
    """Modification times of every stage record and training checkpoint under ``out``."""
    files = [*out.glob("stages/*/done.json"), *out.glob("runs/*/last.pt"), *out.glob("viewpoint/*/runs/*/last.pt")]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


# ----------------------------------------------------------------------------------------------
# End to end


def test_report_states_the_three_answers_first(first_run: tuple[Path, str]) -> None:
    out, output = first_run
    lines = [line for line in (out / "REPORT.md").read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# Are matrix capsules more robust than a matched CNN? — smallNORB (stereo)")
    assert lines[1].startswith("> **Smoke run (--budget quick)") and "not for conclusions" in lines[1]
    assert lines[2].startswith("- **Adversarial attacks**")
    assert lines[3].startswith("- **Novel azimuths**") and lines[4].startswith("- **Novel elevations**")
    for line in lines[3:5]:  # the direction with its interval, or the smallest detectable difference; the pairs
        assert ("generalises better**" in line
                or "**no difference detectable; the smallest detectable difference is" in line), line
        assert "mean over 1 seed; 95 % interval from a bootstrap over the test toys" in line
        assert "Matched familiar (validation) errors: seed 0" in line and "gap" in line and "target set by" in line
        assert "Every pair within 1 point" in line or "Not supported as it stands" in line
    # The attack answer: the measure, its eps range, estimates with 95 % intervals, the verdict, the support.
    attack = lines[2]
    assert "robust accuracy" in attack and "averaged over eps 0-0.05" in attack and "95 % intervals" in attack
    assert "more robust**" in attack or "**no difference detectable; the smallest detectable difference is" in attack
    assert attack.count(" %[") == 0 and attack.count(" % [") >= 2 and "Median minimal adversarial eps" in attack
    assert "Sanity checks: **HOLDS**" in attack or "Not supported as it stands" in attack
    assert "SMOKE RUN" in output and "- **Adversarial attacks**" in output


def test_report_has_every_table_the_paper_apart_and_provenance(first_run: tuple[Path, str]) -> None:
    out, _ = first_run
    report = (out / "REPORT.md").read_text()
    for heading in ("## Clean test error (full split)", "## Adversarial attacks", "### Sanity checks, untargeted",
                    "### Targeted success", "## Novel viewpoints (paper Table 2)", "### Azimuth split",
                    "### Elevation split", "## Provenance"):
        assert heading in report, heading
    # The paper's numbers only under headings that say smallNORB and "not this dataset", with the source.
    assert report.count("Paper (smallNORB)") == 4 and report.count("reference only, not this dataset") == 4
    assert "Source: Hinton, Sabour & Frosst" in report
    for figure in ("figures/untargeted-seed0.png", "figures/targeted-seed0.png", "figures/viewpoint-azimuth.png",
                   "figures/viewpoint-elevation.png", "figures/viewpoint-azimuth-curve.png",
                   "figures/viewpoint-elevation-curve.png"):
        assert f"]({figure})" in report and (out / figure).read_bytes()[:4] == b"\x89PNG"
    record = json.loads((out / "provenance.json").read_text())
    assert record["experiment"] == "study" and record["seeds"] == [0] and len(record["dataset_checksum"]) == 64
    assert record["budget"]["name"] == "tiny" and "study --data-dir" in record["command"]
    assert record["checkpoints"] and all(len(c["sha256"]) == 64 for c in record["checkpoints"])
    assert [a["question"] for a in record["answers"]] == ["Adversarial attacks", "Novel azimuths", "Novel elevations"]


def test_html_report_is_self_contained(first_run: tuple[Path, str]) -> None:
    out, _ = first_run
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count('src="data:image/png;base64,') == (out / "REPORT.md").read_text().count("](figures/") >= 6
    assert "src=\"http" not in page and "href=" not in page  # nothing to fetch
    assert '<p class="banner">Smoke run' in page and "<strong>Adversarial attacks</strong>" in page
    assert "<table>" in page and "Paper (smallNORB)" in page


def test_every_stage_left_its_record_and_the_matched_pair(first_run: tuple[Path, str]) -> None:
    out, _ = first_run
    for stage in stage_names([0]):
        assert load_stage(out, stage) is not None, stage
    pair = load_stage(out, "match-seed0")
    assert pair["target"] == load_stage(out, "train-seed0")["models"]["capsules-small"]["validation_error"]
    if pair["matched"]:  # the CNN's checkpoint is its first evaluation at or below the capsule net's error
        assert pair["cnn"]["checkpoint"].endswith("cnn-matched-seed0/matched.pt")
        assert pair["cnn"]["validation_error"] <= pair["target"]
    assert (out / "stages" / "attack-untargeted-seed0" / "sweep.csv").is_file()


def test_attack_stage_keeps_the_worst_case_per_image_and_the_report_its_intervals(first_run: tuple[Path, str]) -> None:
    import pandas as pd

    out, _ = first_run
    stage = out / "stages" / "attack-untargeted-seed0"
    per_image, sweep = pd.read_csv(stage / "per_image.csv"), pd.read_csv(stage / "sweep.csv")
    assert "per_image.csv" in load_stage(out, "attack-untargeted-seed0")["files"]
    assert not (out / "stages" / "attack-targeted-seed0" / "per_image.csv").exists()
    assert len(per_image) == 2 * len(TINY.eps) * TINY.attack_images  # both models, every eps, every image
    worst = sweep[sweep.attack == "worst-case"].set_index(["model", "eps"]).adversarial_error
    assert per_image.groupby(["model", "eps"]).broken.mean().to_dict() == pytest.approx(worst.to_dict())
    report = (out / "REPORT.md").read_text()
    assert "### Robust accuracy on the same images" in report and "| all    | 0.05 |" in report
    assert "median minimal adversarial eps" in report and "Bracketed by the eps grid" in report
    # Every sanity check is in the report with its figures, warnings included, not only the failures.
    checks = pd.read_csv(stage / "checks.csv")
    for detail in checks[checks.check != "verdict"].detail:
        assert str(detail).replace("|", "\\|") in report or str(detail) in report, detail


# ----------------------------------------------------------------------------------------------
# Resume


def test_rerun_with_reuse_redoes_no_stage(first_run: tuple[Path, str], data_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = first_run
    before = _stamps(out)
    assert len(before) == len(stage_names([0])) + 3 + 4  # records; full-split and matched runs; viewpoint runs
    monkeypatch.setitem(study.STUDY_BUDGETS, "quick", TINY)
    result = CliRunner().invoke(cli, ["study", "--data-dir", str(data_dir), "--out", str(out), "--no-progress",
                                      "--reuse"])
    assert result.exit_code == 0, result.output
    assert _stamps(out) == before
    assert result.output.count("done earlier") == len(stage_names([0]))


def test_killed_after_a_stage_and_rerun_it_continues_where_it_stopped(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None
) -> None:
    budget = StudyBudget(**{**TINY.__dict__, "targeted_attacks": ()})
    real_attack = study_stages.stage_attack

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if the process were stopped during the first attack stage

    monkeypatch.setattr(study_stages, "stage_attack", killed)
    with pytest.raises(KeyboardInterrupt):
        run_study(tmp_path, budget=budget, data_dir=data_dir, **QUIET)
    finished = _stamps(tmp_path)
    assert sorted(p for p in finished if p.startswith("stages")) == ["stages/match-seed0/done.json",
                                                                    "stages/train-seed0/done.json"]
    assert load_stage(tmp_path, "attack-untargeted-seed0") is None

    monkeypatch.setattr(study_stages, "stage_attack", real_attack)
    result = run_study(tmp_path, budget=budget, data_dir=data_dir, reuse=True, **QUIET)
    after = _stamps(tmp_path)
    assert {p: after[p] for p in finished} == finished  # neither the stages nor the trainings were redone
    assert set(result.stages) == set(stage_names([0]))


def test_cli_interrupted_says_how_to_continue(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              one_torch_thread: None) -> None:
    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(study.STUDY_BUDGETS, "quick", TINY)
    monkeypatch.setattr(study_stages, "stage_attack", killed)
    result = CliRunner().invoke(cli, ["study", "--data-dir", str(data_dir), "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 130 and "study interrupted" in result.output and "--reuse" in result.output
    assert "Traceback" not in result.output
    assert load_stage(tmp_path, "match-seed0") is not None


def test_train_runs_are_taken_read_only_instead_of_trained(first_run: tuple[Path, str], data_dir: Path,
                                                          tmp_path: Path) -> None:
    source = first_run[0] / "runs"
    before = {str(p): p.stat().st_mtime_ns for p in source.rglob("*") if p.is_file()}
    result = run_study(tmp_path, budget=TINY, data_dir=data_dir, train_runs=source, **QUIET)
    models = result.stages["train-seed0"]["models"]
    assert {m: e["run"] for m, e in models.items()} == {m: str(source / f"{m}-seed0") for m in ("capsules-small", "cnn")}
    assert all(e["action"].startswith("taken from") for e in models.values())
    assert not (tmp_path / "runs" / "cnn-seed0").exists() and (tmp_path / "runs" / "cnn-matched-seed0").is_dir()
    assert {str(p): p.stat().st_mtime_ns for p in source.rglob("*") if p.is_file()} == before  # nothing written there


# ----------------------------------------------------------------------------------------------
# Bad inputs: one line, exit 2, nothing lost


def test_rerun_without_reuse_is_refused_and_loses_nothing(first_run: tuple[Path, str], data_dir: Path) -> None:
    out, _ = first_run
    before = _stamps(out)
    result = CliRunner().invoke(cli, ["study", "--data-dir", str(data_dir), "--out", str(out), "--no-progress"])
    assert_one_line_error(result, "already holds a study", "--reuse")
    assert _stamps(out) == before


def test_reuse_with_other_settings_is_refused(first_run: tuple[Path, str], data_dir: Path) -> None:
    out, _ = first_run
    result = CliRunner().invoke(cli, ["study", "--data-dir", str(data_dir), "--out", str(out), "--reuse",
                                      "--budget", "full", "--no-progress"])
    assert_one_line_error(result, "other budget", "same options")


def test_readme_gets_the_answers_between_its_markers_and_nothing_else(first_run: tuple[Path, str], data_dir: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = first_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{HEADLINE_START}\nstale headline\n{HEADLINE_END}\nafter\n")
    monkeypatch.setitem(study.STUDY_BUDGETS, "quick", TINY)
    args = ["study", "--data-dir", str(data_dir), "--out", str(out), "--no-progress", "--reuse", "--readme", str(readme)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n" + HEADLINE_START) and text.endswith(HEADLINE_END + "\nafter\n")
    assert "stale headline" not in text
    answers = json.loads((out / "provenance.json").read_text())["answers"]
    assert len(answers) == 3 and all(f"- {a['line']}" in text for a in answers)
    assert "smoke run" in text and f"{out.as_posix()}/REPORT.md" in text
    assert CliRunner().invoke(cli, args).exit_code == 0 and readme.read_text() == text  # idempotent


def test_readme_without_markers_is_refused_before_any_work(data_dir: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["study", "--data-dir", str(data_dir), "--out", str(out), "--readme", str(readme)])
    assert_one_line_error(result, "study-headline", "markers")
    assert not out.exists() and readme.read_text() == "# no markers here\n"


@pytest.mark.parametrize(("args", "fragments"), [
    (["--budget", "huge"], ("unknown budget 'huge'", "quick, full")),
    (["--seeds", "0"], ("--seeds must be at least 1",)),
    (["--mode", "colour"], ("unknown input mode 'colour'",)),
    (["--data-dir", "/nonexistent/norb"], ("/nonexistent/norb",)),
    (["--train-runs", "/nonexistent/runs"], ("--train-runs", "no such directory")),
])
def test_bad_option_is_one_line_and_writes_nothing(args: list[str], fragments: tuple[str, ...],
                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_line_error(CliRunner().invoke(cli, ["study", "--out", str(out), *args]), *fragments)
    assert not out.exists()


def test_foreign_or_unfinished_training_runs_are_refused(data_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "capsules-small-seed0").mkdir(parents=True)
    (runs / "capsules-small-seed0" / "last.pt").write_bytes(b"not a checkpoint")
    args = ["study", "--data-dir", str(data_dir), "--out", str(tmp_path / "out"), "--train-runs", str(runs)]
    assert_one_line_error(CliRunner().invoke(cli, args), "capsules-small-seed0/last.pt", "not a loadable checkpoint")
    assert not (tmp_path / "out").exists()


def test_train_runs_of_another_recipe_are_refused_naming_the_option(data_dir: Path, tmp_path: Path) -> None:
    import dataclasses

    from capsrobust.training.checkpoints import save_checkpoint

    wanted = study.STUDY_BUDGETS["quick"].train_config("capsules-small", data_dir=None, mode="stereo", seed=0)
    other = {**dataclasses.asdict(wanted), "lr": 0.01}  # a finished run of today's recipe but for its learning rate
    save_checkpoint(tmp_path / "runs" / "capsules-small-seed0" / "last.pt",
                    {"model": "capsules-small", "config": other, "step": 4, "total_steps": 4})
    args = ["study", "--data-dir", str(data_dir), "--out", str(tmp_path / "out"), "--train-runs", str(tmp_path / "runs")]
    assert_one_line_error(CliRunner().invoke(cli, args), "capsules-small-seed0/last.pt",
                          f"trained with lr=0.01, not {wanted.lr}", "--train-runs")
    assert not (tmp_path / "out").exists()


def test_help_teaches_with_examples() -> None:
    result = CliRunner().invoke(cli, ["study", "--help"])
    assert result.exit_code == 0
    assert "capsrobust study --budget quick" in result.output and "--train-runs" in result.output


# ----------------------------------------------------------------------------------------------
# Budgets keyed by kind of model, and the stage store


def test_budgets_are_valid_and_quick_is_a_smoke_run() -> None:
    for budget in study.STUDY_BUDGETS.values():
        budget.validate()
        # Every sanity check can run: a doubled pgd (convergence), noise, and eps 1 (the unbounded ball).
        assert "noise" in {a.split(":")[0] for a in budget.attacks} and 1.0 in budget.eps
        assert any(a.startswith("pgd:") for a in budget.attacks) and "pgd" in budget.attacks
    assert study.STUDY_BUDGETS["quick"].smoke and not study.STUDY_BUDGETS["full"].smoke
    # The paper's standardised 0.1-0.5 is pixel ~0.0125-0.064 on images of std ~0.127.
    assert {0.0125, 0.025, 0.0375, 0.05, 0.0625} <= set(study.STUDY_BUDGETS["full"].eps)
    with pytest.raises(ConfigError, match="unknown attack"):
        StudyBudget("bad", smoke=True, seeds=1, attacks=("fgsm", "nope")).validate()
    with pytest.raises(ConfigError, match="cannot run targeted"):
        StudyBudget("bad", smoke=True, seeds=1, targeted_attacks=("apgd",)).validate()


def test_budgets_hold_one_training_per_kind_of_model_and_give_each_model_its_own() -> None:
    full = study.STUDY_BUDGETS["full"]
    assert (full.model("capsules-small").epochs, full.model("cnn").epochs) == (30, 20)
    assert full.model("capsules").epochs == 30  # told by the model's kind, not its name
    caps = TINY.train_config("capsules-small", data_dir=None, mode="stereo", seed=0)
    cnn = TINY.train_config("cnn", data_dir=None, mode="stereo", seed=0)
    assert (caps.steps, cnn.steps) == (4, 4)
    assert caps.model_overrides["iterations"] == 1 and cnn.model_overrides == {}
    with pytest.raises(ConfigError, match="capsule, cnn"):
        StudyBudget("bad", smoke=True, seeds=1, models={"capsules-small": ModelBudget(steps=4)})
    with pytest.raises(ConfigError, match="capsule, cnn"):
        ViewpointBudget("bad", models={"capsule": ModelBudget()})


def test_stage_store_owns_each_stage_directory_and_its_record(tmp_path: Path) -> None:
    import pandas as pd

    store = StageStore(tmp_path)
    assert store.load("train-seed0") is None
    store.write_table("train-seed0", "table.csv", pd.DataFrame({"a": [1, 2]}))
    record = store.finish("train-seed0", {"seed": 0}, time.perf_counter())
    assert store.path("train-seed0", "done.json") == tmp_path / "stages" / "train-seed0" / "done.json"
    assert load_stage(tmp_path, "train-seed0") == record and record["stage"] == "train-seed0" and record["seed"] == 0
    assert store.read_table("train-seed0", "table.csv")["a"].tolist() == [1, 2]
    store.path("match-seed0", "done.json").parent.mkdir(parents=True)
    store.path("match-seed0", "done.json").write_text("{torn")  # hand-edited: the stage is redone
    assert store.load("match-seed0") is None
    assert not list((tmp_path / "stages" / "train-seed0").glob("*.tmp"))  # atomic writes leave no temporaries


# ----------------------------------------------------------------------------------------------
# The viewpoint stages: kept checkpoints of both models, two-way matching, the answer


def test_viewpoint_stage_keeps_every_checkpoint_of_both_models_and_matches_both_ways(
        first_run: tuple[Path, str]) -> None:
    out, _ = first_run
    result = study.load_viewpoint_result(out, "azimuth")
    assert result is not None and result.lightings == {"match": [0], "report": [3]}
    # 4 steps, evaluated every 2: two kept checkpoints per run, for the CNN as for the capsule net, all scored.
    kept = result.trajectory.groupby("model")["step"].apply(list).to_dict()
    assert kept == {"capsules-small": [2, 4], "cnn": [2, 4]}
    assert all((out / "viewpoint" / "azimuth" / path).is_file() for path in result.trajectory["checkpoint"])
    for (protocol, seed), pair in result.per_seed.groupby(["protocol", "seed"]):
        assert sorted(pair["role"]) == ["matched", "target"], protocol
        weaker, stronger = pair[pair["role"] == "target"].iloc[0], pair[pair["role"] == "matched"].iloc[0]
        assert weaker["smoothed_best"] >= stronger["smoothed_best"]  # the weaker model sets the target
        assert weaker["matching_target"] == pytest.approx(weaker["smoothed_best"])
        assert bool(weaker["matched"]) == (abs(stronger["matching_error"] - weaker["matching_error"]) <= 0.01 + 1e-12)
    matched = result.differences[result.differences["comparison"] == "matched"]
    assert sorted(matched["protocol"]) == sorted(result.per_seed["protocol"].unique())
    assert (matched["ci_low"] <= matched["difference"] + 1e-12).all()
    assert (matched["difference"] <= matched["ci_high"] + 1e-12).all()
    answer = next(a for a in json.loads((out / "provenance.json").read_text())["answers"]
                  if a["question"] == "Novel azimuths")
    validation = matched[matched["protocol"] == "validation"].iloc[0]
    assert answer["better"] == validation["better"]
    assert f"[{100 * validation['ci_low']:+.1f}, {100 * validation['ci_high']:+.1f}]" in answer["line"]


def _viewpoint_line(first_run: tuple[Path, str], **changes: object) -> tuple[str, bool]:
    """The azimuth answer of the first run with the validation pair's verdict or matching changed: decided by
    experiments (``viewpoint_answer``), rendered by reporting."""
    from capsrobust.experiments.viewpoint_answer import viewpoint_answer
    from capsrobust.reporting.study import _viewpoint_line as render

    out, _ = first_run
    result = study.load_viewpoint_result(out, "azimuth")
    validation = result.differences["protocol"] == "validation"
    for column in ("better", "difference", "ci_low", "ci_high", "detectable"):
        if column in changes:
            result.differences.loc[validation, column] = changes[column]
    if "gap" in changes:
        rows = result.per_seed["protocol"] == "validation"
        caps = rows & (result.per_seed["model"] == "capsules-small")
        result.per_seed.loc[caps, "matching_error"] = result.per_seed.loc[rows & ~caps, "matching_error"].iloc[0] \
            + changes["gap"]
        result.per_seed.loc[rows, "matched"] = abs(changes["gap"]) <= 0.01
    answer = viewpoint_answer(result, "azimuth")
    if "better" in changes:
        assert answer.better == changes["better"]
    shown = render(answer, "capsules-small")
    assert (shown.better, shown.supported) == (answer.better, answer.supported)
    return shown.line, shown.supported


def test_viewpoint_answer_gives_the_direction_with_its_interval_or_the_detectable_difference(
        first_run: tuple[Path, str]) -> None:
    line, _ = _viewpoint_line(first_run, better="cnn", difference=0.031, ci_low=0.012, ci_high=0.050)
    assert "**the CNN generalises better**" in line and "difference +3.1 points [+1.2, +5.0]" in line
    line, _ = _viewpoint_line(first_run, better="neither", difference=0.01, ci_low=-0.02, ci_high=0.04,
                              detectable=0.042)
    assert "**no difference detectable; the smallest detectable difference is 4.2 points**" in line


def test_viewpoint_answer_reports_a_pair_more_than_one_point_apart(first_run: tuple[Path, str]) -> None:
    line, supported = _viewpoint_line(first_run, gap=0.03)
    assert not supported and "gap +3.0 points" in line
    assert "**Not supported as it stands:** 1/1 pair(s) more than 1 point apart in familiar error (seed 0)" in line
    line, supported = _viewpoint_line(first_run, gap=-0.005)
    assert supported and "gap -0.5 points" in line and "Every pair within 1 point." in line


def test_a_viewpoint_stage_of_the_one_way_protocol_is_refused_in_one_line(tmp_path: Path) -> None:
    stage = tmp_path / "stages" / "viewpoint-azimuth"
    stage.mkdir(parents=True)
    (stage / "done.json").write_text(json.dumps({"stage": "viewpoint-azimuth", "files": ["per_seed.csv"]}))
    with pytest.raises(ConfigError, match="older viewpoint stage.*new --out"):
        study.load_viewpoint_result(tmp_path, "azimuth")
