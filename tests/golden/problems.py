"""The two small problems behind the golden trajectories in ``torch.json`` and ``keras.json``.

Plain NumPy on purpose: the test suite imports this module, and torch/keras are never needed to
replay a problem. Parameters are a dict ``{"a": shape (3,), "b": shape (2,)}`` in float64.

* ``"stream"``: the gradient at step ``k`` (0-based) is ``STREAM[k]``, independent of the
  parameters. It contains exact zeros (including one on the very first step), one row scaled by
  1e-3 and frequent sign changes, so eps placement, zero-accumulator handling and Rprop's sign
  logic all matter.
* ``"quad"``: the gradient is ``quad_grad(params)`` at the current parameters, for the quadratic
  ``0.5 xᵀ A x − cᵀ x`` with ``x = concat([a, b])``.
* ``"matrix"`` (for optimizers of matrices, torch's ``Muon``): parameters
  ``{"a": shape (4, 3), "b": shape (2, 5)}`` (``MATRIX_PARAMS0``; ``params0(problem)`` gives
  each problem's), gradient ``matrix_grad(params)`` of a quadratic: ``P·a − C_a`` and
  ``b·Q − C_b`` with P, Q symmetric positive definite. Only in ``MATRIX_PROBLEMS``.

* ``"factored"`` (for the optimizers that factor matrices, Adafactor; see ``EXTRA_PROBLEMS``
  in ``record.py``): its params (``FACTORED_PARAMS0``) are a matrix ``"a"`` (3, 4), a 3-D
  tensor ``"b"`` (2, 2, 3) and a vector ``"c"`` (3,), and its gradient
  (:func:`factored_grad`) pulls them towards a target, plus a stream with exact zeros (a whole
  row of the matrix once).

In every problem step ``k`` uses the gradient for step ``k``; trajectory row ``k`` is the
parameters after ``k + 1`` updates.
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


# ---------------------------------------------------------------- matrix problem (Muon)
MATRIX_PARAMS0 = {
    "a": np.array(
        [[0.5, -1.0, 0.25], [1.5, 0.0, -0.5], [-0.75, 2.0, 1.0], [0.3, -0.2, 0.8]],
        dtype=np.float64,
    ),
    "b": np.array([[1.0, -0.5, 0.0, 2.0, -1.5], [0.25, 0.75, -1.25, 0.5, 1.0]], dtype=np.float64),
}
MATRIX_P = np.array(
    [[3.0, 0.5, 0.0, -0.5], [0.5, 2.0, 0.25, 0.0], [0.0, 0.25, 1.5, 0.5], [-0.5, 0.0, 0.5, 1.0]],
    dtype=np.float64,
)
MATRIX_Q = np.diag([2.0, 1.5, 1.0, 0.75, 0.5]) + 0.1 * np.ones((5, 5))
MATRIX_CA = np.array(
    [[1.0, 0.0, -0.5], [0.0, 0.5, 0.0], [0.25, -1.0, 0.5], [0.0, 0.0, 1.0]], dtype=np.float64
)
MATRIX_CB = np.array([[0.5, -1.0, 0.0, 0.25, 0.0], [0.0, 0.5, 1.0, 0.0, -0.5]], dtype=np.float64)


def matrix_grad(params):
    """Gradient ``{"a": P·a − C_a, "b": b·Q − C_b}`` at ``params`` (copies)."""
    return {
        "a": MATRIX_P @ np.asarray(params["a"], np.float64) - MATRIX_CA,
        "b": np.asarray(params["b"], np.float64) @ MATRIX_Q - MATRIX_CB,
    }


MATRIX_PROBLEMS = ("matrix",)


def params0(problem):
    """The initial parameters of ``problem`` (copies)."""
    if problem == "factored":
        start = FACTORED_PARAMS0
    else:
        start = MATRIX_PARAMS0 if problem in MATRIX_PROBLEMS else PARAMS0
    return {n: v.copy() for n, v in start.items()}


def grad_fn(problem):
    """``(step, params) -> grads`` for ``problem`` in ``{"stream", "quad", "matrix", "factored"}``."""
    if problem == "matrix":
        return lambda k, params: matrix_grad(params)
    if problem == "stream":
        return lambda k, params: {n: v.copy() for n, v in STREAM[k].items()}
    if problem == "quad":
        return lambda k, params: quad_grad(params)
    if problem == "factored":
        return factored_grad
    raise ValueError(f"unknown problem {problem!r}")


PROBLEMS = ("stream", "quad")


# ---------------------------------------------------------------- factored problem (Adafactor)
FACTORED_SHAPES = {"a": (3, 4), "b": (2, 2, 3), "c": (3,)}


def _wave(shape, phase):
    j = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    return np.sin(1.3 * j + phase)


FACTORED_PARAMS0 = {n: 1.5 * _wave(s, 0.4 + i) for i, (n, s) in enumerate(FACTORED_SHAPES.items())}
FACTORED_TARGET = {n: 0.5 * _wave(s, 2.0 - i) for i, (n, s) in enumerate(FACTORED_SHAPES.items())}


def factored_grad(k, params):
    """``(1 + j/10)·(θ − target) + 0.3·sin(0.9k + 1.7j)`` per element j; row 1 of ``a`` is 0
    at step 2 and element 0 of ``c`` at step 5."""
    out = {}
    for n, x in params.items():
        j = np.arange(x.size, dtype=np.float64).reshape(x.shape)
        g = (1 + j / 10) * (np.asarray(x) - FACTORED_TARGET[n]) + 0.3 * np.sin(0.9 * k + 1.7 * j)
        if n == "a" and k == 2:
            g[1] = 0.0
        if n == "c" and k == 5:
            g[0] = 0.0
        out[n] = g
    return out

