"""Throughput and memory benchmarks (``capsrobust bench``).

Models part: :func:`bench_models` (training and inference images/s and peak RSS of each model,
each measured in a fresh subprocess so peak memory is that model's alone) and
:func:`bench_routing` (EM routing alone on ConvCaps1-sized votes, fast vs straightforward).
The "straightforward" baseline is :mod:`capsrobust.models.routing_naive`, measured in the same
run, so ratios are meaningful even on a noisy shared CPU.
"""

from __future__ import annotations

import json
import os
import resource
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


@dataclass(frozen=True)
class ModelBenchConfig:
    """One measurement: a model, its routing, batch sizes, step counts and threads."""

    model: str
    routing: str = FAST
    train_batch: int = 32
    infer_batch: int = 128
    steps: int = 3
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

    overrides: dict[str, Any] = {}
    if config.routing == STRAIGHTFORWARD:
        if not is_capsule_model(config.model):
            raise ConfigError("the cnn has no routing; use routing='fast' for it")
        overrides = dict(routing=naive_em_routing, normalisation="patch")
    return build_model(config.model, in_channels=2, **overrides)


def _timed(fn: Callable[[], None], steps: int, warmup: int) -> float:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls (median-free: total / steps)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def measure_model(config: ModelBenchConfig) -> dict[str, Any]:
    """Training (forward + loss + backward + Adam step) and inference images/s, in this process."""
    with _kernels_for(config.routing):
        return _measure_model(config)


def _measure_model(config: ModelBenchConfig) -> dict[str, Any]:
    from capsrobust.losses import cross_entropy, spread_loss

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
    return {
        "model": config.model,
        "routing": config.routing if is_capsule_model(model) else "-",
        "vote_kernels": is_capsule_model(model) and config.routing == FAST and vote_kernels.available(),
        "train_batch": config.train_batch,
        "train_img_s": config.train_batch / train_s,
        "infer_batch": config.infer_batch,
        "infer_img_s": config.infer_batch / infer_s,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def _measure_in_subprocess(config: ModelBenchConfig) -> dict[str, Any]:
    """Run :func:`measure_model` in a fresh interpreter so its peak RSS is the model's alone."""
    code = "import sys; from capsrobust.bench import _child_main; _child_main(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(asdict(config))], capture_output=True, text=True, check=False,
        env={**os.environ, **ALLOCATOR_ENV},
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark of {config.model} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_main(config_json: str) -> None:
    print(json.dumps(measure_model(ModelBenchConfig(**json.loads(config_json)))))


def bench_models(
    models: tuple[str, ...] = ("capsules", "capsules-small", "cnn"),
    *,
    steps: int = 3,
    warmup: int = 3,
    train_batch: int = 32,
    infer_batch: int = 128,
    straightforward: tuple[str, ...] = ("capsules", "capsules-small"),
    straightforward_batch: int = 8,
    threads: int | None = None,
    compile: bool = False,
    isolate: bool = True,
) -> pd.DataFrame:
    """Images/s (train at ``train_batch``, inference at ``infer_batch``) and peak RSS per model,
    each timed over ``steps`` steps after ``warmup`` untimed ones.

    Models named in ``straightforward`` are measured twice more: with the PyTorch-only routing over
    stored votes (``stored``: the fused kernels off) and built with the naive routing
    (``straightforward``, at ``straightforward_batch``, which is smaller because it is ~30x
    slower and stores every intermediate); ``train_speedup`` is training images/s over the
    straightforward version's. Returns one row per (model, routing).
    """
    measure = _measure_in_subprocess if isolate else measure_model
    rows = []
    for name in models:
        rows.append(measure(ModelBenchConfig(name, FAST, train_batch, infer_batch, steps, warmup, threads, compile)))
        if name in straightforward:
            rows.append(measure(ModelBenchConfig(name, STORED, train_batch, infer_batch, steps, warmup, threads, False)))
            small = min(straightforward_batch, train_batch)
            rows.append(measure(ModelBenchConfig(name, STRAIGHTFORWARD, small, small, max(1, steps // 2), warmup,
                                                 threads, False)))
    table = pd.DataFrame(rows)
    table["infer_over_train"] = table["infer_img_s"] / table["train_img_s"]
    baseline = table[table["routing"] == STRAIGHTFORWARD].set_index("model")["train_img_s"]
    table["train_speedup"] = [
        row.train_img_s / baseline[row.model] if row.model in baseline.index else float("nan")
        for row in table.itertuples()
    ]
    return table


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
