"""`capsrobust bench models` runs end to end (tiny batches) and prints tables or JSON."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from capsrobust.reporting import to_markdown
from capsrobust_cli.main import cli

TINY = ["--steps", "1", "--train-batch", "2", "--infer-batch", "2", "--routing-batch", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(cli, ["bench", "models", "--quick", "--json", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    return json.loads(result.output), out


@pytest.fixture(scope="module")
def quick_json(bench_out) -> dict:
    return bench_out[0]


def test_bench_models_writes_tables_and_provenance(bench_out):
    printed, out = bench_out
    assert json.loads((out / "models.json").read_text()) == printed
    text = (out / "models.md").read_text()
    assert "| capsules-small | default" in text and "EM routing alone" in text and "GFLOP/s" in text
    record = json.loads((out / "provenance.json").read_text())
    assert {"command", "commit", "cpu", "torch_threads", "versions"} <= set(record)  # command: this process's argv


def test_bench_models_reports_every_model_recipe_and_the_straightforward_baseline(quick_json):
    rows = {(r["model"], r["recipe"], r["routing"]): r for r in quick_json["models"]}
    capsule_nets = ("capsules", "capsules-small")
    assert set(rows) == ({(m, "default", r) for m in capsule_nets for r in ("fast", "stored", "straightforward")}
                         | {(m, "paper", "fast") for m in capsule_nets} | {("cnn", "-", "-")})
    for row in rows.values():
        assert row["train_img_s"] > 0 and row["infer_img_s"] > 0 and row["peak_rss_mb"] > 0
    assert rows[("capsules", "default", "straightforward")]["train_speedup"] == pytest.approx(1.0)
    assert rows[("capsules", "default", "fast")]["train_speedup"] > 0
    assert rows[("capsules", "default", "fast")]["vote_kernels"]
    assert not rows[("capsules", "default", "stored")]["vote_kernels"]
    # today's default recipe routes twice, the paper's three times
    assert rows[("capsules", "default", "fast")]["iterations"] == 2
    assert rows[("capsules", "paper", "fast")]["iterations"] == 3
    assert rows[("cnn", "-", "-")]["train_vs_cnn"] == pytest.approx(1.0)


def test_bench_models_sets_counted_work_against_the_measured_peak(quick_json):
    peak = quick_json["machine"]["peak_gflop_s"]
    assert peak > 0
    rows = {(r["model"], r["recipe"], r["routing"]): r for r in quick_json["models"]}
    small, big = rows[("capsules-small", "default", "fast")], rows[("capsules", "default", "fast")]
    assert 0 < small["gflop_per_image"] < big["gflop_per_image"]  # A=B=C=D=32 does more work than 64/8/16/16
    assert rows[("capsules", "paper", "fast")]["gflop_per_image"] > big["gflop_per_image"]  # 3 iterations, not 2
    for row in rows.values():
        assert row["train_gflop_s"] == pytest.approx(row["gflop_per_image"] * row["train_img_s"])
        assert row["of_peak"] == pytest.approx(row["train_gflop_s"] / peak)


def test_bench_models_times_one_process_against_processes_side_by_side(quick_json):
    (row,) = quick_json["processes"]
    assert row["model"] == "capsules-small" and row["threads"] == 1
    assert row["one_over_side_by_side"] == pytest.approx(row["one_process_img_s"] / row["side_by_side_img_s"])


def test_bench_models_compares_routing_fast_vs_straightforward(quick_json):
    routing = {r["routing"]: r for r in quick_json["routing"]}
    assert set(routing) == {"fast", "stored", "straightforward"}
    assert routing["straightforward"]["forward_backward_speedup"] == pytest.approx(1.0)


def test_bench_help_explains_what_is_measured():
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    assert "images/s" in result.output and "peak RSS" in result.output


def test_markdown_formatter_aligns_a_table():
    import pandas as pd

    text = to_markdown(pd.DataFrame({"model": ["cnn", "capsules"], "img_s": [312.5, float("nan")]}))
    lines = text.splitlines()
    assert lines[0].startswith("| model") and set(lines[1]) <= {"|", "-", ":"}
    assert len({len(line) for line in lines}) == 1  # every line equally wide
