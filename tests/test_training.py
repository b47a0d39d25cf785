"""Training: exact resume after SIGKILL, clean SIGINT, bad checkpoints, evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from capsrobust.training.checkpoints import load_checkpoint, save_checkpoint
from capsrobust.training.loop import model_from_checkpoint
from capsrobust.errors import CheckpointError
from capsrobust_cli.main import cli
from tests.conftest import write_dataset
from tests.test_cli_data import assert_one_line_error

STEPS = ["--steps", "6", "--batch-size", "8", "--eval-every", "3", "--checkpoint-every", "3", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("train") / "data", size=16)


def train_cmd(data_dir: Path, out: Path, *extra: str, model: str = "cnn") -> list[str]:
    return [sys.executable, "-m", "capsrobust_cli", "train", "--model", model, "--data-dir", str(data_dir),
            "--out", str(out), *STEPS, *extra]


def run_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CAPSROBUST_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", **extra}
    env.pop("CAPSROBUST_PAUSE_AFTER_STEP", None)
    env.update(extra)
    return env


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before printing {text!r}")
    raise AssertionError(f"timed out waiting for {text!r}")


def kill_tagged(tag: str) -> None:
    """SIGKILL every process whose environment carries CAPSROBUST_TEST_TAG=tag (torchrun's workers
    run in their own process groups, so killing the launcher's group does not reach them)."""
    marker = f"CAPSROBUST_TEST_TAG={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model_state"]


@pytest.mark.parametrize("model, extra", [("cnn", []), ("capsules-small", ["--iterations", "2"]),
                                          ("cnn", ["--ema-decay", "0.5"])], ids=["cnn", "capsules-small", "cnn-ema"])
def test_sigkill_then_resume_gives_the_same_weights_as_an_uninterrupted_run(
    data_dir: Path, tmp_path: Path, isolated_cache: Path, model: str, extra: list[str]
) -> None:
    straight = tmp_path / "straight"
    subprocess.run(train_cmd(data_dir, straight, *extra, model=model), env=run_env(isolated_cache), check=True,
                   capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data_dir, killed, *extra, model=model), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=run_env(isolated_cache, CAPSROBUST_PAUSE_AFTER_STEP="3"))
    try:
        wait_for(proc, "paused after step 3")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert load_checkpoint(killed / "last.pt")["step"] == 3

    subprocess.run(train_cmd(data_dir, killed, *extra, "--resume", model=model), env=run_env(isolated_cache),
                   check=True, capture_output=True)
    a, b = weights(straight / "last.pt"), weights(killed / "last.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    if extra[:1] == ["--ema-decay"]:  # the weight average resumes exactly too
        a, b = load_checkpoint(straight / "last.pt")["average_state"], load_checkpoint(killed / "last.pt")["average_state"]
        assert all(torch.equal(a[name], b[name]) for name in a)
    assert load_checkpoint(killed / "last.pt")["step"] == 6
    # The metrics log holds each evaluation once, in order, despite the kill.
    steps = [line.split('"step": ')[1].split(",")[0] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == ["3", "6"]


def test_sigint_saves_and_exits_cleanly(data_dir: Path, tmp_path: Path, isolated_cache: Path) -> None:
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(train_cmd(data_dir, out), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=run_env(isolated_cache, CAPSROBUST_PAUSE_AFTER_STEP="3"))
    try:
        wait_for(proc, "paused after step 3")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "state saved to" in output and "--resume" in output and "Traceback" not in output
    assert load_checkpoint(out / "last.pt")["step"] == 3


def test_run_directory_holds_provenance_metrics_and_best(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out),
                                      *STEPS, "--target-familiar-error", "1.0"])
    assert result.exit_code == 0, result.output

    run = json.loads((out / "run.json").read_text())
    assert run["dataset"] == "smallNORB" and run["config"]["seed"] == 0 and len(run["dataset_checksum"]) == 64
    assert "commit" in run and "torch" in run["versions"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "best.pt").exists()
    assert load_checkpoint(out / "matched.pt")["step"] == 3  # first evaluation meets a target of 100 %


def test_existing_run_is_not_overwritten_without_resume(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out), *STEPS]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = (out / "last.pt").read_bytes()
    assert_one_line_error(CliRunner().invoke(cli, args), "already holds a run", "--resume")
    assert (out / "last.pt").read_bytes() == before


def test_resume_with_another_model_is_refused(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out),
                                    *STEPS]).exit_code == 0
    result = CliRunner().invoke(cli, ["train", "--model", "capsules-small", "--data-dir", str(data_dir), "--out",
                                      str(out), *STEPS, "--resume"])
    assert_one_line_error(result, "checkpoint trained with model='cnn', not 'capsules-small'", "same settings")


# ---------------------------------------------------------------------------------------------
# Bad checkpoints: one line, exit 2.


def test_missing_checkpoint(tmp_path: Path) -> None:
    assert_one_line_error(CliRunner().invoke(cli, ["evaluate", str(tmp_path / "none.pt")]), "checkpoint not found")


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"model": "cnn", "model_state": {"w": torch.zeros(1000)}})
    path.write_bytes(path.read_bytes()[:500])
    assert_one_line_error(CliRunner().invoke(cli, ["evaluate", str(path)]), "not a loadable checkpoint")


def test_foreign_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    assert_one_line_error(CliRunner().invoke(cli, ["evaluate", str(path)]), "not a capsrobust checkpoint")
    (tmp_path / "text.pt").write_text("hello")
    assert_one_line_error(CliRunner().invoke(cli, ["evaluate", str(tmp_path / "text.pt")]), "not a loadable checkpoint")


class _Payload:
    """Arbitrary objects must never be unpickled."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "capsrobust-checkpoint", "version": 1, "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(path)


def test_evaluate_reports_test_error_and_refuses_other_data(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out),
                                    *STEPS]).exit_code == 0
    result = CliRunner().invoke(cli, ["evaluate", str(out / "last.pt"), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "smallNORB (stereo)" in result.output and "| test " in result.output
    multi = CliRunner().invoke(cli, ["evaluate", str(out / "last.pt"), "--data-dir", str(data_dir),
                                     "--split", "azimuth", "--multi-crop"])
    assert multi.exit_code == 0 and "test_novel" in multi.output and "13" in multi.output

    other = write_dataset(tmp_path / "other", size=16, lightings=(1, 2))
    assert_one_line_error(CliRunner().invoke(cli, ["evaluate", str(out / "last.pt"), "--data-dir", str(other)]),
                          "evaluate on the data it was trained on")


def test_evaluate_writes_side_by_side_table_curves_and_provenance(data_dir: Path, tmp_path: Path) -> None:
    runs = {}
    for model in ("cnn", "capsules-small"):
        runs[model] = tmp_path / model
        result = CliRunner().invoke(cli, ["train", "--model", model, "--data-dir", str(data_dir), "--out",
                                          str(runs[model]), *STEPS])
        assert result.exit_code == 0, result.output
    report = tmp_path / "report"
    result = CliRunner().invoke(cli, ["evaluate", str(runs["capsules-small"] / "best.pt"), str(runs["cnn"] / "best.pt"),
                                      "--data-dir", str(data_dir), "--both-crops", "--by", "instance", "--by",
                                      "lighting", "--confusion", "--out", str(report)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(report / "test-error.csv")
    for by, keys in (("instance", ["label", "instance"]), ("lighting", ["lighting"])):
        parts = pd.read_csv(report / f"test-error-by-{by}.csv")
        assert not parts.duplicated(["checkpoint", "crops", *keys]).any()
        # The groups partition the test set: their n-weighted errors give back each overall error.
        pooled = parts.assign(wrong=parts["error"] * parts["n"]).groupby(["checkpoint", "crops"])[["wrong", "n"]].sum()
        overall = table.set_index(["checkpoint", "crops"])
        assert (pooled["n"] == overall["n"].reindex(pooled.index)).all()
        assert ((pooled["wrong"] / pooled["n"] - overall["error"].reindex(pooled.index)).abs() < 1e-6).all()
    wide = (report / "test-error-by-instance.md").read_text()
    assert "capsules-small/best.pt" in wide and "cnn/best.pt" in wide and "| class" in wide
    assert "Test error (%) by lighting" in result.output
    confusion = pd.read_csv(report / "confusion.csv")
    assert len(confusion) == len(table) * 25  # every (true, predicted) pair of 5 classes, per checkpoint and crops
    wrong = confusion[confusion["true"] != confusion["predicted"]].groupby(["checkpoint", "crops"])["count"].sum()
    overall = table.set_index(["checkpoint", "crops"])
    assert ((wrong / overall["n"].reindex(wrong.index) - overall["error"].reindex(wrong.index)).abs() < 1e-6).all()
    assert "rows: true class" in (report / "confusion.md").read_text()
    # Per test toy: each toy's off-diagonal counts give back its error in the instance breakdown.
    by_toy = pd.read_csv(report / "confusion-by-instance.csv")
    by_toy = by_toy.assign(wrong=by_toy["count"].where(by_toy["true"] != by_toy["predicted"], 0))
    toy_counts = by_toy.groupby(["checkpoint", "crops", "true", "instance"])[["wrong", "count"]].sum()
    toys = pd.read_csv(report / "test-error-by-instance.csv").set_index(["checkpoint", "crops", "class", "instance"])
    toys.index = toys.index.set_names(toy_counts.index.names)
    assert len(toy_counts) == len(toys) and (toy_counts["count"] == toys["n"].reindex(toy_counts.index)).all()
    assert ((toy_counts["wrong"] / toy_counts["count"] - toys["error"].reindex(toy_counts.index)).abs() < 1e-9).all()
    assert "rows: true class, instance" in (report / "confusion-by-instance.md").read_text()
    assert (report / "confusion-by-lighting.csv").exists()
    assert sorted(set(table["model"])) == ["capsules-small", "cnn"]
    assert sorted(set(table["crops"])) == [1, 13]
    assert table["error"].between(0, 1).all()
    assert (report / "learning-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((report / "provenance.json").read_text())
    assert {c["model"] for c in record["checkpoints"]} == {"capsules-small", "cnn"}
    assert all(len(c["sha256"]) == 64 for c in record["checkpoints"])
    assert "smallNORB (stereo)" in (report / "test-error.md").read_text()
    assert_one_line_error(CliRunner().invoke(cli, ["evaluate", str(tmp_path / "nope.pt")]), "checkpoint not found")


def test_load_model_rebuilds_the_model_on_its_own_data_and_refuses_anything_else(data_dir: Path,
                                                                               tmp_path: Path) -> None:
    from capsrobust.training.checkpoints import load_model

    out = tmp_path / "run"
    assert CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out),
                                    *STEPS]).exit_code == 0
    loaded = load_model(out / "last.pt", data_dir=data_dir)
    assert loaded.name == "cnn" and loaded.step == 6 and not loaded.model.training
    assert loaded.data.dataset == "smallNORB" and loaded.data.split == "full"
    assert all(torch.equal(v, weights(out / "last.pt")[k]) for k, v in loaded.model.state_dict().items())
    assert load_model(out / "last.pt", data_dir=data_dir, split="azimuth").data.split == "azimuth"

    other = write_dataset(tmp_path / "other", size=16, lightings=(1, 2))
    with pytest.raises(CheckpointError, match="trained on smallNORB data with checksum .* do this"):
        load_model(out / "last.pt", data_dir=other, advice="do this")
    checkpoint = load_checkpoint(out / "last.pt")
    checkpoint["model_state"].pop(next(iter(checkpoint["model_state"])))
    broken = save_checkpoint(tmp_path / "broken.pt", {k: v for k, v in checkpoint.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match=r"broken.pt: checkpoint does not match its model description"):
        load_model(broken, data_dir=data_dir)
    # export has no data to check, but it refuses a copy that could not rebuild its model.
    assert_one_line_error(CliRunner().invoke(cli, ["export", str(broken), "--out", str(tmp_path / "copy.pt")]),
                          "does not match its model description")
    assert not (tmp_path / "copy.pt").exists()


def test_export_writes_a_smaller_evaluation_only_copy_that_evaluates_the_same(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out),
                                    *STEPS]).exit_code == 0
    slim = tmp_path / "slim.pt"
    result = CliRunner().invoke(cli, ["export", str(out / "last.pt"), "--out", str(slim)])
    assert result.exit_code == 0, result.output
    assert slim.stat().st_size < 0.5 * (out / "last.pt").stat().st_size  # Adam's two moments are gone
    assert "optimizer_state" not in load_checkpoint(slim) and "optimizer_state" not in load_checkpoint(out / "best.pt")
    a, b = weights(out / "last.pt"), weights(slim)
    assert all(torch.equal(a[k], b[k]) for k in a)
    evaluations = [CliRunner().invoke(cli, ["evaluate", str(p), "--data-dir", str(data_dir)]).output.splitlines()[-1]
                   for p in (out / "last.pt", slim)]
    assert evaluations[0].split("|")[-2] == evaluations[1].split("|")[-2]  # same error
    # An evaluation-only checkpoint cannot be resumed.
    (out / "last.pt").write_bytes(slim.read_bytes())
    assert_one_line_error(CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out",
                                                   str(out), *STEPS, "--resume"]), "cannot be resumed")


def test_data_parallel_run_under_torchrun_resumes_exactly(data_dir: Path, tmp_path: Path, isolated_cache: Path) -> None:
    """2 gloo processes: rank 0 alone writes; SIGKILL of the whole job + --resume equals a straight run."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

    def cmd(out: Path, *extra: str) -> list[str]:
        return launcher + train_cmd(data_dir, out, *extra)[1:]  # drop sys.executable: torchrun runs -m

    straight = tmp_path / "ddp_straight"
    subprocess.run(cmd(straight), env=run_env(isolated_cache), check=True, capture_output=True, timeout=300)
    assert len((straight / "metrics.jsonl").read_text().splitlines()) == 2  # one writer, no duplicates

    killed = tmp_path / "ddp_killed"
    tag = f"ddp-{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.Popen(cmd(killed), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=run_env(isolated_cache, CAPSROBUST_PAUSE_AFTER_STEP="3", CAPSROBUST_TEST_TAG=tag),
                            start_new_session=True)
    try:
        wait_for(proc, "paused after step 3")
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher ...
        kill_tagged(tag)  # ... and its workers: the whole job dies at once
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_tagged(tag)
    subprocess.run(cmd(killed, "--resume"), env=run_env(isolated_cache), check=True, capture_output=True, timeout=300)
    a, b = weights(straight / "last.pt"), weights(killed / "last.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after a data-parallel resume"


@pytest.mark.parametrize("args, fragment", [
    (["--model", "cnn", "--lambda-scale", "2"], "capsule models only"),
    (["--model", "cnn", "--transform-init", "normal"], "capsule models only"),
    (["--model", "cnn", "--routing-schedule", "normalized"], "capsule models only"),
    (["--model", "cnn", "--beta-parametrisation", "official"], "capsule models only"),
    (["--model", "cnn", "--margin-schedule", "official"], "spread loss only"),
    (["--lambda-scale", "0"], "--lambda-scale must be positive"),
    (["--conv-lambda-scale", "-1"], "--conv-lambda-scale must be positive"),
    (["--max-eval-examples", "-1"], "--max-eval-examples"),
    (["--iterations", "0"], "--iterations must be at least 1"),
])
def test_bad_capsule_options_are_one_line_errors(args: list[str], fragment: str) -> None:
    assert_one_line_error(CliRunner().invoke(cli, ["train", *args]), fragment)


def test_capsule_options_are_recorded_in_the_run(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "caps"
    result = CliRunner().invoke(cli, ["train", "--model", "capsules-small", "--data-dir", str(data_dir), "--out",
                                      str(out), "--steps", "1", "--batch-size", "2", "--lambda-scale", "10",
                                      "--routing-schedule", "normalized", "--beta-parametrisation", "official",
                                      "--transform-init", "normal", "--margin-schedule", "official", "--max-eval-examples", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "run.json").read_text())["config"]
    # the explicit options, over the default preset's (iterations), all recorded
    assert config["model_overrides"] == {"lambda_scale": 10.0, "schedule": "normalized",
                                         "beta_parametrisation": "official", "transform_init": "normal",
                                         "iterations": 2, "cost_normalisation": "ibm"}
    assert config["preset"] == "default"
    assert config["max_eval_examples"] == 4
    assert config["margin_schedule"] == "official"
    model = model_from_checkpoint(load_checkpoint(out / "last.pt"))
    from capsrobust.models.layers import cost_factor

    # --lambda-scale 10 times the default preset's IBM cost factor (16 parents, 3x3x8 children)
    assert model.conv_caps1.lambda_scale == pytest.approx(10.0 * cost_factor("ibm", 16, 3 * 3 * 8))
    assert model.conv_caps1.schedule == model.class_caps.schedule == "normalized"
    assert model.conv_caps2.beta_parametrisation == model.class_caps.beta_parametrisation == "official"


def test_a_preset_resolves_into_the_run_and_a_resume_with_another_is_refused(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "paper"
    args = ["train", "--model", "capsules-small", "--data-dir", str(data_dir), "--out", str(out), "--steps", "2",
            "--checkpoint-every", "1", "--batch-size", "2", "--max-eval-examples", "4", "--no-progress"]
    result = CliRunner().invoke(cli, [*args, "--preset", "paper"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["model_overrides"]["iterations"] == 3 and config["margin_schedule"] == "epoch"
    assert model_from_checkpoint(load_checkpoint(out / "last.pt")).class_caps.iterations == 3
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_seconds"] > 0
    assert_one_line_error(CliRunner().invoke(cli, [*args, "--resume"]), "checkpoint trained with iterations=3, not 2")


def test_inspect_prints_per_layer_statistics_and_refuses_a_cnn(data_dir: Path, tmp_path: Path) -> None:
    caps, cnn = tmp_path / "caps", tmp_path / "cnn"
    for model, out in (("capsules-small", caps), ("cnn", cnn)):
        result = CliRunner().invoke(cli, ["train", "--model", model, "--data-dir", str(data_dir), "--out", str(out),
                                          "--steps", "1", "--batch-size", "2", "--max-eval-examples", "4",
                                          "--no-progress"])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["inspect", str(caps / "last.pt"), "--data-dir", str(data_dir), "--n", "8",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images"] == 8 and [r["kind"] for r in report["layers"]] == [
        "PrimaryCaps", "ConvCaps", "ConvCaps", "ClassCaps"]
    assert_one_line_error(CliRunner().invoke(cli, ["inspect", str(cnn / "last.pt"), "--data-dir", str(data_dir)]),
                          "capsule nets")


def test_weight_average_follows_the_warm_up_rule_and_tracks_constant_weights() -> None:
    from capsrobust.training.weight_average import WeightAverage

    model = torch.nn.Linear(2, 1)
    average = WeightAverage(model, decay=0.9)
    start = model.weight.detach().clone()
    assert average.decay_at(1) == pytest.approx(2 / 11) and average.decay_at(10_000) == 0.9
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model, 1)  # keeps 2/11 of the start, takes 9/11 of the new weights
    assert torch.allclose(average.average.weight, start + 9 / 11)
    for step in range(2, 400):
        average.update(model, step)
    assert torch.allclose(average.average.weight, model.weight, atol=1e-6)
    assert not average.average.weight.requires_grad


def test_a_run_with_a_weight_average_evaluates_and_saves_the_average(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ema"
    result = CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out),
                                      *STEPS, "--ema-decay", "0.5"])
    assert result.exit_code == 0, result.output
    last, averaged = load_checkpoint(out / "last.pt"), load_checkpoint(out / "averaged.pt")
    assert averaged["resumable"] is False and averaged["weights"] == "average (decay 0.5)"
    assert all(torch.equal(averaged["model_state"][k], v) for k, v in last["average_state"].items())
    assert any(not torch.equal(last["model_state"][k], v) for k, v in last["average_state"].items())
    assert "average_state" not in averaged and "average_state" not in load_checkpoint(out / "best.pt")
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"validation_error", "validation_error_raw"} <= record.keys()
    assert json.loads((out / "run.json").read_text())["config"]["ema_decay"] == 0.5
    refused = CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out),
                                       *STEPS, "--resume"])
    assert refused.exit_code == 2 and "ema_decay=0.5" in refused.output
    bad = CliRunner().invoke(cli, ["train", "--model", "cnn", "--ema-decay", "1"])
    assert bad.exit_code == 2 and "--ema-decay must be in [0, 1)" in bad.output


def test_weight_average_of_a_capsule_net_follows_its_lazily_sized_buffers() -> None:
    from capsrobust.models import build_model
    from capsrobust.training.weight_average import WeightAverage

    torch.manual_seed(0)
    model = build_model("capsules-small", in_channels=2, iterations=2)
    average = WeightAverage(model, decay=0.5)
    model(torch.rand(2, 2, 32, 32))  # sizes the model's caches
    average.update(model, 1)
    for (name, a), b in zip(average.average.named_buffers(), model.buffers()):
        assert torch.equal(a, b), name
    assert torch.isfinite(average.average(torch.rand(2, 2, 32, 32))).all()


def test_holdout_none_trains_on_every_training_toy_without_validation(data_dir: Path, tmp_path: Path) -> None:
    from capsrobust.data.prepared import prepare_data

    held = prepare_data(data_dir)
    every = held.with_holdout("none")
    assert len(every.indices.validation) == 0 and len(held.indices.validation) > 0
    assert len(every.indices.train) == len(held.indices.train) + len(held.indices.validation)
    assert (every.indices.test_familiar == held.indices.test_familiar).all()

    out = tmp_path / "all-toys"
    result = CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out),
                                      *STEPS, "--holdout", "none", "--ema-decay", "0.5"])
    assert result.exit_code == 0, result.output
    assert not (out / "best.pt").exists() and (out / "averaged.pt").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["holdout"] == "none" and run["n_train"] == len(every.indices.train)
    assert "validation_error" not in (out / "metrics.jsonl").read_text()
    report = CliRunner().invoke(cli, ["evaluate", str(out / "averaged.pt"), "--data-dir", str(data_dir),
                                      "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert_one_line_error(CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out",
                                                   str(tmp_path / "x"), "--holdout", "none",
                                                   "--target-familiar-error", "0.5"]), "--holdout toy")


def test_seed_spread_keeps_two_checkpoints_of_one_run_apart() -> None:
    from capsrobust.reporting.evaluation import seed_spread

    table = pd.DataFrame({"model": "cnn", "checkpoint": ["a-seed0/best.pt", "a-seed1/best.pt", "a-seed0/averaged.pt",
                                                         "a-seed1/averaged.pt"],
                          "seed": [0, 1, 0, 1], "preset": "default", "crops": 1, "subset": "test",
                          "dataset": "synthnorb (stereo)", "error": [0.1, 0.2, 0.3, 0.5]})
    spread = seed_spread(table).set_index("file")
    assert spread.loc["best.pt", "seeds"] == 2 and spread.loc["averaged.pt", "error_%_mean"] == pytest.approx(40.0)
    assert set(spread["runs"]) == {"a-seed*"}
    arms = pd.concat([table, table.assign(checkpoint=table["checkpoint"].str.replace("a-", "b-"))], ignore_index=True)
    assert (seed_spread(arms)["seeds"] == 2).all()  # two arms of an ablation are not pooled


def test_shape_jitter_stretches_training_images_and_is_recorded(data_dir: Path, tmp_path: Path) -> None:
    def run(out: Path, *extra: str):
        return CliRunner().invoke(cli, ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out),
                                        *STEPS, *extra])

    out, plain = tmp_path / "jitter", tmp_path / "plain"
    result = run(out, "--shape-jitter", "0.15")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["config"]["shape_jitter"] == 0.15
    assert run(plain).exit_code == 0
    jittered, default = load_checkpoint(out / "last.pt"), load_checkpoint(plain / "last.pt")
    assert any(not torch.equal(v, default["model_state"][k]) for k, v in jittered["model_state"].items())
    refused = run(out, "--resume")
    assert refused.exit_code == 2 and "shape_jitter=0.15" in refused.output
    assert_one_line_error(CliRunner().invoke(cli, ["train", "--model", "cnn", "--shape-jitter", "1"]),
                          "--shape-jitter must be in [0, 1)")


# ---------------------------------------------------------------------------------------------
# "Is this the same run?": one rule (training.same_run) for resume, reuse, borrowed runs and the probe.


def test_same_run_names_the_first_differing_option_with_both_values() -> None:
    import dataclasses

    from capsrobust.training.presets import resolve_preset
    from capsrobust.training.loop import KEPT_KEYS, WEIGHT_KEYS, TrainConfig, same_run

    wanted = resolve_preset(TrainConfig(model="capsules-small", steps=10))
    saved = dataclasses.asdict(wanted)
    assert same_run(saved, wanted) is None
    assert same_run({**saved, "lr": 0.01}, wanted) == "trained with lr=0.01, not 0.003"
    assert same_run({**saved, "steps": 20}, wanted) == "trained with steps=20, not 10"
    assert same_run({**saved, "steps": 20}, wanted, WEIGHT_KEYS) is None  # a resume keeps its recorded length
    assert same_run({**saved, "eval_every": 5}, wanted) == "trained with eval_every=5, not 0"
    assert same_run({**saved, "eval_every": 5}, wanted, WEIGHT_KEYS) is None  # evaluations do not change weights
    assert "eval_every" in KEPT_KEYS and "checkpoint_every" not in KEPT_KEYS + WEIGHT_KEYS
    # a routing option names itself, not the dict it travels in
    options = {**saved["model_overrides"], "lambda_scale": 4.0}
    assert same_run({**saved, "model_overrides": options}, wanted) == "trained with lambda_scale=4.0, not 1.0"
    # the model's defaults fill both sides: an option left at its default equals one not given
    at_default = resolve_preset(TrainConfig(model="capsules-small", steps=10, model_overrides={"coordinates": "unit"}))
    assert same_run(saved, at_default) is None
    # output paths and the checkpoint cadence are not part of a run's identity
    assert same_run({**saved, "data_dir": "/elsewhere", "checkpoint_every": 7}, wanted) is None


def test_a_config_saved_before_an_option_existed_reads_as_its_legacy_value() -> None:
    import dataclasses

    from capsrobust.training.presets import resolve_preset
    from capsrobust.training.loop import LEGACY_CONFIG, TrainConfig, same_run

    wanted = resolve_preset(TrainConfig(model="cnn", steps=10))
    old = {k: v for k, v in dataclasses.asdict(wanted).items() if k not in (*LEGACY_CONFIG, "lr_decay_every", "preset")}
    assert same_run(old, wanted) is None
    jittered = resolve_preset(TrainConfig(model="cnn", steps=10, shape_jitter=0.15))
    assert same_run(old, jittered) == "trained with shape_jitter=0.0, not 0.15"


def test_resume_with_a_changed_option_is_refused_naming_it(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out), *STEPS]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = (out / "last.pt").read_bytes()
    result = CliRunner().invoke(cli, [*args, "--resume", "--lr", "0.01"])
    assert_one_line_error(result, "trained with lr=0.001, not 0.01", "same settings")
    assert (out / "last.pt").read_bytes() == before


def test_an_old_checkpoint_without_the_newer_options_still_resumes(data_dir: Path, tmp_path: Path) -> None:
    from capsrobust.training.loop import LEGACY_CONFIG

    out = tmp_path / "old"
    args = ["train", "--model", "cnn", "--data-dir", str(data_dir), "--out", str(out), *STEPS]
    assert CliRunner().invoke(cli, args).exit_code == 0
    checkpoint = load_checkpoint(out / "last.pt")
    checkpoint["config"] = {k: v for k, v in checkpoint["config"].items()
                            if k not in (*LEGACY_CONFIG, "lr_decay_every", "preset")}
    checkpoint["step"] = 3  # as if stopped half way, before these options existed
    save_checkpoint(out / "last.pt", {k: v for k, v in checkpoint.items() if k not in ("format", "version")})
    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "resuming cnn at step 3/6" in result.output and load_checkpoint(out / "last.pt")["step"] == 6
