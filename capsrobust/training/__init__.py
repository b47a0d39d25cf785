"""The training layer: everything that turns data and a model into trained weights.

- :mod:`~capsrobust.training.loop`: the training loop (``TrainConfig``, ``train``, resume, the one
  run identity ``same_run``);
- :mod:`~capsrobust.training.checkpoints`: atomic saving and ``load_model``, the one loader;
- :mod:`~capsrobust.training.presets`: named recipes (model options and schedules per kind of model);
- :mod:`~capsrobust.training.losses`: the spread loss and its margin schedules, cross-entropy;
- :mod:`~capsrobust.training.distributed`: device choice and data-parallel process groups;
- :mod:`~capsrobust.training.weight_average`: the exponential moving average of the weights.

Importing this package imports none of them: measurement code that only loads checkpoints never
loads the loop.
"""
