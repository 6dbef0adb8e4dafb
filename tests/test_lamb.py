"""gradx.lamb and its block scale_by_trust_ratio: optax live, NumPy, hyperparameters in the state."""

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
        "z": jnp.zeros(2, dtype),  # at the origin, and with g = 0 at k = 0: the ratio-1 cases
    }


def _grad(params, k):
    # depends on the params (a live trajectory) and on the step
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
    {"b1": 0.8, "b2": 0.99, "eps": 1e-4, "eps_root": 1e-8, "weight_decay": 0.05},
    {"weight_decay": 0.1, "mask": {"w": True, "b": False, "s": True, "z": False}},
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("hp", HP, ids=["defaults", "non-default", "mask"])
def test_trajectory_equals_optax_lamb(dtype, hp):
    params = _params(dtype)
    ours, _ = _run(gradx.lamb(0.01, **hp), params)
    theirs, _ = _run(optax.lamb(0.01, **hp), params, standard=True)
    tol = 1e-12 if dtype == jnp.float64 else 2e-5
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("numbers", [(0.0, 1.0, 0.0), (0.5, 0.7, 1e-3), (10.0, 2.0, 0.0)])
def test_scale_by_trust_ratio_equals_optax_block(numbers):
    params = _params(jnp.float64)

    def chain(block):
        return optax.chain(optax.scale_by_adam(), block(*numbers), optax.scale(-0.01))

    ours, _ = _run(chain(gradx.scale_by_trust_ratio), params, standard=True)
    theirs, _ = _run(chain(optax.scale_by_trust_ratio), params, standard=True)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _numpy_lamb(params, lr, b1=0.9, b2=0.999, eps=1e-6, wd=0.0, steps=STEPS):
    """You et al. 2020, Algorithm 2 (with optax's ratio 1 at a zero norm), from the paper."""
    theta = {k: np.asarray(v) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items()}
    ratio = {}
    for t in range(1, steps + 1):
        for k in theta:
            g = np.sin(3 * theta[k] + (t - 1)) + 0.5 * theta[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g**2
            u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps) + wd * theta[k]
            pn, un = np.linalg.norm(theta[k]), np.linalg.norm(u)
            ratio[k] = 1.0 if pn == 0 or un == 0 else pn / un
            theta[k] = theta[k] - lr * ratio[k] * u
    return theta, v, ratio


def test_trajectory_equals_numpy_transcription():
    params = _params(jnp.float64)
    ours, _ = _run(gradx.lamb(0.02, 0.85, 0.99, 1e-5, weight_decay=0.1), params)
    theta, _, _ = _numpy_lamb(params, 0.02, 0.85, 0.99, 1e-5, 0.1)
    for k in theta:
        np.testing.assert_allclose(ours[k], theta[k], rtol=1e-11, atol=1e-12)


def test_effective_learning_rate_is_adams_times_the_trust_ratio():
    # α_ef = γ·r·(1−β₁)/((1−β₁ᵗ)(√v̂_t + ε)), r = ‖θ‖/‖u‖ of the leaf at the last step
    params = _params(jnp.float64)
    opt = gradx.lamb(0.02, 0.85, 0.99, 1e-5, weight_decay=0.1)
    steps = 7
    last, state = _run(opt, params, steps=steps - 1)
    g = _grad(last, steps - 1)
    _, state = opt.update(g, state, last)
    alpha = gradx.effective_learning_rate(opt, state, last, g)
    _, v, ratio = _numpy_lamb(params, 0.02, 0.85, 0.99, 1e-5, 0.1, steps=steps)
    for k in params:
        v_hat = v[k] / (1 - 0.99**steps)
        want = 0.02 * ratio[k] * 0.15 / ((1 - 0.85**steps) * (np.sqrt(v_hat) + 1e-5))
        np.testing.assert_allclose(alpha[k], want, rtol=1e-10)
    assert not np.allclose(ratio["w"], 1.0)  # the ratio is really there


def test_set_hyperparams_changes_values_without_retracing():
    opt = gradx.lamb(0.01, eps_root=1e-9)  # eps_root given as 0 would be a constant: unsettable
    params = _params(jnp.float32)
    traces = []

    @jax.jit
    def step(params, state, k):
        traces.append(1)
        updates, state = opt.update(_grad(params, k), state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    new = dict(learning_rate=0.03, b1=0.5, b2=0.9, eps=1e-3, eps_root=1e-6, weight_decay=0.2)
    state = gradx.set_hyperparams(state, **new)
    params, state = step(params, state, 0)
    params, state = step(params, state, 1)
    assert len(traces) == 1
    assert float(gradx.hyperparams(state)["b2"]) == pytest.approx(0.9)
    want, _ = _run(optax.lamb(**new), _params(jnp.float32), steps=2, standard=True)
    for got, ref in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


def test_vmap_over_three_learning_rates_equals_three_runs():
    opt = gradx.lamb(0.01, weight_decay=0.1)
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
        alone_opt = gradx.lamb(float(lr), weight_decay=0.1)
        alone = jax.jit(train, static_argnums=1)(alone_opt.init(params), alone_opt)
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"b1": 1.0}, r"lamb: b1 must be in \[0, 1\), got 1.0"),
        ({"b2": 1.5}, r"lamb: b2 must be in \[0, 1\), got 1.5"),
        ({"eps": -1e-6}, r"lamb: eps must be >= 0, got -1e-06"),
        ({"weight_decay": -1.0}, r"lamb: weight_decay must be >= 0, got -1.0"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradx.lamb(0.01, **kwargs)


def test_the_trust_ratio_needs_params_and_refuses_flat():
    params = _params(jnp.float32)
    block = gradx.scale_by_trust_ratio()
    with pytest.raises(ValueError, match=r"scale_by_trust_ratio: update needs the params"):
        block.update(_grad(params, 0), block.init(params))
    with pytest.raises(ValueError, match=r"scale_by_trust_ratio: params must not be packed"):
        gradx.flat(gradx.lamb(0.01)).init(params)
    # lamb names itself and the trust ratio, also with no weight decay to read them
    opt = gradx.lamb(0.01, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"^lamb: update needs the params \(the trust ratio is "
                       r"‖θ‖/‖u‖ per leaf\): call update\(grads, state, params\)$"):  # fmt: skip
        opt.update(_grad(params, 0), opt.init(params))


def test_signature_is_optax_lambs():
    # same names, order, kinds and defaults: an optax.lamb call ports unchanged
    # (then gradx's keyword-only state_dtype and stochastic_rounding, which optax lacks)
    ours = list(inspect.signature(gradx.lamb).parameters.values())
    theirs = inspect.signature(optax.lamb).parameters
    assert [p.name for p in ours[-2:]] == ["state_dtype", "stochastic_rounding"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[-2:])
    assert [(p.name, p.kind, p.default) for p in ours[:-2]] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]
