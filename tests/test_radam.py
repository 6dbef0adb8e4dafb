"""gradx.radam and its block gradx.rectified: optax.radam live, the gain rule against NumPy,
hyperparameters in the state, and the rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
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
    dict(learning_rate=SCHEDULE, b1=0.5, b2=0.99, eps=1e-3, eps_root=1e-4, threshold=6.0),
    dict(learning_rate=0.05, b2=0.95, nesterov=True),
    dict(learning_rate=0.05, threshold=4.0),
]


def _as_float32(kwargs):
    """optax computes ρ_∞ = 2/(1−β₂) − 1 from its Python number in float64 but β₂ᵗ in float32
    (ρ_t, a difference of two numbers near ρ_∞, then differs by 0.03 at t = 6 for β₂ = 0.999,
    r_t by 1%). gradx stores β₂ in float32 and computes both from it; given the same float32
    numbers, optax computes what gradx does."""
    return {k: jnp.float32(v) if isinstance(v, float) else v for k, v in kwargs.items()}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("kwargs", CASES, ids=["defaults", "schedule", "nesterov", "four"])
def test_trajectory_equals_optax_radam(kwargs, dtype):
    with jax.numpy_dtype_promotion("standard"), jax.enable_x64(dtype == jnp.float64):
        ours, _ = trajectory(gradx.radam(**kwargs), dtype)
        if dtype == jnp.float32:
            kw = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "threshold": 5.0}
            theirs, _ = trajectory(optax.radam(**_as_float32({**kw, **kwargs})), dtype)
        else:
            theirs, _ = trajectory(optax.radam(**kwargs), dtype)
    assert_same_trajectory(ours, theirs, F64 if dtype == jnp.float64 else F32)


def test_the_first_steps_are_momentum_then_rectified_adam():
    # With β₂ = 0.999, ρ_t ≥ 5 from t = 6 on (ρ_t ≈ t): steps 1-5 are γ·m̂, then the ratio.
    lr, g = 0.1, {"w": jnp.array([2.0, -0.5])}
    opt = gradx.radam(lr)
    state = opt.init(g)
    for t in range(1, 8):
        u, state = opt.update(g, state)
        want = -lr * np.asarray(g["w"]) if t <= 5 else None
        if want is not None:
            np.testing.assert_allclose(u["w"], want, rtol=1e-6)
        else:  # a constant gradient: m̂ = g, √v̂ = |g|, so the step is −γ·r_t·sign(g)
            assert np.all(np.abs(np.asarray(u["w"])) < lr)
            np.testing.assert_allclose(u["w"] / u["w"][0], [1.0, -1.0], rtol=1e-6)


def test_set_hyperparams_does_not_retrace():
    check_no_retrace(
        lambda **kw: gradx.radam(**{"learning_rate": 0.05, **kw}),
        {"learning_rate": 0.02, "b1": 0.8, "b2": 0.99, "threshold": 4.5},
    )


def test_vmap_over_three_learning_rates_equals_three_runs():
    check_vmap_over_learning_rates(gradx.radam)


def _alpha_reference(lr, b1, b2, eps, threshold, nesterov, gs):
    """α_ef of the last step, from the paper's formulas in NumPy float64."""
    v = np.zeros_like(gs[0])
    for g in gs:
        v = b2 * v + (1 - b2) * g * g
    t = len(gs)
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    c = (1 - b1) / (1 - b1**t)
    if nesterov:  # m̂ = (1−β₁)/(1−β₁ᵗ)·g + β₁/(1−β₁ᵗ⁺¹)·m_t
        c = c + b1 / (1 - b1 ** (t + 1)) * (1 - b1)
    if rho < threshold:
        return lr * c * np.ones_like(v)
    r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    return lr * c * r / (np.sqrt(v / (1 - b2**t)) + eps)


@pytest.mark.parametrize("steps", [3, 7, 40])
@pytest.mark.parametrize("nesterov", [False, True])
def test_effective_learning_rate_against_numpy(steps, nesterov):
    hp = dict(b1=0.8, b2=0.99, eps=1e-3, threshold=5.0)
    opt = gradx.radam(0.05, **hp, nesterov=nesterov)
    p = params(jnp.float64)
    gs = grads(jnp.float64, steps)
    state = opt.init(p)
    for g in gs:
        _, state = opt.update(g, state, p)
    alpha = gradx.effective_learning_rate(opt, state, p, gs[-1])
    for k in p:
        want = _alpha_reference(0.05, **hp, nesterov=nesterov, gs=[np.asarray(g[k]) for g in gs])
        np.testing.assert_allclose(alpha[k], want, rtol=1e-10, err_msg=k)


def test_rectified_block_reads_off_the_chain():
    # rectified(ema, rms, β₂, threshold, ε) after the threshold is r_t × precondition(...).
    num, den = gradx.ema(0.9, debias=True), gradx.rms(0.999, debias=True)
    rect = gradx.rectified(num, den, 0.999, 5.0, 1e-8)
    pre = gradx.precondition(num, den, 1e-8)
    p = params(jnp.float64)
    s_rect, s_pre = rect.init(p), pre.init(p)
    b2, rho_inf = 0.999, 2 / (1 - 0.999) - 1
    for t, g in enumerate(grads(jnp.float64, 8), start=1):
        u_rect, s_rect = rect.update(g, s_rect)
        u_pre, s_pre = pre.update(g, s_pre)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho < 5:
            continue
        r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        for a, b in zip(jax.tree.leaves(u_rect), jax.tree.leaves(u_pre), strict=True):
            np.testing.assert_allclose(a, r * np.asarray(b), rtol=1e-10)
    assert s_rect._fields == tuple(sorted(s_rect._fields))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(b1=1.5), r"^radam: b1 must be in \[0, 1\), got 1.5"),
        (dict(b2=1.0), r"^radam: b2 must be in \[0, 1\), got 1.0"),
        (dict(eps=-1.0), r"^radam: eps must be >= 0, got -1.0"),
        (dict(threshold=3.0), r"^radam: threshold must be >= 4, got 3.0"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradx.radam(0.1, **kwargs)
