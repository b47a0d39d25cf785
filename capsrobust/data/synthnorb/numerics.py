"""Vector maths for the renderer that rounds the same way on every CPU.

PyTorch compiles its kernels once per vector unit (``ATEN_CPU_CAPABILITY``: default, AVX2,
AVX512) and picks one at start-up. Element-wise ``+ - * /`` and ``sqrt`` are IEEE operations
and give identical bits in every build, but reductions and fused kernels need not: measured on
PyTorch 2.14, ``Tensor.norm`` over a strided dimension, ``torch.nn.functional.normalize`` and the
float32 Gaussian sampler (vectorised ``log``/``sin``/``cos`` in ``Tensor.normal_``) round the last
bit differently under AVX512 and ``default``, and one synthnorb pixel in a few million then
landed on another grey level. The renderer therefore builds these from element-wise operations
in a fixed order (lengths and the noise transform in float64, rounded once to the working dtype)
and takes angles' sines and cosines from Python's ``math`` (the C library, not a vector kernel).
"""

from __future__ import annotations

import math

import torch

__all__ = ["cos_sin_deg", "cross", "dot", "gaussian_noise", "length", "normalize"]


def dot(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """``(a * b).sum(dim)`` (a and b broadcast), summed left to right: ``(a0 b0 + a1 b1) + a2 b2 ...``."""
    a, b = torch.broadcast_tensors(a, b)
    pairs = zip(a.unbind(dim), b.unbind(dim))
    x, y = next(pairs)
    total = x * y
    for x, y in pairs:
        total = total + x * y
    return total


def length(x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """Euclidean length along ``dim``: squares summed in float64 in index order, square root,
    rounded once to ``x``'s dtype (exact for float32 inputs up to that last rounding)."""
    parts = x.double().unbind(dim)
    total = parts[0] * parts[0]
    for part in parts[1:]:
        total = total + part * part
    out = total.sqrt().to(x.dtype)
    return out.unsqueeze(dim) if keepdim else out


def normalize(x: torch.Tensor, dim: int, eps: float = 1e-12) -> torch.Tensor:
    """``x / max(length, eps)`` along ``dim``, as ``torch.nn.functional.normalize`` (p=2) defines it."""
    return x / length(x, dim, keepdim=True).clamp_min(eps)


def cross(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Cross product along ``dim`` (size 3) from separate multiplications and subtractions (no fused multiply-add)."""
    a0, a1, a2 = a.unbind(dim)
    b0, b1, b2 = b.unbind(dim)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim)


def cos_sin_deg(degrees: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine (float64, same shape) of angles in degrees, by the C library's ``cos``/``sin``."""
    flat = [math.radians(v) for v in degrees.double().flatten().tolist()]
    cos = torch.tensor([math.cos(v) for v in flat], dtype=torch.float64).reshape(degrees.shape)
    sin = torch.tensor([math.sin(v) for v in flat], dtype=torch.float64).reshape(degrees.shape)
    return cos, sin


def gaussian_noise(seeds, size: int, std: float) -> torch.Tensor:
    """(len(seeds), size) float32 samples of N(0, std^2); row i from a generator seeded with ``seeds[i]``.

    The numbers ``torch.Tensor.normal_(0, std, generator=...)`` draws into a float32 tensor of
    ``size`` (>= 16) elements, which synthnorb 1.0 used, computed reproducibly: the same uniform
    draws (24-bit floats, one per element, in order), the same Box-Muller pairing (blocks of 16,
    element j with j + 8: ``r cos(theta)`` and ``r sin(theta)`` with ``r = sqrt(-2 log(1 - u_j))``,
    ``theta = 2 pi u_{j+8}``; a tail shorter than 16 is recomputed from 16 fresh draws over the
    last 16 elements), but the transform runs in float64 and is rounded once to float32, where
    PyTorch's vectorised float32 ``log``/``sin``/``cos`` differ between CPUs in the last bit.
    """
    if size < 16:
        raise ValueError(f"noise needs at least 16 values per row, got {size}")
    blocks, tail = divmod(size, 16)
    uniforms = torch.empty(len(seeds), size + (16 if tail else 0), dtype=torch.float32)
    gen = torch.Generator()
    for i, seed in enumerate(seeds):
        gen.manual_seed(int(seed))
        uniforms[i].uniform_(0.0, 1.0, generator=gen)  # the uniform draws normal_ makes, in order
    used = uniforms[:, : blocks * 16]
    if tail:  # normal_ draws `size` values, transforms the whole blocks, then 16 fresh ones for the end
        used = torch.cat([used, uniforms[:, size:]], 1)
    u = used.double().reshape(len(seeds), -1, 2, 8)
    radius = (-2.0 * torch.log(1.0 - u[:, :, 0])).sqrt()  # 1 - u is exact and in (0, 1]
    theta = 2.0 * math.pi * u[:, :, 1]
    z = (torch.stack([radius * theta.cos(), radius * theta.sin()], 2).reshape(len(seeds), -1) * std).float()
    if tail:
        z = torch.cat([z[:, : size - 16], z[:, blocks * 16 :]], 1)
    return z
