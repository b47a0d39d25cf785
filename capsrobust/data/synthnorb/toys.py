"""Parametric models of the five NORB categories, ten toy instances each.

Each category has one builder (parameters -> list of :class:`~capsrobust.data.synthnorb.shapes.Part`)
and ten *archetypes*: parameter sets for different kinds of toy, differing in shape, proportions,
pose and parts (a giraffe and a hippo, a biplane and an airliner), as smallNORB's instances do.
The dataset seed perturbs every continuous parameter of every archetype (lengths by up to ±10 %,
angles by up to ±6°), so a seed fixes a whole "toy box". Instance numbers follow smallNORB: 4, 6,
7, 8, 9 are training toys, 0, 1, 2, 3, 5 test toys, so the test set holds toys never seen in training.

World frame: x forward (the toy faces +x), y left, z up; toys stand on z = 0. Lengths are in
arbitrary units; :func:`~capsrobust.data.synthnorb.shapes.assemble` rescales every toy so its
largest side is 1, as NORB's photographer framed every toy to fill the image.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from capsrobust.data.synthnorb.shapes import Part, Toy, assemble, box, cylinder, ellipsoid, rotation

__all__ = ["ARCHETYPES", "CATEGORIES", "NUM_INSTANCES", "build_toy", "toy_parameters"]

#: Label order of smallNORB's ``cat`` files.
CATEGORIES: tuple[str, ...] = ("animal", "human", "airplane", "truck", "car")
NUM_INSTANCES = 10

DARK = 0.18  # tyres, windows, eyes of a toy


def _deg(a: float) -> float:
    return math.radians(a)


# --------------------------------------------------------------------------------------- animal
def _animal(p: dict[str, Any]) -> list[Part]:
    bl, bw, bh = p["body_len"] / 2, p["body_w"] / 2, p["body_h"] / 2
    leg, lr, a = p["leg_len"], p["leg_r"], p["albedo"]
    zc = leg + bh * 0.55
    parts = [ellipsoid((0, 0, zc), (bl, bw, bh), a)]
    stride = p["stride_deg"]
    for sx, swing in ((1, stride), (-1, -stride)):
        for sy in (1, -1):
            top = np.array([sx * bl * 0.62, sy * bw * 0.55, zc])
            foot = top + np.array([math.sin(_deg(swing * sy)) * leg, 0, -zc + lr * 0.3])
            foot[2] = lr * 0.3
            parts.append(cylinder(top, foot, lr, a * p["leg_shade"]))
    # Neck and head.
    neck_base = np.array([bl * 0.75, 0, zc + bh * 0.35])
    na = _deg(p["neck_deg"])
    neck_end = neck_base + p["neck_len"] * np.array([math.cos(na), 0, math.sin(na)])
    if p["neck_len"] > 0.05:
        parts.append(cylinder(neck_base, neck_end, p["neck_r"], a))
    hl, hw, hh = p["head_len"] / 2, p["head_w"] / 2, p["head_h"] / 2
    pitch = p["head_pitch_deg"]
    head_rot = rotation(pitch=pitch)
    head_c = neck_end + head_rot @ np.array([hl * 0.6, 0, hh * 0.3])
    parts.append(ellipsoid(head_c, (hl, hw, hh), a, head_rot))
    nose = head_c + head_rot @ np.array([hl, 0, -hh * 0.2])
    if p["snout"] > 0:
        s = p["snout"]
        parts.append(ellipsoid(head_c + head_rot @ np.array([hl * 0.9, 0, -hh * 0.3]), (s, hw * 0.55, hh * 0.5), a, head_rot))
        nose = head_c + head_rot @ np.array([hl * 0.9 + s, 0, -hh * 0.3])
    ear = p["ear"]
    if ear > 0:
        for sy in (1, -1):
            if p["ear_flat"]:  # elephant ears: large discs beside the head
                parts.append(ellipsoid(head_c + np.array([-hl * 0.4, sy * hw * 1.05, hh * 0.1]),
                                       (ear * 0.45, ear * 0.12, ear), a * 0.92, rotation(yaw=sy * 15)))
            else:
                parts.append(ellipsoid(head_c + head_rot @ np.array([-hl * 0.3, sy * hw * 0.55, hh * 0.9]),
                                       (ear * 0.35, ear * 0.3, ear), a, rotation(roll=sy * 20)))
    if p["trunk"] > 0:
        parts.append(cylinder(nose, nose + np.array([0.12, 0, -p["trunk"]]), p["head_w"] * 0.13, a))
    if p["horn"] > 0:
        if p["horn_nose"]:  # rhino: one horn on the snout
            parts.append(cylinder(nose - head_rot @ np.array([0.05, 0, -hh * 0.2]),
                                  nose + np.array([0.05, 0, p["horn"]]), p["horn"] * 0.22, 0.85, p["horn"] * 0.18))
        else:
            for sy in (1, -1):
                base = head_c + head_rot @ np.array([-hl * 0.2, sy * hw * 0.45, hh * 0.8])
                parts.append(cylinder(base, base + np.array([-0.02, sy * p["horn"] * 0.5, p["horn"]]),
                                      p["horn"] * 0.12, 0.85))
    if p["mane"] > 0:
        parts.append(ellipsoid(neck_end + np.array([-0.05, 0, -0.02]), (p["mane"] * 0.8, p["mane"], p["mane"] * 1.1),
                               a * 0.75))
    if p["tail_len"] > 0:
        ta = _deg(p["tail_deg"])
        base = np.array([-bl * 0.92, 0, zc + bh * 0.3])
        parts.append(cylinder(base, base + p["tail_len"] * np.array([-math.cos(ta), 0, math.sin(ta)]),
                              p["tail_r"], a * 0.85))
    return parts


_ANIMAL_BASE = dict(body_len=1.2, body_w=0.45, body_h=0.5, leg_len=0.6, leg_r=0.07, leg_shade=0.95, stride_deg=0.0,
                    neck_len=0.4, neck_deg=50.0, neck_r=0.12, head_len=0.4, head_w=0.24, head_h=0.24,
                    head_pitch_deg=-20.0, snout=0.0, ear=0.08, ear_flat=False, trunk=0.0, horn=0.0,
                    horn_nose=False, mane=0.0, tail_len=0.45, tail_deg=-50.0, tail_r=0.035, albedo=0.8)

_ANIMALS: list[dict[str, Any]] = [
    dict(name="horse", body_len=1.45, body_h=0.55, leg_len=0.95, leg_r=0.075, neck_len=0.65, neck_deg=58,
         neck_r=0.13, head_len=0.55, head_w=0.2, head_h=0.22, head_pitch_deg=-55, ear=0.07, tail_len=0.7,
         tail_deg=-65, tail_r=0.06, stride_deg=8, albedo=0.62),
    dict(name="dog", body_len=1.0, body_w=0.38, body_h=0.38, leg_len=0.5, leg_r=0.07, neck_len=0.25, neck_deg=45,
         head_len=0.38, head_w=0.28, head_h=0.28, head_pitch_deg=0, snout=0.14, ear=0.1, tail_len=0.4,
         tail_deg=40, tail_r=0.04, albedo=0.78),
    dict(name="elephant", body_len=1.45, body_w=0.85, body_h=0.85, leg_len=0.7, leg_r=0.17, neck_len=0.0,
         head_len=0.55, head_w=0.55, head_h=0.6, head_pitch_deg=-10, ear=0.42, ear_flat=True, trunk=0.75,
         tail_len=0.35, tail_deg=-70, tail_r=0.03, albedo=0.58),
    dict(name="giraffe", body_len=1.0, body_w=0.4, body_h=0.5, leg_len=1.3, leg_r=0.06, neck_len=1.35, neck_deg=68,
         neck_r=0.09, head_len=0.38, head_w=0.16, head_h=0.18, head_pitch_deg=-20, ear=0.06, horn=0.12,
         tail_len=0.45, tail_deg=-70, albedo=0.86),
    dict(name="cat", body_len=0.95, body_w=0.3, body_h=0.33, leg_len=0.45, leg_r=0.055, neck_len=0.18, neck_deg=55,
         neck_r=0.09, head_len=0.3, head_w=0.3, head_h=0.27, head_pitch_deg=0, ear=0.1, tail_len=0.75,
         tail_deg=55, tail_r=0.035, stride_deg=10, albedo=0.72),
    dict(name="hippo", body_len=1.6, body_w=0.85, body_h=0.75, leg_len=0.32, leg_r=0.16, neck_len=0.0,
         head_len=0.65, head_w=0.5, head_h=0.42, head_pitch_deg=-5, snout=0.16, ear=0.05, tail_len=0.15,
         tail_deg=-60, albedo=0.66),
    dict(name="lion", body_len=1.25, body_w=0.42, body_h=0.48, leg_len=0.62, leg_r=0.085, neck_len=0.2, neck_deg=40,
         head_len=0.38, head_w=0.3, head_h=0.3, head_pitch_deg=0, snout=0.08, ear=0.06, mane=0.3, tail_len=0.75,
         tail_deg=-30, tail_r=0.04, stride_deg=10, albedo=0.82),
    dict(name="cow", body_len=1.55, body_w=0.62, body_h=0.62, leg_len=0.62, leg_r=0.09, neck_len=0.25,
         neck_deg=30, neck_r=0.17, head_len=0.45, head_w=0.27, head_h=0.28, head_pitch_deg=-40, ear=0.07,
         horn=0.14, tail_len=0.55, tail_deg=-78, albedo=0.88),
    dict(name="rhino", body_len=1.55, body_w=0.72, body_h=0.72, leg_len=0.42, leg_r=0.14, neck_len=0.1,
         neck_deg=20, neck_r=0.25, head_len=0.65, head_w=0.36, head_h=0.36, head_pitch_deg=-25, ear=0.08,
         horn=0.3, horn_nose=True, tail_len=0.2, tail_deg=-70, albedo=0.6),
    dict(name="deer", body_len=1.05, body_w=0.34, body_h=0.42, leg_len=0.95, leg_r=0.05, neck_len=0.55,
         neck_deg=62, neck_r=0.09, head_len=0.36, head_w=0.18, head_h=0.18, head_pitch_deg=-30, ear=0.09,
         horn=0.35, tail_len=0.12, tail_deg=30, albedo=0.74),
]


# ---------------------------------------------------------------------------------------- human
def _human(p: dict[str, Any]) -> list[Part]:
    a, skin = p["albedo"], p["skin"]
    leg, hip_w = p["leg_len"], p["hip_w"]
    spread, stride = _deg(p["leg_spread_deg"]), _deg(p["stride_deg"])
    pelvis_z = leg + p["foot_h"]
    parts: list[Part] = [ellipsoid((0, 0, pelvis_z), (p["torso_d"] * 0.5, hip_w, 0.11), a * p["legs_shade"])]
    for sy, swing in ((1, stride), (-1, -stride)):
        hip = np.array([0, sy * hip_w * 0.55, pelvis_z])
        foot = hip + leg * np.array([math.sin(swing), sy * math.sin(spread), -math.cos(swing) * math.cos(spread)])
        knee = (hip + foot) / 2 + np.array([p["knee_bend"], 0, 0])
        parts.append(cylinder(hip, knee, p["leg_r"], a * p["legs_shade"]))
        parts.append(cylinder(knee, foot, p["leg_r"] * 0.85, a * p["legs_shade"]))
        parts.append(box(foot + np.array([0.06, 0, -p["foot_h"] * 0.5]), (0.11, 0.05, p["foot_h"] * 0.6), DARK * 1.6))
    torso_l = p["torso_len"]
    lean = rotation(pitch=-p["lean_deg"])
    torso_c = np.array([0, 0, pelvis_z]) + lean @ np.array([0, 0, torso_l * 0.55])
    parts.append(ellipsoid(torso_c, (p["torso_d"] / 2, p["torso_w"] / 2, torso_l / 2 * 1.05), a, lean))
    if p["skirt"] > 0:
        parts.append(ellipsoid((0, 0, pelvis_z - p["skirt"] * 0.5), (p["skirt"] * 0.55, p["skirt"] * 0.7,
                                                                      p["skirt"] * 0.8), a * 0.9))
    neck_top = np.array([0, 0, pelvis_z]) + lean @ np.array([0, 0, torso_l * 1.08])
    head_r = p["head_r"]
    head_c = neck_top + lean @ np.array([0.01, 0, head_r * 0.95])
    parts.append(ellipsoid(head_c, (head_r * 0.95, head_r * 0.85, head_r * 1.1), skin))
    if p["hat"] > 0:
        parts.append(cylinder(head_c + np.array([0, 0, head_r * 0.55]), head_c + np.array([0, 0, head_r * 0.55 + p["hat"]]),
                              head_r * 0.8, a * 0.7))
        parts.append(cylinder(head_c + np.array([0, 0, head_r * 0.5]), head_c + np.array([0, 0, head_r * 0.58]),
                              head_r * 1.5, a * 0.7))
    if p["pack"] > 0:
        parts.append(box(torso_c + lean @ np.array([-p["torso_d"] * 0.5 - p["pack"] * 0.4, 0, 0.02]),
                         (p["pack"] * 0.4, p["torso_w"] * 0.4, p["pack"]), a * 0.65, lean))
    shoulder_z = torso_l * 0.92
    for sy, raise_deg, fwd_deg, elbow_deg in ((1, p["arm_raise_l_deg"], p["arm_fwd_l_deg"], p["elbow_l_deg"]),
                                              (-1, p["arm_raise_r_deg"], p["arm_fwd_r_deg"], p["elbow_r_deg"])):
        shoulder = np.array([0, 0, pelvis_z]) + lean @ np.array([0, sy * p["torso_w"] * 0.52, shoulder_z])
        r, f = _deg(raise_deg), _deg(fwd_deg)
        upper_dir = np.array([math.sin(f) * math.cos(r), sy * math.sin(r), -math.cos(f) * math.cos(r)])
        elbow = shoulder + p["arm_len"] * 0.5 * upper_dir
        e = _deg(elbow_deg)  # the forearm bends forward (towards +x) by this angle
        fore_dir = upper_dir * math.cos(e) + np.array([1, 0, 0]) * math.sin(e)
        fore_dir /= np.linalg.norm(fore_dir)
        hand = elbow + p["arm_len"] * 0.5 * fore_dir
        parts.append(cylinder(shoulder, elbow, p["arm_r"], a))
        parts.append(cylinder(elbow, hand, p["arm_r"] * 0.85, skin if p["bare_arms"] else a))
        parts.append(ellipsoid(hand, (0.045, 0.04, 0.05), skin))
        if sy == -1 and p["holds"] > 0:  # a stick, rifle or umbrella in the right hand
            parts.append(cylinder(hand - np.array([0, 0, p["holds"] * 0.45]), hand + np.array([0.08, 0, p["holds"] * 0.55]),
                                  0.025, DARK * 2))
    return parts


_HUMAN_BASE = dict(leg_len=0.8, hip_w=0.15, leg_r=0.06, foot_h=0.05, knee_bend=0.0, leg_spread_deg=4.0,
                   stride_deg=0.0, torso_len=0.62, torso_w=0.36, torso_d=0.2, lean_deg=0.0, head_r=0.12,
                   arm_len=0.68, arm_r=0.05, arm_raise_l_deg=8.0, arm_raise_r_deg=8.0, arm_fwd_l_deg=0.0,
                   arm_fwd_r_deg=0.0, elbow_l_deg=10.0, elbow_r_deg=10.0, skirt=0.0, hat=0.0, pack=0.0,
                   holds=0.0, bare_arms=False, skin=0.78, albedo=0.7, legs_shade=0.8)

_HUMANS: list[dict[str, Any]] = [
    dict(name="walker", stride_deg=22, arm_fwd_l_deg=-25, arm_fwd_r_deg=25, elbow_r_deg=25, albedo=0.66),
    dict(name="arms up", arm_raise_l_deg=150, arm_raise_r_deg=150, elbow_l_deg=0, elbow_r_deg=0,
         leg_spread_deg=10, bare_arms=True, albedo=0.82),
    dict(name="woman in dress", skirt=0.55, torso_w=0.3, hip_w=0.12, head_r=0.115, arm_raise_l_deg=12,
         arm_raise_r_deg=30, elbow_r_deg=70, legs_shade=1.1, skin=0.82, albedo=0.86),
    dict(name="soldier", hat=0.06, pack=0.22, holds=0.75, arm_fwd_r_deg=10, elbow_r_deg=60, torso_w=0.4,
         leg_spread_deg=8, albedo=0.55),
    dict(name="child", leg_len=0.55, torso_len=0.45, torso_w=0.3, head_r=0.16, arm_len=0.5, arm_raise_l_deg=45,
         arm_raise_r_deg=45, elbow_l_deg=0, elbow_r_deg=0, bare_arms=True, albedo=0.8),
    dict(name="runner", stride_deg=38, lean_deg=12, knee_bend=0.12, arm_fwd_l_deg=-45, arm_fwd_r_deg=50,
         elbow_l_deg=80, elbow_r_deg=80, bare_arms=True, torso_w=0.32, albedo=0.74),
    dict(name="heavy man", torso_w=0.5, torso_d=0.34, hip_w=0.19, leg_r=0.08, arm_r=0.07, head_r=0.13, hat=0.14,
         arm_raise_l_deg=20, arm_raise_r_deg=20, albedo=0.62),
    dict(name="pointing", arm_fwd_r_deg=90, elbow_r_deg=0, arm_raise_l_deg=10, elbow_l_deg=90, leg_spread_deg=12,
         albedo=0.7),
    dict(name="hiker", pack=0.3, holds=0.9, arm_fwd_r_deg=20, elbow_r_deg=45, stride_deg=14, hat=0.05,
         albedo=0.6),
    dict(name="dancer", arm_raise_l_deg=110, arm_raise_r_deg=70, arm_fwd_l_deg=10, elbow_l_deg=30,
         leg_spread_deg=22, skirt=0.35, torso_w=0.3, bare_arms=True, albedo=0.86),
]


# ------------------------------------------------------------------------------------- airplane
def _airplane(p: dict[str, Any]) -> list[Part]:
    a = p["albedo"]
    fl, fr = p["fuse_len"] / 2, p["fuse_r"]
    z = p["gear_h"] + fr
    parts: list[Part] = []
    if p["tube"]:  # airliner: a cylindrical cabin between an ellipsoid nose and a long tail cone
        parts.append(cylinder((-fl * 0.45, 0, z), (fl * 0.45, 0, z), fr, a))
        parts.append(ellipsoid((fl * 0.45, 0, z), (fl * 0.55, fr, fr), a))
        parts.append(ellipsoid((-fl * 0.45, 0, z + fr * 0.2), (fl * 0.55, fr * 0.95, fr * 0.8), a))
    else:
        parts.append(ellipsoid((0, 0, z), (fl, fr, fr * p["fuse_flat"]), a))
    if p["canopy"] > 0:
        parts.append(ellipsoid((fl * p["canopy_x"], 0, z + fr * 0.75), (p["canopy"], fr * 0.55, fr * 0.5), DARK * 1.5))
    wing_x, wing_z = p["wing_x"] * fl, z + p["wing_z"] * fr
    span, chord, sweep, dihedral = p["span"] / 2, p["chord"] / 2, p["sweep_deg"], p["dihedral_deg"]
    for level in range(p["wings"]):
        wz = wing_z + level * p["gap"]
        for sy in (1, -1):
            rot = rotation(yaw=sy * sweep, roll=sy * dihedral)
            centre = np.array([wing_x, 0, wz]) + rot @ np.array([0, sy * span, 0])
            shape = ellipsoid if p["round_wing"] else box
            parts.append(shape(centre, (chord, span * (1.12 if p["round_wing"] else 1.0), p["wing_t"]), a, rot))
    if p["wings"] == 2:
        for sy in (1, -1):  # struts between the two wings of a biplane
            parts.append(cylinder((wing_x, sy * span * 1.1, wing_z), (wing_x, sy * span * 1.1, wing_z + p["gap"]),
                                  0.02, a * 0.7))
    # Tail: horizontal stabiliser and fin.
    tail_x = -fl * 0.88
    hs, fin = p["stab_span"] / 2, p["fin_h"]
    stab_z = z + (fin * 0.9 if p["t_tail"] else 0.0)
    for sy in (1, -1):
        rot = rotation(yaw=sy * (sweep * 0.8 + 10))
        parts.append(box(np.array([tail_x, 0, stab_z]) + rot @ np.array([0, sy * hs, 0]), (p["stab_chord"] / 2, hs, 0.015),
                         a, rot))
    for sy in ((1, -1) if p["twin_fin"] else (0,)):
        base = np.array([tail_x - 0.02, sy * fr * 0.7, z + fr * 0.4])
        rot = rotation(pitch=90 + p["fin_lean_deg"])
        parts.append(box(base + rot @ np.array([fin / 2, 0, 0]), (fin / 2, 0.015, p["fin_chord"] / 2), a, rot))
    # Engines.
    eng_r, eng_l = p["engine_r"], p["engine_len"] / 2
    if p["engines"] > 0:
        offsets = (0.35, 0.7)[: p["engines"] // 2]
        for off in offsets:
            for sy in (1, -1):
                y = sy * (fr + off * span)
                x = wing_x + math.tan(_deg(sweep)) * abs(y) * -1 + chord * 0.6
                zz = wing_z - eng_r * 1.1
                parts.append(cylinder((x - eng_l, y, zz), (x + eng_l, y, zz), eng_r, a * 0.8))
    if p["rear_engines"]:
        for sy in (1, -1):
            parts.append(cylinder((-fl * 0.5 - eng_l, sy * (fr + eng_r * 1.1), z + fr * 0.4),
                                  (-fl * 0.5 + eng_l, sy * (fr + eng_r * 1.1), z + fr * 0.4), eng_r, a * 0.8))
    if p["prop"]:
        parts.append(box((fl * 1.0, 0, z), (0.012, p["prop"], 0.04), DARK, rotation(roll=30)))
    if p["floats"]:
        for sy in (1, -1):
            parts.append(ellipsoid((wing_x, sy * span * 0.35, p["gear_h"] * 0.35), (fl * 0.6, 0.06, 0.06), a * 0.8))
            parts.append(cylinder((wing_x, sy * span * 0.35, p["gear_h"] * 0.35), (wing_x, sy * fr * 0.6, z), 0.015, DARK * 2))
    elif p["gear_h"] > 0.03:
        for x, y in ((fl * 0.6, 0.0), (wing_x - chord * 0.5, fr * 1.4), (wing_x - chord * 0.5, -fr * 1.4)):
            parts.append(cylinder((x, y, 0.04), (x, y, z - fr * 0.5), 0.02, DARK * 2))
            parts.append(cylinder((x, y - 0.02, 0.04), (x, y + 0.02, 0.04), 0.045, DARK))
    return parts


_PLANE_BASE = dict(fuse_len=1.6, fuse_r=0.1, fuse_flat=1.0, tube=False, canopy=0.0, canopy_x=0.4, gear_h=0.08,
                   wing_x=0.05, wing_z=-0.4, span=1.5, chord=0.2, sweep_deg=0.0, dihedral_deg=4.0, wing_t=0.018,
                   wings=1, gap=0.25, round_wing=False, stab_span=0.5, stab_chord=0.14,
                   t_tail=False, fin_h=0.25, fin_chord=0.16, fin_lean_deg=30.0, twin_fin=False, engines=0,
                   engine_r=0.05, engine_len=0.22, rear_engines=False, prop=0.0, floats=False, albedo=0.85)

_PLANES: list[dict[str, Any]] = [
    dict(name="airliner", tube=True, fuse_len=1.7, fuse_r=0.11, span=1.6, chord=0.17, sweep_deg=30,
         dihedral_deg=6, engines=2, wing_x=0.0, fin_h=0.32, fin_chord=0.22, fin_lean_deg=40, albedo=0.88),
    dict(name="fighter jet", fuse_len=1.6, fuse_r=0.085, sweep_deg=50, chord=0.3, span=1.0, wing_x=-0.35, canopy=0.14,
         canopy_x=0.45, twin_fin=True, fin_h=0.22, fin_lean_deg=40, stab_span=0.45, wing_z=0.0, albedo=0.7),
    dict(name="propeller trainer", fuse_len=1.3, fuse_r=0.1, span=1.6, chord=0.2, wing_z=-0.6, canopy=0.2,
         canopy_x=0.05, prop=0.24, gear_h=0.14, round_wing=True, albedo=0.8),
    dict(name="biplane", fuse_len=1.1, fuse_r=0.11, wings=2, gap=0.32, span=1.35, chord=0.18, wing_z=-0.7,
         dihedral_deg=2, prop=0.22, gear_h=0.16, canopy=0.1, canopy_x=-0.1, albedo=0.76),
    dict(name="four-engine bomber", tube=True, fuse_len=1.6, fuse_r=0.1, span=1.9, chord=0.2, sweep_deg=12,
         engines=4, engine_len=0.2, wing_x=0.1, wing_z=0.2, fin_h=0.3, albedo=0.62),
    dict(name="glider", fuse_len=1.2, fuse_r=0.06, span=2.2, chord=0.1, wing_z=0.5, wing_x=0.15, gear_h=0.02,
         t_tail=True, fin_h=0.22, stab_span=0.4, stab_chord=0.09, canopy=0.16, canopy_x=0.35, dihedral_deg=3,
         albedo=0.92),
    dict(name="concorde", fuse_len=1.9, fuse_r=0.07, sweep_deg=60, chord=0.45, span=1.15, wing_x=-0.55, wing_z=-0.2,
         fin_h=0.3, fin_chord=0.3, fin_lean_deg=50, stab_span=0.1, gear_h=0.12, albedo=0.9),
    dict(name="cargo t-tail", tube=True, fuse_len=1.6, fuse_r=0.14, span=1.7, chord=0.2, sweep_deg=8,
         dihedral_deg=-4, wing_z=0.85, engines=4, engine_len=0.16, t_tail=True, fin_h=0.35, fin_chord=0.24,
         albedo=0.7),
    dict(name="business jet", tube=True, fuse_len=1.4, fuse_r=0.09, span=1.3, chord=0.15, sweep_deg=25,
         rear_engines=True, engine_r=0.055, t_tail=True, fin_h=0.3, fin_lean_deg=45, wing_z=-0.6, albedo=0.9),
    dict(name="seaplane", fuse_len=1.25, fuse_r=0.11, span=1.7, chord=0.2, wing_z=0.9, prop=0.22, floats=True,
         gear_h=0.3, canopy=0.15, canopy_x=0.25, albedo=0.78),
]


# ---------------------------------------------------------------------------------- truck / car
def _wheels(xs: list[float], half_track: float, radius: float, width: float) -> list[Part]:
    parts = []
    for x in xs:
        for sy in (1, -1):
            y = sy * half_track
            parts.append(cylinder((x, y - width / 2, radius), (x, y + width / 2, radius), radius, DARK))
    return parts


def _truck(p: dict[str, Any]) -> list[Part]:
    a, wr, hw = p["albedo"], p["wheel_r"], p["width"] / 2
    frame_z = wr * 1.05
    length = p["length"]
    cab_l, cab_h = p["cab_len"], p["cab_h"]
    front = length / 2
    parts: list[Part] = []
    # Chassis under everything.
    parts.append(box((0, 0, frame_z), (length / 2, hw * 0.8, wr * 0.35), DARK * 1.8))
    # Cab (optionally behind a bonnet) with a dark windscreen band.
    bonnet = p["bonnet"]
    cab_front = front - bonnet
    if bonnet > 0:
        parts.append(box((front - bonnet / 2, 0, frame_z + p["bonnet_h"] / 2), (bonnet / 2, hw * 0.8, p["bonnet_h"] / 2), a))
    cab_c = np.array([cab_front - cab_l / 2, 0, frame_z + cab_h / 2])
    parts.append(box(cab_c, (cab_l / 2, hw, cab_h / 2), a))
    parts.append(box(cab_c + np.array([0.01, 0, cab_h * 0.22]), (cab_l / 2 + 0.005, hw * 1.005, cab_h * 0.2), DARK * 1.2))
    rear_len = length - bonnet - cab_l - p["gap"]
    rear_c = np.array([-front + rear_len / 2, 0, frame_z])
    kind = p["body"]
    ca = a * p["cargo_shade"]
    if kind == "box":
        h = p["cargo_h"]
        parts.append(box(rear_c + np.array([0, 0, h / 2 + wr * 0.3]), (rear_len / 2, hw * 1.02, h / 2), ca))
    elif kind == "tank":
        r = p["cargo_h"] / 2
        parts.append(cylinder(rear_c + np.array([-rear_len / 2, 0, r + wr * 0.35]),
                              rear_c + np.array([rear_len / 2, 0, r + wr * 0.35]), r, ca, hw * 0.95))
    elif kind == "dump":
        h = p["cargo_h"]
        tilt = rotation(pitch=p["tilt_deg"])
        parts.append(box(rear_c + np.array([0, 0, h / 2 + wr * 0.3 + math.sin(_deg(p["tilt_deg"])) * rear_len * 0.3]),
                         (rear_len / 2, hw, h / 2), ca, tilt))
    elif kind == "mixer":
        r = p["cargo_h"] / 2
        tilt = rotation(pitch=p["tilt_deg"])
        parts.append(ellipsoid(rear_c + np.array([0, 0, r + wr * 0.35]), (rear_len / 2, r, r), ca, tilt))
    elif kind == "flatbed":
        parts.append(box(rear_c + np.array([0, 0, wr * 0.45]), (rear_len / 2, hw, 0.03), ca))
        load = p["cargo_h"]
        parts.append(box(rear_c + np.array([-rear_len * 0.1, 0, wr * 0.45 + load / 2]), (rear_len * 0.3, hw * 0.8, load / 2),
                         a * 0.7))
    elif kind == "crane":
        parts.append(box(rear_c + np.array([0, 0, wr * 0.45]), (rear_len / 2, hw, 0.04), ca))
        base = rear_c + np.array([-rear_len * 0.2, 0, wr * 0.5])
        parts.append(cylinder(base, base + np.array([0, 0, 0.12]), hw * 0.5, ca))
        boom_dir = np.array([math.cos(_deg(p["tilt_deg"])), 0, math.sin(_deg(p["tilt_deg"]))])
        parts.append(box(base + np.array([0, 0, 0.15]) + boom_dir * p["cargo_h"] / 2, (p["cargo_h"] / 2, 0.05, 0.05), ca,
                         rotation(pitch=p["tilt_deg"])))
    if p["ladder"]:
        top = cab_c[2] + cab_h / 2
        parts.append(box((0.0, 0, top + 0.05), (length * 0.42, 0.08, 0.025), a * 0.6))
    if p["trailer"]:
        parts.append(box(rear_c + np.array([-0.05, 0, 0.03]), (0.12, hw * 0.6, 0.06), DARK * 1.5))
    axles = [front - bonnet * 0.5 - (cab_l * 0.5 if bonnet == 0 else 0.05)]
    axles += [-front + rear_len * f for f in p["rear_axles"]]
    parts += _wheels(axles, hw * 0.85, wr, p["wheel_w"])
    return parts


_TRUCK_BASE = dict(length=1.7, width=0.5, wheel_r=0.11, wheel_w=0.1, cab_len=0.32, cab_h=0.4, bonnet=0.0,
                   bonnet_h=0.22, gap=0.04, body="box", cargo_h=0.5, cargo_shade=0.9, tilt_deg=0.0,
                   rear_axles=(0.25,), ladder=False, trailer=False, albedo=0.8)

_TRUCKS: list[dict[str, Any]] = [
    dict(name="box van", body="box", cargo_h=0.55, albedo=0.85, cargo_shade=1.05),
    dict(name="tanker", body="tank", length=1.9, cargo_h=0.42, bonnet=0.28, rear_axles=(0.15, 0.35), albedo=0.7,
         cargo_shade=1.2),
    dict(name="dump truck", body="dump", length=1.5, width=0.55, cab_h=0.42, cargo_h=0.32, tilt_deg=14,
         wheel_r=0.14, rear_axles=(0.2, 0.42), albedo=0.75),
    dict(name="cement mixer", body="mixer", length=1.6, cargo_h=0.44, tilt_deg=14, rear_axles=(0.18, 0.38),
         albedo=0.78),
    dict(name="fire engine", body="box", length=2.0, cargo_h=0.32, cab_len=0.4, ladder=True, albedo=0.6,
         rear_axles=(0.3,)),
    dict(name="semi tractor-trailer", body="box", length=2.2, bonnet=0.3, gap=0.1, cargo_h=0.62, cab_h=0.48,
         rear_axles=(0.1, 0.2, 0.8), trailer=True, albedo=0.7, cargo_shade=1.2),
    dict(name="flatbed", body="flatbed", length=1.8, cargo_h=0.22, bonnet=0.22, albedo=0.72, rear_axles=(0.2, 0.4)),
    dict(name="crane truck", body="crane", length=1.9, cargo_h=0.9, tilt_deg=24, cab_len=0.3, albedo=0.82,
         rear_axles=(0.15, 0.35)),
    dict(name="pickup truck", body="flatbed", length=1.4, width=0.5, cargo_h=0.0, bonnet=0.34, bonnet_h=0.2,
         cab_h=0.3, wheel_r=0.12, albedo=0.66),
    dict(name="garbage truck", body="box", length=1.75, cargo_h=0.6, cab_h=0.38, cab_len=0.34, albedo=0.8,
         cargo_shade=0.85, rear_axles=(0.2, 0.36)),
]


def _car(p: dict[str, Any]) -> list[Part]:
    a, wr, hw, hl = p["albedo"], p["wheel_r"], p["width"] / 2, p["length"] / 2
    body_z, body_h = wr * 0.9, p["body_h"]
    parts: list[Part] = []
    shape = ellipsoid if p["round"] else box
    if p["round"]:
        parts.append(ellipsoid((0, 0, body_z + body_h * 0.45), (hl, hw, body_h * 0.8), a))
    else:
        parts.append(box((0, 0, body_z + body_h / 2), (hl, hw, body_h / 2), a))
        parts.append(box((hl - 0.02, 0, body_z + 0.04), (0.03, hw * 0.95, 0.04), DARK * 2))  # bumper
    cl, ch = p["cabin_len"] / 2, p["cabin_h"]
    cx = p["cabin_x"]
    cabin_z = body_z + body_h * (0.75 if p["round"] else 1.0)
    if p["cabin_h"] > 0:
        # Glass band (dark) under a roof slab: reads as windows from every side.
        rot = rotation(pitch=-p["rake_deg"])
        parts.append(shape((cx, 0, cabin_z + ch * 0.45), (cl, hw * p["cabin_w"], ch * 0.5), DARK * 1.3, rot))
        if p["roof"]:
            parts.append(shape((cx, 0, cabin_z + ch * 0.9), (cl * 0.92, hw * p["cabin_w"] * 1.02, ch * 0.13), a))
    if p["rollbar"]:
        parts.append(box((cx - cl * 0.4, 0, cabin_z + 0.12), (0.025, hw * 0.9, 0.12), DARK * 2))
        parts.append(box((cx + cl * 0.1, 0, cabin_z + 0.04), (0.04, hw * 0.8, 0.04), DARK * 2.5))
    if p["spare"]:
        parts.append(cylinder((-hl - 0.06, 0, body_z + body_h * 0.7), (-hl, 0, body_z + body_h * 0.7), wr * 0.95, DARK))
    if p["spoiler"]:
        parts.append(box((-hl + 0.06, 0, body_z + body_h + 0.07), (0.05, hw * 0.95, 0.012), a * 0.8))
        for sy in (1, -1):
            parts.append(box((-hl + 0.06, sy * hw * 0.6, body_z + body_h + 0.035), (0.015, 0.015, 0.035), DARK * 2))
    parts += _wheels([hl * p["axle"], -hl * p["axle"]], hw * 0.88, wr, p["wheel_w"])
    return parts


_CAR_BASE = dict(length=1.6, width=0.68, wheel_r=0.13, wheel_w=0.1, body_h=0.24, cabin_len=0.75, cabin_h=0.26,
                 cabin_x=-0.1, cabin_w=0.92, rake_deg=0.0, roof=True, round=False, rollbar=False, spare=False,
                 spoiler=False, axle=0.68, albedo=0.8)

_CARS: list[dict[str, Any]] = [
    dict(name="sedan", albedo=0.8),
    dict(name="hatchback", length=1.3, cabin_len=0.72, cabin_x=-0.18, cabin_h=0.28, albedo=0.7),
    dict(name="suv", length=1.55, body_h=0.32, cabin_len=1.0, cabin_x=-0.2, cabin_h=0.3, wheel_r=0.16, spare=True,
         albedo=0.6),
    dict(name="sports car", length=1.7, width=0.74, body_h=0.17, cabin_len=0.55, cabin_h=0.18, cabin_x=-0.2,
         rake_deg=8, spoiler=True, axle=0.7, albedo=0.85),
    dict(name="minivan", length=1.55, body_h=0.3, cabin_len=1.25, cabin_x=-0.08, cabin_h=0.34, albedo=0.88),
    dict(name="beetle", length=1.3, width=0.62, round=True, body_h=0.3, cabin_len=0.62, cabin_h=0.26, cabin_x=-0.08,
         cabin_w=0.82, albedo=0.75),
    dict(name="station wagon", length=1.75, cabin_len=1.05, cabin_x=-0.28, cabin_h=0.25, albedo=0.66),
    dict(name="jeep", length=1.25, width=0.66, body_h=0.3, cabin_len=0.5, cabin_h=0.0, roof=False, rollbar=True,
         spare=True, wheel_r=0.16, cabin_x=-0.15, albedo=0.6),
    dict(name="limousine", length=2.2, cabin_len=1.3, cabin_x=-0.15, cabin_h=0.24, albedo=0.45, axle=0.75),
    dict(name="convertible", length=1.6, body_h=0.22, cabin_len=0.45, cabin_h=0.1, roof=False, cabin_x=0.05,
         albedo=0.82),
]


# -------------------------------------------------------------------------------------- registry
_BUILDERS: tuple[tuple[Callable[[dict[str, Any]], list[Part]], dict[str, Any], list[dict[str, Any]]], ...] = (
    (_animal, _ANIMAL_BASE, _ANIMALS),
    (_human, _HUMAN_BASE, _HUMANS),
    (_airplane, _PLANE_BASE, _PLANES),
    (_truck, _TRUCK_BASE, _TRUCKS),
    (_car, _CAR_BASE, _CARS),
)

#: Archetype names, ``ARCHETYPES[category][instance]``.
ARCHETYPES: tuple[tuple[str, ...], ...] = tuple(tuple(a["name"] for a in arch) for _, _, arch in _BUILDERS)


_DISCRETE = frozenset({"wings", "engines"})  # counts, not sizes: never perturbed


def toy_parameters(category: int, instance: int, seed: int) -> dict[str, Any]:
    """The archetype's parameters, each continuous one perturbed by the seed (deterministically)."""
    _, base, archetypes = _BUILDERS[category]
    params = {**base, **archetypes[instance]}
    rng = np.random.default_rng([seed, category, instance, 0x5EED])
    for key in sorted(params):  # sorted: the draw order must not depend on dict order
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or key in _DISCRETE:
            continue
        u = rng.uniform(-1.0, 1.0)
        params[key] = value + 6.0 * u if key.endswith("_deg") else value * (1.0 + 0.1 * u)
    params["albedo"] = float(np.clip(params["albedo"], 0.3, 0.95))
    return params


def build_toy(category: int, instance: int, seed: int = 0) -> Toy:
    """Toy ``instance`` (0-9) of ``category`` (0-4) for dataset ``seed``, normalised to largest side 1."""
    if not 0 <= category < len(CATEGORIES) or not 0 <= instance < NUM_INSTANCES:
        raise ValueError(f"no toy for category {category}, instance {instance}")
    builder = _BUILDERS[category][0]
    return assemble(builder(toy_parameters(category, instance, seed)))
