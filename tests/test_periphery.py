"""Issue 11, the periphery: lookahead's reset with Python bools and numbers in the inner
state, empty params, range checks of the losses under jit, compat.torch.Rprop on NaN
gradients, and torch's habit of passing the params first."""

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
import gradx.compat.torch
from gradx import losses

# ----------------------------------------------------------------------------- lookahead


class FlagState(NamedTuple):
    """optax's lookahead test state: a running sum and a Python bool set to False by update."""

    aggregate: Any
    is_reset: Any = True


def flagged_sgd(step_size):
    """optax's own lookahead test optimizer (optax/_src/lookahead_test.py)."""

    def init(params):
        return FlagState(jax.tree.map(jnp.zeros_like, params), True)

    def update(updates, state, params=None):
        del params
        aggregate = optax.apply_updates(state.aggregate, updates)
        return jax.tree.map(lambda u: step_size * u, updates), FlagState(aggregate, False)

    return optax.GradientTransformation(init, update)


def _run(opt, params, grads, steps, jit, value=None):
    state = (jax.jit(opt.init) if jit else opt.init)(params)
    update = jax.jit(opt.update) if jit else opt.update
    extra = {} if value is None else {"value": value}
    trajectory = []
    for _ in range(steps):
        updates, state = update(grads, state, params, **extra)
        params = optax.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory, state


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_lookahead_reset_with_a_bool_in_the_inner_state_matches_optax(jit):
    # Before the fix: AttributeError: 'bool' object has no attribute 'dtype'.
    params = {"x": jnp.array(3.0), "y": jnp.array(-3.0)}
    grads = {"x": jnp.array(2.0), "y": jnp.array(-2.0)}
    ours = gradx.lookahead(flagged_sgd(-0.5), sync_period=3, alpha=0.5, reset_state=True)
    got, state = _run(ours, params, grads, 7, jit)

    theirs = optax.lookahead(flagged_sgd(-0.5), 3, 0.5, reset_state=True)
    with jax.numpy_dtype_promotion("standard"):
        want, their_state = _run(
            theirs, optax.LookaheadParams.init_synced(params), grads, 7, jit=True
        )
    for g, w in zip(got, want, strict=True):
        for k in params:
            np.testing.assert_allclose(g[k], w.fast[k], rtol=0, atol=1e-12)
    fast = state.inner_state.fast_state  # step 7: one step after the sync at step 6
    assert not bool(fast.is_reset) and not bool(their_state.fast_state.is_reset)
    for k in params:
        np.testing.assert_array_equal(fast.aggregate[k], their_state.fast_state.aggregate[k])

    _, synced = _run(ours, params, grads, 6, jit)  # right after a sync: a fresh inner state
    assert bool(synced.inner_state.fast_state.is_reset)
    assert synced.inner_state.fast_state.is_reset.dtype == jnp.bool_


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_fitted_lookahead_resets_a_bool_and_a_python_float(jit):
    class State(NamedTuple):
        is_reset: Any
        scale: Any

    def init(params):
        del params
        return State(True, 1.0)

    def update(updates, state, params=None, **extra):
        return jax.tree.map(lambda u: -0.1 * u, updates), State(False, 0.5)

    opt = gradx.lookahead(
        optax.GradientTransformationExtraArgs(init, update),
        sync_period=2,
        alpha="quadratic",
        reset_state=True,
    )
    params = {"w": jnp.array([1.0, -1.0])}
    value = jnp.asarray(1.0)
    _, state = _run(opt, params, {"w": jnp.array([1.0, 1.0])}, 3, jit, value)  # a sync
    fast = state.inner_state.fast_state
    assert bool(fast.is_reset) and float(fast.scale) == 1.0
    _, state = _run(opt, params, {"w": jnp.array([1.0, 1.0])}, 2, jit, value)  # no sync
    fast = state.inner_state.fast_state
    assert not bool(fast.is_reset) and float(fast.scale) == 0.5


# ----------------------------------------------------------------------------- empty params


def _empty_cases():
    cases = {name: make for name, make in gradx.OPTIMIZERS.items()}
    cases["lookahead_reset"] = lambda lr: gradx.lookahead(
        gradx.adam(lr), sync_period=1, reset_state=True
    )
    cases["lookahead_fitted_reset"] = lambda lr: gradx.lookahead(
        gradx.adam(lr), sync_period=1, alpha="quadratic", reset_state=True
    )
    cases["compat.torch.Rprop"] = lambda lr: gradx.compat.torch.Rprop(lr)
    return cases


EMPTY_CASES = _empty_cases()


@pytest.mark.parametrize("name", sorted(EMPTY_CASES))
def test_every_optimizer_takes_empty_params_and_empty_leaves(name):
    # Before the fix rprop and lookahead raised "Too few leaves for PyTreeDef" on {}.
    make = EMPTY_CASES[name]
    value = jnp.asarray(1.0)
    full = {"a": jnp.zeros((0,)), "b": jnp.array([1.0, -2.0])}
    grads = {"a": jnp.zeros((0,)), "b": jnp.array([0.5, 0.25])}
    alone, _ = _run(make(0.1), {"b": full["b"]}, {"b": grads["b"]}, 2, True, value)
    for jit in (False, True):
        trajectory, _ = _run(make(0.1), {}, {}, 2, jit, value)
        assert trajectory[-1] == {}
        trajectory, _ = _run(make(0.1), full, grads, 2, jit, value)
        assert trajectory[-1]["a"].shape == (0,)
        np.testing.assert_allclose(trajectory[-1]["b"], alone[-1]["b"], rtol=1e-12)


# ----------------------------------------------------------------------------- losses

Z = jnp.array([[1.0, 2.0, 0.5], [0.1, 0.2, 0.3]])


@functools.partial(jax.jit, static_argnums=2)
def _cce_value_and_grad(z, y, smoothing):
    fn = functools.partial(losses.categorical_cross_entropy, label_smoothing=smoothing)
    return jax.value_and_grad(fn)(z, y)


@pytest.mark.parametrize("label", [-1, 3])
def test_out_of_range_labels_are_refused_eagerly_and_nan_under_jit(label):
    y = jnp.array([0, label])
    with pytest.raises(
        ValueError,
        match=rf"categorical_cross_entropy: targets must be class indices in \[0, 3\), "
        rf"got {label}",
    ):
        losses.categorical_cross_entropy(Z, y)
    for smoothing in (0.0, 0.1):
        # -1 gave the last class's loss (1.233 without smoothing) before the fix.
        value, grad = _cce_value_and_grad(Z, y, smoothing)
        assert np.isnan(value) and np.all(np.isnan(grad[1])) and np.all(np.isfinite(grad[0]))
        # The valid example's gradient is untouched: the same as beside a valid label.
        _, valid = _cce_value_and_grad(Z, jnp.array([0, 1]), smoothing)
        np.testing.assert_array_equal(grad[0], valid[0])
    assert np.isfinite(_cce_value_and_grad(Z, jnp.array([0, 2]), 0.0)[0])


def _bce(from_logits):
    return jax.jit(lambda p, y: losses.binary_cross_entropy(p, y, from_logits=from_logits))


def _cce_probabilities(p, y):
    return losses.categorical_cross_entropy(p, y, from_logits=False)


@pytest.mark.parametrize(
    "fn, predictions, targets",
    [
        (_bce(False), [0.5, 0.5], [1.5, 0.0]),  # was 0.693
        (_bce(False), [0.5, 0.5], [-0.5, 0.0]),
        (_bce(False), [0.5, 1.5], [1.0, 0.0]),
        (_bce(True), [0.5, 0.5], [1.5, 0.0]),  # was 0.599
        (jax.jit(_cce_probabilities), [[0.5, 1.5], [0.5, 0.5]], [1, 0]),  # was -0.405
        (jax.jit(_cce_probabilities), [[0.5, -0.5], [0.5, 0.5]], [1, 0]),
        (jax.jit(losses.categorical_cross_entropy), [[0.5, 0.5]], [[1.5, -0.5]]),  # was finite
        (jax.jit(_cce_probabilities), [[0.5, 0.5]], [[0.5, 1.5]]),
    ],
)
def test_probabilities_outside_the_unit_interval_give_nan_under_jit(fn, predictions, targets):
    assert np.isnan(fn(jnp.array(predictions), jnp.array(targets)))


def test_soft_targets_outside_the_unit_interval_are_refused_eagerly():
    with pytest.raises(
        ValueError, match=r"categorical_cross_entropy: targets must be in \[0, 1\], got -0.5"
    ):
        losses.categorical_cross_entropy(jnp.zeros((1, 2)), jnp.array([[1.5, -0.5]]))


def test_range_guards_leave_valid_jitted_losses_bit_identical():
    p = jnp.array([0.2, 0.9, 0.0, 1.0])
    y = jnp.array([0.0, 1.0, 1.0, 0.3])
    for from_logits in (False, True):
        eager = losses.binary_cross_entropy(p, y, from_logits=from_logits)
        assert _bce(from_logits)(p, y) == eager
        # Independent: torch's formula with log clamped at -100, in NumPy.
    pn, yn = np.asarray(p), np.asarray(y)
    with np.errstate(divide="ignore"):
        want = -np.mean(
            yn * np.maximum(np.log(pn), -100) + (1 - yn) * np.maximum(np.log1p(-pn), -100)
        )
    np.testing.assert_allclose(_bce(False)(p, y), want, rtol=1e-12)


# ----------------------------------------------------------------------------- torch Rprop


def torch_rprop(theta, grads, lr, eta_minus, eta_plus, min_step, max_step):
    """torch.optim.Rprop's _single_tensor_rprop in NumPy, with torch's sign(NaN) = 0.

    sign = (g·prev).sign(); sign[>0] = η⁺; sign[<0] = η⁻; sign[==0] = 1;
    step = clamp(step·sign); g[sign == η⁻] = 0; θ -= sign(g)·step; prev = g (NaN kept).
    """

    def torch_sign(x):
        return np.where(np.isnan(x), 0.0, np.sign(x))

    step, prev, out = np.full_like(theta, lr), np.zeros_like(theta), []
    for g in grads:
        with np.errstate(invalid="ignore"):
            s = torch_sign(g * prev)
        factor = np.where(s > 0, eta_plus, np.where(s < 0, eta_minus, 1.0))
        step = np.clip(step * factor, min_step, max_step)
        g = np.where(factor == eta_minus, 0.0, g)
        theta = theta - torch_sign(g) * step
        prev = g
        out.append((theta, step))
    return out


def test_compat_rprop_carries_on_after_a_nan_gradient_like_torch():
    nan, inf = np.nan, np.inf
    grads = np.array(
        [
            [nan, 1.0, -2.0, 0.5],  # NaN on the first step (prev = 0)
            [1.0, 2.0, -1.0, nan],
            [nan, -1.0, inf, nan],  # NaN twice in a row; inf moves like any positive g
            [2.0, nan, 1.0, -0.5],
            [1.0, 1.0, 1.0, 1.0],
            [1.0, -1.0, -3.0, 1.0],
        ]
    )
    theta0 = np.array([1.0, -1.0, 0.5, 2.0])
    want = torch_rprop(theta0, grads, 0.1, 0.5, 1.2, 1e-6, 0.3)
    opt = gradx.compat.torch.Rprop(lr=0.1, step_sizes=(1e-6, 0.3))
    params = {"w": jnp.asarray(theta0)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    for g, (theta, step) in zip(grads, want, strict=True):
        updates, state = update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params["w"], theta, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(state.inner_state.step_size["w"], step, rtol=1e-12)
    assert np.all(np.isfinite(params["w"]))  # before the fix: NaN from the first step on


# ----------------------------------------------------------------------------- torch's params first

TORCH = gradx.compat.torch
PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}


@pytest.mark.parametrize("cls", TORCH.__all__)
def test_torch_params_first_is_refused_with_the_gradx_spelling(cls):
    make = getattr(TORCH, cls)
    spelling = rf"For torch\.optim\.{cls}\(params, \.\.\.\) write opt = gradx\.compat\.torch\.{cls}"
    prefix = rf"{cls}: lr must be a number >= 0 or a schedule, got "
    with pytest.raises(TypeError, match=prefix + r"a dict: .*" + spelling + r"\(lr=0\.01\)"):
        make(PARAMS, lr=0.01)
    with pytest.raises(TypeError, match=prefix + r"a generator: .*" + spelling + r"\(lr=0\.01\)"):
        make((leaf for leaf in jax.tree.leaves(PARAMS)), 0.01)
    with pytest.raises(TypeError, match=prefix + r"a list of 2 items: .*" + spelling + r"\(\)"):
        make(params=jax.tree.leaves(PARAMS))
    with pytest.raises(TypeError, match=prefix + r"an array of shape \(3,\)"):
        make(PARAMS["b"])
    make(0.01)  # a learning rate, a scalar array and a schedule still work
    make(jnp.asarray(0.01))
    make(optax.linear_schedule(0.0, 0.01, 10))


def test_torch_param_groups_of_arrays_are_refused_with_a_pattern_spelling_that_runs():
    groups = [
        {"params": [PARAMS["w"]], "weight_decay": 0.1},
        {"params": [PARAMS["b"]], "weight_decay": 0.0, "lr": 0.05},
    ]
    with pytest.raises(TypeError, match=r"AdamW: a param group's 'params' must be a regular") as e:
        TORCH.AdamW(groups, lr=0.01)
    expression = re.search(r"opt = (gradx\.compat\.torch\.AdamW\(.*\))\n", str(e.value)).group(1)
    expression = expression.replace("<pattern 0>", "^w$").replace("<pattern 1>", "^b$")
    opt = eval(expression, {"gradx": gradx})
    grads = {"w": jnp.full((2, 3), 0.5), "b": jnp.full(3, -0.5)}
    updates, _ = opt.update(grads, opt.init(PARAMS), PARAMS)
    for name, alone in (
        ("w", TORCH.AdamW(lr=0.01, weight_decay=0.1)),
        ("b", TORCH.AdamW(0.05, weight_decay=0.0)),
    ):
        p, g = {name: PARAMS[name]}, {name: grads[name]}
        want, _ = alone.update(g, alone.init(p), p)
        np.testing.assert_array_equal(updates[name], want[name])
