"""Convex primitives (ellipsoid, box, capped cylinder) and exact ray intersection against them.

A toy is a union of primitives. Each primitive is an affine image of a unit shape -- the unit
sphere, the cube ``[-1, 1]^3`` or the capped cylinder ``x^2 + y^2 <= 1, |z| <= 1`` -- under
``world = centre + rotation @ (half_size * local)``. A ray is mapped into that unit frame, where
each intersection is a closed form (a quadratic or a slab test), so rendering is exact and needs
no marching steps. Every primitive is convex, so a ray meets it in one interval ``[t_in, t_out]``
and the first visible surface is ``min`` over primitives of ``t_in``.

World frame (all toys): x forward (the toy's front), y to its left, z up; the toy stands on z = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from capsrobust.data.synthnorb import numerics

__all__ = [
    "BOX",
    "CYLINDER",
    "ELLIPSOID",
    "Part",
    "Toy",
    "assemble",
    "box",
    "cylinder",
    "ellipsoid",
    "intersect",
    "rotation",
    "surface_normals",
]

ELLIPSOID, BOX, CYLINDER = 0, 1, 2
_KINDS = (ELLIPSOID, BOX, CYLINDER)
_INF = float("inf")


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` (local -> world) from angles in degrees: ``Rz(yaw) @ Ry(pitch) @ Rx(roll)``.

    Positive pitch tips the local +x axis *up* (nose up), positive yaw turns it to the left (+y).
    """
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cp, sp = math.cos(math.radians(-pitch)), math.sin(math.radians(-pitch))
    cr, sr = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return rz @ ry @ rx


def _frame_along(axis: np.ndarray) -> np.ndarray:
    """A rotation ``(3, 3)`` whose third column is the unit vector ``axis``."""
    z = axis / np.linalg.norm(axis)
    helper = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


@dataclass(frozen=True)
class Part:
    """One primitive: ``kind``, ``centre (3,)``, ``rot (3, 3)`` local->world, ``half (3,)`` semi-axes, ``albedo``."""

    kind: int
    centre: np.ndarray
    rot: np.ndarray
    half: np.ndarray
    albedo: float

    def corners(self) -> np.ndarray:
        """World coordinates ``(8, 3)`` of the local bounding box (a conservative hull of the part)."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        return self.centre + (signs * self.half) @ self.rot.T


def ellipsoid(centre: Sequence[float], half: Sequence[float], albedo: float, rot: np.ndarray | None = None) -> Part:
    """An ellipsoid with semi-axes ``half`` (local x, y, z) at ``centre``."""
    return Part(ELLIPSOID, np.asarray(centre, float), np.eye(3) if rot is None else rot, np.asarray(half, float), albedo)


def box(centre: Sequence[float], half: Sequence[float], albedo: float, rot: np.ndarray | None = None) -> Part:
    """A box with half-extents ``half`` (local x, y, z) at ``centre``."""
    return Part(BOX, np.asarray(centre, float), np.eye(3) if rot is None else rot, np.asarray(half, float), albedo)


def cylinder(start: Sequence[float], end: Sequence[float], radius: float, albedo: float,
             radius2: float | None = None) -> Part:
    """A capped cylinder from ``start`` to ``end`` (world points); elliptic if ``radius2`` is given."""
    a, b = np.asarray(start, float), np.asarray(end, float)
    axis = b - a
    length = float(np.linalg.norm(axis))
    half = np.array([radius, radius if radius2 is None else radius2, length / 2])
    return Part(CYLINDER, (a + b) / 2, _frame_along(axis), half, albedo)


@dataclass(frozen=True)
class Toy:
    """A toy as tensors, parts sorted by kind so each kind is intersected in one batched call.

    kind: (P,) int64; centre: (P, 3); rot: (P, 3, 3) local->world; half: (P, 3); albedo: (P,);
    to_local: (P, 3, 3) = diag(1/half) @ rot.T, the world->unit-frame linear map.
    """

    kind: torch.Tensor
    centre: torch.Tensor
    rot: torch.Tensor
    half: torch.Tensor
    albedo: torch.Tensor
    to_local: torch.Tensor

    @property
    def num_parts(self) -> int:
        return int(self.kind.shape[0])

    def slices(self) -> list[tuple[int, slice]]:
        """``(kind, slice of parts)`` for each kind present, in part order."""
        out = []
        for k in _KINDS:
            idx = (self.kind == k).nonzero().flatten()
            if len(idx):
                out.append((k, slice(int(idx[0]), int(idx[-1]) + 1)))
        return out


def assemble(parts: Sequence[Part], *, size: float = 1.0) -> Toy:
    """Stack parts into a :class:`Toy`, centred on its bounding box and scaled so its largest side is ``size``."""
    parts = sorted(parts, key=lambda p: p.kind)  # stable: keeps the builder's order within a kind
    corners = np.concatenate([p.corners() for p in parts])
    lo, hi = corners.min(0), corners.max(0)
    middle, scale = (lo + hi) / 2, size / float((hi - lo).max())
    f32 = dict(dtype=torch.float32)
    centre = torch.tensor(np.stack([(p.centre - middle) * scale for p in parts]), **f32)
    rot = torch.tensor(np.stack([p.rot for p in parts]), **f32)
    half = torch.tensor(np.stack([p.half * scale for p in parts]), **f32)
    to_local = torch.diag_embed(1.0 / half) @ rot.transpose(1, 2)
    return Toy(
        kind=torch.tensor([p.kind for p in parts], dtype=torch.int64),
        centre=centre, rot=rot, half=half,
        albedo=torch.tensor([p.albedo for p in parts], **f32),
        to_local=to_local,
    )


def _entry_ellipsoid(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit sphere. o: (B, P, 3, 1) or (B, P, 3, N); d: (B, P, 3, N) -> (t_in, t_out) each (B, P, N)."""
    a = numerics.dot(d, d, 2)
    b = numerics.dot(o, d, 2)
    c = numerics.dot(o, o, 2) - 1.0
    disc = b * b - a * c
    root = disc.clamp_min(0.0).sqrt()
    miss = disc < 0
    t_in = ((-b - root) / a).masked_fill(miss, _INF)
    t_out = ((-b + root) / a).masked_fill(miss, -_INF)
    return t_in, t_out


def _slab(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval where ``|o + t d| <= 1`` per axis. o, d broadcastable to (..., N) -> (lo, hi)."""
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1, t2 = (-1.0 - o) * inv, (1.0 - o) * inv
    return torch.minimum(t1, t2), torch.maximum(t1, t2)


def _entry_box(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit cube. Shapes as :func:`_entry_ellipsoid`."""
    lo, hi = _slab(o, d)
    return lo.amax(2), hi.amin(2)


def _entry_cylinder(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit capped cylinder along local z. Shapes as :func:`_entry_ellipsoid`."""
    oxy, dxy = o[:, :, :2], d[:, :, :2]
    a = numerics.dot(dxy, dxy, 2).clamp_min(1e-12)
    b = numerics.dot(oxy, dxy, 2)
    c = numerics.dot(oxy, oxy, 2) - 1.0
    disc = b * b - a * c
    root = disc.clamp_min(0.0).sqrt()
    miss = disc < 0
    s_in = ((-b - root) / a).masked_fill(miss, _INF)
    s_out = ((-b + root) / a).masked_fill(miss, -_INF)
    z_lo, z_hi = _slab(o[:, :, 2], d[:, :, 2])
    return torch.maximum(s_in, z_lo), torch.minimum(s_out, z_hi)


_ENTRY = {ELLIPSOID: _entry_ellipsoid, BOX: _entry_box, CYLINDER: _entry_cylinder}


def intersect(toy: Toy, origins: torch.Tensor, dirs: torch.Tensor, t_min: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """First hit of each ray with the toy.

    origins: (B, 3) one origin per view (a pinhole camera) or (B, 3, N) one per ray;
    dirs: (B, 3, N) world directions (any length). Returns ``t`` (B, N), ``inf`` where the ray
    misses, so the hit point is ``origin + t * dir``, and ``part`` (B, N) int64, the index of the
    part hit (0 where missed).
    """
    per_ray = origins.dim() == 3
    rel = origins[:, None] - toy.centre[None, :, :, None] if per_ray else (origins[:, None] - toy.centre[None])[..., None]
    o_loc = torch.einsum("pij,bpjn->bpin", toy.to_local, rel)  # (B, P, 3, 1 or N)
    d_loc = torch.einsum("pij,bjn->bpin", toy.to_local, dirs)  # (B, P, 3, N)
    entries = []
    for kind, sl in toy.slices():
        t_in, t_out = _ENTRY[kind](o_loc[:, sl], d_loc[:, sl])
        valid = (t_in <= t_out) & (t_out > t_min)
        entries.append(torch.where(valid, t_in.clamp_min(t_min), torch.full_like(t_in, _INF)))
    t_all = torch.cat(entries, 1)  # (B, P, N)
    t, part = t_all.min(1)
    return t, part


def surface_normals(toy: Toy, points: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """Unit outward normals (B, 3, N) at world ``points`` (B, 3, N) lying on parts ``part`` (B, N)."""
    centre = toy.centre[part].permute(0, 2, 1)  # (B, 3, N)
    to_local = toy.to_local[part]  # (B, N, 3, 3)
    u = torch.einsum("bnij,bjn->bin", to_local, points - centre)  # unit-frame coordinates (B, 3, N)
    kind = toy.kind[part][:, None]  # (B, 1, N)
    # Box: the face is the axis with the largest |u|.
    axis = u.abs().argmax(1, keepdim=True)
    n_box = torch.zeros_like(u).scatter_(1, axis, 1.0) * u.sign()
    # Cylinder: on a cap if |z| dominates the radial distance, else on the side.
    radial = numerics.length(u[:, :2], dim=1, keepdim=True)
    on_cap = u[:, 2:3].abs() > radial
    n_cyl = torch.where(on_cap, torch.cat([torch.zeros_like(u[:, :2]), u[:, 2:3].sign()], 1),
                        torch.cat([u[:, :2], torch.zeros_like(u[:, 2:3])], 1))
    n_loc = torch.where(kind == ELLIPSOID, u, torch.where(kind == BOX, n_box, n_cyl))
    # Normals transform with the inverse transpose: world n = rot @ (n_loc / half).
    n_world = torch.einsum("bnij,bjn->bin", toy.to_local[part].transpose(2, 3), n_loc)
    return numerics.normalize(n_world, dim=1)
