"""Exact reproductions of other libraries' optimizers, built from gradx's blocks.

``gradx.compat.torch`` takes ``torch.optim``'s class names, argument names and defaults;
``gradx.compat.keras`` does the same for ``keras.optimizers``, and ``gradx.compat.optax`` for
optax's functions (``optax.adamw`` → ``gradx.compat.optax.adamw``, with optax's defaults).
Each factory returns an ordinary gradx optimizer (an ``optax.GradientTransformationExtraArgs``
with its hyperparameters in its state) whose numbers match the peer's, step for step: the path
for porting a training script.
The differences between the libraries are listed in ``docs/conventions.md``.
"""

from gradx.compat import keras as keras
from gradx.compat import optax as optax
from gradx.compat import torch as torch
