"""Mammoth compatibility layer: a model file written for Mammoth runs here without edits.

This package is the one place that speaks Mammoth's model-facing API on top of the
framework's own classes (see docs/mammoth.md):

* :mod:`mammoth_compat.buffer` - Mammoth's ``Buffer`` (``add_data``/``get_data`` keywords,
  ``return_index``, ``mask_task_out``, batch-wise device transforms) over the framework's
  reservoir buffer (same storage, same checkpoint format).
* :mod:`mammoth_compat.transforms` - the kornia version of a dataset's train augmentation,
  applied to batches of device tensors (``ContinualModel.transform``), and ``DeNormalize``.
* :mod:`mammoth_compat.model` - ``ContinualModel`` attributes (``N_CLASSES``, ``N_TASKS``,
  ``cpt``, ``num_classes``, ``n_tasks``, ``transform``, ...) and ``observe`` keyword filtering.
* :mod:`mammoth_compat.dataset` - dataset methods models call (``get_denormalization_transform``,
  ``get_epochs``, ``get_batch_size``, ...).
* :mod:`mammoth_compat.backbone` - ``MammothBackbone``'s flat parameter helpers.
* :mod:`mammoth_compat.args` - old-style ``get_parser()`` support and Mammoth's parser helpers.
* :mod:`mammoth_compat.conf` - ``utils.conf`` helpers (``get_device``, ``base_path``, ``warn_once``, ...).
* Mammoth's framework modules that its own model files import, written anew: :mod:`~mammoth_compat.layers`
  (``bn_track_stats``, conditional batch norm), :mod:`~mammoth_compat.replay` (``fill_buffer``, ``icarl_replay``),
  :mod:`~mammoth_compat.ring_buffer`, :mod:`~mammoth_compat.gss_buffer`, :mod:`~mammoth_compat.schedulers`,
  :mod:`~mammoth_compat.augmentations`, :mod:`~mammoth_compat.kornia_utils` (with the AutoAugment policies),
  :mod:`~mammoth_compat.losses`, :mod:`~mammoth_compat.bmm`, :mod:`~mammoth_compat.dp` (see docs/mammoth.md,
  "Mammoth's model files here").

Mammoth's import paths are thin re-exports of this package: ``utils.buffer``, ``utils.conf``,
``utils.args`` (``add_rehearsal_args``, ``ArgumentParser``, ``binary_to_boolean_type``, ...),
``utils.binary_to_boolean_type``, ``backbone.MammothBackbone``, and ``utils.batch_norm``, ``utils.schedulers``,
``utils.ring_buffer``, ``utils.gss_buffer``, ``utils.kornia_utils``, ``utils.autoaugment``, ``utils.augmentations``,
``utils.mixup``, ``utils.triplet``, ``utils.spkdloss``, ``utils.simclrloss``, ``utils.bmm``,
``utils.conditional_bn``, ``utils.distributed.make_dp``/``CustomDP``. The framework's own models
do not use this package (apart from the base-class mixins, which only add attributes).

The submodules are imported lazily by their users; importing this package imports nothing.
``utils/buffer.py`` and ``utils/conf.py`` exist only for Mammoth model files: nothing in the framework
imports them (``mammoth_compat.buffer`` builds on ``models.utils.buffer``, so those two shims sit
above the ``utils`` layer in spite of their path).
"""
