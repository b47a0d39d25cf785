"""Throughput and memory benchmarks (``capsrobust bench``).

Models part: :func:`bench_models` (training and inference images/s and peak RSS of each model
under a named training recipe, each measured in a fresh subprocess so peak memory is that model's
alone, with the work it does counted in FLOPs and set against the machine's own matmul peak,
:func:`matmul_peak`, measured in the same run), :func:`bench_processes` (one process on every
thread against as many one-thread processes side by side) and :func:`bench_routing` (EM routing
alone on ConvCaps1-sized votes, fast vs straightforward). The "straightforward" baseline is
:mod:`capsrobust.models.routing_naive`, measured in the same run, so ratios are meaningful even on
a noisy shared CPU.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import pandas as pd
import torch

from capsrobust.errors import ConfigError
from capsrobust.models import is_capsule_model

#: glibc malloc settings for the measuring subprocess: serve big tensors from the heap and keep
#: freed memory, instead of mmap/munmap per allocation -- on CPU, re-faulting hundreds of MB of
#: fresh pages for every vote-sized temporary costs as much as the arithmetic. Training scripts
#: can export the same two variables.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}

STRAIGHTFORWARD = "straightforward"
#: PyTorch-only EM routing over stored [V, V^2] (the fused kernels switched off).
STORED = "stored"
#: The default: fused C kernels that recompute the votes (capsrobust.models.vote_kernels).
FAST = "fast"
#: Training recipes a capsule net is measured under: the preset whose capsule options build it
#: (``default``: what ``capsrobust train`` uses; ``paper``: 3 routing iterations, the paper's constants).
RECIPES = ("default", "paper")
#: Side of the float32 matrix product that measures the machine's peak (GFLOP/s) in each run.
PEAK_MATMUL_SIZE = 2048
#: Images per step when counting a training step's FLOPs (they scale with the batch).
FLOP_COUNT_BATCH = 2


@dataclass(frozen=True)
class ModelBenchConfig:
    """One measurement: a model, its routing, batch sizes, step counts and threads."""

    model: str
    routing: str = FAST
    recipe: str = "default"
    train_batch: int = 32
    infer_batch: int = 128
    steps: int = 5
    #: untimed steps first: a training process reaches its steady state (heap grown, pages mapped,
    #: kernels built) only after a few steps, and a real run spends nearly all its time there.
    warmup: int = 3
    threads: int | None = None
    compile: bool = False


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


@contextmanager
def _kernels_for(routing: str) -> Iterator[None]:
    """Fused vote kernels on (``fast``; unless the environment turns them off) or off (the others)."""
    from capsrobust.models import vote_kernels

    before = os.environ.get(vote_kernels.DISABLE_ENV)
    if routing != FAST:
        os.environ[vote_kernels.DISABLE_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(vote_kernels.DISABLE_ENV, None)
        else:
            os.environ[vote_kernels.DISABLE_ENV] = before


def _build(config: ModelBenchConfig) -> torch.nn.Module:
    from capsrobust.models import build_model
    from capsrobust.models.routing_naive import naive_em_routing

    overrides = recipe_options(config.model, config.recipe)
    if config.routing == STRAIGHTFORWARD:
        if not is_capsule_model(config.model):
            raise ConfigError("the cnn has no routing; use routing='fast' for it")
        overrides.update(routing=naive_em_routing, normalisation="patch")
    return build_model(config.model, in_channels=2, **overrides)


def recipe_options(model: str, recipe: str) -> dict[str, Any]:
    """The model options a training ``recipe`` (a preset's name) builds ``model`` with; {} for the CNN."""
    from capsrobust.training.presets import PRESETS

    if recipe not in RECIPES:
        raise ConfigError(f"unknown bench recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    return dict(PRESETS[recipe].capsule_options) if is_capsule_model(model) else {}


def matmul_peak(threads: int | None = None, size: int = PEAK_MATMUL_SIZE, steps: int = 5) -> float:
    """The machine's attainable float32 GFLOP/s on ``threads``: a (size x size) @ (size x size) product."""
    _set_threads(threads)
    a, b = torch.rand(size, size), torch.rand(size, size)
    seconds = _timed(lambda: torch.mm(a, b), steps, 2)
    return 2.0 * size**3 / seconds / 1e9


def train_flops_per_image(model_name: str, recipe: str = "default", batch: int = FLOP_COUNT_BATCH) -> float:
    """FLOPs of one training step (forward + backward) per image, counting matrix products,
    convolutions and einsums only (torch's FlopCounterMode), with EM routing on the PyTorch path
    (its contractions are then visible as batched products). The element-wise work is not counted,
    so achieved GFLOP/s against :func:`matmul_peak` says how much of the hardware the counted work uses."""
    from torch.utils.flop_counter import FlopCounterMode

    from capsrobust.training.losses import cross_entropy, spread_loss

    with _kernels_for(STORED):
        torch.manual_seed(0)
        model = _build(ModelBenchConfig(model_name, STORED, recipe))
        images, labels = torch.rand(batch, 2, 32, 32), torch.randint(0, 5, (batch,))
        loss_fn = (lambda s, t: spread_loss(s, t, 0.2)) if is_capsule_model(model) else cross_entropy
        with FlopCounterMode(display=False) as counter:
            loss_fn(model(images), labels).backward()
    return counter.get_total_flops() / batch


def _timed(fn: Callable[[], None], steps: int, warmup: int) -> float:
    """Seconds per call of ``fn``: the median of ``steps`` timed calls after ``warmup`` untimed ones.

    The median rather than the mean: on a shared (virtual) CPU a few calls are slowed by whatever
    else runs, and the median ignores them the same way for every model of one run."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_model(config: ModelBenchConfig) -> dict[str, Any]:
    """Training (forward + loss + backward + Adam step) and inference images/s, in this process."""
    with _kernels_for(config.routing):
        return _measure_model(config)


def _measure_model(config: ModelBenchConfig) -> dict[str, Any]:
    from capsrobust.training.losses import cross_entropy, spread_loss

    from capsrobust.models import vote_kernels

    _set_threads(config.threads)
    torch.manual_seed(0)
    model = _build(config)
    runner = torch.compile(model) if config.compile else model
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    images = torch.rand(config.train_batch, 2, 32, 32)
    labels = torch.randint(0, 5, (config.train_batch,))
    loss_fn = (lambda s, t: spread_loss(s, t, 0.2)) if is_capsule_model(model) else cross_entropy

    def train_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss_fn(runner(images), labels).backward()
        optimiser.step()

    model.train()
    train_s = _timed(train_step, config.steps, config.warmup)
    model.eval()
    infer_images = torch.rand(config.infer_batch, 2, 32, 32)

    def infer_step() -> None:
        with torch.inference_mode():
            runner(infer_images)

    infer_s = _timed(infer_step, config.steps, config.warmup)
    capsule = is_capsule_model(model)
    return {
        "model": config.model,
        "recipe": config.recipe if capsule else "-",
        "iterations": model.conv_caps1.iterations if capsule else 0,
        "routing": config.routing if capsule else "-",
        "vote_kernels": capsule and config.routing == FAST and vote_kernels.available(),
        "train_batch": config.train_batch,
        "train_img_s": config.train_batch / train_s,
        "infer_batch": config.infer_batch,
        "infer_img_s": config.infer_batch / infer_s,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


_CHILD = "import sys; from capsrobust.evaluation.bench import _child_main; _child_main(sys.argv[1])"


def _measure_in_subprocess(config: ModelBenchConfig) -> dict[str, Any]:
    """Run :func:`measure_model` in a fresh interpreter so its peak RSS is the model's alone."""
    return _measure_side_by_side(config, 1)[0]


def _measure_side_by_side(config: ModelBenchConfig, processes: int) -> list[dict[str, Any]]:
    """Run :func:`measure_model` in ``processes`` fresh interpreters started together; their rows."""
    env = {**os.environ, **ALLOCATOR_ENV}
    if processes > 1:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(asdict(config))], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for _ in range(processes)]
    rows = []
    for child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"benchmark of {config.model} failed:\n{err[-2000:]}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def _child_main(config_json: str) -> None:
    print(json.dumps(measure_model(ModelBenchConfig(**json.loads(config_json)))))


def bench_models(
    models: tuple[str, ...] = ("capsules", "capsules-small", "cnn"),
    *,
    steps: int = 5,
    warmup: int = 3,
    train_batch: int = 32,
    infer_batch: int = 128,
    recipes: tuple[str, ...] = RECIPES,
    straightforward: tuple[str, ...] = ("capsules", "capsules-small"),
    straightforward_batch: int = 8,
    threads: int | None = None,
    compile: bool = False,
    isolate: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Images/s (train at ``train_batch``, inference at ``infer_batch``) and peak RSS per model and
    training recipe, each timed over ``steps`` steps after ``warmup`` untimed ones, and the
    machine's matmul peak measured in the same run.

    Each capsule net is measured under every recipe in ``recipes`` (the first, ``default``, is what
    ``capsrobust train`` uses). Models named in ``straightforward`` are measured twice more under
    the first recipe: with the PyTorch-only routing over stored votes (``stored``: the fused kernels
    off) and built with the naive routing (``straightforward``, at ``straightforward_batch``, which is
    smaller because it is ~30x slower and stores every intermediate); ``train_speedup`` is training
    images/s over the straightforward version's. ``train_vs_cnn`` is training images/s over the CNN's;
    ``train_gflop_s`` the counted FLOPs per image (:func:`train_flops_per_image`) times training
    images/s, and ``of_peak`` that over the matmul peak. Returns (one row per (model, recipe,
    routing), {"peak_gflop_s", "peak_threads"}).
    """
    measure = _measure_in_subprocess if isolate else measure_model
    rows, flops = [], {}
    for name in models:
        for recipe in recipes if is_capsule_model(name) else recipes[:1]:
            rows.append(measure(ModelBenchConfig(name, FAST, recipe, train_batch, infer_batch, steps, warmup, threads,
                                                 compile)))
            flops[(name, rows[-1]["recipe"])] = train_flops_per_image(name, recipe)
        if name in straightforward:
            rows.append(measure(ModelBenchConfig(name, STORED, recipes[0], train_batch, infer_batch, steps, warmup,
                                                 threads, False)))
            small = min(straightforward_batch, train_batch)
            rows.append(measure(ModelBenchConfig(name, STRAIGHTFORWARD, recipes[0], small, small, max(1, steps // 2),
                                                 warmup, threads, False)))
    peak = matmul_peak(rows[0]["threads"])
    table = pd.DataFrame(rows)
    table["infer_over_train"] = table["infer_img_s"] / table["train_img_s"]
    cnn = table.loc[[not is_capsule_model(name) for name in table["model"]], "train_img_s"]  # the baseline
    table["train_vs_cnn"] = table["train_img_s"] / cnn.iloc[0] if len(cnn) else float("nan")
    table["gflop_per_image"] = [flops[(row.model, row.recipe)] / 1e9 for row in table.itertuples()]
    table["train_gflop_s"] = table["gflop_per_image"] * table["train_img_s"]
    table["of_peak"] = table["train_gflop_s"] / peak
    baseline = table[table["routing"] == STRAIGHTFORWARD].set_index("model")["train_img_s"]
    table["train_speedup"] = [
        row.train_img_s / baseline[row.model] if row.model in baseline.index and row.recipe == recipes[0] else float("nan")
        for row in table.itertuples()
    ]
    return table, {"peak_gflop_s": peak, "peak_threads": int(rows[0]["threads"]), "peak_matmul": PEAK_MATMUL_SIZE}


def bench_processes(models: tuple[str, ...] = ("capsules-small",), *, processes: int = 2, steps: int = 5,
                    warmup: int = 3, train_batch: int = 32, infer_batch: int = 128) -> pd.DataFrame:
    """One process on ``processes`` threads against ``processes`` one-thread processes side by side
    (default recipe, fast routing): does one process use the cores as well as several do?

    Returns one row per model: ``one_process_img_s`` (training) and ``side_by_side_img_s`` (the
    processes' training images/s added up, all started together; with
    ``OMP_WAIT_POLICY=PASSIVE``, as the project's notes advise for side-by-side jobs), and their ratio.
    """
    rows = []
    for name in models:
        config = ModelBenchConfig(name, FAST, RECIPES[0], train_batch, infer_batch, steps, warmup, processes)
        one = _measure_in_subprocess(config)
        single = ModelBenchConfig(name, FAST, RECIPES[0], train_batch, infer_batch, steps, warmup, 1)
        side = _measure_side_by_side(single, processes)
        together = sum(r["train_img_s"] for r in side)
        rows.append({"model": name, "threads": processes, "one_process_img_s": one["train_img_s"],
                     "side_by_side_img_s": together, "one_over_side_by_side": one["train_img_s"] / together})
    return pd.DataFrame(rows)


def routing_inputs(batch: int, *, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random ConvCaps1-sized routing inputs of the A=B=C=D=32 net (14x14x32 -> 6x6x32, k3 s2):
    patches (N, 36, 288, 4, 4), weight (288, 32, 4, 4), activations (N, 36, 288), betas, child index."""
    from capsrobust.models.layers import patch_child_index

    gen = torch.Generator().manual_seed(seed)
    index = patch_child_index(14, 14, 32, 3, 2)  # (36, 288)
    poses = 0.3 * torch.randn(batch, 14 * 14 * 32, 4, 4, generator=gen)
    weight = torch.eye(4) + 0.1 * torch.randn(index.shape[1], 32, 4, 4, generator=gen)
    acts = torch.rand(batch, 14 * 14 * 32, generator=gen)[:, index]
    return poses[:, index], weight, acts, torch.zeros(32), torch.zeros(32), index


def bench_routing(batch: int = 8, *, steps: int = 3, threads: int | None = None) -> pd.DataFrame:
    """EM routing alone (3 iterations, ConvCaps1-sized), from patches and W to parents, same run.

    Rows: ``fast`` (fused kernels: votes recomputed, never stored), ``stored`` (PyTorch over
    stored [V, V^2]) and ``straightforward`` (every intermediate stored, per-patch); forward ms
    and forward+backward ms per batch (vote computation included), and speedups over the
    straightforward version.
    """
    from capsrobust.models.routing import em_routing, em_routing_from_poses
    from capsrobust.models.routing_naive import naive_em_routing

    _set_threads(threads)
    patches, weight, acts, beta_u, beta_a, index = routing_inputs(batch)
    n, length, slots = patches.shape[:3]

    def stored(p, w, a, bu, ba, **kwargs):
        votes = torch.einsum("nlirk,iokc->nloirc", p, w).reshape(n, length, w.shape[1], slots, 16)
        return em_routing(votes, a, bu, ba, 3, **kwargs)

    def straightforward(p, w, a, bu, ba, **kwargs):
        votes = torch.einsum("nlirk,iokc->nloirc", p, w).reshape(n, length, w.shape[1], slots, 16)
        return naive_em_routing(votes, a, bu, ba, 3)

    def fast(p, w, a, bu, ba, **kwargs):
        return em_routing_from_poses(p, w, a, bu, ba, 3, **kwargs)

    rows = []
    for name, fn in [(FAST, fast), (STORED, stored), (STRAIGHTFORWARD, straightforward)]:
        kwargs = dict(child_index=index, num_children=14 * 14 * 32)

        def forward() -> None:
            with torch.no_grad():
                fn(patches, weight, acts, beta_u, beta_a, **kwargs)

        def forward_backward() -> None:
            leaves = [t.detach().requires_grad_(True) for t in (patches, weight, acts, beta_u, beta_a)]
            poses, out = fn(*leaves, **kwargs)
            (poses.sum() + out.sum()).backward()

        with _kernels_for(name):
            rows.append({
                "routing": name,
                "batch": batch,
                "forward_ms": 1000 * _timed(forward, steps, 2),
                "forward_backward_ms": 1000 * _timed(forward_backward, steps, 2),
            })
    table = pd.DataFrame(rows)
    base = table.set_index("routing").loc[STRAIGHTFORWARD]
    table["forward_speedup"] = base["forward_ms"] / table["forward_ms"]
    table["forward_backward_speedup"] = base["forward_backward_ms"] / table["forward_backward_ms"]
    return table
