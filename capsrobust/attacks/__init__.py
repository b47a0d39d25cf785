"""Adversarial attacks on both models, through torchattacks' ``Attack`` interface (REFERENCE.md §6).

Every attack here is a ``torchattacks.Attack``: it owns the device, targeted/untargeted mode, the
model's eval mode and clamping to [0, 1]; ``attack(images, labels)`` maps images (N, C, 32, 32) in
[0, 1] to adversarial images of the same shape within an L∞ ball of radius ``eps`` (pixel units).

- :mod:`~capsrobust.attacks.scores`: which score of each model is attacked (CNN logits, capsule
  log-activations) and the losses ascended on it;
- :mod:`~capsrobust.attacks.sign_gradient`: FGSM, BIM and PGD (with restarts) as one attack that
  returns the first successful iterate and can stop per image once it has succeeded;
- :mod:`~capsrobust.attacks.vote`: the vote attack of Gu, Wu & Tresp (ICLR 2021) for matrix capsules;
- :mod:`~capsrobust.attacks.build`: the table :data:`ATTACKS` (one :class:`AttackInfo` per attack: its
  builder and the facts the sweep acts on; the name tuples derive from it), attack specs (``pgd:50x5``),
  :func:`build_attack` (also APGD, Square and AutoAttack from torchattacks, the transfer attack and
  uniform random noise), targeted mode.
"""

from capsrobust.attacks.build import (ATTACK_LOSSES, ATTACK_NAMES, ATTACKS, BLACK_BOX, FORWARD_ONLY_BATCH_FACTOR,
                                      MAX_EPS_VALUES, RANDOM_START, RESTARTABLE, SIGN_GRADIENT, TARGETED_OK, WHITE_BOX,
                                      AttackInfo, AttackRequest, AttackSpec, NoiseAttack, TransferAttack, attack_info,
                                      build_attack, check_attack_loss, check_eps, parse_attack_spec, parse_attack_specs,
                                      parse_eps, set_target)
from capsrobust.attacks.scores import (LOSS_NAMES, SCORE_NAMES, ScoreModel, attack_loss, check_loss_name,
                                       default_score, margin_loss, model_device, spread_attack_loss, unit_scores)
from capsrobust.attacks.sign_gradient import AttackResult, SignGradientAttack
from capsrobust.attacks.vote import VoteAttack, VoteScores, check_votes

__all__ = ["ATTACKS", "ATTACK_LOSSES", "ATTACK_NAMES", "BLACK_BOX", "FORWARD_ONLY_BATCH_FACTOR", "LOSS_NAMES",
           "MAX_EPS_VALUES", "RANDOM_START", "RESTARTABLE", "SCORE_NAMES", "SIGN_GRADIENT", "TARGETED_OK", "WHITE_BOX",
           "AttackInfo", "AttackRequest", "AttackResult", "AttackSpec", "ScoreModel", "NoiseAttack",
           "SignGradientAttack", "TransferAttack", "VoteAttack", "VoteScores", "attack_info", "attack_loss",
           "build_attack",
           "check_attack_loss", "check_eps", "check_loss_name", "check_votes", "default_score", "margin_loss",
           "model_device", "parse_attack_spec", "parse_attack_specs", "parse_eps", "set_target",
           "spread_attack_loss", "unit_scores"]
