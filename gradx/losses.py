"""Losses, called as ``loss(predictions, targets)`` and mean-reduced, as in torch and optax.

Each loss returns one scalar: the mean over every element (``mse``, ``mae``,
``binary_cross_entropy``) or over every example (``categorical_cross_entropy``, which sums
over the class axis first). Values and gradients equal ``torch.nn.functional``'s
(``mse_loss``, ``l1_loss``, ``binary_cross_entropy(_with_logits)``, ``cross_entropy``) to
1e-6, edges included; ``tests/golden/record_losses.py`` records torch's numbers.

Edge policies (torch's, so a ported script gives the same numbers):

* **MAE at a tie** (p = t): the gradient is 0, sign(0) = 0 as in torch, not the 1 that
  ``jax.grad(jnp.abs)(0.)`` gives.
* **Probabilities of exactly 0 or 1** (``from_logits=False``): every log is clamped at −100,
  so a confidently wrong prediction costs 100 per element and the loss stays finite. The
  gradient is the one of the unclamped loss with its denominator kept away from 0:
  ∂ℓ/∂p = (p − y) / max(p(1 − p), 1e-12) for BCE and −y / max(p, 1e-12) for CCE, so a
  saturated wrong prediction still gets a large push back (Keras clips p instead, which
  gives the value 16.1 and a zero gradient there). Prefer ``from_logits=True`` whenever the
  model can give logits: it is exact everywhere and never clamps. For float16 and bfloat16
  predictions these gradients are computed in float32 and rounded to the predictions' dtype
  (in float16 the 1e-12 floor would round to 0 and give 0/0 = NaN at a correct p = 0 or 1;
  a saturated wrong prediction's ±1e12/N is past float16's largest number, 65504, and
  becomes ±inf unless N > 1.5e7).

Activations are ``jax.nn``'s (``sigmoid``, ``tanh``, ``relu``, ``elu``, ``softmax``).

Input checks raise ``ValueError("fn: arg must be RULE, got VALUE")``: shapes must be
equal (no broadcasting), predictions floating, labels of the right dtype, ``label_smoothing``
a scalar in [0, 1], and, where the arrays are concrete (called eagerly), class indices in
[0, K) and probabilities (predictions and targets) in [0, 1]. ``from_logits`` must be a bool
(``TypeError`` otherwise: the string ``"no"`` is truthy).

Traced values (under ``jit``, ``grad`` or ``vmap``) cannot be checked. There an out-of-range
class index (−1 included, which plain indexing would read as the last class) or a probability
outside [0, 1] makes its element's loss NaN, and so the mean and that element's gradient: the
result is visibly wrong, never a finite wrong number. Valid inputs are unaffected (bit for bit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._protocol.dtypes import at_least_float32
from gradx._protocol.rules import check_flag, is_number

__all__ = ["binary_cross_entropy", "categorical_cross_entropy", "mae", "mse"]

# torch's clamp of log(p) (aten/src/ATen/native/Loss.cpp) and the floor of the BCE gradient's
# denominator: torch's EPSILON is the C++ float literal 1e-12f, i.e. 9.99999996e-13.
LOG_FLOOR = -100.0
GRAD_EPS = float(np.float32(1e-12))


# ----------------------------------------------------------------------------- checks


def _concrete(x: jax.typing.ArrayLike) -> np.ndarray | None:
    """``x`` as a NumPy array, or None when it is a tracer (under jit/grad/vmap)."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _floating(fn: str, name: str, x: jax.typing.ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{fn}: {name} must be a floating-point array, got dtype {x.dtype}")
    return x


def _targets_like(fn: str, targets: jax.typing.ArrayLike, predictions: jax.Array) -> jax.Array:
    """Targets of the predictions' shape, cast to their dtype (numbers or booleans only)."""
    targets = jnp.asarray(targets)
    if targets.shape != predictions.shape:
        raise ValueError(
            f"{fn}: targets must have the shape of predictions {predictions.shape}, "
            f"got {targets.shape}"
        )
    if not (
        jnp.issubdtype(targets.dtype, jnp.floating)
        or jnp.issubdtype(targets.dtype, jnp.integer)
        or targets.dtype == jnp.bool_
    ):
        raise ValueError(f"{fn}: targets must be real numbers, got dtype {targets.dtype}")
    return targets.astype(predictions.dtype)


def _nan_where(bad: jax.Array, x: jax.Array) -> jax.Array:
    """``x`` with NaN where ``bad``, in value and in gradient (x·NaN there, x·1 elsewhere).

    The traced form of the range checks: under ``jit`` a bad label or probability cannot be
    refused, so its element is poisoned instead of giving a finite wrong loss.
    """
    nan, one = jnp.asarray(jnp.nan, x.dtype), jnp.ones([], x.dtype)
    return x * jnp.where(bad, nan, one)


def _outside_unit_interval(x: jax.Array) -> jax.Array:
    return ~((x >= 0) & (x <= 1))  # NaN included


def _in_unit_interval(fn: str, name: str, x: jax.typing.ArrayLike) -> None:
    value = _concrete(x)
    if value is None or value.size == 0:
        return
    low, high = value.min(), value.max()
    if not (low >= 0 and high <= 1):  # also catches NaN
        bad = low if not low >= 0 else high
        hint = "; pass from_logits=True for logits" if name == "predictions" else ""
        raise ValueError(f"{fn}: {name} must be in [0, 1], got {bad}{hint}")


# ----------------------------------------------------------------------------- regression


def mse(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike) -> jax.Array:
    """Mean squared error: (1/N) Σᵢ (pᵢ − tᵢ)², over all N elements.

    Args:
      predictions: p, a floating array of any shape.
      targets: t, an array of the same shape (cast to p's dtype).

    Returns:
      A scalar of p's dtype.

    Note:
      Equal to ``torch.nn.functional.mse_loss`` and ``optax.squared_error(p, t).mean()``;
      ``optax.l2_loss`` is half of it.

    Examples:
      >>> import jax.numpy as jnp, gradx
      >>> loss = gradx.losses.mse(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0]))
      >>> round(float(loss), 4)  # ((1 - 0)² + (2 - 4)²) / 2
      2.5
    """
    predictions = _floating("mse", "predictions", predictions)
    targets = _targets_like("mse", targets, predictions)
    return jnp.mean(optax.losses.squared_error(predictions, targets))


def mae(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike) -> jax.Array:
    """Mean absolute error: (1/N) Σᵢ ``|pᵢ − tᵢ|``, with ∂/∂pᵢ = sign(pᵢ − tᵢ)/N.

    At a tie, pᵢ = tᵢ, the gradient is sign(0) = 0, as in torch; ``jax.grad(jnp.abs)(0.)``
    would give 1. The value is computed as d·sign(d), which is exactly ``|d|`` and whose
    derivative is sign(d) everywhere.

    Args:
      predictions: p, a floating array of any shape.
      targets: t, an array of the same shape (cast to p's dtype).

    Returns:
      A scalar of p's dtype.

    Note:
      Equal to ``torch.nn.functional.l1_loss`` in value and gradient. Keras's
      ``MeanAbsoluteError`` differs at ties (gradient −1/N).
    """
    predictions = _floating("mae", "predictions", predictions)
    targets = _targets_like("mae", targets, predictions)
    d = predictions - targets
    return jnp.mean(d * jax.lax.stop_gradient(jnp.sign(d)))


# ----------------------------------------------------------------------------- binary


@jax.custom_jvp
def _bce_probabilities(p: jax.Array, y: jax.Array) -> jax.Array:
    """Elementwise −[y·max(log p, −100) + (1−y)·max(log(1−p), −100)]."""
    log_p = jnp.maximum(jnp.log(p), LOG_FLOOR)
    log_not_p = jnp.maximum(jnp.log1p(-p), LOG_FLOOR)
    return -(y * log_p + (1 - y) * log_not_p)


@_bce_probabilities.defjvp
def _bce_probabilities_jvp(primals, tangents):
    p, y = primals
    dp, dy = tangents
    out = _bce_probabilities(p, y)
    # computed in float32 at least, then cast back: in float16 the 1e-12 floor below would
    # round to 0 and make 0/0 = NaN at p = 0 or 1
    p, y = at_least_float32(p), at_least_float32(y)
    # torch's backward: the unclamped derivative with its denominator floored at 1e-12.
    d_p = (p - y) / jnp.maximum(p * (1 - p), GRAD_EPS)
    # ∂/∂y of the clamped loss: finite at p = 0 or 1 (torch gives ±inf there).
    d_y = jnp.maximum(jnp.log1p(-p), LOG_FLOOR) - jnp.maximum(jnp.log(p), LOG_FLOOR)
    return out, (d_p * at_least_float32(dp) + d_y * at_least_float32(dy)).astype(out.dtype)


def binary_cross_entropy(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    from_logits: bool = False,
) -> jax.Array:
    """Binary cross entropy, mean over all N elements.

    With probabilities p (``from_logits=False``, the default, as in torch's
    ``binary_cross_entropy``)::

        ℓ = −(1/N) Σᵢ [yᵢ·max(log pᵢ, −100) + (1 − yᵢ)·max(log(1 − pᵢ), −100)]
        ∂ℓ/∂pᵢ = (pᵢ − yᵢ) / max(pᵢ(1 − pᵢ), 1e-12) / N

    With logits z (``from_logits=True``, torch's ``binary_cross_entropy_with_logits``),
    p = σ(z) never rounds to 0 or 1 because log σ(z) is computed as ``jax.nn.log_sigmoid``::

        ℓ = −(1/N) Σᵢ [yᵢ·log σ(zᵢ) + (1 − yᵢ)·log σ(−zᵢ)],   ∂ℓ/∂zᵢ = (σ(zᵢ) − yᵢ)/N

    Args:
      predictions: probabilities in [0, 1] (checked when concrete) or logits, floating.
      targets: y in [0, 1] (checked when concrete), of the same shape: hard 0/1 labels
        (bool, int or float) or soft probabilities.
      from_logits: whether ``predictions`` are logits.

    Returns:
      A scalar of the predictions' dtype.

    Note:
      Edge policy: at p = 0 or 1 each log is clamped at −100 (torch's choice), so the value
      is finite (100 per confidently wrong element) and the gradient is ±1e12/N, pointing
      away from the wrong certainty. Keras clips p to [1e-7, 1 − 1e-7] instead, which gives
      16.1 and a zero gradient. NaN predictions are rejected when concrete. Under ``jit``
      a probability or target outside [0, 1] cannot be refused: its element's loss is NaN,
      which makes the mean NaN (torch refuses such probabilities; optax's
      ``sigmoid_binary_cross_entropy`` gives a finite number for a target of 1.5).
    """
    fn = "binary_cross_entropy"
    check_flag(fn, "from_logits", from_logits, "bool")
    predictions = _floating(fn, "predictions", predictions)
    targets = _targets_like(fn, targets, predictions)
    _in_unit_interval(fn, "targets", targets)
    bad = _outside_unit_interval(targets)
    if from_logits:
        elements = optax.losses.sigmoid_binary_cross_entropy(predictions, targets)
    else:
        _in_unit_interval(fn, "predictions", predictions)
        bad = bad | _outside_unit_interval(predictions)
        elements = _bce_probabilities(predictions, targets)
    return jnp.mean(_nan_where(bad, elements))


# ----------------------------------------------------------------------------- categorical


@jax.custom_jvp
def _clamped_log(p: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.log(p), LOG_FLOOR)


@_clamped_log.defjvp
def _clamped_log_jvp(primals, tangents):
    (p,), (dp,) = primals, tangents
    wide = at_least_float32(dp) / jnp.maximum(at_least_float32(p), GRAD_EPS)  # float32: see above
    return _clamped_log(p), wide.astype(dp.dtype)


def categorical_cross_entropy(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    from_logits: bool = True,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Categorical cross entropy over the last axis (K classes), mean over the N examples.

    With logits z (``from_logits=True``, the default, as in torch's ``cross_entropy`` and
    optax) and target distributions y::

        ℓ = −(1/N) Σₙ Σₖ yₙₖ · log softmax(zₙ)ₖ,   ∂ℓ/∂zₙ = (softmax(zₙ) − yₙ)/N

    log softmax is ``jax.nn.log_softmax`` (max-shifted, exact for any finite logits). With
    probabilities p (``from_logits=False``) log pₙₖ is clamped at −100 as in
    :func:`binary_cross_entropy`, with gradient −yₙₖ / max(pₙₖ, 1e-12) / N; p is used as
    given, not renormalised (Keras renormalises).

    Targets come in three forms:

    * integer class indices of shape ``predictions.shape[:-1]``, in [0, K) (−1 is refused,
      not read as the last class);
    * one-hot vectors of the predictions' shape;
    * soft labels (any distributions over the K classes) of the predictions' shape.

    Args:
      predictions: logits or probabilities, floating, shape ``(..., K)``.
      targets: class indices or distributions, as above.
      from_logits: whether ``predictions`` are logits.
      label_smoothing: α in [0, 1]: y ← (1 − α)·y + α/K, as torch's ``label_smoothing``
        and ``optax.smooth_labels``.

    Returns:
      A scalar of the predictions' dtype.

    Note:
      The class axis is the last one (JAX's convention); torch's ``cross_entropy`` puts it
      at axis 1, which is the same for 2-D inputs. torch has no probability form; this one
      equals ``nll_loss(log p)`` away from p = 0. Concrete inputs are checked (indices in
      [0, K), probabilities and distributions in [0, 1]); under ``jit`` an example that breaks
      these has a NaN loss, so the mean is NaN (``optax.softmax_cross_entropy_with_integer_labels``
      reads −1 as the last class).
    """
    fn = "categorical_cross_entropy"
    check_flag(fn, "from_logits", from_logits, "bool")
    predictions = _floating(fn, "predictions", predictions)
    if predictions.ndim < 1 or predictions.shape[-1] < 1:
        raise ValueError(
            f"{fn}: predictions must have a class axis last, shape (..., K) with K >= 1, "
            f"got shape {predictions.shape}"
        )
    if not is_number(label_smoothing) or np.ndim(label_smoothing) != 0:
        shape = np.shape(label_smoothing)
        got = f"an array of shape {shape}" if shape else repr(label_smoothing)
        raise ValueError(f"{fn}: label_smoothing must be a scalar number in [0, 1], got {got}")
    if isinstance(label_smoothing, jax.core.Tracer) or not 0 <= label_smoothing <= 1:
        raise ValueError(
            f"{fn}: label_smoothing must be a scalar number in [0, 1], got {label_smoothing}"
        )
    num_classes = predictions.shape[-1]
    targets = jnp.asarray(targets)
    if targets.shape == predictions.shape[:-1]:
        if not jnp.issubdtype(targets.dtype, jnp.integer):
            raise ValueError(
                f"{fn}: targets of shape {targets.shape} (the predictions' shape without the "
                f"class axis) are class indices and must be integers, got dtype {targets.dtype}"
            )
        value = _concrete(targets)
        if value is not None and value.size and (value.min() < 0 or value.max() >= num_classes):
            bad = value.min() if value.min() < 0 else value.max()
            raise ValueError(
                f"{fn}: targets must be class indices in [0, {num_classes}), got {bad}"
            )
        integer_targets = targets
    elif targets.shape == predictions.shape:
        integer_targets = None
        targets = _targets_like(fn, targets, predictions)
        _in_unit_interval(fn, "targets", targets)
    else:
        raise ValueError(
            f"{fn}: targets must be class indices of shape {predictions.shape[:-1]} or "
            f"distributions of shape {predictions.shape}, got shape {targets.shape}"
        )

    # Per example: whether it breaks a rule that only traced inputs can reach here.
    if from_logits:
        log_p = jax.nn.log_softmax(predictions, axis=-1)
        bad = jnp.zeros(predictions.shape[:-1], bool)
    else:
        _in_unit_interval(fn, "predictions", predictions)
        log_p = _clamped_log(predictions)
        bad = jnp.any(_outside_unit_interval(predictions), axis=-1)

    if integer_targets is not None:
        bad = bad | (integer_targets < 0) | (integer_targets >= num_classes)
        index = jnp.clip(integer_targets, 0, num_classes - 1)
        picked = jnp.take_along_axis(log_p, index[..., None], axis=-1)[..., 0]
        if label_smoothing:
            alpha = jnp.asarray(label_smoothing, log_p.dtype)
            mean_log_p = jnp.mean(log_p, axis=-1)
            picked = (1 - alpha) * picked + alpha * mean_log_p
        return -jnp.mean(_nan_where(bad, picked))
    bad = bad | jnp.any(_outside_unit_interval(targets), axis=-1)
    if label_smoothing:
        targets = optax.smooth_labels(targets, jnp.asarray(label_smoothing, targets.dtype))
    return -jnp.mean(_nan_where(bad, jnp.sum(targets * log_p, axis=-1)))
