"""Pinhole stereo cameras on NORB's viewing sphere.

smallNORB photographed each toy on a turntable (azimuth) with a camera pair moved along an arc
(elevation), both cameras aimed at the toy. Here the toy stays fixed (world frame of
:mod:`~capsrobust.data.synthnorb.shapes`: x forward, z up) and the camera pair orbits it: azimuth
0° looks at the toy's front, azimuth grows counter-clockwise seen from above, elevation is the
angle above the horizontal. The two cameras of a pair sit side by side (horizontal baseline) and
both aim at the target point (toe-in), ``stereo_deg`` apart as seen from the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from capsrobust.data.synthnorb.numerics import cos_sin_deg, cross, normalize

__all__ = ["CameraRig", "DEFAULT_RIG", "camera_frames", "stereo_rays"]


@dataclass(frozen=True)
class CameraRig:
    """Camera geometry, in units of the toy's largest side (toys are normalised to size 1).

    distance: from the camera pair's midpoint to the target; fov_deg: full field of view of the
    square image; stereo_deg: angle between the two cameras seen from the target; size: pixels per side.
    """

    distance: float = 4.5
    fov_deg: float = 15.0
    stereo_deg: float = 4.0
    size: int = 96


DEFAULT_RIG = CameraRig()


def camera_frames(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit vectors (each (V, 3)) from the target towards the camera, and the camera's right and up axes."""
    (az_cos, az_sin), (el_cos, el_sin) = cos_sin_deg(azimuth_deg), cos_sin_deg(elevation_deg)
    back = torch.stack([el_cos * az_cos, el_cos * az_sin, el_sin], 1)
    # right = forward x up_world with forward = -back; at the horizon this is (sin az, -cos az, 0).
    right = torch.stack([az_sin, -az_cos, torch.zeros_like(az_cos)], 1)
    up = cross(right, -back)
    return back, right, up


def stereo_rays(
    azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor, target: torch.Tensor, rig: CameraRig = DEFAULT_RIG
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and directions for both cameras of each view.

    azimuth_deg, elevation_deg: (V,); target: (V, 3) the point both cameras aim at.
    Returns ``origins`` (V, 2, 3) and ``dirs`` (V, 2, 3, size*size), pixels in row-major order
    (row 0 = top of the image), camera 0 on the left of the pair. Directions are not normalised
    (ray casting does not need it; their length is 1 on the optical axis).
    """
    back, right, _ = camera_frames(azimuth_deg, elevation_deg)
    half_base = rig.distance * math.tan(math.radians(rig.stereo_deg / 2))
    centre = target.double() + rig.distance * back  # (V, 3)
    origins = torch.stack([centre - half_base * right, centre + half_base * right], 1)  # (V, 2, 3)
    forward = normalize(target.double()[:, None] - origins, dim=-1)  # (V, 2, 3)
    z_up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(forward)
    cam_right = normalize(cross(forward, z_up, dim=-1), dim=-1)
    cam_up = cross(cam_right, forward, dim=-1)
    n = rig.size
    span = math.tan(math.radians(rig.fov_deg / 2))
    coords = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1  # pixel centres in [-1, 1]
    ys, xs = torch.meshgrid(-coords * span, coords * span, indexing="ij")  # row 0 at the top
    forward, cam_right, cam_up = forward.float(), cam_right.float(), cam_up.float()
    dirs = (forward[..., None] + cam_right[..., None] * xs.float().reshape(1, 1, 1, -1)
            + cam_up[..., None] * ys.float().reshape(1, 1, 1, -1))
    return origins.float(), dirs
