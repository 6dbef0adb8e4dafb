"""A jitted step that donates its params and state, as training steps (and update_step.py) do.

bfloat16 moments: a block's update reads each moment as the state stores it, so the compiled
step keeps no copy of an old moment (the copy, a buffer the moment's size, cost a
bfloat16-moment Adam step on CPU more than all its arithmetic: benchmarks/README.md); checked
against a NumPy transcription that rounds each moment to bfloat16 before using it. And no
state leaf shares a buffer with another or with the params (a donated buffer twice is refused).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax

import gradx


def _bf16(x):
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def test_bf16_adam_reads_its_rounded_moments_as_a_numpy_transcription_does():
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(6, 64)).astype(np.float32) * 1e-3
    opt = gradx.adam(lr, b1, b2, eps, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    params = jnp.zeros(64, jnp.float32)
    state, step = opt.init(params), jax.jit(opt.update)
    m = v = np.zeros(64, np.float32)
    worst_unrounded = 0.0
    for t, g in enumerate(grads, start=1):
        u, state = step(jnp.asarray(g), state, params)
        m_new = np.float32(b1) * m + np.float32(1 - np.float32(b1)) * g
        v_new = np.float32(b2) * v + np.float32(1 - np.float32(b2)) * g * g
        c1, c2 = np.float32(1 - np.float32(b1) ** t), np.float32(1 - np.float32(b2) ** t)

        def adam_step(m, v, c1=c1, c2=c2):
            return np.float32(-lr) * (m / c1) / (np.sqrt(v / c2) + np.float32(eps))

        m, v = _bf16(m_new), _bf16(v_new)
        np.testing.assert_allclose(np.asarray(u), adam_step(m, v), rtol=1e-5, atol=1e-9)
        worst_unrounded = max(worst_unrounded, np.max(np.abs(adam_step(m_new, v_new) - u)))
    assert worst_unrounded > 1e-6  # the unrounded moments give other numbers
    mu, nu = state.inner_state[0].direction.mean, state.inner_state[0].by.nu
    assert mu.dtype == nu.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(mu, np.float32), m)


def test_bf16_moment_steps_compile_without_a_copy_of_an_old_moment():
    """Each rule whose update reads its new moment, donated as in a training step: no copy
    and no temporary buffer of a moment's size in the compiled program (float32 moments have none either)."""
    rules = {
        "adam": gradx.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        "amsgrad": gradx.amsgrad(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        "nadam": gradx.nadam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        "adamax": gradx.adamax(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        "adagrad": gradx.adagrad(1e-3, nu_dtype=jnp.bfloat16),
        "rmsprop(centered)": gradx.rmsprop(1e-3, centered=True, nu_dtype=jnp.bfloat16),
        "sgd(nesterov)": gradx.sgd(1e-3, 0.9, nesterov=True, accumulator_dtype=jnp.bfloat16),
    }
    params = jnp.zeros(4096, jnp.float32)
    found = {}
    for name, opt in rules.items():

        def step(p, s, g, opt=opt):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt.init(params), params)
        compiled = compiled.compile()
        copies = compiled.as_text().count(" copy(")
        found[name] = (copies, compiled.memory_analysis().temp_size_in_bytes)
    assert all(copies == 0 and temp < 1024 for copies, temp in found.values()), found


def test_no_state_leaf_shares_a_buffer_with_another_or_with_the_params():
    """A step that donates params and state (as update_step.py does) gets each buffer once:
    a buffer twice is refused at the first call ("donate the same buffer twice")."""
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    for name, make in sorted(gradx.OPTIMIZERS.items()):
        state = make(0.1).init(params)
        buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves((params, state))]
        assert len(buffers) == len(set(buffers)), name
