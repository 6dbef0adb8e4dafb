"""gradx.lion and its block scale_by_lion: optax live, NumPy, hyperparameters in the state."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx

STEPS = 45


def _params(dtype):
    return {
        "w": jnp.asarray([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype),
        "b": jnp.asarray([0.3, -0.2, 0.0], dtype),
        "s": jnp.asarray(1.25, dtype),
    }


def _grad(params, k):
    # depends on the params (a live trajectory) and on the step; b[2] = 0 gets g = 0 at k = 0
    return jax.tree.map(lambda p: jnp.sin(3 * p + k) + 0.5 * p, params)


def _run(opt, params, steps=STEPS, standard=False):
    state = opt.init(params)
    for k in range(steps):
        g = _grad(params, k)
        with jax.numpy_dtype_promotion("standard" if standard else "strict"):
            updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


HP = [
    {},
    {"b1": 0.8, "b2": 0.95, "weight_decay": 0.1},
    {"b1": 0.0, "b2": 0.5, "weight_decay": 0.0, "mask": {"w": True, "b": False, "s": True}},
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("hp", HP, ids=["defaults", "non-default", "mask"])
def test_trajectory_equals_optax_lion(dtype, hp):
    params = _params(dtype)
    ours, _ = _run(gradx.lion(0.01, **hp), params)
    theirs, _ = _run(optax.lion(0.01, **hp), params, standard=True)
    tol = 1e-12 if dtype == jnp.float64 else 1e-6
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _numpy_lion(theta, grad, lr, b1=0.9, b2=0.99, wd=1e-3, steps=STEPS):
    """Chen et al. 2023, Algorithm 2, written from the paper."""
    m = np.zeros_like(theta)
    for k in range(steps):
        g = grad(theta, k)
        u = np.sign(b1 * m + (1 - b1) * g)
        m = b2 * m + (1 - b2) * g
        theta = theta - lr * (u + wd * theta)
    return theta, m


def test_trajectory_equals_numpy_transcription():
    params = {"w": _params(jnp.float64)["w"]}
    ours, state = _run(gradx.lion(0.02, 0.85, 0.97, weight_decay=0.05), params)

    def grad(theta, k):
        return np.sin(3 * theta + k) + 0.5 * theta

    theta, m = _numpy_lion(np.asarray(params["w"]), grad, 0.02, 0.85, 0.97, 0.05)
    np.testing.assert_allclose(ours["w"], theta, rtol=1e-12, atol=1e-12)
    (mu,) = [x for x in jax.tree.leaves(state) if np.shape(x) == (2, 3)]
    np.testing.assert_allclose(mu, m, rtol=1e-12, atol=1e-14)


def test_scale_by_lion_equals_optax_block():
    params = _params(jnp.float64)
    ours, s1 = _run(optax.chain(gradx.scale_by_lion(0.7, 0.9), optax.scale(-0.01)), params)
    with jax.numpy_dtype_promotion("standard"):
        theirs, _ = _run(optax.chain(optax.scale_by_lion(0.7, 0.9), optax.scale(-0.01)), params)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert type(s1[0])._fields == ("count", "mu")


def test_mu_dtype_stores_the_momentum():
    params = _params(jnp.float32)
    _, state = _run(gradx.lion(0.01, mu_dtype=jnp.float64), params, steps=2)
    ours_mu = [x for x in jax.tree.leaves(state) if np.ndim(x) and x.dtype == jnp.float64]
    assert len(ours_mu) == 2  # w and b; s is a scalar
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(_run(gradx.lion(0.01), params)[0]))
    with pytest.raises(TypeError, match=r"^lion: mu_dtype must be"):
        gradx.lion(0.01, mu_dtype=jnp.int32)


def test_set_hyperparams_changes_values_without_retracing():
    opt = gradx.lion(0.01)
    params = _params(jnp.float32)
    traces = []

    @jax.jit
    def step(params, state, k):
        traces.append(1)
        updates, state = opt.update(_grad(params, k), state, params)
        return optax.apply_updates(params, updates), state

    params, state = step(params, opt.init(params), 0)
    state = gradx.set_hyperparams(state, learning_rate=0.03, b1=0.5, b2=0.8, weight_decay=0.2)
    new_params, new_state = step(params, state, 1)
    assert len(traces) == 1
    hp = gradx.hyperparams(new_state)
    assert float(hp["b1"]) == 0.5 and float(hp["b2"]) == pytest.approx(0.8)
    # the new values are the ones used (NumPy, from the formula)
    (mu,) = [np.asarray(x) for x in jax.tree.leaves(state) if np.shape(x) == (2, 3)]
    w, g = np.asarray(params["w"]), np.asarray(_grad(params, 1)["w"])
    want = w - 0.03 * (np.sign(0.5 * mu + 0.5 * g) + 0.2 * w)
    np.testing.assert_allclose(new_params["w"], want, rtol=1e-6)


def test_vmap_over_three_learning_rates_equals_three_runs():
    opt = gradx.lion(0.01, weight_decay=0.1)
    params = _params(jnp.float32)
    lrs = jnp.array([0.003, 0.01, 0.05], jnp.float32)

    def train(state, opt=opt):
        def body(carry, k):
            p, state = carry
            updates, state = opt.update(_grad(p, k), state, p)
            return (optax.apply_updates(p, updates), state), None

        return jax.lax.scan(body, (params, state), jnp.arange(12.0, dtype=jnp.float32))[0][0]

    states = jax.vmap(lambda lr: gradx.set_hyperparams(opt.init(params), learning_rate=lr))(lrs)
    batched = jax.jit(jax.vmap(train))(states)
    for k, lr in enumerate(lrs):
        alone_opt = gradx.lion(float(lr), weight_decay=0.1)
        alone = jax.jit(train, static_argnums=1)(alone_opt.init(params), alone_opt)
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6)


def test_effective_learning_rate_is_the_step_per_unit_gradient():
    # α_ef_i = γ·|u_i|/|g_i| = γ/|g_i| (0 where g_i = 0), Rprop's definition for a sign method
    params = _params(jnp.float64)
    opt = gradx.lion(0.02, weight_decay=0.3)
    state = opt.init(params)
    for k in range(3):
        g = _grad(params, k)
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    g["b"] = g["b"].at[1].set(0.0)
    alpha = gradx.effective_learning_rate(opt, state, params, g)
    for name in params:
        a = np.abs(np.asarray(g[name]))
        want = np.where(a > 0, 0.02 / np.where(a > 0, a, 1.0), 0.0)
        np.testing.assert_allclose(alpha[name], want, rtol=1e-12)
    assert float(alpha["b"][1]) == 0.0
    with pytest.raises(ValueError, match="scale_by_lion block's gain depends on the gradient"):
        gradx.effective_learning_rate(opt, state, params)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"b1": 1.0}, r"lion: b1 must be in \[0, 1\), got 1.0"),
        ({"b2": -0.1}, r"lion: b2 must be in \[0, 1\), got -0.1"),
        ({"weight_decay": -1.0}, r"lion: weight_decay must be >= 0, got -1.0"),
        ({"learning_rate": -0.1}, r"lion: learning_rate must be >= 0, got -0.1"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    kwargs = {"learning_rate": 0.01, **kwargs}
    with pytest.raises(ValueError, match=message):
        gradx.lion(**kwargs)


def test_signature_is_optax_lions():
    # same names, order, kinds and defaults: an optax.lion call ports unchanged
    # (then gradx's keyword-only weight_decay_scaling, state_dtype and stochastic_rounding,
    # which optax lacks)
    ours = list(inspect.signature(gradx.lion).parameters.values())
    theirs = inspect.signature(optax.lion).parameters
    extra = ["weight_decay_scaling", "state_dtype", "stochastic_rounding"]
    assert [p.name for p in ours[-3:]] == extra
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[-3:])
    assert [(p.name, p.kind, p.default) for p in ours[:-3]] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]
