"""weight_decay_scaling: the decoupled decay by λ·γ_t (torch, optax, Keras) or by λ·η_t (the
AdamW paper's schedule multiplier, η_t = γ_t/γ_peak), against a NumPy transcription of the
paper's Algorithm 2 (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx

S = gradx.schedules
STEPS = 40
INIT, PEAK, WARMUP, DECAY, END = 1e-4, 0.05, 6, 30, 1e-3


def _warmup_cosine(t):
    """The learning rate at step t (t = 0, 1, ...): linear warmup, then cosine decay."""
    if t < WARMUP:
        return INIT + (PEAK - INIT) * t / WARMUP
    k = min(t - WARMUP, DECAY - WARMUP)
    return END + (PEAK - END) * 0.5 * (1 + math.cos(math.pi * k / (DECAY - WARMUP)))


def _grads(steps=STEPS):
    rng = np.random.default_rng(0)
    return [rng.normal(size=(5,)) * (rng.random(5) > 0.2) for _ in range(steps)]


THETA0 = np.array([0.5, -1.2, 2.0, 0.1, -0.3])


def paper_adamw(lr, peak, lam, scaling, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 2, with α·η_t = lr(t): θ ← θ − lr(t)·m̂/(√v̂ + ε) − (η_t or lr(t))·λ·θ."""
    theta, m, v, out = THETA0.copy(), 0.0, 0.0, []
    for t, g in enumerate(_grads(), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        rate = lr(t - 1)
        factor = rate / peak if scaling == "schedule" else rate
        theta = theta - rate * m_hat / (np.sqrt(v_hat) + eps) - factor * lam * theta
        out.append(theta)
    return np.stack(out)


def paper_lion(lr, peak, lam, scaling, b1=0.9, b2=0.99):
    """Chen et al.'s Lion with the paper's decoupled decay: θ ← θ − lr·u − (η_t or lr)·λ·θ."""
    theta, m, out = THETA0.copy(), 0.0, []
    for t, g in enumerate(_grads(), start=1):
        u = np.sign(b1 * m + (1 - b1) * g)
        m = b2 * m + (1 - b2) * g
        rate = lr(t - 1)
        factor = rate / peak if scaling == "schedule" else rate
        theta = theta - rate * u - factor * lam * theta
        out.append(theta)
    return np.stack(out)


def _run(opt, dtype):
    grads = jnp.asarray(np.stack(_grads()), dtype)

    def step(carry, g):
        p, state = carry
        u, state = opt.update({"w": g}, state, p)
        p = optax.apply_updates(p, u)
        return (p, state), p["w"]

    p = {"w": jnp.asarray(THETA0, dtype)}
    return np.asarray(jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), grads)[1])(p))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_both_conventions_equal_the_paper_s_formula(dtype):
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=1e-12, atol=1e-14)
    schedule = S.warmup_cosine_decay_schedule(INIT, PEAK, WARMUP, DECAY, END)
    with jax.enable_x64(dtype == jnp.float64):
        for scaling in ("learning_rate", "schedule"):
            lam = 0.01 if scaling == "learning_rate" else 0.004
            opt = gradx.adamw(schedule, weight_decay=lam, weight_decay_scaling=scaling)
            want = paper_adamw(_warmup_cosine, PEAK, lam, scaling)
            np.testing.assert_allclose(_run(opt, dtype), want, **tol, err_msg=scaling)
        # a constant learning rate: η_t = 1, θ decays by λ per step
        opt = gradx.adamw(0.02, weight_decay=0.003, weight_decay_scaling="schedule")
        want = paper_adamw(lambda t: 0.02, 0.02, 0.003, "schedule")
        np.testing.assert_allclose(_run(opt, dtype), want, **tol)
        opt = gradx.lion(schedule, weight_decay=0.01, weight_decay_scaling="schedule")
        want = paper_lion(_warmup_cosine, PEAK, 0.01, "schedule")
        np.testing.assert_allclose(_run(opt, dtype), want, **tol)


def test_the_multiplier_follows_the_numbers_in_the_state_and_the_block_alone():
    opt = gradx.adamw(
        S.warmup_cosine_decay_schedule(0.0, 0.1, 4, 20), weight_decay=0.5,
        weight_decay_scaling="schedule",
    )  # fmt: skip
    p = {"w": jnp.array([2.0, -4.0])}
    zero = {"w": jnp.zeros(2)}  # Adam's step is 0: the update is the decay alone
    update = jax.jit(opt.update)
    state = opt.init(p)
    for _ in range(2):
        u, state = update(zero, state, p)
    np.testing.assert_allclose(u["w"], -0.25 * 0.5 * p["w"], rtol=1e-6)  # η_1 = 1/4
    # a 3x peak leaves η_t as it was: the decay does not change
    u3, _ = update(zero, gradx.set_hyperparams(state, **{"learning_rate/peak_value": 0.3}), p)
    u1, _ = update(zero, state, p)
    np.testing.assert_allclose(u3["w"], u1["w"], rtol=1e-6)
    np.testing.assert_allclose(u1["w"], -0.5 * 0.5 * p["w"], rtol=1e-6)  # η_2 = 2/4
    # the block alone has fixed numbers: η = 1 with "schedule", γ with the default
    u = {"w": jnp.ones(2)}
    for scaling, factor in (("schedule", 1.0), ("learning_rate", 0.1)):
        block = gradx.decoupled_weight_decay(0.5, 0.1, weight_decay_scaling=scaling)
        got, _ = block.update(u, block.init(p), p)
        np.testing.assert_allclose(got["w"], 1.0 - factor * 0.5 * p["w"], rtol=1e-6)


def test_a_schedule_without_a_known_peak_is_refused():
    with pytest.raises(TypeError, match=r"adamw|decoupled_weight_decay: learning_rate must be a number or a gradx schedule"):  # fmt: skip
        gradx.adamw(optax.cosine_decay_schedule(0.1, 10), weight_decay_scaling="schedule")
    with pytest.raises(ValueError, match=r"must have a finite peak"):
        gradx.adamw(S.exponential_decay(0.1, 10, 1.5), weight_decay_scaling="schedule")
    with pytest.raises(ValueError, match=r"adamw: weight_decay_scaling must be 'learning_rate'"):
        gradx.adamw(0.1, weight_decay_scaling="paper")
    with pytest.raises(ValueError, match=r"lion: weight_decay_scaling must be"):
        gradx.lion(0.1, weight_decay_scaling=None)
    # the default is unchanged: torch's AdamW
    assert (
        gradx.adamw(1e-3).update is gradx.adamw(1e-3, weight_decay_scaling="learning_rate").update
    )
