"""The optimizers, one file per family, each with its blocks, their gain rules and its optimizers.

* ``scaling``: the learning-rate block, weight decay (coupled and decoupled), normalisation;
* ``momentum``: trace, EMA and Nadam's Nesterov EMA; sgd, momentum, nesterov, ema_momentum;
* ``preconditioners``: ``precondition(direction, by, eps)`` and its denominators;
* ``adam``: adam, adamw, amsgrad, adamax, nadam; ``rectified``: ``rectified``, radam;
  ``adopt``: scale_by_adopt, adopt; ``factored``: Adafactor's blocks (scale_by_factored_rms,
  clip_by_block_rms, scale_by_param_block_rms) and ``adafactor``: adafactor;
* ``adaptive``: rmsprop, adagrad, adadelta;
* ``sign``: Rprop, Lion; ``layerwise``: LAMB;
* ``lookahead``: lookahead with a fixed or a fitted step;
* ``groups``: param_groups, one optimizer rebuilt per regex-named group of params leaves.
* ``orthogonal``: Muon (orthogonalize, scale_by_muon), with ``matrices`` (which leaves are
  matrices, scale_by_shape, split_matrices).

An optimizer is a function of its numbers that returns a short chain of blocks, decorated
with ``@optimizer(...)`` rules (``gradx._protocol.declare``); a block is a plain optax
transformation. Adding a block is one edit in one file: the block, then its gain rule
registered beside it with ``@gain_rule(block)``.
"""
