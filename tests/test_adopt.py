"""gradx.adopt and its block gradx.scale_by_adopt: optax.contrib.adopt live, the gain rule
against NumPy, hyperparameters in the state, and the rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from live_twin import (
    F32,
    F64,
    assert_same_trajectory,
    check_no_retrace,
    check_vmap_over_learning_rates,
    grads,
    params,
    trajectory,
)

import gradx

SCHEDULE = optax.linear_schedule(0.1, 0.01, 30)

CASES = [
    dict(learning_rate=0.05),
    dict(learning_rate=SCHEDULE, b1=0.5, b2=0.9, eps=1e-3),
    dict(learning_rate=0.05, b2=0.99, nesterov=True),
    dict(learning_rate=0.05, use_clipping=False),
    dict(learning_rate=0.05, clip_value_fn=lambda s: 0.5 + jnp.sqrt(s)),
    dict(learning_rate=0.05, mu_dtype=jnp.float32),
]
IDS = ["defaults", "schedule", "nesterov", "no_clip", "clip_fn", "mu_dtype"]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
def test_trajectory_equals_optax_contrib_adopt(kwargs, dtype):
    with jax.numpy_dtype_promotion("standard"), jax.enable_x64(dtype == jnp.float64):
        ours, state = trajectory(gradx.adopt(**kwargs), dtype)
        theirs, their_state = trajectory(optax.contrib.adopt(**kwargs), dtype)
    tol = F64 if dtype == jnp.float64 and "mu_dtype" not in kwargs else F32
    assert_same_trajectory(ours, theirs, tol)
    # the moments too: m and v as optax keeps them
    block, theirs = state.inner_state[0], their_state[0]
    for a, b in zip(jax.tree.leaves(block.mu), jax.tree.leaves(theirs.mu), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, **tol)
    for a, b in zip(jax.tree.leaves(block.nu), jax.tree.leaves(theirs.nu), strict=True):
        np.testing.assert_allclose(a, b, **tol)


def test_the_first_step_moves_nothing_and_sets_v_to_g_squared():
    g = {"w": jnp.array([2.0, -0.5, 0.0])}
    opt = gradx.adopt(0.1)
    state = opt.init(g)
    u, state = opt.update(g, state)
    np.testing.assert_array_equal(u["w"], 0.0)
    np.testing.assert_allclose(state.inner_state[0].nu["w"], np.asarray(g["w"]) ** 2)
    # step 2 (s = 1, clip value 1): x = g/max(|g₀|, ε) clipped to ±1, m = (1−β₁)·x
    u, state = opt.update({"w": jnp.array([1.0, 4.0, 1e-7])}, state)
    np.testing.assert_allclose(u["w"], -0.1 * 0.1 * np.array([0.5, 1.0, 0.1]), rtol=1e-5)


def test_set_hyperparams_does_not_retrace():
    check_no_retrace(
        lambda **kw: gradx.adopt(**{"learning_rate": 0.05, **kw}),
        {"learning_rate": 0.02, "b1": 0.8, "b2": 0.99, "eps": 1e-4},
    )


def test_vmap_over_three_learning_rates_equals_three_runs():
    check_vmap_over_learning_rates(gradx.adopt)


def _alpha_reference(lr, b1, b2, eps, nesterov, use_clipping, gs):
    """α_ef of the last step from the paper's formulas in NumPy float64: the factor on g_t
    is γ(1−β₁)(1+β₁ with Nesterov)/max(√v_{t−1}, ε), times c/|x| where x is clipped."""
    t = len(gs)
    if t == 1:
        return np.zeros_like(gs[0])
    v = gs[0] ** 2
    for g in gs[1:-1]:
        v = b2 * v + (1 - b2) * g * g
    inverse = 1 / np.maximum(np.sqrt(v), eps)  # v_{t−1}
    factor = lr * (1 - b1) * ((1 + b1) if nesterov else 1) * inverse
    if use_clipping:
        c = (t - 1) ** 0.25
        x = np.abs(gs[-1]) * inverse
        factor = factor * np.where(x > c, c / np.where(x > c, x, 1), 1)
    return factor


@pytest.mark.parametrize("steps", [1, 2, 5, 40])
@pytest.mark.parametrize("nesterov, use_clipping", [(False, True), (True, True), (False, False)])
def test_effective_learning_rate_against_numpy(steps, nesterov, use_clipping):
    hp = dict(b1=0.8, b2=0.9, eps=1e-3)
    opt = gradx.adopt(0.05, **hp, nesterov=nesterov, use_clipping=use_clipping)
    p = params(jnp.float64)
    gs = grads(jnp.float64, steps)
    gs[-1] = jax.tree.map(lambda g: g * 3.0, gs[-1])  # some coordinates clip
    state = opt.init(p)
    for g in gs:
        _, state = opt.update(g, state, p)
    alpha = gradx.effective_learning_rate(opt, state, p, gs[-1])
    clipped = 0
    for k in p:
        leaf_gs = [np.asarray(g[k]) for g in gs]
        want = _alpha_reference(
            0.05, **hp, nesterov=nesterov, use_clipping=use_clipping, gs=leaf_gs
        )
        np.testing.assert_allclose(alpha[k], want, rtol=1e-9, atol=1e-15, err_msg=k)
        if steps > 1:
            free = 0.05 * 0.2 * (1.8 if nesterov else 1)
            v_prev = _alpha_reference(1.0, 0.0, hp["b2"], hp["eps"], False, False, leaf_gs)
            clipped += int(np.sum(np.asarray(want) < free * v_prev * (1 - 1e-9)))
    if use_clipping and steps > 1:
        assert clipped > 0  # the clip's factor was exercised


def test_the_step_is_minus_alpha_times_the_gradient_plus_the_momentum():
    # α_ef·g_t is the part of the step in g_t: u_t − β₁·(previous m) = −α_ef·g_t.
    opt = gradx.adopt(0.05, b1=0.8, b2=0.9, eps=1e-3)
    p = params(jnp.float64)
    gs = grads(jnp.float64, 6)
    state = opt.init(p)
    for g in gs:
        m_prev = state.inner_state[0].mu
        u, state = opt.update(g, state, p)
    alpha = gradx.effective_learning_rate(opt, state, p, gs[-1])
    for k in p:
        want = -np.asarray(u[k]) - 0.05 * 0.8 * np.asarray(m_prev[k])
        np.testing.assert_allclose(alpha[k] * gs[-1][k], want, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(b1=1.5), r"^adopt: b1 must be in \[0, 1\), got 1.5"),
        (dict(b2=1.0), r"^adopt: b2 must be in \[0, 1\), got 1.0"),
        (dict(eps=0.0), r"^adopt: eps must be > 0, got 0.0"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradx.adopt(0.1, **kwargs)


def test_bad_static_arguments_are_refused():
    with pytest.raises(TypeError, match=r"^scale_by_adopt: clip_value_fn must be a function"):
        gradx.adopt(0.1, clip_value_fn=1.0)
    with pytest.raises(TypeError, match=r"^adopt: mu_dtype must be a real floating dtype"):
        gradx.adopt(0.1, mu_dtype="int8")
    with pytest.raises(TypeError, match=r"^scale_by_adopt: use_clipping=True needs real params"):
        gradx.adopt(0.1).init({"w": jnp.ones(2, jnp.complex64)})
