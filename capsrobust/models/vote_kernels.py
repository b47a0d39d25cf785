"""Loader and thread-parallel wrappers for the fused vote kernels (``vote_kernels.c``).

The C file is compiled once per machine with the system C compiler (``$CC``, else ``cc``) into
the capsrobust cache directory and loaded with :mod:`ctypes`; nothing is built at install time.
ctypes releases the GIL during a call, so the wrappers split the tiles over
``torch.get_num_threads()`` Python threads. Where no compiler is found or the build fails,
:func:`available` is False and EM routing falls back to the pure-PyTorch path (same results,
slower); ``CAPSROBUST_VOTE_KERNELS=0`` forces that fallback.

All tensors are float32, contiguous, on the CPU; shapes (B tiles, I children, O parents,
OCP = 4 O rounded up to a multiple of LANES, see :func:`transforms_for_kernels`) as in the C file:
    M (B, I, 16), Wt (I, 4, OCP), cc (B, O, 16), weights/projections (B, O, I), sums/coeff (B, O, 32).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("vote_kernels.c")
DISABLE_ENV = "CAPSROBUST_VOTE_KERNELS"
#: -O3 and the host's vector units; the associative-math flags let gcc vectorise the few dot
#: products (no -ffast-math: NaN/inf semantics stay IEEE).
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
          "-fno-trapping-math", "-shared", "-fPIC"]
#: The backward kernel takes at most this many factor pairs per call.
MAX_PAIRS = 8
#: Largest 4 * (parent types), rounded up to LANES, the kernels' stack buffers hold (MAX_OCP in the C file).
MAX_OC = 1024
#: Vector block width of the kernels (LANES in the C file): Wt's last axis is padded to a multiple.
LANES = 16

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False
_pool: ThreadPoolExecutor | None = None
_pool_size = 0

_f = ctypes.c_void_p
_i = ctypes.c_int
_l = ctypes.c_long
_SIGNATURES = {
    "cr_msums": [_f, _f, _f, _f, _f, _i, _i, _l, _l],
    "cr_proj": [_f, _f, _f, _f, _f, _i, _i, _l, _l],
    "cr_vote_backward": [_f, _f, _f, _f, _f, _i, _f, _f, _i, _i, _l, _l],
}


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build() -> ctypes.CDLL:
    from capsrobust.paths import cache_dir

    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (set $CC or install gcc)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(CFLAGS).encode(), compiler.encode(),
                                     platform.machine().encode(), _cpu_signature().encode()])).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"vote_kernels-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        done = subprocess.run([compiler, *CFLAGS, "-o", str(partial), str(SOURCE)], capture_output=True, text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, target)  # atomic: a concurrent process sees the whole library or none
    library = ctypes.CDLL(str(target))
    for name, argtypes in _SIGNATURES.items():
        getattr(library, name).argtypes = argtypes
        getattr(library, name).restype = None
    if (library.cr_lanes(), library.cr_max_oc()) != (LANES, MAX_OC):  # the Python side pads and checks by these
        raise RuntimeError(f"{target.name} disagrees with vote_kernels.py on LANES/MAX_OC")
    return library


def library() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None where that is impossible or disabled."""
    global _library, _tried
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    with _lock:
        if not _tried:
            _tried = True
            try:
                _library = _build()
            except (OSError, RuntimeError) as error:
                warnings.warn(f"EM-routing vote kernels unavailable ({error}); using the slower PyTorch path",
                              RuntimeWarning, stacklevel=2)
    return _library


def available() -> bool:
    """True when the fused kernels can be used (built, and not disabled by the environment)."""
    return library() is not None


def _parallel(fn, tiles: int, args) -> None:
    """Call ``fn(*args(part), b0, b1)`` over ``torch.get_num_threads()`` contiguous tile ranges."""
    global _pool, _pool_size
    parts = max(1, min(torch.get_num_threads(), tiles))
    bounds = [(tiles * p // parts, tiles * (p + 1) // parts) for p in range(parts)]
    if parts == 1:
        fn(*args(0), *bounds[0])
        return
    with _lock:
        if _pool is None or _pool_size < parts:
            _pool, _pool_size = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="capsrobust-em"), parts
        pool = _pool
    futures = [pool.submit(fn, *args(p), b0, b1) for p, (b0, b1) in enumerate(bounds)]
    for future in futures:
        future.result()


def _ptr(tensor: Tensor) -> int:
    return tensor.data_ptr()


def transforms_for_kernels(weight: Tensor) -> Tensor:
    """weight (I, O, 4, 4), W[i, o][k][c] -> Wt (I, 4, OCP): [i][k][o * 4 + c], zero-padded lanes."""
    slots, types = weight.shape[:2]
    lanes = -(-4 * types // LANES) * LANES
    wt = weight.new_zeros((slots, 4, lanes))
    wt[:, :, : 4 * types] = weight.permute(0, 2, 1, 3).reshape(slots, 4, 4 * types)
    return wt


def transforms_from_kernels(grad_wt: Tensor, types: int) -> Tensor:
    """The inverse layout change: (I, 4, OCP) -> (I, O, 4, 4), padding dropped."""
    slots = grad_wt.shape[0]
    return grad_wt[:, :, : 4 * types].reshape(slots, 4, types, 4).permute(0, 2, 1, 3)


def centre(M: Tensor, weight: Tensor) -> Tensor:
    """cc (B, O, 16): the mean vote of every parent over its I children, M (B, I, 16), weight (I, O, 4, 4).

    sum_i M[b, i] W[i, o] contracts (child, k) at once: one (B 4, I 4) @ (I 4, O 4) matrix product.
    """
    tiles, slots, _ = M.shape
    types = weight.shape[1]
    lhs = M.view(tiles, slots, 4, 4).permute(0, 2, 1, 3).reshape(tiles * 4, slots * 4)  # [(b, r), (i, k)]
    rhs = weight.permute(0, 2, 1, 3).reshape(slots * 4, types * 4)  # [(i, k), (o, c)]
    means = (lhs @ rhs).div_(slots).view(tiles, 4, types, 4)
    return means.permute(0, 2, 1, 3).reshape(tiles, types, 16).contiguous()


def weighted_sums(M: Tensor, Wt: Tensor, cc: Tensor, weights: Tensor) -> Tensor:
    """weights (B, O, I) -> (B, O, 32): [sum_i w d, sum_i w d^2], d = votes - cc."""
    lib = library()
    tiles, slots, _ = M.shape
    types = cc.shape[1]
    out = M.new_empty((tiles, types, 32))
    _parallel(lib.cr_msums, tiles, lambda p: (_ptr(M), _ptr(Wt), _ptr(cc), _ptr(weights), _ptr(out), slots, types))
    return out


def projections(M: Tensor, Wt: Tensor, cc: Tensor, coeff: Tensor) -> Tensor:
    """coeff (B, O, 32) -> (B, O, I): sum over the 16 entries of coeff[:16] d + coeff[16:] d^2."""
    lib = library()
    tiles, slots, _ = M.shape
    types = cc.shape[1]
    out = M.new_empty((tiles, types, slots))
    _parallel(lib.cr_proj, tiles, lambda p: (_ptr(M), _ptr(Wt), _ptr(cc), _ptr(coeff), _ptr(out), slots, types))
    return out


def vote_backward(M: Tensor, Wt: Tensor, cc: Tensor, left: list[Tensor], right: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Gradients (dM (B, I, 16), dWt (I, 4, OCP)) from factor pairs left_k (B, O, I), right_k (B, O, 32)."""
    lib = library()
    tiles, slots, _ = M.shape
    types = cc.shape[1]
    parts = max(1, min(torch.get_num_threads(), tiles))
    grad_m = torch.zeros_like(M)
    grad_wt = Wt.new_zeros((parts,) + tuple(Wt.shape))  # one buffer per thread, summed below
    for start in range(0, len(left), MAX_PAIRS):
        lefts, rights = left[start:start + MAX_PAIRS], right[start:start + MAX_PAIRS]
        left_ptrs = (ctypes.c_void_p * len(lefts))(*[_ptr(t) for t in lefts])
        right_ptrs = (ctypes.c_void_p * len(rights))(*[_ptr(t) for t in rights])
        _parallel(lib.cr_vote_backward, tiles, lambda p: (
            _ptr(M), _ptr(Wt), _ptr(cc), ctypes.addressof(left_ptrs), ctypes.addressof(right_ptrs), len(lefts),
            _ptr(grad_m), _ptr(grad_wt[p]), slots, types))
    return grad_m, grad_wt.sum(0)


if sys.platform == "win32":  # pragma: no cover - the build recipe above is for gcc/clang
    os.environ.setdefault(DISABLE_ENV, "0")
