"""Loader and thread-parallel wrappers for the fused vote kernels (``vote_kernels.c``).

The C file is compiled once per machine with the system C compiler (``$CC``, else ``cc``) into
the capsrobust cache directory and loaded with :mod:`ctypes`; nothing is built at install time.
Built with OpenMP where PyTorch itself runs on
GNU OpenMP, each kernel splits its tiles over ``torch.get_num_threads()`` threads of that same
pool; otherwise (ctypes releases the GIL during a call) the wrappers split the tiles over as many
Python threads. Where no compiler is found or the build fails,
:func:`available` is False and EM routing falls back to the pure-PyTorch path (same results,
slower); ``CAPSROBUST_VOTE_KERNELS=0`` forces that fallback, and
``CAPSROBUST_VOTE_KERNELS_OPENMP=0`` builds the kernels without OpenMP.

All tensors are float32, contiguous, on the CPU; shapes (B tiles, I children, O parents,
OCP = 4 O rounded up to a multiple of LANES, see :func:`transforms_for_kernels`) as in the C file:
    M (B, I, 16), Wt (I, 4, OCP), cc (B, O, 16), weights/projections (B, O, I), sums/coeff (B, O, 32),
    per-child values of a tile (B, I), per-parent values (B, O).
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
#: Set to 0 to build the kernels without OpenMP (tiles then split over Python threads).
OPENMP_ENV = "CAPSROBUST_VOTE_KERNELS_OPENMP"
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
_SIGNATURES = {  # every kernel ends in (I, O, threads, b0, b1)
    "cr_centre": [_f] * 3 + [_i, _i, _i, _l, _l],
    "cr_wsums": [_f] * 10 + [_i, _i, _i, _l, _l],
    "cr_proj": [_f] * 6 + [_i, _i, _i, _l, _l],
    "cr_estep": [_f] * 9 + [_i, _i, _i, _l, _l],
    "cr_mstep_backward": [_f] * 11 + [_i, _i, _i, _l, _l],
    "cr_vote_backward": [_f, _f, _f, _f, _f, _i, _f, _f, _f, _i, _i, _i, _l, _l],
}
#: Compiler flags for OpenMP: the kernels then split their tiles over PyTorch's own OpenMP threads.
OPENMP_FLAGS = ["-fopenmp"]


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
    openmp = OPENMP_FLAGS if _shares_openmp() else []
    key = hashlib.sha256(b"\0".join([source, " ".join(CFLAGS + openmp).encode(), compiler.encode(),
                                     platform.machine().encode(), _cpu_signature().encode()])).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"vote_kernels-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        for extra in (openmp, []):  # without OpenMP where that fails
            done = subprocess.run([compiler, *CFLAGS, *extra, "-o", str(partial), str(SOURCE), "-lm"],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                break
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, target)  # atomic: a concurrent process sees the whole library or none
    library = ctypes.CDLL(str(target))
    for name, argtypes in _SIGNATURES.items():
        getattr(library, name).argtypes = argtypes
        getattr(library, name).restype = None
    library.cr_openmp.restype = ctypes.c_int
    if (library.cr_lanes(), library.cr_max_oc()) != (LANES, MAX_OC):  # the Python side pads and checks by these
        raise RuntimeError(f"{target.name} disagrees with vote_kernels.py on LANES/MAX_OC")
    return library


def _shares_openmp() -> bool:
    """Whether PyTorch runs on GNU OpenMP (libgomp.so.1), the runtime ``-fopenmp`` links against.

    The kernel library then binds to the libgomp PyTorch has already loaded (same soname), so both
    use one thread pool. With another runtime (Intel's, LLVM's) two pools would compete for the
    cores, so the kernels are built without OpenMP and split their tiles over Python threads.
    """
    if os.environ.get(OPENMP_ENV, "1") == "0":
        return False
    info = torch.__config__.parallel_info()
    if "ATen parallel backend: OpenMP" not in info:
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "libgomp" in maps and "libiomp" not in maps and "libomp.so" not in maps


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


def _parts(tiles: int) -> int:
    """How many contiguous tile ranges (threads) a call splits into."""
    return max(1, min(torch.get_num_threads(), tiles))


def _lanes(types: int) -> int:
    """OCP: 4 * types rounded up to a multiple of LANES."""
    return -(-4 * types // LANES) * LANES


def _parallel(fn, tiles: int, args) -> None:
    """Run kernel ``fn`` over all tiles on :func:`_parts` threads.

    ``args(part)`` gives the kernel's arguments up to (I, O), with part ``part``'s scratch rows. A
    kernel built with OpenMP gets one call (part 0's pointers are the bases of the per-thread rows)
    and splits the tiles itself; otherwise each part's contiguous tile range goes to a Python thread.
    """
    global _pool, _pool_size
    parts = _parts(tiles)
    if library().cr_openmp():
        fn(*args(0), parts, 0, tiles)
        return
    bounds = [(tiles * p // parts, tiles * (p + 1) // parts) for p in range(parts)]
    if parts == 1:
        fn(*args(0), 1, *bounds[0])
        return
    with _lock:
        if _pool is None or _pool_size < parts:
            _pool, _pool_size = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="capsrobust-em"), parts
        pool = _pool
    futures = [pool.submit(fn, *args(p), 1, b0, b1) for p, (b0, b1) in enumerate(bounds)]
    for future in futures:
        future.result()


def _workspace(M: Tensor, floats: int) -> Tensor:
    """One scratch row of ``floats`` per thread part: (parts, floats)."""
    return M.new_empty((_parts(M.shape[0]), floats))


def _ptr(tensor: Tensor) -> int:
    return tensor.data_ptr()


def transforms_for_kernels(weight: Tensor) -> Tensor:
    """weight (I, O, 4, 4), W[i, o][k][c] -> Wt (I, 4, OCP): [i][k][o * 4 + c], zero-padded lanes."""
    slots, types = weight.shape[:2]
    wt = weight.new_zeros((slots, 4, _lanes(types)))
    wt[:, :, : 4 * types] = weight.permute(0, 2, 1, 3).reshape(slots, 4, 4 * types)
    return wt


def transforms_from_kernels(grad_wt: Tensor, types: int) -> Tensor:
    """The inverse layout change: (I, 4, OCP) -> (I, O, 4, 4), padding dropped."""
    slots = grad_wt.shape[0]
    return grad_wt[:, :, : 4 * types].reshape(slots, 4, types, 4).permute(0, 2, 1, 3)


def centre(M: Tensor, Wt: Tensor, types: int) -> Tensor:
    """cc (B, O, 16): the mean vote of every parent over its I children, M (B, I, 16), Wt (I, 4, OCP)
    (:func:`transforms_for_kernels`), O = ``types``."""
    lib = library()
    tiles, slots, _ = M.shape
    out = M.new_empty((tiles, types, 16))
    _parallel(lib.cr_centre, tiles, lambda p: (_ptr(M), _ptr(Wt), _ptr(out), slots, types))
    return out


def _opt(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def weighted_sums(M: Tensor, Wt: Tensor, cc: Tensor, weights: Tensor | None, *, extra: Tensor | None = None,
                  per_child: Tensor | None = None, mass: bool = False,
                  keep_weights: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Weighted vote sums with w = weights * (extra + per_child) built inside the kernel.

    weights, extra (B, O, I), per_child (B, I), each optional (see ``cr_wsums``: absent weights count
    as 1; without extra, w = weights * per_child; with neither, w = weights). Returns
    (sums (B, O, 32) = [sum_i w d, sum_i w d^2], mass (B, O) = sum_i w if ``mass``, w (B, O, I) if
    ``keep_weights``).
    """
    lib = library()
    tiles, slots, _ = M.shape
    types = cc.shape[1]
    out = M.new_empty((tiles, types, 32))
    total = M.new_empty((tiles, types)) if mass else None
    kept = M.new_empty((tiles, types, slots)) if keep_weights else None
    work = _workspace(M, slots * (types + _lanes(types)))
    _parallel(lib.cr_wsums, tiles, lambda p: (_ptr(M), _ptr(Wt), _ptr(cc), _opt(weights), _opt(extra),
                                               _opt(per_child), _ptr(out), _opt(total), _opt(kept), _ptr(work[p]),
                                               slots, types))
    return out, total, kept


def e_step(M: Tensor, Wt: Tensor, cc: Tensor, coeff: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """coeff (B, O, 32), offset (B, O) -> e (B, O, I), m (B, I), s (B, I).

    z = projections(coeff) + offset; m = max over the O parents, e = exp(z - m), s = sum_o e.
    """
    lib = library()
    tiles, slots, _ = M.shape
    types = cc.shape[1]
    e, m, s = M.new_empty((tiles, types, slots)), M.new_empty((tiles, slots)), M.new_empty((tiles, slots))
    work = _workspace(M, slots * _lanes(types))
    _parallel(lib.cr_estep, tiles, lambda p: (_ptr(M), _ptr(Wt), _ptr(cc), _ptr(coeff), _ptr(offset), _ptr(e),
                                               _ptr(m), _ptr(s), _ptr(work[p]), slots, types))
    return e, m, s


def m_step_backward(M: Tensor, Wt: Tensor, cc: Tensor, e: Tensor | None, factor: Tensor, g_sums: Tensor,
                    g_mass: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
    """Backward of w = e * factor (e (B, O, I) or None for 1, factor (B, I)) through sums and mass.

    g_w = projections(g_sums) + g_mass; returns (d e = g_w factor or None, d factor = sum_o g_w e,
    w (B, O, I), the weights the vote gradient needs).
    """
    lib = library()
    tiles, slots, _ = M.shape
    types = cc.shape[1]
    g_e = M.new_empty((tiles, types, slots)) if e is not None else None
    g_factor, weights = M.new_empty((tiles, slots)), M.new_empty((tiles, types, slots))
    work = _workspace(M, slots * (types + _lanes(types)))
    _parallel(lib.cr_mstep_backward, tiles, lambda p: (
        _ptr(M), _ptr(Wt), _ptr(cc), _opt(e), _ptr(factor), _ptr(g_sums), _ptr(g_mass), _opt(g_e), _ptr(g_factor),
        _ptr(weights), _ptr(work[p]), slots, types))
    return g_e, g_factor, weights


def projections(M: Tensor, Wt: Tensor, cc: Tensor, coeff: Tensor) -> Tensor:
    """coeff (B, O, 32) -> (B, O, I): sum over the 16 entries of coeff[:16] d + coeff[16:] d^2."""
    lib = library()
    tiles, slots, _ = M.shape
    types = cc.shape[1]
    out = M.new_empty((tiles, types, slots))
    work = _workspace(M, slots * _lanes(types))
    _parallel(lib.cr_proj, tiles, lambda p: (_ptr(M), _ptr(Wt), _ptr(cc), _ptr(coeff), _ptr(out), _ptr(work[p]),
                                              slots, types))
    return out


def vote_backward(M: Tensor, Wt: Tensor, cc: Tensor, left: list[Tensor], right: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Gradients (dM (B, I, 16), dWt (I, 4, OCP)) from factor pairs left_k (B, O, I), right_k (B, O, 32)."""
    lib = library()
    tiles, slots, _ = M.shape
    types = cc.shape[1]
    parts = _parts(tiles)
    grad_m = torch.zeros_like(M)
    grad_wt = Wt.new_zeros((parts,) + tuple(Wt.shape))  # one buffer per thread, summed below
    work = _workspace(M, min(MAX_PAIRS, len(left)) * slots * _lanes(types))
    for start in range(0, len(left), MAX_PAIRS):
        lefts, rights = left[start:start + MAX_PAIRS], right[start:start + MAX_PAIRS]
        left_ptrs = (ctypes.c_void_p * len(lefts))(*[_ptr(t) for t in lefts])
        right_ptrs = (ctypes.c_void_p * len(rights))(*[_ptr(t) for t in rights])
        _parallel(lib.cr_vote_backward, tiles, lambda p: (
            _ptr(M), _ptr(Wt), _ptr(cc), ctypes.addressof(left_ptrs), ctypes.addressof(right_ptrs), len(lefts),
            _ptr(grad_m), _ptr(grad_wt[p]), _ptr(work[p]), slots, types))
    return grad_m, grad_wt.sum(0)


if sys.platform == "win32":  # pragma: no cover - the build recipe above is for gcc/clang
    os.environ.setdefault(DISABLE_ENV, "0")
