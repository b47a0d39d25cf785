"""Render stereo views of a toy under NORB's six lighting conditions.

One pass of ray casting per camera finds the visible surface (its normal and albedo); the six
lightings only re-shade that surface, so geometry is computed once per view, not once per image.
Shading is diffuse: ``albedo * (ambient + sum_k intensity_k * max(0, n . l_k) * visible_k)``, with
shadow rays for the key lights (self-shadowing; the background has no floor, so no cast shadows
on it). The lights are fixed in the room while the toy turns on its turntable, as in smallNORB:
each light's azimuth is given relative to the camera's.

Same seed, same bytes on every CPU: the arithmetic is float32, but every operation whose rounding
depends on the CPU's vector unit (lengths, normalisation, the Gaussian sampler's transform, sines
and cosines) comes from :mod:`~capsrobust.data.synthnorb.numerics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from capsrobust.data.synthnorb.camera import DEFAULT_RIG, CameraRig, stereo_rays
from capsrobust.data.synthnorb.numerics import cos_sin_deg, dot, gaussian_noise
from capsrobust.data.synthnorb.shapes import Toy, intersect, surface_normals

__all__ = ["LIGHTINGS", "Light", "Lighting", "finish", "render_views"]


@dataclass(frozen=True)
class Light:
    """A directional light: azimuth relative to the camera's (degrees), altitude above the horizon, intensity."""

    azimuth: float
    altitude: float
    intensity: float


@dataclass(frozen=True)
class Lighting:
    """One lighting condition: its lights, the ambient term and the background grey level (0-1)."""

    lights: tuple[Light, ...]
    ambient: float
    background: float


#: The six lighting conditions (index = the ``lighting`` column of ``info``).
LIGHTINGS: tuple[Lighting, ...] = (
    Lighting((Light(55, 50, 0.80),), 0.22, 0.72),  # key light upper left
    Lighting((Light(-60, 40, 0.80),), 0.22, 0.70),  # key light upper right
    Lighting((Light(10, 80, 0.75),), 0.28, 0.76),  # overhead
    Lighting((Light(0, 20, 0.60),), 0.32, 0.66),  # low, from the camera: flat
    Lighting((Light(80, 35, 0.45), Light(-80, 35, 0.45)), 0.20, 0.62),  # two side lights
    Lighting((Light(150, 45, 0.70), Light(-20, 60, 0.25)), 0.26, 0.58),  # back-lit, dim fill
)


def _light_dirs(azimuth_deg: torch.Tensor, light: Light) -> torch.Tensor:
    """World direction (V, 3) towards ``light`` for cameras at ``azimuth_deg`` (V,)."""
    az_cos, az_sin = cos_sin_deg(azimuth_deg.double() + light.azimuth)
    alt = math.radians(light.altitude)
    return torch.stack([math.cos(alt) * az_cos, math.cos(alt) * az_sin,
                        torch.full_like(az_cos, math.sin(alt))], 1).float()


def render_views(
    toy: Toy,
    azimuth_deg: torch.Tensor,
    elevation_deg: torch.Tensor,
    target: torch.Tensor,
    lightings: tuple[int, ...] = tuple(range(len(LIGHTINGS))),
    rig: CameraRig = DEFAULT_RIG,
    shadows: bool = True,
) -> torch.Tensor:
    """Noise-free float images of ``toy`` for V views.

    azimuth_deg, elevation_deg: (V,) degrees; target: (V, 3) aim point (the toy's centre plus any
    jitter). Returns (V, len(lightings), 2, size, size) float32 in [0, 1]; axis 2 is the stereo pair.
    """
    views = azimuth_deg.shape[0]
    n = rig.size
    origins, dirs = stereo_rays(azimuth_deg, elevation_deg, target, rig)
    origins, dirs = origins.reshape(views * 2, 3), dirs.reshape(views * 2, 3, n * n)
    t, part = intersect(toy, origins, dirs)  # (B, N) with B = 2V
    hit = torch.isfinite(t)
    points = origins[..., None] + torch.where(hit, t, 0.0)[:, None] * dirs  # (B, 3, N)
    normals = surface_normals(toy, points, part)
    albedo = toy.albedo[part]
    cam_az = azimuth_deg.repeat_interleave(2)
    lifted = points + 2e-3 * normals  # start shadow rays just off the surface

    out = torch.empty(views * 2, len(lightings), n * n)
    visibility: dict[tuple[float, float], torch.Tensor] = {}
    for j, index in enumerate(lightings):
        lighting = LIGHTINGS[index]
        radiance = torch.full_like(t, lighting.ambient)
        for light in lighting.lights:
            l_dir = _light_dirs(cam_az, light)  # (B, 3)
            lambert = dot(normals, l_dir[..., None], 1).clamp_min(0.0)
            if shadows and light.intensity >= 0.5:
                key = (light.azimuth, light.altitude)
                if key not in visibility:
                    visibility[key] = _unshadowed(toy, lifted, l_dir, hit & (lambert > 0))
                lambert = lambert * visibility[key]
            radiance = radiance + light.intensity * lambert
        out[:, j] = torch.where(hit, albedo * radiance, lighting.background)
    return out.reshape(views, 2, len(lightings), n, n).transpose(1, 2).clamp_(0.0, 1.0)


def _unshadowed(toy: Toy, points: torch.Tensor, l_dir: torch.Tensor, lit: torch.Tensor) -> torch.Tensor:
    """1.0 where the light is visible from ``points`` (B, 3, N), else 0; only pixels ``lit`` (B, N) are cast."""
    flat_idx = lit.nonzero(as_tuple=False)  # (K, 2): view, pixel
    result = torch.ones(lit.shape)
    if flat_idx.shape[0] == 0:
        return result
    for start in range(0, flat_idx.shape[0], _SHADOW_CHUNK):
        b, p = flat_idx[start : start + _SHADOW_CHUNK].T
        origins = points[b, :, p].T[None]  # (1, 3, K)
        dirs = l_dir[b].T[None]  # (1, 3, K)
        t, _ = intersect(toy, origins, dirs)
        result[b, p] = torch.isfinite(t[0]).logical_not().float()
    return result


_SHADOW_CHUNK = 32768  # shadow rays per intersection call: bounds memory at ~P * 3 * chunk floats


_BLUR_SIDE = 0.2  # 3-tap kernel (0.2, 0.6, 0.2) per axis ~ a 0.5 px Gaussian: lens softness and anti-aliasing


def _blur3(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Separable 3-tap blur along ``dim`` with replicated edges (slicing is far faster than conv2d here)."""
    n = x.shape[dim]
    left = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
    right = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
    return x * (1 - 2 * _BLUR_SIDE) + (left + right) * _BLUR_SIDE


def finish(images: torch.Tensor, noise_seeds: np.ndarray, noise_std: float = 2.0) -> np.ndarray:
    """Blur slightly, add seeded Gaussian sensor noise, quantise.

    images: (M, 2, H, W) float in [0, 1]; noise_seeds: (M,) uint64, one per stereo pair (the same
    seed always gives the same noise, whatever else is rendered). Returns (M, 2, H, W) uint8.
    """
    m, c, h, w = images.shape
    x = _blur3(_blur3(images * 255.0, -1), -2)
    noise = gaussian_noise(noise_seeds, c * h * w, noise_std).reshape(m, c, h, w)
    return (x + noise).round_().clamp_(0, 255).to(torch.uint8).numpy()
