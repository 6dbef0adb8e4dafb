"""Training: ``fit``, its stream, ``sweep`` and ``search``, and what they share.

The route of a batch, in memory:

1. ``inputs``: data, batch size, key and optimizer are checked once;
2. ``packing``: the optimizer is packed (``gradx.flat``) when that pays, and its state started;
3. ``mesh``: on a mesh, a plan says where params, state and batches live;
4. ``program``: each epoch is one compiled program, a ``lax.scan`` of ``step`` over the
   minibatches of the epoch's permutation (``fold_in(key, epoch)``);
5. ``step``: value_and_grad of the loss (``accumulate``: averaged over a window of
   micro-batches), the optimizer's update, the params moved (``averaging``: and their moving
   average advanced);
6. ``loop``: between two epochs, on the host: history, callbacks, checkpoints and resume;
7. ``results``: what the user gets back (``FitResult``, ``SweepResult``).

Variants of the same route: ``stream`` feeds step from an iterable of batches, in compiled
groups of S steps instead of one epoch program; ``sweep`` runs the epoch program ``vmap``-ped
over K states whose hyperparameters differ; ``search`` (with ``population``) reshapes such a
population between epochs (random search, successive halving, population-based training).
"""
