"""Tools applied to an optimizer, without changing its numbers.

* ``effective_lr``: ``effective_learning_rate``, the factor each coordinate's current gradient
  is stepped by, as the product of the gains of the optimizer's blocks (their rules live beside
  the blocks); and the per-epoch diagnostics of ``fit``;
* ``flat``: ``gradx.flat``, the same optimizer run over a few packed buffers instead of many
  leaves, and the ``Packing`` fit uses to run an optimizer packed.
"""
