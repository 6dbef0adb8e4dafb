"""The protocol: what every optimizer stands on, and no algorithm.

An optimizer is optax's ``(init, update)`` pair. What gradx adds lives here:

* ``rules``: what a hyperparameter value may be (``">= 0"``, ``"[0, 1)"``), parsed once;
* ``declare``: ``@gradx.optimizer``, which lifts a function that builds a chain of blocks from
  numbers into an optimizer whose numbers live in its state (``state``: HyperparamsState);
* ``access``: ``hyperparams`` / ``set_hyperparams`` over any state;
* ``dtypes``, ``trees``, ``checks``: numerics, tree checks and run-time checks every block uses;
* ``placement``: a state's leaves placed like the params they mirror on a mesh;
* ``storage``, ``quantized``: how moments are stored (``state_dtype=``: a float dtype,
  bfloat16 with stochastic rounding, blockwise int8), one codec per moment;
* ``gain``: the registry of gain rules (a block's factor on the current gradient).

Data flow of one ``update``: the gradient and the state come in; ``declare``'s update reads
the numbers from the state, rebuilds the chain of blocks (while tracing: free after jit), runs
it, and returns the updates with the state's numbers unchanged. Nothing here imports an
optimizer, a tool or the training code.
"""
