"""Losses against torch.nn.functional's values and gradients, recorded in golden/losses.json.

The JSON is written by ``tests/golden/record_losses.py`` (run with a Python that has torch);
this suite never imports torch.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradx
from gradx import losses

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "losses.json").read_text())
CASES = {case["name"]: case for case in GOLDEN["cases"]}


def _inputs(case):
    p = jnp.asarray(case["predictions"], jnp.float64)
    dtype = jnp.int64 if case["targets_dtype"] == "int64" else jnp.float64
    return p, jnp.asarray(case["targets"], dtype)


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_gradients_match_torch(name):
    case = CASES[name]
    fn = getattr(losses, case["fn"])
    p, y = _inputs(case)
    value, grad_p = jax.value_and_grad(lambda p: fn(p, y, **case["kwargs"]))(p)
    np.testing.assert_allclose(value, case["value"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_p, case["grad_predictions"], rtol=1e-6, atol=1e-6)
    if "grad_targets" in case:
        grad_y = jax.grad(lambda y: fn(p, y, **case["kwargs"]))(y)
        np.testing.assert_allclose(grad_y, case["grad_targets"], rtol=1e-6, atol=1e-6)


def test_golden_cases_cover_the_edges():
    assert {"mae_ties", "bce_edges", "bce_logits_saturated", "cce_large_logits"} <= set(CASES)


def test_mae_gradient_at_a_tie_is_zero_not_jax_abs_one():
    assert float(jax.grad(jnp.abs)(0.0)) == 1.0  # what a naive mean(abs) would give
    grad = jax.grad(losses.mae)(jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]))
    np.testing.assert_array_equal(grad, [0.0, 0.5])


def test_bce_at_exact_zero_and_one_is_finite_with_the_torch_clamp():
    p = jnp.array([0.0, 1.0, 0.0, 1.0])
    y = jnp.array([1.0, 0.0, 0.0, 1.0])
    value, grad = jax.value_and_grad(losses.binary_cross_entropy)(p, y)
    assert float(value) == pytest.approx(50.0)  # two confidently wrong elements cost 100 each
    assert np.all(np.isfinite(grad))
    assert grad[0] < -1e10 and grad[1] > 1e10  # pushes away from the wrong certainty
    np.testing.assert_array_equal(grad[2:], 0.0)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_probability_gradients_in_half_precision_follow_the_float32_formula(dtype):
    # The 1e-12 floor is 0 in float16, where it used to give 0/0 = NaN at a correct p = 0 or 1.
    p = np.array([0.0, 1.0, 0.5, 0.0, 1.0, 0.25])
    y = np.array([0.0, 1.0, 1.0, 1.0, 0.5, 0.0])
    want = (p - y) / np.maximum(p * (1 - p), np.float32(1e-12)) / p.size  # torch's formula
    with np.errstate(over="ignore"):  # -1e12/6 is -inf in float16
        want = want.astype(dtype)
    grad = jax.grad(losses.binary_cross_entropy)(jnp.asarray(p, dtype), jnp.asarray(y, dtype))
    assert grad.dtype == dtype
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=1e-2)
    assert not np.any(np.isnan(np.asarray(grad, np.float64)))

    q = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    labels = np.array([0, 1, 0])
    onehot = np.eye(3)[labels]
    want = -onehot / np.maximum(q, np.float32(1e-12)) / len(q)
    with np.errstate(over="ignore"):
        want = want.astype(dtype)
    grad = jax.grad(losses.categorical_cross_entropy)(
        jnp.asarray(q, dtype), jnp.asarray(labels), from_logits=False
    )
    assert grad.dtype == dtype
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=1e-2)
    assert not np.any(np.isnan(np.asarray(grad, np.float64)))


def test_losses_work_in_float32_under_jit():
    p = jnp.array([[2.0, -1.0, 0.5]], jnp.float32)
    value = jax.jit(losses.categorical_cross_entropy)(p, jnp.array([0]))
    assert value.dtype == jnp.float32
    want = -jax.nn.log_softmax(p)[0, 0]
    np.testing.assert_allclose(value, want, rtol=1e-6)
    y64 = jnp.array([[1.0, 0.0, 0.0]], jnp.float64)  # targets take the predictions' dtype
    assert losses.categorical_cross_entropy(p, y64).dtype == jnp.float32
    assert jax.jit(losses.binary_cross_entropy)(jax.nn.sigmoid(p), p > 0).dtype == jnp.float32


def test_from_logits_and_probabilities_agree_in_the_interior():
    z = jnp.array([[0.3, -1.2, 2.0], [1.0, 0.0, -0.5]])
    labels = jnp.array([2, 0])
    np.testing.assert_allclose(
        losses.categorical_cross_entropy(z, labels),
        losses.categorical_cross_entropy(jax.nn.softmax(z), labels, from_logits=False),
        rtol=1e-12,
    )
    y = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.2]])
    np.testing.assert_allclose(
        losses.binary_cross_entropy(z, y, from_logits=True),
        losses.binary_cross_entropy(jax.nn.sigmoid(z), y),
        rtol=1e-12,
    )


def test_integer_one_hot_and_soft_labels_give_the_same_loss():
    z = jnp.array([[0.3, -1.2, 2.0], [1.0, 0.0, -0.5]])
    labels = jnp.array([2, 0])
    onehot = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
    a = losses.categorical_cross_entropy(z, labels)
    np.testing.assert_allclose(losses.categorical_cross_entropy(z, onehot), a, rtol=1e-12)
    np.testing.assert_allclose(
        losses.categorical_cross_entropy(z, onehot.astype(jnp.int32)), a, rtol=1e-12
    )


def test_losses_are_exported():
    assert gradx.losses.mse is losses.mse


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: losses.mse(jnp.ones(3), jnp.ones(4)),
            r"mse: targets must have the shape of predictions \(3,\), got \(4,\)",
        ),
        (
            lambda: losses.mae(jnp.ones(3, jnp.int32), jnp.ones(3)),
            r"mae: predictions must be a floating-point array, got dtype int32",
        ),
        (
            lambda: losses.categorical_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3])),
            r"categorical_cross_entropy: targets must be class indices in \[0, 3\), got 3",
        ),
        (
            lambda: losses.categorical_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, -1])),
            r"categorical_cross_entropy: targets must be class indices in \[0, 3\), got -1",
        ),
        (
            lambda: losses.categorical_cross_entropy(jnp.zeros((2, 3)), jnp.array([0.0, 1.0])),
            r"categorical_cross_entropy: targets of shape \(2,\).*must be integers, got dtype float64",
        ),
        (
            lambda: losses.categorical_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4))),
            r"targets must be class indices of shape \(2,\) or distributions of shape \(2, 3\), got shape \(2, 4\)",
        ),
        (
            lambda: losses.categorical_cross_entropy(
                jnp.zeros((2, 3)), jnp.array([0, 1]), label_smoothing=1.5
            ),
            r"label_smoothing must be a scalar number in \[0, 1\], got 1.5",
        ),
        (
            lambda: losses.categorical_cross_entropy(
                jnp.zeros((2, 3)), jnp.array([0, 1]), label_smoothing=jnp.array([0.1, 0.2])
            ),
            r"categorical_cross_entropy: label_smoothing must be a scalar number in \[0, 1\], "
            r"got an array of shape \(2,\)",
        ),
        (
            lambda: losses.binary_cross_entropy(jnp.array([0.5, 1.5]), jnp.array([0.0, 1.0])),
            r"binary_cross_entropy: predictions must be in \[0, 1\], got 1.5; pass from_logits=True",
        ),
        (
            lambda: losses.binary_cross_entropy(jnp.array([0.5, 0.5]), jnp.array([0.0, 2.0])),
            r"binary_cross_entropy: targets must be in \[0, 1\], got 2.0",
        ),
        (
            lambda: losses.categorical_cross_entropy(
                jnp.array([[0.5, -0.1]]), jnp.array([0]), from_logits=False
            ),
            r"categorical_cross_entropy: predictions must be in \[0, 1\], got -0.1",
        ),
    ],
)
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_range_checks_are_skipped_under_jit():
    # Traced labels cannot be checked; the loss must still trace and run.
    f = jax.jit(lambda z, y: losses.categorical_cross_entropy(z, y))
    assert np.isfinite(f(jnp.zeros((2, 3)), jnp.array([0, 2])))


@pytest.mark.parametrize(
    "call",
    [
        lambda: losses.binary_cross_entropy(jnp.array([0.3]), jnp.array([1.0]), from_logits="no"),
        lambda: losses.categorical_cross_entropy(
            jnp.array([[0.3, 0.7]]), jnp.array([0]), from_logits="False"
        ),
    ],
)
def test_from_logits_must_be_a_bool(call):
    # A string is truthy: "no" used to read the probabilities as logits.
    with pytest.raises(TypeError, match=r"_entropy: from_logits must be a bool, got '(no|False)'"):
        call()
