"""The measurement layer: what a trained model does, as tidy tables; it never trains.

Test error and its breakdowns (:mod:`~capsrobust.evaluation.checkpoint_eval`), robustness sweeps and
their sanity checks (:mod:`~capsrobust.evaluation.robustness`, the attacks themselves in
:mod:`capsrobust.attacks`), robust accuracy with intervals (:mod:`~capsrobust.evaluation.robust_accuracy`,
:mod:`~capsrobust.evaluation.intervals`), viewpoint maths (:mod:`~capsrobust.evaluation.viewpoint`),
capsule statistics and the pose probe (:mod:`~capsrobust.evaluation.routing_stats`,
:mod:`~capsrobust.evaluation.pose_probe`), and speed and memory (:mod:`~capsrobust.evaluation.bench`).
"""
