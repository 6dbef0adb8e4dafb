"""Shared checks for an optimizer with an optax twin run live (tests/test_radam.py, test_adopt.py).

A pytree of a matrix, a vector and a scalar; random gradients with exact zeros and a
coordinate that flips sign each step; float32 runs without x64 (as optax's users run it),
float64 with it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradx

STEPS = 50
# The gradx.OPTIMIZERS that share a name with an optax optimizer and take its arguments and
# defaults by design (issue 26): gradx.compat.optax has no twin of them.
OPTAX_BY_DESIGN = ("radam", "lion", "lamb", "adafactor")
F32 = dict(rtol=2e-5, atol=1e-5)
F64 = dict(rtol=1e-12, atol=1e-14)


def grads(dtype, steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(steps):
        g = {
            "m": rng.normal(size=(3, 4)),
            "v": rng.normal(size=(5,)) * (rng.random(5) > 0.2),
            "s": np.asarray((-1.0) ** k * 0.5),
        }
        out.append(jax.tree.map(lambda x: jnp.asarray(x, dtype), g))
    return out


def params(dtype):
    rng = np.random.default_rng(1)
    p = {"m": rng.normal(size=(3, 4)), "v": rng.normal(size=(5,)), "s": np.asarray(0.3)}
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), p)


def trajectory(opt, dtype, steps=STEPS):
    p = params(dtype)
    state = opt.init(p)
    out = []
    for g in grads(dtype, steps):
        updates, state = opt.update(g, state, p)
        p = optax.apply_updates(p, updates)
        out.append(p)
    return out, state


def assert_same_trajectory(ours, theirs, tol):
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            assert leaf_a.dtype == leaf_b.dtype
            np.testing.assert_allclose(leaf_a, leaf_b, **tol, err_msg=f"step {step}")


def _quadratic(p):
    return sum(jnp.sum((x - 0.5) ** 2 * (i + 1)) for i, x in enumerate(jax.tree.leaves(p)))


def _scan(opt, state, p, steps=12):
    def body(carry, _):
        q, s = carry
        u, s = opt.update(jax.grad(_quadratic)(q), s, q)
        return (optax.apply_updates(q, u), s), None

    return jax.lax.scan(body, (p, state), None, length=steps)[0]


def check_no_retrace(make, changes):
    """set_hyperparams(**changes) runs the same jitted step; its numbers equal make(**changes)."""
    opt = make()
    p = params(jnp.float32)
    traces = []

    @jax.jit
    def step(q, state):
        traces.append(1)
        u, state = opt.update(jax.grad(_quadratic)(q), state, q)
        return optax.apply_updates(q, u), state

    q, state = step(p, opt.init(p))
    state = gradx.set_hyperparams(state, **changes)
    for _ in range(6):
        q, state = step(q, state)
    assert len(traces) == 1
    for name, value in changes.items():
        np.testing.assert_allclose(gradx.hyperparams(state)[name], value, rtol=1e-7)
    # The same seven steps by an optimizer built with the new values after the first step.
    fresh = make(**changes)
    s2 = opt.init(p)
    u, s2 = opt.update(jax.grad(_quadratic)(p), s2, p)  # step 1 with the old values
    q2, s2 = optax.apply_updates(p, u), gradx.set_hyperparams(s2, **changes)
    for _ in range(6):
        u, s2 = fresh.update(jax.grad(_quadratic)(q2), s2, q2)
        q2 = optax.apply_updates(q2, u)
    for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(q2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def check_vmap_over_learning_rates(make):
    p = params(jnp.float32)
    opt = make(0.1)
    lrs = jnp.array([0.01, 0.05, 0.2], jnp.float32)
    states = jax.vmap(lambda lr: gradx.set_hyperparams(opt.init(p), learning_rate=lr))(lrs)
    batched = jax.jit(jax.vmap(lambda s: _scan(opt, s, p)))(states)
    for k, lr in enumerate(lrs):
        alone = make(float(lr))
        want = jax.jit(lambda s, alone=alone: _scan(alone, s, p))(alone.init(p))
        for got, w in zip(jax.tree.leaves(batched), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got[k], w, rtol=1e-6, atol=1e-6)
