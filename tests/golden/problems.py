"""The two small problems behind the golden trajectories in ``torch.json`` and ``keras.json``.

Plain NumPy on purpose: the test suite imports this module, and torch/keras are never needed to
replay a problem. Parameters are a dict ``{"a": shape (3,), "b": shape (2,)}`` in float64.

* ``"stream"``: the gradient at step ``k`` (0-based) is ``STREAM[k]``, independent of the
  parameters. It contains exact zeros (including one on the very first step), one row scaled by
  1e-3 and frequent sign changes, so eps placement, zero-accumulator handling and Rprop's sign
  logic all matter.
* ``"quad"``: the gradient is ``quad_grad(params)`` at the current parameters, for the quadratic
  ``0.5 xᵀ A x − cᵀ x`` with ``x = concat([a, b])``.

In both problems step ``k`` uses the gradient for step ``k``; trajectory row ``k`` is the
parameters after ``k + 1`` updates.

A third problem, ``"matrix"``, is for the optimizers that factor matrices (Adafactor; see
``EXTRA_PROBLEMS`` in ``record.py``): its params (:func:`params0`) are a matrix, a 3-D tensor
and a vector, and its gradient (:func:`matrix_grad`) pulls them towards a target, plus a
stream with exact zeros (a whole row of the matrix once).
"""

import numpy as np

STEPS = 25

PARAMS0 = {
    "a": np.array([0.5, -1.5, 2.0], dtype=np.float64),
    "b": np.array([-0.75, 1.25], dtype=np.float64),
}

_SIZES = {"a": 3, "b": 2}


def _split(x):
    """Split a length-5 vector into the ``{"a", "b"}`` dict (copies)."""
    x = np.asarray(x, dtype=np.float64)
    return {"a": x[:3].copy(), "b": x[3:].copy()}


def _concat(params):
    return np.concatenate([np.asarray(params["a"]), np.asarray(params["b"])]).astype(np.float64)


# ---------------------------------------------------------------- stream problem
ZERO_ENTRIES = ((0, 4), (7, 1), (18, 0))  # (step, flat index) set to exactly 0.0
SMALL_ROW = 12  # this step's gradient is scaled by 1e-3


def _stream_row(k):
    j = np.arange(5, dtype=np.float64)
    g = np.sin(0.9 * k + 1.7 * j + 0.3) * (1.0 + 0.25 * j) + 0.2 * np.cos(0.4 * k * (j + 1.0))
    for step, idx in ZERO_ENTRIES:
        if step == k:
            g[idx] = 0.0
    if k == SMALL_ROW:
        g = g * 1e-3
    return _split(g)


STREAM = [_stream_row(k) for k in range(STEPS)]


# ---------------------------------------------------------------- quad problem
QUAD_A = np.array(
    [
        [4.0, 1.0, 0.5, 0.0, -0.5],
        [1.0, 3.0, 0.0, 0.5, 0.0],
        [0.5, 0.0, 2.0, -0.5, 0.25],
        [0.0, 0.5, -0.5, 1.5, 0.0],
        [-0.5, 0.0, 0.25, 0.0, 1.0],
    ],
    dtype=np.float64,
)
QUAD_C = np.array([1.0, -2.0, 0.5, 0.0, 1.5], dtype=np.float64)


def quad_loss(params):
    x = _concat(params)
    return float(0.5 * x @ QUAD_A @ x - QUAD_C @ x)


def quad_grad(params):
    """Gradient ``A x − c`` at ``params``, split back into ``{"a", "b"}``."""
    return _split(QUAD_A @ _concat(params) - QUAD_C)


def grad_fn(problem):
    """``(step, params) -> grads`` for ``problem`` in ``{"stream", "quad", "matrix"}``."""
    if problem == "stream":
        return lambda k, params: {n: v.copy() for n, v in STREAM[k].items()}
    if problem == "quad":
        return lambda k, params: quad_grad(params)
    if problem == "matrix":
        return matrix_grad
    raise ValueError(f"unknown problem {problem!r}")


PROBLEMS = ("stream", "quad")


# ---------------------------------------------------------------- matrix problem
MATRIX_SHAPES = {"a": (3, 4), "b": (2, 2, 3), "c": (3,)}


def _wave(shape, phase):
    j = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    return np.sin(1.3 * j + phase)


MATRIX_PARAMS0 = {n: 1.5 * _wave(s, 0.4 + i) for i, (n, s) in enumerate(MATRIX_SHAPES.items())}
MATRIX_TARGET = {n: 0.5 * _wave(s, 2.0 - i) for i, (n, s) in enumerate(MATRIX_SHAPES.items())}


def matrix_grad(k, params):
    """``(1 + j/10)·(θ − target) + 0.3·sin(0.9k + 1.7j)`` per element j; row 1 of ``a`` is 0
    at step 2 and element 0 of ``c`` at step 5."""
    out = {}
    for n, x in params.items():
        j = np.arange(x.size, dtype=np.float64).reshape(x.shape)
        g = (1 + j / 10) * (np.asarray(x) - MATRIX_TARGET[n]) + 0.3 * np.sin(0.9 * k + 1.7 * j)
        if n == "a" and k == 2:
            g[1] = 0.0
        if n == "c" and k == 5:
            g[0] = 0.0
        out[n] = g
    return out


def params0(problem):
    """The initial params of ``problem`` (copies)."""
    start = MATRIX_PARAMS0 if problem == "matrix" else PARAMS0
    return {n: v.copy() for n, v in start.items()}
